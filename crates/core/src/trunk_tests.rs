//! Provider trunks in virtual time: registration with digest, refresh, back-off, 403, NAT;
//! calls out (number formats, identity, the provider's challenge answered, fail-over),
//! calls in to the household's numbers, and the fraud and emergency guards.

use super::*;
use crate::numbers::{CallClass, NumberSettings};
use crate::trunks::settings::{
    Account, DidSpec, Identity, RegisterSettings, TrunkCalls, TrunkPeer, TrunkSettings,
};
use sip::digest::{challenge, ha1, verify, Credentials};

const PROV: &str = "127.0.0.1:7000";
const PROV2: &str = "127.0.0.1:7002";
const SECRET: &str = "s3cr3tcontact";

fn trunk(name: &str, at: &str) -> TrunkSettings {
    TrunkSettings {
        name: name.into(),
        peer: TrunkPeer {
            domain: "provider.test".into(),
            registrar: format!("sip:{at}"),
            proxy: None,
            transport: Transport::Udp,
            realm: None,
            addresses: vec![],
        },
        register: Some(RegisterSettings {
            expires: 120,
            retry: 10,
        }),
        keepalive: 0,
        calls: TrunkCalls {
            number_format: crate::numbers::NumberFormat::E164Plus,
            identity: Identity::From,
            max_calls: 0,
            outgoing: true,
            caller_id: Some("+4930999".into()),
        },
        account: Account {
            user: "home".into(),
            auth_user: "home".into(),
            password: "pw".into(),
            secret: format!("{SECRET}{name}"),
        },
        dids: vec![DidSpec {
            number: "+4930999".into(),
            target: "bob".into(),
            provider: None,
        }],
        default_target: None,
    }
}

/// Numbers dialled in Germany; no ENUM unless a test turns it on.
fn germany() -> NumberSettings {
    NumberSettings {
        country_code: "49".into(),
        enum_suffixes: vec![],
        ..Default::default()
    }
}

/// A provider's answer to a request we sent, with extra header lines.
fn reply(req: &Message, code: u16, extra: &[String]) -> String {
    let mut s = format!("SIP/2.0 {code} Whatever\r\n");
    for h in &req.headers {
        if matches!(
            h.name,
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq
        ) {
            s.push_str(req.text(h.line));
            s.push_str("\r\n");
        }
        if h.name == HeaderName::To {
            s.push_str(req.text(h.line));
            s.push_str(if code > 100 { ";tag=prov\r\n" } else { "\r\n" });
        }
    }
    for e in extra {
        s.push_str(e);
        s.push_str("\r\n");
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

fn only<'a>(out: &'a [(Flow, Message)], method: &str) -> &'a Message {
    let found: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.method_str() == method && m.is_request())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {method}: {:?}",
        out.iter().map(|m| first_line(&m.1)).collect::<Vec<_>>()
    );
    &found[0].1
}

impl T {
    /// One provider at PROV, registered with digest (401 then 200).
    fn registered_trunk(&mut self, numbers: NumberSettings, list: Vec<TrunkSettings>) {
        self.core.set_trunks(self.now, list, numbers);
        for _ in 0..2 {
            let out = self.sent();
            for (flow, reg) in out.iter().filter(|(_, m)| m.method_str() == "REGISTER") {
                let ch = challenge("provider.test", "n1", Algorithm::Md5, false, None);
                let text = if reg.value(HeaderName::Authorization).is_some() {
                    reply(
                        reg,
                        200,
                        &[format!(
                            "Contact: {};expires=120",
                            reg.value(HeaderName::Contact)
                                .unwrap()
                                .split(',')
                                .next()
                                .unwrap()
                                .split(";expires")
                                .next()
                                .unwrap()
                        )],
                    )
                } else {
                    reply(reg, 401, &[format!("WWW-Authenticate: {ch}")])
                };
                let from = flow.remote.to_string();
                self.recv(&from, &text);
            }
        }
        assert!(
            self.core
                .trunks(self.now)
                .iter()
                .all(|v| v.state == "registered"),
            "{:?}",
            self.core.trunks(self.now)
        );
    }
}

