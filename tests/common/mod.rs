//! Shared harness of the end-to-end tests: starts a real `hedgewitch serve` on free loopback
//! ports with a fresh data folder, adds the test users through the CLI, and runs independent
//! SIP peers (SIPp, sipsak, baresip) against it, every child process bounded in time.
//!
//! Everything a test leaves (server log, SIPp message traces and error logs, peer output) is
//! written to the test's own temporary folder, which is kept and named when the test fails
//! (and removed when it passes, unless `HEDGEWITCH_KEEP_LOGS=1`).
//!
//! The peers are installed by the project's test script. When one is missing the test fails
//! with a message saying so, unless `HEDGEWITCH_SKIP_PEERS=1` is set: then it prints
//! "skipped" and passes.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod baresip;
pub mod browser;
pub mod dnsmasq;
pub mod jssip;
pub mod kamailio;
pub mod natlab;

use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The SIP domain (and digest realm) of every test server.
pub const DOMAIN: &str = "example.test";
/// Every peer and the server use this loopback address only.
pub const HOST: &str = "127.0.0.1";

/// A user account created on each test server.
#[derive(Clone, Copy, Debug)]
pub struct TestUser {
    pub name: &'static str,
    pub extension: &'static str,
    pub password: &'static str,
}

pub const ALICE: TestUser = TestUser {
    name: "alice",
    extension: "101",
    password: "alice-Secret-1",
};
pub const BOB: TestUser = TestUser {
    name: "bob",
    extension: "102",
    password: "bob-Secret-2",
};
pub const CAROL: TestUser = TestUser {
    name: "carol",
    extension: "103",
    password: "carol-Secret-3",
};

/// Ports each test server's media relay gets: a reserve of 32 pairs per address family.
const RELAY_PORTS: u16 = 128;

/// Options of [`Server::start`].
#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub users: Vec<TestUser>,
    /// `registrar.min_expires`; the server's default (60) when `None`.
    pub min_expires: Option<u32>,
    pub log: String,
    /// `auth.algorithms`; the server's default (MD5) when `None`.
    pub algorithms: Option<Vec<&'static str>>,
    /// The SIP port (UDP and TCP); a free one from [`free_port`] when `None`.
    pub port: Option<u16>,
    /// Also listen on `[::1]` (UDP and TCP, same port).
    pub ipv6: bool,
    /// How long to wait for the server to answer `status` after it was spawned.
    pub ready_timeout: Duration,
    /// TOML appended to the config file (ring groups, forwarding, rules...).
    pub extra_config: String,
    /// A STUN port on 127.0.0.1 (none by default).
    pub stun_port: Option<u16>,
    /// Run the server in this network namespace, listening on this address (see [`NatLab`]).
    pub netns: Option<(String, String)>,
    /// The domain served (default `example.test`).
    pub domain: Option<String>,
    /// Listen on this loopback address instead of 127.0.0.1 (two servers side by side).
    pub ip: Option<String>,
    /// More `listen` entries (`"tls:127.0.0.2:5061"`).
    pub extra_listen: Vec<String>,
    /// Options put before `serve` (`--log-format json`).
    pub serve_args: Vec<String>,
    /// The data folder (default: `data` in the test's folder).
    pub data_dir: Option<PathBuf>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            users: vec![ALICE, BOB, CAROL],
            min_expires: None,
            log: "debug".into(),
            algorithms: None,
            port: None,
            ipv6: false,
            ready_timeout: Duration::from_secs(20),
            extra_config: String::new(),
            stun_port: None,
            netns: None,
            domain: None,
            ip: None,
            extra_listen: vec![],
            serve_args: vec![],
            data_dir: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Peers: presence check and the skip rule

