//! The transaction-stateful proxy (RFC 3261 §16): the request pipeline (validate, loop and
//! hop checks, loose routing, authentication, location lookup), parallel forking with a
//! response context per request, best-response selection, CANCEL fan-out and Timer C.

use super::auth::AuthOutcome;
use super::branch::BranchState;
use super::handles::{ClientTxId, CtxId, ServerTxId};
use super::route::Hop;
use super::timers::TimerRef;
use super::{
    client_key, request_like, server_key, Action, ClientMachine, ClientTx, Core, Flow,
    ServerMachine, ServerTx, TIMER_C,
};
use crate::plan::{Dialed, FeatureRequest};
use crate::Transport;
use forking::Hunt;
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
impl Branch {
    /// Ringing: answered provisionally, no CANCEL asked for.
    pub(crate) fn state_is_ringing(&self) -> bool {
        self.state.is_ringing()
    }
}

pub(crate) struct Branch {
    pub client: ClientTxId,
    /// Private to the proxy: changed only through `BranchState`'s transitions.
    state: BranchState,
    pub timer_c: Option<Instant>,
    /// An INVITE sent to a phone itself (not to another proxy): a Contact in its answer
    /// that names another address than the answer's source is behind NAT.
    pub to_phone: bool,
    /// Other servers of the target's domain to try if this one fails (RFC 3263 §4.3).
    pub retry: Option<Box<Retry>>,
}

/// What a branch needs to be sent again: to the next of its domain's servers, or to its
/// provider with credentials.
pub(crate) struct Retry {
    hop: Hop,
    extra: Vec<(&'static str, String)>,
    /// Credentials for a provider's challenge went with it already.
    authorized: bool,
}

/// What the proxy keeps across requests: the response context of each forwarded request, where
/// each rotating group starts next, DNS answers and the lookups in flight.
#[derive(Default)]
pub(crate) struct Proxy {
    contexts: std::collections::HashMap<CtxId, ProxyCtx>,
    /// Where each rotating group starts its next call.
    rotation: std::collections::HashMap<String, usize>,
    /// Answers of DNS (RFC 3263 targets) until their TTL runs out.
    dns_cache: std::collections::HashMap<
        crate::DnsQuery,
        (Vec<(Transport, std::net::SocketAddr)>, Instant),
    >,
    /// Lookups in flight: id -> the hunt waiting for them.
    resolving: std::collections::HashMap<u64, forking::Resolving>,
    /// ENUM answers until their TTL runs out: E.164 number -> its SIP URI, if any.
    enum_cache: std::collections::HashMap<String, (Option<String>, Instant)>,
}

impl Proxy {
    /// Response contexts in progress.
    pub(crate) fn context_count(&self) -> usize {
        self.contexts.len()
    }

    /// The ids of the contexts in progress.
    #[cfg(test)]
    pub(crate) fn context_ids(&self) -> impl Iterator<Item = CtxId> + '_ {
        self.contexts.keys().copied()
    }

    /// The ids of the contexts in progress.
    pub(crate) fn ctx_ids(&self) -> impl Iterator<Item = CtxId> + '_ {
        self.contexts.keys().copied()
    }

    /// A response context.
    pub(crate) fn ctx(&self, id: CtxId) -> Option<&ProxyCtx> {
        self.contexts.get(&id)
    }

    /// A response context, to change.
    pub(crate) fn ctx_mut(&mut self, id: CtxId) -> Option<&mut ProxyCtx> {
        self.contexts.get_mut(&id)
    }

    /// Forgets DNS answers (the DNS servers changed).
    pub(crate) fn clear_dns_cache(&mut self) {
        self.dns_cache.clear();
    }
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
    /// How its branches are built.
    pub template: BranchTemplate,
    /// Calls to local targets: stages, forwarding, history.
    pub hunt: Option<Box<Hunt>>,
    /// The caller is an unauthenticated outsider: until a phone is rung, the final answer
    /// is the 404 an unknown user gets, so that nobody learns who exists from outside.
    pub conceal: bool,
}

/// How a context's branches are built, whichever target they go to.
pub(crate) struct BranchTemplate {
    /// Our Route entries to pop.
    pub pop: usize,
    /// The request's loop-detection hash, in each branch's Via.
    pub hash: String,
    /// Where the request came from.
    pub in_flow: Flow,
    /// Whether to record-route (a dialog-creating request).
    pub dialog_creating: bool,
}

