//! RFC 4475 and RFC 5118 torture messages: every file gets the verdict that
//! `tests/data/sip-torture/EXPECTED.md` gives it at the parser and request-validation level
//! (what the server's first step decides before any routing), and no input panics.
//! Verdicts that depend on the server's role (416, 420, 483, 404...) are checked again by the
//! server's own tests, which feed the same files to the running core.

use sip::message::{Message, Method};
use sip::Bytes;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Verdict {
    Accept,
    Reject(u16),
    Drop,
}
use Verdict::*;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sip-torture")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn verdict(raw: &[u8]) -> Verdict {
    let is_response = raw.starts_with(b"SIP/");
    match Message::parse(Bytes::copy_from_slice(raw), true) {
        Err(e) if is_response => {
            let _ = e;
            Drop
        }
        Err(e) => Reject(e.status),
        Ok(m) if m.is_request() => match m.validate_request() {
            Ok(()) => Accept,
            Err(e) => Reject(e.status),
        },
        Ok(m) => match m.validate_response() {
            Ok(()) => Accept,
            Err(_) => Drop,
        },
    }
}

const RFC4475: &[(&str, Verdict)] = &[
    // §3.1.1 valid messages
    ("wsinv", Accept),
    ("intmeth", Accept),
    ("esc01", Accept),
    ("escnull", Accept),
    ("esc02", Accept),
    ("lwsdisp", Accept),
    ("longreq", Accept),
    ("dblreq", Accept),
    ("semiuri", Accept),
    ("transports", Accept),
    ("mpart01", Accept),
    ("unreason", Accept),
    ("noreason", Accept),
    // §3.1.2 invalid messages
    ("badinv01", Reject(400)),
    ("clerr", Reject(400)),
    ("ncl", Reject(400)),
    ("scalar02", Reject(400)),
    ("scalarlg", Drop),
    ("quotbal", Reject(400)),
    ("ltgtruri", Reject(400)),
    ("lwsruri", Reject(400)),
    ("lwsstart", Reject(400)),
    ("trws", Reject(400)),
    ("escruri", Reject(400)),
    // Date is never interpreted by hedgewitch, so a bad one is ignored (EXPECTED.md allows it).
    ("baddate", Accept),
    ("regbadct", Reject(400)),
    ("badaspec", Reject(400)),
    ("baddn", Reject(400)),
    ("badvers", Reject(505)),
    ("mismatch01", Reject(400)),
    // 501 preferred, 400 acceptable: the CSeq mismatch is found first.
    ("mismatch02", Reject(400)),
    ("bigcode", Drop),
    // §3.2
    ("badbranch", Accept),
    // §3.3 (parse; the application-level answer is the server's business)
    ("insuf", Reject(400)),
    ("unkscm", Reject(416)),
    ("novelsc", Reject(416)),
    ("unksm2", Accept),
    ("bext01", Accept),
    ("invut", Accept),
    ("regaut01", Accept),
    ("multi01", Reject(400)),
    ("mcl01", Reject(400)),
    ("bcast", Accept),
    ("zeromf", Accept),
    ("cparam01", Accept),
    ("cparam02", Accept),
    ("regescrt", Accept),
    ("sdp01", Accept),
    // §3.4
    ("inv2543", Accept),
];

const RFC5118: &[(&str, Verdict)] = &[
    ("ipv6-good", Accept),
    ("ipv6-bad", Reject(400)),
    ("port-ambiguous", Accept),
    ("port-unambiguous", Accept),
    ("via-received-param-with-delim", Accept),
    ("via-received-param-no-delim", Accept),
    ("ipv6-in-sdp", Accept),
    ("mult-ip-in-header", Accept),
    ("mult-ip-in-sdp", Accept),
    ("ipv4-mapped-ipv6", Accept),
    // RFC 5118 §4.10 "must tolerate": read as the two-colon form (policy in uri.rs).
    ("ipv6-bug-abnf-3-colons", Accept),
    ("ipv6-correct-abnf-2-colons", Accept),
];

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn corpus_matches_its_checksums() {
    for (sums, base) in [
        ("SHA256SUMS.rfc4475", ""),
        ("rfc5118/SHA256SUMS", "rfc5118/"),
    ] {
        let text = String::from_utf8(read(sums)).unwrap();
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (sum, name) = line.split_once("  ").unwrap();
            assert_eq!(sha256_hex(&read(&format!("{base}{name}"))), sum, "{name}");
            n += 1;
        }
        assert!(n >= 12, "{sums} lists too few files");
    }
}

