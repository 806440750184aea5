//! The TURN server's sockets at the edge: the listeners (UDP ones are read by the media
//! relay's forwarding thread, which passes requests back as `Event::Turn`), the relayed
//! addresses the core's allocations get, and the URIs the page is told.

use super::edge::Edge;
use crate::config::Config;
use crate::core::{Action, ConnId, Core, Transport};
use crate::relay::ClientPath;
use crate::transport;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdp};
use std::time::Instant;

/// The TURN side of the edge.
#[derive(Default)]
pub(super) struct TurnEdge {
    /// UDP listeners bound at start, handed to the relay's thread once it runs.
    pending: Vec<(StdUdp, SocketAddr)>,
    /// The same sockets, for the core's answers. Not registered with the event loop: it
    /// would be woken at every datagram the relay's thread receives or sends on them.
    senders: Vec<(SocketAddr, StdUdp)>,
    /// Each listener's local address and the address clients reach it at.
    hosts: Vec<(SocketAddr, IpAddr, Transport)>,
    /// Allocations of stream clients, by connection.
    by_conn: HashMap<ConnId, u64>,
    /// RFC 6062: peer connections waiting for the client's ConnectionBind, by CONNECTION-ID;
    /// the client data connections waiting for theirs; each TCP allocation's accept loop.
    peers: HashMap<u32, tokio::net::TcpStream>,
    joins: HashMap<ConnId, tokio::sync::mpsc::Sender<tokio::net::TcpStream>>,
    acceptors: HashMap<u64, tokio::task::JoinHandle<()>>,
}

impl TurnEdge {
    /// Binds the `[turn]` listeners: TCP and TLS ones get their accept loops; each UDP one is
    /// read by the relay's thread, and a copy sends the core's answers.
    pub(super) fn bind(
        cfg: &Config,
        tls: &crate::tls::Tls,
        events: &tokio::sync::mpsc::Sender<crate::event::Event>,
    ) -> TurnEdge {
        let mut t = TurnEdge::default();
        if !cfg.turn.enabled {
            return t;
        }
        for l in &cfg.turn.listen {
            if l.transport != Transport::Udp {
                let acceptor = match (l.transport, &tls.acceptor) {
                    (Transport::Tcp, _) => None,
                    (_, Some(a)) => Some(a.clone()),
                    (_, None) => {
                        tracing::warn!("TURN over TLS on {} needs [tls]; not served", l.addr);
                        continue;
                    }
                };
                match transport::bind_tcp(l.addr) {
                    Ok(listener) => {
                        let host = transport::guess_host(l.addr, cfg.advertise);
                        tracing::info!(
                            "TURN on {}:{} (advertised as {host})",
                            l.transport.as_str(),
                            l.addr
                        );
                        tokio::spawn(crate::turn_listener::accept_loop(
                            listener,
                            l.addr,
                            events.clone(),
                            acceptor,
                        ));
                        t.hosts.push((l.addr, host, l.transport));
                    }
                    Err(e) => tracing::warn!(
                        "cannot serve TURN on {}:{}: {e}; continuing without it",
                        l.transport.as_str(),
                        l.addr
                    ),
                }
                continue;
            }
            let bound = transport::bind_udp(l.addr).and_then(|s| {
                let sender = s.try_clone()?;
                Ok((s, sender))
            });
            match bound {
                Ok((sock, sender)) => {
                    let host = transport::guess_host(l.addr, cfg.advertise);
                    tracing::info!("TURN on udp:{} (advertised as {host})", l.addr);
                    t.senders.push((l.addr, sender));
                    t.pending.push((sock, l.addr));
                    t.hosts.push((l.addr, host, l.transport));
                }
                Err(e) => tracing::warn!(
                    "cannot serve TURN on udp:{}: {e}; continuing without it",
                    l.addr
                ),
            }
        }
        t
    }

    /// Whether a UDP address is a TURN listener (a STUN socket there would clash: TURN
    /// answers STUN Binding requests itself).
    pub(super) fn listens_on(cfg: &Config, addr: SocketAddr) -> bool {
        cfg.turn.enabled
            && cfg
                .turn
                .listen
                .iter()
                .any(|l| l.transport == Transport::Udp && l.addr == addr)
    }

