//! Calls through providers. Out: the fraud guards (calling classes, calls at once per user
//! and per provider, calls per day), the providers a number is tried on in order, the
//! branch each one gets (the number in the provider's format, the caller presented as the
//! provider asks), and the digest answers to a provider's 401/407 (we are a client for
//! authentication, a proxy otherwise: SDP and media stay end to end). In: whose a request
//! is (the secret in our registered Contact, or the provider's addresses) and which user,
//! group or extension the called number rings.

use super::{OutsideCall, Trunk};
use crate::numbers::{CallClass, NumberCall};
use crate::plan::{Dialed, Target};
use crate::route::Hop;
use crate::trunks::register::loose_uri;
use crate::trunks::settings::Identity;
use crate::{Core, Flow};
use sip::digest_client::Challenge;
use sip::header::HeaderName;
use sip::message::Message;
use std::time::{Duration, Instant};

/// A call out that nobody ended is forgotten after this long (a lost BYE must not hold a
/// user's or a provider's slot for ever).
const CALL_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// Why a call out is refused.
pub(crate) type Refusal = (u16, String);

impl Core {
    /// The fraud guards for a local user's call to a number: class, calls at once, calls
    /// today. Emergency calls pass whatever the limits. Every refusal is one log line.
    pub(crate) fn number_allowed(
        &mut self,
        now: Instant,
        user: &str,
        call: &NumberCall,
        source: std::net::SocketAddr,
        invite: bool,
    ) -> Result<(), Refusal> {
        if call.emergency {
            tracing::warn!(user = %user, number = %call.dialled, %source, "emergency call");
            return Ok(());
        }
        let numbers = self.agent.trunks.numbers();
        let class = call
            .e164
            .as_deref()
            .map_or(CallClass::Internal, |e| numbers.class_of(e));
        let limits = &numbers.allow;
        let refusal = if !self.plan.may_call_outside(user) {
            Some((403, "Calls Outside The Domain Not Allowed".to_string()))
        } else if !numbers.allows(user, class) {
            Some((
                403,
                format!("Forbidden ({} Calls Not Allowed)", title(class.as_str())),
            ))
        } else {
            None
        };
        let (at_once, per_day) = (limits.calls_at_once, limits.calls_per_day);
        let refusal = refusal.or_else(|| {
            if !invite {
                return None;
            }
            self.forget_old_calls(now);
            let trunks = &self.agent.trunks;
            let active = trunks.calls.values().filter(|c| c.user == user).count();
            let day = self.unix(now) / 86400;
            let today = trunks
                .per_day
                .get(user)
                .filter(|(d, _)| *d == day)
                .map_or(0, |(_, n)| *n);
            if at_once > 0 && active >= at_once as usize {
                Some((403, "Forbidden (Too Many Calls At Once)".to_string()))
            } else if per_day > 0 && today >= per_day {
                Some((403, "Forbidden (Daily Call Limit Reached)".to_string()))
            } else {
                None
            }
        });
        match refusal {
            Some(r) => {
                self.counters.forwarded.outside_limited += 1;
                tracing::warn!(user = %user, number = %call.dialled, %source, class = class.as_str(),
                    status = r.0, "call to a number refused: {}", r.1);
                Err(r)
            }
            None => Ok(()),
        }
    }

    /// The providers a number is tried on, in order, each as one hop (a provider at its
    /// call limit, or not found in DNS yet, is left out).
    pub(crate) fn number_hops(&mut self, now: Instant, call: &NumberCall) -> Vec<Hop> {
        self.forget_old_calls(now);
        let trunks = &self.agent.trunks;
        let names: Vec<String> = if call.emergency {
            let chosen = trunks.numbers().emergency_provider.clone();
            chosen
                .into_iter()
                .chain(
                    trunks
                        .list
                        .iter()
                        .filter(|t| t.settings.calls.outgoing)
                        .map(|t| t.settings.name.clone()),
                )
                .take(1)
                .collect()
        } else if call.providers.is_empty() {
            let outgoing = trunks.list.iter().filter(|t| t.settings.calls.outgoing);
            outgoing.map(|t| t.settings.name.clone()).collect()
        } else {
            call.providers.clone()
        };
        let mut hops = vec![];
        for name in names {
            let Some(t) = self.agent.trunks.get(&name) else {
                tracing::warn!(provider = %name, "a dial-plan rule names a provider that does not exist");
                continue;
            };
            let max = t.settings.calls.max_calls;
            if max > 0 && t.calls >= max && !call.emergency {
                tracing::info!(provider = %name, calls = t.calls, "provider at its call limit; trying the next");
                continue;
            }
            match self.trunk_hop(now, &name, call) {
                Some(h) => hops.push(h),
                None => {
                    tracing::info!(provider = %name, "provider not reachable yet (DNS); trying the next")
                }
            }
        }
        hops
    }

