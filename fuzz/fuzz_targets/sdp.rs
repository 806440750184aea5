//! The SDP code the media relay runs on every offer and answer: any body parses or is refused
//! without a panic, and a rewrite of a parsed body parses again with the same streams, each
//! at the port it was given (0 stays 0) and the relay's address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(sdp) = sip::sdp::Sdp::parse(data) else {
        return;
    };
    let ports: Vec<u16> = (0..sdp.media.len()).map(|i| 20000 + 2 * i as u16).collect();
    let relay = std::net::IpAddr::from([198, 18, 0, 1]);
    let out = sip::sdp::rewrite(data, relay, &ports);
    let again = sip::sdp::Sdp::parse(&out).expect("a rewritten description parses");
    assert_eq!(again.media.len(), sdp.media.len());
    for (i, (a, b)) in sdp.media.iter().zip(&again.media).enumerate() {
        if a.port == 0 {
            assert_eq!(b.port, 0);
        } else {
            assert_eq!(b.port, ports[i]);
        }
        if a.addr.is_some_and(|x| !x.is_unspecified()) {
            assert_eq!(b.addr, Some(relay));
        }
    }
});
