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

/// The files ending in `ext` under the given top-level directories of the workspace.
fn files_under(tops: &[&str], ext: &str) -> Vec<PathBuf> {
    let root = fhirconn_tests::root();
    let mut out = Vec::new();
    for top in tops {
        files(&root.join(top), ext, &mut out);
    }
    assert!(out.len() >= 5, "the walk found too few files: {out:?}");
    out
}

fn workspace_files(ext: &str) -> Vec<PathBuf> {
    files_under(&["crates", "plugins", "host", "tests", "xtask"], ext)
}

/// The files among `paths` whose text satisfies `pred`.
fn files_where(
    paths: impl IntoIterator<Item = PathBuf>,
    pred: impl Fn(&str) -> bool,
) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|p| pred(&std::fs::read_to_string(p).unwrap_or_default()))
        .collect()
}

#[test]
fn every_rust_file_opens_with_a_doc_line_saying_what_it_is_for() {
    let missing = files_where(workspace_files(".rs"), |text| !text.starts_with("//!"));
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:#?}"
    );
}

#[test]
fn only_fhirconn_abi_depends_on_abi_stable_or_libloading() {
    let root = fhirconn_tests::root();
    let manifests = workspace_files("Cargo.toml")
        .into_iter()
        .filter(|p| !p.starts_with(root.join("crates/fhirconn-abi")))
        // The frozen copy of the 1.0.0 interface and the plugin built against it.
        .filter(|p| !p.starts_with(root.join("tests/fixtures/abi-v1")));
    let offenders = files_where(manifests, |text| {
        text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("abi_stable") || l.starts_with("libloading")
        })
    });
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
        "File::create_new(",
        "File::options(",
        "fs::copy(",
        "fs::rename(",
        "hard_link(",
        "symlink(",
        ".create(true)",
        ".create_new(true)",
        "OpenOptions::new()",
    ];
    let mut offenders = Vec::new();
    for p in sources.iter().filter(|p| !p.ends_with("safe_write.rs")) {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        // Production code only: unit tests create fixtures freely.
        let code = production_text(&text);
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

/// A package: its name, manifest directory and `(dependency, kind)` pairs.
type Package = (String, PathBuf, Vec<(String, String)>);

/// The workspace's packages from `cargo metadata` (manifests only, no network):
/// `(name, manifest directory, [(dependency, kind)])`, kind `normal`, `dev` or `build`.
fn workspace_packages() -> Vec<Package> {
    let root = fhirconn_tests::root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = v["packages"].as_array().expect("packages").clone();
    packages
        .iter()
        .map(|p| {
            let dir = PathBuf::from(p["manifest_path"].as_str().unwrap_or_default())
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let name = d["name"].as_str().unwrap_or_default().to_string();
                    let kind = d["kind"].as_str().unwrap_or("normal").to_string();
                    (name, kind)
                })
                .collect();
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                dir,
                deps,
            )
        })
        .collect()
}

