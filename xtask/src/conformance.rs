//! `cargo xtask conformance`: the conformance suite over the in-tree schemes or given plugins.

use crate::build::build_plugins;
use crate::{locked, project_root, shell, ConformanceArgs, Result};
use std::process::Command;
use xshell::cmd;

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
    let in_tree = plugin_dirs.is_empty() && a.schemes.is_empty();
    if plugin_dirs.is_empty() {
        plugin_dirs.push(build_plugins(!a.debug)?.display().to_string());
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
    for s in &a.schemes {
        cmd.arg("--scheme").arg(s);
    }
    if in_tree {
        // Over the in-tree plugins, every scheme with a built-in fixture must be there and pass.
        cmd.arg("--in-tree");
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
