//! Running a server: reloads that apply what can change live and name what needs a restart
//! (relay mode with SIPp calls before and after; a changed `listen`; a renewed certificate
//! seen by `openssl s_client`), log lines an operator can use (a wrong password from SIPp is
//! one WARN line with the source and the phone, no colour codes in a file, JSON on request),
//! and `hedgewitch doctor` on a domain whose records a test DNS server (dnsmasq) publishes.

mod common;

use common::dnsmasq::Dnsmasq;
use common::natlab::{NatLab, SERVER_IP};
use common::*;
use std::process::Command;
use std::time::Duration;

/// Replaces `from` by `to` in the server's config file (the test fails if it is not there).
fn edit_config(srv: &Server, from: &str, to: &str) {
    let text = std::fs::read_to_string(&srv.config).expect("config");
    assert!(
        text.contains(from),
        "`{from}` is not in the config:\n{text}"
    );
    std::fs::write(&srv.config, text.replacen(from, to, 1)).expect("config");
}

fn reload(srv: &Server) -> String {
    let r = srv.cli(&["reload"]);
    assert!(r.success(), "reload failed: {}{}", r.stdout, r.stderr);
    r.stdout
}

fn log(srv: &Server) -> String {
    std::fs::read_to_string(&srv.log).unwrap_or_default()
}

/// A call from alice to bob (SIPp both ends) while `check` looks at it once answered.
fn call_while(srv: &Server, check: impl FnOnce(&serde_json::Value)) {
    let (callee, caller) = held_call(srv, 1500);
    let call = wait_call(srv, "the call answered", |c| c["state"] == "answered");
    check(&call);
    assert_both_ok(&caller.wait(), &callee.wait());
    assert!(poll_until(Duration::from_secs(10), || calls(srv).is_empty()));
}

#[test]
fn reload_applies_the_relay_mode_and_names_a_changed_listen_address() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        extra_config: "[relay]\nmode = \"never\"\n".into(),
        ..ServerOpts::default()
    });
    call_while(&srv, |c| assert_eq!(c["media"], "direct", "{c:#}"));

    // Nothing changed: nothing applied, nothing to restart, no warning; adding a user (the
    // CLI asks the server to reload) warns of nothing either.
    let out = reload(&srv);
    assert!(
        !out.contains("applied") && !out.contains("restart"),
        "a reload with nothing changed: {out}"
    );
    let r = srv.cli_stdin(
        &["user", "add", "dave", "--password-stdin"],
        "dave-Secret-4\n",
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(poll_until(Duration::from_secs(5), || log(&srv)
        .contains("reloaded (reload-users): 4 users")));
    assert!(!log(&srv).contains("restart"), "{}", tail(&srv.log, 20));

    edit_config(&srv, "mode = \"never\"", "mode = \"always\"");
    let out = reload(&srv);
    assert!(out.contains("applied: relay.mode"), "{out}");
    assert!(!out.contains("restart"), "{out}");
    call_while(&srv, |c| assert_eq!(c["media"], "relayed", "{c:#}"));

    // A new listen address is named as needing a restart, in the answer and in the log, and
    // again at each reload until the server restarts: it is still not in force.
    let other = free_port();
    edit_config(
        &srv,
        "listen = [",
        &format!("listen = [\"udp:127.0.0.1:{other}\", "),
    );
    let warnings = || {
        log(&srv)
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("applied only after a restart: listen"))
            .count()
    };
    let out = reload(&srv);
    assert!(
        out.contains("changed, but applied only after a restart: listen"),
        "{out}"
    );
    assert_eq!(warnings(), 1, "{}", tail(&srv.log, 20));
    let out = reload(&srv);
    assert!(
        out.contains("restart: listen") && !out.contains("applied:"),
        "{out}"
    );
    assert_eq!(warnings(), 2);
}

/// The SHA-256 fingerprint of the certificate a TLS server presents, as openssl sees it.
fn presented_fingerprint(dir: &std::path::Path, port: u16) -> String {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername example.test </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    ));
    let r = run_bounded(&mut c, None, &dir.join("openssl"), Duration::from_secs(20));
    assert!(r.success(), "openssl s_client failed: {}", r.stderr);
    r.stdout.trim().to_string()
}

