//! PJSIP, a third independent SIP stack (pjsua2 from PyPI), against a server that offers only
//! SHA-256 digest (RFC 7616/8760): alice and bob register, alice calls bob through the proxy
//! (407 answered with SHA-256 too), bob answers, alice hangs up; then alice sends bob an
//! instant message, which bob receives.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn pjsip_registers_calls_and_messages_with_sha256_digest() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let srv = Server::start(ServerOpts {
        algorithms: Some(vec!["SHA-256"]),
        ..ServerOpts::default()
    });
    let local = free_port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pjsua_call.py");
    let ran = run_bounded(
        Command::new(&python).arg(&script).args([
            srv.port.to_string(),
            local.to_string(),
            DOMAIN.to_string(),
            ALICE.password.to_string(),
            BOB.password.to_string(),
        ]),
        None,
        &srv.dir.join("pjsua"),
        Duration::from_secs(60),
    );
    let out = ran.stdout.clone();
    let has = |line: &str| out.lines().any(|l| l.trim() == line);
    assert!(ran.success(), "pjsua script failed:\n{out}\n{}", ran.stderr);
    assert!(
        has("alice REG 200") && has("bob REG 200"),
        "registration failed:\n{out}"
    );
    assert!(
        has("alice CALL CONFIRMED 200"),
        "caller never got the call up:\n{out}"
    );
    assert!(
        has("bob CALL CONFIRMED 200"),
        "callee never got the call up:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("alice CALL DISCONNECTED"))
            && out.lines().any(|l| l.starts_with("bob CALL DISCONNECTED")),
        "hang-up did not reach both:\n{out}"
    );
    assert!(
        has("bob IM hello bob, from pjsua"),
        "the message did not arrive:\n{out}"
    );
    assert!(
        has("alice IMSTATUS 200"),
        "the sender did not get 200:\n{out}"
    );
    assert!(has("DONE"));
    // Both registrations and the call went through the server, authenticated with SHA-256
    // (the only algorithm offered).
    assert!(srv.counter("registrations_accepted") >= 2);
    assert_eq!(srv.counter("calls_forwarded"), 1);
    assert_eq!(srv.counter("messages_forwarded"), 1);
    assert_eq!(srv.counter("auth_failures"), 0);
}
