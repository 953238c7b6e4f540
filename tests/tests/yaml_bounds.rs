//! Security boundary: configuration parsing is bounded. Hostile YAML (an alias bomb hidden in
//! complex keys, 20,000 levels of nesting) is refused with exit 2 and a file:line:col, by
//! `config check` and by `import dsf` (which reads files from other sites), in bounded memory
//! and without aborting.

use fhirconn_tests::{fhirconn_bin, plugin_dir};
use std::path::Path;
use std::process::Command;

/// The address-space limit the child runs under: the old code needed gigabytes for the bomb
/// (and aborted with 134 when an allocation failed); the new one stays far below.
const ADDRESS_SPACE_KB: u64 = 256 * 1024;

struct Run {
    code: Option<i32>,
    stderr: String,
    /// Peak resident set size in KiB, when `/usr/bin/time` is there to say.
    max_rss_kb: Option<u64>,
}

/// Runs `fhirconn ARGS` in `dir` under an address-space limit (`ulimit -v`, inherited by
/// the exec'd binary), measuring its peak RSS with GNU time when available.
fn run_bounded(dir: &Path, args: &[&str]) -> Run {
    let time = Path::new("/usr/bin/time");
    let rss_file = dir.join("rss.txt");
    let _ = std::fs::remove_file(&rss_file);
    let mut script = format!("ulimit -v {ADDRESS_SPACE_KB} || exit 99; exec ");
    if time.exists() {
        script.push_str(&format!("/usr/bin/time -f %M -o '{}' ", rss_file.display()));
    }
    script.push_str("\"$0\" \"$@\"");
    let out = Command::new("sh")
        .current_dir(dir)
        .env_remove("FHIRCONN_CONFIG")
        .env_remove("FHIRCONN_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .arg("-c")
        .arg(&script)
        .arg(fhirconn_bin())
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(args)
        .output()
        .unwrap();
    let max_rss_kb = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()));
    Run {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        max_rss_kb,
    }
}

fn assert_refused(run: &Run, file: &str, what: &[&str]) {
    assert_eq!(
        run.code,
        Some(2),
        "{file}: expected exit 2 (refused), not an abort or a crash: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("{file}:")) && what.iter().any(|w| run.stderr.contains(w)),
        "{file}: the error names the place and the reason: {}",
        run.stderr
    );
    // file:line:col
    let located = run.stderr.match_indices(&format!("{file}:")).any(|(i, m)| {
        let mut parts = run.stderr[i + m.len()..].splitn(3, ':');
        parts.next().is_some_and(|l| l.parse::<u32>().is_ok())
            && parts.next().is_some_and(|c| c.parse::<u32>().is_ok())
    });
    assert!(located, "{file}: no line number: {}", run.stderr);
    if let Some(kb) = run.max_rss_kb {
        assert!(kb < 64 * 1024, "{file}: peak RSS {kb} KiB");
    }
}

#[test]
fn an_alias_bomb_in_complex_keys_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = fhirconn_testkit::hostile::documents::complex_key_alias_bomb();
    assert_eq!(bomb.len(), 453);
    std::fs::write(dir.path().join("bomb.yaml"), &bomb).unwrap();
    let run = run_bounded(dir.path(), &["--config", "bomb.yaml", "config", "check"]);
    assert_refused(&run, "bomb.yaml", &["plain strings"]);
    let run = run_bounded(dir.path(), &["import", "dsf", "bomb.yaml"]);
    assert_refused(&run, "bomb.yaml", &["plain strings"]);
    // Wrapped in the DSF environment variable: the inner document is bounded too.
    let wrapped = serde_json::json!({ "DEV_DSF_BPE_FHIR_CLIENT_CONNECTIONS_CONFIG": bomb });
    std::fs::write(dir.path().join("env.yaml"), wrapped.to_string()).unwrap();
    let run = run_bounded(dir.path(), &["import", "dsf", "env.yaml"]);
    assert_refused(&run, "env.yaml", &["plain strings"]);
}

#[test]
fn twenty_thousand_levels_of_nesting_are_refused_without_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deep.yaml"), "- ".repeat(20_000) + "x\n").unwrap();
    std::fs::write(
        dir.path().join("flow.yaml"),
        "a: ".to_string() + &"[".repeat(20_000) + &"]".repeat(20_000) + "\n",
    )
    .unwrap();
    // Flow collections: the scanner's own limit (128 open brackets) may speak first.
    let why = &["deeper than 64", "recursion limit"];
    for file in ["deep.yaml", "flow.yaml"] {
        let run = run_bounded(dir.path(), &["--config", file, "config", "check"]);
        assert_refused(&run, file, why);
        let run = run_bounded(dir.path(), &["import", "dsf", file]);
        assert_refused(&run, file, why);
    }
}

#[test]
fn aliases_of_long_strings_and_oversized_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 400 KB repeated ten times: few nodes, many bytes.
    let s = "s".repeat(400_000);
    let y = format!("a: &a {s}\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n");
    std::fs::write(dir.path().join("text.yaml"), y).unwrap();
    let run = run_bounded(dir.path(), &["--config", "text.yaml", "config", "check"]);
    assert_refused(&run, "text.yaml", &["bytes of text"]);
    // Over the size cap: refused before parsing (no position: the whole file is the problem).
    let big = "# padding\n".repeat(110_000);
    std::fs::write(dir.path().join("big.yaml"), big).unwrap();
    let run = run_bounded(dir.path(), &["import", "dsf", "big.yaml"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("limit is 1048576 bytes"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_largest_accepted_files_parse_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Just under the node budget: ~4,900 connections (each also fails validation: more work).
    let many: String = (0..4_900)
        .map(|i| format!("  c{i}: {{base-url: x}}\n"))
        .collect();
    std::fs::write(
        dir.path().join("many.yaml"),
        format!("connections:\n{many}"),
    )
    .unwrap();
    let run = run_bounded(dir.path(), &["--config", "many.yaml", "config", "check"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("base-url"), "parsed, then validated");
    if let Some(kb) = run.max_rss_kb {
        assert!(kb < 64 * 1024, "peak RSS {kb} KiB");
    }
}
