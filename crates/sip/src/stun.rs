//! STUN Binding (RFC 5389), the part a SIP server needs: answering Binding requests on its SIP
//! port (RFC 5626 §4.4.2 keep-alives, which tell a phone its public address) and on a STUN port,
//! so clients learn the address their NAT gives them. Classic RFC 3489 requests (no magic
//! cookie) get the MAPPED-ADDRESS they understand (RFC 5389 §12). No I/O: bytes in, bytes out.

use std::net::{IpAddr, SocketAddr};

const COOKIE: u32 = 0x2112_A442;
const HEADER: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

const MAPPED_ADDRESS: u16 = 0x0001;
/// RFC 3489; not in RFC 5389, but old clients send it (with no flags set) in every request.
const CHANGE_REQUEST: u16 = 0x0003;
const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const SOFTWARE: u16 = 0x8022;
const FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// True when a datagram is STUN rather than SIP: the two top bits of the first byte are zero
/// (a SIP message starts with a letter, RFC 7983 §7) and the length field fits the datagram.
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= HEADER
        && data[0] & 0xC0 == 0
        && usize::from(u16::from_be_bytes([data[2], data[3]])) + HEADER == data.len()
        && data.len().is_multiple_of(4)
}

/// The answer to a STUN message from `source`: a Binding success response carrying the
/// source address, an error response for a Binding request with attributes we must
/// understand and do not, or None (not a Binding request: indications and responses are
/// dropped, RFC 5389 §7.3).
pub fn answer(data: &[u8], source: SocketAddr, software: &str) -> Option<Vec<u8>> {
    if !is_stun(data) {
        return None;
    }
    let kind = u16::from_be_bytes([data[0], data[1]]);
    if kind != BINDING_REQUEST {
        return None;
    }
    let classic = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) != COOKIE;
    let mut unknown = vec![];
    let mut fingerprint = false;
    let mut at = HEADER;
    while at + 4 <= data.len() {
        let t = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        let value = data.get(at + 4..at + 4 + len)?;
        match t {
            FINGERPRINT => {
                // It must be last, and right.
                if value.len() != 4 || at + 8 != data.len() {
                    return None;
                }
                let want = crc32fast::hash(&data[..at]) ^ FINGERPRINT_XOR;
                if u32::from_be_bytes([value[0], value[1], value[2], value[3]]) != want {
                    return None;
                }
                fingerprint = true;
            }
            CHANGE_REQUEST if value.iter().all(|&b| b == 0) => {}
            t if t < 0x8000 => unknown.push(t),
            _ => {}
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    // The magic cookie and the transaction id: what the response repeats, and the XOR mask.
    let txid = &data[4..HEADER];
    let mut out = Vec::with_capacity(96);
    if !unknown.is_empty() {
        out.extend_from_slice(&BINDING_ERROR.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(txid);
        let reason = b"Unknown Attribute";
        let mut v = vec![0, 0, 4, 20];
        v.extend_from_slice(reason);
        attribute(&mut out, ERROR_CODE, &v);
        let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
        attribute(&mut out, UNKNOWN_ATTRIBUTES, &list);
    } else {
        out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(txid);
        if classic {
            attribute(&mut out, MAPPED_ADDRESS, &address(source, None));
        } else {
            attribute(&mut out, XOR_MAPPED_ADDRESS, &address(source, Some(txid)));
        }
        attribute(&mut out, SOFTWARE, software.as_bytes());
    }
    if fingerprint {
        // The length must already count the fingerprint when the CRC is taken.
        set_length(&mut out, 8);
        let crc = crc32fast::hash(&out) ^ FINGERPRINT_XOR;
        out.extend_from_slice(&FINGERPRINT.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&crc.to_be_bytes());
    } else {
        set_length(&mut out, 0);
    }
    Some(out)
}

fn set_length(out: &mut [u8], extra: usize) {
    let len = (out.len() - HEADER + extra) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
}

fn attribute(out: &mut Vec<u8>, t: u16, value: &[u8]) {
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
}

/// (XOR-)MAPPED-ADDRESS value; XORed with the cookie (and the transaction id for IPv6) when
/// `xor` carries the cookie and transaction id.
fn address(a: SocketAddr, xor: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![0];
    let mut mask = COOKIE.to_be_bytes().to_vec();
    if let Some(x) = xor {
        // x is cookie + transaction id (16 bytes).
        mask = x.to_vec();
    }
    let port_mask = if xor.is_some() {
        (COOKIE >> 16) as u16
    } else {
        0
    };
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&(a.port() ^ port_mask).to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                v.push(if xor.is_some() { b ^ mask[i] } else { *b });
            }
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&(a.port() ^ port_mask).to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                v.push(if xor.is_some() { b ^ mask[i] } else { *b });
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cookie: bool, extra: &[u8]) -> Vec<u8> {
        let mut r = vec![0x00, 0x01, 0, 0];
        if cookie {
            r.extend_from_slice(&COOKIE.to_be_bytes());
        } else {
            r.extend_from_slice(&[9, 9, 9, 9]);
        }
        r.extend_from_slice(&[
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ]);
        r.extend_from_slice(extra);
        let len = (r.len() - HEADER) as u16;
        r[2..4].copy_from_slice(&len.to_be_bytes());
        r
    }

    /// The mapped address in a response, decoded.
    fn mapped(resp: &[u8]) -> SocketAddr {
        let mut at = HEADER;
        while at + 4 <= resp.len() {
            let t = u16::from_be_bytes([resp[at], resp[at + 1]]);
            let len = usize::from(u16::from_be_bytes([resp[at + 2], resp[at + 3]]));
            let v = &resp[at + 4..at + 4 + len];
            if t == XOR_MAPPED_ADDRESS || t == MAPPED_ADDRESS {
                let xor = t == XOR_MAPPED_ADDRESS;
                let port = u16::from_be_bytes([v[2], v[3]]) ^ if xor { 0x2112 } else { 0 };
                let mask: Vec<u8> = resp[4..20].to_vec();
                let ip: IpAddr = if v[1] == 1 {
                    let o: Vec<u8> = (0..4)
                        .map(|i| v[4 + i] ^ if xor { mask[i] } else { 0 })
                        .collect();
                    IpAddr::from([o[0], o[1], o[2], o[3]])
                } else {
                    let mut o = [0u8; 16];
                    for i in 0..16 {
                        o[i] = v[4 + i] ^ if xor { mask[i] } else { 0 };
                    }
                    IpAddr::from(o)
                };
                return SocketAddr::new(ip, port);
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        panic!("no mapped address");
    }

    #[test]
    fn binding_requests_get_the_source_address() {
        let src: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let r = answer(&request(true, &[]), src, "hw").unwrap();
        assert_eq!(&r[0..2], &[0x01, 0x01]);
        assert_eq!(&r[4..20], &request(true, &[])[4..20], "same transaction");
        assert!(is_stun(&r));
        assert_eq!(mapped(&r), src);
        // RFC 5769 §2.2's address, over IPv6.
        let v6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        assert_eq!(mapped(&answer(&request(true, &[]), v6, "hw").unwrap()), v6);
        // A classic RFC 3489 request with an empty CHANGE-REQUEST gets MAPPED-ADDRESS.
        let classic = request(false, &[0, 3, 0, 4, 0, 0, 0, 0]);
        let r = answer(&classic, src, "hw").unwrap();
        assert_eq!(u16::from_be_bytes([r[20], r[21]]), MAPPED_ADDRESS);
        assert_eq!(mapped(&r), src);
    }

    #[test]
    fn fingerprints_are_checked_and_answered() {
        let src: SocketAddr = "198.18.0.9:5060".parse().unwrap();
        let mut req = request(true, &[]);
        // Add a FINGERPRINT: the length counts it first.
        let len = (req.len() - HEADER + 8) as u16;
        req[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32fast::hash(&req) ^ FINGERPRINT_XOR;
        req.extend_from_slice(&[0x80, 0x28, 0, 4]);
        req.extend_from_slice(&crc.to_be_bytes());
        let r = answer(&req, src, "hw").unwrap();
        let n = r.len();
        assert_eq!(&r[n - 8..n - 4], &[0x80, 0x28, 0, 4]);
        let want = crc32fast::hash(&r[..n - 8]) ^ FINGERPRINT_XOR;
        assert_eq!(&r[n - 4..], &want.to_be_bytes());
        // A wrong fingerprint: dropped.
        let mut bad = req.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(answer(&bad, src, "hw").is_none());
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let src: SocketAddr = "198.18.0.9:5060".parse().unwrap();
        let r = answer(&request(true, &[0x00, 0x77, 0, 4, 1, 2, 3, 4]), src, "hw").unwrap();
        assert_eq!(&r[0..2], &[0x01, 0x11]);
        assert!(r.windows(2).any(|w| w == [0x00, 0x77]));
        // Comprehension-optional ones are ignored.
        let r = answer(&request(true, &[0x80, 0x77, 0, 4, 1, 2, 3, 4]), src, "hw").unwrap();
        assert_eq!(&r[0..2], &[0x01, 0x01]);
    }

    #[test]
    fn sip_and_garbage_are_not_stun() {
        assert!(!is_stun(b"OPTIONS sip:x SIP/2.0\r\n\r\n"));
        assert!(!is_stun(&[0u8; 19]));
        let mut r = request(true, &[]);
        r.push(0);
        assert!(!is_stun(&r), "length must fit");
        // Responses and indications are not answered.
        let mut ind = request(true, &[]);
        ind[1] = 0x11;
        assert!(answer(&ind, "198.18.0.9:1".parse().unwrap(), "hw").is_none());
        // Truncated attribute: dropped, no panic.
        let mut t = request(true, &[0x80, 0x22, 0, 8, 1, 2, 3, 4]);
        t[3] = 8;
        assert!(answer(&t, "198.18.0.9:1".parse().unwrap(), "hw").is_none());
    }
}
