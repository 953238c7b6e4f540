//! HTTP for one connection: reqwest + rustls clients per client identity, timeouts, roots,
//! proxy, capped bodies, and redirects followed by hand so credentials never change origin.

use crate::config::ConnectionSettings;
use fhirconn_sdk::ClientIdentity;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// How many redirects a FHIR request follows.
pub const MAX_REDIRECTS: usize = 5;

/// Why a request did not produce a response, classified for diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The host name did not resolve.
    #[error("DNS lookup failed for {host}: {detail}")]
    Dns {
        /// The host.
        host: String,
        /// Resolver detail.
        detail: String,
    },
    /// TCP connect failed (refused, unreachable).
    #[error("cannot connect to {host}: {detail}")]
    Connect {
        /// host:port.
        host: String,
        /// OS detail.
        detail: String,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {host} failed: {detail}")]
    Tls {
        /// The host.
        host: String,
        /// What rustls said, with a hint.
        detail: String,
    },
    /// A timeout elapsed.
    #[error("timed out after {after:?} ({what})")]
    Timeout {
        /// Which timeout.
        what: String,
        /// Its value.
        after: Duration,
    },
    /// The body exceeded the cap.
    #[error("response body larger than the limit of {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// A redirect could not be followed.
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A response with its body read (up to the cap).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
    /// The final URL (after redirects).
    pub url: url::Url,
    /// The server's leaf certificate (DER), for HTTPS.
    pub peer_certificate: Option<Vec<u8>>,
}

impl Response {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request: the transport adds nothing but what is given here.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Absolute URL.
    pub url: url::Url,
    /// Ordinary headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Credential headers: dropped when a redirect leaves the origin.
    pub credential_headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Follow redirects (FHIR requests) or return them (plugins' token requests).
    pub follow_redirects: bool,
}

/// Request headers that still follow a redirect to another origin (everything else, including
/// custom `--header`s, is dropped there).
const CROSS_ORIGIN_HEADERS: &[&str] = &["accept", "user-agent", "accept-language"];

/// The HTTP side of one connection.
/// Clients shared by every connection of the process, by [`Transport::client_key`].
static SHARED_CLIENTS: std::sync::LazyLock<Mutex<HashMap<u64, reqwest::Client>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

pub struct Transport {
    settings: ConnectionSettings,
    roots: Vec<reqwest::Certificate>,
    roots_pem: Vec<u8>,
    clients: Mutex<HashMap<u64, reqwest::Client>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("connection", &self.settings.id)
            .finish_non_exhaustive()
    }
}

fn identity_key(identity: Option<&ClientIdentity>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(i) = identity {
        i.certificate_chain_pem.hash(&mut h);
        i.private_key_pem.expose_secret().hash(&mut h);
    }
    h.finish()
}