/// A stage's outcome: `Ok` passes the request on with what the stage learned; `Err` ends it
/// with a decision (`None`: a response was already sent).
type Stage<T> = Result<T, Option<Decision>>;

/// Where a request that goes on is bound (stage `leave`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// A user (or extension, group, number) of a domain we serve.
    Ours,
    /// One phone instance of a user, by its GRUU (RFC 5627).
    Instance,
    /// The server itself, asked for a logged-in page's session information.
    Session,
    /// Another domain, out of any dialog of ours.
    OtherDomain,
}

/// Who calls (stage `identify`).
pub(crate) enum Caller {
    /// A local user who proved it.
    User(String),
    /// Another domain's caller, admitted by the inbound policy.
    OtherDomain,
    /// Not checked here: inside a dialog we record-routed, or our own spiral.
    Unchecked,
}

/// What admission learned of a request that goes on.
pub(crate) struct Admitted<'m> {
    uri: Uri<'m>,
    /// The loop-detection hash (§16.3 step 4), for the branches' Via.
    hash: String,
    /// Our own Route entries on top, to pop.
    pop: usize,
    /// Inside a dialog we record-routed (our signed Route on top).
    dialog_route: bool,
}

/// What the pipeline decided for a new request.
pub(crate) enum Decision {
    Reply(u16, &'static str),
    ReplyOwned(u16, String),
    /// Ring a local target (or a remote one a local user dialled) through a hunt.
    /// `conceal`: the caller is an unauthenticated outsider (see `ProxyCtx::conceal`).
    Hunt {
        target: Dialed,
        hunt: Box<Hunt>,
        pop: usize,
        hash: String,
        conceal: bool,
    },
    Feature {
        user: String,
        req: FeatureRequest,
    },
    Register,
    OptionsHere,
    /// What a logged-in browser page is told about its user (see `session_info`).
    SessionInfo(String),
    /// Forward to these hops, popping our Route entries; record-route if dialog-creating.
    /// `hash` is the request's loop-detection hash, for the branches.
    Forward {
        hops: Vec<Hop>,
        pop: usize,
        hash: String,
    },
}

mod branches;
pub(crate) mod forking;
mod responses;

// The parts share their helpers.
pub(crate) use branches::*;

impl Core {
    pub(crate) fn on_request(&mut self, now: Instant, flow: Flow, msg: Message) {
        if let Err(e) = msg.validate_request() {
            self.counters.traffic.malformed_in += 1;
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
        if let Some(id) = self.tx.find_server(&key) {
            let actions = self
                .tx
                .server(id)
                .map(|st| st.machine.on_request_retransmission())
                .unwrap_or_default();
            return self.server_actions(now, id, actions);
        }
        if method == Some(Method::Cancel) {
            return self.on_cancel(now, flow, msg, key);
        }
        // Trusted networks (the operator's own, a load generator) are not charged; sources
        // that proved themselves (a login, an ACK) are held to the total only.
        let ip = flow.remote.ip();
        let charge = if self.auth.guard().is_trusted(ip) {
            0
        } else {
            crate::transactions::charge_for(msg.bytes().len())
        };
        let per_source = !self.auth.guard().is_verified(ip);
        if !self
            .tx
            .has_room(&self.cfg.transactions, ip, charge, per_source)
        {
            self.counters.traffic.overloaded += 1;
            return self.reply_stateless(&msg, flow, 503, "Service Unavailable");
        }
        let reliable = flow.transport.is_reliable();
        let machine = if method == Some(Method::Invite) {
            ServerMachine::Invite(tx::ServerInvite::new(reliable, &self.cfg.timers))
        } else {
            ServerMachine::NonInvite(tx::ServerNonInvite::new(reliable, &self.cfg.timers))
        };
        let key = self.tx.insert_server(
            key,
            ServerTx {
                machine,
                request: Some(msg.clone()),
                flow,
                ctx: None,
                final_sent: false,
                retransmits: 0,
                charge,
            },
        );
        if method == Some(Method::Invite) {
            // §16.2: a stateful proxy answers INVITE with 100 at once, stopping retransmissions.
            self.respond(now, key, 100, "Trying", &[], None);
        }
        match self.decide(now, &msg, key, flow) {
            Some(Decision::Reply(code, reason)) => self.answer_and_forget(key, code, reason, &[]),
            Some(Decision::ReplyOwned(code, reason)) => {
                self.answer_and_forget(key, code, &reason, &[])
            }
            Some(Decision::Feature { user, req }) => self.apply_feature(now, key, &user, req),
            Some(Decision::Hunt {
                target,
                hunt,
                pop,
                hash,
                conceal,
            }) => {
                let template = (pop, hash.as_str(), conceal);
                if let Some(ctx_id) = self.new_context(key, &msg, template, Some(hunt)) {
                    self.hunt_start(now, ctx_id, target);
                }
            }
            Some(Decision::Register) => self.register(now, key, &msg, flow),
            Some(Decision::OptionsHere) => {
                let h = Core::capability_headers();
                self.answer_and_forget(key, 200, "OK", &h);
            }
            Some(Decision::SessionInfo(user)) => self.answer_session_info(now, key, &user),
            Some(Decision::Forward { hops, pop, hash }) => {
                self.fork(now, key, &msg, hops, pop, &hash)
            }
            None => {} // already answered (challenge)
        }
    }

    /// The pipeline a new request goes through (§16.3–16.5), one named stage after the other,
    /// each with one concern: admit (checks of the request itself), leave (where it is bound:
    /// along a route set or a dialog of ours, to another domain, or to our users), identify
    /// (who calls: a local user proves it, another domain meets the inbound policy), route
    /// (the target: the dial plan, a user by name, another domain's URI). A later concern
    /// (rate limits, bans, trunks, presence) is one more stage here. `None` means a response
    /// was already sent.
    pub(crate) fn decide(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerTxId,
        flow: Flow,
    ) -> Option<Decision> {
        let admitted = match self.admit(now, msg, key) {
            Ok(a) => a,
            Err(d) => return d,
        };
        if let Some(d) = self.provider_call(msg, &admitted, flow) {
            return Some(d);
        }
        // A refresh or the end of one of our presence subscriptions.
        if self.presence_in_dialog(now, key, msg) {
            return None;
        }
        let bound = match self.leave(now, msg, &admitted) {
            Ok(b) => b,
            Err(d) => return d,
        };
        let caller = match self.identify(now, msg, key, flow, &admitted, bound) {
            Ok(c) => c,
            Err(d) => return d,
        };
        if bound == Bound::Ours && self.serves_event(now, msg, key, flow, &admitted, &caller) {
            return None;
        }
        if bound == Bound::Session {
            return Some(match caller {
                Caller::User(user) => Decision::SessionInfo(user),
                _ => Decision::Reply(403, "Forbidden"),
            });
        }
        if bound == Bound::Instance {
            // A GRUU names one phone: no dial plan, forwarding or group applies.
            let reveal = !matches!(caller, Caller::OtherDomain);
            let (pop, hash) = (admitted.pop, &admitted.hash);
            return Some(self.to_instance(now, &admitted.uri, pop, hash, reveal));
        }
        let decision = self.route(msg, &admitted, bound, caller);
        Some(self.limit(now, msg, flow, decision))
    }

    /// Stage 5, limit: a local user's request to another domain counts against their rate
    /// (a cracked account goes out in bursts), and one from an address they never went out
    /// from is logged.
    fn limit(&mut self, now: Instant, msg: &Message, flow: Flow, decision: Decision) -> Decision {
        let (target, user) = match &decision {
            Decision::Hunt {
                target: Dialed::Remote(uri),
                hunt,
                ..
            } => (uri.clone(), hunt.caller.clone()),
            Decision::Hunt {
                target: Dialed::Number(call),
                hunt,
                ..
            } => {
                // Numbers: the user's classes and caps first (emergency calls pass).
                let Some(user) = hunt.caller.clone() else {
                    return Decision::Reply(404, "Not Found");
                };
                let invite = msg.method() == Some(Method::Invite);
                if let Err((code, reason)) =
                    self.number_allowed(now, &user, call, flow.remote, invite)
                {
                    return Decision::ReplyOwned(code, reason);
                }
                if call.emergency {
                    return decision;
                }
                (call.dialled.clone(), Some(user))
            }
            _ => return decision,
        };
        let Some(user) = user else {
            return decision;
        };
        let call = msg.method() == Some(Method::Invite);
        let ip = flow.remote.ip();
        match self.auth.guard_mut().going_out(now, &user, call, ip) {
            crate::fraud::Verdict::Pass => decision,
            crate::fraud::Verdict::NewAddress => {
                tracing::warn!(
                    user,
                    source = %flow.remote,
                    %target,
                    method = msg.method_str(),
                    "request out of the domain from an address this user never used before"
                );
                decision
            }
            crate::fraud::Verdict::TooMany => {
                self.counters.forwarded.outside_limited += 1;
                tracing::warn!(
                    user,
                    source = %flow.remote,
                    %target,
                    method = msg.method_str(),
                    "user over their rate of requests out of the domain; refused"
                );
                Decision::Reply(403, "Too Many Requests Outside The Domain")
            }
        }
    }

    /// Stage 1, admit: a usable Request-URI, hops left, extensions we support, no loop
    /// (§16.3). Learns the loop hash and our own Route entries.
    fn admit<'m>(
        &mut self,
        now: Instant,
        msg: &'m Message,
        key: ServerTxId,
    ) -> Stage<Admitted<'m>> {
        let method = msg.method();
        let uri = match msg.uri() {
            Ok(u) => u,
            Err(_) => return Err(Some(Decision::Reply(400, "Bad Request-URI"))),
        };
        let for_us = uri.user.is_none() && self.is_local_domain(&uri);
        if msg.max_forwards() == Some(0) {
            // RFC 4475 zeromf: the proxy may answer an OPTIONS to itself.
            if for_us && method == Some(Method::Options) {
                return Err(Some(Decision::OptionsHere));
            }
            return Err(Some(Decision::Reply(483, "Too Many Hops")));
        }
        // An offer with more streams than a call has is an attempt on the relay or the
        // phones; refused before its target is looked at, so the answer says nothing of it.
        if msg.body().windows(3).filter(|w| w == b"\nm=").count() > crate::calls::MAX_MEDIA_LINES {
            self.counters.relay.too_many_streams += 1;
            return Err(Some(Decision::Reply(
                488,
                "Not Acceptable Here (Too Many Media Streams)",
            )));
        }
        let unsupported = self.unsupported_proxy_require(msg);
        if !unsupported.is_empty() {
            let h = [("Unsupported", unsupported.join(", "))];
            self.respond(now, key, 420, "Bad Extension", &h, None);
            return Err(None);
        }
        let hash = self.loop_hash(msg);
        if self.is_loop(msg, &hash) {
            return Err(Some(Decision::Reply(482, "Loop Detected")));
        }
        let pop = self.our_routes(msg);
        // Only requests inside a dialog we record-routed may use our route to reach targets
        // that are not ours; anything else would make us an open relay.
        let in_dialog = msg.to().is_some_and(|t| t.tag().is_some());
        let dialog_route = pop > 0 && in_dialog && self.route_is_signed(msg);
        Ok(Admitted {
            uri,
            hash,
            pop,
            dialog_route,
        })
    }

