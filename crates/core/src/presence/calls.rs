//! The calls of each user as the proxy sees them, for busy lamps (RFC 4235 dialog package)
//! and for `on-the-phone` in presence: a call is `early` while it rings (for the caller and
//! for each callee whose phone rings), `confirmed` once answered (for the caller and the
//! callee who answered), `terminated` when it ends. Nothing is asked of the phones.

use super::pidf::{DialogState, DialogView};
use super::Package;
use crate::Core;
use std::time::{Duration, Instant};

/// How long an ended call stays in the documents (so that its `terminated` is sent).
const ENDED_KEPT: Duration = Duration::from_secs(3);

/// One call of one user.
#[derive(Clone, Debug)]
pub(crate) struct UserCall {
    pub(crate) call_id: String,
    pub(crate) initiator: bool,
    pub(crate) state: DialogState,
    /// When it ended.
    pub(crate) ended: Option<Instant>,
}

impl Core {
    /// `user`'s side of call `call_id` is now `state`.
    pub(crate) fn call_progress(
        &mut self,
        now: Instant,
        call_id: &str,
        user: &str,
        initiator: bool,
        state: DialogState,
    ) {
        if !self.agent.presence.settings.enabled {
            return;
        }
        let calls = self
            .agent
            .presence
            .calls
            .entry(user.to_string())
            .or_default();
        calls.retain(|c| {
            c.ended
                .is_none_or(|t| now.saturating_duration_since(t) < ENDED_KEPT)
        });
        match calls.iter_mut().find(|c| c.call_id == call_id) {
            Some(c) if c.state == state || c.state == DialogState::Terminated => return,
            // A callee who answered stays confirmed; ringing never goes back.
            Some(c) if c.state == DialogState::Confirmed && state == DialogState::Early => return,
            Some(c) => {
                c.state = state;
                c.ended = (state == DialogState::Terminated).then_some(now);
            }
            None if state == DialogState::Terminated => return,
            None => {
                // Bounded like everything a request creates: a user has a few calls.
                if calls.len() >= 32 {
                    calls.remove(0);
                }
                calls.push(UserCall {
                    call_id: call_id.to_string(),
                    initiator,
                    state,
                    ended: None,
                });
            }
        }
        self.agent
            .presence
            .by_call
            .entry(call_id.to_string())
            .or_default()
            .insert(user.to_string());
        self.calls_changed(now, user);
    }

    /// Call `call_id` was answered by `callee` (None: someone we do not know, another
    /// domain): its caller and that callee are in it; other phones stopped ringing.
    pub(crate) fn call_confirmed(&mut self, now: Instant, call_id: &str, callee: Option<&str>) {
        let users: Vec<String> = self
            .agent
            .presence
            .by_call
            .get(call_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for u in users {
            let initiator = self.is_initiator(&u, call_id);
            let state = if initiator || callee == Some(u.as_str()) {
                DialogState::Confirmed
            } else {
                DialogState::Terminated
            };
            self.call_progress(now, call_id, &u, initiator, state);
        }
        if let Some(c) = callee {
            self.call_progress(now, call_id, c, false, DialogState::Confirmed);
        }
    }

    /// A call's INVITE goes to `hops`: the caller (on the first) and each local user whose
    /// phone it reaches are ringing. Only followed while someone watches (nothing is kept
    /// for nobody).
    pub(crate) fn calls_ringing(
        &mut self,
        now: Instant,
        msg: &sip::message::Message,
        first: bool,
        caller: Option<&str>,
        hops: &[crate::route::Hop],
    ) {
        if self.agent.presence.subs.is_empty() {
            return;
        }
        let call_id = msg.call_id();
        if let (true, Some(c)) = (first, caller) {
            self.call_progress(now, call_id, c, true, DialogState::Early);
        }
        let owners: Vec<String> = hops
            .iter()
            .filter_map(|h| {
                let u = sip::uri::Uri::parse(&h.uri).ok()?;
                self.location.owner_of(&u, now).map(str::to_string)
            })
            .collect();
        for o in owners {
            self.call_progress(now, call_id, &o, false, DialogState::Early);
        }
    }

    /// The local user whose phone branch `idx` of a context rang, if any.
    pub(crate) fn branch_owner(
        &self,
        now: Instant,
        ctx: crate::handles::CtxId,
        idx: usize,
    ) -> Option<String> {
        let b = self.proxy.ctx(ctx)?.branches.get(idx)?;
        let req = &self.tx.client(b.client)?.request;
        let line = std::str::from_utf8(req.get(..req.iter().position(|&c| c == b'\r')?)?).ok()?;
        let uri = sip::uri::Uri::parse(line.split(' ').nth(1)?).ok()?;
        self.location.owner_of(&uri, now).map(str::to_string)
    }

    /// The INVITE of server transaction `key` got a final answer other than 2xx.
    pub(crate) fn call_ended_unanswered(&mut self, now: Instant, key: crate::handles::ServerTxId) {
        if self.agent.presence.by_call.is_empty() {
            return;
        }
        let call_id = self
            .tx
            .server(key)
            .and_then(|st| st.request.as_ref())
            .map(|m| m.call_id().to_string());
        if let Some(c) = call_id {
            self.call_over(now, &c);
        }
    }

    /// Call `call_id` ended (BYE, or it was never answered).
    pub(crate) fn call_over(&mut self, now: Instant, call_id: &str) {
        let Some(users) = self.agent.presence.by_call.remove(call_id) else {
            return;
        };
        for u in users {
            let initiator = self.is_initiator(&u, call_id);
            self.call_progress(now, call_id, &u, initiator, DialogState::Terminated);
        }
        self.agent.presence.by_call.remove(call_id);
    }

    fn is_initiator(&self, user: &str, call_id: &str) -> bool {
        self.agent
            .presence
            .calls
            .get(user)
            .and_then(|l| l.iter().find(|c| c.call_id == call_id))
            .is_some_and(|c| c.initiator)
    }

    /// The user's calls for a dialog-info document (ended ones for a little while).
    pub(crate) fn dialogs_of(&self, now: Instant, user: &str) -> Vec<DialogView> {
        self.agent
            .presence
            .calls
            .get(user)
            .map(|l| {
                l.iter()
                    .filter(|c| {
                        c.ended
                            .is_none_or(|t| now.saturating_duration_since(t) < ENDED_KEPT)
                    })
                    .map(|c| DialogView {
                        call_id: c.call_id.clone(),
                        initiator: c.initiator,
                        state: c.state,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the user is in an answered call.
    pub(crate) fn on_the_phone(&self, user: &str) -> bool {
        self.agent
            .presence
            .calls
            .get(user)
            .is_some_and(|l| l.iter().any(|c| c.state == DialogState::Confirmed))
    }

    /// A user's calls changed: busy lamps and presence watchers hear of it.
    fn calls_changed(&mut self, now: Instant, user: &str) {
        let calls = &mut self.agent.presence.calls;
        if calls.get(user).is_some_and(|l| {
            l.iter().all(|c| {
                c.ended
                    .is_some_and(|t| now.saturating_duration_since(t) >= ENDED_KEPT)
            })
        }) {
            calls.remove(user);
        }
        for id in self.agent.presence.watching(user, Package::Dialog) {
            self.notify(now, id, None);
        }
        self.presence_changed(now, user);
    }
}