#[test]
fn registers_with_digest_and_refreshes_before_expiry() {
    let mut t = T::new();
    t.core
        .set_trunks(t.now, vec![trunk("acme", PROV)], germany());
    let out = t.sent();
    let (flow, reg) = &out[0];
    assert_eq!(flow.remote, addr(PROV));
    assert_eq!(reg.uri_str(), "sip:127.0.0.1:7000");
    assert!(reg
        .value(HeaderName::From)
        .unwrap()
        .contains("sip:home@provider.test"));
    let contact = reg.value(HeaderName::Contact).unwrap().to_string();
    assert!(
        contact.starts_with(&format!("<sip:{SECRET}acme@127.0.0.1:5060>")),
        "{contact}"
    );
    assert_eq!(t.core.trunks(t.now)[0].state, "registering");
    let md5 = challenge("provider.test", "n1", Algorithm::Md5, false, Some("op"));
    let sha = challenge("provider.test", "n1", Algorithm::Sha256, false, Some("op"));
    // Offered both, the stronger is taken.
    t.recv(
        PROV,
        &reply(
            reg,
            401,
            &[
                format!("WWW-Authenticate: {md5}"),
                format!("WWW-Authenticate: {sha}"),
            ],
        ),
    );
    let out = t.sent();
    let again = only(&out, "REGISTER");
    let creds = Credentials::parse(again.value(HeaderName::Authorization).unwrap()).unwrap();
    assert_eq!(creds.algorithm, Algorithm::Sha256);
    assert!(verify(
        &creds,
        "REGISTER",
        &ha1(Algorithm::Sha256, "home", "provider.test", "pw")
    ));
    assert_eq!(
        again.call_id(),
        reg.call_id(),
        "one Call-ID for the registration"
    );
    assert_eq!(again.cseq().unwrap().0, reg.cseq().unwrap().0 + 1);
    t.recv(
        PROV,
        &reply(
            again,
            200,
            &[
                format!("Contact: <sip:{SECRET}acme@127.0.0.1:5060>;expires=100"),
                "Service-Route: <sip:edge.provider.test;lr>".into(),
            ],
        ),
    );
    let v = &t.core.trunks(t.now)[0];
    assert_eq!(v.state, "registered");
    assert_eq!(v.expires_in, Some(100));
    assert_eq!(v.since, Some(1_800_000_000));
    // Refreshed ahead of time (a tenth early), with the same Call-ID and the challenge's
    // credentials.
    t.advance(Duration::from_secs(89));
    assert!(t.sent().is_empty());
    t.advance(Duration::from_secs(1));
    let out = t.sent();
    let refresh = only(&out, "REGISTER");
    assert_eq!(refresh.call_id(), reg.call_id());
    assert!(refresh.value(HeaderName::Authorization).is_some());
}

#[test]
fn a_wrong_password_fails_with_its_reason_and_retries_with_back_off() {
    let mut t = T::new();
    t.core
        .set_trunks(t.now, vec![trunk("acme", PROV)], germany());
    let out = t.sent();
    let ch = challenge("provider.test", "n1", Algorithm::Md5, false, None);
    t.recv(
        PROV,
        &reply(&out[0].1, 401, &[format!("WWW-Authenticate: {ch}")]),
    );
    let out = t.sent();
    // The same nonce again after our credentials: the password is wrong.
    t.recv(
        PROV,
        &reply(&out[0].1, 401, &[format!("WWW-Authenticate: {ch}")]),
    );
    assert!(t.sent().is_empty());
    let v = &t.core.trunks(t.now)[0];
    assert_eq!(v.state, "failed");
    assert!(
        v.reason
            .as_deref()
            .unwrap()
            .contains("refused the user name or password"),
        "{v:?}"
    );
    // Retried after 10 s, then 20 s.
    t.advance(Duration::from_secs(10));
    let out = t.sent();
    t.recv(PROV, &reply(&out[0].1, 500, &[]));
    t.advance(Duration::from_secs(19));
    assert!(t.sent().is_empty());
    t.advance(Duration::from_secs(1));
    assert_eq!(t.sent().len(), 1);
}

#[test]
fn forbidden_stops_retrying_until_asked() {
    let mut t = T::new();
    t.core
        .set_trunks(t.now, vec![trunk("acme", PROV)], germany());
    let out = t.sent();
    t.recv(PROV, &reply(&out[0].1, 403, &[]));
    let v = &t.core.trunks(t.now)[0];
    assert_eq!(v.state, "refused");
    assert!(v.reason.as_deref().unwrap().contains("provider test acme"));
    t.advance(Duration::from_secs(3600));
    assert!(t.sent().is_empty());
    assert!(t.core.retry_trunk(t.now, "acme"));
    assert_eq!(t.sent().len(), 1);
}

