//! The Debian package on this machine: `scripts/package` makes the .deb (from the binary this
//! test suite already built, so no release build), `dpkg -i` installs it, the files, the
//! `hedgewitch` system user and its data folder are where the unit and the CLI expect them,
//! `systemd-analyze verify` accepts the installed unit, the installed binary serves with the
//! installed configuration as that user, and root's CLI (no `--config`: it finds the system
//! file) reaches the daemon and adds a user without leaving root-owned files in the store.
//! `dpkg --purge` then leaves the machine as it was, also when the test fails.
//!
//! Needs root and dpkg; without them it prints "skipped" and passes. The daemon runs in a
//! network namespace of its own, so the default ports of the installed config (5060, 3478)
//! never clash with the tests running beside it.

mod common;

use common::{poll_until, run_bounded, tail, test_dir, wait_bounded, Ran};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/bin/hedgewitch";
const CONFIG: &str = "/etc/hedgewitch/hedgewitch.toml";
const UNIT: &str = "/lib/systemd/system/hedgewitch.service";
const DATA: &str = "/var/lib/hedgewitch";

fn in_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command with a time limit, its output kept in `dir/<name>.stdout|stderr`.
fn run(dir: &Path, name: &str, cmd: &mut Command, stdin: Option<&str>, limit: Duration) -> Ran {
    run_bounded(cmd, stdin, &dir.join(name), limit)
}

