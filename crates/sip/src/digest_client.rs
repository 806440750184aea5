//! The client side of digest authentication (RFC 3261 §22, RFC 7616 algorithms): a
//! server's `WWW-Authenticate` / `Proxy-Authenticate` challenge read, and the
//! `Authorization` / `Proxy-Authorization` value that answers it. The server registers to
//! SIP providers and sends calls through them with these.

use crate::digest::{hash_hex, is_lws, is_token, quote, Algorithm, Cursor, DigestError};

/// A digest challenge as a server sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The protection space: whose password is asked for.
    pub realm: String,
    /// The server's nonce.
    pub nonce: String,
    /// MD5 when the parameter is absent.
    pub algorithm: Algorithm,
    /// The server offered qop=auth (else RFC 2069 mode, no qop).
    pub qop_auth: bool,
    /// Echoed back untouched.
    pub opaque: Option<String>,
    /// The previous nonce was only stale: the password was right.
    pub stale: bool,
}

impl Challenge {
    /// Parses `Digest realm=..., nonce=..., ...`. Errors: another scheme, no realm or nonce,
    /// an algorithm we cannot compute, or only qop values other than `auth` offered.
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let mut c = Cursor { s: value, pos: 0 };
        c.skip_lws();
        let scheme = c.take_while(is_token);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::UnknownScheme);
        }
        if !c.peek().is_some_and(is_lws) {
            return Err(DigestError::Malformed);
        }
        let mut ch = Challenge {
            realm: String::new(),
            nonce: String::new(),
            algorithm: Algorithm::Md5,
            qop_auth: false,
            opaque: None,
            stale: false,
        };
        let (mut realm, mut nonce, mut qop) = (None, None, None);
        loop {
            c.skip_lws();
            match c.peek() {
                None => break,
                Some(b',') => c.pos += 1,
                Some(_) => {
                    let (name, v) = c.param()?;
                    let v = v.into_owned();
                    match name.to_ascii_lowercase().as_str() {
                        "realm" => realm = Some(v),
                        "nonce" => nonce = Some(v),
                        "algorithm" => {
                            ch.algorithm =
                                Algorithm::parse(&v).ok_or(DigestError::UnsupportedAlgorithm)?
                        }
                        "qop" => qop = Some(v),
                        "opaque" => ch.opaque = Some(v),
                        "stale" => ch.stale = v.eq_ignore_ascii_case("true"),
                        _ => {}
                    }
                }
            }
        }
        ch.realm = realm.ok_or(DigestError::MissingParam("realm"))?;
        ch.nonce = nonce.ok_or(DigestError::MissingParam("nonce"))?;
        if let Some(q) = qop {
            ch.qop_auth = q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth"));
            if !ch.qop_auth {
                return Err(DigestError::UnsupportedQop);
            }
        }
        Ok(ch)
    }

    /// The credentials answering this challenge for a request (`method`, `uri` as in the
    /// Request-URI), with nonce count `nc` and client nonce `cnonce` (used with qop and the
    /// `-sess` algorithms).
    pub fn answer(
        &self,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let alg = self.algorithm;
        let nonce = self.nonce.as_str();
        let mut ha1 = hash_hex(alg, &[user, &self.realm, password]);
        if alg.is_sess() {
            ha1 = hash_hex(alg, &[&ha1, nonce, cnonce]);
        }
        let ha2 = hash_hex(alg, &[method, uri]);
        let mut out = format!(
            "Digest username={}, realm={}, nonce={}, uri={}",
            quote(user),
            quote(&self.realm),
            quote(nonce),
            quote(uri)
        );
        let response = if self.qop_auth {
            let nc = format!("{nc:08x}");
            let r = hash_hex(alg, &[&ha1, nonce, &nc, cnonce, "auth", &ha2]);
            out.push_str(&format!(
                ", response=\"{r}\", algorithm={}, cnonce={}, qop=auth, nc={nc}",
                alg.as_str(),
                quote(cnonce)
            ));
            r
        } else {
            let r = hash_hex(alg, &[&ha1, nonce, &ha2]);
            out.push_str(&format!(", response=\"{r}\", algorithm={}", alg.as_str()));
            r
        };
        debug_assert!(!response.is_empty());
        if let Some(o) = &self.opaque {
            out.push_str(&format!(", opaque={}", quote(o)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{challenge, ha1, verify, Credentials};

    #[test]
    fn answers_what_our_own_server_checks() {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let c = challenge("example.org", "n0nce", alg, false, Some("op"));
            let ch = Challenge::parse(&c).unwrap();
            assert_eq!(ch.realm, "example.org");
            assert!(ch.qop_auth);
            let v = ch.answer("alice", "pw", "REGISTER", "sip:example.org", "cn", 1);
            let creds = Credentials::parse(&v).unwrap();
            assert_eq!(creds.opaque.as_deref(), Some("op"));
            let h = ha1(alg, "alice", "example.org", "pw");
            assert!(verify(&creds, "REGISTER", &h));
            assert!(!verify(&creds, "INVITE", &h));
        }
    }

    #[test]
    fn rfc2069_mode_and_lists_of_qop() {
        let ch = Challenge::parse("Digest realm=\"r\", nonce=\"n\"").unwrap();
        assert!(!ch.qop_auth);
        let v = ch.answer("u", "p", "INVITE", "sip:x@r", "c", 1);
        let creds = Credentials::parse(&v).unwrap();
        assert!(verify(
            &creds,
            "INVITE",
            &ha1(Algorithm::Md5, "u", "r", "p")
        ));
        let ch =
            Challenge::parse("Digest realm=\"r\",nonce=\"n\", qop=\"auth,auth-int\", stale=TRUE")
                .unwrap();
        assert!(ch.qop_auth && ch.stale);
        assert!(Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"").is_err());
        assert!(Challenge::parse("Basic realm=\"r\"").is_err());
        assert!(Challenge::parse("Digest nonce=\"n\"").is_err());
    }
}
