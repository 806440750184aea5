//! SIP over WebSocket (RFC 7118) with JsSIP, the browser SIP library, as the peer (in Node,
//! without media): registration over `ws:` and `wss:`, messages between two browsers and
//! between a browser and a UDP phone (SIPp), a closed tab going offline at once, and the
//! listener's HTTP side: the Origin rule, the upgrade's errors, the size limit and the
//! connection caps it shares with TCP and TLS.

mod common;

use common::jssip::{jssip_available, JsSip};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A server with a `ws:` and a `wss:` listener; returns it with both ports and the CA file.
fn web_server(extra: &str) -> (Server, u16, u16, PathBuf) {
    let certs = self_signed_certs(&test_dir());
    let (ws, wss) = (free_port(), free_port());
    let srv = Server::start(ServerOpts {
        extra_listen: vec![format!("ws:{HOST}:{ws}"), format!("wss:{HOST}:{wss}")],
        extra_config: format!("{}{extra}", tls_config(&certs)),
        ..ServerOpts::default()
    });
    (srv, ws, wss, certs.join("ca.pem"))
}

/// Sends `request` on a fresh connection from `from` and returns the status line of the answer
/// ("" if the server closed without answering).
fn http_status(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect((HOST, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).expect("write");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn upgrade(port: u16, origin: &str, protocol: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         {protocol}{origin}\r\n"
    )
}

#[test]
fn browsers_register_over_websockets_and_message_each_other_and_phones() {
    if !jssip_available() || !peers_available(&["sipp"]) {
        return;
    }
    let (srv, ws, wss, ca) = web_server("");
    let mut alice = JsSip::start(&format!("ws://{HOST}:{ws}"), &ALICE, None);
    let mut bob = JsSip::start(&format!("wss://{HOST}:{wss}"), &BOB, Some(&ca));
    for agent in [&alice, &bob] {
        // RFC 5626 outbound, as JsSIP asks for it.
        let ok = agent.wait_event("registered", Duration::from_secs(10), |_| true);
        assert_eq!(ok["require"], "outbound", "{ok}");
    }
    let regs = srv.registrations();
    let transport_of = |user: &str| {
        regs.iter()
            .find(|r| r["user"] == user)
            .map(|r| r["transport"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(transport_of("alice").as_deref(), Some("ws"), "{regs:?}");
    assert_eq!(transport_of("bob").as_deref(), Some("wss"), "{regs:?}");

    // Browser to browser, across ws and wss.
    alice.message(&format!("sip:bob@{DOMAIN}"), "hello from alice's tab");
    let got = bob.wait_event("message", Duration::from_secs(10), |_| true);
    assert_eq!(got["body"], "hello from alice's tab");
    assert_eq!(got["from"], format!("sip:alice@{DOMAIN}"));
    assert_eq!(got["display"], "alice (browser)");
    alice.wait_event("sent", Duration::from_secs(5), |e| e["status"] == 200);

    // A UDP phone (SIPp as carol) to a browser, by extension: the 200 comes back from JsSIP.
    let uac = srv
        .sipp("carol_to_bob", "uac_message.xml")
        .port(free_port())
        .key("user", CAROL.name)
        .key("callee", BOB.extension)
        .auth(&CAROL, &format!("{}@{DOMAIN}", BOB.extension))
        .run();
    uac.assert_ok();
    let got = bob.wait_event("message", Duration::from_secs(5), |e| {
        e["from"] == format!("sip:carol@{DOMAIN}")
    });
    assert_eq!(
        got["body"].as_str().map(str::trim_end),
        Some("Hello bob, the hedgewitch says hi.")
    );

    // bob's tab closes (the agent dies; its connection is reset): his registration goes at
    // once, and a message for him is kept for his next login now (202), not after a timeout.
    bob.kill();
    assert!(
        poll_until(Duration::from_secs(5), || srv
            .registrations_of("bob")
            .is_empty()),
        "bob's registration outlived his connection: {:?}",
        srv.registrations()
    );
    let sent_at = Instant::now();
    alice.message(&format!("sip:bob@{DOMAIN}"), "are you there?");
    let kept = alice.wait_event("sent", Duration::from_secs(10), |e| e["status"] == 202);
    assert_eq!(kept["status"], 202, "{kept}");
    assert!(sent_at.elapsed() < Duration::from_secs(5));
    assert_eq!(srv.cli_json("messages")[0]["user"], "bob");
}

#[test]
fn the_upgrade_checks_origin_path_version_and_subprotocol() {
    let (srv, ws, wss, _ca) = web_server("[web]\norigins = [\"https://phone.example.test\"]\n");
    let sip = "Sec-WebSocket-Protocol: sip\r\n";
    // A page of another site may not use the server's users' browsers against it...
    let evil = upgrade(ws, "Origin: https://evil.example\r\n", sip);
    assert_eq!(http_status(ws, &evil), "HTTP/1.1 403 Forbidden");
    // ...but the listener's own page and the listed origin may; so may non-browsers.
    let own = upgrade(ws, &format!("Origin: http://{HOST}:{ws}\r\n"), sip);
    assert_eq!(http_status(ws, &own), "HTTP/1.1 101 Switching Protocols");
    let listed = upgrade(ws, "Origin: https://phone.example.test\r\n", sip);
    assert_eq!(http_status(ws, &listed), "HTTP/1.1 101 Switching Protocols");
    assert_eq!(
        http_status(ws, &upgrade(ws, "", sip)),
        "HTTP/1.1 101 Switching Protocols"
    );
    // Not SIP, not version 13, not at `/`.
    assert_eq!(
        http_status(ws, &upgrade(ws, "", "")),
        "HTTP/1.1 400 Bad Request"
    );
    let v8 = upgrade(ws, "", sip).replace("Version: 13", "Version: 8");
    assert_eq!(http_status(ws, &v8), "HTTP/1.1 426 Upgrade Required");
    let path = upgrade(ws, "", sip).replace("GET / ", "GET /chat ");
    assert_eq!(http_status(ws, &path), "HTTP/1.1 404 Not Found");
    // A head that never ends is cut off at 8 KiB.
    let huge = format!("GET / HTTP/1.1\r\nX-Filler: {}", "a".repeat(9000));
    assert_eq!(
        http_status(ws, &huge),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    drop(srv);
    let _ = wss;
}

#[test]
fn a_websocket_message_over_the_size_limit_closes_the_connection() {
    let (srv, ws, _wss, _ca) = web_server("");
    let mut s = TcpStream::connect((HOST, ws)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade(ws, "", "Sec-WebSocket-Protocol: sip\r\n").as_bytes())
        .unwrap();
    let mut head = [0u8; 1024];
    let n = s.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    // One masked text frame announcing 100,000 bytes (over the 64 KiB a SIP message may
    // have): the server closes (1009, message too big) without waiting for the payload.
    let mut frame = vec![0x81u8, 0x80 | 127];
    frame.extend_from_slice(&100_000u64.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[b'x'; 1000]);
    let _ = s.write_all(&frame);
    let mut rest = vec![];
    let _ = s.read_to_end(&mut rest);
    // Whatever was said (a close frame or nothing), the connection ended within the timeout.
    assert!(rest.len() < 200, "{} bytes came back", rest.len());
    assert!(srv.registrations().is_empty());
}

#[test]
fn websocket_connections_share_the_per_source_cap_with_tcp() {
    let (srv, ws, _wss, _ca) = web_server("");
    // 256 idle TCP connections to the SIP port take one address's whole share...
    let sip_port = srv.port;
    let held: Vec<TcpStream> = (0..256)
        .filter_map(|_| TcpStream::connect((HOST, sip_port)).ok())
        .collect();
    assert_eq!(held.len(), 256);
    std::thread::sleep(Duration::from_millis(300));
    // ...so a WebSocket from that address is refused (closed unanswered)...
    assert_eq!(
        http_status(ws, &upgrade(ws, "", "Sec-WebSocket-Protocol: sip\r\n")),
        ""
    );
    // ...while another address still gets in.
    let other = {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(
            &"127.0.0.2:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sock.connect(
            &format!("{HOST}:{ws}")
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(upgrade(ws, "", "Sec-WebSocket-Protocol: sip\r\n").as_bytes())
            .unwrap();
        let mut b = [0u8; 256];
        let n = s.read(&mut b).unwrap_or(0);
        String::from_utf8_lossy(&b[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(other, "HTTP/1.1 101 Switching Protocols");
    drop(held);
}

#[test]
fn each_tab_gets_gruus_that_reach_that_tab_only() {
    if !jssip_available() {
        return;
    }
    let (srv, ws, _wss, _ca) = web_server("");
    let url = format!("ws://{HOST}:{ws}");
    let mut alice = JsSip::start(&url, &ALICE, None);
    let (tab1, tab2) = (
        JsSip::start(&url, &BOB, None),
        JsSip::start(&url, &BOB, None),
    );
    alice.wait_event("registered", Duration::from_secs(10), |_| true);
    let gruus: Vec<(String, String)> = [&tab1, &tab2]
        .iter()
        .map(|tab| {
            // As JsSIP read them from the answer, for its own contact.
            let ok = tab.wait_event("registered", Duration::from_secs(10), |_| true);
            let gruu = |k: &str| {
                ok[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("no {k}: {ok}"))
                    .to_string()
            };
            (gruu("pub_gruu"), gruu("temp_gruu"))
        })
        .collect();
    assert_eq!(srv.registrations_of("bob").len(), 2);
    assert_ne!(gruus[0].0, gruus[1].0, "each tab is its own instance");
    assert!(gruus[0]
        .0
        .starts_with(&format!("sip:bob@{DOMAIN};gr=urn:uuid:")));
    assert!(!gruus[0].1.contains("bob"), "{}", gruus[0].1);

    // To the public GRUU of tab 1, then the temporary GRUU of tab 2: each arrives once, at
    // its own tab.
    alice.message(&gruus[0].0, "for tab one");
    alice.message(&gruus[1].1, "for tab two");
    tab1.wait_event("message", Duration::from_secs(10), |e| {
        e["body"] == "for tab one"
    });
    tab2.wait_event("message", Duration::from_secs(10), |e| {
        e["body"] == "for tab two"
    });
    std::thread::sleep(Duration::from_millis(500));
    let bodies = |tab: &JsSip| -> Vec<String> {
        tab.events()
            .iter()
            .filter(|e| e["event"] == "message")
            .map(|e| e["body"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(bodies(&tab1), vec!["for tab one"]);
    assert_eq!(bodies(&tab2), vec!["for tab two"]);
    // To the user: both tabs.
    alice.message(&format!("sip:bob@{DOMAIN}"), "for every tab");
    for tab in [&tab1, &tab2] {
        tab.wait_event("message", Duration::from_secs(10), |e| {
            e["body"] == "for every tab"
        });
    }
}

#[test]
fn the_server_pings_and_a_peer_that_never_answers_is_closed() {
    if !jssip_available() {
        return;
    }
    let (srv, ws, _wss, _ca) = web_server("[web]\nping_interval = 1\n");
    // A real WebSocket client answers the pings by itself: JsSIP stays registered.
    let alice = JsSip::start(&format!("ws://{HOST}:{ws}"), &ALICE, None);
    alice.wait_event("registered", Duration::from_secs(10), |_| true);
    // A raw client that reads but never answers.
    let mut s = TcpStream::connect((HOST, ws)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.write_all(upgrade(ws, "", "Sec-WebSocket-Protocol: sip\r\n").as_bytes())
        .unwrap();
    let started = Instant::now();
    let mut got = vec![];
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let closed_after = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    let head_end = text.find("\r\n\r\n").map_or(0, |i| i + 4);
    let frames = &got[head_end..];
    // Unmasked server frames: 0x89 is a ping.
    assert!(
        frames.windows(2).any(|w| w == [0x89, 0x00]),
        "no ping among {frames:?}"
    );
    assert!(
        closed_after < Duration::from_secs(6),
        "a silent peer was kept {closed_after:?}"
    );
    assert!(
        srv.registrations_of("alice").len() == 1,
        "alice answered and stays"
    );
}