#[test]
fn behind_nat_the_public_address_is_registered() {
    let mut t = T::new();
    t.core
        .set_trunks(t.now, vec![trunk("acme", PROV)], germany());
    let out = t.sent();
    let reg = &out[0].1;
    let text = reply(reg, 200, &[]).replacen(";rport", ";rport=40000;received=198.51.100.7", 1);
    t.recv(PROV, &text);
    let out = t.sent();
    let again = only(&out, "REGISTER");
    let c = again.value(HeaderName::Contact).unwrap();
    assert!(
        c.starts_with(&format!("<sip:{SECRET}acme@198.51.100.7:40000>")),
        "{c}"
    );
    assert!(
        c.contains("<sip:s3cr3tcontactacme@127.0.0.1:5060>;expires=0"),
        "{c}"
    );
}

#[test]
fn a_silent_provider_is_registered_to_again() {
    let mut t = T::new();
    let mut s = trunk("acme", PROV);
    s.keepalive = 20;
    t.registered_trunk(germany(), vec![s]);
    t.advance(Duration::from_secs(20));
    let out = t.sent();
    let ping = only(&out, "OPTIONS");
    assert_eq!(ping.uri_str(), "sip:127.0.0.1:7000");
    // The provider went away: the ping fails (ICMP), and so does the next REGISTER.
    t.core.handle_unreachable(t.now, addr(PROV));
    let v = &t.core.trunks(t.now)[0];
    assert_eq!(v.state, "failed", "{v:?}");
    t.advance(Duration::from_secs(10));
    let out = t.sent();
    assert!(out.iter().any(|(_, m)| m.method_str() == "REGISTER"));
}

/// alice and bob registered, the provider too; alice dials `dialled`. What the provider got.
fn call_out(t: &mut T, dialled: &str, call_id: &str) -> Vec<(Flow, Message)> {
    let uri = format!("sip:{dialled}@example.test");
    let out = t.invite("alice", ALICE, &uri, call_id);
    out.into_iter()
        .filter(|(f, _)| f.remote != addr(ALICE))
        .collect()
}

#[test]
fn a_national_number_goes_out_in_e164_with_the_challenge_answered() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.registered_trunk(germany(), vec![trunk("acme", PROV)]);
    let out = call_out(&mut t, "0301234567", "out1");
    let inv = only(&out, "INVITE");
    assert_eq!(inv.uri_str(), "sip:+49301234567@provider.test");
    let from = inv.from().unwrap();
    assert_eq!(from.uri.raw, "sip:+4930999@provider.test");
    assert_eq!(from.tag(), Some("ftalice"));
    assert!(
        inv.value(HeaderName::ProxyAuthorization).is_none(),
        "our realm's credentials stay here"
    );
    let ch = challenge("provider.test", "cn1", Algorithm::Md5, false, None);
    t.recv(
        PROV,
        &reply(inv, 407, &[format!("Proxy-Authenticate: {ch}")]),
    );
    let out = t.sent();
    // The 407 is ACKed hop by hop and the INVITE goes again with credentials, same CSeq.
    assert!(out.iter().any(|(_, m)| m.method_str() == "ACK"));
    let again = only(&out, "INVITE");
    assert_eq!(again.cseq(), inv.cseq());
    let creds = Credentials::parse(again.value(HeaderName::ProxyAuthorization).unwrap()).unwrap();
    assert!(verify(
        &creds,
        "INVITE",
        &ha1(Algorithm::Md5, "home", "provider.test", "pw")
    ));
    assert!(
        !out.iter().any(|(f, _)| f.remote == addr(ALICE)),
        "alice never sees the 407"
    );
    assert_eq!(t.core.trunks(t.now)[0].calls, 1);
    t.recv(
        PROV,
        &reply(again, 200, &["Contact: <sip:callee@127.0.0.1:7000>".into()]),
    );
    let out = t.sent();
    let ok = out.iter().find(|(f, _)| f.remote == addr(ALICE)).unwrap();
    assert_eq!(ok.1.status(), Some(200));
    assert!(
        ok.1.value(HeaderName::From)
            .unwrap()
            .contains("sip:alice@example.test"),
        "alice's From is given back"
    );
    // alice hangs up: the call no longer counts.
    let rr = format!("Route: <sip:{SERVER};lr>");
    let mut bye = t.req(
        "BYE",
        "sip:callee@127.0.0.1:7000",
        "alice",
        "<sip:+49301234567@provider.test>;tag=prov",
        ALICE,
        "out1",
    );
    bye.cseq = 3;
    bye.extra.push(rr);
    t.recv(ALICE, &bye.text());
    let out = t.sent();
    assert_eq!(
        only(&out, "BYE").from().unwrap().uri.raw,
        "sip:+4930999@provider.test"
    );
    assert_eq!(t.core.trunks(t.now)[0].calls, 0);
}

