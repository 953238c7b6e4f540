//! Unit tests of `oauth::assertion`: the claims (defaults and overrides), both signers, the
//! client-auth and grant forms on the wire, the lifetime and `jku` settings, and relative
//! `token-url` resolution.

use super::*;
use crate::oauth::tests::json as json_response;
use crate::testing::MockHost;
use crate::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

fn rsa_key() -> (SigningKey, DecodingKey) {
    let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pair.serialize_der()));
    let key = keys::load_with_alg(pem.as_bytes(), None, Some(Algorithm::RS256)).unwrap();
    let public = DecodingKey::from_rsa_pem(pair.public_key_pem().as_bytes()).unwrap();
    (key, public)
}

fn decode(jwt: &str, key: &DecodingKey, alg: Algorithm) -> Value {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, key, &v).unwrap().claims
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

#[test]
fn client_assertions_default_to_rfc7523_claims_with_a_margin_under_five_minutes() {
    let (key, public) = rsa_key();
    let a = Assertion::for_client("app", Signer::key(key, Some("k1".into()), None));
    let mock = MockHost::new();
    let (jwt1, jwt2) = mock.with_host(|h| {
        let t = "https://idp/token";
        (a.sign(t, h).unwrap(), a.sign(t, h).unwrap())
    });
    let header = jsonwebtoken::decode_header(jwt1.expose_secret()).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::RS256, Some("k1"))
    );
    assert_eq!(header.jku, None);
    let c = decode(jwt1.expose_secret(), &public, Algorithm::RS256);
    let now = (mock.now_ms() / 1000) as u64;
    assert_eq!(
        (c["iss"].as_str(), c["sub"].as_str()),
        (Some("app"), Some("app"))
    );
    assert_eq!(c["aud"], "https://idp/token");
    assert_eq!(c["iat"], now);
    assert_eq!(c["exp"], now + 240, "four minutes: a margin under five");
    let c2 = decode(jwt2.expose_secret(), &public, Algorithm::RS256);
    assert_ne!(c["jti"], c2["jti"], "every assertion has a fresh jti");
    assert_eq!(c["jti"].as_str().unwrap().len(), 32);
}

#[test]
fn overrides_reach_the_claims_and_the_header() {
    let (key, public) = rsa_key();
    let a = Assertion {
        issuer: "iss-x".into(),
        subject: "user-7".into(),
        audience: Some("https://idp/".into()),
        lifetime: Duration::from_secs(60),
        signer: Signer::key(key, None, Some("https://app/jwks".into())),
    };
    let jwt = MockHost::new().with_host(|h| a.sign("https://idp/token", h).unwrap());
    let header = jsonwebtoken::decode_header(jwt.expose_secret()).unwrap();
    assert_eq!(header.kid, None);
    assert_eq!(header.jku.as_deref(), Some("https://app/jwks"));
    let c = decode(jwt.expose_secret(), &public, Algorithm::RS256);
    assert_eq!(
        (c["iss"].as_str(), c["sub"].as_str()),
        (Some("iss-x"), Some("user-7"))
    );
    assert_eq!(c["aud"], "https://idp/");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    assert!(!format!("{a:?}").contains("BEGIN"));
}