impl Transport {
    /// Reads the connection's trusted roots; fails with a message naming the file.
    pub fn new(settings: ConnectionSettings) -> Result<Self, String> {
        let mut roots_pem = Vec::new();
        let roots = match &settings.trusted_roots_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!(
                        "trusted-root-certificates-file: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                    format!(
                        "trusted-root-certificates-file: {} holds no valid PEM certificates",
                        path.display()
                    )
                })?;
                if certs.is_empty() {
                    return Err(format!(
                        "trusted-root-certificates-file: {} holds no certificates",
                        path.display()
                    ));
                }
                roots_pem = pem;
                certs
            }
            None => Vec::new(),
        };
        if !settings.use_system_roots && roots.is_empty() {
            return Err(
                "use-system-roots is false but no trusted-root-certificates-file is set".into(),
            );
        }
        Ok(Self {
            settings,
            roots,
            roots_pem,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The connection's settings.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// The client for an identity: built once per distinct (TLS roots, proxy, timeouts,
    /// identity) in the process and cloned, so a file of many connections to similar servers
    /// shares clients and their connection pools (building one costs milliseconds).
    pub fn client(&self, identity: Option<&ClientIdentity>) -> Result<reqwest::Client, String> {
        let key = self.client_key(identity);
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut shared = SHARED_CLIENTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = shared.get(&key) {
            clients.insert(key, c.clone());
            return Ok(c.clone());
        }
        let s = &self.settings;
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(s.connect_timeout)
            .read_timeout(s.read_timeout)
            .timeout(s.connect_timeout + s.read_timeout)
            .user_agent(concat!("fhirconn/", env!("CARGO_PKG_VERSION")))
            .tls_info(true)
            .referer(false);
        if !self.roots.is_empty() {
            b = if s.use_system_roots {
                b.tls_certs_merge(self.roots.iter().cloned())
            } else {
                b.tls_certs_only(self.roots.iter().cloned())
            };
        }
        if let Some(p) = &s.proxy {
            let mut proxy = reqwest::Proxy::all(&p.url).map_err(|e| format!("proxy.url: {e}"))?;
            if !p.no_proxy.is_empty() {
                proxy = proxy.no_proxy(reqwest::NoProxy::from_string(&p.no_proxy.join(",")));
            }
            b = b.proxy(proxy);
        }
        if let Some(id) = identity {
            let mut pem = id.certificate_chain_pem.clone().into_bytes();
            pem.push(b'\n');
            pem.extend_from_slice(id.private_key_pem.expose_secret().as_bytes());
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|_| "the client certificate or its key could not be used".to_string())?;
            b = b.identity(identity);
        }
        let client = b.build().map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            format!("cannot build the HTTP client: {msg}")
        })?;
        clients.insert(key, client.clone());
        shared.insert(key, client.clone());
        Ok(client)
    }

    /// What makes two clients interchangeable.
    fn client_key(&self, identity: Option<&ClientIdentity>) -> u64 {
        let s = &self.settings;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        identity_key(identity).hash(&mut h);
        s.connect_timeout.hash(&mut h);
        s.read_timeout.hash(&mut h);
        s.use_system_roots.hash(&mut h);
        for r in &self.roots_pem {
            r.hash(&mut h);
        }
        if let Some(p) = &s.proxy {
            p.url.hash(&mut h);
            p.no_proxy.hash(&mut h);
        }
        h.finish()
    }

    /// Sends a request, following redirects if asked (dropping credential headers when the
    /// origin changes, refusing https→http), and reads the body up to the cap.
    pub async fn send(
        &self,
        req: Outgoing,
        identity: Option<&ClientIdentity>,
    ) -> Result<Response, TransportError> {
        let mut client = self.client(identity).map_err(TransportError::Other)?;
        let origin = req.url.origin();
        let mut url = req.url.clone();
        let mut method = req.method.clone();
        let mut body = req.body.clone();
        let mut with_credentials = true;
        for hop in 0..=MAX_REDIRECTS {
            let build = || {
                let mut rb = client.request(method.clone(), url.clone());
                for (k, v) in &req.headers {
                    // Past an origin change only harmless headers follow: a custom header
                    // (`--header X-Api-Key: ...`) may be a credential too.
                    if with_credentials || CROSS_ORIGIN_HEADERS.contains(&k.as_str()) {
                        rb = rb.header(k, v);
                    }
                }
                if with_credentials {
                    for (k, v) in &req.credential_headers {
                        rb = rb.header(k, v);
                    }
                }
                if let Some(b) = &body {
                    rb = rb.body(b.clone());
                }
                rb
            };
            let started = std::time::Instant::now();
            let resp = match build().send().await {
                Ok(r) => r,
                // The connection closed between its handshake and our request, so the request
                // was never sent (hyper: "connection was not ready"): safe to send it again.
                Err(e) if error_chain(&e).iter().any(|m| m.contains("not ready")) => {
                    tracing::debug!(connection = %self.settings.id, url = %url,
                        "connection closed before the request was sent; retrying once");
                    build().send().await.map_err(|e| self.classify(&e, &url))?
                }
                Err(e) => return Err(self.classify(&e, &url)),
            };
            let status = resp.status();
            tracing::debug!(
                connection = %self.settings.id, %method, url = %url, status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64, "http"
            );
            if self.settings.debug_logging {
                tracing::info!(connection = %self.settings.id, %method, url = %url,
                    status = status.as_u16(), "http");
            }
            let redirect = status.is_redirection() && status != StatusCode::NOT_MODIFIED;
            if !(redirect && req.follow_redirects) {
                return self.read(resp, url).await;
            }
            if hop == MAX_REDIRECTS {
                return Err(TransportError::Redirect(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                return self.read(resp, url).await;
            };
            let next = url
                .join(loc)
                .map_err(|_| TransportError::Redirect("invalid Location header".into()))?;
            if url.scheme() == "https" && next.scheme() != "https" {
                return Err(TransportError::Redirect(format!(
                    "{url} redirects to insecure {next}"
                )));
            }
            let keeps_method = status == StatusCode::TEMPORARY_REDIRECT
                || status == StatusCode::PERMANENT_REDIRECT;
            if next.origin() != origin {
                // A 307/308 would replay the method and body (PUT/POST with patient data,
                // DELETE) at a server the person never named: refuse it.
                if keeps_method
                    && (body.is_some() || !matches!(method, Method::GET | Method::HEAD))
                {
                    return Err(TransportError::Redirect(format!(
                        "{url} answered {} to another origin ({}); not re-sending the {method} \
                         request there",
                        status.as_u16(),
                        next.origin().ascii_serialization()
                    )));
                }
                if with_credentials {
                    // No credential header, custom header or client certificate follows: the
                    // rest of the hops use a client without the identity.
                    with_credentials = false;
                    if identity.is_some() {
                        client = self.client(None).map_err(TransportError::Other)?;
                    }
                    tracing::debug!(connection = %self.settings.id, from = %url, to = %next,
                        "redirect to another origin: credentials, custom headers and client \
                         certificate dropped");
                }
            }
            if status == StatusCode::SEE_OTHER
                || ((status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND)
                    && method == Method::POST)
            {
                method = Method::GET;
                body = None;
            }
            url = next;
        }
        Err(TransportError::Redirect("redirect loop".into()))
    }

    async fn read(
        &self,
        mut resp: reqwest::Response,
        url: url::Url,
    ) -> Result<Response, TransportError> {
        let limit = self.settings.max_response_bytes;
        if resp.content_length().is_some_and(|l| l > limit) {
            return Err(TransportError::TooLarge { limit });
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let peer_certificate = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(<[u8]>::to_vec);
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Err(TransportError::TooLarge { limit });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(self.classify(&e, &url)),
            }
        }
        Ok(Response {
            status,
            headers,
            body,
            url,
            peer_certificate,
        })
    }

    /// Classifies a reqwest error for a person (DNS, connect, TLS with a hint, timeout...).
    pub fn classify_error(&self, e: &reqwest::Error, url: &url::Url) -> TransportError {
        self.classify(e, url)
    }

    fn classify(&self, e: &reqwest::Error, url: &url::Url) -> TransportError {
        let host = url.host_str().unwrap_or_default().to_string();
        let hostport = match url.port_or_known_default() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let chain = error_chain(e);
        if e.is_timeout() || chain.iter().any(|m| m.contains("timed out")) {
            let (what, after) = if e.is_connect() {
                ("connect-timeout", self.settings.connect_timeout)
            } else {
                ("read-timeout", self.settings.read_timeout)
            };
            return TransportError::Timeout {
                what: what.to_string(),
                after,
            };
        }
        if let Some(tls) = find_rustls(e) {
            return TransportError::Tls {
                host,
                detail: describe_tls(tls),
            };
        }
        let joined = chain.join(": ");
        if let Some(cert_error) = tls_error_from_text(&joined) {
            return TransportError::Tls {
                host,
                detail: describe_tls(&cert_error),
            };
        }
        if joined.contains("dns error") || joined.contains("failed to lookup address") {
            let detail = chain.last().cloned().unwrap_or_default();
            return TransportError::Dns { host, detail };
        }
        if e.is_connect() {
            let detail = chain
                .iter()
                .rev()
                .find(|m| !m.is_empty())
                .cloned()
                .unwrap_or_else(|| "connection failed".into());
            return TransportError::Connect {
                host: hostport,
                detail,
            };
        }
        TransportError::Other(joined)
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        out.push(s.to_string());
        src = s.source();
    }
    out
}

fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    // `io::Error::source` skips the error it wraps, so look inside explicitly.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn std::error::Error + 'static) = inner;
        if let Some(r) = find_rustls(inner) {
            return Some(r);
        }
    }
    e.source().and_then(find_rustls)
}

/// Recognises a certificate error that reached us only as text (some verifiers flatten it).
fn tls_error_from_text(text: &str) -> Option<rustls::Error> {
    use rustls::{CertificateError as C, Error as E};
    let rest = text.split("invalid peer certificate: ").nth(1)?;
    let code = rest.split([':', ' ', ',', ')']).next().unwrap_or_default();
    Some(E::InvalidCertificate(match code {
        "UnknownIssuer" => C::UnknownIssuer,
        "NotValidForName" => C::NotValidForName,
        "Expired" => C::Expired,
        "NotValidYet" => C::NotValidYet,
        "BadSignature" => C::BadSignature,
        "Revoked" => C::Revoked,
        _ => return None,
    }))
}

/// Words a rustls error for a person, naming the setting that fixes it.
pub fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as E};
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not trusted (unknown issuer); \
             add its CA to trusted-root-certificates-file"
                .into()
        }
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for this host name (hostname mismatch); \
             use the name the certificate was issued for in base-url"
                .into()
        }
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        E::InvalidCertificate(CertificateError::NotValidYet)
        | E::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (check the clock)".into()
        }
        E::AlertReceived(alert) => format!(
            "the server refused the handshake ({alert:?}); if it requires a client certificate, \
             check that one is configured and issued by a CA the server trusts"
        ),
        other => other.to_string(),
    }
}