#[test]
fn identity_by_p_asserted_identity_and_national_format() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    let mut s = trunk("acme", PROV);
    s.calls.identity = Identity::Pai;
    s.calls.number_format = crate::numbers::NumberFormat::National;
    t.registered_trunk(germany(), vec![s]);
    let out = call_out(&mut t, "+44%2020%207946%200000", "out2");
    let inv = only(&out, "INVITE");
    assert_eq!(inv.uri_str(), "sip:00442079460000@provider.test");
    assert_eq!(inv.from().unwrap().uri.raw, "sip:home@provider.test");
    assert_eq!(
        inv.value(HeaderName::PAssertedIdentity),
        Some("<sip:+4930999@provider.test>")
    );
}

#[test]
fn the_next_provider_is_tried_on_failure_only() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.registered_trunk(germany(), vec![trunk("a", PROV), trunk("b", PROV2)]);
    let out = call_out(&mut t, "0301234567", "fo1");
    let inv = only(&out, "INVITE");
    t.recv(PROV, &reply(inv, 503, &[]));
    let out = t.sent();
    let second = out
        .iter()
        .find(|(f, m)| f.remote == addr(PROV2) && m.method_str() == "INVITE");
    assert!(second.is_some(), "503 moves to the next provider");
    // A busy number is the callee's answer: no second provider.
    let out = call_out(&mut t, "0301234568", "fo2");
    let inv = only(&out, "INVITE");
    t.recv(PROV, &reply(inv, 486, &[]));
    let out = t.sent();
    assert!(!out
        .iter()
        .any(|(f, m)| f.remote == addr(PROV2) && m.method_str() == "INVITE"));
    assert_eq!(
        out.iter()
            .find(|(f, _)| f.remote == addr(ALICE))
            .unwrap()
            .1
            .status(),
        Some(486)
    );
}

#[test]
fn classes_caps_and_emergency() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    let mut n = germany();
    n.allow
        .users
        .insert("alice".into(), vec![CallClass::National]);
    n.allow.calls_at_once = 1;
    t.registered_trunk(n, vec![trunk("acme", PROV)]);
    let out = t.invite("alice", ALICE, "sip:+442079460000@example.test", "x1");
    let refused = &out.last().unwrap().1;
    assert_eq!(refused.status(), Some(403));
    assert!(
        refused.reason().contains("International"),
        "{}",
        refused.reason()
    );
    // Emergency goes out whatever the class, as dialled.
    let out = call_out(&mut t, "112", "em1");
    assert_eq!(only(&out, "INVITE").uri_str(), "sip:112@provider.test");
    // One call at once: the emergency call does not count, a national one does; a second
    // one is refused.
    let out = call_out(&mut t, "0301234567", "n1");
    only(&out, "INVITE");
    let out = t.invite("alice", ALICE, "sip:0301234568@example.test", "n2");
    let refused = &out.last().unwrap().1;
    assert_eq!(refused.status(), Some(403));
    assert!(refused.reason().contains("At Once"), "{}", refused.reason());
}

#[test]
fn a_call_from_the_provider_rings_the_numbers_target() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    t.registered_trunk(germany(), vec![trunk("acme", PROV)]);
    // To our registered Contact (the secret), the number in To; no digest asked.
    let inv = format!(
        "INVITE sip:{SECRET}acme@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PROV};branch=z9hG4bKin1\r\n\
Max-Forwards: 70\r\nFrom: <sip:+4930111@provider.test>;tag=c1\r\nTo: <sip:+4930999@provider.test>\r\n\
Call-ID: in1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{PROV}>\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(PROV, &inv);
    let out = t.sent();
    assert!(
        out.iter()
            .any(|(f, m)| f.remote == addr(BOB) && m.method_str() == "INVITE"),
        "bob rings"
    );
    // From the provider's address, to a number it does not own: not the provider's call.
    let inv = inv
        .replace(
            &format!("sip:{SECRET}acme@127.0.0.1:5060"),
            "sip:+4930555@127.0.0.1:5060",
        )
        .replace(
            "<sip:+4930999@provider.test>",
            "<sip:+4930555@provider.test>",
        )
        .replace("in1", "in2")
        .replace("z9hG4bKin1", "z9hG4bKin2");
    t.recv(PROV, &inv);
    let out = t.sent();
    assert!(!out.iter().any(|(f, _)| f.remote == addr(BOB)));
    // Someone else's address calling the number: a stranger, who gets the 404 of any
    // unknown user (no open door through the numbers).
    let stranger = inv
        .replace(
            &format!("Via: SIP/2.0/UDP {PROV}"),
            "Via: SIP/2.0/UDP 127.0.0.1:7100",
        )
        .replace("in2", "in3");
    t.recv("127.0.0.1:7100", &stranger);
    let out = t.sent();
    assert!(!out.iter().any(|(f, _)| f.remote == addr(BOB)));
}

