//! What the core asks the edge to do (`Action`), and what a DNS lookup it asks for names
//! (`DnsQuery`): the whole vocabulary between the sans-IO core and the I/O around it.

use crate::plan::settings::ForwardSpec;
use crate::{mailbox, ClientTxId, ConnId, Flow, RelayStream, Side, StoredBinding, Transport};
use sip::Bytes;
use std::net::{IpAddr, SocketAddr};

/// What the core asks the edge to do.
#[derive(Debug)]
pub enum Action {
    /// Send on a flow. If it cannot be sent (no connection possible), the edge reports
    /// `handle_send_failure(key)` when `key` (the request's client transaction) is set.
    Send {
        /// Where to send.
        flow: Flow,
        /// The bytes to send: one whole message.
        data: Bytes,
        /// The client transaction of the request being sent, to name in `handle_send_failure`;
        /// None when a failure needs no report.
        key: Option<ClientTxId>,
    },
    /// Write a registration through to the store.
    PutBinding(StoredBinding),
    /// Remove a registration from the store (it expired, was removed or was replaced).
    DeleteBinding {
        /// The user's key in the user table (`name`, or `name@domain` in a further domain).
        aor: String,
        /// The contact URI as registered.
        contact: String,
    },
    /// A user changed their forwarding from the phone (feature code): keep it.
    SaveForward(ForwardSpec),
    /// Find another domain's servers (RFC 3263); the answer comes back through
    /// `handle_resolved(id, ...)`, empty when there is none.
    Resolve {
        /// Names the lookup in `handle_resolved`.
        id: u64,
        /// What to look up.
        query: DnsQuery,
    },
    /// Keep a message for a user whose phones did not take it; the edge answers with
    /// `handle_message_stored(id, ...)` once the store has it (or could not keep it).
    StoreMessage(mailbox::WaitingMessage),
    /// A kept message was delivered, replaced or expired: remove it from the store.
    DeleteMessage {
        /// The message.
        id: u64,
    },
    /// Look up a number's ENUM records (RFC 6116): NAPTR at each of `domains` in turn,
    /// until one has records; the answer comes back through `handle_enum(id, ...)`, empty
    /// when there is none.
    ResolveEnum {
        /// Names the lookup in `handle_enum`.
        id: u64,
        /// The number's ENUM domains, one per configured suffix, in order.
        domains: Vec<String>,
    },
    /// Bind up to `count` more RTP/RTCP port pairs (an even port and the one above) of an
    /// address family for the media relay, and report the RTP ports bound through
    /// `handle_relay_reserved` (fewer than asked when the range is used up).
    ReserveRelayPorts {
        /// The family: IPv6 when set, else IPv4.
        ipv6: bool,
        /// How many pairs are wanted.
        count: usize,
    },
    /// Start relaying a stream between two reserved pairs: `stream.ports[0]` faces the caller,
    /// `stream.ports[1]` the callee; `ipv6` gives each pair's family.
    OpenRelayStream {
        /// The stream's id and ports.
        stream: RelayStream,
        /// Whether each pair (caller-facing, callee-facing) is IPv6.
        ipv6: [bool; 2],
    },
    /// Where `side` of a stream said it receives (its SDP); used until its own packets say
    /// otherwise. Only packets from that address's IP or from `signalling` (where the side's
    /// SIP comes from, its NAT) may teach the relay a new address: nobody else can take the
    /// stream over.
    SetRelayPeer {
        /// The stream's id.
        stream: u64,
        /// Which side sent the SDP.
        side: Side,
        /// Its RTP address.
        rtp: SocketAddr,
        /// Its RTCP address (the RTP one with rtcp-mux).
        rtcp: SocketAddr,
        /// The IP its signalling comes from.
        signalling: IpAddr,
    },
    /// Stop relaying `streams` and free their ports. When `ended` is set, a relayed call
    /// ended (its Call-ID, and why): the edge logs what its streams carried.
    CloseRelayStreams {
        /// The streams' ids.
        streams: Vec<u64>,
        /// The Call-ID and the reason of a relayed call that ended.
        ended: Option<(String, &'static str)>,
    },
    /// A phone registered over stream connection `conn` (its flow, RFC 5626): keep the
    /// connection open as long as a registered one may stay idle.
    HoldConnection {
        /// The connection.
        conn: ConnId,
    },
    /// A source was banned for failed logins: close its stream connections and refuse new
    /// ones for `secs` (its datagrams the core drops itself).
    Ban {
        /// The source: an IPv4 address, or the first address of an IPv6 /64.
        source: IpAddr,
        /// How long the ban lasts.
        secs: u64,
    },
    /// A ban was lifted before its time (`hedgewitch bans lift`).
    LiftBan {
        /// The source, as in `Ban`.
        source: IpAddr,
    },
    /// TURN: bind a relayed UDP address of this family for allocation `id`, which serves
    /// `client`; the edge answers with `handle_turn_allocated`.
    TurnAllocate {
        /// The allocation.
        id: u64,
        /// The client's flow (its TURN listener and address, or its connection).
        client: Flow,
        /// An IPv6 relayed address (RFC 6156), else IPv4.
        ipv6: bool,
        /// Whose it is: all of a user's allocations share their bandwidth quota.
        user: String,
        /// That quota, bytes a second both ways together (0: none).
        bandwidth: u64,
        /// A TCP relay (RFC 6062): a listening TCP socket instead of a UDP one.
        tcp: bool,
    },
    /// TURN (RFC 6062): connect from allocation `id`'s relayed address to `peer`; the edge
    /// answers with `handle_turn_connected`.
    TurnConnect {
        /// The allocation.
        id: u64,
        /// The connection's CONNECTION-ID.
        connection: u32,
        /// Where to connect.
        peer: SocketAddr,
        /// The peer is in `turn.allowed_peers`: any port of the server's own addresses may
        /// be reached (otherwise only relayed ports).
        any_port: bool,
    },
    /// TURN (RFC 6062): join peer connection `connection` to the client's data connection
    /// `data_conn` (the edge pipes them from now on).
    TurnJoin {
        /// The peer's connection.
        connection: u32,
        /// The client's connection that bound it.
        data_conn: ConnId,
    },
    /// TURN (RFC 6062): drop a peer connection nobody bound (or whose allocation ended).
    TurnDropConnection {
        /// The connection.
        connection: u32,
    },
    /// TURN: let packets from `peer` through allocation `id`, or stop letting them.
    TurnPermit {
        /// The allocation.
        id: u64,
        /// The peer's address (permissions are per IP address, RFC 8656 §9).
        peer: IpAddr,
        /// Allow (a new permission) or revoke (an expired one).
        allow: bool,
        /// The peer is in `turn.allowed_peers`: any of its ports may be reached, even when
        /// it is one of the server's own addresses (normally only relayed ports are).
        any_port: bool,
    },
    /// TURN: bind `channel` of allocation `id` to `peer`, or unbind it (None).
    TurnChannel {
        /// The allocation.
        id: u64,
        /// The channel number (0x4000-0x4FFF).
        channel: u16,
        /// The peer, or None to unbind.
        peer: Option<SocketAddr>,
    },
    /// TURN: allocation `id` ended; its relayed address is free again.
    TurnRelease {
        /// The allocation.
        id: u64,
    },
    /// Report the packets `streams` have carried (both ways, summed) through
    /// `handle_relay_counters(call_id, ...)`: the no-media timeout needs them.
    QueryRelay {
        /// The call they belong to.
        call_id: String,
        /// Its streams' ids.
        streams: Vec<u64>,
    },
}

/// What a URI fixes before DNS is asked (RFC 3263 §4): the host, and a port or transport
/// when the URI names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsQuery {
    /// The domain name to look up, lowercased.
    pub host: String,
    /// The port, when the URI names one (RFC 3263 §4.2: then no SRV lookup).
    pub port: Option<u16>,
    /// The transport, when the URI fixes one: its `transport` parameter, or TLS for `sips:`.
    pub transport: Option<Transport>,
}
