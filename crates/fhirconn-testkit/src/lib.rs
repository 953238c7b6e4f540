//! Reference servers for fhirconn's tests, demo and conformance runs.
//!
//! [`FhirServer`] is an in-process FHIR R4 server on loopback (axum): a real
//! CapabilityStatement at `/metadata`, Patient read and search, authentication enforced as
//! configured (none, basic, bearer) with a `WWW-Authenticate` challenge on 401, fault modes
//! (slow, 500, non-JSON, huge body) and request counters for assertions. With
//! [`ServerAuth::Jwt`] it is a resource server verifying JWT access tokens, and it can serve a
//! SMART configuration document (`.well-known/smart-configuration`).
//!
//! [`idp::IdentityProvider`] is an OAuth 2.0 / OpenID Connect provider issuing those tokens.

mod authorization_log;
mod authorize;
pub mod azure_identity;
mod bulk_gen;
pub use bulk_gen::ndjson_block;
pub mod entra;
pub mod google;
pub mod hmac;
pub mod hostile;
pub mod idp;
pub mod pki;
pub mod sigv4;
pub mod smart_launch;
pub mod tls;

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the FHIR server authenticates requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    /// Anonymous access.
    None,
    /// HTTP Basic with one user.
    Basic {
        /// User-id.
        username: String,
        /// Password.
        password: String,
    },
    /// Static bearer tokens.
    Bearer {
        /// Accepted tokens.
        tokens: Vec<String>,
    },
    /// JWT access tokens from an OAuth provider (signature, `iss`, `aud`, `exp`).
    Jwt(JwtAuth),
}

/// How a resource server verifies JWT access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuth {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// The issuer's public keys.
    pub jwks: jsonwebtoken::jwk::JwkSet,
    /// Advertised in the CapabilityStatement's SMART `oauth-uris` extension.
    pub token_endpoint: Option<String>,
}

impl JwtAuth {
    /// Checks a presented access token; `Err` is the `error_description` of the challenge.
    fn verify(&self, token: &str) -> Result<(), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "not a JWT".to_string())?;
        let jwk = header
            .kid
            .as_deref()
            .and_then(|k| self.jwks.find(k))
            .ok_or("unknown signing key")?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_audience(&[self.audience.as_str()]);
        v.set_issuer(&[self.issuer.as_str()]);
        v.leeway = 0;
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .map(|_| ())
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired".into(),
                jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience".into(),
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer".into(),
                _ => "invalid token".into(),
            })
    }
}

/// A fault the server injects into every FHIR response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Wait this long before answering.
    Slow(Duration),
    /// Answer 500 with an OperationOutcome.
    Status500,
    /// Answer 200 with an HTML page.
    NonJson,
    /// Answer 200 with a body of this many bytes.
    HugeBody(usize),
    /// Answer 200 and send the body one byte per interval, forever.
    Trickle(Duration),
    /// Answer 503, with a `Retry-After` of this many seconds when set.
    Unavailable(Option<u64>),
    /// Answer 200 with an OperationOutcome instead of the resource.
    ErrorIn200,
    /// Answer 302 to this URL.
    RedirectTo(String),
    /// Answer 403 with an OperationOutcome whose diagnostics quote the request's
    /// `Authorization` header (a gateway that echoes what it received).
    EchoAuthorization,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct FhirServerConfig {
    /// Authentication.
    pub auth: ServerAuth,
    /// Whether `/metadata` is public (many servers serve it anonymously).
    pub anonymous_metadata: bool,
    /// The injected fault.
    pub fault: Fault,
    /// Path prefix of the FHIR base, e.g. `/fhir`.
    pub base_path: String,
    /// Served at `{base}/.well-known/smart-configuration` when set.
    pub smart_configuration: Option<Value>,
    /// The `WWW-Authenticate` header of every 401 instead of the default one (e.g. the
    /// challenge Microsoft's FHIR server sends, naming its Entra tenant and audience).
    pub challenge: Option<String>,
    /// Bulk export: status polls answered 202 before a job completes.
    pub export_polls: u32,
    /// Bulk export: the `Retry-After` (seconds) of those 202s; none when `None`.
    pub export_retry_after: Option<u64>,
}

