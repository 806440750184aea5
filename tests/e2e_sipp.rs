//! End-to-end tests with SIPp (and sipsak for OPTIONS) against a real `hedgewitch serve`:
//! registration with digest over UDP and TCP, calls through the proxy (by name and by
//! extension, CANCEL, busy, re-INVITE), failures (404, 480, 483, wrong password, 423, 403),
//! MESSAGE and OPTIONS. Each test starts its own server on its own ports.
//!
//! The scenarios are in tests/sipp/; each SIPp run leaves its message trace in the test's
//! folder (kept when the test fails, named in the failure output).

mod common;

use common::*;
use std::time::Duration;

fn register_roundtrip(tcp: bool) {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let port = free_port();
    let out = register_on(&srv, &ALICE, port, 3600, tcp);
    out.assert_ok();
    // SIPp saw the challenge first (the scenario requires it), with the MD5 one leading.
    let msgs = out.messages();
    let challenge = msgs
        .find("WWW-Authenticate:")
        .map(|i| &msgs[i..])
        .unwrap_or_default();
    assert!(challenge.contains("algorithm=MD5"), "{msgs}");

    let regs = srv.registrations_of("alice");
    assert_eq!(regs.len(), 1, "{regs:#?}");
    let r = &regs[0];
    let transport = if tcp { "tcp" } else { "udp" };
    assert_eq!(r["transport"], transport, "{r:#}");
    let contact = r["contact"].as_str().unwrap_or_default();
    assert!(contact.contains(&format!("{HOST}:{port}")), "{r:#}");
    assert_eq!(r["extension"], ALICE.extension, "{r:#}");
    let exp = r["expires_in_secs"].as_u64().unwrap_or(0);
    assert!(exp > 3000 && exp <= 3600, "{r:#}");
    assert!(
        r["user_agent"]
            .as_str()
            .unwrap_or_default()
            .contains("SIPp"),
        "{r:#}"
    );
    assert_eq!(srv.counter("registrations_accepted"), 1);

    register_on(&srv, &ALICE, port, 0, tcp).assert_ok();
    srv.wait_registrations("alice unregistered", Duration::from_secs(10), |r| {
        r.iter().all(|x| x["user"] != "alice")
    });
}

/// REGISTER → 401 → REGISTER with credentials → 200 over UDP; the contact is listed with
/// transport udp; REGISTER with Expires: 0 removes it.
#[test]
fn register_with_digest_over_udp_then_unregister() {
    register_roundtrip(false);
}

/// The same over TCP (SIPp `-t t1`): the registration is listed with transport tcp.
#[test]
fn register_with_digest_over_tcp_then_unregister() {
    register_roundtrip(true);
}

/// A wrong password gets 401 (or 403) again, never 200, and nothing is registered.
#[test]
fn register_with_wrong_password_is_refused() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    srv.sipp("register_wrong_password", "register_wrong_password.xml")
        .port(free_port())
        .key("user", ALICE.name)
        .auth_with(ALICE.name, "not-the-password", DOMAIN)
        .run()
        .assert_ok();
    assert!(srv.registrations().is_empty(), "{:#?}", srv.registrations());
    assert_eq!(srv.counter("registrations_accepted"), 0);
    assert!(srv.counter("auth_failures") >= 1, "{:#}", srv.status());
}

/// Expires below min_expires (60) → 423 Interval Too Brief, nothing registered.
#[test]
fn register_with_too_brief_expiry_gets_423() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let out = srv
        .sipp("register_423", "register_rejected.xml")
        .subst("FINAL", "423")
        .port(free_port())
        .key("user", ALICE.name)
        .key("expires", "30")
        .auth(&ALICE, DOMAIN)
        .run();
    out.assert_ok();
    assert!(
        out.messages().contains("Min-Expires: 60"),
        "{}",
        out.report()
    );
    assert!(srv.registrations().is_empty(), "{:#?}", srv.registrations());
}

/// alice's credentials cannot register bob's address: 403, nothing registered.
#[test]
fn register_as_someone_else_gets_403() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    srv.sipp("register_403", "register_rejected.xml")
        .subst("FINAL", "403")
        .port(free_port())
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&ALICE, DOMAIN)
        .run()
        .assert_ok();
    assert!(srv.registrations().is_empty(), "{:#?}", srv.registrations());
}

/// bob registers with SIPp and answers with `uas`; alice calls `callee` with `uac`.
fn call_bob(callee: &str, uac: &str, uas: &str) -> Server {
    let srv = Server::start(ServerOpts::default());
    let bob_port = register_udp(&srv, &BOB);
    let uas = start_uas(&srv, &BOB, bob_port, uas);
    let uac = uac_as_alice(&srv, uac, callee).run();
    let uas = uas.wait();
    assert_both_ok(&uac, &uas);
    srv
}