    /// Whether any TURN listener is bound.
    pub(super) fn is_on(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// The URIs a page is told: one per listener (RFC 7065).
    pub(super) fn urls(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|(local, host, t)| {
                let host = match host {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                };
                match t {
                    Transport::Tls => format!("turns:{host}:{}?transport=tcp", local.port()),
                    Transport::Tcp => format!("turn:{host}:{}?transport=tcp", local.port()),
                    _ => format!("turn:{host}:{}?transport=udp", local.port()),
                }
            })
            .collect()
    }

    /// Sends the core's answer to a UDP TURN client from the listener it came to; false when
    /// `flow` is not a TURN listener's. An answer that would block is dropped: the client
    /// retransmits its request.
    pub(super) fn send_udp(&self, local: SocketAddr, remote: SocketAddr, data: &[u8]) -> bool {
        match self.senders.iter().find(|(l, _)| *l == local) {
            Some((_, s)) => {
                if let Err(e) = s.send_to(data, remote) {
                    tracing::debug!(%remote, "TURN answer not sent: {e}");
                }
                true
            }
            None => false,
        }
    }

    /// The families relayed addresses can be given in (IPv4, IPv6).
    pub(super) fn families(&self) -> [bool; 2] {
        [false, true].map(|v6| self.hosts.iter().any(|(_, h, _)| h.is_ipv6() == v6))
    }

    /// Hands the UDP listeners to the relay's forwarding thread.
    pub(super) fn start(&mut self, relay: &mut crate::relay::Relay) {
        for (sock, local) in self.pending.drain(..) {
            let host = self
                .hosts
                .iter()
                .find(|(l, _, t)| *l == local && *t == Transport::Udp)
                .map_or(local.ip(), |(_, h, _)| *h);
            relay.turn_listener(sock, local, host);
        }
    }

    /// The address clients reach a relayed port of this family at.
    fn relayed_host(&self, client_local: SocketAddr, ipv6: bool) -> Option<IpAddr> {
        self.hosts
            .iter()
            .find(|(l, h, _)| *l == client_local && h.is_ipv6() == ipv6)
            .or_else(|| self.hosts.iter().find(|(_, h, _)| h.is_ipv6() == ipv6))
            .map(|(_, h, _)| *h)
    }
}

