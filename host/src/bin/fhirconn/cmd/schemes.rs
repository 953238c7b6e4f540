//! `fhirconn schemes`: every scheme found, its version, SDK and origin.

use crate::render::{print_json, sanitize, Output};
use crate::{CmdResult, Global};
use std::process::ExitCode;

/// Lists the schemes; exits 1 when a library could not be loaded.
pub fn run(g: &Global, output: Output) -> CmdResult {
    let reg = g.registry();
    let errors = reg.load_all();
    let list = reg.schemes();
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = list
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "name": h.name, "version": h.version, "sdk": h.sdk_version,
                        "abi": fhirconn_host::plugins::ABI_VERSION, "origin": h.origin.to_string(),
                        "summary": h.summary,
                    })
                })
                .collect();
            print_json(&v);
        }
        Output::Human => {
            let w = list.iter().map(|h| h.name.len()).max().unwrap_or(4).max(6);
            println!(
                "{:w$}  {:8}  {:6}  SUMMARY / ORIGIN",
                "SCHEME", "VERSION", "SDK"
            );
            for h in &list {
                println!(
                    "{:w$}  {:8}  {:6}  {}",
                    h.name, h.version, h.sdk_version, h.summary
                );
                println!("{:w$}  {:8}  {:6}  from {}", "", "", "", h.origin);
            }
            println!(
                "plugin interface (ABI) {}",
                fhirconn_host::plugins::ABI_VERSION
            );
        }
    }
    for e in &errors {
        eprintln!("error: {}", sanitize(&e.to_string()));
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
