//! The server's protocol core, without I/O: it takes received bytes, the time and send
//! failures, and returns actions (send these bytes on this flow, persist this binding).
//! It owns the transaction table, the proxy contexts, the location table and the user table;
//! the runtime around it only moves bytes and runs the store.

mod auth;
mod branch;
mod calls;
mod flow;
mod forking;
mod handles;
mod keepalive;
mod location;
pub mod plan;
mod proxy;
pub mod records;
mod registrar;
mod route;
mod timers;

pub use calls::{CallView, MediaRelay, RelayMode, RelayStream, Side, StreamCounters, StreamView};
pub use flow::{ConnId, Flow, Transport};
pub use handles::ClientTxId;
pub use location::{Binding, Location};
pub use records::{StoredBinding, User};

use crate::plan::settings::{CallSettings, FeatureCodes, ForwardSpec, Numbering, PlanSettings};
use crate::plan::Directory;
use handles::{CtxId, ServerTxId, Table};
use sip::build::{response_to, Writer};
use sip::digest::{Algorithm, NonceManager};
use sip::header::HeaderName;
use sip::message::{Message, Method};
use sip::transaction::{self as tx, Timers};
use sip::Bytes;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use timers::{TimerQueue, TimerRef};

/// What the core asks the edge to do.
#[derive(Debug)]
pub enum Action {
    /// Send on a flow. If it cannot be sent (no connection possible), the edge reports
    /// `handle_send_failure(key)` when `key` (the request's client transaction) is set.
    Send {
        flow: Flow,
        data: Bytes,
        key: Option<ClientTxId>,
    },
    /// Write a registration through to the store.
    PutBinding(StoredBinding),
    DeleteBinding {
        aor: String,
        contact: String,
    },
    /// A user changed their forwarding from the phone (feature code): keep it.
    SaveForward(ForwardSpec),
    /// Find another domain's servers (RFC 3263); the answer comes back through
    /// `handle_resolved(id, ...)`, empty when there is none.
    Resolve {
        id: u64,
        query: DnsQuery,
    },
}

/// What a URI fixes before DNS is asked (RFC 3263 §4): the host, and a port or transport
/// when the URI names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsQuery {
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
}

/// A listening socket as the core sees it: what to write in Via and Record-Route.
#[derive(Clone, Debug)]
pub struct Listener {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// Address written in our headers (the bound one, or the advertised one for wildcards).
    pub host: IpAddr,
}

/// The settings the core needs from the configuration.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub domain: String,
    /// Further domains served; their users are stored as `name@domain`.
    pub domains: Vec<String>,
    pub listeners: Vec<Listener>,
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_contacts: usize,
    pub algorithms: Vec<Algorithm>,
    pub nonce_lifetime: u64,
    pub timers: Timers,
    /// Server transactions kept at most; past it new requests get 503 (memory stays bounded
    /// under a flood; each transaction lives 32 s at most over UDP).
    pub max_transactions: usize,
    /// Keep-alive OPTIONS to UDP phones behind NAT that do not re-register this often.
    pub nat_ping_interval: Option<Duration>,
    /// Unanswered pings in a row after which such a contact is removed.
    pub nat_ping_failures: u8,
    /// When calls go through the media relay (if the daemon gave the core one).
    pub relay_mode: RelayMode,
    /// An answered relayed call with no media this long is ended.
    pub relay_timeout: Duration,
    /// The same while the call is on hold (held phones may send nothing at all).
    pub relay_hold_timeout: Duration,
    /// Who may reach local users from other domains.
    pub inbound: InboundPolicy,
    /// Signs our Record-Route entries, so that only dialogs we set up use us as a route
    /// (kept in the data folder: dialogs outlive a restart).
    pub route_key: [u8; 32],
}

/// Who may reach local users from other domains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboundPolicy {
    /// Any server may reach users who accept external calls.
    #[default]
    Open,
    /// Only over TLS (the sending server's certificate verified).
    TlsOnly,
    /// No calls or messages from other domains.
    Closed,
}

