//! Criterion: one authenticated `GET Patient/1` through the host (token cached by the host,
//! credentials applied, body capped) versus bare reqwest with a static `Authorization` header,
//! against the same loopback FHIR server verifying JWT access tokens, in the same run.

use criterion::{criterion_group, criterion_main, Criterion};
use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use std::hint::black_box;

const AUDIENCE: &str = "https://bench.example/fhir";

fn request(c: &mut Criterion) {
    let rt = fhirconn_tests::two_worker_runtime();
    let dir = tempfile::tempdir().unwrap();
    let (idp, fhir, host) = rt.block_on(async {
        let idp = IdentityProvider::start(IdpConfig {
            audience: AUDIENCE.into(),
            clients: vec![RegisteredClient {
                client_id: "bench".into(),
                auth: ClientAuth::SecretBasic("bench-secret".into()),
                scopes: vec!["system/*.rs".into()],
            }],
            ..IdpConfig::default()
        })
        .await
        .unwrap();
        let fhir = fhirconn_tests::jwt_server(&idp, AUDIENCE).await;
        let config = serde_json::json!({"connections": {"b": {
            "base-url": fhir.base_url(),
            "auth": {"scheme": "oidc-client-credentials", "token-url": idp.token_endpoint(),
                     "client-id": "bench", "client-secret": "bench-secret"}}}});
        let host = fhirconn_tests::build_host(dir.path(), config).await;
        (idp, fhir, host)
    });
    let conn = host.connection("b").unwrap();
    // Warm the cache and take the same token for the baseline.
    let token = rt.block_on(async {
        assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
        let creds = conn.credentials(false).await.unwrap();
        creds.headers[0].1.to_str().unwrap().to_string()
    });
    let url = format!("{}/Patient/1", fhir.base_url());
    let bare = reqwest::Client::builder().build().unwrap();

    let mut g = c.benchmark_group("authenticated GET Patient/1");
    g.bench_function("bare reqwest, static header", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = bare
                    .get(&url)
                    .header("Accept", "application/fhir+json")
                    .header("Authorization", &token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                black_box(r.bytes().await.unwrap())
            })
        })
    });
    g.bench_function("fhirconn host, cached token", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = conn.get("Patient/1").await.unwrap();
                assert_eq!(r.status, 200);
                black_box(r.body)
            })
        })
    });
    g.finish();
    assert_eq!(
        idp.tokens_issued(),
        1,
        "every measured request used the cached token"
    );
}

criterion_group!(benches, request);
criterion_main!(benches);
