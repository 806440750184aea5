//! Calls in progress (INVITE dialogs we record-routed) and their media. When a call needs the
//! relay (a party behind NAT, two address families, or `relay.mode = "always"`), every SDP
//! offer and answer that passes is rewritten so each phone sends its media to a relay port
//! facing it; the relay learns each phone's real address from its packets (latching). Only
//! `c=`, `m=` ports and `a=rtcp` change (and `o=` when the family does): keys and hashes in
//! the SDP stay end to end.
//!
//! A forked offer is rewritten per branch: each phone rung is offered a relay address of the
//! family it is reached over. Branches of one family share a leg (one relay stream per `m=`
//! line), so a call has at most one leg per family; when a branch answers, its leg is kept
//! and the other closed.
//!
//! The relay itself (sockets, a forwarding thread) is the edge's: this file asks for streams,
//! peers, counters and closes through actions (see `relay_ports`), so it stays free of I/O
//! and its timeouts run on the core's clock.

use super::relay_ports::{RelayPorts, RelayStream, RETRY};
use super::route::Hop;
use super::timers::TimerRef;
use super::{Action, Core, Flow};
use sip::grammar::name_addr_list;
use sip::header::HeaderName;
use sip::message::Message;
use sip::sdp::{self, Sdp};
use sip::uri::Host;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How often a call's media counters are looked at for the no-media timeout.
const MEDIA_CHECK: Duration = Duration::from_secs(5);
/// A call we never see end (its BYE took another path) is forgotten after this long.
const CALL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Calls tracked at most: beyond, new calls go unlisted and unrelayed (memory stays bounded
/// whatever callers do).
const MAX_CALLS: usize = 100_000;
/// `m=` lines an offer may have: a call has audio, video and perhaps a few more; more is an
/// attempt on the relay (or on the phones) and gets 488.
pub(crate) const MAX_MEDIA_LINES: usize = 8;
/// Relay streams the ringing calls of one outside source (a caller from another domain,
/// unauthenticated) may hold; answered calls are not counted.
const OUTSIDE_RINGING_STREAMS: usize = 50;

/// Calls in progress by Call-ID, and the relay ports they draw on (when the daemon has a
/// relay); and the TURN server's allocations, which draw on the same relay.
#[derive(Default)]
pub(crate) struct CallTable {
    pub(crate) turn: crate::turn::TurnServer,
    table: std::collections::HashMap<String, Call>,
    ports: RelayPorts,
    /// A retry of a short reserve is armed.
    retry_armed: bool,
    /// Calls from outside callers still ringing: their source and the streams they hold.
    outside_ringing: std::collections::HashMap<String, (IpAddr, usize)>,
    /// Those streams per source, and in all (`IpAddr::UNSPECIFIED`).
    outside_streams: std::collections::HashMap<IpAddr, usize>,
    /// Streams the relay's port range holds in all (a third may ring for outsiders).
    relay_streams: usize,
}

impl CallTable {
    /// An empty table, with the TURN server given.
    pub(crate) fn with_turn(turn: crate::turn::TurnServer) -> CallTable {
        CallTable {
            turn,
            ..CallTable::default()
        }
    }

    /// How many more streams a call may take now: unlimited, unless it is an outside call
    /// still ringing, whose source has a share and all of whom have a third of the relay.
    fn streams_left(&self, call_id: &str) -> usize {
        let Some((source, _)) = self.outside_ringing.get(call_id) else {
            return usize::MAX;
        };
        let of = |ip: &IpAddr| self.outside_streams.get(ip).copied().unwrap_or(0);
        let all = (self.relay_streams / 3).max(1);
        OUTSIDE_RINGING_STREAMS
            .saturating_sub(of(source))
            .min(all.saturating_sub(of(&IpAddr::from([0u8; 4]))))
    }

    /// An outside ringing call took one more stream.
    fn outside_opened(&mut self, call_id: &str) {
        if let Some((source, n)) = self.outside_ringing.get_mut(call_id) {
            *n += 1;
            let source = *source;
            for key in [source, IpAddr::from([0u8; 4])] {
                *self.outside_streams.entry(key).or_insert(0) += 1;
            }
        }
    }

    /// The call is answered or over: its streams no longer count against the budget.
    fn outside_done(&mut self, call_id: &str) {
        if let Some((source, n)) = self.outside_ringing.remove(call_id) {
            for key in [source, IpAddr::from([0u8; 4])] {
                if let Some(c) = self.outside_streams.get_mut(&key) {
                    *c = c.saturating_sub(n);
                    if *c == 0 {
                        self.outside_streams.remove(&key);
                    }
                }
            }
        }
    }
}

impl CallTable {
    /// Relay port pairs ready for new streams; None when the daemon has no relay.
    /// Calls in progress.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// No call in progress (media needs no look at all).
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub(crate) fn relay_ports_ready(&self) -> Option<usize> {
        self.ports.is_on().then(|| self.ports.ready())
    }
}

/// When calls get the media relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Calls never go through the relay.
    Never,
    /// When a party is behind NAT or the two cannot reach each other directly.
    #[default]
    Auto,
    /// Every call goes through the relay.
    Always,
}

