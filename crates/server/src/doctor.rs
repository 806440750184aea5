//! `hedgewitch doctor`: looks at a setup the way a phone, another domain's server and the
//! operating system see it, and says what is wrong and how to fix it. Each check is its own
//! function returning findings; this module does I/O (the store, the control socket, DNS,
//! certificate files, trial binds and /proc), never the daemon's own state.

use crate::config::{Config, DomainOrigin, Listen, Transport};
use crate::setup;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Checked and fine.
    Ok,
    /// Works, but something a user would trip over later.
    Warning,
    /// Something does not work.
    Problem,
}

/// One thing found, with the fix when there is one.
#[derive(Clone, Debug)]
pub struct Finding {
    /// How bad it is.
    pub level: Level,
    /// What was found, in a sentence.
    pub what: String,
    /// What to do about it, if anything can be done.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        }
    }

    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warning,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    fn problem(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Problem,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Certificates expiring sooner than this are reported.
const RENEW_WITHIN: Duration = Duration::from_secs(30 * 24 * 3600);
/// DNS lookups give up after this long.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// Every check, in the order a new operator would fix things.
pub fn examine(cfg: &Config) -> Vec<Finding> {
    let mut out = vec![];
    let daemon = running_daemon(cfg);
    out.extend(check_domain(cfg));
    out.push(match &daemon {
        Some(pid) => Finding::ok(format!("the server is running (pid {pid})")),
        None => Finding::problem(
            "the server is not running",
            "start it: hedgewitch serve (or systemctl start hedgewitch)",
        ),
    });
    out.extend(check_users(cfg));
    out.extend(check_ports(cfg, daemon));
    out.extend(check_dns(cfg));
    out.extend(check_tls(cfg));
    out
}

/// The running daemon's pid, when its control socket answers.
fn running_daemon(cfg: &Config) -> Option<u32> {
    let v = crate::control::request(&cfg.control_path(), crate::control::Command::Status).ok()?;
    v.get("pid").and_then(|p| p.as_u64()).map(|p| p as u32)
}

fn check_domain(cfg: &Config) -> Vec<Finding> {
    let fix = format!(
        "name your domain: hedgewitch serve --domain YOUR.DOMAIN, or `domain = \"YOUR.DOMAIN\"` \
         in {} (a data folder without users takes a new domain)",
        cfg.path
            .as_ref()
            .map_or("the config file".to_string(), |p| p.display().to_string())
    );
    match setup::unreachable_domain(&cfg.domain) {
        Some(why) => vec![Finding::problem(
            format!(
                "the domain `{}` (from {}) is {why}",
                cfg.domain,
                cfg.domain_origin.describe()
            ),
            fix,
        )],
        None if cfg.domain_origin == DomainOrigin::HostName => vec![Finding::warn(
            format!(
                "the domain `{}` is only this machine's host name",
                cfg.domain
            ),
            fix,
        )],
        None => vec![Finding::ok(format!(
            "domain {} (from {})",
            cfg.domain,
            cfg.domain_origin.describe()
        ))],
    }
}

fn check_users(cfg: &Config) -> Vec<Finding> {
    use crate::store::Store;
    let users = if cfg.db_path().exists() {
        match crate::store::SqliteStore::open(&cfg.db_path()).and_then(|s| s.users()) {
            Ok(u) => u,
            Err(e) => {
                return vec![Finding::problem(
                    format!("the store cannot be read: {e}"),
                    format!("check {} and its permissions", cfg.db_path().display()),
                )]
            }
        }
    } else {
        vec![]
    };
    let mut out = vec![];
    let main: Vec<_> = users.iter().filter(|u| !u.name.contains('@')).collect();
    if main.is_empty() {
        out.push(Finding::problem(
            format!(
                "the domain {} has no users: no phone can register",
                cfg.domain
            ),
            "hedgewitch user add alice --extension 101",
        ));
    } else {
        let n = main.len();
        out.push(Finding::ok(format!(
            "{n} user{} in {}",
            if n == 1 { "" } else { "s" },
            cfg.domain
        )));
    }
    for u in &users {
        let domain = u
            .name
            .split_once('@')
            .map_or(cfg.domain.as_str(), |(_, d)| d);
        if u.realm != domain {
            out.push(Finding::problem(
                format!(
                    "the password of {} was set for realm `{}`, not `{domain}`: its phones cannot log in",
                    u.name, u.realm
                ),
                format!("hedgewitch user passwd {}", u.name),
            ));
        }
    }
    out
}

/// Whether each configured socket can be had: with the server running, by it; without, by
/// nobody else.
fn check_ports(cfg: &Config, daemon: Option<u32>) -> Vec<Finding> {
    let mut out = vec![];
    let mut all: Vec<Listen> = cfg.listen.clone();
    all.extend(cfg.stun.iter().copied());
    for l in all {
        let name = format!("{}:{}", l.transport.as_str(), l.addr);
        match try_bind(l) {
            Ok(()) if daemon.is_some() => out.push(Finding::warn(
                format!("{name} is in the config, but the server does not listen there"),
                "see the server's log at start (the address may not exist on this machine), then restart it",
            )),
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let owner = port_owner(l);
                match (owner, daemon) {
                    (Some((pid, _)), Some(d)) if pid == d => {}
                    (None, Some(_)) => {}
                    (Some((pid, prog)), _) => out.push(Finding::problem(
                        format!("{name} is in use by another program: {prog} (pid {pid})"),
                        "stop that program, or give hedgewitch other ports with `listen` in the config",
                    )),
                    (None, None) => out.push(Finding::problem(
                        format!("{name} is in use by another program"),
                        "find it with `ss -lunp` / `ss -ltnp` and stop it, or change `listen`",
                    )),
                }
            }
            // As at start: a wildcard this machine cannot have (no IPv6) is skipped.
            Err(e) if l.addr.ip().is_unspecified() && cfg.listen.len() > 1 => {
                out.push(Finding::warn(
                    format!("{name} cannot be opened here ({e}); the server goes without it"),
                    "nothing to do if the machine has no IPv6; else check its network",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => out.push(Finding::problem(
                format!("{name}: ports below 1024 need a privilege"),
                "run it as the package's service (it has CAP_NET_BIND_SERVICE) or as root",
            )),
            Err(e) => out.push(Finding::problem(
                format!("{name} cannot be opened: {e}"),
                "check that the address belongs to this machine, or change `listen`",
            )),
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(if daemon.is_some() {
            "every configured address is served".to_string()
        } else {
            "every configured address is free".to_string()
        }));
    }
    out
}

/// Binds `l` as the server would (IPv6 sockets IPv6 only) and lets go at once.
fn try_bind(l: Listen) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if l.addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let (ty, proto) = match l.transport {
        Transport::Udp => (Type::DGRAM, Protocol::UDP),
        _ => (Type::STREAM, Protocol::TCP),
    };
    let s = Socket::new(domain, ty, Some(proto))?;
    if l.addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == Type::STREAM {
        s.set_reuse_address(true)?;
    }
    s.bind(&l.addr.into())?;
    if ty == Type::STREAM {
        s.listen(1)?;
    }
    Ok(())
}

/// The process holding the socket `l` would need, from /proc (Linux): the socket's inode in
/// /proc/net, then the process whose descriptors include it.
fn port_owner(l: Listen) -> Option<(u32, String)> {
    let table = match (l.transport, l.addr.is_ipv4()) {
        (Transport::Udp, true) => "udp",
        (Transport::Udp, false) => "udp6",
        (_, true) => "tcp",
        (_, false) => "tcp6",
    };
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).ok()?;
    let port = format!(":{:04X}", l.addr.port());
    let inodes: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            // TCP: listening sockets only (state 0A).
            let listening = l.transport == Transport::Udp || f.get(3) == Some(&"0A");
            (local.ends_with(&port) && listening).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    let name = std::fs::read_to_string(entry.path().join("comm"))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "?".into());
                    return Some((pid, name));
                }
            }
        }
    }
    None
}

