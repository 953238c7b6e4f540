//! `cargo xtask bench`: criterion benchmarks, whole-process fhirconn vs curl, bulk export.

use crate::build::dist;
use crate::{bench_export, median, project_root, shell, start_testkit, write_private, Result};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xshell::cmd;

/// A part of `cargo xtask bench`, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Part {
    /// Criterion: authorize across the ABI, request overhead, soak.
    Criterion,
    /// The proxy against direct requests, and the fleet cache's hit path (needs redis-server).
    Proxy,
    /// Criterion: per-request signing through the host vs a direct call.
    Sign,
    /// Whole-process `fhirconn test` vs curl, plugin loading, 1,000 connections.
    WholeProcess,
    /// Bulk export vs curl.
    Export,
}

pub(crate) fn bench(only: &[Part]) -> Result {
    let sh = shell()?;
    let root = project_root();
    let run = |p: Part| only.is_empty() || only.contains(&p);
    dist()?;
    cmd!(
        sh,
        "cargo build --release -p fhirconn-testkit --bin fhirconn-testkit"
    )
    .run()?;
    let plugin_dir = root.join("target/dist/plugins");
    if run(Part::Criterion) {
        criterion(&sh, &plugin_dir)?;
    }
    if run(Part::Proxy) {
        crate::bench_proxy::bench(&root)?;
        // The proxy against direct requests, and the fleet cache's hit path (a real Redis).
        cmd!(sh, "cargo bench -p fhirconn-tests --bench fleet_proxy")
            .env("FHIRCONN_TEST_PLUGIN_DIR", plugin_dir)
            .run()?;
    }
    if run(Part::Sign) {
        sign(&sh, &root)?;
    }
    if run(Part::WholeProcess) {
        whole_process(&root)?;
    }
    if run(Part::Export) {
        bench_export::bench(&root)?;
    }
    Ok(())
}

/// Criterion: authorize across the ABI vs a direct call, request overhead, soak.
fn criterion(sh: &xshell::Shell, plugin_dir: &Path) -> Result {
    cmd!(sh, "cargo bench -p fhirconn-tests --bench authorize")
        .env("FHIRCONN_TEST_PLUGIN_DIR", plugin_dir)
        .run()?;
    cmd!(sh, "cargo bench -p fhirconn-tests --bench request")
        .env("FHIRCONN_TEST_PLUGIN_DIR", plugin_dir)
        .run()?;
    cmd!(sh, "cargo bench -p fhirconn-tests --bench soak")
        .env("FHIRCONN_TEST_PLUGIN_DIR", plugin_dir)
        .run()?;
    Ok(())
}

/// Criterion: per-request signing (the vendor-hmac example, built in release like the
/// bench) through the host vs a direct call.
fn sign(sh: &xshell::Shell, root: &Path) -> Result {
    let vendor = root.join("tests/vendor-hmac-plugin/Cargo.toml");
    let fixture_build = root.join("target/fixture-build");
    cmd!(
        sh,
        "cargo build --release --manifest-path {vendor} --target-dir {fixture_build}"
    )
    .run()?;
    let vendor_dir = root.join("target/dist/vendor-plugins");
    std::fs::create_dir_all(&vendor_dir)?;
    let lib = format!(
        "{}fhirconn_vendor_hmac{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    crate::build::replace_file(
        &fixture_build.join("release").join(&lib),
        &vendor_dir.join(&lib),
    )?;
    cmd!(sh, "cargo bench -p fhirconn-tests --bench sign")
        .env("FHIRCONN_TEST_VENDOR_DIR", &vendor_dir)
        .run()?;
    Ok(())
}

/// Runs a command with its output discarded; its wall time if it succeeded.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output()?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(took)
}

fn curl() -> Command {
    let mut c = Command::new("curl");
    c.args([
        "-sf",
        "-o",
        "/dev/null",
        "-H",
        "Accept: application/fhir+json",
    ]);
    c
}

/// `application/x-www-form-urlencoded` of one value (RFC 6749 §2.3.1 for Basic credentials).
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A token from the endpoint by curl; the whole exchange is timed by the caller.
fn curl_token(args: &[String]) -> Result<String> {
    let out = Command::new("curl").args(["-sf"]).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "curl token request failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["access_token"].as_str().unwrap_or_default().to_string())
}

