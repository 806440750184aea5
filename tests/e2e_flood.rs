//! Floods, as scanners and attackers send them, each bounded in time and count: for 30 s,
//! from one address and then from fifty, a mix of unauthenticated REGISTERs, INVITEs to
//! unknown and to known users, OPTIONS, and oversized datagrams (1,400-byte headers and a
//! 30 KB From). While it lasts, the server's memory stays under 256 MiB and a legitimate user
//! on another address registers and calls as usual (at least 99% of its attempts succeed);
//! 10 s after it, memory is back within 64 MiB of where it started, and a new phone is served
//! at once. When the server falls behind, it sheds the flood's new dialogs, not alice's.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FLOOD: Duration = Duration::from_secs(30);
/// The most datagrams one flood sends, whatever the machine's speed.
const MAX_DATAGRAMS: u64 = 6_000_000;
const MIB: u64 = 1024 * 1024;

/// The server's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The `n`-th datagram of the flood, sent from `local`: one of five kinds in turn.
fn datagram(n: u64, local: SocketAddr, server: SocketAddr) -> String {
    let branch = format!("z9hG4bKflood{n}");
    let via = format!("Via: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n");
    let tail = format!("Call-ID: flood-{n}@{local}\r\nContent-Length: 0\r\n\r\n");
    match n % 5 {
        0 => format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n{via}From: <sip:u{u}@{DOMAIN}>;tag=f{n}\r\n\
             To: <sip:u{u}@{DOMAIN}>\r\nCSeq: 1 REGISTER\r\nContact: <sip:u{u}@{local}>\r\n{tail}",
            u = n % 1000
        ),
        1 => format!(
            "INVITE sip:nobody{n}@{DOMAIN} SIP/2.0\r\n{via}From: <sip:mallory@evil.test>;tag=f{n}\r\n\
             To: <sip:nobody{n}@{DOMAIN}>\r\nCSeq: 1 INVITE\r\nContact: <sip:m@{local}>\r\n{tail}"
        ),
        2 => format!(
            "INVITE sip:alice@{DOMAIN} SIP/2.0\r\n{via}From: <sip:alice@{DOMAIN}>;tag=f{n}\r\n\
             To: <sip:alice@{DOMAIN}>\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{local}>\r\n{tail}"
        ),
        3 => format!(
            "OPTIONS sip:{server} SIP/2.0\r\n{via}From: <sip:scan@evil.test>;tag=f{n}\r\n\
             To: <sip:{server}>\r\nCSeq: 1 OPTIONS\r\nX-Pad: {pad}\r\n{tail}",
            pad = "x".repeat(1400)
        ),
        _ => format!(
            "OPTIONS sip:{server} SIP/2.0\r\n{via}From: \"{name}\" <sip:scan@evil.test>;tag=f{n}\r\n\
             To: <sip:{server}>\r\nCSeq: 1 OPTIONS\r\n{tail}",
            name = "y".repeat(30_000)
        ),
    }
}

/// Floods `server` from `sources` (loopback addresses) until `stop` or the bounds; returns
/// how many datagrams were sent.
fn flood(server: SocketAddr, sources: Vec<String>, stop: Arc<AtomicBool>) -> u64 {
    let socks: Vec<UdpSocket> = sources
        .iter()
        .map(|ip| UdpSocket::bind(format!("{ip}:0")).expect("bind a flood source"))
        .collect();
    for s in &socks {
        let _ = s.set_nonblocking(true);
    }
    let end = Instant::now() + FLOOD;
    let mut sent = 0u64;
    let mut buf = [0u8; 2048];
    while sent < MAX_DATAGRAMS && Instant::now() < end && !stop.load(Ordering::Relaxed) {
        for s in &socks {
            let local = s.local_addr().expect("local address");
            let _ = s.send_to(datagram(sent, local, server).as_bytes(), server);
            sent += 1;
            // Answers are read and thrown away, as a scanner does.
            while s.recv_from(&mut buf).is_ok() {}
        }
    }
    sent
}

/// Successful and failed calls in a SIPp run's final statistics screen.
fn sipp_counts(outcome: &SippOutcome) -> (u64, u64) {
    let screen = std::fs::read_to_string(outcome.file("screen.log")).unwrap_or_default();
    let last = |label: &str| {
        screen
            .lines()
            .rfind(|l| l.contains(label))
            .and_then(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .next_back()
            })
            .unwrap_or(0)
    };
    (last("Successful call"), last("Failed call"))
}

