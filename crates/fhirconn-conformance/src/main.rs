//! `fhirconn-conformance`: runs the conformance suite over the schemes found in plugin
//! directories and prints a scheme × case matrix (or JSON / JUnit). `cargo xtask conformance`
//! builds everything in release and runs this.
//!
//! Exit status: 0 when every case passed or does not apply, 1 when a case failed or a library
//! did not load, 2 for a usage error (a plugin directory that does not exist or holds no
//! plugin, a scheme no library provides).

use clap::{Parser, ValueEnum};
use fhirconn_conformance::{fixtures, probe_library, report, run, Outcome, Setup};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "fhirconn-conformance",
    about = "Run the conformance suite over fhirconn schemes"
)]
struct Args {
    /// Plugin directory (repeatable); each must hold at least one plugin library.
    #[arg(long = "plugin-dir", required_unless_present = "probe_library")]
    plugin_dirs: Vec<PathBuf>,
    /// Only these schemes (repeatable; default: every scheme the directories provide).
    #[arg(long = "scheme")]
    schemes: Vec<String>,
    /// Every scheme with a built-in fixture (the in-tree schemes) must be provided and pass;
    /// with `--scheme`, those as well.
    #[arg(long)]
    in_tree: bool,
    /// The `fhirconn` binary for the whole-process cases.
    #[arg(long, required_unless_present = "probe_library")]
    fhirconn: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Seconds one case may take before it fails as "timed out".
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    case_timeout: u64,
    /// Internal: load one library and report the outcome as JSON (run in a child process).
    #[arg(long, hide = true, value_name = "FILE")]
    probe_library: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Table,
    Json,
    Junit,
}

/// Exits at once: a plugin that hangs keeps a blocking thread busy, and dropping the runtime
/// would wait for it forever.
fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

fn main() {
    let args = Args::parse();
    if let Some(lib) = &args.probe_library {
        let (ok, line) = probe_library(lib);
        println!("{line}");
        exit(if ok { 0 } else { 3 });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            exit(2)
        }
    };
    let setup = Setup {
        plugin_dirs: args.plugin_dirs,
        fhirconn: args.fhirconn.unwrap_or_default(),
        case_timeout: Duration::from_secs(args.case_timeout.max(1)),
        prober: std::env::current_exe().ok(),
    };
    let mut schemes = args.schemes;
    if args.in_tree {
        for s in fixtures::SCHEMES {
            if !schemes.iter().any(|x| x == s) {
                schemes.push(s.to_string());
            }
        }
    }
    let results = match runtime.block_on(run(&setup, &schemes)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            exit(2)
        }
    };
    let text = match args.format {
        Format::Table => report::table(&results),
        Format::Json => report::json(&results),
        Format::Junit => report::junit(&results),
    };
    print!("{text}");
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Fail(_)));
    exit(if failed { 1 } else { 0 })
}