/// Counters shown by `hedgewitch status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counters {
    pub requests_in: u64,
    pub responses_in: u64,
    pub malformed_in: u64,
    pub calls_forwarded: u64,
    pub messages_forwarded: u64,
    pub registrations_accepted: u64,
    pub auth_failures: u64,
    /// Requests refused with 503 because the transaction table was full.
    pub overloaded: u64,
    /// MESSAGEs of our own (feature-code confirmations) that a phone accepted.
    pub notifications_delivered: u64,
    /// STUN Binding requests answered (keep-alives on SIP ports, and the STUN port).
    pub stun_answered: u64,
    /// Keep-alive OPTIONS sent to phones behind NAT.
    pub nat_pings_sent: u64,
    /// Relayed calls ended because no media flowed.
    pub relay_timeouts: u64,
    /// Calls refused because the relay's port range was used up.
    pub relay_full: u64,
}

/// Snapshot for the control channel.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub domain: String,
    pub uptime_secs: u64,
    pub users: usize,
    pub registered_users: usize,
    pub contacts: usize,
    pub server_transactions: usize,
    pub client_transactions: usize,
    pub proxy_contexts: usize,
    pub calls: usize,
    pub counters: Counters,
}

/// One registered contact, for `hedgewitch registrations`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegistrationView {
    pub user: String,
    pub extension: Option<String>,
    pub contact: String,
    pub expires_in_secs: u64,
    pub q: f32,
    pub transport: String,
    pub source: String,
    pub user_agent: String,
    /// RFC 5626 outbound: the phone's instance and reg-id, when it registered a flow.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    /// RFC 3327 Path: the proxies between us and the phone.
    pub path: Vec<String>,
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
    pub fn poll_timeout(&self) -> Option<Instant> {
        either!(self, m => m.poll_timeout())
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<tx::Action> {
        either!(self, m => m.handle_timeout(now))
    }

    pub fn send_response(&mut self, now: Instant, code: u16, data: Bytes) -> Vec<tx::Action> {
        either!(self, m => m.send_response(now, code, data))
    }

    pub fn on_request_retransmission(&self) -> Vec<tx::Action> {
        either!(self, m => m.on_request_retransmission())
    }
}

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
}

pub(crate) enum ClientMachine {
    Invite(tx::ClientInvite),
    NonInvite(tx::ClientNonInvite),
}

