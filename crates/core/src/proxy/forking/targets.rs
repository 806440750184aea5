//! Where each target rings: a user's registered contacts (with their Path and NAT source),
//! a group's members, a dialog's next hop, and another domain's servers once DNS answered
//! (RFC 3263), with the others kept for fail-over.

use super::*;
use crate::proxy::Decision;

impl Core {
    /// A user's registered contacts as hops.
    pub(crate) fn contact_hops(&self, user: &str, now: Instant) -> Vec<Hop> {
        self.location
            .lookup(user, now)
            .into_iter()
            .filter_map(|b| self.binding_hop(b))
            .collect()
    }

    /// Where a request for registered contact `b` goes.
    pub(crate) fn binding_hop(&self, b: &crate::Binding) -> Option<Hop> {
        match b.path.first() {
            // Registered through edge proxies (RFC 3327): the request goes to the first
            // of them, with the whole Path as its Route.
            Some(first) => Some(Hop {
                uri: b.contact.clone(),
                flow: self.resolve(&Uri::parse(first).ok()?)?,
                route: b.path.clone(),
                alternates: vec![],
                trunk: None,
            }),
            None => Some(Hop {
                uri: b.contact.clone(),
                flow: self.binding_flow(b)?,
                route: vec![],
                alternates: vec![],
                trunk: None,
            }),
        }
    }

    /// Where to send a request for a registered contact.
    pub(crate) fn binding_flow(&self, b: &crate::Binding) -> Option<Flow> {
        let uri = Uri::parse(&b.contact).ok()?;
        self.toward_binding(self.resolve(&uri), b, &uri)
    }

    /// `resolved` (the address a URI of `b`'s phone names), corrected by what the phone's
    /// registration taught us.
    pub(crate) fn toward_binding(
        &self,
        resolved: Option<Flow>,
        b: &crate::Binding,
        uri: &Uri<'_>,
    ) -> Option<Flow> {
        if b.outbound().is_some() || b.flow.transport.is_websocket() {
            // RFC 5626 §5.3: an outbound contact is reached over its registered flow only;
            // so is a browser (RFC 7118 §5: its Contact names an `.invalid` host, and no
            // one can open a WebSocket towards it).
            return Some(b.flow);
        }
        let udp = b.flow.transport == Transport::Udp;
        match resolved {
            // Behind NAT the Contact names an address we cannot reach (private, or the
            // phone's own port): requests go where its REGISTER came from, the NAT's
            // binding, from the socket it reached (symmetric signalling).
            Some(f) if udp && f.transport == Transport::Udp && f.remote != b.flow.remote => {
                Some(b.flow)
            }
            Some(mut f) => {
                if b.flow.transport == f.transport && f.transport.is_reliable() {
                    // Reuse the connection the phone registered over while it is open; if it
                    // is gone, the edge connects to the contact address.
                    f.conn = b.flow.conn;
                }
                Some(f)
            }
            // A Contact with a host name we cannot resolve: its REGISTER's source.
            None if udp
                && uri
                    .transport()
                    .is_none_or(|t| t.eq_ignore_ascii_case("udp")) =>
            {
                Some(b.flow)
            }
            None => None,
        }
    }

    /// The decision for a request to GRUU `uri`: on to the instance's contacts, else 480
    /// (a known instance that is not registered now) or 404. `reveal` false (a caller from
    /// another domain) answers 404 for both, so that the answer tells nothing about users,
    /// and reaches only users who accept calls from outside.
    pub(crate) fn to_instance(
        &self,
        now: Instant,
        uri: &Uri<'_>,
        pop: usize,
        hash: &str,
        reveal: bool,
    ) -> Decision {
        let Some(crate::gruu::GruuTarget::Instance { aor, instance }) = self.gruu_target(uri)
        else {
            return Decision::Reply(404, "Not Found");
        };
        if !reveal && !self.plan.accepts_external(&aor) {
            return Decision::Reply(404, "Not Found");
        }
        let hops = self.instance_hops(&aor, &instance, now);
        if hops.is_empty() {
            return if reveal {
                Decision::Reply(480, "Temporarily Unavailable")
            } else {
                Decision::Reply(404, "Not Found")
            };
        }
        Decision::Forward {
            hops,
            pop,
            hash: hash.to_string(),
        }
    }

    /// The next hop of a request inside a dialog whose Request-URI is `uri`: the flow of the
    /// registration with that very contact (a phone behind NAT), else the URI's address.
    pub(crate) fn dialog_hop(&self, uri: &Uri<'_>, now: Instant) -> Option<Flow> {
        if uri.param("gr").is_some() && self.is_local_domain(uri) {
            // A GRUU of ours (a browser's dialog Contact, RFC 5627): its instance.
            return match self.gruu_target(uri)? {
                crate::gruu::GruuTarget::Instance { aor, instance } => self
                    .instance_hops(&aor, &instance, now)
                    .first()
                    .map(|h| h.flow),
                crate::gruu::GruuTarget::Unknown => None,
            };
        }
        let resolved = self.resolve(uri);
        match self.location.by_address(uri, now) {
            Some(b) => self.toward_binding(resolved, b, uri),
            None => resolved,
        }
    }

