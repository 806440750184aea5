//! Header names: the well-known ones as an enum (long and compact forms, case-insensitive), every
//! other name kept as text. Matching a name is done once per header at parse time, so the proxy
//! can later find Via, Route or Max-Forwards without comparing strings again.

/// A header name the server interprets, or `Other` for anything it only passes along.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// `Accept` (RFC 3261 §20.1).
    Accept,
    /// `Accept-Encoding` (RFC 3261 §20.2).
    AcceptEncoding,
    /// `Allow` (RFC 3261 §20.5).
    Allow,
    /// `Authorization` (RFC 3261 §20.7): digest credentials for a registrar or UAS.
    Authorization,
    /// `Call-ID`, compact `i` (RFC 3261 §20.8).
    CallId,
    /// `Contact`, compact `m` (RFC 3261 §20.10).
    Contact,
    /// `Content-Encoding`, compact `e` (RFC 3261 §20.12).
    ContentEncoding,
    /// `Content-Length`, compact `l` (RFC 3261 §20.14).
    ContentLength,
    /// `Content-Type`, compact `c` (RFC 3261 §20.15).
    ContentType,
    /// `CSeq` (RFC 3261 §20.16).
    CSeq,
    /// `Expires` (RFC 3261 §20.19).
    Expires,
    /// `From`, compact `f` (RFC 3261 §20.20).
    From,
    /// `Max-Forwards` (RFC 3261 §20.22).
    MaxForwards,
    /// `Min-Expires` (RFC 3261 §20.23).
    MinExpires,
    /// `Path` (RFC 3327).
    Path,
    /// `Proxy-Authenticate` (RFC 3261 §20.27): a proxy's digest challenge.
    ProxyAuthenticate,
    /// `Proxy-Authorization` (RFC 3261 §20.28): digest credentials for a proxy.
    ProxyAuthorization,
    /// `Proxy-Require` (RFC 3261 §20.29).
    ProxyRequire,
    /// `Record-Route` (RFC 3261 §20.30).
    RecordRoute,
    /// `Require` (RFC 3261 §20.32).
    Require,
    /// `Route` (RFC 3261 §20.34).
    Route,
    /// `Subject`, compact `s` (RFC 3261 §20.36).
    Subject,
    /// `Supported`, compact `k` (RFC 3261 §20.37).
    Supported,
    /// `To`, compact `t` (RFC 3261 §20.39).
    To,
    /// `Unsupported` (RFC 3261 §20.40).
    Unsupported,
    /// `User-Agent` (RFC 3261 §20.41).
    UserAgent,
    /// `Via`, compact `v` (RFC 3261 §20.42).
    Via,
    /// `WWW-Authenticate` (RFC 3261 §20.44): a registrar's or UAS's digest challenge.
    WwwAuthenticate,
    /// `Event`, compact `o` (RFC 6665).
    Event,
    /// `Refer-To`, compact `r` (RFC 3515).
    ReferTo,
    /// `Referred-By`, compact `b` (RFC 3892).
    ReferredBy,
    /// `Allow-Events`, compact `u` (RFC 6665).
    AllowEvents,
    /// `Session-Expires`, compact `x` (RFC 4028).
    SessionExpires,
    /// `Date` (RFC 3261 §20.17).
    Date,
    /// `P-Asserted-Identity` (RFC 3325).
    PAssertedIdentity,
    /// Any other name; the name as written is in [`Header::name_span`](crate::message::Header::name_span).
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
