//! Bans for failed logins through the whole core: the fifth wrong password from a source bans
//! it, after which nothing it sends is answered; an account guessed at from many sources
//! keeps working for its registered phones; a wrong answer spends its nonce.

use super::*;

impl T {
    /// A REGISTER for `user` from `src` that answers the challenge with `password`: the final
    /// status, or None when the server sent nothing back at some step.
    fn login(&mut self, user: &str, src: &str, password: &str) -> Option<u16> {
        self.seq += 1;
        let call_id = format!("guess-{}", self.seq);
        let to = format!("<sip:{user}@example.test>");
        let mut r = self.req("REGISTER", "sip:example.test", user, &to, src, &call_id);
        self.recv(src, &r.text());
        let out = self.sent();
        let first = out.first()?;
        if first.1.status() != Some(401) {
            return first.1.status();
        }
        let nonce = self::nonce(&first.1, HeaderName::WwwAuthenticate);
        let creds = authorization(
            Algorithm::Md5,
            user,
            "example.test",
            password,
            "REGISTER",
            "sip:example.test",
            &nonce,
            "c",
            1,
        );
        r.extra = vec![format!("Authorization: {creds}")];
        r.cseq = 2;
        r.branch = self.branch();
        self.recv(src, &r.text());
        self.sent().first().and_then(|(_, m)| m.status())
    }

