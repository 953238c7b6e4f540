//! `azure-ad` without a person or a client secret, end to end through the `fhirconn` binary
//! with the environment the Azure SDKs read pointed at the testkit's servers: managed identity
//! (IMDS: `AZURE_POD_IDENTITY_AUTHORITY_HOST`; App Service / Container Apps:
//! `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`) and workload identity (`AZURE_CLIENT_ID`,
//! `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`, `AZURE_FEDERATED_TOKEN_FILE`). The token's
//! audience is always the configured one, and plain http goes only to loopback or, for a
//! declared metadata request, a link-local address.

use fhirconn_host::{Host, Request};
use fhirconn_testkit::azure_identity::{federated_token, IdentityEndpoint, IMDS_PATH};
use fhirconn_testkit::entra::{EntraConfig, MockEntra, TENANT_ID};
use fhirconn_testkit::hostile::{documents, Answer, HostileServer};
use fhirconn_testkit::{FhirServer, FhirServerConfig, JwtAuth};
use fhirconn_tests::{fhirconn_command, run_command, Out, AZURE_ENV};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A FHIR server accepting tokens `verifier` checks for its own origin, whose 401 challenge
/// names Azure Resource Manager as the resource (a hostile server's wish: never granted).
async fn fhir(verifier: impl Fn(&str) -> JwtAuth) -> FhirServer {
    let fhir = fhirconn_tests::jwt_server_for_own_origin(verifier).await;
    fhir.set_challenge(Some(documents::foreign_resource_challenge(
        "https://login.microsoftonline.com",
        TENANT_ID,
    )));
    fhir
}

/// Writes a connections file with connection `c` (and extra host settings) in `dir`.
fn config(dir: &Path, base_url: &str, auth: Value, extra: Value) {
    let mut c = json!({"base-url": base_url, "auth": auth});
    if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
        c.extend(e);
    }
    let doc = json!({"connections": {"c": c}});
    std::fs::write(dir.join("fhirconn.yaml"), doc.to_string()).unwrap();
}

/// A host with connection `c` to `base_url` authenticating with `auth`.
async fn one_connection(dir: &Path, base_url: &str, auth: Value) -> Host {
    let doc = fhirconn_tests::connections_to(base_url, &[("c", auth)], json!({}));
    fhirconn_tests::build_host(dir, doc).await
}

/// `fhirconn -vv ARGS` in `dir` with only `env` of the Azure variables set.
fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Out {
    let mut cmd: Command = fhirconn_command(dir, true);
    for v in AZURE_ENV {
        cmd.env_remove(v);
    }
    cmd.env("XDG_STATE_HOME", dir.join("state"))
        .env("FHIRCONN_CREDENTIALS", dir.join("store.json"))
        .envs(env.iter().copied())
        .arg("-vv")
        .args(args);
    run_command(&mut cmd)
}

fn assert_no_leak(out: &Out, secrets: &[String]) {
    let all = out.all();
    for s in secrets {
        assert!(!all.contains(s.as_str()), "a secret leaked: {all}");
    }
}

#[test]
fn managed_identity_through_imds_sends_metadata_true_the_configured_audience_and_no_secret() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mi, fhir) = rt.block_on(async {
        let mi = IdentityEndpoint::start(&["user-mi-client"]).await.unwrap();
        let fhir = fhir(|a| mi.verifier(a)).await;
        (mi, fhir)
    });
    let dir = tempfile::tempdir().unwrap();
    let imds = mi.imds_host();
    let env = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str())];
    config(
        dir.path(),
        &fhir.base_url(),
        json!({"scheme": "azure-ad", "flow": "managed-identity"}),
        json!({}),
    );
    let out = run(dir.path(), &env, &["get", "c", "Patient/1"]);
    assert_eq!(out.code, 0, "{}", out.all());
    config(
        dir.path(),
        &fhir.base_url(),
        json!({"scheme": "azure-ad", "flow": "managed-identity", "client-id": "user-mi-client"}),
        json!({}),
    );
    let out2 = run(dir.path(), &env, &["test"]);
    assert_eq!(out2.code, 0, "{}", out2.all());
    let got = mi.received();
    assert_eq!(got.len(), 2, "{got:?}");
    for (r, user) in got.iter().zip([None, Some("user-mi-client")]) {
        assert_eq!(r.path, IMDS_PATH);
        assert_eq!(r.headers.get("metadata").map(String::as_str), Some("true"));
        assert_eq!(r.query["api-version"], "2018-02-01");
        assert_eq!(
            r.query["resource"],
            fhir.origin(),
            "not the challenge's resource"
        );
        assert_eq!(r.query.get("client_id").map(String::as_str), user);
        assert!(!r.had_body && !r.headers.contains_key("authorization"));
        assert!(!r.headers.contains_key("x-identity-header"));
    }
    assert!(mi.refusals().is_empty(), "{:?}", mi.refusals());
    assert_no_leak(&out, &mi.issued_tokens());
    assert_no_leak(&out2, &mi.issued_tokens());
}

