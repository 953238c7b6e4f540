//! Unit tests of the `azure-ad` scheme against a mocked Entra and FHIR server: the audience
//! comes from configuration (a challenge only confirms it), the authority must be on
//! `authority-host`, stored refresh tokens are bound, and the flows send what Entra expects.

use super::*;
use fhirconn_sdk::oauth::device_code;
use fhirconn_sdk::testing::{auth_request, header_value, MockHost};
use fhirconn_sdk::{ErrorKind, HttpResponse};
use std::collections::HashMap;

const AUTHORITY: &str = "https://login.example";

fn answer(status: u16, body: Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

/// A FHIR server at `connection_info()`'s base URL whose 401 names `challenge`, and an Entra at
/// [`AUTHORITY`] that issues `at-N` with refresh token `rt-N` for every token request.
fn entra(challenge: &'static str) -> MockHost {
    let issued = std::sync::atomic::AtomicUsize::new(0);
    MockHost::new().with_http(move |req| {
        let t = |p: &str| format!("{AUTHORITY}/t1/oauth2/v2.0/{p}");
        Ok(match req.url.as_str() {
            "http://127.0.0.1/fhir/Patient?_count=1" => HttpResponse {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), challenge.into())],
                body: Vec::new(),
            },
            u if u == format!("{AUTHORITY}/t1/v2.0/.well-known/openid-configuration") => answer(
                200,
                json!({"issuer": format!("{AUTHORITY}/t1/v2.0"), "token_endpoint": t("token"),
                       "authorization_endpoint": t("authorize"),
                       "device_authorization_endpoint": t("devicecode")}),
            ),
            u if u == t("devicecode") => answer(
                200,
                json!({"device_code": "dc", "user_code": "U1", "verification_uri": "https://microsoft.com/devicelogin", "interval": 1}),
            ),
            u if u == t("token") => {
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                answer(
                    200,
                    json!({"access_token": format!("at-{n}"), "token_type": "Bearer",
                           "expires_in": 3600, "refresh_token": format!("rt-{n}")}),
                )
            }
            _ => answer(404, json!({})),
        })
    })
}

fn form(req: &fhirconn_sdk::HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect()
}

fn settings(extra: Value) -> Value {
    let mut s = json!({"client-id": "app", "authority-host": AUTHORITY});
    s.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    s
}

const GOOD: &str =
    r#"Bearer authorization_uri="https://login.example/t1", resource_id="http://127.0.0.1/""#;

fn token_requests(mock: &MockHost) -> Vec<HashMap<String, String>> {
    let reqs = mock.requests.lock().unwrap();
    reqs.iter()
        .filter(|r| r.url.ends_with("/token"))
        .map(form)
        .collect()
}

#[test]
fn a_challenge_naming_another_audience_gets_no_token_request() {
    let mock = entra(
        r#"Bearer authorization_uri="https://login.example/t1", resource_id="https://management.azure.com""#,
    );
    let s = settings(json!({"flow": "client-credentials", "client-secret": "s"}));
    let e = mock.configure_and_authorize(&AzureAd, s).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.message().contains("'https://management.azure.com'")
            && e.message()
                .contains("'http://127.0.0.1' (the origin of base-url)"),
        "{e}"
    );
    assert!(token_requests(&mock).is_empty());
}

