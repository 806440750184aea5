//! The edge: the sockets and queues the core's actions go out through (UDP in batches, stream
//! connections, new connections for TLS with the name to verify), DNS lookups, store
//! writes handed to the store's thread, and the media relay's streams.

use crate::core::{Action, ClientTxId, ConnId, Core, Flow, Transport};
use crate::event::Event;
use crate::mmsg;
use crate::store::writer::StoreOp;
use crate::transport;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// The sockets and queues the core's actions go out through.
pub(super) struct Edge {
    pub(super) udp: Vec<(SocketAddr, Arc<AsyncFd<StdUdp>>)>,
    /// UDP sends of the current batch of actions: (socket index, destination, data).
    pub(super) udp_out: Vec<(usize, SocketAddr, Bytes)>,
    pub(super) conns: HashMap<ConnId, mpsc::Sender<Bytes>>,
    pub(super) conn_by_remote: HashMap<SocketAddr, ConnId>,
    pub(super) store: std::sync::mpsc::Sender<StoreOp>,
    pub(super) events: mpsc::Sender<Event>,
    /// RFC 3263 lookups; None when no resolver could be made (other domains unreachable).
    pub(super) dns: Option<crate::dns::Dns>,
    pub(super) tls: crate::tls::Tls,
    /// The domain each TLS target of a lookup serves: its certificate must name it.
    pub(super) tls_names: HashMap<SocketAddr, String>,
    /// Destinations that answered with ICMP errors, for the core.
    pub(super) unreachable: Vec<SocketAddr>,
    /// The media relay, when it runs (`relay.mode` is not "never" and its thread started).
    pub(super) relay: Option<crate::relay::Relay>,
    /// Per stream connection, the flag that gives it the long idle timeout once a phone
    /// registered over it.
    pub(super) held: HashMap<ConnId, Arc<std::sync::atomic::AtomicBool>>,
    /// The TURN listeners and allocations of stream clients.
    pub(super) turn: super::turn::TurnEdge,
}

impl Edge {
    /// Remembers the domain each TLS target of a lookup serves: its certificate must name it
    /// (RFC 5922). Bounded; a lookup that comes again fills it anew.
    pub(super) fn remember_tls_names(&mut self, host: &str, targets: &[(Transport, SocketAddr)]) {
        if self.tls_names.len() > 10_000 {
            self.tls_names.clear();
        }
        for (t, addr) in targets {
            if *t == Transport::Tls {
                self.tls_names.insert(*addr, host.to_string());
            }
        }
    }

    /// Datagrams the kernel dropped on our UDP sockets since start.
    pub(super) fn udp_drops(&self) -> u64 {
        let sockets: Vec<_> = self.udp.iter().map(|(_, s)| s.clone()).collect();
        transport::udp_drops(&sockets)
    }

