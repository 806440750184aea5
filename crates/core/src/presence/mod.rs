//! Presence and busy lamps: the server is the presence agent of its users (RFC 3856,
//! 6665). It owns the subscriptions watchers made (to `presence` and to the `dialog` package
//! of RFC 4235), what devices published (RFC 3903), and the bounds on both. The state it
//! reports is composed in `serve.rs` from publications, registrations, calls in progress and
//! do-not-disturb; the documents are written and read by `pidf.rs`.

mod calls;
pub mod pidf;
mod serve;

pub(crate) use serve::Asker;

use crate::{ClientTxId, Flow};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// The `[presence]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// Serve `presence` and `dialog` subscriptions and PUBLISH for local users.
    pub enabled: bool,
    /// Subscriptions in all; past it new ones get 503.
    pub max_subscriptions: usize,
    /// Subscriptions one watcher may hold; past it, 403.
    pub per_watcher: usize,
    /// Subscriptions one source (an address, an IPv6 /64) may hold, trusted networks
    /// aside; past it, 503. A watcher's name is only what its From says.
    pub per_source: usize,
    /// Shorter subscriptions get 423 (Interval Too Brief).
    pub min_expires: u32,
    /// Longer subscriptions are shortened to this.
    pub max_expires: u32,
    /// Milliseconds at least between two NOTIFYs of one subscription (changes in between
    /// are sent together).
    pub notify_interval_ms: u64,
    /// Watchers of other domains each user lets see their presence: user -> watcher
    /// addresses (`bob@example.net`, or `*@example.net` for a whole domain).
    pub allow: HashMap<String, Vec<String>>,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            enabled: true,
            max_subscriptions: 100_000,
            per_watcher: 200,
            per_source: 1000,
            min_expires: 60,
            max_expires: 3600,
            notify_interval_ms: 1000,
            allow: HashMap::new(),
        }
    }
}

/// The event packages served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Package {
    Presence,
    Dialog,
}

impl Package {
    pub(crate) fn parse(event: &str) -> Option<Package> {
        let name = event.split(';').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("presence") {
            Some(Package::Presence)
        } else if name.eq_ignore_ascii_case("dialog") {
            Some(Package::Dialog)
        } else {
            None
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Package::Presence => "presence",
            Package::Dialog => "dialog",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Package::Presence => "application/pidf+xml",
            Package::Dialog => "application/dialog-info+xml",
        }
    }
}

/// The dialog a subscription lives in, as the notifier (UAS) sees it.
#[derive(Clone, Debug)]
pub(crate) struct SubDialog {
    call_id: String,
    local_tag: String,
    /// The watcher's From header value, without its tag.
    remote_uri: String,
    remote_tag: String,
    /// Where NOTIFYs go: the watcher's Contact.
    contact: String,
    /// The route set (the SUBSCRIBE's Record-Route).
    route: Vec<String>,
    /// The flow the SUBSCRIBE came on (the watcher's NAT, its connection).
    flow: Flow,
    cseq: u32,
}

/// One watcher's subscription.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    package: Package,
    /// The user watched (their key in the user table); None: nobody (an unknown name, for
    /// a watcher who must not learn that).
    target: Option<String>,
    /// The watched URI as the watcher named it.
    entity: String,
    /// The watcher (`user@domain`).
    watcher: String,
    /// May see the real state; otherwise a neutral document.
    allowed: bool,
    dialog: SubDialog,
    expires: Instant,
    version: u32,
    /// The last body sent, and when the next NOTIFY may go.
    last: Option<u64>,
    next_at: Instant,
}

/// What a device published (RFC 3903).
#[derive(Clone, Debug)]
pub(crate) struct Publication {
    etag: String,
    expires: Instant,
    status: pidf::Status,
}

