//! The phone system's stored settings as the management commands change them: ring groups,
//! forwarding, speed dials and dial-plan rules. Every change is checked against the whole
//! plan (config file, users and stored settings) before it is written, so a clash is refused
//! with the reason. Settings written in the config file are read here but changed only there.

use crate::config::Config;
use crate::plan::settings::{
    ForwardSpec, GroupSpec, PlanSettings, RuleAction, RuleSpec, SpeedDialSpec,
};
use crate::store::{SqliteStore, Store};

/// The store's phone-system settings, open for changes.
pub struct PhoneAdmin<'a> {
    cfg: &'a Config,
    store: SqliteStore,
    /// What the store holds (the config file's settings come on top, see `merged`).
    stored: PlanSettings,
}

impl<'a> PhoneAdmin<'a> {
    /// Opens the store and reads its phone-system settings.
    pub fn open(cfg: &'a Config) -> Result<PhoneAdmin<'a>, String> {
        let store = SqliteStore::open(&cfg.db_path())?;
        let stored = store.plan()?;
        Ok(PhoneAdmin { cfg, store, stored })
    }

    /// The settings in force: the config file's and the stored ones.
    pub fn merged(&self) -> PlanSettings {
        PlanSettings::merged(&self.cfg.plan(), &self.stored)
    }

    /// Checks `changed` (the stored settings with one change) as a whole, then writes the
    /// change with `write` and takes it; a refused change leaves everything as it was.
    fn commit(
        &mut self,
        changed: PlanSettings,
        write: impl FnOnce(&mut SqliteStore) -> Result<(), String>,
    ) -> Result<(), String> {
        let users = self.store.users()?;
        self.cfg
            .build_plan(&users, &PlanSettings::merged(&self.cfg.plan(), &changed))
            .map_err(|e| format!("refused: {e}"))?;
        write(&mut self.store)?;
        self.stored = changed;
        Ok(())
    }

    /// A group by name, stored or from the config file.
    pub fn group(&self, name: &str) -> Result<GroupSpec, String> {
        self.stored
            .groups
            .iter()
            .find(|g| g.name == name)
            .cloned()
            .or_else(|| self.cfg.group.iter().find(|g| g.name == name).cloned())
            .ok_or_else(|| format!("no group `{name}`"))
    }

    /// Whether the store holds a group of this name.
    /// Whether the store holds a group of this name (config-file groups do not count).
    pub fn has_stored_group(&self, name: &str) -> bool {
        self.stored.groups.iter().any(|g| g.name == name)
    }

    /// Stores a group (new, or replacing the one of its name).
    pub fn put_group(&mut self, g: GroupSpec) -> Result<(), String> {
        let mut changed = self.stored.clone();
        changed.groups.retain(|x| x.name != g.name);
        changed.groups.push(g.clone());
        self.commit(changed, |s| s.put_group(&g))
    }

    /// Removes a stored group if the plan still holds without it; a group from the config
    /// file is refused with a hint to remove it there.
    pub fn remove_group(&mut self, name: &str) -> Result<(), String> {
        if !self.has_stored_group(name) {
            return Err(if self.cfg.group.iter().any(|g| g.name == name) {
                format!("group `{name}` is defined in the config file; remove it there")
            } else {
                format!("no group `{name}`")
            });
        }
        let mut changed = self.stored.clone();
        changed.groups.retain(|g| g.name != name);
        self.commit(changed, |s| s.remove_group(name).map(|_| ()))
    }

    /// A user's forwarding as in force (stored, else the config file's, else none).
    pub fn forward(&self, user: &str) -> ForwardSpec {
        self.stored
            .forwards
            .iter()
            .chain(&self.cfg.forward)
            .find(|f| f.user == user)
            .cloned()
            .unwrap_or_else(|| ForwardSpec {
                user: user.to_string(),
                ..Default::default()
            })
    }

    /// Stores a user's forwarding (the user must exist).
    pub fn put_forward(&mut self, f: ForwardSpec) -> Result<(), String> {
        if self.store.user(&f.user)?.is_none() {
            return Err(format!("no user `{}`", f.user));
        }
        let mut changed = self.stored.clone();
        changed.forwards.retain(|x| x.user != f.user);
        changed.forwards.push(f.clone());
        self.commit(changed, |s| s.put_forward(&f))
    }

    /// Stores a speed dial (replacing one of the same code and user).
    pub fn put_speed_dial(&mut self, d: SpeedDialSpec) -> Result<(), String> {
        if d.code.is_empty()
            || !d
                .code
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b'*' || c == b'#')
        {
            return Err(format!(
                "speed dial code `{}` must be digits, * or #",
                d.code
            ));
        }
        let mut changed = self.stored.clone();
        changed
            .speed_dials
            .retain(|x| !(x.code == d.code && x.user == d.user));
        changed.speed_dials.push(d.clone());
        self.commit(changed, |s| s.put_speed_dial(&d))
    }