    /// Carries out the core's actions, until the answers they feed back (the relay's) leave
    /// none.
    pub(super) fn execute(&mut self, core: &mut Core) {
        loop {
            let actions = core.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.carry_out(core, action);
            }
        }
        self.flush_udp();
    }

    fn carry_out(&mut self, core: &mut Core, action: Action) {
        {
            match action {
                Action::Send { flow, data, key } => {
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        let line = data.split(|&c| c == b'\r').next().unwrap_or_default();
                        tracing::debug!(remote = %flow.remote, transport = flow.transport.as_str(),
                            "send {}", String::from_utf8_lossy(line));
                    }
                    self.send(flow, data, key);
                }
                Action::PutBinding(b) => {
                    if self.store.send(StoreOp::Put(b)).is_err() {
                        tracing::error!("store thread is gone; registrations are not persisted");
                    }
                }
                Action::DeleteBinding { aor, contact } => {
                    let _ = self.store.send(StoreOp::Delete { aor, contact });
                }
                Action::Resolve { id, query } => {
                    let events = self.events.clone();
                    match self.dns.clone() {
                        Some(dns) => {
                            tokio::spawn(async move {
                                let r = dns.resolve(&query).await;
                                tracing::debug!(host = %query.host, targets = ?r.targets, "DNS");
                                let _ = events
                                    .send(Event::Resolved {
                                        id,
                                        host: query.host,
                                        targets: r.targets,
                                        ttl: r.ttl,
                                    })
                                    .await;
                            });
                        }
                        None => {
                            tokio::spawn(async move {
                                let _ = events
                                    .send(Event::Resolved {
                                        id,
                                        host: query.host,
                                        targets: vec![],
                                        ttl: Duration::ZERO,
                                    })
                                    .await;
                            });
                        }
                    }
                }
                Action::StoreMessage(m) => {
                    let id = m.id;
                    let events = self.events.clone();
                    let done = Box::new(move |kept: bool| {
                        // The store's thread waits for the loop's queue, never the reverse.
                        let _ = events.blocking_send(Event::MessageStored { id, kept });
                    });
                    if self.store.send(StoreOp::PutMessage(m, done)).is_err() {
                        tracing::error!("store thread is gone; a message could not be kept");
                        core.handle_message_stored(std::time::Instant::now(), id, false);
                    }
                }
                Action::DeleteMessage { id } => {
                    let _ = self.store.send(StoreOp::DeleteMessage(id));
                }
                Action::ResolveEnum { id, domains } => {
                    let events = self.events.clone();
                    let dns = self.dns.clone();
                    tokio::spawn(async move {
                        let (records, ttl) = match dns {
                            Some(dns) => dns.enum_records(&domains).await,
                            None => (vec![], Duration::from_secs(60)),
                        };
                        tracing::debug!(domains = ?domains, records = records.len(), "ENUM");
                        let _ = events.send(Event::Enum { id, records, ttl }).await;
                    });
                }
                Action::SaveForward(f) => {
                    if self.store.send(StoreOp::Forward(f)).is_err() {
                        tracing::error!(
                            "store thread is gone; forwarding changes are not persisted"
                        );
                    }
                }
                Action::Ban { source, secs } => crate::banlist::ban(source, secs),
                Action::HoldConnection { conn } => {
                    if let Some(flag) = self.held.get(&conn) {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Action::LiftBan { source } => crate::banlist::lift(source),
                a @ (Action::TurnAllocate { .. }
                | Action::TurnPermit { .. }
                | Action::TurnChannel { .. }
                | Action::TurnRelease { .. }
                | Action::TurnConnect { .. }
                | Action::TurnJoin { .. }
                | Action::TurnDropConnection { .. }) => self.carry_out_turn(core, a),
                relay => self.carry_out_relay(core, relay),
            }
        }
    }

    /// The media relay's actions; reserves and queries are answered at once.
    fn carry_out_relay(&mut self, core: &mut Core, action: Action) {
        let Some(relay) = self.relay.as_mut() else {
            tracing::error!("a relay action with no relay running: {action:?}");
            return;
        };
        match action {
            Action::ReserveRelayPorts { ipv6, count } => {
                let ports = relay.reserve(ipv6, count);
                core.handle_relay_reserved(Instant::now(), ipv6, ports);
            }
            Action::OpenRelayStream { stream, ipv6 } => relay.open(stream, ipv6),
            Action::SetRelayPeer {
                stream,
                side,
                rtp,
                rtcp,
                signalling,
            } => relay.set_peer(stream, side, rtp, rtcp, signalling),
            Action::CloseRelayStreams { streams, ended } => {
                if let Some((call_id, why)) = ended {
                    let [from_caller, from_callee] = relay.packets(&streams);
                    tracing::info!(
                        call_id,
                        why,
                        from_caller,
                        from_callee,
                        "relayed call ended; media ports freed"
                    );
                }
                for id in streams {
                    relay.close(id);
                }
            }
            Action::QueryRelay { call_id, streams } => {
                let [a, b] = relay.packets(&streams);
                core.handle_relay_counters(Instant::now(), &call_id, a + b);
            }
            other => tracing::error!("not a relay action: {other:?}"),
        }
    }

    /// Sends the queued datagrams, one sendmmsg per socket; what would block goes out
    /// asynchronously.
    fn flush_udp(&mut self) {
        if self.udp_out.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.udp_out);
        out.sort_by_key(|(i, _, _)| *i);
        for (idx, sock) in self.udp.iter().enumerate().map(|(i, (_, s))| (i, s)) {
            let mine: Vec<(SocketAddr, &[u8])> = out
                .iter()
                .filter(|(i, _, _)| *i == idx)
                .map(|(_, a, d)| (*a, d.as_ref()))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let sent = match mmsg::send_batch(sock.as_raw_fd(), &mine, &mut self.unreachable) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => {
                    tracing::debug!("udp send failed: {e}");
                    mine.len()
                }
            };
            if sent < mine.len() {
                let rest = mine[sent..]
                    .iter()
                    .map(|(to, d)| (*to, Bytes::copy_from_slice(d)))
                    .collect();
                transport::send_later(sock.get_ref(), rest);
            }
        }
        out.clear();
        self.udp_out = out;
    }

    /// Puts one message on the wire: UDP from the listener's socket, TCP on the flow's
    /// connection while it is open, else on a new one.
    fn send(&mut self, flow: Flow, data: Bytes, key: Option<ClientTxId>) {
        if data.is_empty() {
            return;
        }
        match flow.transport {
            Transport::Udp if self.turn.send_udp(flow.local, flow.remote, &data) => {}
            Transport::Udp => {
                let idx = self
                    .udp
                    .iter()
                    .position(|(a, _)| *a == flow.local)
                    .or_else(|| {
                        self.udp
                            .iter()
                            .position(|(a, _)| a.is_ipv4() == flow.remote.is_ipv4())
                    });
                match idx {
                    Some(i) => self.udp_out.push((i, flow.remote, data)),
                    None => {
                        tracing::warn!(remote = %flow.remote, "no UDP socket for this address family")
                    }
                }
            }
            Transport::Ws | Transport::Wss => {
                // Only over the browser's own connection: nobody can open one towards it.
                if let Some(s) = flow.conn.and_then(|c| self.conns.get(&c)) {
                    match s.try_send(data) {
                        Ok(()) => return,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(remote = %flow.remote, "websocket not reading; closed");
                            if let Some(c) = flow.conn {
                                self.conns.remove(&c);
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
                tracing::debug!(remote = %flow.remote, "websocket connection gone; not sent");
                if key.is_some() {
                    let (events, remote) = (self.events.clone(), flow.remote);
                    tokio::spawn(async move {
                        let _ = events.send(Event::SendFailed { key, remote }).await;
                    });
                }
            }
            Transport::Tcp | Transport::Tls => {
                let conn = flow
                    .conn
                    .filter(|c| self.conns.contains_key(c))
                    .or_else(|| self.conn_by_remote.get(&flow.remote).copied());
                if let Some((c, s)) = conn.and_then(|c| self.conns.get(&c).map(|s| (c, s))) {
                    match s.try_send(data.clone()) {
                        Ok(()) => return,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The peer reads nothing: cut it off rather than queue forever.
                            tracing::warn!(remote = %flow.remote, "connection not reading; closed");
                            self.conns.remove(&c);
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
                let tls = match flow.transport {
                    Transport::Tls => {
                        // RFC 5922: the domain DNS was asked for, else the address itself.
                        let name = self
                            .tls_names
                            .get(&flow.remote)
                            .cloned()
                            .unwrap_or_else(|| flow.remote.ip().to_string());
                        match crate::tls::server_name(&name) {
                            Some(n) => Some((self.tls.connector.clone(), n)),
                            None => {
                                tracing::warn!(%name, "not a name a certificate can carry");
                                return;
                            }
                        }
                    }
                    _ => None,
                };
                tokio::spawn(transport::connect_and_send(
                    flow.local,
                    flow.remote,
                    data,
                    key,
                    self.events.clone(),
                    tls,
                ));
            }
        }
    }
}
