//! Calls to local targets: ringing a user's phones, ring groups (parallel, sequential,
//! rotating), call forwarding (unconditional, busy, no answer, unavailable, do-not-disturb),
//! group fallbacks and 3xx recursion. A hunt is a list of stages, each a set of branches
//! forked in parallel with an optional ring time; when a stage ends without an answer the
//! next one starts, and when none is left the target's forwarding decides. Forwarded calls
//! carry Diversion (RFC 5806) and History-Info (RFC 7044), and the caller gets 181.

use crate::handles::{CtxId, ServerTxId};
use crate::plan::settings::Strategy;
use crate::plan::{Dialed, FeatureRequest, Target};
use crate::proxy::ProxyCtx;
use crate::route::Hop;
use crate::timers::TimerRef;
use crate::Transport;
use crate::{Action, Core, DnsQuery, Flow};
use sip::grammar::name_addr_list;
use sip::header::HeaderName;
use sip::message::Message;
use sip::uri::{Host, Scheme, Uri};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod numbers;
mod pickup;
mod targets;

/// Why a call moved on to another target: RFC 5806 reason and RFC 4458 cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Divert {
    Unconditional,
    Busy,
    NoAnswer,
    Unavailable,
    DoNotDisturb,
}

impl Divert {
    fn reason(self) -> &'static str {
        match self {
            Divert::Unconditional => "unconditional",
            Divert::Busy => "user-busy",
            Divert::NoAnswer => "no-answer",
            Divert::Unavailable => "unavailable",
            Divert::DoNotDisturb => "do-not-disturb",
        }
    }

    fn cause(self) -> u16 {
        match self {
            Divert::Unconditional => 302,
            Divert::Busy | Divert::DoNotDisturb => 486,
            Divert::NoAnswer => 408,
            Divert::Unavailable => 404,
        }
    }
}

/// Where a call goes next if the current target fails, and why.
#[derive(Clone, Debug)]
pub(crate) struct Retarget {
    pub target: String,
    pub why: Divert,
    /// The user whose setting this is: their permission to call outside applies. None for
    /// a group's fallback (set by the administrator).
    pub owner: Option<String>,
}

pub(crate) struct Stage {
    pub hops: Vec<Hop>,
    pub ring: Option<Duration>,
    /// A URI of another domain whose servers DNS must find first (RFC 3263).
    pub resolve: Option<String>,
    /// An E.164 number ENUM is asked about first (RFC 6116); a hit rings its URI.
    pub enum_of: Option<String>,
}

/// A DNS lookup a hunt waits for.
pub(crate) struct Resolving {
    pub ctx_id: CtxId,
    uri: String,
    /// The hunt's stage generation when it was asked (a later stage ignores the answer).
    pub generation: u32,
    /// An ENUM lookup (`uri` is then the E.164 number), answered by `handle_enum`.
    pub enum_lookup: bool,
}

/// One History-Info entry (RFC 7044).
struct HistoryEntry {
    uri: String,
    index: String,
    /// Why this target was left (goes into the entry's URI as a Reason header).
    left: Option<u16>,
    /// The entry this one was retargeted from (`mp`), and the RFC 4458 cause.
    from: Option<(String, u16)>,
}

pub(crate) struct Hunt {
    pub caller: Option<String>,
    pub stages: VecDeque<Stage>,
    /// Index of the first branch of the current stage.
    pub stage_start: usize,
    /// Bumped at each stage so that an old stage's ring timer is recognised.
    pub generation: u32,
    pub overall: Option<Instant>,
    pub on_busy: Option<Retarget>,
    pub on_no_answer: Option<Retarget>,
    visited: Vec<Target>,
    /// What the call went through, for its History-Info and Diversion headers.
    record: Record,
    pub forwards: u8,
    /// P-Asserted-Identity for the branches, when the caller is authenticated.
    pub asserted: Option<String>,
    /// Where the current target is.
    reach: Reach,
}

/// Where a hunt's current target is: our phones get our P-Asserted-Identity, other domains
/// and providers do not; providers are tried one after the other on failure only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    Local,
    Remote,
    Trunk,
}

/// What a call went through: RFC 7044 History-Info entries and RFC 5806 diversions.
struct Record {
    history: Vec<HistoryEntry>,
    /// Newest first: (the URI the call was diverted from, why).
    diversions: Vec<(String, Divert)>,
}

