//! The conformance suite: one set of cases run over every scheme (as rustls runs one test
//! suite per crypto provider), against the testkit reference servers on loopback, through the
//! host library and the `fhirconn` binary. `cargo xtask conformance` drives it and prints a
//! scheme × case matrix.
//!
//! Each scheme gets a [`Fixture`]: reference servers configured for it, its settings, and
//! "wrong" settings. Generic cases run for every scheme; some apply only to schemes that fetch
//! tokens; scheme-specific cases check what the scheme's specification demands.

mod cases;
pub mod fixtures;
pub mod leaks;
pub mod report;

use cases::run_case;
use fhirconn_host::{Host, TestReport};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use fixtures::Fixture;

/// Where the suite finds its tools.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
    /// The `fhirconn` binary (for the whole-process cases).
    pub fhirconn: PathBuf,
    /// How long one case may take before it fails as "timed out".
    pub case_timeout: Duration,
    /// A program that loads one library in a child process (`PROGRAM --probe-library FILE`,
    /// see [`probe_library`]), so that a library that crashes or hangs while loading fails its
    /// row instead of the whole run. `None`: libraries are loaded in this process only.
    pub prober: Option<PathBuf>,
}

/// The pseudo-case of a library that did not load or a scheme that cannot be set up.
pub const SETUP: &str = "setup";

/// The outcome of one case for one scheme.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// The case passed.
    Pass,
    /// The case failed, with why.
    Fail(String),
    /// The case does not apply to this scheme.
    NotApplicable,
}

/// One row of results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// Scheme name.
    pub scheme: String,
    /// Case name.
    pub case: String,
    /// Outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall time in milliseconds.
    pub ms: u64,
}

/// The cases, in the order of the matrix's columns.
pub const CASES: &[&str] = &[
    "passes",
    "wrong-credentials-diagnosed",
    "renews-across-expiry",
    "401-retries-once",
    "slow-server-times-out",
    "no-secret-in-verbose-output",
    "scheme-specific",
];

impl Fixture {
    async fn host(&self, setup: &Setup, auth: &Value, extra: Value) -> Result<Host, String> {
        let mut conn = serde_json::json!({"base-url": self.base_url(), "auth": auth});
        if let (Value::Object(c), Value::Object(e)) = (&mut conn, self.connection_extra()) {
            c.extend(e);
        }
        if let (Value::Object(c), Value::Object(e)) = (&mut conn, extra) {
            c.extend(e);
        }
        let mut b = Host::builder()
            .config_value(self.dir(), serde_json::json!({"connections": {"c": conn}}))
            .only_explicit_plugin_dirs();
        for d in &setup.plugin_dirs {
            b = b.plugin_dir(d);
        }
        if let Some(store) = self.credential_store() {
            b = b.credential_store(store);
        }
        b.build().await.map_err(|e| e.to_string())
    }

    async fn test_once(
        &self,
        setup: &Setup,
        auth: &Value,
        extra: Value,
    ) -> Result<TestReport, String> {
        let host = self.host(setup, auth, extra).await?;
        host.test(&[], None)
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or_else(|| "no report".to_string())
    }
}

fn why(r: &TestReport) -> String {
    r.failure
        .as_ref()
        .map(|d| format!("{} [{}]", d, d.kind))
        .unwrap_or_else(|| "passed".into())
}

/// Runs `fhirconn -vv -c CFG ARGS` with the suite's plugin directories (killed if the case
/// times out).
/// The credential store file of a fixture, in its directory (see [`fhirconn`]).
pub(crate) const CREDENTIALS_FILE: &str = "credentials.json";

async fn fhirconn(
    setup: &Setup,
    cfg: &Path,
    args: &[&str],
) -> Result<std::process::Output, String> {
    let mut cmd = tokio::process::Command::new(&setup.fhirconn);
    cmd.arg("-vv").arg("-c").arg(cfg);
    // Never the user's own sign-ins: the fixture's store, beside the connections file.
    cmd.env("FHIRCONN_CREDENTIALS", cfg.with_file_name(CREDENTIALS_FILE));
    for d in &setup.plugin_dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("FHIRCONN_PLUGIN_PATH")
        .env_remove("FHIRCONN_CONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", setup.fhirconn.display()))
}

