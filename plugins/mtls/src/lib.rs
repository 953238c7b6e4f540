//! fhirconn scheme `mtls`: a TLS client certificate. The host builds the TLS client from the
//! identity this scheme returns and presents it to the FHIR server and to the token endpoints
//! of schemes stacked after it on the same connection.
//!
//! Settings: `certificate-file` (PEM, leaf first, then intermediates) with the private key as
//! exactly one of `private-key`, `private-key-file`, `private-key-env` (PEM: PKCS#8, PKCS#1 RSA,
//! SEC1 EC, or encrypted PKCS#8 with `private-key-password`, `-file` or `-env`); **or**
//! `p12-file` (PKCS#12) with `p12-password`, `-file` or `-env`.
//!
//! Checked at configure time: the key belongs to the leaf certificate, the certificate allows
//! client authentication when it lists extended key usages, and it is valid now. A certificate
//! that expires within 30 days yields a warning.

#![forbid(unsafe_code)]

use fhirconn_sdk::identity::{self, Fields, KeyFormat, PrivateKey};
use fhirconn_sdk::serde_json::Value;
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, ClientIdentity, Connection, ConnectionInfo, Credentials, Error,
    ExposeSecret, Host, Result, Scheme,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Warn when the certificate expires sooner than this.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The `mtls` scheme.
#[derive(Debug, Default)]
pub struct Mtls;

/// A configured `mtls` connection (`Debug` shows no key: [`ClientIdentity`] redacts it).
#[derive(Debug)]
pub struct MtlsConnection {
    identity: ClientIdentity,
    subject: String,
    not_after: SystemTime,
    /// The warning for a password given beside a key that is not encrypted, if any.
    ignored_password: Option<String>,
}

/// TLS client certificate
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars", extend("oneOf" = [
    {"required": ["certificate-file"],
     "not": {"anyOf": [{"required": ["p12-file"]}, {"required": ["p12-password"]},
                       {"required": ["p12-password-file"]}, {"required": ["p12-password-env"]}]}},
    {"required": ["p12-file"],
     "not": {"anyOf": [{"required": ["certificate-file"]}, {"required": ["private-key"]},
                       {"required": ["private-key-file"]}, {"required": ["private-key-env"]}]}}
]))]
struct MtlsSettings {
    /// PEM: the client certificate first, then intermediates
    #[schemars(length(min = 1))]
    certificate_file: Option<String>,
    /// PEM private key
    private_key: Option<SecretSetting>,
    /// password of an encrypted PKCS#8 key
    private_key_password: Option<SecretSetting>,
    /// PKCS#12 (.p12/.pfx) with key and chain
    #[schemars(length(min = 1))]
    p12_file: Option<String>,
    /// PKCS#12 password
    p12_password: Option<SecretSetting>,
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
}

/// The checks a person would otherwise learn about from a failed handshake.
fn check(
    certs: &[Vec<u8>],
    key: &PrivateKey,
    now: SystemTime,
    field: &str,
) -> Result<(String, SystemTime)> {
    let leaf = certs.first().map(|c| X509Certificate::from_der(c));
    let leaf = leaf.ok_or_else(|| Error::config(format!("{field}: holds no certificate")))?;
    let (_, leaf) = leaf.map_err(|e| {
        Error::config(format!(
            "{field}: the first certificate cannot be parsed ({e})"
        ))
    })?;
    let subject = leaf.subject().to_string();
    let der = key.der().to_vec();
    let key = match key.format() {
        KeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(der.into()),
        KeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(der.into()),
        KeyFormat::Sec1 => PrivateKeyDer::Sec1(der.into()),
    };
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        Error::config(format!(
            "the private key is not a usable RSA or EC key ({e})"
        ))
    })?;
    let chain = certs
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    if let Err(e) = certified.keys_match() {
        return Err(Error::config(match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "the private key does not belong to the certificate '{subject}' (the first \
                 certificate in {field} must be the one issued for this key)"
            ),
            other => format!("cannot check the key against the certificate '{subject}': {other}"),
        }));
    }
    if let Ok(Some(eku)) = leaf.extended_key_usage() {
        let eku = eku.value;
        if !(eku.client_auth || eku.any) {
            let listed: Vec<&str> = [
                (eku.server_auth, "serverAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            return Err(Error::config(format!(
                "the certificate '{subject}' does not allow TLS client authentication (its \
                 extended key usage lists {}; it needs clientAuth)",
                if listed.is_empty() {
                    "other purposes".to_string()
                } else {
                    listed.join(", ")
                }
            )));
        }
    }
    let validity = leaf.validity();
    let not_before = to_system_time(validity.not_before);
    let not_after = to_system_time(validity.not_after);
    if now < not_before {
        return Err(Error::config(format!(
            "the certificate '{subject}' is not valid before {}",
            validity.not_before
        )));
    }
    if now > not_after {
        return Err(Error::config(format!(
            "the certificate '{subject}' expired on {}",
            validity.not_after
        )));
    }
    Ok((subject, not_after))
}

