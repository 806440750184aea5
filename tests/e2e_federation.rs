//! Calls and messages between two domains found through DNS (RFC 3263). Two servers run side
//! by side, `alpha.test` on 127.0.0.2 and `beta.test` on 127.0.0.3, each with its own users,
//! and ask a DNS server the test starts (Debian's dnsmasq, on 127.0.0.1) that publishes
//! NAPTR, SRV and A records for both domains. SIPp plays the phones: alice on alpha calls and
//! messages bob on beta by URI, over UDP, TCP and TLS and in both directions; when the first
//! SRV target of beta is down (UDP: its ICMP error; TCP: the refused connection) the call
//! goes on to the second at once; `inbound = "closed"` refuses it with
//! 403; a server whose certificate alpha cannot trust for beta.test is refused (RFC 5922).
//! Certificates come from `hedgewitch tls self-signed` (a private CA per domain).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const ALPHA_IP: &str = "127.0.0.2";
const BETA_IP: &str = "127.0.0.3";
/// Listed first in beta's TCP SRV records, with nothing listening.
const DEAD_IP: &str = "127.0.0.4";

/// dnsmasq serving the two zones from its command line.
type Dns = common::dnsmasq::Dnsmasq;

/// Ports of each domain's server: SIP (UDP and TCP), and TLS when published.
#[derive(Clone, Copy)]
struct Ports {
    alpha: u16,
    beta: u16,
    tls: Option<(u16, u16)>,
}

/// The two zones: each domain's NAPTR, SRV and A records (beta with a dead first server).
fn zones(dir: &std::path::Path, ports: Ports) -> Dns {
    let Ports {
        alpha: alpha_port,
        beta: beta_port,
        ..
    } = ports;
    let mut records = vec![
        format!("--host-record=sip.alpha.test,{ALPHA_IP}"),
        format!("--host-record=sip1.beta.test,{BETA_IP}"),
        format!("--host-record=sip0.beta.test,{DEAD_IP}"),
        // alpha: NAPTR to UDP, then TCP.
        "--naptr-record=alpha.test,10,10,S,SIP+D2U,,_sip._udp.alpha.test".to_string(),
        "--naptr-record=alpha.test,20,10,S,SIP+D2T,,_sip._tcp.alpha.test".to_string(),
        format!("--srv-host=_sip._udp.alpha.test,sip.alpha.test,{alpha_port},10,0"),
        format!("--srv-host=_sip._tcp.alpha.test,sip.alpha.test,{alpha_port},10,0"),
        // beta: the same, with a first server that is down (over UDP and TCP).
        "--naptr-record=beta.test,10,10,S,SIP+D2U,,_sip._udp.beta.test".to_string(),
        "--naptr-record=beta.test,20,10,S,SIP+D2T,,_sip._tcp.beta.test".to_string(),
        format!("--srv-host=_sip._udp.beta.test,sip0.beta.test,{beta_port},5,0"),
        format!("--srv-host=_sip._udp.beta.test,sip1.beta.test,{beta_port},10,0"),
        format!("--srv-host=_sip._tcp.beta.test,sip0.beta.test,{beta_port},5,0"),
        format!("--srv-host=_sip._tcp.beta.test,sip1.beta.test,{beta_port},10,0"),
    ];
    if let Some((alpha_tls, beta_tls)) = ports.tls {
        // TLS first for both domains (a lower NAPTR order).
        records.extend([
            "--naptr-record=alpha.test,5,10,S,SIPS+D2T,,_sips._tcp.alpha.test".to_string(),
            "--naptr-record=beta.test,5,10,S,SIPS+D2T,,_sips._tcp.beta.test".to_string(),
            format!("--srv-host=_sips._tcp.alpha.test,sip.alpha.test,{alpha_tls},10,0"),
            format!("--srv-host=_sips._tcp.beta.test,sip1.beta.test,{beta_tls},10,0"),
        ]);
    }
    Dns::start(dir, &records)
}

