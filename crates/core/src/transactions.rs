//! The transaction layer (RFC 3261 §17): server and client transactions under typed ids,
//! the machines of the `sip` crate driven with the core's clock, what each sends (responses,
//! our own requests, retransmissions) and what happens when their timers fire.

use super::*;

/// Every transaction in progress, by id; each table keeps its index from the RFC 3261 match
/// key to the id. What server transactions hold (their request and kept answer) is charged,
/// in bytes, to the whole table and to their source.
#[derive(Default)]
pub(crate) struct Transactions {
    servers: Table<ServerTxId, ServerTx>,
    clients: Table<ClientTxId, ClientTx>,
    /// Bytes charged to server transactions in the table.
    charged: usize,
    /// The same per source (an IPv4 address or IPv6 /64); entries leave with their last byte.
    charged_by_source: std::collections::HashMap<IpAddr, usize>,
}

/// How much server transactions may hold: a count, and bytes in all and per source.
#[derive(Clone, Debug)]
pub struct TransactionLimits {
    /// Server transactions kept at most; past it new requests get 503.
    pub max: usize,
    /// Bytes all server transactions may hold (their requests and kept answers).
    pub total_bytes: usize,
    /// Bytes the server transactions of one source may hold.
    pub source_bytes: usize,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        TransactionLimits {
            max: 1_000_000,
            total_bytes: 64 << 20,
            source_bytes: 4 << 20,
        }
    }
}

/// What a server transaction for a request of `len` bytes is charged: the request, the answer
/// kept for retransmissions (about as long), and the bookkeeping around them.
pub(crate) fn charge_for(len: usize) -> usize {
    2 * len + 512
}

/// The transaction layer's interface: transactions are found by match key, then reached by
/// their ids.
impl Transactions {
    /// Whether a new server transaction charged `charge` bytes to `source` fits the limits
    /// (the source's own only when `per_source`).
    pub(crate) fn has_room(
        &self,
        limits: &TransactionLimits,
        source: IpAddr,
        charge: usize,
        per_source: bool,
    ) -> bool {
        let of_source = self
            .charged_by_source
            .get(&crate::flow::source_key(source))
            .copied()
            .unwrap_or(0);
        self.servers.len() < limits.max
            && self.charged + charge <= limits.total_bytes
            && (!per_source || of_source + charge <= limits.source_bytes)
    }

    /// Stores a server transaction under its match key (see `server_key`), charging its
    /// bytes to its source.
    pub(crate) fn insert_server(&mut self, key: String, tx: ServerTx) -> ServerTxId {
        let (source, charge) = (crate::flow::source_key(tx.flow.remote.ip()), tx.charge);
        let id = self.servers.insert(key, tx);
        self.charged += charge;
        *self.charged_by_source.entry(source).or_insert(0) += charge;
        id
    }

    /// Drops a server transaction and gives its bytes back.
    pub(crate) fn remove_server(&mut self, id: ServerTxId) {
        let Some(tx) = self.servers.remove(id) else {
            return;
        };
        self.charged = self.charged.saturating_sub(tx.charge);
        let source = crate::flow::source_key(tx.flow.remote.ip());
        if let Some(c) = self.charged_by_source.get_mut(&source) {
            *c = c.saturating_sub(tx.charge);
            if *c == 0 {
                self.charged_by_source.remove(&source);
            }
        }
    }

    /// Bytes charged to server transactions, in all.
    pub(crate) fn charged(&self) -> usize {
        self.charged
    }

    /// The server transaction a request matches (RFC 3261 §17.2.3), by its key.
    pub(crate) fn find_server(&self, key: &str) -> Option<ServerTxId> {
        self.servers.find(key)
    }

    pub(crate) fn server(&self, id: ServerTxId) -> Option<&ServerTx> {
        self.servers.get(id)
    }

    pub(crate) fn server_mut(&mut self, id: ServerTxId) -> Option<&mut ServerTx> {
        self.servers.get_mut(id)
    }

