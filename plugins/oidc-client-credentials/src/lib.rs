//! fhirconn scheme `oidc-client-credentials`: an access token from the OAuth 2.0 client
//! credentials grant (RFC 6749 §4.4) or the JWT bearer grant (RFC 7523 §2.1), with the token
//! endpoint found by OpenID Connect Discovery or given explicitly.
//!
//! Settings:
//! - `issuer` (discovery at `issuer` + `discovery-path`, default
//!   `/.well-known/openid-configuration`; the document's `issuer` must be identical, OIDC
//!   Discovery §4.3) **or** `token-url` (absolute, or relative to `base-url` by RFC 3986);
//! - `client-id`; `auth-method` (OpenID Connect Core §9): `client_secret_basic` (default; RFC
//!   6749 §2.3.1), `client_secret_post`, `client_secret_jwt` (an HS256 assertion over the
//!   secret) — each with one of `client-secret`, `client-secret-file`, `client-secret-env` —,
//!   `private_key_jwt` (an assertion signed with one of `private-key`, `private-key-file`,
//!   `private-key-env`: PEM or JWK, RS256/RS384/ES256/ES384; optional `kid`, `alg`), or `none`
//!   (only with `grant: jwt-bearer`);
//! - `grant`: `client_credentials` (default) or `jwt-bearer` (RFC 7523 §2.1: the assertion is
//!   the grant, signed with `private-key`, else HS256 with `client-secret`; `auth-method`
//!   defaults to `none`, the client id in the body);
//! - the assertion's claims: `iss` = `sub` = `client-id`, `aud` = the token endpoint, a fresh
//!   `jti`, `exp` `assertion-lifetime` seconds out (default 240, at most 300);
//!   `assertion-issuer`, `assertion-subject` (e.g. the user of a jwt-bearer grant) and
//!   `assertion-audience` override the first three;
//! - optional `scope` (space-separated), `audience`, `resource` (RFC 8707, one or a list) and
//!   `extra-params` (vendor-specific token parameters).
//!
//! The token request goes through the host's HTTP service (so the connection's roots, proxy,
//! timeouts and client certificate apply). Errors quote the server's OAuth `error` and
//! `error_description`, never the request.

#![forbid(unsafe_code)]

use fhirconn_sdk::oauth::assertion::{self, Assertion};
use fhirconn_sdk::oauth::client_auth::{self, AuthMethod, Authenticator, Grant};
use fhirconn_sdk::oauth::{self, discovery, endpoint_url};
use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Error, Host, Memo,
    Result, Scheme,
};
use std::collections::BTreeMap;

/// The default OpenID Connect discovery path.
pub const DEFAULT_DISCOVERY_PATH: &str = discovery::OIDC_PATH;

/// Token parameters that `extra-params` may not set: the scheme sets them itself.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "scope",
    "audience",
    "resource",
];

/// The `oidc-client-credentials` scheme.
#[derive(Debug, Default)]
pub struct ClientCredentials;

#[derive(serde::Deserialize)]
#[serde(crate = "fhirconn_sdk::serde", untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `resource`: one string or a non-empty list (`oneOf`, which the host words for people).
fn one_or_many(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"description": "RFC 8707 resource indicator(s)", "oneOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]})
}

/// OAuth 2.0 client credentials or JWT bearer grant
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
#[schemars(extend("allOf" = [{"oneOf": [
    {"required": ["issuer"], "not": {"required": ["token-url"]}},
    {"required": ["token-url"], "not": {"anyOf": [
        {"required": ["issuer"]}, {"required": ["discovery-path"]}]}}
]}]))]
struct Settings {
    /// OpenID provider issuer URL; the token endpoint is discovered
    #[schemars(url)]
    issuer: Option<String>,
    /// discovery document path below the issuer (default /.well-known/openid-configuration)
    #[schemars(regex(pattern = "^/"))]
    discovery_path: Option<String>,
    /// token endpoint (absolute, or relative to base-url), for servers without discovery
    #[schemars(length(min = 1))]
    token_url: Option<String>,
    /// client id
    #[schemars(length(min = 1))]
    client_id: String,
    /// client secret (client_secret_basic, _post, _jwt; HS256 key of a jwt-bearer grant)
    client_secret: Option<SecretSetting>,
    /// client authentication (default client_secret_basic; none with grant jwt-bearer)
    auth_method: Option<AuthMethod>,
    /// client_credentials (default) or jwt-bearer (RFC 7523 §2.1)
    #[serde(default)]
    grant: Grant,
    /// private key for private_key_jwt or a jwt-bearer grant: PEM or a private JWK/JWKS
    private_key: Option<SecretSetting>,
    /// key id of the registered public key (JWT header 'kid')
    #[schemars(length(min = 1))]
    kid: Option<String>,
    /// signing algorithm, checked against the key (default: RS256 for RSA keys)
    #[schemars(extend("enum" = ["RS256", "RS384", "ES256", "ES384"]))]
    alg: Option<String>,
    /// the assertion's 'iss' (default: client-id)
    #[schemars(length(min = 1))]
    assertion_issuer: Option<String>,
    /// the assertion's 'sub' (default: client-id; the user for a jwt-bearer grant)
    #[schemars(length(min = 1))]
    assertion_subject: Option<String>,
    /// the assertion's 'aud' (default: the token endpoint URL)
    #[schemars(length(min = 1))]
    assertion_audience: Option<String>,
    /// seconds until the assertion expires (default 240, at most 300)
    #[schemars(range(min = 1, max = assertion::MAX_LIFETIME_SECS))]
    assertion_lifetime: Option<u64>,
    /// space-separated scopes
    scope: Option<String>,
    /// audience parameter (Auth0 and others)
    audience: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "one_or_many")]
    resource: Option<OneOrMany>,
    /// additional token request parameters
    #[serde(default)]
    extra_params: BTreeMap<String, String>,
}

