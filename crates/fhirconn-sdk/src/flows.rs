//! Token flows that several schemes share, over [`crate::oauth`] and the host's services:
//! - [`metadata_token`]: a token from a cloud instance-metadata endpoint (Azure IMDS and App
//!   Service, the GCE metadata server), with its `expires_in` / `expires_on` dialects;
//! - [`federated_assertion`]: a federated token file (Kubernetes workload identity), read
//!   again for every token because it is rotated;
//! - [`device_code`]: a device-code sign-in (RFC 8628), the person told where to go;
//! - [`authorization_code`]: the authorization code grant with PKCE through the host's
//!   `browser-redirect` operation (RFC 6749 §4.1, RFC 7636 S256, RFC 8252 loopback), `state`
//!   checked;
//! - [`StoredSignIn`]: a refresh token kept in the host's credential store, bound to the values
//!   it was issued for and used only when they match; [`logout`] forgets it;
//! - [`Challenge`]: what a resource server's 401 challenge names (Microsoft's
//!   `authorization_uri` and `resource_id`), only ever on the configured authority;
//!   [`oidc_on_origin`]: the OpenID configuration of a multi-tenant authority whose issuer is a
//!   template (Entra's `{tenantid}`), every endpoint on the configured authority;
//!   [`same_resource`] and [`origin_of`] compare and default resource identifiers (audiences).
//!
//! Errors never quote a request, a token or a secret; what a server sends back is quoted
//! sanitised (control characters replaced, bounded).

use crate::host::{Host, HttpRequest};
use crate::oauth::discovery::{get_json, OidcConfiguration};
use crate::oauth::{self, Pkce, TokenRequest, TokenResponse};
use crate::scheme::Credentials;
use crate::secret::{ExposeSecret, SecretString};
use crate::wire::{BrowserRedirect, LogoutAnswer};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

/// At most this many characters of a server's error text are quoted.
const QUOTED_MAX: usize = 200;

/// Server text fit for a message: control characters replaced, at most [`QUOTED_MAX`]
/// characters.
fn quoted(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(QUOTED_MAX)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().count() > QUOTED_MAX {
        out.push('…');
    }
    out
}

/// A token from a cloud instance-metadata endpoint: `request` (a `GET` with the endpoint's
/// marker header, e.g. `Metadata: true` or `Metadata-Flavor: Google`) goes through
/// [`Host::instance_metadata_http`]; `what` names the endpoint in messages (with the URL
/// without its query). When `answer_header` is set, an answer without that exact header is
/// not from a metadata server and is refused before anything of it is read. A non-2xx answer
/// quotes its OAuth `error` and `error_description` (sanitised) or its status. The token
/// answer is validated as RFC 6749 §5.1 ([`oauth::token_response`]) after its lifetime is
/// read as the clouds send it: `expires_in` as a number or a numeric string (IMDS), or only
/// `expires_on`, Unix seconds as a string or number (App Service).
pub fn metadata_token(
    host: &Host<'_>,
    request: HttpRequest,
    what: &str,
    answer_header: Option<(&str, &str)>,
) -> Result<Credentials> {
    let endpoint = request
        .url
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let at = format!("{what} {endpoint}");
    let mut resp = host
        .instance_metadata_http(request)
        .map_err(|e| e.context(&at))?;
    if let Some((name, value)) = answer_header.filter(|(n, v)| resp.header(n) != Some(v)) {
        return Err(Error::protocol(format!(
            "{at} answered without '{name}: {value}': not a metadata server"
        )));
    }
    if !resp.is_success() {
        return Err(match oauth::error_response(&resp) {
            Some(e) => Error::new(
                oauth::error_kind(&e.error),
                format!(
                    "{at} answered HTTP {}: {}{}",
                    resp.status,
                    quoted(&e.error),
                    e.description
                        .map(|d| format!(": {}", quoted(&d)))
                        .unwrap_or_default()
                ),
            ),
            None => Error::protocol(format!("{at} answered HTTP {}", resp.status)),
        });
    }
    if let Ok(mut body) = serde_json::from_slice::<Value>(&resp.body) {
        let now = host.now().duration_since(UNIX_EPOCH).unwrap_or_default();
        body["expires_in"] = expires_in(&body, now.as_secs_f64());
        resp.body = body.to_string().into_bytes();
    }
    Ok(oauth::token_response(&resp, &endpoint, host)?.0)
}

