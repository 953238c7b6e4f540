//! `fhirconn schema`: the composed JSON Schema of the connections file.

use crate::{CmdResult, Global};
use fhirconn_host::Host;
use std::process::ExitCode;

/// Prints the schema (host settings + every scheme found); load errors are warnings.
pub fn run(g: &Global) -> CmdResult {
    let reg = g.registry();
    for e in reg.load_all() {
        eprintln!("warning: {e}");
    }
    let schema = Host::schema_for(&reg);
    println!(
        "{}",
        serde_json::to_string_pretty(&schema).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