/// What expanding a target gave.
enum Expanded {
    Stages,
    Retarget(Retarget),
    Reply(u16, String),
}

impl Hunt {
    pub(crate) fn new(
        original_uri: &str,
        caller: Option<String>,
        asserted: Option<String>,
    ) -> Hunt {
        Hunt {
            caller,
            stages: VecDeque::new(),
            stage_start: 0,
            generation: 0,
            overall: None,
            on_busy: None,
            on_no_answer: None,
            visited: vec![],
            record: Record {
                history: vec![HistoryEntry {
                    uri: original_uri.to_string(),
                    index: "1".into(),
                    left: None,
                    from: None,
                }],
                diversions: vec![],
            },
            forwards: 0,
            asserted,
            reach: Reach::Local,
        }
    }

    /// The local user or group being rung now (the last one the call went to).
    pub(crate) fn current_target(&self) -> Option<&Target> {
        self.visited.last()
    }

    /// The headers each branch of the current stage carries.
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![];
        if !self.record.diversions.is_empty() {
            let n = self.record.diversions.len();
            for (i, (uri, why)) in self.record.diversions.iter().enumerate() {
                h.push((
                    "Diversion",
                    format!("<{uri}>;reason={};counter={}", why.reason(), n - i),
                ));
            }
            let entries: Vec<String> = self
                .record
                .history
                .iter()
                .map(|e| {
                    let mut uri = e.uri.clone();
                    if let Some((_, cause)) = &e.from {
                        uri.push_str(&format!(";cause={cause}"));
                    }
                    if let Some(code) = e.left {
                        uri.push_str(&format!("?Reason=SIP%3Bcause%3D{code}"));
                    }
                    let mut s = format!("<{uri}>;index={}", e.index);
                    if let Some((mp, _)) = &e.from {
                        s.push_str(";mp=");
                        s.push_str(mp);
                    }
                    s
                })
                .collect();
            h.push(("History-Info", entries.join(", ")));
        }
        if let Some(pai) = &self.asserted {
            // RFC 3325: the asserted identity is for our trust domain (our own users and
            // phones); another domain gets the caller's From and our Record-Route, and
            // never an identity it could not verify anyway.
            if self.reach == Reach::Local {
                h.push(("P-Asserted-Identity", pai.clone()));
            }
        }
        h
    }

    fn divert(&mut self, from_uri: &str, to_uri: &str, why: Divert) {
        self.record
            .diversions
            .insert(0, (from_uri.to_string(), why));
        let parent = self.record.history.len() - 1;
        self.record.history[parent].left = Some(why.cause());
        let index = format!("{}.1", self.record.history[parent].index);
        let mp = self.record.history[parent].index.clone();
        self.record.history.push(HistoryEntry {
            uri: to_uri.to_string(),
            index,
            left: None,
            from: Some((mp, why.cause())),
        });
    }
}

/// The final status of a stage, for deciding what comes next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 486, 600: the busy forward applies.
    Busy,
    /// Nobody answered (408, 480, our own CANCEL, an unreachable phone): the no-answer
    /// forward applies.
    NoAnswer,
    /// Another 4xx/5xx: the next stage is tried, but no forwarding applies.
    Failed,
    /// 6xx other than 600: the callee refuses everywhere (RFC 3261 §16.7): stop.
    Global,
}

fn outcome(best: Option<u16>) -> Outcome {
    match best {
        None | Some(408 | 480 | 487 | 500 | 503) => Outcome::NoAnswer,
        Some(486 | 600) => Outcome::Busy,
        Some(s) if s >= 600 => Outcome::Global,
        Some(_) => Outcome::Failed,
    }
}

