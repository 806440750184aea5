//! The HTTP/1.1 request heads a web listener reads (RFC 9112), and the one among them that
//! opens a SIP WebSocket (RFC 6455 §4.2, RFC 7118 §4): what a head asks for, whether its
//! Origin may, and the answers. Pure functions over bytes; the socket work is in `mod.rs`.

/// The longest request head read; a longer one is refused (431) and the connection closed.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Header fields in one head, at most.
const MAX_FIELDS: usize = 48;

/// What a head in a buffer turned out to be.
#[derive(Debug)]
pub(crate) enum Head {
    /// More bytes are needed.
    Incomplete,
    /// Not HTTP, or over the limits: answer this status and close.
    Refused(u16, &'static str),
    /// A whole head.
    Request(Request),
}

/// The parts of a request head the server acts on.
#[derive(Debug, Default, Clone)]
pub(crate) struct Request {
    /// `GET`, `HEAD`, `POST`...
    pub(crate) method: String,
    /// The path, without its query.
    pub(crate) path: String,
    /// The Host field.
    pub(crate) host: Option<String>,
    /// The Origin field (browsers send it with every WebSocket request).
    pub(crate) origin: Option<String>,
    /// `Upgrade: websocket` and `Connection: upgrade` were both there.
    pub(crate) wants_websocket: bool,
    /// Sec-WebSocket-Key.
    pub(crate) key: Option<String>,
    /// Sec-WebSocket-Version.
    pub(crate) version: Option<String>,
    /// The subprotocols offered (Sec-WebSocket-Protocol, all fields).
    pub(crate) protocols: Vec<String>,
    /// The Authorization field.
    pub(crate) authorization: Option<String>,
    /// Content-Length (0 when absent).
    pub(crate) content_length: usize,
    /// HTTP/1.0, or `Connection: close`: answer and close.
    pub(crate) close: bool,
    /// Bytes the head took in the buffer.
    pub(crate) len: usize,
}

/// Reads the request head at the start of `buf`.
pub(crate) fn parse_head(buf: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Head::Refused(431, "Request Header Fields Too Large")
        }
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Refused(431, "Request Header Fields Too Large")
        }
        Err(_) => return Head::Refused(400, "Bad Request"),
    };
    if len > MAX_HEAD {
        return Head::Refused(431, "Request Header Fields Too Large");
    }
    let target = req.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(p, _query)| p);
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        close: req.version == Some(0),
        len,
        ..Request::default()
    };
    let (mut upgrade, mut connection_upgrade) = (false, false);
    for f in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(f.value) else {
            continue;
        };
        let value = value.trim();
        let tokens = || value.split(',').map(str::trim);
        match f.name.to_ascii_lowercase().as_str() {
            "host" => out.host = Some(value.to_string()),
            "origin" => out.origin = Some(value.to_string()),
            "upgrade" => upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("websocket")),
            "connection" => {
                connection_upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("upgrade"));
                out.close |= tokens().any(|t| t.eq_ignore_ascii_case("close"));
            }
            "sec-websocket-key" => out.key = Some(value.to_string()),
            "sec-websocket-version" => out.version = Some(value.to_string()),
            "sec-websocket-protocol" => out
                .protocols
                .extend(tokens().map(|t| t.to_ascii_lowercase())),
            "authorization" => out.authorization = Some(value.to_string()),
            "content-length" => match value.parse() {
                Ok(n) => out.content_length = n,
                Err(_) => return Head::Refused(400, "Bad Request"),
            },
            _ => {}
        }
    }
    out.wants_websocket = upgrade && connection_upgrade;
    Head::Request(out)
}

/// Whether a page from `origin` may open a SIP WebSocket here: when it is this listener's
/// own origin (`Host` over this scheme), or named in `allowed` (`*` allows any). A request
/// without Origin is not from a browser page (browsers always send it), and Origin protects
/// only browsers' users: it passes.
pub(crate) fn origin_allowed(req: &Request, allowed: &[String], secure: bool) -> bool {
    let Some(origin) = req.origin.as_deref() else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let scheme = if secure { "https" } else { "http" };
    req.host.as_deref().is_some_and(|host| {
        let own = format!("{scheme}://{host}");
        own.eq_ignore_ascii_case(origin)
            || strip_default_port(&own, secure).eq_ignore_ascii_case(origin)
    })
}

/// `https://h:443` as browsers write it: `https://h`.
fn strip_default_port(origin: &str, secure: bool) -> &str {
    let default = if secure { ":443" } else { ":80" };
    origin.strip_suffix(default).unwrap_or(origin)
}

