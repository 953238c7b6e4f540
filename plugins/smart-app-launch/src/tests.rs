//! Unit tests of the `smart-app-launch` scheme against a mocked FHIR server and authorization
//! server: discovery and its CapabilityStatement fallback, silent refresh with rotation and
//! the launch context, `needs login`, and the settings' rules.

use super::*;
use fhirconn_sdk::testing::{auth_request, header_value, MockHost};
use fhirconn_sdk::{ErrorKind, HttpResponse};
use std::sync::{Arc, Mutex};

const BASE: &str = "http://127.0.0.1/fhir";

fn answer(status: u16, body: Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn settings() -> Value {
    json!({"client-id": "app", "scope": "launch/patient patient/*.rs offline_access",
           "redirect-uri": "http://127.0.0.1:8765/callback"})
}

/// A server with (or without) a smart-configuration; the token endpoint rotates refresh
/// tokens `rt-N` and records each request's form.
fn server(smart: bool, forms: Arc<Mutex<Vec<String>>>) -> MockHost {
    let n = std::sync::atomic::AtomicUsize::new(0);
    MockHost::new().with_http(move |req| {
        Ok(match req.url.as_str() {
            "http://127.0.0.1/fhir/.well-known/smart-configuration" if smart => answer(
                200,
                json!({"authorization_endpoint": "auth/authorize", "token_endpoint": "auth/token",
                       "grant_types_supported": ["authorization_code", "refresh_token"]}),
            ),
            "http://127.0.0.1/fhir/metadata" => answer(
                200,
                json!({"resourceType": "CapabilityStatement", "rest": [{"security": {"extension": [
                    {"url": OAUTH_URIS, "extension": [
                        {"url": "authorize", "valueUri": "http://127.0.0.1/fhir/auth/authorize"},
                        {"url": "token", "valueUri": "http://127.0.0.1/fhir/auth/token"}]}]}}]}),
            ),
            "http://127.0.0.1/fhir/auth/token" => {
                forms
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&req.body).into_owned());
                let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                answer(
                    200,
                    json!({"access_token": format!("at-{i}"), "token_type": "Bearer",
                           "expires_in": 300, "refresh_token": format!("rt-{i}"),
                           "scope": "patient/*.rs"}),
                )
            }
            _ => answer(404, json!({})),
        })
    })
}

fn stored(mock: &MockHost, refresh_token: &str) {
    let v = json!({"binding": {"token_endpoint": "http://127.0.0.1/fhir/auth/token",
                   "client_id": "app", "aud": BASE},
                   "refresh_token": refresh_token, "context": {"patient": "p-1"}});
    mock.with_host(|h| h.store_put(REFRESH_KEY, &SecretString::from(v.to_string())))
        .unwrap();
}

fn stored_refresh_token(mock: &MockHost) -> Option<String> {
    let raw = mock.with_host(|h| h.store_get(REFRESH_KEY)).unwrap()?;
    let v: Value = serde_json::from_str(raw.expose_secret()).unwrap();
    v["refresh_token"].as_str().map(str::to_string)
}

#[test]
fn a_stored_sign_in_is_refreshed_rotated_and_keeps_its_launch_context() {
    for smart in [true, false] {
        let forms = Arc::new(Mutex::new(Vec::new()));
        let mock = server(smart, forms.clone());
        stored(&mock, "rt-0");
        let conn = mock.configure(&SmartAppLaunch, settings()).unwrap();
        let creds = mock
            .authorize(conn.as_ref())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            header_value(&creds, "authorization").unwrap(),
            "Bearer at-1"
        );
        let ctx = creds.context.expect("a launch context");
        assert_eq!(ctx.patient.as_deref(), Some("p-1"), "kept from the sign-in");
        assert_eq!(ctx.scope.as_deref(), Some("patient/*.rs"), "granted scope");
        let form = forms.lock().unwrap()[0].clone();
        assert!(form.contains("grant_type=refresh_token") && form.contains("refresh_token=rt-0"));
        assert!(form.contains("client_id=app"), "{form}");
        assert_eq!(
            stored_refresh_token(&mock).as_deref(),
            Some("rt-1"),
            "rotated"
        );
    }
}

#[test]
fn without_a_stored_sign_in_a_silent_call_needs_login() {
    let mock = server(true, Arc::default());
    let conn = mock.configure(&SmartAppLaunch, settings()).unwrap();
    let e = mock.authorize(conn.as_ref()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InteractionRequired, "{e}");
    // A sign-in bound to another client is not used either.
    let mock = server(true, Arc::default());
    stored(&mock, "rt-0");
    let mut other = settings();
    other["client-id"] = json!("other-app");
    let conn = mock.configure(&SmartAppLaunch, other).unwrap();
    let req = auth_request();
    let e = mock.with_host(|h| conn.authorize(&req, h)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InteractionRequired, "{e}");
}

