//! TURN requests (RFC 8656 §7–§12): each is authenticated with the long-term credential
//! mechanism (RFC 8489 §9.2), then Allocate, Refresh, CreatePermission or ChannelBind
//! changes the allocation of the client's 5-tuple, and the edge is told what its forwarding
//! engine may now do. Binding requests get the plain STUN answer.

use super::credentials::{self, Refused};
use super::{five_tuple, Allocation, CHANNEL_LIFETIME, DEFAULT_LIFETIME, MAX_LIFETIME};
use super::{PERMISSION_LIFETIME, SWEEP};
use crate::timers::TimerRef;
use crate::{Action, Core, Flow};
use sip::turn::{attr, Class, Message, Writer};
use sip::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SOFTWARE: &str = concat!("hedgewitch/", env!("CARGO_PKG_VERSION"));

/// The protocol numbers of the relayed transports: UDP, and TCP (RFC 6062).
const UDP: u8 = 17;
const TCP: u8 = 6;

/// The request being answered: where it came from, and what an answer must repeat.
pub(super) struct Asked<'a> {
    pub(super) flow: Flow,
    pub(super) method: u16,
    pub(super) txid: [u8; 12],
    /// The key the answer is signed with, once the request proved it has it.
    pub(super) key: Option<[u8; 16]>,
    pub(super) account: &'a str,
}

impl Core {
    /// A STUN or TURN control message (anything but ChannelData and Send indications, which
    /// the edge's forwarding engine moves itself) from a client of a TURN listener.
    pub fn handle_turn(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        if self.auth.guard().is_banned(now, flow.remote.ip()) {
            self.counters.traffic.dropped_banned += 1;
            return;
        }
        let Some(msg) = sip::turn::parse(data) else {
            return;
        };
        if msg.class != Some(Class::Request) {
            // Indications and responses get no answer (RFC 8489 §6.3).
            return;
        }
        if msg.method == sip::turn::BINDING {
            return self.handle_stun(flow, data);
        }
        let mut asked = Asked {
            flow,
            method: msg.method,
            txid: msg.txid,
            key: None,
            account: "",
        };
        if !msg.unknown.is_empty() {
            let mut w = Writer::new(msg.method, Class::Error, &msg.txid);
            w.error(420, "Unknown Attribute").unknown(&msg.unknown);
            return self.turn_send(flow, w.finish(None));
        }
        if !self.calls.turn.enabled() {
            return self.turn_error(&asked, 403, "TURN Is Off");
        }
        let Some((key, account)) = self.turn_login(now, &msg, data, flow) else {
            return;
        };
        asked.key = Some(key);
        asked.account = &account;
        match msg.method {
            sip::turn::ALLOCATE => self.turn_allocate(now, &asked, &msg),
            sip::turn::REFRESH => self.turn_refresh(now, &asked, &msg),
            sip::turn::CREATE_PERMISSION => self.turn_permit(now, &asked, &msg),
            sip::turn::CHANNEL_BIND => self.turn_bind(now, &asked, &msg),
            sip::turn::CONNECT => self.turn_connect(now, &asked, &msg),
            sip::turn::CONNECTION_BIND => self.turn_connection_bind(&asked, &msg),
            _ => self.turn_error(&asked, 400, "Bad Request"),
        }
    }

    /// The edge bound allocation `id`'s relayed address (None: it could not): the Allocate
    /// waiting for it is answered.
    pub fn handle_turn_allocated(&mut self, now: Instant, id: u64, relayed: Option<SocketAddr>) {
        let Some(a) = self.calls.turn.allocations.get_mut(&id) else {
            return;
        };
        let Some((txid, lifetime)) = a.pending.take() else {
            return;
        };
        let (client, key) = (a.client, a.key);
        let asked = Asked {
            flow: client,
            method: sip::turn::ALLOCATE,
            txid,
            key: Some(key),
            account: "",
        };
        let Some(relayed) = relayed else {
            self.turn_release(id);
            return self.turn_error(&asked, 508, "Insufficient Capacity");
        };
        a.relayed = Some(relayed);
        tracing::info!(user = %a.user, client = %client.remote, transport = client.transport.as_str(), %relayed, "TURN allocation");
        let _ = now;
        let mut w = Writer::new(sip::turn::ALLOCATE, Class::Success, &txid);
        w.xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .lifetime(lifetime.as_secs() as u32)
            .xor_address(attr::XOR_MAPPED_ADDRESS, client.remote)
            .software(SOFTWARE);
        self.turn_send(client, w.finish(Some(&key)));
    }

