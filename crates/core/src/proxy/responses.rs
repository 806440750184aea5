//! What comes back: ACK and CANCEL from the caller, responses from the branches, the best
//! final response (RFC 3261 §16.7), CANCEL fan-out, fail-over and Timer C.

use super::*;

impl Core {
    /// ACK: absorbed by the INVITE server transaction for a non-2xx, otherwise (ACK for a
    /// 2xx, new branch) forwarded statelessly along the dialog's route.
    pub(crate) fn on_ack(&mut self, now: Instant, flow: Flow, msg: Message, key: &str) {
        let invite = self.tx.find_server(key);
        // The ACK to a negative answer we sent statelessly (`answer_and_forget`) carries the
        // To tag we derive from the INVITE's match key (or, from a careless phone, none: an
        // ACK without a To tag cannot be for a 2xx, so it has nowhere else to go). It ends
        // here.
        if invite.is_none()
            && msg
                .to()
                .is_some_and(|t| t.tag().is_none_or(|t| t == self.to_tag(key)))
        {
            self.auth.guard_mut().mark_verified(now, flow.remote.ip());
            return;
        }
        if let Some((id, st)) = invite.and_then(|id| Some((id, self.tx.server_mut(id)?))) {
            if let ServerMachine::Invite(m) = &mut st.machine {
                // An ACK to our answer: this source receives what we send it.
                self.auth.guard_mut().mark_verified(now, flow.remote.ip());
                let (disp, actions) = m.on_ack(now);
                self.server_actions(now, id, actions);
                if disp == Disposition::Absorb {
                    return;
                }
            }
        }
        let pop = self.our_routes(&msg);
        if pop > 0 && !self.route_is_signed(&msg) {
            tracing::debug!("ACK with a Route of ours we did not sign dropped");
            return;
        }
        let target = match self.next_route(&msg, pop) {
            Some(r) if pop > 0 => Uri::parse(r).ok().and_then(|u| self.resolve(&u)),
            Some(_) => None,
            None => msg.uri().ok().and_then(|u| {
                if pop > 0 || !self.is_local_domain(&u) {
                    (pop > 0).then(|| self.dialog_hop(&u, now)).flatten()
                } else {
                    // ACK to a local user's AOR (2xx from a UA that ignores Record-Route):
                    // route like the INVITE did.
                    let user = u.user_unescaped()?;
                    let name = self.auth.users().find(&user)?.name.clone();
                    let b = self.location.lookup(&name, now).into_iter().next()?;
                    Uri::parse(&b.contact).ok().and_then(|c| self.resolve(&c))
                }
            }),
        };
        let Some(out) = target else {
            tracing::debug!("ACK with nowhere to go dropped");
            return;
        };
        // Stateless forwarding needs a branch that is the same for retransmissions (§16.11).
        let mut h = self.origin.keys.hasher(crate::keys::Purpose::AckBranch);
        h.write(msg.top_via().and_then(|v| v.branch()).unwrap_or(""));
        h.write(msg.call_id());
        let branch = format!("z9hG4bKack{:016x}", h.finish());
        // An ACK may carry the answer to an offer made in a 2xx (RFC 3261 §13.2.1).
        let body = if self.calls.is_empty() || self.is_spiral(flow) {
            None
        } else {
            self.media_body(&msg, false, flow, out).ok().flatten()
        };
        let shape = BranchShape {
            from: None,
            msg: &msg,
            inbound: flow,
            record_route: false,
            pop,
            extra: &[],
            strip_identity: false,
            body: body.as_deref(),
        };
        let data = self.forward_bytes(&shape, msg.uri_str(), out, &branch, &[]);
        self.out.push(Action::Send {
            flow: out,
            data,
            key: None,
        });
    }

