//! The conformance suite: one set of cases run over every scheme (as rustls runs one test
//! suite per crypto provider), against the testkit reference servers on loopback, through the
//! host library and the `fhirconn` binary. `cargo xtask conformance` drives it and prints a
//! scheme × case matrix.
//!
//! Each scheme gets a [`Fixture`]: reference servers configured for it, its settings, and
//! "wrong" settings. Generic cases run for every scheme; some apply only to schemes that fetch
//! tokens; scheme-specific cases check what the scheme's specification demands.

pub mod fixtures;
pub mod report;

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
}

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

async fn run_case(case: &str, f: &Fixture, setup: &Setup) -> Outcome {
    let result: Result<Option<()>, String> = match case {
        "passes" => async {
            let r = f.test_once(setup, &f.good(), Value::Null).await?;
            r.ok.then_some(Some(())).ok_or_else(|| why(&r))
        }
        .await,
        "wrong-credentials-diagnosed" => async {
            if f.wrong().is_null() {
                return Ok(None);
            }
            let r = f.test_once(setup, &f.wrong(), Value::Null).await?;
            let d = r.failure.as_ref().ok_or("wrong credentials passed")?;
            let clear = matches!(
                d.kind.as_str(),
                "unauthorized" | "credentials-rejected" | "forbidden" | "tls"
            );
            if clear {
                Ok(Some(()))
            } else {
                Err(format!("unclear diagnosis: {}", why(&r)))
            }
        }
        .await,
        "renews-across-expiry" => async {
            if !f.issues_tokens() {
                return Ok(None);
            }
            f.set_token_lifetime(Duration::from_secs(2));
            let host = f.host(setup, &f.good(), Value::Null).await?;
            let conn = host.connection("c").map_err(|e| e.to_string())?;
            let before = f.tokens_issued();
            let get = || async { conn.get("Patient/1").await.map(|r| r.status.as_u16()) };
            let first = get().await.map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let second = get().await.map_err(|e| e.to_string())?;
            f.set_token_lifetime(Duration::from_secs(300));
            let fetched = f.tokens_issued() - before;
            if (first, second) == (200, 200) && fetched == 2 {
                Ok(Some(()))
            } else {
                Err(format!("statuses {first}, {second}; {fetched} tokens fetched (expected 2)"))
            }
        }
        .await,
        "401-retries-once" => async {
            if !f.issues_tokens() {
                return Ok(None);
            }
            let host = f.host(setup, &f.good(), Value::Null).await?;
            let conn = host.connection("c").map_err(|e| e.to_string())?;
            let status = |r: Result<fhirconn_host::transport::Response, fhirconn_host::Error>| {
                r.map(|r| r.status.as_u16()).map_err(|e| e.to_string())
            };
            let a = status(conn.get("Patient/1").await)?;
            f.revoke_tokens();
            let unauthorized = f.unauthorized();
            let before = f.tokens_issued();
            let b = status(conn.get("Patient/1").await)?;
            let retries = f.unauthorized() - unauthorized;
            let fetched = f.tokens_issued() - before;
            if (a, b, retries, fetched) == (200, 200, 1, 1) {
                Ok(Some(()))
            } else {
                Err(format!("statuses {a}, {b}; {retries} 401(s); {fetched} new token(s)"))
            }
        }
        .await,
        "slow-server-times-out" => async {
            f.set_slow(Some(Duration::from_secs(5)));
            let started = Instant::now();
            let r = f
                .test_once(setup, &f.good(), serde_json::json!({"read-timeout": "PT1S"}))
                .await;
            f.set_slow(None);
            let r = r?;
            let took = started.elapsed();
            let kind = r.failure.as_ref().map(|d| d.kind.clone()).unwrap_or_default();
            if kind == "timeout" && took < Duration::from_millis(4000) {
                Ok(Some(()))
            } else {
                Err(format!("after {took:?}: {}", why(&r)))
            }
        }
        .await,
        "no-secret-in-verbose-output" => async {
            let cfg = f.dir().join("conformance.yaml");
            let mut conn = serde_json::json!({"base-url": f.base_url(), "auth": f.good(), "probe": "Patient/1"});
            if let (Value::Object(c), Value::Object(e)) = (&mut conn, f.connection_extra()) {
                c.extend(e);
            }
            std::fs::write(
                &cfg,
                serde_json::to_string(&serde_json::json!({"connections": {"c": conn}}))
                    .map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            // `test` and `get` at the most verbose logging.
            let mut text = String::new();
            for args in [&["test"][..], &["get", "c", "Patient/1"][..]] {
                let mut cmd = tokio::process::Command::new(&setup.fhirconn);
                cmd.arg("-vv").arg("-c").arg(&cfg);
                for d in &setup.plugin_dirs {
                    cmd.arg("--plugin-dir").arg(d);
                }
                let out = cmd
                    .args(args)
                    .env_remove("RUST_LOG")
                    .output()
                    .await
                    .map_err(|e| format!("cannot run {}: {e}", setup.fhirconn.display()))?;
                let both = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if !out.status.success() {
                    return Err(format!(
                        "fhirconn {} failed: {}",
                        args.join(" "),
                        both.lines().last().unwrap_or("")
                    ));
                }
                text.push_str(&both);
            }
            // The error path too: the wrong credentials' diagnosis must not quote them.
            if !f.wrong().is_null() {
                let mut conn = serde_json::json!({"base-url": f.base_url(), "auth": f.wrong()});
                if let (Value::Object(c), Value::Object(e)) = (&mut conn, f.connection_extra()) {
                    c.extend(e);
                }
                let wrong_cfg = f.dir().join("conformance-wrong.yaml");
                std::fs::write(
                    &wrong_cfg,
                    serde_json::to_string(&serde_json::json!({"connections": {"c": conn}}))
                        .map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                let mut cmd = tokio::process::Command::new(&setup.fhirconn);
                cmd.arg("-vv").arg("-c").arg(&wrong_cfg);
                for d in &setup.plugin_dirs {
                    cmd.arg("--plugin-dir").arg(d);
                }
                let out = cmd
                    .arg("test")
                    .env_remove("RUST_LOG")
                    .output()
                    .await
                    .map_err(|e| e.to_string())?;
                text.push_str(&String::from_utf8_lossy(&out.stdout));
                text.push_str(&String::from_utf8_lossy(&out.stderr));
            }
            let mut secrets = f.secrets();
            secrets.extend(f.issued_tokens());
            match secrets.iter().find(|s| s.len() >= 8 && text.contains(s.as_str())) {
                Some(s) => Err(format!("a secret ({} chars) appeared in the output", s.len())),
                None => Ok(Some(())),
            }
        }
        .await,
        "scheme-specific" => f.scheme_specific(setup).await,
        other => Err(format!("unknown case {other}")),
    };
    match result {
        Ok(Some(())) => Outcome::Pass,
        Ok(None) => Outcome::NotApplicable,
        Err(e) => Outcome::Fail(e),
    }
}

/// Runs every case for each scheme (all known ones when `schemes` is empty).
pub async fn run(setup: &Setup, schemes: &[String]) -> Result<Vec<CaseResult>, String> {
    let mut out = Vec::new();
    let names: Vec<String> = if schemes.is_empty() {
        // Every scheme the plugin directories provide (plus the built-in one).
        let registry = fhirconn_host::plugins::Registry::new(setup.plugin_dirs.clone());
        let _ = registry.load_all();
        let mut found: Vec<String> = registry.schemes().iter().map(|h| h.name.clone()).collect();
        found.sort_by_key(|n| {
            fixtures::SCHEMES
                .iter()
                .position(|s| s == n)
                .unwrap_or(fixtures::SCHEMES.len())
        });
        found
    } else {
        schemes.to_vec()
    };
    for scheme in names {
        let fixture = Fixture::new(&scheme, setup).await?;
        for case in CASES {
            let started = Instant::now();
            let outcome = run_case(case, &fixture, setup).await;
            out.push(CaseResult {
                scheme: scheme.clone(),
                case: case.to_string(),
                outcome,
                ms: started.elapsed().as_millis() as u64,
            });
        }
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
