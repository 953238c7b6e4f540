//! `fhirconn login` and `fhirconn logout`: a connection's stored sign-in.

use crate::{CmdResult, Global};
use std::process::ExitCode;

/// Runs the schemes' interactive sign-in and says where a kept sign-in is stored.
pub async fn login(g: &Global, id: &str) -> CmdResult {
    let host = g.host(&[id.to_string()]).await?;
    host.connection(id)?.login().await?;
    match fhirconn_host::state::credentials_path() {
        Some(p) => println!(
            "signed in to '{id}'; a stored sign-in (if the scheme keeps one) is in {}",
            p.display()
        ),
        None => println!("signed in to '{id}' (not kept: no state directory)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Forgets the connection's stored sign-ins.
pub async fn logout(g: &Global, id: &str) -> CmdResult {
    let host = g.host(&[id.to_string()]).await?;
    if host.connection(id)?.logout().await? {
        println!("signed out of '{id}'");
    } else {
        println!("'{id}' keeps no sign-in; nothing to forget");
    }
    Ok(ExitCode::SUCCESS)
}
