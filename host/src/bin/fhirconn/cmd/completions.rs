//! `fhirconn completions SHELL` and `fhirconn man`: generated from the clap definitions, so
//! they never drift from the commands.

use crate::{Cli, CmdResult};
use clap::CommandFactory as _;
use std::process::ExitCode;

/// Prints the completion script of `shell` on standard output.
pub fn completions(shell: clap_complete::Shell) -> CmdResult {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "fhirconn", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Prints the man page (roff, section 1) on standard output.
pub fn man() -> CmdResult {
    let page = clap_mangen::Man::new(Cli::command());
    page.render(&mut std::io::stdout())
        .map_err(|e| crate::CliError::Failed(format!("standard output: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