fn file_fingerprint(dir: &std::path::Path, cert: &std::path::Path) -> String {
    let mut c = Command::new("openssl");
    c.args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert);
    let r = run_bounded(&mut c, None, &dir.join("openssl"), Duration::from_secs(20));
    assert!(r.success(), "openssl x509 failed: {}", r.stderr);
    r.stdout.trim().to_string()
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    if !peers_available(&["openssl"]) {
        return;
    }
    let dir = test_dir();
    let live = dir.join("live");
    // Two certificates for example.test, each from its own private CA.
    let make = |name: &str| {
        let out = dir.join(name);
        let mut c = Command::new(env!("CARGO_BIN_EXE_hedgewitch"));
        c.args(["--domain", "example.test", "--data-dir"])
            .arg(dir.join(format!("data-{name}")))
            .args(["tls", "self-signed", "--out"])
            .arg(&out);
        let r = run_bounded(&mut c, None, &dir.join(name), Duration::from_secs(20));
        assert!(r.success(), "tls self-signed: {}", r.stderr);
        out
    };
    let (first, second) = (make("first"), make("second"));
    std::fs::create_dir_all(&live).expect("live");
    let install = |from: &std::path::Path| {
        for f in ["cert.pem", "key.pem"] {
            std::fs::copy(from.join(f), live.join(f)).expect("copy");
        }
    };
    install(&first);
    let tls_port = free_port();
    let srv = Server::start(ServerOpts {
        extra_listen: vec![format!("tls:127.0.0.1:{tls_port}")],
        extra_config: format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
            live.join("cert.pem").display(),
            live.join("key.pem").display()
        ),
        ..ServerOpts::default()
    });
    let pid = srv.pid();
    let a = file_fingerprint(&dir, &first.join("cert.pem"));
    let b = file_fingerprint(&dir, &second.join("cert.pem"));
    assert_ne!(a, b);
    assert_eq!(presented_fingerprint(&dir, tls_port), a);

    // Renewal: new files at the same paths, the config untouched, then a reload.
    install(&second);
    let out = reload(&srv);
    assert!(out.contains("applied: tls certificate"), "{out}");
    assert!(!out.contains("restart"), "{out}");
    assert_eq!(presented_fingerprint(&dir, tls_port), b);
    assert_eq!(srv.pid(), pid, "the same process serves it");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIPp registers as alice with a wrong password (its REGISTER names a user agent).
fn wrong_password(srv: &Server) {
    srv.sipp("wrong", "register_wrong_password.xml")
        .key("user", "alice")
        .auth_with("alice", "not-her-password", DOMAIN)
        .replace(
            "CSeq: 2 REGISTER",
            "CSeq: 2 REGISTER\n      User-Agent: Guesser/0.1",
        )
        .run()
        .assert_ok();
}

#[test]
fn a_wrong_password_is_one_warning_naming_the_source_and_the_phone() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        log: "info".into(),
        ..ServerOpts::default()
    });
    wrong_password(&srv);
    let text = log(&srv);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per attempt:\n{text}");
    let line = lines[0];
    for want in [
        "WARN",
        "wrong password",
        "user=\"alice\"",
        "realm=\"example.test\"",
        "source=127.0.0.1:",
        "transport=\"udp\"",
        "user_agent=\"Guesser/0.1\"",
    ] {
        assert!(line.contains(want), "`{want}` missing from: {line}");
    }
    assert!(
        !text.contains('\u{1b}'),
        "the log written to a file has escape codes"
    );
}