impl ClientMachine {
    pub fn poll_timeout(&self) -> Option<Instant> {
        either!(self, m => m.poll_timeout())
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<tx::Action> {
        either!(self, m => m.handle_timeout(now))
    }

    pub fn on_transport_error(&mut self) -> Vec<tx::Action> {
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

/// Users by name, with an index by extension.
#[derive(Default)]
pub(crate) struct Users {
    by_name: HashMap<String, User>,
    by_ext: HashMap<String, String>,
}

impl Users {
    fn new(list: Vec<User>) -> Users {
        let mut u = Users::default();
        for user in list {
            if let Some(e) = &user.extension {
                u.by_ext.insert(e.clone(), user.name.clone());
            }
            u.by_name.insert(user.name.clone(), user);
        }
        u
    }

    /// Finds a user by name or extension.
    pub fn find(&self, key: &str) -> Option<&User> {
        self.by_name
            .get(key)
            .or_else(|| self.by_ext.get(key).and_then(|n| self.by_name.get(n)))
    }

    pub fn by_name(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}

pub struct Core {
    pub(crate) cfg: CoreConfig,
    pub(crate) users: Users,
    pub(crate) location: Location,
    pub(crate) nonces: NonceManager,
    /// Transactions by id, each table with its index from match key to id.
    pub(crate) servers: Table<ServerTxId, ServerTx>,
    pub(crate) clients: Table<ClientTxId, ClientTx>,
    pub(crate) contexts: HashMap<CtxId, proxy::ProxyCtx>,
    pub(crate) timers: TimerQueue,
    pub(crate) next_id: u64,
    pub(crate) started: Instant,
    /// Unix time at `started`, to persist absolute expiry times.
    pub(crate) unix_at_start: u64,
    pub(crate) counters: Counters,
    pub(crate) out: Vec<Action>,
    /// Random per process, mixed into branches and tags so they are unguessable.
    pub(crate) salt: u64,
    /// Extensions, groups, forwarding, speed dials, rules.
    pub(crate) plan: Directory,
    /// Where each rotating group starts its next call.
    pub(crate) rotation: HashMap<String, usize>,
    /// Keep-alive pings in flight: client transaction -> (user, contact).
    pub(crate) pings: HashMap<ClientTxId, (String, String)>,
    /// Calls in progress by Call-ID.
    pub(crate) calls: HashMap<String, calls::Call>,
    /// Answers of DNS (RFC 3263 targets) until their TTL runs out.
    pub(crate) dns_cache: HashMap<DnsQuery, (Vec<(Transport, SocketAddr)>, Instant)>,
    /// Lookups in flight: id -> the hunt waiting for them.
    pub(crate) resolving: HashMap<u64, forking::Resolving>,
    pub(crate) relay: Option<Box<dyn MediaRelay>>,
    /// Failed authentications lately, so retransmissions are not logged twice.
    pub(crate) failures: auth::RecentFailures,
}

impl Core {
    /// `secret` seeds nonces, branches and tags; `unix_now` is the wall clock at `now`.
    pub fn new(
        cfg: CoreConfig,
        users: Vec<User>,
        bindings: Vec<StoredBinding>,
        secret: [u8; 32],
        now: Instant,
        unix_now: u64,
    ) -> Core {
        let plan = default_plan(&cfg.domain, &users);
        Core::with_plan(cfg, users, bindings, secret, now, unix_now, plan)
    }

    /// Like `new`, with the dial plan already built (the daemon builds it from the config
    /// file and the store; building a default one first would only waste memory).
    pub fn with_plan(
        cfg: CoreConfig,
        users: Vec<User>,
        bindings: Vec<StoredBinding>,
        secret: [u8; 32],
        now: Instant,
        unix_now: u64,
        plan: Directory,
    ) -> Core {
        let mut core = Core {
            plan,
            rotation: HashMap::new(),
            pings: HashMap::new(),
            calls: HashMap::new(),
            dns_cache: HashMap::new(),
            resolving: HashMap::new(),
            relay: None,
            failures: auth::RecentFailures::default(),
            nonces: NonceManager::new(secret, cfg.nonce_lifetime),
            cfg,
            users: Users::new(users),
            location: Location::default(),
            servers: Table::default(),
            clients: Table::default(),
            contexts: HashMap::new(),
            timers: TimerQueue::default(),
            next_id: 1,
            started: now,
            unix_at_start: unix_now,
            counters: Counters::default(),
            out: Vec::new(),
            salt: u64::from_le_bytes(secret[..8].try_into().unwrap_or([7; 8])),
        };
        core.restore_bindings(now, bindings);
        core
    }

    /// The served domain `host` names (ours in any case), None for others. An address of
    /// ours stands for the main domain.
    pub(crate) fn served_domain(&self, host: &sip::uri::Host<'_>) -> Option<&str> {
        match host {
            sip::uri::Host::Name(n) => {
                if n.eq_ignore_ascii_case(&self.cfg.domain) {
                    Some(&self.cfg.domain)
                } else {
                    self.cfg
                        .domains
                        .iter()
                        .find(|d| d.eq_ignore_ascii_case(n))
                        .map(String::as_str)
                }
            }
            sip::uri::Host::Ip(_) => self.is_us(host, None).then_some(self.cfg.domain.as_str()),
        }
    }

    /// A user's key in the user table: the bare name in the main domain, `name@domain` in
    /// the others.
    pub(crate) fn qualify<'a>(&self, user: &'a str, domain: &str) -> std::borrow::Cow<'a, str> {
        if domain.eq_ignore_ascii_case(&self.cfg.domain) {
            std::borrow::Cow::Borrowed(user)
        } else {
            std::borrow::Cow::Owned(format!("{user}@{}", domain.to_ascii_lowercase()))
        }
    }

    /// A user's address of record as a SIP URI (`sip:alice@domain`).
    pub(crate) fn aor_uri(&self, name: &str) -> String {
        if name.contains('@') {
            format!("sip:{name}")
        } else {
            format!("sip:{name}@{}", self.cfg.domain)
        }
    }

    /// Gives the core a media relay (the daemon's; tests use their own).
    pub fn set_relay(&mut self, relay: Box<dyn MediaRelay>) {
        self.relay = Some(relay);
    }

    /// Whether the daemon gave the core a media relay.
    pub fn has_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// Takes the settings that can change while running (a reload): registrar limits and
    /// keep-alives, authentication, the relay's mode and timeouts, the inbound policy. The
    /// domain, listeners and route key stay: they need a restart. Calls and registrations in
    /// progress keep what they have.
    pub fn reconfigure(&mut self, new: &CoreConfig) {
        let c = &mut self.cfg;
        c.default_expires = new.default_expires;
        c.min_expires = new.min_expires;
        c.max_expires = new.max_expires;
        c.max_contacts = new.max_contacts;
        c.nat_ping_interval = new.nat_ping_interval;
        c.nat_ping_failures = new.nat_ping_failures;
        c.algorithms = new.algorithms.clone();
        c.nonce_lifetime = new.nonce_lifetime;
        c.relay_mode = new.relay_mode;
        c.relay_timeout = new.relay_timeout;
        c.relay_hold_timeout = new.relay_hold_timeout;
        c.inbound = new.inbound;
        self.nonces.set_lifetime(new.nonce_lifetime);
    }

    /// Forgets DNS answers (the DNS servers changed).
    pub fn clear_dns_cache(&mut self) {
        self.dns_cache.clear();
    }

    /// Replaces the user table (after `hedgewitch user ...` changed the store).
    pub fn set_users(&mut self, users: Vec<User>) {
        self.users = Users::new(users);
    }

    /// Replaces the dial plan (start, reload). Calls in progress keep the stages they have.
    pub fn set_plan(&mut self, plan: Directory) {
        self.plan = plan;
    }

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
        let id = self.clients.insert(
            proxy::client_key(branch, method),
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

    /// The actions produced since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    pub(crate) fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.started).as_secs()
    }

    pub(crate) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A fresh token for tags and branches: unique in this process, not guessable outside it.
    pub(crate) fn token(&mut self) -> String {
        let id = self.id();
        let mixed = (id ^ self.salt)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29)
            ^ self.salt;
        let mut out = String::with_capacity(24);
        push_hex(&mut out, mixed, 16);
        push_hex(&mut out, id, 0);
        out
    }

    /// The To tag of our own responses to a server transaction: derived from its match key
    /// (not its id, which a retransmission answered statelessly would not share), so all
    /// its responses carry the same one and nothing is stored or computed for the transactions
    /// we only forward.
    pub(crate) fn to_tag(&self, key: &str) -> String {
        let mut h = route::Fnv::new(self.salt);
        h.write(key);
        let mut out = String::with_capacity(16);
        push_hex(&mut out, h.finish(), 16);
        out
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Entry point for every received message.
    pub fn handle_message(&mut self, now: Instant, flow: Flow, data: Bytes) {
        let datagram = flow.transport == Transport::Udp;
        // RFC 5626 §4.4.2: STUN keep-alives share the SIP port; they never start with a letter.
        if datagram && sip::stun::is_stun(&data) {
            self.keepalive_seen(now, flow);
            return self.handle_stun(flow, &data);
        }
        // A bare CRLF over UDP: a phone's own keep-alive, nothing to answer.
        if datagram && data.iter().all(|&c| c == b'\r' || c == b'\n') {
            return self.keepalive_seen(now, flow);
        }
        let msg = match Message::parse(data.clone(), datagram) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed_in += 1;
                tracing::debug!(remote = %flow.remote, "malformed message: {e}");
                if !data.starts_with(b"SIP/") {
                    if let Ok(head) = Message::parse_head(data) {
                        if head.is_request() && head.method() != Some(Method::Ack) {
                            self.reply_stateless(&head, flow, e.status, e.reason);
                        }
                    }
                }
                return;
            }
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(remote = %flow.remote, transport = flow.transport.as_str(), call_id = msg.call_id(),
                "recv {}", first_line(&msg));
        }
        if msg.is_request() {
            self.counters.requests_in += 1;
            self.on_request(now, flow, msg);
        } else {
            self.counters.responses_in += 1;
            self.on_response(now, flow, msg);
        }
    }

