//! Writing messages: a small writer that always computes Content-Length, responses built from
//! a request as RFC 3261 §8.2.6.2 says, and the RFC 3581 `received`/`rport` rewrite of a Via.

use crate::header::HeaderName;
use crate::message::Message;
use bytes::Bytes;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Appends the header lines of a message being written. Content-Length is written by `finish`.
pub struct Writer {
    buf: String,
}

impl Writer {
    /// Starts a request: writes the request line `METHOD URI SIP/2.0`.
    pub fn request(method: &str, uri: &str) -> Writer {
        let mut buf = String::with_capacity(512);
        let _ = write!(buf, "{method} {uri} SIP/2.0\r\n");
        Writer { buf }
    }

    /// Starts a response: writes the status line `SIP/2.0 CODE REASON`.
    pub fn response(code: u16, reason: &str) -> Writer {
        let mut buf = String::with_capacity(512);
        let _ = write!(buf, "SIP/2.0 {code} {reason}\r\n");
        Writer { buf }
    }

    /// Appends `name: value`.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Writer {
        self.header_parts(name, &[value])
    }

    /// A header whose value is the concatenation of `parts` (no formatting machinery: this is
    /// on every forwarded message).
    pub fn header_parts(&mut self, name: &str, parts: &[&str]) -> &mut Writer {
        self.buf.push_str(name);
        self.buf.push_str(": ");
        for p in parts {
            self.buf.push_str(p);
        }
        self.buf.push_str("\r\n");
        self
    }

    /// Appends a header whose value is a decimal number, without the formatting machinery.
    pub fn header_num(&mut self, name: &str, value: u64) -> &mut Writer {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = value;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        let text = std::str::from_utf8(&digits[i..]).unwrap_or("0");
        self.header_parts(name, &[text])
    }

    /// A header with a formatted value, for the paths that are not per message.
    pub fn header_fmt(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Writer {
        let _ = write!(self.buf, "{name}: {value}\r\n");
        self
    }

    /// Copies a header line exactly as it was received.
    pub fn line(&mut self, line: &str) -> &mut Writer {
        self.buf.push_str(line);
        self.buf.push_str("\r\n");
        self
    }

    /// Bytes written so far (start line and headers).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has been written (never after `request` or `response`).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Ends the head with Content-Length (and Content-Type when there is a body).
    pub fn finish(mut self, content_type: Option<&str>, body: &[u8]) -> Bytes {
        if let (Some(ct), false) = (content_type, body.is_empty()) {
            self.header("Content-Type", ct);
        }
        self.header_num("Content-Length", body.len() as u64);
        self.buf.push_str("\r\n");
        let mut out = self.buf.into_bytes();
        out.extend_from_slice(body);
        Bytes::from(out)
    }
}

/// The first Via element of a received request with `received` and `rport` filled in
/// (RFC 3261 §18.2.1, RFC 3581 §4): `received` when the sent-by host is not the source
/// address or when rport was asked for; `rport=PORT` when the client asked with an empty rport.
pub fn via_with_received(msg: &Message, source: SocketAddr) -> Option<String> {
    let via = msg.top_via()?;
    let wants_rport = matches!(via.param("rport"), Some(None));
    let host_is_source = via.host.ip() == Some(source.ip());
    let mut out = String::with_capacity(via.raw.len() + 40);
    // Rebuild the params without an empty rport and without a stale received.
    let head_len = via.raw.len() - via.params.len();
    out.push_str(&via.raw[..head_len]);
    for p in via
        .params
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let name = p.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("received")
            || (wants_rport && name.eq_ignore_ascii_case("rport"))
        {
            continue;
        }
        out.push(';');
        out.push_str(p);
    }
    if !host_is_source || wants_rport {
        let _ = match source.ip() {
            IpAddr::V4(ip) => write!(out, ";received={ip}"),
            IpAddr::V6(ip) => write!(out, ";received=[{ip}]"),
        };
    }
    if wants_rport {
        let _ = write!(out, ";rport={}", source.port());
    }
    Some(out)
}

/// Starts a response to `req`: Via (with the top one rewritten per RFC 3581 when `source` is
/// given), From, To (with `to_tag` added if the request had none), Call-ID and CSeq.
pub fn response_to(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    source: Option<SocketAddr>,
) -> Writer {
    let mut w = Writer::response(code, reason);
    let mut first = true;
    for h in &req.headers {
        match h.name {
            HeaderName::Via => {
                let value = req.text(h.value);
                if first {
                    first = false;
                    if let Some(top) = source.and_then(|s| via_with_received(req, s)) {
                        // The rewritten first element replaces its original text; any further
                        // elements of the same header line are kept.
                        let rest = req
                            .top_via()
                            .map_or("", |v| &value[v.raw.len().min(value.len())..]);
                        w.header_parts("Via", &[&top, rest]);
                        continue;
                    }
                }
                w.line(req.text(h.line));
            }
            HeaderName::To => {
                let value = req.text(h.value);
                let has_tag = req.to().is_some_and(|t| t.tag().is_some());
                match to_tag {
                    Some(tag) if !has_tag && code > 100 => {
                        w.header_parts("To", &[value, ";tag=", tag]);
                    }
                    _ => {
                        w.line(req.text(h.line));
                    }
                }
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                w.line(req.text(h.line));
            }
            _ => {}
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(via: &str) -> Message {
        let raw = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nTo: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\n\
Call-ID: x\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(raw), true).unwrap()
    }

    #[test]
    fn numbers_and_parts() {
        let mut w = Writer::response(200, "OK");
        w.header_num("Expires", 0)
            .header_num("Max", u64::MAX)
            .header_parts("X-Y", &["a", "b"]);
        let m = Message::parse(w.finish(None, b"hi"), false).unwrap();
        assert_eq!(m.value(HeaderName::Expires), Some("0"));
        assert_eq!(m.other_value("Max"), Some("18446744073709551615"));
        assert_eq!(m.other_value("X-Y"), Some("ab"));
        assert_eq!(m.body(), b"hi");
    }

    #[test]
    fn rport_and_received() {
        let m = req("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKa");
        let v = via_with_received(&m, "198.18.0.7:4000".parse().unwrap()).unwrap();
        assert_eq!(
            v,
            "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;received=198.18.0.7;rport=4000"
        );
        let m = req("SIP/2.0/UDP 198.18.0.7:5060;branch=z9hG4bKa");
        let v = via_with_received(&m, "198.18.0.7:5060".parse().unwrap()).unwrap();
        assert_eq!(v, "SIP/2.0/UDP 198.18.0.7:5060;branch=z9hG4bKa");
    }

    #[test]
    fn response_copies_the_right_headers() {
        let m =
            req("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKa, SIP/2.0/TCP h2;branch=z9hG4bKb");
        let r = response_to(
            &m,
            200,
            "OK",
            Some("xyz"),
            Some("198.18.0.7:4000".parse().unwrap()),
        )
        .finish(None, b"");
        let r = Message::parse(r, true).unwrap();
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.to().unwrap().tag(), Some("xyz"));
        let vias: Vec<_> = r.vias().map(|v| v.unwrap().raw.to_string()).collect();
        assert_eq!(vias.len(), 2);
        assert!(vias[0].ends_with("rport=4000"));
        assert_eq!(r.cseq(), Some((1, "OPTIONS")));
        assert!(r.value(HeaderName::MaxForwards).is_none());
        r.validate_response().unwrap();
    }
}
