//! The real binary over real sockets, driven byte by byte: RFC 4475 requests sent over UDP
//! and TCP get their answers, TCP framing (keep-alive pong, pipelined messages, a stream
//! whose framing breaks), and IPv6 (a phone registered over [::1] reached from an IPv4 one).

mod common;

use common::*;
use hedgewitch_server::sip::digest::{authorization, Algorithm};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

fn torture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/sip/tests/data/sip-torture")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn udp_socket(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> String {
    let mut buf = [0u8; 65536];
    let (n, _) = s.recv_from(&mut buf).expect("no answer within 5 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The next final response (skipping 100 Trying).
fn recv_final(s: &UdpSocket) -> String {
    loop {
        let m = recv(s);
        if status(&m) >= 200 || !m.starts_with("SIP/2.0 ") {
            return m;
        }
    }
}

fn status(msg: &str) -> u16 {
    msg.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines()
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l[name.len()..].starts_with(':')
        })
        .map(|l| l[name.len() + 1..].trim())
}

fn options(via_host: &str, transport: &str, branch: &str) -> String {
    format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{transport} {via_host};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:probe@elsewhere.test>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {branch}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn torture_requests_get_their_answers_over_udp() {
    let mut srv = Server::start(ServerOpts::default());
    let server: SocketAddr = srv.addr().parse().unwrap();
    let sock = udp_socket("127.0.0.1:0");
    let table = String::from_utf8(torture("../torture-answers.txt")).unwrap();
    let cases: Vec<(&str, Vec<u16>)> = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next().unwrap();
            (name, f.map(|c| c.parse().unwrap()).collect())
        })
        .collect();
    assert!(cases.len() >= 20);
    for (name, want) in &cases {
        sock.send_to(&torture(name), server).unwrap();
        let answer = recv_final(&sock);
        assert!(want.contains(&status(&answer)), "{name}: got\n{answer}");
        if *name == "bext01.sip" {
            assert!(
                header(&answer, "Unsupported").is_some_and(|u| u.contains("noProxiesSupportThis")),
                "{answer}"
            );
        }
    }
    // Responses are never answered; a following OPTIONS is the first thing to come back.
    for name in [
        "scalarlg.sip",
        "bigcode.sip",
        "bcast.sip",
        "unreason.sip",
        "noreason.sip",
    ] {
        sock.send_to(&torture(name), server).unwrap();
    }
    sock.send_to(
        options("127.0.0.1:9", "UDP", "z9hG4bKafter").as_bytes(),
        server,
    )
    .unwrap();
    let answer = recv(&sock);
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(header(&answer, "Call-ID"), Some("z9hG4bKafter"));
    assert!(srv.is_running(), "the server survived the corpus");
    assert!(srv.counter("malformed_in") >= 20);
}