#[test]
fn enum_first_then_the_providers() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    let mut n = germany();
    n.enum_suffixes = vec!["e164.test".into()];
    t.registered_trunk(n, vec![trunk("acme", PROV)]);
    // A number ENUM knows: its SIP URI is called, not the provider.
    let out = call_out(&mut t, "0301234567", "e1");
    assert!(
        out.iter().all(|(_, m)| m.method_str() != "INVITE"),
        "nothing rings before ENUM answers"
    );
    let asked: Vec<(u64, Vec<String>)> = t
        .stash
        .drain(..)
        .filter_map(|a| match a {
            Action::ResolveEnum { id, domains } => Some((id, domains)),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].1,
        vec!["7.6.5.4.3.2.1.0.3.9.4.e164.test".to_string()]
    );
    let rec = crate::numbers::EnumRecord {
        order: 10,
        preference: 10,
        flags: "u".into(),
        services: "E2U+sip".into(),
        regexp: "!^.*$!sip:bob@127.0.0.1:6001!".into(),
    };
    t.core
        .handle_enum(t.now, asked[0].0, vec![rec], Duration::from_secs(300));
    let out = t.sent();
    let inv = only(&out, "INVITE");
    assert_eq!(inv.uri_str(), "sip:bob@127.0.0.1:6001");
    assert!(
        inv.from().unwrap().uri.raw.contains("alice@example.test"),
        "no provider identity"
    );
    // The same number again: the answer is remembered for its TTL.
    let out = call_out(&mut t, "0301234567", "e2");
    assert_eq!(only(&out, "INVITE").uri_str(), "sip:bob@127.0.0.1:6001");
    // A number ENUM does not know goes to the provider.
    call_out(&mut t, "0309999999", "e3");
    let id = t
        .stash
        .drain(..)
        .find_map(|a| match a {
            Action::ResolveEnum { id, .. } => Some(id),
            _ => None,
        })
        .unwrap();
    t.core
        .handle_enum(t.now, id, vec![], Duration::from_secs(60));
    let out = t.sent();
    assert_eq!(
        only(&out, "INVITE").uri_str(),
        "sip:+49309999999@provider.test"
    );
}

#[test]
fn a_peered_pbx_is_known_by_its_exact_address() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let mut pbx = trunk("pbx", PROV);
    pbx.register = None;
    pbx.keepalive = 0;
    pbx.account.user = String::new();
    pbx.calls.caller_id = None;
    pbx.dids.clear();
    t.core.set_trunks(t.now, vec![pbx], germany());
    assert_eq!(t.core.trunks(t.now)[0].state, "peer");
    let inv = |src: &str, id: &str| {
        format!(
            "INVITE sip:102@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{id}\r\n\
Max-Forwards: 70\r\nFrom: <sip:201@pbx.test>;tag={id}\r\nTo: <sip:102@127.0.0.1>\r\n\
Call-ID: {id}\r\nCSeq: 1 INVITE\r\nContact: <sip:201@{src}>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // From the PBX's own address: bob's extension rings, no digest.
    t.recv(PROV, &inv(PROV, "p1"));
    let out = t.sent();
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method_str() == "INVITE"));
    // From another port of the same host: an outsider, who reaches nobody by extension.
    t.recv("127.0.0.1:7001", &inv("127.0.0.1:7001", "p2"));
    let out = t.sent();
    assert!(!out.iter().any(|(f, _)| f.remote == addr(BOB)));
    assert_eq!(out.last().unwrap().1.status(), Some(404));
}

