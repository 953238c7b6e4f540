//! A mock Microsoft Entra ID (Azure AD) v2.0 endpoint at its own authority host: discovery,
//! the device authorization endpoint (RFC 8628), `authorize` for the auth-code flow with PKCE
//! (S256; the mock signs the user in at once and redirects back), and the token endpoint for the
//! device-code, authorization-code, refresh-token and client-credentials grants. Access tokens
//! are JWTs with `aud`, `tid`, `iss` and `scp` (or `roles` for applications). Like Entra, it
//! refuses the v1 `resource` parameter on v2.0 endpoints. Client credentials are a secret or,
//! for workload identity federation, a client assertion that must be the current content of
//! the client's federated token file (a JWT for `api://AzureADTokenExchange`, not expired).

use crate::authorize::{
    now_secs, parse_form, random_token, CodeGrant, CodeRefusal, Codes, EndpointLog, RefreshRefusal,
    RefreshTokens, Signer,
};
use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The tenant id the mock issues tokens for.
pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// What the next poll of a pending device code answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePoll {
    /// `authorization_pending`.
    Pending,
    /// `slow_down`.
    SlowDown,
    /// The person approved: issue tokens.
    Approve,
    /// `access_denied`.
    Deny,
    /// `expired_token`.
    Expire,
}

/// Mock settings.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Public clients (device code, auth code).
    pub public_clients: Vec<String>,
    /// Confidential clients: (client id, secret).
    pub confidential_clients: Vec<(String, String)>,
    /// Workload-identity clients: (client id, federated token file); the assertion must be
    /// the file's content when the request arrives.
    pub federated_clients: Vec<(String, std::path::PathBuf)>,
    /// Lifetime of access tokens.
    pub access_token_lifetime: Duration,
    /// The device-code polling interval it asks for (seconds).
    pub interval: u64,
}

impl Default for EntraConfig {
    fn default() -> Self {
        Self {
            public_clients: vec!["public-app".into()],
            confidential_clients: vec![("daemon-app".into(), "daemon-secret".into())],
            federated_clients: Vec::new(),
            access_token_lifetime: Duration::from_secs(3600),
            interval: 1,
        }
    }
}

impl EntraConfig {
    /// The defaults with the confidential client `daemon-app` holding `secret`.
    pub fn daemon_secret(secret: &str) -> Self {
        Self {
            confidential_clients: vec![("daemon-app".into(), secret.into())],
            ..Self::default()
        }
    }
}

struct Pending {
    client_id: String,
    scope: String,
    script: VecDeque<DevicePoll>,
    last_poll: Option<SystemTime>,
}

struct State_ {
    base: String,
    config: Mutex<EntraConfig>,
    signer: Signer,
    devices: Mutex<HashMap<String, Pending>>,
    device_script: Mutex<Vec<DevicePoll>>,
    codes: Codes,
    refresh: RefreshTokens,
    seq: AtomicU64,
    polls_too_fast: AtomicU64,
    log: EndpointLog,
    requests: Mutex<Vec<HashMap<String, String>>>,
    issued: Mutex<Vec<String>>,
}

/// A running mock Entra; stops when dropped.
pub struct MockEntra {
    state: Arc<State_>,
    _running: crate::Running,
}

impl std::fmt::Debug for MockEntra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockEntra")
            .field("authority_host", &self.state.base)
            .finish_non_exhaustive()
    }
}

