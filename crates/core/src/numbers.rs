//! Telephone numbers: what a dialled string means as an E.164 number (RFC 6116's form,
//! with the configured country code, trunk prefix and international prefix), how a
//! provider wants it written, which calling class it is in (national, mobile,
//! international, premium) and whether it is an emergency number. Pure functions over the
//! `[numbers]` settings.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A number of the household and what it rings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DidSpec {
    /// The number, in any form (`+4930123456`, `030123456`).
    pub number: String,
    /// A user, group or extension; empty: the default target.
    pub target: String,
    /// The provider it belongs to (mappings made with `hedgewitch did`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// A number a local user dialled, as the dial plan found it: where it goes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberCall {
    /// As dialled (after the rules' rewriting).
    pub dialled: String,
    /// As an E.164 number (digits only), when it is one.
    pub e164: Option<String>,
    /// The providers to try, in order; empty: every outgoing provider.
    pub providers: Vec<String>,
    /// An emergency number: no class or cap applies, and it goes out through the
    /// emergency provider.
    pub emergency: bool,
}

/// What a call to a number costs or risks: users may call only the classes they have.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum CallClass {
    /// Users, groups and extensions of the domain (always allowed).
    Internal,
    /// Numbers of the home country.
    National,
    /// The home country's mobile numbers (`numbers.mobile` prefixes).
    Mobile,
    /// Numbers of other countries.
    International,
    /// Premium-rate numbers (`numbers.premium` prefixes), in any country.
    Premium,
}

impl CallClass {
    /// The name as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            CallClass::Internal => "internal",
            CallClass::National => "national",
            CallClass::Mobile => "mobile",
            CallClass::International => "international",
            CallClass::Premium => "premium",
        }
    }
}

/// How a provider wants the called number written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NumberFormat {
    /// `+4930123456`.
    #[default]
    E164Plus,
    /// `4930123456`.
    E164,
    /// `030123456` at home, `0044...` abroad (trunk and international prefixes).
    National,
    /// As the user dialled it (an IP-PBX with its own plan).
    Dialled,
}

/// The `[numbers]` settings: how numbers are dialled here, their classes, the emergency
/// numbers and the guards on calls that cost money.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NumberSettings {
    /// The home country's calling code, without `+` (`49`, `1`, `44`); empty: numbers must
    /// be dialled in international form.
    pub country_code: String,
    /// Dialled before a national number (`0`); empty when the country has none.
    pub trunk_prefix: String,
    /// Dialled before an international number (`00`, `011`).
    pub international_prefix: String,
    /// Emergency numbers: always go out, through `emergency_provider`, whatever the rules.
    pub emergency: Vec<String>,
    /// The provider emergency calls go through; the first outgoing provider when absent.
    pub emergency_provider: Option<String>,
    /// E.164 prefixes (with `+`) of the home country's mobile numbers.
    pub mobile: Vec<String>,
    /// E.164 prefixes (with `+`) of premium-rate numbers.
    pub premium: Vec<String>,
    /// Who may call which numbers, and how many calls.
    pub allow: CallLimits,
    /// ENUM (RFC 6116) suffixes numbers are looked up under; empty turns ENUM off.
    pub enum_suffixes: Vec<String>,
    /// Where calls to the household's numbers go when the provider's `did` list does not
    /// name the number (a user, group or extension); 404 when absent.
    pub default_target: Option<String>,
}

/// The guards on calls that cost money (`[numbers.allow]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CallLimits {
    /// The classes every user may call (besides internal).
    pub classes: Vec<CallClass>,
    /// Classes per user, instead of `classes`.
    pub users: HashMap<String, Vec<CallClass>>,
    /// Calls through providers one user may have at once.
    pub calls_at_once: u32,
    /// Calls through providers one user may start per day (UTC).
    pub calls_per_day: u32,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            classes: vec![
                CallClass::National,
                CallClass::Mobile,
                CallClass::International,
            ],
            users: HashMap::new(),
            calls_at_once: 2,
            calls_per_day: 100,
        }
    }
}