/// A metadata answer's lifetime as RFC 6749's numeric `expires_in`; anything unreadable stays
/// as it was, for [`oauth::token_response`] to refuse. Only finite numbers are read: `"inf"`,
/// `"NaN"` or `"1e999"` would become JSON `null`, i.e. a token that never expires.
fn expires_in(body: &Value, now: f64) -> Value {
    let number = |v: &Value| {
        match v {
            Value::String(s) => s.trim().parse::<f64>().ok(),
            v => v.as_f64(),
        }
        .filter(|n| n.is_finite())
    };
    match (number(&body["expires_in"]), number(&body["expires_on"])) {
        (Some(secs), _) => secs.into(),
        (None, Some(on)) => (on - now).into(),
        // An unreadable `expires_on` without `expires_in` is refused as one, not dropped.
        (None, None) if body["expires_in"].is_null() && !body["expires_on"].is_null() => {
            body["expires_on"].clone()
        }
        (None, None) => body["expires_in"].clone(),
    }
}

/// The current content of a federated token file (the client assertion of workload identity
/// federation, RFC 7523 §2.2): read through the host at every call, because the platform
/// rotates it. Empty content or content with inner whitespace is a configuration error that
/// names `setting` and the file, never the content.
pub fn federated_assertion(host: &Host<'_>, setting: &str, file: &str) -> Result<SecretString> {
    let content = SecretString::from(host.read_to_string(file)?);
    let token = content.expose_secret().trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Error::config(format!(
            "{setting} {file}: not a token (empty or with spaces)"
        )));
    }
    Ok(SecretString::from(token.to_string()))
}

/// A person signs in with a device code (RFC 8628): a code for `client_id` and `scope` from
/// `endpoint` (the `device_authorization_endpoint`), the person told where to enter it, then
/// [`oauth::device_code::poll`] of `request`'s token endpoint until they have.
pub fn device_code(
    host: &Host<'_>,
    endpoint: &str,
    client_id: &str,
    scope: &str,
    request: &TokenRequest,
) -> Result<TokenResponse> {
    let started = oauth::device_code::start(endpoint, client_id, scope, host)?;
    host.tell_person(&started.instructions(), Some(&started.verification_uri));
    oauth::device_code::poll(request, &started, host)
}

/// An authorization request for [`authorization_code`].
#[derive(Debug, Clone)]
pub struct AuthorizationRequest<'a> {
    /// The `authorization_endpoint` (checked by the caller: from discovery or configuration).
    pub endpoint: &'a str,
    /// The `client_id`.
    pub client_id: &'a str,
    /// The requested `scope`.
    pub scope: &'a str,
    /// More parameters, e.g. SMART's `aud`.
    pub params: Vec<(&'a str, &'a str)>,
    /// What to tell the person.
    pub message: String,
    /// The exact registered `redirect_uri`, if the client has one (else the host chooses).
    pub redirect_uri: Option<String>,
}

/// What the browser brought back: the code, with what the token request must repeat.
pub struct AuthorizationCode {
    code: SecretString,
    redirect_uri: String,
    verifier: SecretString,
}

impl std::fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationCode")
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl AuthorizationCode {
    /// `request` (the client's token request) as the `authorization_code` grant with the code,
    /// the `redirect_uri` and the PKCE `code_verifier`.
    pub fn token_request(&self, request: TokenRequest) -> TokenRequest {
        request
            .grant("authorization_code")
            .secret_param("code", &self.code)
            .param("redirect_uri", &self.redirect_uri)
            .secret_param("code_verifier", &self.verifier)
    }
}

