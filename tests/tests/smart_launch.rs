//! The `smart-app-launch` plugin end to end through the `fhirconn` binary against the
//! testkit's strict SMART App Launch authorization server (`SmartLaunchIdp`) and a FHIR server
//! that accepts its tokens; the "browser" is `fhirconn-test-browser` as `$BROWSER`. Also the
//! authorization server itself, with hand-made requests, so each of its refusals can fail.

use fhirconn_testkit::hostile::documents::has_raw_control;
use fhirconn_testkit::hostile::{Answer, HostileServer};
use fhirconn_testkit::smart_launch::{SmartLaunchConfig, SmartLaunchIdp};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_command, http_get, run_command, Out};
use serde_json::{json, Value};
use std::collections::HashMap;

const SCOPE: &str = "launch/patient openid fhirUser offline_access patient/*.rs";

/// A port nothing listens on now (for the registered redirect URI).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Env {
    rt: tokio::runtime::Runtime,
    idp: SmartLaunchIdp,
    _fhir: Option<FhirServer>,
    base: String,
    redirect: String,
    dir: tempfile::TempDir,
}

impl Env {
    /// A FHIR server publishing a smart-configuration that names the authorization server.
    fn new() -> Self {
        Self::with_smart(SmartLaunchIdp::smart_configuration)
    }

    /// A FHIR server publishing `smart(idp)` as its smart-configuration.
    fn with_smart(smart: impl FnOnce(&SmartLaunchIdp) -> Value) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let redirect = format!("http://127.0.0.1:{}/callback", free_port());
        let idp = rt
            .block_on(SmartLaunchIdp::start(SmartLaunchConfig {
                redirect_uri: redirect.clone(),
                ..SmartLaunchConfig::default()
            }))
            .unwrap();
        let fhir = rt
            .block_on(FhirServer::start(FhirServerConfig {
                smart_configuration: Some(smart(&idp)),
                ..FhirServerConfig::default()
            }))
            .unwrap();
        let base = fhir.base_url();
        fhir.set_auth(ServerAuth::Jwt(idp.verifier(&base)));
        idp.configure(|c| c.audience = base.clone());
        let env = Self {
            rt,
            idp,
            _fhir: Some(fhir),
            base,
            redirect,
            dir: tempfile::tempdir().unwrap(),
        };
        env.write_config(json!({}));
        env
    }

    /// The connection `s` with the public client, plus `extra` settings.
    fn write_config(&self, extra: Value) {
        let mut auth = json!({"scheme": "smart-app-launch", "client-id": "smart-app",
                              "scope": SCOPE, "redirect-uri": self.redirect});
        for (k, v) in extra.as_object().unwrap() {
            auth[k] = v.clone();
        }
        let config = json!({"connections": {"s": {"base-url": self.base, "auth": auth}}});
        std::fs::write(self.dir.path().join("fhirconn.yaml"), config.to_string()).unwrap();
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let dir = self.dir.path();
        let mut cmd = fhirconn_command(dir, true);
        cmd.env_remove("FHIRCONN_CREDENTIALS")
            .env("XDG_STATE_HOME", dir.join("state"))
            .env("BROWSER", env!("CARGO_BIN_EXE_fhirconn-test-browser"))
            .env("TEST_BROWSER_LOG", dir.join("browser.log"))
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_command(&mut cmd)
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, &[])
    }

    fn browser_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("browser.log")).unwrap_or_default()
    }

    fn last_token_request(&self) -> HashMap<String, String> {
        self.idp.token_requests().pop().expect("a token request")
    }
}

fn listening(redirect: &str) -> bool {
    let u = url::Url::parse(redirect).unwrap();
    std::net::TcpStream::connect(("127.0.0.1", u.port().unwrap())).is_ok()
}

