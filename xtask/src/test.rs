//! `cargo xtask test`: plugins and binaries, every workspace test, then the out-of-tree crates'.

use crate::build::build_plugins;
use crate::new_scheme::new_scheme;
use crate::{locked, project_root, shell, Result};
use xshell::cmd;

/// The fleet tests start a real `redis-server`: find it, install it with apt-get when running
/// as root, or say exactly what to install.
fn ensure_redis() -> Result {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if on_path("redis-server") && on_path("redis-cli") {
        return Ok(());
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root && on_path("apt-get") {
        eprintln!("xtask: installing redis-server (the fleet tests need a real Redis)");
        let install = |update: bool| {
            if update {
                let _ = std::process::Command::new("apt-get")
                    .args(["update", "-q"])
                    .status();
            }
            std::process::Command::new("apt-get")
                .args(["install", "-y", "-q", "redis-server"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if install(false) || install(true) {
            return Ok(());
        }
    }
    Err(
        "the fleet tests need a real Redis server (redis-server and redis-cli on PATH): \
         install it with `sudo apt-get install -y redis-server` (Debian/Ubuntu), \
         `sudo dnf install redis` (Fedora) or `brew install redis` (macOS), then run \
         `cargo xtask test` again"
            .into(),
    )
}

pub(crate) fn test() -> Result {
    let sh = shell()?;
    let root = project_root();
    let locked = locked();
    ensure_redis()?;
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
