//! Sealing fleet cache values: AES-256-GCM with a random 96-bit nonce per value and the Redis
//! key as associated data (a value copied under another key does not open), so a reader of
//! Redis learns nothing and a writer without the key cannot forge a token.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

/// Format version byte at the start of every sealed value.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Why an encryption key could not be used. Never names the key's value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not base64.
    #[error("the encryption key is not base64 (expected 32 random bytes in base64)")]
    NotBase64,
    /// Wrong length.
    #[error("the encryption key is {0} bytes long; it must be 32 random bytes (in base64)")]
    Length(usize),
}

/// An AES-256-GCM key for the fleet cache, and a key for naming values derived from it.
/// `Debug` hides both.
pub(crate) struct Sealer(Aes256Gcm, zeroize::Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    /// A sealer from the key text: 32 bytes in base64 (standard or URL-safe, padding optional).
    pub(crate) fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .map_err(|_| KeyError::NotBase64)?;
        let key = zeroize::Zeroizing::new(bytes);
        if key.len() != 32 {
            return Err(KeyError::Length(key.len()));
        }
        let mut names = zeroize::Zeroizing::new([0u8; 32]);
        let digest = {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            h.update(b"fhirconn fleet names\0");
            h.update(&key[..]);
            h.finalize()
        };
        names.copy_from_slice(&digest);
        Aes256Gcm::new_from_slice(&key)
            .map(|c| Self(c, names))
            .map_err(|_| KeyError::Length(key.len()))
    }

    /// A name for `parts` that only holders of the key can compute (SHA-256 over a key derived
    /// from the encryption key and the parts, each length-prefixed), in hex.
    pub(crate) fn name(&self, parts: &[&str]) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(&self.1[..]);
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
        }
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `VERSION || nonce || ciphertext+tag` of `plain`, bound to `key`.
    pub(crate) fn seal(&self, key: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: key.as_bytes(),
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The plain text of a value [`Sealer::seal`]ed under `key` with the same secret key;
    /// `None` for anything else (another key, another Redis key, tampering, garbage).
    pub(crate) fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: key.as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";

    #[test]
    fn sealed_values_open_only_with_the_same_key_under_the_same_name() {
        let a = Sealer::from_base64(KEY_A).unwrap();
        let sealed = a.seal("fc:token:1", b"Bearer CANARY").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"CANARY"));
        assert_eq!(a.open("fc:token:1", &sealed).unwrap(), b"Bearer CANARY");
        // another key, another name, a flipped bit, truncation: nothing
        let b = Sealer::from_base64(KEY_B).unwrap();
        assert!(b.open("fc:token:1", &sealed).is_none());
        assert!(a.open("fc:token:2", &sealed).is_none());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(a.open("fc:token:1", &flipped).is_none());
        assert!(a.open("fc:token:1", &sealed[..20]).is_none());
        assert!(a.open("fc:token:1", b"").is_none());
        // a fresh nonce each time
        assert_ne!(a.seal("k", b"x").unwrap(), a.seal("k", b"x").unwrap());
    }

    #[test]
    fn names_depend_on_the_key_and_on_every_part() {
        let a = Sealer::from_base64(KEY_A).unwrap();
        let b = Sealer::from_base64(KEY_B).unwrap();
        assert_eq!(a.name(&["fp", "id"]), a.name(&["fp", "id"]));
        assert_ne!(a.name(&["fp", "id"]), b.name(&["fp", "id"]));
        assert_ne!(a.name(&["fp", "id"]), a.name(&["fp", "other"]));
        assert_ne!(a.name(&["fpi", "d"]), a.name(&["fp", "id"]));
        assert_eq!(a.name(&["x"]).len(), 32);
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64_and_never_show() {
        assert_eq!(
            Sealer::from_base64("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            Sealer::from_base64("AAEC").unwrap_err(),
            KeyError::Length(3)
        );
        let s = Sealer::from_base64(&format!("{KEY_A}\n")).unwrap();
        assert_eq!(format!("{s:?}"), "Sealer([REDACTED])");
    }
}
