//! The phone-system settings as written in the TOML file and kept in the store (as JSON):
//! ring groups, call forwarding, speed dials, dial-plan rules, feature codes, numbering.
//! The same types serve both, so a setting means the same thing wherever it was made.

use serde::{Deserialize, Serialize};

/// How a ring group rings its members.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every member at once; the first to answer wins, the others are cancelled.
    #[default]
    Parallel,
    /// One member after the other, in order, each for its ring time.
    Sequential,
    /// Like sequential, but each call starts one member further (round robin).
    Rotate,
}

impl Strategy {
    /// The name as the config writes it (`parallel`, `sequential`, `rotate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Parallel => "parallel",
            Strategy::Sequential => "sequential",
            Strategy::Rotate => "rotate",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "parallel" => Ok(Strategy::Parallel),
            "sequential" => Ok(Strategy::Sequential),
            "rotate" => Ok(Strategy::Rotate),
            _ => Err(format!(
                "unknown strategy `{s}` (parallel, sequential or rotate)"
            )),
        }
    }
}

/// A group member: a target alone, or with its own ring time.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MemberSpec {
    /// Just the target: a user, extension, group, number or SIP URI.
    Target(String),
    /// A target with its own ring time.
    Detailed {
        /// What the member rings.
        target: String,
        /// Seconds it rings in a sequential or rotating group; the group's when absent.
        ring_time: Option<u32>,
    },
}

impl MemberSpec {
    /// What the member rings.
    pub fn target(&self) -> &str {
        match self {
            MemberSpec::Target(t) | MemberSpec::Detailed { target: t, .. } => t,
        }
    }

    /// The member's own ring time in seconds, if it has one.
    pub fn ring_time(&self) -> Option<u32> {
        match self {
            MemberSpec::Target(_) => None,
            MemberSpec::Detailed { ring_time, .. } => *ring_time,
        }
    }
}

/// A ring group as configured.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group's name (it can be dialled like a user's).
    pub name: String,
    /// The extension that reaches the group, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// How members are rung; parallel when absent.
    #[serde(default)]
    pub strategy: Strategy,
    /// Users, extensions, other groups or SIP URIs.
    #[serde(default)]
    pub members: Vec<MemberSpec>,
    /// Seconds each member rings (sequential and rotate); default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_time: Option<u32>,
    /// Seconds before the whole group gives up; none means until every member was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// Where the call goes when nobody answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// One user's call forwarding. Every target is a user, extension, group, number or SIP URI.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    /// The user whose forwarding this is.
    pub user: String,
    /// Every call, without ringing the user's phones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<String>,
    /// When the phones answer busy (486, 600), or the user is in do-not-disturb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    /// When nobody answers within `no_answer_after` seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<String>,
    /// Seconds before `no_answer` applies; `calls.no_answer_after` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_answer_after: Option<u32>,
    /// When the user has no registered phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Do not disturb: calls are refused as busy (or go to the busy target).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dnd: bool,
}

impl ForwardSpec {
    /// Whether nothing is set: no target and no do-not-disturb.
    pub fn is_empty(&self) -> bool {
        self.always.is_none()
            && self.busy.is_none()
            && self.no_answer.is_none()
            && self.unavailable.is_none()
            && !self.dnd
    }
}

/// A speed dial: a short code that reaches a target.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SpeedDialSpec {
    /// What is dialled.
    pub code: String,
    /// What it reaches: a user, extension, group, number or SIP URI.
    pub target: String,
    /// Only for this user's calls; system-wide when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// What a dial-plan rule does with a number it matches.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Rewrite the number and go on with the next rules.
    Rewrite,
    /// Rewrite, then look the number up among local users, extensions and groups.
    Local,
    /// Send to a SIP URI made from `target` (`${number}` is replaced).
    Remote,
    /// Refuse with `status` and `reason`.
    Reject,
    /// Call out through `providers` (tried in order).
    Provider,
}

impl std::str::FromStr for RuleAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rewrite" => Ok(RuleAction::Rewrite),
            "local" => Ok(RuleAction::Local),
            "remote" => Ok(RuleAction::Remote),
            "reject" => Ok(RuleAction::Reject),
            "provider" => Ok(RuleAction::Provider),
            _ => Err(format!(
                "unknown action `{s}` (rewrite, local, remote, provider or reject)"
            )),
        }
    }
}

/// A dial-plan rule: a digit mask (`NXXX`, `+1NXXNXXXXXX`, `9.`) or a regular expression, and
/// what to do with a number it matches.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A digit mask (`match` in the file); give exactly one of it and `regex`.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// A regular expression, instead of a mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// What to do with a number that matches.
    pub action: RuleAction,
    /// Leading characters removed before `prefix` is added.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub strip: usize,
    /// Added in front of the number once `strip` characters are removed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// For `remote`: the SIP URI to send to (`${number}` is replaced by the rewritten number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For `reject`: the status code, 400 to 699.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For `reject`: the reason phrase (`Forbidden` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `provider`: the providers to try, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The codes dialled from a phone to change one's own settings. An empty string turns a
