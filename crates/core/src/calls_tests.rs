//! The call table and SDP rewriting for the media relay, in virtual time, with a relay edge
//! that only records what it is asked and answers at once, as the daemon's does.

use super::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the fake relay was asked, shared with the test.
#[derive(Default)]
pub(super) struct Asked {
    opened: Vec<RelayStream>,
    /// The addresses families each opened stream's pairs serve (caller-facing, callee-facing).
    families: Vec<[bool; 2]>,
    peers: Vec<(u64, Side, SocketAddr, SocketAddr)>,
    closed: Vec<u64>,
    counters: HashMap<u64, StreamCounters>,
    /// Port pairs it can still bind.
    room: usize,
    /// The next pair's RTP port.
    next_port: u16,
}

/// The relay's side of the edge: it binds nothing, but hands out ports while it has room.
pub(super) struct FakeRelay(Arc<Mutex<Asked>>);

impl T {
    /// Carries out the relay's actions (answering reserves and queries at once) and holds
    /// the others for `sent()`, until the core asks nothing more of the relay.
    pub(super) fn serve_relay(&mut self) {
        let Some(FakeRelay(asked)) = &self.relay else {
            return;
        };
        let asked = asked.clone();
        loop {
            let mut answered = false;
            for a in self.core.take_actions() {
                let mut k = asked.lock().unwrap();
                match a {
                    Action::ReserveRelayPorts { ipv6, count } => {
                        let n = count.min(k.room);
                        k.room -= n;
                        let first = k.next_port;
                        k.next_port += 2 * n as u16;
                        let ports = (0..n as u16).map(|i| first + 2 * i).collect();
                        drop(k);
                        self.core.handle_relay_reserved(self.now, ipv6, ports);
                        answered = true;
                    }
                    Action::OpenRelayStream { stream, ipv6 } => {
                        k.opened.push(stream);
                        k.families.push(ipv6);
                    }
                    Action::SetRelayPeer {
                        stream,
                        side,
                        rtp,
                        rtcp,
                        ..
                    } => k.peers.push((stream, side, rtp, rtcp)),
                    Action::CloseRelayStreams { streams, .. } => {
                        for s in &streams {
                            k.counters.remove(s);
                        }
                        // The ports come back: 2 per stream.
                        k.room += 2 * streams.len();
                        k.closed.extend(streams);
                    }
                    Action::QueryRelay { call_id, streams } => {
                        let packets = streams
                            .iter()
                            .filter_map(|s| k.counters.get(s))
                            .map(|c| c.packets[0] + c.packets[1])
                            .sum();
                        drop(k);
                        self.core.handle_relay_counters(self.now, &call_id, packets);
                        answered = true;
                    }
                    other => self.held.push(other),
                }
            }
            if !answered {
                break;
            }
        }
    }
}

/// alice's phone behind NAT: private address in Via, Contact and SDP; its packets arrive
/// from the NAT's public side.
const ALICE_PRIVATE: &str = "10.0.0.5:5062";
const ALICE_NAT: &str = "127.0.0.9:40000";

const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
m=video 0 RTP/AVP 99\r\n";
const ANSWER: &str = "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:bobbobbobbob\r\n\
m=video 0 RTP/AVP 99\r\n";

fn with_sdp(msg: &str, sdp: &str) -> String {
    msg.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    )
}

impl T {
    fn with_relay(room: usize, mode: RelayMode) -> (T, Arc<Mutex<Asked>>) {
        let mut t = T::new();
        t.core.cfg.relay.mode = mode;
        t.core.cfg.relay.timeout = Duration::from_secs(20);
        // Room for `room` streams (two pairs each).
        let asked = Arc::new(Mutex::new(Asked {
            room: 2 * room,
            next_port: 30000,
            ..Default::default()
        }));
        t.relay = Some(FakeRelay(asked.clone()));
        t.core.enable_relay(1000);
        t.serve_relay();
        t.register("bob", BOB, &[]);
        (t, asked)
    }

    /// alice (from `via`, arriving from `src`) calls bob with `body`; returns the INVITE bob
    /// got, if any, and everything else that was sent.
    fn call_bob(
        &mut self,
        via: &str,
        src: &str,
        body: &str,
        call_id: &str,
    ) -> (Option<Message>, Vec<(Flow, Message)>) {
        let branch = self.branch();
        let mut r = Req {
            method: "INVITE",
            uri: "sip:bob@example.test",
            from_user: "alice",
            to: "<sip:bob@example.test>",
            src: via,
            call_id,
            cseq: 1,
            branch,
            extra: vec![],
            body,
        };
        let out = self.with_auth_from(&mut r, Algorithm::Md5, src);
        let inv = out
            .iter()
            .find(|(f, m)| m.method() == Some(Method::Invite) && f.remote == addr(BOB))
            .map(|(_, m)| m.clone());
        (inv, out)
    }