/// The two parties of a call: the caller (who sent the first INVITE) and the callee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The party that sent the first INVITE.
    Caller = 0,
    /// The party called.
    Callee = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

/// What a stream has carried; index 0 is what came from the caller, 1 from the callee.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamCounters {
    /// Packets from each side that the relay accepted.
    pub packets: [u64; 2],
    /// The bytes of those packets.
    pub bytes: [u64; 2],
    /// Packets not forwarded (from an address other than the one latched, or with nowhere
    /// to go yet).
    pub dropped: u64,
    /// Each side's media source as learned from its packets.
    pub latched: [Option<SocketAddr>; 2],
}

/// One call in progress.
pub(crate) struct Call {
    caller_tag: String,
    /// The To tag of the answer that set the call up: only that dialog's BYE ends it (a
    /// forked call may have more dialogs for a moment).
    callee_tag: Option<String>,
    from: String,
    to: String,
    started: Instant,
    answered: bool,
    held: bool,
    relayed: bool,
    /// Our address facing the caller: what the SDP sent to the caller names.
    caller_local: IpAddr,
    /// The relay toward the callee's phones, at most one per address family (opened as
    /// branches of that family are offered the call); once answered, only the answering
    /// branch's is left.
    legs: Vec<Leg>,
    packets_seen: u64,
    quiet_since: Instant,
}

/// The relay streams between the caller and the callee's phones of one address family.
struct Leg {
    /// Our address facing those phones: what the SDP sent to them names.
    local: IpAddr,
    /// Per `m=` line of the SDP, its relay stream and media kind (None: port 0 / not yet).
    streams: Vec<Option<(RelayStream, String)>>,
}

impl Call {
    fn streams(&self) -> impl Iterator<Item = &(RelayStream, String)> {
        self.legs.iter().flat_map(|l| l.streams.iter().flatten())
    }

    /// The leg toward a callee's phone we reach from `local`: once answered the one left,
    /// before that the one of `local`'s family, opened (without streams yet) if need be.
    fn leg(&mut self, local: IpAddr) -> usize {
        if self.answered && self.legs.len() == 1 {
            return 0;
        }
        match self
            .legs
            .iter()
            .position(|l| l.local.is_ipv4() == local.is_ipv4())
        {
            Some(i) => i,
            None => {
                self.legs.push(Leg {
                    local,
                    streams: vec![],
                });
                self.legs.len() - 1
            }
        }
    }
}

/// A call as `hedgewitch calls` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CallView {
    /// The call's Call-ID.
    pub call_id: String,
    /// The URI of the INVITE's From header (the caller).
    pub from: String,
    /// The URI of the INVITE's To header (who was called).
    pub to: String,
    /// `ringing`, `answered` or `on hold`.
    pub state: &'static str,
    /// Seconds since the call's first INVITE passed.
    pub age_secs: u64,
    /// "relayed" or "direct".
    pub media: &'static str,
    /// The call's relay streams (none when its media goes direct).
    pub streams: Vec<StreamView>,
}