    /// Checks the request's credentials; answers the challenge or the refusal itself.
    fn turn_login(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        data: &[u8],
        flow: Flow,
    ) -> Option<([u8; 16], String)> {
        let unix = self.unix(now);
        let realm = self.cfg.domain.clone();
        let ip = flow.remote.ip();
        let challenge = |core: &mut Core, code: u16, reason: &str| {
            let nonce = credentials::nonce(&core.origin.keys, ip, unix);
            let mut w = Writer::new(msg.method, Class::Error, &msg.txid);
            w.error(code, reason)
                .challenge(&realm, &nonce)
                .software(SOFTWARE);
            core.turn_send(flow, w.finish(None));
        };
        let (Some(user), Some(nonce), true) = (msg.username, msg.nonce, msg.has_integrity()) else {
            challenge(self, 401, "Unauthorized");
            return None;
        };
        if msg.realm != Some(realm.as_str()) {
            challenge(self, 401, "Unauthorized");
            return None;
        }
        if !credentials::nonce_fresh(&self.origin.keys, ip, nonce, unix) {
            challenge(self, 438, "Stale Nonce");
            return None;
        }
        let found = credentials::key_for(
            self.calls.turn.settings(),
            self.auth.users(),
            user,
            &realm,
            unix,
        );
        let why = match &found {
            Ok((key, _)) if msg.integrity_ok(data, key) => None,
            Ok(_) => Some("wrong password"),
            Err(Refused::Expired) => Some("expired credentials"),
            Err(Refused::Unknown) => Some("unknown user"),
        };
        if let Some(why) = why {
            self.turn_login_failed(
                now,
                flow,
                user,
                found.as_ref().ok().map(|(_, a)| a.as_str()),
                why,
            );
            challenge(self, 401, "Unauthorized");
            return None;
        }
        found.ok()
    }

    /// One failed TURN login: counted like a SIP one (bans), one log line.
    fn turn_login_failed(
        &mut self,
        now: Instant,
        flow: Flow,
        user: &str,
        account: Option<&str>,
        why: &str,
    ) {
        let ban = self.auth.guard_mut().failed(now, flow.remote.ip(), account);
        self.counters.registrar.auth_failures += 1;
        tracing::warn!(
            user,
            source = %flow.remote,
            transport = flow.transport.as_str(),
            "TURN authentication failed: {why}"
        );
        if let Some(ban) = ban {
            self.counters.registrar.bans += 1;
            tracing::warn!(
                user,
                source = %flow.remote,
                banned = %ban.source,
                secs = ban.length.as_secs(),
                offence = ban.offence,
                "source banned for failed logins"
            );
        }
    }

