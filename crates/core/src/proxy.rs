//! The transaction-stateful proxy (RFC 3261 §16): the request pipeline (validate, loop and
//! hop checks, loose routing, authentication, location lookup), parallel forking with a
//! response context per request, best-response selection, CANCEL fan-out and Timer C.

use super::auth::AuthOutcome;
use super::branch::BranchState;
use super::forking::Hunt;
use super::handles::{ClientTxId, CtxId, ServerTxId};
use super::route::{Fnv, Hop};
use super::timers::TimerRef;
use super::{
    request_like, server_key, Action, ClientMachine, ClientTx, Core, Flow, ServerMachine, ServerTx,
    TIMER_C,
};
use crate::plan::{Dialed, FeatureRequest};
use crate::Transport;
use sip::build::{via_with_received, Writer};
use sip::grammar::name_addr_list;
use sip::header::HeaderName;
use sip::message::{Message, Method};
use sip::transaction::{self as tx, Disposition};
use sip::uri::Uri;
use std::net::IpAddr;
use std::time::Instant;

/// RFC 3261 §18.1.1: without a known path MTU, requests over 1300 bytes go over TCP.
const UDP_LIMIT: usize = 1300;

/// A final response kept as a candidate for the best one (§16.7 step 6).
pub(crate) enum Candidate {
    Received(Message),
    Local(u16, &'static str),
}

impl Candidate {
    pub(crate) fn status(&self) -> u16 {
        match self {
            Candidate::Received(m) => m.status().unwrap_or(500),
            Candidate::Local(c, _) => *c,
        }
    }
}

/// Lower is better: 6xx first, then the lowest class; within a class the responses that tell
/// the caller something it can act on (auth challenges, 415, 420, 484, busy) before the rest.
pub(crate) fn rank(status: u16) -> (u8, u8, u16) {
    let class = match status / 100 {
        6 => 0,
        3 => 1,
        4 => 2,
        _ => 3,
    };
    let useful = matches!(status, 401 | 407 | 415 | 420 | 484 | 486);
    (class, u8::from(!useful), status)
}

/// One branch of a response context: its client transaction, where it is in its life, and
/// when Timer C (or the give-up after a CANCEL) is due.
pub(crate) struct Branch {
    pub client: ClientTxId,
    pub state: BranchState,
    pub timer_c: Option<Instant>,
    /// An INVITE sent to a phone itself (not to another proxy): a Contact in its answer
    /// that names another address than the answer's source is behind NAT.
    pub to_phone: bool,
    /// Other servers of the target's domain to try if this one fails (RFC 3263 §4.3).
    pub retry: Option<Box<Retry>>,
}

/// What a branch needs to be sent again to the next of its domain's servers.
pub(crate) struct Retry {
    uri: String,
    alternates: Vec<Flow>,
    extra: Vec<(&'static str, String)>,
}

/// The response context of one forwarded request.
pub(crate) struct ProxyCtx {
    /// The server transaction of the request, which the best response answers.
    pub server: ServerTxId,
    pub invite: bool,
    pub branches: Vec<Branch>,
    pub best: Option<Candidate>,
    /// A 2xx went upstream: later non-2xx finals are dropped.
    pub answered: bool,
    pub final_sent: bool,
    /// The caller sent CANCEL: nothing new is tried.
    pub cancelled: bool,
    pub redirects: u8,
    /// How branches are built: our Route entries to pop, the loop hash, the inbound flow,
    /// whether to record-route.
    pub pop: usize,
    pub hash: String,
    pub in_flow: Flow,
    pub dialog_creating: bool,
    /// Calls to local targets: stages, forwarding, history.
    pub hunt: Option<Box<Hunt>>,
}

/// What the pipeline decided for a new request.
enum Decision {
    Reply(u16, &'static str),
    ReplyOwned(u16, String),
    /// Ring a local target (or a remote one a local user dialled) through a hunt.
    Hunt {
        target: Dialed,
        hunt: Box<Hunt>,
        pop: usize,
        hash: String,
    },
    Feature {
        user: String,
        req: FeatureRequest,
    },
    Register,
    OptionsHere,
    /// Forward to these hops, popping our Route entries; record-route if dialog-creating.
    /// `hash` is the request's loop-detection hash, for the branches.
    Forward {
        hops: Vec<Hop>,
        pop: usize,
        hash: String,
    },
}

impl Core {
    pub(crate) fn on_request(&mut self, now: Instant, flow: Flow, msg: Message) {
        if let Err(e) = msg.validate_request() {
            self.counters.malformed_in += 1;
            if msg.method() != Some(Method::Ack) {
                self.reply_stateless(&msg, flow, e.status, e.reason);
            }
            return;
        }
        let method = msg.method();
        let Some(key) = server_key(&msg, None) else {
            return;
        };
        if method == Some(Method::Ack) {
            return self.on_ack(now, flow, msg, &key);
        }
        if let Some(id) = self.servers.find(&key) {
            let actions = self
                .servers
                .get(id)
                .map(|st| st.machine.on_request_retransmission())
                .unwrap_or_default();
            return self.server_actions(now, id, actions);
        }
        if method == Some(Method::Cancel) {
            return self.on_cancel(now, flow, msg, key);
        }
        if self.servers.len() >= self.cfg.max_transactions {
            self.counters.overloaded += 1;
            return self.reply_stateless(&msg, flow, 503, "Service Unavailable");
        }
        let reliable = flow.transport.is_reliable();
        let machine = if method == Some(Method::Invite) {
            ServerMachine::Invite(tx::ServerInvite::new(reliable, &self.cfg.timers))
        } else {
            ServerMachine::NonInvite(tx::ServerNonInvite::new(reliable, &self.cfg.timers))
        };
        let key = self.servers.insert(
            key,
            ServerTx {
                machine,
                request: Some(msg.clone()),
                flow,
                ctx: None,
                final_sent: false,
            },
        );
        if method == Some(Method::Invite) {
            // §16.2: a stateful proxy answers INVITE with 100 at once, stopping retransmissions.
            self.respond(now, key, 100, "Trying", &[], None);
        }
        match self.decide(now, &msg, key, flow) {
            Some(Decision::Reply(code, reason)) => self.respond(now, key, code, reason, &[], None),
            Some(Decision::ReplyOwned(code, reason)) => {
                self.respond(now, key, code, &reason, &[], None)
            }
            Some(Decision::Feature { user, req }) => self.apply_feature(now, key, &user, req),
            Some(Decision::Hunt {
                target,
                hunt,
                pop,
                hash,
            }) => {
                if let Some(ctx_id) = self.new_context(key, &msg, pop, &hash, Some(hunt)) {
                    self.hunt_start(now, ctx_id, target);
                }
            }
            Some(Decision::Register) => self.register(now, key, &msg, flow),
            Some(Decision::OptionsHere) => {
                let h = Core::capability_headers();
                self.respond(now, key, 200, "OK", &h, None);
            }
            Some(Decision::Forward { hops, pop, hash }) => {
                self.fork(now, key, &msg, hops, pop, &hash)
            }
            None => {} // already answered (challenge)
        }
    }

