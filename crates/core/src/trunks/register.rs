//! Registering to providers (RFC 3261 §10.2, as a client): REGISTER with digest answers
//! (401 and 407, qop, SHA-256), refresh before the registration runs out, retries with a
//! back-off after failures (not after 403, which says the account is refused), our address
//! as the provider sees it (Via `received`/`rport`) in the Contact when we sit behind NAT,
//! RFC 3608 Service-Route kept for calls out, and keep-alive OPTIONS that hold a NAT's
//! mapping open and notice a provider that went away.

use super::{Purpose, RegState, Session, Trunk, TrunkView};
use crate::numbers::NumberSettings;
use crate::timers::TimerRef;
use crate::trunks::settings::TrunkSettings;
use crate::{Action, ClientTxId, Core, DnsQuery, Flow, Transport};
use sip::build::Writer;
use sip::digest_client::Challenge;
use sip::grammar::name_addr_list;
use sip::header::HeaderName;
use sip::message::Message;
use sip::uri::{Host, Uri};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The longest back-off between attempts: 32 times the first.
const MAX_BACKOFF_SHIFT: u32 = 5;

impl Core {
    /// Takes the providers and the `[numbers]` settings (start, reload). A provider whose
    /// settings did not change keeps its registration; a new or changed one registers
    /// afresh, and one that went is unregistered.
    pub fn set_trunks(&mut self, now: Instant, list: Vec<TrunkSettings>, numbers: NumberSettings) {
        self.plan.set_numbers(numbers.clone());
        let order: Vec<String> = list.iter().map(|s| s.name.clone()).collect();
        let trunks = &mut self.agent.trunks;
        trunks.numbers = numbers;
        let mut old = std::mem::take(&mut trunks.list);
        let mut start = vec![];
        for s in list {
            match old.iter().position(|t| t.settings == s) {
                Some(i) => trunks.list.push(old.remove(i)),
                None => {
                    start.push(s);
                }
            }
        }
        for gone in old {
            if matches!(gone.state, RegState::Registered { .. }) {
                self.unregister(now, gone);
            }
        }
        for s in start {
            let name = s.name.clone();
            let (call_id, tag) = (format!("reg.{}", self.token()), self.token());
            self.agent.trunks.list.push(Trunk::new(s, call_id, tag));
            self.trunk_step(now, &name);
        }
        // Providers are tried in the order given (their files' names).
        let rank = |n: &str| order.iter().position(|o| o == n);
        self.agent
            .trunks
            .list
            .sort_by_key(|t| rank(&t.settings.name));
    }

    /// The providers, for `hedgewitch providers`.
    pub fn trunks(&self, now: Instant) -> Vec<TrunkView> {
        self.agent.trunks.views(now)
    }

    /// Registers (or pings a peer) now, whatever the state: `hedgewitch provider test`,
    /// or a refused account whose password was fixed. False when there is no such provider.
    pub fn retry_trunk(&mut self, now: Instant, name: &str) -> bool {
        let Some(t) = self.agent.trunks.get_mut(name) else {
            return false;
        };
        t.session.failures = 0;
        t.session.challenge = None;
        t.hops = None;
        if t.settings.register.is_some() {
            t.state = RegState::Waiting("asked to register now".into());
        }
        if t.settings.register.is_none() {
            // A peer: one keep-alive now shows whether it answers.
            self.trunk_ping(now, name);
        } else {
            self.trunk_step(now, name);
        }
        true
    }

    /// A provider's timer: refresh, retry or keep-alive, whichever is due.
    pub(crate) fn trunk_timer(&mut self, now: Instant, name: &str) {
        let Some(t) = self.agent.trunks.get(name) else {
            return;
        };
        if t.next_at.is_some_and(|at| at <= now) {
            self.trunk_step(now, name);
        } else if t.ping_at.is_some_and(|at| at <= now) {
            self.trunk_ping(now, name);
        }
    }

