//! TCP relays (RFC 6062): an allocation whose peers are reached over TCP connections. A
//! Connect asks the edge to open one to a peer; a peer that connects to the relayed address
//! is announced with a ConnectionAttempt; either way the client joins the peer's connection
//! with a ConnectionBind on a new connection of its own, which the edge then pipes to the
//! peer. Connections not joined within 30 s are dropped.

use super::requests::Asked;
use super::{TcpConnection, TcpState};
use crate::{Action, Core};
use sip::turn::{attr, Class, Message, Writer};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a peer's connection waits for the client's ConnectionBind (RFC 6062 §5.2).
const BIND_WAIT: Duration = Duration::from_secs(30);

impl Core {
    /// Connect (RFC 6062 §5.2): a connection from the relayed address to the peer.
    pub(super) fn turn_connect(&mut self, now: Instant, asked: &Asked<'_>, msg: &Message<'_>) {
        let Some(id) = self.turn_allocation(asked) else {
            return;
        };
        let Some(peer) = msg.peers.first().copied() else {
            return self.turn_error(asked, 400, "Bad Request");
        };
        let turn = &self.calls.turn;
        if !turn.allocations.get(&id).is_some_and(|a| a.tcp) {
            return self.turn_error(asked, 400, "Bad Request: Not A TCP Allocation");
        }
        if turn
            .connections
            .values()
            .any(|c| c.alloc == id && c.peer == peer)
        {
            return self.turn_error(asked, 446, "Connection Already Exists");
        }
        let max = turn.settings().permissions_per_allocation;
        if turn.connections.values().filter(|c| c.alloc == id).count() >= max {
            return self.turn_error(asked, 447, "Connection Timeout or Failure");
        }
        if self.peers_refused(asked, id, &[peer]) {
            return;
        }
        let connection = self.new_connection_id();
        let any_port =
            super::credentials::explicitly_allowed(self.calls.turn.settings(), peer.ip());
        self.calls.turn.connections.insert(
            connection,
            TcpConnection {
                alloc: id,
                peer,
                state: TcpState::Connecting(asked.txid),
                since: now,
            },
        );
        self.out.push(Action::TurnConnect {
            id,
            connection,
            peer,
            any_port,
        });
    }

    /// The edge's connection to the peer of a Connect succeeded or failed: the Connect is
    /// answered (with the CONNECTION-ID the client binds). Returns whether the edge is to
    /// keep the connection (false: its allocation or request is gone; drop it).
    pub fn handle_turn_connected(&mut self, now: Instant, connection: u32, ok: bool) -> bool {
        let turn = &mut self.calls.turn;
        let Some(c) = turn.connections.get_mut(&connection) else {
            return false;
        };
        let TcpState::Connecting(txid) = c.state else {
            return false;
        };
        let Some(a) = turn.allocations.get(&c.alloc) else {
            return false;
        };
        let (client, key) = (a.client, a.key);
        let mut w;
        if ok {
            c.state = TcpState::AwaitingBind;
            c.since = now;
            w = Writer::new(sip::turn::CONNECT, Class::Success, &txid);
            w.attr(attr::CONNECTION_ID, &connection.to_be_bytes());
        } else {
            turn.connections.remove(&connection);
            w = Writer::new(sip::turn::CONNECT, Class::Error, &txid);
            w.error(447, "Connection Timeout or Failure");
        }
        self.turn_send(client, w.finish(Some(&key)));
        ok
    }

    /// A peer connected to TCP allocation `id`'s relayed address: if it has a permission,
    /// the client hears of it (ConnectionAttempt) and the connection waits for its bind;
    /// its CONNECTION-ID, or None (the edge drops it).
    pub fn handle_turn_peer(&mut self, now: Instant, id: u64, peer: SocketAddr) -> Option<u32> {
        let a = self.calls.turn.allocations.get(&id)?;
        if !a.tcp || !a.permissions.contains_key(&peer.ip()) {
            tracing::debug!(%peer, "TURN TCP peer without permission refused");
            return None;
        }
        let client = a.client;
        let turn = &self.calls.turn;
        let max = turn.settings().permissions_per_allocation;
        if turn.connections.values().filter(|c| c.alloc == id).count() >= max {
            return None;
        }
        let connection = self.new_connection_id();
        self.calls.turn.connections.insert(
            connection,
            TcpConnection {
                alloc: id,
                peer,
                state: TcpState::AwaitingBind,
                since: now,
            },
        );
        let mut txid = [0u8; 12];
        txid[8..].copy_from_slice(&connection.to_be_bytes());
        let mut w = Writer::new(sip::turn::CONNECTION_ATTEMPT, Class::Indication, &txid);
        w.attr(attr::CONNECTION_ID, &connection.to_be_bytes())
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
        self.turn_send(client, w.finish(None));
        Some(connection)
    }

    /// ConnectionBind (RFC 6062 §5.4), on a new connection of the client: that connection
    /// is joined to the peer's.
    pub(super) fn turn_connection_bind(&mut self, asked: &Asked<'_>, msg: &Message<'_>) {
        let Some(data_conn) = asked.flow.conn else {
            return self.turn_error(asked, 400, "Bad Request");
        };
        let turn = &mut self.calls.turn;
        let owner_ok = |alloc: u64| {
            turn.allocations
                .get(&alloc)
                .is_some_and(|a| a.user == asked.account)
        };
        let connection = match msg.connection_id {
            Some(c)
                if turn.connections.get(&c).is_some_and(|x| {
                    matches!(x.state, TcpState::AwaitingBind) && owner_ok(x.alloc)
                }) =>
            {
                c
            }
            _ => return self.turn_error(asked, 400, "Bad Request: No Such Connection"),
        };
        // Joined: the edge's pipe owns it from now on, and it no longer counts here.
        turn.connections.remove(&connection);
        self.turn_ok(asked);
        self.out.push(Action::TurnJoin {
            connection,
            data_conn,
        });
    }

    /// Drops connections whose client never bound them.
    pub(super) fn expire_tcp_connections(&mut self, now: Instant) {
        let turn = &mut self.calls.turn;
        let late: Vec<u32> = turn
            .connections
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.since) >= BIND_WAIT)
            .map(|(k, _)| *k)
            .collect();
        for c in late {
            turn.connections.remove(&c);
            self.out.push(Action::TurnDropConnection { connection: c });
        }
    }

    fn new_connection_id(&mut self) -> u32 {
        self.origin.next_id += 1;
        self.origin.next_id as u32
    }
}
