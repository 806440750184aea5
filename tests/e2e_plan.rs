//! The home and office phone system end to end, with SIPp phones against a real
//! `hedgewitch serve`: ring groups (parallel, sequential), each kind of call forwarding,
//! do-not-disturb, a forwarding loop, speed dials, feature codes with their confirmation
//! MESSAGE, dial-plan rewrite and reject rules, 3xx recursion, and a reload in the middle of
//! a call. Settings are made with the CLI (`group`, `forward`, `speeddial`, `dialplan`) or
//! in the config file, as a user would.

mod common;

use common::*;
use std::time::Duration;

fn cli_ok(srv: &Server, args: &[&str]) -> String {
    let r = srv.cli(args);
    assert!(
        r.success(),
        "`hedgewitch {}` failed:\n{}{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// A callee that answers and checks that the INVITE matches `expect` (a regex).
fn answering(srv: &Server, user: &TestUser, port: u16, expect: &str) -> SippRunning {
    // The regex goes into an XML attribute.
    let escaped = expect
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    uas(srv, user, port, "uas_answer_expect.xml")
        .subst("EXPECT", &escaped)
        .spawn_listening()
}

/// alice calls `callee`; the call must be answered and hung up normally.
fn alice_calls(srv: &Server, callee: &str) -> SippOutcome {
    uac_as_alice(srv, "uac_call.xml", callee).run()
}

/// alice calls `callee` and the call must fail with `status`.
fn alice_is_refused(srv: &Server, callee: &str, status: u16) {
    uac_as_alice(srv, "uac_rejected.xml", callee)
        .subst("FINAL", &status.to_string())
        .run()
        .assert_ok();
}

#[test]
fn parallel_group_rings_both_and_cancels_the_other() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let bob = register_udp(&srv, &BOB);
    let carol = register_udp(&srv, &CAROL);
    cli_ok(
        &srv,
        &[
            "group",
            "add",
            "sales",
            "--extension",
            "300",
            "--member",
            "bob",
            "--member",
            "carol",
        ],
    );
    // bob rings 1 s then answers; carol rings until the proxy cancels her branch.
    let winner = uas(&srv, &BOB, bob, "uas_answer.xml")
        .arg("-d")
        .arg("1000")
        .spawn_listening();
    let loser = start_uas(&srv, &CAROL, carol, "uas_ring_cancel.xml");
    let uac = alice_calls(&srv, "300");
    assert_both_ok(&uac, &winner.wait());
    assert_both_ok(&uac, &loser.wait());
}

#[test]
fn sequential_group_rings_the_next_member_after_the_ring_time() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        extra_config:
            "[[group]]\nname = \"desk\"\nextension = \"301\"\nstrategy = \"sequential\"\n\
                       members = [{ target = \"bob\", ring_time = 2 }, \"carol\"]\n"
                .into(),
        ..Default::default()
    });
    let bob = register_udp(&srv, &BOB);
    let carol = register_udp(&srv, &CAROL);
    let first = start_uas(&srv, &BOB, bob, "uas_ring_cancel.xml");
    let second = start_uas(&srv, &CAROL, carol, "uas_answer.xml");
    let uac = alice_calls(&srv, "desk");
    assert_both_ok(&uac, &first.wait());
    assert_both_ok(&uac, &second.wait());
}

#[test]
fn unconditional_forward_with_diversion_and_history_info() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let carol = register_udp(&srv, &CAROL);
    register_udp(&srv, &BOB);
    let out = cli_ok(&srv, &["forward", "set", "bob", "--always", "carol"]);
    assert!(out.contains("all calls to carol"), "{out}");
    let callee = answering(
        &srv,
        &CAROL,
        carol,
        "Diversion: <sip:bob@example\\.test>;reason=unconditional;counter=1.*\
         History-Info: <sip:bob@example\\.test[^>]*>;index=1, <sip:carol@example\\.test;cause=302>;index=1\\.1;mp=1",
    );
    // The caller must get 181 Call Is Being Forwarded before the ringing.
    let uac = uac_as_alice(&srv, "uac_call.xml", "bob")
        .replace(
            "<!-- 181 when the call is forwarded (once or twice) before anything rings -->\n  <recv response=\"181\" optional=\"true\"/>",
            "<recv response=\"181\"/>",
        )
        .run();
    assert_both_ok(&uac, &callee.wait());
}

