//! `cargo xtask bench --only proxy`: the real `fhirconn proxy` (target/dist) against direct
//! requests, as separate processes: our load generator (`fhirconn-loadgen`, release, hyper,
//! 64 keep-alive clients, one tokio thread), the release testkit FHIR server (bearer token)
//! and the proxy (token required, its default `info` access log written to /dev/null).
//! Direct and via-proxy runs alternate in the same run, in three shapes:
//!
//! - (a) **shared**: nothing pinned: the three processes share both cores (saturation);
//! - (b) **sidecar**: load generator + server pinned to CPU 0 (`taskset -c 0`), the proxy to
//!   CPU 1 (`taskset -c 1`: a sidecar with its own core), saturation;
//! - (c) **paced**: shape (b), 64 clients paced to half of the direct saturation rate of (b):
//!   the p50 latency the proxy adds when it is not queueing.
//!
//! Processes are started under `taskset`, so each tokio runtime sizes itself to the CPUs it
//! may use (1 worker when pinned). CPU time per request is each process's user+system time
//! (`/proc/PID/stat`) over the measured window divided by the requests answered in it.
//! `FHIRCONN_PROXY_SECONDS` sets each run's length (default 10 s); `FHIRCONN_PROXY_BASELINE`
//! names another `fhirconn` binary (e.g. a copy built from an earlier commit) run as a second
//! proxy in shape (b), for a before/after comparison within the same run. When `nginx` is
//! installed (or `FHIRCONN_PROXY_NGINX` names it), it runs in shape (b) too as the reference
//! of what a proxy can do on this machine: one worker process (no master), upstream keep-alive,
//! the same token check and credential header, its access log to /dev/null.

use crate::{start_testkit, write_private, Result};
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROXY_TOKEN: &str = "bench-proxy-token-4f1c9a7e";
const CLIENTS: usize = 64;

/// Where a process runs: `None` unpinned, else the CPU list given to `taskset -c`.
type Cpus = Option<&'static str>;

fn pinned(cpus: Cpus, program: &Path) -> Command {
    match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A child killed (and reaped) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// User + system CPU time so far (all threads), from `/proc/PID/stat`.
    fn cpu(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()))?;
        let after = stat.rsplit_once(')').ok_or("odd /proc stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let field =
            |i: usize| -> Result<u64> { Ok(f.get(i).ok_or("short /proc stat")?.parse::<u64>()?) };
        // utime and stime, in clock ticks (100 Hz).
        Ok(Duration::from_millis((field(11)? + field(12)?) * 10))
    }
}

/// The testkit server and the proxies for one shape: `fhirconn proxy` of this tree, and the
/// baseline binary (`FHIRCONN_PROXY_BASELINE`) when one is given.
struct Rig {
    server: Running,
    proxies: Vec<Proxy>,
    direct_url: String,
    direct_auth: String,
}

/// One running proxy.
struct Proxy {
    process: Running,
    url: String,
}

/// One load run: the generator's JSON plus the server's and the proxy's CPU time over it.
struct Run {
    out: Value,
    server_cpu: Duration,
    proxy_cpu: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.out["rate"].as_f64().unwrap_or(0.0)
    }
    fn requests(&self) -> f64 {
        self.out["requests"].as_f64().unwrap_or(0.0).max(1.0)
    }
    fn p50(&self) -> f64 {
        self.out["p50_ms"].as_f64().unwrap_or(f64::NAN)
    }
    fn p99(&self) -> f64 {
        self.out["p99_ms"].as_f64().unwrap_or(f64::NAN)
    }
    /// CPU microseconds per request of the load generator, the server and the proxy.
    fn per_request_us(&self) -> (f64, f64, f64) {
        let n = self.requests();
        let lg = self.out["cpu_ms"].as_f64().unwrap_or(f64::NAN) * 1e3 / n;
        (
            lg,
            self.server_cpu.as_secs_f64() * 1e6 / n,
            self.proxy_cpu.as_secs_f64() * 1e6 / n,
        )
    }
}