/// Whole process, per scheme: `fhirconn test ID` vs curl doing the same by hand (token
/// request, then `GET {base}/metadata`), same servers, same run, median of 15 each.
fn whole_process(root: &Path) -> Result {
    let (mut child, info) =
        start_testkit(&root.join("target/release/fhirconn-testkit"), &["serve"])?;
    let result = whole_process_runs(root, &info);
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// A string field of the testkit's description (empty if absent).
fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The measurements of [`whole_process`], against the running testkit described by `info`.
fn whole_process_runs(root: &Path, info: &Value) -> Result {
    let dir = root.join("target/bench");
    write_bench_files(&dir, info)?;
    let runs = 15;
    versus_curl(root, &dir, info, runs)?;
    plugin_loading(root, runs)?;
    thousand_connections(root, &dir, info)
}

/// The credentials' files and one configuration file per connection in `dir`.
fn write_bench_files(dir: &Path, info: &Value) -> Result {
    std::fs::create_dir_all(dir)?;
    let (basic, bearer, oauth) = (&info["basic"], &info["bearer"], &info["oauth"]);
    std::fs::write(dir.join("pw.txt"), s(&basic["password"]))?;
    std::fs::write(dir.join("token.txt"), s(&bearer["token"]))?;
    std::fs::write(dir.join("secret.txt"), s(&oauth["client-secret"]))?;
    write_private(&dir.join("key.pem"), &s(&oauth["private-key-pem"]))?;
    let mtls = &info["mtls"];
    std::fs::write(dir.join("ca.pem"), s(&mtls["ca-pem"]))?;
    std::fs::write(dir.join("client.crt"), s(&mtls["certificate-pem"]))?;
    write_private(&dir.join("client.key"), &s(&mtls["private-key-pem"]))?;
    // One file per connection: each run loads exactly one scheme, as a user testing one
    // server would.
    let connections = [
        ("basic", format!("base-url: {}\n    auth: {{scheme: basic, username: {}, password-file: pw.txt}}",
            s(&basic["base-url"]), s(&basic["username"]))),
        ("bearer", format!("base-url: {}\n    auth: {{scheme: bearer, token-file: token.txt}}",
            s(&bearer["base-url"]))),
        ("oidc", format!("base-url: {}\n    auth: {{scheme: oidc-client-credentials, token-url: '{}', client-id: {}, client-secret-file: secret.txt}}",
            s(&oauth["base-url"]), s(&oauth["token-endpoint"]), s(&oauth["client-id"]))),
        ("smart", format!("base-url: {}\n    auth: {{scheme: smart-backend, token-url: '{}', client-id: {}, private-key-file: key.pem, kid: {}, scope: system/*.rs}}",
            s(&oauth["base-url"]), s(&oauth["token-endpoint"]), s(&oauth["smart-client-id"]), s(&oauth["kid"]))),
        ("mtls", format!("base-url: {}\n    trusted-root-certificates-file: ca.pem\n    auth: {{scheme: mtls, certificate-file: client.crt, private-key-file: client.key}}",
            s(&mtls["base-url"]))),
    ];
    for (id, body) in &connections {
        std::fs::write(
            dir.join(format!("{id}.yaml")),
            format!("connections:\n  {id}:\n    {body}\n"),
        )?;
    }
    Ok(())
}

/// `fhirconn test ID` vs curl by hand, per scheme, median of `runs` each.
fn versus_curl(root: &Path, dir: &Path, info: &Value, runs: usize) -> Result {
    let ours = |id: &str| {
        timed(
            Command::new(root.join("target/dist/fhirconn"))
                .arg("-c")
                .arg(dir.join(format!("{id}.yaml")))
                .args(["test", id]),
        )
    };
    let mut assertions = info["oauth"]["presigned-assertions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter();
    println!("\nwhole process, median of {runs} runs each (loopback):");
    for scheme in ["basic", "bearer", "oidc", "smart", "mtls"] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            a.push(ours(scheme)?);
            let t = Instant::now();
            curl_once(scheme, dir, info, &mut assertions)?;
            b.push(t.elapsed());
        }
        let (o, c) = (median(a), median(b));
        let how = match scheme {
            "oidc" => "curl token + curl GET",
            "smart" => "curl token (pre-signed assertion) + curl GET",
            "mtls" => "curl --cert --key --cacert GET",
            _ => "curl GET",
        };
        println!(
            "  {scheme:7} fhirconn test {:6.1} ms   {how}: {:6.1} ms   ratio {:.2}x",
            o.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            o.as_secs_f64() / c.as_secs_f64()
        );
    }
    Ok(())
}

