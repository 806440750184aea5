//! STUN (RFC 5389 Binding) against a real client: the `stun` program (Debian package
//! stun-client, a classic RFC 3489 client) asks the server's STUN port and its SIP port for
//! its mapped address, and both answer with the address it sent from.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn stun_client(srv: &Server, port: u16, src: u16) -> Ran {
    let mut cmd = Command::new("stun");
    cmd.arg(format!("{HOST}:{port}"))
        .arg("1")
        .arg("-v")
        .arg("-p")
        .arg(src.to_string());
    run_bounded(
        &mut cmd,
        None,
        &srv.dir.join(format!("stun-{port}")),
        Duration::from_secs(20),
    )
}

#[test]
fn stun_binding_on_the_stun_port_and_the_sip_port() {
    if !peers_available(&["stun"]) {
        return;
    }
    let stun_port = free_port();
    let srv = Server::start(ServerOpts {
        stun_port: Some(stun_port),
        ..Default::default()
    });
    for port in [stun_port, srv.port] {
        let src = free_port();
        let r = stun_client(&srv, port, src);
        let out = format!("{}{}", r.stdout, r.stderr);
        assert!(
            out.contains(&format!("{HOST}:{src}")),
            "the client on port {src} did not learn its address from port {port}:\n{out}"
        );
    }
    assert!(srv.counter("stun_answered") >= 2, "{:#}", srv.status());
}
