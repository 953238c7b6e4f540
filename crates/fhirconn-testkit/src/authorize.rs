//! What the testkit's authorization servers share (the SMART launch server, the mock Entra,
//! Google, the identity provider and the managed-identity endpoints), written once: the
//! clock, random codes, PKCE S256 (RFC 7636 §4.2), an ES256 signing key and its JWKS, strict
//! form bodies (RFC 6749 §3.2: no repeated parameter), HTTP Basic client credentials
//! (RFC 6749 §2.3.1: form-urlencoded id and secret), RFC 6749 §5.2 error answers with the
//! counters a test reads, authorization codes (RFC 6749 §4.1 with PKCE) and rotated refresh
//! tokens. Each server keeps its own error texts: the helpers report *why* a code or refresh
//! token is refused, the server words it as the one it mimics would.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// 18 random bytes, base64url: a code, a refresh token, a device code.
pub(crate) fn random_token() -> String {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).expect("randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// BASE64URL(SHA-256(verifier)), RFC 7636 §4.2.
pub(crate) fn s256(verifier: &str) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// A server's ES256 signing key and the JWKS that publishes it.
pub(crate) struct Signer {
    /// The private key.
    pub(crate) key: EncodingKey,
    /// The public key set (`kid`, `use: sig`, `alg: ES256`).
    pub(crate) jwks: JwkSet,
    /// The key id.
    pub(crate) kid: String,
}

impl Signer {
    /// A fresh P-256 key named `kid`.
    pub(crate) fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generating a P-256 key");
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk =
            Jwk::from_encoding_key(&key, Algorithm::ES256).expect("public JWK of our key");
        jwk.common.key_id = Some(kid.into());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        Self {
            key,
            jwks: JwkSet { keys: vec![jwk] },
            kid: kid.into(),
        }
    }

    /// The JOSE header of its tokens: ES256 with its `kid`.
    pub(crate) fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header
    }

    /// `claims` signed as a JWT.
    pub(crate) fn sign(&self, claims: &Value) -> jsonwebtoken::errors::Result<String> {
        jsonwebtoken::encode(&self.header(), claims, &self.key)
    }
}

/// Whether the request body is declared `application/x-www-form-urlencoded`.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// A form body's parameters; `Err` names a repeated one (RFC 6749 §3.2).
pub(crate) fn parse_form(body: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(format!("parameter '{k}' is repeated"));
        }
    }
    Ok(out)
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The client credentials presented in an `Authorization: Basic` header (the scheme name in
/// any case), form-urldecoded; `None` without one, `Some(Err)` when they do not decode.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    Some(match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((id, secret)) => Ok((form_decode(id), form_decode(secret))),
        None => Err(()),
    })
}

/// What a token endpoint did, for tests: requests received, tokens issued, the last refusal.
#[derive(Debug, Default)]
pub(crate) struct EndpointLog {
    requests: AtomicU64,
    issued: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl EndpointLog {
    /// Counts a request.
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts an issued token; returns how many were issued before it.
    pub(crate) fn issue(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::SeqCst)
    }

    /// Requests received.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub(crate) fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }

    /// The last refusal (`error: description`).
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// Remembers `why` as the last refusal.
    pub(crate) fn remember(&self, why: String) {
        *self.last_error.lock().unwrap() = Some(why);
    }

    /// An RFC 6749 §5.2 error answer (remembered as the last refusal).
    pub(crate) fn refuse(&self, status: StatusCode, error: &str, description: &str) -> Response {
        self.refuse_with(status, error, description, json!({}))
    }

    /// [`EndpointLog::refuse`] with more members in the JSON body (`extra`, an object).
    pub(crate) fn refuse_with(
        &self,
        status: StatusCode,
        error: &str,
        description: &str,
        mut extra: Value,
    ) -> Response {
        self.remember(format!("{error}: {description}"));
        extra["error"] = json!(error);
        extra["error_description"] = json!(description);
        (status, axum::Json(extra)).into_response()
    }
}

