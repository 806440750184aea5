//! Persistent state: user accounts (passwords only as digest HA1 hashes) and registrations.
//! `Store` is the trait the daemon and the CLI use; `SqliteStore` is the embedded default.
//! The proxy never waits on it: it keeps its tables in memory and writes through.

use crate::core::mailbox::WaitingMessage;
use crate::plan::settings::{ForwardSpec, GroupSpec, PlanSettings, RuleSpec, SpeedDialSpec};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

pub mod writer;

pub use hedgewitch_core::records::{StoredBinding, User};

/// A store operation's outcome; the error is a message for the operator.
pub type StoreResult<T> = Result<T, String>;

/// One change to the stored registrations.
#[derive(Clone, Debug, PartialEq)]
pub enum BindingWrite {
    /// Insert or replace the binding of this user and contact.
    Put(StoredBinding),
    /// Remove one binding.
    Delete {
        /// The user's key (`name`, or `name@domain` in a further domain).
        aor: String,
        /// The contact URI as registered.
        contact: String,
    },
}

/// User accounts and registrations, as the daemon and the CLI read and write them.
pub trait Store: Send {
    /// Every account, in name order.
    fn users(&self) -> StoreResult<Vec<User>>;
    /// One account by its key in the user table; None if there is none.
    fn user(&self, name: &str) -> StoreResult<Option<User>>;
    /// Fails with a clear message if the name or extension is taken.
    fn add_user(&self, user: &User) -> StoreResult<()>;
    /// Adds many users in one transaction: all or none.
    fn import_users(&mut self, users: &[User]) -> StoreResult<()>;
    /// Overwrites the account of `user.name`; false if there is none.
    fn update_user(&self, user: &User) -> StoreResult<bool>;
    /// Deletes an account and the bindings stored under its name; false if there was none.
    fn remove_user(&self, name: &str) -> StoreResult<bool>;
    /// Every stored registration, in user then contact order.
    fn bindings(&self) -> StoreResult<Vec<StoredBinding>>;
    /// Inserts or replaces the binding of this user and contact.
    fn put_binding(&self, b: &StoredBinding) -> StoreResult<()>;
    /// Deletes one binding (no error if there is none).
    fn delete_binding(&self, aor: &str, contact: &str) -> StoreResult<()>;
    /// Deletes all of a user's bindings.
    fn delete_bindings(&self, aor: &str) -> StoreResult<()>;
    /// Applies the changes in order, in one transaction: all or none.
    fn write_bindings(&mut self, batch: &[BindingWrite]) -> StoreResult<()>;
}

/// The `Store` in one SQLite file (`hedgewitch.db`), which also holds the phone-system
/// settings made from the CLI or a phone and the domain the data folder was set up for.
pub struct SqliteStore {
    conn: Connection,
}

