//! Unit tests of the `oidc-client-credentials` scheme against a mocked provider: each client
//! authentication method and grant on the wire, discovery, errors, and settings checks.
use super::*;
use fhirconn_sdk::serde_json::json;
use fhirconn_sdk::testing::MockHost;
use fhirconn_sdk::{CredentialHeader, ErrorKind, ExposeSecret, HttpRequest, HttpResponse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::sync::{Arc, Mutex as StdMutex};

fn json_response(status: u16, body: Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

type Seen = Arc<StdMutex<Vec<HttpRequest>>>;

/// A mock provider at https://idp.example answering discovery and token requests.
fn provider(token_reply: impl Fn() -> HttpResponse + Send + Sync + 'static) -> (MockHost, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let mock = MockHost::new().with_http(move |req| {
        log.lock().unwrap().push(req.clone());
        Ok(match req.url.as_str() {
            "https://idp.example/realm/.well-known/openid-configuration" => json_response(
                200,
                json!({
                    "issuer": "https://idp.example/realm",
                    "authorization_endpoint": "https://idp.example/realm/auth",
                    "token_endpoint": "https://idp.example/realm/token",
                    "jwks_uri": "https://idp.example/realm/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"]
                }),
            ),
            "https://idp.example/realm/token" | "http://127.0.0.1/oauth2/token" => token_reply(),
            _ => json_response(404, json!({})),
        })
    });
    (mock, seen)
}

fn authorize(settings: Value, mock: &MockHost) -> Result<Credentials> {
    mock.configure_and_authorize(&ClientCredentials, settings)
}

fn good_token() -> HttpResponse {
    json_response(
        200,
        json!({"access_token": "tok-123", "token_type": "Bearer", "expires_in": 300}),
    )
}

fn header_value(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers
        .iter()
        .find(|h| h.0.eq_ignore_ascii_case(name))
        .map(|h| h.1.clone())
}

#[test]
fn basic_auth_form_urlencodes_id_and_secret_and_sends_nothing_in_the_body() {
    use base64::Engine as _;
    let (mock, seen) = provider(good_token);
    let creds = authorize(
        json!({"issuer": "https://idp.example/realm", "client-id": "my app",
               "client-secret": "s:e%c/r€t", "scope": "system/*.read  launch"}),
        &mock,
    )
    .unwrap();
    match &creds.headers[..] {
        [CredentialHeader::Secret(n, v)] => {
            assert_eq!(n, "Authorization");
            assert_eq!(v.expose_secret(), "Bearer tok-123");
        }
        other => panic!("{other:?}"),
    }
    assert!(creds.expires_at.is_some());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "discovery then token");
    let token_req = &seen[1];
    let basic = header_value(token_req, "authorization").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "my+app:s%3Ae%25c%2Fr%E2%82%ACt"
    );
    let body = String::from_utf8(token_req.body.clone()).unwrap();
    assert!(
        !body.contains("client_secret") && !body.contains("client_id"),
        "{body}"
    );
    assert!(body.contains("grant_type=client_credentials"));
    assert!(body.contains("scope=system%2F*.read+launch"), "{body}");
}

#[test]
fn post_auth_sends_the_secret_in_the_body_only_with_extra_params() {
    let (mock, seen) = provider(good_token);
    authorize(
        json!({"token-url": "https://idp.example/realm/token", "client-id": "app",
               "client-secret": "pw", "auth-method": "client_secret_post",
               "audience": "https://fhir.example", "resource": ["r1", "r2"],
               "extra-params": {"tenant": "t1"}}),
        &mock,
    )
    .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "no discovery with token-url");
    assert!(header_value(&seen[0], "authorization").is_none());
    let body = String::from_utf8(seen[0].body.clone()).unwrap();
    for part in [
        "client_id=app",
        "client_secret=pw",
        "audience=https%3A%2F%2Ffhir.example",
        "resource=r1",
        "resource=r2",
        "tenant=t1",
    ] {
        assert!(body.contains(part), "{part} missing from {body}");
    }
}

