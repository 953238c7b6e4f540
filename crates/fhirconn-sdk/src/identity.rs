//! TLS client identities (feature `identity`): a private key and its certificate chain read
//! from PEM (PKCS#8, PKCS#1 RSA, SEC1 EC, encrypted PKCS#8 with PBES2) or PKCS#12, classified
//! and turned into the [`ClientIdentity`] the host builds its TLS client from.
//!
//! Keys encrypted the classic OpenSSL way (`Proc-Type: 4,ENCRYPTED`) and PBES1 keys are refused
//! with the command that converts them; a password given for a key that is not encrypted is
//! reported ([`ParsedKey::password_ignored`], [`password_ignored_warning`]) so a scheme can warn.
//! Errors are configuration errors naming the setting, never key material. What the key and
//! certificate mean (they match, the certificate allows client authentication, it is valid now)
//! is the scheme's to check with its TLS library.
//!
//! ```
//! use fhirconn_sdk::identity::{self, Fields};
//! let fields = Fields { file: "private-key", password: "private-key-password" };
//! let e = identity::parse_key("not pem", None, fields).unwrap_err();
//! assert!(e.message().starts_with("private-key: not a PEM private key"));
//! ```

use crate::{ClientIdentity, Error, ExposeSecret as _, Result, SecretString};
use zeroize::Zeroizing;

/// The names of the settings a key or a PKCS#12 file came from, for messages: `file` (e.g.
/// `private-key-file`, `p12-file`) and the setting of its `password` (e.g.
/// `private-key-password`, whose `-file` and `-env` forms are named too).
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// The setting that held the key or the file.
    pub file: &'a str,
    /// The setting of its password.
    pub password: &'a str,
}

/// The encoding of a private key's DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// PKCS#8 `PrivateKeyInfo` (`PRIVATE KEY`).
    Pkcs8,
    /// PKCS#1 `RSAPrivateKey` (`RSA PRIVATE KEY`).
    Pkcs1,
    /// SEC1 `ECPrivateKey` (`EC PRIVATE KEY`).
    Sec1,
}

impl KeyFormat {
    /// The PEM label of this format.
    pub fn label(self) -> &'static str {
        match self {
            KeyFormat::Pkcs8 => "PRIVATE KEY",
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
        }
    }
}

/// An unencrypted private key in DER (zeroed on drop; `Debug` shows the format only).
#[derive(Clone)]
pub struct PrivateKey {
    format: KeyFormat,
    der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A key from its DER and format.
    pub fn new(format: KeyFormat, der: Vec<u8>) -> Self {
        Self {
            format,
            der: Zeroizing::new(der),
        }
    }
    /// The key's format.
    pub fn format(&self) -> KeyFormat {
        self.format
    }
    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    /// The key as PEM under its format's label.
    pub fn to_pem(&self) -> SecretString {
        let block = pem::Pem::new(self.format.label(), self.der.to_vec());
        SecretString::from(pem::encode(&block))
    }
}

/// What [`parse_key`] found: the key, and whether a password was given for a key that is not
/// encrypted (DSF ignores such a password; a scheme may do the same, with a warning).
#[derive(Debug)]
pub struct ParsedKey {
    /// The (decrypted) key.
    pub key: PrivateKey,
    /// A password was given, but the key is not encrypted.
    pub password_ignored: bool,
}

/// The warning for a password given beside a key that is not encrypted.
pub fn password_ignored_warning(fields: Fields<'_>) -> String {
    format!(
        "{} is set, but the key in {} is not encrypted; the password is ignored",
        fields.password, fields.file
    )
}

/// The message for a key encrypted the classic OpenSSL way (`openssl genrsa -aes256`,
/// `-traditional`: a PEM header, not PKCS#8), with the command that converts it; `None` for
/// any other block.
fn classic_encryption(block: &pem::Pem, fields: Fields<'_>) -> Option<Error> {
    let proc_type = block.headers().get("Proc-Type")?;
    if !proc_type
        .replace(' ', "")
        .eq_ignore_ascii_case("4,ENCRYPTED")
    {
        return None;
    }
    let cipher = block.headers().get("DEK-Info").unwrap_or("unknown cipher");
    let cipher = cipher.split(',').next().unwrap_or_default();
    Some(Error::config(format!(
        "{}: the key is encrypted in the classic OpenSSL format (Proc-Type: 4,ENCRYPTED, \
         DEK-Info: {cipher}), which is not supported; convert it to encrypted PKCS#8 with \
         `openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.key -out new.key` (it asks for the old \
         and the new password) and set {} to the new one",
        fields.file, fields.password
    )))
}

