//! Other domains: RFC 3263 lookups asked of the edge, fail-over between a domain's servers,
//! the inbound policy and the no-open-relay rules, in virtual time.

use super::*;
use crate::InboundPolicy;

const BETA1: &str = "127.0.0.1:6001";
const BETA2: &str = "127.0.0.1:6002";

impl T {
    /// The DNS lookups the core asked for since the last call.
    fn lookups(&mut self) -> Vec<(u64, DnsQuery)> {
        let mut out = vec![];
        self.stash.retain(|a| match a {
            Action::Resolve { id, query } => {
                out.push((*id, query.clone()));
                false
            }
            _ => true,
        });
        out
    }

    /// alice (authenticated) sends `method` to `uri`; everything sent.
    fn alice_to(
        &mut self,
        method: &'static str,
        uri: &'static str,
        call_id: &'static str,
    ) -> Vec<(Flow, Message)> {
        let branch = self.branch();
        let mut r = Req {
            method,
            uri,
            from_user: "alice",
            to: "<sip:bob@beta.test>",
            src: ALICE,
            call_id,
            cseq: 1,
            branch,
            extra: vec![],
            body: "",
        };
        self.with_auth(&mut r, Algorithm::Md5)
    }
}

fn targets(list: &[&str]) -> Vec<(Transport, SocketAddr)> {
    list.iter().map(|a| (Transport::Udp, addr(a))).collect()
}

#[test]
fn a_call_to_another_domain_asks_dns_and_fails_over_to_the_next_server() {
    let mut t = T::new();
    let out = t.alice_to("INVITE", "sip:bob@beta.test", "fed-1");
    assert!(
        out.iter().all(|(_, m)| m.method() != Some(Method::Invite)),
        "nothing rings before DNS"
    );
    let lookups = t.lookups();
    assert_eq!(lookups.len(), 1);
    let (id, q) = &lookups[0];
    assert_eq!(
        q,
        &DnsQuery {
            host: "beta.test".into(),
            port: None,
            transport: None
        }
    );
    t.core.handle_resolved(
        t.now,
        *id,
        targets(&[BETA1, BETA2]),
        Duration::from_secs(300),
    );
    let out = t.sent();
    let (f, inv) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Invite))
        .expect("the INVITE goes to the first server");
    assert_eq!(f.remote, addr(BETA1));
    assert_eq!(inv.uri_str(), "sip:bob@beta.test");
    assert!(
        inv.value(HeaderName::RecordRoute).is_some(),
        "we are its first hop"
    );
    assert!(
        header_values(inv, "P-Asserted-Identity").is_empty(),
        "no asserted identity across the trust boundary"
    );
    assert!(inv.value(HeaderName::ProxyAuthorization).is_none());
    // The first server is overloaded: the second gets the call.
    t.recv(BETA1, &answer(inv, 503, "Service Unavailable", "x"));
    let out = t.sent();
    let (f, inv2) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Invite))
        .expect("the INVITE goes to the next server");
    assert_eq!(f.remote, addr(BETA2));
    assert!(
        out.iter()
            .all(|(f, m)| f.remote != addr(ALICE) || m.status() != Some(503)),
        "the caller never sees the first server's 503"
    );
    t.recv(BETA2, &answer(inv2, 200, "OK", "b"));
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(200)));

    // Within the TTL the answer is reused: no new lookup, the INVITE leaves at once.
    let out = t.alice_to("INVITE", "sip:bob@beta.test", "fed-2");
    assert!(t.lookups().is_empty());
    assert!(out
        .iter()
        .any(|(f, m)| m.method() == Some(Method::Invite) && f.remote == addr(BETA1)));
}

#[test]
fn an_unreachable_server_is_skipped_and_a_domain_without_servers_gets_500() {
    let mut t = T::new();
    t.alice_to("MESSAGE", "sip:bob@beta.test", "fed-3");
    let (id, _) = t.lookups().remove(0);
    let tcp = vec![(Transport::Tcp, addr(BETA1)), (Transport::Tcp, addr(BETA2))];
    t.core
        .handle_resolved(t.now, id, tcp, Duration::from_secs(60));
    let out = t.sent();
    assert_eq!(out[0].0.remote, addr(BETA1));
    // The edge could not connect to the first: the request goes to the second.
    let key = t
        .core
        .tx
        .clients_iter()
        .find(|(_, c)| c.flow.remote == addr(BETA1))
        .map(|(k, _)| k)
        .unwrap();
    t.core.handle_send_failure(t.now, key);
    let out = t.sent();
    let (f, msg) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Message))
        .expect("sent to the next server");
    assert_eq!((f.remote, f.transport), (addr(BETA2), Transport::Tcp));
    t.recv_flow(*f, &answer(msg, 200, "OK", "b"));
    assert!(t.sent().iter().any(|(_, m)| m.status() == Some(200)));

    // No server at all.
    t.alice_to("INVITE", "sip:bob@nowhere.test", "fed-4");
    let (id, _) = t.lookups().remove(0);
    t.core.handle_resolved(t.now, id, vec![], Duration::ZERO);
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(500)));
}