impl Default for FhirServerConfig {
    fn default() -> Self {
        Self {
            auth: ServerAuth::None,
            anonymous_metadata: false,
            fault: Fault::None,
            base_path: "/fhir".into(),
            smart_configuration: None,
            challenge: None,
            export_polls: 2,
            export_retry_after: Some(1),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    unauthorized: AtomicU64,
    authorizations: Mutex<authorization_log::AuthorizationLog>,
    revoked: Mutex<std::collections::HashSet<String>>,
    exports: Mutex<HashMap<u64, ExportJob>>,
    export_seq: AtomicU64,
    /// Bulk export: every file request, as `<job>/<name>`.
    export_file_gets: Mutex<Vec<String>>,
    /// Bulk export: files sent slowly, `(lines, one every)`.
    export_trickle: Mutex<Option<(u32, std::time::Duration)>>,
    /// Bulk export: generated files of about these sizes (bytes) instead of the usual ones.
    export_generated: Mutex<Option<Vec<u64>>>,
}

/// A bulk export job: (polls left before completion, requested types, cancelled).
type ExportJob = (u32, Vec<String>, bool);

#[derive(Clone)]
struct AppState {
    config: Arc<Mutex<FhirServerConfig>>,
    counters: Arc<Counters>,
}

/// A running FHIR server; stops when dropped.
#[derive(Debug)]
pub struct FhirServer {
    addr: SocketAddr,
    scheme: &'static str,
    tls: Option<Arc<tls::TlsStats>>,
    base_path: String,
    config: Arc<Mutex<FhirServerConfig>>,
    counters: Arc<Counters>,
    _running: crate::Running,
}

impl FhirServer {
    /// Starts a server on 127.0.0.1 with a free port. Call inside a tokio runtime.
    pub async fn start(config: FhirServerConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, config)
    }

    /// Starts an HTTPS server on 127.0.0.1 with a free port.
    pub async fn start_tls(
        config: FhirServerConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let listener = tls::TlsListener::new(tcp, tls);
        let stats = listener.stats();
        Self::serve_on(listener, addr, "https", Some(stats), config)
    }

    /// Serves on an already bound listener.
    pub fn serve(
        listener: tokio::net::TcpListener,
        config: FhirServerConfig,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        Self::serve_on(listener, addr, "http", None, config)
    }

    fn serve_on<L: axum::serve::Listener<Addr = SocketAddr>>(
        listener: L,
        addr: SocketAddr,
        scheme: &'static str,
        tls: Option<Arc<tls::TlsStats>>,
        config: FhirServerConfig,
    ) -> std::io::Result<Self> {
        let base_path = config.base_path.trim_end_matches('/').to_string();
        let config = Arc::new(Mutex::new(config));
        let counters = Arc::new(Counters::default());
        let state = AppState {
            config: config.clone(),
            counters: counters.clone(),
        };
        let fhir = Router::new()
            .route("/metadata", get(metadata))
            .route("/Patient", get(search_patients).post(create_patient))
            .route(
                "/Patient/{id}",
                get(read_patient).put(update_patient).delete(delete_patient),
            )
            .route("/.well-known/smart-configuration", get(smart_configuration))
            .route("/$export", get(export_kickoff))
            .route("/Patient/$export", get(export_kickoff))
            .route("/Group/{id}/$export", get(export_kickoff_group))
            .route(
                "/$export-status/{job}",
                get(export_status).delete(export_cancel),
            )
            .route("/$export-file/{job}/{name}", get(export_file))
            .with_state(state);
        let app = if base_path.is_empty() {
            fhir
        } else {
            Router::new().nest(&base_path, fhir)
        };
        let running = crate::serve(listener, app);
        Ok(Self {
            addr,
            scheme,
            tls,
            base_path,
            config,
            counters,
            _running: running,
        })
    }

    /// The FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.addr, self.base_path)
    }

    /// `scheme://127.0.0.1:PORT`, without the base path (e.g. the audience of its tokens).
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The FHIR base URL with another host name for the same port (e.g. `localhost`).
    pub fn base_url_as(&self, host: &str) -> String {
        format!(
            "{}://{host}:{}{}",
            self.scheme,
            self.addr.port(),
            self.base_path
        )
    }

