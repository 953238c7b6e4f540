//! Per-request signing through the real path (SDK adapter, ABI, bridge, transport) with
//! counting built-in schemes registered for this test binary only: which requests are
//! signed, with what, how often, and that a scheme without the extension is never asked.

use crate::{Host, Request};
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::wire::{SignAnswer, SignRequest, WireHeader};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, Result, Scheme, SecretString,
};
use fhirconn_testkit::hostile::{Answer, HostileServer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// `sign-request` calls per connection id (tests run in parallel: each uses its own ids).
static SIGNED: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

fn signed(id: &str) -> u64 {
    SIGNED
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(id).copied())
        .unwrap_or(0)
}

/// `zz-signer` (declares `signs_requests`) and `zz-undeclared` (the same code, undeclared).
struct Counting {
    name: &'static str,
    declares: bool,
}

struct CountingConn {
    id: String,
    fail: bool,
}

impl Scheme for Counting {
    fn name(&self) -> &str {
        self.name
    }
    fn summary(&self) -> &str {
        "test: counts sign-request calls"
    }
    fn config_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn signs_requests(&self) -> bool {
        self.declares
    }
    fn configure(
        &self,
        c: &ConnectionInfo,
        s: Value,
        _h: &fhirconn_sdk::Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        Ok(Box::new(CountingConn {
            id: c.id.clone(),
            fail: s["fail"] == true,
        }))
    }
}

impl Connection for CountingConn {
    fn authorize(&self, _r: &AuthRequest, _h: &fhirconn_sdk::Host<'_>) -> Result<Credentials> {
        Ok(Credentials::new())
    }
    fn sign_request(&self, r: &SignRequest, host: &fhirconn_sdk::Host<'_>) -> Result<SignAnswer> {
        let n = {
            let mut m = SIGNED.lock().unwrap();
            let c = m
                .get_or_insert_with(HashMap::new)
                .entry(self.id.clone())
                .or_insert(0);
            *c += 1;
            *c
        };
        if self.fail {
            return Err(Error::config(
                "CANARY-sign-failure: the signing key is gone",
            ));
        }
        // What blocks is refused inside sign-request; the clock is not.
        let file = host.read_file("x").is_err();
        assert!(host.now() > std::time::UNIX_EPOCH);
        let sensitive: Vec<&str> = r
            .headers
            .iter()
            .filter(|h| h.sensitive)
            .map(|h| h.name.as_str())
            .collect();
        Ok(SignAnswer {
            headers: vec![
                WireHeader::new(
                    "x-signed",
                    format!(
                        "{n} {} {} {} sensitive={} file-refused={file}",
                        r.method,
                        r.url,
                        r.body_sha256,
                        sensitive.join(",")
                    ),
                ),
                WireHeader::sensitive("x-signature", format!("CANARY-sig-{n}-{}", self.id)),
            ],
        })
    }
}

/// `zz-token`: a bearer token that changes with every authorize.
struct Token;
struct TokenConn(AtomicU64);

impl Scheme for Token {
    fn name(&self) -> &str {
        "zz-token"
    }
    fn summary(&self) -> &str {
        "test: a new bearer token per authorize"
    }
    fn config_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn configure(
        &self,
        _c: &ConnectionInfo,
        _s: Value,
        _h: &fhirconn_sdk::Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        Ok(Box::new(TokenConn(AtomicU64::new(0))))
    }
}

impl Connection for TokenConn {
    fn authorize(&self, _r: &AuthRequest, _h: &fhirconn_sdk::Host<'_>) -> Result<Credentials> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Credentials::new().bearer(&SecretString::from(format!("CANARY-tok-{n}"))))
    }
}

inventory::submit! { crate::plugins::BuiltinScheme {
build: || Box::new(Counting { name: "zz-signer", declares: true }), version: "0" } }
inventory::submit! { crate::plugins::BuiltinScheme {
build: || Box::new(Counting { name: "zz-undeclared", declares: false }), version: "0" } }
inventory::submit! { crate::plugins::BuiltinScheme {
build: || Box::new(Token), version: "0" } }

