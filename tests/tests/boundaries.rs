//! Security boundaries against hostile servers (SECURITY.md): plain-http credentials, endpoints
//! advertised by a server, scopes and lifetimes chosen by a server, and redirects to another
//! origin. Every test here failed on the code before the rule it pins.

use fhirconn_host::keygen::{self, KeyAlg};
use fhirconn_host::Request;
use fhirconn_host::{Host, TestReport};
use fhirconn_testkit::hostile::{documents, Answer, HostileServer};
use fhirconn_tests::{failure, fhirconn_bin, fhirconn_command, plugin_dir, run_command};
use serde_json::{json, Value};

const TOKEN: &str = "CANARY-boundary-token-4711";

async fn host(dir: &std::path::Path, conn: Value) -> Result<Host, fhirconn_host::Error> {
    Host::builder()
        .config_value(dir, json!({"connections": {"c": conn}}))
        .plugin_dir(plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
}

async fn test_one(dir: &std::path::Path, conn: Value) -> TestReport {
    host(dir, conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .test(&[], None)
        .await
        .unwrap()
        .remove(0)
}

/// A hostile server that is also a plausible FHIR server: `/fhir/metadata` answers.
async fn fhir_lookalike() -> HostileServer {
    let s = HostileServer::start().await.unwrap();
    s.on(
        "GET",
        "/fhir/metadata",
        Answer::fhir(
            200,
            &json!({"resourceType": "CapabilityStatement", "status": "active",
                    "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"]}),
        ),
    );
    s
}

fn smart_key(dir: &std::path::Path) {
    let key = keygen::generate(KeyAlg::Es384, Some("k1")).unwrap();
    keygen::write(&dir.join("key"), &key, false).unwrap();
}

/// Tests a smart-backend connection with `auth` to `base_url`, its key in a fresh directory.
async fn test_smart(base_url: String, auth: Value) -> TestReport {
    let dir = tempfile::tempdir().unwrap();
    smart_key(dir.path());
    test_one(dir.path(), json!({"base-url": base_url, "auth": auth})).await
}

fn smart_auth() -> Value {
    json!({"scheme": "smart-backend", "client-id": "app", "private-key-file": "key/private-key.pem",
           "kid": "k1", "scope": "system/*.rs system/Patient.r"})
}

#[test]
fn credentials_over_plain_http_to_a_remote_host_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fhirconn.yaml");
    let check = |yaml: &str| {
        std::fs::write(&cfg, yaml).unwrap();
        let out = run_command(
            fhirconn_command(dir.path(), true)
                .arg("--config")
                .arg(&cfg)
                .args(["config", "check"]),
        );
        (out.code, out.stdout + &out.stderr)
    };
    for auth in [
        "{scheme: basic, username: u, password: CANARY-http-pw}",
        "{scheme: bearer, token: CANARY-http-token}",
    ] {
        let (code, text) = check(&format!(
            "connections:\n  remote:\n    base-url: http://fhir.example.org/r4\n    auth: {auth}\n"
        ));
        assert_eq!(code, 2, "{text}");
        assert!(
            text.contains("allow-insecure-http") && text.contains("remote") && text.contains(":3"),
            "names the setting, the connection and the line: {text}"
        );
        assert!(!text.contains("CANARY"), "{text}");
    }
    // This build has no SOCKS support: a socks5 proxy is refused when the file loads.
    let (code, text) = check(
        "connections:\n  c:\n    base-url: https://fhir.example.org/r4\n    \
         proxy: {url: 'socks5://127.0.0.1:1080'}\n    auth: {scheme: none}\n",
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("SOCKS") && text.contains("proxy"), "{text}");
    // Loopback, https, `none` and an explicit opt-in are fine.
    for (base, extra, auth) in [
        ("http://127.0.0.1:9/r4", "", "{scheme: bearer, token: t}"),
        ("http://localhost:9/r4", "", "{scheme: bearer, token: t}"),
        (
            "https://fhir.example.org/r4",
            "",
            "{scheme: bearer, token: t}",
        ),
        ("http://fhir.example.org/r4", "", "{scheme: none}"),
        (
            "http://fhir.example.org/r4",
            "    allow-insecure-http: true\n",
            "{scheme: bearer, token: t}",
        ),
    ] {
        let (code, text) = check(&format!(
            "connections:\n  c:\n    base-url: {base}\n{extra}    auth: {auth}\n"
        ));
        assert_eq!(code, 0, "{base} {auth}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_insecure_http_is_warned_about_in_every_report() {
    let s = fhir_lookalike().await;
    let dir = tempfile::tempdir().unwrap();
    let r = test_one(
        dir.path(),
        json!({"base-url": s.url("/fhir"), "allow-insecure-http": true,
               "auth": {"scheme": "bearer", "token": TOKEN}}),
    )
    .await;
    assert!(r.ok, "{}", failure(&r));
    assert!(
        r.warnings.iter().any(|w| w.contains("allow-insecure-http")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_discovered_plain_http_token_endpoint_on_a_remote_host_gets_no_assertion() {
    let s = fhir_lookalike().await;
    s.on(
        "GET",
        "/fhir/.well-known/smart-configuration",
        Answer::json(
            200,
            &documents::smart_configuration("http://token.attacker.invalid/token"),
        ),
    );
    let r = test_smart(s.url("/fhir"), smart_auth()).await;
    let text = failure(&r);
    assert!(
        text.contains("allow-insecure-http") && text.contains("token.attacker.invalid"),
        "{text}"
    );
    assert!(
        s.received().iter().all(|r| r.method == "GET"),
        "no assertion was posted anywhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_endpoint_on_another_host_and_a_scope_downgrade_are_reported() {
    let s = fhir_lookalike().await;
    // The FHIR server is 127.0.0.1; its smart-configuration names `localhost`: another host.
    let token_url = format!("http://localhost:{}/token", s.addr().port());
    s.on(
        "GET",
        "/fhir/.well-known/smart-configuration",
        Answer::json(200, &documents::smart_configuration(&token_url)),
    );
    s.on(
        "POST",
        "/token",
        Answer::json(
            200,
            &json!({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                    "scope": "system/Patient.r"}),
        ),
    );
    let r = test_smart(s.url("/fhir"), smart_auth()).await;
    assert!(r.ok, "{}", failure(&r));
    let warnings = r.warnings.join("\n");
    assert!(
        warnings.contains("another host") && warnings.contains(&token_url),
        "{warnings}"
    );
    assert!(warnings.contains("not granted system/*.rs"), "{warnings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absurd_token_lifetimes_are_diagnosed() {
    for (expires_in, expected) in [
        (json!(0), "already expired"),
        (json!(-5), "negative"),
        (json!(1e11), "absurd"),
    ] {
        let s = fhir_lookalike().await;
        s.on(
            "POST",
            "/token",
            Answer::json(
                200,
                &json!({"access_token": TOKEN, "token_type": "Bearer", "expires_in": expires_in}),
            ),
        );
        let mut auth = smart_auth();
        auth["token-url"] = json!(s.url("/token"));
        let r = test_smart(s.url("/fhir"), auth).await;
        let text = failure(&r);
        assert!(text.contains(expected), "{expires_in}: {text}");
        assert!(!text.contains(TOKEN), "{text}");
    }
}

/// Custom headers and credentials stay on the connection's origin, and a 307/308 never
/// replays a write at another origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_to_another_origin_carry_no_credentials_custom_headers_or_bodies() {
    let home = fhir_lookalike().await;
    let elsewhere = HostileServer::start().await.unwrap();
    elsewhere.otherwise(Answer::fhir(
        200,
        &json!({"resourceType": "Patient", "id": "1"}),
    ));
    home.on(
        "GET",
        "/fhir/Patient/1",
        Answer::redirect(302, &elsewhere.url("/Patient/1")),
    );
    home.on(
        "*",
        "/fhir/Patient/2",
        Answer::redirect(307, &elsewhere.url("/Patient/2")),
    );
    home.on(
        "*",
        "/fhir/Patient/3",
        Answer::redirect(308, &elsewhere.url("/Patient/3")),
    );
    let dir = tempfile::tempdir().unwrap();
    let h = host(
        dir.path(),
        json!({"base-url": home.url("/fhir"), "auth": {"scheme": "bearer", "token": TOKEN}}),
    )
    .await
    .unwrap();
    let c = h.connection("c").unwrap();
    let mut get = Request::get("Patient/1");
    get.headers.push((
        "x-api-key".parse().unwrap(),
        "CANARY-custom-header".parse().unwrap(),
    ));
    let resp = c.send(get).await.unwrap();
    assert_eq!(resp.status.as_u16(), 200);
    let got = elsewhere.received_at("/Patient/1");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("authorization"), None);
    assert_eq!(got[0].header("x-api-key"), None, "custom header followed");
    assert_eq!(
        home.received_at("/fhir/Patient/1")[0].header("x-api-key"),
        Some("CANARY-custom-header"),
        "the own origin got it"
    );
    for (method, path) in [
        ("PUT", "Patient/2"),
        ("DELETE", "Patient/3"),
        ("POST", "Patient/2"),
    ] {
        let req = Request {
            method: method.parse().unwrap(),
            path: path.into(),
            headers: Vec::new(),
            body: (method != "DELETE").then(|| b"{\"resourceType\":\"Patient\"}".to_vec()),
        };
        let e = c.send(req).await.unwrap_err().to_string();
        assert!(e.contains("another origin") && e.contains(method), "{e}");
    }
    assert!(
        elsewhere.received_at("/Patient/2").is_empty()
            && elsewhere.received_at("/Patient/3").is_empty(),
        "a write was replayed at another origin"
    );
}

/// A secret file that is a device or a FIFO is refused at once: `/dev/zero` would be read until
/// memory ran out, a FIFO would block for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_files_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for file in [fifo.display().to_string(), "/dev/zero".to_string()] {
        let conn = json!({"base-url": "http://127.0.0.1:9/fhir",
                          "auth": {"scheme": "bearer", "token-file": file}});
        let built =
            tokio::time::timeout(std::time::Duration::from_secs(10), host(dir.path(), conn))
                .await
                .expect("reading the secret file must not hang");
        let text = match built {
            Err(e) => e.to_string(),
            Ok(h) => failure(&h.test(&[], None).await.unwrap()[0]),
        };
        assert!(text.contains("not a regular file"), "{file}: {text}");
    }
}

/// The CLI itself (not just the helper) runs without core dumps and non-dumpable: checked on a
/// running `fhirconn proxy` through `/proc/<pid>/limits`.
#[test]
#[cfg(target_os = "linux")]
fn the_running_cli_writes_no_core_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fhirconn.yaml");
    std::fs::write(
        &cfg,
        "connections:\n  c:\n    base-url: http://127.0.0.1:9/fhir\n    auth: {scheme: none}\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(fhirconn_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(["proxy", "--listen", "127.0.0.1:0", "--no-token"])
        .env("XDG_STATE_HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The process sets its limits first thing in `main`; until then /proc shows the limits
    // it inherited. Poll (bounded) until they read 0, or the time is up.
    let core_line = |limits: &str| {
        limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
    };
    let mut limits = String::new();
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        limits =
            std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
        if core_line(&limits).as_deref() == Some("0 0") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("no limits read: {limits}"));
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        &["0", "0"],
        "soft and hard core limits: {core}"
    );
}

/// Loopback traffic never goes through a proxy: plain http to loopback is allowed only because
/// it never leaves the machine. Other destinations still use the environment's proxy.
#[test]
fn loopback_requests_bypass_environment_proxies_and_others_do_not() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (fhir, proxy) = rt.block_on(async {
        let fhir = fhir_lookalike().await;
        fhir.on(
            "GET",
            "/fhir/Patient/1",
            Answer::fhir(200, &json!({"resourceType": "Patient", "id": "1"})),
        );
        let proxy = HostileServer::start().await.unwrap();
        proxy.otherwise(Answer::text(502, "proxy"));
        (fhir, proxy)
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fhirconn.yaml");
    let run = |base: &str| {
        std::fs::write(
            &cfg,
            format!(
                "connections:\n  c:\n    base-url: {base}\n    connect-timeout: PT2S\n    \
                 read-timeout: PT2S\n    auth: {{scheme: bearer, token: {TOKEN}}}\n"
            ),
        )
        .unwrap();
        std::process::Command::new(fhirconn_bin())
            .arg("--config")
            .arg(&cfg)
            .arg("--plugin-dir")
            .arg(plugin_dir())
            .args(["get", "c", "Patient/1"])
            .env("HTTP_PROXY", proxy.origin())
            .env("HTTPS_PROXY", proxy.origin())
            .env("ALL_PROXY", proxy.origin())
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap()
    };
    let out = run(&fhir.url("/fhir"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        proxy.received().is_empty(),
        "loopback went through the proxy"
    );
    assert_eq!(fhir.received_at("/fhir/Patient/1").len(), 1);
    // A remote https server is reached through the environment's proxy (CONNECT).
    let _ = run("https://fhir.example.invalid/r4");
    assert!(
        proxy.received().iter().any(|r| r.method == "CONNECT"),
        "{:?}",
        proxy.received()
    );
}
