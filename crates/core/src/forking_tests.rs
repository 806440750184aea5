//! Ring groups, forwarding, speed dials, feature codes, rules and redirects, in virtual time.

use super::*;
use crate::plan::settings::*;

const CAROL: &str = "127.0.0.1:5068";

impl T {
    fn plan(&mut self, settings: PlanSettings) {
        self.plan_with(settings, CallSettings::default());
    }

    fn plan_with(&mut self, settings: PlanSettings, calls: CallSettings) {
        let (d, _) = Directory::build(
            "example.test",
            &users(),
            &Numbering::default(),
            &FeatureCodes::default(),
            &calls,
            &settings,
        )
        .unwrap();
        self.core.set_plan(d);
    }

    /// INVITEs the core sent, by destination.
    fn invites(out: &[(Flow, Message)]) -> Vec<(SocketAddr, Message)> {
        out.iter()
            .filter(|(_, m)| m.method() == Some(Method::Invite))
            .map(|(f, m)| (f.remote, m.clone()))
            .collect()
    }

    fn upstream(&mut self) -> Vec<u16> {
        self.sent()
            .into_iter()
            .filter(|(f, m)| f.remote == addr(ALICE) && m.status().is_some())
            .filter_map(|(_, m)| m.status())
            .collect()
    }
}

fn group(name: &str, ext: &str, strategy: Strategy, members: &[&str]) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        extension: Some(ext.into()),
        strategy,
        members: members
            .iter()
            .map(|m| MemberSpec::Target(m.to_string()))
            .collect(),
        ring_time: Some(10),
        timeout: None,
        fallback: None,
    }
}

fn forward(user: &str) -> ForwardSpec {
    ForwardSpec {
        user: user.into(),
        ..Default::default()
    }
}

fn setup() -> T {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("bob", BOB, &[]);
    t.register("carol", CAROL, &[]);
    t
}

#[test]
fn parallel_group_rings_everyone_and_cancels_the_rest() {
    let mut t = setup();
    t.plan(PlanSettings {
        groups: vec![group("sales", "300", Strategy::Parallel, &["bob", "carol"])],
        ..Default::default()
    });
    let out = t.invite("alice", ALICE, "sip:300@example.test", "g1");
    let inv = T::invites(&out);
    assert_eq!(inv.len(), 2);
    let to_bob = inv.iter().find(|(a, _)| *a == addr(BOB)).unwrap().1.clone();
    let to_carol = inv
        .iter()
        .find(|(a, _)| *a == addr(CAROL))
        .unwrap()
        .1
        .clone();
    // The caller is asserted to both, and the group call is not a forwarding.
    assert_eq!(
        header_values(&to_bob, "P-Asserted-Identity"),
        vec!["<sip:alice@example.test>"]
    );
    assert!(header_values(&to_bob, "Diversion").is_empty());
    t.recv(BOB, &answer(&to_bob, 180, "Ringing", "b"));
    t.recv(CAROL, &answer(&to_carol, 180, "Ringing", "c"));
    t.recv(CAROL, &answer(&to_carol, 200, "OK", "c"));
    let out = t.sent();
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(200)));
    let cancel: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.method() == Some(Method::Cancel))
        .collect();
    assert_eq!(cancel.len(), 1);
    assert_eq!(cancel[0].0.remote, addr(BOB));
}

#[test]
fn sequential_group_moves_on_when_the_ring_time_is_over() {
    let mut t = setup();
    t.plan(PlanSettings {
        groups: vec![group(
            "desk",
            "301",
            Strategy::Sequential,
            &["bob", "carol"],
        )],
        ..Default::default()
    });
    let out = t.invite("alice", ALICE, "sip:desk@example.test", "g2");
    let inv = T::invites(&out);
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].0, addr(BOB));
    t.recv(BOB, &answer(&inv[0].1, 180, "Ringing", "b"));
    let _ = t.sent();
    t.advance(Duration::from_secs(9));
    assert!(T::invites(&t.sent()).is_empty(), "bob still rings");
    t.advance(Duration::from_secs(2));
    let out = t.sent();
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Cancel)));
    // carol's INVITE (and its retransmission, she has not answered yet).
    let inv2 = T::invites(&out);
    assert!(!inv2.is_empty() && inv2.iter().all(|(a, _)| *a == addr(CAROL)));
    // bob's 487 after our CANCEL goes nowhere; carol answers.
    t.recv(BOB, &answer(&inv[0].1, 487, "Request Terminated", "b"));
    assert!(t.upstream().is_empty());
    t.recv(CAROL, &answer(&inv2[0].1, 200, "OK", "c"));
    assert_eq!(t.upstream(), vec![200]);
}