fn in_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        fs::metadata(d.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The Python that has pjsua2: `HEDGEWITCH_PJSUA_PYTHON` (set by scripts/test), else python3.
pub fn pjsua_python() -> Option<String> {
    let py = std::env::var("HEDGEWITCH_PJSUA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import pjsua2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    if std::env::var("HEDGEWITCH_SKIP_PEERS").is_ok_and(|v| v == "1") {
        println!("skipped: pjsua2 not importable (HEDGEWITCH_SKIP_PEERS=1)");
        return None;
    }
    panic!(
        "pjsua2 is not importable by `{py}`. Run scripts/test, which installs pjsua2-python \
         from PyPI into a virtual environment, or set HEDGEWITCH_SKIP_PEERS=1."
    );
}

/// True when every tool is installed. When one is missing: with `HEDGEWITCH_SKIP_PEERS=1`
/// prints "skipped" and returns false (the test then returns early); otherwise fails the test.
pub fn peers_available(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !in_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("HEDGEWITCH_SKIP_PEERS").is_ok_and(|v| v == "1") {
        println!(
            "skipped: {} not installed (HEDGEWITCH_SKIP_PEERS=1)",
            missing.join(", ")
        );
        return false;
    }
    panic!(
        "the SIP test peer(s) {} are not installed. Run the project's test script, which \
         installs them (Debian packages: sip-tester baresip sipsak sox), or set \
         HEDGEWITCH_SKIP_PEERS=1 to skip the end-to-end tests that need them.",
        missing.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// Ports

/// Hands out blocks of consecutive ports that are free for both UDP and TCP on 127.0.0.1.
///
/// The ports come from 20000..32000, below Linux's ephemeral range (32768..), so the kernel
/// never gives one of them to an outgoing connection of a peer while a test holds it. The
/// start depends on the process id, so test processes that run at the same time (nextest)
/// start far apart; inside one process an atomic counter keeps parallel tests apart.
pub fn free_ports(count: u16) -> u16 {
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let spread = (std::process::id().wrapping_mul(7919)) % ((HIGH - LOW) / 2);
        AtomicU32::new(LOW + spread)
    });
    for _ in 0..2000 {
        let mut base = next.fetch_add(u32::from(count), Ordering::SeqCst);
        if base + u32::from(count) >= HIGH {
            // Wrap around; another thread may do the same, the bind check below still holds.
            next.store(LOW, Ordering::SeqCst);
            base = next.fetch_add(u32::from(count), Ordering::SeqCst);
        }
        let ok = (0..u32::from(count)).all(|i| {
            let port = (base + i) as u16;
            std::net::UdpSocket::bind((HOST, port)).is_ok()
                && std::net::TcpListener::bind((HOST, port)).is_ok()
        });
        if ok {
            return base as u16;
        }
    }
    panic!("no block of {count} free ports found in {LOW}..{HIGH}");
}

/// One free port (UDP and TCP).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// A free port (UDP and TCP) of four digits, in 9000..10000, for peers that mishandle
/// five-digit ports (sipsak 0.9.8 cuts the last digit of the port off the URIs it writes).
pub fn free_port_4_digits() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 1000;
    for i in 0..1000 {
        let n = (start + NEXT.fetch_add(1, Ordering::SeqCst) + i) % 1000;
        let port = 9000 + n as u16;
        if std::net::UdpSocket::bind((HOST, port)).is_ok()
            && std::net::TcpListener::bind((HOST, port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in 9000..10000");
}

// ---------------------------------------------------------------------------------------------
// Bounded child processes

/// The outcome of a bounded run of a child process.
#[derive(Debug)]
pub struct Ran {
    /// None when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Waits for `child` until `deadline`; kills it (SIGKILL) and reaps it when the deadline passes.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion with a hard time limit, its output going through files
/// `<out_prefix>.stdout` / `.stderr` (no pipe can fill up and block the child).
pub fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&str>,
    out_prefix: &Path,
    timeout: Duration,
) -> Ran {
    let out_path = out_prefix.with_extension("stdout");
    let err_path = out_prefix.with_extension("stderr");
    let out = File::create(&out_path).expect("create stdout file");
    let err = File::create(&err_path).expect("create stderr file");
    cmd.stdout(out).stderr(err);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(text) = stdin {
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(text.as_bytes());
        }
    }
    let status = wait_bounded(&mut child, timeout);
    Ran {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a text file (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A certificate and key for the test domain and 127.0.0.1 from `hedgewitch tls self-signed`, in `dir/certs`
/// (`cert.pem`, `key.pem`, and `ca.pem` for the peers to trust); returns that folder.
pub fn self_signed_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let mut make = Command::new(env!("CARGO_BIN_EXE_hedgewitch"));
    make.args(["--domain", DOMAIN, "--data-dir"])
        .arg(dir.join("data-certs"))
        .args(["tls", "self-signed", "--name", HOST, "--out"])
        .arg(&certs);
    let made = run_bounded(&mut make, None, &certs, Duration::from_secs(20));
    assert!(made.success(), "tls self-signed: {}", made.stderr);
    certs
}

/// The `[tls]` table naming the files `self_signed_certs` made.
pub fn tls_config(certs: &Path) -> String {
    format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
        certs.join("cert.pem").display(),
        certs.join("key.pem").display()
    )
}

/// A fresh folder for one test, named after the test (the test thread's name).
pub fn test_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let thread = std::thread::current();
    // Kept short: the control socket's path inside must fit a Unix socket address.
    let test: String = sanitize(thread.name().unwrap_or("test"))
        .chars()
        .take(48)
        .collect();
    let dir = std::env::temp_dir().join("hedgewitch-e2e").join(format!(
        "{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Whether some socket is bound to UDP `port` on 127.0.0.1 or the wildcard address.
pub fn udp_port_bound(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/udp").unwrap_or_default();
    // Any IPv4 address: 127.0.0.1, the wildcard, or another loopback address of a test.
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|local| local.ends_with(&want))
}

/// Whether some socket of process `pid`'s network namespace is bound to UDP `port`.
pub fn udp_port_bound_in(pid: u32, port: u16) -> bool {
    let table = fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|local| local.ends_with(&want))
}

/// Whether some socket listens on TCP `port` on 127.0.0.1 or the wildcard address.
pub fn tcp_port_listening(port: u16) -> bool {
    const LISTEN: &str = "0A";
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // Any IPv4 address: 127.0.0.1, the wildcard, or another loopback address of a test.
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == LISTEN && f[1].ends_with(&want)
    })
}

/// The folder of the SIPp scenarios.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
}

