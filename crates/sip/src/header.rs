//! Header names: the well-known ones as an enum (long and compact forms, case-insensitive), every
//! other name kept as text. Matching a name is done once per header at parse time, so the proxy
//! can later find Via, Route or Max-Forwards without comparing strings again.

/// A header name the server interprets, or `Other` for anything it only passes along.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Accept,
    AcceptEncoding,
    Allow,
    Authorization,
    CallId,
    Contact,
    ContentEncoding,
    ContentLength,
    ContentType,
    CSeq,
    Expires,
    From,
    MaxForwards,
    MinExpires,
    Path,
    ProxyAuthenticate,
    ProxyAuthorization,
    ProxyRequire,
    RecordRoute,
    Require,
    Route,
    Subject,
    Supported,
    To,
    Unsupported,
    UserAgent,
    Via,
    WwwAuthenticate,
    Event,
    ReferTo,
    ReferredBy,
    AllowEvents,
    SessionExpires,
    Date,
    PAssertedIdentity,
    Other,
}

/// (canonical name, compact form or 0, variant). Compact forms from RFC 3261 §7.3.3 and the
/// IANA registry.
const TABLE: &[(&str, u8, HeaderName)] = &[
    ("Via", b'v', HeaderName::Via),
    ("From", b'f', HeaderName::From),
    ("To", b't', HeaderName::To),
    ("Call-ID", b'i', HeaderName::CallId),
    ("CSeq", 0, HeaderName::CSeq),
    ("Contact", b'm', HeaderName::Contact),
    ("Max-Forwards", 0, HeaderName::MaxForwards),
    ("Route", 0, HeaderName::Route),
    ("Record-Route", 0, HeaderName::RecordRoute),
    ("Content-Length", b'l', HeaderName::ContentLength),
    ("Content-Type", b'c', HeaderName::ContentType),
    ("Expires", 0, HeaderName::Expires),
    ("Authorization", 0, HeaderName::Authorization),
    ("Proxy-Authorization", 0, HeaderName::ProxyAuthorization),
    ("WWW-Authenticate", 0, HeaderName::WwwAuthenticate),
    ("Proxy-Authenticate", 0, HeaderName::ProxyAuthenticate),
    ("Accept", 0, HeaderName::Accept),
    ("Accept-Encoding", 0, HeaderName::AcceptEncoding),
    ("Allow", 0, HeaderName::Allow),
    ("Content-Encoding", b'e', HeaderName::ContentEncoding),
    ("Min-Expires", 0, HeaderName::MinExpires),
    ("Path", 0, HeaderName::Path),
    ("Proxy-Require", 0, HeaderName::ProxyRequire),
    ("Require", 0, HeaderName::Require),
    ("Subject", b's', HeaderName::Subject),
    ("Supported", b'k', HeaderName::Supported),
    ("Unsupported", 0, HeaderName::Unsupported),
    ("User-Agent", 0, HeaderName::UserAgent),
    ("Event", b'o', HeaderName::Event),
    ("Refer-To", b'r', HeaderName::ReferTo),
    ("Referred-By", b'b', HeaderName::ReferredBy),
    ("Allow-Events", b'u', HeaderName::AllowEvents),
    ("Session-Expires", b'x', HeaderName::SessionExpires),
    ("Date", 0, HeaderName::Date),
    ("P-Asserted-Identity", 0, HeaderName::PAssertedIdentity),
];

impl HeaderName {
    /// Classifies a header name as it appears on the wire (any case, long or compact form).
    pub fn parse(name: &str) -> HeaderName {
        let b = name.as_bytes();
        if b.len() == 1 {
            let c = b[0].to_ascii_lowercase();
            for &(_, compact, h) in TABLE {
                if compact == c {
                    return h;
                }
            }
            return HeaderName::Other;
        }
        for &(long, _, h) in TABLE {
            if long.len() == b.len() && long.eq_ignore_ascii_case(name) {
                return h;
            }
        }
        HeaderName::Other
    }

    /// The canonical long form, used when the server writes the header itself.
    pub fn as_str(self) -> &'static str {
        for &(long, _, h) in TABLE {
            if h == self {
                return long;
            }
        }
        ""
    }

    /// Headers that RFC 3261 §7.3.1 allows only once; a second differing value makes the
    /// message unusable (RFC 4475 multi01, mcl01).
    pub fn is_single(self) -> bool {
        matches!(
            self,
            HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::From
                | HeaderName::To
                | HeaderName::MaxForwards
                | HeaderName::ContentLength
                | HeaderName::ContentType
                | HeaderName::Expires
                | HeaderName::MinExpires
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_compact_and_case() {
        assert_eq!(HeaderName::parse("v"), HeaderName::Via);
        assert_eq!(HeaderName::parse("V"), HeaderName::Via);
        assert_eq!(HeaderName::parse("vIa"), HeaderName::Via);
        assert_eq!(HeaderName::parse("i"), HeaderName::CallId);
        assert_eq!(HeaderName::parse("call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::parse("l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::parse("m"), HeaderName::Contact);
        assert_eq!(HeaderName::parse("X-Foo"), HeaderName::Other);
        assert_eq!(HeaderName::parse("q"), HeaderName::Other);
        assert_eq!(HeaderName::CallId.as_str(), "Call-ID");
    }
}
