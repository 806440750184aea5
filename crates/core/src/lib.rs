//! The server's protocol core, without I/O: it takes received bytes, the time and send
//! failures, and returns actions (send these bytes on this flow, persist this binding).
//! It owns the transaction table, the proxy contexts, the location table and the user table;
//! the runtime around it only moves bytes and runs the store.

mod actions;
mod admission;
mod auth;
mod branch;
mod calls;
mod flow;
mod fraud;
mod gruu;
mod guard;
mod handles;
mod keepalive;
mod keys;
mod location;
pub mod mailbox;
pub mod numbers;
pub mod plan;
pub mod presence;
mod proxy;
pub mod records;
mod registrar;
mod relay_ports;
mod route;
mod session_info;
mod timers;
mod transactions;
pub mod trunks;
mod turn;
mod views;

pub use actions::{Action, DnsQuery};
pub use admission::AdmissionSettings;
pub use calls::{CallView, RelayMode, Side, StreamCounters, StreamView};
pub use flow::source_key;
pub use flow::{ConnId, Flow, Transport};
pub use fraud::OutsideLimits;
pub use guard::{BanView, GuardSettings};
pub use handles::ClientTxId;
pub use location::{Binding, Instance, Location};
pub(crate) use records::Users;
pub use records::{StoredBinding, User};
pub use relay_ports::RelayStream;
pub use transactions::TransactionLimits;
pub(crate) use transactions::{
    client_key, first_line, request_like, server_key, ClientMachine, ClientTx, ServerMachine,
    ServerTx,
};
pub use trunks::TrunkView;
pub use turn::{TurnAllocationView, TurnCredential, TurnSettings};
pub use views::{Counters, RegistrationView, Status};

use crate::plan::settings::{CallSettings, FeatureCodes, Numbering, PlanSettings};
use crate::plan::Directory;
use handles::{CtxId, ServerTxId, Table};
use sip::build::{response_to, Writer};
use sip::digest::Algorithm;
use sip::header::HeaderName;
use sip::message::{Message, Method};
use sip::transaction::{self as tx, Timers};
use sip::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use timers::{TimerQueue, TimerRef};

/// A listening socket as the core sees it: what to write in Via and Record-Route.
#[derive(Clone, Debug)]
pub struct Listener {
    /// The transport it serves.
    pub transport: Transport,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Address written in our headers (the bound one, or the advertised one for wildcards).
    pub host: IpAddr,
}

/// The settings the core needs from the configuration.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// The main domain: its users are stored under their bare name, and an address of ours
    /// stands for it.
    pub domain: String,
    /// Further domains served; their users are stored as `name@domain`.
    pub domains: Vec<String>,
    /// The listening sockets: where requests are sent from, and what Via and Record-Route name.
    pub listeners: Vec<Listener>,
    /// How long registrations last, and how many a user keeps.
    pub registrar: RegistrarSettings,
    /// Digest algorithms offered, and how long a nonce lives.
    pub auth: AuthSettings,
    /// The RFC 3261 §17 transaction timers (T1, T2, T4).
    pub timers: Timers,
    /// What server transactions may hold, in count and in bytes (in all and per source);
    /// past it new requests get 503. Memory stays bounded whatever senders do.
    pub transactions: TransactionLimits,
    /// Keep-alive OPTIONS to UDP phones behind NAT.
    pub keepalive: KeepAliveSettings,
    /// When calls go through the media relay, and its no-media timeouts.
    pub relay: RelaySettings,
    /// Who may reach local users from other domains.
    pub inbound: InboundPolicy,
    /// When failed logins ban a source, and who is never banned.
    pub guard: GuardSettings,
    /// Signs our Record-Route entries, so that only dialogs we set up use us as a route
    /// (kept in the data folder: dialogs outlive a restart).
    pub route_key: [u8; 32],
}

/// How long registrations last, and how many a user keeps.
#[derive(Clone, Debug)]
pub struct RegistrarSettings {
    /// Expiry used when a REGISTER asks for none (seconds).
    pub default_expires: u32,
    /// Shorter requests get 423 Interval Too Brief (RFC 3261 §10.3 step 7).
    pub min_expires: u32,
    /// Longer requests are shortened to this.
    pub max_expires: u32,
    /// Contacts kept per user; the oldest goes when a new one would exceed it.
    pub max_contacts: usize,
}

