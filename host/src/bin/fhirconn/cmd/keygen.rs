//! `fhirconn keygen`: a SMART Backend Services key pair and the settings that use it.

use crate::{CliError, CmdResult};
use fhirconn_host::keygen::{self, KeyAlg};
use std::path::PathBuf;
use std::process::ExitCode;

/// `fhirconn keygen` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Signature algorithm.
    #[arg(long, value_enum, default_value_t = Alg::Es384)]
    alg: Alg,
    /// Key id (default: the RFC 7638 thumbprint of the public key).
    #[arg(long)]
    kid: Option<String>,
    /// Directory for `private-key.pem` and `jwks.json`.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    #[value(name = "ES384")]
    Es384,
    #[value(name = "RS384")]
    Rs384,
}

/// Writes the key pair and prints the connection settings to paste.
pub fn run(a: Args) -> CmdResult {
    let (alg, name) = match a.alg {
        Alg::Es384 => (KeyAlg::Es384, "ES384"),
        Alg::Rs384 => (KeyAlg::Rs384, "RS384"),
    };
    let key =
        keygen::generate(alg, a.kid.as_deref()).map_err(|e| CliError::Usage(e.to_string()))?;
    let (private, public) =
        keygen::write(&a.out, &key, a.force).map_err(|e| CliError::Usage(e.to_string()))?;
    println!("wrote {} (private, mode 0600)", private.display());
    println!(
        "wrote {} (public JWKS: register it with the server)",
        public.display()
    );
    println!();
    println!("auth:");
    println!("  scheme: smart-backend");
    println!("  client-id: <the client id the server assigned>");
    println!("  private-key-file: {}", private.display());
    println!("  kid: {}", key.kid);
    println!("  alg: {name}");
    println!("  scope: system/*.rs");
    Ok(ExitCode::SUCCESS)
}