    /// The routing pipeline (§16.3–16.5). `None` means a response was already sent.
    fn decide(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerTxId,
        flow: Flow,
    ) -> Option<Decision> {
        let method = msg.method();
        let uri = match msg.uri() {
            Ok(u) => u,
            Err(_) => return Some(Decision::Reply(400, "Bad Request-URI")),
        };
        let for_us = uri.user.is_none() && self.is_local_domain(&uri);
        if msg.max_forwards() == Some(0) {
            // RFC 4475 zeromf: the proxy may answer an OPTIONS to itself.
            if for_us && method == Some(Method::Options) {
                return Some(Decision::OptionsHere);
            }
            return Some(Decision::Reply(483, "Too Many Hops"));
        }
        let unsupported = self.unsupported_proxy_require(msg);
        if !unsupported.is_empty() {
            let h = [("Unsupported", unsupported.join(", "))];
            self.respond(now, key, 420, "Bad Extension", &h, None);
            return None;
        }
        let hash = self.loop_hash(msg);
        if self.is_loop(msg, &hash) {
            return Some(Decision::Reply(482, "Loop Detected"));
        }
        let pop = self.our_routes(msg);
        // Only requests inside a dialog we record-routed may use our route to reach targets
        // that are not ours; anything else would make us an open relay.
        let in_dialog = msg.to().is_some_and(|t| t.tag().is_some());
        let dialog_route = pop > 0 && in_dialog && self.route_is_signed(msg);
        if let Some(next) = self.next_route(msg, pop) {
            if !dialog_route {
                // Someone else's route set: not a dialog we record-routed. Relaying for
                // other domains is issue #6's policy; until then, no open relay.
                return Some(Decision::Reply(403, "Relaying Denied"));
            }
            let hop = Uri::parse(next).ok().and_then(|u| self.resolve(&u));
            return Some(along_dialog(msg, hop, pop, &hash, "Cannot Resolve Route"));
        }
        if !self.is_local_domain(&uri) {
            if dialog_route {
                // In-dialog request through our Record-Route: the R-URI is the peer's contact.
                let hop = self.dialog_hop(&uri, now);
                return Some(along_dialog(msg, hop, pop, &hash, "Cannot Resolve Target"));
            }
            // Another domain: only our own users may go there through us (no open relay).
            return self.decide_outgoing(now, msg, key, flow, &uri, pop, hash);
        }
        if method == Some(Method::Register) {
            return Some(Decision::Register);
        }
        let Some(callee) = uri.user_unescaped() else {
            return Some(match method {
                Some(Method::Options) => Decision::OptionsHere,
                _ => Decision::Reply(404, "Not Found"),
            });
        };
        // Requests from local users are authenticated (§22.3, 407) and must be sent as
        // themselves; requests from elsewhere reach local users unauthenticated.
        let from = msg.from()?;
        let from_local = from.uri.is_sip() && self.is_local_domain(&from.uri);
        // A request we sent to ourselves (a spiral) was authenticated on its first pass.
        let spiral = self.is_spiral(flow);
        let mut caller = None;
        // Only a request inside a dialog we record-routed (our Route on top) skips this: a To
        // tag alone proves nothing.
        if from_local && !dialog_route && !spiral {
            match self.authenticate_caller(now, msg, key, flow) {
                Ok(user) => caller = Some(user),
                Err(d) => return d,
            }
        }
        // The main domain has the phone system (extensions, groups, rules); the others
        // have their users by name.
        let other_domain = self
            .served_domain(&uri.host)
            .filter(|d| *d != self.cfg.domain)
            .map(str::to_string);
        let main_domain = other_domain.is_none();
        let callee_domain = other_domain.as_deref().unwrap_or(&self.cfg.domain);
        if caller.is_none() && !from_local && !spiral {
            // From another domain (RFC 3263 federation): the policy, then users by name only,
            // and only those who accept calls from outside.
            if let Some(refused) = self.inbound_refused(flow) {
                return Some(refused);
            }
            let name = self
                .users
                .by_name(&self.qualify(&callee, callee_domain))
                .map(|u| u.name.clone());
            return Some(match name.filter(|n| self.plan.accepts_external(n)) {
                Some(name) => Decision::Hunt {
                    target: Dialed::Local(crate::plan::Target::User(name)),
                    hunt: Box::new(Hunt::new(msg.uri_str(), None, None)),
                    pop,
                    hash,
                },
                None => Decision::Reply(404, "Not Found"),
            });
        }
        let dialed = if main_domain {
            self.plan.dial(&callee, caller.as_deref())
        } else {
            match self.users.by_name(&self.qualify(&callee, callee_domain)) {
                Some(u) => Dialed::Local(crate::plan::Target::User(u.name.clone())),
                None => Dialed::NotFound,
            }
        };
        let target = match dialed {
            Dialed::Feature(req) => {
                return Some(match (caller, method) {
                    (Some(user), Some(Method::Invite)) => Decision::Feature { user, req },
                    _ => Decision::Reply(404, "Not Found"),
                })
            }
            Dialed::Reject(code, reason) => return Some(Decision::ReplyOwned(code, reason)),
            Dialed::NotFound => return Some(Decision::Reply(404, "Not Found")),
            Dialed::Remote(_)
                if !caller
                    .as_deref()
                    .is_some_and(|c| self.plan.may_call_outside(c)) =>
            {
                return Some(Decision::Reply(403, "Calls Outside The Domain Not Allowed"))
            }
            t => t,
        };
        let asserted = caller.as_ref().map(|c| format!("<{}>", self.aor_uri(c)));
        let hunt = Box::new(Hunt::new(msg.uri_str(), caller, asserted));
        Some(Decision::Hunt {
            target,
            hunt,
            pop,
            hash,
        })
    }

    /// A request for another domain, out of any dialog of ours: a local user (authenticated)
    /// with permission calls or messages it directly; anyone else gets 403.
    #[allow(clippy::too_many_arguments)]
    fn decide_outgoing(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerTxId,
        flow: Flow,
        uri: &Uri<'_>,
        pop: usize,
        hash: String,
    ) -> Option<Decision> {
        let from = msg.from()?;
        let from_local = from.uri.is_sip() && self.is_local_domain(&from.uri);
        if !from_local || self.is_spiral(flow) || msg.method() == Some(Method::Register) {
            return Some(Decision::Reply(403, "Relaying Denied"));
        }
        let user = match self.authenticate_caller(now, msg, key, flow) {
            Ok(user) => user,
            Err(d) => return d,
        };
        if !self.plan.may_call_outside(&user) {
            return Some(Decision::Reply(403, "Calls Outside The Domain Not Allowed"));
        }
        let hunt = Box::new(Hunt::new(msg.uri_str(), Some(user), None));
        Some(Decision::Hunt {
            target: Dialed::Remote(uri.raw.to_string()),
            hunt,
            pop,
            hash,
        })
    }

