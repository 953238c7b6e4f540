//! The host side of the plugin contract: `HostServices` for one call, the secret redactor and
//! the credential store. Every callback is wrapped in `catch_unwind`.

use crate::transport::{Outgoing, Transport, TransportError};
use fhirconn_abi::{
    log_level,
    std_types::{ROption, RResult, RStr, RString, RVec},
    AbiError, ErrorKind, Header, HostServices, HttpRequest, HttpResponse,
};
use fhirconn_sdk::{ClientIdentity, SecretString};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Remembers secret values and removes them from text before it is logged.
#[derive(Default)]
pub struct Redactor {
    secrets: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor([REDACTED])")
    }
}

impl Redactor {
    /// Adds a secret (values shorter than 4 characters are ignored: too common to redact).
    pub fn add(&self, secret: &str) {
        let s = secret.trim();
        if s.len() < 4 {
            return;
        }
        let mut v = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !v.iter().any(|x| x == s) {
            v.push(s.to_string());
            // Longest first, so a secret containing another is removed whole.
            v.sort_by_key(|x| std::cmp::Reverse(x.len()));
        }
    }

    /// Adds a credential header value and its parts (`Bearer <t>`, `Basic <b64>` and the password).
    pub fn add_header_value(&self, value: &str) {
        self.add(value);
        if let Some((scheme, rest)) = value.split_once(' ') {
            self.add(rest);
            if scheme.eq_ignore_ascii_case("basic") {
                use base64::Engine as _;
                if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) {
                    if let Ok(text) = String::from_utf8(decoded) {
                        if let Some((_, pw)) = text.split_once(':') {
                            self.add(pw);
                        }
                    }
                }
            }
        }
    }

    /// Replaces every known secret in `text`.
    pub fn redact(&self, text: &str) -> String {
        let v = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = text.to_string();
        for s in v.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[REDACTED]");
            }
        }
        out
    }
}

/// Text that came from a plugin, made fit for a terminal and a log: control characters
/// (terminal escapes, NULs, bells) become `?`, line breaks become spaces, and anything past
/// 1,000 characters is cut with a note. Plugins are trusted code, but not trusted to be tidy.
pub fn plugin_text(s: &str) -> String {
    const MAX: usize = 1000;
    let mut out: String = s
        .chars()
        .take(MAX)
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect();
    let total = s.chars().count();
    if total > MAX {
        out.push_str(&format!("… ({} more characters)", total - MAX));
    }
    out
}

/// Where schemes keep refresh tokens and similar long-lived state.
pub trait CredentialStore: Send + Sync {
    /// Reads a value.
    fn get(&self, key: &str) -> Result<Option<String>, String>;
    /// Writes a value.
    fn put(&self, key: &str, value: &str) -> Result<(), String>;
    /// Deletes a value (absent is fine).
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// A store that keeps values in memory only (tests, and hosts that want no persistence).
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<BTreeMap<String, String>>);

impl CredentialStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.0.lock().map_err(|e| e.to_string())?.get(key).cloned())
    }
    fn put(&self, key: &str, value: &str) -> Result<(), String> {
        self.0
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key.to_string(), value.to_string());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.0.lock().map_err(|e| e.to_string())?.remove(key);
        Ok(())
    }
}

/// A JSON file readable by its owner only (mode 0600), written atomically.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileStore {
    /// A store at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    /// `$XDG_CONFIG_HOME/fhirconn/credentials.json` (or `~/.config/...`).
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("fhirconn").join("credentials.json"))
    }

    fn read(&self) -> Result<BTreeMap<String, String>, String> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("credential store {} is corrupt: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!(
                "cannot read credential store {}: {e}",
                self.path.display()
            )),
        }
    }

    fn write(&self, map: &BTreeMap<String, String>) -> Result<(), String> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(map).map_err(|e| e.to_string())?;
        {
            use std::io::Write as _;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(&tmp)
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            f.write_all(&data).map_err(|e| e.to_string())?;
            f.sync_all().map_err(|e| e.to_string())?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| e.to_string())
    }
}

impl CredentialStore for FileStore {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        let _g = self.lock.lock().map_err(|e| e.to_string())?;
        Ok(self.read()?.get(key).cloned())
    }
    fn put(&self, key: &str, value: &str) -> Result<(), String> {
        let _g = self.lock.lock().map_err(|e| e.to_string())?;
        let mut m = self.read()?;
        m.insert(key.to_string(), value.to_string());
        self.write(&m)
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        let _g = self.lock.lock().map_err(|e| e.to_string())?;
        let mut m = self.read()?;
        if m.remove(key).is_some() {
            self.write(&m)?;
        }
        Ok(())
    }
}

/// How the host talks to a person (device codes, browser URLs).
pub trait Person: Send + Sync {
    /// Shows a message; returns `true` if `url` was opened for them.
    fn tell(&self, message: &str, url: Option<&str>) -> bool;
}

/// Prints to standard error and opens URLs with `$BROWSER` when it is set.
#[derive(Debug, Default)]
pub struct StderrPerson;

