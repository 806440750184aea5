//! What stream connections (TCP, TLS) may take: a slot each, counted in all and per source
//! from the moment they are accepted (a TLS handshake in progress counts), and how long each
//! may stay silent or take to send a whole message. One address cannot fill the server with
//! idle or trickling connections and lock the phones out.

use crate::core::source_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Stream connections open at once, in all; further ones are refused.
pub const MAX_CONNECTIONS: usize = 8192;
/// Stream connections from one source (an address, or an IPv6 /64) at once: room for an
/// office of phones behind one NAT, not for one host to take the whole server.
pub const MAX_PER_SOURCE: usize = 256;
/// A connection that carries no registration is closed after this long without a byte.
pub const IDLE_UNREGISTERED: Duration = Duration::from_secs(30);
/// A connection a phone registered over (its flow, RFC 5626) may stay silent this long:
/// phones send keep-alives or re-register well within it.
pub const IDLE_REGISTERED: Duration = Duration::from_secs(900);
/// Once a message's first byte has arrived, the whole message must be in within this long,
/// however slowly its bytes trickle in (slowloris).
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(20);
/// A TLS handshake, or an outgoing connect, must be done within this long.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

static OPEN: AtomicUsize = AtomicUsize::new(0);

fn per_source() -> &'static Mutex<HashMap<IpAddr, usize>> {
    static MAP: OnceLock<Mutex<HashMap<IpAddr, usize>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// A connection's place in the counts, given back when it is dropped.
#[derive(Debug)]
pub struct Slot {
    source: IpAddr,
}

/// Why a connection was refused a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `MAX_CONNECTIONS` are open.
    Full,
    /// Its source has `MAX_PER_SOURCE` open.
    SourceFull,
}

/// A slot for a connection with `remote`, if the counts allow one.
pub fn take_slot(remote: IpAddr) -> Result<Slot, Refused> {
    let source = source_key(remote);
    let Ok(mut map) = per_source().lock() else {
        return Err(Refused::Full);
    };
    if OPEN.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
        return Err(Refused::Full);
    }
    let n = map.entry(source).or_insert(0);
    if *n >= MAX_PER_SOURCE {
        return Err(Refused::SourceFull);
    }
    *n += 1;
    OPEN.fetch_add(1, Ordering::Relaxed);
    Ok(Slot { source })
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut map) = per_source().lock() {
            if let Some(n) = map.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.source);
                }
            }
        }
    }
}

/// Stream connections open now.
pub fn open() -> usize {
    OPEN.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_gets_its_share_and_slots_come_back() {
        let a: IpAddr = "192.0.2.200".parse().unwrap();
        let b: IpAddr = "192.0.2.201".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| take_slot(a).expect("a slot"))
            .collect();
        assert_eq!(take_slot(a).unwrap_err(), Refused::SourceFull);
        let other = take_slot(b).expect("another source has its own share");
        drop(slots);
        assert!(take_slot(a).is_ok(), "given back");
        drop(other);
    }
}
