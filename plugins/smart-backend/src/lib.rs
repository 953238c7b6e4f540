//! fhirconn scheme `smart-backend`: SMART App Launch 2.x Backend Services — an access token
//! from the client credentials grant, the client authenticated by a signed JWT assertion
//! (RFC 7523, `private_key_jwt`, RS384 or ES384).
//!
//! Settings: `client-id`; the private key as exactly one of `private-key` (inline PEM/JWK),
//! `private-key-file`, `private-key-env` — PEM (PKCS#8, PKCS#1 RSA, SEC1 EC) or a private JWK or
//! JWKS; `kid` (required unless the JWK has one); optional `alg` (checked against the key),
//! `jku` (https: the registered JWKS URL, which Epic requires in the header); `scope`
//! (required, e.g. `system/*.rs` or v1 `system/*.read`); optional `token-url` (absolute, or
//! relative to `base-url`; otherwise from `{base}/.well-known/smart-configuration`);
//! `assertion-lifetime` in seconds (default 240, a margin under the maximum of 300); `issuer`,
//! `subject`, `audience` override the assertion's `iss`, `sub` (default `client-id`) and `aud`
//! (default the token URL) for servers that want other values.

#![forbid(unsafe_code)]

use fhirconn_sdk::keys;
use fhirconn_sdk::oauth::assertion::{self, Assertion, Signer};
use fhirconn_sdk::oauth::{self, discovery, TokenRequest};
use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Error, Host, Memo,
    Result, Scheme, SecretString,
};

pub use fhirconn_sdk::oauth::discovery::resolve_url;
/// The client-assertion type of RFC 7523 §2.2.
pub use fhirconn_sdk::oauth::JWT_BEARER;
/// The longest assertion lifetime SMART allows (five minutes).
pub const MAX_ASSERTION_LIFETIME: u64 = assertion::MAX_LIFETIME_SECS;

/// The `smart-backend` scheme.
#[derive(Debug, Default)]
pub struct SmartBackend;

/// SMART Backend Services (private_key_jwt)
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
struct Settings {
    /// client id
    #[schemars(length(min = 1))]
    client_id: String,
    /// private key: PEM (PKCS#8, PKCS#1, SEC1) or a private JWK/JWKS
    private_key: SecretSetting,
    /// key id of the registered public key (JWT header 'kid')
    #[schemars(length(min = 1))]
    kid: Option<String>,
    /// checked against the key type
    #[schemars(extend("enum" = ["RS384", "ES384"]))]
    alg: Option<String>,
    /// URL of the client's JWKS (JWT header 'jku', https), if registered that way
    #[schemars(url, regex(pattern = "^https://"))]
    jku: Option<String>,
    /// e.g. 'system/*.rs' (SMART v2) or 'system/*.read' (v1)
    #[schemars(length(min = 1))]
    scope: String,
    /// token endpoint, absolute or relative to base-url; default: from
    /// {base}/.well-known/smart-configuration
    #[schemars(length(min = 1))]
    token_url: Option<String>,
    /// seconds until the client assertion expires (default 240, at most 300)
    #[schemars(range(min = 1, max = MAX_ASSERTION_LIFETIME))]
    assertion_lifetime: Option<u64>,
    /// the assertion's 'iss' (default: client-id)
    #[schemars(length(min = 1))]
    issuer: Option<String>,
    /// the assertion's 'sub' (default: client-id)
    #[schemars(length(min = 1))]
    subject: Option<String>,
    /// the assertion's 'aud' (default: the token endpoint URL)
    #[schemars(length(min = 1))]
    audience: Option<String>,
}

/// A configured `smart-backend` connection.
#[derive(Debug)]
pub struct SmartConnection {
    assertion: Assertion,
    scope: String,
    base_url: String,
    /// Pinned by `token-url` (no discovery, no other-host warning).
    pinned: bool,
    token_endpoint: Memo<String>,
}

impl Scheme for SmartBackend {
    fn name(&self) -> &str {
        "smart-backend"
    }

    fn summary(&self) -> &str {
        "SMART Backend Services: client credentials with a signed JWT assertion (RS384/ES384)"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<Settings>()
    }

    fn configure(
        &self,
        connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let s: Settings = settings::parse(settings, host)?;
        let allowed = [keys::Algorithm::RS384, keys::Algorithm::ES384];
        let (key, kid) =
            keys::from_settings(&s.private_key, s.kid.as_deref(), s.alg.as_deref(), &allowed)?;
        let kid = kid.ok_or_else(|| {
            Error::config("kid: required (the key id under which the public key is registered)")
        })?;
        let scopes: Vec<&str> = s.scope.split(' ').filter(|s| !s.is_empty()).collect();
        if scopes.is_empty() {
            return Err(Error::config("scope: must name at least one scope"));
        }
        if !scopes.iter().any(|s| s.starts_with("system/")) {
            host.warn("scope has no system/ scope; Backend Services grants system/ scopes");
        }
        let token_url = match &s.token_url {
            Some(t) => Some(oauth::token_url(t, &connection.base_url, host)?),
            None => None,
        };
        let signer = Signer::key(key, Some(kid), assertion::jku(s.jku)?);
        let assertion = Assertion {
            issuer: s.issuer.unwrap_or_else(|| s.client_id.clone()),
            subject: s.subject.unwrap_or_else(|| s.client_id.clone()),
            audience: s.audience,
            lifetime: assertion::lifetime(s.assertion_lifetime, host)?,
            signer,
        };
        Ok(Box::new(SmartConnection {
            assertion,
            scope: scopes.join(" "),
            base_url: connection.base_url.clone(),
            pinned: token_url.is_some(),
            token_endpoint: token_url.map_or_else(Memo::new, Memo::with),
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
    doc.require("client_credentials", "private_key_jwt", Some(alg))?;
    Ok(doc.token_endpoint)
}

impl SmartConnection {
    /// A fresh client assertion for a request to `token_endpoint`.
    pub fn assertion(&self, token_endpoint: &str, host: &Host<'_>) -> Result<SecretString> {
        self.assertion.sign(token_endpoint, host)
    }
}

impl Connection for SmartConnection {
    /// A backend client's tokens depend only on its settings (client id, key file, scope):
    /// shareable.
    fn share_key(&self) -> Option<String> {
        Some("settings".into())
    }

    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let endpoint = self.token_endpoint.get_or_try_init(|| {
            let t = discover(&self.base_url, self.assertion.signer.alg_name(), host)?;
            host.debug(&format!("discovered token endpoint {t}"));
            Ok(t)
        })?;
        let mut creds = TokenRequest::new(&endpoint)
            .grant("client_credentials")
            .scope(&self.scope)
            .client_auth(self.assertion.client_auth(&endpoint, host)?)
            .send(host)?
            .credentials;
        if !self.pinned && !discovery::same_host(&endpoint, &self.base_url) {
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
