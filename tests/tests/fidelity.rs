//! Seed fidelity: what a DSF "FHIR client connections" user expects keeps its meaning in
//! fhirconn. `read-timeout` is an idle timeout (a body that keeps flowing is never cut) and
//! `request-timeout` the only total deadline; `test-connection-on-startup` is honoured by the
//! library's startup call and by `fhirconn proxy`; `import dsf` output passes `config check`
//! (PKCS#12, trust exactly the given roots, issuer without its trailing `/`, a password beside
//! an unencrypted key); classic OpenSSL-encrypted keys are named with the conversion command;
//! the redactor leaves setting names whole.

use fhirconn_host::transport::TransportError;
use fhirconn_host::{Error, Host};
use fhirconn_testkit::pki::{ClientSpec, Pki};
use fhirconn_testkit::{FhirServer, FhirServerConfig};
use fhirconn_tests::{fhirconn_command, run_command, Out};
use serde_json::{json, Value};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How a [`trickle_server`] answers: `chunks` small chunks of the body, `gap` apart, with a
/// `stall` before the chunk numbered `stall.0`.
#[derive(Clone, Copy)]
struct Trickle {
    chunks: usize,
    gap: Duration,
    stall: Option<(usize, Duration)>,
}

/// A loopback HTTP/1.1 server that answers every request with a chunked body trickled out as
/// `t` says; returns its base URL.
async fn trickle_server(t: Trickle) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+ndjson\r\n\
                            Transfer-Encoding: chunked\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..t.chunks {
                    if let Some((at, pause)) = t.stall {
                        if at == i {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    let line = format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n");
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(t.gap).await;
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    format!("http://{addr}/fhir")
}

async fn host_for(base: &str, extra: Value) -> Host {
    let mut conn = json!({"base-url": base, "connect-timeout": "PT1S", "read-timeout": "PT1S"});
    if let (Some(c), Some(e)) = (conn.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Host::builder()
        .config_value(".", json!({"connections": {"t": conn}}))
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap()
}

fn timeout_kind(e: &Error) -> String {
    match e {
        Error::Transport {
            error: TransportError::Timeout { what, .. },
            ..
        } => what.clone(),
        other => format!("not a timeout: {other}"),
    }
}

/// DSF's `read-timeout` is a read (idle) timeout: a body that keeps flowing for longer than
/// connect-timeout + read-timeout (the old total deadline) arrives whole; a stall longer than
/// read-timeout is still cut, and named as read-timeout.
#[tokio::test]
async fn read_timeout_is_idle_a_flowing_body_is_not_cut() {
    let flowing = Trickle {
        chunks: 9,
        gap: Duration::from_millis(350),
        stall: None,
    };
    let host = host_for(&trickle_server(flowing).await, json!({})).await;
    let started = Instant::now();
    let resp = host
        .connection("t")
        .unwrap()
        .get("Patient/$export-file")
        .await
        .expect("a body that keeps flowing is not cut at read-timeout");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the body took longer than connect + read timeout ({:?})",
        started.elapsed()
    );
    let body = String::from_utf8(resp.body).unwrap();
    assert_eq!(body.lines().count(), 9, "{body}");

    let stalled = Trickle {
        chunks: 3,
        gap: Duration::from_millis(100),
        stall: Some((1, Duration::from_millis(2500))),
    };
    let host = host_for(&trickle_server(stalled).await, json!({})).await;
    let e = host.connection("t").unwrap().get("x").await.unwrap_err();
    assert_eq!(timeout_kind(&e), "read-timeout", "{e}");
}

/// `request-timeout` is the total deadline (unset by default): the same flowing body is cut
/// when it runs past it, and the error names request-timeout.
#[tokio::test]
async fn request_timeout_is_a_total_deadline() {
    let flowing = Trickle {
        chunks: 9,
        gap: Duration::from_millis(350),
        stall: None,
    };
    let base = trickle_server(flowing).await;
    let host = host_for(&base, json!({"request-timeout": "PT1.5S"})).await;
    let started = Instant::now();
    let e = host.connection("t").unwrap().get("x").await.unwrap_err();
    assert_eq!(timeout_kind(&e), "request-timeout", "{e}");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

/// A port nothing listens on.
fn dead_base_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/fhir")
}

/// The library's startup call tests exactly the connections marked
/// `test-connection-on-startup`, and fails naming the one that failed.
#[tokio::test]
async fn startup_checks_test_marked_connections_and_fail_on_one() {
    let server = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let up = server.base_url();
    let build = |conns: Value| async move {
        Host::builder()
            .config_value(".", json!({ "connections": conns }))
            .only_explicit_plugin_dirs()
            .build()
            .await
            .unwrap()
    };
    let host = build(json!({
        "up": {"base-url": up, "test-connection-on-startup": true},
        "down-unmarked": {"base-url": dead_base_url()}}))
    .await;
    let reports = host.startup_checks().await.expect("only 'up' is tested");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].id, "up");

    let host = build(json!({
        "up": {"base-url": up, "test-connection-on-startup": true},
        "down": {"base-url": dead_base_url(), "test-connection-on-startup": true}}))
    .await;
    match host.startup_checks().await {
        Err(Error::Startup(f)) => {
            let ids: Vec<&str> = f.failed.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(ids, ["down"], "{f}");
            assert!(f.to_string().contains("test-connection-on-startup"), "{f}");
        }
        other => panic!("expected a startup failure, got {other:?}"),
    }
}