/// Every subscription and publication.
#[derive(Default)]
pub(crate) struct Presence {
    settings: PresenceSettings,
    subs: HashMap<u64, Subscription>,
    /// (Call-ID, our tag) -> subscription: in-dialog SUBSCRIBEs find theirs.
    by_dialog: HashMap<(String, String), u64>,
    /// Watched user -> subscriptions: a change looks at its watchers only.
    by_target: HashMap<String, Vec<u64>>,
    /// Subscriptions each watcher holds (its bound is checked without a scan).
    per_watcher: HashMap<String, usize>,
    /// Subscriptions each source holds.
    per_source: HashMap<std::net::IpAddr, usize>,
    /// What each user's devices published.
    published: HashMap<String, Vec<Publication>>,
    /// NOTIFYs in flight -> their subscription.
    notifying: HashMap<ClientTxId, u64>,
    /// Each user's calls (ringing, answered, just ended).
    calls: HashMap<String, Vec<calls::UserCall>>,
    /// Call-ID -> the users in it.
    by_call: HashMap<String, std::collections::BTreeSet<String>>,
    /// Whether the expiry sweep is armed.
    sweeping: bool,
}

/// What `hedgewitch presence` shows of one subscription.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionView {
    /// The watcher.
    pub watcher: String,
    /// Whom they watch.
    pub entity: String,
    /// `presence` or `dialog`.
    pub event: String,
    /// Whether they see the real state.
    pub allowed: bool,
    /// Seconds left.
    pub expires_in: u64,
}

impl Presence {
    /// Subscriptions watching `user` in `package`.
    fn watching(&self, user: &str, package: Package) -> Vec<u64> {
        self.by_target
            .get(user)
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|id| self.subs.get(id).is_some_and(|s| s.package == package))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn insert(&mut self, id: u64, s: Subscription) {
        self.by_dialog
            .insert((s.dialog.call_id.clone(), s.dialog.local_tag.clone()), id);
        if let Some(t) = &s.target {
            self.by_target.entry(t.clone()).or_default().push(id);
        }
        *self.per_watcher.entry(s.watcher.clone()).or_default() += 1;
        *self
            .per_source
            .entry(crate::flow::source_key(s.dialog.flow.remote.ip()))
            .or_default() += 1;
        self.subs.insert(id, s);
    }

    fn remove(&mut self, id: u64) {
        let Some(s) = self.subs.remove(&id) else {
            return;
        };
        self.by_dialog
            .remove(&(s.dialog.call_id, s.dialog.local_tag));
        let src = crate::flow::source_key(s.dialog.flow.remote.ip());
        if let Some(n) = self.per_source.get_mut(&src) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&src);
            }
        }
        if let Some(n) = self.per_watcher.get_mut(&s.watcher) {
            *n -= 1;
            if *n == 0 {
                self.per_watcher.remove(&s.watcher);
            }
        }
        if let Some(t) = s.target {
            if let Some(ids) = self.by_target.get_mut(&t) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_target.remove(&t);
                }
            }
        }
    }

    /// Whether anyone watches anything (calls are followed only then).
    pub(crate) fn watched(&self) -> bool {
        !self.subs.is_empty()
    }

    /// Subscriptions `watcher` holds.
    fn held_by(&self, watcher: &str) -> usize {
        self.per_watcher.get(watcher).copied().unwrap_or(0)
    }

    /// Subscriptions made from `ip`'s source.
    fn held_from(&self, ip: std::net::IpAddr) -> usize {
        self.per_source
            .get(&crate::flow::source_key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Whether `watcher` (`user@domain`) may see `user`'s presence from another domain.
    fn allows(&self, user: &str, watcher: &str) -> bool {
        let domain = watcher.rsplit_once('@').map_or("", |(_, d)| d);
        self.settings.allow.get(user).is_some_and(|list| {
            list.iter().any(|w| {
                w.eq_ignore_ascii_case(watcher)
                    || w.strip_prefix("*@")
                        .is_some_and(|d| d.eq_ignore_ascii_case(domain))
            })
        })
    }
}
