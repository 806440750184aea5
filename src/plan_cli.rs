//! `hedgewitch group | forward | speeddial | dialplan`: the phone-system settings from the
//! command line: arguments in, the change made by the library's `PhoneAdmin` (which checks it
//! against the whole plan), the outcome printed, the running server asked to reload.

use clap::{Args, Subcommand};
use hedgewitch_server::config::Config;
use hedgewitch_server::phone_admin::{describe_forward, describe_rule, PhoneAdmin};
use hedgewitch_server::plan::settings::{
    ForwardSpec, GroupSpec, MemberSpec, RuleAction, RuleSpec, SpeedDialSpec, Strategy,
};

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
        /// rewrite, local, remote, provider or reject.
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
        /// For `provider`: the providers to try, in order (repeat, or separate by commas).
        #[arg(long = "provider", value_delimiter = ',')]
        providers: Vec<String>,
        #[arg(long)]
        position: Option<usize>,
    },
    /// Remove stored rule number N (as `dialplan list` shows it).
    Remove {
        number: usize,
    },
    List,
}

pub fn group(cfg: &Config, cmd: GroupCommand) -> Result<(), String> {
    let mut admin = PhoneAdmin::open(cfg)?;
    let (g, verb) = match cmd {
        GroupCommand::List => {
            let merged = admin.merged();
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
            admin.remove_group(&name)?;
            crate::notify_daemon(cfg);
            println!("removed group {name}");
            return Ok(());
        }
        GroupCommand::Add { name, opts } => {
            if admin.has_stored_group(&name) {
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
            let mut g = admin.group(&name)?;
            apply(&mut g, opts);
            (g, "changed")
        }
        GroupCommand::MemberAdd {
            name,
            target,
            ring_time,
        } => {
            let mut g = admin.group(&name)?;
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
            let mut g = admin.group(&name)?;
            let before = g.members.len();
            g.members.retain(|m| m.target() != target);
            if g.members.len() == before {
                return Err(format!("`{target}` is not a member of `{name}`"));
            }
            (g, "changed")
        }
    };
    let name = g.name.clone();
    admin.put_group(g)?;
    crate::notify_daemon(cfg);
    println!("{verb} group {name}");
    Ok(())
}

/// The options given on the command line, over a group's current settings.
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

pub fn forward(cfg: &Config, cmd: ForwardCommand) -> Result<(), String> {
    let mut admin = PhoneAdmin::open(cfg)?;
    let f = match cmd {
        ForwardCommand::Show { user } => {
            let merged = admin.merged();
            let list: Vec<&ForwardSpec> = merged
                .forwards
                .iter()
                .filter(|f| user.as_ref().is_none_or(|u| *u == f.user))
                .collect();
            if list.is_empty() {
                println!("no forwarding set");
            }
            for f in list {
                println!("{}", describe_forward(f, cfg));
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
            let mut f = admin.forward(&user);
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
            let mut f = admin.forward(&user);
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
            let mut f = admin.forward(&user);
            f.dnd = matches!(state, OnOff::On);
            f
        }
    };
    let text = describe_forward(&f, cfg);
    admin.put_forward(f)?;
    crate::notify_daemon(cfg);
    println!("{text}");
    Ok(())
}

pub fn speed_dial(cfg: &Config, cmd: SpeedDialCommand) -> Result<(), String> {
    let mut admin = PhoneAdmin::open(cfg)?;
    match cmd {
        SpeedDialCommand::List => {
            let merged = admin.merged();
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
            let text = format!("speed dial {code} -> {target}");
            admin.put_speed_dial(SpeedDialSpec { code, target, user })?;
            crate::notify_daemon(cfg);
            println!("{text}");
        }
        SpeedDialCommand::Remove { code, user } => {
            admin.remove_speed_dial(user.as_deref(), &code)?;
            crate::notify_daemon(cfg);
            println!("removed speed dial {code}");
        }
    }
    Ok(())
}

pub fn dial_plan(cfg: &Config, cmd: DialPlanCommand) -> Result<(), String> {
    let mut admin = PhoneAdmin::open(cfg)?;
    match cmd {
        DialPlanCommand::List => {
            if cfg.dialplan.is_empty() && admin.rules().is_empty() {
                println!("no rules: numbers reach users, extensions and groups only");
            }
            for (i, r) in cfg.dialplan.iter().enumerate() {
                println!("file {:>3}  {}", i + 1, describe_rule(r));
            }
            for (i, r) in admin.rules().iter().enumerate() {
                println!("     {:>3}  {}", i + 1, describe_rule(r));
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
            providers,
            position,
        } => {
            let r = RuleSpec {
                providers,
                mask,
                regex,
                action,
                strip,
                prefix,
                target,
                status,
                reason,
            };
            let text = describe_rule(&r);
            let at = admin.add_rule(r, position)?;
            crate::notify_daemon(cfg);
            println!("rule {at} added: {text}");
        }
        DialPlanCommand::Remove { number } => {
            admin.remove_rule(number)?;
            crate::notify_daemon(cfg);
            println!("rule {number} removed");
        }
    }
    Ok(())
}
