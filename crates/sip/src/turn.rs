//! TURN messages (RFC 8656, with RFC 6156's address families) over STUN (RFC 8489): reading
//! a request or indication into the attributes a server acts on, checking its
//! MESSAGE-INTEGRITY against a long-term key, writing answers with integrity and
//! FINGERPRINT, and ChannelData framing. No I/O, no state: bytes in, bytes out.
//!
//! Written here rather than taken from a STUN crate because the server's long-term keys are
//! the SIP users' stored digest hashes (MD5 of `user:realm:password`, RFC 8489 §9.2.2 is the
//! same formula), and the crates want the password itself.

use hmac::{Hmac, Mac};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// STUN's magic cookie (RFC 8489 §5).
pub const COOKIE: u32 = 0x2112_A442;
const HEADER: usize = 20;

/// Methods.
pub const BINDING: u16 = 0x001;
/// Allocate (RFC 8656 §7).
pub const ALLOCATE: u16 = 0x003;
/// Refresh (§8).
pub const REFRESH: u16 = 0x004;
/// Send indication (§11).
pub const SEND: u16 = 0x006;
/// Data indication (§11).
pub const DATA: u16 = 0x007;
/// CreatePermission (§10).
pub const CREATE_PERMISSION: u16 = 0x008;
/// ChannelBind (§12).
pub const CHANNEL_BIND: u16 = 0x009;
/// Connect (RFC 6062 §4.3): a TCP connection from the relayed address to a peer.
pub const CONNECT: u16 = 0x00A;
/// ConnectionBind (RFC 6062 §4.4): a new client connection joined to a peer's.
pub const CONNECTION_BIND: u16 = 0x00B;
/// ConnectionAttempt indication (RFC 6062 §4.4): a peer connected to the relayed address.
pub const CONNECTION_ATTEMPT: u16 = 0x00C;

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 8445 §16).
pub mod attr {
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT.
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// CONNECTION-ID (RFC 6062).
    pub const CONNECTION_ID: u16 = 0x002A;
    /// ADDITIONAL-ADDRESS-FAMILY.
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
    /// PRIORITY.
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE.
    pub const USE_CANDIDATE: u16 = 0x0025;
}

const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// A message's class (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A request: it gets a response.
    Request,
    /// An indication: no response.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// The message type field for a method and class (RFC 8489 §5, the interleaved bits).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 0b01) | ((t >> 7) & 0b10) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// A TURN (or STUN) message as read, with the attributes a server uses.
#[derive(Debug, Default)]
pub struct Message<'a> {
    /// The method (`ALLOCATE`, `REFRESH`...).
    pub method: u16,
    /// The class.
    pub class: Option<Class>,
    /// The transaction id.
    pub txid: [u8; 12],
    /// USERNAME.
    pub username: Option<&'a str>,
    /// REALM.
    pub realm: Option<&'a str>,
    /// NONCE.
    pub nonce: Option<&'a str>,
    /// Where MESSAGE-INTEGRITY starts, when there is one.
    integrity_at: Option<usize>,
    /// MESSAGE-INTEGRITY-SHA256 was there (not checked: a client sends MESSAGE-INTEGRITY too
    /// unless the server asked otherwise, which this one never does).
    pub integrity_sha256: bool,
    /// LIFETIME, seconds.
    pub lifetime: Option<u32>,
    /// REQUESTED-TRANSPORT's protocol number (17 UDP, 6 TCP).
    pub requested_transport: Option<u8>,
    /// REQUESTED-ADDRESS-FAMILY (1 IPv4, 2 IPv6).
    pub requested_family: Option<u8>,
    /// ADDITIONAL-ADDRESS-FAMILY (2 IPv6), for a dual allocation.
    pub additional_family: Option<u8>,
    /// Every XOR-PEER-ADDRESS, in order.
    pub peers: Vec<SocketAddr>,
    /// CHANNEL-NUMBER.
    pub channel: Option<u16>,
    /// DATA.
    pub data: Option<&'a [u8]>,
    /// EVEN-PORT was there.
    pub even_port: bool,
    /// RESERVATION-TOKEN was there.
    pub reservation_token: bool,
    /// DONT-FRAGMENT was there.
    pub dont_fragment: bool,
    /// Comprehension-required attributes this code does not know (answered 420).
    pub unknown: Vec<u16>,
    /// ERROR-CODE's number, in an error response.
    pub error_code: Option<u16>,
    /// XOR-RELAYED-ADDRESS, in an Allocate success response.
    pub relayed: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS, in a success response.
    pub mapped: Option<SocketAddr>,
    /// CONNECTION-ID (RFC 6062).
    pub connection_id: Option<u32>,
}

