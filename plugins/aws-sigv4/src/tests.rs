//! Unit tests: AWS's SigV4 test-suite vectors through `sign_request`, the credential sources,
//! and canaries for the secret key, the session token and the signature.

use super::*;
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::settings;
use fhirconn_sdk::testing::MockHost;
use fhirconn_sdk::wire::{ExecAnswer, EMPTY_BODY_SHA256};
use fhirconn_sdk::Scheme;

// Test data from the AWS SigV4 test suite ("aws-signing-test-suite/v4", as shipped with
// smithy-rs's aws-sigv4 crate, from awslabs/aws-c-auth; Apache-2.0): credentials, region,
// service, time and the expected `Authorization` of the vectors used below.
const SUITE_ID: &str = "AKIDEXAMPLE";
const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z
const SUITE_TIME: u64 = 1_440_938_160;
const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
const CREDENTIAL: &str =
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";

fn suite_settings(extra: Value) -> Value {
    let mut s = json!({"region": "us-east-1", "service": "service",
        "access-key-id": SUITE_ID, "secret-access-key": SUITE_SECRET});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn request(method: &str, url: &str, headers: &[(&str, &str)], body_sha256: &str) -> SignRequest {
    SignRequest {
        method: method.into(),
        url: url.into(),
        headers: headers
            .iter()
            .map(|(n, v)| WireHeader::new(*n, *v))
            .collect(),
        body_sha256: body_sha256.into(),
        unix_time: SUITE_TIME,
    }
}

fn sign_once(mock: &MockHost, settings: Value, req: &SignRequest) -> Result<SignAnswer> {
    let conn = mock.configure(&AwsSigV4, settings)?;
    mock.authorize(conn.as_ref())?;
    mock.with_host(|h| conn.sign_request(req, h))
}

fn header<'a>(a: &'a SignAnswer, name: &str) -> Option<&'a WireHeader> {
    a.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))
}

fn authorization(a: &SignAnswer) -> String {
    let h = header(a, "authorization").expect("an Authorization header");
    assert!(h.sensitive, "Authorization must be marked sensitive");
    h.value.clone()
}

