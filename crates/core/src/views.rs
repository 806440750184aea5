//! What the core shows of itself: counters, a status snapshot and the registered contacts, for
//! the control channel (`hedgewitch status`, `hedgewitch registrations`).

use super::*;

/// Counters shown by `hedgewitch status`, by the part that counts them; they show as one flat
/// object (`counters.auth_failures`), as before the grouping.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counters {
    /// What arrived, and what was refused before any decision.
    #[serde(flatten)]
    pub traffic: TrafficCounters,
    /// Registrations, logins, keep-alives.
    #[serde(flatten)]
    pub registrar: RegistrarCounters,
    /// What the proxy passed on.
    #[serde(flatten)]
    pub forwarded: ForwardedCounters,
    /// The media relay's refusals and timeouts.
    #[serde(flatten)]
    pub relay: RelayCounters,
}

/// What arrived, and what was refused before any decision.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TrafficCounters {
    /// Requests received and parsed, retransmissions included.
    pub requests_in: u64,
    /// Responses received and parsed, retransmissions included.
    pub responses_in: u64,
    /// Messages that did not parse, and parsed ones that failed the checks of a request or a
    /// response (those count in `requests_in` or `responses_in` too).
    pub malformed_in: u64,
    /// Requests refused with 503 because the transaction table was full.
    pub overloaded: u64,
    /// STUN Binding requests answered (keep-alives on SIP ports, and the STUN port).
    pub stun_answered: u64,
    /// Messages dropped unanswered because their source is banned.
    pub dropped_banned: u64,
    /// Requests over their source's rate: dropped (datagrams) or answered 503 (streams).
    pub rate_limited: u64,
    /// New dialogs from unverified sources answered 503 while the server was overloaded.
    pub shed: u64,
}

/// Registrations, logins, keep-alives.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RegistrarCounters {
    /// REGISTER requests answered 200 after their contacts were applied (a query without
    /// Contact included, a `Contact: *` removal not).
    pub registrations_accepted: u64,
    /// Failed logins (no such user, wrong password), once per request: its retransmissions
    /// are not counted again.
    pub auth_failures: u64,
    /// Sources banned for failed logins.
    pub bans: u64,
    /// Keep-alive OPTIONS sent to phones behind NAT.
    pub nat_pings_sent: u64,
}

/// What the proxy passed on.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ForwardedCounters {
    /// INVITEs the proxy tried to reach someone with, once per request.
    pub calls_forwarded: u64,
    /// MESSAGEs the proxy tried to deliver, once per request.
    pub messages_forwarded: u64,
    /// MESSAGEs of our own (feature-code confirmations) that a phone accepted.
    pub notifications_delivered: u64,
    /// Requests to other domains refused because their user was over their rate.
    pub outside_limited: u64,
}

/// The media relay's refusals and timeouts.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RelayCounters {
    /// Relayed calls ended because no media flowed.
    pub relay_timeouts: u64,
    /// Calls refused because the relay's port range was used up.
    pub relay_full: u64,
    /// Offers refused with 488 for more `m=` lines than a call has.
    pub too_many_streams: u64,
}

/// Snapshot for the control channel.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// The main domain.
    pub domain: String,
    /// Seconds since the core started.
    pub uptime_secs: u64,
    /// Users in the user table.
    pub users: usize,
    /// Users with registered contacts.
    pub registered_users: usize,
    /// Registered contacts, across users.
    pub contacts: usize,
    /// Server transactions in the table (requests we received).
    pub server_transactions: usize,
    /// Client transactions in the table (requests we sent).
    pub client_transactions: usize,
    /// Response contexts of forwarded requests.
    pub proxy_contexts: usize,
    /// Bytes server transactions hold (requests and kept answers), as charged to the limits.
    pub transaction_bytes: usize,
    /// Calls in the call table.
    pub calls: usize,
    /// Relay port pairs bound and ready for new calls' streams (None: no media relay).
    pub relay_ports_ready: Option<usize>,
    /// The counters since start.
    pub counters: Counters,
}

/// One registered contact, for `hedgewitch registrations`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegistrationView {
    /// The user's key (`name`, or `name@domain` in a further domain).
    pub user: String,
    /// The user's extension, if any.
    pub extension: Option<String>,
    /// The contact URI as registered.
    pub contact: String,
    /// Seconds until the registration runs out.
    pub expires_in_secs: u64,
    /// The contact's preference (`q`).
    pub q: f32,
    /// The transport it registered over (`udp`, `tcp`, `tls`).
    pub transport: String,
    /// The peer address of its flow (`ip:port`): where its REGISTER came from.
    pub source: String,
    /// The phone's User-Agent header.
    pub user_agent: String,
    /// RFC 5626 outbound: the phone's instance and reg-id, when it registered a flow.
    pub instance: Option<String>,
    /// RFC 5626 outbound: the flow's reg-id, when it registered one.
    pub reg_id: Option<u32>,
    /// RFC 3327 Path: the proxies between us and the phone.
    pub path: Vec<String>,
}

impl Core {
    /// A snapshot of the core, for `hedgewitch status`.
    pub fn status(&self, now: Instant) -> Status {
        Status {
            domain: self.cfg.domain.clone(),
            uptime_secs: now.saturating_duration_since(self.origin.started).as_secs(),
            users: self.auth.users().len(),
            registered_users: self.location.aors(),
            contacts: self.location.contacts(),
            server_transactions: self.tx.server_count(),
            client_transactions: self.tx.client_count(),
            proxy_contexts: self.proxy.context_count(),
            transaction_bytes: self.tx.charged(),
            calls: self.calls.len(),
            relay_ports_ready: self.calls.relay_ports_ready(),
            counters: self.counters.clone(),
        }
    }

    /// Every registered contact, sorted by user and contact, for `hedgewitch registrations`.
    pub fn registrations(&self, now: Instant) -> Vec<RegistrationView> {
        let mut out = vec![];
        for (aor, bindings) in self.location.iter() {
            let ext = self
                .auth
                .users()
                .find(aor)
                .and_then(|u| u.extension.clone());
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
                    instance: b.instance.as_ref().map(|i| i.id.clone()),
                    reg_id: b.instance.as_ref().and_then(|i| i.reg_id),
                    path: b.path.clone(),
                });
            }
        }
        out.sort_by(|a, b| (&a.user, &a.contact).cmp(&(&b.user, &b.contact)));
        out
    }
}
