//! The host's `HostServices` implementation: what a plugin call may ask of the host (HTTP
//! through the connection's transport, files, environment, clock, logs, the person, the
//! credential store, host operations). Every callback is wrapped in `catch_unwind`.

use crate::person::Person;
use crate::redact::Redactor;
use crate::store::CredentialStore;
use crate::text::{plugin_text, sanitize};
use crate::transport::{Outgoing, Transport, TransportError};
use fhirconn_abi::{
    log_level,
    std_types::{ROption, RResult, RStr, RString, RVec},
    AbiError, ErrorKind, Header, HostServices, HttpRequest, HttpResponse,
};
use fhirconn_sdk::wire::{
    BrowserRedirect, HostOperation, RedactSecret, BROWSER_REDIRECT, EMPTY_OBJECT, EXEC,
    REDACT_SECRET,
};
use fhirconn_sdk::{ClientIdentity, SecretString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a connection's plugin calls share.
#[derive(Clone)]
pub(crate) struct SharedServices {
    pub rt: tokio::runtime::Handle,
    pub transport: Arc<Transport>,
    pub base_dir: PathBuf,
    pub connection_id: String,
    pub redactor: Arc<Redactor>,
    pub store: Arc<dyn CredentialStore>,
    pub person: Arc<dyn Person>,
}

/// `HostServices` for one plugin call.
pub(crate) struct CallServices {
    pub shared: SharedServices,
    /// The identity of earlier entries on a stacked connection (for token endpoints).
    pub identity: Option<ClientIdentity>,
    /// Whether this call may talk to a person.
    pub interactive: bool,
}

fn guard<T>(what: &str, f: impl FnOnce() -> RResult<T, AbiError>) -> RResult<T, AbiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => RResult::RErr(AbiError::new(
            ErrorKind::INTERNAL,
            format!("the host panicked while serving {what}"),
        )),
    }
}

fn transport_kind(e: &TransportError) -> ErrorKind {
    match e {
        TransportError::TooLarge { .. } | TransportError::Redirect(_) => ErrorKind::PROTOCOL,
        _ => ErrorKind::NETWORK,
    }
}

impl CallServices {
    fn store_key(&self, key: &str) -> String {
        format!("{}/{key}", self.shared.connection_id)
    }

    fn http_inner(&self, request: HttpRequest) -> Result<HttpResponse, AbiError> {
        let url = url::Url::parse(request.url.as_str()).map_err(|e| {
            AbiError::new(
                ErrorKind::CONFIG,
                format!("invalid URL '{}': {e}", request.url),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AbiError::new(
                ErrorKind::CONFIG,
                format!("unsupported URL scheme in '{url}'"),
            ));
        }
        // Token endpoints, discovery documents and authorities must be https (loopback
        // excepted): a plugin's request carries a credential or decides where one goes. A
        // declared instance-metadata GET may also go to a link-local address (plain http by
        // design, never routed off the machine's link).
        let settings = self.shared.transport.settings();
        if !settings.host.allow_insecure_http
            && !crate::config::is_secure_or_loopback(&url)
            && !is_instance_metadata_request(&request, &url)
        {
            return Err(AbiError::new(
                ErrorKind::CONFIG,
                format!(
                    "refusing plain http to {} (not loopback) for connection '{}': \
                     authentication traffic must use https; set 'allow-insecure-http: true' \
                     on the connection to accept that",
                    url.origin().ascii_serialization(),
                    settings.id
                ),
            ));
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| AbiError::new(ErrorKind::INTERNAL, "invalid HTTP method"))?;
        // Before anything can fail or echo: the secrets this request carries (credential
        // headers, client secrets and assertions, refresh tokens, codes in the body).
        self.shared.redactor.add_from_request(
            request
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_str(), h.sensitive)),
            request.body.as_slice(),
        );
        let mut headers = Vec::new();
        let mut credential_headers = Vec::new();
        for h in request.headers.iter() {
            let name =
                reqwest::header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    AbiError::new(
                        ErrorKind::INTERNAL,
                        format!("invalid header name '{}'", h.name),
                    )
                })?;
            let mut value =
                reqwest::header::HeaderValue::from_str(h.value.as_str()).map_err(|_| {
                    AbiError::new(
                        ErrorKind::INTERNAL,
                        format!("invalid value for header '{}'", h.name),
                    )
                })?;
            if h.sensitive {
                value.set_sensitive(true);
                self.shared.redactor.add_header_value(h.value.as_str());
                credential_headers.push((name, value));
            } else {
                headers.push((name, value));
            }
        }
        let identity = match &request.identity {
            ROption::RSome(i) => Some(ClientIdentity {
                certificate_chain_pem: i.certificate_chain_pem.to_string(),
                private_key_pem: SecretString::from(i.private_key_pem.to_string()),
            }),
            ROption::RNone => self.identity.clone(),
        };
        let out = Outgoing {
            method,
            url,
            headers,
            credential_headers,
            body: if request.body.is_empty() {
                None
            } else {
                Some(request.body.to_vec())
            },
            follow_redirects: false,
            // A plugin's own requests (token endpoints) are never signed.
            signer: None,
        };
        let transport = self.shared.transport.clone();
        let resp = self
            .shared
            .rt
            .block_on(async move { transport.send(out, identity.as_ref()).await })
            .map_err(|e| AbiError::new(transport_kind(&e), e.to_string()))?;
        // Issued tokens (access, refresh, id, device codes) are secrets from now on.
        self.shared.redactor.add_body_parameters(&resp.body);
        Ok(HttpResponse {
            status: resp.status.as_u16(),
            headers: resp
                .headers
                .iter()
                .map(|(k, v)| Header {
                    name: k.as_str().into(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                    sensitive: false,
                })
                .collect(),
            body: resp.body.into(),
        })
    }
}

