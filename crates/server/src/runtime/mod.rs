//! The event loop: one task owns the core and feeds it received datagrams, events (stream
//! messages, send failures, DNS answers, control commands, signals) and timer expiries, and
//! after each has the edge carry out the core's actions. The sockets are bound here at start;
//! the edge (`edge.rs`) sends, the reloader (`reload.rs`) swaps settings in. Sockets, the
//! clock, the store and the control channel live here and below, never in the core.

mod edge;
mod reload;
mod turn;

use crate::config::Config;
use crate::control::Command;
use crate::core::{Core, Flow, Listener, Transport};
use crate::event::Event;
use crate::store::writer::spawn_store;
use crate::store::{SqliteStore, Store};
use crate::transport;
use bytes::Bytes;
use edge::Edge;
use reload::{start_relay, Reloader};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Timer granularity of the event loop.
const TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// `t` rounded up to the next multiple of TICK since `origin`.
fn coarse(t: Instant, origin: Instant) -> Instant {
    let since = t.saturating_duration_since(origin).as_nanos();
    let tick = TICK.as_nanos();
    let rounded = since.div_ceil(tick) * tick;
    origin + std::time::Duration::from_nanos(rounded.min(u64::MAX as u128) as u64)
}

/// Events waiting for the core; beyond this UDP input is dropped and streams wait.
const EVENT_QUEUE: usize = 16384;
/// Full UDP batches in a row that mean the loop falls behind (hundreds of datagrams waiting).
const OVERLOAD_BATCHES: usize = 8;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key that signs our Record-Route entries, made once and kept in the data folder
/// (mode 0600) so that dialogs outlive a restart.
fn route_key(data_dir: &std::path::Path) -> Result<[u8; 32], String> {
    let path = data_dir.join("route.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let bytes: Vec<u8> = (0..text.trim().len() / 2)
            .filter_map(|i| u8::from_str_radix(text.trim().get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
        tracing::warn!("{} is not a key; making a new one", path.display());
    }
    let key = secret();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    Ok(key)
}

fn secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut s) {
        tracing::warn!("no system randomness ({e}); nonces use a time-derived secret");
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        s[..16].copy_from_slice(&t.to_le_bytes());
    }
    s
}

/// Runs the daemon until SIGINT/SIGTERM. The config file it was read from is read again on
/// reload (SIGHUP or `hedgewitch reload`).
pub fn serve(cfg: Config) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(run(cfg))
}

/// The sockets opened at start.
struct Bound {
    /// What the core writes in headers for each SIP listener.
    listeners: Vec<Listener>,
    /// UDP sockets for sending, by local address (SIP first, then STUN).
    udp: Vec<(SocketAddr, Arc<AsyncFd<StdUdp>>)>,
    /// The same sockets for receiving, in the same order.
    udp_in: Vec<transport::UdpListener>,
    /// The TURN listeners.
    turn: turn::TurnEdge,
    /// How many of them are SIP sockets (the rest answer STUN only).
    sip_sockets: usize,
}

/// The TLS settings in force for `cfg`: its `[tls]`, or, when it names no certificate but
/// has a `wss:` listener or a TURN `tls:` one, a self-signed pair kept in the data folder
/// (made at the first start), so that the softphone page works out of the box. The second
/// value says the pair is that self-signed one: SIP `tls:` listeners still need `[tls]`,
/// since other domains would not trust it.
pub(super) fn effective_tls(
    cfg: &crate::config::Config,
) -> Result<(crate::tls::TlsConfig, bool), String> {
    use crate::core::Transport;
    let wants = cfg.listen.iter().any(|l| l.transport == Transport::Wss)
        || (cfg.turn.enabled
            && cfg
                .turn
                .listen
                .iter()
                .any(|l| l.transport == Transport::Tls));
    if cfg.tls.certificate.is_some() || cfg.tls.key.is_some() || !wants {
        return Ok((cfg.tls.clone(), false));
    }
    let dir = cfg.data_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !(cert.is_file() && key.is_file()) {
        let names: Vec<String> = cfg
            .listen
            .iter()
            .filter(|l| l.transport == Transport::Wss)
            .map(|l| crate::transport::guess_host(l.addr, cfg.advertise).to_string())
            .chain(["localhost".to_string()])
            .collect();
        crate::tls::self_signed(&cfg.domain, &names, &dir)?;
        tracing::info!(
            dir = %dir.display(),
            "made a self-signed certificate for the web page (browsers warn about it once; \
             docs/browser.md says how to use a real one)"
        );
    }
    Ok((
        crate::tls::TlsConfig {
            certificate: Some(cert),
            key: Some(key),
            ca_files: cfg.tls.ca_files.clone(),
        },
        true,
    ))
}