/// Parses a PEM private key, decrypting an encrypted PKCS#8 key (PBES2) with `password`.
pub fn parse_key(
    text: &str,
    password: Option<&SecretString>,
    fields: Fields<'_>,
) -> Result<ParsedKey> {
    let field = fields.file;
    let block = pem::parse(text.as_bytes())
        .map_err(|e| Error::config(format!("{field}: not a PEM private key ({e})")))?;
    if let Some(e) = classic_encryption(&block, fields) {
        return Err(e);
    }
    let format = match block.tag() {
        "PRIVATE KEY" => KeyFormat::Pkcs8,
        "RSA PRIVATE KEY" => KeyFormat::Pkcs1,
        "EC PRIVATE KEY" => KeyFormat::Sec1,
        "ENCRYPTED PRIVATE KEY" => {
            let key = decrypt(block.contents(), password, fields)?;
            return Ok(ParsedKey {
                key,
                password_ignored: false,
            });
        }
        "CERTIFICATE" => {
            return Err(Error::config(format!(
                "{field}: holds a certificate, not a private key (the certificate goes in \
                 certificate-file)"
            )))
        }
        other => {
            return Err(Error::config(format!(
                "{field}: unsupported PEM block '{other}' (expected PRIVATE KEY, RSA PRIVATE \
                 KEY, EC PRIVATE KEY or ENCRYPTED PRIVATE KEY)"
            )))
        }
    };
    Ok(ParsedKey {
        key: PrivateKey::new(format, block.into_contents()),
        password_ignored: password.is_some(),
    })
}

/// Decrypts an encrypted PKCS#8 key (PBES2 only).
fn decrypt(der: &[u8], password: Option<&SecretString>, fields: Fields<'_>) -> Result<PrivateKey> {
    let (field, pw) = (fields.file, fields.password);
    let Some(password) = password else {
        return Err(Error::config(format!(
            "{field}: the key is encrypted; set {pw}, {pw}-file or {pw}-env"
        )));
    };
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der)
        .map_err(|e| Error::config(format!("{field}: invalid encrypted key ({e})")))?;
    if info.encryption_algorithm.pbes2().is_none() {
        return Err(Error::config(format!(
            "{field}: legacy PKCS#5 v1.5 encryption (PBES1, e.g. 3DES) is not supported; \
             re-encrypt with `openssl pkcs8 -topk8 -v2 aes-256-cbc`"
        )));
    }
    let plain = info
        .decrypt(password.expose_secret().as_bytes())
        .map_err(|_| Error::config(format!("{field}: cannot decrypt the key: wrong {pw}")))?;
    Ok(PrivateKey::new(KeyFormat::Pkcs8, plain.as_bytes().to_vec()))
}

/// The `CERTIFICATE` blocks of a PEM file (DER, in order: leaf first); at least one.
pub fn parse_certificates(bytes: &[u8], field: &str) -> Result<Vec<Vec<u8>>> {
    let blocks = pem::parse_many(bytes)
        .map_err(|e| Error::config(format!("{field}: not a PEM file ({e})")))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{field}: holds no CERTIFICATE block"
        )));
    }
    Ok(certs)
}

/// The private key and its certificate chain (leaf first) of a PKCS#12 file, opened with
/// `password` (strict import policy).
pub fn load_pkcs12(
    bytes: &[u8],
    password: &str,
    fields: Fields<'_>,
) -> Result<(Vec<Vec<u8>>, PrivateKey)> {
    let (field, pw) = (fields.file, fields.password);
    let store = p12_keystore::KeyStore::from_pkcs12(
        bytes,
        password,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .map_err(|e| {
        Error::config(format!(
            "{field}: cannot open the PKCS#12 file: wrong {pw} or not a PKCS#12 file ({e})"
        ))
    })?;
    let (_, chain) = store.private_key_chain().ok_or_else(|| {
        Error::config(format!(
            "{field}: holds no private key with its certificate"
        ))
    })?;
    let certs: Vec<Vec<u8>> = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{field}: the private key has no certificate"
        )));
    }
    let key = PrivateKey::new(KeyFormat::Pkcs8, chain.key().as_der().to_vec());
    Ok((certs, key))
}