    pub(crate) fn server_count(&self) -> usize {
        self.servers.len()
    }

    #[cfg(test)]
    pub(crate) fn no_servers(&self) -> bool {
        self.servers.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn server_values(&self) -> impl Iterator<Item = &ServerTx> {
        self.servers.values()
    }

    /// Stores a client transaction under its match key (see `client_key`).
    pub(crate) fn insert_client(&mut self, key: String, tx: ClientTx) -> ClientTxId {
        self.clients.insert(key, tx)
    }

    /// The client transaction a response matches (RFC 3261 §17.1.3), by its key.
    pub(crate) fn find_client(&self, key: &str) -> Option<ClientTxId> {
        self.clients.find(key)
    }

    pub(crate) fn client(&self, id: ClientTxId) -> Option<&ClientTx> {
        self.clients.get(id)
    }

    pub(crate) fn client_mut(&mut self, id: ClientTxId) -> Option<&mut ClientTx> {
        self.clients.get_mut(id)
    }

    pub(crate) fn has_client(&self, id: ClientTxId) -> bool {
        self.clients.contains(id)
    }

    pub(crate) fn remove_client(&mut self, id: ClientTxId) -> Option<ClientTx> {
        self.clients.remove(id)
    }

    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Every client transaction with its id.
    pub(crate) fn clients_iter(&self) -> impl Iterator<Item = (ClientTxId, &ClientTx)> {
        self.clients.iter()
    }

    #[cfg(test)]
    pub(crate) fn no_clients(&self) -> bool {
        self.clients.is_empty()
    }
}

pub(crate) enum ServerMachine {
    Invite(tx::ServerInvite),
    NonInvite(tx::ServerNonInvite),
}

/// The calls both kinds of machine answer alike.
macro_rules! either {
    ($m:expr, $x:ident => $e:expr) => {
        match $m {
            Self::Invite($x) => $e,
            Self::NonInvite($x) => $e,
        }
    };
}

impl ServerMachine {
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        either!(self, m => m.poll_timeout())
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<tx::Action> {
        either!(self, m => m.handle_timeout(now))
    }

    pub(crate) fn send_response(
        &mut self,
        now: Instant,
        code: u16,
        data: Bytes,
    ) -> Vec<tx::Action> {
        either!(self, m => m.send_response(now, code, data))
    }

    pub(crate) fn on_request_retransmission(&self) -> Vec<tx::Action> {
        either!(self, m => m.on_request_retransmission())
    }
}

/// Final answers to an INVITE re-sent to a source never verified: with the 100 Trying and the
/// answer itself, at most four packets go back to an address that may be forged.
pub(crate) const UNVERIFIED_RETRANSMITS: u8 = 2;

/// A server transaction: the request as received, where responses go, and the proxy context
/// that answers it, if forwarded.
pub(crate) struct ServerTx {
    pub machine: ServerMachine,
    /// The request as received; dropped once a non-INVITE transaction has its final answer
    /// (only the answer is kept for retransmissions: Timer J keeps it 32 s).
    pub request: Option<Message>,
    pub flow: Flow,
    pub ctx: Option<CtxId>,
    pub final_sent: bool,
    /// Final answers re-sent on Timer G so far (capped for sources never verified).
    pub retransmits: u8,
    /// Bytes charged to the table and the source for it (see `charge_for`).
    pub charge: usize,
}

pub(crate) enum ClientMachine {
    Invite(tx::ClientInvite),
    NonInvite(tx::ClientNonInvite),
}

impl ClientMachine {
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        either!(self, m => m.poll_timeout())
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<tx::Action> {
        either!(self, m => m.handle_timeout(now))
    }

