//! fhirconn scheme `oidc-client-credentials`: an access token from the OAuth 2.0 client
//! credentials grant (RFC 6749 §4.4), with the token endpoint found by OpenID Connect Discovery
//! or given explicitly.
//!
//! Settings:
//! - `issuer` (discovery at `issuer` + `discovery-path`, default
//!   `/.well-known/openid-configuration`; the document's `issuer` must be identical, OIDC
//!   Discovery §4.3) **or** `token-url`;
//! - `client-id` and exactly one of `client-secret`, `client-secret-file`, `client-secret-env`;
//! - `auth-method`: `client_secret_basic` (default; RFC 6749 §2.3.1, id and secret
//!   form-urlencoded before Basic encoding) or `client_secret_post`. The secret is sent by
//!   exactly one method;
//! - optional `scope` (space-separated), `audience`, `resource` (RFC 8707, one or a list) and
//!   `extra-params` (vendor-specific token parameters).
//!
//! The token request goes through the host's HTTP service (so the connection's roots, proxy,
//! timeouts and client certificate apply). Errors quote the server's OAuth `error` and
//! `error_description`, never the request.

#![forbid(unsafe_code)]

use fhirconn_sdk::oauth::{discovery, endpoint_url, ClientAuth, TokenRequest};
use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Error, Host, Memo,
    Result, Scheme, SecretString,
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
    "scope",
    "audience",
    "resource",
];

/// The `oidc-client-credentials` scheme.
#[derive(Debug, Default)]
pub struct ClientCredentials;

/// How the client secret is sent: RFC 6749 §2.3.1 Basic (default) or in the body.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde", rename_all = "snake_case")]
#[schemars(crate = "fhirconn_sdk::schemars")]
enum AuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

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

/// OAuth 2.0 client credentials grant
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
    /// token endpoint, for servers without discovery
    #[schemars(url)]
    token_url: Option<String>,
    /// client id
    #[schemars(length(min = 1))]
    client_id: String,
    /// client secret
    client_secret: SecretSetting,
    #[serde(default)]
    auth_method: AuthMethod,
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
    secret: SecretString,
    auth_method: AuthMethod,
    scope: String,
    params: Vec<(String, String)>,
}

impl Scheme for ClientCredentials {
    fn name(&self) -> &str {
        "oidc-client-credentials"
    }

    fn summary(&self) -> &str {
        "OAuth 2.0 client credentials (client secret) with OpenID Connect discovery"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<Settings>()
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let s: Settings = settings::parse(settings, host)?;
        if s.client_id.is_empty() {
            return Err(Error::config("client-id: must not be empty"));
        }
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
                endpoint_url("token-url", url, host)?;
                (None, Memo::with(url.clone()))
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
            secret: s.client_secret.into_secret(),
            auth_method: s.auth_method,
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
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let endpoint = self
            .token_endpoint
            .get_or_try_init(|| match &self.discover {
                Some((issuer, url)) => discover_token_endpoint(issuer, url, host),
                None => Err(Error::internal("no token endpoint")),
            })?;
        let auth = match self.auth_method {
            AuthMethod::ClientSecretBasic => ClientAuth::SecretBasic(self.secret.clone()),
            AuthMethod::ClientSecretPost => ClientAuth::SecretPost(self.secret.clone()),
        };
        let mut request = TokenRequest::new(endpoint)
            .grant("client_credentials")
            .client_id(&self.client_id)
            .client_auth(auth)
            .scope(&self.scope);
        for (k, v) in &self.params {
            request = request.param(k, v);
        }
        Ok(request.send(host)?.credentials)
    }
}

