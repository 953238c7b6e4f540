//! Unit tests of the `smart-backend` scheme against a mocked host: key errors named by setting,
//! the client assertion's header and claims, discovery checks and token response validation
//! (the key formats themselves are tested in `fhirconn_sdk::keys`).

use super::*;
use fhirconn_sdk::serde_json::json;
use fhirconn_sdk::testing::MockHost;
use fhirconn_sdk::{CredentialHeader, ErrorKind, ExposeSecret, HttpRequest, HttpResponse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::sync::{Arc, Mutex as StdMutex};

fn info() -> ConnectionInfo {
    ConnectionInfo {
        id: "c".into(),
        base_url: "https://fhir.example/r4".into(),
    }
}

/// A freshly generated key: PKCS#8 DER and the public key for verifying signatures.
fn generate(alg: Algorithm) -> (Vec<u8>, DecodingKey) {
    let pair = match alg {
        Algorithm::ES384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        _ => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .unwrap(),
    };
    let public = pair.public_key_pem();
    let public = match alg {
        Algorithm::ES384 => DecodingKey::from_ec_pem(public.as_bytes()),
        _ => DecodingKey::from_rsa_pem(public.as_bytes()),
    };
    (pair.serialize_der(), public.unwrap())
}

fn key_of(der: &[u8]) -> keys::SigningKey {
    keys::load(pem("PRIVATE KEY", der).as_bytes(), None).unwrap()
}

fn pem(label: &str, der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new(label, der.to_vec()))
}

type Seen = Arc<StdMutex<Vec<HttpRequest>>>;

fn json_response(status: u16, body: Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn server(
    smart: Option<Value>,
    token: impl Fn() -> HttpResponse + Send + Sync + 'static,
) -> (MockHost, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let mock = MockHost::new().with_http(move |req| {
        log.lock().unwrap().push(req.clone());
        Ok(match req.url.as_str() {
            "https://fhir.example/r4/.well-known/smart-configuration" => match &smart {
                Some(doc) => json_response(200, doc.clone()),
                None => json_response(404, json!({})),
            },
            "https://auth.example/token"
            | "https://fhir.example/r4/auth/token"
            | "https://fhir.example/oauth2/token" => token(),
            _ => json_response(404, json!({})),
        })
    });
    (mock, seen)
}

fn ok_token() -> HttpResponse {
    json_response(
        200,
        json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 300, "scope": "system/*.rs"}),
    )
}

fn smart_doc(token_endpoint: &str) -> Value {
    json!({
        "token_endpoint": token_endpoint,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
    })
}

fn run(settings: Value, mock: &MockHost) -> Result<Credentials> {
    mock.with_host(|host| {
        let conn = SmartBackend.configure(&info(), settings, host)?;
        conn.authorize(
            &AuthRequest {
                connection: info(),
                interactive: false,
                force_login: false,
            },
            host,
        )
    })
}

fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

#[test]
fn both_algorithms_sign_assertions_with_the_smart_header_and_claims() {
    for alg in [Algorithm::ES384, Algorithm::RS384] {
        let (der, public) = generate(alg);
        let (mock, seen) = server(Some(smart_doc("auth/token")), ok_token);
        let mock = mock.with_file("key.pem", pem("PRIVATE KEY", &der).as_bytes());
        let creds = run(
            json!({"client-id": "bulk-client", "private-key-file": "key.pem", "kid": "k1",
                   "jku": "https://client.example/jwks", "scope": "system/*.rs"}),
            &mock,
        )
        .unwrap();
        match &creds.headers[..] {
            [CredentialHeader::Secret(_, v)] => assert_eq!(v.expose_secret(), "Bearer at-1"),
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let params = form(&seen[1].body);
        assert_eq!(params["grant_type"], "client_credentials");
        assert_eq!(params["client_assertion_type"], JWT_BEARER);
        assert_eq!(params["scope"], "system/*.rs");
        assert!(!params.contains_key("client_id"));
        let jwt = &params["client_assertion"];
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        assert_eq!(header.alg, alg);
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.jku.as_deref(), Some("https://client.example/jwks"));
        let mut v = Validation::new(alg);
        // the relative token_endpoint is resolved against the base URL
        v.set_audience(&["https://fhir.example/r4/auth/token"]);
        v.set_issuer(&["bulk-client"]);
        v.validate_exp = false; // the mock clock is not the wall clock
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<Value>(jwt, &public, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "bulk-client");
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["exp"].as_u64().unwrap() - iat, 240);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    }
}