/// This machine's addresses (every interface), to tell whether DNS points here.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = vec![];
    // SAFETY: getifaddrs fills a list we only read and then free with freeifaddrs.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// The addresses and ports this server answers on, as configured.
fn served(cfg: &Config) -> Vec<setup::Served> {
    cfg.listen
        .iter()
        .map(|l| setup::Served {
            transport: l.transport,
            port: l.addr.port(),
            bound: l.addr,
            advertised: crate::transport::guess_host(l.addr, cfg.advertise),
        })
        .collect()
}

/// Whether other servers find this one: NAPTR/SRV present, and pointing at an address and
/// port we serve.
fn check_dns(cfg: &Config) -> Vec<Finding> {
    if setup::unreachable_domain(&cfg.domain).is_some() {
        return vec![];
    }
    let served = served(cfg);
    let ports: Vec<(Transport, u16)> = served.iter().map(|s| (s.transport, s.port)).collect();
    let mut ours: Vec<IpAddr> = local_addresses();
    ours.extend(cfg.advertise);
    ours.extend(served.iter().map(|s| s.advertised));
    let publish = setup::public_addresses(&served);
    let records = setup::dns_records(&cfg.domain, &ports, &publish);
    let fix = if publish.is_empty() {
        format!(
            "publish NAPTR, SRV and A/AAAA records for {} that name this server's public \
             address (set `advertise` in the config to have them printed here)",
            cfg.domain
        )
    } else {
        format!(
            "publish in the zone of {}:\n{}",
            cfg.domain,
            records.join("\n")
        )
    };
    let published = match lookup(cfg) {
        Ok(p) => p,
        Err(e) => return vec![Finding::problem(format!("DNS cannot be asked: {e}"), fix)],
    };
    let serves = |t: Transport, a: SocketAddr| {
        ours.contains(&a.ip())
            && !a.ip().is_loopback()
            && cfg
                .listen
                .iter()
                .any(|l| l.transport == t && l.addr.port() == a.port())
    };
    let here: Vec<&(Transport, SocketAddr)> = published
        .targets
        .iter()
        .filter(|(t, a)| serves(*t, *a))
        .collect();
    let list = |v: &[(Transport, SocketAddr)]| {
        v.iter()
            .map(|(t, a)| format!("{}:{a}", t.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if published.targets.is_empty() {
        return vec![Finding::problem(
            format!(
                "DNS has no SIP records and no address for {}: other domains cannot find this server",
                cfg.domain
            ),
            fix,
        )];
    }
    let local_only: Vec<(Transport, SocketAddr)> = published
        .targets
        .iter()
        .filter(|(_, a)| sip::sdp::is_private(a.ip()))
        .copied()
        .collect();
    if here.is_empty() && !local_only.is_empty() {
        return vec![Finding::problem(
            format!(
                "DNS sends requests for {} to {}: a loopback or private address that no other \
                 domain can reach",
                cfg.domain,
                list(&local_only)
            ),
            fix,
        )];
    }
    if here.is_empty() {
        return vec![Finding::problem(
            format!(
                "DNS sends requests for {} to {}, which is not this server",
                cfg.domain,
                list(&published.targets)
            ),
            fix,
        )];
    }
    let mut out = vec![];
    if published.srv.is_empty() {
        out.push(Finding::warn(
            format!(
                "DNS has no SRV records for {}: other servers fall back to its A record on port \
                 5060 over UDP",
                cfg.domain
            ),
            fix,
        ));
    } else {
        out.push(Finding::ok(format!(
            "DNS: {} is served at {}{}",
            cfg.domain,
            list(&published.targets),
            if published.naptr.is_empty() {
                " (SRV, no NAPTR)"
            } else {
                " (NAPTR and SRV)"
            }
        )));
    }
    if published.targets.len() > here.len() {
        let elsewhere: Vec<(Transport, SocketAddr)> = published
            .targets
            .iter()
            .filter(|(t, a)| !serves(*t, *a))
            .copied()
            .collect();
        out.push(Finding::warn(
            format!(
                "DNS also names {}, which this server does not serve",
                list(&elsewhere)
            ),
            "remove those records, or listen there too",
        ));
    }
    out
}

fn lookup(cfg: &Config) -> Result<crate::dns::Published, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let dns = crate::dns::Dns::new(&cfg.dns.servers)?;
        tokio::time::timeout(DNS_TIMEOUT, dns.published(&cfg.domain))
            .await
            .map_err(|_| "no answer in 10 s".to_string())
    })
}

