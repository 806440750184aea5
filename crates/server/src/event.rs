//! What the event loop is woken by: messages and connections from the transports, send
//! failures, DNS answers, control commands, signals. Produced by the transport tasks, the
//! control channel and the signal handler; consumed by the runtime alone.

use crate::control::Request;
use crate::core::{ClientTxId, ConnId, Flow, Transport};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

pub enum Event {
    Message {
        flow: Flow,
        data: Bytes,
    },
    ConnOpened {
        id: ConnId,
        remote: SocketAddr,
        sender: mpsc::Sender<Bytes>,
    },
    ConnClosed {
        id: ConnId,
        remote: SocketAddr,
    },
    SendFailed {
        key: Option<ClientTxId>,
        remote: SocketAddr,
    },
    /// A command from the control socket, with where its answer goes.
    Control(Request),
    /// DNS answered a lookup of the core's (RFC 3263 targets, in order).
    Resolved {
        id: u64,
        /// The domain asked for: TLS targets must show a certificate for it (RFC 5922).
        host: String,
        targets: Vec<(Transport, SocketAddr)>,
        ttl: Duration,
    },
    /// SIGHUP: re-read the config file and the store.
    Reload,
    Shutdown,
}

impl From<Request> for Event {
    fn from(r: Request) -> Event {
        Event::Control(r)
    }
}