impl Core {
    /// Fills the hunt's stages for `target` (replacing what was left), or says where the
    /// call must go instead.
    fn expand(&mut self, now: Instant, ctx_id: CtxId, target: &Dialed, invite: bool) -> Expanded {
        let mut stages = VecDeque::new();
        let mut on_busy = None;
        let mut on_no_answer = None;
        let mut overall = None;
        let mut reach = Reach::Local;
        match target {
            Dialed::Local(Target::User(u)) => {
                let f = self.plan.forward(u);
                let owner = Some(u.clone());
                let re = |t: &Option<String>, why| {
                    t.as_ref().map(|t| Retarget {
                        target: t.clone(),
                        why,
                        owner: owner.clone(),
                    })
                };
                if let Some(r) = re(&f.always, Divert::Unconditional) {
                    return Expanded::Retarget(r);
                }
                if invite && f.dnd {
                    return match re(&f.busy, Divert::DoNotDisturb) {
                        Some(r) => Expanded::Retarget(r),
                        None => Expanded::Reply(486, "Busy Here (Do Not Disturb)".into()),
                    };
                }
                let hops = self.contact_hops(u, now);
                if hops.is_empty() {
                    return match re(&f.unavailable, Divert::Unavailable) {
                        Some(r) => Expanded::Retarget(r),
                        None => Expanded::Reply(480, "Temporarily Unavailable".into()),
                    };
                }
                let ring = if invite {
                    f.no_answer.is_some().then(|| {
                        Duration::from_secs(u64::from(
                            f.no_answer_after
                                .unwrap_or(self.plan.calls.no_answer_after)
                                .max(1),
                        ))
                    })
                } else {
                    // A silent phone must count as failed well before the sender gives up.
                    self.message_ring_time()
                };
                stages.push_back(Stage {
                    hops,
                    ring,
                    resolve: None,
                    enum_of: None,
                });
                if invite {
                    on_busy = re(&f.busy, Divert::Busy);
                    on_no_answer = re(&f.no_answer, Divert::NoAnswer);
                }
            }
            Dialed::Local(Target::Group(name)) => {
                let Some(g) = self.plan.group(name).cloned() else {
                    return Expanded::Reply(404, "Not Found".into());
                };
                let parallel = !invite || g.strategy == Strategy::Parallel;
                let caller = self
                    .proxy
                    .contexts
                    .get(&ctx_id)
                    .and_then(|c| c.hunt.as_ref())
                    .and_then(|h| h.caller.clone());
                let caller = caller.as_deref();
                if parallel {
                    let hops: Vec<Hop> = g
                        .members
                        .iter()
                        .flat_map(|m| self.member_hops(&m.target, caller, now, 0))
                        .collect();
                    stages.push_back(Stage {
                        hops,
                        ring: if invite { g.timeout } else { None },
                        resolve: None,
                        enum_of: None,
                    });
                } else {
                    let n = g.members.len().max(1);
                    let start = if g.strategy == Strategy::Rotate {
                        let c = self.proxy.rotation.entry(g.name.clone()).or_default();
                        let s = *c % n;
                        *c = c.wrapping_add(1);
                        s
                    } else {
                        0
                    };
                    for i in 0..g.members.len() {
                        let m = &g.members[(start + i) % n];
                        stages.push_back(Stage {
                            hops: self.member_hops(&m.target, caller, now, 0),
                            ring: Some(m.ring_time),
                            resolve: None,
                            enum_of: None,
                        });
                    }
                    overall = g.timeout.map(|t| now + t);
                }
                if invite {
                    let fb = g.fallback.as_ref().map(|t| Retarget {
                        target: t.clone(),
                        why: Divert::NoAnswer,
                        owner: None,
                    });
                    on_busy = fb.clone();
                    on_no_answer = fb;
                }
            }
            Dialed::Remote(uri) => {
                reach = Reach::Remote;
                match self.remote_hop(uri, now) {
                    Some(h) => stages.push_back(Stage {
                        hops: vec![h],
                        ring: None,
                        resolve: None,
                        enum_of: None,
                    }),
                    // A domain name: DNS first (RFC 3263), then the branch.
                    None if dns_query(uri).is_some() => stages.push_back(Stage {
                        hops: vec![],
                        ring: None,
                        resolve: Some(uri.clone()),
                        enum_of: None,
                    }),
                    None => return Expanded::Reply(500, "Cannot Resolve Target".into()),
                }
            }
            Dialed::Number(call) => {
                reach = Reach::Trunk;
                stages = self.number_stages(now, call);
                if stages.is_empty() {
                    return Expanded::Reply(
                        480,
                        "Temporarily Unavailable (No Provider Reachable)".into(),
                    );
                }
            }
            Dialed::Reject(code, reason) => return Expanded::Reply(*code, reason.clone()),
            Dialed::NotFound | Dialed::Feature(_) => {
                return Expanded::Reply(404, "Not Found".into())
            }
        }
        let Some(h) = self.hunt_mut(ctx_id) else {
            return Expanded::Reply(500, "Server Internal Error".into());
        };
        h.stages = stages;
        h.on_busy = on_busy;
        h.on_no_answer = on_no_answer;
        h.reach = reach;
        // A new target replaces the previous one's overall time too (a group's fallback
        // must not be cut short by the group's timer).
        h.overall = overall;
        if let Some(o) = overall {
            self.timers.push(o, TimerRef::HuntOverall(ctx_id));
        }
        Expanded::Stages
    }