    /// Digest authentication of a local caller (407 in its From domain's realm), who must
    /// send as themselves. Err carries the decision when it is not an authenticated user
    /// (None: a challenge went out).
    fn authenticate_caller(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerTxId,
        flow: Flow,
    ) -> Result<String, Option<Decision>> {
        let Some(from) = msg.from() else {
            return Err(Some(Decision::Reply(400, "Bad From")));
        };
        let domain = self
            .served_domain(&from.uri.host)
            .unwrap_or(&self.cfg.domain)
            .to_string();
        match self.authenticate(now, msg, true, flow) {
            AuthOutcome::User(user) => {
                let claimed = from.uri.user_unescaped().and_then(|u| {
                    let key = self.qualify(&u, &domain);
                    let found = if domain == self.cfg.domain {
                        self.users.find(&key)
                    } else {
                        self.users.by_name(&key)
                    };
                    found.map(|u| u.name.clone())
                });
                if claimed.as_deref() != Some(user.as_str()) {
                    tracing::info!(%user, from = %from.uri, "request with someone else's From refused");
                    return Err(Some(Decision::Reply(403, "Forbidden: From Is Not You")));
                }
                Ok(user)
            }
            AuthOutcome::Challenge { stale } => {
                let h = self.challenges(now, true, stale, &domain);
                self.respond(now, key, 407, "Proxy Authentication Required", &h, None);
                Err(None)
            }
            AuthOutcome::Reject(code, reason) => Err(Some(Decision::Reply(code, reason))),
        }
    }

    /// The inbound policy for a request from another domain: None when it may come in.
    fn inbound_refused(&self, flow: Flow) -> Option<Decision> {
        use crate::InboundPolicy;
        match self.cfg.inbound {
            InboundPolicy::Open => None,
            InboundPolicy::Closed => Some(Decision::Reply(403, "Calls From Other Domains Refused")),
            InboundPolicy::TlsOnly if flow.transport == Transport::Tls => None,
            InboundPolicy::TlsOnly => Some(Decision::Reply(
                403,
                "Calls From Other Domains Over TLS Only",
            )),
        }
    }

    /// A response context for the request of server transaction `key`, with no branch yet.
    pub(crate) fn new_context(
        &mut self,
        key: ServerTxId,
        msg: &Message,
        pop: usize,
        hash: &str,
        hunt: Option<Box<Hunt>>,
    ) -> Option<CtxId> {
        let invite = msg.method() == Some(Method::Invite);
        let ctx_id = CtxId(self.id());
        let in_flow = match self.servers.get_mut(key) {
            Some(st) => {
                st.ctx = Some(ctx_id);
                st.flow
            }
            None => return None,
        };
        let dialog_creating = msg.to().is_none_or(|t| t.tag().is_none())
            && matches!(
                msg.method(),
                Some(Method::Invite | Method::Subscribe | Method::Refer)
            );
        self.contexts.insert(
            ctx_id,
            ProxyCtx {
                server: key,
                invite,
                branches: vec![],
                best: None,
                answered: false,
                final_sent: false,
                cancelled: false,
                redirects: 0,
                pop,
                hash: hash.to_string(),
                in_flow,
                dialog_creating,
                hunt,
            },
        );
        Some(ctx_id)
    }

    /// Forks the request to every hop in parallel (§16.6) under one response context.
    fn fork(
        &mut self,
        now: Instant,
        key: ServerTxId,
        msg: &Message,
        hops: Vec<Hop>,
        pop: usize,
        hash: &str,
    ) {
        if let Some(ctx_id) = self.new_context(key, msg, pop, hash, None) {
            self.add_branches(now, ctx_id, hops, &[]);
            if self
                .contexts
                .get(&ctx_id)
                .is_some_and(|c| c.branches.is_empty())
            {
                self.contexts.remove(&ctx_id);
                self.respond(now, key, 500, "Server Internal Error", &[], None);
            }
        }
    }

