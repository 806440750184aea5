//! Digest authentication of requests (RFC 3261 §22, RFC 7616, RFC 8760): challenges with a
//! fresh nonce per offered algorithm, and verification against the stored HA1 hashes with
//! nonce expiry and nonce-count replay protection.

use super::guard::Guard;
use super::{Action, Core, Flow};
use sip::digest::{challenge, verify, Algorithm, Credentials, NonceCheck};
use sip::header::HeaderName;
use sip::message::Message;
use sip::uri::Uri;
use std::time::Instant;

pub(crate) enum AuthOutcome {
    /// Authenticated as this user (name).
    User(String),
    /// Answer 401/407 with fresh challenges (`stale` when only the nonce was old).
    Challenge { stale: bool },
    /// Answer with this status: the credentials are malformed.
    Reject(u16, &'static str),
}

/// RFC 7616 §3.4.6: the digest URI must be the Request-URI. Compared as URIs (scheme, user,
/// host, port), so harmless differences in parameters or case do not lock a phone out.
fn same_target(digest_uri: &str, request_uri: &str) -> bool {
    if digest_uri == request_uri {
        return true;
    }
    match (Uri::parse(digest_uri), Uri::parse(request_uri)) {
        (Ok(a), Ok(b)) => {
            a.scheme == b.scheme
                && a.user_unescaped() == b.user_unescaped()
                && a.host.matches(&b.host)
                && a.port == b.port
        }
        _ => false,
    }
}

/// Who may log in, and what authentication remembers: the users (with their HA1 hashes), the
/// nonces handed out, the failures seen lately, and the sources banned for them.
pub(crate) struct Authenticator {
    users: super::Users,
    nonces: sip::digest::NonceManager,
    failures: RecentFailures,
    guard: Guard,
}

impl Authenticator {
    /// `secret` (the process's) keys the nonces and the memory of failures, each with a key
    /// of its own; nonces live `nonce_lifetime` seconds.
    pub(crate) fn new(users: super::Users, secret: &[u8; 32], nonce_lifetime: u64) -> Self {
        Authenticator {
            users,
            nonces: sip::digest::NonceManager::new(
                crate::keys::derive(secret, "hedgewitch nonces v1"),
                nonce_lifetime,
            ),
            failures: RecentFailures::new(secret),
            guard: Guard::default(),
        }
    }

    /// The accounts, by name and extension.
    pub(crate) fn users(&self) -> &super::Users {
        &self.users
    }

    /// Replaces the accounts (after the store changed).
    pub(crate) fn set_users(&mut self, users: super::Users) {
        self.users = users;
    }

    /// The guard: who may talk to us (bans, rates, verified sources, fraud limits).
    pub(crate) fn guard(&self) -> &Guard {
        &self.guard
    }

    pub(crate) fn guard_mut(&mut self) -> &mut Guard {
        &mut self.guard
    }

    /// Changes how long nonces stay valid (a reload).
    pub(crate) fn set_nonce_lifetime(&mut self, secs: u64) {
        self.nonces.set_lifetime(secs);
    }
}

/// Failed requests seen lately, so that a retransmission (same source, Call-ID, CSeq and
/// branch) is neither counted nor logged again. Challenges keep no transaction, so this is
/// the only memory of them; bounded whatever senders do, in entries and in bytes: a request is
/// remembered by a keyed hash of its identifiers, never by the sender's strings.
pub(crate) struct RecentFailures {
    seen: std::collections::HashMap<u64, Instant>,
    /// Keys the hashes per process, so a sender cannot aim at another request's entry.
    key: [u64; 2],
}

/// How long a failed request is remembered: a UDP request is retransmitted for 32 s at most
/// (RFC 3261 Timer F).
const RETRANSMITTED_WITHIN: std::time::Duration = std::time::Duration::from_secs(32);
/// Failed requests remembered at most.
const MAX_REMEMBERED: usize = 4096;

impl RecentFailures {
    fn new(secret: &[u8; 32]) -> Self {
        RecentFailures {
            seen: std::collections::HashMap::new(),
            key: crate::keys::sip_key(secret, "hedgewitch failures v1"),
        }
    }