/// The identity the host presents: the chain as PEM (leaf first) and the key as PEM.
pub fn client_identity<C: AsRef<[u8]>>(certificates: &[C], key: &PrivateKey) -> ClientIdentity {
    ClientIdentity {
        certificate_chain_pem: certificates
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.as_ref().to_vec())))
            .collect(),
        private_key_pem: key.to_pem(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: Fields<'static> = Fields {
        file: "private-key-file",
        password: "private-key-password",
    };

    fn block(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der.to_vec()))
    }

    #[test]
    fn labels_classify_keys_and_pem_round_trips() {
        for format in [KeyFormat::Pkcs8, KeyFormat::Pkcs1, KeyFormat::Sec1] {
            let text = block(format.label(), b"\x30\x03\x02\x01\x00");
            let parsed = parse_key(&text, None, FIELDS).unwrap();
            assert_eq!(parsed.key.format(), format);
            assert!(!parsed.password_ignored);
            assert_eq!(parsed.key.to_pem().expose_secret(), &text);
            assert!(!format!("{:?}", parsed.key).contains("30"));
            let pw = SecretString::from("pw");
            assert!(
                parse_key(&text, Some(&pw), FIELDS)
                    .unwrap()
                    .password_ignored
            );
        }
        assert_eq!(
            password_ignored_warning(FIELDS),
            "private-key-password is set, but the key in private-key-file is not encrypted; \
             the password is ignored"
        );
    }

    #[test]
    fn wrong_blocks_and_classic_encryption_are_named() {
        let classic = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4, ENCRYPTED\n\
                       DEK-Info: DES-EDE3-CBC,0011223344556677\n\nAAAA\n\
                       -----END RSA PRIVATE KEY-----\n";
        let cases = [
            (classic.to_string(), "classic OpenSSL format"),
            (classic.to_string(), "DEK-Info: DES-EDE3-CBC)"),
            (
                block("CERTIFICATE", b"x"),
                "holds a certificate, not a private key",
            ),
            (
                block("PUBLIC KEY", b"x"),
                "unsupported PEM block 'PUBLIC KEY'",
            ),
            (
                block("ENCRYPTED PRIVATE KEY", b"x"),
                "set private-key-password,",
            ),
            ("garbage".into(), "private-key-file: not a PEM private key"),
        ];
        for (text, expected) in cases {
            let e = parse_key(&text, None, FIELDS).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            assert!(e.message().contains(expected), "{expected}: {e}");
        }
        let pw = SecretString::from("pw");
        let e = parse_key(&block("ENCRYPTED PRIVATE KEY", b"x"), Some(&pw), FIELDS).unwrap_err();
        assert!(e.message().contains("invalid encrypted key"), "{e}");
    }

    #[test]
    fn certificates_keep_their_order_and_the_identity_is_pem() {
        let text = format!(
            "{}{}{}",
            block("CERTIFICATE", b"leaf"),
            block("PRIVATE KEY", b"k"),
            block("CERTIFICATE", b"ca")
        );
        let certs = parse_certificates(text.as_bytes(), "certificate-file").unwrap();
        assert_eq!(certs, [b"leaf".to_vec(), b"ca".to_vec()]);
        let e = parse_certificates(block("PRIVATE KEY", b"k").as_bytes(), "c").unwrap_err();
        assert!(e.message().contains("c: holds no CERTIFICATE block"), "{e}");
        let key = PrivateKey::new(KeyFormat::Sec1, b"k".to_vec());
        let id = client_identity(&certs, &key);
        let chain = format!(
            "{}{}",
            block("CERTIFICATE", b"leaf"),
            block("CERTIFICATE", b"ca")
        );
        assert_eq!(id.certificate_chain_pem, chain);
        assert_eq!(
            id.private_key_pem.expose_secret(),
            &block("EC PRIVATE KEY", b"k")
        );
        let p12 = Fields {
            file: "p12-file",
            password: "p12-password",
        };
        let e = load_pkcs12(b"not pkcs12", "pw", p12).unwrap_err();
        assert!(
            e.message()
                .contains("p12-file: cannot open the PKCS#12 file: wrong p12-password"),
            "{e}"
        );
    }
}
