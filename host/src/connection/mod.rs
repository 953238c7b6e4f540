//! An authenticated connection: requests with credentials applied, the one 401 rule (drop,
//! refetch, retry once if different), and the connection test with its diagnosis.

mod diagnosis;
mod report;
mod test;

pub use diagnosis::{
    operation_outcome_text, parse_capability, Capability, Diagnosis, DiagnosisKind, Stage,
};
pub use report::{CertificateFacts, ProbeReport, TestReport};

use crate::auth::{AuthRuntime, Resolved};
use crate::error::Error;
use crate::transport::{
    DirectRequest, Outgoing, Response, Streamed, StreamedBody, Transport, TransportError,
};
use reqwest::header::{HeaderName, HeaderValue, ACCEPT};
use reqwest::{Method, StatusCode};
use std::future::Future;
use std::sync::Arc;

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

    /// Forgets the credentials held in this process's memory (after rotating a secret, say):
    /// the next request looks in the persistent and fleet caches, then asks the scheme.
    pub async fn drop_cached_credentials(&self) {
        self.auth.drop_memory().await;
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
        Ok(self.send_renewing(creds, &request, &url).await?)
    }

    /// Like [`Connection::send`], but returns the response unread, to stream its body (the
    /// proxy). Redirects are returned, not followed; a 401 is retried once with fresh
    /// credentials as in `send`. Requests that need no HTTP proxy and no per-request
    /// signature go straight to the server on hyper-util's client (`transport/direct.rs`);
    /// the others take reqwest's path, with the same rules.
    pub async fn send_streaming(&self, request: Request) -> Result<Streamed, Error> {
        let target = match direct_target(self.base_url(), &request.path) {
            Some(uri) => Target::Uri(uri),
            None => Target::Url(self.url_for(&request.path)?),
        };
        let creds = self.auth.credentials(false).await?;
        let signer = self.auth.signer(request.body.as_deref());
        let body = request
            .body
            .clone()
            .map(bytes::Bytes::from)
            .unwrap_or_default();
        let (request, target, signer, body) = (&request, &target, &signer, &body);
        let send = move |c: Arc<Resolved>| async move {
            let direct = match signer {
                Some(_) => None,
                None => self
                    .transport
                    .direct_client(c.identity.as_ref())
                    .map_err(|e| self.transport_error(e.into()))?,
            };
            if let (Some(client), Target::Uri(uri)) = (direct, target) {
                let req = DirectRequest {
                    method: &request.method,
                    uri,
                    headers: &request.headers,
                    credential_headers: &c.headers,
                    body: body.clone(),
                };
                return self
                    .transport
                    .open_direct(&client, req)
                    .await
                    .map_err(|error| self.transport_error(error));
            }
            let url = match target {
                Target::Url(u) => u.clone(),
                Target::Uri(_) => self.url_for(&request.path)?,
            };
            let out = outgoing(request, &url, &c, false, signer);
            self.transport
                .open(&out, c.identity.as_ref())
                .await
                .map(StreamedBody::from_reqwest)
                .map_err(|error| self.transport_error(error))
        };
        let unauthorized = |r: &Streamed| r.status() == StatusCode::UNAUTHORIZED;
        Ok(self.renewing(creds, send, unauthorized).await?)
    }

    /// `GET path` with `Accept: application/fhir+json`.
    pub async fn get(&self, path: &str) -> Result<Response, Error> {
        self.send(Request::get(path)).await
    }

    /// [`Connection::send`] with credentials already fetched.
    async fn send_renewing(
        &self,
        creds: Arc<Resolved>,
        request: &Request,
        url: &url::Url,
    ) -> Result<Response, Failure> {
        // The body is hashed once, for the first request and a 401 retry alike.
        let signer = &self.auth.signer(request.body.as_deref());
        let send = move |c: Arc<Resolved>| async move {
            let out = outgoing(request, url, &c, true, signer);
            self.transport
                .send(out, c.identity.as_ref())
                .await
                .map_err(|error| self.transport_error(error))
        };
        let unauthorized = |r: &Response| r.status == StatusCode::UNAUTHORIZED;
        self.renewing(creds, send, unauthorized).await
    }

    /// The one 401 rule: sends with `creds`; on a 401 (when credentials were sent) drops
    /// them, fetches fresh ones and, if they differ (a token scheme issued a new token),
    /// sends once more. A second 401 is the answer.
    async fn renewing<T, F, Fut>(
        &self,
        creds: Arc<Resolved>,
        send: F,
        unauthorized: impl Fn(&T) -> bool,
    ) -> Result<T, Failure>
    where
        F: Fn(Arc<Resolved>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let resp = send(creds.clone()).await.map_err(Failure::sending)?;
        if !unauthorized(&resp) {
            return Ok(resp);
        }
        match self
            .renew_after_401(&creds)
            .await
            .map_err(Failure::Credentials)?
        {
            Some(fresh) => send(fresh).await.map_err(Failure::sending),
            None => Ok(resp),
        }
    }

    /// The 401 rule for callers that send requests themselves (the reqwest middleware): after
    /// a 401 to a request sent with `stale`, drops them (when credentials were sent) and
    /// fetches fresh ones; `Some(fresh)` when they differ (send once more with them), `None`
    /// when a retry cannot help (answer the 401). On a connection that signs every request
    /// the retry always happens once: it carries a fresh signature (a new time), which is
    /// what a server that rejected a signature as stale or replayed needs.
    pub async fn renew_after_401(
        &self,
        stale: &Arc<Resolved>,
    ) -> Result<Option<Arc<Resolved>>, Error> {
        let signs = self.auth.signs_requests();
        if stale.headers.is_empty() && !signs {
            return Ok(None);
        }
        tracing::debug!(connection = %self.id(), "401: dropping cached credentials");
        metrics::counter!("fhirconn_401_retries_total", "connection" => self.id().to_string())
            .increment(1);
        self.auth.invalidate(stale).await;
        let fresh = self.auth.credentials(false).await?;
        if fresh.headers == stale.headers && !signs {
            return Ok(None);
        }
        tracing::debug!(connection = %self.id(), "retrying once with fresh credentials");
        Ok(Some(fresh))
    }

    pub(crate) fn transport_error(&self, error: TransportError) -> Error {
        match error {
            // A scheme that could not sign is a credentials failure, diagnosed as one.
            TransportError::Signing { kind, message } => Error::Credentials {
                id: self.id().to_string(),
                kind,
                message,
            },
            error => Error::Transport {
                id: self.id().to_string(),
                error,
            },
        }
    }

    /// The headers the connection's schemes add to one request sent by a caller of its own:
    /// the cached credential headers, then (when a scheme signs requests) the signature over
    /// `method`, `url`, the caller's `headers` and the SHA-256 of `body`, at the host's
    /// clock. Signature headers replace credential headers of the same name. Sensitive
    /// values are marked sensitive. A signature is bound to this one request: sign again for
    /// a retry or a redirect.
    pub async fn authorization_headers(
        &self,
        method: &Method,
        url: &url::Url,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<&[u8]>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
        let creds = self.auth.credentials(false).await?;
        let mut out = creds.headers.clone();
        if let Some(signer) = self.auth.signer(body) {
            let signature = signer
                .sign(method, url, headers, &creds.headers, body.is_some())
                .map_err(|e| self.transport_error(e))?;
            out.retain(|(n, _)| !signature.iter().any(|(s, _)| s == n));
            out.extend(signature);
        }
        Ok(out)
    }

    /// The signer of a request with `body` sent by a caller of its own (the middleware, bulk
    /// downloads), when the connection's scheme signs requests.
    pub(crate) fn signer(&self, body: Option<&[u8]>) -> Option<crate::transport::Signer> {
        self.auth.signer(body)
    }
}

