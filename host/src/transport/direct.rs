//! The streaming path of the proxy: hyper-util's pooled client on the connection's own rustls
//! configuration (the same roots, verifier and client identity as its reqwest client), used
//! for requests that go straight to the server. A request that must pass an HTTP proxy
//! (configured or from the environment) or carry a per-request signature takes the reqwest
//! path instead. Like [`super::Transport::open`] it follows no redirect and adds nothing but
//! the given headers (and a `User-Agent` when there is none); `connect-timeout`,
//! `read-timeout` (idle, also while waiting for the answer) and `request-timeout` (total, to
//! the end of the body) bound it the same way.
//!
//! It exists for speed: reqwest re-parses every request's URL in its redirect layer, converts
//! a `Url` into a `Uri`, and wraps each exchange in several boxed futures; on the proxy's
//! path that was a quarter of its own work per request (`BENCHMARKS.md`).

use super::{classify, TransportError};
use crate::config::ConnectionSettings;
use bytes::Bytes;
use fhirconn_sdk::ClientIdentity;
use http::{HeaderName, HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// A pooled client for one [`super::ClientKey`] without an HTTP proxy.
pub(crate) type DirectClient = Client<TimedConnector, Full<Bytes>>;

/// Builds the direct client for `settings` on `tls` (the connection's rustls configuration,
/// with its ALPN list, so HTTP/2 is used where the server offers it).
pub(crate) fn build(settings: &ConnectionSettings, tls: rustls::ClientConfig) -> DirectClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector(settings, tls))
}

/// The connector of the direct path (and of the proxy's relay): TCP with `TCP_NODELAY` and
/// keepalive, rustls on `tls` for `https`, all within `connect-timeout`.
pub(crate) fn connector(
    settings: &ConnectionSettings,
    tls: rustls::ClientConfig,
) -> TimedConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    // As reqwest does: dead peers of idle pooled connections are noticed.
    http.set_keepalive(Some(Duration::from_secs(15)));
    let https = hyper_rustls::HttpsConnector::from((http, Arc::new(tls)));
    TimedConnector {
        inner: https,
        timeout: settings.connect_timeout,
    }
}

/// The connector with `connect-timeout` over the whole connection set-up (DNS, TCP and the
/// TLS handshake, as reqwest bounds it): a server that accepts and then stalls its handshake
/// fails the request in time, and a connect hyper-util finishes in the background (a pooled
/// connection won the race) ends too instead of holding a socket.
#[derive(Clone)]
pub(crate) struct TimedConnector {
    inner: hyper_rustls::HttpsConnector<HttpConnector>,
    timeout: Duration,
}

pub(crate) type Connected =
    hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for TimedConnector {
    type Response = Connected;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Connected, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )) as BoxError),
            }
        })
    }
}

