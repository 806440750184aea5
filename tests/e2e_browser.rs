//! The softphone page in headless Chromium: two browsers log in as alice and bob, alice calls
//! bob by extension, bob answers, and each page's `RTCPeerConnection.getStats()` shows RTP
//! arriving over a connected DTLS transport; hold and resume keep the call, hang-up ends it
//! on both sides, and a typed message appears on the other page. The server and Chromium run
//! in a network namespace the test makes (WebRTC does not gather candidates on loopback).

mod common;

use common::browser::{chromium_available, Browser};
use common::natlab::{NatLab, SERVER_IP};
use common::*;
use std::time::Duration;

/// A server with a `wss:` listener in the public namespace of a fresh lab; the page's URL.
fn web_lab(homes: u8, extra: &str) -> (NatLab, Server, String) {
    let lab = NatLab::new(homes)
        .unwrap_or_else(|e| panic!("cannot build the namespaces (root is needed): {e}"));
    let certs = self_signed_certs(&test_dir());
    let port = free_port();
    let srv = Server::start(ServerOpts {
        netns: Some((lab.public_ns(), SERVER_IP.into())),
        extra_listen: vec![format!("wss:{SERVER_IP}:{port}")],
        extra_config: format!("{}{extra}", tls_config(&certs)),
        ..ServerOpts::default()
    });
    (lab, srv, format!("https://{SERVER_IP}:{port}/"))
}

const T: Duration = Duration::from_secs(20);

#[test]
fn two_browsers_call_hold_resume_hang_up_and_message() {
    if !chromium_available() || !peers_available(&["ip"]) {
        return;
    }
    let (lab, srv, url) = web_lab(0, "");
    let mut b = Browser::start(Some(&lab.public_ns()));
    // alice at her desk, bob on his phone's browser.
    b.open("alice", &url, true);
    b.open_mobile("bob", &url);
    b.login("alice", &ALICE);
    b.login("bob", &BOB);
    assert_eq!(srv.registrations().len(), 2);
    // The directory came with the login, and lists bob by extension.
    let people = b.eval(
        "alice",
        "hw.info.directory.map(p => p.name + ':' + p.extension).join(',')",
    );
    assert_eq!(people, "alice:101,bob:102,carol:103");

    // alice calls bob's extension; bob's page rings with her name.
    b.fill("alice", "#target", BOB.extension);
    b.click("alice", "#call");
    b.wait("bob", "hw.state === 'incoming'", T, "ringing");
    let caller = b.eval("bob", "document.getElementById('caller').textContent");
    assert!(
        caller
            .as_str()
            .is_some_and(|c| c.contains("sip:alice@example.test")),
        "{caller}"
    );
    b.click("bob", "#answer");
    b.wait("alice", "hw.state === 'in-call'", T, "answered");
    b.wait("bob", "hw.state === 'in-call'", T, "answered");
    for page in ["alice", "bob"] {
        let s = b.wait_media_flowing(page, T);
        assert_eq!(s["dtlsState"], "connected", "{page}: {s}");
    }
    let table = calls(&srv);
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(
        table[0]["media"], "direct",
        "WebRTC media is never relayed: {table:?}"
    );

    // Hold, then resume: the call is still there and media flows again.
    b.click("alice", "#hold");
    b.wait("alice", "hw.state === 'held'", T, "hold");
    b.click("alice", "#hold");
    b.wait("alice", "hw.state === 'in-call'", T, "resume");
    for page in ["alice", "bob"] {
        b.wait_media_flowing(page, T);
    }
    // Mute and unmute alice's microphone.
    b.click("alice", "#mute");
    b.wait("alice", "hw.session.isMuted().audio === true", T, "mute");
    b.click("alice", "#mute");
    b.wait("alice", "hw.session.isMuted().audio === false", T, "unmute");
    // DTMF goes in the media (RFC 4733): the page's sender takes the tones.
    b.click("alice", "#keypad button:nth-child(5)");

    // bob hangs up: both pages are idle again, and the server's call table is empty.
    b.click("bob", "#hangup");
    b.wait(
        "alice",
        "hw.state === 'idle' && hw.session === null",
        T,
        "hang-up",
    );
    b.wait(
        "bob",
        "hw.state === 'idle' && hw.session === null",
        T,
        "hang-up",
    );
    assert!(poll_until(Duration::from_secs(5), || calls(&srv).is_empty()));

    // A video call: both cameras (fake ones here) reach the other side.
    b.click("alice", "#call-video");
    b.wait("bob", "hw.state === 'incoming'", T, "ringing");
    b.click("bob", "#answer-video");
    for page in ["alice", "bob"] {
        b.wait(page, "hw.state === 'in-call'", T, "answered");
        b.wait(
            page,
            "hw.stats().then(s => s && s.videoPackets > 30)",
            T,
            "video arriving",
        );
        b.wait(
            page,
            "document.getElementById('remote-video').dataset.live === '1'",
            T,
            "the other side's picture shown",
        );
    }
    b.click("alice", "#hangup");
    b.wait("bob", "hw.state === 'idle'", T, "hang-up");

    // A message typed on one page appears on the other.
    b.fill("alice", "#chat-to", "bob");
    b.fill("alice", "#chat-text", "lunch at one?");
    b.click("alice", "#send");
    b.wait(
        "bob",
        "hw.messages.some(m => m.direction === 'in' && m.body === 'lunch at one?' && m.from.includes('sip:alice@'))",
        T,
        "the message",
    );
    let shown = b.eval("bob", "document.getElementById('messages').textContent");
    assert!(shown.as_str().is_some_and(|t| t.contains("lunch at one?")));
}

