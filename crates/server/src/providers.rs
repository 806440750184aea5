//! SIP providers and peered IP-PBXs as drop-in files: `providers.d/NAME.toml`, one per
//! provider, read at start and on reload. A file has a profile part (how the provider
//! works) and an account part (user, password, the household's numbers); it may name a
//! profile (`profile = "generic-e164"`: a file in `providers.d/profiles/`, else one
//! built in from `packaging/providers/`) and give only the account.

use crate::core::numbers::NumberFormat;
use crate::core::trunks::settings::{
    Account, DidSpec, Identity, RegisterSettings, TrunkCalls, TrunkPeer, TrunkSettings,
};
use crate::core::Transport;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The profiles built into the binary: (name, TOML).
pub const PROFILES: &[(&str, &str)] = &[
    (
        "generic-e164",
        include_str!("../../../packaging/providers/generic-e164.toml"),
    ),
    (
        "generic-e164-digits",
        include_str!("../../../packaging/providers/generic-e164-digits.toml"),
    ),
    (
        "national-pai",
        include_str!("../../../packaging/providers/national-pai.toml"),
    ),
    (
        "tls-ppi",
        include_str!("../../../packaging/providers/tls-ppi.toml"),
    ),
    (
        "ip-pbx",
        include_str!("../../../packaging/providers/ip-pbx.toml"),
    ),
];

/// A provider file (or a profile, which has only the profile part). Every field is
/// optional so that a file can add to a profile.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// A profile this file builds on (a file in the profiles folder, or a built-in one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// What the profile is for (shown by `hedgewitch provider profiles`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The provider's SIP domain: the host of the account's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Where REGISTER goes (a SIP URI); `sip:` + domain when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrar: Option<String>,
    /// An outbound proxy every request goes through (a SIP URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_proxy: Option<String>,
    /// `udp`, `tcp` or `tls`; udp when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Whether the account registers (false: a peer at a static address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<bool>,
    /// Registration lifetime asked for, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u32>,
    /// Seconds before the first retry after a failed registration (doubled up to 32 times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// How the called number is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_format: Option<NumberFormat>,
    /// How the caller's identity is presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Seconds between keep-alive OPTIONS (they keep a NAT's mapping open and show
    /// whether the provider is there); 0 turns them off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<u32>,
    /// The realm whose challenges are answered; any realm of the provider when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Calls through this provider at once; 0 or absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
    /// Whether numbers no dial-plan rule routes go out here (providers are tried in file
    /// name order); a peered PBX is usually reached by rules only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<bool>,
    /// The account's user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user name for digest authentication, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// The account's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The number presented as the caller's; the first of `numbers` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    /// The household's numbers on this account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<String>,
    /// What each number rings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub did: Vec<DidSpec>,
    /// What a call to a number not in `did` rings; `numbers.default_target`, else 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_target: Option<String>,
    /// Further source addresses whose requests are this provider's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// The user part of our registered Contact: requests to it are the provider's. Made
    /// from the server's key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

macro_rules! inherit {
    ($me:ident, $base:ident, $($f:ident),*) => {
        $( if $me.$f.is_none() { $me.$f = $base.$f.clone(); } )*
    };
}

impl ProviderSpec {
    /// This file on top of its profile: what the file leaves out, the profile gives.
    pub fn on_profile(mut self, base: &ProviderSpec) -> ProviderSpec {
        inherit!(
            self,
            base,
            description,
            domain,
            registrar,
            outbound_proxy,
            transport,
            register,
            expires,
            retry,
            number_format,
            identity,
            keepalive,
            realm,
            max_calls,
            outgoing,
            user,
            auth_user,
            password,
            caller_id,
            default_target,
            secret
        );
        if self.numbers.is_empty() {
            self.numbers = base.numbers.clone();
        }
        if self.did.is_empty() {
            self.did = base.did.clone();
        }
        if self.addresses.is_empty() {
            self.addresses = base.addresses.clone();
        }
        self
    }

