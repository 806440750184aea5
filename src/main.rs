//! The `hedgewitch` command: runs the daemon (`serve`) and manages it (`user`, `group`,
//! `forward`, `speeddial`, `dialplan`, `reload`, `status`, `registrations`). Argument parsing
//! and printing only; the work is done by the server crate.

mod install;
mod plan_cli;
mod provider_cli;

use clap::{Parser, Subcommand};
use hedgewitch_server::accounts;
use hedgewitch_server::config::{Config, DomainOrigin};
use hedgewitch_server::control;
use hedgewitch_server::store::{SqliteStore, Store};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hedgewitch",
    version,
    about = "SIP domain-telephony server: registrar and proxy for your domain"
)]
struct Cli {
    /// Configuration file (TOML). Without it, /etc/hedgewitch/hedgewitch.toml if it exists,
    /// else built-in defaults.
    #[arg(long, short, global = true, env = "HEDGEWITCH_CONFIG")]
    config: Option<PathBuf>,
    /// SIP domain served (overrides the config file). Needed once: the data folder records
    /// the domain it was set up for, and later commands read it from there.
    #[arg(long, global = true)]
    domain: Option<String>,
    /// Data folder (overrides the config file).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log lines as text (default) or as JSON objects, one per line, for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground.
    Serve,
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Ring groups: several phones behind one name and extension.
    #[command(subcommand)]
    Group(plan_cli::GroupCommand),
    /// Call forwarding and do-not-disturb per user.
    #[command(subcommand)]
    Forward(plan_cli::ForwardCommand),
    /// Short codes that dial a target.
    #[command(subcommand)]
    Speeddial(plan_cli::SpeedDialCommand),
    /// Number rewriting, routing and barring rules.
    #[command(subcommand)]
    Dialplan(plan_cli::DialPlanCommand),
    /// Make the running server re-read its config file and store (same as SIGHUP).
    Reload,
    /// TLS certificates.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Check the setup (domain, users, ports, DNS records, TLS certificate) and say how to
    /// fix what is wrong. Exits with 1 when something does not work.
    Doctor,
    /// Show the running server's state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the registered contacts of the running server.
    Registrations {
        #[arg(long)]
        json: bool,
    },
    /// List calls in progress, with their media relay ports and packet counters.
    Calls {
        #[arg(long)]
        json: bool,
    },
    /// List TURN allocations: who, from where, the relayed address, permissions, channels
    /// and the packets carried each way.
    Turn {
        #[arg(long)]
        json: bool,
    },
    /// Who watches whom (presence and busy-lamp subscriptions), or which watchers of other
    /// domains a user lets see their presence.
    Presence {
        #[command(subcommand)]
        rule: Option<PresenceCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Messages waiting for users whose phones were off, per user.
    Messages {
        #[arg(long)]
        json: bool,
    },
    /// The SIP providers and peered PBXs: registered or not, since when, and why.
    Providers {
        #[arg(long)]
        json: bool,
    },
    /// Add, list, remove or test SIP providers (files in providers.d).
    #[command(subcommand)]
    Provider(provider_cli::ProviderCommand),
    /// Which user, group or extension each of your telephone numbers rings.
    #[command(subcommand)]
    Did(provider_cli::DidCommand),
    /// List the addresses banned for failed logins, or lift a ban.
    Bans {
        #[command(subcommand)]
        lift: Option<BansCommand>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PresenceCommand {
    /// Let a watcher of another domain (`bob@example.net`, or `*@example.net`) see USER's
    /// presence.
    Allow { user: String, watcher: String },
    /// Take that back.
    Disallow { user: String, watcher: String },
    /// The watchers users let see them.
    Allowed,
}

#[derive(Subcommand)]
enum BansCommand {
    /// Lift the ban on an address (for IPv6, on its /64).
    Lift { address: std::net::IpAddr },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Make a private CA and a certificate for the domain signed by it, for trials and tests
    /// (`ca.pem`, `cert.pem`, `key.pem`; other servers trust `ca.pem` with tls.ca_files).
    SelfSigned {
        /// Folder to write to (default: DATA_DIR/tls).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Another host name or IP address the certificate names besides the domain (the
        /// one browsers open the page at); may be given more than once.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Add {
        name: String,
        /// Short number that reaches this user too.
        #[arg(long)]
        extension: Option<String>,
        /// Read the password from the first line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
        /// Keep a weak password (short, common, or the user's name) instead of refusing it.
        #[arg(long)]
        allow_weak_password: bool,
    },
    /// Create many accounts at once from a file of `name,extension,password` lines (extension
    /// may be empty; `#` starts a comment). All or nothing.
    Import {
        file: PathBuf,
        /// Keep weak passwords instead of refusing the file.
        #[arg(long)]
        allow_weak_password: bool,
    },
    /// List accounts.
    List,
    /// Change a password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        /// Keep a weak password instead of refusing it.
        #[arg(long)]
        allow_weak_password: bool,
    },
    /// Delete an account and its registrations.
    Remove { name: String },
    /// Change an account's extension or permissions.
    Set {
        name: String,
        #[arg(long, conflicts_with = "no_extension")]
        extension: Option<String>,
        #[arg(long)]
        no_extension: bool,
        /// Whether the user may call outside the domain (numbers, other domains).
        #[arg(long)]
        outside: Option<plan_cli::OnOff>,
        /// Whether callers from other domains may reach the user (by name).
        #[arg(long)]
        external: Option<plan_cli::OnOff>,
    },
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if !matches!(cli.command, Command::Serve) {
        // A listing piped into `head` ends quietly when the reader goes, as other Unix tools
        // do, instead of panicking in println!. Not for `serve`: a peer closing its TCP
        // connection must not kill the server.
        // SAFETY: setting a signal's disposition to the default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    cli.config = cli.config.or_else(install::default_config);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hedgewitch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(d) = cli.data_dir {
        cfg.data_dir = d;
        cfg.data_dir_from_option = true;
    }
    // Before anything touches the store: root works as the data folder's owner (the daemon
    // too, so that it never leaves files there that the service user could not write).
    install::become_data_owner(&cfg.data_dir)?;
    cfg.settle_domain(cli.domain)?;
    match cli.command {
        Command::Serve => {
            if cfg.domain_origin != DomainOrigin::HostName {
                cfg.record_domain()?;
            }
            init_logging(&cfg.log, cli.log_format);
            hedgewitch_server::runtime::serve(cfg)
        }
        Command::User(cmd) => user(&cfg, cmd),
        Command::Group(cmd) => plan_cli::group(&cfg, cmd),
        Command::Forward(cmd) => plan_cli::forward(&cfg, cmd),
        Command::Speeddial(cmd) => plan_cli::speed_dial(&cfg, cmd),
        Command::Dialplan(cmd) => plan_cli::dial_plan(&cfg, cmd),
        Command::Providers { json } => provider_cli::status(&cfg, json),
        Command::Presence {
            rule: Some(rule), ..
        } => presence_rule(&cfg, rule),
        Command::Presence { rule: None, json } => {
            let v = control::request(&cfg.control_path(), control::Command::Presence)?;
            if json {
                println!("{v}");
                return Ok(());
            }
            let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
            if list.is_empty() {
                println!("nobody is watching");
            }
            for s in list {
                println!(
                    "{:<28} watches {:<28} {:<8} {}{}s left",
                    s["watcher"].as_str().unwrap_or("?"),
                    s["entity"].as_str().unwrap_or("?"),
                    s["event"].as_str().unwrap_or("?"),
                    if s["allowed"] == true {
                        ""
                    } else {
                        "(neutral) "
                    },
                    s["expires_in"].as_u64().unwrap_or(0)
                );
            }
            Ok(())
        }
        Command::Messages { json } => {
            let v = control::request(&cfg.control_path(), control::Command::Messages)?;
            if json {
                println!("{v}");
            } else {
                print_messages(&v);
            }
            Ok(())
        }
        Command::Provider(cmd) => provider_cli::provider(&cfg, cmd),
        Command::Did(cmd) => provider_cli::did(&cfg, cmd),
        Command::Tls(TlsCommand::SelfSigned { out, names }) => {
            let dir = out.unwrap_or_else(|| cfg.data_dir.join("tls"));
            let files = hedgewitch_server::tls::self_signed(&cfg.domain, &names, &dir)?;
            for f in &files {
                println!("wrote {}", f.display());
            }
            println!(
                "for {}: put in the config\n  listen = [..., \"tls:0.0.0.0:5061\"]\n  [tls]\n  certificate = \"{}\"\n  key = \"{}\"\nand give other servers {} in their tls.ca_files",
                cfg.domain,
                dir.join("cert.pem").display(),
                dir.join("key.pem").display(),
                dir.join("ca.pem").display()
            );
            Ok(())
        }
        Command::Reload => {
            let v = control::request(&cfg.control_path(), control::Command::Reload)?;
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                return Err(format!("reload refused, the previous settings stay: {e}"));
            }
            print_reloaded(&v);
            Ok(())
        }
        Command::Doctor => {
            let findings = hedgewitch_server::doctor::examine(&cfg);
            print!("{}", hedgewitch_server::doctor::report(&findings));
            if findings
                .iter()
                .any(|f| f.level == hedgewitch_server::doctor::Level::Problem)
            {
                return Err("problems found (see above)".into());
            }
            Ok(())
        }
        Command::Status { json } => {
            let v = control::request(&cfg.control_path(), control::Command::Status)?;
            if json {
                println!("{v}");
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Command::Registrations { json } => {
            let v = control::request(&cfg.control_path(), control::Command::Registrations)?;
            if json {
                println!("{v}");
            } else {
                print_registrations(&v);
            }
            Ok(())
        }
        Command::Calls { json } => {
            let v = control::request(&cfg.control_path(), control::Command::Calls)?;
            if json {
                println!("{v}");
            } else {
                print_calls(&v);
            }
            Ok(())
        }
        Command::Turn { json } => {
            let v = control::request(&cfg.control_path(), control::Command::Turn)?;
            if json {
                println!("{v}");
            } else {
                print_turn(&v);
            }
            Ok(())
        }
        Command::Bans {
            lift: Some(BansCommand::Lift { address }),
            ..
        } => {
            let v = control::request(&cfg.control_path(), control::Command::LiftBan(address))?;
            if v["lifted"].as_bool() == Some(true) {
                println!("ban on {address} lifted");
                Ok(())
            } else {
                Err(format!("{address} is not banned"))
            }
        }
        Command::Bans { lift: None, json } => {
            let v = control::request(&cfg.control_path(), control::Command::Bans)?;
            if json {
                println!("{v}");
            } else {
                print_bans(&v);
            }
            Ok(())
        }
    }
}

fn presence_rule(cfg: &Config, rule: PresenceCommand) -> Result<(), String> {
    let store = SqliteStore::open(&cfg.db_path())?;
    match rule {
        PresenceCommand::Allow { user, watcher } => {
            if store.user(&user)?.is_none() {
                return Err(format!("no user `{user}`"));
            }
            let ok = watcher
                .split_once('@')
                .is_some_and(|(n, d)| !n.is_empty() && !d.is_empty() && !d.contains(['@', ' ']));
            if !ok {
                return Err(format!(
                    "`{watcher}` is not a watcher address (name@domain, or *@domain)"
                ));
            }
            store.put_presence_allow(&hedgewitch_server::plan::settings::PresenceAllow {
                user: user.clone(),
                watcher: watcher.clone(),
            })?;
            notify_daemon(cfg);
            println!("{watcher} may see {user}'s presence");
        }
        PresenceCommand::Disallow { user, watcher } => {
            if !store.remove_presence_allow(&user, &watcher)? {
                return Err(format!("{watcher} was not allowed to see {user}"));
            }
            notify_daemon(cfg);
            println!("{watcher} no longer sees {user}'s presence");
        }
        PresenceCommand::Allowed => {
            let settings = cfg.presence_settings(&store.plan()?);
            let mut rows: Vec<(&String, &String)> = settings
                .allow
                .iter()
                .flat_map(|(u, ws)| ws.iter().map(move |w| (u, w)))
                .collect();
            rows.sort();
            if rows.is_empty() {
                println!("no watcher of another domain is allowed");
            }
            for (u, w) in rows {
                println!("{u:<24} {w}");
            }
        }
    }
    Ok(())
}

fn print_messages(v: &serde_json::Value) {
    let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        println!("no messages are waiting");
        return;
    }
    println!("{:<24} {:>6} {:>9}  FROM", "USER", "COUNT", "BYTES");
    for m in list {
        let senders: Vec<&str> = m["senders"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<24} {:>6} {:>9}  {}",
            m["user"].as_str().unwrap_or("?"),
            m["count"].as_u64().unwrap_or(0),
            m["bytes"].as_u64().unwrap_or(0),
            senders.join(", ")
        );
    }
}

fn print_bans(v: &serde_json::Value) {
    let bans = v.as_array().map(Vec::as_slice).unwrap_or_default();
    if bans.is_empty() {
        println!("no address is banned");
        return;
    }
    println!("{:<28} {:>10} {:>8}", "SOURCE", "REMAINING", "OFFENCE");
    for b in bans {
        let secs = b["remaining_secs"].as_u64().unwrap_or(0);
        println!(
            "{:<28} {:>7}m{:02}s {:>8}",
            b["source"].as_str().unwrap_or("?"),
            secs / 60,
            secs % 60,
            b["offence"]
        );
    }
}

/// Logs go to standard error (journald takes them under systemd); colours only on a terminal,
/// so a log written to a file or read by a collector has no escape codes.
fn init_logging(filter: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn read_password(from_stdin: bool, who: &str) -> Result<String, String> {
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let a = rpassword::prompt_password(format!("Password for {who}: ")).map_err(|e| {
            format!("cannot read the password from the terminal ({e}); use --password-stdin")
        })?;
        let b = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if a != b {
            return Err("the passwords differ".into());
        }
        a
    };
    if pw.is_empty() {
        return Err("empty password".into());
    }
    Ok(pw)
}

/// Asks a running daemon to re-read the users and the dial plan; fine if none runs.
pub(crate) fn notify_daemon(cfg: &Config) {
    if cfg.control_path().exists() {
        match control::request(&cfg.control_path(), control::Command::ReloadUsers) {
            Ok(v) => {
                if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                    eprintln!("note: the running server did not reload: {e}");
                }
            }
            Err(e) => eprintln!("note: the running server did not reload: {e}"),
        }
    }
}

