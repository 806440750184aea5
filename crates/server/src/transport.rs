//! Sockets: UDP listeners (read by the event loop itself), TCP listeners and connections with
//! RFC 3261 §18.3 framing and RFC 5626 §4.4.1 CRLF keep-alives, whose messages reach the event
//! loop as `Event::Message`. Nothing here interprets SIP beyond finding message boundaries.

use crate::core::Transport;
use crate::core::{ClientTxId, ConnId, Flow};
use crate::event::Event;
use crate::mmsg::RecvBatch;
use bytes::{Bytes, BytesMut};
use sip::message::{frame, Framing, MAX_MESSAGE};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::conn_limits::{self, Slot, HANDSHAKE_DEADLINE};
use std::sync::atomic::AtomicBool;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
/// Datagrams one `recvmmsg` reads from a SIP socket.
pub const BATCH: usize = 32;

/// The largest SIP datagram read whole: longer ones are dropped unread beyond this.
pub const MAX_SIP_DATAGRAM: usize = 16 * 1024;

/// Datagrams dropped for being longer than `MAX_SIP_DATAGRAM`, since start.
pub static OVERSIZED: AtomicUsize = AtomicUsize::new(0);

/// Messages queued for one connection's writer; a peer that reads nothing is cut off.
pub(crate) const WRITE_QUEUE: usize = 512;

/// Binds a UDP listening socket (not yet registered with the event loop).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
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
    crate::mmsg::report_unreachable(std::os::fd::AsRawFd::as_raw_fd(&s), addr.is_ipv6());
    Ok(s.into())
}

/// Binds a TCP listening socket (IPv6 only for an IPv6 address, so both wildcards can be
/// bound; SO_REUSEADDR so a restart can bind at once).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_tcp_std(addr)?)
}

/// The same, as a standard socket (non-blocking), for a thread without the event loop.
pub fn bind_tcp_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
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
    Ok(s.into())
}

/// A UDP listener, read by the event loop itself (no hand-over to another task).
///
/// It is registered for readability only. Tokio's `UdpSocket` also registers writability,
/// and then every datagram we send wakes the loop once more when the kernel frees its buffer
/// (an EPOLLOUT edge), for nothing: one context switch per response. Sends go straight to
/// the socket (`sendmmsg`); the rare one that would block waits on a duplicate descriptor
/// registered for writability only while it waits (`send_later`).
pub struct UdpListener {
    /// The address the socket is bound to.
    pub local: SocketAddr,
    socket: Arc<AsyncFd<std::net::UdpSocket>>,
    batch: RecvBatch,
    /// The last `recvmmsg` filled the whole batch: more datagrams were waiting.
    was_full: bool,
}

impl UdpListener {
    /// Registers the socket with the running event loop.
    pub fn new(socket: std::net::UdpSocket, local: SocketAddr) -> std::io::Result<UdpListener> {
        Ok(UdpListener {
            local,
            socket: Arc::new(register(socket, Interest::READABLE)?),
            batch: RecvBatch::with_slot(BATCH, MAX_SIP_DATAGRAM),
            was_full: false,
        })
    }

    /// Whether the last batch read was full (datagrams wait faster than they are taken).
    pub fn was_full(&self) -> bool {
        self.was_full
    }

    /// The socket, for sending.
    pub fn sender(&self) -> Arc<AsyncFd<std::net::UdpSocket>> {
        self.socket.clone()
    }

    /// Waits until datagrams are waiting, then receives as many as one system call brings
    /// (recvmmsg) into `out`. Empty datagrams are dropped here; CRLF keep-alives go on to the
    /// core, which notes that the phone keeps its mapping alive.
    /// Destinations that answered with ICMP errors go to `unreachable`.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
        out: &mut Vec<(Flow, Bytes)>,
        unreachable: &mut Vec<SocketAddr>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let fd = self.socket.as_raw_fd();
        loop {
            let mut guard = match self.socket.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => {
                    tracing::warn!(local = %self.local, "udp socket failed: {e}");
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            };
            let n = match self.batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) if crate::mmsg::is_icmp_report(&e) => {
                    // An ICMP error for something we sent: which destination, from the
                    // error queue (IP_RECVERR).
                    unreachable.extend(crate::mmsg::unreachable(fd));
                    if !unreachable.is_empty() {
                        return Poll::Ready(());
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(local = %self.local, "udp receive error: {e}");
                    continue;
                }
            };
            // A short batch means the queue was empty a moment ago: clear the readiness now
            // rather than pay one more recvmmsg that would only say EAGAIN. Tokio clears it
            // only if no readiness event arrived since, so a datagram landing meanwhile
            // still wakes us.
            self.was_full = n >= self.batch.capacity();
            if n < self.batch.capacity() {
                guard.clear_ready();
            }
            for i in 0..n {
                let (data, remote) = self.batch.get(i);
                let Some(remote) = remote.filter(|_| !data.is_empty()) else {
                    continue;
                };
                if self.batch.truncated(i) {
                    // Longer than any SIP request has a reason to be over UDP (RFC 3261
                    // §18.1.1 sends those over TCP): its head alone cannot be answered
                    // rightly, and a flood of such datagrams must cost as little as possible.
                    OVERSIZED.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "datagram over {MAX_SIP_DATAGRAM} bytes dropped");
                    continue;
                }
                let flow = Flow {
                    transport: Transport::Udp,
                    local: self.local,
                    remote,
                    conn: None,
                };
                out.push((flow, Bytes::copy_from_slice(data)));
            }
            return Poll::Ready(());
        }
    }
}

