//! Hostile FHIR servers: hanging, trickling, unavailable with and without `Retry-After`,
//! enormous, lying with a 200, and redirecting elsewhere. Every test ends within the configured
//! timeouts, says what happened, and never sends credentials to another origin.

use fhirconn_host::{DiagnosisKind, Host, TestReport};
use fhirconn_testkit::{Fault, FhirServer, FhirServerConfig};
use fhirconn_tests::bearer_server;
use serde_json::json;
use std::time::{Duration, Instant};

const TOKEN: &str = "CANARY-hostile-token-31337";

async fn test_once(base: &str, extra: serde_json::Value) -> (TestReport, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = json!({"base-url": base, "auth": {"scheme": "bearer", "token": TOKEN},
                          "connect-timeout": "PT1S", "read-timeout": "PT1S"});
    if let (Some(c), Some(e)) = (conn.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let host = Host::builder()
        .config_value(dir.path(), json!({"connections": {"c": conn}}))
        .plugin_dir(fhirconn_tests::plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let r = host.test(&[], None).await.unwrap().remove(0);
    (r, started.elapsed())
}

fn failure(r: &TestReport) -> (DiagnosisKind, String) {
    let d = r.failure.as_ref().expect("the test failed");
    (d.kind, d.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hanging_and_trickling_servers_time_out_within_the_configured_limits() {
    let s = bearer_server(TOKEN).await;
    for fault in [
        Fault::Slow(Duration::from_secs(30)),
        Fault::Trickle(Duration::from_millis(200)),
    ] {
        s.set_fault(fault.clone());
        let (r, took) = test_once(&s.base_url(), json!({})).await;
        let (kind, text) = failure(&r);
        assert_eq!(kind, DiagnosisKind::Timeout, "{fault:?}: {text}");
        // connect-timeout + read-timeout bound the whole exchange.
        assert!(
            took < Duration::from_millis(2800),
            "{fault:?} took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unavailable_servers_are_reported_with_their_retry_after() {
    let s = bearer_server(TOKEN).await;
    s.set_fault(Fault::Unavailable(Some(120)));
    let (r, _) = test_once(&s.base_url(), json!({})).await;
    let (_, text) = failure(&r);
    assert!(
        text.contains("HTTP 503") && text.contains("retry after 120"),
        "{text}"
    );
    assert!(
        text.contains("down for maintenance"),
        "the OperationOutcome is quoted: {text}"
    );
    s.set_fault(Fault::Unavailable(None));
    let (r, _) = test_once(&s.base_url(), json!({})).await;
    let (_, text) = failure(&r);
    assert!(
        text.contains("HTTP 503") && !text.contains("retry after"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100_mb_body_is_refused_at_the_cap_and_a_200_with_an_error_is_not_fhir() {
    let s = bearer_server(TOKEN).await;
    s.set_fault(Fault::HugeBody(100 * 1024 * 1024));
    let (r, took) = test_once(&s.base_url(), json!({"read-timeout": "PT10S"})).await;
    let (kind, text) = failure(&r);
    assert_eq!(kind, DiagnosisKind::TooLarge, "{text}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    s.set_fault(Fault::ErrorIn200);
    let (r, _) = test_once(&s.base_url(), json!({})).await;
    let (kind, text) = failure(&r);
    assert_eq!(kind, DiagnosisKind::NotFhir, "{text}");
    assert!(text.contains("an error, sent with status 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_to_another_origin_never_carries_the_credentials() {
    let elsewhere = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let s = bearer_server(TOKEN).await;
    s.set_fault(Fault::RedirectTo(format!(
        "{}/metadata",
        elsewhere.base_url()
    )));
    let (r, _) = test_once(&s.base_url(), json!({})).await;
    assert!(r.ok, "{:?}", r.failure);
    assert!(
        elsewhere.authorizations().iter().all(Option::is_none),
        "the other origin received credentials: {:?}",
        elsewhere.authorizations()
    );
    assert_eq!(
        s.authorizations().first().cloned().flatten().as_deref(),
        Some(format!("Bearer {TOKEN}").as_str()),
        "the first origin did get them"
    );
}

async fn oidc_test(token_url: &str, base: &str) -> (TestReport, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::builder()
        .config_value(
            dir.path(),
            json!({"connections": {"c": {"base-url": base, "connect-timeout": "PT1S",
                "read-timeout": "PT1S",
                "auth": {"scheme": "oidc-client-credentials", "token-url": token_url,
                         "client-id": "c", "client-secret": "CANARY-hostile-secret"}}}}),
        )
        .plugin_dir(fhirconn_tests::plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let r = host.test(&[], None).await.unwrap().remove(0);
    (r, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_token_endpoints_time_out_and_never_send_the_secret_elsewhere() {
    use fhirconn_testkit::idp::{IdentityProvider, IdpConfig, IdpFault};
    let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
    let fhir = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();

    idp.set_fault(IdpFault::TokenHang);
    let (r, took) = oidc_test(&idp.token_endpoint(), &fhir.base_url()).await;
    let (kind, text) = failure(&r);
    assert!(
        text.starts_with("credentials: ") && text.contains("timed out"),
        "{kind}: {text}"
    );
    assert!(took < Duration::from_millis(2800), "{took:?}");

    // A token endpoint redirecting elsewhere: plugins' requests never follow redirects.
    let elsewhere = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let target: &'static str =
        Box::leak(format!("{}/token", elsewhere.base_url()).into_boxed_str());
    idp.set_fault(IdpFault::TokenRedirect(target));
    let (r, _) = oidc_test(&idp.token_endpoint(), &fhir.base_url()).await;
    let (_, text) = failure(&r);
    assert!(text.contains("HTTP 307"), "{text}");
    assert!(!text.contains("CANARY-hostile-secret"));
    assert_eq!(elsewhere.requests(), 0, "the other origin was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_server_certificate_is_diagnosed() {
    use fhirconn_testkit::pki::Pki;
    use fhirconn_testkit::tls::{server_config_with, ClientCerts};
    let pki = Pki::new();
    let s = FhirServer::start_tls(
        FhirServerConfig::default(),
        server_config_with(&pki, &pki.expired_server(), ClientCerts::None),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.root_pem()).unwrap();
    let host = Host::builder()
        .config_value(
            dir.path(),
            json!({"connections": {"c": {"base-url": s.base_url(),
                "trusted-root-certificates-file": "ca.pem"}}}),
        )
        .plugin_dir(fhirconn_tests::plugin_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap();
    let r = host.test(&[], None).await.unwrap().remove(0);
    let (kind, text) = failure(&r);
    assert_eq!(kind, DiagnosisKind::Tls, "{text}");
    assert!(text.contains("has expired"), "{text}");
}
