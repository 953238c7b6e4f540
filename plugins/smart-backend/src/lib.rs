//! fhirconn scheme `smart-backend`: SMART App Launch 2.x Backend Services — an access token
//! from the client credentials grant, the client authenticated by a signed JWT assertion
//! (RFC 7523, `private_key_jwt`, RS384 or ES384).
//!
//! Settings: `client-id`; the private key as exactly one of `private-key` (inline PEM/JWK),
//! `private-key-file`, `private-key-env` — PEM (PKCS#8, PKCS#1 RSA, SEC1 EC) or a private JWK or
//! JWKS; `kid` (required unless the JWK has one); optional `alg` (checked against the key),
//! `jku`; `scope` (required, e.g. `system/*.rs` or v1 `system/*.read`); optional `token-url`
//! (otherwise from `{base}/.well-known/smart-configuration`); `assertion-lifetime` in seconds
//! (default and maximum 300).

#![forbid(unsafe_code)]

pub mod keys;

use fhirconn_sdk::oauth::discovery::{self, excludes};
use fhirconn_sdk::oauth::{endpoint_url, ClientAuth, TokenRequest};
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret, Host, Memo, Result,
    Scheme, SecretSource, SecretString,
};
use jsonwebtoken::Header;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::time::{Duration, UNIX_EPOCH};

pub use fhirconn_sdk::oauth::discovery::resolve_url;
/// The client-assertion type of RFC 7523 §2.2.
pub use fhirconn_sdk::oauth::JWT_BEARER;
/// The longest assertion lifetime SMART allows (five minutes).
pub const MAX_ASSERTION_LIFETIME: u64 = 300;

/// The `smart-backend` scheme.
#[derive(Debug, Default)]
pub struct SmartBackend;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Settings {
    client_id: String,
    #[allow(dead_code)]
    private_key: Option<IgnoredAny>,
    #[allow(dead_code)]
    private_key_file: Option<IgnoredAny>,
    #[allow(dead_code)]
    private_key_env: Option<IgnoredAny>,
    kid: Option<String>,
    alg: Option<String>,
    jku: Option<String>,
    scope: String,
    token_url: Option<String>,
    assertion_lifetime: Option<u64>,
}

/// A configured `smart-backend` connection.
#[derive(Debug)]
pub struct SmartConnection {
    client_id: String,
    key: keys::SigningKey,
    kid: String,
    jku: Option<String>,
    scope: String,
    base_url: String,
    /// Pinned by `token-url` (no discovery, no other-host warning).
    pinned: bool,
    token_endpoint: Memo<String>,
    lifetime: u64,
}

impl Scheme for SmartBackend {
    fn name(&self) -> &str {
        "smart-backend"
    }

    fn summary(&self) -> &str {
        "SMART Backend Services: client credentials with a signed JWT assertion (RS384/ES384)"
    }

    fn config_schema(&self) -> Value {
        let mut props = SecretSource::schema_properties(
            "private-key",
            "private key: PEM (PKCS#8, PKCS#1, SEC1) or a private JWK/JWKS",
        );
        let extra = json!({
            "client-id": {"type": "string", "minLength": 1},
            "kid": {"type": "string", "minLength": 1,
                "description": "key id of the registered public key (JWT header 'kid')"},
            "alg": {"enum": ["RS384", "ES384"], "description": "checked against the key type"},
            "jku": {"type": "string", "format": "uri",
                "description": "URL of the client's JWKS (JWT header 'jku'), if registered that way"},
            "scope": {"type": "string", "minLength": 1,
                "description": "e.g. 'system/*.rs' (SMART v2) or 'system/*.read' (v1)"},
            "token-url": {"type": "string", "format": "uri",
                "description": "token endpoint; default: from {base}/.well-known/smart-configuration"},
            "assertion-lifetime": {"type": "integer", "minimum": 1, "maximum": MAX_ASSERTION_LIFETIME,
                "description": "seconds until the client assertion expires (at most 300)"},
        });
        if let Value::Object(extra) = extra {
            props.extend(extra);
        }
        json!({
            "type": "object",
            "description": "SMART Backend Services (private_key_jwt)",
            "properties": props,
            "required": ["client-id", "scope"],
            "additionalProperties": false,
            "allOf": [SecretSource::schema_exactly_one("private-key")],
        })
    }

