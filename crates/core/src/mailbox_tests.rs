//! Messages that wait, in virtual time: kept once the store has them (202), delivered to the
//! next phone that registers with their sender and Date, a silent phone counted as failed
//! after `answer_within`, the per-user bound dropping the oldest, a store failure told to
//! the sender, outsiders learning nothing, and messages restored after a restart.

use super::*;
use crate::mailbox::{MailboxSettings, WaitingMessage};

impl T {
    /// alice sends bob a MESSAGE with `text`; what came back (and the store's request).
    fn message_to_bob(
        &mut self,
        text: &'static str,
        call_id: &'static str,
    ) -> Vec<(Flow, Message)> {
        let mut r = self.req(
            "MESSAGE",
            "sip:bob@example.test",
            "alice",
            "<sip:bob@example.test>",
            ALICE,
            call_id,
        );
        r.body = text;
        self.with_auth(&mut r, Algorithm::Md5)
    }

    /// The messages the core asked the store to keep, since the last call.
    fn kept(&mut self) -> Vec<WaitingMessage> {
        let mut out = vec![];
        self.stash.retain(|a| match a {
            Action::StoreMessage(m) => {
                out.push(m.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// bob's phone registers; everything sent (the 200, and what waited for him).
    fn bob_registers(&mut self) -> Vec<(Flow, Message)> {
        let mut r = self.req(
            "REGISTER",
            "sip:example.test",
            "bob",
            "<sip:bob@example.test>",
            BOB,
            "reg-bob",
        );
        self.with_auth(&mut r, Algorithm::Md5)
    }

    fn deleted(&mut self) -> Vec<u64> {
        let mut out = vec![];
        self.stash.retain(|a| match a {
            Action::DeleteMessage { id } => {
                out.push(*id);
                false
            }
            _ => true,
        });
        out
    }
}

fn status_to(out: &[(Flow, Message)], who: &str) -> Vec<u16> {
    out.iter()
        .filter(|(f, m)| f.remote == addr(who) && !m.is_request())
        .filter_map(|(_, m)| m.status())
        .collect()
}

#[test]
fn a_message_for_an_offline_user_waits_and_goes_to_the_next_phone() {
    let mut t = T::new();
    let out = t.message_to_bob("hello bob", "m1");
    assert!(
        status_to(&out, ALICE).is_empty(),
        "no answer before the store has it"
    );
    let kept = t.kept();
    assert_eq!(kept.len(), 1);
    let m = &kept[0];
    assert_eq!(m.user, "bob");
    assert!(m.from.contains("sip:alice@example.test") && !m.from.contains("tag="));
    assert_eq!(m.body, b"hello bob");
    t.core.handle_message_stored(t.now, m.id, true);
    let out = t.sent();
    assert_eq!(status_to(&out, ALICE), vec![202]);
    assert_eq!(t.core.waiting_messages()[0].count, 1);
    // bob's phone registers: the message goes to it, from alice, with a Date.
    let out = t.bob_registers();
    let deliver = out
        .iter()
        .find(|(f, m)| f.remote == addr(BOB) && m.method_str() == "MESSAGE")
        .expect("delivered at registration");
    assert!(deliver
        .1
        .from()
        .unwrap()
        .uri
        .raw
        .contains("alice@example.test"));
    assert!(deliver.1.value(HeaderName::Date).is_some());
    assert_eq!(deliver.1.body(), b"hello bob");
    t.recv(BOB, &answer(&deliver.1, 200, "OK", "b"));
    t.sent();
    assert_eq!(t.deleted(), vec![m.id]);
    assert!(t.core.waiting_messages().is_empty());
}

#[test]
fn a_silent_phone_counts_as_failed_and_a_late_answer_unkeeps_it() {
    let mut t = T::new();
    t.register("bob", BOB, &[]);
    let out = t.message_to_bob("are you there", "m2");
    assert!(out
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method_str() == "MESSAGE"));
    t.advance(Duration::from_secs(4));
    t.sent();
    assert!(t.kept().is_empty());
    t.advance(Duration::from_secs(1));
    t.sent();
    let kept = t.kept();
    assert_eq!(kept.len(), 1, "kept after answer_within (5 s)");
    t.core.handle_message_stored(t.now, kept[0].id, true);
    let out = t.sent();
    assert_eq!(status_to(&out, ALICE), vec![202]);
}

#[test]
fn the_per_user_bound_drops_the_oldest_and_a_store_failure_is_told() {
    let mut t = T::new();
    t.core.set_mailbox(MailboxSettings {
        per_user: 2,
        ..Default::default()
    });
    let mut ids = vec![];
    for (text, id) in [("one", "c1"), ("two", "c2"), ("three", "c3")] {
        t.message_to_bob(text, id);
        let m = t.kept().remove(0);
        t.core.handle_message_stored(t.now, m.id, true);
        t.sent();
        ids.push(m.id);
    }
    assert_eq!(t.deleted(), vec![ids[0]], "the oldest went");
    let v = &t.core.waiting_messages()[0];
    assert_eq!(v.count, 2);
    // The store could not keep a message: the sender hears it.
    t.message_to_bob("four", "c4");
    let m = t.kept().remove(0);
    t.core.handle_message_stored(t.now, m.id, false);
    let out = t.sent();
    assert_eq!(status_to(&out, ALICE), vec![500]);
}

#[test]
fn outsiders_get_the_answer_of_an_unknown_name() {
    let mut t = T::new();
    let msg = "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:7300;branch=z9hG4bKo1\r\n\
Max-Forwards: 70\r\nFrom: <sip:eve@elsewhere.test>;tag=e1\r\nTo: <sip:bob@example.test>\r\n\
Call-ID: o1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
    t.recv("127.0.0.1:7300", msg);
    let out = t.sent();
    assert_eq!(status_to(&out, "127.0.0.1:7300"), vec![404]);
    assert!(t.kept().is_empty());
}

#[test]
fn messages_kept_before_a_restart_are_delivered_after_it() {
    let mut t = T::new();
    let m = WaitingMessage {
        id: 7,
        user: "bob".into(),
        from: "<sip:alice@example.test>".into(),
        date: "Sun, 06 Dec 2026 12:00:00 GMT".into(),
        content_type: "text/plain".into(),
        body: b"from before".to_vec(),
        stored_at: 1_800_000_000 - 60,
        source: "127.0.0.1".parse().unwrap(),
    };
    let old = WaitingMessage {
        id: 3,
        stored_at: 1_800_000_000 - 8 * 86400,
        ..m.clone()
    };
    t.core.restore_messages(t.now, vec![m, old]);
    t.sent();
    assert_eq!(t.deleted(), vec![3], "older than 7 days: dropped");
    let out = t.bob_registers();
    let d = out
        .iter()
        .find(|(_, m)| m.method_str() == "MESSAGE")
        .expect("delivered");
    assert_eq!(d.1.body(), b"from before");
    assert_eq!(
        d.1.value(HeaderName::Date),
        Some("Sun, 06 Dec 2026 12:00:00 GMT")
    );
    assert_eq!(d.1.value(HeaderName::ContentType), Some("text/plain"));
}