    fn sent_to_alice(&mut self) -> Vec<Message> {
        self.sent()
            .into_iter()
            .filter(|(f, _)| f.remote == addr(ALICE_NAT))
            .map(|(_, m)| m)
            .collect()
    }
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

#[test]
fn a_caller_behind_nat_is_relayed_and_only_addresses_and_ports_change() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "relay-1");
    let inv = inv.expect("bob is rung");
    // The offer names the relay's callee-facing port at our address; the refused video
    // stream stays refused; the crypto attribute is untouched.
    let expected = OFFER
        .replace("c=IN IP4 10.0.0.5", "c=IN IP4 127.0.0.1")
        .replace("m=audio 4000", "m=audio 30002");
    assert_eq!(body(&inv), expected);
    {
        let a = asked.lock().unwrap();
        assert_eq!(a.opened.len(), 1, "one stream for the one live m= line");
        assert_eq!(
            a.peers,
            vec![(
                1,
                Side::Caller,
                addr("10.0.0.5:4000"),
                addr("10.0.0.5:4001")
            )]
        );
    }
    let views = t.core.calls(t.now, |_| StreamCounters::default());
    assert_eq!(views.len(), 1);
    assert_eq!((views[0].media, views[0].state), ("relayed", "ringing"));

    // bob's answer goes to alice with the caller-facing port.
    t.recv(BOB, &with_sdp(&answer(&inv, 200, "OK", "b"), ANSWER));
    let ok = t
        .sent_to_alice()
        .into_iter()
        .find(|m| m.status() == Some(200))
        .expect("200 to alice");
    assert_eq!(
        body(&ok),
        ANSWER.replace("m=audio 5000", "m=audio 30000"),
        "our address is bob's here (all on loopback); only the port changes"
    );
    assert!(body(&ok).contains("inline:bobbobbobbob"));
    assert!(asked.lock().unwrap().peers.contains(&(
        1,
        Side::Callee,
        addr("127.0.0.1:5000"),
        addr("127.0.0.1:5001")
    )));
    assert_eq!(
        t.core.calls(t.now, |_| StreamCounters::default())[0].state,
        "answered"
    );

    // alice hangs up: the relay's stream is closed and the call forgotten.
    let bye = format!(
        "BYE sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE_PRIVATE};branch=z9hG4bKbye9;rport\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>;tag=b\r\n\
Call-ID: relay-1\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE_NAT, &bye);
    assert!(t
        .sent()
        .iter()
        .any(|(f, m)| f.remote == addr(BOB) && m.method() == Some(Method::Bye)));
    assert_eq!(asked.lock().unwrap().closed, vec![1]);
    assert!(t
        .core
        .calls(t.now, |_| StreamCounters::default())
        .is_empty());
}

#[test]
fn phones_that_reach_each_other_are_not_relayed_in_auto_mode() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    let offer = OFFER.replace("10.0.0.5", "127.0.0.1");
    let (inv, _) = t.call_bob(ALICE, ALICE, &offer, "direct-1");
    assert_eq!(body(&inv.unwrap()), offer, "SDP passed as it is");
    assert!(asked.lock().unwrap().opened.is_empty());
    assert_eq!(
        t.core.calls(t.now, |_| StreamCounters::default())[0].media,
        "direct"
    );

    // `always` relays the same call.
    let (mut t, asked) = T::with_relay(10, RelayMode::Always);
    let (inv, _) = t.call_bob(ALICE, ALICE, &offer, "direct-2");
    assert!(body(&inv.unwrap()).contains("m=audio 30002"));
    assert_eq!(asked.lock().unwrap().opened.len(), 1);

    // `never` does not, even behind NAT.
    let (mut t, asked) = T::with_relay(10, RelayMode::Never);
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "direct-3");
    assert_eq!(body(&inv.unwrap()), OFFER);
    assert!(asked.lock().unwrap().opened.is_empty());
}

