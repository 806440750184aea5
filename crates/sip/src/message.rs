//! SIP messages (RFC 3261 §7): one parse pass indexes the start line and every header as spans
//! into the received buffer; typed views (`grammar`, `uri`) are built on demand from those spans.
//! The buffer is shared (`Bytes`), so a parsed message costs one `Vec` of spans and no copies,
//! except when a header is folded: then the head is copied once with the folds blanked out.

use crate::grammar::{self, GrammarError, NameAddr, Via};
use crate::header::HeaderName;
use crate::uri::{Scheme, Uri};
use bytes::Bytes;
use std::fmt;

/// Upper bound on a message we accept (head and body); larger ones are refused.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Upper bound on the number of header lines, against memory abuse.
pub const MAX_HEADERS: usize = 256;
/// Longest header field (name, value and folding) a message may carry: no SIP header needs
/// more, and a flood of messages with huge ones (a 30 KB display name) must cost nothing kept.
/// Longer ones get 400; the head-only parse used for error answers still reads them.
pub const MAX_HEADER_LINE: usize = 8 * 1024;

/// Why a message could not be used, with the status a request gets for it (responses are
/// dropped instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The status to answer a request with (400 for most problems, 416, 505 or 513).
    pub status: u16,
    /// The reason phrase for that answer: what was wrong.
    pub reason: &'static str,
}

impl ParseError {
    const fn bad(reason: &'static str) -> Self {
        ParseError {
            status: 400,
            reason,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl From<GrammarError> for ParseError {
    fn from(e: GrammarError) -> Self {
        ParseError::bad(e.0)
    }
}

/// Byte range into the message buffer. Only the parser makes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The span as a byte range of the buffer the message was parsed from.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Methods the server knows; any other token is `Other` (methods are case-sensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `INVITE` (RFC 3261 §13).
    Invite,
    /// `ACK` (RFC 3261 §13.2.2.4, §17.1.1.3).
    Ack,
    /// `BYE` (RFC 3261 §15).
    Bye,
    /// `CANCEL` (RFC 3261 §9).
    Cancel,
    /// `REGISTER` (RFC 3261 §10).
    Register,
    /// `OPTIONS` (RFC 3261 §11).
    Options,
    /// `MESSAGE` (RFC 3428).
    Message,
    /// `INFO` (RFC 6086).
    Info,
    /// `UPDATE` (RFC 3311).
    Update,
    /// `REFER` (RFC 3515).
    Refer,
    /// `NOTIFY` (RFC 6665).
    Notify,
    /// `SUBSCRIBE` (RFC 6665).
    Subscribe,
    /// `PRACK` (RFC 3262).
    Prack,
    /// `PUBLISH` (RFC 3903).
    Publish,
    /// Any other token; the text is in [`Message::method_str`].
    Other,
}

impl Method {
    /// Classifies a method token, case-sensitively (RFC 3261 §7.1): `invite` is `Other`.
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "MESSAGE" => Method::Message,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "PRACK" => Method::Prack,
            "PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }
}

/// The first line of a message (RFC 3261 §7.1, §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// A request line: `Method SP Request-URI SP SIP-Version`.
    Request {
        /// The method, classified.
        method: Method,
        /// The method as written.
        method_span: Span,
        /// The Request-URI as written; [`Message::uri`] parses it.
        uri: Span,
        /// False for `SIP/x.y` other than 2.0: `validate_request` answers 505.
        version_ok: bool,
    },
    /// A status line: `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response {
        /// The status code, 100 to 699.
        code: u16,
        /// The reason phrase as written (may be empty).
        reason: Span,
    },
}

/// One header line: classified name, the name as written, and the trimmed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The name, classified (`Other` for names the server does not interpret).
    pub name: HeaderName,
    /// The name as written, without white space before the colon.
    pub name_span: Span,
    /// The value without surrounding white space (folds are blanked to spaces).
    pub value: Span,
    /// Whole line without its CRLF, for copying it unchanged when forwarding.
    pub line: Span,
}

/// A parsed message. Cheap to clone (the buffer is reference-counted).
#[derive(Clone, Debug)]
pub struct Message {
    buf: Bytes,
    /// Length of the head (start line and headers), checked to be UTF-8 at parse time.
    head_len: u32,
    /// The request or status line.
    pub start: StartLine,
    /// Every header line, in order.
    pub headers: Vec<Header>,
    /// Where the body is in the buffer (empty if there is none); [`Message::body`] reads it.
    pub body: Span,
}

