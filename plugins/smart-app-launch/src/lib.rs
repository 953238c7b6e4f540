//! fhirconn scheme `smart-app-launch`: SMART App Launch 2.x standalone launch for people.
//!
//! Endpoints come from `{base}/.well-known/smart-configuration`, or else from the
//! CapabilityStatement's `oauth-uris` extension. `fhirconn login` sends the person to the
//! authorize endpoint (authorization code, PKCE S256, `state`, `aud` = the base URL) with the
//! registered `redirect-uri`, on which the host listens only while the login runs (RFC 8252
//! §7.3). Public clients, `client-secret` (Basic) and `private-key` (`private_key_jwt`)
//! clients. Refresh tokens are kept in the host's credential store, bound to token endpoint,
//! client id and audience; a rotated one replaces the old. The launch context of the token
//! response (`patient`, `encounter`, `fhirUser`, granted `scope`, ...) travels with the
//! credentials for `fhirconn test` and `fhirconn token --json`.
//!
//! `authorize-url` and `token-url` pin the endpoints (absolute, or relative to `base-url`);
//! a pinned one is never taken from the server, and with both pinned nothing is discovered.
//! The token endpoint receives the code, the PKCE verifier and the client's credentials, so
//! one discovered on another host than `base-url` is refused for a confidential client (a
//! configuration error naming `token-url` and the host) and warned about for a public one.

#![forbid(unsafe_code)]

use fhirconn_sdk::oauth::discovery::{self, excludes, get_json, resolve_url};
use fhirconn_sdk::oauth::{self, endpoint_url, ClientAuth, Pkce, TokenRequest, TokenResponse};
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::wire::{BrowserRedirect, LaunchContext, LogoutAnswer, LOGOUT};
use fhirconn_sdk::{keys, schemars, serde, serde_json, AuthRequest, Connection, ConnectionInfo};
use fhirconn_sdk::{Credentials, Error, ExposeSecret, Host, Memo, Result, Scheme, SecretString};
use std::collections::HashMap;

/// Where the sign-in is kept in the host's credential store (per connection).
const REFRESH_KEY: &str = "smart-app-launch/refresh-token";
/// The CapabilityStatement extension that names the OAuth endpoints.
pub const OAUTH_URIS: &str =
    "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// The `smart-app-launch` scheme.
#[derive(Debug, Default)]
pub struct SmartAppLaunch;

/// SMART App Launch (standalone, for people)
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
struct Settings {
    /// client id registered with the EHR's authorization server
    #[schemars(length(min = 1))]
    client_id: String,
    /// as given, e.g. 'launch/patient openid fhirUser offline_access patient/*.rs' (v2) or 'patient/*.read' (v1)
    #[schemars(length(min = 1))]
    scope: String,
    /// the registered redirect URI, exactly: http on a loopback address with a port, e.g. http://127.0.0.1:8765/callback
    #[schemars(regex(pattern = r"^http://"))]
    redirect_uri: String,
    /// confidential client: the client secret (sent as HTTP Basic)
    client_secret: Option<SecretSetting>,
    /// confidential client: private key (PEM or JWK) for private_key_jwt
    private_key: Option<SecretSetting>,
    /// key id of the registered public key (with private-key)
    #[schemars(length(min = 1))]
    kid: Option<String>,
    /// authorization endpoint (SMART authorization_endpoint), absolute or relative to
    /// base-url; default: from {base}/.well-known/smart-configuration
    #[schemars(length(min = 1))]
    authorize_url: Option<String>,
    /// token endpoint (SMART token_endpoint), absolute or relative to base-url; default: from
    /// {base}/.well-known/smart-configuration, which a confidential client may take only on
    /// base-url's host
    #[schemars(length(min = 1))]
    token_url: Option<String>,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug)]
enum Client {
    Public,
    Secret(SecretString),
    Key(Box<keys::SigningKey>, String),
}

