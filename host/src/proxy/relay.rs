//! The proxy's fast path: each accepted connection is served here first. A plain `GET` or
//! `HEAD` (see [`h1::Plan`]) that names the proxy, carries its token and names a connection
//! whose requests go straight to the server is relayed by hand: its head is rewritten with
//! the connection's credentials and written to a pooled HTTP/1.1 connection, and the answer's
//! head and body come back through the same filters as on hyper's path, without a task,
//! channel or header map per request. Anything else (a body, a browser's headers, a refusal
//! to give, a connection with a client identity, a signer or an HTTP proxy) hands the
//! connection, with every byte not yet used, to hyper's server and [`guard::forward`] for
//! the rest of its life: every refusal and every error answer is written by one code path.

use super::guard::{self, ProxyState};
use super::h1::{self, AnswerHead, Chunk, Chunks, Framing, Parsed, Plan};
use crate::connection::Connection;
use crate::transport::{TransportError, UpstreamIo, Upstreams};
use bytes::{Buf as _, Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;

/// Largest request head the relay reads before handing the connection to hyper.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Bytes read at a time.
const READ_SIZE: usize = 16 * 1024;

/// Serves one accepted connection until it closes, or until `stop` while it is between
/// requests.
pub(super) async fn serve_connection<IO>(
    mut io: IO,
    st: ProxyState,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut scratch = Scratch::default();
    loop {
        let plan = loop {
            match h1::parse_request(&buf) {
                Parsed::Relay(p) => break Some(p),
                Parsed::Elsewhere => break None,
                Parsed::Partial if buf.len() > MAX_REQUEST_HEAD => break None,
                Parsed::Partial => {}
            }
            buf.reserve(READ_SIZE);
            let read = if buf.is_empty() {
                tokio::select! {
                    r = io.read_buf(&mut buf) => r,
                    _ = stop.wait_for(|s| *s) => return,
                }
            } else {
                io.read_buf(&mut buf).await
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        };
        let ready = match &plan {
            Some(plan) => relayable(&st, &buf, plan).await,
            None => None,
        };
        let (Some(plan), Some((ready, creds))) = (plan, ready) else {
            return hand_over(io, buf.freeze(), st, stop).await;
        };
        // Once the proxy is stopping, this answer is the connection's last.
        let close = plan.close || *stop.borrow();
        let keep = relay(&mut io, &buf, &plan, ready, creds, close, &mut scratch).await;
        buf.advance(plan.len);
        if !keep || close {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Buffers kept for the life of a caller's connection.
#[derive(Default)]
struct Scratch {
    /// What is written to the server or to the caller.
    out: Vec<u8>,
    /// What is read from the server.
    answer: BytesMut,
}

/// What a relayed request needs, found before anything is consumed.
struct Ready {
    /// When the request was taken (before its credentials: the upstream latency metric
    /// counts their fetch, as on hyper's path).
    started: Instant,
    conn: Arc<Connection>,
    upstreams: Arc<Upstreams>,
    uri: http::Uri,
    id: String,
    request_id: String,
    meters: Arc<super::service::ConnectionMeters>,
}

/// The checks of [`guard::forward`] that a relayed request must pass (every other outcome
/// is left to it), and the connection it goes to.
async fn relayable(st: &ProxyState, buf: &[u8], plan: &Plan) -> Option<(Ready, Creds)> {
    let host_value = std::str::from_utf8(&buf[plan.host.clone()]).ok()?;
    if !host_value.is_ascii() || !guard::names_the_proxy(st, host_value) {
        return None;
    }
    let authorization = plan.authorization.clone().map(|r| &buf[r]);
    if !guard::token_allows(st, authorization) {
        return None;
    }
    let target = std::str::from_utf8(&buf[plan.target.clone()]).ok()?;
    // A target `http::Uri` refuses is hyper's to answer (400).
    http::uri::PathAndQuery::try_from(target).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if guard::is_service_path(path) {
        return None;
    }
    let (id, rest) = path.trim_start_matches('/').split_once('/')?;
    let rest = match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let conn = st.host.current().connection(id).ok()?;
    if conn.auth.signs_requests() {
        return None;
    }
    let upstreams = conn.transport.relay_upstreams()?.clone();
    let uri = crate::connection::direct_target(conn.base_url(), &rest)?;
    // A failure is answered here (fetching again on hyper's path would ask twice).
    let started = Instant::now();
    let creds = conn.credentials(false).await;
    if creds.as_ref().is_ok_and(|c| c.identity.is_some()) {
        return None;
    }
    let given = plan.request_id.clone().map(|r| &buf[r]);
    let ready = Ready {
        started,
        request_id: super::service::request_id_of(given),
        meters: st.meters.of(id),
        id: id.to_string(),
        conn,
        upstreams,
        uri,
    };
    Some((ready, creds))
}

/// The connection's credentials, or why there are none.
type Creds = Result<Arc<crate::auth::Resolved>, crate::Error>;

/// Relays one request and writes its answer; `false` when the caller's connection must
/// close (a write failed, or the answer's body could not be passed on whole).
async fn relay<IO>(
    io: &mut IO,
    buf: &[u8],
    plan: &Plan,
    r: Ready,
    creds: Creds,
    close: bool,
    s: &mut Scratch,
) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let settings = r.conn.transport.settings();
    let started = Instant::now();
    let total = settings.request_timeout.map(|t| started + t);
    let answer = match creds {
        Ok(creds) => exchange_renewing(&r, &creds, buf, plan, s, total).await,
        Err(e) => Err(e),
    };
    let meters = &r.meters;
    let (upstream, head) = match answer {
        Ok(a) => a,
        Err(e) => {
            let resp = guard::failed(&|t: &str| r.conn.redact(t), &r.id, &r.request_id, meters, e);
            let out = &mut s.out;
            return write_response(io, resp, &r.request_id, plan.head, close, out).await;
        }
    };
    let took = r.started.elapsed();
    let method = if plan.head {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    crate::transport::log_http(settings, &method, &r.uri, head.status, started);
    let class = super::service::status_class(head.status);
    meters.request(class);
    meters.upstream(class, took);
    tracing::info!(request_id = %r.request_id, connection = %r.id, status = head.status,
        ms = took.as_millis() as u64, "answered");
    s.out.clear();
    h1::answer_head(&mut s.out, &head, &s.answer, r.request_id.as_bytes(), close);
    s.answer.advance(head.len);
    let bytes = meters.bytes();
    let timers = BodyTimers {
        idle: settings.read_timeout,
        total,
    };
    let passed = pass_body(io, upstream, &head, s, &bytes, &timers).await;
    match passed {
        Ok(Some(upstream)) => {
            r.upstreams.checkin(upstream);
            true
        }
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(request_id = %r.request_id, connection = %r.id,
                "the answer's body was cut off: {e}");
            false
        }
    }
}

/// [`exchange`] with the 401 rule of [`Connection::send_streaming`]: after a 401 to
/// credentials that were sent, fresh ones are fetched and, if they differ, the request is
/// sent once more (the 401's connection is dropped unread).
async fn exchange_renewing(
    r: &Ready,
    creds: &Arc<crate::auth::Resolved>,
    buf: &[u8],
    plan: &Plan,
    s: &mut Scratch,
    total: Option<Instant>,
) -> Result<(UpstreamIo, h1::Answer), crate::Error> {
    let answer = exchange(r, creds, buf, plan, s, total).await?;
    if answer.1.status != 401 {
        return Ok(answer);
    }
    match r.conn.renew_after_401(creds).await? {
        Some(fresh) => exchange(r, &fresh, buf, plan, s, total).await,
        None => Ok(answer),
    }
}

/// Sends the request (once more on a fresh connection when a pooled one turns out closed)
/// and reads the final answer's head into `s.answer`.
async fn exchange(
    r: &Ready,
    creds: &crate::auth::Resolved,
    buf: &[u8],
    plan: &Plan,
    s: &mut Scratch,
    total: Option<Instant>,
) -> Result<(UpstreamIo, h1::Answer), crate::Error> {
    let settings = r.conn.transport.settings();
    request_head(&mut s.out, r, creds, buf, plan);
    let mut fresh = false;
    // Connecting counts too, as on the direct path: the answer's head is due by then.
    let head_by = crate::transport::deadline(Instant::now() + settings.read_timeout, total);
    let timed_out = || {
        r.conn
            .transport_error(crate::transport::timeout_of(settings, total, head_by))
    };
    loop {
        let pooled = if fresh { None } else { r.upstreams.checkout() };
        let (mut up, reused) = match pooled {
            Some(up) => (up, true),
            None => {
                let connecting = r.upstreams.connect(&r.uri, settings);
                match tokio::time::timeout_at(head_by.into(), connecting).await {
                    Ok(up) => (up.map_err(|e| r.conn.transport_error(e))?, false),
                    Err(_) => return Err(timed_out()),
                }
            }
        };
        s.answer.clear();
        let sent = tokio::time::timeout_at(
            head_by.into(),
            send_and_read_head(&mut up, &s.out, &mut s.answer, plan.head),
        )
        .await;
        match sent {
            Ok(Ok(head)) => return Ok((up, head)),
            // A pooled connection the server had closed: nothing was answered, send again.
            Ok(Err(Sent::Closed)) if reused && s.answer.is_empty() => fresh = true,
            Ok(Err(e)) => return Err(r.conn.transport_error(e.into_error())),
            Err(_) => return Err(timed_out()),
        }
    }
}

/// Why an exchange produced no answer head.
enum Sent {
    /// The connection closed or failed before the head was whole.
    Closed,
    /// The answer is not HTTP/1.1 the relay accepts.
    Bad(String),
}

impl Sent {
    fn into_error(self) -> TransportError {
        TransportError::Other(match self {
            Sent::Closed => "the server closed the connection before answering".into(),
            Sent::Bad(why) => why,
        })
    }
}

async fn send_and_read_head(
    up: &mut UpstreamIo,
    request: &[u8],
    answer: &mut BytesMut,
    to_head: bool,
) -> Result<h1::Answer, Sent> {
    up.write_all(request).await.map_err(|_| Sent::Closed)?;
    loop {
        match h1::parse_answer(answer, to_head).map_err(Sent::Bad)? {
            AnswerHead::Final(head) => return Ok(head),
            AnswerHead::Interim(len) => answer.advance(len),
            AnswerHead::Partial => {
                answer.reserve(READ_SIZE);
                match up.read_buf(answer).await {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Sent::Closed),
                }
            }
        }
    }
}

/// The request head for the server: the target on the connection's base URL, `Host` of
/// its origin, the caller's forwardable headers, the credential headers, a `User-Agent` and
/// `Accept` when there are none, and the request id.
fn request_head(
    out: &mut Vec<u8>,
    r: &Ready,
    creds: &crate::auth::Resolved,
    buf: &[u8],
    plan: &Plan,
) {
    out.clear();
    out.extend_from_slice(if plan.head { b"HEAD " } else { b"GET " });
    let target = r.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = r.uri.host().unwrap_or_default();
    let default_port = crate::transport::default_port(&r.uri);
    match r.uri.port_u16().filter(|p| Some(*p) != default_port) {
        Some(p) => h1::header(out, b"host", format!("{host}:{p}").as_bytes()),
        None => h1::header(out, b"host", host.as_bytes()),
    }
    let (mut agent, mut accept) = (false, false);
    let forwarded = plan
        .forward
        .iter()
        .map(|(n, v)| (&buf[n.clone()], &buf[v.clone()]));
    let credentials = creds
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    for (name, value) in forwarded.chain(credentials) {
        agent |= name.eq_ignore_ascii_case(b"user-agent");
        accept |= name.eq_ignore_ascii_case(b"accept");
        h1::header(out, name, value);
    }
    if !agent {
        h1::header(out, b"user-agent", crate::transport::USER_AGENT.as_bytes());
    }
    if !accept {
        h1::header(out, b"accept", b"*/*");
    }
    h1::header(out, super::REQUEST_ID.as_bytes(), r.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `read-timeout` between reads and `request-timeout` from the start.
struct BodyTimers {
    idle: Duration,
    total: Option<Instant>,
}

/// Passes the answer's body (after the head already in `s.out`) to the caller. Returns the
/// server connection when it can carry another request.
async fn pass_body<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    mut up: UpstreamIo,
    head: &h1::Answer,
    s: &mut Scratch,
    bytes: &metrics::Counter,
    timers: &BodyTimers,
) -> Result<Option<UpstreamIo>, String> {
    let mut chunks = Chunks::default();
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        let done = match head.framing {
            Framing::Empty => true,
            Framing::Length(_) => {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(s.answer.len());
                s.out.extend_from_slice(&s.answer[..n]);
                s.answer.advance(n);
                bytes.increment(n as u64);
                left -= n as u64;
                left == 0
            }
            Framing::Chunked => decode_chunks(&mut chunks, s, bytes)?,
            Framing::Close => {
                if !s.answer.is_empty() {
                    bytes.increment(s.answer.len() as u64);
                    chunk(&mut s.out, &s.answer);
                    s.answer.clear();
                }
                false
            }
        };
        // What is here goes out before waiting for more: a slow body streams.
        if !s.out.is_empty() {
            io.write_all(&s.out).await.map_err(|e| e.to_string())?;
            s.out.clear();
        }
        if done {
            let clean = head.reusable && s.answer.is_empty();
            return Ok(clean.then_some(up));
        }
        match read_more(&mut up, &mut s.answer, timers).await? {
            // The server's close ends this body (and only a clean close: an error or a TLS
            // end without close_notify leaves the caller's body unterminated, as cut off).
            0 if head.framing == Framing::Close => {
                io.write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(None);
            }
            0 => return Err("the server closed the connection".into()),
            _ => {}
        }
    }
}

/// Decodes what `s.answer` holds into chunks in `s.out`; `true` at the end of the body.
fn decode_chunks(
    chunks: &mut Chunks,
    s: &mut Scratch,
    bytes: &metrics::Counter,
) -> Result<bool, String> {
    loop {
        let (used, found) = chunks.next(&s.answer)?;
        if let Chunk::Data(range) = &found {
            let data = &s.answer[range.clone()];
            chunk(&mut s.out, data);
            bytes.increment(data.len() as u64);
        }
        s.answer.advance(used);
        match found {
            Chunk::Data(_) => {}
            Chunk::More => return Ok(false),
            Chunk::Done => {
                s.out.extend_from_slice(b"0\r\n\r\n");
                return Ok(true);
            }
        }
    }
}

/// Writes `data` (not empty) as one chunk.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Reads more of the body, within `read-timeout` and what is left of `request-timeout`.
async fn read_more(
    up: &mut UpstreamIo,
    answer: &mut BytesMut,
    t: &BodyTimers,
) -> Result<usize, String> {
    let by = crate::transport::deadline(Instant::now() + t.idle, t.total);
    answer.reserve(READ_SIZE);
    match tokio::time::timeout_at(by.into(), up.read_buf(answer)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) if t.total.is_some_and(|at| at <= by) => Err("request-timeout elapsed".into()),
        Err(_) => Err(format!(
            "no data for {}s (read-timeout)",
            t.idle.as_secs_f32()
        )),
    }
}

/// Writes an answer made by the proxy (an error) with its request id, without its body for
/// a `HEAD`; `false` when the caller's connection failed.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    resp: axum::response::Response,
    request_id: &str,
    head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> bool {
    use http_body_util::BodyExt as _;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name.as_str() != super::REQUEST_ID {
            h1::header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    h1::header(out, b"content-length", body.len().to_string().as_bytes());
    h1::header(out, b"date", h1::http_date().as_bytes());
    h1::header(out, super::REQUEST_ID.as_bytes(), request_id.as_bytes());
    if close {
        h1::header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(&body);
    }
    io.write_all(out).await.is_ok()
}

/// Serves the rest of the connection with hyper and [`guard::forward`], starting with the
/// bytes already read.
async fn hand_over<IO>(io: IO, read: Bytes, st: ProxyState, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(super::rewind::Rewind::new(read, io));
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let st = st.clone();
        async move {
            let req = req.map(axum::body::Body::new);
            Ok::<_, std::convert::Infallible>(guard::forward(st, req).await)
        }
    });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // The connection first: a request already read is served before a stop is seen.
    tokio::select! {
        biased;
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
