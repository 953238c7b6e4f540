//! HTTP/1.1 message heads for the relay (`relay.rs`), parsed with `httparse`: which requests
//! the relay may take (everything else goes to hyper), how an answer's body is framed (RFC
//! 9112 §6.3), a strict chunked decoder, and the heads the relay writes.

use super::{CSP, HOP_BY_HOP, REQUEST_ID, RESPONSE_DROPPED};
use std::ops::Range;

/// Most headers in a head the relay reads (more: the request goes to hyper, an answer is
/// refused).
const MAX_HEADERS: usize = 100;

/// Largest answer head read (an answer with a larger one is refused).
pub(super) const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// Largest chunk-size line or trailer section of a chunked answer.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// A request the relay takes: `GET` or `HEAD` in origin form, HTTP/1.1, no body (neither
/// `Content-Length` nor `Transfer-Encoding`), no `Expect` or `Upgrade`, exactly one `Host`,
/// and none of the headers a browser sends (`Origin`, `Referer`, `Sec-Fetch-Site`: those
/// requests get the full check on hyper's path). Ranges index the buffer the head was
/// parsed from.
#[derive(Debug)]
pub(super) struct Plan {
    /// Length of the head, with its final empty line.
    pub(super) len: usize,
    /// `HEAD` (else `GET`).
    pub(super) head: bool,
    /// The request target (`/id/path?query`).
    pub(super) target: Range<usize>,
    /// The `Host` value.
    pub(super) host: Range<usize>,
    /// The first `Authorization` value.
    pub(super) authorization: Option<Range<usize>>,
    /// The `X-Request-Id` value.
    pub(super) request_id: Option<Range<usize>>,
    /// The headers to forward (name, value).
    pub(super) forward: Vec<(Range<usize>, Range<usize>)>,
    /// The caller asked to close after this answer (`Connection: close`).
    pub(super) close: bool,
}

/// What the buffer holds.
#[derive(Debug)]
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request for hyper's path (or not HTTP/1.1 at all).
    Elsewhere,
    /// A request the relay takes.
    Relay(Plan),
}

fn range(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Names a browser adds that need the cross-site checks, and headers that give a request a
/// body or change the exchange.
const ELSEWHERE: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "expect",
    "upgrade",
    "origin",
    "referer",
    "sec-fetch-site",
];

/// Parses the request head at the start of `buf`.
pub(super) fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Elsewhere,
    };
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parsed::Elsewhere,
    };
    let target = req.path.unwrap_or_default();
    if req.version != Some(1) || !target.starts_with('/') {
        return Parsed::Elsewhere;
    }
    let mut plan = Plan {
        len,
        head,
        target: range(buf, target.as_bytes()),
        host: 0..0,
        authorization: None,
        request_id: None,
        forward: Vec::with_capacity(req.headers.len()),
        close: false,
    };
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if ELSEWHERE.iter().any(|n| is(n)) {
            return Parsed::Elsewhere;
        }
        if is("host") {
            hosts += 1;
            plan.host = range(buf, h.value);
        } else if is("authorization") {
            plan.authorization.get_or_insert(range(buf, h.value));
        } else if is(REQUEST_ID) {
            plan.request_id.get_or_insert(range(buf, h.value));
            continue;
        } else if is("connection") {
            // Names listed here would be hop-by-hop too: such requests take hyper's path.
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    plan.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    return Parsed::Elsewhere;
                }
            }
        }
        if !HOP_BY_HOP.iter().any(|n| is(n)) {
            plan.forward
                .push((range(buf, name.as_bytes()), range(buf, h.value)));
        }
    }
    if hosts != 1 {
        return Parsed::Elsewhere;
    }
    Parsed::Relay(plan)
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (an answer to `HEAD`, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// An answer head read from the server.
#[derive(Debug)]
pub(super) struct Answer {
    /// Length of the head.
    pub(super) len: usize,
    /// The status code.
    pub(super) status: u16,
    /// The headers to return (name, value), framing headers excluded.
    pub(super) headers: Vec<(Range<usize>, Range<usize>)>,
    /// The body's framing.
    pub(super) framing: Framing,
    /// The `Content-Length` of a bodiless answer (to `HEAD`, or a 304), returned as is.
    pub(super) declared_length: Option<u64>,
    /// Whether the connection may carry another request after this answer.
    pub(super) reusable: bool,
    /// Whether the server sent a `Date` (else the proxy adds one, RFC 9110 §6.6.1).
    pub(super) dated: bool,
}

/// What the answer buffer holds.
#[derive(Debug)]
pub(super) enum AnswerHead {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) answer of this length, to skip.
    Interim(usize),
    /// The final answer's head.
    Final(Answer),
}

