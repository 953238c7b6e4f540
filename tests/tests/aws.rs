//! The `aws-sigv4` plugin (built cdylib) in the `fhirconn` binary against the testkit's
//! HealthLake-shaped endpoint, which recomputes every SigV4 signature independently: `test`,
//! `get` with a query and `post` with a body are signed; keys from a file, the environment and
//! a profile whose `credential_process` the host runs; a wrong secret is diagnosed as rejected
//! credentials, a skewed clock as `clock-skew`; no secret key, session token or signature in
//! `-vv` output.

use fhirconn_testkit::sigv4::{MockHealthLake, Sigv4Config};
use fhirconn_tests::{fhirconn_command, run_command, Out};
use serde_json::{json, Value};

const KEY_ID: &str = "AKIDFHIRCONNTEST";
const SECRET: &str = "CANARY/aws+secret/access-key-4242";
const SESSION_TOKEN: &str = "CANARY-aws-session-token-7777";

struct Env {
    lake: MockHealthLake,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn env(session_token: Option<&str>) -> Env {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = Sigv4Config::healthlake(KEY_ID, SECRET);
    config.session_token = session_token.map(String::from);
    let lake = rt.block_on(MockHealthLake::start(config)).unwrap();
    Env {
        lake,
        dir: tempfile::tempdir().unwrap(),
        _rt: rt,
    }
}

impl Env {
    fn config(&self, auth: Value) {
        let doc = json!({"connections": {"hl": {"base-url": self.lake.base_url(),
            "connect-timeout": "PT2S", "probe": "Patient/1", "auth": auth}}});
        std::fs::write(self.dir.path().join("fhirconn.yaml"), doc.to_string()).unwrap();
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn run(&self, vars: &[(&str, &str)], args: &[&str]) -> Out {
        let mut cmd = fhirconn_command(self.dir.path(), true);
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            cmd.env_remove(v);
        }
        cmd.envs(vars.iter().copied());
        run_command(cmd.arg("-vv").args(args))
    }

    /// No secret, token or signature the server saw in `out`.
    fn assert_no_leak(&self, out: &Out) {
        let all = out.all();
        assert!(
            !all.contains(SECRET) && !all.contains(SESSION_TOKEN),
            "{all}"
        );
        for r in self.lake.received() {
            let auth = r.authorization.unwrap_or_default();
            let signature = auth.rsplit("Signature=").next().unwrap_or_default();
            assert!(signature.len() == 64 && !all.contains(signature), "{all}");
        }
    }
}

fn keys_auth() -> Value {
    json!({"scheme": "aws-sigv4", "region": "us-east-1", "access-key-id": KEY_ID,
           "secret-access-key-file": "secret.txt"})
}

#[test]
fn test_get_and_post_are_signed_and_verified_by_the_endpoint() {
    let e = env(None);
    e.write("secret.txt", &format!("{SECRET}\n"));
    e.config(keys_auth());
    let test = e.run(&[], &["test"]);
    assert_eq!(test.code, 0, "{}", test.all());
    let get = e.run(&[], &["get", "hl", "Patient?name=O%27Brien&_count=2"]);
    assert_eq!(get.code, 0, "{}", get.all());
    assert!(get.stdout.contains("searchset"), "{}", get.stdout);
    let body = r#"{"resourceType":"Patient","name":[{"family":"Signed"}]}"#;
    let post = e.run(
        &[],
        &["post", "hl", "Patient?_pretty=false", "--data", body],
    );
    assert_eq!(post.code, 0, "{}", post.all());
    assert!(post.stdout.contains("created-1"), "{}", post.all());
    let received = e.lake.received();
    let seen: Vec<(&str, &str, Option<&str>)> = received
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str(), r.refused.as_deref()))
        .collect();
    let base = "/datastore/0123456789abcdef0123456789abcdef/r4";
    assert_eq!(
        seen,
        [
            ("GET", format!("{base}/metadata").as_str(), None),
            ("GET", format!("{base}/Patient/1").as_str(), None),
            (
                "GET",
                format!("{base}/Patient?name=O%27Brien&_count=2").as_str(),
                None
            ),
            (
                "POST",
                format!("{base}/Patient?_pretty=false").as_str(),
                None
            ),
        ]
    );
    let post_seen = &received[3];
    assert_eq!(post_seen.body, body.as_bytes());
    assert!(post_seen.signed_headers.iter().any(|h| h == "x-amz-date"));
    assert!(post_seen.signed_headers.iter().any(|h| h == "content-type"));
    for out in [&test, &get, &post] {
        e.assert_no_leak(out);
    }
}

