//! Attacks on a server left on the Internet, made on loopback by independent tools and by a
//! guesser of our own, each bounded in time: SIPVicious's `svcrack` is banned within five
//! guesses and never finds the password (with its own User-Agent or another), a pipelined
//! guesser from twenty addresses is stopped after a handful of guesses each, and the
//! account's registered phone keeps working throughout.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where alice's own phone registers from: not the attackers' addresses.
const PHONE_IP: &str = "127.0.0.4";

fn log(srv: &Server) -> String {
    std::fs::read_to_string(&srv.log).unwrap_or_default()
}

/// alice's phone (SIPp) registers from `PHONE_IP` with her password.
fn phone_registers(srv: &Server, n: u32) -> SippOutcome {
    srv.sipp(&format!("phone_{n}"), "register.xml")
        .local_ip(PHONE_IP)
        .port(free_port())
        .key("user", ALICE.name)
        .key("expires", "3600")
        .auth(&ALICE, DOMAIN)
        .run()
}

/// A 2,000-word list with alice's password at position `at` (from 1).
fn word_list(dir: &Path, at: usize) -> PathBuf {
    let mut words: Vec<String> = (1..=2000).map(|i| format!("guess{i:04}")).collect();
    words[at - 1] = ALICE.password.to_string();
    let path = dir.join(format!("words-{at}.txt"));
    std::fs::write(&path, words.join("\n") + "\n").expect("write the word list");
    path
}

/// SIPVicious's copy with another User-Agent than its own `friendly-scanner`, as real
/// attackers use it (peers.md): the package's modules copied and their default changed.
fn svcrack_with_other_agent(dir: &Path) -> PathBuf {
    let copy = dir.join("svcrack-patched");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).expect("make the copy's folder");
    let copied = Command::new("cp")
        .args(["-r", "/usr/share/sipvicious/sipvicious"])
        .arg(&copy)
        .status()
        .is_ok_and(|s| s.success());
    assert!(copied, "cannot copy SIPVicious");
    let helper = copy.join("sipvicious/libs/svhelper.py");
    let text = std::fs::read_to_string(&helper).expect("svhelper.py");
    assert!(
        text.contains("useragent='friendly-scanner'"),
        "SIPVicious changed"
    );
    std::fs::write(
        &helper,
        text.replace(
            "useragent='friendly-scanner'",
            "useragent='Zoiper rv2.10.20.4'",
        ),
    )
    .expect("patch svhelper.py");
    copy
}

/// Runs svcrack against alice with `words`; `patched` is a copy made by
/// `svcrack_with_other_agent`. It stops 3 s after its last answer.
fn svcrack(srv: &Server, words: &Path, patched: Option<&Path>) -> Ran {
    let target = format!("udp://{}", srv.addr());
    let local_port = free_port().to_string();
    let args = [
        "-u",
        ALICE.name,
        "-d",
        words.to_str().unwrap_or_default(),
        "-P",
        &local_port,
        "--maximumtime=3",
        &target,
    ];
    let mut cmd = match patched {
        None => {
            let mut c = Command::new("svcrack");
            c.args(args);
            c
        }
        Some(copy) => {
            let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
            let mut c = Command::new("python3");
            c.arg("-c").arg(format!(
                "import sys; sys.path.insert(0, {:?}); from sipvicious.svcrack import main; \
                 sys.argv = ['svcrack', {}]; main()",
                copy.display().to_string(),
                quoted.join(", ")
            ));
            c
        }
    };
    let name = if patched.is_some() {
        "svcrack-other-agent"
    } else {
        "svcrack"
    };
    run_bounded(
        &mut cmd,
        None,
        &srv.dir.join(name),
        Duration::from_secs(120),
    )
}

fn ban_lines(srv: &Server) -> Vec<String> {
    log(srv)
        .lines()
        .filter(|l| l.contains("source banned for failed logins"))
        .map(str::to_string)
        .collect()
}

