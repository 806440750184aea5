//! Presence in virtual time: SUBSCRIBE answered with the state at once and on every change
//! (registration, PUBLISH, do-not-disturb), refresh, unsubscribe and expiry; PUBLISH with
//! entity tags; outsiders getting the same neutral answer whether the user exists or not,
//! unless the user allows them; the bounds.

use super::*;
use crate::presence::PresenceSettings;

impl T {
    /// alice subscribes to `uri`'s `event`; everything sent back.
    fn alice_subscribes(
        &mut self,
        uri: &'static str,
        event: &str,
        expires: u32,
        call_id: &'static str,
    ) -> Vec<(Flow, Message)> {
        let to = format!("<{uri}>");
        let mut r = self.req("SUBSCRIBE", uri, "alice", "", ALICE, call_id);
        let to: &'static str = Box::leak(to.into_boxed_str());
        r.to = to;
        r.extra.push(format!("Event: {event}"));
        r.extra.push(format!("Expires: {expires}"));
        self.with_auth(&mut r, Algorithm::Md5)
    }

    /// The NOTIFYs sent to `to`, answered 200.
    fn notifies(&mut self, out: &[(Flow, Message)], to: &str) -> Vec<Message> {
        let mut got: Vec<Message> = out
            .iter()
            .filter(|(f, m)| f.remote == addr(to) && m.method_str() == "NOTIFY" && m.is_request())
            .map(|(_, m)| m.clone())
            .collect();
        // Retransmissions (UDP) are the same NOTIFY.
        got.dedup_by_key(|m| (m.call_id().to_string(), m.cseq().map(|c| c.0)));
        for n in &got {
            self.recv(to, &answer(n, 200, "OK", "w"));
        }
        got
    }
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

fn state(m: &Message) -> String {
    header_values(m, "Subscription-State").join(",")
}

#[test]
fn a_watcher_sees_registrations_publications_and_do_not_disturb() {
    let mut t = T::new();
    let out = t.alice_subscribes("sip:bob@example.test", "presence", 600, "s1");
    let ok = out
        .iter()
        .find(|(_, m)| m.status() == Some(200))
        .expect("200 to SUBSCRIBE");
    assert!(header_values(&ok.1, "Expires") == vec!["600"]);
    let n = t.notifies(&out, ALICE);
    assert_eq!(n.len(), 1, "the state at once");
    assert!(
        body(&n[0]).contains("<basic>closed</basic>"),
        "bob has no phone"
    );
    assert!(state(&n[0]).starts_with("active;expires="));
    assert_eq!(
        n[0].value(HeaderName::ContentType),
        Some("application/pidf+xml")
    );
    // The NOTIFY is in the subscription's dialog: our tag from the 200, alice's tag back.
    let our_tag = ok.1.to().unwrap().tag().unwrap().to_string();
    assert_eq!(n[0].from().unwrap().tag(), Some(our_tag.as_str()));
    assert_eq!(n[0].to().unwrap().tag(), Some("ftalice"));

    t.register("bob", BOB, &[]);
    // Within a second of the last NOTIFY, the next waits for the rate.
    assert!(t.sent().iter().all(|(_, m)| m.method_str() != "NOTIFY"));
    t.advance(Duration::from_secs(1));
    let out = t.sent();
    let n = t.notifies(&out, ALICE);
    assert!(
        body(&n[0]).contains("<basic>open</basic>"),
        "{}",
        body(&n[0])
    );

    // bob publishes "away" (RFC 3903).
    t.advance(Duration::from_secs(2));
    let away = "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
entity=\"sip:bob@example.test\"><tuple id=\"a\"><status><basic>open</basic></status></tuple>\
<dm:person id=\"p\"><rpid:activities><rpid:away/></rpid:activities></dm:person></presence>";
    let mut p = t.req(
        "PUBLISH",
        "sip:bob@example.test",
        "bob",
        "<sip:bob@example.test>",
        BOB,
        "p1",
    );
    p.extra.push("Event: presence".into());
    p.extra.push("Expires: 300".into());
    p.body = away;
    let out = t.with_auth(&mut p, Algorithm::Md5);
    let ok = out
        .iter()
        .find(|(f, m)| f.remote == addr(BOB) && m.status() == Some(200))
        .expect("200 to PUBLISH");
    let etag = header_values(&ok.1, "SIP-ETag")[0].to_string();
    let n = t.notifies(&out, ALICE);
    assert!(body(&n[0]).contains("<rpid:away/>"), "{}", body(&n[0]));
    // A refresh with the tag and no body keeps it; an unknown tag is 412.
    let mut r = t.req(
        "PUBLISH",
        "sip:bob@example.test",
        "bob",
        "<sip:bob@example.test>",
        BOB,
        "p2",
    );
    r.extra.push("Event: presence".into());
    r.extra.push(format!("SIP-If-Match: {etag}"));
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert!(out.iter().any(|(_, m)| m.status() == Some(200)));
    let mut r = t.req(
        "PUBLISH",
        "sip:bob@example.test",
        "bob",
        "<sip:bob@example.test>",
        BOB,
        "p3",
    );
    r.extra.push("Event: presence".into());
    r.extra.push("SIP-If-Match: nope".into());
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert!(out.iter().any(|(_, m)| m.status() == Some(412)));
    // Nobody publishes for someone else.
    let mut r = t.req(
        "PUBLISH",
        "sip:bob@example.test",
        "alice",
        "<sip:bob@example.test>",
        ALICE,
        "p4",
    );
    r.extra.push("Event: presence".into());
    r.body = away;
    let out = t.with_auth(&mut r, Algorithm::Md5);
    assert!(out.iter().any(|(_, m)| m.status() == Some(403)));
}

#[test]
fn refresh_unsubscribe_and_expiry() {
    let mut t = T::new();
    let out = t.alice_subscribes("sip:bob@example.test", "presence", 60, "s2");
    let ok = out
        .iter()
        .find(|(_, m)| m.status() == Some(200))
        .unwrap()
        .1
        .clone();
    t.notifies(&out, ALICE);
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    // A refresh inside the dialog: 200 and the state again.
    let to = format!("<sip:bob@example.test>;tag={tag}");
    let mut r = t.req("SUBSCRIBE", "sip:127.0.0.1:5060", "alice", "", ALICE, "s2");
    r.to = Box::leak(to.clone().into_boxed_str());
    r.cseq = 5;
    r.extra.push("Event: presence".into());
    r.extra.push("Expires: 120".into());
    t.recv(ALICE, &r.text());
    let out = t.sent();
    assert!(out.iter().any(|(_, m)| m.status() == Some(200)));
    assert_eq!(t.notifies(&out, ALICE).len(), 1);
    // Left alone past its time: a last NOTIFY, terminated for timeout.
    t.advance(Duration::from_secs(130));
    let out = t.sent();
    let n = t.notifies(&out, ALICE);
    assert_eq!(n.len(), 1);
    assert_eq!(state(&n[0]), "terminated;reason=timeout");
    assert!(t.core.presence_subscriptions(t.now).is_empty());
    // Expires: 0 ends one at once.
    let out = t.alice_subscribes("sip:bob@example.test", "presence", 600, "s3");
    t.notifies(&out, ALICE);
    let tag = out
        .iter()
        .find(|(_, m)| m.status() == Some(200))
        .unwrap()
        .1
        .to()
        .unwrap()
        .tag()
        .unwrap()
        .to_string();
    let mut r = t.req("SUBSCRIBE", "sip:127.0.0.1:5060", "alice", "", ALICE, "s3");
    r.to = Box::leak(format!("<sip:bob@example.test>;tag={tag}").into_boxed_str());
    r.cseq = 9;
    r.extra.push("Event: presence".into());
    r.extra.push("Expires: 0".into());
    t.recv(ALICE, &r.text());
    let out = t.sent();
    let n = t.notifies(&out, ALICE);
    assert!(state(&n[0]).starts_with("terminated"));
    // Too short: 423 with Min-Expires.
    let out = t.alice_subscribes("sip:bob@example.test", "presence", 10, "s4");
    let r = out
        .iter()
        .find(|(_, m)| m.status() == Some(423))
        .expect("423");
    assert_eq!(header_values(&r.1, "Min-Expires"), vec!["60"]);
}

/// A SUBSCRIBE from another domain for `user`; the answers.
fn outsider_subscribes(t: &mut T, user: &str, call_id: &str) -> Vec<(Flow, Message)> {
    let src = "127.0.0.1:7400";
    let msg = format!(
        "SUBSCRIBE sip:{user}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\nFrom: <sip:eve@elsewhere.test>;tag=e1\r\nTo: <sip:{user}@example.test>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:eve@{src}>\r\nEvent: presence\r\nExpires: 600\r\n\
Content-Length: 0\r\n\r\n"
    );
    t.recv(src, &msg);
    t.sent()
}

#[test]
fn outsiders_cannot_tell_who_exists_unless_allowed() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let shape = |out: &[(Flow, Message)]| -> Vec<String> {
        out.iter()
            .map(|(_, m)| {
                let b = body(m).replace("bob", "X").replace("nobody", "X");
                format!(
                    "{} {} {b}",
                    m.status()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| m.method_str().to_string()),
                    state(m)
                )
            })
            .collect()
    };
    let a = outsider_subscribes(&mut t, "bob", "o1");
    let b = outsider_subscribes(&mut t, "nobody", "o2");
    assert_eq!(
        shape(&a),
        shape(&b),
        "the same answers for a registered user and nobody"
    );
    assert!(body(&a.iter().find(|(_, m)| m.is_request()).unwrap().1).contains("closed"));
    // bob allows eve: she sees him online.
    let mut s = PresenceSettings::default();
    s.allow
        .insert("bob".into(), vec!["eve@elsewhere.test".into()]);
    t.core.set_presence(s);
    let c = outsider_subscribes(&mut t, "bob", "o3");
    let n = c.iter().find(|(_, m)| m.is_request()).unwrap();
    assert!(body(&n.1).contains("<basic>open</basic>"));
}