#[test]
fn discovery_is_cached_and_must_name_the_configured_issuer() {
    let (mock, seen) = provider(good_token);
    let settings =
        json!({"issuer": "https://idp.example/realm", "client-id": "a", "client-secret": "b"});
    let conn = mock.configure(&ClientCredentials, settings).unwrap();
    mock.authorize(conn.as_ref()).unwrap();
    mock.authorize(conn.as_ref()).unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "one discovery, two token requests"
    );

    let (mock, _) = provider(good_token);
    let e = authorize(
        json!({"issuer": "https://idp.example/realm/", "client-id": "a", "client-secret": "b"}),
        &mock,
    )
    .unwrap_err();
    assert!(
        e.message()
            .contains("names issuer 'https://idp.example/realm'"),
        "{e}"
    );
}

#[test]
fn server_errors_are_quoted_and_classified_without_the_secret() {
    let cases: Vec<(HttpResponse, ErrorKind, &str)> = vec![
        (
            json_response(
                401,
                json!({"error": "invalid_client", "error_description": "bad secret"}),
            ),
            ErrorKind::CredentialsRejected,
            "answered HTTP 401: invalid_client: bad secret",
        ),
        (
            json_response(400, json!({"error": "invalid_scope"})),
            ErrorKind::CredentialsRejected,
            "invalid_scope",
        ),
        (
            HttpResponse {
                status: 500,
                headers: vec![("content-type".into(), "text/html".into())],
                body: b"<html>oops</html>".to_vec(),
            },
            ErrorKind::Protocol,
            "answered HTTP 500",
        ),
        (
            json_response(200, json!({"token_type": "Bearer"})),
            ErrorKind::Protocol,
            "not a token response",
        ),
        (
            json_response(200, json!({"access_token": "x", "token_type": "mac"})),
            ErrorKind::Protocol,
            "token_type 'mac'",
        ),
    ];
    for (reply, kind, expected) in cases {
        let reply = Arc::new(reply);
        let (mock, _) = provider(move || (*reply).clone());
        let e = authorize(
            json!({"token-url": "https://idp.example/realm/token", "client-id": "a",
                   "client-secret": "canary-secret-42"}),
            &mock,
        )
        .unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.message().contains(expected), "{e}");
        assert!(!e.message().contains("canary-secret-42"));
    }
}

#[test]
fn lowercase_bearer_and_missing_expiry_are_accepted() {
    let (mock, _) =
        provider(|| json_response(200, json!({"access_token": "t", "token_type": "bearer"})));
    let creds = authorize(
        json!({"token-url": "https://idp.example/realm/token", "client-id": "a", "client-secret": "b"}),
        &mock,
    )
    .unwrap();
    assert!(creds.expires_at.is_none());
}

#[test]
fn bad_settings_are_config_errors() {
    let mock = MockHost::new();
    let cases = [
        (
            json!({"client-id": "a", "client-secret": "b"}),
            "set 'issuer'",
        ),
        (
            json!({"issuer": "https://i", "token-url": "https://t", "client-id": "a", "client-secret": "b"}),
            "not both",
        ),
        (
            json!({"token-url": "ftp://t", "client-id": "a", "client-secret": "b"}),
            "scheme 'ftp'",
        ),
        (
            json!({"token-url": "not a url", "client-id": "a", "client-secret": "b"}),
            "token-url: not a valid URL",
        ),
        (
            json!({"token-url": "https://t", "client-id": "a"}),
            "auth-method client_secret_basic: needs one of 'client-secret'",
        ),
        (
            json!({"token-url": "https://t", "client-id": "a", "client-secret": "b", "auth-method": "tls"}),
            "unknown variant",
        ),
        (
            json!({"token-url": "https://t", "client-id": "a", "client-secret": "b", "extra-params": {"grant_type": "x"}}),
            "extra-params: 'grant_type'",
        ),
        (
            json!({"token-url": "https://t", "client-id": "a", "client-secret": "b", "scopes": "x"}),
            "unknown setting 'scopes'",
        ),
    ];
    for (s, expected) in cases {
        let e = mock
            .configure(&ClientCredentials, s.clone())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{s}");
        assert!(e.message().contains(expected), "{s}: {e}");
    }
}

/// A fresh key for `alg`: PEM (PKCS#8) and the public key.
fn key_pair(alg: Algorithm) -> (String, DecodingKey) {
    let pair = match alg {
        Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        Algorithm::ES384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        _ => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
    }
    .unwrap();
    let public = pair.public_key_pem();
    let public = match alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(public.as_bytes()),
        _ => DecodingKey::from_rsa_pem(public.as_bytes()),
    };
    let pem = ::pem::encode(&::pem::Pem::new("PRIVATE KEY", pair.serialize_der()));
    (pem, public.unwrap())
}

