//! SIP digest authentication, server side, without I/O (RFC 3261 §22, RFC 7616, RFC 8760,
//! RFC 2617). Time comes in as `now_secs` and the nonce secret through [`NonceManager::new`].
//!
//! Server flow for a request carrying `Authorization` (or `Proxy-Authorization`):
//! 1. [`Credentials::parse`]; on error see [`DigestError::should_challenge`]: challenge again
//!    (401/407) or answer 400. Without any credentials for our realm: challenge.
//! 2. Check `creds.realm` is ours (else challenge) and, if you sent one, `creds.opaque`.
//! 3. [`NonceManager::check`]`(&creds.nonce, creds.nc, now)`: `Invalid` → fresh challenge.
//! 4. Look up the HA1 stored for `creds.algorithm.base()` (see [`ha1`]), run [`verify`]. Wrong
//!    response → 403 or a fresh challenge with `stale=false`.
//! 5. If step 3 said `Stale` → fresh challenge with `stale=true` (the digest was right, the
//!    nonce was not: RFC 7616 §3.3). Otherwise [`NonceManager::commit`], which re-checks and
//!    records the nonce-count atomically; accept only if it returns `Valid`, else `stale=true`.
//!
//! For RFC 8760 send one challenge header per algorithm, most preferred (SHA-256) first.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// Digest algorithm. `-sess` variants derive the HA1 from the stored one (RFC 7616 §3.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617): the default when credentials name no algorithm.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 7616, RFC 8760 for SIP).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// The token as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// The algorithm without `-sess`: the one whose stored HA1 [`verify`] needs.
    pub fn base(self) -> Algorithm {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => Algorithm::Md5,
            Algorithm::Sha256 | Algorithm::Sha256Sess => Algorithm::Sha256,
        }
    }

    /// Whether this is a `-sess` variant (HA1 bound to the nonces, RFC 7616 §3.4.2).
    pub fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// The token, case-insensitively. Others (SHA-512-256, AKAv1-MD5, ...) give `None`.
    pub fn parse(token: &str) -> Option<Algorithm> {
        [Self::Md5, Self::Md5Sess, Self::Sha256, Self::Sha256Sess]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(token))
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, DigestError> {
        Algorithm::parse(s).ok_or(DigestError::UnsupportedAlgorithm)
    }
}

/// Why an `Authorization` header value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not the Digest scheme (e.g. RFC 4475 regaut01): ignore the header and challenge.
    UnknownScheme,
    /// Syntax error in the parameter list → 400.
    Malformed,
    /// A known parameter appeared twice → 400.
    DuplicateParam(&'static str),
    /// A required parameter is absent (`cnonce`/`nc` only required with qop or -sess) → 400.
    MissingParam(&'static str),
    /// `nc` is not 8 hex digits, or is zero → 400.
    BadNonceCount,
    /// qop other than `auth` (e.g. `auth-int`, which we never offer) → challenge again.
    UnsupportedQop,
    /// An algorithm we do not implement → challenge again (listing what we support).
    UnsupportedAlgorithm,
}

impl DigestError {
    /// True: answer with a fresh 401/407 challenge. False: the request is broken, answer 400.
    pub fn should_challenge(&self) -> bool {
        matches!(
            self,
            DigestError::UnknownScheme
                | DigestError::UnsupportedQop
                | DigestError::UnsupportedAlgorithm
        )
    }
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::UnknownScheme => f.write_str("unknown authentication scheme"),
            DigestError::Malformed => f.write_str("malformed digest credentials"),
            DigestError::DuplicateParam(p) => write!(f, "duplicate digest parameter {p}"),
            DigestError::MissingParam(p) => write!(f, "missing digest parameter {p}"),
            DigestError::BadNonceCount => f.write_str("bad digest nonce-count"),
            DigestError::UnsupportedQop => f.write_str("unsupported digest qop"),
            DigestError::UnsupportedAlgorithm => f.write_str("unsupported digest algorithm"),
        }
    }
}

impl std::error::Error for DigestError {}

/// Quality of protection. Only `auth` is supported (we never offer `auth-int`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// `qop=auth`: the response hash covers the method and digest-uri, not the body.
    Auth,
}