/// Which digest algorithms are offered, and how long a nonce lives.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// The algorithms challenged with, one header each, in this order; credentials made with
    /// another are challenged again.
    pub algorithms: Vec<Algorithm>,
    /// Seconds a nonce stays valid before the client is asked again with stale=true.
    pub nonce_lifetime: u64,
}

/// Keep-alive OPTIONS to UDP phones behind NAT.
#[derive(Clone, Debug)]
pub struct KeepAliveSettings {
    /// Sent to phones that do not re-register this often; None turns them off.
    pub interval: Option<Duration>,
    /// Unanswered pings in a row after which such a contact is removed.
    pub failures: u8,
}

/// When calls go through the media relay, and how long a silent one keeps it.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// When calls go through the media relay (if the daemon gave the core one).
    pub mode: RelayMode,
    /// An answered relayed call with no media this long is ended.
    pub timeout: Duration,
    /// The same while the call is on hold (held phones may send nothing at all).
    pub hold_timeout: Duration,
    /// Let the relay send to private, loopback or our own addresses when a caller from
    /// another domain names them (two servers on one private network); off, such an address
    /// is ignored and the caller's media is learnt from its packets.
    pub trust_outside_addresses: bool,
    /// The TURN server (RFC 8656), which relays for browsers and ICE phones.
    pub turn: TurnSettings,
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

/// The protocol core: registrar, proxy, calls, keep-alives and dial plan in one state
/// machine that does no I/O.
///
/// # Calling contract
///
/// As with quinn-proto's `Connection`, one owner (the daemon's event loop, or a test) holds
/// the core and drives it in three steps, over and over:
///
/// 1. **Feed an input**, one call per event:
///    [`handle_message`](Core::handle_message) for bytes received on a SIP socket,
///    [`handle_stun`](Core::handle_stun) for a datagram on a STUN port,
///    [`handle_send_failure`](Core::handle_send_failure) when an [`Action::Send`] with a `key`
///    could not be sent, [`handle_unreachable`](Core::handle_unreachable) when a UDP peer
///    answered with an ICMP error, [`handle_resolved`](Core::handle_resolved) with the answer
///    to an [`Action::Resolve`], [`handle_relay_reserved`](Core::handle_relay_reserved) and
///    [`handle_relay_counters`](Core::handle_relay_counters) with the media relay's answers
///    to [`Action::ReserveRelayPorts`] and [`Action::QueryRelay`], and
///    [`handle_timeout`](Core::handle_timeout) once the deadline from `poll_timeout` has come.
/// 2. **Drain the actions**: [`take_actions`](Core::take_actions) returns what the inputs
///    produced, in order (messages to send, registrations to store or delete, forwarding to
///    save, DNS lookups to make, relay streams to open, steer, query or close), and the owner
///    carries out each one. What comes of them comes back as inputs: a failed send, a DNS
///    answer, the relay's ports and counters, the peer's reply. The relay's answers are
///    expected before the next input (the daemon gives them at once): a message that needs
///    relay ports takes them from the reserve those answers fill.
/// 3. **Ask for the next deadline**: [`poll_timeout`](Core::poll_timeout) gives the
///    earliest time a timer is due. The owner waits until then or until the next input,
///    whichever comes first. Any input may set an earlier timer, so the deadline is asked
///    again after each round.
///
/// Every input but `handle_stun` (which needs none) carries the current time as `now`: the
/// core never reads a clock, never blocks, spawns nothing and does no I/O of its own (the
/// media relay's sockets are the owner's, driven by actions once
/// [`enable_relay`](Core::enable_relay) says there is one). `handle_timeout` runs only the
/// timers due at its `now`: called
/// early it does nothing, called late it runs them late.
///
/// Actions that are not drained are not lost: they accumulate in the core, in order, until
/// the next `take_actions`, and meanwhile nothing is sent or stored. Feeding several inputs
/// before one drain is therefore allowed (the daemon feeds a batch of datagrams at once),
/// but the queue grows with every input until it is drained.
///
/// Construction may already produce work: [`new`](Core::new) and
/// [`with_plan`](Core::with_plan) restore stored registrations, deleting expired ones
/// (actions) and arming their timers, so the owner drains and polls once before the first
/// input. Settings and views ([`reconfigure`](Core::reconfigure),
/// [`set_users`](Core::set_users), [`set_plan`](Core::set_plan), [`status`](Core::status)...)
/// may be called between inputs.
pub struct Core {
    pub(crate) cfg: CoreConfig,
    /// Who may log in: users, nonces, recent failures.
    pub(crate) auth: auth::Authenticator,
    /// Who is registered where.
    pub(crate) location: Location,
    /// Server and client transactions under their ids.
    pub(crate) tx: transactions::Transactions,
    /// Response contexts of forwarded requests, and what forking needs across calls.
    pub(crate) proxy: proxy::Proxy,
    /// Calls in progress and the media relay.
    pub(crate) calls: calls::CallTable,
    /// The requests the server sends on its own: keep-alive pings, provider trunks.
    pub(crate) agent: Agent,
    /// Every deadline of every part, one queue.
    pub(crate) timers: TimerQueue,
    /// Extensions, groups, forwarding, speed dials, rules.
    pub(crate) plan: Directory,
    /// When the core started, and the randomness of its ids.
    pub(crate) origin: Origin,
    pub(crate) counters: Counters,
    /// Actions for the edge, drained by `take_actions`.
    pub(crate) out: Vec<Action>,
}

