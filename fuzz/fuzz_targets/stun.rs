//! STUN Binding answers from arbitrary datagrams: never a panic, and every answer is itself a
//! well-formed STUN message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let from = std::net::SocketAddr::from(([198, 18, 0, 1], 5060));
    if let Some(resp) = sip::stun::answer(data, from, "fuzz") {
        assert!(sip::stun::is_stun(&resp));
    }
});
