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
//! - `provider add`, `did add`, `provider test` from the command line.

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
         [numbers]\ncountry_code = \"49\"\n\
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
    let caller = srv
        .sipp("outside_caller", "uac_plain_call.xml")
        .to(&kam_addr, PROVIDER_DOMAIN)
        .port(free_port())
        .key("user", "+4930111")
        .key("callee", DID)
        .run();
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
    let caller = srv
        .sipp("outside_caller_again", "uac_plain_call.xml")
        .to(&kam_addr, PROVIDER_DOMAIN)
        .port(free_port())
        .key("user", "+4930111")
        .key("callee", DID)
        .run();
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
        extra_config: "[numbers]\ncountry_code = \"49\"\n".into(),
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
    let caller = srv
        .sipp("outside_caller", "uac_plain_call.xml")
        .to(&kam_addr, PROVIDER_DOMAIN)
        .port(free_port())
        .key("user", "+4930111")
        .key("callee", DID)
        .run();
    assert_both_ok(&caller, &bob.wait());

    // Removed: unregistered and gone from `providers`.
    let r = srv.cli(&["provider", "remove", "acme"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(poll_until(Duration::from_secs(5), || provider(
        &srv, "acme"
    )
    .is_null()));
}
