//! SIP provider trunks against an independent provider: Kamailio (Debian's package),
//! configured by the test as a registrar with digest and a proxy that challenges calls out
//! and sends calls for the household's number to the registered Contact. SIPp plays the
//! phones, the telephone on the provider's network, and the outside caller.
//!
//! - hedgewitch registers with digest from a file dropped in `providers.d`; `providers`
//!   shows it registered; the provider restarts and the registration comes back; a wrong
//!   password shows as failed with the reason;
//! - a phone dials a national number: the provider's side gets an INVITE in E.164 that passed
//!   its digest challenge, with the caller shown as the profile asks; the BYE reaches both;
//! - the provider sends a call to the household's number: the mapped ring group rings;
//! - `provider add`, `did add`, `provider test` from the command line;
//! - ENUM: a number published in a test `e164.arpa` zone (dnsmasq NAPTR) reaches a user of a
//!   second hedgewitch domain by URI, not through the provider;
//! - an IP-PBX peered without registration: numbers a rule routes go to it as dialled, and
//!   its calls from its address reach our extensions with no digest;
//! - fail-over to the second provider when the first answers 503 or is down;
//! - behind a NAT (the test's NAT lab), hedgewitch registers to the provider on the public
//!   side and receives a call through its NAT mapping;
//! - the fraud guards: a user without the international class gets 403 for `+44...`, the
//!   emergency number goes out even for that user, the calls-at-once cap refuses the call
//!   over it.

mod common;

use common::kamailio::{Kamailio, ACCOUNT, DID, PROVIDER_DOMAIN};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "prov-Pass-1";

fn provider_file(dir: &Path, name: &str, kamailio: &str, password: &str, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "profile = \"generic-e164\"\n\
             domain = \"{PROVIDER_DOMAIN}\"\n\
             registrar = \"sip:{kamailio}\"\n\
             user = \"{ACCOUNT}\"\n\
             password = \"{password}\"\n\
             numbers = [\"{DID}\"]\n\
             default_target = \"family\"\n\
             {extra}"
        ),
    )
    .unwrap();
}

/// A caller on the provider's network calls the household's number through Kamailio.
fn outside_call(srv: &Server, kam_addr: &str, name: &str) -> SippOutcome {
    srv.sipp(name, "uac_plain_call.xml")
        .to(kam_addr, PROVIDER_DOMAIN)
        .port(free_port())
        .key("user", "+4930111")
        .key("callee", DID)
        .run()
}

