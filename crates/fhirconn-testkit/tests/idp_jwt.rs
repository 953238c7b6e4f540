//! The testkit identity provider verifies JWT client authentication and the jwt-bearer grant
//! as strictly as RFC 7523 and OpenID Connect Core §9 say: `client_secret_jwt` (HS256 with the
//! registered secret), `private_key_jwt` with RS256, RS384, ES256 and ES384 against the
//! client's registered JWKS, and the RFC 7523 §2.1 grant (`aud` = the token endpoint, `exp`
//! required and at most five minutes ahead, `jti` never reused, the right key and algorithm).
//! Hand-made requests, no fhirconn code involved.

use fhirconn_testkit::idp::{
    ClientAuth, GrantKey, IdentityProvider, IdpConfig, RegisteredClient, JWT_BEARER_ASSERTION,
    JWT_BEARER_GRANT,
};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("jti-{}-{}", now(), N.fetch_add(1, Ordering::SeqCst))
}

/// A key pair for `alg`: the signing key and the public JWK.
fn key(alg: Algorithm) -> (EncodingKey, Jwk) {
    let (pair, enc): (_, fn(&[u8]) -> EncodingKey) = match alg {
        Algorithm::ES256 => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            EncodingKey::from_ec_der,
        ),
        Algorithm::ES384 => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            EncodingKey::from_ec_der,
        ),
        _ => (
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap(),
            |der: &[u8]| {
                let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
                EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
            },
        ),
    };
    let enc = enc(&pair.serialize_der());
    let jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    (enc, jwk)
}

struct Setup {
    idp: IdentityProvider,
    http: reqwest::Client,
}