#[test]
fn subscriptions_are_bounded_per_watcher_and_in_all() {
    let mut t = T::new();
    t.core.set_presence(PresenceSettings {
        per_watcher: 1,
        ..Default::default()
    });
    let out = t.alice_subscribes("sip:bob@example.test", "presence", 600, "b1");
    assert!(out.iter().any(|(_, m)| m.status() == Some(200)));
    let out = t.alice_subscribes("sip:carol@example.test", "presence", 600, "b2");
    assert!(out.iter().any(|(_, m)| m.status() == Some(403)));
    t.core.set_presence(PresenceSettings {
        max_subscriptions: 1,
        ..Default::default()
    });
    let out = t.alice_subscribes("sip:carol@example.test", "presence", 600, "b3");
    assert!(out.iter().any(|(_, m)| m.status() == Some(503)));
}

#[test]
fn a_busy_lamp_follows_bobs_call_from_the_proxys_own_table() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let out = t.alice_subscribes("sip:bob@example.test", "dialog", 600, "blf1");
    let n = t.notifies(&out, ALICE);
    assert_eq!(
        n[0].value(HeaderName::ContentType),
        Some("application/dialog-info+xml")
    );
    assert!(!body(&n[0]).contains("<dialog "), "no call yet");
    // carol calls bob: his phone rings.
    t.advance(Duration::from_secs(2));
    t.register("carol", "127.0.0.1:5068", &[]);
    let out = t.invite("carol", "127.0.0.1:5068", "sip:bob@example.test", "call-b");
    let to_bob = out
        .iter()
        .find(|(f, m)| f.remote == addr(BOB) && m.method_str() == "INVITE")
        .unwrap()
        .1
        .clone();
    let n = t.notifies(&out, ALICE);
    assert!(
        body(&n[0]).contains("<state>early</state>")
            && body(&n[0]).contains("direction=\"recipient\""),
        "{}",
        body(&n[0])
    );
    // bob answers: confirmed; presence would say on the phone.
    t.advance(Duration::from_secs(2));
    t.recv(BOB, &answer(&to_bob, 200, "OK", "bobtag"));
    let out = t.sent();
    let n = t.notifies(&out, ALICE);
    assert!(
        body(&n[0]).contains("<state>confirmed</state>"),
        "{}",
        body(&n[0])
    );
    let st = t.core.presence_of(t.now, "bob");
    assert_eq!(
        st.activity,
        Some(crate::presence::pidf::Activity::OnThePhone)
    );
    // carol hangs up: terminated.
    t.advance(Duration::from_secs(2));
    let mut bye = t.req(
        "BYE",
        "sip:bob@127.0.0.1:5064",
        "carol",
        "<sip:bob@example.test>;tag=bobtag",
        "127.0.0.1:5068",
        "call-b",
    );
    bye.cseq = 3;
    bye.extra.push(format!("Route: <sip:{SERVER};lr>"));
    t.recv("127.0.0.1:5068", &bye.text());
    let out = t.sent();
    let n = t.notifies(&out, ALICE);
    assert!(
        body(&n[0]).contains("<state>terminated</state>"),
        "{}",
        body(&n[0])
    );
    assert_eq!(t.core.presence_of(t.now, "bob").activity, None);
}