/// client_secret_jwt: HS256 over the secret, sent as client_assertion; the jwt-bearer grant:
/// grant_type and assertion, no client_assertion.
#[test]
fn secret_assertions_and_the_jwt_bearer_grant_on_the_wire() {
    let secret = "a-client-secret-of-32-bytes-long";
    let a = Assertion::for_client("app", Signer::Secret(secret.to_string().into()));
    assert!(!format!("{a:?}").contains(secret));
    let mock = MockHost::new().with_http(|_| {
        Ok(json_response(
            200,
            r#"{"access_token":"t","token_type":"Bearer"}"#,
        ))
    });
    mock.with_host(|h| {
        let t = "https://idp/token";
        let auth = a.client_auth(t, h).unwrap();
        assert!(matches!(auth, ClientAuth::ClientSecretJwt(_)));
        TokenRequest::new(t)
            .grant("client_credentials")
            .client_id("app")
            .client_auth(auth)
            .send(h)
            .unwrap();
        a.grant(TokenRequest::new(t).client_id("app"), h)
            .unwrap()
            .scope("s")
            .send(h)
            .unwrap();
    });
    let reqs = mock.requests.lock().unwrap();
    let hmac = DecodingKey::from_secret(secret.as_bytes());
    let p = form(&reqs[0].body);
    assert_eq!(p[2].0, "client_assertion_type");
    assert_eq!(p[2].1, crate::oauth::JWT_BEARER);
    let c = decode(&p[3].1, &hmac, Algorithm::HS256);
    assert_eq!(c["aud"], "https://idp/token");
    let p = form(&reqs[1].body);
    let names: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["grant_type", "assertion", "scope", "client_id"]);
    assert_eq!(p[0].1, JWT_BEARER_GRANT);
    assert_eq!(decode(&p[1].1, &hmac, Algorithm::HS256)["sub"], "app");
}

#[test]
fn lifetime_and_jku_settings_are_checked() {
    let mock = MockHost::new();
    mock.with_host(|h| {
        assert_eq!(lifetime(None, h).unwrap(), Duration::from_secs(240));
        assert_eq!(lifetime(Some(30), h).unwrap(), Duration::from_secs(30));
        for bad in [0, 301] {
            let e = lifetime(Some(bad), h).unwrap_err();
            assert!(e.message().starts_with("assertion-lifetime: "), "{e}");
        }
        assert!(lifetime(Some(300), h).is_ok());
    });
    assert_eq!(mock.logs.lock().unwrap().len(), 1, "300 s is warned about");
    assert_eq!(jku(None).unwrap(), None);
    assert!(jku(Some("https://app.example/jwks".into()))
        .unwrap()
        .is_some());
    for bad in [
        "http://app.example/jwks",
        "http://127.0.0.1/jwks",
        "nope",
        "file:///jwks",
    ] {
        let e = jku(Some(bad.into())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().starts_with("jku: "), "{e}");
    }
}

/// RFC 3986 §5: `oauth2/token` replaces the last segment of base-url, `/oauth2/token` the
/// path; absolute URLs stay; the result is checked like any endpoint.
#[test]
fn relative_token_urls_resolve_against_base_url() {
    let mock = MockHost::new();
    mock.with_host(|h| {
        let base = "https://api.example.com/fhir/R4";
        for (v, expected) in [
            ("oauth2/token", "https://api.example.com/fhir/oauth2/token"),
            ("/oauth2/token", "https://api.example.com/oauth2/token"),
            ("../auth/token", "https://api.example.com/auth/token"),
            ("https://idp.example/t", "https://idp.example/t"),
        ] {
            assert_eq!(token_url_of(v, base, h), expected);
        }
        assert_eq!(
            token_url_of("oauth2/token", "https://api.example.com/fhir/R4/", h),
            "https://api.example.com/fhir/R4/oauth2/token",
        );
        let e = crate::oauth::token_url("ftp://x/t", base, h).unwrap_err();
        assert!(
            e.message().starts_with("token-url: must be an http(s) URL"),
            "{e}"
        );
        let e = crate::oauth::token_url("oauth2/token", "not a url", h).unwrap_err();
        assert!(e.message().starts_with("base-url: "), "{e}");
        crate::oauth::token_url("oauth2/token", "http://fhir.example/r4", h).unwrap();
    });
    let logs = mock.logs.lock().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.1.starts_with("token-url uses plain http")),
        "{logs:?}"
    );
}

fn token_url_of(v: &str, base: &str, h: &Host<'_>) -> String {
    crate::oauth::token_url(v, base, h).unwrap()
}
