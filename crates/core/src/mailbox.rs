//! Messages that wait: a MESSAGE for a local user none of whose phones takes it (none
//! registered, or all fail: 408, 480, 503, or no answer within `answer_within`) is kept and
//! answered 202 once the store has it, then delivered in order, with its sender, Date and
//! content type, to the next phone of the user that registers, and forgotten once a phone
//! answers 2xx. Bounded per user (count and bytes: the oldest goes first, logged), per
//! source and in all (a message over those is refused, never lost silently), and by age.

use crate::handles::{CtxId, ServerTxId};
use crate::plan::Target;
use crate::timers::TimerRef;
use crate::{Action, ClientTxId, Core};
use serde::Serialize;
use sip::build::Writer;
use sip::header::HeaderName;
use sip::message::Method;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long the store may take to keep a message before the sender is told it was not.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// How messages wait (`[messages]`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxSettings {
    /// Keep messages for users whose phones do not take them.
    pub store: bool,
    /// Messages kept per user; past it the oldest goes.
    pub per_user: usize,
    /// Bytes kept per user; past it the oldest go.
    pub per_user_bytes: usize,
    /// Bytes kept from one source (an IPv4 address, an IPv6 /64); past it, refused.
    pub per_source_bytes: usize,
    /// Bytes kept in all; past it, refused.
    pub total_bytes: usize,
    /// Days a message waits before it is dropped.
    pub max_age_days: u64,
    /// The largest message body kept (bytes).
    pub max_size: usize,
    /// Seconds a user's phones have to answer before the message waits instead.
    pub answer_within: u64,
}

impl Default for MailboxSettings {
    fn default() -> Self {
        MailboxSettings {
            store: true,
            per_user: 100,
            per_user_bytes: 1 << 20,
            per_source_bytes: 4 << 20,
            total_bytes: 64 << 20,
            max_age_days: 7,
            max_size: 64 << 10,
            answer_within: 5,
        }
    }
}

/// A message waiting for its user, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingMessage {
    /// Orders messages: later ones are larger (also across restarts).
    pub id: u64,
    /// The user it is for (their key in the user table).
    pub user: String,
    /// The sender as the From header named them (without the tag).
    pub from: String,
    /// When it was sent, as an RFC 7231 date (the sender's Date header, else ours).
    pub date: String,
    /// Its Content-Type.
    pub content_type: String,
    /// Its body.
    pub body: Vec<u8>,
    /// Unix time it was kept at.
    pub stored_at: u64,
    /// Where it came from (for the per-source bound).
    pub source: IpAddr,
}

/// What `hedgewitch messages` shows per user.
#[derive(Clone, Debug, Serialize)]
pub struct MailboxView {
    /// The user.
    pub user: String,
    /// Messages waiting.
    pub count: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Unix time the oldest was kept at.
    pub oldest: u64,
    /// Who sent them, oldest first.
    pub senders: Vec<String>,
}

/// The messages that wait, and what is on its way to the store or to a phone.
#[derive(Default)]
pub(crate) struct Mailbox {
    settings: MailboxSettings,
    queues: HashMap<String, VecDeque<WaitingMessage>>,
    bytes: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Asked of the store, not yet confirmed: message -> the request to answer, its context.
    storing: HashMap<u64, (ServerTxId, CtxId, WaitingMessage)>,
    /// The context a kept message came from: a late 2xx from a phone means it arrived.
    by_context: HashMap<CtxId, u64>,
    /// Deliveries in flight: our MESSAGE -> (user, message, the phone's contact).
    delivering: HashMap<ClientTxId, (String, u64, String)>,
    /// Whether the sweep timer is armed.
    sweeping: bool,
}

impl Mailbox {
    fn cost(m: &WaitingMessage) -> usize {
        m.body.len() + m.from.len() + m.content_type.len() + 64
    }

    fn add(&mut self, m: WaitingMessage) {
        let c = Self::cost(&m);
        self.bytes += c;
        *self.per_source.entry(m.source).or_default() += c;
        self.queues.entry(m.user.clone()).or_default().push_back(m);
    }

    fn remove(&mut self, user: &str, id: u64) -> Option<WaitingMessage> {
        let q = self.queues.get_mut(user)?;
        let i = q.iter().position(|m| m.id == id)?;
        let m = q.remove(i)?;
        if q.is_empty() {
            self.queues.remove(user);
        }
        let c = Self::cost(&m);
        self.bytes = self.bytes.saturating_sub(c);
        if let Some(s) = self.per_source.get_mut(&m.source) {
            *s = s.saturating_sub(c);
            if *s == 0 {
                self.per_source.remove(&m.source);
            }
        }
        Some(m)
    }
}