// ---------------------------------------------------------------------------------------------
// The server

/// A running `hedgewitch serve` with its own data folder and ports. Dropping it kills it.
pub struct Server {
    pub dir: PathBuf,
    pub port: u16,
    /// The address it listens on (127.0.0.1, or its namespace's).
    pub host: String,
    /// The domain it serves.
    pub domain: String,
    pub config: PathBuf,
    pub log: PathBuf,
    opts: ServerOpts,
    child: Option<Child>,
    runs: AtomicU32,
}

impl Server {
    /// Starts a server on a free port with the test users of `opts`, and waits until it
    /// answers on its control socket.
    pub fn start(opts: ServerOpts) -> Server {
        let dir = test_dir();
        let port = opts.port.unwrap_or_else(free_port);
        let host = match (&opts.netns, &opts.ip) {
            (Some((_, a)), _) | (None, Some(a)) => a.clone(),
            (None, None) => HOST.to_string(),
        };
        let domain = opts.domain.clone().unwrap_or_else(|| DOMAIN.to_string());
        let config = dir.join("hedgewitch.toml");
        let data = opts.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let mut v6 = if opts.ipv6 {
            format!(", \"udp:[::1]:{port}\", \"tcp:[::1]:{port}\"")
        } else {
            String::new()
        };
        for l in &opts.extra_listen {
            v6.push_str(&format!(", \"{l}\""));
        }
        // No STUN port unless the test asks for one: tests run side by side.
        let stun = match opts.stun_port {
            Some(p) => format!("stun = [\"udp:{HOST}:{p}\"]\n"),
            None => "stun = []\n".to_string(),
        };
        let mut text = format!(
            "domain = \"{domain}\"\n\
             data_dir = \"{}\"\n\
             listen = [\"udp:{host}:{port}\", \"tcp:{host}:{port}\"{v6}]\n\
             {stun}\
             log = \"{}\"\n",
            data.display(),
            opts.log
        );
        if let Some(m) = opts.min_expires {
            text.push_str(&format!("\n[registrar]\nmin_expires = {m}\n"));
        }
        if let Some(algs) = &opts.algorithms {
            let list: Vec<String> = algs.iter().map(|a| format!("\"{a}\"")).collect();
            text.push_str(&format!("\n[auth]\nalgorithms = [{}]\n", list.join(", ")));
        }
        // The relay binds a reserve of port pairs as it starts: each server gets a range of
        // its own among the test ports, so that it never takes ports another test was given.
        // (Last in the file: the test's own text may start with top-level keys.)
        let mut extra = opts.extra_config.clone();
        if !(extra.contains("[relay]") && extra.contains("ports = ")) {
            let lo = (u32::from(free_ports(RELAY_PORTS + 1)) + 1) & !1;
            let ports = format!("ports = \"{lo}-{}\"\n", lo + u32::from(RELAY_PORTS) - 1);
            if extra.contains("[relay]\n") {
                extra = extra.replacen("[relay]\n", &format!("[relay]\n{ports}"), 1);
            } else {
                extra.push_str(&format!("\n[relay]\n{ports}"));
            }
        }
        // No TURN server unless the test asks for one: its default port is shared.
        if !extra.contains("[turn]") {
            extra.push_str("\n[turn]\nlisten = []\n");
        }
        text.push('\n');
        text.push_str(&extra);
        fs::write(&config, text).expect("write config");
        let mut srv = Server {
            host,
            domain,
            log: dir.join("server.log"),
            dir,
            port,
            config,
            opts,
            child: None,
            runs: AtomicU32::new(0),
        };
        for u in srv.opts.users.clone() {
            let r = srv.cli_stdin(
                &[
                    "user",
                    "add",
                    u.name,
                    "--extension",
                    u.extension,
                    "--password-stdin",
                ],
                &format!("{}\n", u.password),
            );
            assert!(
                r.success(),
                "`hedgewitch user add {}` failed: {:?}\n{}{}",
                u.name,
                r.status,
                r.stdout,
                r.stderr
            );
        }
        srv.spawn();
        srv
    }

