//! `hedgewitch providers`, `provider ...` and `did ...`: SIP providers as drop-in files,
//! their registrations as the running server sees them, and which user, group or extension
//! each of the household's numbers rings.

use clap::Subcommand;
use hedgewitch_server::config::Config;
use hedgewitch_server::control;
use hedgewitch_server::core::trunks::settings::DidSpec;
use hedgewitch_server::providers::{self, ProviderSpec};
use hedgewitch_server::store::SqliteStore;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Add a provider: writes providers.d/NAME.toml (mode 0600: it holds the password).
    Add {
        /// The provider's name (letters, digits, `-`, `_`); providers are tried in name order.
        name: String,
        /// A profile to build on (`hedgewitch provider profiles` lists them).
        #[arg(long)]
        profile: Option<String>,
        /// The provider's SIP domain (the host of your account's address).
        #[arg(long)]
        provider_domain: String,
        /// Your account's user name.
        #[arg(long)]
        user: Option<String>,
        /// The user name for authentication, when the provider gives a separate one.
        #[arg(long)]
        auth_user: Option<String>,
        /// Read the account's password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Where REGISTER goes, when not the domain (`sip:reg.example.net:5060`).
        #[arg(long)]
        registrar: Option<String>,
        /// An outbound proxy every request goes through.
        #[arg(long)]
        outbound_proxy: Option<String>,
        /// One of your numbers on this account (repeat for more); the first is shown as
        /// the caller's.
        #[arg(long = "number")]
        numbers: Vec<String>,
        /// What calls to your numbers ring when `did` names nothing else.
        #[arg(long)]
        default_target: Option<String>,
    },
    /// The provider files and what each says.
    List,
    /// Remove a provider's file (the running server unregisters from it).
    Remove { name: String },
    /// Register now and say how it went (for a peer: whether it answers).
    Test {
        name: String,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 15)]
        wait: u64,
    },
    /// The built-in profiles.
    Profiles,
}

#[derive(Subcommand)]
pub enum DidCommand {
    /// Map one of your numbers to a user, group or extension.
    Add {
        number: String,
        target: String,
        /// The provider the number is on (any, when left out).
        #[arg(long)]
        provider: Option<String>,
    },
    /// The numbers and what they ring.
    List,
    /// Remove a number's mapping (it rings the default target again).
    Remove { number: String },
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ago(since: Option<u64>) -> String {
    let Some(s) = since else {
        return "-".into();
    };
    let d = unix_now().saturating_sub(s);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86400),
    }
}

/// `hedgewitch providers`: what the running server says of each provider.
pub fn status(cfg: &Config, json: bool) -> Result<(), String> {
    let v = control::request(&cfg.control_path(), control::Command::Providers)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        println!(
            "no providers: add one with `hedgewitch provider add` or a file in {}",
            cfg.providers_path().display()
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<12} {:>6} {:<32} {:>5}  WHY / CONTACT",
        "PROVIDER", "STATE", "SINCE", "ACCOUNT", "CALLS"
    );
    for p in list {
        let why = p["reason"]
            .as_str()
            .map(str::to_string)
            .or_else(|| p["contact"].as_str().map(|c| format!("as {c}")))
            .unwrap_or_default();
        println!(
            "{:<16} {:<12} {:>6} {:<32} {:>5}  {}",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            ago(p["since"].as_u64()),
            p["account"].as_str().unwrap_or("?"),
            p["calls"].as_u64().unwrap_or(0),
            why
        );
    }
    Ok(())
}

