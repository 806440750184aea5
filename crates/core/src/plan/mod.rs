//! The dial plan of a home or office: who and what a dialled string reaches. Users by name or
//! extension, ring groups, speed dials, dial-plan rules and the feature codes phones dial to
//! change their own forwarding. Built from the config file and the store, checked as a whole
//! (a clash or a group loop is an error naming both sides), then swapped in at once on
//! reload. Pure data and lookups: the proxy decides what to do with the answers.

pub mod mask;
pub mod settings;

use crate::numbers::{NumberCall, NumberSettings};
use crate::User;
use regex_lite::Regex;
use settings::{
    CallSettings, FeatureCodes, ForwardSpec, GroupSpec, Numbering, PlanSettings, RuleAction,
    RuleSpec, Strategy,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Something local that can be called.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A user, by name.
    User(String),
    /// A ring group, by name.
    Group(String),
}

impl Target {
    /// The user's or group's name.
    pub fn name(&self) -> &str {
        match self {
            Target::User(n) | Target::Group(n) => n,
        }
    }
}

/// What a dialled string (or a configured target) means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dialed {
    /// A local user or group.
    Local(Target),
    /// A SIP URI outside the domain.
    Remote(String),
    /// A telephone number, out through a provider (or ENUM).
    Number(Box<NumberCall>),
    /// Refuse with this status and reason (a `reject` rule, or a feature code without the
    /// number it needs).
    Reject(u16, String),
    /// A feature code: the caller changes their own settings.
    Feature(FeatureRequest),
    /// Nothing in the plan matches.
    NotFound,
}

/// The kinds of call forwarding, one per target of a `ForwardSpec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardKind {
    /// Every call.
    Always,
    /// Calls when the phones answer busy, or the user is in do-not-disturb.
    Busy,
    /// Calls nobody answers in time.
    NoAnswer,
    /// Calls when the user has no registered phone.
    Unavailable,
}

impl ForwardKind {
    /// How the kind reads in a sentence (`all calls`, `calls when busy`...).
    pub fn describe(self) -> &'static str {
        match self {
            ForwardKind::Always => "all calls",
            ForwardKind::Busy => "calls when busy",
            ForwardKind::NoAnswer => "unanswered calls",
            ForwardKind::Unavailable => "calls when no phone is registered",
        }
    }

    /// The field of `f` that holds this kind's target.
    pub fn slot(self, f: &mut ForwardSpec) -> &mut Option<String> {
        match self {
            ForwardKind::Always => &mut f.always,
            ForwardKind::Busy => &mut f.busy,
            ForwardKind::NoAnswer => &mut f.no_answer,
            ForwardKind::Unavailable => &mut f.unavailable,
        }
    }
}

/// A change a user asks for by dialling a feature code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeatureRequest {
    /// Set (with a target) or clear (None) one kind of forwarding.
    Forward(ForwardKind, Option<String>),
    /// Turn do-not-disturb on (true) or off (false).
    Dnd(bool),
    /// Answer, on one's own phones, a call ringing at this user or extension.
    Pickup(String),
}

/// What the plan keeps per user: small, since a domain may have 100,000 of them (the name
/// is the map's key; the extension is in `extensions`; forwarding only when set).
#[derive(Clone, Debug)]
struct UserEntry {
    outside: bool,
    external: bool,
    forward: Option<Box<ForwardSpec>>,
}

/// A ring group's member as the plan keeps it.
#[derive(Clone, Debug)]
pub struct Member {
    /// What it rings: a user, extension, group, number or SIP URI.
    pub target: String,
    /// How long it rings in a sequential or rotating group: its own ring time, else the
    /// group's, else `calls.ring_time`; at least a second.
    pub ring_time: Duration,
}

/// A ring group as the plan keeps it.
#[derive(Clone, Debug)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// The extension that reaches it, if any.
    pub extension: Option<String>,
    /// How it rings its members.
    pub strategy: Strategy,
    /// Its members, in order.
    pub members: Vec<Member>,
    /// How long the whole group rings (at least a second); None: until every member was tried.
    pub timeout: Option<Duration>,
    /// Where a call goes when no member answers or they are busy.
    pub fallback: Option<String>,
}

