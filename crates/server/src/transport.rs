//! Sockets: UDP receive loops, TCP listeners and connections with RFC 3261 §18.3 framing and
//! RFC 5626 §4.4.1 CRLF keep-alives. Everything received is handed to the event loop as
//! `Event::Message`; nothing here interprets SIP beyond finding message boundaries.

use crate::config::Transport;
use crate::core::{ConnId, Flow};
use crate::mmsg::RecvBatch;
use crate::runtime::Event;
use bytes::{Bytes, BytesMut};
use sip::message::{frame, Framing, MAX_MESSAGE};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Closes stream connections that send nothing for this long (phones send keep-alives or
/// re-register well within it).
const IDLE: Duration = Duration::from_secs(900);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
/// Datagrams dropped because the event loop was behind.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Open stream connections, capped at `MAX_CONNECTIONS`.
static OPEN: AtomicUsize = AtomicUsize::new(0);
pub const MAX_CONNECTIONS: usize = 8192;
/// Messages queued for one connection's writer; a peer that reads nothing is cut off.
const WRITE_QUEUE: usize = 512;

pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // So that 0.0.0.0:5060 and [::]:5060 can both be bound.
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Receives datagrams forever, as many per system call as are waiting (recvmmsg), and posts
/// them to the event loop as one batch.
pub async fn udp_loop(socket: Arc<UdpSocket>, local: SocketAddr, events: mpsc::Sender<Event>) {
    let mut batch = RecvBatch::new(32);
    let fd = socket.as_raw_fd();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!(%local, "udp socket failed: {e}");
            return;
        }
        // A short batch means the queue was empty a moment ago: report WouldBlock from
        // inside try_io so tokio clears the readiness now, instead of paying one more
        // recvmmsg that would only return EAGAIN. Tokio clears it only if no new readiness
        // event arrived since, so a datagram landing meanwhile still wakes us.
        let mut short = 0;
        let n = match socket.try_io(Interest::READABLE, || {
            let n = batch.recv(fd)?;
            if n < batch.capacity() {
                short = n;
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && short > 0 => short,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // ICMP port unreachable surfaces here on Linux; it is not fatal.
                tracing::debug!(%local, "udp receive error: {e}");
                continue;
            }
        };
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            let (data, remote) = batch.get(i);
            // A lone CRLF (or CRLFCRLF) is a keep-alive; nothing to answer over UDP.
            let Some(remote) = remote.filter(|_| !data.iter().all(|&c| c == b'\r' || c == b'\n'))
            else {
                continue;
            };
            let flow = Flow {
                transport: Transport::Udp,
                local,
                remote,
                conn: None,
            };
            items.push((flow, Bytes::copy_from_slice(data)));
        }
        if items.is_empty() {
            continue;
        }
        let count = items.len() as u64;
        match events.try_send(Event::Datagrams(items)) {
            Ok(()) => {}
            // Overload: drop the datagrams as a full socket buffer would; senders retransmit.
            // Memory stays bounded.
            Err(mpsc::error::TrySendError::Full(_)) => {
                DROPPED.fetch_add(count, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

pub async fn tcp_accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    events: mpsc::Sender<Event>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if OPEN.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    tracing::warn!(%remote, "too many connections ({MAX_CONNECTIONS}); refused");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tokio::spawn(run_connection(stream, local, remote, events.clone(), None));
            }
            Err(e) => {
                tracing::warn!(%local, "tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Opens a connection for an outgoing request, sends `first` on it and then serves it like an
/// accepted one. On failure the core hears `SendFailed` for `key`.
pub async fn connect_and_send(
    local: SocketAddr,
    remote: SocketAddr,
    first: Bytes,
    key: Option<String>,
    events: mpsc::Sender<Event>,
) {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            run_connection(stream, local, remote, events, Some(first)).await;
        }
        Ok(Err(e)) => {
            tracing::info!(%remote, "tcp connect failed: {e}");
            let _ = events.send(Event::SendFailed { key, remote }).await;
        }
        Err(_) => {
            tracing::info!(%remote, "tcp connect timed out");
            let _ = events.send(Event::SendFailed { key, remote }).await;
        }
    }
}

async fn run_connection(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    events: mpsc::Sender<Event>,
    first: Option<Bytes>,
) {
    let id: ConnId = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = stream.into_split();
    OPEN.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if let Some(first) = first {
        let _ = tx.try_send(first);
    }
    let flow = Flow {
        transport: Transport::Tcp,
        local,
        remote,
        conn: Some(id),
    };
    if events
        .send(Event::ConnOpened {
            id,
            remote,
            sender: tx.clone(),
        })
        .await
        .is_err()
    {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if let Err(e) = wr.write_all(&data).await {
                tracing::debug!(%remote, "tcp write failed: {e}");
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(8192);
    'read: loop {
        match tokio::time::timeout(IDLE, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        loop {
            match frame(&buf) {
                Framing::Incomplete => {
                    if buf.len() > MAX_MESSAGE {
                        break 'read;
                    }
                    break;
                }
                Framing::KeepAlive { consumed, ping } => {
                    let _ = buf.split_to(consumed);
                    if ping {
                        // RFC 5626 §4.4.1: a double-CRLF ping gets a single CRLF pong.
                        let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                }
                Framing::Message(n) => {
                    let data = buf.split_to(n).freeze();
                    // Backpressure: a stream waits for the event loop instead of queueing.
                    if events.send(Event::Message { flow, data }).await.is_err() {
                        break 'read;
                    }
                }
                Framing::Broken(e) => {
                    // RFC 4475 ncl: a stream whose framing is lost cannot be resynchronised.
                    tracing::info!(%remote, "closing tcp connection: {e}");
                    let data = buf.split().freeze();
                    let _ = events.send(Event::Message { flow, data }).await;
                    break 'read;
                }
            }
        }
    }
    drop(tx);
    let _ = events.send(Event::ConnClosed { id, remote }).await;
    OPEN.fetch_sub(1, Ordering::Relaxed);
    // Let queued responses (e.g. the 400 for a broken stream) go out before closing.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}
