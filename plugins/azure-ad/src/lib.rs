//! fhirconn scheme `azure-ad`: Microsoft Entra ID (Azure AD) organizational sign-in for Azure
//! API for FHIR / Azure Health Data Services, as Power BI's FHIR connector does it: the
//! `{audience}/user_impersonation` scope for people (device code, RFC 8628, or auth code with
//! PKCE through a loopback redirect, RFC 8252), refresh tokens kept in the host's credential
//! store, and `{audience}/.default` with a client secret for daemons.
//!
//! Settings: `client-id`; `tenant` (optional: discovered from the FHIR server's 401 challenge
//! `authorization_uri`); `authority-host` (default `https://login.microsoftonline.com`; a
//! discovered authority on another host is refused); `audience` (default: the origin of the
//! base URL); `flow`: `device-code` (default), `auth-code` or `client-credentials` (with
//! `client-secret`, `-file` or `-env`).
//!
//! **The audience comes from configuration, never from the server.** A FHIR server's challenge
//! may name a `resource_id`; it is only compared with the configured (or default) audience, and
//! a mismatch is an error naming both, before any token request. Otherwise a hostile server
//! could name `https://management.azure.com` and receive an Azure Resource Manager token.
//! A stored refresh token is bound to the authority, tenant, client id and audience it was
//! issued for, and used only when all four match.
//!
//! No `resource` parameter is ever sent: the v2.0 endpoints reject it.

#![forbid(unsafe_code)]

pub mod challenge;

use fhirconn_sdk::serde_json::{self, json, Value};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, ExposeSecret, Host, HttpRequest,
    HttpResponse, Result, Scheme, SecretSource, SecretString,
};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entra's public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The device-code grant type (RFC 8628 §3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Where the refresh token is kept in the host's credential store (per connection).
const REFRESH_KEY: &str = "azure-ad/refresh-token";

/// The `azure-ad` scheme.
#[derive(Debug, Default)]
pub struct AzureAd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum Flow {
    #[default]
    DeviceCode,
    AuthCode,
    ClientCredentials,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Settings {
    client_id: String,
    tenant: Option<String>,
    authority_host: Option<String>,
    audience: Option<String>,
    #[serde(default)]
    flow: Flow,
    #[allow(dead_code)]
    client_secret: Option<IgnoredAny>,
    #[allow(dead_code)]
    client_secret_file: Option<IgnoredAny>,
    #[allow(dead_code)]
    client_secret_env: Option<IgnoredAny>,
}

/// Endpoints of the resolved authority.
#[derive(Debug, Clone)]
struct Authority {
    tenant: String,
    audience: String,
    token_endpoint: String,
    device_endpoint: Option<String>,
    authorize_endpoint: String,
}

/// A configured `azure-ad` connection.
pub struct AzureConnection {
    client_id: String,
    tenant: Option<String>,
    authority_host: url::Url,
    audience: Option<String>,
    base_url: String,
    flow: Flow,
    secret: Option<SecretString>,
    resolved: Mutex<Option<Authority>>,
}

impl std::fmt::Debug for AzureConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConnection")
            .field("client_id", &self.client_id)
            .field("tenant", &self.tenant)
            .field("flow", &self.flow)
            .finish_non_exhaustive()
    }
}

/// The audience as Azure FHIR services expect it: the URL without a trailing slash.
pub fn normalize_audience(a: &str) -> String {
    a.trim_end_matches('/').to_string()
}

/// The default audience: the origin of the base URL (what Azure API for FHIR and Azure Health
/// Data Services expect, e.g. `https://ws-svc.fhir.azurehealthcareapis.com`).
pub fn default_audience(base_url: &str) -> String {
    match url::Url::parse(base_url) {
        Ok(u) if u.host_str().is_some() => u.origin().ascii_serialization(),
        _ => normalize_audience(base_url),
    }
}

/// Whether two audiences name the same resource: URLs compare by scheme, host and port (case-
/// and default-port-insensitive) and path without trailing slashes; other strings (an app id
/// URI such as `api://...` or a GUID) compare case-insensitively without trailing slashes.
pub fn same_audience(a: &str, b: &str) -> bool {
    fn norm(x: &str) -> String {
        match url::Url::parse(x.trim()) {
            Ok(u) if u.host_str().is_some() => format!(
                "{}{}",
                u.origin().ascii_serialization(),
                u.path().trim_end_matches('/')
            ),
            _ => x.trim().trim_end_matches('/').to_ascii_lowercase(),
        }
    }
    norm(a) == norm(b)
}

