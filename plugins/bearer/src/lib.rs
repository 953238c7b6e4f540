//! fhirconn scheme `bearer`: a static bearer token (RFC 6750) from the config, a file or the
//! environment.
//!
//! Settings: exactly one of `token`, `token-file`, `token-env`. The token does not expire as
//! far as fhirconn knows. A `token-file` is read again on every `authorize`, so a token rotated
//! on disk by another process is used after the server's next 401 (the host then asks for
//! credentials again and retries once); an inline or environment token is read once.

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
    /// Where a `token-file` token comes from (read again on every `authorize`).
    file: Option<SecretSource>,
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
        let source = SecretSource::from_settings(&settings, "token", true)?
            .ok_or_else(|| Error::internal("token resolved to nothing"))?;
        let token = checked(source.load("token", host)?)?;
        let file = matches!(source, SecretSource::File(_)).then_some(source);
        Ok(Box::new(BearerConnection { token, file }))
    }
}

/// Refuses a token that cannot be sent as is.
fn checked(token: SecretString) -> Result<SecretString> {
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
    Ok(token)
}

impl Connection for BearerConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        match &self.file {
            Some(file) => Ok(Credentials::new().bearer(&checked(file.load("token", host)?)?)),
            None => Ok(Credentials::new().bearer(&self.token)),
        }
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
    fn a_token_file_is_read_again_on_every_authorize() {
        let dir = MockHost::new().with_file("t.txt", b"first\n");
        let req = AuthRequest {
            connection: info(),
            interactive: false,
            force_login: false,
        };
        let conn = dir
            .with_host(|h| Bearer.configure(&info(), json!({"token-file": "t.txt"}), h))
            .unwrap();
        let rotated = dir.with_file("t.txt", b"second\n");
        let creds = rotated.with_host(|h| conn.authorize(&req, h)).unwrap();
        match &creds.headers[..] {
            [CredentialHeader::Secret(_, v)] => assert_eq!(v.expose_secret(), "Bearer second"),
            other => panic!("unexpected {other:?}"),
        }
        let broken = MockHost::new().with_file("t.txt", b"two words\n");
        let e = broken.with_host(|h| conn.authorize(&req, h)).unwrap_err();
        assert!(e.message().contains("whitespace"), "{e}");
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