#[test]
fn without_any_oauth_uris_discovery_names_what_is_missing() {
    let mock = MockHost::new().with_http(|req| {
        Ok(match req.url.as_str() {
            u if u.ends_with("/metadata") => {
                answer(200, json!({"resourceType": "CapabilityStatement"}))
            }
            _ => answer(404, json!({})),
        })
    });
    stored(&mock, "rt-0");
    let conn = mock.configure(&SmartAppLaunch, settings()).unwrap();
    let e = mock.authorize(conn.as_ref()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("oauth-uris"), "{e}");
}

#[test]
fn settings_rules() {
    let mock = MockHost::new();
    let mut both = settings();
    both["client-secret"] = json!("s");
    both["private-key"] = json!("k");
    let Err(e) = mock.configure(&SmartAppLaunch, both) else {
        panic!("accepted")
    };
    assert!(e.to_string().contains("not both"), "{e}");
    let mut kid = settings();
    kid["kid"] = json!("k1");
    let Err(e) = mock.configure(&SmartAppLaunch, kid) else {
        panic!("accepted")
    };
    assert!(e.to_string().contains("kid needs private-key"), "{e}");
    let mut secret = settings();
    secret["client-secret"] = json!("s3cret");
    assert!(mock.configure(&SmartAppLaunch, secret).is_ok());
}

/// A server whose smart-configuration names `authorize` as its authorization endpoint.
fn discovering(authorize: &'static str) -> MockHost {
    MockHost::new().with_http(move |req| {
        Ok(match req.url.as_str() {
            "http://127.0.0.1/fhir/.well-known/smart-configuration" => answer(
                200,
                json!({"authorization_endpoint": authorize,
                       "token_endpoint": "http://127.0.0.1/fhir/auth/token"}),
            ),
            "http://127.0.0.1/fhir/auth/token" => answer(
                200,
                json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 300}),
            ),
            _ => answer(404, json!({})),
        })
    })
}

/// Security boundary: a discovered authorization endpoint whose query already sets a
/// parameter of the authorization request (an `aud` or `redirect_uri` of the FHIR server's
/// choosing, which a first-value-wins authorization server would honour), or that carries a
/// fragment, is refused with a protocol error naming it; a query of its own is kept.
#[test]
fn an_authorization_endpoint_that_presets_request_parameters_is_refused() {
    for (authorize, named) in [
        (
            "http://127.0.0.1/as/authorize?aud=https://victim.example/fhir",
            "'aud'",
        ),
        (
            "http://127.0.0.1/as/authorize?x=1&redirect_uri=http://evil.example/",
            "'redirect_uri'",
        ),
        (
            "http://127.0.0.1/as/authorize?Client_ID=other",
            "'client_id'",
        ),
        ("http://127.0.0.1/as/authorize?%73cope=x", "'scope'"),
        (
            "http://127.0.0.1/as/authorize?response_type=token",
            "'response_type'",
        ),
        ("http://127.0.0.1/as/authorize?state=s", "'state'"),
        (
            "http://127.0.0.1/as/authorize?code_challenge=c",
            "'code_challenge'",
        ),
        (
            "http://127.0.0.1/as/authorize?code_challenge_method=plain",
            "'code_challenge_method'",
        ),
        ("http://127.0.0.1/as/authorize?launch=l", "'launch'"),
        ("http://127.0.0.1/as/authorize#aud=x", "fragment"),
    ] {
        let mock = discovering(authorize);
        stored(&mock, "rt-0");
        let conn = mock.configure(&SmartAppLaunch, settings()).unwrap();
        let e = mock.authorize(conn.as_ref()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{authorize}: {e}");
        assert!(
            e.to_string().contains("authorization_endpoint") && e.to_string().contains(named),
            "{authorize}: {e}"
        );
    }
    let mock = discovering("http://127.0.0.1/as/authorize?tenant=t1");
    stored(&mock, "rt-0");
    let conn = mock.configure(&SmartAppLaunch, settings()).unwrap();
    mock.authorize(conn.as_ref())
        .unwrap_or_else(|e| panic!("a query of its own is fine: {e}"));
}

/// A FHIR server on 127.0.0.1 whose smart-configuration names `token` as its token endpoint
/// (and the real authorize endpoint); every token endpoint answers, and every request's URL
/// is recorded.
fn naming_token_endpoint(token: &'static str, seen: Arc<Mutex<Vec<String>>>) -> MockHost {
    MockHost::new().with_http(move |req| {
        seen.lock().unwrap().push(req.url.clone());
        Ok(match req.url.as_str() {
            "http://127.0.0.1/fhir/.well-known/smart-configuration" => answer(
                200,
                json!({"authorization_endpoint": "http://127.0.0.1/fhir/auth/authorize",
                       "token_endpoint": token}),
            ),
            u if u.ends_with("/token") => answer(
                200,
                json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 300}),
            ),
            _ => answer(404, json!({})),
        })
    })
}

const EVIL_TOKEN: &str = "https://evil.example/token";

