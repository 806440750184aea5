//! The TURN server with coturn's test client (`turnutils_uclient`, Debian's `coturn`):
//! allocations relay in both directions over UDP, TCP and TLS, over channels and with
//! Send/Data indications, for a
//! SIP account's password and for time-limited credentials made with the shared secret; the
//! default policy refuses peers on the server's own network; `hedgewitch turn` shows the
//! allocations and what they carried.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "turn-test-secret";

/// A server with TURN listeners on a free port (UDP and TCP) and another (TLS);
/// `allow_loopback` lets peers on 127.0.0.0/8 through (the test's clients relay to each
/// other there). Returns the server, the UDP/TCP port and the TLS port.
fn turn_server(allow_loopback: bool) -> (Server, u16, u16) {
    let (port, tls_port) = (free_port(), free_port());
    let certs = self_signed_certs(&test_dir());
    let allowed = if allow_loopback {
        "[\"127.0.0.0/8\"]"
    } else {
        "[]"
    };
    let listen = format!("\"udp:{HOST}:{port}\", \"tcp:{HOST}:{port}\", \"tls:{HOST}:{tls_port}\"");
    let srv = Server::start(ServerOpts {
        extra_config: format!(
            "{}[turn]\nlisten = [{listen}]\nallowed_peers = {allowed}\nsecret = \"{SECRET}\"\n",
            tls_config(&certs)
        ),
        ..ServerOpts::default()
    });
    (srv, port, tls_port)
}

/// Runs `turnutils_uclient` in client-to-client mode (two allocations relaying to each
/// other) with `auth` arguments; its output.
fn uclient(srv: &Server, port: u16, auth: &[&str], extra: &[&str], name: &str) -> Ran {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args([
        "-y",
        "-c",
        "-n",
        "40",
        "-l",
        "172",
        "-z",
        "5",
        "-p",
        &port.to_string(),
    ])
    .args(auth)
    .args(extra)
    .arg(HOST);
    run_bounded(&mut cmd, None, &srv.dir.join(name), Duration::from_secs(30))
}

/// The messages sent and received, from the client's summary line.
fn sent_and_received(out: &str) -> (u64, u64) {
    let field = |name: &str| {
        out.rsplit(name)
            .next()
            .and_then(|r| {
                r.trim_start_matches('=')
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("tot_send_msgs"), field("tot_recv_msgs"))
}

#[test]
fn coturns_client_relays_through_hedgewitch_with_both_kinds_of_credentials() {
    if !peers_available(&["turnutils_uclient"]) {
        return;
    }
    let (srv, port, tls_port) = turn_server(true);
    // A SIP account's own password (long-term credentials, realm = the domain), channels.
    let sip = ["-u", ALICE.name, "-w", ALICE.password, "-r", DOMAIN];
    let r = uclient(&srv, port, &sip, &[], "uclient-sip");
    let (sent, received) = sent_and_received(&r.stdout);
    assert!(
        sent >= 80 && received == sent,
        "sent {sent}, received {received}\n{}",
        r.stdout
    );

    // Time-limited credentials from the shared secret (coturn's REST scheme), and Send/Data
    // indications instead of channels.
    let rest = ["-u", BOB.name, "-W", SECRET, "-r", DOMAIN];
    let r = uclient(&srv, port, &rest, &["-s"], "uclient-rest");
    let (sent, received) = sent_and_received(&r.stdout);
    assert!(
        sent >= 80 && received == sent,
        "sent {sent}, received {received}\n{}",
        r.stdout
    );

    // Over TCP, and over TLS (a browser behind a firewall that passes only TLS).
    let r = uclient(&srv, port, &sip, &["-t"], "uclient-tcp");
    let (sent, received) = sent_and_received(&r.stdout);
    assert!(
        sent >= 80 && received == sent,
        "TCP: sent {sent}, received {received}\n{}",
        r.stdout
    );
    let r = uclient(&srv, tls_port, &rest, &["-t", "-S"], "uclient-tls");
    let (sent, received) = sent_and_received(&r.stdout);
    assert!(
        sent >= 80 && received == sent,
        "TLS: sent {sent}, received {received}\n{}",
        r.stdout
    );

    // While a client holds its allocations (`-h`), `hedgewitch turn` lists them with what
    // they carried.
    let mut held = Command::new("turnutils_uclient")
        .args([
            "-y",
            "-c",
            "-h",
            "-n",
            "40",
            "-l",
            "172",
            "-z",
            "5",
            "-p",
            &port.to_string(),
        ])
        .args(sip)
        .arg(HOST)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("turnutils_uclient");
    let mut list = vec![];
    let carried = |list: &[serde_json::Value]| -> (u64, u64) {
        list.iter()
            .filter(|a| a["user"] == "alice")
            .fold((0, 0), |(p, c), a| {
                let n = |k: &str| a["counters"][k].as_u64().unwrap_or(0);
                (p + n("to_peers"), c + n("to_client"))
            })
    };
    let shown = poll_until(Duration::from_secs(20), || {
        list = srv.cli_json("turn").as_array().cloned().unwrap_or_default();
        carried(&list) >= (80, 80)
    });
    let _ = held.kill();
    let _ = held.wait();
    assert!(shown, "{list:?}");
    assert!(list.iter().all(|a| a["relayed"]
        .as_str()
        .is_some_and(|r| r.starts_with("127.0.0.1:"))));
    assert!(list
        .iter()
        .any(|a| a["channels"].as_array().is_some_and(|c| !c.is_empty())));

    // A wrong password gets nowhere.
    let wrong = ["-u", ALICE.name, "-w", "not-the-password", "-r", DOMAIN];
    let r = uclient(&srv, port, &wrong, &[], "uclient-wrong");
    assert_eq!(sent_and_received(&r.stdout).1, 0, "{}", r.stdout);
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert!(log.contains("TURN authentication failed: wrong password"));
}

#[test]
fn the_default_policy_refuses_peers_on_the_servers_own_network() {
    if !peers_available(&["turnutils_uclient"]) {
        return;
    }
    let (srv, port, _) = turn_server(false);
    let sip = ["-u", ALICE.name, "-w", ALICE.password, "-r", DOMAIN];
    let r = uclient(&srv, port, &sip, &[], "uclient-loopback");
    let out = format!("{}{}", r.stdout, r.stderr);
    assert!(out.contains("403"), "{out}");
    assert_eq!(sent_and_received(&r.stdout).1, 0, "{out}");
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert!(
        log.contains("TURN peer refused by policy"),
        "the refusal is logged"
    );
}