fn must(what: &str, r: Ran) -> Ran {
    assert!(
        r.success(),
        "{what} failed ({:?}):\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    r
}

/// The installed CLI as root, the way an administrator runs it with sudo: no `--config` and
/// no `HEDGEWITCH_CONFIG`, so it has to find /etc/hedgewitch/hedgewitch.toml itself.
fn admin(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("HEDGEWITCH_CONFIG")
        .env_remove("RUST_LOG");
    c
}

/// `dpkg ARGS`, bounded, waiting (up to a minute) while another dpkg or apt holds the lock:
/// another test script may be installing its peers on this machine at the same moment.
fn dpkg(dir: &Path, name: &str, args: &[&std::ffi::OsStr]) -> Ran {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = Command::new("dpkg");
        c.args(args);
        let r = run(dir, name, &mut c, None, Duration::from_secs(120));
        if r.success() || !r.stderr.contains("lock") || Instant::now() >= deadline {
            return r;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The id of a user from the user database.
fn id_of(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Every path under `root`, itself included.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Asserts that the store exists in `root` and that every path under it belongs to `uid:gid`.
fn assert_owned_by(root: &str, uid: u32, gid: u32) {
    let files = walk(Path::new(root));
    assert!(
        files.iter().any(|p| p.ends_with("hedgewitch.db")),
        "no store in {root}: {files:?}"
    );
    for p in &files {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (uid, gid),
            "{} is not owned by hedgewitch:hedgewitch",
            p.display()
        );
    }
}

/// Undoes everything the test did to the machine, in reverse order, whatever happened: the
/// daemon, the namespace, the package (purged: files, data folder, system user).
struct Cleanup {
    dir: PathBuf,
    daemon: Option<Child>,
    netns: Option<String>,
    installed: bool,
}

impl Cleanup {
    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SIGTERM first: the daemon removes its control socket on a clean stop.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_bounded(&mut c, Duration::from_secs(10)).is_none() {
                eprintln!("hedgewitch did not stop on SIGTERM within 10 s; killed");
            }
        }
    }

    fn purge(&mut self) -> Ran {
        self.installed = false;
        dpkg(
            &self.dir,
            "dpkg-purge",
            &["--purge".as_ref(), "hedgewitch".as_ref()],
        )
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_daemon();
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if self.installed {
            let r = self.purge();
            if !r.success() {
                eprintln!(
                    "dpkg --purge hedgewitch failed; remove it by hand:\n{}{}",
                    r.stdout, r.stderr
                );
            }
        }
    }
}

#[test]
fn the_debian_package_installs_serves_and_purges() {
    let t0 = Instant::now();
    if unsafe { libc::geteuid() } != 0 || !in_path("dpkg") {
        println!("skipped: installing a package needs root and dpkg");
        return;
    }
    // The test purges what it installs: it must not take a real installation with it.
    let before = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "hedgewitch"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let state = before.split_whitespace().last().unwrap_or("not-installed");
    assert!(
        state == "not-installed",
        "hedgewitch is already installed on this machine ({before}); this test installs and \
         purges the package, so it leaves a real installation alone. If it is a leftover of an \
         interrupted run, remove it with `dpkg --purge hedgewitch`."
    );
    let dir = test_dir();
    let mut guard = Cleanup {
        dir: dir.clone(),
        daemon: None,
        netns: None,
        installed: false,
    };

    // 1. The package, from the debug binary cargo built for this test: put where cargo-deb
    //    takes the binary from (TARGET_DIR/release/) in a target folder of the test's own,
    //    and packaged with --no-build, so the test needs no release build. Stripped, and
    //    compressed fast: the package is thrown away at the end.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("working folder {}", dir.display());
    let stage = dir.join("target");
    std::fs::create_dir_all(stage.join("release")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_hedgewitch"),
        stage.join("release/hedgewitch"),
    )
    .expect("copy the test binary");
    let out = dir.join("deb");
    let mut c = Command::new(root.join("scripts/package"));
    c.args(["--no-build", "--fast", "--no-dbgsym", "--output"])
        .arg(&out)
        .env("CARGO_TARGET_DIR", &stage)
        .current_dir(root);
    let r = must(
        "scripts/package",
        run(&dir, "package", &mut c, None, Duration::from_secs(900)),
    );
    let deb = PathBuf::from(r.stdout.lines().last().unwrap_or("").trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "scripts/package did not print the path of a .deb: {:?}\n{}",
        r.stdout,
        r.stderr
    );
    println!("built {} in {:?}", deb.display(), t0.elapsed());

    // 2. Installed.
    guard.installed = true;
    must(
        "dpkg -i",
        dpkg(&dir, "dpkg-i", &["-i".as_ref(), deb.as_os_str()]),
    );
    for f in [BIN, CONFIG, UNIT] {
        assert!(Path::new(f).is_file(), "{f} is not installed");
    }
    let conffiles =
        std::fs::read_to_string("/var/lib/dpkg/info/hedgewitch.conffiles").unwrap_or_default();
    assert!(conffiles.contains(CONFIG), "not a conffile: {conffiles:?}");
    let uid = id_of("-u", "hedgewitch").expect("no hedgewitch user after dpkg -i");
    let gid = id_of("-g", "hedgewitch").expect("no hedgewitch group");
    assert_ne!(uid, 0);
    let m = std::fs::metadata(DATA).expect("no /var/lib/hedgewitch");
    assert!(m.is_dir());
    assert_eq!(
        (m.uid(), m.gid()),
        (uid, gid),
        "{DATA} not owned by hedgewitch"
    );
    assert_eq!(m.mode() & 0o7777, 0o750, "{DATA} mode");

    // 3. The unit, as systemd would load it (it checks that ExecStart's binary exists, hence
    //    after the install).
    if in_path("systemd-analyze") {
        let mut c = Command::new("systemd-analyze");
        c.args(["verify", UNIT]);
        let r = run(&dir, "verify", &mut c, None, Duration::from_secs(60));
        if !r.stderr.trim().is_empty() {
            println!("systemd-analyze verify said:\n{}", r.stderr);
        }
        assert!(
            r.success() && !r.stderr.contains("hedgewitch.service:"),
            "systemd-analyze verify {UNIT} ({:?}):\n{}{}",
            r.status,
            r.stdout,
            r.stderr
        );
    } else {
        println!("note: systemd-analyze is not installed; the unit was not verified");
    }

    // 4. Before the daemon ever ran, as an administrator would right after the install:
    //    root's CLI creates the store and a TLS certificate in the data folder, and has to
    //    create them as hedgewitch, or the daemon could not write its own store. The first
    //    user names the domain, which the data folder then records for every later command.
    let r = must(
        "hedgewitch user add as root (no store yet)",
        run(
            &dir,
            "user-add-alice",
            &mut admin(&[
                "--domain",
                "example.test",
                "user",
                "add",
                "alice",
                "--extension",
                "101",
                "--password-stdin",
            ]),
            Some("alice-Secret-1\n"),
            Duration::from_secs(20),
        ),
    );
    assert!(
        r.stdout.contains("added sip:alice@example.test"),
        "{}",
        r.stdout
    );
    must(
        "hedgewitch tls self-signed as root",
        run(
            &dir,
            "tls",
            &mut admin(&["tls", "self-signed"]),
            None,
            Duration::from_secs(20),
        ),
    );
    assert_owned_by(DATA, uid, gid);

    // 5. The installed binary with the installed config, as the hedgewitch user (setpriv
    //    execs, so the child's PID is the daemon's), in a namespace with only loopback.
    let ns = format!("hwpkg{}", std::process::id());
    let mut c = Command::new("ip");
    c.args(["netns", "add", &ns]);
    must(
        "ip netns add",
        run(&dir, "netns-add", &mut c, None, Duration::from_secs(10)),
    );
    guard.netns = Some(ns.clone());
    let mut c = Command::new("ip");
    c.args(["-n", &ns, "link", "set", "lo", "up"]);
    must(
        "ip link set lo up",
        run(&dir, "netns-lo", &mut c, None, Duration::from_secs(10)),
    );
    let log = dir.join("server.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "setpriv",
            "--reuid=hedgewitch",
            "--regid=hedgewitch",
        ])
        .args(["--clear-groups", BIN, "--config", CONFIG, "serve"])
        .env_remove("HEDGEWITCH_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("spawn the installed hedgewitch");
    let pid = daemon.id();
    guard.daemon = Some(daemon);
    let mut last = None;
    let ready = poll_until(Duration::from_secs(30), || {
        if let Some(Ok(Some(st))) = guard.daemon.as_mut().map(|c| c.try_wait()) {
            panic!(
                "the installed hedgewitch exited ({st}); log:\n{}",
                tail(&log, 40)
            );
        }
        let r = run(
            &dir,
            "status",
            &mut admin(&["status", "--json"]),
            None,
            Duration::from_secs(10),
        );
        let ok = r.success();
        last = Some(r);
        ok
    });
    let last = last.unwrap();
    assert!(
        ready,
        "`hedgewitch status` as root never answered:\n{}{}\nlog:\n{}",
        last.stdout,
        last.stderr,
        tail(&log, 40)
    );
    let status: serde_json::Value = serde_json::from_str(last.stdout.trim()).unwrap();
    assert_eq!(status["domain"], "example.test", "{status}");
    let owner = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    assert_eq!(owner, uid, "the daemon does not run as hedgewitch");

    assert_eq!(status["users"], 1, "{status}");

    // 6. Another account added by root while the daemon runs: the daemon is told over its
    //    socket and loads it, and still nothing in the data folder belongs to root.
    let r = must(
        "hedgewitch user add as root (daemon running)",
        run(
            &dir,
            "user-add-bob",
            &mut admin(&[
                "user",
                "add",
                "bob",
                "--extension",
                "102",
                "--password-stdin",
            ]),
            Some("bob-Secret-2\n"),
            Duration::from_secs(20),
        ),
    );
    assert!(r.stdout.contains("added sip:bob@"), "{}", r.stdout);
    assert!(!r.stderr.contains("did not reload"), "{}", r.stderr);
    let r = must(
        "hedgewitch user list as root",
        run(
            &dir,
            "user-list",
            &mut admin(&["user", "list"]),
            None,
            Duration::from_secs(20),
        ),
    );
    assert!(
        r.stdout.contains("alice") && r.stdout.contains("bob"),
        "{}",
        r.stdout
    );
    assert_owned_by(DATA, uid, gid);
    let status = run(
        &dir,
        "status2",
        &mut admin(&["status", "--json"]),
        None,
        Duration::from_secs(10),
    );
    let status: serde_json::Value =
        serde_json::from_str(must("status", status).stdout.trim()).unwrap();
    assert_eq!(
        status["users"], 2,
        "the daemon did not reload the store: {status}"
    );

    // 6b. A provider added by root: written as hedgewitch into /etc/hedgewitch/providers.d
    //     (which postinst made), private, and loaded by the running daemon.
    let r = must(
        "hedgewitch provider add as root",
        run(
            &dir,
            "provider-add",
            &mut admin(&[
                "provider",
                "add",
                "pbx",
                "--profile",
                "ip-pbx",
                "--provider-domain",
                "127.0.0.1",
            ]),
            None,
            Duration::from_secs(20),
        ),
    );
    assert!(!r.stderr.contains("did not reload"), "{}", r.stderr);
    let file = Path::new("/etc/hedgewitch/providers.d/pbx.toml");
    let meta = std::fs::metadata(file).expect("the provider file");
    assert_eq!((meta.uid(), meta.gid()), (uid, gid), "owned by hedgewitch");
    assert_eq!(meta.permissions().mode() & 0o077, 0, "private");
    let r = must(
        "hedgewitch providers as root",
        run(
            &dir,
            "providers",
            &mut admin(&["providers", "--json"]),
            None,
            Duration::from_secs(10),
        ),
    );
    assert!(r.stdout.contains("\"pbx\""), "{}", r.stdout);

    // 7. Stopped by its PID, then purged: nothing of the package stays.
    guard.stop_daemon();
    assert!(
        !Path::new(DATA).join("control.sock").exists(),
        "the daemon left its socket behind; log:\n{}",
        tail(&log, 20)
    );
    let r = guard.purge();
    must("dpkg --purge hedgewitch", r);
    for p in [BIN, CONFIG, UNIT, DATA, "/etc/hedgewitch"] {
        assert!(!Path::new(p).exists(), "{p} is still there after the purge");
    }
    assert_eq!(
        id_of("-u", "hedgewitch"),
        None,
        "the hedgewitch user outlived the purge"
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    println!("package test passed in {:?}", t0.elapsed());
}