/// What `fhirconn test` does for `scheme`, done by hand with curl (the caller times it).
fn curl_once(
    scheme: &str,
    dir: &Path,
    info: &Value,
    assertions: &mut impl Iterator<Item = Value>,
) -> Result {
    let (basic, bearer, oauth, mtls) = (
        &info["basic"],
        &info["bearer"],
        &info["oauth"],
        &info["mtls"],
    );
    let metadata = |base: &Value| format!("{}/metadata", s(base));
    let bearer_get = |token: &str, base: &Value| -> Result {
        timed(
            curl()
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg(metadata(base)),
        )
        .map(drop)
    };
    let token_url = s(&oauth["token-endpoint"]);
    match scheme {
        "basic" => {
            timed(
                curl()
                    .arg("-u")
                    .arg(format!(
                        "{}:{}",
                        s(&basic["username"]),
                        s(&basic["password"])
                    ))
                    .arg(metadata(&basic["base-url"])),
            )?;
        }
        "bearer" => {
            bearer_get(&s(&bearer["token"]), &bearer["base-url"])?;
        }
        "oidc" => {
            let token = curl_token(&[
                "-u".into(),
                format!(
                    "{}:{}",
                    form_encode(&s(&oauth["client-id"])),
                    form_encode(&s(&oauth["client-secret"]))
                ),
                "-d".into(),
                "grant_type=client_credentials".into(),
                token_url.clone(),
            ])?;
            bearer_get(&token, &oauth["base-url"])?;
        }
        "mtls" => {
            timed(
                curl()
                    .arg("--cert")
                    .arg(dir.join("client.crt"))
                    .arg("--key")
                    .arg(dir.join("client.key"))
                    .arg("--cacert")
                    .arg(dir.join("ca.pem"))
                    .arg(metadata(&mtls["base-url"])),
            )?;
        }
        _ => {
            let assertion = assertions
                .next()
                .map(|v| s(&v))
                .ok_or("out of presigned assertions")?;
            let token = curl_token(&[
                "-d".into(), "grant_type=client_credentials".into(),
                "-d".into(), "scope=system%2F*.rs".into(),
                "-d".into(), "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer".into(),
                "-d".into(), format!("client_assertion={assertion}"),
                token_url.clone(),
            ])?;
            bearer_get(&token, &oauth["base-url"])?;
        }
    }
    Ok(())
}

/// Loading every plugin: `fhirconn schemes` (loads all) minus `fhirconn --version`.
fn plugin_loading(root: &Path, runs: usize) -> Result {
    let bin = root.join("target/dist/fhirconn");
    let plugins = root.join("target/dist/plugins");
    let count = std::fs::read_dir(&plugins)?.count();
    let (mut load, mut base) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        load.push(timed(
            Command::new(&bin)
                .arg("--plugin-dir")
                .arg(&plugins)
                .args(["schemes", "--output", "json"]),
        )?);
        base.push(timed(Command::new(&bin).arg("--version"))?);
    }
    let (l, b) = (median(load), median(base));
    println!(
        "loading all {count} plugins: {:.1} ms (fhirconn schemes {:.1} ms minus fhirconn --version {:.1} ms, medians of {runs})",
        (l.as_secs_f64() - b.as_secs_f64()) * 1e3,
        l.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3
    );
    Ok(())
}

/// A file of 1,000 connections, all tested.
fn thousand_connections(root: &Path, dir: &Path, info: &Value) -> Result {
    let bin = root.join("target/dist/fhirconn");
    let basic = &info["basic"];
    let mut big = String::from("connections:\n");
    for i in 0..1000 {
        big.push_str(&format!(
            "  c{i:04}:\n    base-url: {}\n    auth: {{scheme: basic, username: {}, password-file: pw.txt}}\n",
            s(&basic["base-url"]),
            s(&basic["username"])
        ));
    }
    std::fs::write(dir.join("thousand.yaml"), big)?;
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(timed(
            Command::new(&bin)
                .arg("-c")
                .arg(dir.join("thousand.yaml"))
                .arg("test"),
        )?);
    }
    println!(
        "fhirconn test of 1,000 basic connections (one loopback server): {:.2} s (median of 5)",
        median(times).as_secs_f64()
    );
    Ok(())
}