/// The whole standalone launch: `test` needs a login (and asks no one), `login` sends the
/// browser to the authorize endpoint with PKCE S256, `state`, `aud` = base URL, the scope as
/// written and the registered redirect URI (listened on only during the login); later
/// processes refresh silently, store the rotated refresh token, and show the launch context.
#[test]
fn login_then_test_and_token_show_the_launch_context_with_rotated_refresh_tokens() {
    let e = Env::new();
    let started = std::time::Instant::now();
    let out = e.run(&["test", "s"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("needs login: run fhirconn login s"),
        "{}",
        out.all()
    );
    assert!(
        started.elapsed().as_secs() < 20,
        "test never waits for a person"
    );
    assert!(
        e.idp.authorize_requests().is_empty(),
        "nobody was sent to sign in"
    );
    assert!(!listening(&e.redirect));

    let out = e.run(&["login", "s"]);
    assert_eq!(out.code, 0, "{}\n{}", out.all(), e.browser_log());
    let a = e.idp.authorize_requests().pop().unwrap();
    assert_eq!(a["response_type"], "code");
    assert_eq!(a["client_id"], "smart-app");
    assert_eq!(a["scope"], SCOPE, "the scope as written");
    assert_eq!(a["aud"], e.base, "aud is the FHIR base URL");
    assert_eq!(
        a["redirect_uri"], e.redirect,
        "the registered redirect URI, exactly"
    );
    assert_eq!(a["code_challenge_method"], "S256");
    assert_eq!(a["code_challenge"].len(), 43);
    assert_eq!(a["state"].len(), 32);
    let t = e.last_token_request();
    assert_eq!(t["grant_type"], "authorization_code");
    assert_eq!(t["redirect_uri"], e.redirect);
    assert_eq!(t["code_verifier"].len(), 43);
    assert!(
        !listening(&e.redirect),
        "the listener is gone after the login"
    );
    let first_refresh_token = issued_refresh_token(&e);

    let out = e.run(&["test", "s"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let t = e.last_token_request();
    assert_eq!(t["grant_type"], "refresh_token");
    assert_eq!(t["refresh_token"], first_refresh_token);
    for shown in [
        "launch: patient 1, encounter enc-7, fhirUser Practitioner/pr-9",
        "need_patient_banner true",
        &format!("granted scope: {SCOPE}"),
    ] {
        assert!(out.stdout.contains(shown), "{shown} in {}", out.stdout);
    }

    // A third process: only the refresh token rotated by the second one is still valid.
    let out = e.run(&["token", "s", "--json"]);
    assert_eq!(out.code, 0, "{}\n{:?}", out.all(), e.idp.last_error());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["launch-context"],
        json!({"patient": "1", "encounter": "enc-7", "fhirUser": "Practitioner/pr-9",
               "scope": SCOPE, "need_patient_banner": true,
               "smart_style_url": "https://ehr.example/smart-style.json"})
    );
    let t = e.last_token_request();
    assert_eq!(
        t["grant_type"], "refresh_token",
        "silently, with the rotated token"
    );
    assert_ne!(t["refresh_token"], first_refresh_token);
    assert_eq!(
        e.idp.authorize_requests().len(),
        1,
        "nobody signed in again"
    );
    let out = e.run(&["test", "s", "--output", "json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["launch_context"]["patient"], "1", "{}", out.stdout);

    assert_eq!(e.run(&["logout", "s"]).code, 0);
    let out = e.run(&["test", "s"]);
    assert!(out.stdout.contains("needs login"), "{}", out.all());
}

/// The refresh token the authorization server issued last (from its answer, via the next
/// request that presents it: the server keeps no plain list).
fn issued_refresh_token(e: &Env) -> String {
    let store = e.dir.path().join("state/fhirconn/credentials.json");
    let text = std::fs::read_to_string(&store).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let entry = find_string(&v, "smart-app-launch/refresh-token").expect("stored sign-in");
    let stored: Value = serde_json::from_str(&entry).unwrap();
    stored["refresh_token"].as_str().unwrap().to_string()
}

fn find_string(v: &Value, key_part: &str) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| match v {
            Value::String(s) if k.contains(key_part) => Some(s.clone()),
            other => find_string(other, key_part),
        }),
        Value::Array(a) => a.iter().find_map(|x| find_string(x, key_part)),
        _ => None,
    }
}

/// Security boundary: the login listener binds the registered address and answers only on
/// the registered path: a forged code on another path (with the right `state`) is 404 and
/// ignored, and the sign-in completes with the real redirect.
#[test]
fn the_login_listener_answers_only_on_the_registered_path() {
    let e = Env::new();
    let out = e.run_with(&["login", "s"], &[("TEST_BROWSER_KNOCK", "/elsewhere")]);
    let log = e.browser_log();
    assert_eq!(out.code, 0, "{}\n{log}", out.all());
    assert!(log.contains("knock HTTP/1.1 404"), "{log}");
    assert!(log.contains("listener HTTP/1.1 200"), "{log}");
}

/// Many SMART clients are registered with `http://localhost:P/callback`: that works too (the
/// host listens on 127.0.0.1:P and, where the host has IPv6, [::1]:P), and is sent exactly.
#[test]
fn a_localhost_redirect_uri_signs_in() {
    let mut e = Env::new();
    e.redirect = format!("http://localhost:{}/callback", free_port());
    e.idp.configure(|c| c.redirect_uri = e.redirect.clone());
    e.write_config(json!({}));
    let out = e.run(&["login", "s"]);
    assert_eq!(out.code, 0, "{}\n{}", out.all(), e.browser_log());
    let a = e.idp.authorize_requests().pop().unwrap();
    assert_eq!(a["redirect_uri"], e.redirect);
    assert_eq!(e.last_token_request()["redirect_uri"], e.redirect);
}

/// Security boundary: an exact `redirect-uri` must be http on a loopback address with a port;
/// anything else is refused with a clear error before the person is sent anywhere.
#[test]
fn a_redirect_uri_that_is_not_loopback_http_is_refused_before_anyone_signs_in() {
    let e = Env::new();
    e.write_config(json!({"redirect-uri": "http://app.example:8765/callback"}));
    let out = e.run(&["login", "s"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("redirect-uri 'http://app.example:8765/callback': not a loopback address"),
        "{}",
        out.all()
    );
    assert!(e.idp.authorize_requests().is_empty());
    assert!(e.browser_log().is_empty(), "no browser was opened");
}

/// Discovery falls back to the CapabilityStatement's SMART `oauth-uris` extension when the
/// server has no `.well-known/smart-configuration`.
#[test]
fn without_a_smart_configuration_the_oauth_uris_extension_is_used() {
    let mut e = Env::new();
    let hostile = e.rt.block_on(HostileServer::start()).unwrap();
    let capability = json!({"resourceType": "CapabilityStatement", "status": "active",
        "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
        "rest": [{"mode": "server", "security": {"extension": [e.idp.oauth_uris_extension()]}}]});
    hostile.on("GET", "/fhir/metadata", Answer::fhir(200, &capability));
    hostile.otherwise(Answer::json(404, &json!({})));
    e.base = hostile.url("/fhir");
    e.idp.configure(|c| c.audience = e.base.clone());
    e.write_config(json!({}));
    let out = e.run(&["login", "s"]);
    assert_eq!(out.code, 0, "{}\n{}", out.all(), e.browser_log());
    assert_eq!(e.idp.authorize_requests().pop().unwrap()["aud"], e.base);
    assert_eq!(
        hostile
            .received_at("/fhir/.well-known/smart-configuration")
            .len(),
        1
    );
}

/// Security boundary: a hostile FHIR server's smart-configuration names an authorization
/// endpoint whose query already sets `aud` and `redirect_uri` (a first-value-wins
/// authorization server would honour them); `login` refuses it with a protocol error naming
/// the parameter, before any browser opens or the authorization server sees a request.
#[test]
fn a_discovered_authorization_endpoint_presetting_aud_is_refused_before_the_browser_opens() {
    let mut e = Env::new();
    let hostile = e.rt.block_on(HostileServer::start()).unwrap();
    let mut smart = e.idp.smart_configuration();
    smart["authorization_endpoint"] = json!(format!(
        "{}?aud=https%3A%2F%2Fvictim.example%2Ffhir&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F",
        e.idp.authorize_url()
    ));
    hostile.on(
        "GET",
        "/fhir/.well-known/smart-configuration",
        Answer::json(200, &smart),
    );
    hostile.otherwise(Answer::json(404, &json!({})));
    e.base = hostile.url("/fhir");
    e.write_config(json!({}));
    let out = e.run(&["login", "s"]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr
            .contains("authorization_endpoint already sets 'aud' in its query"),
        "{}",
        out.all()
    );
    assert!(e.browser_log().is_empty(), "no browser was opened");
    assert!(e.idp.authorize_requests().is_empty());
    assert!(!listening(&e.redirect));
}

/// Security boundary: the launch context is server text: control characters in it reach
/// neither `test` nor `token --json` raw.
#[test]
fn a_hostile_launch_context_is_escaped_on_the_terminal() {
    let e = Env::new();
    let evil = "1\x1b]0;pwned\x07\x1b[2J\u{9b}31m";
    e.idp.configure(|c| {
        c.context = json!({"patient": evil, "smart_style_url": "https://x/\x1b[31m"});
        c.context_on_refresh = true;
    });
    assert_eq!(e.run(&["login", "s"]).code, 0);
    let out = e.run(&["test", "s"]);
    assert!(!has_raw_control(&out.stdout), "{:?}", out.stdout);
    assert!(
        out.stdout.contains("launch: patient 1\\x1b]0;pwned"),
        "{}",
        out.stdout
    );
    let out = e.run(&["token", "s", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let patient = v["launch-context"]["patient"].as_str().unwrap();
    assert!(!has_raw_control(patient), "{patient:?}");
}

/// A confidential client authenticates with HTTP Basic (`client-secret-env`); the secret is
/// never in a form body and never in the output.
#[test]
fn a_confidential_client_signs_in_with_its_secret() {
    let e = Env::new();
    e.write_config(json!({"client-id": "smart-confidential", "client-secret-env": "SMART_SECRET"}));
    let env = [("SMART_SECRET", "smart-s3cret")];
    let out = e.run_with(&["login", "s"], &env);
    assert_eq!(out.code, 0, "{}\n{:?}", out.all(), e.idp.last_error());
    let out = e.run_with(&["test", "s", "-vv"], &env);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains("smart-s3cret"));
    for t in e.idp.token_requests() {
        assert!(!t.contains_key("client_secret"), "{t:?}");
    }
    // With a wrong secret the token endpoint refuses the client.
    let out = e.run_with(&["login", "s"], &[("SMART_SECRET", "wrong")]);
    assert_ne!(out.code, 0);
    assert_eq!(
        e.idp.last_error().as_deref(),
        Some("invalid_client: wrong client id or secret")
    );
}

/// An asymmetric confidential client authenticates with a signed assertion
/// (`private_key_jwt`, ES384) that the token endpoint verifies with the registered key.
#[test]
fn an_asymmetric_client_signs_in_with_private_key_jwt() {
    use fhirconn_host::keygen::{self, KeyAlg};
    let e = Env::new();
    let key = keygen::generate(KeyAlg::Es384, Some("k1")).unwrap();
    keygen::write(&e.dir.path().join("key"), &key, false).unwrap();
    e.idp
        .configure(|c| c.key_clients = vec![("smart-asym".into(), key.jwks.clone())]);
    e.write_config(json!({"client-id": "smart-asym",
                          "private-key-file": "key/private-key.pem", "kid": "k1"}));
    let out = e.run(&["login", "s"]);
    assert_eq!(out.code, 0, "{}\n{:?}", out.all(), e.idp.last_error());
    let t = e.last_token_request();
    assert_eq!(
        t["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    // Another key under the same kid is refused by the token endpoint.
    let other = keygen::generate(KeyAlg::Es384, Some("k1")).unwrap();
    keygen::write(&e.dir.path().join("other"), &other, false).unwrap();
    e.write_config(json!({"client-id": "smart-asym",
                          "private-key-file": "other/private-key.pem", "kid": "k1"}));
    assert_ne!(e.run(&["login", "s"]).code, 0);
    assert!(e
        .idp
        .last_error()
        .unwrap()
        .starts_with("invalid_client: assertion refused"));
}

/// `url` with its host (127.0.0.1) written as `localhost`: the same server under another
/// host name than the FHIR server's base URL.
fn as_localhost(url: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some("localhost")).unwrap();
    u.into()
}

/// A server that would take a token request (recording it, answering with a token), on its
/// own runtime, and its token URL under the host name `localhost`.
fn token_catcher() -> (tokio::runtime::Runtime, HostileServer, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let evil = rt.block_on(HostileServer::start()).unwrap();
    evil.on(
        "POST",
        "/token",
        Answer::json(
            200,
            &json!({"access_token": "stolen", "token_type": "Bearer", "expires_in": 300}),
        ),
    );
    let token_url = as_localhost(&evil.url("/token"));
    (rt, evil, token_url)
}

/// A smart-configuration naming the authorization server, but `token` as token endpoint.
fn naming_token_endpoint(token: &str) -> impl FnOnce(&SmartLaunchIdp) -> Value + '_ {
    move |idp| {
        let mut smart = idp.smart_configuration();
        smart["token_endpoint"] = json!(token);
        smart
    }
}

/// Security boundary (audiences and endpoints come from configuration): the FHIR server's
/// smart-configuration names the real authorize endpoint but a token endpoint on another
/// host. A confidential client (secret or private key) refuses before anyone signs in, with
/// an error naming `token-url` and the host: no client credentials, code or PKCE verifier
/// reach that host.
#[test]
fn a_confidential_client_sends_nothing_to_a_discovered_token_endpoint_on_another_host() {
    use fhirconn_host::keygen::{self, KeyAlg};
    let (_rt, evil, evil_token) = token_catcher();
    let e = Env::with_smart(naming_token_endpoint(&evil_token));
    let key = keygen::generate(KeyAlg::Es384, Some("k1")).unwrap();
    keygen::write(&e.dir.path().join("key"), &key, false).unwrap();
    e.idp
        .configure(|c| c.key_clients = vec![("smart-asym".into(), key.jwks.clone())]);
    let env = [("SMART_SECRET", "smart-s3cret")];
    for client in [
        json!({"client-id": "smart-confidential", "client-secret-env": "SMART_SECRET"}),
        json!({"client-id": "smart-asym", "private-key-file": "key/private-key.pem", "kid": "k1"}),
    ] {
        e.write_config(client.clone());
        let out = e.run_with(&["login", "s"], &env);
        assert_ne!(out.code, 0, "{client}: {}", out.all());
        assert!(
            out.stderr.contains("'token-url'") && out.stderr.contains("localhost"),
            "{client}: {}",
            out.all()
        );
        let out = e.run_with(&["test", "s"], &env);
        assert_ne!(out.code, 0, "{client}: {}", out.all());
        assert!(out.stdout.contains("'token-url'"), "{}", out.all());
    }
    for r in evil.received() {
        let body = r.body_text();
        assert!(
            r.header("authorization").is_none()
                && !body.contains("code_verifier")
                && !body.contains("client_assertion"),
            "{} {} {:?} {body}",
            r.method,
            r.target,
            r.headers
        );
    }
    assert!(evil.received().is_empty(), "nothing reached the other host");
    assert!(e.browser_log().is_empty(), "nobody was sent to sign in");
    assert!(e.idp.authorize_requests().is_empty());
}

/// The same confidential client with `token-url` pinned signs in end to end at the pinned
/// token endpoint; the discovered one (another host) never sees a request.
#[test]
fn a_pinned_token_url_signs_in_and_the_discovered_token_endpoint_is_never_used() {
    let (_rt, evil, evil_token) = token_catcher();
    let e = Env::with_smart(naming_token_endpoint(&evil_token));
    e.write_config(json!({"client-id": "smart-confidential",
                          "client-secret-env": "SMART_SECRET", "token-url": e.idp.token_url()}));
    let env = [("SMART_SECRET", "smart-s3cret")];
    let out = e.run_with(&["login", "s"], &env);
    assert_eq!(out.code, 0, "{}\n{:?}", out.all(), e.idp.last_error());
    assert_eq!(e.last_token_request()["grant_type"], "authorization_code");
    let out = e.run_with(&["test", "s"], &env);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains("another host"), "{}", out.all());
    assert_eq!(e.last_token_request()["grant_type"], "refresh_token");
    assert!(evil.received().is_empty(), "{:?}", evil.received().len());
    // With authorize-url pinned too, the FHIR server's discovery is not read at all: a
    // server without one still works.
    let hostile = e.rt.block_on(HostileServer::start()).unwrap();
    hostile.otherwise(Answer::json(404, &json!({})));
    let mut e = e;
    e.base = hostile.url("/fhir");
    e.idp.configure(|c| c.audience = e.base.clone());
    e.write_config(json!({"client-id": "smart-confidential",
                          "client-secret-env": "SMART_SECRET", "token-url": e.idp.token_url(),
                          "authorize-url": e.idp.authorize_url()}));
    let out = e.run_with(&["login", "s"], &env);
    assert_eq!(out.code, 0, "{}\n{:?}", out.all(), e.idp.last_error());
    assert_eq!(e.idp.authorize_requests().pop().unwrap()["aud"], e.base);
    assert!(hostile.received().is_empty(), "no discovery");
}

/// A public client sends no secret: a discovered token endpoint on another host is used,
/// with a warning naming `token-url` in `login` (stderr) and `test` output.
#[test]
fn a_public_client_is_warned_about_a_token_endpoint_on_another_host() {
    let e = Env::with_smart(|idp| naming_token_endpoint(&as_localhost(&idp.token_url()))(idp));
    let out = e.run(&["login", "s"]);
    assert_eq!(out.code, 0, "{}\n{:?}", out.all(), e.idp.last_error());
    assert!(
        out.stderr.contains("another host") && out.stderr.matches("'token-url'").count() == 1,
        "login warns once, before the sign-in: {}",
        out.all()
    );
    let out = e.run(&["test", "s"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("warning: smart-app-launch: the token endpoint")
            && out.stdout.contains("'token-url'"),
        "{}",
        out.all()
    );
}

// ---- the authorization server itself, with hand-made requests ----

/// An authorize request with `change` applied (a key with `None` is removed); returns the
/// status line and the `code` of the redirect, if any.
fn authorize(e: &Env, change: &[(&str, Option<&str>)]) -> (String, Option<String>) {
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"; // RFC 7636 appendix B
    let mut q: Vec<(String, String)> = [
        ("response_type", "code"),
        ("client_id", "smart-app"),
        ("redirect_uri", e.redirect.as_str()),
        ("scope", SCOPE),
        ("state", "st-1"),
        ("aud", e.base.as_str()),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in change {
        q.retain(|(x, _)| x != k);
        if let Some(v) = v {
            q.push((k.to_string(), v.to_string()));
        }
    }
    let mut u = url::Url::parse(&e.idp.authorize_url()).unwrap();
    u.query_pairs_mut().extend_pairs(q);
    let raw = http_get(&u).unwrap();
    let status = raw.lines().next().unwrap_or_default().to_string();
    let code = raw
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .and_then(|l| url::Url::parse(l.trim()).ok())
        .and_then(|l| {
            let pairs: HashMap<String, String> = l.query_pairs().into_owned().collect();
            assert_eq!(
                pairs.get("state").map(String::as_str),
                Some("st-1"),
                "state comes back"
            );
            pairs.get("code").cloned()
        });
    (status, code)
}

fn redeem(e: &Env, form: &[(&str, &str)]) -> (u16, Value) {
    e.rt.block_on(async {
        let r = reqwest::Client::new()
            .post(e.idp.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish(),
            )
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or_default())
    })
}

#[test]
fn the_authorize_endpoint_refuses_what_smart_and_rfc_7636_refuse() {
    let e = Env::new();
    let (ok, code) = authorize(&e, &[]);
    assert!(ok.contains(" 302 "), "{ok}");
    assert!(code.is_some());
    for (change, why) in [
        (vec![("state", None)], "state is required"),
        (vec![("aud", None)], "aud is required"),
        (
            vec![("aud", Some("https://other.example/fhir"))],
            "aud does not name",
        ),
        (
            vec![("redirect_uri", Some("http://127.0.0.1:1/callback"))],
            "redirect_uri differs",
        ),
        (
            vec![("code_challenge_method", Some("plain"))],
            "S256 is required",
        ),
        (vec![("code_challenge", None)], "S256 is required"),
        (vec![("client_id", Some("stranger"))], "unknown client_id"),
    ] {
        let (status, code) = authorize(&e, &change);
        assert!(status.contains(" 400 "), "{change:?}: {status}");
        assert!(code.is_none());
        let err = e.idp.last_error().unwrap_or_default();
        assert!(err.contains(why), "{change:?}: {err}");
    }
}

#[test]
fn the_token_endpoint_refuses_wrong_verifiers_reused_codes_and_rotated_refresh_tokens() {
    let e = Env::new();
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"; // RFC 7636 appendix B
    let form = |code: &str| {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("client_id", "smart-app".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", e.redirect.clone()),
            ("code_verifier", verifier.to_string()),
        ]
    };
    let send = |f: Vec<(&str, String)>| {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        redeem(&e, &f)
    };
    let without = |f: Vec<(&'static str, String)>, key: &str| {
        f.into_iter().filter(|(k, _)| *k != key).collect::<Vec<_>>()
    };
    let with = |f: Vec<(&'static str, String)>, key: &'static str, v: &str| {
        let mut f = without(f, key);
        f.push((key, v.to_string()));
        f
    };
    for (bad, why) in [
        (
            without(form("C"), "code_verifier"),
            "code_verifier is required",
        ),
        (
            with(form("C"), "code_verifier", &"x".repeat(43)),
            "does not match",
        ),
        (without(form("C"), "redirect_uri"), "redirect_uri differs"),
        (
            with(form("C"), "redirect_uri", "http://127.0.0.1:1/cb"),
            "redirect_uri differs",
        ),
    ] {
        let code = authorize(&e, &[]).1.unwrap();
        let bad: Vec<_> = bad
            .into_iter()
            .map(|(k, v)| (k, if k == "code" { code.clone() } else { v }))
            .collect();
        let (status, body) = send(bad);
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{why}"
        );
        assert!(
            body["error_description"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
    let code = authorize(&e, &[]).1.unwrap();
    let (status, body) = send(form(&code));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["patient"], "1",
        "launch context with the code's tokens"
    );
    assert_eq!(body["token_type"], "Bearer");
    let (status, body2) = send(form(&code));
    assert_eq!(
        (status, body2["error"].as_str()),
        (400, Some("invalid_grant")),
        "reused code"
    );
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    let refresh = |rt: &str| {
        redeem(
            &e,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "smart-app"),
                ("refresh_token", rt),
            ],
        )
    };
    let (status, rotated) = refresh(&rt);
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["refresh_token"], body["refresh_token"], "rotated");
    let (status, again) = refresh(&rt);
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // A confidential client must authenticate.
    let code = authorize(&e, &[("client_id", Some("smart-confidential"))])
        .1
        .unwrap();
    let (status, body) = send(with(form(&code), "client_id", "smart-confidential"));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}
