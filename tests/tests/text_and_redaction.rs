//! Text from outside and secrets in all their forms, end to end through the `fhirconn` binary
//! and the host library: control characters from servers and authorities never reach the
//! terminal raw; `$BROWSER` gets only https (or loopback http) URLs, as one argument; the login
//! listener ignores answers with a wrong `state`; secrets echoed by servers (form-encoded,
//! JSON-escaped, base64 `user:password`, signed client assertions, issued tokens) are redacted
//! in `test`, `--output json`, errors and logs.

use fhirconn_host::services::{MemoryStore, Person};
use fhirconn_host::Host;
use fhirconn_testkit::entra::{EntraConfig, MockEntra, TENANT_ID};
use fhirconn_testkit::hostile::documents::{self, has_raw_control, CONTROL_TEXT};
use fhirconn_testkit::hostile::{Answer, HostileServer};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_command, follow_sign_in, http_get, plugin_dir, run_command, Out};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A canary secret with every character that form and percent encoding change.
const CANARY_PW: &str = "CANARY~pw+/&= x";
const CANARY_SECRET: &str = "CANARY~sec+/&= ret";

fn run_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = fhirconn_command(dir, true);
    cmd.env_remove("BROWSER")
        .env("FHIRCONN_CREDENTIALS", dir.join("credentials.json"))
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(&mut cmd)
}

fn run(dir: &Path, args: &[&str]) -> Out {
    run_with(dir, args, &[])
}

fn write_config(dir: &Path, connections: Value) {
    std::fs::write(
        dir.join("fhirconn.yaml"),
        serde_json::to_string_pretty(&json!({ "connections": connections })).unwrap(),
    )
    .unwrap();
}

fn assert_no_raw_control(what: &str, out: &Out) {
    assert!(
        !has_raw_control(&out.stdout) && !has_raw_control(&out.stderr),
        "{what}: raw control characters reach the terminal:\n{:?}\n{:?}",
        out.stdout,
        out.stderr
    );
}

/// Security boundary: text from a FHIR server (CapabilityStatement software, OperationOutcome
/// diagnostics, non-JSON error bodies, JSON data) never reaches the terminal with raw control
/// characters; it is shown escaped (`\x1b`), and JSON data keeps its value.
#[test]
fn control_characters_from_a_server_are_escaped_in_test_and_get() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(HostileServer::start()).unwrap();
    server
        .on(
            "GET",
            "/fhir/metadata",
            Answer::fhir(200, &documents::capability_with_control_text()),
        )
        .on(
            "GET",
            "/fhir/Patient/403",
            Answer::fhir(403, &documents::outcome_with_control_text()),
        )
        .on(
            "GET",
            "/fhir/Binary/500",
            Answer::text(500, &format!("gateway says {CONTROL_TEXT}\nsecond line")),
        )
        .on(
            "GET",
            "/fhir/Patient",
            Answer::fhir(
                200,
                &json!({"resourceType": "Bundle", "type": "searchset", "link": [],
                        "entry": [{"resource": {"resourceType": "Patient", "id": "1",
                                                "name": [{"text": CONTROL_TEXT}]}}]}),
            ),
        )
        .on(
            "GET",
            "/fhir/Patient/1",
            Answer::fhir(
                200,
                &json!({"resourceType": "Patient", "id": "1", "name": [{"text": CONTROL_TEXT}]}),
            ),
        );
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), json!({"c": {"base-url": server.url("/fhir")}}));

    let out = run(dir.path(), &["test"]);
    assert_no_raw_control("test", &out);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("PASS") && out.stdout.contains("evil\\x1b[2J"),
        "the software name is shown, escaped: {}",
        out.stdout
    );

    let out = run(dir.path(), &["test", "--output", "json"]);
    assert_no_raw_control("test --output json", &out);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        v[0]["software"].as_str().unwrap().contains("\\u{9b}"),
        "{v}"
    );

    for args in [
        &["test", "--probe", "Patient/403"][..],
        &["test", "--probe", "Patient/403", "--output", "json"],
    ] {
        let out = run(dir.path(), args);
        assert_no_raw_control(&args.join(" "), &out);
        assert_eq!(out.code, 1, "{}", out.all());
        assert!(
            out.stdout.contains("OperationOutcome: evil"),
            "{}",
            out.stdout
        );
    }

    let out = run(dir.path(), &["get", "c", "Patient/403"]);
    assert_no_raw_control("get (OperationOutcome)", &out);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("evil"), "{}", out.stderr);

    let out = run(dir.path(), &["get", "c", "Binary/500"]);
    assert_no_raw_control("get (text error body)", &out);
    assert!(
        out.stderr.contains("gateway says evil\\x1b[2J") && out.stderr.contains("second line"),
        "{}",
        out.stderr
    );

    // JSON data: escaped as JSON (`\u009b`), so the value is unchanged for a program.
    let out = run(dir.path(), &["get", "c", "Patient/1"]);
    assert_no_raw_control("get (JSON data)", &out);
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["name"][0]["text"], CONTROL_TEXT);

    let out = run(dir.path(), &["get", "c", "Patient", "--all-pages"]);
    assert_no_raw_control("get --all-pages", &out);
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["entry"][0]["resource"]["name"][0]["text"], CONTROL_TEXT);
}

