//! The TURN data plane, in the media relay's forwarding thread: the TURN listeners' UDP
//! sockets and each allocation's relayed socket. ChannelData and Send indications from a
//! client go out of its relayed socket to the peer; a peer's datagrams come back to the
//! client as ChannelData (a bound channel) or Data indications, only from peers with a
//! permission. Everything else a client sends (requests) goes to the event loop, whose core
//! decides; what the core decided arrives here as commands.

use crate::core::Flow;
use crate::event::Event;
use crate::mmsg::RecvBatch;
use bytes::Bytes;
use sip::turn::{self, attr, Class, Writer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// What one allocation has carried, read by `hedgewitch turn`.
#[derive(Default, Debug)]
pub(crate) struct TurnShared {
    /// Datagrams and bytes from the client to peers.
    pub to_peers: [AtomicU64; 2],
    /// Datagrams and bytes from peers to the client.
    pub to_client: [AtomicU64; 2],
    /// Dropped: from peers without permission, to peers without one, unknown channels.
    pub dropped: AtomicU64,
}

/// How the forwarding thread reaches an allocation's client.
pub(crate) enum ClientPath {
    /// Over a TURN listener's UDP socket.
    Udp {
        /// The listener's local address.
        local: SocketAddr,
        /// The client's address.
        remote: SocketAddr,
    },
    /// Over the client's TCP or TLS connection (its writer's queue).
    Stream(mpsc::Sender<Bytes>),
}

/// A user's bandwidth allowance: a token bucket in bytes, holding a second's worth.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Whether `n` more bytes may go now (and takes them).
    fn take(&mut self, n: usize) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let burst = self.rate.max(64.0 * 1024.0);
        self.tokens = (self.tokens + self.rate * (now - self.last).as_secs_f64()).min(burst);
        self.last = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

struct Alloc {
    sock: UdpSocket,
    /// Its user's bucket in `Plane::buckets`.
    bucket: usize,
    client: ClientPath,
    /// Peers with a permission, and whether any of their ports may be reached.
    permits: Vec<(IpAddr, bool)>,
    channels: Vec<(u16, SocketAddr)>,
    shared: Arc<TurnShared>,
}

impl Alloc {
    fn permitted(&self, ip: IpAddr) -> bool {
        self.permits.iter().any(|(p, _)| *p == ip)
    }

    fn any_port(&self, ip: IpAddr) -> bool {
        self.permits.iter().any(|(p, any)| *p == ip && *any)
    }
}

/// The TURN part of the forwarding engine.
pub(crate) struct Plane {
    listeners: Vec<(UdpSocket, SocketAddr)>,
    allocs: Vec<Option<Alloc>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    /// UDP clients: (listener index, client address) -> allocation slot.
    by_client: HashMap<(usize, SocketAddr), usize>,
    control: Option<mpsc::Sender<Event>>,
    /// The server's own addresses (its TURN listeners'), and the relay's port range: a peer
    /// at one of those addresses is reached only on a relayed port (another allocation),
    /// never on the server's other services.
    own: Vec<IpAddr>,
    relay_ports: (u16, u16),
    /// Each user's bandwidth allowance (index given by the edge).
    buckets: Vec<Bucket>,
    /// Reused for the header of what goes to clients.
    out: Vec<u8>,
    /// What goes to UDP clients in this round of the forwarding loop, sent in one sendmmsg
    /// per listener by `flush`: (listener, client, where its bytes are in `queued_bytes`).
    queued: Vec<(usize, SocketAddr, std::ops::Range<usize>)>,
    queued_bytes: Vec<u8>,
    next_txid: u64,
}

/// The epoll tokens of the TURN sockets: listeners and relayed sockets, apart from the
/// relay's streams (whose tokens are small slot numbers).
pub(crate) const LISTENER: u64 = 1 << 62;
pub(crate) const RELAYED: u64 = 1 << 61;

impl Plane {
    pub(crate) fn new(control: Option<mpsc::Sender<Event>>, relay_ports: (u16, u16)) -> Plane {
        Plane {
            own: vec![],
            relay_ports,
            listeners: vec![],
            allocs: vec![],
            free: vec![],
            by_id: HashMap::new(),
            by_client: HashMap::new(),
            control,
            buckets: vec![],
            out: Vec::with_capacity(2048),
            queued: Vec::with_capacity(256),
            queued_bytes: Vec::with_capacity(256 * 200),
            next_txid: 0,
        }
    }

    /// A TURN listener's socket, and the address clients know it by; returns its epoll token.
    pub(crate) fn add_listener(&mut self, sock: UdpSocket, local: SocketAddr, host: IpAddr) -> u64 {
        for ip in [local.ip(), host] {
            if !ip.is_unspecified() && !self.own.contains(&ip) {
                self.own.push(ip);
            }
        }
        self.listeners.push((sock, local));
        LISTENER | (self.listeners.len() - 1) as u64
    }

    /// A new allocation; returns the epoll token of its relayed socket.
    pub(crate) fn add(
        &mut self,
        id: u64,
        sock: UdpSocket,
        client: ClientPath,
        shared: Arc<TurnShared>,
        (bucket, rate): (u32, u64),
    ) -> u64 {
        let bucket = bucket as usize;
        while self.buckets.len() <= bucket {
            self.buckets.push(Bucket {
                rate: 0.0,
                tokens: 0.0,
                last: Instant::now(),
            });
        }
        let b = &mut self.buckets[bucket];
        if b.rate != rate as f64 {
            b.rate = rate as f64;
            b.tokens = b.rate;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.allocs.push(None);
            self.allocs.len() - 1
        });
        if let ClientPath::Udp { local, remote } = &client {
            if let Some(li) = self.listeners.iter().position(|(_, l)| l == local) {
                self.by_client.insert((li, *remote), slot);
            }
        }
        self.allocs[slot] = Some(Alloc {
            sock,
            bucket,
            client,
            permits: vec![],
            channels: vec![],
            shared,
        });
        self.by_id.insert(id, slot);
        RELAYED | slot as u64
    }

    pub(crate) fn permit(&mut self, id: u64, peer: IpAddr, allow: bool, any_port: bool) {
        if let Some(a) = self.by_id.get(&id).and_then(|s| self.allocs[*s].as_mut()) {
            a.permits.retain(|(p, _)| *p != peer);
            if allow {
                a.permits.push((peer, any_port));
            }
        }
    }

    pub(crate) fn channel(&mut self, id: u64, channel: u16, peer: Option<SocketAddr>) {
        if let Some(a) = self.by_id.get(&id).and_then(|s| self.allocs[*s].as_mut()) {
            a.channels.retain(|(c, _)| *c != channel);
            if let Some(p) = peer {
                a.channels.push((channel, p));
            }
        }
    }

    /// Ends an allocation: its socket closes (leaving the epoll set).
    pub(crate) fn remove(&mut self, id: u64) {
        let Some(slot) = self.by_id.remove(&id) else {
            return;
        };
        self.by_client.retain(|_, s| *s != slot);
        self.allocs[slot] = None;
        self.free.push(slot);
    }

    /// A datagram or message from a stream client (its connection's reader passes along
    /// ChannelData and Send indications): relayed like one from a UDP client.
    pub(crate) fn relay_from_stream(&mut self, id: u64, data: &[u8]) {
        if let Some(slot) = self.by_id.get(&id).copied() {
            self.send_to_peer(slot, data);
        }
    }

    /// A readable TURN socket.
    pub(crate) fn readable(&mut self, token: u64, batch: &mut RecvBatch) {
        if token & LISTENER != 0 {
            self.read_clients((token & !LISTENER) as usize, batch);
        } else {
            self.read_peers((token & !RELAYED) as usize, batch);
        }
    }

    fn read_clients(&mut self, li: usize, batch: &mut RecvBatch) {
        let Some(fd) = self.listeners.get(li).map(|(s, _)| s.as_raw_fd()) else {
            return;
        };
        let local = self.listeners[li].1;
        for _ in 0..4 {
            let Ok(got) = batch.recv(fd) else { return };
            for i in 0..got {
                let (data, src) = batch.get(i);
                let Some(src) = src else { continue };
                if batch.truncated(i) {
                    // Longer than a slot: never relayed cut short.
                    continue;
                }
                let relayed = !data.is_empty() && (0x40..=0x7F).contains(&data[0])
                    || is_send_indication(data);
                match self.by_client.get(&(li, src)).copied() {
                    Some(slot) if relayed => self.send_to_peer(slot, data),
                    _ if relayed => {}
                    _ if turn::is_stun(data) => {
                        let flow = Flow {
                            transport: crate::core::Transport::Udp,
                            local,
                            remote: src,
                            conn: None,
                        };
                        if let Some(c) = &self.control {
                            let ev = Event::Turn {
                                flow,
                                data: Bytes::copy_from_slice(data),
                            };
                            if c.try_send(ev).is_err() {
                                tracing::debug!(%src, "TURN request dropped: the event loop is behind");
                            }
                        }
                    }
                    _ => {}
                }
            }
            if got < batch.capacity() {
                return;
            }
        }
    }

    /// A client's ChannelData or Send indication, out of the relayed socket.
    fn send_to_peer(&mut self, slot: usize, data: &[u8]) {
        let Some(a) = self.allocs.get(slot).and_then(Option::as_ref) else {
            return;
        };
        let (peer, payload) = if let Some((channel, payload)) = turn::channel_data(data) {
            match a.channels.iter().find(|(c, _)| *c == channel) {
                Some((_, p)) => (*p, payload),
                None => {
                    a.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        } else {
            match turn::parse(data) {
                Some(m) => match (m.peers.first(), m.data) {
                    (Some(p), Some(d)) => (*p, d),
                    _ => return,
                },
                None => return,
            }
        };
        let (lo, hi) = self.relay_ports;
        let ours_elsewhere = self.own.contains(&peer.ip())
            && !(lo..=hi).contains(&peer.port())
            && !a.any_port(peer.ip());
        if !a.permitted(peer.ip()) || ours_elsewhere || !self.buckets[a.bucket].take(payload.len())
        {
            a.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if a.sock.send_to(payload, peer).is_ok() {
            a.shared.to_peers[0].fetch_add(1, Ordering::Relaxed);
            a.shared.to_peers[1].fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    }

    fn read_peers(&mut self, slot: usize, batch: &mut RecvBatch) {
        let Some(fd) = self
            .allocs
            .get(slot)
            .and_then(Option::as_ref)
            .map(|a| a.sock.as_raw_fd())
        else {
            return;
        };
        for _ in 0..4 {
            let Ok(got) = batch.recv(fd) else { return };
            for i in 0..got {
                let (data, src) = batch.get(i);
                let Some(src) = src else { continue };
                if batch.truncated(i) {
                    if let Some(a) = self.allocs.get(slot).and_then(Option::as_ref) {
                        a.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                self.send_to_client(slot, src, data);
            }
            if got < batch.capacity() {
                return;
            }
        }
    }

    /// A peer's datagram, to the client: ChannelData when a channel is bound to the peer,
    /// else a Data indication; nothing from a peer without permission.
    fn send_to_client(&mut self, slot: usize, src: SocketAddr, data: &[u8]) {
        let Some(a) = self.allocs.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if !a.permitted(src.ip()) || !self.buckets[a.bucket].take(data.len()) {
            a.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stream = matches!(a.client, ClientPath::Stream(_));
        self.out.clear();
        match a.channels.iter().find(|(_, p)| *p == src) {
            Some((channel, _)) => {
                self.out
                    .extend_from_slice(&turn::channel_header(*channel, data.len()));
                self.out.extend_from_slice(data);
                if stream {
                    // Over a stream, ChannelData is padded to four bytes (RFC 8656 §12.5).
                    self.out.resize(self.out.len().div_ceil(4) * 4, 0);
                }
            }
            None => {
                self.next_txid += 1;
                let mut txid = [0u8; 12];
                txid[4..].copy_from_slice(&self.next_txid.to_be_bytes());
                let mut w = Writer::new(turn::DATA, Class::Indication, &txid);
                w.xor_address(attr::XOR_PEER_ADDRESS, src).data(data);
                self.out = w.finish(None);
            }
        }
        let sent = match &a.client {
            ClientPath::Udp { local, remote } => {
                match self.listeners.iter().position(|(_, l)| l == local) {
                    Some(li) => {
                        let at = self.queued_bytes.len();
                        self.queued_bytes.extend_from_slice(&self.out);
                        self.queued.push((li, *remote, at..self.queued_bytes.len()));
                        true
                    }
                    None => false,
                }
            }
            ClientPath::Stream(tx) => tx.try_send(Bytes::copy_from_slice(&self.out)).is_ok(),
        };
        if sent {
            a.shared.to_client[0].fetch_add(1, Ordering::Relaxed);
            a.shared.to_client[1].fetch_add(data.len() as u64, Ordering::Relaxed);
        } else {
            a.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Plane {
    /// Sends what this round queued for UDP clients: one sendmmsg per listener for all of
    /// them, rather than a system call per datagram. What would block is dropped (UDP).
    pub(crate) fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let mut ignored = vec![];
        for (li, (sock, _)) in self.listeners.iter().enumerate() {
            let msgs: Vec<(SocketAddr, &[u8])> = self
                .queued
                .iter()
                .filter(|(l, _, _)| *l == li)
                .map(|(_, to, r)| (*to, &self.queued_bytes[r.clone()]))
                .collect();
            if !msgs.is_empty() {
                let _ = crate::mmsg::send_batch(sock.as_raw_fd(), &msgs, &mut ignored);
            }
        }
        self.queued.clear();
        self.queued_bytes.clear();
    }
}

/// Whether `data` is a Send indication (the only STUN the data plane relays itself).
pub(crate) fn is_send_indication(data: &[u8]) -> bool {
    data.len() >= 20
        && u16::from_be_bytes([data[0], data[1]])
            == turn::message_type(turn::SEND, Class::Indication)
        && turn::is_stun(data)
}

/// An allocation's relayed socket should not keep what strangers sent before it existed.
pub(crate) fn drain(sock: &UdpSocket) {
    let mut buf = [0u8; 64];
    while sock.recv_from(&mut buf).is_ok() {}
}