fn provider(srv: &Server, name: &str) -> Value {
    let v = srv.cli_json("providers");
    v.as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn wait_state(srv: &Server, name: &str, state: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let ok = poll_until(within, || {
        last = provider(srv, name);
        last["state"] == state
    });
    assert!(
        ok,
        "provider {name} not {state}: {last}\n{}",
        tail(&srv.log, 40)
    );
    last
}

/// Numbers are dialled in Germany; the household's number rings the family group.
fn config(providers: &Path) -> String {
    format!(
        "providers_dir = \"{}\"\n\
         [numbers]\ncountry_code = \"49\"\nenum_suffixes = []\n\
         [[group]]\nname = \"family\"\nextension = \"200\"\nmembers = [\"bob\", \"carol\"]\n",
        providers.display()
    )
}

#[test]
fn a_provider_file_registers_and_carries_calls_both_ways() {
    if !peers_available(&["sipp", "kamailio"]) {
        return;
    }
    let dir = test_dir();
    let providers = dir.join("providers.d");
    let kam_addr = format!("{HOST}:{}", free_port());
    let pstn_port = free_port();
    let mut kam = Kamailio::start(&dir, &kam_addr, PASSWORD, &format!("{HOST}:{pstn_port}"));
    // Keep-alives every 2 s and retries after 1 s, so that the restart below is noticed fast.
    provider_file(
        &providers,
        "acme",
        &kam_addr,
        PASSWORD,
        "keepalive = 2\nretry = 1\n",
    );
    let srv = Server::start(ServerOpts {
        extra_config: config(&providers),
        ..Default::default()
    });

    // Registered with digest, as `providers` says (and as Kamailio's log says).
    let p = wait_state(&srv, "acme", "registered", Duration::from_secs(15));
    assert_eq!(p["account"], format!("{ACCOUNT}@{PROVIDER_DOMAIN}"));
    assert!(p["expires_in"].as_u64().unwrap() > 0);
    let text = srv.cli(&["providers"]);
    assert!(text.success(), "{}", text.stderr);
    assert!(
        text.stdout.contains("acme") && text.stdout.contains("registered"),
        "{}",
        text.stdout
    );
    let klog = kam.log_text();
    assert!(
        klog.contains("REGISTER challenged") && klog.contains("REGISTER ok"),
        "{klog}"
    );

    // A phone dials a national number: E.164 at the provider, after its challenge, with the
    // household's number in From; the caller's BYE reaches the far end.
    let pstn = srv
        .sipp("pstn", "uas_pstn.xml")
        .port(pstn_port)
        .subst("NUMBER_RE", r"\+49301234567")
        .subst("CALLER_RE", r"sip:\+4930999@provider\.test")
        .subst("IDENTITY_HEADER", "From")
        .spawn_listening();
    let alice = uac_as_alice(&srv, "uac_call.xml", "0301234567").run();
    let pstn = pstn.wait();
    assert_both_ok(&alice, &pstn);
    let klog = kam.log_text();
    assert!(
        klog.contains("OUT call to +49301234567 from sip:+4930999@provider.test"),
        "{klog}"
    );
    assert_eq!(
        provider(&srv, "acme")["calls"],
        0,
        "the call no longer counts"
    );

    // The provider sends a call to the household's number: the family group rings (bob
    // answers, carol's phone rings and is cancelled).
    let bob_port = register_udp(&srv, &BOB);
    let carol_port = register_udp(&srv, &CAROL);
    let bob = start_uas(&srv, &BOB, bob_port, "uas_answer.xml");
    let carol = start_uas(&srv, &CAROL, carol_port, "uas_ring_cancel.xml");
    let caller = outside_call(&srv, &kam_addr, "outside_caller");
    let bob = bob.wait();
    assert_both_ok(&caller, &bob);
    let carol = carol.wait();
    assert!(
        carol.status.is_some_and(|s| s.success()),
        "{}",
        carol.report()
    );

    // The provider restarts (forgetting every registration): the keep-alives notice, and
    // the registration comes back once it is up again.
    kam.stop();
    let down = wait_state(&srv, "acme", "failed", Duration::from_secs(20));
    assert!(
        down["reason"].as_str().unwrap().contains("no answer"),
        "{down}"
    );
    kam.start_again();
    wait_state(&srv, "acme", "registered", Duration::from_secs(20));
    // Registered at the provider again: a call to the number reaches bob.
    let bob = start_uas(&srv, &BOB, bob_port, "uas_answer.xml");
    let caller = outside_call(&srv, &kam_addr, "outside_caller_again");
    assert_both_ok(&caller, &bob.wait());
}

#[test]
fn a_wrong_password_shows_as_failed_with_the_reason() {
    if !peers_available(&["kamailio"]) {
        return;
    }
    let dir = test_dir();
    let providers = dir.join("providers.d");
    let kam_addr = format!("{HOST}:{}", free_port());
    let _kam = Kamailio::start(&dir, &kam_addr, PASSWORD, "127.0.0.1:9");
    provider_file(&providers, "acme", &kam_addr, "not-the-password", "");
    let srv = Server::start(ServerOpts {
        extra_config: config(&providers),
        ..Default::default()
    });
    let p = wait_state(&srv, "acme", "failed", Duration::from_secs(15));
    let reason = p["reason"].as_str().unwrap();
    assert!(reason.contains("refused the user name or password"), "{p}");
    let text = srv.cli(&["providers"]).stdout;
    assert!(
        text.contains("failed") && text.contains("refused the user name or password"),
        "{text}"
    );
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert!(log.contains("registration failed"), "{log}");
}

#[test]
fn providers_and_numbers_from_the_command_line() {
    if !peers_available(&["sipp", "kamailio"]) {
        return;
    }
    let dir = test_dir();
    let kam_addr = format!("{HOST}:{}", free_port());
    let _kam = Kamailio::start(&dir, &kam_addr, PASSWORD, "127.0.0.1:9");
    let srv = Server::start(ServerOpts {
        extra_config: "[numbers]\ncountry_code = \"49\"\nenum_suffixes = []\n".into(),
        ..Default::default()
    });
    let r = srv.cli(&["providers"]);
    assert!(r.stdout.contains("no providers"), "{}", r.stdout);
    let profiles = srv.cli(&["provider", "profiles"]).stdout;
    assert!(
        profiles.contains("generic-e164") && profiles.contains("ip-pbx"),
        "{profiles}"
    );
    let registrar = format!("sip:{kam_addr}");
    let r = srv.cli_stdin(
        &[
            "provider",
            "add",
            "acme",
            "--profile",
            "generic-e164",
            "--provider-domain",
            PROVIDER_DOMAIN,
            "--registrar",
            &registrar,
            "--user",
            ACCOUNT,
            "--number",
            DID,
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(r.success(), "{}{}", r.stdout, r.stderr);
    let file = srv.config.parent().unwrap().join("providers.d/acme.toml");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the file with the password is private");
    wait_state(&srv, "acme", "registered", Duration::from_secs(15));
    let list = srv.cli(&["provider", "list"]).stdout;
    assert!(
        list.contains("acme") && list.contains("home@provider.test"),
        "{list}"
    );
    let t = srv.cli(&["provider", "test", "acme"]);
    assert!(
        t.success() && t.stdout.contains("acme: registered"),
        "{}{}",
        t.stdout,
        t.stderr
    );

    // The number rings bob once mapped.
    let r = srv.cli(&["did", "add", DID, "bob", "--provider", "acme"]);
    assert!(r.success(), "{}{}", r.stdout, r.stderr);
    let r = srv.cli(&["did", "add", DID, "nobody-here"]);
    assert!(!r.success(), "an unknown target is refused");
    let list = srv.cli(&["did", "list"]).stdout;
    assert!(list.contains(DID) && list.contains("bob"), "{list}");
    let bob_port = register_udp(&srv, &BOB);
    let bob = start_uas(&srv, &BOB, bob_port, "uas_answer.xml");
    let caller = outside_call(&srv, &kam_addr, "outside_caller");
    assert_both_ok(&caller, &bob.wait());

    // Removed: unregistered and gone from `providers`.
    let r = srv.cli(&["provider", "remove", "acme"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(poll_until(Duration::from_secs(5), || provider(
        &srv, "acme"
    )
    .is_null()));
}

/// Two providers: `a-first` (a peer at `first`, whatever is there) and `b-second` (Kamailio,
/// registered). A call to a number fails over from the first to the second.
#[test]
fn the_second_provider_takes_the_call_when_the_first_fails() {
    if !peers_available(&["sipp", "kamailio"]) {
        return;
    }
    let dir = test_dir();
    let providers = dir.join("providers.d");
    let kam_addr = format!("{HOST}:{}", free_port());
    let pstn_port = free_port();
    let _kam = Kamailio::start(&dir, &kam_addr, PASSWORD, &format!("{HOST}:{pstn_port}"));
    let first_port = free_port();
    std::fs::create_dir_all(&providers).unwrap();
    let first = |port: u16| {
        std::fs::write(
            providers.join("a-first.toml"),
            format!(
                "profile = \"generic-e164\"\ndomain = \"first.test\"\n\
                 registrar = \"sip:{HOST}:{port}\"\nregister = false\noutgoing = true\nkeepalive = 0\n"
            ),
        )
        .unwrap()
    };
    first(first_port);
    provider_file(&providers, "b-second", &kam_addr, PASSWORD, "");
    let srv = Server::start(ServerOpts {
        extra_config: config(&providers),
        ..Default::default()
    });
    wait_state(&srv, "b-second", "registered", Duration::from_secs(15));
    assert_eq!(provider(&srv, "a-first")["state"], "peer");
    let pstn_call = |name: &str| {
        let pstn = srv
            .sipp(name, "uas_pstn.xml")
            .port(pstn_port)
            .subst("NUMBER_RE", r"\+49301234567")
            .subst("CALLER_RE", r"sip:\+4930999@provider\.test")
            .subst("IDENTITY_HEADER", "From")
            .spawn_listening();
        let alice = uac_as_alice(&srv, "uac_call.xml", "0301234567").run();
        assert_both_ok(&alice, &pstn.wait());
    };
    // The first answers 503: the second carries the call.
    let busy = srv
        .sipp("first_503", "uas_busy.xml")
        .port(first_port)
        .replace("486 Busy Here", "503 Service Unavailable")
        .spawn_listening();
    pstn_call("pstn_after_503");
    let busy = busy.wait();
    assert!(
        busy.status.is_some_and(|s| s.success()),
        "{}",
        busy.report()
    );
    // The first is down (nothing listens there): the second carries the call.
    pstn_call("pstn_after_down");
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(
        log.contains("a-first") || log.contains("first.test"),
        "the first was tried"
    );
}

#[test]
fn classes_emergency_and_the_cap_on_calls_at_once() {
    if !peers_available(&["sipp", "kamailio"]) {
        return;
    }
    let dir = test_dir();
    let providers = dir.join("providers.d");
    let kam_addr = format!("{HOST}:{}", free_port());
    let pstn_port = free_port();
    let _kam = Kamailio::start(&dir, &kam_addr, PASSWORD, &format!("{HOST}:{pstn_port}"));
    provider_file(&providers, "acme", &kam_addr, PASSWORD, "");
    let srv = Server::start(ServerOpts {
        extra_config: format!(
            "{}[numbers.allow]\ncalls_at_once = 1\n[numbers.allow.users]\nbob = [\"national\"]\n",
            config(&providers)
        ),
        ..Default::default()
    });
    wait_state(&srv, "acme", "registered", Duration::from_secs(15));
    let as_bob = |name: &str, scenario: &str, callee: &str| {
        srv.sipp(name, scenario)
            .port(free_port())
            .key("user", BOB.name)
            .key("callee", callee)
            .auth(&BOB, &format!("{callee}@{DOMAIN}"))
    };
    // bob may not call abroad: 403, logged with user, number and source.
    as_bob("bob_abroad", "uac_rejected.xml", "+442079460000")
        .subst("FINAL", "403")
        .run()
        .assert_ok();
    let log = std::fs::read_to_string(&srv.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("call to a number refused"))
        .expect("a log line for the refusal");
    assert!(
        line.contains("user=bob")
            && line.contains("+442079460000")
            && line.contains("source=127.0.0.1"),
        "{line}"
    );
    // The emergency number goes out through the provider even for bob.
    let pstn = srv
        .sipp("pstn_112", "uas_pstn.xml")
        .port(pstn_port)
        .subst("NUMBER_RE", "112")
        .subst("CALLER_RE", r"sip:\+4930999@provider\.test")
        .subst("IDENTITY_HEADER", "From")
        .spawn_listening();
    let bob = as_bob("bob_112", "uac_call.xml", "112").run();
    assert_both_ok(&bob, &pstn.wait());
    // One call at once: while alice's first call is up, her second is refused.
    let pstn = srv
        .sipp("pstn_long", "uas_pstn.xml")
        .port(pstn_port)
        .subst("NUMBER_RE", r"\+49301234567")
        .subst("CALLER_RE", r"sip:\+4930999@provider\.test")
        .subst("IDENTITY_HEADER", "From")
        .spawn_listening();
    let long = uac_as_alice(&srv, "uac_call.xml", "0301234567")
        .replace(
            "<pause milliseconds=\"500\"/>",
            "<pause milliseconds=\"4000\"/>",
        )
        .spawn();
    assert!(poll_until(Duration::from_secs(10), || provider(
        &srv, "acme"
    )["calls"]
        == 1));
    uac_as_alice(&srv, "uac_rejected.xml", "0301234568")
        .subst("FINAL", "403")
        .run()
        .assert_ok();
    assert_both_ok(&long.wait(), &pstn.wait());
}

/// ENUM: the number is published in the test's own `e164.arpa` zone with a SIP URI at a
/// second domain; the call goes there by URI (RFC 3263), not to the provider (a peer on a
/// dead port, which would fail it).
#[test]
fn a_number_published_in_enum_reaches_another_domain_by_uri() {
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
            format!("--host-record=sip.beta.test,{BETA_IP}"),
            "--naptr-record=beta.test,10,10,S,SIP+D2U,,_sip._udp.beta.test".to_string(),
            format!("--srv-host=_sip._udp.beta.test,sip.beta.test,{beta_port},10,0"),
            // +49 30 1234567, RFC 6116: digits reversed under e164.arpa.
            "--naptr-record=7.6.5.4.3.2.1.0.3.9.4.e164.arpa,10,10,U,E2U+sip,!^.*$!sip:bob@beta.test!"
                .to_string(),
        ],
    );
    let providers = dir.join("providers.d");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::write(
        providers.join("dead.toml"),
        format!(
            "profile = \"generic-e164\"\ndomain = \"dead.test\"\nregistrar = \"sip:{HOST}:9\"\n\
             register = false\noutgoing = true\nkeepalive = 0\n"
        ),
    )
    .unwrap();
    let dns_cfg = format!("[dns]\nservers = [\"127.0.0.1:{}\"]\n", dns.port);
    let alpha = Server::start(ServerOpts {
        domain: Some("alpha.test".into()),
        ip: Some(ALPHA_IP.into()),
        port: Some(alpha_port),
        users: vec![ALICE],
        extra_config: format!(
            "providers_dir = \"{}\"\n{dns_cfg}[numbers]\ncountry_code = \"49\"\n",
            providers.display()
        ),
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
    let bob_port = free_port();
    beta.sipp("register_bob", "register.xml")
        .port(bob_port)
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, &beta.domain)
        .run()
        .assert_ok();
    let bob = beta
        .sipp("bob", "uas_answer.xml")
        .port(bob_port)
        .replace("127\\.0\\.0\\.1", "127\\.0\\.0\\.[0-9]+")
        .spawn_listening();
    let alice = alpha
        .sipp("alice", "uac_call.xml")
        .port(free_port())
        .key("user", ALICE.name)
        .key("callee", "0301234567")
        .replace("127\\.0\\.0\\.1", "127\\.0\\.0\\.[0-9]+")
        .auth(&ALICE, "0301234567@alpha.test")
        .run();
    assert_both_ok(&alice, &bob.wait());
    let log = std::fs::read_to_string(&alpha.log).unwrap();
    assert!(
        log.contains("ENUM: calling the number's SIP address"),
        "{log}"
    );
}

/// hedgewitch at home behind a NAT (nftables masquerade, random ports); the provider on the
/// public side. The registration names the address the NAT gives us (learnt from the
/// answer's Via), keep-alives hold the mapping, and a call to the household's number comes
/// in through it, with its ACK and BYE.
#[test]
fn behind_nat_the_provider_reaches_us_through_the_mapping() {
    if !peers_available(&["sipp", "kamailio", "ip", "nft"]) {
        return;
    }
    use common::natlab::{NatLab, SERVER_IP};
    let lab = NatLab::new(1)
        .unwrap_or_else(|e| panic!("cannot build the NAT namespaces (root is needed): {e}"));
    let home = lab.home(1);
    let dir = test_dir();
    let providers = dir.join("providers.d");
    let kam_addr = format!("{SERVER_IP}:5070");
    let _kam = Kamailio::start_in(
        Some(&lab.public_ns()),
        &dir,
        &kam_addr,
        PASSWORD,
        "127.0.0.1:9",
    );
    provider_file(&providers, "acme", &kam_addr, PASSWORD, "keepalive = 10\n");
    let srv = Server::start(ServerOpts {
        netns: Some((home.ns.clone(), home.ip.clone())),
        port: Some(5060),
        extra_config: config(&providers),
        ..Default::default()
    });
    let p = wait_state(&srv, "acme", "registered", Duration::from_secs(15));
    let contact = p["contact"].as_str().unwrap();
    assert!(
        contact.contains(&format!("@{}:", home.public_ip)),
        "the Contact names the NAT's address: {p}"
    );
    // bob's phone at home; the outside caller on the public side calls the number.
    let bob_port = 5062;
    srv.sipp("register_bob", "register.xml")
        .in_netns(&home.ns, &home.ip)
        .port(bob_port)
        .key("user", BOB.name)
        .key("expires", "3600")
        .auth(&BOB, DOMAIN)
        .run()
        .assert_ok();
    let bob = srv
        .sipp("bob", "uas_answer.xml")
        .in_netns(&home.ns, &home.ip)
        .port(bob_port)
        .replace("127\\.0\\.0\\.1", "100\\.64\\.1\\.2")
        .spawn_listening();
    let caller = srv
        .sipp("outside_caller", "uac_plain_call.xml")
        .in_netns(&lab.public_ns(), SERVER_IP)
        .to(&kam_addr, PROVIDER_DOMAIN)
        .port(5080)
        .key("user", "+4930111")
        .key("callee", DID)
        .run();
    assert_both_ok(&caller, &bob.wait());
}

#[test]
fn a_peered_pbx_gets_its_numbers_and_reaches_our_extensions() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let dir = test_dir();
    let providers = dir.join("providers.d");
    std::fs::create_dir_all(&providers).unwrap();
    let pbx_port = free_port();
    std::fs::write(
        providers.join("pbx.toml"),
        format!(
            "profile = \"ip-pbx\"\ndomain = \"pbx.test\"\nregistrar = \"sip:{HOST}:{pbx_port}\"\nkeepalive = 0\n"
        ),
    )
    .unwrap();
    let srv = Server::start(ServerOpts {
        extra_config: format!(
            "providers_dir = \"{}\"\n[numbers]\nenum_suffixes = []\n\
             [[dialplan]]\nmatch = \"2XX\"\naction = \"provider\"\nproviders = [\"pbx\"]\n",
            providers.display()
        ),
        ..Default::default()
    });
    assert_eq!(provider(&srv, "pbx")["state"], "peer");
    // alice dials 201, an extension of the PBX: it gets 201 as dialled, from alice.
    let pbx = srv
        .sipp("pbx_callee", "uas_pstn.xml")
        .port(pbx_port)
        .subst("NUMBER_RE", "201")
        .replace("@provider\\.test SIP", "@pbx\\.test SIP")
        .subst("CALLER_RE", r"sip:alice@example\.test")
        .subst("IDENTITY_HEADER", "From")
        .spawn_listening();
    let alice = uac_as_alice(&srv, "uac_call.xml", "201").run();
    assert_both_ok(&alice, &pbx.wait());
    // The PBX calls bob's extension from its address: no digest, bob rings.
    let bob_port = register_udp(&srv, &BOB);
    let bob = start_uas(&srv, &BOB, bob_port, "uas_answer.xml");
    let pbx_caller = srv
        .sipp("pbx_caller", "uac_plain_call.xml")
        .port(pbx_port)
        .key("user", "201")
        .key("callee", BOB.extension)
        .run();
    assert_both_ok(&pbx_caller, &bob.wait());
}
