//! The login listener behind the host's `browser-redirect` operation (RFC 8252 §7.3): shows
//! the person an authorization URL with `redirect_uri=http://127.0.0.1:PORT/` added and waits
//! on that loopback port (an axum server) for the browser's redirect.
//!
//! With an exact `redirect_uri` (a client registered with `http://127.0.0.1:8765/callback`,
//! RFC 8252 §7.3) the listener binds exactly that loopback address and port, only while the
//! sign-in runs, and answers only on that path; anything but `http` on a loopback address
//! with a port is refused before anything is shown ([`exact_redirect`]). `localhost` (which
//! many SMART clients register, though RFC 8252 §8.3 advises against it) is bound on both
//! 127.0.0.1 and [::1], so a browser that tries ::1 first reaches this listener and not another
//! local user's: when [::1] has that port taken already the sign-in is refused; a host
//! without IPv6 listens on 127.0.0.1 only.
//!
//! When the URL carries a `state` parameter, only a redirect with that same `state` ends the
//! wait: any other request (another local process, a web page scanning ports, a stale tab) is
//! answered 400 and ignored, and the listener keeps waiting until its own deadline. At most
//! [`LISTENER_CONNECTIONS`] connections are served at once (newcomers beyond are dropped),
//! each for at most [`CONNECTION_TIME`] and [`CONNECTION_BYTES`] read.

use crate::person::Person;
use crate::redact::Redactor;
use crate::text::sanitize;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use fhirconn_sdk::wire::{BrowserRedirect, RedirectAnswer, BROWSER_REDIRECT};
use fhirconn_sdk::{Error, ErrorKind};
use std::future::{Future as _, IntoFuture as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many connections the login listener serves at the same time.
pub(crate) const LISTENER_CONNECTIONS: usize = 16;
/// How long one connection may stay open.
pub(crate) const CONNECTION_TIME: Duration = Duration::from_secs(10);
/// How many bytes the listener reads from one connection (a redirect is one short request).
pub(crate) const CONNECTION_BYTES: usize = 16 * 1024;

/// Shows the person `request.url` (with the listener's `redirect_uri`) and waits for the
/// redirect. Blocks the calling (plugin) thread on `rt`. Fails with `interaction_required`
/// when no sign-in arrives in time.
pub(crate) fn browser_redirect(
    rt: &tokio::runtime::Handle,
    request: &BrowserRedirect,
    person: Arc<dyn Person>,
    redactor: Arc<Redactor>,
) -> Result<RedirectAnswer, Error> {
    let bad = |m: String| Error::new(ErrorKind::Internal, m);
    let mut url =
        url::Url::parse(&request.url).map_err(|e| bad(format!("{BROWSER_REDIRECT}: url: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(format!("{BROWSER_REDIRECT}: url must be http(s)")));
    }
    let expected_state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    let message = sanitize(
        &redactor.redact(
            request
                .message
                .as_deref()
                .unwrap_or("Sign in in your browser:"),
        ),
    );
    let timeout = Duration::from_secs(request.timeout_seconds.unwrap_or(300).min(900));
    let exact = match request.redirect_uri.as_deref() {
        Some(uri) => Some((exact_redirect(uri).map_err(Error::config)?, uri.to_string())),
        None => None,
    };
    rt.block_on(async move {
        let binds = exact.as_ref().map_or_else(
            || vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))],
            |e| e.0 .0.clone(),
        );
        let listeners = bind_all(&binds).await.map_err(bad)?;
        let port = listeners
            .first()
            .ok_or_else(|| bad("the login listener has no address".into()))?
            .local_addr()
            .map_err(|e| bad(e.to_string()))?
            .port();
        let (path, redirect_uri) = match exact {
            Some(((_, path), uri)) => (Some(path), uri),
            None => (None, format!("http://127.0.0.1:{port}/")),
        };
        url.query_pairs_mut()
            .append_pair("redirect_uri", &redirect_uri);
        let (found, mut found_rx) = tokio::sync::mpsc::channel::<String>(1);
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::new(Awaited {
                state: expected_state,
                path,
                found,
            }));
        let slots = Arc::new(tokio::sync::Semaphore::new(LISTENER_CONNECTIONS));
        let servers: Vec<_> = listeners
            .into_iter()
            .map(|l| {
                let limited = Limited::new(l, slots.clone());
                tokio::spawn(axum::serve(limited, app.clone()).into_future())
            })
            .collect();
        let full = url.to_string();
        let opened =
            catch_unwind(AssertUnwindSafe(|| person.tell(&message, Some(&full)))).unwrap_or(false);
        if !opened {
            tracing::info!("open the URL above in a browser on this machine");
        }
        let outcome = tokio::time::timeout(timeout, found_rx.recv()).await;
        for server in servers {
            server.abort();
        }
        match outcome {
            Ok(Some(query)) => {
                for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                    if k == "code" {
                        redactor.add(&v);
                    }
                }
                Ok(RedirectAnswer {
                    redirect_uri,
                    query,
                })
            }
            Ok(None) => Err(bad("the login listener stopped".into())),
            Err(_) => Err(Error::interaction_required(format!(
                "no sign-in within {} s",
                timeout.as_secs()
            ))),
        }
    })
}