#[test]
fn an_authority_from_the_challenge_on_another_host_is_refused() {
    let mock = entra(r#"Bearer authorization_uri="https://evil.example/t1""#);
    let s = settings(json!({"flow": "client-credentials", "client-secret": "s"}));
    let e = mock.configure_and_authorize(&AzureAd, s).unwrap_err();
    assert!(
        e.message().contains("refusing to send credentials there"),
        "{e}"
    );
    assert_eq!(mock.requests.lock().unwrap().len(), 1, "only the probe");
}

#[test]
fn client_credentials_ask_for_the_default_scope_with_the_secret_in_the_body() {
    let mock = entra(GOOD);
    let s = settings(json!({"flow": "client-credentials", "client-secret": "s3"}));
    let creds = mock.configure_and_authorize(&AzureAd, s).unwrap();
    assert_eq!(
        header_value(&creds, "authorization").unwrap(),
        "Bearer at-0"
    );
    let p = &token_requests(&mock)[0];
    assert_eq!(p["scope"], "http://127.0.0.1/.default");
    assert_eq!(
        (p["client_id"].as_str(), p["client_secret"].as_str()),
        ("app", "s3")
    );
    assert!(!p.contains_key("resource"));
}

#[test]
fn a_device_code_sign_in_is_stored_bound_and_refreshed_silently_only_when_it_matches() {
    let mock = entra(GOOD);
    let conn = mock.configure(&AzureAd, settings(json!({}))).unwrap();
    // Without a stored sign-in a non-interactive request needs login and sends nothing.
    let e = mock.authorize(conn.as_ref()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InteractionRequired);
    let interactive = AuthRequest {
        interactive: true,
        ..auth_request()
    };
    mock.with_host(|h| conn.authorize(&interactive, h)).unwrap();
    assert!(mock.told.lock().unwrap()[0].0.contains("U1"));
    // The next request refreshes silently with the stored token.
    let creds = mock.authorize(conn.as_ref()).unwrap();
    assert_eq!(
        header_value(&creds, "authorization").unwrap(),
        "Bearer at-1"
    );
    let p = token_requests(&mock);
    assert_eq!(p[0]["grant_type"], device_code::GRANT);
    assert_eq!(
        (p[1]["grant_type"].as_str(), p[1]["refresh_token"].as_str()),
        ("refresh_token", "rt-0")
    );
    assert_eq!(
        p[1]["scope"],
        "http://127.0.0.1/user_impersonation offline_access"
    );
    // A connection with another audience finds the stored sign-in but never sends it.
    let other = mock
        .configure(
            &AzureAd,
            settings(json!({"audience": "https://other.example", "tenant": "t1"})),
        )
        .unwrap();
    let e = mock.authorize(other.as_ref()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InteractionRequired);
    assert_eq!(
        token_requests(&mock).len(),
        2,
        "the bound refresh token stayed home"
    );
}

/// The fleet share key of a connection configured with `s` on a host with `env`.
fn share_key(s: Value, env: &[(&str, &str)]) -> Option<String> {
    let mock = env
        .iter()
        .fold(MockHost::new(), |m, (k, v)| m.with_env(k, v))
        .with_file("/t", b"jwt.a.b");
    mock.configure(&AzureAd, s).unwrap().share_key()
}

#[test]
fn only_an_applications_or_a_named_identitys_tokens_are_shared_by_a_fleet() {
    let cc = |extra: Value| {
        let mut s = settings(json!({"flow": "client-credentials", "client-secret": "CANARY-s"}));
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        share_key(s, &[])
    };
    let key = cc(json!({})).expect("a service principal's tokens are shared");
    assert!(key.contains("app") && key.contains(AUTHORITY), "{key}");
    assert_eq!(cc(json!({"client-secret": "other"})), Some(key.clone()));
    for other in [
        json!({"client-id": "app-2"}),
        json!({"tenant": "t2"}),
        json!({"audience": "https://other.example"}),
        json!({"authority-host": "https://login.example.cn"}),
    ] {
        assert_ne!(cc(other.clone()), Some(key.clone()), "{other}");
    }
    assert!(
        !key.contains("\ns\n") && !key.ends_with('s'),
        "no secret: {key}"
    );
    // People's sign-ins and a machine's own identity stay in their process.
    for s in [
        settings(json!({})),
        settings(json!({"flow": "auth-code"})),
        json!({"flow": "managed-identity"}),
    ] {
        assert_eq!(share_key(s.clone(), &[]), None, "{s}");
    }
    // A user-assigned managed identity is the same identity wherever its id is used.
    let mi = |id: &str| share_key(json!({"flow": "managed-identity", "object-id": id}), &[]);
    assert!(mi("o-1").is_some_and(|k| k.contains("o-1")));
    assert_ne!(mi("o-1"), mi("o-2"));
    // A workload identity is its application: named by the environment when not by settings.
    let wl = |client: &str| {
        share_key(
            json!({"flow": "workload-identity"}),
            &[
                ("AZURE_CLIENT_ID", client),
                ("AZURE_TENANT_ID", "t-env"),
                ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ],
        )
    };
    assert!(wl("wl-1").is_some_and(|k| k.contains("wl-1") && k.contains("t-env")));
    assert_ne!(wl("wl-1"), wl("wl-2"));
}