    /// Removes a stored speed dial: the user's own, or the system-wide one when `user` is
    /// None. An error if there is no such stored speed dial.
    pub fn remove_speed_dial(&mut self, user: Option<&str>, code: &str) -> Result<(), String> {
        if !self.store.remove_speed_dial(user, code)? {
            return Err(format!("no stored speed dial `{code}`"));
        }
        // The admin's view follows the store, as after every other change.
        self.stored
            .speed_dials
            .retain(|d| !(d.code == code && d.user.as_deref() == user));
        Ok(())
    }

    /// The stored rules, in order (the config file's come first, see `Config::dialplan`).
    pub fn rules(&self) -> &[RuleSpec] {
        &self.stored.rules
    }

    /// Inserts a rule at `position` (from 1; the end when None or past it); returns where.
    pub fn add_rule(&mut self, r: RuleSpec, position: Option<usize>) -> Result<usize, String> {
        let mut changed = self.stored.clone();
        let at = position
            .map(|p| p.saturating_sub(1).min(changed.rules.len()))
            .unwrap_or(changed.rules.len());
        changed.rules.insert(at, r);
        let rules = changed.rules.clone();
        self.commit(changed, |s| s.set_rules(&rules))?;
        Ok(at + 1)
    }

    /// Removes stored rule `number` (from 1).
    pub fn remove_rule(&mut self, number: usize) -> Result<(), String> {
        if number == 0 || number > self.stored.rules.len() {
            return Err(format!(
                "no stored rule {number} (there are {})",
                self.stored.rules.len()
            ));
        }
        let mut changed = self.stored.clone();
        changed.rules.remove(number - 1);
        let rules = changed.rules.clone();
        // Fewer rules never break the plan; checked all the same, like every change.
        self.commit(changed, |s| s.set_rules(&rules))
    }
}

/// A user's forwarding in words: `alice  busy to bob; no answer after 15s to 200`.
pub fn describe_forward(f: &ForwardSpec, cfg: &Config) -> String {
    let mut parts = vec![];
    if f.dnd {
        parts.push("do not disturb".to_string());
    }
    if let Some(t) = &f.always {
        parts.push(format!("all calls to {t}"));
    }
    if let Some(t) = &f.busy {
        parts.push(format!("busy to {t}"));
    }
    if let Some(t) = &f.no_answer {
        parts.push(format!(
            "no answer after {}s to {t}",
            f.no_answer_after.unwrap_or(cfg.calls.no_answer_after)
        ));
    }
    if let Some(t) = &f.unavailable {
        parts.push(format!("unavailable to {t}"));
    }
    if parts.is_empty() {
        parts.push("no forwarding".into());
    }
    format!("{:<16} {}", f.user, parts.join("; "))
}

/// A dial-plan rule in words: `match 0900.  reject 403 Premium Numbers Barred`.
pub fn describe_rule(r: &RuleSpec) -> String {
    let pattern = match (&r.mask, &r.regex) {
        (Some(m), _) => format!("match {m}"),
        (_, Some(re)) => format!("regex {re}"),
        _ => "?".into(),
    };
    let mut s = format!("{pattern:<24} ");
    match r.action {
        RuleAction::Rewrite => s.push_str("rewrite"),
        RuleAction::Local => s.push_str("local"),
        RuleAction::Remote => s.push_str(&format!("remote {}", r.target.as_deref().unwrap_or("?"))),
        RuleAction::Provider => s.push_str(&format!("provider {}", r.providers.join(", "))),
        RuleAction::Reject => s.push_str(&format!(
            "reject {} {}",
            r.status.unwrap_or(403),
            r.reason.as_deref().unwrap_or("")
        )),
    }
    if r.strip > 0 {
        s.push_str(&format!(", strip {}", r.strip));
    }
    if !r.prefix.is_empty() {
        s.push_str(&format!(", prefix {}", r.prefix));
    }
    s
}
