//! One process of a test fleet: builds a host from a connections file (with a shared
//! `credential-cache`), sends `--concurrency` authenticated GETs at once, again and again for
//! `--seconds` (or once), and prints a JSON summary: requests, failures, and where each
//! fetch of credentials came from. Driven by `tests/fleet.rs`.

use fhirconn_host::Host;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    config: PathBuf,
    connection: String,
    concurrency: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut out = Args {
        config: PathBuf::new(),
        connection: String::new(),
        concurrency: 100,
        seconds: 0,
    };
    while let Some(k) = a.next() {
        let v = a.next().unwrap_or_default();
        match k.as_str() {
            "--config" => out.config = v.into(),
            "--connection" => out.connection = v,
            "--concurrency" => out.concurrency = v.parse().unwrap_or(100),
            "--seconds" => out.seconds = v.parse().unwrap_or(0),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let host = match Host::builder()
        .config_file(&a.config)
        .plugin_dir(fhirconn_tests::plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let conn = host.connection(&a.connection).expect("connection");
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(a.seconds);
    loop {
        let mut tasks = Vec::with_capacity(a.concurrency);
        for _ in 0..a.concurrency {
            let (conn, ok, failed) = (conn.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                match conn.get("Patient/1").await {
                    Ok(r) if r.status.as_u16() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("status {}", r.status);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let source = conn
        .credentials(false)
        .await
        .map(|c| c.source.to_string())
        .ok();
    println!(
        "{}",
        serde_json::json!({
            "ok": ok.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "fetches": conn.credential_fetches(),
            "last_source": source,
        })
    );
}