#[test]
fn get_vanilla_matches_the_aws_test_suite() {
    let req = request(
        "GET",
        "https://example.amazonaws.com/",
        &[],
        EMPTY_BODY_SHA256,
    );
    let a = sign_once(&MockHost::new(), suite_settings(json!({})), &req).unwrap();
    assert_eq!(
        authorization(&a),
        format!("{CREDENTIAL}, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    );
    let date = header(&a, "x-amz-date").unwrap();
    assert_eq!(
        (date.value.as_str(), date.sensitive),
        ("20150830T123600Z", false)
    );
    assert!(header(&a, "x-amz-content-sha256").is_none());
    assert!(header(&a, "x-amz-security-token").is_none());
}

#[test]
fn get_vanilla_query_order_key_case_matches_the_aws_test_suite() {
    let url = "https://example.amazonaws.com/?Param2=value2&Param1=value1";
    let req = request("GET", url, &[], EMPTY_BODY_SHA256);
    let a = sign_once(&MockHost::new(), suite_settings(json!({})), &req).unwrap();
    assert_eq!(
        authorization(&a),
        format!("{CREDENTIAL}, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
    );
}

#[test]
fn post_x_www_form_urlencoded_signs_the_precomputed_body_hash() {
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Content-Length", "13"),
    ];
    // SHA-256 of the vector's body "Param1=value1".
    let hash = "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e";
    let req = request("POST", "https://example.amazonaws.com/", &headers, hash);
    let settings = suite_settings(json!({"sign-content-sha256": true}));
    let a = sign_once(&MockHost::new(), settings, &req).unwrap();
    assert_eq!(
        authorization(&a),
        format!("{CREDENTIAL}, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b")
    );
    assert_eq!(header(&a, "x-amz-content-sha256").unwrap().value, hash);
    // Another body hash is another signature: the hash is what gets signed.
    let other = request(
        "POST",
        "https://example.amazonaws.com/",
        &headers,
        EMPTY_BODY_SHA256,
    );
    let settings = suite_settings(json!({"sign-content-sha256": true}));
    let b = sign_once(&MockHost::new(), settings, &other).unwrap();
    assert_ne!(authorization(&a), authorization(&b));
}

#[test]
fn post_sts_header_before_signs_the_session_token() {
    let req = request(
        "POST",
        "https://example.amazonaws.com/",
        &[],
        EMPTY_BODY_SHA256,
    );
    let settings = suite_settings(json!({"session-token": SUITE_TOKEN}));
    let a = sign_once(&MockHost::new(), settings, &req).unwrap();
    assert_eq!(
        authorization(&a),
        format!("{CREDENTIAL}, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead")
    );
    let token = header(&a, "x-amz-security-token").unwrap();
    assert_eq!(token.value, SUITE_TOKEN);
    assert!(
        token.sensitive,
        "the session token must be marked sensitive"
    );
}

#[test]
fn the_default_service_is_healthlake() {
    let mut settings = suite_settings(json!({}));
    settings.as_object_mut().unwrap().remove("service");
    let req = request(
        "GET",
        "https://healthlake.us-east-1.amazonaws.com/datastore/d/r4/metadata",
        &[],
        EMPTY_BODY_SHA256,
    );
    let a = sign_once(&MockHost::new(), settings, &req).unwrap();
    assert!(authorization(&a).contains("/20150830/us-east-1/healthlake/aws4_request"));
}

#[test]
fn exactly_one_credential_source() {
    let mock = MockHost::new().with_env("AWS_ACCESS_KEY_ID", "AKID");
    let cases = [
        (json!({"region": "r"}), "found none"),
        (
            json!({"region": "r", "profile": "p", "from-environment": true}),
            "found profile and from-environment",
        ),
        (
            suite_settings(json!({"profile": "p"})),
            "found access-key-id and profile",
        ),
        (
            json!({"region": "r", "session-token": "t", "from-environment": true}),
            "found access-key-id and from-environment",
        ),
        (
            json!({"region": "r", "access-key-id": "AKID"}),
            "go together",
        ),
        (
            json!({"region": "r", "secret-access-key": "s"}),
            "go together",
        ),
        (
            json!({"region": "r", "access-key-id": "AK ID", "secret-access-key": "s"}),
            "access-key-id: an access key id",
        ),
    ];
    for (settings, want) in cases {
        let e = mock.configure(&AwsSigV4, settings.clone()).err().unwrap();
        assert_eq!(e.kind(), fhirconn_sdk::ErrorKind::Config, "{settings}");
        assert!(e.message().contains(want), "{settings}: {e}");
    }
}

#[test]
fn keys_from_environment_and_from_files() {
    let mock = MockHost::new()
        .with_env("AWS_ACCESS_KEY_ID", SUITE_ID)
        .with_env("AWS_SECRET_ACCESS_KEY", SUITE_SECRET)
        .with_env("KEY_ENV", SUITE_SECRET)
        .with_file("secret.txt", format!("{SUITE_SECRET}\n").as_bytes());
    let req = request(
        "GET",
        "https://example.amazonaws.com/",
        &[],
        EMPTY_BODY_SHA256,
    );
    let want = "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    for settings in [
        json!({"region": "us-east-1", "service": "service", "from-environment": true}),
        json!({"region": "us-east-1", "service": "service", "access-key-id": SUITE_ID, "secret-access-key-env": "KEY_ENV"}),
        json!({"region": "us-east-1", "service": "service", "access-key-id": SUITE_ID, "secret-access-key-file": "secret.txt"}),
    ] {
        let a = sign_once(&mock, settings.clone(), &req).unwrap();
        assert!(authorization(&a).ends_with(want), "{settings}");
    }
    let e = sign_once(
        &MockHost::new().with_env("AWS_ACCESS_KEY_ID", "A"),
        json!({"region": "r", "from-environment": true}),
        &req,
    )
    .unwrap_err();
    assert!(
        e.message().contains("AWS_SECRET_ACCESS_KEY is not set"),
        "{e}"
    );
}

const CREDENTIALS_FILE: &str = "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n\n[profile work]\naws_access_key_id = AKIDLITERAL\naws_secret_access_key = literal\n[work]\n# a comment\naws_access_key_id = AKIDEXAMPLE ; inline comment\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n";
const CONFIG_FILE: &str = "[default]\nregion = us-east-1\n[work]\naws_access_key_id = AKIDNOTAPROFILE\n[profile work]\nregion = eu-west-1\ns3 =\n  max_concurrent_requests = 20\n[profile proc]\ncredential_process = /opt/bin/creds --profile \"my profile\"\n[profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = default\n";

fn profile_host() -> MockHost {
    MockHost::new()
        .with_env("HOME", "/home/p")
        .with_file("/home/p/.aws/credentials", CREDENTIALS_FILE.as_bytes())
        .with_file("/home/p/.aws/config", CONFIG_FILE.as_bytes())
}

fn key_id_of(mock: &MockHost, profile: &str) -> Result<String> {
    let req = request(
        "GET",
        "https://example.amazonaws.com/",
        &[],
        EMPTY_BODY_SHA256,
    );
    let settings = json!({"region": "us-east-1", "service": "service", "profile": profile});
    let a = sign_once(mock, settings, &req)?;
    let auth = authorization(&a);
    Ok(auth
        .split("Credential=")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string())
}

#[test]
fn a_profile_is_read_as_the_aws_clis_read_it() {
    let mock = profile_host();
    // credentials file: [work]; its `[profile work]` is another (literal) name
    assert_eq!(key_id_of(&mock, "work").unwrap(), "AKIDEXAMPLE");
    assert_eq!(key_id_of(&mock, "default").unwrap(), "AKIDDEFAULT");
    let e = key_id_of(&mock, "missing").unwrap_err();
    assert!(
        e.message().contains(
            "profile 'missing': not found in /home/p/.aws/config, /home/p/.aws/credentials"
        ),
        "{e}"
    );
    let e = key_id_of(&mock, "role").unwrap_err();
    assert!(
        e.message()
            .contains("role_arn is not supported: use credential_process"),
        "{e}"
    );
    // the config file alone: `[work]` there is not a profile, `[profile work]` is
    let config_only = MockHost::new()
        .with_env("AWS_CONFIG_FILE", "/etc/aws-config")
        .with_env("AWS_SHARED_CREDENTIALS_FILE", "/nowhere")
        .with_file("/etc/aws-config", b"[work]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = x\n[profile work]\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = y\n");
    assert_eq!(key_id_of(&config_only, "work").unwrap(), "AKIDCONFIG");
}

fn process_answer(id: &str, expiration: &str) -> ExecAnswer {
    let stdout = json!({"Version": 1, "AccessKeyId": id, "SecretAccessKey": "PROCESS-SECRET-CANARY",
        "SessionToken": "PROCESS-TOKEN-CANARY", "Expiration": expiration});
    ExecAnswer {
        exit_code: Some(0),
        stdout: stdout.to_string(),
        stderr: String::new(),
    }
}

#[test]
fn credential_process_runs_through_the_host_and_its_expiry_is_the_credentials() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = calls.clone();
    let mock = profile_host().with_exec(move |_| {
        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(process_answer(
            &format!("ASIAPROC{n}"),
            "2026-01-01T01:00:00Z",
        ))
    });
    let conn = mock
        .configure(&AwsSigV4, json!({"region": "us-east-1", "profile": "proc"}))
        .unwrap();
    let creds = mock.authorize(conn.as_ref()).unwrap();
    assert!(creds.headers.is_empty());
    assert_eq!(
        creds.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_767_229_200))
    );
    let run = mock.execs.lock().unwrap()[0].clone();
    assert_eq!(
        run.argv,
        ["sh", "-c", "/opt/bin/creds --profile \"my profile\""]
    );
    let mut req = request(
        "GET",
        "https://example.amazonaws.com/",
        &[],
        EMPTY_BODY_SHA256,
    );
    req.unix_time = 1_767_225_600;
    let a = mock.with_host(|h| conn.sign_request(&req, h)).unwrap();
    assert!(authorization(&a).contains("Credential=ASIAPROC0/"));
    assert_eq!(
        header(&a, "x-amz-security-token").unwrap().value,
        "PROCESS-TOKEN-CANARY"
    );
    // renewed by the host's next authorize: the process runs again, new keys sign
    mock.authorize(conn.as_ref()).unwrap();
    let a = mock.with_host(|h| conn.sign_request(&req, h)).unwrap();
    assert!(authorization(&a).contains("Credential=ASIAPROC1/"));
    // signing runs no process (the host answers none there): expired keys are refused
    req.unix_time = 1_767_229_200;
    let e = mock.with_host(|h| conn.sign_request(&req, h)).unwrap_err();
    assert_eq!(
        e.kind(),
        fhirconn_sdk::ErrorKind::CredentialsRejected,
        "{e}"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn signing_before_authorize_is_an_error_not_a_guess() {
    let mock = MockHost::new();
    let conn = mock
        .configure(&AwsSigV4, suite_settings(json!({})))
        .unwrap();
    let req = request(
        "GET",
        "https://example.amazonaws.com/",
        &[],
        EMPTY_BODY_SHA256,
    );
    let e = mock.with_host(|h| conn.sign_request(&req, h)).unwrap_err();
    assert_eq!(e.kind(), fhirconn_sdk::ErrorKind::Internal, "{e}");
}

#[test]
fn credential_process_failures_are_explained_without_secrets() {
    let cases: [(ExecAnswer, &str); 4] = [
        (
            ExecAnswer {
                exit_code: Some(3),
                stdout: "PROCESS-SECRET-CANARY".into(),
                stderr: "token expired, run aws sso login\nmore".into(),
            },
            "it failed (Some(3)): token expired, run aws sso login",
        ),
        (
            ExecAnswer {
                exit_code: Some(0),
                stdout: "{\"SecretAccessKey\": \"PROCESS-SECRET-CANARY\"".into(),
                stderr: String::new(),
            },
            "its output is not JSON",
        ),
        (
            ExecAnswer {
                stdout: process_answer("ASIA", "")
                    .stdout
                    .replace("\"Version\":1", "\"Version\":2"),
                ..process_answer("ASIA", "")
            },
            "\"Version\": 1",
        ),
        (
            process_answer("ASIA", "tomorrow"),
            "its Expiration is not an RFC 3339 time",
        ),
    ];
    for (answer, want) in cases {
        let mock = profile_host().with_exec(move |_| Ok(answer.clone()));
        let conn = mock
            .configure(&AwsSigV4, json!({"region": "us-east-1", "profile": "proc"}))
            .unwrap();
        let e = mock.authorize(conn.as_ref()).unwrap_err();
        assert!(
            e.message()
                .starts_with("profile 'proc': credential_process: "),
            "{e}"
        );
        assert!(e.message().contains(want), "{e}");
        assert!(
            !e.message().contains("CANARY") && !format!("{e:?}").contains("CANARY"),
            "{e}"
        );
    }
}

#[test]
fn secrets_never_show_in_debug_errors_or_logs() {
    let mock = profile_host().with_exec(|_| Ok(process_answer("ASIA", "2026-01-01T01:00:00Z")));
    let settings = suite_settings(json!({"session-token": "SETTING-TOKEN-CANARY"}));
    let conn = mock
        .with_host(|h| settings::parse(settings, h).and_then(AwsConnection::new))
        .unwrap();
    mock.with_host(|h| conn.authorize(h)).unwrap();
    let req = request(
        "GET",
        "https://example.amazonaws.com/",
        &[],
        EMPTY_BODY_SHA256,
    );
    let a = mock.with_host(|h| conn.sign(&req, h)).unwrap();
    let signature = authorization(&a).rsplit('=').next().unwrap().to_string();
    let settings = json!({"region": "us-east-1", "profile": "proc"});
    let proc_conn = mock
        .with_host(|h| settings::parse(settings, h).and_then(AwsConnection::new))
        .unwrap();
    mock.with_host(|h| proc_conn.authorize(h)).unwrap();
    let logs = format!("{:?}", mock.logs.lock().unwrap());
    for text in [
        format!("{conn:?}"),
        format!("{proc_conn:?}"),
        format!("{a:?}"),
        logs,
    ] {
        for secret in [
            SUITE_SECRET,
            "SETTING-TOKEN-CANARY",
            "PROCESS-SECRET-CANARY",
            "PROCESS-TOKEN-CANARY",
            &signature,
        ] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
}

#[test]
fn a_request_without_an_absolute_url_is_refused_not_a_panic() {
    for url in [
        "/relative",
        "mailto:x@example.com",
        "https:///nohost",
        "not a url",
    ] {
        let req = request("GET", url, &[], EMPTY_BODY_SHA256);
        let e = sign_once(&MockHost::new(), suite_settings(json!({})), &req).unwrap_err();
        assert_eq!(e.kind(), fhirconn_sdk::ErrorKind::Protocol, "{url}: {e}");
    }
}

#[test]
fn the_scheme_declares_that_it_signs_requests() {
    assert!(AwsSigV4.signs_requests());
    let schema = AwsSigV4.config_schema().to_string();
    assert!(schema.contains("secret-access-key-file") && schema.contains("session-token-env"));
}