impl MockEntra {
    /// Starts the mock on 127.0.0.1 with a free port; its authority host is
    /// `http://127.0.0.1:PORT`.
    pub async fn start(config: EntraConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let state = Arc::new(State_ {
            base: format!("http://{}", listener.local_addr()?),
            config: Mutex::new(config),
            signer: Signer::es256("entra-mock"),
            devices: Mutex::default(),
            device_script: Mutex::new(vec![DevicePoll::Approve]),
            codes: Codes::default(),
            refresh: RefreshTokens::default(),
            seq: AtomicU64::new(0),
            polls_too_fast: AtomicU64::new(0),
            log: EndpointLog::default(),
            requests: Mutex::default(),
            issued: Mutex::default(),
        });
        let app = Router::new()
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(keys))
            .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(state.clone());
        Ok(Self {
            _running: crate::serve(listener, app),
            state,
        })
    }

    /// The authority host, e.g. `http://127.0.0.1:41234`.
    pub fn authority_host(&self) -> String {
        self.state.base.clone()
    }

    /// The issuer of tokens for [`TENANT_ID`].
    pub fn issuer(&self) -> String {
        format!("{}/{TENANT_ID}/v2.0", self.state.base)
    }

    /// The signing keys, for a resource server.
    pub fn jwks(&self) -> JwkSet {
        self.state.signer.jwks.clone()
    }

    /// A verifier for a FHIR server with this audience.
    pub fn verifier(&self, audience: &str) -> crate::JwtAuth {
        crate::JwtAuth {
            issuer: self.issuer(),
            audience: audience.to_string(),
            jwks: self.jwks(),
            token_endpoint: None,
        }
    }

    /// The challenge Microsoft's FHIR server sends on a 401 for this tenant and audience.
    pub fn challenge(&self, audience: &str) -> String {
        format!(
            "Bearer authorization_uri=\"{}/{TENANT_ID}\", resource_id=\"{audience}\", realm=\"{audience}\"",
            self.state.base
        )
    }

    /// What the polls of the next device code answer, in order (the last one repeats).
    pub fn script_device_polls(&self, script: Vec<DevicePoll>) {
        *self.state.device_script.lock().unwrap() = script;
    }

    /// Forgets every refresh token (as if they expired or were revoked).
    pub fn expire_refresh_tokens(&self) {
        self.state.refresh.clear();
    }

    /// Changes the access token lifetime.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.state.config.lock().unwrap().access_token_lifetime = lifetime;
    }

    /// Requests the token endpoint received.
    pub fn token_requests(&self) -> u64 {
        self.state.log.requests()
    }

    /// Device-code polls that came sooner than the interval allowed.
    pub fn polls_too_fast(&self) -> u64 {
        self.state.polls_too_fast.load(Ordering::SeqCst)
    }

    /// The form parameters of every token request, in order.
    pub fn token_request_params(&self) -> Vec<HashMap<String, String>> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every access and refresh token issued so far, in order (for leak checks: none of them
    /// may appear in output or logs).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }

    /// The last error the token endpoint answered.
    pub fn last_error(&self) -> Option<String> {
        self.state.log.last_error()
    }
}

fn tenant_ok(tenant: &str) -> bool {
    matches!(
        tenant,
        TENANT_ID | "common" | "organizations" | "contoso.onmicrosoft.com"
    )
}

async fn discovery(State(s): State<Arc<State_>>, Path(tenant): Path<String>) -> Response {
    if !tenant_ok(&tenant) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_tenant"})),
        )
            .into_response();
    }
    // Like Entra: the multi-tenant documents name the issuer with a `{tenantid}` template.
    let issuer_tenant = if tenant == "common" || tenant == "organizations" {
        "{tenantid}".to_string()
    } else {
        TENANT_ID.to_string()
    };
    let b = &s.base;
    axum::Json(json!({
        "issuer": format!("{b}/{issuer_tenant}/v2.0"),
        "authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{b}/{tenant}/oauth2/v2.0/token"),
        "device_authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/devicecode"),
        "jwks_uri": format!("{b}/{tenant}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "tenant_region_scope": "EU",
    }))
    .into_response()
}

async fn keys(State(s): State<Arc<State_>>) -> Response {
    axum::Json(&s.signer.jwks).into_response()
}

/// An error answer as Entra gives it (RFC 6749 §5.2 with `error_codes`).
fn oauth_error(s: &State_, status: StatusCode, error: &str, description: &str) -> Response {
    s.log
        .refuse_with(status, error, description, json!({"error_codes": [0]}))
}

/// Checks a delegated scope: `{aud}/user_impersonation`, optionally `offline_access` and
/// `openid`/`profile`; returns the audience.
fn delegated_audience(scope: &str) -> Result<String, String> {
    let mut aud = None;
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if let Some(a) = s.strip_suffix("/user_impersonation") {
            aud = Some(a.to_string());
        } else if !matches!(s, "offline_access" | "openid" | "profile") {
            return Err(format!("AADSTS70011: the scope '{s}' is not valid here"));
        }
    }
    aud.ok_or_else(|| "AADSTS70011: no {resource}/user_impersonation scope".to_string())
}

async fn devicecode(
    State(s): State<Arc<State_>>,
    Path(tenant): Path<String>,
    body: String,
) -> Response {
    let p = match parse_form(&body) {
        Ok(p) => p,
        Err(e) => return oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    if !tenant_ok(&tenant) {
        return oauth_error(
            &s,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90002: tenant not found",
        );
    }
    if p.contains_key("resource") {
        return oauth_error(
            &s,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS901002: The 'resource' request parameter is not supported.",
        );
    }
    let client_id = p.get("client_id").cloned().unwrap_or_default();
    if !s.config.lock().unwrap().public_clients.contains(&client_id) {
        return oauth_error(
            &s,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: application not found or not a public client",
        );
    }
    let scope = p.get("scope").cloned().unwrap_or_default();
    if let Err(e) = delegated_audience(&scope) {
        return oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_scope", &e);
    }
    let device_code = random_token();
    let user_code = format!("F{}", s.seq.fetch_add(1, Ordering::SeqCst) + 1000);
    let script: VecDeque<DevicePoll> = s.device_script.lock().unwrap().iter().copied().collect();
    s.devices.lock().unwrap().insert(
        device_code.clone(),
        Pending {
            client_id,
            scope,
            script,
            last_poll: None,
        },
    );
    let interval = s.config.lock().unwrap().interval;
    let verification_uri = format!("{}/devicelogin", s.base);
    axum::Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "expires_in": 900,
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."),
    }))
    .into_response()
}

