//! The TOML configuration: what the server listens on, which domain it serves, where it keeps
//! its data. Every key has a default, so the server runs with no file at all; a bad file fails at
//! start with toml's message, which names the key and the line.

use crate::core::{CoreConfig, Listener};
use crate::plan::settings::{
    CallSettings, FeatureCodes, ForwardSpec, GroupSpec, Numbering, PlanSettings, RuleSpec,
    SpeedDialSpec,
};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hedgewitch_core::{InboundPolicy, Transport};

/// One `listen` entry: `"udp:127.0.0.1:5060"`, `"tcp:[::1]:5060"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    /// The transport before the first colon: `udp`, `tcp`, `tls`, `ws` or `wss`.
    pub transport: Transport,
    /// The address and port to bind (IPv6 in brackets in the text).
    pub addr: SocketAddr,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, addr) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not TRANSPORT:ADDRESS:PORT"))?;
        let transport = Transport::parse(t).ok_or_else(|| {
            format!("unknown transport `{t}` in `{s}` (udp, tcp, tls, ws or wss)")
        })?;
        let addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not ADDRESS:PORT (IPv6 goes in brackets)"))?;
        Ok(Listen { transport, addr })
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where the main domain came from: said at start, and named when two sources disagree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DomainOrigin {
    /// Nothing said it: the machine's host name.
    #[default]
    HostName,
    /// The `domain` key of the config file.
    ConfigFile,
    /// The `--domain` option.
    Option,
    /// The data folder's record of the domain it was set up for.
    DataFolder,
}

impl DomainOrigin {
    /// A phrase naming the source, for log lines and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            DomainOrigin::HostName => "this machine's host name (nothing else named one)",
            DomainOrigin::ConfigFile => "the config file",
            DomainOrigin::Option => "the --domain option",
            DomainOrigin::DataFolder => "the data folder, which was set up for it",
        }
    }
}

/// The whole configuration file (docs/configuration.md), with the defaults for keys it leaves
/// out, plus where the file and the domain came from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The SIP domain served, also the digest realm. Default: the domain the data folder was
    /// set up for, else the host name.
    pub domain: String,
    /// Where `domain` came from.
    #[serde(skip)]
    pub domain_origin: DomainOrigin,
    /// The config file read, if any.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// `data_dir` came from the `--data-dir` option (a reload keeps it).
    #[serde(skip)]
    pub data_dir_from_option: bool,
    /// Where the SQLite store and the control socket live.
    pub data_dir: PathBuf,
    /// More domains served besides `domain`, each with its own users (`alice@other.example`).
    pub domains: Vec<String>,
    /// SIP sockets to listen on, `TRANSPORT:ADDRESS:PORT` each. Default: UDP and TCP port 5060
    /// on every IPv4 and IPv6 address.
    pub listen: Vec<Listen>,
    /// STUN server sockets (RFC 5389 Binding, UDP only), so phones learn their public address.
    /// SIP ports answer STUN keep-alives too. Default: UDP port 3478 on every address.
    pub stun: Vec<Listen>,
    /// Address written in Via and Record-Route when a listener is bound to a wildcard address.
    pub advertise: Option<std::net::IpAddr>,
    /// Log filter (tracing-subscriber syntax): `info`, `debug`, `hedgewitch_server=trace`.
    pub log: String,
    /// Registration lifetimes, contacts per user and NAT keep-alives (`[registrar]`).
    pub registrar: RegistrarConfig,
    /// Digest authentication: algorithms offered and nonce lifetime (`[auth]`).
    pub auth: AuthConfig,
    /// The media relay (`[relay]`).
    pub relay: RelayConfig,
    /// Bans for failed logins (`[security]`).
    pub security: SecurityConfig,
    /// Calls and messages from other domains (`[federation]`).
    pub federation: FederationConfig,
    /// How other domains are found (`[dns]`).
    pub dns: DnsConfig,
    /// The TLS certificate and trusted CAs (`[tls]`).
    pub tls: crate::tls::TlsConfig,
    /// Web listeners: the page and SIP over WebSocket (`[web]`).
    pub web: WebConfig,
    /// The TURN server (`[turn]`).
    pub turn: TurnConfig,
    /// Which extensions are valid.
    pub numbering: Numbering,
    /// Codes dialled from a phone to change one's forwarding.
    pub features: FeatureCodes,
    /// Ring times, redirect limit and other per-call settings (`[calls]`).
    pub calls: CallSettings,
    /// Ring groups (`[[group]]`).
    pub group: Vec<GroupSpec>,
    /// Call forwarding per user (`[[forward]]`).
    pub forward: Vec<ForwardSpec>,
    /// Speed dials (`[[speeddial]]`).
    pub speeddial: Vec<SpeedDialSpec>,
    /// Dial-plan rules, in order (`[[dialplan]]`).
    pub dialplan: Vec<RuleSpec>,
    /// Telephone numbers: country code, prefixes, classes, emergency numbers, ENUM
    /// (`[numbers]`).
    pub numbers: crate::core::numbers::NumberSettings,
    /// Presence and busy lamps (`[presence]`).
    pub presence: crate::core::presence::PresenceSettings,
    /// Messages that wait for offline users (`[messages]`).
    pub messages: crate::core::mailbox::MailboxSettings,
    /// The folder of provider files (`NAME.toml` each). Default: `providers.d` beside the
    /// config file, or in the data folder when there is no config file.
    pub providers_dir: Option<PathBuf>,
}

