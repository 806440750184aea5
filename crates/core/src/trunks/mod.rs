//! SIP provider trunks and peered IP-PBXs: the providers the domain calls numbers through
//! and receives the household's numbers from. Owns each provider's registration (RFC 3261
//! §10.2, as a client: digest, refresh, back-off, NAT), its keep-alives, the DNS answers
//! for it, the calls in progress through it and the per-user counts the fraud guards use.
//! The proxy asks it where a number goes and whose a request is; `register.rs` runs the
//! registrations, `outside.rs` the calls.

pub mod settings;

mod outside;
mod register;

use crate::numbers::NumberSettings;
use crate::{ClientTxId, Flow};
use serde::Serialize;
use settings::TrunkSettings;
use sip::digest_client::Challenge;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Where a provider's registration is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RegState {
    /// A peer that is not registered to (a PBX at a static address).
    Peer,
    /// Waiting for DNS or for the first attempt.
    Waiting(String),
    /// A REGISTER is in flight.
    Trying,
    /// Registered since `since` (Unix time), until `until`.
    Registered { since: u64, until: Instant },
    /// The last attempt failed for `reason`; the next one is due at `next_at`.
    Failed(String),
    /// The provider refused the account (403): no retry until reload or a test.
    Refused(String),
}

/// What one of our requests to a provider was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Register,
    Ping,
}

/// The client side of a registration: what the next REGISTER carries.
#[derive(Default)]
struct Session {
    call_id: String,
    tag: String,
    cseq: u32,
    /// The last challenge, whether it came as 407 (Proxy-), and whether we answered it.
    challenge: Option<(Challenge, bool, bool)>,
    /// Nonce count for the challenge.
    nc: u32,
    /// Our address as the provider sees it (Via `received`/`rport`), when it differs from
    /// our own: we sit behind NAT, and the Contact names this one.
    public: Option<SocketAddr>,
    /// The Contact we registered last, to remove it when it changes.
    contact: Option<String>,
    /// RFC 3608 Service-Route the registrar returned: the route of our calls out.
    service_route: Vec<String>,
    /// Registration lifetime granted (or asked for after a 423).
    expires: u32,
    /// Failures in a row (for the back-off).
    failures: u32,
}

/// One provider.
pub(crate) struct Trunk {
    pub(crate) settings: TrunkSettings,
    state: RegState,
    since: Option<u64>,
    /// Where its requests go, until when the DNS answer holds.
    hops: Option<(Vec<Flow>, Instant)>,
    session: Session,
    /// The next registration step (refresh, retry) and the next keep-alive.
    next_at: Option<Instant>,
    ping_at: Option<Instant>,
    /// The peer did not answer its last keep-alive.
    silent: bool,
    /// Calls through it now.
    calls: u32,
}

/// A call out through a provider, for the caps.
struct OutsideCall {
    user: String,
    trunk: String,
    since: Instant,
}

/// Every provider, our requests to them and the calls through them.
#[derive(Default)]
pub(crate) struct Trunks {
    list: Vec<Trunk>,
    by_tx: HashMap<ClientTxId, (String, Purpose)>,
    resolving: HashMap<u64, String>,
    calls: HashMap<String, OutsideCall>,
    /// Calls a user started on a day (days since the epoch).
    per_day: HashMap<String, (u64, u32)>,
    numbers: NumberSettings,
}

/// A provider as `hedgewitch providers` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TrunkView {
    /// Its name.
    pub name: String,
    /// `registered`, `registering`, `waiting`, `failed`, `refused`, or `peer` (no
    /// registration) / `unreachable` (a peer not answering keep-alives).
    pub state: String,
    /// Since when (Unix time) it is in this state, when known.
    pub since: Option<u64>,
    /// Seconds until the registration runs out, when registered.
    pub expires_in: Option<u64>,
    /// Why it is not registered.
    pub reason: Option<String>,
    /// The account and registrar (`user@domain`).
    pub account: String,
    /// Our Contact as registered (our public address behind NAT).
    pub contact: Option<String>,
    /// Calls through it now.
    pub calls: u32,
    /// The household's numbers on it.
    pub numbers: Vec<String>,
}

