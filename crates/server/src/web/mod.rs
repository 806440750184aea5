//! Web listeners (`ws:` and `wss:` in `listen`): one port that serves the softphone page over
//! HTTP(S) and, at `/` with the `sip` subprotocol, SIP over WebSocket (RFC 7118). Accepting,
//! the TLS handshake and reading request heads live here; the heads are read by `upgrade`,
//! the SIP connections run in `socket`, the pages come from `page`. Web connections share
//! the slots, per-source caps and deadlines of TCP and TLS (`conn_limits`).

pub(crate) mod page;
pub(crate) mod socket;
pub(crate) mod upgrade;

use crate::conn_limits::{self, HANDSHAKE_DEADLINE};
use crate::core::Transport;
use crate::event::Event;
use crate::transport::Conn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use upgrade::Head;

/// What web listeners are told by the configuration.
#[derive(Clone, Debug, Default)]
pub struct WebSettings {
    /// The main SIP domain, which the page logs in to.
    pub domain: String,
    /// Origins (`https://host:port`) whose pages may open a SIP WebSocket besides the
    /// listener's own; `*` allows any.
    pub origins: Vec<String>,
    /// How often the server pings a WebSocket peer.
    pub ping_every: Duration,
}

/// Accepts web connections: plain (`ws:`), or TLS (`wss:`) when `tls` is given.
pub async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    events: mpsc::Sender<Event>,
    tls: Option<TlsAcceptor>,
    settings: Arc<WebSettings>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%local, "web accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if crate::banlist::is_banned(remote.ip()) {
            tracing::debug!(%remote, "connection from a banned source refused");
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
        let (events, settings) = (events.clone(), settings.clone());
        match &tls {
            None => {
                let conn = Conn::accepted(Transport::Ws, local, remote, slot);
                tokio::spawn(serve(stream, conn, events, settings));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let conn = Conn::accepted(Transport::Wss, local, remote, slot);
                            serve(s, conn, events, settings).await
                        }
                        Ok(Err(e)) => tracing::info!(%remote, "TLS handshake failed: {e}"),
                        Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Serves HTTP requests on one connection until it closes or one of them becomes a SIP
/// WebSocket. Each head must arrive within the message deadline; between requests the
/// connection may idle as long as an unregistered stream.
async fn serve<S>(
    mut stream: S,
    conn: Conn,
    events: mpsc::Sender<Event>,
    settings: Arc<WebSettings>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let remote = conn.remote;
    let secure = conn.transport == Transport::Wss;
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        let req = match read_head(&mut stream, &mut buf).await {
            Ok(r) => r,
            Err(Some((code, reason))) => {
                let _ = stream
                    .write_all(upgrade::refusal(code, reason).as_bytes())
                    .await;
                return;
            }
            Err(None) => return,
        };
        // A body (none of our pages takes one) is read and dropped, within the same limits.
        let body_end = req.len.saturating_add(req.content_length);
        if req.content_length > upgrade::MAX_HEAD {
            let _ = stream
                .write_all(upgrade::refusal(413, "Content Too Large").as_bytes())
                .await;
            return;
        }
        let body = async {
            while buf.len() < body_end {
                read_more(&mut stream, &mut buf).await?;
            }
            Ok::<(), std::io::Error>(())
        };
        if !matches!(
            tokio::time::timeout(conn_limits::MESSAGE_DEADLINE, body).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let rest = buf.split_off(body_end);
        if req.wants_websocket {
            match upgrade::upgrade_answer(&req, &settings.origins, secure) {
                Ok(answer) => {
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    return socket::run(stream, rest, conn, events, settings.ping_every).await;
                }
                Err((code, reason)) => {
                    tracing::info!(%remote, origin = req.origin.as_deref().unwrap_or("-"), code, "websocket upgrade refused");
                    let _ = stream
                        .write_all(upgrade::refusal(code, reason).as_bytes())
                        .await;
                    return;
                }
            }
        }
        let answer = page::answer(&req, &settings.domain);
        // A reader that takes nothing holds its slot no longer than a slow sender would.
        let sent = async {
            stream.write_all(&answer).await?;
            stream.flush().await
        };
        if !matches!(
            tokio::time::timeout(conn_limits::MESSAGE_DEADLINE, sent).await,
            Ok(Ok(()))
        ) || req.close
        {
            return;
        }
        buf = rest;
    }
}

/// Reads until `buf` holds a whole request head. Err(Some) is an answer to send before
/// closing; Err(None) closes silently (the peer left, or was idle or slow).
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<upgrade::Request, Option<(u16, &'static str)>> {
    let mut started = (!buf.is_empty()).then(tokio::time::Instant::now);
    loop {
        match upgrade::parse_head(buf) {
            Head::Request(r) => return Ok(r),
            Head::Refused(code, reason) => return Err(Some((code, reason))),
            Head::Incomplete => {}
        }
        let wait = match started {
            Some(t) => conn_limits::MESSAGE_DEADLINE.saturating_sub(t.elapsed()),
            None => conn_limits::IDLE_UNREGISTERED,
        };
        match tokio::time::timeout(wait, read_more(stream, buf)).await {
            Ok(Ok(())) => {
                started.get_or_insert_with(tokio::time::Instant::now);
            }
            _ => return Err(None),
        }
    }
}

/// Appends what the peer sent next to `buf`; an error when it closed or failed.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}