#[test]
fn tcp_framing_keepalive_pipelining_and_a_broken_stream() {
    let srv = Server::start(ServerOpts::default());
    let mut tcp = TcpStream::connect(srv.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // RFC 5626 §4.4.1: CRLFCRLF ping, CRLF pong.
    tcp.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    tcp.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    // Two requests in one write, the second split across two writes: two answers.
    let a = options("127.0.0.1:9", "TCP", "z9hG4bKtcp1");
    let b = options("127.0.0.1:9", "TCP", "z9hG4bKtcp2");
    let (b1, b2) = b.split_at(40);
    tcp.write_all(format!("{a}{b1}").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    tcp.write_all(b2.as_bytes()).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("SIP/2.0 200").count() < 2 {
        let n = tcp
            .read(&mut buf)
            .expect("answers over the same connection");
        assert!(n > 0, "connection closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("z9hG4bKtcp1") && got.contains("z9hG4bKtcp2"));
    // RFC 4475 ncl: a negative Content-Length breaks the framing: 400, then the server
    // closes the connection.
    tcp.write_all(&torture("ncl.sip")).unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("SIP/2.0 400"), "{rest}");
    // The server is fine and serves new connections.
    let mut tcp2 = TcpStream::connect(srv.addr()).unwrap();
    tcp2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp2.write_all(options("127.0.0.1:9", "TCP", "z9hG4bKtcp3").as_bytes())
        .unwrap();
    let n = tcp2.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"));
}

/// Registers `user` from `sock` (any address family) and returns the 200.
fn register(sock: &UdpSocket, server: SocketAddr, user: &TestUser, local: &str) -> String {
    let req = |cseq: u32, auth: Option<String>| {
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKreg{cseq}{};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{}@{DOMAIN}>;tag=r1\r\nTo: <sip:{}@{DOMAIN}>\r\nCall-ID: reg-{}-v6\r\n\
CSeq: {cseq} REGISTER\r\nContact: <sip:{}@{local}>\r\nExpires: 600\r\n{}Content-Length: 0\r\n\r\n",
            user.name,
            user.name,
            user.name,
            user.name,
            user.name,
            auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default()
        )
    };
    sock.send_to(req(1, None).as_bytes(), server).unwrap();
    let challenge = recv(sock);
    assert_eq!(status(&challenge), 401, "{challenge}");
    let www = header(&challenge, "WWW-Authenticate").unwrap();
    let nonce = www
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let auth = authorization(
        Algorithm::Md5,
        user.name,
        DOMAIN,
        user.password,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        nonce,
        "c1",
        1,
    );
    sock.send_to(req(2, Some(auth)).as_bytes(), server).unwrap();
    let ok = recv(sock);
    assert_eq!(status(&ok), 200, "{ok}");
    ok
}

#[test]
fn ipv6_phone_registers_and_is_reached_from_ipv4() {
    let srv = Server::start(ServerOpts {
        ipv6: true,
        ..ServerOpts::default()
    });
    let v6_server: SocketAddr = format!("[::1]:{}", srv.port).parse().unwrap();
    let v4_server: SocketAddr = srv.addr().parse().unwrap();
    // bob registers over IPv6.
    let bob = udp_socket("[::1]:0");
    let bob_addr = bob.local_addr().unwrap();
    let ok = register(&bob, v6_server, &BOB, &bob_addr.to_string());
    assert!(
        header(&ok, "Contact")
            .unwrap()
            .contains(&format!("[::1]:{}", bob_addr.port())),
        "{ok}"
    );
    let regs = srv.registrations_of("bob");
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["source"], bob_addr.to_string());
    // OPTIONS over TCP on [::1].
    let mut tcp = TcpStream::connect(v6_server).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(options("[::1]:9", "TCP", "z9hG4bKv6tcp").as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"));

    // alice, on IPv4, sends bob a MESSAGE: it is challenged, then delivered over IPv6.
    let alice = udp_socket("127.0.0.1:0");
    let alice_addr = alice.local_addr().unwrap();
    let msg = |cseq: u32, auth: Option<String>| {
        format!(
            "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {alice_addr};branch=z9hG4bKm{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: v4-to-v6\r\n\
CSeq: {cseq} MESSAGE\r\nContent-Type: text/plain\r\n{}Content-Length: 11\r\n\r\nhello there",
            auth.map(|a| format!("Proxy-Authorization: {a}\r\n")).unwrap_or_default()
        )
    };
    alice.send_to(msg(1, None).as_bytes(), v4_server).unwrap();
    let challenge = recv(&alice);
    assert_eq!(status(&challenge), 407, "{challenge}");
    let nonce = header(&challenge, "Proxy-Authenticate")
        .unwrap()
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let auth = authorization(
        Algorithm::Md5,
        "alice",
        DOMAIN,
        ALICE.password,
        "MESSAGE",
        &format!("sip:bob@{DOMAIN}"),
        &nonce,
        "c2",
        1,
    );
    alice
        .send_to(msg(2, Some(auth)).as_bytes(), v4_server)
        .unwrap();
    let delivered = recv(&bob);
    assert!(
        delivered.starts_with(&format!(
            "MESSAGE sip:bob@[::1]:{} SIP/2.0",
            bob_addr.port()
        )),
        "{delivered}"
    );
    let top_via = header(&delivered, "Via").unwrap();
    assert!(
        top_via.starts_with(&format!("SIP/2.0/UDP [::1]:{}", srv.port)),
        "{delivered}"
    );
    assert!(delivered.ends_with("hello there"));
    // bob answers; alice gets the 200.
    let mut answer = String::from("SIP/2.0 200 OK\r\n");
    for l in delivered.lines().take_while(|l| !l.is_empty()) {
        if ["Via:", "From:", "Call-ID:", "CSeq:"]
            .iter()
            .any(|p| l.starts_with(p))
        {
            answer.push_str(l);
            answer.push_str("\r\n");
        } else if l.starts_with("To:") {
            answer.push_str(&format!("{l};tag=b1\r\n"));
        }
    }
    answer.push_str("Content-Length: 0\r\n\r\n");
    bob.send_to(answer.as_bytes(), v6_server).unwrap();
    let ok = recv_final(&alice);
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(srv.counter("messages_forwarded"), 1);
}
