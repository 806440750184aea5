//! What the server tells its operator about the setup: the summary printed at start (what
//! was chosen and why, and what to do next) and the DNS records that let other domains find
//! this one. Shared by `serve` and `hedgewitch doctor`; text only, no I/O.

use crate::config::{Config, DomainOrigin, Transport};
use std::net::IpAddr;

/// A listening socket as started: its transport, port and the address written in headers.
#[derive(Clone, Copy, Debug)]
pub struct Served {
    /// UDP, TCP or TLS.
    pub transport: Transport,
    /// The port it listens on.
    pub port: u16,
    /// The address it is bound to (possibly a wildcard).
    pub bound: std::net::SocketAddr,
    /// The address written in Via and Record-Route for it.
    pub advertised: IpAddr,
}

/// Why a domain cannot be found by other servers, if it cannot: a bare host name (no dot),
/// `localhost`, or a name reserved for local use.
pub fn unreachable_domain(domain: &str) -> Option<&'static str> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if d.parse::<IpAddr>().is_ok() || d.starts_with('[') {
        return Some("an IP address, not a domain: users' addresses will change with it");
    }
    if !d.contains('.') {
        return Some("a bare host name that no other server can resolve");
    }
    if d == "localhost"
        || [".local", ".localdomain", ".lan", ".home.arpa", ".internal"]
            .iter()
            .any(|s| d.ends_with(s))
    {
        return Some("a name for local networks only, which other servers cannot resolve");
    }
    None
}

/// The DNS records (zone-file lines) that make `domain` reachable at `addresses` (RFC 3263:
/// NAPTR of one order, SRV per transport, A/AAAA for the server's host name).
pub fn dns_records(domain: &str, served: &[(Transport, u16)], addresses: &[IpAddr]) -> Vec<String> {
    let d = domain.trim_end_matches('.');
    let host = format!("sip.{d}.");
    let mut lines = vec![];
    let services = [
        (Transport::Tls, "SIPS+D2T", "_sips._tcp", 10),
        (Transport::Tcp, "SIP+D2T", "_sip._tcp", 20),
        (Transport::Udp, "SIP+D2U", "_sip._udp", 30),
    ];
    for (t, service, prefix, preference) in services {
        if served.iter().any(|(s, _)| *s == t) {
            // One order for all, so that a client may pick any transport it supports.
            lines.push(format!(
                "{d}. NAPTR 10 {preference} \"s\" \"{service}\" \"\" {prefix}.{d}."
            ));
        }
    }
    for (t, _, prefix, _) in services {
        if let Some((_, port)) = served.iter().find(|(s, _)| *s == t) {
            lines.push(format!("{prefix}.{d}. SRV 10 10 {port} {host}"));
        }
    }
    for a in addresses {
        let kind = if a.is_ipv4() { "A" } else { "AAAA" };
        lines.push(format!("{host} {kind} {a}"));
    }
    lines
}