/// Registers a socket with the event loop for these readiness events only.
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> std::io::Result<AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the socket owns its descriptor, which stays open and the same for as long as
    // the AsyncFd (which owns the socket) lives.
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest) }?)
}

/// Datagrams the kernel dropped at these sockets because their receive buffers were full
/// (the event loop was behind): SO_MEMINFO's drop count.
pub fn udp_drops(sockets: &[Arc<AsyncFd<std::net::UdpSocket>>]) -> u64 {
    sockets
        .iter()
        .map(|s| {
            let mut info = [0u32; 16];
            let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
            // SAFETY: SO_MEMINFO writes at most `len` bytes into `info` and updates `len`.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_MEMINFO,
                    info.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            let drops = libc::SK_MEMINFO_DROPS as usize;
            if rc == 0 && len as usize > drops * 4 {
                info[drops] as u64
            } else {
                0
            }
        })
        .sum()
}

/// Sends datagrams that would have blocked, once the socket can take them. A duplicate
/// descriptor is registered for writability for just that long.
pub fn send_later(socket: &std::net::UdpSocket, items: Vec<(SocketAddr, Bytes)>) {
    let dup = match socket.try_clone() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                "udp send queue full and no descriptor to wait on ({e}); {} datagram(s) dropped",
                items.len()
            );
            return;
        }
    };
    tokio::spawn(async move {
        let Ok(fd) = register(dup, Interest::WRITABLE) else {
            return;
        };
        for (to, data) in items {
            loop {
                let Ok(mut guard) = fd.writable().await else {
                    return;
                };
                match guard.try_io(|s| s.get_ref().send_to(&data, to)) {
                    Ok(_) => break,
                    Err(_would_block) => continue,
                }
            }
        }
    });
}

/// Accepts TCP connections, or TLS ones when `tls` is given (the handshake bounded in time).
pub async fn tcp_accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    events: mpsc::Sender<Event>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if crate::banlist::is_banned(remote.ip()) {
                    tracing::debug!(%remote, "connection from a banned source refused");
                    continue;
                }
                // A slot from the accept on: a handshake in progress counts too.
                let slot = match conn_limits::take_slot(remote.ip()) {
                    Ok(s) => s,
                    Err(why) => {
                        refused(remote, why);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let events = events.clone();
                match &tls {
                    None => {
                        let conn = Conn::accepted(Transport::Tcp, local, remote, slot);
                        tokio::spawn(run_connection(stream, conn, events, None));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => {
                                    let conn = Conn::accepted(Transport::Tls, local, remote, slot);
                                    run_connection(s, conn, events, None).await
                                }
                                Ok(Err(e)) => tracing::info!(%remote, "TLS handshake failed: {e}"),
                                Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%local, "tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Opens a connection for an outgoing request, sends `first` on it and then serves it like an
/// accepted one; with `tls`, a TLS connection whose server certificate must name the given
/// server. On failure the core hears `SendFailed` for `key`.
pub async fn connect_and_send(
    local: SocketAddr,
    remote: SocketAddr,
    first: Bytes,
    key: Option<ClientTxId>,
    events: mpsc::Sender<Event>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
) {
    let slot = match conn_limits::take_slot(remote.ip()) {
        Ok(s) => s,
        Err(why) => {
            refused(remote, why);
            let _ = events.send(Event::SendFailed { key, remote }).await;
            return;
        }
    };
    match tokio::time::timeout(HANDSHAKE_DEADLINE, TcpStream::connect(remote)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    let conn = Conn::opened(Transport::Tcp, local, remote, slot);
                    run_connection(stream, conn, events, Some(first)).await
                }
                Some((connector, name)) => {
                    let shown = format!("{name:?}");
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, connector.connect(name, stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            let conn = Conn::opened(Transport::Tls, local, remote, slot);
                            run_connection(s, conn, events, Some(first)).await
                        }
                        Ok(Err(e)) => {
                            // RFC 5922: a certificate that does not name the domain ends here.
                            tracing::warn!(%remote, server = %shown, "TLS refused: {e}");
                            let _ = events.send(Event::SendFailed { key, remote }).await;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "TLS handshake timed out");
                            let _ = events.send(Event::SendFailed { key, remote }).await;
                        }
                    }
                }
            }
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

/// A refused connection: a debug line each, and a warning when a source first reaches its
/// share (not one per attempt: a flood of connections must not flood the log).
pub(crate) fn refused(remote: SocketAddr, why: conn_limits::Refused) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    tracing::debug!(%remote, ?why, "stream connection refused");
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            source = %remote,
            ?why,
            "stream connections refused: {} per source, {} in all (logged once)",
            conn_limits::MAX_PER_SOURCE,
            conn_limits::MAX_CONNECTIONS
        );
    }
}