impl HostServices for CallServices {
    fn http(&self, request: HttpRequest) -> RResult<HttpResponse, AbiError> {
        guard("http", || self.http_inner(request).into())
    }

    fn read_file(&self, path: RStr<'_>) -> RResult<RVec<u8>, AbiError> {
        guard("read_file", || {
            let p = self.shared.base_dir.join(path.as_str());
            match read_regular_file(&p) {
                Ok(bytes) => {
                    if bytes.len() <= 4096 {
                        if let Ok(text) = std::str::from_utf8(&bytes) {
                            if !text.contains("-----BEGIN CERTIFICATE") {
                                self.shared.redactor.add(text);
                            }
                        }
                    }
                    RResult::ROk(bytes.into())
                }
                Err(e) => RResult::RErr(AbiError::new(
                    ErrorKind::CONFIG,
                    format!("cannot read {}: {}", p.display(), io_reason(&e)),
                )),
            }
        })
    }

    fn env_var(&self, name: RStr<'_>) -> ROption<RString> {
        match catch_unwind(AssertUnwindSafe(|| std::env::var(name.as_str()).ok())) {
            Ok(Some(v)) => {
                self.shared.redactor.add(&v);
                ROption::RSome(v.into())
            }
            _ => ROption::RNone,
        }
    }

    fn now_unix_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn sleep_ms(&self, millis: u64) {
        std::thread::sleep(std::time::Duration::from_millis(millis));
    }

    fn log(&self, level: u32, message: RStr<'_>) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let msg = plugin_text(&self.shared.redactor.redact(message.as_str()));
            let id = &self.shared.connection_id;
            match level {
                log_level::ERROR => {
                    tracing::error!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                log_level::WARN => {
                    tracing::warn!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                log_level::INFO => {
                    tracing::info!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                log_level::DEBUG => {
                    tracing::debug!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                _ => tracing::trace!(target: "fhirconn::plugin", connection = %id, "{msg}"),
            }
        }));
    }

    fn tell_person(&self, message: RStr<'_>, url: ROption<RStr<'_>>) -> bool {
        if !self.interactive {
            tracing::warn!(connection = %self.shared.connection_id,
                "a plugin tried to talk to a person during a non-interactive call");
            return false;
        }
        let url = match url {
            ROption::RSome(u) => Some(u.to_string()),
            ROption::RNone => None,
        };
        // The message often quotes an authority (a device-code `message`): no secrets, no
        // terminal control sequences reach the person.
        let message = sanitize(&self.shared.redactor.redact(message.as_str()));
        catch_unwind(AssertUnwindSafe(|| {
            self.shared.person.tell(&message, url.as_deref())
        }))
        .unwrap_or(false)
    }

    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RString>, AbiError> {
        guard("store_get", || {
            match self.shared.store.get(&self.store_key(key.as_str())) {
                Ok(v) => {
                    if let Some(s) = &v {
                        self.shared.redactor.add(s);
                    }
                    RResult::ROk(v.map(RString::from).into())
                }
                Err(e) => RResult::RErr(AbiError::new(ErrorKind::INTERNAL, e.to_string())),
            }
        })
    }

    fn store_put(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), AbiError> {
        guard("store_put", || {
            self.shared.redactor.add(value.as_str());
            self.shared
                .store
                .put(&self.store_key(key.as_str()), value.as_str())
                .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e.to_string()))
                .into()
        })
    }

    fn store_delete(&self, key: RStr<'_>) -> RResult<(), AbiError> {
        guard("store_delete", || {
            self.shared
                .store
                .delete(&self.store_key(key.as_str()))
                .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e.to_string()))
                .into()
        })
    }

    fn invoke(&self, op: RStr<'_>, payload_json: RStr<'_>) -> RResult<RString, AbiError> {
        let op = match HostOperation::parse(op.as_str(), payload_json.as_str()) {
            Ok(op) => op,
            Err(e) => return RResult::RErr(AbiError::new(ErrorKind::INTERNAL, e.to_string())),
        };
        match op {
            HostOperation::BrowserRedirect(request) => {
                guard(BROWSER_REDIRECT, || self.browser_redirect(&request).into())
            }
            HostOperation::RedactSecret(RedactSecret { secret }) => guard(REDACT_SECRET, || {
                self.shared.redactor.add(&secret);
                RResult::ROk(EMPTY_OBJECT.into())
            }),
            HostOperation::Exec(request) => guard(EXEC, || self.exec(&request).into()),
            HostOperation::Unknown(other) => RResult::RErr(AbiError::new(
                ErrorKind::UNSUPPORTED,
                format!("host operation '{other}' is not supported"),
            )),
        }
    }
}

