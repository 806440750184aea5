//! The registrar (RFC 3261 §10.3): authenticates REGISTER, then adds, refreshes and removes
//! contacts of the user's address-of-record, writing every change through to the store.

use super::auth::AuthOutcome;
use super::handles::ServerTxId;
use super::location::Binding;
use super::timers::TimerRef;
use super::{Action, Core, Flow};
use crate::StoredBinding;
use crate::Transport;
use sip::grammar::{name_addr_list, parse_bounded, token_list};
use sip::header::HeaderName;
use sip::message::Message;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a REGISTER asked for one contact.
struct Wanted {
    contact: String,
    expires: u32,
    q: f32,
    /// `+sip.instance`, with the `reg-id` when the phone registers an RFC 5626 flow.
    instance: Option<crate::Instance>,
}

/// Whether `tag` is among the option tags of the request's Supported or Require headers.
fn supports(msg: &Message, tag: &str) -> bool {
    msg.values(HeaderName::Supported)
        .chain(msg.values(HeaderName::Require))
        .flat_map(token_list)
        .any(|t| t.eq_ignore_ascii_case(tag))
}

impl Core {
    pub(crate) fn register(&mut self, now: Instant, key: ServerTxId, msg: &Message, flow: Flow) {
        // Each served domain is a realm of its own: the one the address of record is in.
        let domain = msg
            .to()
            .and_then(|t| self.served_domain(&t.uri.host).map(str::to_string))
            .unwrap_or_else(|| self.cfg.domain.clone());
        let user = match self.authenticate(now, msg, false, flow) {
            AuthOutcome::User(u) => u,
            AuthOutcome::Challenge { stale } => {
                let h = self.challenges(now, false, stale, &domain);
                return self.respond(now, key, 401, "Unauthorized", &h, None);
            }
            AuthOutcome::Reject(code, reason) => {
                return self.respond(now, key, code, reason, &[], None)
            }
        };
        let Some(to) = msg.to() else {
            return self.respond(now, key, 400, "Bad To", &[], None);
        };
        if !to.uri.is_sip() {
            // RFC 4475 unksm2: an address-of-record is a SIP or SIPS URI.
            return self.respond(now, key, 400, "AOR Must Be a SIP URI", &[], None);
        }
        let aor = to
            .uri
            .user_unescaped()
            .map(|u| u.into_owned())
            .unwrap_or_default();
        let key_name = self.qualify(&aor, &domain);
        let found = if domain == self.cfg.domain {
            self.auth.users().find(&key_name)
        } else {
            self.auth.users().by_name(&key_name)
        };
        let Some(owner) = found.map(|u| u.name.clone()) else {
            return self.respond(now, key, 404, "Not Found", &[], None);
        };
        if owner != user {
            tracing::info!(%user, aor = %owner, "REGISTER for someone else's address refused");
            return self.respond(now, key, 403, "Forbidden: Not Your Address", &[], None);
        }
        // Path (RFC 3327), outbound (RFC 5626) and gruu (RFC 5627) are the option tags the
        // registrar knows.
        let unsupported: Vec<&str> = msg
            .values(HeaderName::Require)
            .flat_map(token_list)
            .filter(|t| {
                !["path", "outbound", "gruu"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            })
            .collect();
        if !unsupported.is_empty() {
            let h = [("Unsupported", unsupported.join(", "))];
            return self.respond(now, key, 420, "Bad Extension", &h, None);
        }
        // RFC 3327 §5.3: a Path from a phone that does not support Path is refused (as
        // Kamailio's default path mode does), else kept with each contact.
        let path: Vec<String> = msg
            .values(HeaderName::Path)
            .flat_map(name_addr_list)
            .filter_map(Result::ok)
            .map(|p| p.uri.raw.to_string())
            .collect();
        if !path.is_empty() && !supports(msg, "path") {
            let h = [("Unsupported", "path".to_string())];
            return self.respond(now, key, 420, "Bad Extension", &h, None);
        }
        // RFC 5626 §6: outbound needs a first hop that supports it: us (the REGISTER comes
        // straight from the phone) or an edge proxy that marked its Path entry with `ob`.
        let outbound_wanted = supports(msg, "outbound");
        let first_hop_ok = !msg.has_second_via()
            || path
                .last()
                .is_some_and(|p| sip::uri::Uri::parse(p).is_ok_and(|u| u.param("ob").is_some()));
        let header_expires = msg.value(HeaderName::Expires).map(|v| {
            parse_bounded(v, u64::MAX).map_or(self.cfg.registrar.default_expires, |n| {
                n.min(u32::MAX as u64) as u32
            })
        });
        let star = msg.values(HeaderName::Contact).any(|v| v.trim() == "*");
        if star {
            let contacts = msg.values(HeaderName::Contact).count();
            if contacts != 1 || header_expires != Some(0) {
                return self.respond(now, key, 400, "Bad Wildcard Contact", &[], None);
            }
            let removed: Vec<Binding> = self.location.bindings_mut(&owner).drain(..).collect();
            self.location.remove_empty(&owner);
            for b in removed {
                self.location.forget(&b.contact);
                self.out.push(Action::DeleteBinding {
                    aor: owner.clone(),
                    contact: b.contact,
                });
            }
            return self.registered(now, key, &owner);
        }
        let mut wanted = vec![];
        for v in msg.values(HeaderName::Contact) {
            for c in name_addr_list(v).flatten() {
                let expires = c
                    .param("expires")
                    .flatten()
                    .map(|e| {
                        parse_bounded(e, u64::MAX).map_or(self.cfg.registrar.default_expires, |n| {
                            n.min(u32::MAX as u64) as u32
                        })
                    })
                    .or(header_expires)
                    .unwrap_or(self.cfg.registrar.default_expires)
                    .min(self.cfg.registrar.max_expires);
                if expires > 0 && expires < self.cfg.registrar.min_expires {
                    let h = [("Min-Expires", self.cfg.registrar.min_expires.to_string())];
                    return self.respond(now, key, 423, "Interval Too Brief", &h, None);
                }
                let q = c
                    .param("q")
                    .flatten()
                    .and_then(|q| q.parse::<f32>().ok())
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(1.0);
                let reg_id = c
                    .param("reg-id")
                    .flatten()
                    .and_then(|r| r.parse::<u32>().ok());
                let instance = c
                    .param("+sip.instance")
                    .flatten()
                    .map(|i| i.trim_matches('"').to_string())
                    .filter(|i| !i.is_empty() && i.len() <= 256);
                let reg_id = match (reg_id, &instance) {
                    (Some(r), Some(_)) if outbound_wanted && r > 0 => {
                        if !first_hop_ok {
                            return self.respond(
                                now,
                                key,
                                439,
                                "First Hop Lacks Outbound Support",
                                &[],
                                None,
                            );
                        }
                        Some(r)
                    }
                    _ => None,
                };
                wanted.push(Wanted {
                    contact: c.uri.raw.to_string(),
                    expires,
                    q,
                    instance: instance.map(|id| crate::Instance { id, reg_id }),
                });
            }
        }
        let call_id = msg.call_id().to_string();
        let cseq = msg.cseq().map_or(0, |c| c.0);
        let user_agent = msg.value(HeaderName::UserAgent).unwrap_or("").to_string();
        let unix = self.unix(now);
        let mut changes = vec![];
        let mut fresh = None;
        let any_outbound = wanted
            .iter()
            .any(|w| w.instance.as_ref().is_some_and(|i| i.reg_id.is_some()));
        {
            let list = self.location.bindings_mut(&owner);
            for w in wanted {
                // RFC 5626 §6: a flow is identified by instance and reg-id; a new REGISTER
                // for it replaces the old binding even when the Contact changed.
                let existing = match w.instance.as_ref().filter(|i| i.reg_id.is_some()) {
                    Some(ob) => list
                        .iter()
                        .position(|b| b.instance.as_ref() == Some(ob))
                        .or_else(|| list.iter().position(|b| b.contact == w.contact)),
                    None => list.iter().position(|b| b.contact == w.contact),
                };
                if let Some(i) = existing {
                    // §10.3 step 7: same Call-ID with an older CSeq must not change the binding.
                    if list[i].call_id == call_id && list[i].cseq >= cseq {
                        continue;
                    }
                }
                if let Some(i) = existing.filter(|&i| list[i].contact != w.contact) {
                    fresh = Some(w.contact.clone());
                    changes.push(Action::DeleteBinding {
                        aor: owner.clone(),
                        contact: list[i].contact.clone(),
                    });
                }
                if w.expires == 0 {
                    if let Some(i) = existing {
                        let b = list.remove(i);
                        changes.push(Action::DeleteBinding {
                            aor: owner.clone(),
                            contact: b.contact,
                        });
                    }
                    continue;
                }
                let binding = Binding {
                    contact: w.contact,
                    expires: now + Duration::from_secs(w.expires as u64),
                    q: w.q,
                    call_id: call_id.clone(),
                    cseq,
                    flow,
                    user_agent: user_agent.clone(),
                    next_ping: None,
                    missed_pings: 0,
                    keepalive_at: None,
                    path: path.clone(),
                    instance: w.instance,
                };
                changes.push(Action::PutBinding(stored(
                    &owner,
                    &binding,
                    unix + w.expires as u64,
                )));
                match existing {
                    Some(i) => list[i] = binding,
                    None => {
                        fresh = Some(binding.contact.clone());
                        list.push(binding);
                    }
                }
            }
            while list.len() > self.cfg.registrar.max_contacts {
                // The one closest to expiry goes first.
                let oldest = list
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| b.expires)
                    .map_or(0, |(i, _)| i);
                let b = list.remove(oldest);
                changes.push(Action::DeleteBinding {
                    aor: owner.clone(),
                    contact: b.contact,
                });
            }
        }
        self.location.remove_empty(&owner);
        for c in &changes {
            match c {
                Action::PutBinding(b) => {
                    let addr = self.location.remember(&b.contact, &owner);
                    if flow.transport == Transport::Udp {
                        self.location
                            .remember_source(flow.remote, &owner, &b.contact);
                    }
                    self.schedule_ping(now, &owner, &b.contact, addr);
                }
                Action::DeleteBinding { contact, .. } => self.location.forget(contact),
                _ => {}
            }
        }
        if let Some(conn) = flow
            .conn
            .filter(|_| changes.iter().any(|c| matches!(c, Action::PutBinding(_))))
        {
            changes.push(Action::HoldConnection { conn });
        }
        self.out.extend(changes);
        if let Some(first) = self.location.get(&owner).iter().map(|b| b.expires).min() {
            self.timers.push(first, TimerRef::Expiry(owner.clone()));
        }
        self.counters.registrar.registrations_accepted += 1;
        let mut extra = vec![];
        if any_outbound {
            extra.push(("Require", "outbound".to_string()));
        }
        for p in msg.values(HeaderName::Path) {
            extra.push(("Path", p.to_string()));
        }
        let gruu = supports(msg, "gruu");
        self.registered_with(now, key, &owner, extra, gruu);
        if let Some(contact) = fresh {
            // A phone that just came: messages that waited for the user go to it now.
            self.deliver_waiting(now, &owner, Some(&contact));
        }
        self.presence_changed(now, &owner);
    }