/// Digest credentials from an `Authorization` / `Proxy-Authorization` header value.
/// Values borrow from the header unless they contained backslash escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// `username`: the user the client claims to be.
    pub username: Cow<'a, str>,
    /// `realm`: the protection space the client answers for (the caller checks it is ours).
    pub realm: Cow<'a, str>,
    /// `nonce`: the server nonce the client answers (see [`NonceManager::check`]).
    pub nonce: Cow<'a, str>,
    /// `uri`: the digest-uri the client hashed into HA2.
    pub uri: Cow<'a, str>,
    /// `response`: the client's hash, checked by [`verify`].
    pub response: Cow<'a, str>,
    /// MD5 when the parameter is absent.
    pub algorithm: Algorithm,
    /// `cnonce`: the client nonce; required with qop or a `-sess` algorithm.
    pub cnonce: Option<Cow<'a, str>>,
    /// `opaque`: echoed from the challenge, if the client sent it.
    pub opaque: Option<Cow<'a, str>>,
    /// `qop`: `Some` with qop=auth, `None` in RFC 2069 mode (no qop).
    pub qop: Option<Qop>,
    /// Nonce-count; `Some` exactly when `qop` is `Some`.
    pub nc: Option<u32>,
    // The exact texts the client hashed.
    qop_raw: Option<Cow<'a, str>>,
    nc_raw: Option<Cow<'a, str>>,
}

#[rustfmt::skip]
const PARAMS: [&str; 10] = [
    "username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "opaque", "qop", "nc",
];

impl<'a> Credentials<'a> {
    /// Parses `Digest name=value, ...`. Scheme and parameter names are case-insensitive,
    /// values are quoted strings or tokens, unknown parameters are ignored, and a repeated
    /// known parameter is an error. Without qop, `nc` is ignored (RFC 2069 mode).
    pub fn parse(value: &'a str) -> Result<Self, DigestError> {
        let mut c = Cursor { s: value, pos: 0 };
        c.skip_lws();
        let scheme = c.take_while(is_token);
        need(!scheme.is_empty())?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::UnknownScheme);
        }
        if c.peek().is_none() {
            return Err(DigestError::MissingParam("username"));
        }
        need(c.peek().is_some_and(is_lws))?;
        let mut slots: [Option<Cow<'a, str>>; 10] = Default::default();
        loop {
            c.skip_lws();
            match c.peek() {
                None => break,
                Some(b',') => c.pos += 1,
                Some(_) => {
                    let (name, v) = c.param()?;
                    let mut known = PARAMS.iter().zip(slots.iter_mut());
                    if let Some((p, slot)) = known.find(|(p, _)| p.eq_ignore_ascii_case(name)) {
                        if slot.replace(v).is_some() {
                            return Err(DigestError::DuplicateParam(p));
                        }
                    }
                }
            }
        }
        let [username, realm, nonce, uri, response, algorithm, cnonce, opaque, qop, nc] = slots;
        let req = |v: Option<Cow<'a, str>>, n| v.ok_or(DigestError::MissingParam(n));
        let algorithm = match algorithm {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(&a).ok_or(DigestError::UnsupportedAlgorithm)?,
        };
        let (qop, qop_raw, nc, nc_raw) = match qop {
            None => (None, None, None, None),
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let raw = req(nc, "nc")?;
                let ok = raw.len() == 8 && raw.bytes().all(|b| b.is_ascii_hexdigit());
                let n = u32::from_str_radix(&raw, 16).ok().filter(|&n| ok && n != 0);
                let n = n.ok_or(DigestError::BadNonceCount)?;
                (Some(Qop::Auth), Some(q), Some(n), Some(raw))
            }
            Some(_) => return Err(DigestError::UnsupportedQop),
        };
        if cnonce.is_none() && (qop.is_some() || algorithm.is_sess()) {
            return Err(DigestError::MissingParam("cnonce"));
        }
        Ok(Credentials {
            username: req(username, "username")?,
            realm: req(realm, "realm")?,
            nonce: req(nonce, "nonce")?,
            uri: req(uri, "uri")?,
            response: req(response, "response")?,
            algorithm,
            cnonce,
            opaque,
            qop,
            nc,
            qop_raw,
            nc_raw,
        })
    }
}

fn need(ok: bool) -> Result<(), DigestError> {
    ok.then_some(()).ok_or(DigestError::Malformed)
}

pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

pub(crate) struct Cursor<'a> {
    pub(crate) s: &'a str,
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    pub(crate) fn skip_lws(&mut self) {
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
    }

    /// Only ever stops at an ASCII byte or the end, so the slice is on a char boundary.
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or("")
    }

    /// `name = value` followed by LWS and then a comma or the end.
    pub(crate) fn param(&mut self) -> Result<(&'a str, Cow<'a, str>), DigestError> {
        let name = self.take_while(is_token);
        need(!name.is_empty())?;
        self.skip_lws();
        need(self.peek() == Some(b'='))?;
        self.pos += 1;
        self.skip_lws();
        let quoted = self.peek() == Some(b'"');
        let v = if quoted {
            self.quoted()?
        } else {
            Cow::Borrowed(self.take_while(|b| !is_lws(b) && b != b',' && b != b'"'))
        };
        need(quoted || !v.is_empty())?;
        self.skip_lws();
        need(matches!(self.peek(), None | Some(b',')))?;
        Ok((name, v))
    }

    /// At an opening quote: the unescaped contents, borrowed when there is no quoted-pair.
    fn quoted(&mut self) -> Result<Cow<'a, str>, DigestError> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err(DigestError::Malformed),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 2;
                }
                Some(_) => self.pos += 1,
            }
        }
        let raw = self.s.get(start..self.pos).ok_or(DigestError::Malformed)?;
        self.pos += 1;
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(ch) = chars.next() {
            let unescaped = if ch == '\\' { chars.next() } else { Some(ch) };
            out.extend(unescaped);
        }
        Ok(Cow::Owned(out))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex of `H(p1:p2:...)` with the algorithm's hash.
