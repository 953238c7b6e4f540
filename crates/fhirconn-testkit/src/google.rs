//! Google Cloud's service-account token endpoint and the GCE metadata server, on loopback.
//!
//! [`MockGoogle`] serves both from one origin:
//! - `POST /token`: the RFC 7523 JWT-bearer grant as Google's "OAuth 2.0 for Server to Server
//!   Applications" documents it: a form with `grant_type=urn:ietf:params:oauth:grant-type:
//!   jwt-bearer` and `assertion`, a JWT signed RS256 by a registered service account's key,
//!   with `iss` the account's email, `scope` (space-separated), `aud` the token URI, `iat` and
//!   `exp` at most one hour apart, optional `sub` (domain-wide delegation) and, when present,
//!   the header `kid` naming the account's `private_key_id`. Refusals are Google's: HTTP 400
//!   `invalid_grant` (or `invalid_scope`), `invalid_request`, `unsupported_grant_type`.
//! - `GET /computeMetadata/v1/instance/service-accounts/default/token?scopes=a,b`: answered
//!   only with the request header `Metadata-Flavor: Google` and without `X-Forwarded-For`
//!   (403 otherwise), always with `Metadata-Flavor: Google` on the answer (unless a test
//!   turns it off).
//!
//! Both issue ES256 JWT access tokens a [`crate::FhirServer`] verifies ([`MockGoogle::verifier`]).
//! Every assertion received is recorded, decoded but unverified, for assertions in tests.
//! [`MockGoogle::token_requests`] and [`MockGoogle::tokens_issued`] count both token paths.

use crate::authorize::{now_secs, EndpointLog, Signer};
use axum::{
    extract::{RawQuery, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The JWT-bearer authorization grant of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The metadata server's token path for the default service account.
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// The Cloud Healthcare API scope.
pub const HEALTHCARE_SCOPE: &str = "https://www.googleapis.com/auth/cloud-healthcare";
/// The longest assertion lifetime Google accepts (`exp` - `iat`).
pub const MAX_ASSERTION_LIFETIME: u64 = 3600;

/// A service account and its RSA key pair, as Google's key file describes it.
pub struct ServiceAccount {
    /// `client_email`: the JWT issuer.
    pub client_email: String,
    /// `private_key_id`: the JWT header's `kid`.
    pub private_key_id: String,
    /// `private_key`: PKCS#8 PEM of an RSA 2048 key.
    pub private_key_pem: String,
    public: Jwk,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// A new account with a fresh RSA 2048 key and a random key id.
    pub fn generate(client_email: &str) -> Self {
        let pair =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("generating an RSA key");
        let pem = pair.serialize_pem();
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("our own RSA key");
        let public = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("public JWK of our key");
        let mut id = [0u8; 20];
        getrandom::fill(&mut id).expect("random key id");
        Self {
            client_email: client_email.into(),
            private_key_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            private_key_pem: pem,
            public,
        }
    }

    /// Another key under this account's email and key id (its signatures do not verify).
    pub fn impostor(&self) -> Self {
        Self {
            client_email: self.client_email.clone(),
            private_key_id: self.private_key_id.clone(),
            ..Self::generate(&self.client_email)
        }
    }

    /// The service-account key file (JSON) Google's console hands out, naming `token_uri`.
    pub fn key_file(&self, token_uri: &str) -> Value {
        json!({
            "type": "service_account",
            "project_id": "fhirconn-testkit",
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        })
    }
}

/// Settings of the mock.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// The `aud` of the access tokens it issues (what the FHIR server expects).
    pub audience: String,
    /// Scopes a service account may ask for (others are `invalid_scope`).
    pub scopes: Vec<String>,
    /// Lifetime of access tokens (`expires_in`).
    pub token_lifetime: Duration,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        Self {
            audience: "fhirconn-testkit".into(),
            scopes: vec![
                HEALTHCARE_SCOPE.into(),
                "https://www.googleapis.com/auth/cloud-platform".into(),
            ],
            token_lifetime: Duration::from_secs(3599),
        }
    }
}

/// A JWT assertion as the token endpoint received it (decoded, not verified).
#[derive(Debug, Clone)]
pub struct ReceivedAssertion {
    /// The JOSE header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
}

/// A request to the metadata server's token path.
#[derive(Debug, Clone)]
pub struct MetadataRequest {
    /// The query string (e.g. `scopes=a,b`), if any.
    pub query: Option<String>,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
}