#[test]
fn a_cancel_while_dns_is_asked_ends_the_call_with_487() {
    let mut t = T::new();
    t.alice_to("INVITE", "sip:bob@beta.test", "fed-5");
    let (id, _) = t.lookups().remove(0);
    let cancel = format!(
        "CANCEL sip:bob@beta.test SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKt2;rport\r\nMax-Forwards: 70\r\n\
From: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@beta.test>\r\nCall-ID: fed-5\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE, &cancel);
    let statuses: Vec<_> = t.sent().iter().filter_map(|(_, m)| m.status()).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&487),
        "{statuses:?}"
    );
    // The late answer rings nobody.
    t.core
        .handle_resolved(t.now, id, targets(&[BETA1]), Duration::from_secs(60));
    assert!(t.sent().is_empty());
}

#[test]
fn only_local_users_with_permission_go_out_and_nobody_relays_through_us() {
    let mut t = T::new();
    // Without credentials: challenged.
    let req = format!(
        "INVITE sip:bob@beta.test SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKo1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@beta.test>\r\nCall-ID: o-1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ALICE}>\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE, &req);
    assert!(t.sent().iter().any(|(_, m)| m.status() == Some(407)));
    // Someone of another domain through us to a third: refused, no lookup.
    let relay = req
        .replace("sip:alice@example.test", "sip:mallory@evil.test")
        .replace("z9hG4bKo1", "z9hG4bKo2");
    t.recv(ALICE, &relay);
    assert!(t.sent().iter().any(|(_, m)| m.status() == Some(403)));
    assert!(t.lookups().is_empty());
}

#[test]
fn callers_from_other_domains_reach_users_by_name_if_they_accept_it() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let invite = |uri: &str, cid: &str| {
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {BETA1};branch=z9hG4bK{cid};rport\r\nMax-Forwards: 70\r\n\
From: <sip:carl@beta.test>;tag=c\r\nTo: <{uri}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:carl@{BETA1}>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // By name: bob's phone rings, no challenge.
    t.recv(BETA1, &invite("sip:bob@example.test", "in1"));
    let out = t.sent();
    assert!(out
        .iter()
        .any(|(f, m)| m.method() == Some(Method::Invite) && f.remote == addr(BOB)));
    // By extension: not for outsiders.
    t.recv(BETA1, &invite("sip:102@example.test", "in2"));
    assert!(t.sent().iter().any(|(_, m)| m.status() == Some(404)));
    // bob stops accepting external calls.
    let mut users = users();
    users[1].external = false;
    t.core.set_users(users.clone());
    let (d, _) = crate::plan::Directory::build(
        "example.test",
        &users,
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    t.core.set_plan(d);
    t.recv(BETA1, &invite("sip:bob@example.test", "in3"));
    assert!(t.sent().iter().any(|(_, m)| m.status() == Some(404)));
    // Inbound closed: 403 for anyone from outside.
    t.core.cfg.inbound = InboundPolicy::Closed;
    t.recv(BETA1, &invite("sip:alice@example.test", "in4"));
    assert!(t.sent().iter().any(|(_, m)| m.status() == Some(403)));
}

#[test]
fn a_sips_call_never_leaves_over_anything_but_tls() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let out = t.invite("alice", ALICE, "sips:bob@example.test", "sips-1");
    assert!(
        out.iter().all(|(_, m)| m.method() != Some(Method::Invite)),
        "bob registered over UDP: not rung"
    );
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(480)));
}

#[test]
fn a_server_that_never_answers_is_given_up_for_the_next_one() {
    let mut t = T::new();
    t.alice_to("MESSAGE", "sip:bob@beta.test", "fed-6");
    let (id, _) = t.lookups().remove(0);
    t.core
        .handle_resolved(t.now, id, targets(&[BETA1, BETA2]), Duration::from_secs(60));
    let out = t.sent();
    assert_eq!(out[0].0.remote, addr(BETA1));
    // Silence from the first server until the transaction times out (Timer F, 32 s).
    t.advance(Duration::from_secs(33));
    let out = t.sent();
    let (f, msg) = out
        .iter()
        .find(|(f, m)| m.method() == Some(Method::Message) && f.remote == addr(BETA2))
        .expect("the MESSAGE goes to the second server after the timeout");
    assert!(
        out.iter().all(|(f, _)| f.remote != addr(ALICE)),
        "the caller hears nothing of the first server's silence"
    );
    t.recv_flow(*f, &answer(msg, 202, "Accepted", "b"));
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(202)));
}