pub(crate) fn bench(root: &Path) -> Result {
    let sh = crate::shell()?;
    xshell::cmd!(
        sh,
        "cargo build --release -p fhirconn-tests --bin fhirconn-loadgen"
    )
    .run()?;
    let secs: u64 = std::env::var("FHIRCONN_PROXY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = root.join("target/bench-proxy");
    std::fs::create_dir_all(&dir)?;
    let loadgen = root.join("target/release/fhirconn-loadgen");
    let mut bins = vec![root.join("target/dist/fhirconn")];
    let baseline = std::env::var_os("FHIRCONN_PROXY_BASELINE").map(PathBuf::from);
    bins.extend(baseline.clone());
    println!(
        "\nproxy vs direct, separate processes: fhirconn-loadgen ({CLIENTS} keep-alive clients, \
         1 tokio thread) -> fhirconn proxy (target/dist, token required, access log to \
         /dev/null) -> fhirconn-testkit serve (release, bearer), GET Patient/1, {secs} s per \
         run after 1 s of warm-up; direct and via-proxy runs in turn"
    );

    // (a) nothing pinned.
    let rig = Rig::start(root, &dir, &bins[..1], None, None, None)?;
    let (d, p) = rig.runs(&loadgen, None, secs, None)?;
    report(
        "(a) shared: loadgen, server and proxy unpinned, all on both cores",
        &d,
        &p[0],
    );
    drop(rig);

    // (b) server + loadgen on CPU 0, proxy on CPU 1.
    let nginx = nginx_binary();
    let rig = Rig::start(root, &dir, &bins, Some("0"), Some("1"), nginx.as_deref())?;
    let (d, p) = rig.runs(&loadgen, Some("0"), secs, None)?;
    report(
        "(b) sidecar: loadgen + server pinned to CPU 0 (taskset -c 0), proxy pinned to CPU 1 \
         (taskset -c 1)",
        &d,
        &p[0],
    );
    if let (Some(base), Some(b)) = (&baseline, p.get(1)) {
        let (_, _, now) = p[0].per_request_us();
        let (_, _, before) = b.per_request_us();
        println!(
            "    baseline {} in the same shape: {:.0} req/s ({:.1}% of direct), proxy {before:.1} \
             us per proxied request (this tree: {now:.1} us, {:+.1}%)",
            base.display(),
            b.rate(),
            100.0 * b.rate() / d.rate().max(1.0),
            100.0 * (now - before) / before
        );
    }
    match (&nginx, p.last()) {
        (Some(_), Some(n)) if p.len() > bins.len() => report_reference(&d, &p[0], n),
        _ => println!("    (no nginx on PATH: install it for the reference proxy's row)"),
    }
    // (c) the same shape, paced to half of the direct saturation rate.
    let half = (d.rate() / 2.0).round();
    let (dc, pc) = rig.runs(&loadgen, Some("0"), secs, Some(half))?;
    let pc = &pc[0];
    println!(
        "(c) paced: {CLIENTS} clients sending {half:.0} req/s in all (half of (b)'s direct \
         saturation), shape (b): direct {:.0} req/s p50 {:.3} ms p99 {:.3} ms; via proxy {:.0} \
         req/s p50 {:.3} ms p99 {:.3} ms; p50 added {:+.3} ms",
        dc.rate(),
        dc.p50(),
        dc.p99(),
        pc.rate(),
        pc.p50(),
        pc.p99(),
        pc.p50() - dc.p50()
    );
    let (_, server_us, _) = dc.per_request_us();
    let (_, _, proxy_us) = pc.per_request_us();
    println!(
        "    CPU at the paced rate: server {server_us:.1} us per direct request, proxy \
         {proxy_us:.1} us per proxied request"
    );
    if pc.rate() < 0.95 * half {
        // The proxy could not keep up with that rate: its p50 above is queueing. The same at
        // half of the proxy's own saturation rate shows what it adds when it keeps up.
        let below = (p[0].rate() / 2.0).round();
        let (dl, pl) = rig.runs(&loadgen, Some("0"), secs, Some(below))?;
        println!(
            "    the proxy does not keep up with {half:.0} req/s on one core; at {below:.0} \
             req/s (half of its own saturation in (b)): direct p50 {:.3} ms, via proxy p50 \
             {:.3} ms ({:.0} req/s): p50 added {:+.3} ms",
            dl.p50(),
            pl[0].p50(),
            pl[0].rate(),
            pl[0].p50() - dl.p50()
        );
    }
    Ok(())
}

fn report(shape: &str, d: &Run, p: &Run) {
    let (d_lg, d_server, _) = d.per_request_us();
    let (p_lg, p_server, p_proxy) = p.per_request_us();
    println!(
        "{shape}:\n    direct {:.0} req/s (p50 {:.3} ms, p99 {:.3} ms); via proxy {:.0} req/s \
         (p50 {:.3} ms, p99 {:.3} ms): {:.1}% of direct, p50 {:+.3} ms at saturation\n    \
         CPU per request: proxy {p_proxy:.1} us per proxied request; server {d_server:.1} us \
         per direct request ({p_server:.1} us behind the proxy); loadgen {d_lg:.1} / \
         {p_lg:.1} us",
        d.rate(),
        d.p50(),
        d.p99(),
        p.rate(),
        p.p50(),
        p.p99(),
        100.0 * p.rate() / d.rate().max(1.0),
        p.p50() - d.p50(),
    );
    for (what, r) in [("direct", d), ("proxy", p)] {
        let errors = r.out["errors"].as_u64().unwrap_or(0);
        if errors > 0 {
            println!("    warning: {errors} failed requests ({what})");
        }
    }
}

impl Rig {
    fn start(
        root: &Path,
        dir: &Path,
        proxy_bins: &[PathBuf],
        server_cpus: Cpus,
        proxy_cpus: Cpus,
        nginx: Option<&Path>,
    ) -> Result<Self> {
        let testkit = root.join("target/release/fhirconn-testkit");
        // `taskset` execs the program: the children's pids are the server's and the proxies'.
        let (server, info) = match server_cpus {
            Some(list) => start_testkit(
                Path::new("taskset"),
                &["-c", list, path(&testkit)?, "serve"],
            )?,
            None => start_testkit(&testkit, &["serve"])?,
        };
        let server = Running(server);
        let bearer = &info["bearer"];
        let base = bearer["base-url"].as_str().ok_or("no bearer server")?;
        let token = bearer["token"].as_str().ok_or("no bearer token")?;
        let config = dir.join("proxy.yaml");
        write_private(
            &config,
            &format!(
                "connections:\n  s:\n    base-url: {base}\n    auth: {{scheme: bearer, \
                 token-file: upstream.token}}\n"
            ),
        )?;
        write_private(&dir.join("upstream.token"), token)?;
        write_private(&dir.join("proxy.token"), PROXY_TOKEN)?;
        let mut proxies = Vec::new();
        for bin in proxy_bins {
            proxies.push(start_proxy(root, dir, bin, &config, proxy_cpus)?);
        }
        if let Some(nginx) = nginx {
            let upstream = base.split_once("://").map_or(base, |(_, r)| r);
            // The reference is optional: an nginx that does not start is reported, not fatal.
            match start_nginx(dir, nginx, upstream, token, proxy_cpus) {
                Ok(p) => proxies.push(p),
                Err(e) => println!("    (reference nginx not started: {e})"),
            }
        }
        Ok(Self {
            server,
            proxies,
            direct_url: format!("{base}/Patient/1"),
            direct_auth: format!("Authorization: Bearer {token}"),
        })
    }

    /// A direct run, then a run through each proxy, each `secs` long after a 1 s warm-up.
    fn runs(
        &self,
        loadgen: &Path,
        cpus: Cpus,
        secs: u64,
        rate: Option<f64>,
    ) -> Result<(Run, Vec<Run>)> {
        let direct = self.run(loadgen, cpus, None, secs, rate)?;
        let mut proxied = Vec::new();
        for p in &self.proxies {
            proxied.push(self.run(loadgen, cpus, Some(p), secs, rate)?);
        }
        Ok((direct, proxied))
    }

    /// One load run, straight to the server (`via` `None`) or through a proxy.
    fn run(
        &self,
        loadgen: &Path,
        cpus: Cpus,
        via: Option<&Proxy>,
        secs: u64,
        rate: Option<f64>,
    ) -> Result<Run> {
        let proxy_auth = format!("Authorization: Bearer {PROXY_TOKEN}");
        let (url, auth) = match via {
            Some(p) => (p.url.as_str(), proxy_auth.as_str()),
            None => (self.direct_url.as_str(), self.direct_auth.as_str()),
        };
        let mut cmd = pinned(cpus, loadgen);
        cmd.args(["--url", url, "--header", auth])
            .args(["--clients", &CLIENTS.to_string()])
            .args(["--seconds", &secs.to_string(), "--warmup", "1"]);
        if let Some(r) = rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        let proxy_cpu = || via.map_or(Ok(Duration::ZERO), |p| p.process.cpu());
        let child = cmd.stdout(Stdio::piped()).spawn()?;
        // The warm-up is not measured: sample the CPU times once it is over.
        std::thread::sleep(Duration::from_secs(1));
        let (s0, p0) = (self.server.cpu()?, proxy_cpu()?);
        let out = child.wait_with_output()?;
        let (s1, p1) = (self.server.cpu()?, proxy_cpu()?);
        if !out.status.success() {
            return Err(format!("fhirconn-loadgen failed on {url}").into());
        }
        let out: Value = serde_json::from_slice(&out.stdout)?;
        Ok(Run {
            out,
            server_cpu: s1.saturating_sub(s0),
            proxy_cpu: p1.saturating_sub(p0),
        })
    }
}

/// Starts `bin proxy` on a free loopback port (its access log to /dev/null) and waits until
/// it listens.
fn start_proxy(root: &Path, dir: &Path, bin: &Path, config: &Path, cpus: Cpus) -> Result<Proxy> {
    let port = free_port()?;
    let child = pinned(cpus, bin)
        .arg("-c")
        .arg(config)
        .arg("--plugin-dir")
        .arg(root.join("target/dist/plugins"))
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(dir.join("proxy.token"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let process = Running(child);
    wait_listening(port, &bin.display().to_string())?;
    Ok(Proxy {
        process,
        url: format!("http://127.0.0.1:{port}/s/Patient/1"),
    })
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()).into())
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx from `FHIRCONN_PROXY_NGINX` or `PATH`.
fn nginx_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FHIRCONN_PROXY_NGINX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The reference row: nginx in the sidecar shape against direct and `fhirconn proxy`.
fn report_reference(d: &Run, ours: &Run, n: &Run) {
    let (_, _, ours_us) = ours.per_request_us();
    let (_, _, nginx_us) = n.per_request_us();
    println!(
        "    reference nginx in the same shape: {:.0} req/s ({:.1}% of direct, p50 {:+.3} ms), \
         {nginx_us:.1} us CPU per proxied request; fhirconn proxy: {:.1}% of nginx's \
         throughput, {:.2}x its CPU per request",
        n.rate(),
        100.0 * n.rate() / d.rate().max(1.0),
        n.p50() - d.p50(),
        100.0 * ours.rate() / n.rate().max(1.0),
        ours_us / nginx_us.max(f64::MIN_POSITIVE),
    );
    let errors = n.out["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        println!("    warning: {errors} failed requests (nginx)");
    }
}

/// Starts nginx as a proxy like `fhirconn proxy`'s: the same token required, the upstream
/// credential added, keep-alive both ways, one worker process (the pid measured).
fn start_nginx(dir: &Path, nginx: &Path, upstream: &str, token: &str, cpus: Cpus) -> Result<Proxy> {
    let port = free_port()?;
    let (authority, base_path) = upstream.split_once('/').unwrap_or((upstream, ""));
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    write_private(
        &conf,
        &format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log /dev/null;\n  keepalive_requests 1000000;\n\
             client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
             fastcgi_temp_path {d}/nginx-fastcgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
             uwsgi_temp_path {d}/nginx-uwsgi;\n\
             upstream up {{ server {authority}; keepalive 64; keepalive_requests 1000000; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location /s/ {{\n\
             if ($http_authorization != \"Bearer {PROXY_TOKEN}\") {{ return 401; }}\n\
             proxy_pass http://up/{base_path}/;\n      proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header Authorization \"Bearer {token}\";\n    }}\n  }}\n}}\n"
        ),
    )?;
    let child = pinned(cpus, nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", nginx.display()))?;
    let process = Running(child);
    wait_listening(port, "nginx")?;
    Ok(Proxy {
        process,
        url: format!("http://127.0.0.1:{port}/s/Patient/1"),
    })
}

/// Waits until something listens on loopback `port` (at most 20 s); `what` names it.
fn wait_listening(port: u16, what: &str) -> Result {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on port {port} within 20 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
