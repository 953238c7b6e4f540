//! `cargo xtask`: build plugins, dist, demo, test, ci and bench for the fhirconn workspace.
//!
//! Plugins are built into one named directory, never guessed: `target/plugins/` (debug, used by
//! the tests and the demo), `target/plugin-fixtures/` (test fixtures), and
//! `target/dist/plugins/` next to `target/dist/fhirconn` (release). The plugins broken on
//! purpose (tests/fixtures/plugin-broken) go to `target/plugin-broken/` only, with their
//! conformance descriptors, for the test that shows the conformance suite catches them.

mod bench_export;

use clap::{Args, Parser, Subcommand};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xshell::{cmd, Shell};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Build orchestration for the fhirconn workspace.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    /// Pass `--locked` to every cargo command (`ci` always does).
    #[arg(long, global = true)]
    locked: bool,
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Build every plugin into target/plugins (or target/dist/plugins with --release), the
    /// test fixtures into target/plugin-fixtures and the broken-on-purpose ones into
    /// target/plugin-broken.
    BuildPlugins {
        /// Release build into target/dist/plugins (no fixtures).
        #[arg(long)]
        release: bool,
    },
    /// Release host + plugins into target/dist/.
    Dist,
    /// Build, start the testkit servers, test a connection per scheme.
    Demo,
    /// Build plugins and the CLI, then run every test (the README's test command).
    Test,
    /// What CI runs: fmt --check, clippy -D warnings, test, demo, conformance, fuzz (--locked).
    Ci,
    /// Criterion benchmarks + whole-process fhirconn vs curl + bulk export vs curl.
    Bench {
        /// Only the bulk export comparison.
        #[arg(long)]
        export_only: bool,
    },
    /// Release build, then the conformance suite over every in-tree scheme (or over --plugin-dir).
    Conformance(ConformanceArgs),
    /// Mutation-fuzz the parsers of untrusted input.
    Fuzz {
        /// Target (default: all).
        target: Option<String>,
        /// Seconds in all.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Random seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Generate an out-of-tree plugin crate depending on fhirconn-sdk only.
    NewScheme {
        /// Scheme name: lowercase letters, digits and '-'.
        name: String,
        /// Directory to create the crate in.
        #[arg(long, default_value = ".")]
        path: PathBuf,
    },
}

#[derive(Args, Debug, Default)]
struct ConformanceArgs {
    /// Only this scheme (repeatable).
    #[arg(long = "scheme")]
    schemes: Vec<String>,
    /// Plugin directory (repeatable; default: the freshly built in-tree plugins).
    #[arg(long = "plugin-dir")]
    plugin_dirs: Vec<String>,
    /// Output format: table, json or junit.
    #[arg(long)]
    format: Option<String>,
    /// Seconds one case may take.
    #[arg(long, value_name = "SECONDS")]
    case_timeout: Option<u64>,
    /// Debug builds (target/debug, target/plugins) instead of release: for development.
    #[arg(long)]
    debug: bool,
}

/// The schemes built in this repository (the conformance suite's built-in fixtures): a
/// default `cargo xtask conformance` requires every one of them.
const IN_TREE_SCHEMES: &[&str] = &[
    "none",
    "basic",
    "bearer",
    "oidc-client-credentials",
    "smart-backend",
    "mtls",
    "azure-ad",
];

static LOCKED: AtomicBool = AtomicBool::new(false);

