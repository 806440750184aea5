//! Typed views of the headers the server interprets (RFC 3261 §20, §25): name-addr / addr-spec
//! (From, To, Contact, Route, Record-Route), Via, CSeq, and parameter lists. Each parser reads one
//! element and returns the rest, so comma-separated lists split correctly around quotes and `<>`.

use crate::uri::{find_any, find_byte, param_in, parse_hostport, Host, Uri, UriError};
use std::borrow::Cow;

/// Why a header value was refused; becomes a 400 with this text as reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrammarError(pub &'static str);

impl From<UriError> for GrammarError {
    fn from(e: UriError) -> Self {
        match e {
            UriError::Syntax(why) => GrammarError(why),
        }
    }
}

/// Whether `c` may appear in a token (RFC 3261 §25.1: letters, digits and ``-.!%*_+`'~``).
pub fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

/// Whether `s` is a non-empty token (RFC 3261 §25.1).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn skip_ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// Reads a quoted string starting at `s[0] == '"'`; returns (content with escapes, rest).
fn quoted(s: &str) -> Result<(&str, &str), GrammarError> {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Ok((&s[1..i], &s[i + 1..])),
            _ => i += 1,
        }
    }
    Err(GrammarError("unterminated quoted string"))
}

/// Removes quoted-pair backslashes from a quoted-string's content.
pub fn unquote(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for ch in s.chars() {
        if esc {
            out.push(ch);
            esc = false;
        } else if ch == '\\' {
            esc = true;
        } else {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

/// Reads `*( SEMI generic-param )` up to a `,` or the end; returns (params text, rest).
/// The params text keeps its leading `;` so `param_in` can search it.
fn params(s: &str) -> Result<(&str, &str), GrammarError> {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] == b',' {
            return Ok((s[..i].trim_end(), &s[i..]));
        }
        if b[i] != b';' {
            return Err(GrammarError("junk where a parameter was expected"));
        }
        i += 1;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        let start = i;
        while i < b.len() && is_token_char(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(GrammarError("empty parameter"));
        }
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i < b.len() && b[i] == b'"' {
                let (_, rest) = quoted(&s[i..])?;
                i = s.len() - rest.len();
            } else {
                let vstart = i;
                // token, or host (IPv6 with or without brackets: RFC 5118 §4.5).
                while i < b.len() && (is_token_char(b[i]) || b"[]:".contains(&b[i])) {
                    i += 1;
                }
                if i == vstart {
                    return Err(GrammarError("empty parameter value"));
                }
            }
        }
    }
}

/// One element of From, To, Contact, Route or Record-Route.
#[derive(Clone, Copy, Debug)]
pub struct NameAddr<'a> {
    /// Display name as written: quoted content (escapes kept) or the token words.
    pub display: Option<&'a str>,
    /// The URI: inside `<>` for a name-addr, else the addr-spec up to the parameters.
    pub uri: Uri<'a>,
    /// Header parameters (`;tag=..;expires=..`), with their leading `;`.
    pub params: &'a str,
    /// The whole element as written, for forwarding it unchanged.
    pub raw: &'a str,
}

impl<'a> NameAddr<'a> {
    /// A header parameter: `None` if absent, `Some(None)` without a value (`;lr`), `Some(Some(v))`
    /// with one. Names compare case-insensitively.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param_in(self.params, name)
    }

    /// The `tag` parameter (RFC 3261 §19.3): which side of a dialog this is.
    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }

    /// Parses one element and returns it with what follows it (`""` or `,...`).
    pub fn parse_one(s: &'a str) -> Result<(NameAddr<'a>, &'a str), GrammarError> {
        let s = skip_ws(s);
        let start = s;
        let mut display = None;
        let mut rest = s;
        if rest.starts_with('"') {
            let (d, r) = quoted(rest)?;
            display = Some(d);
            rest = skip_ws(r);
            if !rest.starts_with('<') {
                return Err(GrammarError("display name without <URI>"));
            }
        } else if let Some(lt) = find_byte(rest, b'<') {
            // Unquoted display name: only tokens and spaces may come before `<` (RFC 4475
            // lwsdisp allows no space before `<`; baddn has a comma, which is refused).
            let words = &rest[..lt];
            let before_comma = find_byte(rest, b',').is_none_or(|c| c > lt);
            if before_comma {
                if !words.bytes().all(|c| is_token_char(c) || is_ws(c)) {
                    return Err(GrammarError("bad display name"));
                }
                let w = words.trim();
                if !w.is_empty() {
                    display = Some(w);
                }
                rest = &rest[lt..];
            }
        }
        let (uri, after) = if let Some(inner) = rest.strip_prefix('<') {
            let gt = find_byte(inner, b'>').ok_or(GrammarError("missing >"))?;
            let uri = Uri::parse(&inner[..gt])?;
            (uri, &inner[gt + 1..])
        } else {
            // addr-spec: the URI ends at `;` (header params), `,` or white space. RFC 3261 §20:
            // a URI with `,`, `;` or `?` must be in brackets (RFC 4475 regbadct).
            let end = find_any(rest, b";, \t").unwrap_or(rest.len());
            let text = &rest[..end];
            if text.contains('?') {
                return Err(GrammarError("URI with headers needs <>"));
            }
            (Uri::parse(text)?, &rest[end..])
        };
        let (params, tail) = params(after)?;
        let raw = start[..start.len() - tail.len()].trim_end();
        Ok((
            NameAddr {
                display,
                uri,
                params,
                raw,
            },
            tail,
        ))
    }

    /// A single-valued header (From, To): exactly one element.
    pub fn parse_single(s: &'a str) -> Result<NameAddr<'a>, GrammarError> {
        let (na, rest) = Self::parse_one(s)?;
        if !rest.trim().is_empty() {
            return Err(GrammarError("more than one address"));
        }
        Ok(na)
    }
}