    /// Stage 1b, from a provider: a new request to our registered Contact's secret there,
    /// or from its addresses for one of its numbers, rings what the number is mapped to.
    /// No digest is asked: the provider vouches for its callers, and such a request can
    /// only reach local targets (never go out again).
    fn provider_call(&mut self, msg: &Message, a: &Admitted<'_>, flow: Flow) -> Option<Decision> {
        // Most servers have no provider: nothing of the request is read then.
        if self.agent.trunks.is_empty()
            || a.dialog_route
            || msg.to().is_some_and(|t| t.tag().is_some())
        {
            return None;
        }
        let (trunk, number) = self.trunk_caller(msg, flow.remote)?;
        Some(match msg.method() {
            Some(Method::Options) => Decision::OptionsHere,
            Some(Method::Register) => Decision::Reply(403, "Forbidden"),
            _ => match self.did_target(&trunk, &number) {
                Some(t) => {
                    tracing::info!(provider = %trunk, number, target = t.name(), source = %flow.remote,
                        method = msg.method_str(), "from the provider");
                    Decision::Hunt {
                        target: Dialed::Local(t),
                        hunt: Box::new(Hunt::new(msg.uri_str(), None, None)),
                        pop: a.pop,
                        hash: a.hash.clone(),
                        conceal: false,
                    }
                }
                None => {
                    tracing::info!(provider = %trunk, number, source = %flow.remote,
                        "from the provider, for a number that rings nobody");
                    Decision::Reply(404, "Not Found")
                }
            },
        })
    }

