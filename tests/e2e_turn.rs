//! The TURN server with coturn's test client (`turnutils_uclient`, Debian's `coturn`):
//! allocations relay in both directions over UDP, TCP and TLS, over channels and with
//! Send/Data indications, over TCP relays (RFC 6062) and IPv6 relayed addresses (RFC 6156), for a
//! SIP account's password and for time-limited credentials made with the shared secret; the
//! default policy refuses peers on the server's own network; `hedgewitch turn` shows the
//! allocations and what they carried.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "turn-test-secret";

/// A server with TURN listeners on a free port (UDP and TCP) and another (TLS);
/// `allow_loopback` lets peers on 127.0.0.0/8 through (the test's clients relay to each
/// other there). Returns the server, the UDP/TCP port and the TLS port.
fn turn_server(allow_loopback: bool) -> (Server, u16, u16) {
    let (port, tls_port) = (free_port(), free_port());
    let certs = self_signed_certs(&test_dir());
    let allowed = if allow_loopback {
        "[\"127.0.0.0/8\", \"::1\"]"
    } else {
        "[]"
    };
    // On [::1] too: relayed addresses of either family (RFC 6156).
    let listen = format!(
        "\"udp:{HOST}:{port}\", \"tcp:{HOST}:{port}\", \"tls:{HOST}:{tls_port}\", \"udp:[::1]:{port}\""
    );
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

/// Runs `uclient` and asserts that every message it sent came back (at least 80).
fn assert_relays(srv: &Server, port: u16, auth: &[&str], extra: &[&str], name: &str) {
    let r = uclient(srv, port, auth, extra, name);
    let (sent, received) = sent_and_received(&r.stdout);
    assert!(
        sent >= 80 && received == sent,
        "{name}: sent {sent}, received {received}\n{}",
        r.stdout
    );
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
    assert_relays(&srv, port, &sip, &[], "uclient-sip");

    // Time-limited credentials from the shared secret (coturn's REST scheme), and Send/Data
    // indications instead of channels.
    let rest = ["-u", BOB.name, "-W", SECRET, "-r", DOMAIN];
    assert_relays(&srv, port, &rest, &["-s"], "uclient-rest");

    // Over TCP (time-limited credentials), and over TLS (a SIP password; what a browser
    // behind a firewall that passes only TLS uses).
    assert_relays(&srv, port, &rest, &["-t"], "uclient-tcp");
    assert_relays(&srv, tls_port, &sip, &["-t", "-S"], "uclient-tls");

    // An IPv6 relayed address (RFC 6156), asked for by a client that came over IPv4.
    assert_relays(&srv, port, &sip, &["-x"], "uclient-ipv6-relay");

    // TCP relays (RFC 6062): each client's peer is reached over a TCP connection from the
    // relayed address (Connect, ConnectionAttempt, ConnectionBind).
    assert_relays(&srv, port, &sip, &["-T"], "uclient-tcp-relay");

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
    // Relayed addresses on the TURN listeners' addresses (IPv6 ones from the `-x` run).
    assert!(list.iter().all(|a| a["relayed"]
        .as_str()
        .is_some_and(|r| r.starts_with("127.0.0.1:") || r.starts_with("[::1]:"))));
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

/// A minimal TURN client on `sock` (the test's own, for what coturn's client cannot show):
/// an allocation for `user`, and a channel to `peer`.
fn allocate_with_channel(
    sock: &std::net::UdpSocket,
    server: std::net::SocketAddr,
    user: &TestUser,
    peer: std::net::SocketAddr,
) {
    use sip::turn::{attr, Class, Writer};
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ask = |req: &[u8]| -> Vec<u8> {
        sock.send_to(req, server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf).expect("an answer");
        buf[..n].to_vec()
    };
    let mut w = Writer::new(sip::turn::ALLOCATE, Class::Request, &[1; 12]);
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let challenge = ask(&w.finish(None));
    let nonce = sip::turn::parse(&challenge)
        .and_then(|m| m.nonce.map(String::from))
        .unwrap();
    let key = sip::turn::long_term_key(user.name, DOMAIN, user.password);
    let signed = |method: u16, k: u8, add: &dyn Fn(&mut Writer)| {
        let mut w = Writer::new(method, Class::Request, &[k; 12]);
        add(&mut w);
        w.attr(attr::USERNAME, user.name.as_bytes())
            .challenge(DOMAIN, &nonce);
        w.finish(Some(&key))
    };
    let ok = ask(&signed(sip::turn::ALLOCATE, 2, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    }));
    assert!(sip::turn::parse(&ok).and_then(|m| m.relayed).is_some());
    let bound = ask(&signed(sip::turn::CHANNEL_BIND, 3, &|w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
    }));
    assert_eq!(
        sip::turn::parse(&bound).and_then(|m| m.class),
        Some(Class::Success)
    );
}

#[test]
fn a_users_bandwidth_quota_holds() {
    let port = free_port();
    let srv = Server::start(ServerOpts {
        extra_config: format!(
            "[turn]\nlisten = [\"udp:{HOST}:{port}\"]\nallowed_peers = [\"127.0.0.0/8\"]\n\
             bandwidth_per_user = 400\n"
        ),
        ..ServerOpts::default()
    });
    let client = std::net::UdpSocket::bind((HOST, 0)).unwrap();
    let peer = std::net::UdpSocket::bind((HOST, 0)).unwrap();
    let server: std::net::SocketAddr = format!("{HOST}:{port}").parse().unwrap();
    allocate_with_channel(&client, server, &ALICE, peer.local_addr().unwrap());
    // 2 MB as fast as the client can: 400 kbit/s (50 kB/s, a second's worth of burst)
    // lets a small part through, whatever the client sends.
    let mut data = sip::turn::channel_header(0x4000, 1000).to_vec();
    data.extend_from_slice(&[0x55; 1000]);
    let started = Instant::now();
    for _ in 0..2000 {
        let _ = client.send_to(&data, server);
    }
    peer.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = 0;
    let mut buf = [0u8; 1500];
    while peer.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    let allowed = (64_000.0 + 50_000.0 * started.elapsed().as_secs_f64()) / 1000.0;
    assert!(
        got > 10 && (got as f64) <= allowed + 5.0,
        "{got} of 2000 went through (allowed {allowed:.0})"
    );
    let turn = srv.cli_json("turn");
    let dropped = turn[0]["counters"]["dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 1000, "{turn}");
}
