//! Browsers over SIP WebSocket (RFC 7118), in virtual time: registered over their own
//! connection with an `.invalid` contact, reached over that connection only (also inside a
//! dialog), and gone as soon as it closes.

use super::*;

const BROWSER: &str = "127.0.0.1:50000";
const CONTACT: &str = "sip:k3j5vq@h7d2a9xk.invalid;transport=ws";

/// The browser's connection to the web listener.
fn ws(conn: ConnId) -> Flow {
    Flow {
        transport: Transport::Ws,
        local: addr(WEB),
        remote: addr(BROWSER),
        conn: Some(conn),
    }
}

impl T {
    /// alice's browser registers as JsSIP does: outbound with an instance id, over `conn`.
    fn register_browser(&mut self, conn: ConnId) -> Message {
        self.arrive_on = Some(ws(conn));
        let branch = self.branch();
        let mut r = Req {
            method: "REGISTER",
            uri: "sip:example.test",
            from_user: "alice",
            to: "<sip:alice@example.test>",
            src: BROWSER,
            call_id: "browser-reg",
            cseq: self.seq,
            branch,
            extra: vec![
                format!(
                    "Contact: <{CONTACT}>;+sip.ice;reg-id=1;\
                     +sip.instance=\"<urn:uuid:6d3b1c1e-3e27-4a4e-9f5c-0b8f5e2b7a10>\";expires=600"
                ),
                "Supported: path, gruu, outbound".into(),
            ],
            body: "",
        };
        let out = self.with_auth(&mut r, Algorithm::Md5);
        out.into_iter().last().expect("an answer").1
    }
}

#[test]
fn a_browser_is_reached_over_its_websocket_inside_and_outside_dialogs() {
    let mut t = T::new();
    let ok = t.register_browser(7);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.value(HeaderName::Require), Some("outbound"));

    // bob (UDP) calls alice: the INVITE goes over the browser's connection, and both our
    // Record-Routes are there (UDP towards bob, WebSocket towards the browser).
    let out = t.invite("bob", BOB, "sip:alice@example.test", "ws-call");
    let (flow, inv) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Invite))
        .expect("an INVITE for the browser");
    assert_eq!(*flow, ws(7));
    assert_eq!(inv.uri_str(), CONTACT);
    let rr = header_values(inv, "Record-Route");
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(rr[0].contains(";transport=ws"), "{rr:?}");
    assert!(inv
        .top_via()
        .is_some_and(|v| v.raw.starts_with("SIP/2.0/WS ")));

    // Later bob hangs up: his BYE names the browser's contact and our route.
    let bye = format!(
        "BYE {CONTACT} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bKbye1;rport\r\n\
         Max-Forwards: 70\r\nRoute: <sip:{SERVER};lr>\r\n\
         From: <sip:bob@example.test>;tag=ftbob\r\nTo: <sip:alice@example.test>;tag=browser1\r\n\
         Call-ID: ws-call\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(BOB, &bye);
    let out = t.sent();
    let (flow, _) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Bye))
        .expect("the BYE goes on to the browser");
    assert_eq!(*flow, ws(7));
}

#[test]
fn a_closed_websocket_takes_its_registration_with_it() {
    let mut t = T::new();
    assert_eq!(t.register_browser(7).status(), Some(200));
    assert_eq!(t.core.registrations(t.now).len(), 1);
    t.stash.clear();

    t.core.handle_conn_closed(t.now, 7);
    assert!(t.core.registrations(t.now).is_empty());
    let _ = t.sent();
    assert!(
        t.stash
            .iter()
            .any(|a| matches!(a, Action::DeleteBinding { aor, .. } if aor == "alice")),
        "the store forgets it too"
    );
    // Another connection's closing would not have mattered; this one leaves alice offline.
    let out = t.invite("bob", BOB, "sip:alice@example.test", "ws-call-2");
    assert_eq!(out.last().and_then(|(_, m)| m.status()), Some(480));
}