pub(crate) fn hash_hex(alg: Algorithm, parts: &[&str]) -> String {
    let data = parts.join(":");
    match alg.base() {
        Algorithm::Sha256 => hex(&sha2::Sha256::digest(data)),
        _ => hex(&md5::Md5::digest(data)),
    }
}

/// Lowercase hex of `H(user:realm:password)`: what the server stores instead of passwords,
/// one per base algorithm. For a `-sess` algorithm this is the same as for its base.
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    hash_hex(alg, &[user, realm, password])
}

/// Byte comparison whose time depends only on the lengths (`subtle`).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Checks `creds.response` against `ha1_hex` (the stored HA1 for `creds.algorithm.base()`).
/// qop=auth: `H(HA1:nonce:nc:cnonce:qop:H(method:uri))`; no qop (RFC 2069):
/// `H(HA1:nonce:H(method:uri))`; `-sess`: HA1 becomes `H(HA1:nonce:cnonce)`.
/// Checks only the hash: nonce, realm and opaque are the caller's business.
pub fn verify(creds: &Credentials<'_>, method: &str, ha1_hex: &str) -> bool {
    let alg = creds.algorithm;
    let nonce: &str = &creds.nonce;
    let mut ha1 = ha1_hex.to_ascii_lowercase();
    if alg.is_sess() {
        match &creds.cnonce {
            Some(cn) => ha1 = hash_hex(alg, &[&ha1, nonce, cn]),
            None => return false,
        }
    }
    let ha2 = hash_hex(alg, &[method, &creds.uri]);
    let expected = match (&creds.qop_raw, &creds.nc_raw, &creds.cnonce) {
        (Some(q), Some(nc), Some(cn)) => hash_hex(alg, &[&ha1, nonce, nc, cn, q, &ha2]),
        (None, _, _) => hash_hex(alg, &[&ha1, nonce, &ha2]),
        _ => return false,
    };
    let got = creds.response.to_ascii_lowercase();
    ct_eq(expected.as_bytes(), got.as_bytes())
}

/// Client side: the `Authorization` / `Proxy-Authorization` value answering a challenge with
/// qop=auth (used by tests and, later, when registering to a SIP provider).
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    alg: Algorithm,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let mut ha1 = hash_hex(alg, &[user, realm, password]);
    if alg.is_sess() {
        ha1 = hash_hex(alg, &[&ha1, nonce, cnonce]);
    }
    let ha2 = hash_hex(alg, &[method, uri]);
    let nc = format!("{nc:08x}");
    let response = hash_hex(alg, &[&ha1, nonce, &nc, cnonce, "auth", &ha2]);
    format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm={}, cnonce={}, qop=auth, nc={nc}",
        quote(user),
        quote(realm),
        quote(nonce),
        quote(uri),
        alg.as_str(),
        quote(cnonce)
    )
}

pub(crate) fn quote(v: &str) -> String {
    let mut out = String::from('"');
    for ch in v.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')) {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out + "\""
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` value offering qop=auth. `"` and `\` in the
/// quoted values are escaped; CR, LF and NUL are dropped.
pub fn challenge(
    realm: &str,
    nonce: &str,
    alg: Algorithm,
    stale: bool,
    opaque: Option<&str>,
) -> String {
    let (realm, nonce, alg) = (quote(realm), quote(nonce), alg.as_str());
    let stale = if stale { ", stale=true" } else { "" };
    let opaque = opaque.map(|o| format!(", opaque={}", quote(o)));
    let opaque = opaque.unwrap_or_default();
    format!("Digest realm={realm}, nonce={nonce}, algorithm={alg}, qop=\"auth\"{stale}{opaque}")
}

/// A nonce that [`NonceManager::check_token`] found genuine and usable; only it can make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedNonce {
    key: (u64, u64),
    nc: Option<u32>,
}

/// Verdict of [`NonceManager::check`] / [`NonceManager::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued with our secret, not expired, and not used before with this nonce-count.
    Valid,
    /// Ours but expired, replayed (nc not increasing, or no-qop nonce reused) or forgotten:
    /// challenge with `stale=true` if the digest itself was right.
    Stale,
    /// Malformed or not issued with our secret: challenge with `stale=false`.
    Invalid,
}

