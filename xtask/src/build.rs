//! `cargo xtask build-plugins` and `cargo xtask dist`: plugins into their named directories,
//! the release host next to them.

use crate::{locked, project_root, shell, Result};
use std::path::{Path, PathBuf};
use xshell::cmd;

/// A plugin crate: its package name and its library name.
struct PluginCrate {
    package: String,
    lib: String,
}

pub(crate) fn cargo_field(manifest: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == section;
            continue;
        }
        if in_section {
            if let Some(rest) = t.strip_prefix(key) {
                let rest = rest.trim_start();
                if let Some(v) = rest.strip_prefix('=') {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

fn crates_in(dir: &Path) -> Result<Vec<PluginCrate>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for d in entries {
        let manifest = d.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        if !text.contains("cdylib") || text.contains("\n[workspace]") {
            continue;
        }
        let package = cargo_field(&text, "[package]", "name").ok_or("plugin without a name")?;
        let lib = cargo_field(&text, "[lib]", "name").ok_or("plugin without [lib] name")?;
        out.push(PluginCrate { package, lib });
    }
    Ok(out)
}

fn lib_file(lib: &str) -> String {
    format!(
        "{}{lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn copy_libs(from: &Path, libs: &[PluginCrate], to: &Path) -> Result {
    std::fs::create_dir_all(to)?;
    for p in libs {
        let src = from.join(lib_file(&p.lib));
        replace_file(&src, &to.join(lib_file(&p.lib)))?;
    }
    Ok(())
}

/// Copies `src` over `dest` by a rename: a process that has the old library loaded keeps its
/// inode (copying in place would rewrite pages it has mapped, and it would crash).
pub(crate) fn replace_file(src: &Path, dest: &Path) -> Result {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::copy(src, &tmp).map_err(|e| format!("copy {}: {e}", src.display()))?;
    std::fs::rename(&tmp, dest).map_err(|e| format!("rename to {}: {e}", dest.display()))?;
    Ok(())
}

/// Builds the plugins (and, for debug builds, the fixtures); returns the plugin directory.
pub(crate) fn build_plugins(release: bool) -> Result<PathBuf> {
    let sh = shell()?;
    let root = project_root();
    let plugins = crates_in(&root.join("plugins"))?;
    let fixtures = crates_in(&root.join("tests/fixtures"))?;
    let mut args: Vec<String> = Vec::new();
    for p in plugins
        .iter()
        .chain(if release { [].iter() } else { fixtures.iter() })
    {
        args.push("-p".into());
        args.push(p.package.clone());
    }
    let profile = if release { vec!["--release"] } else { vec![] };
    let locked = locked();
    cmd!(sh, "cargo build {locked...} {profile...} {args...}").run()?;
    let target = root.join("target");
    let out_dir = if release {
        target.join("dist/plugins")
    } else {
        target.join("plugins")
    };
    let built = target.join(if release { "release" } else { "debug" });
    copy_libs(&built, &plugins, &out_dir)?;
    if !release {
        // Broken on purpose: only in their own directory, with their descriptors (the abort
        // fixture would take down any test process that scans the fixture directory).
        let (broken, fixtures): (Vec<PluginCrate>, Vec<PluginCrate>) =
            fixtures.into_iter().partition(|p| {
                p.package == "fhirconn-fixture-broken" || p.package == "fhirconn-fixture-abort"
            });
        let broken_dir = target.join("plugin-broken");
        let _ = std::fs::remove_dir_all(&broken_dir);
        copy_libs(&built, &broken, &broken_dir)?;
        for d in std::fs::read_dir(root.join("tests/fixtures/plugin-broken/conformance"))? {
            let d = d?.path();
            if let Some(name) = d.file_name() {
                std::fs::copy(&d, broken_dir.join(name))?;
            }
        }
        let fixture_dir = target.join("plugin-fixtures");
        for p in &broken {
            let _ = std::fs::remove_file(fixture_dir.join(lib_file(&p.lib)));
        }
        copy_libs(&built, &fixtures, &fixture_dir)?;
        let target_dir = target.join("fixture-build");
        // Each is built outside the workspace, in its own Cargo workspace:
        // - a plugin whose interface layout differs on purpose;
        // - a plugin built against the frozen copy of the 1.0.0 interface;
        // - the example vendor plugin (with its conformance descriptor).
        let vendor_dir = target.join("vendor-plugins");
        for (manifest, package, lib, dest) in [
            (
                "tests/fixtures/plugin-abi-mismatch",
                "fhirconn-fixture-abi-mismatch",
                "fhirconn_abi_mismatch",
                &fixture_dir,
            ),
            (
                "tests/fixtures/plugin-abi-v1",
                "fhirconn-fixture-abi-v1",
                "fhirconn_frozen_v1",
                &fixture_dir,
            ),
            (
                "tests/vendor-plugin",
                "acme-fhirconn-auth",
                "fhirconn_acme_apikey",
                &vendor_dir,
            ),
            (
                "tests/vendor-hmac-plugin",
                "vendor-hmac-fhirconn-auth",
                "fhirconn_vendor_hmac",
                &vendor_dir,
            ),
        ] {
            let manifest = root.join(manifest).join("Cargo.toml");
            cmd!(
                sh,
                "cargo build {locked...} --manifest-path {manifest} --target-dir {target_dir}"
            )
            .run()?;
            let krate = [PluginCrate {
                package: package.into(),
                lib: lib.into(),
            }];
            copy_libs(&target_dir.join("debug"), &krate, dest)?;
        }
        std::fs::copy(
            root.join("tests/vendor-plugin/acme-apikey.conformance.json"),
            vendor_dir.join("acme-apikey.conformance.json"),
        )?;
    }
    println!("plugins: {}", out_dir.display());
    Ok(out_dir)
}

pub(crate) fn dist() -> Result {
    let sh = shell()?;
    build_plugins(true)?;
    let locked = locked();
    cmd!(
        sh,
        "cargo build {locked...} --profile ship -p fhirconn-host --bin fhirconn"
    )
    .run()?;
    let root = project_root();
    let exe = format!("fhirconn{}", std::env::consts::EXE_SUFFIX);
    std::fs::copy(
        root.join("target/ship").join(&exe),
        root.join("target/dist").join(&exe),
    )?;
    println!("dist: {}", root.join("target/dist").display());
    Ok(())
}