    /// 200 OK listing every current contact with its remaining time (§10.3 step 8).
    fn registered(&mut self, now: Instant, key: ServerTxId, aor: &str) {
        self.registered_with(now, key, aor, vec![], false)
    }

    /// The 200 OK; with `gruu` (the phone supports RFC 5627), each contact that named its
    /// instance gets that instance's public and temporary GRUU.
    fn registered_with(
        &mut self,
        now: Instant,
        key: ServerTxId,
        aor: &str,
        extra: Vec<(&str, String)>,
        gruu: bool,
    ) {
        let contacts: Vec<(String, u64, Option<crate::Instance>, String)> = self
            .location
            .get(aor)
            .iter()
            .map(|b| {
                let secs = b.expires.saturating_duration_since(now).as_secs();
                let instance = b.instance.clone().filter(|_| gruu);
                (b.contact.clone(), secs, instance, b.call_id.clone())
            })
            .collect();
        let mut h: Vec<(&str, String)> = Vec::with_capacity(contacts.len() + extra.len() + 1);
        for (contact, secs, instance, call_id) in contacts {
            let mut value = format!("<{contact}>;expires={secs}");
            if let Some(i) = instance {
                value.push_str(&self.gruu_params(aor, &i.id, i.reg_id, &call_id));
            }
            h.push(("Contact", value));
        }
        h.push(("Date", httpdate(self.unix(now))));
        h.extend(extra);
        self.respond(now, key, 200, "OK", &h, None);
    }