#[test]
fn keys_from_the_environment_and_from_a_credential_process_with_a_session_token() {
    let e = env(Some(SESSION_TOKEN));
    e.config(json!({"scheme": "aws-sigv4", "region": "us-east-1", "from-environment": true}));
    let vars = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN),
    ];
    let out = e.run(&vars, &["test"]);
    assert_eq!(out.code, 0, "{}", out.all());
    e.assert_no_leak(&out);

    // A profile whose credential_process prints temporary credentials (run by the host).
    let answer = json!({"Version": 1, "AccessKeyId": KEY_ID, "SecretAccessKey": SECRET,
        "SessionToken": SESSION_TOKEN, "Expiration": "2099-01-01T00:00:00Z"});
    let script = e.write(
        "creds.sh",
        &format!("#!/bin/sh\ncat <<'EOF'\n{answer}\nEOF\n"),
    );
    let config = e.write(
        "aws-config",
        &format!(
            "[default]\nregion = eu-west-1\n\n[profile fhir]\ncredential_process = sh {script}\n"
        ),
    );
    e.config(json!({"scheme": "aws-sigv4", "region": "us-east-1", "profile": "fhir"}));
    let missing = e.dir.path().join("none").display().to_string();
    let vars = [
        ("AWS_CONFIG_FILE", config.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
    ];
    let out = e.run(&vars, &["test"]);
    assert_eq!(out.code, 0, "{}", out.all());
    e.assert_no_leak(&out);
    assert!(e.lake.received().iter().all(|r| r.refused.is_none()));
}

fn diagnosis(out: &Out) -> (String, String) {
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|_| panic!("JSON report expected:\n{}", out.all()));
    let text = report.to_string();
    let kind = text
        .split("\"kind\":\"")
        .nth(1)
        .and_then(|k| k.split('"').next())
        .unwrap_or_default()
        .to_string();
    (kind, text)
}

#[test]
fn a_wrong_secret_is_rejected_credentials_and_a_skewed_clock_is_clock_skew() {
    let e = env(None);
    e.write("secret.txt", "CANARY-not-the-secret\n");
    e.config(keys_auth());
    let out = e.run(&[], &["test", "--output", "json"]);
    assert_eq!(out.code, 1, "{}", out.all());
    let (kind, text) = diagnosis(&out);
    assert_eq!(kind, "credentials-rejected", "{text}");
    assert!(text.contains("InvalidSignatureException"), "{text}");
    assert!(
        !out.all().contains("CANARY-not-the-secret"),
        "{}",
        out.all()
    );
    e.assert_no_leak(&out);

    e.write("secret.txt", SECRET);
    e.lake.set_clock_offset(900);
    let out = e.run(&[], &["test", "--output", "json"]);
    assert_eq!(out.code, 1, "{}", out.all());
    let (kind, text) = diagnosis(&out);
    assert_eq!(kind, "clock-skew", "{text}");
    assert!(text.contains("Signature expired"), "{text}");
    e.assert_no_leak(&out);
}

#[test]
fn an_unknown_access_key_id_is_rejected_credentials() {
    let e = env(None);
    e.write("secret.txt", SECRET);
    let mut auth = keys_auth();
    auth["access-key-id"] = json!("AKIDUNKNOWN");
    e.config(auth);
    let out = e.run(&[], &["test", "--output", "json"]);
    let (kind, text) = diagnosis(&out);
    assert_eq!(kind, "credentials-rejected", "{text}");
    assert!(text.contains("UnrecognizedClientException"), "{text}");
}

#[test]
fn two_credential_sources_are_a_configuration_error_naming_them() {
    let e = env(None);
    e.write("secret.txt", SECRET);
    let mut auth = keys_auth();
    auth["from-environment"] = json!(true);
    e.config(auth);
    let out = e.run(&[], &["test"]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.all()
            .contains("found access-key-id and from-environment"),
        "{}",
        out.all()
    );
    assert!(e.lake.received().is_empty());
}
