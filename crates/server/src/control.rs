//! The control channel between the CLI and the running daemon: a Unix socket in the data
//! folder (mode 0600, so only the server's own user can use it). One request per connection:
//! the client writes a command line (`status`, `registrations`, `reload-users`) and reads one
//! line of JSON back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// What the CLI may ask the running daemon: one line on the socket, the same enum on both
/// sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Uptime, users, registrations, transactions and counters.
    Status,
    /// Every registered contact.
    Registrations,
    /// Calls in progress and their media.
    Calls,
    /// TURN allocations and what they carried.
    Turn,
    /// Read the config file and the store again (`hedgewitch reload`, like SIGHUP).
    Reload,
    /// After a management command changed the store (`user add`...): the users and the
    /// phone-system settings are read again, the config file is not.
    ReloadUsers,
    /// Sources banned for failed logins.
    Bans,
    /// Lift the ban on this address's source (`lift-ban ADDRESS` on the wire).
    LiftBan(std::net::IpAddr),
    /// The providers and their registrations.
    Providers,
    /// Messages waiting for offline users, per user.
    Messages,
    /// Presence and busy-lamp subscriptions.
    Presence,
    /// Register to a provider (or ping a peer) now (`provider-test NAME` on the wire).
    ProviderTest(String),
}

impl Command {
    const WORDS: [Command; 10] = [
        Command::Status,
        Command::Registrations,
        Command::Calls,
        Command::Turn,
        Command::Reload,
        Command::ReloadUsers,
        Command::Bans,
        Command::Providers,
        Command::Messages,
        Command::Presence,
    ];

    /// The command's word on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Registrations => "registrations",
            Command::Calls => "calls",
            Command::Turn => "turn",
            Command::Reload => "reload",
            Command::ReloadUsers => "reload-users",
            Command::Bans => "bans",
            Command::LiftBan(_) => "lift-ban",
            Command::Providers => "providers",
            Command::Messages => "messages",
            Command::Presence => "presence",
            Command::ProviderTest(_) => "provider-test",
        }
    }

    /// The whole line on the wire: the word, and its argument if it takes one.
    pub fn to_line(&self) -> String {
        match self {
            Command::LiftBan(ip) => format!("lift-ban {ip}"),
            Command::ProviderTest(name) => format!("provider-test {name}"),
            other => other.as_str().to_string(),
        }
    }

    /// The command a line on the wire names, if any (the inverse of `to_line`).
    pub fn parse(line: &str) -> Option<Command> {
        match line.split_once(' ') {
            Some(("lift-ban", ip)) => ip.trim().parse().ok().map(Command::LiftBan),
            Some(("provider-test", name)) => Some(Command::ProviderTest(name.trim().to_string())),
            Some(_) => None,
            None => Command::WORDS.into_iter().find(|c| c.as_str() == line),
        }
    }
}

/// A command that came in on the socket, with where its answer goes.
pub struct Request {
    /// What was asked.
    pub command: Command,
    /// Takes the JSON answer written back to the client.
    pub reply: oneshot::Sender<serde_json::Value>,
}

/// Serves the socket: each request goes to `events` as whatever the event loop's event type
/// makes of it (the loop owns that type; this module needs to know none of it).
pub fn spawn_server<E: From<Request> + Send + 'static>(
    path: &Path,
    events: mpsc::Sender<E>,
) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another hedgewitch is already running with this data folder (control socket {} answers)",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot open control socket {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let events = events.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut line = String::new();
                let mut rd = tokio::io::BufReader::new(rd);
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let Some(command) = Command::parse(line.trim()) else {
                    // Unknown words are answered here: the event loop never sees them.
                    let answer =
                        serde_json::json!({"error": format!("unknown command `{}`", line.trim())});
                    let _ = wr.write_all(format!("{answer}\n").as_bytes()).await;
                    return;
                };
                let (tx, rx) = oneshot::channel();
                if events
                    .send(E::from(Request { command, reply: tx }))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Ok(v) = rx.await {
                    let mut out = v.to_string();
                    out.push('\n');
                    let _ = wr.write_all(out.as_bytes()).await;
                }
            });
        }
    });
    Ok(())
}

/// Client side, used by the CLI: sends one command and returns the daemon's JSON answer.
pub fn request(path: &Path, command: Command) -> Result<serde_json::Value, String> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "the server is not running (cannot reach {}: {e}); start it with `hedgewitch serve`",
            path.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(format!("{}\n", command.to_line()).as_bytes())
        .map_err(|e| format!("control socket: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("control socket: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("bad answer from server: {e}"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(e.to_string());
    }
    Ok(v)
}
