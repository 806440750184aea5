//! What the store keeps and the core works from: user accounts (passwords only as digest HA1
//! hashes over their realm) and registrations as stored (expiry as Unix seconds, so they
//! survive a restart), and the core's table of users by name and extension. Plain data: the
//! store and the core agree on it, neither owns the other.

use std::collections::HashMap;

/// A user account as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user's key: the login name in the main domain, `name@domain` in a further one.
    pub name: String,
    /// The extension that reaches them, if any.
    pub extension: Option<String>,
    /// The realm the hashes were made for; a domain change needs new passwords.
    pub realm: String,
    /// HA1 for MD5 digest: hex MD5 of `name:realm:password` (RFC 7616 §3.4.2).
    pub ha1_md5: String,
    /// HA1 for SHA-256 digest: hex SHA-256 of `name:realm:password` (RFC 7616 §3.4.2).
    pub ha1_sha256: String,
    /// May call outside the domain (numbers and other domains' URIs).
    pub outside: bool,
    /// Accepts calls and messages from other domains (by name).
    pub external: bool,
}

impl User {
    /// A user with both HA1 hashes made from `password` (kept only as hashes), allowed to call
    /// outside and to be called from other domains.
    pub fn new(name: &str, extension: Option<&str>, realm: &str, password: &str) -> User {
        use sip::digest::{ha1, Algorithm};
        User {
            name: name.into(),
            extension: extension.map(Into::into),
            realm: realm.into(),
            ha1_md5: ha1(Algorithm::Md5, name, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, name, realm, password),
            outside: true,
            external: true,
        }
    }
}

/// One registered contact as stored: expiry as Unix seconds so it survives a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBinding {
    /// The user's key in the user table (`name`, or `name@domain` in a further domain).
    pub aor: String,
    /// The contact URI as registered.
    pub contact: String,
    /// When the registration runs out, in Unix seconds.
    pub expires_at: u64,
    /// The contact's preference (`q`).
    pub q: f32,
    /// The Call-ID of the REGISTER that set it.
    pub call_id: String,
    /// The CSeq number of that REGISTER.
    pub cseq: u32,
    /// `udp`, `tcp`...
    pub transport: String,
    /// Where the REGISTER came from (`ip:port`), for routing back to it.
    pub source: String,
    /// The local address (`ip:port`) the REGISTER arrived on.
    pub local: String,
    /// The phone's User-Agent header.
    pub user_agent: String,
    /// RFC 3327 Path URIs, first the one nearest us, one per line ('' for none).
    pub path: String,
    /// RFC 5626 outbound: the phone's `+sip.instance` and `reg-id`, when it registered a flow.
    pub outbound: Option<(String, u32)>,
}

/// Users by name, with an index by extension.
#[derive(Default)]
pub(crate) struct Users {
    by_name: HashMap<String, User>,
    by_ext: HashMap<String, String>,
}

impl Users {
    pub(crate) fn new(list: Vec<User>) -> Users {
        let mut u = Users::default();
        for user in list {
            if let Some(e) = &user.extension {
                u.by_ext.insert(e.clone(), user.name.clone());
            }
            u.by_name.insert(user.name.clone(), user);
        }
        u
    }

    /// Finds a user by name or extension.
    pub(crate) fn find(&self, key: &str) -> Option<&User> {
        self.by_name
            .get(key)
            .or_else(|| self.by_ext.get(key).and_then(|n| self.by_name.get(n)))
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// Every user, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}
