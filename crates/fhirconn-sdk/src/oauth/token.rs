//! Token requests (RFC 6749 §3.2) with every client authentication method the token schemes
//! use, and the validated answer.

use super::{error_response, refused, scope_downgrade, token_response};
use crate::host::{form_urlencode_component, Host, HttpRequest, HttpResponse};
use crate::scheme::Credentials;
use crate::secret::{ExposeSecret, SecretString};
use crate::Result;
use base64::Engine as _;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

/// The client-assertion type of RFC 7523 §2.2 (`private_key_jwt`, `client_secret_jwt`).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The claims of a client assertion (RFC 7523 §3, OpenID Connect Core §9): `iss` and `sub` the
/// client id, `aud` the token endpoint, `iat` now and `exp` `lifetime` later on the host's
/// clock, and a fresh random `jti`. The scheme signs them (`private_key_jwt`) or MACs them
/// with the secret (`client_secret_jwt`).
pub fn assertion_claims(
    client_id: &str,
    audience: &str,
    lifetime: Duration,
    host: &Host<'_>,
) -> Result<Value> {
    let now = host
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(json!({
        "iss": client_id, "sub": client_id, "aud": audience,
        "iat": now, "exp": now + lifetime.as_secs(), "jti": super::random_hex(16)?,
    }))
}

/// How the client authenticates at the token endpoint (OpenID Connect Core §9 names).
#[derive(Clone, Default)]
pub enum ClientAuth {
    /// A public client: `client_id` in the body, no secret (device code, auth code + PKCE).
    #[default]
    None,
    /// `client_secret_basic`: `Authorization: Basic` of the form-urlencoded id and secret
    /// (RFC 6749 §2.3.1); nothing of either in the body.
    SecretBasic(SecretString),
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    SecretPost(SecretString),
    /// `private_key_jwt`: a signed JWT assertion (RFC 7523 §2.2); `client_id` only if set.
    PrivateKeyJwt(SecretString),
    /// `client_secret_jwt`: an HMAC JWT assertion made with the secret (RFC 7523 §2.2).
    ClientSecretJwt(SecretString),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "None",
            ClientAuth::SecretBasic(_) => "SecretBasic([REDACTED])",
            ClientAuth::SecretPost(_) => "SecretPost([REDACTED])",
            ClientAuth::PrivateKeyJwt(_) => "PrivateKeyJwt([REDACTED])",
            ClientAuth::ClientSecretJwt(_) => "ClientSecretJwt([REDACTED])",
        })
    }
}