#[test]
fn svcrack_is_banned_within_five_guesses_and_never_finds_the_password() {
    if !peers_available(&["sipp", "svcrack", "python3", "fail2ban-regex"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        log: "info".into(),
        ..ServerOpts::default()
    });
    phone_registers(&srv, 1).assert_ok();

    // Stock svcrack (it sends from 127.0.0.1), the password 1,000th of 2,000.
    let out = svcrack(&srv, &word_list(&srv.dir, 1000), None);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(!said.contains(ALICE.password), "svcrack found it:\n{said}");
    assert!(said.contains("found nothing"), "{said}");
    assert_eq!(srv.counter("auth_failures"), 5, "{:#}", srv.status());
    assert_eq!(srv.counter("bans"), 1);
    let lines = ban_lines(&srv);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for want in [
        "WARN",
        "user=\"alice\"",
        "realm=\"example.test\"",
        "source=127.0.0.1:",
        "transport=\"udp\"",
        "user_agent=\"friendly-scanner\"",
        "secs=900",
    ] {
        assert!(lines[0].contains(want), "{want} missing: {}", lines[0]);
    }
    let bans = srv.cli_json("bans");
    assert_eq!(bans[0]["source"], "127.0.0.1", "{bans}");
    // alice's phone, elsewhere, still registers.
    phone_registers(&srv, 2).assert_ok();

    // The operator lifts the ban; svcrack comes back under another name, with the password
    // 6th in its list: banned again after five.
    let lifted = srv.cli(&["bans", "lift", "127.0.0.1"]);
    assert!(lifted.success(), "{}{}", lifted.stdout, lifted.stderr);
    assert!(lifted.stdout.contains("lifted"), "{}", lifted.stdout);
    assert_eq!(srv.cli_json("bans"), serde_json::json!([]));
    let patched = svcrack_with_other_agent(&srv.dir);
    let out = svcrack(&srv, &word_list(&srv.dir, 6), Some(&patched));
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(!said.contains(ALICE.password), "svcrack found it:\n{said}");
    assert!(said.contains("found nothing"), "{said}");
    assert_eq!(srv.counter("auth_failures"), 10, "{:#}", srv.status());
    let lines = ban_lines(&srv);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("user_agent=\"Zoiper rv2.10.20.4\""),
        "{}",
        lines[1]
    );
    // A lifted ban is forgiven: this one is a first offence again.
    assert!(lines[1].contains("secs=900") && lines[1].contains("offence=1"));
    phone_registers(&srv, 3).assert_ok();
    let listed = srv.cli(&["bans"]);
    assert!(listed.stdout.contains("127.0.0.1"), "{}", listed.stdout);

    // The fail2ban filter that docs/security.md gives finds each failed login in the log.
    let filter = srv.dir.join("hedgewitch-filter.conf");
    std::fs::write(&filter, docs_fail2ban_filter()).expect("write the filter");
    let mut cmd = Command::new("fail2ban-regex");
    cmd.arg(&srv.log).arg(&filter);
    let out = run_bounded(
        &mut cmd,
        None,
        &srv.dir.join("f2b"),
        Duration::from_secs(60),
    );
    assert!(
        out.stdout.contains(", 10 matched,"),
        "fail2ban-regex:\n{}{}",
        out.stdout,
        out.stderr
    );
}

/// The fail2ban filter as docs/security.md gives it.
fn docs_fail2ban_filter() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/security.md"))
            .expect("docs/security.md");
    let start = doc
        .find("# /etc/fail2ban/filter.d/hedgewitch.conf")
        .expect("the filter in docs/security.md");
    let end = doc[start..]
        .find("```")
        .expect("the end of the filter block");
    doc[start..start + end].to_string()
}

/// One source of the pipelined guesser: a socket on its own loopback address.
struct Guesser {
    sock: UdpSocket,
    local: SocketAddr,
    cseq: u32,
    /// Guesses of this source that were answered.
    answered: u32,
}