    /// Adds a branch per hop to a context and sends the request on each; `extra` headers
    /// (Diversion, History-Info, P-Asserted-Identity) go into every copy.
    pub(crate) fn add_branches(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        hops: Vec<Hop>,
        extra: &[(&'static str, String)],
    ) {
        self.add_branches_at(now, ctx_id, hops, extra, None)
    }

    /// `add_branches`, or with `replace` the one hop sent again as branch `replace` (the
    /// next server of its domain after a failure).
    fn add_branches_at(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        hops: Vec<Hop>,
        extra: &[(&'static str, String)],
        replace: Option<usize>,
    ) {
        let Some(ctx) = self.contexts.get(&ctx_id) else {
            return;
        };
        let key = ctx.server;
        let (pop, in_flow, dialog_creating, invite) =
            (ctx.pop, ctx.in_flow, ctx.dialog_creating, ctx.invite);
        let hash = ctx.hash.clone();
        let hunting = ctx.hunt.is_some();
        let Some(msg) = self.servers.get(key).and_then(|st| st.request.clone()) else {
            return;
        };
        // RFC 3261 §26.2: a sips: request only ever travels over TLS.
        let sips = msg
            .uri_str()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("sips:"));
        let hops = if sips && hops.iter().any(|h| h.flow.transport != Transport::Tls) {
            let tls: Vec<Hop> = hops
                .into_iter()
                .filter(|h| h.flow.transport == Transport::Tls)
                .collect();
            if tls.is_empty() {
                tracing::info!(
                    uri = msg.uri_str(),
                    "sips: request with no TLS route; not sent"
                );
                if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
                    if ctx
                        .best
                        .as_ref()
                        .is_none_or(|b| rank(480) < rank(b.status()))
                    {
                        ctx.best = Some(Candidate::Local(
                            480,
                            "Temporarily Unavailable (No TLS Route)",
                        ));
                    }
                }
                return self.maybe_finish(now, ctx_id);
            }
            tls
        } else {
            hops
        };
        let Some(ctx) = self.contexts.get(&ctx_id) else {
            return;
        };
        if ctx.branches.is_empty() && !hops.is_empty() {
            // Counted once per request, when something is tried at all.
            match msg.method() {
                Some(Method::Invite) => self.counters.calls_forwarded += 1,
                Some(Method::Message) => self.counters.messages_forwarded += 1,
                _ => {}
            }
        }
        let bodies = match self.media_for_request(now, &msg, in_flow, &hops, dialog_creating) {
            Ok(bodies) => bodies,
            Err(_) => {
                // No relay ports: refuse now rather than ring a phone that could not be heard.
                self.counters.relay_full += 1;
                let (code, reason) = if dialog_creating {
                    (503, "Media Relay Full")
                } else {
                    (488, "Not Acceptable Here (Media Relay Full)")
                };
                if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
                    ctx.hunt = None;
                    ctx.best = Some(Candidate::Local(code, reason));
                }
                return self.finish_with_best(now, ctx_id);
            }
        };
        let mut shape = BranchShape {
            msg: &msg,
            inbound: in_flow,
            record_route: dialog_creating,
            pop,
            extra,
            strip_identity: hunting,
            body: None,
        };
        for (i, hop) in hops.into_iter().enumerate() {
            // Each branch's SDP names the relay in its phone's address family.
            shape.body = bodies.get(i).and_then(|b| b.as_deref());
            let idx = replace
                .unwrap_or_else(|| self.contexts.get(&ctx_id).map_or(0, |c| c.branches.len()));
            let retry = (!hop.alternates.is_empty()).then(|| {
                Box::new(Retry {
                    uri: hop.uri.clone(),
                    alternates: hop.alternates.clone(),
                    extra: extra.to_vec(),
                })
            });
            // A registered phone's contact, or (inside a dialog) a peer the Request-URI
            // names directly: the answer comes from the phone itself, not from a proxy.
            let to_phone = invite
                && hop.route.is_empty()
                && Uri::parse(&hop.uri).ok().is_some_and(|u| {
                    self.location.by_address(&u, now).is_some()
                        || match u.host {
                            sip::uri::Host::Ip(ip) => {
                                std::net::SocketAddr::new(ip, u.port.unwrap_or(5060))
                                    == hop.flow.remote
                            }
                            sip::uri::Host::Name(_) => false,
                        }
                });
            let token = self.token();
            let mut branch = String::with_capacity(8 + hash.len() + token.len());
            branch.push_str("z9hG4bK");
            branch.push_str(&hash);
            branch.push('.');
            branch.push_str(&token);
            let mut flow = hop.flow;
            let mut data = self.forward_bytes(&shape, &hop.uri, flow, &branch, &hop.route);
            let mut udp_fallback = None;
            if flow.transport == Transport::Udp && data.len() > UDP_LIMIT {
                if let Some(l) = self.listener_for(Transport::Tcp, &flow.remote) {
                    let tcp = Flow {
                        transport: Transport::Tcp,
                        local: l.addr,
                        remote: flow.remote,
                        conn: None,
                    };
                    let tcp_data = self.forward_bytes(&shape, &hop.uri, tcp, &branch, &hop.route);
                    udp_fallback = Some((flow, std::mem::replace(&mut data, tcp_data)));
                    flow = tcp;
                }
            }
            let sent = data.clone();
            let reliable = flow.transport.is_reliable();
            let (machine, actions) = if invite {
                let (m, a) = tx::ClientInvite::new(now, reliable, &self.cfg.timers, data);
                (ClientMachine::Invite(m), a)
            } else {
                let (m, a) = tx::ClientNonInvite::new(now, reliable, &self.cfg.timers, data);
                (ClientMachine::NonInvite(m), a)
            };
            let ckey = self.clients.insert(
                client_key(&branch, msg.method_str()),
                ClientTx {
                    machine,
                    request: sent,
                    flow,
                    ctx: Some((ctx_id, idx)),
                    server: Some(key),
                    udp_fallback,
                },
            );
            if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
                let branch = Branch {
                    client: ckey,
                    state: BranchState::Trying,
                    timer_c: invite.then(|| now + TIMER_C),
                    to_phone,
                    retry,
                };
                match ctx.branches.get_mut(idx) {
                    Some(slot) if replace.is_some() => *slot = branch,
                    _ => ctx.branches.push(branch),
                }
            }
            if invite {
                self.timers
                    .push(now + TIMER_C, TimerRef::TimerC(ctx_id, idx));
            }
            self.client_actions(now, ckey, actions);
        }
    }

    /// Our Via for a flow; IPv6 hosts in brackets.
    pub(crate) fn via_for(&self, flow: Flow, branch: &str) -> String {
        let host = self
            .listener_for(flow.transport, &flow.remote)
            .map_or(flow.local.ip(), |l| l.host);
        format!(
            "SIP/2.0/{} {}:{};branch={branch};rport",
            flow.transport.via_token(),
            bracket(host),
            flow.local.port()
        )
    }

    fn record_route_for(&self, flow: Flow, token: &str) -> String {
        let host = self
            .listener_for(flow.transport, &flow.remote)
            .map_or(flow.local.ip(), |l| l.host);
        let t = match flow.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        format!(
            "<sip:{}:{}{t};lr;hw={token}>",
            bracket(host),
            flow.local.port()
        )
    }

    /// The signature our Record-Route carries for a dialog: a keyed hash of its Call-ID.
    pub(crate) fn route_token(&self, call_id: &str) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.cfg.route_key);
        h.update(call_id.as_bytes());
        let d = h.finalize();
        let mut s = String::with_capacity(16);
        for b in &d[..8] {
            super::push_hex(&mut s, u64::from(*b), 2);
        }
        s
    }

    /// Whether the top Route of `msg` is a Record-Route we signed for its dialog: only
    /// then may the request use us to reach what its route or Request-URI names (a forged
    /// Route naming us would make us an open relay).
    pub(crate) fn route_is_signed(&self, msg: &Message) -> bool {
        let Some(top) = msg
            .values(HeaderName::Route)
            .flat_map(name_addr_list)
            .next()
            .and_then(Result::ok)
        else {
            return false;
        };
        top.uri
            .param("hw")
            .flatten()
            .is_some_and(|t| t.eq_ignore_ascii_case(&self.route_token(msg.call_id())))
    }

