//! `cargo bench --bench fleet_proxy` (run by `cargo xtask bench`; needs `redis-server`):
//!
//! 1. Proxy overhead: 64 concurrent keep-alive clients sending `GET Patient/1` for
//!    `FHIRCONN_PROXY_SECONDS` (default 10 s) straight to a loopback FHIR server with the
//!    bearer token, then through the library proxy (`proxy::serve`, token required) to the
//!    same server, in the same run: throughput ratio and p50/p99 latency added.
//! 2. The fleet cache's hit path: `credentials()` answered from Redis (in-memory credentials
//!    dropped before each call: a GET, AES-GCM open, decode) against the same call answered
//!    from memory, p50 and p99 over 2,000 lookups on a loopback `redis-server`.

use fhirconn_host::Host;
use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_tests::bearer_server;
use fhirconn_tests::redis::RedisServer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-upstream-token";
const PROXY_TOKEN: &str = "bench-proxy-token";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// `clients` loops sending GETs to `url` for `secs`: (requests per second, latencies).
async fn load(url: String, auth: String, clients: usize, secs: u64) -> (f64, Vec<Duration>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..clients {
        let (client, url, auth, stop) = (client.clone(), url.clone(), auth.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.get(&url).header("authorization", &auth).send().await;
                let ok = match r {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                assert!(ok, "a request failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (rate, all)
}

async fn proxy_overhead() {
    let secs: u64 = std::env::var("FHIRCONN_PROXY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let fhir = bearer_server(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::builder()
        .config_value(
            dir.path(),
            serde_json::json!({"connections": {"s": {"base-url": fhir.base_url(),
                "auth": {"scheme": "bearer", "token": TOKEN}}}}),
        )
        .plugin_dir(fhirconn_tests::plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .expect("host");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fhirconn_host::proxy::serve(
        Arc::new(host),
        listener,
        fhirconn_host::proxy::Config::default().with_token(PROXY_TOKEN),
        async move {
            let _ = stopped.await;
        },
    ));
    // Warm both paths, then measure each for the same time.
    let direct_url = format!("{}/Patient/1", fhir.base_url());
    let proxy_url = format!("http://{addr}/s/Patient/1");
    let _ = load(direct_url.clone(), format!("Bearer {TOKEN}"), 64, 1).await;
    let _ = load(proxy_url.clone(), format!("Bearer {PROXY_TOKEN}"), 64, 1).await;
    let (d_rate, mut d_lat) = load(direct_url, format!("Bearer {TOKEN}"), 64, secs).await;
    let (p_rate, mut p_lat) = load(proxy_url, format!("Bearer {PROXY_TOKEN}"), 64, secs).await;
    let (d50, d99, p50, p99) = (
        pct(&mut d_lat, 0.5),
        pct(&mut d_lat, 0.99),
        pct(&mut p_lat, 0.5),
        pct(&mut p_lat, 0.99),
    );
    println!(
        "proxy overhead (64 clients, {secs} s each): direct {d_rate:.0} req/s, via proxy \
         {p_rate:.0} req/s ({:.1}% of direct); p50 {d50:?} -> {p50:?} (+{:.3} ms), p99 {d99:?} \
         -> {p99:?}",
        100.0 * p_rate / d_rate,
        (p50.as_secs_f64() - d50.as_secs_f64()) * 1000.0,
    );
    let _ = stop.send(());
    let _ = server.await;
}

async fn fleet_hit_path() {
    let redis = RedisServer::start(None);
    let idp = IdentityProvider::start(IdpConfig {
        audience: "https://bench.example/fhir".into(),
        token_lifetime: Duration::from_secs(3600),
        clients: vec![RegisteredClient {
            client_id: "bench".into(),
            auth: ClientAuth::SecretBasic("bench-secret".into()),
            scopes: vec!["system/*.rs".into()],
        }],
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    std::env::set_var("FHIRCONN_BENCH_CACHE_KEY", KEY);
    let dir = tempfile::tempdir().unwrap();
    let host = Host::builder()
        .config_value(
            dir.path(),
            serde_json::json!({
                "credential-cache": {"backend": "redis", "url": redis.url(),
                                     "encryption-key-env": "FHIRCONN_BENCH_CACHE_KEY"},
                "connections": {"c": {"base-url": "https://bench.example/fhir",
                "auth": {"scheme": "oidc-client-credentials", "token-url": idp.token_endpoint(),
                         "client-id": "bench", "client-secret": "bench-secret"}}}}),
        )
        .plugin_dir(fhirconn_tests::plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .expect("host");
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        proxy_overhead().await;
        fleet_hit_path().await;
    });
}
