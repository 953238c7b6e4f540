//! Private keys for signed JWTs (feature `keys`): `private_key_jwt` client assertions, RFC 7523
//! jwt-bearer grants, service-account assertions. PEM (PKCS#8, PKCS#1 RSA, SEC1 EC), a private
//! JWK or JWKS, or a Google service-account key file, turned into a `jsonwebtoken` signing key
//! for RS256, RS384, ES256 (P-256) or ES384 (P-384) and checked by signing once. The ASN.1 and
//! the JWK → key conversions are RustCrypto's (`rsa`, `p256`, `p384`); jsonwebtoken signs.
//!
//! ```no_run
//! # fn f(pem: &[u8]) -> Result<(), fhirconn_sdk::keys::KeyError> {
//! use fhirconn_sdk::keys::{self, Algorithm};
//! // An RSA key for RS256 (e.g. a Google service account's `private_key`):
//! let key = keys::load_with_alg(pem, None, Some(Algorithm::RS256))?;
//! assert_eq!(key.alg_name(), "RS256");
//! # Ok(()) }
//! ```

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use p384::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::RsaPrivateKey;
use serde_json::Value;

use crate::secret::ExposeSecret as _;
use crate::settings::SecretSetting;

/// The signing algorithm (RS256, RS384, ES256 or ES384 here).
pub use jsonwebtoken::Algorithm;

/// The algorithms a [`SigningKey`] can sign with.
pub const SUPPORTED: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Why a key cannot be used; the text names the problem, never key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl From<String> for KeyError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The kind of key, which decides the algorithms it can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, at least 2048 bits: RS256 or RS384 (RS384 by default).
    Rsa,
    /// EC on P-256: ES256.
    P256,
    /// EC on P-384: ES384.
    P384,
}

impl KeyKind {
    /// The algorithms this kind of key signs with; the first is the default.
    pub fn algorithms(self) -> &'static [Algorithm] {
        match self {
            KeyKind::Rsa => &[Algorithm::RS384, Algorithm::RS256],
            KeyKind::P256 => &[Algorithm::ES256],
            KeyKind::P384 => &[Algorithm::ES384],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key (RS256 or RS384)",
            KeyKind::P256 => "an EC P-256 key (ES256)",
            KeyKind::P384 => "an EC P-384 key (ES384)",
        }
    }
}

/// A signing key ready for JWTs. `Debug` shows no key material.
pub struct SigningKey {
    /// The algorithm it signs with: RS256, RS384, ES256 or ES384 (see [`SigningKey::with_alg`]).
    pub alg: Algorithm,
    /// The key id from the JWK (or the service-account file), if the key came from one.
    pub kid: Option<String>,
    kind: KeyKind,
    /// The `alg` a JWK declared: no other algorithm may be chosen.
    declared: Option<Algorithm>,
    key: EncodingKey,
}

impl SigningKey {
    fn new(kind: KeyKind, key: EncodingKey) -> Self {
        Self {
            alg: kind.algorithms()[0],
            kid: None,
            kind,
            declared: None,
            key,
        }
    }

    /// The kind of key (RSA, P-256, P-384).
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The JOSE name of the key's algorithm: `RS256`, `RS384`, `ES256` or `ES384`.
    pub fn alg_name(&self) -> &'static str {
        alg_name(self.alg)
    }

    /// The key set to sign with `alg`, which must fit the key (an RSA key: RS256 or RS384; P-256:
    /// ES256; P-384: ES384) and the `alg` its JWK declared, if any.
    pub fn with_alg(mut self, alg: Algorithm) -> Result<Self, KeyError> {
        if !self.kind.algorithms().contains(&alg) {
            return Err(KeyError(format!(
                "{} does not fit the key, which is {}",
                alg_name(alg),
                self.kind.describe()
            )));
        }
        if let Some(d) = self.declared.filter(|d| *d != alg) {
            return Err(KeyError(format!(
                "{} differs from the alg its JWK declares ({})",
                alg_name(alg),
                alg_name(d)
            )));
        }
        self.alg = alg;
        Ok(self)
    }

    /// Signs `message` with the key (raw JWS signature, base64url).
    pub fn sign(&self, message: &[u8]) -> crate::Result<String> {
        jsonwebtoken::crypto::sign(message, &self.key, self.alg)
            .map_err(|e| crate::Error::internal(format!("signing failed: {e}")))
    }

    /// A signed JWT over `claims` (for a client assertion, see
    /// [`crate::oauth::assertion_claims`]): header `alg`, `typ: JWT`, `kid` and, if given, `jku`.
    pub fn client_assertion(
        &self,
        kid: &str,
        jku: Option<&str>,
        claims: &Value,
    ) -> crate::Result<String> {
        self.jwt(Some(kid), jku, claims)
    }

    /// A signed JWT over `claims`: header `alg`, `typ: JWT`, and `kid` and `jku` when given.
    pub fn jwt(
        &self,
        kid: Option<&str>,
        jku: Option<&str>,
        claims: &Value,
    ) -> crate::Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(String::from);
        header.typ = Some("JWT".into());
        header.jku = jku.map(String::from);
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| crate::Error::internal(format!("signing the JWT failed: {e}")))
    }
}

