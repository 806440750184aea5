//! Forwarding: a response context per request, one branch and client transaction per hop
//! (the fork), the bytes each branch sends (Via, Record-Route, Route, Max-Forwards) and the
//! media each offer carries.

use super::*;

impl Core {
    /// A response context for the request of server transaction `key`, with no branch yet.
    /// A response context for the request of `key`; `(pop, hash, conceal)` shape its
    /// branches and its answer (see `ProxyCtx`).
    pub(crate) fn new_context(
        &mut self,
        key: ServerTxId,
        msg: &Message,
        (pop, hash, conceal): (usize, &str, bool),
        hunt: Option<Box<Hunt>>,
    ) -> Option<CtxId> {
        let invite = msg.method() == Some(Method::Invite);
        let ctx_id = CtxId(self.id());
        let in_flow = match self.tx.server_mut(key) {
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
        self.proxy.contexts.insert(
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
                template: BranchTemplate {
                    pop,
                    hash: hash.to_string(),
                    in_flow,
                    dialog_creating,
                },
                hunt,
                conceal,
            },
        );
        Some(ctx_id)
    }

    /// Forks the request to every hop in parallel (§16.6) under one response context.
    pub(crate) fn fork(
        &mut self,
        now: Instant,
        key: ServerTxId,
        msg: &Message,
        hops: Vec<Hop>,
        pop: usize,
        hash: &str,
    ) {
        if let Some(ctx_id) = self.new_context(key, msg, (pop, hash, false), None) {
            // Inside a dialog through a provider, its challenges are answered too.
            let hops = hops
                .into_iter()
                .map(|h| Hop {
                    trunk: h.trunk.clone().or_else(|| self.trunk_at(h.flow)),
                    ..h
                })
                .collect();
            self.add_branches(now, ctx_id, hops, &[]);
            if self
                .proxy
                .contexts
                .get(&ctx_id)
                .is_some_and(|c| c.branches.is_empty())
            {
                self.proxy.contexts.remove(&ctx_id);
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
    pub(crate) fn add_branches_at(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        hops: Vec<Hop>,
        extra: &[(&'static str, String)],
        replace: Option<usize>,
    ) {
        let Some(ctx) = self.proxy.contexts.get(&ctx_id) else {
            return;
        };
        let key = ctx.server;
        let (pop, in_flow, dialog_creating, invite) = (
            ctx.template.pop,
            ctx.template.in_flow,
            ctx.template.dialog_creating,
            ctx.invite,
        );
        let hash = ctx.template.hash.clone();
        let hunting = ctx.hunt.is_some();
        let caller = ctx.hunt.as_ref().and_then(|h| h.caller.clone());
        let tried = ctx.branches.len();
        let Some(msg) = self.tx.server(key).and_then(|st| st.request.clone()) else {
            return;
        };
        // RFC 3261 §26.2: a sips: request only ever travels over TLS.
        let sips = msg
            .uri_str()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("sips:"));
        let hops = if sips && hops.iter().any(|h| !h.flow.transport.is_secure()) {
            let tls: Vec<Hop> = hops
                .into_iter()
                .filter(|h| h.flow.transport.is_secure())
                .collect();
            if tls.is_empty() {
                tracing::info!(
                    uri = msg.uri_str(),
                    "sips: request with no TLS route; not sent"
                );
                if let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) {
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
        if tried == 0 && !hops.is_empty() {
            // Counted once per request, when something is tried at all.
            match msg.method() {
                Some(Method::Invite) => self.counters.forwarded.calls_forwarded += 1,
                Some(Method::Message) => self.counters.forwarded.messages_forwarded += 1,
                _ => {}
            }
        }
        let bodies = match self.media_for_request(now, &msg, in_flow, &hops, dialog_creating) {
            Ok(bodies) => bodies,
            Err(_) => {
                // No relay ports: refuse now rather than ring a phone that could not be heard.
                self.counters.relay.relay_full += 1;
                let (code, reason) = if dialog_creating {
                    (503, "Media Relay Full")
                } else {
                    (488, "Not Acceptable Here (Media Relay Full)")
                };
                if let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) {
                    ctx.hunt = None;
                    ctx.best = Some(Candidate::Local(code, reason));
                }
                return self.finish_with_best(now, ctx_id);
            }
        };
        if invite && dialog_creating && !self.is_spiral(in_flow) {
            self.calls_ringing(now, &msg, tried == 0, caller.as_deref(), &hops);
        }
        let mut shape = BranchShape {
            msg: &msg,
            inbound: in_flow,
            record_route: dialog_creating,
            pop,
            extra,
            strip_identity: hunting,
            body: None,
            from: None,
        };
        // The branches are made first and entered into the context together: making one
        // needs the whole core (tokens, listeners, the transaction table), the context only
        // their list.
        let mut made = Vec::with_capacity(hops.len());
        for (i, hop) in hops.into_iter().enumerate() {
            // Each branch's SDP names the relay in its phone's address family.
            shape.body = bodies.get(i).and_then(|b| b.as_deref());
            let idx = replace.unwrap_or(tried + i);
            let retry = (!hop.alternates.is_empty() || hop.trunk.is_some()).then(|| {
                Box::new(Retry {
                    hop: hop.clone(),
                    extra: extra.to_vec(),
                    authorized: extra.iter().any(|(n, _)| n.ends_with("Authorization")),
                })
            });
            // A provider's branch: the caller presented as the provider asks, and the call
            // counted against the caps.
            let mut hop_extra = extra.to_vec();
            let mut from = None;
            if let Some(t) = &hop.trunk {
                let (f, id) = self.trunk_identity(t);
                from = f;
                hop_extra.extend(id);
                // Emergency calls count against nothing.
                let emergency = Uri::parse(&hop.uri)
                    .ok()
                    .and_then(|u| u.user)
                    .is_some_and(|n| self.agent.trunks.numbers().emergency(n).is_some());
                if let (true, Some(user)) = (invite && dialog_creating && !emergency, &caller) {
                    self.outside_call_started(now, msg.call_id(), user, t);
                }
            }
            let shape = BranchShape {
                extra: &hop_extra,
                from: from.as_deref(),
                ..shape
            };
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
            let ckey = self.tx.insert_client(
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
            let branch = Branch {
                client: ckey,
                state: BranchState::new(),
                timer_c: invite.then(|| now + TIMER_C),
                to_phone,
                retry,
            };
            made.push((idx, branch, actions));
        }
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        let mut started = Vec::with_capacity(made.len());
        for (idx, branch, actions) in made {
            started.push((idx, branch.client, actions));
            match ctx.branches.get_mut(idx) {
                Some(slot) if replace.is_some() => *slot = branch,
                _ => ctx.branches.push(branch),
            }
        }
        for (idx, ckey, actions) in started {
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

    pub(crate) fn record_route_for(&self, flow: Flow, token: &str) -> String {
        // Behind NAT, a provider reaches us only at the address it sees us at.
        let (host, port) = match self.agent.trunks.public_toward(flow.remote) {
            Some(p) => (p.ip(), p.port()),
            None => (
                self.listener_for(flow.transport, &flow.remote)
                    .map_or(flow.local.ip(), |l| l.host),
                flow.local.port(),
            ),
        };
        let t = match flow.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
            Transport::Ws => ";transport=ws",
            Transport::Wss => ";transport=wss",
        };
        format!("<sip:{}:{port}{t};lr;hw={token}>", bracket(host))
    }

    /// The signature our Record-Route carries for a dialog: a keyed hash of its Call-ID.
    pub(crate) fn route_token(&self, call_id: &str) -> String {
        self.origin.keys.route_token(call_id)
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
            .is_some_and(|t| self.origin.keys.route_token_matches(msg.call_id(), t))
    }

    /// The request as we forward it (§16.6): new Request-URI, our Via on top with the
    /// previous one completed per RFC 3581, Max-Forwards decremented, our Route entries
    /// removed and, for dialog-creating requests, our Record-Route (two when the request
    /// changes transport or interface, RFC 5658).
    pub(crate) fn forward_bytes(
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
            from,
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
                // Towards a provider: the caller as the provider wants it, same tag.
                HeaderName::From if from.is_some() => {
                    let tag = msg.from().and_then(|f| f.tag()).unwrap_or("");
                    w.header_fmt("From", format_args!("<{}>;tag={tag}", from.unwrap_or("")));
                }
                HeaderName::Other
                    if from.is_some()
                        && msg
                            .text(h.line)
                            .get(..21)
                            .is_some_and(|n| n.eq_ignore_ascii_case("P-Preferred-Identity:")) => {}
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
    pub(crate) fn media_for_request(
        &mut self,
        now: Instant,
        msg: &Message,
        inbound: Flow,
        hops: &[Hop],
        dialog_creating: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, crate::calls::RelayFull> {
        if self.is_spiral(inbound) {
            return Ok(vec![]);
        }
        match msg.method() {
            Some(Method::Invite) if dialog_creating => self.call_begin(now, msg, inbound, hops),
            Some(Method::Bye) => {
                self.outside_call_ended(msg.call_id());
                self.call_over(now, msg.call_id());
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
    pub(crate) fn media_for_response(
        &mut self,
        resp: &Message,
        from: Flow,
        toward: Flow,
    ) -> Option<Vec<u8>> {
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
}

/// What every branch of a context shares when its request is built.
#[derive(Clone, Copy)]
pub(crate) struct BranchShape<'a> {
    pub(super) msg: &'a Message,
    pub(super) inbound: Flow,
    pub(super) record_route: bool,
    pub(super) pop: usize,
    pub(super) extra: &'a [(&'static str, String)],
    /// Drop the caller's P-Asserted-Identity (we assert identities ourselves).
    pub(super) strip_identity: bool,
    /// A body to send instead of the request's own (SDP rewritten for the media relay).
    pub(super) body: Option<&'a [u8]>,
    /// A From URI to send instead of the caller's (a provider's identity rules).
    pub(super) from: Option<&'a str>,
}

/// A Contact value with its IP address and port replaced by `source` when they differ (the
/// sender is behind NAT); None when it needs no change or is not a single SIP URI with an IP.
pub(crate) fn natted_contact(value: &str, source: std::net::SocketAddr) -> Option<String> {
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
pub(crate) fn natted_contact_for(value: &str, flow: Flow) -> Option<String> {
    if flow.transport.is_reliable() {
        let c = name_addr_list(value).next()?.ok()?;
        match c.uri.host {
            sip::uri::Host::Ip(ip) if ip != flow.remote.ip() => {}
            _ => return None,
        }
    }
    natted_contact(value, flow.remote)
}

pub(crate) fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}
