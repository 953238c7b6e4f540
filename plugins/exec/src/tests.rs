//! Unit tests of the `exec` scheme against `MockHost`'s `exec` answers.

use super::*;
use fhirconn_sdk::serde_json::json;
use fhirconn_sdk::testing::{header_value, MockHost};
use fhirconn_sdk::wire::ExecAnswer;

fn answering(exit_code: Option<i32>, stdout: &str, stderr: &str) -> MockHost {
    let (stdout, stderr) = (stdout.to_string(), stderr.to_string());
    MockHost::new().with_exec(move |_| {
        Ok(ExecAnswer {
            exit_code,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
        })
    })
}

fn settings() -> Value {
    json!({"command": ["./get-token", "--aud", "fhir"], "timeout": 5,
           "env": {"A": "1"}, "inherit-env": ["HOME"]})
}

#[test]
fn a_token_becomes_a_bearer_header_with_its_expiry() {
    let mock = answering(
        Some(0),
        r#"{"apiVersion":"fhirconn.exec/v1","token":"CANARY-t1","expires_at":"2026-01-01T00:10:00Z"}"#,
        "",
    );
    let creds = mock
        .configure_and_authorize(&ExecScheme, settings())
        .unwrap();
    assert_eq!(
        header_value(&creds, "authorization").unwrap(),
        "Bearer CANARY-t1"
    );
    assert_eq!(
        creds.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_767_226_200))
    );
    let asked = &mock.execs.lock().unwrap()[0];
    assert_eq!(asked.argv, ["./get-token", "--aud", "fhir"]);
    assert_eq!(asked.timeout_seconds, Some(5));
    assert_eq!(asked.env["A"], "1");
    assert_eq!(asked.inherit_env, ["HOME"]);
}

#[test]
fn headers_with_a_lifetime_are_sent_as_given() {
    let mock = answering(
        Some(0),
        r#"{"apiVersion":"fhirconn.exec/v1","headers":{"X-Api-Key":"CANARY-k"},"expires_in":60}"#,
        "",
    );
    let creds = mock
        .configure_and_authorize(&ExecScheme, settings())
        .unwrap();
    assert_eq!(header_value(&creds, "x-api-key").unwrap(), "CANARY-k");
    let at = creds.expires_at.unwrap();
    assert_eq!(
        at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64,
        mock.now_ms() + 60_000
    );
}

#[test]
fn failures_name_the_command_and_never_quote_the_output() {
    for (exit, stdout, stderr, expected) in [
        (
            Some(2),
            "",
            "not logged in\n",
            "'./get-token' exited with code 2: not logged in",
        ),
        (None, "", "", "'./get-token' was killed by a signal"),
        (Some(0), "CANARY-raw-token", "", "printed no JSON object"),
        (Some(0), r#"["CANARY-x"]"#, "", "not an object"),
        (
            Some(0),
            r#"{"apiVersion":"fhirconn.exec/v2","token":"CANARY-x"}"#,
            "",
            "unknown apiVersion 'fhirconn.exec/v2' (this fhirconn reads 'fhirconn.exec/v1')",
        ),
        (Some(0), r#"{"token":"CANARY-x"}"#, "", "has no apiVersion"),
        (
            Some(0),
            r#"{"apiVersion":"fhirconn.exec/v1","token":"CANARY-x","headers":{"a":"b"}}"#,
            "",
            "both 'token' and 'headers'",
        ),
        (
            Some(0),
            r#"{"apiVersion":"fhirconn.exec/v1","token":"CANARY-x","expires_in":"CANARY-y"}"#,
            "",
            "'expires_in' must be a number",
        ),
        (
            Some(0),
            r#"{"apiVersion":"fhirconn.exec/v1","token":"CANARY-x","expires_at":"tomorrow"}"#,
            "",
            "not an RFC 3339 time",
        ),
        (
            Some(0),
            r#"{"apiVersion":"fhirconn.exec/v1","headers":{"X":"CANARY-x\r\nEvil: 1"}}"#,
            "",
            "control characters",
        ),
    ] {
        let e = answering(exit, stdout, stderr)
            .configure_and_authorize(&ExecScheme, settings())
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains(expected), "{text}");
        assert!(text.contains("./get-token"), "{text}");
        assert!(!text.contains("CANARY"), "{text}");
    }
}

#[test]
fn settings_are_checked() {
    let mock = MockHost::new();
    for (s, expected) in [
        (json!({"command": []}), "command"),
        (json!({"command": [""]}), "must not be empty"),
        (json!({"command": ["x"], "timeout": 301}), "timeout"),
        (json!({"command": ["x"], "shell": true}), "shell"),
    ] {
        let e = mock.configure(&ExecScheme, s).err().unwrap();
        assert!(e.to_string().contains(expected), "{e}");
    }
}

#[test]
fn rfc3339_times_are_read_with_offsets_and_fractions() {
    let t = |s: &str| rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
    assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(t("2026-01-01T00:10:00.123Z"), Some(1_767_226_200));
    assert_eq!(t("2026-01-01T01:10:00+01:00"), Some(1_767_226_200));
    assert_eq!(t("2000-02-29T00:00:00Z"), Some(951_782_400));
    for bad in [
        "2026-13-01T00:00:00Z",
        "2026-01-01",
        "2026-01-01T00:00:00",
        "x",
    ] {
        assert_eq!(t(bad), None, "{bad}");
    }
}

/// Security boundary: `env` values are secrets: the schema marks `env` `writeOnly` (which the
/// host's `profile describe` and inline-secret gate read), and `Debug` shows names only.
#[test]
fn env_values_are_secret_in_the_schema_and_in_debug() {
    let schema = ExecScheme.config_schema();
    assert_eq!(
        schema["properties"]["env"]["writeOnly"],
        json!(true),
        "{schema}"
    );
    for name in ["command", "timeout", "inherit-env"] {
        assert!(
            schema["properties"][name].get("writeOnly").is_none(),
            "{name} is not a secret"
        );
    }
    let s: ExecSettings = MockHost::new().with_host(|h| {
        settings::parse(
            json!({"command": ["x"], "env": {"VENDOR_KEY": "CANARY-env-value"}}),
            h,
        )
        .unwrap()
    });
    let shown = format!("{s:?}");
    assert!(shown.contains("VENDOR_KEY"), "{shown}");
    assert!(!shown.contains("CANARY"), "{shown}");
}