    /// Where requests to the provider go now; a DNS lookup is asked for when the answer is
    /// missing or old (None until it comes).
    pub(crate) fn trunk_flow(&mut self, now: Instant, name: &str) -> Option<Flow> {
        let t = self.agent.trunks.get(name)?;
        // An old answer is used while DNS is asked again: a call must not fail because the
        // provider's records are being refreshed.
        let stale = match &t.hops {
            Some((flows, until)) if *until > now => return flows.first().copied(),
            Some((flows, _)) => flows.first().copied(),
            None => None,
        };
        let target = t
            .settings
            .peer
            .proxy
            .as_ref()
            .unwrap_or(&t.settings.peer.registrar);
        let uri = Uri::parse(target).ok()?;
        if let Some(flow) = self.resolve(&uri) {
            let t = self.agent.trunks.get_mut(name)?;
            t.hops = Some((vec![flow], now + Duration::from_secs(365 * 86400)));
            return Some(flow);
        }
        if self.agent.trunks.resolving.values().any(|n| n == name) {
            return stale;
        }
        let host = match uri.host {
            Host::Name(n) => n.to_ascii_lowercase(),
            Host::Ip(_) => return None,
        };
        let query = DnsQuery {
            host,
            port: uri.port,
            transport: Some(self.agent.trunks.get(name)?.settings.peer.transport),
        };
        let id = self.id();
        self.agent.trunks.resolving.insert(id, name.to_string());
        self.out.push(Action::Resolve { id, query });
        stale
    }

    /// A DNS answer for a provider (false: the lookup was not a provider's).
    pub(crate) fn trunk_resolved(
        &mut self,
        now: Instant,
        id: u64,
        targets: &[(Transport, SocketAddr)],
        ttl: Duration,
    ) -> bool {
        let Some(name) = self.agent.trunks.resolving.remove(&id) else {
            return false;
        };
        let flows: Vec<Flow> = targets
            .iter()
            .filter_map(|(tr, addr)| {
                let l = self.listener_for(*tr, addr)?;
                Some(Flow {
                    transport: *tr,
                    local: l.addr,
                    remote: *addr,
                    conn: None,
                })
            })
            .collect();
        let Some(t) = self.agent.trunks.get_mut(&name) else {
            return true;
        };
        if flows.is_empty() && t.hops.is_some() {
            // DNS failed this time: the servers it gave before serve a while longer.
            tracing::warn!(provider = %name, "DNS found no server for the provider; keeping the previous answer");
            if let Some((_, until)) = &mut t.hops {
                *until = now + Duration::from_secs(60);
            }
        } else if flows.is_empty() {
            let why = "DNS found no server for the provider".to_string();
            tracing::warn!(provider = %name, "{why}");
            self.trunk_retry_later(now, &name, why);
        } else {
            let ttl = ttl.clamp(Duration::from_secs(30), Duration::from_secs(3600));
            t.hops = Some((flows, now + ttl));
            self.trunk_step(now, &name);
        }
        true
    }

    /// The next registration step of a provider: register when due (or ping a peer).
    fn trunk_step(&mut self, now: Instant, name: &str) {
        let Some(t) = self.agent.trunks.get_mut(name) else {
            return;
        };
        t.next_at = None;
        if t.settings.register.is_none() {
            if t.settings.keepalive > 0 {
                self.trunk_ping(now, name);
            } else {
                // Its address is known from now on: its calls in are recognised by it.
                self.trunk_flow(now, name);
            }
            return;
        }
        if matches!(t.state, RegState::Refused(_)) {
            return;
        }
        let Some(flow) = self.trunk_flow(now, name) else {
            if let Some(t) = self.agent.trunks.get_mut(name) {
                if !matches!(t.state, RegState::Failed(_)) {
                    t.state = RegState::Waiting("looking the provider up in DNS".into());
                }
            }
            return;
        };
        self.send_register(now, name, flow, None);
    }

    /// Our Contact for a provider reached over `flow`: the secret as user, our address
    /// (the public one behind NAT).
    fn trunk_contact(&self, t: &Trunk, flow: Flow) -> String {
        let (ip, port) = match t.session.public {
            Some(p) => (p.ip(), p.port()),
            None => {
                let l = self.listener_for(flow.transport, &flow.remote);
                (l.map_or(flow.local.ip(), |l| l.host), flow.local.port())
            }
        };
        let tp = match flow.transport {
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
            _ => "",
        };
        format!(
            "sip:{}@{}:{port}{tp}",
            t.settings.account.secret,
            crate::proxy::bracket(ip)
        )
    }

