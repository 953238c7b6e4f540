//! `fhirconn-conformance`: runs the conformance suite over the schemes found in plugin
//! directories and prints a scheme × case matrix (or JSON / JUnit). `cargo xtask conformance`
//! builds everything in release and runs this.

use clap::{Parser, ValueEnum};
use fhirconn_conformance::{report, run, Outcome, Setup};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "fhirconn-conformance",
    about = "Run the conformance suite over fhirconn schemes"
)]
struct Args {
    /// Plugin directory (repeatable).
    #[arg(long = "plugin-dir", required = true)]
    plugin_dirs: Vec<PathBuf>,
    /// Only these schemes (repeatable; default: every scheme with a fixture).
    #[arg(long = "scheme")]
    schemes: Vec<String>,
    /// The `fhirconn` binary for the whole-process cases.
    #[arg(long)]
    fhirconn: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Table,
    Json,
    Junit,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let setup = Setup {
        plugin_dirs: args.plugin_dirs,
        fhirconn: args.fhirconn,
    };
    let results = match run(&setup, &args.schemes).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match args.format {
        Format::Table => report::table(&results),
        Format::Json => report::json(&results),
        Format::Junit => report::junit(&results),
    };
    print!("{text}");
    if results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Fail(_)))
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
