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

use fhirconn_sdk::serde_json::{self, json, Value};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret, Host, HttpRequest,
    Result, Scheme, SecretSource, SecretString,
};
use jsonwebtoken::{Algorithm, Header};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

/// The client-assertion type of RFC 7523 §2.2.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
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
pub struct SmartConnection {
    client_id: String,
    key: keys::SigningKey,
    kid: String,
    jku: Option<String>,
    scope: String,
    base_url: String,
    token_url: Option<String>,
    discovered: Mutex<Option<String>>,
    lifetime: u64,
}

impl std::fmt::Debug for SmartConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartConnection")
            .field("client_id", &self.client_id)
            .field("key", &self.key)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES384 => "ES384",
        _ => "RS384",
    }
}

/// Resolves `reference` (absolute or relative) against a FHIR base URL.
pub fn resolve_url(base: &str, reference: &str) -> Result<String> {
    let base = url::Url::parse(&format!("{}/", base.trim_end_matches('/')))
        .map_err(|e| Error::config(format!("base URL '{base}': {e}")))?;
    base.join(reference)
        .map(String::from)
        .map_err(|e| Error::protocol(format!("'{reference}' is not a valid URL ({e})")))
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
            if alg != alg_name(key.alg) {
                return Err(Error::config(format!(
                    "alg: {alg} does not match the key, which is for {}",
                    alg_name(key.alg)
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
            url::Url::parse(t).map_err(|e| Error::config(format!("token-url: {e}")))?;
        }
        Ok(Box::new(SmartConnection {
            client_id: s.client_id,
            key,
            kid,
            jku: s.jku,
            scope: scopes.join(" "),
            base_url: connection.base_url.clone(),
            token_url: s.token_url,
            discovered: Mutex::new(None),
            lifetime,
        }))
    }
}

fn list_contains(doc: &Value, field: &str, wanted: &str) -> Option<bool> {
    doc.get(field)?
        .as_array()
        .map(|a| a.iter().any(|v| v.as_str() == Some(wanted)))
}

/// Reads the token endpoint from `{base}/.well-known/smart-configuration` and checks that the
/// server advertises what this client needs (when it advertises anything).
pub fn discover(base_url: &str, alg: &str, host: &Host<'_>) -> Result<String> {
    let url = format!(
        "{}/.well-known/smart-configuration",
        base_url.trim_end_matches('/')
    );
    let resp = host
        .http(HttpRequest::new("GET", &url).header("Accept", "application/json"))
        .map_err(|e| e.context(format!("SMART discovery {url}")))?;
    if !resp.is_success() {
        return Err(Error::protocol(format!(
            "SMART discovery {url}: HTTP {}; set 'token-url' if the server publishes no \
             smart-configuration",
            resp.status
        )));
    }
    let doc: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| Error::protocol(format!("SMART discovery {url}: not JSON ({e})")))?;
    let endpoint = doc["token_endpoint"]
        .as_str()
        .ok_or_else(|| Error::protocol(format!("SMART discovery {url}: no token_endpoint")))?;
    let checks = [
        ("grant_types_supported", "client_credentials"),
        ("token_endpoint_auth_methods_supported", "private_key_jwt"),
        ("token_endpoint_auth_signing_alg_values_supported", alg),
    ];
    for (field, wanted) in checks {
        if list_contains(&doc, field, wanted) == Some(false) {
            return Err(Error::protocol(format!(
                "SMART discovery {url}: {field} does not include {wanted}"
            )));
        }
    }
    resolve_url(base_url, endpoint)
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

fn random_jti() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no randomness for the assertion's jti: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl SmartConnection {
    fn token_endpoint(&self, host: &Host<'_>) -> Result<String> {
        if let Some(t) = &self.token_url {
            return Ok(t.clone());
        }
        let mut cached = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cached.as_ref() {
            return Ok(t.clone());
        }
        let t = discover(&self.base_url, alg_name(self.key.alg), host)?;
        host.debug(&format!("discovered token endpoint {t}"));
        *cached = Some(t.clone());
        Ok(t)
    }

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
            "jti": random_jti()?,
        });
        jsonwebtoken::encode(&header, &claims, &self.key.key)
            .map_err(|e| Error::internal(format!("signing the client assertion failed: {e}")))
    }
}

impl Connection for SmartConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let endpoint = self.token_endpoint(host)?;
        let assertion = self.assertion(&endpoint, host)?;
        let body = fhirconn_sdk::form_urlencode(&[
            ("grant_type", "client_credentials"),
            ("scope", &self.scope),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &assertion),
        ]);
        let req = HttpRequest {
            method: "POST".into(),
            url: endpoint.clone(),
            headers: vec![
                (
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                    false,
                ),
                ("Accept".into(), "application/json".into(), false),
            ],
            body: body.into_bytes(),
            identity: None,
        };
        let resp = host
            .http(req)
            .map_err(|e| e.context(format!("token endpoint {endpoint}")))?;
        if !resp.is_success() {
            return Err(fhirconn_sdk::oauth::refused(&resp, &endpoint));
        }
        let (mut creds, v) = fhirconn_sdk::oauth::token_response(&resp, &endpoint, host)?;
        let requested: Vec<&str> = self.scope.split(' ').collect();
        if let Some(w) = fhirconn_sdk::oauth::scope_downgrade(&requested, v["scope"].as_str()) {
            creds = creds.warning(w);
        }
        if self.token_url.is_none() && !same_host(&endpoint, &self.base_url) {
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