/// A stored sign-in bound to the token endpoint `token`.
fn stored_at(mock: &MockHost, token: &str) {
    let v = json!({"binding": {"token_endpoint": token, "client_id": "app", "aud": BASE},
                   "refresh_token": "rt-0"});
    mock.with_host(|h| h.store_put(REFRESH_KEY, &SecretString::from(v.to_string())))
        .unwrap();
}

/// Security boundary: a confidential client (secret or key) never takes a token endpoint on
/// another host than base-url from the server: a configuration error naming `token-url` and
/// the host, before anything is sent there (not even a refresh).
#[test]
fn a_confidential_client_refuses_a_discovered_token_endpoint_on_another_host() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mock = naming_token_endpoint(EVIL_TOKEN, seen.clone());
    stored_at(&mock, EVIL_TOKEN);
    let mut s = settings();
    s["client-secret"] = json!("CANARY-client-secret");
    let conn = mock.configure(&SmartAppLaunch, s).unwrap();
    let e = mock.authorize(conn.as_ref()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("'token-url'") && text.contains("evil.example"),
        "{text}"
    );
    assert!(!text.contains("CANARY"), "{text}");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|u| !u.contains("evil")), "{seen:?}");
    // The same host with another port or scheme is the same host.
    let same = "https://127.0.0.1:8443/fhir/auth/token";
    let mock = naming_token_endpoint(same, Arc::default());
    stored_at(&mock, same);
    let mut s = settings();
    s["client-secret"] = json!("CANARY-client-secret");
    let conn = mock.configure(&SmartAppLaunch, s).unwrap();
    mock.authorize(conn.as_ref())
        .unwrap_or_else(|e| panic!("same host: {e}"));
}

/// A public client sends no secret: a token endpoint on another host works, with a warning
/// (logged and with the credentials) naming `token-url`.
#[test]
fn a_public_client_is_warned_about_a_token_endpoint_on_another_host() {
    let mock = naming_token_endpoint(EVIL_TOKEN, Arc::default());
    stored_at(&mock, EVIL_TOKEN);
    let conn = mock.configure(&SmartAppLaunch, settings()).unwrap();
    let creds = mock
        .authorize(conn.as_ref())
        .unwrap_or_else(|e| panic!("{e}"));
    let w = creds.warnings.join("\n");
    assert!(
        w.contains("'token-url'") && w.contains("evil.example"),
        "{w}"
    );
    let logs = mock.logs.lock().unwrap();
    assert!(
        logs.iter().any(|(_, m)| m.contains("'token-url'")),
        "{logs:?}"
    );
}

/// `token-url` pins the token endpoint: the discovered one is never used (no warning, no
/// error for a confidential client); with `authorize-url` too nothing is discovered; both
/// may be relative to base-url.
#[test]
fn pinned_endpoints_are_used_instead_of_the_discovered_ones() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mock = naming_token_endpoint(EVIL_TOKEN, seen.clone());
    stored(&mock, "rt-0");
    let mut s = settings();
    s["client-secret"] = json!("CANARY-client-secret");
    s["token-url"] = json!("http://127.0.0.1/fhir/auth/token");
    let conn = mock.configure(&SmartAppLaunch, s.clone()).unwrap();
    let creds = mock
        .authorize(conn.as_ref())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(creds.warnings.is_empty(), "{:?}", creds.warnings);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "http://127.0.0.1/fhir/.well-known/smart-configuration",
            "http://127.0.0.1/fhir/auth/token"
        ]
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let mock = naming_token_endpoint(EVIL_TOKEN, seen.clone());
    stored_at(&mock, "http://127.0.0.1/as/token");
    s["token-url"] = json!("/as/token");
    s["authorize-url"] = json!("/as/authorize");
    let conn = mock.configure(&SmartAppLaunch, s).unwrap();
    mock.authorize(conn.as_ref())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        *seen.lock().unwrap(),
        ["http://127.0.0.1/as/token"],
        "no discovery"
    );
}

/// A pinned `authorize-url` is checked like a discovered one, when configured; a
/// `token-url` that is not an http(s) URL is refused naming it.
#[test]
fn pinned_endpoints_are_checked_when_configured() {
    let mock = MockHost::new();
    for (key, value, named) in [
        (
            "authorize-url",
            "https://as.example/authorize?aud=x",
            "authorize-url already sets 'aud'",
        ),
        (
            "authorize-url",
            "https://as.example/authorize#f",
            "fragment",
        ),
        ("authorize-url", "https://as .example/", "authorize-url"),
        ("authorize-url", "ftp://as.example/", "authorize-url"),
        ("token-url", "ftp://as.example/token", "token-url"),
    ] {
        let mut s = settings();
        s[key] = json!(value);
        let Err(e) = mock.configure(&SmartAppLaunch, s) else {
            panic!("{key}: {value}: accepted")
        };
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains(named), "{value}: {e}");
    }
}