/// How a stream (TCP/TLS) reader should treat its buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// Keep reading: the message is not complete yet.
    Incomplete,
    /// Leading CRLFs to discard (keep-alives, RFC 5626 §4.4.1: a double CRLF ping gets a CRLF pong).
    KeepAlive {
        /// How many leading CR and LF bytes to drop from the buffer.
        consumed: usize,
        /// Whether they hold a double CRLF (a ping), to be answered with one CRLF (a pong).
        ping: bool,
    },
    /// A whole message of this many bytes is at the start of the buffer.
    Message(usize),
    /// The stream cannot be framed any more (bad or missing Content-Length): close it.
    Broken(ParseError),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Finds the message boundary on a stream transport (RFC 3261 §18.3: Content-Length is
/// mandatory there; without it the body is taken as empty).
pub fn frame(buf: &[u8]) -> Framing {
    let lead = buf
        .iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count();
    if lead > 0 {
        if lead == buf.len() && lead < 4 {
            return Framing::Incomplete;
        }
        return Framing::KeepAlive {
            consumed: lead,
            ping: buf[..lead].windows(4).any(|w| w == b"\r\n\r\n"),
        };
    }
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_MESSAGE {
            return Framing::Broken(ParseError::bad("header section too long"));
        }
        return Framing::Incomplete;
    };
    let head = &buf[..head_end + 2];
    let mut len = None;
    for line in head.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim_end();
        if HeaderName::parse(name) == HeaderName::ContentLength {
            let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("");
            match grammar::parse_bounded(value, MAX_MESSAGE as u64) {
                Some(n) if len.is_none_or(|l| l == n) => len = Some(n),
                _ => return Framing::Broken(ParseError::bad("bad Content-Length")),
            }
        }
    }
    let total = head_end + 4 + len.unwrap_or(0) as usize;
    if total > MAX_MESSAGE {
        return Framing::Broken(ParseError::bad("message too large"));
    }
    if buf.len() < total {
        Framing::Incomplete
    } else {
        Framing::Message(total)
    }
}

/// Finds the end of the header section in one pass over the lines: the index where the final
/// CRLF CRLF starts, and whether any header line is folded. `None` if the head is not complete
/// or has a line not ended by CRLF.
fn scan_head(buf: &[u8], lead: usize) -> Option<(usize, bool)> {
    let mut pos = lead;
    let mut folded = false;
    loop {
        let rel = memchr::memchr(b'\n', buf.get(pos..)?)?;
        let nl = pos + rel;
        if rel == 0 || buf[nl - 1] != b'\r' {
            return None;
        }
        if rel == 1 && pos > lead {
            return Some((pos - 2, folded));
        }
        if pos > lead && matches!(buf[pos], b' ' | b'\t') {
            folded = true;
        }
        pos = nl + 1;
    }
}

/// End of the line starting at `pos` (where its CR is), within a scanned head.
fn line_end(head: &[u8], pos: usize) -> usize {
    memchr::memchr(b'\n', &head[pos..]).map_or(head.len(), |i| pos + i - 1)
}

fn is_version(s: &[u8]) -> bool {
    s.len() == 7 && s[..4].eq_ignore_ascii_case(b"SIP/") && &s[4..] == b"2.0"
}

fn looks_like_version(s: &[u8]) -> bool {
    s.len() >= 5 && s[..4].eq_ignore_ascii_case(b"SIP/")
}

impl Message {
    /// Parses one message. `datagram` is true for UDP, where the body runs to the end of the
    /// datagram and bytes past Content-Length are discarded (RFC 3261 §18.3).
    pub fn parse(buf: Bytes, datagram: bool) -> Result<Message, ParseError> {
        Self::parse_inner(buf, datagram, true)
    }

    /// Parses the head only, ignoring Content-Length and tolerating a broken request line, so
    /// that a request that cannot be used (RFC 4475 clerr, ncl, lwsruri) can still be answered
    /// with a 400. Never route on what this returns.
    pub fn parse_head(buf: Bytes) -> Result<Message, ParseError> {
        Self::parse_inner(buf, true, false)
    }

