//! The core driven in virtual time: messages in as bytes, actions out, no sockets.

use super::*;
use sip::digest::{authorization, Algorithm};
use sip::grammar::name_addr_list;

const SERVER: &str = "127.0.0.1:5060";
const ALICE: &str = "127.0.0.1:5062";
const BOB: &str = "127.0.0.1:5064";
const BOB2: &str = "127.0.0.1:5066";
/// The web listener (SIP over WebSocket).
const WEB: &str = "127.0.0.1:8080";

struct T {
    core: Core,
    now: Instant,
    seq: u32,
    /// Actions other than sends, kept by `sent()`.
    stash: Vec<Action>,
    /// The media relay's part of the edge, when a test gives the core one: it answers the
    /// relay's actions as soon as they come (see `calls_tests`).
    relay: Option<calls_tests::FakeRelay>,
    /// Actions taken while serving the relay, for `sent()`.
    held: Vec<Action>,
    /// A stream or WebSocket flow that requests from its remote address arrive on (others
    /// arrive over UDP).
    arrive_on: Option<Flow>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp(remote: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        local: addr(SERVER),
        remote: addr(remote),
        conn: None,
    }
}

fn users() -> Vec<User> {
    vec![
        User::new("alice", Some("101"), "example.test", "secret"),
        User::new("bob", Some("102"), "example.test", "secret"),
        User::new("carol", Some("103"), "example.test", "secret"),
    ]
}

fn config() -> CoreConfig {
    CoreConfig {
        domain: "example.test".into(),
        domains: vec!["other.test".into()],
        listeners: vec![
            Listener {
                transport: Transport::Udp,
                addr: addr(SERVER),
                host: addr(SERVER).ip(),
            },
            Listener {
                transport: Transport::Tcp,
                addr: addr(SERVER),
                host: addr(SERVER).ip(),
            },
            Listener {
                transport: Transport::Ws,
                addr: addr(WEB),
                host: addr(WEB).ip(),
            },
        ],
        registrar: super::RegistrarSettings {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 86400,
            max_contacts: 10,
        },
        auth: super::AuthSettings {
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            nonce_lifetime: 300,
        },
        timers: Timers::default(),
        transactions: crate::TransactionLimits {
            max: 1000,
            ..Default::default()
        },
        keepalive: super::KeepAliveSettings {
            interval: Some(Duration::from_secs(25)),
            failures: 3,
        },
        relay: super::RelaySettings {
            mode: super::RelayMode::Auto,
            timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(3600),
            trust_outside_addresses: false,
            turn: crate::TurnSettings {
                enabled: true,
                secret: b"turn-secret".to_vec(),
                urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                ..crate::TurnSettings::default()
            },
        },
        inbound: crate::InboundPolicy::Open,
        guard: crate::GuardSettings::default(),
        route_key: [7; 32],
    }
}

/// A request from `user` at `from` (a UA address), with the usual headers.
struct Req<'a> {
    method: &'a str,
    uri: &'a str,
    from_user: &'a str,
    to: &'a str,
    src: &'a str,
    call_id: &'a str,
    cseq: u32,
    branch: String,
    extra: Vec<String>,
    body: &'a str,
}

impl Req<'_> {
    fn text(&self) -> String {
        let mut s = format!(
            "{} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{}@example.test>;tag=ft{}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.method,
            self.uri,
            self.src,
            self.branch,
            self.from_user,
            self.from_user,
            self.to,
            self.call_id,
            self.cseq,
            self.method,
        );
        // A Contact among the extra headers replaces the usual one.
        if !self.extra.iter().any(|e| e.starts_with("Contact:")) {
            s.push_str(&format!(
                "Contact: <sip:{}@{}>\r\n",
                self.from_user, self.src
            ));
        }
        for e in &self.extra {
            s.push_str(e);
            s.push_str("\r\n");
        }
        if !self.body.is_empty() {
            s.push_str("Content-Type: application/sdp\r\n");
        }
        s.push_str(&format!(
            "Content-Length: {}\r\n\r\n{}",
            self.body.len(),
            self.body
        ));
        s
    }
}

impl T {
    fn new() -> T {
        let now = Instant::now();
        T {
            core: Core::new(config(), users(), vec![], [9; 32], now, 1_800_000_000),
            now,
            seq: 0,
            stash: vec![],
            relay: None,
            held: vec![],
            arrive_on: None,
        }
    }