/// A fake browser: a script that appends each argument it receives, one per line, then `---`.
fn fake_browser(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.join("browser-argv.log");
    let script = dir.join("browser.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> '{}'; done\necho --- >> '{}'\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (script, log)
}

/// A hostile Entra-like authority for `tenant` whose device-code answer names `uri` and whose
/// token endpoint declines the sign-in.
fn hostile_authority(server: &HostileServer, tenant: &str, uri: &str) {
    let b = "{self}";
    server
        .on(
            "GET",
            &format!("/{tenant}/v2.0/.well-known/openid-configuration"),
            Answer::json(
                200,
                &json!({
                    "issuer": format!("{b}/{tenant}/v2.0"),
                    "authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/authorize"),
                    "token_endpoint": format!("{b}/{tenant}/oauth2/v2.0/token"),
                    "device_authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/devicecode"),
                    "jwks_uri": format!("{b}/{tenant}/discovery/v2.0/keys"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"]
                }),
            ),
        )
        .on(
            "POST",
            &format!("/{tenant}/oauth2/v2.0/devicecode"),
            Answer::json(200, &documents::device_code_response(uri)),
        )
        .on(
            "POST",
            &format!("/{tenant}/oauth2/v2.0/token"),
            Answer::json(
                400,
                &json!({"error": "access_denied",
                        "error_description": format!("declined {CONTROL_TEXT}")}),
            ),
        );
}

/// Security boundary: `$BROWSER` receives only an absolute https URL (or http on loopback),
/// as one argument; a `verification_uri` such as `--no-sandbox`, `file:` or `javascript:` is
/// shown for the person instead. The device-code `message` reaches the terminal escaped.
#[test]
fn browser_gets_only_https_urls_from_a_hostile_device_code_answer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (uri, opened) in [
        ("--no-sandbox", false),
        ("file:///etc/passwd", false),
        ("javascript:alert(1)", false),
        ("http://evil.example/devicelogin", false),
        ("https://microsoft.com/devicelogin", true),
    ] {
        let server = rt.block_on(HostileServer::start()).unwrap();
        hostile_authority(&server, "hostile-tenant", uri);
        let dir = tempfile::tempdir().unwrap();
        let (browser, log) = fake_browser(dir.path());
        write_config(
            dir.path(),
            json!({"az": {"base-url": server.url("/fhir"),
                          "auth": {"scheme": "azure-ad", "client-id": "public-app",
                                   "tenant": "hostile-tenant",
                                   "authority-host": server.origin()}}}),
        );
        let out = run_with(
            dir.path(),
            &["login", "az"],
            &[("BROWSER", browser.to_str().unwrap())],
        );
        assert_ne!(out.code, 0, "the authority declined: {}", out.all());
        assert_no_raw_control(uri, &out);
        assert!(
            !server
                .received_at("/hostile-tenant/oauth2/v2.0/devicecode")
                .is_empty(),
            "{uri}: the device flow ran: {}",
            out.all()
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while opened && !log.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let argv = std::fs::read_to_string(&log).unwrap_or_default();
        if opened {
            assert_eq!(argv, format!("{uri}\n---\n"), "exactly one argument");
        } else {
            assert_eq!(argv, "", "{uri} must not reach $BROWSER");
            assert!(
                out.stderr.contains("not opened in a browser"),
                "{uri}: {}",
                out.stderr
            );
        }
    }
}

