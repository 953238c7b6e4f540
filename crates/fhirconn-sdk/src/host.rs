//! The safe view of the host's services that every scheme call receives.

use crate::error::{Error, Result};
use fhirconn_abi::{
    log_level,
    std_types::{ROption, RStr, RString},
    ClientIdentity as AbiIdentity, Header as AbiHeader, HostRef, HttpRequest as AbiRequest,
    HttpResponse as AbiResponse,
};
use secrecy::{ExposeSecret, SecretString};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The host's services: HTTP, files, environment, clock, logging, the person, a credential
/// store. A scheme has no other way to reach the outside world.
pub struct Host<'a> {
    raw: HostRef<'a>,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

/// A TLS client identity (certificate chain + private key, PEM).
#[derive(Clone)]
pub struct ClientIdentity {
    /// PEM certificates, leaf first.
    pub certificate_chain_pem: String,
    /// PEM private key, unencrypted.
    pub private_key_pem: SecretString,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificate_chain_pem", &self.certificate_chain_pem)
            .field("private_key_pem", &"[REDACTED]")
            .finish()
    }
}

impl ClientIdentity {
    pub(crate) fn to_abi(&self) -> AbiIdentity {
        AbiIdentity {
            certificate_chain_pem: self.certificate_chain_pem.as_str().into(),
            private_key_pem: self.private_key_pem.expose_secret().into(),
        }
    }
}

/// An HTTP request sent through the host. Its `Debug` shows credential header values
/// (marked sensitive, or `Authorization`, `Cookie`, ...) as `[REDACTED]` and the body as its
/// length only, so logging a request cannot leak a secret.
#[derive(Clone, Default)]
pub struct HttpRequest {
    /// `GET`, `POST`...
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers as (name, value, sensitive).
    pub headers: Vec<(String, String, bool)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// A client identity other than the connection's own.
    pub identity: Option<ClientIdentity>,
}

impl HttpRequest {
    /// A request with a method and URL.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_string(),
            url: url.to_string(),
            ..Self::default()
        }
    }
    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_string(), value.to_string(), false));
        self
    }
    /// Adds a header whose value is a credential (never logged).
    #[must_use]
    pub fn sensitive_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_string(), value.to_string(), true));
        self
    }
    /// Sets an `application/x-www-form-urlencoded` body.
    #[must_use]
    pub fn form(mut self, pairs: &[(&str, &str)]) -> Self {
        self.body = form_urlencode(pairs).into_bytes();
        self.headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
            false,
        ));
        self
    }
    /// Sets a JSON body (`Content-Type: application/json`). Fails only for values JSON cannot
    /// represent (a map with non-string keys); the message names no value.
    pub fn json(mut self, body: &impl serde::Serialize) -> Result<Self> {
        self.body = serde_json::to_vec(body)
            .map_err(|_| Error::internal("cannot encode the request body as JSON"))?;
        self.headers
            .push(("Content-Type".into(), "application/json".into(), false));
        Ok(self)
    }
}

/// The key in an HTTP request's `extensions_json` that marks a request to a cloud
/// instance-metadata endpoint ([`Host::instance_metadata_http`]).
pub const INSTANCE_METADATA: &str = "instance-metadata";

/// Encodes pairs as `application/x-www-form-urlencoded` (RFC 6749 appendix B).
pub fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Encodes one value as `application/x-www-form-urlencoded` (space as `+`, UTF-8 percent-encoded).
pub fn form_urlencode_component(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An HTTP response from the host. Redirects are not followed. Its `Debug` shows credential
/// header values (`Set-Cookie`, ...) as `[REDACTED]` and the body (tokens) as its length only.
#[derive(Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers as (name, value).
    pub headers: Vec<(String, String)>,
    /// Body bytes (capped by the host).
    pub body: Vec<u8>,
}

/// `(name, value)` pairs for `Debug`, credential values replaced.
struct DebugHeaders<'a>(Vec<(&'a str, &'a str)>);

impl std::fmt::Debug for DebugHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// A body for `Debug`: its length, never its bytes.
struct DebugBody(usize);

impl std::fmt::Debug for DebugBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} bytes]", self.0)
    }
}