/// Largest number of nonces whose use is remembered, unless set with `with_max_entries`.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
const MAC_LEN: usize = 16;
const NONCE_LEN: usize = 8 + 8 + MAC_LEN;

/// What a remembered nonce was used with: the highest nc, or once without qop.
type Use = Option<u32>;

/// Stateless nonces: 64 lowercase hex chars encoding issue time (u64), a counter (u64) and
/// 16 bytes of HMAC-SHA-256 over both with the secret. Only *used* nonces are remembered
/// (after [`commit`](Self::commit)), keyed by (time, counter), to stop nc replay.
///
/// Memory policy: a table entry is dropped once its nonce has expired (on every commit, from
/// the oldest end) and, if the table exceeds `max_entries`, the oldest entries are evicted.
/// Any nonce not newer than the newest dropped one, and any nonce issued before this manager
/// issued its first one (e.g. by a previous process), is `Stale` unless remembered: the
/// client just retries with a fresh nonce. The table is per manager, so give each process
/// (and each cluster node) its own random secret; otherwise a nonce from another node, or
/// from a previous process in the very second this one first issues, may be taken once.
pub struct NonceManager {
    /// HMAC-SHA-256 keyed with the secret, pads already absorbed (half the work per MAC).
    hmac: HmacKey,
    lifetime: u64,
    counter: u64,
    last_time: u64,
    /// Unremembered nonces whose key is not above this are stale; `None`: nothing issued yet.
    forgotten_upto: Option<(u64, u64)>,
    used: BTreeMap<(u64, u64), Use>,
    max_entries: usize,
}

impl fmt::Debug for NonceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceManager")
            .field("lifetime", &self.lifetime)
            .field("counter", &self.counter)
            .field("remembered", &self.used.len())
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA-256 (the `hmac` crate); a keyed instance holds its pads already absorbed, so a
/// MAC costs a clone and two compressions.
#[derive(Clone)]
struct HmacKey(hmac::Hmac<sha2::Sha256>);

impl HmacKey {
    fn new(key: &[u8; 32]) -> HmacKey {
        use hmac::Mac;
        // HMAC takes keys of any length: this cannot fail.
        HmacKey(hmac::Hmac::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC key length")))
    }

    fn mac(&self, msg: &[&[u8]]) -> [u8; 32] {
        use hmac::Mac;
        let mut m = self.0.clone();
        for part in msg {
            m.update(part);
        }
        m.finalize().into_bytes().into()
    }
}

#[cfg(test)]
fn hmac_sha256(key: &[u8; 32], msg: &[&[u8]]) -> [u8; 32] {
    HmacKey::new(key).mac(msg)
}

impl NonceManager {
    /// Changes how long nonces stay valid (a settings reload); nonces already issued are
    /// judged by the new lifetime.
    pub fn set_lifetime(&mut self, lifetime_secs: u64) {
        self.lifetime = lifetime_secs;
    }

    /// A manager whose nonces are authenticated with `secret` (random, one per process: see
    /// above) and stay valid for `lifetime_secs` seconds.
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> Self {
        NonceManager {
            hmac: HmacKey::new(&secret),
            lifetime: lifetime_secs,
            counter: 0,
            last_time: 0,
            forgotten_upto: None,
            used: BTreeMap::new(),
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }

    /// Caps the remembered-nonce table (at least 1).
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.max(1);
        self
    }

    /// Number of remembered (used) nonces.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no used nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    fn mac(&self, time: u64, counter: u64) -> [u8; 32] {
        let (t, c) = (time.to_be_bytes(), counter.to_be_bytes());
        self.hmac.mac(&[b"hedgewitch-nonce-v1", &t, &c])
    }

    /// A new nonce. Issue times never go backwards, even if `now_secs` does.
    pub fn issue(&mut self, now_secs: u64) -> String {
        self.last_time = self.last_time.max(now_secs);
        self.counter = self.counter.wrapping_add(1);
        let (time, counter) = (self.last_time, self.counter);
        self.forgotten_upto.get_or_insert((time, 0));
        let mut raw = Vec::with_capacity(NONCE_LEN);
        raw.extend(time.to_be_bytes().into_iter().chain(counter.to_be_bytes()));
        raw.extend(self.mac(time, counter).into_iter().take(MAC_LEN));
        hex(&raw)
    }

    /// (time, counter) of a nonce we issued, or `None` if malformed or forged.
    fn decode(&self, nonce: &str) -> Option<(u64, u64)> {
        let b = nonce.as_bytes();
        if b.len() != NONCE_LEN * 2 {
            return None;
        }
        let mut raw = [0u8; NONCE_LEN];
        let nibble = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
        for (dst, pair) in raw.iter_mut().zip(b.chunks_exact(2)) {
            *dst = (nibble(pair.first())? << 4 | nibble(pair.get(1))?) as u8;
        }
        let (t, rest) = raw.split_at(8);
        let (c, mac) = rest.split_at(8);
        let time = u64::from_be_bytes(t.try_into().ok()?);
        let counter = u64::from_be_bytes(c.try_into().ok()?);
        let expect = self.mac(time, counter);
        ct_eq(expect.get(..MAC_LEN)?, mac).then_some((time, counter))
    }