impl Guesser {
    fn register(&mut self, server: &str, authorization: Option<&str>) {
        self.cseq += 1;
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let msg = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {l};branch=z9hG4bK-guess-{c}-{p};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=g{p}\r\nTo: <sip:alice@{DOMAIN}>\r\n\
             Call-ID: guess-{p}@{ip}\r\nCSeq: {c} REGISTER\r\nContact: <sip:alice@{l}>\r\n\
             User-Agent: pipelined-guesser\r\n{auth}Content-Length: 0\r\n\r\n",
            l = self.local,
            c = self.cseq,
            p = self.local.port(),
            ip = self.local.ip(),
        );
        let _ = self.sock.send_to(msg.as_bytes(), server);
    }

    /// The answers waiting, as text.
    fn answers(&self) -> Vec<String> {
        let mut out = vec![];
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

fn nonce_of(challenge: &str) -> Option<String> {
    let after = challenge.split("nonce=\"").nth(1)?;
    Some(after.split('"').next()?.to_string())
}

/// Twenty addresses guess alice's password as fast as the server answers, each sending a
/// burst of guesses per challenge: every source is banned after five, so the whole attack
/// gets at most a hundred answers, and alice's phone registers all along.
#[test]
fn a_pipelined_guesser_from_twenty_addresses_is_banned_and_the_phone_keeps_working() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = Server::start(ServerOpts {
        log: "info".into(),
        ..ServerOpts::default()
    });
    phone_registers(&srv, 1).assert_ok();
    let server = srv.addr();
    let mut guessers: Vec<Guesser> = (0..20)
        .map(|i| {
            let sock = UdpSocket::bind(format!("127.0.0.{}:0", 100 + i)).expect("bind");
            sock.set_nonblocking(true).expect("nonblocking");
            let local = sock.local_addr().expect("local address");
            Guesser {
                sock,
                local,
                cseq: 0,
                answered: 0,
            }
        })
        .collect();
    let mut sent = 0u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_answer = Instant::now();
    for g in &mut guessers {
        g.register(&server, None);
    }
    // Until nobody is answered any more (or the bound on the whole attack).
    while Instant::now() < deadline && last_answer.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        for g in &mut guessers {
            for answer in g.answers() {
                last_answer = Instant::now();
                if !answer.starts_with("SIP/2.0 401") {
                    continue;
                }
                // The first challenge answers a REGISTER without credentials; every later
                // answer is to a guess. Each brings a fresh nonce: a burst of guesses on it.
                if !answer.contains("CSeq: 1 REGISTER") {
                    g.answered += 1;
                }
                let Some(nonce) = nonce_of(&answer) else {
                    continue;
                };
                for nc in 1..=10u32 {
                    let creds = sip::digest::authorization(
                        sip::digest::Algorithm::Md5,
                        ALICE.name,
                        DOMAIN,
                        &format!("guess-{sent}"),
                        "REGISTER",
                        &format!("sip:{DOMAIN}"),
                        &nonce,
                        "cn",
                        nc,
                    );
                    g.register(&server, Some(&creds));
                    sent += 1;
                }
            }
        }
    }
    let failures = srv.counter("auth_failures");
    assert!(
        failures <= 100,
        "{failures} guesses were checked ({sent} sent); {:#}",
        srv.status()
    );
    let bans = srv.cli_json("bans");
    assert_eq!(
        bans.as_array().map(Vec::len),
        Some(20),
        "every source is banned: {bans}"
    );
    for g in &guessers {
        assert!(
            g.answered <= 5,
            "{} had {} guesses answered",
            g.local,
            g.answered
        );
    }
    // After 30 failures on the account, guesses from new addresses were refused unchecked;
    // alice's phone still registers from where it did.
    assert!(
        log(&srv).contains("account under a guessing attack"),
        "the account is shielded after 30 failures"
    );
    phone_registers(&srv, 2).assert_ok();
}

