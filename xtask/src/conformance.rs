//! `cargo xtask conformance`: the conformance suite over the in-tree schemes or given plugins.

use crate::build::build_plugins;
use crate::{locked, project_root, shell, ConformanceArgs, Result};
use std::process::Command;
use xshell::cmd;

/// The schemes built in this repository (the conformance suite's built-in fixtures): a
/// default `cargo xtask conformance` requires every one of them.
const IN_TREE_SCHEMES: &[&str] = &[
    "none",
    "basic",
    "bearer",
    "oidc-client-credentials",
    "smart-backend",
    "mtls",
    "azure-ad",
];
/// Release host and plugins, then `fhirconn-conformance` over them (or over `--plugin-dir`s);
/// `--debug` uses the debug builds instead (faster to build while developing).
pub(crate) fn conformance(a: &ConformanceArgs) -> Result {
    let sh = shell()?;
    let root = project_root();
    let locked = locked();
    let (profile, dir) = if a.debug {
        (vec![], "debug")
    } else {
        (vec!["--release"], "release")
    };
    let mut plugin_dirs = a.plugin_dirs.clone();
    let mut schemes = a.schemes.clone();
    if plugin_dirs.is_empty() {
        plugin_dirs.push(build_plugins(!a.debug)?.display().to_string());
        // Over the in-tree plugins, every in-tree scheme must be there and pass.
        if schemes.is_empty() {
            schemes = IN_TREE_SCHEMES.iter().map(|s| s.to_string()).collect();
        }
    }
    cmd!(
        sh,
        "cargo build {locked...} {profile...} -p fhirconn-host -p fhirconn-conformance --bins"
    )
    .run()?;
    let bin = root.join("target").join(dir);
    let mut cmd = Command::new(bin.join("fhirconn-conformance"));
    for d in &plugin_dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    for s in &schemes {
        cmd.arg("--scheme").arg(s);
    }
    if let Some(f) = &a.format {
        cmd.arg("--format").arg(f);
    }
    if let Some(t) = a.case_timeout {
        cmd.arg("--case-timeout").arg(t.to_string());
    }
    cmd.arg("--fhirconn").arg(bin.join("fhirconn"));
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("conformance failed ({status})").into());
    }
    Ok(())
}
