//! Signed JWTs at the token endpoint (feature `keys`), written once for every scheme: client
//! assertions (RFC 7523 §2.2; OpenID Connect Core §9 `private_key_jwt` and `client_secret_jwt`)
//! and the jwt-bearer authorization grant (RFC 7523 §2.1, where the assertion is the grant).
//!
//! ```no_run
//! # fn f(key: fhirconn_sdk::keys::SigningKey, host: &fhirconn_sdk::Host<'_>) -> fhirconn_sdk::Result<()> {
//! use fhirconn_sdk::oauth::assertion::{Assertion, Signer};
//! use fhirconn_sdk::oauth::TokenRequest;
//! let a = Assertion::for_client("my-client", Signer::key(key, Some("k1".into()), None));
//! let endpoint = "https://idp.example/token";
//! let auth = a.client_auth(endpoint, host)?; // client_assertion + client_assertion_type
//! let token = TokenRequest::new(endpoint).grant("client_credentials").client_auth(auth).send(host)?;
//! # Ok(()) }
//! ```

use super::{ClientAuth, TokenRequest};
use crate::host::Host;
use crate::keys::{self, SigningKey};
use crate::secret::{ExposeSecret, SecretString};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

/// The grant type of RFC 7523 §2.1: the assertion is the authorization grant.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The longest assertion lifetime accepted in settings: five minutes (SMART Backend Services;
/// Epic and others refuse longer).
pub const MAX_LIFETIME_SECS: u64 = 300;

/// The default assertion lifetime: four minutes, a margin under five for servers whose clock
/// runs ahead (Epic refuses an `exp` five minutes out when its clock is a second ahead).
pub const DEFAULT_LIFETIME_SECS: u64 = 240;

/// What signs the JWT.
pub enum Signer {
    /// A private key (`private_key_jwt`, or a signed grant): header `kid` and `jku` if given.
    Key {
        /// The key and its algorithm.
        key: Box<SigningKey>,
        /// The header `kid`.
        kid: Option<String>,
        /// The header `jku` (the client's registered JWKS URL).
        jku: Option<String>,
    },
    /// HS256 with a shared secret (`client_secret_jwt`, or an HMAC-signed grant).
    Secret(SecretString),
}

impl Signer {
    /// A private-key signer.
    pub fn key(key: SigningKey, kid: Option<String>, jku: Option<String>) -> Self {
        Signer::Key {
            key: Box::new(key),
            kid,
            jku,
        }
    }

    /// The JOSE `alg` it signs with.
    pub fn alg_name(&self) -> &'static str {
        match self {
            Signer::Key { key, .. } => key.alg_name(),
            Signer::Secret(_) => "HS256",
        }
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Key { key, kid, jku } => f
                .debug_struct("Key")
                .field("alg", &key.alg_name())
                .field("kid", kid)
                .field("jku", jku)
                .finish(),
            Signer::Secret(_) => f.write_str("Secret([REDACTED])"),
        }
    }
}

/// A JWT to present at the token endpoint: who issues it, whom it is about, for whom, how long
/// it lives, and what signs it.
#[derive(Debug)]
pub struct Assertion {
    /// The `iss` claim.
    pub issuer: String,
    /// The `sub` claim.
    pub subject: String,
    /// The `aud` claim; `None` means the token endpoint URL (RFC 7523 §3).
    pub audience: Option<String>,
    /// `exp` − `iat`.
    pub lifetime: Duration,
    /// The signing key or secret.
    pub signer: Signer,
}

impl Assertion {
    /// A client assertion as OpenID Connect Core §9 wants it: `iss` = `sub` = the client id,
    /// `aud` = the token endpoint, the default lifetime ([`DEFAULT_LIFETIME_SECS`]).
    pub fn for_client(client_id: &str, signer: Signer) -> Self {
        Self {
            issuer: client_id.to_string(),
            subject: client_id.to_string(),
            audience: None,
            lifetime: Duration::from_secs(DEFAULT_LIFETIME_SECS),
            signer,
        }
    }

    /// The claims for a request to `token_endpoint`: `iss`, `sub`, `aud`, `iat` now and `exp`
    /// `lifetime` later on the host's clock, and a fresh random `jti`.
    pub fn claims(&self, token_endpoint: &str, host: &Host<'_>) -> Result<Value> {
        let now = host
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(json!({
            "iss": self.issuer, "sub": self.subject,
            "aud": self.audience.as_deref().unwrap_or(token_endpoint),
            "iat": now, "exp": now + self.lifetime.as_secs(), "jti": super::random_hex(16)?,
        }))
    }

    /// A fresh signed JWT for a request to `token_endpoint`.
    pub fn sign(&self, token_endpoint: &str, host: &Host<'_>) -> Result<SecretString> {
        let claims = self.claims(token_endpoint, host)?;
        let jwt = match &self.signer {
            Signer::Key { key, kid, jku } => key.jwt(kid.as_deref(), jku.as_deref(), &claims)?,
            Signer::Secret(secret) => keys::hs256(secret.expose_secret().as_bytes(), &claims)?,
        };
        Ok(SecretString::from(jwt))
    }

    /// Client authentication with a fresh assertion: `private_key_jwt` for a key,
    /// `client_secret_jwt` for a secret.
    pub fn client_auth(&self, token_endpoint: &str, host: &Host<'_>) -> Result<ClientAuth> {
        let jwt = self.sign(token_endpoint, host)?;
        Ok(match self.signer {
            Signer::Key { .. } => ClientAuth::PrivateKeyJwt(jwt),
            Signer::Secret(_) => ClientAuth::ClientSecretJwt(jwt),
        })
    }

    /// The jwt-bearer grant (RFC 7523 §2.1) on `request`: `grant_type` and a fresh `assertion`
    /// for its endpoint. Client authentication, if any, is set on the request separately.
    pub fn grant(&self, request: TokenRequest, host: &Host<'_>) -> Result<TokenRequest> {
        let jwt = self.sign(request.endpoint(), host)?;
        Ok(request
            .grant(JWT_BEARER_GRANT)
            .secret_param("assertion", &jwt))
    }
}

/// The `assertion-lifetime` setting (seconds): 1 to [`MAX_LIFETIME_SECS`], default
/// [`DEFAULT_LIFETIME_SECS`]. A value of exactly 300 is warned about (servers whose clock runs
/// ahead refuse it).
pub fn lifetime(setting: Option<u64>, host: &Host<'_>) -> Result<Duration> {
    let secs = setting.unwrap_or(DEFAULT_LIFETIME_SECS);
    if secs == 0 || secs > MAX_LIFETIME_SECS {
        return Err(Error::config(format!(
            "assertion-lifetime: {secs} s; must be 1 to {MAX_LIFETIME_SECS} seconds"
        )));
    }
    if secs == MAX_LIFETIME_SECS {
        host.warn(
            "assertion-lifetime is 300 s: servers whose clock runs ahead (Epic) refuse an exp \
             five minutes out; the default, 240 s, leaves a margin",
        );
    }
    Ok(Duration::from_secs(secs))
}

/// A `jku` setting: the client's registered JWKS URL, https only (the server fetches it).
pub fn jku(value: Option<String>) -> Result<Option<String>> {
    let Some(v) = value else { return Ok(None) };
    match url::Url::parse(&v) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Ok(Some(v)),
        Ok(_) => Err(Error::config(
            "jku: must be an https URL (the server fetches the client's keys from it)",
        )),
        Err(e) => Err(Error::config(format!("jku: not a valid URL ({e})"))),
    }
}

#[cfg(test)]
mod tests;