fn form(req: &HttpRequest) -> std::collections::BTreeMap<String, String> {
    url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect()
}

/// Verifies an assertion's signature with `alg` and its RFC 7523 claims; returns them.
fn verify(jwt: &str, key: &DecodingKey, alg: Algorithm, aud: &str) -> Value {
    let mut v = Validation::new(alg);
    v.validate_exp = false; // the mock clock is not the wall clock
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let c = jsonwebtoken::decode::<Value>(jwt, key, &v).unwrap().claims;
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 240);
    assert_eq!(c["jti"].as_str().unwrap().len(), 32);
    c
}

const TOKEN_URL: &str = "https://idp.example/realm/token";

/// private_key_jwt with each algorithm: RS256 by default for an RSA key (every OpenID provider
/// has it), RS384 on request, ES256 and ES384 from the curve; `iss` = `sub` = client id, `aud`
/// = the token endpoint, `kid` in the header; no secret anywhere.
#[test]
fn private_key_jwt_signs_with_each_algorithm() {
    for (alg, setting) in [
        (Algorithm::RS256, None),
        (Algorithm::RS384, Some("RS384")),
        (Algorithm::ES256, None),
        (Algorithm::ES384, Some("ES384")),
    ] {
        let (pem, public) = key_pair(alg);
        let (mock, seen) = provider(good_token);
        let mock = mock.with_file("key.pem", pem.as_bytes());
        let mut settings = json!({"token-url": TOKEN_URL, "client-id": "app",
            "auth-method": "private_key_jwt", "private-key-file": "key.pem", "kid": "k1"});
        if let Some(a) = setting {
            settings["alg"] = json!(a);
        }
        authorize(settings, &mock).unwrap();
        let seen = seen.lock().unwrap();
        assert!(header_value(&seen[0], "authorization").is_none());
        let p = form(&seen[0]);
        assert_eq!(p["grant_type"], "client_credentials");
        assert_eq!(p["client_id"], "app");
        assert_eq!(p["client_assertion_type"], oauth::JWT_BEARER);
        assert!(!p.contains_key("client_secret"));
        let header = jsonwebtoken::decode_header(&p["client_assertion"]).unwrap();
        assert_eq!((header.alg, header.kid.as_deref()), (alg, Some("k1")));
        let c = verify(&p["client_assertion"], &public, alg, TOKEN_URL);
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str()),
            (Some("app"), Some("app"))
        );
    }
}

/// client_secret_jwt: an HS256 assertion keyed with the secret, which itself is never sent.
#[test]
fn client_secret_jwt_macs_the_assertion_with_the_secret() {
    let secret = "a-client-secret-that-is-32-bytes";
    let (mock, seen) = provider(good_token);
    authorize(
        json!({"issuer": "https://idp.example/realm", "client-id": "app",
               "auth-method": "client_secret_jwt", "client-secret": secret}),
        &mock,
    )
    .unwrap();
    let seen = seen.lock().unwrap();
    let body = String::from_utf8(seen[1].body.clone()).unwrap();
    assert!(!body.contains(secret) && header_value(&seen[1], "authorization").is_none());
    let p = form(&seen[1]);
    let jwt = &p["client_assertion"];
    assert_eq!(
        jsonwebtoken::decode_header(jwt).unwrap().alg,
        Algorithm::HS256
    );
    let key = DecodingKey::from_secret(secret.as_bytes());
    let c = verify(jwt, &key, Algorithm::HS256, TOKEN_URL);
    assert_eq!(c["iss"], "app");
    let logs = mock.logs.lock().unwrap();
    assert!(
        !logs.iter().any(|l| l.1.contains("shorter than 32")),
        "{logs:?}"
    );
}

