//! TURN over TCP and TLS (RFC 8656 §3.1, and what lets a browser behind a firewall that
//! passes only TLS reach its media): accepting, the TLS handshake, and reading the stream
//! into STUN messages and ChannelData. Requests go to the core as `Event::Turn`; ChannelData
//! and Send indications go to the relay as `Event::TurnData`; what the relay and the core
//! send back is written by the connection's writer. The connections share the slots,
//! per-source caps and deadlines of SIP streams.

use crate::conn_limits::{self, HANDSHAKE_DEADLINE};
use crate::core::{Flow, Transport};
use crate::event::Event;
use crate::transport::{next_conn_id, Conn, WRITE_QUEUE};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// The longest STUN message or ChannelData accepted on a stream.
const MAX_FRAME: usize = 64 * 1024;

/// Accepts TURN clients over TCP, or TLS when `tls` is given.
pub async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    events: mpsc::Sender<Event>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%local, "TURN accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if crate::banlist::is_banned(remote.ip()) {
            continue;
        }
        let slot = match conn_limits::take_slot(remote.ip()) {
            Ok(s) => s,
            Err(why) => {
                crate::transport::refused(remote, why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let events = events.clone();
        match &tls {
            None => {
                let conn = Conn::accepted(Transport::Tcp, local, remote, slot);
                tokio::spawn(serve(stream, conn, events));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let conn = Conn::accepted(Transport::Tls, local, remote, slot);
                            serve(s, conn, events).await
                        }
                        Ok(Err(e)) => tracing::info!(%remote, "TURN TLS handshake failed: {e}"),
                        Err(_) => tracing::info!(%remote, "TURN TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// One TURN client's stream, until it closes, breaks its framing, or stays idle: 30 s
/// before it has an allocation (the edge then marks it held), 900 s after.
async fn serve<S>(stream: S, conn: Conn, events: mpsc::Sender<Event>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Conn {
        transport,
        local,
        remote,
        _slot,
        registered,
    } = conn;
    let id = next_conn_id();
    let flow = Flow {
        transport,
        local,
        remote,
        conn: Some(id),
    };
    // The first message decides what the connection is: a data connection of a TCP relay
    // starts with ConnectionBind (RFC 6062 §4.4) and becomes a pipe; any other is a client's.
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(4096);
    let first_len = loop {
        match sip::turn::frame_len(&buf) {
            Some(0) => return,
            Some(n) if n > MAX_FRAME => return,
            Some(n) if buf.len() >= n => break n,
            _ => {}
        }
        let read = tokio::time::timeout(conn_limits::IDLE_UNREGISTERED, stream.read_buf(&mut buf));
        match read.await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    };
    let is_bind =
        sip::turn::parse(&buf[..first_len]).is_some_and(|m| m.method == sip::turn::CONNECTION_BIND);
    if is_bind {
        return data_connection(stream, buf, first_len, flow, events).await;
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let opened = Event::ConnOpened {
        id,
        remote,
        sender: tx.clone(),
        registered: registered.clone(),
    };
    if events.send(opened).await.is_err() {
        return;
    }
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    let mut first = true;
    'read: loop {
        let idle = if registered.load(Ordering::Relaxed) {
            conn_limits::IDLE_REGISTERED
        } else {
            conn_limits::IDLE_UNREGISTERED
        };
        // The first message is already in the buffer.
        if !std::mem::take(&mut first) {
            match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        while let Some(len) = sip::turn::frame_len(&buf) {
            if len == 0 || len > MAX_FRAME {
                tracing::debug!(%remote, "TURN stream framing lost; closed");
                break 'read;
            }
            if buf.len() < len {
                break;
            }
            let frame = buf.split_to(len).freeze();
            let data_plane = frame[0] >= 0x40 || crate::relay::is_send_indication(&frame);
            let ev = if data_plane {
                Event::TurnData {
                    conn: id,
                    data: frame,
                }
            } else {
                Event::Turn { flow, data: frame }
            };
            if events.send(ev).await.is_err() {
                break 'read;
            }
        }
    }
    let _ = events.send(Event::ConnClosed { id, remote }).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// A client's data connection of a TCP relay: its ConnectionBind goes to the core; once
/// answered with success and given the peer's connection, the two are piped until either
/// side closes.
async fn data_connection<S>(
    mut stream: S,
    mut buf: BytesMut,
    first_len: usize,
    flow: Flow,
    events: mpsc::Sender<Event>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some(id) = flow.conn else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let (jtx, mut jrx) = mpsc::channel::<tokio::net::TcpStream>(1);
    let opened = Event::TurnDataOpened {
        id,
        sender: tx,
        join: jtx,
    };
    let bind = buf.split_to(first_len).freeze();
    if events.send(opened).await.is_err()
        || events.send(Event::Turn { flow, data: bind }).await.is_err()
    {
        return;
    }
    let wait = Duration::from_secs(10);
    let joined = async {
        let answer = tokio::time::timeout(wait, rx.recv()).await.ok().flatten()?;
        stream.write_all(&answer).await.ok()?;
        let ok =
            sip::turn::parse(&answer).is_some_and(|m| m.class == Some(sip::turn::Class::Success));
        if !ok {
            return None;
        }
        tokio::time::timeout(wait, jrx.recv()).await.ok().flatten()
    }
    .await;
    let _ = events
        .send(Event::ConnClosed {
            id,
            remote: flow.remote,
        })
        .await;
    let Some(mut peer) = joined else {
        return;
    };
    // What the client sent after its ConnectionBind is the peer's already.
    if !buf.is_empty() && peer.write_all(&buf).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut peer).await;
}
