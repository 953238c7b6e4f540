//! fhirconn scheme `basic`: HTTP Basic authentication (RFC 7617) with a UTF-8 user-id and password.
//!
//! Settings: `username` and exactly one of `password`, `password-file`, `password-env`.
//! The password is read once, at configure time, so a missing file is a configuration error.

#![forbid(unsafe_code)]

use base64::Engine as _;
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret, Host, Result,
    Scheme, SecretSource, SecretString,
};

/// The `basic` scheme.
#[derive(Debug, Default)]
pub struct Basic;

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
        let mut props = SecretSource::schema_properties("password", "password");
        props.insert(
            "username".into(),
            json!({"type": "string", "minLength": 1, "pattern": "^[^:]*$",
                   "description": "user-id; may not contain ':' (RFC 7617)"}),
        );
        json!({
            "type": "object",
            "description": "HTTP Basic authentication",
            "properties": props,
            "required": ["username"],
            "additionalProperties": false,
            "allOf": [SecretSource::schema_exactly_one("password")],
        })
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let Value::Object(settings) = settings else {
            return Err(Error::config("settings must be an object"));
        };
        for key in settings.keys() {
            if !matches!(
                key.as_str(),
                "username" | "password" | "password-file" | "password-env"
            ) {
                return Err(Error::config(format!("unknown setting '{key}'")));
            }
        }
        let username = match settings.get("username") {
            Some(Value::String(u)) if !u.is_empty() => u.clone(),
            Some(_) => return Err(Error::config("'username' must be a non-empty string")),
            None => return Err(Error::config("'username' is required")),
        };
        if username.contains(':') {
            return Err(Error::config("'username' must not contain ':' (RFC 7617)"));
        }
        if username.chars().any(char::is_control) {
            return Err(Error::config(
                "'username' must not contain control characters",
            ));
        }
        let password = SecretSource::resolve(&settings, "password", true, host)?
            .ok_or_else(|| Error::internal("password resolved to nothing"))?;
        if password.expose_secret().chars().any(char::is_control) {
            return Err(Error::config(
                "the password must not contain control characters",
            ));
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
    use fhirconn_sdk::testing::MockHost;
    use fhirconn_sdk::CredentialHeader;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            id: "c".into(),
            base_url: "http://127.0.0.1/fhir".into(),
        }
    }

    fn request() -> AuthRequest {
        AuthRequest {
            connection: info(),
            interactive: false,
            force_login: false,
        }
    }

    fn authorization(settings: Value, mock: &MockHost) -> Result<String> {
        mock.with_host(|host| {
            let conn = Basic.configure(&info(), settings, host)?;
            let creds = conn.authorize(&request(), host)?;
            assert!(creds.expires_at.is_none());
            match &creds.headers[..] {
                [CredentialHeader::Secret(name, value)] => {
                    assert_eq!(name, "Authorization");
                    Ok(value.expose_secret().to_string())
                }
                other => panic!("unexpected headers {other:?}"),
            }
        })
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
    fn debug_output_never_shows_the_password() {
        let mock = MockHost::new();
        mock.with_host(|host| {
            let conn = Basic
                .configure(
                    &info(),
                    json!({"username": "u", "password": "CANARY-basic"}),
                    host,
                )
                .unwrap();
            let creds = conn.authorize(&request(), host).unwrap();
            let text = format!("{creds:?}");
            assert!(!text.contains("CANARY"), "{text}");
            // base64 of the canary must not leak either
            assert!(!text.contains("Q0FOQVJZ"), "{text}");
        });
    }
}