#[test]
fn a_websocket_message_needs_no_content_length() {
    let mut t = T::new();
    // RFC 7118 §5: the WebSocket message frames the SIP message.
    let options = format!(
        "OPTIONS sip:{WEB} SIP/2.0\r\nVia: SIP/2.0/WS h7d2a9xk.invalid;branch=z9hG4bKo1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=o1\r\nTo: <sip:{WEB}>\r\n\
         Call-ID: ws-opt\r\nCSeq: 1 OPTIONS\r\n\r\n"
    );
    t.core.handle_message(t.now, ws(9), Bytes::from(options));
    let out = t.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, ws(9));
    assert_eq!(out[0].1.status(), Some(200));
}

/// The GRUUs in a REGISTER answer's Contact: (pub-gruu, temp-gruu).
fn gruus(ok: &Message) -> (String, String) {
    let contact = ok.value(HeaderName::Contact).expect("a Contact");
    let param = |name: &str| {
        contact
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no {name} in {contact}"))
            .to_string()
    };
    (param("pub-gruu"), param("temp-gruu"))
}

#[test]
fn an_instance_that_asks_gets_gruus_that_reach_it_and_only_it() {
    let mut t = T::new();
    let ok = t.register_browser(7);
    let (public, temp) = gruus(&ok);
    assert_eq!(
        public,
        "sip:alice@example.test;gr=urn:uuid:6d3b1c1e-3e27-4a4e-9f5c-0b8f5e2b7a10"
    );
    assert!(
        temp.starts_with("sip:tgruu.") && temp.ends_with("@example.test;gr"),
        "{temp}"
    );
    assert!(
        !temp.contains("alice"),
        "a temporary GRUU does not name the user: {temp}"
    );
    assert!(ok
        .value(HeaderName::Contact)
        .is_some_and(|c| c.contains("+sip.instance=\"<urn:uuid:6d3b1c1e")));
    // alice's desk phone (UDP, no instance) is registered too.
    t.arrive_on = None;
    assert_eq!(t.register("alice", ALICE, &[]).status(), Some(200));

    // A call to alice rings both; a call to either GRUU rings the browser only.
    let out = t.invite("bob", BOB, "sip:alice@example.test", "aor-call");
    let invites = out
        .iter()
        .filter(|(_, m)| m.method() == Some(Method::Invite))
        .count();
    assert_eq!(invites, 2);
    for (i, gruu) in [&public, &temp].into_iter().enumerate() {
        let out = t.invite("bob", BOB, gruu, &format!("gruu-call-{i}"));
        let flows: Vec<Flow> = out
            .iter()
            .filter(|(_, m)| m.method() == Some(Method::Invite))
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(flows, vec![ws(7)], "{gruu}");
    }

    // Once the browser is gone, its GRUUs lead nowhere: 480 for a caller of the domain.
    t.core.handle_conn_closed(t.now, 7);
    let out = t.invite("bob", BOB, &public, "gruu-call-gone");
    assert_eq!(out.last().and_then(|(_, m)| m.status()), Some(480));
    let out = t.invite(
        "bob",
        BOB,
        "sip:tgruu.0123456789abcdef@example.test;gr",
        "forged",
    );
    assert_eq!(out.last().and_then(|(_, m)| m.status()), Some(404));
}

#[test]
fn no_gruu_for_a_phone_that_does_not_ask() {
    let mut t = T::new();
    t.arrive_on = Some(ws(3));
    let ok = t.register(
        "alice",
        BROWSER,
        &[&format!(
            "Contact: <{CONTACT}>;+sip.instance=\"<urn:uuid:6d3b1c1e-3e27-4a4e-9f5c-0b8f5e2b7a10>\""
        )],
    );
    assert_eq!(ok.status(), Some(200));
    assert!(ok
        .value(HeaderName::Contact)
        .is_some_and(|c| !c.contains("gruu")));
    assert_eq!(
        ok.value(HeaderName::Require),
        None,
        "no reg-id, no outbound"
    );
}