/// Binds every address of `binds` (all on one port). The first must bind; a further [::1]
/// (for `localhost`) is skipped when this host has no IPv6, but refused when someone else
/// already listens there: a browser trying ::1 first would bring the sign-in to them.
async fn bind_all(binds: &[std::net::SocketAddr]) -> Result<Vec<tokio::net::TcpListener>, String> {
    let mut listeners = Vec::with_capacity(binds.len());
    for (i, bind) in binds.iter().enumerate() {
        match tokio::net::TcpListener::bind(bind).await {
            Ok(l) => listeners.push(l),
            Err(e) if i > 0 && e.kind() != std::io::ErrorKind::AddrInUse => {
                tracing::debug!("login listener: not listening on {bind} ({e}); IPv4 only");
            }
            Err(e) if i > 0 => {
                return Err(format!(
                    "cannot listen on {bind} for the sign-in redirect: {e}: another program \
                     holds port {} on [::1], where a browser may send the sign-in for \
                     'localhost'; stop it, or register and use http://127.0.0.1:{}/... as \
                     redirect-uri",
                    bind.port(),
                    bind.port()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "cannot listen on {bind} for the sign-in redirect: {e} (is another sign-in running?)"
                ))
            }
        }
    }
    Ok(listeners)
}

/// What the listener waits for.
struct Awaited {
    /// The `state` the authorization URL carried.
    state: Option<String>,
    /// The exact path of a registered `redirect_uri` (other paths are not the redirect).
    path: Option<String>,
    found: tokio::sync::mpsc::Sender<String>,
}

/// Answers one request to the listener, and passes the query on when it is the awaited
/// redirect.
async fn answer(State(awaited): State<Arc<Awaited>>, uri: Uri) -> Response {
    let verdict = match &awaited.path {
        Some(p) if p != uri.path() => RedirectVerdict::NotFound,
        _ => judge_redirect(uri.query(), awaited.state.as_deref()),
    };
    let (status, text) = match &verdict {
        RedirectVerdict::Accept(_) => (
            StatusCode::OK,
            "Signed in. You can close this window and return to fhirconn.",
        ),
        RedirectVerdict::WrongState => (
            StatusCode::BAD_REQUEST,
            "This sign-in answer does not belong to the sign-in fhirconn is waiting for.",
        ),
        RedirectVerdict::NotFound => (StatusCode::NOT_FOUND, "Not found."),
    };
    match verdict {
        RedirectVerdict::Accept(q) => {
            let _ = awaited.found.try_send(q);
        }
        RedirectVerdict::WrongState => {
            tracing::warn!("the login listener ignored a sign-in answer with a wrong state");
        }
        RedirectVerdict::NotFound => {}
    }
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONNECTION, "close"),
        ],
        Html(format!("<html><body><p>{text}</p></body></html>")),
    )
        .into_response()
}

