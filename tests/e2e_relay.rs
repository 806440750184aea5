//! The media relay end to end. Two baresip phones, each in a home behind its own NAT (the
//! namespace lab of `common/natlab.rs`), register, call each other (each receives a call) and
//! hear each other: the
//! server rewrites the SDP to its relay ports, latches onto each NAT's mapping, and forwards
//! the PCMU stream both ways. Each phone reports received audio, and `hedgewitch calls` shows
//! the packets counted in each direction. Hold and resume (re-INVITEs from baresip) keep the
//! media flowing. Two phones on the same network are not relayed in `auto` mode; an answered
//! call that carries no media is released after the no-media timeout; a used-up port range
//! refuses the call with 503.
//!
//! Dual stack (the server listening on 127.0.0.1 and [::1]): an IPv4 and an IPv6 baresip
//! call each other both ways and hear each other through the relay; a user with an IPv4 and
//! an IPv6 phone, called from IPv4, is heard on whichever phone answers (each branch was
//! offered the relay in its own family).

mod common;

use common::baresip::*;
use common::natlab::{NatLab, SERVER_IP};
use common::*;
use serde_json::Value;
use std::time::Duration;

/// Both phones behind NATs; `transport` is how they register (udp or tcp); bob's account
/// line gets `bob_extra`.
fn call_through_nats(transport: &str, bob_extra: &str) -> Option<Vec<Value>> {
    if !peers_available(&["baresip", "sox", "ip", "nft"]) {
        return None;
    }
    let lab = NatLab::new(2)
        .unwrap_or_else(|e| panic!("cannot build the NAT namespaces (root is needed): {e}"));
    let srv = Server::start(ServerOpts {
        netns: Some((lab.public_ns(), SERVER_IP.into())),
        port: Some(5060),
        algorithms: Some(vec!["MD5"]),
        ..Default::default()
    });
    let tone = make_tone(&srv);
    let (bob_home, alice_home) = (lab.home(1), lab.home(2));
    let mut bob = Baresip::start_with(
        &srv,
        &BOB,
        true,
        &tone,
        Some((&bob_home.ns, &bob_home.ip)),
        transport,
        bob_extra,
    );
    let mut alice = Baresip::start_with(
        &srv,
        &ALICE,
        true,
        &tone,
        Some((&alice_home.ns, &alice_home.ip)),
        transport,
        "",
    );
    let regs = srv.wait_registrations("both phones registered", Duration::from_secs(20), |r| {
        ["alice", "bob"]
            .iter()
            .all(|u| r.iter().any(|x| x["user"] == *u))
    });
    for r in &regs {
        assert_eq!(r["transport"], transport, "{r:#}");
        assert!(
            r["contact"].as_str().unwrap_or("").contains("100.64."),
            "the phone names its private address: {r:#}"
        );
    }

    alice.command(&format!("/dial sip:bob@{DOMAIN}"));
    let t = Duration::from_secs(20);
    alice.wait_for("the call established", t, |o| {
        o.contains(&format!("Call established: sip:bob@{DOMAIN}"))
    });
    bob.wait_for("the call established", t, |o| {
        o.contains(&format!("Call established: sip:alice@{DOMAIN}"))
    });
    // Each phone receives the other's audio: through the relay, as nothing else can cross
    // two NATs that map ports at random.
    alice.wait_for("audio received", t, receives_audio);
    bob.wait_for("audio received", t, receives_audio);

    let call = wait_call(&srv, "media both ways through the relay", |c| {
        let (a, b) = packets(c);
        a > 0 && b > 0
    });
    assert_eq!(call["media"], "relayed", "{call:#}");
    assert_eq!(call["state"], "answered", "{call:#}");
    let s = &call["streams"][0];
    assert_eq!(s["kind"], "audio");
    // Latched onto each NAT's public side, whatever the SDP said.
    assert!(
        s["caller_source"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{}:", alice_home.public_ip)),
        "{call:#}"
    );
    assert!(
        s["callee_source"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{}:", bob_home.public_ip)),
        "{call:#}"
    );

    // Hold and resume: re-INVITEs through the relay; media flows again afterwards.
    alice.command("/hold");
    wait_call(&srv, "the call on hold", |c| c["state"] == "on hold");
    alice.command("/resume");
    let resumed = wait_call(&srv, "the call resumed", |c| c["state"] == "answered");
    let (a0, b0) = packets(&resumed);
    wait_call(&srv, "media after resuming", |c| {
        let (a, b) = packets(c);
        a > a0 + 20 && b > b0 + 20
    });

    alice.command("/hangup");
    bob.wait_for("the call terminated", t, |o| {
        o.contains(&format!("Call with sip:alice@{DOMAIN} terminated"))
            || o.contains(&format!(
                "sip:alice@{DOMAIN}: session closed: Connection reset"
            ))
    });
    assert!(
        poll_until(t, || calls(&srv).is_empty()),
        "the call is still listed after the BYE: {:#?}",
        calls(&srv)
    );

    // And the other way: bob calls alice, behind the other NAT; she answers by herself.
    bob.command(&format!("/dial sip:alice@{DOMAIN}"));
    alice.wait_for("bob's call established", t, |o| {
        o.matches("Call established").count() >= 2
    });
    bob.wait_for("the call to alice established", t, |o| {
        o.contains(&format!("Call established: sip:alice@{DOMAIN}"))
    });
    alice.wait_for("audio in bob's call", t, |o| receives_audio_in_call(o, 2));
    bob.wait_for("audio in the call to alice", t, |o| {
        receives_audio_in_call(o, 2)
    });
    let call = wait_call(&srv, "bob's call relayed with media both ways", |c| {
        let (a, b) = packets(c);
        a > 0 && b > 0
    });
    assert_eq!(call["media"], "relayed", "{call:#}");
    assert!(
        call["from"].as_str().unwrap_or("").starts_with("sip:bob@"),
        "{call:#}"
    );
    bob.command("/hangup");
    assert!(
        poll_until(t, || calls(&srv).is_empty()),
        "bob's call is still listed after the BYE: {:#?}",
        calls(&srv)
    );
    Some(regs)
}

#[test]
fn phones_behind_nat_over_udp_hear_each_other_through_the_relay() {
    call_through_nats("udp", "");
}

#[test]
fn phones_behind_nat_over_tcp_hear_each_other_through_the_relay() {
    call_through_nats("tcp", "");
}

/// bob's baresip registers an outbound flow (RFC 5626, `sipnat=outbound`) over TCP from
/// behind his NAT: the registrar records its instance and reg-id, answers `Require:
/// outbound`, and his calls come over that flow; audio flows as above.
#[test]
fn an_outbound_phone_behind_nat_is_called_over_its_flow() {
    let Some(regs) = call_through_nats("tcp", ";sipnat=outbound") else {
        return;
    };
    let bob = regs
        .iter()
        .find(|r| r["user"] == "bob")
        .expect("bob registered");
    assert_eq!(bob["reg_id"], 1, "{bob:#}");
    assert!(
        bob["instance"].as_str().unwrap_or("").contains("urn:"),
        "{bob:#}"
    );
}

/// Two phones on the same network (loopback), neither behind NAT: `auto` leaves the media
/// end to end, and the call is listed as direct.
#[test]
fn phones_on_one_network_are_not_relayed() {
    if !peers_available(&["baresip", "sox"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        algorithms: Some(vec!["MD5"]),
        ..ServerOpts::default()
    });
    let (mut alice, mut bob, _) = registered_pair(&srv);
    alice.command(&format!("/dial sip:bob@{DOMAIN}"));
    let t = Duration::from_secs(20);
    alice.wait_for("audio received", t, receives_audio);
    bob.wait_for("audio received", t, receives_audio);
    let call = wait_call(&srv, "the call answered", |c| c["state"] == "answered");
    assert_eq!(call["media"], "direct", "{call:#}");
    assert_eq!(call["streams"], Value::Array(vec![]), "{call:#}");
    alice.command("/hangup");
    assert!(poll_until(t, || calls(&srv).is_empty()));
}

/// `relay.mode = "always"` with a one-second no-media timeout: SIPp's call is answered but
/// sends no RTP, so the relay is released while the call is still up (its BYE, later, goes
/// through all the same).
#[test]
fn an_abandoned_relay_is_released_after_the_no_media_timeout() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        extra_config: "[relay]\nmode = \"always\"\ntimeout = 1\n".into(),
        ..ServerOpts::default()
    });
    let (callee, caller) = held_call(&srv, 14000);
    let call = wait_call(&srv, "the relayed call answered", |c| {
        c["state"] == "answered"
    });
    assert_eq!(call["media"], "relayed", "{call:#}");
    assert!(
        poll_until(Duration::from_secs(13), || calls(&srv).is_empty()),
        "the silent call kept its relay: {:#?}",
        calls(&srv)
    );
    assert_eq!(srv.counter("relay_timeouts"), 1, "{:#}", srv.status());
    assert_both_ok(&caller.wait(), &callee.wait());
}

