//! `fhirconn proxy`, the local authenticating proxy, end to end: the real binary (and the
//! library's `proxy::serve`) in front of testkit servers. Besides forwarding under concurrent
//! clients and streaming, these tests try the proxy as a web page or another local user would:
//! DNS rebinding (`Host: rebind.attacker.example`), cross-site requests (`Origin`,
//! `Sec-Fetch-Site`, `Referer`), cookies in both directions, HTML run in the proxy's origin,
//! requests without the token, and listening beyond loopback without TLS.

use fhirconn_host::Host;
use fhirconn_testkit::hostile::{Answer, HostileServer};
use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{bearer_server, fhirconn_bin, plugin_dir, LibraryProxy};
use serde_json::json;
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "CANARY-proxy-upstream-token-31";
const PROXY_TOKEN: &str = "CANARY-proxy-own-token-64";

/// A directory with `fhirconn.yaml` holding connection `s` (bearer `TOKEN`) to `base_url`,
/// and `proxy.token` holding `PROXY_TOKEN`.
fn config_dir(base_url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        format!(
            "connections:\n  s:\n    base-url: {base_url}\n    auth: {{scheme: bearer, token: {TOKEN}}}\n  other:\n    base-url: http://127.0.0.1:9/fhir\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("proxy.token"), format!("{PROXY_TOKEN}\n")).unwrap();
    set_mode(&dir.path().join("proxy.token"), 0o600);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// A running `fhirconn proxy` (killed on drop).
struct Proxy {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts `fhirconn proxy --listen 127.0.0.1:0 ARGS` in `dir` (state directory
    /// `dir/state`) and waits until it listens.
    fn start(dir: &Path, args: &[&str]) -> Self {
        let args = if args.contains(&"--listen") {
            args.to_vec()
        } else {
            [&["--listen", "127.0.0.1:0"], args].concat()
        };
        let mut child = proxy_command(dir, &args).env("HOME", dir).spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.strip_prefix("proxy on ") {
                    let authority = rest.split("://").nth(1).unwrap_or("");
                    let authority = authority.split('/').next().unwrap_or("");
                    let _ = tx.send(authority.to_string());
                }
            }
        });
        let Ok(authority) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy did not start: {}", stderr.lock().unwrap());
        };
        // Wait for the rest of the start-up lines.
        std::thread::sleep(Duration::from_millis(100));
        Self {
            child,
            addr: authority.parse().unwrap(),
            stderr,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (`INT` as Ctrl-C does, `TERM` as service managers do) and waits for
    /// the exit.
    fn stop_with(mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the proxy did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Proxy {
    /// Sends `signal` (`HUP`, `INT`, `TERM`) to the proxy.
    fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }
}

/// `kill -SIGNAL pid`.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// `fhirconn --plugin-dir <built plugins> proxy ARGS` in `dir` (state directory `dir/state`,
/// no `FHIRCONN_CONFIG`), stderr piped.
fn proxy_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(fhirconn_bin());
    cmd.current_dir(dir)
        .env_remove("FHIRCONN_CONFIG")
        .env("XDG_STATE_HOME", dir.join("state"))
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .arg("proxy")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A bearer upstream accepting `TOKEN`, its [`config_dir`], and a proxy started there with
/// `args`.
async fn proxy_to_bearer_upstream(args: &[&str]) -> (FhirServer, tempfile::TempDir, Proxy) {
    let upstream = bearer_server(TOKEN).await;
    let dir = config_dir(&upstream.base_url());
    let proxy = start_proxy(dir.path(), args).await;
    (upstream, dir, proxy)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a proxy off the async runtime (start-up blocks on its output).
async fn start_proxy(dir: &Path, args: &[&str]) -> Proxy {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(&dir, &args)
    })
    .await
    .unwrap()
}

/// Waits until the proxy's start-up readiness test of `s` (one `/metadata` request) has
/// reached `upstream`, and returns the requests so far: the tests count the requests after it.
async fn after_startup_test(upstream: &fhirconn_testkit::FhirServer) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.requests() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upstream.requests()
}

/// The requests a hostile upstream received, without the proxy's readiness tests.
fn without_startup_test(
    seen: Vec<fhirconn_testkit::hostile::Received>,
) -> Vec<fhirconn_testkit::hostile::Received> {
    seen.into_iter()
        .filter(|r| !r.target.ends_with("/metadata"))
        .collect()
}

/// Runs `fhirconn proxy ARGS` expecting it to refuse to start (a proxy that starts instead is
/// stopped after 20 s and reported as exit code -1).
fn refused(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut child = proxy_command(dir, args).spawn().unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = pipe.read_to_string(&mut err);
        err
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().unwrap())
}

