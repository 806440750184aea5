//! Any bytes, as a datagram and as a stream: parsing, framing, validation and every typed view
//! the server reads must return, never panic, and never loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::grammar::name_addr_list;
use sip::header::HeaderName;
use sip::message::{frame, Message};
use sip::Bytes;

fuzz_target!(|data: &[u8]| {
    let _ = frame(data);
    for datagram in [true, false] {
        let Ok(m) = Message::parse(Bytes::copy_from_slice(data), datagram) else {
            let _ = Message::parse_head(Bytes::copy_from_slice(data));
            continue;
        };
        let _ = m.validate_request();
        let _ = m.validate_response();
        let _ = (m.uri(), m.from(), m.to(), m.cseq(), m.max_forwards(), m.top_via());
        for v in m.vias() {
            let _ = v.map(|v| (v.branch(), v.rfc3261_branch(), v.param("received")));
        }
        for name in [HeaderName::Contact, HeaderName::Route, HeaderName::RecordRoute] {
            for v in m.values(name) {
                for na in name_addr_list(v).flatten() {
                    let _ = (na.uri.user_unescaped(), na.tag(), na.uri.transport());
                }
            }
        }
        for v in m.values(HeaderName::Authorization) {
            let _ = sip::digest::Credentials::parse(v);
        }
        let _ = sip::build::response_to(&m, 400, "Bad Request", Some("t"), "127.0.0.1:9".parse().ok());
    }
});