/// A port range with room for one stream: the first call holds it, the second is refused
/// with 503 before any phone rings; once the first call ends, its ports serve a third.
#[test]
fn a_used_up_port_range_refuses_calls_with_503() {
    if !peers_available(&["sipp"]) {
        return;
    }
    // Four ports from an even one: two RTP/RTCP pairs, one stream's worth.
    let lo = (free_ports(6) + 1) & !1;
    let srv = Server::start(ServerOpts {
        extra_config: format!("[relay]\nmode = \"always\"\nports = \"{lo}-{}\"\n", lo + 3),
        ..ServerOpts::default()
    });
    let (callee, first) = held_call(&srv, 4000);
    wait_call(&srv, "the first call answered", |c| {
        c["state"] == "answered"
    });
    let second = srv
        .sipp("uac_carol", "uac_rejected.xml")
        .key("user", CAROL.name)
        .key("callee", BOB.name)
        .auth(&CAROL, &format!("bob@{DOMAIN}"))
        .subst("FINAL", "503")
        .run();
    second.assert_ok();
    assert_eq!(srv.counter("relay_full"), 1, "{:#}", srv.status());
    assert_both_ok(&first.wait(), &callee.wait());
    assert!(poll_until(Duration::from_secs(10), || calls(&srv).is_empty()));
    // The freed ports are bound again for the next call, and it goes through the relay.
    assert!(
        poll_until(Duration::from_secs(10), || {
            srv.status()["relay_ports_ready"].as_u64() == Some(2)
        }),
        "the ports did not come back: {:#}",
        srv.status()
    );
    let (callee, third) = held_call(&srv, 2000);
    let call = wait_call(&srv, "the third call answered", |c| {
        c["state"] == "answered"
    });
    assert_eq!(call["media"], "relayed", "{call:#}");
    assert_both_ok(&third.wait(), &callee.wait());
    assert_eq!(srv.counter("relay_full"), 1, "{:#}", srv.status());
}