/// A stream connection about to be served: where it runs, its slot in the counts, and
/// whether a phone registered over it (which earns it the long idle timeout).
pub(crate) struct Conn {
    pub(crate) transport: Transport,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    pub(crate) _slot: Slot,
    pub(crate) registered: Arc<AtomicBool>,
}

/// A number for a new stream connection, unique while the server runs.
pub(crate) fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

impl Conn {
    /// A connection a peer opened to us: short idle timeout until a registration uses it.
    pub(crate) fn accepted(
        transport: Transport,
        local: SocketAddr,
        remote: SocketAddr,
        slot: Slot,
    ) -> Conn {
        Conn {
            transport,
            local,
            remote,
            _slot: slot,
            registered: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A connection we opened: ours to keep (the long idle timeout).
    fn opened(transport: Transport, local: SocketAddr, remote: SocketAddr, slot: Slot) -> Conn {
        Conn {
            registered: Arc::new(AtomicBool::new(true)),
            ..Conn::accepted(transport, local, remote, slot)
        }
    }
}

async fn run_connection<S>(stream: S, conn: Conn, events: mpsc::Sender<Event>, first: Option<Bytes>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let Conn {
        transport,
        local,
        remote,
        _slot,
        registered,
    } = conn;
    let id = next_conn_id();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if let Some(first) = first {
        let _ = tx.try_send(first);
    }
    let flow = Flow {
        transport,
        local,
        remote,
        conn: Some(id),
    };
    if events
        .send(Event::ConnOpened {
            id,
            remote,
            sender: tx.clone(),
            registered: registered.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            // The flush hands TLS records to the socket (a no-op for plain TCP).
            if let Err(e) = async {
                wr.write_all(&data).await?;
                wr.flush().await
            }
            .await
            {
                tracing::debug!(%remote, "stream write failed: {e}");
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(8192);
    // When the first byte of the message being read arrived (None between messages).
    let mut message_started: Option<tokio::time::Instant> = None;
    'read: loop {
        // Between messages the idle timeout runs; inside one, its deadline.
        let wait = match message_started {
            Some(t) => conn_limits::MESSAGE_DEADLINE.saturating_sub(t.elapsed()),
            None if registered.load(Ordering::Relaxed) => conn_limits::IDLE_REGISTERED,
            None => conn_limits::IDLE_UNREGISTERED,
        };
        match tokio::time::timeout(wait, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                let why = if message_started.is_some() {
                    "a message took too long to arrive"
                } else {
                    "idle"
                };
                tracing::debug!(%remote, why, "closing stream connection");
                break;
            }
            Ok(Ok(_)) => {}
        }
        message_started.get_or_insert_with(tokio::time::Instant::now);
        if crate::banlist::is_banned(remote.ip()) {
            tracing::debug!(%remote, "stream from a banned source closed");
            break;
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
                    if buf.is_empty() {
                        message_started = None;
                    }
                    if ping {
                        // RFC 5626 §4.4.1: a double-CRLF ping gets a single CRLF pong.
                        let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                }
                Framing::Message(n) => {
                    let data = buf.split_to(n).freeze();
                    // The next message's clock starts with its first byte.
                    message_started = (!buf.is_empty()).then(tokio::time::Instant::now);
                    // Backpressure: a stream waits for the event loop instead of queueing.
                    if events.send(Event::Message { flow, data }).await.is_err() {
                        break 'read;
                    }
                }
                Framing::Broken(e) => {
                    // RFC 4475 ncl: a stream whose framing is lost cannot be resynchronised.
                    tracing::info!(%remote, "closing stream connection: {e}");
                    let data = buf.split().freeze();
                    let _ = events.send(Event::Message { flow, data }).await;
                    break 'read;
                }
            }
        }
    }
    drop(tx);
    let _ = events.send(Event::ConnClosed { id, remote }).await;
    // Let queued responses (e.g. the 400 for a broken stream) go out before closing.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}
/// The address to write in headers for a wildcard listener: the configured one, else the
/// source address the kernel would use for an outside destination (no packet is sent).
pub fn guess_host(bind: SocketAddr, advertise: Option<IpAddr>) -> IpAddr {
    if !bind.ip().is_unspecified() {
        return bind.ip();
    }
    if let Some(a) = advertise.filter(|a| a.is_ipv4() == bind.is_ipv4()) {
        return a;
    }
    let (probe, any): (SocketAddr, SocketAddr) = if bind.is_ipv4() {
        (
            "198.18.0.1:9".parse().unwrap_or(bind),
            "0.0.0.0:0".parse().unwrap_or(bind),
        )
    } else {
        (
            "[2001:db8::1]:9".parse().unwrap_or(bind),
            "[::]:0".parse().unwrap_or(bind),
        )
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(probe).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(if bind.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        })
}