/// `--locked` when CI (or the caller) asked for it.
fn locked() -> &'static [&'static str] {
    if LOCKED.load(Ordering::Relaxed) {
        &["--locked"]
    } else {
        &[]
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    LOCKED.store(cli.locked, Ordering::Relaxed);
    let result = match cli.command {
        Task::BuildPlugins { release } => build_plugins(release).map(|_| ()),
        Task::Dist => dist(),
        Task::Demo => demo(),
        Task::Test => test(),
        Task::Ci => ci(),
        Task::Bench { export_only } => bench(export_only),
        Task::Conformance(a) => conformance(&a),
        Task::NewScheme { name, path } => new_scheme(&name, &path),
        Task::Fuzz {
            target,
            seconds,
            seed,
        } => fuzz(target.as_deref().unwrap_or("all"), seconds, seed),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn shell() -> Result<Shell> {
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    Ok(sh)
}

/// A plugin crate: its package name and its library name.
struct PluginCrate {
    package: String,
    lib: String,
}

fn cargo_field(manifest: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == section;
            continue;
        }
        if in_section {
            if let Some(rest) = t.strip_prefix(key) {
                let rest = rest.trim_start();
                if let Some(v) = rest.strip_prefix('=') {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

fn crates_in(dir: &Path) -> Result<Vec<PluginCrate>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for d in entries {
        let manifest = d.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        if !text.contains("cdylib") || text.contains("\n[workspace]") {
            continue;
        }
        let package = cargo_field(&text, "[package]", "name").ok_or("plugin without a name")?;
        let lib = cargo_field(&text, "[lib]", "name").ok_or("plugin without [lib] name")?;
        out.push(PluginCrate { package, lib });
    }
    Ok(out)
}

fn lib_file(lib: &str) -> String {
    format!(
        "{}{lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn copy_libs(from: &Path, libs: &[PluginCrate], to: &Path) -> Result {
    std::fs::create_dir_all(to)?;
    for p in libs {
        let src = from.join(lib_file(&p.lib));
        std::fs::copy(&src, to.join(lib_file(&p.lib)))
            .map_err(|e| format!("copy {}: {e}", src.display()))?;
    }
    Ok(())
}

/// Builds the plugins (and, for debug builds, the fixtures); returns the plugin directory.
fn build_plugins(release: bool) -> Result<PathBuf> {
    let sh = shell()?;
    let root = project_root();
    let plugins = crates_in(&root.join("plugins"))?;
    let fixtures = crates_in(&root.join("tests/fixtures"))?;
    let mut args: Vec<String> = Vec::new();
    for p in plugins
        .iter()
        .chain(if release { [].iter() } else { fixtures.iter() })
    {
        args.push("-p".into());
        args.push(p.package.clone());
    }
    let profile = if release { vec!["--release"] } else { vec![] };
    let locked = locked();
    cmd!(sh, "cargo build {locked...} {profile...} {args...}").run()?;
    let target = root.join("target");
    let out_dir = if release {
        target.join("dist/plugins")
    } else {
        target.join("plugins")
    };
    let built = target.join(if release { "release" } else { "debug" });
    copy_libs(&built, &plugins, &out_dir)?;
    if !release {
        // Broken on purpose: only in their own directory, with their descriptors (the abort
        // fixture would take down any test process that scans the fixture directory).
        let (broken, fixtures): (Vec<PluginCrate>, Vec<PluginCrate>) =
            fixtures.into_iter().partition(|p| {
                p.package == "fhirconn-fixture-broken" || p.package == "fhirconn-fixture-abort"
            });
        let broken_dir = target.join("plugin-broken");
        let _ = std::fs::remove_dir_all(&broken_dir);
        copy_libs(&built, &broken, &broken_dir)?;
        for d in std::fs::read_dir(root.join("tests/fixtures/plugin-broken/conformance"))? {
            let d = d?.path();
            if let Some(name) = d.file_name() {
                std::fs::copy(&d, broken_dir.join(name))?;
            }
        }
        let fixture_dir = target.join("plugin-fixtures");
        for p in &broken {
            let _ = std::fs::remove_file(fixture_dir.join(lib_file(&p.lib)));
        }
        copy_libs(&built, &fixtures, &fixture_dir)?;
        let target_dir = target.join("fixture-build");
        // Each is built outside the workspace, in its own Cargo workspace:
        // - a plugin whose interface layout differs on purpose;
        // - a plugin built against the frozen copy of the 1.0.0 interface;
        // - the example vendor plugin (with its conformance descriptor).
        let vendor_dir = target.join("vendor-plugins");
        for (manifest, package, lib, dest) in [
            (
                "tests/fixtures/plugin-abi-mismatch",
                "fhirconn-fixture-abi-mismatch",
                "fhirconn_abi_mismatch",
                &fixture_dir,
            ),
            (
                "tests/fixtures/plugin-abi-v1",
                "fhirconn-fixture-abi-v1",
                "fhirconn_frozen_v1",
                &fixture_dir,
            ),
            (
                "tests/vendor-plugin",
                "acme-fhirconn-auth",
                "fhirconn_acme_apikey",
                &vendor_dir,
            ),
        ] {
            let manifest = root.join(manifest).join("Cargo.toml");
            cmd!(
                sh,
                "cargo build {locked...} --manifest-path {manifest} --target-dir {target_dir}"
            )
            .run()?;
            let krate = [PluginCrate {
                package: package.into(),
                lib: lib.into(),
            }];
            copy_libs(&target_dir.join("debug"), &krate, dest)?;
        }
        std::fs::copy(
            root.join("tests/vendor-plugin/acme-apikey.conformance.json"),
            vendor_dir.join("acme-apikey.conformance.json"),
        )?;
    }
    println!("plugins: {}", out_dir.display());
    Ok(out_dir)
}

fn dist() -> Result {
    let sh = shell()?;
    build_plugins(true)?;
    let locked = locked();
    cmd!(
        sh,
        "cargo build {locked...} --release -p fhirconn-host --bin fhirconn"
    )
    .run()?;
    let root = project_root();
    let exe = format!("fhirconn{}", std::env::consts::EXE_SUFFIX);
    std::fs::copy(
        root.join("target/release").join(&exe),
        root.join("target/dist").join(&exe),
    )?;
    println!("dist: {}", root.join("target/dist").display());
    Ok(())
}

/// Starts `fhirconn-testkit` with `args` (`serve ...`) and returns the child and the servers'
/// description.
fn start_testkit(bin: &Path, args: &[&str]) -> Result<(std::process::Child, serde_json::Value)> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let info: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("testkit said {line:?}: {e}"))?;
    Ok((child, info))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> Result {
    let _ = std::fs::remove_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents.as_bytes())?;
    Ok(())
}

fn demo() -> Result {
    let sh = shell()?;
    let root = project_root();
    let plugins = build_plugins(false)?;
    let locked = locked();
    cmd!(
        sh,
        "cargo build {locked...} -p fhirconn-host --bin fhirconn -p fhirconn-testkit --bin fhirconn-testkit"
    )
    .run()?;
    let (mut child, info) = start_testkit(&root.join("target/debug/fhirconn-testkit"), &["serve"])?;
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    std::fs::write(
        dir.join("basic-password.txt"),
        s(&info["basic"]["password"]),
    )?;
    std::fs::write(dir.join("bearer-token.txt"), s(&info["bearer"]["token"]))?;
    std::fs::write(
        dir.join("client-secret.txt"),
        s(&info["oauth"]["client-secret"]),
    )?;
    write_private(
        &dir.join("smart-key.pem"),
        &s(&info["oauth"]["private-key-pem"]),
    )?;
    std::fs::write(dir.join("demo-ca.pem"), s(&info["mtls"]["ca-pem"]))?;
    std::fs::write(
        dir.join("azure-secret.txt"),
        s(&info["azure"]["client-secret"]),
    )?;
    std::fs::write(dir.join("client.crt"), s(&info["mtls"]["certificate-pem"]))?;
    write_private(
        &dir.join("client.key"),
        &s(&info["mtls"]["private-key-pem"]),
    )?;
    let config = format!(
        "# Written by `cargo xtask demo`: one connection per scheme against the testkit servers.\n\
         connections:\n  \
           public:\n    base-url: {}\n  \
           basic-demo:\n    base-url: {}\n    connect-timeout: PT2S\n    read-timeout: PT30S\n    \
             auth:\n      scheme: basic\n      username: {}\n      password-file: basic-password.txt\n  \
           bearer-demo:\n    base-url: {}\n    probe: Patient?_count=1\n    \
             auth:\n      scheme: bearer\n      token-file: bearer-token.txt\n  \
           oidc-demo:\n    base-url: {}\n    probe: Patient?_count=1\n    \
             auth:\n      scheme: oidc-client-credentials\n      issuer: {}\n      \
             client-id: {}\n      client-secret-file: client-secret.txt\n      scope: system/*.rs\n  \
           smart-demo:\n    base-url: {}\n    probe: Patient?_count=1\n    \
             auth:\n      scheme: smart-backend\n      client-id: {}\n      \
             private-key-file: smart-key.pem\n      kid: {}\n      scope: system/*.rs\n  \
           mtls-demo:\n    base-url: {}\n    trusted-root-certificates-file: demo-ca.pem\n    \
             probe: Patient/1\n    auth:\n      scheme: mtls\n      \
             certificate-file: client.crt\n      private-key-file: client.key\n  \
           azure-demo:\n    base-url: {}\n    probe: Patient/1\n    auth:\n      scheme: azure-ad\n      \
             authority-host: {}\n      client-id: {}\n      flow: client-credentials\n      \
             client-secret-file: azure-secret.txt\n      \
             # no tenant: discovered from the server's 401 challenge; audience: the origin\n",
        s(&info["none"]["base-url"]),
        s(&info["basic"]["base-url"]),
        s(&info["basic"]["username"]),
        s(&info["bearer"]["base-url"]),
        s(&info["oauth"]["base-url"]),
        s(&info["oauth"]["issuer"]),
        s(&info["oauth"]["client-id"]),
        s(&info["oauth"]["base-url"]),
        s(&info["oauth"]["smart-client-id"]),
        s(&info["oauth"]["kid"]),
        s(&info["mtls"]["base-url"]),
        s(&info["azure"]["base-url"]),
        s(&info["azure"]["authority-host"]),
        s(&info["azure"]["client-id"]),
    );
    let cfg = dir.join("fhirconn.yaml");
    std::fs::write(&cfg, config)?;
    println!(
        "\n--- {} ---\n{}",
        cfg.display(),
        std::fs::read_to_string(&cfg)?
    );
    println!("--- fhirconn test ---");
    let status = Command::new(root.join("target/debug/fhirconn"))
        .args(["--config"])
        .arg(&cfg)
        .arg("--plugin-dir")
        .arg(&plugins)
        .arg("test")
        .status()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.flush();
    }
    let _ = child.kill();
    let _ = child.wait();
    if !status.success() {
        return Err("the demo's connection tests failed".into());
    }
    println!("\ntry it yourself:\n  target/debug/fhirconn -c {} --plugin-dir {} get bearer-demo Patient/1", cfg.display(), plugins.display());
    Ok(())
}

fn test() -> Result {
    let sh = shell()?;
    let root = project_root();
    let locked = locked();
    build_plugins(false)?;
    cmd!(
        sh,
        "cargo build {locked...} -p fhirconn-host -p fhirconn-conformance --bins --examples"
    )
    .run()?;
    cmd!(sh, "cargo test {locked...} --workspace --no-fail-fast").run()?;
    // Out of tree: the vendor plugin's own tests, and a freshly generated scheme's (built
    // from the lockfile `new-scheme` derives from the workspace's).
    let target_dir = root.join("target/fixture-build");
    let vendor = root.join("tests/vendor-plugin/Cargo.toml");
    cmd!(
        sh,
        "cargo test {locked...} --manifest-path {vendor} --target-dir {target_dir}"
    )
    .run()?;
    let generated = root.join("target/new-scheme");
    let _ = std::fs::remove_dir_all(&generated);
    new_scheme("acme-check", &generated)?;
    let manifest = generated.join("acme-check/Cargo.toml");
    cmd!(
        sh,
        "cargo test --locked --manifest-path {manifest} --target-dir {target_dir}"
    )
    .run()?;
    Ok(())
}

/// `cargo xtask new-scheme NAME [--path DIR]`: a plugin crate outside the workspace that
/// depends only on fhirconn-sdk, with a passing unit test, and a `Cargo.lock` derived from the
/// workspace's (same versions of every dependency), so that it builds with `--locked`.
fn new_scheme(name: &str, dir: &Path) -> Result {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        return Err(
            format!("new-scheme: '{name}' must be lowercase letters, digits and '-'").into(),
        );
    }
    let root = project_root();
    let crate_dir = dir.join(name);
    if crate_dir.exists() {
        return Err(format!("{} exists; not overwriting it", crate_dir.display()).into());
    }
    std::fs::create_dir_all(crate_dir.join("src"))?;
    let lib = format!("fhirconn_{}", name.replace('-', "_"));
    let ty: String = name
        .split('-')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let sdk = root.join("crates/fhirconn-sdk");
    let workspace = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let msrv = cargo_field(&workspace, "[workspace.package]", "rust-version")
        .ok_or("no rust-version in the workspace's Cargo.toml")?;
    let manifest = TEMPLATE_CARGO
        .replace("{name}", name)
        .replace("{lib}", &lib)
        .replace("{sdk}", &sdk.display().to_string())
        .replace("{msrv}", &msrv);
    std::fs::write(crate_dir.join("Cargo.toml"), manifest)?;
    let source = TEMPLATE_LIB.replace("{name}", name).replace("{Type}", &ty);
    std::fs::write(crate_dir.join("src/lib.rs"), source)?;
    // The workspace's lockfile, with only the root package entries brought up to date: every
    // other package keeps the version the workspace was tested with.
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock"))?;
    let sh = shell()?;
    let generated = crate_dir.join("Cargo.toml");
    if cmd!(
        sh,
        "cargo update --workspace --offline --manifest-path {generated}"
    )
    .run()
    .is_err()
    {
        cmd!(sh, "cargo update --workspace --manifest-path {generated}").run()?;
    }
    println!(
        "created {} (scheme '{name}', library lib{lib}): `cargo build` there, then \
         `fhirconn --plugin-dir {}/target/debug schemes`",
        crate_dir.display(),
        crate_dir.display()
    );
    Ok(())
}

const TEMPLATE_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
rust-version = "{msrv}"
publish = false

[lib]
name = "{lib}"
crate-type = ["cdylib", "rlib"]

[dependencies]
# A published plugin would use `fhirconn-sdk = "0.1"`.
fhirconn-sdk = { path = "{sdk}" }

[workspace]

# Panics must unwind so the SDK can turn them into errors at the plugin boundary.
[profile.dev]
panic = "unwind"

[profile.release]
panic = "unwind"
"#;

const TEMPLATE_LIB: &str = r#"//! fhirconn scheme `{name}`: sends `X-Api-Key` from `api-key`, `api-key-file` or
//! `api-key-env`. Replace `authorize` with your scheme's logic; reach the network, files and
//! environment only through `host`. Settings are declared once, in `{Type}Settings`: its
//! JSON Schema is derived, and a `SecretSetting` field `x` is written as `x`, `x-file` or
//! `x-env` (see `fhirconn_sdk::settings`).

use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Host, Result, Scheme,
};

/// The `{name}` scheme.
#[derive(Debug, Default)]
pub struct {Type};

/// an API key in the X-Api-Key header
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct {Type}Settings {
    /// API key
    api_key: SecretSetting,
}

/// A configured connection: its settings (`Debug` shows no secret).
#[derive(Debug)]
pub struct {Type}Connection({Type}Settings);

impl Scheme for {Type} {
    fn name(&self) -> &str {
        "{name}"
    }

    fn summary(&self) -> &str {
        "an API key in the X-Api-Key header"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<{Type}Settings>()
    }

    fn configure(&self, _c: &ConnectionInfo, settings: Value, host: &Host<'_>) -> Result<Box<dyn Connection>> {
        Ok(Box::new({Type}Connection(settings::parse(settings, host)?)))
    }
}

impl Connection for {Type}Connection {
    fn authorize(&self, _request: &AuthRequest, _host: &Host<'_>) -> Result<Credentials> {
        Ok(Credentials::new().secret_header("X-Api-Key", self.0.api_key.secret().clone()))
    }
}

fhirconn_sdk::export_schemes!({Type});

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_sdk::serde_json::json;
    use fhirconn_sdk::testing::{header_value, MockHost};

    #[test]
    fn the_key_is_sent_and_a_missing_one_is_a_config_error() {
        let mock = MockHost::new().with_file("key.txt", b"k-1\n");
        let creds = mock.configure_and_authorize(&{Type}, json!({"api-key-file": "key.txt"})).unwrap();
        assert_eq!(header_value(&creds, "X-Api-Key").as_deref(), Some("k-1"));
        let err = mock.configure_and_authorize(&{Type}, json!({})).unwrap_err();
        assert!(err.message().contains("exactly one of 'api-key'"), "{err}");
        assert_eq!({Type}.config_schema()["properties"]["api-key"]["writeOnly"], true);
    }
}
"#;

