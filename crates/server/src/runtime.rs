//! The event loop: one task owns the core and feeds it received messages, timer expiries and
//! send failures; it carries the core's actions out on sockets and hands store writes to the
//! store thread. Sockets, the clock, the store and the control channel live here, never in
//! the core.

use crate::config::{Config, Transport};
use crate::control;
use crate::core::{Action, ClientTxId, ConnId, Core, Flow, Listener};
use crate::mmsg;
use crate::plan::settings::{ForwardSpec, PlanSettings};
use crate::plan::Directory;
use crate::store::{BindingWrite, SqliteStore, Store, StoredBinding, User};
use crate::transport;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdp};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

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
    Control {
        command: String,
        reply: oneshot::Sender<serde_json::Value>,
    },
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

/// Writes from the core to the store, done on their own thread so a slow disk never stalls
/// signalling.
enum StoreOp {
    Put(StoredBinding),
    Delete {
        aor: String,
        contact: String,
    },
    /// Read the users and the stored phone-system settings (after the writes before it).
    Load(std::sync::mpsc::Sender<Result<(Vec<User>, PlanSettings), String>>),
    Forward(ForwardSpec),
}

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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The address to write in headers for a wildcard listener: the configured one, else the
/// source address the kernel would use for an outside destination (no packet is sent).
pub(crate) fn guess_host(bind: SocketAddr, advertise: Option<IpAddr>) -> IpAddr {
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
    StdUdp::bind(any)
        .and_then(|s| s.connect(probe).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(if bind.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        })
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

/// Most binding writes committed in one transaction.
const STORE_BATCH: usize = 1024;
/// How long a registration change may wait for the next commit: one transaction per this
/// interval instead of one per REGISTER (a crash loses at most this much; phones re-register).
const STORE_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

fn spawn_store(mut store: SqliteStore) -> std::sync::mpsc::Sender<StoreOp> {
    use std::sync::mpsc::TryRecvError;
    let (tx, rx) = std::sync::mpsc::channel::<StoreOp>();
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(STORE_BATCH);
            // Wait for the first change, then sleep through the batching window and take all
            // that came meanwhile: while this thread sleeps, senders never have to wake it
            // (one futex wake and two context switches per REGISTER otherwise).
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                let mut slept = false;
                let mut open = true;
                loop {
                    while let Some(op) = next.take() {
                        match op {
                            StoreOp::Put(b) => batch.push(BindingWrite::Put(b)),
                            StoreOp::Delete { aor, contact } => {
                                batch.push(BindingWrite::Delete { aor, contact })
                            }
                            StoreOp::Load(reply) => {
                                flush(&mut store, &mut batch);
                                let _ = reply.send(store.users().and_then(|u| Ok((u, store.plan()?))));
                            }
                            StoreOp::Forward(f) => {
                                flush(&mut store, &mut batch);
                                if let Err(e) = store.put_forward(&f) {
                                    tracing::error!(user = %f.user, "cannot store the forwarding set from the phone: {e}; it applies until the next restart or reload");
                                }
                            }
                        }
                        if batch.len() >= STORE_BATCH {
                            flush(&mut store, &mut batch);
                        }
                        match rx.try_recv() {
                            Ok(op) => next = Some(op),
                            Err(TryRecvError::Empty) => {}
                            Err(TryRecvError::Disconnected) => open = false,
                        }
                    }
                    if slept || !open || batch.is_empty() {
                        break;
                    }
                    std::thread::sleep(STORE_DELAY);
                    slept = true;
                    next = rx.try_recv().ok();
                }
                flush(&mut store, &mut batch);
                if !open {
                    break;
                }
            }
            flush(&mut store, &mut batch);
        })
        .ok();
    tx
}