/// Parses the answer head at the start of `buf` to a request that was a `HEAD` or not.
pub(super) fn parse_answer(buf: &[u8], to_head: bool) -> Result<AnswerHead, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER_HEAD => {
            return Err("the answer's head is larger than 64 KiB".into())
        }
        Ok(httparse::Status::Partial) => return Ok(AnswerHead::Partial),
        Err(e) => return Err(format!("the server's answer is not HTTP/1.1 ({e})")),
    };
    let status = resp.code.unwrap_or_default();
    if status < 100 {
        return Err(format!("the server's status {status:03} is not a status"));
    }
    if status == 101 {
        return Err("the server switched protocols unasked".into());
    }
    if (100..200).contains(&status) {
        return Ok(AnswerHead::Interim(len));
    }
    let listed: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let mut reusable =
        resp.version == Some(1) && !listed.iter().any(|t| t.eq_ignore_ascii_case(b"close"));
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut dated = false;
    let mut out = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            // A list of one value repeated is that value (RFC 9110 §8.6).
            for v in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let n = std::str::from_utf8(v)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("the answer's Content-Length is not a number")?;
                if length.is_some_and(|l| l != n) {
                    return Err("the answer has two different Content-Lengths".into());
                }
                length = Some(n);
            }
        } else if is("transfer-encoding") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") || chunked {
                return Err("the answer's Transfer-Encoding is not just chunked".into());
            }
            chunked = true;
        } else if returnable(name, &listed) {
            dated |= is("date");
            out.push((range(buf, name.as_bytes()), range(buf, h.value)));
        }
    }
    let bodiless = to_head || status == 204 || status == 304;
    let framing = match (bodiless, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, true, l) => {
            // Both: Transfer-Encoding wins (RFC 9112 §6.3), and the connection is not reused.
            reusable &= l.is_none();
            Framing::Chunked
        }
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => {
            reusable = false;
            Framing::Close
        }
    };
    Ok(AnswerHead::Final(Answer {
        len,
        status,
        headers: out,
        framing,
        // A 204 has no length to declare (RFC 9110 §8.6).
        declared_length: if (to_head || status == 304) && !chunked {
            length
        } else {
            None
        },
        reusable,
        dated,
    }))
}

/// Whether an answer header goes back to the caller: not hop-by-hop (or listed in
/// `Connection`), nothing that acts on the proxy's origin, and not the headers the proxy sets.
fn returnable(name: &str, listed: &[&[u8]]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    !HOP_BY_HOP.iter().any(|n| is(n))
        && !RESPONSE_DROPPED.iter().any(|n| is(n))
        && !listed
            .iter()
            .any(|l| l.eq_ignore_ascii_case(name.as_bytes()))
        && !name
            .get(..15)
            .is_some_and(|p| p.eq_ignore_ascii_case("access-control-"))
        && !is(REQUEST_ID)
        && !is("x-content-type-options")
}