async fn authorize(
    State(s): State<Arc<State_>>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_string()).into_response();
    if !tenant_ok(&tenant) {
        return bad("unknown tenant");
    }
    if q.contains_key("resource") {
        return bad("AADSTS901002: The 'resource' request parameter is not supported.");
    }
    let client_id = q.get("client_id").cloned().unwrap_or_default();
    if !s.config.lock().unwrap().public_clients.contains(&client_id) {
        return bad("AADSTS700016: unknown client");
    }
    let (Some(redirect_uri), Some(challenge)) = (q.get("redirect_uri"), q.get("code_challenge"))
    else {
        return bad("redirect_uri and code_challenge are required");
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return bad("AADSTS501491: code_challenge_method must be S256");
    }
    if q.get("response_type").map(String::as_str) != Some("code") {
        return bad("response_type must be code");
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    if let Err(e) = delegated_audience(&scope) {
        return bad(&e);
    }
    // The person signs in at once; the browser is sent back with a code.
    let grant = CodeGrant {
        client_id,
        scope,
        redirect_uri: redirect_uri.clone(),
        challenge: challenge.clone(),
    };
    s.codes
        .redirect(grant, q.get("state").map(String::as_str))
        .unwrap_or_else(|| bad("invalid redirect_uri"))
}

fn issue(s: &State_, client_id: &str, audience: &str, scope: &str, app: bool) -> Response {
    let cfg = s.config.lock().unwrap().clone();
    let t = now_secs();
    let lifetime = cfg.access_token_lifetime.as_secs().max(1);
    let mut claims = json!({
        "aud": audience,
        "iss": format!("{}/{TENANT_ID}/v2.0", s.base),
        "tid": TENANT_ID,
        "azp": client_id,
        "iat": t,
        "nbf": t,
        "exp": t + lifetime,
        "ver": "2.0",
        "uti": random_token(),
    });
    if app {
        claims["roles"] = json!([]);
        claims["oid"] = json!("app-object-id");
    } else {
        claims["scp"] = json!("user_impersonation");
        claims["oid"] = json!("user-object-id");
        claims["preferred_username"] = json!("alex@contoso.example");
    }
    let access_token = match s.signer.sign(&claims) {
        Ok(t) => t,
        Err(e) => {
            return oauth_error(
                s,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &e.to_string(),
            )
        }
    };
    s.issued.lock().unwrap().push(access_token.clone());
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if !app && scope.split(' ').any(|x| x == "offline_access") {
        let rt = s.refresh.issue("rt-", client_id, scope);
        s.issued.lock().unwrap().push(rt.clone());
        body["refresh_token"] = json!(rt);
    }
    axum::Json(body).into_response()
}