/// `(name, value)` with the value redacted as the ABI's own `Debug` does.
fn shown<'a>(name: &'a str, value: &'a str, sensitive: bool) -> (&'a str, &'a str) {
    (
        name,
        fhirconn_abi::redacted_header_value(name, value, sensitive),
    )
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers = self
            .headers
            .iter()
            .map(|(n, v, s)| shown(n, v, *s))
            .collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &DebugHeaders(headers))
            .field("body", &DebugBody(self.body.len()))
            .field("identity", &self.identity)
            .finish()
    }
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers = self
            .headers
            .iter()
            .map(|(n, v)| shown(n, v, false))
            .collect();
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &DebugHeaders(headers))
            .field("body", &DebugBody(self.body.len()))
            .finish()
    }
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl<'a> Host<'a> {
    /// Wraps the raw services object. Used by the export layer and by tests.
    pub fn from_raw(raw: HostRef<'a>) -> Self {
        Self { raw }
    }

    /// Sends an HTTP request through the host's transport.
    pub fn http(&self, request: HttpRequest) -> Result<HttpResponse> {
        self.send(request, RString::new())
    }

    /// Sends a `GET` to a cloud instance-metadata endpoint (Azure IMDS, App Service's identity
    /// endpoint) whose URL the scheme took from its own configuration or environment, never
    /// from a server. Such endpoints are plain http by design: the host then also accepts
    /// plain http to an IPv4 link-local address (169.254.0.0/16) for this request (extension
    /// key [`INSTANCE_METADATA`]); every other rule of [`Host::http`] applies. A host older
    /// than this key refuses such a URL as it refuses any plain http.
    pub fn instance_metadata_http(&self, request: HttpRequest) -> Result<HttpResponse> {
        self.send(request, format!("{{\"{INSTANCE_METADATA}\":true}}").into())
    }

    fn send(&self, request: HttpRequest, extensions_json: RString) -> Result<HttpResponse> {
        let abi = AbiRequest {
            method: request.method.into(),
            url: request.url.into(),
            headers: request
                .headers
                .into_iter()
                .map(|(name, value, sensitive)| AbiHeader {
                    name: name.into(),
                    value: value.into(),
                    sensitive,
                })
                .collect(),
            body: request.body.into(),
            identity: request.identity.as_ref().map(ClientIdentity::to_abi).into(),
            extensions_json,
        };
        let resp: AbiResponse = self.raw.http(abi).into_result()?;
        Ok(HttpResponse {
            status: resp.status,
            headers: resp
                .headers
                .into_iter()
                .map(|h| (h.name.into_string(), h.value.into_string()))
                .collect(),
            body: resp.body.into_vec(),
        })
    }

    /// Reads a file; relative paths resolve against the configuration file's directory.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self
            .raw
            .read_file(RStr::from(path))
            .into_result()?
            .into_vec())
    }

    /// Reads a UTF-8 text file.
    pub fn read_to_string(&self, path: &str) -> Result<String> {
        String::from_utf8(self.read_file(path)?)
            .map_err(|_| Error::config(format!("'{path}' is not UTF-8 text")))
    }

    /// Reads an environment variable.
    pub fn env_var(&self, name: &str) -> Option<String> {
        match self.raw.env_var(RStr::from(name)) {
            ROption::RSome(v) => Some(v.into_string()),
            ROption::RNone => None,
        }
    }

    /// The host's clock.
    pub fn now(&self) -> SystemTime {
        let ms = self.raw.now_unix_ms();
        if ms >= 0 {
            UNIX_EPOCH + Duration::from_millis(ms as u64)
        } else {
            UNIX_EPOCH
        }
    }

    /// Blocks for a while (through the host, so tests can control time).
    pub fn sleep(&self, duration: Duration) {
        self.raw
            .sleep_ms(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    }

    /// Logs at debug level; the host redacts known secrets.
    pub fn debug(&self, message: &str) {
        self.raw.log(log_level::DEBUG, RStr::from(message));
    }
    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.raw.log(log_level::INFO, RStr::from(message));
    }
    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.raw.log(log_level::WARN, RStr::from(message));
    }

    /// Tells the person something; returns `true` when the host opened `url` for them.
    pub fn tell_person(&self, message: &str, url: Option<&str>) -> bool {
        let url: ROption<RStr<'_>> = url.map(RStr::from).into();
        self.raw.tell_person(RStr::from(message), url)
    }

    /// Reads a value from the credential store.
    pub fn store_get(&self, key: &str) -> Result<Option<SecretString>> {
        Ok(match self.raw.store_get(RStr::from(key)).into_result()? {
            ROption::RSome(v) => Some(SecretString::from(v.into_string())),
            ROption::RNone => None,
        })
    }
    /// Writes a value to the credential store.
    pub fn store_put(&self, key: &str, value: &SecretString) -> Result<()> {
        Ok(self
            .raw
            .store_put(RStr::from(key), RStr::from(value.expose_secret()))
            .into_result()?)
    }
    /// Deletes a value from the credential store.
    pub fn store_delete(&self, key: &str) -> Result<()> {
        Ok(self.raw.store_delete(RStr::from(key)).into_result()?)
    }

    /// Asks the host to redact `secret` from every log line, error and report from now on,
    /// in all its encodings (for a secret the host cannot see as one: a value sent in an
    /// unusual place). Hosts without the operation ignore it.
    pub fn redact_secret(&self, secret: &str) {
        let op = crate::wire::HostOperation::RedactSecret(crate::wire::RedactSecret {
            secret: secret.to_string(),
        });
        let _ = self.raw.invoke(
            RStr::from(op.name()),
            RStr::from(op.payload_json().as_str()),
        );
    }

    /// Sends the person to an authorization URL and waits for the browser's redirect to a
    /// loopback listener of the host (RFC 8252 §7.3): the host's `browser-redirect` operation.
    /// Fails with `interaction_required` when the call may not talk to a person.
    pub fn browser_redirect(
        &self,
        request: &crate::wire::BrowserRedirect,
    ) -> Result<crate::wire::RedirectAnswer> {
        self.typed_op(crate::wire::HostOperation::BrowserRedirect(request.clone()))
    }

    /// Runs a process through the host (the `exec` operation): argv without a shell, stdin
    /// closed, a cleared environment plus what the request names, under a timeout. The
    /// answer's stdout holds credentials: never log it. Fails when the process cannot start
    /// or times out; a non-zero exit is an answer, for the caller to judge.
    pub fn exec(&self, request: &crate::wire::Exec) -> Result<crate::wire::ExecAnswer> {
        self.typed_op(crate::wire::HostOperation::Exec(request.clone()))
    }

    fn typed_op<T: serde::de::DeserializeOwned>(
        &self,
        op: crate::wire::HostOperation,
    ) -> Result<T> {
        let out = self
            .raw
            .invoke(
                RStr::from(op.name()),
                RStr::from(op.payload_json().as_str()),
            )
            .into_result()?;
        serde_json::from_str(out.as_str()).map_err(|e| {
            Error::protocol(format!(
                "host answered '{}' with unexpected JSON: {e}",
                op.name()
            ))
        })
    }

    /// Calls a host operation added after ABI 1.0.
    pub fn invoke(&self, op: &str, payload: &serde_json::Value) -> Result<serde_json::Value> {
        let out = self
            .raw
            .invoke(RStr::from(op), RStr::from(payload.to_string().as_str()))
            .into_result()?;
        serde_json::from_str(out.as_str())
            .map_err(|e| Error::protocol(format!("host answered '{op}' with invalid JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_is_serialized_with_its_content_type_and_failures_name_no_value() {
        let req = HttpRequest::new("POST", "https://acme.example/token")
            .json(&serde_json::json!({"client_id": "c", "api_key": "k"}))
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, serde_json::json!({"client_id": "c", "api_key": "k"}));
        assert_eq!(
            req.headers,
            [("Content-Type".into(), "application/json".into(), false)]
        );
        // JSON object keys must be strings.
        let odd = std::collections::BTreeMap::from([(vec![1u8], "CANARY-value")]);
        let e = HttpRequest::new("POST", "https://a.example")
            .json(&odd)
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert!(!e.message().contains("CANARY"), "{e}");
    }

    #[test]
    fn debug_of_requests_and_responses_hides_credentials_and_bodies() {
        let req = HttpRequest::new("POST", "https://idp.example/token")
            .sensitive_header("X-Custom", "CANARY-marked")
            .header("Authorization", "Basic CANARY-basic")
            .header("Accept", "application/json")
            .form(&[("client_secret", "CANARY-secret"), ("grant_type", "x")]);
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(
            dbg.contains("application/json") && dbg.contains("bytes]"),
            "{dbg}"
        );
        let resp = HttpResponse {
            status: 200,
            headers: vec![
                ("Set-Cookie".into(), "s=CANARY-cookie".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: br#"{"access_token":"CANARY-token","refresh_token":"CANARY-r"}"#.to_vec(),
        };
        let dbg = format!("{resp:#?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(dbg.contains("application/json"), "{dbg}");
    }

    #[test]
    fn form_encoding_follows_rfc6749_appendix_b() {
        assert_eq!(
            form_urlencode_component("a b:c%d/é+"),
            "a+b%3Ac%25d%2F%C3%A9%2B"
        );
        assert_eq!(
            form_urlencode(&[("k", "v 1"), ("x", "&=")]),
            "k=v+1&x=%26%3D"
        );
    }
}
