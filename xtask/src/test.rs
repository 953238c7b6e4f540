//! `cargo xtask test`: plugins and binaries, every workspace test, then the out-of-tree crates'.

use crate::build::build_plugins;
use crate::new_scheme::new_scheme;
use crate::{locked, project_root, shell, Result};
use xshell::cmd;

pub(crate) fn test() -> Result {
    let sh = shell()?;
    let root = project_root();
    let locked = locked();
    build_plugins(false)?;
    cmd!(
        sh,
        "cargo build {locked...} -p fhirconn-host -p fhirconn-conformance --bins --examples"
    )
    .run()?;
    cmd!(sh, "cargo test {locked...} --workspace --no-fail-fast").run()?;
    // Out of tree: the vendor plugin's own tests, and a freshly generated scheme's (built
    // from the lockfile `new-scheme` derives from the workspace's).
    let target_dir = root.join("target/fixture-build");
    for vendor in ["tests/vendor-plugin", "tests/vendor-hmac-plugin"] {
        let vendor = root.join(vendor).join("Cargo.toml");
        cmd!(
            sh,
            "cargo test {locked...} --manifest-path {vendor} --target-dir {target_dir}"
        )
        .run()?;
    }
    let generated = root.join("target/new-scheme");
    let _ = std::fs::remove_dir_all(&generated);
    new_scheme("acme-check", &generated)?;
    let manifest = generated.join("acme-check/Cargo.toml");
    cmd!(
        sh,
        "cargo test --locked --manifest-path {manifest} --target-dir {target_dir}"
    )
    .run()?;
    Ok(())
}
