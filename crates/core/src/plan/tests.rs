use super::settings::*;
use super::*;

fn user(name: &str, ext: Option<&str>) -> User {
    User::new(name, ext, "example.test", "pw")
}

fn users() -> Vec<User> {
    vec![
        user("alice", Some("201")),
        user("bob", Some("202")),
        user("carol", None),
    ]
}

fn build(settings: &PlanSettings) -> Result<Directory, String> {
    Directory::build(
        "example.test",
        &users(),
        &Numbering::default(),
        &FeatureCodes::default(),
        &CallSettings::default(),
        settings,
    )
    .map(|(d, _)| d)
}

fn group(name: &str, ext: Option<&str>, members: &[&str]) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        extension: ext.map(Into::into),
        strategy: Strategy::Parallel,
        members: members
            .iter()
            .map(|m| MemberSpec::Target(m.to_string()))
            .collect(),
        ring_time: None,
        timeout: None,
        fallback: None,
    }
}

fn rule(mask: &str, action: RuleAction) -> RuleSpec {
    RuleSpec {
        mask: Some(mask.into()),
        regex: None,
        action,
        strip: 0,
        prefix: String::new(),
        target: None,
        status: None,
        reason: None,
        providers: vec![],
    }
}

#[test]
fn names_extensions_and_groups() {
    let d = build(&PlanSettings {
        groups: vec![group("sales", Some("300"), &["alice", "202"])],
        ..Default::default()
    })
    .unwrap();
    let local = |t: Target| Dialed::Local(t);
    assert_eq!(d.dial("alice", None), local(Target::User("alice".into())));
    assert_eq!(d.dial("201", None), local(Target::User("alice".into())));
    assert_eq!(d.dial("300", None), local(Target::Group("sales".into())));
    assert_eq!(d.dial("sales", None), local(Target::Group("sales".into())));
    assert_eq!(d.dial("999", None), Dialed::NotFound);
    assert_eq!(
        d.target("sip:202@example.test", None),
        local(Target::User("bob".into()))
    );
    assert_eq!(
        d.target("sip:x@elsewhere.test", None),
        Dialed::Remote("sip:x@elsewhere.test".into())
    );
}