/// Why a TLS-based listener cannot start.
fn no_certificate(scheme: &str, addr: SocketAddr) -> String {
    format!(
        "cannot listen on {scheme}:{addr}: [tls] certificate and key are not set \
         (`hedgewitch tls self-signed` makes a pair for trials)"
    )
}

/// Binds every `listen` and `stun` socket; stream listeners get their accept loops. A wildcard
/// that cannot be bound (no IPv6 here) is skipped with a warning; any other failure is fatal.
fn bind(
    cfg: &Config,
    tls: &crate::tls::Tls,
    self_signed: bool,
    events: &mpsc::Sender<Event>,
) -> Result<Bound, String> {
    let mut udp: Vec<(SocketAddr, Arc<AsyncFd<StdUdp>>)> = vec![];
    let mut udp_in: Vec<transport::UdpListener> = vec![];
    let mut listeners = vec![];
    for l in &cfg.listen {
        let bound = match l.transport {
            Transport::Udp => transport::bind_udp(l.addr)
                .and_then(|s| transport::UdpListener::new(s, l.addr))
                .map(|s| {
                    udp.push((l.addr, s.sender()));
                    udp_in.push(s);
                }),
            Transport::Tcp => transport::bind_tcp(l.addr).map(|s| {
                tokio::spawn(transport::tcp_accept_loop(s, l.addr, events.clone(), None));
            }),
            Transport::Tls => match tls.acceptor.as_ref().filter(|_| !self_signed) {
                Some(acceptor) => transport::bind_tcp(l.addr).map(|s| {
                    tokio::spawn(transport::tcp_accept_loop(
                        s,
                        l.addr,
                        events.clone(),
                        Some(acceptor.clone()),
                    ));
                }),
                None => return Err(no_certificate("tls", l.addr)),
            },
            Transport::Ws | Transport::Wss => {
                let acceptor = match (l.transport, &tls.acceptor) {
                    (Transport::Ws, _) => None,
                    (_, Some(a)) => Some(a.clone()),
                    (_, None) => return Err(no_certificate("wss", l.addr)),
                };
                let settings = Arc::new(crate::web::WebSettings {
                    domain: cfg.domain.clone(),
                    origins: cfg.web.origins.clone(),
                    ping_every: std::time::Duration::from_secs(cfg.web.ping_interval.max(1)),
                });
                transport::bind_tcp(l.addr).map(|s| {
                    tokio::spawn(crate::web::accept_loop(
                        s,
                        l.addr,
                        events.clone(),
                        acceptor,
                        settings,
                    ));
                })
            }
        };
        match bound {
            Ok(()) => {
                let host = transport::guess_host(l.addr, cfg.advertise);
                tracing::info!(
                    "listening on {}:{} (advertised as {host})",
                    l.transport.as_str(),
                    l.addr
                );
                listeners.push(Listener {
                    transport: l.transport,
                    addr: l.addr,
                    host,
                });
            }
            Err(e) if l.addr.ip().is_unspecified() && cfg.listen.len() > 1 => {
                tracing::warn!(
                    "cannot listen on {}:{}: {e}; continuing without it",
                    l.transport.as_str(),
                    l.addr
                );
            }
            Err(e) => {
                return Err(format!(
                    "cannot listen on {}:{}: {e}",
                    l.transport.as_str(),
                    l.addr
                ))
            }
        }
    }
    if listeners.is_empty() {
        return Err("no listening socket could be opened".into());
    }
    // STUN sockets: answered by the core like the keep-alives on SIP ports, but never SIP.
    let sip_sockets = udp_in.len();
    let turn = turn::TurnEdge::bind(cfg, tls, events);
    for l in cfg
        .stun
        .iter()
        .filter(|l| !turn::TurnEdge::listens_on(cfg, l.addr))
    {
        match transport::bind_udp(l.addr).and_then(|s| transport::UdpListener::new(s, l.addr)) {
            Ok(s) => {
                tracing::info!("STUN on udp:{}", l.addr);
                udp.push((l.addr, s.sender()));
                udp_in.push(s);
            }
            Err(e) => tracing::warn!(
                "cannot serve STUN on udp:{}: {e}; continuing without it",
                l.addr
            ),
        }
    }
    Ok(Bound {
        listeners,
        udp,
        udp_in,
        turn,
        sip_sockets,
    })
}