/// The authorization server's endpoints.
#[derive(Debug, Clone)]
struct Endpoints {
    authorize: String,
    token: String,
    /// Said with every token of a public client whose discovered token endpoint is on
    /// another host than base-url.
    warning: Option<String>,
}

/// Endpoints pinned by the settings (`authorize-url`, `token-url`).
#[derive(Debug, Default)]
struct Pinned {
    authorize: Option<String>,
    token: Option<String>,
}

/// A configured `smart-app-launch` connection.
#[derive(Debug)]
pub struct LaunchConnection {
    client_id: String,
    scope: String,
    redirect_uri: String,
    /// The base URL without a trailing `/`: the `aud` of every authorization request.
    aud: String,
    client: Client,
    pinned: Pinned,
    endpoints: Memo<Endpoints>,
}

impl Scheme for SmartAppLaunch {
    fn name(&self) -> &str {
        "smart-app-launch"
    }

    fn summary(&self) -> &str {
        "SMART App Launch: a person signs in (auth code + PKCE, loopback redirect), refresh tokens, launch context"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<Settings>()
    }

    fn configure(
        &self,
        c: &ConnectionInfo,
        s: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let s: Settings = settings::parse(s, host)?;
        let client = match (s.client_secret, s.private_key) {
            (Some(_), Some(_)) => {
                return Err(Error::config("set client-secret or private-key, not both"))
            }
            (Some(secret), None) => Client::Secret(secret.into_secret()),
            (None, Some(k)) => {
                let key = keys::load(k.expose_secret().as_bytes(), s.kid.as_deref())
                    .map_err(|e| Error::config(format!("{}: {e}", k.key())))?;
                if !matches!(key.alg_name(), "RS384" | "ES384") {
                    let alg = key.alg_name();
                    return Err(Error::config(format!(
                        "{}: a {alg} key; SMART asymmetric client authentication uses RS384 or ES384",
                        k.key()
                    )));
                }
                let kid = s.kid.or_else(|| key.kid.clone()).ok_or_else(|| {
                    Error::config("kid: required with private-key (the registered key's id)")
                })?;
                Client::Key(Box::new(key), kid)
            }
            (None, None) if s.kid.is_some() => return Err(Error::config("kid needs private-key")),
            (None, None) => Client::Public,
        };
        let pinned = Pinned {
            authorize: s
                .authorize_url
                .map(|a| pinned_url("authorize-url", &a, &c.base_url, host))
                .transpose()?,
            token: s
                .token_url
                .map(|t| oauth::token_url(&t, &c.base_url, host))
                .transpose()?,
        };
        if let Some(a) = &pinned.authorize {
            authorize_endpoint_is_clean(a, Origin::Pinned)?;
        }
        Ok(Box::new(LaunchConnection {
            client_id: s.client_id,
            scope: s.scope,
            redirect_uri: s.redirect_uri,
            aud: c.base_url.trim_end_matches('/').to_string(),
            client,
            pinned,
            endpoints: Memo::new(),
        }))
    }
}

/// An `authorize-url` setting: absolute, or relative to `base_url` (RFC 3986 §5), then
/// checked like every endpoint (http(s); plain http to anything but loopback warned about).
fn pinned_url(field: &str, value: &str, base_url: &str, host: &Host<'_>) -> Result<String> {
    let invalid = |why: String| Error::config(format!("{field}: not a valid URL ({why})"));
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it contains whitespace".into()));
    }
    let resolved = match url::Url::parse(value) {
        Ok(u) => u,
        Err(url::ParseError::RelativeUrlWithoutBase) => url::Url::parse(base_url)
            .map_err(|e| Error::config(format!("base-url: not a valid URL ({e})")))?
            .join(value)
            .map_err(|e| invalid(e.to_string()))?,
        Err(e) => return Err(invalid(e.to_string())),
    };
    endpoint_url(field, resolved.as_str(), host).map(String::from)
}

