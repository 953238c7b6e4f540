//! `SmartLaunchIdp`: a SMART App Launch 2.x authorization server for the standalone launch,
//! strict per the specifications it follows rather than per our plugin: the authorize endpoint
//! (RFC 6749 §4.1.1, RFC 7636 §4.3, SMART "authorize request": `response_type=code`, a known
//! `client_id`, the registered `redirect_uri` character for character, `scope`, `state`, `aud`
//! naming the FHIR server, `code_challenge` with method `S256`) signs the person in at once and
//! redirects with `code` and the same `state`; the token endpoint (RFC 6749 §4.1.3, RFC 7636
//! §4.6) redeems a code once, only with the same client and `redirect_uri` and the matching
//! `code_verifier`, authenticates confidential clients (`client_secret_basic`, or
//! `private_key_jwt` checked as RFC 7523 §3 requires), answers with the launch context
//! (`patient`, `encounter`, `need_patient_banner`, `smart_style_url`, an `id_token` with
//! `fhirUser`) and rotates refresh tokens (a redeemed refresh token is never accepted again).
//! Access tokens are ES256 JWTs for [`SmartLaunchIdp::verifier`].

use crate::authorize::{
    basic_credentials, now_secs, random_token, CodeGrant, CodeRefusal, Codes, EndpointLog,
    RefreshRefusal, RefreshTokens, Signer,
};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use jsonwebtoken::jwk::JwkSet;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How the authorization server is set up (changeable while it runs).
#[derive(Debug, Clone)]
pub struct SmartLaunchConfig {
    /// Public clients (PKCE, no secret).
    pub public_clients: Vec<String>,
    /// Confidential clients with a secret (`client_secret_basic`): (client id, secret).
    pub secret_clients: Vec<(String, String)>,
    /// Confidential clients with a registered public key set (`private_key_jwt`).
    pub key_clients: Vec<(String, JwkSet)>,
    /// The registered redirect URI (compared character for character).
    pub redirect_uri: String,
    /// The FHIR server's base URL, which `aud` must name.
    pub audience: String,
    /// The launch context answered with a code's tokens (`patient`, `encounter`, ...).
    pub context: Value,
    /// The signed-in user (`fhirUser` in the id_token when `openid fhirUser` were asked).
    pub fhir_user: String,
    /// Whether a refresh answer repeats the launch context (SMART allows either).
    pub context_on_refresh: bool,
}

impl Default for SmartLaunchConfig {
    fn default() -> Self {
        Self {
            public_clients: vec!["smart-app".into()],
            secret_clients: vec![("smart-confidential".into(), "smart-s3cret".into())],
            key_clients: Vec::new(),
            redirect_uri: "http://127.0.0.1:8765/callback".into(),
            audience: String::new(),
            context: json!({"patient": "1", "encounter": "enc-7", "need_patient_banner": true,
                            "smart_style_url": "https://ehr.example/smart-style.json"}),
            fhir_user: "Practitioner/pr-9".into(),
            context_on_refresh: false,
        }
    }
}

struct State_ {
    base: String,
    config: Mutex<SmartLaunchConfig>,
    signer: Signer,
    codes: Codes,
    refresh: RefreshTokens,
    authorize_requests: Mutex<Vec<HashMap<String, String>>>,
    token_requests: Mutex<Vec<HashMap<String, String>>>,
    log: EndpointLog,
}

/// The running authorization server; stops when dropped.
pub struct SmartLaunchIdp {
    state: Arc<State_>,
    _running: crate::Running,
}

impl std::fmt::Debug for SmartLaunchIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartLaunchIdp")
            .field("base", &self.state.base)
            .finish_non_exhaustive()
    }
}

impl SmartLaunchIdp {
    /// Starts on 127.0.0.1 with a free port.
    pub async fn start(config: SmartLaunchConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let state = Arc::new(State_ {
            base: format!("http://{}", listener.local_addr()?),
            config: Mutex::new(config),
            signer: Signer::es256("smart-launch"),
            codes: Codes::default(),
            refresh: RefreshTokens::default(),
            authorize_requests: Mutex::default(),
            token_requests: Mutex::default(),
            log: EndpointLog::default(),
        });
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(state.clone());
        Ok(Self {
            _running: crate::serve(listener, app),
            state,
        })
    }