    /// TLS statistics (handshakes, failures, client certificates), for HTTPS servers.
    pub fn tls_stats(&self) -> Option<Arc<tls::TlsStats>> {
        self.tls.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the injected fault.
    pub fn set_fault(&self, fault: Fault) {
        self.config.lock().unwrap().fault = fault;
    }

    /// Bulk export jobs cancelled by clients (DELETE on the status URL).
    pub fn exports_cancelled(&self) -> usize {
        self.counters
            .exports
            .lock()
            .unwrap()
            .values()
            .filter(|j| j.2)
            .count()
    }

    /// Bulk export jobs started (kick-offs accepted).
    pub fn exports_started(&self) -> u64 {
        self.counters.export_seq.load(Ordering::SeqCst)
    }

    /// Every bulk export file request so far, as `<job>/<name>` (e.g. `1/Patient.ndjson`).
    pub fn export_file_requests(&self) -> Vec<String> {
        self.counters.export_file_gets.lock().unwrap().clone()
    }

    /// Bulk export files are sent slowly from now on: `lines` resources, one every `every`
    /// (`None`: at once, as usual).
    pub fn set_export_file_trickle(&self, trickle: Option<(u32, std::time::Duration)>) {
        *self.counters.export_trickle.lock().unwrap() = trickle;
    }

    /// Bulk export manifests list one generated `Observation` file per size (bytes, rounded
    /// down to whole 1 MiB blocks of complete lines) from now on, streamed from memory: for
    /// benchmarks of large exports. `None` goes back to the usual small files.
    pub fn set_export_generated(&self, sizes: Option<Vec<u64>>) {
        *self.counters.export_generated.lock().unwrap() = sizes;
    }

    /// The exact sizes of the generated export files (see [`Self::set_export_generated`]).
    pub fn export_generated_sizes(&self) -> Vec<u64> {
        let sizes = self.counters.export_generated.lock().unwrap().clone();
        sizes
            .unwrap_or_default()
            .into_iter()
            .map(bulk_gen::actual_size)
            .collect()
    }

    /// Changes the `WWW-Authenticate` header of 401 answers (`None`: the default challenge).
    pub fn set_challenge(&self, challenge: Option<String>) {
        self.config.lock().unwrap().challenge = challenge;
    }

    /// Changes the authentication (e.g. to revoke a token).
    pub fn set_auth(&self, auth: ServerAuth) {
        self.config.lock().unwrap().auth = auth;
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 401.
    pub fn unauthorized(&self) -> u64 {
        self.counters.unauthorized.load(Ordering::SeqCst)
    }

    /// Revokes every bearer token presented so far: their next use is answered 401.
    pub fn revoke_presented_tokens(&self) {
        let presented: Vec<String> = self
            .distinct_authorizations()
            .iter()
            .filter_map(|a| bearer_token(a))
            .collect();
        self.counters.revoked.lock().unwrap().extend(presented);
    }

    /// The `Authorization` header of the most recent requests, in order (all of them up to
    /// 4,096 requests; the record is bounded so that a soak measures the host, not this
    /// server).
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.counters.authorizations.lock().unwrap().recent()
    }

    /// Every distinct `Authorization` header received (up to 4,096 values), in the order
    /// first seen.
    pub fn distinct_authorizations(&self) -> Vec<String> {
        self.counters.authorizations.lock().unwrap().distinct()
    }

    /// How many requests the record has seen (whether or not they carried a header).
    pub fn authorizations_recorded(&self) -> u64 {
        self.counters.authorizations.lock().unwrap().count()
    }
}

/// A server running in the background ([`serve`]); it stops when this is dropped.
#[derive(Debug)]
pub(crate) struct Running(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves `app` on `listener` in the background until the returned [`Running`] is dropped.
pub(crate) fn serve<L>(listener: L, app: Router) -> Running
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    Running(Some(spawn_server(listener, app)))
}

/// Serves `app` on `listener` in the background until the returned sender fires or drops.
pub(crate) fn spawn_server<L>(listener: L, app: Router) -> tokio::sync::oneshot::Sender<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    tx
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    resp
}