/// The call `caller` just dialled, answered by `callee` (their `n`-th established calls):
/// each hears the other (baresip's RX > 0), and the server lists it as relayed with packets
/// from both sides latched at the expected sources, while nothing is dropped as more media
/// flows. Then the caller hangs up and the call is gone.
fn heard_both_ways(
    srv: &Server,
    (caller, caller_n, caller_src): (&mut Baresip, usize, &str),
    (callee, callee_n, callee_src): (&mut Baresip, usize, &str),
) {
    let t = Duration::from_secs(20);
    for (phone, n) in [(&mut *caller, caller_n), (&mut *callee, callee_n)] {
        phone.wait_for("the call established", t, |o| {
            o.matches("Call established").count() >= n
        });
    }
    caller.wait_for("audio received", t, |o| receives_audio_in_call(o, caller_n));
    callee.wait_for("audio received", t, |o| receives_audio_in_call(o, callee_n));
    let call = wait_call(srv, "media both ways through the relay", |c| {
        let (a, b) = packets(c);
        a > 0 && b > 0
    });
    assert_eq!(call["media"], "relayed", "{call:#}");
    assert_eq!(call["state"], "answered", "{call:#}");
    assert_eq!(
        call["streams"].as_array().map(Vec::len),
        Some(1),
        "only the answering phone's leg is left: {call:#}"
    );
    let s = &call["streams"][0];
    for (key, want) in [("caller_source", caller_src), ("callee_source", callee_src)] {
        assert!(
            s[key].as_str().unwrap_or("").starts_with(want),
            "{key} should be at {want}: {call:#}"
        );
    }
    // More media, no more dropped: each side sends where the relay expects it. (A packet
    // or two may be dropped at the start: a phone that sends as soon as it answers can be
    // ahead of its own 200 OK, which tells the relay to expect it.)
    let (a0, b0) = packets(&call);
    let dropped = &call["streams"][0]["dropped"];
    let later = wait_call(srv, "more media both ways", |c| {
        let (a, b) = packets(c);
        a > a0 + 50 && b > b0 + 50
    });
    assert_eq!(&later["streams"][0]["dropped"], dropped, "{later:#}");
    caller.command("/hangup");
    assert!(
        poll_until(t, || calls(srv).is_empty()),
        "the call is still listed after the BYE: {:#?}",
        calls(srv)
    );
}

