//! Unit tests of the transport: typed setup errors.

use super::*;
use crate::config::{connections, Document};
use serde_json::json;

fn settings(dir: &std::path::Path, extra: serde_json::Value) -> ConnectionSettings {
    let mut c = json!({"base-url": "https://h.example"});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    let doc = Document::from_value(&dir.join("f.yaml"), json!({"connections": {"a": c}}));
    connections(&doc).unwrap().remove("a").unwrap()
}

#[test]
fn setup_errors_are_typed_and_name_their_setting() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Arc::new(ClientPool::default());
    let new = |extra| Transport::new(settings(dir.path(), extra), pool.clone());
    let e = new(json!({"use-system-roots": false})).unwrap_err();
    assert!(matches!(e, SetupError::NoRoots));
    assert_eq!(e.field(), "use-system-roots");
    assert_eq!(
        e.to_string(),
        "use-system-roots is false but no trusted-root-certificates-file is set"
    );
    let e = new(json!({"trusted-root-certificates-file": "missing.pem"})).unwrap_err();
    assert_eq!(e.field(), "trusted-root-certificates-file");
    assert!(e.to_string().starts_with("cannot read "), "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the io error is the source"
    );
    // safe-write: ok (a test fixture in a temporary directory)
    std::fs::write(dir.path().join("empty.pem"), "no certificates here\n").unwrap();
    let e = new(json!({"trusted-root-certificates-file": "empty.pem"})).unwrap_err();
    assert_eq!(e.field(), "trusted-root-certificates-file");
    assert!(e.to_string().contains("holds no"), "{e}");
    assert!(new(json!({})).is_ok());
    assert!(pool.is_empty(), "clients are built when first used");
}

/// A plain-http connection never reads the system's roots (~10 ms, half of a one-shot
/// `fhirconn test`): its client is built and used without them; a long-lived host's warm-up
/// reads them, so its first https request does not wait for them.
#[tokio::test]
async fn plain_http_reads_no_system_roots_and_warm_up_does() {
    use fhirconn_testkit::hostile::{Answer, HostileServer};
    let server = HostileServer::start().await.unwrap();
    server.otherwise(Answer::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let pool = Arc::new(ClientPool::default());
    let s = settings(dir.path(), json!({"base-url": server.url("/fhir")}));
    let t = Arc::new(Transport::new(s, pool.clone()).unwrap());
    let client = t.client(None).unwrap();
    let status = client
        .get(server.url("/fhir/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let verifier = pool.verifier(&t.key).unwrap();
    assert!(!verifier.loaded(), "an http request read the system roots");
    warm_up(std::slice::from_ref(&t)).await;
    assert!(verifier.loaded(), "the warm-up reads them");
}
