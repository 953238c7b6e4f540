//! Tests of typed settings: the derived schema, secret resolution and error wording.

use super::*;
use crate::testing::MockHost;
use crate::ErrorKind;

/// Basic-like settings.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Login {
    /// user-id
    #[schemars(length(min = 1))]
    username: String,
    /// password
    password: SecretSetting,
    /// key password
    key_password: Option<SecretSetting>,
    retries: Option<u32>,
}

fn parse_login(v: Value, mock: &MockHost) -> Result<Login> {
    mock.with_host(|host| parse::<Login>(v, host))
}

fn err(v: Value) -> Error {
    parse_login(v, &MockHost::new()).unwrap_err()
}

#[test]
fn a_secret_field_expands_to_three_properties_the_inline_one_write_only() {
    let s = schema::<Login>();
    let props = s["properties"].as_object().unwrap();
    for (key, source) in [
        ("password", "inline"),
        ("password-file", "file"),
        ("password-env", "env"),
        ("key-password", "inline"),
        ("key-password-file", "file"),
        ("key-password-env", "env"),
    ] {
        let inline = source == "inline";
        assert_eq!(
            props[key]["writeOnly"].as_bool(),
            inline.then_some(true),
            "{key}"
        );
        assert_eq!(props[key]["x-secret-source"], source, "{key}");
        assert_eq!(props[key]["type"], "string", "{key}");
        assert_eq!(props[key]["minLength"], 1, "{key}");
    }
    assert!(props["password-file"]["description"]
        .as_str()
        .unwrap()
        .contains("file holding the password"));
    assert_eq!(props["username"]["writeOnly"], Value::Null);
    assert_eq!(props["username"]["minLength"], 1);
    assert_eq!(props["retries"]["type"], "integer", "no null for an Option");
    assert_eq!(s["required"], json!(["username"]));
    assert_eq!(s["additionalProperties"], false);
    let text = s.to_string();
    assert!(!text.contains(MARK) && !text.contains("$schema") && !text.contains("title"));
    assert!(!text.contains("$ref"), "subschemas are inlined: {text}");
}

#[test]
fn the_schema_wants_exactly_one_source_of_a_required_secret_and_at_most_one_otherwise() {
    let s = schema::<Login>();
    let valid = |v: Value| jsonschema::is_valid(&s, &v);
    assert!(valid(json!({"username": "u", "password": "p"})));
    assert!(valid(
        json!({"username": "u", "password-env": "P", "key-password-file": "f"})
    ));
    assert!(!valid(json!({"username": "u"})), "no password");
    assert!(!valid(
        json!({"username": "u", "password": "p", "retries": null})
    ));
    assert!(!valid(
        json!({"username": "u", "password": "p", "password-file": "f"})
    ));
    assert!(!valid(json!({"username": "u", "password": "p",
                          "key-password": "k", "key-password-env": "K"})));
    assert!(!valid(
        json!({"username": "u", "password": "p", "pasword": "x"})
    ));
}

#[test]
fn secrets_resolve_from_each_source() {
    let mock = MockHost::new()
        .with_file("pw.txt", b"from-file\n")
        .with_env("PW", "from-env");
    let a = parse_login(json!({"username": "u", "password": "inline"}), &mock).unwrap();
    let b = parse_login(json!({"username": "u", "password-file": "pw.txt"}), &mock).unwrap();
    let c = parse_login(
        json!({"username": "u", "password-env": "PW", "retries": 3}),
        &mock,
    );
    let c = c.unwrap();
    assert_eq!(a.password.expose_secret(), "inline");
    assert_eq!(b.password.expose_secret(), "from-file");
    assert_eq!(c.password.expose_secret(), "from-env");
    assert_eq!(
        [a.password.key(), b.password.key(), c.password.key()],
        ["password", "password-file", "password-env"]
    );
    assert!(a.key_password.is_none());
    assert_eq!((a.username.as_str(), c.retries), ("u", Some(3)));
}