    /// True the first time this request fails (within the window).
    fn first(&mut self, now: Instant, msg: &Message, flow: Flow) -> bool {
        use std::hash::{Hash, Hasher};
        let branch = msg.top_via().and_then(|v| v.branch());
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.key[0], self.key[1]);
        (flow.remote, msg.call_id(), msg.cseq().map(|c| c.0), branch).hash(&mut h);
        let key = h.finish();
        if self
            .seen
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < RETRANSMITTED_WITHIN)
        {
            return false;
        }
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen
                .retain(|_, t| now.saturating_duration_since(*t) < RETRANSMITTED_WITHIN);
            if self.seen.len() >= MAX_REMEMBERED {
                self.seen.clear();
            }
        }
        self.seen.insert(key, now);
        true
    }
}

impl Core {
    /// True for credentials addressed to our realm (the ones we consume).
    pub(crate) fn is_our_realm(&self, credentials: &str) -> bool {
        Credentials::parse(credentials).is_ok_and(|c| self.is_realm(&c.realm))
    }

    /// Each served domain is its own digest realm.
    fn is_realm(&self, realm: &str) -> bool {
        realm == self.cfg.domain.as_str() || self.cfg.domains.iter().any(|d| d == realm)
    }

    /// Checks the request's credentials. A failed attempt is one WARN line naming the user,
    /// the realm, the source and the phone, counted once: challenges keep no transaction, so
    /// a retransmission of the same request is recognised by `RecentFailures`.
    pub(crate) fn authenticate(
        &mut self,
        now: Instant,
        msg: &Message,
        proxy: bool,
        flow: Flow,
    ) -> AuthOutcome {
        let name = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        let mut found = None;
        for value in msg.values(name) {
            match Credentials::parse(value) {
                Ok(c) if self.is_realm(&c.realm) => {
                    found = Some(c);
                    break;
                }
                Ok(_) => {}
                Err(e) if e.should_challenge() => {}
                Err(_) => return AuthOutcome::Reject(400, "Bad Authorization Header"),
            }
        }
        let Some(creds) = found else {
            return AuthOutcome::Challenge { stale: false };
        };
        if !self.cfg.auth.algorithms.contains(&creds.algorithm.base()) {
            return AuthOutcome::Challenge { stale: false };
        }
        if !same_target(&creds.uri, msg.uri_str()) {
            return AuthOutcome::Reject(400, "Digest URI Does Not Match Request-URI");
        }
        let secs = self.unix(now);
        // A domain's users are known by name within its realm (`name@domain` outside the
        // main one); a phone may also send the whole address as its user name.
        let key = match creds.username.split_once('@') {
            Some((u, d)) if d.eq_ignore_ascii_case(&creds.realm) => self.qualify(u, &creds.realm),
            _ => self.qualify(&creds.username, &creds.realm),
        };
        let Some(user) = self.auth.users.by_name(&key) else {
            self.auth_failed(
                now,
                msg,
                flow,
                (&creds.username, None),
                &creds.realm,
                "no such user",
            );
            return AuthOutcome::Challenge { stale: false };
        };
        let ha1 = match creds.algorithm.base() {
            Algorithm::Sha256 => user.ha1_sha256.clone(),
            _ => user.ha1_md5.clone(),
        };
        let user_name = user.name.clone();
        // A hash made for another realm can never match: say so rather than blame the password.
        let realm_mismatch = (user.realm != creds.realm).then(|| user.realm.clone());
        // Guessed at from many addresses: only those its phones registered from may try it
        // now. The answer is the same challenge a wrong password gets.
        if self.auth.guard.account_under_attack(now, &user_name)
            && !self.location.has_source(&user_name, flow.remote.ip(), now)
        {
            self.auth_failed(
                now,
                msg,
                flow,
                (&creds.username, Some(&user_name)),
                &creds.realm,
                "account under a guessing attack: logins from new addresses are refused for now",
            );
            return AuthOutcome::Challenge { stale: false };
        }
        let good = verify(&creds, msg.method_str(), &ha1);
        let checked = match self.auth.nonces.check_token(&creds.nonce, creds.nc, secs) {
            Ok(c) => Some(c),
            // An old or unknown nonce: only a correct digest earns stale=true (a wrong one
            // must not skip the prompt); a wrong digest is a failed attempt all the same.
            Err(e) if good => {
                return AuthOutcome::Challenge {
                    stale: matches!(e, NonceCheck::Stale),
                }
            }
            Err(_) => None,
        };
        if !good {
            let why = match &realm_mismatch {
                Some(stored) => format!(
                    "the password of {user_name} was set for realm `{stored}`, not `{}`: \
                     set it again (hedgewitch user passwd {user_name})",
                    creds.realm
                ),
                None => "wrong password".to_string(),
            };
            // A wrong answer spends its nonce: every guess needs a new challenge.
            if let Some(c) = checked {
                self.auth.nonces.spend(c, secs);
            }
            self.auth_failed(
                now,
                msg,
                flow,
                (&creds.username, Some(&user_name)),
                &creds.realm,
                &why,
            );
            return AuthOutcome::Challenge { stale: false };
        }
        let Some(checked) = checked else {
            return AuthOutcome::Challenge { stale: false };
        };
        match self.auth.nonces.commit_checked(checked, secs) {
            NonceCheck::Valid => {
                // It answered a challenge we sent it: the source is real.
                self.auth.guard_mut().mark_verified(now, flow.remote.ip());
                AuthOutcome::User(user_name)
            }
            _ => AuthOutcome::Challenge { stale: true },
        }
    }