/// Whether `data` looks like a STUN message: top bits zero, the cookie, a length that fits.
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= HEADER
        && data[0] & 0xC0 == 0
        && u32::from_be_bytes([data[4], data[5], data[6], data[7]]) == COOKIE
        && usize::from(u16::from_be_bytes([data[2], data[3]])) + HEADER == data.len()
        && data.len().is_multiple_of(4)
}

/// A ChannelData message (RFC 8656 §12.4; channels 0x4000-0x7FFF as RFC 5766 allowed,
/// which older clients still use): its channel number and application data. Over a
/// stream the message is padded to a multiple of four; `data` may be longer than the message
/// (the caller frames streams with [`frame_len`]).
pub fn channel_data(data: &[u8]) -> Option<(u16, &[u8])> {
    if data.len() < 4 || !(0x40..=0x7F).contains(&data[0]) {
        return None;
    }
    let channel = u16::from_be_bytes([data[0], data[1]]);
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    Some((channel, data.get(4..4 + len)?))
}

/// The ChannelData header for `len` bytes on `channel`.
pub fn channel_header(channel: u16, len: usize) -> [u8; 4] {
    let c = channel.to_be_bytes();
    let l = (len as u16).to_be_bytes();
    [c[0], c[1], l[0], l[1]]
}

/// On a stream (TCP, TLS): how many bytes the message at the start of `buf` takes, padding
/// included, once at least its first four bytes are there; None while fewer are, and
/// Some(0) when `buf` starts with neither STUN nor ChannelData (the stream is broken).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    Some(match buf[0] {
        0x00..=0x3F => HEADER + len,
        0x40..=0x7F => 4 + len.div_ceil(4) * 4,
        _ => 0,
    })
}

