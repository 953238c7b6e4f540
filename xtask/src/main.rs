//! `cargo xtask`: build plugins, dist, demo, test, ci and bench for the fhirconn workspace.
//!
//! Plugins are built into one named directory, never guessed: `target/plugins/` (debug, used by
//! the tests and the demo), `target/plugin-fixtures/` (test fixtures), and
//! `target/dist/plugins/` next to `target/dist/fhirconn` (release). The plugins broken on
//! purpose (tests/fixtures/plugin-broken) go to `target/plugin-broken/` only, with their
//! conformance descriptors, for the test that shows the conformance suite catches them.

mod bench;
mod bench_export;
mod bench_proxy;
mod build;
mod ci;
mod conformance;
mod demo;
mod fuzz;
mod new_scheme;
mod test;

use clap::{Args, Parser, Subcommand};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use xshell::Shell;

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
        /// Only these parts (repeatable; default: all of them).
        #[arg(long, value_enum)]
        only: Vec<bench::Part>,
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
        Task::BuildPlugins { release } => build::build_plugins(release).map(|_| ()),
        Task::Dist => build::dist(),
        Task::Demo => demo::demo(),
        Task::Test => test::test(),
        Task::Ci => ci::ci(),
        Task::Bench { only } => bench::bench(&only),
        Task::Conformance(a) => conformance::conformance(&a),
        Task::NewScheme { name, path } => new_scheme::new_scheme(&name, &path),
        Task::Fuzz {
            target,
            seconds,
            seed,
        } => fuzz::fuzz(target.as_deref().unwrap_or("all"), seconds, seed),
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
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
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