/// The platform's prefix and suffix of a fhirconn plugin library file
/// (`libfhirconn_` and `.so` on Linux).
fn library_affixes() -> (String, String) {
    let sample = fhirconn_host::plugins::library_file_name("x");
    let (prefix, suffix) = sample.split_once('x').unwrap_or((&sample, ""));
    (prefix.to_string(), suffix.to_string())
}

/// The plugin libraries of each directory (what the host would scan), sorted; an error for a
/// directory that is missing, unreadable or holds no plugin library.
pub fn libraries(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let (prefix, suffix) = library_affixes();
    let mut out = Vec::new();
    for dir in dirs {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| format!("plugin directory {}: {e}", dir.display()))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
            })
            .collect();
        if files.is_empty() {
            return Err(format!(
                "plugin directory {} holds no fhirconn plugin ({prefix}*{suffix})",
                dir.display()
            ));
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// Loads one library in this process and describes the outcome as one JSON line:
/// `{"schemes": [...]}` or `{"error": "..."}`. The child side of [`Setup::prober`].
pub fn probe_library(path: &Path) -> (bool, String) {
    let registry = fhirconn_host::plugins::Registry::new(Vec::new());
    match registry.load(path) {
        Ok(names) => (true, serde_json::json!({ "schemes": names }).to_string()),
        Err(e) => (
            false,
            serde_json::json!({ "error": e.to_string() }).to_string(),
        ),
    }
}

/// Loads `path` in a child process; `Err` says why it did not load (an error, a crash, a hang).
async fn probe(prober: &Path, path: &Path, timeout: Duration) -> Result<(), String> {
    let child = tokio::process::Command::new(prober)
        .arg("--probe-library")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", prober.display()))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| e.to_string())?,
        Err(_) => {
            return Err(format!(
                "loading it did not finish within {} s (it hangs while loading)",
                timeout.as_secs()
            ))
        }
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if out.status.success() && v["schemes"].is_array() {
        return Ok(());
    }
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    // The child's stderr is not quoted (a plugin's panic message may hold a secret); only
    // abi_stable's own words are recognised.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = if stderr.contains("panic across the ffi boundary") {
        "the plugin panicked across the plugin interface, which aborts the process"
    } else {
        "it crashed the process loading it"
    };
    Err(match out.status.code() {
        Some(c) => format!("{why} (exit status {c})"),
        None => format!("{why} ({})", out.status),
    })
}

fn setup_failure(who: &str, why: String) -> CaseResult {
    CaseResult {
        scheme: who.to_string(),
        case: SETUP.to_string(),
        outcome: Outcome::Fail(why),
        ms: 0,
    }
}

/// Links (or copies) `from` into `dir` under its own file name, or a numbered one if taken.
fn link_into(dir: &Path, from: &Path, numbered_stem: &str, suffix: &str) -> Result<(), String> {
    let name = from
        .file_name()
        .ok_or_else(|| format!("{}: no file name", from.display()))?;
    let mut to = dir.join(name);
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = dir.join(format!("{numbered_stem}_{n}{suffix}"));
    }
    let real = from.canonicalize().unwrap_or_else(|_| from.to_path_buf());
    #[cfg(unix)]
    let r = std::os::unix::fs::symlink(&real, &to);
    #[cfg(not(unix))]
    let r = std::fs::copy(&real, &to).map(|_| ());
    r.map_err(|e| format!("{}: {e}", to.display()))
}

/// Links the libraries that load alone, and the vendors' conformance descriptors of the plugin
/// directories, into one private directory.
fn quarantine(setup: &Setup, healthy: &[PathBuf]) -> Result<tempfile::TempDir, String> {
    let quarantine = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (prefix, suffix) = library_affixes();
    for lib in healthy {
        link_into(
            quarantine.path(),
            lib,
            &format!("{prefix}conformance"),
            &suffix,
        )?;
    }
    for dir in &setup.plugin_dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut descriptors: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".conformance.json"))
            .collect();
        descriptors.sort();
        for d in descriptors {
            if let Some(name) = d.file_name() {
                if !quarantine.path().join(name).exists() {
                    link_into(quarantine.path(), &d, "", "")?;
                }
            }
        }
    }
    Ok(quarantine)
}