    /// A request with CSeq 1, a fresh branch, no extra headers and no body.
    fn req<'a>(
        &mut self,
        method: &'a str,
        uri: &'a str,
        from_user: &'a str,
        to: &'a str,
        src: &'a str,
        call_id: &'a str,
    ) -> Req<'a> {
        Req {
            method,
            uri,
            from_user,
            to,
            src,
            call_id,
            cseq: 1,
            branch: self.branch(),
            extra: vec![],
            body: "",
        }
    }

    fn branch(&mut self) -> String {
        self.seq += 1;
        format!("z9hG4bKt{}", self.seq)
    }

    fn recv(&mut self, from: &str, text: &str) {
        let text = self.signed(text);
        let flow = self
            .arrive_on
            .filter(|f| f.remote == addr(from))
            .unwrap_or_else(|| udp(from));
        self.core
            .handle_message(self.now, flow, Bytes::copy_from_slice(text.as_bytes()));
        self.serve_relay();
    }

    fn recv_flow(&mut self, flow: Flow, text: &str) {
        let text = self.signed(text);
        self.core
            .handle_message(self.now, flow, Bytes::copy_from_slice(text.as_bytes()));
        self.serve_relay();
    }

    /// In-dialog requests written by the tests name our Record-Route as `<sip:SERVER;lr>`:
    /// they get the signature we put in it (as a phone copies our Record-Route).
    fn signed(&self, text: &str) -> String {
        let Some(call_id) = text
            .lines()
            .find_map(|l| l.strip_prefix("Call-ID: "))
            .map(str::trim)
        else {
            return text.to_string();
        };
        let plain = format!("Route: <sip:{SERVER};lr>");
        let signed = format!(
            "Route: <sip:{SERVER};lr;hw={}>",
            self.core.route_token(call_id)
        );
        text.replace(&plain, &signed)
    }

    /// Everything sent since the last call, parsed.
    fn sent(&mut self) -> Vec<(Flow, Message)> {
        let mut out = vec![];
        self.serve_relay();
        let mut actions = std::mem::take(&mut self.held);
        actions.extend(self.core.take_actions());
        for a in actions {
            match a {
                // STUN answers are not SIP: tests look at them through the counters.
                Action::Send { data, .. } if sip::stun::is_stun(&data) => {}
                Action::Send { flow, data, .. } => {
                    out.push((flow, Message::parse(data, false).unwrap()))
                }
                other => self.stash.push(other),
            }
        }
        out
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.core.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.core.handle_timeout(self.now);
            self.serve_relay();
        }
        self.now = end;
    }

    /// Sends `req`, answers the challenge with the user's password, returns what the second
    /// attempt produced.
    fn with_auth(&mut self, req: &mut Req<'_>, alg: Algorithm) -> Vec<(Flow, Message)> {
        let src = req.src.to_string();
        self.with_auth_from(req, alg, &src)
    }

    /// `with_auth` for a request that arrives from `src` rather than from the address its
    /// Via names (a phone behind NAT).
    fn with_auth_from(
        &mut self,
        req: &mut Req<'_>,
        alg: Algorithm,
        src: &str,
    ) -> Vec<(Flow, Message)> {
        self.recv(src, &req.text());
        let out = self.sent();
        let challenge = out
            .iter()
            .find(|(_, m)| matches!(m.status(), Some(401 | 407)))
            .unwrap_or_else(|| {
                panic!(
                    "no challenge: {:?}",
                    out.iter().map(|m| m.1.status()).collect::<Vec<_>>()
                )
            });
        let (hname, aname) = if challenge.1.status() == Some(401) {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let ch = challenge
            .1
            .headers
            .iter()
            .map(|h| (challenge.1.text(h.name_span), challenge.1.text(h.value)))
            .filter(|(n, _)| n.eq_ignore_ascii_case(hname))
            .map(|(_, v)| v)
            .find(|v| v.contains(alg.as_str()))
            .unwrap()
            .to_string();
        let nonce = ch
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        if req.method == "INVITE" {
            // ACK the 407 (same branch), as a UAC must.
            let ack = format!(
                "ACK {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{}@example.test>;tag=ft{}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
                req.uri, req.src, req.branch, req.from_user, req.from_user, req.to, req.call_id, req.cseq
            );
            self.recv(src, &ack);
            assert!(self.sent().is_empty(), "ACK for 407 must be absorbed");
        }
        let auth = authorization(
            alg,
            req.from_user,
            "example.test",
            "secret",
            req.method,
            req.uri,
            nonce,
            "cn",
            1,
        );
        req.extra.push(format!("{aname}: {auth}"));
        req.cseq += 1;
        req.branch = self.branch();
        self.recv(src, &req.text());
        self.sent()
    }

    fn register(&mut self, user: &str, src: &str, extra: &[&str]) -> Message {
        let branch = self.branch();
        let call_id = format!("reg-{user}-{src}");
        let to = format!("<sip:{user}@example.test>");
        let mut r = Req {
            method: "REGISTER",
            uri: "sip:example.test",
            from_user: user,
            to: &to,
            src,
            call_id: &call_id,
            cseq: 1,
            branch,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            body: "",
        };
        let out = self.with_auth(&mut r, Algorithm::Md5);
        assert_eq!(out.len(), 1);
        out.into_iter().next().unwrap().1
    }

    fn invite(
        &mut self,
        from: &str,
        src: &str,
        to_uri: &str,
        call_id: &str,
    ) -> Vec<(Flow, Message)> {
        let branch = self.branch();
        let to = format!("<{to_uri}>");
        let mut r = Req {
            method: "INVITE",
            uri: to_uri,
            from_user: from,
            to: &to,
            src,
            call_id,
            cseq: 1,
            branch,
            extra: vec![],
            body: "v=0\r\n",
        };
        self.with_auth(&mut r, Algorithm::Md5)
    }
}

/// The nonce of the first challenge of this kind in a 401/407.
fn nonce(m: &Message, challenge: HeaderName) -> String {
    let v = m.value(challenge).unwrap();
    v.split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

fn header_values<'m>(m: &'m Message, name: &str) -> Vec<&'m str> {
    m.headers
        .iter()
        .filter(|h| m.text(h.name_span).eq_ignore_ascii_case(name))
        .map(|h| m.text(h.value))
        .collect()
}

/// A UAS response to a forwarded request, as a phone writes it.
fn answer(req: &Message, code: u16, reason: &str, tag: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for h in &req.headers {
        match h.name {
            HeaderName::Via
            | HeaderName::From
            | HeaderName::CallId
            | HeaderName::CSeq
            | HeaderName::RecordRoute => {
                s.push_str(req.text(h.line));
                s.push_str("\r\n");
            }
            HeaderName::To => {
                s.push_str(req.text(h.line));
                if code > 100 {
                    s.push_str(&format!(";tag={tag}"));
                }
                s.push_str("\r\n");
            }
            _ => {}
        }
    }
    s.push_str("Contact: <sip:bob@127.0.0.1:5064>\r\nContent-Length: 0\r\n\r\n");
    s
}

// ---------------------------------------------------------------- registrar

#[test]
fn register_is_challenged_then_accepted_and_persisted() {
    let mut t = T::new();
    let r = t.req(
        "REGISTER",
        "sip:example.test",
        "alice",
        "<sip:alice@example.test>",
        ALICE,
        "r1",
    );
    t.recv(ALICE, &r.text());
    let out = t.sent();
    assert_eq!(out.len(), 1);
    let (flow, resp) = &out[0];
    assert_eq!(flow.remote, addr(ALICE));
    assert_eq!(resp.status(), Some(401));
    let ch = header_values(resp, "WWW-Authenticate");
    assert_eq!(ch.len(), 2);
    assert!(ch[0].contains("algorithm=MD5") && ch[1].contains("algorithm=SHA-256"));
    assert!(ch
        .iter()
        .all(|c| c.contains("qop=\"auth\"") && c.contains("realm=\"example.test\"")));

    let ok = t.register("alice", ALICE, &[]);
    assert_eq!(ok.status(), Some(200));
    let contacts: Vec<_> = ok
        .values(HeaderName::Contact)
        .flat_map(name_addr_list)
        .map(|c| c.unwrap().raw.to_string())
        .collect();
    assert_eq!(contacts, [format!("<sip:alice@{ALICE}>;expires=3600")]);
    assert!(ok.value(HeaderName::Date).unwrap().ends_with("GMT"));
    let regs = t.core.registrations(t.now);
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].user, "alice");
    assert_eq!(regs[0].extension.as_deref(), Some("101"));
}

#[test]
fn sha256_digest_is_accepted() {
    let mut t = T::new();
    let mut r = t.req(
        "REGISTER",
        "sip:example.test",
        "bob",
        "<sip:bob@example.test>",
        BOB,
        "r-sha",
    );
    let out = t.with_auth(&mut r, Algorithm::Sha256);
    assert_eq!(out[0].1.status(), Some(200));
}

