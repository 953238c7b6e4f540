//! The `azure-ad` plugin (built cdylib) against the testkit's mock Entra ID and a FHIR server
//! that challenges like Microsoft's: device code, auth code + PKCE through the host's loopback
//! redirect, silent refresh, `needs login`, authority discovery from the 401 challenge, and
//! client credentials.

use fhirconn_host::services::{CredentialStore, MemoryStore, Person};
use fhirconn_host::{Host, TestReport};
use fhirconn_testkit::entra::{DevicePoll, EntraConfig, MockEntra, TENANT_ID};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_command, follow_sign_in, http_get, plugin_dir, run_command};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A person who reads messages and, for sign-in URLs, lets a "browser" follow them: GET the
/// authorize URL, then GET the loopback redirect it answers with.
#[derive(Default)]
struct TestPerson {
    messages: Mutex<Vec<String>>,
}

impl Person for TestPerson {
    fn tell(&self, message: &str, url: Option<&str>) -> bool {
        self.messages
            .lock()
            .unwrap()
            .push(format!("{message} {}", url.unwrap_or("")));
        let Some(u) = url.and_then(|u| url::Url::parse(u).ok()) else {
            return false;
        };
        if !u.path().ends_with("/authorize") {
            return false;
        }
        std::thread::spawn(move || follow_sign_in(&u));
        true
    }
}

struct Env {
    entra: MockEntra,
    fhir: FhirServer,
    dir: tempfile::TempDir,
    store: Arc<MemoryStore>,
    person: Arc<TestPerson>,
}

/// The FHIR server's origin: the audience Azure FHIR services use, and fhirconn's default.
fn origin(fhir: &FhirServer) -> String {
    format!("http://{}", fhir.addr())
}

/// A FHIR server that accepts `entra`'s tokens for its own origin and names `entra` in its
/// challenge.
async fn fhir_behind(entra: &MockEntra) -> FhirServer {
    let fhir = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let audience = origin(&fhir);
    fhir.set_auth(ServerAuth::Jwt(entra.verifier(&audience)));
    fhir.set_challenge(Some(entra.challenge(&audience)));
    fhir
}

async fn env() -> Env {
    let entra = MockEntra::start(EntraConfig::default()).await.unwrap();
    let fhir = fhir_behind(&entra).await;
    Env {
        entra,
        fhir,
        dir: tempfile::tempdir().unwrap(),
        store: Arc::new(MemoryStore::default()),
        person: Arc::new(TestPerson::default()),
    }
}

impl Env {
    fn auth(&self, extra: Value) -> Value {
        let mut a = json!({"scheme": "azure-ad", "client-id": "public-app",
                           "authority-host": self.entra.authority_host()});
        if let (Value::Object(a), Value::Object(e)) = (&mut a, extra) {
            a.extend(e);
        }
        a
    }

