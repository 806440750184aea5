//! Routing decisions that depend only on the request and our own addresses: is a URI ours,
//! how many top Route entries are ours (loose routing, RFC 3261 §16.4), where a URI's next hop
//! is, and the loop-detection hash that goes into our branches (§16.6 step 8, §16.3 step 4).

use super::{Core, Flow};
use crate::Transport;
use sip::grammar::{name_addr_list, token_list};
use sip::header::HeaderName;
use sip::message::Message;
use sip::uri::{Host, Scheme, Uri};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where a request goes next: the Request-URI to write and the flow to send on.
#[derive(Clone, Debug)]
pub(crate) struct Hop {
    pub uri: String,
    pub flow: Flow,
    /// Route entries to put on top (a registration's Path, RFC 3327).
    pub route: Vec<String>,
    /// Where to try next if `flow` fails (the other targets DNS gave, RFC 3263 §4.3).
    pub alternates: Vec<Flow>,
    /// The provider this hop goes to (its challenges are answered, its caps count).
    pub trunk: Option<String>,
}

impl Core {
    /// True when `host:port` names this server: the domain, or one of our addresses.
    pub(crate) fn is_us(&self, host: &Host<'_>, port: Option<u16>) -> bool {
        let port_ok = |p: Option<u16>| match p {
            None => true,
            Some(p) => self.cfg.listeners.iter().any(|l| l.addr.port() == p),
        };
        match host {
            Host::Name(n) => {
                (n.eq_ignore_ascii_case(&self.cfg.domain)
                    || self.cfg.domains.iter().any(|d| d.eq_ignore_ascii_case(n)))
                    && port_ok(port)
            }
            Host::Ip(ip) => {
                self.cfg.listeners.iter().any(|l| {
                    // Behind a wildcard listener, loopback reaches us too.
                    let same = l.host == *ip
                        || l.addr.ip() == *ip
                        || (l.addr.ip().is_unspecified() && ip.is_loopback());
                    // No port in the URI: lenient, any of ours (phones often omit it).
                    same && port.is_none_or(|p| l.addr.port() == p)
                }) || self.agent.trunks.is_public_address(*ip, port)
            }
        }
    }

    /// True when the URI's host is the domain we serve (with any of our ports or none).
    pub(crate) fn is_local_domain(&self, uri: &Uri<'_>) -> bool {
        uri.is_sip() && self.is_us(&uri.host, uri.port)
    }

    /// How many Route entries at the top are ours (we Record-Routed this dialog).
    pub(crate) fn our_routes(&self, msg: &Message) -> usize {
        let mut n = 0;
        for v in msg.values(HeaderName::Route) {
            for r in name_addr_list(v) {
                match r {
                    Ok(r)
                        if r.uri.is_sip()
                            && r.uri.user.is_none()
                            && self.is_us(&r.uri.host, r.uri.port) =>
                    {
                        n += 1
                    }
                    _ => return n,
                }
            }
        }
        n
    }

    /// The first Route entry after the `skip` ones that are ours.
    pub(crate) fn next_route<'m>(&self, msg: &'m Message, skip: usize) -> Option<&'m str> {
        msg.values(HeaderName::Route)
            .flat_map(name_addr_list)
            .nth(skip)
            .and_then(Result::ok)
            .map(|r| r.uri.raw)
    }

    /// Resolves a URI to a flow. Issue-2 scope: IP literals and `localhost`; names wait for
    /// RFC 3263 resolution. `conn` prefers an existing stream connection.
    pub(crate) fn resolve(&self, uri: &Uri<'_>) -> Option<Flow> {
        // sips: only ever over TLS (RFC 3261 §26.2).
        let transport = match (uri.scheme, uri.transport()) {
            (Scheme::Sips, _) => Transport::Tls,
            (Scheme::Sip, None) => Transport::Udp,
            (Scheme::Sip, Some(t)) => Transport::parse(t)?,
            _ => return None,
        };
        let ip = match uri.host {
            Host::Ip(ip) => ip,
            Host::Name(n) if n.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Host::Name(_) => return None,
        };
        if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return None;
        }
        let default_port = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let remote = SocketAddr::new(ip, uri.port.unwrap_or(default_port));
        let listener = self.listener_for(transport, &remote)?;
        Some(Flow {
            transport,
            local: listener.addr,
            remote,
            conn: None,
        })
    }

    /// Option tags of Proxy-Require we do not support (RFC 3261 §16.3 step 5: 420).
    pub(crate) fn unsupported_proxy_require<'m>(&self, msg: &'m Message) -> Vec<&'m str> {
        msg.values(HeaderName::ProxyRequire)
            .flat_map(token_list)
            .collect()
    }

    /// Hash of what identifies a request as it reaches us (R-URI, tags, Call-ID, CSeq,
    /// Route, Proxy-Require); it goes into our branch so the same request coming back is
    /// recognised as a loop while a spiral (changed R-URI) is not.
    pub(crate) fn loop_hash(&self, msg: &Message) -> String {
        let mut h = self.origin.keys.hasher(crate::keys::Purpose::Loop);
        h.write(msg.uri_str());
        h.write(msg.from().and_then(|f| f.tag()).unwrap_or(""));
        h.write(msg.to().and_then(|t| t.tag()).unwrap_or(""));
        h.write(msg.call_id());
        h.write_u64(msg.cseq().map_or(0, |c| c.0) as u64);
        for v in msg.values(HeaderName::Route) {
            h.write(v);
        }
        for v in msg.values(HeaderName::ProxyRequire) {
            h.write(v);
        }
        let mut out = String::with_capacity(12);
        super::push_hex(&mut out, h.finish() & 0xffff_ffff_ffff, 12);
        out
    }

    /// §16.3 step 4: a Via of ours whose branch carries this request's loop hash.
    pub(crate) fn is_loop(&self, msg: &Message, hash: &str) -> bool {
        let mut prefix = String::with_capacity(8 + hash.len());
        prefix.push_str("z9hG4bK");
        prefix.push_str(hash);
        prefix.push('.');
        // Almost never there: a substring search spares parsing every Via.
        if !msg
            .values(HeaderName::Via)
            .any(|v| v.contains(prefix.as_str()))
        {
            return false;
        }
        msg.vias().flatten().any(|v| {
            self.is_us(&v.host, v.port) && v.branch().is_some_and(|b| b.starts_with(&prefix))
        })
    }
}