async fn run(cfg: Config) -> Result<(), String> {
    let store = SqliteStore::open(&cfg.db_path())?;
    let users = store.users()?;
    let stored = store.plan()?;
    let plan = cfg
        .build_plan(&users, &stored)
        .map_err(|e| format!("the dial plan is not valid: {e}"))?;
    for u in users.iter().filter(|u| u.realm != cfg.domain) {
        tracing::warn!(user = %u.name, realm = %u.realm,
            "user was created for another realm than `{}`; set its password again (hedgewitch user passwd)", cfg.domain);
    }
    let bindings = store.bindings()?;
    let waiting = store.waiting_messages()?;
    let store_tx = spawn_store(store);

    let (tls_cfg, self_signed) = effective_tls(&cfg)?;
    let tls = crate::tls::Tls::new(&tls_cfg).map_err(|e| format!("tls: {e}"))?;
    // Bounded: under overload UDP input is dropped at the socket edge and streams wait.
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let Bound {
        listeners,
        udp,
        mut udp_in,
        turn,
        sip_sockets,
    } = bind(&cfg, &tls, self_signed, &events_tx)?;
    crate::control::spawn_server(&cfg.control_path(), events_tx.clone())?;
    spawn_signals(events_tx.clone());

    let served: Vec<crate::setup::Served> = listeners
        .iter()
        .map(|l| crate::setup::Served {
            transport: l.transport,
            port: l.addr.port(),
            bound: l.addr,
            advertised: l.host,
        })
        .collect();
    let user_count = users.len();
    let now = Instant::now();
    let mut core_cfg = cfg.core_config(listeners);
    core_cfg.route_key = route_key(&cfg.data_dir)?;
    let t = &mut core_cfg.relay.turn;
    t.enabled &= turn.is_on();
    t.urls = turn.urls();
    t.families = turn.families();
    if t.secret.is_empty() {
        // Derived from the data folder's key: stable across restarts, secret like it.
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(core_cfg.route_key);
        h.update(b"hedgewitch turn secret");
        t.secret = h.finalize().to_vec();
    }
    let key = core_cfg.route_key;
    let trunks = crate::providers::load(&cfg.providers_path(), &key, &stored.dids)?;
    let mut core = Core::with_plan(core_cfg, users, bindings, secret(), now, unix_now(), plan);
    for t in &trunks {
        tracing::info!(provider = %t.name, registers = t.register.is_some(), "provider");
    }
    core.set_trunks(now, trunks, cfg.numbers.clone());
    core.set_mailbox(cfg.messages.clone());
    core.set_presence(cfg.presence_settings(&stored));
    core.restore_messages(now, waiting);
    let mut reloader = Reloader {
        running: cfg.clone(),
        started: cfg.clone(),
        key,
    };
    let mut edge = Edge {
        udp,
        udp_out: Vec::new(),
        conns: HashMap::new(),
        conn_by_remote: HashMap::new(),
        store: store_tx,
        events: events_tx,
        dns: match crate::dns::Dns::new(&cfg.dns.servers) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("{e}; calls to other domains by name will fail");
                None
            }
        },
        tls,
        tls_names: HashMap::new(),
        unreachable: vec![],
        relay: None,
        held: HashMap::new(),
        turn,
    };
    if cfg.relay.mode != crate::core::RelayMode::Never || edge.turn.is_on() {
        start_relay(&mut core, &mut edge, &cfg);
    }
    // The summary goes to standard output, apart from the log (which may be JSON).
    let relay = core
        .has_relay()
        .then_some((cfg.relay.ports.0, cfg.relay.ports.1));
    print!("{}", crate::setup::banner(&cfg, &served, user_count, relay));
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tracing::info!(domain = %cfg.domain, data_dir = %cfg.data_dir.display(), "hedgewitch ready");

    let started = Instant::now();
    let mut armed: Option<Instant> = None;
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut inbox: Vec<(Flow, Bytes)> = Vec::with_capacity(64);
    let mut unreachable: Vec<SocketAddr> = vec![];
    let mut first_udp = 0usize;
    let mut full_batches = 0usize;
    loop {
        edge.execute(&mut core);
        // ICMP errors met while sending: the core hears of them before the next wait.
        if !edge.unreachable.is_empty() {
            let now = Instant::now();
            for r in std::mem::take(&mut edge.unreachable) {
                core.handle_unreachable(now, r);
            }
            edge.execute(&mut core);
        }
        // Timers wake the loop on a 20 ms grid: a busy server has a transaction timer due
        // every millisecond, and one wake-up for many of them is far cheaper; 20 ms is well
        // within what RFC 3261 timers tolerate.
        let deadline = core.poll_timeout().map(|d| coarse(d, started));
        if let Some(d) = deadline.filter(|d| Some(*d) != armed) {
            sleep.as_mut().reset(tokio::time::Instant::from_std(d));
            armed = Some(d);
        }
        tokio::select! {
            // Datagrams are read and handled here, with no hop through another task: one
            // wake-up per batch instead of two.
            read = std::future::poll_fn(|cx| {
                let n = udp_in.len();
                for i in 0..n {
                    let idx = (first_udp + i) % n;
                    if udp_in[idx].poll_recv(cx, &mut inbox, &mut unreachable).is_ready() {
                        // The next turn starts with the next socket, so none starves another.
                        first_udp = idx + 1;
                        return std::task::Poll::Ready(idx);
                    }
                }
                std::task::Poll::Pending
            }) => {
                let now = Instant::now();
                // Full batches one after the other: datagrams wait faster than the loop takes
                // them. The core then sheds new dialogs from sources that never proved
                // themselves, for a while.
                full_batches = if udp_in[read].was_full() { full_batches + 1 } else { 0 };
                if full_batches >= OVERLOAD_BATCHES {
                    core.handle_overload(now);
                    full_batches = 0;
                }
                // The STUN sockets come after the SIP ones.
                let stun_only = read >= sip_sockets;
                for (flow, data) in inbox.drain(..) {
                    if stun_only {
                        core.handle_stun(flow, &data);
                    } else {
                        core.handle_message(now, flow, data);
                    }
                }
                for r in unreachable.drain(..) {
                    core.handle_unreachable(now, r);
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                if handle_event(ev, &mut core, &mut edge, &mut reloader) == LoopControl::Stop {
                    break;
                }
            }
            _ = &mut sleep, if deadline.is_some() => {
                armed = None;
                core.handle_timeout(Instant::now());
            }
        }
    }
    tracing::info!("shutting down");
    edge.execute(&mut core);
    drop(edge);
    let _ = std::fs::remove_file(cfg.control_path());
    Ok(())
}