/// Iterates over the elements of a comma-separated list of name-addrs.
pub fn name_addr_list(s: &str) -> NameAddrList<'_> {
    NameAddrList { rest: Some(s) }
}

/// The iterator of [`name_addr_list`]: one name-addr per element; a bad or empty element
/// yields an error and ends the iteration.
pub struct NameAddrList<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for NameAddrList<'a> {
    type Item = Result<NameAddr<'a>, GrammarError>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest.take()?;
        if s.trim().is_empty() {
            return None;
        }
        match NameAddr::parse_one(s) {
            Ok((na, tail)) => {
                let tail = skip_ws(tail);
                if let Some(t) = tail.strip_prefix(',') {
                    if t.trim().is_empty() {
                        return Some(Err(GrammarError("empty list element")));
                    }
                    self.rest = Some(t);
                }
                Some(Ok(na))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// One Via header element.
#[derive(Clone, Copy, Debug)]
pub struct Via<'a> {
    /// Transport token as written (`UDP`, `TCP`, `TLS`, `WS`, anything).
    pub transport: &'a str,
    /// The sent-by host.
    pub host: Host<'a>,
    /// The sent-by port, if written.
    pub port: Option<u16>,
    /// `host[:port]` as written, for RFC 3261 §17.2.3 matching.
    pub sent_by: &'a str,
    /// Via parameters (`;branch=..;received=..`), with their leading `;`.
    pub params: &'a str,
    /// The whole element as written.
    pub raw: &'a str,
}

impl<'a> Via<'a> {
    /// A Via parameter: `None` if absent, `Some(None)` without a value (`;rport`), `Some(Some(v))`
    /// with one. Names compare case-insensitively.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param_in(self.params, name)
    }

    /// The `branch` parameter (RFC 3261 §8.1.1.7), whatever its form; see `rfc3261_branch`.
    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").flatten()
    }

    /// An RFC 3261 branch: starts with the magic cookie and has something after it
    /// (RFC 4475 badbranch).
    pub fn rfc3261_branch(&self) -> Option<&'a str> {
        self.branch()
            .filter(|b| b.len() > 7 && b.starts_with("z9hG4bK"))
    }

    /// Parses one element (`SIP/2.0/transport sent-by *(;param)`, RFC 3261 §20.42) and returns
    /// it with what follows it (`""` or `,...`).
    pub fn parse_one(s: &'a str) -> Result<(Via<'a>, &'a str), GrammarError> {
        let s = skip_ws(s);
        let start = s;
        let mut parts = [""; 3];
        let mut rest = s;
        for (i, part) in parts.iter_mut().enumerate() {
            rest = skip_ws(rest);
            let end = rest
                .find(|c: char| !is_token_char(c as u8) || !c.is_ascii())
                .unwrap_or(rest.len());
            *part = &rest[..end];
            if part.is_empty() {
                return Err(GrammarError("bad Via protocol"));
            }
            rest = skip_ws(&rest[end..]);
            if i < 2 {
                rest = rest
                    .strip_prefix('/')
                    .ok_or(GrammarError("bad Via protocol"))?;
            }
        }
        if !parts[0].eq_ignore_ascii_case("SIP") {
            return Err(GrammarError("Via protocol is not SIP"));
        }
        if parts[1] != "2.0" {
            return Err(GrammarError("Via version is not 2.0"));
        }
        let end = find_any(rest, b";, \t").unwrap_or(rest.len());
        let sent_by = &rest[..end];
        let (host, port) = parse_hostport(sent_by)?;
        let (params, tail) = params(&rest[end..])?;
        let raw = start[..start.len() - tail.len()].trim_end();
        Ok((
            Via {
                transport: parts[2],
                host,
                port,
                sent_by,
                params,
                raw,
            },
            tail,
        ))
    }
}

/// Iterates over the Via elements of one header value.
pub fn via_list(s: &str) -> ViaList<'_> {
    ViaList { rest: Some(s) }
}