/// DNS and both domains' servers, asking it for each other.
fn two_domains(beta_extra: &str) -> (Dns, Server, Server) {
    let ports = Ports {
        alpha: free_port(),
        beta: free_port(),
        tls: None,
    };
    let dns = zones(&test_dir(), ports);
    let alpha = domain_server(
        "alpha.test",
        ALPHA_IP,
        ALICE,
        ports.alpha,
        None,
        dns.port,
        "",
    );
    let beta = domain_server(
        "beta.test",
        BETA_IP,
        BOB,
        ports.beta,
        None,
        dns.port,
        beta_extra,
    );
    (dns, alpha, beta)
}

/// One domain's server asking `dns_port`; with `tls`, also listening on TLS on that port.
fn domain_server(
    domain: &str,
    ip: &str,
    user: TestUser,
    port: u16,
    tls: Option<u16>,
    dns_port: u16,
    extra: &str,
) -> Server {
    Server::start(ServerOpts {
        domain: Some(domain.into()),
        ip: Some(ip.into()),
        port: Some(port),
        users: vec![user],
        extra_listen: tls
            .map(|p| vec![format!("tls:{ip}:{p}")])
            .unwrap_or_default(),
        extra_config: format!("[dns]\nservers = [\"127.0.0.1:{dns_port}\"]\n{extra}"),
        ..ServerOpts::default()
    })
}

/// `hedgewitch tls self-signed` for `domain` into `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &std::path::Path, domain: &str) -> (String, String, String) {
    std::fs::create_dir_all(dir).expect("certificate folder");
    let conf = dir.join(format!("{domain}.toml"));
    std::fs::write(
        &conf,
        format!(
            "domain = \"{domain}\"\ndata_dir = \"{}\"\n",
            dir.join(domain).display()
        ),
    )
    .expect("config");
    let out = dir.join(format!("tls-{domain}"));
    let r = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_hedgewitch"))
            .arg("-c")
            .arg(&conf)
            .args(["tls", "self-signed", "--out"])
            .arg(&out),
        None,
        &dir.join(format!("self-signed-{domain}")),
        Duration::from_secs(30),
    );
    assert!(r.success(), "tls self-signed failed: {}", r.stderr);
    let p = |f: &str| out.join(f).display().to_string();
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// Both domains over TLS, each trusting the CAs in `alpha_trusts` / `beta_trusts`, and only
/// accepting other domains over TLS; beta presents `beta_cert`.
fn two_tls_domains(
    alpha_cert: &(String, String, String),
    beta_cert: &(String, String, String),
    alpha_trusts: &str,
    beta_trusts: &str,
) -> (Dns, Server, Server) {
    let ports = Ports {
        alpha: free_port(),
        beta: free_port(),
        tls: Some((free_port(), free_port())),
    };
    let (alpha_tls, beta_tls) = ports.tls.unwrap_or_default();
    let dns = zones(&test_dir(), ports);
    let tls = |cert: &(String, String, String), trusts: &str| {
        format!(
            "[federation]\ninbound = \"tls-only\"\n[tls]\ncertificate = \"{}\"\nkey = \"{}\"\nca_files = [\"{trusts}\"]\n",
            cert.1, cert.2
        )
    };
    let alpha = domain_server(
        "alpha.test",
        ALPHA_IP,
        ALICE,
        ports.alpha,
        Some(alpha_tls),
        dns.port,
        &tls(alpha_cert, alpha_trusts),
    );
    let beta = domain_server(
        "beta.test",
        BETA_IP,
        BOB,
        ports.beta,
        Some(beta_tls),
        dns.port,
        &tls(beta_cert, beta_trusts),
    );
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

/// A call (`uac_call.xml` against `uas_answer.xml`) or a MESSAGE (`uac_message.xml` against
/// `uas_message.xml`) from `from` on `from_srv` to `to@to_domain`, whose phone listens on
/// `to_port` of `to_srv`; `uri_extra` is appended to the Request-URI (`;transport=tcp`).
struct Exchange<'a> {
    uac: &'static str,
    uas: &'static str,
    from_srv: &'a Server,
    from: &'a TestUser,
    to_srv: &'a Server,
    to: &'a TestUser,
    to_port: u16,
    tcp: bool,
    uri_extra: &'a str,
}