/// Whether the loop goes on after an event.
#[derive(PartialEq, Eq)]
enum LoopControl {
    Go,
    Stop,
}

/// One event from the transports, the control channel, DNS or a signal.
fn handle_event(
    ev: Event,
    core: &mut Core,
    edge: &mut Edge,
    reloader: &mut Reloader,
) -> LoopControl {
    let now = Instant::now();
    match ev {
        Event::Message { flow, data } => core.handle_message(now, flow, data),
        Event::Turn { flow, data } => core.handle_turn(now, flow, &data),
        Event::TurnData { conn, data } => edge.turn_stream_data(conn, data),
        Event::TurnPeerArrived {
            alloc,
            remote,
            stream,
        } => edge.turn_peer_arrived(core, alloc, remote, stream),
        Event::TurnConnected { connection, stream } => {
            edge.turn_connected(core, connection, stream)
        }
        Event::TurnDataOpened { id, sender, join } => edge.turn_data_opened(id, sender, join),
        Event::ConnOpened {
            id,
            remote,
            sender,
            registered,
        } => {
            edge.conns.insert(id, sender);
            edge.held.insert(id, registered);
            edge.conn_by_remote.insert(remote, id);
        }
        Event::ConnClosed { id, remote } => {
            edge.conns.remove(&id);
            edge.turn_conn_closed(id);
            // Only a connection something registered over can take registrations with it.
            if edge
                .held
                .remove(&id)
                .is_some_and(|r| r.load(std::sync::atomic::Ordering::Relaxed))
            {
                core.handle_conn_closed(now, id);
            }
            if edge.conn_by_remote.get(&remote) == Some(&id) {
                edge.conn_by_remote.remove(&remote);
            }
        }
        Event::SendFailed { key, remote } => {
            tracing::debug!(%remote, "send failed");
            if let Some(k) = key {
                core.handle_send_failure(now, k);
            }
        }
        Event::Control(crate::control::Request { command, reply }) => {
            let _ = reply.send(answer(command, core, now, edge, reloader));
        }
        Event::Resolved {
            id,
            host,
            targets,
            ttl,
        } => {
            edge.remember_tls_names(&host, &targets);
            core.handle_resolved(now, id, targets, ttl)
        }
        Event::Enum { id, records, ttl } => core.handle_enum(now, id, records, ttl),
        Event::MessageStored { id, kept } => core.handle_message_stored(now, id, kept),
        Event::Reload => match reloader.reload(core, edge) {
            Ok(r) => tracing::info!("reloaded on SIGHUP: {r}"),
            Err(e) => {
                tracing::error!("reload on SIGHUP failed, the previous settings stay: {e}")
            }
        },
        Event::Shutdown => return LoopControl::Stop,
    }
    LoopControl::Go
}