/// Writes `name: value\r\n` with the name in lowercase.
pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the head of the answer to the caller: the status line, the returnable headers of
/// `answer` (from `buf`), its framing, the hardening headers and the request id.
pub(super) fn answer_head(
    out: &mut Vec<u8>,
    answer: &Answer,
    buf: &[u8],
    request_id: &[u8],
    close: bool,
) {
    let reason = http::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(answer.status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in &answer.headers {
        header(out, &buf[n.clone()], &buf[v.clone()]);
    }
    match (answer.framing, answer.declared_length) {
        (Framing::Length(n), _) | (Framing::Empty, Some(n)) => {
            header(out, b"content-length", n.to_string().as_bytes())
        }
        // A body the server ends by closing goes on chunked: its end is then the final
        // chunk, and a cut-off one cannot look complete.
        (Framing::Chunked | Framing::Close, _) => header(out, b"transfer-encoding", b"chunked"),
        (Framing::Empty, None) => {}
    }
    if close {
        header(out, b"connection", b"close");
    }
    if !answer.dated {
        header(out, b"date", http_date().as_bytes());
    }
    header(out, b"x-content-type-options", b"nosniff");
    header(out, b"content-security-policy", CSP.as_bytes());
    header(out, REQUEST_ID.as_bytes(), request_id);
    out.extend_from_slice(b"\r\n");
}

/// The current time as an HTTP date.
pub(super) fn http_date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// A strict decoder of a chunked body (RFC 9112 §7.1): sizes in hex with optional
/// extensions (ignored), each chunk followed by CRLF, trailers skipped.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// One step of [`Chunks::next`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Data bytes (this range of the buffer, to be consumed by the caller).
    Data(Range<usize>),
    /// More input is needed.
    More,
    /// The body ended (the final chunk and the trailers consumed).
    Done,
}

impl Chunks {
    /// Whether the last chunk and the trailers have been read.
    #[cfg(test)]
    pub(super) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from the start of `buf`: returns how many bytes it used (the caller drops
    /// them from `buf` after taking the data) and what it found.
    pub(super) fn next(&mut self, buf: &[u8]) -> Result<(usize, Chunk), String> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            match self.state {
                ChunkState::Done => return Ok((used, Chunk::Done)),
                ChunkState::Size => {
                    let Some(end) = find_crlf(rest, MAX_CHUNK_LINE)? else {
                        return Ok((used, Chunk::More));
                    };
                    let line = &rest[..end];
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = parse_hex(digits.trim_ascii_end())?;
                    used += end + 2;
                    self.state = match size {
                        0 => ChunkState::Trailers(0),
                        n => ChunkState::Data(n),
                    };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok((used, Chunk::More));
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok((used + n, Chunk::Data(used..used + n)));
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok((used, Chunk::More));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("a chunk does not end with CRLF".into());
                    }
                    used += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(seen) => {
                    let limit = MAX_TRAILERS.saturating_sub(seen);
                    let Some(end) = find_crlf(rest, limit)? else {
                        return Ok((used, Chunk::More));
                    };
                    if seen + end + 2 > MAX_TRAILERS {
                        return Err("the trailers are too long".into());
                    }
                    used += end + 2;
                    self.state = if end == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Trailers(seen + end + 2)
                    };
                }
            }
        }
    }
}

/// The index of the first CRLF in `buf`; an error when none is within `limit` bytes or a
/// bare CR or LF comes first.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, String> {
    match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if i > limit => Err("a chunk-size line or the trailers are too long".into()),
        Some(i) if buf[i] == b'\n' => Err("a bare LF in a chunked body".into()),
        Some(i) if i + 1 < buf.len() => match buf[i + 1] {
            b'\n' => Ok(Some(i)),
            _ => Err("a bare CR in a chunked body".into()),
        },
        // (A CR last in the buffer may be the end of a line of just `limit` bytes.)
        _ if buf.len() > limit + 1 => Err("a chunk-size line or the trailers are too long".into()),
        _ => Ok(None),
    }
}

fn parse_hex(digits: &[u8]) -> Result<u64, String> {
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("a chunk size is not a hexadecimal number".into());
    }
    let text = std::str::from_utf8(digits).map_err(|e| e.to_string())?;
    u64::from_str_radix(text, 16).map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