    fn turn_allocate(&mut self, now: Instant, asked: &Asked<'_>, msg: &Message<'_>) {
        let turn = &self.calls.turn;
        if let Some(id) = turn.by_client.get(&five_tuple(&asked.flow)).copied() {
            let again = turn
                .allocations
                .get(&id)
                .filter(|a| a.allocated_by.0 == asked.txid)
                .map(|a| (a.relayed, a.allocated_by.1));
            return match again {
                // Its answer was lost: the same one again (nothing while still pending).
                Some((Some(relayed), lifetime)) => {
                    let mut w = Writer::new(sip::turn::ALLOCATE, Class::Success, &asked.txid);
                    w.xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
                        .lifetime(lifetime.as_secs() as u32)
                        .xor_address(attr::XOR_MAPPED_ADDRESS, asked.flow.remote)
                        .software(SOFTWARE);
                    self.turn_send(asked.flow, w.finish(asked.key.as_ref().map(|k| &k[..])))
                }
                Some((None, _)) => {}
                None => self.turn_error(asked, 437, "Allocation Mismatch"),
            };
        }
        let tcp = match msg.requested_transport {
            None => return self.turn_error(asked, 400, "Bad Request"),
            Some(UDP) => false,
            // RFC 6062 §5.1: TCP relays for clients that came over a stream.
            Some(TCP) if asked.flow.transport.is_reliable() => true,
            Some(TCP) => return self.turn_error(asked, 400, "Bad Request: TCP Relay Needs TCP"),
            Some(_) => return self.turn_error(asked, 442, "Unsupported Transport Protocol"),
        };
        if msg.reservation_token {
            return self.turn_error(asked, 508, "Insufficient Capacity");
        }
        if msg.dont_fragment {
            // RFC 8656 §7.2: a server that cannot set DF treats it as unknown.
            let mut w = Writer::new(asked.method, Class::Error, &asked.txid);
            w.error(420, "Unknown Attribute")
                .unknown(&[attr::DONT_FRAGMENT]);
            return self.turn_send(asked.flow, w.finish(asked.key.as_ref().map(|k| &k[..])));
        }
        let ipv6 = match msg.requested_family {
            None | Some(1) => false,
            Some(2) => true,
            Some(_) => return self.turn_error(asked, 440, "Address Family not Supported"),
        };
        if !self.calls.turn.settings().families[usize::from(ipv6)] {
            return self.turn_error(asked, 440, "Address Family not Supported");
        }
        let s = turn.settings();
        if turn.per_user.get(asked.account).copied().unwrap_or(0) >= s.allocations_per_user {
            tracing::info!(user = asked.account, "TURN allocation quota reached");
            return self.turn_error(asked, 486, "Allocation Quota Reached");
        }
        if turn.allocations.len() >= s.max_allocations {
            return self.turn_error(asked, 508, "Insufficient Capacity");
        }
        let lifetime = lifetime(msg.lifetime);
        self.origin.next_id += 1;
        let id = self.origin.next_id;
        let turn = &mut self.calls.turn;
        turn.allocations.insert(
            id,
            Allocation {
                user: asked.account.to_string(),
                key: asked.key.unwrap_or_default(),
                client: asked.flow,
                relayed: None,
                pending: Some((asked.txid, lifetime)),
                expires: now + lifetime,
                created: now,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                tcp,
                allocated_by: (asked.txid, lifetime),
            },
        );
        turn.by_client.insert(five_tuple(&asked.flow), id);
        *turn.per_user.entry(asked.account.to_string()).or_default() += 1;
        let bandwidth = self.calls.turn.settings().bandwidth_per_user * 1000 / 8;
        self.out.push(Action::TurnAllocate {
            id,
            client: asked.flow,
            ipv6,
            user: asked.account.to_string(),
            bandwidth,
            tcp,
        });
        self.arm_turn_sweep(now);
    }

    /// The allocation of the request's 5-tuple, made by the same user (else answered).
    pub(super) fn turn_allocation(&mut self, asked: &Asked<'_>) -> Option<u64> {
        let turn = &self.calls.turn;
        let Some(id) = turn.by_client.get(&five_tuple(&asked.flow)).copied() else {
            self.turn_error(asked, 437, "Allocation Mismatch");
            return None;
        };
        let a = turn.allocations.get(&id)?;
        if a.user != asked.account {
            self.turn_error(asked, 441, "Wrong Credentials");
            return None;
        }
        // Still waiting for its address: the client retries.
        a.relayed?;
        Some(id)
    }

    fn turn_refresh(&mut self, now: Instant, asked: &Asked<'_>, msg: &Message<'_>) {
        let Some(id) = self.turn_allocation(asked) else {
            return;
        };
        let secs = if msg.lifetime == Some(0) {
            self.turn_release(id);
            0
        } else {
            let lifetime = lifetime(msg.lifetime);
            if let Some(a) = self.calls.turn.allocations.get_mut(&id) {
                a.expires = now + lifetime;
            }
            lifetime.as_secs() as u32
        };
        let mut w = Writer::new(asked.method, Class::Success, &asked.txid);
        w.lifetime(secs).software(SOFTWARE);
        self.turn_send(asked.flow, w.finish(asked.key.as_ref().map(|k| &k[..])));
    }