const PUT_BINDING: &str = "INSERT OR REPLACE INTO bindings
    (aor, contact, expires_at, q, call_id, cseq, transport, source, local, user_agent, path,
     instance, reg_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const DELETE_BINDING: &str = "DELETE FROM bindings WHERE aor = ?1 AND contact = ?2";

fn put_binding(conn: &Connection, b: &StoredBinding) -> rusqlite::Result<usize> {
    conn.prepare_cached(PUT_BINDING)?.execute(params![
        b.aor,
        b.contact,
        b.expires_at as i64,
        b.q as f64,
        b.call_id,
        b.cseq as i64,
        b.transport,
        b.source,
        b.local,
        b.user_agent,
        b.path,
        // Columns of their own: '' and 0 when the phone registered no flow.
        b.outbound.as_ref().map_or("", |(i, _)| i.as_str()),
        b.outbound.as_ref().map_or(0, |(_, r)| i64::from(*r))
    ])
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    extension TEXT UNIQUE,
    realm TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL
);
-- Phone-system settings made from the CLI or a phone, as JSON: kind is `group` (key: its
-- name), `forward` (key: the user), `speeddial` (key: user or empty, a space, the code) or
-- `rule` (key: its position, zero-padded).
CREATE TABLE IF NOT EXISTS plan (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    q REAL NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    transport TEXT NOT NULL,
    source TEXT NOT NULL,
    local TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    path TEXT NOT NULL DEFAULT '',
    instance TEXT NOT NULL DEFAULT '',
    reg_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (aor, contact)
);
-- Facts about the data folder itself: `domain` is the main domain its passwords were hashed
-- for (the digest realm), recorded at the first start so the CLI and the daemon agree.
-- Messages waiting for users whose phones did not take them, delivered in `id` order.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    sender TEXT NOT NULL,
    date TEXT NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    stored_at INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

fn err(e: rusqlite::Error) -> String {
    e.to_string()
}

impl SqliteStore {
    /// Opens the database at `path`, creating it and its folder if needed, and brings its
    /// schema up to date. WAL mode, so the CLI can write while the daemon reads.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create data folder {}: {e}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| format!("cannot open store {}: {e}", path.display()))?;
        // WAL lets the CLI write users while the daemon reads; busy_timeout rides out the
        // short moments when both write.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| format!("cannot set up store {}: {e}", path.display()))?;
        migrate(&conn).map_err(|e| format!("cannot upgrade store {}: {e}", path.display()))?;
        Ok(SqliteStore { conn })
    }

    /// A fresh database in memory, for tests.
    pub fn in_memory() -> StoreResult<SqliteStore> {
        let conn = Connection::open_in_memory().map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&conn).map_err(err)?;
        Ok(SqliteStore { conn })
    }

    /// The main domain this data folder was set up for (see `settings` in the schema).
    pub fn recorded_domain(&self) -> StoreResult<Option<String>> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = 'domain'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)
    }

    /// Records the main domain; one already recorded stays unless `replace`.
    pub fn record_domain(&self, domain: &str, replace: bool) -> StoreResult<()> {
        let sql = if replace {
            "INSERT OR REPLACE INTO settings (key, value) VALUES ('domain', ?1)"
        } else {
            "INSERT OR IGNORE INTO settings (key, value) VALUES ('domain', ?1)"
        };
        self.conn.execute(sql, [domain]).map(|_| ()).map_err(err)
    }

    /// The phone-system settings kept in the store.
    pub fn plan(&self) -> StoreResult<PlanSettings> {
        let mut out = PlanSettings::default();
        let mut st = self
            .conn
            .prepare("SELECT kind, key, value FROM plan ORDER BY kind, key")
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(err)?;
        for row in rows {
            let (kind, key, value) = row.map_err(err)?;
            let bad = |e: serde_json::Error| format!("stored {kind} `{key}` is unreadable: {e}");
            match kind.as_str() {
                "group" => out.groups.push(serde_json::from_str(&value).map_err(bad)?),
                "forward" => out
                    .forwards
                    .push(serde_json::from_str(&value).map_err(bad)?),
                "speeddial" => out
                    .speed_dials
                    .push(serde_json::from_str(&value).map_err(bad)?),
                "rule" => out.rules.push(serde_json::from_str(&value).map_err(bad)?),
                "did" => out.dids.push(serde_json::from_str(&value).map_err(bad)?),
                "presence" => out
                    .presence_allow
                    .push(serde_json::from_str(&value).map_err(bad)?),
                _ => {}
            }
        }
        Ok(out)
    }

    fn put_plan<T: serde::Serialize>(&self, kind: &str, key: &str, value: &T) -> StoreResult<()> {
        let json = serde_json::to_string(value).map_err(|e| e.to_string())?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO plan (kind, key, value) VALUES (?1, ?2, ?3)",
                params![kind, key, json],
            )
            .map_err(err)?;
        Ok(())
    }

    fn delete_plan(&self, kind: &str, key: &str) -> StoreResult<bool> {
        let n = self
            .conn
            .execute(
                "DELETE FROM plan WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            )
            .map_err(err)?;
        Ok(n > 0)
    }

    /// Stores a ring group (new, or replacing the one of its name).
    pub fn put_group(&self, g: &GroupSpec) -> StoreResult<()> {
        self.put_plan("group", &g.name, g)
    }

    /// Deletes a stored ring group; false if there was none.
    pub fn remove_group(&self, name: &str) -> StoreResult<bool> {
        self.delete_plan("group", name)
    }

    /// Stores a user's forwarding; an empty one is deleted.
    pub fn put_forward(&self, f: &ForwardSpec) -> StoreResult<()> {
        if f.is_empty() {
            self.delete_plan("forward", &f.user).map(|_| ())
        } else {
            self.put_plan("forward", &f.user, f)
        }
    }

    /// Stores a speed dial (new, or replacing the one of its code and user).
    pub fn put_speed_dial(&self, d: &SpeedDialSpec) -> StoreResult<()> {
        self.put_plan("speeddial", &speed_key(d.user.as_deref(), &d.code), d)
    }

    /// Deletes a stored speed dial (the user's own, or the system-wide one when `user` is
    /// None); false if there was none.
    pub fn remove_speed_dial(&self, user: Option<&str>, code: &str) -> StoreResult<bool> {
        self.delete_plan("speeddial", &speed_key(user, code))
    }

    /// Keeps a message for a user (committed when this returns).
    pub fn put_message(&self, m: &WaitingMessage) -> StoreResult<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO messages (id, user, sender, date, content_type, body, stored_at, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    m.id as i64,
                    m.user,
                    m.from,
                    m.date,
                    m.content_type,
                    m.body,
                    m.stored_at as i64,
                    m.source.to_string()
                ],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Forgets a message (delivered, replaced or expired).
    pub fn delete_message(&self, id: u64) -> StoreResult<()> {
        self.conn
            .execute("DELETE FROM messages WHERE id = ?1", params![id as i64])
            .map_err(err)?;
        Ok(())
    }

    /// Every waiting message, oldest first.
    pub fn waiting_messages(&self) -> StoreResult<Vec<WaitingMessage>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, user, sender, date, content_type, body, stored_at, source
                 FROM messages ORDER BY id",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(WaitingMessage {
                    id: r.get::<_, i64>(0)? as u64,
                    user: r.get(1)?,
                    from: r.get(2)?,
                    date: r.get(3)?,
                    content_type: r.get(4)?,
                    body: r.get(5)?,
                    stored_at: r.get::<_, i64>(6)? as u64,
                    source: r
                        .get::<_, String>(7)?
                        .parse()
                        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Lets a watcher of another domain see a user's presence.
    pub fn put_presence_allow(&self, a: &crate::plan::settings::PresenceAllow) -> StoreResult<()> {
        self.put_plan("presence", &format!("{} {}", a.user, a.watcher), a)
    }

    /// Takes that back; false if it was not there.
    pub fn remove_presence_allow(&self, user: &str, watcher: &str) -> StoreResult<bool> {
        self.delete_plan("presence", &format!("{user} {watcher}"))
    }

    /// Maps one of the household's numbers (new, or replacing its mapping).
    pub fn put_did(&self, d: &crate::core::trunks::settings::DidSpec) -> StoreResult<()> {
        self.put_plan("did", &d.number, d)
    }

    /// Removes a number's mapping; false if there was none.
    pub fn remove_did(&self, number: &str) -> StoreResult<bool> {
        self.delete_plan("did", number)
    }

    /// Replaces the stored dial-plan rules, in order.
    pub fn set_rules(&mut self, rules: &[RuleSpec]) -> StoreResult<()> {
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute("DELETE FROM plan WHERE kind = 'rule'", [])
            .map_err(err)?;
        for (i, r) in rules.iter().enumerate() {
            let json = serde_json::to_string(r).map_err(|e| e.to_string())?;
            tx.execute(
                "INSERT INTO plan (kind, key, value) VALUES ('rule', ?1, ?2)",
                params![format!("{i:06}"), json],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Allows or forbids a user's calls outside the domain.
    pub fn set_outside(&self, name: &str, outside: bool) -> StoreResult<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE users SET outside = ?2 WHERE name = ?1",
                params![name, outside],
            )
            .map_err(err)?;
        Ok(n > 0)
    }
}

fn speed_key(user: Option<&str>, code: &str) -> String {
    format!("{} {code}", user.unwrap_or(""))
}

/// Brings a store made by an older version up to date, in one write transaction: the
/// daemon and a CLI command opening a new store at the same moment would otherwise both see
/// a column missing and both add it.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match add_missing_columns(conn) {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let has_outside: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'outside'")?
        .exists([])?;
    if !has_outside {
        conn.execute_batch("ALTER TABLE users ADD COLUMN outside INTEGER NOT NULL DEFAULT 1")?;
    }
    let has_external: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'external'")?
        .exists([])?;
    if !has_external {
        conn.execute_batch("ALTER TABLE users ADD COLUMN external INTEGER NOT NULL DEFAULT 1")?;
    }
    // Path (RFC 3327) and outbound (RFC 5626) of registrations.
    for (column, kind) in [
        ("path", "TEXT NOT NULL DEFAULT ''"),
        ("instance", "TEXT NOT NULL DEFAULT ''"),
        ("reg_id", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        let exists: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('bindings') WHERE name = ?1")?
            .exists([column])?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE bindings ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        extension: r.get(1)?,
        realm: r.get(2)?,
        ha1_md5: r.get(3)?,
        ha1_sha256: r.get(4)?,
        outside: r.get(5)?,
        external: r.get(6)?,
    })
}

