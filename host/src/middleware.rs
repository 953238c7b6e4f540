//! Adding a connection's authentication to a caller's own reqwest client, as a
//! [`reqwest_middleware`] middleware: [`Authentication`].
//!
//! ```no_run
//! # async fn run(conn: std::sync::Arc<fhirconn_host::Connection>) -> Result<(), Box<dyn std::error::Error>> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(fhirconn_host::middleware::Authentication::new(conn.clone()))
//!     .build();
//! let resp = client.get(conn.url_for("Patient?_count=1")?).send().await?;
//! # let _ = resp; Ok(()) }
//! ```
//!
//! The middleware keeps the connection's rules: credentials (cached, renewed, single flight)
//! are added only to requests on the connection's own origin; after a 401 the cached
//! credentials are dropped and, when the schemes then return different ones, the request is
//! sent once more (when its body can be cloned). What it cannot do with a client it does not
//! own is refused rather than weakened: a scheme that presents a client certificate (use
//! [`crate::Connection::send`]), and credential headers other than `Authorization` unless the
//! caller says its client follows no redirects ([`Authentication::client_follows_no_redirects`];
//! reqwest drops `Authorization` on a redirect to another host, but not other headers).

use crate::{Connection, Resolved};
use reqwest::header::AUTHORIZATION;
use reqwest_middleware::{Middleware, Next};
use std::sync::Arc;

/// What the middleware refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MiddlewareError {
    /// Fetching credentials failed.
    #[error(transparent)]
    Credentials(#[from] crate::Error),
    /// The scheme presents a client certificate, which only the host's own client can.
    #[error(
        "connection '{0}' authenticates with a client certificate; send through \
         fhirconn_host::Connection instead of your own client"
    )]
    ClientCertificate(String),
    /// Credential headers that reqwest would keep on a cross-origin redirect.
    #[error(
        "connection '{0}' sends credentials in a header reqwest keeps on redirects to other \
         hosts; build your client with redirect::Policy::none() and call \
         Authentication::client_follows_no_redirects()"
    )]
    RedirectUnsafe(String),
    /// A scheme that signs every request needs the body's bytes, and signs each redirect
    /// hop afresh, which a caller's client following redirects would not do.
    #[error(
        "connection '{0}' signs every request: build your client with \
         redirect::Policy::none(), call Authentication::client_follows_no_redirects(), and \
         send bodies as bytes (not streams)"
    )]
    SigningUnsafe(String),
}

/// A middleware that authenticates requests to one [`Connection`]'s origin.
#[derive(Debug, Clone)]
pub struct Authentication {
    conn: Arc<Connection>,
    no_redirects: bool,
}

impl Authentication {
    /// Authenticates requests to `conn`'s origin; other requests pass through untouched.
    pub fn new(conn: Arc<Connection>) -> Self {
        Self {
            conn,
            no_redirects: false,
        }
    }

    /// Declares that the client follows no redirects (`redirect::Policy::none()`), so
    /// credentials in headers other than `Authorization` may be added too.
    #[must_use]
    pub fn client_follows_no_redirects(mut self) -> Self {
        self.no_redirects = true;
        self
    }

    fn on_origin(&self, url: &url::Url) -> bool {
        url.origin() == self.conn.base_url().origin()
    }

    /// The request with `creds` applied, or why they cannot be.
    fn apply(
        &self,
        mut req: reqwest::Request,
        creds: &Resolved,
    ) -> Result<reqwest::Request, MiddlewareError> {
        let id = || self.conn.id().to_string();
        if creds.identity.is_some() {
            return Err(MiddlewareError::ClientCertificate(id()));
        }
        if !self.no_redirects && creds.headers.iter().any(|(n, _)| n != AUTHORIZATION) {
            return Err(MiddlewareError::RedirectUnsafe(id()));
        }
        if let Some(body) = self.signed_body(&req)? {
            // Signed after the credentials, over every header that will be sent.
            let signer = self.conn.signer(body);
            if let Some(signer) = signer {
                let own: Vec<_> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect();
                let signature = signer
                    .sign(
                        req.method(),
                        req.url(),
                        &own,
                        &creds.headers,
                        body.is_some(),
                    )
                    .map_err(|error| {
                        MiddlewareError::Credentials(crate::Error::Transport { id: id(), error })
                    })?;
                self.insert_credentials(&mut req, creds);
                for (name, value) in signature {
                    req.headers_mut().insert(name, value);
                }
                return Ok(req);
            }
        }
        self.insert_credentials(&mut req, creds);
        Ok(req)
    }