    /// Stage 2, leave: where the request is bound. Along a route set or inside a dialog we
    /// record-routed it goes on as it is; REGISTER and requests to the server itself end
    /// here; what remains is for another domain or for our users.
    fn leave(&mut self, now: Instant, msg: &Message, a: &Admitted<'_>) -> Stage<Bound> {
        let (pop, hash) = (a.pop, &a.hash);
        if let Some(next) = self.next_route(msg, pop) {
            if !a.dialog_route {
                // Someone else's route set, not a dialog we record-routed: no open relay.
                return Err(Some(Decision::Reply(403, "Relaying Denied")));
            }
            let hop = Uri::parse(next).ok().and_then(|u| self.resolve(&u));
            return Err(Some(along_dialog(
                msg,
                hop,
                pop,
                hash,
                "Cannot Resolve Route",
            )));
        }
        if !self.is_local_domain(&a.uri) {
            if a.dialog_route {
                // In-dialog request through our Record-Route: the R-URI is the peer's contact.
                let hop = self.dialog_hop(&a.uri, now);
                return Err(Some(along_dialog(
                    msg,
                    hop,
                    pop,
                    hash,
                    "Cannot Resolve Target",
                )));
            }
            return Ok(Bound::OtherDomain);
        }
        if msg.method() == Some(Method::Register) {
            return Err(Some(Decision::Register));
        }
        if a.uri.user.is_none() && crate::session_info::is_asked(msg) {
            return Ok(Bound::Session);
        }
        if a.uri.user.is_none() {
            return Err(Some(match msg.method() {
                Some(Method::Options) => Decision::OptionsHere,
                _ => Decision::Reply(404, "Not Found"),
            }));
        }
        if a.uri.param("gr").is_some() {
            if a.dialog_route {
                // Inside a dialog, a browser's GRUU Contact: straight to that instance.
                return Err(Some(self.to_instance(now, &a.uri, pop, hash, true)));
            }
            return Ok(Bound::Instance);
        }
        Ok(Bound::Ours)
    }

