//! Parse and serialise a typical INVITE (a softphone's, with SDP) and its 200 OK: the work
//! every proxied call does on each hop. `cargo bench` in bench/micro.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sip::build::{response_to, Writer};
use sip::header::HeaderName;
use sip::message::Message;
use sip::Bytes;

const HEAD: &str = "INVITE sip:bob@example.org SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.org>\r\n\
From: Alice <sip:alice@example.org>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.org\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, INFO, UPDATE, REFER, NOTIFY\r\n\
Supported: replaces, timer\r\n\
User-Agent: softphone/1.0\r\n\
Content-Type: application/sdp\r\n";

const SDP: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn ok_bytes(invite: &Message) -> Bytes {
    let mut w = response_to(invite, 200, "OK", Some("a6c85cf"), "192.0.2.10:5060".parse().ok());
    w.header("Contact", "<sip:bob@192.0.2.4:5060>");
    w.header("Record-Route", "<sip:192.0.2.1:5060;lr>");
    w.finish(Some("application/sdp"), &invite.body()[..])
}

fn benches(c: &mut Criterion) {
    let raw = Bytes::from(format!("{HEAD}Content-Length: {}\r\n\r\n{SDP}", SDP.len()));
    let invite = Message::parse(raw.clone(), true).unwrap();
    let ok = ok_bytes(&invite);

    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse INVITE", |b| {
        b.iter(|| Message::parse(black_box(raw.clone()), true).unwrap())
    });
    g.bench_function("parse+validate INVITE", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(raw.clone()), true).unwrap();
            m.validate_request().unwrap();
            m
        })
    });
    g.bench_function("parse 200 OK", |b| {
        b.iter(|| Message::parse(black_box(ok.clone()), true).unwrap())
    });
    g.bench_function("serialize 200 OK", |b| b.iter(|| ok_bytes(black_box(&invite))));
    g.bench_function("serialize INVITE (as forwarded)", |b| {
        b.iter(|| {
            let m = black_box(&invite);
            let mut w = Writer::request("INVITE", "sip:bob@192.0.2.4:5060");
            w.header("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK0123456789ab.1;rport");
            for h in &m.headers {
                match h.name {
                    HeaderName::ContentLength => {}
                    HeaderName::MaxForwards => {
                        w.header_num("Max-Forwards", 69);
                    }
                    _ => {
                        w.line(m.text(h.line));
                    }
                }
            }
            w.finish(None, m.body())
        })
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