/// The key settings of a scheme that signs with a private key (`private-key` / `-file` /
/// `-env`, `kid`, `alg`), checked at configuration with errors naming the setting: the key
/// loads; `alg` (if set) fits it and is in `allowed`; without `alg`, the first algorithm of
/// `allowed` (in order of preference) that the key can sign with; `kid`, if set, agrees with
/// the JWK's. Returns the key and its key id (the setting's, else the JWK's).
pub fn from_settings(
    private_key: &SecretSetting,
    kid: Option<&str>,
    alg: Option<&str>,
    allowed: &[Algorithm],
) -> crate::Result<(SigningKey, Option<String>)> {
    use crate::Error;
    let names = || {
        allowed
            .iter()
            .map(|a| alg_name(*a))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key = load(private_key.expose_secret().as_bytes(), kid)
        .map_err(|e| Error::config(format!("{}: {e}", private_key.key())))?;
    let chosen = match alg {
        Some(a) => {
            let a = parse_alg(a).map_err(|e| Error::config(format!("alg: {e}")))?;
            if !allowed.contains(&a) {
                return Err(Error::config(format!(
                    "alg: {} is not allowed here (allowed: {})",
                    alg_name(a),
                    names()
                )));
            }
            a
        }
        None => match key.declared {
            Some(d) if allowed.contains(&d) => d,
            Some(d) => {
                return Err(Error::config(format!(
                    "{}: the JWK's alg is {}, not allowed here (allowed: {})",
                    private_key.key(),
                    alg_name(d),
                    names()
                )))
            }
            None => allowed
                .iter()
                .copied()
                .find(|a| key.kind.algorithms().contains(a))
                .ok_or_else(|| {
                    Error::config(format!(
                        "{}: the key is {}; allowed here: {}",
                        private_key.key(),
                        key.kind.describe(),
                        names()
                    ))
                })?,
        },
    };
    let key = key
        .with_alg(chosen)
        .map_err(|e| Error::config(format!("alg: {e}")))?;
    if let (Some(k), Some(jk)) = (kid, &key.kid) {
        if k != jk {
            return Err(Error::config(format!(
                "kid: '{k}' differs from the JWK's kid '{jk}'"
            )));
        }
    }
    let kid = kid.map(String::from).or_else(|| key.kid.clone());
    Ok((key, kid))
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// An HS256 JWT over `claims` with `secret` as the HMAC key (`client_secret_jwt`, OpenID Connect
/// Core §9; RFC 7518 §3.2), header `alg: HS256`, `typ: JWT`.
pub fn hs256(secret: &[u8], claims: &Value) -> crate::Result<String> {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
        .map_err(|e| crate::Error::internal(format!("signing the assertion failed: {e}")))
}

/// The JOSE name of an algorithm (`RS256`, `ES384`, ...).
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unknown",
    }
}

/// One of [`SUPPORTED`] by its JOSE name (`RS256`, `RS384`, `ES256`, `ES384`).
pub fn parse_alg(name: &str) -> Result<Algorithm, KeyError> {
    SUPPORTED
        .into_iter()
        .find(|a| alg_name(*a) == name)
        .ok_or_else(|| KeyError(format!("'{name}' is not one of RS256, RS384, ES256, ES384")))
}

/// id-ecPublicKey (RFC 5480): a PKCS#8 EC key on another curve is named as such.
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";

const NOT_EC: &str =
    "the EC key is not a valid P-256 or P-384 key (only ES256 and ES384 are supported)";

fn ec256(key: &p256::SecretKey) -> Result<SigningKey, String> {
    let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    Ok(SigningKey::new(
        KeyKind::P256,
        EncodingKey::from_ec_der(der.as_bytes()),
    ))
}

fn ec384(key: &p384::SecretKey) -> Result<SigningKey, String> {
    let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    Ok(SigningKey::new(
        KeyKind::P384,
        EncodingKey::from_ec_der(der.as_bytes()),
    ))
}

fn rsa_key(key: &RsaPrivateKey) -> Result<SigningKey, String> {
    let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
    Ok(SigningKey::new(
        KeyKind::Rsa,
        EncodingKey::from_rsa_der(der.as_bytes()),
    ))
}