    /// Stage 3, identify: who calls. Local users are authenticated (§22.3, 407) and must send
    /// as themselves, except inside a dialog we record-routed and on a spiral (both were on
    /// their first pass); only they may go to another domain through us (no open relay).
    /// Callers from other domains meet the inbound policy.
    fn identify(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerTxId,
        flow: Flow,
        a: &Admitted<'_>,
        bound: Bound,
    ) -> Stage<Caller> {
        let Some(from) = msg.from() else {
            return Err(None);
        };
        let from_local = from.uri.is_sip() && self.is_local_domain(&from.uri);
        // A request we sent to ourselves (a spiral) was authenticated on its first pass.
        let spiral = self.is_spiral(flow);
        if bound == Bound::OtherDomain {
            if !from_local || spiral || msg.method() == Some(Method::Register) {
                return Err(Some(Decision::Reply(403, "Relaying Denied")));
            }
            return Ok(Caller::User(self.authenticate_caller(now, msg, key, flow)?));
        }
        // Only a request inside a dialog we record-routed (our Route on top) skips this: a To
        // tag alone proves nothing.
        if from_local && !a.dialog_route && !spiral {
            return Ok(Caller::User(self.authenticate_caller(now, msg, key, flow)?));
        }
        if !from_local && !spiral {
            // From another domain (RFC 3263 federation): the policy first.
            if let Some(refused) = self.inbound_refused(flow) {
                return Err(Some(refused));
            }
            return Ok(Caller::OtherDomain);
        }
        Ok(Caller::Unchecked)
    }

