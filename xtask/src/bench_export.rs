//! `cargo xtask bench`, bulk export: ~1 GB of NDJSON in files of 50–200 MB from a loopback
//! testkit server, downloaded by `fhirconn export` (4 at a time, NDJSON checked, files
//! fsynced) against `curl --parallel --parallel-max 4` fetching the same files (no checks), in
//! the same run: wall time ratio and fhirconn's peak RSS.

use crate::{median, start_testkit, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// File sizes in MB (1,000 MB in all).
const SIZES_MB: [u64; 8] = [200, 50, 150, 100, 200, 75, 125, 100];
/// Runs of each, alternated.
const RUNS: usize = 3;

/// Starts the testkit's bulk server, runs both sides [`RUNS`] times, prints the medians.
pub(crate) fn bench(root: &Path) -> Result {
    let list = SIZES_MB.map(|n| n.to_string()).join(",");
    let (mut child, info) = start_testkit(
        &root.join("target/release/fhirconn-testkit"),
        &["serve", "--export-mb", &list],
    )?;
    let result = compare(root, &info["bulk"]);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn compare(root: &Path, bulk: &serde_json::Value) -> Result {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let base = s(&bulk["base-url"]);
    let token = s(&bulk["token"]);
    let sizes: Vec<u64> = bulk["file-sizes"]
        .as_array()
        .ok_or("the testkit named no bulk files")?
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    let total: u64 = sizes.iter().sum();
    let dir = root.join("target/bench/export");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token.txt"), &token)?;
    let config = dir.join("bulk.yaml");
    std::fs::write(
        &config,
        format!(
            "connections:\n  bulk:\n    base-url: {base}\n    \
             auth: {{scheme: bearer, token-file: token.txt}}\n"
        ),
    )?;
    let out = dir.join("out");
    let fhirconn = root.join("target/dist/fhirconn");
    let mut curl_args: Vec<String> = [
        "-sf",
        "--parallel",
        "--parallel-max",
        "4",
        "-H",
        &format!("Authorization: Bearer {token}"),
    ]
    .map(String::from)
    .to_vec();
    for i in 0..sizes.len() {
        curl_args.push("-o".into());
        curl_args.push(out.join(format!("gen-{i}.ndjson")).display().to_string());
        curl_args.push(format!("{base}/$export-file/0/gen-{i}.ndjson"));
    }
    let (mut ours, mut theirs, mut rss, mut curl_rss) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let (t, kb) = measured(
            Command::new(&fhirconn)
                .arg("-c")
                .arg(&config)
                .args(["export", "bulk", "--out"])
                .arg(&out),
            &out,
            total,
            sizes.len(),
        )?;
        ours.push(t);
        rss.push(kb);
        let (t, kb) = measured(
            Command::new("curl").args(&curl_args),
            &out,
            total,
            sizes.len(),
        )?;
        theirs.push(t);
        curl_rss.push(kb);
    }
    let (o, c) = (median(ours), median(theirs));
    let peak = rss.iter().max().copied().unwrap_or_default();
    println!(
        "\nbulk export, {} files, {:.0} MB, 4 in parallel, median of {RUNS}:\n  \
         fhirconn export {:.2} s ({:.0} MB/s), peak RSS {:.1} MiB (max of {RUNS})   \
         curl --parallel-max 4: {:.2} s, peak RSS {:.1} MiB   ratio {:.2}x",
        sizes.len(),
        total as f64 / 1e6,
        o.as_secs_f64(),
        total as f64 / 1e6 / o.as_secs_f64(),
        peak as f64 / 1024.0,
        c.as_secs_f64(),
        curl_rss.iter().max().copied().unwrap_or_default() as f64 / 1024.0,
        o.as_secs_f64() / c.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// Runs `cmd` under `/usr/bin/time` into an empty `out`, checks it wrote `files` files of
/// `total` bytes, then empties `out`: (wall time, peak RSS in KiB).
fn measured(cmd: &mut Command, out: &Path, total: u64, files: usize) -> Result<(Duration, u64)> {
    let _ = std::fs::remove_dir_all(out);
    if cmd.get_program() == "curl" {
        std::fs::create_dir_all(out)?;
    }
    let rss_file = out.with_extension("rss");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let t = Instant::now();
    let o = timed.output()?;
    let took = t.elapsed();
    if !o.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    let kb: u64 = std::fs::read_to_string(&rss_file)?.trim().parse()?;
    let (mut n, mut bytes) = (0, 0);
    for e in std::fs::read_dir(out)? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".ndjson") {
            n += 1;
            bytes += e.metadata()?.len();
        }
    }
    if (n, bytes) != (files, total) {
        return Err(format!(
            "{cmd:?} wrote {n} files of {bytes} bytes (expected {files} of {total})"
        )
        .into());
    }
    std::fs::remove_dir_all(out)?;
    Ok((took, kb))
}
