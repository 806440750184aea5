//! Just enough SDP (RFC 4566, RFC 3264) for a media relay: where each stream wants its media,
//! and the same description with the connection addresses and ports replaced by the relay's.
//! Everything else (codecs, crypto attributes, ZRTP hashes, ICE) is passed through byte for
//! byte, so end-to-end encryption keys stay between the phones.

use std::net::IpAddr;

/// The media direction of a stream (RFC 3264 §5.1, §8.4: hold is sendonly or inactive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv`, the default: media both ways.
    SendRecv,
    /// `a=sendonly`: the sender of this description only sends (hold).
    SendOnly,
    /// `a=recvonly`: the sender of this description only receives.
    RecvOnly,
    /// `a=inactive`: no media either way (hold).
    Inactive,
}

impl Direction {
    fn from_attr(a: &str) -> Option<Direction> {
        Some(match a {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The attribute name (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// One `m=` section as the relay needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media<'a> {
    /// The media type (`audio`, `video`, ...), from the `m=` line.
    pub kind: &'a str,
    /// 0 for a stream that is refused or disabled.
    pub port: u16,
    /// The transport protocol (`RTP/AVP`, `RTP/SAVP`, ...); empty if the line has none.
    pub proto: &'a str,
    /// The connection address in effect (the stream's own `c=`, else the session's).
    pub addr: Option<IpAddr>,
    /// `a=rtcp:` port (RFC 3605), when given.
    pub rtcp_port: Option<u16>,
    /// `a=rtcp-mux` (RFC 5761): RTCP shares the RTP port.
    pub rtcp_mux: bool,
    /// The stream's direction attribute, else the session's, else `sendrecv`.
    pub direction: Direction,
}

impl Media<'_> {
    /// RFC 3264 §8.4 (and RFC 2543's `c=0.0.0.0`): this stream is on hold.
    pub fn on_hold(&self) -> bool {
        self.direction != Direction::SendRecv || self.addr.is_some_and(|a| a.is_unspecified())
    }
}

/// A parsed session description, borrowing from the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sdp<'a> {
    /// The `m=` sections, in order.
    pub media: Vec<Media<'a>>,
}

/// Lines of a body, each without its line ending (SDP allows a bare LF too).
fn lines(body: &str) -> impl Iterator<Item = &str> {
    body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// `c=IN IP4 192.0.2.1` (or `/ttl` for multicast) to an address.
fn connection(value: &str) -> Option<IpAddr> {
    let mut it = value.split_ascii_whitespace();
    if it.next()? != "IN" {
        return None;
    }
    let _family = it.next()?;
    let addr = it.next()?;
    addr.split('/').next()?.parse().ok()
}

impl<'a> Sdp<'a> {
    /// Parses a session description; None when it is not one (no `v=` first, not UTF-8, or
    /// an `m=` line without a port).
    pub fn parse(body: &'a [u8]) -> Option<Sdp<'a>> {
        let text = std::str::from_utf8(body).ok()?;
        let mut all = lines(text).filter(|l| !l.is_empty());
        if !all.next()?.starts_with("v=") {
            return None;
        }
        let mut session_addr = None;
        let mut session_dir = Direction::SendRecv;
        let mut media: Vec<Media<'a>> = vec![];
        for line in lines(text) {
            let (kind, value) = match line.split_once('=') {
                Some((k, v)) if k.len() == 1 => (k, v),
                _ => continue,
            };
            match (kind, media.last_mut()) {
                ("m", _) => {
                    let mut it = value.split_ascii_whitespace();
                    let kind = it.next()?;
                    let port = it.next()?.split('/').next()?.parse().ok()?;
                    let proto = it.next().unwrap_or("");
                    media.push(Media {
                        kind,
                        port,
                        proto,
                        addr: session_addr,
                        rtcp_port: None,
                        rtcp_mux: false,
                        direction: session_dir,
                    });
                }
                ("c", None) => session_addr = connection(value),
                ("c", Some(m)) => m.addr = connection(value),
                ("a", m) => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    match (Direction::from_attr(name), m) {
                        (Some(d), None) => session_dir = d,
                        (Some(d), Some(m)) => m.direction = d,
                        (None, Some(m)) if name == "rtcp-mux" => m.rtcp_mux = true,
                        (None, Some(m)) if name == "rtcp" => {
                            m.rtcp_port = arg
                                .split_ascii_whitespace()
                                .next()
                                .and_then(|p| p.parse().ok())
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Some(Sdp { media })
    }

    /// Whether every live stream is on hold (a held call sends little or no media).
    pub fn on_hold(&self) -> bool {
        let mut live = self.media.iter().filter(|m| m.port != 0).peekable();
        live.peek().is_some() && live.all(Media::on_hold)
    }
}

/// `o=<username> <sess-id> <sess-version> IN <addrtype> <address>` with the address type and
/// address set to `family` and `addr`, when its address type is the other family (None
/// otherwise: the line stays as it is).
///
/// RFC 4566 §5.2 lets the origin name any address, but phones check that its type agrees
/// with `c=` (baresip refuses an IPv6 `c=` under an IPv4 `o=` with 488), so when the relay
/// moves a description to the other family the origin moves with it. Username, session id
/// and version stay: they identify the session and its versions end to end.
fn origin(value: &str, family: &str, addr: IpAddr) -> Option<String> {
    let mut toks = value.split_ascii_whitespace();
    let nettype = toks.nth(3)?;
    let addrtype = toks.next()?;
    let other_family = matches!(addrtype, "IP4" | "IP6") && addrtype != family;
    if nettype != "IN" || !other_family {
        return None;
    }
    // Everything before the address type, byte for byte (the same spacing).
    let start = addrtype.as_ptr() as usize - value.as_ptr() as usize;
    Some(format!("o={}{family} {addr}", &value[..start]))
}

/// The body with every connection address set to `addr` and the `i`-th stream's port set to
/// `ports[i]` (its RTCP to `ports[i] + 1`). Streams with port 0 stay refused, a `c=` of
/// 0.0.0.0 (hold, RFC 2543) stays unspecified (`::` when the description moves to IPv6); an `o=` of the other address family than `addr`
/// is moved to `addr` (see `origin`); all other lines are kept byte for byte.
pub fn rewrite(body: &[u8], addr: IpAddr, ports: &[u16]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(body) else {
        return body.to_vec();
    };
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut stream: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let (line, ending, next) = match rest.find('\n') {
            Some(i) => {
                let l = &rest[..i];
                match l.strip_suffix('\r') {
                    Some(l) => (l, "\r\n", &rest[i + 1..]),
                    None => (l, "\n", &rest[i + 1..]),
                }
            }
            None => (rest, "", ""),
        };
        rest = next;
        let port = stream.and_then(|i| ports.get(i).copied());
        let moved = line
            .strip_prefix("o=")
            .and_then(|v| origin(v, family, addr));
        if let Some(o) = moved {
            out.extend_from_slice(o.as_bytes());
        } else if let Some(value) = line.strip_prefix("c=") {
            match connection(value) {
                Some(a) if !a.is_unspecified() => {
                    out.extend_from_slice(format!("c=IN {family} {addr}").as_bytes());
                }
                // Hold keeps its unspecified address, in the family the origin moved to:
                // mixed families are what a phone refuses.
                Some(a) if a.is_ipv4() != addr.is_ipv4() => {
                    let none: IpAddr = if addr.is_ipv4() {
                        std::net::Ipv4Addr::UNSPECIFIED.into()
                    } else {
                        std::net::Ipv6Addr::UNSPECIFIED.into()
                    };
                    out.extend_from_slice(format!("c=IN {family} {none}").as_bytes());
                }
                _ => out.extend_from_slice(line.as_bytes()),
            }
        } else if let Some(value) = line.strip_prefix("m=") {
            let i = stream.map_or(0, |i| i + 1);
            stream = Some(i);
            // The port is the second token; a port count (`/2`) is dropped, as it would ask
            // for consecutive pairs.
            let mut toks = value.split_ascii_whitespace();
            let port_tok = toks.nth(1);
            let old_port = port_tok.and_then(|p| p.split('/').next()?.parse::<u16>().ok());
            match (port_tok, old_port, ports.get(i)) {
                (Some(tok), Some(p), Some(new)) if p != 0 => {
                    let start = tok.as_ptr() as usize - value.as_ptr() as usize;
                    out.extend_from_slice(b"m=");
                    out.extend_from_slice(&value.as_bytes()[..start]);
                    out.extend_from_slice(new.to_string().as_bytes());
                    out.extend_from_slice(&value.as_bytes()[start + tok.len()..]);
                }
                _ => out.extend_from_slice(line.as_bytes()),
            }
        } else if let (true, Some(p)) = (line.starts_with("a=rtcp:"), port) {
            out.extend_from_slice(
                format!("a=rtcp:{} IN {family} {addr}", u32::from(p) + 1).as_bytes(),
            );
        } else {
            out.extend_from_slice(line.as_bytes());
        }
        out.extend_from_slice(ending.as_bytes());
    }
    out
}

/// Addresses that are not reachable from the public Internet: RFC 1918, RFC 6598 (carrier
/// NAT), link-local, loopback, and IPv6 unique-local / link-local. A phone that advertises one
/// of these while its packets come from elsewhere is behind NAT.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_link_local()
                || a.is_loopback()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            a.is_loopback() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.168.1.20\r\n\
s=-\r\n\
c=IN IP4 192.168.1.20\r\n\
t=0 0\r\n\
m=audio 49170 RTP/SAVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n\
a=zrtp-hash:1.10 fe30efd02423cb054e50efd0248742ac7a52c8f91bc2df881ae642c371ba46df\r\n\
a=rtcp:49171 IN IP4 192.168.1.20\r\n\
m=video 51372 RTP/AVP 99\r\n\
c=IN IP4 192.168.1.21\r\n\
a=rtpmap:99 h263-1998/90000\r\n\
a=sendonly\r\n\
m=text 0 RTP/AVP 98\r\n";

    #[test]
    fn streams_addresses_and_directions() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        assert_eq!(sdp.media.len(), 3);
        let a = &sdp.media[0];
        assert_eq!((a.kind, a.port, a.proto), ("audio", 49170, "RTP/SAVP"));
        assert_eq!(a.addr, Some("192.168.1.20".parse().unwrap()));
        assert_eq!(a.rtcp_port, Some(49171));
        assert_eq!(a.direction, Direction::SendRecv);
        let v = &sdp.media[1];
        assert_eq!(v.addr, Some("192.168.1.21".parse().unwrap()));
        assert_eq!(v.direction, Direction::SendOnly);
        assert!(v.on_hold());
        assert_eq!(sdp.media[2].port, 0);
        assert!(!sdp.on_hold(), "audio is still sendrecv");
    }

    #[test]
    fn rewrite_changes_addresses_and_ports_only() {
        let out = rewrite(
            OFFER.as_bytes(),
            "198.18.0.1".parse().unwrap(),
            &[20000, 20002, 20004],
        );
        let out = String::from_utf8(out).unwrap();
        let expected = OFFER
            .replace("c=IN IP4 192.168.1.20", "c=IN IP4 198.18.0.1")
            .replace("c=IN IP4 192.168.1.21", "c=IN IP4 198.18.0.1")
            .replace("m=audio 49170", "m=audio 20000")
            .replace("m=video 51372", "m=video 20002")
            .replace(
                "a=rtcp:49171 IN IP4 192.168.1.20",
                "a=rtcp:20001 IN IP4 198.18.0.1",
            );
        assert_eq!(out, expected);
        // The origin line, crypto and ZRTP attributes are untouched; a refused stream stays 0.
        assert!(out.contains("o=alice 2890844526 2890844526 IN IP4 192.168.1.20\r\n"));
        assert!(out.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQ"));
        assert!(out.contains("m=text 0 RTP/AVP 98\r\n"));
    }

    #[test]
    fn rewrite_to_ipv6_and_bare_lf() {
        let body = "v=0\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0\na=rtcp-mux\n";
        let out = rewrite(body.as_bytes(), "2001:db8::1".parse().unwrap(), &[30000]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "v=0\nc=IN IP6 2001:db8::1\nm=audio 30000 RTP/AVP 0\na=rtcp-mux\n"
        );
        let sdp = Sdp::parse(body.as_bytes()).unwrap();
        assert!(sdp.media[0].rtcp_mux);
    }

    /// RFC 4566 §5.2: when the relay moves a description to the other address family, the
    /// origin's address type and address move too; within a family the origin is left alone.
    #[test]
    fn the_origin_follows_a_change_of_family() {
        let v6: IpAddr = "::1".parse().unwrap();
        let out = String::from_utf8(rewrite(OFFER.as_bytes(), v6, &[20000, 20002, 0])).unwrap();
        assert!(
            out.contains("o=alice 2890844526 2890844526 IN IP6 ::1\r\n"),
            "{out}"
        );
        assert!(out.contains("c=IN IP6 ::1\r\n"));
        assert!(!out.contains("IP4"), "nothing IPv4 is left: {out}");

        // And back: an IPv6 phone's description sent to an IPv4 one.
        let body = "v=0\r\no=- 7 8 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 2001:db8::5\r\n\
t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        let out = String::from_utf8(rewrite(body.as_bytes(), v4, &[20000])).unwrap();
        assert_eq!(
            out,
            "v=0\r\no=- 7 8 IN IP4 198.18.0.1\r\ns=-\r\nc=IN IP4 198.18.0.1\r\n\
t=0 0\r\nm=audio 20000 RTP/AVP 0\r\n"
        );

        // Odd spacing before the address type is kept; an origin that is not IN IP4/IP6,
        // or is cut short, is left as it is.
        let odd = "v=0\no=bob  1 2\tIN IP4 10.0.0.1\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0\n";
        let out = String::from_utf8(rewrite(odd.as_bytes(), v6, &[20000])).unwrap();
        assert!(out.contains("o=bob  1 2\tIN IP6 ::1\n"), "{out}");
        for o in [
            "o=x 1 2 IN XYZ host",
            "o=x 1 2 IN",
            "o=",
            "o=x 1 2 ATM NSAP 47",
        ] {
            let body = format!("v=0\n{o}\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0\n");
            let out = String::from_utf8(rewrite(body.as_bytes(), v6, &[20000])).unwrap();
            assert!(out.contains(&format!("\n{o}\n")), "{out}");
        }
    }

    #[test]
    fn hold_is_seen_and_kept() {
        let body = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let sdp = Sdp::parse(body.as_bytes()).unwrap();
        assert!(sdp.on_hold());
        let out = rewrite(body.as_bytes(), "198.18.0.1".parse().unwrap(), &[20000]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 20000 RTP/AVP 0\r\n"
        );
        let inactive = "v=0\r\nc=IN IP4 1.2.3.4\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert!(Sdp::parse(inactive.as_bytes()).unwrap().on_hold());
    }

    #[test]
    fn large_descriptions_and_garbage() {
        // Far beyond 1 KB: 40 streams.
        let mut body = String::from("v=0\r\nc=IN IP4 10.1.1.1\r\n");
        for i in 0..40 {
            body.push_str(&format!(
                "m=audio {} RTP/AVP 0\r\na=x-long-attribute:{}\r\n",
                5000 + 2 * i,
                "z".repeat(100)
            ));
        }
        let ports: Vec<u16> = (0..40).map(|i| 20000 + 2 * i).collect();
        let out = rewrite(body.as_bytes(), "198.18.0.1".parse().unwrap(), &ports);
        let sdp = Sdp::parse(&out).unwrap();
        assert_eq!(sdp.media.len(), 40);
        assert_eq!(sdp.media[39].port, 20078);
        assert!(sdp
            .media
            .iter()
            .all(|m| m.addr == Some("198.18.0.1".parse().unwrap())));
        assert!(Sdp::parse(b"not sdp").is_none());
        assert!(Sdp::parse(b"v=0\r\nm=audio\r\n").is_none());
        assert!(Sdp::parse(&[0xff, 0xfe]).is_none());
        // Odd spacing is still understood and rewritten.
        let odd = "v=0\nc=IN IP4 10.0.0.1\nm=audio\t 4000/2  RTP/AVP 0\na=rtcp:\n";
        let sdp = Sdp::parse(odd.as_bytes()).unwrap();
        assert_eq!((sdp.media[0].port, sdp.media[0].rtcp_port), (4000, None));
        let out = rewrite(odd.as_bytes(), "198.18.0.1".parse().unwrap(), &[20000]);
        assert_eq!(Sdp::parse(&out).unwrap().media[0].port, 20000);
    }

    #[test]
    fn private_addresses() {
        for p in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "100.64.1.2",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(p.parse().unwrap()), "{p}");
        }
        for p in ["198.18.0.1", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_private(p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn a_held_description_moved_to_the_other_family_stays_held_in_that_family() {
        let held = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 0\r\n";
        let out = rewrite(held.as_bytes(), "2001:db8::9".parse().unwrap(), &[20000]);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("o=- 1 2 IN IP6 2001:db8::9\r\n"), "{out}");
        assert!(out.contains("c=IN IP6 ::\r\n"), "{out}");
        assert!(!out.contains("IP4"), "{out}");
        // Within one family a hold line is kept byte for byte.
        let out = rewrite(held.as_bytes(), "198.51.100.1".parse().unwrap(), &[20000]);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("c=IN IP4 0.0.0.0\r\n"));
    }
}