/// One relayed stream of a call, as `hedgewitch calls` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamView {
    /// The media kind of its `m=` line (`audio`, `video`...).
    pub kind: String,
    /// The relay port facing the caller: where the caller sends its media.
    pub caller_port: u16,
    /// The relay port facing the callee: where the callee sends its media.
    pub callee_port: u16,
    /// The caller's media source as the relay learned it from its packets.
    pub caller_source: Option<SocketAddr>,
    /// The callee's media source as the relay learned it from its packets.
    pub callee_source: Option<SocketAddr>,
    /// Packets the relay accepted from the caller.
    pub packets_from_caller: u64,
    /// Packets the relay accepted from the callee.
    pub packets_from_callee: u64,
    /// Bytes of the packets accepted from the caller.
    pub bytes_from_caller: u64,
    /// Bytes of the packets accepted from the callee.
    pub bytes_from_callee: u64,
    /// Packets the relay did not forward (see `StreamCounters::dropped`).
    pub dropped: u64,
}

/// The media relay could not give a stream its ports (or an outside caller's ringing calls
/// hold their share).
#[derive(Debug)]
pub(crate) struct RelayFull;

/// An IP address in a URI's host, if it is one.
fn host_ip(host: &Host<'_>) -> Option<IpAddr> {
    match host {
        Host::Ip(ip) => Some(*ip),
        Host::Name(_) => None,
    }
}

/// Whether the sender of `msg`, whose packets come from `source`, is behind NAT: its Via or
/// Contact names an address other than the source, or its SDP a private one that is not it.
fn sender_behind_nat(msg: &Message, source: SocketAddr) -> bool {
    let src = source.ip();
    if msg
        .top_via()
        .and_then(|v| host_ip(&v.host))
        .is_some_and(|ip| ip != src)
    {
        return true;
    }
    let contact_elsewhere = msg.values(HeaderName::Contact).any(|v| {
        name_addr_list(v)
            .filter_map(Result::ok)
            .any(|c| host_ip(&c.uri.host).is_some_and(|ip| ip != src))
    });
    contact_elsewhere
        || Sdp::parse(msg.body()).is_some_and(|s| {
            s.media
                .iter()
                .filter_map(|m| m.addr)
                .any(|a| a != src && sdp::is_private(a) && !a.is_unspecified())
        })
}

/// Whether a hop reaches a phone through NAT: its contact address is not where we send.
fn hop_behind_nat(hop: &Hop) -> bool {
    // Through an edge proxy (Path), NAT is the edge proxy's business.
    hop.route.is_empty()
        && sip::uri::Uri::parse(&hop.uri)
            .ok()
            .and_then(|u| host_ip(&u.host))
            .is_some_and(|ip| ip != hop.flow.remote.ip())
}

/// Whether `msg` carries an SDP that does ICE (RFC 8839): a media line with candidates or
/// ICE credentials. Its addresses are negotiated end to end and must not be rewritten.
fn offers_ice(msg: &Message) -> bool {
    is_sdp(msg)
        && msg
            .body()
            .split(|&b| b == b'\n')
            .any(|line| line.starts_with(b"a=ice-ufrag:") || line.starts_with(b"a=candidate:"))
}

fn is_sdp(msg: &Message) -> bool {
    !msg.body().is_empty()
        && msg.value(HeaderName::ContentType).is_none_or(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
        })
}

impl Core {
    /// Our address as a peer on `flow` sees it (the listener's advertised host).
    fn local_ip(&self, flow: Flow) -> IpAddr {
        self.listener_for(flow.transport, &flow.remote)
            .map_or(flow.local.ip(), |l| l.host)
    }

