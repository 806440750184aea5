//! Presence with PJSIP (pjsua2) as the phones: alice and bob watch each other (buddies with
//! subscriptions); each sees the other online once registered; bob publishes "away" and
//! alice sees it; bob turns do-not-disturb on with *78 and alice sees him busy; off again,
//! alice calls him and sees him on the phone while the call lasts; alice (who never
//! published) leaves and bob sees her offline. Busy lamps (SIPp watching the dialog package) and call pickup (*8) too.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn pjsip_buddies_see_online_away_busy_and_offline() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let srv = Server::start(ServerOpts::default());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pjsua_presence.py");
    let ran = run_bounded(
        Command::new(&python).arg(&script).args([
            srv.port.to_string(),
            free_port().to_string(),
            DOMAIN.to_string(),
            ALICE.password.to_string(),
            BOB.password.to_string(),
        ]),
        None,
        &srv.dir.join("pjsua"),
        Duration::from_secs(90),
    );
    let out = ran.stdout.clone();
    assert!(ran.success(), "pjsua failed:\n{out}\n{}", ran.stderr);
    let sees = |who: &str, what: &str| {
        out.lines()
            .any(|l| l.starts_with(&format!("{who} SEES")) && l.contains(what))
    };
    assert!(
        sees("alice", "bob online"),
        "alice never saw bob online:\n{out}"
    );
    assert!(
        sees("bob", "alice online"),
        "bob never saw alice online:\n{out}"
    );
    assert!(
        sees("alice", "bob online away"),
        "alice never saw bob away:\n{out}"
    );
    assert!(
        sees("alice", "bob online busy"),
        "alice never saw bob busy:\n{out}"
    );
    // In that order.
    let bob_as_alice_saw: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("alice SEES bob "))
        .collect();
    let at = |what: &str| bob_as_alice_saw.iter().position(|l| *l == what);
    assert!(
        at("online -") < at("online away") && at("online away") < at("online busy"),
        "{bob_as_alice_saw:?}"
    );
    assert!(
        at("online busy") < at("online on-the-phone"),
        "a call in progress shows bob on the phone: {bob_as_alice_saw:?}"
    );
    // alice never published: online while registered, offline once she unregistered.
    let alice_as_bob_saw: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("bob SEES alice "))
        .collect();
    assert!(alice_as_bob_saw.contains(&"online -"), "{out}");
    assert_eq!(alice_as_bob_saw.last(), Some(&"offline -"), "{out}");
    assert!(out.contains("DONE"), "{out}");
}

/// A desk phone's busy-lamp key for alice (SIPp subscribed to her dialog package): it hears
/// early, confirmed and terminated as bob's call to alice rings, is answered and ends. The
/// server knows from its own call table; alice's phone is asked nothing.
#[test]
fn a_busy_lamp_shows_alices_call_ring_answer_and_end() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let alice_port = register_udp(&srv, &ALICE);
    let lamp = srv
        .sipp("carol_lamp", "watcher_dialog.xml")
        .port(free_port())
        .key("user", CAROL.name)
        .key("callee", ALICE.name)
        .auth(&CAROL, &format!("{}@{DOMAIN}", ALICE.name))
        .timeout(Duration::from_secs(30))
        .spawn();
    assert!(poll_until(Duration::from_secs(10), || srv
        .cli_json("presence")
        .as_array()
        .is_some_and(|a| a.len() == 1)));
    // alice's phone rings 2 s before answering; bob hangs up 2 s later (NOTIFYs go at most
    // one a second, so each state is its own).
    let alice = srv
        .sipp("alice_phone", "uas_answer.xml")
        .port(alice_port)
        .arg("-d")
        .arg("2000")
        .spawn_listening();
    let bob = srv
        .sipp("bob_calls", "uac_call.xml")
        .port(free_port())
        .key("user", BOB.name)
        .key("callee", ALICE.name)
        .auth(&BOB, &format!("{}@{DOMAIN}", ALICE.name))
        .replace(
            "<pause milliseconds=\"500\"/>",
            "<pause milliseconds=\"2000\"/>",
        )
        .run();
    assert_both_ok(&bob, &alice.wait());
    let lamp = lamp.wait();
    assert!(
        lamp.status.is_some_and(|s| s.success()),
        "{}",
        lamp.report()
    );
}

