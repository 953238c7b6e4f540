//! Tidy checks over the source tree: the architecture invariants that code review would
//! otherwise have to remember (see ARCHITECTURE.md, "Architecture invariants").

use std::path::{Path, PathBuf};

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if name == "target" || name.starts_with('.') {
                continue;
            }
            files(&p, ext, out);
        } else if name.ends_with(ext) {
            out.push(p);
        }
    }
}

fn workspace_files(ext: &str) -> Vec<PathBuf> {
    let root = fhirconn_tests::root();
    let mut out = Vec::new();
    for top in ["crates", "plugins", "host", "tests", "xtask"] {
        files(&root.join(top), ext, &mut out);
    }
    assert!(out.len() >= 5, "the walk found too few files: {out:?}");
    out
}

#[test]
fn every_rust_file_opens_with_a_doc_line_saying_what_it_is_for() {
    let missing: Vec<_> = workspace_files(".rs")
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text.starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:#?}"
    );
}

#[test]
fn only_fhirconn_abi_depends_on_abi_stable_or_libloading() {
    let root = fhirconn_tests::root();
    let offenders: Vec<_> = workspace_files("Cargo.toml")
        .into_iter()
        .filter(|p| !p.starts_with(root.join("crates/fhirconn-abi")))
        // The frozen copy of the 1.0.0 interface and the plugin built against it.
        .filter(|p| !p.starts_with(root.join("tests/fixtures/abi-v1")))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with("abi_stable") || l.starts_with("libloading")
            })
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "only crates/fhirconn-abi may name abi_stable or libloading: {offenders:#?}"
    );
}

#[test]
fn plugins_do_no_io_of_their_own() {
    // Plugins reach files, the environment and the network only through HostServices, so the
    // host can resolve paths, redact logs, apply proxies and timeouts in one place.
    let root = fhirconn_tests::root();
    let mut plugin_sources = Vec::new();
    files(&root.join("plugins"), ".rs", &mut plugin_sources);
    assert!(!plugin_sources.is_empty());
    let forbidden = [
        "std::fs",
        "std::net",
        "std::env",
        "reqwest",
        "tokio",
        "std::process",
    ];
    let mut hits = Vec::new();
    for p in plugin_sources {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            // Tests may write temporary files to feed the host mock.
            if line.trim_start().starts_with("mod tests") {
                break;
            }
            for f in forbidden {
                if line.contains(f) {
                    hits.push(format!("{}:{}: {f}", p.display(), n + 1));
                }
            }
        }
    }
    assert!(hits.is_empty(), "plugins must use HostServices: {hits:#?}");
}

/// Files holding secrets or patient data are written through `fhirconn_host::safe_write`
/// (random temporary name, `O_EXCL|O_NOFOLLOW`, 0600 from creation, rename). So the host's
/// code outside that module (and outside `#[cfg(test)]` code) creates no file another way.
/// A line that must (a lock file, opened without truncation) says so with `safe-write: ok`.
#[test]
fn host_files_are_written_through_safe_write() {
    let root = fhirconn_tests::root();
    let mut sources = Vec::new();
    files(&root.join("host/src"), ".rs", &mut sources);
    let patterns = [
        "fs::write(",
        "File::create(",
        "fs::rename(",
        ".create(true)",
        "OpenOptions::new()",
    ];
    let mut offenders = Vec::new();
    for p in sources.iter().filter(|p| !p.ends_with("safe_write.rs")) {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        // Production code only: unit tests create fixtures freely.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut allowed_next = false;
        for (n, line) in code.lines().enumerate() {
            let marked = line.contains("safe-write: ok");
            if patterns.iter().any(|pat| line.contains(pat)) && !marked && !allowed_next {
                offenders.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
            }
            allowed_next = marked && line.trim_start().starts_with("//");
        }
    }
    assert!(
        offenders.is_empty(),
        "write these through fhirconn_host::safe_write (or mark a reviewed exception with a \
         `// safe-write: ok (why)` comment on the line before): {offenders:#?}"
    );
}
