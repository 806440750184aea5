//! Who may use the TURN server, and towards whom: the long-term key of a user (a SIP
//! account's stored digest hash, or a time-limited credential made with the shared secret),
//! the stateless nonces of the challenges, and the peer address policy.

use super::TurnSettings;
use crate::keys::{IdHash, Keys, Purpose};
use crate::records::Users;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use std::net::IpAddr;

/// A nonce is good for this long (then 438 Stale Nonce, and the client retries).
const NONCE_SECS: u64 = 3600;

/// Short-lived TURN credentials for a logged-in page (RFC 7635's predecessor, coturn's
/// `use-auth-secret`): `username` is `EXPIRY:USER`, `credential` the base64 HMAC-SHA1 of it
/// under the shared secret.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TurnCredential {
    /// The TURN URIs.
    pub urls: Vec<String>,
    /// `EXPIRY:USER`.
    pub username: String,
    /// The password that goes with it.
    pub credential: String,
    /// Seconds it stays valid.
    pub ttl: u64,
}

/// The password of time-limited user name `username`.
fn rest_password(secret: &[u8], username: &str) -> Option<String> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).ok()?;
    mac.update(username.as_bytes());
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Credentials for `user`, valid from `unix_now` for the configured time.
pub(crate) fn mint(settings: &TurnSettings, user: &str, unix_now: u64) -> Option<TurnCredential> {
    let ttl = settings.credential_lifetime.as_secs();
    let username = format!("{}:{user}", unix_now + ttl);
    Some(TurnCredential {
        urls: settings.urls.clone(),
        credential: rest_password(&settings.secret, &username)?,
        username,
        ttl,
    })
}

/// Why a user name cannot log in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Neither an account of the realm nor a time-limited name.
    Unknown,
    /// A time-limited name past its time.
    Expired,
}

/// The long-term key of `username` in `realm`, and the account it stands for.
pub(crate) fn key_for(
    settings: &TurnSettings,
    users: &Users,
    username: &str,
    realm: &str,
    unix_now: u64,
) -> Result<([u8; 16], String), Refused> {
    if let Some((expiry, user)) = username
        .split_once(':')
        .and_then(|(e, u)| Some((e.parse::<u64>().ok()?, u)))
    {
        if expiry <= unix_now {
            return Err(Refused::Expired);
        }
        if settings.secret.is_empty() {
            return Err(Refused::Unknown);
        }
        let password = rest_password(&settings.secret, username).ok_or(Refused::Unknown)?;
        let key = sip::turn::long_term_key(username, realm, &password);
        return Ok((key, user.to_string()));
    }
    let user = users.by_name(username).ok_or(Refused::Unknown)?;
    if user.realm != realm {
        return Err(Refused::Unknown);
    }
    let mut key = [0u8; 16];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(
            user.ha1_md5.get(2 * i..2 * i + 2).ok_or(Refused::Unknown)?,
            16,
        )
        .map_err(|_| Refused::Unknown)?;
    }
    Ok((key, user.name.clone()))
}

fn nonce_mac(keys: &Keys, ip: IpAddr, stamp: u64) -> u64 {
    let mut h: IdHash = keys.hasher(Purpose::TurnNonce);
    h.write(&ip.to_string());
    h.write_u64(stamp);
    h.finish()
}

/// A nonce for a challenge to `ip`: its time and a keyed hash, so that nothing is kept.
pub(crate) fn nonce(keys: &Keys, ip: IpAddr, unix_now: u64) -> String {
    let mut s = String::with_capacity(33);
    crate::push_hex(&mut s, unix_now, 16);
    crate::push_hex(&mut s, nonce_mac(keys, ip, unix_now), 16);
    s
}

/// Whether `nonce` is one we gave `ip` less than an hour ago.
pub(crate) fn nonce_fresh(keys: &Keys, ip: IpAddr, nonce: &str, unix_now: u64) -> bool {
    let (Some(stamp), Some(mac)) = (nonce.get(..16), nonce.get(16..32)) else {
        return false;
    };
    let (Ok(stamp), Ok(mac)) = (u64::from_str_radix(stamp, 16), u64::from_str_radix(mac, 16))
    else {
        return false;
    };
    use subtle::ConstantTimeEq;
    let right: bool = nonce_mac(keys, ip, stamp).ct_eq(&mac).into();
    right && stamp <= unix_now && unix_now - stamp < NONCE_SECS && nonce.len() == 32
}

/// Whether the relay may send to `ip`: public unicast addresses, and what the settings
/// allow on top. The server's own addresses pass here (two allocations relay to each
/// other there); the forwarding engine sends to them only on relayed ports, never to the
/// server's other services.
pub(crate) fn peer_allowed(settings: &TurnSettings, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if settings
        .allowed_peers
        .iter()
        .any(|(net, len)| in_network(ip, *net, *len))
    {
        return true;
    }
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => {
                v4.is_private()
                    || v4.is_link_local()
                    || v4.is_broadcast()
                    || v4.octets()[0] == 0
                    || (v4.octets()[0] == 100 && v4.octets()[1] & 0xC0 == 64)
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                (s[0] & 0xFE00) == 0xFC00 || (s[0] & 0xFFC0) == 0xFE80
            }
        };
    !refused
}

/// Whether `ip` is in the configured `allowed_peers`.
pub(crate) fn explicitly_allowed(settings: &TurnSettings, ip: IpAddr) -> bool {
    settings
        .allowed_peers
        .iter()
        .any(|(net, len)| in_network(ip, *net, *len))
}

/// Whether `ip` is in `net`/`len`.
pub(crate) fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_refuses_the_servers_networks_and_allows_public_peers() {
        let s = TurnSettings::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.9",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!peer_allowed(&s, refused.parse().unwrap()), "{refused}");
        }
        // The server's own public address: another allocation's relayed address.
        for allowed in ["198.51.100.7", "2001:db8::1", "8.8.8.8", "203.0.113.1"] {
            assert!(peer_allowed(&s, allowed.parse().unwrap()), "{allowed}");
        }
        let s = TurnSettings {
            allowed_peers: vec![(IpAddr::from([127, 0, 0, 0]), 8)],
            ..TurnSettings::default()
        };
        assert!(peer_allowed(&s, "127.0.0.5".parse().unwrap()));
        assert!(!peer_allowed(&s, "10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn time_limited_credentials_log_in_until_they_expire() {
        let s = TurnSettings {
            secret: b"s3cret".to_vec(),
            ..TurnSettings::default()
        };
        let users = Users::new(vec![crate::User::new("alice", None, "example.test", "pw")]);
        let c = mint(&s, "alice", 1_000).unwrap();
        assert_eq!(c.username, "87400:alice");
        let (key, account) = key_for(&s, &users, &c.username, "example.test", 2_000).unwrap();
        assert_eq!(account, "alice");
        assert_eq!(
            key,
            sip::turn::long_term_key(&c.username, "example.test", &c.credential)
        );
        assert_eq!(
            key_for(&s, &users, &c.username, "example.test", 90_000),
            Err(Refused::Expired)
        );
        // A SIP account's key is its digest hash.
        let (key, _) = key_for(&s, &users, "alice", "example.test", 2_000).unwrap();
        assert_eq!(key, sip::turn::long_term_key("alice", "example.test", "pw"));
        assert_eq!(
            key_for(&s, &users, "mallory", "example.test", 2_000),
            Err(Refused::Unknown)
        );
    }
}
