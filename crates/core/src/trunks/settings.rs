//! A SIP provider (or a peered IP-PBX) as the core uses it: where it is, whether and how
//! we register, how calls through it are written, the account, and the household's
//! numbers on it. The server reads it from the provider's drop-in file and its profile.

use crate::numbers::NumberFormat;
use crate::Transport;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// How the caller's identity is presented to the provider.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// The From header's user is the household's number (`caller_id`).
    #[default]
    From,
    /// From names the account; P-Asserted-Identity (RFC 3325) carries the number.
    Pai,
    /// From names the account; P-Preferred-Identity (RFC 3325) carries the number.
    Ppi,
}

pub use crate::numbers::DidSpec;

/// A provider as the core uses it (defaults filled in, checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkSettings {
    /// Its name (the file's name).
    pub name: String,
    /// Where it is and how it is reached.
    pub peer: TrunkPeer,
    /// Registration, when the account registers (None: a peer at a static address).
    pub register: Option<RegisterSettings>,
    /// Seconds between keep-alive OPTIONS (0: none).
    pub keepalive: u32,
    /// How calls through it are written and limited.
    pub calls: TrunkCalls,
    /// The account.
    pub account: Account,
    /// The household's numbers on it, and what they ring.
    pub dids: Vec<DidSpec>,
    /// What other numbers ring.
    pub default_target: Option<String>,
}

/// Where a provider is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkPeer {
    /// Its SIP domain.
    pub domain: String,
    /// Where REGISTER goes (and, without a proxy, everything else).
    pub registrar: String,
    /// The outbound proxy, if any.
    pub proxy: Option<String>,
    /// The transport to it.
    pub transport: Transport,
    /// The only realm answered, if set.
    pub realm: Option<String>,
    /// Further addresses its requests come from.
    pub addresses: Vec<IpAddr>,
}

/// How we register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterSettings {
    /// Registration lifetime asked for (seconds).
    pub expires: u32,
    /// First retry after a failure (seconds), doubled after each further one.
    pub retry: u32,
}

/// How calls through a provider are written and limited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkCalls {
    /// How called numbers are written.
    pub number_format: NumberFormat,
    /// How the caller is presented.
    pub identity: Identity,
    /// Calls at once (0: no limit).
    pub max_calls: u32,
    /// Part of the default route for numbers.
    pub outgoing: bool,
    /// The number presented as the caller's.
    pub caller_id: Option<String>,
}

/// The account at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// User name (the address's user part).
    pub user: String,
    /// Digest user name.
    pub auth_user: String,
    /// Password.
    pub password: String,
    /// Our registered Contact's user part: requests to it are the provider's.
    pub secret: String,
}