    /// True when `flow` comes from one of our own sockets (a spiral): media was handled on
    /// the first pass.
    pub(crate) fn is_spiral(&self, flow: Flow) -> bool {
        self.cfg.listeners.iter().any(|l| l.addr == flow.remote)
    }

    /// A new call: the first INVITE of a dialog, about to be forwarded to `hops`. Decides
    /// whether its media goes through the relay.
    pub(crate) fn call_begin(&mut self, now: Instant, msg: &Message, inbound: Flow, hops: &[Hop]) {
        let call_id = msg.call_id();
        if hops.is_empty() {
            return;
        }
        // An offer with ICE (browsers, ICE phones) finds its own way, through TURN where
        // needed; the relay's rewriting would only break its candidates.
        let relayed = self.calls.ports.is_on()
            && !offers_ice(msg)
            && match self.cfg.relay.mode {
                RelayMode::Never => false,
                RelayMode::Always => true,
                RelayMode::Auto => {
                    sender_behind_nat(msg, inbound.remote)
                        || hops.iter().any(hop_behind_nat)
                        || hops
                            .iter()
                            .any(|h| h.flow.remote.is_ipv4() != inbound.remote.is_ipv4())
                }
            };
        if let Some(call) = self.calls.table.get_mut(call_id) {
            // A later stage of a hunt rings a phone behind NAT: from now on the offer goes
            // through the relay (phones rung earlier keep the direct one).
            if !call.answered && relayed {
                call.relayed = true;
            }
            return;
        }
        if self.calls.table.len() >= MAX_CALLS {
            tracing::warn!(
                call_id,
                "call table full ({MAX_CALLS}); call not tracked or relayed"
            );
            return;
        }
        let tag = msg.from().and_then(|f| f.tag()).unwrap_or("").to_string();
        let from = msg
            .from()
            .map(|f| f.uri.raw.to_string())
            .unwrap_or_default();
        // A caller from another domain (never authenticated here): its ringing calls have a
        // share of the relay of their own.
        if msg.from().is_some_and(|f| !self.is_local_domain(&f.uri)) {
            self.calls.outside_ringing.insert(
                call_id.to_string(),
                (crate::flow::source_key(inbound.remote.ip()), 0),
            );
        }
        let to = msg.to().map(|t| t.uri.raw.to_string()).unwrap_or_default();
        self.calls.table.insert(
            call_id.to_string(),
            Call {
                caller_tag: tag,
                callee_tag: None,
                from,
                to,
                started: now,
                answered: false,
                held: false,
                relayed,
                caller_local: self.local_ip(inbound),
                legs: vec![],
                packets_seen: 0,
                quiet_since: now,
            },
        );
        self.timers
            .push(now + MEDIA_CHECK, TimerRef::Media(call_id.to_string()));
    }

    /// The bodies a request from `inbound` should carry to each of `hops` (forked copies):
    /// its SDP rewritten for the relay leg of each hop's family when its call is relayed.
    /// Empty when every copy carries the body as it is; hops of one family get the same body.
    pub(crate) fn media_bodies(
        &mut self,
        msg: &Message,
        inbound: Flow,
        hops: &[Hop],
    ) -> Result<Vec<Option<Vec<u8>>>, RelayFull> {
        let v4: Vec<bool> = hops
            .iter()
            .map(|h| self.local_ip(h.flow).is_ipv4())
            .collect();
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(hops.len());
        for (i, hop) in hops.iter().enumerate() {
            // The first hop of a family has the body made; the others of that family copy it.
            let same = v4[..i].iter().position(|f| *f == v4[i]);
            let body = match same.and_then(|j| out.get(j)) {
                Some(b) => b.clone(),
                None => self.media_body(msg, false, inbound, hop.flow)?,
            };
            out.push(body);
        }
        if out.iter().all(Option::is_none) {
            out.clear();
        }
        Ok(out)
    }