    /// Refuses peers of the other family (443) and peers the policy forbids (403).
    pub(super) fn peers_refused(
        &mut self,
        asked: &Asked<'_>,
        id: u64,
        peers: &[SocketAddr],
    ) -> bool {
        let Some(relayed) = self.calls.turn.allocations.get(&id).and_then(|a| a.relayed) else {
            return true;
        };
        for p in peers {
            if p.is_ipv4() != relayed.is_ipv4() {
                self.turn_error(asked, 443, "Peer Address Family Mismatch");
                return true;
            }
            if !credentials::peer_allowed(self.calls.turn.settings(), p.ip()) {
                tracing::info!(user = asked.account, peer = %p.ip(), client = %asked.flow.remote, "TURN peer refused by policy");
                self.turn_error(asked, 403, "Forbidden");
                return true;
            }
        }
        false
    }

    fn turn_permit(&mut self, now: Instant, asked: &Asked<'_>, msg: &Message<'_>) {
        let Some(id) = self.turn_allocation(asked) else {
            return;
        };
        if msg.peers.is_empty() {
            return self.turn_error(asked, 400, "Bad Request");
        }
        if self.peers_refused(asked, id, &msg.peers) {
            return;
        }
        let settings = self.calls.turn.settings();
        let max = settings.permissions_per_allocation;
        let any: Vec<bool> = msg
            .peers
            .iter()
            .map(|p| credentials::explicitly_allowed(settings, p.ip()))
            .collect();
        let Some(a) = self.calls.turn.allocations.get_mut(&id) else {
            return;
        };
        let new = msg
            .peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .count();
        if a.permissions.len() + new > max {
            return self.turn_error(asked, 508, "Insufficient Capacity");
        }
        for (p, any_port) in msg.peers.iter().zip(any) {
            if a.permissions
                .insert(p.ip(), now + PERMISSION_LIFETIME)
                .is_none()
            {
                self.out.push(Action::TurnPermit {
                    id,
                    peer: p.ip(),
                    allow: true,
                    any_port,
                });
            }
        }
        self.turn_ok(asked);
    }