/// The answer to a WebSocket upgrade request: the 101 that opens it (RFC 6455 §4.2.2, with
/// the `sip` subprotocol of RFC 7118), or why not.
pub(crate) fn upgrade_answer(
    req: &Request,
    allowed_origins: &[String],
    secure: bool,
) -> Result<String, (u16, &'static str)> {
    if req.method != "GET" {
        return Err((405, "Method Not Allowed"));
    }
    if req.path != "/" {
        return Err((404, "Not Found"));
    }
    if req.version.as_deref() != Some("13") {
        return Err((426, "Upgrade Required"));
    }
    let Some(key) = req.key.as_deref() else {
        return Err((400, "Bad Request"));
    };
    if !req.protocols.iter().any(|p| p == "sip") {
        return Err((400, "Bad Request"));
    }
    if !origin_allowed(req, allowed_origins, secure) {
        return Err((403, "Forbidden"));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
    ))
}

/// A short answer with no body, that closes the connection.
pub(crate) fn refusal(code: u16, reason: &str) -> String {
    let extra = if code == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!("HTTP/1.1 {code} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Request {
        match parse_head(text.as_bytes()) {
            Head::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: sip.example.test:8443\r\n\
        Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Protocol: sip\r\nOrigin: https://sip.example.test:8443\r\n\r\n";

    #[test]
    fn a_browser_upgrade_from_the_servers_own_page_is_accepted_with_the_sip_subprotocol() {
        let r = head(UPGRADE);
        assert!(r.wants_websocket);
        assert_eq!(r.len, UPGRADE.len());
        let answer = upgrade_answer(&r, &[], true).expect("accepted");
        // RFC 6455 §1.3's worked example.
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(answer.contains("Sec-WebSocket-Protocol: sip\r\n"));
        // The same page over plain HTTP is another origin.
        assert_eq!(upgrade_answer(&r, &[], false), Err((403, "Forbidden")));
    }

    #[test]
    fn a_foreign_origin_needs_to_be_listed() {
        let r = head(&UPGRADE.replace(
            "Origin: https://sip.example.test:8443",
            "Origin: https://evil.example",
        ));
        assert_eq!(upgrade_answer(&r, &[], true), Err((403, "Forbidden")));
        let listed = ["https://evil.example/".to_string()];
        assert!(upgrade_answer(&r, &listed, true).is_ok());
        assert!(upgrade_answer(&r, &["*".to_string()], true).is_ok());
        // Not from a browser: no Origin at all.
        let r = head(&UPGRADE.replace("Origin: https://sip.example.test:8443\r\n", ""));
        assert!(upgrade_answer(&r, &[], true).is_ok());
    }

    #[test]
    fn default_ports_are_left_out_of_origins_as_browsers_do() {
        let r = head(
            &UPGRADE
                .replace(
                    "sip.example.test:8443\r\nUpgrade",
                    "sip.example.test:443\r\nUpgrade",
                )
                .replace(
                    "Origin: https://sip.example.test:8443",
                    "Origin: https://sip.example.test",
                ),
        );
        assert!(upgrade_answer(&r, &[], true).is_ok());
    }

    #[test]
    fn wrong_upgrades_get_the_right_http_error() {
        let no_sip = head(&UPGRADE.replace("Sec-WebSocket-Protocol: sip\r\n", ""));
        assert_eq!(
            upgrade_answer(&no_sip, &[], true),
            Err((400, "Bad Request"))
        );
        let v8 = head(&UPGRADE.replace("Version: 13", "Version: 8"));
        assert_eq!(
            upgrade_answer(&v8, &[], true),
            Err((426, "Upgrade Required"))
        );
        assert!(refusal(426, "Upgrade Required").contains("Sec-WebSocket-Version: 13"));
        let path = head(&UPGRADE.replace("GET / ", "GET /ws "));
        assert_eq!(upgrade_answer(&path, &[], true), Err((404, "Not Found")));
        let multi = head(&UPGRADE.replace("Protocol: sip", "Protocol: xmpp, SIP"));
        assert!(upgrade_answer(&multi, &[], true).is_ok());
    }

    #[test]
    fn heads_over_the_limits_or_not_http_are_refused() {
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a"),
            Head::Incomplete
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(parse_head(long.as_bytes()), Head::Refused(431, _)));
        let many: String = (0..MAX_FIELDS + 1)
            .map(|i| format!("X{i}: y\r\n"))
            .collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse_head(text.as_bytes()), Head::Refused(431, _)));
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Head::Refused(400, _)
        ));
        let r = head("GET /app.js?v=2 HTTP/1.0\r\n\r\n");
        assert_eq!((r.path.as_str(), r.close), ("/app.js", true));
    }
}