/// A server on 127.0.0.1 and [::1], and the phones' microphone tone.
fn dual_stack_server() -> (Server, std::path::PathBuf) {
    let srv = Server::start(ServerOpts {
        ipv6: true,
        algorithms: Some(vec!["MD5"]),
        ..ServerOpts::default()
    });
    let tone = make_tone(&srv);
    (srv, tone)
}

/// alice's baresip on IPv4 (127.0.0.1), bob's on IPv6 ([::1]), both answering by
/// themselves. alice calls bob, then bob calls alice: each call is relayed between the
/// families (the SDP each phone gets names the relay in its own family, `o=` included, so
/// neither answers 488) and both phones hear each other.
#[test]
fn an_ipv4_and_an_ipv6_phone_hear_each_other_both_ways() {
    if !peers_available(&["baresip", "sox"]) {
        return;
    }
    let (srv, tone) = dual_stack_server();
    let mut alice = Baresip::start_on(&srv, &ALICE, "alice", false, true, &tone);
    let mut bob = Baresip::start_on(&srv, &BOB, "bob", true, true, &tone);
    let regs = srv.wait_registrations("both phones registered", Duration::from_secs(20), |r| {
        ["alice", "bob"]
            .iter()
            .all(|u| r.iter().any(|x| x["user"] == *u))
    });
    for (user, host) in [("alice", "@127.0.0.1:"), ("bob", "@[::1]:")] {
        assert!(
            regs.iter()
                .any(|r| r["user"] == user && r["contact"].as_str().unwrap_or("").contains(host)),
            "{user} registered from {host}: {regs:#?}"
        );
    }

    alice.command(&format!("/dial sip:bob@{DOMAIN}"));
    heard_both_ways(&srv, (&mut alice, 1, "127.0.0.1:"), (&mut bob, 1, "[::1]:"));
    bob.command(&format!("/dial sip:alice@{DOMAIN}"));
    heard_both_ways(&srv, (&mut bob, 2, "[::1]:"), (&mut alice, 2, "127.0.0.1:"));
}

/// bob has two phones, one on IPv4 and one on IPv6; alice (IPv4) calls him and both ring,
/// each offered the relay in its own family. First the IPv6 phone answers (the IPv4 one is
/// left to ring): alice and it hear each other. Then the answer modes are swapped and the
/// IPv4 phone answers the next call: alice and it hear each other.
#[test]
fn a_user_with_an_ipv4_and_an_ipv6_phone_is_heard_on_whichever_answers() {
    if !peers_available(&["baresip", "sox"]) {
        return;
    }
    let (srv, tone) = dual_stack_server();
    let mut alice = Baresip::start_on(&srv, &ALICE, "alice", false, false, &tone);
    let mut bob4 = Baresip::start_on(&srv, &BOB, "bob4", false, false, &tone);
    let mut bob6 = Baresip::start_on(&srv, &BOB, "bob6", true, true, &tone);
    srv.wait_registrations(
        "alice and bob's two phones registered",
        Duration::from_secs(20),
        |r| {
            r.iter().any(|x| x["user"] == "alice")
                && r.iter().filter(|x| x["user"] == "bob").count() == 2
        },
    );
    let t = Duration::from_secs(20);

    alice.command(&format!("/dial sip:bob@{DOMAIN}"));
    bob4.wait_for("the call ringing", t, |o| o.contains("Incoming call"));
    heard_both_ways(
        &srv,
        (&mut alice, 1, "127.0.0.1:"),
        (&mut bob6, 1, "[::1]:"),
    );
    // The CANCEL reaches it (baresip says "session closed").
    bob4.wait_for("the call cancelled", t, |o| o.contains("session closed"));

    for (phone, mode) in [(&bob6, "manual"), (&bob4, "auto")] {
        phone.ask(
            &format!("/answermode {mode}"),
            &format!("Answer mode changed to: {mode}"),
            t,
        );
    }
    alice.command(&format!("/dial sip:bob@{DOMAIN}"));
    bob6.wait_for("the second call ringing", t, |o| {
        o.contains("Incoming call")
    });
    heard_both_ways(
        &srv,
        (&mut alice, 2, "127.0.0.1:"),
        (&mut bob4, 1, "127.0.0.1:"),
    );
}