    /// The body `msg`, from `from` on its way to `toward`, should carry onward: its SDP
    /// rewritten for the relay when its call is relayed (None: forward the body as it is).
    /// `is_response` tells which side sent it.
    pub(crate) fn media_body(
        &mut self,
        msg: &Message,
        is_response: bool,
        from: Flow,
        toward: Flow,
    ) -> Result<Option<Vec<u8>>, RelayFull> {
        let Some(call) = self.calls.table.get(msg.call_id()) else {
            return Ok(None);
        };
        if !call.relayed || !is_sdp(msg) || !self.calls.ports.is_on() {
            return Ok(None);
        }
        let Some(desc) = Sdp::parse(msg.body()) else {
            return Ok(None);
        };
        let from_tag = msg.from().and_then(|f| f.tag()).unwrap_or("");
        let to_tag = msg.to().and_then(|t| t.tag()).unwrap_or("");
        if call
            .callee_tag
            .as_deref()
            .is_some_and(|t| t != from_tag && t != to_tag)
        {
            // Another phone answered too (a forked call's second 2xx): its dialog is about
            // to be hung up, and the relay is the answering phone's. Its SDP goes as it is.
            return Ok(None);
        }
        let sender = match (from_tag == call.caller_tag, is_response) {
            (true, false) | (false, true) => Side::Caller,
            _ => Side::Callee,
        };
        let toward_side = sender.other();
        // The callee's phone is where a caller's message goes, or where a callee's comes from.
        let phone = match sender {
            Side::Caller => toward,
            Side::Callee => from,
        };
        let callee_local = self.local_ip(phone);
        // An outside caller's own media address must be out there: the relay is not a way
        // to send packets to our networks or to ourselves on its behalf.
        let outside = self.calls.outside_ringing.contains_key(msg.call_id())
            || msg.from().is_some_and(|f| !self.is_local_domain(&f.uri));
        let forbidden = |a: IpAddr| {
            sdp::is_private(a)
                || a.is_loopback()
                || a.is_unspecified()
                || self
                    .cfg
                    .listeners
                    .iter()
                    .any(|l| l.host == a || l.addr.ip() == a)
        };
        let steer_caller =
            !(outside && sender == Side::Caller) || self.cfg.relay.trust_outside_addresses;
        let call_id = msg.call_id().to_string();
        let mut budget = self.calls.streams_left(&call_id);
        let (ports, out) = (&mut self.calls.ports, &mut self.out);
        let Some(call) = self.calls.table.get_mut(msg.call_id()) else {
            return Ok(None);
        };
        let mut opened = 0;
        let li = call.leg(callee_local);
        let caller_local = call.caller_local;
        let leg = &mut call.legs[li];
        let local = [caller_local, leg.local];
        let mut offered = Vec::with_capacity(desc.media.len());
        for (i, m) in desc.media.iter().enumerate() {
            if leg.streams.len() <= i {
                leg.streams.push(None);
            }
            if m.port == 0 {
                offered.push(0);
                continue;
            }
            let stream = match &leg.streams[i] {
                Some((s, _)) => *s,
                None => {
                    if budget == 0 {
                        tracing::info!(
                            call_id,
                            "an outside caller's ringing calls hold their share of the relay"
                        );
                        return Err(RelayFull);
                    }
                    let s = ports.open(local, out).ok_or(RelayFull)?;
                    leg.streams[i] = Some((s, m.kind.to_string()));
                    budget -= 1;
                    opened += 1;
                    s
                }
            };
            let allowed = |a: &IpAddr| steer_caller || !forbidden(*a);
            if let Some(addr) = m.addr.filter(|a| !a.is_unspecified()).filter(allowed) {
                let rtp = SocketAddr::new(addr, m.port);
                let rtcp = if m.rtcp_mux {
                    rtp
                } else {
                    SocketAddr::new(addr, m.rtcp_port.unwrap_or(m.port.saturating_add(1)))
                };
                out.push(Action::SetRelayPeer {
                    stream: stream.id,
                    side: sender,
                    rtp,
                    rtcp,
                    signalling: from.remote.ip(),
                });
            }
            offered.push(stream.ports[toward_side as usize]);
        }
        call.held = desc.on_hold();
        for _ in 0..opened {
            self.calls.outside_opened(&call_id);
        }
        Ok(Some(sdp::rewrite(
            msg.body(),
            local[toward_side as usize],
            &offered,
        )))
    }