/// bob forwards to carol (`forward set bob ARGS`); bob's phone, when `bob_phone` names its
/// scenario, is registered and runs it; carol answers a call whose Diversion gives `reason`.
fn forwarded_to_carol(args: &[&str], bob_phone: Option<&str>, reason: &str) {
    let srv = Server::start(ServerOpts::default());
    let bob = bob_phone.map(|scenario| (register_udp(&srv, &BOB), scenario));
    let carol = register_udp(&srv, &CAROL);
    let mut cmd = vec!["forward", "set", "bob"];
    cmd.extend_from_slice(args);
    cli_ok(&srv, &cmd);
    let bob = bob.map(|(port, scenario)| start_uas(&srv, &BOB, port, scenario));
    let callee = answering(
        &srv,
        &CAROL,
        carol,
        &format!("Diversion: <sip:bob@example\\.test>;reason={reason}"),
    );
    let uac = alice_calls(&srv, "bob");
    if let Some(bob) = bob {
        assert_both_ok(&uac, &bob.wait());
    }
    assert_both_ok(&uac, &callee.wait());
}

/// bob's phone answers 486: the call goes to carol (by her extension).
#[test]
fn busy_forward() {
    if !peers_available(&["sipp"]) {
        return;
    }
    forwarded_to_carol(&["--busy", "103"], Some("uas_busy.xml"), "user-busy");
}

/// bob's phone rings for his 2 s, is cancelled, and the call goes to carol.
#[test]
fn no_answer_forward_after_the_users_ring_time() {
    if !peers_available(&["sipp"]) {
        return;
    }
    forwarded_to_carol(
        &["--no-answer", "carol", "--after", "2"],
        Some("uas_ring_cancel.xml"),
        "no-answer",
    );
}

/// bob has no phone registered: the call goes straight to carol.
#[test]
fn unavailable_forward_when_no_phone_is_registered() {
    if !peers_available(&["sipp"]) {
        return;
    }
    forwarded_to_carol(&["--unavailable", "carol"], None, "unavailable");
}

#[test]
fn do_not_disturb_and_forwarding_loop() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    register_udp(&srv, &BOB);
    register_udp(&srv, &CAROL);
    cli_ok(&srv, &["forward", "dnd", "bob", "on"]);
    alice_is_refused(&srv, "bob", 486);
    cli_ok(&srv, &["forward", "clear", "bob"]);
    cli_ok(&srv, &["forward", "set", "bob", "--always", "carol"]);
    cli_ok(&srv, &["forward", "set", "carol", "--always", "bob"]);
    alice_is_refused(&srv, "bob", 482);
}

#[test]
fn speed_dial_reaches_its_target() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let bob = register_udp(&srv, &BOB);
    cli_ok(&srv, &["speeddial", "add", "11", "bob", "--user", "alice"]);
    let callee = answering(
        &srv,
        &BOB,
        bob,
        "P-Asserted-Identity: <sip:alice@example\\.test>",
    );
    assert_both_ok(&alice_calls(&srv, "11"), &callee.wait());
    // Speed dial codes clash with extensions: refused with the reason.
    let r = srv.cli(&["speeddial", "add", "102", "carol"]);
    assert!(
        !r.success() && r.stderr.contains("speed dial `102`"),
        "{}",
        r.stderr
    );
}

#[test]
fn feature_code_sets_forwarding_and_confirms_by_message() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let alice_phone = register_udp(&srv, &ALICE);
    let carol = register_udp(&srv, &CAROL);
    let notified = uas(&srv, &ALICE, alice_phone, "uas_notify.xml")
        .subst("TEXT", "Forwarding all calls to 103\\.")
        .spawn_listening();
    uac_as_alice(&srv, "uac_rejected.xml", "*72103")
        .subst("FINAL", "480")
        .run()
        .assert_ok();
    notified.wait().assert_ok();
    // The setting is stored and shown, and calls to alice now reach carol.
    let out = cli_ok(&srv, &["forward", "show", "alice"]);
    assert!(out.contains("all calls to 103"), "{out}");
    let callee = answering(&srv, &CAROL, carol, "reason=unconditional");
    let uac = srv
        .sipp("uac_bob_call_alice", "uac_call.xml")
        .port(free_port())
        .key("user", BOB.name)
        .key("callee", ALICE.name)
        .auth(&BOB, &format!("alice@{DOMAIN}"))
        .run();
    assert_both_ok(&uac, &callee.wait());
    // *73 turns it off again.
    let notified = uas(&srv, &ALICE, alice_phone, "uas_notify.xml")
        .subst("TEXT", "Forwarding of all calls is off\\.")
        .spawn_listening();
    uac_as_alice(&srv, "uac_rejected.xml", "*73")
        .subst("FINAL", "480")
        .run()
        .assert_ok();
    notified.wait().assert_ok();
    let out = cli_ok(&srv, &["forward", "show", "alice"]);
    assert!(out.contains("no forwarding"), "{out}");
}

