//! Keep-alive pings for phones behind NAT over UDP (RFC 5626 §3.5 leaves UDP flows to the
//! server): a NAT forgets an idle mapping after tens of seconds, and then calls no longer
//! reach the phone. A phone that does not re-register within `nat_ping_interval` gets an
//! OPTIONS through its mapping every interval (the answer refreshes the mapping); after
//! `nat_ping_failures` unanswered in a row its contact is removed, since it can no longer be
//! reached.

use super::timers::TimerRef;
use super::{Action, ClientTxId, Core};
use crate::Transport;
use std::net::SocketAddr;
use std::time::Instant;

/// Keep-alive pings in flight: client transaction -> (user, contact).
#[derive(Default)]
pub(crate) struct KeepAlive {
    pings: std::collections::HashMap<crate::ClientTxId, (String, String)>,
}

impl Core {
    /// Plans the next ping of a contact just registered, if it is a UDP phone behind NAT:
    /// its Contact (`contact_addr`, None for a host name) is not where it registered from.
    pub(crate) fn schedule_ping(
        &mut self,
        now: Instant,
        aor: &str,
        contact: &str,
        contact_addr: Option<SocketAddr>,
    ) {
        // Outbound phones (RFC 5626) keep their flows alive themselves (STUN, CRLF).
        let natted = self.location.get(aor).iter().any(|b| {
            b.contact == contact
                && b.outbound().is_none()
                && b.path.is_empty()
                && b.flow.transport == Transport::Udp
                && contact_addr != Some(b.flow.remote)
        });
        self.next_ping(now, aor, contact, natted);
    }

    /// Sets (or clears) a contact's next ping and its timer.
    fn next_ping(&mut self, now: Instant, aor: &str, contact: &str, due: bool) {
        let interval = self.cfg.keepalive.interval.filter(|_| due);
        let Some(b) = self
            .location
            .bindings_mut(aor)
            .iter_mut()
            .find(|b| b.contact == contact)
        else {
            return;
        };
        b.next_ping = interval.map(|i| now + i);
        if let Some(at) = b.next_ping {
            self.timers
                .push(at, TimerRef::NatPing(aor.to_string(), contact.to_string()));
        }
    }

    /// A ping timer fired: send an OPTIONS if it is still due (a re-registration since has
    /// moved it).
    pub(crate) fn nat_ping(&mut self, now: Instant, aor: &str, contact: &str) {
        let Some(b) = self
            .location
            .get(aor)
            .iter()
            .find(|b| b.contact == contact && b.expires > now)
        else {
            return;
        };
        if b.next_ping.is_none_or(|t| t > now) {
            return;
        }
        let interval = self.cfg.keepalive.interval.unwrap_or_default();
        if b.keepalive_at
            .is_some_and(|k| now.saturating_duration_since(k) < interval)
        {
            // The phone keeps its mapping alive itself: no ping this round.
            return self.next_ping(now, aor, contact, true);
        }
        let flow = b.flow;
        let (branch, w) = self.own_request("OPTIONS", contact, contact, flow);
        let data = w.finish(None, b"");
        self.counters.registrar.nat_pings_sent += 1;
        let id = self.send_request(now, flow, &branch, "OPTIONS", data);
        // Its id exists once the transaction does; a new transaction's first actions only
        // send, so nothing about the ping can have been reported before this.
        if self.tx.has_client(id) {
            self.agent
                .pings
                .pings
                .insert(id, (aor.to_string(), contact.to_string()));
        }
        self.next_ping(now, aor, contact, true);
    }

    /// A keep-alive from a phone on the SIP port (STUN Binding request, CRLF): if it comes
    /// from a registered UDP phone, that phone needs no ping for a while.
    pub(crate) fn keepalive_seen(&mut self, now: Instant, flow: super::Flow) {
        if flow.transport != Transport::Udp {
            return;
        }
        if let Some(b) = self.location.by_source_mut(flow.remote) {
            b.keepalive_at = Some(now);
            b.missed_pings = 0;
        }
    }

    /// The answer to a ping (any final response shows the phone is there).
    pub(crate) fn ping_answered(&mut self, key: ClientTxId) -> bool {
        let Some((aor, contact)) = self.agent.pings.pings.remove(&key) else {
            return false;
        };
        if let Some(b) = self
            .location
            .bindings_mut(&aor)
            .iter_mut()
            .find(|b| b.contact == contact)
        {
            b.missed_pings = 0;
        }
        self.location.remove_empty(&aor);
        true
    }

    /// A ping got no answer: after too many in a row the contact is removed.
    pub(crate) fn ping_failed(&mut self, key: ClientTxId) {
        let Some((aor, contact)) = self.agent.pings.pings.remove(&key) else {
            return;
        };
        let limit = self.cfg.keepalive.failures;
        let list = self.location.bindings_mut(&aor);
        if let Some(i) = list.iter().position(|b| b.contact == contact) {
            list[i].missed_pings = list[i].missed_pings.saturating_add(1);
            if list[i].missed_pings >= limit {
                let b = list.remove(i);
                tracing::info!(user = %aor, contact = %b.contact, source = %b.flow.remote,
                    "phone behind NAT stopped answering keep-alive pings; its registration is removed");
                self.location.forget(&b.contact);
                self.out.push(Action::DeleteBinding {
                    aor: aor.clone(),
                    contact: b.contact,
                });
            }
        }
        self.location.remove_empty(&aor);
    }
}
