//! STUN and TURN from arbitrary datagrams: the Binding answer of the SIP and STUN ports, and
//! the TURN codec the TURN server reads every request and indication with (attributes,
//! MESSAGE-INTEGRITY, FINGERPRINT, ChannelData and stream framing). Never a panic; every
//! answer is itself well-formed STUN, and a message re-signed with a key checks with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::turn::{self, Class, Writer};

fuzz_target!(|data: &[u8]| {
    let from = std::net::SocketAddr::from(([198, 18, 0, 1], 5060));
    if let Some(resp) = sip::stun::answer(data, from, "fuzz") {
        assert!(sip::stun::is_stun(&resp));
    }
    let _ = turn::channel_data(data);
    if let Some(n) = turn::frame_len(data) {
        assert!(n == 0 || n >= 4);
    }
    if let Some(m) = turn::parse(data) {
        let key = turn::long_term_key(m.username.unwrap_or(""), m.realm.unwrap_or(""), "pw");
        let _ = m.integrity_ok(data, &key);
        // An answer carrying what was read, signed: it parses and checks with the key.
        let mut w = Writer::new(m.method & 0x0FFF, Class::Error, &m.txid);
        w.error(400, "Bad Request");
        for p in &m.peers {
            w.xor_address(turn::attr::XOR_PEER_ADDRESS, *p);
        }
        if let Some(d) = m.data.filter(|d| d.len() < 60_000) {
            w.data(d);
        }
        let out = w.finish(Some(&key));
        let back = turn::parse(&out).expect("our own answer parses");
        assert!(back.integrity_ok(&out, &key));
        assert_eq!(back.peers, m.peers);
    }
});