fn outcome(code: &str, diagnostics: &str) -> Value {
    json!({"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]})
}

/// Checks auth and applies faults; `Ok(())` means serve the resource.
async fn gate(state: &AppState, headers: &HeaderMap, is_metadata: bool) -> Result<(), Response> {
    state.counters.requests.fetch_add(1, Ordering::SeqCst);
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    state
        .counters
        .authorizations
        .lock()
        .unwrap()
        .push(authz.clone());
    let cfg = state.config.lock().unwrap().clone();
    if !(is_metadata && cfg.anonymous_metadata) {
        let (ok, challenge) = match &cfg.auth {
            ServerAuth::None => (true, String::new()),
            ServerAuth::Basic { username, password } => {
                use base64::Engine as _;
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                );
                (
                    authz.as_deref() == Some(expected.as_str()),
                    r#"Basic realm="fhirconn-testkit", charset="UTF-8""#.to_string(),
                )
            }
            ServerAuth::Jwt(jwt) => {
                let presented = authz.as_deref().and_then(bearer_token);
                let verdict = match &presented {
                    None => Err(None),
                    Some(t) if state.counters.revoked.lock().unwrap().contains(t) => {
                        Err(Some("the token has been revoked".to_string()))
                    }
                    Some(t) => jwt.verify(t).map_err(Some),
                };
                match verdict {
                    Ok(()) => (true, String::new()),
                    Err(None) => (false, r#"Bearer realm="fhirconn-testkit""#.to_string()),
                    Err(Some(why)) => (
                        false,
                        format!(
                            r#"Bearer realm="fhirconn-testkit", error="invalid_token", error_description="{why}""#
                        ),
                    ),
                }
            }
            ServerAuth::Bearer { tokens } => {
                let presented = authz.as_deref().and_then(bearer_token);
                let ok = presented.as_ref().is_some_and(|t| {
                    tokens.contains(t) && !state.counters.revoked.lock().unwrap().contains(t)
                });
                let challenge = if presented.is_some() {
                    r#"Bearer realm="fhirconn-testkit", error="invalid_token", error_description="the access token is not valid""#
                } else {
                    r#"Bearer realm="fhirconn-testkit""#
                };
                (ok, challenge.to_string())
            }
        };
        if !ok {
            state.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            let mut resp = fhir_json(
                StatusCode::UNAUTHORIZED,
                &outcome("login", "authentication required"),
            );
            let challenge = cfg.challenge.clone().unwrap_or(challenge);
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return Err(resp);
        }
    }
    match cfg.fault {
        Fault::None => Ok(()),
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Fault::Status500 => Err(fhir_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &outcome("exception", "injected failure"),
        )),
        Fault::NonJson => Err((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Welcome to nginx!</body></html>",
        )
            .into_response()),
        Fault::HugeBody(n) => {
            // Streamed in 64 KiB chunks, so the server does not hold the whole body.
            let chunks = futures_util::stream::iter((0..n.div_ceil(65_536)).map(move |i| {
                let len = 65_536.min(n - i * 65_536);
                Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; len]))
            }));
            Err((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/fhir+json")],
                Body::from_stream(chunks),
            )
                .into_response())
        }
        Fault::Trickle(every) => {
            let drip = futures_util::stream::unfold((), move |()| async move {
                tokio::time::sleep(every).await;
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b" ")),
                    (),
                ))
            });
            Err((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/fhir+json")],
                Body::from_stream(drip),
            )
                .into_response())
        }
        Fault::Unavailable(retry_after) => {
            let mut resp = fhir_json(
                StatusCode::SERVICE_UNAVAILABLE,
                &outcome("transient", "down for maintenance"),
            );
            if let Some(s) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            Err(resp)
        }
        Fault::ErrorIn200 => Err(fhir_json(
            StatusCode::OK,
            &outcome("processing", "an error, sent with status 200"),
        )),
        Fault::RedirectTo(url) => {
            Err((StatusCode::FOUND, [(header::LOCATION, url)], "").into_response())
        }
        Fault::EchoAuthorization => Err(fhir_json(
            StatusCode::FORBIDDEN,
            &outcome(
                "forbidden",
                &format!(
                    "not allowed for Authorization: {}",
                    authz.as_deref().unwrap_or("(none)")
                ),
            ),
        )),
    }
}

fn bearer_token(authorization: &str) -> Option<String> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

async fn smart_configuration(State(state): State<AppState>) -> Response {
    match state.config.lock().unwrap().smart_configuration.clone() {
        Some(doc) => axum::Json(doc).into_response(),
        None => fhir_json(
            StatusCode::NOT_FOUND,
            &outcome("not-found", "this server has no SMART configuration"),
        ),
    }
}