    /// Every phone a group member reaches, for a group ringing all at once. Users in
    /// do-not-disturb and the caller are left out; nested groups are flattened (loops were
    /// refused when the plan was built; `depth` guards anyway).
    pub(crate) fn member_hops(
        &self,
        target: &str,
        caller: Option<&str>,
        now: Instant,
        depth: usize,
    ) -> Vec<Hop> {
        if depth > 8 {
            return vec![];
        }
        match self.plan.target(target, None) {
            Dialed::Local(Target::User(u)) => {
                if self.plan.is_dnd(&u) || caller == Some(u.as_str()) {
                    return vec![];
                }
                self.contact_hops(&u, now)
            }
            Dialed::Local(Target::Group(g)) => self
                .plan
                .group(&g)
                .map(|g| {
                    g.members
                        .iter()
                        .flat_map(|m| self.member_hops(&m.target, caller, now, depth + 1))
                        .collect()
                })
                .unwrap_or_default(),
            Dialed::Remote(uri) => self.remote_hop(&uri, now).into_iter().collect(),
            _ => vec![],
        }
    }

    /// A hop for a URI of another domain: an IP address, or a name whose DNS answer is
    /// still cached (its other targets become the branch's fail-over list).
    pub(crate) fn remote_hop(&self, uri: &str, now: Instant) -> Option<Hop> {
        let u = Uri::parse(uri).ok()?;
        if let Some(flow) = self.resolve(&u) {
            return Some(Hop {
                uri: uri.to_string(),
                flow,
                route: vec![],
                alternates: vec![],
                trunk: None,
            });
        }
        let (targets, until) = self.proxy.dns_cache.get(&dns_query(uri)?)?;
        if *until <= now {
            return None;
        }
        self.hop_from_targets(uri, targets)
    }

    /// The first usable target as a hop, the others as its fail-over list.
    pub(crate) fn hop_from_targets(
        &self,
        uri: &str,
        targets: &[(Transport, SocketAddr)],
    ) -> Option<Hop> {
        let mut flows = targets.iter().filter_map(|(t, addr)| {
            let l = self.listener_for(*t, addr)?;
            Some(Flow {
                transport: *t,
                local: l.addr,
                remote: *addr,
                conn: None,
            })
        });
        let flow = flows.next()?;
        Some(Hop {
            uri: uri.to_string(),
            flow,
            route: vec![],
            alternates: flows.collect(),
            trunk: None,
        })
    }

    /// DNS answered a hunt's lookup: ring the first target (the others in reserve), or count
    /// the stage as failed when there is none.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        id: u64,
        targets: Vec<(Transport, SocketAddr)>,
        ttl: Duration,
    ) {
        if self.trunk_resolved(now, id, &targets, ttl) {
            return;
        }
        let Some(p) = self.proxy.resolving.remove(&id).filter(|p| !p.enum_lookup) else {
            return;
        };
        if let Some(q) = dns_query(&p.uri) {
            if !targets.is_empty() {
                // Kept at least a few seconds (ACKs and retries follow), at most an hour.
                let ttl = ttl.clamp(Duration::from_secs(5), Duration::from_secs(3600));
                if self.proxy.dns_cache.len() >= DNS_CACHE_MAX {
                    // Bounded whatever users dial: old answers go first, then all.
                    self.proxy.dns_cache.retain(|_, (_, until)| *until > now);
                    if self.proxy.dns_cache.len() >= DNS_CACHE_MAX {
                        self.proxy.dns_cache.clear();
                    }
                }
                self.proxy.dns_cache.insert(q, (targets.clone(), now + ttl));
            }
        }
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
        match self.hop_from_targets(&p.uri, &targets) {
            Some(hop) => {
                let headers = ctx.hunt.as_ref().map(|h| h.headers()).unwrap_or_default();
                self.add_branches(now, p.ctx_id, vec![hop], &headers);
            }
            None => {
                tracing::info!(uri = %p.uri, "DNS found no server for the target");
                // Not our overload, so not 503 (RFC 3261 §16.7 step 6: a proxy passes no 503
                // upstream): the target cannot be reached.
                if let Some(ctx) = self.proxy.contexts.get_mut(&p.ctx_id) {
                    if ctx
                        .best
                        .as_ref()
                        .is_none_or(|b| crate::proxy::rank(500) < crate::proxy::rank(b.status()))
                    {
                        ctx.best =
                            Some(crate::proxy::Candidate::Local(500, "Cannot Resolve Target"));
                    }
                }
                self.hunt_stage_over(now, p.ctx_id, Some(500));
            }
        }
    }
}