    /// Drops the expired contacts of `aor` and schedules the next check.
    pub(crate) fn expire_bindings(&mut self, now: Instant, aor: &str) {
        for b in self.location.purge(aor, now) {
            tracing::info!(user = aor, contact = %b.contact, "registration expired");
            self.out.push(Action::DeleteBinding {
                aor: aor.to_string(),
                contact: b.contact,
            });
        }
        if let Some(next) = self.location.get(aor).iter().map(|b| b.expires).min() {
            self.timers.push(next, TimerRef::Expiry(aor.to_string()));
        }
        self.presence_changed(now, aor);
    }

    /// A stream connection closed: the browsers registered over it (WebSocket contacts,
    /// which nothing else reaches) are gone at once, so that a call to a closed tab fails
    /// now instead of after a timeout.
    pub(crate) fn drop_connection_bindings(&mut self, now: Instant, conn: crate::ConnId) {
        let mut gone = vec![];
        for (aor, b) in self
            .location
            .take_where(|b| b.flow.conn == Some(conn) && b.flow.transport.is_websocket())
        {
            tracing::info!(user = %aor, contact = %b.contact, "browser's connection closed; registration removed");
            gone.push(aor.clone());
            self.out.push(Action::DeleteBinding {
                aor,
                contact: b.contact,
            });
        }
        for aor in gone {
            self.presence_changed(now, &aor);
        }
    }

