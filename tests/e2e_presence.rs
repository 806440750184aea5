//! Presence with PJSIP (pjsua2) as the phones: alice and bob watch each other (buddies with
//! subscriptions); each sees the other online once registered; bob publishes "away" and
//! alice sees it; bob turns do-not-disturb on with *78 and alice sees him busy; bob leaves
//! and alice sees him offline.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn pjsua_python() -> Option<String> {
    let py = std::env::var("HEDGEWITCH_PJSUA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import pjsua2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    if std::env::var("HEDGEWITCH_SKIP_PEERS").is_ok_and(|v| v == "1") {
        println!("skipped: pjsua2 not importable (HEDGEWITCH_SKIP_PEERS=1)");
        return None;
    }
    panic!("pjsua2 is not importable by `{py}`: run scripts/test, or set HEDGEWITCH_SKIP_PEERS=1");
}

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
    // In that order, and offline at the end (not only before bob registered).
    let bob_as_alice_saw: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("alice SEES bob "))
        .collect();
    let at = |what: &str| bob_as_alice_saw.iter().position(|l| *l == what);
    assert!(
        at("online -") < at("online away") && at("online away") < at("online busy"),
        "{bob_as_alice_saw:?}"
    );
    // (Still in do-not-disturb, which the server keeps: offline and busy.)
    assert!(
        bob_as_alice_saw
            .last()
            .is_some_and(|l| l.starts_with("offline")),
        "{out}"
    );
    assert!(out.contains("DONE"), "{out}");
}
