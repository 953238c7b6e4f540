//! Randomness for OAuth: PKCE (RFC 7636, `S256`), `state`, `jti`.

use crate::secret::SecretString;
use crate::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("the operating system gave no randomness: {e}")))?;
    Ok(bytes)
}

/// `n` random bytes from the operating system, as lowercase hex (`2n` characters).
pub fn random_hex(n: usize) -> Result<String> {
    Ok(random_bytes(n)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A PKCE pair: the secret `code_verifier` (sent with the code) and its `S256`
/// `code_challenge` (sent in the authorization URL).
pub struct Pkce {
    /// 32 random bytes, base64url without padding: 43 characters (RFC 7636 §4.1).
    pub verifier: SecretString,
    /// `BASE64URL(SHA256(verifier))` without padding.
    pub challenge: String,
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

impl Pkce {
    /// A fresh pair; `code_challenge_method` is `S256`.
    pub fn new() -> Result<Self> {
        let verifier = URL_SAFE_NO_PAD.encode(random_bytes(32)?);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Ok(Self {
            verifier: SecretString::from(verifier),
            challenge,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ExposeSecret;

    #[test]
    fn s256_matches_rfc7636_appendix_b_and_pairs_are_fresh() {
        // RFC 7636 Appendix B.
        let digest = Sha256::digest(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (a, b) = (Pkce::new().unwrap(), Pkce::new().unwrap());
        assert_eq!(a.verifier.expose_secret().len(), 43);
        assert_ne!(a.verifier.expose_secret(), b.verifier.expose_secret());
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(a.verifier.expose_secret().as_bytes()));
        assert_eq!(a.challenge, expected);
        assert!(!format!("{a:?}").contains(a.verifier.expose_secret()));
        assert_eq!(random_hex(16).unwrap().len(), 32);
    }
}
