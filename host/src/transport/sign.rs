//! Per-request signing on the request path: for a connection whose scheme(s) declare
//! `signs_requests`, every hop the transport sends with credentials (first request, 401 retry,
//! each redirect hop) is signed afresh, after the cached credential headers were added.

use super::TransportError;
use crate::bridge::{InlineServices, PluginConnection};
use fhirconn_sdk::wire::{SignRequest, WireHeader, EMPTY_BODY_SHA256};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The signing schemes of one connection, in configuration order (built once per connection).
pub(crate) struct Signing {
    entries: Vec<PluginConnection>,
    services: InlineServices,
}

impl Signing {
    /// `None` when no scheme of the connection signs requests.
    pub(crate) fn new(entries: Vec<PluginConnection>, services: InlineServices) -> Option<Self> {
        (!entries.is_empty()).then_some(Self { entries, services })
    }
}

/// Signs the hops of one request: the connection's signing schemes and the SHA-256 of the
/// request's body, computed once (a 401 retry reuses it; a hop that drops the body, a 303,
/// signs the empty body).
#[derive(Clone)]
pub struct Signer {
    signing: Arc<Signing>,
    body_sha256: Arc<str>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("schemes", &self.signing.entries.len())
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of `body` ([`EMPTY_BODY_SHA256`] for none).
pub fn body_sha256(body: Option<&[u8]>) -> String {
    match body {
        None | Some([]) => EMPTY_BODY_SHA256.to_string(),
        Some(b) => hex(&Sha256::digest(b)),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

impl Signer {
    /// A signer for one request whose body is `body`.
    pub(crate) fn for_body(signing: &Arc<Signing>, body: Option<&[u8]>) -> Self {
        Self {
            signing: signing.clone(),
            body_sha256: body_sha256(body).into(),
        }
    }

    /// Signs one hop: `headers` are the ordinary headers to be sent, `credentials` the
    /// credential ones (marked sensitive); `with_body` false when this hop sends no body.
    /// Returns the headers to set (replacing same-named ones), in order; every value of a
    /// sensitive header is marked sensitive and was registered with the redactor.
    pub fn sign(
        &self,
        method: &Method,
        url: &url::Url,
        headers: &[(HeaderName, HeaderValue)],
        credentials: &[(HeaderName, HeaderValue)],
        with_body: bool,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, TransportError> {
        let wire = |(n, v): &(HeaderName, HeaderValue), sensitive: bool| WireHeader {
            name: n.as_str().to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            sensitive,
        };
        let mut request = SignRequest {
            method: method.as_str().to_string(),
            url: url.as_str().to_string(),
            headers: headers
                .iter()
                .map(|h| wire(h, false))
                .chain(credentials.iter().map(|h| wire(h, true)))
                .collect(),
            body_sha256: if with_body {
                self.body_sha256.to_string()
            } else {
                EMPTY_BODY_SHA256.to_string()
            },
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for entry in &self.signing.entries {
            let answer = entry
                .sign_inline(&request, &self.signing.services)
                .map_err(|e| TransportError::Signing {
                    kind: e.kind(),
                    message: e.to_string(),
                })?;
            for h in answer.headers {
                let bad = |what: &str| TransportError::Signing {
                    kind: fhirconn_sdk::ErrorKind::Protocol,
                    message: format!(
                        "{}: sign-request answered an invalid header {what} '{}'",
                        entry.scheme_name(),
                        crate::text::plugin_text(&h.name)
                    ),
                };
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("name"))?;
                let mut value = HeaderValue::from_str(&h.value).map_err(|_| bad("value for"))?;
                value.set_sensitive(h.sensitive);
                out.retain(|(n, _)| *n != name);
                out.push((name.clone(), value));
                // A later stacked signer sees the request as it will be sent.
                request
                    .headers
                    .retain(|w| !w.name.eq_ignore_ascii_case(&h.name));
                request.headers.push(h);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "sign_tests.rs"]
mod path_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_hash_is_lowercase_hex_sha256() {
        assert_eq!(body_sha256(None), EMPTY_BODY_SHA256);
        assert_eq!(body_sha256(Some(b"")), EMPTY_BODY_SHA256);
        assert_eq!(
            body_sha256(Some(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