#[test]
fn every_assertion_has_a_fresh_jti_and_lifetime_is_configurable() {
    let (der, _) = generate(Algorithm::ES384);
    let mock = MockHost::new().with_file("k.pem", pem("PRIVATE KEY", &der).as_bytes());
    let conn = SmartConnection {
        assertion: Assertion {
            lifetime: std::time::Duration::from_secs(60),
            ..Assertion::for_client("c", Signer::key(key_of(&der), Some("k".into()), None))
        },
        scope: "system/*.read".into(),
        base_url: "https://fhir.example/r4".into(),
        pinned: false,
        token_endpoint: Memo::new(),
    };
    let jtis: std::collections::HashSet<String> = (0..20)
        .map(|_| {
            let jwt = mock
                .with_host(|h| conn.assertion("https://auth.example/token", h))
                .unwrap();
            let c = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt.expose_secret())
                .unwrap()
                .claims;
            assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
            c["jti"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(jtis.len(), 20);
}

#[test]
fn wrong_or_unreadable_keys_are_config_errors_naming_the_field() {
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_pub = json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"});
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            pem("PRIVATE KEY", &p256.serialize_der()).into_bytes(),
            "the key is an EC P-256 key (ES256); allowed here: RS384, ES384",
        ),
        (
            pem("PRIVATE KEY", &ed.serialize_der()).into_bytes(),
            "neither RSA nor EC",
        ),
        (
            pem(
                "PUBLIC KEY",
                &rcgen::PublicKeyData::subject_public_key_info(&p256),
            )
            .into_bytes(),
            "public key, not a private key",
        ),
        (
            pem("ENCRYPTED PRIVATE KEY", b"xx").into_bytes(),
            "encrypted",
        ),
        (b"hello".to_vec(), "not a PEM file or JWK"),
        (ec_pub.to_string().into_bytes(), "public key (no 'd')"),
        (
            json!({"kty": "EC", "crv": "P-256", "d": "AA", "x": "AA", "y": "AA"})
                .to_string()
                .into_bytes(),
            "not a valid P-256 or P-384 key",
        ),
        (
            json!({"keys": []}).to_string().into_bytes(),
            "no private key",
        ),
        (vec![0xff, 0xfe], "not UTF-8"),
    ];
    for (bytes, expected) in cases {
        let mock = MockHost::new().with_file("k", &bytes);
        let e = mock
            .with_host(|h| {
                SmartBackend
                    .configure(
                        &info(),
                        json!({"client-id": "c", "private-key-file": "k", "kid": "x", "scope": "system/*.rs"}),
                        h,
                    )
                    .map(|_| ())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().starts_with("private-key-file: "), "{e}");
        assert!(e.message().contains(expected), "{expected}: {e}");
    }
    let e = MockHost::new()
        .with_host(|h| {
            SmartBackend
                .configure(
                    &info(),
                    json!({"client-id": "c", "private-key-file": "missing.pem", "kid": "x", "scope": "s"}),
                    h,
                )
                .map(|_| ())
        })
        .unwrap_err();
    assert!(e.message().contains("missing.pem"), "{e}");
}

#[test]
fn settings_are_checked() {
    let (ec, _) = generate(Algorithm::ES384);
    let mock = MockHost::new().with_file("k", pem("PRIVATE KEY", &ec).as_bytes());
    let cases = [
        (
            json!({"client-id": "c", "private-key-file": "k", "scope": "system/*.rs"}),
            "kid: required",
        ),
        (
            json!({"client-id": "c", "private-key-file": "k", "kid": "a", "scope": "system/*.rs", "alg": "RS384"}),
            "alg: RS384 does not fit the key, which is an EC P-384 key (ES384)",
        ),
        (
            json!({"client-id": "c", "private-key-file": "k", "kid": "a", "scope": "system/*.rs", "assertion-lifetime": 301}),
            "assertion-lifetime",
        ),
        (
            json!({"client-id": "c", "private-key-file": "k", "kid": "a"}),
            "'scope' is required",
        ),
        (
            json!({"client-id": "c", "private-key-file": "k", "kid": "a", "scope": "  "}),
            "scope: must name",
        ),
    ];
    for (s, expected) in cases {
        let e = mock
            .with_host(|h| SmartBackend.configure(&info(), s.clone(), h).map(|_| ()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{s}");
        assert!(e.message().contains(expected), "{s}: {e}");
    }
}

#[test]
fn discovery_problems_and_bad_token_responses_are_clear() {
    let (ec, _) = generate(Algorithm::ES384);
    let key = pem("PRIVATE KEY", &ec);
    let settings =
        json!({"client-id": "c", "private-key-file": "k", "kid": "a", "scope": "system/*.rs"});
    let mut no_jwt = smart_doc("https://auth.example/token");
    no_jwt["token_endpoint_auth_methods_supported"] = json!(["client_secret_basic"]);
    let mut rs_only = smart_doc("https://auth.example/token");
    rs_only["token_endpoint_auth_signing_alg_values_supported"] = json!(["RS384"]);
    type Reply = fn() -> HttpResponse;
    let cases: Vec<(Option<Value>, Reply, ErrorKind, &str)> = vec![
        (
            None,
            ok_token,
            ErrorKind::Protocol,
            "smart-configuration: HTTP 404",
        ),
        (
            Some(no_jwt),
            ok_token,
            ErrorKind::Protocol,
            "does not include private_key_jwt",
        ),
        (
            Some(rs_only),
            ok_token,
            ErrorKind::Protocol,
            "does not include ES384",
        ),
        (
            Some(smart_doc("https://auth.example/token")),
            || {
                json_response(
                    400,
                    json!({"error": "invalid_scope", "error_description": "no"}),
                )
            },
            ErrorKind::CredentialsRejected,
            "HTTP 400: invalid_scope: no",
        ),
        (
            Some(smart_doc("https://auth.example/token")),
            || json_response(200, json!({"access_token": "x", "token_type": "mac"})),
            ErrorKind::Protocol,
            "token_type 'mac'",
        ),
        (
            Some(smart_doc("https://auth.example/token")),
            || {
                json_response(
                    200,
                    json!({"access_token": "x", "token_type": "Bearer", "expires_in": "300"}),
                )
            },
            ErrorKind::Protocol,
            "non-numeric expires_in",
        ),
        (
            Some(smart_doc("https://auth.example/token")),
            || HttpResponse {
                status: 502,
                headers: vec![("content-type".into(), "text/html".into())],
                body: b"<html/>".to_vec(),
            },
            ErrorKind::Protocol,
            "HTTP 502 without an OAuth error (text/html)",
        ),
    ];
    for (doc, reply, kind, expected) in cases {
        let (mock, _) = server(doc, reply);
        let mock = mock.with_file("k", key.as_bytes());
        let e = run(settings.clone(), &mock).unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.message().contains(expected), "{expected}: {e}");
    }
}

/// `assertion-lifetime` is applied by `configure`: the assertion that reaches the token
/// endpoint (through the configured connection, not one built by hand) has `exp - iat` equal
/// to the configured lifetime, and 240 s when it is not set: a margin under SMART's maximum of
/// 300 s, which Epic refuses when its clock runs a second ahead.
#[test]
fn the_configured_assertion_lifetime_reaches_the_token_request() {
    let (der, _) = generate(Algorithm::ES384);
    for (lifetime, expected) in [(Some(60), 60), (Some(1), 1), (Some(300), 300), (None, 240)] {
        let (mock, seen) = server(None, ok_token);
        let mock = mock.with_file("k.pem", pem("PRIVATE KEY", &der).as_bytes());
        let mut settings = json!({"client-id": "c", "private-key-file": "k.pem", "kid": "k",
                                  "scope": "system/*.rs",
                                  "token-url": "https://auth.example/token"});
        if let Some(l) = lifetime {
            settings["assertion-lifetime"] = json!(l);
        }
        run(settings, &mock).unwrap();
        let seen = seen.lock().unwrap();
        let token_requests: Vec<_> = seen
            .iter()
            .filter(|r| r.url == "https://auth.example/token")
            .collect();
        assert_eq!(token_requests.len(), 1, "{lifetime:?}");
        let jwt = &form(&token_requests[0].body)["client_assertion"];
        let c = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt)
            .unwrap()
            .claims;
        let iat = c["iat"].as_u64().unwrap();
        assert_eq!(
            c["exp"].as_u64().unwrap() - iat,
            expected,
            "assertion-lifetime {lifetime:?}"
        );
    }
}

/// `issuer`, `subject` and `audience` override the assertion's claims (defaults: client-id,
/// client-id, the token URL); a relative `token-url` resolves against base-url (RFC 3986).
#[test]
fn claim_overrides_and_a_relative_token_url_reach_the_token_request() {
    let (der, public) = generate(Algorithm::RS384);
    let (mock, seen) = server(None, ok_token);
    let mock = mock.with_file("k.pem", pem("PRIVATE KEY", &der).as_bytes());
    let base = json!({"client-id": "c", "private-key-file": "k.pem", "kid": "k",
                      "scope": "system/*.rs", "token-url": "/oauth2/token"});
    let mut overridden = base.clone();
    overridden["issuer"] = json!("iss-1");
    overridden["subject"] = json!("sub-1");
    overridden["audience"] = json!("https://fhir.example/");
    overridden["token-url"] = json!("../oauth2/token");
    for (settings, iss, sub, aud) in [
        (base, "c", "c", "https://fhir.example/oauth2/token"),
        (overridden, "iss-1", "sub-1", "https://fhir.example/"),
    ] {
        seen.lock().unwrap().clear();
        run(settings, &mock).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "no discovery with a token-url");
        assert_eq!(seen[0].url, "https://fhir.example/oauth2/token");
        let jwt = &form(&seen[0].body)["client_assertion"];
        let mut v = Validation::new(Algorithm::RS384);
        v.validate_exp = false;
        v.set_audience(&[aud]);
        let c = jsonwebtoken::decode::<Value>(jwt, &public, &v)
            .unwrap()
            .claims;
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str()),
            (Some(iss), Some(sub))
        );
    }
}

/// `jku` must be https: the server fetches the client's keys from it.
#[test]
fn jku_must_be_https() {
    let (der, _) = generate(Algorithm::ES384);
    let mock = MockHost::new().with_file("k", pem("PRIVATE KEY", &der).as_bytes());
    for jku in ["http://client.example/jwks", "ftp://client.example/jwks"] {
        let e = mock
            .with_host(|h| {
                let s = json!({"client-id": "c", "private-key-file": "k", "kid": "k",
                               "scope": "system/*.rs", "jku": jku});
                SmartBackend.configure(&info(), s, h).map(|_| ())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().starts_with("jku: must be an https URL"), "{e}");
    }
}