#[test]
fn an_icmp_error_from_a_server_sends_the_request_to_the_next_one_at_once() {
    let mut t = T::new();
    t.alice_to("INVITE", "sip:bob@beta.test", "fed-7");
    let (id, _) = t.lookups().remove(0);
    t.core
        .handle_resolved(t.now, id, targets(&[BETA1, BETA2]), Duration::from_secs(60));
    let _ = t.sent();
    t.core.handle_unreachable(t.now, addr(BETA1));
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| m.method() == Some(Method::Invite) && f.remote == addr(BETA2)));
}

#[test]
fn a_to_tag_without_our_route_does_not_skip_authentication_or_the_policy() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    t.core.cfg.inbound = InboundPolicy::Closed;
    // From "our domain", with a To tag as if in a dialog, but no Route of ours.
    let forged = format!(
        "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {BETA1};branch=z9hG4bKforge;rport\r\nMax-Forwards: 70\r\n\
From: <sip:x@example.test>;tag=a\r\nTo: <sip:bob@example.test>;tag=b\r\nCall-ID: forge-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(BETA1, &forged);
    let out = t.sent();
    assert!(
        out.iter().all(|(_, m)| m.method() != Some(Method::Message)),
        "nothing reaches bob"
    );
    assert!(out.iter().any(|(_, m)| m.status() == Some(407)));
}

#[test]
fn a_route_naming_us_that_we_did_not_sign_relays_nothing() {
    let mut t = T::new();
    // Looks like an in-dialog request through us, to a number at some trunk's address; but
    // the Route entry carries no signature of ours for this Call-ID.
    let forged = "INVITE sip:+15551234@198.51.100.7 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKfr1;rport\r\n\
Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5060;lr;hw=0000000000000000>\r\nFrom: <sip:x@evil.test>;tag=a\r\n\
To: <sip:y@evil.test>;tag=b\r\nCall-ID: forged-route\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    t.core.handle_message(
        t.now,
        udp("198.51.100.9:5060"),
        Bytes::copy_from_slice(forged.as_bytes()),
    );
    let out = t.sent();
    assert!(
        out.iter()
            .all(|(f, _)| f.remote != addr("198.51.100.7:5060")),
        "nothing goes to the trunk"
    );
    assert!(out.iter().any(|(_, m)| m.status() == Some(403)));
}

#[test]
fn after_a_6xx_a_failed_branch_is_not_sent_to_the_domains_next_server() {
    // RFC 3261 §16.7 step 5: after a 6xx the proxy cancels what is pending and creates no
    // new branch in the context; a branch to another domain whose server then fails is not
    // sent again to the domain's next server (RFC 3263 §4.3).
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "six");
    let (_, to_bob) = out
        .iter()
        .find(|(f, m)| m.is_request() && f.remote == addr(BOB))
        .cloned()
        .expect("bob's phone rings");
    // A second branch of the same call, to another domain with two servers (as a hunt to
    // a forwarding target there adds one).
    let ctx = t.core.proxy.context_ids().next().expect("one context");
    let hop = crate::route::Hop {
        uri: "sip:carol@beta.test".into(),
        flow: udp(BETA1),
        route: vec![],
        alternates: vec![udp(BETA2)],
        trunk: None,
    };
    t.core.add_branches(t.now, ctx, vec![hop], &[]);
    let out = t.sent();
    let (_, to_beta) = out
        .iter()
        .find(|(f, m)| m.method() == Some(Method::Invite) && f.remote == addr(BETA1))
        .cloned()
        .expect("the INVITE goes to beta's first server");
    // bob declines everywhere; beta's branch has not answered, so its CANCEL is owed.
    t.recv(BOB, &answer(&to_bob, 603, "Decline", "b"));
    t.sent();
    // beta's first server is overloaded.
    t.recv(BETA1, &answer(&to_beta, 503, "Service Unavailable", "x"));
    let out = t.sent();
    assert!(
        out.iter()
            .all(|(f, m)| f.remote != addr(BETA2) || m.method() != Some(Method::Invite)),
        "no new branch after a 6xx: {out:?}"
    );
    assert!(
        out.iter()
            .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(603)),
        "the caller gets the 6xx: {out:?}"
    );
}
