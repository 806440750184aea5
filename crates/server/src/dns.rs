//! Finding another domain's SIP server (RFC 3263): NAPTR, then SRV (priority, then weight),
//! then A/AAAA, honouring a port or transport the URI names. The ordering rules are plain
//! functions (tested here); the lookups go through hickory-resolver, which caches answers
//! for their TTL. The resolver reads the system configuration unless `[dns] servers` names
//! servers to ask.

use crate::core::numbers::EnumRecord;
use crate::core::Transport;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::Resolver;
use std::net::SocketAddr;
use std::time::Duration;

/// Where a request for a domain may go, in the order to try.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Transport and address of each server to try, best first.
    pub targets: Vec<(Transport, SocketAddr)>,
    /// How long the answer may be reused (the shortest TTL met).
    pub ttl: Duration,
}

pub use crate::core::DnsQuery as Query;

/// A domain's records as other servers see them.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// NAPTR services usable for SIP (lowest order only), with their SRV names.
    pub naptr: Vec<(Transport, String)>,
    /// SRV records found under `_sip._udp`, `_sip._tcp` and `_sips._tcp`.
    pub srv: Vec<(Transport, Srv)>,
    /// Where requests for the domain go, RFC 3263 order.
    pub targets: Vec<(Transport, SocketAddr)>,
}

/// A NAPTR record as RFC 3263 reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naptr {
    /// Lower first; only the lowest order among usable records is considered.
    pub order: u16,
    /// Lower first, within one order.
    pub preference: u16,
    /// Only `"s"` (the replacement is an SRV name) is used.
    pub flags: String,
    /// The service field, e.g. `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`.
    pub service: String,
    /// The SRV name to look up next.
    pub replacement: String,
}

/// An SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    /// Lower first (RFC 2782).
    pub priority: u16,
    /// Relative chance of being tried first among records of one priority.
    pub weight: u16,
    /// The port the server listens on.
    pub port: u16,
    /// The server's host name; `"."` means no service here.
    pub target: String,
}

/// The transports we can use, with their NAPTR service and SRV prefix.
const SERVICES: [(Transport, &str, &str); 3] = [
    (Transport::Udp, "SIP+D2U", "_sip._udp"),
    (Transport::Tcp, "SIP+D2T", "_sip._tcp"),
    (Transport::Tls, "SIPS+D2T", "_sips._tcp"),
];

/// RFC 3263 §4.1: NAPTR records for SIP services we support, flag "s"; of those, only the
/// lowest order counts (RFC 3403: records of another order are never considered once one
/// matches), by preference. Each gives the SRV name to ask and its transport.
pub fn order_naptr(mut records: Vec<Naptr>) -> Vec<(Transport, String)> {
    records.retain(|r| r.flags.eq_ignore_ascii_case("s"));
    records.sort_by_key(|r| (r.order, r.preference));
    let usable: Vec<(u16, Transport, String)> = records
        .into_iter()
        .filter_map(|r| {
            let t = SERVICES
                .iter()
                .find(|(_, s, _)| s.eq_ignore_ascii_case(&r.service))?
                .0;
            Some((r.order, t, r.replacement))
        })
        .collect();
    let first = usable.first().map(|(o, _, _)| *o);
    usable
        .into_iter()
        .filter(|(o, _, _)| Some(*o) == first)
        .map(|(_, t, r)| (t, r))
        .collect()
}

/// RFC 2782: lowest priority first; within a priority, a weighted random order (`random`
/// gives numbers in 0..=total, one per pick). A lone "." target means no service.
pub fn order_srv(mut records: Vec<Srv>, mut random: impl FnMut(u32) -> u32) -> Vec<Srv> {
    records.retain(|r| r.target != "." && !r.target.is_empty());
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        // Zero weights first, so they keep a small chance (RFC 2782).
        let mut group: Vec<Srv> = rest[..n].to_vec();
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total);
            let mut sum = 0;
            let i = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
        rest = &rest[n..];
    }
    out
}

fn name_text(n: &impl std::fmt::Display) -> String {
    let s = n.to_string();
    s.strip_suffix('.').map(str::to_string).unwrap_or(s)
}

/// The resolver, shared by every lookup.
#[derive(Clone)]
pub struct Dns {
    resolver: Resolver<TokioRuntimeProvider>,
}