#[test]
fn a_callee_behind_nat_is_relayed_too() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    // carol registers from behind NAT: private Contact, public source.
    let carol_nat = "127.0.0.9:41000";
    let branch = t.branch();
    let mut r = Req {
        method: "REGISTER",
        uri: "sip:example.test",
        from_user: "carol",
        to: "<sip:carol@example.test>",
        src: "10.0.0.7:5060",
        call_id: "reg-carol",
        cseq: 1,
        branch,
        extra: vec![],
        body: "",
    };
    let out = t.with_auth_from(&mut r, Algorithm::Md5, carol_nat);
    assert_eq!(out[0].1.status(), Some(200));
    let offer = OFFER.replace("10.0.0.5", "127.0.0.1");
    let branch = t.branch();
    let mut r = Req {
        method: "INVITE",
        uri: "sip:carol@example.test",
        from_user: "alice",
        to: "<sip:carol@example.test>",
        src: ALICE,
        call_id: "callee-nat",
        cseq: 1,
        branch,
        extra: vec![],
        body: &offer,
    };
    let out = t.with_auth(&mut r, Algorithm::Md5);
    let (_, inv) = out
        .iter()
        .find(|(f, m)| m.method() == Some(Method::Invite) && f.remote == addr(carol_nat))
        .expect("carol is rung through her NAT");
    assert!(body(inv).contains("m=audio 30002"), "{}", body(inv));
    assert_eq!(asked.lock().unwrap().opened.len(), 1);
}

#[test]
fn no_relay_ports_left_refuses_the_call_with_503() {
    let (mut t, _) = T::with_relay(0, RelayMode::Always);
    let (inv, out) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "full-1");
    assert!(inv.is_none(), "bob is not rung");
    let statuses: Vec<_> = out.iter().filter_map(|(_, m)| m.status()).collect();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert_eq!(t.core.counters.relay.relay_full, 1);
    assert!(
        t.core
            .calls(t.now, |_| StreamCounters::default())
            .is_empty(),
        "the failed call is gone"
    );
}

#[test]
fn a_failed_call_frees_its_relay_ports() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "busy-1");
    t.recv(BOB, &answer(&inv.unwrap(), 486, "Busy Here", "b"));
    assert!(t.sent_to_alice().iter().any(|m| m.status() == Some(486)));
    assert_eq!(asked.lock().unwrap().closed, vec![1]);
    assert!(t
        .core
        .calls(t.now, |_| StreamCounters::default())
        .is_empty());
}

#[test]
fn a_silent_answered_call_loses_its_relay_after_the_timeout_and_media_keeps_it() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "quiet-1");
    let inv = inv.unwrap();
    // Ringing for a long time is not "no media".
    t.recv(BOB, &answer(&inv, 180, "Ringing", "b"));
    t.advance(Duration::from_secs(60));
    assert_eq!(t.core.calls(t.now, |_| StreamCounters::default()).len(), 1);
    t.recv(BOB, &with_sdp(&answer(&inv, 200, "OK", "b"), ANSWER));
    let _ = t.sent();
    // Media flows: each check sees the counters move.
    for i in 1..=10u64 {
        asked.lock().unwrap().counters.insert(
            1,
            StreamCounters {
                packets: [50 * i, 50 * i],
                ..Default::default()
            },
        );
        t.advance(Duration::from_secs(5));
    }
    assert_eq!(
        t.core.calls(t.now, |_| StreamCounters::default()).len(),
        1,
        "media keeps the call"
    );
    // Then nothing for the timeout (20 s here): the relay is released.
    t.advance(Duration::from_secs(30));
    assert!(t
        .core
        .calls(t.now, |_| StreamCounters::default())
        .is_empty());
    assert_eq!(asked.lock().unwrap().closed, vec![1]);
    assert_eq!(t.core.counters.relay.relay_timeouts, 1);
}