#[derive(Debug)]
struct Rule {
    re: Regex,
    spec: RuleSpec,
}

/// The dial plan, built and checked as a whole: users, groups, extensions, speed dials,
/// rules and feature codes.
#[derive(Debug)]
pub struct Directory {
    domain: String,
    users: HashMap<String, UserEntry>,
    groups: HashMap<String, Group>,
    extensions: HashMap<String, Target>,
    /// (user or None for everyone, code) -> target.
    speed: HashMap<(Option<String>, String), String>,
    rules: Vec<Rule>,
    features: FeatureCodes,
    /// How numbers are dialled, and the emergency numbers.
    numbers: NumberSettings,
    /// The call-handling settings it was built with (ring times, redirect and forward limits,
    /// local-only users).
    pub calls: CallSettings,
}

/// How deep speed dials and targets may refer to one another.
const MAX_DEPTH: usize = 8;

impl Directory {
    /// Checks and indexes everything. Errors (clashes, bad masks, group loops) fail the whole
    /// build with every problem listed; dangling references are warnings, since a user may be
    /// removed after a group naming them was made.
    pub fn build(
        domain: &str,
        users: &[User],
        numbering: &Numbering,
        features: &FeatureCodes,
        calls: &CallSettings,
        settings: &PlanSettings,
    ) -> Result<(Directory, Vec<String>), String> {
        let mut errors = vec![];
        let mut warnings = vec![];
        let range = parse_range(numbering, &mut errors);
        let check_ext = |owner: &str, ext: &str, errors: &mut Vec<String>| {
            if let Some(len) = numbering.extension_length {
                if ext.len() != len || !ext.bytes().all(|b| b.is_ascii_digit()) {
                    errors.push(format!(
                        "{owner}: extension `{ext}` is not {len} digits (numbering.extension_length)"
                    ));
                }
            }
            if let Some((lo, hi)) = range {
                match ext.parse::<u64>() {
                    Ok(n) if ext.bytes().all(|b| b.is_ascii_digit()) && (lo..=hi).contains(&n) => {}
                    _ => errors.push(format!(
                        "{owner}: extension `{ext}` is outside {lo}-{hi} (numbering.extensions)"
                    )),
                }
            }
        };

        // Names and extensions share one namespace: each string reaches one thing.
        let mut names: HashMap<String, String> = HashMap::new();
        let mut claim = |key: &str, owner: String, errors: &mut Vec<String>| {
            if let Some(other) = names.get(key) {
                errors.push(format!("`{key}` is both {other} and {owner}"));
            } else {
                names.insert(key.to_string(), owner);
            }
        };
        let local_only: HashSet<&str> = calls.local_only.iter().map(String::as_str).collect();
        let mut dir = Directory {
            domain: domain.to_ascii_lowercase(),
            users: HashMap::new(),
            groups: HashMap::new(),
            extensions: HashMap::new(),
            speed: HashMap::new(),
            rules: vec![],
            features: features.clone(),
            numbers: NumberSettings::default(),
            calls: calls.clone(),
        };
        // A user's or group's name and extension go into the namespace and the index.
        let mut enter = |what: &str,
                         target: Target,
                         ext: Option<&String>,
                         extensions: &mut HashMap<String, Target>,
                         errors: &mut Vec<String>| {
            let owner = format!("{what} `{}`", target.name());
            claim(target.name(), owner.clone(), errors);
            if let Some(e) = ext {
                check_ext(&owner, e, errors);
                claim(e, format!("the extension of {owner}"), errors);
                extensions.insert(e.clone(), target);
            }
        };
        for u in users {
            let t = Target::User(u.name.clone());
            enter(
                "user",
                t,
                u.extension.as_ref(),
                &mut dir.extensions,
                &mut errors,
            );
            dir.users.insert(
                u.name.clone(),
                UserEntry {
                    outside: u.outside && !local_only.contains(u.name.as_str()),
                    external: u.external,
                    forward: None,
                },
            );
        }
        for name in &calls.local_only {
            if !dir.users.contains_key(name) {
                warnings.push(format!("calls.local_only: no user `{name}`"));
            }
        }
        for g in &settings.groups {
            let t = Target::Group(g.name.clone());
            enter(
                "group",
                t,
                g.extension.as_ref(),
                &mut dir.extensions,
                &mut errors,
            );
            dir.groups.insert(g.name.clone(), group(g, calls));
        }
        for s in &settings.speed_dials {
            match &s.user {
                Some(u) if !dir.users.contains_key(u) => {
                    warnings.push(format!("speed dial `{}`: no user `{u}`", s.code));
                }
                _ => {}
            }
            if let Some(other) = names.get(&s.code) {
                errors.push(format!("speed dial `{}` is also {other}", s.code));
            }
            if dir
                .speed
                .insert((s.user.clone(), s.code.clone()), s.target.clone())
                .is_some()
            {
                errors.push(format!("speed dial `{}` is defined twice", s.code));
            }
        }
        let codes = feature_list(features);
        for (i, (_, code)) in codes.iter().enumerate() {
            if !code.starts_with(['*', '#']) {
                errors.push(format!("feature code `{code}` must start with `*` or `#`"));
            }
            if codes[..i].iter().any(|(_, c)| c == code) {
                errors.push(format!("feature code `{code}` is used twice"));
            }
            for (key, owner) in &names {
                if key.starts_with(code.as_str()) {
                    errors.push(format!(
                        "{owner} (`{key}`) starts with feature code `{code}`"
                    ));
                }
            }
        }
        for (i, r) in settings.rules.iter().enumerate() {
            match rule(r) {
                Ok(r) => dir.rules.push(r),
                Err(e) => errors.push(format!("dial plan rule {}: {e}", i + 1)),
            }
        }
        for f in &settings.forwards {
            match dir.users.get_mut(&f.user) {
                Some(u) => u.forward = (!f.is_empty()).then(|| Box::new(f.clone())),
                None => warnings.push(format!("forwarding for `{}`: no such user", f.user)),
            }
        }
        // Group members and every target must lead somewhere; groups must not contain
        // themselves.
        for g in dir.groups.values() {
            for m in &g.members {
                if dir.target(&m.target, None) == Dialed::NotFound {
                    warnings.push(format!(
                        "group `{}`: member `{}` reaches nobody",
                        g.name, m.target
                    ));
                }
            }
            if let Some(path) = dir.group_cycle(&g.name) {
                errors.push(format!("group loop: {}", path.join(" -> ")));
            }
        }
        for (name, u) in &dir.users {
            let Some(f) = &u.forward else { continue };
            for t in [&f.always, &f.busy, &f.no_answer, &f.unavailable]
                .into_iter()
                .flatten()
            {
                if dir.target(t, Some(name)) == Dialed::NotFound {
                    warnings.push(format!("forwarding of `{name}`: `{t}` reaches nobody"));
                }
            }
        }
        errors.sort();
        errors.dedup();
        if errors.is_empty() {
            Ok((dir, warnings))
        } else {
            Err(errors.join("; "))
        }
    }