/// The iterator of [`via_list`]: one Via per element; a bad or empty element yields an error
/// and ends the iteration.
pub struct ViaList<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for ViaList<'a> {
    type Item = Result<Via<'a>, GrammarError>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest.take()?;
        if s.trim().is_empty() {
            return Some(Err(GrammarError("empty Via")));
        }
        match Via::parse_one(s) {
            Ok((v, tail)) => {
                if let Some(t) = skip_ws(tail).strip_prefix(',') {
                    self.rest = Some(t);
                }
                Some(Ok(v))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// CSeq: sequence number (< 2^31, RFC 3261 §8.1.1.5) and method.
pub fn parse_cseq(s: &str) -> Result<(u32, &str), GrammarError> {
    let s = s.trim();
    let sp = s
        .find([' ', '\t'])
        .ok_or(GrammarError("CSeq without method"))?;
    let (num, method) = (&s[..sp], s[sp..].trim_start());
    if num.is_empty() || num.len() > 10 || !num.bytes().all(|c| c.is_ascii_digit()) {
        return Err(GrammarError("bad CSeq number"));
    }
    let n: u64 = num.parse().map_err(|_| GrammarError("bad CSeq number"))?;
    if n >= 1 << 31 {
        return Err(GrammarError("CSeq number too large"));
    }
    if !is_token(method) {
        return Err(GrammarError("bad CSeq method"));
    }
    Ok((n as u32, method))
}

/// A decimal number with an upper bound; leading zeros allowed (RFC 4475 wsinv `0068`).
pub fn parse_bounded(s: &str, max: u64) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 19 {
        return None;
    }
    let n: u64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    (n <= max).then_some(n)
}

/// Comma-separated tokens (Require, Proxy-Require, Supported, Allow).
pub fn token_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let (na, rest) =
            NameAddr::parse_one("\"Alice \\\"A\\\"\" <sip:alice@example.org>;tag=12, x").unwrap();
        assert_eq!(na.display, Some("Alice \\\"A\\\""));
        assert_eq!(unquote(na.display.unwrap()), "Alice \"A\"");
        assert_eq!(na.tag(), Some("12"));
        assert_eq!(rest, ", x");
        let na = NameAddr::parse_single("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(na.display, Some("caller"));
        // addr-spec: parameters belong to the header (RFC 4475 cparam01).
        let na = NameAddr::parse_single("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert_eq!(na.uri.params, "");
        assert_eq!(na.param("unknownparam"), Some(None));
        // name-addr: inside <> they belong to the URI (cparam02).
        let na = NameAddr::parse_single("<sip:+1972@gw1.example.net;unknownparam>").unwrap();
        assert_eq!(na.uri.param("unknownparam"), Some(None));
    }

    #[test]
    fn name_addr_errors() {
        assert!(NameAddr::parse_single("\"Bell <sip:a@b>").is_err());
        assert!(NameAddr::parse_single("Bell, Alexander <sip:a@b>").is_err());
        assert!(NameAddr::parse_single("\"W\" < sip:t@example.org >").is_err());
        assert!(NameAddr::parse_single("sip:user@example.com?Route=x").is_err());
        assert!(NameAddr::parse_single("<sip:a@b>;;").is_err());
    }

    #[test]
    fn contact_list() {
        let all: Vec<_> =
            name_addr_list("<sip:a@h1>;q=0.5, \"B, C\" <sip:b@h2>,sip:c@h3;expires=10")
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].display, Some("B, C"));
        assert_eq!(all[2].param("expires"), Some(Some("10")));
        assert!(name_addr_list("<sip:a@h1>,").any(|r| r.is_err()));
    }

    #[test]
    fn via_forms() {
        let (v, rest) =
            Via::parse_one("SIP / 2.0 / UDP 192.0.2.2:5060 ; branch = z9hG4bK390skdjuw, x")
                .unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some("z9hG4bK390skdjuw"));
        assert_eq!(rest, ", x");
        let (v, _) = Via::parse_one(
            "SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3",
        )
        .unwrap();
        assert_eq!(v.param("received"), Some(Some("2001:db8::9:255")));
        assert_eq!(v.branch(), Some("z9hG4bKas3"));
        assert!(via_list("SIP/2.0/UDP 192.0.2.15;;,;,,").any(|r| r.is_err()));
        let (v, _) = Via::parse_one("SIP/2.0/UDP h;branch=z9hG4bK").unwrap();
        assert_eq!(v.rfc3261_branch(), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_cseq("0009 INVITE"), Ok((9, "INVITE")));
        assert!(parse_cseq("36893488147419103232 REGISTER").is_err());
        assert_eq!(parse_bounded("0068", 255), Some(68));
        assert_eq!(parse_bounded("300", 255), None);
        assert_eq!(parse_bounded("-1", 255), None);
    }
}