/// A person whose "browser" first has another local process knock on the login listener with
/// a foreign code (wrong state, then no state), then signs in for real.
#[derive(Default)]
struct KnockingPerson {
    knocks: Arc<Mutex<Vec<String>>>,
}

impl Person for KnockingPerson {
    fn tell(&self, _message: &str, url: Option<&str>) -> bool {
        let Some(u) = url.and_then(|u| url::Url::parse(u).ok()) else {
            return false;
        };
        if !u.path().ends_with("/authorize") {
            return false;
        }
        let redirect = u
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let knocks = self.knocks.clone();
        std::thread::spawn(move || {
            // First the foreign answers: the listener must refuse them and keep waiting.
            for q in ["code=FOREIGN-CODE&state=guessed", "error=access_denied"] {
                let knock = url::Url::parse(&format!("{redirect}?{q}")).unwrap();
                let resp = http_get(&knock).expect("the login listener answers");
                knocks
                    .lock()
                    .unwrap()
                    .push(resp.lines().next().unwrap_or_default().to_string());
            }
            follow_sign_in(&u);
        });
        true
    }
}

/// Security boundary: the login redirect listener ignores answers whose `state` is not the
/// one it sent (400), and keeps waiting: a local process cannot abort or hijack a sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_login_listener_ignores_a_wrong_state_and_still_signs_in() {
    let entra = MockEntra::start(EntraConfig::default()).await.unwrap();
    let fhir = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let audience = format!("http://{}", fhir.addr());
    fhir.set_auth(ServerAuth::Jwt(entra.verifier(&audience)));
    let dir = tempfile::tempdir().unwrap();
    let person = Arc::new(KnockingPerson::default());
    let store = Arc::new(MemoryStore::default());
    let host = Host::builder()
        .config_value(
            dir.path(),
            json!({"connections": {"c": {"base-url": fhir.base_url(), "auth": {
                "scheme": "azure-ad", "client-id": "public-app", "flow": "auth-code",
                "tenant": TENANT_ID, "authority-host": entra.authority_host()}}}}),
        )
        .plugin_dir(plugin_dir())
        .only_explicit_plugin_dirs()
        .credential_store(store.clone())
        .person(person.clone())
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let conn = host.connection("c").unwrap();
    conn.login().await.unwrap_or_else(|e| panic!("{e}"));
    let knocks = person.knocks.lock().unwrap().clone();
    assert_eq!(knocks.len(), 2);
    for k in &knocks {
        assert!(
            k.contains(" 400 "),
            "a foreign answer is refused: {knocks:?}"
        );
    }
    let p = entra.token_request_params().pop().unwrap();
    assert_eq!(
        p.get("grant_type").map(String::as_str),
        Some("authorization_code")
    );
    assert_ne!(p.get("code").map(String::as_str), Some("FOREIGN-CODE"));
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
}

/// A server that echoes what it received: token requests are refused with an
/// `error_description` quoting the request body and `Authorization` (raw, form-encoded and
/// JSON-escaped); FHIR reads answer 403 with an OperationOutcome (or 500 text) quoting them,
/// 401 with a challenge quoting the header. `/.well-known/*` documents point to its `/token`.
async fn echo_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let me = origin.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let me = me.clone();
            tokio::spawn(async move {
                let _ = echo_one(stream, &me).await;
            });
        }
    });
    origin
}