#[test]
fn rfc4475_verdicts() {
    assert_eq!(RFC4475.len(), 49);
    let mut wrong = vec![];
    for &(name, want) in RFC4475 {
        let got = verdict(&read(&format!("{name}.sip")));
        if got != want {
            wrong.push(format!("{name}: expected {want:?}, got {got:?}"));
        }
    }
    assert_eq!(
        verdict(&read("variants/baddn.terminated.sip")),
        Reject(400),
        "baddn with its header section terminated"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn rfc5118_verdicts() {
    let mut wrong = vec![];
    for &(name, want) in RFC5118 {
        let got = verdict(&read(&format!("rfc5118/wire/{name}.sip")));
        if got != want {
            wrong.push(format!("{name}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn parse(name: &str) -> Message {
    Message::parse(Bytes::from(read(name)), true).unwrap()
}

#[test]
fn semantics_of_accepted_messages() {
    use sip::grammar::name_addr_list;
    use sip::header::HeaderName;

    // wsinv: three Vias, the unknown header kept as opaque text, leading zeros read.
    let m = parse("wsinv.sip");
    assert_eq!(m.vias().count(), 3);
    assert_eq!(
        m.other_value("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;")
    );
    assert_eq!(m.max_forwards(), Some(68));
    assert_eq!(m.cseq().unwrap().0, 9);

    // intmeth: an unknown method is not INVITE.
    let m = parse("intmeth.sip");
    assert_eq!(m.method(), Some(Method::Other));
    assert!(m
        .method_str()
        .starts_with("!interesting-Method0123456789_*+`.%indeed'~"));

    // esc01: escapes decoded for comparison; the user is literally `sips:user@example.com`.
    let m = parse("esc01.sip");
    let uri = m.uri().unwrap();
    assert_eq!(uri.user_unescaped().unwrap(), "sips:user@example.com");
    assert_eq!(uri.scheme, sip::uri::Scheme::Sip);

    // escnull: two distinct contacts, NULs kept.
    let m = parse("escnull.sip");
    let contacts: Vec<_> = m
        .values(HeaderName::Contact)
        .flat_map(name_addr_list)
        .map(|c| c.unwrap().uri.user_unescaped().unwrap().into_owned())
        .collect();
    assert_eq!(contacts.len(), 2);
    assert_ne!(contacts[0], contacts[1]);
    assert!(contacts.iter().all(|c| c.contains('\0')));

    // esc02: RE%47IST%45R is not REGISTER; C%6Fntact is not Contact.
    let m = parse("esc02.sip");
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(
        m.values(HeaderName::Contact)
            .flat_map(name_addr_list)
            .count(),
        2
    );

    // dblreq: the body ends at Content-Length 0; the trailing INVITE is ignored.
    let m = parse("dblreq.sip");
    assert_eq!(m.method(), Some(Method::Register));
    assert!(m.body().is_empty());

    // semiuri: the `;` belongs to the user part.
    let m = parse("semiuri.sip");
    let uri = m.uri().unwrap();
    assert_eq!(uri.user_unescaped().unwrap(), "user;par=u@example.net");
    assert_eq!(uri.params, "");

    // transports: five Vias with any transport token.
    let m = parse("transports.sip");
    let t: Vec<_> = m.vias().map(|v| v.unwrap().transport.to_string()).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);

    // mpart01: framed by Content-Length, binary body intact.
    let m = parse("mpart01.sip");
    assert_eq!(m.body().len(), 553);

    // noreason / unreason.
    assert_eq!(parse("noreason.sip").reason(), "");
    let reason = parse("unreason.sip").reason().to_string();
    assert!(reason.starts_with("= 2**3 * 5**2 "), "{reason}");
    assert!(reason.ends_with("простое"), "{reason}");

    // badbranch: parses, but the branch is not an RFC 3261 one.
    let m = parse("badbranch.sip");
    assert!(m.top_via().unwrap().rfc3261_branch().is_none());

    // cparam01/02: where `;unknownparam` belongs.
    let m = parse("cparam01.sip");
    let c = m
        .values(HeaderName::Contact)
        .flat_map(name_addr_list)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(c.uri.params, "");
    assert!(c.param("unknownparam").is_some());
    let m = parse("cparam02.sip");
    let c = m
        .values(HeaderName::Contact)
        .flat_map(name_addr_list)
        .next()
        .unwrap()
        .unwrap();
    assert!(c.uri.param("unknownparam").is_some());

    // regescrt: the contact keeps its escaped ?Route header as part of the URI.
    let m = parse("regescrt.sip");
    let c = m
        .values(HeaderName::Contact)
        .flat_map(name_addr_list)
        .next()
        .unwrap()
        .unwrap();
    assert!(c.uri.headers.unwrap().starts_with("Route=%3Csip:"));

    // inv2543: no Content-Length over UDP, the body is the rest of the datagram.
    let m = parse("inv2543.sip");
    assert!(m.body().starts_with(b"v=0"));

    // zeromf: Max-Forwards 0 is read as 0, not as absent.
    assert_eq!(parse("zeromf.sip").max_forwards(), Some(0));

    // RFC 5118: bracketed and bare IPv6 in received, ambiguous port.
    let m = parse("rfc5118/wire/via-received-param-no-delim.sip");
    assert!(m
        .top_via()
        .unwrap()
        .param("received")
        .flatten()
        .unwrap()
        .contains("2001:db8"));
    let m = parse("rfc5118/wire/port-ambiguous.sip");
    assert_eq!(m.uri().unwrap().port, None);
}

/// Every prefix and a set of byte mutations of every corpus file: no panic, whatever the verdict.
#[test]
fn no_input_panics() {
    let mut files = vec![];
    for dir in [
        "",
        "extra/",
        "variants/",
        "rfc5118/wire/",
        "rfc5118/archive/",
    ] {
        for e in std::fs::read_dir(data().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "sip") {
                files.push(std::fs::read(p).unwrap());
            }
        }
    }
    assert!(files.len() >= 75);
    for raw in &files {
        for n in (0..raw.len()).step_by(7) {
            verdict(&raw[..n]);
            sip::message::frame(&raw[..n]);
        }
        let mut m = raw.clone();
        for i in (0..m.len()).step_by(13) {
            let keep = m[i];
            for b in [0u8, b'\r', b'\n', b':', b';', b'<', b'"', b'%', 0xff] {
                m[i] = b;
                verdict(&m);
            }
            m[i] = keep;
        }
    }
}
