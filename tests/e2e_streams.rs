//! Stream connections from one address cannot lock the phones out: 1,000 slowloris
//! connections (a REGISTER trickled a byte a second) and 9,000 idle ones from 127.0.0.66 get
//! at most their source's share of slots (256), the slow ones are closed by the message
//! deadline (20 s) and idle ones (100 from another address) by the idle timeout of a
//! connection no phone registered over (30 s); meanwhile phones over TCP (SIPp) and over TLS
//! (baresip, trusting the server's private CA) register and call as usual.

mod common;

use common::baresip::{make_tone, Baresip, Phone};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const ATTACKER: &str = "127.0.0.66";
/// Another address that only opens idle connections, well within its share.
const IDLER: &str = "127.0.0.67";

/// A TCP connection to `server` from `ATTACKER`, non-blocking once connected; None when the
/// server refused or closed it at once.
fn connect_from_attacker(server: SocketAddr) -> Option<TcpStream> {
    connect_from(ATTACKER, server)
}

fn connect_from(ip: &str, server: SocketAddr) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    let local: SocketAddr = format!("{ip}:0").parse().ok()?;
    s.bind(&local.into()).ok()?;
    s.connect_timeout(&server.into(), Duration::from_millis(500))
        .ok()?;
    let stream: TcpStream = s.into();
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

/// Whether the server closed `s` (a read sees the end, or the connection was reset).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// The soft limit on open files raised to the hard one; how many the test may open.
fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

#[test]
fn slow_and_idle_connections_from_one_address_do_not_lock_out_the_phones() {
    if !peers_available(&["sipp", "baresip"]) {
        return;
    }
    let fds = raise_fd_limit();
    // A TLS listener too, with a certificate from `hedgewitch tls self-signed`.
    let certs = self_signed_certs(&test_dir());
    let tls_port = free_port();
    let srv = Server::start(ServerOpts {
        log: "info".into(),
        extra_listen: vec![format!("tls:127.0.0.1:{tls_port}")],
        extra_config: tls_config(&certs),
        ..ServerOpts::default()
    });
    let server: SocketAddr = srv.addr().parse().expect("server address");
    let (slow_n, idle_n) = (1000usize, (fds.saturating_sub(2000) as usize).min(9000));

    // 1,000 connections each trickling a REGISTER a byte at a time, then 9,000 that say
    // nothing. The server keeps one address's share and refuses the rest.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..slow_n)
        .filter_map(|_| connect_from_attacker(server))
        .collect();
    let request = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {ATTACKER}:5060;branch=z9hG4bKslow\r\n"
    );
    let mut idle: Vec<TcpStream> = (0..idle_n)
        .filter_map(|_| connect_from_attacker(server))
        .collect();
    // And 100 idle connections from another address, which all get slots.
    let mut idler: Vec<TcpStream> = (0..100)
        .filter_map(|_| connect_from(IDLER, server))
        .collect();
    // The bytes go on trickling, one a second, on every slow connection, while a phone over
    // TCP registers and calls.
    let phone_port = free_port();
    let trickle = std::thread::spawn(move || {
        let mut sent = 0usize;
        let mut open_after: Vec<(Duration, usize, usize)> = vec![];
        while started.elapsed() < Duration::from_secs(40) && sent < request.len() {
            for s in &mut slow {
                let _ = s.write(&request.as_bytes()[sent..sent + 1]);
            }
            sent += 1;
            std::thread::sleep(Duration::from_secs(1));
            slow.retain_mut(|s| !closed_by_server(s));
            idle.retain_mut(|s| !closed_by_server(s));
            idler.retain_mut(|s| !closed_by_server(s));
            open_after.push((started.elapsed(), slow.len() + idle.len(), idler.len()));
        }
        open_after
    });
    let bob_port = free_port();
    srv.sipp("bob_reg_tcp", "register.xml")
        .port(bob_port)
        .tcp()
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, DOMAIN)
        .run()
        .assert_ok();
    let bob = srv
        .sipp("bob_tcp", "uas_answer.xml")
        .port(bob_port)
        .tcp()
        .calls(2)
        .spawn_listening();
    srv.sipp("alice_reg_tcp", "register.xml")
        .local_ip("127.0.0.5")
        .port(phone_port)
        .tcp()
        .key("user", ALICE.name)
        .key("expires", "3600")
        .auth(&ALICE, DOMAIN)
        .run()
        .assert_ok();
    let call = srv
        .sipp("alice_call_tcp", "uac_call.xml")
        .local_ip("127.0.0.5")
        .port(free_port())
        .tcp()
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .auth(&ALICE, &format!("{}@{DOMAIN}", BOB.name))
        .run();
    assert!(
        call.status.is_some_and(|s| s.code() == Some(0)),
        "{}",
        call.report()
    );
    // carol's phone over TLS (baresip, trusting the server's private CA) registers and calls
    // bob too, while the attack holds.
    let tone = make_tone(&srv);
    let mut carol = Baresip::launch(Phone {
        dir: srv.dir.join("baresip-carol-tls"),
        name: "carol",
        host: HOST.into(),
        ipv6: false,
        sip_port: free_ports(2),
        console: free_port(),
        rtp: free_ports(40),
        netns: None,
        account: format!(
            "<sip:carol@{DOMAIN}>;auth_user=carol;auth_pass={};\
             outbound=\"sip:127.0.0.1:{tls_port};transport=tls\";regint=600;audio_codecs=PCMU\n",
            CAROL.password
        ),
        contacts: String::new(),
        tone: &tone,
        config_extra: format!("sip_cafile {}\n", certs.join("ca.pem").display()),
    });
    assert!(
        poll_until(Duration::from_secs(15), || srv
            .registrations_of(CAROL.name)
            .iter()
            .any(|r| r["transport"] == "tls")),
        "carol over TLS: {:#?}\n{}",
        srv.registrations(),
        carol.output()
    );
    carol.command(&format!("/dial sip:bob@{DOMAIN}"));
    carol.wait_for(
        "the call over TLS established",
        Duration::from_secs(15),
        |o| o.contains("Call established"),
    );
    carol.command("/hangup");
    assert_both_ok(&call, &bob.wait());

    let open_after = trickle.join().expect("the trickling thread");
    // At most one address's share ever held a slot; by the message deadline (20 s) plus a
    // second of slack the slow ones are gone, and the idle ones by the idle timeout (30 s).
    let most = open_after.iter().map(|(_, n, _)| *n).max().unwrap_or(0);
    assert!(
        most <= 256,
        "{most} connections from one address kept: {open_after:?}"
    );
    let at = |secs: u64| {
        open_after
            .iter()
            .find(|(t, _, _)| *t >= Duration::from_secs(secs))
            .map_or((0, 0), |(_, n, m)| (*n, *m))
    };
    assert_eq!(at(23).0, 0, "slow connections still open: {open_after:?}");
    assert_eq!(
        at(25).1,
        100,
        "idle connections closed early: {open_after:?}"
    );
    assert_eq!(at(33).1, 0, "idle connections still open: {open_after:?}");
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert!(
        log.contains("stream connections refused"),
        "the refusal is logged"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("stream connections refused"))
            .count()
            == 1,
        "once"
    );
}