async fn token(State(s): State<Arc<State_>>, Path(tenant): Path<String>, body: String) -> Response {
    s.log.request();
    let p = match parse_form(&body) {
        Ok(p) => p,
        Err(e) => return oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    s.requests.lock().unwrap().push(p.clone());
    if !tenant_ok(&tenant) {
        return oauth_error(
            &s,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90002: tenant not found",
        );
    }
    if p.contains_key("resource") {
        return oauth_error(
            &s,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS901002: The 'resource' request parameter is not supported.",
        );
    }
    let client_id = p.get("client_id").cloned().unwrap_or_default();
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    match get("grant_type").as_str() {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = get("device_code");
            let mut devices = s.devices.lock().unwrap();
            let Some(d) = devices.get_mut(&code) else {
                return oauth_error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "AADSTS70000: unknown device code",
                );
            };
            if d.client_id != client_id {
                return oauth_error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the device code belongs to another client",
                );
            }
            let interval = Duration::from_secs(s.config.lock().unwrap().interval);
            let nowt = SystemTime::now();
            if let Some(last) = d.last_poll {
                if nowt.duration_since(last).unwrap_or_default() + Duration::from_millis(200)
                    < interval
                {
                    s.polls_too_fast.fetch_add(1, Ordering::SeqCst);
                }
            }
            d.last_poll = Some(nowt);
            let step = if d.script.len() > 1 {
                d.script.pop_front().unwrap_or(DevicePoll::Approve)
            } else {
                d.script.front().copied().unwrap_or(DevicePoll::Approve)
            };
            match step {
                DevicePoll::Pending => oauth_error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "authorization_pending",
                    "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending.",
                ),
                DevicePoll::SlowDown => {
                    // From now on the client must wait 5 s longer (RFC 8628 §3.5).
                    s.config.lock().unwrap().interval += 5;
                    oauth_error(&s, StatusCode::BAD_REQUEST, "slow_down", "polling too fast")
                }
                DevicePoll::Deny => oauth_error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "access_denied",
                    "AADSTS70000: the user declined",
                ),
                DevicePoll::Expire => oauth_error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "expired_token",
                    "AADSTS70019: the device code expired",
                ),
                DevicePoll::Approve => {
                    let scope = d.scope.clone();
                    devices.remove(&code);
                    drop(devices);
                    let aud = delegated_audience(&scope).unwrap_or_default();
                    issue(&s, &client_id, &aud, &scope, false)
                }
            }
        }
        "authorization_code" => match s.codes.redeem(&p, &client_id) {
            Ok(c) => {
                let aud = delegated_audience(&c.scope).unwrap_or_default();
                issue(&s, &client_id, &aud, &c.scope, false)
            }
            Err(why) => oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_grant", match why {
                CodeRefusal::Unknown => "AADSTS70008: the code is unknown or was used",
                CodeRefusal::OtherClient | CodeRefusal::RedirectUri => {
                    "AADSTS50148: client_id or redirect_uri differ from the authorize request"
                }
                CodeRefusal::NoVerifier | CodeRefusal::WrongVerifier => {
                    "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the authorization request."
                }
            }),
        },
        "refresh_token" => match s.refresh.redeem(&get("refresh_token"), &client_id) {
            Ok(scope) => {
                let aud = delegated_audience(&scope).unwrap_or_default();
                issue(&s, &client_id, &aud, &scope, false)
            }
            Err(why) => oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_grant", match why {
                RefreshRefusal::Unknown => {
                    "AADSTS700082: The refresh token has expired due to inactivity."
                }
                RefreshRefusal::OtherClient => "the refresh token belongs to another client",
            }),
        },
        "client_credentials" if p.contains_key("client_assertion") => {
            if let Err(e) = federated(&s, &p) {
                return oauth_error(&s, StatusCode::UNAUTHORIZED, "invalid_client", &e);
            }
            let scope = get("scope");
            let Some(aud) = scope.strip_suffix("/.default") else {
                return oauth_error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "AADSTS1002012",
                );
            };
            issue(&s, &client_id, aud, &scope, true)
        }
        "client_credentials" => {
            let ok = s
                .config
                .lock()
                .unwrap()
                .confidential_clients
                .iter()
                .any(|(id, secret)| *id == client_id && *secret == get("client_secret"));
            if !ok {
                return oauth_error(
                    &s,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided.",
                );
            }
            let scope = get("scope");
            let Some(aud) = scope.strip_suffix("/.default") else {
                return oauth_error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "AADSTS1002012: client credentials need a {resource}/.default scope",
                );
            };
            issue(&s, &client_id, aud, &scope, true)
        }
        other => oauth_error(
            &s,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("AADSTS70003: grant type '{other}' is not supported"),
        ),
    }
}

/// Workload identity federation: a jwt-bearer client assertion, no secret, and the assertion
/// is the current content of the client's federated token file, a JWT for
/// `api://AzureADTokenExchange` that has not expired.
fn federated(s: &State_, p: &HashMap<String, String>) -> Result<(), String> {
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    if get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        || p.contains_key("client_secret")
    {
        return Err("AADSTS700024: a jwt-bearer client_assertion and no client_secret".into());
    }
    let clients = s.config.lock().unwrap().federated_clients.clone();
    let Some((_, file)) = clients.iter().find(|(id, _)| id == get("client_id")) else {
        return Err("AADSTS700016: application not found (no federated credential)".into());
    };
    let current = std::fs::read_to_string(file).unwrap_or_default();
    if get("client_assertion") != current.trim() {
        return Err(
            "AADSTS700213: No matching federated identity record found for presented \
                    assertion (not the token file's current content)"
                .into(),
        );
    }
    let claims = crate::azure_identity::federated_claims(get("client_assertion"))?;
    let aud_ok = claims["aud"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "api://AzureADTokenExchange"))
        || claims["aud"] == "api://AzureADTokenExchange";
    if !aud_ok || claims["exp"].as_u64().is_none_or(|exp| exp <= now_secs()) {
        return Err(
            "AADSTS700024: the assertion is expired or not for api://AzureADTokenExchange".into(),
        );
    }
    Ok(())
}
