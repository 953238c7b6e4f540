//! JWT client authentication end to end, through the built plugins, the host library and the
//! `fhirconn` binary against the testkit identity provider (which verifies by RFC 7523 and
//! OpenID Connect Core §9): oidc-client-credentials with `client_secret_jwt` and
//! `private_key_jwt` (RS256, RS384, ES256, ES384) and the jwt-bearer grant (HS256 or a key);
//! smart-backend's claim overrides, `jku` and default assertion lifetime; relative `token-url`
//! values resolved against `base-url` (checked on the wire with the hostile server).

use fhirconn_host::Host;
use fhirconn_testkit::hostile::{Answer, HostileServer};
use fhirconn_testkit::idp::{
    client_key, ClientAuth, GrantKey, IdentityProvider, IdpConfig, RegisteredClient,
};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{failure, fhirconn_command, plugin_dir, run_command};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const AUDIENCE: &str = "https://fhir.testkit/r4";
const SECRET: &str = "CANARY-jwt-secret-0123456789abcdef";

struct Env {
    idp: IdentityProvider,
    fhir: FhirServer,
    dir: tempfile::TempDir,
}

/// A provider with one client per JWT variant, keys on disk, a FHIR server trusting it.
async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut clients = vec![
        client("cs-jwt", ClientAuth::ClientSecretJwt(SECRET.into())),
        client(
            "hg",
            ClientAuth::JwtBearerGrant(GrantKey::Secret(SECRET.into())),
        ),
    ];
    for (alg, name) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "p256"),
        (Algorithm::ES384, "p384"),
    ] {
        let (pem, jwks) = client_key(alg, &format!("{name}-1"));
        std::fs::write(dir.path().join(format!("{name}.pem")), pem).unwrap();
        clients.push(client(
            &format!("pk-{name}"),
            ClientAuth::PrivateKeyJwtAnyAlg(jwks.clone()),
        ));
        clients.push(client(
            &format!("grant-{name}"),
            ClientAuth::JwtBearerGrant(GrantKey::Keys(jwks.clone())),
        ));
        clients.push(client(
            &format!("smart-{name}"),
            ClientAuth::PrivateKeyJwt(jwks),
        ));
    }
    let idp = IdentityProvider::start(IdpConfig {
        audience: AUDIENCE.into(),
        clients,
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let fhir = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Jwt(idp.verifier(AUDIENCE)),
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    Env { idp, fhir, dir }
}

fn client(id: &str, auth: ClientAuth) -> RegisteredClient {
    RegisteredClient {
        client_id: id.into(),
        auth,
        scopes: vec!["system/*.rs".into()],
    }
}

impl Env {
    fn oidc(&self, client_id: &str, extra: Value) -> Value {
        let mut v = json!({"scheme": "oidc-client-credentials", "issuer": self.idp.issuer(),
                           "client-id": client_id, "scope": "system/*.rs"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    fn smart(&self, key: &str, extra: Value) -> Value {
        let mut v = json!({"scheme": "smart-backend", "client-id": format!("smart-{key}"),
                           "private-key-file": format!("{key}.pem"), "kid": format!("{key}-1"),
                           "scope": "system/*.rs", "token-url": self.idp.token_endpoint()});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    fn config(&self, connections: &[(&str, Value)]) -> Value {
        fhirconn_tests::connections_to(&self.fhir.base_url(), connections, json!({}))
    }

    async fn host(&self, connections: &[(&str, Value)]) -> Host {
        fhirconn_tests::build_host(self.dir.path(), self.config(connections)).await
    }
}

/// Every variant gets a token the FHIR server accepts.
fn good_connections(e: &Env) -> Vec<(&'static str, Value)> {
    vec![
        ("client-secret-jwt", e.oidc("cs-jwt", json!({"auth-method": "client_secret_jwt", "client-secret": SECRET}))),
        ("pk-rs256", e.oidc("pk-rsa", json!({"auth-method": "private_key_jwt", "private-key-file": "rsa.pem"}))),
        ("pk-rs384", e.oidc("pk-rsa", json!({"auth-method": "private_key_jwt", "private-key-file": "rsa.pem", "alg": "RS384", "kid": "rsa-1"}))),
        ("pk-es256", e.oidc("pk-p256", json!({"auth-method": "private_key_jwt", "private-key-file": "p256.pem"}))),
        ("pk-es384", e.oidc("pk-p384", json!({"auth-method": "private_key_jwt", "private-key-file": "p384.pem", "kid": "p384-1"}))),
        ("grant-hs256", e.oidc("hg", json!({"grant": "jwt-bearer", "client-secret": SECRET, "assertion-subject": "user-7"}))),
        ("grant-es256", e.oidc("grant-p256", json!({"grant": "jwt-bearer", "private-key-file": "p256.pem"}))),
        ("smart-rs384", e.smart("rsa", json!({"jku": "https://client.example/jwks"}))),
        ("smart-es384", e.smart("p384", json!({"assertion-lifetime": 60}))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_jwt_variant_gets_a_token_the_server_accepts() {
    let e = env().await;
    let conns = good_connections(&e);
    let host = e.host(&conns).await;
    let reports = host.test(&[], Some("Patient?_count=1")).await.unwrap();
    for r in &reports {
        assert!(r.ok, "{}: {} ({:?})", r.id, failure(r), e.idp.last_error());
        assert_eq!(r.probe.as_ref().map(|p| p.status), Some(200), "{}", r.id);
    }
    assert_eq!(e.idp.tokens_issued(), conns.len() as u64);
}

/// What the provider refuses reaches the person as a credentials diagnosis naming the reason:
/// a wrong HS256 secret, a key the client did not register, a smart-backend `issuer` or
/// `audience` override the provider does not accept, an unregistered grant subject's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_assertions_are_diagnosed_without_leaking_the_secret() {
    let e = env().await;
    let cases = [
        ("wrong-secret", e.oidc("cs-jwt", json!({"auth-method": "client_secret_jwt", "client-secret": "CANARY-wrong-0123456789abcdef0123"})), "signature does not verify"),
        ("wrong-key", e.oidc("pk-p384", json!({"auth-method": "private_key_jwt", "private-key-file": "p256.pem"})),"signature does not verify"),
        ("unregistered-key", e.oidc("pk-p256", json!({"auth-method": "private_key_jwt", "private-key-file": "p384.pem", "kid": "p384-1"})), "no key with kid 'p384-1'"),
        ("issuer-override", e.smart("p384", json!({"issuer": "someone-else"})), "invalid_client: unknown client"),
        ("audience-override", e.smart("p384", json!({"audience": e.idp.issuer()})), "'aud' is not the token endpoint"),
        ("subject-override", e.smart("p384", json!({"subject": "user-7"})), "'sub' is not the client_id"),
        ("grant-wrong-key", e.oidc("grant-p256", json!({"grant": "jwt-bearer", "private-key-file": "p384.pem"})), "invalid_grant"),
    ];
    for (id, auth, expected) in cases {
        let host = e.host(&[(id, auth)]).await;
        let r = &host.test(&[], None).await.unwrap()[0];
        let text = failure(r);
        assert!(!r.ok, "{id} passed");
        assert!(
            text.starts_with("credentials: ") && text.contains(expected),
            "{id}: {text}"
        );
        assert!(!text.contains("CANARY"), "{id} leaked: {text}");
    }
}

/// Relative `token-url` values resolve against base-url by RFC 3986 (`/oauth2/token`: the
/// server root; `oauth2/token`: beside the last segment), and smart-backend's default
/// assertion lives 240 s, a margin under five minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relative_token_urls_resolve_against_base_url_on_the_wire() {
    let server = HostileServer::start().await.unwrap();
    let token = json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 300});
    server
        .on("POST", "/oauth2/token", Answer::json(200, &token))
        .on("POST", "/fhir/oauth2/token", Answer::json(200, &token))
        .otherwise(Answer::fhir(
            200,
            &json!({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}),
        ));
    let dir = tempfile::tempdir().unwrap();
    let (pem, _) = client_key(Algorithm::ES384, "k");
    std::fs::write(dir.path().join("k.pem"), pem).unwrap();
    let base = server.url("/fhir/R4");
    let conns = json!({"connections": {
        "medplum": {"base-url": base, "auth": {"scheme": "oidc-client-credentials",
            "token-url": "oauth2/token", "client-id": "c", "client-secret": SECRET}},
        "rooted": {"base-url": base, "auth": {"scheme": "smart-backend", "client-id": "c",
            "private-key-file": "k.pem", "kid": "k", "scope": "system/*.rs",
            "token-url": "/oauth2/token"}},
    }});
    let host = Host::builder()
        .config_value(dir.path(), conns)
        .plugin_dir(plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for r in host.test(&[], None).await.unwrap() {
        assert!(r.ok, "{}: {}", r.id, failure(&r));
    }
    assert_eq!(server.received_at("/fhir/oauth2/token").len(), 1);
    let rooted = server.received_at("/oauth2/token");
    assert_eq!(rooted.len(), 1);
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(rooted[0].body_text().as_bytes())
            .into_owned()
            .collect();
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&form["client_assertion"])
        .unwrap()
        .claims;
    assert_eq!(claims["aud"], server.url("/oauth2/token"));
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 240, "the default leaves a margin under 300 s");
}

/// Through the binary: `fhirconn test` passes every variant, `-vv` shows neither the secret nor
/// a key; a bad combination is a configuration error (exit 2) naming the setting.
#[test]
fn cli_tests_every_variant_and_names_bad_settings() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env());
    let dir = e.dir.path();
    let write = |conns: &[(&str, Value)]| {
        std::fs::write(
            dir.join("fhirconn.yaml"),
            serde_json::to_string_pretty(&e.config(conns)).unwrap(),
        )
        .unwrap();
    };
    let conns = good_connections(&e);
    write(&conns);
    let out = run_command(fhirconn_command(dir, true).args(["-vv", "test"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let passed = format!("{n} of {n} connections passed", n = conns.len());
    assert!(out.stdout.contains(&passed), "{}", out.stdout);
    let key = std::fs::read_to_string(dir.join("p256.pem")).unwrap();
    for canary in [SECRET, key.lines().nth(1).unwrap()] {
        assert!(!out.all().contains(canary), "leaked {canary}");
    }
    for (auth, expected) in [
        (
            e.oidc("c", json!({"auth-method": "private_key_jwt"})),
            "exactly one of 'private-key', 'private-key-file', 'private-key-env' must be set",
        ),
        (
            e.oidc("c", json!({"auth-method": "private_key_jwt", "private-key-file": "p256.pem", "client-secret": SECRET})),
            "client-secret: not used with auth-method private_key_jwt",
        ),
        (
            e.oidc("c", json!({"grant": "jwt-bearer"})),
            "exactly one of 'client-secret', 'client-secret-file', 'client-secret-env' must be set",
        ),
        (
            e.oidc("c", json!({"auth-method": "none", "client-secret": SECRET})),
            "missing required field 'grant'",
        ),
        (e.smart("p384", json!({"jku": "http://client.example/jwks"})), "jku"),
        (e.smart("p256", json!({})), "allowed here: RS384, ES384"),
    ] {
        write(&[("bad", auth)]);
        let out = run_command(fhirconn_command(dir, true).args(["config", "check"]));
        assert_eq!(out.code, 2, "{expected}: {}", out.all());
        assert!(out.all().contains(expected), "{expected}: {}", out.all());
        assert!(!out.all().contains(SECRET), "{}", out.all());
    }
}
