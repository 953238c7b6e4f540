//! What a connection test found wrong: the stage, a [`DiagnosisKind`], and words for a person
//! (from credential errors, transport errors, HTTP answers, and `/metadata` bodies).

use super::{Error, Response, TransportError};
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

/// Where a connection test failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Setting the connection up (plugin, configuration).
    Setup,
    /// Obtaining credentials.
    Credentials,
    /// `GET {base}/metadata`.
    Metadata,
    /// The authenticated probe read.
    Probe,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Setup => "setup",
            Stage::Credentials => "credentials",
            Stage::Metadata => "metadata",
            Stage::Probe => "probe",
        })
    }
}

/// What kind of failure a [`Diagnosis`] reports; serialised (`--output json`) as the stable
/// kebab-case code of each variant. ARCHITECTURE.md has a table of what each tells a person
/// to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DiagnosisKind {
    /// The connection could not be set up (its plugin failed to load or configure).
    Unavailable,
    /// The scheme needs a person to sign in (`fhirconn login ID`).
    NeedsLogin,
    /// The identity provider refused the credentials.
    CredentialsRejected,
    /// A scheme's own request failed on the network.
    Network,
    /// A server (often the identity provider) answered something unexpected.
    Protocol,
    /// A scheme found its settings wrong at request time.
    Config,
    /// A scheme or the host failed in an unexpected way.
    Internal,
    /// The request could not be made (e.g. an invalid URL).
    #[serde(rename = "error")]
    Other,
    /// The metadata URL could not be built from base-url.
    InvalidUrl,
    /// The host name did not resolve.
    Dns,
    /// TCP connect failed.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// A connect or read timeout elapsed.
    Timeout,
    /// The response body exceeded max-response-bytes.
    TooLarge,
    /// A redirect was refused.
    Redirect,
    /// 401: the server refused the credentials.
    Unauthorized,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404: probably not the FHIR base.
    NotFound,
    /// Another non-success status.
    HttpStatus,
    /// `/metadata` is not a CapabilityStatement.
    NotFhir,
}

impl DiagnosisKind {
    /// The stable code, as serialised (`needs-login`, `timeout`...).
    pub fn as_str(self) -> &'static str {
        match self {
            DiagnosisKind::Unavailable => "unavailable",
            DiagnosisKind::NeedsLogin => "needs-login",
            DiagnosisKind::CredentialsRejected => "credentials-rejected",
            DiagnosisKind::Network => "network",
            DiagnosisKind::Protocol => "protocol",
            DiagnosisKind::Config => "config",
            DiagnosisKind::Internal => "internal",
            DiagnosisKind::Other => "error",
            DiagnosisKind::InvalidUrl => "invalid-url",
            DiagnosisKind::Dns => "dns",
            DiagnosisKind::Connect => "connect",
            DiagnosisKind::Tls => "tls",
            DiagnosisKind::Timeout => "timeout",
            DiagnosisKind::TooLarge => "too-large",
            DiagnosisKind::Redirect => "redirect",
            DiagnosisKind::Unauthorized => "unauthorized",
            DiagnosisKind::Forbidden => "forbidden",
            DiagnosisKind::NotFound => "not-found",
            DiagnosisKind::HttpStatus => "http-status",
            DiagnosisKind::NotFhir => "not-fhir",
        }
    }
}

impl std::fmt::Display for DiagnosisKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// The stage.
    pub stage: Stage,
    /// What kind of failure: serialised as a stable short code (`dns`, `connect`, `tls`,
    /// `timeout`, `unauthorized`, ...).
    pub kind: DiagnosisKind,
    /// The explanation.
    pub message: String,
    /// The server's `WWW-Authenticate` challenge, on a 401.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub www_authenticate: Option<String>,
    /// The HTTP status, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl Diagnosis {
    pub(crate) fn new(stage: Stage, kind: DiagnosisKind, message: impl Into<String>) -> Self {
        Self {
            stage,
            kind,
            message: message.into(),
            www_authenticate: None,
            status: None,
        }
    }
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage, self.message)
    }
}

pub(crate) fn credential_failure(e: &Error, id: &str) -> Diagnosis {
    match e {
        Error::Credentials { kind, message, .. } => {
            let code = match kind {
                fhirconn_sdk::ErrorKind::InteractionRequired => {
                    return Diagnosis::new(
                        Stage::Credentials,
                        DiagnosisKind::NeedsLogin,
                        format!("needs login: run fhirconn login {id} ({message})"),
                    )
                }
                fhirconn_sdk::ErrorKind::CredentialsRejected => DiagnosisKind::CredentialsRejected,
                fhirconn_sdk::ErrorKind::Network => DiagnosisKind::Network,
                fhirconn_sdk::ErrorKind::Protocol => DiagnosisKind::Protocol,
                fhirconn_sdk::ErrorKind::Config => DiagnosisKind::Config,
                _ => DiagnosisKind::Internal,
            };
            Diagnosis::new(Stage::Credentials, code, message.clone())
        }
        other => Diagnosis::new(
            Stage::Credentials,
            DiagnosisKind::Internal,
            other.to_string(),
        ),
    }
}

pub(crate) fn transport_failure(stage: Stage, e: &Error) -> Diagnosis {
    let Error::Transport { error, .. } = e else {
        return Diagnosis::new(stage, DiagnosisKind::Other, e.to_string());
    };
    let kind = match error {
        TransportError::Dns { .. } => DiagnosisKind::Dns,
        TransportError::Connect { .. } => DiagnosisKind::Connect,
        TransportError::Tls { .. } => DiagnosisKind::Tls,
        TransportError::Timeout { .. } => DiagnosisKind::Timeout,
        TransportError::TooLarge { .. } => DiagnosisKind::TooLarge,
        TransportError::Redirect(_) => DiagnosisKind::Redirect,
        _ => DiagnosisKind::Network,
    };
    Diagnosis::new(stage, kind, error.to_string())
}

