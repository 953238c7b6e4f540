//! Shared helpers for the workspace integration tests: where the built plugins, fixtures and
//! the `fhirconn` binary are (built by `cargo xtask test` / `cargo xtask build-plugins`).

use std::path::PathBuf;

/// Every scheme the workspace ships (the built-in `none` and one plugin per scheme), sorted.
pub const SCHEMES: &[&str] = &[
    "azure-ad",
    "basic",
    "bearer",
    "mtls",
    "none",
    "oidc-client-credentials",
    "smart-backend",
];

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn must_exist(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} not found at {}: run `cargo xtask test` (or `cargo xtask build-plugins` and \
         `cargo build -p fhirconn-host`) first",
        p.display()
    );
    p
}

/// The directory of built plugins.
pub fn plugin_dir() -> PathBuf {
    let p = std::env::var_os("FHIRCONN_TEST_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/plugins"));
    must_exist(p, "the plugin directory")
}

/// The directory of fixture plugins.
pub fn fixture_dir() -> PathBuf {
    must_exist(
        root().join("target/plugin-fixtures"),
        "the fixture plugin directory",
    )
}

/// One fixture library's path.
pub fn fixture(lib: &str) -> PathBuf {
    must_exist(
        fixture_dir().join(format!(
            "{}{lib}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )),
        "a fixture plugin",
    )
}

/// The `fhirconn` binary.
pub fn fhirconn_bin() -> PathBuf {
    let p = std::env::var_os("FHIRCONN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root()
                .join("target/debug")
                .join(format!("fhirconn{}", std::env::consts::EXE_SUFFIX))
        });
    must_exist(p, "the fhirconn binary")
}