#[test]
fn app_service_gets_its_identity_header_and_never_sees_it_printed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mi, fhir) = rt.block_on(async {
        let mi = IdentityEndpoint::start(&["/subscriptions/s/rg/identity"])
            .await
            .unwrap();
        let fhir = fhir(|a| mi.verifier(a)).await;
        (mi, fhir)
    });
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, header) = (mi.app_service_endpoint(), mi.identity_header());
    let env = [
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", header.as_str()),
        // IMDS is not asked when App Service's endpoint is there.
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9"),
    ];
    config(
        dir.path(),
        &fhir.base_url(),
        json!({"scheme": "azure-ad", "flow": "managed-identity",
               "msi-res-id": "/subscriptions/s/rg/identity"}),
        json!({}),
    );
    let out = run(dir.path(), &env, &["get", "c", "Patient/1"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let r = &mi.received()[0];
    assert_eq!(r.path, "/msi/token");
    assert_eq!(r.query["api-version"], "2019-08-01");
    assert_eq!(r.query["resource"], fhir.origin());
    assert_eq!(r.query["mi_res_id"], "/subscriptions/s/rg/identity");
    assert_eq!(r.headers["x-identity-header"], header);
    assert!(!r.headers.contains_key("metadata"));
    let mut secrets = mi.issued_tokens();
    secrets.push(header.clone());
    assert_no_leak(&out, &secrets);
    // A wrong header is refused by the endpoint, and the error names no header value.
    let out = run(
        dir.path(),
        &[
            ("IDENTITY_ENDPOINT", endpoint.as_str()),
            ("IDENTITY_HEADER", "wrong-header-value"),
        ],
        &["test"],
    );
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.all().contains("X-IDENTITY-HEADER"), "{}", out.all());
    assert_no_leak(&out, &["wrong-header-value".to_string()]);
}

#[test]
fn workload_identity_reads_the_environment_and_the_rotated_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(
        &file,
        federated_token("system:serviceaccount:ns:app", Duration::from_secs(3600)),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (entra, fhir) = rt.block_on(async {
        let entra = MockEntra::start(EntraConfig {
            federated_clients: vec![("wl-app".into(), file.clone())],
            ..EntraConfig::default()
        })
        .await
        .unwrap();
        let fhir = fhir(|a| entra.verifier(a)).await;
        (entra, fhir)
    });
    config(
        dir.path(),
        &fhir.base_url(),
        json!({"scheme": "azure-ad", "flow": "workload-identity"}),
        json!({}),
    );
    let (authority, path) = (entra.authority_host(), file.to_string_lossy().to_string());
    let env = [
        ("AZURE_CLIENT_ID", "wl-app"),
        ("AZURE_TENANT_ID", TENANT_ID),
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_FEDERATED_TOKEN_FILE", path.as_str()),
    ];
    let mut assertions = Vec::new();
    for _ in 0..2 {
        let out = run(dir.path(), &env, &["get", "c", "Patient/1"]);
        assert_eq!(out.code, 0, "{}", out.all());
        let current = std::fs::read_to_string(&file).unwrap();
        let p = entra.token_request_params().pop().unwrap();
        assert_eq!(p["client_assertion"], current);
        assert_eq!(p["client_id"], "wl-app");
        assert_eq!(p["scope"], format!("{}/.default", fhir.origin()));
        assert!(!p.contains_key("client_secret"));
        let mut secrets = entra.issued_tokens();
        secrets.push(current.clone());
        assert_no_leak(&out, &secrets);
        assertions.push(current);
        // Kubernetes rotates the projected token.
        std::fs::write(
            &file,
            federated_token("system:serviceaccount:ns:app", Duration::from_secs(3600)),
        )
        .unwrap();
    }
    assert_ne!(assertions[0], assertions[1]);
}