/// The endpoints as discovered: SMART discovery, falling back to the CapabilityStatement's
/// `oauth-uris` extension. Nothing here is checked yet: see [`LaunchConnection::endpoints`].
fn discover(base: &str, host: &Host<'_>) -> Result<(String, String)> {
    let found = match discovery::smart(host, base) {
        Ok(doc) if excludes(&doc.grant_types_supported, "authorization_code") => {
            return Err(Error::protocol(format!(
                "SMART discovery {}: grant_types_supported does not include authorization_code",
                doc.url
            )))
        }
        Ok(doc) => doc.authorization_endpoint.map(|a| (a, doc.token_endpoint)),
        Err(e) => {
            host.debug(&format!(
                "{e}; reading the CapabilityStatement's oauth-uris"
            ));
            None
        }
    };
    match found {
        Some(pair) => Ok(pair),
        None => from_capability_statement(base, host),
    }
}

/// The host of a URL, for messages.
fn host_of(u: &str) -> String {
    url::Url::parse(u)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

/// The parameters of the authorization request this client adds itself; plus `launch` (an
/// EHR launch's), which a standalone launch never sends.
const AUTHORIZE_PARAMS: [&str; 9] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
];

/// A discovered authorization endpoint may keep a query of its own (RFC 6749 §3.1), but not
/// one that already sets a parameter of the request: an authorization server that honours
/// the first value would take the FHIR server's `aud` or `redirect_uri` instead of ours (a
/// hostile FHIR server could point the sign-in at another server's audience). A fragment is
/// forbidden outright (RFC 6749 §3.1). Checked before anyone is sent to sign in; a pinned
/// `authorize-url` is checked the same way when the connection is configured.
fn authorize_endpoint_is_clean(authorize: &str, origin: Origin) -> Result<()> {
    let (what, why, error): (_, _, fn(String) -> Error) = match origin {
        Origin::Discovered => (
            "the discovered authorization_endpoint",
            " (the FHIR server's discovery may be hostile)",
            Error::protocol,
        ),
        Origin::Pinned => ("authorize-url", "", Error::config),
    };
    let url =
        url::Url::parse(authorize).map_err(|e| error(format!("authorization_endpoint: {e}")))?;
    if url.fragment().is_some() {
        return Err(error(format!(
            "{what} carries a fragment (RFC 6749 §3.1); refusing to sign in there"
        )));
    }
    for (name, _) in url.query_pairs() {
        if let Some(p) = AUTHORIZE_PARAMS
            .iter()
            .find(|p| p.eq_ignore_ascii_case(&name))
        {
            return Err(error(format!(
                "{what} already sets '{p}' in its query; refusing to sign in there{why}"
            )));
        }
    }
    Ok(())
}

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// The FHIR server's discovery (or CapabilityStatement): server text.
    Discovered,
    /// The connection's settings.
    Pinned,
}

/// `rest[].security.extension[oauth-uris].extension[authorize|token].valueUri` of
/// `{base}/metadata`.
fn from_capability_statement(base: &str, host: &Host<'_>) -> Result<(String, String)> {
    let url = format!("{base}/metadata");
    let cs: Value = get_json(host, &url, "CapabilityStatement")?;
    let rests = cs["rest"].as_array().into_iter().flatten();
    let exts = rests.flat_map(|r| r["security"]["extension"].as_array().into_iter().flatten());
    let uris: Vec<&Value> = exts
        .filter(|e| e["url"] == OAUTH_URIS)
        .flat_map(|e| e["extension"].as_array().into_iter().flatten())
        .collect();
    let uri = |name: &str| {
        let v = uris
            .iter()
            .find(|e| e["url"] == name)
            .and_then(|e| e["valueUri"].as_str());
        v.map(|v| resolve_url(base, v)).transpose()?.ok_or_else(|| {
            Error::protocol(format!(
                "{base}: no SMART configuration, and {url} names no '{name}' in its oauth-uris extension"
            ))
        })
    };
    Ok((uri("authorize")?, uri("token")?))
}

/// `fhirUser` from an id_token's payload (shown to the person only; not verified).
fn id_token_fhir_user(body: &Value) -> Option<String> {
    use base64::Engine as _;
    let payload = body["id_token"].as_str()?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["fhirUser"].as_str().map(str::to_string)
}