fhirconn_sdk::export_schemes!(ClientCredentials);

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_sdk::serde_json::json;
    use fhirconn_sdk::testing::MockHost;
    use fhirconn_sdk::{CredentialHeader, ErrorKind, ExposeSecret, HttpRequest, HttpResponse};
    use std::sync::{Arc, Mutex as StdMutex};

    fn json_response(status: u16, body: Value) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    type Seen = Arc<StdMutex<Vec<HttpRequest>>>;

    /// A mock provider at https://idp.example answering discovery and token requests.
    fn provider(
        token_reply: impl Fn() -> HttpResponse + Send + Sync + 'static,
    ) -> (MockHost, Seen) {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let mock = MockHost::new().with_http(move |req| {
            log.lock().unwrap().push(req.clone());
            Ok(match req.url.as_str() {
                "https://idp.example/realm/.well-known/openid-configuration" => json_response(
                    200,
                    json!({
                        "issuer": "https://idp.example/realm",
                        "authorization_endpoint": "https://idp.example/realm/auth",
                        "token_endpoint": "https://idp.example/realm/token",
                        "jwks_uri": "https://idp.example/realm/jwks",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"]
                    }),
                ),
                "https://idp.example/realm/token" => token_reply(),
                _ => json_response(404, json!({})),
            })
        });
        (mock, seen)
    }

    fn authorize(settings: Value, mock: &MockHost) -> Result<Credentials> {
        mock.configure_and_authorize(&ClientCredentials, settings)
    }

    fn good_token() -> HttpResponse {
        json_response(
            200,
            json!({"access_token": "tok-123", "token_type": "Bearer", "expires_in": 300}),
        )
    }

    fn header_value(req: &HttpRequest, name: &str) -> Option<String> {
        req.headers
            .iter()
            .find(|h| h.0.eq_ignore_ascii_case(name))
            .map(|h| h.1.clone())
    }

    #[test]
    fn basic_auth_form_urlencodes_id_and_secret_and_sends_nothing_in_the_body() {
        use base64::Engine as _;
        let (mock, seen) = provider(good_token);
        let creds = authorize(
            json!({"issuer": "https://idp.example/realm", "client-id": "my app",
                   "client-secret": "s:e%c/r€t", "scope": "system/*.read  launch"}),
            &mock,
        )
        .unwrap();
        match &creds.headers[..] {
            [CredentialHeader::Secret(n, v)] => {
                assert_eq!(n, "Authorization");
                assert_eq!(v.expose_secret(), "Bearer tok-123");
            }
            other => panic!("{other:?}"),
        }
        assert!(creds.expires_at.is_some());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "discovery then token");
        let token_req = &seen[1];
        let basic = header_value(token_req, "authorization").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "my+app:s%3Ae%25c%2Fr%E2%82%ACt"
        );
        let body = String::from_utf8(token_req.body.clone()).unwrap();
        assert!(
            !body.contains("client_secret") && !body.contains("client_id"),
            "{body}"
        );
        assert!(body.contains("grant_type=client_credentials"));
        assert!(body.contains("scope=system%2F*.read+launch"), "{body}");
    }

    #[test]
    fn post_auth_sends_the_secret_in_the_body_only_with_extra_params() {
        let (mock, seen) = provider(good_token);
        authorize(
            json!({"token-url": "https://idp.example/realm/token", "client-id": "app",
                   "client-secret": "pw", "auth-method": "client_secret_post",
                   "audience": "https://fhir.example", "resource": ["r1", "r2"],
                   "extra-params": {"tenant": "t1"}}),
            &mock,
        )
        .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "no discovery with token-url");
        assert!(header_value(&seen[0], "authorization").is_none());
        let body = String::from_utf8(seen[0].body.clone()).unwrap();
        for part in [
            "client_id=app",
            "client_secret=pw",
            "audience=https%3A%2F%2Ffhir.example",
            "resource=r1",
            "resource=r2",
            "tenant=t1",
        ] {
            assert!(body.contains(part), "{part} missing from {body}");
        }
    }

    #[test]
    fn discovery_is_cached_and_must_name_the_configured_issuer() {
        let (mock, seen) = provider(good_token);
        let settings =
            json!({"issuer": "https://idp.example/realm", "client-id": "a", "client-secret": "b"});
        let conn = mock.configure(&ClientCredentials, settings).unwrap();
        mock.authorize(conn.as_ref()).unwrap();
        mock.authorize(conn.as_ref()).unwrap();
        assert_eq!(
            seen.lock().unwrap().len(),
            3,
            "one discovery, two token requests"
        );

        let (mock, _) = provider(good_token);
        let e = authorize(
            json!({"issuer": "https://idp.example/realm/", "client-id": "a", "client-secret": "b"}),
            &mock,
        )
        .unwrap_err();
        assert!(
            e.message()
                .contains("names issuer 'https://idp.example/realm'"),
            "{e}"
        );
    }

    #[test]
    fn server_errors_are_quoted_and_classified_without_the_secret() {
        let cases: Vec<(HttpResponse, ErrorKind, &str)> = vec![
            (
                json_response(
                    401,
                    json!({"error": "invalid_client", "error_description": "bad secret"}),
                ),
                ErrorKind::CredentialsRejected,
                "answered HTTP 401: invalid_client: bad secret",
            ),
            (
                json_response(400, json!({"error": "invalid_scope"})),
                ErrorKind::CredentialsRejected,
                "invalid_scope",
            ),
            (
                HttpResponse {
                    status: 500,
                    headers: vec![("content-type".into(), "text/html".into())],
                    body: b"<html>oops</html>".to_vec(),
                },
                ErrorKind::Protocol,
                "answered HTTP 500",
            ),
            (
                json_response(200, json!({"token_type": "Bearer"})),
                ErrorKind::Protocol,
                "not a token response",
            ),
            (
                json_response(200, json!({"access_token": "x", "token_type": "mac"})),
                ErrorKind::Protocol,
                "token_type 'mac'",
            ),
        ];
        for (reply, kind, expected) in cases {
            let reply = Arc::new(reply);
            let (mock, _) = provider(move || (*reply).clone());
            let e = authorize(
                json!({"token-url": "https://idp.example/realm/token", "client-id": "a",
                       "client-secret": "canary-secret-42"}),
                &mock,
            )
            .unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.message().contains(expected), "{e}");
            assert!(!e.message().contains("canary-secret-42"));
        }
    }

    #[test]
    fn lowercase_bearer_and_missing_expiry_are_accepted() {
        let (mock, _) =
            provider(|| json_response(200, json!({"access_token": "t", "token_type": "bearer"})));
        let creds = authorize(
            json!({"token-url": "https://idp.example/realm/token", "client-id": "a", "client-secret": "b"}),
            &mock,
        )
        .unwrap();
        assert!(creds.expires_at.is_none());
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let mock = MockHost::new();
        let cases = [
            (
                json!({"client-id": "a", "client-secret": "b"}),
                "set 'issuer'",
            ),
            (
                json!({"issuer": "https://i", "token-url": "https://t", "client-id": "a", "client-secret": "b"}),
                "not both",
            ),
            (
                json!({"token-url": "ftp://t", "client-id": "a", "client-secret": "b"}),
                "scheme 'ftp'",
            ),
            (
                json!({"token-url": "not a url", "client-id": "a", "client-secret": "b"}),
                "token-url: not a valid URL",
            ),
            (
                json!({"token-url": "https://t", "client-id": "a"}),
                "exactly one of 'client-secret'",
            ),
            (
                json!({"token-url": "https://t", "client-id": "a", "client-secret": "b", "auth-method": "tls"}),
                "unknown variant",
            ),
            (
                json!({"token-url": "https://t", "client-id": "a", "client-secret": "b", "extra-params": {"grant_type": "x"}}),
                "extra-params: 'grant_type'",
            ),
            (
                json!({"token-url": "https://t", "client-id": "a", "client-secret": "b", "scopes": "x"}),
                "unknown setting 'scopes'",
            ),
        ];
        for (s, expected) in cases {
            let e = mock
                .configure(&ClientCredentials, s.clone())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{s}");
            assert!(e.message().contains(expected), "{s}: {e}");
        }
    }
}