    /// `127.0.0.1:PORT`, the server's SIP address for UDP and TCP.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        let mut log2 = log.try_clone().expect("clone log handle");
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let _ = writeln!(log2, "===== hedgewitch serve, run {} =====", n + 1);
        let mut cmd = match &self.opts.netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns])
                    .arg(env!("CARGO_BIN_EXE_hedgewitch"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_hedgewitch")),
        };
        let child = cmd
            .arg("-c")
            .arg(&self.config)
            .args(&self.opts.serve_args)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .expect("spawn hedgewitch serve");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let timeout = self.opts.ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!(
                        "hedgewitch serve exited during start-up ({st}); log:\n{}",
                        tail(&self.log, 60)
                    );
                }
            }
            if self.cli(&["status", "--json"]).success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "hedgewitch did not answer `status` within {timeout:?}; log:\n{}",
                    tail(&self.log, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `hedgewitch -c CONFIG ARGS…` (bounded to 20 s).
    pub fn cli(&self, args: &[&str]) -> Ran {
        self.cli_inner(args, None)
    }

    /// Same, with `input` on standard input.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> Ran {
        self.cli_inner(args, Some(input))
    }

    fn cli_inner(&self, args: &[&str], input: Option<&str>) -> Ran {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hedgewitch"));
        cmd.arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG");
        run_bounded(
            &mut cmd,
            input,
            &self.dir.join("cli"),
            Duration::from_secs(20),
        )
    }

    /// `hedgewitch WHAT --json`, parsed.
    pub fn cli_json(&self, what: &str) -> Value {
        let r = self.cli(&[what, "--json"]);
        assert!(
            r.success(),
            "`hedgewitch {what} --json` failed ({:?}): {}{}",
            r.status,
            r.stdout,
            r.stderr
        );
        serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("`{what} --json` printed no JSON ({e}): {}", r.stdout))
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        self.cli_json("status")
    }

    /// One counter of `status --json` (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or(0)
    }

    /// `registrations --json`, as a list of objects.
    pub fn registrations(&self) -> Vec<Value> {
        match self.cli_json("registrations") {
            Value::Array(v) => v,
            other => panic!("`registrations --json` is not an array: {other}"),
        }
    }

    /// The registrations of one user.
    pub fn registrations_of(&self, user: &str) -> Vec<Value> {
        self.registrations()
            .into_iter()
            .filter(|r| r["user"].as_str() == Some(user))
            .collect()
    }

    /// Waits (bounded) until `cond` holds for the registrations; returns the last list seen.
    pub fn wait_registrations(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut last = vec![];
        let ok = poll_until(timeout, || {
            last = self.registrations();
            cond(&last)
        });
        assert!(
            ok,
            "timed out waiting for: {what}; registrations: {last:#?}"
        );
        last
    }

    /// Kills the server with SIGKILL (no clean shutdown) and starts it again on the same
    /// data folder and ports.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// A SIPp run against this server; see [`Sipp`].
    pub fn sipp(&self, name: &str, scenario: &str) -> Sipp {
        Sipp::new(self, name, scenario)
    }

    /// The server's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server must have survived whatever the test sent it.
        let died = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let failed = std::thread::panicking() || died.is_some();
        if failed {
            eprintln!(
                "----- test failed; its files are kept in {} -----\n----- tail of the server log ({}) -----\n{}\n-----",
                self.dir.display(),
                self.log.display(),
                tail(&self.log, 150)
            );
        } else if std::env::var("HEDGEWITCH_KEEP_LOGS").is_ok_and(|v| v == "1") {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if let (Some(st), false) = (died, std::thread::panicking()) {
            panic!("hedgewitch serve died during the test ({st}); see its log above");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SIPp

/// A SIPp run: `sipp -sf tests/sipp/SCENARIO 127.0.0.1:SERVERPORT -i 127.0.0.1 -m 1 …`, with
/// its message trace, error log and screens in the test folder under `NAME_*`. The scenario
/// gets the keys `[domain]` and `[server]`; more with [`Sipp::key`].
pub struct Sipp {
    /// Run in this network namespace with this local address (default: none, 127.0.0.1).
    netns: Option<(String, String)>,
    /// Another loopback address to send from (default 127.0.0.1).
    local_ip: Option<String>,
    name: String,
    dir: PathBuf,
    scenario: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    local_port: Option<u16>,
    tcp: bool,
    calls: u32,
}

impl Sipp {
    fn new(srv: &Server, name: &str, scenario: &str) -> Sipp {
        let path = scenario_dir().join(scenario);
        assert!(path.is_file(), "no scenario {}", path.display());
        let mut s = Sipp {
            calls: 1,
            netns: None,
            local_ip: None,
            name: sanitize(name),
            dir: srv.dir.clone(),
            scenario: path,
            args: vec![],
            timeout: Duration::from_secs(40),
            local_port: None,
            tcp: false,
        };
        s = s.key("domain", &srv.domain).key("server", &srv.addr());
        s.args.push(srv.addr());
        s
    }

    /// Sends to another server than the test's own (a provider), for `domain`.
    pub fn to(mut self, addr: &str, domain: &str) -> Sipp {
        let own = self
            .args
            .iter()
            .rposition(|a| !a.starts_with('-'))
            .expect("the target");
        self.args[own] = addr.to_string();
        self.key("domain", domain).key("server", addr)
    }

    /// Local SIP port (`-p`).
    pub fn port(mut self, port: u16) -> Sipp {
        self.local_port = Some(port);
        self.arg("-p").arg(&port.to_string())
    }

    /// A scenario keyword: `[name]` in the scenario becomes `value`.
    /// Sets a scenario key; a later call for the same key replaces the earlier value.
    pub fn key(mut self, name: &str, value: &str) -> Sipp {
        if let Some(i) = self
            .args
            .windows(2)
            .position(|w| w[0] == "-key" && w[1] == name)
        {
            self.args[i + 2] = value.to_string();
            return self;
        }
        self.arg("-key").arg(name).arg(value)
    }

    /// Digest credentials, and the digest URI to use (it must match the Request-URI).
    pub fn auth(self, user: &TestUser, auth_uri: &str) -> Sipp {
        self.auth_with(user.name, user.password, auth_uri)
    }

    pub fn auth_with(self, user: &str, password: &str, auth_uri: &str) -> Sipp {
        self.arg("-au")
            .arg(user)
            .arg("-ap")
            .arg(password)
            .arg("-auth_uri")
            .arg(auth_uri)
    }

    /// Sends from another loopback address (`127.0.0.4`): a phone the server tells apart.
    pub fn local_ip(mut self, ip: &str) -> Sipp {
        self.local_ip = Some(ip.to_string());
        self
    }

    /// Runs SIPp inside a network namespace, with `ip` as its local address.
    pub fn in_netns(mut self, ns: &str, ip: &str) -> Sipp {
        self.netns = Some((ns.to_string(), ip.to_string()));
        self
    }

    /// TCP, one connection (`-t t1`).
    pub fn tcp(mut self) -> Sipp {
        self.tcp = true;
        self.arg("-t").arg("t1")
    }

    /// TCP when `tcp` is true, else UDP (SIPp's default).
    pub fn tcp_if(self, tcp: bool) -> Sipp {
        if tcp {
            self.tcp()
        } else {
            self
        }
    }

    /// The scenario's own global timeout (SIPp `-timeout`); the process is killed 15 s later.
    pub fn timeout(mut self, t: Duration) -> Sipp {
        self.timeout = t;
        self
    }

    pub fn arg(mut self, a: &str) -> Sipp {
        self.args.push(a.to_string());
        self
    }

    /// How many calls (scenario runs) SIPp makes or answers before it exits (1 by default).
    pub fn calls(mut self, n: u32) -> Sipp {
        self.calls = n;
        self
    }

    /// Replaces `@NAME@` in the scenario text (for the templated scenarios) by writing a
    /// copy into the test folder.
    pub fn subst(self, name: &str, value: &str) -> Sipp {
        self.replace(&format!("@{name}@"), value)
    }

    /// Replaces any text of the scenario, in a copy written into the test folder.
    pub fn replace(mut self, from: &str, to: &str) -> Sipp {
        let text = fs::read_to_string(&self.scenario).expect("read scenario");
        assert!(
            text.contains(from),
            "`{from}` is not in {}",
            self.scenario.display()
        );
        let text = text.replace(from, to);
        let copy = self.dir.join(format!("{}.xml", self.name));
        fs::write(&copy, text).expect("write scenario copy");
        self.scenario = copy;
        self
    }

    fn command(&self) -> Command {
        let p = |suffix: &str| self.dir.join(format!("{}_{suffix}", self.name));
        let (mut cmd, ip) = match &self.netns {
            Some((ns, ip)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sipp"]);
                (c, ip.as_str())
            }
            None => (
                Command::new("sipp"),
                self.local_ip.as_deref().unwrap_or(HOST),
            ),
        };
        cmd.current_dir(&self.dir)
            .arg("-sf")
            .arg(&self.scenario)
            .args(&self.args)
            .args(["-i", ip, "-mi", ip, "-nostdin"])
            .arg("-m")
            .arg(self.calls.to_string())
            .arg("-timeout")
            .arg(format!("{}s", self.timeout.as_secs()))
            .arg("-timeout_error")
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(p("messages.log"))
            .arg("-trace_err")
            .arg("-error_file")
            .arg(p("errors.log"))
            .arg("-trace_screen")
            .arg("-screen_file")
            .arg(p("screen.log"));
        cmd
    }

    /// Starts SIPp in the background (for a UAS that waits for a request).
    pub fn spawn(self) -> SippRunning {
        let mut cmd = self.command();
        let out =
            File::create(self.dir.join(format!("{}.stdout", self.name))).expect("stdout file");
        let err =
            File::create(self.dir.join(format!("{}.stderr", self.name))).expect("stderr file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sipp: {e}"));
        SippRunning {
            child: Some(child),
            name: self.name,
            dir: self.dir,
            limit: self.timeout + Duration::from_secs(15),
            started: Instant::now(),
            local_port: self.local_port,
            tcp: self.tcp,
            in_netns: self.netns.is_some(),
        }
    }

    /// Starts SIPp in the background and waits until it listens on its `-p` port.
    pub fn spawn_listening(self) -> SippRunning {
        let mut r = self.spawn();
        r.wait_listening();
        r
    }

    /// Runs SIPp to its end (bounded) and returns the outcome.
    pub fn run(self) -> SippOutcome {
        self.spawn().wait()
    }
}

/// A SIPp process still running; dropping it kills it.
pub struct SippRunning {
    /// In another network namespace: its sockets are seen through /proc/PID/net.
    in_netns: bool,
    child: Option<Child>,
    name: String,
    dir: PathBuf,
    limit: Duration,
    started: Instant,
    local_port: Option<u16>,
    tcp: bool,
}

impl SippRunning {
    /// Waits (bounded) until SIPp listens on its `-p` port (UDP socket bound, or TCP socket
    /// listening), read from /proc/net so the check never races with SIPp's own bind. A UAS
    /// must listen before the call is placed. Fails at once, with SIPp's report, if SIPp
    /// exits first (a bad scenario, a port in use).
    pub fn wait_listening(&mut self) {
        let port = self
            .local_port
            .expect("wait_listening needs a SIPp run with .port()");
        let tcp = self.tcp;
        let in_netns = self.in_netns;
        let mut exited = None;
        let ok = poll_until(Duration::from_secs(10), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    exited = Some(st);
                    return true;
                }
                if in_netns {
                    // `ip netns exec` execs SIPp: same process, its namespace's table.
                    return udp_port_bound_in(c.id(), port);
                }
            }
            if tcp {
                tcp_port_listening(port)
            } else {
                udp_port_bound(port)
            }
        });
        if let Some(st) = exited {
            let out = SippOutcome {
                name: self.name.clone(),
                dir: self.dir.clone(),
                status: Some(st),
            };
            panic!(
                "SIPp exited before it listened on port {port}:\n{}",
                out.report()
            );
        }
        assert!(ok, "SIPp `{}` did not listen on port {port}", self.name);
    }

    /// Waits for SIPp to end (killing it at its hard limit) and returns the outcome.
    pub fn wait(mut self) -> SippOutcome {
        let mut child = self.child.take().expect("sipp child");
        let left = self.limit.saturating_sub(self.started.elapsed());
        let status = wait_bounded(&mut child, left);
        SippOutcome {
            name: self.name.clone(),
            dir: self.dir.clone(),
            status,
        }
    }
}

