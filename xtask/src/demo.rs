//! `cargo xtask demo`: the testkit servers, one connection per scheme, `fhirconn test`.

use crate::build::build_plugins;
use crate::{locked, project_root, shell, start_testkit, write_private, Result};
use std::io::Write as _;
use std::process::Command;
use xshell::cmd;

pub(crate) fn demo() -> Result {
    let sh = shell()?;
    let root = project_root();
    let plugins = build_plugins(false)?;
    let locked = locked();
    cmd!(
        sh,
        "cargo build {locked...} -p fhirconn-host --bin fhirconn -p fhirconn-testkit --bin fhirconn-testkit"
    )
    .run()?;
    let (mut child, info) = start_testkit(&root.join("target/debug/fhirconn-testkit"), &["serve"])?;
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    write_files(&dir, &info)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let config = format!(
        "# Written by `cargo xtask demo`: one connection per scheme against the testkit servers.\n\
         connections:\n  \
           public:\n    base-url: {}\n  \
           basic-demo:\n    base-url: {}\n    connect-timeout: PT2S\n    read-timeout: PT30S\n    \
             auth:\n      scheme: basic\n      username: {}\n      password-file: basic-password.txt\n  \
           bearer-demo:\n    base-url: {}\n    probe: Patient?_count=1\n    \
             auth:\n      scheme: bearer\n      token-file: bearer-token.txt\n  \
           oidc-demo:\n    base-url: {}\n    probe: Patient?_count=1\n    \
             auth:\n      scheme: oidc-client-credentials\n      issuer: {}\n      \
             client-id: {}\n      client-secret-file: client-secret.txt\n      scope: system/*.rs\n  \
           smart-demo:\n    base-url: {}\n    probe: Patient?_count=1\n    \
             auth:\n      scheme: smart-backend\n      client-id: {}\n      \
             private-key-file: smart-key.pem\n      kid: {}\n      scope: system/*.rs\n  \
           mtls-demo:\n    base-url: {}\n    trusted-root-certificates-file: demo-ca.pem\n    \
             probe: Patient/1\n    auth:\n      scheme: mtls\n      \
             certificate-file: client.crt\n      private-key-file: client.key\n  \
           azure-demo:\n    base-url: {}\n    probe: Patient/1\n    auth:\n      scheme: azure-ad\n      \
             authority-host: {}\n      client-id: {}\n      flow: client-credentials\n      \
             client-secret-file: azure-secret.txt\n      \
             # no tenant: discovered from the server's 401 challenge; audience: the origin\n  \
           azure-workload-demo:\n    base-url: {}\n    probe: Patient/1\n    auth:\n      \
             scheme: azure-ad\n      flow: workload-identity\n      authority-host: {}\n      \
             client-id: {}\n      federated-token-file: {}\n  \
           azure-managed-identity-demo:\n    base-url: {}\n    probe: Patient/1\n    auth:\n      \
             scheme: azure-ad\n      flow: managed-identity   # IMDS: AZURE_POD_IDENTITY_AUTHORITY_HOST\n",
        s(&info["none"]["base-url"]),
        s(&info["basic"]["base-url"]),
        s(&info["basic"]["username"]),
        s(&info["bearer"]["base-url"]),
        s(&info["oauth"]["base-url"]),
        s(&info["oauth"]["issuer"]),
        s(&info["oauth"]["client-id"]),
        s(&info["oauth"]["base-url"]),
        s(&info["oauth"]["smart-client-id"]),
        s(&info["oauth"]["kid"]),
        s(&info["mtls"]["base-url"]),
        s(&info["azure"]["base-url"]),
        s(&info["azure"]["authority-host"]),
        s(&info["azure"]["client-id"]),
        s(&info["azure"]["base-url"]),
        s(&info["azure"]["authority-host"]),
        s(&info["azure"]["workload-client-id"]),
        s(&info["azure"]["federated-token-file"]),
        s(&info["azure"]["managed-identity-base-url"]),
    );
    std::fs::write(
        dir.join("aws-secret.txt"),
        s(&info["aws"]["secret-access-key"]),
    )?;
    let config = format!(
        "{config}  healthlake-demo:\n    base-url: {}\n    probe: Patient/1\n    auth:\n      \
         scheme: aws-sigv4\n      region: {}\n      access-key-id: {}\n      \
         secret-access-key-file: aws-secret.txt\n",
        s(&info["aws"]["base-url"]),
        s(&info["aws"]["region"]),
        s(&info["aws"]["access-key-id"]),
    );
    write_private(
        &dir.join("google-service-account.json"),
        &info["google"]["key-file"].to_string(),
    )?;
    let config = format!(
        "{config}  google-demo:\n    base-url: {}\n    probe: Patient/1\n    auth:\n      \
         scheme: google-service-account\n      key-file: google-service-account.json\n  \
         google-metadata-demo:\n    base-url: {}\n    probe: Patient/1\n    auth:\n      \
         scheme: google-service-account\n      source: metadata-server   # GCE_METADATA_HOST\n",
        s(&info["google"]["base-url"]),
        s(&info["google"]["base-url"]),
    );
    let cfg = dir.join("fhirconn.yaml");
    std::fs::write(&cfg, config)?;
    println!(
        "\n--- {} ---\n{}",
        cfg.display(),
        std::fs::read_to_string(&cfg)?
    );
    println!("--- fhirconn test ---");
    let status = Command::new(root.join("target/debug/fhirconn"))
        .args(["--config"])
        .arg(&cfg)
        .arg("--plugin-dir")
        .arg(&plugins)
        .arg("test")
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            s(&info["azure"]["imds-host"]),
        )
        .env("GCE_METADATA_HOST", s(&info["google"]["metadata-host"]))
        .status()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.flush();
    }
    let _ = child.kill();
    let _ = child.wait();
    if !status.success() {
        return Err("the demo's connection tests failed".into());
    }
    println!("\ntry it yourself:\n  target/debug/fhirconn -c {} --plugin-dir {} get bearer-demo Patient/1", cfg.display(), plugins.display());
    Ok(())
}

/// The demo's credential files, next to its connections file: each from its place in the
/// servers' description; the secrets (passwords, tokens, private keys) readable only by their
/// owner (0600), the certificates as any file.
fn write_files(dir: &std::path::Path, info: &serde_json::Value) -> Result {
    let files = [
        ("basic-password.txt", "/basic/password", true),
        ("bearer-token.txt", "/bearer/token", true),
        ("client-secret.txt", "/oauth/client-secret", true),
        ("smart-key.pem", "/oauth/private-key-pem", true),
        ("demo-ca.pem", "/mtls/ca-pem", false),
        ("azure-secret.txt", "/azure/client-secret", true),
        ("client.crt", "/mtls/certificate-pem", false),
        ("client.key", "/mtls/private-key-pem", true),
    ];
    for (name, pointer, secret) in files {
        let text = info
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if secret {
            write_private(&dir.join(name), text)?;
        } else {
            std::fs::write(dir.join(name), text)?;
        }
    }
    Ok(())
}
