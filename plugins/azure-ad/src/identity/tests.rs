//! Unit tests of managed identity (IMDS, App Service) and workload identity against mocked
//! endpoints: what is sent (no secret, the configured audience), where (the environment's
//! endpoints) and how answers are read.

use super::super::AzureAd;
use fhirconn_sdk::oauth;
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::testing::{header_value, MockHost};
use fhirconn_sdk::{ErrorKind, HttpResponse};
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

/// 2026-01-01T00:00:00Z, the mock's clock.
const NOW: u64 = 1_767_225_600;

fn at(secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

fn answer(status: u16, body: Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

/// A host whose every request gets `body` (the FHIR server, if asked, would challenge for
/// another resource: it must never be asked).
fn endpoint(body: Value) -> MockHost {
    MockHost::new().with_http(move |req| {
        Ok(if req.url.contains("/fhir/") {
            answer(401, json!({}))
        } else {
            answer(200, body.clone())
        })
    })
}

fn imds_answer() -> Value {
    json!({"access_token": "mi-token", "refresh_token": "", "expires_in": "3599",
           "expires_on": (NOW + 3599).to_string(), "not_before": NOW.to_string(),
           "resource": "http://127.0.0.1", "token_type": "Bearer"})
}

fn query(req: &fhirconn_sdk::HttpRequest) -> HashMap<String, String> {
    let u = url::Url::parse(&req.url).unwrap();
    u.query_pairs().into_owned().collect()
}

fn header<'a>(
    req: &'a fhirconn_sdk::HttpRequest,
    name: &str,
) -> Option<&'a (String, String, bool)> {
    req.headers.iter().find(|h| h.0.eq_ignore_ascii_case(name))
}

#[test]
fn imds_gets_the_configured_audience_with_metadata_true_and_no_secret() {
    let mock = endpoint(imds_answer());
    let s = json!({"flow": "managed-identity"});
    let creds = mock.configure_and_authorize(&AzureAd, s).unwrap();
    assert_eq!(
        header_value(&creds, "authorization").unwrap(),
        "Bearer mi-token"
    );
    assert_eq!(
        creds.expires_at,
        Some(at(NOW + 3599)),
        "expires_in as a string"
    );
    let reqs = mock.requests.lock().unwrap();
    assert_eq!(reqs.len(), 1, "no probe of the FHIR server, no discovery");
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert!(
        r.url
            .starts_with("http://169.254.169.254/metadata/identity/oauth2/token?"),
        "{}",
        r.url
    );
    let q = query(r);
    assert_eq!(q["api-version"], "2018-02-01");
    assert_eq!(q["resource"], "http://127.0.0.1", "the origin of base-url");
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(header(r, "Metadata").map(|h| h.1.as_str()), Some("true"));
    assert!(r.body.is_empty());
    assert!(r
        .headers
        .iter()
        .all(|h| !h.2 && !h.0.eq_ignore_ascii_case("authorization")));
}

#[test]
fn a_user_assigned_identity_is_named_by_one_id_and_the_pod_identity_host_is_honoured() {
    for (setting, param) in [
        ("client-id", "client_id"),
        ("object-id", "object_id"),
        ("msi-res-id", "msi_res_id"),
    ] {
        let mock = endpoint(imds_answer()).with_env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "http://127.0.0.1:8080/",
        );
        let s = json!({"flow": "managed-identity", setting: "id-1", "audience": "https://fhir.example/"});
        mock.configure_and_authorize(&AzureAd, s).unwrap();
        let r = &mock.requests.lock().unwrap()[0];
        assert!(r
            .url
            .starts_with("http://127.0.0.1:8080/metadata/identity/oauth2/token?"));
        let q = query(r);
        assert_eq!(
            (q[param].as_str(), q["resource"].as_str()),
            ("id-1", "https://fhir.example")
        );
    }
    let s = json!({"flow": "managed-identity", "client-id": "a", "object-id": "b"});
    let e = endpoint(imds_answer())
        .configure(&AzureAd, s)
        .err()
        .unwrap();
    assert!(
        e.message()
            .contains("one of client-id, object-id or msi-res-id"),
        "{e}"
    );
    let s = json!({"client-id": "a", "object-id": "b"});
    let e = endpoint(imds_answer())
        .configure(&AzureAd, s)
        .err()
        .unwrap();
    assert!(e.message().contains("only apply to flow"), "{e}");
}

#[test]
fn app_service_sends_its_identity_header_as_a_secret_and_reads_expires_on() {
    let mock = endpoint(
        json!({"access_token": "as-token", "expires_on": (NOW + 600).to_string(),
                               "resource": "http://127.0.0.1", "token_type": "Bearer",
                               "client_id": "c"}),
    )
    .with_env("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/msi/token")
    .with_env("IDENTITY_HEADER", "header-secret");
    let s = json!({"flow": "managed-identity", "object-id": "p-1"});
    let creds = mock.configure_and_authorize(&AzureAd, s).unwrap();
    assert_eq!(creds.expires_at, Some(at(NOW + 600)));
    let r = &mock.requests.lock().unwrap()[0];
    assert!(
        r.url.starts_with("http://127.0.0.1:41000/msi/token?"),
        "{}",
        r.url
    );
    let q = query(r);
    assert_eq!(q["api-version"], "2019-08-01");
    assert_eq!(q["principal_id"], "p-1");
    let h = header(r, "X-IDENTITY-HEADER").unwrap();
    assert_eq!(
        (h.1.as_str(), h.2),
        ("header-secret", true),
        "marked sensitive"
    );
    assert!(header(r, "Metadata").is_none());
    let e = MockHost::new()
        .with_env("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/msi/token")
        .configure(&AzureAd, json!({"flow": "managed-identity"}))
        .err()
        .unwrap();
    assert!(e.message().contains("without IDENTITY_HEADER"), "{e}");
}