impl Scheme for AzureAd {
    fn name(&self) -> &str {
        "azure-ad"
    }

    fn summary(&self) -> &str {
        "Microsoft Entra ID (Azure AD): user_impersonation by device code or auth code + PKCE, or a service principal"
    }

    fn config_schema(&self) -> Value {
        let mut props = SecretSource::schema_properties(
            "client-secret",
            "client secret (flow: client-credentials)",
        );
        let extra = json!({
            "client-id": {"type": "string", "minLength": 1, "description": "application (client) id"},
            "tenant": {"type": "string", "minLength": 1,
                "description": "tenant id or domain; default: from the FHIR server's 401 challenge"},
            "authority-host": {"type": "string", "format": "uri", "default": DEFAULT_AUTHORITY_HOST},
            "audience": {"type": "string", "minLength": 1,
                "description": "the FHIR service's audience; default: the origin of base-url (a challenge's resource_id must match it)"},
            "flow": {"enum": ["device-code", "auth-code", "client-credentials"], "default": "device-code"},
        });
        if let Value::Object(extra) = extra {
            props.extend(extra);
        }
        json!({
            "type": "object",
            "description": "Microsoft Entra ID (Azure AD)",
            "properties": props,
            "required": ["client-id"],
            "additionalProperties": false,
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
        let s: Settings = fhirconn_sdk::parse_settings(settings.clone())?;
        let secret = SecretSource::resolve(map, "client-secret", false, host)?;
        match (s.flow, &secret) {
            (Flow::ClientCredentials, None) => {
                return Err(Error::config(
                    "flow client-credentials needs client-secret, client-secret-file or client-secret-env",
                ))
            }
            (Flow::DeviceCode | Flow::AuthCode, Some(_)) => {
                return Err(Error::config(
                    "client-secret only applies to flow: client-credentials (people sign in with a public client)",
                ))
            }
            _ => {}
        }
        if s.client_id.is_empty() {
            return Err(Error::config("client-id: must not be empty"));
        }
        let authority_host = s
            .authority_host
            .as_deref()
            .unwrap_or(DEFAULT_AUTHORITY_HOST);
        let authority_host = url::Url::parse(authority_host)
            .map_err(|e| Error::config(format!("authority-host: {e}")))?;
        if !matches!(authority_host.scheme(), "https" | "http")
            || authority_host.host_str().is_none()
        {
            return Err(Error::config("authority-host: must be an http(s) URL"));
        }
        if let Some(t) = &s.tenant {
            if t.contains('/') || t.contains('?') || t.contains('#') {
                return Err(Error::config("tenant: a tenant id or domain, without '/'"));
            }
        }
        Ok(Box::new(AzureConnection {
            client_id: s.client_id,
            tenant: s.tenant,
            authority_host,
            audience: s.audience.map(|a| normalize_audience(&a)),
            base_url: connection.base_url.clone(),
            flow: s.flow,
            secret,
            resolved: Mutex::new(None),
        }))
    }
}

fn json_of(resp: &HttpResponse) -> Option<Value> {
    serde_json::from_slice(&resp.body).ok()
}

fn oauth_error(resp: &HttpResponse) -> Option<(String, String)> {
    fhirconn_sdk::oauth::error_response(resp).map(|e| (e.error, e.description.unwrap_or_default()))
}

fn form(url: &str, pairs: &[(&str, &str)]) -> HttpRequest {
    HttpRequest::new("POST", url)
        .header("Accept", "application/json")
        .form(pairs)
}

impl AzureConnection {
    fn origin(&self) -> String {
        self.authority_host.origin().ascii_serialization()
    }

    /// Tenant and audience: configured, or read from the FHIR server's 401 challenge.
    fn tenant_and_audience(&self, host: &Host<'_>) -> Result<(String, String)> {
        let fallback_audience = || default_audience(&self.base_url);
        if let Some(t) = &self.tenant {
            return Ok((
                t.clone(),
                self.audience.clone().unwrap_or_else(fallback_audience),
            ));
        }
        let probe = format!("{}/Patient?_count=1", self.base_url.trim_end_matches('/'));
        let resp = host
            .http(HttpRequest::new("GET", &probe).header("Accept", "application/fhir+json"))
            .map_err(|e| e.context("authority discovery"))?;
        let Some(header) = resp.header("www-authenticate") else {
            return Err(Error::config(format!(
                "tenant: not set, and {probe} answered HTTP {} without a WWW-Authenticate \
                 challenge to discover it from; set 'tenant'",
                resp.status
            )));
        };
        let ch = challenge::parse(header);
        let uri = ch
            .get("authorization_uri")
            .or_else(|| ch.get("authorization"))
            .ok_or_else(|| {
                Error::protocol(format!(
                    "the server's challenge names no authorization_uri ({header}); set 'tenant'"
                ))
            })?;
        let uri = url::Url::parse(uri)
            .map_err(|e| Error::protocol(format!("authorization_uri '{uri}': {e}")))?;
        if uri.origin().ascii_serialization() != self.origin() {
            return Err(Error::protocol(format!(
                "the server's challenge points to the authority {}, not to authority-host {}; \
                 refusing to send credentials there (set authority-host if that is intended)",
                uri.origin().ascii_serialization(),
                self.origin()
            )));
        }
        let tenant = uri
            .path_segments()
            .and_then(|mut s| s.find(|seg| !seg.is_empty()))
            .map(String::from)
            .ok_or_else(|| Error::protocol(format!("authorization_uri '{uri}' names no tenant")))?;
        let audience = self.audience.clone().unwrap_or_else(fallback_audience);
        if let Some(resource) = ch.get("resource_id") {
            if !same_audience(resource, &audience) {
                return Err(Error::config(format!(
                    "the FHIR server's challenge names the audience '{resource}', but this \
                     connection's audience is '{audience}' ({}); refusing to request a token for \
                     another resource. Set 'audience' if the server's value is right",
                    if self.audience.is_some() {
                        "the audience setting"
                    } else {
                        "the origin of base-url"
                    }
                )));
            }
        }
        host.debug(&format!(
            "discovered tenant {tenant} and audience {audience}"
        ));
        Ok((tenant, audience))
    }

    fn authority(&self, host: &Host<'_>) -> Result<Authority> {
        let mut cached = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let (tenant, audience) = self.tenant_and_audience(host)?;
        let base = self.origin();
        let doc_url = format!("{base}/{tenant}/v2.0/.well-known/openid-configuration");
        let resp = host
            .http(HttpRequest::new("GET", &doc_url).header("Accept", "application/json"))
            .map_err(|e| e.context("Entra discovery"))?;
        if !resp.is_success() {
            return Err(Error::protocol(format!(
                "Entra discovery {doc_url}: HTTP {}{}",
                resp.status,
                oauth_error(&resp)
                    .map(|(e, d)| format!(": {e}: {d}"))
                    .unwrap_or_default()
            )));
        }
        // openidconnect's typed document checks the required OIDC fields; Entra's issuer for
        // `common`/`organizations` is a `{tenantid}` template, so the issuer is checked against
        // the authority host rather than for equality (design notes: Azure discovery).
        let meta: openidconnect::core::CoreProviderMetadata = serde_json::from_slice(&resp.body)
            .map_err(|e| {
                Error::protocol(format!(
                    "Entra discovery {doc_url}: not an OpenID configuration ({e})"
                ))
            })?;
        let issuer = url::Url::parse(meta.issuer().as_str())
            .map_err(|e| Error::protocol(format!("Entra discovery: issuer: {e}")))?;
        let same_origin = |u: &str| {
            url::Url::parse(u)
                .map(|u| u.origin().ascii_serialization() == base)
                .unwrap_or(false)
        };
        if issuer.origin().ascii_serialization() != base {
            return Err(Error::protocol(format!(
                "Entra discovery {doc_url}: issuer {issuer} is not on authority-host {base}"
            )));
        }
        let raw = json_of(&resp).unwrap_or_default();
        let token_endpoint = meta
            .token_endpoint()
            .map(|t| t.as_str().to_string())
            .ok_or_else(|| {
                Error::protocol(format!("Entra discovery {doc_url}: no token_endpoint"))
            })?;
        let authorize_endpoint = meta.authorization_endpoint().as_str().to_string();
        let device_endpoint = raw["device_authorization_endpoint"]
            .as_str()
            .map(String::from);
        for e in [
            Some(&token_endpoint),
            Some(&authorize_endpoint),
            device_endpoint.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !same_origin(e) {
                return Err(Error::protocol(format!(
                    "Entra discovery {doc_url}: endpoint {e} is not on authority-host {base}"
                )));
            }
        }
        let a = Authority {
            tenant,
            audience,
            token_endpoint,
            device_endpoint,
            authorize_endpoint,
        };
        *cached = Some(a.clone());
        Ok(a)
    }

    fn delegated_scope(a: &Authority) -> String {
        format!("{}/user_impersonation offline_access", a.audience)
    }

    /// What a stored refresh token is bound to: it is used only with the same values.
    fn binding(&self, a: &Authority) -> Value {
        json!({
            "authority": self.origin(),
            "tenant": a.tenant,
            "client_id": self.client_id,
            "audience": a.audience,
        })
    }

    /// Reads a token response; stores a new refresh token with its binding.
    fn accept_tokens(
        &self,
        a: &Authority,
        resp: &HttpResponse,
        endpoint: &str,
        host: &Host<'_>,
    ) -> Result<Credentials> {
        let (creds, v) = fhirconn_sdk::oauth::token_response(resp, endpoint, host)?;
        if let Some(rt) = v["refresh_token"].as_str() {
            let mut stored = self.binding(a);
            stored["refresh_token"] = Value::String(rt.to_string());
            host.store_put(REFRESH_KEY, &SecretString::from(stored.to_string()))?;
        }
        Ok(creds)
    }

    /// The stored refresh token, if there is one bound to this authority, tenant, client id
    /// and audience. A token stored for anything else is never sent: the person signs in again.
    fn stored_refresh_token(&self, a: &Authority, host: &Host<'_>) -> Result<Option<SecretString>> {
        let Some(raw) = host.store_get(REFRESH_KEY)? else {
            return Ok(None);
        };
        let Ok(Value::Object(mut stored)) = serde_json::from_str::<Value>(raw.expose_secret())
        else {
            host.debug("the stored sign-in has no binding (an older format); sign in again");
            return Ok(None);
        };
        let token = stored.remove("refresh_token");
        if Value::Object(stored) != self.binding(a) {
            host.debug(
                "the stored sign-in was issued for another authority, tenant, client id or \
                 audience; it is not used (sign in again)",
            );
            return Ok(None);
        }
        Ok(token.and_then(|t| t.as_str().map(|t| SecretString::from(t.to_string()))))
    }

    fn refused(resp: &HttpResponse, endpoint: &str) -> Error {
        fhirconn_sdk::oauth::refused(resp, endpoint)
    }

    /// Silent sign-in with a stored refresh token; `Ok(None)` when there is none or it failed.
    fn refresh(&self, a: &Authority, host: &Host<'_>) -> Result<Option<Credentials>> {
        let Some(rt) = self.stored_refresh_token(a, host)? else {
            return Ok(None);
        };
        let scope = Self::delegated_scope(a);
        let resp = host.http(form(
            &a.token_endpoint,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &self.client_id),
                ("refresh_token", rt.expose_secret()),
                ("scope", &scope),
            ],
        ))?;
        if resp.is_success() {
            return self
                .accept_tokens(a, &resp, &a.token_endpoint, host)
                .map(Some);
        }
        match oauth_error(&resp) {
            Some((code, desc)) if code == "invalid_grant" || code == "interaction_required" => {
                host.debug(&format!(
                    "the stored refresh token was refused ({code}: {desc})"
                ));
                host.store_delete(REFRESH_KEY)?;
                Ok(None)
            }
            _ => Err(Self::refused(&resp, &a.token_endpoint)),
        }
    }

