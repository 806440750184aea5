//! One SIP WebSocket connection (RFC 7118): each WebSocket message in is one SIP message for
//! the core, each message out is one text frame (binary when it is not UTF-8). The server
//! pings; a peer that answers nothing, or sends no SIP for longer than the idle limits of
//! stream connections, is closed, and the core hears of it so that a closed tab's
//! registration goes at once.

use crate::conn_limits;
use crate::core::Flow;
use crate::event::Event;
use crate::transport::{next_conn_id, Conn, WRITE_QUEUE};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sip::message::MAX_MESSAGE;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Frame and message limits: one SIP message, as over TCP.
fn limits() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .max_write_buffer_size(4 * MAX_MESSAGE)
}

/// Serves a connection whose upgrade was just answered 101; `rest` is what the peer sent
/// after its request head (normally nothing).
/// `ping_every` is how often the server pings (browsers answer by themselves); a peer from
/// which nothing at all (not even a pong) came for two and a half times that is gone.
pub(crate) async fn run<S>(
    stream: S,
    rest: Vec<u8>,
    conn: Conn,
    events: mpsc::Sender<Event>,
    ping_every: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut ws =
        WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(limits())).await;
    let Conn {
        transport,
        local,
        remote,
        _slot,
        registered,
    } = conn;
    let id = next_conn_id();
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let flow = Flow {
        transport,
        local,
        remote,
        conn: Some(id),
    };
    let opened = Event::ConnOpened {
        id,
        remote,
        sender: tx.clone(),
        registered: registered.clone(),
    };
    if events.send(opened).await.is_err() {
        return;
    }
    let silent_limit = ping_every * 5 / 2;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    // Anything from the peer (liveness), and the last SIP message or keep-alive (idleness).
    let mut heard = Instant::now();
    let mut active = Instant::now();
    let why = loop {
        let idle_limit = if registered.load(Ordering::Relaxed) {
            conn_limits::IDLE_REGISTERED
        } else {
            conn_limits::IDLE_UNREGISTERED
        };
        let idle_deadline = active + idle_limit;
        tokio::select! {
            out = rx.recv() => {
                let Some(data) = out else { break "closed by the server" };
                let frame = match Utf8Bytes::try_from(data.clone()) {
                    Ok(text) => Message::Text(text),
                    Err(_) => Message::Binary(data),
                };
                if let Err(e) = ws.send(frame).await {
                    tracing::debug!(%remote, "websocket write failed: {e}");
                    break "write failed";
                }
            }
            frame = ws.next() => {
                heard = Instant::now();
                let data = match frame {
                    None => break "closed by the peer",
                    Some(Err(e)) => {
                        tracing::debug!(%remote, "websocket read failed: {e}");
                        break "read failed or over the size limit";
                    }
                    Some(Ok(Message::Text(t))) => Bytes::from(t),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) => break "closed by the peer",
                    // Pings are answered by the library; pongs only prove liveness.
                    Some(Ok(_)) => continue,
                };
                if crate::banlist::is_banned(remote.ip()) {
                    break "banned source";
                }
                active = heard;
                if data.iter().all(|&c| c == b'\r' || c == b'\n') {
                    // RFC 5626 §4.4.1 keep-alive inside the WebSocket (SIP.js sends these).
                    if data.len() >= 4 {
                        let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                    continue;
                }
                // Backpressure: a connection waits for the event loop instead of queueing.
                if events.send(Event::Message { flow, data }).await.is_err() {
                    break "server stopping";
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > silent_limit {
                    break "no answer to pings";
                }
                if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    break "write failed";
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => break "idle",
        }
    };
    tracing::debug!(%remote, why, "websocket connection closed");
    drop(tx);
    let _ = events.send(Event::ConnClosed { id, remote }).await;
    // Say goodbye within a bounded time (the peer may be gone).
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}
