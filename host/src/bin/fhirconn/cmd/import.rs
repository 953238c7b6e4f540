//! `fhirconn import dsf`: another tool's connections → a fhirconn connections file.

use crate::{CliError, CmdResult};
use fhirconn_host::import;
use std::path::PathBuf;
use std::process::ExitCode;

/// What to import from.
#[derive(clap::Subcommand, Debug)]
pub enum ImportCommand {
    /// A DSF BPE FHIR client connections YAML (DEV_DSF_BPE_FHIR_CLIENT_CONNECTIONS_CONFIG).
    Dsf {
        /// The DSF YAML file.
        file: PathBuf,
        /// Write here instead of standard output (never overwrites).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Converts, says what could not be carried over, and writes or prints the result.
pub fn run(from: ImportCommand) -> CmdResult {
    let ImportCommand::Dsf { file, out } = from;
    let usage = |e: import::ImportError| CliError::Usage(e.to_string());
    let imported = import::dsf_file(&file).map_err(usage)?;
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    for s in &imported.inline_secrets {
        let setting = import::secret_setting(s);
        eprintln!(
            "warning: {s}: a secret copied inline into the output; move it to a file \
             or the environment ({setting}-file or {setting}-env)"
        );
    }
    match out {
        Some(path) => {
            import::write(&path, &imported).map_err(usage)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{}", imported.yaml),
    }
    Ok(ExitCode::SUCCESS)
}