/// Reads a STUN message. None for anything that is not one, or whose FINGERPRINT is wrong.
pub fn parse(data: &[u8]) -> Option<Message<'_>> {
    if !is_stun(data) {
        return None;
    }
    let (method, class) = split_type(u16::from_be_bytes([data[0], data[1]]));
    let mut m = Message {
        method,
        class: Some(class),
        ..Message::default()
    };
    m.txid.copy_from_slice(&data[8..HEADER]);
    let mut at = HEADER;
    while at + 4 <= data.len() {
        let t = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        let value = data.get(at + 4..at + 4 + len)?;
        if m.integrity_at.is_some()
            && !matches!(t, attr::FINGERPRINT | attr::MESSAGE_INTEGRITY_SHA256)
        {
            // RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY are ignored.
            at += 4 + len.div_ceil(4) * 4;
            continue;
        }
        let text = || std::str::from_utf8(value).ok();
        match t {
            attr::USERNAME => m.username = Some(text()?),
            attr::REALM => m.realm = Some(text()?),
            attr::NONCE => m.nonce = Some(text()?),
            attr::MESSAGE_INTEGRITY => {
                if len != 20 {
                    return None;
                }
                m.integrity_at = Some(at);
            }
            attr::MESSAGE_INTEGRITY_SHA256 => m.integrity_sha256 = true,
            attr::FINGERPRINT => {
                if len != 4 || at + 8 != data.len() {
                    return None;
                }
                let want = crc32fast::hash(&data[..at]) ^ FINGERPRINT_XOR;
                if u32::from_be_bytes([value[0], value[1], value[2], value[3]]) != want {
                    return None;
                }
            }
            attr::LIFETIME => m.lifetime = Some(u32::from_be_bytes(value.try_into().ok()?)),
            attr::REQUESTED_TRANSPORT => m.requested_transport = Some(*value.first()?),
            attr::REQUESTED_ADDRESS_FAMILY => m.requested_family = Some(*value.first()?),
            attr::ADDITIONAL_ADDRESS_FAMILY => m.additional_family = Some(*value.first()?),
            attr::XOR_PEER_ADDRESS => m.peers.push(xor_address(value, &data[4..HEADER])?),
            attr::CHANNEL_NUMBER => {
                m.channel = Some(u16::from_be_bytes([*value.first()?, *value.get(1)?]))
            }
            attr::DATA => m.data = Some(value),
            attr::EVEN_PORT => m.even_port = true,
            attr::CONNECTION_ID => {
                m.connection_id = Some(u32::from_be_bytes(value.try_into().ok()?))
            }
            attr::RESERVATION_TOKEN => m.reservation_token = true,
            attr::DONT_FRAGMENT => m.dont_fragment = true,
            attr::ERROR_CODE => {
                let (class, number) = (*value.get(2)?, *value.get(3)?);
                m.error_code = Some(u16::from(class & 0x07) * 100 + u16::from(number));
            }
            attr::XOR_MAPPED_ADDRESS => m.mapped = Some(xor_address(value, &data[4..HEADER])?),
            attr::XOR_RELAYED_ADDRESS => m.relayed = Some(xor_address(value, &data[4..HEADER])?),
            attr::PRIORITY | attr::USE_CANDIDATE | attr::UNKNOWN_ATTRIBUTES => {}
            t if t < 0x8000 => m.unknown.push(t),
            _ => {}
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    Some(m)
}

impl Message<'_> {
    /// Whether the message has a MESSAGE-INTEGRITY made with `key` (compared in constant time).
    pub fn integrity_ok(&self, data: &[u8], key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) else {
            return false;
        };
        // The length field as if the message ended with MESSAGE-INTEGRITY.
        let len = (at + 24 - HEADER) as u16;
        mac.update(&data[..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&data[4..at]);
        mac.verify_slice(&data[at + 4..at + 24]).is_ok()
    }

    /// Whether the message carries MESSAGE-INTEGRITY.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }
}