#[test]
fn writes_go_through_to_the_store_and_survive_a_restart() {
    let mut t = T::new();
    let mut stored = vec![];
    // Re-run a registration and keep the actions this time.
    let mut r = Req {
        extra: vec!["Expires: 600".into()],
        ..t.req(
            "REGISTER",
            "sip:example.test",
            "carol",
            "<sip:carol@example.test>",
            "127.0.0.1:5070",
            "persist-carol",
        )
    };
    t.recv("127.0.0.1:5070", &r.text());
    let challenge = t.core.take_actions();
    let Action::Send { data, .. } = &challenge[0] else {
        panic!()
    };
    let m = Message::parse(data.clone(), false).unwrap();
    let nonce = nonce(&m, HeaderName::WwwAuthenticate);
    r.extra.push(format!(
        "Authorization: {}",
        authorization(
            Algorithm::Md5,
            "carol",
            "example.test",
            "secret",
            "REGISTER",
            "sip:example.test",
            &nonce,
            "x",
            1
        )
    ));
    r.cseq = 2;
    r.branch = t.branch();
    t.recv("127.0.0.1:5070", &r.text());
    for a in t.core.take_actions() {
        if let Action::PutBinding(b) = a {
            stored.push(b);
        }
    }
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].aor, "carol");
    assert_eq!(stored[0].expires_at, 1_800_000_000 + 600);
    assert_eq!(stored[0].source, "127.0.0.1:5070");

    // A new core (the restart) 100 s later sees carol with 500 s left.
    let later = t.now + Duration::from_secs(100);
    let core = Core::new(config(), users(), stored, [1; 32], later, 1_800_000_100);
    let regs = core.registrations(later);
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].expires_in_secs, 500);
}

#[test]
fn expiry_rules() {
    let mut t = T::new();
    // Too brief: 423 with Min-Expires.
    let mut r = Req {
        extra: vec!["Expires: 30".into()],
        ..t.req(
            "REGISTER",
            "sip:example.test",
            "alice",
            "<sip:alice@example.test>",
            ALICE,
            "exp",
        )
    };
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert_eq!(out[0].1.status(), Some(423));
    assert_eq!(out[0].1.value(HeaderName::MinExpires), Some("60"));
    // Too long: shortened to max_expires; the contact parameter beats the header.
    let ok = t.register("alice", ALICE, &["Expires: 999999"]);
    assert!(ok
        .value(HeaderName::Contact)
        .unwrap()
        .ends_with("expires=86400"));
    // Expiry in virtual time removes the binding and tells the store.
    let _ = t.core.take_actions();
    t.advance(Duration::from_secs(86401));
    assert!(t.core.registrations(t.now).is_empty());
}

#[test]
fn expiry_removes_bindings_in_virtual_time() {
    let mut t = T::new();
    t.register("alice", ALICE, &["Expires: 120"]);
    let _ = t.core.take_actions();
    t.advance(Duration::from_secs(119));
    assert_eq!(t.core.registrations(t.now).len(), 1);
    t.advance(Duration::from_secs(2));
    assert!(t.core.registrations(t.now).is_empty());
    let deleted: Vec<_> = t
        .core
        .take_actions()
        .into_iter()
        .filter(|a| matches!(a, Action::DeleteBinding { .. }))
        .collect();
    assert_eq!(deleted.len(), 1);
}

#[test]
fn several_contacts_q_values_and_removal() {
    let mut t = T::new();
    // q from the Contact parameter is kept, shown, and orders the lookup.
    t.register(
        "bob",
        "127.0.0.1:5071",
        &[
            "Contact: <sip:bob@127.0.0.1:5070>;q=0.2",
            "Contact: <sip:bob@127.0.0.1:5071>",
        ],
    );
    let regs = t.core.registrations(t.now);
    let low: Vec<_> = regs
        .iter()
        .filter(|r| r.contact.ends_with(":5070"))
        .collect();
    assert!(low.iter().all(|r| (r.q - 0.2).abs() < 1e-6), "{regs:?}");
    t.register("bob", BOB, &[]);
    let ok = t.register("bob", BOB2, &[]);
    assert!(ok.values(HeaderName::Contact).count() >= 3);
    let order: Vec<f32> = t
        .core
        .location
        .lookup("bob", t.now)
        .iter()
        .map(|b| b.q)
        .collect();
    assert_eq!(order.last(), Some(&0.2), "highest q first: {order:?}");
    // Contact with q and expires=0 for one of them.
    let ok = t.register(
        "bob",
        "127.0.0.1:5068",
        &[
            "Contact: <sip:bob@127.0.0.1:5064>;expires=0",
            "Contact: <sip:bob@127.0.0.1:5068>",
        ],
    );
    let left: Vec<_> = ok
        .values(HeaderName::Contact)
        .flat_map(name_addr_list)
        .map(|c| c.unwrap().uri.raw.to_string())
        .collect();
    assert!(
        !left.contains(&"sip:bob@127.0.0.1:5064".to_string()),
        "{left:?}"
    );
    assert!(left.contains(&"sip:bob@127.0.0.1:5068".to_string()));
    // Wildcard removal needs Expires: 0 and no other contact.
    let mut r = Req {
        extra: vec!["Expires: 0".into()],
        ..t.req(
            "REGISTER",
            "sip:example.test",
            "bob",
            "<sip:bob@example.test>",
            BOB,
            "star",
        )
    };
    // Replace the default Contact by `*`.
    let text = r
        .text()
        .replace(&format!("Contact: <sip:bob@{BOB}>"), "Contact: *");
    t.recv(BOB, &text);
    let ch = t.sent();
    let nonce = nonce(&ch[0].1, HeaderName::WwwAuthenticate);
    r.extra.push(format!(
        "Authorization: {}",
        authorization(
            Algorithm::Md5,
            "bob",
            "example.test",
            "secret",
            "REGISTER",
            "sip:example.test",
            &nonce,
            "x",
            1
        )
    ));
    r.cseq = 2;
    r.branch = t.branch();
    let text = r
        .text()
        .replace(&format!("Contact: <sip:bob@{BOB}>"), "Contact: *");
    t.recv(BOB, &text);
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(200));
    assert!(t.core.location.lookup("bob", t.now).is_empty());
}

#[test]
fn nobody_registers_for_someone_else() {
    let mut t = T::new();
    let mut r = t.req(
        "REGISTER",
        "sip:example.test",
        "alice",
        "<sip:bob@example.test>",
        ALICE,
        "steal",
    );
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert_eq!(out[0].1.status(), Some(403));
    assert!(t.core.registrations(t.now).is_empty());
}