    /// CANCEL (§16.10): answered at once, then every pending branch of the INVITE is
    /// cancelled; the INVITE gets its 487 from the branches.
    pub(crate) fn on_cancel(&mut self, now: Instant, flow: Flow, msg: Message, key: String) {
        let invite_key = server_key(&msg, Some("INVITE"));
        let Some(invite_key) = invite_key.and_then(|k| self.tx.find_server(&k)) else {
            return self.reply_stateless(&msg, flow, 481, "Call/Transaction Does Not Exist");
        };
        let charge = crate::transactions::charge_for(msg.bytes().len());
        let key = self.tx.insert_server(
            key,
            ServerTx {
                machine: crate::ServerMachine::NonInvite(tx::ServerNonInvite::new(
                    flow.transport.is_reliable(),
                    &self.cfg.timers,
                )),
                request: Some(msg),
                flow,
                ctx: None,
                final_sent: false,
                retransmits: 0,
                charge,
            },
        );
        self.respond(now, key, 200, "OK", &[], None);
        let (ctx, final_sent) = match self.tx.server(invite_key) {
            Some(st) => (st.ctx, st.final_sent),
            None => return,
        };
        if final_sent {
            return;
        }
        match ctx {
            Some(ctx) => {
                if let Some(c) = self.proxy.contexts.get_mut(&ctx) {
                    c.cancelled = true;
                }
                let n = self
                    .proxy
                    .contexts
                    .get(&ctx)
                    .map_or(0, |c| c.branches.len());
                for i in 0..n {
                    self.cancel_branch(now, ctx, i);
                }
                // Nothing was ringing (DNS still looking, or between stages): done now.
                let idle =
                    self.proxy.contexts.get(&ctx).is_some_and(|c| {
                        !c.final_sent && c.branches.iter().all(|b| b.state.is_done())
                    });
                if idle {
                    self.finish_with_best(now, ctx);
                }
            }
            None => self.respond(now, invite_key, 487, "Request Terminated", &[], None),
        }
    }

    /// Sends CANCEL on a branch that has answered provisionally; otherwise remembers to.
    pub(crate) fn cancel_branch(&mut self, now: Instant, ctx: CtxId, idx: usize) {
        let send = self
            .proxy
            .contexts
            .get_mut(&ctx)
            .and_then(|c| c.branches.get_mut(idx))
            .is_some_and(|b| b.state.cancel());
        if send {
            self.send_cancel(now, ctx, idx);
        }
    }

    /// Sends the CANCEL of a branch whose state just became `Cancelling`.
    pub(crate) fn send_cancel(&mut self, now: Instant, ctx: CtxId, idx: usize) {
        let Some(b) = self
            .proxy
            .contexts
            .get_mut(&ctx)
            .and_then(|c| c.branches.get_mut(idx))
        else {
            return;
        };
        // §16.8: a cancelled branch that never answers is given up after 64*T1.
        let give_up = now + self.cfg.timers.t1 * 64;
        b.timer_c = Some(give_up);
        self.timers.push(give_up, TimerRef::TimerC(ctx, idx));
        let Some(ct) = self.tx.client(b.client) else {
            return;
        };
        let Ok(invite) = Message::parse(ct.request.clone(), false) else {
            return;
        };
        let data = request_like(&invite, "CANCEL", None).finish(None, b"");
        let flow = ct.flow;
        // A CANCEL shares its INVITE's branch (RFC 3261 §9.1).
        let branch = invite
            .top_via()
            .and_then(|v| v.branch())
            .unwrap_or("")
            .to_string();
        let data_for_tx = data.clone();
        let (m, actions) =
            tx::ClientNonInvite::new(now, flow.transport.is_reliable(), &self.cfg.timers, data);
        let key = self.tx.insert_client(
            client_key(&branch, "CANCEL"),
            ClientTx {
                machine: ClientMachine::NonInvite(m),
                request: data_for_tx,
                flow,
                ctx: None,
                server: None,
                udp_fallback: None,
            },
        );
        self.client_actions(now, key, actions);
    }

