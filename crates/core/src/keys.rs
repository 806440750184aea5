//! The process's secrets and what is made from them. One random secret per process is split
//! into a key per purpose (nonces, identifiers, the memory of failures), so that nothing an
//! outsider sees under one purpose tells anything about another's key. Identifiers that must
//! not be guessed or steered (tags, branches, tokens, loop hashes) come from SipHash-1-3, a
//! keyed PRF, over what they are derived from; our Record-Route signature is an HMAC-SHA-256
//! with the route key kept in the data folder, compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// What an identifier is for: each purpose hashes under its own domain, so equal inputs for
/// two purposes give unrelated outputs.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum Purpose {
    /// Tokens for our branches and tags.
    Token = 1,
    /// The To tag of our own responses, from the transaction's match key.
    ToTag = 2,
    /// The loop-detection hash in our branches (RFC 3261 §16.6 step 8).
    Loop = 3,
    /// The branch of an ACK forwarded statelessly (§16.11).
    AckBranch = 4,
    /// Temporary GRUUs (RFC 5627 §3.2): unlinkable to the user without the key.
    TempGruu = 5,
    /// The nonces of TURN challenges.
    TurnNonce = 6,
}

/// A key derived from `secret` for one purpose: HMAC-SHA-256(secret, label).
pub(crate) fn derive(secret: &[u8; 32], label: &str) -> [u8; 32] {
    let mut mac = hmac_with(secret);
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

/// A SipHash key (two words) derived from `secret` for one purpose.
pub(crate) fn sip_key(secret: &[u8; 32], label: &str) -> [u64; 2] {
    let k = derive(secret, label);
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    [word(0), word(1)]
}

fn hmac_with(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC key of any length"))
}

/// The keys of one process.
pub(crate) struct Keys {
    /// SipHash key for identifiers.
    ids: [u64; 2],
    /// Signs our Record-Route entries (the route key from the data folder), pads absorbed.
    route: HmacSha256,
}

impl Keys {
    /// Keys from the process's random `secret` and the persistent `route_key`.
    pub(crate) fn new(secret: &[u8; 32], route_key: &[u8; 32]) -> Keys {
        Keys {
            ids: sip_key(secret, "hedgewitch identifiers v1"),
            route: hmac_with(route_key),
        }
    }

    /// A keyed hash for `purpose`: feed it with `IdHash::write`, read it with `finish`.
    pub(crate) fn hasher(&self, purpose: Purpose) -> IdHash {
        let mut h = SipHasher13::new_with_keys(self.ids[0], self.ids[1]);
        h.write_u8(purpose as u8);
        IdHash(h)
    }

    /// The signature of our Record-Route for the dialog `call_id`: 16 hex digits.
    pub(crate) fn route_token(&self, call_id: &str) -> String {
        let mut mac = self.route.clone();
        mac.update(call_id.as_bytes());
        let d = mac.finalize().into_bytes();
        let mut s = String::with_capacity(16);
        for b in d.iter().take(8) {
            crate::push_hex(&mut s, u64::from(*b), 2);
        }
        s
    }

    /// Whether `token` (from a Route) is the signature for `call_id`, compared in constant
    /// time (case does not matter: hex digits).
    pub(crate) fn route_token_matches(&self, call_id: &str, token: &str) -> bool {
        let want = self.route_token(call_id);
        let got = token.to_ascii_lowercase();
        want.as_bytes().ct_eq(got.as_bytes()).into()
    }
}

/// A keyed hash being fed (see `Keys::hasher`).
pub(crate) struct IdHash(SipHasher13);

impl IdHash {
    /// Adds a string, with a terminator so that ("ab", "c") and ("a", "bc") differ.
    pub(crate) fn write(&mut self, s: &str) {
        self.0.write(s.as_bytes());
        self.0.write_u8(0xff);
    }

    pub(crate) fn write_u64(&mut self, v: u64) {
        self.0.write_u64(v);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_and_keys_give_unrelated_outputs() {
        let a = Keys::new(&[1; 32], &[2; 32]);
        let b = Keys::new(&[3; 32], &[2; 32]);
        let h = |k: &Keys, p| {
            let mut h = k.hasher(p);
            h.write("same input");
            h.finish()
        };
        assert_ne!(h(&a, Purpose::Token), h(&a, Purpose::ToTag));
        assert_ne!(h(&a, Purpose::Token), h(&b, Purpose::Token));
        assert_eq!(h(&a, Purpose::Loop), h(&a, Purpose::Loop));
        let mut x = a.hasher(Purpose::Loop);
        x.write("ab");
        x.write("c");
        let mut y = a.hasher(Purpose::Loop);
        y.write("a");
        y.write("bc");
        assert_ne!(x.finish(), y.finish());
        assert_ne!(derive(&[1; 32], "a"), derive(&[1; 32], "b"));
    }

    #[test]
    fn the_route_signature_is_keyed_and_checked_whatever_the_case() {
        let k = Keys::new(&[1; 32], &[2; 32]);
        let t = k.route_token("call-1");
        assert_eq!(t.len(), 16);
        assert!(k.route_token_matches("call-1", &t));
        assert!(k.route_token_matches("call-1", &t.to_ascii_uppercase()));
        assert!(!k.route_token_matches("call-2", &t));
        assert!(!k.route_token_matches("call-1", &t[..15]));
        assert_ne!(Keys::new(&[1; 32], &[3; 32]).route_token("call-1"), t);
    }
}
