//! An in-memory host for scheme unit tests: files, environment, HTTP, clock and store are all
//! simulated, so a plugin's rlib can be tested without loading it or opening a socket.
//!
//! ```
//! use fhirconn_sdk::testing::{header_value, MockHost};
//! # use fhirconn_sdk::{Scheme, Connection, ConnectionInfo, Host, Result, Credentials, AuthRequest};
//! # use fhirconn_sdk::serde_json::{json, Value};
//! # struct Fixed;
//! # impl Connection for Fixed {
//! #     fn authorize(&self, _: &AuthRequest, _: &Host<'_>) -> Result<Credentials> {
//! #         Ok(Credentials::new().header("X-Key", "k"))
//! #     }
//! # }
//! # struct MyScheme;
//! # impl Scheme for MyScheme {
//! #     fn name(&self) -> &str { "my" }
//! #     fn summary(&self) -> &str { "my" }
//! #     fn config_schema(&self) -> Value { json!({}) }
//! #     fn configure(&self, _: &ConnectionInfo, _: Value, _: &Host<'_>) -> Result<Box<dyn Connection>> {
//! #         Ok(Box::new(Fixed))
//! #     }
//! # }
//! let creds = MockHost::new()
//!     .with_env("KEY", "k")
//!     .configure_and_authorize(&MyScheme, json!({"key-env": "KEY"}))
//!     .unwrap();
//! assert_eq!(header_value(&creds, "X-Key").as_deref(), Some("k"));
//! ```

use crate::error::Result;
use crate::host::{Host, HttpRequest, HttpResponse};
use crate::scheme::{
    AuthRequest, Connection, ConnectionInfo, CredentialHeader, Credentials, Scheme,
};
use fhirconn_abi::{
    host_ref,
    std_types::{ROption, RResult, RStr, RString, RVec},
    AbiError, ErrorKind, Header, HostRef, HostServices, HttpRequest as AbiRequest,
    HttpResponse as AbiResponse,
};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// The connection unit tests configure: id `c`, base URL `http://127.0.0.1/fhir`.
pub fn connection_info() -> ConnectionInfo {
    ConnectionInfo {
        id: "c".into(),
        base_url: "http://127.0.0.1/fhir".into(),
    }
}

/// A non-interactive request for credentials for [`connection_info`].
pub fn auth_request() -> AuthRequest {
    AuthRequest {
        connection: connection_info(),
        interactive: false,
        force_login: false,
    }
}

/// A `sign-request` payload as the host builds it: `method` `url` with `body` (its SHA-256 in
/// lowercase hex, [`crate::wire::EMPTY_BODY_SHA256`] when empty) at `unix_time`, no headers
/// (push [`crate::wire::WireHeader`]s onto `headers` for a test that needs them).
pub fn sign_request(
    method: &str,
    url: &str,
    body: &[u8],
    unix_time: u64,
) -> crate::wire::SignRequest {
    use sha2::Digest as _;
    let body_sha256 = sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    crate::wire::SignRequest {
        method: method.to_string(),
        url: url.to_string(),
        headers: Vec::new(),
        body_sha256,
        unix_time,
    }
}

/// The value of header `name` in a signing answer (names compared case-insensitively).
pub fn signed_header(answer: &crate::wire::SignAnswer, name: &str) -> Option<String> {
    answer
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.clone())
}

/// The value of the first header called `name` (any case) in `credentials`, secret or not.
pub fn header_value(credentials: &Credentials, name: &str) -> Option<String> {
    credentials.headers.iter().find_map(|h| match h {
        CredentialHeader::Plain(n, v) if n.eq_ignore_ascii_case(name) => Some(v.clone()),
        CredentialHeader::Secret(n, v) if n.eq_ignore_ascii_case(name) => {
            Some(v.expose_secret().to_string())
        }
        _ => None,
    })
}