/// The `[registrar]` table: how long registrations last and how many are kept.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    /// Expiry used when a REGISTER asks for none (seconds).
    pub default_expires: u32,
    /// Shorter requests get 423 Interval Too Brief (RFC 3261 §10.3 step 7).
    pub min_expires: u32,
    /// Longer requests are shortened to this.
    pub max_expires: u32,
    /// Contacts kept per user; beyond it the one closest to expiry is dropped.
    pub max_contacts: usize,
    /// Seconds between keep-alive OPTIONS to UDP phones behind NAT that do not re-register
    /// more often; 0 turns them off.
    pub nat_ping_interval: u32,
    /// Unanswered pings in a row after which such a contact is removed.
    pub nat_ping_failures: u8,
}

/// The `[federation]` table: requests from other domains.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// `inbound`: `"open"` (any server), `"tls-only"` (only over TLS) or `"closed"` (403).
    /// Default: open.
    pub inbound: InboundPolicy,
}

/// The `[dns]` table: which resolvers find other domains' servers.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// DNS servers (`"IP:PORT"`) to ask instead of the system's (/etc/resolv.conf).
    pub servers: Vec<SocketAddr>,
}

/// The `[relay]` table: when media goes through the server, on which ports, and when an idle
/// relayed call is ended.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// `never`, `auto` (a party behind NAT, or IPv4 to IPv6) or `always`.
    pub mode: crate::core::RelayMode,
    /// UDP ports for relayed media, `"LOW-HIGH"`; each stream takes four (RTP and RTCP on
    /// each side).
    pub ports: PortRange,
    /// Seconds without media after which an answered relayed call is ended.
    pub timeout: u64,
    /// The same while the call is on hold.
    pub hold_timeout: u64,
    /// Send media to the private, loopback or own addresses a caller from another domain
    /// names (off: they are ignored, and its media address is learnt from its packets).
    pub trust_outside_addresses: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            mode: crate::core::RelayMode::Auto,
            ports: PortRange(20000, 29999),
            timeout: 60,
            hold_timeout: 3600,
            trust_outside_addresses: false,
        }
    }
}

/// `"20000-29999"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("bad port range {s:?}: want \"LOW-HIGH\""));
        let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || hi < lo + 3 {
            return Err(bad());
        }
        Ok(PortRange(lo, hi))
    }
}

/// The `[auth]` table: digest authentication (RFC 7616, RFC 8760).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Digest algorithms offered, one challenge each, most preferred first. MD5 alone by
    /// default: baresip 1.0 gives up on any challenge with an algorithm it does not know, and
    /// sipsak reads only the first one, so offering SHA-256 too would lock such phones out.
    pub algorithms: Vec<String>,
    /// How long a nonce stays valid (seconds) before the client is asked again with stale=true.
    pub nonce_lifetime: u64,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 86400,
            max_contacts: 10,
            nat_ping_interval: 25,
            nat_ping_failures: 3,
        }
    }
}

