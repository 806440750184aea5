//! The `hedgewitch` command itself: account management against the store, configuration
//! errors, and the control channel to a running server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hedgewitch");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hw-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("hw.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"example.test\"\ndata_dir = \"{}\"\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\nstun = []\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    cfg
}

fn hw(cfg: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        // The command may exit before reading (e.g. an unknown user): a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(s.as_bytes());
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn accounts_are_managed_in_the_store() {
    let dir = temp_dir("accounts");
    let cfg = write_config(&dir, "");
    let o = hw(
        &cfg,
        &[
            "user",
            "add",
            "alice",
            "--extension",
            "101",
            "--password-stdin",
        ],
        Some("Pw-one-111\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = hw(
        &cfg,
        &[
            "user",
            "add",
            "bob",
            "--extension",
            "102",
            "--password-stdin",
        ],
        Some("Pw-two-222\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    // A clash names the user it clashes with.
    let o = hw(
        &cfg,
        &[
            "user",
            "add",
            "carol",
            "--extension",
            "101",
            "--password-stdin",
        ],
        Some("Pw-carol-333\n"),
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("alice"), "{}", text(&o));
    // Bad names and extensions are refused before the store is touched.
    let o = hw(
        &cfg,
        &["user", "add", "bad name", "--password-stdin"],
        Some("x\n"),
    );
    assert!(!o.status.success());
    let o = hw(
        &cfg,
        &[
            "user",
            "add",
            "dave",
            "--extension",
            "12a",
            "--password-stdin",
        ],
        Some("x\n"),
    );
    assert!(!o.status.success());
    let o = hw(
        &cfg,
        &["user", "add", "erin", "--password-stdin"],
        Some("\n"),
    );
    assert!(!o.status.success(), "empty password refused");
    // A weak password is refused, and kept only when asked for.
    let o = hw(
        &cfg,
        &["user", "add", "erin", "--password-stdin"],
        Some("erinpw\n"),
    );
    assert!(!o.status.success(), "weak password accepted");
    assert!(
        text(&o).contains("weak password") && text(&o).contains("--allow-weak-password"),
        "{}",
        text(&o)
    );
    let o = hw(
        &cfg,
        &["user", "passwd", "alice", "--password-stdin"],
        Some("password123\n"),
    );
    assert!(!o.status.success(), "weak password accepted by passwd");
    let o = hw(
        &cfg,
        &[
            "user",
            "add",
            "erin",
            "--password-stdin",
            "--allow-weak-password",
        ],
        Some("erinpw\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = hw(&cfg, &["user", "remove", "erin"], None);
    assert!(o.status.success(), "{}", text(&o));

    let o = hw(&cfg, &["user", "list"], None);
    let list = text(&o);
    assert!(
        list.contains("alice") && list.contains("101") && list.contains("bob"),
        "{list}"
    );
    assert!(!list.contains("carol") && !list.contains("dave"));

    // The password is stored only as hashes.
    let db = std::fs::read(dir.join("data/hedgewitch.db")).unwrap();
    assert!(!db.windows(10).any(|w| w == b"Pw-one-111"));

    let o = hw(
        &cfg,
        &["user", "passwd", "alice", "--password-stdin"],
        Some("Pw-three-333\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = hw(
        &cfg,
        &["user", "passwd", "nobody", "--password-stdin"],
        Some("Pw-three-333\n"),
    );
    assert!(!o.status.success());
    // Bulk import: all or nothing, with the failing line named.
    let list = dir.join("users.csv");
    std::fs::write(
        &list,
        "# name,extension,password\nu1,201,Pw-u1-1111\nu2,,Pw-u2-2222\n",
    )
    .unwrap();
    let o = hw(&cfg, &["user", "import", list.to_str().unwrap()], None);
    assert!(
        o.status.success() && text(&o).contains("imported 2"),
        "{}",
        text(&o)
    );
    std::fs::write(&list, "u3,301,Pw-u3-3333\nu4 has spaces,302,Pw-u4-4444\n").unwrap();
    let o = hw(&cfg, &["user", "import", list.to_str().unwrap()], None);
    assert!(
        !o.status.success() && text(&o).contains(":2:"),
        "{}",
        text(&o)
    );
    assert!(!text(&hw(&cfg, &["user", "list"], None)).contains("u3"));
    let o = hw(&cfg, &["user", "remove", "bob"], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = hw(&cfg, &["user", "remove", "bob"], None);
    assert!(!o.status.success());
    assert!(!text(&hw(&cfg, &["user", "list"], None)).contains("bob"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_names_the_key_and_line() {
    let dir = temp_dir("badcfg");
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "domain = \"example.test\"\n\nlisten = [\"sctp:127.0.0.1:5060\"]\n",
    )
    .unwrap();
    let o = hw(&cfg, &["serve"], None);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("line 3") && t.contains("sctp"), "{t}");
    std::fs::write(&cfg, "domian = \"example.test\"\n").unwrap();
    let t = text(&hw(&cfg, &["serve"], None));
    assert!(t.contains("domian") && t.contains("line 1"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_needs_a_running_server_and_then_reports_it() {
    let dir = temp_dir("status");
    let cfg = write_config(&dir, "");
    let o = hw(&cfg, &["status"], None);
    assert!(!o.status.success());
    assert!(text(&o).contains("not running"), "{}", text(&o));

    let mut server = Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let o = hw(&cfg, &["status", "--json"], None);
        if o.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "server did not come up: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["domain"], "example.test");
    assert_eq!(status["users"], 0);

    // A user added while the server runs is known to it at once.
    let o = hw(
        &cfg,
        &["user", "add", "zoe", "--password-stdin"],
        Some("Pw-plain-000\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = hw(&cfg, &["status", "--json"], None);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["users"], 1);
    let o = hw(&cfg, &["registrations"], None);
    assert!(text(&o).contains("no registrations"), "{}", text(&o));
    // A second server on the same data folder refuses to start.
    let o = hw(&cfg, &["serve"], None);
    assert!(!o.status.success());
    assert!(text(&o).contains("already running"), "{}", text(&o));

    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The phone-system commands without a running server: the numbering plan and clashes are
/// checked before anything is written, and what was written is listed back.
#[test]
fn phone_system_settings_are_checked_and_stored() {
    let dir = temp_dir("plan");
    let cfg = write_config(&dir, "[numbering]\nextensions = \"200-299\"\n");
    let add = |name: &str, ext: &str| {
        hw(
            &cfg,
            &["user", "add", name, "--extension", ext, "--password-stdin"],
            Some("Pw-plain-000\n"),
        )
    };
    let o = add("alice", "201");
    assert!(o.status.success(), "{}", text(&o));
    let o = add("bob", "301");
    assert!(!o.status.success());
    assert!(text(&o).contains("outside 200-299"), "{}", text(&o));
    let o = add("bob", "202");
    assert!(o.status.success(), "{}", text(&o));

    // A group whose extension is taken by a user is refused, naming both.
    let o = hw(&cfg, &["group", "add", "sales", "--extension", "201"], None);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("user `alice`") && text(&o).contains("group `sales`"),
        "{}",
        text(&o)
    );
    let o = hw(
        &cfg,
        &[
            "group",
            "add",
            "sales",
            "--extension",
            "250",
            "--strategy",
            "rotate",
            "--member",
            "alice",
            "--member",
            "bob",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    // An import is checked against the plan too: an extension outside the numbering, or one
    // the group has, refuses the whole file.
    let file = dir.join("import.csv");
    for (lines, why) in [
        (
            "carol,203,Pw-import-55\ndave,302,Pw-import-55\n",
            "outside 200-299",
        ),
        (
            "carol,203,Pw-import-55\ndave,250,Pw-import-55\n",
            "group `sales`",
        ),
    ] {
        std::fs::write(&file, lines).unwrap();
        let o = hw(&cfg, &["user", "import", file.to_str().unwrap()], None);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(why), "{}", text(&o));
        let list = hw(&cfg, &["user", "list"], None);
        assert!(
            !text(&list).contains("carol"),
            "nothing of a refused import is written"
        );
    }
    // A group may not contain itself.
    let o = hw(&cfg, &["group", "member-add", "sales", "250"], None);
    assert!(
        !o.status.success() && text(&o).contains("group loop"),
        "{}",
        text(&o)
    );
    let o = hw(&cfg, &["group", "list"], None);
    assert!(
        text(&o).contains("sales") && text(&o).contains("rotate"),
        "{}",
        text(&o)
    );

    let o = hw(&cfg, &["forward", "set", "alice", "--busy", "sales"], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = hw(&cfg, &["forward", "set", "nobody", "--busy", "sales"], None);
    assert!(
        !o.status.success() && text(&o).contains("no user"),
        "{}",
        text(&o)
    );
    let o = hw(&cfg, &["forward", "show"], None);
    assert!(text(&o).contains("busy to sales"), "{}", text(&o));

    let o = hw(&cfg, &["user", "set", "bob", "--outside", "off"], None);
    assert!(text(&o).contains("not allowed"), "{}", text(&o));
    let o = hw(
        &cfg,
        &[
            "dialplan",
            "add",
            "--regex",
            "^00([0-9]+)$",
            "--action",
            "reject",
            "--status",
            "403",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = hw(
        &cfg,
        &["dialplan", "add", "--regex", "(", "--action", "local"],
        None,
    );
    assert!(
        !o.status.success() && text(&o).contains("bad pattern"),
        "{}",
        text(&o)
    );
    let o = hw(&cfg, &["dialplan", "list"], None);
    assert!(text(&o).contains("regex ^00"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hedgewitch user list | head` and the like: a listing whose reader has gone ends quietly
/// (SIGPIPE, as other tools), never with a panic.
#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = temp_dir("pipe");
    let cfg = write_config(&dir, "");
    // A pipe whose reading end is closed before the command writes anything.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .args(["user", "list"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // SIGPIPE is signal 13 on Linux.
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
    let _ = std::fs::remove_dir_all(&dir);
}
