//! Limits after a cracked password: what a local user may send to other domains. Each user
//! has a rate of calls and of messages out of the domain per minute (toll fraud goes out in
//! bursts), and the addresses they called out from lately: a call out from a new one is worth
//! a line in the log, since that is what a stolen account looks like. Bounded by the user
//! table (only authenticated users get here), and per user by `KNOWN_ADDRESSES`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What local users may send to other domains.
#[derive(Clone, Debug, PartialEq)]
pub struct OutsideLimits {
    /// Calls (INVITE) to other domains per user per minute; 0: no limit.
    pub calls_per_minute: u32,
    /// Other requests (MESSAGE...) to other domains per user per minute; 0: no limit.
    pub messages_per_minute: u32,
}

impl Default for OutsideLimits {
    fn default() -> Self {
        OutsideLimits {
            calls_per_minute: 10,
            messages_per_minute: 60,
        }
    }
}

/// Addresses remembered per user.
const KNOWN_ADDRESSES: usize = 8;
const MINUTE: Duration = Duration::from_secs(60);

/// One user's use of the way out.
#[derive(Default)]
struct Use {
    /// When the current minute began, and what was sent in it (calls, other requests).
    window: Option<Instant>,
    sent: [u32; 2],
    /// Addresses this user went out from, newest last.
    addresses: VecDeque<IpAddr>,
}

/// What the way out decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on.
    Pass,
    /// Go on, but from an address this user never went out from (worth a log line).
    NewAddress,
    /// Over the user's rate: refuse.
    TooMany,
}

/// Per-user counts of requests to other domains.
#[derive(Default)]
pub(crate) struct Fraud {
    limits: OutsideLimits,
    users: HashMap<String, Use>,
}

impl Fraud {
    pub(crate) fn set_limits(&mut self, limits: OutsideLimits) {
        self.limits = limits;
    }

    /// `user` sends a call (`call`) or another request to another domain from `ip`.
    pub(crate) fn going_out(
        &mut self,
        now: Instant,
        user: &str,
        call: bool,
        ip: IpAddr,
    ) -> Verdict {
        let limit = if call {
            self.limits.calls_per_minute
        } else {
            self.limits.messages_per_minute
        };
        let u = self.users.entry(user.to_string()).or_default();
        if u.window
            .is_none_or(|w| now.saturating_duration_since(w) >= MINUTE)
        {
            u.window = Some(now);
            u.sent = [0, 0];
        }
        let n = &mut u.sent[usize::from(!call)];
        if limit > 0 && *n >= limit {
            return Verdict::TooMany;
        }
        *n += 1;
        if u.addresses.contains(&ip) {
            return Verdict::Pass;
        }
        let first = u.addresses.is_empty();
        if u.addresses.len() >= KNOWN_ADDRESSES {
            u.addresses.pop_front();
        }
        u.addresses.push_back(ip);
        if first {
            Verdict::Pass
        } else {
            Verdict::NewAddress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_out_are_limited_per_minute_and_a_new_address_is_noticed() {
        let mut f = Fraud::default();
        let t0 = Instant::now();
        let home: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(f.going_out(t0, "alice", true, home), Verdict::Pass);
        }
        assert_eq!(f.going_out(t0, "alice", true, home), Verdict::TooMany);
        // Messages have their own count; bob his own.
        assert_eq!(f.going_out(t0, "alice", false, home), Verdict::Pass);
        assert_eq!(f.going_out(t0, "bob", true, home), Verdict::Pass);
        // A minute later alice may call again; from elsewhere, it is noticed once.
        let t1 = t0 + MINUTE;
        let away: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(f.going_out(t1, "alice", true, away), Verdict::NewAddress);
        assert_eq!(f.going_out(t1, "alice", true, away), Verdict::Pass);
    }
}