/// A token request: `TokenRequest::new(endpoint).grant("client_credentials").client_id(id)
/// .client_auth(ClientAuth::SecretBasic(secret)).scope("a b").send(host)`.
///
/// `Debug` shows the endpoint, the parameter names and the authentication method only.
#[derive(Clone)]
pub struct TokenRequest {
    endpoint: String,
    client_id: Option<String>,
    auth: ClientAuth,
    params: Vec<(String, SecretString)>,
    scope: Option<String>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.params.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TokenRequest")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("params", &names)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A validated token response (RFC 6749 §5.1): the bearer credentials (with their expiry and
/// any scope-downgrade warning) and the whole JSON body. `Debug` shows neither token.
pub struct TokenResponse {
    /// `Authorization: Bearer ...`, expiry from `expires_in`, warnings.
    pub credentials: Credentials,
    /// The response as sent (holds the tokens: never log it).
    pub body: Value,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_at", &self.credentials.expires_at)
            .field("scope", &self.scope())
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// The `refresh_token`, if the server issued one.
    pub fn refresh_token(&self) -> Option<SecretString> {
        self.body["refresh_token"]
            .as_str()
            .map(|t| SecretString::from(t.to_string()))
    }
    /// The granted `scope`, if the server named it.
    pub fn scope(&self) -> Option<&str> {
        self.body["scope"].as_str()
    }
}

impl TokenRequest {
    /// A request to `endpoint` (already checked by the caller).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            client_id: None,
            auth: ClientAuth::None,
            params: Vec::new(),
            scope: None,
        }
    }
    /// The token endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    /// Sets `grant_type`.
    #[must_use]
    pub fn grant(self, grant_type: &str) -> Self {
        self.param("grant_type", grant_type)
    }
    /// The client id (where it goes depends on [`ClientAuth`]).
    #[must_use]
    pub fn client_id(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_string());
        self
    }
    /// How the client authenticates.
    #[must_use]
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }
    /// The requested `scope` (space-separated); a response granting less gets a warning.
    /// Empty means none is sent.
    #[must_use]
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_string()).filter(|s| !s.trim().is_empty());
        self
    }
    /// Adds a body parameter (repeatable, e.g. `resource`).
    #[must_use]
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.params
            .push((name.to_string(), SecretString::from(value.to_string())));
        self
    }
    /// Adds a secret body parameter (`refresh_token`, `code_verifier`, `device_code`).
    #[must_use]
    pub fn secret_param(self, name: &str, value: &SecretString) -> Self {
        self.param(name, value.expose_secret())
    }

    /// The HTTP request: a form POST with the client authentication applied.
    pub fn to_http(&self) -> HttpRequest {
        let mut pairs: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_secret()))
            .collect();
        if let Some(s) = &self.scope {
            pairs.push(("scope", s));
        }
        let id = self.client_id.as_deref();
        let mut basic = None;
        match &self.auth {
            ClientAuth::None => pairs.extend(id.map(|id| ("client_id", id))),
            ClientAuth::SecretBasic(secret) => {
                // RFC 6749 §2.3.1: both are form-urlencoded before the Basic encoding.
                let pair = format!(
                    "{}:{}",
                    form_urlencode_component(id.unwrap_or_default()),
                    form_urlencode_component(secret.expose_secret())
                );
                basic = Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ));
            }
            ClientAuth::SecretPost(secret) => {
                pairs.extend(id.map(|id| ("client_id", id)));
                pairs.push(("client_secret", secret.expose_secret()));
            }
            ClientAuth::PrivateKeyJwt(assertion) | ClientAuth::ClientSecretJwt(assertion) => {
                pairs.extend(id.map(|id| ("client_id", id)));
                pairs.push(("client_assertion_type", JWT_BEARER));
                pairs.push(("client_assertion", assertion.expose_secret()));
            }
        }
        let mut req = HttpRequest::new("POST", &self.endpoint)
            .header("Accept", "application/json")
            .form(&pairs);
        if let Some(b) = basic {
            req = req.sensitive_header("Authorization", &b);
        }
        req
    }

    /// Sends the request; any answer (2xx or not) is returned. A network failure is an error
    /// naming the endpoint.
    pub fn send_raw(&self, host: &Host<'_>) -> Result<HttpResponse> {
        host.http(self.to_http())
            .map_err(|e| e.context(format!("token endpoint {}", self.endpoint)))
    }

    /// Validates an answer to this request: a refusal quotes the OAuth error; a success must
    /// be a Bearer token response; a scope granted narrower than asked adds a warning.
    pub fn accept(&self, resp: &HttpResponse, host: &Host<'_>) -> Result<TokenResponse> {
        if !resp.is_success() {
            return Err(refused(resp, &self.endpoint));
        }
        let (mut credentials, body) = token_response(resp, &self.endpoint, host)?;
        if let Some(scope) = &self.scope {
            let requested: Vec<&str> = scope.split(' ').collect();
            if let Some(w) = scope_downgrade(&requested, body["scope"].as_str()) {
                credentials = credentials.warning(w);
            }
        }
        Ok(TokenResponse { credentials, body })
    }

    /// Sends the request and validates the answer.
    pub fn send(&self, host: &Host<'_>) -> Result<TokenResponse> {
        self.accept(&self.send_raw(host)?, host)
    }
}