struct GoogleState {
    config: Mutex<GoogleConfig>,
    token_uri: String,
    issuer: String,
    accounts: Mutex<Vec<(String, String, Jwk)>>,
    signer: Signer,
    assertions: Mutex<Vec<ReceivedAssertion>>,
    metadata: Mutex<Vec<MetadataRequest>>,
    metadata_flavor: AtomicBool,
    log: EndpointLog,
}

/// The mock Google token endpoint and metadata server; stops when dropped.
pub struct MockGoogle {
    addr: SocketAddr,
    account: ServiceAccount,
    state: Arc<GoogleState>,
    _running: crate::Running,
}

impl std::fmt::Debug for MockGoogle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGoogle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockGoogle {
    /// Starts on 127.0.0.1 with a free port and one registered service account
    /// ([`MockGoogle::account`]). Call inside a tokio runtime.
    pub async fn start(config: GoogleConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let account = ServiceAccount::generate("fhirconn@testkit.iam.gserviceaccount.com");
        let state = Arc::new(GoogleState {
            config: Mutex::new(config),
            token_uri: format!("http://{addr}/token"),
            issuer: format!("http://{addr}"),
            accounts: Mutex::new(Vec::new()),
            signer: Signer::es256("testkit-google-es256"),
            assertions: Mutex::new(Vec::new()),
            metadata: Mutex::new(Vec::new()),
            metadata_flavor: AtomicBool::new(true),
            log: EndpointLog::default(),
        });
        let app = Router::new()
            .route("/token", post(token))
            .route(METADATA_TOKEN_PATH, get(metadata_token))
            .with_state(state.clone());
        let running = crate::serve(listener, app);
        let google = Self {
            addr,
            account,
            state,
            _running: running,
        };
        google.register(&google.account);
        Ok(google)
    }

    /// The registered service account.
    pub fn account(&self) -> &ServiceAccount {
        &self.account
    }

    /// Registers another service account's public key (or replaces one with the same email).
    pub fn register(&self, account: &ServiceAccount) {
        let mut a = self.state.accounts.lock().unwrap();
        a.retain(|(email, _, _)| *email != account.client_email);
        a.push((
            account.client_email.clone(),
            account.private_key_id.clone(),
            account.public.clone(),
        ));
    }

    /// The token endpoint (`token_uri` of the key file).
    pub fn token_uri(&self) -> String {
        self.state.token_uri.clone()
    }

    /// The key file of the registered account, naming this token endpoint.
    pub fn key_file(&self) -> Value {
        self.account.key_file(&self.token_uri())
    }

    /// `host:port`, as `GCE_METADATA_HOST` names a metadata server.
    pub fn metadata_host(&self) -> String {
        self.addr.to_string()
    }

    /// A verifier for a FHIR server accepting this mock's access tokens for `audience`.
    pub fn verifier(&self, audience: &str) -> crate::JwtAuth {
        crate::JwtAuth {
            issuer: self.state.issuer.clone(),
            audience: audience.into(),
            jwks: self.state.signer.jwks.clone(),
            token_endpoint: None,
        }
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.config.lock().unwrap().token_lifetime = lifetime;
    }

    /// Whether the metadata server's answers carry `Metadata-Flavor: Google` (default true).
    pub fn set_metadata_flavor(&self, on: bool) {
        self.state.metadata_flavor.store(on, Ordering::SeqCst);
    }

    /// Every assertion the token endpoint received, in order.
    pub fn assertions(&self) -> Vec<ReceivedAssertion> {
        self.state.assertions.lock().unwrap().clone()
    }

    /// Every request to the metadata server's token path, in order.
    pub fn metadata_requests(&self) -> Vec<MetadataRequest> {
        self.state.metadata.lock().unwrap().clone()
    }

    crate::authorize::endpoint_log_accessors!();
}

/// Google answers every refusal of the token endpoint with 400.
fn refuse(state: &GoogleState, error: &str, description: &str) -> Response {
    state
        .log
        .refuse(StatusCode::BAD_REQUEST, error, description)
}