impl Drop for SippRunning {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a SIPp run ended, with access to its logs.
pub struct SippOutcome {
    pub name: String,
    pub dir: PathBuf,
    /// None when it was killed at its hard limit.
    pub status: Option<ExitStatus>,
}

impl SippOutcome {
    pub fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}_{suffix}", self.name))
    }

    /// The SIP messages SIPp sent and received.
    pub fn messages(&self) -> String {
        fs::read_to_string(self.file("messages.log")).unwrap_or_default()
    }

    /// Everything useful to understand a failed run.
    pub fn report(&self) -> String {
        format!(
            "SIPp `{}` ended with {}\n--- errors ---\n{}\n--- stderr ---\n{}\n--- last screen ---\n{}\n--- messages (tail) ---\n{}",
            self.name,
            match self.status {
                Some(s) => s.to_string(),
                None => "no exit: killed at its time limit".into(),
            },
            tail(&self.file("errors.log"), 40),
            tail(&self.dir.join(format!("{}.stderr", self.name)), 20),
            tail(&self.file("screen.log"), 45),
            tail(&self.file("messages.log"), 120),
        )
    }

    /// Fails the test unless SIPp exited 0 (every call of the scenario succeeded).
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.status.is_some_and(|s| s.code() == Some(0)),
            "{}",
            self.report()
        );
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Call helpers built on SIPp