#[test]
fn wrong_password_and_replayed_nonce_count_are_refused() {
    let mut t = T::new();
    let mut r = t.req(
        "REGISTER",
        "sip:example.test",
        "alice",
        "<sip:alice@example.test>",
        ALICE,
        "replay",
    );
    t.recv(ALICE, &r.text());
    let ch = t.sent();
    let nonce = nonce(&ch[0].1, HeaderName::WwwAuthenticate);
    let bad = authorization(
        Algorithm::Md5,
        "alice",
        "example.test",
        "guess",
        "REGISTER",
        "sip:example.test",
        &nonce,
        "x",
        1,
    );
    r.extra = vec![format!("Authorization: {bad}")];
    r.cseq = 2;
    r.branch = t.branch();
    t.recv(ALICE, &r.text());
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(401));
    assert!(!out[0]
        .1
        .value(HeaderName::WwwAuthenticate)
        .unwrap()
        .contains("stale=true"));
    assert_eq!(t.core.counters.registrar.auth_failures, 1);

    // The wrong answer spent its nonce: even the right password needs a new challenge.
    let answer = |nonce: &str, nc| {
        authorization(
            Algorithm::Md5,
            "alice",
            "example.test",
            "secret",
            "REGISTER",
            "sip:example.test",
            nonce,
            "x",
            nc,
        )
    };
    r.extra = vec![format!("Authorization: {}", answer(&nonce, 1))];
    r.cseq = 3;
    r.branch = t.branch();
    t.recv(ALICE, &r.text());
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(401));
    let stale = out[0].1.value(HeaderName::WwwAuthenticate).unwrap();
    assert!(stale.contains("stale=true"), "{stale}");
    let nonce = self::nonce(&out[0].1, HeaderName::WwwAuthenticate);
    let good = answer(&nonce, 1);
    r.extra = vec![format!("Authorization: {good}")];
    r.cseq = 3;
    r.branch = t.branch();
    t.recv(ALICE, &r.text());
    assert_eq!(t.sent()[0].1.status(), Some(200));
    // The very same credentials again (nc=1 replayed) on a new transaction: stale.
    r.cseq = 4;
    r.branch = t.branch();
    t.recv(ALICE, &r.text());
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(401));
    assert!(out[0]
        .1
        .value(HeaderName::WwwAuthenticate)
        .unwrap()
        .contains("stale=true"));
    // Expired nonce: stale as well.
    let good2 = authorization(
        Algorithm::Md5,
        "alice",
        "example.test",
        "secret",
        "REGISTER",
        "sip:example.test",
        &nonce,
        "x",
        2,
    );
    t.advance(Duration::from_secs(400));
    r.extra = vec![format!("Authorization: {good2}")];
    r.cseq = 5;
    r.branch = t.branch();
    t.recv(ALICE, &r.text());
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(401));
    assert!(out[0]
        .1
        .value(HeaderName::WwwAuthenticate)
        .unwrap()
        .contains("stale=true"));
}

// ---------------------------------------------------------------- proxy

/// alice and bob registered (bob twice), alice calls bob: both phones ring, the second
/// answers, the first is cancelled.
#[test]
fn parallel_fork_first_2xx_wins_and_others_are_cancelled() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    t.register("bob", BOB2, &[]);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "call-1");
    let trying: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.status() == Some(100))
        .collect();
    assert_eq!(trying.len(), 1);
    assert_eq!(trying[0].0.remote, addr(ALICE));
    let forwarded: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.is_request())
        .cloned()
        .collect();
    assert_eq!(forwarded.len(), 2);
    let mut to_bob1 = None;
    let mut to_bob2 = None;
    for (flow, m) in &forwarded {
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.max_forwards(), Some(69));
        assert_eq!(m.vias().count(), 2);
        let top = m.top_via().unwrap();
        assert_eq!(top.sent_by, SERVER);
        assert!(top.branch().unwrap().starts_with("z9hG4bK"));
        // The caller's Via completed per RFC 3581.
        let second = m.vias().nth(1).unwrap().unwrap();
        assert!(
            second.param("rport") == Some(Some("5062")),
            "{}",
            second.raw
        );
        let rr = m.value(HeaderName::RecordRoute).unwrap_or("");
        assert!(
            rr.starts_with("<sip:127.0.0.1:5060;lr;hw=") && rr.ends_with('>'),
            "{rr}"
        );
        // Our Record-Route comes after the Via block, not inside it.
        let names: Vec<_> = m.headers.iter().take(3).map(|h| h.name).collect();
        assert_eq!(
            names,
            [HeaderName::Via, HeaderName::Via, HeaderName::RecordRoute]
        );
        // §22.3: the caller's credentials for our realm are consumed here.
        assert!(
            m.value(HeaderName::ProxyAuthorization).is_none(),
            "credentials must not reach the callee"
        );
        assert_eq!(m.body(), b"v=0\r\n");
        if flow.remote == addr(BOB) {
            assert_eq!(m.uri_str(), format!("sip:bob@{BOB}"));
            to_bob1 = Some(m.clone());
        } else {
            assert_eq!(flow.remote, addr(BOB2));
            to_bob2 = Some(m.clone());
        }
    }
    let (b1, b2) = (to_bob1.unwrap(), to_bob2.unwrap());
    // Both ring: 180s go upstream with our Via removed.
    t.recv(BOB, &answer(&b1, 180, "Ringing", "b1"));
    t.recv(BOB2, &answer(&b2, 180, "Ringing", "b2"));
    let out = t.sent();
    assert_eq!(out.len(), 2);
    for (flow, m) in &out {
        assert_eq!(flow.remote, addr(ALICE));
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.vias().count(), 1);
    }
    // bob2 answers: 200 upstream, CANCEL to bob1.
    t.recv(BOB2, &answer(&b2, 200, "OK", "b2"));
    let out = t.sent();
    let ok: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.status() == Some(200))
        .collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].0.remote, addr(ALICE));
    assert_eq!(ok[0].1.to().unwrap().tag(), Some("b2"));
    let cancel: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.method() == Some(Method::Cancel))
        .collect();
    assert_eq!(cancel.len(), 1);
    assert_eq!(cancel[0].0.remote, addr(BOB));
    assert_eq!(
        cancel[0].1.top_via().unwrap().branch(),
        b1.top_via().unwrap().branch()
    );
    assert_eq!(cancel[0].1.uri_str(), b1.uri_str());
    // bob1: 200 to CANCEL, 487 to INVITE: the proxy ACKs the 487 and sends nothing upstream.
    t.recv(BOB, &answer(&cancel[0].1, 200, "OK", "b1"));
    t.recv(BOB, &answer(&b1, 487, "Request Terminated", "b1"));
    let out = t.sent();
    assert_eq!(
        out.len(),
        1,
        "{:?}",
        out.iter()
            .map(|m| (m.1.status(), m.1.method()))
            .collect::<Vec<_>>()
    );
    assert_eq!(out[0].1.method(), Some(Method::Ack));
    assert_eq!(out[0].0.remote, addr(BOB));
    assert_eq!(out[0].1.to().unwrap().tag(), Some("b1"));
    // A retransmitted 200 from bob2 still goes upstream (RFC 6026).
    t.recv(BOB2, &answer(&b2, 200, "OK", "b2"));
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.status(), Some(200));
}

