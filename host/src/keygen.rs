//! `fhirconn keygen`: a key pair for SMART Backend Services — the private key as PKCS#8 PEM
//! (mode 0600) and the public JWKS to register with the server.

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};

/// The algorithms SMART Backend Services allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (a 2048-bit key).
    Rs384,
}

/// A failure while generating or writing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists already.
    #[error("{0} exists; refusing to overwrite a key (use --force to replace it)")]
    Exists(PathBuf),
}

/// A generated key pair.
pub struct GeneratedKey {
    /// The key id (given, or the RFC 7638 thumbprint).
    pub kid: String,
    /// The algorithm.
    pub alg: KeyAlg,
    /// PKCS#8 PEM of the private key.
    pub private_pem: SecretString,
    /// The public JWKS (one key).
    pub jwks: JwkSet,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Generates a key pair; `kid` defaults to the public key's RFC 7638 SHA-256 thumbprint.
pub fn generate(alg: KeyAlg, kid: Option<&str>) -> Result<GeneratedKey, KeygenError> {
    let gen = |e: rcgen::Error| KeygenError::Generate(e.to_string());
    let jwt = |e: jsonwebtoken::errors::Error| KeygenError::Generate(e.to_string());
    let (pair, algorithm, key_alg) = match alg {
        KeyAlg::Es384 => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(gen)?,
            Algorithm::ES384,
            KeyAlgorithm::ES384,
        ),
        KeyAlg::Rs384 => (
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA384, rcgen::RsaKeySize::_2048)
                .map_err(gen)?,
            Algorithm::RS384,
            KeyAlgorithm::RS384,
        ),
    };
    let pem = SecretString::from(pair.serialize_pem());
    let enc = match alg {
        KeyAlg::Es384 => EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()),
        KeyAlg::Rs384 => EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes()),
    }
    .map_err(jwt)?;
    let mut jwk = Jwk::from_encoding_key(&enc, algorithm).map_err(jwt)?;
    let kid = match kid {
        Some(k) => k.to_string(),
        None => jwk.thumbprint(ThumbprintHash::SHA256).map_err(jwt)?,
    };
    jwk.common.key_id = Some(kid.clone());
    jwk.common.key_algorithm = Some(key_alg);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(GeneratedKey {
        kid,
        alg,
        private_pem: pem,
        jwks: JwkSet { keys: vec![jwk] },
    })
}

/// Writes one file through [`crate::safe_write`]: a private temporary file renamed over the
/// target, so a symlink planted at the target is replaced, never written through (also with
/// `force`).
fn write_file(path: &Path, bytes: &[u8], private: bool, force: bool) -> Result<(), KeygenError> {
    let opts = crate::safe_write::Options {
        mode: if private { 0o600 } else { 0o644 },
        follow_target_symlink: false,
        create_new: !force,
    };
    crate::safe_write::write(path, bytes, opts).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists && !force {
            KeygenError::Exists(path.to_path_buf())
        } else {
            KeygenError::Write {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// Writes `private-key.pem` (0600) and `jwks.json` into `dir` (created if missing); returns
/// their paths. Existing files are kept unless `force`; a new directory is 0700.
pub fn write(
    dir: &Path,
    key: &GeneratedKey,
    force: bool,
) -> Result<(PathBuf, PathBuf), KeygenError> {
    crate::safe_write::create_private_dir(dir).map_err(|source| KeygenError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let private = dir.join("private-key.pem");
    let public = dir.join("jwks.json");
    for p in [&private, &public] {
        if !force && std::fs::symlink_metadata(p).is_ok() {
            return Err(KeygenError::Exists(p.clone()));
        }
    }
    write_file(
        &private,
        key.private_pem.expose_secret().as_bytes(),
        true,
        force,
    )?;
    let jwks = serde_json::to_string_pretty(&key.jwks).unwrap_or_default() + "\n";
    write_file(&public, jwks.as_bytes(), false, force)?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_what_their_public_jwk_verifies_and_files_are_private() {
        for (alg, a) in [
            (KeyAlg::Es384, Algorithm::ES384),
            (KeyAlg::Rs384, Algorithm::RS384),
        ] {
            let key = generate(alg, None).unwrap();
            assert_eq!(key.kid.len(), 43, "base64url SHA-256 thumbprint");
            let jwk = &key.jwks.keys[0];
            assert!(!serde_json::to_string(jwk).unwrap().contains("\"d\""));
            let enc = match alg {
                KeyAlg::Es384 => {
                    EncodingKey::from_ec_pem(key.private_pem.expose_secret().as_bytes())
                }
                KeyAlg::Rs384 => {
                    EncodingKey::from_rsa_pem(key.private_pem.expose_secret().as_bytes())
                }
            }
            .unwrap();
            let sig = jsonwebtoken::crypto::sign(b"m", &enc, a).unwrap();
            let dec = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
            assert!(jsonwebtoken::crypto::verify(&sig, b"m", &dec, a).unwrap());

            let dir = tempfile::tempdir().unwrap();
            let (private, public) = write(dir.path(), &key, false).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(&private).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
            assert!(std::fs::read_to_string(public).unwrap().contains(&key.kid));
            assert!(matches!(
                write(dir.path(), &key, false),
                Err(KeygenError::Exists(_))
            ));
            write(dir.path(), &key, true).unwrap();
        }
        assert_eq!(generate(KeyAlg::Es384, Some("k-1")).unwrap().kid, "k-1");
    }
}
