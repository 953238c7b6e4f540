//! An OAuth 2.0 / OpenID Connect provider on loopback: discovery, JWKS, and a token endpoint for
//! the client-credentials grant with `client_secret_basic`, `client_secret_post`,
//! `client_secret_jwt` and `private_key_jwt` (the SMART Backend Services profile, or any of
//! RS256/RS384/ES256/ES384), and the RFC 7523 §2.1 jwt-bearer grant, issuing signed JWT access
//! tokens. Assertions are verified in [`assertion`].
//!
//! It is strict where the specifications are: a request that authenticates the client twice is
//! refused (RFC 6749 §2.3), Basic credentials are form-urlencoded (§2.3.1), a repeated parameter
//! is an `invalid_request` (§3.2), errors are RFC 6749 §5.2 JSON bodies, and client assertions
//! follow RFC 7523 §3 and SMART App Launch 2.x (`kid`, `typ: JWT`, RS384/ES384, `iss = sub`,
//! `aud` = the token endpoint, `exp` at most five minutes ahead, unique `jti`).

pub(crate) use crate::authorize::now_secs;
use crate::authorize::{basic_credentials, EndpointLog, Signer};
use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use jsonwebtoken::jwk::JwkSet;
/// The JWS algorithms of [`client_key`].
pub use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client-assertion type of RFC 7523.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

mod assertion;
pub use assertion::{client_key, JWT_BEARER_GRANT};

/// What verifies a client's jwt-bearer grant assertions.
#[derive(Debug, Clone)]
pub enum GrantKey {
    /// HS256 with this shared secret (Health Gorilla, Medplum's `jwt-bearer`).
    Secret(String),
    /// RS256/RS384/ES256/ES384 with these public keys.
    Keys(JwkSet),
}

/// How a registered client authenticates at the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-urlencoded id and secret.
    SecretBasic(String),
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    SecretPost(String),
    /// `private_key_jwt` as SMART Backend Services profiles it: RS384/ES384, `typ: JWT` and a
    /// `kid`, verified with these public keys.
    PrivateKeyJwt(JwkSet),
    /// `private_key_jwt` as OpenID Connect Core §9 has it: RS256, RS384, ES256 or ES384 with
    /// one of these public keys (`kid` optional).
    PrivateKeyJwtAnyAlg(JwkSet),
    /// `client_secret_jwt`: an HS256 client assertion made with this secret.
    ClientSecretJwt(String),
    /// No client authentication: the client uses the jwt-bearer grant (RFC 7523 §2.1), its
    /// assertion (`iss` = client id) verified with this key.
    JwtBearerGrant(GrantKey),
}

impl ClientAuth {
    fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt(_) | ClientAuth::PrivateKeyJwtAnyAlg(_) => "private_key_jwt",
            ClientAuth::ClientSecretJwt(_) => "client_secret_jwt",
            ClientAuth::JwtBearerGrant(_) => "the jwt-bearer grant",
        }
    }
}

/// A client registered with the provider.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    /// The `client_id`.
    pub client_id: String,
    /// Its one authentication method.
    pub auth: ClientAuth,
    /// Scopes it may be granted (requesting others is `invalid_scope`).
    pub scopes: Vec<String>,
}

/// A fault the provider injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpFault {
    /// Behave.
    None,
    /// The token endpoint answers 500 with an HTML page.
    TokenStatus500,
    /// The token endpoint answers 200 with a body that is not JSON.
    TokenGarbage,
    /// The discovery document is missing (404).
    NoDiscovery,
    /// The discovery document names another issuer.
    WrongIssuer,
    /// The token endpoint never answers.
    TokenHang,
    /// The token endpoint redirects (307, keeping the method and body) to this URL.
    TokenRedirect(&'static str),
}

/// Provider settings.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// Path of the issuer below the server root, e.g. `/oauth` (the issuer is
    /// `http://127.0.0.1:PORT/oauth`).
    pub issuer_path: String,
    /// The `aud` of the access tokens it issues (usually the FHIR base URL).
    pub audience: String,
    /// Lifetime of access tokens.
    pub token_lifetime: Duration,
    /// Registered clients.
    pub clients: Vec<RegisteredClient>,
}

