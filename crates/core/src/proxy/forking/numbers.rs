//! A hunt for a telephone number: ENUM first (RFC 6116: the number's NAPTR records under
//! the configured suffixes may name a SIP URI, reached by RFC 3263 at no cost), then the
//! providers in order, each a stage of its own that is tried only when the one before
//! failed (408, 5xx, unreachable). ENUM answers are kept for their TTL.

use super::{Resolving, Retarget, Stage};
use crate::handles::CtxId;
use crate::numbers::{enum_domain, enum_target, EnumRecord, NumberCall};
use crate::{Action, Core};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// ENUM answers kept at most (a user dialling many numbers cannot grow it further).
const ENUM_CACHE_MAX: usize = 4096;

impl Core {
    /// The stages of a call to a number.
    pub(super) fn number_stages(&mut self, now: Instant, call: &NumberCall) -> VecDeque<Stage> {
        let mut stages = VecDeque::new();
        let enum_on = !self.agent.trunks.numbers().enum_suffixes.is_empty();
        if let (Some(e164), false, true) = (&call.e164, call.emergency, enum_on) {
            match self
                .proxy
                .enum_cache
                .get(e164)
                .filter(|(_, until)| *until > now)
            {
                Some((Some(uri), _)) => {
                    tracing::info!(number = %e164, %uri, "ENUM (cached): calling the number's SIP address");
                    stages.push_back(self.uri_stage(now, uri.clone()));
                }
                Some((None, _)) => {}
                None => stages.push_back(Stage {
                    hops: vec![],
                    ring: None,
                    resolve: None,
                    enum_of: Some(e164.clone()),
                }),
            }
        }
        stages.extend(self.number_hops(now, call).into_iter().map(|h| Stage {
            hops: vec![h],
            ring: None,
            resolve: None,
            enum_of: None,
        }));
        stages
    }

    /// A user's forwarding to a telephone number (their mobile): allowed when the user
    /// may call that number themselves (classes, caps); a group's fallback, set by the
    /// administrator, never names numbers this way.
    pub(super) fn forward_to_number_allowed(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        r: &Retarget,
        call: &NumberCall,
    ) -> bool {
        let Some(owner) = r.owner.clone() else {
            return false;
        };
        let Some(source) = self
            .proxy
            .contexts
            .get(&ctx_id)
            .map(|c| c.template.in_flow.remote)
        else {
            return false;
        };
        self.number_allowed(now, &owner, call, source, true).is_ok()
    }

    /// A stage ringing another domain's URI: at once when its server is known, else after
    /// DNS (RFC 3263).
    fn uri_stage(&self, now: Instant, uri: String) -> Stage {
        match self.remote_hop(&uri, now) {
            Some(h) => Stage {
                hops: vec![h],
                ring: None,
                resolve: None,
                enum_of: None,
            },
            None => Stage {
                hops: vec![],
                ring: None,
                resolve: Some(uri),
                enum_of: None,
            },
        }
    }

    /// Asks the edge for the number's ENUM records.
    pub(super) fn enum_ask(&mut self, ctx_id: CtxId, generation: u32, e164: String) {
        let domains = self
            .agent
            .trunks
            .numbers()
            .enum_suffixes
            .iter()
            .map(|s| enum_domain(&e164, s))
            .collect();
        let id = self.id();
        self.proxy.resolving.insert(
            id,
            Resolving {
                ctx_id,
                uri: e164,
                generation,
                enum_lookup: true,
            },
        );
        self.out.push(Action::ResolveEnum { id, domains });
    }

    /// The answer to an `Action::ResolveEnum`: the NAPTR records of the first suffix that
    /// had any (empty: none, or DNS failed), and how long they hold. A SIP URI among them
    /// is called first; without one, the providers are.
    pub fn handle_enum(&mut self, now: Instant, id: u64, records: Vec<EnumRecord>, ttl: Duration) {
        let Some(p) = self.proxy.resolving.remove(&id).filter(|p| p.enum_lookup) else {
            return;
        };
        let e164 = p.uri;
        let target = enum_target(&e164, &records);
        let cache = &mut self.proxy.enum_cache;
        if cache.len() >= ENUM_CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= ENUM_CACHE_MAX {
                cache.clear();
            }
        }
        let ttl = ttl.clamp(Duration::from_secs(30), Duration::from_secs(86400));
        cache.insert(e164.clone(), (target.clone(), now + ttl));
        let Some(ctx) = self.proxy.contexts.get(&p.ctx_id) else {
            return;
        };
        let current = ctx
            .hunt
            .as_ref()
            .is_some_and(|h| h.generation == p.generation);
        if ctx.final_sent || ctx.cancelled || !current {
            return;
        }
        if let Some(uri) = target {
            tracing::info!(number = %e164, %uri, "ENUM: calling the number's SIP address");
            let stage = self.uri_stage(now, uri);
            if let Some(h) = self.hunt_mut(p.ctx_id) {
                h.stages.push_front(stage);
            }
        } else {
            tracing::debug!(number = %e164, "ENUM knows no SIP address; the providers are tried");
        }
        if !self.hunt_advance(now, p.ctx_id) {
            self.hunt_exhausted(now, p.ctx_id, None);
        }
    }
}
