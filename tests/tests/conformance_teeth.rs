//! The conformance suite has teeth: plugins broken on purpose (tests/fixtures/plugin-broken,
//! built into target/plugin-broken by `cargo xtask build-plugins`) each fail the case that
//! targets their flaw; libraries that do not load are failed rows, never skipped; usage errors
//! exit 2. Also: the fuzzer fails its run when a seed input panics.

use fhirconn_tests::{fhirconn_bin, fixture, plugin_dir, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn conformance_bin() -> PathBuf {
    let bin = root().join("target/debug/fhirconn-conformance");
    assert!(
        bin.exists(),
        "run `cargo xtask test` (it builds fhirconn-conformance) first"
    );
    bin
}

fn broken_dir() -> PathBuf {
    let d = root().join("target/plugin-broken");
    assert!(
        d.exists(),
        "run `cargo xtask build-plugins` (it builds the broken fixture plugins) first"
    );
    d
}

/// Runs a command, killing it (and failing the test) after `limit`.
fn run_with_deadline(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes on threads so a full pipe cannot stall the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).unwrap();
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    };
    (output, started.elapsed())
}

fn conformance(dirs: &[&Path], extra: &[&str], limit: Duration) -> (Output, Vec<Value>) {
    let mut cmd = Command::new(conformance_bin());
    for d in dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    cmd.arg("--fhirconn")
        .arg(fhirconn_bin())
        .args(["--format", "json"])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("FHIRCONN_PLUGIN_PATH");
    let (out, _) = run_with_deadline(&mut cmd, limit);
    let rows = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, rows)
}

fn outcome<'a>(rows: &'a [Value], scheme: &str, case: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["scheme"] == scheme && r["case"] == case)
        .unwrap_or_else(|| panic!("no row {scheme} / {case} in {rows:#?}"))
}

fn assert_pass(rows: &[Value], scheme: &str, case: &str) {
    let r = outcome(rows, scheme, case);
    assert_eq!(r["outcome"], "pass", "{scheme} / {case}: {r}");
}

fn assert_fail(rows: &[Value], scheme: &str, case: &str, needle: &str) {
    let r = outcome(rows, scheme, case);
    assert_eq!(r["outcome"], "fail", "{scheme} / {case}: {r}");
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(needle), "{scheme} / {case}: {detail}");
}