    /// The request as we forward it (§16.6): new Request-URI, our Via on top with the
    /// previous one completed per RFC 3581, Max-Forwards decremented, our Route entries
    /// removed and, for dialog-creating requests, our Record-Route (two when the request
    /// changes transport or interface, RFC 5658).
    fn forward_bytes(
        &self,
        shape: &BranchShape<'_>,
        ruri: &str,
        out: Flow,
        branch: &str,
        route: &[String],
    ) -> sip::Bytes {
        let BranchShape {
            msg,
            inbound,
            record_route,
            pop,
            extra,
            strip_identity,
            body,
        } = *shape;
        let mut w = Writer::request(msg.method_str(), ruri);
        w.header("Via", &self.via_for(out, branch));
        if !route.is_empty() {
            let list: Vec<String> = route.iter().map(|r| format!("<{r}>")).collect();
            w.header("Route", &list.join(", "));
        }
        let mut first_via = true;
        let mut to_pop = pop;
        let mut saw_mf = false;
        let mut rr_pending = record_route;
        for h in &msg.headers {
            if rr_pending && h.name != HeaderName::Via {
                // Ours goes on top of the Record-Route list, after the Via block.
                rr_pending = false;
                let token = self.route_token(msg.call_id());
                let rr_out = self.record_route_for(out, &token);
                w.header("Record-Route", &rr_out);
                let rr_in = self.record_route_for(inbound, &token);
                if rr_in != rr_out {
                    w.header("Record-Route", &rr_in);
                }
            }
            match h.name {
                HeaderName::Via if first_via => {
                    first_via = false;
                    let value = msg.text(h.value);
                    match (via_with_received(msg, inbound.remote), msg.top_via()) {
                        (Some(top), Some(v)) => {
                            let rest = value.get(v.raw.len()..).unwrap_or("");
                            w.header_parts("Via", &[&top, rest]);
                        }
                        _ => {
                            w.line(msg.text(h.line));
                        }
                    }
                }
                HeaderName::MaxForwards => {
                    saw_mf = true;
                    let mf = msg.max_forwards().unwrap_or(70).saturating_sub(1);
                    w.header_num("Max-Forwards", mf as u64);
                }
                HeaderName::Route if to_pop > 0 => {
                    let rest: Vec<&str> = name_addr_list(msg.text(h.value))
                        .filter_map(Result::ok)
                        .map(|r| r.raw)
                        .collect();
                    let skip = to_pop.min(rest.len());
                    to_pop -= skip;
                    if rest.len() > skip {
                        w.header("Route", &rest[skip..].join(", "));
                    }
                }
                HeaderName::ContentLength => {}
                // A caller behind NAT (UDP) names its private address in Contact: the peer's
                // requests in the dialog would never reach it. Its Contact is given the
                // address its request came from (as nathelper's fix_nated_contact does).
                HeaderName::Contact
                    if record_route
                        && inbound.transport == Transport::Udp
                        && !msg.has_second_via() =>
                {
                    let value = msg.text(h.value);
                    match natted_contact(value, inbound.remote) {
                        Some(fixed) => {
                            w.header("Contact", &fixed);
                        }
                        None => {
                            w.line(msg.text(h.line));
                        }
                    }
                }
                // RFC 3325: an asserted identity is ours to give, never taken from a phone.
                HeaderName::PAssertedIdentity if strip_identity => {}
                // §22.3: credentials for our own realm end here; the callee has no use for
                // them and should not get a digest to attack offline.
                HeaderName::ProxyAuthorization if self.is_our_realm(msg.text(h.value)) => {}
                _ => {
                    w.line(msg.text(h.line));
                }
            }
        }
        if !saw_mf {
            w.header("Max-Forwards", "70");
        }
        for (name, value) in extra {
            w.header(name, value);
        }
        w.finish(None, body.unwrap_or(msg.body()))
    }

