//! The `fhirconn` CLI end to end against the testkit server: every command, diagnoses, plugin
//! faults, malformed configurations and secret hygiene.

use fhirconn_testkit::{Fault, FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_bin, fhirconn_command, fixture_dir, plugin_dir, run_command, Out};
use std::path::Path;
use std::process::Command;

const PASSWORD: &str = "CANARY-pw:with:colons-ünïcode";
const TOKEN: &str = "CANARY-token-0123456789";

struct Servers {
    _rt: tokio::runtime::Runtime,
    none: FhirServer,
    basic: FhirServer,
    bearer: FhirServer,
}

fn servers() -> Servers {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (none, basic, bearer) = rt.block_on(async {
        let none = FhirServer::start(FhirServerConfig::default())
            .await
            .unwrap();
        let basic = FhirServer::start(FhirServerConfig {
            auth: ServerAuth::Basic {
                username: "alice".into(),
                password: PASSWORD.into(),
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let bearer = FhirServer::start(FhirServerConfig {
            auth: ServerAuth::Bearer {
                tokens: vec![TOKEN.into()],
            },
            ..Default::default()
        })
        .await
        .unwrap();
        (none, basic, bearer)
    });
    Servers {
        _rt: rt,
        none,
        basic,
        bearer,
    }
}

fn run(dir: &Path, args: &[&str]) -> Out {
    run_command(
        fhirconn_command(dir, true)
            .env("FHIRCONN_TEST_PW", PASSWORD)
            .args(args),
    )
}

fn write_config(dir: &Path, yaml: &str) {
    std::fs::write(dir.join("fhirconn.yaml"), yaml).unwrap();
}

fn assert_no_canary(out: &Out) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("CANARY"), "a canary leaked:\n{text}");
        assert!(
            !text.contains(&b64),
            "the basic credentials leaked:\n{text}"
        );
    }
}

