//! The README's five-minute tour, run as written. The shell commands are read out of the
//! README's tour section and run in order (`cargo run --release --` and the `hw` alias stand
//! for the binary under test); the baresip account lines and console commands are taken from
//! the README too. Everything runs in a network namespace of its own, so the tour's fixed
//! ports (SIP 5060, STUN 3478, the relay's range) are free, with a fresh HOME, so the server
//! and the CLI use the default data folder as a new user's would. Passwords are typed at the
//! prompt through a pseudo-terminal (`script`), as a person types them.

mod common;

use common::baresip::*;
use common::natlab::NatLab;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hedgewitch");

/// The tour section of the README.
fn tour() -> String {
    section("## A five-minute tour")
}

/// The README's section that starts with `title`, up to the next one.
fn section(title: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find(title)
        .unwrap_or_else(|| panic!("the README has no `{title}`"));
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |e| e + 3);
    readme[start..start + end].to_string()
}

/// The fenced blocks of `text` as (language, lines), in order, indentation removed.
fn blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    let mut open: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(lang) = t.strip_prefix("```") {
            match open.take() {
                Some(b) => out.push(b),
                None => open = Some((lang.to_string(), vec![])),
            }
        } else if let Some((_, lines)) = open.as_mut() {
            if !t.is_empty() {
                lines.push(t.to_string());
            }
        }
    }
    out
}

/// The namespace, HOME and processes of one tour; all removed when it ends.
struct Tour {
    lab: NatLab,
    ns: String,
    home: PathBuf,
    dir: PathBuf,
    server: Option<Child>,
    alias: Option<String>,
}

impl Tour {
    /// A README command line as argv for the binary under test.
    fn argv(&self, line: &str) -> Vec<String> {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let rest = if line.starts_with("cargo run --release -- ") {
            &words[4..]
        } else if words.first().map(String::as_str) == Some("hw") {
            assert_eq!(
                self.alias.as_deref(),
                Some("cargo run --release -q --"),
                "the README uses `hw` before defining it as the binary"
            );
            &words[1..]
        } else {
            panic!("a README command the tour test does not know how to run: {line}");
        };
        rest.to_vec()
    }