impl Exchange<'_> {
    fn run(self) {
        let target = format!(
            "sip:{}@{}{}",
            self.to.name, self.to_srv.domain, self.uri_extra
        );
        let name =
            |role: &str, who: &str| format!("{}_{role}_{who}", self.uac.trim_end_matches(".xml"));
        let callee = self
            .to_srv
            .sipp(&name("to", self.to.name), self.uas)
            .tcp_if(self.tcp)
            .port(self.to_port)
            // Two servers record-route: the phone sees both, on 127.0.0.2 and 127.0.0.3.
            .replace("127\\.0\\.0\\.1", "127\\.0\\.0\\.[0-9]+")
            .spawn_listening();
        let mut caller = self
            .from_srv
            .sipp(&name("from", self.from.name), self.uac)
            .tcp_if(self.tcp)
            .port(free_port())
            .key("user", self.from.name)
            .key("callee", self.to.name)
            .replace("sip:[callee]@[domain]", &target)
            .auth(
                self.from,
                &format!("{}@{}", self.to.name, self.to_srv.domain),
            );
        if self.uac == "uac_call.xml" {
            // The caller checks the Record-Route of the answer, too.
            caller = caller.replace("127\\.0\\.0\\.1", "127\\.0\\.0\\.[0-9]+");
        }
        let caller = caller.run();
        assert_both_ok(&caller, &callee.wait());
    }
}

/// `from` calls `to`; see [`Exchange`].
fn call(
    from_srv: &Server,
    from: &TestUser,
    to_srv: &Server,
    to: &TestUser,
    to_port: u16,
    tcp: bool,
    uri_extra: &str,
) {
    Exchange {
        uac: "uac_call.xml",
        uas: "uas_answer.xml",
        from_srv,
        from,
        to_srv,
        to,
        to_port,
        tcp,
        uri_extra,
    }
    .run()
}

/// `from` sends `to` a MESSAGE; see [`Exchange`].
fn message(
    from_srv: &Server,
    from: &TestUser,
    to_srv: &Server,
    to: &TestUser,
    to_port: u16,
    tcp: bool,
    uri_extra: &str,
) {
    Exchange {
        uac: "uac_message.xml",
        uas: "uas_message.xml",
        from_srv,
        from,
        to_srv,
        to,
        to_port,
        tcp,
        uri_extra,
    }
    .run()
}

/// alice's call to bob@beta.test (bob registered) ends with `status`, and nothing reaches
/// beta's phones.
fn refused_call(alpha: &Server, beta: &Server, status: &str) {
    register(beta, &BOB, false);
    alpha
        .sipp("uac_rejected_alice", "uac_rejected.xml")
        .port(free_port())
        .key("user", ALICE.name)
        .key("callee", BOB.name)
        .subst("FINAL", status)
        .replace("sip:[callee]@[domain]", "sip:bob@beta.test")
        .auth(&ALICE, "bob@beta.test")
        .run()
        .assert_ok();
    assert_eq!(beta.counter("calls_forwarded"), 0);
}

