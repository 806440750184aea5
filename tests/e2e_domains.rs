//! Several domains on one server, each with its own users: `example.test` (the main one, with
//! alice) and `other.test` (with its own alice and bob, added as `alice@other.test`). Each
//! domain is its own digest realm; other.test's alice is a different account from
//! example.test's, with a different password, and calls for her reach her phone only.

mod common;

use common::*;

const OTHER_ALICE: TestUser = TestUser {
    name: "alice",
    extension: "",
    password: "other-Alice-9",
};
const OTHER_BOB: TestUser = TestUser {
    name: "bob",
    extension: "",
    password: "other-Bob-8",
};

fn server() -> Server {
    let srv = Server::start(ServerOpts {
        users: vec![ALICE],
        extra_config: "domains = [\"other.test\"]\n".into(),
        ..ServerOpts::default()
    });
    for u in [OTHER_ALICE, OTHER_BOB] {
        let r = srv.cli_stdin(
            &[
                "user",
                "add",
                &format!("{}@other.test", u.name),
                "--password-stdin",
            ],
            &format!("{}\n", u.password),
        );
        assert!(r.success(), "user add failed: {}{}", r.stdout, r.stderr);
    }
    srv
}

/// Registers `user` of `domain` from a fresh port; the port.
fn register(srv: &Server, user: &TestUser, domain: &str) -> u16 {
    let port = free_port();
    srv.sipp(&format!("register_{}_{domain}", user.name), "register.xml")
        .port(port)
        .key("user", user.name)
        .key("domain", domain)
        .key("expires", "3600")
        .auth(user, domain)
        .run()
        .assert_ok();
    port
}

#[test]
fn each_domain_has_its_own_users_and_realm() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let srv = server();
    register(&srv, &ALICE, DOMAIN);
    let alice_other = register(&srv, &OTHER_ALICE, "other.test");
    register(&srv, &OTHER_BOB, "other.test");
    let users: Vec<String> = srv
        .registrations()
        .iter()
        .map(|r| r["user"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        users.contains(&"alice".to_string())
            && users.contains(&"alice@other.test".to_string())
            && users.contains(&"bob@other.test".to_string()),
        "{users:?}"
    );
    // example.test's alice cannot register as other.test's alice with her own password.
    srv.sipp("register_wrong_realm", "register_wrong_password.xml")
        .port(free_port())
        .key("user", "alice")
        .key("domain", "other.test")
        .key("expires", "3600")
        .auth(&ALICE, "other.test")
        .run()
        .assert_ok();

    // bob@other.test calls alice@other.test: her phone rings, not example.test's alice.
    let callee = srv
        .sipp("uas_other_alice", "uas_answer.xml")
        .port(alice_other)
        .spawn_listening();
    let caller = srv
        .sipp("uac_other_bob", "uac_call.xml")
        .port(free_port())
        .key("user", "bob")
        .key("callee", "alice")
        .key("domain", "other.test")
        .auth(&OTHER_BOB, "alice@other.test")
        .run();
    assert_both_ok(&caller, &callee.wait());

    // example.test's alice calls other.test's alice through the same server.
    let callee = srv
        .sipp("uas_other_alice_2", "uas_answer.xml")
        .port(alice_other)
        .spawn_listening();
    let caller = srv
        .sipp("uac_main_alice", "uac_call.xml")
        .port(free_port())
        .key("user", "alice")
        .key("callee", "alice")
        .replace(
            "INVITE sip:[callee]@[domain]",
            "INVITE sip:[callee]@other.test",
        )
        .replace(
            "To: <sip:[callee]@[domain]>",
            "To: <sip:[callee]@other.test>",
        )
        .replace("ACK sip:[callee]@[domain]", "ACK sip:[callee]@other.test")
        .auth(&ALICE, "alice@other.test")
        .run();
    assert_both_ok(&caller, &callee.wait());
}