    fn parse_inner(buf: Bytes, datagram: bool, frame_body: bool) -> Result<Message, ParseError> {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError {
                status: 513,
                reason: "Message Too Large",
            });
        }
        let lead = buf
            .iter()
            .take_while(|&&c| c == b'\r' || c == b'\n')
            .count();
        let (head_end, folded) =
            scan_head(&buf, lead).ok_or(ParseError::bad("no end of header section"))?;
        // RFC 3261 §7.3.1 folding: CRLF followed by SP/HT continues the line. Blank the CRLF so
        // spans stay valid and every header is one line (rare: only then is the head copied).
        let buf = if folded {
            let mut copy = buf.to_vec();
            let mut i = lead;
            while i + 2 < head_end + 2 {
                if copy[i] == b'\r' && copy[i + 1] == b'\n' && matches!(copy[i + 2], b' ' | b'\t') {
                    copy[i] = b' ';
                    copy[i + 1] = b' ';
                }
                i += 1;
            }
            Bytes::from(copy)
        } else {
            buf
        };
        let head = &buf[..head_end];
        if std::str::from_utf8(head).is_err() {
            return Err(ParseError::bad("header section is not UTF-8"));
        }
        let first_end = line_end(head, lead);
        let start = match parse_start_line(&buf, lead, first_end) {
            Ok(s) => s,
            // For answering a broken request: keep its headers, whatever its first line.
            Err(_) if !frame_body && !buf[lead..].starts_with(b"SIP/") => {
                let m_end =
                    memchr::memchr(b' ', &buf[lead..first_end]).map_or(first_end, |i| i + lead);
                StartLine::Request {
                    method: Method::Other,
                    method_span: Span::new(lead, m_end),
                    uri: Span::new(m_end, m_end),
                    version_ok: true,
                }
            }
            Err(e) => return Err(e),
        };
        let mut headers = Vec::with_capacity(16);
        let mut pos = first_end + 2;
        while pos < head_end {
            let end = line_end(head, pos);
            let line = &head[pos..end];
            if frame_body && line.len() > MAX_HEADER_LINE {
                return Err(ParseError::bad("header field too long"));
            }
            let colon =
                memchr::memchr(b':', line).ok_or(ParseError::bad("header line without colon"))?;
            let mut name_end = colon;
            while name_end > 0 && matches!(line[name_end - 1], b' ' | b'\t') {
                name_end -= 1;
            }
            let name = &line[..name_end];
            if name.is_empty() || !name.iter().all(|&c| grammar::is_token_char(c)) {
                return Err(ParseError::bad("bad header name"));
            }
            let mut vs = colon + 1;
            while vs < line.len() && matches!(line[vs], b' ' | b'\t') {
                vs += 1;
            }
            let mut ve = line.len();
            while ve > vs && matches!(line[ve - 1], b' ' | b'\t') {
                ve -= 1;
            }
            // SAFETY-free: the head was checked to be UTF-8 and spans end on ASCII bytes.
            let name_str = std::str::from_utf8(name).unwrap_or("");
            headers.push(Header {
                name: HeaderName::parse(name_str),
                name_span: Span::new(pos, pos + name_end),
                value: Span::new(pos + vs, pos + ve),
                line: Span::new(pos, end),
            });
            if headers.len() > MAX_HEADERS {
                return Err(ParseError::bad("too many headers"));
            }
            pos = end + 2;
        }
        let body_start = head_end + 4;
        let mut msg = Message {
            head_len: head_end as u32,
            buf,
            start,
            headers,
            body: Span::new(body_start, body_start),
        };
        if !frame_body {
            return Ok(msg);
        }
        let available = msg.buf.len() - body_start;
        let declared = msg.content_length()?;
        let body_len = match (declared, datagram) {
            (Some(n), _) if n > available => {
                return Err(ParseError::bad("Content-Length larger than the message"))
            }
            (Some(n), _) => n,
            (None, true) => available,
            (None, false) => 0,
        };
        msg.body = Span::new(body_start, body_start + body_len);
        Ok(msg)
    }

    /// Content-Length if present; several that differ, or a bad value, make the body unframeable.
    fn content_length(&self) -> Result<Option<usize>, ParseError> {
        let mut len = None;
        for v in self.values(HeaderName::ContentLength) {
            let n = grammar::parse_bounded(v, MAX_MESSAGE as u64)
                .ok_or(ParseError::bad("bad Content-Length"))? as usize;
            if len.is_some_and(|l| l != n) {
                return Err(ParseError::bad("conflicting Content-Length"));
            }
            len = Some(n);
        }
        Ok(len)
    }

    /// The whole buffer the message was parsed from (ends where the body ends).
    pub fn bytes(&self) -> Bytes {
        self.buf.slice(..self.body.end as usize)
    }

    /// The text of a span of this message; `""` if the span is out of range or not UTF-8.
    pub fn text(&self, span: Span) -> &str {
        let (start, end) = (span.start as usize, span.end as usize);
        let head = &self.buf[..self.head_len as usize];
        // str::is_char_boundary for bytes: not a UTF-8 continuation byte.
        let boundary =
            |i: usize| i == head.len() || head.get(i).is_some_and(|&b| (b as i8) >= -0x40);
        if start <= end && end <= head.len() && boundary(start) && boundary(end) {
            // SAFETY: `head` was checked to be UTF-8 once at parse time, and a sub-slice of
            // valid UTF-8 that starts and ends on character boundaries is valid UTF-8.
            // Checking two bytes instead of the whole span on every header access saved 2.5%
            // of a REGISTER (callgrind).
            return unsafe { std::str::from_utf8_unchecked(&head[start..end]) };
        }
        self.buf
            .get(start..end)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The body: up to Content-Length, or to the end of a datagram without it.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.range()]
    }

    /// True for a request, false for a response.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request; `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method of a request as written (the text of an `Other`); `""` for a response.
    pub fn method_str(&self) -> &str {
        match self.start {
            StartLine::Request { method_span, .. } => self.text(method_span),
            StartLine::Response { .. } => "",
        }
    }

    /// The status code of a response; `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response; `""` for a request.
    pub fn reason(&self) -> &str {
        match self.start {
            StartLine::Response { reason, .. } => self.text(reason),
            StartLine::Request { .. } => "",
        }
    }

    /// The Request-URI as written; `""` for a response.
    pub fn uri_str(&self) -> &str {
        match self.start {
            StartLine::Request { uri, .. } => self.text(uri),
            StartLine::Response { .. } => "",
        }
    }

    /// The Request-URI parsed; a 400 error if it does not parse (and for a response, which has
    /// none).
    pub fn uri(&self) -> Result<Uri<'_>, ParseError> {
        Uri::parse(self.uri_str()).map_err(|_| ParseError::bad("bad Request-URI"))
    }

    /// First value of a header.
    pub fn value(&self, name: HeaderName) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| self.text(h.value))
    }

    /// Every value of a header, in order (each may still hold a comma list).
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| self.text(h.value))
    }

    /// Value of an unclassified header by name (case-insensitive).
    pub fn other_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| {
                h.name == HeaderName::Other && self.text(h.name_span).eq_ignore_ascii_case(name)
            })
            .map(|h| self.text(h.value))
    }

    /// The Call-ID; `""` when there is none.
    pub fn call_id(&self) -> &str {
        self.value(HeaderName::CallId).unwrap_or("")
    }

    /// CSeq number and method; `validate` has checked it for requests.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        self.value(HeaderName::CSeq)
            .and_then(|v| grammar::parse_cseq(v).ok())
    }

    /// The From header as one name-addr; `None` if absent or it does not parse.
    pub fn from(&self) -> Option<NameAddr<'_>> {
        self.value(HeaderName::From)
            .and_then(|v| NameAddr::parse_single(v).ok())
    }

    /// The To header as one name-addr; `None` if absent or it does not parse.
    pub fn to(&self) -> Option<NameAddr<'_>> {
        self.value(HeaderName::To)
            .and_then(|v| NameAddr::parse_single(v).ok())
    }

    /// The topmost Via element (the previous hop, where responses go); `None` if absent or it
    /// does not parse.
    pub fn top_via(&self) -> Option<Via<'_>> {
        let v = self.value(HeaderName::Via)?;
        Via::parse_one(v).ok().map(|(via, _)| via)
    }

    /// All Via elements in order, across header lines.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, GrammarError>> {
        self.values(HeaderName::Via).flat_map(grammar::via_list)
    }

    /// Max-Forwards (RFC 3261 §20.22); `None` if absent or not a number up to 255.
    pub fn max_forwards(&self) -> Option<u8> {
        self.value(HeaderName::MaxForwards)
            .and_then(|v| grammar::parse_bounded(v, 255))
            .map(|n| n as u8)
    }

    /// Checks what the server relies on in a request (RFC 3261 §8.2, §16.3), so that later
    /// steps can read these headers without error handling. The returned error carries the
    /// status to answer with.
    pub fn validate_request(&self) -> Result<(), ParseError> {
        let method = self.method_str();
        if let StartLine::Request {
            version_ok: false, ..
        } = self.start
        {
            return Err(ParseError {
                status: 505,
                reason: "Version Not Supported",
            });
        }
        self.check_singletons()?;
        for h in [
            HeaderName::To,
            HeaderName::From,
            HeaderName::CallId,
            HeaderName::CSeq,
        ] {
            if self.value(h).is_none() {
                return Err(ParseError::bad(match h {
                    HeaderName::To => "missing To",
                    HeaderName::From => "missing From",
                    HeaderName::CallId => "missing Call-ID",
                    _ => "missing CSeq",
                }));
            }
        }
        let mut vias = 0;
        for via in self.vias() {
            via?;
            vias += 1;
        }
        if vias == 0 {
            return Err(ParseError::bad("missing Via"));
        }
        let (_, cseq_method) = grammar::parse_cseq(self.value(HeaderName::CSeq).unwrap_or(""))?;
        if cseq_method != method {
            return Err(ParseError::bad("CSeq method does not match the request"));
        }
        if let Some(mf) = self.value(HeaderName::MaxForwards) {
            grammar::parse_bounded(mf, 255).ok_or(ParseError::bad("bad Max-Forwards"))?;
        }
        if self
            .value(HeaderName::CallId)
            .is_some_and(|c| c.is_empty() || c.contains([' ', '\t']))
        {
            return Err(ParseError::bad("bad Call-ID"));
        }
        NameAddr::parse_single(self.value(HeaderName::To).unwrap_or(""))?;
        NameAddr::parse_single(self.value(HeaderName::From).unwrap_or(""))?;
        for v in self.values(HeaderName::Contact) {
            if v.trim() == "*" {
                continue;
            }
            for c in grammar::name_addr_list(v) {
                c?;
            }
        }
        for name in [HeaderName::Route, HeaderName::RecordRoute] {
            for v in self.values(name) {
                for r in grammar::name_addr_list(v) {
                    r?;
                }
            }
        }
        let uri = self.uri()?;
        if uri.is_sip() && uri.headers.is_some() {
            // RFC 4475 escruri: headers in a Request-URI are never turned into real headers.
            return Err(ParseError::bad("Request-URI carries headers"));
        }
        if !uri.is_sip() && !matches!(uri.scheme, Scheme::Tel) {
            return Err(ParseError {
                status: 416,
                reason: "Unsupported URI Scheme",
            });
        }
        Ok(())
    }

    /// Checks what matching a response to its transaction needs (RFC 3261 §17.1.3: top Via
    /// and CSeq) and that it names its dialog (To, From); a bad one is dropped. The rest of it
    /// is the next hop's business: a proxy passes responses on.
    pub fn validate_response(&self) -> Result<(), ParseError> {
        self.check_singletons()?;
        grammar::parse_cseq(self.value(HeaderName::CSeq).unwrap_or(""))?;
        self.top_via().ok_or(ParseError::bad("missing Via"))?;
        NameAddr::parse_single(self.value(HeaderName::To).unwrap_or(""))?;
        NameAddr::parse_single(self.value(HeaderName::From).unwrap_or(""))?;
        Ok(())
    }

    /// Whether there is a Via after the first one (a second header line, or a second element
    /// on the first line), without parsing them all.
    pub fn has_second_via(&self) -> bool {
        let mut lines = self.values(HeaderName::Via);
        let Some(first) = lines.next() else {
            return false;
        };
        lines.next().is_some() || grammar::via_list(first).nth(1).is_some()
    }

    fn check_singletons(&self) -> Result<(), ParseError> {
        for (i, h) in self.headers.iter().enumerate() {
            if h.name.is_single()
                && self.headers[..i]
                    .iter()
                    .any(|p| p.name == h.name && self.text(p.value) != self.text(h.value))
            {
                return Err(ParseError::bad("header repeated with different values"));
            }
        }
        Ok(())
    }
}