impl Person for StderrPerson {
    fn tell(&self, message: &str, url: Option<&str>) -> bool {
        match url {
            Some(u) => eprintln!("{message}\n  {u}"),
            None => eprintln!("{message}"),
        }
        let Some(u) = url else { return false };
        match std::env::var_os("BROWSER").filter(|b| !b.is_empty()) {
            Some(browser) => std::process::Command::new(browser)
                .arg(u)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .is_ok(),
            None => false,
        }
    }
}

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
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| AbiError::new(ErrorKind::INTERNAL, "invalid HTTP method"))?;
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
        };
        let transport = self.shared.transport.clone();
        let resp = self
            .shared
            .rt
            .block_on(async move { transport.send(out, identity.as_ref()).await })
            .map_err(|e| AbiError::new(transport_kind(&e), e.to_string()))?;
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
            match std::fs::read(&p) {
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
        catch_unwind(AssertUnwindSafe(|| {
            self.shared.person.tell(message.as_str(), url.as_deref())
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
                Err(e) => RResult::RErr(AbiError::new(ErrorKind::INTERNAL, e)),
            }
        })
    }

    fn store_put(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), AbiError> {
        guard("store_put", || {
            self.shared.redactor.add(value.as_str());
            self.shared
                .store
                .put(&self.store_key(key.as_str()), value.as_str())
                .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e))
                .into()
        })
    }

    fn store_delete(&self, key: RStr<'_>) -> RResult<(), AbiError> {
        guard("store_delete", || {
            self.shared
                .store
                .delete(&self.store_key(key.as_str()))
                .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e))
                .into()
        })
    }

    fn invoke(&self, op: RStr<'_>, payload_json: RStr<'_>) -> RResult<RString, AbiError> {
        match op.as_str() {
            BROWSER_REDIRECT => guard(BROWSER_REDIRECT, || {
                self.browser_redirect(payload_json.as_str()).into()
            }),
            other => RResult::RErr(AbiError::new(
                ErrorKind::UNSUPPORTED,
                format!("host operation '{other}' is not supported"),
            )),
        }
    }
}

/// Host operation: send the person to an authorization URL and catch the browser's redirect
/// on a loopback listener (RFC 8252 §7.3). Payload `{"url", "message", "timeout_seconds"}`;
/// the host adds `redirect_uri=http://127.0.0.1:PORT/` to `url` and answers
/// `{"redirect_uri", "query"}` with the query string the browser brought back.
pub const BROWSER_REDIRECT: &str = "browser-redirect";

impl CallServices {
    fn browser_redirect(&self, payload: &str) -> Result<RString, AbiError> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let bad = |m: String| AbiError::new(ErrorKind::INTERNAL, m);
        if !self.interactive {
            return Err(AbiError::new(
                ErrorKind::INTERACTION_REQUIRED,
                "signing in needs a person",
            ));
        }
        let p: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| bad(format!("{BROWSER_REDIRECT}: {e}")))?;
        let mut url = url::Url::parse(p["url"].as_str().unwrap_or_default())
            .map_err(|e| bad(format!("{BROWSER_REDIRECT}: url: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad(format!("{BROWSER_REDIRECT}: url must be http(s)")));
        }
        let message = p["message"]
            .as_str()
            .unwrap_or("Sign in in your browser:")
            .to_string();
        let timeout =
            std::time::Duration::from_secs(p["timeout_seconds"].as_u64().unwrap_or(300).min(900));
        let person = self.shared.person.clone();
        let redactor = self.shared.redactor.clone();
        self.shared.rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| bad(format!("cannot listen on 127.0.0.1: {e}")))?;
            let port = listener
                .local_addr()
                .map_err(|e| bad(e.to_string()))?
                .port();
            let redirect_uri = format!("http://127.0.0.1:{port}/");
            url.query_pairs_mut().append_pair("redirect_uri", &redirect_uri);
            let full = url.to_string();
            let opened = catch_unwind(AssertUnwindSafe(|| person.tell(&message, Some(&full))))
                .unwrap_or(false);
            if !opened {
                tracing::info!("open the URL above in a browser on this machine");
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
                let (mut stream, _) = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(bad(format!("loopback listener: {e}"))),
                    Err(_) => {
                        return Err(AbiError::new(
                            ErrorKind::INTERACTION_REQUIRED,
                            format!("no sign-in within {} s", timeout.as_secs()),
                        ))
                    }
                };
                let mut buf = vec![0u8; 16 * 1024];
                let mut len = 0;
                while len < buf.len() {
                    match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf[len..])).await {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => {
                            len += n;
                            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                let target = head
                    .lines()
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or_default()
                    .to_string();
                let query = target.split_once('?').map(|(_, q)| q.to_string());
                let relevant = query
                    .as_deref()
                    .is_some_and(|q| q.contains("code=") || q.contains("error="));
                let (status, text) = if relevant {
                    ("200 OK", "Signed in. You can close this window and return to fhirconn.")
                } else {
                    ("404 Not Found", "Not found.")
                };
                let page = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n<html><body><p>{text}</p></body></html>"
                );
                let _ = stream.write_all(page.as_bytes()).await;
                let _ = stream.shutdown().await;
                if let (true, Some(q)) = (relevant, query) {
                    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                        if k == "code" {
                            redactor.add(&v);
                        }
                    }
                    return Ok(serde_json::json!({"redirect_uri": redirect_uri, "query": q})
                        .to_string()
                        .into());
                }
            }
        })
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_removes_header_parts_and_basic_passwords() {
        let r = Redactor::default();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("user:CANARY-pw");
        r.add_header_value(&format!("Basic {b64}"));
        r.add_header_value("Bearer CANARY-token");
        let out = r.redact(&format!("x CANARY-pw y {b64} z CANARY-token"));
        assert!(!out.contains("CANARY"), "{out}");
        assert!(!out.contains(&b64), "{out}");
    }

    #[test]
    fn file_store_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("c/credentials.json"));
        s.put("a/refresh", "v1").unwrap();
        assert_eq!(s.get("a/refresh").unwrap().as_deref(), Some("v1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("c/credentials.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.delete("a/refresh").unwrap();
        assert_eq!(s.get("a/refresh").unwrap(), None);
    }
}