    /// `http://127.0.0.1:PORT`: the issuer of its access tokens.
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// The authorize endpoint.
    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.state.base)
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.state.base)
    }

    /// A `.well-known/smart-configuration` document naming this server (SMART 2.x §2.1).
    pub fn smart_configuration(&self) -> Value {
        json!({
            "issuer": self.state.base,
            "authorization_endpoint": self.authorize_url(),
            "token_endpoint": self.token_url(),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access",
                                 "patient/*.rs", "patient/*.read"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric",
                             "client-confidential-asymmetric", "context-standalone-patient",
                             "permission-offline", "permission-v1", "permission-v2", "sso-openid-connect"]
        })
    }

    /// A CapabilityStatement `rest.security.extension` entry with the SMART `oauth-uris`.
    pub fn oauth_uris_extension(&self) -> Value {
        json!({
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "authorize", "valueUri": self.authorize_url()},
                          {"url": "token", "valueUri": self.token_url()}]
        })
    }

    /// How a resource server verifies this server's access tokens for `audience`.
    pub fn verifier(&self, audience: &str) -> crate::JwtAuth {
        crate::JwtAuth {
            issuer: self.state.base.clone(),
            audience: audience.to_string(),
            jwks: self.state.signer.jwks.clone(),
            token_endpoint: Some(self.token_url()),
        }
    }

    /// Changes the configuration.
    pub fn configure(&self, f: impl FnOnce(&mut SmartLaunchConfig)) {
        f(&mut self.state.config.lock().unwrap());
    }

    /// The query parameters of every authorize request, in order.
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.state.authorize_requests.lock().unwrap().clone()
    }

    /// The form parameters of every token request, in order.
    pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.state.token_requests.lock().unwrap().clone()
    }

    /// A refresh token for `client` and `scope` as if a person had signed in earlier (to seed
    /// a credential store where no browser can run, e.g. the conformance suite).
    pub fn earlier_sign_in(&self, client: &str, scope: &str) -> String {
        self.state.refresh.issue("", client, scope)
    }

    /// The last refusal (`error: description`).
    pub fn last_error(&self) -> Option<String> {
        self.state.log.last_error()
    }
}