async fn host(server: &HostileServer, connections: Value) -> Host {
    let mut map = serde_json::Map::new();
    for (id, auth) in connections.as_object().unwrap() {
        map.insert(
            id.clone(),
            json!({"base-url": server.url("/fhir"), "auth": auth}),
        );
    }
    Host::builder()
        .config_value(std::env::temp_dir(), json!({ "connections": map }))
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn header<'a>(r: &'a fhirconn_testkit::hostile::Received, name: &str) -> &'a str {
    r.header(name).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_without_the_extension_is_never_asked() {
    let server = HostileServer::start().await.unwrap();
    server.otherwise(Answer::json(200, &json!({"resourceType": "Patient"})));
    let h = host(&server, json!({"u1": {"scheme": "zz-undeclared"}})).await;
    let c = h.connection("u1").unwrap();
    c.get("Patient/1").await.unwrap();
    c.send(Request {
        body: Some(b"{}".to_vec()),
        method: reqwest::Method::POST,
        ..Request::get("Patient")
    })
    .await
    .unwrap();
    assert_eq!(signed("u1"), 0);
    assert!(server
        .received()
        .iter()
        .all(|r| r.header("x-signed").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_signed_over_its_method_url_headers_and_body() {
    let server = HostileServer::start().await.unwrap();
    server.otherwise(Answer::json(200, &json!({"resourceType": "Patient"})));
    let h = host(
        &server,
        json!({"s1": [{"scheme": "zz-token"}, {"scheme": "zz-signer"}]}),
    )
    .await;
    let c = h.connection("s1").unwrap();
    c.get("Patient?name=a%20b").await.unwrap();
    c.send(Request {
        body: Some(b"abc".to_vec()),
        method: reqwest::Method::POST,
        ..Request::get("Patient")
    })
    .await
    .unwrap();
    let got = server.received();
    assert_eq!(got.len(), 2);
    let url = server.url("/fhir/Patient");
    assert_eq!(
        header(&got[0], "x-signed"),
        format!(
            "1 GET {url}?name=a%20b {} sensitive=authorization file-refused=true",
            fhirconn_sdk::wire::EMPTY_BODY_SHA256
        )
    );
    assert_eq!(
        header(&got[1], "x-signed"),
        format!(
            "2 POST {url} ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad \
             sensitive=authorization file-refused=true"
        )
    );
    // identity and signature combine: the stacked token goes with the signature
    assert_eq!(header(&got[1], "authorization"), "Bearer CANARY-tok-0");
    assert_eq!(header(&got[1], "x-signature"), "CANARY-sig-2-s1");
    // the signature is a secret from now on
    assert_eq!(c.redact("echo CANARY-sig-2-s1"), "echo [REDACTED]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_hops_and_the_401_retry_are_signed_afresh() {
    let server = HostileServer::start().await.unwrap();
    server
        .on("GET", "/fhir/moved", Answer::redirect(307, "/fhir/final"))
        .on("GET", "/fhir/final", Answer::json(200, &json!({})))
        .on(
            "GET",
            "/fhir/away",
            Answer::redirect(302, "http://localhost:9/x"),
        )
        .on("GET", "/fhir/denied", Answer::text(401, "no"));
    let h = host(&server, json!({"r1": {"scheme": "zz-signer"}})).await;
    let c = h.connection("r1").unwrap();
    c.get("moved").await.unwrap();
    let hops = server.received();
    assert!(
        header(&hops[0], "x-signed").starts_with(&format!("1 GET {}", server.url("/fhir/moved")))
    );
    assert!(
        header(&hops[1], "x-signed").starts_with(&format!("2 GET {}", server.url("/fhir/final")))
    );
    // A 401 on a signing connection is retried once, with a new signature.
    let resp = c.get("denied").await.unwrap();
    assert_eq!(resp.status, 401);
    let denied = server.received_at("/fhir/denied");
    assert_eq!(denied.len(), 2);
    assert_ne!(
        header(&denied[0], "x-signature"),
        header(&denied[1], "x-signature")
    );
    assert_eq!(signed("r1"), 4);
    // A hop to another origin carries no credentials, so it is not signed (nor asked).
    let _ = c.get("away").await;
    assert_eq!(signed("r1"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_that_cannot_sign_fails_the_request_as_credentials_do() {
    let server = HostileServer::start().await.unwrap();
    server.otherwise(Answer::json(200, &json!({})));
    let h = host(
        &server,
        json!({"f1": {"scheme": "zz-signer", "fail": true}}),
    )
    .await;
    let c = h.connection("f1").unwrap();
    let e = c.get("Patient/1").await.unwrap_err();
    assert!(
        matches!(
            &e,
            crate::Error::Credentials {
                kind: fhirconn_sdk::ErrorKind::Config,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("signing key is gone"), "{e}");
    assert!(server.received().is_empty());
    let report = h.test(&["f1".to_string()], None).await.unwrap().remove(0);
    let d = report.failure.expect("a diagnosis");
    assert_eq!(d.kind, crate::DiagnosisKind::Config, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_with_their_own_client_get_the_signature_headers() {
    let server = HostileServer::start().await.unwrap();
    let h = host(&server, json!({"m1": {"scheme": "zz-signer"}})).await;
    let c = h.connection("m1").unwrap();
    let url = c.url_for("Patient").unwrap();
    let headers = c
        .authorization_headers(&reqwest::Method::PUT, &url, &[], Some(b"abc"))
        .await
        .unwrap();
    let signed_by = headers.iter().find(|(n, _)| n == "x-signed").unwrap();
    assert!(signed_by
        .1
        .to_str()
        .unwrap()
        .contains(&format!("PUT {url} ba7816bf")));
    let sig = headers.iter().find(|(n, _)| n == "x-signature").unwrap();
    assert!(sig.1.is_sensitive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_signs_for_a_client_without_redirects_and_refuses_otherwise() {
    use crate::middleware::{Authentication, MiddlewareError};
    let server = HostileServer::start().await.unwrap();
    server.otherwise(Answer::json(200, &json!({})));
    let h = host(&server, json!({"w1": {"scheme": "zz-signer"}})).await;
    let c = h.connection("w1").unwrap();
    let url = c.url_for("Patient/1").unwrap();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // A client that may follow redirects would send a signature bound to another URL.
    let follows = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(Authentication::new(c.clone()))
        .build();
    let e = follows.get(url.clone()).send().await.unwrap_err();
    let refused = match &e {
        reqwest_middleware::Error::Middleware(m) => m.downcast_ref::<MiddlewareError>(),
        _ => None,
    };
    assert!(
        matches!(refused, Some(MiddlewareError::SigningUnsafe(_))),
        "{e:?}"
    );
    assert!(server.received().is_empty());
    let client = reqwest_middleware::ClientBuilder::new(plain)
        .with(Authentication::new(c.clone()).client_follows_no_redirects())
        .build();
    let resp = client.put(url.clone()).body("abc").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = server.received();
    assert!(
        header(&got[0], "x-signed").contains(&format!("PUT {url} ba7816bf")),
        "{:?}",
        got[0].headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_requests_of_the_proxy_are_signed_too() {
    let server = HostileServer::start().await.unwrap();
    server.otherwise(Answer::json(200, &json!({})));
    let h = host(&server, json!({"p1": {"scheme": "zz-signer"}})).await;
    let c = h.connection("p1").unwrap();
    let resp = c.send_streaming(Request::get("Patient/7")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = server.received();
    let expected = format!("1 GET {}", server.url("/fhir/Patient/7"));
    assert!(header(&got[0], "x-signed").starts_with(&expected));
}
