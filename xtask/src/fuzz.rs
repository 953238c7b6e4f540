//! `cargo xtask fuzz`: the fuzz harness over the parsers of untrusted input.

use crate::build::build_plugins;
use crate::{locked, project_root, shell, Result};
use std::process::Command;
use xshell::cmd;

/// Builds the plugins and the fuzz harness (debug, with overflow checks), then runs it.
pub(crate) fn fuzz(target: &str, seconds: u64, seed: Option<u64>) -> Result {
    let sh = shell()?;
    let root = project_root();
    build_plugins(false)?;
    let locked = locked();
    cmd!(
        sh,
        "cargo build {locked...} -p fhirconn-tests --bin fhirconn-fuzz"
    )
    .run()?;
    let mut cmd = Command::new(root.join("target/debug/fhirconn-fuzz"));
    cmd.arg(target).arg("--seconds").arg(seconds.to_string());
    if let Some(seed) = seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err("the fuzzer found a panic (see target/fuzz-findings/)".into());
    }
    Ok(())
}
