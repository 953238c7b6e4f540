//! The proxy as a service: the host it serves (replaceable on reload), readiness from each
//! connection's last test, Prometheus metrics, and request ids. `GET /healthz`, `/readyz` and
//! `/metrics` answer only after the proxy's access checks (Host, browser, token), like every
//! other request; these three exact paths are reserved. Without a proxy token they name no
//! connection: `/readyz` is `{"ready": bool}` and `/metrics` answers 404.

use crate::{Host, TestReport};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

/// The header carrying a request's id to the upstream server and back to the caller.
pub const REQUEST_ID: &str = "x-request-id";

/// The host a running proxy serves; [`ServedHost::replace`] swaps it (a reload) while
/// requests in flight finish on the host they started with.
#[derive(Clone)]
pub struct ServedHost {
    inner: Arc<RwLock<Served>>,
}

/// The host and its connections' readiness, under one lock: a test result is recorded only
/// while the host it was measured on is still the one served.
struct Served {
    host: Arc<Host>,
    ready: BTreeMap<String, Readiness>,
}

impl std::fmt::Debug for ServedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedHost").finish_non_exhaustive()
    }
}

/// One connection's last test, as `/readyz` shows it (no secrets: ids, kinds, times).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// Whether the test passed.
    pub ok: bool,
    /// The diagnosis kind when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// When it was tested (seconds since the Unix epoch).
    pub tested_at: u64,
}

impl From<Arc<Host>> for ServedHost {
    fn from(host: Arc<Host>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Served {
                host,
                ready: BTreeMap::new(),
            })),
        }
    }
}

impl ServedHost {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Served> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Served> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The host now.
    pub fn current(&self) -> Arc<Host> {
        self.read().host.clone()
    }

    /// Serves `host` from now on (its connections' readiness starts over).
    pub fn replace(&self, host: Arc<Host>) {
        let mut served = self.write();
        served.host = host;
        served.ready.clear();
    }

    /// Records test reports for `/readyz`, if `tested` (the host they were measured on) is
    /// still the one served; returns whether they were recorded. Results of a host replaced
    /// meanwhile (a reload during the test) are dropped.
    pub fn record_tests(&self, tested: &Arc<Host>, reports: &[TestReport]) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut served = self.write();
        if !Arc::ptr_eq(&served.host, tested) {
            return false;
        }
        for r in reports {
            served.ready.insert(
                r.id.clone(),
                Readiness {
                    ok: r.ok,
                    kind: r.failure.as_ref().map(|f| f.kind.to_string()),
                    tested_at: now,
                },
            );
        }
        true
    }

    /// Tests every connection of the current host and records the results (unless the host
    /// was replaced meanwhile).
    pub async fn test_all(&self) {
        let host = self.current();
        let ids = host.connection_ids();
        if let Ok(reports) = host.test(&ids, None).await {
            if !self.record_tests(&host, &reports) {
                tracing::debug!("test results of a replaced configuration dropped");
            }
        }
    }

    /// `/readyz`: 200 when every connection's last test passed, else 503. With `list_ids`
    /// the body lists each connection's last result (`null` when not tested yet); without
    /// (no proxy token: nobody is known to be the person) it is `{"ready": bool}` only.
    pub(super) fn readyz(&self, list_ids: bool) -> Response {
        let served = self.read();
        let ids = served.host.connection_ids();
        let ready = &served.ready;
        let all_ok = ids.iter().all(|id| ready.get(id).is_some_and(|r| r.ok));
        let status = if all_ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if !list_ids {
            return json_response(status, &json!({"ready": all_ok}));
        }
        let body: BTreeMap<&String, Option<&Readiness>> =
            ids.iter().map(|id| (id, ready.get(id))).collect();
        json_response(status, &json!({"ready": all_ok, "connections": body}))
    }
}