/// The server as a user agent: the requests it sends on its own behalf.
#[derive(Default)]
pub(crate) struct Agent {
    /// Keep-alive pings to phones behind NAT, in flight.
    pub(crate) pings: keepalive::KeepAlive,
    /// SIP providers and peered PBXs: registrations, keep-alives, calls through them.
    pub(crate) trunks: trunks::Trunks,
    /// Messages that wait for their user, and their deliveries.
    pub(crate) mailbox: mailbox::Mailbox,
    /// Presence and busy-lamp subscriptions, publications, NOTIFYs.
    pub(crate) presence: presence::Presence,
}

/// What the core was started with: its time origin, and what makes its ids unguessable.
pub(crate) struct Origin {
    pub(crate) started: Instant,
    /// Unix time at `started`, to persist absolute expiry times.
    pub(crate) unix_at_start: u64,
    /// The last id handed out (response contexts, DNS lookups, relay streams).
    pub(crate) next_id: u64,
    /// The process's keys: branches, tags and tokens come from them, unguessable outside.
    pub(crate) keys: keys::Keys,
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
        let keys = keys::Keys::new(&secret, &cfg.route_key);
        let turn = turn::TurnServer::new(cfg.relay.turn.clone());
        let mut core = Core {
            plan,
            auth: auth::Authenticator::new(Users::new(users), &secret, cfg.auth.nonce_lifetime),
            cfg,
            location: Location::default(),
            tx: transactions::Transactions::default(),
            proxy: proxy::Proxy::default(),
            calls: calls::CallTable::with_turn(turn),
            agent: Agent::default(),
            timers: TimerQueue::default(),
            origin: Origin {
                started: now,
                unix_at_start: unix_now,
                next_id: 1,
                keys,
            },
            counters: Counters::default(),
            out: Vec::new(),
        };
        core.auth.guard_mut().set_settings(core.cfg.guard.clone());
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