    /// A 2xx to the call's first INVITE, from the phone on `from`; the first one names the
    /// call's dialog, and its phone's relay leg is kept while the other family's is closed.
    pub(crate) fn call_answered(&mut self, resp: &Message, from: Flow) {
        let local = self.local_ip(from);
        let Some(c) = self.calls.table.get_mut(resp.call_id()) else {
            return;
        };
        if c.callee_tag.is_some() {
            return;
        }
        c.answered = true;
        c.callee_tag = resp.to().and_then(|t| t.tag()).map(str::to_string);
        let (kept, closed): (Vec<Leg>, Vec<Leg>) = std::mem::take(&mut c.legs)
            .into_iter()
            .partition(|l| l.local.is_ipv4() == local.is_ipv4());
        c.legs = kept;
        let streams = closed
            .iter()
            .flat_map(|l| l.streams.iter().flatten().map(|(s, _)| s.id))
            .collect();
        self.calls.ports.close(streams, None, &mut self.out);
        // Answered, it is a call like any other: its streams leave the outside share.
        self.calls.outside_done(resp.call_id());
    }

    /// Whether `tag` is the From tag of the INVITE that began call `call_id`.
    pub(crate) fn is_caller(&self, call_id: &str, tag: &str) -> bool {
        self.calls
            .table
            .get(call_id)
            .is_some_and(|c| c.caller_tag == tag)
    }

    /// Whether `msg` (a BYE) belongs to the call it names:
    /// the caller's tag, and once answered the answering dialog's tag, must match.
    pub(crate) fn is_the_call(&self, msg: &Message) -> bool {
        let Some(c) = self.calls.table.get(msg.call_id()) else {
            return false;
        };
        let from = msg.from().and_then(|f| f.tag()).unwrap_or("");
        let to = msg.to().and_then(|t| t.tag()).unwrap_or("");
        let tags = [from, to];
        tags.contains(&c.caller_tag.as_str())
            && c.callee_tag.as_deref().is_none_or(|t| tags.contains(&t))
    }

    /// The call is over (BYE, failure, cancel, no media): its relay ports are freed, and
    /// the edge logs what a relayed call's streams carried.
    pub(crate) fn call_end(&mut self, call_id: &str, why: &'static str) {
        self.calls.outside_done(call_id);
        let Some(call) = self.calls.table.remove(call_id) else {
            return;
        };
        let streams = call.streams().map(|(s, _)| s.id).collect();
        let ended = call.relayed.then(|| (call_id.to_string(), why));
        self.calls.ports.close(streams, ended, &mut self.out);
    }

    /// A call's media check is due (every `MEDIA_CHECK`): a call too old is forgotten, and
    /// a relayed one's packet counters are asked of the edge (`handle_relay_counters`).
    pub(crate) fn media_check(&mut self, now: Instant, call_id: &str) {
        let Some(call) = self.calls.table.get(call_id) else {
            return;
        };
        if now.saturating_duration_since(call.started) >= CALL_MAX_AGE {
            return self.call_end(call_id, "too old");
        }
        let streams: Vec<u64> = call.streams().map(|(s, _)| s.id).collect();
        self.timers
            .push(now + MEDIA_CHECK, TimerRef::Media(call_id.to_string()));
        if streams.is_empty() {
            self.media_seen(now, call_id, 0);
        } else {
            self.out.push(Action::QueryRelay {
                call_id: call_id.to_string(),
                streams,
            });
        }
    }

    /// The answer to `Action::QueryRelay`: the packets the call's streams have carried, both
    /// ways, since they opened.
    pub fn handle_relay_counters(&mut self, now: Instant, call_id: &str, packets: u64) {
        self.media_seen(now, call_id, packets);
    }

