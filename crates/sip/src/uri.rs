//! SIP and SIPS URIs (RFC 3261 §19.1, RFC 5118 for IPv6), parsed by borrowing from the message.
//! Other schemes are kept as opaque absolute URIs: a proxy may carry them but never routes on them.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a URI was refused; the caller turns it into a 400 or 416.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriError {
    /// The text breaks the URI grammar (RFC 3261 §25.1); the string says where.
    Syntax(&'static str),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriError::Syntax(why) => write!(f, "bad URI: {why}"),
        }
    }
}

/// A URI scheme, recognised case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme<'a> {
    /// `sip:` (RFC 3261 §19.1).
    Sip,
    /// `sips:` (RFC 3261 §19.1): the resource is to be reached over TLS.
    Sips,
    /// `tel:` (RFC 3966): allowed in a Request-URI, but kept opaque.
    Tel,
    /// Any other scheme, as written; the URI is kept opaque.
    Other(&'a str),
}

/// The host part: a name, or an address (RFC 5118: IPv6 only inside brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// A host name as written (letters, digits, `-` and `.`).
    Name(&'a str),
    /// An IPv4 address, or an IPv6 one written inside brackets.
    Ip(IpAddr),
}

impl Host<'_> {
    /// The address, or `None` for a name.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// Case-insensitive for names, by value for addresses.
    pub fn matches(&self, other: &Host<'_>) -> bool {
        match (self, other) {
            (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
            (Host::Ip(a), Host::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// A parsed URI. For sip/sips every part is a slice of the original text (still escaped);
/// `user_unescaped` and `param` give the values to compare with.
#[derive(Clone, Copy, Debug)]
pub struct Uri<'a> {
    /// The whole URI as written.
    pub raw: &'a str,
    /// The scheme.
    pub scheme: Scheme<'a>,
    /// The user part, still escaped (see `user_unescaped`); `None` without `@`.
    pub user: Option<&'a str>,
    /// The password after `user:`, still escaped, if any.
    pub password: Option<&'a str>,
    /// The host; an empty name for schemes other than sip and sips.
    pub host: Host<'a>,
    /// The port, if written.
    pub port: Option<u16>,
    /// `;a=b;c` including the leading `;`, or empty.
    pub params: &'a str,
    /// The text after `?`, if any.
    pub headers: Option<&'a str>,
}

/// Position of an ASCII byte: plain iteration beats `str::find(char)` on the short strings of
/// SIP headers (callgrind: `CharSearcher` was 4% of a REGISTER).
#[inline]
pub fn find_byte(s: &str, b: u8) -> Option<usize> {
    s.as_bytes().iter().position(|&c| c == b)
}

/// Position of the first of several ASCII bytes.
#[inline]
pub fn find_any(s: &str, set: &[u8]) -> Option<usize> {
    s.as_bytes().iter().position(|c| set.contains(c))
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&c)
}

fn is_user_char(c: u8) -> bool {
    is_unreserved(c) || b"&=+$,;?/%".contains(&c)
}

fn is_password_char(c: u8) -> bool {
    is_unreserved(c) || b"&=+$,%".contains(&c)
}

fn is_param_char(c: u8) -> bool {
    is_unreserved(c) || b"[]/:&+$%".contains(&c)
}

fn is_header_char(c: u8) -> bool {
    is_unreserved(c) || b"[]/?:+$%=&".contains(&c)
}

/// `%HH` must be followed by two hex digits wherever escapes are allowed.
fn escapes_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(x), Some(y)) if x.is_ascii_hexdigit() && y.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// Single-pass `%HH` decoding (RFC 4475 esc01: `%25%34%31` becomes `%41`, not `A`). NULs are
/// kept (escnull). Borrows when there is nothing to decode.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Parses a host (name, IPv4, or bracketed IPv6) and optional port from `hostport`.
pub fn parse_hostport(s: &str) -> Result<(Host<'_>, Option<u16>), UriError> {
    if let Some(rest) = s.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or(UriError::Syntax("unclosed IPv6 reference"))?;
        let ip = parse_ipv6(&rest[..close])?;
        let after = &rest[close + 1..];
        let port = match after {
            "" => None,
            _ => Some(parse_port(
                after
                    .strip_prefix(':')
                    .ok_or(UriError::Syntax("junk after IPv6 reference"))?,
            )?),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match find_byte(s, b':') {
        Some(i) => (&s[..i], Some(parse_port(&s[i + 1..])?)),
        None => (s, None),
    };
    Ok((parse_host_name(host)?, port))
}

/// RFC 5118 §4.10: RFC 3261's ABNF let `2001:db8:::192.0.2.1` through by mistake and RFC 5118
/// asks implementations to tolerate it. Our policy: accept it, read as the two-colon form.
fn parse_ipv6(s: &str) -> Result<Ipv6Addr, UriError> {
    if let Ok(ip) = s.parse() {
        return Ok(ip);
    }
    if s.contains(":::") && !s.contains("::::") {
        if let Ok(ip) = s.replacen(":::", "::", 1).parse() {
            return Ok(ip);
        }
    }
    Err(UriError::Syntax("bad IPv6 address"))
}

fn parse_port(s: &str) -> Result<u16, UriError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(UriError::Syntax("bad port"));
    }
    s.parse().map_err(|_| UriError::Syntax("port out of range"))
}