#[test]
fn a_provider_at_its_limit_is_skipped_and_the_daily_count_holds() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let mut n = germany();
    n.allow.calls_per_day = 2;
    let mut a = trunk("a", PROV);
    a.calls.max_calls = 1;
    t.registered_trunk(n, vec![a, trunk("b", PROV2)]);
    // alice's first call takes provider a's only slot; bob's goes to b.
    let out = call_out(&mut t, "0301234567", "d1");
    assert_eq!(
        out.iter()
            .find(|(_, m)| m.method_str() == "INVITE")
            .unwrap()
            .0
            .remote,
        addr(PROV)
    );
    let out = t.invite("bob", BOB, "sip:0301234568@example.test", "d2");
    let inv = out
        .iter()
        .find(|(_, m)| m.method_str() == "INVITE" && m.is_request())
        .unwrap();
    assert_eq!(inv.0.remote, addr(PROV2), "a is at its limit");
    // alice's second call of the day goes (b), her third is refused.
    let out = call_out(&mut t, "0301234569", "d3");
    assert!(out.iter().any(|(_, m)| m.method_str() == "INVITE"));
    for (_, m) in &out {
        if m.method_str() == "INVITE" {
            t.recv(PROV2, &reply(m, 486, &[]));
        }
    }
    t.sent();
    let out = t.invite("alice", ALICE, "sip:0301234560@example.test", "d4");
    let refused = &out.last().unwrap().1;
    assert_eq!(refused.status(), Some(403));
    assert!(refused.reason().contains("Daily"), "{}", refused.reason());
    // The next day she may call again.
    t.advance(Duration::from_secs(86400));
    t.sent();
    let out = call_out(&mut t, "0301234561", "d5");
    assert!(out.iter().any(|(_, m)| m.method_str() == "INVITE"));
}

#[test]
fn a_users_forwarding_to_their_mobile_goes_out_if_they_may_call_it() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    let mut n = germany();
    n.mobile = vec!["+4917".into()];
    t.registered_trunk(n, vec![trunk("acme", PROV)]);
    // bob has no phone registered: his calls go to his mobile.
    let mut plan = t.core.plan.forward("bob");
    plan.unavailable = Some("01701234567".into());
    t.core.plan.set_forward(plan);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "fw1");
    let inv = out
        .iter()
        .find(|(f, m)| f.remote == addr(PROV) && m.method_str() == "INVITE")
        .expect("the call goes out to bob's mobile");
    assert_eq!(inv.1.uri_str(), "sip:+491701234567@provider.test");
    assert!(
        out.iter().any(|(_, m)| m.status() == Some(181)),
        "the caller hears it is forwarded"
    );
    // Without the mobile class, bob's forwarding reaches nobody.
    let mut n = germany();
    n.mobile = vec!["+4917".into()];
    n.allow
        .users
        .insert("bob".into(), vec![CallClass::National]);
    t.core.set_trunks(t.now, vec![trunk("acme", PROV)], n);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "fw2");
    assert!(!out
        .iter()
        .any(|(f, m)| f.remote == addr(PROV) && m.method_str() == "INVITE"));
    assert!(out.iter().any(|(_, m)| m.status() == Some(480)));
}

#[test]
fn a_407_to_register_and_the_service_route_of_calls_out() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.core
        .set_trunks(t.now, vec![trunk("acme", PROV)], germany());
    let out = t.sent();
    let reg = &out[0].1;
    let ch = challenge("provider.test", "pn", Algorithm::Md5, false, None);
    t.recv(
        PROV,
        &reply(reg, 407, &[format!("Proxy-Authenticate: {ch}")]),
    );
    let out = t.sent();
    let again = only(&out, "REGISTER");
    let creds = Credentials::parse(again.value(HeaderName::ProxyAuthorization).unwrap()).unwrap();
    assert!(verify(
        &creds,
        "REGISTER",
        &ha1(Algorithm::Md5, "home", "provider.test", "pw")
    ));
    // RFC 3608: the registrar's Service-Route is the route of our calls out.
    t.recv(
        PROV,
        &reply(
            again,
            200,
            &["Service-Route: <sip:edge.provider.test;lr>".into()],
        ),
    );
    assert_eq!(t.core.trunks(t.now)[0].state, "registered");
    let out = call_out(&mut t, "0301234567", "sr1");
    let inv = only(&out, "INVITE");
    assert_eq!(
        inv.value(HeaderName::Route),
        Some("<sip:edge.provider.test;lr>")
    );
}
