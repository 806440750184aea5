//! The guard: who may talk to us at all. It counts failed logins per source and per account,
//! bans a source that fails too often (its messages are dropped unanswered for a time that
//! doubles with each repeat offence), and shields an account under a guessing attack from
//! addresses it has never been used from, so that its own phones keep working while guesses
//! from everywhere else are refused unchecked. Bounded in entries whatever senders do.
//!
//! A source is an IPv4 address, or the /64 an IPv6 address is in: one host's usual share, so
//! that an attacker cannot walk through the addresses of its own network.

use crate::admission::{Admission, AdmissionSettings, Kind};
use crate::flow::source_key;
use crate::fraud::{Fraud, OutsideLimits, Verdict};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// When failed logins ban a source, and whom the guard never bans.
#[derive(Clone, Debug)]
pub struct GuardSettings {
    /// Failed logins from one source within `window` that ban it (0: never banned).
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long a first ban lasts; each repeat offence doubles it.
    pub ban_time: Duration,
    /// The longest ban.
    pub max_ban_time: Duration,
    /// Failed logins on one account within `window`, from any sources, after which only the
    /// addresses its phones are registered from may try it (0: no such limit).
    pub account_failures: u32,
    /// Networks never counted, limited or banned (an office's own LAN, a monitoring host).
    pub trusted: Vec<(IpAddr, u8)>,
    /// Requests per second per source.
    pub admission: AdmissionSettings,
    /// What local users may send to other domains per minute.
    pub outside: OutsideLimits,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            max_failures: 5,
            window: Duration::from_secs(600),
            ban_time: Duration::from_secs(900),
            max_ban_time: Duration::from_secs(86_400),
            account_failures: 30,
            trusted: vec![],
            admission: AdmissionSettings::default(),
            outside: OutsideLimits::default(),
        }
    }
}

/// Sources remembered at most (a failure or a ban each); about 64 bytes apiece.
const MAX_SOURCES: usize = 100_000;

/// What the guard remembers of a source.
struct Source {
    failures: u32,
    /// When the current window of failures began.
    since: Instant,
    banned_until: Option<Instant>,
    /// Bans so far: each one lasts twice the one before.
    offences: u32,
}

/// What the guard remembers of an account (only existing accounts are counted).
struct Account {
    failures: u32,
    since: Instant,
}

/// A ban just imposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ban {
    /// The source banned (an IPv6 one as its /64's first address).
    pub(crate) source: IpAddr,
    /// How long it lasts.
    pub(crate) length: Duration,
    /// Which ban of this source it is (1 for the first).
    pub(crate) offence: u32,
}

/// A ban in force, for `hedgewitch bans`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BanView {
    /// The source: an IPv4 address, or an IPv6 /64 (`2001:db8::/64`).
    pub source: String,
    /// Seconds until the ban ends.
    pub remaining_secs: u64,
    /// Which ban of this source it is (1 for the first).
    pub offence: u32,
}

/// Failed logins per source and per account, and the bans they led to.
#[derive(Default)]
pub(crate) struct Guard {
    settings: GuardSettings,
    sources: HashMap<IpAddr, Source>,
    accounts: HashMap<String, Account>,
    /// Sources that proved they receive what we send them, and when they last did.
    verified: HashMap<IpAddr, Instant>,
    /// Requests per second per source.
    admission: Admission,
    /// What local users send to other domains.
    fraud: Fraud,
    /// The edge said the event loop falls behind: until then new dialogs from sources never
    /// verified are refused.
    overloaded_until: Option<Instant>,
}

/// How long one report of overload lasts.
const OVERLOAD_HOLD: Duration = Duration::from_secs(2);

/// Verified sources remembered at most; past it the oldest hour's are forgotten first.
const MAX_VERIFIED: usize = 65_536;

