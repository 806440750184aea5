//! What a message travels on: the transport (a SIP notion, RFC 3261 §18), and the flow (our
//! local address, the peer's, and for streams the connection at the edge), and what the
//! server counts as one source when it limits or bans.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// A SIP transport (RFC 3261 §18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP datagrams: the transaction layer retransmits over it (RFC 3261 §17).
    Udp,
    /// A TCP stream.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket (RFC 7118), one SIP message per WebSocket message. The edge never opens
    /// one: a browser's connection is reached only while it is open.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// The lowercase name (`udp`, `tcp`, `tls`), as logs and the store write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The token written in Via headers.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Whether the transport is reliable (all but UDP): RFC 3261 §17 retransmits only over UDP.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// Whether the transport is encrypted hop by hop (TLS, secure WebSocket): what a `sips:`
    /// URI asks of every hop.
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether the transport is a WebSocket: messages arrive whole (no Content-Length
    /// framing), and a peer is reached over its own connection only, never a new one.
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// A transport by name, in any case; None for names other than `udp`, `tcp`, `tls`, `ws`
    /// and `wss`.
    pub fn parse(s: &str) -> Option<Transport> {
        if s.eq_ignore_ascii_case("udp") {
            Some(Transport::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Some(Transport::Tcp)
        } else if s.eq_ignore_ascii_case("tls") {
            Some(Transport::Tls)
        } else if s.eq_ignore_ascii_case("ws") {
            Some(Transport::Ws)
        } else if s.eq_ignore_ascii_case("wss") {
            Some(Transport::Wss)
        } else {
            None
        }
    }
}

/// Identifies a stream connection at the edge.
pub type ConnId = u64;

/// A path a message travels: transport, our local address, the peer, and for streams the
/// connection (if it is gone, the edge connects to `remote` anew).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The transport the message travels on.
    pub transport: Transport,
    /// Our address: the socket the message arrived on or leaves from.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The edge's connection, for TCP and TLS; None over UDP, or when none is known (the edge
    /// then uses an open connection to `remote`, or opens one).
    pub conn: Option<ConnId>,
}

/// The key a source is remembered by: IPv4 as it is, IPv6 cut to its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}