fn user(cfg: &Config, cmd: UserCommand) -> Result<(), String> {
    if matches!(
        cmd,
        UserCommand::Add { .. } | UserCommand::Import { .. } | UserCommand::Passwd { .. }
    ) {
        accounts::check_running_domain(cfg)?;
    }
    let mut store = SqliteStore::open(&cfg.db_path())?;
    match cmd {
        UserCommand::Add {
            name,
            extension,
            password_stdin,
            allow_weak_password,
        } => {
            // The name first: nobody types a password for a name that is refused anyway.
            accounts::check_name(cfg, &name)?;
            if let Some(e) = &extension {
                accounts::check_extension(cfg, e)?;
            }
            let pw = read_password(password_stdin, &name)?;
            let password = accounts::Password {
                text: &pw,
                allow_weak: allow_weak_password,
            };
            accounts::add(cfg, &store, &name, extension.as_deref(), password)?;
            notify_daemon(cfg);
            println!(
                "added {}{}",
                accounts::address(cfg, &name),
                extension
                    .map(|e| format!(" (extension {e})"))
                    .unwrap_or_default()
            );
        }
        UserCommand::Import {
            file,
            allow_weak_password,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let users = accounts::parse_import(
                cfg,
                &file.display().to_string(),
                &text,
                allow_weak_password,
            )?;
            accounts::import(cfg, &mut store, &users)?;
            notify_daemon(cfg);
            println!("imported {} users", users.len());
        }
        UserCommand::List => {
            let users = store.users()?;
            if users.is_empty() {
                println!("no users yet: hedgewitch user add NAME --extension NUMBER");
            }
            for u in users {
                println!(
                    "{:<24} {:<8} {}",
                    u.name,
                    u.extension.as_deref().unwrap_or("-"),
                    accounts::realm_note(cfg, &u)
                );
            }
        }
        UserCommand::Passwd {
            name,
            password_stdin,
            allow_weak_password,
        } => {
            if store.user(&name)?.is_none() {
                return Err(format!("no user `{name}`"));
            }
            let pw = read_password(password_stdin, &name)?;
            let password = accounts::Password {
                text: &pw,
                allow_weak: allow_weak_password,
            };
            accounts::set_password(cfg, &store, &name, password)?;
            notify_daemon(cfg);
            println!("password of {name} changed");
        }
        UserCommand::Set {
            name,
            extension,
            no_extension,
            outside,
            external,
        } => {
            let on = |o: plan_cli::OnOff| matches!(o, plan_cli::OnOff::On);
            let changes = accounts::Changes {
                extension: if no_extension {
                    Some(None)
                } else {
                    extension.map(Some)
                },
                outside: outside.map(on),
                external: external.map(on),
            };
            let u = accounts::change(cfg, &store, &name, changes)?;
            notify_daemon(cfg);
            println!(
                "{name}: extension {}, calls outside the domain {}",
                u.extension.as_deref().unwrap_or("none"),
                if u.outside { "allowed" } else { "not allowed" }
            );
        }
        UserCommand::Remove { name } => {
            if !store.remove_user(&name)? {
                return Err(format!("no user `{name}`"));
            }
            notify_daemon(cfg);
            println!("removed {name}");
        }
    }
    Ok(())
}