#[test]
fn the_page_says_clearly_what_went_wrong() {
    if !chromium_available() || !peers_available(&["ip"]) {
        return;
    }
    let (lab, _srv, url) = web_lab(0, "");
    let mut b = Browser::start(Some(&lab.public_ns()));
    // A wrong password.
    b.open("alice", &url, true);
    b.fill("alice", "#user", "alice");
    b.fill("alice", "#password", "not-her-password");
    b.click("alice", "#login-button");
    b.wait(
        "alice",
        "hw.lastError === 'Wrong user name or password.'",
        T,
        "the login error",
    );
    // A callee who is not online.
    b.login("alice", &ALICE);
    b.fill("alice", "#target", "carol");
    b.click("alice", "#call");
    b.wait(
        "alice",
        "hw.state === 'idle' && /Not available/.test(hw.lastError)",
        T,
        "the offline error",
    );
    // A user who refused the microphone.
    b.open("bob", &url, false);
    b.login("bob", &BOB);
    b.fill("bob", "#target", "alice");
    b.click("bob", "#call");
    b.wait(
        "bob",
        "hw.state === 'idle' && /refused the microphone/.test(hw.lastError)",
        T,
        "the microphone error",
    );
    assert_eq!(
        b.eval("alice", "hw.state"),
        "idle",
        "alice's page never rang"
    );
    // A call bob declines: alice's page says so.
    b.fill("alice", "#target", "bob");
    b.click("alice", "#call");
    b.wait("bob", "hw.state === 'incoming'", T, "ringing");
    b.click("bob", "#decline");
    b.wait(
        "alice",
        "hw.state === 'idle' && hw.lastError === 'The call was declined.'",
        T,
        "the decline",
    );
}

/// A lab server that also runs TURN on `SERVER_IP` (UDP and TCP on one port, TLS on
/// another); the page's URL, asking for relayed media only (`?relay=1`).
fn turn_lab(homes: u8) -> (NatLab, Server, String, u16, u16) {
    let (turn, turns) = (free_port(), free_port());
    let (lab, srv, url) = web_lab(
        homes,
        &format!(
            "[turn]\nlisten = [\"udp:{SERVER_IP}:{turn}\", \"tcp:{SERVER_IP}:{turn}\", \"tls:{SERVER_IP}:{turns}\"]\n"
        ),
    );
    (lab, srv, format!("{url}?relay=1"), turn, turns)
}

/// alice calls bob and bob answers; both pages' media flows; the candidate kind and
/// relay protocol ICE chose on each side.
fn relayed_call(b: &mut Browser, alice: &str, bob: &str) -> Vec<(String, String)> {
    b.fill(alice, "#target", BOB.extension);
    b.click(alice, "#call");
    b.wait(bob, "hw.state === 'incoming'", T, "ringing");
    b.click(bob, "#answer");
    let mut chosen = vec![];
    for page in [alice, bob] {
        b.wait(page, "hw.state === 'in-call'", T, "answered");
        let s = b.wait_media_flowing(page, T);
        assert_eq!(s["dtlsState"], "connected", "{page}: {s}");
        chosen.push((
            s["local"].as_str().unwrap_or("").to_string(),
            s["localProtocol"].as_str().unwrap_or("").to_string(),
        ));
    }
    chosen
}

