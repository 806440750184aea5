//! The media relay: UDP port pairs handed to calls that need them, and one thread that moves
//! their packets. The core decides what is relayed (see `core::calls`); this is the edge that
//! owns the sockets.

mod forwarder;
mod ports;
mod turn;

pub(crate) use turn::{is_send_indication, ClientPath};

use crate::core::{RelayStream, Side, StreamCounters};
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
use turn::TurnShared;

/// Socket buffers big enough for bursts of video without drops at the socket.
const SOCKET_BUFFER: usize = 1 << 20;

struct Open {
    ports: [u16; 2],
    shared: Arc<Shared>,
}

/// A bound RTP/RTCP pair waiting in the core's reserve, by family (IPv6?) and RTP port.
type Reserved = HashMap<(bool, u16), [UdpSocket; 2]>;

/// The media relay: a pool of UDP ports, the pairs bound ahead for the core's reserve, and
/// the forwarding thread that moves packets between the pairs of each open stream. The core
/// drives it through its relay actions (`core::Action::ReserveRelayPorts` and the others).
pub struct Relay {
    pool: PortPool,
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
    reserved: Reserved,
    streams: HashMap<u64, Open>,
    /// The last reserve of each family (IPv4, IPv6) came back short: said once in the log.
    short: [bool; 2],
    /// TURN allocations: the port pair each holds, and what it has carried.
    turn: HashMap<u64, (u16, Arc<TurnShared>)>,
    /// Each TURN user's bandwidth bucket in the forwarding thread, by user.
    buckets: HashMap<String, u32>,
}

/// What a TURN allocation has carried: datagrams and bytes towards peers and towards the
/// client, and datagrams dropped (no permission, no channel).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TurnCounters {
    /// Datagrams the client sent to peers.
    pub to_peers: u64,
    /// Their bytes (payload).
    pub to_peers_bytes: u64,
    /// Datagrams peers sent to the client.
    pub to_client: u64,
    /// Their bytes (payload).
    pub to_client_bytes: u64,
    /// Datagrams dropped.
    pub dropped: u64,
}