/// Runs one CI step, printing its wall time.
fn step(name: &str, f: impl FnOnce() -> Result) -> Result {
    println!("\n=== ci: {name}");
    let t = Instant::now();
    let r = f();
    println!(
        "=== ci: {name}: {} in {:.0} s",
        if r.is_ok() { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    r.map_err(|e| format!("{name}: {e}").into())
}

/// The one definition of CI (`.ci/run` only installs what is needed and calls this).
fn ci() -> Result {
    LOCKED.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let sh = shell()?;
    step("fmt", || Ok(cmd!(sh, "cargo fmt --all -- --check").run()?))?;
    step("clippy", || {
        Ok(cmd!(
            sh,
            "cargo clippy --locked --workspace --all-targets -- -D warnings"
        )
        .run()?)
    })?;
    step("test (the README's test command)", test)?;
    step("demo (the README's first command)", demo)?;
    step("conformance", || conformance(&ConformanceArgs::default()))?;
    step("fuzz", || fuzz("all", 30, None))?;
    println!(
        "\n=== ci: all steps passed in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Builds the plugins and the fuzz harness (debug, with overflow checks), then runs it.
fn fuzz(target: &str, seconds: u64, seed: Option<u64>) -> Result {
    let sh = shell()?;
    let root = project_root();
    build_plugins(false)?;
    let locked = locked();
    cmd!(
        sh,
        "cargo build {locked...} -p fhirconn-tests --bin fhirconn-fuzz"
    )
    .run()?;
    let mut cmd = Command::new(root.join("target/debug/fhirconn-fuzz"));
    cmd.arg(target).arg("--seconds").arg(seconds.to_string());
    if let Some(seed) = seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err("the fuzzer found a panic (see target/fuzz-findings/)".into());
    }
    Ok(())
}

/// Release host and plugins, then `fhirconn-conformance` over them (or over `--plugin-dir`s);
/// `--debug` uses the debug builds instead (faster to build while developing).
fn conformance(a: &ConformanceArgs) -> Result {
    let sh = shell()?;
    let root = project_root();
    let locked = locked();
    let (profile, dir) = if a.debug {
        (vec![], "debug")
    } else {
        (vec!["--release"], "release")
    };
    let mut plugin_dirs = a.plugin_dirs.clone();
    let mut schemes = a.schemes.clone();
    if plugin_dirs.is_empty() {
        plugin_dirs.push(build_plugins(!a.debug)?.display().to_string());
        // Over the in-tree plugins, every in-tree scheme must be there and pass.
        if schemes.is_empty() {
            schemes = IN_TREE_SCHEMES.iter().map(|s| s.to_string()).collect();
        }
    }
    cmd!(
        sh,
        "cargo build {locked...} {profile...} -p fhirconn-host -p fhirconn-conformance --bins"
    )
    .run()?;
    let bin = root.join("target").join(dir);
    let mut cmd = Command::new(bin.join("fhirconn-conformance"));
    for d in &plugin_dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    for s in &schemes {
        cmd.arg("--scheme").arg(s);
    }
    if let Some(f) = &a.format {
        cmd.arg("--format").arg(f);
    }
    if let Some(t) = a.case_timeout {
        cmd.arg("--case-timeout").arg(t.to_string());
    }
    cmd.arg("--fhirconn").arg(bin.join("fhirconn"));
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("conformance failed ({status})").into());
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(export_only: bool) -> Result {
    let sh = shell()?;
    let root = project_root();
    dist()?;
    cmd!(
        sh,
        "cargo build --release -p fhirconn-testkit --bin fhirconn-testkit"
    )
    .run()?;
    if export_only {
        return bench_export::bench(&root);
    }
    // Criterion: authorize across the ABI vs a direct call.
    let plugin_dir = root.join("target/dist/plugins");
    cmd!(sh, "cargo bench -p fhirconn-tests --bench authorize")
        .env("FHIRCONN_TEST_PLUGIN_DIR", &plugin_dir)
        .run()?;
    cmd!(sh, "cargo bench -p fhirconn-tests --bench request")
        .env("FHIRCONN_TEST_PLUGIN_DIR", &plugin_dir)
        .run()?;
    cmd!(sh, "cargo bench -p fhirconn-tests --bench soak")
        .env("FHIRCONN_TEST_PLUGIN_DIR", &plugin_dir)
        .run()?;
    whole_process(&root)?;
    bench_export::bench(&root)
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
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
    let result = (|| -> Result {
        let dir = root.join("target/bench");
        std::fs::create_dir_all(&dir)?;
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
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
        let ours = |id: &str| {
            timed(
                Command::new(root.join("target/dist/fhirconn"))
                    .arg("-c")
                    .arg(dir.join(format!("{id}.yaml")))
                    .args(["test", id]),
            )
        };
        let metadata = |base: &serde_json::Value| format!("{}/metadata", s(base));
        let token_url = s(&oauth["token-endpoint"]);
        let mut assertions = oauth["presigned-assertions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter();
        let runs = 15;
        println!("\nwhole process, median of {runs} runs each (loopback):");
        for scheme in ["basic", "bearer", "oidc", "smart", "mtls"] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                a.push(ours(scheme)?);
                let t = Instant::now();
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
                        timed(
                            curl()
                                .arg("-H")
                                .arg(format!("Authorization: Bearer {}", s(&bearer["token"])))
                                .arg(metadata(&bearer["base-url"])),
                        )?;
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
                        timed(
                            curl()
                                .arg("-H")
                                .arg(format!("Authorization: Bearer {token}"))
                                .arg(metadata(&oauth["base-url"])),
                        )?;
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
                        timed(
                            curl()
                                .arg("-H")
                                .arg(format!("Authorization: Bearer {token}"))
                                .arg(metadata(&oauth["base-url"])),
                        )?;
                    }
                }
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
        // Loading every plugin: `fhirconn schemes` (loads all) minus `fhirconn --version`.
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
        // A file of 1,000 connections, all tested.
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
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn help_exits_zero_and_unknown_commands_exit_two() {
        Cli::command().debug_assert();
        for args in [
            &["xtask", "--help"][..],
            &["xtask", "conformance", "--help"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 0, "{args:?}");
        }
        let e = Cli::try_parse_from(["xtask", "no-such-command"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let c =
            Cli::try_parse_from(["xtask", "conformance", "--debug", "--scheme", "basic"]).unwrap();
        assert!(matches!(
            c.command,
            Task::Conformance(ConformanceArgs { debug: true, .. })
        ));
    }
}
