//! The `google-service-account` plugin (built cdylib) through the `fhirconn` binary against the
//! testkit's mock Google token endpoint and GCE metadata server: the key file's RS256 assertion
//! as Google documents it, a wrong key diagnosed as rejected credentials, a plain-http
//! `token_uri` refused, the metadata server's header both ways, and that only loopback and
//! link-local metadata addresses may be plain http; no private key or token in `-vv` output.

use fhirconn_testkit::google::{GoogleConfig, MockGoogle, HEALTHCARE_SCOPE};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_command, run_command, Out};
use serde_json::{json, Value};

const AUDIENCE: &str = "https://healthcare.googleapis.com/v1/fhir";

struct Env {
    google: MockGoogle,
    fhir: FhirServer,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (google, fhir) = rt.block_on(async {
        let google = MockGoogle::start(GoogleConfig {
            audience: AUDIENCE.into(),
            ..GoogleConfig::default()
        })
        .await
        .unwrap();
        let fhir = FhirServer::start(FhirServerConfig {
            auth: ServerAuth::Jwt(google.verifier(AUDIENCE)),
            ..FhirServerConfig::default()
        })
        .await
        .unwrap();
        (google, fhir)
    });
    Env {
        google,
        fhir,
        dir: tempfile::tempdir().unwrap(),
        _rt: rt,
    }
}

impl Env {
    /// Writes the connections file with `auth` and `key` as `sa.json`.
    fn config(&self, auth: Value, key: &Value) {
        std::fs::write(self.dir.path().join("sa.json"), key.to_string()).unwrap();
        let doc = json!({"connections": {"g": {"base-url": self.fhir.base_url(),
            "connect-timeout": "PT2S", "probe": "Patient/1", "auth": auth}}});
        std::fs::write(self.dir.path().join("fhirconn.yaml"), doc.to_string()).unwrap();
    }

    /// `fhirconn -vv ARGS` in the directory, `GCE_METADATA_HOST` as given (or unset).
    fn run(&self, metadata_host: Option<&str>, args: &[&str]) -> Out {
        let mut cmd = fhirconn_command(self.dir.path(), true);
        cmd.env_remove("GCE_METADATA_HOST");
        if let Some(h) = metadata_host {
            cmd.env("GCE_METADATA_HOST", h);
        }
        run_command(cmd.arg("-vv").args(args))
    }
}

/// The base64 body lines of a PEM private key: none may ever be printed.
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(String::from)
        .collect()
}

fn assert_no_leak(out: &Out, pem: &str, tokens: &[String]) {
    let all = out.all();
    for l in key_lines(pem) {
        assert!(!all.contains(&l), "a private key line leaked:\n{all}");
    }
    for t in tokens {
        assert!(!all.contains(t.as_str()), "a token leaked:\n{all}");
    }
}

#[test]
fn a_key_file_gets_a_token_with_the_assertion_google_documents() {
    let e = env();
    let key = e.google.key_file();
    e.config(
        json!({"scheme": "google-service-account", "key-file": "sa.json"}),
        &key,
    );
    let test = e.run(None, &["test"]);
    assert_eq!(test.code, 0, "{}", test.all());
    let get = e.run(None, &["get", "g", "Patient/1"]);
    assert_eq!(get.code, 0, "{}", get.all());
    assert!(get.stdout.contains("\"resourceType\""), "{}", get.stdout);
    let sent = e.google.assertions();
    assert_eq!(sent.len(), 2, "one assertion per process");
    let a = e.google.account();
    for s in &sent {
        assert_eq!(s.header["alg"], "RS256");
        assert_eq!(s.header["typ"], "JWT");
        assert_eq!(s.header["kid"], a.private_key_id.as_str());
        assert_eq!(s.claims["iss"], a.client_email.as_str());
        assert_eq!(s.claims["scope"], HEALTHCARE_SCOPE);
        assert_eq!(s.claims["aud"], e.google.token_uri());
        let (iat, exp) = (
            s.claims["iat"].as_u64().unwrap(),
            s.claims["exp"].as_u64().unwrap(),
        );
        assert!(exp > iat && exp - iat <= 3600, "iat {iat} exp {exp}");
        assert!(s.claims.get("sub").is_none());
    }
    let tokens: Vec<String> = e.fhir.authorizations().into_iter().flatten().collect();
    assert!(!tokens.is_empty());
    assert_no_leak(&test, &a.private_key_pem, &tokens);
    assert_no_leak(&get, &a.private_key_pem, &tokens);
}

