//! How the CLI fits a packaged install (the Debian package's layout): the system-wide config
//! file it falls back to, and the switch from root to the owner of the data folder, so that
//! `sudo hedgewitch user add ...` works on the daemon's store without leaving files there that
//! the daemon (running as the `hedgewitch` system user) could no longer write.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the package puts the configuration.
pub const SYSTEM_CONFIG: &str = "/etc/hedgewitch/hedgewitch.toml";

/// The config file to use when neither `--config` nor `HEDGEWITCH_CONFIG` names one: the
/// system-wide file when it exists. On a server installed from the package this makes the CLI
/// find the daemon's data folder and control socket without options; elsewhere (a developer's
/// machine, the tests) nothing changes and the built-in defaults apply.
/// Only root and the service's own user fall back to it: anyone else trying the server from a
/// checkout keeps the built-in defaults (their own data folder) even where it is installed.
pub fn default_config() -> Option<PathBuf> {
    let p = Path::new(SYSTEM_CONFIG);
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let service = std::fs::metadata("/var/lib/hedgewitch").is_ok_and(|m| m.uid() == uid);
    (p.is_file() && (uid == 0 || service)).then(|| p.to_path_buf())
}

/// When running as root and `data_dir` exists and belongs to another user, becomes that user
/// (its primary group, no supplementary groups) for the rest of the process.
///
/// Why: SQLite creates its `-wal` and `-shm` files, and the CLI may create the database itself,
/// with the identity of whoever runs the command; files made by root in the daemon's folder
/// would lock the daemon out of its own store. Root needs no rights the owner lacks here:
/// the folder and the control socket (mode 0600) are the owner's.
pub fn become_data_owner(data_dir: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(data_dir) else {
        // Not created yet: the command creates it as root, as it would without a package.
        return Ok(());
    };
    let uid = meta.uid();
    if uid == 0 {
        return Ok(());
    }
    let gid = primary_gid(uid).unwrap_or(meta.gid());
    let fail = |what: &str| {
        format!(
            "cannot switch to the owner of {} (uid {uid}, gid {gid}): {what}: {}",
            data_dir.display(),
            std::io::Error::last_os_error()
        )
    };
    // Groups first: once the uid is dropped, root's rights to change them are gone. The CLI
    // has started no threads yet, and glibc applies set*id to every thread anyway.
    // SAFETY: plain system calls; setgroups reads no memory when the count is 0.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setgid(gid) != 0 {
            return Err(fail("setgid"));
        }
        if libc::setuid(uid) != 0 {
            return Err(fail("setuid"));
        }
    }
    Ok(())
}

/// The primary group of `uid` from the user database, when it has an entry.
fn primary_gid(uid: u32) -> Option<u32> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: all-zero is a valid passwd (null pointers, zero ids); getpwuid_r fills it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: the buffers outlive the call and their sizes are passed with them; the strings
    // in `pw` point into `buf` and are not read.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(pw.pw_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_root_or_own_folder_changes_nothing() {
        // Run as root, a folder owned by root; run as anyone else, an early return. Either
        // way the process keeps its identity.
        let dir = std::env::temp_dir();
        let before = unsafe { (libc::geteuid(), libc::getegid()) };
        if before.0 == 0 {
            become_data_owner(Path::new("/")).unwrap();
        } else {
            become_data_owner(&dir).unwrap();
        }
        become_data_owner(Path::new("/nonexistent/hedgewitch")).unwrap();
        assert_eq!(unsafe { (libc::geteuid(), libc::getegid()) }, before);
    }

    #[test]
    fn root_has_a_primary_group() {
        assert_eq!(primary_gid(0), Some(0));
    }
}