    /// Sends a REGISTER (`remove`: a Contact to take away in the same request).
    fn send_register(&mut self, now: Instant, name: &str, flow: Flow, expires: Option<u32>) {
        let branch = format!("z9hG4bK{}", self.token());
        let cnonce = self.token();
        let Some(t) = self.agent.trunks.get(name) else {
            return;
        };
        let contact = self.trunk_contact(t, flow);
        let via = self.via_for(flow, &branch);
        let t = match self.agent.trunks.get_mut(name) {
            Some(t) => t,
            None => return,
        };
        let s = &t.settings;
        let expires = expires.unwrap_or(t.session.expires);
        t.session.cseq += 1;
        let aor = format!("sip:{}@{}", s.account.user, s.peer.domain);
        let mut w = Writer::request("REGISTER", &s.peer.registrar);
        w.header("Via", &via);
        if let Some(p) = &s.peer.proxy {
            w.header("Route", &loose(p));
        }
        w.header("Max-Forwards", "70");
        w.header_fmt("From", format_args!("<{aor}>;tag={}", t.session.tag));
        w.header_fmt("To", format_args!("<{aor}>"));
        w.header("Call-ID", &t.session.call_id);
        w.header_fmt("CSeq", format_args!("{} REGISTER", t.session.cseq));
        let mut contacts = format!("<{contact}>;expires={expires}");
        if let Some(old) = t.session.contact.as_ref().filter(|c| **c != contact) {
            contacts.push_str(&format!(", <{old}>;expires=0"));
        }
        w.header("Contact", &contacts);
        w.header_num("Expires", u64::from(expires));
        w.header("Supported", "path");
        w.header(
            "User-Agent",
            concat!("hedgewitch/", env!("CARGO_PKG_VERSION")),
        );
        if let Some((ch, proxy, answered)) = &mut t.session.challenge {
            t.session.nc += 1;
            let value = ch.answer(
                &s.account.auth_user,
                &s.account.password,
                "REGISTER",
                &s.peer.registrar,
                &cnonce,
                t.session.nc,
            );
            *answered = true;
            let h = if *proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            w.header(h, &value);
        }
        t.session.contact = (expires > 0).then_some(contact);
        if !matches!(t.state, RegState::Registered { .. }) {
            t.state = RegState::Trying;
        }
        let data = w.finish(None, b"");
        let id = self.send_request(now, flow, &branch, "REGISTER", data);
        if self.tx.has_client(id) {
            let trunks = &mut self.agent.trunks;
            trunks
                .by_tx
                .insert(id, (name.to_string(), Purpose::Register));
        }
    }

    /// Unregisters a provider that was removed (its answer goes nowhere).
    fn unregister(&mut self, now: Instant, t: Trunk) {
        let name = t.settings.name.clone();
        let hop = t.hops.as_ref().and_then(|(f, _)| f.first().copied());
        self.agent.trunks.list.push(t);
        if let Some(flow) = hop {
            self.send_register(now, &name, flow, Some(0));
        }
        self.agent.trunks.list.retain(|t| t.settings.name != name);
        self.agent.trunks.by_tx.retain(|_, (n, _)| *n != name);
    }

    /// A keep-alive OPTIONS to the provider (a registered one, or a peer).
    fn trunk_ping(&mut self, now: Instant, name: &str) {
        let Some(t) = self.agent.trunks.get_mut(name) else {
            return;
        };
        t.ping_at = None;
        let every = t.settings.keepalive;
        let wanted =
            t.settings.register.is_none() || matches!(t.state, RegState::Registered { .. });
        let to = t.settings.peer.registrar.clone();
        if every > 0 {
            let at = now + Duration::from_secs(u64::from(every));
            t.ping_at = Some(at);
            self.timers.push(at, TimerRef::Trunk(name.to_string()));
        }
        if !wanted {
            return;
        }
        let Some(flow) = self.trunk_flow(now, name) else {
            return;
        };
        let (branch, w) = self.own_request("OPTIONS", &to, &to, flow);
        let data = w.finish(None, b"");
        let id = self.send_request(now, flow, &branch, "OPTIONS", data);
        if self.tx.has_client(id) {
            let trunks = &mut self.agent.trunks;
            trunks.by_tx.insert(id, (name.to_string(), Purpose::Ping));
        }
    }