impl Default for IdpConfig {
    fn default() -> Self {
        Self {
            issuer_path: "/oauth".into(),
            audience: "fhirconn-testkit".into(),
            token_lifetime: Duration::from_secs(300),
            clients: Vec::new(),
        }
    }
}

struct IdpState {
    config: Mutex<IdpConfig>,
    fault: Mutex<IdpFault>,
    issuer: String,
    token_endpoint: String,
    signer: Signer,
    seen_jti: Mutex<HashMap<String, u64>>,
    token_sequence: AtomicU64,
    log: EndpointLog,
}

/// A running identity provider; stops when dropped.
pub struct IdentityProvider {
    addr: SocketAddr,
    state: Arc<IdpState>,
    tls: Option<Arc<crate::tls::TlsStats>>,
    _running: crate::Running,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.state.issuer)
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// Starts a provider on 127.0.0.1 with a free port. Call inside a tokio runtime.
    pub async fn start(config: IdpConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Self::serve_on(listener, addr, "http", None, config)
    }

    /// Starts a provider over HTTPS (e.g. a token endpoint that requires a client certificate).
    pub async fn start_tls(
        config: IdpConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let listener = crate::tls::TlsListener::new(tcp, tls);
        let stats = listener.stats();
        Self::serve_on(listener, addr, "https", Some(stats), config)
    }

    fn serve_on<L: axum::serve::Listener<Addr = SocketAddr>>(
        listener: L,
        addr: SocketAddr,
        scheme: &str,
        tls: Option<Arc<crate::tls::TlsStats>>,
        config: IdpConfig,
    ) -> std::io::Result<Self> {
        let path = config.issuer_path.trim_end_matches('/').to_string();
        let issuer = format!("{scheme}://{addr}{path}");
        let state = Arc::new(IdpState {
            token_endpoint: format!("{issuer}/token"),
            issuer,
            config: Mutex::new(config),
            fault: Mutex::new(IdpFault::None),
            signer: Signer::es256("testkit-es256"),
            seen_jti: Mutex::new(HashMap::new()),
            token_sequence: AtomicU64::new(0),
            log: EndpointLog::default(),
        });
        let routes = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route("/apikey-token", post(apikey_token))
            .with_state(state.clone());
        let app = if path.is_empty() {
            routes
        } else {
            Router::new().nest(&path, routes)
        };
        let running = crate::serve(listener, app);
        Ok(Self {
            addr,
            state,
            tls,
            _running: running,
        })
    }

    /// The issuer URL (no trailing slash).
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        self.state.token_endpoint.clone()
    }

    /// A vendor-style JSON token exchange (not OAuth): `POST {"client_id", "api_key"}` answers
    /// `{"access_token", "token_type", "expires_in"}` for a client registered with
    /// [`ClientAuth::SecretPost`] whose secret is the API key. For out-of-tree scheme tests.
    pub fn apikey_token_endpoint(&self) -> String {
        format!("{}/apikey-token", self.state.issuer)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TLS statistics, for a provider started with [`IdentityProvider::start_tls`].
    pub fn tls_stats(&self) -> Option<Arc<crate::tls::TlsStats>> {
        self.tls.clone()
    }

    /// The provider's public signing keys (what a resource server verifies tokens with).
    pub fn jwks(&self) -> JwkSet {
        self.state.signer.jwks.clone()
    }

    /// A verifier for a FHIR server accepting this provider's tokens for `audience`.
    pub fn verifier(&self, audience: &str) -> crate::JwtAuth {
        crate::JwtAuth {
            issuer: self.issuer(),
            audience: audience.to_string(),
            jwks: self.jwks(),
            token_endpoint: Some(self.token_endpoint()),
        }
    }

    /// A SMART configuration document (`.well-known/smart-configuration`) naming this provider.
    pub fn smart_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer(),
            "jwks_uri": format!("{}/jwks", self.issuer()),
            "token_endpoint": self.token_endpoint(),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": ["system/*.read", "system/*.rs", "system/Patient.rs"],
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"]
        })
    }

    /// Registers another client (or replaces one with the same id).
    pub fn register(&self, client: RegisteredClient) {
        let mut cfg = self.state.config.lock().unwrap();
        cfg.clients.retain(|c| c.client_id != client.client_id);
        cfg.clients.push(client);
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.config.lock().unwrap().token_lifetime = lifetime;
    }

    /// Changes the injected fault.
    pub fn set_fault(&self, fault: IdpFault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    crate::authorize::endpoint_log_accessors!();
}

async fn discovery(State(state): State<Arc<IdpState>>) -> Response {
    let fault = *state.fault.lock().unwrap();
    if fault == IdpFault::NoDiscovery {
        return (StatusCode::NOT_FOUND, "no discovery here").into_response();
    }
    let issuer = if fault == IdpFault::WrongIssuer {
        "https://evil.example.com/oauth".to_string()
    } else {
        state.issuer.clone()
    };
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{}/authorize", state.issuer),
        "token_endpoint": state.token_endpoint,
        "jwks_uri": format!("{}/jwks", state.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "grant_types_supported": ["client_credentials", JWT_BEARER_GRANT],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported":
            ["RS256", "RS384", "ES256", "ES384", "HS256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<IdpState>>) -> Response {
    axum::Json(&state.signer.jwks).into_response()
}

/// An RFC 6749 §5.2 error response.
fn oauth_error(state: &IdpState, status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = state.log.refuse(status, error, description);
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="fhirconn-testkit-idp""#),
        );
    }
    resp
}

async fn token(State(state): State<Arc<IdpState>>, headers: HeaderMap, body: String) -> Response {
    state.log.request();
    let fault = *state.fault.lock().unwrap();
    match fault {
        IdpFault::TokenHang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        IdpFault::TokenRedirect(to) => {
            return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)], "").into_response()
        }
        IdpFault::TokenStatus500 => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response()
        }
        IdpFault::TokenGarbage => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"access_token\": ",
            )
                .into_response()
        }
        _ => {}
    }
    let bad =
        |status, error: &str, description: &str| oauth_error(&state, status, error, description);
    if !crate::authorize::is_form(&headers) {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let params = match crate::authorize::parse_form(&body) {
        Ok(p) => p,
        Err(why) => return bad(StatusCode::BAD_REQUEST, "invalid_request", &why),
    };
    let basic = basic_credentials(&headers);
    let (client, subject) = match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => match client_credentials(&state, basic, &params) {
            Ok(client) => (client.clone(), client.client_id),
            Err(resp) => return *resp,
        },
        Some(JWT_BEARER_GRANT) => {
            let other_auth = basic.is_some()
                || params.contains_key("client_secret")
                || params.contains_key("client_assertion");
            match assertion::grant(&state, &params, other_auth) {
                Ok(found) => found,
                Err((error, why)) => {
                    let status = if error == "invalid_client" {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    return bad(status, error, &why);
                }
            }
        }
        Some(other) => {
            return bad(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type '{other}' is not supported"),
            )
        }
        None => {
            return bad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            )
        }
    };
    issue(&state, &client, &subject, &params)
}

/// The client of a client credentials request, authenticated with exactly one method.
fn client_credentials(
    state: &IdpState,
    basic: Option<Result<(String, String), ()>>,
    params: &HashMap<String, String>,
) -> Result<RegisteredClient, Box<Response>> {
    let bad = |status, error: &str, description: &str| {
        Err(Box::new(oauth_error(state, status, error, description)))
    };
    // Which client authentication methods were used? Exactly one is allowed.
    let post_secret = params.get("client_secret").cloned();
    let assertion = params.get("client_assertion").cloned();
    let used = [basic.is_some(), post_secret.is_some(), assertion.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if used > 1 {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the client authenticated with more than one method",
        );
    }
    let (client_id, presented) = match (basic, post_secret, assertion) {
        (Some(Err(())), _, _) => {
            return bad(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "malformed Basic credentials",
            )
        }
        (Some(Ok((id, secret))), _, _) => {
            if params.get("client_id").is_some_and(|c| *c != id) {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id in the body differs from the Basic credentials",
                );
            }
            (id, Presented::Basic(secret))
        }
        (None, Some(secret), _) => match params.get("client_id") {
            Some(id) => (id.clone(), Presented::Post(secret)),
            None => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_secret without client_id",
                )
            }
        },
        (None, None, Some(jwt)) => {
            if params.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER_ASSERTION)
            {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
            }
            let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(&jwt)
                .ok()
                .and_then(|d| d.claims["iss"].as_str().map(String::from));
            match unverified {
                Some(iss) => (iss, Presented::Jwt(jwt)),
                None => {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        "invalid_client",
                        "the client assertion is not a JWT with an 'iss' claim",
                    )
                }
            }
        }
        (None, None, None) => {
            return bad(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is required",
            )
        }
    };

    let cfg = state.config.lock().unwrap().clone();
    let Some(client) = cfg.clients.iter().find(|c| c.client_id == client_id) else {
        return bad(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    let method_ok = matches!(
        (&client.auth, &presented),
        (ClientAuth::SecretBasic(_), Presented::Basic(_))
            | (ClientAuth::SecretPost(_), Presented::Post(_))
            | (
                ClientAuth::PrivateKeyJwt(_)
                    | ClientAuth::PrivateKeyJwtAnyAlg(_)
                    | ClientAuth::ClientSecretJwt(_),
                Presented::Jwt(_)
            )
    );
    if !method_ok {
        return bad(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!("this client is registered for {}", client.auth.method()),
        );
    }
    match (&client.auth, &presented) {
        (ClientAuth::SecretBasic(s), Presented::Basic(p))
        | (ClientAuth::SecretPost(s), Presented::Post(p)) => {
            if s != p {
                return bad(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication failed",
                );
            }
        }
        (_, Presented::Jwt(jwt)) => {
            if let Err(why) = assertion::client_assertion(state, client, jwt) {
                return bad(StatusCode::UNAUTHORIZED, "invalid_client", &why);
            }
        }
        _ => unreachable!("checked above"),
    }
    Ok(client.clone())
}

/// Issues an access token for `client` about `subject`, if the requested scopes are allowed.
fn issue(
    state: &IdpState,
    client: &RegisteredClient,
    subject: &str,
    params: &HashMap<String, String>,
) -> Response {
    let bad =
        |status, error: &str, description: &str| oauth_error(state, status, error, description);
    let cfg = state.config.lock().unwrap().clone();
    // Scopes: every requested one must be allowed; none requested = all allowed ones.
    let requested: Vec<String> = params
        .get("scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if let Some(refused) = requested.iter().find(|s| !client.scopes.contains(s)) {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("scope '{refused}' is not granted to this client"),
        );
    }
    let granted = if requested.is_empty() {
        client.scopes.join(" ")
    } else {
        requested.join(" ")
    };
    let now = now_secs();
    let lifetime = cfg.token_lifetime.as_secs().max(1);
    let seq = state.token_sequence.fetch_add(1, Ordering::SeqCst);
    let claims = json!({
        "iss": state.issuer,
        "sub": subject,
        "aud": cfg.audience,
        "iat": now,
        "exp": now + lifetime,
        "scope": granted,
        "jti": format!("at-{seq}-{now}"),
        "client_id": client.client_id,
    });
    let mut header = state.signer.header();
    header.typ = Some("at+jwt".into());
    let access_token = match jsonwebtoken::encode(&header, &claims, &state.signer.key) {
        Ok(t) => t,
        Err(e) => {
            return bad(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &format!("signing failed: {e}"),
            )
        }
    };
    state.log.issue();
    let mut resp = axum::Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": granted,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

async fn apikey_token(State(state): State<Arc<IdpState>>, body: String) -> Response {
    state.log.request();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (Some(id), Some(key)) = (v["client_id"].as_str(), v["api_key"].as_str()) else {
        return oauth_error(
            &state,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id and api_key are required",
        );
    };
    let cfg = state.config.lock().unwrap().clone();
    let ok = cfg
        .clients
        .iter()
        .any(|c| c.client_id == id && matches!(&c.auth, ClientAuth::SecretPost(s) if s == key));
    if !ok {
        return oauth_error(
            &state,
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "the API key is not valid for this client",
        );
    }
    let now = now_secs();
    let lifetime = cfg.token_lifetime.as_secs().max(1);
    let seq = state.token_sequence.fetch_add(1, Ordering::SeqCst);
    let claims = json!({"iss": state.issuer, "sub": id, "aud": cfg.audience, "iat": now,
        "exp": now + lifetime, "jti": format!("ak-{seq}-{now}"), "client_id": id});
    match state.signer.sign(&claims) {
        Ok(t) => {
            state.log.issue();
            axum::Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": lifetime}))
                .into_response()
        }
        Err(e) => oauth_error(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        ),
    }
}

enum Presented {
    Basic(String),
    Post(String),
    Jwt(String),
}
