//! The login listener behind the host's `browser-redirect` operation (RFC 8252 §7.3): shows
//! the person an authorization URL with `redirect_uri=http://127.0.0.1:PORT/` added and waits
//! on that loopback port for the browser's redirect.
//!
//! When the URL carries a `state` parameter, only a redirect with that same `state` ends the
//! wait: any other request (another local process, a web page scanning ports, a stale tab) is
//! answered 400 and ignored, and the listener keeps waiting until its own deadline. At most
//! [`LISTENER_CONNECTIONS`] requests are read at once, each for at most 10 s.

use crate::person::Person;
use crate::redact::Redactor;
use crate::text::sanitize;
use fhirconn_sdk::wire::{BrowserRedirect, RedirectAnswer, BROWSER_REDIRECT};
use fhirconn_sdk::{Error, ErrorKind};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

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
    let timeout = std::time::Duration::from_secs(request.timeout_seconds.unwrap_or(300).min(900));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| bad(format!("cannot listen on 127.0.0.1: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| bad(e.to_string()))?
            .port();
        let redirect_uri = format!("http://127.0.0.1:{port}/");
        url.query_pairs_mut()
            .append_pair("redirect_uri", &redirect_uri);
        let full = url.to_string();
        let opened =
            catch_unwind(AssertUnwindSafe(|| person.tell(&message, Some(&full)))).unwrap_or(false);
        if !opened {
            tracing::info!("open the URL above in a browser on this machine");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let (found_tx, mut found_rx) = tokio::sync::mpsc::channel::<String>(1);
        let slots = Arc::new(tokio::sync::Semaphore::new(LISTENER_CONNECTIONS));
        loop {
            tokio::select! {
                q = found_rx.recv() => {
                    let Some(query) = q else { continue };
                    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                        if k == "code" {
                            redactor.add(&v);
                        }
                    }
                    return Ok(RedirectAnswer { redirect_uri, query });
                }
                accepted = listener.accept() => {
                    let (stream, _) = accepted
                        .map_err(|e| bad(format!("loopback listener: {e}")))?;
                    // Too many slow connections at once: drop the newcomer.
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        continue;
                    };
                    let tx = found_tx.clone();
                    let want = expected_state.clone();
                    tokio::spawn(async move {
                        serve_redirect_request(stream, want, tx).await;
                        drop(permit);
                    });
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::interaction_required(
                        format!("no sign-in within {} s", timeout.as_secs()),
                    ));
                }
            }
        }
    })
}

/// How many redirect requests the login listener reads at the same time.
pub(crate) const LISTENER_CONNECTIONS: usize = 16;

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

/// Constant-time comparison (the `state` is a CSRF token).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Judges the request head a browser (or anyone else) sent to the login listener.
pub(crate) fn judge_redirect(head: &str, expected_state: Option<&str>) -> RedirectVerdict {
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default();
    let Some((_, query)) = target.split_once('?') else {
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

/// Reads one request head (up to 16 KiB, 10 s) from a listener connection, answers it, and
/// sends the query on `found` when it is the awaited redirect.
async fn serve_redirect_request(
    mut stream: tokio::net::TcpStream,
    expected_state: Option<String>,
    found: tokio::sync::mpsc::Sender<String>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    let read_until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while len < buf.len() {
        match tokio::time::timeout_at(read_until, stream.read(&mut buf[len..])).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                len += n;
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]).into_owned();
    let verdict = judge_redirect(&head, expected_state.as_deref());
    let (status, text) = match &verdict {
        RedirectVerdict::Accept(_) => (
            "200 OK",
            "Signed in. You can close this window and return to fhirconn.",
        ),
        RedirectVerdict::WrongState => (
            "400 Bad Request",
            "This sign-in answer does not belong to the sign-in fhirconn is waiting for.",
        ),
        RedirectVerdict::NotFound => ("404 Not Found", "Not found."),
    };
    let page = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n<html><body><p>{text}</p></body></html>"
    );
    let _ = stream.write_all(page.as_bytes()).await;
    let _ = stream.shutdown().await;
    match verdict {
        RedirectVerdict::Accept(q) => {
            let _ = found.try_send(q);
        }
        RedirectVerdict::WrongState => {
            tracing::warn!("the login listener ignored a sign-in answer with a wrong state");
        }
        RedirectVerdict::NotFound => {}
    }
}
