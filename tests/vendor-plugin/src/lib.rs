//! `acme-apikey`: ACME Health's proprietary scheme. The client exchanges its API key for a
//! short-lived access token at ACME's token service (`POST {"client_id", "api_key"}` as JSON,
//! not OAuth), then sends it as a bearer token. Written against `fhirconn-sdk` alone, the way a
//! vendor would, and loaded into an unchanged `fhirconn` binary.
//!
//! Settings: `token-url`, `client-id`, and exactly one of `api-key`, `api-key-file`,
//! `api-key-env`.

#![forbid(unsafe_code)]

use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret, Host, HttpRequest,
    Result, Scheme, SecretSource, SecretString,
};
use std::time::Duration;

/// The `acme-apikey` scheme.
#[derive(Debug, Default)]
pub struct AcmeApiKey;

/// A configured connection.
#[derive(Debug)]
pub struct AcmeConnection {
    token_url: String,
    client_id: String,
    api_key: SecretString,
}

impl Scheme for AcmeApiKey {
    fn name(&self) -> &str {
        "acme-apikey"
    }

    fn summary(&self) -> &str {
        "ACME Health API key exchanged for a short-lived access token"
    }

    fn config_schema(&self) -> Value {
        let mut props = SecretSource::schema_properties("api-key", "ACME API key");
        props.insert(
            "token-url".into(),
            json!({"type": "string", "format": "uri"}),
        );
        props.insert(
            "client-id".into(),
            json!({"type": "string", "minLength": 1}),
        );
        json!({
            "type": "object",
            "properties": props,
            "required": ["token-url", "client-id"],
            "additionalProperties": false,
            "allOf": [SecretSource::schema_exactly_one("api-key")],
        })
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let Value::Object(map) = &settings else {
            return Err(Error::config("settings must be an object"));
        };
        let field = |k: &str| {
            map.get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(String::from)
                .ok_or_else(|| Error::config(format!("{k}: required")))
        };
        let token_url = field("token-url")?;
        if !(token_url.starts_with("https://") || token_url.starts_with("http://")) {
            return Err(Error::config("token-url: must be an http(s) URL"));
        }
        let api_key = SecretSource::resolve(map, "api-key", true, host)?
            .ok_or_else(|| Error::internal("api-key resolved to nothing"))?;
        Ok(Box::new(AcmeConnection {
            token_url,
            client_id: field("client-id")?,
            api_key,
        }))
    }
}

impl Connection for AcmeConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let body = json!({"client_id": self.client_id, "api_key": self.api_key.expose_secret()});
        let mut req = HttpRequest::new("POST", &self.token_url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        req.body = body.to_string().into_bytes();
        let resp = host
            .http(req)
            .map_err(|e| e.context(format!("ACME token service {}", self.token_url)))?;
        let v: Value = fhirconn_sdk::serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if !resp.is_success() {
            let code = v["error"].as_str().unwrap_or("no error code");
            let text = format!(
                "ACME token service {} answered HTTP {}: {code}",
                self.token_url, resp.status
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
    use fhirconn_sdk::testing::MockHost;
    use fhirconn_sdk::{CredentialHeader, HttpResponse};

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            id: "acme".into(),
            base_url: "https://fhir.acme.example/r4".into(),
        }
    }

    #[test]
    fn the_api_key_is_exchanged_for_a_bearer_token() {
        let mock = MockHost::new()
            .with_env("ACME_KEY", "key-123")
            .with_http(|req| {
                assert_eq!(req.url, "https://auth.acme.example/token");
                let body: Value = fhirconn_sdk::serde_json::from_slice(&req.body).unwrap();
                Ok(if body["api_key"] == "key-123" {
                    HttpResponse {
                        status: 200,
                        headers: vec![],
                        body: br#"{"access_token":"tok","expires_in":60}"#.to_vec(),
                    }
                } else {
                    HttpResponse {
                        status: 401,
                        headers: vec![],
                        body: br#"{"error":"invalid_api_key"}"#.to_vec(),
                    }
                })
            });
        let settings = json!({"token-url": "https://auth.acme.example/token", "client-id": "c",
                              "api-key-env": "ACME_KEY"});
        let creds = mock
            .with_host(|h| {
                AcmeApiKey.configure(&info(), settings, h)?.authorize(
                    &AuthRequest {
                        connection: info(),
                        interactive: false,
                        force_login: false,
                    },
                    h,
                )
            })
            .unwrap();
        match &creds.headers[..] {
            [CredentialHeader::Secret(_, v)] => assert_eq!(v.expose_secret(), "Bearer tok"),
            other => panic!("{other:?}"),
        }
        assert!(creds.expires_at.is_some());
    }
}
