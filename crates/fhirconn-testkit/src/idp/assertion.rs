//! JWT assertions at the provider's token endpoint, verified strictly by the specifications:
//! client assertions (RFC 7523 §2.2 and §3; OpenID Connect Core §9 `private_key_jwt` with
//! RS256/RS384/ES256/ES384 and `client_secret_jwt` with HS256; SMART Backend Services with
//! RS384/ES384, `typ: JWT` and `kid`) and the jwt-bearer authorization grant (RFC 7523 §2.1).
//!
//! Every assertion must be signed by the registered key or secret with an allowed algorithm,
//! carry `aud` = the token endpoint, an `exp` that has not passed and is at most five minutes
//! ahead, `nbf` (if any) passed, and a `jti` never seen before (client assertions must carry
//! one, OpenID Connect Core §9; a grant's is checked when present, RFC 7523 §3).

use super::{ClientAuth, GrantKey, IdpState, RegisteredClient};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashMap;

/// A fresh client key pair for `alg` (RS256/RS384: a 2048-bit RSA key; ES256: P-256; ES384:
/// P-384): its private key as PKCS#8 PEM, and the public JWKS to register (one key, `kid`).
pub fn client_key(alg: Algorithm, kid: &str) -> (String, JwkSet) {
    let pair = match alg {
        Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        Algorithm::ES384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        _ => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
    }
    .expect("generating a client key");
    let pem = pair.serialize_pem();
    let enc = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
        }
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("our own key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).expect("a public JWK");
    jwk.common.key_id = Some(kid.to_string());
    (pem, JwkSet { keys: vec![jwk] })
}

/// The grant type of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The most an assertion's `exp` may lie ahead (plus [`LEEWAY`]).
const MAX_AHEAD: u64 = 300;
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY: u64 = 5;

/// How an assertion is verified.
pub(crate) enum Verifier<'a> {
    /// SMART Backend Services: RS384 or ES384, `typ: JWT`, a `kid` naming a registered key.
    Smart(&'a JwkSet),
    /// Any of RS256, RS384, ES256, ES384 with a registered key (by `kid`, or any that fits).
    Keys(&'a JwkSet),
    /// HS256 with the registered secret.
    Secret(&'a str),
}

impl Verifier<'_> {
    fn allowed(&self) -> &'static [Algorithm] {
        match self {
            Verifier::Smart(_) => &[Algorithm::RS384, Algorithm::ES384],
            Verifier::Keys(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::ES256,
                Algorithm::ES384,
            ],
            Verifier::Secret(_) => &[Algorithm::HS256],
        }
    }

    /// The keys the signature may verify with.
    fn keys(&self, header: &jsonwebtoken::Header) -> Result<Vec<DecodingKey>, String> {
        let set = match self {
            Verifier::Secret(s) => return Ok(vec![DecodingKey::from_secret(s.as_bytes())]),
            Verifier::Smart(set) | Verifier::Keys(set) => set,
        };
        let jwks: Vec<_> = match (&header.kid, self) {
            (Some(kid), _) => vec![set
                .find(kid)
                .ok_or_else(|| format!("no key with kid '{kid}' is registered for this client"))?],
            (None, Verifier::Smart(_)) => return Err("assertion header has no 'kid'".into()),
            (None, _) => set.keys.iter().collect(),
        };
        jwks.into_iter()
            .map(|k| DecodingKey::from_jwk(k).map_err(|e| format!("registered key: {e}")))
            .collect()
    }
}

/// What the claims must say besides the common checks.
pub(crate) struct Expect<'a> {
    /// The `iss`.
    pub iss: &'a str,
    /// The `sub`, or `None` for any non-empty one (a grant's subject).
    pub sub: Option<&'a str>,
    /// Whether a `jti` is required.
    pub jti_required: bool,
}

/// Verifies `jwt` and returns its claims.
pub(crate) fn verify(
    state: &IdpState,
    verifier: &Verifier<'_>,
    expect: &Expect<'_>,
    jwt: &str,
) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| format!("assertion header: {e}"))?;
    let allowed = verifier.allowed();
    if !allowed.contains(&header.alg) {
        return Err(format!(
            "assertion alg {:?} is not allowed ({allowed:?})",
            header.alg
        ));
    }
    if matches!(verifier, Verifier::Smart(_)) && header.typ.as_deref() != Some("JWT") {
        return Err("assertion header 'typ' must be JWT".into());
    }
    let mut v = Validation::new(header.alg);
    v.set_audience(&[state.token_endpoint.as_str()]);
    v.set_issuer(&[expect.iss]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v.validate_nbf = true;
    v.leeway = LEEWAY;
    let mut last = String::from("no registered key fits the assertion");
    for key in verifier.keys(&header)? {
        match jsonwebtoken::decode::<Value>(jwt, &key, &v) {
            Ok(data) => return check_claims(state, expect, data.claims),
            Err(e) => last = describe(state, &e),
        }
    }
    Err(last)
}