    /// The nonce's key if it may be used now with `nc`, else why not.
    fn verdict(&self, nonce: &str, nc: Option<u32>, now: u64) -> Result<(u64, u64), NonceCheck> {
        let key = self.decode(nonce).filter(|_| nc != Some(0));
        let key = key.ok_or(NonceCheck::Invalid)?;
        self.fresh(key, nc, now)
    }

    /// Whether a genuine nonce may still be used with `nc` (not expired, not replayed).
    fn fresh(&self, key: (u64, u64), nc: Option<u32>, now: u64) -> Result<(u64, u64), NonceCheck> {
        let fresh = match self.used.get(&key) {
            Some(Some(last)) => nc.is_some_and(|n| n > *last),
            Some(None) => false,
            None => self.forgotten_upto.is_some_and(|f| key > f),
        };
        let alive = now.saturating_sub(key.0) <= self.lifetime;
        (fresh && alive).then_some(key).ok_or(NonceCheck::Stale)
    }

    /// Read-only verdict for `nonce` used with nonce-count `nc` (`None` when no qop: such a
    /// nonce is good for one request). Records nothing: see [`commit`](Self::commit).
    pub fn check(&self, nonce: &str, nc: Option<u32>, now_secs: u64) -> NonceCheck {
        self.verdict(nonce, nc, now_secs)
            .err()
            .unwrap_or(NonceCheck::Valid)
    }

    /// Like [`check`](Self::check), but on success returns a token that
    /// [`commit_checked`](Self::commit_checked) accepts without deriving the MAC again.
    pub fn check_token(
        &self,
        nonce: &str,
        nc: Option<u32>,
        now_secs: u64,
    ) -> Result<CheckedNonce, NonceCheck> {
        self.verdict(nonce, nc, now_secs)
            .map(|key| CheckedNonce { key, nc })
    }

    /// Call only after [`verify`] succeeded: re-checks like [`check`](Self::check) and, if
    /// `Valid`, records `nc` (or the single use) so it cannot be replayed, then prunes.
    /// Accept the request only when this returns `Valid`.
    pub fn commit(&mut self, nonce: &str, nc: Option<u32>, now_secs: u64) -> NonceCheck {
        match self.verdict(nonce, nc, now_secs) {
            Ok(key) => self.record(key, nc, now_secs),
            Err(v) => v,
        }
    }

    /// [`commit`](Self::commit) for a nonce that passed [`check_token`](Self::check_token):
    /// freshness is checked again (another request may have used the count meanwhile), the
    /// MAC is not.
    pub fn commit_checked(&mut self, checked: CheckedNonce, now_secs: u64) -> NonceCheck {
        match self.fresh(checked.key, checked.nc, now_secs) {
            Ok(key) => self.record(key, checked.nc, now_secs),
            Err(v) => v,
        }
    }

    /// Spends a nonce that came with a wrong answer: it serves no further request, so each
    /// guess at a password needs a new challenge (a round trip, and a failure counted).
    pub fn spend(&mut self, checked: CheckedNonce, now_secs: u64) {
        self.used.insert(checked.key, Some(u32::MAX));
        self.prune(now_secs);
    }

    fn record(&mut self, key: (u64, u64), nc: Option<u32>, now_secs: u64) -> NonceCheck {
        self.used.insert(key, nc);
        self.prune(now_secs);
        NonceCheck::Valid
    }