impl Setup {
    async fn post(&self, pairs: &[(&str, &str)]) -> (u16, Value) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let resp = self
            .http
            .post(self.idp.token_endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Client credentials with a client assertion.
    async fn client_assertion(&self, jwt: &str) -> (u16, Value) {
        self.post(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER_ASSERTION),
            ("client_assertion", jwt),
        ])
        .await
    }

    /// The jwt-bearer grant.
    async fn grant(&self, jwt: &str, client_id: Option<&str>) -> (u16, Value) {
        let mut pairs = vec![("grant_type", JWT_BEARER_GRANT), ("assertion", jwt)];
        pairs.extend(client_id.map(|c| ("client_id", c)));
        self.post(&pairs).await
    }

    fn claims(&self, iss: &str, sub: &str) -> Value {
        json!({"iss": iss, "sub": sub, "aud": self.idp.token_endpoint(),
               "iat": now(), "exp": now() + 240, "jti": jti()})
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn hs256(claims: &Value, secret: &str) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

fn client(id: &str, auth: ClientAuth) -> RegisteredClient {
    RegisteredClient {
        client_id: id.into(),
        auth,
        scopes: vec!["system/*.rs".into(), "user/*.rs".into()],
    }
}

async fn setup(clients: Vec<RegisteredClient>) -> Setup {
    let idp = IdentityProvider::start(IdpConfig {
        clients,
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    Setup {
        idp,
        http: reqwest::Client::new(),
    }
}

fn said(v: &Value) -> String {
    format!("{}: {}", v["error"], v["error_description"])
}

/// The access token's claims (the provider's own token; not verified here).
fn token_claims(v: &Value) -> Value {
    let t = v["access_token"].as_str().unwrap();
    jsonwebtoken::dangerous::insecure_decode::<Value>(t)
        .unwrap()
        .claims
}

#[tokio::test]
async fn client_secret_jwt_is_hs256_with_the_registered_secret() {
    let s = setup(vec![client(
        "c",
        ClientAuth::ClientSecretJwt(SECRET.into()),
    )])
    .await;
    let good = s.claims("c", "c");
    let (status, v) = s.client_assertion(&hs256(&good, SECRET)).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s.client_assertion(&hs256(&good, SECRET)).await;
    assert_eq!(status, 401);
    assert!(said(&v).contains("already used"), "{v}");

    let mut cases: Vec<(String, &str)> = vec![(
        hs256(&s.claims("c", "c"), "another-secret-of-32-bytes-length"),
        "signature does not verify",
    )];
    let (rs, _) = key(Algorithm::ES256);
    cases.push((
        sign(Algorithm::ES256, None, &s.claims("c", "c"), &rs),
        "not allowed",
    ));
    let mut no_jti = s.claims("c", "c");
    no_jti.as_object_mut().unwrap().remove("jti");
    cases.push((hs256(&no_jti, SECRET), "no 'jti'"));
    let mut no_exp = s.claims("c", "c");
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push((hs256(&no_exp, SECRET), "no 'exp'"));
    let mut issuer = s.claims("c", "c");
    issuer["aud"] = json!(s.idp.issuer());
    cases.push((hs256(&issuer, SECRET), "'aud' is not the token endpoint"));
    let mut far = s.claims("c", "c");
    far["exp"] = json!(now() + 301 + 10);
    cases.push((hs256(&far, SECRET), "more than five minutes"));
    let mut early = s.claims("c", "c");
    early["nbf"] = json!(now() + 120);
    cases.push((hs256(&early, SECRET), "not valid yet"));
    cases.push((hs256(&s.claims("c", "other"), SECRET), "'sub' is not"));
    cases.push((hs256(&s.claims("x", "x"), SECRET), "unknown client"));
    for (jwt, expected) in cases {
        let (status, v) = s.client_assertion(&jwt).await;
        assert_eq!(status, 401, "{expected}: {v}");
        assert!(said(&v).contains(expected), "{expected}: {v}");
    }
    // The client's secret sent as client_secret_post is the wrong method.
    let (status, v) = s
        .post(&[
            ("grant_type", "client_credentials"),
            ("client_id", "c"),
            ("client_secret", SECRET),
        ])
        .await;
    assert_eq!(status, 401);
    assert!(said(&v).contains("registered for client_secret_jwt"), "{v}");
}

/// private_key_jwt (OpenID Connect Core §9): each of RS256, RS384, ES256, ES384 with the
/// client's registered key, `kid` optional; another key, an HMAC "signed" with the public key,
/// or the wrong curve for the algorithm are refused.
#[tokio::test]
async fn private_key_jwt_accepts_each_algorithm_with_the_registered_key_only() {
    let (rsa, rsa_jwk) = key(Algorithm::RS256);
    let (p256, mut p256_jwk) = key(Algorithm::ES256);
    let (p384, p384_jwk) = key(Algorithm::ES384);
    p256_jwk.common.key_id = Some("ec-256".into());
    let keys = JwkSet {
        keys: vec![rsa_jwk, p256_jwk, p384_jwk],
    };
    let s = setup(vec![client("pk", ClientAuth::PrivateKeyJwtAnyAlg(keys))]).await;
    for (alg, key, kid) in [
        (Algorithm::RS256, &rsa, None),
        (Algorithm::RS384, &rsa, None),
        (Algorithm::ES256, &p256, Some("ec-256")),
        (Algorithm::ES256, &p256, None),
        (Algorithm::ES384, &p384, None),
    ] {
        let (status, v) = s
            .client_assertion(&sign(alg, kid, &s.claims("pk", "pk"), key))
            .await;
        assert_eq!(status, 200, "{alg:?} {kid:?}: {v}");
    }
    let (stranger, _) = key(Algorithm::ES256);
    for (kid, key, why) in [
        (None, &stranger, "signature does not verify"),
        (Some("nope"), &p256, "no key with kid 'nope'"),
    ] {
        let es256 = sign(Algorithm::ES256, kid, &s.claims("pk", "pk"), key);
        let (status, v) = s.client_assertion(&es256).await;
        assert_eq!(status, 401, "{kid:?}: {v}");
        assert!(said(&v).contains(why), "{v}");
    }
    // Algorithm confusion: HS256 keyed with something public is not an allowed algorithm.
    let (status, v) = s
        .client_assertion(&hs256(&s.claims("pk", "pk"), "public-key-bytes"))
        .await;
    assert_eq!(status, 401);
    assert!(said(&v).contains("not allowed"), "{v}");
    // alg "none" is no JWS this provider accepts.
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&s.claims("pk", "pk"))
    );
    let (_, v) = s.client_assertion(&unsigned).await;
    assert_eq!(v["error"], "invalid_client", "{v}");
}

/// RFC 7523 §2.1: the assertion is the grant; its `sub` becomes the token's subject. `aud`,
/// `exp`, `jti` replay, the signing key, the client's registration and a second client
/// authentication are all checked.
#[tokio::test]
async fn the_jwt_bearer_grant_is_checked_by_rfc7523() {
    let (p256, p256_jwk) = key(Algorithm::ES256);
    let s = setup(vec![
        client(
            "hg",
            ClientAuth::JwtBearerGrant(GrantKey::Secret(SECRET.into())),
        ),
        client(
            "svc",
            ClientAuth::JwtBearerGrant(GrantKey::Keys(JwkSet {
                keys: vec![p256_jwk],
            })),
        ),
        client("basic", ClientAuth::SecretBasic("pw".into())),
    ])
    .await;
    let good = s.claims("hg", "user-7");
    let (status, v) = s.grant(&hs256(&good, SECRET), Some("hg")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(token_claims(&v)["sub"], "user-7");
    assert_eq!(token_claims(&v)["client_id"], "hg");
    let (status, v) = s.grant(&hs256(&good, SECRET), None).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert!(said(&v).contains("already used"), "{v}");
    let signed = sign(Algorithm::ES256, None, &s.claims("svc", "svc"), &p256);
    let (status, v) = s.grant(&signed, None).await;
    assert_eq!(status, 200, "{v}");

    let mut cases: Vec<(String, Option<&str>, &str)> = Vec::new();
    let mut aud = s.claims("hg", "user-7");
    aud["aud"] = json!(s.idp.issuer());
    cases.push((hs256(&aud, SECRET), None, "'aud' is not the token endpoint"));
    let mut no_exp = s.claims("hg", "user-7");
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push((hs256(&no_exp, SECRET), None, "no 'exp'"));
    let mut far = s.claims("hg", "user-7");
    far["exp"] = json!(now() + 3600);
    cases.push((hs256(&far, SECRET), None, "more than five minutes"));
    let mut old = s.claims("hg", "user-7");
    old["exp"] = json!(now() - 60);
    cases.push((hs256(&old, SECRET), None, "expired"));
    cases.push((hs256(&s.claims("hg", ""), SECRET), None, "'sub' is empty"));
    cases.push((
        hs256(&s.claims("hg", "u"), "wrong-secret-wrong-secret-wrong-s"),
        None,
        "signature does not verify",
    ));
    cases.push((
        hs256(&s.claims("hg", "u"), SECRET),
        Some("svc"),
        "client_id differs",
    ));
    let (other, _) = key(Algorithm::ES256);
    let forged = sign(Algorithm::ES256, None, &s.claims("svc", "svc"), &other);
    cases.push((forged, None, "signature does not verify"));
    for (jwt, id, expected) in cases {
        let (status, v) = s.grant(&jwt, id).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{expected}: {v}"
        );
        assert!(said(&v).contains(expected), "{expected}: {v}");
    }
    // A client registered for another method may not use the grant.
    let (status, v) = s.grant(&hs256(&s.claims("basic", "u"), "pw"), None).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{v}"
    );
    // The assertion is the only client authentication.
    let jwt = hs256(&s.claims("hg", "u"), SECRET);
    let (status, v) = s
        .post(&[
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", &jwt),
            ("client_id", "hg"),
            ("client_secret", SECRET),
        ])
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    let (status, v) = s.post(&[("grant_type", JWT_BEARER_GRANT)]).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
}
