//! What the provider trunks and the presence agent read from the outside: digest challenges
//! in a provider's 401 and 407 (`sip::digest_client`), ENUM NAPTR regular expressions from
//! DNS, dialled strings made E.164, and the PIDF documents devices PUBLISH. Never a panic; a
//! challenge that parses is answered with credentials our own server's parser reads; an ENUM
//! answer is only ever a SIP URI that parses; an E.164 number is digits only; a published
//! state written back as PIDF reads back the same.
#![no_main]

use hedgewitch_core::numbers::{enum_target, EnumRecord, NumberFormat, NumberSettings};
use hedgewitch_core::presence::pidf;
use libfuzzer_sys::fuzz_target;
use sip::digest::Credentials;
use sip::digest_client::Challenge;

fuzz_target!(|data: &[u8]| {
    if let Some(st) = pidf::parse(data) {
        let back = pidf::parse(pidf::compose("sip:a@example.test", &st).as_bytes());
        assert_eq!(back.map(|b| (b.open, b.activity)), Some((st.open, st.activity)));
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ch) = Challenge::parse(s) {
        let v = ch.answer("u", "p", "INVITE", "sip:x@example.test", "cn", 1);
        assert!(Credentials::parse(&v).is_ok(), "{v}");
    }
    let n = NumberSettings {
        country_code: "49".into(),
        ..Default::default()
    };
    if let Some(e) = n.normalise(s) {
        assert!(e.bytes().all(|b| b.is_ascii_digit()));
        let _ = n.format(&e, s, NumberFormat::National);
        let _ = n.class_of(&e);
    }
    let rec = EnumRecord {
        order: 1,
        preference: 1,
        flags: "u".into(),
        services: "E2U+sip".into(),
        regexp: s.to_string(),
    };
    if let Some(uri) = enum_target("4930123456", &[rec]) {
        assert!(sip::uri::Uri::parse(&uri).is_ok());
    }
});