/// What the TURN allocations of `user` carried towards peers, in all.
fn turn_carried(srv: &Server, user: &str) -> u64 {
    srv.cli_json("turn")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["user"] == user)
        .map(|a| a["counters"]["to_peers"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn with_relay_only_the_media_goes_through_hedgewitchs_turn_server() {
    if !chromium_available() || !peers_available(&["ip"]) {
        return;
    }
    let (lab, srv, url, _, _) = turn_lab(0);
    let mut b = Browser::start(Some(&lab.public_ns()));
    b.open("alice", &url, true);
    b.open("bob", &url, true);
    b.login("alice", &ALICE);
    b.login("bob", &BOB);
    // The page got short-lived TURN credentials with its session, not a password.
    let turn = b.eval("alice", "hw.info.turn");
    assert!(
        turn["username"]
            .as_str()
            .is_some_and(|u| u.ends_with(":alice")),
        "{turn}"
    );
    assert!(
        turn["urls"].to_string().contains("turn:198.18.0.1"),
        "{turn}"
    );
    for (kind, protocol) in relayed_call(&mut b, "alice", "bob") {
        assert_eq!((kind.as_str(), protocol.as_str()), ("relay", "udp"));
    }
    assert!(poll_until(Duration::from_secs(10), || turn_carried(
        &srv, "alice"
    ) > 50
        && turn_carried(&srv, "bob") > 50));
    b.click("alice", "#hangup");
    b.wait("bob", "hw.state === 'idle'", T, "hang-up");
}

#[test]
fn behind_firewalls_that_block_udp_the_media_goes_over_turn_tcp_then_tls() {
    if !chromium_available() || !peers_available(&["ip", "nft"]) {
        return;
    }
    // alice and bob at home, each behind a NAT whose firewall passes no UDP to the server.
    let (lab, srv, url, turn, _) = turn_lab(2);
    for n in [1, 2] {
        lab.block(n, &format!("ip daddr {SERVER_IP} meta l4proto udp"))
            .expect("firewall rule");
    }
    let (home1, home2) = (lab.home(1), lab.home(2));
    let mut a = Browser::start(Some(&home1.ns));
    let mut b = Browser::start(Some(&home2.ns));
    a.open("alice", &url, true);
    b.open("bob", &url, true);
    a.login("alice", &ALICE);
    b.login("bob", &BOB);
    // Two browsers: drive each page in its own.
    let chosen = relayed_call_across(&mut a, &mut b);
    for (kind, protocol) in &chosen {
        assert_eq!(
            (kind.as_str(), protocol.as_str()),
            ("relay", "tcp"),
            "{chosen:?}"
        );
    }
    a.click("alice", "#hangup");
    b.wait("bob", "hw.state === 'idle'", T, "hang-up");

    // Now TCP to the TURN port is blocked as well: only TLS (turns:) gets through.
    for n in [1, 2] {
        lab.block(n, &format!("ip daddr {SERVER_IP} tcp dport {turn}"))
            .expect("firewall rule");
    }
    let chosen = relayed_call_across(&mut a, &mut b);
    for (kind, protocol) in &chosen {
        assert_eq!(
            (kind.as_str(), protocol.as_str()),
            ("relay", "tls"),
            "{chosen:?}"
        );
    }
    assert!(turn_carried(&srv, "alice") > 50 && turn_carried(&srv, "bob") > 50);
}

/// `relayed_call` with alice's and bob's pages in two browsers.
fn relayed_call_across(a: &mut Browser, b: &mut Browser) -> Vec<(String, String)> {
    a.fill("alice", "#target", BOB.extension);
    a.click("alice", "#call");
    b.wait("bob", "hw.state === 'incoming'", T, "ringing");
    b.click("bob", "#answer");
    let mut chosen = vec![];
    for (browser, page) in [(a, "alice"), (b, "bob")] {
        browser.wait(page, "hw.state === 'in-call'", T, "answered");
        let s = browser.wait_media_flowing(page, T);
        assert_eq!(s["dtlsState"], "connected", "{page}: {s}");
        chosen.push((
            s["local"].as_str().unwrap_or("").to_string(),
            s["localProtocol"].as_str().unwrap_or("").to_string(),
        ));
    }
    chosen
}

/// bob as a baresip desk phone in the lab's public namespace, auto-answering; with
/// `webrtc`, it does what a browser needs: DTLS-SRTP and ICE (Debian's modules).
fn baresip_bob(srv: &Server, lab: &NatLab, webrtc: bool) -> common::baresip::Baresip {
    use common::baresip::{make_tone, Baresip, Phone};
    let (media, modules) = if webrtc {
        (
            ";mediaenc=dtls_srtp;medianat=ice",
            "module dtls_srtp.so\nmodule ice.so\nrtcp_mux yes\n",
        )
    } else {
        ("", "")
    };
    let account = format!(
        "<sip:{name}@{DOMAIN}>;auth_user={name};auth_pass={pw};\
         outbound=\"sip:{server};transport=udp\";regint=600;audio_codecs=PCMU;answermode=auto{media}\n",
        name = BOB.name,
        pw = BOB.password,
        server = srv.addr(),
    );
    let ns = lab.public_ns();
    let tone = make_tone(srv);
    let phone = Baresip::launch(Phone {
        dir: srv.dir.join(if webrtc {
            "baresip-bob-webrtc"
        } else {
            "baresip-bob-plain"
        }),
        name: "bob",
        host: SERVER_IP.to_string(),
        ipv6: false,
        // Each phone its own ports, so that the second does not wait for the first's.
        sip_port: if webrtc { 5062 } else { 5064 },
        console: if webrtc { 5070 } else { 5072 },
        rtp: if webrtc { 30000 } else { 30100 },
        netns: Some((&ns, SERVER_IP)),
        account,
        contacts: String::new(),
        tone: &tone,
        config_extra: modules.to_string(),
    });
    let port = if webrtc { ":5062" } else { ":5064" };
    assert!(
        poll_until(Duration::from_secs(10), || srv
            .registrations_of("bob")
            .iter()
            .any(|r| r["contact"].as_str().is_some_and(|c| c.contains(port)))),
        "bob's baresip did not register: {}",
        phone.output()
    );
    phone
}

#[test]
fn a_browser_and_a_dtls_srtp_phone_talk_and_a_plain_rtp_phone_gets_a_clear_no() {
    if !chromium_available() || !peers_available(&["ip", "baresip"]) {
        return;
    }
    let (lab, srv, url) = web_lab(0, "");
    let mut b = Browser::start(Some(&lab.public_ns()));
    b.open("alice", &url, true);
    b.login("alice", &ALICE);

    // A phone with DTLS-SRTP and ICE: audio both ways, encrypted end to end.
    let mut phone = baresip_bob(&srv, &lab, true);
    b.fill("alice", "#target", "bob");
    b.click("alice", "#call");
    b.wait("alice", "hw.state === 'in-call'", T, "the phone answered");
    let s = b.wait_media_flowing("alice", T);
    assert_eq!(s["dtlsState"], "connected", "{s}");
    phone.wait_for("audio from the browser", T, common::baresip::receives_audio);
    // DTMF from the page's dial pad reaches the phone in the media (RFC 4733).
    b.click("alice", "#keypad button:nth-child(5)");
    phone.wait_for("the DTMF digit", T, |o| o.contains("received event: '5'"));
    b.click("alice", "#hangup");
    b.wait("alice", "hw.state === 'idle'", T, "hang-up");
    drop(phone);

    // A phone with plain RTP only: the page says why no call is possible, and no call
    // stays up anywhere.
    let _plain = baresip_bob(&srv, &lab, false);
    b.fill("alice", "#target", "bob");
    b.click("alice", "#call");
    b.wait(
        "alice",
        "hw.state === 'idle' && /cannot encrypt media the way browsers do/.test(hw.lastError)",
        T,
        "the clear message",
    );
    assert!(
        poll_until(Duration::from_secs(10), || calls(&srv).is_empty()),
        "{:?}",
        calls(&srv)
    );
}