    /// The settings the core works with, checked. `secret` is used when the file gives
    /// none; `stored` are the numbers mapped with `hedgewitch did` (they win over the
    /// file's).
    pub fn settle(
        &self,
        name: &str,
        secret: &str,
        stored: &[DidSpec],
    ) -> Result<TrunkSettings, String> {
        let e = |m: String| format!("provider `{name}`: {m}");
        let domain = self
            .domain
            .clone()
            .ok_or_else(|| e("`domain` is missing".into()))?;
        let register = self.register.unwrap_or(true);
        let user = self.user.clone().unwrap_or_default();
        if register && (user.is_empty() || self.password.is_none()) {
            return Err(e("registering needs `user` and `password`".into()));
        }
        let transport = match self.transport.as_deref().unwrap_or("udp") {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            t => return Err(e(format!("unknown transport `{t}` (udp, tcp or tls)"))),
        };
        let registrar = self
            .registrar
            .clone()
            .unwrap_or_else(|| format!("sip:{domain}"));
        for (what, uri) in [
            ("registrar", Some(&registrar)),
            ("outbound_proxy", self.outbound_proxy.as_ref()),
        ] {
            if let Some(u) = uri {
                sip::uri::Uri::parse(u)
                    .map_err(|_| e(format!("`{what}` is not a SIP URI: {u}")))?;
            }
        }
        let plain = |s: &str| !s.contains(['\r', '\n', '"', '<', '>', ' ', ';', '?']);
        for s in [&domain, &user, self.caller_id.as_deref().unwrap_or("")] {
            if !plain(s) {
                return Err(e(format!("`{s}` has characters SIP cannot carry here")));
            }
        }
        let secret = self.secret.clone().unwrap_or_else(|| secret.to_string());
        if secret.len() < 8 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(e("`secret` must be at least 8 letters and digits".into()));
        }
        // The numbers: mapped in the file, mapped from the CLI (which win), and owned
        // without a mapping (they ring the default target).
        let mut dids: Vec<DidSpec> = stored
            .iter()
            .filter(|d| d.provider.as_deref().is_none_or(|p| p == name))
            .cloned()
            .collect();
        let owned = self.numbers.iter().map(|n| DidSpec {
            number: n.clone(),
            target: String::new(),
            provider: None,
        });
        for d in self.did.iter().cloned().chain(owned) {
            if !dids.iter().any(|x| x.number == d.number) {
                dids.push(d);
            }
        }
        Ok(TrunkSettings {
            name: name.to_string(),
            peer: TrunkPeer {
                domain,
                registrar,
                proxy: self.outbound_proxy.clone(),
                transport,
                realm: self.realm.clone(),
                addresses: self.addresses.clone(),
            },
            register: register.then(|| RegisterSettings {
                expires: self.expires.unwrap_or(600).max(30),
                retry: self.retry.unwrap_or(30).max(1),
            }),
            keepalive: self.keepalive.unwrap_or(30),
            calls: TrunkCalls {
                number_format: self.number_format.unwrap_or_default(),
                identity: self.identity.unwrap_or_default(),
                max_calls: self.max_calls.unwrap_or(0),
                outgoing: self.outgoing.unwrap_or(register),
                caller_id: self.caller_id.clone().or_else(|| {
                    self.numbers
                        .first()
                        .or(self.did.first().map(|d| &d.number))
                        .cloned()
                }),
            },
            account: Account {
                auth_user: self.auth_user.clone().unwrap_or_else(|| user.clone()),
                user,
                password: self.password.clone().unwrap_or_default(),
                secret,
            },
            dids,
            default_target: self.default_target.clone(),
        })
    }
}

/// A provider file's text.
pub fn to_toml(spec: &ProviderSpec) -> Result<String, String> {
    toml::to_string(spec).map_err(|e| e.to_string())
}