    fn hunt_mut(&mut self, ctx_id: CtxId) -> Option<&mut Hunt> {
        self.proxy.contexts.get_mut(&ctx_id)?.hunt.as_deref_mut()
    }

    /// Starts ringing `target` for the request of context `ctx_id`; answers the request
    /// itself when there is nobody to ring.
    pub(crate) fn hunt_start(&mut self, now: Instant, ctx_id: CtxId, target: Dialed) {
        if let Dialed::Local(t) = &target {
            if let Some(h) = self.hunt_mut(ctx_id) {
                h.visited.push(t.clone());
            }
        }
        self.hunt_enter(now, ctx_id, target);
    }

    fn hunt_enter(&mut self, now: Instant, ctx_id: CtxId, target: Dialed) {
        let invite = self.proxy.contexts.get(&ctx_id).is_some_and(|c| c.invite);
        match self.expand(now, ctx_id, &target, invite) {
            Expanded::Stages => {
                if !self.hunt_advance(now, ctx_id) {
                    self.hunt_exhausted(now, ctx_id, None);
                }
            }
            Expanded::Retarget(r) => {
                if !self.retarget(now, ctx_id, r) {
                    self.hunt_final(now, ctx_id, 480, "Temporarily Unavailable");
                }
            }
            Expanded::Reply(code, reason) => self.hunt_final_owned(now, ctx_id, code, reason),
        }
    }