#[test]
fn sequential_group_skips_a_busy_member_and_falls_back() {
    let mut t = setup();
    let mut g = group("desk", "301", Strategy::Sequential, &["bob"]);
    g.fallback = Some("carol".into());
    t.plan(PlanSettings {
        groups: vec![g],
        ..Default::default()
    });
    let out = t.invite("alice", ALICE, "sip:301@example.test", "g3");
    let inv = T::invites(&out);
    t.recv(BOB, &answer(&inv[0].1, 486, "Busy Here", "b"));
    let out = t.sent();
    let inv2 = T::invites(&out);
    assert_eq!(inv2.len(), 1);
    assert_eq!(inv2[0].0, addr(CAROL));
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(181)));
}

#[test]
fn rotating_group_starts_one_further_each_call() {
    let mut t = setup();
    t.plan(PlanSettings {
        groups: vec![group("hunt", "302", Strategy::Rotate, &["bob", "carol"])],
        ..Default::default()
    });
    let first = T::invites(&t.invite("alice", ALICE, "sip:302@example.test", "r1"));
    let second = T::invites(&t.invite("alice", ALICE, "sip:302@example.test", "r2"));
    assert_eq!(first[0].0, addr(BOB));
    assert_eq!(second[0].0, addr(CAROL));
}

#[test]
fn group_timeout_gives_up_with_480() {
    let mut t = setup();
    let mut g = group("all", "303", Strategy::Parallel, &["bob", "carol"]);
    g.timeout = Some(15);
    t.plan(PlanSettings {
        groups: vec![g],
        ..Default::default()
    });
    let inv = T::invites(&t.invite("alice", ALICE, "sip:all@example.test", "g4"));
    for (a, m) in &inv {
        t.recv(&a.to_string(), &answer(m, 180, "Ringing", "x"));
    }
    let _ = t.sent();
    t.advance(Duration::from_secs(16));
    let out = t.sent();
    let mut cancelled: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.method() == Some(Method::Cancel))
        .map(|(f, _)| f.remote)
        .collect();
    cancelled.sort();
    cancelled.dedup();
    assert_eq!(cancelled.len(), 2, "{cancelled:?}");
    let up: Vec<_> = out
        .iter()
        .filter(|(f, m)| f.remote == addr(ALICE) && m.status().is_some())
        .map(|(_, m)| m.status().unwrap())
        .collect();
    // (retransmitted by Timer G: this test's caller sends no ACK)
    assert!(!up.is_empty() && up.iter().all(|s| *s == 480), "{up:?}");
}

#[test]
fn unconditional_forward_carries_diversion_and_history() {
    let mut t = setup();
    let mut f = forward("bob");
    f.always = Some("carol".into());
    t.plan(PlanSettings {
        forwards: vec![f],
        ..Default::default()
    });
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "f1");
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(181)));
    let inv = T::invites(&out);
    assert_eq!(inv.len(), 1, "bob's phone does not ring");
    assert_eq!(inv[0].0, addr(CAROL));
    let m = &inv[0].1;
    assert_eq!(
        header_values(m, "Diversion"),
        vec!["<sip:bob@example.test>;reason=unconditional;counter=1"]
    );
    assert_eq!(
        header_values(m, "History-Info"),
        vec!["<sip:bob@example.test?Reason=SIP%3Bcause%3D302>;index=1, <sip:carol@example.test;cause=302>;index=1.1;mp=1"]
    );
    // The To header is the dialled one: a proxy does not change it.
    assert_eq!(m.to().unwrap().uri.raw, "sip:bob@example.test");
}