#[test]
fn domains_call_and_message_each_other_through_dns() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    let (_dns, alpha, beta) = two_domains("");
    let bob_port = register(&beta, &BOB, false);
    let alice_port = register(&alpha, &ALICE, false);

    // alice calls bob by URI: alpha finds beta through NAPTR → SRV → A (UDP first); beta's
    // first UDP server is down, and its ICMP port unreachable sends the call on at once.
    call(&alpha, &ALICE, &beta, &BOB, bob_port, false, "");
    // And a MESSAGE.
    message(&alpha, &ALICE, &beta, &BOB, bob_port, false, "");
    // bob calls alice back, the other way round.
    call(&beta, &BOB, &alpha, &ALICE, alice_port, false, "");
    message(&beta, &BOB, &alpha, &ALICE, alice_port, false, "");
    let log = std::fs::read_to_string(&alpha.log).unwrap_or_default();
    assert!(
        log.contains("unreachable (ICMP)") && log.contains("trying the domain's next one"),
        "no fail-over on ICMP seen in alpha's log"
    );
    assert!(
        alpha.counter("calls_forwarded") >= 2,
        "{:#}",
        alpha.status()
    );
    assert!(beta.counter("calls_forwarded") >= 2, "{:#}", beta.status());
}

/// Over TCP between the servers (`;transport=tcp`) in both directions, with beta's first SRV
/// target down: the call and the message go on to its second server.
#[test]
fn over_tcp_the_call_goes_on_to_the_second_server_when_the_first_is_down() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    let (_dns, alpha, beta) = two_domains("");
    let bob_port = register(&beta, &BOB, true);
    let alice_port = register(&alpha, &ALICE, true);
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
    // A MESSAGE the same way (the refusing server is tried again: no memory of failures).
    message(
        &alpha,
        &ALICE,
        &beta,
        &BOB,
        bob_port,
        true,
        ";transport=tcp",
    );
    // And back: bob calls alice over TCP between the servers.
    call(
        &beta,
        &BOB,
        &alpha,
        &ALICE,
        alice_port,
        true,
        ";transport=tcp",
    );
    message(
        &beta,
        &BOB,
        &alpha,
        &ALICE,
        alice_port,
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
    refused_call(&alpha, &beta, "403");
}

/// NAPTR puts SIPS+D2T first: the servers talk TLS to each other, each verifying that the
/// other's certificate names its SIP domain, and both accept other domains over TLS only.
/// alice calls and messages bob; bob calls alice.
#[test]
fn domains_talk_over_tls_with_verified_certificates() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    let dir = test_dir();
    let a = certificates(&dir, "alpha.test");
    let b = certificates(&dir, "beta.test");
    let (_dns, alpha, beta) = two_tls_domains(&a, &b, &b.0, &a.0);
    let bob_port = register(&beta, &BOB, false);
    let alice_port = register(&alpha, &ALICE, false);
    call(&alpha, &ALICE, &beta, &BOB, bob_port, false, "");
    message(&alpha, &ALICE, &beta, &BOB, bob_port, false, "");
    call(&beta, &BOB, &alpha, &ALICE, alice_port, false, "");
    message(&beta, &BOB, &alpha, &ALICE, alice_port, false, "");
    // tls-only let them in: they came over TLS.
    assert!(beta.counter("calls_forwarded") >= 2, "{:#}", beta.status());
    assert!(
        alpha.counter("calls_forwarded") >= 2,
        "{:#}",
        alpha.status()
    );
}

/// beta presents a certificate for beta.test from a CA alpha does not trust (a forgery, as
/// far as alpha can tell): alpha refuses the TLS connection and the call fails; nothing
/// reaches beta.
#[test]
fn a_forged_certificate_is_refused() {
    if !peers_available(&["sipp", "dnsmasq"]) {
        return;
    }
    let dir = test_dir();
    let a = certificates(&dir, "alpha.test");
    let b = certificates(&dir, "beta.test");
    let forger = certificates(&dir.join("forger"), "beta.test");
    // alpha trusts beta's real CA; beta shows the forger's certificate.
    let (_dns, alpha, beta) = two_tls_domains(&a, &forger, &b.0, &a.0);
    refused_call(&alpha, &beta, "500");
    let log = std::fs::read_to_string(&alpha.log).unwrap_or_default();
    assert!(
        log.contains("TLS refused"),
        "alpha did not refuse the certificate"
    );
}
