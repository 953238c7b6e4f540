//! fhirconn scheme `google-service-account`: an access token for the Google Cloud Healthcare
//! API (or any Google API) from a service account.
//!
//! - With a key (`key` / `key-file` / `key-env`: the service-account JSON key file): a JWT signed
//!   RS256 with the file's `private_key` (`kid` = `private_key_id`; claims `iss` =
//!   `client_email`, `scope`, `aud` = the token URI, `iat`, `exp` one hour later, `sub` =
//!   `subject` for domain-wide delegation), exchanged with the RFC 7523 JWT-bearer grant at the
//!   file's `token_uri` (or `token-url`), which must be https (plain http only to loopback).
//! - With `source: metadata-server` (GCE, GKE, Cloud Run): the metadata server's token for the
//!   default service account, `http://$GCE_METADATA_HOST` (default `169.254.169.254`, sent as
//!   the host's declared instance-metadata request, the only plain http it allows off loopback);
//!   an answer without `Metadata-Flavor: Google` is not from a metadata server and is refused.
//!
//! `scope`: space-separated, default `https://www.googleapis.com/auth/cloud-healthcare`.

#![forbid(unsafe_code)]

use fhirconn_sdk::flows;
use fhirconn_sdk::keys::{self, Algorithm};
use fhirconn_sdk::oauth::{endpoint_url, TokenRequest};
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    form_urlencode_component, schemars, serde, AuthRequest, Connection, ConnectionInfo,
    Credentials, Error, ExposeSecret, Host, HttpRequest, Result, Scheme, SecretString,
};
use std::time::UNIX_EPOCH;

/// The JWT-bearer authorization grant (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The default scope: the Cloud Healthcare API.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-healthcare";
/// The assertion's lifetime: Google accepts at most one hour.
pub const ASSERTION_LIFETIME: u64 = 3600;
/// The metadata server's address, unless `GCE_METADATA_HOST` names another: the IP
/// `metadata.google.internal` resolves to, as Google's Go client uses it (no DNS lookup).
pub const METADATA_HOST: &str = "169.254.169.254";
/// The metadata server's token path for the default service account.
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The `google-service-account` scheme.
#[derive(Debug, Default)]
pub struct GoogleServiceAccount;

/// Where the token comes from.
#[derive(serde::Deserialize, schemars::JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(crate = "fhirconn_sdk::serde", rename_all = "kebab-case")]
#[schemars(crate = "fhirconn_sdk::schemars")]
enum Source {
    /// A signed assertion made with the service-account key.
    Key,
    /// The GCE/GKE/Cloud Run metadata server.
    MetadataServer,
}

/// Google Cloud service account
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
struct Settings {
    /// the service-account key file (JSON), as Google Cloud's console hands it out
    key: Option<SecretSetting>,
    /// 'key' (default) or 'metadata-server' (GCE, GKE, Cloud Run)
    source: Option<Source>,
    /// space-separated scopes; default https://www.googleapis.com/auth/cloud-healthcare
    #[schemars(length(min = 1))]
    scope: Option<String>,
    /// the user to act for (domain-wide delegation; JWT claim 'sub')
    #[schemars(length(min = 1))]
    subject: Option<String>,
    /// token endpoint instead of the key file's token_uri
    #[schemars(url)]
    token_url: Option<String>,
}

/// How a configured connection gets its token.
#[derive(Debug)]
enum Flow {
    Key {
        email: String,
        kid: String,
        key: keys::SigningKey,
        subject: Option<String>,
        token_url: String,
    },
    Metadata(String),
}

/// A configured `google-service-account` connection.
#[derive(Debug)]
pub struct GoogleConnection {
    scope: String,
    flow: Flow,
}

/// A required string field of the key file; the error names the field, never a value.
fn field<'a>(doc: &'a Value, name: &str, setting: &str) -> Result<&'a str> {
    doc[name]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::config(format!("{setting}: the key file has no '{name}'")))
}

/// The key flow: the key file read, its endpoint checked, its RSA key loaded for RS256.
fn key_flow(s: Settings, key: SecretSetting, host: &Host<'_>) -> Result<Flow> {
    let name = key.key();
    let doc: Value = fhirconn_sdk::serde_json::from_str(key.expose_secret())
        .map_err(|e| Error::config(format!("{name}: not a JSON key file ({e})")))?;
    let kind = field(&doc, "type", &name)?;
    if kind != "service_account" {
        return Err(Error::config(format!(
            "{name}: \"type\" is '{kind}', not a service account key (\"service_account\")"
        )));
    }
    let pem = field(&doc, "private_key", &name)?;
    host.redact_secret(pem);
    let (setting, token_url) = match &s.token_url {
        Some(t) => ("token-url", t.as_str()),
        None => (
            "token_uri of the key file",
            field(&doc, "token_uri", &name)?,
        ),
    };
    let u = endpoint_url(setting, token_url, host)?;
    let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if u.scheme() != "https" && !loopback {
        return Err(Error::config(format!(
            "{setting}: the token endpoint must be https (plain http only to loopback)"
        )));
    }
    // The SDK reads the key file's private_key and private_key_id (RSA, RS256).
    let signing = keys::load_with_alg(key.expose_secret().as_bytes(), None, Some(Algorithm::RS256))
        .map_err(|e| Error::config(format!("{name}: {e}")))?;
    Ok(Flow::Key {
        email: field(&doc, "client_email", &name)?.to_string(),
        kid: field(&doc, "private_key_id", &name)?.to_string(),
        key: signing,
        subject: s.subject,
        token_url: token_url.to_string(),
    })
}