/// Call pickup: bob calls alice, her phone rings; carol dials *8101 (alice's extension)
/// from another phone; alice's phone stops ringing (CANCEL), carol's phone gets bob's call
/// and answers it, and bob is connected to carol until he hangs up.
#[test]
fn star_eight_picks_up_a_call_ringing_at_alice() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let alice_port = register_udp(&srv, &ALICE);
    let carol_port = register_udp(&srv, &CAROL);
    let alice = start_uas(&srv, &ALICE, alice_port, "uas_ring_cancel.xml");
    let carol = start_uas(&srv, &CAROL, carol_port, "uas_answer.xml");
    let bob = srv
        .sipp("bob_calls_alice", "uac_call.xml")
        .port(free_port())
        .key("user", BOB.name)
        .key("callee", ALICE.name)
        .auth(&BOB, &format!("{}@{DOMAIN}", ALICE.name))
        .spawn();
    // Once alice's phone rings, carol picks the call up.
    let ringing = srv.dir.join(format!(
        "uas_alice_{alice_port}_uas_ring_cancel_messages.log"
    ));
    assert!(
        poll_until(Duration::from_secs(10), || std::fs::read_to_string(
            &ringing
        )
        .is_ok_and(|t| t.contains("SIP/2.0 180"))),
        "alice's phone never rang"
    );
    srv.sipp("carol_picks_up", "uac_rejected.xml")
        .port(free_port())
        .key("user", CAROL.name)
        .key("callee", "*8101")
        .auth(&CAROL, &format!("*8101@{DOMAIN}"))
        .subst("FINAL", "480")
        .run()
        .assert_ok();
    assert_both_ok(&bob.wait(), &carol.wait());
    let alice = alice.wait();
    assert!(
        alice.status.is_some_and(|s| s.success()),
        "{}",
        alice.report()
    );
}

/// Another domain: alice at alpha.test watches bob at beta.test, who allows her (two
/// servers, the test's DNS): the SUBSCRIBE goes through alpha to beta's presence agent, and
/// the NOTIFY back through both proxies shows bob online. carol at alpha, whom bob did not
/// allow, gets a closed document for bob, the same as for a name beta does not have.
#[test]
fn a_watcher_of_another_domain_sees_what_the_user_allows() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    const ALPHA_IP: &str = "127.0.0.2";
    const BETA_IP: &str = "127.0.0.3";
    let dir = test_dir();
    let (alpha_port, beta_port) = (free_port(), free_port());
    let dns = common::dnsmasq::Dnsmasq::start(
        &dir,
        &[
            format!("--host-record=sip.alpha.test,{ALPHA_IP}"),
            format!("--host-record=sip.beta.test,{BETA_IP}"),
            "--naptr-record=alpha.test,10,10,S,SIP+D2U,,_sip._udp.alpha.test".to_string(),
            "--naptr-record=beta.test,10,10,S,SIP+D2U,,_sip._udp.beta.test".to_string(),
            format!("--srv-host=_sip._udp.alpha.test,sip.alpha.test,{alpha_port},10,0"),
            format!("--srv-host=_sip._udp.beta.test,sip.beta.test,{beta_port},10,0"),
        ],
    );
    let dns_cfg = format!("[dns]\nservers = [\"127.0.0.1:{}\"]\n", dns.port);
    let alpha = Server::start(ServerOpts {
        domain: Some("alpha.test".into()),
        ip: Some(ALPHA_IP.into()),
        port: Some(alpha_port),
        users: vec![ALICE, CAROL],
        extra_config: dns_cfg.clone(),
        ..Default::default()
    });
    let beta = Server::start(ServerOpts {
        domain: Some("beta.test".into()),
        ip: Some(BETA_IP.into()),
        port: Some(beta_port),
        users: vec![BOB],
        extra_config: dns_cfg,
        ..Default::default()
    });
    // bob lets alice see him (from the command line; `[presence.allow]` in the file too).
    let r = beta.cli(&["presence", "allow", "bob", "alice@alpha.test"]);
    assert!(r.success(), "{}{}", r.stdout, r.stderr);
    let listed = beta.cli(&["presence", "allowed"]).stdout;
    assert!(
        listed.contains("bob") && listed.contains("alice@alpha.test"),
        "{listed}"
    );
    beta.sipp("register_bob", "register.xml")
        .port(free_port())
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, &beta.domain)
        .run()
        .assert_ok();
    let watch = |who: &TestUser, callee: &str, basic: &str| {
        alpha
            .sipp(
                &format!("{}_watches_{}", who.name, callee.replace('@', "_")),
                "watcher_presence.xml",
            )
            .port(free_port())
            .key("user", who.name)
            .key("callee", callee)
            .auth(who, callee)
            .subst("BASIC", basic)
            .timeout(Duration::from_secs(20))
            .run()
            .assert_ok();
    };
    watch(&ALICE, "bob@beta.test", "open");
    watch(&CAROL, "bob@beta.test", "closed");
    watch(&CAROL, "nobody@beta.test", "closed");
}