async fn echo_one(mut stream: tokio::net::TcpStream, origin: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let auth = header("authorization");
    let path = head
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let decoded: String = url::form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let form_auth = url::form_urlencoded::byte_serialize(auth.as_bytes()).collect::<String>();
    let b64_part = auth
        .split_once(' ')
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let user_password = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64_part.as_bytes())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let form_user_password =
        url::form_urlencoded::byte_serialize(user_password.as_bytes()).collect::<String>();
    let echo = format!(
        "received body {body} (decoded: {decoded}); Authorization {auth}; \
         as form {form_auth}; credentials {b64_part}; user and password {form_user_password}"
    );
    let (status, ctype, extra, out): (&str, &str, String, String) = if path
        .ends_with("/.well-known/smart-configuration")
    {
        (
            "200 OK",
            "application/json",
            String::new(),
            documents::smart_configuration(&format!("{origin}/token")).to_string(),
        )
    } else if path.ends_with("/.well-known/openid-configuration") {
        (
            "200 OK",
            "application/json",
            String::new(),
            documents::oidc_discovery(origin, &format!("{origin}/token")).to_string(),
        )
    } else if path == "/token" {
        (
            "401 Unauthorized",
            "application/json",
            String::new(),
            json!({"error": "invalid_client", "error_description": echo}).to_string(),
        )
    } else if path.ends_with("/metadata") {
        (
            "200 OK",
            "application/fhir+json",
            String::new(),
            json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                   "fhirVersion": "4.0.1", "format": ["json"], "software": {"name": "echo"}})
            .to_string(),
        )
    } else if path.ends_with("/Patient/401") {
        let quoted = auth.replace('"', "'");
        (
            "401 Unauthorized",
            "application/fhir+json",
            format!("WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"got {quoted}\"\r\n"),
            json!({"resourceType": "OperationOutcome",
                   "issue": [{"severity": "error", "code": "login", "diagnostics": echo}]})
            .to_string(),
        )
    } else if path.ends_with("/Binary/500") {
        (
            "500 Internal Server Error",
            "text/plain",
            String::new(),
            echo,
        )
    } else {
        (
            "403 Forbidden",
            "application/fhir+json",
            String::new(),
            json!({"resourceType": "OperationOutcome",
                   "issue": [{"severity": "error", "code": "forbidden", "diagnostics": echo}]})
            .to_string(),
        )
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{out}",
        out.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

fn assert_no_secret(what: &str, out: &Out, secrets: &[&str]) {
    let all = out.all();
    for s in secrets {
        assert!(!all.contains(s), "{what}: '{s}' leaked:\n{all}");
    }
    assert!(!all.contains("CANARY"), "{what}: a canary leaked:\n{all}");
}

/// Security boundary: a FHIR server or gateway that echoes `Authorization` (Basic
/// `user:password`, raw, base64 and form-encoded) in an OperationOutcome, a challenge or a text
/// error body gets it redacted in `test`, `test --output json` and `get` errors.
#[test]
fn echoed_basic_credentials_are_redacted_in_test_json_and_get() {
    use base64::Engine as _;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(echo_server());
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        json!({"c": {"base-url": format!("{origin}/fhir"),
                     "auth": {"scheme": "basic", "username": "alice", "password": CANARY_PW}}}),
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("alice:{CANARY_PW}"));
    let form_pw = url::form_urlencoded::byte_serialize(CANARY_PW.as_bytes()).collect::<String>();
    // The echo server also shows `user:password` form-encoded.
    let secrets = [b64.as_str(), form_pw.as_str()];
    for args in [
        &["test", "--probe", "Patient/403"][..],
        &["test", "--probe", "Patient/403", "--output", "json"],
        &["test", "--probe", "Patient/401"],
        &["test", "--probe", "Patient/401", "--output", "json"],
        &["get", "c", "Patient/403"],
        &["get", "c", "Binary/500"],
        &["-vv", "get", "c", "Patient/401"],
    ] {
        let out = run(dir.path(), args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.all());
        assert!(
            out.all().contains("[REDACTED]"),
            "{args:?}: the echo is shown, redacted: {}",
            out.all()
        );
        assert_no_secret(&args.join(" "), &out, &secrets);
    }
}