    /// Takes the settings that can change while running (a reload): registrar limits and
    /// keep-alives, authentication, the relay's mode and timeouts, the inbound policy. The
    /// domain, listeners and route key stay: they need a restart. Calls and registrations in
    /// progress keep what they have.
    pub fn reconfigure(&mut self, new: &CoreConfig) {
        let c = &mut self.cfg;
        c.registrar = new.registrar.clone();
        c.keepalive = new.keepalive.clone();
        c.auth = new.auth.clone();
        // The TURN URIs and a derived secret are worked out at start; a reload keeps them.
        let kept = std::mem::replace(&mut c.relay, new.relay.clone()).turn;
        if c.relay.turn.urls.is_empty() {
            c.relay.turn.urls = kept.urls;
            c.relay.turn.families = kept.families;
        }
        if c.relay.turn.secret.is_empty() {
            c.relay.turn.secret = kept.secret;
        }
        self.calls.turn.set_settings(c.relay.turn.clone());
        c.inbound = new.inbound;
        c.guard = new.guard.clone();
        self.auth.set_nonce_lifetime(new.auth.nonce_lifetime);
        self.auth.guard_mut().set_settings(new.guard.clone());
    }

    /// Forgets DNS answers (the DNS servers changed).
    pub fn clear_dns_cache(&mut self) {
        self.proxy.clear_dns_cache();
    }

    /// Replaces the user table (after `hedgewitch user ...` changed the store).
    pub fn set_users(&mut self, users: Vec<User>) {
        self.auth.set_users(Users::new(users));
    }

    /// Replaces the dial plan (start, reload). Calls in progress keep the stages they have.
    pub fn set_plan(&mut self, mut plan: Directory) {
        plan.set_numbers(self.agent.trunks.numbers().clone());
        self.plan = plan;
    }

