//! User accounts as the management commands change them: names checked, passwords hashed for
//! the right realm (the main domain's, or the one after `@`), import files parsed, and every
//! change checked against the whole dial plan before it is written. The CLI only reads the
//! arguments and the password and prints the outcome; the running server is told afterwards.

use crate::config::Config;
use crate::core::User;
use crate::store::{SqliteStore, Store};

fn valid_local_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A user name: `alice` in the main domain, `alice@other.example` in one of `domains`.
pub fn valid_name(cfg: &Config, name: &str) -> bool {
    match name.split_once('@') {
        None => valid_local_name(name),
        Some((local, domain)) => {
            valid_local_name(local) && cfg.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
        }
    }
}

/// `valid_name`, as an error that says what a name may be.
pub fn check_name(cfg: &Config, name: &str) -> Result<(), String> {
    if valid_name(cfg, name) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid user name (letters, digits, . _ -; `name@domain` for a \
             domain in `domains`)"
        ))
    }
}

/// An extension must be 1 to 16 digits and fit the numbering plan.
pub fn check_extension(cfg: &Config, e: &str) -> Result<(), String> {
    if e.is_empty() || e.len() > 16 || !e.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("extension `{e}` must be 1 to 16 digits"));
    }
    crate::plan::check_extension(&cfg.numbering, e)
}

/// A user record for `name` (see `valid_name`): its password hashed for its domain's realm,
/// over the name the phone authenticates with (the part before `@`).
pub fn new_user(cfg: &Config, name: &str, extension: Option<&str>, password: &str) -> User {
    match name.split_once('@') {
        None => User::new(name, extension, &cfg.domain, password),
        Some((local, domain)) => {
            let domain = domain.to_ascii_lowercase();
            User {
                name: format!("{local}@{domain}"),
                ..User::new(local, extension, &domain, password)
            }
        }
    }
}

/// Passwords are hashed for the domain's realm: a running server that serves another domain
/// (started on a host name, or before the folder recorded one) could never check them. Asked
/// before a password is read; fine when no server runs.
pub fn check_running_domain(cfg: &Config) -> Result<(), String> {
    let Ok(status) = crate::control::request(&cfg.control_path(), crate::control::Command::Status)
    else {
        return Ok(());
    };
    match status.get("domain").and_then(|d| d.as_str()) {
        Some(running) if running != cfg.domain => Err(format!(
            "the running server serves `{running}`, but this command would hash the password \
             for `{}`: the phone could never log in. Restart the server with --domain {}, or \
             run this command with --domain {running}",
            cfg.domain, cfg.domain
        )),
        _ => Ok(()),
    }
}

/// The address a user is reached at: `sip:alice@example.org`.
pub fn address(cfg: &Config, name: &str) -> String {
    if name.contains('@') {
        format!("sip:{name}")
    } else {
        format!("sip:{name}@{}", cfg.domain)
    }
}

/// Users and extensions share one namespace with groups and speed dials: the plan with
/// `users` must still hold.
fn plan_holds(cfg: &Config, store: &SqliteStore, users: &[User]) -> Result<(), String> {
    cfg.build_plan(users, &store.plan()?)
        .map(|_| ())
        .map_err(|e| format!("refused: {e}"))
}

/// Creates an account (a name that exists is refused by the store).
pub fn add(
    cfg: &Config,
    store: &SqliteStore,
    name: &str,
    extension: Option<&str>,
    password: Password<'_>,
) -> Result<User, String> {
    check_name(cfg, name)?;
    if let Some(e) = extension {
        check_extension(cfg, e)?;
    }
    password.check(name, extension)?;
    let password = password.text;
    let new = new_user(cfg, name, extension, password);
    if store.user(name)?.is_none() {
        let mut users = store.users()?;
        users.push(new.clone());
        plan_holds(cfg, store, &users)?;
    }
    store.add_user(&new)?;
    cfg.record_domain()?;
    Ok(new)
}

