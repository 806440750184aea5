//! What a web listener answers to plain HTTP requests (anything but the WebSocket upgrade).

use super::upgrade::Request;

/// The whole HTTP answer to `req`.
pub(crate) fn answer(req: &Request) -> Vec<u8> {
    let (status, body): (&str, &[u8]) = match (req.method.as_str(), req.path.as_str()) {
        ("GET" | "HEAD", _) => ("404 Not Found", b"not found\n"),
        _ => ("405 Method Not Allowed", b"method not allowed\n"),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         X-Content-Type-Options: nosniff\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body);
    }
    out
}
