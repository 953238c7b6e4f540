//! The local authenticating proxy behind `fhirconn proxy`: `http://LISTEN/<ID>/<path>` is
//! forwarded to connection `<ID>`'s base URL with its authentication applied (tokens cached and
//! renewed, client certificates presented), so any HTTP tool can use a configured connection
//! without knowing its scheme.
//!
//! Hop-by-hop headers and the client's own `Authorization` are not forwarded; an optional
//! bearer token protects the proxy itself. Requests are independent: one connection failing
//! answers 502 for that connection only. Response bodies are streamed through; request bodies
//! are buffered (up to 64 MiB) so that a request can be resent after a 401.

use crate::connection::Request;
use crate::Host;
use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Largest request body the proxy accepts.
pub const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the ones the
/// proxy sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
];

#[derive(Clone)]
struct ProxyState {
    host: Arc<Host>,
    token: Option<Arc<str>>,
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = serde_json::json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}]});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    r
}

fn forwardable(name: &HeaderName, connection_listed: &[String]) -> bool {
    let n = name.as_str();
    !HOP_BY_HOP.contains(&n) && !connection_listed.iter().any(|c| c == n)
}

/// Names listed in a `Connection` header are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

async fn forward(State(st): State<ProxyState>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(token) = &st.token {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_ref()) {
            let mut r = outcome(
                StatusCode::UNAUTHORIZED,
                "login",
                "the proxy requires its bearer token",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fhirconn proxy\""),
            );
            return r;
        }
    }
    let path = parts.uri.path().trim_start_matches('/');
    let (id, rest) = path.split_once('/').unwrap_or((path, ""));
    if id.is_empty() {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!(
                "use /<connection id>/<path>; connections: {}",
                st.host.connection_ids().join(", ")
            ),
        );
    }
    let conn = match st.host.connection(id) {
        Ok(c) => c,
        Err(e) => return outcome(StatusCode::NOT_FOUND, "not-found", &e.to_string()),
    };
    let body = match to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                "the request body is larger than 64 MiB",
            )
        }
    };
    let listed = connection_listed(&parts.headers);
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| forwardable(k, &listed))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let target = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let request = Request {
        method: parts.method.clone(),
        path: target,
        headers,
        body: (!body.is_empty()).then(|| body.to_vec()),
    };
    match conn.send_streaming(request).await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let listed = connection_listed(&headers);
            let chunks = futures_util::stream::unfold(Some(resp), |state| async move {
                let mut resp = state?;
                match resp.chunk().await {
                    Ok(Some(c)) => Some((Ok::<_, reqwest::Error>(c), Some(resp))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            });
            let mut out = Response::new(Body::from_stream(chunks));
            *out.status_mut() = status;
            for (k, v) in headers.iter() {
                if forwardable(k, &listed) {
                    out.headers_mut().append(k.clone(), v.clone());
                }
            }
            out
        }
        Err(e) => outcome(
            StatusCode::BAD_GATEWAY,
            "transient",
            &format!("connection '{id}': {}", st.host.redact(&e.to_string())),
        ),
    }
}

/// Serves the proxy on `listener` until `shutdown` completes.
pub async fn serve(
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = ProxyState {
        host,
        token: token.map(Arc::from),
    };
    let app = axum::Router::new().fallback(forward).with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
