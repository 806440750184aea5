//! Reloading while running: the config file and the store are read again, what can change
//! live is swapped into the core and the edge, and what needs a restart is named.

use super::edge::Edge;
use crate::config::Config;
use crate::core::Core;
use crate::store::writer::StoreOp;

/// Re-reads the config file and the store, and applies every setting that can change while
/// running; calls and registrations in progress are untouched. Settings that need a restart
/// are named in the answer and the log, and only when they changed.
pub(super) struct Reloader {
    /// The settings in force: those that apply live, as last reloaded.
    pub(super) running: Config,
    /// The settings the server started with: those that need a restart are in force as
    /// they were then, and are named at each reload for as long as the file differs.
    pub(super) started: Config,
    /// The data folder's key (providers' Contact secrets are made from it).
    pub(super) key: [u8; 32],
}

/// What a reload did.
pub(super) struct Reloaded {
    users: usize,
    groups: usize,
    /// Settings that changed and now apply.
    applied: Vec<&'static str>,
    /// Settings that changed but apply only after a restart.
    restart: Vec<&'static str>,
}

impl Reloaded {
    pub(super) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "users": self.users,
            "groups": self.groups,
            "applied": self.applied,
            "restart_needed": self.restart,
        })
    }
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} users, {} groups", self.users, self.groups)?;
        if !self.applied.is_empty() {
            write!(f, "; applied: {}", self.applied.join(", "))?;
        }
        if !self.restart.is_empty() {
            write!(
                f,
                "; changed but applied only after a restart: {}",
                self.restart.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Reloader {
    /// After a management command changed the store: the users and the phone system are read
    /// again and swapped in with the settings in force; the config file is not read (a
    /// half-edited file must not stop new users, nor be applied as a side effect).
    pub(super) fn reload_users(
        &mut self,
        core: &mut Core,
        edge: &mut Edge,
    ) -> Result<Reloaded, String> {
        let (users, stored) = load(edge)?;
        let plan = self.running.build_plan(&users, &stored)?;
        let trunks =
            crate::providers::load(&self.running.providers_path(), &self.key, &stored.dids)?;
        let done = Reloaded {
            users: users.len(),
            groups: stored.groups.len() + self.running.group.len(),
            applied: vec![],
            restart: vec![],
        };
        core.set_users(users);
        core.set_plan(plan);
        core.set_trunks(
            std::time::Instant::now(),
            trunks,
            self.running.numbers.clone(),
        );
        core.set_presence(self.running.presence_settings(&stored));
        Ok(done)
    }

    pub(super) fn reload(&mut self, core: &mut Core, edge: &mut Edge) -> Result<Reloaded, String> {
        let new = self.running.reread()?;
        let old = &self.running;
        let mut restart = vec![];
        let mut applied = vec![];
        let started = &self.started;
        for (changed, key) in [
            (!new.domain.eq_ignore_ascii_case(&started.domain), "domain"),
            (new.domains != started.domains, "domains"),
            (new.listen != started.listen, "listen"),
            (new.stun != started.stun, "stun"),
            (new.advertise != started.advertise, "advertise"),
            (new.data_dir != started.data_dir, "data_dir"),
            (new.log != started.log, "log"),
            (
                new.relay.ports != started.relay.ports && core.has_relay(),
                "relay.ports",
            ),
        ] {
            if changed {
                restart.push(key);
            }
        }
        // Everything fallible comes first, before anything is swapped in: a bad file changes
        // nothing.
        let (users, stored) = load(edge)?;
        // The domain is the digest realm and cannot change live: keep the running one.
        let live = Config {
            domain: old.domain.clone(),
            ..new.clone()
        };
        let plan = live.build_plan(&users, &stored)?;
        let trunks = crate::providers::load(&live.providers_path(), &self.key, &stored.dids)?;
        // Certificates are read again on every reload: a renewal replaces the files at the
        // same paths, with nothing changed in the config file.
        let (new_tls, _) = super::effective_tls(&new)?;
        let tls = edge
            .tls
            .prepare(&new_tls)
            .map_err(|e| format!("tls: {e}"))?;
        let dns = if new.dns != old.dns {
            Some(crate::dns::Dns::new(&new.dns.servers)?)
        } else {
            None
        };

        let (tls_changed, tls_restart) = (tls.changed, tls.restart);
        edge.tls.apply(tls);
        if tls_changed {
            applied.push("tls certificate");
        }
        if new.tls.ca_files != old.tls.ca_files {
            applied.push("tls.ca_files");
        }
        if tls_restart {
            restart.push("tls listeners");
        }
        if let Some(d) = dns {
            edge.dns = Some(d);
            core.clear_dns_cache();
            applied.push("dns");
        }
        for (changed, key) in [
            (new.registrar != old.registrar, "registrar"),
            (new.auth != old.auth, "auth"),
            (new.relay.mode != old.relay.mode, "relay.mode"),
            (
                new.relay.timeout != old.relay.timeout
                    || new.relay.hold_timeout != old.relay.hold_timeout,
                "relay timeouts",
            ),
            (new.federation != old.federation, "federation"),
            (
                new.plan() != old.plan()
                    || new.numbering != old.numbering
                    || new.features != old.features
                    || new.calls != old.calls,
                "dial plan",
            ),
            (new.numbers != old.numbers, "numbers"),
            (new.messages != old.messages, "messages"),
            (new.presence != old.presence, "presence"),
        ] {
            if changed {
                applied.push(key);
            }
        }
        // A relay turned on in the file starts now (it may have been off since the start),
        // on the ports the file names: those are then the ones in force.
        if new.relay.mode != crate::core::RelayMode::Never && !core.has_relay() {
            start_relay(core, edge, &new);
            self.started.relay.ports = new.relay.ports;
        }
        core.reconfigure(&live.core_config(vec![]));
        let done = Reloaded {
            users: users.len(),
            groups: stored.groups.len() + new.group.len(),
            applied,
            restart,
        };
        core.set_users(users);
        core.set_plan(plan);
        core.set_trunks(std::time::Instant::now(), trunks, live.numbers.clone());
        core.set_mailbox(live.messages.clone());
        core.set_presence(live.presence_settings(&stored));
        if !done.restart.is_empty() {
            tracing::warn!(
                "changed in the config file but applied only after a restart: {}",
                done.restart.join(", ")
            );
        }
        self.running = Config {
            domain: old.domain.clone(),
            domain_origin: old.domain_origin,
            ..new
        };
        Ok(done)
    }
}

/// The users and the stored phone-system settings, read by the store's thread after the
/// writes queued before.
fn load(
    edge: &Edge,
) -> Result<(Vec<crate::core::User>, crate::plan::settings::PlanSettings), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    edge.store
        .send(StoreOp::Load(tx))
        .map_err(|_| "store thread is gone".to_string())?;
    rx.recv().map_err(|_| "store thread is gone".to_string())?
}

/// Starts the media relay on the configured ports: the edge holds it, and the core may use
/// it from now on.
pub(super) fn start_relay(core: &mut Core, edge: &mut Edge, cfg: &Config) {
    let crate::config::PortRange(lo, hi) = cfg.relay.ports;
    if let Some(relay) = edge.relay.as_mut() {
        // Running for TURN already: calls may use it now.
        if cfg.relay.mode != crate::core::RelayMode::Never {
            let _ = relay;
            core.enable_relay((usize::from(hi).saturating_sub(usize::from(lo)) + 1) / 4);
        }
        return;
    }
    match crate::relay::Relay::start(lo, hi, Some(edge.events.clone())) {
        Ok(mut relay) => {
            tracing::info!(mode = ?cfg.relay.mode, "media relay on UDP ports {lo}-{hi}");
            edge.turn.start(&mut relay);
            edge.relay = Some(relay);
            if cfg.relay.mode != crate::core::RelayMode::Never {
                core.enable_relay((usize::from(hi).saturating_sub(usize::from(lo)) + 1) / 4);
            }
        }
        Err(e) => tracing::error!("cannot start the media relay: {e}; calls go without it"),
    }
}
