//! The result of a connection test: stages passed, timings, certificates, warnings, and the
//! diagnosis of what failed, cleaned for printing.

use super::{Diagnosis, DiagnosisKind, Stage};
use serde::Serialize;

/// The probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    /// The path read.
    pub path: String,
    /// Its status.
    pub status: u16,
    /// How long it took.
    pub ms: u64,
}

/// The result of testing one connection.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// Connection id.
    pub id: String,
    /// Whether every stage passed.
    pub ok: bool,
    /// The base URL.
    pub base_url: String,
    /// The schemes, in order.
    pub schemes: Vec<String>,
    /// `CapabilityStatement.fhirVersion`.
    pub fhir_version: Option<String>,
    /// `CapabilityStatement.software` name and version.
    pub software: Option<String>,
    /// The probe's outcome.
    pub probe: Option<ProbeReport>,
    /// Why it failed.
    pub failure: Option<Diagnosis>,
    /// Things worth knowing that are not failures.
    pub warnings: Vec<String>,
    /// The server's TLS certificate, for HTTPS.
    pub server_certificate: Option<CertificateFacts>,
    /// The client certificate offered, if a scheme supplied one.
    pub client_certificate: Option<CertificateFacts>,
    /// The SMART launch context of the sign-in (`patient`, `encounter`, `fhirUser`, granted
    /// `scope`, ...), sanitised; absent for other schemes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_context: Option<fhirconn_sdk::wire::LaunchContext>,
    /// Where the credentials came from (fetched, persistent or fleet cache, local fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_source: Option<crate::fleet::CredentialSource>,
    /// Time to obtain credentials.
    pub credentials_ms: u64,
    /// Time of the metadata request.
    pub metadata_ms: u64,
    /// Total time.
    pub total_ms: u64,
}

/// What a person debugging TLS wants to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateFacts {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// End of validity, RFC 2822-like as x509-parser prints it.
    pub not_after: String,
    /// Whole days until it expires (negative when expired).
    pub days_left: i64,
}

impl CertificateFacts {
    /// Reads the facts of a DER certificate; `None` if it cannot be parsed.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let not_after = cert.validity().not_after;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as i64;
        Some(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_after: not_after.to_string(),
            days_left: (not_after.timestamp() - now).div_euclid(86_400),
        })
    }
}

/// The first certificate of a PEM chain, as DER.
pub(crate) fn pem_first_certificate(pem_text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let start = pem_text.find("-----BEGIN CERTIFICATE-----")? + 27;
    let end = start + pem_text[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = pem_text[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// How many characters of a diagnosis a report keeps.
const MAX_MESSAGE: usize = 2000;

impl TestReport {
    /// Makes the report safe to print and to store: every text that came from outside (the
    /// server's software, diagnostics, challenge, certificate names; warnings) has the known
    /// secrets removed in all their forms, then its control characters escaped, on one line.
    /// Redaction comes first, so no cut or escape can hide a secret from it.
    pub(crate) fn clean(&mut self, redactor: &crate::services::Redactor) {
        use crate::services::sanitize_line;
        let line = |s: &str, max: usize| sanitize_line(&redactor.redact(s), max);
        for field in [&mut self.fhir_version, &mut self.software] {
            if let Some(v) = field.as_mut() {
                *v = line(v, 200);
            }
        }
        if let Some(d) = self.failure.as_mut() {
            d.message = line(&d.message, MAX_MESSAGE);
            if let Some(c) = d.www_authenticate.as_mut() {
                *c = line(c, MAX_MESSAGE);
            }
        }
        for w in &mut self.warnings {
            *w = line(w, MAX_MESSAGE);
        }
        if let Some(p) = self.probe.as_mut() {
            p.path = line(&p.path, MAX_MESSAGE);
        }
        for c in [&mut self.server_certificate, &mut self.client_certificate]
            .into_iter()
            .flatten()
        {
            c.subject = line(&c.subject, 500);
            c.issuer = line(&c.issuer, 500);
            c.not_after = line(&c.not_after, 100);
        }
    }

    /// A report of nothing tested yet.
    pub(crate) fn new(id: &str, base_url: &str, schemes: Vec<String>) -> Self {
        Self {
            id: id.to_string(),
            ok: false,
            base_url: base_url.to_string(),
            schemes,
            fhir_version: None,
            software: None,
            probe: None,
            failure: None,
            warnings: Vec::new(),
            server_certificate: None,
            client_certificate: None,
            launch_context: None,
            credential_source: None,
            credentials_ms: 0,
            metadata_ms: 0,
            total_ms: 0,
        }
    }

    /// A report for a connection that could not be set up.
    pub fn unavailable(id: &str, base_url: &str, schemes: Vec<String>, reason: &str) -> Self {
        Self {
            failure: Some(Diagnosis::new(
                Stage::Setup,
                DiagnosisKind::Unavailable,
                crate::services::sanitize_line(reason, MAX_MESSAGE),
            )),
            ..Self::new(id, base_url, schemes)
        }
    }
}
