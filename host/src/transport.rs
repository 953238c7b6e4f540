//! HTTP for one connection: reqwest + rustls clients from the host's [`ClientPool`] (per
//! roots, proxy, timeouts and client identity), capped bodies, and redirects followed by hand
//! so credentials never change origin.

mod classify;
mod direct;
mod pool;
mod relay;
mod roots;
mod sign;

pub use classify::describe_tls;
pub(crate) use direct::{
    deadline, default_port, log as log_http, timeout as timeout_of, DirectRequest,
};
pub use direct::{Streamed, StreamedBody};
pub(crate) use pool::warm_up;
pub use pool::{ClientKey, ClientPool, IdentityKey};
pub(crate) use relay::{UpstreamIo, Upstreams};
pub(crate) use sign::Signing;
pub use sign::{body_sha256, Signer};

use crate::config::ConnectionSettings;
use fhirconn_sdk::ClientIdentity;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The `User-Agent` of requests that have none.
pub(crate) const USER_AGENT: &str = concat!("fhirconn/", env!("CARGO_PKG_VERSION"));

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
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A scheme could not sign the request (per-request signing); `message` names it and
    /// is redacted and sanitised.
    #[error("signing the request failed: {message}")]
    Signing {
        /// The kind the scheme gave.
        kind: fhirconn_sdk::ErrorKind,
        /// Why.
        message: String,
    },
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
    /// Signs every hop sent with credentials (connections whose scheme signs requests).
    pub signer: Option<Signer>,
}

/// Request headers that still follow a redirect to another origin (everything else, including
/// custom `--header`s, is dropped there).
const CROSS_ORIGIN_HEADERS: &[&str] = &["accept", "user-agent", "accept-language"];

/// Where one hop of a request goes, and whether credentials still go with it.
struct Hop {
    method: Method,
    url: url::Url,
    body: Option<Vec<u8>>,
    with_credentials: bool,
    /// Replaces the client's total deadline (`request-timeout`, none when unset).
    timeout: Option<Duration>,
}

/// Why an HTTP client could not be built for a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The proxy URL was refused by reqwest.
    #[error("proxy.url: {0}")]
    Proxy(String),
    /// The scheme's certificate or key is not usable by rustls.
    #[error("the client certificate or its key could not be used")]
    Identity,
    /// reqwest refused the configuration.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Why a connection's transport cannot be set up (reported as a configuration error at the
/// setting named by [`SetupError::field`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The roots file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    RootsUnreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The roots file is not PEM.
    #[error("{} holds no valid PEM certificates", path.display())]
    RootsInvalid {
        /// The file.
        path: PathBuf,
    },
    /// The roots file holds no certificate.
    #[error("{} holds no certificates", path.display())]
    RootsEmpty {
        /// The file.
        path: PathBuf,
    },
    /// Neither the system's roots nor a file: nothing would be trusted.
    #[error("use-system-roots is false but no trusted-root-certificates-file is set")]
    NoRoots,
}

impl SetupError {
    /// The connection setting the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            SetupError::NoRoots => "use-system-roots",
            _ => "trusted-root-certificates-file",
        }
    }
}