#[test]
fn a_file_secret_reloads_from_the_file() {
    let s = parse_login(
        json!({"username": "u", "password-file": "pw.txt"}),
        &MockHost::new().with_file("pw.txt", b"first"),
    )
    .unwrap();
    let rotated = MockHost::new().with_file("pw.txt", b"second\n");
    let again = rotated.with_host(|h| s.password.reload(h)).unwrap();
    assert_eq!(again.expose_secret(), "second");
}

#[test]
fn errors_name_the_setting_and_withhold_values() {
    let cases = [
        (json!("x"), "settings must be an object"),
        (json!({"password": "p"}), "'username' is required"),
        (json!({"username": "u"}), "exactly one of 'password', 'password-file', 'password-env' must be set; none is"),
        (
            json!({"username": "u", "password": "p", "password-env": "E"}),
            "exactly one of 'password', 'password-file', 'password-env' must be set; found 'password' and 'password-env'",
        ),
        (json!({"username": "u", "password": "p", "pasword": "y"}), "unknown setting 'pasword'"),
        (json!({"username": "u", "password-env": "UNSET"}), "password-env: environment variable UNSET is not set"),
        (json!({"username": "u", "password": 5}), "'password' must be a string"),
        (json!({"username": "u", "password": "p", "retries": "CANARY-retries"}), "retries: invalid type"),
    ];
    for (settings, expected) in cases {
        let e = err(settings.clone());
        assert_eq!(e.kind(), ErrorKind::Config, "{settings}");
        assert!(e.message().contains(expected), "{settings}: {e}");
        assert!(!e.message().contains("CANARY"), "{e}");
    }
}

#[test]
fn an_optional_secret_can_be_required_by_the_scheme() {
    let s = parse_login(json!({"username": "u", "password": "p"}), &MockHost::new()).unwrap();
    let e = SecretSetting::require(s.key_password, "key-password").unwrap_err();
    assert_eq!(
        e.message(),
        "exactly one of 'key-password', 'key-password-file', 'key-password-env' must be set; none is"
    );
}

#[test]
fn a_marker_cannot_be_forged_and_a_secret_setting_needs_parse() {
    // The key a marker sits under is always replaced, so a person cannot write one.
    let forged = json!({"username": "u", "password": {"$fhirconn-secret-slot": 0}});
    assert!(err(forged)
        .message()
        .contains("'password' must be a string"));
    // Outside `parse` there is no table to take a secret from.
    let direct: std::result::Result<SecretSetting, _> =
        serde_json::from_value(json!({"$fhirconn-secret-slot": 0}));
    assert!(direct.unwrap_err().to_string().contains("settings::parse"));
    // The table is empty again after a parse.
    let _ = parse_login(json!({"username": "u", "password": "p"}), &MockHost::new()).unwrap();
    assert!(SLOTS.with(|s| s.borrow().is_empty()));
}

#[test]
fn debug_shows_which_key_but_never_the_secret() {
    let s = parse_login(
        json!({"username": "u", "password": "CANARY-pw", "key-password": "CANARY-kp"}),
        &MockHost::new(),
    )
    .unwrap();
    let text = format!("{s:?}");
    assert!(!text.contains("CANARY"), "{text}");
    assert!(text.contains("\"password\""), "{text}");
}

#[test]
fn forbid_null_removes_null_from_types_and_branches() {
    let mut a = json!({"type": ["integer", "null"], "minimum": 0});
    forbid_null(&mut a);
    assert_eq!(a, json!({"type": "integer", "minimum": 0}));
    let mut b = json!({"anyOf": [{"type": "object", "required": ["x"]}, {"type": "null"}]});
    forbid_null(&mut b);
    assert_eq!(b, json!({"type": "object", "required": ["x"]}));
    let mut c = json!({"type": ["string", "integer", "null"]});
    forbid_null(&mut c);
    assert_eq!(c, json!({"type": ["string", "integer"]}));
}