    fn insert_credentials(&self, req: &mut reqwest::Request, creds: &Resolved) {
        for (name, value) in &creds.headers {
            let mut value = value.clone();
            value.set_sensitive(true);
            req.headers_mut().insert(name.clone(), value);
        }
    }

    /// For a connection that signs requests: `Some(body bytes)` (`Some(None)` without a
    /// body); `None` when it does not sign. A streamed body or a client that follows
    /// redirects is refused.
    fn signed_body<'r>(
        &self,
        req: &'r reqwest::Request,
    ) -> Result<Option<Option<&'r [u8]>>, MiddlewareError> {
        if !self.conn.auth.signs_requests() {
            return Ok(None);
        }
        let unsafe_ = || MiddlewareError::SigningUnsafe(self.conn.id().to_string());
        if !self.no_redirects {
            return Err(unsafe_());
        }
        match req.body() {
            None => Ok(Some(None)),
            Some(b) => b.as_bytes().map(|b| Some(Some(b))).ok_or_else(unsafe_),
        }
    }
}

fn refuse(e: MiddlewareError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(e)
}

#[async_trait::async_trait]
impl Middleware for Authentication {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if !self.on_origin(req.url()) {
            return next.run(req, extensions).await;
        }
        let creds = self
            .conn
            .credentials(false)
            .await
            .map_err(|e| refuse(e.into()))?;
        // Kept for the one resend after a 401 (a streamed body cannot be resent).
        let spare = req.try_clone();
        let first = self.apply(req, &creds).map_err(refuse)?;
        let resp = next.clone().run(first, extensions).await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(spare) = spare else {
            return Ok(resp);
        };
        match self.conn.renew_after_401(&creds).await {
            Ok(Some(fresh)) => {
                let again = self.apply(spare, &fresh).map_err(refuse)?;
                next.run(again, extensions).await
            }
            Ok(None) => Ok(resp),
            Err(e) => Err(refuse(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    async fn auth() -> Authentication {
        let dir = std::env::temp_dir();
        let host = crate::Host::builder()
            .config_value(
                &dir,
                serde_json::json!({"connections": {"c": {"base-url": "https://fhir.test/r4"}}}),
            )
            .only_explicit_plugin_dirs()
            .build()
            .await
            .unwrap();
        Authentication::new(host.connection("c").unwrap())
    }

    fn creds(name: &'static str, identity: bool) -> Resolved {
        Resolved {
            headers: vec![(
                HeaderName::from_static(name),
                HeaderValue::from_static("s3cret"),
            )],
            identity: identity.then(|| fhirconn_sdk::ClientIdentity {
                certificate_chain_pem: String::new(),
                private_key_pem: String::new().into(),
            }),
            expires_at: None,
            renew_at: None,
            warnings: Vec::new(),
            launch_context: None,
            source: crate::fleet::CredentialSource::Fetched,
        }
    }

    fn request() -> reqwest::Request {
        let url = url::Url::parse("https://fhir.test/r4/Patient").unwrap();
        reqwest::Request::new(reqwest::Method::GET, url)
    }

    #[tokio::test]
    async fn what_a_foreign_client_would_weaken_is_refused() {
        let a = auth().await;
        let ok = a.apply(request(), &creds("authorization", false)).unwrap();
        assert!(ok.headers()["authorization"].is_sensitive());
        assert!(matches!(
            a.apply(request(), &creds("x-api-key", false)),
            Err(MiddlewareError::RedirectUnsafe(_))
        ));
        let no_redirects = a.clone().client_follows_no_redirects();
        assert!(no_redirects
            .apply(request(), &creds("x-api-key", false))
            .is_ok());
        assert!(matches!(
            no_redirects.apply(request(), &creds("authorization", true)),
            Err(MiddlewareError::ClientCertificate(_))
        ));
        assert!(a.on_origin(request().url()));
        assert!(!a.on_origin(&url::Url::parse("https://other.test/r4").unwrap()));
        assert!(!a.on_origin(&url::Url::parse("http://fhir.test/r4").unwrap()));
    }
}
