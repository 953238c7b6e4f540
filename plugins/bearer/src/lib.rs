//! fhirconn scheme `bearer`: a static bearer token (RFC 6750) from the config, a file or the
//! environment.
//!
//! Settings: exactly one of `token`, `token-file`, `token-env`. The token is read once, at
//! configure time; it does not expire as far as fhirconn knows, so a 401 is reported as is.

#![forbid(unsafe_code)]

use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret, Host, Result,
    Scheme, SecretSource, SecretString,
};

/// The `bearer` scheme.
#[derive(Debug, Default)]
pub struct Bearer;

/// A configured `bearer` connection.
#[derive(Debug)]
pub struct BearerConnection {
    token: SecretString,
}

impl Scheme for Bearer {
    fn name(&self) -> &str {
        "bearer"
    }

    fn summary(&self) -> &str {
        "a static bearer token (RFC 6750) from the config, a file or an environment variable"
    }

    fn config_schema(&self) -> Value {
        json!({
            "type": "object",
            "description": "static bearer token",
            "properties": SecretSource::schema_properties("token", "bearer token"),
            "additionalProperties": false,
            "allOf": [SecretSource::schema_exactly_one("token")],
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
        if let Some(key) = settings
            .keys()
            .find(|k| !matches!(k.as_str(), "token" | "token-file" | "token-env"))
        {
            return Err(Error::config(format!("unknown setting '{key}'")));
        }
        let token = SecretSource::resolve(&settings, "token", true, host)?
            .ok_or_else(|| Error::internal("token resolved to nothing"))?;
        let t = token.expose_secret();
        if t.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
        {
            return Err(Error::config("give the token without the 'Bearer ' prefix"));
        }
        // RFC 6750 b64token: no whitespace, no control characters (header injection).
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::config(
                "the token contains whitespace or control characters (RFC 6750 b64token)",
            ));
        }
        Ok(Box::new(BearerConnection { token }))
    }
}

impl Connection for BearerConnection {
    fn authorize(&self, _request: &AuthRequest, _host: &Host<'_>) -> Result<Credentials> {
        Ok(Credentials::new().bearer(&self.token))
    }
}

fhirconn_sdk::export_schemes!(Bearer);

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

    fn header(settings: Value, mock: &MockHost) -> Result<String> {
        mock.with_host(|host| {
            let conn = Bearer.configure(&info(), settings, host)?;
            let req = AuthRequest {
                connection: info(),
                interactive: false,
                force_login: false,
            };
            let creds = conn.authorize(&req, host)?;
            match &creds.headers[..] {
                [CredentialHeader::Secret(n, v)] if n == "Authorization" => {
                    Ok(v.expose_secret().to_string())
                }
                other => panic!("unexpected {other:?}"),
            }
        })
    }

    #[test]
    fn token_from_each_source() {
        let mock = MockHost::new()
            .with_file("t.txt", b"abc.def-ghi\n")
            .with_env("T", "abc.def-ghi");
        for s in [
            json!({"token": "abc.def-ghi"}),
            json!({"token-file": "t.txt"}),
            json!({"token-env": "T"}),
        ] {
            assert_eq!(header(s, &mock).unwrap(), "Bearer abc.def-ghi");
        }
    }

    #[test]
    fn bad_tokens_and_settings_are_refused_without_echoing_them() {
        let mock = MockHost::new();
        let cases = [
            (json!({"token": "two words"}), "whitespace"),
            (
                json!({"token": "Bearer abc"}),
                "without the 'Bearer ' prefix",
            ),
            (json!({}), "exactly one of 'token'"),
            (
                json!({"token": "a", "token-file": "f"}),
                "found 'token' and 'token-file'",
            ),
            (json!({"token": "a", "tokn": "b"}), "unknown setting 'tokn'"),
            (
                json!({"token-env": "UNSET_VAR"}),
                "token-env: environment variable UNSET_VAR",
            ),
        ];
        for (s, expected) in cases {
            let e = header(s.clone(), &mock).unwrap_err();
            assert!(e.message().contains(expected), "{s}: {e}");
            assert!(!e.message().contains("two words"));
        }
    }
}
