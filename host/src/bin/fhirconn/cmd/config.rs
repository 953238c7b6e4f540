//! `fhirconn config check`: validate the file and configure every connection, offline.

use crate::render::{print_json, Output};
use crate::{CmdResult, Global};
use std::process::ExitCode;

/// Configuration commands.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the connections file and configure every connection, without network access.
    Check {
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
}

/// Runs a configuration command.
pub async fn run(g: &Global, command: ConfigCommand) -> CmdResult {
    let ConfigCommand::Check { output } = command;
    let host = g.host(&[]).await?;
    let ids = host.connection_ids();
    match output {
        Output::Json => print_json(&serde_json::json!({
            "file": g.config.display().to_string(),
            "valid": true,
            "connections": ids,
        })),
        Output::Human => println!("{}: {} connection(s) valid", g.config.display(), ids.len()),
    }
    Ok(ExitCode::SUCCESS)
}
