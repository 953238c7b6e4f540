//! A failed read of the system's trust roots is not kept for the host's lifetime: the next
//! handshake reads them again (a transient failure, e.g. `EMFILE` in a busy proxy, must not
//! fail its TLS for good). One test in its own binary: it sets `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` (read by the platform verifier on Linux) before any thread starts.

use fhirconn_testkit::pki::Pki;
use fhirconn_testkit::tls::{server_config, ClientCerts};
use fhirconn_testkit::{FhirServer, FhirServerConfig};

#[test]
fn a_failed_system_roots_load_is_retried_at_the_next_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("system-roots.pem");
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    // The "system" has no roots yet: the bundle is missing and the directory empty.
    std::env::set_var("SSL_CERT_FILE", &bundle);
    std::env::set_var("SSL_CERT_DIR", &empty);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pki = Pki::new();
        let server = FhirServer::start_tls(
            FhirServerConfig::default(),
            server_config(&pki, ClientCerts::None),
        )
        .await
        .unwrap();
        let config = serde_json::json!({"connections": {"s": {
            "base-url": server.base_url(), "auth": {"scheme": "none"}}}});
        // Warm-up off: the first request is the first read of the roots.
        let host = fhirconn_tests::host_builder(dir.path(), config)
            .warm_up_clients(false)
            .build()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let conn = host.connection("s").unwrap();
        let first = conn.get("metadata").await;
        let err = first.expect_err("no trusted roots: the handshake fails");
        assert!(err.to_string().contains("TLS"), "{err}");
        // The roots appear (an administrator fixed the bundle, a descriptor was free again).
        std::fs::write(&bundle, pki.root_pem()).unwrap();
        let second = conn.get("metadata").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second.status.as_u16(), 200);
    });
}
