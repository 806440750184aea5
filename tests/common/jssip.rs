//! JsSIP (from npm, pinned by `web/package-lock.json`) as a SIP-over-WebSocket peer without
//! media: `web/test/jssip-agent.cjs` run by Node, driven by JSON lines on its stdin and
//! reporting JSON lines on its stdout.

use super::*;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};

/// The `web` folder: the page's sources, its npm packages and the test agents.
pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// True when Node and the npm packages (`npm ci` in `web/`, done by `scripts/test`) are
/// there; otherwise the same rule as [`peers_available`].
pub fn jssip_available() -> bool {
    if !peers_available(&["node"]) {
        return false;
    }
    let installed = web_dir().join("node_modules/jssip/package.json").is_file();
    if !installed && std::env::var("HEDGEWITCH_SKIP_PEERS").as_deref() == Ok("1") {
        eprintln!("skipped: web/node_modules is missing (run `npm ci` in web/)");
        return false;
    }
    assert!(
        installed,
        "web/node_modules is missing: run `npm ci` in web/ (scripts/test does)"
    );
    true
}

/// A running JsSIP agent.
pub struct JsSip {
    child: Child,
    stdin: std::process::ChildStdin,
    events: Arc<Mutex<Vec<Value>>>,
    /// Its name in failure messages.
    pub name: String,
}

impl JsSip {
    /// Starts an agent for `user` over the WebSocket at `url`; `ca` (a PEM file) is trusted
    /// for `wss:`.
    pub fn start(url: &str, user: &TestUser, ca: Option<&Path>) -> JsSip {
        let opts = serde_json::json!({
            "url": url,
            "uri": format!("sip:{}@{DOMAIN}", user.name),
            "password": user.password,
            "display": format!("{} (browser)", user.name),
        });
        let mut cmd = Command::new("node");
        cmd.arg("--experimental-websocket")
            .arg("test/jssip-agent.cjs")
            .arg(opts.to_string())
            .current_dir(web_dir())
            .env_remove("NODE_TLS_REJECT_UNAUTHORIZED")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(ca) = ca {
            cmd.env("NODE_EXTRA_CA_CERTS", ca);
        }
        let mut child = cmd.spawn().expect("start node");
        let stdin = child.stdin.take().expect("agent stdin");
        let stdout = child.stdout.take().expect("agent stdout");
        let events = Arc::new(Mutex::new(vec![]));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("events").push(v);
                }
            }
        });
        JsSip {
            child,
            stdin,
            events,
            name: user.name.to_string(),
        }
    }

    /// Sends one command.
    pub fn command(&mut self, cmd: Value) {
        let _ = writeln!(self.stdin, "{cmd}");
        let _ = self.stdin.flush();
    }

    /// Sends an instant message.
    pub fn message(&mut self, to: &str, body: &str) {
        self.command(serde_json::json!({"cmd": "message", "to": to, "body": body}));
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }

    /// Waits for an event named `name` that `pred` accepts; panics with every event seen
    /// when none came within `timeout`.
    pub fn wait_event(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut found = None;
        poll_until(timeout, || {
            found = self
                .events()
                .into_iter()
                .find(|e| e["event"] == name && pred(e));
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "{}: no `{name}` event within {timeout:?}; events: {:?}",
                self.name,
                self.events()
            )
        })
    }

    /// Kills the agent at once (its connection is reset, as when a tab is closed).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JsSip {
    fn drop(&mut self) {
        self.kill();
    }
}