#[test]
fn subject_and_scopes_reach_the_assertion_and_a_wrong_key_is_rejected_credentials() {
    let e = env();
    let scopes = format!("{HEALTHCARE_SCOPE} https://www.googleapis.com/auth/cloud-platform");
    e.config(
        json!({"scheme": "google-service-account", "key-file": "sa.json",
            "subject": "admin@example.org", "scope": scopes}),
        &e.google.key_file(),
    );
    assert_eq!(e.run(None, &["test"]).code, 0);
    let claims = &e.google.assertions()[0].claims;
    assert_eq!(claims["sub"], "admin@example.org");
    assert_eq!(claims["scope"], scopes.as_str());
    // The same account name and key id, another key: Google's "Invalid JWT Signature."
    let rogue = e.google.account().impostor();
    e.config(
        json!({"scheme": "google-service-account", "key-file": "sa.json"}),
        &rogue.key_file(&e.google.token_uri()),
    );
    let out = e.run(None, &["test", "--output", "json"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("credentials-rejected") && out.stdout.contains("Invalid JWT Signature"),
        "{}",
        out.all()
    );
    assert_no_leak(&out, &rogue.private_key_pem, &[]);
}

#[test]
fn a_plain_http_token_uri_is_refused_before_the_key_is_used() {
    let e = env();
    let mut key = e.google.key_file();
    key["token_uri"] = json!("http://oauth2.example.com/token");
    e.config(
        json!({"scheme": "google-service-account", "key-file": "sa.json"}),
        &key,
    );
    let out = e.run(None, &["test"]);
    assert_ne!(out.code, 0);
    assert!(out.all().contains("must be https"), "{}", out.all());
    assert_eq!(e.google.token_requests(), 0);
    assert_no_leak(&out, &e.google.account().private_key_pem, &[]);
}

#[test]
fn the_metadata_server_is_asked_with_its_header_and_must_answer_with_it() {
    let e = env();
    e.config(
        json!({"scheme": "google-service-account", "source": "metadata-server"}),
        &json!({}),
    );
    let host = e.google.metadata_host();
    let out = e.run(Some(&host), &["test"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let reqs = e.google.metadata_requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0]
        .headers
        .contains(&("metadata-flavor".into(), "Google".into())));
    assert_eq!(
        reqs[0].query.as_deref(),
        Some("scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-healthcare")
    );
    // An answer without `Metadata-Flavor: Google` is not from a metadata server.
    e.google.set_metadata_flavor(false);
    let out = e.run(Some(&host), &["test"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.all().contains("not a metadata server"), "{}", out.all());
}

#[test]
fn only_loopback_and_link_local_metadata_addresses_may_be_plain_http() {
    let e = env();
    e.config(
        json!({"scheme": "google-service-account", "source": "metadata-server"}),
        &json!({}),
    );
    // A link-local address (the default is 169.254.169.254) is a declared instance-metadata
    // request: the host lets it out (nothing answers at this one), where any other plain http
    // address is refused. (The address is redacted in messages: it came from the environment.)
    let link_local = e.run(Some("169.254.0.1:9"), &["test"]);
    assert!(
        link_local.all().contains("metadata server http://")
            && !link_local.all().contains("refusing plain http"),
        "{}",
        link_local.all()
    );
    let other = e.run(Some("10.1.2.3:8080"), &["test"]);
    assert!(
        other.all().contains("refusing plain http"),
        "{}",
        other.all()
    );
}