/// The public accessors of a token endpoint's [`EndpointLog`] at `self.state.log`, for the
/// servers whose tests count requests and issued tokens.
macro_rules! endpoint_log_accessors {
    () => {
        /// Requests its token endpoint (or endpoints) received.
        pub fn token_requests(&self) -> u64 {
            self.state.log.requests()
        }

        /// Access tokens issued.
        pub fn tokens_issued(&self) -> u64 {
            self.state.log.issued()
        }

        /// The last refused token request (`error: description`).
        pub fn last_error(&self) -> Option<String> {
            self.state.log.last_error()
        }
    };
}
pub(crate) use endpoint_log_accessors;

/// What an authorization code was issued for.
pub(crate) struct CodeGrant {
    /// The client that asked.
    pub(crate) client_id: String,
    /// The redirect URI of the authorize request.
    pub(crate) redirect_uri: String,
    /// The PKCE `code_challenge` (S256).
    pub(crate) challenge: String,
    /// The scope asked for.
    pub(crate) scope: String,
}

/// Why a code is not redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeRefusal {
    /// Unknown, or redeemed before (a code is used once).
    Unknown,
    /// Issued to another client.
    OtherClient,
    /// `redirect_uri` missing or not the authorize request's.
    RedirectUri,
    /// No `code_verifier`.
    NoVerifier,
    /// `code_verifier` does not match the challenge.
    WrongVerifier,
}

/// Live authorization codes.
#[derive(Default)]
pub(crate) struct Codes(Mutex<HashMap<String, CodeGrant>>);

impl Codes {
    /// Issues a code for `grant` and answers the authorize request: a 302 to its redirect
    /// URI with `code` and `state` (when given); `None` when the redirect URI is no URL.
    pub(crate) fn redirect(&self, grant: CodeGrant, state: Option<&str>) -> Option<Response> {
        let mut target = url::Url::parse(&grant.redirect_uri).ok()?;
        let code = random_token();
        target.query_pairs_mut().append_pair("code", &code);
        if let Some(state) = state {
            target.query_pairs_mut().append_pair("state", state);
        }
        self.0.lock().unwrap().insert(code, grant);
        Some((StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response())
    }

    /// Redeems the `code` of token request `p` for `client_id` (RFC 6749 §4.1.3, RFC 7636
    /// §4.6): once, with the same `redirect_uri` and the matching `code_verifier`.
    pub(crate) fn redeem(
        &self,
        p: &HashMap<String, String>,
        client_id: &str,
    ) -> Result<CodeGrant, CodeRefusal> {
        let code = p.get("code").map(String::as_str).unwrap_or_default();
        let grant = self
            .0
            .lock()
            .unwrap()
            .remove(code)
            .ok_or(CodeRefusal::Unknown)?;
        if grant.client_id != client_id {
            return Err(CodeRefusal::OtherClient);
        }
        if p.get("redirect_uri") != Some(&grant.redirect_uri) {
            return Err(CodeRefusal::RedirectUri);
        }
        let verifier = p.get("code_verifier").ok_or(CodeRefusal::NoVerifier)?;
        if s256(verifier) != grant.challenge {
            return Err(CodeRefusal::WrongVerifier);
        }
        Ok(grant)
    }
}

/// Why a refresh token is not redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshRefusal {
    /// Unknown, expired, or redeemed before (rotation: each is used once).
    Unknown,
    /// Issued to another client.
    OtherClient,
}

/// Live refresh tokens: token → (client id, scope).
#[derive(Default)]
pub(crate) struct RefreshTokens(Mutex<HashMap<String, (String, String)>>);

impl RefreshTokens {
    /// A new refresh token (`prefix` + random) for `client` and `scope`.
    pub(crate) fn issue(&self, prefix: &str, client: &str, scope: &str) -> String {
        let rt = format!("{prefix}{}", random_token());
        self.0
            .lock()
            .unwrap()
            .insert(rt.clone(), (client.to_string(), scope.to_string()));
        rt
    }