pub(crate) fn http_failure(stage: Stage, resp: &Response) -> Option<Diagnosis> {
    let status = resp.status;
    if status.is_success() {
        return None;
    }
    let code = status.as_u16();
    let outcome = operation_outcome_text(&resp.body);
    let mut d = match status {
        StatusCode::UNAUTHORIZED => {
            let challenge = resp
                .header(WWW_AUTHENTICATE.as_str())
                .map(crate::services::sanitize);
            let mut d = Diagnosis::new(
                stage,
                DiagnosisKind::Unauthorized,
                format!(
                    "unauthorized (401): the server refused the credentials{}",
                    challenge
                        .as_deref()
                        .map(|c| format!("; WWW-Authenticate: {c}"))
                        .unwrap_or_default()
                ),
            );
            d.www_authenticate = challenge;
            d
        }
        StatusCode::FORBIDDEN => Diagnosis::new(
            stage,
            DiagnosisKind::Forbidden,
            "forbidden (403): authenticated, but not allowed; check the scopes or roles granted",
        ),
        StatusCode::NOT_FOUND => Diagnosis::new(
            stage,
            DiagnosisKind::NotFound,
            format!(
                "not found (404) at {}; is base-url the FHIR base (often ending in /fhir or /R4)?",
                resp.url
            ),
        ),
        _ => Diagnosis::new(
            stage,
            DiagnosisKind::HttpStatus,
            format!(
                "the server answered HTTP {code} {}",
                status.canonical_reason().unwrap_or("")
            ),
        ),
    };
    if let Some(text) = outcome {
        d.message = format!("{} (OperationOutcome: {text})", d.message);
    }
    if let Some(after) = resp.header("retry-after") {
        let after: String = after.chars().filter(|c| !c.is_control()).take(64).collect();
        d.message = format!("{}; the server asks to retry after {after}", d.message);
    }
    d.status = Some(code);
    Some(d)
}

/// The diagnostics of an OperationOutcome body, if it is one, with control characters escaped
/// (lines kept, nothing cut: a connection test redacts known secrets, then shortens).
pub fn operation_outcome_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let texts: Vec<String> = v
        .get("issue")?
        .as_array()?
        .iter()
        .filter_map(|i| {
            i.get("diagnostics")
                .or_else(|| i.get("details").and_then(|d| d.get("text")))
                .and_then(|t| t.as_str())
                .map(crate::services::sanitize)
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

/// The facts of a CapabilityStatement that a connection test reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capability {
    /// `fhirVersion`.
    pub fhir_version: Option<String>,
    /// `software.name` and `software.version`.
    pub software: Option<String>,
}

/// Parses a `/metadata` response into its facts, or says why it is not a CapabilityStatement.
pub fn parse_capability(resp: &Response) -> Result<Capability, Diagnosis> {
    let ctype = resp.header("content-type").unwrap_or("(none)").to_string();
    let v: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|_| {
        Diagnosis::new(
            Stage::Metadata,
            DiagnosisKind::NotFhir,
            format!(
                "not a FHIR server: /metadata returned {ctype} that is not JSON; \
                 check base-url"
            ),
        )
    })?;
    let rt = v.get("resourceType").and_then(|r| r.as_str());
    if rt != Some("CapabilityStatement") {
        return Err(Diagnosis::new(
            Stage::Metadata,
            DiagnosisKind::NotFhir,
            format!(
                "not a FHIR server: /metadata returned {} instead of a CapabilityStatement{}",
                rt.map(|r| {
                    let article = if r.starts_with(['A', 'E', 'I', 'O', 'U']) {
                        "an"
                    } else {
                        "a"
                    };
                    format!("{article} {r}")
                })
                .unwrap_or_else(|| "JSON without resourceType".into()),
                operation_outcome_text(&resp.body)
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            ),
        ));
    }
    let fhir_version = v
        .get("fhirVersion")
        .and_then(|s| s.as_str())
        .map(crate::services::sanitize);
    let software = v.get("software").and_then(|s| {
        let name = s.get("name")?.as_str()?;
        Some(crate::services::sanitize(
            &match s.get("version").and_then(|v| v.as_str()) {
                Some(ver) => format!("{name} {ver}"),
                None => name.to_string(),
            },
        ))
    });
    Ok(Capability {
        fhir_version,
        software,
    })
}

#[cfg(test)]
mod tests {
    use super::DiagnosisKind as K;

    #[test]
    fn kinds_serialise_to_the_codes_json_readers_know() {
        let all = [
            K::Unavailable,
            K::NeedsLogin,
            K::CredentialsRejected,
            K::Network,
            K::Protocol,
            K::Config,
            K::Internal,
            K::Other,
            K::InvalidUrl,
            K::Dns,
            K::Connect,
            K::Tls,
            K::Timeout,
            K::TooLarge,
            K::Redirect,
            K::Unauthorized,
            K::Forbidden,
            K::NotFound,
            K::HttpStatus,
            K::NotFhir,
        ];
        for k in all {
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, serde_json::json!(k.as_str()), "{k:?}");
            assert_eq!(serde_json::from_value::<K>(json).unwrap(), k);
        }
        // The codes of the text-era reports, unchanged.
        let codes: Vec<&str> = all.iter().map(|k| k.as_str()).collect();
        for code in [
            "needs-login",
            "credentials-rejected",
            "error",
            "invalid-url",
            "too-large",
            "http-status",
            "not-fhir",
            "not-found",
        ] {
            assert!(codes.contains(&code), "{code}");
        }
    }
}