#[test]
fn in_dialog_requests_follow_the_record_route() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let out = t.invite("alice", ALICE, "sip:102@example.test", "call-2");
    let (_, inv) = out.iter().find(|(_, m)| m.is_request()).unwrap().clone();
    assert_eq!(
        inv.uri_str(),
        format!("sip:bob@{BOB}"),
        "extension 102 reaches bob"
    );
    t.recv(BOB, &answer(&inv, 200, "OK", "b"));
    let _ = t.sent();
    // ACK for the 2xx: new branch, Route to us, R-URI bob's contact: forwarded statelessly.
    let ack = format!(
        "ACK sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKack1;rport\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:102@example.test>;tag=b\r\n\
Call-ID: call-2\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE, &ack);
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.remote, addr(BOB));
    assert_eq!(out[0].1.method(), Some(Method::Ack));
    assert!(
        out[0].1.value(HeaderName::Route).is_none(),
        "our Route entry is removed"
    );
    // BYE from bob back to alice: Route to us, R-URI alice's contact; no auth needed.
    let bye = format!(
        "BYE sip:alice@{ALICE} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:102@example.test>;tag=b\r\nTo: <sip:alice@example.test>;tag=ftalice\r\n\
Call-ID: call-2\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(BOB, &bye);
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.remote, addr(ALICE));
    assert_eq!(out[0].1.method(), Some(Method::Bye));
    assert!(
        out[0].1.value(HeaderName::RecordRoute).is_none(),
        "no Record-Route in-dialog"
    );
    let b = out[0].1.clone();
    t.recv(ALICE, &answer(&b, 200, "OK", "x"));
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.remote, addr(BOB));
    assert_eq!(out[0].1.status(), Some(200));
    // A request with a foreign Route and no entry of ours is not relayed.
    let relay = bye
        .replace("<sip:127.0.0.1:5060;lr>", "<sip:198.18.0.9;lr>")
        .replace("z9hG4bKbye1", "z9hG4bKbye2");
    t.recv(BOB, &relay);
    assert_eq!(t.sent()[0].1.status(), Some(403));
}

#[test]
fn cancel_before_answer_gives_487() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "call-3");
    let (_, inv) = out.iter().find(|(_, m)| m.is_request()).unwrap().clone();
    t.recv(BOB, &answer(&inv, 180, "Ringing", "b"));
    let _ = t.sent();
    // alice's INVITE was the second attempt (cseq 2, branch t?): rebuild its CANCEL.
    let orig_via = inv.vias().nth(1).unwrap().unwrap();
    let branch = orig_via.branch().unwrap();
    let cancel = format!(
        "CANCEL sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>\r\nCall-ID: call-3\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE, &cancel);
    let out = t.sent();
    let ok = out.iter().find(|(_, m)| m.status() == Some(200)).unwrap();
    assert_eq!(ok.1.cseq().unwrap().1, "CANCEL");
    let c = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Cancel))
        .unwrap();
    assert_eq!(c.0.remote, addr(BOB));
    t.recv(BOB, &answer(&c.1, 200, "OK", "b"));
    assert_eq!(
        t.core.counters.forwarded.notifications_delivered, 0,
        "the 200 to our own CANCEL is no delivered notification"
    );
    t.recv(BOB, &answer(&inv, 487, "Request Terminated", "b"));
    let out = t.sent();
    let up = out.iter().find(|(f, _)| f.remote == addr(ALICE)).unwrap();
    assert_eq!(up.1.status(), Some(487));
    // Unknown CANCEL: 481.
    t.recv(ALICE, &cancel.replace(branch, "z9hG4bKnone"));
    assert_eq!(t.sent()[0].1.status(), Some(481));
}

#[test]
fn best_response_busy_beats_timeout_and_503_becomes_500() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    t.register("bob", BOB2, &[]);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "call-4");
    let reqs: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.is_request())
        .cloned()
        .collect();
    let b1 = reqs
        .iter()
        .find(|(f, _)| f.remote == addr(BOB))
        .unwrap()
        .1
        .clone();
    // bob1 answers 486 at once; bob2 never answers: Timer B makes it a 408.
    t.recv(BOB, &answer(&b1, 486, "Busy Here", "b1"));
    let out = t.sent();
    assert!(
        out.iter().all(|(f, _)| f.remote != addr(ALICE)),
        "nothing upstream before all branches end"
    );
    t.advance(Duration::from_secs(40));
    let up: Vec<_> = t
        .sent()
        .into_iter()
        .filter(|(f, _)| f.remote == addr(ALICE))
        .collect();
    // Sent once, then retransmitted by Timer G since alice does not ACK here.
    assert!(!up.is_empty());
    assert!(up.iter().all(|(_, m)| m.status() == Some(486)));

    let out = t.invite("alice", ALICE, "sip:bob@example.test", "call-5");
    let reqs: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.is_request())
        .cloned()
        .collect();
    for (f, m) in &reqs {
        t.recv(
            &f.remote.to_string(),
            &answer(m, 503, "Service Unavailable", "x"),
        );
    }
    let up: Vec<_> = t
        .sent()
        .into_iter()
        .filter(|(f, m)| f.remote == addr(ALICE) && m.status().is_some())
        .collect();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1.status(), Some(500));
}

#[test]
fn unanswered_branch_retransmits_then_times_out_408() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "call-6");
    assert_eq!(out.iter().filter(|(_, m)| m.is_request()).count(), 1);
    let mut times = vec![];
    let start = t.now;
    for _ in 0..70 {
        t.advance(Duration::from_millis(500));
        for (f, m) in t.sent() {
            if f.remote == addr(BOB) && m.method() == Some(Method::Invite) {
                times.push((t.now - start).as_millis());
            }
            if f.remote == addr(ALICE) && !times.contains(&0) {
                // (then retransmitted by Timer G until alice ACKs, which she does not here)
                assert_eq!(m.status(), Some(408));
                times.push(0);
            }
        }
    }
    // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; then Timer B gives 408 at 32 s.
    assert_eq!(times, [500, 1500, 3500, 7500, 15500, 31500, 0]);
}