/// One flood from `sources`, with alice (127.0.0.5) registering and calling bob (127.0.0.6)
/// all along.
fn survive(srv: &Server, label: &str, sources: Vec<String>) {
    let pid = srv.pid();
    let server: SocketAddr = srv.addr().parse().expect("server address");
    let start_rss = rss(pid);
    // bob's phone: registered, answering every call.
    let bob_port = free_port();
    srv.sipp(&format!("{label}_bob_reg"), "register.xml")
        .local_ip("127.0.0.6")
        .port(bob_port)
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, DOMAIN)
        .run()
        .assert_ok();
    let bob = srv
        .sipp(&format!("{label}_bob"), "uas_answer.xml")
        .local_ip("127.0.0.6")
        .port(bob_port)
        .calls(20)
        .timeout(Duration::from_secs(80))
        .spawn_listening();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(start_rss));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(server, sources, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    // alice, meanwhile: 100 registrations at 5 a second, and 20 calls to bob at 1 a second.
    let registrations = srv
        .sipp(&format!("{label}_alice_reg"), "register.xml")
        .local_ip("127.0.0.5")
        .port(free_port())
        .key("user", ALICE.name)
        .key("expires", "3600")
        .auth(&ALICE, DOMAIN)
        .calls(100)
        .arg("-r")
        .arg("5")
        .timeout(Duration::from_secs(60))
        .spawn();
    let calls = srv
        .sipp(&format!("{label}_alice_calls"), "uac_call.xml")
        .local_ip("127.0.0.5")
        .port(free_port())
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .auth(&ALICE, &format!("{}@{DOMAIN}", BOB.name))
        .calls(20)
        .arg("-r")
        .arg("1")
        .timeout(Duration::from_secs(60))
        .spawn();
    let registrations = registrations.wait();
    let calls = calls.wait();
    let sent = flooder.join().expect("the flood thread");
    let flood_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let _ = bob.wait();

    let peak = peak.load(Ordering::Relaxed);
    let status = srv.status();
    eprintln!(
        "{label}: {sent} datagrams; resident {} MiB before, {} MiB peak; alice: registrations \
         {:?}, calls {:?}; kernel drops {}, oversized {}; {:#}",
        start_rss / MIB,
        peak / MIB,
        sipp_counts(&registrations),
        sipp_counts(&calls),
        status["dropped_datagrams"],
        status["oversized_datagrams"],
        status["counters"]
    );
    // A loop that fell behind (the kernel dropped datagrams by the thousand) shed new dialogs
    // from the flood's addresses, and alice's calls went on (below).
    if status["dropped_datagrams"].as_u64().unwrap_or(0) > 10_000 {
        assert!(
            status["counters"]["shed"].as_u64().unwrap_or(0) > 0,
            "{label}: the loop fell behind and shed nothing: {status:#}"
        );
    }
    assert!(
        peak < 256 * MIB,
        "{label}: {} MiB resident during the flood ({sent} datagrams)",
        peak / MIB
    );
    for (what, outcome, total) in [
        ("registrations", &registrations, 100),
        ("calls", &calls, 20),
    ] {
        let (ok, failed) = sipp_counts(outcome);
        assert!(
            ok * 100 >= total * 99 && failed * 100 <= total,
            "{label}: {ok} of alice's {total} {what} succeeded, {failed} failed during the flood \
             ({sent} datagrams)\n{}",
            outcome.report()
        );
    }
    // Full service right after: a phone never seen registers at once.
    srv.sipp(&format!("{label}_after"), "register.xml")
        .local_ip("127.0.0.7")
        .port(free_port())
        .key("user", ALICE.name)
        .key("expires", "3600")
        .auth(&ALICE, DOMAIN)
        .timeout(Duration::from_secs(5))
        .run()
        .assert_ok();
    // Memory given back: within 64 MiB of the start 10 s after the flood.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(flood_end.elapsed()));
    let after = rss(pid);
    assert!(
        after <= start_rss + 64 * MIB,
        "{label}: {} MiB resident 10 s after the flood, {} MiB before (peak {} MiB)",
        after / MIB,
        start_rss / MIB,
        peak / MIB
    );
}

#[test]
fn floods_from_one_and_from_fifty_addresses_leave_memory_bounded_and_users_served() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        log: "warn".into(),
        ..ServerOpts::default()
    });
    survive(&srv, "one-source", vec!["127.0.1.1".to_string()]);
    survive(
        &srv,
        "fifty-sources",
        (1..=50).map(|i| format!("127.0.2.{i}")).collect(),
    );
}
