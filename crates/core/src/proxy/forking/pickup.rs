//! Call pickup: a user dials the pickup code and a colleague's extension (`*8101`) to take
//! the call ringing there. The proxy knows which of its calls ring at that user's phones: it
//! stops ringing them and rings the picker's phones instead with the same call (asking them
//! to answer at once, `Call-Info: answer-after=0`), and answers the pickup request itself.

use crate::handles::{CtxId, ServerTxId};
use crate::plan::{Dialed, Target};
use crate::Core;
use std::time::Instant;

impl Core {
    /// `picker` dialled the pickup code and `target` (`101`, `alice`).
    pub(super) fn pickup(&mut self, now: Instant, key: ServerTxId, picker: &str, target: &str) {
        let user = match self.plan.target(target, Some(picker)) {
            Dialed::Local(Target::User(u)) => u,
            _ => return self.respond(now, key, 404, "Not Found", &[], None),
        };
        let Some((ctx_id, ringing)) = self.ringing_at(now, &user) else {
            tracing::info!(picker, target = %user, "call pickup: nothing rings there");
            return self.respond(
                now,
                key,
                480,
                "Temporarily Unavailable (Nothing To Pick Up)",
                &[],
                None,
            );
        };
        let hops = self.contact_hops(picker, now);
        if hops.is_empty() {
            return self.respond(
                now,
                key,
                480,
                "Temporarily Unavailable (No Phone To Ring)",
                &[],
                None,
            );
        }
        tracing::info!(picker, target = %user, "call pickup");
        for idx in ringing {
            self.abandon_branch(now, ctx_id, idx);
        }
        let mut extra = self
            .proxy
            .ctx(ctx_id)
            .and_then(|c| c.hunt.as_ref())
            .map(|h| h.headers())
            .unwrap_or_default();
        // RFC 5373 (Call-Info answer-after) and the Alert-Info many desk phones read.
        extra.push((
            "Call-Info",
            "<sip:pickup.invalid>;answer-after=0".to_string(),
        ));
        extra.push((
            "Alert-Info",
            "<http://pickup.invalid/>;info=alert-autoanswer".to_string(),
        ));
        self.add_branches(now, ctx_id, hops, &extra);
        self.respond(
            now,
            key,
            480,
            "Temporarily Unavailable (Call Picked Up: Answer Your Phone)",
            &[],
            None,
        );
    }

    /// The call ringing at one of `user`'s phones, and those branches (the oldest call first).
    fn ringing_at(&self, now: Instant, user: &str) -> Option<(CtxId, Vec<usize>)> {
        let mut found: Vec<(CtxId, Vec<usize>)> = self
            .proxy
            .ctx_ids()
            .filter_map(|id| {
                let c = self.proxy.ctx(id)?;
                if !c.invite || c.answered || c.cancelled || c.final_sent {
                    return None;
                }
                let idx: Vec<usize> = (0..c.branches.len())
                    .filter(|&i| {
                        c.branches[i].state_is_ringing()
                            && self.branch_owner(now, id, i).as_deref() == Some(user)
                    })
                    .collect();
                (!idx.is_empty()).then_some((id, idx))
            })
            .collect();
        found.sort_by_key(|(id, _)| id.0);
        found.into_iter().next()
    }
}
