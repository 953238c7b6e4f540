//! An in-memory host for scheme unit tests: files, environment, HTTP, clock and store are all
//! simulated, so a plugin's rlib can be tested without loading it or opening a socket.

use crate::host::{Host, HttpRequest, HttpResponse};
use fhirconn_abi::{
    host_ref,
    std_types::{ROption, RResult, RStr, RString, RVec},
    AbiError, ErrorKind, Header, HostRef, HostServices, HttpRequest as AbiRequest,
    HttpResponse as AbiResponse,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

type Handler = Box<dyn Fn(&HttpRequest) -> Result<HttpResponse, String> + Send + Sync>;

/// A simulated host. Build it with the `with_*` methods, then call [`MockHost::with_host`].
pub struct MockHost {
    files: HashMap<String, Vec<u8>>,
    env: HashMap<String, String>,
    handler: Option<Handler>,
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

    fn invoke(&self, op: RStr<'_>, _payload_json: RStr<'_>) -> RResult<RString, AbiError> {
        RResult::RErr(AbiError::new(
            ErrorKind::UNSUPPORTED,
            format!("operation '{}' is not supported", op.as_str()),
        ))
    }
}