    fn configure(
        &self,
        connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let Value::Object(map) = &settings else {
            return Err(Error::config("settings must be an object"));
        };
        let key_text: SecretString = SecretSource::resolve(map, "private-key", true, host)?
            .ok_or_else(|| Error::internal("private-key resolved to nothing"))?;
        let key_field = ["private-key-file", "private-key-env", "private-key"]
            .into_iter()
            .find(|f| map.contains_key(*f))
            .unwrap_or("private-key");
        let s: Settings = fhirconn_sdk::parse_settings(settings)?;
        if s.client_id.is_empty() {
            return Err(Error::config("client-id: must not be empty"));
        }
        let key = keys::load(key_text.expose_secret().as_bytes(), s.kid.as_deref())
            .map_err(|e| Error::config(format!("{key_field}: {e}")))?;
        if let Some(alg) = &s.alg {
            if alg != keys::alg_name(key.alg) {
                return Err(Error::config(format!(
                    "alg: {alg} does not match the key, which is for {}",
                    keys::alg_name(key.alg)
                )));
            }
        }
        let kid = match (&s.kid, &key.kid) {
            (Some(k), Some(jk)) if k != jk => {
                return Err(Error::config(format!(
                    "kid: '{k}' differs from the JWK's kid '{jk}'"
                )))
            }
            (Some(k), _) | (None, Some(k)) => k.clone(),
            (None, None) => {
                return Err(Error::config(
                    "kid: required (the key id under which the public key is registered)",
                ))
            }
        };
        let scopes: Vec<&str> = s.scope.split(' ').filter(|s| !s.is_empty()).collect();
        if scopes.is_empty() {
            return Err(Error::config("scope: must name at least one scope"));
        }
        if !scopes.iter().any(|s| s.starts_with("system/")) {
            host.warn("scope has no system/ scope; Backend Services grants system/ scopes");
        }
        let lifetime = s.assertion_lifetime.unwrap_or(MAX_ASSERTION_LIFETIME);
        if lifetime == 0 || lifetime > MAX_ASSERTION_LIFETIME {
            return Err(Error::config(format!(
                "assertion-lifetime: {lifetime} s; must be 1 to {MAX_ASSERTION_LIFETIME} seconds"
            )));
        }
        if let Some(t) = &s.token_url {
            endpoint_url("token-url", t, host)?;
        }
        Ok(Box::new(SmartConnection {
            client_id: s.client_id,
            key,
            kid,
            jku: s.jku,
            scope: scopes.join(" "),
            base_url: connection.base_url.clone(),
            pinned: s.token_url.is_some(),
            token_endpoint: s.token_url.map_or_else(Memo::new, Memo::with),
            lifetime,
        }))
    }
}

/// Reads the token endpoint from `{base}/.well-known/smart-configuration` and checks that the
/// server advertises what this client needs (when it advertises anything).
pub fn discover(base_url: &str, alg: &str, host: &Host<'_>) -> Result<String> {
    let doc = discovery::smart(host, base_url).map_err(|e| {
        let hint = "set 'token-url' if the server publishes no smart-configuration";
        Error::new(e.kind(), format!("{e}; {hint}"))
    })?;
    let checks = [
        (
            "grant_types_supported",
            &doc.grant_types_supported,
            "client_credentials",
        ),
        (
            "token_endpoint_auth_methods_supported",
            &doc.token_endpoint_auth_methods_supported,
            "private_key_jwt",
        ),
        (
            "token_endpoint_auth_signing_alg_values_supported",
            &doc.token_endpoint_auth_signing_alg_values_supported,
            alg,
        ),
    ];
    for (field, list, wanted) in checks {
        if excludes(list, wanted) {
            return Err(Error::protocol(format!(
                "SMART discovery {base_url}{}: {field} does not include {wanted}",
                discovery::SMART_PATH
            )));
        }
    }
    Ok(doc.token_endpoint)
}

/// Whether two URLs name the same host (scheme and port aside).
fn same_host(a: &str, b: &str) -> bool {
    let host = |u: &str| {
        url::Url::parse(u)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    };
    host(a).is_some() && host(a) == host(b)
}

impl SmartConnection {
    /// A fresh client assertion for `audience` (the token endpoint URL).
    pub fn assertion(&self, audience: &str, host: &Host<'_>) -> Result<String> {
        let now = host
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let mut header = Header::new(self.key.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        header.jku = self.jku.clone();
        let claims = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "exp": now + self.lifetime,
            "iat": now,
            "jti": fhirconn_sdk::oauth::random_hex(16)?,
        });
        jsonwebtoken::encode(&header, &claims, &self.key.key)
            .map_err(|e| Error::internal(format!("signing the client assertion failed: {e}")))
    }
}

impl Connection for SmartConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let endpoint = self.token_endpoint.get_or_try_init(|| {
            let t = discover(&self.base_url, keys::alg_name(self.key.alg), host)?;
            host.debug(&format!("discovered token endpoint {t}"));
            Ok(t)
        })?;
        let assertion = SecretString::from(self.assertion(&endpoint, host)?);
        let mut creds = TokenRequest::new(&endpoint)
            .grant("client_credentials")
            .scope(&self.scope)
            .client_auth(ClientAuth::PrivateKeyJwt(assertion))
            .send(host)?
            .credentials;
        if !self.pinned && !same_host(&endpoint, &self.base_url) {
            creds = creds.warning(format!(
                "the token endpoint {endpoint} (from the server's smart-configuration) is on \
                 another host than base-url; set 'token-url' to pin it if that is expected"
            ));
        }
        Ok(creds)
    }
}

fhirconn_sdk::export_schemes!(SmartBackend);

#[cfg(test)]
mod tests;