/// The TLS certificate: present, naming the domain, in date, and trusted by others.
fn check_tls(cfg: &Config) -> Vec<Finding> {
    let has_listener = cfg.listen.iter().any(|l| l.transport == Transport::Tls);
    let (Some(cert), Some(_key)) = (&cfg.tls.certificate, &cfg.tls.key) else {
        return vec![Finding::warn(
            "no TLS certificate: servers that only take TLS (inbound = \"tls-only\") and sips: \
             calls cannot reach this domain",
            format!(
                "get a certificate for {} and set [tls] certificate and key, with listen += \
                 \"tls:0.0.0.0:5061\" (`hedgewitch tls self-signed` makes one for trials)",
                cfg.domain
            ),
        )];
    };
    let mut out = vec![];
    if !has_listener {
        out.push(Finding::warn(
            "a TLS certificate is set, but `listen` has no tls: entry",
            "add \"tls:0.0.0.0:5061\" (and \"tls:[::]:5061\") to `listen`",
        ));
    }
    let chain = match crate::tls::certs(cert) {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::problem(
                format!("the certificate cannot be read: {e}"),
                "point [tls] certificate at a PEM file, leaf first",
            )]
        }
    };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(chain[0].as_ref()) else {
        return vec![Finding::problem(
            format!("{} is not an X.509 certificate", cert.display()),
            "point [tls] certificate at a PEM file, leaf first",
        )];
    };
    let validity = leaf.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        out.push(Finding::problem(
            format!("the certificate expired on {}", validity.not_after),
            "renew it, then `hedgewitch reload` (no restart needed)",
        ));
    } else if now < validity.not_before {
        out.push(Finding::problem(
            format!("the certificate is valid only from {}", validity.not_before),
            "check the clock, or use a certificate valid now",
        ));
    } else if validity
        .time_to_expiration()
        .is_some_and(|left| left.whole_seconds() < RENEW_WITHIN.as_secs() as i64)
    {
        out.push(Finding::warn(
            format!("the certificate expires soon, on {}", validity.not_after),
            "renew it, then `hedgewitch reload` (no restart needed)",
        ));
    } else {
        out.push(Finding::ok(format!(
            "the certificate is valid until {}",
            validity.not_after
        )));
    }
    // RFC 5922 §7.1: the SIP domain in a subjectAltName (DNS or sip: URI); no wildcards.
    let mut names: Vec<String> = vec![];
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::URI(u) => names.push(u.to_string()),
                _ => {}
            }
        }
    }
    let domain = cfg.domain.to_ascii_lowercase();
    let named = names.iter().any(|n| {
        let n = n.to_ascii_lowercase();
        n == domain || n == format!("sip:{domain}")
    });
    if named {
        out.push(Finding::ok(format!("the certificate names {}", cfg.domain)));
    } else {
        out.push(Finding::problem(
            format!(
                "the certificate names {} but not {} (RFC 5922: other servers check the SIP domain)",
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                },
                cfg.domain
            ),
            format!("get a certificate whose subjectAltName is {}", cfg.domain),
        ));
    }
    if named {
        if let Some(f) = trust(cfg, &chain) {
            out.push(f);
        }
    }
    out
}