/// The daemon's answer to a command of the control channel.
fn answer(
    command: Command,
    core: &mut Core,
    now: Instant,
    edge: &mut Edge,
    reloader: &mut Reloader,
) -> serde_json::Value {
    match command {
        Command::Status => {
            let mut v = serde_json::to_value(core.status(now)).unwrap_or_default();
            v["dropped_datagrams"] = edge.udp_drops().into();
            v["store_pending"] = (crate::store::writer::pending() as u64).into();
            v["oversized_datagrams"] =
                (crate::transport::OVERSIZED.load(std::sync::atomic::Ordering::Relaxed) as u64)
                    .into();
            // `doctor` tells our own sockets from another program's by it.
            v["pid"] = std::process::id().into();
            v
        }
        Command::Registrations => serde_json::to_value(core.registrations(now)).unwrap_or_default(),
        Command::Calls => {
            let relay = edge.relay.as_ref();
            let calls = core.calls(now, |id| relay.map(|r| r.counters(id)).unwrap_or_default());
            serde_json::to_value(calls).unwrap_or_default()
        }
        Command::Turn => {
            let relay = edge.relay.as_ref();
            let list: Vec<serde_json::Value> = core
                .turn_allocations(now)
                .into_iter()
                .map(|a| {
                    let counters = relay.map(|r| r.turn_counters(a.id)).unwrap_or_default();
                    let mut v = serde_json::to_value(&a).unwrap_or_default();
                    v["counters"] = serde_json::to_value(counters).unwrap_or_default();
                    v
                })
                .collect();
            serde_json::Value::Array(list)
        }
        // `reload-users` is what `hedgewitch user ...` sends: the store only.
        Command::Bans => serde_json::to_value(core.bans(now)).unwrap_or_default(),
        Command::Providers => serde_json::to_value(core.trunks(now)).unwrap_or_default(),
        Command::Messages => serde_json::to_value(core.waiting_messages()).unwrap_or_default(),
        Command::Presence => {
            serde_json::to_value(core.presence_subscriptions(now)).unwrap_or_default()
        }
        Command::ProviderTest(name) => serde_json::json!({ "found": core.retry_trunk(now, &name) }),
        Command::LiftBan(ip) => serde_json::json!({ "lifted": core.lift_ban(now, ip) }),
        Command::Reload | Command::ReloadUsers => match if command == Command::Reload {
            reloader.reload(core, edge)
        } else {
            reloader.reload_users(core, edge)
        } {
            Ok(r) => {
                tracing::info!("reloaded ({}): {r}", command.as_str());
                r.to_json()
            }
            Err(e) => {
                tracing::error!(
                    "reload ({}) failed, the previous settings stay: {e}",
                    command.as_str()
                );
                serde_json::json!({ "error": e })
            }
        },
    }
}

fn spawn_signals(events: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = events.send(Event::Reload).await;
                }
            }
        }
        let _ = events.send(Event::Shutdown).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_round_up_to_the_grid() {
        let o = Instant::now();
        let ms = std::time::Duration::from_millis;
        assert_eq!(coarse(o, o), o);
        assert_eq!(coarse(o + ms(1), o), o + ms(20));
        assert_eq!(coarse(o + ms(20), o), o + ms(20));
        assert_eq!(coarse(o + ms(21), o), o + ms(40));
        assert_eq!(coarse(o - ms(5), o), o, "past deadlines fire at once");
    }
}