/// Security boundary: a token endpoint that echoes the request body (a `client_secret_post`
/// secret form-encoded; a signed client assertion) and the `Authorization` header
/// (`client_secret_basic`) in its `error_description` gets them redacted in `test` and its
/// JSON report.
#[test]
fn secrets_echoed_by_a_token_endpoint_are_redacted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(echo_server());
    let dir = tempfile::tempdir().unwrap();
    let key = fhirconn_host::keygen::generate(fhirconn_host::keygen::KeyAlg::Es384, None).unwrap();
    fhirconn_host::keygen::write(&dir.path().join("k"), &key, false).unwrap();
    write_config(
        dir.path(),
        json!({
            "post": {"base-url": format!("{origin}/fhir"),
                     "auth": {"scheme": "oidc-client-credentials", "token-url": format!("{origin}/token"),
                              "client-id": "post client", "client-secret": CANARY_SECRET,
                              "auth-method": "client_secret_post", "scope": "system/*.rs"}},
            "basic": {"base-url": format!("{origin}/fhir"),
                      "auth": {"scheme": "oidc-client-credentials", "token-url": format!("{origin}/token"),
                               "client-id": "basic client", "client-secret": CANARY_SECRET,
                               "scope": "system/*.rs"}},
            "smart": {"base-url": format!("{origin}/fhir"),
                      "auth": {"scheme": "smart-backend", "client-id": "smart",
                               "private-key-file": "k/private-key.pem", "kid": key.kid,
                               "scope": "system/*.rs"}}
        }),
    );
    let form = url::form_urlencoded::byte_serialize(CANARY_SECRET.as_bytes()).collect::<String>();
    // One connection per run: the host's redactor is shared by the connections of a file.
    for id in ["post", "basic", "smart"] {
        for output in ["human", "json"] {
            let out = run(dir.path(), &["test", id, "--output", output]);
            assert_eq!(out.code, 1, "{}", out.all());
            assert_no_secret(&format!("{id} {output}"), &out, &[form.as_str(), "eyJ"]);
            assert!(
                out.all().contains("[REDACTED]"),
                "{id} {output}: the echo is shown, redacted: {}",
                out.all()
            );
        }
    }
}

/// A server that reads each request and closes the connection without answering: the
/// request fails inside reqwest, whose error text names the whole URL.
async fn closing_server() -> String {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    origin
}

/// Security boundary: a request's query (a search's patient details, a pre-signed file URL's
/// signature) never reaches logs or errors: the URL is shown with its query values elided, in
/// debug logs (`-vv`, `--log-format json`) and in the error of a request the server dropped.
#[test]
fn query_values_reach_neither_logs_nor_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(closing_server());
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        json!({"c": {"base-url": format!("{origin}/fhir"),
                     "auth": {"scheme": "bearer", "token": "t0k3n-value"}}}),
    );
    let target = "Patient?name=CANARY-phi-name&sig=CANARY-signature";
    for args in [
        &["get", "c", target][..],
        &["-vv", "get", "c", target],
        &["-vv", "--log-format", "json", "get", "c", target],
    ] {
        let out = run(dir.path(), args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.all());
        assert!(
            out.all().contains("127.0.0.1"),
            "{args:?}: the failure names the server: {}",
            out.all()
        );
        assert!(
            !out.all().contains("CANARY"),
            "{args:?}: a query value leaked:\n{}",
            out.all()
        );
    }
    let out = run(dir.path(), &["-vv", "get", "c", target]);
    assert!(
        out.all().contains("name=\u{2026}"),
        "debug logs name the query's parameters: {}",
        out.all()
    );
}

/// Security boundary: the URL named by an HTTP-status error — of `get` (after a redirect to a
/// pre-signed URL) and of `get --all-pages` (a server's `next` link) — keeps its parameter
/// names, never their values.
#[test]
fn status_errors_name_urls_without_query_values() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(HostileServer::start()).unwrap();
    server
        .on(
            "GET",
            "/fhir/Binary/x",
            Answer::redirect(302, "{self}/fhir/files/x?X-Amz-Signature=CANARY-signature"),
        )
        .on(
            "GET",
            "/fhir/Patient",
            Answer::fhir(
                200,
                &json!({"resourceType": "Bundle", "type": "searchset", "entry": [],
                        "link": [{"relation": "next",
                                  "url": "{self}/fhir/page2?name=CANARY-phi-name"}]}),
            ),
        )
        .otherwise(Answer::text(403, "refused"));
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        json!({"c": {"base-url": server.url("/fhir"),
                     "auth": {"scheme": "bearer", "token": "t0k3n-value"}}}),
    );
    for args in [
        &["get", "c", "Observation?patient=CANARY-patient"][..],
        &["get", "c", "Binary/x"],
        &["get", "c", "Patient", "--all-pages"],
    ] {
        let out = run(dir.path(), args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.all());
        assert!(out.all().contains("403"), "{args:?}: {}", out.all());
        assert!(
            !out.all().contains("CANARY"),
            "{args:?}: a query value leaked:\n{}",
            out.all()
        );
    }
}