fn print_reloaded(v: &serde_json::Value) {
    let list = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!(
        "reloaded: {} users, {} groups",
        v.get("users").cloned().unwrap_or_default(),
        v.get("groups").cloned().unwrap_or_default()
    );
    let applied = list("applied");
    if !applied.is_empty() {
        println!("applied: {applied}");
    }
    let restart = list("restart_needed");
    if !restart.is_empty() {
        println!("changed, but applied only after a restart: {restart}");
    }
}

fn print_status(v: &serde_json::Value) {
    let g = |k: &str| v.get(k).cloned().unwrap_or_default();
    let c = |k: &str| {
        v.get("counters")
            .and_then(|c| c.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let up = g("uptime_secs").as_u64().unwrap_or(0);
    println!("domain         {}", g("domain").as_str().unwrap_or(""));
    println!(
        "uptime         {}h {:02}m {:02}s",
        up / 3600,
        up % 3600 / 60,
        up % 60
    );
    println!("users          {}", g("users"));
    println!(
        "registered     {} users, {} contacts",
        g("registered_users"),
        g("contacts")
    );
    println!(
        "transactions   {} server, {} client, {} forwarding",
        g("server_transactions"),
        g("client_transactions"),
        g("proxy_contexts")
    );
    if let Some(n) = v["relay_ports_ready"].as_u64() {
        println!("relay          {n} port pairs ready");
    }
    println!(
        "since start    {} requests, {} responses, {} malformed, {} calls, {} messages, {} auth failures",
        c("requests_in"),
        c("responses_in"),
        c("malformed_in"),
        c("calls_forwarded"),
        c("messages_forwarded"),
        c("auth_failures")
    );
    println!(
        "overload       {} requests refused (503), {} datagrams dropped",
        c("overloaded"),
        g("dropped_datagrams")
    );
}

fn print_turn(v: &serde_json::Value) {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no TURN allocations");
        return;
    }
    for a in list {
        let s = |k: &str| a.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
        let n = |k: &str| a.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let c = |k: &str| a["counters"].get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let list = |k: &str| {
            a.get(k)
                .and_then(|x| x.as_array())
                .map(|l| {
                    l.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!(
            "{}  {} {} -> relayed {}  {}s left  to peers {} pkts  to client {} pkts  dropped {}",
            s("user"),
            s("transport"),
            s("client"),
            s("relayed"),
            n("expires_in_secs"),
            c("to_peers"),
            c("to_client"),
            c("dropped"),
        );
        println!("    permissions: {}", list("permissions"));
        println!("    channels: {}", list("channels"));
    }
}

fn print_calls(v: &serde_json::Value) {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no calls");
        return;
    }
    for c in list {
        let s = |k: &str| c.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
        let n = |k: &str| c.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        println!(
            "{} -> {}  {}  {}s  media {}  (Call-ID {})",
            s("from"),
            s("to"),
            s("state"),
            n("age_secs"),
            s("media"),
            s("call_id")
        );
        for m in c
            .get("streams")
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
        {
            let t = |k: &str| m.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
            let u = |k: &str| m.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            println!(
                "    {:<6} caller {} -> :{} {} pkts | callee {} -> :{} {} pkts | dropped {}",
                t("kind"),
                t("caller_source"),
                u("caller_port"),
                u("packets_from_caller"),
                t("callee_source"),
                u("callee_port"),
                u("packets_from_callee"),
                u("dropped")
            );
        }
    }
}

fn print_registrations(v: &serde_json::Value) {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no registrations");
        return;
    }
    println!(
        "{:<16} {:<6} {:<9} {:<5} {:<22} {:<24} CONTACT",
        "USER", "EXT", "EXPIRES", "VIA", "SOURCE", "USER AGENT"
    );
    for r in list {
        let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
        println!(
            "{:<16} {:<6} {:<9} {:<5} {:<22} {:<24} {}",
            s("user"),
            s("extension"),
            format!(
                "{}s",
                r.get("expires_in_secs")
                    .and_then(|x| x.as_u64())
                    .unwrap_or(0)
            ),
            s("transport"),
            s("source"),
            match s("user_agent") {
                ua if ua.is_empty() => "-".to_string(),
                // A phone chooses this text: no escape sequences reach the terminal.
                ua => ua
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
            },
            s("contact")
        );
    }
}