    /// The no-media timeout: an answered, relayed call whose streams carried nothing for
    /// `relay.timeout` (`relay.hold_timeout` while on hold) is ended.
    fn media_seen(&mut self, now: Instant, call_id: &str, total: u64) {
        let limit = if self.calls.table.get(call_id).is_some_and(|c| c.held) {
            self.cfg.relay.hold_timeout
        } else {
            self.cfg.relay.timeout
        };
        let Some(call) = self.calls.table.get_mut(call_id) else {
            return;
        };
        if total != call.packets_seen || !call.answered {
            call.packets_seen = total;
            call.quiet_since = now;
        } else if call.relayed && now.saturating_duration_since(call.quiet_since) >= limit {
            tracing::warn!(
                call_id,
                secs = limit.as_secs(),
                "no media on a relayed call; the relay is released"
            );
            self.counters.relay.relay_timeouts += 1;
            self.call_end(call_id, "no media");
        }
    }

    /// The daemon has a media relay: from now on calls may use it, and the core keeps a
    /// reserve of its ports bound (see `relay_ports`).
    /// `streams` is how many streams its port range can hold in all (four ports each): a
    /// third of them may ring for callers from other domains.
    pub fn enable_relay(&mut self, streams: usize) {
        let has = |v6: bool| self.cfg.listeners.iter().any(|l| l.host.is_ipv6() == v6);
        let families = [has(false), has(true)];
        self.calls.ports.enable(families);
        self.calls.relay_streams = streams;
    }

    /// Whether the daemon has a media relay.
    pub fn has_relay(&self) -> bool {
        self.calls.ports.is_on()
    }

    /// The answer to `Action::ReserveRelayPorts`: the RTP ports of the pairs the edge bound
    /// (fewer than asked when the range is used up).
    pub fn handle_relay_reserved(&mut self, now: Instant, ipv6: bool, ports: Vec<u16>) {
        if self.calls.ports.reserved(ipv6, ports) && !self.calls.retry_armed {
            self.calls.retry_armed = true;
            self.timers.push(now + RETRY, TimerRef::RelayRetry);
        }
    }

    /// A short reserve's retry is due.
    pub(crate) fn relay_retry(&mut self) {
        self.calls.retry_armed = false;
        self.calls.ports.retry();
    }

    /// Tops up the relay's port reserve (before the actions are handed out).
    pub(crate) fn relay_refill(&mut self) {
        self.calls.ports.refill(&mut self.out);
    }

    /// Calls in progress, oldest first, for `hedgewitch calls`; `counters` gives what a
    /// relay stream (by id) has carried, as the edge's relay knows it.
    pub fn calls(&self, now: Instant, counters: impl Fn(u64) -> StreamCounters) -> Vec<CallView> {
        let mut out: Vec<(Instant, CallView)> = self
            .calls
            .table
            .iter()
            .map(|(id, c)| {
                let streams = c
                    .streams()
                    .map(|(s, kind)| {
                        let n = counters(s.id);
                        StreamView {
                            kind: kind.clone(),
                            caller_port: s.ports[0],
                            callee_port: s.ports[1],
                            caller_source: n.latched[0],
                            callee_source: n.latched[1],
                            packets_from_caller: n.packets[0],
                            packets_from_callee: n.packets[1],
                            bytes_from_caller: n.bytes[0],
                            bytes_from_callee: n.bytes[1],
                            dropped: n.dropped,
                        }
                    })
                    .collect();
                let state = match (c.answered, c.held) {
                    (false, _) => "ringing",
                    (true, false) => "answered",
                    (true, true) => "on hold",
                };
                let view = CallView {
                    call_id: id.clone(),
                    from: c.from.clone(),
                    to: c.to.clone(),
                    state,
                    age_secs: now.saturating_duration_since(c.started).as_secs(),
                    media: if c.relayed { "relayed" } else { "direct" },
                    streams,
                };
                (c.started, view)
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, v)| v).collect()
    }
}