/// A PKCS#8 `PrivateKeyInfo`: RSA, or EC on P-256 or P-384.
fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
    if let Ok(key) = <RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(der) {
        return rsa_key(&key);
    }
    if let Ok(key) = p256::SecretKey::from_pkcs8_der(der) {
        return ec256(&key);
    }
    if let Ok(key) = p384::SecretKey::from_pkcs8_der(der) {
        return ec384(&key);
    }
    match rsa::pkcs8::PrivateKeyInfo::try_from(der) {
        Ok(info) if info.algorithm.oid.to_string() == EC_PUBLIC_KEY => Err(NOT_EC.into()),
        _ => Err(
            "the PKCS#8 key is neither RSA nor EC (Ed25519 and others are not supported)".into(),
        ),
    }
}

/// A SEC1 `ECPrivateKey` on P-256 or P-384.
fn from_sec1(der: &[u8]) -> Result<SigningKey, String> {
    if let Ok(key) = p256::SecretKey::from_sec1_der(der) {
        return ec256(&key);
    }
    p384::SecretKey::from_sec1_der(der)
        .map_err(|_| NOT_EC.to_string())
        .and_then(|k| ec384(&k))
}

fn b64url(jwk: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = jwk[field]
        .as_str()
        .ok_or_else(|| format!("the JWK has no '{field}'"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("the JWK's '{field}' is not base64url"))
}

/// The EC point of a JWK, uncompressed SEC1.
fn ec_point(jwk: &Value) -> Result<Vec<u8>, String> {
    Ok([vec![4u8], b64url(jwk, "x")?, b64url(jwk, "y")?].concat())
}

/// A private EC JWK (RFC 7518 §6.2.2) on P-256 or P-384; `d` must belong to `x` and `y`.
fn from_ec_jwk(jwk: &Value) -> Result<SigningKey, String> {
    let d = b64url(jwk, "d")?;
    let mismatch = || "the JWK's 'd' does not belong to its 'x' and 'y'".to_string();
    let not_point = |c: &str| format!("the JWK's x and y are not a {c} point");
    match jwk["crv"].as_str() {
        Some("P-256") => {
            let secret = p256::SecretKey::from_slice(&d).map_err(|_| NOT_EC.to_string())?;
            let public = p256::PublicKey::from_sec1_bytes(&ec_point(jwk)?)
                .map_err(|_| not_point("P-256"))?;
            if secret.public_key() != public {
                return Err(mismatch());
            }
            ec256(&secret)
        }
        Some("P-384") => {
            let secret = p384::SecretKey::from_slice(&d).map_err(|_| NOT_EC.to_string())?;
            let public = p384::PublicKey::from_sec1_bytes(&ec_point(jwk)?)
                .map_err(|_| not_point("P-384"))?;
            if secret.public_key() != public {
                return Err(mismatch());
            }
            ec384(&secret)
        }
        Some(other) => Err(format!(
            "the JWK's curve is {other}; only P-256 (ES256) and P-384 (ES384) are supported"
        )),
        None => Err("the EC JWK has no 'crv'".into()),
    }
}

/// A private JWK (RFC 7518 §6.2.2 EC, §6.3.2 RSA): the private part must match the public part
/// (checked by the crates), and a declared `alg` must fit the key; it is then the key's alg.
fn from_jwk(jwk: &Value) -> Result<SigningKey, String> {
    if jwk.get("d").is_none() {
        return Err("the JWK is a public key (no 'd'); the private key is needed".into());
    }
    let key = match jwk["kty"].as_str() {
        Some("EC") => from_ec_jwk(jwk)?,
        Some("RSA") => {
            let int = |f: &str| b64url(jwk, f).map(|v| rsa::BigUint::from_bytes_be(&v));
            // p and q are optional: without them the crate recovers them from n, e and d.
            let primes = match (jwk.get("p"), jwk.get("q")) {
                (Some(_), Some(_)) => vec![int("p")?, int("q")?],
                _ => vec![],
            };
            let key = RsaPrivateKey::from_components(int("n")?, int("e")?, int("d")?, primes)
                .map_err(|e| format!("the RSA JWK is not a consistent private key ({e})"))?;
            rsa_key(&key)?
        }
        Some(other) => {
            return Err(format!(
                "the JWK's key type is '{other}'; only EC (P-256, P-384) and RSA are supported"
            ))
        }
        None => return Err("the JWK has no 'kty'".into()),
    };
    let mut key = SigningKey {
        kid: jwk["kid"].as_str().map(String::from),
        ..key
    };
    if let Some(d) = jwk["alg"].as_str() {
        let fits = |a: &Algorithm| alg_name(*a) == d;
        let Some(alg) = key.kind.algorithms().iter().copied().find(fits) else {
            let names: Vec<&str> = key.kind.algorithms().iter().map(|a| alg_name(*a)).collect();
            return Err(format!(
                "the JWK's alg is {d}; this key can only be used with {}",
                names.join(" or ")
            ));
        };
        key.alg = alg;
        key.declared = Some(alg);
    }
    Ok(key)
}

/// A Google service-account key file (`"type": "service_account"`): its `private_key` (PKCS#8
/// PEM) for RS256, `private_key_id` as the key id.
fn from_service_account(v: &Value) -> Result<SigningKey, String> {
    let pem = v["private_key"]
        .as_str()
        .ok_or("the service-account file has no 'private_key'")?;
    let mut key = from_pem(pem.as_bytes())?;
    if key.kind != KeyKind::Rsa {
        return Err("the service account's private_key is not an RSA key".into());
    }
    key.alg = Algorithm::RS256;
    key.declared = Some(Algorithm::RS256);
    key.kid = v["private_key_id"].as_str().map(String::from);
    Ok(key)
}

fn from_json(text: &str, kid: Option<&str>) -> Result<SigningKey, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    if v["type"] == "service_account" {
        return from_service_account(&v);
    }
    let Some(keys) = v.get("keys") else {
        return from_jwk(&v);
    };
    let keys = keys.as_array().ok_or("the JWKS's 'keys' is not a list")?;
    let private: Vec<&Value> = keys.iter().filter(|k| k.get("d").is_some()).collect();
    let chosen = match kid {
        Some(kid) => private
            .iter()
            .find(|k| k["kid"].as_str() == Some(kid))
            .ok_or_else(|| format!("the JWKS has no private key with kid '{kid}'"))?,
        None => match private.as_slice() {
            [one] => one,
            [] => return Err("the JWKS holds no private key (no 'd')".into()),
            _ => return Err("the JWKS holds several private keys: set 'kid' to choose one".into()),
        },
    };
    from_jwk(chosen)
}