/// alice calls sip:bob@example.test: INVITE → 407 → ACK → INVITE with credentials → 100 →
/// 180 → 200 (with the proxy's Record-Route, checked at both ends) → ACK → BYE → 200, ACK and
/// BYE routed by the proxy through the recorded route set to bob's registered contact.
#[test]
fn call_by_name_through_the_proxy() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = call_bob("bob", "uac_call.xml", "uas_answer.xml");
    assert_eq!(srv.counter("calls_forwarded"), 1);
}

/// The same call to bob's extension: sip:102@example.test.
#[test]
fn call_by_extension_through_the_proxy() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = call_bob("102", "uac_call.xml", "uas_answer.xml");
    assert_eq!(srv.counter("calls_forwarded"), 1);
}

/// The whole call over TCP: bob registers over TCP (SIPp `-t t1`) and answers over TCP, alice
/// calls over TCP; the proxy reaches bob's registered TCP contact and routes ACK and BYE.
#[test]
fn call_over_tcp() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let bob_port = free_port();
    register_on(&srv, &BOB, bob_port, 3600, true).assert_ok();
    assert_eq!(srv.registrations_of("bob")[0]["transport"], "tcp");
    let uas = uas(&srv, &BOB, bob_port, "uas_answer.xml")
        .tcp()
        .spawn_listening();
    let uac = uac_as_alice(&srv, "uac_call.xml", "bob").tcp().run();
    let uas = uas.wait();
    assert_both_ok(&uac, &uas);
    assert_eq!(srv.counter("calls_forwarded"), 1);
}

/// bob is registered from two places: the INVITE is forked to both in parallel; both ring,
/// the first answers (after 1 s of ringing) and the proxy CANCELs the other branch (which
/// answers 200 to the CANCEL and 487), and the caller gets the answer and ends the call.
#[test]
fn parallel_fork_to_two_contacts_cancels_the_loser() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let answering = register_udp(&srv, &BOB);
    let ringing = register_udp(&srv, &BOB);
    assert_eq!(srv.registrations_of("bob").len(), 2);
    let winner = uas(&srv, &BOB, answering, "uas_answer.xml")
        .arg("-d")
        .arg("1000")
        .spawn_listening();
    let loser = start_uas(&srv, &BOB, ringing, "uas_ring_cancel.xml");
    let uac = uac_as_alice(&srv, "uac_call.xml", "bob").run();
    let winner = winner.wait();
    let loser = loser.wait();
    assert_both_ok(&uac, &winner);
    assert_both_ok(&uac, &loser);
    assert_eq!(srv.counter("calls_forwarded"), 1);
}

/// CANCEL after 180: the caller gets 200 to the CANCEL and 487 to the INVITE (the callee
/// received the proxy's CANCEL and answered 487), then ACKs.
#[test]
fn cancel_before_answer() {
    if !peers_available(&["sipp"]) {
        return;
    }
    call_bob("bob", "uac_cancel.xml", "uas_ring_cancel.xml");
}

/// The callee answers 486 Busy Here: the proxy ACKs it and passes 486 back to the caller.
#[test]
fn busy_callee_486_is_passed_back() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let bob_port = register_udp(&srv, &BOB);
    let uas = start_uas(&srv, &BOB, bob_port, "uas_busy.xml");
    let uac = uac_as_alice(&srv, "uac_rejected.xml", "bob")
        .subst("FINAL", "486")
        .run();
    let uas = uas.wait();
    assert_both_ok(&uac, &uas);
}

/// A call to a user that does not exist: 404 (after authentication of the caller).
#[test]
fn call_to_unknown_user_gets_404() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    uac_as_alice(&srv, "uac_rejected.xml", "nobody")
        .subst("FINAL", "404")
        .run()
        .assert_ok();
    assert_eq!(srv.counter("calls_forwarded"), 0);
}

/// A call to carol, who exists but has no registration: 480 Temporarily Unavailable.
#[test]
fn call_to_unregistered_user_gets_480() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    uac_as_alice(&srv, "uac_rejected.xml", CAROL.name)
        .subst("FINAL", "480")
        .run()
        .assert_ok();
    assert_eq!(srv.counter("calls_forwarded"), 0);
}

/// MESSAGE from alice to bob: 407, then with credentials it reaches bob's registered contact
/// with its body intact (checked by bob's scenario), and bob's 200 comes back to alice.
#[test]
fn message_is_delivered_with_its_body() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = call_bob("bob", "uac_message.xml", "uas_message.xml");
    assert_eq!(srv.counter("messages_forwarded"), 1);
}

