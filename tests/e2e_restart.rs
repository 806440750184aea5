//! Registrations survive a crash: alice and bob register with SIPp, the server is killed with
//! SIGKILL (no clean shutdown) and started again on the same data folder and ports; both
//! registrations are still listed with their expiry still counting down, and a call to bob
//! still reaches bob's SIPp UAS at the contact he registered before the crash.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn expires_of(regs: &[Value], user: &str) -> u64 {
    regs.iter()
        .find(|r| r["user"] == user)
        .and_then(|r| r["expires_in_secs"].as_u64())
        .unwrap_or_else(|| panic!("{user} not registered: {regs:#?}"))
}

#[test]
fn registrations_survive_sigkill_and_calls_still_reach_bob() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let mut srv = Server::start(ServerOpts::default());
    let alice_port = register_udp(&srv, &ALICE);
    let bob_port = register_udp(&srv, &BOB);

    // Wait until both expiries have visibly counted down (3598 s or less, so at least a second
    // has passed): then a value after the restart can be told apart from a fresh 3600, and the
    // store, which writes behind the registrar, has had time to persist both.
    let before = srv.wait_registrations(
        "both registrations counting down",
        Duration::from_secs(10),
        |r| {
            r.len() == 2
                && r.iter()
                    .all(|x| x["expires_in_secs"].as_u64().is_some_and(|e| e <= 3598))
        },
    );
    let contact_of = |regs: &[Value], user: &str| -> String {
        regs.iter()
            .find(|r| r["user"] == user)
            .and_then(|r| r["contact"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(contact_of(&before, "alice").contains(&format!("{HOST}:{alice_port}")));
    assert!(contact_of(&before, "bob").contains(&format!("{HOST}:{bob_port}")));

    srv.restart();

    let after = srv.registrations();
    assert_eq!(
        after.len(),
        2,
        "registrations after the restart: {after:#?}"
    );
    for user in ["alice", "bob"] {
        let (b, a) = (expires_of(&before, user), expires_of(&after, user));
        assert!(
            a <= b && a > 3000,
            "{user}: expires {b}s before the restart, {a}s after (must keep counting down)"
        );
        assert_eq!(contact_of(&after, user), contact_of(&before, user));
    }
    let status = srv.status();
    assert_eq!(status["registered_users"], 2, "{status:#}");
    assert_eq!(
        status["counters"]["registrations_accepted"], 0,
        "{status:#}"
    );

    // bob did not register again: the call finds him through the restored binding.
    let uas = start_uas(&srv, &BOB, bob_port, "uas_answer.xml");
    let uac = uac_as_alice(&srv, "uac_call.xml", "bob").run();
    let uas = uas.wait();
    assert_both_ok(&uac, &uas);
    assert_eq!(srv.counter("calls_forwarded"), 1);
}