impl super::Transport {
    /// The client of the direct path for an identity, or `None` when requests of this
    /// connection must take reqwest's (an HTTP proxy applies: configured, or from the
    /// environment when the connection was first used this way).
    pub(crate) fn direct_client(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> Result<Option<DirectClient>, super::ClientError> {
        let plain = self.direct.get_or_init(|| {
            if self.goes_direct() {
                self.pool
                    .get_or_build_direct(self.key.clone(), || self.build_direct(None))
                    .ok()
            } else {
                None
            }
        });
        let Some(plain) = plain else {
            // Not allowed, or the client could not be built: the reqwest path reports why.
            return Ok(None);
        };
        match identity {
            None => Ok(Some(plain.clone())),
            Some(id) => {
                let key = self.key.with_identity(Some(id));
                self.pool
                    .get_or_build_direct(key, || self.build_direct(Some(id)))
                    .map(Some)
            }
        }
    }

    /// Whether no HTTP proxy applies to this connection (none configured, none in the
    /// environment): its requests may go straight to the server.
    pub(crate) fn goes_direct(&self) -> bool {
        self.settings.proxy.is_none() && super::pool::env_proxies().is_ok_and(|p| p.is_empty())
    }

    fn build_direct(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> Result<DirectClient, super::ClientError> {
        let verifier = self.pool.verifier(&self.key)?;
        let tls = super::roots::client_config(verifier, identity)?;
        Ok(build(&self.settings, tls))
    }

    /// Sends one request on the direct path (see [`Transport::direct_client`]), without
    /// following a redirect, and returns the answer with its body unread.
    pub(crate) async fn open_direct(
        &self,
        client: &DirectClient,
        req: DirectRequest<'_>,
    ) -> Result<Streamed, TransportError> {
        send(client, &self.settings, req).await
    }
}

/// One request on the direct path.
pub(crate) struct DirectRequest<'a> {
    /// Method.
    pub(crate) method: &'a Method,
    /// Absolute target on the connection's origin.
    pub(crate) uri: &'a Uri,
    /// The caller's headers.
    pub(crate) headers: &'a [(HeaderName, HeaderValue)],
    /// The credential headers.
    pub(crate) credential_headers: &'a [(HeaderName, HeaderValue)],
    /// The body (empty: none).
    pub(crate) body: Bytes,
}

/// An answer whose body is read as it arrives, bounded by the connection's timeouts.
pub type Streamed = http::Response<StreamedBody>;

/// Sends `req` with `client` and returns the answer once its head has arrived.
pub(crate) async fn send(
    client: &DirectClient,
    settings: &ConnectionSettings,
    req: DirectRequest<'_>,
) -> Result<Streamed, TransportError> {
    let started = Instant::now();
    let mut out = http::Request::new(Full::new(req.body));
    *out.method_mut() = req.method.clone();
    *out.uri_mut() = req.uri.clone();
    let headers = out.headers_mut();
    headers.reserve(req.headers.len() + req.credential_headers.len() + 1);
    for (k, v) in req.headers.iter().chain(req.credential_headers) {
        headers.append(k.clone(), v.clone());
    }
    // What reqwest adds to a request without them.
    if !headers.contains_key(http::header::USER_AGENT) {
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(super::USER_AGENT),
        );
    }
    if !headers.contains_key(http::header::ACCEPT) {
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    }
    let total = settings.request_timeout.map(|t| started + t);
    // Waiting for the head is bounded by the idle timeout, and by the total deadline.
    let head_by = deadline(started + settings.read_timeout, total);
    let answer = match tokio::time::timeout_at(head_by.into(), client.request(out)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(classify_direct(&e, req.uri, settings, started)),
        Err(_) => return Err(timeout(settings, total, head_by)),
    };
    log(
        settings,
        req.method,
        req.uri,
        answer.status().as_u16(),
        started,
    );
    let (parts, body) = answer.into_parts();
    let timers = Timers {
        idle: settings.read_timeout,
        idle_timer: Box::pin(tokio::time::sleep(settings.read_timeout)),
        total: total
            .zip(settings.request_timeout)
            .map(|(at, after)| (Box::pin(tokio::time::sleep_until(at.into())), after)),
    };
    let body = StreamedBody {
        inner: Inner::Direct(body),
        timers: Some(timers),
    };
    Ok(http::Response::from_parts(parts, body))
}

/// The `http` lines of the reqwest path: debug, and info for `enable-debug-logging`.
pub(crate) fn log(
    settings: &ConnectionSettings,
    method: &Method,
    uri: &Uri,
    status: u16,
    started: Instant,
) {
    let debug = tracing::enabled!(tracing::Level::DEBUG);
    if !(debug || settings.host.enable_debug_logging) {
        return;
    }
    let shown = url::Url::parse(&uri.to_string())
        .map(|u| crate::text::shown_url(&u))
        .unwrap_or_default();
    let id = &settings.id;
    tracing::debug!(connection = %id, %method, url = %shown, status,
        elapsed_ms = started.elapsed().as_millis() as u64, "http");
    if settings.host.enable_debug_logging {
        tracing::info!(connection = %id, %method, url = %shown, status, "http");
    }
}

