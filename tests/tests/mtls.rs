//! mTLS end to end: the `mtls` plugin (built cdylib) against TLS servers from the testkit PKI
//! that require a client certificate, alone and stacked with a token scheme whose token
//! endpoint also requires the certificate; trust settings; and the diagnoses of TLS failures.

use fhirconn_host::{Error, Host, TestReport};
use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_testkit::pki::{CertAndKey, ClientSpec, KeyKind, Pki, Validity};
use fhirconn_testkit::tls::{server_config, server_config_with, ClientCerts};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{failure, fhirconn_command, plugin_dir, run_command};
use serde_json::{json, Value};
use std::path::Path;

const KEY_PASSWORD: &str = "CANARY-key-password";

struct Env {
    pki: Pki,
    dir: tempfile::TempDir,
    /// Requires a client certificate; no other authentication.
    mtls: FhirServer,
    /// TLS without client certificates.
    plain_tls: FhirServer,
    /// A certificate for another name.
    wrong_name: FhirServer,
    /// Token endpoint requiring a client certificate.
    idp: IdentityProvider,
    /// Requires a client certificate and a token from `idp`.
    mtls_token: FhirServer,
}

fn write_pair(dir: &Path, name: &str, c: &CertAndKey) {
    std::fs::write(dir.join(format!("{name}.crt")), &c.chain_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &c.key_pem).unwrap();
}

async fn env() -> Env {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), pki.root_pem()).unwrap();
    write_pair(d, "ec", &pki.client(&ClientSpec::new("ec client")));
    write_pair(
        d,
        "rsa",
        &pki.client(&ClientSpec {
            key: KeyKind::Rsa,
            ..ClientSpec::new("rsa client")
        }),
    );
    write_pair(
        d,
        "chained",
        &pki.client(&ClientSpec {
            via_intermediate: true,
            ..ClientSpec::new("chained client")
        }),
    );
    write_pair(
        d,
        "expired",
        &pki.client(&ClientSpec {
            validity: Validity::Expired,
            ..ClientSpec::new("expired client")
        }),
    );
    write_pair(d, "rogue", &pki.rogue_client("rogue client"));
    // An encrypted PKCS#8 key and a PKCS#12 file of the EC client.
    let ec = pki.client(&ClientSpec::new("p12 client"));
    let info = pkcs8::PrivateKeyInfoRef::try_from(ec.key_der.as_slice()).unwrap();
    let enc = info.encrypt(KEY_PASSWORD).unwrap();
    std::fs::write(d.join("enc.crt"), &ec.chain_pem).unwrap();
    std::fs::write(
        d.join("enc.key"),
        pem::encode(&pem::Pem::new(
            "ENCRYPTED PRIVATE KEY",
            enc.as_bytes().to_vec(),
        )),
    )
    .unwrap();
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "client",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            "1",
            p12_keystore::PrivateKey::from_der(&ec.key_der).unwrap(),
            ec.chain_der
                .iter()
                .map(|c| p12_keystore::Certificate::from_der(c).unwrap()),
        )),
    );
    std::fs::write(
        d.join("client.p12"),
        store.writer(KEY_PASSWORD).write().unwrap(),
    )
    .unwrap();

    let required = server_config(&pki, ClientCerts::Required);
    let mtls = FhirServer::start_tls(FhirServerConfig::default(), required.clone())
        .await
        .unwrap();
    let plain_tls = FhirServer::start_tls(
        FhirServerConfig::default(),
        server_config(&pki, ClientCerts::None),
    )
    .await
    .unwrap();
    let wrong_name = FhirServer::start_tls(
        FhirServerConfig::default(),
        server_config_with(&pki, &pki.server_for(&["other.example"]), ClientCerts::None),
    )
    .await
    .unwrap();
    let idp = IdentityProvider::start_tls(
        IdpConfig {
            audience: "mtls-fhir".into(),
            clients: vec![RegisteredClient {
                client_id: "mtls-app".into(),
                auth: ClientAuth::SecretPost("app-secret".into()),
                scopes: vec!["system/*.rs".into()],
            }],
            ..IdpConfig::default()
        },
        required.clone(),
    )
    .await
    .unwrap();
    let mtls_token = FhirServer::start_tls(
        FhirServerConfig {
            auth: ServerAuth::Jwt(idp.verifier("mtls-fhir")),
            ..FhirServerConfig::default()
        },
        required,
    )
    .await
    .unwrap();
    Env {
        pki,
        dir,
        mtls,
        plain_tls,
        wrong_name,
        idp,
        mtls_token,
    }
}

