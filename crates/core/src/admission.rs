//! Admission: how many requests a source may send us. Each source (an IPv4 address, or an
//! IPv6 /64) has a token bucket per kind of request (REGISTER; requests that may start a
//! dialog: INVITE, SUBSCRIBE, REFER; everything else), looked at before the message is even
//! parsed. A request over its source's rate is dropped unanswered when it came as a datagram
//! (answering would only feed the flood) and answered 503 with Retry-After on a stream.
//! Responses are never limited: they only ever match what we sent. Trusted networks are not
//! limited. Bounded in entries whatever senders do: past `MAX_SOURCES`, idle entries are
//! forgotten, and new sources share one bucket until room is made.

use crate::flow::source_key;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

/// Requests per second each source may send, by kind, and how many at once.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionSettings {
    /// REGISTER requests per second (0: no limit).
    pub register_rate: u32,
    /// INVITE, SUBSCRIBE and REFER requests per second (0: no limit).
    pub dialog_rate: u32,
    /// Any other request per second (0: no limit).
    pub request_rate: u32,
    /// How many seconds' worth of requests a source may send at once (the bucket's size).
    pub burst_secs: u32,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            register_rate: 20,
            dialog_rate: 20,
            request_rate: 200,
            burst_secs: 5,
        }
    }
}

/// The kind of a request, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Register = 0,
    Dialog = 1,
    Other = 2,
}

/// The kind of the message `data` starts, None for a response (or anything not a request).
pub(crate) fn kind_of(data: &[u8]) -> Option<Kind> {
    let method = data.split(|&c| c == b' ').next().unwrap_or_default();
    match method {
        b"SIP/2.0" | b"" => None,
        b"REGISTER" => Some(Kind::Register),
        b"INVITE" | b"SUBSCRIBE" | b"REFER" => Some(Kind::Dialog),
        _ => Some(Kind::Other),
    }
}

/// Sources remembered at most (three buckets each, about 80 bytes).
const MAX_SOURCES: usize = 100_000;

/// One token bucket: tokens left (in thousandths, to refill smoothly) and when last filled.
#[derive(Clone, Copy)]
struct Bucket {
    milli: u64,
    at: Instant,
}

/// The buckets of every source seen lately.
#[derive(Default)]
pub(crate) struct Admission {
    settings: AdmissionSettings,
    sources: HashMap<IpAddr, [Bucket; 3]>,
}

/// Where new sources go while the table is full: one shared bucket set.
const OVERFLOW: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl Admission {
    pub(crate) fn set_settings(&mut self, settings: AdmissionSettings) {
        self.settings = settings;
    }

    fn rate(&self, kind: Kind) -> u64 {
        u64::from(match kind {
            Kind::Register => self.settings.register_rate,
            Kind::Dialog => self.settings.dialog_rate,
            Kind::Other => self.settings.request_rate,
        })
    }

    /// Whether a request of `kind` from `ip` may come in now; takes a token if so.
    pub(crate) fn admit(&mut self, now: Instant, ip: IpAddr, kind: Kind) -> bool {
        let rate = self.rate(kind);
        if rate == 0 {
            return true;
        }
        let size = rate * u64::from(self.settings.burst_secs.max(1)) * 1000;
        let mut key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.forget_idle(now);
            if self.sources.len() >= MAX_SOURCES {
                key = OVERFLOW;
            }
        }
        let full = Bucket {
            milli: u64::MAX,
            at: now,
        };
        let buckets = self.sources.entry(key).or_insert([full; 3]);
        let b = &mut buckets[kind as usize];
        let elapsed = now.saturating_duration_since(b.at).as_millis() as u64;
        b.milli = b
            .milli
            .saturating_add(elapsed.saturating_mul(rate))
            .min(size);
        b.at = now;
        if b.milli >= 1000 {
            b.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose buckets are all full again (idle for a burst's time).
    fn forget_idle(&mut self, now: Instant) {
        let burst_ms = u64::from(self.settings.burst_secs.max(1)) * 1000;
        self.sources.retain(|_, bs| {
            bs.iter()
                .any(|b| (now.saturating_duration_since(b.at).as_millis() as u64) < burst_ms)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn kinds_from_the_first_bytes() {
        assert_eq!(kind_of(b"REGISTER sip:x SIP/2.0\r\n"), Some(Kind::Register));
        assert_eq!(kind_of(b"INVITE sip:x SIP/2.0\r\n"), Some(Kind::Dialog));
        assert_eq!(kind_of(b"SUBSCRIBE sip:x SIP/2.0\r\n"), Some(Kind::Dialog));
        assert_eq!(kind_of(b"OPTIONS sip:x SIP/2.0\r\n"), Some(Kind::Other));
        assert_eq!(kind_of(b"SIP/2.0 200 OK\r\n"), None);
        assert_eq!(kind_of(b""), None);
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut a = Admission::default();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // 20 REGISTER/s with 5 s of burst: 100 at once, then no more.
        let admitted = (0..150).filter(|_| a.admit(t0, ip, Kind::Register)).count();
        assert_eq!(admitted, 100);
        // Other kinds and other sources have their own buckets.
        assert!(a.admit(t0, ip, Kind::Other));
        assert!(a.admit(t0, "192.0.2.2".parse().unwrap(), Kind::Register));
        // A second later, 20 more.
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..50).filter(|_| a.admit(t1, ip, Kind::Register)).count();
        assert_eq!(admitted, 20);
        // 0 turns a limit off.
        a.set_settings(AdmissionSettings {
            register_rate: 0,
            ..AdmissionSettings::default()
        });
        assert!((0..1000).all(|_| a.admit(t1, ip, Kind::Register)));
    }

    #[test]
    fn memory_is_bounded() {
        let mut a = Admission::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            a.admit(t0, IpAddr::V4(i.into()), Kind::Other);
        }
        assert!(a.sources.len() <= MAX_SOURCES + 1);
    }
}