/// The earlier of an idle deadline and the total one.
pub(crate) fn deadline(idle: Instant, total: Option<Instant>) -> Instant {
    total.map_or(idle, |t| t.min(idle))
}

/// The timeout that elapsed at `at`: the total deadline when it was that one.
pub(crate) fn timeout(
    settings: &ConnectionSettings,
    total: Option<Instant>,
    at: Instant,
) -> TransportError {
    match (total, settings.request_timeout) {
        (Some(t), Some(after)) if t <= at => TransportError::Timeout {
            what: "request-timeout".into(),
            after,
        },
        _ => TransportError::Timeout {
            what: "read-timeout".into(),
            after: settings.read_timeout,
        },
    }
}

/// Classifies a hyper-util error like a reqwest one (DNS, connect, TLS with a hint).
fn classify_direct(
    e: &hyper_util::client::legacy::Error,
    uri: &Uri,
    settings: &ConnectionSettings,
    started: Instant,
) -> TransportError {
    classify_at(e, uri, e.is_connect(), settings, started)
}

/// Classifies an error of an exchange with `uri` that started at `started` (`connect`: it
/// happened while connecting), for the direct path and the proxy's relay.
pub(crate) fn classify_at(
    e: &(dyn std::error::Error + 'static),
    uri: &Uri,
    connect: bool,
    settings: &ConnectionSettings,
    started: Instant,
) -> TransportError {
    classify::classify_error_of(
        e,
        classify::Facts {
            host: uri.host().unwrap_or_default(),
            port: uri.port_u16().or(default_port(uri)),
            connect,
            timeout: false,
            elapsed: Some(started.elapsed()),
        },
        settings,
    )
}

/// The port of `uri`'s scheme (80 for `http`, 443 for `https`).
pub(crate) fn default_port(uri: &Uri) -> Option<u16> {
    match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

/// The body of a [`Streamed`] answer: read as it arrives; an idle gap longer than
/// `read-timeout`, or the end of `request-timeout`, ends it with a timeout error.
pub struct StreamedBody {
    inner: Inner,
    /// The direct path's timeouts (reqwest's client applies its own).
    timers: Option<Timers>,
}

/// `read-timeout` between frames, and `request-timeout` (its deadline, and its setting).
struct Timers {
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total: Option<(Pin<Box<Sleep>>, Duration)>,
}

enum Inner {
    Direct(hyper::body::Incoming),
    Reqwest(reqwest::Body),
}

impl std::fmt::Debug for StreamedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedBody").finish_non_exhaustive()
    }
}

impl StreamedBody {
    /// The body of a reqwest response (whose client applies the same timeouts itself).
    pub(crate) fn from_reqwest(resp: reqwest::Response) -> http::Response<StreamedBody> {
        let status = resp.status();
        let mut resp = resp;
        let headers = std::mem::take(resp.headers_mut());
        let body = StreamedBody {
            inner: Inner::Reqwest(reqwest::Body::from(resp)),
            timers: None,
        };
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = TransportError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TransportError>>> {
        let this = &mut *self;
        // The total deadline first: a body that is always ready is cut at it too.
        if let Some((total, after)) = this.timers.as_mut().and_then(|t| t.total.as_mut()) {
            if total.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(TransportError::Timeout {
                    what: "request-timeout".into(),
                    after: *after,
                })));
            }
        }
        let polled = match &mut this.inner {
            Inner::Direct(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| TransportError::Other(format!("reading the answer failed: {e}"))),
            Inner::Reqwest(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| TransportError::Other(format!("reading the answer failed: {e}"))),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = &mut this.timers {
                    let next = tokio::time::Instant::now() + t.idle;
                    t.idle_timer.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                if let Some(t) = &mut this.timers {
                    if t.idle_timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(TransportError::Timeout {
                            what: "read-timeout".into(),
                            after: t.idle,
                        })));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Direct(b) => b.is_end_stream(),
            Inner::Reqwest(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Direct(b) => b.size_hint(),
            Inner::Reqwest(b) => b.size_hint(),
        }
    }
}