/// A marked connection whose scheme could not be configured (its plugin panicked) is a
/// failed startup test, not skipped.
#[tokio::test]
async fn startup_checks_fail_on_a_marked_connection_that_is_unavailable() {
    let server = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let host = Host::builder()
        .config_value(
            ".",
            json!({"connections": {
                "boom": {"base-url": server.base_url(), "test-connection-on-startup": true,
                         "auth": {"scheme": "panic", "panic-in": "configure"}},
                "boom-unmarked": {"base-url": server.base_url(),
                         "auth": {"scheme": "panic", "panic-in": "configure"}}}}),
        )
        .only_explicit_plugin_dirs()
        .plugin_dir(fhirconn_tests::fixture_dir())
        .build()
        .await
        .unwrap();
    match host.startup_checks().await {
        Err(Error::Startup(f)) => {
            let ids: Vec<&str> = f.failed.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(ids, ["boom"], "{f}");
        }
        other => panic!("expected a startup failure, got {other:?}"),
    }
}

/// Runs `fhirconn proxy` on a free port in `dir` until it says it listens (then stops it) or
/// exits; returns its exit code (`None` when it was listening) and its standard error.
fn proxy_start(dir: &Path) -> (Option<i32>, String) {
    let mut child = fhirconn_command(dir, true)
        .env("XDG_STATE_HOME", dir.join("state"))
        .args(["-c", "fhirconn.yaml", "proxy", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut listening = false;
    while let Some(Ok(line)) = lines.next() {
        stderr.push_str(&line);
        stderr.push('\n');
        if line.starts_with("proxy on ") {
            listening = true;
            break;
        }
        assert!(Instant::now() < deadline, "the proxy hangs: {stderr}");
    }
    if listening {
        let _ = child.kill();
        let _ = child.wait();
        return (None, stderr);
    }
    let status = child.wait().unwrap();
    (status.code(), stderr)
}

/// `fhirconn proxy` tests the marked connections before it listens: it starts when they pass
/// (the result logged) and refuses to start, exit 1, naming the connection, when one fails.
#[tokio::test]
async fn proxy_honours_test_connection_on_startup() {
    let server = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let write = |down_marked: bool| {
        let yaml = format!(
            "connections:\n  up:\n    base-url: {}\n    test-connection-on-startup: true\n  \
             down:\n    base-url: {}\n    test-connection-on-startup: {down_marked}\n",
            server.base_url(),
            dead_base_url()
        );
        std::fs::write(d.join("fhirconn.yaml"), yaml).unwrap();
    };
    write(false);
    let dd = d.clone();
    let (code, stderr) = tokio::task::spawn_blocking(move || proxy_start(&dd))
        .await
        .unwrap();
    assert_eq!(code, None, "the proxy did not start: {stderr}");
    assert!(
        stderr.contains("test-connection-on-startup: passed") && stderr.contains("up"),
        "{stderr}"
    );
    write(true);
    let dd = d.clone();
    let (code, stderr) = tokio::task::spawn_blocking(move || proxy_start(&dd))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("down: "), "{stderr}");
    assert!(
        stderr.contains("the proxy did not start: fix the connection, or remove test-connection"),
        "{stderr}"
    );
}

fn fhirconn(dir: &Path, args: &[&str]) -> Out {
    run_command(fhirconn_command(dir, true).env("HOME", dir).args(args))
}

/// A DSF file using `cert-auth.p12-file`, a password beside an unencrypted PEM key (DSF's own
/// example value `password`), `trusted-root-certificates-file` and an OIDC base URL with a
/// trailing `/` imports into a file that `config check` accepts, with DSF's meaning kept; the
/// ignored password is a warning whose setting name is not garbled by the redactor.
#[test]
fn import_dsf_keeps_p12_roots_issuer_and_tolerates_a_password_beside_a_plain_key() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.crt"), pki.root_pem()).unwrap();
    let c = pki.client(&ClientSpec::new("dsf client"));
    std::fs::write(d.join("client.crt"), &c.chain_pem).unwrap();
    std::fs::write(d.join("client.key"), &c.key_pem).unwrap();
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "client",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            "1",
            p12_keystore::PrivateKey::from_der(&c.key_der).unwrap(),
            c.chain_der
                .iter()
                .map(|x| p12_keystore::Certificate::from_der(x).unwrap()),
        )),
    );
    std::fs::write(
        d.join("client.p12"),
        store.writer("p12-pass-CANARY").write().unwrap(),
    )
    .unwrap();
    std::fs::write(d.join("p12.password"), "p12-pass-CANARY\n").unwrap();
    std::fs::write(d.join("secret.file"), "s3cret-CANARY\n").unwrap();
    std::fs::write(
        d.join("dsf.yaml"),
        "p12-server:\n  base-url: https://p12.example/fhir\n  \
           trusted-root-certificates-file: 'ca.crt'\n  cert-auth:\n    \
             p12-file: 'client.p12'\n    password-file: 'p12.password'\n\
         cert-auth-server:\n  base-url: https://cert.auth.server/fhir/foo\n  cert-auth:\n    \
             private-key-file: 'client.key'\n    certificate-file: 'client.crt'\n    \
             password: 'password'\n\
         oidc-auth-server:\n  base-url: https://oidc.auth.server/fhir\n  oidc-auth:\n    \
             base-url: https://oidc.server/realms/x/\n    client-id: some_client_id\n    \
             client-secret-file: 'secret.file'\n",
    )
    .unwrap();
    let out = fhirconn(d, &["import", "dsf", "dsf.yaml", "--out", "fhirconn.yaml"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let yaml = std::fs::read_to_string(d.join("fhirconn.yaml")).unwrap();
    assert!(
        !out.stderr.contains("p12-file"),
        "nothing dropped: {}",
        out.stderr
    );
    let doc = fhirconn_host::config::Document::parse(Path::new("f.yaml"), yaml.as_bytes())
        .unwrap()
        .value;
    let conns = &doc["connections"];
    assert_eq!(
        conns["p12-server"]["auth"]["p12-file"],
        json!("client.p12"),
        "{yaml}"
    );
    assert_eq!(
        conns["p12-server"]["auth"]["p12-password-file"],
        json!("p12.password")
    );
    assert_eq!(
        conns["p12-server"]["use-system-roots"],
        json!(false),
        "{yaml}"
    );
    assert!(conns["cert-auth-server"].get("use-system-roots").is_none());
    assert_eq!(
        conns["oidc-auth-server"]["auth"]["issuer"],
        json!("https://oidc.server/realms/x"),
        "{yaml}"
    );
    assert_eq!(
        conns["cert-auth-server"]["auth"]["private-key-password"],
        json!("password")
    );

    let out = fhirconn(d, &["-c", "fhirconn.yaml", "config", "check"]);
    assert_eq!(out.code, 0, "the imported file is valid: {}", out.all());
    assert!(
        out.stderr.contains(
            "private-key-password is set, but the key in private-key-file is not encrypted"
        ),
        "a warning, with the setting name whole: {}",
        out.stderr
    );
    assert!(!out.all().contains("[REDACTED] is set"), "{}", out.all());
    assert!(!out.all().contains("CANARY"), "{}", out.all());
}

/// A key encrypted the classic OpenSSL way gets an error that says so and how to convert it,
/// at the setting, through the real binary and plugin.
#[test]
fn a_classic_openssl_encrypted_key_is_named_with_the_conversion_command() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = pki.client(&ClientSpec::new("classic"));
    std::fs::write(d.join("client.crt"), &c.chain_pem).unwrap();
    std::fs::write(
        d.join("client.key"),
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
         DEK-Info: AES-128-CBC,0F1E2D3C4B5A69788796A5B4C3D2E1F0\n\n\
         QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1\n\
         -----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        d.join("fhirconn.yaml"),
        "connections:\n  c:\n    base-url: https://c.example/fhir\n    auth:\n      \
         scheme: mtls\n      certificate-file: client.crt\n      private-key-file: client.key\n      \
         private-key-password: CANARY-classic\n",
    )
    .unwrap();
    let out = fhirconn(d, &["-c", "fhirconn.yaml", "config", "check"]);
    assert_eq!(out.code, 2, "{}", out.all());
    let all = out.all();
    assert!(all.contains("classic OpenSSL format"), "{all}");
    assert!(all.contains("openssl pkcs8 -topk8"), "{all}");
    assert!(!all.contains("not encrypted"), "{all}");
    assert!(!all.contains("CANARY"), "{all}");
}