/// The dependency directions of ARCHITECTURE.md, read from the manifests:
/// - a plugin never depends on the host, the conformance suite or another plugin; on the
///   testkit only as a dev-dependency (its PKI feeds unit tests), never in what it links;
/// - the host never depends on a plugin, in any kind (its tests load built libraries);
/// - the ABI crate depends on nothing of ours; the SDK only on the ABI crate (dev aside);
/// - the testkit follows the specifications, not our code: never the host, SDK or plugins.
#[test]
fn dependency_directions_hold() {
    let root = fhirconn_tests::root();
    let packages = workspace_packages();
    assert!(packages.len() >= 8, "too few packages: {packages:?}");
    let ours = |d: &str| d.starts_with("fhirconn-") || d.starts_with("fhirconn_");
    let plugin = |d: &str| d.starts_with("fhirconn-plugin-");
    let mut offenders = Vec::new();
    for (name, dir, deps) in &packages {
        let in_plugins = dir.starts_with(root.join("plugins"));
        for (dep, kind) in deps {
            let why = if in_plugins
                && (dep == "fhirconn-host" || dep == "fhirconn-conformance" || plugin(dep))
            {
                Some("a plugin depends only on the SDK (and, for tests, the testkit)")
            } else if in_plugins && dep == "fhirconn-testkit" && kind != "dev" {
                Some("a plugin links no testkit (dev-dependency only)")
            } else if name == "fhirconn-host" && plugin(dep) {
                Some("the host never depends on a plugin")
            } else if name == "fhirconn-abi" && ours(dep) {
                Some("the ABI crate depends on nothing of ours")
            } else if name == "fhirconn-sdk" && kind != "dev" && ours(dep) && dep != "fhirconn-abi"
            {
                Some("the SDK depends only on the ABI crate")
            } else if name == "fhirconn-testkit"
                && (dep == "fhirconn-host" || dep == "fhirconn-sdk" || plugin(dep))
            {
                Some("the testkit follows the specifications, not our code")
            } else {
                None
            };
            if let Some(why) = why {
                offenders.push(format!("{name} -> {dep} ({kind}): {why}"));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

/// Production source files: everything in crates/, plugins/, host/, xtask/ except the testkit,
/// fixtures and unit-test files (`tests.rs`, `tests/`), as `(path relative to the root,
/// production text)` (see [`production_text`]).
fn production_sources() -> Vec<(String, String)> {
    let root = fhirconn_tests::root();
    files_under(&["crates", "plugins", "host", "xtask"], ".rs")
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap_or(&p)
                .to_string_lossy()
                .to_string();
            let production = !rel.starts_with("crates/fhirconn-testkit/")
                && !rel.contains("/fixtures/")
                && !rel.contains("/tests/")
                && !rel.ends_with("/tests.rs");
            production.then(|| {
                (
                    rel,
                    production_text(&std::fs::read_to_string(&p).unwrap_or_default()),
                )
            })
        })
        .collect()
}

/// `code` with the contents of comments, string, byte-string, raw-string and char literals
/// replaced by spaces (line breaks kept), so that every byte offset and line stays where it
/// was and text inside them is never mistaken for code.
fn mask_literals_and_comments(code: &str) -> Vec<u8> {
    let b = code.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let ident = |i: usize| i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = memchr_from(b, i, b'\n');
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest.
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if b[i] == b'r' && !ident(i)
            || b[i] == b'r' && i > 0 && b[i - 1] == b'b' && !ident(i - 1)
        {
            // A raw string `r#"..."#` (or `br`), or an identifier starting with r.
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let start = i + 2 + hashes;
            let end = b[start..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |k| start + k);
            blank(&mut out, start, end);
            i = end + close.len();
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}', '"'), or a lifetime ('a).
            let len = code[i + 1..].chars().next().map_or(0, char::len_utf8);
            if rest.get(1) == Some(&b'\\') {
                let end = b[i + 3..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map_or(b.len(), |k| i + 3 + k);
                blank(&mut out, i + 1, end);
                i = end + 1;
            } else if b.get(i + 1 + len) == Some(&b'\'') {
                blank(&mut out, i + 1, i + 1 + len);
                i += 2 + len;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

fn memchr_from(b: &[u8], from: usize, c: u8) -> usize {
    b[from..]
        .iter()
        .position(|&x| x == c)
        .map_or(b.len(), |k| from + k)
}

/// What a production-size check counts of a source file: its text without its test modules
/// (`#[cfg(test)]` followed, after other attributes, by a `mod` item, inline or declared).
/// `#[cfg(test)]` inside a comment, a doc comment or a string is text, not an attribute, and
/// code after a test module still counts.
fn production_text(code: &str) -> String {
    let masked = mask_literals_and_comments(code);
    let mut keep = Vec::new();
    let mut from = 0;
    let mut search = 0;
    let marker = b"#[cfg(test)]";
    while let Some(k) = masked[search..]
        .windows(marker.len())
        .position(|w| w == marker)
    {
        let start = search + k;
        search = start + marker.len();
        // Skip white space and further attributes, then an optional visibility.
        let mut j = search;
        loop {
            while j < masked.len() && masked[j].is_ascii_whitespace() {
                j += 1;
            }
            if masked[j..].starts_with(b"#[") {
                let mut depth = 0usize;
                while j < masked.len() {
                    match masked[j] {
                        b'[' => depth += 1,
                        b']' => {
                            depth -= 1;
                            if depth == 0 {
                                j += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            } else {
                break;
            }
        }
        if masked[j..].starts_with(b"pub") {
            j += 3;
            if masked[j..].starts_with(b"(") {
                j = memchr_from(&masked, j, b')') + 1;
            }
            while j < masked.len() && masked[j].is_ascii_whitespace() {
                j += 1;
            }
        }
        if !(masked[j..].starts_with(b"mod")
            && masked.get(j + 3).is_some_and(u8::is_ascii_whitespace))
        {
            continue;
        }
        // The item ends at its `;` or at the brace that closes its body.
        let mut end = j;
        let mut depth = 0usize;
        while end < masked.len() {
            match masked[end] {
                b';' if depth == 0 => break,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        keep.push(&code[from..start]);
        // With the line break that ends it.
        from = (end + 1).min(code.len());
        if code.as_bytes().get(from) == Some(&b'\n') {
            from += 1;
        }
        search = from;
    }
    keep.push(&code[from..]);
    keep.concat()
}

/// The production text of a file ends only at a real test module: `#[cfg(test)]` in a doc
/// comment, a comment, a string or a raw string does not end it, and code after a test
/// module still counts.
#[test]
fn production_text_drops_only_test_modules() {
    let fixture = r##"//! A module.
/// Put unit tests under `#[cfg(test)]`:
/// #[cfg(test)]
/// mod tests {}
fn a() {}
// #[cfg(test)] mod x {}
/* #[cfg(test)]
mod y { /* nested */ } */
const T: &str = "#[cfg(test)]
mod tests {";
const R: &str = r#"
#[cfg(test)]
mod tests {
"#;
const C: char = '"';
fn b<'a>(x: &'a str) -> &'a str { x }
#[cfg(test)]
#[allow(dead_code)]
mod tests {
    fn t() { let _ = "}"; }
}
fn c() {}
#[cfg(test)]
pub(crate) mod helpers;
#[cfg(test)]
fn test_only_helper() {}
fn d() {}
"##;
    let kept = production_text(fixture);
    for f in [
        "fn a()",
        "const T",
        "const R",
        "const C",
        "fn b<",
        "fn c()",
        "fn test_only_helper",
        "fn d()",
    ] {
        assert!(kept.contains(f), "{f} must count: {kept}");
    }
    assert!(
        !kept.contains("fn t()"),
        "the test module must not count: {kept}"
    );
    assert!(
        !kept.contains("mod helpers"),
        "a declared test module must not count: {kept}"
    );
    assert_eq!(kept.lines().count(), fixture.lines().count() - 7, "{kept}");
}

/// Files still over a limit while the redesign (issue 14) splits them: each entry must be
/// removed when its file is split. Listed so that no new file grows past the limit unseen.
const KNOWN_LONG_FILES: &[&str] = &[];
/// Functions still over the limit, as `file::name` (same rule as above).
const KNOWN_LONG_FUNCTIONS: &[&str] = &[];

#[test]
fn no_production_file_is_over_600_lines() {
    let mut offenders = Vec::new();
    let mut long = Vec::new();
    for (rel, code) in production_sources() {
        let lines = code.lines().count();
        if lines > 600 {
            long.push(rel.clone());
            if !KNOWN_LONG_FILES.contains(&rel.as_str()) {
                offenders.push(format!("{rel}: {lines} lines"));
            }
        }
    }
    assert_exceptions_shrink(
        "split these files (≤ 600 lines before the tests)",
        &offenders,
        KNOWN_LONG_FILES,
        &long,
        "no longer over 600 lines (or gone): remove from KNOWN_LONG_FILES",
    );
}

/// No new offender, and every listed exception is still one (so the lists only shrink).
fn assert_exceptions_shrink(
    what: &str,
    offenders: &[String],
    known: &[&str],
    found: &[String],
    stale_what: &str,
) {
    assert!(offenders.is_empty(), "{what}: {offenders:#?}");
    let stale: Vec<_> = known
        .iter()
        .filter(|k| !found.iter().any(|l| l == *k))
        .collect();
    assert!(stale.is_empty(), "{stale_what}: {stale:?}");
}

/// The functions of rustfmt-formatted code longer than `max` lines: `(name, first line,
/// lines)`. A function runs from its `fn` line to the closing brace at its indentation.
fn long_functions(code: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let rest = [
            "pub ",
            "pub(crate) ",
            "pub(super) ",
            "async ",
            "const ",
            "unsafe ",
            "extern \"C\" ",
        ]
        .iter()
        .fold(t, |s, p| s.strip_prefix(p).unwrap_or(s));
        let rest = ["async ", "unsafe "]
            .iter()
            .fold(rest, |s, p| s.strip_prefix(p).unwrap_or(s));
        let Some(sig) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        let mut end = None;
        for (j, l) in lines.iter().enumerate().skip(i) {
            let lt = l.trim_end();
            if end.is_none()
                && lt.ends_with(';')
                && !lines[i..j].iter().any(|s| s.trim_end().ends_with('{'))
                && !lt.ends_with("{")
            {
                break; // a declaration without a body
            }
            if lt == close || (j == i && lt.ends_with('}')) {
                end = Some(j);
                break;
            }
        }
        if let Some(end) = end {
            let n = end - i + 1;
            if n > max {
                out.push((name, i + 1, n));
            }
        }
    }
    out
}

#[test]
fn no_production_function_is_over_120_lines() {
    // The counter itself must see a long function.
    let long = format!("fn f() {{\n{}}}\n", "    x();\n".repeat(130));
    assert_eq!(long_functions(&long, 120).len(), 1);
    assert!(long_functions("    fn g();\nfn h() {}\n", 0).len() == 1);
    let mut offenders = Vec::new();
    let mut long = Vec::new();
    for (rel, code) in production_sources() {
        for (name, line, n) in long_functions(&code, 120) {
            let key = format!("{rel}::{name}");
            if !KNOWN_LONG_FUNCTIONS.contains(&key.as_str()) {
                offenders.push(format!("{rel}:{line}: fn {name}: {n} lines"));
            }
            long.push(key);
        }
    }
    assert_exceptions_shrink(
        "split these functions (≤ 120 lines)",
        &offenders,
        KNOWN_LONG_FUNCTIONS,
        &long,
        "no longer over 120 lines (or gone): remove from KNOWN_LONG_FUNCTIONS",
    );
}

/// The names that mark code touching the plugin ABI directly.
const ABI_MARKERS: &[&str] = &[
    "fhirconn_abi",
    "abi_stable::",
    "RString",
    "RVec",
    "RResult",
    "ROption",
    "RStr",
    "HostRef",
    "AuthSchemeBox",
    "ConnectionAuthBox",
];

/// Lines of `code` (comments and string literals left out) that name an ABI type.
fn abi_mentions(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or_default();
        // Drop string literals (a message may mention abi_stable's layout report).
        let mut code_only = String::new();
        let mut in_string = false;
        let mut escaped = false;
        for c in line.chars() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => in_string = !in_string,
                (false, _, c) => code_only.push(c),
                _ => {}
            }
        }
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let hit = ABI_MARKERS.iter().any(|m| {
            code_only.match_indices(m).any(|(i, _)| {
                let before = code_only[..i].chars().next_back();
                let after = code_only[i + m.len()..].chars().next();
                !before.is_some_and(is_word) && (m.ends_with("::") || !after.is_some_and(is_word))
            })
        });
        if hit {
            out.push((n + 1, line.trim().to_string()));
        }
    }
    out
}

/// One bridge: in the host, only `host/src/bridge/` names ABI types and calls into plugins;
/// everything else sees plain Rust (issue 14).
#[test]
fn only_the_bridge_names_abi_types_in_the_host() {
    let root = fhirconn_tests::root();
    let mut sources = Vec::new();
    files(&root.join("host/src"), ".rs", &mut sources);
    files(&root.join("host/examples"), ".rs", &mut sources);
    assert!(sources.len() >= 10, "{sources:?}");
    let bridge = root.join("host/src/bridge");
    assert!(
        sources.iter().any(|p| p.starts_with(&bridge)),
        "the bridge module moved: update this test"
    );
    let mut offenders = Vec::new();
    for p in sources.iter().filter(|p| !p.starts_with(&bridge)) {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        for (line, code) in abi_mentions(&text) {
            offenders.push(format!(
                "{}:{line}: {code}",
                p.strip_prefix(&root).unwrap_or(p).display()
            ));
        }
    }
    assert!(
        offenders.is_empty(),
        "only host/src/bridge/ may name ABI types (fhirconn_abi, abi_stable, RString, RVec, \
         RResult, ROption, ...); use the bridge's plain types: {offenders:#?}"
    );
    // The check itself sees what it must.
    assert_eq!(abi_mentions("use fhirconn_abi::{host_ref};").len(), 1);
    assert_eq!(abi_mentions("let x: RVec<u8> = v;").len(), 1);
    assert!(abi_mentions("let m = \"abi_stable's report\"; // RString").is_empty());
    assert!(abi_mentions("let s = MyRStringish;").is_empty());
}

/// The names of the tests SECURITY.md cites: the last `::` segment of every backticked path
/// (`tests/tests/x.rs::name`, `host module::tests::name`, `::name` continuing a cell), a
/// trailing `*` (a family of tests) kept as a prefix.
fn cited_tests(security_md: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, span) in security_md.split('`').enumerate() {
        if i % 2 == 0 || !span.contains("::") {
            continue;
        }
        let last = span.rsplit("::").next().unwrap_or_default();
        if last.len() > 6
            && last
                .trim_end_matches('*')
                .bytes()
                .all(|b| b == b'_' || b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            out.push(last.to_string());
        }
    }
    out
}

/// Every test SECURITY.md names as the enforcer of a rule exists (a renamed or deleted test
/// must take its row along).
#[test]
fn every_test_security_md_cites_exists() {
    let root = fhirconn_tests::root();
    let text = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let cited = cited_tests(&text);
    assert!(cited.len() > 100, "too few citations found: {cited:?}");
    let mut sources = String::new();
    for p in workspace_files(".rs") {
        sources.push_str(&std::fs::read_to_string(p).unwrap_or_default());
    }
    let missing: Vec<_> = cited
        .iter()
        .filter(|name| match name.strip_suffix('*') {
            Some(prefix) => !sources.contains(&format!("fn {prefix}")),
            None => !sources.contains(&format!("fn {name}(")),
        })
        .collect();
    assert!(
        missing.is_empty(),
        "SECURITY.md cites tests that do not exist: {missing:?}"
    );
}