    /// Forks the next stage that has anyone to ring. False when none is left.
    pub(crate) fn hunt_advance(&mut self, now: Instant, ctx_id: CtxId) -> bool {
        loop {
            let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
                return false;
            };
            let start = ctx.branches.len();
            let Some(h) = ctx.hunt.as_deref_mut() else {
                return false;
            };
            let Some(stage) = h.stages.pop_front() else {
                return false;
            };
            if stage.hops.is_empty() && stage.resolve.is_none() && stage.enum_of.is_none() {
                continue;
            }
            h.stage_start = start;
            h.generation = h.generation.wrapping_add(1);
            let generation = h.generation;
            if let Some(e164) = stage.enum_of {
                // Nothing rings until ENUM answers (`handle_enum`).
                self.enum_ask(ctx_id, generation, e164);
                return true;
            }
            if let Some(uri) = stage.resolve {
                // Nothing rings until DNS answers (`handle_resolved`).
                let Some(query) = dns_query(&uri) else {
                    continue;
                };
                let id = self.id();
                self.proxy.resolving.insert(
                    id,
                    Resolving {
                        ctx_id,
                        uri,
                        generation,
                        enum_lookup: false,
                    },
                );
                self.out.push(Action::Resolve { id, query });
                return true;
            }
            let headers = h.headers();
            if let Some(ring) = stage.ring {
                self.timers
                    .push(now + ring, TimerRef::Hunt(ctx_id, generation));
            }
            self.add_branches(now, ctx_id, stage.hops, &headers);
            return true;
        }
    }

    /// The current stage ended without an answer and none is left: forward if the target
    /// says so, else send the best response.
    fn hunt_exhausted(&mut self, now: Instant, ctx_id: CtxId, best: Option<u16>) {
        let Some(h) = self.hunt_mut(ctx_id) else {
            return;
        };
        let next = match outcome(best) {
            Outcome::Busy => h.on_busy.take(),
            Outcome::NoAnswer => h.on_no_answer.take(),
            Outcome::Failed | Outcome::Global => None,
        };
        h.on_busy = None;
        h.on_no_answer = None;
        if let Some(r) = next {
            if self.retarget(now, ctx_id, r) {
                return;
            }
        }
        // A MESSAGE nobody's phone took waits for the user instead.
        if self.mailbox_take(now, ctx_id, best) {
            return;
        }
        self.finish_with_best(now, ctx_id);
    }

    /// Sends the call on to another target. False if it cannot go there.
    fn retarget(&mut self, now: Instant, ctx_id: CtxId, r: Retarget) -> bool {
        let limit = self.plan.calls.forward_limit;
        let dialed = self.plan.target(&r.target, r.owner.as_deref());
        let outside_ok = r
            .owner
            .as_deref()
            .is_none_or(|o| self.plan.may_call_outside(o));
        let domain = self.cfg.domain.clone();
        let number_ok = match &dialed {
            Dialed::Number(call) => self.forward_to_number_allowed(now, ctx_id, &r, call),
            _ => false,
        };
        let Some(h) = self.hunt_mut(ctx_id) else {
            return false;
        };
        if h.forwards >= limit {
            tracing::info!(target = %r.target, "forwarding limit reached");
            return false;
        }
        let to_uri = match &dialed {
            Dialed::Local(t) => {
                if h.visited.contains(t) {
                    tracing::info!(target = %r.target, "forwarding loop");
                    self.hunt_final(now, ctx_id, 482, "Loop Detected (Call Forwarding)");
                    return true;
                }
                h.visited.push(t.clone());
                // Users of the other domains are already `name@domain`.
                if t.name().contains('@') {
                    format!("sip:{}", t.name())
                } else {
                    format!("sip:{}@{domain}", t.name())
                }
            }
            Dialed::Remote(uri) if outside_ok => uri.clone(),
            Dialed::Remote(_) => {
                tracing::info!(target = %r.target, owner = ?r.owner, "forwarding outside the domain not allowed for this user");
                return false;
            }
            Dialed::Number(call) if number_ok => format!("sip:{}@{domain}", call.dialled),
            _ => {
                tracing::info!(target = %r.target, "forwarding target reaches nobody");
                return false;
            }
        };
        let from_uri = match r.owner.as_deref() {
            Some(o) => format!("sip:{o}@{domain}"),
            None => h
                .record
                .history
                .last()
                .map(|e| e.uri.clone())
                .unwrap_or_default(),
        };
        h.forwards += 1;
        h.divert(&from_uri, &to_uri, r.why);
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return false;
        };
        // The new target's own answers decide what happens to it.
        ctx.best = None;
        if ctx.invite && !ctx.final_sent {
            let key = ctx.server;
            self.respond(now, key, 181, "Call Is Being Forwarded", &[], None);
        }
        self.hunt_enter(now, ctx_id, dialed);
        true
    }

    /// A stage's ring time or the group's overall time ran out.
    pub(crate) fn hunt_timer(&mut self, now: Instant, ctx_id: CtxId, generation: Option<u32>) {
        let Some(ctx) = self.proxy.contexts.get(&ctx_id) else {
            return;
        };
        if ctx.final_sent || ctx.cancelled {
            return;
        }
        let Some(h) = ctx.hunt.as_deref() else {
            return;
        };
        let from = match generation {
            Some(g) if g != h.generation => return,
            Some(_) => h.stage_start,
            None => {
                if h.overall.is_none_or(|t| t > now) {
                    return;
                }
                0
            }
        };
        let n = ctx.branches.len();
        for i in from..n {
            self.abandon_branch(now, ctx_id, i);
        }
        if generation.is_none() {
            if let Some(h) = self.hunt_mut(ctx_id) {
                h.stages.clear();
                h.overall = None;
            }
        }
        if !self.hunt_advance(now, ctx_id) {
            self.hunt_exhausted(now, ctx_id, Some(480));
        }
    }

    /// Cancels a branch the hunt gave up on; its final response will not count.
    fn abandon_branch(&mut self, now: Instant, ctx_id: CtxId, idx: usize) {
        let send = self
            .proxy
            .contexts
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(idx))
            .is_some_and(|b| b.state.abandon());
        if send {
            self.send_cancel(now, ctx_id, idx);
        }
    }

    /// The current stage has no branch left ringing: go on, or finish.
    pub(crate) fn hunt_stage_over(&mut self, now: Instant, ctx_id: CtxId, best: Option<u16>) {
        let cancelled = self
            .proxy
            .contexts
            .get(&ctx_id)
            .is_some_and(|c| c.cancelled);
        if cancelled {
            return self.finish_with_best(now, ctx_id);
        }
        // A provider's own answer (a busy or unknown number) ends the call; only its failure
        // moves it to the next provider.
        let trunk_answered = self
            .hunt_mut(ctx_id)
            .is_some_and(|h| h.reach == Reach::Trunk)
            && best.is_some_and(|s| s != 408 && s < 500);
        if outcome(best) != Outcome::Global && !trunk_answered && self.hunt_advance(now, ctx_id) {
            return;
        }
        self.hunt_exhausted(now, ctx_id, best);
    }

    fn hunt_final(&mut self, now: Instant, ctx_id: CtxId, code: u16, reason: &'static str) {
        self.hunt_final_owned(now, ctx_id, code, reason.to_string());
    }

    fn hunt_final_owned(&mut self, now: Instant, ctx_id: CtxId, code: u16, reason: String) {
        // A MESSAGE for a user with no phone registered waits for them.
        if code == 480 && self.mailbox_take(now, ctx_id, Some(480)) {
            return;
        }
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.final_sent {
            return;
        }
        ctx.final_sent = true;
        let key = ctx.server;
        if ctx.invite {
            self.call_ended_unanswered(now, key);
        }
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.conceal && ctx.branches.is_empty() {
            self.respond(now, key, 404, "Not Found", &[], None);
        } else {
            self.respond(now, key, code, &reason, &[], None);
        }
        self.drop_context_if_done(ctx_id);
    }

    /// A user dialled a feature code: apply it, answer the INVITE with a final response
    /// whose reason phrase says what happened, and confirm by MESSAGE to their phones.
    pub(crate) fn apply_feature(
        &mut self,
        now: Instant,
        key: ServerTxId,
        user: &str,
        req: FeatureRequest,
    ) {
        let mut spec = self.plan.forward(user);
        let (code, reason, note) = match req {
            FeatureRequest::Pickup(target) => return self.pickup(now, key, user, &target),
            FeatureRequest::Dnd(on) => {
                spec.dnd = on;
                if on {
                    (
                        480,
                        "Do Not Disturb On".to_string(),
                        "Do not disturb is on: calls are refused as busy.".to_string(),
                    )
                } else {
                    (
                        480,
                        "Do Not Disturb Off".to_string(),
                        "Do not disturb is off.".to_string(),
                    )
                }
            }
            FeatureRequest::Forward(kind, None) => {
                *kind.slot(&mut spec) = None;
                (
                    480,
                    format!("Forwarding Of {} Off", title(kind.describe())),
                    format!("Forwarding of {} is off.", kind.describe()),
                )
            }
            FeatureRequest::Forward(kind, Some(target)) => {
                match self.plan.target(&target, Some(user)) {
                    Dialed::Local(Target::User(u)) if u == user => {
                        return self.respond(now, key, 403, "Cannot Forward To Yourself", &[], None)
                    }
                    Dialed::Local(_) => {}
                    Dialed::Remote(_) if self.plan.may_call_outside(user) => {}
                    Dialed::Remote(_) => {
                        return self.respond(
                            now,
                            key,
                            403,
                            "Forwarding Outside The Domain Not Allowed",
                            &[],
                            None,
                        )
                    }
                    _ => {
                        return self.respond(
                            now,
                            key,
                            404,
                            "Forwarding Target Not Found",
                            &[],
                            None,
                        )
                    }
                }
                *kind.slot(&mut spec) = Some(target.clone());
                (
                    480,
                    format!("Forwarding {} To {target}", title(kind.describe())),
                    format!("Forwarding {} to {target}.", kind.describe()),
                )
            }
        };
        tracing::info!(%user, "feature code: {note}");
        self.plan.set_forward(spec.clone());
        self.out.push(Action::SaveForward(spec));
        self.respond(now, key, code, &reason, &[], None);
        self.notify_user(now, user, &note);
        // Do-not-disturb shows as busy to the user's watchers.
        self.presence_changed(now, user);
    }

    /// Sends a text MESSAGE from the server to each of a user's phones.
    pub(crate) fn notify_user(&mut self, now: Instant, user: &str, text: &str) {
        let aor = self.aor_uri(user);
        for hop in self.contact_hops(user, now) {
            let (branch, w) = self.own_request("MESSAGE", &hop.uri, &aor, hop.flow);
            let data = w.finish(Some("text/plain;charset=utf-8"), text.as_bytes());
            self.send_request(now, hop.flow, &branch, "MESSAGE", data);
        }
    }

    /// 3xx from a branch: its Contacts become new branches of the same stage, if the limit
    /// allows and they lead anywhere. True if any branch was added.
    pub(crate) fn recurse(&mut self, now: Instant, ctx_id: CtxId, resp: &Message) -> bool {
        let limit = self.plan.calls.redirect_limit;
        let Some(ctx) = self.proxy.contexts.get(&ctx_id) else {
            return false;
        };
        if ctx.redirects >= limit || ctx.cancelled || ctx.final_sent {
            return false;
        }
        let caller = ctx.hunt.as_ref().and_then(|h| h.caller.clone());
        let mut hops = vec![];
        for c in resp
            .values(HeaderName::Contact)
            .flat_map(name_addr_list)
            .filter_map(Result::ok)
        {
            let raw = c.uri.raw;
            match self.plan.target(raw, caller.as_deref()) {
                Dialed::Local(Target::User(u)) => hops.extend(self.contact_hops(&u, now)),
                Dialed::Local(Target::Group(g)) => {
                    hops.extend(self.member_hops(&g, caller.as_deref(), now, 0))
                }
                Dialed::Remote(uri)
                    if caller
                        .as_deref()
                        .is_some_and(|c| self.plan.may_call_outside(c)) =>
                {
                    hops.extend(self.remote_hop(&uri, now))
                }
                _ => tracing::debug!(contact = raw, "redirect target not followed"),
            }
        }
        if hops.is_empty() {
            return false;
        }
        let headers = match self.proxy.contexts.get_mut(&ctx_id) {
            Some(ctx) => {
                ctx.redirects += 1;
                ctx.hunt.as_ref().map(|h| h.headers()).unwrap_or_default()
            }
            None => return false,
        };
        self.add_branches(now, ctx_id, hops, &headers);
        true
    }

    pub(crate) fn drop_context_if_done(&mut self, ctx_id: CtxId) {
        let done = self
            .proxy
            .contexts
            .get(&ctx_id)
            .is_some_and(|c: &ProxyCtx| {
                c.final_sent && c.branches.iter().all(|b| b.state.is_done())
            });
        if done {
            self.proxy.contexts.remove(&ctx_id);
        }
    }
}