/// The CapabilityStatement (FHIR R4) this server serves.
pub fn capability_statement(auth: &ServerAuth) -> Value {
    let security_code = match auth {
        ServerAuth::None => None,
        ServerAuth::Basic { .. } => Some("Basic"),
        ServerAuth::Bearer { .. } => Some("OAuth"),
        ServerAuth::Jwt(_) => Some("SMART-on-FHIR"),
    };
    let mut rest = json!({
        "mode": "server",
        "resource": [{
            "type": "Patient",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": "name", "type": "string"},
                {"name": "_count", "type": "number"}
            ]
        }]
    });
    if let Some(code) = security_code {
        rest["security"] = json!({"service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": code}]}]});
        if let ServerAuth::Jwt(JwtAuth {
            token_endpoint: Some(token),
            ..
        }) = auth
        {
            rest["security"]["extension"] = json!([{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": token}]
            }]);
        }
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "fhirconn-testkit", "version": env!("CARGO_PKG_VERSION")},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [rest]
    })
}

fn patients() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Chalmers", "given": ["Peter"]}], "gender": "male", "birthDate": "1974-12-25"}),
        json!({"resourceType": "Patient", "id": "2", "name": [{"family": "Smith", "given": ["Jane"]}], "gender": "female", "birthDate": "1980-03-01"}),
    ]
}

async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = gate(&state, &headers, true).await {
        return r;
    }
    let auth = state.config.lock().unwrap().auth.clone();
    fhir_json(StatusCode::OK, &capability_statement(&auth))
}

async fn read_patient(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    match patients().into_iter().find(|p| p["id"] == id.as_str()) {
        Some(p) => fhir_json(StatusCode::OK, &p),
        None => fhir_json(
            StatusCode::NOT_FOUND,
            &outcome("not-found", &format!("Patient/{id} is not known")),
        ),
    }
}

async fn search_patients(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    let count: usize = q
        .get("_count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(50)
        .max(1);
    let offset: usize = q.get("_offset").and_then(|c| c.parse().ok()).unwrap_or(0);
    let name = q.get("name").map(|n| n.to_lowercase());
    let matches: Vec<Value> = patients()
        .into_iter()
        .filter(|p| match &name {
            Some(n) => p["name"][0]["family"]
                .as_str()
                .unwrap_or("")
                .to_lowercase()
                .starts_with(n.as_str()),
            None => true,
        })
        .collect();
    let total = matches.len();
    let entries: Vec<Value> = matches
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|p| json!({"fullUrl": format!("Patient/{}", p["id"].as_str().unwrap_or("")), "resource": p, "search": {"mode": "match"}}))
        .collect();
    let mut bundle =
        json!({"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entries});
    if offset + count < total {
        // Absolute, as FHIR requires; on this server's own origin.
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let base = state.config.lock().unwrap().base_path.clone();
        let mut next = format!(
            "http://{host}{}/Patient?_count={count}&_offset={}",
            base.trim_end_matches('/'),
            offset + count
        );
        if let Some(n) = &name {
            next.push_str(&format!("&name={n}"));
        }
        bundle["link"] = json!([{"relation": "next", "url": next}]);
    }
    fhir_json(StatusCode::OK, &bundle)
}

fn origin_of(headers: &HeaderMap, state: &AppState) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!(
        "http://{host}{}",
        state.config.lock().unwrap().base_path.trim_end_matches('/')
    )
}

async fn export_kickoff(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    let prefer = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !prefer.contains("respond-async") {
        return fhir_json(
            StatusCode::BAD_REQUEST,
            &outcome("invalid", "bulk export requires Prefer: respond-async"),
        );
    }
    let types: Vec<String> = q
        .get("_type")
        .map(|t| t.split(',').map(String::from).collect())
        .unwrap_or_else(|| vec!["Patient".into()]);
    let job = state.counters.export_seq.fetch_add(1, Ordering::SeqCst) + 1;
    let polls = state.config.lock().unwrap().export_polls;
    state
        .counters
        .exports
        .lock()
        .unwrap()
        .insert(job, (polls, types, false));
    let mut r = StatusCode::ACCEPTED.into_response();
    let status = format!("{}/$export-status/{job}", origin_of(&headers, &state));
    if let Ok(v) = HeaderValue::from_str(&status) {
        r.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    r
}

async fn export_kickoff_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(_group): Path<String>,
    q: Query<HashMap<String, String>>,
) -> Response {
    export_kickoff(State(state), headers, q).await
}

async fn export_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(job): Path<u64>,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    let retry_after = state.config.lock().unwrap().export_retry_after;
    let mut jobs = state.counters.exports.lock().unwrap();
    let Some(j) = jobs.get_mut(&job) else {
        return fhir_json(
            StatusCode::NOT_FOUND,
            &outcome("not-found", "no such export job"),
        );
    };
    if j.2 {
        return fhir_json(
            StatusCode::NOT_FOUND,
            &outcome("not-found", "the job was cancelled"),
        );
    }
    if j.0 > 0 {
        j.0 -= 1;
        let mut r = StatusCode::ACCEPTED.into_response();
        r.headers_mut()
            .insert("x-progress", HeaderValue::from_static("in progress"));
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        return r;
    }
    let base = origin_of(&headers, &state);
    let generated = state.counters.export_generated.lock().unwrap().clone();
    let output: Vec<Value> = match generated {
        Some(sizes) => (0..sizes.len())
            .map(|i| {
                json!({"type": "Observation",
                "url": format!("{base}/$export-file/{job}/{}", bulk_gen::file_name(i))})
            })
            .collect(),
        None => {
            j.1.iter()
                .map(|t| json!({"type": t, "url": format!("{base}/$export-file/{job}/{t}.ndjson")}))
                .collect()
        }
    };
    axum::Json(json!({
        "transactionTime": "2026-11-24T00:00:00Z",
        "request": format!("{base}/$export"),
        "requiresAccessToken": true,
        "output": output,
        "error": [],
    }))
    .into_response()
}

