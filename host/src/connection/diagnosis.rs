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
    /// The server refused a signed request's time (AWS SigV4 `Signature expired`): the clock.
    ClockSkew,
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
            DiagnosisKind::ClockSkew => "clock-skew",
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
        StatusCode::FORBIDDEN => aws_refusal(stage, resp).unwrap_or_else(|| {
            Diagnosis::new(
                stage,
                DiagnosisKind::Forbidden,
                "forbidden (403): authenticated, but not allowed; check the scopes or roles granted",
            )
        }),
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

/// AWS error codes that mean the request's signature or keys were refused (SigV4).
const AWS_REJECTED: [&str; 10] = [
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "IncompleteSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationTokenException",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "ExpiredToken",
];

/// A 403 of an AWS service refusing the SigV4 signature or keys (the code from
/// `x-amzn-ErrorType`, a JSON `__type`/`code` or S3's XML `<Code>`): rejected credentials, or
/// the clock when the message says `Signature expired` / `Signature not yet current`.
fn aws_refusal(stage: Stage, resp: &Response) -> Option<Diagnosis> {
    let json: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
    let field = |k: &str| json.as_ref()?.get(k)?.as_str().map(str::to_string);
    let text = String::from_utf8_lossy(&resp.body);
    let xml = |tag: &str| {
        let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
        Some(text[start..].split('<').next()?.to_string())
    };
    let code = (resp.header("x-amzn-errortype").map(str::to_string))
        .or_else(|| field("__type").or_else(|| field("code")))
        .or_else(|| xml("Code"))?;
    // `InvalidSignatureException:http://...` or `com.amazon.coral.service#InvalidSignatureException`
    let code = code
        .split(':')
        .next()?
        .rsplit('#')
        .next()?
        .trim()
        .to_string();
    if !AWS_REJECTED.contains(&code.as_str()) {
        return None;
    }
    let message = (field("message").or_else(|| field("Message")))
        .or_else(|| xml("Message"))
        .unwrap_or_default();
    let message = crate::services::sanitize(&message.chars().take(300).collect::<String>());
    let (kind, advice) = if message.starts_with("Signature expired")
        || message.starts_with("Signature not yet current")
    {
        (
            DiagnosisKind::ClockSkew,
            "this machine's clock is more than 5 minutes off: set it right (NTP)",
        )
    } else {
        (DiagnosisKind::CredentialsRejected, "check the access key id, secret access key and session token (or the profile), the region and the service")
    };
    Some(Diagnosis::new(
        stage,
        kind,
        format!("the server refused the request's signature (403 {code}: {message}): {advice}"),
    ))
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

    fn forbidden(headers: &[(&'static str, &str)], body: &str) -> super::Diagnosis {
        let mut map = reqwest::header::HeaderMap::new();
        for (n, v) in headers {
            map.insert(*n, v.parse().unwrap());
        }
        let resp = super::Response {
            status: reqwest::StatusCode::FORBIDDEN,
            headers: map,
            body: body.as_bytes().to_vec(),
            url: "https://healthlake.us-east-1.amazonaws.com/datastore/d/r4/metadata"
                .parse()
                .unwrap(),
            peer_certificate: None,
        };
        super::http_failure(super::Stage::Metadata, &resp).unwrap()
    }

    #[test]
    fn aws_signature_refusals_are_rejected_credentials_or_the_clock() {
        let sig = r#"{"__type":"com.amazon.coral.service#InvalidSignatureException","message":"The request signature we calculated does not match the signature you provided."}"#;
        let d = forbidden(&[], sig);
        assert_eq!(d.kind, K::CredentialsRejected, "{d:?}");
        assert!(
            d.message
                .contains("403 InvalidSignatureException: The request signature we calculated"),
            "{d:?}"
        );
        let unknown = r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#;
        assert_eq!(forbidden(&[], unknown).kind, K::CredentialsRejected);
        let header = [(
            "x-amzn-errortype",
            "SignatureDoesNotMatch:http://internal.amazon.com/coral/",
        )];
        assert_eq!(forbidden(&header, "{}").kind, K::CredentialsRejected);
        let s3 = "<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>";
        assert_eq!(forbidden(&[], s3).kind, K::CredentialsRejected);
        let skew = r#"{"__type":"InvalidSignatureException","message":"Signature expired: 20150830T123600Z is now earlier than 20150830T124100Z (20150830T124600Z - 5 min.)"}"#;
        let d = forbidden(&[], skew);
        assert_eq!(d.kind, K::ClockSkew, "{d:?}");
        assert!(d.message.contains("clock"), "{d:?}");
        assert_eq!(d.status, Some(403));
        // an authorization refusal (or any other 403) stays `forbidden`
        let denied = r#"{"__type":"AccessDeniedException","message":"User is not authorized"}"#;
        assert_eq!(forbidden(&[], denied).kind, K::Forbidden);
        assert_eq!(forbidden(&[], "not json").kind, K::Forbidden);
    }

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
            K::ClockSkew,
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