    /// Stage 4, route: the target. Another domain's URI for a local user allowed outside;
    /// for a caller from another domain, a user by name who accepts calls from outside; else
    /// the dial plan (main domain) or the user table (other served domains). Feature codes,
    /// rejections and permissions end the request here.
    fn route(&mut self, msg: &Message, a: &Admitted<'_>, bound: Bound, caller: Caller) -> Decision {
        let method = msg.method();
        let (pop, hash) = (a.pop, a.hash.clone());
        let caller = match caller {
            Caller::User(user) if bound == Bound::OtherDomain => {
                if !self.plan.may_call_outside(&user) {
                    return Decision::Reply(403, "Calls Outside The Domain Not Allowed");
                }
                return Decision::Hunt {
                    target: Dialed::Remote(a.uri.raw.to_string()),
                    hunt: Box::new(Hunt::new(msg.uri_str(), Some(user), None)),
                    pop,
                    hash,
                    conceal: false,
                };
            }
            Caller::OtherDomain => {
                // Users by name only, and only those who accept calls from outside.
                let callee = a.uri.user_unescaped().unwrap_or_default();
                let name = self
                    .auth
                    .users()
                    .by_name(&self.qualify(&callee, self.callee_domain(&a.uri)))
                    .map(|u| u.name.clone());
                return match name.filter(|n| self.plan.accepts_external(n)) {
                    // Whether the user exists must not show: unless a phone rings, the
                    // answer is the 404 an unknown name gets.
                    Some(name) => Decision::Hunt {
                        target: Dialed::Local(crate::plan::Target::User(name)),
                        hunt: Box::new(Hunt::new(msg.uri_str(), None, None)),
                        pop,
                        hash,
                        conceal: true,
                    },
                    None => Decision::Reply(404, "Not Found"),
                };
            }
            Caller::User(user) => Some(user),
            Caller::Unchecked => None,
        };
        let callee = a.uri.user_unescaped().unwrap_or_default();
        // The main domain has the phone system (extensions, groups, rules); the others
        // have their users by name.
        let main_domain = self.callee_domain(&a.uri) == self.cfg.domain;
        let dialed = if main_domain {
            self.plan.dial(&callee, caller.as_deref())
        } else {
            match self
                .auth
                .users()
                .by_name(&self.qualify(&callee, self.callee_domain(&a.uri)))
            {
                Some(u) => Dialed::Local(crate::plan::Target::User(u.name.clone())),
                None => Dialed::NotFound,
            }
        };
        let target = match dialed {
            Dialed::Feature(req) => {
                return match (caller, method) {
                    (Some(user), Some(Method::Invite)) => Decision::Feature { user, req },
                    _ => Decision::Reply(404, "Not Found"),
                }
            }
            Dialed::Reject(code, reason) => return Decision::ReplyOwned(code, reason),
            Dialed::NotFound => return Decision::Reply(404, "Not Found"),
            Dialed::Remote(_)
                if !caller
                    .as_deref()
                    .is_some_and(|c| self.plan.may_call_outside(c)) =>
            {
                return Decision::Reply(403, "Calls Outside The Domain Not Allowed")
            }
            t => t,
        };
        let asserted = caller.as_ref().map(|c| format!("<{}>", self.aor_uri(c)));
        let hunt = Box::new(Hunt::new(msg.uri_str(), caller, asserted));
        Decision::Hunt {
            target,
            hunt,
            pop,
            hash,
            conceal: false,
        }
    }

    /// Stage 3b, events: a SUBSCRIBE or PUBLISH for the presence or dialog package of one of
    /// our users is answered by the presence agent. True when it was.
    fn serves_event(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerTxId,
        flow: Flow,
        a: &Admitted<'_>,
        caller: &Caller,
    ) -> bool {
        if !matches!(msg.method(), Some(Method::Subscribe | Method::Publish)) {
            return false;
        }
        let asker = match caller {
            Caller::User(u) => crate::presence::Asker::Local(u),
            Caller::OtherDomain => crate::presence::Asker::Outside,
            Caller::Unchecked => return false,
        };
        let callee = a.uri.user_unescaped().unwrap_or_default();
        let callee = self
            .qualify(&callee, self.callee_domain(&a.uri))
            .into_owned();
        self.presence_request(now, key, msg, flow, &callee, asker)
    }

    /// The served domain a Request-URI names (the main one for our addresses).
    fn callee_domain(&self, uri: &Uri<'_>) -> &str {
        self.served_domain(&uri.host).unwrap_or(&self.cfg.domain)
    }

    /// Digest authentication of a local caller (407 in its From domain's realm), who must
    /// send as themselves. Err carries the decision when it is not an authenticated user
    /// (None: a challenge went out).
    pub(crate) fn authenticate_caller(
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
                        self.auth.users().find(&key)
                    } else {
                        self.auth.users().by_name(&key)
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
                self.answer_and_forget(key, 407, "Proxy Authentication Required", &h);
                Err(None)
            }
            AuthOutcome::Reject(code, reason) => Err(Some(Decision::Reply(code, reason))),
        }
    }

    /// The inbound policy for a request from another domain: None when it may come in.
    pub(crate) fn inbound_refused(&self, flow: Flow) -> Option<Decision> {
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
}

/// An in-dialog request goes to one hop with its Request-URI unchanged, or gets 500 (the next
/// hop cannot be found: no overload of ours, so no 503, RFC 3261 §16.7).
pub(crate) fn along_dialog(
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
                trunk: None,
            }],
            pop,
            hash: hash.to_string(),
        },
        None => Decision::Reply(500, unresolved),
    }
}