impl Default for NumberSettings {
    fn default() -> Self {
        NumberSettings {
            country_code: String::new(),
            trunk_prefix: "0".into(),
            international_prefix: "00".into(),
            emergency: vec!["112".into(), "911".into()],
            emergency_provider: None,
            mobile: vec![],
            premium: vec![],
            allow: CallLimits::default(),
            enum_suffixes: vec!["e164.arpa".into()],
            default_target: None,
        }
    }
}

/// Characters people write inside numbers that mean nothing (`+44 20 7946-0000`).
fn is_visual(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '(' | ')' | '/')
}

impl NumberSettings {
    /// The E.164 number a dialled string means (digits only, without `+`), or None when it
    /// is not a telephone number (a name, an extension, a feature code).
    pub fn normalise(&self, dialled: &str) -> Option<String> {
        let s: String = dialled.chars().filter(|c| !is_visual(*c)).collect();
        let (plus, digits) = match s.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let e164 = if plus {
            digits.to_string()
        } else if !self.international_prefix.is_empty()
            && digits.starts_with(&self.international_prefix)
        {
            digits[self.international_prefix.len()..].to_string()
        } else if !self.country_code.is_empty()
            && !self.trunk_prefix.is_empty()
            && digits.starts_with(&self.trunk_prefix)
        {
            format!(
                "{}{}",
                self.country_code,
                &digits[self.trunk_prefix.len()..]
            )
        } else {
            return None;
        };
        // E.164: a country code and a number, 15 digits at most; a country code does not
        // start with 0.
        (e164.len() >= 5 && e164.len() <= 15 && !e164.starts_with('0')).then_some(e164)
    }

    /// The number as a provider wants it (`e164` is digits only).
    pub fn format(&self, e164: &str, dialled: &str, format: NumberFormat) -> String {
        match format {
            NumberFormat::E164Plus => format!("+{e164}"),
            NumberFormat::E164 => e164.to_string(),
            NumberFormat::National => match e164.strip_prefix(self.country_code.as_str()) {
                Some(rest) if !self.country_code.is_empty() => {
                    format!("{}{rest}", self.trunk_prefix)
                }
                _ => format!("{}{e164}", self.international_prefix),
            },
            NumberFormat::Dialled => dialled.chars().filter(|c| !is_visual(*c)).collect(),
        }
    }

    /// The class of an E.164 number (digits only).
    pub fn class_of(&self, e164: &str) -> CallClass {
        let matches = |list: &[String]| {
            list.iter()
                .any(|p| e164.starts_with(p.trim_start_matches('+')))
        };
        if matches(&self.premium) {
            CallClass::Premium
        } else if matches(&self.mobile) {
            CallClass::Mobile
        } else if !self.country_code.is_empty() && e164.starts_with(&self.country_code) {
            CallClass::National
        } else {
            CallClass::International
        }
    }

    /// Whether `user` may call numbers of `class`.
    pub fn allows(&self, user: &str, class: CallClass) -> bool {
        class == CallClass::Internal
            || self
                .allow
                .users
                .get(user)
                .unwrap_or(&self.allow.classes)
                .contains(&class)
    }

    /// The emergency number a dialled string is, if any.
    pub fn emergency(&self, dialled: &str) -> Option<&str> {
        let s: String = dialled.chars().filter(|c| !is_visual(*c)).collect();
        self.emergency.iter().find(|e| **e == s).map(String::as_str)
    }

    /// Whether two written forms name the same number (a provider may send the household's
    /// number as `+4930...`, `4930...` or `030...`).
    pub fn same_number(&self, a: &str, b: &str) -> bool {
        let norm = |s: &str| {
            self.normalise(s).or_else(|| {
                let d: String = s.chars().filter(|c| !is_visual(*c)).collect();
                // Digits that already are E.164 without `+` (most providers' form).
                (d.len() >= 5 && d.bytes().all(|b| b.is_ascii_digit())).then_some(d)
            })
        };
        match (norm(a), norm(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        }
    }
}

/// A NAPTR record found for an ENUM domain (RFC 6116 §2.4, RFC 3403).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnumRecord {
    /// Lower first; only the lowest order with a usable record counts.
    pub order: u16,
    /// Lower first within an order.
    pub preference: u16,
    /// `u`: terminal, the regexp gives a URI.
    pub flags: String,
    /// The enumservice, `E2U+sip` for SIP.
    pub services: String,
    /// `!ERE!replacement!`.
    pub regexp: String,
}

