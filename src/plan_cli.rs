//! `hedgewitch group | forward | speeddial | dialplan`: the phone-system settings from the
//! command line. Every change is checked against the whole plan (config file, users and
//! stored settings) before it is written, so a clash is refused with the reason; then the
//! running server is asked to reload.

use clap::{Args, Subcommand};
use hedgewitch_server::config::Config;
use hedgewitch_server::plan::settings::{
    ForwardSpec, GroupSpec, MemberSpec, PlanSettings, RuleAction, RuleSpec, SpeedDialSpec, Strategy,
};
use hedgewitch_server::store::{SqliteStore, Store};

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a ring group.
    Add {
        name: String,
        #[command(flatten)]
        opts: GroupOpts,
    },
    /// Change a ring group (only the options given).
    Set {
        name: String,
        #[command(flatten)]
        opts: GroupOpts,
    },
    /// Add a member (user, extension, group or SIP URI) at the end.
    MemberAdd {
        name: String,
        target: String,
        /// Seconds this member rings (sequential and rotate).
        #[arg(long)]
        ring_time: Option<u32>,
    },
    MemberRemove {
        name: String,
        target: String,
    },
    Remove {
        name: String,
    },
    List,
}

#[derive(Args, Default)]
pub struct GroupOpts {
    #[arg(long)]
    extension: Option<String>,
    /// parallel, sequential or rotate.
    #[arg(long)]
    strategy: Option<Strategy>,
    /// Seconds each member rings (sequential and rotate).
    #[arg(long)]
    ring_time: Option<u32>,
    /// Seconds before the whole group gives up.
    #[arg(long)]
    timeout: Option<u32>,
    /// Where calls go when nobody answers.
    #[arg(long)]
    fallback: Option<String>,
    /// Members in order (repeat the option); replaces the list.
    #[arg(long = "member")]
    members: Vec<String>,
}