#[test]
fn error_answers() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    // Unknown user: 404. Known but not registered: 480.
    let out = t.invite("alice", ALICE, "sip:nobody@example.test", "e1");
    assert_eq!(
        out.iter()
            .find(|(_, m)| m.status() >= Some(200))
            .unwrap()
            .1
            .status(),
        Some(404)
    );
    let out = t.invite("alice", ALICE, "sip:carol@example.test", "e2");
    assert_eq!(
        out.iter()
            .find(|(_, m)| m.status() >= Some(200))
            .unwrap()
            .1
            .status(),
        Some(480)
    );
    // Calling as somebody else: 403.
    let mut r = Req {
        body: "hi",
        ..t.req(
            "MESSAGE",
            "sip:alice@example.test",
            "alice",
            "<sip:alice@example.test>",
            ALICE,
            "e3",
        )
    };
    t.recv(ALICE, &r.text());
    let ch = t.sent();
    let nonce = nonce(&ch[0].1, HeaderName::ProxyAuthenticate);
    // bob's credentials with alice's From.
    r.extra.push(format!(
        "Proxy-Authorization: {}",
        authorization(
            Algorithm::Md5,
            "bob",
            "example.test",
            "secret",
            "MESSAGE",
            "sip:alice@example.test",
            &nonce,
            "x",
            1
        )
    ));
    r.cseq = 2;
    r.branch = t.branch();
    t.recv(ALICE, &r.text());
    assert_eq!(t.sent()[0].1.status(), Some(403));
    // OPTIONS to the server itself: 200 with Allow.
    let opt = format!(
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKo1\r\nMax-Forwards: 70\r\n\
From: <sip:x@elsewhere.test>;tag=1\r\nTo: <sip:127.0.0.1:5060>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE, &opt);
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(200));
    assert!(out[0]
        .1
        .value(HeaderName::Allow)
        .unwrap()
        .contains("INVITE"));
    assert!(out[0].1.value(HeaderName::Accept).is_some());
    assert!(out[0].1.value(HeaderName::Supported).is_some());
    // Max-Forwards 0 to a user: 483.
    t.recv(
        ALICE,
        &opt.replace("Max-Forwards: 70", "Max-Forwards: 0")
            .replace("sip:127.0.0.1:5060 ", "sip:alice@example.test ")
            .replace("z9hG4bKo1", "z9hG4bKo2"),
    );
    assert_eq!(t.sent()[0].1.status(), Some(483));
    // Unsupported Proxy-Require: 420 listing it.
    t.recv(
        ALICE,
        &opt.replace(
            "Max-Forwards: 70",
            "Max-Forwards: 70\r\nProxy-Require: foo, bar",
        )
        .replace("z9hG4bKo1", "z9hG4bKo3"),
    );
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(420));
    assert_eq!(out[0].1.value(HeaderName::Unsupported), Some("foo, bar"));
    // Not our domain, no route of ours: no open relay.
    t.recv(
        ALICE,
        &opt.replace("sip:127.0.0.1:5060 ", "sip:someone@elsewhere.test ")
            .replace("z9hG4bKo1", "z9hG4bKo4"),
    );
    assert_eq!(t.sent()[0].1.status(), Some(403));
}

#[test]
fn retransmitted_invite_is_absorbed() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let mut r = t.req(
        "INVITE",
        "sip:bob@example.test",
        "alice",
        "<sip:bob@example.test>",
        ALICE,
        "rt",
    );
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert_eq!(out.iter().filter(|(_, m)| m.is_request()).count(), 1);
    t.recv(ALICE, &r.text());
    let again = t.sent();
    assert_eq!(again.len(), 1, "only the 100 is repeated");
    assert_eq!(again[0].1.status(), Some(100));
}

#[test]
fn a_loop_through_ourselves_is_detected() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    // bob's only contact is the server itself.
    t.register("bob", BOB, &["Contact: <sip:bob@127.0.0.1:5060>"]);
    let b = t.core.take_actions();
    drop(b);
    // Remove the normal contact so only the looping one remains.
    t.core
        .location
        .bindings_mut("bob")
        .retain(|b| b.contact == "sip:bob@127.0.0.1:5060");
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "loop");
    let mut pending: Vec<Message> = out
        .into_iter()
        .filter(|(_, m)| m.is_request())
        .map(|x| x.1)
        .collect();
    let mut final_status = None;
    for _ in 0..10 {
        let Some(m) = pending.pop() else { break };
        t.recv(SERVER, &String::from_utf8_lossy(&m.bytes()));
        for (f, m) in t.sent() {
            if m.is_request() {
                pending.push(m);
            } else if f.remote == addr(SERVER) && m.status() >= Some(200) {
                final_status = m.status();
            }
        }
    }
    assert_eq!(final_status, Some(482));
}

#[test]
fn big_requests_move_to_tcp() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let body = "a=x-filler:".to_string() + &"y".repeat(1500) + "\r\n";
    let mut r = Req {
        body: &body,
        ..t.req(
            "MESSAGE",
            "sip:bob@example.test",
            "alice",
            "<sip:bob@example.test>",
            ALICE,
            "big",
        )
    };
    let out = t.with_auth(&mut r, Algorithm::Md5);
    let fwd = out.iter().find(|(_, m)| m.is_request()).unwrap();
    assert_eq!(fwd.0.transport, Transport::Tcp);
    assert_eq!(fwd.0.remote, addr(BOB));
    assert!(fwd.1.top_via().unwrap().transport == "TCP");
    assert_eq!(fwd.1.body().len(), body.len());
}

#[test]
fn message_reaches_every_device_first_2xx_wins() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    t.register("bob", BOB2, &[]);
    let mut r = Req {
        body: "hello bob",
        ..t.req(
            "MESSAGE",
            "sip:bob@example.test",
            "alice",
            "<sip:bob@example.test>",
            ALICE,
            "msg",
        )
    };
    let out = t.with_auth(&mut r, Algorithm::Md5);
    let reqs: Vec<_> = out.into_iter().filter(|(_, m)| m.is_request()).collect();
    assert_eq!(reqs.len(), 2);
    assert!(reqs
        .iter()
        .all(|(_, m)| m.body() == b"hello bob" && m.value(HeaderName::RecordRoute).is_none()));
    t.recv(BOB2, &answer(&reqs[1].1, 200, "OK", "x"));
    let up = t.sent();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1.status(), Some(200));
    t.recv(BOB, &answer(&reqs[0].1, 200, "OK", "y"));
    let up = t.sent();
    assert!(up.is_empty(), "a non-INVITE gets one final response only");
}

#[test]
fn tcp_requests_are_answered_on_their_connection() {
    let mut t = T::new();
    let flow = Flow {
        transport: Transport::Tcp,
        local: addr(SERVER),
        remote: addr("127.0.0.1:40000"),
        conn: Some(77),
    };
    let opt = "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKtcp\r\nMax-Forwards: 70\r\n\
From: <sip:x@elsewhere.test>;tag=1\r\nTo: <sip:example.test>\r\nCall-ID: tcp1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    t.recv_flow(flow, opt);
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, flow);
    // Reliable transport: the transaction ends without waiting for Timer J.
    assert!(t.core.tx.no_servers());
}

// ---------------------------------------------------------------- torture corpus through the core