/// What the login listener makes of one request: the query when it is the awaited redirect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RedirectVerdict {
    /// The awaited redirect (a `code` or `error`, and the expected `state` if one was sent).
    Accept(String),
    /// A `code` or `error` with a missing or different `state`.
    WrongState,
    /// Anything else (a favicon, a probe).
    NotFound,
}

/// Checks an exact `redirect_uri` (RFC 8252 §7.3): `http`, a loopback address (`127.0.0.0/8`,
/// `[::1]`, or `localhost`, bound as 127.0.0.1 and [::1]), an explicit port, no user, query or
/// fragment. Returns the addresses to bind (the first one must bind) and the path to answer
/// on.
pub(crate) fn exact_redirect(uri: &str) -> Result<(Vec<std::net::SocketAddr>, String), String> {
    let refuse = |why: &str| {
        format!(
            "redirect-uri '{}': {why}; it must be http on a loopback address with a port, as \
             registered with the authorization server (RFC 8252 §7.3), e.g. \
             http://127.0.0.1:8765/callback",
            sanitize(uri)
        )
    };
    let u = url::Url::parse(uri).map_err(|e| refuse(&e.to_string()))?;
    if u.scheme() != "http" {
        return Err(refuse(
            "not http (the host can only listen on this machine)",
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(refuse("it carries a user name"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(refuse("a query or fragment is not supported"));
    }
    let ips: Vec<std::net::IpAddr> = match u.host() {
        Some(url::Host::Ipv4(ip)) if ip.is_loopback() => vec![ip.into()],
        Some(url::Host::Ipv6(ip)) if ip.is_loopback() => vec![ip.into()],
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => vec![
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ],
        _ => return Err(refuse("not a loopback address")),
    };
    match u.port() {
        Some(port) if port != 0 => Ok((
            ips.into_iter().map(|ip| (ip, port).into()).collect(),
            u.path().to_string(),
        )),
        _ => Err(refuse("no port")),
    }
}

/// Constant-time comparison (the `state` is a CSRF token).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Judges the query of a request a browser (or anyone else) sent to the login listener.
pub(crate) fn judge_redirect(query: Option<&str>, expected_state: Option<&str>) -> RedirectVerdict {
    let Some(query) = query else {
        return RedirectVerdict::NotFound;
    };
    let mut relevant = false;
    let mut state: Option<String> = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "code" | "error" => relevant = true,
            "state" => state = Some(v.into_owned()),
            _ => {}
        }
    }
    if !relevant {
        return RedirectVerdict::NotFound;
    }
    match (expected_state, state.as_deref()) {
        (None, _) => RedirectVerdict::Accept(query.to_string()),
        (Some(want), Some(got)) if same_secret(want, got) => {
            RedirectVerdict::Accept(query.to_string())
        }
        _ => RedirectVerdict::WrongState,
    }
}

/// A loopback listener serving at most [`LISTENER_CONNECTIONS`] connections at once (over all
/// of a sign-in's addresses), each
/// limited in time and bytes: slow or chatty local clients cannot pin it.
struct Limited {
    inner: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Limited {
    /// `slots` is shared by every address of one sign-in.
    fn new(inner: tokio::net::TcpListener, slots: Arc<tokio::sync::Semaphore>) -> Self {
        Self { inner, slots }
    }
}

impl axum::serve::Listener for Limited {
    type Io = LimitedConnection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("login listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Too many connections at once: drop the newcomer.
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                continue;
            };
            let connection = LimitedConnection {
                stream,
                _slot: slot,
                deadline: Box::pin(tokio::time::sleep(CONNECTION_TIME)),
                left: CONNECTION_BYTES,
            };
            return (connection, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One listener connection: holds its slot, ends at its deadline or after its byte budget.
struct LimitedConnection {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    deadline: Pin<Box<tokio::time::Sleep>>,
    left: usize,
}

impl LimitedConnection {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn ended(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, why.to_string())
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(ended("connection time is up")));
        }
        if self.left == 0 {
            return Poll::Ready(Err(ended("connection read enough")));
        }
        let max = self.left.min(buf.remaining());
        let this = &mut *self;
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(max));
        let poll = Pin::new(&mut this.stream).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        if let Poll::Ready(Ok(())) = &poll {
            buf.advance(n);
            this.left -= n;
        }
        poll
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(ended("connection time is up")));
        }
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::sync::Mutex;

    /// A "browser" that first pins every slot of the listener with idle connections, then
    /// knocks once more, then brings the real redirect back.
    #[derive(Default)]
    struct Pinning {
        seen: Arc<Mutex<Vec<String>>>,
    }

    fn get(addr: &str, target: &str) -> (String, std::time::Duration) {
        let started = std::time::Instant::now();
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return ("refused".into(), started.elapsed());
        };
        let _ = write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.lines().next().unwrap_or("closed").to_string();
        (status, started.elapsed())
    }

    impl Person for Pinning {
        fn tell(&self, _message: &str, url: Option<&str>) -> bool {
            let u = url::Url::parse(url.unwrap_or_default()).unwrap();
            let redirect = u
                .query_pairs()
                .find(|(k, _)| k == "redirect_uri")
                .map(|(_, v)| v.into_owned())
                .unwrap();
            let addr = redirect
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let seen = self.seen.clone();
            std::thread::spawn(move || {
                let idle: Vec<_> = (0..LISTENER_CONNECTIONS)
                    .map(|_| std::net::TcpStream::connect(&addr).unwrap())
                    .collect();
                std::thread::sleep(Duration::from_millis(300));
                let (status, _) = get(&addr, "/?code=EARLY&state=s1");
                seen.lock().unwrap().push(format!("while pinned: {status}"));
                // The idle connections end at their deadline, freeing the slots.
                let (status, waited) = get(&addr, "/?code=LATE&state=s1");
                let retried = if status.contains(" 200 ") {
                    status
                } else {
                    std::thread::sleep(CONNECTION_TIME);
                    get(&addr, "/?code=LATE&state=s1").0
                };
                seen.lock()
                    .unwrap()
                    .push(format!("after: {retried} ({}s)", waited.as_secs()));
                drop(idle);
            });
            true
        }
    }

    #[test]
    fn an_exact_redirect_uri_must_be_loopback_http_with_a_port() {
        let ok = exact_redirect("http://127.0.0.1:8765/callback").unwrap();
        assert_eq!(
            ok,
            (vec![([127, 0, 0, 1], 8765).into()], "/callback".to_string())
        );
        let ok = exact_redirect("http://[::1]:8765/").unwrap();
        assert_eq!(ok.0, vec!["[::1]:8765".parse().unwrap()]);
        let names = |uri: &str| -> Vec<String> {
            let addrs = exact_redirect(uri).unwrap().0;
            addrs.iter().map(ToString::to_string).collect()
        };
        assert_eq!(names("http://localhost:9/cb"), ["127.0.0.1:9", "[::1]:9"]);
        assert_eq!(names("http://LocalHost:9/cb"), ["127.0.0.1:9", "[::1]:9"]);
        for (bad, why) in [
            ("https://127.0.0.1:8765/callback", "not http"),
            ("http://app.example:8765/callback", "not a loopback address"),
            ("http://10.0.0.1:8765/callback", "not a loopback address"),
            ("http://127.0.0.1/callback", "no port"),
            ("http://127.0.0.1:0/callback", "no port"),
            ("http://127.0.0.1:8765/cb?x=1", "query or fragment"),
            ("http://127.0.0.1:8765/cb#f", "query or fragment"),
            ("http://u@127.0.0.1:8765/cb", "user name"),
            ("myapp:/callback", "not http"),
        ] {
            let e = exact_redirect(bad).unwrap_err();
            assert!(
                e.contains(why) && e.starts_with("redirect-uri '"),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_pin_the_login_listener_for_longer_than_their_deadline() {
        let person = Arc::new(Pinning::default());
        let rt = tokio::runtime::Handle::current();
        let request = BrowserRedirect {
            url: "https://login.example/authorize?state=s1".into(),
            message: None,
            timeout_seconds: Some(60),
            redirect_uri: None,
        };
        let p: Arc<dyn Person> = person.clone();
        let answer = tokio::task::spawn_blocking(move || {
            browser_redirect(&rt, &request, p, Arc::new(Redactor::default()))
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.query, "code=LATE&state=s1");
        for _ in 0..100 {
            if person.seen.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = person.seen.lock().unwrap().clone();
        assert!(
            !seen[0].contains("200"),
            "with every slot taken a newcomer is dropped: {seen:?}"
        );
        assert!(seen[1].contains(" 200 "), "{seen:?}");
    }

    /// A "browser" that resolves `localhost` to ::1 first: it brings the redirect to
    /// `[::1]:PORT` of the URL's `redirect_uri`.
    #[derive(Default)]
    struct Ipv6First {
        told: Arc<Mutex<u32>>,
    }

    impl Person for Ipv6First {
        fn tell(&self, _message: &str, url: Option<&str>) -> bool {
            *self.told.lock().unwrap() += 1;
            let u = url::Url::parse(url.unwrap_or_default()).unwrap();
            let redirect = u
                .query_pairs()
                .find(|(k, _)| k == "redirect_uri")
                .map(|(_, v)| v.into_owned())
                .unwrap();
            let port = url::Url::parse(&redirect).unwrap().port().unwrap();
            std::thread::spawn(move || get(&format!("[::1]:{port}"), "/cb?code=C6&state=s1"));
            true
        }
    }

    fn localhost_request(port: u16) -> BrowserRedirect {
        BrowserRedirect {
            url: "https://login.example/authorize?state=s1".into(),
            message: None,
            timeout_seconds: Some(3),
            redirect_uri: Some(format!("http://localhost:{port}/cb")),
        }
    }

    fn run(request: BrowserRedirect, person: Arc<dyn Person>) -> Result<RedirectAnswer, Error> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let handle = rt.handle().clone();
        browser_redirect(&handle, &request, person, Arc::new(Redactor::default()))
    }

    /// Whether this host has IPv6 loopback (the tests below need it).
    fn has_ipv6() -> bool {
        let ok = std::net::TcpListener::bind("[::1]:0").is_ok();
        if !ok {
            eprintln!("no IPv6 loopback on this host: skipped");
        }
        ok
    }

    /// Security boundary: for `redirect-uri: http://localhost:P/...` the listener also binds
    /// [::1]:P, so a browser trying ::1 first brings the sign-in to it.
    #[test]
    fn a_localhost_redirect_is_received_on_ipv6_loopback_too() {
        if !has_ipv6() {
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let person = Arc::new(Ipv6First::default());
        let answer = run(localhost_request(port), person.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.query, "code=C6&state=s1");
        assert_eq!(answer.redirect_uri, format!("http://localhost:{port}/cb"));
    }

    /// Security boundary: when another program already listens on [::1]:P, a `localhost`
    /// sign-in is refused with an error naming the port, before the person is sent anywhere
    /// (a browser trying ::1 first would bring the code to that program, or nowhere).
    #[test]
    fn a_localhost_redirect_is_refused_when_someone_else_holds_the_ipv6_port() {
        if !has_ipv6() {
            return;
        }
        let squatter = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        let person = Arc::new(Ipv6First::default());
        let e = run(localhost_request(port), person.clone()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("holds port {port} on [::1]"))
                && e.to_string().contains("http://127.0.0.1:"),
            "{e}"
        );
        assert_eq!(
            *person.told.lock().unwrap(),
            0,
            "nobody was sent to sign in"
        );
        // 127.0.0.1:P was released again: an IPv4-only redirect on that port still works.
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