    pub(crate) fn on_transport_error(&mut self) -> Vec<tx::Action> {
        either!(self, m => m.on_transport_error())
    }
}

/// A client transaction: the request we sent (to build ACK and CANCEL) and its branch slot.
pub(crate) struct ClientTx {
    pub machine: ClientMachine,
    /// The request as sent; parsed again only to build a CANCEL or an ACK (most
    /// transactions never need either).
    pub request: Bytes,
    pub flow: Flow,
    pub ctx: Option<(CtxId, usize)>,
    /// The server transaction it forwards for: late 2xx retransmissions go there even after
    /// the response context is gone (RFC 6026).
    pub server: Option<ServerTxId>,
    /// The UDP form of a request moved to TCP for its size: sent instead if TCP is refused
    /// (RFC 3261 §18.1.1).
    pub udp_fallback: Option<(Flow, Bytes)>,
}

impl Core {
    /// The head of a request of our own, outside any dialog, to `uri` over `flow`: Via,
    /// Max-Forwards, From (the server), To, Call-ID and CSeq. Returns its branch and the
    /// writer, for the caller to finish and hand to `send_request`.
    pub(crate) fn own_request(
        &mut self,
        method: &str,
        uri: &str,
        to: &str,
        flow: Flow,
    ) -> (String, Writer) {
        let branch = format!("z9hG4bK{}", self.token());
        let tag = self.token();
        let call_id = format!("{}@{}", self.token(), self.cfg.domain);
        let mut w = Writer::request(method, uri);
        w.header("Via", &self.via_for(flow, &branch));
        w.header("Max-Forwards", "70");
        w.header_fmt(
            "From",
            format_args!(
                "\"hedgewitch\" <sip:hedgewitch@{}>;tag={tag}",
                self.cfg.domain
            ),
        );
        w.header_fmt("To", format_args!("<{to}>"));
        w.header("Call-ID", &call_id);
        w.header_fmt("CSeq", format_args!("1 {method}"));
        (branch, w)
    }

    /// Sends a request of our own (not forwarded) in a client transaction whose response
    /// goes nowhere.
    pub(crate) fn send_request(
        &mut self,
        now: Instant,
        flow: Flow,
        branch: &str,
        method: &str,
        data: Bytes,
    ) -> ClientTxId {
        let (m, actions) = tx::ClientNonInvite::new(
            now,
            flow.transport.is_reliable(),
            &self.cfg.timers,
            data.clone(),
        );
        let id = self.tx.clients.insert(
            client_key(branch, method),
            ClientTx {
                machine: ClientMachine::NonInvite(m),
                request: data,
                flow,
                ctx: None,
                server: None,
                udp_fallback: None,
            },
        );
        self.client_actions(now, id, actions);
        id
    }

    /// The To tag of our own responses to a server transaction: derived from its match key
    /// (not its id, which a retransmission answered statelessly would not share), so all
    /// its responses carry the same one and nothing is stored or computed for the transactions
    /// we only forward.
    pub(crate) fn to_tag_of(&self, key: ServerTxId) -> Option<String> {
        self.tx.servers.get_keyed(key).map(|(k, _)| self.to_tag(k))
    }

    /// The To tag of our own responses to a server transaction: see `to_tag_of`.
    pub(crate) fn to_tag(&self, key: &str) -> String {
        let mut h = self.origin.keys.hasher(crate::keys::Purpose::ToTag);
        h.write(key);
        let mut out = String::with_capacity(16);
        push_hex(&mut out, h.finish(), 16);
        out
    }

    /// Sends a response without a transaction (to requests we could not accept at all).
    pub(crate) fn reply_stateless(&mut self, req: &Message, flow: Flow, code: u16, reason: &str) {
        self.reply_stateless_with(req, flow, code, reason, &[]);
    }

    /// `reply_stateless` with more headers (Retry-After...).
    pub(crate) fn reply_stateless_with(
        &mut self,
        req: &Message,
        flow: Flow,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
    ) {
        // Without any Via the response could not be matched by anybody. A malformed one is
        // copied as it is (RFC 4475 badinv01 still deserves its 400).
        if req.value(HeaderName::Via).is_none() {
            return;
        }
        let tag = self.token();
        let mut w = response_to(req, code, reason, Some(&tag), Some(flow.remote));
        for (name, value) in extra {
            w.header(name, value);
        }
        let data = w.finish(None, b"");
        self.out.push(Action::Send {
            flow,
            data,
            key: None,
        });
    }

