//! The media relay as the core drives it: a reserve of RTP/RTCP port pairs per address family
//! that the edge has already bound, from which calls' streams are made without waiting, and
//! the actions that open, steer, query and close streams.
//!
//! The core never touches a socket. It asks the edge to bind pairs ahead of need
//! (`Action::ReserveRelayPorts`), hears which ports were bound (`handle_relay_reserved`), and
//! joins two reserved pairs into a stream when an SDP needs one (`Action::OpenRelayStream`).
//! A message is thus rewritten at once, as it would be with a synchronous relay, and the
//! reserve is topped up after each input. When the edge could bind fewer pairs than asked
//! (the port range is used up, or a port is still being released), the core asks again after
//! a stream closes or after `RETRY`.

use crate::Action;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

/// Port pairs kept bound per address family. One message may take this many: a call forked
/// to phones of both families with several media lines takes up to three pairs of the
/// caller's family per line.
pub(crate) const RESERVE: usize = 32;

/// How soon a reserve the edge could not fill is asked for again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// One relayed stream: a port pair (RTP, RTCP) facing each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayStream {
    /// The core's id for the stream, named again when it is steered, queried or closed.
    pub id: u64,
    /// `ports[Side::Caller]` is where the caller sends; `ports[Side::Callee]` the callee.
    pub ports: [u16; 2],
}

/// The reserve of bound port pairs, and the ids of the streams made from them.
#[derive(Default)]
pub(crate) struct RelayPorts {
    /// Whether the daemon has a relay at all.
    on: bool,
    /// The address families the core has listeners of (IPv4, IPv6): the families asked for.
    families: [bool; 2],
    /// The RTP ports of bound pairs not yet used, per family (RTCP is the port above).
    ready: [VecDeque<u16>; 2],
    /// A reserve request is out and not answered yet, per family.
    asked: [usize; 2],
    /// The last answer was short: no new request until a stream closes or the retry.
    dry: [bool; 2],
    /// The last stream id handed out.
    last_stream: u64,
}

fn family(ip: IpAddr) -> usize {
    usize::from(ip.is_ipv6())
}

impl RelayPorts {
    /// The daemon has a relay; pairs of `families` (IPv4, IPv6) are reserved from now on.
    pub(crate) fn enable(&mut self, families: [bool; 2]) {
        self.on = true;
        self.families = families;
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// Pairs ready, both families.
    pub(crate) fn ready(&self) -> usize {
        self.ready[0].len() + self.ready[1].len()
    }

    /// Asks the edge for the pairs each family's reserve lacks, once per shortfall.
    pub(crate) fn refill(&mut self, out: &mut Vec<Action>) {
        if !self.on {
            return;
        }
        for f in 0..2 {
            let lack = RESERVE.saturating_sub(self.ready[f].len());
            if self.families[f] && lack > 0 && self.asked[f] == 0 && !self.dry[f] {
                self.asked[f] = lack;
                out.push(Action::ReserveRelayPorts {
                    ipv6: f == 1,
                    count: lack,
                });
            }
        }
    }

    /// The edge bound `ports` (RTP ports, RTCP above each) of a family. True when it bound
    /// fewer than asked: the caller arms a retry.
    pub(crate) fn reserved(&mut self, ipv6: bool, ports: Vec<u16>) -> bool {
        let f = usize::from(ipv6);
        let short = ports.len() < self.asked[f];
        self.asked[f] = 0;
        self.ready[f].extend(ports);
        self.dry[f] = short;
        short
    }

    /// The retry is due: ask again for what is missing.
    pub(crate) fn retry(&mut self) {
        self.dry = [false; 2];
    }

    /// A stream whose caller-facing and callee-facing pairs serve the families of `local`,
    /// made from the reserve; None when a family's reserve is empty.
    pub(crate) fn open(
        &mut self,
        local: [IpAddr; 2],
        out: &mut Vec<Action>,
    ) -> Option<RelayStream> {
        let [a, b] = local.map(family);
        let caller = self.ready[a].pop_front()?;
        let Some(callee) = self.ready[b].pop_front() else {
            self.ready[a].push_front(caller);
            return None;
        };
        self.last_stream += 1;
        let stream = RelayStream {
            id: self.last_stream,
            ports: [caller, callee],
        };
        out.push(Action::OpenRelayStream {
            stream,
            ipv6: [a == 1, b == 1],
        });
        Some(stream)
    }

    /// Closes `streams`; when `ended` names a call (its Call-ID and why it ended), the edge
    /// logs what the call's streams carried. Freed ports may fill the reserve again.
    pub(crate) fn close(
        &mut self,
        streams: Vec<u64>,
        ended: Option<(String, &'static str)>,
        out: &mut Vec<Action>,
    ) {
        if streams.is_empty() && ended.is_none() {
            return;
        }
        if !streams.is_empty() {
            self.dry = [false; 2];
        }
        out.push(Action::CloseRelayStreams { streams, ended });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve_asks(out: &[Action]) -> Vec<(bool, usize)> {
        out.iter()
            .filter_map(|a| match a {
                Action::ReserveRelayPorts { ipv6, count } => Some((*ipv6, *count)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_reserve_is_asked_for_once_and_again_when_used() {
        let mut p = RelayPorts::default();
        let mut out = vec![];
        p.refill(&mut out);
        assert!(out.is_empty(), "no relay, nothing asked");
        p.enable([true, false]);
        p.refill(&mut out);
        p.refill(&mut out);
        assert_eq!(reserve_asks(&out), vec![(false, RESERVE)], "asked once");
        assert!(!p.reserved(false, (0..RESERVE as u16).map(|i| 40000 + 2 * i).collect()));
        out.clear();
        p.refill(&mut out);
        assert!(out.is_empty(), "full");
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let s = p.open([v4, v4], &mut out).unwrap();
        assert_eq!((s.id, s.ports), (1, [40000, 40002]));
        p.refill(&mut out);
        assert_eq!(reserve_asks(&out), vec![(false, 2)]);
    }

    #[test]
    fn a_short_answer_waits_for_a_close_or_the_retry() {
        let mut p = RelayPorts::default();
        p.enable([true, true]);
        let mut out = vec![];
        p.refill(&mut out);
        assert!(p.reserved(false, vec![40000, 40002]), "short");
        assert!(p.reserved(true, vec![]), "short");
        out.clear();
        p.refill(&mut out);
        assert!(out.is_empty(), "dry: not asked again at once");
        let (v4, v6): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "::1".parse().unwrap());
        assert!(p.open([v4, v6], &mut out).is_none(), "no IPv6 pair");
        assert_eq!(p.ready[0].len(), 2, "the IPv4 pair taken is put back");
        let s = p.open([v4, v4], &mut out).unwrap();
        p.close(vec![s.id], None, &mut out);
        out.clear();
        p.refill(&mut out);
        assert_eq!(reserve_asks(&out), vec![(false, RESERVE), (true, RESERVE)]);
        p.reserved(false, vec![]);
        p.reserved(true, vec![]);
        out.clear();
        p.retry();
        p.refill(&mut out);
        assert_eq!(reserve_asks(&out).len(), 2, "asked again after the retry");
    }
}
