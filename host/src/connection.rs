//! An authenticated connection: requests with credentials applied, the 401 retry, and the
//! connection test with its diagnosis.

use crate::auth::AuthRuntime;
use crate::error::Error;
use crate::transport::{Outgoing, Response, Transport, TransportError};
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// The media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";

/// A configured connection, ready to send authenticated requests.
pub struct Connection {
    pub(crate) transport: Arc<Transport>,
    pub(crate) auth: Arc<AuthRuntime>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.auth.id)
            .finish_non_exhaustive()
    }
}

/// A request relative to the connection's base URL.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path relative to the base (`Patient/1`, `metadata`, `Patient?_count=1`) or an absolute
    /// URL on the same origin.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// `GET path` with `Accept: application/fhir+json`.
    pub fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            path: path.to_string(),
            headers: vec![(ACCEPT, HeaderValue::from_static(FHIR_JSON))],
            body: None,
        }
    }
}

impl Connection {
    /// The connection id.
    pub fn id(&self) -> &str {
        &self.auth.id
    }

    /// The base URL.
    pub fn base_url(&self) -> &url::Url {
        &self.transport.settings().base_url
    }

    /// The scheme names, in order (`none` when no auth is configured).
    pub fn schemes(&self) -> Vec<String> {
        self.auth
            .entries
            .iter()
            .map(|e| e.scheme.name.clone())
            .collect()
    }

    /// Removes the secrets this connection knows (credentials, client secrets and
    /// assertions, issued tokens, in all their encodings) from text quoted from a server,
    /// e.g. an OperationOutcome that echoes `Authorization`. Escape it for a terminal with
    /// [`crate::services::sanitize`] afterwards.
    pub fn redact(&self, text: &str) -> String {
        self.auth.services.redactor.redact(text)
    }

    /// How many times credentials were fetched from the schemes.
    pub fn credential_fetches(&self) -> u64 {
        self.auth.fetch_count()
    }

    /// The connection's default probe path.
    pub fn probe(&self) -> Option<&str> {
        self.transport.settings().probe.as_deref()
    }

