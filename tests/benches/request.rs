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
    // Not in `cargo test --benches` (criterion's `--test` mode): ~18,600 requests.
    if !std::env::args().any(|a| a == "--test") {
        interleaved(&rt, &bare, &url, &token, &conn);
    }
    assert_eq!(
        idp.tokens_issued(),
        1,
        "every measured request used the cached token"
    );
}

/// Rounds of the interleaved comparison, and requests per side in each.
const ROUNDS: usize = 31;
const PER_ROUND: u32 = 300;

/// The same two sides, interleaved: in each round [`PER_ROUND`] requests of one side then of
/// the other (the order alternating), so drift over the run hits both alike. Prints the median
/// of the per-round ratios (host / bare) with their spread: criterion's groups, run one after
/// the other, swing by ±15% on a shared 2-core machine.
fn interleaved(
    rt: &tokio::runtime::Runtime,
    bare: &reqwest::Client,
    url: &str,
    token: &str,
    conn: &fhirconn_host::Connection,
) {
    let time_bare = || {
        rt.block_on(async {
            let t = std::time::Instant::now();
            for _ in 0..PER_ROUND {
                let r = bare
                    .get(url)
                    .header("Accept", "application/fhir+json")
                    .header("Authorization", token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                black_box(r.bytes().await.unwrap());
            }
            t.elapsed().as_secs_f64() / f64::from(PER_ROUND)
        })
    };
    let time_host = || {
        rt.block_on(async {
            let t = std::time::Instant::now();
            for _ in 0..PER_ROUND {
                let r = conn.get("Patient/1").await.unwrap();
                assert_eq!(r.status, 200);
                black_box(r.body);
            }
            t.elapsed().as_secs_f64() / f64::from(PER_ROUND)
        })
    };
    let (mut bares, mut hosts, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (b, h) = if round % 2 == 0 {
            let b = time_bare();
            (b, time_host())
        } else {
            let h = time_host();
            (time_bare(), h)
        };
        bares.push(b);
        hosts.push(h);
        ratios.push(h / b);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "interleaved, {ROUNDS} rounds of {PER_ROUND} requests per side: bare reqwest {:.1} us, \
         host {:.1} us per request (medians); host/bare per round: median {:+.1}% (min {:+.1}%, \
         max {:+.1}%)",
        median(&mut bares) * 1e6,
        median(&mut hosts) * 1e6,
        (median(&mut ratios) - 1.0) * 100.0,
        (lo - 1.0) * 100.0,
        (hi - 1.0) * 100.0,
    );
}

criterion_group!(benches, request);
criterion_main!(benches);