/// After the call is up, alice sends an in-dialog re-INVITE (To tag, Route set) that the
/// proxy routes to bob: 200 → ACK, then BYE → 200.
#[test]
fn reinvite_mid_call() {
    if !peers_available(&["sipp"]) {
        return;
    }
    call_bob("bob", "uac_reinvite.xml", "uas_reinvite.xml");
}

/// INVITE with Max-Forwards: 0 → 483 Too Many Hops, nothing forwarded to bob.
#[test]
fn max_forwards_zero_gets_483() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    register_udp(&srv, &BOB);
    srv.sipp("uac_max_forwards", "uac_max_forwards.xml")
        .port(free_port())
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .run()
        .assert_ok();
    assert_eq!(srv.counter("calls_forwarded"), 0);
}

/// OPTIONS to the server itself (`sipsak -vv -s sip:127.0.0.1:PORT`): 200 with an Allow
/// header listing the methods the server handles.
///
/// The server gets a four-digit port here: sipsak 0.9.8 drops the last digit of a five-digit
/// port from the Request-URI it writes (`-s sip:127.0.0.1:25163` sends
/// `OPTIONS sip:127.0.0.1:2516`, which the server rightly refuses as relaying).
#[test]
fn options_to_the_server_gets_200_with_allow() {
    if !peers_available(&["sipsak"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        port: Some(free_port_4_digits()),
        ..ServerOpts::default()
    });
    let mut cmd = std::process::Command::new("sipsak");
    cmd.current_dir(&srv.dir)
        .args(["-vv", "-H", HOST, "-l"])
        .arg(free_port().to_string())
        .arg("-s")
        .arg(format!("sip:{}", srv.addr()));
    let r = run_bounded(
        &mut cmd,
        None,
        &srv.dir.join("sipsak"),
        Duration::from_secs(30),
    );
    assert!(
        r.success(),
        "sipsak failed ({:?}):\n{}\n{}",
        r.status,
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("SIP/2.0 200"), "{}", r.stdout);
    let allow = r
        .stdout
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("allow:"))
        .unwrap_or_else(|| panic!("no Allow header in the reply:\n{}", r.stdout));
    for m in [
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE",
    ] {
        assert!(allow.contains(m), "{m} not in `{allow}`");
    }
}

/// bob registers through an edge proxy (played by SIPp, which adds `Path: <sip:EDGE;lr>` and
/// `Supported: path`) with a Contact the server cannot reach directly (192.0.2.77, TEST-NET).
/// Without Path support the REGISTER gets 420 Unsupported: path (RFC 3327 §5.3); with it, the
/// 200 echoes the Path, and alice's call reaches the edge proxy with the Path as Route and
/// bob's contact as Request-URI.
#[test]
fn a_registration_through_an_edge_proxy_is_reached_by_its_path() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let edge = free_port();
    let with_path =
        |supported: bool| {
            format!(
            "Contact: <sip:[user]@192.0.2.77:5060>\n      Path: <sip:[local_ip]:[local_port];lr>{}",
            if supported { "\n      Supported: path" } else { "" }
        )
        };
    srv.sipp("register_path_unsupported", "register_rejected.xml")
        .subst("FINAL", "420")
        .replace(
            "Contact: <sip:[user]@[local_ip]:[local_port]>",
            &with_path(false),
        )
        .port(edge)
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, DOMAIN)
        .run()
        .assert_ok();
    assert!(srv.registrations().is_empty());
    srv.sipp("register_path", "register.xml")
        .replace(
            "Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>",
            &with_path(true),
        )
        .replace(
            "<recv response=\"200\"/>",
            "<recv response=\"200\"><action><ereg regexp=\"sip:127\\.0\\.0\\.1:[0-9]+;lr\" \
             search_in=\"hdr\" header=\"Path:\" check_it=\"true\" assign_to=\"path\"/></action></recv>\
             <nop><action><log message=\"path: [$path]\"/></action></nop>",
        )
        .port(edge)
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, DOMAIN)
        .run()
        .assert_ok();
    let regs = srv.registrations_of("bob");
    assert_eq!(
        regs[0]["path"][0],
        format!("sip:{HOST}:{edge};lr"),
        "{regs:#?}"
    );
    // (In the XML attribute, < and > are escaped.)
    let route = format!("Route: &lt;sip:127\\.0\\.0\\.1:{edge};lr&gt;");
    let callee = uas(&srv, &BOB, edge, "uas_answer_expect.xml")
        .subst("EXPECT", &route)
        .replace(
            "^INVITE sip:[^@ ]+@127\\.0\\.0\\.1:[0-9]+",
            "^INVITE sip:bob@192\\.0\\.2\\.77:5060 ",
        )
        .spawn_listening();
    let caller = uac_as_alice(&srv, "uac_call.xml", "bob").run();
    assert_both_ok(&caller, &callee.wait());
}