    /// Answers the request of server transaction `key` with a final response the core decided
    /// itself, before any state was needed (a refusal, a challenge, OPTIONS to us), and drops
    /// the transaction: nothing is kept for Timer G, H or J (RFC 3261 §8.2.7, §16.3 allow
    /// answering statelessly). A retransmitted request is simply answered again, with the same
    /// To tag; the ACK to a negative answer to INVITE is recognised by that tag and absorbed.
    /// Whatever a sender does, these answers cost no memory once sent.
    pub(crate) fn answer_and_forget(
        &mut self,
        key: ServerTxId,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
    ) {
        let Some((flow, data)) = self.build_response(key, code, reason, extra, None) else {
            return;
        };
        self.tx.remove_server(key);
        self.out.push(Action::Send {
            flow,
            data,
            key: None,
        });
    }

    /// The response to the request of server transaction `key`, and where it goes.
    fn build_response(
        &self,
        key: ServerTxId,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
    ) -> Option<(Flow, Bytes)> {
        let (match_key, st) = self.tx.servers.get_keyed(key)?;
        let tag = (code > 100).then(|| self.to_tag(match_key));
        let request = st.request.as_ref()?;
        let mut w = response_to(request, code, reason, tag.as_deref(), Some(st.flow.remote));
        for (name, value) in extra {
            w.header(name, value);
        }
        w.header("Server", concat!("hedgewitch/", env!("CARGO_PKG_VERSION")));
        let data = match body {
            Some((ct, b)) => w.finish(Some(ct), b),
            None => w.finish(None, b""),
        };
        Some((st.flow, data))
    }

    /// Builds a response to the request of server transaction `key` and sends it through
    /// the transaction (which retransmits it as needed).
    pub(crate) fn respond(
        &mut self,
        now: Instant,
        key: ServerTxId,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
    ) {
        let Some((match_key, st)) = self.tx.servers.get_keyed(key) else {
            return;
        };
        let tag = (code > 100).then(|| self.to_tag(match_key));
        let Some(request) = st.request.as_ref() else {
            return;
        };
        let mut w = response_to(request, code, reason, tag.as_deref(), Some(st.flow.remote));
        for (name, value) in extra {
            w.header(name, value);
        }
        w.header("Server", concat!("hedgewitch/", env!("CARGO_PKG_VERSION")));
        let data = match body {
            Some((ct, b)) => w.finish(Some(ct), b),
            None => w.finish(None, b""),
        };
        // A digest challenge to a non-INVITE request is sent without keeping the transaction:
        // a retransmitted request just earns a fresh challenge, and at thousands of
        // registrations a second the 32 s of Timer J would otherwise hold one transaction per
        // challenge (RFC 3261 §8.2.7 allows a UAS to answer statelessly).
        if matches!(code, 401 | 407) && matches!(st.machine, ServerMachine::NonInvite(_)) {
            let flow = st.flow;
            self.tx.remove_server(key);
            self.out.push(Action::Send {
                flow,
                data,
                key: None,
            });
            return;
        }
        self.send_server_response(now, key, code, data);
    }