/// The HTTP side of one connection.
pub struct Transport {
    settings: ConnectionSettings,
    key: ClientKey,
    pool: Arc<ClientPool>,
    /// The client without an identity, once taken from the pool (no key hashed per request).
    plain: OnceLock<reqwest::Client>,
    /// Whether requests may skip reqwest (no HTTP proxy applies), and its client then.
    direct: OnceLock<Option<direct::DirectClient>>,
    /// The proxy's relay connections (`None`: its requests take another path).
    relay: OnceLock<Option<Arc<relay::Upstreams>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("connection", &self.settings.id)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Reads the connection's trusted roots; its clients come from `pool`.
    pub fn new(settings: ConnectionSettings, pool: Arc<ClientPool>) -> Result<Self, SetupError> {
        let mut roots_pem = Vec::new();
        // Parsed here for the setting's errors; the client's verifier parses them again.
        let roots = match &settings.trusted_roots_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| SetupError::RootsUnreadable {
                    path: path.clone(),
                    source,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|_| SetupError::RootsInvalid { path: path.clone() })?;
                if certs.is_empty() {
                    return Err(SetupError::RootsEmpty { path: path.clone() });
                }
                roots_pem = pem;
                certs
            }
            None => Vec::new(),
        };
        if !settings.host.use_system_roots && roots.is_empty() {
            return Err(SetupError::NoRoots);
        }
        let key = ClientKey::new(&settings, roots_pem.into());
        Ok(Self {
            settings,
            key,
            pool,
            plain: OnceLock::new(),
            direct: OnceLock::new(),
            relay: OnceLock::new(),
        })
    }

    /// The connection's settings.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// The client for an identity: built once per distinct [`ClientKey`] in the host's pool
    /// and cloned, so a file of many connections to similar servers shares clients and their
    /// connection pools (building one costs milliseconds).
    pub fn client(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> Result<reqwest::Client, ClientError> {
        if identity.is_none() {
            if let Some(c) = self.plain.get() {
                return Ok(c.clone());
            }
        }
        let key = self.key.with_identity(identity);
        let client = self.pool.get_or_build(key, || self.build(identity))?;
        if identity.is_none() {
            let _ = self.plain.set(client.clone());
        }
        Ok(client)
    }

    /// Reads the trusted roots of this connection's clients now (a long-lived host's warm-up;
    /// otherwise the first TLS handshake reads them).
    pub(crate) fn preload_roots(&self) {
        if let Ok(v) = self.pool.verifier(&self.key) {
            v.preload();
        }
    }

    fn build(&self, identity: Option<&ClientIdentity>) -> Result<reqwest::Client, ClientError> {
        let s = &self.settings;
        let mut b = pool::with_timeouts(reqwest::Client::builder(), s)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .tls_info(true)
            .referer(false);
        // The roots of reqwest's own TLS set-up (the platform verifier, plus the file's), read
        // at the first handshake that needs them rather than now (`transport/roots.rs`).
        let verifier = self.pool.verifier(&self.key)?;
        b = b.use_preconfigured_tls(roots::client_config(verifier, identity)?);
        // Proxies never see loopback traffic: plain http to loopback is allowed without
        // `allow-insecure-http` because it never leaves the machine, so it must not be handed
        // to a proxy (configured or from `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`).
        b = b.no_proxy();
        if let Some(p) = &s.proxy {
            let mut list = p.no_proxy.clone();
            list.push(pool::LOOPBACK_NO_PROXY.to_string());
            let proxy =
                reqwest::Proxy::all(&p.url).map_err(|e| ClientError::Proxy(e.to_string()))?;
            b = b.proxy(proxy.no_proxy(reqwest::NoProxy::from_string(&list.join(","))));
        } else {
            for proxy in pool::env_proxies().map_err(ClientError::Proxy)? {
                b = b.proxy(proxy);
            }
        }
        b.build()
            .map_err(|e| ClientError::Build(classify::error_chain(&e).join(": ")))
    }

    /// Sends a request, following redirects if asked (dropping credential headers when the
    /// origin changes, refusing https→http), and reads the body up to the cap.
    pub async fn send(
        &self,
        req: Outgoing,
        identity: Option<&ClientIdentity>,
    ) -> Result<Response, TransportError> {
        let origin = req.url.origin();
        let mut hop = Hop {
            method: req.method.clone(),
            url: req.url.clone(),
            body: req.body.clone(),
            with_credentials: true,
            timeout: None,
        };
        for n in 0..=MAX_REDIRECTS {
            let started = std::time::Instant::now();
            let resp = self.send_hop(&req, &hop, identity).await?;
            let status = resp.status();
            let redirect = status.is_redirection() && status != StatusCode::NOT_MODIFIED;
            if !(redirect && req.follow_redirects) {
                return self.read(resp, hop.url, started).await;
            }
            if n == MAX_REDIRECTS {
                return Err(TransportError::Redirect(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                return self.read(resp, hop.url, started).await;
            };
            let next = hop
                .url
                .join(loc)
                .map_err(|_| TransportError::Redirect("invalid Location header".into()))?;
            self.follow(&mut hop, status, next, &origin)?;
        }
        Err(TransportError::Redirect("redirect loop".into()))
    }

    /// Sends one request as given, without following a redirect, and returns the response
    /// unread (to stream its body).
    pub async fn open(
        &self,
        req: &Outgoing,
        identity: Option<&ClientIdentity>,
    ) -> Result<reqwest::Response, TransportError> {
        self.open_hop(req, identity, None).await
    }

    /// Like [`Transport::open`], with the whole exchange bounded by `total` instead of
    /// `request-timeout` (bulk downloads, which their caller bounds by an idle timeout).
    pub async fn open_long(
        &self,
        req: &Outgoing,
        identity: Option<&ClientIdentity>,
        total: Duration,
    ) -> Result<reqwest::Response, TransportError> {
        self.open_hop(req, identity, Some(total)).await
    }

    async fn open_hop(
        &self,
        req: &Outgoing,
        identity: Option<&ClientIdentity>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, TransportError> {
        let hop = Hop {
            method: req.method.clone(),
            url: req.url.clone(),
            body: req.body.clone(),
            with_credentials: true,
            timeout,
        };
        self.send_hop(req, &hop, identity).await
    }

    /// Moves `hop` to the redirect target `next`, or refuses the redirect.
    fn follow(
        &self,
        hop: &mut Hop,
        status: StatusCode,
        next: url::Url,
        origin: &url::Origin,
    ) -> Result<(), TransportError> {
        let url = &hop.url;
        if url.scheme() == "https" && next.scheme() != "https" {
            return Err(TransportError::Redirect(format!(
                "{} redirects to insecure {}",
                crate::text::shown_url(url),
                crate::text::shown_url(&next)
            )));
        }
        // Only 303, and 301/302 after a POST, turn the request into a body-less GET; every
        // other redirect keeps the method (and the body) — 307/308 by definition, 301/302 of
        // PUT/PATCH/DELETE in practice.
        let becomes_get = status == StatusCode::SEE_OTHER
            || ((status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND)
                && hop.method == Method::POST);
        let keeps_method = !becomes_get;
        if next.origin() != *origin {
            // Replaying the method and body (PUT/POST with patient data, DELETE) at a server
            // the person never named is refused, whatever the redirect status.
            if keeps_method
                && (hop.body.is_some() || !matches!(hop.method, Method::GET | Method::HEAD))
            {
                return Err(TransportError::Redirect(format!(
                    "{} answered {} to another origin ({}); not re-sending the {} \
                     request there",
                    crate::text::shown_url(url),
                    status.as_u16(),
                    next.origin().ascii_serialization(),
                    hop.method
                )));
            }
            if hop.with_credentials {
                // No credential header, custom header or client certificate follows: the
                // rest of the hops use a client without the identity.
                hop.with_credentials = false;
                tracing::debug!(connection = %self.settings.id, from = %crate::text::shown_url(url),
                    to = %crate::text::shown_url(&next),
                    "redirect to another origin: credentials, custom headers and client \
                     certificate dropped");
            }
        }
        if status == StatusCode::SEE_OTHER
            || ((status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND)
                && hop.method == Method::POST)
        {
            hop.method = Method::GET;
            hop.body = None;
        }
        hop.url = next;
        Ok(())
    }

    /// Sends one hop: past an origin change without credentials, custom headers or identity.
    async fn send_hop(
        &self,
        req: &Outgoing,
        hop: &Hop,
        identity: Option<&ClientIdentity>,
    ) -> Result<reqwest::Response, TransportError> {
        let client = self.client(identity.filter(|_| hop.with_credentials))?;
        let url = &hop.url;
        // Each hop is signed afresh (a signature is bound to one URL and time); a hop past
        // an origin change carries no credentials, so no signature either.
        let signature = match (&req.signer, hop.with_credentials) {
            (Some(signer), true) => signer.sign(
                &hop.method,
                url,
                &req.headers,
                &req.credential_headers,
                hop.body.is_some(),
            )?,
            _ => Vec::new(),
        };
        let signed = |k: &HeaderName| signature.iter().any(|(n, _)| n == k);
        let build = || {
            let mut rb = client.request(hop.method.clone(), url.clone());
            for (k, v) in &req.headers {
                // Past an origin change only harmless headers follow: a custom header
                // (`--header X-Api-Key: ...`) may be a credential too.
                if (hop.with_credentials || CROSS_ORIGIN_HEADERS.contains(&k.as_str()))
                    && !signed(k)
                {
                    rb = rb.header(k, v);
                }
            }
            if hop.with_credentials {
                for (k, v) in &req.credential_headers {
                    if !signed(k) {
                        rb = rb.header(k, v);
                    }
                }
            }
            for (k, v) in &signature {
                rb = rb.header(k, v);
            }
            if let Some(b) = &hop.body {
                rb = rb.body(b.clone());
            }
            if let Some(t) = hop.timeout {
                rb = rb.timeout(t);
            }
            rb
        };
        let started = std::time::Instant::now();
        let resp = match build().send().await {
            Ok(r) => r,
            // The connection closed between its handshake and our request, so the request
            // was never sent (hyper: "connection was not ready"): safe to send it again.
            Err(e)
                if classify::error_chain(&e)
                    .iter()
                    .any(|m| m.contains("not ready")) =>
            {
                tracing::debug!(connection = %self.settings.id, url = %crate::text::shown_url(url),
                    "connection closed before the request was sent; retrying once");
                build()
                    .send()
                    .await
                    .map_err(|e| self.classify_since(&e, url, started))?
            }
            Err(e) => return Err(self.classify_since(&e, url, started)),
        };
        let status = resp.status().as_u16();
        let method = &hop.method;
        tracing::debug!(
            connection = %self.settings.id, %method, url = %crate::text::shown_url(url), status,
            elapsed_ms = started.elapsed().as_millis() as u64, "http"
        );
        if self.settings.host.enable_debug_logging {
            tracing::info!(connection = %self.settings.id, %method,
                url = %crate::text::shown_url(url), status, "http");
        }
        Ok(resp)
    }

    async fn read(
        &self,
        mut resp: reqwest::Response,
        url: url::Url,
        started: std::time::Instant,
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
                Err(e) => return Err(self.classify_since(&e, &url, started)),
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
        classify::classify(e, url, &self.settings)
    }
}

#[cfg(test)]
mod tests;