    /// Responses: matched to a client transaction by branch and CSeq method (§17.1.3).
    pub(crate) fn on_response(&mut self, now: Instant, flow: Flow, msg: Message) {
        if msg.validate_response().is_err() {
            self.counters.traffic.malformed_in += 1;
            return;
        }
        let (Some(via), Some((_, method))) = (msg.top_via(), msg.cseq()) else {
            return;
        };
        let status = msg.status().unwrap_or(500);
        let found = self
            .tx
            .find_client(&client_key(via.branch().unwrap_or(""), method));
        let Some((key, ct)) = found.and_then(|id| Some((id, self.tx.client_mut(id)?))) else {
            // RFC 4475 bcast and strays: a response we did not ask for is dropped, never
            // forwarded to whatever its next Via names.
            tracing::debug!(status, "response matches no transaction; dropped");
            return;
        };
        let ours = ct.ctx.is_none() && ct.server.is_none();
        if !ours && !msg.has_second_via() {
            // §16.7 step 3: with our Via removed nothing would be left to route it by.
            tracing::debug!(status, "response with no Via beyond ours; dropped");
            return;
        }
        let (disp, actions) = match &mut ct.machine {
            ClientMachine::Invite(m) => {
                let req = &ct.request;
                let resp = &msg;
                m.on_response(now, status, || ack_for(req, resp))
            }
            ClientMachine::NonInvite(m) => m.on_response(now, status),
        };
        let ctx = ct.ctx;
        let server = ct.server;
        self.client_actions(now, key, actions);
        if ours && disp == Disposition::PassUp && status >= 200 {
            // A request of our own: a keep-alive ping, or a feature-code confirmation.
            if self.ping_answered(key)
                || self.trunk_answered(now, key, &msg)
                || self.delivery_answered(now, key, status)
                || self.notify_answered(key, status)
            {
                return;
            }
            // Our CANCELs are ours too: only a MESSAGE is a notification.
            if method != "MESSAGE" {
                return;
            }
            if status < 300 {
                self.counters.forwarded.notifications_delivered += 1;
            } else {
                tracing::info!(status, to = %msg.to().map(|t| t.uri.raw).unwrap_or(""), "our MESSAGE was refused");
            }
            return;
        }
        if disp == Disposition::PassUp {
            match (ctx, server) {
                (Some((ctx, idx)), _) if self.proxy.contexts.contains_key(&ctx) => {
                    self.branch_response(now, ctx, idx, msg, flow)
                }
                (_, Some(server)) if (200..300).contains(&status) => {
                    let toward = self.tx.server(server).map(|st| st.flow);
                    let body = toward.and_then(|f| self.media_for_response(&msg, flow, f));
                    let data = upstream_bytes(&msg, None, body.as_deref(), None);
                    self.send_server_response(now, server, status, data);
                }
                _ => {}
            }
        }
    }