/// "all calls" -> "All Calls", for reason phrases.
fn title(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// Domains whose DNS answers are kept at most.
const DNS_CACHE_MAX: usize = 10_000;

/// The DNS question for a URI of another domain (RFC 3263 §4): None for IP addresses.
/// A `sips:` URI asks for TLS only.
pub(crate) fn dns_query(uri: &str) -> Option<DnsQuery> {
    let u = Uri::parse(uri).ok()?;
    let transport = match (u.scheme, u.transport()) {
        (Scheme::Sips, _) => Some(Transport::Tls),
        (Scheme::Sip, Some(t)) => Some(Transport::parse(t)?),
        (Scheme::Sip, None) => None,
        _ => return None,
    };
    if transport.is_some_and(Transport::is_websocket) {
        // Nobody can be reached by opening a WebSocket: only over one they opened to us.
        return None;
    }
    match u.host {
        Host::Name(n) if !n.eq_ignore_ascii_case("localhost") => Some(DnsQuery {
            host: n.to_ascii_lowercase(),
            port: u.port,
            transport,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_and_diversion_headers() {
        let mut h = Hunt::new(
            "sip:201@example.test",
            Some("carol".into()),
            Some("<sip:carol@example.test>".into()),
        );
        h.divert(
            "sip:alice@example.test",
            "sip:bob@example.test",
            Divert::Busy,
        );
        h.divert(
            "sip:bob@example.test",
            "sip:dave@example.test",
            Divert::NoAnswer,
        );
        let hs = h.headers();
        let get = |n: &str| {
            hs.iter()
                .filter(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("Diversion"),
            vec![
                "<sip:bob@example.test>;reason=no-answer;counter=2".to_string(),
                "<sip:alice@example.test>;reason=user-busy;counter=1".to_string()
            ]
        );
        assert_eq!(
            get("History-Info"),
            vec!["<sip:201@example.test?Reason=SIP%3Bcause%3D486>;index=1, \
                  <sip:bob@example.test;cause=486?Reason=SIP%3Bcause%3D408>;index=1.1;mp=1, \
                  <sip:dave@example.test;cause=408>;index=1.1.1;mp=1.1"
                .to_string()]
        );
        assert_eq!(
            get("P-Asserted-Identity"),
            vec!["<sip:carol@example.test>".to_string()]
        );
        h.reach = Reach::Remote;
        assert!(h.headers().iter().all(|(k, _)| *k != "P-Asserted-Identity"));
    }

    #[test]
    fn titles() {
        assert_eq!(title("calls when busy"), "Calls When Busy");
    }
}
