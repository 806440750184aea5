//! The TURN server's control side (RFC 8656, RFC 6156 for IPv6 relays): allocations with
//! their lifetimes, permissions and channels, who may allocate, and to which peers. The
//! packets themselves never come here: the edge's forwarding engine (the media relay's)
//! moves them, told by this module's actions what an allocation may do.
//!
//! Users log in with the domain's SIP accounts (their stored digest hash is the long-term
//! key), or with short-lived credentials a logged-in page is given (the time-limited HMAC
//! scheme coturn calls `use-auth-secret`). Failed logins count against the source like SIP
//! ones (bans). Peers on loopback, private, link-local and the server's own addresses are
//! refused unless configured (a relay into the server's own network is what CVE-2020-26262
//! was about), and each user has a quota of allocations.

mod credentials;
mod requests;
mod tcp;

use crate::flow::Flow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub(crate) use credentials::mint;
pub use credentials::TurnCredential;

/// How long an allocation lives without a refresh when the client names no time.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The longest lifetime granted.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// A permission lives this long (RFC 8656 §9), a channel binding this long (§12).
pub(crate) const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub(crate) const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How often expired allocations, permissions and channels are looked for.
pub(crate) const SWEEP: Duration = Duration::from_secs(5);

/// TURN settings.
#[derive(Clone, Debug)]
pub struct TurnSettings {
    /// Whether the server relays for TURN clients at all.
    pub enabled: bool,
    /// The shared secret of time-limited credentials (coturn's `static-auth-secret`); the
    /// page's credentials are made with it.
    pub secret: Vec<u8>,
    /// How long the credentials given to a page are valid.
    pub credential_lifetime: Duration,
    /// Peer networks allowed although the default policy refuses them (loopback, private,
    /// link-local, ours): (address, prefix length).
    pub allowed_peers: Vec<(IpAddr, u8)>,
    /// Allocations one user may hold at once.
    pub allocations_per_user: usize,
    /// Allocations in all.
    pub max_allocations: usize,
    /// Permissions (peer addresses) one allocation may hold.
    pub permissions_per_allocation: usize,
    /// What one user's allocations may relay together, kbit/s both ways (0: no limit);
    /// beyond it datagrams are dropped.
    pub bandwidth_per_user: u64,
    /// The TURN URIs a page is told (`turn:host:3478?transport=udp`...).
    pub urls: Vec<String>,
    /// The address families relayed addresses can be given in (IPv4, IPv6): those of the
    /// addresses the TURN listeners are reached at.
    pub families: [bool; 2],
}

impl Default for TurnSettings {
    fn default() -> TurnSettings {
        TurnSettings {
            enabled: false,
            secret: vec![],
            credential_lifetime: Duration::from_secs(86_400),
            allowed_peers: vec![],
            allocations_per_user: 10,
            max_allocations: 1000,
            permissions_per_allocation: 64,
            bandwidth_per_user: 20_000,
            urls: vec![],
            families: [true, true],
        }
    }
}

/// One allocation.
pub(crate) struct Allocation {
    /// Who logged in for it, and the key its answers are signed with.
    user: String,
    key: [u8; 16],
    /// The client's 5-tuple (transport, our address, its address, its connection).
    client: Flow,
    /// The relayed address, once the edge has bound it; until then the Allocate waiting for
    /// it (its transaction id and the lifetime granted).
    relayed: Option<SocketAddr>,
    pending: Option<([u8; 12], Duration)>,
    expires: Instant,
    created: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// An RFC 6062 allocation: TCP connections to and from peers instead of datagrams.
    tcp: bool,
    /// The Allocate's transaction id and the lifetime granted: a retransmission of it gets
    /// the same answer (RFC 8489 §6.3.1), not 437.
    allocated_by: ([u8; 12], Duration),
}

/// A TCP connection of an RFC 6062 allocation, to or from a peer, by its CONNECTION-ID.
pub(crate) struct TcpConnection {
    alloc: u64,
    peer: SocketAddr,
    state: TcpState,
    since: Instant,
}

/// Where a TCP connection of an allocation is.
pub(crate) enum TcpState {
    /// The edge is connecting to the peer for the Connect request with this id.
    Connecting([u8; 12]),
    /// Connected (or accepted): the client has 30 s to join it with ConnectionBind.
    AwaitingBind,
}

/// The TURN server's allocations, and its settings.
#[derive(Default)]
pub(crate) struct TurnServer {
    settings: TurnSettings,
    allocations: HashMap<u64, Allocation>,
    /// The allocation of each client 5-tuple (RFC 8656 §2.2: at most one).
    by_client: HashMap<FiveTuple, u64>,
    per_user: HashMap<String, usize>,
    /// TCP connections of RFC 6062 allocations.
    connections: HashMap<u32, TcpConnection>,
    /// The sweep timer is armed.
    sweeping: bool,
}

/// A client's 5-tuple as the key of its allocation.
type FiveTuple = (
    crate::Transport,
    SocketAddr,
    SocketAddr,
    Option<crate::ConnId>,
);

fn five_tuple(f: &Flow) -> FiveTuple {
    (f.transport, f.local, f.remote, f.conn)
}

/// What `hedgewitch turn` shows of an allocation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TurnAllocationView {
    /// The allocation's id (the edge's counters are kept under it).
    pub id: u64,
    /// Who it belongs to.
    pub user: String,
    /// The client's transport and address.
    pub transport: String,
    /// The client's address.
    pub client: String,
    /// The relayed address peers send to.
    pub relayed: String,
    /// Peer addresses with a permission.
    pub permissions: Vec<String>,
    /// Channels bound, as `number -> peer`.
    pub channels: Vec<String>,
    /// Seconds left.
    pub expires_in_secs: u64,
    /// Seconds since it was made.
    pub age_secs: u64,
}

impl TurnServer {
    pub(crate) fn new(settings: TurnSettings) -> TurnServer {
        TurnServer {
            settings,
            ..TurnServer::default()
        }
    }

    /// Whether TURN is on.
    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled
    }

    pub(crate) fn settings(&self) -> &TurnSettings {
        &self.settings
    }

    pub(crate) fn set_settings(&mut self, settings: TurnSettings) {
        self.settings = settings;
    }

    /// How many allocations there are.
    pub(crate) fn len(&self) -> usize {
        self.allocations.len()
    }

    /// Every allocation, for `hedgewitch turn`.
    pub(crate) fn views(&self, now: Instant) -> Vec<TurnAllocationView> {
        let mut v: Vec<TurnAllocationView> = self
            .allocations
            .iter()
            .filter_map(|(id, a)| {
                Some(TurnAllocationView {
                    id: *id,
                    user: a.user.clone(),
                    transport: a.client.transport.as_str().into(),
                    client: a.client.remote.to_string(),
                    relayed: a.relayed?.to_string(),
                    permissions: a.permissions.keys().map(ToString::to_string).collect(),
                    channels: a
                        .channels
                        .iter()
                        .map(|(c, (p, _))| format!("{c:#06x} -> {p}"))
                        .collect(),
                    expires_in_secs: a.expires.saturating_duration_since(now).as_secs(),
                    age_secs: now.saturating_duration_since(a.created).as_secs(),
                })
            })
            .collect();
        v.sort_by_key(|a| a.id);
        v
    }
}