    pub(crate) fn branch_response(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        idx: usize,
        resp: Message,
        from: Flow,
    ) {
        let status = resp.status().unwrap_or(500);
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        // A phone behind NAT answering a call names its private address in Contact; the
        // caller's requests in the dialog would never reach it. As for callers, its Contact
        // is given the address the answer came from.
        let fix_contact = ctx
            .branches
            .get(idx)
            .is_some_and(|b| b.to_phone && status > 100 && status < 300)
            .then_some(from);
        let server = ctx.server;
        let invite = ctx.invite;
        let (in_flow, dialog_creating) = (ctx.template.in_flow, ctx.template.dialog_creating);
        let to_trunk = ctx
            .branches
            .get(idx)
            .and_then(|b| b.retry.as_ref())
            .is_some_and(|r| r.hop.trunk.is_some());
        let from_line = to_trunk
            .then(|| self.tx.server(server).and_then(|st| st.request.as_ref()))
            .flatten()
            .and_then(|m| {
                m.headers
                    .iter()
                    .find(|h| h.name == HeaderName::From)
                    .map(|h| m.text(h.line).to_string())
            });
        if status < 200 {
            let mut cancel = false;
            if let Some(b) = ctx.branches.get_mut(idx) {
                cancel = b.state.provisional();
                if invite {
                    b.timer_c = Some(now + TIMER_C);
                    self.timers
                        .push(now + TIMER_C, TimerRef::TimerC(ctx_id, idx));
                }
            }
            let forward = status > 100 && !ctx.final_sent;
            if cancel {
                self.send_cancel(now, ctx_id, idx);
            }
            if forward {
                let body = self.media_for_response(&resp, from, in_flow);
                let data = upstream_bytes_from(
                    &resp,
                    None,
                    body.as_deref(),
                    fix_contact,
                    from_line.as_deref(),
                );
                self.send_server_response(now, server, status, data);
            }
            return;
        }
        if status == 503 && self.try_alternate(now, ctx_id, idx) {
            return;
        }
        if matches!(status, 401 | 407) && self.answer_trunk_challenge(now, ctx_id, idx, &resp) {
            return;
        }
        if status >= 300 {
            self.trunk_branch_over(ctx_id, idx);
        }
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        let abandoned = ctx
            .branches
            .get(idx)
            .is_some_and(|b| b.state.is_abandoned());
        if let Some(b) = ctx.branches.get_mut(idx) {
            b.state.finish(status);
        }
        if (300..400).contains(&status) && !ctx.answered && self.recurse(now, ctx_id, &resp) {
            // §16.7 step 4 (recursion): the Contacts are being tried instead.
            return self.maybe_finish(now, ctx_id);
        }
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        if abandoned && status >= 300 {
            // We cancelled it ourselves (ring time over): its 487 tells the caller nothing.
        } else if status < 300 {
            // §16.7 step 5: every 2xx goes upstream at once, even after another one.
            ctx.answered = true;
            if !invite {
                // A MESSAGE kept for later reached a phone after all.
                self.mailbox_late_answer(ctx_id);
            }
            let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
                return;
            };
            ctx.final_sent = true;
            if invite && dialog_creating {
                self.call_answered(&resp, from);
                if self.agent.presence.watched() {
                    let callee = self.branch_owner(now, ctx_id, idx);
                    self.call_confirmed(now, resp.call_id(), callee.as_deref());
                }
            }
            let body = self.media_for_response(&resp, from, in_flow);
            let data = upstream_bytes_from(
                &resp,
                None,
                body.as_deref(),
                fix_contact,
                from_line.as_deref(),
            );
            self.send_server_response(now, server, status, data);
            if invite {
                self.cancel_all(now, ctx_id);
            }
        } else {
            if !ctx.answered
                && ctx
                    .best
                    .as_ref()
                    .is_none_or(|b| rank(status) < rank(b.status()))
            {
                ctx.best = Some(Candidate::Received(resp));
            }
            if invite && status >= 600 {
                self.cancel_all(now, ctx_id);
            }
        }
        self.maybe_finish(now, ctx_id);
    }

    /// A branch failed without a response (timeout, transport error): a local final for it.
    pub(crate) fn branch_failed(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        idx: usize,
        code: u16,
        reason: &'static str,
    ) {
        if matches!(code, 408 | 503) && self.try_alternate(now, ctx_id, idx) {
            return;
        }
        self.trunk_branch_over(ctx_id, idx);
        // §16.9: a next hop we could not reach counts as its 503, and §16.7 step 6 turns a
        // 503 into 500 upstream, so that the caller's proxy does not take us for overloaded.
        let (code, reason) = if code == 503 {
            (500, "Server Internal Error (Next Hop Unreachable)")
        } else {
            (code, reason)
        };
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(b) = ctx.branches.get_mut(idx) else {
            return;
        };
        if b.state.is_done() {
            return;
        }
        let abandoned = b.state.is_abandoned();
        b.state.finish(code);
        if !ctx.answered
            && !abandoned
            && ctx
                .best
                .as_ref()
                .is_none_or(|c| rank(code) < rank(c.status()))
        {
            ctx.best = Some(Candidate::Local(code, reason));
        }
        self.maybe_finish(now, ctx_id);
    }

    /// RFC 3263 §4.3: a branch to another domain whose server timed out, could not be
    /// reached or answered 503 goes to the domain's next server. False when none is left.
    pub(crate) fn try_alternate(&mut self, now: Instant, ctx_id: CtxId, idx: usize) -> bool {
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return false;
        };
        if ctx.cancelled || ctx.answered {
            return false;
        }
        let Some(b) = ctx.branches.get_mut(idx) else {
            return false;
        };
        if !b.state.may_retry() {
            return false;
        }
        let Some(r) = b.retry.as_mut().filter(|r| !r.hop.alternates.is_empty()) else {
            return false;
        };
        let flow = r.hop.alternates.remove(0);
        // The failed server's transaction no longer speaks for this branch slot (a late
        // error on it must not fail the new one over again).
        if let Some(old) = self.tx.client_mut(b.client) {
            old.ctx = None;
        }
        let Some(r) = self
            .proxy
            .contexts
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(idx))
            .and_then(|b| b.retry.as_mut())
        else {
            return false;
        };
        let hop = Hop {
            flow,
            alternates: std::mem::take(&mut r.hop.alternates),
            ..r.hop.clone()
        };
        let extra = std::mem::take(&mut r.extra);
        tracing::info!(uri = %hop.uri, next = %flow.remote, transport = flow.transport.as_str(),
            "server failed; trying the domain's next one (RFC 3263)");
        self.add_branches_at(now, ctx_id, vec![hop], &extra, Some(idx));
        true
    }

    /// A provider challenged a request we forwarded to it: send it again on the same branch
    /// with the account's credentials (once per challenge; the same CSeq, as the caller's
    /// dialog expects). False when it is not a provider's branch or cannot be answered.
    fn answer_trunk_challenge(
        &mut self,
        now: Instant,
        ctx_id: CtxId,
        idx: usize,
        resp: &Message,
    ) -> bool {
        let Some(ctx) = self.proxy.contexts.get(&ctx_id) else {
            return false;
        };
        let Some(b) = ctx.branches.get(idx) else {
            return false;
        };
        let Some(r) = b.retry.as_ref().filter(|_| !ctx.cancelled && !ctx.answered) else {
            return false;
        };
        let (Some(trunk), true) = (r.hop.trunk.clone(), b.state.may_retry()) else {
            return false;
        };
        let authorized = r.authorized;
        let client = b.client;
        let Some((sent, flow)) = self.tx.client(client).map(|c| (c.request.clone(), c.flow)) else {
            return false;
        };
        let Ok(sent) = Message::parse(sent, true) else {
            return false;
        };
        let Some(cred) = self.trunk_credentials(&trunk, resp, &sent, authorized) else {
            return false;
        };
        if let Some(old) = self.tx.client_mut(client) {
            old.ctx = None;
        }
        let Some(r) = self
            .proxy
            .contexts
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(idx))
            .and_then(|b| b.retry.as_mut())
        else {
            return false;
        };
        r.extra.retain(|(n, _)| !n.ends_with("Authorization"));
        r.extra.push(cred);
        let extra = r.extra.clone();
        let hop = Hop {
            flow,
            ..r.hop.clone()
        };
        tracing::debug!(provider = %trunk, "answering the provider's challenge");
        self.add_branches_at(now, ctx_id, vec![hop], &extra, Some(idx));
        true
    }

    /// A branch to a provider ended without an answer: the call no longer counts there.
    fn trunk_branch_over(&mut self, ctx_id: CtxId, idx: usize) {
        let Some(ctx) = self.proxy.contexts.get(&ctx_id) else {
            return;
        };
        let to_trunk = ctx
            .branches
            .get(idx)
            .and_then(|b| b.retry.as_ref())
            .is_some_and(|r| r.hop.trunk.is_some());
        if !to_trunk || ctx.answered {
            return;
        }
        let call_id = self
            .tx
            .server(ctx.server)
            .and_then(|st| st.request.as_ref())
            .map(|m| m.call_id().to_string());
        if let Some(c) = call_id {
            self.outside_call_ended(&c);
        }
    }

    pub(crate) fn cancel_all(&mut self, now: Instant, ctx_id: CtxId) {
        let n = self
            .proxy
            .contexts
            .get(&ctx_id)
            .map_or(0, |c| c.branches.len());
        for i in 0..n {
            self.cancel_branch(now, ctx_id, i);
        }
    }

    /// After a branch's final response: when the current stage has nothing left ringing, a
    /// hunt goes on (next stage, forwarding); otherwise the best response goes up. The
    /// context is dropped once every branch has its final response.
    pub(crate) fn maybe_finish(&mut self, now: Instant, ctx_id: CtxId) {
        let Some(ctx) = self.proxy.contexts.get(&ctx_id) else {
            return;
        };
        if ctx.final_sent {
            return self.drop_context_if_done(ctx_id);
        }
        let from = ctx.hunt.as_ref().map_or(0, |h| h.stage_start);
        if ctx.branches[from.min(ctx.branches.len())..]
            .iter()
            .any(|b| !b.state.is_done())
        {
            return;
        }
        // A stage still waiting for DNS is not over because an earlier one's late answer
        // came in.
        let generation = ctx.hunt.as_ref().map(|h| h.generation);
        if self
            .proxy
            .resolving
            .values()
            .any(|r| r.ctx_id == ctx_id && Some(r.generation) == generation)
        {
            return;
        }
        if ctx.hunt.is_some() {
            let best = ctx.best.as_ref().map(Candidate::status);
            return self.hunt_stage_over(now, ctx_id, best);
        }
        self.finish_with_best(now, ctx_id);
    }

    /// Sends the best final response collected (§16.7 step 6), or 480 when every branch was
    /// given up by us.
    pub(crate) fn finish_with_best(&mut self, now: Instant, ctx_id: CtxId) {
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.final_sent {
            return self.drop_context_if_done(ctx_id);
        }
        ctx.final_sent = true;
        let key = ctx.server;
        let best = ctx.best.take();
        let cancelled = ctx.cancelled;
        if ctx.invite && !ctx.answered {
            // Nobody answered: the lamps of everyone it rang go dark.
            self.call_ended_unanswered(now, key);
        }
        let Some(ctx) = self.proxy.contexts.get_mut(&ctx_id) else {
            return;
        };
        let best = if ctx.conceal && ctx.branches.is_empty() && !cancelled {
            Some(Candidate::Local(404, "Not Found"))
        } else {
            best
        };
        match best {
            Some(Candidate::Received(resp)) => {
                let status = resp.status().unwrap_or(500);
                // §16.7 step 6: a 503 from downstream must not make the caller's
                // proxy think *we* are overloaded.
                let (code, data) = if status == 503 {
                    (
                        500,
                        upstream_bytes(&resp, Some((500, "Server Internal Error")), None, None),
                    )
                } else {
                    (status, upstream_bytes(&resp, None, None, None))
                };
                self.send_server_response(now, key, code, data);
            }
            Some(Candidate::Local(code, reason)) => self.respond(now, key, code, reason, &[], None),
            None if cancelled => self.respond(now, key, 487, "Request Terminated", &[], None),
            None => self.respond(
                now,
                key,
                480,
                "Temporarily Unavailable (No Answer)",
                &[],
                None,
            ),
        }
        self.drop_context_if_done(ctx_id);
    }

    /// Timer C fired for a branch (§16.8): cancel it if it rang, else (or if even the CANCEL
    /// brought no final response) give it up as 408.
    pub(crate) fn timer_c(&mut self, now: Instant, ctx_id: CtxId, idx: usize) {
        let Some(b) = self
            .proxy
            .contexts
            .get(&ctx_id)
            .and_then(|c| c.branches.get(idx))
        else {
            return;
        };
        if b.state.is_done() || b.timer_c.is_none_or(|t| t > now) {
            return;
        }
        if b.state.is_ringing() {
            self.cancel_branch(now, ctx_id, idx);
        } else {
            let key = b.client;
            self.tx.remove_client(key);
            self.branch_failed(now, ctx_id, idx, 408, "Request Timeout");
        }
    }
}