#[test]
fn busy_forward_and_no_answer_forward() {
    let mut t = setup();
    let mut f = forward("bob");
    f.busy = Some("carol".into());
    f.no_answer = Some("carol".into());
    f.no_answer_after = Some(5);
    t.plan(PlanSettings {
        forwards: vec![f],
        ..Default::default()
    });
    // Busy.
    let inv = T::invites(&t.invite("alice", ALICE, "sip:bob@example.test", "f2"));
    t.recv(BOB, &answer(&inv[0].1, 486, "Busy Here", "b"));
    let inv2 = T::invites(&t.sent());
    assert_eq!(inv2[0].0, addr(CAROL));
    assert_eq!(
        header_values(&inv2[0].1, "Diversion"),
        vec!["<sip:bob@example.test>;reason=user-busy;counter=1"]
    );
    // No answer within 5 s.
    let inv = T::invites(&t.invite("alice", ALICE, "sip:bob@example.test", "f3"));
    t.recv(BOB, &answer(&inv[0].1, 180, "Ringing", "b"));
    let _ = t.sent();
    t.advance(Duration::from_secs(6));
    let out = t.sent();
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Cancel)));
    let inv2: Vec<_> = T::invites(&out)
        .into_iter()
        .filter(|(_, m)| m.call_id() == "f3")
        .collect();
    assert_eq!(inv2[0].0, addr(CAROL));
    assert!(header_values(&inv2[0].1, "Diversion")[0].contains("reason=no-answer"));
}

#[test]
fn unavailable_forward_and_do_not_disturb() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    t.register("carol", CAROL, &[]);
    let mut f = forward("bob");
    f.unavailable = Some("103".into());
    let mut c = forward("carol");
    c.dnd = true;
    t.plan(PlanSettings {
        forwards: vec![f, c],
        ..Default::default()
    });
    // bob has no phone registered: the call goes to carol's extension... who is in DND.
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "f4");
    assert!(T::invites(&out).is_empty());
    let up: Vec<_> = out
        .iter()
        .filter(|(f, _)| f.remote == addr(ALICE))
        .filter_map(|(_, m)| m.status().map(|s| (s, m.reason().to_string())))
        .collect();
    assert!(
        up.contains(&(181, "Call Is Being Forwarded".into())),
        "{up:?}"
    );
    assert!(
        up.contains(&(486, "Busy Here (Do Not Disturb)".into())),
        "{up:?}"
    );
}

#[test]
fn forwarding_loops_are_stopped() {
    let mut t = setup();
    let mut b = forward("bob");
    b.always = Some("carol".into());
    let mut c = forward("carol");
    c.always = Some("bob".into());
    t.plan(PlanSettings {
        forwards: vec![b, c],
        ..Default::default()
    });
    let out = t.invite("alice", ALICE, "sip:bob@example.test", "f5");
    assert!(T::invites(&out).is_empty());
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(482)));
}

#[test]
fn speed_dials_and_rules() {
    let mut t = setup();
    let reject = RuleSpec {
        mask: Some("0900.".into()),
        regex: None,
        action: RuleAction::Reject,
        strip: 0,
        prefix: String::new(),
        target: None,
        status: Some(403),
        reason: Some("Premium Numbers Barred".into()),
        providers: vec![],
    };
    let mut rewrite = reject.clone();
    rewrite.mask = Some("+4930555XXX".into());
    rewrite.action = RuleAction::Rewrite;
    rewrite.strip = 8;
    rewrite.status = None;
    rewrite.reason = None;
    t.plan(PlanSettings {
        speed_dials: vec![SpeedDialSpec {
            code: "11".into(),
            target: "carol".into(),
            user: Some("alice".into()),
        }],
        rules: vec![reject.clone(), rewrite],
        ..Default::default()
    });
    let inv = T::invites(&t.invite("alice", ALICE, "sip:11@example.test", "s1"));
    assert_eq!(inv[0].0, addr(CAROL));
    // The rewritten number reaches extension 102.
    let inv = T::invites(&t.invite("alice", ALICE, "sip:+4930555102@example.test", "s2"));
    assert_eq!(inv[0].0, addr(BOB));
    let out = t.invite("alice", ALICE, "sip:09001234@example.test", "s3");
    let st = out.iter().find(|(_, m)| m.status() == Some(403)).unwrap();
    assert_eq!(st.1.reason(), "Premium Numbers Barred");
}