/// A UDP socket on the wildcard address of one family, port `port`, non-blocking.
fn bind(ipv6: bool, port: u16) -> io::Result<UdpSocket> {
    let (domain, any) = if ipv6 {
        (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    } else {
        (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if ipv6 {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(any, port).into())?;
    Ok(s.into())
}

/// Makes a reserved socket ready to carry a stream: big buffers, and nothing that arrived
/// while it waited (a stranger's packets must not be the first the stream sees).
fn ready(sock: &UdpSocket) {
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let mut buf = [0u8; 64];
    while sock.recv_from(&mut buf).is_ok() {}
}

impl Relay {
    /// Starts the forwarding thread over ports `lo..=hi`; TURN requests its listeners
    /// receive go to `control`.
    pub fn start(
        lo: u16,
        hi: u16,
        control: Option<tokio::sync::mpsc::Sender<crate::event::Event>>,
    ) -> io::Result<Relay> {
        let (epoll, wake) = forwarder::handles()?;
        let (tx, rx) = mpsc::channel();
        let engine = Engine::new(epoll, wake.clone(), rx, control, (lo, hi));
        std::thread::Builder::new()
            .name("media-relay".into())
            .spawn(move || engine.run())?;
        Ok(Relay {
            pool: PortPool::new(lo, hi),
            commands: tx,
            wake,
            reserved: HashMap::new(),
            streams: HashMap::new(),
            short: [false; 2],
            turn: HashMap::new(),
            buckets: HashMap::new(),
        })
    }

    fn send(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            forwarder::wake(&self.wake);
        }
    }

    /// Binds up to `count` RTP/RTCP pairs of one family from the pool and keeps them for
    /// `open`; returns their RTP ports. A port that cannot be bound (another program holds
    /// it, or the forwarding thread has not closed it yet) goes to the back of the pool;
    /// fewer pairs come back when the free ports tried (a few per pair wanted, so a range
    /// held by another program costs little) could not all be bound.
    pub fn reserve(&mut self, ipv6: bool, count: usize) -> Vec<u16> {
        let mut got = Vec::with_capacity(count);
        let mut tries = self.pool.available().min(4 * count + 8);
        while got.len() < count && tries > 0 {
            tries -= 1;
            let Some(port) = self.pool.take() else { break };
            match (bind(ipv6, port), bind(ipv6, port + 1)) {
                (Ok(rtp), Ok(rtcp)) => {
                    self.reserved.insert((ipv6, port), [rtp, rtcp]);
                    got.push(port);
                }
                (r, c) => {
                    let e = r.err().or(c.err());
                    tracing::debug!(port, "relay port busy, tried later: {e:?}");
                    self.pool.give_back(port);
                }
            }
        }
        let short = got.len() < count;
        if short && !self.short[usize::from(ipv6)] {
            tracing::warn!(
                ipv6,
                wanted = count,
                bound = got.len(),
                "media relay ports used up"
            );
        }
        self.short[usize::from(ipv6)] = short;
        got
    }

    /// Starts relaying `stream` between two reserved pairs (`ipv6` gives each one's family).
    pub fn open(&mut self, stream: RelayStream, ipv6: [bool; 2]) {
        let [a, b] = [0, 1].map(|i| self.reserved.remove(&(ipv6[i], stream.ports[i])));
        let (Some([a_rtp, a_rtcp]), Some([b_rtp, b_rtcp])) = (a, b) else {
            tracing::error!(id = stream.id, ports = ?stream.ports, "relay stream on ports not reserved");
            return;
        };
        for s in [&a_rtp, &a_rtcp, &b_rtp, &b_rtcp] {
            ready(s);
        }
        let shared = Arc::new(Shared::default());
        self.send(Command::Add {
            id: stream.id,
            socks: [a_rtp, a_rtcp, b_rtp, b_rtcp],
            shared: shared.clone(),
        });
        self.streams.insert(
            stream.id,
            Open {
                ports: stream.ports,
                shared,
            },
        );
    }

    /// Where `side` of stream `id` said it receives (see `core::Action::SetRelayPeer`).
    pub fn set_peer(
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

    /// Ends stream `id`: the forwarding thread drops it and its ports go back to the pool.
    pub fn close(&mut self, id: u64) {
        if let Some(open) = self.streams.remove(&id) {
            self.send(Command::Remove { id });
            for p in open.ports {
                self.pool.give_back(p);
            }
        }
    }

    /// What stream `id` has carried so far.
    pub fn counters(&self, id: u64) -> StreamCounters {
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

    /// Packets from the caller and from the callee over `streams`, summed.
    pub fn packets(&self, streams: &[u64]) -> [u64; 2] {
        streams.iter().fold([0, 0], |acc, id| {
            let c = self.counters(*id);
            [acc[0] + c.packets[0], acc[1] + c.packets[1]]
        })
    }

    /// Hands a TURN listener's UDP socket to the forwarding thread, which reads it from now
    /// on (requests come back through the event loop as `Event::Turn`).
    pub fn turn_listener(&mut self, sock: UdpSocket, local: SocketAddr, host: IpAddr) {
        let s = socket2::SockRef::from(&sock);
        let _ = s.set_recv_buffer_size(4 * SOCKET_BUFFER);
        let _ = s.set_send_buffer_size(4 * SOCKET_BUFFER);
        self.send(Command::TurnListener { sock, local, host });
    }

    /// Binds a relayed address for TURN allocation `id` (a pair of the pool, the even port
    /// used); its port, or None when the range is used up.
    /// `quota` is the user and their bandwidth (bytes a second, 0: none), shared by all
    /// their allocations.
    pub(crate) fn turn_allocate(
        &mut self,
        id: u64,
        client: ClientPath,
        ipv6: bool,
        quota: (&str, u64),
    ) -> Option<u16> {
        let next = self.buckets.len() as u32;
        let bucket = *self.buckets.entry(quota.0.to_string()).or_insert(next);
        let mut tries = self.pool.available().min(8);
        while tries > 0 {
            tries -= 1;
            let port = self.pool.take()?;
            match bind(ipv6, port) {
                Ok(sock) => {
                    ready(&sock);
                    turn::drain(&sock);
                    let shared = Arc::new(TurnShared::default());
                    self.send(Command::TurnAdd {
                        id,
                        sock,
                        client,
                        shared: shared.clone(),
                        bucket: (bucket, quota.1),
                    });
                    self.turn.insert(id, (port, shared));
                    return Some(port);
                }
                Err(e) => {
                    tracing::debug!(port, "relay port busy, tried later: {e}");
                    self.pool.give_back(port);
                }
            }
        }
        None
    }

    /// A TCP relayed address (RFC 6062) for TURN allocation `id`: a listening socket on a
    /// port of the pool; the port, and the socket.
    pub fn turn_tcp_listener(
        &mut self,
        id: u64,
        ipv6: bool,
    ) -> Option<(u16, std::net::TcpListener)> {
        let mut tries = self.pool.available().min(8);
        while tries > 0 {
            tries -= 1;
            let port = self.pool.take()?;
            let any: IpAddr = if ipv6 {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            match crate::transport::bind_tcp_std(SocketAddr::new(any, port)) {
                Ok(l) => {
                    self.turn
                        .insert(id, (port, Arc::new(TurnShared::default())));
                    return Some((port, l));
                }
                Err(_) => self.pool.give_back(port),
            }
        }
        None
    }

    /// A TURN permission for `peer` given (or revoked) on allocation `id`.
    pub fn turn_permit(&mut self, id: u64, peer: IpAddr, allow: bool, any_port: bool) {
        self.send(Command::TurnPermit {
            id,
            peer,
            allow,
            any_port,
        });
    }

    /// A TURN channel bound (or unbound) on allocation `id`.
    pub fn turn_channel(&mut self, id: u64, channel: u16, peer: Option<SocketAddr>) {
        self.send(Command::TurnChannel { id, channel, peer });
    }

    /// Ends TURN allocation `id`; its port goes back to the pool.
    pub fn turn_release(&mut self, id: u64) {
        if let Some((port, _)) = self.turn.remove(&id) {
            self.send(Command::TurnRemove { id });
            self.pool.give_back(port);
        }
    }

    /// ChannelData or a Send indication a TCP or TLS client sent on allocation `id`.
    pub fn turn_from_stream(&mut self, id: u64, data: bytes::Bytes) {
        self.send(Command::TurnFromStream { id, data });
    }

    /// What TURN allocation `id` has carried.
    pub fn turn_counters(&self, id: u64) -> TurnCounters {
        let Some((_, s)) = self.turn.get(&id) else {
            return TurnCounters::default();
        };
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        TurnCounters {
            to_peers: l(&s.to_peers[0]),
            to_peers_bytes: l(&s.to_peers[1]),
            to_client: l(&s.to_client[0]),
            to_client_bytes: l(&s.to_client[1]),
            dropped: l(&s.dropped),
        }
    }

    /// Whether `port` is in the relay's range (a relayed address of some allocation).
    pub fn is_relay_port(&self, port: u16) -> bool {
        self.pool.contains(port)
    }

    /// Even ports still free (for status and tests).
    pub fn available(&self) -> usize {
        self.pool.available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A stream the way the core makes one: two IPv4 pairs reserved, then joined.
    fn open(relay: &mut Relay, id: u64) -> Option<RelayStream> {
        let ports = relay.reserve(false, 2);
        if ports.len() < 2 {
            for p in ports {
                relay.reserved.remove(&(false, p));
                relay.pool.give_back(p);
            }
            return None;
        }
        let s = RelayStream {
            id,
            ports: [ports[0], ports[1]],
        };
        relay.open(s, [false, false]);
        Some(s)
    }

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
        let mut relay = Relay::start(42000, 42099, None).unwrap();
        let s = open(&mut relay, 1).unwrap();
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
        let mut relay = Relay::start(42400, 42499, None).unwrap();
        let s = open(&mut relay, 1).unwrap();
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
        let mut relay = Relay::start(42600, 42699, None).unwrap();
        let s = open(&mut relay, 1).unwrap();
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
        // Room for two sides of one stream: 42200/1 and 42202/3.
        let mut relay = Relay::start(42200, 42203, None).unwrap();
        let s = open(&mut relay, 1).unwrap();
        assert!(open(&mut relay, 2).is_none(), "no ports left");
        relay.close(s.id);
        // The forwarding thread closes the sockets when it gets to the command.
        let back = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            open(&mut relay, 3).is_some()
        });
        assert!(back, "ports are back");
    }
}