/// `/healthz`: the process answers.
pub(super) fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder (once; `None` when another recorder was
/// installed by an embedding program).
pub fn install_metrics() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// `/metrics` in the Prometheus text format.
pub(super) fn metrics() -> Response {
    match install_metrics() {
        Some(h) => {
            let mut r = (StatusCode::OK, h.render()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => (StatusCode::NOT_FOUND, "metrics are not recorded here").into_response(),
    }
}

/// The id of a request: the caller's `X-Request-Id` when it is short and plain
/// (`[A-Za-z0-9._-]{1,64}`), else a new one (24 hex digits): a keyed SipHash of a counter, its
/// key random to this process, so ids are unique in a run, tell a server nothing about other
/// requests (not even how many), and cost no syscall.
pub(super) fn request_id(headers: &HeaderMap) -> String {
    request_id_of(headers.get(REQUEST_ID).map(HeaderValue::as_bytes))
}

/// [`request_id`] from the first `X-Request-Id` value, if any.
pub(super) fn request_id_of(given: Option<&[u8]>) -> String {
    let given = given.and_then(|v| std::str::from_utf8(v).ok()).filter(|v| {
        (1..=64).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    match given {
        Some(v) => v.to_string(),
        None => {
            use std::hash::BuildHasher as _;
            static KEY: OnceLock<std::hash::RandomState> = OnceLock::new();
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let key = KEY.get_or_init(std::hash::RandomState::new);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (a, b) = (key.hash_one((n, 0u8)), key.hash_one((n, 1u8)));
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut id = String::with_capacity(24);
            for x in a
                .to_be_bytes()
                .into_iter()
                .chain(b.to_be_bytes().into_iter().take(4))
            {
                id.push(char::from(HEX[usize::from(x >> 4)]));
                id.push(char::from(HEX[usize::from(x & 0xf)]));
            }
            id
        }
    }
}

/// The status class labels, by [`status_class`] index; the last is a request that failed.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "failed"];

/// The index in [`CLASSES`] of a status's class label.
pub(super) fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The index in [`CLASSES`] of a request that got no answer from upstream.
pub(super) const FAILED: usize = 5;

/// The proxy's metric handles, per connection id, taken at the connection's first request
/// (after `install_metrics`, which the CLI calls before serving): looking a labelled metric
/// up in the recorder on every request and every streamed chunk cost more than the rest of
/// the proxy's own bookkeeping.
#[derive(Default)]
pub(super) struct Meters {
    by_connection: RwLock<HashMap<String, Arc<ConnectionMeters>>>,
}

/// One connection's handles; a status class's are taken when it first occurs, so `/metrics`
/// lists only the classes seen.
pub(super) struct ConnectionMeters {
    id: String,
    requests: [OnceLock<Counter>; 6],
    upstream: [OnceLock<Histogram>; 6],
    bytes: Counter,
}

impl Meters {
    /// The handles of connection `id`.
    pub(super) fn of(&self, id: &str) -> Arc<ConnectionMeters> {
        if let Some(m) = self
            .by_connection
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
        {
            return m.clone();
        }
        let mut all = self
            .by_connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(ConnectionMeters {
                    id: id.to_string(),
                    requests: Default::default(),
                    upstream: Default::default(),
                    bytes: metrics::counter!("fhirconn_proxy_bytes_streamed_total",
                        "connection" => id.to_string()),
                })
            })
            .clone()
    }
}

impl ConnectionMeters {
    /// Counts one request answered in class `class` (an index of [`CLASSES`]).
    pub(super) fn request(&self, class: usize) {
        let class = class.min(FAILED);
        self.requests[class]
            .get_or_init(|| {
                metrics::counter!("fhirconn_proxy_requests_total",
                    "connection" => self.id.clone(), "status" => CLASSES[class])
            })
            .increment(1);
    }

    /// Records how long upstream took to answer with a status of class `class`.
    pub(super) fn upstream(&self, class: usize, took: std::time::Duration) {
        let class = class.min(FAILED);
        self.upstream[class]
            .get_or_init(|| {
                metrics::histogram!("fhirconn_proxy_upstream_seconds",
                    "connection" => self.id.clone(), "status" => CLASSES[class])
            })
            .record(took.as_secs_f64());
    }

    /// The counter of body bytes streamed back.
    pub(super) fn bytes(&self) -> Counter {
        self.bytes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_pass_through_only_when_plain() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("job-42.a_b"));
        assert_eq!(request_id(&h), "job-42.a_b");
        h.insert(REQUEST_ID, HeaderValue::from_static("bad id"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 24);
        assert_ne!(fresh, request_id(&HeaderMap::new()));
        let long = "a".repeat(65);
        h.insert(REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_ne!(request_id(&h), long);
    }

    async fn host() -> Arc<Host> {
        let host = Host::builder()
            .config_value(
                std::env::temp_dir(),
                json!({"connections": {"c": {"base-url": "http://127.0.0.1:9/fhir"}}}),
            )
            .only_explicit_plugin_dirs()
            .build()
            .await
            .unwrap();
        Arc::new(host)
    }

    #[tokio::test]
    async fn results_of_a_replaced_host_are_not_its_successors_readiness() {
        let old = host().await;
        let reports = old.test(&["c".to_string()], None).await.unwrap();
        let served = ServedHost::from(old.clone());
        // A reload happens while the old host's test runs: its results are dropped.
        served.replace(host().await);
        assert!(!served.record_tests(&old, &reports));
        assert!(served.read().ready.is_empty());
        let current = served.current();
        assert!(served.record_tests(&current, &reports));
        assert!(!served.read().ready["c"].ok);
    }

    #[test]
    fn status_classes() {
        assert_eq!(CLASSES[status_class(101)], "1xx");
        assert_eq!(CLASSES[status_class(200)], "2xx");
        assert_eq!(CLASSES[status_class(304)], "3xx");
        assert_eq!(CLASSES[status_class(401)], "4xx");
        assert_eq!(CLASSES[status_class(502)], "5xx");
        assert_eq!(CLASSES[FAILED], "failed");
    }

    #[test]
    fn fresh_request_ids_are_24_lowercase_hex_digits() {
        // Consecutive ids share no visible prefix or counter: a server that sees two of them
        // cannot link them or count the requests between them.
        let (a, b) = (request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
        assert_ne!(a[..12], b[..12]);
        assert_ne!(a[12..], b[12..]);
        let id = request_id(&HeaderMap::new());
        assert_eq!(id.len(), 24);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
    }

    #[test]
    fn meters_are_taken_once_per_connection() {
        let meters = Meters::default();
        let a = meters.of("a");
        assert!(Arc::ptr_eq(&a, &meters.of("a")));
        assert!(!Arc::ptr_eq(&a, &meters.of("b")));
        a.request(status_class(200));
        a.upstream(FAILED + 3, std::time::Duration::from_millis(1));
        assert!(a.requests[1].get().is_some() && a.requests[0].get().is_none());
        assert!(a.upstream[FAILED].get().is_some());
    }
}