#[test]
fn an_offer_in_the_answer_is_completed_by_the_ack_and_hold_is_seen() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    // No SDP in the INVITE: bob's 200 carries the offer, alice's ACK the answer.
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, "", "late-1");
    let inv = inv.unwrap();
    assert!(inv.body().is_empty());
    t.recv(BOB, &with_sdp(&answer(&inv, 200, "OK", "b"), ANSWER));
    let ok = t
        .sent_to_alice()
        .into_iter()
        .find(|m| m.status() == Some(200))
        .unwrap();
    assert!(body(&ok).contains("m=audio 30000"), "{}", body(&ok));
    let ack = with_sdp(
        &format!(
            "ACK sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE_PRIVATE};branch=z9hG4bKack7;rport\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>;tag=b\r\n\
Call-ID: late-1\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n"
        ),
        OFFER,
    );
    t.recv(ALICE_NAT, &ack);
    let out = t.sent();
    let (_, fwd) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Ack))
        .unwrap();
    assert!(body(fwd).contains("m=audio 30002"), "{}", body(fwd));
    assert!(body(fwd).contains("c=IN IP4 127.0.0.1"));
    assert!(asked.lock().unwrap().peers.contains(&(
        1,
        Side::Caller,
        addr("10.0.0.5:4000"),
        addr("10.0.0.5:4001")
    )));

    // bob puts alice on hold with a re-INVITE (sendonly): same relay ports, state on hold.
    let hold = with_sdp(
        &format!(
            "INVITE sip:alice@{ALICE_NAT} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bKhold1\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:bob@example.test>;tag=b\r\nTo: <sip:alice@example.test>;tag=ftalice\r\n\
Call-ID: late-1\r\nCSeq: 7 INVITE\r\nContact: <sip:bob@{BOB}>\r\nContent-Length: 0\r\n\r\n"
        ),
        &ANSWER.replace("m=audio 5000 RTP/SAVP 0\r\n", "m=audio 5000 RTP/SAVP 0\r\na=sendonly\r\n"),
    );
    t.recv(BOB, &hold);
    let to_alice = t.sent_to_alice();
    let reinv = to_alice
        .iter()
        .find(|m| m.method() == Some(Method::Invite))
        .expect("the re-INVITE reaches alice through her NAT");
    assert!(body(reinv).contains("m=audio 30000"));
    assert!(body(reinv).contains("a=sendonly"));
    assert_eq!(
        t.core.calls(t.now, |_| StreamCounters::default())[0].state,
        "on hold"
    );
    assert_eq!(asked.lock().unwrap().opened.len(), 1, "no new ports");
}

#[test]
fn a_cancelled_call_frees_its_relay_ports() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "cancel-1");
    let inv = inv.unwrap();
    t.recv(BOB, &answer(&inv, 180, "Ringing", "b"));
    let _ = t.sent();
    let branch = inv
        .vias()
        .nth(1)
        .unwrap()
        .unwrap()
        .branch()
        .unwrap()
        .to_string();
    let cancel = format!(
        "CANCEL sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE_PRIVATE};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>\r\nCall-ID: cancel-1\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE_NAT, &cancel);
    let out = t.sent();
    let (_, c) = out
        .iter()
        .find(|(_, m)| m.method() == Some(Method::Cancel))
        .expect("the CANCEL goes on to bob");
    t.recv(BOB, &answer(c, 200, "OK", "b"));
    t.recv(BOB, &answer(&inv, 487, "Request Terminated", "b"));
    assert!(t.sent_to_alice().iter().any(|m| m.status() == Some(487)));
    assert_eq!(asked.lock().unwrap().closed, vec![1]);
    assert!(t
        .core
        .calls(t.now, |_| StreamCounters::default())
        .is_empty());
}

#[test]
fn an_ipv6_caller_and_an_ipv4_callee_are_relayed() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    let v6 = "[::1]:5062";
    let offer = OFFER.replace("IN IP4 10.0.0.5", "IN IP6 ::1");
    let (inv, _) = t.call_bob(v6, v6, &offer, "v6-1");
    let inv = inv.expect("bob is rung");
    assert!(body(&inv).contains("c=IN IP4 127.0.0.1"), "{}", body(&inv));
    assert_eq!(asked.lock().unwrap().opened.len(), 1);
    assert_eq!(
        t.core.calls(t.now, |_| StreamCounters::default())[0].media,
        "relayed"
    );
}

#[test]
fn a_re_invite_adding_a_stream_when_the_relay_is_full_gets_488() {
    let (mut t, asked) = T::with_relay(1, RelayMode::Auto);
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "full-2");
    t.recv(
        BOB,
        &with_sdp(&answer(&inv.unwrap(), 200, "OK", "b"), ANSWER),
    );
    let _ = t.sent();
    // alice turns on video: a second stream, and no ports are left for it.
    let video = OFFER.replace("m=video 0 RTP/AVP 99", "m=video 4002 RTP/AVP 99");
    let reinvite = with_sdp(
        &format!(
            "INVITE sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE_PRIVATE};branch=z9hG4bKvid1;rport\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>;tag=b\r\n\
Call-ID: full-2\r\nCSeq: 5 INVITE\r\nContact: <sip:alice@{ALICE_PRIVATE}>\r\nContent-Length: 0\r\n\r\n"
        ),
        &video,
    );
    t.recv(ALICE_NAT, &reinvite);
    let out = t.sent_to_alice();
    assert!(
        out.iter().any(|m| m.status() == Some(488)),
        "{:?}",
        out.iter().map(|m| m.status()).collect::<Vec<_>>()
    );
    // The call and its audio stream go on.
    assert_eq!(t.core.calls(t.now, |_| StreamCounters::default()).len(), 1);
    assert!(asked.lock().unwrap().closed.is_empty());
}

