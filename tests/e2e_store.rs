//! The store tells the truth: with the data folder on a full disk (a small tmpfs, filled up),
//! a phone's registration is answered, kept, tried again every few seconds and said so; once
//! space is back it is written, and a restarted server still has it. Needs root (to mount the
//! tmpfs); without it the test prints "skipped" and passes.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` with a file there; returns the file.
fn fill(path: &Path) -> PathBuf {
    let filler = path.join("filler");
    let mut f = std::fs::File::create(&filler).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    // Bounded: the tmpfs is a few MiB.
    for _ in 0..10_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    filler
}

#[test]
fn a_registration_made_while_the_disk_is_full_is_written_once_space_is_back() {
    if !peers_available(&["sipp"]) {
        return;
    }
    let dir = test_dir();
    let Some(tmpfs) = Tmpfs::mount(&dir.join("disk"), "4m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut srv = Server::start(ServerOpts {
        log: "info".into(),
        data_dir: Some(tmpfs.0.join("data")),
        ..ServerOpts::default()
    });
    let filler = fill(&tmpfs.0);
    let port = free_port();
    register_on(&srv, &ALICE, port, 3600, false).assert_ok();
    assert!(
        poll_until(Duration::from_secs(10), || srv.status()["store_pending"]
            .as_u64()
            .is_some_and(|n| n >= 1)),
        "the failed write is kept: {:#}",
        srv.status()
    );
    let log = || std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert!(log().contains("store write failed"), "said so:\n{}", log());
    // Space comes back: the registration is written at the next try (every 5 s).
    std::fs::remove_file(&filler).expect("remove the filler");
    assert!(
        poll_until(Duration::from_secs(15), || srv.status()["store_pending"]
            .as_u64()
            == Some(0)),
        "still pending: {:#}",
        srv.status()
    );
    assert!(
        log().contains("store writes caught up"),
        "said so:\n{}",
        log()
    );
    // Nothing lost: after a restart the registration is there.
    srv.restart();
    let regs = srv.registrations_of(ALICE.name);
    assert_eq!(
        regs.len(),
        1,
        "alice's registration after the restart: {regs:#?}"
    );
    drop(srv);
    drop(tmpfs);
}