impl Scheme for Mtls {
    fn name(&self) -> &str {
        "mtls"
    }

    fn summary(&self) -> &str {
        "a TLS client certificate (PEM or PKCS#12), optionally stacked with a token scheme"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<MtlsSettings>()
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let s: MtlsSettings = settings::parse(settings, host)?;
        let mut ignored_password = None;
        let (certs, key, field) = match (s.certificate_file, s.p12_file) {
            (Some(cert_file), None) => {
                let key = SecretSetting::require(s.private_key, "private-key")?;
                let password = s.private_key_password.map(SecretSetting::into_secret);
                let fields = Fields {
                    file: &key.key(),
                    password: "private-key-password",
                };
                let parsed = identity::parse_key(key.expose_secret(), password.as_ref(), fields)?;
                if parsed.password_ignored {
                    let warning = identity::password_ignored_warning(fields);
                    host.warn(&warning);
                    ignored_password = Some(warning);
                }
                let key = parsed.key;
                let bytes = host
                    .read_file(&cert_file)
                    .map_err(|e| e.context("certificate-file"))?;
                let certs = identity::parse_certificates(&bytes, "certificate-file")?;
                (certs, key, "certificate-file")
            }
            (None, Some(p12)) => {
                let bytes = host.read_file(&p12).map_err(|e| e.context("p12-file"))?;
                let password = s.p12_password.as_ref().map_or("", |p| p.expose_secret());
                let fields = Fields {
                    file: "p12-file",
                    password: "p12-password",
                };
                let (certs, key) = identity::load_pkcs12(&bytes, password, fields)?;
                (certs, key, "p12-file")
            }
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "set either certificate-file (with a private key) or p12-file, not both",
                ))
            }
            (None, None) => {
                return Err(Error::config(
                    "set certificate-file and private-key-file, or p12-file",
                ))
            }
        };
        let (subject, not_after) = check(&certs, &key, host.now(), field)?;
        host.debug(&format!("client certificate '{subject}'"));
        Ok(Box::new(MtlsConnection {
            identity: identity::client_identity(&certs, &key),
            subject,
            not_after,
            ignored_password,
        }))
    }
}

impl Connection for MtlsConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let mut creds = Credentials::new().identity(self.identity.clone());
        if let Some(w) = &self.ignored_password {
            creds = creds.warning(w.clone());
        }
        let left = self
            .not_after
            .duration_since(host.now())
            .unwrap_or(Duration::ZERO);
        if left < EXPIRY_WARNING {
            creds = creds.warning(format!(
                "the client certificate '{}' expires in {} day(s)",
                self.subject,
                left.as_secs() / 86_400
            ));
        }
        Ok(creds)
    }
}

fhirconn_sdk::export_schemes!(Mtls);

#[cfg(test)]
mod tests;