    /// Hands a finished response to server transaction `key`.
    pub(crate) fn send_server_response(
        &mut self,
        now: Instant,
        key: ServerTxId,
        code: u16,
        data: Bytes,
    ) {
        let Some(st) = self.tx.servers.get_mut(key) else {
            return;
        };
        if code >= 200 {
            st.final_sent = true;
            if matches!(st.machine, ServerMachine::NonInvite(_)) {
                st.request = None;
            }
        }
        // A call that fails (or is cancelled) ends here, whichever path refused it.
        let failed_call = (code >= 300 && !self.calls.is_empty())
            .then_some(st.request.as_ref())
            .flatten()
            .filter(|r| {
                r.method() == Some(Method::Invite) && r.to().is_some_and(|t| t.tag().is_none())
            })
            .map(|r| {
                let tag = r.from().and_then(|f| f.tag()).unwrap_or("").to_string();
                (r.call_id().to_string(), tag)
            });
        let Some(st) = self.tx.servers.get_mut(key) else {
            return;
        };
        let actions = st.machine.send_response(now, code, data);
        self.server_actions(now, key, actions);
        // Only the caller's own INVITE ends its call (not another request that reuses the
        // Call-ID).
        if let Some((call_id, tag)) = failed_call {
            if self.is_caller(&call_id, &tag) {
                self.call_end(&call_id, "call failed");
            }
        }
    }

    pub(crate) fn server_actions(
        &mut self,
        _now: Instant,
        key: ServerTxId,
        actions: Vec<tx::Action>,
    ) {
        let mut terminated = false;
        if let Some(st) = self.tx.servers.get(key) {
            for a in actions {
                match a {
                    tx::Action::Transmit(data) => self.out.push(Action::Send {
                        flow: st.flow,
                        data,
                        key: None,
                    }),
                    tx::Action::Timeout | tx::Action::TransportError => {
                        tracing::debug!(?key, "server transaction timed out")
                    }
                    tx::Action::Terminated => terminated = true,
                }
            }
        }
        if terminated {
            self.tx.remove_server(key);
        } else if let Some(at) = self
            .tx
            .servers
            .get(key)
            .and_then(|st| st.machine.poll_timeout())
        {
            self.timers.push(at, TimerRef::Server(key));
        }
    }

    pub(crate) fn server_timer(&mut self, now: Instant, key: ServerTxId) {
        let Some(st) = self.tx.servers.get_mut(key) else {
            return;
        };
        let due = st.machine.poll_timeout();
        if due.is_none_or(|d| d > now) {
            return;
        }
        let mut actions = st.machine.handle_timeout(now);
        // Timer G re-sends an INVITE's final answer until the ACK. Towards a source that
        // never proved it receives our packets (a login, an ACK), only a few times: the source
        // may be forged, and we must not be a cannon pointed at someone else.
        if actions.iter().any(|a| matches!(a, tx::Action::Transmit(_))) {
            let ip = st.flow.remote.ip();
            if st.retransmits >= UNVERIFIED_RETRANSMITS && !self.auth.guard().is_verified(ip) {
                actions.retain(|a| !matches!(a, tx::Action::Transmit(_)));
            } else {
                st.retransmits = st.retransmits.saturating_add(1);
            }
        }
        self.server_actions(now, key, actions);
    }

    pub(crate) fn client_timer(&mut self, now: Instant, key: ClientTxId) {
        let Some(ct) = self.tx.clients.get_mut(key) else {
            return;
        };
        let due = ct.machine.poll_timeout();
        if due.is_none_or(|d| d > now) {
            return;
        }
        let actions = ct.machine.handle_timeout(now);
        self.client_actions(now, key, actions);
    }