/// Whether a server with the system's CAs would accept the chain for our domain.
fn trust(cfg: &Config, chain: &[rustls::pki_types::CertificateDer<'static>]) -> Option<Finding> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .ok()?;
    let name = crate::tls::server_name(&cfg.domain)?;
    match verifier.verify_server_cert(
        &chain[0],
        &chain[1..],
        &name,
        &[],
        rustls::pki_types::UnixTime::now(),
    ) {
        Ok(_) => Some(Finding::ok(
            "the certificate is trusted by the system's CAs",
        )),
        Err(e) => Some(Finding::warn(
            format!("other servers with the usual CAs will not trust the certificate ({e})"),
            "use a certificate from a public CA, or have each peer add your CA to tls.ca_files",
        )),
    }
}

/// The findings as the command prints them; the fix under each.
pub fn report(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok     ",
            Level::Warning => "warning",
            Level::Problem => "PROBLEM",
        };
        s.push_str(&format!("{tag}  {}\n", f.what));
        if let Some(fix) = &f.fix {
            for (i, line) in fix.lines().enumerate() {
                let lead = if i == 0 { "fix:" } else { "    " };
                s.push_str(&format!("         {lead} {line}\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `name` valid from `from` to `until` (year, month, day), with its
    /// key, written into a fresh folder; the config points at them.
    fn config_with_cert(name: &str, from: (i32, u8, u8), until: (i32, u8, u8)) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "hw-doctor-{}-{}-{}",
            std::process::id(),
            name,
            until.0
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let mut cfg = Config::parse(&format!(
            "domain = \"example.test\"\nlisten = [\"tls:127.0.0.1:5061\"]\n[tls]\n\
             certificate = \"{}\"\nkey = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ))
        .unwrap();
        cfg.data_dir = dir;
        cfg
    }

    fn said(findings: &[Finding], level: Level, text: &str) -> bool {
        findings
            .iter()
            .any(|f| f.level == level && f.what.contains(text))
    }

    #[test]
    fn an_expired_certificate_is_a_problem_with_its_fix() {
        let cfg = config_with_cert("example.test", (2019, 1, 1), (2020, 1, 1));
        let f = check_tls(&cfg);
        assert!(said(&f, Level::Problem, "expired on"), "{f:?}");
        assert!(f.iter().any(|x| x
            .fix
            .as_deref()
            .is_some_and(|t| t.contains("hedgewitch reload"))));
        assert!(said(&f, Level::Ok, "names example.test"), "{f:?}");
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }

    #[test]
    fn a_certificate_not_yet_valid_or_self_signed_is_reported() {
        let cfg = config_with_cert("example.test", (2098, 1, 1), (2099, 1, 1));
        let f = check_tls(&cfg);
        assert!(said(&f, Level::Problem, "valid only from"), "{f:?}");
        let cfg2 = config_with_cert("example.test", (2020, 1, 1), (2098, 1, 1));
        let f = check_tls(&cfg2);
        assert!(said(&f, Level::Ok, "valid until"), "{f:?}");
        assert!(
            said(&f, Level::Warning, "will not trust"),
            "a self-signed certificate is not trusted by others: {f:?}"
        );
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
        let _ = std::fs::remove_dir_all(&cfg2.data_dir);
    }

    #[test]
    fn a_bare_host_name_is_a_problem() {
        let mut cfg = Config::parse("domain = \"vm\"\n").unwrap();
        cfg.data_dir = std::env::temp_dir().join("hw-doctor-none");
        let f = check_domain(&cfg);
        assert!(said(&f, Level::Problem, "bare host name"), "{f:?}");
        assert!(f[0].fix.as_deref().is_some_and(|t| t.contains("--domain")));
    }
}
