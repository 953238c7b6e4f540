//! `cargo xtask bench`, bulk export: ~1 GB of NDJSON in files of 50–200 MB from a loopback
//! testkit server, downloaded by `fhirconn export` (4 at a time, NDJSON checked, files
//! fsynced) against `curl --parallel --parallel-max 4` fetching the same files (no checks), in
//! the same run: wall time ratio and fhirconn's peak RSS. curl does not make its files
//! durable, so the same curl run followed by `sync -d` of its files (an `fdatasync` each) is
//! measured too: the ratio against it is the one for equal work on the disk. CPU time (user,
//! system) of each side says where the rest goes. `FHIRCONN_EXPORT_BASELINE` names another
//! `fhirconn` binary (e.g. built from an earlier commit) measured as a fourth side.

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
    let disk = root.join("target/bench/export/out");
    let result = compare(root, &info["bulk"], &disk, "on disk (target/)");
    // The same on tmpfs, where `fsync` costs nothing: the checks and streaming against curl
    // with equal work on the storage.
    // A private directory (0700, created new: nothing planted in the shared /dev/shm is
    // followed) holds the output and the timing files.
    let shm = Path::new("/dev/shm");
    if result.is_ok() && shm.is_dir() {
        let private = shm.join(format!("fhirconn-bench-export-{}", std::process::id()));
        let made = {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new().mode(0o700).create(&private)
        };
        match made {
            Ok(()) => {
                let tmpfs = compare(
                    root,
                    &info["bulk"],
                    &private.join("out"),
                    "in memory (tmpfs /dev/shm)",
                );
                if let Err(e) = tmpfs {
                    println!("  (the tmpfs comparison did not run to the end: {e})");
                }
                let _ = std::fs::remove_dir_all(&private);
            }
            Err(e) => println!("  (no tmpfs comparison: {}: {e})", private.display()),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Both sides writing into `out` (`place` says where that is).
fn compare(root: &Path, bulk: &serde_json::Value, out: &Path, place: &str) -> Result {
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
    let out = out.to_path_buf();
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
    let mut synced_args = vec!["-c".to_string(), "curl \"$@\" && sync -d \"$0\"/*".into()];
    synced_args.push(out.display().to_string());
    synced_args.extend(curl_args.iter().cloned());
    let fhirconn_args: Vec<String> = vec![
        "-c".into(),
        config.display().to_string(),
        "export".into(),
        "bulk".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    let mut sides: Vec<(&str, &Path, &[String])> = vec![
        ("fhirconn export", &fhirconn, &fhirconn_args),
        ("curl", Path::new("curl"), &curl_args),
        ("curl + sync -d", Path::new("sh"), &synced_args),
    ];
    // Another fhirconn binary (e.g. built from an earlier commit): a before/after in one run.
    let baseline = std::env::var_os("FHIRCONN_EXPORT_BASELINE").map(std::path::PathBuf::from);
    if let Some(b) = &baseline {
        sides.push(("baseline export", b, &fhirconn_args));
    }
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); sides.len()];
    for _ in 0..RUNS {
        for ((_, program, args), runs) in sides.iter().zip(&mut runs) {
            let fresh_dir = *args != fhirconn_args.as_slice();
            runs.push(measured(
                program,
                args,
                fresh_dir,
                &out,
                total,
                sizes.len(),
            )?);
        }
    }
    println!(
        "\nbulk export {place}, {} files, {:.0} MB, 4 in parallel, median of {RUNS} (CPU: user \
         + system of the process, median; RSS: max):",
        sizes.len(),
        total as f64 / 1e6,
    );
    let ours = median(runs[0].iter().map(|m| m.wall).collect());
    for ((name, _, _), runs) in sides.iter().zip(&runs) {
        let wall = median(runs.iter().map(|m| m.wall).collect());
        let user = median(runs.iter().map(|m| m.user).collect());
        let system = median(runs.iter().map(|m| m.system).collect());
        let rss = runs.iter().map(|m| m.rss_kib).max().unwrap_or_default();
        println!(
            "  {name:16} {:5.2} s ({:4.0} MB/s)  CPU {:5.2} + {:5.2} s  peak RSS {:5.1} MiB  \
             fhirconn/this {:.2}x",
            wall.as_secs_f64(),
            total as f64 / 1e6 / wall.as_secs_f64(),
            user.as_secs_f64(),
            system.as_secs_f64(),
            rss as f64 / 1024.0,
            ours.as_secs_f64() / wall.as_secs_f64(),
        );
    }
    let floor = disk_floor(&out, total)?;
    println!(
        "  the storage's floor: {:.2} s to write {:.0} MB durably (one dd, conv=fdatasync), \
         fhirconn/this {:.2}x",
        floor.as_secs_f64(),
        total as f64 / 1e6,
        ours.as_secs_f64() / floor.as_secs_f64(),
    );
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// How long writing `total` bytes of zeros to a file in `out` and `fdatasync`ing them takes
/// (median of [`RUNS`]): the least any export that makes its files durable can take there.
fn disk_floor(out: &Path, total: u64) -> Result<Duration> {
    let mut walls = Vec::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_dir_all(out);
        std::fs::create_dir_all(out)?;
        let _ = Command::new("sync").status();
        let file = out.join("floor.bin");
        let t = Instant::now();
        let ok = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", file.display()))
            .args(["bs=1M", &format!("count={}", total >> 20), "conv=fdatasync"])
            .stderr(Stdio::null())
            .status()?
            .success();
        walls.push(t.elapsed());
        if !ok {
            return Err("dd failed".into());
        }
    }
    std::fs::remove_dir_all(out)?;
    Ok(median(walls))
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
struct Measured {
    wall: Duration,
    user: Duration,
    system: Duration,
    rss_kib: u64,
}

/// Runs `program` under `/usr/bin/time` into an empty `out` (created first when
/// `fresh_dir`), checks it wrote `files` files of `total` bytes, then empties `out` and syncs,
/// so that no run writes back the data of the one before.
fn measured(
    program: &Path,
    args: &[String],
    fresh_dir: bool,
    out: &Path,
    total: u64,
    files: usize,
) -> Result<Measured> {
    let _ = std::fs::remove_dir_all(out);
    if fresh_dir {
        std::fs::create_dir_all(out)?;
    }
    let _ = Command::new("sync").status();
    let times = out.with_extension("time");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M %U %S", "-o"])
        .arg(&times)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let t = Instant::now();
    let o = timed.output()?;
    let wall = t.elapsed();
    if !o.status.success() {
        return Err(format!(
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&o.stderr)
        )
        .into());
    }
    let text = std::fs::read_to_string(&times)?;
    let v: Vec<&str> = text.split_whitespace().rev().take(3).collect();
    let [system, user, rss] = v[..] else {
        return Err(format!("/usr/bin/time said {text:?}").into());
    };
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
            "{} wrote {n} files of {bytes} bytes (expected {files} of {total})",
            program.display()
        )
        .into());
    }
    std::fs::remove_dir_all(out)?;
    Ok(Measured {
        wall,
        user: Duration::from_secs_f64(user.parse()?),
        system: Duration::from_secs_f64(system.parse()?),
        rss_kib: rss.parse()?,
    })
}
