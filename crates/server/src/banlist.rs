//! Sources banned for failed logins, as the stream listeners see them: a connection from one is
//! refused when it is accepted, and one already open is closed at its next read. The core
//! decides the bans and drops a banned source's datagrams itself; the edge copies its
//! decisions here (`core::Action::Ban`, `core::Action::LiftBan`) for the accept and read loops,
//! which run in their own tasks.

use crate::core::source_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether any ban was ever made: until then no lock is taken.
static ANY: AtomicBool = AtomicBool::new(false);

fn bans() -> &'static Mutex<HashMap<IpAddr, Instant>> {
    static BANS: OnceLock<Mutex<HashMap<IpAddr, Instant>>> = OnceLock::new();
    BANS.get_or_init(Default::default)
}

/// Bans `source` (an address, or an IPv6 /64's first address) for `secs`.
pub fn ban(source: IpAddr, secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    if let Ok(mut map) = bans().lock() {
        let now = Instant::now();
        // The core bounds how many sources it bans; ended bans are dropped here on the way.
        map.retain(|_, u| *u > now);
        map.insert(source_key(source), until);
        ANY.store(true, Ordering::Relaxed);
    }
}

/// Lifts the ban on `source` before its time.
pub fn lift(source: IpAddr) {
    if let Ok(mut map) = bans().lock() {
        map.remove(&source_key(source));
    }
}

/// Whether connections from `ip` are refused now.
pub fn is_banned(ip: IpAddr) -> bool {
    if !ANY.load(Ordering::Relaxed) {
        return false;
    }
    bans()
        .lock()
        .map(|map| {
            map.get(&source_key(ip))
                .is_some_and(|until| Instant::now() < *until)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_covers_the_source_until_lifted() {
        let a: IpAddr = "192.0.2.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:7:7::1".parse().unwrap();
        assert!(!is_banned(a));
        ban(a, 60);
        ban(v6, 60);
        assert!(is_banned(a));
        assert!(
            is_banned("2001:db8:7:7::99".parse().unwrap()),
            "the whole /64"
        );
        assert!(!is_banned("192.0.2.78".parse().unwrap()));
        lift(a);
        assert!(!is_banned(a));
    }
}