    /// The media side of a request about to be forwarded: a new call is entered in the call
    /// table, a BYE ends one, and SDP is rewritten when the call is relayed (a body per hop;
    /// none: the request's own). Spirals (our own request coming back) were handled on their
    /// first pass.
    fn media_for_request(
        &mut self,
        now: Instant,
        msg: &Message,
        inbound: Flow,
        hops: &[Hop],
        dialog_creating: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, super::calls::RelayFull> {
        if self.is_spiral(inbound) {
            return Ok(vec![]);
        }
        match msg.method() {
            Some(Method::Invite) if dialog_creating => self.call_begin(now, msg, inbound, hops),
            Some(Method::Bye) => {
                if self.is_the_call(msg) {
                    self.call_end(msg.call_id(), "BYE");
                }
                return Ok(vec![]);
            }
            _ => {}
        }
        if self.calls.is_empty() {
            return Ok(vec![]);
        }
        self.media_bodies(msg, inbound, hops)
    }

    /// A response's body as it goes upstream: rewritten when its call is relayed.
    fn media_for_response(&mut self, resp: &Message, from: Flow, toward: Flow) -> Option<Vec<u8>> {
        if self.calls.is_empty() || self.is_spiral(toward) {
            return None;
        }
        match self.media_body(resp, true, from, toward) {
            Ok(body) => body,
            Err(_) => {
                tracing::warn!(
                    call_id = resp.call_id(),
                    "no relay ports for an answer; SDP passed as is"
                );
                None
            }
        }
    }

    /// ACK: absorbed by the INVITE server transaction for a non-2xx, otherwise (ACK for a
    /// 2xx, new branch) forwarded statelessly along the dialog's route.
    fn on_ack(&mut self, now: Instant, flow: Flow, msg: Message, key: &str) {
        let invite = self.servers.find(key);
        if let Some((id, st)) = invite.and_then(|id| Some((id, self.servers.get_mut(id)?))) {
            if let ServerMachine::Invite(m) = &mut st.machine {
                let (disp, actions) = m.on_ack(now);
                self.server_actions(now, id, actions);
                if disp == Disposition::Absorb {
                    return;
                }
            }
        }
        let pop = self.our_routes(&msg);
        if pop > 0 && !self.route_is_signed(&msg) {
            tracing::debug!("ACK with a Route of ours we did not sign dropped");
            return;
        }
        let target = match self.next_route(&msg, pop) {
            Some(r) if pop > 0 => Uri::parse(r).ok().and_then(|u| self.resolve(&u)),
            Some(_) => None,
            None => msg.uri().ok().and_then(|u| {
                if pop > 0 || !self.is_local_domain(&u) {
                    (pop > 0).then(|| self.dialog_hop(&u, now)).flatten()
                } else {
                    // ACK to a local user's AOR (2xx from a UA that ignores Record-Route):
                    // route like the INVITE did.
                    let user = u.user_unescaped()?;
                    let name = self.users.find(&user)?.name.clone();
                    let b = self.location.lookup(&name, now).into_iter().next()?;
                    Uri::parse(&b.contact).ok().and_then(|c| self.resolve(&c))
                }
            }),
        };
        let Some(out) = target else {
            tracing::debug!("ACK with nowhere to go dropped");
            return;
        };
        // Stateless forwarding needs a branch that is the same for retransmissions (§16.11).
        let mut h = Fnv::new(self.salt);
        h.write(msg.top_via().and_then(|v| v.branch()).unwrap_or(""));
        h.write(msg.call_id());
        let branch = format!("z9hG4bKack{:016x}", h.finish());
        // An ACK may carry the answer to an offer made in a 2xx (RFC 3261 §13.2.1).
        let body = if self.calls.is_empty() || self.is_spiral(flow) {
            None
        } else {
            self.media_body(&msg, false, flow, out).ok().flatten()
        };
        let shape = BranchShape {
            msg: &msg,
            inbound: flow,
            record_route: false,
            pop,
            extra: &[],
            strip_identity: false,
            body: body.as_deref(),
        };
        let data = self.forward_bytes(&shape, msg.uri_str(), out, &branch, &[]);
        self.out.push(Action::Send {
            flow: out,
            data,
            key: None,
        });
    }

    /// CANCEL (§16.10): answered at once, then every pending branch of the INVITE is
    /// cancelled; the INVITE gets its 487 from the branches.
    fn on_cancel(&mut self, now: Instant, flow: Flow, msg: Message, key: String) {
        let invite_key = server_key(&msg, Some("INVITE"));
        let Some(invite_key) = invite_key.and_then(|k| self.servers.find(&k)) else {
            return self.reply_stateless(&msg, flow, 481, "Call/Transaction Does Not Exist");
        };
        let key = self.servers.insert(
            key,
            ServerTx {
                machine: super::ServerMachine::NonInvite(tx::ServerNonInvite::new(
                    flow.transport.is_reliable(),
                    &self.cfg.timers,
                )),
                request: Some(msg),
                flow,
                ctx: None,
                final_sent: false,
            },
        );
        self.respond(now, key, 200, "OK", &[], None);
        let (ctx, final_sent) = match self.servers.get(invite_key) {
            Some(st) => (st.ctx, st.final_sent),
            None => return,
        };
        if final_sent {
            return;
        }
        match ctx {
            Some(ctx) => {
                if let Some(c) = self.contexts.get_mut(&ctx) {
                    c.cancelled = true;
                }
                let n = self.contexts.get(&ctx).map_or(0, |c| c.branches.len());
                for i in 0..n {
                    self.cancel_branch(now, ctx, i);
                }
                // Nothing was ringing (DNS still looking, or between stages): done now.
                let idle = self
                    .contexts
                    .get(&ctx)
                    .is_some_and(|c| !c.final_sent && c.branches.iter().all(|b| b.state.is_done()));
                if idle {
                    self.finish_with_best(now, ctx);
                }
            }
            None => self.respond(now, invite_key, 487, "Request Terminated", &[], None),
        }
    }

    /// Sends CANCEL on a branch that has answered provisionally; otherwise remembers to.
    pub(crate) fn cancel_branch(&mut self, now: Instant, ctx: CtxId, idx: usize) {
        let send = self
            .contexts
            .get_mut(&ctx)
            .and_then(|c| c.branches.get_mut(idx))
            .is_some_and(|b| b.state.cancel());
        if send {
            self.send_cancel(now, ctx, idx);
        }
    }

    /// Sends the CANCEL of a branch whose state just became `Cancelling`.
    pub(crate) fn send_cancel(&mut self, now: Instant, ctx: CtxId, idx: usize) {
        let Some(b) = self
            .contexts
            .get_mut(&ctx)
            .and_then(|c| c.branches.get_mut(idx))
        else {
            return;
        };
        // §16.8: a cancelled branch that never answers is given up after 64*T1.
        let give_up = now + self.cfg.timers.t1 * 64;
        b.timer_c = Some(give_up);
        self.timers.push(give_up, TimerRef::TimerC(ctx, idx));
        let Some(ct) = self.clients.get(b.client) else {
            return;
        };
        let Ok(invite) = Message::parse(ct.request.clone(), false) else {
            return;
        };
        let data = request_like(&invite, "CANCEL", None).finish(None, b"");
        let flow = ct.flow;
        // A CANCEL shares its INVITE's branch (RFC 3261 §9.1).
        let branch = invite
            .top_via()
            .and_then(|v| v.branch())
            .unwrap_or("")
            .to_string();
        let data_for_tx = data.clone();
        let (m, actions) =
            tx::ClientNonInvite::new(now, flow.transport.is_reliable(), &self.cfg.timers, data);
        let key = self.clients.insert(
            client_key(&branch, "CANCEL"),
            ClientTx {
                machine: ClientMachine::NonInvite(m),
                request: data_for_tx,
                flow,
                ctx: None,
                server: None,
                udp_fallback: None,
            },
        );
        self.client_actions(now, key, actions);
    }

    /// Responses: matched to a client transaction by branch and CSeq method (§17.1.3).
    pub(crate) fn on_response(&mut self, now: Instant, flow: Flow, msg: Message) {
        if msg.validate_response().is_err() {
            self.counters.malformed_in += 1;
            return;
        }
        let (Some(via), Some((_, method))) = (msg.top_via(), msg.cseq()) else {
            return;
        };
        let status = msg.status().unwrap_or(500);
        let found = self
            .clients
            .find(&client_key(via.branch().unwrap_or(""), method));
        let Some((key, ct)) = found.and_then(|id| Some((id, self.clients.get_mut(id)?))) else {
            // RFC 4475 bcast and strays: a response we did not ask for is dropped, never
            // forwarded to whatever its next Via names.
            tracing::debug!(status, "response matches no transaction; dropped");
            return;
        };
        let ours = ct.ctx.is_none() && ct.server.is_none();
        if !ours && !msg.has_second_via() {
            // §16.7 step 3: with our Via removed nothing would be left to route it by.
            tracing::debug!(status, "response with no Via beyond ours; dropped");
            return;
        }
        let (disp, actions) = match &mut ct.machine {
            ClientMachine::Invite(m) => {
                let req = &ct.request;
                let resp = &msg;
                m.on_response(now, status, || ack_for(req, resp))
            }
            ClientMachine::NonInvite(m) => m.on_response(now, status),
        };
        let ctx = ct.ctx;
        let server = ct.server;
        self.client_actions(now, key, actions);
        if ours && disp == Disposition::PassUp && status >= 200 {
            // A request of our own: a keep-alive ping, or a feature-code confirmation.
            if self.ping_answered(key) {
                return;
            }
            if status < 300 {
                self.counters.notifications_delivered += 1;
            } else {
                tracing::info!(status, to = %msg.to().map(|t| t.uri.raw).unwrap_or(""), "our MESSAGE was refused");
            }
            return;
        }
        if disp == Disposition::PassUp {
            match (ctx, server) {
                (Some((ctx, idx)), _) if self.contexts.contains_key(&ctx) => {
                    self.branch_response(now, ctx, idx, msg, flow)
                }
                (_, Some(server)) if (200..300).contains(&status) => {
                    let toward = self.servers.get(server).map(|st| st.flow);
                    let body = toward.and_then(|f| self.media_for_response(&msg, flow, f));
                    let data = upstream_bytes(&msg, None, body.as_deref(), None);
                    self.send_server_response(now, server, status, data);
                }
                _ => {}
            }
        }
    }

    fn branch_response(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        idx: usize,
        resp: Message,
        from: Flow,
    ) {
        let status = resp.status().unwrap_or(500);
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        // A phone behind NAT answering a call names its private address in Contact; the
        // caller's requests in the dialog would never reach it. As for callers, its Contact
        // is given the address the answer came from.
        let fix_contact = ctx
            .branches
            .get(idx)
            .is_some_and(|b| b.to_phone && status > 100 && status < 300)
            .then_some(from);
        let server = ctx.server;
        let invite = ctx.invite;
        let (in_flow, dialog_creating) = (ctx.in_flow, ctx.dialog_creating);
        if status < 200 {
            let mut cancel = false;
            if let Some(b) = ctx.branches.get_mut(idx) {
                cancel = b.state.provisional();
                if invite {
                    b.timer_c = Some(now + TIMER_C);
                    self.timers
                        .push(now + TIMER_C, TimerRef::TimerC(ctx_id, idx));
                }
            }
            let forward = status > 100 && !ctx.final_sent;
            if cancel {
                self.send_cancel(now, ctx_id, idx);
            }
            if forward {
                let body = self.media_for_response(&resp, from, in_flow);
                let data = upstream_bytes(&resp, None, body.as_deref(), fix_contact);
                self.send_server_response(now, server, status, data);
            }
            return;
        }
        if status == 503 && self.try_alternate(now, ctx_id, idx) {
            return;
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let abandoned = ctx
            .branches
            .get(idx)
            .is_some_and(|b| b.state.is_abandoned());
        if let Some(b) = ctx.branches.get_mut(idx) {
            b.state.finish(status);
        }
        if (300..400).contains(&status) && !ctx.answered && self.recurse(now, ctx_id, &resp) {
            // §16.7 step 4 (recursion): the Contacts are being tried instead.
            return self.maybe_finish(now, ctx_id);
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if abandoned && status >= 300 {
            // We cancelled it ourselves (ring time over): its 487 tells the caller nothing.
        } else if status < 300 {
            // §16.7 step 5: every 2xx goes upstream at once, even after another one.
            ctx.answered = true;
            ctx.final_sent = true;
            if invite && dialog_creating {
                self.call_answered(&resp, from);
            }
            let body = self.media_for_response(&resp, from, in_flow);
            let data = upstream_bytes(&resp, None, body.as_deref(), fix_contact);
            self.send_server_response(now, server, status, data);
            if invite {
                self.cancel_all(now, ctx_id);
            }
        } else {
            if !ctx.answered
                && ctx
                    .best
                    .as_ref()
                    .is_none_or(|b| rank(status) < rank(b.status()))
            {
                ctx.best = Some(Candidate::Received(resp));
            }
            if invite && status >= 600 {
                self.cancel_all(now, ctx_id);
            }
        }
        self.maybe_finish(now, ctx_id);
    }

    /// A branch failed without a response (timeout, transport error): a local final for it.
    pub(crate) fn branch_failed(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        idx: usize,
        code: u16,
        reason: &'static str,
    ) {
        if matches!(code, 408 | 503) && self.try_alternate(now, ctx_id, idx) {
            return;
        }
        // §16.9: a next hop we could not reach counts as its 503, and §16.7 step 6 turns a
        // 503 into 500 upstream, so that the caller's proxy does not take us for overloaded.
        let (code, reason) = if code == 503 {
            (500, "Server Internal Error (Next Hop Unreachable)")
        } else {
            (code, reason)
        };
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(b) = ctx.branches.get_mut(idx) else {
            return;
        };
        if b.state.is_done() {
            return;
        }
        let abandoned = b.state.is_abandoned();
        b.state.finish(code);
        if !ctx.answered
            && !abandoned
            && ctx
                .best
                .as_ref()
                .is_none_or(|c| rank(code) < rank(c.status()))
        {
            ctx.best = Some(Candidate::Local(code, reason));
        }
        self.maybe_finish(now, ctx_id);
    }

    /// RFC 3263 §4.3: a branch to another domain whose server timed out, could not be
    /// reached or answered 503 goes to the domain's next server. False when none is left.
    fn try_alternate(&mut self, now: Instant, ctx_id: CtxId, idx: usize) -> bool {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return false;
        };
        if ctx.cancelled || ctx.answered {
            return false;
        }
        let Some(b) = ctx.branches.get_mut(idx) else {
            return false;
        };
        if !b.state.may_retry() {
            return false;
        }
        let Some(r) = b.retry.as_mut().filter(|r| !r.alternates.is_empty()) else {
            return false;
        };
        let flow = r.alternates.remove(0);
        // The failed server's transaction no longer speaks for this branch slot (a late
        // error on it must not fail the new one over again).
        if let Some(old) = self.clients.get_mut(b.client) {
            old.ctx = None;
        }
        let Some(r) = self
            .contexts
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(idx))
            .and_then(|b| b.retry.as_mut())
        else {
            return false;
        };
        let hop = Hop {
            uri: r.uri.clone(),
            flow,
            route: vec![],
            alternates: std::mem::take(&mut r.alternates),
        };
        let extra = std::mem::take(&mut r.extra);
        tracing::info!(uri = %hop.uri, next = %flow.remote, transport = flow.transport.as_str(),
            "server failed; trying the domain's next one (RFC 3263)");
        self.add_branches_at(now, ctx_id, vec![hop], &extra, Some(idx));
        true
    }

    fn cancel_all(&mut self, now: Instant, ctx_id: CtxId) {
        let n = self.contexts.get(&ctx_id).map_or(0, |c| c.branches.len());
        for i in 0..n {
            self.cancel_branch(now, ctx_id, i);
        }
    }

    /// After a branch's final response: when the current stage has nothing left ringing, a
    /// hunt goes on (next stage, forwarding); otherwise the best response goes up. The
    /// context is dropped once every branch has its final response.
    fn maybe_finish(&mut self, now: Instant, ctx_id: CtxId) {
        let Some(ctx) = self.contexts.get(&ctx_id) else {
            return;
        };
        if ctx.final_sent {
            return self.drop_context_if_done(ctx_id);
        }
        let from = ctx.hunt.as_ref().map_or(0, |h| h.stage_start);
        if ctx.branches[from.min(ctx.branches.len())..]
            .iter()
            .any(|b| !b.state.is_done())
        {
            return;
        }
        // A stage still waiting for DNS is not over because an earlier one's late answer
        // came in.
        let generation = ctx.hunt.as_ref().map(|h| h.generation);
        if self
            .resolving
            .values()
            .any(|r| r.ctx_id == ctx_id && Some(r.generation) == generation)
        {
            return;
        }
        if ctx.hunt.is_some() {
            let best = ctx.best.as_ref().map(Candidate::status);
            return self.hunt_stage_over(now, ctx_id, best);
        }
        self.finish_with_best(now, ctx_id);
    }

    /// Sends the best final response collected (§16.7 step 6), or 480 when every branch was
    /// given up by us.
    pub(crate) fn finish_with_best(&mut self, now: Instant, ctx_id: CtxId) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.final_sent {
            return self.drop_context_if_done(ctx_id);
        }
        ctx.final_sent = true;
        let key = ctx.server;
        let best = ctx.best.take();
        let cancelled = ctx.cancelled;
        match best {
            Some(Candidate::Received(resp)) => {
                let status = resp.status().unwrap_or(500);
                // §16.7 step 6: a 503 from downstream must not make the caller's
                // proxy think *we* are overloaded.
                let (code, data) = if status == 503 {
                    (
                        500,
                        upstream_bytes(&resp, Some((500, "Server Internal Error")), None, None),
                    )
                } else {
                    (status, upstream_bytes(&resp, None, None, None))
                };
                self.send_server_response(now, key, code, data);
            }
            Some(Candidate::Local(code, reason)) => self.respond(now, key, code, reason, &[], None),
            None if cancelled => self.respond(now, key, 487, "Request Terminated", &[], None),
            None => self.respond(
                now,
                key,
                480,
                "Temporarily Unavailable (No Answer)",
                &[],
                None,
            ),
        }
        self.drop_context_if_done(ctx_id);
    }