/// An INVITE from an address that never registered and never ACKs (it may be forged: the
/// answers would hit someone else) draws the 100 Trying, the answer and two re-sends, then
/// nothing: by 10 s the RFC's Timer G would have re-sent four times.
#[test]
fn an_invite_never_acked_from_an_unknown_source_draws_at_most_four_packets() {
    let srv = Server::start(ServerOpts::default());
    let sock = UdpSocket::bind("127.0.0.77:0").expect("bind");
    let local = sock.local_addr().expect("local address");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let invite = format!(
        "INVITE sip:nobody@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-cannon;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:mallory@evil.test>;tag=m\r\nTo: <sip:nobody@{DOMAIN}>\r\n\
         Call-ID: cannon@evil.test\r\nCSeq: 1 INVITE\r\nContact: <sip:mallory@{local}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(invite.as_bytes(), srv.addr()).expect("send");
    let mut got = vec![];
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            got.push(text.lines().next().unwrap_or_default().to_string());
        }
    }
    assert!(got.len() <= 4, "{got:#?}");
    assert!(
        got.iter().any(|l| l.contains(" 404 ")),
        "answered: {got:#?}"
    );
}

/// The first line of the final answer `sock` gets to `request` (provisional ones skipped).
fn final_answer(sock: &UdpSocket, server: &str, request: &str) -> String {
    sock.send_to(request.as_bytes(), server).expect("send");
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            // Requests to us (the presence agent's NOTIFYs, and their retransmissions) are
            // not the answer.
            if line.starts_with("SIP/2.0 ") && !line.starts_with("SIP/2.0 1") {
                return line;
            }
        }
    }
    panic!("no final answer to {request}");
}