impl LaunchConnection {
    /// The endpoints: pinned ones as set, the others discovered and checked (http(s), a clean
    /// authorization endpoint, a token endpoint on base-url's host for a confidential client)
    /// before anything is sent to them or anyone is sent to sign in.
    fn endpoints(&self, host: &Host<'_>) -> Result<Endpoints> {
        if let (Some(authorize), Some(token)) = (&self.pinned.authorize, &self.pinned.token) {
            return Ok(Endpoints {
                authorize: authorize.clone(),
                token: token.clone(),
                warning: None,
            });
        }
        let (authorize, token) = discover(&self.aud, host)?;
        let authorize = match &self.pinned.authorize {
            Some(pinned) => pinned.clone(),
            None => {
                endpoint_url("authorization_endpoint", &authorize, host)?;
                authorize_endpoint_is_clean(&authorize, Origin::Discovered)?;
                authorize
            }
        };
        if let Some(pinned) = &self.pinned.token {
            if *pinned != token {
                host.debug(&format!(
                    "the server names the token endpoint {token}; using token-url {pinned}"
                ));
            }
            return Ok(Endpoints {
                authorize,
                token: pinned.clone(),
                warning: None,
            });
        }
        endpoint_url("token_endpoint", &token, host)?;
        let mut warning = None;
        if !discovery::same_host(&token, &self.aud) {
            let other = host_of(&token);
            if !matches!(self.client, Client::Public) {
                return Err(Error::config(format!(
                    "the FHIR server's discovery names the token endpoint {token}, on another \
                     host ({other}) than base-url; this confidential client would send its \
                     credentials, the code and the PKCE verifier there: set 'token-url' to pin \
                     the token endpoint (e.g. 'token-url: {token}' if {other} is the EHR's \
                     authorization server)"
                )));
            }
            let w = format!(
                "the token endpoint {token} (from the server's discovery) is on another host \
                 ({other}) than base-url and receives the code and the PKCE verifier; set \
                 'token-url' to pin it if that is expected"
            );
            host.warn(&w);
            warning = Some(w);
        }
        Ok(Endpoints {
            authorize,
            token,
            warning,
        })
    }

    fn binding(&self, ep: &Endpoints) -> Value {
        json!({"token_endpoint": ep.token, "client_id": self.client_id, "aud": self.aud})
    }

    /// A token request with this client's authentication.
    fn request(&self, ep: &Endpoints, host: &Host<'_>) -> Result<TokenRequest> {
        let auth = match &self.client {
            Client::Public => ClientAuth::None,
            Client::Secret(s) => ClientAuth::SecretBasic(s.clone()),
            Client::Key(key, kid) => {
                let lifetime = std::time::Duration::from_secs(240);
                let claims = oauth::assertion_claims(&self.client_id, &ep.token, lifetime, host)?;
                ClientAuth::PrivateKeyJwt(key.client_assertion(kid, None, &claims)?.into())
            }
        };
        Ok(TokenRequest::new(&ep.token)
            .client_id(&self.client_id)
            .client_auth(auth))
    }

    /// The stored refresh token and launch context, if bound to this connection's values.
    fn stored(
        &self,
        ep: &Endpoints,
        host: &Host<'_>,
    ) -> Result<Option<(SecretString, Option<LaunchContext>)>> {
        let Some(raw) = host.store_get(REFRESH_KEY)? else {
            return Ok(None);
        };
        let Ok(mut v) = serde_json::from_str::<Value>(raw.expose_secret()) else {
            return Ok(None);
        };
        if v["binding"] != self.binding(ep) {
            host.debug("the stored sign-in is for another token endpoint, client id or aud");
            return Ok(None);
        }
        let context = serde_json::from_value(v["context"].take()).ok();
        Ok(v["refresh_token"]
            .as_str()
            .map(|t| (SecretString::from(t.to_string()), context)))
    }