    /// A plan that reaches nobody.
    pub fn empty(domain: &str) -> Directory {
        Directory {
            domain: domain.to_ascii_lowercase(),
            users: HashMap::new(),
            groups: HashMap::new(),
            extensions: HashMap::new(),
            speed: HashMap::new(),
            rules: vec![],
            features: FeatureCodes::default(),
            numbers: NumberSettings::default(),
            calls: CallSettings::default(),
        }
    }

    /// Takes the `[numbers]` settings: how numbers are dialled, the emergency numbers.
    pub fn set_numbers(&mut self, numbers: NumberSettings) {
        self.numbers = numbers;
    }

    /// Whether `name` is a user of the plan.
    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// A user's forwarding (empty when none is set).
    pub fn forward(&self, user: &str) -> ForwardSpec {
        match self.users.get(user).and_then(|u| u.forward.as_deref()) {
            Some(f) => f.clone(),
            None => ForwardSpec {
                user: user.to_string(),
                ..Default::default()
            },
        }
    }

    /// Whether the user is in do-not-disturb.
    pub fn is_dnd(&self, user: &str) -> bool {
        self.users
            .get(user)
            .and_then(|u| u.forward.as_deref())
            .is_some_and(|f| f.dnd)
    }

    /// A ring group by name.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// Whether the user may call outside the domain: their account allows it and
    /// `calls.local_only` does not list them.
    pub fn may_call_outside(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.outside)
    }

    /// Whether callers from other domains may reach this user.
    pub fn accepts_external(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.external)
    }

    /// Replaces a user's forwarding (a feature code was dialled).
    pub fn set_forward(&mut self, spec: ForwardSpec) {
        if let Some(u) = self.users.get_mut(&spec.user) {
            u.forward = (!spec.is_empty()).then(|| Box::new(spec));
        }
    }

    /// A user, group or extension by its exact name or number.
    pub fn lookup(&self, key: &str) -> Option<Target> {
        if self.users.contains_key(key) {
            return Some(Target::User(key.to_string()));
        }
        if self.groups.contains_key(key) {
            return Some(Target::Group(key.to_string()));
        }
        self.extensions.get(key).cloned()
    }

    /// What the user part of a Request-URI in our domain means. `caller` is the
    /// authenticated local user, if any: only they get feature codes, speed dials and the
    /// rules that lead outside.
    pub fn dial(&self, dialed: &str, caller: Option<&str>) -> Dialed {
        if caller.is_some() {
            // Before anything else: no rule, speed dial or extension may take it.
            if let Some(e) = self.numbers.emergency(dialed) {
                return Dialed::Number(Box::new(NumberCall {
                    dialled: e.to_string(),
                    e164: None,
                    providers: vec![],
                    emergency: true,
                }));
            }
            if let Some(f) = self.feature(dialed) {
                return f;
            }
        }
        self.resolve(dialed, caller, 0)
    }

    /// A configured target (a forwarding, a group member, a fallback, a speed dial): a SIP
    /// URI, or a string dialled as `caller` would.
    pub fn target(&self, s: &str, caller: Option<&str>) -> Dialed {
        self.target_at(s, caller, 0)
    }

    fn target_at(&self, s: &str, caller: Option<&str>, depth: usize) -> Dialed {
        if depth > MAX_DEPTH {
            return Dialed::NotFound;
        }
        let lower = s.get(..5).map(str::to_ascii_lowercase).unwrap_or_default();
        if lower.starts_with("sip:") || lower.starts_with("sips:") {
            return match sip::uri::Uri::parse(s) {
                Ok(u) if self.is_domain(&u.host) => match u.user_unescaped() {
                    Some(user) => self.resolve(&user, caller, depth + 1),
                    None => Dialed::NotFound,
                },
                Ok(_) => Dialed::Remote(s.to_string()),
                Err(_) => Dialed::NotFound,
            };
        }
        self.resolve(s, caller, depth + 1)
    }

    fn resolve(&self, dialed: &str, caller: Option<&str>, depth: usize) -> Dialed {
        if let Some(c) = caller {
            let code = dialed.to_string();
            if let Some(t) = self
                .speed
                .get(&(Some(c.to_string()), code.clone()))
                .or_else(|| self.speed.get(&(None, code)))
            {
                return self.target_at(t, caller, depth + 1);
            }
        }
        if let Some(t) = self.lookup(dialed) {
            return Dialed::Local(t);
        }
        let mut number = dialed.to_string();
        for r in &self.rules {
            if !r.re.is_match(&number) {
                continue;
            }
            let rewritten = format!(
                "{}{}",
                r.spec.prefix,
                number.get(r.spec.strip.min(number.len())..).unwrap_or("")
            );
            match r.spec.action {
                RuleAction::Rewrite => number = rewritten,
                RuleAction::Local => {
                    return self
                        .lookup(&rewritten)
                        .map_or(Dialed::NotFound, Dialed::Local)
                }
                // Calls from outside never leave through us (no open relay).
                RuleAction::Remote if caller.is_none() => continue,
                RuleAction::Remote => {
                    let t = r.spec.target.as_deref().unwrap_or("");
                    return Dialed::Remote(t.replace("${number}", &rewritten));
                }
                RuleAction::Provider if caller.is_none() => continue,
                RuleAction::Provider => {
                    return Dialed::Number(Box::new(NumberCall {
                        e164: self.numbers.normalise(&rewritten),
                        dialled: rewritten,
                        providers: r.spec.providers.clone(),
                        emergency: false,
                    }))
                }
                RuleAction::Reject => {
                    return Dialed::Reject(
                        r.spec.status.unwrap_or(403),
                        r.spec.reason.clone().unwrap_or_else(|| "Forbidden".into()),
                    )
                }
            }
        }
        if number != dialed {
            if let Some(t) = self.lookup(&number) {
                return Dialed::Local(t);
            }
        }
        // A telephone number no rule routed: out through the providers, in their order.
        match (caller, self.numbers.normalise(&number)) {
            (Some(_), Some(e164)) => Dialed::Number(Box::new(NumberCall {
                dialled: number,
                e164: Some(e164),
                providers: vec![],
                emergency: false,
            })),
            _ => Dialed::NotFound,
        }
    }

    /// The feature code at the start of `dialed` (the longest that fits).
    fn feature(&self, dialed: &str) -> Option<Dialed> {
        let (kind, code) = feature_list(&self.features)
            .into_iter()
            .filter(|(k, c)| {
                if k.takes_target() {
                    dialed.starts_with(c.as_str())
                } else {
                    dialed == c
                }
            })
            .max_by_key(|(_, c)| c.len())?;
        let rest = &dialed[code.len()..];
        Some(match kind {
            Code::Set(_) if rest.is_empty() => {
                Dialed::Reject(484, format!("Address Incomplete: dial {code} and a number"))
            }
            Code::Set(k) => Dialed::Feature(FeatureRequest::Forward(k, Some(rest.to_string()))),
            Code::Clear(k) => Dialed::Feature(FeatureRequest::Forward(k, None)),
            Code::Dnd(on) => Dialed::Feature(FeatureRequest::Dnd(on)),
            Code::Pickup if rest.is_empty() => Dialed::Reject(
                484,
                format!("Address Incomplete: dial {code} and an extension"),
            ),
            Code::Pickup => Dialed::Feature(FeatureRequest::Pickup(rest.to_string())),
        })
    }

    /// A chain of groups that comes back to `start`, if any.
    fn group_cycle(&self, start: &str) -> Option<Vec<String>> {
        let mut path = vec![start.to_string()];
        self.cycle_from(start, start, &mut path, 0).then_some(path)
    }

    fn cycle_from(&self, start: &str, at: &str, path: &mut Vec<String>, depth: usize) -> bool {
        if depth > 32 {
            return false;
        }
        let Some(g) = self.groups.get(at) else {
            return false;
        };
        for m in &g.members {
            if let Dialed::Local(Target::Group(next)) = self.target(&m.target, None) {
                path.push(next.clone());
                if next == start || self.cycle_from(start, &next, path, depth + 1) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }

    fn is_domain(&self, host: &sip::uri::Host<'_>) -> bool {
        match host {
            sip::uri::Host::Name(n) => n.eq_ignore_ascii_case(&self.domain),
            sip::uri::Host::Ip(ip) => ip.to_string() == self.domain,
        }
    }

    /// The feature codes phones dial.
    pub fn features(&self) -> &FeatureCodes {
        &self.features
    }
}

#[derive(Clone, Copy)]
enum Code {
    Set(ForwardKind),
    Clear(ForwardKind),
    Dnd(bool),
    Pickup,
}

impl Code {
    fn takes_target(self) -> bool {
        matches!(self, Code::Set(_) | Code::Pickup)
    }
}

fn feature_list(f: &FeatureCodes) -> Vec<(Code, String)> {
    use ForwardKind::*;
    [
        (Code::Set(Always), &f.forward_all),
        (Code::Clear(Always), &f.forward_all_off),
        (Code::Set(Busy), &f.forward_busy),
        (Code::Clear(Busy), &f.forward_busy_off),
        (Code::Set(NoAnswer), &f.forward_no_answer),
        (Code::Clear(NoAnswer), &f.forward_no_answer_off),
        (Code::Set(Unavailable), &f.forward_unavailable),
        (Code::Clear(Unavailable), &f.forward_unavailable_off),
        (Code::Dnd(true), &f.dnd_on),
        (Code::Dnd(false), &f.dnd_off),
        (Code::Pickup, &f.pickup),
    ]
    .into_iter()
    .filter(|(_, c)| !c.is_empty())
    .map(|(k, c)| (k, c.clone()))
    .collect()
}

fn group(g: &GroupSpec, calls: &CallSettings) -> Group {
    let ring = g.ring_time.unwrap_or(calls.ring_time);
    Group {
        name: g.name.clone(),
        extension: g.extension.clone(),
        strategy: g.strategy,
        members: g
            .members
            .iter()
            .map(|m| Member {
                target: m.target().to_string(),
                ring_time: Duration::from_secs(u64::from(m.ring_time().unwrap_or(ring).max(1))),
            })
            .collect(),
        timeout: g.timeout.map(|t| Duration::from_secs(u64::from(t.max(1)))),
        fallback: g.fallback.clone(),
    }
}

fn rule(r: &RuleSpec) -> Result<Rule, String> {
    let pattern = match (&r.mask, &r.regex) {
        (Some(m), None) => mask::to_regex(m)?,
        (None, Some(re)) => re.clone(),
        _ => return Err("give exactly one of `match` (a digit mask) and `regex`".into()),
    };
    let re = Regex::new(&pattern).map_err(|e| format!("bad pattern `{pattern}`: {e}"))?;
    match r.action {
        RuleAction::Remote => {
            let t = r.target.as_deref().unwrap_or("");
            if !(t.starts_with("sip:") || t.starts_with("sips:")) {
                return Err(
                    "action `remote` needs a `target` SIP URI (`${number}` is replaced)".into(),
                );
            }
        }
        RuleAction::Provider => {
            if r.providers.is_empty() {
                return Err(
                    "action `provider` needs `providers`, the providers to try in order".into(),
                );
            }
        }
        RuleAction::Reject => {
            if !r.status.is_some_and(|s| (400..700).contains(&s)) {
                return Err("action `reject` needs a `status` from 400 to 699".into());
            }
        }
        RuleAction::Rewrite | RuleAction::Local => {}
    }
    if r.reason
        .as_deref()
        .is_some_and(|s| s.contains(['\r', '\n']))
    {
        return Err("`reason` must be one line".into());
    }
    Ok(Rule {
        re,
        spec: r.clone(),
    })
}

fn parse_range(n: &Numbering, errors: &mut Vec<String>) -> Option<(u64, u64)> {
    let s = n.extensions.as_deref()?;
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    match parsed {
        Some((lo, hi)) if lo <= hi => {
            if let Some(len) = n.extension_length {
                if lo.to_string().len() > len || hi.to_string().len() > len {
                    errors.push(format!(
                        "numbering: the range {s} does not fit extension_length {len}"
                    ));
                }
            }
            Some((lo, hi))
        }
        _ => {
            errors.push(format!(
                "numbering.extensions: `{s}` is not a range such as \"100-999\""
            ));
            None
        }
    }
}

/// Checks one extension against the numbering plan (for the CLI, before it writes).
pub fn check_extension(n: &Numbering, ext: &str) -> Result<(), String> {
    let mut errors = vec![];
    let range = parse_range(n, &mut errors);
    if let Some(len) = n.extension_length {
        if ext.len() != len || !ext.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(format!("extension `{ext}` is not {len} digits"));
        }
    }
    if let Some((lo, hi)) = range {
        if !ext.bytes().all(|b| b.is_ascii_digit())
            || !ext.parse::<u64>().is_ok_and(|v| (lo..=hi).contains(&v))
        {
            errors.push(format!("extension `{ext}` is outside {lo}-{hi}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests;