    async fn host(&self, auth: Value) -> Host {
        Host::builder()
            .config_value(
                self.dir.path(),
                json!({"connections": {"c": {"base-url": self.fhir.base_url(), "auth": auth}}}),
            )
            .plugin_dir(plugin_dir())
            .only_explicit_plugin_dirs()
            .credential_store(self.store.clone())
            .person(self.person.clone())
            .build()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A connection test of `c` with `auth`, in a new host.
    async fn test(&self, auth: Value) -> TestReport {
        self.host(auth)
            .await
            .test(&[], None)
            .await
            .unwrap()
            .remove(0)
    }

    fn grants(&self) -> Vec<String> {
        self.entra
            .token_request_params()
            .iter()
            .map(|p| p.get("grant_type").cloned().unwrap_or_default())
            .collect()
    }

    fn assert_no_resource_parameter(&self) {
        for p in self.entra.token_request_params() {
            assert!(
                !p.contains_key("resource"),
                "v2.0 endpoints reject 'resource': {p:?}"
            );
        }
    }
}

/// The failure with its kind (`text [kind]`), or `passed`.
fn failure(r: &TestReport) -> String {
    match &r.failure {
        Some(d) => format!("{} [{}]", fhirconn_tests::failure(r), d.kind),
        None => "passed".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_code_waits_through_pending_and_slow_down_then_signs_in() {
    let e = env().await;
    e.entra.script_device_polls(vec![
        DevicePoll::Pending,
        DevicePoll::SlowDown,
        DevicePoll::Approve,
    ]);
    let host = e.host(e.auth(json!({}))).await;
    let conn = host.connection("c").unwrap();
    // Without a stored sign-in, a test never waits for a person.
    let r = host.test(&[], None).await.unwrap().remove(0);
    assert!(
        failure(&r).contains("needs login: run fhirconn login c"),
        "{}",
        failure(&r)
    );
    assert!(failure(&r).contains("[needs-login]"));
    assert!(e.person.messages.lock().unwrap().is_empty());

    conn.login().await.unwrap_or_else(|err| panic!("{err}"));
    let told = e.person.messages.lock().unwrap().join("\n");
    assert!(
        told.contains("enter the code F") && told.contains("/devicelogin"),
        "{told}"
    );
    assert_eq!(
        e.grants().len(),
        3,
        "pending, slow_down, success: {:?}",
        e.grants()
    );
    assert_eq!(
        e.entra.polls_too_fast(),
        0,
        "the client honoured interval and slow_down"
    );
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    e.assert_no_resource_parameter();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_code_with_pkce_signs_in_through_the_loopback_redirect() {
    let e = env().await;
    let host = e
        .host(e.auth(json!({"flow": "auth-code", "tenant": TENANT_ID})))
        .await;
    let conn = host.connection("c").unwrap();
    conn.login().await.unwrap_or_else(|err| panic!("{err}"));
    let p = e.entra.token_request_params().pop().unwrap();
    assert_eq!(p["grant_type"], "authorization_code");
    assert!(p["redirect_uri"].starts_with("http://127.0.0.1:"), "{p:?}");
    assert_eq!(p["code_verifier"].len(), 43);
    assert_eq!(
        p["scope"],
        format!("{}/user_impersonation offline_access", origin(&e.fhir))
    );
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    e.assert_no_resource_parameter();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_pkce_verifier_is_rejected() {
    let e = env().await;
    // Drive the mock by hand: authorize with one verifier's challenge, redeem with another.
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"; // RFC 7636 appendix B
    let redirect = "http://127.0.0.1:9/cb";
    let mut authorize = url::Url::parse(&format!(
        "{}/{TENANT_ID}/oauth2/v2.0/authorize",
        e.entra.authority_host()
    ))
    .unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", "public-app")
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "https://x/user_impersonation")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    let resp = tokio::task::spawn_blocking(move || http_get(&authorize).unwrap())
        .await
        .unwrap();
    let location = resp
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let token_url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", e.entra.authority_host());
    let post = |verifier: &'static str, code: String| {
        let token_url = token_url.clone();
        async move {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "authorization_code"),
                    ("client_id", "public-app"),
                    ("code", code.as_str()),
                    ("redirect_uri", redirect),
                    ("code_verifier", verifier),
                ])
                .finish();
            let r = reqwest::Client::new()
                .post(token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = post("wrong-verifier-wrong-verifier-wrong-verifier", code.clone()).await;
    assert_eq!(status, 400);
    assert!(body.contains("AADSTS501481"), "{body}");
    // The right verifier (RFC 7636 appendix B) would have worked, but codes are single-use.
    let (status, _) = post("dBjftJeZ4CVP-mJ92K27uhbUJU1p1r_wW1gFWFOEjXk", code).await;
    assert_eq!(status, 400, "a code is redeemed at most once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_refresh_silently_and_an_expired_refresh_token_needs_login() {
    let e = env().await;
    e.entra.set_access_token_lifetime(Duration::from_secs(2));
    let host = e.host(e.auth(json!({"tenant": TENANT_ID}))).await;
    let conn = host.connection("c").unwrap();
    conn.login().await.unwrap();
    let told = e.person.messages.lock().unwrap().len();
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    assert_eq!(e.grants().last().map(String::as_str), Some("refresh_token"));
    assert_eq!(
        e.person.messages.lock().unwrap().len(),
        told,
        "no person involved"
    );

    // A new process (same store) signs in silently too.
    let host2 = e.host(e.auth(json!({"tenant": TENANT_ID}))).await;
    assert!(host2.test(&[], None).await.unwrap()[0].ok);

    e.entra.expire_refresh_tokens();
    let host3 = e.host(e.auth(json!({"tenant": TENANT_ID}))).await;
    let r = host3.test(&[], None).await.unwrap().remove(0);
    assert!(failure(&r).contains("[needs-login]"), "{}", failure(&r));
    assert!(
        e.store.get("c/azure-ad/refresh-token").unwrap().is_none(),
        "the refused refresh token is forgotten"
    );
    // logout forgets a stored sign-in.
    host3.connection("c").unwrap().login().await.unwrap();
    assert!(e.store.get("c/azure-ad/refresh-token").unwrap().is_some());
    assert!(host3.connection("c").unwrap().logout().await.unwrap());
    assert!(e.store.get("c/azure-ad/refresh-token").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_authority_is_discovered_from_the_challenge_however_it_is_spelled() {
    let e = env().await;
    let base = origin(&e.fhir);
    let host_url = e.entra.authority_host();
    let cc = json!({"client-id": "daemon-app", "flow": "client-credentials",
                    "client-secret": "daemon-secret"});
    for challenge in [
        format!(
            r#"Bearer authorization_uri="{host_url}/{TENANT_ID}", resource_id="{base}", realm="{base}""#
        ),
        format!(r#"Bearer authorization_uri = "{host_url}/{TENANT_ID}" ,resource_id = "{base}/""#),
        format!(r#"bearer Authorization_Uri='{host_url}/{TENANT_ID}' resource_id={base}"#),
    ] {
        e.fhir.set_challenge(Some(challenge.clone()));
        let host = e.host(e.auth(cc.clone())).await;
        let r = host.test(&[], Some("Patient/1")).await.unwrap().remove(0);
        assert!(r.ok, "{challenge}: {}", failure(&r));
    }
    let p = e.entra.token_request_params().pop().unwrap();
    assert_eq!(p["scope"], format!("{base}/.default"));
    assert_eq!(p["grant_type"], "client_credentials");
    e.assert_no_resource_parameter();

    // A challenge naming another host must not receive credentials.
    e.fhir.set_challenge(Some(format!(
        r#"Bearer authorization_uri="https://login.evil.example/{TENANT_ID}", resource_id="{base}""#
    )));
    let before = e.entra.token_requests();
    let host = e.host(e.auth(cc.clone())).await;
    let r = host.test(&[], None).await.unwrap().remove(0);
    assert!(
        failure(&r).contains("refusing to send credentials there"),
        "{}",
        failure(&r)
    );
    assert_eq!(e.entra.token_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audience_with_or_without_a_trailing_slash_and_client_credentials_errors() {
    let e = env().await;
    let base = origin(&e.fhir);
    for audience in [base.clone(), format!("{base}/")] {
        let host = e
            .host(e.auth(
                json!({"client-id": "daemon-app", "flow": "client-credentials",
                                "client-secret": "daemon-secret", "tenant": TENANT_ID,
                                "audience": audience}),
            ))
            .await;
        let r = host.test(&[], Some("Patient/1")).await.unwrap().remove(0);
        assert!(r.ok, "{audience}: {}", failure(&r));
    }
    let host = e
        .host(e.auth(
            json!({"client-id": "daemon-app", "flow": "client-credentials",
                            "client-secret": "CANARY-wrong", "tenant": TENANT_ID}),
        ))
        .await;
    let r = host.test(&[], None).await.unwrap().remove(0);
    let text = failure(&r);
    assert!(
        text.contains("invalid_client") && text.contains("AADSTS7000215"),
        "{text}"
    );
    assert!(!text.contains("CANARY-wrong"));
}

#[test]
fn cli_login_test_and_logout_with_a_file_store() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env());
    let dir = e.dir.path();
    std::fs::write(
        dir.join("fhirconn.yaml"),
        serde_json::to_string(
            &json!({"connections": {"az": {"base-url": e.fhir.base_url(),
            "auth": e.auth(json!({}))}}}),
        )
        .unwrap(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = run_command(
            fhirconn_command(dir, true)
                .env_remove("FHIRCONN_CREDENTIALS")
                .env("XDG_STATE_HOME", dir.join("state"))
                .env_remove("BROWSER")
                .args(args),
        );
        (out.code, out.stdout, out.stderr)
    };
    let (code, stdout, _) = run(&["test"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("needs login: run fhirconn login az"),
        "{stdout}"
    );
    let (code, stdout, stderr) = run(&["login", "az"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("enter the code"),
        "the person was told: {stderr}"
    );
    // The user's state directory, never beside the connections file.
    let store = dir.join("state/fhirconn/credentials.json");
    assert!(!dir.join(".fhirconn-credentials.json").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (code, stdout, _) = run(&["test"]);
    assert_eq!(
        code, 0,
        "signed in silently from the stored refresh token: {stdout}"
    );
    let (code, _, _) = run(&["logout", "az"]);
    assert_eq!(code, 0);
    let (code, stdout, _) = run(&["test"]);
    assert_eq!(code, 1, "{stdout}");
}

/// Security boundary: the FHIR server must not choose the token audience. A challenge naming
/// Azure Resource Manager gets no token request, in any flow, and the error names both values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_challenge_naming_a_foreign_resource_gets_no_token() {
    let e = env().await;
    let hostile = fhirconn_testkit::hostile::documents::foreign_resource_challenge(
        &e.entra.authority_host(),
        TENANT_ID,
    );
    // Sign in first (tenant configured: no challenge read), so a refresh token is stored.
    let host = e.host(e.auth(json!({"tenant": TENANT_ID}))).await;
    host.connection("c").unwrap().login().await.unwrap();
    e.fhir.set_challenge(Some(hostile));
    let before = e.entra.token_requests();
    for auth in [
        json!({"client-id": "daemon-app", "flow": "client-credentials",
               "client-secret": "daemon-secret"}),
        // Device code with a stored refresh token: the silent refresh must not happen either.
        json!({}),
    ] {
        let host = e.host(e.auth(auth)).await;
        let r = host.test(&[], None).await.unwrap().remove(0);
        let text = failure(&r);
        assert!(
            text.contains("https://management.azure.com") && text.contains(&origin(&e.fhir)),
            "the error names both audiences: {text}"
        );
    }
    assert_eq!(e.entra.token_requests(), before, "no token was requested");
    for p in e.entra.token_request_params() {
        assert!(
            !p.get("scope")
                .is_some_and(|s| s.contains("management.azure.com")),
            "{p:?}"
        );
    }
}

/// Security boundary: a stored refresh token is bound to the authority, tenant, client id and
/// audience it was issued for; another authority with the same connection id never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_refresh_token_is_never_sent_to_another_authority() {
    let e = env().await;
    let host = e.host(e.auth(json!({"tenant": TENANT_ID}))).await;
    host.connection("c").unwrap().login().await.unwrap();
    let other = MockEntra::start(EntraConfig::default()).await.unwrap();
    // Same connection id, same store, another authority (a second connections file).
    let elsewhere = json!({"scheme": "azure-ad", "client-id": "public-app",
                           "authority-host": other.authority_host(), "tenant": TENANT_ID});
    let r = e.test(elsewhere).await;
    assert!(failure(&r).contains("[needs-login]"), "{}", failure(&r));
    assert_eq!(other.token_requests(), 0, "the other authority got nothing");
    // Another client id or audience at the same authority: sign in again, too.
    let before = e.entra.token_requests();
    for extra in [
        json!({"tenant": TENANT_ID, "client-id": "another-app"}),
        json!({"tenant": TENANT_ID, "audience": "https://other.azurehealthcareapis.com"}),
    ] {
        let r = e.test(e.auth(extra)).await;
        assert!(failure(&r).contains("[needs-login]"), "{}", failure(&r));
    }
    assert_eq!(e.entra.token_requests(), before);
    // The original binding still signs in silently.
    let r = e.test(e.auth(json!({"tenant": TENANT_ID}))).await;
    assert!(r.ok, "{}", failure(&r));
}

/// A declined (`access_denied`) or expired (`expired_token`) device code ends the sign-in at
/// once with an error that says so: no more polls, no token, nothing stored, still needs login.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_code_declined_or_expired_ends_the_sign_in_with_a_clear_error() {
    for (script, expected) in [
        (
            vec![DevicePoll::Pending, DevicePoll::Deny],
            "the sign-in was declined",
        ),
        (
            vec![DevicePoll::Pending, DevicePoll::Expire],
            "the sign-in code expired before it was used",
        ),
    ] {
        let e = env().await;
        e.entra.script_device_polls(script.clone());
        let host = e.host(e.auth(json!({"tenant": TENANT_ID}))).await;
        let conn = host.connection("c").unwrap();
        // The last scripted answer repeats: a client that kept polling would never finish.
        let err = tokio::time::timeout(Duration::from_secs(20), conn.login())
            .await
            .unwrap_or_else(|_| panic!("{script:?}: the client kept polling"))
            .map(|_| ())
            .expect_err("no sign-in");
        let text = err.to_string();
        assert!(text.contains(expected), "{script:?}: {text}");
        assert_eq!(
            e.grants().len(),
            2,
            "{script:?}: polling stopped at the answer: {:?}",
            e.grants()
        );
        assert!(e.entra.issued_tokens().is_empty(), "{script:?}");
        assert!(
            e.store.get("c/azure-ad/refresh-token").unwrap().is_none(),
            "{script:?}: nothing stored"
        );
        let r = host.test(&[], None).await.unwrap().remove(0);
        assert!(failure(&r).contains("[needs-login]"), "{}", failure(&r));
    }
}

/// `login`, `test`, `get` and `logout` at `-vv` never print an issued access or refresh token
/// (whole, or the payload or signature of a JWT) nor the client secret (a canary); sign-ins go
/// to `$FHIRCONN_CREDENTIALS` (0600) and nowhere else.
#[test]
fn cli_login_at_trace_level_shows_no_token_and_no_client_secret() {
    const SECRET: &str = "CANARY~entra+client/secret&=42";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (entra, fhir) = rt.block_on(async {
        let entra = MockEntra::start(EntraConfig::daemon_secret(SECRET))
            .await
            .unwrap();
        let fhir = fhir_behind(&entra).await;
        (entra, fhir)
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let authority = entra.authority_host();
    std::fs::write(
        d.join("fhirconn.yaml"),
        serde_json::to_string(&json!({"connections": {
            "az": {"base-url": fhir.base_url(),
                   "auth": {"scheme": "azure-ad", "client-id": "public-app",
                            "tenant": TENANT_ID, "authority-host": authority}},
            "daemon": {"base-url": fhir.base_url(),
                       "auth": {"scheme": "azure-ad", "client-id": "daemon-app",
                                "flow": "client-credentials", "client-secret": SECRET,
                                "tenant": TENANT_ID, "authority-host": authority}}}}))
        .unwrap(),
    )
    .unwrap();
    let store = d.join("private/sign-ins.json");
    let run = |args: &[&str]| {
        let out = run_command(
            fhirconn_command(d, true)
                .env_remove("BROWSER")
                .env("FHIRCONN_CREDENTIALS", &store)
                .env("XDG_STATE_HOME", d.join("state"))
                .env("HOME", d.join("home"))
                .arg("-vv")
                .args(args),
        );
        (out.code, out.all())
    };
    let mut outputs = Vec::new();
    for args in [
        &["login", "az"][..],
        &["test"][..],
        &["get", "az", "Patient/1"][..],
        &["login", "daemon"][..],
        &["get", "daemon", "Patient/1"][..],
    ] {
        let (code, text) = run(args);
        assert_eq!(code, 0, "{args:?}: {text}");
        outputs.push((args, text));
    }
    let before_logout = std::fs::read_to_string(&store).unwrap();
    let (code, text) = run(&["logout", "az"]);
    assert_eq!(code, 0, "{text}");
    outputs.push((&["logout", "az"][..], text));

    let issued = entra.issued_tokens();
    let refresh: Vec<&String> = issued.iter().filter(|t| t.starts_with("rt-")).collect();
    assert!(
        issued.len() >= 4 && refresh.len() >= 2,
        "device code, refresh and client credentials issued: {issued:?}"
    );
    let mut secrets: Vec<String> = vec![SECRET.into()];
    for t in &issued {
        secrets.push(t.clone());
        // A JWT leaks through its claims or its signature just as well.
        secrets.extend(
            t.split('.')
                .skip(1)
                .filter(|part| part.len() >= 16)
                .map(String::from),
        );
    }
    for (args, text) in &outputs {
        assert!(
            text.contains("TRACE") || text.contains("DEBUG"),
            "{args:?} logged at -vv: {text}"
        );
        assert!(
            !text.contains("CANARY"),
            "{args:?}: a canary leaked:\n{text}"
        );
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{args:?}: {s} leaked:\n{text}");
        }
    }
    // The sign-in was kept in $FHIRCONN_CREDENTIALS (0600), and only there.
    assert!(
        refresh.iter().any(|t| before_logout.contains(t.as_str())),
        "a refresh token in the store"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(!d.join("state/fhirconn/credentials.json").exists());
    assert!(!d
        .join("home/.local/state/fhirconn/credentials.json")
        .exists());
    assert!(!d.join(".fhirconn-credentials.json").exists());
    let after = std::fs::read_to_string(&store).unwrap();
    assert!(
        !refresh.iter().any(|t| after.contains(t.as_str())),
        "logout forgot the sign-in"
    );
}