    /// Credentials with the launch context; stores the (possibly rotated) refresh token.
    fn accept(
        &self,
        ep: &Endpoints,
        resp: TokenResponse,
        old: Option<(SecretString, Option<LaunchContext>)>,
        host: &Host<'_>,
    ) -> Result<Credentials> {
        let (old_rt, old_ctx) = old.unzip();
        let mut ctx = LaunchContext::from_token_response(&resp.body).unwrap_or_default();
        ctx.fhir_user = ctx.fhir_user.or_else(|| id_token_fhir_user(&resp.body));
        let ctx =
            Some(ctx.or(old_ctx.flatten().as_ref())).filter(|c| *c != LaunchContext::default());
        if let Some(rt) = resp.refresh_token().or(old_rt) {
            let stored = json!({"binding": self.binding(ep), "refresh_token": rt.expose_secret(), "context": ctx});
            host.store_put(REFRESH_KEY, &SecretString::from(stored.to_string()))?;
        }
        let creds = match &ep.warning {
            Some(w) => resp.credentials.warning(w.clone()),
            None => resp.credentials,
        };
        Ok(match ctx {
            Some(c) => creds.launch_context(c),
            None => creds,
        })
    }

    /// The person signs in: authorization code with PKCE S256, `state` and `aud`.
    fn sign_in(&self, ep: &Endpoints, host: &Host<'_>) -> Result<Credentials> {
        let pkce = Pkce::new()?;
        let state = oauth::random_hex(16)?;
        let mut url = url::Url::parse(&ep.authorize)
            .map_err(|e| Error::protocol(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", &self.scope)
            .append_pair("state", &state)
            .append_pair("aud", &self.aud)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        let answer = host.browser_redirect(&BrowserRedirect {
            url: url.into(),
            message: Some(format!("Sign in to {} in your browser:", self.aud)),
            timeout_seconds: Some(300),
            redirect_uri: Some(self.redirect_uri.clone()),
        })?;
        let q: HashMap<String, String> = url::form_urlencoded::parse(answer.query.as_bytes())
            .into_owned()
            .collect();
        if q.get("state") != Some(&state) {
            return Err(Error::protocol(
                "the sign-in redirect carried a wrong state; try again",
            ));
        }
        if let Some(e) = q.get("error") {
            let why = q.get("error_description").map_or("", String::as_str);
            return Err(Error::rejected(format!("sign-in failed: {e}: {why}")));
        }
        let code = q
            .get("code")
            .ok_or_else(|| Error::protocol("the sign-in redirect carried no code"))?;
        let resp = self
            .request(ep, host)?
            .grant("authorization_code")
            .secret_param("code", &SecretString::from(code.clone()))
            .param("redirect_uri", &answer.redirect_uri)
            .secret_param("code_verifier", &pkce.verifier)
            .send(host)?;
        self.accept(ep, resp, None, host)
    }
}

impl Connection for LaunchConnection {
    fn authorize(&self, request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let ep = self.endpoints.get_or_try_init(|| self.endpoints(host))?;
        if !request.force_login {
            if let Some(old) = self.stored(&ep, host)? {
                match oauth::refresh(self.request(&ep, host)?, &old.0, host)? {
                    Some(resp) => return self.accept(&ep, resp, Some(old), host),
                    None => host.store_delete(REFRESH_KEY)?,
                }
            }
        }
        if !request.interactive {
            return Err(Error::interaction_required(format!(
                "no stored sign-in to {}",
                self.aud
            )));
        }
        self.sign_in(&ep, host)
    }

    fn invoke(&self, op: &str, _payload: Value, host: &Host<'_>) -> Result<Value> {
        if op != LOGOUT {
            return Err(Error::unsupported(op));
        }
        host.store_delete(REFRESH_KEY)?;
        serde_json::to_value(LogoutAnswer { logged_out: true })
            .map_err(|e| Error::internal(e.to_string()))
    }
}

fhirconn_sdk::export_schemes!(SmartAppLaunch);

#[cfg(test)]
mod tests;