/// Sends the person to `request.endpoint` with `response_type=code`, the client id, scope, a
/// fresh `state` and an S256 PKCE challenge, and waits for the redirect to the host's loopback
/// listener. A redirect with another `state` is refused (it may be forged: RFC 6749 §10.12);
/// an `error` redirect is a refused sign-in quoting the (sanitised) `error` and
/// `error_description`.
pub fn authorization_code(
    host: &Host<'_>,
    request: &AuthorizationRequest<'_>,
) -> Result<AuthorizationCode> {
    let pkce = Pkce::new()?;
    let state = oauth::random_hex(16)?;
    let mut url = url::Url::parse(request.endpoint)
        .map_err(|e| Error::protocol(format!("authorization_endpoint: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", request.client_id)
        .append_pair("scope", request.scope)
        .append_pair("state", &state)
        .extend_pairs(&request.params)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    let answer = host.browser_redirect(&BrowserRedirect {
        url: url.into(),
        message: Some(request.message.clone()),
        timeout_seconds: Some(300),
        redirect_uri: request.redirect_uri.clone(),
    })?;
    let code = redirect_code(&answer.query, &state)?;
    Ok(AuthorizationCode {
        code,
        redirect_uri: answer.redirect_uri,
        verifier: pkce.verifier,
    })
}

/// The code of a redirect's query, when its `state` is `state` and it carries no `error`.
fn redirect_code(query: &str, state: &str) -> Result<SecretString> {
    let (mut code, mut got_state, mut error, mut description) = (None, None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "code" => &mut code,
            "state" => &mut got_state,
            "error" => &mut error,
            "error_description" => &mut description,
            _ => continue,
        };
        slot.get_or_insert(v.into_owned());
    }
    if got_state.as_deref() != Some(state) {
        return Err(Error::protocol(
            "the sign-in redirect carried a wrong state (possible CSRF); try again",
        ));
    }
    if let Some(e) = error {
        let why = quoted(description.as_deref().unwrap_or_default());
        return Err(Error::rejected(format!(
            "sign-in failed: {}: {why}",
            quoted(&e)
        )));
    }
    code.map(SecretString::from)
        .ok_or_else(|| Error::protocol("the sign-in redirect carried no code"))
}

/// A person's sign-in kept in the host's credential store under `key`: the refresh token,
/// stored beside `binding` (a JSON object of the values it was issued for, e.g. authority,
/// tenant, client id, audience) and used only when the connection's binding is equal. A token
/// stored for anything else is never sent: the person signs in again.
#[derive(Debug, Clone)]
pub struct StoredSignIn<'a> {
    key: &'a str,
    binding: serde_json::Map<String, Value>,
}

impl<'a> StoredSignIn<'a> {
    /// The sign-in stored under `key` for `binding` (a JSON object; anything else binds to
    /// nothing and matches no stored sign-in).
    pub fn new(key: &'a str, binding: Value) -> Self {
        let binding = match binding {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        Self { key, binding }
    }

    /// The stored refresh token, when it is bound to exactly this binding.
    pub fn load(&self, host: &Host<'_>) -> Result<Option<SecretString>> {
        let Some(raw) = host.store_get(self.key)? else {
            return Ok(None);
        };
        let Ok(Value::Object(mut stored)) = serde_json::from_str::<Value>(raw.expose_secret())
        else {
            host.debug("the stored sign-in has no binding (an older format); sign in again");
            return Ok(None);
        };
        let token = stored.remove("refresh_token");
        if self.binding.is_empty() || stored != self.binding {
            host.debug(
                "the stored sign-in was issued for another authority, client or audience; it \
                 is not used (sign in again)",
            );
            return Ok(None);
        }
        Ok(token.and_then(|t| t.as_str().map(|t| SecretString::from(t.to_string()))))
    }

    /// Keeps the response's refresh token (if it has one) with the binding; returns the
    /// response's credentials.
    pub fn accept(&self, resp: TokenResponse, host: &Host<'_>) -> Result<Credentials> {
        if let Some(rt) = resp.refresh_token() {
            let mut stored = self.binding.clone();
            let rt = Value::String(rt.expose_secret().to_string());
            stored.insert("refresh_token".into(), rt);
            let text = SecretString::from(Value::Object(stored).to_string());
            host.store_put(self.key, &text)?;
        }
        Ok(resp.credentials)
    }

    /// Silent sign-in: `request` (the client's token request, with its scope) with the stored
    /// refresh token. `Ok(None)` when none is stored for this binding, or when the server
    /// refused it (then it is deleted).
    pub fn refresh(&self, request: TokenRequest, host: &Host<'_>) -> Result<Option<Credentials>> {
        let Some(rt) = self.load(host)? else {
            return Ok(None);
        };
        match oauth::refresh(request, &rt, host)? {
            Some(resp) => self.accept(resp, host).map(Some),
            None => host.store_delete(self.key).map(|()| None),
        }
    }
}

/// The `logout` operation of a connection whose sign-in is stored under `key`: deletes it and
/// answers [`LogoutAnswer`].
pub fn logout(host: &Host<'_>, key: &str) -> Result<Value> {
    host.store_delete(key)?;
    serde_json::to_value(LogoutAnswer { logged_out: true })
        .map_err(|e| Error::internal(e.to_string()))
}

/// A resource server's `WWW-Authenticate: Bearer` challenge, read to discover what a scheme
/// was not configured with. Its parameters are server input: [`Challenge::url_on`] takes a URL
/// from it only on the authority the connection is configured for.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The header as sent.
    pub header: String,
    /// Its parameters ([`crate::www_authenticate::parse`]: keys lowercased).
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// GETs `url` without credentials for its challenge. No challenge is a configuration error
    /// naming `setting`, the value the challenge stands in for.
    pub fn read(host: &Host<'_>, url: &str, setting: &str) -> Result<Self> {
        let resp = host
            .http(HttpRequest::new("GET", url).header("Accept", "application/fhir+json"))
            .map_err(|e| e.context(format!("discovering {setting}")))?;
        let Some(header) = resp.header("www-authenticate") else {
            return Err(Error::config(format!(
                "{setting}: not set, and {url} answered HTTP {} without a WWW-Authenticate \
                 challenge to discover it from; set '{setting}'",
                resp.status
            )));
        };
        let params = crate::www_authenticate::parse(header);
        Ok(Self {
            header: quoted(header),
            params,
        })
    }

