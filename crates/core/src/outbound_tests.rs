//! Registrations through edge proxies (Path, RFC 3327) and registered flows (outbound,
//! RFC 5626), in virtual time.

use super::*;

const EDGE: &str = "127.0.0.1:5099";
const NAT: &str = "127.0.0.9:40000";

impl T {
    /// A REGISTER for alice with `extra` headers and `contact` (the whole header value),
    /// arriving from `src` with its Via naming `via`; the final answer.
    fn register_raw(&mut self, via: &str, src: &str, contact: &str, extra: &[&str]) -> Message {
        let branch = self.branch();
        let mut r = Req {
            method: "REGISTER",
            uri: "sip:example.test",
            from_user: "alice",
            to: "<sip:alice@example.test>",
            src: via,
            call_id: "reg-ob",
            cseq: self.seq,
            branch,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            body: "",
        };
        r.extra.push(format!("Contact: {contact}"));
        let out = self.with_auth_from(&mut r, Algorithm::Md5, src);
        out.into_iter().last().expect("an answer").1
    }

    /// bob calls alice; the INVITE that leaves, and where it goes.
    fn call_alice(&mut self, call_id: &str) -> (Flow, Message) {
        let out = self.invite("bob", BOB, "sip:alice@example.test", call_id);
        out.into_iter()
            .find(|(_, m)| m.method() == Some(Method::Invite))
            .expect("an INVITE toward alice")
    }
}

#[test]
fn a_path_is_refused_without_support_and_followed_with_it() {
    let mut t = T::new();
    let contact = "<sip:alice@192.0.2.10:5062>";
    let path = format!("Path: <sip:{EDGE};lr>");
    let no = t.register_raw(EDGE, EDGE, contact, &[&path]);
    assert_eq!(no.status(), Some(420));
    assert_eq!(no.value(HeaderName::Unsupported), Some("path"));

    let ok = t.register_raw(EDGE, EDGE, contact, &[&path, "Supported: path"]);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.value(HeaderName::Path),
        Some(format!("<sip:{EDGE};lr>").as_str())
    );
    let regs = t.core.registrations(t.now);
    assert_eq!(regs[0].path, vec![format!("sip:{EDGE};lr")]);

    // A call for alice goes to the edge proxy, routed by the Path, with her contact as
    // Request-URI.
    let (flow, inv) = t.call_alice("path-1");
    assert_eq!(flow.remote, addr(EDGE));
    assert_eq!(inv.uri_str(), "sip:alice@192.0.2.10:5062");
    assert_eq!(
        inv.value(HeaderName::Route),
        Some(format!("<sip:{EDGE};lr>").as_str())
    );
}

#[test]
fn an_outbound_flow_is_its_own_binding_and_is_used_whatever_the_contact() {
    let mut t = T::new();
    let c1 = "<sip:alice@10.0.0.5:5062;ob>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"";
    let ok = t.register_raw("10.0.0.5:5062", NAT, c1, &["Supported: outbound, path"]);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.value(HeaderName::Require), Some("outbound"));
    let regs = t.core.registrations(t.now);
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].reg_id, Some(1));
    assert_eq!(
        regs[0].instance.as_deref(),
        Some("<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>")
    );
    // The phone keeps its flow alive itself: no OPTIONS pings.
    t.advance(Duration::from_secs(120));
    assert_eq!(t.core.counters.registrar.nat_pings_sent, 0);
    assert!(t.sent().is_empty());

    // The phone comes back with another Contact (new local port) for the same flow: the
    // binding is replaced, not added.
    let c2 = c1.replace("10.0.0.5:5062", "10.0.0.5:5070");
    let ok = t.register_raw("10.0.0.5:5070", NAT, &c2, &["Supported: outbound"]);
    assert_eq!(ok.status(), Some(200));
    let regs = t.core.registrations(t.now);
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert!(regs[0].contact.contains("10.0.0.5:5070"));
    assert!(t
        .stash
        .iter()
        .any(|a| matches!(a, Action::DeleteBinding { contact, .. } if contact.contains("5062"))));

    // Calls go over the registered flow (the NAT's address), never to the Contact.
    let (flow, inv) = t.call_alice("ob-1");
    assert_eq!(flow.remote, addr(NAT));
    assert_eq!(inv.uri_str(), "sip:alice@10.0.0.5:5070;ob");
}

#[test]
fn outbound_behind_a_proxy_without_outbound_support_gets_439() {
    let mut t = T::new();
    let c = "<sip:alice@10.0.0.5:5062;ob>;reg-id=1;+sip.instance=\"<urn:uuid:1>\"";
    // Two Vias (a proxy in between) and no Path marked `ob`.
    let r = t.register_raw(
        EDGE,
        EDGE,
        c,
        &[
            "Supported: outbound",
            "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKua1",
        ],
    );
    assert_eq!(r.status(), Some(439));
}

#[test]
fn require_path_outbound_and_gruu_are_understood() {
    let mut t = T::new();
    let r = t.register_raw(
        ALICE,
        ALICE,
        &format!("<sip:alice@{ALICE}>"),
        &[
            "Require: path, outbound, gruu",
            "Supported: path, outbound, gruu",
        ],
    );
    assert_eq!(r.status(), Some(200));
    let r = t.register_raw(
        ALICE,
        ALICE,
        &format!("<sip:alice@{ALICE}>"),
        &["Require: sec-agree"],
    );
    assert_eq!(r.status(), Some(420));
    assert_eq!(r.value(HeaderName::Unsupported), Some("sec-agree"));
}