    /// Loads persisted registrations at start; expired ones are dropped from the store.
    pub(crate) fn restore_bindings(&mut self, now: Instant, bindings: Vec<StoredBinding>) {
        let unix = self.unix(now);
        for s in bindings {
            // A browser's registration lives as long as its WebSocket, which did not outlive
            // the restart: it registers again when it reconnects.
            let dead_socket = Transport::parse(&s.transport).is_some_and(Transport::is_websocket);
            if s.expires_at <= unix || dead_socket {
                self.out.push(Action::DeleteBinding {
                    aor: s.aor,
                    contact: s.contact,
                });
                continue;
            }
            let (Ok(remote), Ok(local)) = (
                s.source.parse::<SocketAddr>(),
                s.local.parse::<SocketAddr>(),
            ) else {
                tracing::warn!(user = %s.aor, contact = %s.contact, "stored registration has a bad address; dropped");
                continue;
            };
            let expires = now + Duration::from_secs(s.expires_at - unix);
            let binding = Binding {
                contact: s.contact,
                expires,
                q: s.q,
                call_id: s.call_id,
                cseq: s.cseq,
                flow: Flow {
                    transport: Transport::parse(&s.transport).unwrap_or(Transport::Udp),
                    local,
                    remote,
                    conn: None,
                },
                user_agent: s.user_agent,
                next_ping: None,
                missed_pings: 0,
                keepalive_at: None,
                path: s
                    .path
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
                // reg-id 0 (never a valid one) stores an instance without a flow.
                instance: s.outbound.clone().map(|(id, r)| crate::Instance {
                    id,
                    reg_id: (r > 0).then_some(r),
                }),
            };
            let addr = self.location.remember(&binding.contact, &s.aor);
            let contact = binding.contact.clone();
            self.location.bindings_mut(&s.aor).push(binding);
            self.schedule_ping(now, &s.aor, &contact, addr);
            self.timers.push(expires, TimerRef::Expiry(s.aor));
        }
    }
}

fn stored(aor: &str, b: &Binding, expires_at: u64) -> StoredBinding {
    StoredBinding {
        aor: aor.to_string(),
        contact: b.contact.clone(),
        expires_at,
        q: b.q,
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        transport: b.flow.transport.as_str().to_string(),
        source: b.flow.remote.to_string(),
        local: b.flow.local.to_string(),
        user_agent: b.user_agent.clone(),
        path: b.path.join("\n"),
        outbound: b
            .instance
            .as_ref()
            .map(|i| (i.id.clone(), i.reg_id.unwrap_or(0))),
    }
}

/// RFC 1123 date for the Date header (RFC 3261 §20.17), from Unix seconds.
pub(crate) fn httpdate(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86400;
    let secs = unix % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(super::httpdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            super::httpdate(1_795_400_000),
            "Mon, 23 Nov 2026 02:13:20 GMT"
        );
        assert_eq!(
            super::httpdate(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }
}
