//! The presence agent at work: SUBSCRIBE (new, refreshed, ended) and PUBLISH for local
//! users answered here, NOTIFYs sent at once and on every change (at most one per
//! `notify_interval_ms`), expiry, and the state reported: what devices published (with
//! nothing published, `open` while a phone is registered), `on-the-phone` during an answered
//! call, `busy` in do-not-disturb. Watchers of the same domain see
//! it; watchers of other domains only when the user allows them, and otherwise get a
//! neutral document, the same whether the user exists, is registered or not.

use super::pidf::{self, Activity, Status};
use super::{Package, PresenceSettings, Publication, SubDialog, Subscription, SubscriptionView};
use crate::handles::ServerTxId;
use crate::plan::Target;
use crate::timers::TimerRef;
use crate::{ClientTxId, Core, Flow};
use sip::build::Writer;
use sip::grammar::name_addr_list;
use sip::header::HeaderName;
use sip::message::{Message, Method};
use std::time::{Duration, Instant};

/// How often expired subscriptions and publications are looked for.
const SWEEP: Duration = Duration::from_secs(10);

/// Who asks: a local user who proved it, or someone of another domain.
pub(crate) enum Asker<'a> {
    Local(&'a str),
    Outside,
}

impl Core {
    /// Takes the `[presence]` settings (start, reload).
    pub fn set_presence(&mut self, settings: PresenceSettings) {
        self.agent.presence.settings = settings;
    }

    /// The subscriptions, for `hedgewitch presence`.
    pub fn presence_subscriptions(&self, now: Instant) -> Vec<SubscriptionView> {
        let mut v: Vec<SubscriptionView> = self
            .agent
            .presence
            .subs
            .values()
            .map(|s| SubscriptionView {
                watcher: s.watcher.clone(),
                entity: s.entity.clone(),
                event: s.package.as_str().to_string(),
                allowed: s.allowed,
                expires_in: s.expires.saturating_duration_since(now).as_secs(),
            })
            .collect();
        v.sort_by(|a, b| (&a.entity, &a.watcher).cmp(&(&b.entity, &b.watcher)));
        v
    }

    /// An in-dialog SUBSCRIBE of one of our subscriptions (a refresh, or Expires: 0 to
    /// end it). False when it is not ours.
    pub(crate) fn presence_in_dialog(
        &mut self,
        now: Instant,
        key: ServerTxId,
        msg: &Message,
    ) -> bool {
        if msg.method() != Some(Method::Subscribe) {
            return false;
        }
        let Some(tag) = msg.to().and_then(|t| t.tag().map(str::to_string)) else {
            return false;
        };
        let dk = (msg.call_id().to_string(), tag);
        let Some(&id) = self.agent.presence.by_dialog.get(&dk) else {
            return false;
        };
        let expires = self.sub_expires(msg);
        if expires != 0 && expires < self.agent.presence.settings.min_expires {
            let h = [(
                "Min-Expires",
                self.agent.presence.settings.min_expires.to_string(),
            )];
            self.answer_and_forget(key, 423, "Interval Too Brief", &h);
            return true;
        }
        let h = [("Expires", expires.to_string())];
        self.answer_and_forget(key, 200, "OK", &h);
        if expires == 0 {
            self.notify(now, id, Some("timeout"));
        } else if let Some(s) = self.agent.presence.subs.get_mut(&id) {
            s.expires = now + Duration::from_secs(u64::from(expires));
            // RFC 6665 §4.2.1.2: a refresh is answered with the current state, at once.
            s.last = None;
            s.next_at = now;
            self.notify(now, id, None);
        }
        true
    }