/// Registers `user` with SIPp (`register.xml`, expires 3600) from a fresh UDP port and
/// returns that port: a UAS scenario started on it receives the calls to `user`.
pub fn register_udp(srv: &Server, user: &TestUser) -> u16 {
    let port = free_port();
    register_on(srv, user, port, 3600, false).assert_ok();
    port
}

/// REGISTER (with digest) of `user` from `port` (UDP, or TCP with `tcp`) with the given expiry.
pub fn register_on(
    srv: &Server,
    user: &TestUser,
    port: u16,
    expires: u32,
    tcp: bool,
) -> SippOutcome {
    let t = if tcp { "tcp" } else { "udp" };
    srv.sipp(
        &format!("register_{}_{t}_{port}_{expires}", user.name),
        "register.xml",
    )
    .port(port)
    .tcp_if(tcp)
    .key("user", user.name)
    .key("expires", &expires.to_string())
    .auth(user, DOMAIN)
    .run()
}

/// A SIPp UAS run of `scenario` for `user` on `port` (where `user` registered): start it with
/// [`Sipp::spawn_listening`].
pub fn uas(srv: &Server, user: &TestUser, port: u16, scenario: &str) -> Sipp {
    let name = format!(
        "uas_{}_{port}_{}",
        user.name,
        scenario.trim_end_matches(".xml")
    );
    srv.sipp(&name, scenario).port(port)
}