type Handler = Box<dyn Fn(&HttpRequest) -> Result<HttpResponse, String> + Send + Sync>;
type ExecHandler =
    Box<dyn Fn(&crate::wire::Exec) -> Result<crate::wire::ExecAnswer, String> + Send + Sync>;

/// A simulated host. Build it with the `with_*` methods, then call [`MockHost::with_host`].
pub struct MockHost {
    files: HashMap<String, Vec<u8>>,
    env: HashMap<String, String>,
    handler: Option<Handler>,
    exec: Option<ExecHandler>,
    /// Every `exec` operation the scheme asked for, in order.
    pub execs: Mutex<Vec<crate::wire::Exec>>,
    now_ms: AtomicI64,
    store: Mutex<HashMap<String, String>>,
    /// Every request the scheme sent, in order.
    pub requests: Mutex<Vec<HttpRequest>>,
    /// Everything logged, as (level, message).
    pub logs: Mutex<Vec<(u32, String)>>,
    /// Everything told to the person, as (message, url).
    pub told: Mutex<Vec<(String, Option<String>)>>,
}

impl std::fmt::Debug for MockHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHost").finish_non_exhaustive()
    }
}

impl Default for MockHost {
    fn default() -> Self {
        Self::new()
    }
}

impl MockHost {
    /// An empty host whose clock reads 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self {
            files: HashMap::new(),
            env: HashMap::new(),
            handler: None,
            exec: None,
            execs: Mutex::new(Vec::new()),
            now_ms: AtomicI64::new(1_767_225_600_000),
            store: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            told: Mutex::new(Vec::new()),
        }
    }
    /// Adds a file.
    #[must_use]
    pub fn with_file(mut self, path: &str, contents: &[u8]) -> Self {
        self.files.insert(path.to_string(), contents.to_vec());
        self
    }
    /// Sets an environment variable.
    #[must_use]
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_string(), value.to_string());
        self
    }
    /// Answers HTTP requests; an `Err` becomes a network error.
    #[must_use]
    pub fn with_http(
        mut self,
        handler: impl Fn(&HttpRequest) -> Result<HttpResponse, String> + Send + Sync + 'static,
    ) -> Self {
        self.handler = Some(Box::new(handler));
        self
    }
    /// Answers the `exec` host operation; an `Err` becomes an error of the operation (a
    /// process that could not start or timed out).
    #[must_use]
    pub fn with_exec(
        mut self,
        handler: impl Fn(&crate::wire::Exec) -> Result<crate::wire::ExecAnswer, String>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.exec = Some(Box::new(handler));
        self
    }
    /// Moves the clock.
    pub fn advance_ms(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
    /// The clock, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
    /// Runs `f` with a [`Host`] backed by this mock.
    pub fn with_host<R>(&self, f: impl FnOnce(&Host<'_>) -> R) -> R {
        let host = Host::from_raw(host_ref(self));
        f(&host)
    }
    /// Configures `scheme` for [`connection_info`] with `settings`.
    pub fn configure(&self, scheme: &dyn Scheme, settings: Value) -> Result<Box<dyn Connection>> {
        self.with_host(|host| scheme.configure(&connection_info(), settings, host))
    }
    /// Asks `connection` for credentials with [`auth_request`].
    pub fn authorize(&self, connection: &dyn Connection) -> Result<Credentials> {
        self.with_host(|host| connection.authorize(&auth_request(), host))
    }
    /// Configures `scheme` with `settings` and asks the connection for credentials once.
    pub fn configure_and_authorize(
        &self,
        scheme: &dyn Scheme,
        settings: Value,
    ) -> Result<Credentials> {
        self.authorize(self.configure(scheme, settings)?.as_ref())
    }
    /// Asks `connection` to sign `request` (see [`sign_request`]) with this mock as the host.
    pub fn sign(
        &self,
        connection: &dyn Connection,
        request: &crate::wire::SignRequest,
    ) -> Result<crate::wire::SignAnswer> {
        self.with_host(|host| connection.sign_request(request, host))
    }
    /// Runs `f` with the raw ABI object (for testing the FFI layer itself).
    pub fn with_raw<R>(&self, f: impl FnOnce(HostRef<'_>) -> R) -> R {
        f(host_ref(self))
    }
}

impl HostServices for MockHost {
    fn http(&self, request: AbiRequest) -> RResult<AbiResponse, AbiError> {
        let req = HttpRequest {
            method: request.method.into_string(),
            url: request.url.into_string(),
            headers: request
                .headers
                .into_iter()
                .map(|h| (h.name.into_string(), h.value.into_string(), h.sensitive))
                .collect(),
            body: request.body.into_vec(),
            identity: None,
        };
        let result = match &self.handler {
            Some(h) => h(&req),
            None => Err("no HTTP handler in this MockHost".to_string()),
        };
        self.requests.lock().unwrap().push(req);
        match result {
            Ok(resp) => RResult::ROk(AbiResponse {
                status: resp.status,
                headers: resp
                    .headers
                    .into_iter()
                    .map(|(n, v)| Header {
                        name: n.into(),
                        value: v.into(),
                        sensitive: false,
                    })
                    .collect(),
                body: resp.body.into(),
            }),
            Err(msg) => RResult::RErr(AbiError::new(ErrorKind::NETWORK, msg)),
        }
    }

    fn read_file(&self, path: RStr<'_>) -> RResult<RVec<u8>, AbiError> {
        match self.files.get(path.as_str()) {
            Some(b) => RResult::ROk(b.clone().into()),
            None => RResult::RErr(AbiError::new(
                ErrorKind::CONFIG,
                format!("cannot read '{}': not found", path.as_str()),
            )),
        }
    }

    fn env_var(&self, name: RStr<'_>) -> ROption<RString> {
        self.env
            .get(name.as_str())
            .map(|v| RString::from(v.as_str()))
            .into()
    }

    fn now_unix_ms(&self) -> i64 {
        self.now_ms()
    }

    fn sleep_ms(&self, millis: u64) {
        self.advance_ms(i64::try_from(millis).unwrap_or(i64::MAX));
    }

    fn log(&self, level: u32, message: RStr<'_>) {
        self.logs.lock().unwrap().push((level, message.to_string()));
    }

    fn tell_person(&self, message: RStr<'_>, url: ROption<RStr<'_>>) -> bool {
        let url = match url {
            ROption::RSome(u) => Some(u.to_string()),
            ROption::RNone => None,
        };
        self.told.lock().unwrap().push((message.to_string(), url));
        false
    }

    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RString>, AbiError> {
        let v = self.store.lock().unwrap().get(key.as_str()).cloned();
        RResult::ROk(v.map(RString::from).into())
    }

    fn store_put(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), AbiError> {
        self.store
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_string());
        RResult::ROk(())
    }

    fn store_delete(&self, key: RStr<'_>) -> RResult<(), AbiError> {
        self.store.lock().unwrap().remove(key.as_str());
        RResult::ROk(())
    }

    fn invoke(&self, op: RStr<'_>, payload_json: RStr<'_>) -> RResult<RString, AbiError> {
        if let (crate::wire::EXEC, Some(run)) = (op.as_str(), &self.exec) {
            let answer = serde_json::from_str::<crate::wire::Exec>(payload_json.as_str())
                .map_err(|e| e.to_string())
                .and_then(|request| {
                    self.execs.lock().unwrap().push(request.clone());
                    run(&request)
                })
                .and_then(|a| serde_json::to_string(&a).map_err(|e| e.to_string()));
            return match answer {
                Ok(text) => RResult::ROk(text.into()),
                Err(msg) => RResult::RErr(AbiError::new(ErrorKind::CONFIG, msg)),
            };
        }
        RResult::RErr(AbiError::new(
            ErrorKind::UNSUPPORTED,
            format!("operation '{}' is not supported", op.as_str()),
        ))
    }
}