fn in_network(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let p = u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let p = u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Counts one failure in a window that restarts once `window` has passed.
fn count(failures: &mut u32, since: &mut Instant, now: Instant, window: Duration) -> u32 {
    if now.saturating_duration_since(*since) >= window {
        *failures = 0;
        *since = now;
    }
    *failures = failures.saturating_add(1);
    *failures
}

impl Guard {
    /// Takes new settings (start, reload); bans in force stay.
    pub(crate) fn set_settings(&mut self, settings: GuardSettings) {
        self.admission.set_settings(settings.admission.clone());
        self.fraud.set_limits(settings.outside.clone());
        self.settings = settings;
    }

    /// The event loop falls behind (reported by the edge).
    pub(crate) fn overloaded_now(&mut self, now: Instant) {
        self.overloaded_until = Some(now + OVERLOAD_HOLD);
    }

    /// Whether a new dialog from `ip` is shed now: the server is overloaded and `ip` never
    /// proved itself (registered phones and logged-in users keep their service).
    pub(crate) fn sheds(&self, now: Instant, ip: IpAddr) -> bool {
        self.overloaded_until.is_some_and(|u| now < u)
            && !self.is_verified(ip)
            && !self.is_trusted(ip)
    }

    /// `user` sends a call (`call`) or another request to another domain from `ip`.
    pub(crate) fn going_out(
        &mut self,
        now: Instant,
        user: &str,
        call: bool,
        ip: IpAddr,
    ) -> Verdict {
        self.fraud.going_out(now, user, call, ip)
    }

    /// Whether a request of `kind` from `ip` is within its source's rate (trusted networks
    /// always are).
    pub(crate) fn admit(&mut self, now: Instant, ip: IpAddr, kind: Kind) -> bool {
        self.admission.admit(now, ip, kind) || self.is_trusted(ip)
    }

    /// Whether `ip` is in a trusted network.
    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.settings
            .trusted
            .iter()
            .any(|n| in_network(ip, *n) || in_network(source_key(ip), *n))
    }

    /// Whether messages from `ip` are to be dropped now.
    pub(crate) fn is_banned(&self, now: Instant, ip: IpAddr) -> bool {
        // The common case, no failure anywhere, costs no hashing.
        if self.sources.is_empty() {
            return false;
        }
        self.sources
            .get(&source_key(ip))
            .and_then(|s| s.banned_until)
            .is_some_and(|until| now < until)
    }

    /// A failed login from `ip`, on `account` when that account exists. Returns the ban it
    /// leads to, if it is the one too many.
    pub(crate) fn failed(
        &mut self,
        now: Instant,
        ip: IpAddr,
        account: Option<&str>,
    ) -> Option<Ban> {
        if self.is_trusted(ip) {
            return None;
        }
        let s = &self.settings;
        if let Some(name) = account.filter(|_| s.account_failures > 0) {
            // Bounded by the user table: only existing accounts get here.
            let a = self.accounts.entry(name.to_string()).or_insert(Account {
                failures: 0,
                since: now,
            });
            count(&mut a.failures, &mut a.since, now, s.window);
        }
        if s.max_failures == 0 {
            return None;
        }
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.forget_idle(now);
            if self.sources.len() >= MAX_SOURCES {
                return None;
            }
        }
        let s = &self.settings;
        let src = self.sources.entry(key).or_insert(Source {
            failures: 0,
            since: now,
            banned_until: None,
            offences: 0,
        });
        if count(&mut src.failures, &mut src.since, now, s.window) < s.max_failures {
            return None;
        }
        src.failures = 0;
        src.offences = src.offences.saturating_add(1);
        let doubling = 1u32.checked_shl(src.offences - 1).unwrap_or(u32::MAX);
        let length = s
            .ban_time
            .checked_mul(doubling)
            .unwrap_or(s.max_ban_time)
            .min(s.max_ban_time);
        src.banned_until = Some(now + length);
        Some(Ban {
            source: key,
            length,
            offence: src.offences,
        })
    }

    /// `ip` answered a challenge or ACKed an answer: it is where it says it is.
    pub(crate) fn mark_verified(&mut self, now: Instant, ip: IpAddr) {
        if self.verified.len() >= MAX_VERIFIED && !self.verified.contains_key(&ip) {
            let hour = Duration::from_secs(3600);
            self.verified
                .retain(|_, at| now.saturating_duration_since(*at) < hour);
            if self.verified.len() >= MAX_VERIFIED {
                self.verified.clear();
            }
        }
        self.verified.insert(ip, now);
    }

    /// Whether `ip` ever proved it receives what we send it (as far as memory goes).
    pub(crate) fn is_verified(&self, ip: IpAddr) -> bool {
        self.verified.contains_key(&ip)
    }

    /// Whether `account` has failed so often lately that only its known addresses may try.
    pub(crate) fn account_under_attack(&self, now: Instant, account: &str) -> bool {
        let limit = self.settings.account_failures;
        limit > 0
            && self.accounts.get(account).is_some_and(|a| {
                a.failures >= limit && now.saturating_duration_since(a.since) < self.settings.window
            })
    }

    /// Drops what no longer matters: sources neither banned nor failing lately (a source
    /// quiet for the longest ban forgets its offences too), accounts whose window is over.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        let (window, longest) = (self.settings.window, self.settings.max_ban_time);
        self.sources.retain(|_, s| {
            let banned = s.banned_until.is_some_and(|u| now < u);
            let recent = now.saturating_duration_since(s.since) < window.max(longest);
            banned || recent
        });
        self.accounts
            .retain(|_, a| now.saturating_duration_since(a.since) < window);
    }

    /// The bans in force, longest remaining first.
    pub(crate) fn bans(&self, now: Instant) -> Vec<BanView> {
        let mut out: Vec<BanView> = self
            .sources
            .iter()
            .filter_map(|(ip, s)| {
                let until = s.banned_until.filter(|u| now < *u)?;
                Some(BanView {
                    source: match ip {
                        IpAddr::V4(_) => ip.to_string(),
                        IpAddr::V6(_) => format!("{ip}/64"),
                    },
                    remaining_secs: until.saturating_duration_since(now).as_secs().max(1),
                    offence: s.offences,
                })
            })
            .collect();
        out.sort_by_key(|b| std::cmp::Reverse(b.remaining_secs));
        out
    }

    /// Lifts the ban on the source `ip` is in, and forgets its failures. False when it was
    /// not banned.
    pub(crate) fn lift(&mut self, now: Instant, ip: IpAddr) -> bool {
        let key = source_key(ip);
        let banned = self.is_banned(now, key);
        self.sources.remove(&key);
        banned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_fifth_failure_bans_and_each_repeat_doubles_the_ban() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        for i in 1..5 {
            assert_eq!(g.failed(t0, a, None), None, "failure {i}");
            assert!(!g.is_banned(t0, a));
        }
        let ban = g.failed(t0, a, None).expect("the fifth bans");
        assert_eq!((ban.length, ban.offence), (Duration::from_secs(900), 1));
        assert!(g.is_banned(t0 + Duration::from_secs(899), a));
        assert!(!g.is_banned(t0, ip("192.0.2.8")), "only that source");
        let t1 = t0 + Duration::from_secs(900);
        assert!(!g.is_banned(t1, a), "over");
        for _ in 1..5 {
            g.failed(t1, a, None);
        }
        let again = g.failed(t1, a, None).unwrap();
        assert_eq!(
            (again.length, again.offence),
            (Duration::from_secs(1800), 2)
        );
        assert_eq!(g.bans(t1).len(), 1);
        assert!(g.lift(t1, a));
        assert!(!g.is_banned(t1, a) && g.bans(t1).is_empty());
    }

    #[test]
    fn failures_far_apart_do_not_add_up_and_trusted_networks_are_never_banned() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        for i in 0..20u64 {
            assert_eq!(g.failed(t0 + Duration::from_secs(150 * i), a, None), None);
        }
        g.set_settings(GuardSettings {
            trusted: vec![(ip("10.0.0.0"), 8), (ip("2001:db8::"), 32)],
            ..GuardSettings::default()
        });
        for _ in 0..50 {
            assert_eq!(g.failed(t0, ip("10.1.2.3"), None), None);
            assert_eq!(g.failed(t0, ip("2001:db8::5"), None), None);
        }
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        for i in 1..=5 {
            g.failed(t0, ip(&format!("2001:db8:1:2::{i}")), None);
        }
        assert!(g.is_banned(t0, ip("2001:db8:1:2:ffff::1")));
        assert!(!g.is_banned(t0, ip("2001:db8:1:3::1")));
        assert_eq!(g.bans(t0)[0].source, "2001:db8:1:2::/64");
    }

    #[test]
    fn an_account_guessed_from_many_sources_is_shielded() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        for i in 0..29u8 {
            g.failed(t0, ip(&format!("198.51.100.{i}")), Some("alice"));
            assert!(!g.account_under_attack(t0, "alice"));
        }
        g.failed(t0, ip("198.51.100.200"), Some("alice"));
        assert!(g.account_under_attack(t0, "alice"));
        assert!(!g.account_under_attack(t0, "bob"));
        assert!(!g.account_under_attack(t0 + Duration::from_secs(600), "alice"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            g.failed(t0, IpAddr::V4(i.into()), None);
        }
        assert!(g.sources.len() <= MAX_SOURCES);
        g.forget_idle(t0 + Duration::from_secs(86_400));
        assert!(g.sources.is_empty());
    }
}