    /// Timer C fired for a branch (§16.8): cancel it if it rang, else (or if even the CANCEL
    /// brought no final response) give it up as 408.
    pub(crate) fn timer_c(&mut self, now: Instant, ctx_id: CtxId, idx: usize) {
        let Some(b) = self.contexts.get(&ctx_id).and_then(|c| c.branches.get(idx)) else {
            return;
        };
        if b.state.is_done() || b.timer_c.is_none_or(|t| t > now) {
            return;
        }
        if b.state == BranchState::Ringing {
            self.cancel_branch(now, ctx_id, idx);
        } else {
            let key = b.client;
            self.clients.remove(key);
            self.branch_failed(now, ctx_id, idx, 408, "Request Timeout");
        }
    }
}

/// An in-dialog request goes to one hop with its Request-URI unchanged, or gets 500 (the next
/// hop cannot be found: no overload of ours, so no 503, RFC 3261 §16.7).
fn along_dialog(
    msg: &Message,
    hop: Option<Flow>,
    pop: usize,
    hash: &str,
    unresolved: &'static str,
) -> Decision {
    match hop {
        Some(flow) => Decision::Forward {
            hops: vec![Hop {
                uri: msg.uri_str().to_string(),
                flow,
                route: vec![],
                alternates: vec![],
            }],
            pop,
            hash: hash.to_string(),
        },
        None => Decision::Reply(500, unresolved),
    }
}

/// What every branch of a context shares when its request is built.
#[derive(Clone, Copy)]
struct BranchShape<'a> {
    msg: &'a Message,
    inbound: Flow,
    record_route: bool,
    pop: usize,
    extra: &'a [(&'static str, String)],
    /// Drop the caller's P-Asserted-Identity (we assert identities ourselves).
    strip_identity: bool,
    /// A body to send instead of the request's own (SDP rewritten for the media relay).
    body: Option<&'a [u8]>,
}

