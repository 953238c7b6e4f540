//! `cargo xtask new-scheme`: an out-of-tree plugin crate from a template.

use crate::build::cargo_field;
use crate::{project_root, shell, Result};
use std::path::Path;
use xshell::cmd;

/// `cargo xtask new-scheme NAME [--path DIR]`: a plugin crate outside the workspace that
/// depends only on fhirconn-sdk, with a passing unit test, and a `Cargo.lock` derived from the
/// workspace's (same versions of every dependency), so that it builds with `--locked`.
pub(crate) fn new_scheme(name: &str, dir: &Path) -> Result {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        return Err(
            format!("new-scheme: '{name}' must be lowercase letters, digits and '-'").into(),
        );
    }
    let root = project_root();
    let crate_dir = dir.join(name);
    if crate_dir.exists() {
        return Err(format!("{} exists; not overwriting it", crate_dir.display()).into());
    }
    std::fs::create_dir_all(crate_dir.join("src"))?;
    let lib = format!("fhirconn_{}", name.replace('-', "_"));
    let ty: String = name
        .split('-')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let sdk = root.join("crates/fhirconn-sdk");
    let workspace = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let msrv = cargo_field(&workspace, "[workspace.package]", "rust-version")
        .ok_or("no rust-version in the workspace's Cargo.toml")?;
    let manifest = TEMPLATE_CARGO
        .replace("{name}", name)
        .replace("{lib}", &lib)
        .replace("{sdk}", &sdk.display().to_string())
        .replace("{msrv}", &msrv);
    std::fs::write(crate_dir.join("Cargo.toml"), manifest)?;
    let source = TEMPLATE_LIB.replace("{name}", name).replace("{Type}", &ty);
    std::fs::write(crate_dir.join("src/lib.rs"), source)?;
    // The workspace's lockfile, with only the root package entries brought up to date: every
    // other package keeps the version the workspace was tested with.
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock"))?;
    let sh = shell()?;
    let generated = crate_dir.join("Cargo.toml");
    if cmd!(
        sh,
        "cargo update --workspace --offline --manifest-path {generated}"
    )
    .run()
    .is_err()
    {
        cmd!(sh, "cargo update --workspace --manifest-path {generated}").run()?;
    }
    println!(
        "created {} (scheme '{name}', library lib{lib}): `cargo build` there, then \
         `fhirconn --plugin-dir {}/target/debug schemes`",
        crate_dir.display(),
        crate_dir.display()
    );
    Ok(())
}

const TEMPLATE_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
rust-version = "{msrv}"
publish = false

[lib]
name = "{lib}"
crate-type = ["cdylib", "rlib"]

[dependencies]
# A published plugin would use `fhirconn-sdk = "0.1"`.
fhirconn-sdk = { path = "{sdk}" }

[workspace]

# Panics must unwind so the SDK can turn them into errors at the plugin boundary.
[profile.dev]
panic = "unwind"

[profile.release]
panic = "unwind"
"#;

const TEMPLATE_LIB: &str = r#"//! fhirconn scheme `{name}`: sends `X-Api-Key` from `api-key`, `api-key-file` or
//! `api-key-env`. Replace `authorize` with your scheme's logic; reach the network, files and
//! environment only through `host`. Settings are declared once, in `{Type}Settings`: its
//! JSON Schema is derived, and a `SecretSetting` field `x` is written as `x`, `x-file` or
//! `x-env` (see `fhirconn_sdk::settings`).

use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Host, Result, Scheme,
};

/// The `{name}` scheme.
#[derive(Debug, Default)]
pub struct {Type};

/// an API key in the X-Api-Key header
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct {Type}Settings {
    /// API key
    api_key: SecretSetting,
}

/// A configured connection: its settings (`Debug` shows no secret).
#[derive(Debug)]
pub struct {Type}Connection({Type}Settings);

impl Scheme for {Type} {
    fn name(&self) -> &str {
        "{name}"
    }

    fn summary(&self) -> &str {
        "an API key in the X-Api-Key header"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<{Type}Settings>()
    }

    fn configure(&self, _c: &ConnectionInfo, settings: Value, host: &Host<'_>) -> Result<Box<dyn Connection>> {
        Ok(Box::new({Type}Connection(settings::parse(settings, host)?)))
    }
}

impl Connection for {Type}Connection {
    fn authorize(&self, _request: &AuthRequest, _host: &Host<'_>) -> Result<Credentials> {
        Ok(Credentials::new().secret_header("X-Api-Key", self.0.api_key.secret().clone()))
    }
}

fhirconn_sdk::export_schemes!({Type});

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_sdk::serde_json::json;
    use fhirconn_sdk::testing::{header_value, MockHost};

    #[test]
    fn the_key_is_sent_and_a_missing_one_is_a_config_error() {
        let mock = MockHost::new().with_file("key.txt", b"k-1\n");
        let creds = mock.configure_and_authorize(&{Type}, json!({"api-key-file": "key.txt"})).unwrap();
        assert_eq!(header_value(&creds, "X-Api-Key").as_deref(), Some("k-1"));
        let err = mock.configure_and_authorize(&{Type}, json!({})).unwrap_err();
        assert!(err.message().contains("exactly one of 'api-key'"), "{err}");
        assert_eq!({Type}.config_schema()["properties"]["api-key"]["writeOnly"], true);
    }
}
"#;
