//! Token schemes end to end: the `oidc-client-credentials` and `smart-backend` plugins (built
//! cdylibs) against the testkit identity provider and a FHIR server verifying its JWTs, through
//! the host library (cache, renewal, single flight, 401 retry) and the CLI.

use fhirconn_host::keygen::{self, KeyAlg};
use fhirconn_host::Host;
use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, IdpFault, RegisteredClient};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{failure, fhirconn_command, run_command, Out};
use jsonwebtoken::jwk::JwkSet;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const AUDIENCE: &str = "https://fhir.testkit/r4";
const BASIC_SECRET: &str = "CANARY-basic:secret%with/odd€chars";
const POST_SECRET: &str = "CANARY-post-secret-77";

struct Env {
    idp: IdentityProvider,
    fhir: FhirServer,
    dir: tempfile::TempDir,
    es_kid: String,
    rs_kid: String,
}

fn jwks(key: &keygen::GeneratedKey) -> JwkSet {
    key.jwks.clone()
}

/// An identity provider with four clients, a FHIR server trusting it, and keys on disk.
async fn env(lifetime: Duration) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let es = keygen::generate(KeyAlg::Es384, None).unwrap();
    let rs = keygen::generate(KeyAlg::Rs384, Some("rsa-key-1")).unwrap();
    let es_dir = dir.path().join("es");
    let rs_dir = dir.path().join("rs");
    keygen::write(&es_dir, &es, false).unwrap();
    keygen::write(&rs_dir, &rs, false).unwrap();
    std::fs::write(
        dir.path().join("post-secret.txt"),
        format!("{POST_SECRET}\n"),
    )
    .unwrap();
    let scopes = vec!["system/*.rs".to_string(), "system/*.read".to_string()];
    let idp = IdentityProvider::start(IdpConfig {
        audience: AUDIENCE.into(),
        token_lifetime: lifetime,
        clients: vec![
            RegisteredClient {
                client_id: "basic client".into(),
                auth: ClientAuth::SecretBasic(BASIC_SECRET.into()),
                scopes: scopes.clone(),
            },
            RegisteredClient {
                client_id: "post-client".into(),
                auth: ClientAuth::SecretPost(POST_SECRET.into()),
                scopes: scopes.clone(),
            },
            RegisteredClient {
                client_id: "smart-es".into(),
                auth: ClientAuth::PrivateKeyJwt(jwks(&es)),
                scopes: scopes.clone(),
            },
            RegisteredClient {
                client_id: "smart-rs".into(),
                auth: ClientAuth::PrivateKeyJwt(jwks(&rs)),
                scopes,
            },
        ],
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let fhir = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Jwt(idp.verifier(AUDIENCE)),
        smart_configuration: Some(idp.smart_configuration()),
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    Env {
        idp,
        fhir,
        es_kid: es.kid.clone(),
        rs_kid: rs.kid.clone(),
        dir,
    }
}

impl Env {
    fn oidc_basic(&self) -> Value {
        json!({"scheme": "oidc-client-credentials", "issuer": self.idp.issuer(),
               "client-id": "basic client", "client-secret": BASIC_SECRET, "scope": "system/*.rs"})
    }
    fn oidc_post(&self) -> Value {
        json!({"scheme": "oidc-client-credentials", "token-url": self.idp.token_endpoint(),
               "client-id": "post-client", "client-secret-file": "post-secret.txt",
               "auth-method": "client_secret_post", "scope": "system/*.read"})
    }
    fn smart_es(&self) -> Value {
        json!({"scheme": "smart-backend", "client-id": "smart-es",
               "private-key-file": "es/private-key.pem", "kid": self.es_kid, "scope": "system/*.rs"})
    }
    fn smart_rs(&self) -> Value {
        json!({"scheme": "smart-backend", "client-id": "smart-rs",
               "private-key-file": "rs/private-key.pem", "kid": self.rs_kid, "alg": "RS384",
               "scope": "system/*.read"})
    }

    fn config(&self, connections: &[(&str, Value)]) -> Value {
        let extra = json!({"read-timeout": "PT10S"});
        fhirconn_tests::connections_to(&self.fhir.base_url(), connections, extra)
    }

    async fn host(&self, connections: &[(&str, Value)]) -> Host {
        fhirconn_tests::build_host(self.dir.path(), self.config(connections)).await
    }

    fn write_yaml(&self, connections: &[(&str, Value)]) {
        // JSON is YAML.
        std::fs::write(
            self.dir.path().join("fhirconn.yaml"),
            serde_json::to_string_pretty(&self.config(connections)).unwrap(),
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_auth_methods_and_both_algorithms_pass() {
    let e = env(Duration::from_secs(300)).await;
    let host = e
        .host(&[
            ("oidc-basic", e.oidc_basic()),
            ("oidc-post", e.oidc_post()),
            ("smart-es384", e.smart_es()),
            ("smart-rs384", e.smart_rs()),
        ])
        .await;
    let reports = host.test(&[], Some("Patient?_count=1")).await.unwrap();
    for r in &reports {
        assert!(r.ok, "{}: {}", r.id, failure(r));
        assert_eq!(r.probe.as_ref().map(|p| p.status), Some(200), "{}", r.id);
    }
    assert_eq!(e.idp.tokens_issued(), 4);
    assert_eq!(e.idp.token_requests(), 4, "{:?}", e.idp.last_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_failures_are_diagnosed_clearly() {
    let e = env(Duration::from_secs(300)).await;
    let localhost_token = e.idp.token_endpoint().replace("127.0.0.1", "localhost");
    let other = keygen::generate(KeyAlg::Es384, Some("never-registered")).unwrap();
    keygen::write(&e.dir.path().join("other"), &other, false).unwrap();
    let mut wrong_secret = e.oidc_basic();
    wrong_secret["client-secret"] = json!("CANARY-wrong-secret");
    let mut wrong_method = e.oidc_basic();
    wrong_method["auth-method"] = json!("client_secret_post");
    let mut unregistered = e.smart_es();
    unregistered["private-key-file"] = json!("other/private-key.pem");
    unregistered["kid"] = json!("never-registered");
    let mut wrong_aud = e.smart_es();
    wrong_aud["token-url"] = json!(localhost_token);
    let mut bad_scope = e.smart_rs();
    bad_scope["scope"] = json!("system/Observation.cruds");

    let cases: Vec<(&str, Value, IdpFault, &str)> = vec![
        (
            "wrong-secret",
            wrong_secret,
            IdpFault::None,
            "invalid_client: client authentication failed",
        ),
        (
            "wrong-method",
            wrong_method,
            IdpFault::None,
            "registered for client_secret_basic",
        ),
        (
            "unregistered-key",
            unregistered,
            IdpFault::None,
            "no key with kid 'never-registered'",
        ),
        (
            "wrong-aud",
            wrong_aud,
            IdpFault::None,
            "'aud' is not the token endpoint",
        ),
        ("scope-refused", bad_scope, IdpFault::None, "invalid_scope"),
        (
            "no-discovery",
            e.oidc_basic(),
            IdpFault::NoDiscovery,
            "openid-configuration: HTTP 404",
        ),
        (
            "lying-discovery",
            e.oidc_basic(),
            IdpFault::WrongIssuer,
            "names issuer 'https://evil.example.com/oauth'",
        ),
        (
            "token-500",
            e.oidc_post(),
            IdpFault::TokenStatus500,
            "answered HTTP 500",
        ),
        (
            "token-500-smart",
            e.smart_es(),
            IdpFault::TokenStatus500,
            "HTTP 500 without an OAuth error",
        ),
        (
            "token-garbage",
            e.oidc_post(),
            IdpFault::TokenGarbage,
            "not a token response",
        ),
        (
            "token-garbage-smart",
            e.smart_rs(),
            IdpFault::TokenGarbage,
            "body that is not JSON",
        ),
    ];
    for (id, auth, fault, expected) in cases {
        e.idp.set_fault(fault);
        let host = e.host(&[(id, auth)]).await;
        let reports = host.test(&[], None).await.unwrap();
        let r = &reports[0];
        assert!(!r.ok, "{id} passed");
        let text = failure(r);
        assert!(text.starts_with("credentials: "), "{id}: {text}");
        assert!(
            text.contains(expected),
            "{id}: expected '{expected}' in: {text}"
        );
        for canary in ["CANARY-wrong-secret", BASIC_SECRET, POST_SECRET] {
            assert!(!text.contains(canary), "{id} leaked a secret: {text}");
        }
    }
    e.idp.set_fault(IdpFault::None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let e = env(Duration::from_secs(2)).await;
    let host = e.host(&[("c", e.oidc_basic())]).await;
    let conn = host.connection("c").unwrap();
    for _ in 0..3 {
        assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    }
    assert_eq!(e.idp.tokens_issued(), 1, "cached while fresh");
    // Renewal margin: min(30 s, 10% of 2 s) = 0.2 s, so at 1.9 s the token is renewed.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    assert_eq!(e.idp.tokens_issued(), 2, "renewed ahead of expiry");
    assert_eq!(
        e.fhir.unauthorized(),
        0,
        "no request went out with an expired token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_on_a_cold_cache_make_one_token_request() {
    let e = env(Duration::from_secs(300)).await;
    for auth in [e.oidc_basic(), e.smart_es()] {
        let host = e.host(&[("c", auth)]).await;
        let conn = host.connection("c").unwrap();
        let before = e.idp.token_requests();
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let conn = Arc::clone(&conn);
                tokio::spawn(async move { conn.get("Patient?_count=1").await.map(|r| r.status) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 200);
        }
        assert_eq!(e.idp.token_requests() - before, 1);
        assert_eq!(conn.credential_fetches(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_replaced_after_one_401_and_a_second_401_is_reported() {
    let e = env(Duration::from_secs(300)).await;
    let host = e.host(&[("c", e.smart_rs())]).await;
    let conn = host.connection("c").unwrap();
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    e.fhir.revoke_presented_tokens();
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
    assert_eq!(
        e.fhir.unauthorized(),
        1,
        "one 401, then a retry with a fresh token"
    );
    assert_eq!(e.idp.tokens_issued(), 2);

    // The server stops accepting this issuer's tokens: one retry, then the 401 is reported.
    e.fhir.set_auth(ServerAuth::Jwt(
        e.idp.verifier("https://some-other-audience"),
    ));
    let resp = conn.get("Patient/1").await.unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(e.idp.tokens_issued(), 3, "exactly one retry");
    let reports = host.test(&[], Some("Patient/1")).await.unwrap();
    let text = failure(&reports[0]);
    assert!(
        text.contains("unauthorized (401)") && text.contains("error=\"invalid_token\""),
        "{text}"
    );
}

// ---- the CLI ----

fn run(dir: &Path, args: &[&str]) -> Out {
    run_command(
        fhirconn_command(dir, true)
            .env("FHIRCONN_TEST_POST_SECRET", POST_SECRET)
            .args(args),
    )
}

#[test]
fn cli_tests_token_schemes_prints_tokens_and_never_leaks_secrets() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env(Duration::from_secs(300)));
    let mut post_from_env = e.oidc_post();
    post_from_env
        .as_object_mut()
        .unwrap()
        .remove("client-secret-file");
    post_from_env["client-secret-env"] = json!("FHIRCONN_TEST_POST_SECRET");
    e.write_yaml(&[
        ("oidc-basic", e.oidc_basic()),
        ("oidc-post", post_from_env),
        ("smart-es384", e.smart_es()),
        ("smart-rs384", e.smart_rs()),
    ]);
    let dir = e.dir.path();
    let out = run(dir, &["-vv", "test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("4 of 4 connections passed"),
        "{}",
        out.stdout
    );
    let es_key = std::fs::read_to_string(dir.join("es/private-key.pem")).unwrap();
    let key_body = es_key.lines().nth(1).unwrap();
    for canary in [BASIC_SECRET, POST_SECRET, key_body] {
        assert!(
            !out.stdout.contains(canary) && !out.stderr.contains(canary),
            "leaked {canary}"
        );
    }
    assert!(
        !out.stderr.contains("eyJ"),
        "an access token reached the log:\n{}",
        out.stderr
    );

    let out = run(dir, &["token", "smart-es384"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out.stdout.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "smart-es");
    assert_eq!(claims["aud"], AUDIENCE);
    let out = run(dir, &["token", "nope"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn cli_keygen_writes_a_key_that_a_server_accepts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env(Duration::from_secs(300)));
    let dir = e.dir.path();
    let out = run(
        dir,
        &[
            "keygen", "--alg", "RS384", "--kid", "cli-key", "--out", "keys",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("kid: cli-key"), "{}", out.stdout);
    let jwks: JwkSet =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keys/jwks.json")).unwrap())
            .unwrap();
    e.idp.register(RegisteredClient {
        client_id: "cli-client".into(),
        auth: ClientAuth::PrivateKeyJwt(jwks),
        scopes: vec!["system/*.rs".into()],
    });
    e.write_yaml(&[(
        "k",
        json!({"scheme": "smart-backend", "client-id": "cli-client",
               "private-key-file": "keys/private-key.pem", "kid": "cli-key", "scope": "system/*.rs"}),
    )]);
    let out = run(dir, &["test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // Never overwrite a key silently.
    let out = run(dir, &["keygen", "--out", "keys"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("refusing to overwrite"),
        "{}",
        out.stderr
    );
}

/// The reqwest middleware keeps the connection's 401 rule on a caller's own client: a revoked
/// token is replaced after one 401 and the request resent once; a second 401 is the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reqwest_middleware_keeps_the_401_rule() {
    use fhirconn_host::middleware::Authentication;
    let e = env(Duration::from_secs(300)).await;
    let host = e.host(&[("c", e.smart_rs())]).await;
    let conn = host.connection("c").unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(Authentication::new(Arc::clone(&conn)))
        .build();
    let url = conn.url_for("Patient/1").unwrap();
    let get = || async { client.get(url.clone()).send().await.unwrap().status() };
    assert_eq!(get().await, 200);
    e.fhir.revoke_presented_tokens();
    assert_eq!(get().await, 200);
    assert_eq!(e.fhir.unauthorized(), 1, "one 401, then a retry");
    assert_eq!(e.idp.tokens_issued(), 2);
    e.fhir.set_auth(ServerAuth::Jwt(
        e.idp.verifier("https://some-other-audience"),
    ));
    assert_eq!(get().await, 401);
    assert_eq!(e.idp.tokens_issued(), 3, "exactly one retry");
}