/// Starts the UDP UAS `scenario` on `port` (where `user` registered) and waits until it listens.
pub fn start_uas(srv: &Server, user: &TestUser, port: u16, scenario: &str) -> SippRunning {
    uas(srv, user, port, scenario).spawn_listening()
}

/// A SIPp UAC run as alice (authenticated) to `sip:CALLEE@example.test`, on a fresh port.
pub fn uac_as_alice(srv: &Server, scenario: &str, callee: &str) -> Sipp {
    let name = format!("uac_alice_{}_{callee}", scenario.trim_end_matches(".xml"));
    srv.sipp(&name, scenario)
        .port(free_port())
        .key("user", ALICE.name)
        .key("callee", callee)
        .auth(&ALICE, &format!("{callee}@{DOMAIN}"))
}

/// Asserts both ends of a call succeeded, reporting both SIPp logs when one did not.
pub fn assert_both_ok(uac: &SippOutcome, uas: &SippOutcome) {
    let ok = |o: &SippOutcome| o.status.is_some_and(|s| s.code() == Some(0));
    assert!(
        ok(uac) && ok(uas),
        "===== caller =====\n{}\n\n===== callee =====\n{}",
        uac.report(),
        uas.report()
    );
}

// ---------------------------------------------------------------------------------------------
// Calls in progress (`hedgewitch calls`)

