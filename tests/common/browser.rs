//! Headless Chromium (Debian's `chromium`, driven through `playwright-core` from npm by
//! `web/test/browser-driver.cjs`) with fake microphone and camera: pages open the server's
//! softphone page, are clicked and filled like a user does, and their state (`window.hw`,
//! `RTCPeerConnection.getStats()`) is read back. Optionally inside a network namespace, so
//! that WebRTC has an interface other than loopback to gather candidates on.

use super::jssip::web_dir;
use super::*;
use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, ChildStdout};

/// True when Chromium, Node and the npm packages are there (else the peers rule applies).
pub fn chromium_available() -> bool {
    peers_available(&["chromium", "node"]) && super::jssip::jssip_available()
}

/// One Chromium with any number of pages (each in its own browser context).
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl Browser {
    /// Starts Chromium, inside network namespace `netns` when given.
    pub fn start(netns: Option<&str>) -> Browser {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "node"]);
                c
            }
            None => Command::new("node"),
        };
        cmd.arg("test/browser-driver.cjs")
            .current_dir(web_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start the browser driver");
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        Browser {
            child,
            stdin,
            stdout,
            next: 1,
        }
    }

    /// Runs one driver command; its value, or the driver's error.
    pub fn try_command(&mut self, mut cmd: Value) -> Result<Value, String> {
        let id = self.next;
        self.next += 1;
        cmd["id"] = id.into();
        writeln!(self.stdin, "{cmd}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        loop {
            line.clear();
            if self
                .stdout
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("the browser driver exited".into());
            }
            let Ok(answer) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if answer["id"] != id {
                continue;
            }
            return if answer["ok"] == true {
                Ok(answer["value"].clone())
            } else {
                Err(answer["error"].as_str().unwrap_or("?").to_string())
            };
        }
    }

    fn command(&mut self, cmd: Value) -> Value {
        let shown = cmd.to_string();
        self.try_command(cmd)
            .unwrap_or_else(|e| panic!("browser command {shown} failed: {e}"))
    }

    /// Opens `url` in a new page called `page`, with microphone and camera allowed (or
    /// refused, as a user who says no).
    pub fn open(&mut self, page: &str, url: &str, media_allowed: bool) {
        self.command(serde_json::json!({
            "cmd": "open", "page": page, "url": url, "permissions": media_allowed
        }));
    }

    /// Opens `url` as a phone's browser would: a phone-sized touch screen, mobile layout.
    pub fn open_mobile(&mut self, page: &str, url: &str) {
        self.command(serde_json::json!({
            "cmd": "open", "page": page, "url": url, "permissions": true, "mobile": true
        }));
    }

    /// Types `value` into the field `selector`.
    pub fn fill(&mut self, page: &str, selector: &str, value: &str) {
        self.command(serde_json::json!({
            "cmd": "fill", "page": page, "selector": selector, "value": value
        }));
    }

    /// Clicks `selector`.
    pub fn click(&mut self, page: &str, selector: &str) {
        self.command(serde_json::json!({"cmd": "click", "page": page, "selector": selector}));
    }

    /// The value of a JavaScript expression in the page (promises are awaited).
    pub fn eval(&mut self, page: &str, expr: &str) -> Value {
        self.command(serde_json::json!({"cmd": "eval", "page": page, "expr": expr}))
    }

    /// Waits until `expr` is truthy in the page; panics with `what` and the page's state
    /// when it is not within `timeout`.
    pub fn wait(&mut self, page: &str, expr: &str, timeout: Duration, what: &str) {
        let start = Instant::now();
        loop {
            let v = self.eval(page, expr);
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return;
            }
            if start.elapsed() > timeout {
                let state = self.eval(page, "({state: hw.state, error: hw.lastError, sdpError: hw.sdpError, remoteSdp: hw.remoteSdp, status: document.getElementById('status').textContent})");
                panic!("{page}: {what} did not happen within {timeout:?} ({expr}); page: {state}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Closes a page (as a user closes the tab).
    pub fn close(&mut self, page: &str) {
        self.command(serde_json::json!({"cmd": "close", "page": page}));
    }

    /// Logs `user` in on `page` and waits until the page is registered and knows its session.
    pub fn login(&mut self, page: &str, user: &TestUser) {
        self.fill(page, "#user", user.name);
        self.fill(page, "#password", user.password);
        self.click(page, "#login-button");
        self.wait(
            page,
            "hw.state === 'idle' && hw.info !== null",
            Duration::from_secs(15),
            "login",
        );
    }

    /// Media statistics of the page's call (`hw.stats()`).
    pub fn stats(&mut self, page: &str) -> Value {
        self.eval(page, "hw.stats()")
    }

    /// Waits until the page's call receives RTP that keeps coming (two readings a second
    /// apart, the second higher) over a connected DTLS transport; returns the last reading.
    pub fn wait_media_flowing(&mut self, page: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        let mut last = 0u64;
        loop {
            let s = self.stats(page);
            let n = s["inboundPackets"].as_u64().unwrap_or(0);
            if n > last && last > 0 && s["dtlsState"] == "connected" {
                return s;
            }
            last = n;
            assert!(
                start.elapsed() < timeout,
                "{page}: media not flowing within {timeout:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(1000));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{{\"cmd\":\"quit\",\"id\":0}}");
        let _ = self.stdin.flush();
        if wait_bounded(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
