//! fhirconn scheme `bearer`: a static bearer token (RFC 6750) from the config, a file or the
//! environment.
//!
//! Settings: exactly one of `token`, `token-file`, `token-env`. The token does not expire as
//! far as fhirconn knows. A `token-file` is read again on every `authorize`, so a token rotated
//! on disk by another process is used after the server's next 401 (the host then asks for
//! credentials again and retries once); an inline or environment token is read once.

#![forbid(unsafe_code)]

use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret,
    Host, Result, Scheme, SecretSource, SecretString,
};

/// The `bearer` scheme.
#[derive(Debug, Default)]
pub struct Bearer;

/// static bearer token
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
struct BearerSettings {
    /// bearer token
    token: SecretSetting,
}

/// A configured `bearer` connection. A `token-file` token is read again on every `authorize`.
#[derive(Debug)]
pub struct BearerConnection {
    token: SecretSetting,
}

impl Scheme for Bearer {
    fn name(&self) -> &str {
        "bearer"
    }

    fn summary(&self) -> &str {
        "a static bearer token (RFC 6750) from the config, a file or an environment variable"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<BearerSettings>()
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let BearerSettings { token } = settings::parse(settings, host)?;
        checked(token.secret().clone())?;
        Ok(Box::new(BearerConnection { token }))
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
        let token = match self.token.source() {
            SecretSource::File(_) => checked(self.token.reload(host)?)?,
            _ => self.token.secret().clone(),
        };
        Ok(Credentials::new().bearer(&token))
    }
}

fhirconn_sdk::export_schemes!(Bearer);

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_sdk::serde_json::json;
    use fhirconn_sdk::testing::{header_value, MockHost};

    fn header(settings: Value, mock: &MockHost) -> Result<String> {
        let creds = mock.configure_and_authorize(&Bearer, settings)?;
        assert_eq!(creds.headers.len(), 1);
        Ok(header_value(&creds, "Authorization").expect("an Authorization header"))
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
        let conn = dir
            .configure(&Bearer, json!({"token-file": "t.txt"}))
            .unwrap();
        let rotated = dir.with_file("t.txt", b"second\n");
        let creds = rotated.authorize(conn.as_ref()).unwrap();
        assert_eq!(
            header_value(&creds, "Authorization").unwrap(),
            "Bearer second"
        );
        let broken = MockHost::new().with_file("t.txt", b"two words\n");
        let e = broken.authorize(conn.as_ref()).unwrap_err();
        assert!(e.message().contains("whitespace"), "{e}");
    }

    #[test]
    fn an_env_token_is_read_once() {
        let mock = MockHost::new().with_env("T", "first");
        let conn = mock.configure(&Bearer, json!({"token-env": "T"})).unwrap();
        let creds = MockHost::new()
            .with_env("T", "second")
            .authorize(conn.as_ref());
        assert_eq!(
            header_value(&creds.unwrap(), "Authorization").unwrap(),
            "Bearer first"
        );
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