    /// The branch towards one provider for a number.
    fn trunk_hop(&mut self, now: Instant, name: &str, call: &NumberCall) -> Option<Hop> {
        let flow = self.trunk_flow(now, name)?;
        let t = self.agent.trunks.get(name)?;
        let numbers = self.agent.trunks.numbers();
        let number = match (&call.e164, call.emergency) {
            (Some(e), false) => numbers.format(e, &call.dialled, t.settings.calls.number_format),
            _ => call.dialled.clone(),
        };
        let route = if !t.session.service_route.is_empty() {
            t.session.service_route.clone()
        } else {
            t.settings.peer.proxy.iter().map(|p| loose_uri(p)).collect()
        };
        let alternates = t
            .hops
            .as_ref()
            .map(|(f, _)| f.iter().skip(1).copied().collect())
            .unwrap_or_default();
        Some(Hop {
            uri: format!("sip:{number}@{}", t.settings.peer.domain),
            flow,
            route,
            alternates,
            trunk: Some(name.to_string()),
        })
    }

    /// How a call through provider `name` presents its caller: a new From URI, and the
    /// identity header the provider asks for.
    pub(crate) fn trunk_identity(
        &self,
        name: &str,
    ) -> (Option<String>, Option<(&'static str, String)>) {
        let Some(t) = self.agent.trunks.get(name) else {
            return (None, None);
        };
        let s = &t.settings;
        let domain = &s.peer.domain;
        let number = s.calls.caller_id.as_deref().unwrap_or(&s.account.user);
        if number.is_empty() {
            // A peer with no account and no number to show (a PBX): the caller as is.
            return (None, None);
        }
        let account = format!("sip:{}@{domain}", s.account.user);
        let shown = format!("<sip:{number}@{domain}>");
        match s.calls.identity {
            Identity::From => (Some(format!("sip:{number}@{domain}")), None),
            Identity::Pai => (Some(account), Some(("P-Asserted-Identity", shown))),
            Identity::Ppi => (Some(account), Some(("P-Preferred-Identity", shown))),
        }
    }

    /// The credentials answering a provider's 401/407 to a request we forwarded to it
    /// (None: no challenge we can answer, or the same nonce already refused them).
    pub(crate) fn trunk_credentials(
        &mut self,
        name: &str,
        resp: &Message,
        sent: &Message,
        answered_before: bool,
    ) -> Option<(&'static str, String)> {
        let status = resp.status()?;
        let (header, out) = match status {
            401 => (HeaderName::WwwAuthenticate, "Authorization"),
            407 => (HeaderName::ProxyAuthenticate, "Proxy-Authorization"),
            _ => return None,
        };
        let cnonce = self.token();
        let t = self.agent.trunks.get_mut(name)?;
        let realm = t.settings.peer.realm.clone();
        let ch = resp
            .values(header)
            .filter_map(|v| Challenge::parse(v).ok())
            .filter(|c| realm.as_deref().is_none_or(|r| r == c.realm))
            .max_by_key(|c| c.algorithm == sip::digest::Algorithm::Sha256)?;
        if answered_before && !ch.stale {
            tracing::warn!(provider = %name, status, "the provider refused our credentials for a call");
            return None;
        }
        // A fresh client nonce each time, so the count starts at 1.
        let a = &t.settings.account;
        let value = ch.answer(
            &a.auth_user,
            &a.password,
            sent.method_str(),
            sent.uri_str(),
            &cnonce,
            1,
        );
        Some((out, value))
    }

    /// The provider a request of ours went to, by where it was sent.
    pub(crate) fn trunk_at(&self, flow: Flow) -> Option<String> {
        self.agent.trunks.by_source(flow.remote).map(str::to_string)
    }

    /// A call out through `trunk` started ringing there: it counts until it ends.
    pub(crate) fn outside_call_started(
        &mut self,
        now: Instant,
        call_id: &str,
        user: &str,
        trunk: &str,
    ) {
        let day = self.unix(now) / 86400;
        let trunks = &mut self.agent.trunks;
        if trunks.calls.contains_key(call_id) {
            return;
        }
        let e = trunks.per_day.entry(user.to_string()).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        e.1 += 1;
        if let Some(t) = trunks.get_mut(trunk) {
            t.calls += 1;
        }
        trunks.calls.insert(
            call_id.to_string(),
            OutsideCall {
                user: user.to_string(),
                trunk: trunk.to_string(),
                since: now,
            },
        );
    }

    /// A call out ended (BYE, or no answer): its slots are free again.
    pub(crate) fn outside_call_ended(&mut self, call_id: &str) {
        let trunks = &mut self.agent.trunks;
        if let Some(c) = trunks.calls.remove(call_id) {
            if let Some(t) = trunks.get_mut(&c.trunk) {
                t.calls = t.calls.saturating_sub(1);
            }
        }
    }

    fn forget_old_calls(&mut self, now: Instant) {
        let old: Vec<String> = self
            .agent
            .trunks
            .calls
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.since) > CALL_MAX_AGE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.outside_call_ended(&k);
        }
    }

    /// Whose a new request is: a provider's, when it is sent to the secret of our Contact
    /// there, or comes from the provider's addresses for one of its numbers. Returns the
    /// provider and the number called.
    pub(crate) fn trunk_caller(
        &self,
        msg: &Message,
        source: std::net::SocketAddr,
    ) -> Option<(String, String)> {
        let trunks = &self.agent.trunks;
        if trunks.is_empty() {
            return None;
        }
        let uri = msg.uri().ok()?;
        let ruser = uri.user_unescaped().unwrap_or_default().to_string();
        let to_user = msg
            .to()
            .and_then(|t| t.uri.user_unescaped().map(|u| u.to_string()))
            .unwrap_or_default();
        if let Some(name) = trunks.by_secret(&ruser) {
            return Some((name.to_string(), to_user));
        }
        let name = trunks.by_source(source)?;
        if trunks.is_peer(name) && !ruser.is_empty() {
            // A peered PBX may call any of our users, extensions and groups.
            return Some((name.to_string(), ruser));
        }
        let t = trunks.get(name)?;
        let numbers = trunks.numbers();
        let owns = |n: &str| {
            t.settings
                .dids
                .iter()
                .any(|d| numbers.same_number(&d.number, n))
        };
        [ruser, to_user]
            .into_iter()
            .find(|n| !n.is_empty() && owns(n))
            .map(|n| (name.to_string(), n))
    }

    /// What a provider's call to `number` rings: its `did` entry, else the provider's or the
    /// domain's default target; None: nothing (404).
    pub(crate) fn did_target(&self, trunk: &str, number: &str) -> Option<Target> {
        let trunks = &self.agent.trunks;
        let t: &Trunk = trunks.get(trunk)?;
        let numbers = trunks.numbers();
        let mapped = t
            .settings
            .dids
            .iter()
            .find(|d| numbers.same_number(&d.number, number))
            .map(|d| d.target.as_str())
            .filter(|t| !t.is_empty());
        // A peered PBX dials our users, extensions and groups as they are.
        if mapped.is_none() && t.settings.register.is_none() {
            if let Dialed::Local(local) = self.plan.target(number, None) {
                return Some(local);
            }
        }
        let target = mapped
            .or(t.settings.default_target.as_deref())
            .or(numbers.default_target.as_deref())?;
        match self.plan.target(target, None) {
            Dialed::Local(t) => Some(t),
            _ => {
                tracing::warn!(provider = %trunk, number, target, "the number's target is not a local user, group or extension");
                None
            }
        }
    }
}

/// "international" -> "International".
fn title(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
