//! Azure managed-identity endpoints on loopback, as Microsoft documents them: the Instance
//! Metadata Service token endpoint (`GET /metadata/identity/oauth2/token`, header
//! `Metadata: true`, `api-version=2018-02-01`, `resource`, optional `client_id` / `object_id`
//! / `msi_res_id`; every value in the answer a string) and the App Service / Container Apps
//! identity endpoint (`GET /msi/token`, header `X-IDENTITY-HEADER`, `api-version=2019-08-01`,
//! optional `client_id` / `principal_id` / `mi_res_id`; `expires_on` in Unix seconds, no
//! `expires_in`). Point `AZURE_POD_IDENTITY_AUTHORITY_HOST` at [`IdentityEndpoint::imds_host`],
//! or `IDENTITY_ENDPOINT` / `IDENTITY_HEADER` at [`IdentityEndpoint::app_service_endpoint`] /
//! [`IdentityEndpoint::identity_header`].
//!
//! Both refuse a request that carries anything like a secret (an `Authorization` header, a
//! body, a client secret or assertion parameter, the identity header at IMDS) or an
//! `X-Forwarded-For` header (as IMDS does, against request forgery). Tokens are ES256 JWTs
//! for the requested `resource`; [`IdentityEndpoint::verifier`] checks them.

use crate::authorize::{now_secs, Signer};
use crate::entra::TENANT_ID;
use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The path of IMDS's token endpoint.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// The App Service identity endpoint's path on this server.
pub const APP_SERVICE_PATH: &str = "/msi/token";

/// One request as received: path, query parameters and headers (lower-case names).
#[derive(Debug, Clone)]
pub struct Received {
    /// `/metadata/identity/oauth2/token` or `/msi/token`.
    pub path: String,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Headers, names in lower case.
    pub headers: HashMap<String, String>,
    /// Whether a body came with it.
    pub had_body: bool,
}

struct Inner {
    base: String,
    identity_header: String,
    user_assigned: Vec<String>,
    lifetime: Mutex<Duration>,
    signer: Signer,
    received: Mutex<Vec<Received>>,
    issued: Mutex<Vec<String>>,
    refusals: Mutex<Vec<String>>,
}

/// A running IMDS + App Service identity endpoint; stops when dropped.
pub struct IdentityEndpoint {
    inner: Arc<Inner>,
    _running: crate::Running,
}

impl std::fmt::Debug for IdentityEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityEndpoint")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

impl IdentityEndpoint {
    /// Starts on 127.0.0.1 with a free port. `user_assigned` are the ids (client, object or
    /// resource ids) of user-assigned identities it knows; the system-assigned one needs none.
    pub async fn start(user_assigned: &[&str]) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let mut header = [0u8; 16];
        getrandom::fill(&mut header).map_err(|e| std::io::Error::other(e.to_string()))?;
        let inner = Arc::new(Inner {
            base: format!("http://{addr}"),
            identity_header: header.iter().map(|b| format!("{b:02x}")).collect(),
            user_assigned: user_assigned.iter().map(|s| s.to_string()).collect(),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            signer: Signer::es256("mi-mock"),
            received: Mutex::default(),
            issued: Mutex::default(),
            refusals: Mutex::default(),
        });
        let app = Router::new()
            .route(IMDS_PATH, get(imds))
            .route(APP_SERVICE_PATH, get(app_service))
            .with_state(inner.clone());
        let running = crate::serve(listener, app);
        Ok(Self {
            inner,
            _running: running,
        })
    }

    /// For `AZURE_POD_IDENTITY_AUTHORITY_HOST`: `http://127.0.0.1:PORT`.
    pub fn imds_host(&self) -> String {
        self.inner.base.clone()
    }
    /// For `IDENTITY_ENDPOINT`: `http://127.0.0.1:PORT/msi/token`.
    pub fn app_service_endpoint(&self) -> String {
        format!("{}{APP_SERVICE_PATH}", self.inner.base)
    }
    /// For `IDENTITY_HEADER`: the per-process secret App Service hands the application.
    pub fn identity_header(&self) -> String {
        self.inner.identity_header.clone()
    }
    /// The issuer of its tokens (Entra's v1 form, `.../{tenant}/`).
    pub fn issuer(&self) -> String {
        format!("{}/{TENANT_ID}/", self.inner.base)
    }
    /// A verifier for a FHIR server with this audience.
    pub fn verifier(&self, audience: &str) -> crate::JwtAuth {
        crate::JwtAuth {
            issuer: self.issuer(),
            audience: audience.to_string(),
            jwks: self.inner.signer.jwks.clone(),
            token_endpoint: None,
        }
    }
    /// Changes the lifetime of tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.inner.lifetime.lock().unwrap() = lifetime;
    }
    /// Every request received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }
    /// Every token issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.issued.lock().unwrap().clone()
    }
    /// Why requests were refused, in order.
    pub fn refusals(&self) -> Vec<String> {
        self.inner.refusals.lock().unwrap().clone()
    }
}

/// Parameters and headers that carry a secret: none belongs in a managed-identity request.
const SECRET_PARAMS: &[&str] = &[
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "refresh_token",
    "password",
    "code",
];