#[test]
fn feature_code_sets_forwarding_and_confirms_by_message() {
    let mut t = setup();
    let out = t.invite("alice", ALICE, "sip:*72102@example.test", "fc1");
    let fin = out
        .iter()
        .find(|(f, m)| f.remote == addr(ALICE) && m.status().is_some_and(|s| s >= 200))
        .unwrap();
    assert_eq!(fin.1.status(), Some(480));
    assert_eq!(fin.1.reason(), "Forwarding All Calls To 102");
    let msg = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Message))
        .unwrap();
    assert_eq!(msg.0.remote, addr(ALICE));
    assert_eq!(msg.1.body(), b"Forwarding all calls to 102.");
    // The change is handed to the store.
    assert!(t.stash.iter().any(|a| matches!(a, Action::SaveForward(f)
        if f.user == "alice" && f.always.as_deref() == Some("102"))));
    assert_eq!(t.core.plan.forward("alice").always.as_deref(), Some("102"));
    // Now a call to alice goes to bob.
    let inv = T::invites(&t.invite("carol", CAROL, "sip:alice@example.test", "fc2"));
    assert_eq!(inv[0].0, addr(BOB));
    // *73 clears it; an unknown target is refused.
    let out = t.invite("alice", ALICE, "sip:*73@example.test", "fc3");
    assert!(out
        .iter()
        .any(|(_, m)| m.reason() == "Forwarding Of All Calls Off"));
    let out = t.invite("alice", ALICE, "sip:*72999@example.test", "fc4");
    assert!(out.iter().any(|(_, m)| m.status() == Some(404)));
    assert!(t.core.plan.forward("alice").always.is_none());
}

#[test]
fn redirects_are_followed() {
    let mut t = setup();
    let inv = T::invites(&t.invite("alice", ALICE, "sip:bob@example.test", "x1"));
    let resp = answer(&inv[0].1, 302, "Moved Temporarily", "b")
        .replace("<sip:bob@127.0.0.1:5064>", "<sip:carol@example.test>");
    t.recv(BOB, &resp);
    let out = t.sent();
    // The 302 is ACKed and carol's phone rings; nothing final goes upstream.
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Ack)));
    let inv2 = T::invites(&out);
    assert_eq!(inv2.len(), 1);
    assert_eq!(inv2[0].0, addr(CAROL));
    assert!(out
        .iter()
        .all(|(f, m)| f.remote != addr(ALICE) || m.status().is_none_or(|s| s < 200)));
}

#[test]
fn caller_identity_and_permission_to_call_outside() {
    let mut t = setup();
    t.plan_with(
        PlanSettings {
            speed_dials: vec![SpeedDialSpec {
                code: "9".into(),
                target: "sip:far@198.18.0.20".into(),
                user: None,
            }],
            ..Default::default()
        },
        CallSettings {
            local_only: vec!["carol".into()],
            ..Default::default()
        },
    );
    // alice may call out; her phone's own P-Asserted-Identity is removed, and ours stays
    // inside the domain (RFC 3325 trust boundary).
    let branch = t.branch();
    let mut r = Req {
        method: "INVITE",
        uri: "sip:9@example.test",
        from_user: "alice",
        to: "<sip:9@example.test>",
        src: ALICE,
        call_id: "o1",
        cseq: 1,
        branch,
        extra: vec!["P-Asserted-Identity: <sip:boss@example.test>".into()],
        body: "v=0\r\n",
    };
    let out = t.with_auth(&mut r, Algorithm::Md5);
    let inv = T::invites(&out);
    assert_eq!(inv[0].0, addr("198.18.0.20:5060"));
    assert!(header_values(&inv[0].1, "P-Asserted-Identity").is_empty());
    // With Privacy: id neither.
    let branch = t.branch();
    let mut r = Req {
        call_id: "o2",
        branch,
        extra: vec!["Privacy: id".into()],
        ..r
    };
    r.cseq = 1;
    let inv = T::invites(&t.with_auth(&mut r, Algorithm::Md5));
    assert!(header_values(&inv[0].1, "P-Asserted-Identity").is_empty());
    // carol may not.
    let out = t.invite("carol", CAROL, "sip:9@example.test", "o3");
    assert!(out.iter().any(|(_, m)| m.status() == Some(403)));
}

