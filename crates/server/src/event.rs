//! What the event loop is woken by: messages and connections from the transports, send
//! failures, DNS answers, control commands, signals. Produced by the transport tasks, the
//! control channel and the signal handler; consumed by the runtime alone.

use crate::control::Request;
use crate::core::{ClientTxId, ConnId, Flow, Transport};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// One thing for the event loop to handle, sent to it over a channel.
pub enum Event {
    /// A message framed on a stream connection (TCP or TLS); UDP is read by the loop itself.
    Message {
        /// The connection it came in on.
        flow: Flow,
        /// One whole message; when the framing is lost, the unframed rest of the stream, so
        /// the core can answer it before the connection closes.
        data: Bytes,
    },
    /// A STUN or TURN request on a TURN listener, for the core.
    Turn {
        /// Where it came from (the listener, the client, its connection for streams).
        flow: Flow,
        /// The whole message.
        data: Bytes,
    },
    /// ChannelData or a Send indication a TURN client sent over its stream connection.
    TurnData {
        /// The connection.
        conn: ConnId,
        /// One whole frame.
        data: Bytes,
    },
    /// TURN (RFC 6062): a peer connected to a TCP allocation's relayed address.
    TurnPeerArrived {
        /// The allocation.
        alloc: u64,
        /// The peer.
        remote: SocketAddr,
        /// Its connection, kept until the client binds it.
        stream: tokio::net::TcpStream,
    },
    /// TURN (RFC 6062): the connection to a peer a Connect asked for (None: it failed).
    TurnConnected {
        /// Its CONNECTION-ID.
        connection: u32,
        /// The connection.
        stream: Option<tokio::net::TcpStream>,
    },
    /// TURN (RFC 6062): a client opened a data connection (it starts with ConnectionBind).
    TurnDataOpened {
        /// Its number.
        id: ConnId,
        /// Takes the answer to the ConnectionBind.
        sender: mpsc::Sender<Bytes>,
        /// Takes the peer's connection once bound.
        join: mpsc::Sender<tokio::net::TcpStream>,
    },
    /// A stream connection was accepted or opened by us.
    ConnOpened {
        /// Its number, used in `Flow::conn`.
        id: ConnId,
        /// The peer's address.
        remote: SocketAddr,
        /// Queues bytes for the connection's writer task.
        sender: mpsc::Sender<Bytes>,
        /// Set when a phone registers over it: it then gets the long idle timeout.
        registered: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
    /// A stream connection ended (peer closed, read error, idle timeout or broken framing).
    ConnClosed {
        /// Its number.
        id: ConnId,
        /// The peer's address.
        remote: SocketAddr,
    },
    /// A connection we opened to send a message failed (connect or TLS handshake refused or
    /// timed out), so the message never left.
    SendFailed {
        /// The client transaction that sent it, if any: it fails at once instead of timing out.
        key: Option<ClientTxId>,
        /// Where it was going.
        remote: SocketAddr,
    },
    /// A command from the control socket, with where its answer goes.
    Control(Request),
    /// DNS answered a lookup of the core's (RFC 3263 targets, in order).
    Resolved {
        /// The core's number for the lookup (from its resolve action).
        id: u64,
        /// The domain asked for: TLS targets must show a certificate for it (RFC 5922).
        host: String,
        /// Where to send, best first; empty when nothing was found.
        targets: Vec<(Transport, SocketAddr)>,
        /// How long the answer may be reused.
        ttl: Duration,
    },
    /// The store kept (or could not keep) a message for an offline user.
    MessageStored {
        /// The message.
        id: u64,
        /// Whether it is in the store.
        kept: bool,
    },
    /// ENUM answered a lookup of the core's (NAPTR records of a number).
    Enum {
        /// The core's number for the lookup.
        id: u64,
        /// The records found (none: no SIP address known).
        records: Vec<crate::core::numbers::EnumRecord>,
        /// How long the answer may be reused.
        ttl: Duration,
    },
    /// SIGHUP: re-read the config file and the store.
    Reload,
    /// SIGTERM or SIGINT: stop the server.
    Shutdown,
}

impl From<Request> for Event {
    fn from(r: Request) -> Event {
        Event::Control(r)
    }
}