fn describe(state: &IdpState, e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "the assertion's signature does not verify".to_string(),
        K::ExpiredSignature => "the assertion has expired".to_string(),
        K::ImmatureSignature => "the assertion is not valid yet (nbf)".to_string(),
        K::InvalidAudience => format!(
            "the assertion's 'aud' is not the token endpoint {}",
            state.token_endpoint
        ),
        K::InvalidIssuer => "the assertion's 'iss' is not the client_id".to_string(),
        K::MissingRequiredClaim(c) => format!("the assertion has no '{c}'"),
        other => format!("invalid assertion: {other:?}"),
    }
}

fn check_claims(state: &IdpState, expect: &Expect<'_>, claims: Value) -> Result<Value, String> {
    let sub = claims["sub"].as_str().unwrap_or_default();
    match expect.sub {
        Some(s) if s != sub => return Err("the assertion's 'sub' is not the client_id".into()),
        None if sub.is_empty() => return Err("the assertion's 'sub' is empty".into()),
        _ => {}
    }
    let exp = claims["exp"]
        .as_u64()
        .ok_or("the assertion's 'exp' is not a number")?;
    let now = super::now_secs();
    if exp > now + MAX_AHEAD + LEEWAY {
        return Err("the assertion's 'exp' is more than five minutes in the future".into());
    }
    match claims["jti"].as_str() {
        Some(jti) => {
            let mut seen = state.seen_jti.lock().unwrap();
            seen.retain(|_, exp| *exp + 2 * LEEWAY > now);
            if seen.insert(jti.to_string(), exp).is_some() {
                return Err(format!("the assertion's jti '{jti}' was already used"));
            }
        }
        None if expect.jti_required => return Err("the assertion has no 'jti'".into()),
        None => {}
    }
    Ok(claims)
}

/// Verifies a client assertion (`client_assertion`) for `client`, registered with a JWT method.
pub(crate) fn client_assertion(
    state: &IdpState,
    client: &RegisteredClient,
    jwt: &str,
) -> Result<(), String> {
    let verifier = match &client.auth {
        ClientAuth::PrivateKeyJwt(keys) => Verifier::Smart(keys),
        ClientAuth::PrivateKeyJwtAnyAlg(keys) => Verifier::Keys(keys),
        ClientAuth::ClientSecretJwt(secret) => Verifier::Secret(secret),
        _ => return Err("this client is not registered for a JWT method".into()),
    };
    let id = client.client_id.as_str();
    let expect = Expect {
        iss: id,
        sub: Some(id),
        jti_required: true,
    };
    verify(state, &verifier, &expect, jwt).map(|_| ())
}

/// The jwt-bearer grant (RFC 7523 §2.1): the client is the assertion's `iss`, registered with
/// [`ClientAuth::JwtBearerGrant`]; a `client_id` parameter, if sent, must be the same; no
/// other client authentication is accepted. Returns the client and the assertion's `sub`.
pub(crate) fn grant(
    state: &IdpState,
    params: &HashMap<String, String>,
    other_client_auth: bool,
) -> Result<(RegisteredClient, String), (&'static str, String)> {
    let invalid_grant = |why: String| ("invalid_grant", why);
    let jwt = params
        .get("assertion")
        .ok_or(("invalid_request", "assertion is missing".to_string()))?;
    let iss = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt)
        .ok()
        .and_then(|d| d.claims["iss"].as_str().map(String::from))
        .ok_or_else(|| invalid_grant("the assertion is not a JWT with an 'iss' claim".into()))?;
    if params.get("client_id").is_some_and(|c| *c != iss) {
        return Err(invalid_grant(
            "client_id differs from the assertion's 'iss'".into(),
        ));
    }
    let cfg = state.config.lock().unwrap().clone();
    let client = cfg
        .clients
        .iter()
        .find(|c| c.client_id == iss)
        .ok_or(("invalid_client", "unknown client".to_string()))?;
    let verifier = match &client.auth {
        ClientAuth::JwtBearerGrant(GrantKey::Secret(s)) => Verifier::Secret(s),
        ClientAuth::JwtBearerGrant(GrantKey::Keys(k)) => Verifier::Keys(k),
        other => {
            return Err((
                "unauthorized_client",
                format!("this client is registered for {}", other.method()),
            ))
        }
    };
    if other_client_auth {
        return Err((
            "invalid_request",
            "this client authenticates by its jwt-bearer assertion only".into(),
        ));
    }
    let expect = Expect {
        iss: &iss,
        sub: None,
        jti_required: false,
    };
    let claims = verify(state, &verifier, &expect, jwt).map_err(invalid_grant)?;
    let sub = claims["sub"].as_str().unwrap_or_default().to_string();
    Ok((client.clone(), sub))
}