    fn command(&self, argv: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "env", "-u", "HEDGEWITCH_CONFIG"])
            .args(["-u", "XDG_DATA_HOME", "-u", "RUST_LOG"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(BIN)
            .args(argv);
        c
    }

    /// Starts a long-running command line of the README (the server), its output into `log`.
    fn spawn(&self, line: &str, log: &str) -> Child {
        let log = std::fs::File::create(self.dir.join(log)).expect("log");
        self.command(&self.argv(line))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("hedgewitch serve")
    }

    /// Whether a server answers `status` in the tour's data folder.
    fn answers(&self) -> bool {
        let mut c = self.command(&["status".to_string()]);
        run_bounded(&mut c, None, &self.dir.join("cli"), Duration::from_secs(5)).success()
    }

    /// Listens on a baresip console inside the namespace (a command first, so that the
    /// console answers to this listener) until `expect` is shown; exits 0 when it was.
    fn console_watch(&self, port: u16, expect: &str) -> Child {
        let script = format!(
            "import socket, sys, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1', 0)); s.settimeout(0.5)\n\
             s.sendto(b'/uastat\\n', ('127.0.0.1', {port}))\n\
             end, seen = time.time() + 20, b''\n\
             while time.time() < end:\n\
             \x20   try: seen += s.recv(65536)\n\
             \x20   except socket.timeout: pass\n\
             \x20   if {expect:?}.encode() in seen: sys.exit(0)\n\
             sys.exit(1)\n"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "python3", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        // It must be listening before the message comes.
        std::thread::sleep(Duration::from_millis(500));
        child
    }

    /// Runs a CLI command line of the README (bounded), returning its output.
    fn run(&self, line: &str) -> Ran {
        let argv = self.argv(line);
        let mut c = self.command(&argv);
        let r = run_bounded(&mut c, None, &self.dir.join("cli"), Duration::from_secs(20));
        assert!(
            r.success(),
            "`{line}` failed ({:?}):\n{}{}",
            r.status,
            r.stdout,
            r.stderr
        );
        r
    }

    /// Runs a command that asks for a password on the terminal, typing it twice.
    fn run_typing(&self, line: &str, password: &str) -> String {
        let argv = self.argv(line);
        let shell_line = format!(
            "ip netns exec {} env -u HEDGEWITCH_CONFIG -u XDG_DATA_HOME HOME={} {BIN} {}",
            self.ns,
            self.home.display(),
            argv.join(" ")
        );
        let out = self.dir.join("typed.out");
        let mut child = Command::new("script")
            .args(["-qec", &shell_line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out).expect("output file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("script (util-linux)");
        let mut stdin = child.stdin.take().expect("stdin");
        for _ in 0..2 {
            // Typed after the prompt, as a person would: input sent before the terminal's
            // echo is turned off could be lost.
            std::thread::sleep(Duration::from_millis(700));
            let _ = stdin.write_all(format!("{password}\n").as_bytes());
        }
        let status = wait_bounded(&mut child, Duration::from_secs(20));
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "`{line}` at the terminal failed ({status:?}):\n{text}"
        );
        text
    }
}

impl Drop for Tour {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- tour failed; files kept in {} -----\n{}",
                self.dir.display(),
                tail(&self.dir.join("server.log"), 80)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let _ = &self.lab;
    }
}

/// The `auth_pass` of an account line.
fn password_of(account: &str) -> String {
    account
        .split(';')
        .find_map(|p| p.strip_prefix("auth_pass="))
        .expect("an auth_pass in the README's account line")
        .to_string()
}

#[test]
fn the_readme_tour_works_as_written() {
    if !peers_available(&["baresip", "sox", "ip", "script"]) {
        return;
    }
    let tour_text = tour();
    let tour_blocks = blocks(&tour_text);
    let sh: Vec<&Vec<String>> = tour_blocks
        .iter()
        .filter(|(l, _)| l == "sh")
        .map(|(_, b)| b)
        .collect();
    let plain: Vec<&Vec<String>> = tour_blocks
        .iter()
        .filter(|(l, _)| l.is_empty())
        .map(|(_, b)| b)
        .collect();
    assert_eq!(sh.len(), 4, "the tour's shell blocks: {sh:?}");
    assert_eq!(plain.len(), 4, "the tour's phone blocks: {plain:?}");

    let lab = NatLab::new(0)
        .unwrap_or_else(|e| panic!("cannot make a network namespace (root is needed): {e}"));
    let dir = test_dir();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("HOME");
    let mut t = Tour {
        ns: lab.public_ns(),
        lab,
        home,
        dir,
        server: None,
        alias: None,
    };

    // 0. The README's first command, on a new machine: the server on its defaults, which
    //    says what it chose, until Ctrl-C (SIGTERM here).
    let first = blocks(&section("## The two commands"));
    let serve = &first[0].1[0];
    assert_eq!(serve, "cargo run --release -- serve");
    let mut defaults = t.spawn(serve, "defaults.log");
    let up = poll_until(Duration::from_secs(20), || t.answers());
    let said = std::fs::read_to_string(t.dir.join("defaults.log")).unwrap_or_default();
    let _ = Command::new("kill").arg(defaults.id().to_string()).status();
    let stopped = wait_bounded(&mut defaults, Duration::from_secs(10));
    assert!(up, "the server on its defaults never answered:\n{said}");
    assert!(
        stopped.is_some_and(|s| s.success()),
        "SIGTERM stops it cleanly: {stopped:?}\n{said}"
    );
    assert!(
        said.contains("(from this machine's host name")
            && said.contains("udp:0.0.0.0:5060")
            && said.contains(".local/share/hedgewitch (0 users)"),
        "the first start explains itself:\n{said}"
    );

    // 1. The server, in the foreground of its own terminal.
    assert_eq!(sh[0].len(), 1, "step 1 is one command");
    t.server = Some(t.spawn(&sh[0][0], "server.log"));
    assert!(
        poll_until(Duration::from_secs(20), || t.answers()),
        "the server never answered `status`"
    );
    let banner = std::fs::read_to_string(t.dir.join("server.log")).unwrap_or_default();
    assert!(
        banner.contains("example.test (from the --domain option)")
            && banner.contains("hedgewitch user add alice --extension 101"),
        "the start-up summary says what was chosen and what to do next:\n{banner}"
    );

    // 2. Accounts, passwords typed at the prompt; the passwords are the account lines'.
    let accounts: Vec<&String> = plain.iter().take(2).map(|b| &b[0]).collect();
    let passwords: Vec<String> = accounts.iter().map(|a| password_of(a)).collect();
    for line in sh[1].iter() {
        if let Some(a) = line.strip_prefix("alias hw=") {
            t.alias = Some(a.trim_matches('\'').to_string());
        } else if line.contains("user add alice") {
            let out = t.run_typing(line, &passwords[0]);
            assert!(out.contains("added sip:alice@example.test"), "{out}");
        } else if line.contains("user add bob") {
            let out = t.run_typing(line, &passwords[1]);
            assert!(out.contains("added sip:bob@example.test"), "{out}");
        } else {
            let r = t.run(line);
            assert!(
                r.stdout.contains("alice") && r.stdout.contains("bob"),
                "{line}: {}",
                r.stdout
            );
        }
    }

    // 3. Two baresip phones with the README's account lines; bob on the README's port.
    let tone = make_tone_in(&t.dir);
    let contact = "\"Bob\" <sip:bob@example.test>";
    assert!(
        tour_text.contains(&format!("`{contact}`")),
        "the README's contact line"
    );
    assert!(tour_text.contains("sip_listen 127.0.0.1:5062"));
    let phone = |name: &'static str,
                 folder: &str,
                 sip: u16,
                 console: u16,
                 rtp: u16,
                 account: &str,
                 contacts: &str| {
        Baresip::launch(Phone {
            dir: t.home.join(folder),
            name,
            host: "127.0.0.1".into(),
            ipv6: false,
            sip_port: sip,
            console,
            rtp,
            netns: Some((&t.ns, "127.0.0.1")),
            account: format!("{account}\n"),
            contacts: format!("{contacts}\n"),
            tone: &tone,
            config_extra: String::new(),
        })
    };
    let mut alice = phone("alice", ".baresip", 5066, 5070, 30000, accounts[0], contact);
    let mut bob = phone("bob", ".baresip-bob", 5062, 5072, 30100, accounts[1], "");
    assert!(
        poll_until(Duration::from_secs(20), || {
            let mut c = t.command(&["registrations".to_string(), "--json".to_string()]);
            let r = run_bounded(&mut c, None, &t.dir.join("cli"), Duration::from_secs(5));
            r.stdout.contains("\"alice\"") && r.stdout.contains("\"bob\"")
        }),
        "the phones never registered"
    );

    // 4. Who is registered, with which phone.
    for line in sh[2].iter() {
        let r = t.run(line);
        if line.contains("registrations") {
            assert!(
                r.stdout.contains("USER AGENT") && r.stdout.matches("baresip").count() >= 2,
                "registrations show each phone's user agent:\n{}",
                r.stdout
            );
        }
    }

    // 5. A call by name, then by extension: bob answers, both hear each other, `hw calls`
    //    shows it, alice hangs up.
    let wait = Duration::from_secs(20);
    for (n, dial) in plain[2].iter().enumerate() {
        assert!(dial.starts_with("/dial "), "{dial}");
        alice.command(dial);
        bob.wait_for("the incoming call", wait, |o| {
            o.matches("Incoming call").count() > n
        });
        assert!(tour_text.contains("`/accept`"));
        bob.command("/accept");
        alice.wait_for("the call established", wait, |o| {
            o.matches("Call established").count() > n
        });
        alice.wait_for("audio both ways", wait, |o| {
            receives_audio_in_call(o, n + 1)
        });
        bob.wait_for("audio both ways", wait, |o| {
            receives_audio_in_call(o, n + 1)
        });
        let calls = t.run("hw calls");
        let callee = dial.trim_start_matches("/dial ");
        assert!(
            calls.stdout.contains("sip:alice@example.test ->")
                && calls.stdout.contains(callee)
                && calls.stdout.contains("answered"),
            "hw calls: {}",
            calls.stdout
        );
        assert!(tour_text.contains("`/hangup`"));
        alice.command("/hangup");
        bob.wait_for("the call ended", wait, |o| {
            o.matches("terminated").count() + o.matches("session closed").count() > n
        });
    }
    //    A message to the selected contact, the way Debian's baresip sends one. baresip shows
    //    an incoming message to its console's user: a listener on bob's console sees it.
    let mut console = t.console_watch(5072, "\"hello\"");
    for cmd in plain[3].iter() {
        alice.command(cmd);
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen = wait_bounded(&mut console, Duration::from_secs(25));
    assert!(
        seen.is_some_and(|s| s.success()),
        "bob's phone never showed the message; alice's output:\n{}",
        alice.output()
    );

    // 6. From a browser: the README's address; bob and alice log in with their passwords,
    //    alice calls 102, bob answers on the page (his baresip stops ringing) and they talk;
    //    a message typed on alice's page appears on bob's.
    let page = "https://127.0.0.1:8443/";
    assert!(
        tour_text.contains(page),
        "the README names the page's address"
    );
    if common::browser::chromium_available() {
        let mut b = common::browser::Browser::start(Some(&t.ns));
        for (who, password) in [("bob", &passwords[1]), ("alice", &passwords[0])] {
            b.open(who, page, true);
            b.fill(who, "#user", who);
            b.fill(who, "#password", password);
            b.click(who, "#login-button");
            b.wait(
                who,
                "hw.state === 'idle' && hw.info !== null",
                wait,
                "login",
            );
        }
        b.fill("alice", "#target", "102");
        b.click("alice", "#call");
        b.wait("bob", "hw.state === 'incoming'", wait, "ringing");
        let caller = b.eval("bob", "document.getElementById('caller').textContent");
        assert!(
            caller.to_string().contains("sip:alice@example.test"),
            "{caller}"
        );
        b.click("bob", "#answer");
        for who in ["alice", "bob"] {
            b.wait(who, "hw.state === 'in-call'", wait, "answered");
            b.wait_media_flowing(who, wait);
        }
        b.fill("alice", "#chat-to", "bob");
        b.fill("alice", "#chat-text", "hello from the page");
        b.click("alice", "#send");
        b.wait(
            "bob",
            "hw.messages.some(m => m.body === 'hello from the page')",
            wait,
            "the message",
        );
        b.click("alice", "#hangup");
        b.wait("bob", "hw.state === 'idle'", wait, "hang-up");
    }

    // 7. The phone system: a group and forwarding from the CLI, do-not-disturb from the phone.
    for line in sh[3].iter() {
        t.run(line);
    }
    let forward = t.run("hw forward show bob");
    assert!(
        forward.stdout.contains("200") && forward.stdout.contains("15"),
        "bob's unanswered calls go to the group after 15 s: {}",
        forward.stdout
    );
    //    The group's number rings its members: bob calls 200, alice's phone rings.
    let rang = alice.output().matches("Incoming call").count();
    bob.command("/dial 200");
    alice.wait_for("the group's call", wait, |o| {
        o.matches("Incoming call").count() > rang
    });
    bob.command("/hangup");
    assert!(tour_text.contains("dial `*78`") && tour_text.contains("`*79`"));
    alice.command("/dial *78");
    alice.wait_for("do-not-disturb on", wait, |o| {
        o.contains("Do Not Disturb On")
    });
    alice.command("/dial *79");
    alice.wait_for("do-not-disturb off", wait, |o| {
        o.contains("Do Not Disturb Off")
    });
}
