//! Private keys for client assertions: PEM (PKCS#8, PKCS#1 RSA, SEC1 EC) or a private JWK or
//! JWKS, turned into a `jsonwebtoken` signing key for RS384 or ES384 and checked by signing once.

use base64::Engine as _;
use fhirconn_sdk::serde_json::Value;
use jsonwebtoken::{Algorithm, EncodingKey};

/// A signing key ready for client assertions. `Debug` shows no key material.
pub struct SigningKey {
    /// RS384 or ES384.
    pub alg: Algorithm,
    /// The key id from the JWK, if the key came from one.
    pub kid: Option<String>,
    pub(crate) key: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// DER: one tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// DER INTEGER from unsigned big-endian bytes.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    tlv(0x02, &content)
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// secp384r1 (1.3.132.0.34).
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// Wraps a SEC1 `ECPrivateKey` for P-384 into PKCS#8 (RFC 5915 §2, RFC 5208).
fn p384_pkcs8_from_sec1(sec1: &[u8]) -> Vec<u8> {
    seq(&[
        der_uint(&[0]),
        seq(&[OID_EC_PUBLIC_KEY.to_vec(), OID_P384.to_vec()]),
        tlv(0x04, sec1),
    ])
}

fn b64url(jwk: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = jwk[field]
        .as_str()
        .ok_or_else(|| format!("the JWK has no '{field}'"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("the JWK's '{field}' is not base64url"))
}

fn from_jwk(jwk: &Value) -> Result<SigningKey, String> {
    let kid = jwk["kid"].as_str().map(String::from);
    if jwk.get("d").is_none() {
        return Err("the JWK is a public key (no 'd'); the private key is needed".into());
    }
    let declared = jwk["alg"].as_str();
    let (alg, key) = match jwk["kty"].as_str() {
        Some("EC") => {
            match jwk["crv"].as_str() {
                Some("P-384") => {}
                Some(other) => {
                    return Err(format!(
                        "the JWK's curve is {other}; SMART Backend Services needs P-384 (ES384) or RSA (RS384)"
                    ))
                }
                None => return Err("the EC JWK has no 'crv'".into()),
            }
            let (d, x, y) = (b64url(jwk, "d")?, b64url(jwk, "x")?, b64url(jwk, "y")?);
            if d.len() > 48 || x.len() != 48 || y.len() != 48 {
                return Err("the JWK's d, x or y has the wrong length for P-384".into());
            }
            let mut d48 = vec![0u8; 48 - d.len()];
            d48.extend(d);
            let point = [&[0x00, 0x04][..], &x, &y].concat();
            let sec1 = seq(&[
                der_uint(&[1]),
                tlv(0x04, &d48),
                tlv(0xA1, &tlv(0x03, &point)),
            ]);
            (
                Algorithm::ES384,
                EncodingKey::from_ec_der(&p384_pkcs8_from_sec1(&sec1)),
            )
        }
        Some("RSA") => {
            let mut parts = vec![der_uint(&[0])];
            for f in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
                let v = b64url(jwk, f).map_err(|e| {
                    if matches!(f, "p" | "q" | "dp" | "dq" | "qi") {
                        format!("{e}: RSA JWKs without the CRT parameters (p, q, dp, dq, qi) are not supported")
                    } else {
                        e
                    }
                })?;
                parts.push(der_uint(&v));
            }
            (Algorithm::RS384, EncodingKey::from_rsa_der(&seq(&parts)))
        }
        Some(other) => {
            return Err(format!(
                "the JWK's key type is '{other}'; SMART Backend Services needs EC P-384 or RSA"
            ))
        }
        None => return Err("the JWK has no 'kty'".into()),
    };
    if let Some(d) = declared {
        let want = match alg {
            Algorithm::ES384 => "ES384",
            _ => "RS384",
        };
        if d != want {
            return Err(format!(
                "the JWK's alg is {d}; this key can only be used with {want}"
            ));
        }
    }
    Ok(SigningKey { alg, kid, key })
}

fn from_json(text: &str, kid: Option<&str>) -> Result<SigningKey, String> {
    let v: Value =
        fhirconn_sdk::serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
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
        "PRIVATE KEY" => {
            if let Ok(key) = EncodingKey::from_rsa_pem(bytes) {
                Ok(SigningKey {
                    alg: Algorithm::RS384,
                    kid: None,
                    key,
                })
            } else if let Ok(key) = EncodingKey::from_ec_pem(bytes) {
                Ok(SigningKey {
                    alg: Algorithm::ES384,
                    kid: None,
                    key,
                })
            } else {
                Err("the PKCS#8 key is neither RSA nor EC (Ed25519 and others are not allowed by SMART)".into())
            }
        }
        "RSA PRIVATE KEY" => EncodingKey::from_rsa_pem(bytes)
            .map(|key| SigningKey {
                alg: Algorithm::RS384,
                kid: None,
                key,
            })
            .map_err(|e| format!("invalid PKCS#1 RSA key ({e})")),
        "EC PRIVATE KEY" => Ok(SigningKey {
            alg: Algorithm::ES384,
            kid: None,
            key: EncodingKey::from_ec_der(&p384_pkcs8_from_sec1(block.contents())),
        }),
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
pub fn load(bytes: &[u8], kid: Option<&str>) -> Result<SigningKey, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the key file is not text (PEM or JSON)")?;
    let key = if text.trim_start().starts_with('{') {
        from_json(text, kid)?
    } else {
        from_pem(bytes)?
    };
    jsonwebtoken::crypto::sign(b"fhirconn key check", &key.key, key.alg).map_err(
        |_| match key.alg {
            Algorithm::ES384 => {
                "the EC key is not a valid P-384 key (SMART Backend Services needs ES384 or RS384)"
                    .to_string()
            }
            _ => {
                "the RSA key is not usable for RS384 (at least 2048 bits are required)".to_string()
            }
        },
    )?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_unsigned() {
        assert_eq!(der_uint(&[0]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_uint(&[0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(der_uint(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