fn torture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../sip/tests/data/sip-torture/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// What the server answers to each RFC 4475 message sent to it over UDP (the corpus uses the
/// domain example.com; the core here serves example.com so its users resolve).
#[test]
fn rfc4475_answers_from_the_server() {
    let mut cfg = config();
    cfg.domain = "example.com".into();
    let table = String::from_utf8(torture("../torture-answers.txt")).unwrap();
    let mut cases: Vec<(String, Vec<u16>)> = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next().unwrap().to_string();
            (name, f.map(|c| c.parse().unwrap()).collect())
        })
        .collect();
    assert!(cases.len() >= 20);
    // With example.com served, the answers that depend on the domain too.
    for (name, code) in [
        // No such user here: the proxy answers 404 (it would forward otherwise).
        ("invut.sip", 404),
        ("sdp01.sip", 404),
        // REGISTER without credentials: challenged.
        ("regaut01.sip", 401),
        ("escnull.sip", 401),
        ("dblreq.sip", 401),
        ("unksm2.sip", 401),
    ] {
        cases.push((name.to_string(), vec![code]));
    }
    for (name, want) in &cases {
        let mut core = Core::new(
            cfg.clone(),
            users(),
            vec![],
            [3; 32],
            Instant::now(),
            1_800_000_000,
        );
        core.handle_message(Instant::now(), udp(ALICE), Bytes::from(torture(name)));
        let finals: Vec<u16> = core
            .take_actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { data, .. } => {
                    Message::parse(data, false).ok().and_then(|m| m.status())
                }
                _ => None,
            })
            .filter(|s| *s >= 200)
            .collect();
        assert_eq!(finals.len(), 1, "{name}: {finals:?}");
        assert!(
            want.contains(&finals[0]),
            "{name}: got {}, want {want:?}",
            finals[0]
        );
    }
    // Responses that are bad or not ours are dropped silently (scalarlg, bigcode, bcast).
    for name in [
        "scalarlg.sip",
        "bigcode.sip",
        "bcast.sip",
        "noreason.sip",
        "unreason.sip",
    ] {
        let mut core = Core::new(
            cfg.clone(),
            users(),
            vec![],
            [3; 32],
            Instant::now(),
            1_800_000_000,
        );
        core.handle_message(Instant::now(), udp(ALICE), Bytes::from(torture(name)));
        assert!(core.take_actions().is_empty(), "{name} must be dropped");
    }
    // dblreq: the INVITE hidden after Content-Length 0 is never processed.
    let mut core = Core::new(
        cfg.clone(),
        users(),
        vec![],
        [3; 32],
        Instant::now(),
        1_800_000_000,
    );
    core.handle_message(
        Instant::now(),
        udp(ALICE),
        Bytes::from(torture("dblreq.sip")),
    );
    assert_eq!(core.counters.traffic.requests_in, 1);
}

#[test]
fn a_ringing_branch_that_never_answers_is_cancelled_then_given_up() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "timer-c");
    let (_, inv) = out.iter().find(|(_, m)| m.is_request()).unwrap().clone();
    t.recv(BOB, &answer(&inv, 180, "Ringing", "b"));
    let _ = t.sent();
    // Timer C (3 minutes) cancels the ringing branch.
    t.advance(Duration::from_secs(181));
    let out = t.sent();
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Cancel)));
    assert!(out.iter().all(|(f, _)| f.remote != addr(ALICE)));
    // bob ignores even the CANCEL: after 64*T1 the caller gets 408 and nothing is left over.
    t.advance(Duration::from_secs(33));
    let up: Vec<_> = t
        .sent()
        .into_iter()
        .filter(|(f, _)| f.remote == addr(ALICE))
        .collect();
    assert_eq!(up.first().and_then(|u| u.1.status()), Some(408));
    assert_eq!(t.core.proxy.context_count(), 0);
    t.advance(Duration::from_secs(64));
    assert!(
        t.core.tx.no_servers(),
        "server transaction ends after Timer H"
    );
    assert!(t.core.tx.no_clients());
}

#[test]
fn an_initial_request_cannot_use_our_route_to_relay() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    let opt = format!(
        "MESSAGE sip:someone@198.18.0.9 SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKrel1\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:x@elsewhere.test>;tag=1\r\nTo: <sip:someone@198.18.0.9>\r\n\
Call-ID: rel\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE, &opt);
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.status(), Some(403));
}

#[test]
fn a_flood_is_refused_once_the_transaction_table_is_full() {
    let mut t = T::new();
    t.core.cfg.transactions.max = 5;
    let src = "192.0.2.10:5060";
    let request = |method: &str, to: &str, i: usize| {
        format!(
            "{method} sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKflood{method}{i}\r\nMax-Forwards: 70\r\n\
From: <sip:x@elsewhere.test>;tag=1\r\nTo: <sip:{to}>\r\nCall-ID: flood{method}{i}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // What the core answers itself keeps nothing: a flood of OPTIONS to the server leaves no
    // transaction behind, however long it lasts.
    for i in 0..8 {
        t.recv(src, &request("OPTIONS", "example.test", i));
        assert_eq!(t.sent()[0].1.status(), Some(200));
    }
    assert!(t.core.tx.no_servers());
    // Requests passed on keep their transaction until answered: past the cap, 503.
    t.register("bob", BOB, &[]);
    let mut refused = 0;
    for i in 0..8 {
        t.recv(src, &request("MESSAGE", "bob@example.test", i));
        for (f, m) in t.sent() {
            if f.remote == addr(src) {
                assert_eq!(m.status(), Some(503));
                refused += 1;
            }
        }
    }
    assert_eq!(
        refused, 4,
        "the REGISTER's and four MESSAGEs' transactions fill the table"
    );
    assert_eq!(t.core.tx.server_count(), 5);
    assert_eq!(t.core.counters.traffic.overloaded, 4);
    // Transactions end (Timer F, J) and room is made again.
    t.advance(Duration::from_secs(70));
    assert!(t.core.tx.no_servers());
}

#[test]
fn a_response_with_only_our_via_is_dropped() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "novia");
    let (_, inv) = out.iter().find(|(_, m)| m.is_request()).unwrap().clone();
    let full = answer(&inv, 180, "Ringing", "b");
    // Keep only the first Via line (ours).
    let mut seen = false;
    let only_ours: String = full
        .split_inclusive("\r\n")
        .filter(|l| {
            if l.starts_with("Via:") {
                let keep = !seen;
                seen = true;
                keep
            } else {
                true
            }
        })
        .collect();
    t.recv(BOB, &only_ours);
    assert!(t.sent().is_empty(), "must not be forwarded without a Via");
    t.recv(BOB, &full);
    assert_eq!(t.sent().len(), 1);
}

#[test]
fn credentials_for_other_realms_pass_through() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let msg =
        "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.5:5060;branch=z9hG4bKpa1\r\nMax-Forwards: 70\r\n\
From: <sip:eve@elsewhere.test>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: pa\r\nCSeq: 1 MESSAGE\r\n\
Proxy-Authorization: Digest username=\"eve\", realm=\"elsewhere.test\", nonce=\"n\", uri=\"sip:bob@example.test\", response=\"00\"\r\n\
Content-Length: 0\r\n\r\n";
    t.recv("198.18.0.5:5060", msg);
    let out = t.sent();
    let fwd = out.iter().find(|(_, m)| m.is_request()).unwrap();
    assert!(fwd
        .1
        .value(HeaderName::ProxyAuthorization)
        .unwrap()
        .contains("elsewhere.test"));
}