/// The mutation check: each plugin broken on purpose fails the case aimed at its flaw (and,
/// where the flaw allows, passes the others, so the failure is specific). A hanging plugin
/// times out and the run still finishes.
#[test]
fn each_plugin_broken_on_purpose_fails_the_case_aimed_at_it() {
    // The hanging scheme with a short case timeout; the others with a generous one (a loaded
    // machine must not turn a slow pass into a timeout).
    let (out, mut rows) = conformance(
        &[&broken_dir()],
        &[
            "--case-timeout",
            "30",
            "--scheme",
            "broken-no-expiry",
            "--scheme",
            "broken-logs-secret",
            "--scheme",
            "broken-twice",
        ],
        Duration::from_secs(400),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, hangs) = conformance(
        &[&broken_dir()],
        &["--case-timeout", "3", "--scheme", "broken-hangs"],
        Duration::from_secs(120),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rows.extend(hangs.into_iter().filter(|r| r["scheme"] == "broken-hangs"));
    // Never reports expiry: the host cannot renew ahead of time.
    assert_fail(
        &rows,
        "broken-no-expiry",
        "renews-across-expiry",
        "no expiry",
    );
    for case in ["passes", "wrong-credentials-diagnosed", "401-retries-once"] {
        assert_pass(&rows, "broken-no-expiry", case);
    }
    // Logs base64 of client-id:secret at debug level.
    assert_fail(
        &rows,
        "broken-logs-secret",
        "no-secret-in-verbose-output",
        "base64 of user:secret",
    );
    for case in ["passes", "renews-across-expiry", "401-retries-once"] {
        assert_pass(&rows, "broken-logs-secret", case);
    }
    // Hangs in authorize: every case that asks it for credentials times out.
    for case in [
        "passes",
        "renews-across-expiry",
        "no-secret-in-verbose-output",
    ] {
        assert_fail(&rows, "broken-hangs", case, "timed out");
    }
    // Authenticates twice (Basic and client_secret): the provider refuses it.
    assert_fail(&rows, "broken-twice", "passes", "more than one method");
    // Panics while describing itself: a failed setup row, not a silent omission.
    assert_fail(
        &rows,
        "broken-describe",
        "setup",
        "panicked while describing",
    );
    // Panics across the interface while describing itself (raw ABI): that aborts the process
    // that loads it, so the suite loads every library in a child first; the others still ran.
    let abort = broken_dir()
        .join(fhirconn_host::plugins::library_file_name("abort"))
        .display()
        .to_string();
    assert_fail(&rows, &abort, "setup", "aborts the process");
    // Figures: how many of the broken fixtures each case catches.
    let broken = [
        "broken-no-expiry",
        "broken-logs-secret",
        "broken-hangs",
        "broken-twice",
        "broken-describe",
        &abort,
    ];
    let mut cases: Vec<&str> = Vec::new();
    for r in &rows {
        let c = r["case"].as_str().unwrap_or_default();
        if !cases.contains(&c) {
            cases.push(c);
        }
    }
    for c in cases {
        let caught: Vec<&str> = broken
            .iter()
            .copied()
            .filter(|s| {
                rows.iter()
                    .any(|r| r["scheme"] == *s && r["case"] == c && r["outcome"] == "fail")
            })
            .collect();
        eprintln!(
            "{c}: catches {} of {}: {caught:?}",
            caught.len(),
            broken.len()
        );
    }
}

/// A library that does not load (wrong ABI, not a library, truncated, duplicate schemes) is a
/// failed row naming the file; the libraries that do load are still tested.
#[test]
fn a_library_that_does_not_load_is_a_failed_row_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lib = |name: &str| fhirconn_host::plugins::library_file_name(name);
    std::fs::copy(
        fixture("fhirconn_abi_mismatch"),
        d.join(lib("abi_mismatch")),
    )
    .unwrap();
    std::fs::copy(fixture("fhirconn_twins"), d.join(lib("twins"))).unwrap();
    std::fs::copy(plugin_dir().join(lib("basic")), d.join(lib("basic"))).unwrap();
    // Loads, but the suite has no fixture for its scheme (no garbage.conformance.json).
    std::fs::copy(fixture("fhirconn_garbage"), d.join(lib("garbage"))).unwrap();
    std::fs::write(d.join(lib("not_a_plugin")), "not a library").unwrap();
    let whole = std::fs::read(plugin_dir().join(lib("bearer"))).unwrap();
    std::fs::write(d.join(lib("cut")), &whole[..whole.len() / 3]).unwrap();
    let (out, rows) = conformance(&[d], &["--case-timeout", "20"], Duration::from_secs(240));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (file, needle) in [
        (
            "abi_mismatch",
            "does not match this fhirconn's plugin interface",
        ),
        ("twins", "exported by two libraries"),
        ("not_a_plugin", "cannot load plugin"),
        ("cut", "truncated"),
    ] {
        let path = d.join(lib(file)).display().to_string();
        assert_fail(&rows, &path, "setup", needle);
        assert_fail(&rows, &path, "setup", &lib(file));
    }
    assert_fail(
        &rows,
        "garbage",
        "setup",
        "no conformance fixture for scheme 'garbage'",
    );
    for case in [
        "passes",
        "wrong-credentials-diagnosed",
        "no-secret-in-verbose-output",
    ] {
        assert_pass(&rows, "basic", case);
    }
    // `none` has nothing secret: the leak case does not apply (it is not a pass).
    assert_eq!(
        outcome(&rows, "none", "no-secret-in-verbose-output")["outcome"],
        "not-applicable"
    );
}

#[test]
fn a_missing_or_empty_plugin_dir_or_an_unknown_scheme_is_a_usage_error() {
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("missing");
    for (args, needle) in [
        (
            vec!["--plugin-dir", missing.to_str().unwrap()],
            "plugin directory",
        ),
        (
            vec!["--plugin-dir", empty.path().to_str().unwrap()],
            "holds no fhirconn plugin",
        ),
        (
            vec![
                "--plugin-dir",
                plugin_dir().to_str().unwrap(),
                "--scheme",
                "no-such-scheme",
            ],
            "no loaded library provides scheme 'no-such-scheme'",
        ),
    ] {
        let (out, _) = run_with_deadline(
            Command::new(conformance_bin())
                .args(&args)
                .arg("--fhirconn")
                .arg(fhirconn_bin()),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A seed input that panics is a finding: the fuzz run fails.
#[test]
fn the_fuzzer_fails_when_a_seed_panics() {
    let (out, _) = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_fhirconn-fuzz")).args([
            "selftest-panic",
            "--seconds",
            "1",
        ]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FINDING selftest-panic: seed 0 panics"),
        "{stdout}"
    );
}