    /// A failed attempt: counted, and one log line of who tried, from where, with what; a
    /// retransmission of it neither. `user` is the name given, and the account it names when
    /// there is one. Too many failures from one source ban it.
    fn auth_failed(
        &mut self,
        now: Instant,
        msg: &Message,
        flow: Flow,
        (user, account): (&str, Option<&str>),
        realm: &str,
        why: &str,
    ) {
        if !self.auth.failures.first(now, msg, flow) {
            return;
        }
        let ban = self.auth.guard.failed(now, flow.remote.ip(), account);
        self.counters.registrar.auth_failures += 1;
        let agent = msg.value(HeaderName::UserAgent).unwrap_or("-");
        tracing::warn!(
            user,
            realm,
            source = %flow.remote,
            transport = flow.transport.as_str(),
            user_agent = agent,
            method = msg.method_str(),
            "authentication failed: {why}"
        );
        if let Some(ban) = ban {
            self.counters.registrar.bans += 1;
            tracing::warn!(
                user,
                realm,
                source = %flow.remote,
                banned = %ban.source,
                transport = flow.transport.as_str(),
                user_agent = agent,
                secs = ban.length.as_secs(),
                offence = ban.offence,
                "source banned for failed logins"
            );
            // The edge closes its stream connections and refuses new ones.
            self.out.push(Action::Ban {
                source: ban.source,
                secs: ban.length.as_secs(),
            });
        }
    }

    /// One WWW-Authenticate (or Proxy-Authenticate) header per offered algorithm, preferred
    /// first (RFC 8760 §2.4).
    pub(crate) fn challenges(
        &mut self,
        now: Instant,
        proxy: bool,
        stale: bool,
        realm: &str,
    ) -> Vec<(&'static str, String)> {
        let name = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let secs = self.unix(now);
        let algs = self.cfg.auth.algorithms.clone();
        algs.into_iter()
            .map(|alg| {
                let nonce = self.auth.nonces.issue(secs);
                (name, challenge(realm, &nonce, alg, stale, None))
            })
            .collect()
    }
}