#[test]
fn dial_plan_rewrite_and_reject_rules() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let bob = register_udp(&srv, &BOB);
    // 9 + extension: the 9 is stripped and the rest dialled locally.
    cli_ok(
        &srv,
        &[
            "dialplan", "add", "--match", "9XXX", "--action", "local", "--strip", "1",
        ],
    );
    cli_ok(
        &srv,
        &[
            "dialplan",
            "add",
            "--match",
            "0900.",
            "--action",
            "reject",
            "--status",
            "403",
            "--reason",
            "Premium Numbers Barred",
        ],
    );
    let list = cli_ok(&srv, &["dialplan", "list"]);
    assert!(
        list.contains("match 9XXX") && list.contains("reject 403"),
        "{list}"
    );
    let callee = start_uas(&srv, &BOB, bob, "uas_answer.xml");
    assert_both_ok(&alice_calls(&srv, "9102"), &callee.wait());
    alice_is_refused(&srv, "09001234", 403);
    // A bad mask is refused before anything is stored.
    let r = srv.cli(&["dialplan", "add", "--match", "9Q", "--action", "local"]);
    assert!(!r.success() && r.stderr.contains("9Q"), "{}", r.stderr);
}

#[test]
fn redirect_from_a_phone_is_followed() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let bob = register_udp(&srv, &BOB);
    let carol = register_udp(&srv, &CAROL);
    let redirect = uas(&srv, &BOB, bob, "uas_redirect.xml")
        .subst("TARGET", "carol")
        .spawn_listening();
    let callee = start_uas(&srv, &CAROL, carol, "uas_answer.xml");
    let uac = alice_calls(&srv, "bob");
    assert_both_ok(&uac, &redirect.wait());
    assert_both_ok(&uac, &callee.wait());
}

#[test]
fn reload_during_a_call_keeps_the_call_and_the_registrations() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let bob = register_udp(&srv, &BOB);
    register_udp(&srv, &CAROL);
    let callee = start_uas(&srv, &BOB, bob, "uas_answer.xml");
    // A call that stays up for 4 s.
    let uac = uac_as_alice(&srv, "uac_call.xml", "bob")
        .replace(
            "<pause milliseconds=\"500\"/>",
            "<pause milliseconds=\"4000\"/>",
        )
        .spawn();
    assert!(
        poll_until(Duration::from_secs(10), || srv.counter("calls_forwarded")
            == 1),
        "the call did not start"
    );
    std::thread::sleep(Duration::from_millis(500));
    // A settings change (which reloads), an explicit reload, and SIGHUP.
    cli_ok(
        &srv,
        &[
            "group",
            "add",
            "team",
            "--extension",
            "310",
            "--member",
            "carol",
        ],
    );
    let out = cli_ok(&srv, &["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &srv.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let uac = uac.wait();
    assert_both_ok(&uac, &callee.wait());
    assert_eq!(srv.registrations().len(), 2, "{:#?}", srv.registrations());
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert!(
        log.contains("reloaded on SIGHUP"),
        "no SIGHUP reload in the log"
    );

    // A group added to the config file works after `reload`, without a restart.
    let base = std::fs::read_to_string(&srv.config).expect("config");
    let with_group =
        format!("{base}\n[[group]]\nname = \"late\"\nextension = \"330\"\nmembers = [\"bob\"]\n");
    std::fs::write(&srv.config, &with_group).expect("write config");
    cli_ok(&srv, &["reload"]);
    let callee = start_uas(&srv, &BOB, bob, "uas_answer.xml");
    assert_both_ok(&alice_calls(&srv, "330"), &callee.wait());
    // A broken file is refused with the reason, and the running plan stays.
    std::fs::write(
        &srv.config,
        format!("{with_group}\n[[group]]\nname = \"bob\"\n"),
    )
    .expect("write config");
    let r = srv.cli(&["reload"]);
    assert!(
        !r.success() && r.stderr.contains("user `bob`"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let callee = start_uas(&srv, &BOB, bob, "uas_answer.xml");
    assert_both_ok(&alice_calls(&srv, "late"), &callee.wait());
}

#[test]
fn rotating_group_with_a_member_outside_the_domain() {
    if !peers_available(&["sipp"]) {
        return;
    }
    // `desk` is a phone that is not registered here: reached by its SIP URI.
    let desk_port = free_port();
    let srv = Server::start(ServerOpts {
        extra_config: format!(
            "[[group]]\nname = \"hunt\"\nextension = \"320\"\nstrategy = \"rotate\"\n\
             members = [\"sip:desk@127.0.0.1:{desk_port}\", \"bob\"]\n"
        ),
        ..Default::default()
    });
    let bob = register_udp(&srv, &BOB);
    // First call: the rotation starts with desk, who answers.
    let desk = srv
        .sipp("uas_desk", "uas_answer.xml")
        .port(desk_port)
        .spawn_listening();
    assert_both_ok(&alice_calls(&srv, "320"), &desk.wait());
    // Second call: it starts one further, with bob.
    let callee = start_uas(&srv, &BOB, bob, "uas_answer.xml");
    assert_both_ok(&alice_calls(&srv, "hunt"), &callee.wait());
}
