//! fhirconn scheme `basic`: HTTP Basic authentication (RFC 7617) with a UTF-8 user-id and password.
//!
//! Settings: `username` and exactly one of `password`, `password-file`, `password-env`.
//! The password is read once, at configure time, so a missing file is a configuration error.

#![forbid(unsafe_code)]

use base64::Engine as _;
use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret,
    Host, Result, Scheme, SecretString,
};

/// The `basic` scheme.
#[derive(Debug, Default)]
pub struct Basic;

/// HTTP Basic authentication
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
struct BasicSettings {
    /// user-id; may not contain ':' (RFC 7617)
    #[schemars(length(min = 1), pattern(r"^[^:]*$"))]
    username: String,
    /// password
    password: SecretSetting,
}

/// A configured `basic` connection: the precomputed `Authorization` value.
#[derive(Debug)]
pub struct BasicConnection {
    authorization: SecretString,
}

impl Scheme for Basic {
    fn name(&self) -> &str {
        "basic"
    }

    fn summary(&self) -> &str {
        "HTTP Basic authentication (RFC 7617): username and password"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<BasicSettings>()
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let BasicSettings { username, password } = settings::parse(settings, host)?;
        let problem = if username.is_empty() {
            Some("'username' must be a non-empty string")
        } else if username.contains(':') {
            Some("'username' must not contain ':' (RFC 7617)")
        } else if username.chars().any(char::is_control) {
            Some("'username' must not contain control characters")
        } else if password.expose_secret().chars().any(char::is_control) {
            Some("the password must not contain control characters")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::config(problem));
        }
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{username}:{}", password.expose_secret()));
        Ok(Box::new(BasicConnection {
            authorization: SecretString::from(format!("Basic {encoded}")),
        }))
    }
}

impl Connection for BasicConnection {
    fn authorize(&self, _request: &AuthRequest, _host: &Host<'_>) -> Result<Credentials> {
        Ok(Credentials::new().secret_header("Authorization", self.authorization.clone()))
    }
}

fhirconn_sdk::export_schemes!(Basic);

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_sdk::serde_json::json;
    use fhirconn_sdk::testing::{header_value, MockHost};

    fn authorization(settings: Value, mock: &MockHost) -> Result<String> {
        let creds = mock.configure_and_authorize(&Basic, settings)?;
        assert!(creds.expires_at.is_none());
        assert_eq!(creds.headers.len(), 1);
        Ok(header_value(&creds, "Authorization").expect("an Authorization header"))
    }

    #[test]
    fn utf8_passwords_with_colons_are_encoded_per_rfc7617() {
        let mock = MockHost::new();
        let got = authorization(
            json!({"username": "Aladdin", "password": "open:sesame"}),
            &mock,
        );
        assert_eq!(got.unwrap(), "Basic QWxhZGRpbjpvcGVuOnNlc2FtZQ==");
        // RFC 7617 section 2.1's UTF-8 example.
        let got = authorization(json!({"username": "test", "password": "123£"}), &mock);
        assert_eq!(got.unwrap(), "Basic dGVzdDoxMjPCow==");
    }

    #[test]
    fn password_from_file_and_env() {
        let mock = MockHost::new()
            .with_file("pw.txt", b"open:sesame\n")
            .with_env("PW", "open:sesame");
        let a = authorization(
            json!({"username": "Aladdin", "password-file": "pw.txt"}),
            &mock,
        );
        let b = authorization(json!({"username": "Aladdin", "password-env": "PW"}), &mock);
        assert_eq!(a.unwrap(), "Basic QWxhZGRpbjpvcGVuOnNlc2FtZQ==");
        assert_eq!(b.unwrap(), "Basic QWxhZGRpbjpvcGVuOnNlc2FtZQ==");
    }

    #[test]
    fn bad_settings_are_config_errors_naming_the_field() {
        let mock = MockHost::new();
        let cases = [
            (json!({"password": "x"}), "'username' is required"),
            (
                json!({"username": "a:b", "password": "x"}),
                "must not contain ':'",
            ),
            (json!({"username": "", "password": "x"}), "non-empty"),
            (
                json!({"username": "a\u{7}", "password": "x"}),
                "'username' must not contain control characters",
            ),
            (
                json!({"username": "a", "password": "x\ny"}),
                "the password must not contain control characters",
            ),
            (json!({"username": "a"}), "exactly one of 'password'"),
            (
                json!({"username": "a", "password": "x", "password-env": "E"}),
                "found 'password' and 'password-env'",
            ),
            (
                json!({"username": "a", "password": "x", "pasword": "y"}),
                "unknown setting 'pasword'",
            ),
            (
                json!({"username": "a", "password-file": "nope"}),
                "password-file: ",
            ),
        ];
        for (settings, expected) in cases {
            let err = authorization(settings.clone(), &mock).unwrap_err();
            assert_eq!(err.kind(), fhirconn_sdk::ErrorKind::Config, "{settings}");
            assert!(err.message().contains(expected), "{settings}: {err}");
        }
    }

    #[test]
    fn the_schema_marks_the_password_secret_and_refuses_a_colon() {
        let schema = Basic.config_schema();
        assert_eq!(schema["properties"]["password"]["writeOnly"], true);
        assert_eq!(schema["properties"]["username"]["pattern"], "^[^:]*$");
        assert_eq!(schema["required"], json!(["username"]));
        assert_eq!(schema["additionalProperties"], false);
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let creds = MockHost::new()
            .configure_and_authorize(&Basic, json!({"username": "u", "password": "CANARY-basic"}))
            .unwrap();
        let text = format!("{creds:?}");
        assert!(!text.contains("CANARY"), "{text}");
        // base64 of the canary must not leak either
        assert!(!text.contains("Q0FOQVJZ"), "{text}");
    }
}