#[test]
fn test_passes_for_none_basic_and_bearer_and_never_leaks_secrets() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token.txt"), format!("{TOKEN}\n")).unwrap();
    write_config(
        dir.path(),
        &format!(
            "connections:\n  public:\n    base-url: {}\n  basic:\n    base-url: {}\n    auth: {{scheme: basic, username: alice, password-env: FHIRCONN_TEST_PW}}\n  bearer:\n    base-url: {}\n    auth:\n      scheme: bearer\n      token-file: token.txt\n",
            s.none.base_url(),
            s.basic.base_url(),
            s.bearer.base_url()
        ),
    );
    for verbosity in [&[][..], &["-v"][..], &["-vv"][..]] {
        let mut args: Vec<&str> = verbosity.to_vec();
        args.extend(["test", "--probe", "Patient?_count=1"]);
        let out = run(dir.path(), &args);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("PASS  basic"), "{}", out.stdout);
        assert!(out.stdout.contains("PASS  bearer"), "{}", out.stdout);
        assert!(out.stdout.contains("PASS  public"), "{}", out.stdout);
        assert!(out.stdout.contains("FHIR 4.0.1"), "{}", out.stdout);
        assert_no_canary(&out);
    }
    // The servers saw the right credentials.
    assert!(s.basic.requests() >= 6 && s.basic.unauthorized() == 0);
    assert!(s
        .bearer
        .authorizations()
        .iter()
        .all(|a| a.as_deref() == Some(&*format!("Bearer {TOKEN}"))));

    let json = run(dir.path(), &["test", "basic", "--output", "json"]);
    assert_eq!(json.code, 0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["id"], "basic");
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[0]["fhir_version"], "4.0.1");

    let get = run(dir.path(), &["-vv", "get", "bearer", "Patient/1"]);
    assert_eq!(get.code, 0, "{}", get.stderr);
    let p: serde_json::Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(p["resourceType"], "Patient");
    assert_no_canary(&get);

    let missing = run(dir.path(), &["get", "bearer", "Patient/404"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("HTTP 404"), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("OperationOutcome"),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_wrong_password_is_diagnosed_with_the_401_challenge() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "connections:\n  wrong:\n    base-url: {}\n    auth: {{scheme: basic, username: alice, password: CANARY-wrong-password}}\n  ok:\n    base-url: {}\n",
            s.basic.base_url(),
            s.none.base_url()
        ),
    );
    let out = run(dir.path(), &["-vv", "test"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("FAIL  wrong"), "{}", out.stdout);
    assert!(out.stdout.contains("unauthorized (401)"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(r#"WWW-Authenticate: Basic realm="fhirconn-testkit""#),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("PASS  ok"), "{}", out.stdout);
    assert_no_canary(&out);
}

#[test]
fn testing_named_connections_configures_only_those() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    // `broken` validates against the schema but its scheme refuses it at configure time.
    write_config(
        dir.path(),
        &format!(
            "connections:\n  good:\n    base-url: {}\n  broken:\n    base-url: {}\n    auth: {{scheme: bearer, token-file: missing-token.txt}}\n",
            s.none.base_url(),
            s.bearer.base_url()
        ),
    );
    let out = run(dir.path(), &["test", "good"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("1 of 1 connections passed"),
        "{}",
        out.stdout
    );
    let out = run(dir.path(), &["test"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("missing-token.txt"), "{}", out.stderr);
    let out = run(dir.path(), &["config", "check"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(dir.path(), &["test", "nope"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("nope") && out.stderr.contains("good"),
        "{}",
        out.stderr
    );
}

#[test]
fn network_failures_are_diagnosed() {
    let s = servers();
    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    s.bearer
        .set_fault(Fault::Slow(std::time::Duration::from_secs(5)));
    s.basic.set_fault(Fault::NonJson);
    s.none.set_fault(Fault::HugeBody(3 * 1024 * 1024));
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "connections:\n  refused:\n    base-url: http://127.0.0.1:{port}/fhir\n  slow:\n    base-url: {}\n    read-timeout: PT0.5S\n    auth: {{scheme: bearer, token: {TOKEN}}}\n  html:\n    base-url: {}\n    auth: {{scheme: basic, username: alice, password-env: FHIRCONN_TEST_PW}}\n  huge:\n    base-url: {}\n    max-response-bytes: 1048576\n  dns:\n    base-url: http://no-such-host.invalid/fhir\n",
            s.bearer.base_url(),
            s.basic.base_url(),
            s.none.base_url()
        ),
    );
    let started = std::time::Instant::now();
    let out = run(dir.path(), &["test", "--output", "json"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the slow server was not timed out"
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let kind = |id: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()["failure"]["kind"]
            .clone()
    };
    assert_eq!(kind("refused"), "connect");
    assert_eq!(kind("slow"), "timeout");
    assert_eq!(kind("html"), "not-fhir");
    assert_eq!(kind("huge"), "too-large");
    assert_eq!(kind("dns"), "dns");
    assert_no_canary(&out);
}

#[test]
fn a_panicking_plugin_fails_its_connection_only() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "connections:\n  boom-configure:\n    base-url: {0}\n    auth: {{scheme: panic, panic-in: configure, password: CANARY-in-panic}}\n  boom-authorize:\n    base-url: {0}\n    auth: {{scheme: panic, panic-in: authorize}}\n  fine:\n    base-url: {0}\n",
            s.none.base_url()
        ),
    );
    let out = Command::new(fhirconn_bin())
        .current_dir(dir.path())
        .arg("--plugin-dir")
        .arg(fixture_dir())
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .arg("test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("PASS  fine"), "{stdout}");
    assert!(stdout.contains("FAIL  boom-configure"), "{stdout}");
    assert!(
        stdout.contains("the plugin panicked in configure"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  boom-authorize"), "{stdout}");
    assert!(
        stdout.contains("the plugin panicked in authorize"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("CANARY") && !stderr.contains("CANARY"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn schemes_and_schema_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["schemes", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, fhirconn_tests::SCHEMES);
    assert_eq!(v[0]["abi"], "1.0.0");
    let schema = run(dir.path(), &["schema"]);
    let s: serde_json::Value = serde_json::from_str(&schema.stdout).unwrap();
    assert!(s["$defs"]["scheme-basic"]["properties"]["password-file"].is_object());
    assert!(s["$defs"]["scheme-bearer"]["properties"]["token-env"].is_object());
    let names = s["$defs"]["auth"]["properties"]["scheme"]["enum"].clone();
    assert_eq!(names, serde_json::json!(fhirconn_tests::SCHEMES));
}

/// (name, YAML, expected fragment of the message). Every case must exit 2 with a location.
const MALFORMED: &[(&str, &str, &str)] = &[
    ("bad yaml", "connections:\n  a: [\n", "invalid YAML"),
    ("empty file", "", "the file is empty"),
    ("not a mapping", "- a\n- b\n", "must be a mapping, found a list"),
    ("no connections", "other: 1\n", "missing required field 'connections'"),
    ("unknown top-level", "connections:\n  a:\n    base-url: http://h\nextra: 1\n", "unknown field 'extra'"),
    ("missing base-url", "connections:\n  a:\n    read-timeout: PT1S\n", "missing required field 'base-url'"),
    ("bad url", "connections:\n  a:\n    base-url: not a url\n", "not a valid URL"),
    ("ftp url", "connections:\n  a:\n    base-url: ftp://h/fhir\n", "must be http:// or https://"),
    ("url with credentials", "connections:\n  a:\n    base-url: https://u:p@h/fhir\n", "must not contain credentials"),
    ("bad duration", "connections:\n  a:\n    base-url: http://h\n    read-timeout: 30s\n", "not an ISO-8601 duration"),
    ("months duration", "connections:\n  a:\n    base-url: http://h\n    connect-timeout: P1M\n", "months"),
    ("zero duration", "connections:\n  a:\n    base-url: http://h\n    connect-timeout: PT0S\n", "longer than zero"),
    ("bad request-timeout", "connections:\n  a:\n    base-url: http://h\n    request-timeout: 30s\n", "not an ISO-8601 duration"),
    ("zero request-timeout", "connections:\n  a:\n    base-url: http://h\n    request-timeout: PT0S\n", "longer than zero"),
    ("unknown scheme", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: kerberos}\n", "unknown scheme 'kerberos'"),
    ("scheme name that is a path", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: x/../../elsewhere/evil}\n", "not a valid scheme name"),
    ("alias bomb in keys", "k0: &k0 [x, x]\nk1:\n  ? [*k0, *k0]\n  : v\n", "mapping keys must be plain strings"),
    ("missing scheme", "connections:\n  a:\n    base-url: https://h\n    auth: {username: u}\n", "missing required field 'scheme'"),
    ("missing username", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, password: CANARY-pw-1}\n", "missing required field 'username'"),
    ("no password", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, username: u}\n", "exactly one of 'password', 'password-file', 'password-env' must be set; none is"),
    ("two passwords", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, username: u, password: CANARY-pw-2, password-file: pw.txt}\n", "found 'password' and 'password-file'"),
    ("typo in setting", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, username: u, pasword: CANARY-typo-pw}\n", "unknown field 'pasword'"),
    ("missing password file", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, username: u, password-file: missing.txt}\n", "no such file"),
    ("unset env", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: bearer, token-env: FHIRCONN_UNSET_VAR_XYZ}\n", "environment variable FHIRCONN_UNSET_VAR_XYZ is not set"),
    ("wrong type", "connections:\n  a:\n    base-url: http://h\n    use-system-roots: maybe\n", "must be a boolean, found a string"),
    ("bad id", "connections:\n  'a b':\n    base-url: http://h\n", "connection id 'a b'"),
    ("duplicate id", "connections:\n  a:\n    base-url: http://h\n  a:\n    base-url: http://i\n", "dup"),
    ("missing roots file", "connections:\n  a:\n    base-url: https://h\n    trusted-root-certificates-file: nope.pem\n", "cannot read"),
    ("colon in username", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, username: 'a:b', password: CANARY-pw-3}\n", "does not match the pattern"),
    ("token with space", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: bearer, token: 'CANARY two words'}\n", "whitespace"),
    ("settings on none", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: none, user: x}\n", "unknown field 'user'"),
    ("alias bomb", "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n", "alias"),
    ("empty auth list", "connections:\n  a:\n    base-url: https://h\n    auth: []\n", "at least 1 item"),
    ("no connections at all", "connections: {}\n", "no connections are configured"),
    // Every scheme's settings.
    ("oidc without endpoint", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, client-id: a, client-secret: CANARY-oidc-1}\n", "exactly one of 'issuer', 'token-url' must be set; none is"),
    ("oidc with both endpoints", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, issuer: 'https://i', token-url: 'https://t', client-id: a, client-secret: CANARY-oidc-2}\n", "exactly one of 'issuer', 'token-url' must be set; found 'issuer' and 'token-url'"),
    ("oidc unknown auth-method", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, token-url: 'https://t', client-id: a, client-secret: CANARY-oidc-3, auth-method: tls_client_auth}\n", "auth.auth-method: must be one of"),
    ("oidc reserved extra param", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, token-url: 'https://t', client-id: a, client-secret: CANARY-oidc-4, extra-params: {grant_type: x}}\n", "extra-params: 'grant_type'"),
    ("oidc scope as a list", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, token-url: 'https://t', client-id: a, client-secret: CANARY-oidc-5, scope: [a, b]}\n", "must be a string, found a list"),
    ("oidc missing secret file", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, token-url: 'https://t', client-id: a, client-secret-file: nope.txt}\n", "no such file"),
    ("oidc resource as a number", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, token-url: 'https://t', client-id: a, client-secret: CANARY-oidc-6, resource: 5}\n", "auth.resource: must be a string or a list, found a number"),
    ("oidc discovery path without slash", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: oidc-client-credentials, issuer: 'https://i', discovery-path: well-known, client-id: a, client-secret: CANARY-oidc-7}\n", "auth.discovery-path: does not match the pattern ^/"),
    ("smart without scope", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: smart-backend, client-id: a, private-key-file: ec.pem, kid: k}\n", "missing required field 'scope'"),
    ("smart key file not a key", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: smart-backend, client-id: a, private-key-file: garbage.txt, kid: k, scope: system/*.rs}\n", "private-key-file: not a PEM file or JWK"),
    ("smart P-256 key", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: smart-backend, client-id: a, private-key-file: p256.pem, kid: k, scope: system/*.rs}\n", "allowed here: RS384, ES384"),
    ("smart certificate as key", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: smart-backend, client-id: a, private-key-file: cert.pem, kid: k, scope: system/*.rs}\n", "holds a certificate"),
    ("smart assertion too long-lived", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: smart-backend, client-id: a, private-key-file: ec.pem, kid: k, scope: system/*.rs, assertion-lifetime: 600}\n", "assertion-lifetime: value is greater than the maximum of 300"),
    ("smart ES256", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: smart-backend, client-id: a, private-key-file: ec.pem, kid: k, scope: system/*.rs, alg: ES256}\n", "auth.alg: must be one of [\"RS384\",\"ES384\"]"),
    ("smart without kid", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: smart-backend, client-id: a, private-key-file: ec.pem, scope: system/*.rs}\n", "kid: required"),
    ("mtls without key", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: mtls, certificate-file: cert.pem}\n", "exactly one of 'private-key'"),
    ("mtls with certificate and p12", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: mtls, certificate-file: cert.pem, private-key-file: p256.pem, p12-file: x.p12}\n", "found 'certificate-file' and 'p12-file'"),
    ("mtls certificate file not PEM", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: mtls, certificate-file: garbage.txt, private-key-file: p256.pem}\n", "certificate-file: "),
    ("mtls certificate as key", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: mtls, certificate-file: cert.pem, private-key-file: cert.pem}\n", "holds a certificate, not a private key"),
    ("mtls missing p12", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: mtls, p12-file: nope.p12, p12-password: CANARY-p12-1}\n", "no such file"),
    ("mtls p12 not PKCS#12", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: mtls, p12-file: garbage.txt, p12-password: CANARY-p12-2}\n", "cannot open the PKCS#12 file"),
    ("mtls key of another certificate", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: mtls, certificate-file: client.pem, private-key-file: p256.pem}\n", "does not belong to the certificate"),
    ("azure unknown flow", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad, client-id: a, flow: implicit}\n", "auth.flow: must be one of"),
    ("azure secret for a person", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad, client-id: a, client-secret: CANARY-az-secret}\n", "only applies to flow: client-credentials"),
    ("azure daemon without secret", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad, client-id: a, flow: client-credentials}\n", "needs client-secret"),
    ("azure tenant with a slash", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad, client-id: a, tenant: 'a/b'}\n", "tenant: a tenant id or domain"),
    ("azure ftp authority", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad, client-id: a, authority-host: 'ftp://login'}\n", "must be an http(s) URL"),
    ("azure person without client id", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad}\n", "client-id: required"),
    ("azure object id for a person", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad, client-id: a, object-id: o}\n", "only apply to flow: managed-identity"),
    ("azure two user-assigned ids", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: azure-ad, flow: managed-identity, client-id: a, msi-res-id: r}\n", "one of client-id, object-id or msi-res-id"),
    ("proxy without url", "connections:\n  a:\n    base-url: http://h\n    proxy: {no-proxy: [x]}\n", "missing required field 'url'"),
    ("tiny response cap", "connections:\n  a:\n    base-url: http://h\n    max-response-bytes: 10\n", "max-response-bytes: value is less than the minimum of 1024"),
    ("bad renewal margin", "connections:\n  a:\n    base-url: http://h\n    token-renewal-margin: soon\n", "not an ISO-8601 duration"),
    ("base-url a number", "connections:\n  a:\n    base-url: 5\n", "must be a string, found a number"),
    // Secrets in the offending places: none may be echoed (checked for every case below).
    ("secret as a list", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, username: u, password: [CANARY-list-pw]}\n", "must be a string, found a list"),
    ("token with CRLF", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: bearer, token: \"CANARY-crlf\\r\\nX-Injected: 1\"}\n", "whitespace"),
    ("token with Bearer prefix", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: bearer, token: 'Bearer CANARY-prefixed'}\n", "'Bearer ' prefix"),
    ("secret in a duplicate key", "connections:\n  a:\n    base-url: https://h\n    auth:\n      scheme: basic\n      username: u\n      password: CANARY-dup-1\n      password: CANARY-dup-2\n", "dup"),
    ("unterminated secret", "connections:\n  a:\n    base-url: https://h\n    auth: {scheme: basic, username: u, password: \"CANARY-unterminated}\n", "invalid YAML"),
    ("secret beside a bad indent", "connections:\n  a:\n    base-url: https://h\n    auth:\n      scheme: bearer\n       token: CANARY-indent\n", "invalid YAML"),
];

#[test]
fn malformed_configurations_exit_2_with_a_location_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    // Files the cases refer to: a non-key, a certificate, keys of the wrong kind.
    let pki = fhirconn_testkit::pki::Pki::new();
    let client = pki.client(&fhirconn_testkit::pki::ClientSpec::new("other"));
    let other = pki.client(&fhirconn_testkit::pki::ClientSpec::new("p256"));
    std::fs::write(dir.path().join("garbage.txt"), "hello, not a key").unwrap();
    std::fs::write(dir.path().join("cert.pem"), pki.root_pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), &client.chain_pem).unwrap();
    std::fs::write(dir.path().join("p256.pem"), &other.key_pem).unwrap();
    let es384 =
        fhirconn_host::keygen::generate(fhirconn_host::keygen::KeyAlg::Es384, None).unwrap();
    fhirconn_host::keygen::write(&dir.path().join("k"), &es384, false).unwrap();
    std::fs::copy(
        dir.path().join("k/private-key.pem"),
        dir.path().join("ec.pem"),
    )
    .unwrap();
    assert!(
        MALFORMED.len() >= 50,
        "the corpus has {} cases",
        MALFORMED.len()
    );
    let mut failures = Vec::new();
    for (name, yaml, expected) in MALFORMED {
        write_config(dir.path(), yaml);
        let out = run(dir.path(), &["config", "check"]);
        let ok = out.code == 2
            && out.stderr.contains(expected)
            && out.stderr.contains("fhirconn.yaml")
            && !out.stderr.contains("panicked");
        if !ok {
            failures.push(format!("{name}: exit {} stderr:\n{}", out.code, out.stderr));
        }
        // Values never echoed: every secret in the corpus is a CANARY.
        if out.stderr.contains("CANARY") || out.stdout.contains("CANARY") {
            failures.push(format!(
                "{name}: a value was echoed:\n{}{}",
                out.stdout, out.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        MALFORMED.len(),
        failures.join("\n")
    );
    // Locations carry line and column.
    write_config(
        dir.path(),
        "connections:\n  a:\n    base-url: http://h\n    read-timeout: 30s\n",
    );
    let out = run(dir.path(), &["config", "check"]);
    assert!(
        out.stderr
            .contains("fhirconn.yaml:4:19: connection 'a': read-timeout: "),
        "{}",
        out.stderr
    );
}

#[test]
fn non_utf8_bytes_and_huge_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        b"connections:\n  a:\n    base-url: http://h\xff\n",
    )
    .unwrap();
    let out = run(dir.path(), &["config", "check"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("fhirconn.yaml:3:") && out.stderr.contains("not valid UTF-8"),
        "{}",
        out.stderr
    );
    let big = format!(
        "connections:\n  a:\n    base-url: http://h\n#{}\n",
        "x".repeat(5 * 1024 * 1024)
    );
    std::fs::write(dir.path().join("fhirconn.yaml"), big).unwrap();
    let out = run(dir.path(), &["config", "check"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("limit"), "{}", out.stderr);
}

/// Runs the binary in `dir` with exactly the given fhirconn environment (no `--plugin-dir`
/// unless `args` has one).
fn run_with_env(dir: &Path, env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> Out {
    let mut cmd = fhirconn_command(dir, false);
    cmd.env_remove("FHIRCONN_CREDENTIALS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd.args(args))
}

/// `$FHIRCONN_CONFIG` names the connections file when `-c` is not given; files it refers to
/// resolve next to it (not in the working directory); `-c` wins over it.
#[test]
fn fhirconn_config_names_the_connections_file() {
    let s = servers();
    let cwd = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("token.txt"), format!("{TOKEN}\n")).unwrap();
    let file = elsewhere.path().join("team.yaml");
    std::fs::write(
        &file,
        format!(
            "connections:\n  from-env:\n    base-url: {}\n    auth: {{scheme: bearer, token-file: token.txt}}\n",
            s.bearer.base_url()
        ),
    )
    .unwrap();
    let plugins = plugin_dir();
    let args = ["--plugin-dir", plugins.to_str().unwrap(), "test"];

    let without = run_with_env(cwd.path(), &[], &args);
    assert_eq!(without.code, 2, "no fhirconn.yaml here: {}", without.stderr);
    assert!(
        without.stderr.contains("fhirconn.yaml"),
        "{}",
        without.stderr
    );

    let with = run_with_env(cwd.path(), &[("FHIRCONN_CONFIG", file.as_os_str())], &args);
    assert_eq!(with.code, 0, "{}\n{}", with.stdout, with.stderr);
    assert!(with.stdout.contains("PASS  from-env"), "{}", with.stdout);
    assert_no_canary(&with);

    // An explicit -c wins over the environment.
    write_config(
        cwd.path(),
        &format!(
            "connections:\n  local:\n    base-url: {}\n",
            s.none.base_url()
        ),
    );
    let explicit = run_with_env(
        cwd.path(),
        &[("FHIRCONN_CONFIG", file.as_os_str())],
        &[
            "--plugin-dir",
            plugins.to_str().unwrap(),
            "-c",
            "fhirconn.yaml",
            "test",
        ],
    );
    assert_eq!(explicit.code, 0, "{}\n{}", explicit.stdout, explicit.stderr);
    assert!(
        explicit.stdout.contains("PASS  local") && !explicit.stdout.contains("from-env"),
        "{}",
        explicit.stdout
    );
}

/// `$FHIRCONN_PLUGIN_PATH` is a list of plugin directories searched after `--plugin-dir`: a
/// scheme found only there is listed and usable; without the variable it is unknown.
#[test]
fn fhirconn_plugin_path_adds_plugin_directories() {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra-plugins");
    std::fs::create_dir(&extra).unwrap();
    let panic_lib = fhirconn_tests::fixture("fhirconn_panic");
    std::fs::copy(&panic_lib, extra.join(panic_lib.file_name().unwrap())).unwrap();
    let path = std::env::join_paths([plugin_dir(), extra.clone()]).unwrap();
    let names = |out: &Out| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };

    let with = run_with_env(
        dir.path(),
        &[("FHIRCONN_PLUGIN_PATH", path.as_os_str())],
        &["schemes", "--output", "json"],
    );
    assert_eq!(with.code, 0, "{}", with.stderr);
    let found = names(&with);
    for scheme in fhirconn_tests::SCHEMES.iter().chain(&["panic"]) {
        assert!(found.iter().any(|n| n == scheme), "{scheme}: {found:?}");
    }

    let without = run_with_env(dir.path(), &[], &["schemes", "--output", "json"]);
    assert_eq!(without.code, 0, "{}", without.stderr);
    let found = names(&without);
    assert!(!found.iter().any(|n| n == "panic"), "{found:?}");
    assert!(!found.iter().any(|n| n == "basic"), "{found:?}");

    // A connection using a scheme from the path works end to end.
    write_config(
        dir.path(),
        &format!(
            "connections:\n  b:\n    base-url: {}\n    auth: {{scheme: basic, username: alice, password-env: FHIRCONN_TEST_PW}}\n",
            s.basic.base_url()
        ),
    );
    let pw = std::ffi::OsString::from(PASSWORD);
    let test = run_with_env(
        dir.path(),
        &[
            ("FHIRCONN_PLUGIN_PATH", path.as_os_str()),
            ("FHIRCONN_TEST_PW", pw.as_os_str()),
        ],
        &["test"],
    );
    assert_eq!(test.code, 0, "{}\n{}", test.stdout, test.stderr);
    assert!(test.stdout.contains("PASS  b"), "{}", test.stdout);
    let test = run_with_env(
        dir.path(),
        &[("FHIRCONN_TEST_PW", pw.as_os_str())],
        &["test"],
    );
    assert_eq!(test.code, 2, "{}\n{}", test.stdout, test.stderr);
    assert!(test.stderr.contains("basic"), "{}", test.stderr);
}

/// A relative `$FHIRCONN_PLUGIN_PATH` entry is ignored, with a warning naming it: it would
/// load whatever the working directory holds.
#[test]
fn fhirconn_plugin_path_ignores_relative_entries() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra-plugins");
    std::fs::create_dir(&extra).unwrap();
    let panic_lib = fhirconn_tests::fixture("fhirconn_panic");
    std::fs::copy(&panic_lib, extra.join(panic_lib.file_name().unwrap())).unwrap();
    let out = run_with_env(
        dir.path(),
        &[(
            "FHIRCONN_PLUGIN_PATH",
            std::ffi::OsStr::new("extra-plugins"),
        )],
        &["schemes", "--output", "json"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        !v.as_array().unwrap().iter().any(|s| s["name"] == "panic"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("FHIRCONN_PLUGIN_PATH") && out.stderr.contains("extra-plugins"),
        "{}",
        out.stderr
    );
}