#[test]
fn answers_are_validated_like_any_token_response() {
    for (body, expected) in [
        (
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": "soon"}),
            "non-numeric expires_in",
        ),
        (
            json!({"access_token": "t", "token_type": "Bearer", "expires_on": NOW.to_string()}),
            "already expired",
        ),
        (
            json!({"access_token": "t u", "token_type": "Bearer"}),
            "whitespace",
        ),
        (
            json!({"access_token": "t", "token_type": "pop"}),
            "only Bearer",
        ),
    ] {
        let e = endpoint(body)
            .configure_and_authorize(&AzureAd, json!({"flow": "managed-identity"}))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.message().contains(expected), "{e}");
    }
    let mock = MockHost::new().with_http(|_| {
        Ok(answer(
            400,
            json!({"error": "invalid_request", "error_description": "Identity not found"}),
        ))
    });
    let e = mock
        .configure_and_authorize(&AzureAd, json!({"flow": "managed-identity"}))
        .unwrap_err();
    assert!(e.message().contains("Identity not found"), "{e}");
}

/// Entra for tenant `t-env` at `https://login.example` answering token requests.
fn entra_env(token_file: &[u8]) -> MockHost {
    let a = "https://login.example";
    MockHost::new()
        .with_env("AZURE_CLIENT_ID", "wl-app")
        .with_env("AZURE_TENANT_ID", "t-env")
        .with_env("AZURE_AUTHORITY_HOST", "https://login.example/")
        .with_env(
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        )
        .with_file(
            "/var/run/secrets/azure/tokens/azure-identity-token",
            token_file,
        )
        .with_http(move |req| {
            Ok(
                if req.url == format!("{a}/t-env/v2.0/.well-known/openid-configuration") {
                    answer(
                        200,
                        json!({"issuer": format!("{a}/t-env/v2.0"),
                                   "token_endpoint": format!("{a}/t-env/oauth2/v2.0/token")}),
                    )
                } else if req.url == format!("{a}/t-env/oauth2/v2.0/token") {
                    answer(
                        200,
                        json!({"access_token": "wl", "token_type": "Bearer", "expires_in": 60}),
                    )
                } else {
                    answer(401, json!({}))
                },
            )
        })
}

fn form(req: &fhirconn_sdk::HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect()
}

#[test]
fn workload_identity_reads_the_environment_and_the_token_file_for_every_token() {
    let first = entra_env(b"jwt.one.sig\n");
    let conn = first
        .configure(&AzureAd, json!({"flow": "workload-identity"}))
        .unwrap();
    first.authorize(conn.as_ref()).unwrap();
    let rotated = entra_env(b"jwt.two.sig");
    rotated.authorize(conn.as_ref()).unwrap();
    for (mock, assertion) in [(&first, "jwt.one.sig"), (&rotated, "jwt.two.sig")] {
        let reqs = mock.requests.lock().unwrap();
        assert!(
            reqs.iter().all(|r| !r.url.contains("/fhir/")),
            "the tenant came from AZURE_TENANT_ID"
        );
        let p = form(reqs.last().unwrap());
        assert_eq!(p["client_assertion"], assertion);
        assert_eq!(p["client_assertion_type"], oauth::JWT_BEARER);
        assert_eq!(p["client_id"], "wl-app");
        assert_eq!(p["grant_type"], "client_credentials");
        assert_eq!(p["scope"], "http://127.0.0.1/.default");
        assert!(!p.contains_key("client_secret") && !p.contains_key("resource"));
    }
    let e = entra_env(b"  \n").authorize(conn.as_ref()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = MockHost::new()
        .configure(
            &AzureAd,
            json!({"flow": "workload-identity", "client-id": "a"}),
        )
        .err()
        .unwrap();
    assert!(e.message().contains("AZURE_FEDERATED_TOKEN_FILE"), "{e}");
}

#[test]
fn workload_identity_settings_win_over_the_environment() {
    let mock = entra_env(b"ignored").with_file("token.jwt", b"from.setting.sig");
    let s = json!({"flow": "workload-identity", "client-id": "set-app",
                   "federated-token-file": "token.jwt"});
    mock.configure_and_authorize(&AzureAd, s).unwrap();
    let p = form(mock.requests.lock().unwrap().last().unwrap());
    assert_eq!(
        (p["client_id"].as_str(), p["client_assertion"].as_str()),
        ("set-app", "from.setting.sig")
    );
}