fn pem_auth(name: &str) -> Value {
    json!({"scheme": "mtls", "certificate-file": format!("{name}.crt"),
           "private-key-file": format!("{name}.key")})
}

impl Env {
    fn conn(&self, base: String, auth: Value) -> Value {
        json!({"base-url": base, "trusted-root-certificates-file": "ca.pem", "auth": auth})
    }

    async fn host(&self, connections: Value) -> Result<Host, Error> {
        Host::builder()
            .config_value(self.dir.path(), json!({ "connections": connections }))
            .plugin_dir(plugin_dir())
            .only_explicit_plugin_dirs()
            .build()
            .await
    }

    async fn test_one(&self, conn: Value, probe: Option<&str>) -> TestReport {
        let host = self
            .host(json!({ "c": conn }))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        host.test(&[], probe).await.unwrap().remove(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_format_and_a_chain_authenticate_with_one_handshake_per_test() {
    let e = env().await;
    let p12 = json!({"scheme": "mtls", "p12-file": "client.p12", "p12-password": KEY_PASSWORD});
    let mut encrypted = pem_auth("enc");
    encrypted["private-key-password-file"] = json!("key-password.txt");
    std::fs::write(
        e.dir.path().join("key-password.txt"),
        format!("{KEY_PASSWORD}\n"),
    )
    .unwrap();
    let stats = e.mtls.tls_stats().unwrap();
    for (name, auth, subject) in [
        ("pem-ec", pem_auth("ec"), "ec client"),
        ("pem-rsa", pem_auth("rsa"), "rsa client"),
        ("chain", pem_auth("chained"), "chained client"),
        ("encrypted", encrypted, "p12 client"),
        ("pkcs12", p12, "p12 client"),
    ] {
        let before = stats.handshakes();
        let r = e
            .test_one(e.conn(e.mtls.base_url(), auth), Some("Patient?_count=1"))
            .await;
        assert!(r.ok, "{name}: {}", failure(&r));
        // One handshake for metadata and probe together (each test builds its own host,
        // whose client pool starts empty).
        assert_eq!(
            stats.handshakes() - before,
            1,
            "{name}: metadata and probe share one TLS connection"
        );
        let client = r
            .client_certificate
            .as_ref()
            .expect("client certificate facts");
        assert!(client.subject.contains(subject), "{name}: {client:?}");
        let server = r
            .server_certificate
            .as_ref()
            .expect("server certificate facts");
        assert!(
            server.subject.contains("fhirconn test server"),
            "{server:?}"
        );
        assert!(server.days_left > 300);
    }
    let seen = stats.client_certs();
    assert_eq!(
        seen.len() as u64,
        stats.handshakes(),
        "a certificate in every handshake"
    );
    let _ = &e.pki;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_of_one_host_share_clients_and_hosts_share_none() {
    let e = env().await;
    let stats = e.mtls.tls_stats().unwrap();
    let ec = e.conn(e.mtls.base_url(), pem_auth("ec"));
    let rsa = e.conn(e.mtls.base_url(), pem_auth("rsa"));
    let host = e
        .host(json!({"a": ec.clone(), "b": ec.clone(), "c": rsa}))
        .await
        .unwrap();
    // b presents a's certificate: it reuses a's client and its pooled TLS connection.
    for (id, handshakes) in [("a", 1), ("b", 0), ("c", 1)] {
        let before = stats.handshakes();
        let r = host.test(&[id.into()], None).await.unwrap().remove(0);
        assert!(r.ok, "{id}: {}", failure(&r));
        assert_eq!(stats.handshakes() - before, handshakes, "{id}");
    }
    // One client per client certificate, and the default one (no certificate) the host
    // built with itself, so that no first request waits for the system roots.
    assert_eq!(host.clients().len(), 3, "one client per client certificate");
    // Another host owns its own clients: nothing is shared through a process-wide cache.
    let other = e.host(json!({"a": ec})).await.unwrap();
    assert_eq!(other.clients().len(), 1, "only its own default client");
    let before = stats.handshakes();
    let r = other.test(&["a".into()], None).await.unwrap().remove(0);
    assert!(r.ok, "{}", failure(&r));
    assert_eq!(
        stats.handshakes() - before,
        1,
        "a new host makes its own connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_connections_with_equal_settings_share_one_client() {
    let e = env().await;
    let conns: serde_json::Map<String, Value> = (0..1000)
        .map(|i| {
            let c = json!({"base-url": e.plain_tls.base_url(),
                           "trusted-root-certificates-file": "ca.pem"});
            (format!("c{i:04}"), c)
        })
        .collect();
    let host = e.host(Value::Object(conns)).await.unwrap();
    let started = std::time::Instant::now();
    let reports = host.test(&[], None).await.unwrap();
    let took = started.elapsed();
    assert_eq!(reports.len(), 1000);
    for r in &reports {
        assert!(r.ok, "{}: {}", r.id, failure(r));
    }
    // Building a client reads the system roots (milliseconds): once, not a thousand times.
    assert_eq!(host.clients().len(), 1, "one client for equal settings");
    eprintln!("1,000 connection tests over TLS: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_stacked_with_client_credentials_reaches_the_token_endpoint_too() {
    let e = env().await;
    let auth = json!([
        pem_auth("ec"),
        {"scheme": "oidc-client-credentials", "token-url": e.idp.token_endpoint(),
         "client-id": "mtls-app", "client-secret": "app-secret",
         "auth-method": "client_secret_post", "scope": "system/*.rs"}
    ]);
    let r = e
        .test_one(
            e.conn(e.mtls_token.base_url(), auth.clone()),
            Some("Patient/1"),
        )
        .await;
    assert!(r.ok, "{}", failure(&r));
    assert_eq!(r.schemes, ["mtls", "oidc-client-credentials"]);
    let idp_tls = e.idp.tls_stats().unwrap();
    assert_eq!(
        idp_tls.client_certs().len(),
        1,
        "the token endpoint saw the certificate"
    );
    assert_eq!(e.idp.tokens_issued(), 1);

    // Without the certificate, the token endpoint refuses the handshake.
    let token_only = auth[1].clone();
    let r = e
        .test_one(e.conn(e.mtls_token.base_url(), token_only), None)
        .await;
    let text = failure(&r);
    assert!(text.starts_with("credentials: "), "{text}");
    assert!(text.contains("client certificate"), "{text}");

    // Two certificates on one connection are refused.
    let two = json!([pem_auth("ec"), pem_auth("rsa")]);
    let r = e.test_one(e.conn(e.mtls.base_url(), two), None).await;
    assert!(
        failure(&r).contains("both supply a client certificate"),
        "{}",
        failure(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_failures_are_diagnosed_for_a_person() {
    let e = env().await;
    let cases = [
        (
            "rogue-ca",
            e.conn(e.mtls.base_url(), pem_auth("rogue")),
            "client certificate",
        ),
        (
            "untrusted-server",
            json!({"base-url": e.plain_tls.base_url(), "auth": {"scheme": "none"}}),
            "add its CA to trusted-root-certificates-file",
        ),
        (
            "only-custom-roots-ok",
            json!({"base-url": e.plain_tls.base_url(), "trusted-root-certificates-file": "ca.pem",
                   "use-system-roots": false}),
            "passed",
        ),
        (
            "hostname-mismatch",
            e.conn(e.wrong_name.base_url(), json!({"scheme": "none"})),
            "hostname mismatch",
        ),
        (
            "localhost-matches",
            e.conn(
                e.plain_tls.base_url_as("localhost"),
                json!({"scheme": "none"}),
            ),
            "passed",
        ),
    ];
    for (name, conn, expected) in cases {
        let r = e.test_one(conn, None).await;
        let text = failure(&r);
        assert!(
            text.contains(expected),
            "{name}: expected '{expected}' in: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_certificates_and_keys_are_configuration_errors() {
    let e = env().await;
    let mut wrong_password = pem_auth("enc");
    wrong_password["private-key-password"] = json!("not-it");
    let mismatch =
        json!({"scheme": "mtls", "certificate-file": "ec.crt", "private-key-file": "rsa.key"});
    let cases = [
        (
            "wrong-password",
            wrong_password,
            "wrong private-key-password",
        ),
        ("mismatch", mismatch, "does not belong to the certificate"),
        ("expired", pem_auth("expired"), "expired on"),
        (
            "p12-password",
            json!({"scheme": "mtls", "p12-file": "client.p12", "p12-password": "nope"}),
            "wrong p12-password",
        ),
    ];
    for (name, auth, expected) in cases {
        let err = e
            .host(json!({ name: e.conn(e.mtls.base_url(), auth) }))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: configured"));
        let text = err.to_string();
        assert!(matches!(err, Error::Config(_)), "{name}: {text}");
        assert!(text.contains(expected), "{name}: {text}");
        assert!(
            text.contains(name),
            "{name}: the message names the connection: {text}"
        );
        assert!(
            !text.contains(KEY_PASSWORD) && !text.contains("not-it"),
            "{text}"
        );
    }
}

#[test]
fn cli_shows_tls_facts_and_exits_2_on_a_bad_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env());
    let dir = e.dir.path();
    let write = |conns: Value| {
        std::fs::write(
            dir.join("fhirconn.yaml"),
            serde_json::to_string_pretty(&json!({ "connections": conns })).unwrap(),
        )
        .unwrap()
    };
    let run = |args: &[&str]| fhirconn_command(dir, true).args(args).output().unwrap();
    write(json!({"m": e.conn(e.mtls.base_url(), pem_auth("ec"))}));
    let out = run(&["-vv", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("tls: server 'CN=fhirconn test server")
            && stdout.contains("client certificate 'CN=ec client"),
        "{stdout}"
    );
    let key = std::fs::read_to_string(dir.join("ec.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(
        !stdout.contains(key_line) && !stderr.contains(key_line),
        "key material leaked"
    );

    write(json!({"m": e.conn(e.mtls.base_url(), pem_auth("expired"))}));
    let out = run(&["test"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("fhirconn.yaml:") && stderr.contains("expired on"),
        "{stderr}"
    );
}

/// Security boundary: a client certificate never follows a redirect to another origin. The
/// first server (which requires the certificate) redirects `/metadata` to a second one that
/// requires a certificate from the same PKI: the second must never see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_never_follows_a_redirect_to_another_origin() {
    let e = env().await;
    let elsewhere = FhirServer::start_tls(
        FhirServerConfig::default(),
        server_config(&e.pki, ClientCerts::Required),
    )
    .await
    .unwrap();
    e.mtls
        .set_fault(fhirconn_testkit::Fault::RedirectTo(format!(
            "{}/metadata",
            elsewhere.base_url()
        )));
    let r = e
        .test_one(e.conn(e.mtls.base_url(), pem_auth("ec")), None)
        .await;
    e.mtls.set_fault(fhirconn_testkit::Fault::None);
    assert!(
        !r.ok,
        "the other origin requires a certificate it must not get"
    );
    let stats = elsewhere.tls_stats().unwrap();
    // The server counts a failed handshake after it has sent its alert, so the client can
    // see the failure first: wait for the count (bounded) rather than read it once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stats.failures() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        stats.failures() >= 1,
        "the redirect target was never reached (the test would prove nothing)"
    );
    assert!(
        stats.client_certs().is_empty(),
        "the client certificate was presented to another origin"
    );
}

/// `fhirconn test` shows the 30-day warning for a client certificate that expires soon (and
/// still passes), in the human and the JSON report; a certificate valid for a year gets none.
#[test]
fn fhirconn_test_warns_about_a_client_certificate_that_expires_within_30_days() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env());
    let dir = e.dir.path();
    write_pair(
        dir,
        "soon",
        &e.pki.client(&ClientSpec {
            validity: Validity::ExpiresInDays(10),
            ..ClientSpec::new("soon client")
        }),
    );
    write_pair(
        dir,
        "in29",
        &e.pki.client(&ClientSpec {
            validity: Validity::ExpiresInDays(29),
            ..ClientSpec::new("twenty-nine client")
        }),
    );
    std::fs::write(
        dir.join("fhirconn.yaml"),
        serde_json::to_string_pretty(&json!({"connections": {
            "soon": e.conn(e.mtls.base_url(), pem_auth("soon")),
            "in29": e.conn(e.mtls.base_url(), pem_auth("in29")),
            "fresh": e.conn(e.mtls.base_url(), pem_auth("ec")),
        }}))
        .unwrap(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = run_command(fhirconn_command(dir, true).args(args));
        (out.code, out.stdout, out.stderr)
    };
    let (code, stdout, stderr) = run(&["test"]);
    assert_eq!(code, 0, "a warning is not a failure: {stdout}{stderr}");
    // The warning is printed under its own connection.
    let block = |id: &str| -> String {
        let start = stdout
            .find(&format!("PASS  {id}"))
            .unwrap_or_else(|| panic!("{id}: {stdout}"));
        let rest = &stdout[start + 6..];
        let end = rest
            .find("PASS  ")
            .or_else(|| rest.find("FAIL  "))
            .unwrap_or(rest.len());
        rest[..end].to_string()
    };
    for (id, subject, days) in [
        ("soon", "soon client", 9),
        ("in29", "twenty-nine client", 28),
    ] {
        let b = block(id);
        assert!(
            b.contains("warning: ")
                && b.contains(&format!("the client certificate 'CN={subject}"))
                && b.contains(&format!("expires in {days} day(s)")),
            "{id}: {b}"
        );
    }
    assert!(!block("fresh").contains("warning"), "{stdout}");

    let (code, stdout, _) = run(&["test", "soon", "--output", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let warnings = v[0]["warnings"].to_string();
    assert!(
        warnings.contains("expires in 9 day(s)") && warnings.contains("soon client"),
        "{v}"
    );
}

/// The proxy forwards on its own direct client (hyper-util, not reqwest): it must trust the
/// connection's roots file and present its client certificate just the same. An mTLS server
/// answers `fhirconn proxy`'s request, and saw the certificate; without one it would refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_presents_the_client_certificate_and_trusts_the_roots_file() {
    let e = env().await;
    let stats = e.mtls.tls_stats().unwrap();
    let host = e
        .host(json!({"m": e.conn(e.mtls.base_url(), pem_auth("ec"))}))
        .await
        .unwrap();
    let proxy = fhirconn_tests::serve_proxy(
        std::sync::Arc::new(host),
        fhirconn_host::proxy::Config::default(),
    )
    .await;
    let before = stats.client_certs().len();
    let resp = reqwest::get(format!("http://{}/m/metadata", proxy.addr))
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("CapabilityStatement"), "{body}");
    assert!(
        stats.client_certs().len() > before,
        "the upstream saw no client certificate"
    );
}