    /// The actions produced since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        self.relay_refill();
        std::mem::take(&mut self.out)
    }

    pub(crate) fn unix(&self, now: Instant) -> u64 {
        self.origin.unix_at_start + now.saturating_duration_since(self.origin.started).as_secs()
    }

    pub(crate) fn id(&mut self) -> u64 {
        self.origin.next_id += 1;
        self.origin.next_id
    }

    /// A fresh token for tags and branches: unique in this process (it ends with a counter),
    /// not guessable outside it (it starts with a keyed hash of that counter).
    pub(crate) fn token(&mut self) -> String {
        let id = self.id();
        let mut h = self.origin.keys.hasher(keys::Purpose::Token);
        h.write_u64(id);
        let mixed = h.finish();
        let mut out = String::with_capacity(24);
        push_hex(&mut out, mixed, 16);
        push_hex(&mut out, id, 0);
        out
    }

    /// The edge's event loop falls behind (datagrams wait in full batches): for a while, new
    /// dialogs from sources that never proved themselves get 503 with Retry-After, while
    /// registered phones, logged-in users and calls in progress keep their service.
    pub fn handle_overload(&mut self, now: Instant) {
        self.auth.guard_mut().overloaded_now(now);
    }

    /// The earliest time a timer is due, None when no timer is set: the owner calls
    /// `handle_timeout` at that time (or later), and asks again after every input, which
    /// may have set an earlier timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The bans in force (failed logins), for `hedgewitch bans`; sources no longer banned
    /// or failing are forgotten on the way.
    pub fn bans(&mut self, now: Instant) -> Vec<BanView> {
        self.auth.guard_mut().forget_idle(now);
        self.auth.guard().bans(now)
    }

    /// Lifts the ban on the source `ip` is in; false when it was not banned.
    pub fn lift_ban(&mut self, now: Instant, ip: IpAddr) -> bool {
        let lifted = self.auth.guard_mut().lift(now, ip);
        if lifted {
            tracing::warn!(source = %ip, "ban lifted by the operator");
            self.out.push(Action::LiftBan {
                source: flow::source_key(ip),
            });
        }
        lifted
    }

    /// Entry point for every received message.
    pub fn handle_message(&mut self, now: Instant, flow: Flow, data: Bytes) {
        // A banned source gets nothing back, whatever it sends.
        if self.auth.guard().is_banned(now, flow.remote.ip()) {
            self.counters.traffic.dropped_banned += 1;
            return;
        }
        let datagram = flow.transport == Transport::Udp;
        // Admission, before any parsing: a source over its rate is dropped (a datagram) or
        // told to come back later (a stream). Under overload, a new dialog from a source
        // that never proved itself is told to come back later.
        if let Some(kind) = admission::kind_of(&data) {
            if !self.auth.guard_mut().admit(now, flow.remote.ip(), kind) {
                self.counters.traffic.rate_limited += 1;
                if !datagram {
                    if let Ok(head) = Message::parse_head(data) {
                        if head.method() != Some(Method::Ack) {
                            self.reply_stateless_with(
                                &head,
                                flow,
                                503,
                                "Service Unavailable (Too Many Requests)",
                                &[("Retry-After", "5".to_string())],
                            );
                        }
                    }
                }
                return;
            }
            if kind == admission::Kind::Dialog && self.auth.guard().sheds(now, flow.remote.ip()) {
                if let Ok(head) = Message::parse_head(data.clone()) {
                    if head.to().is_some_and(|t| t.tag().is_none()) {
                        self.counters.traffic.shed += 1;
                        return self.reply_stateless_with(
                            &head,
                            flow,
                            503,
                            "Service Unavailable (Overloaded)",
                            &[("Retry-After", "5".to_string())],
                        );
                    }
                }
            }
        }
        // RFC 5626 §4.4.2: STUN keep-alives share the SIP port; they never start with a letter.
        if datagram && sip::stun::is_stun(&data) {
            self.keepalive_seen(now, flow);
            return self.handle_stun(flow, &data);
        }
        // A bare CRLF over UDP: a phone's own keep-alive, nothing to answer.
        if datagram && data.iter().all(|&c| c == b'\r' || c == b'\n') {
            return self.keepalive_seen(now, flow);
        }
        // A WebSocket message is one whole SIP message, framed like a datagram (RFC 7118 §5).
        let whole = datagram || flow.transport.is_websocket();
        let msg = match Message::parse(data.clone(), whole) {
            Ok(m) => m,
            Err(e) => {
                self.counters.traffic.malformed_in += 1;
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
            self.counters.traffic.requests_in += 1;
            self.on_request(now, flow, msg);
        } else {
            self.counters.traffic.responses_in += 1;
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
                self.counters.traffic.stun_answered += 1;
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
                TimerRef::RelayRetry => self.relay_retry(),
                TimerRef::TurnSweep => self.turn_sweep(now),
                TimerRef::Trunk(name) => self.trunk_timer(now, &name),
                TimerRef::MailboxSweep => self.mailbox_sweep(now),
                TimerRef::MailboxStore(id) => self.handle_message_stored(now, id, false),
                TimerRef::PresenceSweep => self.presence_sweep(now),
                TimerRef::PresenceNotify(id) => self.notify(now, id, None),
            }
        }
    }

    /// The edge could not send a request of client transaction `key` (connection refused...).
    pub fn handle_send_failure(&mut self, now: Instant, key: ClientTxId) {
        let Some(ct) = self.tx.client_mut(key) else {
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

    /// The edge closed stream connection `conn` (the peer left, or a limit cut it off). A
    /// browser registered over it cannot be reached any more: its contacts go at once.
    pub fn handle_conn_closed(&mut self, now: Instant, conn: ConnId) {
        self.drop_connection_bindings(now, conn);
        self.turn_connection_closed(conn);
    }

    /// The TURN allocations, for `hedgewitch turn`.
    pub fn turn_allocations(&self, now: Instant) -> Vec<TurnAllocationView> {
        self.calls.turn.views(now)
    }

    /// `remote` answered a UDP datagram with an ICMP error (port or host unreachable): the
    /// requests we have in flight there fail now rather than after their timeout, so a
    /// domain's next server is tried at once (RFC 3263 §4.3) and a dead phone stops ringing.
    pub fn handle_unreachable(&mut self, now: Instant, remote: SocketAddr) {
        let keys: Vec<ClientTxId> = self
            .tx
            .clients_iter()
            .filter(|(_, c)| c.flow.transport == Transport::Udp && c.flow.remote == remote)
            .map(|(k, _)| k)
            .collect();
        if !keys.is_empty() {
            tracing::info!(%remote, "unreachable (ICMP); its requests fail now");
        }
        for key in keys {
            let Some(ct) = self.tx.client_mut(key) else {
                continue;
            };
            let actions = ct.machine.on_transport_error();
            self.client_actions(now, key, actions);
        }
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