    fn bans_made(&mut self) -> Vec<(IpAddr, u64)> {
        self.stash
            .drain(..)
            .filter_map(|a| match a {
                Action::Ban { source, secs } => Some((source, secs)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn the_fifth_wrong_password_bans_the_source_and_it_is_answered_no_more() {
    let mut t = T::new();
    let guesser = "127.0.0.50:5070";
    for i in 1..=5 {
        assert_eq!(t.login("alice", guesser, "guess"), Some(401), "guess {i}");
    }
    assert_eq!(
        t.bans_made(),
        vec![(addr("127.0.0.50:0").ip(), 900)],
        "the edge is told"
    );
    assert_eq!(t.core.counters.registrar.bans, 1);
    // Banned: not even the right password is answered, nor an OPTIONS, from any port.
    assert_eq!(t.login("alice", guesser, "secret"), None);
    assert_eq!(t.login("alice", "127.0.0.50:6000", "secret"), None);
    assert!(t.core.counters.traffic.dropped_banned >= 2);
    // Another address is not affected.
    assert_eq!(t.login("alice", ALICE, "secret"), Some(200));
    // The ban is listed, lifted by the operator, and the source is heard again.
    let bans = t.core.bans(t.now);
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].source, "127.0.0.50");
    assert!(t.core.lift_ban(t.now, addr(guesser).ip()));
    assert!(t
        .core
        .take_actions()
        .iter()
        .any(|a| matches!(a, Action::LiftBan { .. })));
    assert_eq!(t.login("alice", guesser, "secret"), Some(200));
    // Unknown users count the same as wrong passwords: nothing tells them apart.
    for _ in 0..5 {
        assert_eq!(t.login("nobody", "127.0.0.51:5070", "x"), Some(401));
    }
    assert_eq!(t.login("alice", "127.0.0.51:5070", "secret"), None);
}

#[test]
fn a_ban_ends_and_a_repeat_offence_doubles_it() {
    let mut t = T::new();
    let guesser = "127.0.0.60:5070";
    for _ in 0..5 {
        t.login("bob", guesser, "guess");
    }
    t.advance(Duration::from_secs(901));
    assert_eq!(
        t.login("bob", guesser, "secret"),
        Some(200),
        "the ban is over"
    );
    for _ in 0..5 {
        t.login("bob", guesser, "guess");
    }
    let bans = t.bans_made();
    assert_eq!(bans.last().map(|b| b.1), Some(1800));
}

#[test]
fn an_account_guessed_from_many_sources_still_serves_its_own_phones() {
    let mut t = T::new();
    assert_eq!(t.register("alice", ALICE, &[]).status(), Some(200));
    // 30 guesses from 30 addresses: none is banned, but the account is now shielded.
    for i in 0..30 {
        let src = format!("127.0.1.{i}:5070");
        assert_eq!(t.login("alice", &src, "guess"), Some(401));
    }
    // Even the right password from a new address is refused for now...
    assert_eq!(t.login("alice", "127.0.2.1:5070", "secret"), Some(401));
    // ...while alice's registered phone logs in as before.
    assert_eq!(t.login("alice", ALICE, "secret"), Some(200));
    // Other accounts are not affected.
    assert_eq!(t.login("bob", "127.0.2.1:5070", "secret"), Some(200));
    // Once the window has passed, new addresses may try again.
    t.advance(Duration::from_secs(601));
    assert_eq!(t.login("alice", "127.0.2.1:5070", "secret"), Some(200));
}

#[test]
fn trusted_networks_are_never_banned() {
    let mut t = T::new();
    let mut cfg = t.core.cfg.clone();
    cfg.guard.trusted = vec![(addr("127.0.0.0:0").ip(), 8)];
    t.core.reconfigure(&cfg);
    for _ in 0..20 {
        assert_eq!(t.login("alice", "127.0.0.70:5070", "guess"), Some(401));
    }
    assert_eq!(t.login("alice", "127.0.0.70:5070", "secret"), Some(200));
    assert!(t.bans_made().is_empty());
}

/// An INVITE from another domain to `to` (no credentials), from `src`.
fn outside_invite(src: &str, to: &str, call_id: &str) -> String {
    format!(
        "INVITE sip:{to}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:mallory@evil.test>;tag=m\r\nTo: <sip:{to}@example.test>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:mallory@{src}>\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Everything sent to `to` from now until `secs` of virtual time have passed.
fn sent_to_over(t: &mut T, to: &str, secs: u64) -> Vec<Message> {
    let mut got: Vec<Message> = vec![];
    let mut collect = |t: &mut T| {
        got.extend(
            t.sent()
                .into_iter()
                .filter(|(f, _)| f.remote == addr(to))
                .map(|(_, m)| m),
        )
    };
    collect(t);
    for _ in 0..secs * 2 {
        t.advance(Duration::from_millis(500));
        collect(t);
    }
    got
}

/// `src` calls bob from another domain; bob's phone (registered) answers 486. Returns what
/// `src` got over the next 40 s of virtual time (it never ACKs).
fn busy_call_from(t: &mut T, src: &str, call_id: &str) -> Vec<Message> {
    t.recv(src, &outside_invite(src, "bob", call_id));
    let out = t.sent();
    let inv = out
        .iter()
        .find(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Invite))
        .map(|(_, m)| m.clone())
        .expect("bob's phone rings");
    let mut got: Vec<Message> = out
        .into_iter()
        .filter(|(f, _)| f.remote == addr(src))
        .map(|(_, m)| m)
        .collect();
    t.recv(BOB, &answer(&inv, 486, "Busy Here", "b"));
    got.extend(sent_to_over(t, src, 40));
    got
}

#[test]
fn an_invite_that_is_never_acked_draws_at_most_four_packets_to_an_unknown_source() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    // Answered by the server itself: 100 Trying and the answer, nothing kept, nothing re-sent.
    let src = "192.0.2.99:5060";
    t.recv(src, &outside_invite(src, "nobody", "cannon-1"));
    let got = sent_to_over(&mut t, src, 40);
    let statuses: Vec<_> = got.iter().map(|m| m.status()).collect();
    assert_eq!(statuses, [Some(100), Some(404)]);
    // Answered by a phone: the answer is re-sent twice, then no more.
    let got = busy_call_from(&mut t, src, "cannon-2");
    let statuses: Vec<_> = got.iter().map(|m| m.status()).collect();
    assert_eq!(statuses, [Some(100), Some(486), Some(486), Some(486)]);
    assert!(
        t.core.tx.no_servers(),
        "Timer H ended the call's transaction all the same"
    );
}

#[test]
fn a_source_that_proved_itself_gets_every_retransmission() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    // A source that ACKs an answer is where it says it is: the next answer it gets is
    // re-sent until the ACK, as RFC 3261 wants.
    let src = "192.0.2.98:5060";
    t.recv(src, &outside_invite(src, "nobody", "cannon-3"));
    let answer_404 = t
        .sent()
        .into_iter()
        .find(|(_, m)| m.status() == Some(404))
        .map(|(_, m)| m)
        .expect("404");
    let to = answer_404
        .value(HeaderName::To)
        .unwrap_or_default()
        .to_string();
    let ack = format!(
        "ACK sip:nobody@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKcannon-3;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:mallory@evil.test>;tag=m\r\nTo: {to}\r\nCall-ID: cannon-3\r\n\
CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(src, &ack);
    assert!(
        t.sent().is_empty(),
        "the ACK to a stateless answer is absorbed"
    );
    let got = busy_call_from(&mut t, src, "cannon-4");
    let finals = got.iter().filter(|m| m.status() == Some(486)).count();
    assert!(finals > 4, "{finals} final answers after an ACK");
    // So is one that logged in.
    assert_eq!(t.login("alice", ALICE, "secret"), Some(200));
    let got = busy_call_from(&mut t, ALICE, "cannon-5");
    let finals = got.iter().filter(|m| m.status() == Some(486)).count();
    assert!(finals > 4, "{finals} final answers after a login");
}

/// What an outsider sees of an answer: status, reason and the header names, in order.
fn shape(m: &Message) -> (Option<u16>, String, Vec<String>) {
    let names = m
        .headers
        .iter()
        .map(|h| m.text(h.name_span).to_ascii_lowercase())
        .collect();
    (m.status(), first_line(m), names)
}

/// From another domain, without credentials, nothing tells an existing user (offline,
/// refusing outside calls, or on do-not-disturb) from a name nobody has, whatever the method.
#[test]
fn outsiders_cannot_tell_who_exists() {
    let mut t = T::new();
    // carol is on do-not-disturb; bob refuses calls from outside; alice accepts them but has
    // no phone registered; "nobody" does not exist.
    let mut users = users();
    users[1].external = false;
    t.core.set_users(users.clone());
    let (d, _) = crate::plan::Directory::build(
        "example.test",
        &users,
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &crate::plan::settings::PlanSettings {
            forwards: vec![crate::plan::settings::ForwardSpec {
                user: "carol".into(),
                dnd: true,
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .unwrap();
    t.core.set_plan(d);
    let src = "192.0.2.50:5060";
    for method in ["INVITE", "MESSAGE", "OPTIONS", "SUBSCRIBE"] {
        let mut seen = vec![];
        for (i, who) in ["alice", "bob", "carol", "nobody", "101"]
            .iter()
            .enumerate()
        {
            let call_id = format!("enum-{method}-{i}");
            let event = if method == "SUBSCRIBE" {
                "Event: presence\r\nExpires: 60\r\n"
            } else {
                ""
            };
            let req = format!(
                "{method} sip:{who}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:mallory@evil.test>;tag=m\r\nTo: <sip:{who}@example.test>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:mallory@{src}>\r\n{event}Content-Length: 0\r\n\r\n"
            );
            t.recv(src, &req);
            let finals: Vec<_> = t
                .sent()
                .into_iter()
                .filter(|(_, m)| m.status().is_some_and(|s| s >= 200))
                .map(|(_, m)| shape(&m))
                .collect();
            assert_eq!(finals.len(), 1, "{method} to {who}: {finals:?}");
            seen.push((who.to_string(), finals[0].clone()));
        }
        for (who, s) in &seen {
            assert_eq!(
                s, &seen[3].1,
                "{method}: {who} differs from a name nobody has"
            );
        }
        // A SUBSCRIBE for presence is taken by the presence agent, with the same 200 and a
        // neutral document for everyone (presence_tests.rs); the rest get 404.
        let expected = if method == "SUBSCRIBE" { 200 } else { 404 };
        assert_eq!(seen[3].1 .0, Some(expected), "{method}");
    }
}

/// OPTIONS to the server from `src`, number `i`.
fn options(src: &str, i: usize) -> String {
    format!(
        "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKrate{i}\r\n\
Max-Forwards: 70\r\nFrom: <sip:x@elsewhere.test>;tag=1\r\nTo: <sip:example.test>\r\n\
Call-ID: rate{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_source_over_its_rate_is_dropped_over_udp_and_told_to_wait_over_tcp() {
    let mut t = T::new();
    let mut cfg = t.core.cfg.clone();
    cfg.guard.admission.request_rate = 10;
    cfg.guard.admission.burst_secs = 2;
    t.core.reconfigure(&cfg);
    let src = "192.0.2.20:5060";
    // 20 at once (10/s, 2 s of burst), then silence for the rest.
    let answered = (0..30)
        .filter(|i| {
            t.recv(src, &options(src, *i));
            !t.sent().is_empty()
        })
        .count();
    assert_eq!(answered, 20);
    assert_eq!(t.core.counters.traffic.rate_limited, 10);
    // Another source is not affected; a second later the first gets 10 more.
    assert!((0..5).all(|i| {
        t.recv("192.0.2.21:5060", &options("192.0.2.21:5060", 100 + i));
        !t.sent().is_empty()
    }));
    t.advance(Duration::from_secs(1));
    let answered = (0..30)
        .filter(|i| {
            t.recv(src, &options(src, 200 + i));
            !t.sent().is_empty()
        })
        .count();
    assert_eq!(answered, 10);
    // Over TCP, the request over the rate is answered 503 with Retry-After.
    let flow = Flow {
        transport: Transport::Tcp,
        local: addr("127.0.0.1:5060"),
        remote: addr(src),
        conn: Some(9),
    };
    t.recv_flow(flow, &options(src, 300));
    let out = t.sent();
    assert_eq!(out[0].1.status(), Some(503));
    let text = String::from_utf8_lossy(&out[0].1.bytes()).into_owned();
    assert!(text.contains("\r\nRetry-After: 5\r\n"), "{text}");
    // Trusted networks are not limited.
    cfg.guard.trusted = vec![(addr("192.0.2.0:0").ip(), 24)];
    t.core.reconfigure(&cfg);
    assert!((0..50).all(|i| {
        t.recv(src, &options(src, 400 + i));
        !t.sent().is_empty()
    }));
}

/// A MESSAGE from another domain to bob (registered): forwarded, so it keeps a transaction.
fn message_to_bob(src: &str, i: usize, pad: usize) -> String {
    format!(
        "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKbudget{i}\r\n\
Max-Forwards: 70\r\nFrom: <sip:x@elsewhere.test>;tag=1\r\nTo: <sip:bob@example.test>\r\n\
Call-ID: budget{i}\r\nCSeq: 1 MESSAGE\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
        "p".repeat(pad)
    )
}

#[test]
fn what_transactions_hold_is_bounded_in_bytes_per_source_and_in_all() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let mut cfg = t.core.cfg.clone();
    cfg.transactions.source_bytes = 40_000;
    cfg.transactions.total_bytes = 100_000;
    t.core.cfg.transactions = cfg.transactions.clone();
    let refused_of = |t: &mut T, src: &str, from: usize| {
        (from..from + 20)
            .filter(|i| {
                t.recv(src, &message_to_bob(src, *i, 4000));
                t.sent()
                    .iter()
                    .any(|(f, m)| f.remote == addr(src) && m.status() == Some(503))
            })
            .count()
    };
    // Each MESSAGE is charged about 9 KB: four fit in one source's 40 KB.
    let a = "192.0.2.30:5060";
    assert_eq!(refused_of(&mut t, a, 0), 16);
    let before = t.core.status(t.now).transaction_bytes;
    assert!(
        before <= 40_000 + 2_000,
        "{before} bytes (bob's REGISTER too)"
    );
    // Other sources have their own share, until the whole table's 100 KB is used.
    let refused: usize = (1..=5)
        .map(|i| refused_of(&mut t, &format!("192.0.2.{}:5060", 30 + i), 100 * i))
        .sum();
    assert!(refused >= 5 * 20 - 7, "{refused} refused");
    assert!(t.core.status(t.now).transaction_bytes <= 100_000);
    // Answered and ended, the transactions give their bytes back.
    t.advance(Duration::from_secs(70));
    assert_eq!(t.core.status(t.now).transaction_bytes, 0);
    assert_eq!(refused_of(&mut t, a, 1000), 16);
}

/// A phone that registers over a TCP connection asks the edge to keep that connection (the
/// long idle timeout of a registered flow); one that only sends OPTIONS does not.
#[test]
fn a_registration_over_a_stream_holds_its_connection() {
    let mut t = T::new();
    let flow = Flow {
        transport: Transport::Tcp,
        local: addr("127.0.0.1:5060"),
        remote: addr("127.0.0.1:40000"),
        conn: Some(77),
    };
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bKhold{cseq}\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=h\r\nTo: <sip:alice@example.test>\r\n\
Call-ID: hold@x\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@127.0.0.1:40000;transport=tcp>\r\n\
{auth}Content-Length: 0\r\n\r\n"
        )
    };
    t.recv_flow(flow, &register(1, ""));
    let out = t.sent();
    let nonce = self::nonce(&out[0].1, HeaderName::WwwAuthenticate);
    assert!(!t
        .stash
        .iter()
        .any(|a| matches!(a, Action::HoldConnection { .. })));
    let creds = authorization(
        Algorithm::Md5,
        "alice",
        "example.test",
        "secret",
        "REGISTER",
        "sip:example.test",
        &nonce,
        "c",
        1,
    );
    t.recv_flow(flow, &register(2, &format!("Authorization: {creds}\r\n")));
    assert_eq!(t.sent()[0].1.status(), Some(200));
    assert!(t
        .stash
        .iter()
        .any(|a| matches!(a, Action::HoldConnection { conn: 77 })));
}

/// A cracked account calling out: ten calls to another domain a minute, then 403; a call
/// out from an address the user never went out from is logged (not refused).
#[test]
fn calls_out_of_the_domain_are_limited_per_user() {
    let mut t = T::new();
    let mut refused = 0;
    for i in 0..12 {
        let branch = t.branch();
        let call_id = format!("out-{i}");
        let mut r = Req {
            method: "INVITE",
            uri: "sip:bob@beta.test",
            from_user: "alice",
            to: "<sip:bob@beta.test>",
            src: ALICE,
            call_id: &call_id,
            cseq: 1,
            branch,
            extra: vec![],
            body: "",
        };
        let out = t.with_auth(&mut r, Algorithm::Md5);
        if out.iter().any(|(_, m)| m.status() == Some(403)) {
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "the 11th and 12th");
    assert_eq!(t.core.counters.forwarded.outside_limited, 2);
}

/// While the edge reports overload, a new dialog from a source that never proved itself gets
/// 503 with Retry-After; a logged-in user's calls and requests inside dialogs go on, and two
/// seconds after the last report everyone is served again.
#[test]
fn under_overload_new_dialogs_from_unknown_sources_are_shed() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    assert_eq!(t.login("alice", ALICE, "secret"), Some(200));
    t.core.handle_overload(t.now);
    let src = "192.0.2.60:5060";
    t.recv(src, &outside_invite(src, "bob", "shed-1"));
    let out = t.sent();
    let answer = out
        .iter()
        .find(|(f, _)| f.remote == addr(src))
        .map(|(_, m)| m.clone())
        .expect("an answer");
    assert_eq!(answer.status(), Some(503));
    let text = String::from_utf8_lossy(&answer.bytes()).into_owned();
    assert!(text.contains("\r\nRetry-After: 5\r\n"), "{text}");
    assert!(
        !out.iter().any(|(f, _)| f.remote == addr(BOB)),
        "bob not rung"
    );
    assert_eq!(t.core.counters.traffic.shed, 1);
    // alice logged in from ALICE: her call goes through.
    t.recv(ALICE, &outside_invite(ALICE, "bob", "shed-2"));
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Invite)));
    // A request inside a dialog (To tag) is not shed.
    let in_dialog = outside_invite(src, "bob", "shed-3").replace(
        "To: <sip:bob@example.test>",
        "To: <sip:bob@example.test>;tag=x",
    );
    t.recv(src, &in_dialog);
    assert_eq!(t.core.counters.traffic.shed, 1);
    // Two seconds after the last report, the unknown source is served again.
    t.advance(Duration::from_secs(3));
    t.recv(src, &outside_invite(src, "bob", "shed-4"));
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Invite)));
}

/// A header field longer than any SIP needs (a 30 KB display name) gets 400 at once, and
/// nothing of it is kept.
#[test]
fn an_oversized_header_field_gets_400_and_nothing_is_kept() {
    let mut t = T::new();
    let src = "192.0.2.70:5060";
    let huge = format!(
        "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKhuge\r\n\
Max-Forwards: 70\r\nFrom: \"{}\" <sip:x@elsewhere.test>;tag=1\r\nTo: <sip:example.test>\r\n\
Call-ID: huge\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        "y".repeat(30_000)
    );
    t.recv(src, &huge);
    // (The answer echoes the From, as every answer must: read it as bytes.)
    let sends: Vec<Bytes> = t
        .core
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1);
    assert!(
        sends[0].starts_with(b"SIP/2.0 400 header field too long\r\n"),
        "{}",
        String::from_utf8_lossy(&sends[0][..80])
    );
    assert!(t.core.tx.no_servers());
    assert_eq!(t.core.counters.traffic.malformed_in, 1);
}