/// Silent renewal with a refresh token (RFC 6749 §6): `request` carries the client id, client
/// authentication and scope. `Ok(None)` when the server refused the refresh token itself
/// (`invalid_grant`, `interaction_required`: the person must sign in again); other failures
/// are errors.
pub fn refresh(
    request: TokenRequest,
    refresh_token: &SecretString,
    host: &Host<'_>,
) -> Result<Option<TokenResponse>> {
    let request = request
        .grant("refresh_token")
        .secret_param("refresh_token", refresh_token);
    let resp = request.send_raw(host)?;
    if !resp.is_success() {
        if let Some(e) = error_response(&resp) {
            if e.error == "invalid_grant" || e.error == "interaction_required" {
                host.debug(&format!(
                    "the refresh token was refused ({}: {})",
                    e.error,
                    e.description.unwrap_or_default()
                ));
                return Ok(None);
            }
        }
    }
    request.accept(&resp, host).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::tests::json;
    use crate::testing::MockHost;
    use crate::ErrorKind;

    fn form(req: &HttpRequest) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&req.body)
            .into_owned()
            .collect()
    }

    fn ok() -> HttpResponse {
        json(
            200,
            r#"{"access_token":"at","token_type":"Bearer","expires_in":60,"refresh_token":"rt"}"#,
        )
    }

    #[test]
    fn basic_auth_form_urlencodes_id_and_secret_before_base64_and_sends_neither_in_the_body() {
        let mock = MockHost::new().with_http(|_| Ok(ok()));
        let r = mock
            .with_host(|h| {
                TokenRequest::new("https://idp/token")
                    .grant("client_credentials")
                    .client_id("my app")
                    .client_auth(ClientAuth::SecretBasic("s:e%c/r€t".to_string().into()))
                    .scope("a  b")
                    .send(h)
            })
            .unwrap();
        assert_eq!(r.refresh_token().unwrap().expose_secret(), "rt");
        let reqs = mock.requests.lock().unwrap();
        let auth = reqs[0]
            .headers
            .iter()
            .find(|h| h.0 == "Authorization")
            .unwrap();
        assert!(auth.2, "the Authorization header must be marked sensitive");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.1.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"my+app:s%3Ae%25c%2Fr%E2%82%ACt");
        let body = form(&reqs[0]);
        assert!(body
            .iter()
            .all(|(k, _)| k != "client_id" && k != "client_secret"));
        assert!(body.contains(&("grant_type".into(), "client_credentials".into())));
        assert!(body.contains(&("scope".into(), "a  b".into())));
    }

    #[test]
    fn each_client_auth_method_puts_the_credential_in_one_place() {
        let mock = MockHost::new().with_http(|_| Ok(ok()));
        let cases = [
            (ClientAuth::None, vec!["client_id"]),
            (
                ClientAuth::SecretPost("pw".to_string().into()),
                vec!["client_id", "client_secret"],
            ),
            (
                ClientAuth::PrivateKeyJwt("jwt".to_string().into()),
                vec!["client_id", "client_assertion_type", "client_assertion"],
            ),
            (
                ClientAuth::ClientSecretJwt("jwt".to_string().into()),
                vec!["client_id", "client_assertion_type", "client_assertion"],
            ),
        ];
        for (auth, expected) in cases {
            mock.requests.lock().unwrap().clear();
            let dbg = format!("{auth:?}");
            assert!(!dbg.contains("pw") && !dbg.contains("jwt"), "{dbg}");
            mock.with_host(|h| {
                TokenRequest::new("https://idp/token")
                    .grant("g")
                    .client_id("app")
                    .client_auth(auth)
                    .send(h)
            })
            .unwrap();
            let req = mock.requests.lock().unwrap()[0].clone();
            assert!(req.headers.iter().all(|h| h.0 != "Authorization"));
            let names: Vec<String> = form(&req).into_iter().map(|(k, _)| k).collect();
            assert_eq!(names[1..], expected[..], "{names:?}");
        }
        // private_key_jwt without a client id sends none (SMART Backend Services).
        mock.requests.lock().unwrap().clear();
        mock.with_host(|h| {
            TokenRequest::new("https://idp/token")
                .client_auth(ClientAuth::PrivateKeyJwt("j".to_string().into()))
                .send(h)
        })
        .unwrap();
        let req = mock.requests.lock().unwrap()[0].clone();
        assert!(form(&req).iter().all(|(k, _)| k != "client_id"));
    }

    #[test]
    fn refusals_bad_answers_network_errors_and_downgrades() {
        let mock = MockHost::new().with_http(|req| match req.url.as_str() {
            "https://idp/refused" => Ok(json(401, r#"{"error":"invalid_client"}"#)),
            "https://idp/narrow" => Ok(json(
                200,
                r#"{"access_token":"a","token_type":"bearer","scope":"b"}"#,
            )),
            "https://idp/mac" => Ok(json(200, r#"{"access_token":"a","token_type":"mac"}"#)),
            _ => Err("connection refused".into()),
        });
        mock.with_host(|h| {
            let send = |url: &str| TokenRequest::new(url).scope("a b").send(h);
            let e = send("https://idp/refused").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::CredentialsRejected);
            assert_eq!(
                e.message(),
                "token endpoint https://idp/refused answered HTTP 401: invalid_client"
            );
            let e = send("https://idp/mac").unwrap_err();
            assert!(e.message().contains("token_type 'mac'"), "{e}");
            let e = send("https://idp/down").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Network);
            assert_eq!(
                e.message(),
                "token endpoint https://idp/down: connection refused"
            );
            let r = send("https://idp/narrow").unwrap();
            assert!(r.credentials.warnings[0].contains("not granted a"));
            assert!(!format!("{r:?}").contains("\"a\""));
        });
    }

    #[test]
    fn assertion_claims_follow_rfc7523_with_a_fresh_jti_each_time() {
        let mock = MockHost::new();
        let (a, b) = mock.with_host(|h| {
            let claims = |aud| assertion_claims("app", aud, Duration::from_secs(60), h).unwrap();
            (claims("https://idp/token"), claims("https://idp/token"))
        });
        let now = (mock.now_ms() / 1000) as u64;
        assert_eq!(a["iss"], "app");
        assert_eq!(a["sub"], "app");
        assert_eq!(a["aud"], "https://idp/token");
        assert_eq!(a["iat"], now);
        assert_eq!(a["exp"], now + 60);
        assert_eq!(a["jti"].as_str().unwrap().len(), 32);
        assert_ne!(a["jti"], b["jti"]);
    }

    #[test]
    fn a_refused_refresh_token_means_sign_in_again_other_failures_are_errors() {
        let mock = MockHost::new().with_http(|req| {
            let body = String::from_utf8(req.body.clone()).unwrap();
            assert!(
                body.starts_with("grant_type=refresh_token&refresh_token="),
                "{body}"
            );
            Ok(match req.url.as_str() {
                "https://idp/ok" => ok(),
                "https://idp/gone" => json(400, r#"{"error":"invalid_grant"}"#),
                "https://idp/mfa" => json(400, r#"{"error":"interaction_required"}"#),
                _ => json(400, r#"{"error":"invalid_client"}"#),
            })
        });
        let rt = SecretString::from("r-1".to_string());
        mock.with_host(|h| {
            let go = |url: &str| refresh(TokenRequest::new(url).client_id("c"), &rt, h);
            assert!(go("https://idp/ok").unwrap().is_some());
            assert!(go("https://idp/gone").unwrap().is_none());
            assert!(go("https://idp/mfa").unwrap().is_none());
            assert_eq!(
                go("https://idp/other").unwrap_err().kind(),
                ErrorKind::CredentialsRejected
            );
        });
    }
}
