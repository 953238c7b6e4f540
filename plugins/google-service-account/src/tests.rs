//! Unit tests of the `google-service-account` scheme against a mocked host: the assertion's
//! header and claims, the JWT-bearer request, key-file errors that never quote the key, the
//! token endpoint rule, and the metadata server's request and answer.

use super::*;
use fhirconn_sdk::testing::MockHost;
use fhirconn_sdk::{ErrorKind, HttpResponse};
use jsonwebtoken::{DecodingKey, Validation};

const EMAIL: &str = "sa@project.iam.gserviceaccount.com";
const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A key file with a fresh RSA key, and the public key to verify its signatures.
fn key_file(token_uri: &str) -> (Value, DecodingKey) {
    let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let public = DecodingKey::from_rsa_pem(pair.public_key_pem().as_bytes()).unwrap();
    let file = json!({"type": "service_account", "project_id": "p", "private_key_id": "kid-1",
        "private_key": pair.serialize_pem(), "client_email": EMAIL, "token_uri": token_uri});
    (file, public)
}

fn answer(status: u16, body: Value, flavor: bool) -> HttpResponse {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if flavor {
        headers.push(("metadata-flavor".into(), "Google".into()));
    }
    HttpResponse {
        status,
        headers,
        body: body.to_string().into_bytes(),
    }
}

fn token() -> Value {
    json!({"access_token": "ya29.at", "expires_in": 3599, "token_type": "Bearer"})
}

fn mock(file: &Value) -> MockHost {
    MockHost::new()
        .with_file("sa.json", file.to_string().as_bytes())
        .with_http(|_| Ok(answer(200, token(), true)))
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

#[test]
fn the_assertion_is_rs256_with_googles_claims_exchanged_by_the_jwt_bearer_grant() {
    let (file, public) = key_file(TOKEN_URI);
    let m = mock(&file);
    let settings = json!({"key-file": "sa.json", "subject": "admin@example.org",
        "scope": "https://www.googleapis.com/auth/cloud-healthcare  https://www.googleapis.com/auth/cloud-platform"});
    let creds = m
        .configure_and_authorize(&GoogleServiceAccount, settings)
        .unwrap();
    assert_eq!(
        creds
            .expires_at
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        m.now_ms() as u64 / 1000 + 3599
    );
    let req = m.requests.lock().unwrap()[0].clone();
    assert_eq!((req.method.as_str(), req.url.as_str()), ("POST", TOKEN_URI));
    let body = form(&req.body);
    let names: Vec<&str> = body.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["grant_type", "assertion"]);
    assert_eq!(body[0].1, JWT_BEARER_GRANT);
    let header = jsonwebtoken::decode_header(&body[1].1).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("kid-1"));
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[TOKEN_URI]);
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(&body[1].1, &public, &v)
        .unwrap()
        .claims;
    let now = m.now_ms() as u64 / 1000;
    assert_eq!(
        claims,
        json!({"iss": EMAIL, "aud": TOKEN_URI, "iat": now, "exp": now + 3600,
            "sub": "admin@example.org",
            "scope": "https://www.googleapis.com/auth/cloud-healthcare https://www.googleapis.com/auth/cloud-platform"})
    );
}

#[test]
fn the_default_scope_is_cloud_healthcare_and_token_url_overrides_the_key_files() {
    let (file, _) = key_file(TOKEN_URI);
    let m = mock(&file);
    let settings = json!({"key-file": "sa.json", "token-url": "https://sts.example/token"});
    m.configure_and_authorize(&GoogleServiceAccount, settings)
        .unwrap();
    let req = m.requests.lock().unwrap()[0].clone();
    assert_eq!(req.url, "https://sts.example/token");
    let jwt = form(&req.body)[1].1.clone();
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&jwt)
        .unwrap()
        .claims;
    assert_eq!(claims["scope"], DEFAULT_SCOPE);
    assert_eq!(claims["aud"], "https://sts.example/token");
    assert!(claims.get("sub").is_none());
}