#[test]
fn forwarding_to_a_group_and_to_a_uri_outside() {
    let mut t = setup();
    let mut b = forward("bob");
    b.always = Some("both".into());
    let mut c = forward("carol");
    c.busy = Some("sip:voicemail@198.18.0.30".into());
    t.plan_with(
        PlanSettings {
            forwards: vec![b, c],
            groups: vec![group(
                "both",
                "330",
                Strategy::Parallel,
                &["alice", "carol"],
            )],
            ..Default::default()
        },
        CallSettings::default(),
    );
    // bob -> group "both": carol's phone rings (alice, the caller, is left out).
    let inv = T::invites(&t.invite("alice", ALICE, "sip:bob@example.test", "fg1"));
    let to: Vec<_> = inv.iter().map(|(a, _)| *a).collect();
    assert_eq!(to, vec![addr(CAROL)]);
    // carol busy -> her voicemail outside the domain (she may call outside).
    let inv = T::invites(&t.invite("alice", ALICE, "sip:carol@example.test", "fg2"));
    t.recv(CAROL, &answer(&inv[0].1, 486, "Busy Here", "c"));
    let inv2 = T::invites(&t.sent());
    assert_eq!(inv2[0].0, addr("198.18.0.30:5060"));
    assert_eq!(inv2[0].1.uri_str(), "sip:voicemail@198.18.0.30");
}

#[test]
fn a_local_only_user_cannot_forward_outside() {
    let mut t = setup();
    let mut c = forward("carol");
    c.always = Some("sip:far@198.18.0.31".into());
    t.plan_with(
        PlanSettings {
            forwards: vec![c],
            ..Default::default()
        },
        CallSettings {
            local_only: vec!["carol".into()],
            ..Default::default()
        },
    );
    let out = t.invite("alice", ALICE, "sip:carol@example.test", "lo1");
    assert!(T::invites(&out).is_empty());
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(480)));
}

#[test]
fn nested_groups_ring_every_phone() {
    let mut t = setup();
    t.plan(PlanSettings {
        groups: vec![
            group("outer", "340", Strategy::Parallel, &["inner", "alice"]),
            group("inner", "341", Strategy::Sequential, &["bob", "carol"]),
        ],
        ..Default::default()
    });
    // Every phone of both groups but the caller's own.
    let inv = T::invites(&t.invite("carol", CAROL, "sip:340@example.test", "n1"));
    let mut to: Vec<_> = inv.iter().map(|(a, _)| *a).collect();
    to.sort();
    assert_eq!(to, vec![addr(ALICE), addr(BOB)]);
}

#[test]
fn every_forwarding_feature_code() {
    let mut t = setup();
    for (code, check) in [
        ("*90103", "Forwarding Calls When Busy To 103"),
        ("*92103", "Forwarding Unanswered Calls To 103"),
        (
            "*94103",
            "Forwarding Calls When No Phone Is Registered To 103",
        ),
    ] {
        let uri = format!("sip:{code}@example.test");
        let out = t.invite("bob", BOB, &uri, code);
        assert!(
            out.iter().any(|(_, m)| m.reason() == check),
            "{code}: {:?}",
            out.iter()
                .map(|(_, m)| m.reason().to_string())
                .collect::<Vec<_>>()
        );
    }
    let f = t.core.plan.forward("bob");
    assert_eq!(f.busy.as_deref(), Some("103"));
    assert_eq!(f.no_answer.as_deref(), Some("103"));
    assert_eq!(f.unavailable.as_deref(), Some("103"));
    for code in ["*91", "*93", "*95"] {
        let uri = format!("sip:{code}@example.test");
        t.invite("bob", BOB, &uri, code);
    }
    assert!(t.core.plan.forward("bob").is_empty());
}

