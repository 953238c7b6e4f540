//! Private keys for client assertions (`private_key_jwt`, feature `keys`): PEM (PKCS#8, PKCS#1
//! RSA, SEC1 EC) or a private JWK or JWKS, turned into a `jsonwebtoken` signing key for RS384 or
//! ES384 and checked by signing once. The ASN.1 and the JWK → key conversions are RustCrypto's
//! (`rsa`, `p384` with `pkcs8`/`sec1`); jsonwebtoken signs.

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use p384::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::RsaPrivateKey;
use serde_json::Value;

/// The signing algorithm (RS384 or ES384 here).
pub use jsonwebtoken::Algorithm;

/// Why a key cannot be used; the text names the problem, never key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl From<String> for KeyError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// A signing key ready for client assertions. `Debug` shows no key material.
pub struct SigningKey {
    /// RS384 or ES384.
    pub alg: Algorithm,
    /// The key id from the JWK, if the key came from one.
    pub kid: Option<String>,
    key: EncodingKey,
}

impl SigningKey {
    fn new(alg: Algorithm, key: EncodingKey) -> Self {
        Self {
            alg,
            kid: None,
            key,
        }
    }
}

impl SigningKey {
    /// The JOSE name of the key's algorithm: `RS384` or `ES384`.
    pub fn alg_name(&self) -> &'static str {
        alg_name(self.alg)
    }

    /// Signs `message` with the key (raw JWS signature, base64url).
    pub fn sign(&self, message: &[u8]) -> crate::Result<String> {
        jsonwebtoken::crypto::sign(message, &self.key, self.alg)
            .map_err(|e| crate::Error::internal(format!("signing failed: {e}")))
    }

    /// A signed client assertion (RFC 7523 §2.2) over `claims` (see
    /// [`crate::oauth::assertion_claims`]): header `alg`, `typ: JWT`, `kid` and, if given, `jku`.
    pub fn client_assertion(
        &self,
        kid: &str,
        jku: Option<&str>,
        claims: &Value,
    ) -> crate::Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        header.typ = Some("JWT".into());
        header.jku = jku.map(String::from);
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| {
            crate::Error::internal(format!("signing the client assertion failed: {e}"))
        })
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// id-ecPublicKey (RFC 5480): a PKCS#8 EC key on a curve other than P-384 is named as such.
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";

const NOT_P384: &str =
    "the EC key is not a valid P-384 key (SMART Backend Services needs ES384 or RS384)";

fn es384(key: &p384::SecretKey) -> Result<SigningKey, String> {
    let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    Ok(SigningKey::new(
        Algorithm::ES384,
        EncodingKey::from_ec_der(der.as_bytes()),
    ))
}

fn rs384(key: &RsaPrivateKey) -> Result<SigningKey, String> {
    let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
    Ok(SigningKey::new(
        Algorithm::RS384,
        EncodingKey::from_rsa_der(der.as_bytes()),
    ))
}

/// A PKCS#8 `PrivateKeyInfo`: RSA, or EC on P-384.
fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
    if let Ok(key) = <RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(der) {
        return rs384(&key);
    }
    if let Ok(key) = p384::SecretKey::from_pkcs8_der(der) {
        return es384(&key);
    }
    match rsa::pkcs8::PrivateKeyInfo::try_from(der) {
        Ok(info) if info.algorithm.oid.to_string() == EC_PUBLIC_KEY => Err(NOT_P384.into()),
        _ => Err(
            "the PKCS#8 key is neither RSA nor EC (Ed25519 and others are not allowed by SMART)"
                .into(),
        ),
    }
}

fn b64url(jwk: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = jwk[field]
        .as_str()
        .ok_or_else(|| format!("the JWK has no '{field}'"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("the JWK's '{field}' is not base64url"))
}

/// The JOSE name of RS384 or ES384.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES384 => "ES384",
        _ => "RS384",
    }
}

/// A private JWK (RFC 7518 §6.2.2 EC P-384, §6.3.2 RSA): the private part must match the
/// public part (checked by the crates), and a declared `alg` must fit the key.
fn from_jwk(jwk: &Value) -> Result<SigningKey, String> {
    if jwk.get("d").is_none() {
        return Err("the JWK is a public key (no 'd'); the private key is needed".into());
    }
    let key = match jwk["kty"].as_str() {
        Some("EC") => {
            match jwk["crv"].as_str() {
                Some("P-384") => {}
                Some(other) => return Err(format!(
                    "the JWK's curve is {other}; SMART Backend Services needs P-384 (ES384) or RSA (RS384)"
                )),
                None => return Err("the EC JWK has no 'crv'".into()),
            }
            let (d, x, y) = (b64url(jwk, "d")?, b64url(jwk, "x")?, b64url(jwk, "y")?);
            let secret = p384::SecretKey::from_slice(&d).map_err(|_| NOT_P384.to_string())?;
            let public = p384::PublicKey::from_sec1_bytes(&[&[4u8][..], &x, &y].concat())
                .map_err(|_| "the JWK's x and y are not a P-384 point".to_string())?;
            if secret.public_key() != public {
                return Err("the JWK's 'd' does not belong to its 'x' and 'y'".into());
            }
            es384(&secret)?
        }
        Some("RSA") => {
            let int = |f: &str| b64url(jwk, f).map(|v| rsa::BigUint::from_bytes_be(&v));
            // p and q are optional: without them the crate recovers them from n, e and d.
            let primes = match (jwk.get("p"), jwk.get("q")) {
                (Some(_), Some(_)) => vec![int("p")?, int("q")?],
                _ => vec![],
            };
            let key = RsaPrivateKey::from_components(int("n")?, int("e")?, int("d")?, primes)
                .map_err(|e| format!("the RSA JWK is not a consistent private key ({e})"))?;
            rs384(&key)?
        }
        Some(other) => {
            return Err(format!(
                "the JWK's key type is '{other}'; SMART Backend Services needs EC P-384 or RSA"
            ))
        }
        None => return Err("the JWK has no 'kty'".into()),
    };
    if let Some(d) = jwk["alg"].as_str().filter(|d| *d != alg_name(key.alg)) {
        return Err(format!(
            "the JWK's alg is {d}; this key can only be used with {}",
            alg_name(key.alg)
        ));
    }
    Ok(SigningKey {
        kid: jwk["kid"].as_str().map(String::from),
        ..key
    })
}

fn from_json(text: &str, kid: Option<&str>) -> Result<SigningKey, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
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
            .and_then(|k| rs384(&k)),
        "EC PRIVATE KEY" => p384::SecretKey::from_sec1_der(block.contents())
            .map_err(|_| NOT_P384.to_string())
            .and_then(|k| es384(&k)),
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

/// Loads a private key from PEM or JWK/JWKS bytes; `kid` picks a key from a JWKS. The key is
/// proven by signing once, so a wrong curve or a too-small RSA key fails here, not later.
pub fn load(bytes: &[u8], kid: Option<&str>) -> Result<SigningKey, KeyError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyError("the key file is not text (PEM or JSON)".into()))?;
    let key = if text.trim_start().starts_with('{') {
        from_json(text, kid)?
    } else {
        from_pem(bytes)?
    };
    jsonwebtoken::crypto::sign(b"fhirconn key check", &key.key, key.alg).map_err(
        |_| match key.alg {
            Algorithm::ES384 => NOT_P384.to_string(),
            _ => {
                "the RSA key is not usable for RS384 (at least 2048 bits are required)".to_string()
            }
        },
    )?;
    Ok(key)
}

#[cfg(test)]
mod tests;