#[test]
fn a_colleague_picks_up_a_call_ringing_at_alice() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("carol", "127.0.0.1:5068", &[]);
    // bob calls alice; her phone rings.
    let out = t.invite("bob", BOB, "sip:alice@example.test", "pick-1");
    let to_alice = out
        .iter()
        .find(|(f, m)| f.remote == addr(ALICE) && m.method_str() == "INVITE")
        .unwrap()
        .1
        .clone();
    t.recv(ALICE, &answer(&to_alice, 180, "Ringing", "at"));
    t.sent();
    // carol dials *8 and alice's extension.
    let out = t.invite(
        "carol",
        "127.0.0.1:5068",
        "sip:*8101@example.test",
        "pick-2",
    );
    let picked = out
        .iter()
        .find(|(f, m)| f.remote == addr("127.0.0.1:5068") && m.status().is_some_and(|s| s >= 400))
        .expect("the pickup request is answered");
    assert!(
        picked.1.reason().contains("Picked Up"),
        "{}",
        picked.1.reason()
    );
    assert!(
        out.iter()
            .any(|(f, m)| f.remote == addr(ALICE) && m.method_str() == "CANCEL"),
        "alice stops ringing"
    );
    let to_carol = out
        .iter()
        .find(|(f, m)| f.remote == addr("127.0.0.1:5068") && m.method_str() == "INVITE")
        .expect("carol's phone gets bob's call")
        .1
        .clone();
    assert_eq!(to_carol.call_id(), "pick-1");
    assert!(header_values(&to_carol, "Call-Info")[0].contains("answer-after=0"));
    // carol answers: bob is connected to her.
    t.recv("127.0.0.1:5068", &answer(&to_carol, 200, "OK", "ct"));
    let out = t.sent();
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.status() == Some(200)));
    // Nothing rings at alice now: another pickup finds nothing.
    let out = t.invite(
        "carol",
        "127.0.0.1:5068",
        "sip:*8101@example.test",
        "pick-3",
    );
    assert!(out
        .iter()
        .any(|(_, m)| m.reason().contains("Nothing To Pick Up")));
}

#[test]
fn outsiders_are_bounded_per_source_whatever_their_from_says() {
    let mut t = T::new();
    t.core.set_presence(PresenceSettings {
        per_source: 1,
        ..Default::default()
    });
    let out = outsider_subscribes(&mut t, "bob", "ps1");
    assert!(out.iter().any(|(_, m)| m.status() == Some(200)));
    // Another name in From changes nothing: the source holds its share.
    let out = outsider_subscribes(&mut t, "carol", "ps2");
    assert!(
        out.iter().any(|(_, m)| m.status() == Some(503)),
        "{:?}",
        out.iter().map(|m| first_line(&m.1)).collect::<Vec<_>>()
    );
}