impl Core {
    /// Takes the `[messages]` settings (start, reload).
    pub fn set_mailbox(&mut self, settings: MailboxSettings) {
        self.agent.mailbox.settings = settings;
    }

    /// The messages kept in the store (at start): expired ones are deleted, the others wait.
    pub fn restore_messages(&mut self, now: Instant, mut messages: Vec<WaitingMessage>) {
        messages.sort_by_key(|m| m.id);
        let oldest_ok = self
            .unix(now)
            .saturating_sub(self.agent.mailbox.settings.max_age_days * 86400);
        for m in messages {
            if m.stored_at < oldest_ok {
                self.out.push(Action::DeleteMessage { id: m.id });
            } else {
                self.agent.mailbox.add(m);
            }
        }
        self.arm_sweep(now);
    }

    /// What waits, per user, for `hedgewitch messages`.
    pub fn waiting_messages(&self) -> Vec<MailboxView> {
        let mut out: Vec<MailboxView> = self
            .agent
            .mailbox
            .queues
            .iter()
            .map(|(user, q)| MailboxView {
                user: user.clone(),
                count: q.len(),
                bytes: q.iter().map(Mailbox::cost).sum(),
                oldest: q.front().map_or(0, |m| m.stored_at),
                senders: q.iter().map(|m| m.from.clone()).collect(),
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// How long a user's phones have to answer a MESSAGE before it waits instead (None: it
    /// does not wait).
    pub(crate) fn message_ring_time(&self) -> Option<Duration> {
        let s = &self.agent.mailbox.settings;
        s.store.then(|| Duration::from_secs(s.answer_within.max(1)))
    }

    /// A MESSAGE hunt for a local user ended with `best` (None: nobody answered at all):
    /// when no phone took it, it is kept (the store is asked; the sender gets 202 once it
    /// has it). False when it does not wait (another method or target, too big, over the
    /// bounds): the caller answers as usual.
    pub(crate) fn mailbox_take(&mut self, now: Instant, ctx_id: CtxId, best: Option<u16>) -> bool {
        if !self.agent.mailbox.settings.store || !matches!(best, None | Some(408 | 480 | 500 | 503))
        {
            return false;
        }
        let Some(ctx) = self.proxy.ctx(ctx_id) else {
            return false;
        };
        // An outsider must not learn who exists: unless a phone rang, they get the answer
        // an unknown name gets, not a 202.
        if ctx.final_sent || (ctx.conceal && ctx.branches.is_empty()) {
            return false;
        }
        let (server, in_flow) = (ctx.server, ctx.template.in_flow);
        let user = match ctx.hunt.as_ref().and_then(|h| h.current_target()) {
            Some(Target::User(u)) => u.clone(),
            _ => return false,
        };
        let Some(msg) = self.tx.server(server).and_then(|st| st.request.clone()) else {
            return false;
        };
        if msg.method() != Some(Method::Message) {
            return false;
        }
        let s = self.agent.mailbox.settings.clone();
        let source = crate::flow::source_key(in_flow.remote.ip());
        let from = msg
            .from()
            .map(|f| {
                let raw = f.raw;
                raw.find(";tag=").map_or(raw, |i| &raw[..i]).to_string()
            })
            .unwrap_or_default();
        let m = WaitingMessage {
            id: self.origin.unix_at_start * 1_000_000 + self.id(),
            user: user.clone(),
            from,
            date: msg
                .value(HeaderName::Date)
                .map(str::to_string)
                .unwrap_or_else(|| crate::registrar::httpdate(self.unix(now))),
            content_type: msg
                .value(HeaderName::ContentType)
                .unwrap_or("text/plain")
                .to_string(),
            body: msg.body().to_vec(),
            stored_at: self.unix(now),
            source,
        };
        let cost = Mailbox::cost(&m);
        let mb = &self.agent.mailbox;
        let refused = if m.body.len() > s.max_size {
            Some("larger than messages.max_size")
        } else if mb.per_source.get(&source).copied().unwrap_or(0) + cost > s.per_source_bytes {
            Some("its source is over messages.per_source_bytes")
        } else if mb.bytes + cost > s.total_bytes {
            Some("the server is over messages.total_bytes")
        } else {
            None
        };
        if let Some(why) = refused {
            tracing::warn!(user = %user, source = %in_flow.remote, "message for an offline user not kept: {why}");
            return false;
        }
        // The user's bounds: the oldest go first, each with a log line.
        loop {
            let q = self.agent.mailbox.queues.get(&user);
            let (count, bytes) = q.map_or((0, 0), |q| (q.len(), q.iter().map(Mailbox::cost).sum()));
            if count < s.per_user && bytes + cost <= s.per_user_bytes {
                break;
            }
            let Some(oldest) = q.and_then(|q| q.front()).map(|o| o.id) else {
                break;
            };
            if let Some(o) = self.agent.mailbox.remove(&user, oldest) {
                tracing::warn!(user = %user, from = %o.from, "message box full: dropped the oldest waiting message");
                self.out.push(Action::DeleteMessage { id: o.id });
            }
        }
        if let Some(ctx) = self.proxy.ctx_mut(ctx_id) {
            // Answered when the store has it; nothing else answers meanwhile.
            ctx.final_sent = true;
        }
        let id = m.id;
        self.agent.mailbox.by_context.insert(ctx_id, m.id);
        self.agent
            .mailbox
            .storing
            .insert(m.id, (server, ctx_id, m.clone()));
        self.out.push(Action::StoreMessage(m));
        // A store that never answers must not hold the sender's request for ever.
        self.timers
            .push(now + STORE_WAIT, TimerRef::MailboxStore(id));
        true
    }

    /// The store's answer to an `Action::StoreMessage`: 202 to the sender when it has the
    /// message (which then waits, or goes at once to a phone registered meanwhile), 500 when
    /// it could not keep it.
    pub fn handle_message_stored(&mut self, now: Instant, id: u64, stored: bool) {
        let Some((server, ctx_id, m)) = self.agent.mailbox.storing.remove(&id) else {
            return;
        };
        let delivered_meanwhile = self.agent.mailbox.by_context.get(&ctx_id) != Some(&id);
        if stored {
            tracing::info!(user = %m.user, from = %m.from, bytes = m.body.len(), "message kept for an offline user");
            self.respond(
                now,
                server,
                202,
                "Accepted (Stored For Later Delivery)",
                &[],
                None,
            );
            if delivered_meanwhile {
                // A phone answered 2xx after all: it need not wait.
                self.out.push(Action::DeleteMessage { id });
            } else {
                let user = m.user.clone();
                self.agent.mailbox.add(m);
                self.arm_sweep(now);
                self.deliver_waiting(now, &user, None);
            }
        } else {
            tracing::error!(user = %m.user, from = %m.from, "message for an offline user could not be stored; the sender is told");
            self.respond(
                now,
                server,
                500,
                "Server Internal Error (Message Not Stored)",
                &[],
                None,
            );
        }
        self.agent.mailbox.by_context.remove(&ctx_id);
        self.drop_context_if_done(ctx_id);
    }

    /// A phone answered 2xx to a MESSAGE after it was kept (its answer came late).
    pub(crate) fn mailbox_late_answer(&mut self, ctx_id: CtxId) {
        let Some(id) = self.agent.mailbox.by_context.remove(&ctx_id) else {
            return;
        };
        if self.agent.mailbox.storing.contains_key(&id) {
            // Still on its way to the store: deleted once the store has it.
            return;
        }
        let user = self
            .agent
            .mailbox
            .queues
            .iter()
            .find(|(_, q)| q.iter().any(|m| m.id == id))
            .map(|(u, _)| u.clone());
        if let Some(u) = user {
            self.agent.mailbox.remove(&u, id);
            self.out.push(Action::DeleteMessage { id });
        }
    }

    /// Sends the user's oldest waiting message to one of their phones, unless one is on its
    /// way already (one at a time keeps them in order).
    pub(crate) fn deliver_waiting(&mut self, now: Instant, user: &str, to: Option<&str>) {
        let mb = &self.agent.mailbox;
        if mb.delivering.values().any(|(u, _, _)| u == user) {
            return;
        }
        let Some(m) = mb.queues.get(user).and_then(|q| q.front()).cloned() else {
            return;
        };
        // The phone that just registered, if named (an older binding may be a silent one).
        let hops = self.contact_hops(user, now);
        let Some(hop) = hops
            .iter()
            .find(|h| to.is_some_and(|c| h.uri == c))
            .or(hops.first())
            .cloned()
        else {
            return;
        };
        let branch = format!("z9hG4bK{}", self.token());
        let tag = self.token();
        let call_id = format!("{}@{}", self.token(), self.cfg.domain);
        let to = self.aor_uri(user);
        let build = |core: &Core, flow: crate::Flow| {
            let mut w = Writer::request("MESSAGE", &hop.uri);
            w.header("Via", &core.via_for(flow, &branch));
            if !hop.route.is_empty() {
                let list: Vec<String> = hop.route.iter().map(|r| format!("<{r}>")).collect();
                w.header("Route", &list.join(", "));
            }
            w.header("Max-Forwards", "70");
            w.header_fmt("From", format_args!("{};tag={tag}", m.from));
            w.header_fmt("To", format_args!("<{to}>"));
            w.header("Call-ID", &call_id);
            w.header("CSeq", "1 MESSAGE");
            w.header("Date", &m.date);
            w.finish(Some(&m.content_type), &m.body)
        };
        let data = build(self, hop.flow);
        // RFC 3261 §18.1.1: too big for UDP, it goes over TCP to the same phone (and over
        // UDP after all if the phone takes no TCP).
        let tcp = self
            .listener_for(crate::Transport::Tcp, &hop.flow.remote)
            .filter(|_| hop.flow.transport == crate::Transport::Udp && data.len() > 1300)
            .map(|l| crate::Flow {
                transport: crate::Transport::Tcp,
                local: l.addr,
                remote: hop.flow.remote,
                conn: None,
            });
        let id = match tcp {
            Some(tcp) => {
                let tcp_data = build(self, tcp);
                let id = self.send_request(now, tcp, &branch, "MESSAGE", tcp_data);
                if let Some(ct) = self.tx.client_mut(id) {
                    ct.udp_fallback = Some((hop.flow, data));
                }
                id
            }
            None => self.send_request(now, hop.flow, &branch, "MESSAGE", data),
        };
        if self.tx.has_client(id) {
            tracing::debug!(user, message = m.id, "delivering a waiting message");
            let contact = hop.uri.clone();
            self.agent
                .mailbox
                .delivering
                .insert(id, (user.to_string(), m.id, contact));
        }
    }

    /// An answer to a delivery (false: not one). 2xx: the message is done, the next goes;
    /// anything else: it waits for the next registration.
    pub(crate) fn delivery_answered(&mut self, now: Instant, key: ClientTxId, status: u16) -> bool {
        let Some((user, id, contact)) = self.agent.mailbox.delivering.remove(&key) else {
            return false;
        };
        if (200..300).contains(&status) {
            if self.agent.mailbox.remove(&user, id).is_some() {
                tracing::info!(user = %user, "waiting message delivered");
                self.out.push(Action::DeleteMessage { id });
            }
            // The next one to the same phone: it is there.
            self.deliver_waiting(now, &user, Some(&contact));
        } else {
            tracing::info!(user = %user, status, "waiting message refused by the phone; it waits for the next registration");
        }
        true
    }

    /// A delivery got no answer: the message waits for the next registration.
    pub(crate) fn delivery_failed(&mut self, key: ClientTxId) {
        if let Some((user, _, _)) = self.agent.mailbox.delivering.remove(&key) {
            tracing::info!(user = %user, "waiting message not delivered (no answer); it waits for the next registration");
        }
    }

    fn arm_sweep(&mut self, now: Instant) {
        if !self.agent.mailbox.sweeping && !self.agent.mailbox.queues.is_empty() {
            self.agent.mailbox.sweeping = true;
            self.timers
                .push(now + Duration::from_secs(3600), TimerRef::MailboxSweep);
        }
    }

    /// Hourly: messages older than `max_age_days` are dropped, each logged.
    pub(crate) fn mailbox_sweep(&mut self, now: Instant) {
        self.agent.mailbox.sweeping = false;
        let oldest_ok = self
            .unix(now)
            .saturating_sub(self.agent.mailbox.settings.max_age_days * 86400);
        let old: Vec<(String, u64)> = self
            .agent
            .mailbox
            .queues
            .iter()
            .flat_map(|(u, q)| {
                q.iter()
                    .filter(|m| m.stored_at < oldest_ok)
                    .map(move |m| (u.clone(), m.id))
            })
            .collect();
        for (user, id) in old {
            if let Some(m) = self.agent.mailbox.remove(&user, id) {
                tracing::warn!(user = %user, from = %m.from, "waiting message too old: dropped");
                self.out.push(Action::DeleteMessage { id });
            }
        }
        self.arm_sweep(now);
    }
}