    /// Carries out a client transaction's actions; a timeout becomes a 408 for its branch.
    pub(crate) fn client_actions(
        &mut self,
        now: Instant,
        key: ClientTxId,
        actions: Vec<tx::Action>,
    ) {
        let mut terminated = false;
        let mut failed = None;
        if let Some(ct) = self.tx.clients.get(key) {
            for a in actions {
                match a {
                    tx::Action::Transmit(data) => self.out.push(Action::Send {
                        flow: ct.flow,
                        data,
                        key: Some(key),
                    }),
                    tx::Action::Timeout => failed = Some((408, "Request Timeout")),
                    tx::Action::TransportError => failed = Some((503, "Service Unavailable")),
                    tx::Action::Terminated => terminated = true,
                }
            }
        }
        let ctx = self.tx.clients.get(key).and_then(|c| c.ctx);
        if terminated {
            self.tx.clients.remove(key);
        } else if let Some(at) = self
            .tx
            .clients
            .get(key)
            .and_then(|ct| ct.machine.poll_timeout())
        {
            self.timers.push(at, TimerRef::Client(key));
        }
        match (failed, ctx) {
            (Some((code, reason)), Some((ctx, branch))) => {
                self.branch_failed(now, ctx, branch, code, reason)
            }
            // A request of our own that failed (a keep-alive ping, a provider's).
            (Some(_), None) => {
                // Each looks for the key among its own requests only.
                self.trunk_no_answer(now, key);
                self.delivery_failed(key);
                self.notify_failed(key);
                self.ping_failed(key);
            }
            _ => {}
        }
    }
}

/// The start line, for logs.
pub(crate) fn first_line(msg: &Message) -> String {
    match msg.status() {
        Some(code) => format!(
            "{code} {} ({})",
            msg.reason(),
            msg.cseq().map_or("", |c| c.1)
        ),
        None => format!("{} {}", msg.method_str(), msg.uri_str()),
    }
}

/// Key of a server transaction (RFC 3261 §17.2.3): branch, sent-by and method, with ACK
/// matching its INVITE; RFC 2543 requests fall back to the dialog and CSeq identifiers.
pub(crate) fn server_key(msg: &Message, method_override: Option<&str>) -> Option<String> {
    let via = msg.top_via()?;
    let method = method_override.unwrap_or(match msg.method() {
        Some(Method::Ack) => "INVITE",
        _ => msg.method_str(),
    });
    match via.rfc3261_branch() {
        Some(branch) => {
            let mut k = String::with_capacity(4 + branch.len() + via.sent_by.len() + method.len());
            k.push_str("s|");
            k.push_str(branch);
            k.push('|');
            k.extend(via.sent_by.chars().map(|c| c.to_ascii_lowercase()));
            k.push('|');
            k.push_str(method);
            Some(k)
        }
        None => {
            let (num, _) = msg.cseq()?;
            let from_tag = msg.from().and_then(|f| f.tag()).unwrap_or("");
            Some(format!(
                "s2543|{}|{}|{from_tag}|{num}|{}|{method}",
                msg.uri_str(),
                msg.call_id(),
                via.raw
            ))
        }
    }
}

/// Writes a request from scratch (ACK for non-2xx, CANCEL), copying the listed headers.
pub(crate) fn request_like(orig: &Message, method: &str, to: Option<&str>) -> Writer {
    let mut w = Writer::request(method, orig.uri_str());
    if let Some(v) = orig.headers.iter().find(|h| h.name == HeaderName::Via) {
        // Only the top Via (ours): the first element of the first Via line.
        let value = orig.text(v.value);
        let top = orig.top_via().map_or(value, |t| t.raw);
        w.header("Via", top);
    }
    for h in &orig.headers {
        match h.name {
            HeaderName::Route | HeaderName::From | HeaderName::CallId => {
                w.line(orig.text(h.line));
            }
            HeaderName::To if to.is_none() => {
                w.line(orig.text(h.line));
            }
            _ => {}
        }
    }
    if let Some(to) = to {
        w.header("To", to);
    }
    let num = orig.cseq().map_or(1, |c| c.0);
    w.header_fmt("CSeq", format_args!("{num} {method}"));
    w.header("Max-Forwards", "70");
    w
}

/// Key of a client transaction (RFC 3261 §17.1.3): our branch and the method, with ACK
/// matching its INVITE.
pub(crate) fn client_key(branch: &str, method: &str) -> String {
    let method = if method == "ACK" { "INVITE" } else { method };
    let mut k = String::with_capacity(4 + branch.len() + method.len());
    k.push_str("c|");
    k.push_str(branch);
    k.push('|');
    k.push_str(method);
    k
}
