//! The proxy's relay (`host/src/proxy/relay.rs`) against a scripted raw upstream: framing it
//! reads itself (chunked with trailers, conflicting lengths, `HEAD`, close-delimited), pooled
//! connections the server closed, and one client connection whose requests go partly
//! through the relay and partly through hyper's path.

use fhirconn_tests::LibraryProxy;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An upstream answering each request (across connections, in order) with the next scripted
/// bytes (the last one repeats); `close` steps close the connection after answering.
struct Raw {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
struct Step {
    answer: &'static str,
    close: bool,
    /// Bytes written 100 ms after the answer, on the same connection.
    later: Option<&'static str>,
}

const fn answer(answer: &'static str) -> Step {
    Step {
        answer,
        close: false,
        later: None,
    }
}

const fn answer_and_close(answer: &'static str) -> Step {
    Step {
        answer,
        close: true,
        later: None,
    }
}

impl Raw {
    async fn start(script: Vec<Step>) -> Raw {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (seen2, connections2) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                connections2.fetch_add(1, Ordering::SeqCst);
                let (seen, next, script) = (seen2.clone(), next.clone(), script.clone());
                tokio::spawn(serve(socket, seen, next, script));
            }
        });
        Raw {
            addr,
            seen,
            connections,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut socket: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicUsize>,
    script: Arc<Vec<Step>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            let mut more = [0u8; 4096];
            match socket.read(&mut more).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                _ => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let mut more = [0u8; 4096];
            match socket.read(&mut more).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                _ => return,
            }
        }
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
        buf.drain(..end + 4 + length);
        seen.lock().unwrap().push(format!("{head}\r\n\r\n{body}"));
        let i = next.fetch_add(1, Ordering::SeqCst).min(script.len() - 1);
        let step = script[i];
        if socket.write_all(step.answer.as_bytes()).await.is_err() || step.close {
            return;
        }
        if let Some(later) = step.later {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if socket.write_all(later.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A proxy (no token) for connection `c` on `upstream`, with a bearer token `t`.
async fn proxy_to(upstream: &Raw) -> LibraryProxy {
    proxy_with(json!({
        "base-url": format!("http://{}/fhir", upstream.addr), "read-timeout": "PT5S",
        "auth": {"scheme": "bearer", "token": "t"}}))
    .await
}

/// A proxy (no token) for connection `c` with `settings`.
async fn proxy_with(settings: serde_json::Value) -> LibraryProxy {
    let dir = tempfile::tempdir().unwrap();
    let doc = json!({"connections": {"c": settings}});
    let host = Arc::new(fhirconn_tests::build_host(dir.path(), doc).await);
    fhirconn_tests::serve_proxy(host, fhirconn_host::proxy::Config::default()).await
}

/// Writes `requests` on one connection to the proxy and reads until it closes.
async fn exchange(proxy: SocketAddr, requests: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(requests.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection after Connection: close")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn get(proxy: SocketAddr, path: &str, extra: &str) -> String {
    format!("GET /c/{path} HTTP/1.1\r\nHost: {proxy}\r\n{extra}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_pass_decoded_and_their_trailers_and_extensions_stay_behind() {
    let up = Raw::start(vec![answer(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Canary\r\n\r\n\
         5;ext=CANARY-ext\r\nhello\r\n6\r\n world\r\n0\r\nX-Canary: CANARY-trailer\r\n\r\n",
    )])
    .await;
    let proxy = proxy_to(&up).await;
    let text = exchange(
        proxy.addr,
        &get(proxy.addr, "Patient/1", "Connection: close\r\n"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "{text}"
    );
    assert!(!text.contains("CANARY"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("trailer:"), "{text}");
    // The server sent no Date: a proxy forwarding its answer adds one (RFC 9110 §6.6.1).
    assert_eq!(text.matches("\r\ndate: ").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_server_sends_after_an_answer_are_never_read_as_the_next_answer() {
    // After a complete answer the server sends a whole forged one on the idle connection
    // (as a body written by someone else could make it do); a later request, from another
    // caller, must get the server's real answer on a fresh connection.
    let up = Raw::start(vec![
        Step {
            answer: "HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 10:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
            close: false,
            later: Some("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"),
        },
        answer("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"),
    ])
    .await;
    let proxy = proxy_to(&up).await;
    let close = "Connection: close\r\n";
    let first = exchange(proxy.addr, &get(proxy.addr, "Patient/1", close)).await;
    assert!(first.ends_with("\r\n\r\nok"), "{first}");
    assert_eq!(
        first.matches("\r\ndate: ").count(),
        1,
        "one Date, the server's: {first}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = exchange(proxy.addr, &get(proxy.addr, "Patient/2", close)).await;
    assert!(second.ends_with("\r\n\r\nreal"), "{second}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_lengths_get_a_502_and_a_fresh_connection_after_them() {
    let up = Raw::start(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let proxy = proxy_to(&up).await;
    let text = exchange(
        proxy.addr,
        &(get(proxy.addr, "Patient/1", "")
            + &get(proxy.addr, "Patient/2", "Connection: close\r\n")),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
    assert!(text.contains("two different Content-Lengths"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_is_replaced_and_the_request_answered() {
    let up = Raw::start(vec![answer_and_close(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let proxy = proxy_to(&up).await;
    for i in 0..3 {
        let text = exchange(
            proxy.addr,
            &get(proxy.addr, "Patient/1", "Connection: close\r\n"),
        )
        .await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "request {i}: {text}"
        );
        assert!(text.ends_with("\r\n\r\nok"), "request {i}: {text}");
        // Let the server's FIN arrive before the next request takes the pooled connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.seen().len(), 3, "each request reached the server once");
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_mixes_relayed_requests_and_those_hyper_answers() {
    let up = Raw::start(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
        answer("HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthree"),
    ])
    .await;
    let proxy = proxy_to(&up).await;
    let a = proxy.addr;
    // A browser's request goes to hyper's path (and is refused there), the POST too; the
    // connection stays there for the last GET.
    let post = format!("POST /c/Patient HTTP/1.1\r\nHost: {a}\r\nContent-Length: 2\r\n\r\n{{}}");
    let first = "Authorization: Bearer caller-token\r\nX-Request-Id: job-1\r\n";
    let requests = get(a, "Patient/1", first)
        + &get(a, "Patient/3", "Origin: http://evil.example\r\n")
        + &post
        + &get(a, "Patient/4", "Connection: close\r\n");
    let text = exchange(a, &requests).await;
    // Bodies run on into the next status line.
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| text[i..].split("\r\n").next().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 403 Forbidden",
            "HTTP/1.1 201 Created",
            "HTTP/1.1 200 OK"
        ],
        "{text}"
    );
    assert!(text.contains("x-request-id: job-1\r\n"), "{text}");
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        3,
        "the cross-site request never reached the server: {seen:?}"
    );
    assert!(
        seen[0].starts_with("GET /fhir/Patient/1 HTTP/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(seen[1].starts_with("POST /fhir/Patient HTTP/1.1\r\n") && seen[1].ends_with("{}"));
    assert!(
        seen[2].starts_with("GET /fhir/Patient/4 HTTP/1.1\r\n"),
        "{}",
        seen[2]
    );
    for s in &seen {
        let lower = s.to_ascii_lowercase();
        assert!(lower.contains("\r\nauthorization: bearer t\r\n"), "{s}");
        assert!(!lower.contains("caller-token"), "{s}");
        assert!(lower.contains(&format!("\r\nhost: {}\r\n", up.addr)), "{s}");
    }
    assert!(seen[0]
        .to_ascii_lowercase()
        .contains("\r\nx-request-id: job-1\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_keep_their_length_and_carry_no_body() {
    let up = Raw::start(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let proxy = proxy_to(&up).await;
    let a = proxy.addr;
    let head = format!("HEAD /c/Patient/1 HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let text = exchange(a, &(head + &get(a, "Patient/2", "Connection: close\r\n"))).await;
    let (first, second) = text.split_once("\r\n\r\n").unwrap();
    assert!(first.contains("content-length: 1234"), "{text}");
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(second.ends_with("\r\n\r\nok"), "{text}");
    assert!(up.seen()[0].starts_with("HEAD /fhir/Patient/1 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_server_ends_by_closing_goes_on_chunked_and_ends_only_on_its_close() {
    let up = Raw::start(vec![answer_and_close("HTTP/1.1 200 OK\r\n\r\nuntil-close")]).await;
    let proxy = proxy_to(&up).await;
    let close = "Connection: close\r\n";
    let text = exchange(proxy.addr, &get(proxy.addr, "Patient/1", close)).await;
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\nb\r\nuntil-close\r\n0\r\n\r\n"),
        "{text}"
    );

    // One that stalls instead is cut at read-timeout: the caller's body has no final chunk
    // and reads as an error, not as a complete (truncated) answer.
    let stalls = Raw::start(vec![answer("HTTP/1.1 200 OK\r\n\r\npartial")]).await;
    let proxy = proxy_with(json!({
        "base-url": format!("http://{}/fhir", stalls.addr), "read-timeout": "PT1S",
        "auth": {"scheme": "bearer", "token": "t"}}))
    .await;
    let r = reqwest::get(format!("http://{}/c/Patient/1", proxy.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .unwrap();
    assert!(body.is_err(), "a cut body must not look complete: {body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_to_head_has_no_body_and_the_connection_stays_in_step() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = proxy_with(json!({
        "base-url": format!("http://127.0.0.1:{port}/fhir"),
        "auth": {"scheme": "bearer", "token": "t"}}))
    .await;
    let a = proxy.addr;
    let head = format!("HEAD /c/Patient/1 HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let text = exchange(a, &(head + &get(a, "Patient/2", "Connection: close\r\n"))).await;
    let (first, second) = text.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(first.contains("content-length: "), "{text}");
    assert!(second.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(second.contains("\r\n\r\n{\"issue\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_counts_against_the_request_timeout() {
    // Accepts and never speaks: the TLS handshake stalls until connect-timeout (30 s).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = proxy_with(json!({
        "base-url": format!("https://{addr}/fhir"), "connect-timeout": "PT30S",
        "request-timeout": "PT1S", "auth": {"scheme": "bearer", "token": "t"}}))
    .await;
    let started = std::time::Instant::now();
    let r = reqwest::get(format!("http://{}/c/Patient/1", proxy.addr))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("request-timeout"), "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_is_asked_once_per_request_and_its_secret_never_shown() {
    use fhirconn_testkit::hostile::{Answer, HostileServer};
    let idp = HostileServer::start().await.unwrap();
    idp.on("POST", "/token", Answer::text(500, "down"));
    let proxy = proxy_with(json!({
        "base-url": "http://127.0.0.1:9/fhir",
        "auth": {"scheme": "oidc-client-credentials", "token-url": idp.url("/token"),
                 "client-id": "a", "client-secret": "CANARY-relay-secret"}}))
    .await;
    for i in 1..=2 {
        let r = reqwest::get(format!("http://{}/c/Patient/1", proxy.addr))
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let text = r.text().await.unwrap();
        assert!(!text.contains("CANARY"), "{text}");
        assert_eq!(
            idp.received_at("/token").len(),
            i,
            "token requests after {i}"
        );
    }
}