/// baresip's presence module and a pjsua2 buddy watch each other: alice (baresip, her
/// contact bob marked for presence) and bob (pjsua2, alice his buddy). Each sees the other
/// online; bob publishes "away" and baresip shows the change; alice sets herself offline
/// (baresip publishes it) and bob sees her offline although her phone is still registered.
#[test]
fn baresip_and_pjsip_watch_each_other() {
    if !peers_available(&["baresip", "sox"]) {
        return;
    }
    let Some(python) = pjsua_python() else {
        return;
    };
    let srv = Server::start(ServerOpts::default());
    let tone = common::baresip::make_tone(&srv);
    let sip_port = free_ports(2);
    let alice = common::baresip::Baresip::launch(common::baresip::Phone {
        dir: srv.dir.join("baresip-alice"),
        name: "alice",
        host: HOST.to_string(),
        ipv6: false,
        sip_port,
        console: free_port(),
        rtp: free_ports(40),
        netns: None,
        account: format!(
            "<sip:alice@{DOMAIN}>;auth_user=alice;auth_pass={};outbound=\"sip:{};transport=udp\";regint=600;pubint=600\n",
            ALICE.password,
            srv.addr()
        ),
        contacts: format!("\"Bob\" <sip:bob@{DOMAIN}>;presence=p2p\n"),
        tone: &tone,
        config_extra: "module_app presence.so\n".into(),
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pjsua_bob_watches.py");
    let dir = srv.dir.join("pjsua-bob");
    std::fs::create_dir_all(&dir).unwrap();
    let go = dir.join("go");
    let bob = Command::new(&python)
        .arg(&script)
        .args([
            srv.port.to_string(),
            free_port().to_string(),
            DOMAIN.to_string(),
            BOB.password.to_string(),
            "30".to_string(),
        ])
        .arg(&go)
        .stdout(std::fs::File::create(dir.join("out")).unwrap())
        .stderr(std::fs::File::create(dir.join("err")).unwrap())
        .spawn()
        .expect("pjsua2 script");
    let mut bob = ChildGuard(bob);
    let bob_out = || std::fs::read_to_string(dir.join("out")).unwrap_or_default();
    // baresip lists its contacts with their presence on its console.
    let bob_on_alices_phone = |status: &str| {
        let status = status.to_string();
        let mut listed = String::new();
        let ok = poll_until(Duration::from_secs(20), || {
            listed = alice.console_reply("/contacts", Duration::from_millis(300));
            listed
                .lines()
                .any(|l| l.contains("<sip:bob@example.test>") && l.contains(&status))
        });
        assert!(
            ok,
            "alice's baresip never listed bob as {status}:\n{listed}"
        );
    };
    // Each online to the other.
    assert!(
        poll_until(Duration::from_secs(20), || bob_out()
            .contains("bob SEES alice online")),
        "bob never saw alice online:\n{}",
        bob_out()
    );
    bob_on_alices_phone("Online");
    // bob publishes "away"; baresip shows it (as it shows away: "Offline").
    std::fs::write(&go, "").unwrap();
    bob_on_alices_phone("Offline");
    // alice sets herself offline on her phone: it publishes that, and bob sees it although
    // her phone is still registered.
    alice.command("/presence_offline");
    assert!(
        poll_until(Duration::from_secs(20), || bob_out().contains("DONE")),
        "bob never saw alice offline:\n{}",
        bob_out()
    );
    assert!(bob_out().contains("bob SEES alice offline"));
    assert_eq!(
        srv.registrations_of("alice").len(),
        1,
        "alice's phone is still registered"
    );
    let _ = bob.0.wait();
}

/// A child process killed when the test ends, however it ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