/// An ES256 access token for `subject` with the configured audience and lifetime.
fn issue(state: &GoogleState, subject: &str, scope: &str) -> Value {
    let cfg = state.config.lock().unwrap().clone();
    let now = now_secs();
    let lifetime = cfg.token_lifetime.as_secs().max(1);
    let seq = state.log.issue();
    let claims = json!({"iss": state.issuer, "sub": subject, "aud": cfg.audience, "iat": now,
        "exp": now + lifetime, "scope": scope, "jti": format!("g-{seq}-{now}")});
    let token = state.signer.sign(&claims).unwrap_or_default();
    json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})
}

async fn token(
    State(state): State<Arc<GoogleState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    state.log.request();
    if !crate::authorize::is_form(&headers) {
        return refuse(&state, "invalid_request", "the body must be a form");
    }
    let params = match crate::authorize::parse_form(&body) {
        Ok(p) => p,
        Err(why) => return refuse(&state, "invalid_request", &why),
    };
    match params.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER_GRANT) => {}
        Some(_) => return refuse(&state, "unsupported_grant_type", "Invalid grant_type."),
        None => {
            return refuse(
                &state,
                "invalid_request",
                "Missing required parameter: grant_type",
            )
        }
    }
    let Some(jwt) = params.get("assertion") else {
        return refuse(
            &state,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    if let Ok(d) = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt) {
        let header = serde_json::to_value(&d.header).unwrap_or_default();
        state.assertions.lock().unwrap().push(ReceivedAssertion {
            header,
            claims: d.claims,
        });
    }
    match verify(&state, jwt) {
        Ok((subject, scope)) => {
            let mut resp = axum::Json(issue(&state, &subject, &scope)).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err((error, why)) => refuse(&state, error, &why),
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    scope: String,
    iat: u64,
    exp: u64,
    sub: Option<String>,
}

/// Verifies an assertion; `Ok` is the token's subject (the account or the delegating user)
/// and the granted scope.
fn verify(state: &GoogleState, jwt: &str) -> Result<(String, String), (&'static str, String)> {
    let grant = |why: &str| ("invalid_grant", why.to_string());
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| grant("Invalid JWT."))?;
    if header.alg != Algorithm::RS256 {
        return Err(grant("Invalid JWT: the algorithm must be RS256."));
    }
    let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt)
        .map_err(|_| grant("Invalid JWT."))?
        .claims;
    let iss = unverified["iss"].as_str().unwrap_or_default();
    let account = state
        .accounts
        .lock()
        .unwrap()
        .iter()
        .find(|(email, _, _)| email == iss)
        .cloned();
    let Some((email, key_id, public)) = account else {
        return Err(grant("Invalid JWT: unknown service account in 'iss'."));
    };
    if header.kid.as_deref().is_some_and(|k| k != key_id) {
        return Err(grant("Invalid JWT: 'kid' names no key of this account."));
    }
    let key = DecodingKey::from_jwk(&public).map_err(|_| grant("Invalid key."))?;
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[state.token_uri.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.leeway = 5;
    let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &v)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            grant(match e.kind() {
                K::InvalidSignature => "Invalid JWT Signature.",
                K::ExpiredSignature => {
                    "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
                }
                K::InvalidAudience => "Invalid JWT: 'aud' is not the token URI.",
                _ => "Invalid JWT.",
            })
        })?
        .claims;
    debug_assert_eq!(claims.iss, email);
    let now = now_secs();
    if claims.exp < claims.iat
        || claims.exp - claims.iat > MAX_ASSERTION_LIFETIME
        || claims.iat > now + 60
    {
        return Err(grant(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let scopes: Vec<&str> = claims.scope.split(' ').filter(|s| !s.is_empty()).collect();
    if scopes.is_empty() {
        return Err((
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.".into(),
        ));
    }
    let allowed = state.config.lock().unwrap().scopes.clone();
    if let Some(s) = scopes.iter().find(|s| !allowed.iter().any(|a| a == *s)) {
        return Err(("invalid_scope", format!("Invalid OAuth scope: {s}")));
    }
    Ok((claims.sub.unwrap_or(email), scopes.join(" ")))
}

async fn metadata_token(
    State(state): State<Arc<GoogleState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    state.log.request();
    state.metadata.lock().unwrap().push(MetadataRequest {
        query: query.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or("?").to_string(),
                )
            })
            .collect(),
    });
    let flavored = headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) == Some("Google");
    if !flavored || headers.contains_key("x-forwarded-for") {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html")],
            "Missing required header \"Metadata-Flavor\"",
        )
            .into_response();
    }
    let scopes: Vec<String> = query
        .iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .filter(|(k, _)| k == "scopes")
        .flat_map(|(_, v)| v.split(',').map(String::from).collect::<Vec<_>>())
        .collect();
    let scope = if scopes.is_empty() {
        "https://www.googleapis.com/auth/cloud-platform".to_string()
    } else {
        scopes.join(" ")
    };
    let body = issue(&state, "default", &scope);
    let mut resp = axum::Json(body).into_response();
    if state.metadata_flavor.load(Ordering::SeqCst) {
        resp.headers_mut()
            .insert("metadata-flavor", HeaderValue::from_static("Google"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Header;

    fn form(pairs: &[(&str, &str)]) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }

    fn assertion(account: &ServiceAccount, aud: &str, claims: Value) -> String {
        let now = now_secs();
        let mut c = json!({"iss": account.client_email, "scope": HEALTHCARE_SCOPE,
            "aud": aud, "iat": now, "exp": now + 3600});
        c.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(account.private_key_id.clone());
        let key = EncodingKey::from_rsa_pem(account.private_key_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&h, &c, &key).unwrap()
    }

    /// The token endpoint checked with hand-made requests (not our plugin).
    #[tokio::test]
    async fn the_token_endpoint_checks_what_google_documents() {
        let g = MockGoogle::start(GoogleConfig::default()).await.unwrap();
        let c = reqwest::Client::new();
        let post = |body: String| {
            c.post(g.token_uri())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
        };
        let send = |jwt: String| {
            post(form(&[
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", &jwt),
            ]))
        };
        let a = g.account();
        let ok = send(assertion(a, &g.token_uri(), json!({}))).await.unwrap();
        assert_eq!(ok.status(), 200);
        let v: Value = serde_json::from_str(&ok.text().await.unwrap()).unwrap();
        assert_eq!(v["token_type"], "Bearer");
        assert!(v["expires_in"].as_u64().unwrap() > 3000);
        let cases = [
            (
                json!({"aud": "https://oauth2.googleapis.com/token"}),
                "'aud'",
            ),
            (json!({"exp": now_secs() + 3700}), "short-lived"),
            (
                json!({"scope": "https://www.googleapis.com/auth/gmail"}),
                "Invalid OAuth scope",
            ),
            (json!({"scope": ""}), "Invalid OAuth scope"),
            (
                json!({"iss": "nobody@x.iam.gserviceaccount.com"}),
                "unknown service account",
            ),
        ];
        for (claims, needle) in cases {
            let r = send(assertion(a, &g.token_uri(), claims.clone()))
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{claims}");
            assert!(
                g.last_error().unwrap().contains(needle),
                "{claims}: {:?}",
                g.last_error()
            );
        }
        // Another key under the account's name: the signature does not verify.
        let rogue = a.impostor();
        send(assertion(&rogue, &g.token_uri(), json!({})))
            .await
            .unwrap();
        assert!(g.last_error().unwrap().contains("Signature"));
        post(form(&[("grant_type", "client_credentials")]))
            .await
            .unwrap();
        assert!(g
            .last_error()
            .unwrap()
            .starts_with("unsupported_grant_type"));
        assert_eq!(g.assertions().len(), 7);
        assert_eq!(g.tokens_issued(), 1);
    }

    #[tokio::test]
    async fn the_metadata_server_wants_its_header_and_answers_with_it() {
        let g = MockGoogle::start(GoogleConfig::default()).await.unwrap();
        let url = format!(
            "http://{}{METADATA_TOKEN_PATH}?scopes=a,b",
            g.metadata_host()
        );
        let c = reqwest::Client::new();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let flavored = || c.get(&url).header("Metadata-Flavor", "Google");
        let forwarded = flavored().header("X-Forwarded-For", "10.0.0.1");
        assert_eq!(forwarded.send().await.unwrap().status(), 403);
        let r = flavored().send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["metadata-flavor"], "Google");
        g.set_metadata_flavor(false);
        let r = flavored().send().await.unwrap();
        assert!(r.headers().get("metadata-flavor").is_none());
        assert_eq!(
            g.metadata_requests()[0].query.as_deref(),
            Some("scopes=a,b")
        );
        assert_eq!(g.tokens_issued(), 2);
    }
}
