//! `fhirconn token`: a connection's current bearer token, for scripts.

use crate::{CliError, CmdResult, Global};
use std::process::ExitCode;

/// `fhirconn token` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connection id.
    id: String,
    /// Print `{"token": ..., "expires-at": ...}` (seconds since the epoch) instead of the
    /// token alone, with `"launch-context"` (patient, encounter, fhirUser, scope, ...) after a
    /// SMART App Launch sign-in.
    #[arg(long)]
    json: bool,
}

/// Prints the token (fetched, or from the cache); exits 1 when the connection has none.
pub async fn run(g: &Global, a: Args) -> CmdResult {
    let host = g.host(std::slice::from_ref(&a.id)).await?;
    let conn = host.connection(&a.id)?;
    let creds = conn.credentials(true).await?;
    let Some(token) = creds.bearer_token() else {
        return Err(CliError::Failed(format!(
            "connection '{}' uses no bearer token (schemes: {})",
            a.id,
            conn.schemes().join("+")
        )));
    };
    if a.json {
        let expires = creds
            .expires_at
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let mut out = serde_json::json!({"token": token, "expires-at": expires});
        if let Some(c) = &creds.launch_context {
            out["launch-context"] = serde_json::json!(c);
        }
        crate::render::print_json(&out);
    } else {
        println!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}