pub fn provider(cfg: &Config, cmd: ProviderCommand) -> Result<(), String> {
    let dir = cfg.providers_path();
    match cmd {
        ProviderCommand::Add {
            name,
            profile,
            provider_domain,
            user,
            auth_user,
            password_stdin,
            registrar,
            outbound_proxy,
            numbers,
            default_target,
        } => {
            providers::check_name(&name)?;
            let path = dir.join(format!("{name}.toml"));
            if path.exists() {
                return Err(format!(
                    "{} exists; edit it, or remove the provider first",
                    path.display()
                ));
            }
            let password = if password_stdin || user.is_some() {
                Some(crate::read_password(password_stdin, &name)?)
            } else {
                None
            };
            let spec = ProviderSpec {
                profile: profile.clone(),
                domain: Some(provider_domain),
                user,
                auth_user,
                password,
                registrar,
                outbound_proxy,
                numbers,
                default_target,
                ..Default::default()
            };
            // Checked as the server will read it, before anything is written.
            let full = match &profile {
                Some(p) => spec.clone().on_profile(&providers::profile(&dir, p)?),
                None => spec.clone(),
            };
            full.settle(&name, "checkonly0", &[])?;
            let text = providers::to_toml(&spec)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            write_private(&path, &text)?;
            crate::notify_daemon(cfg);
            println!("added provider {name} ({})", path.display());
        }
        ProviderCommand::List => {
            let files = providers::files(&dir);
            if files.is_empty() {
                println!("no provider files in {}", dir.display());
            }
            for (name, path) in files {
                match providers::resolved_spec(&dir, &path) {
                    Ok(s) => println!(
                        "{name:<16} {}@{}  profile {}  {}",
                        s.user.as_deref().unwrap_or("-"),
                        s.domain.as_deref().unwrap_or("?"),
                        s.profile.as_deref().unwrap_or("-"),
                        if s.register.unwrap_or(true) {
                            "registers"
                        } else {
                            "peer"
                        }
                    ),
                    Err(e) => println!("{name:<16} unreadable: {e}"),
                }
            }
        }
        ProviderCommand::Remove { name } => {
            providers::check_name(&name)?;
            let path = dir.join(format!("{name}.toml"));
            std::fs::remove_file(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            crate::notify_daemon(cfg);
            println!("removed provider {name}");
        }
        ProviderCommand::Test { name, wait } => return test(cfg, &name, wait),
        ProviderCommand::Profiles => {
            for (name, _) in providers::PROFILES {
                let p = providers::profile(&dir, name)?;
                println!("{name:<20} {}", p.description.unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// Registers now and waits for the outcome.
fn test(cfg: &Config, name: &str, wait: u64) -> Result<(), String> {
    let asked = unix_now();
    let v = control::request(
        &cfg.control_path(),
        control::Command::ProviderTest(name.to_string()),
    )?;
    if v["found"].as_bool() != Some(true) {
        return Err(format!("the running server has no provider `{name}`"));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(wait);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let v = control::request(&cfg.control_path(), control::Command::Providers)?;
        let p = v
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_default();
        let state = p["state"].as_str().unwrap_or("?").to_string();
        let fresh = p["since"].as_u64().is_some_and(|s| s >= asked);
        let settled = match state.as_str() {
            "registered" => fresh || p["expires_in"].as_u64().is_some(),
            "failed" | "refused" => fresh,
            // A peer's keep-alive has had its time to come back.
            "peer" | "unreachable" => start.elapsed() >= Duration::from_secs(2),
            _ => false,
        };
        if settled || Instant::now() >= end {
            let why = p["reason"].as_str().unwrap_or("");
            println!(
                "{name}: {state}{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            );
            return match state.as_str() {
                "registered" | "peer" => Ok(()),
                _ => Err(format!("{name} is not working")),
            };
        }
    }
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub fn did(cfg: &Config, cmd: DidCommand) -> Result<(), String> {
    let store = SqliteStore::open(&cfg.db_path())?;
    match cmd {
        DidCommand::Add {
            number,
            target,
            provider,
        } => {
            if let Some(p) = &provider {
                providers::check_name(p)?;
            }
            let users = hedgewitch_server::store::Store::users(&store)?;
            let plan = cfg.build_plan(&users, &store.plan()?)?;
            match plan.target(&target, None) {
                hedgewitch_server::plan::Dialed::Local(_) => {}
                _ => {
                    return Err(format!(
                        "`{target}` is no user, group or extension of {}",
                        cfg.domain
                    ))
                }
            }
            store.put_did(&DidSpec {
                number: number.clone(),
                target: target.clone(),
                provider,
            })?;
            crate::notify_daemon(cfg);
            println!("{number} rings {target}");
        }
        DidCommand::List => {
            let stored = store.plan()?.dids;
            let dir = cfg.providers_path();
            let mut any = false;
            for d in &stored {
                any = true;
                println!(
                    "{:<20} {:<16} {}",
                    d.number,
                    d.target,
                    d.provider.as_deref().unwrap_or("(any provider)")
                );
            }
            for (name, path) in providers::files(&dir) {
                let Ok(s) = providers::resolved_spec(&dir, &path) else {
                    continue;
                };
                let mapped = s.did.iter().map(|d| (d.number.clone(), d.target.clone()));
                let bare = s.numbers.iter().map(|n| (n.clone(), String::new()));
                for (n, t) in mapped.chain(bare) {
                    if stored.iter().any(|d| d.number == n) {
                        continue;
                    }
                    any = true;
                    let t = if t.is_empty() {
                        s.default_target
                            .clone()
                            .or(cfg.numbers.default_target.clone())
                            .unwrap_or_else(|| "(nobody: 404)".into())
                    } else {
                        t
                    };
                    println!("{n:<20} {t:<16} {name} (file)");
                }
            }
            if !any {
                println!("no numbers");
            }
        }
        DidCommand::Remove { number } => {
            if !store.remove_did(&number)? {
                return Err(format!("{number} is not mapped with `hedgewitch did`"));
            }
            crate::notify_daemon(cfg);
            println!("removed the mapping of {number}");
        }
    }
    Ok(())
}