/// code off.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureCodes {
    /// Followed by the target: forward every call.
    pub forward_all: String,
    /// Turns forwarding of every call off.
    pub forward_all_off: String,
    /// Followed by the target: forward calls when busy.
    pub forward_busy: String,
    /// Turns forwarding when busy off.
    pub forward_busy_off: String,
    /// Followed by the target: forward unanswered calls.
    pub forward_no_answer: String,
    /// Turns forwarding of unanswered calls off.
    pub forward_no_answer_off: String,
    /// Followed by the target: forward calls when no phone is registered.
    pub forward_unavailable: String,
    /// Turns forwarding when no phone is registered off.
    pub forward_unavailable_off: String,
    /// Turns do-not-disturb on.
    pub dnd_on: String,
    /// Turns do-not-disturb off.
    pub dnd_off: String,
    /// Followed by an extension or user: answer the call ringing there (call pickup).
    pub pickup: String,
}

impl Default for FeatureCodes {
    fn default() -> Self {
        FeatureCodes {
            forward_all: "*72".into(),
            forward_all_off: "*73".into(),
            forward_busy: "*90".into(),
            forward_busy_off: "*91".into(),
            forward_no_answer: "*92".into(),
            forward_no_answer_off: "*93".into(),
            forward_unavailable: "*94".into(),
            forward_unavailable_off: "*95".into(),
            dnd_on: "*78".into(),
            dnd_off: "*79".into(),
            pickup: "*8".into(),
        }
    }
}

/// Which extensions are valid.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Numbering {
    /// An inclusive range such as `"100-999"`; extensions must be numbers within it.
    pub extensions: Option<String>,
    /// Every extension has exactly this many digits.
    pub extension_length: Option<usize>,
}

/// Call-handling settings that are not per group or per user.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CallSettings {
    /// Ring time before a no-answer forward, when the user set none (seconds).
    pub no_answer_after: u32,
    /// Ring time of each member of a sequential or rotating group, when the group sets none.
    pub ring_time: u32,
    /// How many 3xx redirects the proxy follows for one call.
    pub redirect_limit: u8,
    /// How many times one call may be forwarded.
    pub forward_limit: u8,
    /// Users who may call only inside the domain.
    pub local_only: Vec<String>,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            no_answer_after: 20,
            ring_time: 20,
            redirect_limit: 5,
            forward_limit: 5,
            local_only: vec![],
        }
    }
}

/// Everything that makes the phone system, from one source (the config file or the store).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanSettings {
    /// Ring groups.
    pub groups: Vec<GroupSpec>,
    /// Users' call forwarding, one entry per user.
    pub forwards: Vec<ForwardSpec>,
    /// Speed dials, system-wide or per user.
    pub speed_dials: Vec<SpeedDialSpec>,
    /// Dial-plan rules, tried in order.
    pub rules: Vec<RuleSpec>,
    /// The household's numbers mapped with `hedgewitch did` (the store's only).
    pub dids: Vec<crate::numbers::DidSpec>,
    /// Watchers of other domains users let see their presence, from `hedgewitch presence
    /// allow` (the store's only; the file's are `[presence.allow]`).
    pub presence_allow: Vec<PresenceAllow>,
}

/// One watcher of another domain a user lets see their presence.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PresenceAllow {
    /// The user watched.
    pub user: String,
    /// The watcher: `name@domain`, or `*@domain` for a whole domain.
    pub watcher: String,
}

impl PlanSettings {
    /// The file's settings with the store's on top: a group, a user's forwarding or a speed
    /// dial set from the CLI or a phone replaces the file's one of the same name; stored
    /// rules come after the file's.
    pub fn merged(file: &PlanSettings, stored: &PlanSettings) -> PlanSettings {
        let mut out = stored.clone();
        for g in &file.groups {
            if !out.groups.iter().any(|s| s.name == g.name) {
                out.groups.push(g.clone());
            }
        }
        for f in &file.forwards {
            if !out.forwards.iter().any(|s| s.user == f.user) {
                out.forwards.push(f.clone());
            }
        }
        for d in &file.speed_dials {
            if !out
                .speed_dials
                .iter()
                .any(|s| s.code == d.code && s.user == d.user)
            {
                out.speed_dials.push(d.clone());
            }
        }
        out.rules = file.rules.iter().chain(&stored.rules).cloned().collect();
        out.dids = stored.dids.clone();
        out.presence_allow = stored.presence_allow.clone();
        out
    }
}
