//! `cargo bench --bench fleet_proxy` (run by `cargo xtask bench`; needs `redis-server`): the
//! fleet cache's hit path: `credentials()` answered from Redis (in-memory credentials dropped
//! before each call: a GET, AES-GCM open, decode) against the same call answered from memory,
//! p50 and p99 over 2,000 lookups on a loopback `redis-server`.
//!
//! The proxy's overhead is measured with separate processes (the real `fhirconn proxy`, our
//! load generator and the testkit server, pinned as a sidecar would be) by
//! `xtask/src/bench_proxy.rs`; an in-process variant here measured three programs competing
//! for two cores rather than the proxy.

use fhirconn_tests::build_host;
use fhirconn_tests::redis::RedisServer;
use std::time::{Duration, Instant};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

async fn fleet_hit_path() {
    let redis = RedisServer::start(None);
    let audience = "https://bench.example/fhir";
    let lifetime = Duration::from_secs(3600);
    let (idp, _fhir) =
        fhirconn_tests::idp_with_secret_client(audience, "bench", "bench-secret", lifetime).await;
    std::env::set_var("FHIRCONN_BENCH_CACHE_KEY", KEY);
    let dir = tempfile::tempdir().unwrap();
    let host = build_host(
        dir.path(),
        serde_json::json!({
            "credential-cache": {"backend": "redis", "url": redis.url(),
                                 "encryption-key-env": "FHIRCONN_BENCH_CACHE_KEY"},
            "connections": {"c": {"base-url": audience,
            "auth": {"scheme": "oidc-client-credentials", "token-url": idp.token_endpoint(),
                     "client-id": "bench", "client-secret": "bench-secret"}}}}),
    )
    .await;
    let c = host.connection("c").unwrap();
    c.credentials(false).await.unwrap();
    let n = 2000;
    let mut memory = Vec::with_capacity(n);
    let mut fleet = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.credentials(false).await.unwrap();
        memory.push(t.elapsed());
        c.drop_cached_credentials().await;
        let t = Instant::now();
        let creds = c.credentials(false).await.unwrap();
        fleet.push(t.elapsed());
        assert_eq!(creds.source, fhirconn_host::CredentialSource::FleetCache);
    }
    assert_eq!(idp.token_requests(), 1);
    println!(
        "fleet cache hit path ({n} lookups, loopback Redis): memory p50 {:?} p99 {:?}; fleet \
         p50 {:?} p99 {:?} (added p99 {:.3} ms); token requests 1; lookups per process per \
         token lifetime: 1 (then memory)",
        pct(&mut memory, 0.5),
        pct(&mut memory, 0.99),
        pct(&mut fleet, 0.5),
        pct(&mut fleet, 0.99),
        (pct(&mut fleet, 0.99).as_secs_f64() - pct(&mut memory, 0.99).as_secs_f64()) * 1000.0
    );
}

fn main() {
    let rt = fhirconn_tests::two_worker_runtime();
    rt.block_on(fleet_hit_path());
}