/// In one process: the token expires, the file was rotated meanwhile, and the renewal sends
/// the new content (the mock refuses the old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workload_identity_rereads_the_token_file_at_every_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, federated_token("sub", Duration::from_secs(600))).unwrap();
    let entra = MockEntra::start(EntraConfig {
        federated_clients: vec![("wl-app".into(), file.clone())],
        access_token_lifetime: Duration::from_secs(2),
        ..EntraConfig::default()
    })
    .await
    .unwrap();
    let fhir = fhir(|a| entra.verifier(a)).await;
    let auth = json!({"scheme": "azure-ad", "flow": "workload-identity", "client-id": "wl-app",
                      "tenant": TENANT_ID, "authority-host": entra.authority_host(),
                      "federated-token-file": "token"});
    let host = one_connection(dir.path(), &fhir.base_url(), auth).await;
    let c = host.connection("c").unwrap();
    let first = c.send(Request::get("Patient/1")).await.unwrap();
    assert_eq!(first.status, 200);
    std::fs::write(&file, federated_token("sub", Duration::from_secs(600))).unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let second = c.send(Request::get("Patient/1")).await.unwrap();
    assert_eq!(second.status, 200, "{:?}", entra.last_error());
    let sent: Vec<String> = entra
        .token_request_params()
        .iter()
        .map(|p| p["client_assertion"].clone())
        .collect();
    assert_eq!(sent.len(), 2, "{:?}", entra.last_error());
    assert_ne!(sent[0], sent[1]);
    assert_eq!(sent[1], std::fs::read_to_string(&file).unwrap());
}

#[test]
fn plain_http_to_a_metadata_endpoint_off_the_link_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        "https://fhir.example/R4",
        json!({"scheme": "azure-ad", "flow": "managed-identity"}),
        json!({"connect-timeout": "PT1S"}),
    );
    for env in [
        [("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://10.255.255.1")],
        [("IDENTITY_ENDPOINT", "http://192.0.2.1:8081/msi/token")],
    ] {
        let mut env = env.to_vec();
        env.push(("IDENTITY_HEADER", "h-secret-1"));
        if env[0].0 == "AZURE_POD_IDENTITY_AUTHORITY_HOST" {
            env.pop();
        }
        let out = run(dir.path(), &env, &["test"]);
        assert_eq!(out.code, 1, "{}", out.all());
        assert!(
            out.all().contains("refusing plain http"),
            "{env:?}: {}",
            out.all()
        );
        assert_no_leak(&out, &["h-secret-1".to_string()]);
    }
    // The documented IMDS address itself is tried (plain http to 169.254.169.254 is allowed
    // for this declared request); nothing listens there in a test, so it fails on the network.
    let out = run(dir.path(), &[], &["test"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(!out.all().contains("refusing plain http"), "{}", out.all());
    assert!(out.all().contains("169.254.169.254"), "{}", out.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_provided_link_local_token_endpoint_is_still_refused() {
    let idp = HostileServer::start().await.unwrap();
    idp.on(
        "GET",
        "/.well-known/openid-configuration",
        Answer::json(
            200,
            &documents::oidc_discovery(
                "{self}",
                "http://169.254.169.254/metadata/identity/oauth2/token",
            ),
        ),
    );
    let fhir = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = json!({"scheme": "oidc-client-credentials", "issuer": idp.origin(),
                      "client-id": "app", "client-secret": "CANARY-linklocal-secret"});
    let host = one_connection(dir.path(), &fhir.base_url(), auth).await;
    let report = host.test(&[], None).await.unwrap().remove(0);
    let text = fhirconn_tests::failure(&report);
    assert!(text.contains("refusing plain http"), "{text}");
    assert!(!text.contains("CANARY-linklocal-secret"), "{text}");
}