    fn turn_bind(&mut self, now: Instant, asked: &Asked<'_>, msg: &Message<'_>) {
        let Some(id) = self.turn_allocation(asked) else {
            return;
        };
        let (Some(channel), Some(peer)) = (msg.channel, msg.peers.first().copied()) else {
            return self.turn_error(asked, 400, "Bad Request: Channel and Peer Needed");
        };
        // RFC 8656 narrowed the range to 0x4FFF; RFC 5766 clients (coturn's among them) still
        // use up to 0x7FFF, and nothing else is sent with those first bytes.
        if !(0x4000..=0x7FFF).contains(&channel) {
            return self.turn_error(asked, 400, "Bad Request: Channel Number Out Of Range");
        }
        if self.peers_refused(asked, id, &[peer]) {
            return;
        }
        let max = self.calls.turn.settings().permissions_per_allocation;
        let any_port = credentials::explicitly_allowed(self.calls.turn.settings(), peer.ip());
        let Some(a) = self.calls.turn.allocations.get_mut(&id) else {
            return;
        };
        // A channel stays with its peer, and a peer with its channel (§12.2).
        let clash = a
            .channels
            .iter()
            .any(|(c, (p, _))| (*c == channel) != (*p == peer));
        if clash || (!a.channels.contains_key(&channel) && a.channels.len() >= max) {
            return self.turn_error(asked, 400, "Bad Request: Channel Or Peer Bound Elsewhere");
        }
        if a.channels
            .insert(channel, (peer, now + CHANNEL_LIFETIME))
            .is_none()
        {
            self.out.push(Action::TurnChannel {
                id,
                channel,
                peer: Some(peer),
            });
        }
        if a.permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME)
            .is_none()
        {
            self.out.push(Action::TurnPermit {
                id,
                peer: peer.ip(),
                allow: true,
                any_port,
            });
        }
        self.turn_ok(asked);
    }

    /// Ends allocation `id`.
    pub(crate) fn turn_release(&mut self, id: u64) {
        let turn = &mut self.calls.turn;
        let Some(a) = turn.allocations.remove(&id) else {
            return;
        };
        turn.by_client.remove(&five_tuple(&a.client));
        let gone: Vec<u32> = turn
            .connections
            .iter()
            .filter(|(_, c)| c.alloc == id)
            .map(|(k, _)| *k)
            .collect();
        for c in gone {
            turn.connections.remove(&c);
            self.out.push(Action::TurnDropConnection { connection: c });
        }
        if let Some(n) = turn.per_user.get_mut(&a.user) {
            *n -= 1;
            if *n == 0 {
                turn.per_user.remove(&a.user);
            }
        }
        self.out.push(Action::TurnRelease { id });
    }

    /// Allocations of a stream client end with its connection (RFC 8656 §3.1).
    pub(crate) fn turn_connection_closed(&mut self, conn: crate::ConnId) {
        let gone: Vec<u64> = self
            .calls
            .turn
            .allocations
            .iter()
            .filter(|(_, a)| a.client.conn == Some(conn))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.turn_release(id);
        }
    }

    fn arm_turn_sweep(&mut self, now: Instant) {
        if !self.calls.turn.sweeping {
            self.calls.turn.sweeping = true;
            self.timers.push(now + SWEEP, TimerRef::TurnSweep);
        }
    }

    /// Ends what has expired: allocations, permissions, channel bindings.
    pub(crate) fn turn_sweep(&mut self, now: Instant) {
        self.calls.turn.sweeping = false;
        let mut ended = vec![];
        for (id, a) in self.calls.turn.allocations.iter_mut() {
            if a.expires <= now {
                ended.push(*id);
                continue;
            }
            a.permissions.retain(|ip, until| {
                let keep = *until > now;
                if !keep {
                    self.out.push(Action::TurnPermit {
                        id: *id,
                        peer: *ip,
                        allow: false,
                        any_port: false,
                    });
                }
                keep
            });
            a.channels.retain(|channel, (_, until)| {
                let keep = *until > now;
                if !keep {
                    self.out.push(Action::TurnChannel {
                        id: *id,
                        channel: *channel,
                        peer: None,
                    });
                }
                keep
            });
        }
        self.expire_tcp_connections(now);
        for id in ended {
            if let Some(a) = self.calls.turn.allocations.get(&id) {
                tracing::info!(user = %a.user, client = %a.client.remote, "TURN allocation expired");
            }
            self.turn_release(id);
        }
        if self.calls.turn.len() > 0 {
            self.arm_turn_sweep(now);
        }
    }

    pub(super) fn turn_ok(&mut self, asked: &Asked<'_>) {
        let mut w = Writer::new(asked.method, Class::Success, &asked.txid);
        w.software(SOFTWARE);
        self.turn_send(asked.flow, w.finish(asked.key.as_ref().map(|k| &k[..])));
    }

    pub(super) fn turn_error(&mut self, asked: &Asked<'_>, code: u16, reason: &str) {
        tracing::debug!(code, reason, method = asked.method, client = %asked.flow.remote, "TURN error answer");
        let mut w = Writer::new(asked.method, Class::Error, &asked.txid);
        w.error(code, reason).software(SOFTWARE);
        self.turn_send(asked.flow, w.finish(asked.key.as_ref().map(|k| &k[..])));
    }

    pub(super) fn turn_send(&mut self, flow: Flow, data: Vec<u8>) {
        self.out.push(Action::Send {
            flow,
            data: Bytes::from(data),
            key: None,
        });
    }
}

/// The lifetime granted for a requested one: the default unless longer, at most the maximum.
fn lifetime(asked: Option<u32>) -> Duration {
    asked
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(DEFAULT_LIFETIME)
        .clamp(DEFAULT_LIFETIME, MAX_LIFETIME)
}