/// The `[web]` table: who may use the `ws:`/`wss:` listeners.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Origins (`https://host:port`) of pages elsewhere that may open a SIP WebSocket here
    /// (a page served by the listener itself always may); `"*"` allows any.
    pub origins: Vec<String>,
    /// Seconds between the server's pings on a SIP WebSocket; a peer silent for two and a
    /// half times that is closed (its registration with it).
    pub ping_interval: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            origins: vec![],
            ping_interval: 30,
        }
    }
}

/// The `[turn]` table: the TURN server (RFC 8656) that browsers and ICE phones relay
/// their media through when the network needs it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Whether TURN is served.
    pub enabled: bool,
    /// Where: `udp:`, `tcp:` and `tls:` addresses (TLS needs `[tls]`). A UDP address that
    /// is also a `stun` one is one socket, answering both.
    pub listen: Vec<Listen>,
    /// The shared secret of time-limited credentials (coturn's `static-auth-secret`);
    /// empty: one is derived from the data folder's key.
    pub secret: String,
    /// Seconds the credentials a logged-in page receives stay valid.
    pub credential_lifetime: u64,
    /// Peer networks allowed besides public addresses (loopback, private, link-local and
    /// the server's own addresses are refused unless listed here).
    pub allowed_peers: Vec<String>,
    /// Allocations one user may hold at once.
    pub allocations_per_user: usize,
    /// Allocations in all.
    pub max_allocations: usize,
    /// Peer addresses one allocation may have permissions for.
    pub permissions_per_allocation: usize,
    /// kbit/s one user's allocations may relay together, both ways (0: no limit).
    pub bandwidth_per_user: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        let d = crate::core::TurnSettings::default();
        TurnConfig {
            enabled: true,
            listen: [
                "udp:0.0.0.0:3478",
                "tcp:0.0.0.0:3478",
                "udp:[::]:3478",
                "tcp:[::]:3478",
            ]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
            secret: String::new(),
            credential_lifetime: d.credential_lifetime.as_secs(),
            allowed_peers: vec![],
            allocations_per_user: d.allocations_per_user,
            max_allocations: d.max_allocations,
            permissions_per_allocation: d.permissions_per_allocation,
            bandwidth_per_user: d.bandwidth_per_user,
        }
    }
}

impl TurnConfig {
    /// The allowed peer networks, each checked.
    fn allowed_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.allowed_peers
            .iter()
            .map(|t| {
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("key `turn.allowed_peers`: `{t}` is not an address or a network")
                    })
            })
            .collect()
    }

    /// The core's TURN settings (the secret and the URIs are filled in at start).
    fn settings(&self) -> crate::core::TurnSettings {
        crate::core::TurnSettings {
            enabled: self.enabled && !self.listen.is_empty(),
            secret: self.secret.as_bytes().to_vec(),
            credential_lifetime: Duration::from_secs(self.credential_lifetime.max(60)),
            allowed_peers: self
                .allowed_networks()
                .unwrap_or_default()
                .into_iter()
                .map(|n| (n.network(), n.prefix_len()))
                .collect(),
            allocations_per_user: self.allocations_per_user,
            max_allocations: self.max_allocations,
            permissions_per_allocation: self.permissions_per_allocation.max(1),
            bandwidth_per_user: self.bandwidth_per_user,
            urls: vec![],
            families: [false, false],
        }
    }
}

/// The `[security]` table: bans for failed logins.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Failed logins from one address within `failure_window` that ban it (0: no bans).
    pub max_auth_failures: u32,
    /// Seconds failures are counted over.
    pub failure_window: u64,
    /// Seconds a first ban lasts; each repeat offence doubles it.
    pub ban_time: u64,
    /// The longest ban, in seconds.
    pub max_ban_time: u64,
    /// Failed logins on one account within `failure_window`, from any addresses, after which
    /// only the addresses its phones are registered from may try it (0: no such limit).
    pub account_failures: u32,
    /// Networks never limited or banned (`"192.168.1.0/24"`, `"2001:db8::/32"`, or one
    /// address).
    pub trusted: Vec<String>,
    /// REGISTER requests per second per source (0: no limit).
    pub register_rate: u32,
    /// INVITE, SUBSCRIBE and REFER requests per second per source (0: no limit).
    pub dialog_rate: u32,
    /// Other requests per second per source (0: no limit).
    pub request_rate: u32,
    /// Seconds' worth of requests a source may send at once.
    pub burst_secs: u32,
    /// Calls to other domains (and numbers) per user per minute (0: no limit).
    pub outside_calls_per_minute: u32,
    /// Other requests to other domains per user per minute (0: no limit).
    pub outside_messages_per_minute: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        let d = crate::core::GuardSettings::default();
        SecurityConfig {
            max_auth_failures: d.max_failures,
            failure_window: d.window.as_secs(),
            ban_time: d.ban_time.as_secs(),
            max_ban_time: d.max_ban_time.as_secs(),
            account_failures: d.account_failures,
            trusted: vec![],
            register_rate: d.admission.register_rate,
            dialog_rate: d.admission.dialog_rate,
            request_rate: d.admission.request_rate,
            burst_secs: d.admission.burst_secs,
            outside_calls_per_minute: d.outside.calls_per_minute,
            outside_messages_per_minute: d.outside.messages_per_minute,
        }
    }
}