#[test]
fn a_big_request_falls_back_to_udp_when_tcp_is_refused() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let body = "a=x-filler:".to_string() + &"y".repeat(1500) + "\r\n";
    let mut r = Req {
        body: &body,
        ..t.req(
            "INVITE",
            "sip:bob@example.test",
            "alice",
            "<sip:bob@example.test>",
            ALICE,
            "fallback",
        )
    };
    let out = t.with_auth(&mut r, Algorithm::Md5);
    let tcp = out.iter().find(|(_, m)| m.is_request()).unwrap();
    assert_eq!(tcp.0.transport, Transport::Tcp);
    let branch = tcp.1.top_via().unwrap().branch().unwrap().to_string();
    // The edge reports that bob refused the connection.
    let key = t
        .core
        .tx
        .find_client(&format!("c|{branch}|INVITE"))
        .unwrap();
    t.core.handle_send_failure(t.now, key);
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.transport, Transport::Udp);
    assert_eq!(out[0].0.remote, addr(BOB));
    assert_eq!(out[0].1.top_via().unwrap().transport, "UDP");
    assert_eq!(out[0].1.top_via().unwrap().branch(), Some(branch.as_str()));
    // ...and it behaves as a UDP transaction from then on (Timer A retransmits it).
    t.advance(Duration::from_millis(600));
    assert_eq!(t.sent().len(), 1);
    // bob answers over UDP: the call proceeds.
    let inv = out[0].1.clone();
    t.recv(BOB, &answer(&inv, 180, "Ringing", "b"));
    assert_eq!(t.sent()[0].1.status(), Some(180));
}

#[test]
fn challenges_keep_no_state_and_answered_transactions_keep_only_the_answer() {
    let mut t = T::new();
    let r = t.req(
        "REGISTER",
        "sip:example.test",
        "alice",
        "<sip:alice@example.test>",
        ALICE,
        "light",
    );
    t.recv(ALICE, &r.text());
    assert_eq!(t.sent()[0].1.status(), Some(401));
    assert!(
        t.core.tx.no_servers(),
        "a challenge leaves no transaction behind"
    );
    // The same request again (a retransmission) just gets another challenge.
    t.recv(ALICE, &r.text());
    assert_eq!(t.sent()[0].1.status(), Some(401));
    let ok = t.register("alice", ALICE, &[]);
    assert_eq!(ok.status(), Some(200));
    // The 200's transaction stays (Timer J) to answer retransmissions, without the request.
    assert_eq!(t.core.tx.server_count(), 1);
    assert!(t.core.tx.server_values().all(|st| st.request.is_none()));
}

#[path = "calls_tests.rs"]
mod calls_tests;
#[path = "federation_tests.rs"]
mod federation_tests;
#[path = "forking_tests.rs"]
mod forking_tests;
#[path = "guard_tests.rs"]
mod guard_tests;
#[path = "mailbox_tests.rs"]
mod mailbox_tests;
#[path = "outbound_tests.rs"]
mod outbound_tests;
#[path = "presence_tests.rs"]
mod presence_tests;
#[path = "trunk_tests.rs"]
mod trunk_tests;
#[path = "turn_tests.rs"]
mod turn_tests;
#[path = "websocket_tests.rs"]
mod websocket_tests;

#[test]
fn an_unreachable_phone_gives_500_upstream_not_503() {
    // RFC 3261 §16.9: a transport error counts as a 503 from that hop; §16.7 step 6: a
    // proxy passes 500 upstream instead, so that nobody takes this server for overloaded.
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let mut r = t.req(
        "OPTIONS",
        "sip:bob@example.test",
        "alice",
        "<sip:bob@example.test>",
        ALICE,
        "unreach",
    );
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert!(out
        .iter()
        .any(|(f, m)| m.is_request() && f.remote == addr(BOB)));
    // bob's address answers with ICMP port unreachable.
    t.core.handle_unreachable(t.now, addr(BOB));
    let out = t.sent();
    let to_alice: Vec<u16> = out
        .iter()
        .filter(|(f, m)| f.remote == addr(ALICE) && !m.is_request())
        .filter_map(|(_, m)| m.status())
        .collect();
    assert_eq!(to_alice, [500], "{out:?}");
}

/// The log lines written while `f` runs.
fn logged(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(vec![]));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text
}

#[test]
fn a_password_hashed_for_another_realm_is_said_to_be_one() {
    let mut t = T::new();
    // alice's password was set while the domain was old.test (a store from before the data
    // folder recorded its domain).
    t.core
        .set_users(vec![User::new("alice", Some("101"), "old.test", "secret")]);
    let text = logged(|| {
        let to = "<sip:alice@example.test>".to_string();
        let mut r = t.req("REGISTER", "sip:example.test", "alice", &to, ALICE, "realm");
        let out = t.with_auth(&mut r, Algorithm::Md5);
        assert_eq!(out[0].1.status(), Some(401));
    });
    let line = text
        .lines()
        .find(|l| l.contains("authentication failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("was set for realm `old.test`, not `example.test`")
            && line.contains("hedgewitch user passwd alice"),
        "{line}"
    );
    assert!(line.contains(&format!("source={ALICE}")), "{line}");
}

#[test]
fn a_retransmitted_failure_is_counted_and_logged_once_and_an_old_nonce_too() {
    let mut t = T::new();
    let mut r = t.req(
        "REGISTER",
        "sip:example.test",
        "alice",
        "<sip:alice@example.test>",
        ALICE,
        "retrans",
    );
    t.recv(ALICE, &r.text());
    let nonce = nonce(&t.sent()[0].1, HeaderName::WwwAuthenticate);
    let bad = authorization(
        Algorithm::Md5,
        "alice",
        "example.test",
        "guess",
        "REGISTER",
        "sip:example.test",
        &nonce,
        "x",
        1,
    );
    r.extra = vec![format!("Authorization: {bad}")];
    r.cseq = 2;
    r.branch = t.branch();
    let text = logged(|| {
        // The same request three times over UDP (the phone retransmits): one attempt.
        for _ in 0..3 {
            t.recv(ALICE, &r.text());
            assert_eq!(t.sent()[0].1.status(), Some(401));
        }
    });
    assert_eq!(t.core.counters.registrar.auth_failures, 1);
    assert_eq!(text.matches("authentication failed").count(), 1, "{text}");

    // A wrong digest over a nonce the server never issued is a failed attempt too.
    let forged = authorization(
        Algorithm::Md5,
        "alice",
        "example.test",
        "guess",
        "REGISTER",
        "sip:example.test",
        "bm90LWEtbm9uY2U",
        "x",
        1,
    );
    r.extra = vec![format!("Authorization: {forged}")];
    r.cseq = 3;
    r.branch = t.branch();
    t.recv(ALICE, &r.text());
    assert_eq!(t.sent()[0].1.status(), Some(401));
    assert_eq!(t.core.counters.registrar.auth_failures, 2);
}

#[test]
fn reconfigured_registrar_limits_apply_at_once() {
    let mut t = T::new();
    let mut tighter = config();
    tighter.registrar.min_expires = 7200;
    t.core.reconfigure(&tighter);
    let mut r = t.req(
        "REGISTER",
        "sip:example.test",
        "alice",
        "<sip:alice@example.test>",
        ALICE,
        "limits",
    );
    r.extra = vec!["Expires: 3600".into()];
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert_eq!(out[0].1.status(), Some(423));
    assert_eq!(out[0].1.value(HeaderName::MinExpires), Some("7200"));
}