/// SIPVicious's `svwar` learns no user or extension over REGISTER, OPTIONS or INVITE, and a
/// caller from another domain gets the same answer for users who exist (offline here) as for
/// names nobody has, whatever the method.
#[test]
fn svwar_learns_no_user_and_outsiders_cannot_tell_who_exists() {
    if !peers_available(&["svwar"]) {
        return;
    }
    let srv = Server::start(ServerOpts::default());
    let list = srv.dir.join("extensions.txt");
    std::fs::write(
        &list,
        "alice\nbob\ncarol\nadmin\nnobody\n100\n101\n102\n103\n999\n",
    )
    .expect("write the list");
    let target = format!("udp://{}", srv.addr());
    for method in ["REGISTER", "OPTIONS", "INVITE"] {
        let port = free_port().to_string();
        let mut cmd = Command::new("svwar");
        cmd.args(["--force", "-m", method, "-d"])
            .arg(&list)
            .args(["-P", &port, &target]);
        let out = run_bounded(
            &mut cmd,
            None,
            &srv.dir.join(format!("svwar-{method}")),
            Duration::from_secs(90),
        );
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(said.contains("found nothing"), "svwar -m {method}:\n{said}");
        assert!(!said.contains("| alice"), "svwar -m {method}:\n{said}");
    }
    let sock = UdpSocket::bind("127.0.0.88:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let local = sock.local_addr().expect("local address");
    let server = srv.addr();
    for method in ["INVITE", "MESSAGE", "OPTIONS", "SUBSCRIBE"] {
        let answers: Vec<String> = ["alice", "nobody"]
            .iter()
            .map(|who| {
                let call_id = format!("enum-{method}-{who}");
                let event = if method == "SUBSCRIBE" {
                    "Event: presence\r\nExpires: 60\r\n"
                } else {
                    ""
                };
                let request = format!(
                    "{method} sip:{who}@{DOMAIN} SIP/2.0\r\n\
                     Via: SIP/2.0/UDP {local};branch=z9hG4bK{call_id};rport\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:mallory@evil.test>;tag=m\r\n\
                     To: <sip:{who}@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
                     Contact: <sip:mallory@{local}>\r\n{event}Content-Length: 0\r\n\r\n"
                );
                final_answer(&sock, &server, &request)
            })
            .collect();
        assert_eq!(answers[0], answers[1], "{method}");
        // SUBSCRIBE to presence: the presence agent's same 200 (and neutral NOTIFY) for all.
        let expected = if method == "SUBSCRIBE" {
            " 200 "
        } else {
            " 404 "
        };
        assert!(answers[0].contains(expected), "{method}: {}", answers[0]);
    }
}

/// An offer of `n` audio streams from `ip`, as an outside caller's INVITE to bob carries it.
fn outside_invite_with_streams(
    local: SocketAddr,
    call_id: &str,
    n: usize,
    transport: &str,
) -> String {
    let ip = local.ip();
    let mut sdp = format!("v=0\r\no=eve 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n");
    for i in 0..n {
        sdp.push_str(&format!(
            "m=audio {} RTP/AVP 0\r\n",
            10_000 + 2 * (i % 20_000)
        ));
    }
    format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:eve@evil.test>;tag=e\r\nTo: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:eve@{local}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// From another domain: an INVITE with 1,250 `m=` lines is refused (488 over TCP; over UDP it
/// is too big to be read at all), the ringing calls of one outside address hold at most their
/// share of relay streams (50: six calls of eight streams ring, the seventh does not), and a
/// relayed call between local users still gets through.
#[test]
fn outside_callers_cannot_use_up_the_relay() {
    if !peers_available(&["sipp"]) {
        return;
    }
    // 200 streams' worth of ports: a third (66) is more than one address's share (50).
    let lo = (u32::from(free_ports(801)) + 1) & !1;
    let srv = Server::start(ServerOpts {
        extra_config: format!(
            "[relay]\nmode = \"always\"\nports = \"{lo}-{}\"\n",
            lo + 799
        ),
        ..ServerOpts::default()
    });
    let server: SocketAddr = srv.addr().parse().expect("server address");
    // bob's phone: rings for every call, never answers.
    let bob_port = free_port();
    register_on(&srv, &BOB, bob_port, 3600, false).assert_ok();
    let _ringing = uas(&srv, &BOB, bob_port, "uas_ring_cancel.xml")
        .calls(10)
        .spawn_listening();

    // 1,250 streams over TCP: 488.
    let mut tcp = std::net::TcpStream::connect(server).expect("connect");
    let local = tcp.local_addr().expect("local address");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    use std::io::{Read, Write};
    tcp.write_all(outside_invite_with_streams(local, "huge-m", 1250, "TCP").as_bytes())
        .expect("send");
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && !got.contains(" 488 ") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(
        got.contains("SIP/2.0 488"),
        "answer to 1,250 streams: {got}"
    );

    // Ringing calls from one outside address: six of eight streams ring, the seventh does not.
    let sock = UdpSocket::bind("127.0.0.90:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let local = sock.local_addr().expect("local address");
    let mut ringing = 0;
    let mut refused = 0;
    for i in 0..7 {
        let call_id = format!("budget-{i}");
        sock.send_to(
            outside_invite_with_streams(local, &call_id, 8, "UDP").as_bytes(),
            server,
        )
        .expect("send");
        let end = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !text.contains(&format!("Call-ID: {call_id}")) {
                continue;
            }
            if text.starts_with("SIP/2.0 180") {
                ringing += 1;
                break;
            }
            if text.starts_with("SIP/2.0 4") || text.starts_with("SIP/2.0 5") {
                refused += 1;
                break;
            }
        }
    }
    assert_eq!((ringing, refused), (6, 1), "{:#}", srv.status());
    assert!(srv.counter("relay_full") >= 1, "{:#}", srv.status());

    // A relayed call between local users still gets through.
    let (callee, caller) = held_call(&srv, 1000);
    let answered = poll_until(Duration::from_secs(15), || {
        calls(&srv).iter().any(|c| {
            c["from"].as_str().is_some_and(|f| f.contains("alice"))
                && c["state"] == "answered"
                && c["media"] == "relayed"
        })
    });
    assert!(answered, "alice's relayed call: {:#?}", calls(&srv));
    assert_both_ok(&caller.wait(), &callee.wait());
}