/// Reads an import file of `name,extension,password` lines (extension may be empty, `#`
/// starts a comment); a bad line, or a weak password unless `allow_weak`, is named with its
/// line number. Nothing is written.
pub fn parse_import(
    cfg: &Config,
    source: &str,
    text: &str,
    allow_weak: bool,
) -> Result<Vec<User>, String> {
    let mut users = vec![];
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{source}:{}", n + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.splitn(3, ',');
        let (name, ext, pw) = match (f.next(), f.next(), f.next()) {
            (Some(n), Some(e), Some(p)) => (n.trim(), e.trim(), p),
            _ => return Err(format!("{}: expected name,extension,password", at())),
        };
        if !valid_name(cfg, name) || pw.is_empty() {
            return Err(format!("{}: bad name or empty password", at()));
        }
        if !ext.is_empty() && (ext.len() > 16 || !ext.bytes().all(|c| c.is_ascii_digit())) {
            return Err(format!("{}: extension must be 1 to 16 digits", at()));
        }
        let ext_opt = (!ext.is_empty()).then_some(ext);
        Password {
            text: pw,
            allow_weak,
        }
        .check(name, ext_opt)
        .map_err(|e| format!("{}: {e}", at()))?;
        users.push(new_user(cfg, name, (!ext.is_empty()).then_some(ext), pw));
    }
    Ok(users)
}

/// Writes an import, all or nothing, if the plan still holds with the new users (their
/// extensions fit the numbering and clash with no group or speed dial).
pub fn import(cfg: &Config, store: &mut SqliteStore, users: &[User]) -> Result<(), String> {
    for u in users {
        if let Some(e) = &u.extension {
            check_extension(cfg, e)?;
        }
    }
    let mut all = store.users()?;
    all.retain(|x| !users.iter().any(|u| u.name == x.name));
    all.extend(users.iter().cloned());
    plan_holds(cfg, store, &all)?;
    store.import_users(users)?;
    cfg.record_domain()
}

/// Sets a new password, keeping the account's permissions.
pub fn set_password(
    cfg: &Config,
    store: &SqliteStore,
    name: &str,
    password: Password<'_>,
) -> Result<(), String> {
    let old = store
        .user(name)?
        .ok_or_else(|| format!("no user `{name}`"))?;
    password.check(name, old.extension.as_deref())?;
    let password = password.text;
    store.update_user(&User {
        outside: old.outside,
        external: old.external,
        ..new_user(cfg, name, old.extension.as_deref(), password)
    })?;
    cfg.record_domain()
}

/// A new password, and whether a weak one is accepted (`--allow-weak-password`).
#[derive(Clone, Copy)]
pub struct Password<'a> {
    /// The password as typed.
    pub text: &'a str,
    /// Take it even if it is weak.
    pub allow_weak: bool,
}

/// Passwords that guessers try first (see the file).
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// Shortest password accepted without `--allow-weak-password`.
pub const MIN_PASSWORD_LEN: usize = 8;

impl Password<'_> {
    /// Refuses a password a guesser would find at once: short, one of the most common, the
    /// account's own name or extension, or made of a few characters repeated.
    pub fn check(&self, name: &str, extension: Option<&str>) -> Result<(), String> {
        if self.text.is_empty() {
            return Err("empty password".into());
        }
        if self.allow_weak {
            return Ok(());
        }
        let lower = self.text.to_lowercase();
        let user = name.split('@').next().unwrap_or(name).to_lowercase();
        let distinct = {
            let mut c: Vec<char> = lower.chars().collect();
            c.sort_unstable();
            c.dedup();
            c.len()
        };
        let why = if self.text.chars().count() < MIN_PASSWORD_LEN {
            format!("shorter than {MIN_PASSWORD_LEN} characters")
        } else if COMMON_PASSWORDS
            .lines()
            .filter(|l| !l.starts_with('#'))
            .any(|l| l == lower)
        {
            "one of the passwords guessers try first".to_string()
        } else if lower == user
            || lower.chars().rev().collect::<String>() == user
            || extension.is_some_and(|e| lower == e)
        {
            "the account's own name or extension".to_string()
        } else if distinct < 4 {
            "made of too few different characters".to_string()
        } else {
            return Ok(());
        };
        Err(format!(
            "weak password ({why}): a server on the Internet gets guessers within minutes; \
             choose a longer one, or give --allow-weak-password to keep it anyway"
        ))
    }
}