impl SecurityConfig {
    /// The trusted networks, each checked: a network or a single address.
    fn trusted_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted
            .iter()
            .map(|t| {
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("key `security.trusted`: `{t}` is not an address or a network")
                    })
            })
            .collect()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithms: vec!["MD5".into()],
            nonce_lifetime: 300,
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `$XDG_DATA_HOME/hedgewitch`, else `~/.local/share/hedgewitch`, else `./hedgewitch-data`.
fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("hedgewitch");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(h).join(".local/share/hedgewitch");
    }
    PathBuf::from("hedgewitch-data")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: host_name(),
            domain_origin: DomainOrigin::HostName,
            path: None,
            data_dir_from_option: false,
            data_dir: default_data_dir(),
            domains: vec![],
            listen: [
                "udp:0.0.0.0:5060",
                "tcp:0.0.0.0:5060",
                "udp:[::]:5060",
                "tcp:[::]:5060",
                "wss:0.0.0.0:8443",
                "wss:[::]:8443",
            ]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
            stun: ["udp:0.0.0.0:3478", "udp:[::]:3478"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            advertise: None,
            log: "info".into(),
            registrar: RegistrarConfig::default(),
            auth: AuthConfig::default(),
            security: SecurityConfig::default(),
            relay: RelayConfig::default(),
            federation: FederationConfig::default(),
            dns: DnsConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            web: WebConfig::default(),
            turn: TurnConfig::default(),
            numbering: Numbering::default(),
            features: FeatureCodes::default(),
            calls: CallSettings::default(),
            group: vec![],
            forward: vec![],
            speeddial: vec![],
            dialplan: vec![],
            numbers: Default::default(),
            messages: Default::default(),
            presence: Default::default(),
            providers_dir: None,
        }
    }
}

