//! The testkit's Azure identity endpoints behave as Microsoft documents them: IMDS needs
//! `Metadata: true`, App Service its `X-IDENTITY-HEADER`, both the documented api-version and
//! a `resource`, and both refuse anything carrying a secret; the mock Entra takes a federated
//! client assertion only while it is the token file's current content. Hand-made requests, no
//! fhirconn code involved.

use fhirconn_testkit::azure_identity::{federated_token, IdentityEndpoint, IMDS_PATH};
use fhirconn_testkit::entra::{EntraConfig, MockEntra, TENANT_ID};
use serde_json::Value;
use std::time::Duration;

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn imds_and_app_service_answer_only_well_formed_requests_without_secrets() {
    let mi = IdentityEndpoint::start(&["user-client"]).await.unwrap();
    let imds = |q: &str| format!("{}{IMDS_PATH}?{q}", mi.imds_host());
    let md = [("Metadata", "true")];
    let ok = "api-version=2018-02-01&resource=https%3A%2F%2Ffhir.example";
    let (status, body) = get(&imds(ok), &md).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["expires_in"].is_string() && body["expires_on"].is_string(),
        "{body}"
    );
    assert_eq!(body["resource"], "https://fhir.example");
    for (query, headers) in [
        (ok.to_string(), vec![]),
        (
            ok.to_string(),
            vec![("Metadata", "true"), ("X-Forwarded-For", "1.2.3.4")],
        ),
        (
            ok.to_string(),
            vec![("Metadata", "true"), ("Authorization", "Bearer x")],
        ),
        (format!("{ok}&client_secret=s"), md.to_vec()),
        (format!("{ok}&client_id=unknown"), md.to_vec()),
        ("api-version=2018-02-01".to_string(), md.to_vec()),
        ("resource=x".to_string(), md.to_vec()),
    ] {
        let (status, body) = get(&imds(&query), &headers).await;
        assert_eq!(status, 400, "{query} {headers:?}: {body}");
    }
    let (status, _) = get(&imds(&format!("{ok}&client_id=user-client")), &md).await;
    assert_eq!(status, 200);

    let app = |q: &str| format!("{}?{q}", mi.app_service_endpoint());
    let ok = "api-version=2019-08-01&resource=https%3A%2F%2Ffhir.example";
    let header = mi.identity_header();
    let (status, body) = get(&app(ok), &[("X-IDENTITY-HEADER", &header)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["expires_on"].is_string() && body.get("expires_in").is_none(),
        "{body}"
    );
    assert_eq!(
        get(&app(ok), &[("X-IDENTITY-HEADER", "wrong")]).await.0,
        401
    );
    assert_eq!(get(&app(ok), &[]).await.0, 401);
    let old = "api-version=2017-09-01&resource=x";
    assert_eq!(
        get(&app(old), &[("X-IDENTITY-HEADER", &header)]).await.0,
        400
    );
    assert!(!mi.refusals().is_empty());
}

#[tokio::test]
async fn entra_takes_a_federated_assertion_only_while_it_is_the_files_content() {
    let file = std::env::temp_dir().join(format!("testkit-federated-{}", std::process::id()));
    let first = federated_token("sub", Duration::from_secs(600));
    std::fs::write(&file, &first).unwrap();
    let entra = MockEntra::start(EntraConfig {
        federated_clients: vec![("wl".into(), file.clone())],
        ..EntraConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", entra.authority_host());
    let send = |assertion: String, extra: Vec<(&'static str, &'static str)>| {
        let url = url.clone();
        async move {
            let mut form = vec![
                ("grant_type", "client_credentials".to_string()),
                ("client_id", "wl".into()),
                ("scope", "https://fhir.example/.default".into()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ),
                ("client_assertion", assertion),
            ];
            form.extend(extra.into_iter().map(|(k, v)| (k, v.to_string())));
            let resp = reqwest::Client::new()
                .post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(
                    url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(&form)
                        .finish(),
                )
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    assert_eq!(send(first.clone(), vec![]).await, 200);
    assert_eq!(send(first.clone(), vec![("client_secret", "s")]).await, 401);
    assert_eq!(send("not.the.file".into(), vec![]).await, 401);
    let rotated = federated_token("sub", Duration::from_secs(600));
    std::fs::write(&file, &rotated).unwrap();
    assert_eq!(
        send(first, vec![]).await,
        401,
        "the old token after rotation"
    );
    assert_eq!(send(rotated, vec![]).await, 200);
    let expired = federated_token("sub", Duration::ZERO);
    std::fs::write(&file, &expired).unwrap();
    assert_eq!(send(expired, vec![]).await, 401);
    let _ = std::fs::remove_file(&file);
}