/// The authorize endpoint: refusals are 400 pages (RFC 6749 §4.1.2.1: a request with a wrong
/// client or redirect URI must not be redirected; the rest are refused the same way here).
async fn authorize(
    State(s): State<Arc<State_>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.authorize_requests.lock().unwrap().push(q.clone());
    let cfg = s.config.lock().unwrap().clone();
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let client = get("client_id");
    let known = cfg.public_clients.iter().any(|c| c == client)
        || cfg.secret_clients.iter().any(|(c, _)| c == client)
        || cfg.key_clients.iter().any(|(c, _)| c == client);
    let refusal = if get("response_type") != "code" {
        Some("unsupported_response_type: response_type must be code")
    } else if !known {
        Some("unauthorized_client: unknown client_id")
    } else if get("redirect_uri") != cfg.redirect_uri {
        Some("invalid_request: redirect_uri differs from the registered one")
    } else if get("state").is_empty() {
        Some("invalid_request: state is required (SMART App Launch)")
    } else if get("aud").is_empty() {
        Some("invalid_request: aud is required (SMART App Launch)")
    } else if get("aud") != cfg.audience {
        Some("invalid_request: aud does not name this FHIR server")
    } else if get("code_challenge").is_empty() || get("code_challenge_method") != "S256" {
        Some("invalid_request: PKCE with code_challenge_method S256 is required")
    } else if get("scope").is_empty() {
        Some("invalid_scope: scope is required")
    } else {
        None
    };
    if let Some(why) = refusal {
        s.log.remember(why.to_string());
        return (StatusCode::BAD_REQUEST, why.to_string()).into_response();
    }
    let grant = CodeGrant {
        client_id: client.to_string(),
        redirect_uri: cfg.redirect_uri.clone(),
        challenge: get("code_challenge").to_string(),
        scope: get("scope").to_string(),
    };
    s.codes
        .redirect(grant, Some(get("state")))
        .unwrap_or_else(|| (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response())
}

/// Who is calling the token endpoint: a confidential client must authenticate as registered,
/// a public one names itself in `client_id`. `Err` is the `invalid_client` description.
fn authenticate(
    s: &State_,
    headers: &HeaderMap,
    p: &HashMap<String, String>,
) -> Result<String, String> {
    let cfg = s.config.lock().unwrap().clone();
    if let Some(basic) = basic_credentials(headers) {
        let (id, secret) = basic.map_err(|()| "bad Basic credentials")?;
        return match cfg
            .secret_clients
            .iter()
            .any(|(c, s)| *c == id && *s == secret)
        {
            true => Ok(id),
            false => Err("wrong client id or secret".into()),
        };
    }
    let id = p.get("client_id").cloned().unwrap_or_default();
    if let Some(assertion) = p.get("client_assertion") {
        let jwks = cfg
            .key_clients
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, k)| k.clone())
            .ok_or("no key registered for this client")?;
        let h = jsonwebtoken::decode_header(assertion).map_err(|_| "assertion is not a JWT")?;
        let jwk = h
            .kid
            .as_deref()
            .and_then(|k| jwks.find(k))
            .ok_or("unknown kid")?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let mut v = jsonwebtoken::Validation::new(h.alg);
        v.set_audience(&[format!("{}/token", s.base)]);
        v.set_issuer(&[id.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<Value>(assertion, &key, &v)
            .map_err(|e| format!("assertion refused: {e}"))?
            .claims;
        if claims["sub"] != id.as_str() || claims["jti"].as_str().is_none() {
            return Err("assertion sub must be the client id, with a jti".into());
        }
        return Ok(id);
    }
    if cfg.public_clients.contains(&id) {
        Ok(id)
    } else {
        Err("client authentication required".into())
    }
}

async fn token(State(s): State<Arc<State_>>, headers: HeaderMap, body: String) -> Response {
    s.log.request();
    let p = match crate::authorize::parse_form(&body) {
        Ok(p) => p,
        Err(why) => {
            return s
                .log
                .refuse(StatusCode::BAD_REQUEST, "invalid_request", &why)
        }
    };
    s.token_requests.lock().unwrap().push(p.clone());
    let client = match authenticate(&s, &headers, &p) {
        Ok(c) => c,
        Err(why) => {
            return s
                .log
                .refuse(StatusCode::UNAUTHORIZED, "invalid_client", &why)
        }
    };
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let grant = |why: &str| s.log.refuse(StatusCode::BAD_REQUEST, "invalid_grant", why);
    match get("grant_type").as_str() {
        "authorization_code" => match s.codes.redeem(&p, &client) {
            Ok(c) => issue(&s, &client, &c.scope, true),
            Err(why) => grant(match why {
                CodeRefusal::Unknown => "the code is unknown or was already used",
                CodeRefusal::OtherClient => "the code was issued to another client",
                CodeRefusal::RedirectUri => "redirect_uri differs from the authorize request",
                CodeRefusal::NoVerifier => "code_verifier is required (PKCE)",
                CodeRefusal::WrongVerifier => "code_verifier does not match the code_challenge",
            }),
        },
        "refresh_token" => match s.refresh.redeem(&get("refresh_token"), &client) {
            Ok(scope) => {
                let context = s.config.lock().unwrap().context_on_refresh;
                issue(&s, &client, &scope, context)
            }
            Err(RefreshRefusal::Unknown) => {
                grant("the refresh token is unknown or was already used (rotation)")
            }
            Err(RefreshRefusal::OtherClient) => {
                grant("the refresh token belongs to another client")
            }
        },
        other => s.log.refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant type '{other}' is not supported"),
        ),
    }
}

fn issue(s: &State_, client: &str, scope: &str, with_context: bool) -> Response {
    let cfg = s.config.lock().unwrap().clone();
    let t = now_secs();
    let has = |x: &str| scope.split(' ').any(|y| y == x);
    let claims = json!({"iss": s.base, "aud": cfg.audience, "sub": "user-1", "client_id": client,
                        "scope": scope, "iat": t, "exp": t + 300, "jti": random_token()});
    let Ok(access_token) = s.signer.sign(&claims) else {
        return s
            .log
            .refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "signing");
    };
    s.log.issue();
    let mut body = json!({"access_token": access_token, "token_type": "Bearer",
                          "expires_in": 300, "scope": scope});
    if has("offline_access") || has("online_access") {
        body["refresh_token"] = json!(s.refresh.issue("", client, scope));
    }
    if with_context {
        for (k, v) in cfg.context.as_object().into_iter().flatten() {
            if k != "patient" || has("launch/patient") {
                body[k] = v.clone();
            }
        }
        if has("openid") && has("fhirUser") {
            let id = json!({"iss": s.base, "sub": "user-1", "aud": client, "iat": t,
                            "exp": t + 300, "fhirUser": cfg.fhir_user});
            if let Ok(id_token) = s.signer.sign(&id) {
                body["id_token"] = json!(id_token);
            }
        }
    }
    axum::Json(body).into_response()
}