    /// Drops expired entries from the oldest end, then evicts the oldest while over the cap.
    fn prune(&mut self, now: u64) {
        while let Some((&key, _)) = self.used.first_key_value() {
            let expired = now.saturating_sub(key.0) > self.lifetime;
            if !expired && self.used.len() <= self.max_entries {
                break;
            }
            self.used.pop_first();
            self.forgotten_upto = self.forgotten_upto.max(Some(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Algorithm::{Md5, Sha256};
    use super::NonceCheck::{Invalid, Stale, Valid};
    use super::*;
    use DigestError as E;

    fn parse(s: &str) -> Credentials<'_> {
        Credentials::parse(s).unwrap()
    }

    fn err(s: &str) -> DigestError {
        Credentials::parse(s).unwrap_err()
    }

    #[test]
    fn rfc7616_vectors() {
        let md5 = "8ca523f5e9506fed4657c9700eebdbec";
        let sha = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1";
        for (alg, resp) in [(Md5, md5), (Sha256, sha)] {
            let h = format!(
                "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
                 uri=\"/dir/index.html\", algorithm={}, \
                 nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
                 cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
                 response=\"{resp}\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
                alg.as_str()
            );
            let c = parse(&h);
            assert_eq!((c.algorithm, c.qop, c.nc), (alg, Some(Qop::Auth), Some(1)));
            let good = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life");
            assert!(verify(&c, "GET", &good));
            assert!(verify(&c, "GET", &good.to_ascii_uppercase()));
            assert!(!verify(&c, "POST", &good));
            let bad = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of life");
            assert!(!verify(&c, "GET", &bad));
        }
    }

    #[test]
    fn rfc2617_vector() {
        let c = parse(
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             qop=auth, nc=00000001, cnonce=\"0a4f113b\", \
             response=\"6629fae49393a05397450978507c4ef1\", opaque=\"5ccc\"",
        );
        assert_eq!(c.opaque.as_deref(), Some("5ccc"));
        let h1 = ha1(Md5, "Mufasa", "testrealm@host.com", "Circle Of Life");
        assert!(verify(&c, "GET", &h1));
    }

    // The expected responses below were computed independently with md5sum / sha256sum.
    #[test]
    fn sip_register_like_baresip() {
        let c = parse(
            "Digest username=\"alice\",realm=\"example.test\",nonce=\"4cd9b1a7e2f3\",\
             uri=\"sip:example.test\",response=\"48f037ba9d8f323b8c5cfb7ee9b4fa3c\",\
             algorithm=MD5,cnonce=\"0a1b2c3d\",qop=auth,nc=00000001",
        );
        assert!(matches!(c.username, Cow::Borrowed("alice")));
        let h1 = ha1(Md5, "alice", "example.test", "secret");
        assert_eq!(h1, "4842575394a190ef4c973253ba19099c");
        assert!(verify(&c, "REGISTER", &h1));
        assert!(!verify(&c, "INVITE", &h1));
    }

    #[test]
    fn rfc2069_no_qop_and_sess() {
        let h1 = ha1(Md5, "alice", "example.test", "secret");
        let c = parse(
            "Digest username=\"alice\", realm=\"example.test\", nonce=\"4cd9b1a7e2f3\", \
             uri=\"sip:bob@example.test\", response=\"c0926ff7f157948e7363de83998b0ae6\", nc=zz",
        );
        assert_eq!((c.qop, c.nc), (None, None));
        assert!(verify(&c, "INVITE", &h1));

        let h256 = ha1(Algorithm::Sha256Sess, "alice", "example.test", "secret");
        assert_eq!(h256, ha1(Sha256, "alice", "example.test", "secret"));
        let sha = "31e72b8b0c0eb174ef78bbdbdfe2f9e0e07281343e6f8998bf6bbb34fc57c62f";
        let md5 = "a3d40b4f681442a7ff221719957fcc75";
        for (alg, resp, h1) in [("md5-SESS", md5, &h1), ("SHA-256-sess", sha, &h256)] {
            let h = format!(
                "Digest username=\"alice\", realm=\"example.test\", nonce=\"4cd9b1a7e2f3\", \
                 uri=\"sip:example.test\", response=\"{resp}\", algorithm={alg}, \
                 cnonce=\"0a1b2c3d\", qop=auth, nc=00000002"
            );
            let c = parse(&h);
            assert!(c.algorithm.is_sess() && verify(&c, "REGISTER", h1));
        }
        let h = "Digest username=a, realm=r, nonce=n, uri=u, response=x, algorithm=MD5-sess";
        assert_eq!(err(h), E::MissingParam("cnonce"));
    }

    #[test]
    fn parser_edge_cases() {
        let c = parse(
            "  dIgEsT\tUserName = \"a\\\"b\\\\c\" ,REALM=\"r\\x\",  nonce=n , uri=\"sip:x\", \
             Response=\"\", foo=\"bar, baz=1\", ext=tok,, qop=\"auth\", nc=0000000A, cnonce=c,",
        );
        assert!(matches!(c.username, Cow::Owned(ref u) if u == "a\"b\\c"));
        assert!(matches!(c.nonce, Cow::Borrowed("n")));
        assert_eq!((&*c.realm, &*c.uri, &*c.response), ("rx", "sip:x", ""));
        assert_eq!(c.nc, Some(10));

        let base = "Digest username=a, realm=r, nonce=n, uri=u, response=x";
        assert!(Credentials::parse(base).is_ok());
        assert_eq!(err(&format!("{base}, Realm=s")), E::DuplicateParam("realm"));
        for p in ["username", "realm", "nonce", "uri", "response"] {
            let s = base.replace(&format!("{p}="), "other=");
            assert_eq!(err(&s), E::MissingParam(p));
        }
        let e = err("NoOneKnowsThisScheme opaque-data=here");
        assert!(e == E::UnknownScheme && e.should_challenge());
        assert_eq!(err("Basic QWxhZGRpbjpvcGVu"), E::UnknownScheme);
        let e = err(&format!("{base}, qop=auth-int, nc=00000001, cnonce=c"));
        assert!(e == E::UnsupportedQop && e.should_challenge());
        let e = err(&format!("{base}, algorithm=SHA-512-256"));
        assert!(e == E::UnsupportedAlgorithm && e.should_challenge());
        for nc in ["1", "0000001g", "000000001", "00000000", "+0000001"] {
            let e = err(&format!("{base}, qop=auth, cnonce=c, nc={nc}"));
            assert!(e == E::BadNonceCount && !e.should_challenge(), "{nc}");
        }
        let e = err(&format!("{base}, qop=auth, cnonce=c"));
        assert_eq!(e, E::MissingParam("nc"));
        let e = err(&format!("{base}, qop=auth, nc=00000001"));
        assert_eq!(e, E::MissingParam("cnonce"));
        let bad = "|  |\"Digest\"|Digest,username=a|Digest username|Digest a b|Digest a=|\
                   Digest username=\"a|Digest username=a b=c|Digest =a|Digest a=\"x\"y|Digest a=,b";
        for bad in bad.split('|') {
            assert!(Credentials::parse(bad).is_err(), "{bad:?}");
        }
        let e = err("Digest");
        assert_eq!(e.to_string(), "missing digest parameter username");
        assert_eq!(e, E::MissingParam("username"));
        assert_eq!("sha-256".parse(), Ok(Sha256));
        assert_eq!(Algorithm::parse("Md5-Sess"), Some(Algorithm::Md5Sess));
    }

    #[test]
    fn never_panics() {
        let valid = "Digest username=\"al\\\"ïce\", realm=\"ex€.test\",nonce=\"4cd9\",\
                     uri=\"sip:example.test\",response=\"48f0\",algorithm=MD5,cnonce=\"0a\\\\\",\
                     qop=auth,nc=00000001";
        assert!(Credentials::parse(valid).is_ok());
        for (i, _) in valid.char_indices() {
            let _ = Credentials::parse(valid.get(..i).unwrap_or(""));
            let _ = Credentials::parse(valid.get(i..).unwrap_or(""));
        }
        let alphabet: Vec<char> = "\"\\=, \t\r\nDigestuanc0qop€é".chars().collect();
        let mut x: u64 = 1;
        let mut rand = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            (x >> 33) as usize
        };
        // Random garbage, and the valid header with a few characters replaced or removed.
        for _ in 0..20_000 {
            let mut s: Vec<char> = valid.chars().collect();
            if rand() % 2 == 0 {
                s.truncate(7);
            }
            for _ in 0..rand() % 24 {
                let (pos, ch) = (
                    rand() % (s.len() + 1),
                    alphabet.get(rand() % alphabet.len()),
                );
                s.splice(
                    pos..(pos + 1).min(s.len()),
                    ch.copied().filter(|_| pos % 3 != 0),
                );
            }
            let s: String = s.into_iter().collect();
            if let Ok(c) = Credentials::parse(&s) {
                let _ = verify(&c, "REGISTER", "00");
            }
        }
    }

    #[test]
    fn challenge_and_hmac() {
        let c = challenge("example.org", "abc", Sha256, false, None);
        let want = "Digest realm=\"example.org\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\"";
        assert_eq!(c, want);
        let c = challenge("a\"b\\c\r\n", "n", Md5, true, Some("op"));
        let want = "Digest realm=\"a\\\"b\\\\c\", nonce=\"n\", algorithm=MD5, qop=\"auth\", \
                    stale=true, opaque=\"op\"";
        assert_eq!(c, want);
        // RFC 4231 test case 1.
        let mac = hex(&hmac_sha256(&[0x0b; 32], &[b"Hi ", b"There"]));
        assert_eq!(&mac[..32], "198a607eb44bfbc69903a0f1cf2bbdc5");
        assert_eq!(&mac[32..], "ba0aa3f3d9ae3c1c7a3b1696a0b68cf7");
    }

    #[test]
    fn nonce_manager() {
        let mut m = NonceManager::new([7; 32], 300);
        let n = m.issue(1000);
        assert!(n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(n, m.issue(1000));
        assert_eq!(m.check(&n, Some(1), 1000), Valid);
        assert_eq!(m.check(&n, Some(1), 1300), Valid);
        assert_eq!(m.check(&n, Some(1), 1301), Stale);
        assert_eq!(m.check(&n, Some(0), 1000), Invalid);
        let h = challenge("r", &n, Md5, false, None);
        assert!(h.contains(&format!("nonce=\"{n}\"")));

        // Any changed character, a wrong length or another secret → Invalid.
        for i in 0..n.len() {
            let mut t = n.clone().into_bytes();
            let b = t.get_mut(i).unwrap();
            *b = if *b == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).unwrap();
            assert_eq!(m.check(&t, Some(1), 1000), Invalid);
        }
        assert_eq!(m.check(&n.to_ascii_uppercase(), Some(1), 1000), Valid);
        let (long, utf) = (format!("{n}00"), n.replace(|_| true, "é"));
        for bad in ["", "xyz", &n[..62], &long, &utf] {
            assert_eq!(m.check(bad, Some(1), 1000), Invalid);
        }
        let mut other = NonceManager::new([8; 32], 300);
        other.issue(1000);
        assert_eq!(other.check(&n, Some(1), 1000), Invalid);

        // check() records nothing; commit() does, and nc must strictly increase.
        assert_eq!(m.check(&n, Some(1), 1000), Valid);
        assert_eq!(m.commit(&n, Some(1), 1001), Valid);
        assert_eq!(m.check(&n, Some(1), 1002), Stale);
        assert_eq!(m.commit(&n, Some(1), 1002), Stale);
        assert_eq!(m.check(&n, None, 1002), Stale);
        assert_eq!(m.commit(&n, Some(3), 1002), Valid);
        assert_eq!(m.check(&n, Some(2), 1002), Stale);
        assert_eq!(m.check(&n, Some(4), 1002), Valid);

        // Without qop a nonce is good once.
        let n2 = m.issue(1010);
        assert_eq!(m.commit(&n2, None, 1010), Valid);
        assert_eq!(m.check(&n2, None, 1010), Stale);
        assert_eq!(m.check(&n2, Some(5), 1010), Stale);

        // A genuine nonce from before this manager's first issue (previous run) → Stale.
        let mut restarted = NonceManager::new([7; 32], 300);
        assert_eq!(restarted.check(&n2, None, 1010), Stale);
        restarted.issue(1011);
        assert_eq!(restarted.check(&n2, None, 1011), Stale);

        // Issue times never go backwards.
        let n3 = m.issue(5);
        assert_eq!(m.check(&n3, Some(1), 1020), Valid);
    }

    #[test]
    fn nonce_table_is_bounded() {
        let mut m = NonceManager::new([1; 32], 100).with_max_entries(3);
        let nonces: Vec<String> = (0..6).map(|i| m.issue(i)).collect();
        for n in &nonces {
            assert_eq!(m.commit(n, Some(1), 10), Valid);
            assert!(m.len() <= 3);
        }
        // Evicted but within lifetime → Stale, never Valid again.
        for (i, n) in nonces.iter().enumerate() {
            assert_eq!(m.check(n, Some(2), 10), if i < 3 { Stale } else { Valid });
        }
        // Issued before an evicted one and never used → Stale too (safe side).
        let mut m = NonceManager::new([1; 32], 100).with_max_entries(1);
        let (a, b, c) = (m.issue(0), m.issue(1), m.issue(2));
        assert_eq!(m.commit(&b, None, 2), Valid);
        assert_eq!(m.commit(&c, None, 2), Valid);
        assert_eq!(m.check(&a, None, 2), Stale);
        // Expired entries are pruned on commit.
        let mut m = NonceManager::new([1; 32], 100);
        for t in 0..1000 {
            let n = m.issue(t);
            assert_eq!(m.commit(&n, Some(1), t), Valid);
        }
        assert!(m.len() == 101 && !m.is_empty());
    }

    #[test]
    fn client_authorization_round_trips() {
        for alg in [Algorithm::Md5, Algorithm::Sha256, Algorithm::Md5Sess] {
            let v = authorization(
                alg,
                "alice",
                "example.test",
                "pw",
                "REGISTER",
                "sip:example.test",
                "n1",
                "c1",
                1,
            );
            let c = Credentials::parse(&v).unwrap();
            assert_eq!(c.nc, Some(1));
            assert!(verify(
                &c,
                "REGISTER",
                &ha1(alg, "alice", "example.test", "pw")
            ));
            assert!(!verify(
                &c,
                "INVITE",
                &ha1(alg, "alice", "example.test", "pw")
            ));
        }
    }

    #[test]
    fn checked_tokens_commit_once() {
        let mut m = NonceManager::new([5; 32], 300);
        let n = m.issue(1000);
        let t = m.check_token(&n, Some(1), 1001).unwrap();
        assert_eq!(m.commit_checked(t, 1001), NonceCheck::Valid);
        // The same count again: replay, stale.
        assert_eq!(m.commit_checked(t, 1002), NonceCheck::Stale);
        assert_eq!(m.check_token(&n, Some(1), 1002), Err(NonceCheck::Stale));
        let t2 = m.check_token(&n, Some(2), 1002).unwrap();
        assert_eq!(m.commit_checked(t2, 1002), NonceCheck::Valid);
        let mut forged = n.clone().into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            m.check_token(std::str::from_utf8(&forged).unwrap(), Some(3), 1002),
            Err(NonceCheck::Invalid)
        );
    }
}