impl Trunks {
    fn get(&self, name: &str) -> Option<&Trunk> {
        self.list.iter().find(|t| t.settings.name == name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Trunk> {
        self.list.iter_mut().find(|t| t.settings.name == name)
    }

    /// The `[numbers]` settings.
    pub(crate) fn numbers(&self) -> &NumberSettings {
        &self.numbers
    }

    /// Whether there is any provider at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The provider whose requests come from `remote`: its configured `addresses` by IP;
    /// a registered provider's servers (as DNS gave them) by IP, since its proxies may send
    /// from any port; a peer (a PBX, which sends from its SIP port) by its exact address.
    pub(crate) fn by_source(&self, remote: SocketAddr) -> Option<&str> {
        self.list
            .iter()
            .find(|t| {
                let peer = t.settings.register.is_none();
                t.settings.peer.addresses.contains(&remote.ip())
                    || t.hops.as_ref().is_some_and(|(f, _)| {
                        f.iter().any(|f| {
                            f.remote.ip() == remote.ip()
                                && (!peer || f.remote.port() == remote.port())
                        })
                    })
            })
            .map(|t| t.settings.name.as_str())
    }

    /// Whether the provider is a peer (no registration: a PBX).
    pub(crate) fn is_peer(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|t| t.settings.register.is_none())
    }

    /// Our address as the provider at `remote` sees it, when we sit behind NAT and learnt
    /// it from its answers: what our Record-Route facing it must name.
    pub(crate) fn public_toward(&self, remote: SocketAddr) -> Option<SocketAddr> {
        if self.list.is_empty() {
            return None;
        }
        let name = self.by_source(remote)?;
        self.get(name)?.session.public
    }

    /// Whether `ip` (and `port`, when given) is our public address at some provider.
    pub(crate) fn is_public_address(&self, ip: std::net::IpAddr, port: Option<u16>) -> bool {
        self.list.iter().any(|t| {
            t.session
                .public
                .is_some_and(|p| p.ip() == ip && port.is_none_or(|x| x == p.port()))
        })
    }

    /// The provider whose Contact secret `user` is.
    pub(crate) fn by_secret(&self, user: &str) -> Option<&str> {
        self.list
            .iter()
            .find(|t| t.settings.account.secret == user)
            .map(|t| t.settings.name.as_str())
    }

    /// The views for `hedgewitch providers`.
    fn views(&self, now: Instant) -> Vec<TrunkView> {
        self.list
            .iter()
            .map(|t| {
                let (state, reason) = match &t.state {
                    RegState::Peer if t.silent => ("unreachable", None),
                    RegState::Peer => ("peer", None),
                    RegState::Waiting(r) => ("waiting", Some(r.clone())),
                    RegState::Trying if t.since.is_some() => ("registered", None),
                    RegState::Trying => ("registering", None),
                    RegState::Registered { .. } => ("registered", None),
                    RegState::Failed(r) => ("failed", Some(r.clone())),
                    RegState::Refused(r) => ("refused", Some(r.clone())),
                };
                let expires_in = match t.state {
                    RegState::Registered { until, .. } => {
                        Some(until.saturating_duration_since(now).as_secs())
                    }
                    _ => None,
                };
                let s = &t.settings;
                TrunkView {
                    name: s.name.clone(),
                    state: state.to_string(),
                    since: t.since,
                    expires_in,
                    reason,
                    account: format!("{}@{}", s.account.user, s.peer.domain),
                    contact: t.session.contact.clone(),
                    calls: t.calls,
                    numbers: s.dids.iter().map(|d| d.number.clone()).collect(),
                }
            })
            .collect()
    }
}