/// `calls --json`, as a list.
pub fn calls(srv: &Server) -> Vec<Value> {
    let r = srv.cli(&["calls", "--json"]);
    assert!(r.success(), "hedgewitch calls failed: {}", r.stderr);
    serde_json::from_str::<Value>(&r.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Packets of the first stream of the only call: (from caller, from callee).
pub fn packets(call: &Value) -> (u64, u64) {
    let s = &call["streams"][0];
    (
        s["packets_from_caller"].as_u64().unwrap_or(0),
        s["packets_from_callee"].as_u64().unwrap_or(0),
    )
}

/// Waits until the only call satisfies `cond`, and returns it.
pub fn wait_call(srv: &Server, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = vec![];
    let ok = poll_until(Duration::from_secs(20), || {
        last = calls(srv);
        last.len() == 1 && cond(&last[0])
    });
    assert!(ok, "never saw {what}; calls: {last:#?}");
    last.remove(0)
}

/// bob registered and answering (SIPp); alice calling him (SIPp), the call held `hold_ms`
/// before her BYE. Both still running: (callee, caller).
pub fn held_call(srv: &Server, hold_ms: u32) -> (SippRunning, SippRunning) {
    let bob_port = register_udp(srv, &BOB);
    let callee = start_uas(srv, &BOB, bob_port, "uas_answer.xml");
    let caller = srv
        .sipp("uac_alice", "uac_call.xml")
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .auth(&ALICE, &format!("bob@{DOMAIN}"))
        .replace(
            "<pause milliseconds=\"500\"/>",
            &format!("<pause milliseconds=\"{hold_ms}\"/>"),
        )
        .spawn();
    (callee, caller)
}