#[test]
fn only_the_bye_of_the_answered_dialog_ends_the_call() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Auto);
    let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, OFFER, "fork-1");
    t.recv(
        BOB,
        &with_sdp(&answer(&inv.unwrap(), 200, "OK", "b"), ANSWER),
    );
    let _ = t.sent();
    let bye = |to_tag: &str, branch: &str| {
        format!(
            "BYE sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE_PRIVATE};branch={branch};rport\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>;tag={to_tag}\r\n\
Call-ID: fork-1\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // A second dialog of the same call (another phone answered too) is hung up.
    t.recv(ALICE_NAT, &bye("other", "z9hG4bKbyeo"));
    let _ = t.sent();
    assert!(asked.lock().unwrap().closed.is_empty(), "the call goes on");
    assert_eq!(t.core.calls(t.now, |_| StreamCounters::default()).len(), 1);
    // The answered dialog's BYE ends it.
    t.recv(ALICE_NAT, &bye("b", "z9hG4bKbyeb"));
    let _ = t.sent();
    assert_eq!(asked.lock().unwrap().closed, vec![1]);
}

/// bob's second phone, reached over IPv6.
const BOB6: &str = "[::1]:5064";

/// The server also listens on [::1]; bob has a phone on IPv4 (BOB) and one on IPv6 (BOB6);
/// alice (IPv4, no NAT) calls him. Returns the INVITE each phone got, and the relay stream
/// of each family: (v4 INVITE, v6 INVITE, v4 stream, v6 stream).
fn fork_to_both_families(
    t: &mut T,
    asked: &Arc<Mutex<Asked>>,
    call_id: &str,
) -> (Message, Message, RelayStream, RelayStream) {
    t.core.cfg.listeners.push(Listener {
        transport: Transport::Udp,
        addr: addr("[::1]:5060"),
        host: "::1".parse().unwrap(),
    });
    // The relay serves the new listener's family too.
    t.core.enable_relay(1000);
    t.serve_relay();
    t.register("bob", BOB6, &[]);
    let offer = OFFER.replace("10.0.0.5", "127.0.0.1");
    let (_, out) = t.call_bob(ALICE, ALICE, &offer, call_id);
    let invite_to = |to: &str| {
        out.iter()
            .find(|(f, m)| m.method() == Some(Method::Invite) && f.remote == addr(to))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no INVITE to {to}"))
    };
    let (inv4, inv6) = (invite_to(BOB), invite_to(BOB6));
    let a = asked.lock().unwrap();
    assert_eq!(a.opened.len(), 2, "one stream per family: {:?}", a.families);
    let family = |callee_v6: bool| {
        let i = a
            .families
            .iter()
            .position(|f| *f == [false, callee_v6])
            .unwrap_or_else(|| panic!("no stream facing IPv6={callee_v6}: {:?}", a.families));
        a.opened[i]
    };
    let (s4, s6) = (family(false), family(true));
    // alice's media address is given to both streams: whichever phone answers, the relay
    // knows where she listens.
    for s in [s4, s6] {
        assert!(
            a.peers.contains(&(
                s.id,
                Side::Caller,
                addr("127.0.0.1:4000"),
                addr("127.0.0.1:4001")
            )),
            "{:?}",
            a.peers
        );
    }
    (inv4, inv6, s4, s6)
}

/// Each branch of the fork is offered the relay in its own phone's family: the IPv4 phone an
/// IPv4 address (origin untouched), the IPv6 phone an IPv6 address with the origin moved to
/// IPv6 too. Crypto stays end to end in both.
#[test]
fn a_forked_call_offers_each_phone_the_relay_in_its_own_family() {
    let (mut t, asked) = T::with_relay(100, RelayMode::Auto);
    let (inv4, inv6, s4, s6) = fork_to_both_families(&mut t, &asked, "dual-1");
    let offer = OFFER.replace("10.0.0.5", "127.0.0.1");
    assert_eq!(
        body(&inv4),
        offer.replace("m=audio 4000", &format!("m=audio {}", s4.ports[1]))
    );
    assert_eq!(
        body(&inv6),
        offer
            .replace("IN IP4 127.0.0.1", "IN IP6 ::1")
            .replace("m=audio 4000", &format!("m=audio {}", s6.ports[1]))
    );
    assert_ne!(s4.ports[1], s6.ports[1]);
    let views = t.core.calls(t.now, |_| StreamCounters::default());
    assert_eq!((views[0].media, views[0].state), ("relayed", "ringing"));
    assert_eq!(views[0].streams.len(), 2, "both legs listed while ringing");
}

/// The IPv6 phone answers: alice's 200 names the caller-facing port of the IPv6 leg (in
/// IPv4, origin moved back), the relay learns the phone's IPv6 media address on that
/// stream, and the IPv4 leg's stream is closed. The BYE closes the one left.
#[test]
fn when_the_ipv6_phone_answers_the_relay_pairs_alice_with_it() {
    let (mut t, asked) = T::with_relay(100, RelayMode::Auto);
    let (_, inv6, s4, s6) = fork_to_both_families(&mut t, &asked, "dual-2");
    let answer6 = ANSWER.replace("IN IP4 127.0.0.1", "IN IP6 ::1");
    t.recv(BOB6, &with_sdp(&answer(&inv6, 200, "OK", "b6"), &answer6));
    let out = t.sent();
    let ok = out
        .iter()
        .find(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(200))
        .map(|(_, m)| m)
        .expect("200 to alice");
    assert_eq!(
        body(ok),
        ANSWER.replace("m=audio 5000", &format!("m=audio {}", s6.ports[0])),
        "IPv4 again for alice, origin included"
    );
    {
        let a = asked.lock().unwrap();
        assert!(a
            .peers
            .contains(&(s6.id, Side::Callee, addr("[::1]:5000"), addr("[::1]:5001"))));
        assert!(
            !a.peers.iter().any(|p| p.0 == s4.id && p.1 == Side::Callee),
            "nothing of the answer on the IPv4 leg"
        );
        assert_eq!(a.closed, vec![s4.id], "the IPv4 leg is closed");
    }
    let views = t.core.calls(t.now, |_| StreamCounters::default());
    assert_eq!(views[0].state, "answered");
    assert_eq!(views[0].streams.len(), 1);
    assert_eq!(
        (
            views[0].streams[0].caller_port,
            views[0].streams[0].callee_port
        ),
        (s6.ports[0], s6.ports[1])
    );

    // A re-INVITE from alice (hold) goes to the IPv6 phone with the IPv6 leg's port.
    let hold = with_sdp(
        &format!(
            "INVITE sip:bob@{BOB6} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKdualhold;rport\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>;tag=b6\r\n\
Call-ID: dual-2\r\nCSeq: 5 INVITE\r\nContact: <sip:alice@{ALICE}>\r\nContent-Length: 0\r\n\r\n"
        ),
        &OFFER
            .replace("10.0.0.5", "127.0.0.1")
            .replace("m=video 0 RTP/AVP 99\r\n", "m=video 0 RTP/AVP 99\r\na=sendonly\r\n"),
    );
    t.recv(ALICE, &hold);
    let out = t.sent();
    let (_, reinv) = out
        .iter()
        .find(|(f, m)| f.remote == addr(BOB6) && m.method() == Some(Method::Invite))
        .expect("the re-INVITE reaches the IPv6 phone");
    assert!(body(reinv).contains("c=IN IP6 ::1\r\n"), "{}", body(reinv));
    assert!(body(reinv).contains(&format!("m=audio {}", s6.ports[1])));
    assert_eq!(asked.lock().unwrap().opened.len(), 2, "no new ports");

    let bye = format!(
        "BYE sip:bob@{BOB6} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE};branch=z9hG4bKdualbye;rport\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:alice@example.test>;tag=ftalice\r\nTo: <sip:bob@example.test>;tag=b6\r\n\
Call-ID: dual-2\r\nCSeq: 6 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    t.recv(ALICE, &bye);
    let _ = t.sent();
    assert_eq!(asked.lock().unwrap().closed, vec![s4.id, s6.id]);
    assert!(t
        .core
        .calls(t.now, |_| StreamCounters::default())
        .is_empty());
}

/// The IPv4 phone answers instead: the IPv4 leg is kept, the IPv6 one closed; a late 2xx
/// from the IPv6 phone (it answered too) does not steer the relay away from the call.
#[test]
fn when_the_ipv4_phone_answers_the_relay_pairs_alice_with_it() {
    let (mut t, asked) = T::with_relay(100, RelayMode::Auto);
    let (inv4, inv6, s4, s6) = fork_to_both_families(&mut t, &asked, "dual-3");
    t.recv(BOB, &with_sdp(&answer(&inv4, 200, "OK", "b4"), ANSWER));
    let ok = t
        .sent()
        .into_iter()
        .find(|(f, m)| f.remote == addr(ALICE) && m.status() == Some(200))
        .map(|(_, m)| m)
        .expect("200 to alice");
    assert_eq!(
        body(&ok),
        ANSWER.replace("m=audio 5000", &format!("m=audio {}", s4.ports[0]))
    );
    {
        let a = asked.lock().unwrap();
        assert!(a.peers.contains(&(
            s4.id,
            Side::Callee,
            addr("127.0.0.1:5000"),
            addr("127.0.0.1:5001")
        )));
        assert_eq!(a.closed, vec![s6.id], "the IPv6 leg is closed");
    }
    // The IPv6 phone's 200 crossed the CANCEL: it goes to alice (RFC 3261 §16.7), who will
    // hang that dialog up, but the relay stays with the IPv4 phone.
    let answer6 = ANSWER.replace("IN IP4 127.0.0.1", "IN IP6 ::1");
    t.recv(BOB6, &with_sdp(&answer(&inv6, 200, "OK", "b6"), &answer6));
    let _ = t.sent();
    let a = asked.lock().unwrap();
    assert!(
        !a.peers.iter().any(|p| p.1 == Side::Callee && p.2.is_ipv6()),
        "{:?}",
        a.peers
    );
    assert_eq!(a.opened.len(), 2, "no stream opened for the second answer");
    drop(a);
    let views = t.core.calls(t.now, |_| StreamCounters::default());
    assert_eq!(views[0].streams.len(), 1);
    assert_eq!(views[0].streams[0].callee_port, s4.ports[1]);
}

/// An INVITE from another domain (no credentials) to bob, from `src`, with `sdp`.
fn outside_invite(src: &str, call_id: &str, sdp: &str) -> String {
    with_sdp(
        &format!(
            "INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\nFrom: <sip:eve@elsewhere.test>;tag=e\r\nTo: <sip:bob@example.test>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:eve@{src}>\r\nContent-Length: 0\r\n\r\n"
        ),
        sdp,
    )
}

/// An offer with `n` audio streams from `ip`.
fn offer_from(ip: &str, n: usize) -> String {
    let mut s = format!("v=0\r\no=eve 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n");
    for i in 0..n {
        s.push_str(&format!("m=audio {} RTP/AVP 0\r\n", 4000 + 2 * i));
    }
    s
}

fn status_to(t: &mut T, src: &str) -> Vec<u16> {
    t.sent()
        .into_iter()
        .filter(|(f, _)| f.remote == addr(src))
        .filter_map(|(_, m)| m.status())
        .filter(|s| *s >= 200)
        .collect()
}

#[test]
fn an_offer_with_more_streams_than_a_call_has_gets_488() {
    let (mut t, asked) = T::with_relay(2000, RelayMode::Always);
    let src = "192.0.2.40:5060";
    t.recv(
        src,
        &outside_invite(src, "many-m", &offer_from("192.0.2.40", 1250)),
    );
    assert_eq!(status_to(&mut t, src), vec![488]);
    assert!(
        asked.lock().unwrap().opened.is_empty(),
        "no relay port taken"
    );
    assert_eq!(t.core.counters.relay.too_many_streams, 1);
    // Eight are fine.
    t.recv(
        src,
        &outside_invite(src, "eight-m", &offer_from("192.0.2.40", 8)),
    );
    assert!(status_to(&mut t, src).is_empty(), "bob rings");
    assert_eq!(asked.lock().unwrap().opened.len(), 8);
}

#[test]
fn ringing_calls_of_one_outside_source_hold_at_most_their_share_of_the_relay() {
    let (mut t, asked) = T::with_relay(2000, RelayMode::Always);
    let src = "192.0.2.41:5060";
    // Eight streams a call: six calls fit in 50, the seventh is refused while they ring.
    for i in 0..6 {
        t.recv(
            src,
            &outside_invite(src, &format!("ring-{i}"), &offer_from("192.0.2.41", 8)),
        );
        assert!(status_to(&mut t, src).is_empty(), "call {i} rings");
    }
    // (Answered like a call to nobody: an outsider learns nothing of who is there.)
    t.recv(
        src,
        &outside_invite(src, "ring-6", &offer_from("192.0.2.41", 8)),
    );
    assert_eq!(status_to(&mut t, src), vec![404]);
    assert_eq!(
        asked.lock().unwrap().opened.len(),
        50,
        "the share, to the stream"
    );
    // Another outside source has a share of its own; a local user's call is not counted.
    let other = "192.0.2.42:5060";
    t.recv(
        other,
        &outside_invite(other, "other-0", &offer_from("192.0.2.42", 8)),
    );
    assert!(status_to(&mut t, other).is_empty());
    let (inv, _) = t.call_bob(ALICE, ALICE, OFFER, "local-1");
    assert!(
        inv.is_some(),
        "a local user's relayed call still gets through"
    );
}

#[test]
fn the_relay_is_not_pointed_at_private_addresses_an_outside_caller_names() {
    let (mut t, asked) = T::with_relay(10, RelayMode::Always);
    let src = "192.0.2.43:5060";
    t.recv(
        src,
        &outside_invite(src, "private-1", &offer_from("10.1.2.3", 1)),
    );
    let _ = t.sent();
    let a = asked.lock().unwrap();
    assert_eq!(a.opened.len(), 1, "relayed");
    assert!(
        a.peers.iter().all(|(_, side, _, _)| *side != Side::Caller),
        "no caller address from its SDP: {:?}",
        a.peers
    );
    drop(a);
    // A public address is taken as the caller's.
    t.recv(
        src,
        &outside_invite(src, "public-1", &offer_from("192.0.2.43", 1)),
    );
    let _ = t.sent();
    assert!(asked
        .lock()
        .unwrap()
        .peers
        .iter()
        .any(|(_, side, rtp, _)| *side == Side::Caller && *rtp == addr("192.0.2.43:4000")));
}

/// A browser's offer as Chromium writes it (trimmed): BUNDLE, rtcp-mux, ICE candidates and a
/// DTLS fingerprint, and the `c=` line WebRTC writes whatever the address.
fn webrtc_offer() -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=candidate:1467250027 1 udp 2122260223 10.0.0.5 46243 typ host generation 0\r\n\
         a=candidate:3298231947 1 udp 1686052607 203.0.113.7 46243 typ srflx raddr 10.0.0.5 rport 46243 generation 0\r\n\
         a=ice-ufrag:eZxL\r\na=ice-pwd:hYZfJdQxbzYG+T8jXGQbm4Z5\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 5B:0C:E1:D8:7B:84:A5:D3:0F:61:7F:2C:6D:5E:9A:72:4D:6E:B8:9E:6A:3B:21:43:8D:B5:1F:8B:92:6B:21:91\r\n\
         a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:eZxL\r\na=ice-pwd:hYZfJdQxbzYG+T8jXGQbm4Z5\r\na=setup:actpass\r\na=mid:1\r\n\
         a=sendrecv\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\n",
    );
    // Offers of several kilobytes are common (many codecs, header extensions).
    for i in 0..60 {
        sdp.push_str(&format!(
            "a=ssrc:{} cname:abcdefghijklmnop{i}\r\n",
            1000 + i
        ));
    }
    sdp
}

#[test]
fn an_offer_with_ice_passes_unmodified_whatever_the_relay_mode() {
    let offer = webrtc_offer();
    assert!(offer.len() > 3000);
    for mode in [RelayMode::Auto, RelayMode::Always] {
        let (mut t, asked) = T::with_relay(10, mode);
        // From behind NAT: Via and candidates name 10.0.0.5, the packets come from elsewhere.
        let (inv, _) = t.call_bob(ALICE_PRIVATE, ALICE_NAT, &offer, &format!("ice-{mode:?}"));
        assert_eq!(body(&inv.expect("bob is rung")), offer, "{mode:?}");
        assert!(asked.lock().unwrap().opened.is_empty(), "{mode:?}");
        assert_eq!(
            t.core.calls(t.now, |_| StreamCounters::default())[0].media,
            "direct"
        );
    }
}
