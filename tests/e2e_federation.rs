//! Calls and messages between two domains found through DNS (RFC 3263). Two servers run side
//! by side, `alpha.test` on 127.0.0.2 and `beta.test` on 127.0.0.3, each with its own users,
//! and ask a DNS server the test starts (Debian's dnsmasq, on 127.0.0.1) that publishes
//! NAPTR, SRV and A records for both domains. SIPp plays the phones: alice on alpha calls and
//! messages bob on beta by URI, over UDP and TCP and in both directions; when the first SRV
//! target of beta is down the call still completes; `inbound = "closed"` refuses it with 403.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ALPHA_IP: &str = "127.0.0.2";
const BETA_IP: &str = "127.0.0.3";
/// Listed first in beta's TCP SRV records, with nothing listening.
const DEAD_IP: &str = "127.0.0.4";

/// dnsmasq serving the two zones from its command line; killed on drop.
struct Dns {
    child: Child,
    port: u16,
}

impl Dns {
    fn start(dir: &std::path::Path, alpha_port: u16, beta_port: u16) -> Dns {
        let port = free_port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--conf-file=/dev/null",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!("--host-record=sip.alpha.test,{ALPHA_IP}"))
        .arg(format!("--host-record=sip1.beta.test,{BETA_IP}"))
        .arg(format!("--host-record=sip0.beta.test,{DEAD_IP}"))
        // alpha: NAPTR to UDP, then TCP.
        .arg("--naptr-record=alpha.test,10,10,S,SIP+D2U,,_sip._udp.alpha.test")
        .arg("--naptr-record=alpha.test,20,10,S,SIP+D2T,,_sip._tcp.alpha.test")
        .arg(format!(
            "--srv-host=_sip._udp.alpha.test,sip.alpha.test,{alpha_port},10,0"
        ))
        .arg(format!(
            "--srv-host=_sip._tcp.alpha.test,sip.alpha.test,{alpha_port},10,0"
        ))
        // beta: the same, and over TCP a first server that is down.
        .arg("--naptr-record=beta.test,10,10,S,SIP+D2U,,_sip._udp.beta.test")
        .arg("--naptr-record=beta.test,20,10,S,SIP+D2T,,_sip._tcp.beta.test")
        .arg(format!(
            "--srv-host=_sip._udp.beta.test,sip1.beta.test,{beta_port},10,0"
        ))
        .arg(format!(
            "--srv-host=_sip._tcp.beta.test,sip0.beta.test,{beta_port},5,0"
        ))
        .arg(format!(
            "--srv-host=_sip._tcp.beta.test,sip1.beta.test,{beta_port},10,0"
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("dnsmasq.out")).expect("dnsmasq log"))
        .stderr(std::fs::File::create(dir.join("dnsmasq.err")).expect("dnsmasq log"));
        let child = cmd.spawn().expect("dnsmasq starts");
        assert!(
            poll_until(Duration::from_secs(10), || udp_port_bound(port)),
            "dnsmasq did not listen on {port}"
        );
        Dns { child, port }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DNS and both domains' servers, asking it for each other.
fn two_domains(beta_extra: &str) -> (Dns, Server, Server) {
    let (alpha_port, beta_port) = (free_port(), free_port());
    let dns = Dns::start(&test_dir(), alpha_port, beta_port);
    let dns_port = dns.port;
    let conf = |extra: &str| format!("[dns]\nservers = [\"127.0.0.1:{dns_port}\"]\n{extra}");
    let alpha = Server::start(ServerOpts {
        domain: Some("alpha.test".into()),
        ip: Some(ALPHA_IP.into()),
        port: Some(alpha_port),
        users: vec![ALICE],
        extra_config: conf(""),
        ..ServerOpts::default()
    });
    let beta = Server::start(ServerOpts {
        domain: Some("beta.test".into()),
        ip: Some(BETA_IP.into()),
        port: Some(beta_port),
        users: vec![BOB],
        extra_config: conf(beta_extra),
        ..ServerOpts::default()
    });
    (dns, alpha, beta)
}

/// Registers `user` on `srv` from a fresh port (UDP or TCP) and returns the port.
fn register(srv: &Server, user: &TestUser, tcp: bool) -> u16 {
    let port = free_port();
    srv.sipp(&format!("register_{}", user.name), "register.xml")
        .tcp_if(tcp)
        .port(port)
        .key("user", user.name)
        .key("expires", "3600")
        .auth(user, &srv.domain)
        .run()
        .assert_ok();
    port
}

/// `from` (on `from_srv`) calls `to@to_domain` whose phone listens on `to_port` of
/// `to_srv`; `uri_extra` is appended to the Request-URI (`;transport=tcp`).
#[allow(clippy::too_many_arguments)]
fn call(
    from_srv: &Server,
    from: &TestUser,
    to_srv: &Server,
    to: &TestUser,
    to_port: u16,
    tcp: bool,
    uri_extra: &str,
) {
    let target = format!("sip:{}@{}{uri_extra}", to.name, to_srv.domain);
    let callee = to_srv
        .sipp(&format!("uas_{}", to.name), "uas_answer.xml")
        .tcp_if(tcp)
        .port(to_port)
        // Two servers record-route: the phone sees both, on 127.0.0.2 and 127.0.0.3.
        .replace("127\\.0\\.0\\.1", "127\\.0\\.0\\.[0-9]+")
        .spawn_listening();
    let caller = from_srv
        .sipp(&format!("uac_{}", from.name), "uac_call.xml")
        .tcp_if(tcp)
        .port(free_port())
        .key("user", from.name)
        .key("callee", to.name)
        .replace("sip:[callee]@[domain]", &target)
        .replace("127\\.0\\.0\\.1", "127\\.0\\.0\\.[0-9]+")
        .auth(from, &format!("{}@{}", to.name, to_srv.domain))
        .run();
    assert_both_ok(&caller, &callee.wait());
}

#[test]
fn domains_call_and_message_each_other_through_dns() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    let (_dns, alpha, beta) = two_domains("");
    let bob_port = register(&beta, &BOB, false);
    let alice_port = register(&alpha, &ALICE, false);

    // alice calls bob by URI: alpha finds beta through NAPTR → SRV → A (UDP first).
    call(&alpha, &ALICE, &beta, &BOB, bob_port, false, "");
    // And a MESSAGE.
    let inbox = beta
        .sipp("uas_message_bob", "uas_message.xml")
        .port(bob_port)
        .replace("127\\.0\\.0\\.1", "127\\.0\\.0\\.[0-9]+")
        .spawn_listening();
    let sent = alpha
        .sipp("uac_message_alice", "uac_message.xml")
        .port(free_port())
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .replace("sip:[callee]@[domain]", "sip:bob@beta.test")
        .auth(&ALICE, "bob@beta.test")
        .run();
    assert_both_ok(&sent, &inbox.wait());
    // bob calls alice back, the other way round.
    call(&beta, &BOB, &alpha, &ALICE, alice_port, false, "");
    assert!(
        alpha.counter("calls_forwarded") >= 2,
        "{:#}",
        alpha.status()
    );
    assert!(beta.counter("calls_forwarded") >= 2, "{:#}", beta.status());
}

#[test]
fn over_tcp_the_call_goes_on_to_the_second_server_when_the_first_is_down() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    let (_dns, alpha, beta) = two_domains("");
    let bob_port = register(&beta, &BOB, true);
    // `;transport=tcp`: SRV _sip._tcp.beta.test, whose first target (127.0.0.4) refuses.
    call(
        &alpha,
        &ALICE,
        &beta,
        &BOB,
        bob_port,
        true,
        ";transport=tcp",
    );
    let log = std::fs::read_to_string(&alpha.log).unwrap_or_default();
    assert!(
        log.contains("trying the domain's next one") && log.contains(DEAD_IP),
        "no fail-over seen in alpha's log"
    );
}

#[test]
fn a_domain_that_refuses_inbound_calls_answers_403() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    let (_dns, alpha, beta) = two_domains("[federation]\ninbound = \"closed\"\n");
    register(&beta, &BOB, false);
    let caller = alpha
        .sipp("uac_rejected_alice", "uac_rejected.xml")
        .port(free_port())
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .subst("FINAL", "403")
        .replace("sip:[callee]@[domain]", "sip:bob@beta.test")
        .auth(&ALICE, "bob@beta.test")
        .run();
    caller.assert_ok();
    assert_eq!(beta.counter("calls_forwarded"), 0);
}