fn parse_start_line(buf: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &buf[start..end];
    let mut parts = line.splitn(3, |&c| c == b' ');
    let first = parts.next().unwrap_or_default();
    let second = parts.next().ok_or(ParseError::bad("bad start line"))?;
    let third = parts.next().ok_or(ParseError::bad("bad start line"))?;
    if looks_like_version(first) {
        if !is_version(first) {
            return Err(ParseError::bad("unsupported SIP version in response"));
        }
        if second.len() != 3 || !second.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::bad("bad status code"));
        }
        let code = (second[0] - b'0') as u16 * 100
            + (second[1] - b'0') as u16 * 10
            + (second[2] - b'0') as u16;
        if !(100..700).contains(&code) {
            return Err(ParseError::bad("status code out of range"));
        }
        let rs = start + first.len() + 5;
        return Ok(StartLine::Response {
            code,
            reason: Span::new(rs, end),
        });
    }
    if first.is_empty() || !first.iter().all(|&c| grammar::is_token_char(c)) {
        return Err(ParseError::bad("bad method"));
    }
    if second.is_empty() || third.contains(&b' ') {
        return Err(ParseError::bad("bad request line"));
    }
    if !looks_like_version(third) {
        return Err(ParseError::bad("bad request line"));
    }
    let method_str = std::str::from_utf8(first).unwrap_or("");
    let us = start + first.len() + 1;
    Ok(StartLine::Request {
        method: Method::parse(method_str),
        method_span: Span::new(start, start + first.len()),
        uri: Span::new(us, us + second.len()),
        version_ok: is_version(third),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@example.org SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.org>\r\n\
From: Alice <sip:alice@example.org>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.org\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_a_request() {
        let m = Message::parse(Bytes::from_static(INVITE.as_bytes()), true).unwrap();
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.uri_str(), "sip:bob@example.org");
        assert_eq!(m.call_id(), "a84b4c76e66710@pc33.example.org");
        assert_eq!(m.cseq(), Some((314159, "INVITE")));
        assert_eq!(m.body(), b"v=0\n");
        assert_eq!(m.from().unwrap().tag(), Some("1928301774"));
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(m.max_forwards(), Some(70));
        m.validate_request().unwrap();
    }

    #[test]
    fn folding_and_compact_forms() {
        let raw = "OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\nt: <sip:a@b>\r\n\
f: <sip:c@d>\r\n ;tag=1\r\ni: x\r\nCSeq: 1\r\n\tOPTIONS\r\nl: 0\r\n\r\n";
        let m = Message::parse(Bytes::copy_from_slice(raw.as_bytes()), true).unwrap();
        assert_eq!(m.from().unwrap().tag(), Some("1"));
        assert_eq!(m.cseq(), Some((1, "OPTIONS")));
        m.validate_request().unwrap();
    }

    #[test]
    fn stream_framing() {
        let raw = INVITE.as_bytes();
        assert_eq!(frame(raw), Framing::Message(raw.len()));
        assert_eq!(frame(&raw[..raw.len() - 1]), Framing::Incomplete);
        assert_eq!(frame(&raw[..40]), Framing::Incomplete);
        assert_eq!(
            frame(b"\r\n\r\nINV"),
            Framing::KeepAlive {
                consumed: 4,
                ping: true
            }
        );
        assert_eq!(frame(b"\r\n"), Framing::Incomplete);
        let bad = INVITE.replace("Content-Length: 4", "Content-Length: -4");
        assert!(matches!(frame(bad.as_bytes()), Framing::Broken(_)));
    }

    #[test]
    fn responses() {
        let raw =
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nTo: <sip:a@b>;tag=2\r\n\
From: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(Bytes::copy_from_slice(raw.as_bytes()), true).unwrap();
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.reason(), "Ringing");
        m.validate_response().unwrap();
        assert!(Message::parse(Bytes::from_static(b"SIP/2.0 4294967301 x\r\n\r\n"), true).is_err());
        assert!(Message::parse(Bytes::from_static(b"SIP/2.0 099 x\r\n\r\n"), true).is_err());
    }

    #[test]
    fn every_prefix_is_safe() {
        let raw = INVITE.as_bytes();
        for n in 0..raw.len() {
            let _ = Message::parse(Bytes::copy_from_slice(&raw[..n]), true)
                .map(|m| m.validate_request());
            let _ = frame(&raw[..n]);
        }
    }
}
