//! `fhirconn-loadgen`: a small HTTP/1.1 load generator for `cargo xtask bench --only proxy`.
//!
//! `fhirconn-loadgen --url http://127.0.0.1:PORT/path [--header 'Name: value']... [--clients 64]
//! [--seconds 10] [--warmup 1] [--rate R] [--threads 1]` opens `--clients` keep-alive
//! connections (hyper, one connection per client, `TCP_NODELAY`), sends `GET` on each in a loop
//! (closed loop) or, with `--rate`, paced so that all clients together send about `R` requests
//! per second (each client at `clients / R` intervals, staggered), for `--seconds` after a
//! `--warmup`, and prints one JSON line: requests, errors, achieved rate, latency percentiles
//! (from the moment a request was written to its last body byte) and the load generator's own
//! CPU time. Any status other than 200 is an error. It runs on a current-thread tokio runtime
//! by default (`--threads 1`), the cheapest shape for a generator that shares a core.

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Command-line options.
struct Args {
    url: url::Url,
    headers: Vec<(String, String)>,
    clients: usize,
    seconds: f64,
    warmup: f64,
    rate: Option<f64>,
    threads: usize,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "fhirconn-loadgen: {why}\nusage: fhirconn-loadgen --url http://HOST:PORT/PATH \
         [--header 'Name: value']... [--clients N] [--seconds S] [--warmup S] [--rate R] \
         [--threads T]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut url = None;
    let mut headers = Vec::new();
    let (mut clients, mut seconds, mut warmup, mut rate, mut threads) = (64, 10.0, 1.0, None, 1);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let number = |v: String| -> f64 {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .unwrap_or_else(|| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--url" => {
                let v = value();
                url = Some(url::Url::parse(&v).unwrap_or_else(|e| usage(&format!("{v}: {e}"))));
            }
            "--header" => {
                let v = value();
                let (n, h) = v
                    .split_once(':')
                    .unwrap_or_else(|| usage("--header takes 'Name: value'"));
                headers.push((n.trim().to_string(), h.trim().to_string()));
            }
            "--clients" => clients = number(value()) as usize,
            "--seconds" => seconds = number(value()),
            "--warmup" => warmup = number(value()),
            "--rate" => rate = Some(number(value())).filter(|r| *r > 0.0),
            "--threads" => threads = number(value()) as usize,
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    let url = url.unwrap_or_else(|| usage("--url is required"));
    if url.scheme() != "http" {
        usage("only http:// URLs");
    }
    if clients == 0 || threads == 0 || seconds <= 0.0 {
        usage("--clients, --threads and --seconds must be positive");
    }
    Args {
        url,
        headers,
        clients,
        seconds,
        warmup,
        rate,
        threads,
    }
}

/// What all clients share: when to record, when to stop, failures.
struct Shared {
    recording: AtomicBool,
    stop: AtomicBool,
    errors: AtomicU64,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: &str) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request on `sender`: whether it answered 200 with its whole body.
async fn once(sender: &mut Sender, args: &Args, authority: &str, target: &str) -> bool {
    let mut req = hyper::Request::get(target).header(hyper::header::HOST, authority);
    for (n, v) in &args.headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let Ok(req) = req.body(Empty::<Bytes>::new()) else {
        return false;
    };
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status() == hyper::StatusCode::OK;
            resp.into_body().collect().await.is_ok() && ok
        }
        Err(_) => false,
    }
}

/// One client: its latencies (µs) while recording.
async fn client(n: usize, args: Arc<Args>, shared: Arc<Shared>) -> Vec<u32> {
    let authority = format!(
        "{}:{}",
        args.url.host_str().unwrap_or("127.0.0.1"),
        args.url.port_or_known_default().unwrap_or(80)
    );
    let target = match args.url.query() {
        Some(q) => format!("{}?{q}", args.url.path()),
        None => args.url.path().to_string(),
    };
    let mut lat = Vec::new();
    let mut sender = None;
    let mut pace = args.rate.map(|r| {
        let every = Duration::from_secs_f64(args.clients as f64 / r);
        let first = tokio::time::Instant::now() + every.mul_f64(n as f64 / args.clients as f64);
        tokio::time::interval_at(first, every)
    });
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let s = match sender.take() {
            Some(s) => s,
            None => match connect(&authority).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fhirconn-loadgen: {e}");
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let mut s = s;
        let t = Instant::now();
        let ok = once(&mut s, &args, &authority, &target).await;
        let took = t.elapsed();
        if shared.recording.load(Ordering::Relaxed) {
            if ok {
                lat.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            } else {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if ok {
            sender = Some(s);
        }
    }
    lat
}

/// CPU time of this process so far (user + system, all threads), from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

async fn run(args: Args) -> serde_json::Value {
    let args = Arc::new(args);
    let shared = Arc::new(Shared {
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        errors: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(client(n, args.clone(), shared.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let cpu0 = cpu_time();
    let started = Instant::now();
    shared.recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    shared.recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_time()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a).as_secs_f64() * 1000.0);
    shared.stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    lat.sort_unstable();
    let n = lat.len();
    serde_json::json!({
        "url": args.url.as_str(),
        "clients": args.clients,
        "target_rate": args.rate,
        "seconds": elapsed,
        "requests": n,
        "errors": shared.errors.load(Ordering::Relaxed),
        "rate": n as f64 / elapsed,
        "p50_ms": pct(&lat, 0.5),
        "p90_ms": pct(&lat, 0.9),
        "p99_ms": pct(&lat, 0.99),
        "cpu_ms": cpu,
    })
}

fn main() {
    let args = parse_args();
    let rt = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = rt.unwrap_or_else(|e| usage(&format!("cannot start a runtime: {e}")));
    let out = rt.block_on(run(args));
    println!("{out}");
}