impl Edge {
    /// The core's TURN actions; an allocation's relayed address is bound and reported at once.
    pub(super) fn carry_out_turn(&mut self, core: &mut Core, action: Action) {
        let Some(relay) = self.relay.as_mut() else {
            tracing::error!("a TURN action with no relay running: {action:?}");
            return;
        };
        match action {
            Action::TurnAllocate {
                id,
                client,
                ipv6,
                tcp: true,
                ..
            } => {
                let host = self.turn.relayed_host(client.local, ipv6);
                let relayed = host.and_then(|host| {
                    let (port, listener) = relay.turn_tcp_listener(id, ipv6)?;
                    let listener = tokio::net::TcpListener::from_std(listener).ok()?;
                    let events = self.events.clone();
                    self.turn
                        .acceptors
                        .insert(id, tokio::spawn(accept_peers(listener, id, events)));
                    Some(SocketAddr::new(host, port))
                });
                if let Some(c) = client.conn.filter(|_| relayed.is_some()) {
                    self.turn.by_conn.insert(c, id);
                    if let Some(flag) = self.held.get(&c) {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                core.handle_turn_allocated(Instant::now(), id, relayed);
            }
            Action::TurnAllocate {
                id,
                client,
                ipv6,
                user,
                bandwidth,
                ..
            } => {
                let path = match (client.transport, client.conn) {
                    (Transport::Udp, _) => Some(ClientPath::Udp {
                        local: client.local,
                        remote: client.remote,
                    }),
                    (_, Some(c)) => self.conns.get(&c).cloned().map(ClientPath::Stream),
                    _ => None,
                };
                let host = self.turn.relayed_host(client.local, ipv6);
                let relayed = match (path, host) {
                    (Some(path), Some(host)) => relay
                        .turn_allocate(id, path, ipv6, (&user, bandwidth))
                        .map(|port| SocketAddr::new(host, port)),
                    _ => None,
                };
                if relayed.is_none() {
                    tracing::warn!(client = %client.remote, "TURN allocation refused: no relay port");
                }
                if let Some(c) = client.conn.filter(|_| relayed.is_some()) {
                    self.turn.by_conn.insert(c, id);
                    // Its connection is now an allocation's: the long idle timeout, and
                    // the core hears when it closes.
                    if let Some(flag) = self.held.get(&c) {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                core.handle_turn_allocated(Instant::now(), id, relayed);
            }
            Action::TurnPermit {
                id,
                peer,
                allow,
                any_port,
            } => relay.turn_permit(id, peer, allow, any_port),
            Action::TurnChannel { id, channel, peer } => relay.turn_channel(id, channel, peer),
            Action::TurnRelease { id } => {
                self.turn.by_conn.retain(|_, a| *a != id);
                if let Some(task) = self.turn.acceptors.remove(&id) {
                    task.abort();
                }
                relay.turn_release(id);
            }
            Action::TurnConnect {
                connection,
                peer,
                any_port,
                ..
            } => {
                // Never from the relay to the server's own services (only to relayed ports
                // of other allocations), unless the operator allowed that peer.
                let own = self
                    .turn
                    .hosts
                    .iter()
                    .any(|(l, h, _)| *h == peer.ip() || l.ip() == peer.ip());
                if own && !any_port && !relay.is_relay_port(peer.port()) {
                    tracing::info!(%peer, "TURN Connect to the server's own service refused");
                    core.handle_turn_connected(Instant::now(), connection, false);
                    return;
                }
                let events = self.events.clone();
                tokio::spawn(async move {
                    let stream = tokio::time::timeout(
                        std::time::Duration::from_secs(30),
                        tokio::net::TcpStream::connect(peer),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok);
                    let _ = events
                        .send(crate::event::Event::TurnConnected { connection, stream })
                        .await;
                });
            }
            Action::TurnJoin {
                connection,
                data_conn,
            } => {
                let peer = self.turn.peers.remove(&connection);
                match (peer, self.turn.joins.remove(&data_conn)) {
                    (Some(peer), Some(join)) => {
                        let _ = join.try_send(peer);
                    }
                    _ => tracing::debug!(connection, "TURN join with a side gone"),
                }
            }
            Action::TurnDropConnection { connection } => {
                self.turn.peers.remove(&connection);
            }
            other => tracing::error!("not a TURN action: {other:?}"),
        }
    }

    /// RFC 6062: a peer connected to a TCP allocation's relayed address.
    pub(super) fn turn_peer_arrived(
        &mut self,
        core: &mut Core,
        alloc: u64,
        remote: SocketAddr,
        stream: tokio::net::TcpStream,
    ) {
        if let Some(c) = core.handle_turn_peer(Instant::now(), alloc, remote) {
            self.turn.peers.insert(c, stream);
        }
    }

    /// RFC 6062: the connection a Connect asked for is there, or failed.
    pub(super) fn turn_connected(
        &mut self,
        core: &mut Core,
        connection: u32,
        stream: Option<tokio::net::TcpStream>,
    ) {
        let ok = stream.is_some();
        let keep = core.handle_turn_connected(Instant::now(), connection, ok);
        if let Some(s) = stream.filter(|_| keep) {
            self.turn.peers.insert(connection, s);
        }
    }

    /// RFC 6062: a client's data connection, waiting for its ConnectionBind's answer and
    /// then for the peer's connection.
    pub(super) fn turn_data_opened(
        &mut self,
        id: ConnId,
        sender: tokio::sync::mpsc::Sender<bytes::Bytes>,
        join: tokio::sync::mpsc::Sender<tokio::net::TcpStream>,
    ) {
        self.conns.insert(id, sender);
        self.turn.joins.insert(id, join);
    }

    /// A connection closed: it no longer waits to be joined.
    pub(super) fn turn_conn_closed(&mut self, id: ConnId) {
        self.turn.joins.remove(&id);
    }

    /// ChannelData or a Send indication from a stream client: to its allocation's relay.
    pub(super) fn turn_stream_data(&mut self, conn: ConnId, data: bytes::Bytes) {
        if let (Some(id), Some(relay)) = (self.turn.by_conn.get(&conn), self.relay.as_mut()) {
            relay.turn_from_stream(*id, data);
        }
    }
}

/// Accepts peers' connections to a TCP allocation's relayed address, for the core to judge.
async fn accept_peers(
    listener: tokio::net::TcpListener,
    alloc: u64,
    events: tokio::sync::mpsc::Sender<crate::event::Event>,
) {
    while let Ok((stream, remote)) = listener.accept().await {
        let ev = crate::event::Event::TurnPeerArrived {
            alloc,
            remote,
            stream,
        };
        if events.send(ev).await.is_err() {
            return;
        }
    }
}