#[test]
fn clashes_are_errors_naming_both_sides() {
    let e = build(&PlanSettings {
        groups: vec![group("alice", None, &[])],
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("user `alice`") && e.contains("group `alice`"),
        "{e}"
    );
    let e = build(&PlanSettings {
        groups: vec![group("sales", Some("201"), &[])],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("`201`") && e.contains("group `sales`"), "{e}");
    let e = build(&PlanSettings {
        speed_dials: vec![SpeedDialSpec {
            code: "202".into(),
            target: "alice".into(),
            user: None,
        }],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("speed dial `202`"), "{e}");
}

#[test]
fn numbering_plan_is_enforced() {
    let n = Numbering {
        extensions: Some("200-299".into()),
        extension_length: None,
    };
    let bad = vec![user("dave", Some("310"))];
    let e = Directory::build(
        "example.test",
        &bad,
        &n,
        &FeatureCodes::default(),
        &CallSettings::default(),
        &PlanSettings::default(),
    )
    .err()
    .unwrap();
    assert!(e.contains("310") && e.contains("200-299"), "{e}");
    let n = Numbering {
        extensions: None,
        extension_length: Some(4),
    };
    assert!(check_extension(&n, "2001").is_ok());
    assert!(check_extension(&n, "201").is_err());
    assert!(check_extension(&n, "20a1").is_err());
    let bad_range = Numbering {
        extensions: Some("300-200".into()),
        extension_length: None,
    };
    assert!(check_extension(&bad_range, "250").is_err());
}

#[test]
fn group_loops_are_errors() {
    let e = build(&PlanSettings {
        groups: vec![
            group("a", Some("301"), &["alice", "b"]),
            group("b", Some("302"), &["302"]),
        ],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("group loop") && e.contains("b -> b"), "{e}");
    let e = build(&PlanSettings {
        groups: vec![group("a", None, &["b"]), group("b", None, &["a"])],
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("a -> b -> a") || e.contains("b -> a -> b"),
        "{e}"
    );
    // Nesting without a loop is fine.
    build(&PlanSettings {
        groups: vec![
            group("a", None, &["b", "alice"]),
            group("b", None, &["bob"]),
        ],
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn feature_codes() {
    let d = build(&PlanSettings::default()).unwrap();
    assert_eq!(
        d.dial("*72202", Some("alice")),
        Dialed::Feature(FeatureRequest::Forward(
            ForwardKind::Always,
            Some("202".into())
        ))
    );
    assert_eq!(
        d.dial("*73", Some("alice")),
        Dialed::Feature(FeatureRequest::Forward(ForwardKind::Always, None))
    );
    assert_eq!(
        d.dial("*78", Some("alice")),
        Dialed::Feature(FeatureRequest::Dnd(true))
    );
    assert!(matches!(
        d.dial("*72", Some("alice")),
        Dialed::Reject(484, _)
    ));
    // Only local callers use feature codes.
    assert_eq!(d.dial("*78", None), Dialed::NotFound);
    let bad = FeatureCodes {
        dnd_on: "78".into(),
        ..Default::default()
    };
    let e = Directory::build(
        "example.test",
        &users(),
        &Numbering::default(),
        &bad,
        &CallSettings::default(),
        &PlanSettings::default(),
    )
    .err()
    .unwrap();
    assert!(e.contains("`78`"), "{e}");
}

#[test]
fn speed_dials_user_first() {
    let d = build(&PlanSettings {
        speed_dials: vec![
            SpeedDialSpec {
                code: "11".into(),
                target: "bob".into(),
                user: None,
            },
            SpeedDialSpec {
                code: "11".into(),
                target: "sip:mum@elsewhere.test".into(),
                user: Some("alice".into()),
            },
        ],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        d.dial("11", Some("alice")),
        Dialed::Remote("sip:mum@elsewhere.test".into())
    );
    assert_eq!(
        d.dial("11", Some("bob")),
        Dialed::Local(Target::User("bob".into()))
    );
    assert_eq!(d.dial("11", None), Dialed::NotFound);
}

#[test]
fn rules_rewrite_route_and_reject() {
    let mut strip = rule("+4930123456XXX", RuleAction::Rewrite);
    strip.strip = 11;
    let mut out = rule("0.", RuleAction::Remote);
    out.strip = 1;
    out.prefix = "+49".into();
    out.target = Some("sip:${number}@198.18.0.7".into());
    let mut premium = rule("0900.", RuleAction::Reject);
    premium.status = Some(403);
    premium.reason = Some("Premium Numbers Barred".into());
    let d = build(&PlanSettings {
        rules: vec![premium, strip, out],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        d.dial("+4930123456201", None),
        Dialed::Local(Target::User("alice".into()))
    );
    assert_eq!(
        d.dial("030555", Some("bob")),
        Dialed::Remote("sip:+4930555@198.18.0.7".into())
    );
    assert_eq!(
        d.dial("030555", None),
        Dialed::NotFound,
        "no relay for outsiders"
    );
    assert_eq!(
        d.dial("09001234", Some("bob")),
        Dialed::Reject(403, "Premium Numbers Barred".into())
    );
    let bad = build(&PlanSettings {
        rules: vec![rule("0.", RuleAction::Remote)],
        ..Default::default()
    })
    .unwrap_err();
    assert!(bad.contains("rule 1") && bad.contains("target"), "{bad}");
}

#[test]
fn merged_settings_prefer_the_store() {
    let file = PlanSettings {
        groups: vec![group("sales", Some("300"), &["alice"])],
        forwards: vec![ForwardSpec {
            user: "bob".into(),
            busy: Some("alice".into()),
            ..Default::default()
        }],
        rules: vec![rule("1X", RuleAction::Local)],
        ..Default::default()
    };
    let stored = PlanSettings {
        groups: vec![group("sales", Some("300"), &["bob"])],
        rules: vec![rule("2X", RuleAction::Local)],
        ..Default::default()
    };
    let m = PlanSettings::merged(&file, &stored);
    assert_eq!(m.groups.len(), 1);
    assert_eq!(m.groups[0].members[0].target(), "bob");
    assert_eq!(m.forwards.len(), 1);
    assert_eq!(m.rules[0].mask.as_deref(), Some("1X"));
    assert_eq!(m.rules[1].mask.as_deref(), Some("2X"));
}

#[test]
fn local_only_users() {
    let calls = CallSettings {
        local_only: vec!["bob".into()],
        ..Default::default()
    };
    let (d, _) = Directory::build(
        "example.test",
        &users(),
        &Numbering::default(),
        &FeatureCodes::default(),
        &calls,
        &PlanSettings::default(),
    )
    .unwrap();
    assert!(d.may_call_outside("alice"));
    assert!(!d.may_call_outside("bob"));
}

#[test]
fn regex_rules() {
    let r = RuleSpec {
        mask: None,
        regex: Some(r"^8(\d{3})$".into()),
        action: RuleAction::Local,
        strip: 1,
        prefix: String::new(),
        target: None,
        status: None,
        reason: None,
        providers: vec![],
    };
    let d = build(&PlanSettings {
        rules: vec![r.clone()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        d.dial("8201", Some("bob")),
        Dialed::Local(Target::User("alice".into()))
    );
    assert_eq!(d.dial("82011", Some("bob")), Dialed::NotFound);
    let bad = RuleSpec {
        regex: Some("(".into()),
        ..r
    };
    let e = build(&PlanSettings {
        rules: vec![bad],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("bad pattern"), "{e}");
}

#[test]
fn feature_codes_are_configurable() {
    let codes = FeatureCodes {
        dnd_on: "#88".into(),
        forward_all: "*21".into(),
        forward_all_off: String::new(),
        ..Default::default()
    };
    let (d, _) = Directory::build(
        "example.test",
        &users(),
        &Numbering::default(),
        &codes,
        &CallSettings::default(),
        &PlanSettings::default(),
    )
    .unwrap();
    assert_eq!(
        d.dial("#88", Some("alice")),
        Dialed::Feature(FeatureRequest::Dnd(true))
    );
    assert_eq!(
        d.dial("*21202", Some("alice")),
        Dialed::Feature(FeatureRequest::Forward(
            ForwardKind::Always,
            Some("202".into())
        ))
    );
    // The old default no longer means anything, and a turned-off code is gone.
    assert_eq!(d.dial("*78", Some("alice")), Dialed::NotFound);
    assert_eq!(d.dial("*73", Some("alice")), Dialed::NotFound);
}
