//! The `hedgewitch` command: runs the daemon (`serve`) and manages it (`user`, `status`,
//! `registrations`). Argument parsing and printing only; the work is done by the server crate.

use clap::{Parser, Subcommand};
use hedgewitch_server::config::Config;
use hedgewitch_server::control;
use hedgewitch_server::store::{SqliteStore, Store, User};
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
    /// Configuration file (TOML). Without it, built-in defaults are used.
    #[arg(long, short, global = true, env = "HEDGEWITCH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground.
    Serve {
        /// SIP domain to serve (overrides the config file).
        #[arg(long)]
        domain: Option<String>,
        /// Data folder (overrides the config file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
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
    },
    /// Create many accounts at once from a file of `name,extension,password` lines (extension
    /// may be empty; `#` starts a comment). All or nothing.
    Import { file: PathBuf },
    /// List accounts.
    List,
    /// Change a password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an account and its registrations.
    Remove { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match cli.command {
        Command::Serve { domain, data_dir } => {
            if let Some(d) = domain {
                cfg.domain = d;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            init_logging(&cfg.log);
            hedgewitch_server::runtime::serve(cfg)
        }
        Command::User(cmd) => user(&cfg, cmd),
        Command::Status { json } => {
            let v = control::request(&cfg.control_path(), "status")?;
            if json {
                println!("{v}");
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Command::Registrations { json } => {
            let v = control::request(&cfg.control_path(), "registrations")?;
            if json {
                println!("{v}");
            } else {
                print_registrations(&v);
            }
            Ok(())
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
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

/// Asks a running daemon to re-read the users; fine if none runs.
fn notify_daemon(cfg: &Config) {
    if cfg.control_path().exists() {
        if let Err(e) = control::request(&cfg.control_path(), "reload-users") {
            eprintln!("note: the running server did not reload its users: {e}");
        }
    }
}

fn user(cfg: &Config, cmd: UserCommand) -> Result<(), String> {
    let store = SqliteStore::open(&cfg.db_path())?;
    match cmd {
        UserCommand::Add {
            name,
            extension,
            password_stdin,
        } => {
            if !valid_name(&name) {
                return Err(format!(
                    "`{name}` is not a valid user name (letters, digits, . _ -)"
                ));
            }
            if let Some(e) = &extension {
                if e.is_empty() || e.len() > 16 || !e.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(format!("extension `{e}` must be 1 to 16 digits"));
                }
            }
            let pw = read_password(password_stdin, &name)?;
            store.add_user(&User::new(&name, extension.as_deref(), &cfg.domain, &pw))?;
            notify_daemon(cfg);
            println!(
                "added {name}@{}{}",
                cfg.domain,
                extension
                    .map(|e| format!(" (extension {e})"))
                    .unwrap_or_default()
            );
        }
        UserCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let mut users = vec![];
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut f = line.splitn(3, ',');
                let (name, ext, pw) = match (f.next(), f.next(), f.next()) {
                    (Some(n), Some(e), Some(p)) => (n.trim(), e.trim(), p),
                    _ => {
                        return Err(format!(
                            "{}:{}: expected name,extension,password",
                            file.display(),
                            n + 1
                        ))
                    }
                };
                if !valid_name(name) || pw.is_empty() {
                    return Err(format!(
                        "{}:{}: bad name or empty password",
                        file.display(),
                        n + 1
                    ));
                }
                if !ext.is_empty() && (ext.len() > 16 || !ext.bytes().all(|c| c.is_ascii_digit())) {
                    return Err(format!(
                        "{}:{}: extension must be 1 to 16 digits",
                        file.display(),
                        n + 1
                    ));
                }
                let ext = (!ext.is_empty()).then_some(ext);
                users.push(User::new(name, ext, &cfg.domain, pw));
            }
            let mut store = store;
            store.import_users(&users)?;
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
                    if u.realm == cfg.domain {
                        String::new()
                    } else {
                        format!("(password set for realm {}; run user passwd)", u.realm)
                    }
                );
            }
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let old = store
                .user(&name)?
                .ok_or_else(|| format!("no user `{name}`"))?;
            let pw = read_password(password_stdin, &name)?;
            store.update_user(&User::new(
                &name,
                old.extension.as_deref(),
                &cfg.domain,
                &pw,
            ))?;
            notify_daemon(cfg);
            println!("password of {name} changed");
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

fn print_registrations(v: &serde_json::Value) {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no registrations");
        return;
    }
    println!(
        "{:<16} {:<6} {:<9} {:<5} {:<22} CONTACT",
        "USER", "EXT", "EXPIRES", "VIA", "SOURCE"
    );
    for r in list {
        let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
        println!(
            "{:<16} {:<6} {:<9} {:<5} {:<22} {}",
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
            s("contact")
        );
    }
}