    /// The first of the parameters `names` the challenge has, as a URL that must be on `origin`
    /// (the configured authority): a challenge never sends credentials elsewhere.
    pub fn url_on(&self, names: &[&str], origin: &str, setting: &str) -> Result<url::Url> {
        let (name, value) = names
            .iter()
            .find_map(|n| Some((*n, self.params.get(*n)?)))
            .ok_or_else(|| {
                Error::protocol(format!(
                    "the server's challenge names no {} ({}); set '{setting}'",
                    names.first().unwrap_or(&"URL"),
                    self.header
                ))
            })?;
        let u = url::Url::parse(value)
            .map_err(|e| Error::protocol(format!("{name} '{}': {e}", quoted(value))))?;
        let theirs = u.origin().ascii_serialization();
        if theirs != origin {
            return Err(Error::protocol(format!(
                "the server's challenge points to the authority {theirs}, not to {origin}; \
                 refusing to send credentials there (configure the authority if that is \
                 intended)"
            )));
        }
        Ok(u)
    }
}

/// The OpenID configuration at `doc_url` of an authority at `origin` whose issuer is a
/// template (Entra's `common`/`organizations` issuer names `{tenantid}`), so OpenID Connect
/// Discovery's exact issuer check cannot apply: the issuer and every endpoint must then be on
/// `origin`, the configured authority, or a lying document could send credentials elsewhere.
/// Returns the `token_endpoint` (required) and the document.
pub fn oidc_on_origin(
    host: &Host<'_>,
    doc_url: &str,
    origin: &str,
    what: &str,
) -> Result<(String, OidcConfiguration)> {
    let doc: OidcConfiguration = get_json(host, doc_url, what)?;
    let token = doc
        .token_endpoint
        .clone()
        .ok_or_else(|| Error::protocol(format!("{what} {doc_url}: no token_endpoint")))?;
    let urls = [
        Some(&doc.issuer),
        Some(&token),
        doc.authorization_endpoint.as_ref(),
        doc.device_authorization_endpoint.as_ref(),
    ];
    let on_origin =
        |u: &str| url::Url::parse(u).is_ok_and(|u| u.origin().ascii_serialization() == origin);
    if let Some(u) = urls.into_iter().flatten().find(|u| !on_origin(u)) {
        return Err(Error::protocol(format!(
            "{what} {doc_url}: {} is not on the authority {origin}",
            quoted(u)
        )));
    }
    Ok((token, doc))
}

/// The origin of `url` (`https://host[:port]`), the default resource identifier of a FHIR
/// server (what Azure's FHIR services expect); `url` without trailing slashes when it names
/// no host.
pub fn origin_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => u.origin().ascii_serialization(),
        _ => url.trim_end_matches('/').to_string(),
    }
}

/// Whether two resource identifiers (audiences, RFC 8707 resources) name the same resource:
/// URLs compare by scheme, host and port (case- and default-port-insensitive) and path without
/// trailing slashes; other strings (an app id URI such as `api://...`, a GUID) compare
/// case-insensitively without trailing slashes.
pub fn same_resource(a: &str, b: &str) -> bool {
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

#[cfg(test)]
mod tests;