    /// Redeems `token` for `client` (once); the scope it was issued with.
    pub(crate) fn redeem(&self, token: &str, client: &str) -> Result<String, RefreshRefusal> {
        let (owner, scope) = self
            .0
            .lock()
            .unwrap()
            .remove(token)
            .ok_or(RefreshRefusal::Unknown)?;
        if owner != client {
            return Err(RefreshRefusal::OtherClient);
        }
        Ok(scope)
    }

    /// Forgets every refresh token.
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn s256_is_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_code_is_redeemed_once_by_its_client_with_its_redirect_uri_and_verifier() {
        let codes = Codes::default();
        let grant = || CodeGrant {
            client_id: "app".into(),
            redirect_uri: "http://127.0.0.1:1/cb".into(),
            challenge: s256("verifier"),
            scope: "openid".into(),
        };
        let code_of = |r: Response| {
            let loc = r.headers()[header::LOCATION].to_str().unwrap().to_string();
            let url = url::Url::parse(&loc).unwrap();
            assert_eq!(
                url.query_pairs().find(|(k, _)| k == "state").unwrap().1,
                "s1"
            );
            url.query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap()
                .1
                .into_owned()
        };
        let ok = |code: &str| {
            params(&[
                ("code", code),
                ("redirect_uri", "http://127.0.0.1:1/cb"),
                ("code_verifier", "verifier"),
            ])
        };
        let code = code_of(codes.redirect(grant(), Some("s1")).unwrap());
        assert_eq!(codes.redeem(&ok(&code), "app").unwrap().scope, "openid");
        assert_eq!(
            codes.redeem(&ok(&code), "app").err(),
            Some(CodeRefusal::Unknown)
        );
        for (change, client, refusal) in [
            (
                ("redirect_uri", "http://127.0.0.1:1/cb2"),
                "app",
                CodeRefusal::RedirectUri,
            ),
            (
                ("code_verifier", "other"),
                "app",
                CodeRefusal::WrongVerifier,
            ),
            (("x", "y"), "other-app", CodeRefusal::OtherClient),
        ] {
            let code = code_of(codes.redirect(grant(), Some("s1")).unwrap());
            let mut p = ok(&code);
            p.insert(change.0.into(), change.1.into());
            assert_eq!(codes.redeem(&p, client).err(), Some(refusal));
        }
        let code = code_of(codes.redirect(grant(), Some("s1")).unwrap());
        let mut p = ok(&code);
        p.remove("code_verifier");
        assert_eq!(codes.redeem(&p, "app").err(), Some(CodeRefusal::NoVerifier));
        let code = code_of(codes.redirect(grant(), Some("s1")).unwrap());
        let mut p = ok(&code);
        p.remove("redirect_uri");
        assert_eq!(
            codes.redeem(&p, "app").err(),
            Some(CodeRefusal::RedirectUri)
        );
    }

    #[test]
    fn refresh_tokens_rotate_and_stay_with_their_client() {
        let rts = RefreshTokens::default();
        let rt = rts.issue("rt-", "app", "offline_access");
        assert!(rt.starts_with("rt-"));
        assert_eq!(rts.redeem(&rt, "other"), Err(RefreshRefusal::OtherClient));
        let rt = rts.issue("", "app", "offline_access");
        assert_eq!(rts.redeem(&rt, "app").as_deref(), Ok("offline_access"));
        assert_eq!(rts.redeem(&rt, "app"), Err(RefreshRefusal::Unknown));
    }

    #[test]
    fn forms_refuse_repeated_parameters_and_basic_credentials_are_form_decoded() {
        assert_eq!(
            parse_form("a=1&b=2&a=3").unwrap_err(),
            "parameter 'a' is repeated"
        );
        let mut h = HeaderMap::new();
        let b64 = base64::engine::general_purpose::STANDARD.encode("my%20id:s%3Acret");
        h.insert(
            header::AUTHORIZATION,
            format!("basic {b64}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(Ok(("my id".into(), "s:cret".into())))
        );
        h.insert(header::AUTHORIZATION, "Basic !!".parse().unwrap());
        assert_eq!(basic_credentials(&h), Some(Err(())));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }
}