/// A configured `oidc-client-credentials` connection.
#[derive(Debug)]
pub struct ClientCredentialsConnection {
    /// `(issuer, discovery URL)`, or `None` with a configured `token-url`.
    discover: Option<(String, String)>,
    token_endpoint: Memo<String>,
    client_id: String,
    auth: Authenticator,
    /// The jwt-bearer grant's assertion (`None`: client credentials).
    grant: Option<Assertion>,
    scope: String,
    params: Vec<(String, String)>,
}

impl Scheme for ClientCredentials {
    fn name(&self) -> &str {
        "oidc-client-credentials"
    }

    fn summary(&self) -> &str {
        "OAuth 2.0 client credentials (secret, client_secret_jwt, private_key_jwt) or JWT bearer grant, with OpenID Connect discovery"
    }

    fn config_schema(&self) -> Value {
        let mut schema = settings::schema::<Settings>();
        if let Some(Value::Array(all)) = schema.get_mut("allOf") {
            all.extend(client_auth::schema_rules());
        }
        schema
    }

    fn configure(
        &self,
        connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let s: Settings = settings::parse(settings, host)?;
        let (discover, token_endpoint) = match (&s.issuer, &s.token_url) {
            (Some(issuer), None) => {
                endpoint_url("issuer", issuer, host)?;
                let path = s.discovery_path.as_deref().unwrap_or(discovery::OIDC_PATH);
                if !path.starts_with('/') {
                    return Err(Error::config("discovery-path: must start with '/'"));
                }
                let url = format!("{}{path}", issuer.trim_end_matches('/'));
                (Some((issuer.clone(), url)), Memo::new())
            }
            (None, Some(url)) => {
                if s.discovery_path.is_some() {
                    return Err(Error::config(
                        "discovery-path: only applies with 'issuer', not with 'token-url'",
                    ));
                }
                let url = oauth::token_url(url, &connection.base_url, host)?;
                (None, Memo::with(url))
            }
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "set either 'issuer' (discovery) or 'token-url', not both",
                ))
            }
            (None, None) => {
                return Err(Error::config(
                    "set 'issuer' (OpenID Connect discovery) or 'token-url'",
                ))
            }
        };
        let inputs = client_auth::Inputs {
            client_id: &s.client_id,
            method: s.auth_method,
            grant: s.grant,
            client_secret: s.client_secret.as_ref(),
            private_key: s.private_key.as_ref(),
            kid: s.kid.as_deref(),
            alg: s.alg.as_deref(),
            claims: [
                &s.assertion_issuer,
                &s.assertion_subject,
                &s.assertion_audience,
            ]
            .map(Option::as_deref),
            lifetime: s.assertion_lifetime,
        };
        let (auth, grant) = client_auth::configure(&inputs, host)?;
        let mut params: Vec<(String, String)> = s
            .audience
            .map(|a| ("audience".into(), a))
            .into_iter()
            .collect();
        let resources = match s.resource {
            Some(OneOrMany::One(r)) => vec![r],
            Some(OneOrMany::Many(rs)) => rs,
            None => vec![],
        };
        params.extend(resources.into_iter().map(|r| ("resource".to_string(), r)));
        for (k, v) in s.extra_params {
            if RESERVED_PARAMS.contains(&k.as_str()) {
                return Err(Error::config(format!(
                    "extra-params: '{k}' is set by the scheme itself; use the matching setting"
                )));
            }
            params.push((k, v));
        }
        let scope = s.scope.unwrap_or_default();
        Ok(Box::new(ClientCredentialsConnection {
            discover,
            token_endpoint,
            client_id: s.client_id,
            auth,
            grant,
            scope: scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            params,
        }))
    }
}

/// Reads the token endpoint from an OpenID Connect discovery document whose `issuer` must be
/// identical to the configured one.
pub fn discover_token_endpoint(
    issuer: &str,
    discovery_url: &str,
    host: &Host<'_>,
) -> Result<String> {
    let hint = |e: Error| {
        Error::new(
            e.kind(),
            format!("{e}; check 'issuer', or set 'token-url' for a server without discovery"),
        )
    };
    let doc = discovery::oidc(host, issuer, discovery_url).map_err(hint)?;
    let url = doc.token_endpoint.ok_or_else(|| {
        Error::protocol(format!(
            "OIDC discovery {discovery_url}: the document has no token_endpoint"
        ))
    })?;
    host.debug(&format!("discovered token endpoint {url}"));
    Ok(url)
}

impl Connection for ClientCredentialsConnection {
    /// A client's tokens depend only on its settings (the client id names it): shareable.
    fn share_key(&self) -> Option<String> {
        Some(self.client_id.clone())
    }

    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let endpoint = self
            .token_endpoint
            .get_or_try_init(|| match &self.discover {
                Some((issuer, url)) => discover_token_endpoint(issuer, url, host),
                None => Err(Error::internal("no token endpoint")),
            })?;
        let mut request = self
            .auth
            .request(&endpoint, &self.client_id, self.grant.as_ref(), host)?
            .scope(&self.scope);
        for (k, v) in &self.params {
            request = request.param(k, v);
        }
        Ok(request.send(host)?.credentials)
    }
}

fhirconn_sdk::export_schemes!(ClientCredentials);

#[cfg(test)]
mod tests;