fn xor_address(value: &[u8], cookie_and_txid: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (COOKIE >> 16) as u16;
    match value.get(1)? {
        1 => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value.get(4 + i)? ^ cookie_and_txid[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        2 => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value.get(4 + i)? ^ cookie_and_txid[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

/// The long-term credential key (RFC 8489 §9.2.2): MD5 of `user:realm:password`.
pub fn long_term_key(user: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(format!("{user}:{realm}:{password}").as_bytes()).into()
}

/// Writes an answer or an indication.
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// A message of `method` and `class` with transaction id `txid`.
    pub fn new(method: u16, class: Class, txid: &[u8; 12]) -> Writer {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&message_type(method, class).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&COOKIE.to_be_bytes());
        out.extend_from_slice(txid);
        Writer { out }
    }

    /// Adds an attribute, padded to four bytes.
    pub fn attr(&mut self, t: u16, value: &[u8]) -> &mut Writer {
        self.out.extend_from_slice(&t.to_be_bytes());
        self.out
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.out.extend_from_slice(value);
        self.out
            .resize(self.out.len() + (4 - value.len() % 4) % 4, 0);
        self
    }

    /// Adds an XOR-...-ADDRESS attribute.
    pub fn xor_address(&mut self, t: u16, a: SocketAddr) -> &mut Writer {
        let mask: Vec<u8> = self.out[4..HEADER].to_vec();
        let mut v = vec![0, if a.is_ipv4() { 1 } else { 2 }];
        v.extend_from_slice(&(a.port() ^ (COOKIE >> 16) as u16).to_be_bytes());
        let octets: Vec<u8> = match a.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        v.extend(octets.iter().zip(mask.iter()).map(|(b, m)| b ^ m));
        self.attr(t, &v)
    }

    /// Adds ERROR-CODE.
    pub fn error(&mut self, code: u16, reason: &str) -> &mut Writer {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// Adds UNKNOWN-ATTRIBUTES.
    pub fn unknown(&mut self, types: &[u16]) -> &mut Writer {
        let v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        self.attr(attr::UNKNOWN_ATTRIBUTES, &v)
    }

    /// Adds LIFETIME.
    pub fn lifetime(&mut self, secs: u32) -> &mut Writer {
        self.attr(attr::LIFETIME, &secs.to_be_bytes())
    }

    /// Adds REALM and NONCE (a challenge).
    pub fn challenge(&mut self, realm: &str, nonce: &str) -> &mut Writer {
        self.attr(attr::REALM, realm.as_bytes());
        self.attr(attr::NONCE, nonce.as_bytes())
    }

    /// Adds DATA.
    pub fn data(&mut self, data: &[u8]) -> &mut Writer {
        self.attr(attr::DATA, data)
    }

    /// Adds SOFTWARE.
    pub fn software(&mut self, name: &str) -> &mut Writer {
        self.attr(attr::SOFTWARE, name.as_bytes())
    }

    /// The message: with MESSAGE-INTEGRITY made with `key` when given, then FINGERPRINT.
    pub fn finish(mut self, key: Option<&[u8]>) -> Vec<u8> {
        if let Some(key) = key {
            let len = (self.out.len() + 24 - HEADER) as u16;
            self.out[2..4].copy_from_slice(&len.to_be_bytes());
            if let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) {
                mac.update(&self.out);
                let tag = mac.finalize().into_bytes();
                self.attr(attr::MESSAGE_INTEGRITY, &tag);
            }
        }
        let len = (self.out.len() + 8 - HEADER) as u16;
        self.out[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32fast::hash(&self.out) ^ FINGERPRINT_XOR;
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes());
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: [u8; 12] = [7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    #[test]
    fn message_types_interleave_method_and_class() {
        assert_eq!(message_type(BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(DATA, Class::Indication), 0x0017);
        for m in [BINDING, ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
    }

    #[test]
    fn a_signed_request_reads_back_with_its_attributes_and_checks_only_with_its_key() {
        let key = long_term_key("alice", "example.test", "secret");
        let peer: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let mut w = Writer::new(CREATE_PERMISSION, Class::Request, &TXID);
        w.attr(attr::USERNAME, b"alice")
            .challenge("example.test", "n0nce")
            .xor_address(attr::XOR_PEER_ADDRESS, "192.0.2.9:5000".parse().unwrap())
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
        let bytes = w.finish(Some(&key));
        let m = parse(&bytes).expect("parses");
        assert_eq!(
            (m.method, m.class),
            (CREATE_PERMISSION, Some(Class::Request))
        );
        assert_eq!(m.username, Some("alice"));
        assert_eq!(m.nonce, Some("n0nce"));
        assert_eq!(m.peers, vec!["192.0.2.9:5000".parse().unwrap(), peer]);
        assert!(m.integrity_ok(&bytes, &key));
        assert!(!m.integrity_ok(&bytes, &long_term_key("alice", "example.test", "guess")));
        // A flipped bit breaks the fingerprint: not read at all.
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(parse(&bad).is_none());
    }

    #[test]
    fn channel_data_and_stream_framing() {
        let mut msg = channel_header(0x4001, 5).to_vec();
        msg.extend_from_slice(b"hello\0\0\0");
        assert_eq!(channel_data(&msg), Some((0x4001, &b"hello"[..])));
        assert_eq!(frame_len(&msg), Some(12));
        assert_eq!(frame_len(&msg[..3]), None);
        assert_eq!(frame_len(b"\x80\x00\x00\x00"), Some(0));
        let stun = Writer::new(BINDING, Class::Request, &TXID).finish(None);
        assert_eq!(frame_len(&stun), Some(stun.len()));
        assert!(channel_data(b"\x80\x01\x00\x00").is_none());
    }

    #[test]
    fn unknown_comprehension_required_attributes_are_listed() {
        let mut w = Writer::new(ALLOCATE, Class::Request, &TXID);
        w.attr(0x0031, b"x").attr(0x8031, b"y");
        let bytes = w.finish(None);
        assert_eq!(parse(&bytes).unwrap().unknown, vec![0x0031]);
    }
}
