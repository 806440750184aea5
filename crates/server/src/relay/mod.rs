//! The media relay: UDP port pairs handed to calls that need them, and one thread that moves
//! their packets. The core decides what is relayed (see `core::calls`); this is the edge that
//! owns the sockets.

mod forwarder;
mod ports;

use crate::core::{MediaRelay, RelayStream, Side, StreamCounters};
use forwarder::{Command, Engine, Shared};
use ports::PortPool;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

/// Socket buffers big enough for bursts of video without drops at the socket.
const SOCKET_BUFFER: usize = 1 << 20;

struct Open {
    ports: [u16; 2],
    shared: Arc<Shared>,
}

/// The media relay: a pool of UDP ports and the forwarding thread that moves packets
/// between them; it implements the core's `MediaRelay`.
pub struct Relay {
    pool: PortPool,
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
    streams: HashMap<u64, Open>,
    next_id: u64,
}

/// A UDP socket on the wildcard address of `family`'s kind, port `port`, non-blocking.
fn bind(family: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let (domain, any) = match family {
        IpAddr::V4(_) => (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpAddr::V6(_) => (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if family.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(any, port).into())?;
    Ok(s.into())
}

impl Relay {
    /// Starts the forwarding thread over ports `lo..=hi`.
    pub fn start(lo: u16, hi: u16) -> io::Result<Relay> {
        let (epoll, wake) = forwarder::handles()?;
        let (tx, rx) = mpsc::channel();
        let engine = Engine::new(epoll, wake.clone(), rx);
        std::thread::Builder::new()
            .name("media-relay".into())
            .spawn(move || engine.run())?;
        Ok(Relay {
            pool: PortPool::new(lo, hi),
            commands: tx,
            wake,
            streams: HashMap::new(),
            next_id: 1,
        })
    }

    fn send(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            forwarder::wake(&self.wake);
        }
    }

    /// An RTP/RTCP socket pair for one side, from the pool. A port that cannot be bound
    /// (another program holds it, or the forwarding thread has not closed it yet) goes to
    /// the back of the pool; None when every free port was tried.
    fn pair(&mut self, family: IpAddr) -> Option<(u16, UdpSocket, UdpSocket)> {
        for _ in 0..self.pool.available() {
            let port = self.pool.take()?;
            match (bind(family, port), bind(family, port + 1)) {
                (Ok(rtp), Ok(rtcp)) => return Some((port, rtp, rtcp)),
                (r, c) => {
                    let e = r.err().or(c.err());
                    tracing::debug!(port, "relay port busy, tried later: {e:?}");
                    self.pool.give_back(port);
                }
            }
        }
        None
    }

    /// Even ports still free (for status and tests).
    pub fn available(&self) -> usize {
        self.pool.available()
    }
}

impl MediaRelay for Relay {
    fn open(&mut self, local: [IpAddr; 2]) -> Option<RelayStream> {
        let Some((caller_port, a_rtp, a_rtcp)) = self.pair(local[0]) else {
            tracing::warn!("media relay ports used up");
            return None;
        };
        let Some((callee_port, b_rtp, b_rtcp)) = self.pair(local[1]) else {
            self.pool.give_back(caller_port);
            tracing::warn!("media relay ports used up");
            return None;
        };
        let id = self.next_id;
        self.next_id += 1;
        let shared = Arc::new(Shared::default());
        self.send(Command::Add {
            id,
            socks: [a_rtp, a_rtcp, b_rtp, b_rtcp],
            shared: shared.clone(),
        });
        let ports = [caller_port, callee_port];
        self.streams.insert(id, Open { ports, shared });
        Some(RelayStream { id, ports })
    }

    fn set_peer(
        &mut self,
        id: u64,
        side: Side,
        rtp: SocketAddr,
        rtcp: SocketAddr,
        signalling: IpAddr,
    ) {
        self.send(Command::Peer {
            id,
            side: side as usize,
            rtp,
            rtcp,
            signalling,
        });
    }

    fn close(&mut self, id: u64) {
        if let Some(open) = self.streams.remove(&id) {
            self.send(Command::Remove { id });
            for p in open.ports {
                self.pool.give_back(p);
            }
        }
    }

    fn counters(&self, id: u64) -> StreamCounters {
        let Some(open) = self.streams.get(&id) else {
            return StreamCounters::default();
        };
        let s = &open.shared;
        StreamCounters {
            packets: [0, 1].map(|i| s.packets[i].load(Ordering::Relaxed)),
            bytes: [0, 1].map(|i| s.bytes[i].load(Ordering::Relaxed)),
            dropped: s.dropped.load(Ordering::Relaxed),
            latched: s.latched.lock().map(|l| *l).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).expect("a relayed packet");
        (buf[..n].to_vec(), from)
    }

    /// Two phones on loopback: each sends to its relay port; packets reach the other phone
    /// from the relay port facing it, at the address the phone sent from (latching), not
    /// the one its SDP named.
    #[test]
    fn forwards_both_ways_and_latches() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut relay = Relay::start(42000, 42099).unwrap();
        let s = relay.open([lo, lo]).unwrap();
        let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
        let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The callee's SDP is right; the caller's names a private address (behind NAT).
        let private: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        relay.set_peer(s.id, Side::Caller, private, private, lo);
        let callee_addr = callee.local_addr().unwrap();
        relay.set_peer(s.id, Side::Callee, callee_addr, callee_addr, lo);
        std::thread::sleep(Duration::from_millis(50));
        caller
            .send_to(b"rtp from caller", ("127.0.0.1", s.ports[0]))
            .unwrap();
        let (d, from) = recv(&callee);
        assert_eq!(d, b"rtp from caller");
        assert_eq!(from.port(), s.ports[1], "sent from the callee-facing port");
        callee
            .send_to(b"rtp from callee", ("127.0.0.1", s.ports[1]))
            .unwrap();
        let (d, from) = recv(&caller);
        assert_eq!(d, b"rtp from callee", "reached the caller's real source");
        assert_eq!(from.port(), s.ports[0]);
        // A third party cannot hijack the latched caller side.
        let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
        intruder
            .send_to(b"spoof", ("127.0.0.1", s.ports[0]))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let c = relay.counters(s.id);
        assert_eq!(c.packets, [1, 1]);
        assert_eq!(c.dropped, 1);
        assert_eq!(c.latched[0], Some(caller.local_addr().unwrap()));
        relay.close(s.id);
        assert_eq!(relay.counters(s.id), StreamCounters::default());
    }

    /// A re-INVITE moves the caller to a new address: the side is learned again from the
    /// packets that follow, and the callee's media goes there.
    #[test]
    fn a_new_address_in_sdp_is_learned_again() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut relay = Relay::start(42400, 42499).unwrap();
        let s = relay.open([lo, lo]).unwrap();
        let old = UdpSocket::bind("127.0.0.1:0").unwrap();
        let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (o, c) = (old.local_addr().unwrap(), callee.local_addr().unwrap());
        relay.set_peer(s.id, Side::Caller, o, o, lo);
        relay.set_peer(s.id, Side::Callee, c, c, lo);
        std::thread::sleep(Duration::from_millis(50));
        old.send_to(b"1", ("127.0.0.1", s.ports[0])).unwrap();
        assert_eq!(recv(&callee).0, b"1");
        let new = UdpSocket::bind("127.0.0.1:0").unwrap();
        let n = new.local_addr().unwrap();
        relay.set_peer(s.id, Side::Caller, n, n, lo);
        std::thread::sleep(Duration::from_millis(50));
        new.send_to(b"2", ("127.0.0.1", s.ports[0])).unwrap();
        assert_eq!(recv(&callee).0, b"2");
        callee.send_to(b"3", ("127.0.0.1", s.ports[1])).unwrap();
        assert_eq!(recv(&new).0, b"3", "the callee's media follows the caller");
        assert_eq!(relay.counters(s.id).latched[0], Some(n));
    }

    /// RTP bleed: before a side is learned, packets from an address that is neither its SDP's
    /// nor its signalling's are dropped, and do not steer the stream.
    #[test]
    fn a_stranger_cannot_take_an_unlearned_side() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut relay = Relay::start(42600, 42699).unwrap();
        let s = relay.open([lo, lo]).unwrap();
        let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
        let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
        let (ca, cb) = (caller.local_addr().unwrap(), callee.local_addr().unwrap());
        relay.set_peer(s.id, Side::Caller, ca, ca, lo);
        relay.set_peer(s.id, Side::Callee, cb, cb, lo);
        std::thread::sleep(Duration::from_millis(50));
        stranger
            .send_to(b"spoof", ("127.0.0.1", s.ports[0]))
            .unwrap();
        caller.send_to(b"real", ("127.0.0.1", s.ports[0])).unwrap();
        assert_eq!(
            recv(&callee).0,
            b"real",
            "the stranger's packet was not forwarded"
        );
        callee.send_to(b"back", ("127.0.0.1", s.ports[1])).unwrap();
        assert_eq!(recv(&caller).0, b"back");
        let c = relay.counters(s.id);
        assert_eq!(c.latched[0], Some(ca));
        assert_eq!(c.dropped, 1);
    }

    #[test]
    fn runs_dry_and_recovers() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        // Room for two sides of one stream: 42200/1 and 42202/3.
        let mut relay = Relay::start(42200, 42203).unwrap();
        let s = relay.open([lo, lo]).unwrap();
        assert!(relay.open([lo, lo]).is_none(), "no ports left");
        relay.close(s.id);
        // The forwarding thread closes the sockets when it gets to the command.
        let back = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            relay.open([lo, lo]).is_some()
        });
        assert!(back, "ports are back");
    }
}