    /// The Expires a SUBSCRIBE asks for, within the bounds (0 kept: it ends).
    fn sub_expires(&self, msg: &Message) -> u32 {
        let s = &self.agent.presence.settings;
        match msg
            .value(HeaderName::Expires)
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            Some(0) => 0,
            Some(e) => e.min(s.max_expires),
            None => s.max_expires,
        }
    }

    /// A new SUBSCRIBE or a PUBLISH for the `presence` or `dialog` package of a URI of
    /// ours (`callee`: its user part). False when it is not one (it is routed as usual).
    pub(crate) fn presence_request(
        &mut self,
        now: Instant,
        key: ServerTxId,
        msg: &Message,
        flow: Flow,
        callee: &str,
        asker: Asker<'_>,
    ) -> bool {
        let method = msg.method();
        if !self.agent.presence.settings.enabled
            || !matches!(method, Some(Method::Subscribe | Method::Publish))
        {
            return false;
        }
        let package = msg.value(HeaderName::Event).and_then(Package::parse);
        let Some(package) = package else {
            if method == Some(Method::Publish) {
                self.answer_and_forget(
                    key,
                    489,
                    "Bad Event",
                    &[("Allow-Events", "presence, dialog".into())],
                );
                return true;
            }
            // Other event packages (message summaries...) are the phones' business.
            return false;
        };
        let target = match self.plan.lookup(callee) {
            Some(Target::User(u)) => Some(u),
            _ => None,
        };
        if method == Some(Method::Publish) {
            self.publish(now, key, msg, package, target.as_deref(), &asker);
        } else {
            self.subscribe(now, key, msg, flow, package, target, &asker);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &mut self,
        now: Instant,
        key: ServerTxId,
        msg: &Message,
        flow: Flow,
        package: Package,
        target: Option<String>,
        asker: &Asker<'_>,
    ) {
        let from = msg.from();
        let watcher = from
            .as_ref()
            .map(|f| {
                let u = &f.uri;
                format!("{}@{}", u.user_unescaped().unwrap_or_default(), u.host)
            })
            .unwrap_or_default();
        let allowed = match asker {
            Asker::Local(_) => target.is_some(),
            Asker::Outside => target
                .as_deref()
                .is_some_and(|t| self.agent.presence.allows(t, &watcher)),
        };
        if let (Asker::Local(_), None) = (asker, &target) {
            // A local user may know who exists (the directory says so anyway).
            self.answer_and_forget(key, 404, "Not Found", &[]);
            return;
        }
        let s = &self.agent.presence.settings;
        let expires = self.sub_expires(msg);
        if expires != 0 && expires < s.min_expires {
            let h = [("Min-Expires", s.min_expires.to_string())];
            self.answer_and_forget(key, 423, "Interval Too Brief", &h);
            return;
        }
        let p = &self.agent.presence;
        if p.subs.len() >= p.settings.max_subscriptions {
            tracing::warn!(watcher = %watcher, source = %flow.remote, "subscription refused: the server holds presence.max_subscriptions");
            self.answer_and_forget(
                key,
                503,
                "Service Unavailable",
                &[("Retry-After", "60".into())],
            );
            return;
        }
        let trusted = self.auth.guard().is_trusted(flow.remote.ip());
        if !trusted && p.held_from(flow.remote.ip()) >= p.settings.per_source {
            tracing::warn!(watcher = %watcher, source = %flow.remote, "subscription refused: the source holds presence.per_source");
            self.answer_and_forget(
                key,
                503,
                "Service Unavailable",
                &[("Retry-After", "60".into())],
            );
            return;
        }
        if p.held_by(&watcher) >= p.settings.per_watcher {
            tracing::warn!(watcher = %watcher, source = %flow.remote, "subscription refused: the watcher holds presence.per_watcher");
            self.answer_and_forget(key, 403, "Forbidden (Too Many Subscriptions)", &[]);
            return;
        }
        let (Some(from), Some(contact)) = (from, contact_of(msg)) else {
            self.answer_and_forget(key, 400, "Missing Contact", &[]);
            return;
        };
        let Some(local_tag) = self.to_tag_of(key) else {
            return;
        };
        let raw = from.raw;
        let remote_uri = raw.find(";tag=").map_or(raw, |i| &raw[..i]).to_string();
        let dialog = SubDialog {
            call_id: msg.call_id().to_string(),
            local_tag,
            remote_uri,
            remote_tag: from.tag().unwrap_or("").to_string(),
            contact,
            route: msg
                .values(HeaderName::RecordRoute)
                .flat_map(name_addr_list)
                .filter_map(Result::ok)
                .map(|r| r.uri.raw.to_string())
                .collect(),
            flow,
            cseq: 0,
        };
        let entity = format!(
            "sip:{}",
            msg.uri_str()
                .trim_start_matches("sip:")
                .split(';')
                .next()
                .unwrap_or("")
        );
        let id = self.id();
        self.agent.presence.insert(
            id,
            Subscription {
                package,
                target,
                entity,
                watcher,
                allowed,
                dialog,
                expires: now + Duration::from_secs(u64::from(expires)),
                version: 0,
                last: None,
                next_at: now,
            },
        );
        self.answer_and_forget(
            key,
            200,
            "OK",
            &[
                ("Expires", expires.to_string()),
                ("Contact", self.notifier_contact(flow)),
            ],
        );
        // RFC 6665 §4.2.1.2: the current state at once (and a fetch ends with it).
        self.notify(now, id, (expires == 0).then_some("timeout"));
        self.arm_presence_sweep(now);
    }

    fn publish(
        &mut self,
        now: Instant,
        key: ServerTxId,
        msg: &Message,
        package: Package,
        target: Option<&str>,
        asker: &Asker<'_>,
    ) {
        // Only a user publishes their own presence.
        let user = match (asker, target) {
            (Asker::Local(me), Some(t)) if *me == t && package == Package::Presence => {
                t.to_string()
            }
            (Asker::Local(_), _) | (Asker::Outside, _) => {
                self.answer_and_forget(key, 403, "Forbidden", &[]);
                return;
            }
        };
        let expires = match msg
            .value(HeaderName::Expires)
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            Some(e) => e.min(self.agent.presence.settings.max_expires),
            None => 3600.min(self.agent.presence.settings.max_expires),
        };
        let if_match = msg
            .other_value("SIP-If-Match")
            .map(|v| v.trim().to_string());
        let list = self
            .agent
            .presence
            .published
            .entry(user.clone())
            .or_default();
        list.retain(|p| p.expires > now);
        let at = if_match
            .as_ref()
            .and_then(|m| list.iter().position(|p| &p.etag == m));
        if if_match.is_some() && at.is_none() {
            self.answer_and_forget(key, 412, "Conditional Request Failed", &[]);
            return;
        }
        if expires == 0 {
            if let Some(i) = at {
                list.remove(i);
            }
            self.answer_and_forget(key, 200, "OK", &[("Expires", "0".into())]);
            return self.presence_changed(now, &user);
        }
        let status = if msg.body().is_empty() {
            // A refresh keeps what was published.
            match at {
                Some(i) => list[i].status.clone(),
                None => {
                    self.answer_and_forget(key, 400, "Bad Request (No Body)", &[]);
                    return;
                }
            }
        } else {
            match pidf::parse(msg.body()) {
                Some(s) => s,
                None => {
                    self.answer_and_forget(
                        key,
                        415,
                        "Unsupported Media Type",
                        &[("Accept", "application/pidf+xml".into())],
                    );
                    return;
                }
            }
        };
        let etag = self.token();
        let list = self
            .agent
            .presence
            .published
            .entry(user.clone())
            .or_default();
        if let Some(i) = at {
            list.remove(i);
        }
        // A few devices per user; the oldest publication goes past it.
        if list.len() >= 16 {
            list.remove(0);
        }
        list.push(Publication {
            etag: etag.clone(),
            expires: now + Duration::from_secs(u64::from(expires)),
            status,
        });
        self.answer_and_forget(
            key,
            200,
            "OK",
            &[("SIP-ETag", etag), ("Expires", expires.to_string())],
        );
        self.arm_presence_sweep(now);
        self.presence_changed(now, &user);
    }

    /// Our Contact in subscription dialogs: the listener the SUBSCRIBE came in on.
    fn notifier_contact(&self, flow: Flow) -> String {
        let host = self
            .listener_for(flow.transport, &flow.remote)
            .map_or(flow.local.ip(), |l| l.host);
        let t = if flow.transport.is_reliable() {
            format!(";transport={}", flow.transport.as_str())
        } else {
            String::new()
        };
        format!(
            "<sip:{}:{}{t}>",
            crate::proxy::bracket(host),
            flow.local.port()
        )
    }

    /// What a user's presence is now: published by their devices, open while a phone is
    /// registered, busy in do-not-disturb.
    pub(crate) fn presence_of(&self, now: Instant, user: &str) -> Status {
        let published: Vec<&Publication> = self
            .agent
            .presence
            .published
            .get(user)
            .map(|l| l.iter().filter(|p| p.expires > now).collect())
            .unwrap_or_default();
        let registered = !self.location.lookup(user, now).is_empty();
        // What the devices say wins; with nothing published, a registration means online.
        let mut st = Status {
            open: if published.is_empty() {
                registered
            } else {
                published.iter().any(|p| p.status.open)
            },
            activity: published.iter().filter_map(|p| p.status.activity).max(),
            note: published.iter().rev().find_map(|p| p.status.note.clone()),
        };
        if self.on_the_phone(user) {
            st.activity = Some(Activity::OnThePhone);
            st.note = Some("On the phone".into());
        } else if self.plan.is_dnd(user) {
            st.activity = Some(
                st.activity
                    .map_or(Activity::Busy, |a| a.max(Activity::Busy)),
            );
            st.note = Some("Do not disturb".into());
        }
        st
    }

    /// Something of `user` changed (a registration, a publication, do-not-disturb): their
    /// watchers hear of it.
    pub(crate) fn presence_changed(&mut self, now: Instant, user: &str) {
        if self.agent.presence.subs.is_empty() {
            return;
        }
        for id in self.agent.presence.watching(user, Package::Presence) {
            self.notify(now, id, None);
        }
    }

    /// Sends the subscription its current state, unless it is what was sent last; within
    /// `notify_interval_ms` of the last NOTIFY it waits (changes meanwhile go together).
    /// `end`: the subscription ends, with this reason.
    pub(crate) fn notify(&mut self, now: Instant, id: u64, end: Option<&str>) {
        let Some(s) = self.agent.presence.subs.get(&id) else {
            return;
        };
        let body = match (s.package, &s.target, s.allowed) {
            (Package::Presence, Some(user), true) => {
                pidf::compose(&s.entity, &self.presence_of(now, user))
            }
            (Package::Presence, _, _) => pidf::compose(&s.entity, &Status::default()),
            (Package::Dialog, Some(user), true) => {
                pidf::dialog_info(&s.entity, s.version + 1, &self.dialogs_of(now, user))
            }
            (Package::Dialog, _, _) => pidf::dialog_info(&s.entity, s.version + 1, &[]),
        };
        // What was sent last is remembered by a hash: 8 bytes, not a document, per
        // subscription (100,000 of them).
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            h.finish()
        };
        if end.is_none() && s.last == Some(digest) {
            return;
        }
        if end.is_none() && s.next_at > now {
            // Sent soon, with whatever holds then.
            self.timers.push(s.next_at, TimerRef::PresenceNotify(id));
            return;
        }
        let interval = Duration::from_millis(self.agent.presence.settings.notify_interval_ms);
        let branch = format!("z9hG4bK{}", self.token());
        let Some(s) = self.agent.presence.subs.get_mut(&id) else {
            return;
        };
        s.version += 1;
        s.dialog.cseq += 1;
        s.last = Some(digest);
        s.next_at = now + interval;
        let state = match end {
            Some(reason) => format!("terminated;reason={reason}"),
            None => format!(
                "active;expires={}",
                s.expires.saturating_duration_since(now).as_secs()
            ),
        };
        let s = s.clone();
        let d = &s.dialog;
        let mut w = Writer::request("NOTIFY", &d.contact);
        w.header("Via", &self.via_for(d.flow, &branch));
        if !d.route.is_empty() {
            let list: Vec<String> = d.route.iter().map(|r| format!("<{r}>")).collect();
            w.header("Route", &list.join(", "));
        }
        w.header("Max-Forwards", "70");
        w.header_fmt("From", format_args!("<{}>;tag={}", s.entity, d.local_tag));
        w.header_fmt("To", format_args!("{};tag={}", d.remote_uri, d.remote_tag));
        w.header("Call-ID", &d.call_id);
        w.header_fmt("CSeq", format_args!("{} NOTIFY", d.cseq));
        w.header("Contact", &self.notifier_contact(d.flow));
        w.header("Event", s.package.as_str());
        w.header("Subscription-State", &state);
        let data = w.finish(Some(s.package.content_type()), body.as_bytes());
        let key = self.send_request(now, d.flow, &branch, "NOTIFY", data);
        if self.tx.has_client(key) {
            self.agent.presence.notifying.insert(key, id);
        }
        if end.is_some() {
            self.drop_subscription(id);
        }
    }

    fn drop_subscription(&mut self, id: u64) {
        self.agent.presence.remove(id);
    }

    /// The watcher's answer to a NOTIFY (false: not one). 481 or another error ends the
    /// subscription (RFC 6665 §4.2.2).
    pub(crate) fn notify_answered(&mut self, key: ClientTxId, status: u16) -> bool {
        let Some(id) = self.agent.presence.notifying.remove(&key) else {
            return false;
        };
        if status >= 300 {
            tracing::debug!(status, "watcher refused a NOTIFY; the subscription ends");
            self.drop_subscription(id);
        }
        true
    }

    /// A NOTIFY got no answer: the watcher is gone, and so is its subscription.
    pub(crate) fn notify_failed(&mut self, key: ClientTxId) {
        if let Some(id) = self.agent.presence.notifying.remove(&key) {
            self.drop_subscription(id);
        }
    }

    fn arm_presence_sweep(&mut self, now: Instant) {
        if !self.agent.presence.sweeping {
            self.agent.presence.sweeping = true;
            self.timers.push(now + SWEEP, TimerRef::PresenceSweep);
        }
    }

    /// Subscriptions past their time end (`timeout`); publications past theirs go.
    pub(crate) fn presence_sweep(&mut self, now: Instant) {
        self.agent.presence.sweeping = false;
        let over: Vec<u64> = self
            .agent
            .presence
            .subs
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            self.notify(now, id, Some("timeout"));
        }
        let mut changed = vec![];
        for (user, list) in self.agent.presence.published.iter_mut() {
            let before = list.len();
            list.retain(|p| p.expires > now);
            if list.len() != before {
                changed.push(user.clone());
            }
        }
        self.agent.presence.published.retain(|_, l| !l.is_empty());
        for u in changed {
            self.presence_changed(now, &u);
        }
        if !self.agent.presence.subs.is_empty() || !self.agent.presence.published.is_empty() {
            self.arm_presence_sweep(now);
        }
    }
}

/// The URI of a request's Contact.
fn contact_of(msg: &Message) -> Option<String> {
    let v = msg.value(HeaderName::Contact)?;
    let c = name_addr_list(v).next()?.ok()?;
    Some(c.uri.raw.to_string())
}