/// What `user set` changes; `None` keeps the current value.
#[derive(Default)]
pub struct Changes {
    /// `Some(None)` removes the extension.
    pub extension: Option<Option<String>>,
    /// Whether the user may call outside the domain (numbers and other domains' URIs).
    pub outside: Option<bool>,
    /// Whether the user accepts calls and messages from other domains (by name).
    pub external: Option<bool>,
}

/// Changes an account's extension or permissions, if the whole plan still holds.
pub fn change(
    cfg: &Config,
    store: &SqliteStore,
    name: &str,
    changes: Changes,
) -> Result<User, String> {
    let mut u = store
        .user(name)?
        .ok_or_else(|| format!("no user `{name}`"))?;
    if let Some(e) = changes.extension {
        if let Some(e) = &e {
            check_extension(cfg, e)?;
        }
        u.extension = e;
    }
    if let Some(o) = changes.outside {
        u.outside = o;
    }
    if let Some(o) = changes.external {
        u.external = o;
    }
    let mut users = store.users()?;
    users.retain(|x| x.name != name);
    users.push(u.clone());
    plan_holds(cfg, store, &users)?;
    store.update_user(&u).map_err(|e| {
        if e.contains("UNIQUE") {
            format!(
                "extension `{}` is taken",
                u.extension.as_deref().unwrap_or("")
            )
        } else {
            e
        }
    })?;
    Ok(u)
}

/// A user's listing note: empty, or why its phones cannot log in.
pub fn realm_note(cfg: &Config, u: &User) -> String {
    // A user's realm is its domain's: the main one, or the part after `@`.
    let domain = u
        .name
        .split_once('@')
        .map_or(cfg.domain.as_str(), |(_, d)| d);
    if u.realm == domain {
        String::new()
    } else {
        format!("(password set for realm {}; run user passwd)", u.realm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse("domain = \"example.test\"\ndomains = [\"other.test\"]\n").unwrap()
    }

    #[test]
    fn weak_passwords_are_refused_unless_allowed() {
        let check = |pw: &str, allow_weak| {
            Password {
                text: pw,
                allow_weak,
            }
            .check("alice", Some("101"))
        };
        for weak in [
            "alicepw",
            "Password1",
            "QWERTY123",
            "12345678",
            "alice",
            "aaaabbbb",
        ] {
            let e = check(weak, false).err();
            let e = e.unwrap_or_else(|| panic!("{weak} accepted"));
            assert!(e.contains("--allow-weak-password"), "{e}");
        }
        assert!(check("ecila", false).is_err(), "short");
        assert!(check("alice", false).unwrap_err().contains("shorter"));
        assert!(check("Password1", false)
            .unwrap_err()
            .contains("guessers try first"));
        assert!(check("ilovemyphone", false).is_ok());
        assert!(check("alice-Secret-1", false).is_ok());
        assert!(check("pw", true).is_ok(), "allowed");
        assert!(check("", true).is_err(), "never empty");
        let e = parse_import(&cfg(), "f", "bob,,bobpw\n", false).unwrap_err();
        assert!(e.starts_with("f:1: weak password"), "{e}");
    }

    #[test]
    fn names_and_realms() {
        let c = cfg();
        assert!(valid_name(&c, "alice.b-c_d"));
        assert!(valid_name(&c, "alice@other.test"));
        assert!(!valid_name(&c, "alice@elsewhere.test"));
        assert!(!valid_name(&c, "al ice"));
        assert_eq!(new_user(&c, "alice", None, "pw").realm, "example.test");
        let u = new_user(&c, "alice@Other.TEST", None, "pw");
        assert_eq!(
            (u.name.as_str(), u.realm.as_str()),
            ("alice@other.test", "other.test")
        );
        assert_eq!(address(&c, "bob"), "sip:bob@example.test");
    }

    #[test]
    fn an_import_names_its_bad_line() {
        let c = cfg();
        let ok = parse_import(&c, "f", "# team\nalice,101,pw1\nbob,,pw2\n", true).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].extension, None);
        let e = parse_import(&c, "f", "alice,101,pw\nbob;102;pw\n", true).unwrap_err();
        assert_eq!(e, "f:2: expected name,extension,password");
        let e = parse_import(&c, "f", "carol,1x,pw\n", true).unwrap_err();
        assert!(e.starts_with("f:1: extension"), "{e}");
    }
}