/// ACK for a non-2xx final response (§17.1.1.3): same branch and Route set as the INVITE,
/// To from the response.
pub(crate) fn ack_for(req: &sip::Bytes, resp: &Message) -> sip::Bytes {
    let to = resp.value(HeaderName::To).unwrap_or("");
    match Message::parse(req.clone(), false) {
        Ok(req) => request_like(&req, "ACK", Some(to)).finish(None, b""),
        // We wrote this request ourselves, so it parses; were it not to, sending nothing
        // (the edge skips empty data) beats sending garbage.
        Err(_) => sip::Bytes::new(),
    }
}

/// A response as it goes upstream: our Via removed, optionally a new status line, a new
/// body (SDP for the relay) and the Contact of a phone behind NAT set to `fix_contact`.
pub(crate) fn upstream_bytes(
    resp: &Message,
    status: Option<(u16, &str)>,
    body: Option<&[u8]>,
    fix_contact: Option<Flow>,
) -> sip::Bytes {
    upstream_bytes_from(resp, status, body, fix_contact, None)
}

/// `upstream_bytes`, with the From header line the caller sent put back (a provider saw
/// the caller under another identity).
pub(crate) fn upstream_bytes_from(
    resp: &Message,
    status: Option<(u16, &str)>,
    body: Option<&[u8]>,
    fix_contact: Option<Flow>,
    from_line: Option<&str>,
) -> sip::Bytes {
    let mut w = match status {
        Some((code, reason)) => Writer::response(code, reason),
        None => Writer::response(resp.status().unwrap_or(500), resp.reason()),
    };
    let mut first_via = true;
    for h in &resp.headers {
        match h.name {
            HeaderName::Via if first_via => {
                first_via = false;
                let value = resp.text(h.value);
                if let Some(top) = resp.top_via() {
                    let rest = value.get(top.raw.len()..).unwrap_or("").trim_start();
                    if let Some(rest) = rest.strip_prefix(',') {
                        w.header("Via", rest.trim_start());
                    }
                }
            }
            HeaderName::ContentLength => {}
            HeaderName::From if from_line.is_some() => {
                w.line(from_line.unwrap_or(""));
            }
            HeaderName::Contact if fix_contact.is_some() => {
                let value = resp.text(h.value);
                match fix_contact.and_then(|f| natted_contact_for(value, f)) {
                    Some(fixed) => {
                        w.header("Contact", &fixed);
                    }
                    None => {
                        w.line(resp.text(h.line));
                    }
                }
            }
            _ => {
                w.line(resp.text(h.line));
            }
        }
    }
    w.finish(None, body.unwrap_or(resp.body()))
}