impl Dns {
    /// The system's resolver configuration, or the given servers (UDP and TCP).
    pub fn new(servers: &[SocketAddr]) -> Result<Dns, String> {
        let builder = if servers.is_empty() {
            Resolver::builder_tokio().map_err(|e| format!("DNS: {e}"))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder.build().map_err(|e| format!("DNS: {e}"))?;
        Ok(Dns { resolver })
    }

    /// Every target for `q`, in RFC 3263 order; empty when DNS knows none.
    pub async fn resolve(&self, q: &Query) -> Resolved {
        let mut ttl = Duration::from_secs(3600);
        let host = q.host.trim_end_matches('.');
        let fqdn = format!("{host}.");
        // §4.2: a port in the URI means A/AAAA straight away.
        if let Some(port) = q.port {
            let t = q.transport.unwrap_or(Transport::Udp);
            let targets = self.addresses(&fqdn, port, t, &mut ttl).await;
            return Resolved { targets, ttl };
        }
        let mut srv_names: Vec<(Transport, String)> = vec![];
        if q.transport.is_none() {
            srv_names = order_naptr(self.naptr(&fqdn, &mut ttl).await);
        } else if let Some(t) = q.transport {
            // A transport (or sips:) fixed by the URI: only NAPTR entries for it count.
            srv_names = order_naptr(self.naptr(&fqdn, &mut ttl).await)
                .into_iter()
                .filter(|(nt, _)| *nt == t)
                .collect();
        }
        if srv_names.is_empty() {
            // No NAPTR (or a transport given): SRV for each transport, ours in order.
            srv_names = SERVICES
                .iter()
                .filter(|(t, _, _)| match q.transport {
                    Some(want) => want == *t,
                    None => *t != Transport::Tls,
                })
                .map(|(t, _, prefix)| (*t, format!("{prefix}.{host}")))
                .collect();
        }
        let mut targets = vec![];
        for (t, name) in &srv_names {
            let records = self
                .srv(&format!("{}.", name.trim_end_matches('.')), &mut ttl)
                .await;
            let ordered = order_srv(records, |total| {
                if total == 0 {
                    0
                } else {
                    u32::from_le_bytes(rand4()) % (total + 1)
                }
            });
            for r in ordered {
                let addrs = self
                    .addresses(&format!("{}.", r.target), r.port, *t, &mut ttl)
                    .await;
                targets.extend(addrs);
            }
        }
        if targets.is_empty() {
            // §4.2: no SRV either: the host's addresses on the default port.
            let t = q.transport.unwrap_or(Transport::Udp);
            let port = if t == Transport::Tls { 5061 } else { 5060 };
            targets = self.addresses(&fqdn, port, t, &mut ttl).await;
        }
        targets.dedup();
        Resolved { targets, ttl }
    }

    /// What DNS publishes for a domain of ours, for `hedgewitch doctor`: its NAPTR services,
    /// its SRV records per transport, and where RFC 3263 sends requests for it (UDP/TCP and
    /// TLS).
    pub async fn published(&self, domain: &str) -> Published {
        let mut ttl = Duration::from_secs(3600);
        let host = domain.trim_end_matches('.');
        let naptr = order_naptr(self.naptr(&format!("{host}."), &mut ttl).await);
        let mut srv = vec![];
        for (t, _, prefix) in SERVICES {
            for r in self.srv(&format!("{prefix}.{host}."), &mut ttl).await {
                srv.push((t, r));
            }
        }
        let mut targets = vec![];
        for transport in [None, Some(Transport::Tls)] {
            let q = Query {
                host: host.to_string(),
                port: None,
                transport,
            };
            targets.extend(self.resolve(&q).await.targets);
        }
        targets.dedup();
        Published {
            naptr,
            srv,
            targets,
        }
    }

    /// The records of one type at `name`, each read by `read`; the TTL kept is the
    /// shortest seen.
    async fn records<T>(
        &self,
        name: &str,
        kind: RecordType,
        ttl: &mut Duration,
        read: impl Fn(&RData) -> Option<T>,
    ) -> Vec<T> {
        let Ok(l) = self.resolver.lookup(name, kind).await else {
            return vec![];
        };
        l.answers()
            .iter()
            .filter_map(|r| {
                *ttl = (*ttl).min(Duration::from_secs(u64::from(r.ttl)));
                read(&r.data)
            })
            .collect()
    }

    /// ENUM (RFC 6116): the NAPTR records of the first of `domains` that has any, and the
    /// shortest TTL met; none when no domain has records or DNS fails.
    pub async fn enum_records(&self, domains: &[String]) -> (Vec<EnumRecord>, Duration) {
        let mut ttl = Duration::from_secs(3600);
        for d in domains {
            let name = format!("{}.", d.trim_end_matches('.'));
            let found = self
                .records(&name, RecordType::NAPTR, &mut ttl, |d| match d {
                    RData::NAPTR(n) => Some(EnumRecord {
                        order: n.order,
                        preference: n.preference,
                        flags: String::from_utf8_lossy(&n.flags).into_owned(),
                        services: String::from_utf8_lossy(&n.services).into_owned(),
                        regexp: String::from_utf8_lossy(&n.regexp).into_owned(),
                    }),
                    _ => None,
                })
                .await;
            if !found.is_empty() {
                return (found, ttl);
            }
        }
        // A miss is kept for a while too (negative caching, a minute).
        (vec![], Duration::from_secs(60))
    }

    async fn naptr(&self, name: &str, ttl: &mut Duration) -> Vec<Naptr> {
        self.records(name, RecordType::NAPTR, ttl, |d| match d {
            RData::NAPTR(n) => Some(Naptr {
                order: n.order,
                preference: n.preference,
                flags: String::from_utf8_lossy(&n.flags).into_owned(),
                service: String::from_utf8_lossy(&n.services).into_owned(),
                replacement: name_text(&n.replacement),
            }),
            _ => None,
        })
        .await
    }

    async fn srv(&self, name: &str, ttl: &mut Duration) -> Vec<Srv> {
        self.records(name, RecordType::SRV, ttl, |d| match d {
            RData::SRV(s) => Some(Srv {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                target: name_text(&s.target),
            }),
            _ => None,
        })
        .await
    }

    async fn addresses(
        &self,
        name: &str,
        port: u16,
        t: Transport,
        ttl: &mut Duration,
    ) -> Vec<(Transport, SocketAddr)> {
        let Ok(l) = self.resolver.lookup_ip(name).await else {
            return vec![];
        };
        let left = l
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        *ttl = (*ttl).min(left);
        l.iter().map(|ip| (t, SocketAddr::new(ip, port))).collect()
    }
}

fn rand4() -> [u8; 4] {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naptr(order: u16, pref: u16, service: &str, repl: &str) -> Naptr {
        Naptr {
            order,
            preference: pref,
            flags: "s".into(),
            service: service.into(),
            replacement: repl.into(),
        }
    }

    #[test]
    fn naptr_order_and_supported_services() {
        // The lowest order with a service we support wins, by preference; other orders,
        // unknown services and flags other than "s" are not considered.
        let got = order_naptr(vec![
            naptr(50, 50, "SIP+D2U", "_sip._udp.example.org"),
            naptr(90, 50, "SIP+D2T", "_sip._tcp.example.org"),
            naptr(50, 10, "SIP+D2T", "_sip._tcp.first.example.org"),
            Naptr {
                flags: "u".into(),
                ..naptr(1, 1, "SIP+D2U", "x")
            },
            naptr(5, 5, "SIP+D2W", "_sip._ws.example.org"),
        ]);
        assert_eq!(
            got,
            vec![
                (Transport::Tcp, "_sip._tcp.first.example.org".to_string()),
                (Transport::Udp, "_sip._udp.example.org".to_string()),
            ]
        );
        let tls = order_naptr(vec![
            naptr(10, 10, "SIPS+D2T", "_sips._tcp.example.org"),
            naptr(20, 10, "SIP+D2U", "_sip._udp.example.org"),
        ]);
        assert_eq!(
            tls,
            vec![(Transport::Tls, "_sips._tcp.example.org".to_string())]
        );
    }

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn srv_priority_then_weight() {
        let records = vec![
            srv(20, 0, "backup"),
            srv(10, 60, "big"),
            srv(10, 40, "small"),
            srv(10, 0, "zero"),
            srv(30, 0, "."),
        ];
        // The random pick decides within priority 10; "backup" always comes last and "."
        // (no service) never.
        let low = order_srv(records.clone(), |_| 0);
        let names: Vec<_> = low.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(names, ["zero", "big", "small", "backup"]);
        let high = order_srv(records, |total| total);
        let names: Vec<_> = high.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(names, ["small", "big", "zero", "backup"]);
        // Weighted: over many picks "big" (60) comes first about 60% of the time.
        let mut seed = 12345u32;
        let mut big_first = 0;
        for _ in 0..1000 {
            let o = order_srv(vec![srv(1, 60, "big"), srv(1, 40, "small")], |total| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 8) % (total + 1)
            });
            if o[0].target == "big" {
                big_first += 1;
            }
        }
        assert!((500..700).contains(&big_first), "{big_first}");
    }
}