#[test]
fn a_logged_in_page_gets_its_session_information_and_no_one_else_does() {
    let mut t = T::new();
    t.arrive_on = Some(ws(5));
    let accept = "Accept: application/vnd.hedgewitch.session+json".to_string();
    let branch = t.branch();
    let mut r = Req {
        method: "OPTIONS",
        uri: "sip:example.test",
        from_user: "alice",
        to: "<sip:example.test>",
        src: BROWSER,
        call_id: "session-1",
        cseq: 1,
        branch,
        extra: vec![accept.clone()],
        body: "",
    };
    // The challenge comes first: the directory is for users who logged in.
    let out = t.with_auth(&mut r, Algorithm::Md5);
    let ok = &out.last().expect("an answer").1;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.value(HeaderName::ContentType),
        Some("application/vnd.hedgewitch.session+json")
    );
    let info: serde_json::Value = serde_json::from_slice(ok.body()).expect("JSON");
    assert_eq!(info["user"], "alice");
    assert_eq!(info["extension"], "101");
    let names: Vec<&str> = info["directory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"], "by extension");

    // From another domain: refused, and a plain OPTIONS still gets the capabilities.
    let foreign = format!(
        "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bKf1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:mallory@elsewhere.test>;tag=m1\r\nTo: <sip:example.test>\r\n\
         Call-ID: session-2\r\nCSeq: 1 OPTIONS\r\n{accept}\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(BOB, &foreign);
    let out = t.sent();
    assert_eq!(out.last().and_then(|(_, m)| m.status()), Some(403));
    t.recv(
        BOB,
        &foreign
            .replace(&format!("{accept}\r\n"), "")
            .replace("session-2", "session-3"),
    );
    let out = t.sent();
    let ok = &out.last().expect("an answer").1;
    assert_eq!(ok.status(), Some(200));
    assert!(ok.body().is_empty());
}

#[test]
fn requests_inside_a_dialog_reach_a_browser_by_its_gruu() {
    let mut t = T::new();
    let (public, _) = gruus(&t.register_browser(7));
    // JsSIP's Contact in its dialogs is its public GRUU: the peer's ACK and BYE are
    // addressed to it, through our route.
    for (method, cseq) in [("ACK", 1), ("BYE", 2)] {
        let req = format!(
            "{method} {public} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bKg{cseq};rport\r\n\
             Max-Forwards: 70\r\nRoute: <sip:{SERVER};lr>\r\n\
             From: <sip:bob@example.test>;tag=ftbob\r\nTo: <sip:alice@example.test>;tag=browser1\r\n\
             Call-ID: gruu-dialog\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        );
        t.recv(BOB, &req);
        let out = t.sent();
        let (flow, m) = out
            .iter()
            .find(|(_, m)| m.method_str() == method)
            .unwrap_or_else(|| panic!("the {method} goes on"));
        assert_eq!(*flow, ws(7), "{method}");
        // A BYE is retargeted to the registered contact, as for any location lookup (RFC
        // 5627 §5.3); the ACK for a 2xx is forwarded statelessly as it is.
        let expected = if method == "BYE" {
            CONTACT
        } else {
            public.as_str()
        };
        assert_eq!(m.uri_str(), expected, "{method}");
    }
}

#[test]
fn another_user_cannot_take_over_a_browsers_host_name() {
    let mut t = T::new();
    assert_eq!(t.register_browser(7).status(), Some(200));
    // bob registers a contact with alice's browser's random host, from elsewhere.
    t.arrive_on = None;
    let ok = t.register("bob", BOB, &[&format!("Contact: <{CONTACT}>")]);
    assert_eq!(ok.status(), Some(200));
    // A request inside alice's dialog, to her contact, still reaches her connection.
    let bye = format!(
        "BYE {CONTACT} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB2};branch=z9hG4bKtake1;rport\r\n\
         Max-Forwards: 70\r\nRoute: <sip:{SERVER};lr>\r\n\
         From: <sip:carol@example.test>;tag=fc\r\nTo: <sip:alice@example.test>;tag=browser1\r\n\
         Call-ID: take-over\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(BOB2, &bye);
    let out = t.sent();
    let (flow, _) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Bye))
        .expect("the BYE goes on");
    assert_eq!(*flow, ws(7));
}