/// Addresses worth publishing: the advertised ones that other hosts on the Internet can
/// reach (not loopback, private, carrier-grade NAT, link-local or unspecified). A server
/// behind its own NAT has none until `advertise` names its public address.
pub fn public_addresses(served: &[Served]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![];
    for s in served {
        let a = s.advertised;
        let usable = !a.is_unspecified() && !sip::sdp::is_private(a);
        if usable && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The summary `serve` prints once it listens: what it chose and where that came from, and
/// what to do next.
pub fn banner(cfg: &Config, served: &[Served], users: usize, relay: Option<(u16, u16)>) -> String {
    use std::fmt::Write;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "hedgewitch {} is serving sip:…@{}",
        env!("CARGO_PKG_VERSION"),
        cfg.domain
    );
    let _ = writeln!(
        b,
        "  domain    {} (from {})",
        cfg.domain,
        cfg.domain_origin.describe()
    );
    for d in &cfg.domains {
        let _ = writeln!(b, "            {d} (also served, from the config file)");
    }
    let sockets: Vec<String> = served
        .iter()
        .filter(|s| !s.transport.is_websocket())
        .map(|s| {
            if s.bound.ip().is_unspecified() {
                format!("{}:{} (as {})", s.transport.as_str(), s.bound, s.advertised)
            } else {
                format!("{}:{}", s.transport.as_str(), s.bound)
            }
        })
        .collect();
    let _ = writeln!(b, "  SIP       {}", sockets.join(", "));
    let pages: Vec<String> = served
        .iter()
        .filter(|s| s.transport.is_websocket())
        .map(|s| {
            let scheme = if s.transport == Transport::Wss {
                "https"
            } else {
                "http"
            };
            match s.advertised {
                IpAddr::V6(a) => format!("{scheme}://[{a}]:{}/", s.port),
                a => format!("{scheme}://{a}:{}/", s.port),
            }
        })
        .collect();
    if !pages.is_empty() {
        let _ = writeln!(
            b,
            "  web       {} (the softphone page, and SIP over WebSocket)",
            pages.join(", ")
        );
    }
    if cfg.turn.enabled && !cfg.turn.listen.is_empty() {
        let turn: Vec<String> = cfg
            .turn
            .listen
            .iter()
            .map(|l| format!("{}:{}", l.transport.as_str(), l.addr))
            .collect();
        let _ = writeln!(b, "  TURN      {}", turn.join(", "));
    }
    if !cfg.stun.is_empty() {
        let stun: Vec<String> = cfg.stun.iter().map(|l| format!("udp:{}", l.addr)).collect();
        let shared = cfg.turn.enabled
            && cfg
                .stun
                .iter()
                .any(|s| cfg.turn.listen.iter().any(|t| t.addr == s.addr));
        let note = if shared {
            "the TURN sockets there answer it, and so do the SIP ports"
        } else {
            "and on the SIP ports"
        };
        let _ = writeln!(b, "  STUN      {} ({note})", stun.join(", "));
    }
    match relay {
        Some((lo, hi)) => {
            let _ = writeln!(
                b,
                "  relay     {} mode, UDP ports {lo}-{hi}",
                format!("{:?}", cfg.relay.mode).to_lowercase()
            );
        }
        None => {
            let _ = writeln!(b, "  relay     off");
        }
    }
    let _ = writeln!(
        b,
        "  data      {} ({users} user{})",
        cfg.data_dir.display(),
        if users == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        b,
        "  config    {}",
        cfg.path
            .as_ref()
            .map_or("none: built-in defaults".to_string(), |p| p
                .display()
                .to_string())
    );
    let tls = served.iter().any(|s| s.transport == Transport::Tls);
    let _ = writeln!(
        b,
        "  TLS       {}",
        match (&cfg.tls.certificate, tls) {
            (Some(c), true) => format!("on, certificate {}", c.display()),
            (Some(c), false) => format!(
                "certificate {} set, but no tls: listener in `listen`",
                c.display()
            ),
            (None, _) if served.iter().any(|s| s.transport == Transport::Wss) => format!(
                "a self-signed certificate in {} for the web page (browsers warn about it \
                 once; set [tls] for a real one)",
                cfg.data_dir.join("tls").display()
            ),
            (None, _) =>
                "off (`hedgewitch tls self-signed` makes a certificate for trials)".to_string(),
        }
    );
    if let Some(why) = unreachable_domain(&cfg.domain) {
        let _ = writeln!(
            b,
            "warning: the domain `{}` is {why}; phones can register by address, but no one \
             elsewhere can reach sip:user@{}. Restart with --domain YOUR.DOMAIN (or set \
             `domain` in the config) before adding users.",
            cfg.domain, cfg.domain
        );
    } else if cfg.domain_origin == DomainOrigin::HostName {
        let _ = writeln!(
            b,
            "note: no domain was named, so this machine's host name is used; --domain or the \
             config's `domain` sets another."
        );
    }
    let _ = writeln!(b, "next:");
    if users == 0 {
        let _ = writeln!(
            b,
            "  - add the first user:  hedgewitch user add alice --extension 101"
        );
    }
    if let Some(page) = pages.first() {
        let _ = writeln!(
            b,
            "  - or call from a browser: open {page} and log in with a user's name and password"
        );
    }
    let registrar = served
        .iter()
        .find(|s| s.transport == Transport::Udp)
        .or(served.first())
        .map(|s| {
            let a = s.advertised;
            match a {
                IpAddr::V6(_) => format!("[{a}]:{}", s.port),
                _ => format!("{a}:{}", s.port),
            }
        })
        .unwrap_or_default();
    let _ = writeln!(
        b,
        "  - in each phone: user = the user's name, domain = {}, the password, and \
         registrar/outbound proxy = {registrar} (UDP or TCP)",
        cfg.domain
    );
    let ports: Vec<(Transport, u16)> = served.iter().map(|s| (s.transport, s.port)).collect();
    let addresses = public_addresses(served);
    if addresses.is_empty() {
        let _ = writeln!(
            b,
            "  - for other domains to find this one, publish its NAPTR/SRV/A records (`hedgewitch \
             doctor` prints them once the server has an address others can reach; set \
             `advertise` if it is behind port forwarding)"
        );
    } else {
        let _ = writeln!(
            b,
            "  - for other domains to find this one, publish in DNS (`hedgewitch doctor` checks them):"
        );
        for line in dns_records(&cfg.domain, &ports, &addresses) {
            let _ = writeln!(b, "      {line}");
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_others_cannot_resolve() {
        assert!(unreachable_domain("vm").is_some());
        assert!(unreachable_domain("printer.local").is_some());
        assert!(unreachable_domain("127.0.0.1").is_some());
        assert!(unreachable_domain("example.org").is_none());
    }

    #[test]
    fn records_of_one_naptr_order_and_an_srv_per_transport() {
        let r = dns_records(
            "example.org",
            &[
                (Transport::Udp, 5060),
                (Transport::Tcp, 5060),
                (Transport::Tls, 5061),
            ],
            &["198.51.100.7".parse().unwrap()],
        );
        assert_eq!(
            r,
            [
                "example.org. NAPTR 10 10 \"s\" \"SIPS+D2T\" \"\" _sips._tcp.example.org.",
                "example.org. NAPTR 10 20 \"s\" \"SIP+D2T\" \"\" _sip._tcp.example.org.",
                "example.org. NAPTR 10 30 \"s\" \"SIP+D2U\" \"\" _sip._udp.example.org.",
                "_sips._tcp.example.org. SRV 10 10 5061 sip.example.org.",
                "_sip._tcp.example.org. SRV 10 10 5060 sip.example.org.",
                "_sip._udp.example.org. SRV 10 10 5060 sip.example.org.",
                "sip.example.org. A 198.51.100.7",
            ]
        );
        // The records parse as the resolver reads them: one order, TLS preferred.
        let naptr = crate::dns::order_naptr(
            ["SIPS+D2T", "SIP+D2T", "SIP+D2U"]
                .iter()
                .zip([10, 20, 30])
                .map(|(s, p)| crate::dns::Naptr {
                    order: 10,
                    preference: p,
                    flags: "s".into(),
                    service: s.to_string(),
                    replacement: "x".into(),
                })
                .collect(),
        );
        assert_eq!(naptr.len(), 3);
        assert_eq!(naptr[0].0, Transport::Tls);
    }
}
