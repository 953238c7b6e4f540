//! `HostHttpClient`: oauth2/openidconnect's `SyncHttpClient` over the host's HTTP service.

use crate::host::{Host, HttpRequest};

/// An oauth2 `SyncHttpClient` that sends every request through the host, so token requests get
/// the connection's TLS roots, client identity, proxy and timeouts, and never follow redirects.
#[derive(Debug, Clone, Copy)]
pub struct HostHttpClient<'h, 'a> {
    host: &'h Host<'a>,
}

impl<'h, 'a> HostHttpClient<'h, 'a> {
    /// Wraps a host.
    pub fn new(host: &'h Host<'a>) -> Self {
        Self { host }
    }
}

/// An HTTP failure as oauth2 sees it; the message names no secret.
#[derive(Debug, thiserror::Error)]
pub enum HostHttpError {
    /// The host could not complete the request.
    #[error("{0}")]
    Host(#[from] crate::Error),
    /// The request or response could not be represented.
    #[error("invalid HTTP message: {0}")]
    Http(#[from] http::Error),
}

/// Header names whose values are credentials.
fn is_sensitive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization" || n == "proxy-authorization" || n == "cookie" || n.contains("secret")
}

impl oauth2::SyncHttpClient for HostHttpClient<'_, '_> {
    type Error = HostHttpError;

    fn call(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, Self::Error> {
        let (parts, body) = request.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                let name = k.as_str().to_string();
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                let sensitive = is_sensitive(&name);
                (name, value, sensitive)
            })
            .collect();
        let resp = self.host.http(HttpRequest {
            method: parts.method.as_str().to_string(),
            url: parts.uri.to_string(),
            headers,
            body,
            identity: None,
        })?;
        let mut builder = http::Response::builder().status(resp.status);
        for (k, v) in &resp.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        Ok(builder.body(resp.body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HttpResponse;
    use crate::testing::MockHost;
    use oauth2::SyncHttpClient;

    #[test]
    fn requests_and_responses_cross_the_host_intact() {
        let mock = MockHost::new().with_http(|req| {
            assert_eq!(req.method, "POST");
            assert_eq!(req.url, "https://idp.example/token");
            assert_eq!(req.body, b"grant_type=client_credentials");
            let auth = req.headers.iter().find(|h| h.0 == "authorization").unwrap();
            assert!(auth.2, "authorization must be marked sensitive");
            Ok(HttpResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: br#"{"access_token":"t","token_type":"bearer"}"#.to_vec(),
            })
        });
        mock.with_host(|host| {
            let client = HostHttpClient::new(host);
            let req = http::Request::builder()
                .method("POST")
                .uri("https://idp.example/token")
                .header("Authorization", "Basic abc")
                .body(b"grant_type=client_credentials".to_vec())
                .unwrap();
            let resp = client.call(req).unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "application/json");
            assert!(resp.body().starts_with(b"{\"access_token\""));
        });
    }

    #[test]
    fn a_host_failure_is_an_error_not_a_panic() {
        let mock = MockHost::new().with_http(|_| Err("connection refused".into()));
        mock.with_host(|host| {
            let req = http::Request::builder()
                .uri("https://idp.example/token")
                .body(Vec::new())
                .unwrap();
            let err = HostHttpClient::new(host).call(req).unwrap_err();
            assert_eq!(err.to_string(), "connection refused");
        });
    }
}