/// Why a request with credentials failed: fetching them, or sending.
pub(crate) enum Failure {
    /// Fetching (fresh) credentials failed.
    Credentials(Error),
    /// The request failed.
    Request(Error),
}

impl Failure {
    /// A failure while sending: a scheme that could not sign it failed as credentials do.
    fn sending(e: Error) -> Self {
        match e {
            Error::Credentials { .. } => Failure::Credentials(e),
            e => Failure::Request(e),
        }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Credentials(e) | Failure::Request(e) => e,
        }
    }
}

/// Where a streamed request goes: a target built without `url` (most proxy requests), or
/// one `url` parsed and normalised.
enum Target {
    Uri(http::Uri),
    Url(url::Url),
}

/// The absolute target of `path` on `base`, the one [`Connection::url_for`] gives, when it
/// needs no parsing: a relative path and query of plain characters, with no dot segment
/// (which `url` would resolve), no bare `%` and nothing else `url` would percent-encode.
/// `None` sends the caller to `url_for`.
pub(crate) fn direct_target(base: &url::Url, path: &str) -> Option<http::Uri> {
    if base.query().is_some() || base.fragment().is_some() {
        return None;
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&()*+,;=:@/?%|".contains(&b);
    if path.starts_with("http:") || path.starts_with("https:") || !path.bytes().all(plain) {
        return None;
    }
    let path_part = path.split('?').next().unwrap_or_default();
    if path_part.split('/').any(is_dot_segment) || !percent_escapes_only(path) {
        return None;
    }
    let joined = format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    http::Uri::try_from(joined).ok()
}

/// `.` or `..`, a dot written `%2e` or `%2E` too (as `url` reads them).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Every `%` starts an escape of two hex digits (`url` would encode a bare one).
fn percent_escapes_only(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// The transport's request for `request` at `url` with credentials `creds`.
fn outgoing(
    request: &Request,
    url: &url::Url,
    creds: &Resolved,
    follow: bool,
    signer: &Option<crate::transport::Signer>,
) -> Outgoing {
    Outgoing {
        method: request.method.clone(),
        url: url.clone(),
        headers: request.headers.clone(),
        credential_headers: creds.headers.clone(),
        body: request.body.clone(),
        follow_redirects: follow,
        signer: signer.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_targets_are_the_urls_url_for_gives_or_none() {
        let base = url::Url::parse("https://fhir.example:8443/r4/").unwrap();
        for path in [
            "Patient/1",
            "/Patient/1",
            "",
            "Patient?name=a%20b&_count=10",
            "Observation?code=http://loinc.org|1234-5",
            "Patient/1/_history/2?x=~!$&()*+,;=:@",
            "a//b",
        ] {
            let u = direct_target(&base, path).unwrap_or_else(|| panic!("{path} is plain"));
            let joined = format!(
                "{}/{}",
                "https://fhir.example:8443/r4",
                path.trim_start_matches('/')
            );
            assert_eq!(
                u.to_string(),
                url::Url::parse(&joined).unwrap().as_str(),
                "{path}"
            );
        }
        for path in [
            "../admin",
            "Patient/..",
            "Patient/%2e%2E/x",
            "./Patient",
            "Patient?q=%zz",
            "Patient/a b",
            "Patient?q='x'",
            "Patient/1#frag",
            "Patient\\1",
            "https://fhir.example:8443/r4/Patient",
            "http:Patient",
            "Patient/\u{e9}",
        ] {
            assert!(
                direct_target(&base, path).is_none(),
                "{path} must go to url_for"
            );
        }
        let with_query = url::Url::parse("https://fhir.example/r4?tenant=1").unwrap();
        assert!(direct_target(&with_query, "Patient").is_none());
    }
}