    /// An answer to one of our requests to a provider (false: not ours to handle).
    pub(crate) fn trunk_answered(&mut self, now: Instant, key: ClientTxId, msg: &Message) -> bool {
        let Some((name, purpose)) = self.agent.trunks.by_tx.remove(&key) else {
            return false;
        };
        let status = msg.status().unwrap_or(500);
        let unix = self.unix(now);
        let Some(t) = self.agent.trunks.get_mut(&name) else {
            return true;
        };
        if purpose == Purpose::Ping {
            // Any answer shows the provider is there and the mapping open.
            if t.silent {
                tracing::info!(provider = %name, "provider answers keep-alives again");
            }
            t.silent = false;
            return true;
        }
        match status {
            200..=299 => {
                let flow = t.hops.as_ref().and_then(|(f, _)| f.first().copied());
                // Behind NAT, the provider saw another address than ours: register that one.
                if let (Some(seen), Some(flow)) = (seen_as(msg), flow) {
                    if t.session.public != Some(seen) && seen != flow.local {
                        let own = self
                            .listener_for(flow.transport, &flow.remote)
                            .map(|l| l.host);
                        if own != Some(seen.ip()) || seen.port() != flow.local.port() {
                            tracing::info!(provider = %name, public = %seen,
                                "the provider sees us at another address (NAT); registering that one");
                            if let Some(t) = self.agent.trunks.get_mut(&name) {
                                t.session.public = Some(seen);
                            }
                            self.send_register(now, &name, flow, None);
                            return true;
                        }
                    }
                }
                let Some(t) = self.agent.trunks.get_mut(&name) else {
                    return true;
                };
                let granted = granted_expires(msg, &t.settings.account.secret)
                    .unwrap_or(t.session.expires)
                    .max(10);
                t.session.service_route = msg
                    .other_value("Service-Route")
                    .map(|v| {
                        name_addr_list(v)
                            .filter_map(Result::ok)
                            .map(|r| r.uri.raw.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                if !matches!(t.state, RegState::Registered { .. }) {
                    tracing::info!(provider = %name, account = %format!("{}@{}", t.settings.account.user, t.settings.peer.domain),
                        expires = granted, "registered to the provider");
                    t.since = Some(unix);
                }
                t.session.failures = 0;
                t.state = RegState::Registered {
                    since: t.since.unwrap_or(unix),
                    until: now + Duration::from_secs(u64::from(granted)),
                };
                // Refreshed ahead of time: a tenth of the lifetime early, at least 5 s.
                let ahead = (granted / 10).max(5).min(granted / 2);
                let at = now + Duration::from_secs(u64::from(granted - ahead));
                t.next_at = Some(at);
                self.timers.push(at, TimerRef::Trunk(name.clone()));
                if t.ping_at.is_none() && t.settings.keepalive > 0 {
                    let p = now + Duration::from_secs(u64::from(t.settings.keepalive));
                    t.ping_at = Some(p);
                    self.timers.push(p, TimerRef::Trunk(name.clone()));
                }
            }
            401 | 407 => {
                let header = if status == 401 {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::ProxyAuthenticate
                };
                let realm_ok = |c: &Challenge| {
                    t.settings
                        .peer
                        .realm
                        .as_deref()
                        .is_none_or(|r| r == c.realm)
                };
                let ch = msg
                    .values(header)
                    .filter_map(|v| Challenge::parse(v).ok())
                    .filter(|c| realm_ok(c))
                    .max_by_key(|c| c.algorithm == sip::digest::Algorithm::Sha256);
                let Some(ch) = ch else {
                    self.trunk_failed_with(
                        now,
                        &name,
                        format!("{status} with no digest challenge we can answer"),
                    );
                    return true;
                };
                let same = t
                    .session
                    .challenge
                    .as_ref()
                    .is_some_and(|(old, _, answered)| *answered && old.nonce == ch.nonce);
                let refused = t.session.challenge.as_ref().is_some_and(|(_, _, a)| *a) && !ch.stale;
                if same || refused {
                    t.session.challenge = None;
                    let why = format!("{status}: the provider refused the user name or password");
                    self.trunk_failed_with(now, &name, why);
                    return true;
                }
                t.session.challenge = Some((ch, status == 407, false));
                t.session.nc = 0;
                if let Some(flow) = t.hops.as_ref().and_then(|(f, _)| f.first().copied()) {
                    self.send_register(now, &name, flow, None);
                }
            }
            423 => {
                let min = msg
                    .value(HeaderName::MinExpires)
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|m| *m <= 86400);
                match (min, t.hops.as_ref().and_then(|(f, _)| f.first().copied())) {
                    (Some(m), Some(flow)) if m > t.session.expires => {
                        t.session.expires = m;
                        self.send_register(now, &name, flow, None);
                    }
                    _ => {
                        self.trunk_failed_with(now, &name, "423 with no usable Min-Expires".into())
                    }
                }
            }
            403 => {
                let why = format!(
                    "403 {}: the provider refuses this account; not retried until `hedgewitch provider test {name}` or a reload",
                    msg.reason()
                );
                tracing::warn!(provider = %name, "{why}");
                t.state = RegState::Refused(why);
                t.since = Some(unix);
                t.next_at = None;
            }
            _ => self.trunk_failed_with(now, &name, format!("{status} {}", msg.reason())),
        }
        true
    }

    /// One of our requests to a provider got no answer (false: not a provider's).
    pub(crate) fn trunk_no_answer(&mut self, now: Instant, key: ClientTxId) -> bool {
        let Some((name, purpose)) = self.agent.trunks.by_tx.remove(&key) else {
            return false;
        };
        let remote = self.tx.client(key).map(|c| c.flow.remote);
        let Some(t) = self.agent.trunks.get_mut(&name) else {
            return true;
        };
        let who = remote.map_or_else(|| "the provider".into(), |r| r.to_string());
        if purpose == Purpose::Ping {
            if !t.silent {
                tracing::warn!(provider = %name, remote = %who, "provider does not answer keep-alives");
            }
            t.silent = true;
            if matches!(t.state, RegState::Registered { .. }) {
                // It may have restarted and forgotten us: register again, now.
                t.hops = None;
                self.trunk_failed_with(now, &name, format!("no answer to keep-alives from {who}"));
            }
            return true;
        }
        t.hops = None;
        self.trunk_failed_with(now, &name, format!("no answer from {who}"));
        true
    }

    fn trunk_failed_with(&mut self, now: Instant, name: &str, why: String) {
        tracing::warn!(provider = %name, "registration failed: {why}");
        self.trunk_retry_later(now, name, why);
    }

    /// Marks a provider failed and plans the next attempt after the back-off.
    fn trunk_retry_later(&mut self, now: Instant, name: &str, why: String) {
        let unix = self.unix(now);
        let Some(t) = self.agent.trunks.get_mut(name) else {
            return;
        };
        let Some(reg) = &t.settings.register else {
            t.silent = true;
            return;
        };
        if !matches!(t.state, RegState::Failed(_)) {
            t.since = Some(unix);
        }
        t.state = RegState::Failed(why);
        let shift = t.session.failures.min(MAX_BACKOFF_SHIFT);
        t.session.failures = t.session.failures.saturating_add(1);
        let at = now + Duration::from_secs(u64::from(reg.retry) << shift);
        t.next_at = Some(at);
        self.timers.push(at, TimerRef::Trunk(name.to_string()));
    }
}

impl Trunk {
    fn new(settings: TrunkSettings, call_id: String, tag: String) -> Trunk {
        let state = match settings.register {
            Some(_) => RegState::Waiting("starting".into()),
            None => RegState::Peer,
        };
        let expires = settings.register.as_ref().map_or(0, |r| r.expires);
        // Call-ID and tag stay for the process's life (RFC 3261 §10.2.4: refreshes use the
        // same Call-ID); a restart registers afresh.
        Trunk {
            session: Session {
                call_id,
                tag,
                expires,
                ..Default::default()
            },
            settings,
            state,
            since: None,
            hops: None,
            next_at: None,
            ping_at: None,
            silent: false,
            calls: 0,
        }
    }
}

/// `<uri;lr>`: an outbound proxy as a loose route.
pub(crate) fn loose(uri: &str) -> String {
    format!("<{}>", loose_uri(uri))
}

/// An outbound proxy's URI with `;lr`.
pub(crate) fn loose_uri(uri: &str) -> String {
    if uri.contains(";lr") {
        uri.to_string()
    } else {
        format!("{uri};lr")
    }
}

/// Where the provider saw our request come from: the top Via's `received` and `rport`.
fn seen_as(msg: &Message) -> Option<SocketAddr> {
    let via = msg.top_via()?;
    let ip = via.param("received").flatten()?.parse().ok()?;
    let port = via.param("rport").flatten()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The lifetime a 200 to REGISTER grants our Contact (the one carrying `secret`).
fn granted_expires(msg: &Message, secret: &str) -> Option<u32> {
    let ours = msg
        .values(HeaderName::Contact)
        .flat_map(name_addr_list)
        .filter_map(Result::ok)
        .find(|c| c.uri.user == Some(secret));
    if let Some(c) = ours {
        if let Some(e) = c.param("expires").flatten().and_then(|v| v.parse().ok()) {
            return Some(e);
        }
    }
    msg.value(HeaderName::Expires)?.trim().parse().ok()
}
