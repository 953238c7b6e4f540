//! The testkit identity provider is as strict as the specifications: RFC 6749 client
//! authentication (exactly one method, form-urlencoded Basic credentials, no repeated
//! parameters) and RFC 7523 / SMART client assertions (kid, typ, alg, aud, exp ≤ 5 min, jti
//! replay, signature). Hand-made requests, no fhirconn code involved.

use base64::Engine as _;
use fhirconn_testkit::idp::{
    ClientAuth, IdentityProvider, IdpConfig, RegisteredClient, JWT_BEARER_ASSERTION,
};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Key {
    enc: EncodingKey,
    jwk: Jwk,
}

fn key(alg: &'static rcgen::SignatureAlgorithm, a: Algorithm, kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(alg).unwrap();
    let enc = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&enc, a).unwrap();
    jwk.common.key_id = Some(kid.into());
    Key { enc, jwk }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Setup {
    idp: IdentityProvider,
    key: Key,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let key = key(&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384, "k1");
    let idp = IdentityProvider::start(IdpConfig {
        clients: vec![
            RegisteredClient {
                client_id: "jwt-client".into(),
                auth: ClientAuth::PrivateKeyJwt(JwkSet {
                    keys: vec![key.jwk.clone()],
                }),
                scopes: vec!["system/*.rs".into()],
            },
            RegisteredClient {
                client_id: "a:b c".into(),
                auth: ClientAuth::SecretBasic("s:e%c+r t".into()),
                scopes: vec!["read".into()],
            },
            RegisteredClient {
                client_id: "post".into(),
                auth: ClientAuth::SecretPost("pw".into()),
                scopes: vec!["read".into()],
            },
        ],
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    Setup {
        idp,
        key,
        http: reqwest::Client::new(),
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl Setup {
    async fn post(&self, body: String, basic: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.idp.token_endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(b) = basic {
            req = req.header("authorization", format!("Basic {b}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn assertion(&self, header: Header, claims: Value) -> String {
        jsonwebtoken::encode(&header, &claims, &self.key.enc).unwrap()
    }

    fn claims(&self) -> Value {
        json!({"iss": "jwt-client", "sub": "jwt-client", "aud": self.idp.token_endpoint(),
               "exp": now() + 240, "iat": now(), "jti": format!("jti-{}", rand_suffix())})
    }

    async fn jwt(&self, header: Header, claims: Value) -> (u16, Value) {
        let a = self.assertion(header, claims);
        self.post(
            form(&[
                ("grant_type", "client_credentials"),
                ("scope", "system/*.rs"),
                ("client_assertion_type", JWT_BEARER_ASSERTION),
                ("client_assertion", &a),
            ]),
            None,
        )
        .await
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn smart_header() -> Header {
    let mut h = Header::new(Algorithm::ES384);
    h.kid = Some("k1".into());
    h.typ = Some("JWT".into());
    h
}

fn description(v: &Value) -> String {
    format!("{}: {}", v["error"], v["error_description"])
}

#[tokio::test]
async fn basic_credentials_are_form_urlencoded_and_one_method_only() {
    let s = setup().await;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
    let good = b64("a%3Ab+c:s%3Ae%25c%2Br+t");
    let (status, v) = s
        .post(form(&[("grant_type", "client_credentials")]), Some(&good))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_in"].is_u64());

    let (status, v) = s
        .post(
            form(&[("grant_type", "client_credentials"), ("client_secret", "x")]),
            Some(&good),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(description(&v).contains("more than one method"));

    let (status, v) = s
        .post(
            "grant_type=client_credentials&client_id=post&client_secret=pw&scope=a&scope=b".into(),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(description(&v).contains("'scope' is repeated"), "{v}");

    let (status, v) = s
        .post(
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "post"),
                ("client_secret", "no"),
            ]),
            None,
        )
        .await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));

    let (status, v) = s
        .post(
            form(&[
                ("grant_type", "password"),
                ("client_id", "post"),
                ("client_secret", "pw"),
            ]),
            None,
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
}

#[tokio::test]
async fn client_assertions_are_checked_as_smart_requires() {
    let s = setup().await;
    let (status, v) = s.jwt(smart_header(), s.claims()).await;
    assert_eq!(status, 200, "{v}");

    // Replay: the same jti twice.
    let claims = s.claims();
    assert_eq!(s.jwt(smart_header(), claims.clone()).await.0, 200);
    let (status, v) = s.jwt(smart_header(), claims).await;
    assert_eq!(status, 401);
    assert!(description(&v).contains("already used"), "{v}");

    let mut cases: Vec<(Header, Value, &str)> = Vec::new();
    let mut expired = s.claims();
    expired["exp"] = json!(now() - 60);
    cases.push((smart_header(), expired, "expired"));
    let mut far = s.claims();
    far["exp"] = json!(now() + 600);
    cases.push((smart_header(), far, "more than five minutes"));
    let mut aud = s.claims();
    aud["aud"] = json!("https://elsewhere.example/token");
    cases.push((smart_header(), aud, "'aud' is not the token endpoint"));
    let mut sub = s.claims();
    sub["sub"] = json!("someone-else");
    cases.push((smart_header(), sub, "'sub' is not the client_id"));
    let mut no_kid = smart_header();
    no_kid.kid = None;
    cases.push((no_kid, s.claims(), "no 'kid'"));
    let mut no_typ = smart_header();
    no_typ.typ = None;
    cases.push((no_typ, s.claims(), "'typ' must be JWT"));
    let mut other_kid = smart_header();
    other_kid.kid = Some("k2".into());
    cases.push((other_kid, s.claims(), "no key with kid 'k2'"));
    for (header, claims, expected) in cases {
        let (status, v) = s.jwt(header, claims).await;
        assert_eq!(status, 401, "{expected}: {v}");
        assert!(description(&v).contains(expected), "{expected}: {v}");
    }

    // Signed by another key under the registered kid.
    let impostor = key(&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384, "k1");
    let forged = jsonwebtoken::encode(&smart_header(), &s.claims(), &impostor.enc).unwrap();
    let (status, v) = s
        .post(
            form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER_ASSERTION),
                ("client_assertion", &forged),
            ]),
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert!(description(&v).contains("signature does not verify"), "{v}");

    // ES256 is not allowed by SMART.
    let p256 = key(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "k1");
    let mut h = smart_header();
    h.alg = Algorithm::ES256;
    let es256 = jsonwebtoken::encode(&h, &s.claims(), &p256.enc).unwrap();
    let (status, v) = s
        .post(
            form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER_ASSERTION),
                ("client_assertion", &es256),
            ]),
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert!(description(&v).contains("not allowed"), "{v}");

    // Scope outside the registration.
    let a = s.assertion(smart_header(), s.claims());
    let (status, v) = s
        .post(
            form(&[
                ("grant_type", "client_credentials"),
                ("scope", "system/*.cruds"),
                ("client_assertion_type", JWT_BEARER_ASSERTION),
                ("client_assertion", &a),
            ]),
            None,
        )
        .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn the_fhir_server_verifies_issuer_audience_and_expiry() {
    let s = setup().await;
    s.idp.set_token_lifetime(Duration::from_secs(1));
    let fhir = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Jwt(s.idp.verifier("fhirconn-testkit")),
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    let (_, v) = s.jwt(smart_header(), s.claims()).await;
    let token = v["access_token"].as_str().unwrap().to_string();
    let get = |t: String| {
        let http = s.http.clone();
        let url = format!("{}/Patient/1", fhir.base_url());
        async move {
            let r = http.get(url).bearer_auth(t).send().await.unwrap();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), challenge)
        }
    };
    assert_eq!(get(token.clone()).await.0, 200);
    let (status, challenge) = get(format!("{token}x")).await;
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("invalid_token"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, challenge) = get(token).await;
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("expired"));
}