/// Checks a provider's name (its file's name): letters, digits, `-` and `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a provider name (letters, digits, `-` and `_`)"
        ))
    }
}

/// Reads one provider file (or profile).
pub fn read_spec(path: &Path) -> Result<ProviderSpec, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A profile by name: `providers.d/profiles/NAME.toml`, else a built-in one.
pub fn profile(dir: &Path, name: &str) -> Result<ProviderSpec, String> {
    check_name(name)?;
    let own = dir.join("profiles").join(format!("{name}.toml"));
    if own.exists() {
        return read_spec(&own);
    }
    match PROFILES.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => toml::from_str(text).map_err(|e| format!("profile `{name}`: {e}")),
        None => Err(format!(
            "no profile `{name}` (built in: {}; or put one in {})",
            PROFILES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            dir.join("profiles").display()
        )),
    }
}

/// The provider files of a folder, by name, in name order (the order they are tried in).
pub fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<(String, PathBuf)> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
        .collect();
    out.sort();
    out
}

/// A provider file with its profile applied.
pub fn resolved_spec(dir: &Path, path: &Path) -> Result<ProviderSpec, String> {
    let spec = read_spec(path)?;
    match spec.profile.clone() {
        Some(p) => Ok(spec.on_profile(&profile(dir, &p)?)),
        None => Ok(spec),
    }
}

/// Every provider of the folder, checked: one bad file fails the whole load (a reload then
/// keeps the providers in force), naming the file.
pub fn load(dir: &Path, key: &[u8; 32], stored: &[DidSpec]) -> Result<Vec<TrunkSettings>, String> {
    let mut out = vec![];
    for (name, path) in files(dir) {
        check_name(&name)?;
        let spec = resolved_spec(dir, &path)?;
        out.push(spec.settle(&name, &contact_secret(key, &name), stored)?);
    }
    Ok(out)
}

/// The user part of our Contact at a provider: derived from the data folder's key, so it
/// stays across restarts and cannot be guessed by others.
pub fn contact_secret(key: &[u8; 32], name: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(key);
    h.update(b"hedgewitch provider contact ");
    h.update(name.as_bytes());
    h.finalize()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_on_a_profile() {
        let dir = std::env::temp_dir().join(format!("hw-prov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("acme.toml"),
            "profile = \"national-pai\"\ndomain = \"sip.acme.test\"\nuser = \"u1\"\npassword = \"p\"\nnumbers = [\"+4930999\"]\n[[did]]\nnumber = \"+4930998\"\ntarget = \"family\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("pbx.toml"),
            "profile = \"ip-pbx\"\ndomain = \"192.0.2.10\"\n",
        )
        .unwrap();
        let stored = [DidSpec {
            number: "+4930999".into(),
            target: "alice".into(),
            provider: Some("acme".into()),
        }];
        let all = load(&dir, &[1; 32], &stored).unwrap();
        assert_eq!(all.len(), 2);
        let a = &all[0];
        assert_eq!(a.name, "acme");
        assert_eq!(a.calls.number_format, NumberFormat::National);
        assert_eq!(a.calls.identity, Identity::Pai);
        assert_eq!(a.peer.registrar, "sip:sip.acme.test");
        assert_eq!(a.calls.caller_id.as_deref(), Some("+4930999"));
        assert_eq!(a.dids.len(), 2);
        assert_eq!(a.dids[0].target, "alice", "the CLI's mapping wins");
        assert_eq!(a.account.secret.len(), 20);
        let p = &all[1];
        assert!(p.register.is_none() && !p.calls.outgoing);
        std::fs::write(dir.join("bad.toml"), "domain = \"x\"\nwhat = 1\n").unwrap();
        assert!(load(&dir, &[1; 32], &[]).unwrap_err().contains("bad.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_built_in_profile_reads() {
        for (name, _) in PROFILES {
            let p = profile(Path::new("/nonexistent"), name).unwrap();
            assert!(p.description.is_some(), "{name}");
        }
    }
}
