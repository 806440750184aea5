//! What a web listener answers to plain HTTP requests (anything but the WebSocket upgrade):
//! the softphone page, built from `web/` into the binary (see `build.rs`), and
//! `config.json`, the one thing the page needs before login (the domain). Nothing here
//! depends on who asks: the directory and TURN credentials come after login, over SIP.

use super::upgrade::Request;

const INDEX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/index.html"));
const STYLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/style.css"));
const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/softphone.js"));

/// The page may load only its own files and talk only to its own origin (the WebSocket
/// included); media goes through WebRTC, which CSP does not govern.
const SECURITY_HEADERS: &str = "Content-Security-Policy: default-src 'self'; connect-src 'self'; \
     img-src 'self' data:; media-src 'self' blob:; frame-ancestors 'none'\r\n\
     X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
     Cache-Control: no-cache\r\n";

/// The whole HTTP answer to `req`, for a server of `domain`.
pub(crate) fn answer(req: &Request, domain: &str) -> Vec<u8> {
    if req.method != "GET" && req.method != "HEAD" {
        return reply(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            b"method not allowed\n",
            req,
        );
    }
    match req.path.as_str() {
        "/" | "/index.html" => reply("200 OK", "text/html; charset=utf-8", INDEX, req),
        "/style.css" => reply("200 OK", "text/css; charset=utf-8", STYLE, req),
        "/softphone.js" => reply("200 OK", "text/javascript; charset=utf-8", SCRIPT, req),
        "/config.json" => {
            let body = serde_json::json!({ "domain": domain }).to_string();
            reply("200 OK", "application/json", body.as_bytes(), req)
        }
        _ => reply(
            "404 Not Found",
            "text/plain; charset=utf-8",
            b"not found\n",
            req,
        ),
    }
}

fn reply(status: &str, content_type: &str, body: &[u8], req: &Request) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {SECURITY_HEADERS}\r\n",
        body.len()
    )
    .into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::upgrade::{parse_head, Head};

    fn get(path: &str) -> String {
        let text = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        let Head::Request(req) = parse_head(text.as_bytes()) else {
            panic!("a request");
        };
        String::from_utf8_lossy(&answer(&req, "example.test")).into_owned()
    }

    #[test]
    fn the_page_its_files_and_its_config_are_served_with_a_strict_policy() {
        let page = get("/");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"));
        assert!(page.contains("Content-Security-Policy: default-src 'self'"));
        assert!(page.contains("<title>hedgewitch"));
        assert!(get("/softphone.js").contains("Content-Type: text/javascript"));
        let config = get("/config.json");
        assert!(
            config.ends_with("{\"domain\":\"example.test\"}"),
            "{config}"
        );
        assert!(get("/../etc/passwd").starts_with("HTTP/1.1 404"));
    }
}
