//! Phones behind NAT, in network namespaces the test makes (see `common/natlab.rs`): bob's
//! phone (SIPp) sits in one home behind a NAT with random port mapping, alice's in another.
//! bob registers over UDP with his private address in Via and Contact; alice calls him; the
//! INVITE reaches bob through his NAT's mapping, and the ACK and BYE inside the dialog too.

mod common;

use common::natlab::{NatLab, SERVER_IP};
use common::*;

/// The lab (two homes behind NATs), the server in its public namespace, and bob's phone in
/// home 1 registered over UDP from port 5062. The server is declared after the lab by the
/// caller (`let (lab, srv) = ...`), so it stops before the namespaces go.
fn lab_with_bob_registered() -> (NatLab, Server) {
    lab_with_bob_registered_and("")
}

/// The same, with `extra` added to the server's configuration.
fn lab_with_bob_registered_and(extra: &str) -> (NatLab, Server) {
    let lab = NatLab::new(2)
        .unwrap_or_else(|e| panic!("cannot build the NAT namespaces (root is needed): {e}"));
    let srv = Server::start(ServerOpts {
        netns: Some((lab.public_ns(), SERVER_IP.into())),
        port: Some(5060),
        extra_config: extra.into(),
        ..Default::default()
    });
    let bob_home = lab.home(1);
    srv.sipp("register_bob_nat", "register.xml")
        .in_netns(&bob_home.ns, &bob_home.ip)
        .port(5062)
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, DOMAIN)
        .run()
        .assert_ok();
    (lab, srv)
}

#[test]
fn a_phone_behind_nat_registers_and_receives_a_call() {
    if !peers_available(&["sipp", "ip", "nft"]) {
        return;
    }
    let (lab, srv) = lab_with_bob_registered();
    let (bob_home, alice_home) = (lab.home(1), lab.home(2));
    // The registration is stored with the private Contact, and the NAT's address as source.
    let regs = srv.registrations_of("bob");
    assert_eq!(regs.len(), 1, "{regs:#?}");
    assert!(
        regs[0]["contact"]
            .as_str()
            .unwrap_or("")
            .contains("100.64.1.2:5062"),
        "{regs:#?}"
    );
    assert!(
        regs[0]["source"]
            .as_str()
            .unwrap_or("")
            .starts_with(&bob_home.public_ip),
        "{regs:#?}"
    );
    let callee = srv
        .sipp("uas_bob_nat", "uas_answer.xml")
        .in_netns(&bob_home.ns, &bob_home.ip)
        .port(5062)
        .replace("127\\.0\\.0\\.1", "[0-9.]+")
        .spawn_listening();
    let caller = srv
        .sipp("uac_alice_nat", "uac_call.xml")
        .in_netns(&alice_home.ns, &alice_home.ip)
        .port(5070)
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .auth(&ALICE, &format!("bob@{DOMAIN}"))
        .replace("127\\.0\\.0\\.1", "[0-9.]+")
        .run();
    assert_both_ok(&caller, &callee.wait());
}

/// alice calls from behind her NAT without being registered; bob (behind another NAT)
/// answers and hangs up: his BYE reaches alice through her NAT because the proxy gave her
/// INVITE's Contact her public address.
#[test]
fn the_callee_hangs_up_on_a_caller_behind_nat() {
    if !peers_available(&["sipp", "ip", "nft"]) {
        return;
    }
    let (lab, srv) = lab_with_bob_registered();
    let (bob_home, alice_home) = (lab.home(1), lab.home(2));
    let callee = srv
        .sipp("uas_bob_bye", "uas_answer_bye.xml")
        .in_netns(&bob_home.ns, &bob_home.ip)
        .port(5062)
        .spawn_listening();
    let caller = srv
        .sipp("uac_alice_remote_bye", "uac_call_remote_bye.xml")
        .in_netns(&alice_home.ns, &alice_home.ip)
        .port(5070)
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .auth(&ALICE, &format!("bob@{DOMAIN}"))
        .run();
    assert_both_ok(&caller, &callee.wait());
}

/// Keep-alive pings (every 2 s here): bob's phone behind NAT answers two of them through its
/// NAT mapping, then goes away; after three failed pings in a row its registration is
/// removed. (A ping fails at once when ICMP says the port is closed, else after 32 s, RFC 3261
/// Timer F.)
#[test]
fn a_phone_behind_nat_is_pinged_and_removed_once_it_stops_answering() {
    if !peers_available(&["sipp", "ip", "nft"]) {
        return;
    }
    let (lab, srv) =
        lab_with_bob_registered_and("[registrar]\nnat_ping_interval = 2\nnat_ping_failures = 3\n");
    let bob_home = lab.home(1);
    let phone = srv
        .sipp("uas_bob_options", "uas_options.xml")
        .in_netns(&bob_home.ns, &bob_home.ip)
        .port(5062)
        .calls(2)
        .spawn_listening();
    // Both pings reached the phone through its NAT, and it answered them.
    phone.wait().assert_ok();
    assert!(srv.counter("nat_pings_sent") >= 2, "{:#}", srv.status());
    assert_eq!(srv.registrations_of("bob").len(), 1);
    // Silence from now on: the contact goes after three unanswered pings.
    assert!(
        poll_until(std::time::Duration::from_secs(60), || srv
            .registrations_of("bob")
            .is_empty()),
        "bob's silent phone is still registered: {:#?}",
        srv.registrations()
    );
    assert!(srv.counter("nat_pings_sent") >= 5, "{:#}", srv.status());
}
