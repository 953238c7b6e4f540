//! Client authentication and grant settings for token schemes (feature `keys`), checked once:
//! `auth-method` (OpenID Connect Core §9: `client_secret_basic`, `client_secret_post`,
//! `client_secret_jwt`, `private_key_jwt`, `none`) and `grant` (`client_credentials` or RFC
//! 7523 §2.1 `jwt-bearer`), with the secret or key each needs. [`configure`] turns them into an
//! [`Authenticator`] and, for a jwt-bearer grant, the grant's [`Assertion`]; errors name the
//! setting. [`schema_rules`] states the same combinations in JSON Schema.

use super::assertion::{self, Assertion, Signer};
use super::{ClientAuth, TokenRequest};
use crate::host::Host;
use crate::keys::{self, Algorithm};
use crate::secret::{ExposeSecret, SecretString};
use crate::settings::SecretSetting;
use crate::{Error, Result};
use serde_json::{json, Value};

/// How the client authenticates at the token endpoint (OpenID Connect Core §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the form-urlencoded id and client-secret (default)
    ClientSecretBasic,
    /// client_id and client_secret in the body
    ClientSecretPost,
    /// an HS256 assertion made with client-secret (RFC 7523 §2.2)
    ClientSecretJwt,
    /// an assertion signed with private-key (RFC 7523 §2.2)
    PrivateKeyJwt,
    /// client_id only (with grant jwt-bearer, whose assertion proves the client)
    None,
}

/// The grant: client credentials, or a JWT bearer assertion (RFC 7523 §2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum Grant {
    /// RFC 6749 §4.4 (default)
    #[default]
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    /// RFC 7523 §2.1: the signed assertion is the grant
    #[serde(rename = "jwt-bearer")]
    JwtBearer,
}

/// A plain string `enum` (which the host words as "must be one of ..."), not schemars' `oneOf`
/// of documented variants.
fn string_enum(values: &[&str], description: &str) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": values, "description": description})
}

impl schemars::JsonSchema for AuthMethod {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AuthMethod".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let methods = [
            "client_secret_basic",
            "client_secret_post",
            "client_secret_jwt",
        ];
        let values = [&methods[..], &["private_key_jwt", "none"]].concat();
        string_enum(&values, "client authentication (OpenID Connect Core §9)")
    }
}

impl schemars::JsonSchema for Grant {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Grant".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        string_enum(
            &["client_credentials", "jwt-bearer"],
            "client_credentials (RFC 6749 §4.4) or jwt-bearer (RFC 7523 §2.1)",
        )
    }
}

/// The settings [`configure`] reads (a scheme copies them from its own settings struct).
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    /// `client-id`.
    pub client_id: &'a str,
    /// `auth-method`; default `client_secret_basic`, or `none` with a jwt-bearer grant.
    pub method: Option<AuthMethod>,
    /// `grant`.
    pub grant: Grant,
    /// `client-secret` (any source).
    pub client_secret: Option<&'a SecretSetting>,
    /// `private-key` (any source).
    pub private_key: Option<&'a SecretSetting>,
    /// `kid`.
    pub kid: Option<&'a str>,
    /// `alg`.
    pub alg: Option<&'a str>,
    /// `assertion-issuer`, `assertion-subject`, `assertion-audience` (defaults: client id,
    /// client id, token endpoint).
    pub claims: [Option<&'a str>; 3],
    /// `assertion-lifetime` in seconds.
    pub lifetime: Option<u64>,
}

/// How a connection authenticates the client, ready for each token request.
#[derive(Debug)]
pub enum Authenticator {
    /// `client_secret_basic`.
    Basic(SecretString),
    /// `client_secret_post`.
    Post(SecretString),
    /// `client_secret_jwt` or `private_key_jwt`: a fresh assertion per request.
    Jwt(Assertion),
    /// No client authentication (`client_id` in the body).
    None,
}

impl Authenticator {
    /// The client authentication for one request to `endpoint`.
    pub fn client_auth(&self, endpoint: &str, host: &Host<'_>) -> Result<ClientAuth> {
        Ok(match self {
            Authenticator::Basic(s) => ClientAuth::SecretBasic(s.clone()),
            Authenticator::Post(s) => ClientAuth::SecretPost(s.clone()),
            Authenticator::Jwt(a) => a.client_auth(endpoint, host)?,
            Authenticator::None => ClientAuth::None,
        })
    }

    /// A token request to `endpoint` for `client_id` with this authentication and `grant`
    /// (the jwt-bearer assertion) or else the client credentials grant.
    pub fn request(
        &self,
        endpoint: &str,
        client_id: &str,
        grant: Option<&Assertion>,
        host: &Host<'_>,
    ) -> Result<TokenRequest> {
        let request = TokenRequest::new(endpoint)
            .client_id(client_id)
            .client_auth(self.client_auth(endpoint, host)?);
        match grant {
            Some(a) => a.grant(request, host),
            None => Ok(request.grant("client_credentials")),
        }
    }
}

/// The algorithms of `private_key_jwt`, in order of preference (RS256 first: every OpenID
/// provider supports it).
pub const ALGS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS384,
];

fn needs(what: &str, name: &str) -> Error {
    Error::config(format!(
        "{what}: needs one of '{name}', '{name}-file', '{name}-env'"
    ))
}