/// Runs every case for `scheme` (or one failed [`SETUP`] row if its fixture does not start).
async fn run_scheme(scheme: &str, inner: &Setup, out: &mut Vec<CaseResult>) {
    let limit = inner.case_timeout;
    let fixture = match tokio::time::timeout(limit, Fixture::new(scheme, inner)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            out.push(setup_failure(scheme, e));
            return;
        }
        Err(_) => {
            out.push(setup_failure(
                scheme,
                "starting its fixture timed out".into(),
            ));
            return;
        }
    };
    for case in CASES {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(limit, run_case(case, &fixture, inner)).await {
            Ok(o) => o,
            Err(_) => Outcome::Fail(format!(
                "timed out after {} s (--case-timeout)",
                limit.as_secs_f64()
            )),
        };
        fixture.reset();
        out.push(CaseResult {
            scheme: scheme.to_string(),
            case: case.to_string(),
            outcome,
            ms: started.elapsed().as_millis() as u64,
        });
    }
}

/// Runs every case for each scheme the plugin directories provide (and the built-in `none`),
/// or only for `schemes`. `Err` is a usage error (exit 2): a plugin directory that does not
/// exist or holds no plugin, or a requested scheme that no library provides. A library that
/// does not load is a failed [`SETUP`] row naming the file, never silently skipped.
pub async fn run(setup: &Setup, schemes: &[String]) -> Result<Vec<CaseResult>, String> {
    let mut out = Vec::new();
    let libs = libraries(&setup.plugin_dirs)?;
    if !setup.fhirconn.is_file() {
        return Err(format!(
            "the fhirconn binary {} does not exist (--fhirconn)",
            setup.fhirconn.display()
        ));
    }
    // 1. Each library alone, in a child process: crashes and hangs stay there.
    let mut healthy = Vec::new();
    for lib in libs {
        let shown = lib.display().to_string();
        match &setup.prober {
            Some(prober) => match probe(prober, &lib, setup.case_timeout).await {
                Ok(()) => healthy.push(lib),
                Err(why) => out.push(setup_failure(
                    &shown,
                    format!("{shown} did not load: {why}"),
                )),
            },
            None => healthy.push(lib),
        }
    }
    // 2. The libraries that load alone, together, from one private directory (with the
    //    vendors' conformance descriptors), in this process: duplicates and the like.
    let quarantine = quarantine(setup, &healthy)?;
    let registry = fhirconn_host::plugins::Registry::new(vec![quarantine.path().to_path_buf()]);
    for lib in &healthy {
        if let Err(e) = registry.load(lib) {
            let shown = lib.display().to_string();
            out.push(setup_failure(&shown, format!("{shown} did not load: {e}")));
        }
    }
    let inner = Setup {
        plugin_dirs: vec![quarantine.path().to_path_buf()],
        ..setup.clone()
    };
    // 3. The schemes, in matrix order; a scheme whose description panicked fails here.
    let mut found = Vec::new();
    for h in registry.schemes() {
        if h.name == "<panicked>" || h.summary == "<panicked>" {
            out.push(setup_failure(
                &h.name,
                format!(
                    "scheme '{}' from {}: the plugin panicked while describing it",
                    h.name, h.origin
                ),
            ));
        } else {
            found.push(h.name.clone());
        }
    }
    found.sort_by_key(|n| {
        fixtures::SCHEMES
            .iter()
            .position(|s| s == n)
            .unwrap_or(fixtures::SCHEMES.len())
    });
    let names: Vec<String> = if schemes.is_empty() {
        found
    } else {
        if let Some(missing) = schemes.iter().find(|s| !found.contains(s)) {
            return Err(format!(
                "no loaded library provides scheme '{missing}' (found: {})",
                found.join(", ")
            ));
        }
        schemes.to_vec()
    };
    for scheme in names {
        run_scheme(&scheme, &inner, &mut out).await;
    }
    Ok(out)
}

/// The default location of a built binary next to the plugins' target directory.
pub fn default_fhirconn(plugin_dir: &Path) -> PathBuf {
    plugin_dir
        .parent()
        .map(|p| p.join("release/fhirconn"))
        .unwrap_or_else(|| PathBuf::from("fhirconn"))
}