    fn device_code(&self, a: &Authority, host: &Host<'_>) -> Result<Credentials> {
        let endpoint = a.device_endpoint.as_deref().ok_or_else(|| {
            Error::protocol(
                "the authority advertises no device_authorization_endpoint; use flow: auth-code",
            )
        })?;
        let scope = Self::delegated_scope(a);
        let resp = host.http(form(
            endpoint,
            &[("client_id", &self.client_id), ("scope", &scope)],
        ))?;
        if !resp.is_success() {
            return Err(Self::refused(&resp, endpoint));
        }
        let v = json_of(&resp)
            .ok_or_else(|| Error::protocol("the device code response is not JSON"))?;
        let device_code = v["device_code"]
            .as_str()
            .ok_or_else(|| Error::protocol("no device_code"))?;
        let user_code = v["user_code"].as_str().unwrap_or("");
        let uri = v["verification_uri"]
            .as_str()
            .or_else(|| v["verification_url"].as_str())
            .unwrap_or("");
        // Server-chosen waits are bounded: a hostile authority can neither make the client poll
        // in a tight loop nor park it for ever (RFC 8628 §3.2 default interval 5 s).
        let mut interval = fhirconn_sdk::oauth::bounded_seconds(v["interval"].as_u64(), 5, 1, 60);
        let expires_in =
            fhirconn_sdk::oauth::bounded_seconds(v["expires_in"].as_u64(), 900, 1, 1800);
        let message = v["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("To sign in, open {uri} and enter the code {user_code}"));
        host.tell_person(&message, Some(uri));
        let deadline = Instant::now() + expires_in;
        loop {
            host.sleep(interval);
            if Instant::now() > deadline {
                return Err(Error::interaction_required(
                    "the sign-in code expired; run login again",
                ));
            }
            let resp = host.http(form(
                &a.token_endpoint,
                &[
                    ("grant_type", DEVICE_CODE_GRANT),
                    ("client_id", &self.client_id),
                    ("device_code", device_code),
                ],
            ))?;
            if resp.is_success() {
                return self.accept_tokens(a, &resp, &a.token_endpoint, host);
            }
            match oauth_error(&resp).map(|(c, _)| c).as_deref() {
                Some("authorization_pending") => continue,
                // RFC 8628 §3.5: add 5 seconds for this and every later request.
                Some("slow_down") => {
                    interval = (interval + Duration::from_secs(5)).min(Duration::from_secs(60))
                }
                Some("expired_token") => {
                    return Err(Error::interaction_required(
                        "the sign-in code expired before it was used; run login again",
                    ))
                }
                Some("access_denied") => return Err(Error::rejected("the sign-in was declined")),
                _ => return Err(Self::refused(&resp, &a.token_endpoint)),
            }
        }
    }

    fn auth_code(&self, a: &Authority, host: &Host<'_>) -> Result<Credentials> {
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        let state = oauth2::CsrfToken::new_random();
        let scope = Self::delegated_scope(a);
        let mut url = url::Url::parse(&a.authorize_endpoint)
            .map_err(|e| Error::protocol(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("response_type", "code")
            .append_pair("scope", &scope)
            .append_pair("state", state.secret())
            .append_pair("code_challenge", challenge.as_str())
            .append_pair("code_challenge_method", "S256");
        let answer = host.invoke(
            "browser-redirect",
            &json!({"url": url.as_str(), "message": "Sign in to Microsoft Entra in your browser:",
                    "timeout_seconds": 300}),
        )?;
        let redirect_uri = answer["redirect_uri"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let query = answer["query"].as_str().unwrap_or_default();
        let params: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        if params.get("state") != Some(state.secret()) {
            return Err(Error::protocol(
                "the sign-in redirect carried a wrong state (possible CSRF); try again",
            ));
        }
        if let Some(e) = params.get("error") {
            return Err(Error::rejected(format!(
                "sign-in failed: {e}: {}",
                params
                    .get("error_description")
                    .map(String::as_str)
                    .unwrap_or("")
            )));
        }
        let code = params
            .get("code")
            .ok_or_else(|| Error::protocol("the sign-in redirect carried no code"))?;
        let resp = host.http(form(
            &a.token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &self.client_id),
                ("code", code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", verifier.secret()),
                ("scope", &scope),
            ],
        ))?;
        if !resp.is_success() {
            return Err(Self::refused(&resp, &a.token_endpoint));
        }
        self.accept_tokens(a, &resp, &a.token_endpoint, host)
    }

    fn client_credentials(&self, a: &Authority, host: &Host<'_>) -> Result<Credentials> {
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| Error::internal("no client secret"))?;
        let scope = format!("{}/.default", a.audience);
        let resp = host.http(form(
            &a.token_endpoint,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &self.client_id),
                ("client_secret", secret.expose_secret()),
                ("scope", &scope),
            ],
        ))?;
        if !resp.is_success() {
            return Err(Self::refused(&resp, &a.token_endpoint));
        }
        self.accept_tokens(a, &resp, &a.token_endpoint, host)
    }
}

impl Connection for AzureConnection {
    fn authorize(&self, request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let a = self.authority(host)?;
        if self.flow == Flow::ClientCredentials {
            return self.client_credentials(&a, host);
        }
        if !request.force_login {
            if let Some(creds) = self.refresh(&a, host)? {
                return Ok(creds);
            }
        }
        if !request.interactive {
            return Err(Error::interaction_required(format!(
                "no stored sign-in for {}",
                a.audience
            )));
        }
        match self.flow {
            Flow::AuthCode => self.auth_code(&a, host),
            _ => self.device_code(&a, host),
        }
    }

    fn invoke(&self, op: &str, _payload: Value, host: &Host<'_>) -> Result<Value> {
        match op {
            "logout" => {
                host.store_delete(REFRESH_KEY)?;
                Ok(json!({"logged_out": true}))
            }
            other => Err(Error::unsupported(other)),
        }
    }
}

fhirconn_sdk::export_schemes!(AzureAd);