impl CallServices {
    /// The `exec` host operation (see [`crate::exec`]): in every call on a blocking thread
    /// (configure, authorize, connection operations), never while signing a request.
    fn exec(&self, request: &fhirconn_sdk::wire::Exec) -> Result<RString, AbiError> {
        use crate::exec::ExecError;
        let answer = crate::exec::run(&self.shared.base_dir, request, &self.shared.redactor)
            .map_err(|e| {
                let kind = match e {
                    ExecError::NoCommand
                    | ExecError::Environment { .. }
                    | ExecError::Spawn { .. } => ErrorKind::CONFIG,
                    _ => ErrorKind::PROTOCOL,
                };
                AbiError::new(kind, e.to_string())
            })?;
        serde_json::to_string(&answer)
            .map(RString::from)
            .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e.to_string()))
    }

    /// The `browser-redirect` host operation: only in a call that may talk to a person.
    fn browser_redirect(&self, request: &BrowserRedirect) -> Result<RString, AbiError> {
        if !self.interactive {
            return Err(AbiError::new(
                ErrorKind::INTERACTION_REQUIRED,
                "signing in needs a person",
            ));
        }
        let answer = crate::loopback::browser_redirect(
            &self.shared.rt,
            request,
            self.shared.person.clone(),
            self.shared.redactor.clone(),
        )?;
        serde_json::to_string(&answer)
            .map(RString::from)
            .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e.to_string()))
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The largest file a plugin may read (keys, certificate chains, PKCS#12 bundles, secrets).
pub const MAX_PLUGIN_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a regular file of at most [`MAX_PLUGIN_FILE_BYTES`]. A device (`/dev/zero`), FIFO
/// (which would block for ever) or socket is refused before it is opened.
fn read_regular_file(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let meta = std::fs::metadata(p)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(p)?
        .take(MAX_PLUGIN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PLUGIN_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "larger than 16 MiB",
        ));
    }
    Ok(bytes)
}

/// Whether a plugin's request is a declared cloud instance-metadata request
/// (`fhirconn_sdk::INSTANCE_METADATA`, e.g. Azure IMDS at 169.254.169.254): a `GET` without a
/// body, over plain http to an IPv4 link-local address (169.254.0.0/16). Nothing else is:
/// not an undeclared request, not another address, not a request with a body.
fn is_instance_metadata_request(request: &HttpRequest, url: &url::Url) -> bool {
    let declared = serde_json::from_str::<serde_json::Value>(request.extensions_json.as_str())
        .is_ok_and(|v| v[fhirconn_sdk::INSTANCE_METADATA] == serde_json::Value::Bool(true));
    declared
        && url.scheme() == "http"
        && request.method.as_str() == "GET"
        && request.body.is_empty()
        && matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_link_local())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, url: &str, extensions: &str, body: &[u8]) -> bool {
        let req = HttpRequest {
            method: method.into(),
            url: url.into(),
            headers: RVec::new(),
            body: body.to_vec().into(),
            identity: ROption::RNone,
            extensions_json: extensions.into(),
        };
        is_instance_metadata_request(&req, &url::Url::parse(url).unwrap())
    }

    #[test]
    fn only_a_declared_bodiless_get_to_a_link_local_address_is_an_instance_metadata_request() {
        let imds = "http://169.254.169.254/metadata/identity/oauth2/token?resource=x";
        let declared = r#"{"instance-metadata":true}"#;
        assert!(request("GET", imds, declared, b""));
        assert!(request(
            "GET",
            "http://169.254.130.3:8081/msi/token",
            declared,
            b""
        ));
        for (method, url, ext, body) in [
            ("GET", imds, "", &b""[..]),
            ("GET", imds, r#"{"instance-metadata":"yes"}"#, b""),
            ("GET", imds, r#"{"other":true}"#, b""),
            ("POST", imds, declared, b""),
            ("GET", imds, declared, b"client_secret=s"),
            (
                "GET",
                "http://10.0.0.1/metadata/identity/oauth2/token",
                declared,
                b"",
            ),
            ("GET", "http://metadata.example/token", declared, b""),
            ("GET", "http://[fe80::1]/token", declared, b""),
            ("GET", "ftp://169.254.169.254/token", declared, b""),
        ] {
            assert!(!request(method, url, ext, body), "{method} {url} {ext}");
        }
    }
}
