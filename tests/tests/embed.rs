//! Embedding: `host/examples/embed.rs` run against a testkit server, and the reqwest
//! middleware's origin rule (credentials only on the connection's own origin).

use fhirconn_host::middleware::Authentication;
use fhirconn_host::Host;
use fhirconn_testkit::hostile::{Answer, HostileServer};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{plugin_dir, root};
use serde_json::json;

const TOKEN: &str = "embed-token-0123456789";

/// The example, built by `cargo build -p fhirconn-host --examples` (`cargo xtask test` does).
fn example() -> std::path::PathBuf {
    let p = root().join("target/debug/examples/embed");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p fhirconn-host --examples`",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_sends_authenticated_requests() {
    let server = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Bearer {
            tokens: vec![TOKEN.into()],
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let base = server.base_url();
    let run = move |token: &str| {
        std::process::Command::new(example())
            .env("FHIR_BASE_URL", &base)
            .env("FHIR_TOKEN", token)
            .env("FHIRCONN_PLUGIN_PATH", plugin_dir())
            .output()
            .unwrap()
    };
    let (good, bad) = tokio::task::spawn_blocking(move || (run(TOKEN), run("wrong-token")))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(text.contains("GET metadata: 200"), "{text}");
    assert!(text.contains("GET Patient?_count=1: 200 OK"), "{text}");
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("GET Patient?_count=1: 401"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_adds_credentials_only_on_the_connection_origin() {
    let home = HostileServer::start().await.unwrap();
    let other = HostileServer::start().await.unwrap();
    home.otherwise(Answer::fhir(200, &json!({"resourceType": "Bundle"})));
    other.otherwise(Answer::fhir(200, &json!({"resourceType": "Bundle"})));
    let dir = tempfile::tempdir().unwrap();
    let conn = json!({"base-url": home.url("/fhir"), "auth": {"scheme": "bearer", "token": TOKEN}});
    let host = Host::builder()
        .config_value(dir.path(), json!({"connections": {"c": conn}}))
        .plugin_dir(plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(Authentication::new(host.connection("c").unwrap()))
        .build();
    for url in [home.url("/fhir/Patient"), other.url("/fhir/Patient")] {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let sent = home.received_at("/fhir/Patient");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let elsewhere = other.received_at("/fhir/Patient");
    assert_eq!(elsewhere.len(), 1);
    assert_eq!(
        elsewhere[0].header("authorization"),
        None,
        "no credentials to another origin"
    );
}