fn parse_host_name(s: &str) -> Result<Host<'_>, UriError> {
    if s.is_empty() {
        return Err(UriError::Syntax("empty host"));
    }
    if s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return s
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| UriError::Syntax("bad IPv4 address"));
    }
    let ok = s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    if !ok || s.starts_with('.') || s.starts_with('-') {
        return Err(UriError::Syntax("bad host name"));
    }
    Ok(Host::Name(s))
}

fn scheme_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.')
}

impl<'a> Uri<'a> {
    /// Parses any absolute URI; sip/sips are parsed fully, other schemes only checked for shape.
    pub fn parse(raw: &'a str) -> Result<Uri<'a>, UriError> {
        let colon = find_byte(raw, b':').ok_or(UriError::Syntax("no scheme"))?;
        let scheme_str = &raw[..colon];
        if !scheme_ok(scheme_str) {
            return Err(UriError::Syntax("bad scheme"));
        }
        let rest = &raw[colon + 1..];
        if rest.is_empty()
            || rest
                .bytes()
                .any(|c| c <= b' ' || c == b'<' || c == b'>' || c == b'"' || c >= 0x7f)
        {
            return Err(UriError::Syntax("illegal character in URI"));
        }
        let scheme = if scheme_str.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme_str.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else if scheme_str.eq_ignore_ascii_case("tel") {
            Scheme::Tel
        } else {
            Scheme::Other(scheme_str)
        };
        if !matches!(scheme, Scheme::Sip | Scheme::Sips) {
            return Ok(Uri {
                raw,
                scheme,
                user: None,
                password: None,
                host: Host::Name(""),
                port: None,
                params: "",
                headers: None,
            });
        }
        let (body, headers) = match find_byte(rest, b'?') {
            // A `?` inside the userinfo is legal (user-unreserved); headers start after the host.
            Some(q) if !rest[q..].contains('@') => (&rest[..q], Some(&rest[q + 1..])),
            _ => (rest, None),
        };
        let (userinfo, hostpart) = match find_byte(body, b'@') {
            Some(at) => (Some(&body[..at]), &body[at + 1..]),
            None => (None, body),
        };
        let (user, password) = match userinfo {
            Some(ui) => {
                let (u, p) = match find_byte(ui, b':') {
                    Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                    None => (ui, None),
                };
                if u.is_empty() || !u.bytes().all(is_user_char) || !escapes_ok(u) {
                    return Err(UriError::Syntax("bad user part"));
                }
                if let Some(p) = p {
                    if !p.bytes().all(is_password_char) || !escapes_ok(p) {
                        return Err(UriError::Syntax("bad password"));
                    }
                }
                (Some(u), p)
            }
            None => (None, None),
        };
        let (hostport, params) = match find_byte(hostpart, b';') {
            Some(s) => (&hostpart[..s], &hostpart[s..]),
            None => (hostpart, ""),
        };
        let (host, port) = parse_hostport(hostport)?;
        if !params.is_empty() {
            for p in params[1..].split(';') {
                let (name, value) = match find_byte(p, b'=') {
                    Some(e) => (&p[..e], Some(&p[e + 1..])),
                    None => (p, None),
                };
                if name.is_empty()
                    || !name.bytes().all(is_param_char)
                    || value.is_some_and(|v| v.is_empty() || !v.bytes().all(is_param_char))
                    || !escapes_ok(p)
                {
                    return Err(UriError::Syntax("bad URI parameter"));
                }
            }
        }
        if let Some(h) = headers {
            if h.is_empty() || !h.bytes().all(is_header_char) || !escapes_ok(h) {
                return Err(UriError::Syntax("bad URI headers"));
            }
        }
        Ok(Uri {
            raw,
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// Whether the scheme is sip or sips, the only ones parsed fully and routed on.
    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    /// The user part with escapes decoded, for comparison and lookup.
    pub fn user_unescaped(&self) -> Option<Cow<'a, str>> {
        self.user.map(unescape)
    }

    /// `Some(None)` for a parameter without value (`;lr`), `Some(Some(v))` with one.
    /// Names compare case-insensitively.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param_in(self.params, name)
    }

    /// The `transport` parameter, lowercased by the caller's comparison.
    pub fn transport(&self) -> Option<&'a str> {
        self.param("transport").flatten()
    }

    /// Whether the URI has the `lr` parameter (RFC 3261 §19.1.1): the hop is a loose router.
    pub fn has_lr(&self) -> bool {
        self.param("lr").is_some()
    }
}

/// Looks a parameter up in a `;a=b;c` list (URI or header parameters alike).
pub fn param_in<'a>(params: &'a str, name: &str) -> Option<Option<&'a str>> {
    for p in params.split(';') {
        let p = p.trim();
        let (n, v) = match find_byte(p, b'=') {
            Some(e) => (p[..e].trim_end(), Some(p[e + 1..].trim_start())),
            None => (p, None),
        };
        if n.eq_ignore_ascii_case(name) {
            return Some(v);
        }
    }
    None
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse("sip:alice:pw@example.org:5070;transport=tcp;lr?subject=x").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("pw"));
        assert_eq!(u.host, Host::Name("example.org"));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.has_lr());
        assert_eq!(u.headers, Some("subject=x"));
    }

    #[test]
    fn ipv6_forms() {
        let u = Uri::parse("sip:[2001:db8::10]:5070").unwrap();
        assert_eq!(u.host, Host::Ip("2001:db8::10".parse().unwrap()));
        assert_eq!(u.port, Some(5070));
        // RFC 5118 §4.3: all inside the brackets is the address.
        let u = Uri::parse("sip:[2001:db8::10:5070]").unwrap();
        assert_eq!(u.port, None);
        assert!(Uri::parse("sip:2001:db8::10").is_err());
        // RFC 5118 §4.10 tolerated form.
        let u = Uri::parse("sip:[2001:db8:::192.0.2.1]").unwrap();
        assert_eq!(u.host, Host::Ip("2001:db8::192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn semicolon_in_user_part() {
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.user_unescaped().unwrap(), "user;par=u@example.net");
        assert_eq!(u.params, "");
    }

    #[test]
    fn single_pass_unescape() {
        assert_eq!(unescape("value%25%34%31"), "value%41");
        assert_eq!(unescape("%75se%72"), "user");
        assert_eq!(unescape("a%00b").len(), 3);
    }

    #[test]
    fn other_schemes_are_opaque() {
        let u = Uri::parse("nobodyKnowsThisScheme:totallyopaquecontent").unwrap();
        assert_eq!(u.scheme, Scheme::Other("nobodyKnowsThisScheme"));
        assert!(!u.is_sip());
        assert!(Uri::parse("<sip:a@b>").is_err());
        assert!(Uri::parse("sip:a@b c").is_err());
        assert!(Uri::parse("sip:a@").is_err());
        assert!(Uri::parse("sip:a@b:99999").is_err());
        assert!(Uri::parse("sip:a%zz@b").is_err());
    }
}