#[test]
fn the_caller_does_not_ring_in_their_own_group_and_a_fallback_outlives_the_group_timer() {
    let mut t = setup();
    // bob rings 10 s, then the fallback; the group's 15 s are over while carol rings.
    let mut g = group("team", "350", Strategy::Sequential, &["alice", "bob"]);
    g.timeout = Some(15);
    g.fallback = Some("carol".into());
    let mut c = forward("carol");
    c.no_answer = Some("bob".into());
    c.no_answer_after = Some(30);
    t.plan(PlanSettings {
        groups: vec![g],
        forwards: vec![c],
        ..Default::default()
    });
    let inv = T::invites(&t.invite("alice", ALICE, "sip:team@example.test", "ct1"));
    assert_eq!(inv.len(), 1, "only bob rings, not alice herself");
    assert_eq!(inv[0].0, addr(BOB));
    t.recv(BOB, &answer(&inv[0].1, 180, "Ringing", "b"));
    let _ = t.sent();
    // bob's ring time is over after 10 s: carol rings, for her own 30 s.
    t.advance(Duration::from_secs(11));
    let out = t.sent();
    assert!(T::invites(&out).iter().any(|(a, _)| *a == addr(CAROL)));
    t.advance(Duration::from_secs(20));
    let out = t.sent();
    assert!(
        !out.iter()
            .any(|(f, m)| f.remote == addr(CAROL) && m.method() == Some(Method::Cancel)),
        "carol's ringing must not be cut by the group's timer"
    );
    assert!(out
        .iter()
        .all(|(f, m)| f.remote != addr(ALICE) || m.status().is_none_or(|s| s < 200)));
}

#[test]
fn redirects_stop_at_the_limit() {
    let mut t = setup();
    t.plan_with(
        PlanSettings::default(),
        CallSettings {
            redirect_limit: 1,
            ..Default::default()
        },
    );
    let moved = |m: &Message, to: &str| {
        answer(m, 302, "Moved Temporarily", "r").replace(
            "<sip:bob@127.0.0.1:5064>",
            &format!("<sip:{to}@example.test>"),
        )
    };
    let inv = T::invites(&t.invite("alice", ALICE, "sip:bob@example.test", "rl1"));
    t.recv(BOB, &moved(&inv[0].1, "carol"));
    let inv2 = T::invites(&t.sent());
    assert_eq!(inv2[0].0, addr(CAROL));
    // The second redirect is not followed: the 302 goes to the caller.
    t.recv(CAROL, &moved(&inv2[0].1, "bob"));
    let out = t.sent();
    assert!(T::invites(&out).is_empty());
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(302)));
}

/// bob's phone at 192.168.1.10:5060 behind a NAT that maps it to `nat`: registered, with
/// its private Via and Contact.
fn register_behind_nat(t: &mut T, nat: &str) {
    let branch = t.branch();
    let mut r = Req {
        method: "REGISTER",
        uri: "sip:example.test",
        from_user: "bob",
        to: "<sip:bob@example.test>",
        src: "192.168.1.10:5060",
        call_id: "nat-reg",
        cseq: 1,
        branch,
        extra: vec![],
        body: "",
    };
    // Sent by the phone (Via and Contact private), received from the NAT's address; the
    // answers go back to the NAT's address.
    let out = t.with_auth_from(&mut r, Algorithm::Md5, nat);
    assert_eq!(out[0].0.remote, addr(nat));
    assert_eq!(out[0].1.status(), Some(200));
}

#[test]
fn a_phone_behind_nat_is_reached_where_its_register_came_from() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    let nat = "198.18.0.50:40000";
    register_behind_nat(&mut t, nat);
    let inv = T::invites(&t.invite("alice", ALICE, "sip:bob@example.test", "nat-call"));
    assert_eq!(inv[0].0, addr(nat));
    // The Request-URI stays the Contact the phone registered.
    assert_eq!(inv[0].1.uri_str(), "sip:bob@192.168.1.10:5060");
}