/// One HTTP/1.1 exchange over a raw socket (for request targets and headers reqwest will not
/// send); returns the status line and the whole answer.
fn raw_request(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (text.lines().next().unwrap_or("").to_string(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_name_the_proxy_are_refused_and_never_forwarded() {
    let (upstream, _dir, proxy) = proxy_to_bearer_upstream(&["--token-file", "proxy.token"]).await;
    let base = after_startup_test(&upstream).await;
    let port = proxy.port();
    let client = reqwest::Client::new();
    let get = |host: String, path: &str| {
        client
            .get(proxy.url(path))
            .header("Host", host)
            .bearer_auth(PROXY_TOKEN)
            .send()
    };

    // DNS rebinding: the page's own name, now resolving to 127.0.0.1. Even with the token
    // (a page cannot have it, but the check must not depend on that), nothing is forwarded.
    for path in ["/s/Patient/1", "/"] {
        let r = get(format!("rebind.attacker.example:{port}"), path)
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 421, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("DNS rebinding"), "{body}");
        assert!(!body.contains("other"), "ids listed: {body}");
    }
    // Another port of loopback is another origin too.
    let r = get(format!("127.0.0.1:{}", port.wrapping_add(1)), "/s/metadata")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    assert_eq!(
        (upstream.requests() - base),
        0,
        "a misdirected request was forwarded"
    );

    // An absolute request target naming another host, and a request without Host.
    let (status, _) = raw_request(
        proxy.addr,
        &format!(
            "GET http://rebind.attacker.example:{port}/s/metadata HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {PROXY_TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(status.contains(" 421 "), "{status}");
    let (status, _) = raw_request(
        proxy.addr,
        &format!("GET /s/metadata HTTP/1.0\r\nAuthorization: Bearer {PROXY_TOKEN}\r\n\r\n"),
    );
    assert!(status.contains(" 421 "), "{status}");
    assert_eq!(
        (upstream.requests() - base),
        0,
        "a misdirected request was forwarded"
    );

    // The proxy's own names are answered.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = get(host.clone(), "/s/Patient/1").await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{host}");
    }
    assert_eq!((upstream.requests() - base), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_browser_requests_are_refused_and_never_forwarded() {
    let (upstream, _dir, proxy) = proxy_to_bearer_upstream(&["--token-file", "proxy.token"]).await;
    let base = after_startup_test(&upstream).await;
    let own = format!("http://127.0.0.1:{}", proxy.port());
    let client = reqwest::Client::new();
    let post = |name: &'static str, value: String| {
        client
            .post(proxy.url("/s/Patient"))
            .bearer_auth(PROXY_TOKEN)
            .header("Content-Type", "text/plain")
            .header(name, value)
            .body(r#"{"resourceType":"Patient"}"#)
            .send()
    };
    // The `<form enctype=text/plain>` CSRF, and what browsers send for other cross-site loads.
    for (name, value) in [
        ("Origin", "https://evil.example".to_string()),
        ("Origin", "null".to_string()),
        ("Origin", format!("http://127.0.0.1:{}", proxy.port() + 1)),
        ("Origin", format!("https://127.0.0.1:{}", proxy.port())),
        ("Sec-Fetch-Site", "cross-site".to_string()),
        // Every port of localhost is the same site: a local dev server's page is not the proxy.
        ("Sec-Fetch-Site", "same-site".to_string()),
        ("Referer", "https://evil.example/page".to_string()),
    ] {
        let r = post(name, value.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{name}: {value}");
        let body = r.text().await.unwrap();
        assert!(body.contains("other origins"), "{body}");
    }
    assert_eq!(
        (upstream.requests() - base),
        0,
        "a cross-site request was forwarded"
    );

    // The proxy's own pages (same origin) and tools that send none of these are answered.
    let r = post("Origin", own.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = post("Sec-Fetch-Site", "same-origin".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = post("Sec-Fetch-Site", "none".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = post("Referer", format!("{own}/s/Patient")).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!((upstream.requests() - base), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_never_cross_the_proxy_and_answers_cannot_run_script_in_its_origin() {
    let upstream = HostileServer::start().await.unwrap();
    upstream.otherwise(
        Answer::raw(
            200,
            "<html><script>fetch('/hospital/Patient')</script></html>",
        )
        .header("content-type", "text/html")
        .header("set-cookie", "session=from-server-a; Path=/")
        .header("set-cookie", "tracker=1")
        .header("set-cookie2", "old=1")
        .header("access-control-allow-origin", "*")
        .header("access-control-allow-credentials", "true")
        .header("alt-svc", "h3=\":443\"")
        .header("x-upstream", "kept"),
    );
    let dir = config_dir(&upstream.origin());
    let proxy = start_proxy(dir.path(), &["--token-file", "proxy.token"]).await;
    let r = reqwest::Client::new()
        .get(proxy.url("/s/Binary/1"))
        .bearer_auth(PROXY_TOKEN)
        .header("Cookie", "jupyter=CANARY-cookie-of-another-localhost-app")
        .header("Sec-Fetch-Site", "same-origin")
        .header("X-Client", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers();
    for dropped in [
        "set-cookie",
        "set-cookie2",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "alt-svc",
    ] {
        assert!(h.get(dropped).is_none(), "{dropped} returned: {h:?}");
    }
    assert_eq!(h["x-upstream"], "kept");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp: Vec<_> = h
        .get_all("content-security-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(csp.iter().any(|v| v.contains("sandbox")), "{csp:?}");

    let seen = without_startup_test(upstream.received());
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert!(req.header("cookie").is_none(), "{:?}", req.headers);
    assert_eq!(req.header("x-client"), Some("kept"));
    // The connection's credentials went upstream, not the proxy's token.
    assert_eq!(
        req.header("authorization"),
        Some(&format!("Bearer {TOKEN}")[..])
    );
    assert!(!format!("{:?}", req.headers).contains(PROXY_TOKEN));

    // The proxy's own answers are sandboxed too.
    let r = reqwest::get(proxy.url("/s/metadata")).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_a_token_is_generated_into_a_private_file() {
    let (upstream, dir, proxy) = proxy_to_bearer_upstream(&[]).await;
    let base = after_startup_test(&upstream).await;
    let path = dir
        .path()
        .join(format!("state/fhirconn/proxy-{}.token", proxy.port()));
    let err = proxy.stderr();
    assert!(err.contains(&path.display().to_string()), "{err}");
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(token.len() >= 40, "a weak token: {} chars", token.len());
    assert!(!err.contains(&token), "the token was printed: {err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    let client = reqwest::Client::new();
    // Another local user or process, without the token: nothing, not even the ids.
    for path in ["/s/Patient/1", "/", "/nope/x"] {
        let r = client.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"));
        let body = r.text().await.unwrap();
        assert!(!body.contains("other"), "{body}");
    }
    let r = client
        .get(proxy.url("/"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!((upstream.requests() - base), 0);
    // The person, with the token: the ids, and the connection.
    let r = client
        .get(proxy.url("/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body = r.text().await.unwrap();
    assert!(body.contains("other") && body.contains('s'), "{body}");
    let r = client
        .get(proxy.url("/s/Patient/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        upstream.authorizations()[base as usize..].to_vec(),
        vec![Some(format!("Bearer {TOKEN}"))]
    );
    // Stopped (SIGTERM), the token of this run goes away with it.
    let status = tokio::task::spawn_blocking(move || proxy.stop_with("TERM"))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the token file stayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_must_be_asked_for_warns_and_still_lists_no_ids() {
    let (_upstream, dir, proxy) = proxy_to_bearer_upstream(&["--no-token"]).await;
    let err = proxy.stderr();
    assert!(err.contains("warning: --no-token"), "{err}");
    assert!(!dir.path().join("state").exists());
    let client = reqwest::Client::new();
    let r = client.get(proxy.url("/s/Patient/1")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for path in ["/", "/nope/x"] {
        let r = client.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("other"),
            "ids listed without a token: {body}"
        );
    }
    // Nor in the service paths: readiness says only whether the proxy is ready (`other` is
    // unreachable: once tested, 503), and metrics, whose labels are ids, are not served.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let r = client.get(proxy.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status == 503 && body.contains("false") || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status, body.as_str()), (503, r#"{"ready":false}"#));
    let r = client.get(proxy.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("other") && !body.contains("connection=\"s\""),
        "ids listed without a token: {body}"
    );
    // The browser checks hold without a token too.
    let r = client
        .get(proxy.url("/s/Patient/1"))
        .header("Host", format!("rebind.attacker.example:{}", proxy.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    let status = tokio::task::spawn_blocking(move || proxy.stop_with("INT"))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (code, err) = refused(dir.path(), &["--no-token", "--token-file", "proxy.token"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_keeps_working_and_is_not_forwarded() {
    let (upstream, dir, proxy) = proxy_to_bearer_upstream(&["--token-file", "proxy.token"]).await;
    let base = after_startup_test(&upstream).await;
    let client = reqwest::Client::new();
    let r = client
        .get(proxy.url("/s/Patient/1"))
        .header("Authorization", format!("Bearer {PROXY_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for wrong in [
        format!("Bearer {PROXY_TOKEN}x"),
        format!("Bearer {}", &PROXY_TOKEN[..PROXY_TOKEN.len() - 1]),
        format!("Basic {PROXY_TOKEN}"),
        "Bearer ".to_string(),
    ] {
        let r = client
            .get(proxy.url("/s/Patient/1"))
            .header("Authorization", wrong.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{wrong}");
    }
    assert_eq!(
        upstream.authorizations()[base as usize..].to_vec(),
        vec![Some(format!("Bearer {TOKEN}"))]
    );
    let err = proxy.stderr();
    assert!(!err.contains(PROXY_TOKEN), "{err}");
    assert!(!err.contains("warning"), "{err}");
    drop(proxy);
    // A token file other users can read still works, with a warning.
    let loose = dir.path().join("loose.token");
    std::fs::write(&loose, "CANARY-loose-token").unwrap();
    set_mode(&loose, 0o644);
    let proxy = start_proxy(dir.path(), &["--token-file", "loose.token"]).await;
    let err = proxy.stderr();
    #[cfg(unix)]
    assert!(
        err.contains("loose.token can be read or changed by other users (mode 644)"),
        "{err}"
    );
    assert!(!err.contains("CANARY-loose-token"), "{err}");
    let r = client
        .get(proxy.url("/s/Patient/1"))
        .bearer_auth("CANARY-loose-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(proxy);
    std::fs::write(dir.path().join("empty.token"), "\n").unwrap();
    let (code, err) = refused(dir.path(), &["--token-file", "empty.token"]);
    assert_eq!(code, 2);
    assert!(err.contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_proxy_needs_tls_and_a_token() {
    let upstream = bearer_server(TOKEN).await;
    let dir = config_dir(&upstream.base_url());
    let d = dir.path();
    let (code, err) = refused(d, &["--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a loopback address"), "{err}");
    // Plain HTTP beyond loopback would put tokens and patient data on the network.
    let (code, err) = refused(
        d,
        &[
            "--listen",
            "0.0.0.0:0",
            "--allow-remote",
            "--token-file",
            "proxy.token",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("--allow-remote requires --tls-cert and --tls-key"),
        "{err}"
    );

    let pki = fhirconn_testkit::pki::Pki::new();
    std::fs::write(d.join("cert.pem"), &pki.server.chain_pem).unwrap();
    std::fs::write(d.join("key.pem"), &pki.server.key_pem).unwrap();
    std::fs::write(d.join("notakey.pem"), "not a key").unwrap();
    let tls = ["--tls-cert", "cert.pem", "--tls-key", "key.pem"];
    let (code, err) = refused(
        d,
        &[
            &["--listen", "0.0.0.0:0", "--allow-remote", "--no-token"][..],
            &tls,
        ]
        .concat(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("requires a token"), "{err}");
    let (code, err) = refused(
        d,
        &[
            "--allow-remote",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "notakey.pem",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("--tls-key") && err.contains("notakey.pem"),
        "{err}"
    );

    let proxy = start_proxy(
        d,
        &[
            &[
                "--listen",
                "0.0.0.0:0",
                "--allow-remote",
                "--token-file",
                "proxy.token",
            ][..],
            &tls,
        ]
        .concat(),
    )
    .await;
    let base = after_startup_test(&upstream).await;
    let port = proxy.port();
    assert!(
        proxy.stderr().contains("proxy on https://"),
        "{}",
        proxy.stderr()
    );
    let root = reqwest::Certificate::from_pem(pki.root_pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([root])
        .build()
        .unwrap();
    // A client that opens a connection and never finishes its handshake holds up no one.
    let _stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    let r = client
        .get(format!("https://127.0.0.1:{port}/s/Patient/1"))
        .bearer_auth(PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = client
        .get(format!("https://localhost:{port}/s/Patient/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Nothing is served in plain text.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/s/Patient/1"))
        .bearer_auth(PROXY_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "served over plain HTTP"
    );
    assert_eq!((upstream.requests() - base), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_authenticates_64_concurrent_clients_and_isolates_failures() {
    let bearer = bearer_server(TOKEN).await;
    let basic = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Basic {
            username: "u".into(),
            password: "CANARY-proxy-pw".into(),
        },
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = fhirconn_tests::build_host(
        dir.path(),
        json!({"connections": {
            "tok": {"base-url": bearer.base_url(), "auth": {"scheme": "bearer", "token": TOKEN}},
            "pw": {"base-url": basic.base_url(), "auth": {"scheme": "basic", "username": "u", "password": "CANARY-proxy-pw"}},
            "dead": {"base-url": "http://127.0.0.1:9/fhir", "connect-timeout": "PT1S"}}}),
    )
    .await;
    let config = fhirconn_host::proxy::Config::default().with_token("proxy-secret");
    let LibraryProxy { addr, stop, server } =
        fhirconn_tests::serve_proxy(Arc::new(host), config).await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let id = ["tok", "pw", "dead"][i % 3];
                let r = client
                    .get(format!("http://{addr}/{id}/Patient?_count=1"))
                    .bearer_auth("proxy-secret")
                    .header("Connection", "close")
                    .send()
                    .await
                    .unwrap();
                (id, r.status().as_u16())
            })
        })
        .collect();
    for t in tasks {
        let (id, status) = t.await.unwrap();
        let expected = if id == "dead" { 502 } else { 200 };
        assert_eq!(status, expected, "{id}");
    }
    // The proxy's own token is not forwarded; the connection's credentials are.
    assert!(bearer
        .authorizations()
        .iter()
        .all(|a| a.as_deref() == Some(&format!("Bearer {TOKEN}")[..])));
    // Without the proxy token: 401 from the proxy itself; unknown connection: 404.
    let r = client
        .get(format!("http://{addr}/tok/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("http://{addr}/nope/metadata"))
        .bearer_auth("proxy-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("OperationOutcome") && !body.contains(TOKEN),
        "{body}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Serves `host` through the library's proxy without a token.
async fn library_proxy(host: Arc<Host>) -> LibraryProxy {
    fhirconn_tests::serve_proxy(host, fhirconn_host::proxy::Config::default()).await
}

/// A host with one connection `name` with `settings`.
async fn host_for(name: &str, settings: serde_json::Value) -> Arc<Host> {
    let dir = tempfile::tempdir().unwrap();
    let doc = json!({"connections": {name: settings}});
    Arc::new(fhirconn_tests::build_host(dir.path(), doc).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_streams_bodies_larger_than_the_connections_response_cap() {
    let s = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    s.set_fault(fhirconn_testkit::Fault::HugeBody(5 * 1024 * 1024));
    let host = host_for(
        "big",
        json!({"base-url": s.base_url(), "max-response-bytes": 1048576}),
    )
    .await;
    // Buffered, the cap applies...
    let err = host
        .connection("big")
        .unwrap()
        .get("Patient/1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    // ...streamed through the proxy, it does not: the body is never held whole.
    let LibraryProxy { addr, stop, server } = library_proxy(host).await;
    let body = reqwest::get(format!("http://{addr}/big/Patient/1"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 5 * 1024 * 1024);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_bytes_reach_the_client_while_the_upstream_is_still_sending() {
    // The upstream sends one byte every 100 ms and never finishes: a proxy that buffered the
    // body would never answer.
    let s = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let every = Duration::from_millis(100);
    s.set_fault(fhirconn_testkit::Fault::Trickle(every));
    let host = host_for("slow", json!({"base-url": s.base_url()})).await;
    let LibraryProxy { addr, stop, server } = library_proxy(host).await;
    let started = Instant::now();
    let mut resp = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::get(format!("http://{addr}/slow/Patient/1")),
    )
    .await
    .expect("no answer while the upstream was still sending")
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut arrivals = Vec::new();
    while arrivals.len() < 5 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("no bytes while the upstream was still sending")
            .unwrap()
            .expect("the body ended, but the upstream never ends it");
        if !chunk.is_empty() {
            arrivals.push(started.elapsed());
        }
    }
    // The bytes came one by one as they were sent, not in one batch at the end.
    assert!(
        arrivals[0] < Duration::from_secs(2),
        "first byte after {:?}",
        arrivals[0]
    );
    // The fifth byte was sent at least 4 gaps after the start: seen before the body's end
    // (which never comes), it was streamed. (Gaps between arrivals are not compared: a
    // loaded machine may deliver bytes sent apart together.)
    assert!(
        arrivals[4] >= every * 4,
        "the fifth chunk came before it was sent: {arrivals:?}"
    );
    drop(resp);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_on_their_hop_and_bodies_are_capped() {
    let upstream = HostileServer::start().await.unwrap();
    upstream.otherwise(
        Answer::json(200, &json!({"resourceType": "Patient"}))
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("proxy-authenticate", "Basic realm=upstream")
            .header("x-upstream", "kept"),
    );
    let host = host_for("s", json!({"base-url": upstream.origin()})).await;
    let LibraryProxy { addr, stop, server } = library_proxy(host).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/s/Patient?x=1"))
        .header("Connection", "x-client-hop, TE")
        .header("X-Client-Hop", "1")
        .header("TE", "trailers")
        .header("Proxy-Authorization", "Basic CANARY-proxy-authz")
        .header("Upgrade", "websocket")
        .header("X-Client", "kept")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers();
    assert!(h.get("x-upstream-hop").is_none(), "{h:?}");
    assert!(h.get("proxy-authenticate").is_none(), "{h:?}");
    assert_eq!(h["x-upstream"], "kept");
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.target, "/Patient?x=1");
    assert_eq!(req.body_text(), "{}");
    assert_eq!(req.header("x-client"), Some("kept"));
    for dropped in ["x-client-hop", "te", "proxy-authorization", "upgrade"] {
        assert!(
            req.header(dropped).is_none(),
            "{dropped}: {:?}",
            req.headers
        );
    }

    // A body over 64 MiB is refused before anything is sent.
    let big = vec![b' '; fhirconn_host::proxy::MAX_REQUEST_BODY + 1];
    let r = client
        .post(format!("http://{addr}/s/Patient"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // An absolute URL on another origin is refused, not fetched with the credentials.
    let other = HostileServer::start().await.unwrap();
    let r = client
        .get(format!("http://{addr}/s/{}", other.url("/Patient/1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(other.received().is_empty());
    assert_eq!(upstream.received().len(), 1);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_renewed_once_and_the_request_body_resent() {
    const AUDIENCE: &str = "https://fhir.testkit/r4";
    const SECRET: &str = "CANARY-proxy-client-secret";
    let idp = IdentityProvider::start(IdpConfig {
        audience: AUDIENCE.into(),
        clients: vec![RegisteredClient {
            client_id: "proxy-client".into(),
            auth: ClientAuth::SecretBasic(SECRET.into()),
            scopes: vec!["system/*.rs".into()],
        }],
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let fhir = fhirconn_tests::jwt_server(&idp, AUDIENCE).await;
    let host = host_for(
        "c",
        json!({"base-url": fhir.base_url(), "auth": {"scheme": "oidc-client-credentials",
            "issuer": idp.issuer(), "client-id": "proxy-client", "client-secret": SECRET,
            "scope": "system/*.rs"}}),
    )
    .await;
    let LibraryProxy { addr, stop, server } = library_proxy(host).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{addr}/c/Patient/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    fhir.revoke_presented_tokens();
    let r = client
        .post(format!("http://{addr}/c/Patient"))
        .header("Content-Type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient","name":[{"family":"Resent"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let body = r.text().await.unwrap();
    assert!(body.contains("Resent"), "{body}");
    assert_eq!(fhir.unauthorized(), 1);
    assert_eq!(idp.tokens_issued(), 2);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

// ---- the proxy as a service ----

fn get_with(
    url: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, String, Vec<(String, String)>) {
    let mut req = std::process::Command::new("curl");
    req.args(["-s", "-i", "--max-time", "20", url]);
    if let Some(t) = token {
        req.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    for (k, v) in extra {
        req.args(["-H", &format!("{k}: {v}")]);
    }
    let out = req.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, body.to_string(), headers)
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_follow_the_access_rules_and_ids_reach_the_upstream() {
    let upstream = HostileServer::start().await.unwrap();
    upstream.on(
        "GET",
        "/fhir/Patient/1",
        Answer::fhir(200, &json!({"resourceType": "Patient", "id": "1"})),
    );
    upstream.on(
        "GET",
        "/fhir/metadata",
        Answer::fhir(
            200,
            &json!({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}),
        ),
    );
    let dir = config_dir(&upstream.url("/fhir"));
    let proxy = start_proxy(
        dir.path(),
        &["--token-file", "proxy.token", "--log-format", "json"],
    )
    .await;
    let p = proxy.url("");
    // Without the token, or addressed to another name: refused like every request.
    let r = tokio::task::spawn_blocking(move || {
        let no_token = get_with(&format!("{p}/healthz"), None, &[]).0;
        let rebound = get_with(
            &format!("{p}/metrics"),
            Some(PROXY_TOKEN),
            &[("Host", "rebind.attacker.example")],
        )
        .0;
        let health = get_with(&format!("{p}/healthz"), Some(PROXY_TOKEN), &[]);
        // Readiness: `s` passes its test, `other` (port 9) fails: not ready, and says which.
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = loop {
            let r = get_with(&format!("{p}/readyz"), Some(PROXY_TOKEN), &[]);
            let v: serde_json::Value = serde_json::from_str(&r.1).unwrap_or_default();
            if !v["connections"]["other"].is_null() && !v["connections"]["s"].is_null()
                || Instant::now() > deadline
            {
                break (r.0, v);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let proxied = get_with(
            &format!("{p}/s/Patient/1"),
            Some(PROXY_TOKEN),
            &[("X-Request-Id", "job-7.a")],
        );
        let fresh_id = get_with(
            &format!("{p}/s/Patient/1"),
            Some(PROXY_TOKEN),
            &[("X-Request-Id", "bad id")],
        );
        let metrics = get_with(&format!("{p}/metrics"), Some(PROXY_TOKEN), &[]);
        (no_token, rebound, health, ready, proxied, fresh_id, metrics)
    })
    .await
    .unwrap();
    let (no_token, rebound, health, (ready_status, ready), proxied, fresh_id, metrics) = r;
    assert_eq!(no_token, 401);
    assert_eq!(rebound, 421);
    assert_eq!((health.0, health.1.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(ready_status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["connections"]["s"]["ok"], true, "{ready}");
    assert_eq!(ready["connections"]["other"]["ok"], false, "{ready}");
    assert!(!ready.to_string().contains(TOKEN));
    // The caller's request id goes upstream and comes back; an unfit one is replaced.
    assert_eq!(proxied.0, 200);
    assert_eq!(header_of(&proxied.2, "x-request-id"), Some("job-7.a"));
    let ids: Vec<String> = upstream
        .received_at("/fhir/Patient/1")
        .iter()
        .filter_map(|r| r.header("x-request-id").map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], "job-7.a");
    assert_ne!(ids[1], "bad id");
    assert_eq!(
        header_of(&fresh_id.2, "x-request-id"),
        Some(ids[1].as_str())
    );
    // Metrics: requests by connection and status class, latency, bytes, token fetches.
    assert_eq!(metrics.0, 200);
    let m = metrics.1;
    for want in [
        r#"fhirconn_proxy_requests_total{connection="s",status="2xx"} 2"#,
        "fhirconn_proxy_upstream_seconds",
        r#"fhirconn_proxy_bytes_streamed_total{connection="s"}"#,
        r#"fhirconn_token_fetches_total{connection="s",source="scheme"}"#,
    ] {
        assert!(m.contains(want), "{want} missing in:\n{m}");
    }
    assert!(!m.contains(TOKEN) && !m.contains(PROXY_TOKEN));
    // JSON logs, with the request id.
    let log = proxy.stderr();
    let answered: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "answered")
        .collect();
    assert!(
        answered
            .iter()
            .any(|v| v["fields"]["request_id"] == "job-7.a" && v["fields"]["connection"] == "s"),
        "{log}"
    );
    assert!(!log.contains(TOKEN) && !log.contains(PROXY_TOKEN), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_file_and_keeps_the_old_one_when_it_is_bad() {
    let (upstream, dir, proxy) = proxy_to_bearer_upstream(&["--token-file", "proxy.token"]).await;
    let p = proxy.url("");
    let hup = |pid: u32| {
        send_signal(pid, "HUP");
        std::thread::sleep(Duration::from_millis(700));
    };
    let pid = proxy.child.id();
    let yaml = dir.path().join("fhirconn.yaml");
    let good = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, "connections:\n  s:\n    base-url: [not, a, url\n").unwrap();
    let base = upstream.base_url();
    let r = tokio::task::spawn_blocking(move || {
        hup(pid);
        let still = get_with(&format!("{p}/s/Patient/1"), Some(PROXY_TOKEN), &[]).0;
        std::fs::write(
            &yaml,
            format!(
                "{good}  t:\n    base-url: {base}\n    auth: {{scheme: bearer, token: {TOKEN}}}\n"
            ),
        )
        .unwrap();
        hup(pid);
        let added = get_with(&format!("{p}/t/Patient/1"), Some(PROXY_TOKEN), &[]).0;
        (still, added)
    })
    .await
    .unwrap();
    assert_eq!(r, (200, 200));
    let log = proxy.stderr();
    assert!(
        log.contains("not reloaded, keeping the previous configuration"),
        "{log}"
    );
    assert!(log.contains("SIGHUP: reloaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_within_the_drain_timeout_and_exits_0() {
    let upstream = bearer_server(TOKEN).await;
    upstream.set_fault(fhirconn_testkit::Fault::Slow(Duration::from_millis(1500)));
    let dir = config_dir(&upstream.base_url());
    let (status, took, in_flight) =
        term_with_a_request_in_flight(&upstream, dir.path(), &["--token-file", "proxy.token"])
            .await;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        in_flight.join().unwrap(),
        200,
        "the request in flight was answered"
    );
    assert!(
        took >= Duration::from_millis(800),
        "it waited for the request"
    );

    // Bounded: a request longer than --drain-timeout does not hold the exit.
    upstream.set_fault(fhirconn_testkit::Fault::Slow(Duration::from_secs(8)));
    let args = ["--token-file", "proxy.token", "--drain-timeout", "1"];
    let (status, took, _hung) = term_with_a_request_in_flight(&upstream, dir.path(), &args).await;
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

/// Starts a proxy with `args` in front of `upstream`, sends one request through it, and once
/// the upstream has it (polled, not a fixed wait) SIGTERM: the exit status, how long the exit
/// took after the signal, and the request's thread (its status).
async fn term_with_a_request_in_flight(
    upstream: &FhirServer,
    dir: &Path,
    args: &[&str],
) -> (
    std::process::ExitStatus,
    Duration,
    std::thread::JoinHandle<u16>,
) {
    let proxy = start_proxy(dir, args).await;
    let before = after_startup_test(upstream).await;
    let p = proxy.url("");
    let in_flight =
        std::thread::spawn(move || get_with(&format!("{p}/s/Patient/1"), Some(PROXY_TOKEN), &[]).0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.requests() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        upstream.requests() > before,
        "the request never reached the upstream"
    );
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || proxy.stop_with("TERM"))
        .await
        .unwrap();
    (status, started.elapsed(), in_flight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waiting_on_a_slow_upstream_blocks_neither_serving_nor_sigterm() {
    let (upstream, _dir, proxy) = proxy_to_bearer_upstream(&["--token-file", "proxy.token"]).await;
    let p = proxy.url("");
    let pid = proxy.child.id();
    let r = tokio::task::spawn_blocking(move || {
        // Let the start-up test of `s` finish, then stall the upstream: the reload's test of
        // the connections waits on it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let v: serde_json::Value =
                serde_json::from_str(&get_with(&format!("{p}/readyz"), Some(PROXY_TOKEN), &[]).1)
                    .unwrap_or_default();
            if !v["connections"]["s"].is_null() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        upstream.set_fault(fhirconn_testkit::Fault::Slow(Duration::from_secs(8)));
        send_signal(pid, "HUP");
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let health = get_with(&format!("{p}/healthz"), Some(PROXY_TOKEN), &[]).0;
        (health, started.elapsed(), upstream)
    })
    .await
    .unwrap();
    let (health, took, _upstream) = r;
    assert_eq!(health, 200);
    // The upstream stalls for 8 s: an answer well before that did not wait on the reload
    // (the bound leaves room for a curl process on a loaded machine).
    assert!(
        took < Duration::from_secs(4),
        "/healthz took {took:?} during a reload"
    );
    let log = proxy.stderr();
    assert!(log.contains("SIGHUP: reloaded"), "{log}");
    // SIGTERM while a reload's test still waits on the upstream: a prompt exit 0.
    proxy.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || proxy.stop_with("TERM"))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A loopback server that reads one request per connection, answers `head` (and nothing
/// more), and holds the connection open.
async fn stalling_server(head: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

/// `GET http://ADDR/PATH` through a library proxy, bounded by 20 s (so a proxy that waits
/// forever fails the test instead of hanging it): the answer, and how long its head took.
async fn timed_get(addr: SocketAddr, path: &str) -> (reqwest::Response, Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = client
        .get(format!("http://{addr}/{path}"))
        .send()
        .await
        .unwrap();
    (r, started.elapsed())
}

/// The proxy's direct path keeps the connection's `read-timeout`: an upstream that never
/// answers gets a 502 naming the timeout, and one that stops in the middle of a body ends the
/// caller's body with an error (not a hang, not a body that looks complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_the_read_timeout_before_the_answer_and_within_its_body() {
    let silent = stalling_server("").await;
    let stops = stalling_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 100\r\n\r\n\
         {\"resource",
    )
    .await;
    let conn = |addr: SocketAddr| {
        json!({"base-url": format!("http://{addr}/fhir"), "read-timeout": "PT1S",
               "auth": {"scheme": "bearer", "token": "t"}})
    };
    let dir = tempfile::tempdir().unwrap();
    let doc = json!({"connections": {"silent": conn(silent), "stops": conn(stops)}});
    let host = Arc::new(fhirconn_tests::build_host(dir.path(), doc).await);
    let proxy = library_proxy(host).await;

    let (r, took) = timed_get(proxy.addr, "silent/Patient/1").await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("read-timeout"), "{text}");
    assert!(took >= Duration::from_millis(900), "{took:?}");

    let started = Instant::now();
    let (r, _) = timed_get(proxy.addr, "stops/Patient/1").await;
    assert_eq!(r.status(), 200);
    // Well before the client's own 20 s timeout.
    let body = tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .expect("the proxy must end a body whose upstream stopped");
    assert!(body.is_err(), "a cut body must not look complete: {body:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A connection with an HTTP proxy (`proxy.url`) reaches its server through that proxy when
/// called through `fhirconn proxy` too: the direct path is only for requests no proxy applies
/// to. (Sent directly, the name would not even resolve, and the proxy would see nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_an_http_proxy_is_forwarded_through_it() {
    let http_proxy = HostileServer::start().await.unwrap();
    http_proxy.otherwise(Answer::text(502, "no"));
    let host = host_for(
        "c",
        json!({"base-url": "https://fhir.example.invalid/r4",
               "proxy": {"url": http_proxy.origin()},
               "auth": {"scheme": "bearer", "token": "t"}}),
    )
    .await;
    let proxy = library_proxy(host).await;
    let r = reqwest::get(format!("http://{}/c/Patient/1", proxy.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let seen = http_proxy.received();
    assert!(
        seen.iter().any(|r| r.method == "CONNECT"
            && r.headers
                .iter()
                .any(|(n, v)| n == "host" && v == "fhir.example.invalid:443")),
        "{seen:?}"
    );
}

/// CONNECT and TRACE are refused (405) and never reach the server: a CONNECT would go out as
/// a tunnel request with the connection's credentials, and a TRACE would have the server echo
/// them back to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_trace_are_refused_and_never_forwarded() {
    let upstream = HostileServer::start().await.unwrap();
    upstream.otherwise(Answer::text(200, "echo"));
    let host = host_for(
        "s",
        json!({"base-url": upstream.url("/fhir"), "auth": {"scheme": "bearer", "token": "t"}}),
    )
    .await;
    let proxy = library_proxy(host).await;
    let addr = proxy.addr;
    for method in ["CONNECT", "TRACE"] {
        let request =
            format!("{method} /s/Patient/1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let (status, text) = tokio::task::spawn_blocking(move || raw_request(addr, &request))
            .await
            .unwrap();
        assert!(status.contains(" 405 "), "{method}: {text}");
    }
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
    let r = reqwest::get(format!("http://{addr}/s/Patient/1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the proxy still forwards a GET");
}

/// `connect-timeout` bounds the whole connection set-up on the proxy's direct path, the TLS
/// handshake included: a server that accepts and never answers the handshake fails the
/// request after `connect-timeout`, not after `read-timeout`, and the answer names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_fails_at_the_connect_timeout() {
    let silent = stalling_server("").await;
    let host = host_for(
        "tls",
        json!({"base-url": format!("https://{silent}/fhir"), "connect-timeout": "PT1S",
               "read-timeout": "PT60S", "auth": {"scheme": "bearer", "token": "t"}}),
    )
    .await;
    let proxy = library_proxy(host).await;
    let (r, took) = timed_get(proxy.addr, "tls/Patient/1").await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("connect-timeout"), "{text}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
