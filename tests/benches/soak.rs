//! `cargo bench --bench soak` (run by `cargo xtask bench`): two measurements that criterion's
//! sampling does not fit.
//!
//! 1. Cold-cache single flight: the wall time of 1,000 concurrent callers asking a fresh
//!    connection for credentials, against one caller alone, and the token requests made.
//! 2. Soak: authenticated requests at 64-way concurrency for `FHIRCONN_SOAK_SECONDS` (default
//!    40 s) with 5 s tokens on loopback, so renewal happens eight times: failures, requests
//!    answered 401 (renewal must come ahead of expiry, not by retry), token requests against
//!    lifetimes + 1, and resident memory at the start, midway and at the end.

use fhirconn_host::Host;
use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_testkit::FhirServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

const AUDIENCE: &str = "https://soak.example/fhir";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn host(idp: &IdentityProvider, fhir: &FhirServer, dir: &std::path::Path) -> Host {
    fhirconn_tests::build_host(
        dir,
        serde_json::json!({"connections": {"c": {
            "base-url": fhir.base_url(),
            "auth": {"scheme": "oidc-client-credentials", "token-url": idp.token_endpoint(),
                     "client-id": "soak", "client-secret": "soak-secret"}}}}),
    )
    .await
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let rt = fhirconn_tests::two_worker_runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let idp = IdentityProvider::start(IdpConfig {
            audience: AUDIENCE.into(),
            token_lifetime: Duration::from_secs(20),
            clients: vec![RegisteredClient {
                client_id: "soak".into(),
                auth: ClientAuth::SecretBasic("soak-secret".into()),
                scopes: vec![],
            }],
            ..IdpConfig::default()
        })
        .await
        .unwrap();
        let fhir = fhirconn_tests::jwt_server(&idp, AUDIENCE).await;

        // 1. Single flight on a cold cache.
        let (mut one, mut many) = (Vec::new(), Vec::new());
        let mut extra_requests = 0;
        for _ in 0..15 {
            let h = host(&idp, &fhir, dir.path()).await;
            let c = h.connection("c").unwrap();
            let t = Instant::now();
            c.credentials(false).await.unwrap();
            one.push(t.elapsed());

            let h = host(&idp, &fhir, dir.path()).await;
            let c = h.connection("c").unwrap();
            let before = idp.token_requests();
            let t = Instant::now();
            let tasks: Vec<_> = (0..1000)
                .map(|_| {
                    let c = Arc::clone(&c);
                    tokio::spawn(async move { c.credentials(false).await.is_ok() })
                })
                .collect();
            for task in tasks {
                assert!(task.await.unwrap());
            }
            many.push(t.elapsed());
            extra_requests += idp.token_requests() - before - 1;
        }
        let (o, m) = (median(one), median(many));
        println!(
            "single flight, cold cache, median of 15: one caller {:.2} ms, 1000 concurrent callers {:.2} ms ({:.2}x); token requests beyond one per run: {extra_requests}",
            o.as_secs_f64() * 1e3,
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / o.as_secs_f64()
        );

        // 2. Soak: long enough to cross several token lifetimes (renewals must happen ahead
        // of expiry: no request may be answered 401), with resident memory sampled at the
        // start, midway and at the end.
        let seconds: u64 = std::env::var("FHIRCONN_SOAK_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        let lifetime = Duration::from_secs(5);
        idp.set_token_lifetime(lifetime);
        let h = host(&idp, &fhir, dir.path()).await;
        let c = h.connection("c").unwrap();
        let before_tokens = idp.token_requests();
        let before_401 = fhir.unauthorized();
        let rss_start = rss_kib();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let midway = started + Duration::from_secs(seconds / 2);
        let workers = 64usize;
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rss_mid = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let c = Arc::clone(&c);
                let done = done.clone();
                let rss_mid = rss_mid.clone();
                tokio::spawn(async move {
                    let mut failed = 0usize;
                    while Instant::now() < deadline {
                        if Instant::now() >= midway
                            && rss_mid.load(std::sync::atomic::Ordering::SeqCst) == 0
                        {
                            rss_mid.store(rss_kib(), std::sync::atomic::Ordering::SeqCst);
                        }
                        match c.get("Patient/1").await {
                            Ok(r) if r.status == 200 => {}
                            _ => failed += 1,
                        }
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    failed
                })
            })
            .collect();
        let mut failed = 0;
        for h in handles {
            failed += h.await.unwrap();
        }
        let took = started.elapsed();
        let total = done.load(std::sync::atomic::Ordering::SeqCst);
        let tokens = idp.token_requests() - before_tokens;
        let lifetimes = took.as_secs_f64() / lifetime.as_secs_f64();
        println!(
            "soak: {:.1} s, 64-way, {} s tokens ({lifetimes:.1} lifetimes): {total} requests \
             ({:.0} req/s), {failed} failed, {} answered 401; token requests {tokens} \
             (lifetimes + 1 = {:.0}); RSS {} KiB at start, {} KiB midway, {} KiB at end",
            took.as_secs_f64(),
            lifetime.as_secs(),
            total as f64 / took.as_secs_f64(),
            fhir.unauthorized() - before_401,
            lifetimes.floor() + 1.0,
            rss_start,
            rss_mid.load(std::sync::atomic::Ordering::SeqCst),
            rss_kib()
        );
    });
}
