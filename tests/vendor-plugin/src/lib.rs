//! `acme-apikey`: ACME Health's proprietary scheme. The client exchanges its API key for a
//! short-lived access token at ACME's token service (`POST {"client_id", "api_key"}` as JSON,
//! not OAuth), then sends it as a bearer token. Written against `fhirconn-sdk` alone, the way a
//! vendor would, and loaded into an unchanged `fhirconn` binary.
//!
//! Settings: `token-url`, `client-id`, and exactly one of `api-key`, `api-key-file`,
//! `api-key-env`.

#![forbid(unsafe_code)]

use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret,
    Host, HttpRequest, Result, Scheme, SecretString,
};
use std::time::Duration;

/// The `acme-apikey` scheme.
#[derive(Debug, Default)]
pub struct AcmeApiKey;

/// ACME Health API key exchange
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct AcmeSettings {
    /// ACME's token service
    #[schemars(url)]
    token_url: String,
    /// client id at ACME
    #[schemars(length(min = 1))]
    client_id: String,
    /// ACME API key
    api_key: SecretSetting,
}

/// A configured connection: its settings (`Debug` shows no secret).
#[derive(Debug)]
pub struct AcmeConnection(AcmeSettings);

impl Scheme for AcmeApiKey {
    fn name(&self) -> &str {
        "acme-apikey"
    }

    fn summary(&self) -> &str {
        "ACME Health API key exchanged for a short-lived access token"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<AcmeSettings>()
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let s: AcmeSettings = settings::parse(settings, host)?;
        if !(s.token_url.starts_with("https://") || s.token_url.starts_with("http://")) {
            return Err(Error::config("token-url: must be an http(s) URL"));
        }
        Ok(Box::new(AcmeConnection(s)))
    }
}

impl Connection for AcmeConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let AcmeSettings {
            token_url,
            client_id,
            api_key,
        } = &self.0;
        let req = HttpRequest::new("POST", token_url)
            .header("Accept", "application/json")
            .json(&json!({"client_id": client_id, "api_key": api_key.expose_secret()}))?;
        let resp = host
            .http(req)
            .map_err(|e| e.context(format!("ACME token service {token_url}")))?;
        let v: Value = fhirconn_sdk::serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if !resp.is_success() {
            let code = v["error"].as_str().unwrap_or("no error code");
            let text = format!(
                "ACME token service {token_url} answered HTTP {}: {code}",
                resp.status
            );
            return Err(if resp.status == 401 || resp.status == 403 {
                Error::rejected(text)
            } else {
                Error::protocol(text)
            });
        }
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::protocol("the ACME token service sent no access_token"))?;
        let mut creds = Credentials::new().bearer(&SecretString::from(token.to_string()));
        if let Some(s) = v["expires_in"].as_u64() {
            creds = creds.expires_in(host, Duration::from_secs(s));
        }
        Ok(creds)
    }
}

fhirconn_sdk::export_schemes!(AcmeApiKey);

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_sdk::testing::{header_value, MockHost};
    use fhirconn_sdk::HttpResponse;

    #[test]
    fn the_api_key_is_exchanged_for_a_bearer_token() {
        let mock = MockHost::new()
            .with_env("ACME_KEY", "key-123")
            .with_http(|req| {
                assert_eq!(req.url, "https://auth.acme.example/token");
                let body: Value = fhirconn_sdk::serde_json::from_slice(&req.body).unwrap();
                let (status, body) = if body["api_key"] == "key-123" {
                    (200, &br#"{"access_token":"tok","expires_in":60}"#[..])
                } else {
                    (401, &br#"{"error":"invalid_api_key"}"#[..])
                };
                Ok(HttpResponse {
                    status,
                    headers: vec![],
                    body: body.to_vec(),
                })
            });
        let settings = json!({"token-url": "https://auth.acme.example/token", "client-id": "c",
                              "api-key-env": "ACME_KEY"});
        let creds = mock.configure_and_authorize(&AcmeApiKey, settings).unwrap();
        assert_eq!(header_value(&creds, "Authorization").unwrap(), "Bearer tok");
        assert!(creds.expires_at.is_some());
        let headers = mock.requests.lock().unwrap()[0].headers.clone();
        assert!(headers
            .iter()
            .any(|h| h.0 == "Content-Type" && h.1 == "application/json"));
        let wrong = json!({"token-url": "https://auth.acme.example/token", "client-id": "c",
                           "api-key": "CANARY-wrong"});
        let e = mock
            .configure_and_authorize(&AcmeApiKey, wrong)
            .unwrap_err();
        assert_eq!(e.kind(), fhirconn_sdk::ErrorKind::CredentialsRejected);
        assert!(e.message().contains("invalid_api_key") && !e.message().contains("CANARY"));
    }

    #[test]
    fn settings_are_checked_and_the_key_marked_secret() {
        let mock = MockHost::new();
        for (settings, expected) in [
            (
                json!({"token-url": "ftp://a", "client-id": "c", "api-key": "k"}),
                "http(s) URL",
            ),
            (
                json!({"token-url": "https://a", "api-key": "k"}),
                "'client-id' is required",
            ),
            (
                json!({"token-url": "https://a", "client-id": "c"}),
                "exactly one of 'api-key'",
            ),
        ] {
            let e = mock.configure(&AcmeApiKey, settings).err().unwrap();
            assert!(e.message().contains(expected), "{e}");
        }
        let schema = AcmeApiKey.config_schema();
        assert_eq!(schema["properties"]["api-key"]["writeOnly"], true);
        assert_eq!(schema["properties"]["token-url"]["format"], "uri");
    }
}