/// The SIP URI an ENUM answer gives for an E.164 number (digits only), if any: terminal
/// `E2U+sip` records, best first (order, then preference), their regexp applied to
/// `+digits` (RFC 3402 §3.2: the first character is the delimiter, `\1`..`\9` back
/// references in the replacement). Only a `sip:` or `sips:` URI counts.
pub fn enum_target(e164: &str, records: &[EnumRecord]) -> Option<String> {
    let aus = format!("+{e164}");
    let mut usable: Vec<&EnumRecord> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("u"))
        .filter(|r| {
            let s = r.services.to_ascii_lowercase();
            s.split(':').next() == Some("e2u+sip") || s == "sip+e2u"
        })
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    usable
        .into_iter()
        .find_map(|r| apply_enum_regexp(&aus, &r.regexp))
        .filter(|uri| {
            let l = uri.to_ascii_lowercase();
            (l.starts_with("sip:") || l.starts_with("sips:")) && sip::uri::Uri::parse(uri).is_ok()
        })
}

/// `!ERE!replacement!flags` applied to `aus`; None when it does not match or is malformed.
fn apply_enum_regexp(aus: &str, rule: &str) -> Option<String> {
    let delim = rule.chars().next()?;
    if delim.is_ascii_alphanumeric() || delim == '\\' {
        return None;
    }
    let parts: Vec<&str> = rule[delim.len_utf8()..].split(delim).collect();
    let (ere, repl) = match parts.as_slice() {
        [ere, repl, flags] if flags.is_empty() || flags.eq_ignore_ascii_case("i") => (*ere, *repl),
        _ => return None,
    };
    let re = regex_lite::Regex::new(ere).ok()?;
    let caps = re.captures(aus)?;
    let mut out = String::new();
    let mut chars = repl.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    let i = d.to_digit(10)? as usize;
                    out.push_str(caps.get(i).map_or("", |m| m.as_str()));
                }
                Some(other) => out.push(other),
                None => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The ENUM domain of an E.164 number under `suffix` (RFC 6116 §2.4): digits reversed,