/// A Contact value with its IP address and port replaced by `source` when they differ (the
/// sender is behind NAT); None when it needs no change or is not a single SIP URI with an IP.
fn natted_contact(value: &str, source: std::net::SocketAddr) -> Option<String> {
    let mut list = name_addr_list(value);
    let c = list.next()?.ok()?;
    if list.next().is_some() {
        return None;
    }
    let ip = match c.uri.host {
        sip::uri::Host::Ip(ip) => ip,
        sip::uri::Host::Name(_) => return None,
    };
    let port = c.uri.port.unwrap_or(5060);
    if std::net::SocketAddr::new(ip, port) == source {
        return None;
    }
    // The host (and port) as written in the URI, after the user part.
    let raw = c.uri.raw;
    let after_user = raw.find('@').map_or(raw.find(':')? + 1, |i| i + 1);
    let rest = &raw[after_user..];
    let host_len = rest.find([';', '?', '>']).unwrap_or(rest.len());
    let new_uri = format!(
        "{}{}:{}{}",
        &raw[..after_user],
        bracket(source.ip()),
        source.port(),
        &rest[host_len..]
    );
    Some(value.replacen(raw, &new_uri, 1))
}

/// `natted_contact` for a phone reached over `flow`: over a stream only when the IP differs
/// (a phone's Contact names its listening port, never its connection's), over UDP when the
/// address does.
fn natted_contact_for(value: &str, flow: Flow) -> Option<String> {
    if flow.transport.is_reliable() {
        let c = name_addr_list(value).next()?.ok()?;
        match c.uri.host {
            sip::uri::Host::Ip(ip) if ip != flow.remote.ip() => {}
            _ => return None,
        }
    }
    natted_contact(value, flow.remote)
}

pub(crate) fn client_key(branch: &str, method: &str) -> String {
    let method = if method == "ACK" { "INVITE" } else { method };
    let mut k = String::with_capacity(4 + branch.len() + method.len());
    k.push_str("c|");
    k.push_str(branch);
    k.push('|');
    k.push_str(method);
    k
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// ACK for a non-2xx final response (§17.1.1.3): same branch and Route set as the INVITE,
/// To from the response.
fn ack_for(req: &sip::Bytes, resp: &Message) -> sip::Bytes {
    let to = resp.value(HeaderName::To).unwrap_or("");
    match Message::parse(req.clone(), false) {
        Ok(req) => request_like(&req, "ACK", Some(to)).finish(None, b""),
        // We wrote this request ourselves, so it parses; were it not to, sending nothing
        // (the edge skips empty data) beats sending garbage.
        Err(_) => sip::Bytes::new(),
    }
}

/// A response as it goes upstream: our Via removed, optionally a new status line, a new
/// body (SDP for the relay) and the Contact of a phone behind NAT set to `fix_contact`.
fn upstream_bytes(
    resp: &Message,
    status: Option<(u16, &str)>,
    body: Option<&[u8]>,
    fix_contact: Option<Flow>,
) -> sip::Bytes {
    let mut w = match status {
        Some((code, reason)) => Writer::response(code, reason),
        None => Writer::response(resp.status().unwrap_or(500), resp.reason()),
    };
    let mut first_via = true;
    for h in &resp.headers {
        match h.name {
            HeaderName::Via if first_via => {
                first_via = false;
                let value = resp.text(h.value);
                if let Some(top) = resp.top_via() {
                    let rest = value.get(top.raw.len()..).unwrap_or("").trim_start();
                    if let Some(rest) = rest.strip_prefix(',') {
                        w.header("Via", rest.trim_start());
                    }
                }
            }
            HeaderName::ContentLength => {}
            HeaderName::Contact if fix_contact.is_some() => {
                let value = resp.text(h.value);
                match fix_contact.and_then(|f| natted_contact_for(value, f)) {
                    Some(fixed) => {
                        w.header("Contact", &fixed);
                    }
                    None => {
                        w.line(resp.text(h.line));
                    }
                }
            }
            _ => {
                w.line(resp.text(h.line));
            }
        }
    }
    w.finish(None, body.unwrap_or(resp.body()))
}
