//! The vendor story: a plugin built out of tree against `fhirconn-sdk` alone
//! (tests/vendor-plugin, built by `cargo xtask build-plugins`) is loaded by the unchanged
//! `fhirconn` binary, works end to end, and passes the conformance suite's generic cases; so
//! does the per-request signing example beside it (tests/vendor-hmac-plugin).

use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_bin, root};
use std::process::Command;

fn vendor_dir() -> std::path::PathBuf {
    let d = root().join("target/vendor-plugins");
    assert!(
        d.exists(),
        "run `cargo xtask test` (it builds the vendor plugin) first"
    );
    d
}

#[test]
fn the_fhirconn_binary_loads_and_uses_an_out_of_tree_vendor_scheme() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (idp, fhir) = rt.block_on(async {
        let idp = IdentityProvider::start(IdpConfig {
            audience: "acme-fhir".into(),
            clients: vec![RegisteredClient {
                client_id: "acme-client".into(),
                auth: ClientAuth::SecretPost("CANARY-acme-key-9".into()),
                scopes: vec![],
            }],
            ..IdpConfig::default()
        })
        .await
        .unwrap();
        let fhir = FhirServer::start(FhirServerConfig {
            auth: ServerAuth::Jwt(idp.verifier("acme-fhir")),
            ..FhirServerConfig::default()
        })
        .await
        .unwrap();
        (idp, fhir)
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.txt"), "CANARY-acme-key-9\n").unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        format!(
            "connections:\n  acme:\n    base-url: {}\n    auth:\n      scheme: acme-apikey\n      token-url: {}\n      client-id: acme-client\n      api-key-file: key.txt\n",
            fhir.base_url(),
            idp.apikey_token_endpoint()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(fhirconn_bin())
            .current_dir(dir.path())
            .env_remove("FHIRCONN_PLUGIN_PATH")
            .arg("--plugin-dir")
            .arg(vendor_dir())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["schemes", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acme = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "acme-apikey")
        .expect("the vendor scheme is listed");
    assert_eq!(acme["version"], "2.3.0");
    let out = run(&["-vv", "test", "--probe", "Patient/1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("PASS  acme"), "{stdout}");
    assert!(!stdout.contains("CANARY-acme-key-9") && !stderr.contains("CANARY-acme-key-9"));
    assert_eq!(idp.tokens_issued(), 1);
}

#[test]
fn the_conformance_suite_runs_over_the_vendor_plugin() {
    let bin = root().join("target/debug/fhirconn-conformance");
    assert!(
        bin.exists(),
        "run `cargo xtask test` (it builds fhirconn-conformance) first"
    );
    let out = Command::new(bin)
        .arg("--plugin-dir")
        .arg(vendor_dir())
        .arg("--fhirconn")
        .arg(fhirconn_bin())
        .args(["--format", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let of = |scheme: &str| -> Vec<&serde_json::Value> {
        let rows: Vec<_> = results.iter().filter(|r| r["scheme"] == scheme).collect();
        assert_eq!(rows.len(), 7, "{scheme}: {stdout}");
        rows
    };
    let acme = of("acme-apikey");
    for case in [
        "passes",
        "wrong-credentials-diagnosed",
        "renews-across-expiry",
        "401-retries-once",
        "slow-server-times-out",
        "no-secret-in-verbose-output",
    ] {
        let r = acme.iter().find(|r| r["case"] == case).unwrap();
        assert_eq!(r["outcome"], "pass", "{case}: {r}");
    }
    // The per-request signing example: checked by the testkit's HMAC-verifying server,
    // including its scheme-specific case; it fetches no tokens.
    let hmac = of("vendor-hmac");
    for (case, outcome) in [
        ("passes", "pass"),
        ("wrong-credentials-diagnosed", "pass"),
        ("renews-across-expiry", "not-applicable"),
        ("401-retries-once", "not-applicable"),
        ("slow-server-times-out", "pass"),
        ("no-secret-in-verbose-output", "pass"),
        ("scheme-specific", "pass"),
    ] {
        let r = hmac.iter().find(|r| r["case"] == case).unwrap();
        assert_eq!(r["outcome"], outcome, "{case}: {r}");
    }
}