#[test]
fn phones_behind_nat_are_pinged_and_dropped_when_they_stop_answering() {
    let mut t = T::new();
    t.register("alice", ALICE, &[]);
    let nat = "198.18.0.50:40000";
    register_behind_nat(&mut t, nat);
    // A phone that answers keeps its registration; alice (not behind NAT) is never pinged.
    for _ in 0..2 {
        t.advance(Duration::from_secs(26));
        let pings: Vec<_> = t
            .sent()
            .into_iter()
            .filter(|(_, m)| m.method() == Some(Method::Options))
            .collect();
        assert!(!pings.is_empty());
        assert!(pings.iter().all(|(f, _)| f.remote == addr(nat)));
        assert_eq!(pings[0].1.uri_str(), "sip:bob@192.168.1.10:5060");
        t.recv(nat, &answer(&pings[0].1, 200, "OK", "p"));
    }
    assert_eq!(t.core.location.lookup("bob", t.now).len(), 1);
    // It goes silent: after three unanswered pings its contact is removed.
    t.stash.clear();
    t.advance(Duration::from_secs(200));
    let _ = t.sent();
    assert!(t.core.location.lookup("bob", t.now).is_empty());
    assert!(t
        .stash
        .iter()
        .any(|a| matches!(a, Action::DeleteBinding { aor, .. } if aor == "bob")));
    assert_eq!(t.core.location.lookup("alice", t.now).len(), 1);
    assert!(t.core.counters.registrar.nat_pings_sent >= 5);
}

#[test]
fn a_caller_behind_nat_gets_its_contact_fixed_for_the_dialog() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let nat = "198.18.0.60:41000";
    // alice calls from 192.168.5.5:5070 behind a NAT that maps her to `nat`.
    let branch = t.branch();
    let mut r = Req {
        method: "INVITE",
        uri: "sip:bob@example.test",
        from_user: "alice",
        to: "<sip:bob@example.test>",
        src: "192.168.5.5:5070",
        call_id: "nat-caller",
        cseq: 1,
        branch,
        extra: vec![],
        body: "v=0\r\n",
    };
    let out = t.with_auth_from(&mut r, Algorithm::Md5, nat);
    let inv = T::invites(&out);
    assert_eq!(inv[0].0, addr(BOB));
    assert_eq!(
        inv[0].1.value(HeaderName::Contact),
        Some("<sip:alice@198.18.0.60:41000>")
    );
    // A caller that is not behind NAT keeps its Contact as it wrote it.
    let inv = T::invites(&t.invite("alice", ALICE, "sip:bob@example.test", "plain"));
    assert_eq!(
        inv[0].1.value(HeaderName::Contact),
        Some("<sip:alice@127.0.0.1:5062>")
    );
}

#[test]
fn a_phone_that_keeps_its_mapping_alive_itself_is_not_pinged() {
    let mut t = T::new();
    let nat = "198.18.0.50:40000";
    register_behind_nat(&mut t, nat);
    // A STUN Binding request (RFC 5389 header, magic cookie) every 20 s on the SIP port.
    let stun: Vec<u8> = [
        &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42][..],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12][..],
    ]
    .concat();
    for _ in 0..5 {
        t.advance(Duration::from_secs(20));
        t.core
            .handle_message(t.now, udp(nat), Bytes::from(stun.clone()));
    }
    // ... then a CRLF every 20 s for a while.
    for _ in 0..3 {
        t.advance(Duration::from_secs(20));
        t.core
            .handle_message(t.now, udp(nat), Bytes::from_static(b"\r\n\r\n"));
    }
    let out = t.sent();
    assert!(
        out.iter().all(|(_, m)| m.method() != Some(Method::Options)),
        "no ping while the phone keeps itself alive"
    );
    assert_eq!(
        t.core.counters.traffic.stun_answered, 5,
        "every STUN request answered"
    );
    // Silence from the phone: pings start again.
    t.advance(Duration::from_secs(60));
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| m.method() == Some(Method::Options) && f.remote == addr(nat)));
    assert_eq!(t.core.location.lookup("bob", t.now).len(), 1);
}