/// The metadata server's token URL for `scopes`: `GCE_METADATA_HOST` (`host[:port]` only).
fn metadata_url(scopes: &[&str], host: &Host<'_>) -> Result<String> {
    let authority = host
        .env_var("GCE_METADATA_HOST")
        .unwrap_or_else(|| METADATA_HOST.to_string());
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if authority.is_empty() || !authority.chars().all(plain) {
        return Err(Error::config(
            "GCE_METADATA_HOST: must be host[:port] (e.g. 169.254.169.254)",
        ));
    }
    let scopes: Vec<String> = scopes.iter().map(|s| form_urlencode_component(s)).collect();
    Ok(format!(
        "http://{authority}{METADATA_TOKEN_PATH}?scopes={}",
        scopes.join(",")
    ))
}

impl Scheme for GoogleServiceAccount {
    fn name(&self) -> &str {
        "google-service-account"
    }

    fn summary(&self) -> &str {
        "Google Cloud service account: RS256 JWT-bearer grant with a key file, or the metadata server"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<Settings>()
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let mut s: Settings = settings::parse(settings, host)?;
        let scope_text = s.scope.take().unwrap_or_else(|| DEFAULT_SCOPE.to_string());
        let scopes: Vec<&str> = scope_text.split_whitespace().collect();
        if scopes.is_empty() {
            return Err(Error::config("scope: must name at least one scope"));
        }
        let flow = match (s.source.unwrap_or(Source::Key), s.key.take()) {
            (Source::Key, key) => key_flow(s, SecretSetting::require(key, "key")?, host)?,
            (Source::MetadataServer, Some(_)) => {
                return Err(Error::config(
                    "key: not used with 'source: metadata-server' (remove one of them)",
                ))
            }
            (Source::MetadataServer, None) => {
                if s.subject.is_some() || s.token_url.is_some() {
                    return Err(Error::config(
                        "subject and token-url need a key; the metadata server takes neither",
                    ));
                }
                Flow::Metadata(metadata_url(&scopes, host)?)
            }
        };
        Ok(Box::new(GoogleConnection {
            scope: scopes.join(" "),
            flow,
        }))
    }
}

impl GoogleConnection {
    /// A fresh signed assertion (the key flow only).
    pub fn assertion(&self, host: &Host<'_>) -> Result<Option<String>> {
        let Flow::Key {
            email,
            kid,
            key,
            subject,
            token_url,
        } = &self.flow
        else {
            return Ok(None);
        };
        let now = host
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = json!({"iss": email, "scope": self.scope, "aud": token_url,
            "iat": now, "exp": now + ASSERTION_LIFETIME});
        if let Some(sub) = subject {
            claims["sub"] = json!(sub);
        }
        key.client_assertion(kid, None, &claims).map(Some)
    }
}

impl Connection for GoogleConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        match &self.flow {
            Flow::Key { token_url, .. } => {
                let assertion = SecretString::from(self.assertion(host)?.unwrap_or_default());
                Ok(TokenRequest::new(token_url.as_str())
                    .grant(JWT_BEARER_GRANT)
                    .secret_param("assertion", &assertion)
                    .send(host)?
                    .credentials)
            }
            Flow::Metadata(url) => {
                let req = HttpRequest::new("GET", url).header("Metadata-Flavor", "Google");
                let marker = Some(("Metadata-Flavor", "Google"));
                flows::metadata_token(host, req, "metadata server", marker)
            }
        }
    }

    /// A key's tokens belong to its service account (`client_email`, inside the key, not in
    /// the settings) and, when delegating, to the `subject` it acts for: the same in every
    /// process holding the key, so a fleet may share them. The metadata server's account is
    /// the machine's own (equal settings on two machines can mean two accounts): never shared.
    fn share_key(&self) -> Option<String> {
        match &self.flow {
            Flow::Key {
                email,
                subject,
                token_url,
                ..
            } => Some(format!(
                "service account {email}\nsubject {}\ntoken endpoint {token_url}",
                subject.as_deref().unwrap_or("-")
            )),
            Flow::Metadata(_) => None,
        }
    }
}

fhirconn_sdk::export_schemes!(GoogleServiceAccount);

#[cfg(test)]
mod tests;