impl Config {
    /// Parses and checks a config file's text; records whether it named `domain`.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        // A file that leaves `domain` out keeps the default; tell the two apart.
        if text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("domain"))
        {
            cfg.domain_origin = DomainOrigin::ConfigFile;
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads the file, or the defaults when `path` is None.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
                let mut cfg =
                    Config::parse(&text).map_err(|e| format!("config {}: {e}", p.display()))?;
                cfg.path = Some(p.to_path_buf());
                Ok(cfg)
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.domain.is_empty() || sip::uri::parse_hostport(&self.domain).is_err() {
            return Err(format!(
                "key `domain`: `{}` is not a host name",
                self.domain
            ));
        }
        if self.listen.is_empty() {
            return Err("key `listen`: at least one address is needed".into());
        }
        if let Some(l) = self.stun.iter().find(|l| l.transport != Transport::Udp) {
            return Err(format!(
                "key `stun`: `{}:{}`: STUN is served over UDP only",
                l.transport.as_str(),
                l.addr
            ));
        }
        let r = &self.registrar;
        if r.min_expires > r.max_expires || r.default_expires > r.max_expires {
            return Err(
                "table `registrar`: need min_expires <= default_expires <= max_expires".into(),
            );
        }
        for a in &self.auth.algorithms {
            if a.parse::<sip::digest::Algorithm>().is_err() {
                return Err(format!(
                    "key `auth.algorithms`: unknown algorithm `{a}` (SHA-256 or MD5)"
                ));
            }
        }
        self.security.trusted_networks()?;
        self.turn.allowed_networks()?;
        if let Some(l) = self.turn.listen.iter().find(|l| l.transport.is_websocket()) {
            return Err(format!(
                "key `turn.listen`: `{}:{}`: TURN runs over udp, tcp or tls",
                l.transport.as_str(),
                l.addr
            ));
        }
        if self.auth.algorithms.is_empty() {
            return Err("key `auth.algorithms`: at least one algorithm is needed".into());
        }
        Ok(())
    }

    /// The phone-system settings written in the file.
    pub fn plan(&self) -> PlanSettings {
        PlanSettings {
            groups: self.group.clone(),
            forwards: self.forward.clone(),
            speed_dials: self.speeddial.clone(),
            rules: self.dialplan.clone(),
            dids: vec![],
            presence_allow: vec![],
        }
    }

    /// The presence settings in force: the file's, with the watchers users allowed from the
    /// command line added.
    pub fn presence_settings(
        &self,
        stored: &PlanSettings,
    ) -> crate::core::presence::PresenceSettings {
        let mut p = self.presence.clone();
        for a in &stored.presence_allow {
            let list = p.allow.entry(a.user.clone()).or_default();
            if !list.contains(&a.watcher) {
                list.push(a.watcher.clone());
            }
        }
        p
    }

    /// The folder of provider files.
    pub fn providers_path(&self) -> PathBuf {
        if let Some(d) = &self.providers_dir {
            return match &self.path {
                Some(p) if d.is_relative() => p.parent().unwrap_or(Path::new(".")).join(d),
                _ => d.clone(),
            };
        }
        match self.path.as_ref().and_then(|p| p.parent()) {
            Some(dir) => dir.join("providers.d"),
            None => self.data_dir.join("providers.d"),
        }
    }

    /// The configuration as it reads now (for a reload): the file again, with the options
    /// given at start still applied, and the settled domain kept unless the file names one.
    pub fn reread(&self) -> Result<Config, String> {
        let mut new = match &self.path {
            Some(p) => Config::load(Some(p))?,
            None => self.clone(),
        };
        if new.domain_origin == DomainOrigin::HostName
            || matches!(self.domain_origin, DomainOrigin::Option)
        {
            new.domain = self.domain.clone();
            new.domain_origin = self.domain_origin;
        }
        if self.data_dir_from_option {
            new.data_dir = self.data_dir.clone();
            new.data_dir_from_option = true;
        }
        Ok(new)
    }

    /// Builds the dial plan from the file's settings, the users and the stored settings.
    pub fn build_plan(
        &self,
        users: &[crate::core::User],
        stored: &PlanSettings,
    ) -> Result<crate::plan::Directory, String> {
        let cfg = self;
        let settings = PlanSettings::merged(&cfg.plan(), stored);
        let (plan, warnings) = crate::plan::Directory::build(
            &cfg.domain,
            users,
            &cfg.numbering,
            &cfg.features,
            &cfg.calls,
            &settings,
        )?;
        for w in warnings {
            tracing::warn!("dial plan: {w}");
        }
        Ok(plan)
    }

    /// Makes the CLI and the daemon agree on the main domain, whose name is the digest realm
    /// every password is hashed for. `--domain` beats the file, which beats the host name;
    /// but a data folder that recorded a domain keeps it: it fills in when nothing was said,
    /// and a different one said is an error naming both while any password is hashed for the
    /// recorded one (a folder without such users may take a new name: see `record_domain`).
    pub fn settle_domain(&mut self, option: Option<String>) -> Result<(), String> {
        if let Some(d) = option {
            self.domain = d;
            self.domain_origin = DomainOrigin::Option;
            self.check()?;
        }
        let db = self.db_path();
        if !db.exists() {
            return Ok(());
        }
        let store = crate::store::SqliteStore::open(&db)?;
        match store.recorded_domain()? {
            Some(r) if r.eq_ignore_ascii_case(&self.domain) => {
                // The realm is compared byte for byte: keep the recorded spelling.
                self.domain = r;
            }
            Some(r) if self.domain_origin == DomainOrigin::HostName => {
                self.domain = r;
                self.domain_origin = DomainOrigin::DataFolder;
            }
            Some(r) => {
                use crate::store::Store;
                // No password hashed yet: nothing would break, the new name may be taken.
                if !store.users()?.iter().any(|u| u.realm == r) {
                    return Ok(());
                }
                let said = match (self.domain_origin, &self.path) {
                    (DomainOrigin::ConfigFile, Some(p)) => {
                        format!("the config file {}", p.display())
                    }
                    (o, _) => o.describe().to_string(),
                };
                return Err(format!(
                    "{said} says the domain is `{}`, but the data folder {} was set up for \
                     `{r}` and its passwords are hashed for that realm. Use \
                     `--domain {r}` (or leave the domain out), or give `{}` a data \
                     folder of its own (--data-dir)",
                    self.domain,
                    self.data_dir.display(),
                    self.domain
                ));
            }
            None => {}
        }
        Ok(())
    }

    /// Records the settled domain in the data folder: done once a password was hashed for it
    /// or the server starts with a named domain. `settle_domain` has already refused a name
    /// that would orphan hashed passwords, so a different record is replaced.
    pub fn record_domain(&self) -> Result<(), String> {
        crate::store::SqliteStore::open(&self.db_path())?.record_domain(&self.domain, true)
    }

    /// The SQLite store: `hedgewitch.db` in the data folder.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("hedgewitch.db")
    }

    /// The control channel's Unix socket: `control.sock` in the data folder.
    pub fn control_path(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }
}