/// A refusal: status, OAuth error code, description.
type Refusal = (StatusCode, &'static str, String);

fn refuse(s: &Inner, (status, error, description): Refusal) -> Response {
    s.refusals
        .lock()
        .unwrap()
        .push(format!("{error}: {description}"));
    let body = json!({"error": error, "error_description": description});
    (status, axum::Json(body)).into_response()
}

/// Records the request and checks what both endpoints require; `Err` is the refusal.
fn check(
    s: &Inner,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &str,
    api_version: &str,
    ids: [&str; 3],
) -> Result<String, Refusal> {
    let h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), v)
        })
        .collect();
    s.received.lock().unwrap().push(Received {
        path: path.to_string(),
        query: q.clone(),
        headers: h.clone(),
        had_body: !body.is_empty(),
    });
    let bad = |e: &'static str, d: &str| Err((StatusCode::BAD_REQUEST, e, d.to_string()));
    if h.contains_key("authorization") || !body.is_empty() {
        return bad("invalid_request", "a credential or a body was sent");
    }
    if let Some(p) = SECRET_PARAMS.iter().find(|p| q.contains_key(**p)) {
        return bad(
            "invalid_request",
            &format!("secret parameter '{p}' was sent"),
        );
    }
    if h.contains_key("x-forwarded-for") {
        return bad("invalid_request", "Request contains X-Forwarded-For header");
    }
    if q.get("api-version").map(String::as_str) != Some(api_version) {
        return bad("invalid_request", "missing or unsupported api-version");
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return bad("invalid_resource", "resource is required");
    };
    let named: Vec<&String> = ids.iter().filter_map(|k| q.get(*k)).collect();
    match named[..] {
        [] => {}
        [id] if s.user_assigned.contains(id) => {}
        [_] => return bad("invalid_request", "Identity not found"),
        _ => return bad("invalid_request", "more than one identity named"),
    }
    Ok(resource.clone())
}

fn token(s: &Inner, resource: &str, client_id: Option<&String>) -> Result<(String, u64), Refusal> {
    let lifetime = s.lifetime.lock().unwrap().as_secs().max(1);
    let now = now_secs();
    let claims = json!({
        "aud": resource, "iss": format!("{}/{TENANT_ID}/", s.base), "tid": TENANT_ID,
        "appid": client_id.map_or("system-assigned-identity", String::as_str),
        "idtyp": "app", "iat": now, "nbf": now, "exp": now + lifetime,
    });
    let t = s.signer.sign(&claims).map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    })?;
    s.issued.lock().unwrap().push(t.clone());
    Ok((t, now + lifetime))
}

async fn imds(
    State(s): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let ids = ["client_id", "object_id", "msi_res_id"];
    let resource = match check(&s, IMDS_PATH, &q, &headers, &body, "2018-02-01", ids) {
        Ok(r) => r,
        Err(r) => return refuse(&s, r),
    };
    let bad = |d: &str| refuse(&s, (StatusCode::BAD_REQUEST, "invalid_request", d.into()));
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return bad("Required metadata header not specified");
    }
    if headers.contains_key("x-identity-header") {
        return bad("an App Service identity header was sent to IMDS");
    }
    let lifetime = s.lifetime.lock().unwrap().as_secs().max(1);
    match token(&s, &resource, q.get("client_id")) {
        Ok((t, exp)) => axum::Json(json!({
            "access_token": t, "refresh_token": "", "expires_in": lifetime.to_string(),
            "expires_on": exp.to_string(), "ext_expires_in": lifetime.to_string(),
            "not_before": (exp - lifetime).to_string(), "resource": resource,
            "token_type": "Bearer",
        }))
        .into_response(),
        Err(r) => refuse(&s, r),
    }
}

async fn app_service(
    State(s): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let ids = ["client_id", "principal_id", "mi_res_id"];
    let resource = match check(&s, APP_SERVICE_PATH, &q, &headers, &body, "2019-08-01", ids) {
        Ok(r) => r,
        Err(r) => return refuse(&s, r),
    };
    let sent = headers.get("x-identity-header").map(|v| v.as_bytes());
    if sent != Some(s.identity_header.as_bytes()) {
        let d = "missing or wrong X-IDENTITY-HEADER";
        return refuse(
            &s,
            (StatusCode::UNAUTHORIZED, "unauthorized_client", d.into()),
        );
    }
    let client = q.get("client_id").cloned();
    match token(&s, &resource, client.as_ref()) {
        Ok((t, exp)) => axum::Json(json!({
            "access_token": t, "expires_on": exp.to_string(), "resource": resource,
            "token_type": "Bearer",
            "client_id": client.unwrap_or_else(|| "system-assigned-identity".into()),
        }))
        .into_response(),
        Err(r) => refuse(&s, r),
    }
}

/// A token as a Kubernetes service-account token projected for Azure workload identity looks:
/// a JWT for the audience `api://AzureADTokenExchange` (signed with a throwaway key: the mock
/// Entra compares it with the file's content), unique per call.
pub fn federated_token(subject: &str, lifetime: Duration) -> String {
    let now = now_secs();
    let mut jti = [0u8; 12];
    getrandom::fill(&mut jti).expect("randomness");
    let claims = json!({
        "aud": ["api://AzureADTokenExchange"], "iss": "https://oidc.cluster.example/",
        "sub": subject, "iat": now, "nbf": now, "exp": now + lifetime.as_secs(),
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    let key = EncodingKey::from_secret(&jti);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("encodes")
}

/// The claims of a federated token, unverified (the mock Entra's checks), or why not.
pub fn federated_claims(token: &str) -> Result<Value, String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| "not a JWT")?;
    serde_json::from_slice(&bytes).map_err(|_| "not a JWT".to_string())
}