    /// Resolves a path against the base URL; absolute URLs must share the base's origin.
    pub fn url_for(&self, path: &str) -> Result<url::Url, Error> {
        let base = self.base_url();
        if path.starts_with("http://") || path.starts_with("https://") {
            let u =
                url::Url::parse(path).map_err(|e| Error::InvalidRequest(format!("{path}: {e}")))?;
            if u.origin() != base.origin() {
                return Err(Error::InvalidRequest(format!(
                    "{u} is not on the connection's origin {}",
                    base.origin().ascii_serialization()
                )));
            }
            return Ok(u);
        }
        let joined = format!(
            "{}/{}",
            base.as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url::Url::parse(&joined).map_err(|e| Error::InvalidRequest(format!("{path}: {e}")))
    }

    /// Current credentials (cached; single flight). `interactive` lets a scheme talk to a person.
    pub async fn credentials(
        &self,
        interactive: bool,
    ) -> Result<Arc<crate::auth::Resolved>, Error> {
        self.auth.credentials(interactive).await
    }

    /// Runs the schemes' interactive sign-in (e.g. a device code), ignoring stored refresh
    /// tokens, and caches the result. Schemes that need no person simply authorize.
    pub async fn login(&self) -> Result<Arc<crate::auth::Resolved>, Error> {
        self.auth.login().await
    }

    /// Forgets stored sign-ins (refresh tokens) of the connection's schemes; `false` when no
    /// scheme keeps any.
    pub async fn logout(&self) -> Result<bool, Error> {
        self.auth.invoke_all("logout").await
    }

    /// Sends a request with the connection's credentials. A 401 drops the cached credentials
    /// and fetches fresh ones; if they differ (a token scheme issued a new token), the request
    /// is retried once. A second 401 is returned as is, with its `WWW-Authenticate`.
    pub async fn send(&self, request: Request) -> Result<Response, Error> {
        let url = self.url_for(&request.path)?;
        let creds = self.auth.credentials(false).await?;
        let resp = self.send_with(&request, &url, &creds).await?;
        if resp.status == StatusCode::UNAUTHORIZED && !creds.headers.is_empty() {
            tracing::debug!(connection = %self.id(), "401: dropping cached credentials");
            self.auth.invalidate(&creds);
            let fresh = self.auth.credentials(false).await?;
            if fresh.headers != creds.headers {
                tracing::debug!(connection = %self.id(), "retrying once with fresh credentials");
                return self.send_with(&request, &url, &fresh).await;
            }
        }
        Ok(resp)
    }

    /// Like [`Connection::send`], but returns the response unread, to stream its body (the
    /// proxy). Redirects are returned, not followed; a 401 is retried once with fresh
    /// credentials as in `send`.
    pub async fn send_streaming(&self, request: Request) -> Result<reqwest::Response, Error> {
        let url = self.url_for(&request.path)?;
        let creds = self.auth.credentials(false).await?;
        let resp = self.stream_with(&request, &url, &creds).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && !creds.headers.is_empty() {
            self.auth.invalidate(&creds);
            let fresh = self.auth.credentials(false).await?;
            if fresh.headers != creds.headers {
                return self.stream_with(&request, &url, &fresh).await;
            }
        }
        Ok(resp)
    }

    async fn stream_with(
        &self,
        request: &Request,
        url: &url::Url,
        creds: &crate::auth::Resolved,
    ) -> Result<reqwest::Response, Error> {
        let transport_err = |error| Error::Transport {
            id: self.id().to_string(),
            error,
        };
        let client = self
            .transport
            .client(creds.identity.as_ref())
            .map_err(|e| transport_err(crate::transport::TransportError::Other(e)))?;
        let mut rb = client.request(request.method.clone(), url.clone());
        for (k, v) in request.headers.iter().chain(creds.headers.iter()) {
            rb = rb.header(k, v);
        }
        if let Some(b) = &request.body {
            rb = rb.body(b.clone());
        }
        rb.send()
            .await
            .map_err(|e| transport_err(self.transport.classify_error(&e, url)))
    }

    /// `GET path` with `Accept: application/fhir+json`.
    pub async fn get(&self, path: &str) -> Result<Response, Error> {
        self.send(Request::get(path)).await
    }

    async fn send_with(
        &self,
        request: &Request,
        url: &url::Url,
        creds: &crate::auth::Resolved,
    ) -> Result<Response, Error> {
        let out = Outgoing {
            method: request.method.clone(),
            url: url.clone(),
            headers: request.headers.clone(),
            credential_headers: creds.headers.clone(),
            body: request.body.clone(),
            follow_redirects: true,
        };
        self.transport
            .send(out, creds.identity.as_ref())
            .await
            .map_err(|error| Error::Transport {
                id: self.id().to_string(),
                error,
            })
    }

    /// Tests the connection: credentials, `GET {base}/metadata`, then the probe (if any).
    pub async fn test(&self, probe: Option<&str>) -> TestReport {
        let started = Instant::now();
        let mut report = TestReport {
            id: self.id().to_string(),
            ok: false,
            base_url: self.base_url().to_string(),
            schemes: self.schemes(),
            fhir_version: None,
            software: None,
            probe: None,
            failure: None,
            warnings: Vec::new(),
            server_certificate: None,
            client_certificate: None,
            credentials_ms: 0,
            metadata_ms: 0,
            total_ms: 0,
        };
        if self.transport.settings().allow_insecure_http {
            report.warnings.push(
                "allow-insecure-http is set: credentials may cross the network in plain text"
                    .to_string(),
            );
        }
        let finish = |mut r: TestReport| {
            r.total_ms = started.elapsed().as_millis() as u64;
            r.clean(&self.auth.services.redactor);
            r
        };
        // 1. credentials
        let t = Instant::now();
        let creds = match self.auth.credentials(false).await {
            Ok(c) => c,
            Err(e) => {
                report.failure = Some(credential_failure(&e, self.id()));
                return finish(report);
            }
        };
        report.credentials_ms = t.elapsed().as_millis() as u64;
        report.warnings.extend(creds.warnings.iter().cloned());
        report.client_certificate = creds.identity.as_ref().and_then(|i| {
            let block = pem_first_certificate(&i.certificate_chain_pem)?;
            CertificateFacts::from_der(&block)
        });
        // 2. metadata
        let t = Instant::now();
        let url = match self.url_for("metadata") {
            Ok(u) => u,
            Err(e) => {
                report.failure = Some(Diagnosis::new(
                    Stage::Metadata,
                    "invalid-url",
                    e.to_string(),
                ));
                return finish(report);
            }
        };
        let mut resp = self
            .send_with(&Request::get("metadata"), &url, &creds)
            .await;
        if matches!(&resp, Ok(r) if r.status == StatusCode::UNAUTHORIZED)
            && !creds.headers.is_empty()
        {
            self.auth.invalidate(&creds);
            match self.auth.credentials(false).await {
                Ok(fresh) if fresh.headers != creds.headers => {
                    resp = self
                        .send_with(&Request::get("metadata"), &url, &fresh)
                        .await
                }
                Ok(_) => {}
                Err(e) => {
                    report.failure = Some(credential_failure(&e, self.id()));
                    return finish(report);
                }
            }
        }
        report.metadata_ms = t.elapsed().as_millis() as u64;
        let resp = match resp {
            Ok(r) => {
                report.server_certificate = r
                    .peer_certificate
                    .as_deref()
                    .and_then(CertificateFacts::from_der);
                if let Some(c) = &report.server_certificate {
                    if c.days_left < 30 {
                        report.warnings.push(format!(
                            "the server's certificate '{}' expires in {} day(s)",
                            c.subject, c.days_left
                        ));
                    }
                }
                r
            }
            Err(e) => {
                report.failure = Some(transport_failure(Stage::Metadata, &e));
                return finish(report);
            }
        };
        if let Some(d) = http_failure(Stage::Metadata, &resp) {
            report.failure = Some(d);
            return finish(report);
        }
        match parse_capability(&resp) {
            Ok(cap) => {
                if let Some(v) = &cap.fhir_version {
                    if !v.starts_with("4.0") {
                        report.warnings.push(format!(
                            "the server speaks FHIR {v}; fhirconn targets R4 (4.0.x)"
                        ));
                    }
                }
                report.fhir_version = cap.fhir_version;
                report.software = cap.software;
            }
            Err(d) => {
                report.failure = Some(d);
                return finish(report);
            }
        }
        // 3. probe
        if let Some(path) = probe.or(self.probe()) {
            let t = Instant::now();
            let result = self.send(Request::get(path)).await;
            let ms = t.elapsed().as_millis() as u64;
            match result {
                Ok(r) => {
                    let status = r.status.as_u16();
                    report.probe = Some(ProbeReport {
                        path: path.to_string(),
                        status,
                        ms,
                    });
                    if let Some(d) = http_failure(Stage::Probe, &r) {
                        report.failure = Some(d);
                        return finish(report);
                    }
                }
                Err(e) => {
                    report.failure = Some(transport_failure(Stage::Probe, &e));
                    return finish(report);
                }
            }
        }
        report.ok = true;
        finish(report)
    }
}

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

/// What went wrong, for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// The stage.
    pub stage: Stage,
    /// A stable short code: `dns`, `connect`, `tls`, `timeout`, `unauthorized`, `forbidden`,
    /// `not-found`, `http-status`, `not-fhir`, `credentials-rejected`, `needs-login`, ...
    pub kind: String,
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
    fn new(stage: Stage, kind: &str, message: impl Into<String>) -> Self {
        Self {
            stage,
            kind: kind.to_string(),
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
fn pem_first_certificate(pem_text: &str) -> Option<Vec<u8>> {
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

    /// A report for a connection that could not be set up.
    pub fn unavailable(id: &str, base_url: &str, schemes: Vec<String>, reason: &str) -> Self {
        Self {
            id: id.to_string(),
            ok: false,
            base_url: base_url.to_string(),
            schemes,
            fhir_version: None,
            software: None,
            probe: None,
            failure: Some(Diagnosis::new(
                Stage::Setup,
                "unavailable",
                crate::services::sanitize_line(reason, MAX_MESSAGE),
            )),
            warnings: Vec::new(),
            server_certificate: None,
            client_certificate: None,
            credentials_ms: 0,
            metadata_ms: 0,
            total_ms: 0,
        }
    }
}

fn credential_failure(e: &Error, id: &str) -> Diagnosis {
    match e {
        Error::Credentials { kind, message, .. } => {
            let code = match kind {
                fhirconn_sdk::ErrorKind::InteractionRequired => {
                    return Diagnosis::new(
                        Stage::Credentials,
                        "needs-login",
                        format!("needs login: run fhirconn login {id} ({message})"),
                    )
                }
                fhirconn_sdk::ErrorKind::CredentialsRejected => "credentials-rejected",
                fhirconn_sdk::ErrorKind::Network => "network",
                fhirconn_sdk::ErrorKind::Protocol => "protocol",
                fhirconn_sdk::ErrorKind::Config => "config",
                _ => "internal",
            };
            Diagnosis::new(Stage::Credentials, code, message.clone())
        }
        other => Diagnosis::new(Stage::Credentials, "internal", other.to_string()),
    }
}

fn transport_failure(stage: Stage, e: &Error) -> Diagnosis {
    let Error::Transport { error, .. } = e else {
        return Diagnosis::new(stage, "error", e.to_string());
    };
    let kind = match error {
        TransportError::Dns { .. } => "dns",
        TransportError::Connect { .. } => "connect",
        TransportError::Tls { .. } => "tls",
        TransportError::Timeout { .. } => "timeout",
        TransportError::TooLarge { .. } => "too-large",
        TransportError::Redirect(_) => "redirect",
        _ => "network",
    };
    Diagnosis::new(stage, kind, error.to_string())
}

fn http_failure(stage: Stage, resp: &Response) -> Option<Diagnosis> {
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
                "unauthorized",
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
            "forbidden",
            "forbidden (403): authenticated, but not allowed; check the scopes or roles granted",
        ),
        StatusCode::NOT_FOUND => Diagnosis::new(
            stage,
            "not-found",
            format!(
                "not found (404) at {}; is base-url the FHIR base (often ending in /fhir or /R4)?",
                resp.url
            ),
        ),
        _ => Diagnosis::new(
            stage,
            "http-status",
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
            "not-fhir",
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
            "not-fhir",
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