impl Config {
    /// The core's settings from this configuration, for these listeners.
    pub fn core_config(&self, listeners: Vec<Listener>) -> CoreConfig {
        let cfg = self;
        CoreConfig {
            domain: cfg.domain.clone(),
            domains: cfg.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            listeners,
            registrar: crate::core::RegistrarSettings {
                default_expires: cfg.registrar.default_expires,
                min_expires: cfg.registrar.min_expires,
                max_expires: cfg.registrar.max_expires,
                max_contacts: cfg.registrar.max_contacts,
            },
            auth: crate::core::AuthSettings {
                algorithms: cfg
                    .auth
                    .algorithms
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect(),
                nonce_lifetime: cfg.auth.nonce_lifetime,
            },
            timers: sip::transaction::Timers::default(),
            transactions: crate::core::TransactionLimits::default(),
            keepalive: crate::core::KeepAliveSettings {
                interval: (cfg.registrar.nat_ping_interval > 0)
                    .then(|| Duration::from_secs(u64::from(cfg.registrar.nat_ping_interval))),
                failures: cfg.registrar.nat_ping_failures.max(1),
            },
            relay: crate::core::RelaySettings {
                mode: cfg.relay.mode,
                timeout: Duration::from_secs(cfg.relay.timeout.max(1)),
                hold_timeout: Duration::from_secs(cfg.relay.hold_timeout.max(1)),
                trust_outside_addresses: cfg.relay.trust_outside_addresses,
                turn: cfg.turn.settings(),
            },
            inbound: cfg.federation.inbound,
            guard: crate::core::GuardSettings {
                max_failures: cfg.security.max_auth_failures,
                window: Duration::from_secs(cfg.security.failure_window.max(1)),
                ban_time: Duration::from_secs(cfg.security.ban_time.max(1)),
                max_ban_time: Duration::from_secs(
                    cfg.security.max_ban_time.max(cfg.security.ban_time).max(1),
                ),
                account_failures: cfg.security.account_failures,
                trusted: cfg
                    .security
                    .trusted_networks()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| (n.network(), n.prefix_len()))
                    .collect(),
                admission: crate::core::AdmissionSettings {
                    register_rate: cfg.security.register_rate,
                    dialog_rate: cfg.security.dialog_rate,
                    request_rate: cfg.security.request_rate,
                    burst_secs: cfg.security.burst_secs.max(1),
                },
                outside: crate::core::OutsideLimits {
                    calls_per_minute: cfg.security.outside_calls_per_minute,
                    messages_per_minute: cfg.security.outside_messages_per_minute,
                },
            },
            route_key: [0; 32],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse(
            "domain = \"example.test\"\nlisten = [\"udp:127.0.0.1:5070\", \"tcp:[::1]:5070\"]\n",
        )
        .unwrap();
        assert_eq!(c.domain, "example.test");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[1].transport, Transport::Tcp);
        assert_eq!(c.registrar.min_expires, 60);
        // SIP on UDP and TCP, and the web page, on both families.
        let d = Config::default();
        assert_eq!(d.listen.len(), 6);
        assert_eq!(
            d.listen
                .iter()
                .filter(|l| l.transport == Transport::Wss)
                .count(),
            2
        );
        assert!(d.turn.enabled && d.turn.listen.len() == 4);
    }

    #[test]
    fn phone_system_settings() {
        let c = Config::parse(
            r#"
[numbering]
extensions = "200-299"

[features]
dnd_on = "*88"

[calls]
local_only = ["kid"]

[[group]]
name = "sales"
extension = "250"
strategy = "sequential"
members = ["alice", { target = "bob", ring_time = 5 }, "sip:desk@198.18.0.5"]
timeout = 30
fallback = "carol"

[[forward]]
user = "alice"
busy = "bob"
no_answer = "250"
no_answer_after = 15

[[speeddial]]
code = "11"
target = "sip:mum@example.org"

[[dialplan]]
match = "0900."
action = "reject"
status = 403
reason = "Premium Numbers Barred"
"#,
        )
        .unwrap();
        assert_eq!(c.numbering.extensions.as_deref(), Some("200-299"));
        assert_eq!(c.features.dnd_on, "*88");
        assert_eq!(
            c.features.forward_all, "*72",
            "the other codes keep their defaults"
        );
        let p = c.plan();
        assert_eq!(p.groups[0].members.len(), 3);
        assert_eq!(p.groups[0].members[1].ring_time(), Some(5));
        assert_eq!(p.forwards[0].no_answer_after, Some(15));
        assert_eq!(p.rules[0].status, Some(403));
        let e = Config::parse("[[group]]\nname = \"x\"\nstrategy = \"random\"\n").unwrap_err();
        assert!(e.contains("random"), "{e}");
    }

    #[test]
    fn errors_name_key_and_line() {
        let e =
            Config::parse("domain = \"a.test\"\n\nlisten = [\"sctp:1.2.3.4:5\"]\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("sctp"), "{e}");
        let e = Config::parse("domian = \"a.test\"\n").unwrap_err();
        assert!(e.contains("domian") && e.contains("line 1"), "{e}");
        let e = Config::parse("[registrar]\nmin_expires = \"x\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    fn in_folder(dir: &std::path::Path, text: &str) -> Config {
        let mut c = Config::parse(&format!("data_dir = \"{}\"\n{text}", dir.display())).unwrap();
        c.data_dir = dir.to_path_buf();
        c
    }

    #[test]
    fn the_data_folder_keeps_the_domain_its_passwords_were_hashed_for() {
        use crate::store::Store;
        let dir = std::env::temp_dir().join(format!("hw-domain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A first run on the host name pins nothing.
        let mut c = in_folder(&dir, "");
        c.settle_domain(None).unwrap();
        assert_eq!(c.domain_origin, DomainOrigin::HostName);
        // Named, and a password hashed: recorded.
        let mut c = in_folder(&dir, "");
        c.settle_domain(Some("example.test".into())).unwrap();
        c.record_domain().unwrap();
        let store = crate::store::SqliteStore::open(&c.db_path()).unwrap();
        store
            .add_user(&crate::store::User::new(
                "alice",
                None,
                "example.test",
                "pw",
            ))
            .unwrap();
        // A later command that names nothing reads it from the folder.
        let mut c = in_folder(&dir, "");
        c.settle_domain(None).unwrap();
        assert_eq!(c.domain, "example.test");
        assert_eq!(c.domain_origin, DomainOrigin::DataFolder);
        // The same name in another case keeps the recorded spelling (the realm is exact).
        let mut c = in_folder(&dir, "domain = \"Example.TEST\"");
        c.settle_domain(None).unwrap();
        assert_eq!(c.domain, "example.test");
        // Another name is refused, naming both and where the other came from.
        let mut c = in_folder(&dir, "domain = \"other.test\"");
        let e = c.settle_domain(None).unwrap_err();
        assert!(
            e.contains("`other.test`") && e.contains("`example.test`") && e.contains("--data-dir"),
            "{e}"
        );
        let e = in_folder(&dir, "")
            .settle_domain(Some("other.test".into()))
            .unwrap_err();
        assert!(e.contains("the --domain option"), "{e}");
        // Once no password depends on it, the folder takes the new name.
        store.remove_user("alice").unwrap();
        let mut c = in_folder(&dir, "");
        c.settle_domain(Some("other.test".into())).unwrap();
        c.record_domain().unwrap();
        assert_eq!(
            store.recorded_domain().unwrap().as_deref(),
            Some("other.test")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
