//! Messages that wait for their user, with SIPp as alice and bob's silent phone, and PJSIP
//! (pjsua2) as the phone bob turns on:
//!
//! - bob's only phone does not answer: alice's MESSAGE gets 202 after `answer_within`
//!   (5 s); a second one, while that phone is gone (ICMP), gets 202 at once; both wait
//!   (`hedgewitch messages`) and come, in order, from alice, with a Date, to the next phone
//!   bob registers;
//! - the per-user bound drops the oldest, with its log line; after a restart, what waits is
//!   still delivered.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// alice sends bob `text` and expects `status` (202: kept for later).
fn alice_sends(srv: &Server, text: &str, status: u16) {
    let name = format!("alice_message_{}", text.replace(' ', "_"));
    uac_as_alice(srv, "uac_message.xml", "bob")
        .replace("Hello bob, the hedgewitch says hi.", text)
        .replace(
            "<recv response=\"200\"/>",
            &format!("<recv response=\"{status}\"/>"),
        )
        .timeout(Duration::from_secs(20))
        .run()
        .assert_ok();
    let _ = name;
}

/// bob's pjsua2 phone comes online and must receive `texts`, in order, from alice, each with
/// a Date header.
fn bob_comes_online(srv: &Server, python: &str, texts: &[&str]) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pjsua_inbox.py");
    let ran = run_bounded(
        Command::new(python).arg(&script).args([
            srv.port.to_string(),
            free_port().to_string(),
            DOMAIN.to_string(),
            BOB.name.to_string(),
            BOB.password.to_string(),
            texts.len().to_string(),
            "20".to_string(),
        ]),
        None,
        &srv.dir.join(format!("pjsua-bob-{}", texts[0])),
        Duration::from_secs(40),
    );
    let out = ran.stdout.clone();
    assert!(ran.success(), "pjsua failed:\n{out}\n{}", ran.stderr);
    let got: Vec<&str> = out.lines().filter(|l| l.starts_with("IM ")).collect();
    let want: Vec<String> = texts
        .iter()
        .map(|t| format!("IM <sip:alice@example.test> text/plain dated {t}"))
        .collect();
    assert_eq!(got, want, "what bob's phone received:\n{out}");
}

fn waiting(srv: &Server) -> serde_json::Value {
    srv.cli_json("messages")
}

#[test]
fn a_message_waits_for_an_offline_user_and_comes_in_order() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let Some(python) = pjsua_python() else {
        return;
    };
    let srv = Server::start(ServerOpts::default());
    // bob's only phone takes MESSAGEs and never answers.
    let p1 = register_udp(&srv, &BOB);
    let silent = srv
        .sipp("bob_silent", "uas_silent.xml")
        .port(p1)
        .arg("-d")
        .arg("8000")
        .spawn_listening();
    alice_sends(&srv, "first", 202);
    let silent = silent.wait();
    assert!(
        silent.status.is_some_and(|s| s.success()),
        "{}",
        silent.report()
    );
    // Now nothing listens there at all (ICMP): the next one waits at once.
    alice_sends(&srv, "second", 202);
    let v = waiting(&srv);
    assert_eq!(v[0]["user"], "bob", "{v}");
    assert_eq!(v[0]["count"], 2, "{v}");
    let text = srv.cli(&["messages"]).stdout;
    assert!(
        text.contains("bob") && text.contains("alice@example.test"),
        "{text}"
    );
    // bob's next phone gets both, in order.
    bob_comes_online(&srv, &python, &["first", "second"]);
    assert!(
        poll_until(Duration::from_secs(5), || waiting(&srv)
            .as_array()
            .is_some_and(|a| a.is_empty())),
        "delivered messages are forgotten"
    );
}

#[test]
fn the_oldest_goes_past_the_bound_and_a_restart_keeps_the_rest() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let Some(python) = pjsua_python() else {
        return;
    };
    let mut srv = Server::start(ServerOpts {
        extra_config: "[messages]\nper_user = 2\n".into(),
        ..Default::default()
    });
    for text in ["one", "two", "three"] {
        alice_sends(&srv, text, 202);
    }
    let log = std::fs::read_to_string(&srv.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("dropped the oldest waiting message"))
        .expect("the dropped message is logged");
    assert!(
        line.contains("user=bob") && line.contains("alice@example.test"),
        "{line}"
    );
    assert_eq!(waiting(&srv)[0]["count"], 2);
    srv.restart();
    assert_eq!(waiting(&srv)[0]["count"], 2, "kept across the restart");
    bob_comes_online(&srv, &python, &["two", "three"]);
}

/// A message too big for UDP (3,000 bytes: over RFC 3261 §18.1.1's 1,300, under the 4,000
/// PJSIP takes at most) waits like any other, and reaches bob's phone, registered over UDP,
/// over TCP when it comes online.
#[test]
fn a_large_message_waits_and_comes_over_tcp() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let Some(python) = pjsua_python() else {
        return;
    };
    let srv = Server::start(ServerOpts::default());
    let big = "x".repeat(3000);
    uac_as_alice(&srv, "uac_message.xml", "bob")
        .replace("Hello bob, the hedgewitch says hi.", &big)
        .replace("<recv response=\"200\"/>", "<recv response=\"202\"/>")
        .tcp()
        .port(free_port())
        .run()
        .assert_ok();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pjsua_inbox.py");
    let ran = run_bounded(
        Command::new(&python).arg(&script).args([
            srv.port.to_string(),
            free_port().to_string(),
            DOMAIN.to_string(),
            BOB.name.to_string(),
            BOB.password.to_string(),
            "1".to_string(),
            "20".to_string(),
        ]),
        None,
        &srv.dir.join("pjsua-bob-big"),
        Duration::from_secs(40),
    );
    let out = ran.stdout.clone();
    assert!(ran.success(), "pjsua failed:\n{out}\n{}", ran.stderr);
    assert!(
        // SIPp's scenario ends the body with CRLF: 3,002 bytes, carried whole.
        out.lines()
            .any(|l| l == "IM <sip:alice@example.test> text/plain dated <3002 bytes>"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "VIA tcp"), "not over TCP:\n{out}");
}
