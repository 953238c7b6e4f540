//! `fhirconn export` end to end: FHIR Bulk Data kick-off, several status polls honouring
//! `Retry-After`, a token that expires mid-export, parallel streamed downloads checked as
//! NDJSON, and resuming.

use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_bin, plugin_dir};
use std::process::Command;
use std::time::Duration;

#[test]
fn a_bulk_export_waits_renews_its_token_and_downloads_checked_ndjson() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (idp, fhir) = rt.block_on(async {
        let idp = IdentityProvider::start(IdpConfig {
            audience: "bulk".into(),
            token_lifetime: Duration::from_secs(2),
            clients: vec![RegisteredClient {
                client_id: "bulk".into(),
                auth: ClientAuth::SecretBasic("bulk-secret".into()),
                scopes: vec![],
            }],
            ..IdpConfig::default()
        })
        .await
        .unwrap();
        let fhir = FhirServer::start(FhirServerConfig {
            auth: ServerAuth::Jwt(idp.verifier("bulk")),
            export_polls: 3,
            export_retry_after: Some(1),
            ..FhirServerConfig::default()
        })
        .await
        .unwrap();
        (idp, fhir)
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        format!(
            "connections:\n  bulk:\n    base-url: {}\n    auth: {{scheme: oidc-client-credentials, token-url: '{}', client-id: bulk, client-secret: bulk-secret}}\n",
            fhir.base_url(),
            idp.token_endpoint()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(fhirconn_bin())
            .current_dir(dir.path())
            .env_remove("FHIRCONN_CONFIG")
            .arg("--plugin-dir")
            .arg(plugin_dir())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "export",
        "bulk",
        "--type",
        "Patient,Observation",
        "--out",
        "data",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("2 file(s)"), "{stdout}");
    let data = dir.path().join("data");
    let patients = std::fs::read_to_string(data.join("Patient.000.ndjson")).unwrap();
    assert_eq!(patients.lines().count(), 2);
    let obs = std::fs::read_to_string(data.join("Observation.001.ndjson")).unwrap();
    assert_eq!(obs.lines().count(), 3);
    assert!(
        !data.join(".fhirconn-export.json").exists(),
        "state removed when done"
    );
    assert!(std::fs::read_dir(&data).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".part")));
    // Three polls one second apart with two-second tokens: the token was renewed mid-export.
    assert!(
        idp.tokens_issued() >= 2,
        "tokens issued: {}",
        idp.tokens_issued()
    );
    assert_eq!(
        fhir.unauthorized(),
        0,
        "no request went out with an expired token"
    );

    // Resume: a state file naming a finished job downloads what is missing only.
    let status = format!("{}/$export-status/1", fhir.base_url());
    std::fs::remove_file(data.join("Observation.001.ndjson")).unwrap();
    std::fs::write(
        data.join(".fhirconn-export.json"),
        serde_json::json!({"status": status, "done": ["Patient.000.ndjson"]}).to_string(),
    )
    .unwrap();
    let out = run(&["export", "bulk", "--out", "data"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("Observation.001.ndjson").exists());
}

#[test]
fn ctrl_c_while_waiting_deletes_the_job_on_the_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fhir = rt.block_on(async {
        FhirServer::start(FhirServerConfig {
            export_polls: 1000,
            export_retry_after: Some(1),
            ..FhirServerConfig::default()
        })
        .await
        .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        format!("connections:\n  open:\n    base-url: {}\n", fhir.base_url()),
    )
    .unwrap();
    let child = Command::new(fhirconn_bin())
        .current_dir(dir.path())
        .env_remove("FHIRCONN_CONFIG")
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(["export", "open", "--out", "data"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job exists and the client is between polls.
    let state = dir.path().join("data/.fhirconn-export.json");
    for _ in 0..100 {
        if state.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fhir.exports_cancelled(), 1);
    assert!(!state.exists(), "nothing to resume after a cancel");
}