#[test]
fn json_logs_carry_the_same_fields() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        log: "info".into(),
        serve_args: vec!["--log-format".into(), "json".into()],
        ..ServerOpts::default()
    });
    wrong_password(&srv);
    let text = log(&srv);
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!events.is_empty(), "no JSON lines:\n{text}");
    let failure = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("authentication failed"))
        })
        .unwrap_or_else(|| panic!("no failure event:\n{text}"));
    assert_eq!(failure["level"], "WARN");
    assert_eq!(failure["user"], "alice");
    assert_eq!(failure["user_agent"], "Guesser/0.1");
    assert!(failure["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("127.0.0.1:")));

    // Four more wrong passwords: the fifth bans the source, one JSON event with its fields.
    for _ in 0..4 {
        wrong_password(&srv);
    }
    let text = log(&srv);
    let ban: serde_json::Value = text
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("source banned for failed logins"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .next()
        .unwrap_or_else(|| panic!("no ban event:\n{text}"));
    assert_eq!(ban["level"], "WARN");
    assert_eq!(ban["user"], "alice");
    assert_eq!(ban["realm"], "example.test");
    assert_eq!(ban["banned"], "127.0.0.1");
    assert_eq!(ban["transport"], "udp");
    assert_eq!(ban["user_agent"], "Guesser/0.1");
    assert_eq!(ban["secs"], 900);
    assert_eq!(ban["offence"], 1);
}

/// `hedgewitch doctor` run where the server runs (its namespace: DNS and addresses as it sees
/// them).
fn doctor(srv: &Server, ns: &str) -> Ran {
    doctor_with(srv, ns, &srv.config)
}

/// The same with another config file.
fn doctor_with(srv: &Server, ns: &str, config: &std::path::Path) -> Ran {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_hedgewitch"))
        .arg("-c")
        .arg(config)
        .arg("doctor");
    run_bounded(
        &mut c,
        None,
        &srv.dir.join("doctor"),
        Duration::from_secs(40),
    )
}

/// The server on 198.18.0.1 in a namespace, with a DNS server there that publishes its
/// records (one SRV naming a port nobody serves), and first no users.
#[test]
fn doctor_finds_missing_users_and_checks_the_published_records() {
    if !peers_available(&["dnsmasq", "ip"]) {
        return;
    }
    let lab = NatLab::new(0)
        .unwrap_or_else(|e| panic!("cannot make a network namespace (root is needed): {e}"));
    let ns = lab.public_ns();
    let dir = test_dir();
    let port = 5060;
    let dns = Dnsmasq::start_in(
        Some(&ns),
        &dir,
        &[
            format!("--host-record=sip.example.test,{SERVER_IP}"),
            "--naptr-record=example.test,10,10,S,SIP+D2U,,_sip._udp.example.test".to_string(),
            "--naptr-record=example.test,10,20,S,SIP+D2T,,_sip._tcp.example.test".to_string(),
            format!("--srv-host=_sip._udp.example.test,sip.example.test,{port},10,0"),
            format!(
                "--srv-host=_sip._tcp.example.test,sip.example.test,{},10,0",
                port + 1
            ),
            // Another domain whose records point at loopback.
            "--host-record=sip.loop.test,127.0.0.1".to_string(),
            format!("--srv-host=_sip._udp.loop.test,sip.loop.test,{port},10,0"),
        ],
    );
    let srv = Server::start(ServerOpts {
        users: vec![],
        netns: Some((ns.clone(), SERVER_IP.into())),
        port: Some(port),
        extra_config: format!("[dns]\nservers = [\"127.0.0.1:{}\"]\n", dns.port),
        ..ServerOpts::default()
    });
    let r = doctor(&srv, &ns);
    assert!(!r.success(), "no users is a problem:\n{}", r.stdout);
    for want in [
        "ok       domain example.test (from the config file)",
        "ok       the server is running",
        "PROBLEM  the domain example.test has no users",
        "fix: hedgewitch user add alice --extension 101",
        "ok       every configured address is served",
        &format!("ok       DNS: example.test is served at udp:{SERVER_IP}:{port}"),
        &format!("warning  DNS also names tcp:{SERVER_IP}:{}", port + 1),
        "warning  no TLS certificate",
    ] {
        assert!(r.stdout.contains(want), "`{want}` missing:\n{}", r.stdout);
    }
    let add = srv.cli_stdin(
        &["user", "add", "alice", "--password-stdin"],
        "alice-Secret-1\n",
    );
    assert!(add.success());
    let r = doctor(&srv, &ns);
    assert!(r.success(), "{}", r.stdout);
    assert!(
        r.stdout.contains("ok       1 user in example.test"),
        "{}",
        r.stdout
    );

    // A domain whose records name a loopback address: found, and said to be unreachable.
    let text = std::fs::read_to_string(&srv.config).expect("config");
    let other = srv.dir.join("loop.toml");
    std::fs::write(
        &other,
        text.replace("domain = \"example.test\"", "domain = \"loop.test\"")
            .replace(
                &format!("data_dir = \"{}\"", srv.dir.join("data").display()),
                &format!("data_dir = \"{}\"", srv.dir.join("loop-data").display()),
            ),
    )
    .expect("config");
    let r = doctor_with(&srv, &ns, &other);
    assert!(
        r.stdout.contains(&format!(
            "PROBLEM  DNS sends requests for loop.test to udp:127.0.0.1:{port}: a loopback"
        )),
        "{}",
        r.stdout
    );
    drop(dns);
}

#[test]
fn doctor_names_the_program_holding_a_port_and_a_certificate_for_another_name() {
    let dir = test_dir();
    // The port this test process holds, in a config whose server is not running.
    let held = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let data = dir.join("data");
    let certs = dir.join("certs");
    let mut c = Command::new(env!("CARGO_BIN_EXE_hedgewitch"));
    c.args(["--domain", "other.test", "--data-dir"])
        .arg(dir.join("other-data"))
        .args(["tls", "self-signed", "--out"])
        .arg(&certs);
    assert!(run_bounded(&mut c, None, &dir.join("tls"), Duration::from_secs(20)).success());
    let config = dir.join("hedgewitch.toml");
    std::fs::write(
        &config,
        format!(
            "domain = \"example.test\"\ndata_dir = \"{}\"\nlisten = [\"udp:127.0.0.1:{port}\", \
             \"tls:127.0.0.1:{}\"]\nstun = []\n[dns]\nservers = [\"127.0.0.1:9\"]\n[tls]\n\
             certificate = \"{}\"\nkey = \"{}\"\n",
            data.display(),
            free_port(),
            certs.join("cert.pem").display(),
            certs.join("key.pem").display()
        ),
    )
    .expect("config");
    let mut c = Command::new(env!("CARGO_BIN_EXE_hedgewitch"));
    c.arg("-c").arg(&config).arg("doctor");
    let r = run_bounded(&mut c, None, &dir.join("doctor"), Duration::from_secs(40));
    assert!(!r.success());
    let me = std::process::id();
    for want in [
        "PROBLEM  the server is not running".to_string(),
        format!("PROBLEM  udp:127.0.0.1:{port} is in use by another program: "),
        format!("(pid {me})"),
        "PROBLEM  the certificate names other.test but not example.test".to_string(),
        "ok       the certificate is valid until".to_string(),
    ] {
        assert!(r.stdout.contains(&want), "`{want}` missing:\n{}", r.stdout);
    }
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLI never hashes a password for another realm than the running server's: with no user
/// yet the data folder alone would let a new domain be named, but the server says otherwise.
#[test]
fn a_password_for_another_domain_than_the_running_servers_is_refused() {
    let srv = Server::start(ServerOpts {
        users: vec![],
        ..ServerOpts::default()
    });
    let r = srv.cli_stdin(
        &[
            "--domain",
            "other.test",
            "user",
            "add",
            "alice",
            "--password-stdin",
        ],
        "alice-Secret-1\n",
    );
    assert!(!r.success(), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("the running server serves `example.test`, but this command would hash")
            && r.stderr.contains("other.test"),
        "{}",
        r.stderr
    );
    // Nothing was written: the folder still serves example.test, and alice can be added there.
    let r = srv.cli_stdin(
        &["user", "add", "alice", "--password-stdin"],
        "alice-Secret-1\n",
    );
    assert!(
        r.stdout.contains("added sip:alice@example.test"),
        "{}",
        r.stderr
    );
}