/// dot-separated.
pub fn enum_domain(e164: &str, suffix: &str) -> String {
    let mut out = String::with_capacity(e164.len() * 2 + suffix.len());
    for d in e164.chars().rev().filter(char::is_ascii_digit) {
        out.push(d);
        out.push('.');
    }
    out.push_str(suffix.trim_matches('.'));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn germany() -> NumberSettings {
        NumberSettings {
            country_code: "49".into(),
            mobile: vec!["+4915".into(), "+4916".into(), "+4917".into()],
            premium: vec!["+49900".into()],
            ..Default::default()
        }
    }

    #[test]
    fn dialled_forms_become_e164() {
        let n = germany();
        assert_eq!(n.normalise("0301234567").as_deref(), Some("49301234567"));
        assert_eq!(
            n.normalise("+44 20 7946 0000").as_deref(),
            Some("442079460000")
        );
        assert_eq!(
            n.normalise("00442079460000").as_deref(),
            Some("442079460000")
        );
        assert_eq!(
            n.normalise("+1 (555) 123-4567").as_deref(),
            Some("15551234567")
        );
        // Extensions, names, feature codes and nonsense are not numbers.
        for s in [
            "201",
            "alice",
            "*72",
            "",
            "+",
            "+0123456",
            "0",
            "+1234567890123456",
        ] {
            assert_eq!(n.normalise(s), None, "{s}");
        }
        // Without a country code, national numbers cannot be told.
        let bare = NumberSettings::default();
        assert_eq!(bare.normalise("0301234567"), None);
        assert_eq!(
            bare.normalise("+49301234567").as_deref(),
            Some("49301234567")
        );
    }

    #[test]
    fn formats_for_providers() {
        let n = germany();
        let e = "49301234567";
        assert_eq!(
            n.format(e, "030 1234567", NumberFormat::E164Plus),
            "+49301234567"
        );
        assert_eq!(
            n.format(e, "030 1234567", NumberFormat::E164),
            "49301234567"
        );
        assert_eq!(
            n.format(e, "030 1234567", NumberFormat::National),
            "0301234567"
        );
        assert_eq!(
            n.format("442079460000", "", NumberFormat::National),
            "00442079460000"
        );
        assert_eq!(
            n.format(e, "030 1234567", NumberFormat::Dialled),
            "0301234567"
        );
    }

    #[test]
    fn classes_and_permissions() {
        let mut n = germany();
        assert_eq!(n.class_of("49301234567"), CallClass::National);
        assert_eq!(n.class_of("491701234567"), CallClass::Mobile);
        assert_eq!(n.class_of("499001234567"), CallClass::Premium);
        assert_eq!(n.class_of("442079460000"), CallClass::International);
        assert!(n.allows("bob", CallClass::International));
        assert!(!n.allows("bob", CallClass::Premium));
        n.allow
            .users
            .insert("bob".into(), vec![CallClass::National]);
        assert!(!n.allows("bob", CallClass::International));
        assert!(n.allows("bob", CallClass::Internal));
        assert_eq!(n.emergency("112"), Some("112"));
        assert_eq!(n.emergency("1120"), None);
    }

    #[test]
    fn same_number_in_any_form() {
        let n = germany();
        assert!(n.same_number("+49301234567", "49301234567"));
        assert!(n.same_number("0301234567", "+49 30 1234567"));
        assert!(!n.same_number("0301234567", "+49301234568"));
    }

    #[test]
    fn enum_answers_become_sip_uris() {
        let rec = |order, pref, services: &str, regexp: &str| EnumRecord {
            order,
            preference: pref,
            flags: "u".into(),
            services: services.into(),
            regexp: regexp.into(),
        };
        let e = "4930123456";
        let records = vec![
            rec(10, 20, "E2U+sip", "!^.*$!sip:second@beta.test!"),
            rec(10, 10, "E2U+sip", "!^.*$!sip:bob@beta.test!"),
            rec(5, 10, "E2U+mailto", "!^.*$!mailto:bob@beta.test!"),
        ];
        assert_eq!(
            enum_target(e, &records).as_deref(),
            Some("sip:bob@beta.test")
        );
        // Back references, another delimiter.
        let r = [rec(1, 1, "E2U+sip", r"#^\+49(.*)$#sip:\1@beta.test#")];
        assert_eq!(
            enum_target(e, &r).as_deref(),
            Some("sip:30123456@beta.test")
        );
        // Not SIP, no match, not terminal, not a URI: nothing.
        assert_eq!(
            enum_target(e, &[rec(1, 1, "E2U+tel", "!^.*$!tel:+1!")]),
            None
        );
        assert_eq!(
            enum_target(e, &[rec(1, 1, "E2U+sip", "!^\\+1.*$!sip:x@y!")]),
            None
        );
        let mut nt = rec(1, 1, "E2U+sip", "!^.*$!sip:x@y!");
        nt.flags = String::new();
        assert_eq!(enum_target(e, &[nt]), None);
        assert_eq!(
            enum_target(e, &[rec(1, 1, "E2U+sip", "!^.*$!http://x!")]),
            None
        );
        assert_eq!(enum_target(e, &[rec(1, 1, "E2U+sip", "garbage")]), None);
    }

    #[test]
    fn enum_domains() {
        assert_eq!(
            enum_domain("4930123", "e164.arpa"),
            "3.2.1.0.3.9.4.e164.arpa"
        );
        assert_eq!(enum_domain("1", "e164.test."), "1.e164.test");
    }
}