#[test]
fn key_file_errors_name_the_problem_never_the_key() {
    let (file, _) = key_file(TOKEN_URI);
    let pem = file["private_key"].as_str().unwrap().to_string();
    let body = pem.lines().nth(1).unwrap().to_string();
    let with = |change: Value| {
        let mut f = file.clone();
        f.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        f
    };
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let cases = [
        (
            with(json!({"type": "authorized_user"})),
            "is 'authorized_user'",
        ),
        (with(json!({"client_email": null})), "no 'client_email'"),
        (with(json!({"private_key_id": ""})), "no 'private_key_id'"),
        (
            with(json!({"private_key": pem.replace(&body, "AAAA")})),
            "key-file: the PKCS#8 key",
        ),
        (with(json!({"private_key": ec})), "not an RSA key"),
        (
            with(json!({"token_uri": "http://oauth2.example/token"})),
            "must be https",
        ),
        (json!(format!("{{{pem}")), "not a JSON key file"),
    ];
    for (f, needle) in cases {
        let text = match f.as_str() {
            Some(raw) => raw.to_string(),
            None => f.to_string(),
        };
        let m = MockHost::new().with_file("sa.json", text.as_bytes());
        let e = m
            .configure(&GoogleServiceAccount, json!({"key-file": "sa.json"}))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.message().contains(needle), "{needle}: {e}");
        assert!(!e.message().contains(&body) && !format!("{e:?}").contains(&body));
    }
    let e = MockHost::new()
        .configure(&GoogleServiceAccount, json!({}))
        .map(|_| ())
        .unwrap_err();
    assert!(
        e.message()
            .contains("exactly one of 'key', 'key-file', 'key-env'"),
        "{e}"
    );
    // Plain http to loopback is allowed (tests), and the connection's Debug has no key.
    let m = mock(&with(json!({"token_uri": "http://127.0.0.1:9/token"})));
    let flow = m.with_host(|h| {
        let mut s: Settings = settings::parse(json!({"key-file": "sa.json"}), h).unwrap();
        let key = s.key.take().unwrap();
        key_flow(s, key, h).unwrap()
    });
    assert!(!format!("{flow:?}").contains(&body));
}

#[test]
fn the_metadata_server_is_asked_with_its_header_and_must_answer_with_it() {
    let m = MockHost::new().with_http(|req| Ok(answer(200, token(), !req.url.contains("plain"))));
    let settings = json!({"source": "metadata-server", "scope": "https://a.example/x b"});
    let creds = m
        .configure_and_authorize(&GoogleServiceAccount, settings.clone())
        .unwrap();
    assert!(creds.expires_at.is_some());
    let req = m.requests.lock().unwrap()[0].clone();
    assert_eq!(req.method, "GET");
    assert_eq!(
        req.url,
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token\
         ?scopes=https%3A%2F%2Fa.example%2Fx,b"
    );
    assert_eq!(
        req.headers,
        [("Metadata-Flavor".to_string(), "Google".to_string(), false)]
    );
    assert!(req.body.is_empty());
    // GCE_METADATA_HOST is honoured; an answer without the header is not from a metadata server.
    let m = MockHost::new()
        .with_env("GCE_METADATA_HOST", "plain.example:8080")
        .with_http(|req| Ok(answer(200, token(), !req.url.contains("plain"))));
    let e = m
        .configure_and_authorize(&GoogleServiceAccount, settings.clone())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(
        e.message()
            .contains("http://plain.example:8080/computeMetadata/"),
        "{e}"
    );
    assert!(
        e.message().contains("without 'Metadata-Flavor: Google'"),
        "{e}"
    );
    for bad in ["evil.example/x?", "a@b", "", "h ost"] {
        let m = MockHost::new().with_env("GCE_METADATA_HOST", bad);
        let e = m
            .configure(&GoogleServiceAccount, settings.clone())
            .map(|_| ())
            .unwrap_err();
        assert!(e.message().contains("GCE_METADATA_HOST"), "{bad}: {e}");
    }
    let m = MockHost::new().with_http(|_| Ok(answer(404, json!({}), true)));
    let e = m
        .configure_and_authorize(&GoogleServiceAccount, settings)
        .unwrap_err();
    assert!(e.message().contains("HTTP 404"), "{e}");
}

#[test]
fn the_metadata_server_takes_no_key_subject_or_token_url() {
    for extra in [
        json!({"key": "{}"}),
        json!({"subject": "u@example.org"}),
        json!({"token-url": "https://a.example/token"}),
    ] {
        let mut s = json!({"source": "metadata-server"});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let e = MockHost::new()
            .configure(&GoogleServiceAccount, s)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{extra}: {e}");
    }
}

#[test]
fn a_key_files_account_and_subject_name_the_fleet_share_key_and_the_metadata_server_has_none() {
    let (file, _) = key_file(TOKEN_URI);
    let m = mock(&file);
    let key = |s: Value| m.configure(&GoogleServiceAccount, s).unwrap().share_key();
    let plain = key(json!({"key-file": "sa.json"})).expect("a key's tokens are shared");
    assert!(
        plain.contains(EMAIL) && plain.contains(TOKEN_URI),
        "{plain}"
    );
    let delegating = key(json!({"key-file": "sa.json", "subject": "u@example.org"})).unwrap();
    assert!(delegating.contains("u@example.org"), "{delegating}");
    assert_ne!(plain, delegating);
    let (other, _) = key_file(TOKEN_URI);
    let mut other = other;
    other["client_email"] = json!("sb@project.iam.gserviceaccount.com");
    let other_key = mock(&other)
        .configure(&GoogleServiceAccount, json!({"key-file": "sa.json"}))
        .unwrap()
        .share_key();
    assert_ne!(
        other_key,
        Some(plain.clone()),
        "another account in the same file path"
    );
    assert!(!plain.contains("PRIVATE KEY") && !plain.contains("kid-1"));
    assert_eq!(key(json!({"source": "metadata-server"})), None);
}