    /// A datagram on a STUN port (or a STUN message on a SIP port): a Binding request gets
    /// the address it came from; anything else is dropped.
    pub fn handle_stun(&mut self, flow: Flow, data: &[u8]) {
        match sip::stun::answer(
            data,
            flow.remote,
            concat!("hedgewitch/", env!("CARGO_PKG_VERSION")),
        ) {
            Some(resp) => {
                self.counters.stun_answered += 1;
                self.out.push(Action::Send {
                    flow,
                    data: Bytes::from(resp),
                    key: None,
                });
            }
            None => tracing::debug!(remote = %flow.remote, "datagram on the STUN path dropped"),
        }
    }

    /// Runs every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                TimerRef::Server(id) => self.server_timer(now, id),
                TimerRef::Client(id) => self.client_timer(now, id),
                TimerRef::TimerC(ctx, branch) => self.timer_c(now, ctx, branch),
                TimerRef::Expiry(aor) => self.expire_bindings(now, &aor),
                TimerRef::Hunt(ctx, generation) => self.hunt_timer(now, ctx, Some(generation)),
                TimerRef::HuntOverall(ctx) => self.hunt_timer(now, ctx, None),
                TimerRef::NatPing(aor, contact) => self.nat_ping(now, &aor, &contact),
                TimerRef::Media(call_id) => self.media_check(now, &call_id),
            }
        }
    }

    /// The edge could not send a request of client transaction `key` (connection refused...).
    pub fn handle_send_failure(&mut self, now: Instant, key: ClientTxId) {
        let Some(ct) = self.clients.get_mut(key) else {
            return;
        };
        if let Some((flow, data)) = ct.udp_fallback.take() {
            let data_copy = data.clone();
            {
                tracing::debug!(remote = %flow.remote, "TCP refused; sending the request over UDP");
                let (machine, actions) = match ct.machine {
                    ClientMachine::Invite(_) => {
                        let (m, a) = tx::ClientInvite::new(now, false, &self.cfg.timers, data);
                        (ClientMachine::Invite(m), a)
                    }
                    ClientMachine::NonInvite(_) => {
                        let (m, a) = tx::ClientNonInvite::new(now, false, &self.cfg.timers, data);
                        (ClientMachine::NonInvite(m), a)
                    }
                };
                ct.machine = machine;
                ct.flow = flow;
                ct.request = data_copy;
                return self.client_actions(now, key, actions);
            }
        }
        let actions = ct.machine.on_transport_error();
        self.client_actions(now, key, actions);
    }

    /// `remote` answered a UDP datagram with an ICMP error (port or host unreachable): the
    /// requests we have in flight there fail now rather than after their timeout, so a
    /// domain's next server is tried at once (RFC 3263 §4.3) and a dead phone stops ringing.
    pub fn handle_unreachable(&mut self, now: Instant, remote: SocketAddr) {
        let keys: Vec<ClientTxId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.flow.transport == Transport::Udp && c.flow.remote == remote)
            .map(|(k, _)| k)
            .collect();
        if !keys.is_empty() {
            tracing::info!(%remote, "unreachable (ICMP); its requests fail now");
        }
        for key in keys {
            let Some(ct) = self.clients.get_mut(key) else {
                continue;
            };
            let actions = ct.machine.on_transport_error();
            self.client_actions(now, key, actions);
        }
    }

    /// Sends a response without a transaction (to requests we could not accept at all).
    pub(crate) fn reply_stateless(&mut self, req: &Message, flow: Flow, code: u16, reason: &str) {
        // Without any Via the response could not be matched by anybody. A malformed one is
        // copied as it is (RFC 4475 badinv01 still deserves its 400).
        if req.value(HeaderName::Via).is_none() {
            return;
        }
        let tag = self.token();
        let data = response_to(req, code, reason, Some(&tag), Some(flow.remote)).finish(None, b"");
        self.out.push(Action::Send {
            flow,
            data,
            key: None,
        });
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
        let Some((match_key, st)) = self.servers.get_keyed(key) else {
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
            self.servers.remove(key);
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
        let Some(st) = self.servers.get_mut(key) else {
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
        let Some(st) = self.servers.get_mut(key) else {
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
        if let Some(st) = self.servers.get(key) {
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
            self.servers.remove(key);
        } else if let Some(at) = self
            .servers
            .get(key)
            .and_then(|st| st.machine.poll_timeout())
        {
            self.timers.push(at, TimerRef::Server(key));
        }
    }

    fn server_timer(&mut self, now: Instant, key: ServerTxId) {
        let Some(st) = self.servers.get_mut(key) else {
            return;
        };
        let due = st.machine.poll_timeout();
        if due.is_none_or(|d| d > now) {
            return;
        }
        let actions = st.machine.handle_timeout(now);
        self.server_actions(now, key, actions);
    }

    fn client_timer(&mut self, now: Instant, key: ClientTxId) {
        let Some(ct) = self.clients.get_mut(key) else {
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
        if let Some(ct) = self.clients.get(key) {
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
        let ctx = self.clients.get(key).and_then(|c| c.ctx);
        if terminated {
            self.clients.remove(key);
        } else if let Some(at) = self
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
            // A request of our own that failed (a keep-alive ping).
            (Some(_), None) => self.ping_failed(key),
            _ => {}
        }
    }

    pub fn status(&self, now: Instant) -> Status {
        Status {
            domain: self.cfg.domain.clone(),
            uptime_secs: now.saturating_duration_since(self.started).as_secs(),
            users: self.users.len(),
            registered_users: self.location.aors(),
            contacts: self.location.contacts(),
            server_transactions: self.servers.len(),
            client_transactions: self.clients.len(),
            proxy_contexts: self.contexts.len(),
            calls: self.calls.len(),
            counters: self.counters.clone(),
        }
    }

    pub fn registrations(&self, now: Instant) -> Vec<RegistrationView> {
        let mut out = vec![];
        for (aor, bindings) in self.location.iter() {
            let ext = self.users.find(aor).and_then(|u| u.extension.clone());
            for b in bindings {
                out.push(RegistrationView {
                    user: aor.clone(),
                    extension: ext.clone(),
                    contact: b.contact.clone(),
                    expires_in_secs: b.expires.saturating_duration_since(now).as_secs(),
                    q: b.q,
                    transport: b.flow.transport.as_str().into(),
                    source: b.flow.remote.to_string(),
                    user_agent: b.user_agent.clone(),
                    instance: b.outbound.as_ref().map(|(i, _)| i.clone()),
                    reg_id: b.outbound.as_ref().map(|(_, r)| *r),
                    path: b.path.clone(),
                });
            }
        }
        out.sort_by(|a, b| (&a.user, &a.contact).cmp(&(&b.user, &b.contact)));
        out
    }

    /// The listener to send from for a transport and address family.
    pub(crate) fn listener_for(
        &self,
        transport: Transport,
        remote: &SocketAddr,
    ) -> Option<&Listener> {
        self.cfg
            .listeners
            .iter()
            .find(|l| l.transport == transport && l.addr.is_ipv4() == remote.is_ipv4())
    }

    /// Writes `Allow`, `Accept`, `Supported` for OPTIONS and 405/415 answers.
    pub(crate) fn capability_headers() -> Vec<(&'static str, String)> {
        vec![
            ("Allow", ALLOW.into()),
            ("Accept", "application/sdp, text/plain".into()),
            // No option tags yet: Path and outbound (RFC 3327, 5626) come with NAT support.
            ("Supported", String::new()),
        ]
    }
}

pub(crate) const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, INFO, UPDATE, REFER, NOTIFY, SUBSCRIBE, PRACK, REGISTER";

/// Appends `v` in lowercase hex, zero-padded to `width` digits (0: no padding).
/// The plan of a server started without one: users by name and extension, defaults for the
/// rest (the runtime sets the real one before any request arrives).
fn default_plan(domain: &str, users: &[User]) -> Directory {
    let build = |u: &[User]| {
        Directory::build(
            domain,
            u,
            &Numbering::default(),
            &FeatureCodes::default(),
            &CallSettings::default(),
            &PlanSettings::default(),
        )
    };
    match build(users) {
        Ok((d, _)) => d,
        Err(e) => {
            tracing::error!("the users do not make a valid plan: {e}");
            Directory::empty(domain)
        }
    }
}

pub(crate) fn push_hex(out: &mut String, v: u64, width: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (16 - v.leading_zeros() as usize / 4).max(1).max(width);
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
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

/// Bound on time a client transaction can block a context: Timer C (RFC 3261 §16.6 step 11).
pub(crate) const TIMER_C: Duration = Duration::from_secs(180);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    #[test]
    fn hex() {
        let mut s = String::new();
        super::push_hex(&mut s, 0xab, 4);
        super::push_hex(&mut s, 0, 0);
        super::push_hex(&mut s, u64::MAX, 0);
        assert_eq!(s, "00ab0ffffffffffffffff");
    }
}