#[derive(Subcommand)]
pub enum ForwardCommand {
    /// Set forwarding targets (user, extension, group, number or SIP URI).
    Set {
        user: String,
        #[arg(long)]
        always: Option<String>,
        #[arg(long)]
        busy: Option<String>,
        #[arg(long)]
        no_answer: Option<String>,
        /// Seconds of ringing before the no-answer forward.
        #[arg(long)]
        after: Option<u32>,
        #[arg(long)]
        unavailable: Option<String>,
    },
    /// Clear forwarding: the kinds named, or all of it.
    Clear {
        user: String,
        #[arg(long)]
        always: bool,
        #[arg(long)]
        busy: bool,
        #[arg(long)]
        no_answer: bool,
        #[arg(long)]
        unavailable: bool,
    },
    /// Do not disturb on or off.
    Dnd { user: String, state: OnOff },
    /// Show forwarding (everyone's, or one user's).
    Show { user: Option<String> },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
pub enum SpeedDialCommand {
    /// Map a short code to a target; for one user with --user, else for everyone.
    Add {
        code: String,
        target: String,
        #[arg(long)]
        user: Option<String>,
    },
    Remove {
        code: String,
        #[arg(long)]
        user: Option<String>,
    },
    List,
}

#[derive(Subcommand)]
pub enum DialPlanCommand {
    /// Add a rule (at the end, or at --position, counting from 1 among the stored rules).
    Add {
        /// Digit mask: X any digit, N 2-9, Z 1-9, [1-5], `.` one or more, `!` zero or more.
        #[arg(long = "match", conflicts_with = "regex")]
        mask: Option<String>,
        #[arg(long)]
        regex: Option<String>,
        /// rewrite, local, remote or reject.
        #[arg(long)]
        action: RuleAction,
        #[arg(long, default_value_t = 0)]
        strip: usize,
        #[arg(long, default_value = "")]
        prefix: String,
        /// SIP URI for `remote`; `${number}` is replaced by the rewritten number.
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        status: Option<u16>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        position: Option<usize>,
    },
    /// Remove stored rule number N (as `dialplan list` shows it).
    Remove {
        number: usize,
    },
    List,
}

/// Checks the changed settings as a whole, then writes them with `write`.
fn commit(
    cfg: &Config,
    store: &mut SqliteStore,
    changed: &PlanSettings,
    write: impl FnOnce(&mut SqliteStore) -> Result<(), String>,
) -> Result<(), String> {
    let users = store.users()?;
    cfg.build_plan(&users, changed)
        .map_err(|e| format!("refused: {e}"))?;
    write(store)?;
    crate::notify_daemon(cfg);
    Ok(())
}

fn open(cfg: &Config) -> Result<(SqliteStore, PlanSettings), String> {
    let store = SqliteStore::open(&cfg.db_path())?;
    let plan = store.plan()?;
    Ok((store, plan))
}

pub fn group(cfg: &Config, cmd: GroupCommand) -> Result<(), String> {
    let (mut store, mut plan) = open(cfg)?;
    let find = |plan: &PlanSettings, name: &str| -> Result<GroupSpec, String> {
        plan.groups
            .iter()
            .find(|g| g.name == name)
            .cloned()
            .or_else(|| cfg.group.iter().find(|g| g.name == name).cloned())
            .ok_or_else(|| format!("no group `{name}`"))
    };
    let (g, verb) = match cmd {
        GroupCommand::List => {
            let merged = PlanSettings::merged(&cfg.plan(), &plan);
            if merged.groups.is_empty() {
                println!("no groups: hedgewitch group add NAME --extension N --member USER ...");
            }
            for g in merged.groups {
                let members: Vec<String> = g
                    .members
                    .iter()
                    .map(|m| match m.ring_time() {
                        Some(t) => format!("{} ({t}s)", m.target()),
                        None => m.target().to_string(),
                    })
                    .collect();
                println!(
                    "{:<16} {:<6} {:<10} ring {}s, timeout {}, fallback {}: {}",
                    g.name,
                    g.extension.as_deref().unwrap_or("-"),
                    g.strategy.as_str(),
                    g.ring_time.unwrap_or(cfg.calls.ring_time),
                    g.timeout.map_or("none".to_string(), |t| format!("{t}s")),
                    g.fallback.as_deref().unwrap_or("none"),
                    members.join(", ")
                );
            }
            return Ok(());
        }
        GroupCommand::Remove { name } => {
            if !plan.groups.iter().any(|g| g.name == name) {
                return Err(if cfg.group.iter().any(|g| g.name == name) {
                    format!("group `{name}` is defined in the config file; remove it there")
                } else {
                    format!("no group `{name}`")
                });
            }
            plan.groups.retain(|g| g.name != name);
            let merged = PlanSettings::merged(&cfg.plan(), &plan);
            commit(cfg, &mut store, &merged, |s| {
                s.remove_group(&name).map(|_| ())
            })?;
            println!("removed group {name}");
            return Ok(());
        }
        GroupCommand::Add { name, opts } => {
            if plan.groups.iter().any(|g| g.name == name) {
                return Err(format!("group `{name}` exists; use `group set`"));
            }
            let mut g = GroupSpec {
                name,
                extension: None,
                strategy: Strategy::Parallel,
                members: vec![],
                ring_time: None,
                timeout: None,
                fallback: None,
            };
            apply(&mut g, opts);
            (g, "added")
        }
        GroupCommand::Set { name, opts } => {
            let mut g = find(&plan, &name)?;
            apply(&mut g, opts);
            (g, "changed")
        }
        GroupCommand::MemberAdd {
            name,
            target,
            ring_time,
        } => {
            let mut g = find(&plan, &name)?;
            g.members.push(match ring_time {
                Some(t) => MemberSpec::Detailed {
                    target,
                    ring_time: Some(t),
                },
                None => MemberSpec::Target(target),
            });
            (g, "changed")
        }
        GroupCommand::MemberRemove { name, target } => {
            let mut g = find(&plan, &name)?;
            let before = g.members.len();
            g.members.retain(|m| m.target() != target);
            if g.members.len() == before {
                return Err(format!("`{target}` is not a member of `{name}`"));
            }
            (g, "changed")
        }
    };
    plan.groups.retain(|x| x.name != g.name);
    plan.groups.push(g.clone());
    let merged = PlanSettings::merged(&cfg.plan(), &plan);
    commit(cfg, &mut store, &merged, |s| s.put_group(&g))?;
    println!("{verb} group {}", g.name);
    Ok(())
}

fn apply(g: &mut GroupSpec, o: GroupOpts) {
    if o.extension.is_some() {
        g.extension = o.extension;
    }
    if let Some(s) = o.strategy {
        g.strategy = s;
    }
    if o.ring_time.is_some() {
        g.ring_time = o.ring_time;
    }
    if o.timeout.is_some() {
        g.timeout = o.timeout;
    }
    if o.fallback.is_some() {
        g.fallback = o.fallback;
    }
    if !o.members.is_empty() {
        g.members = o.members.into_iter().map(MemberSpec::Target).collect();
    }
}

fn current_forward(cfg: &Config, plan: &PlanSettings, user: &str) -> ForwardSpec {
    plan.forwards
        .iter()
        .chain(&cfg.forward)
        .find(|f| f.user == user)
        .cloned()
        .unwrap_or_else(|| ForwardSpec {
            user: user.to_string(),
            ..Default::default()
        })
}

pub fn forward(cfg: &Config, cmd: ForwardCommand) -> Result<(), String> {
    let (mut store, mut plan) = open(cfg)?;
    let f = match cmd {
        ForwardCommand::Show { user } => {
            let merged = PlanSettings::merged(&cfg.plan(), &plan);
            let list: Vec<&ForwardSpec> = merged
                .forwards
                .iter()
                .filter(|f| user.as_ref().is_none_or(|u| *u == f.user))
                .collect();
            if list.is_empty() {
                println!("no forwarding set");
            }
            for f in list {
                println!("{}", describe(f, cfg));
            }
            return Ok(());
        }
        ForwardCommand::Set {
            user,
            always,
            busy,
            no_answer,
            after,
            unavailable,
        } => {
            let mut f = current_forward(cfg, &plan, &user);
            for (slot, v) in [
                (&mut f.always, always),
                (&mut f.busy, busy),
                (&mut f.no_answer, no_answer),
                (&mut f.unavailable, unavailable),
            ] {
                if v.is_some() {
                    *slot = v;
                }
            }
            if after.is_some() {
                f.no_answer_after = after;
            }
            f
        }
        ForwardCommand::Clear {
            user,
            always,
            busy,
            no_answer,
            unavailable,
        } => {
            let mut f = current_forward(cfg, &plan, &user);
            let all = !(always || busy || no_answer || unavailable);
            if all || always {
                f.always = None;
            }
            if all || busy {
                f.busy = None;
            }
            if all || no_answer {
                f.no_answer = None;
                f.no_answer_after = None;
            }
            if all || unavailable {
                f.unavailable = None;
            }
            if all {
                f.dnd = false;
            }
            f
        }
        ForwardCommand::Dnd { user, state } => {
            let mut f = current_forward(cfg, &plan, &user);
            f.dnd = matches!(state, OnOff::On);
            f
        }
    };
    if store.user(&f.user)?.is_none() {
        return Err(format!("no user `{}`", f.user));
    }
    plan.forwards.retain(|x| x.user != f.user);
    plan.forwards.push(f.clone());
    let merged = PlanSettings::merged(&cfg.plan(), &plan);
    commit(cfg, &mut store, &merged, |s| s.put_forward(&f))?;
    println!("{}", describe(&f, cfg));
    Ok(())
}

fn describe(f: &ForwardSpec, cfg: &Config) -> String {
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

pub fn speed_dial(cfg: &Config, cmd: SpeedDialCommand) -> Result<(), String> {
    let (mut store, mut plan) = open(cfg)?;
    match cmd {
        SpeedDialCommand::List => {
            let merged = PlanSettings::merged(&cfg.plan(), &plan);
            if merged.speed_dials.is_empty() {
                println!("no speed dials");
            }
            for d in merged.speed_dials {
                println!(
                    "{:<8} {:<16} {}",
                    d.code,
                    d.user.as_deref().unwrap_or("(everyone)"),
                    d.target
                );
            }
        }
        SpeedDialCommand::Add { code, target, user } => {
            if code.is_empty()
                || !code
                    .bytes()
                    .all(|c| c.is_ascii_digit() || c == b'*' || c == b'#')
            {
                return Err(format!("speed dial code `{code}` must be digits, * or #"));
            }
            let d = SpeedDialSpec { code, target, user };
            plan.speed_dials
                .retain(|x| !(x.code == d.code && x.user == d.user));
            plan.speed_dials.push(d.clone());
            let merged = PlanSettings::merged(&cfg.plan(), &plan);
            commit(cfg, &mut store, &merged, |s| s.put_speed_dial(&d))?;
            println!("speed dial {} -> {}", d.code, d.target);
        }
        SpeedDialCommand::Remove { code, user } => {
            if !store.remove_speed_dial(user.as_deref(), &code)? {
                return Err(format!("no stored speed dial `{code}`"));
            }
            crate::notify_daemon(cfg);
            println!("removed speed dial {code}");
        }
    }
    Ok(())
}

pub fn dial_plan(cfg: &Config, cmd: DialPlanCommand) -> Result<(), String> {
    let (mut store, mut plan) = open(cfg)?;
    match cmd {
        DialPlanCommand::List => {
            if cfg.dialplan.is_empty() && plan.rules.is_empty() {
                println!("no rules: numbers reach users, extensions and groups only");
            }
            for (i, r) in cfg.dialplan.iter().enumerate() {
                println!("file {:>3}  {}", i + 1, rule_text(r));
            }
            for (i, r) in plan.rules.iter().enumerate() {
                println!("     {:>3}  {}", i + 1, rule_text(r));
            }
        }
        DialPlanCommand::Add {
            mask,
            regex,
            action,
            strip,
            prefix,
            target,
            status,
            reason,
            position,
        } => {
            let r = RuleSpec {
                mask,
                regex,
                action,
                strip,
                prefix,
                target,
                status,
                reason,
            };
            let at = position
                .map(|p| p.saturating_sub(1).min(plan.rules.len()))
                .unwrap_or(plan.rules.len());
            plan.rules.insert(at, r.clone());
            let rules = plan.rules.clone();
            let merged = PlanSettings::merged(&cfg.plan(), &plan);
            commit(cfg, &mut store, &merged, |s| s.set_rules(&rules))?;
            println!("rule {} added: {}", at + 1, rule_text(&r));
        }
        DialPlanCommand::Remove { number } => {
            if number == 0 || number > plan.rules.len() {
                return Err(format!(
                    "no stored rule {number} (there are {})",
                    plan.rules.len()
                ));
            }
            plan.rules.remove(number - 1);
            let rules = plan.rules.clone();
            store.set_rules(&rules)?;
            crate::notify_daemon(cfg);
            println!("rule {number} removed");
        }
    }
    Ok(())
}

fn rule_text(r: &RuleSpec) -> String {
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