/// Writes a batch; on failure names every registration it could not keep.
fn flush(store: &mut SqliteStore, batch: &mut Vec<BindingWrite>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.write_bindings(batch) {
        for w in batch.iter() {
            match w {
                BindingWrite::Put(b) => tracing::error!(user = %b.aor, contact = %b.contact,
                    "store write failed: {e}; the registration is kept in memory only and will not survive a restart"),
                BindingWrite::Delete { aor, contact } => tracing::error!(user = %aor, %contact,
                    "store delete failed: {e}; the binding may come back after a restart until it expires"),
            }
        }
    }
    batch.clear();
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

/// Builds the dial plan from the file's settings, the users and the stored settings.
pub fn build_plan(
    cfg: &Config,
    users: &[User],
    stored: &PlanSettings,
) -> Result<Directory, String> {
    let settings = PlanSettings::merged(&cfg.plan(), stored);
    let (plan, warnings) = Directory::build(
        &cfg.domain,
        users,
        &cfg.numbering,
        &cfg.features,
        &cfg.calls,
        &settings,
    )?;
    for w in warnings {
        tracing::warn!("dial plan: {w}");
    }
    Ok(plan)
}

async fn run(cfg: Config) -> Result<(), String> {
    let store = SqliteStore::open(&cfg.db_path())?;
    let users = store.users()?;
    let plan = build_plan(&cfg, &users, &store.plan()?)
        .map_err(|e| format!("the dial plan is not valid: {e}"))?;
    for u in users.iter().filter(|u| u.realm != cfg.domain) {
        tracing::warn!(user = %u.name, realm = %u.realm,
            "user was created for another realm than `{}`; set its password again (hedgewitch user passwd)", cfg.domain);
    }
    let bindings = store.bindings()?;
    let store_tx = spawn_store(store);

    let tls = crate::tls::Tls::new(&cfg.tls).map_err(|e| format!("tls: {e}"))?;
    // Bounded: under overload UDP input is dropped at the socket edge and streams wait.
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
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
                tokio::spawn(transport::tcp_accept_loop(
                    s,
                    l.addr,
                    events_tx.clone(),
                    None,
                ));
            }),
            Transport::Tls => match &tls.acceptor {
                Some(acceptor) => transport::bind_tcp(l.addr).map(|s| {
                    tokio::spawn(transport::tcp_accept_loop(
                        s,
                        l.addr,
                        events_tx.clone(),
                        Some(acceptor.clone()),
                    ));
                }),
                None => {
                    return Err(format!(
                        "cannot listen on tls:{}: [tls] certificate and key are not set \
                         (`hedgewitch tls self-signed` makes a pair for trials)",
                        l.addr
                    ))
                }
            },
        };
        match bound {
            Ok(()) => {
                let host = guess_host(l.addr, cfg.advertise);
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
    for l in &cfg.stun {
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
    control::spawn_server(&cfg.control_path(), events_tx.clone())?;
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
    let mut core = Core::with_plan(core_cfg, users, bindings, secret(), now, unix_now(), plan);
    if cfg.relay.mode != crate::core::RelayMode::Never {
        start_relay(&mut core, &cfg);
    }
    let mut reloader = Reloader {
        running: cfg.clone(),
        started: cfg.clone(),
    };
    // The summary goes to standard output, apart from the log (which may be JSON).
    let relay = core
        .has_relay()
        .then_some((cfg.relay.ports.0, cfg.relay.ports.1));
    print!("{}", crate::setup::banner(&cfg, &served, user_count, relay));
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tracing::info!(domain = %cfg.domain, data_dir = %cfg.data_dir.display(), "hedgewitch ready");

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
    };
    let started = Instant::now();
    let mut armed: Option<Instant> = None;
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut inbox: Vec<(Flow, Bytes)> = Vec::with_capacity(64);
    let mut unreachable: Vec<SocketAddr> = vec![];
    let mut first_udp = 0usize;
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
                let now = Instant::now();
                match ev {
                    Event::Message { flow, data } => core.handle_message(now, flow, data),
                    Event::ConnOpened { id, remote, sender } => {
                        edge.conns.insert(id, sender);
                        edge.conn_by_remote.insert(remote, id);
                    }
                    Event::ConnClosed { id, remote } => {
                        edge.conns.remove(&id);
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
                    Event::Control { command, reply } => {
                        let answer = control_answer(&mut core, now, &command, &mut edge, &mut reloader);
                        let _ = reply.send(answer);
                    }
                    Event::Resolved {
                        id,
                        host,
                        targets,
                        ttl,
                    } => {
                        if edge.tls_names.len() > 10_000 {
                            // Bounded; a lookup that comes again fills it anew.
                            edge.tls_names.clear();
                        }
                        for (t, addr) in &targets {
                            if *t == Transport::Tls {
                                edge.tls_names.insert(*addr, host.clone());
                            }
                        }
                        core.handle_resolved(now, id, targets, ttl)
                    }
                    Event::Reload => {
                        match reloader.reload(&mut core, &mut edge) {
                            Ok(r) => tracing::info!("reloaded on SIGHUP: {r}"),
                            Err(e) => tracing::error!("reload on SIGHUP failed, the previous settings stay: {e}"),
                        }
                    }
                    Event::Shutdown => break,
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

/// Re-reads the config file and the store, and applies every setting that can change while
/// running; calls and registrations in progress are untouched. Settings that need a restart
/// are named in the answer and the log, and only when they changed.
struct Reloader {
    /// The settings in force: those that apply live, as last reloaded.
    running: Config,
    /// The settings the server started with: those that need a restart are in force as
    /// they were then, and are named at each reload for as long as the file differs.
    started: Config,
}

/// What a reload did.
struct Reloaded {
    users: usize,
    groups: usize,
    /// Settings that changed and now apply.
    applied: Vec<&'static str>,
    /// Settings that changed but apply only after a restart.
    restart: Vec<&'static str>,
}

impl Reloaded {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "users": self.users,
            "groups": self.groups,
            "applied": self.applied,
            "restart_needed": self.restart,
        })
    }
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} users, {} groups", self.users, self.groups)?;
        if !self.applied.is_empty() {
            write!(f, "; applied: {}", self.applied.join(", "))?;
        }
        if !self.restart.is_empty() {
            write!(
                f,
                "; changed but applied only after a restart: {}",
                self.restart.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Reloader {
    fn reload(&mut self, core: &mut Core, edge: &mut Edge) -> Result<Reloaded, String> {
        let new = self.running.reread()?;
        let old = &self.running;
        let mut restart = vec![];
        let mut applied = vec![];
        let started = &self.started;
        for (changed, key) in [
            (new.domain != started.domain, "domain"),
            (new.domains != started.domains, "domains"),
            (new.listen != started.listen, "listen"),
            (new.stun != started.stun, "stun"),
            (new.advertise != started.advertise, "advertise"),
            (new.data_dir != started.data_dir, "data_dir"),
            (new.log != started.log, "log"),
            (
                new.relay.ports != started.relay.ports && core.has_relay(),
                "relay.ports",
            ),
        ] {
            if changed {
                restart.push(key);
            }
        }
        // Everything below is checked before anything is swapped in: a bad file changes
        // nothing.
        let (tx, rx) = std::sync::mpsc::channel();
        edge.store
            .send(StoreOp::Load(tx))
            .map_err(|_| "store thread is gone".to_string())?;
        let (users, stored) = rx
            .recv()
            .map_err(|_| "store thread is gone".to_string())??;
        // The domain is the digest realm and cannot change live: keep the running one.
        let live = Config {
            domain: old.domain.clone(),
            ..new.clone()
        };
        let plan = build_plan(&live, &users, &stored)?;
        // Certificates are read again on every reload: a renewal replaces the files at the
        // same paths, with nothing changed in the config file.
        let mut tls = edge.tls.clone();
        let (tls_changed, tls_restart) = tls.reload(&new.tls).map_err(|e| format!("tls: {e}"))?;
        let dns = if new.dns != old.dns {
            Some(crate::dns::Dns::new(&new.dns.servers)?)
        } else {
            None
        };

        edge.tls = tls;
        if tls_changed {
            applied.push("tls certificate");
        }
        if new.tls.ca_files != old.tls.ca_files {
            applied.push("tls.ca_files");
        }
        if tls_restart {
            restart.push("tls listeners");
        }
        if let Some(d) = dns {
            edge.dns = Some(d);
            core.clear_dns_cache();
            applied.push("dns");
        }
        for (changed, key) in [
            (new.registrar != old.registrar, "registrar"),
            (new.auth != old.auth, "auth"),
            (new.relay.mode != old.relay.mode, "relay.mode"),
            (
                new.relay.timeout != old.relay.timeout
                    || new.relay.hold_timeout != old.relay.hold_timeout,
                "relay timeouts",
            ),
            (new.federation != old.federation, "federation"),
            (
                new.plan() != old.plan()
                    || new.numbering != old.numbering
                    || new.features != old.features
                    || new.calls != old.calls,
                "dial plan",
            ),
        ] {
            if changed {
                applied.push(key);
            }
        }
        // A relay turned on in the file starts now (it may have been off since the start).
        if new.relay.mode != crate::core::RelayMode::Never && !core.has_relay() {
            start_relay(core, &new);
        }
        core.reconfigure(&live.core_config(vec![]));
        let done = Reloaded {
            users: users.len(),
            groups: stored.groups.len() + new.group.len(),
            applied,
            restart,
        };
        core.set_users(users);
        core.set_plan(plan);
        if !done.restart.is_empty() {
            tracing::warn!(
                "changed in the config file but applied only after a restart: {}",
                done.restart.join(", ")
            );
        }
        self.running = Config {
            domain: old.domain.clone(),
            domain_origin: old.domain_origin,
            ..new
        };
        Ok(done)
    }
}

/// Starts the media relay on the configured ports and hands it to the core.
fn start_relay(core: &mut Core, cfg: &Config) {
    let crate::config::PortRange(lo, hi) = cfg.relay.ports;
    match crate::relay::Relay::start(lo, hi) {
        Ok(relay) => {
            tracing::info!(mode = ?cfg.relay.mode, "media relay on UDP ports {lo}-{hi}");
            core.set_relay(Box::new(relay));
        }
        Err(e) => tracing::error!("cannot start the media relay: {e}; calls go without it"),
    }
}

fn control_answer(
    core: &mut Core,
    now: Instant,
    command: &str,
    edge: &mut Edge,
    reloader: &mut Reloader,
) -> serde_json::Value {
    match command {
        "status" => {
            let mut v = serde_json::to_value(core.status(now)).unwrap_or_default();
            let sockets: Vec<_> = edge.udp.iter().map(|(_, s)| s.clone()).collect();
            v["dropped_datagrams"] = transport::udp_drops(&sockets).into();
            // `doctor` tells our own sockets from another program's by it.
            v["pid"] = std::process::id().into();
            v
        }
        "registrations" => serde_json::to_value(core.registrations(now)).unwrap_or_default(),
        "calls" => serde_json::to_value(core.calls(now)).unwrap_or_default(),
        // `reload-users` is what `hedgewitch user ...` sends; both re-read everything.
        "reload" | "reload-users" => match reloader.reload(core, edge) {
            Ok(r) => {
                tracing::info!("reloaded ({command}): {r}");
                r.to_json()
            }
            Err(e) => {
                tracing::error!("reload ({command}) failed, the previous settings stay: {e}");
                serde_json::json!({ "error": e })
            }
        },
        other => serde_json::json!({"error": format!("unknown command `{other}`")}),
    }
}

/// The sockets and queues the core's actions go out through.
struct Edge {
    udp: Vec<(SocketAddr, Arc<AsyncFd<StdUdp>>)>,
    /// UDP sends of the current batch of actions: (socket index, destination, data).
    udp_out: Vec<(usize, SocketAddr, Bytes)>,
    conns: HashMap<ConnId, mpsc::Sender<Bytes>>,
    conn_by_remote: HashMap<SocketAddr, ConnId>,
    store: std::sync::mpsc::Sender<StoreOp>,
    events: mpsc::Sender<Event>,
    /// RFC 3263 lookups; None when no resolver could be made (other domains unreachable).
    dns: Option<crate::dns::Dns>,
    tls: crate::tls::Tls,
    /// The domain each TLS target of a lookup serves: its certificate must name it.
    tls_names: HashMap<SocketAddr, String>,
    /// Destinations that answered with ICMP errors, for the core.
    unreachable: Vec<SocketAddr>,
}

impl Edge {
    fn execute(&mut self, core: &mut Core) {
        for action in core.take_actions() {
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
                Action::SaveForward(f) => {
                    if self.store.send(StoreOp::Forward(f)).is_err() {
                        tracing::error!(
                            "store thread is gone; forwarding changes are not persisted"
                        );
                    }
                }
            }
        }
        self.flush_udp();
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