fn from_pem(bytes: &[u8]) -> Result<SigningKey, String> {
    let block = pem::parse(bytes).map_err(|e| format!("not a PEM file or JWK ({e})"))?;
    match block.tag() {
        "PRIVATE KEY" => from_pkcs8(block.contents()),
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(block.contents())
            .map_err(|e| format!("invalid PKCS#1 RSA key ({e})"))
            .and_then(|k| rsa_key(&k)),
        "EC PRIVATE KEY" => from_sec1(block.contents()),
        "ENCRYPTED PRIVATE KEY" => Err(
            "the key is encrypted; decrypt it first (openssl pkcs8 -in key.pem -out plain.pem)"
                .into(),
        ),
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => Err(format!(
            "the file holds a {}, not a private key",
            block.tag().to_lowercase()
        )),
        other => Err(format!("unsupported PEM block '{other}'")),
    }
}

/// Loads a private key from PEM, a JWK/JWKS or a Google service-account key file; `kid` picks a
/// key from a JWKS. The algorithm is the JWK's `alg` if it declares one, RS256 for a
/// service-account file, else the key's default: RS384 for RSA, ES256 for P-256, ES384 for
/// P-384 (choose another with [`SigningKey::with_alg`] or [`load_with_alg`]). The key is proven
/// by signing once, so a wrong curve or a too-small RSA key (under 2048 bits) fails here.
pub fn load(bytes: &[u8], kid: Option<&str>) -> Result<SigningKey, KeyError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyError("the key file is not text (PEM or JSON)".into()))?;
    let key = if text.trim_start().starts_with('{') {
        from_json(text, kid)?
    } else {
        from_pem(bytes)?
    };
    jsonwebtoken::crypto::sign(b"fhirconn key check", &key.key, key.alg).map_err(|_| {
        match key.kind {
            KeyKind::Rsa => "the RSA key is not usable (at least 2048 bits are required)",
            KeyKind::P256 | KeyKind::P384 => NOT_EC,
        }
        .to_string()
    })?;
    Ok(key)
}

/// [`load`], then, if `alg` is given, [`SigningKey::with_alg`]: `alg` must fit the key (and
/// its JWK's `alg`). The error says which of the two was wrong.
pub fn load_with_alg(
    bytes: &[u8],
    kid: Option<&str>,
    alg: Option<Algorithm>,
) -> Result<SigningKey, KeyError> {
    let key = load(bytes, kid)?;
    match alg {
        Some(alg) => key.with_alg(alg).map_err(|e| KeyError(format!("alg: {e}"))),
        None => Ok(key),
    }
}

#[cfg(test)]
mod tests;