async fn export_cancel(State(state): State<AppState>, Path(job): Path<u64>) -> Response {
    match state.counters.exports.lock().unwrap().get_mut(&job) {
        Some(j) => {
            j.2 = true;
            StatusCode::ACCEPTED.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn export_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((job, name)): Path<(u64, String)>,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    state
        .counters
        .export_file_gets
        .lock()
        .unwrap()
        .push(format!("{job}/{name}"));
    let generated = state.counters.export_generated.lock().unwrap().clone();
    if let Some(size) = bulk_gen::index_of(&name).and_then(|i| generated?.get(i).copied()) {
        return bulk_gen::answer(size);
    }
    let ty = name.trim_end_matches(".ndjson").to_string();
    let trickle = *state.counters.export_trickle.lock().unwrap();
    if let Some((lines, every)) = trickle {
        let resource_type = ty.clone();
        let drip = futures_util::stream::unfold(0u32, move |i| {
            let ty = resource_type.clone();
            async move {
                if i >= lines {
                    return None;
                }
                tokio::time::sleep(every).await;
                let line = json!({"resourceType": ty, "id": format!("{i}")}).to_string() + "\n";
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(line)),
                    i + 1,
                ))
            }
        });
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/fhir+ndjson")],
            axum::body::Body::from_stream(drip),
        )
            .into_response();
    }
    let ty = ty.as_str();
    let lines: Vec<String> = match ty {
        "Patient" => patients().iter().map(|p| p.to_string()).collect(),
        other => (1..=3)
            .map(|i| json!({"resourceType": other, "id": format!("{i}")}).to_string())
            .collect(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        lines.join("\n") + "\n",
    )
        .into_response()
}

async fn create_patient(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(mut p) if p["resourceType"] == "Patient" => {
            p["id"] = json!("new-1");
            let mut r = fhir_json(StatusCode::CREATED, &p);
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_static("Patient/new-1/_history/1"),
            );
            r
        }
        _ => fhir_json(
            StatusCode::BAD_REQUEST,
            &outcome("invalid", "the body is not a Patient resource"),
        ),
    }
}

async fn update_patient(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(p) if p["resourceType"] == "Patient" && p["id"] == id.as_str() => {
            fhir_json(StatusCode::OK, &p)
        }
        _ => fhir_json(
            StatusCode::BAD_REQUEST,
            &outcome(
                "invalid",
                "the body must be the Patient with the id in the URL",
            ),
        ),
    }
}

async fn delete_patient(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(_id): Path<String>,
) -> Response {
    if let Err(r) = gate(&state, &headers, false).await {
        return r;
    }
    StatusCode::NO_CONTENT.into_response()
}