/// The jwt-bearer grant (RFC 7523 §2.1): the assertion is the grant (`grant_type`,
/// `assertion`), not client authentication; HS256 over the client secret (Health Gorilla) or
/// signed with the private key; the subject and audience overrides reach the claims.
#[test]
fn the_jwt_bearer_grant_sends_the_assertion_as_the_grant() {
    let (pem, public) = key_pair(Algorithm::ES256);
    let secret = "short-secret";
    for signed_by_key in [false, true] {
        let (mock, seen) = provider(good_token);
        let mock = mock.with_file("key.pem", pem.as_bytes());
        let mut settings = json!({"token-url": TOKEN_URL, "client-id": "app",
            "grant": "jwt-bearer", "assertion-subject": "user-7", "scope": "user/*.read"});
        if signed_by_key {
            settings["private-key-file"] = json!("key.pem");
        } else {
            settings["client-secret"] = json!(secret);
            settings["assertion-audience"] = json!("https://idp.example/");
        }
        authorize(settings, &mock).unwrap();
        let seen = seen.lock().unwrap();
        let p = form(&seen[0]);
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(names, ["assertion", "client_id", "grant_type", "scope"]);
        assert_eq!(
            p["grant_type"],
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        );
        let c = if signed_by_key {
            verify(&p["assertion"], &public, Algorithm::ES256, TOKEN_URL)
        } else {
            let key = DecodingKey::from_secret(secret.as_bytes());
            verify(
                &p["assertion"],
                &key,
                Algorithm::HS256,
                "https://idp.example/",
            )
        };
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str()),
            (Some("app"), Some("user-7"))
        );
        let warned = mock
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.1.contains("shorter than 32"));
        assert_eq!(
            warned, !signed_by_key,
            "a short HS256 secret is warned about"
        );
    }
}

/// Medplum writes `token-url: oauth2/token`: resolved against base-url (RFC 3986).
#[test]
fn a_relative_token_url_resolves_against_base_url() {
    let (mock, seen) = provider(good_token);
    authorize(
        json!({"token-url": "oauth2/token", "client-id": "a", "client-secret": "b"}),
        &mock,
    )
    .unwrap();
    assert_eq!(seen.lock().unwrap()[0].url, "http://127.0.0.1/oauth2/token");
}

/// Every bad combination of method, grant, secret and key is a config error naming the setting.
#[test]
fn bad_method_grant_secret_and_key_combinations_name_the_setting() {
    let (pem, _) = key_pair(Algorithm::ES384);
    let mock = MockHost::new().with_file("k", pem.as_bytes());
    let t = |extra: Value| {
        let mut s = json!({"token-url": TOKEN_URL, "client-id": "a"});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    let cases = [
        (
            json!({"auth-method": "private_key_jwt"}),
            "auth-method private_key_jwt: needs one of 'private-key'",
        ),
        (
            json!({"auth-method": "private_key_jwt", "private-key-file": "k", "client-secret": "s"}),
            "client-secret: not used with auth-method private_key_jwt",
        ),
        (
            json!({"auth-method": "client_secret_jwt"}),
            "auth-method client_secret_jwt: needs one of 'client-secret'",
        ),
        (
            json!({"auth-method": "client_secret_post", "private-key-file": "k"}),
            "auth-method client_secret_post: needs one of 'client-secret'",
        ),
        (
            json!({"auth-method": "none", "client-secret": "s"}),
            "auth-method none: only with grant jwt-bearer",
        ),
        (
            json!({"grant": "jwt-bearer"}),
            "grant jwt-bearer: needs a private-key",
        ),
        (
            json!({"grant": "jwt-bearer", "auth-method": "private_key_jwt", "private-key-file": "k"}),
            "auth-method: with grant jwt-bearer use none",
        ),
        (
            json!({"client-secret": "s", "kid": "k1"}),
            "kid, alg: only apply with private-key",
        ),
        (
            json!({"auth-method": "private_key_jwt", "private-key-file": "k", "alg": "RS256"}),
            "alg: RS256 does not fit the key",
        ),
        (
            json!({"auth-method": "private_key_jwt", "private-key-file": "k", "alg": "HS256"}),
            "alg: 'HS256' is not one of",
        ),
        (
            json!({"client-secret": "s", "assertion-lifetime": 301}),
            "assertion-lifetime: 301 s",
        ),
        (
            json!({"client-secret": "s", "grant": "password"}),
            "unknown variant",
        ),
        (
            json!({"client-secret": "s", "extra-params": {"assertion": "x"}}),
            "extra-params: 'assertion'",
        ),
    ];
    for (extra, expected) in cases {
        let s = t(extra);
        let e = mock
            .configure(&ClientCredentials, s.clone())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{s}");
        assert!(e.message().contains(expected), "{s}: {e}");
    }
}