impl Store for SqliteStore {
    fn users(&self) -> StoreResult<Vec<User>> {
        let mut st = self
            .conn
            .prepare("SELECT name, extension, realm, ha1_md5, ha1_sha256, outside, external FROM users ORDER BY name")
            .map_err(err)?;
        let rows = st.query_map([], user_row).map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    fn user(&self, name: &str) -> StoreResult<Option<User>> {
        self.conn
            .query_row(
                "SELECT name, extension, realm, ha1_md5, ha1_sha256, outside, external FROM users WHERE name = ?1",
                [name],
                user_row,
            )
            .optional()
            .map_err(err)
    }

    fn add_user(&self, u: &User) -> StoreResult<()> {
        let clash: Option<String> = self
            .conn
            .query_row(
                "SELECT name FROM users WHERE name = ?1 OR extension = ?1 OR name = ?2 OR extension = ?2",
                params![u.name, u.extension.as_deref().unwrap_or(&u.name)],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if let Some(other) = clash {
            return Err(format!(
                "`{}`{} clashes with the existing user `{other}` (names and extensions share one namespace)",
                u.name,
                u.extension.as_ref().map(|e| format!(" / extension {e}")).unwrap_or_default()
            ));
        }
        self.conn
            .execute(
                "INSERT INTO users (name, extension, realm, ha1_md5, ha1_sha256, outside, external) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![u.name, u.extension, u.realm, u.ha1_md5, u.ha1_sha256, u.outside, u.external],
            )
            .map_err(err)?;
        Ok(())
    }

    fn import_users(&mut self, users: &[User]) -> StoreResult<()> {
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO users (name, extension, realm, ha1_md5, ha1_sha256, outside, external) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            for u in users {
                st.execute(params![
                    u.name,
                    u.extension,
                    u.realm,
                    u.ha1_md5,
                    u.ha1_sha256,
                    u.outside,
                    u.external
                ])
                .map_err(|e| {
                    format!(
                        "user `{}`: {e} (names and extensions must be unique)",
                        u.name
                    )
                })?;
            }
        }
        tx.commit().map_err(err)
    }

    fn update_user(&self, u: &User) -> StoreResult<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE users SET extension = ?2, realm = ?3, ha1_md5 = ?4, ha1_sha256 = ?5, outside = ?6, external = ?7 WHERE name = ?1",
                params![u.name, u.extension, u.realm, u.ha1_md5, u.ha1_sha256, u.outside, u.external],
            )
            .map_err(err)?;
        Ok(n > 0)
    }

    fn remove_user(&self, name: &str) -> StoreResult<bool> {
        let n = self
            .conn
            .execute("DELETE FROM users WHERE name = ?1", [name])
            .map_err(err)?;
        self.delete_bindings(name)?;
        Ok(n > 0)
    }

    fn bindings(&self) -> StoreResult<Vec<StoredBinding>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT aor, contact, expires_at, q, call_id, cseq, transport, source, local, user_agent,
                        path, instance, reg_id
                 FROM bindings ORDER BY aor, contact",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok(StoredBinding {
                    aor: r.get(0)?,
                    contact: r.get(1)?,
                    expires_at: r.get::<_, i64>(2)?.max(0) as u64,
                    q: r.get::<_, f64>(3)? as f32,
                    call_id: r.get(4)?,
                    cseq: r.get::<_, i64>(5)?.clamp(0, u32::MAX as i64) as u32,
                    transport: r.get(6)?,
                    source: r.get(7)?,
                    local: r.get(8)?,
                    user_agent: r.get(9)?,
                    path: r.get(10)?,
                    outbound: {
                        let instance: String = r.get(11)?;
                        let reg_id = r.get::<_, i64>(12)?.clamp(0, u32::MAX as i64) as u32;
                        (!instance.is_empty()).then_some((instance, reg_id))
                    },
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    fn put_binding(&self, b: &StoredBinding) -> StoreResult<()> {
        put_binding(&self.conn, b).map_err(err)?;
        Ok(())
    }

    fn delete_binding(&self, aor: &str, contact: &str) -> StoreResult<()> {
        self.conn
            .prepare_cached(DELETE_BINDING)
            .and_then(|mut st| st.execute([aor, contact]))
            .map_err(err)?;
        Ok(())
    }

    fn delete_bindings(&self, aor: &str) -> StoreResult<()> {
        self.conn
            .execute("DELETE FROM bindings WHERE aor = ?1", [aor])
            .map_err(err)?;
        Ok(())
    }

    fn write_bindings(&mut self, batch: &[BindingWrite]) -> StoreResult<()> {
        let tx = self.conn.transaction().map_err(err)?;
        for w in batch {
            match w {
                BindingWrite::Put(b) => put_binding(&tx, b),
                BindingWrite::Delete { aor, contact } => tx
                    .prepare_cached(DELETE_BINDING)
                    .and_then(|mut st| st.execute([aor, contact])),
            }
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_clashes() {
        let s = SqliteStore::in_memory().unwrap();
        s.add_user(&User::new("alice", Some("101"), "example.test", "pw"))
            .unwrap();
        let e = s
            .add_user(&User::new("bob", Some("101"), "example.test", "pw"))
            .unwrap_err();
        assert!(e.contains("alice"), "{e}");
        let e = s
            .add_user(&User::new("101", None, "example.test", "pw"))
            .unwrap_err();
        assert!(e.contains("alice"), "{e}");
        s.add_user(&User::new("bob", Some("102"), "example.test", "pw"))
            .unwrap();
        assert_eq!(s.users().unwrap().len(), 2);
        let a = s.user("alice").unwrap().unwrap();
        assert_eq!(
            a.ha1_md5,
            sip::digest::ha1(sip::digest::Algorithm::Md5, "alice", "example.test", "pw")
        );
        assert!(!a.ha1_md5.contains("pw"));
        assert!(s.remove_user("alice").unwrap());
        assert!(!s.remove_user("alice").unwrap());
    }

    #[test]
    fn import_is_all_or_nothing() {
        let mut s = SqliteStore::in_memory().unwrap();
        let many: Vec<User> = (0..1000)
            .map(|i| {
                User::new(
                    &format!("u{i}"),
                    Some(&format!("{}", 5000 + i)),
                    "example.test",
                    "pw",
                )
            })
            .collect();
        s.import_users(&many).unwrap();
        assert_eq!(s.users().unwrap().len(), 1000);
        let clash = vec![
            User::new("fresh", None, "example.test", "pw"),
            User::new("u7", None, "example.test", "pw"),
        ];
        let e = s.import_users(&clash).unwrap_err();
        assert!(e.contains("u7"), "{e}");
        assert!(
            s.user("fresh").unwrap().is_none(),
            "nothing of a failed import stays"
        );
    }

    #[test]
    fn plan_settings_round_trip() {
        use crate::plan::settings::*;
        let mut s = SqliteStore::in_memory().unwrap();
        let g = GroupSpec {
            name: "sales".into(),
            extension: Some("300".into()),
            strategy: Strategy::Sequential,
            members: vec![
                MemberSpec::Target("alice".into()),
                MemberSpec::Detailed {
                    target: "sip:x@198.18.0.9".into(),
                    ring_time: Some(5),
                },
            ],
            ring_time: Some(10),
            timeout: Some(60),
            fallback: Some("bob".into()),
        };
        s.put_group(&g).unwrap();
        let f = ForwardSpec {
            user: "alice".into(),
            busy: Some("bob".into()),
            dnd: true,
            ..Default::default()
        };
        s.put_forward(&f).unwrap();
        s.put_speed_dial(&SpeedDialSpec {
            code: "11".into(),
            target: "bob".into(),
            user: Some("alice".into()),
        })
        .unwrap();
        let r = RuleSpec {
            mask: Some("0.".into()),
            regex: None,
            action: RuleAction::Reject,
            strip: 0,
            prefix: String::new(),
            target: None,
            status: Some(403),
            reason: Some("No".into()),
            providers: vec![],
        };
        s.set_rules(&[r.clone(), r.clone()]).unwrap();
        let p = s.plan().unwrap();
        assert_eq!(p.groups, vec![g]);
        assert_eq!(p.forwards, vec![f.clone()]);
        assert_eq!(p.speed_dials.len(), 1);
        assert_eq!(p.rules.len(), 2);
        s.put_forward(&ForwardSpec {
            user: "alice".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(
            s.plan().unwrap().forwards.is_empty(),
            "an empty forwarding is deleted"
        );
        assert!(s.remove_speed_dial(Some("alice"), "11").unwrap());
        assert!(s.remove_group("sales").unwrap());
    }

    #[test]
    fn outside_permission_and_migration() {
        let conn = Connection::open_in_memory().unwrap();
        // A store from before the `outside` column.
        conn.execute_batch(
            "CREATE TABLE users (name TEXT PRIMARY KEY, extension TEXT UNIQUE, realm TEXT NOT NULL,
             ha1_md5 TEXT NOT NULL, ha1_sha256 TEXT NOT NULL);
             INSERT INTO users VALUES ('old', NULL, 'r', 'a', 'b');",
        )
        .unwrap();
        // And bindings from before Path and outbound.
        conn.execute_batch(
            "CREATE TABLE bindings (aor TEXT NOT NULL, contact TEXT NOT NULL,
             expires_at INTEGER NOT NULL, q REAL NOT NULL, call_id TEXT NOT NULL,
             cseq INTEGER NOT NULL, transport TEXT NOT NULL, source TEXT NOT NULL,
             local TEXT NOT NULL, user_agent TEXT NOT NULL, PRIMARY KEY (aor, contact));
             INSERT INTO bindings VALUES ('old', 'sip:old@192.0.2.1', 1900000000, 1.0, 'c', 1,
             'udp', '192.0.2.1:5060', '192.0.2.2:5060', 'ua');",
        )
        .unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        let s = SqliteStore { conn };
        let b = s.bindings().unwrap();
        assert_eq!((b[0].path.as_str(), &b[0].outbound), ("", &None));
        assert!(s.user("old").unwrap().unwrap().outside);
        assert!(s.set_outside("old", false).unwrap());
        assert!(!s.user("old").unwrap().unwrap().outside);
        assert!(
            s.user("old").unwrap().unwrap().external,
            "accepts external calls by default"
        );
    }

    #[test]
    fn bindings_round_trip() {
        let s = SqliteStore::in_memory().unwrap();
        let b = StoredBinding {
            aor: "alice".into(),
            contact: "<sip:alice@127.0.0.1:5062>".into(),
            expires_at: 1_900_000_000,
            q: 0.5,
            call_id: "c1".into(),
            cseq: 7,
            transport: "udp".into(),
            source: "127.0.0.1:5062".into(),
            local: "127.0.0.1:5060".into(),
            user_agent: "test".into(),
            path: "sip:edge.example.test;lr".into(),
            outbound: Some(("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>".into(), 1)),
        };
        s.put_binding(&b).unwrap();
        s.put_binding(&StoredBinding {
            cseq: 8,
            ..b.clone()
        })
        .unwrap();
        let all = s.bindings().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].cseq, 8);
        s.delete_binding("alice", &b.contact).unwrap();
        assert!(s.bindings().unwrap().is_empty());
        // A batch applies in order, in one transaction.
        let mut s = s;
        let other = StoredBinding {
            contact: "<sip:alice@127.0.0.1:5064>".into(),
            ..b.clone()
        };
        s.write_bindings(&[
            BindingWrite::Put(b.clone()),
            BindingWrite::Put(other.clone()),
            BindingWrite::Delete {
                aor: "alice".into(),
                contact: b.contact.clone(),
            },
        ])
        .unwrap();
        assert_eq!(s.bindings().unwrap(), vec![other]);
    }
}