/// Checks the combination (errors name the setting) and builds the client authentication and,
/// for `grant: jwt-bearer`, the grant's assertion (signed with the private key if set, else
/// HS256 with the client secret). Rules: `client_secret_*` need a client secret;
/// `private_key_jwt` a private key and no secret; `none` only with the jwt-bearer grant, which
/// takes `none`, `client_secret_basic` or `client_secret_post`; `kid`/`alg` only with a key.
pub fn configure(i: &Inputs<'_>, host: &Host<'_>) -> Result<(Authenticator, Option<Assertion>)> {
    let jwt_grant = i.grant == Grant::JwtBearer;
    let method = i.method.unwrap_or(if jwt_grant {
        AuthMethod::None
    } else {
        AuthMethod::ClientSecretBasic
    });
    match (jwt_grant, method) {
        (true, AuthMethod::ClientSecretJwt | AuthMethod::PrivateKeyJwt) => {
            return Err(Error::config(
                "auth-method: with grant jwt-bearer use none, client_secret_basic or \
                 client_secret_post (the signed grant already proves the client)",
            ))
        }
        (false, AuthMethod::None) => {
            return Err(Error::config(
                "auth-method none: only with grant jwt-bearer (the client credentials grant \
                 authenticates the client)",
            ))
        }
        (_, AuthMethod::PrivateKeyJwt) if i.client_secret.is_some() => {
            return Err(Error::config(
                "client-secret: not used with auth-method private_key_jwt; remove it",
            ))
        }
        _ => {}
    }
    let key = match i.private_key {
        Some(k) => Some(keys::from_settings(k, i.kid, i.alg, &ALGS)?),
        None if i.kid.is_some() || i.alg.is_some() => {
            return Err(Error::config("kid, alg: only apply with private-key"))
        }
        None => None,
    };
    let secret = i.client_secret.map(|s| s.secret().clone());
    let with_secret = |m: &str| {
        let s = secret
            .clone()
            .ok_or_else(|| needs(&format!("auth-method {m}"), "client-secret"));
        s
    };
    let lifetime = assertion::lifetime(i.lifetime, host)?;
    let [iss, sub, aud] = i.claims;
    let assertion = |signer| Assertion {
        issuer: iss.unwrap_or(i.client_id).to_string(),
        subject: sub.unwrap_or(i.client_id).to_string(),
        audience: aud.map(String::from),
        lifetime,
        signer,
    };
    let mut hs256 = method == AuthMethod::ClientSecretJwt;
    let mut key = key.map(|(k, kid)| Signer::key(k, kid, None));
    let auth = match method {
        AuthMethod::ClientSecretBasic => Authenticator::Basic(with_secret("client_secret_basic")?),
        AuthMethod::ClientSecretPost => Authenticator::Post(with_secret("client_secret_post")?),
        AuthMethod::ClientSecretJwt => {
            Authenticator::Jwt(assertion(Signer::Secret(with_secret("client_secret_jwt")?)))
        }
        AuthMethod::PrivateKeyJwt => {
            let signer = key
                .take()
                .ok_or_else(|| needs("auth-method private_key_jwt", "private-key"))?;
            Authenticator::Jwt(assertion(signer))
        }
        AuthMethod::None => Authenticator::None,
    };
    let grant =
        match (jwt_grant, key, &secret) {
            (false, _, _) => None,
            (true, Some(signer), _) => Some(assertion(signer)),
            (true, None, Some(s)) => {
                hs256 = true;
                Some(assertion(Signer::Secret(s.clone())))
            }
            (true, None, None) => return Err(Error::config(
                "grant jwt-bearer: needs a private-key (a signed assertion) or a client-secret \
                 (HS256)",
            )),
        };
    if hs256
        && secret
            .as_ref()
            .is_some_and(|s| s.expose_secret().len() < 32)
    {
        host.warn("client-secret is shorter than 32 bytes, too short an HS256 key (RFC 7518 §3.2)");
    }
    Ok((auth, grant))
}

/// What each `auth-method` and `grant` needs, in JSON Schema (for a settings struct's
/// `allOf`), written so that the host words every failure for a person: "exactly one of
/// 'client-secret', 'client-secret-file', 'client-secret-env' must be set; none is", "missing
/// required field 'grant'", "must be one of [...]". What a method forbids (a secret beside
/// `private_key_jwt`, `kid`/`alg` without a key) is left to [`configure`], whose errors name
/// the setting.
pub fn schema_rules() -> Vec<Value> {
    let one_of = |n: &str| {
        json!({"oneOf": [{"required": [n]}, {"required": [format!("{n}-file")]},
            {"required": [format!("{n}-env")]}]})
    };
    let (secret, key) = (one_of("client-secret"), one_of("private-key"));
    let method = |m: Value| json!({"properties": {"auth-method": m}, "required": ["auth-method"]});
    let jwt_bearer =
        json!({"properties": {"grant": {"const": "jwt-bearer"}}, "required": ["grant"]});
    let not_jwt_bearer = json!({"properties": {"grant": {"enum": ["client_credentials"]}}});
    let secret_methods =
        json!({"enum": ["client_secret_basic", "client_secret_post", "client_secret_jwt"]});
    let any = |n: &str| {
        json!({"anyOf": [{"required": [n]}, {"required": [format!("{n}-file")]},
            {"required": [format!("{n}-env")]}]})
    };
    vec![
        json!({"if": method(secret_methods), "then": secret}),
        json!({"if": {"not": {"anyOf": [{"required": ["auth-method"]}, jwt_bearer]}},
            "then": secret}),
        json!({"if": method(json!({"const": "private_key_jwt"})),
            "then": {"allOf": [key, not_jwt_bearer]}}),
        json!({"if": method(json!({"const": "client_secret_jwt"})), "then": not_jwt_bearer}),
        json!({"if": method(json!({"const": "none"})), "then": jwt_bearer}),
        json!({"if": {"allOf": [jwt_bearer, {"not": any("private-key")}]}, "then": secret}),
    ]
}

#[cfg(test)]
mod tests;
