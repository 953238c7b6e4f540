//! A hostile server for security regression tests: it answers from a script and records
//! everything it receives, so a test can assert what fhirconn sent to an untrusted peer.
//!
//! [`HostileServer`] is deliberately dumb: a table of `(method, path) → canned answer` (the
//! `{self}` placeholder in a body or header is replaced by the server's own origin, e.g.
//! `http://127.0.0.1:41234`), a fallback answer, and a log of every request (method, path and
//! query, headers, body). The submodules hold the canned hostile documents, one per boundary:
//! [`documents`] (challenges, discovery documents, manifests, device-code answers, text with
//! control characters).

pub mod documents;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One canned answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers (`{self}` is replaced by the server's origin).
    pub headers: Vec<(String, String)>,
    /// Response body (`{self}` is replaced by the server's origin).
    pub body: Vec<u8>,
}

impl Answer {
    /// A JSON answer (`application/json`, or `application/fhir+json` when `fhir`).
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// A FHIR JSON answer.
    pub fn fhir(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/fhir+json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// A `text/plain` answer.
    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    /// An answer with any body bytes and no headers.
    pub fn raw(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A redirect (`status` 301/302/303/307/308) to `location`.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self::raw(status, Vec::new()).header("location", location)
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Headers (lower-case names, in order).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, Default)]
struct Script {
    routes: HashMap<(String, String), Answer>,
    fallback: Option<Answer>,
    received: Vec<Received>,
}

/// A running hostile server on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct HostileServer {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HostileServer {
    /// Starts a server on a free loopback port. Call inside a tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new()
            .fallback(answer)
            .with_state((script.clone(), addr));
        let tx = crate::spawn_server(listener, app);
        Ok(Self {
            addr,
            script,
            shutdown: Some(tx),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `origin()` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `method path` (path without the query) with `answer`; `method` `*` matches any.
    pub fn on(&self, method: &str, path: &str, answer: Answer) -> &Self {
        self.script
            .lock()
            .unwrap()
            .routes
            .insert((method.to_ascii_uppercase(), path.to_string()), answer);
        self
    }

    /// Answers every unscripted request with `answer` (default: 404).
    pub fn otherwise(&self, answer: Answer) -> &Self {
        self.script.lock().unwrap().fallback = Some(answer);
        self
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// Requests received for `path` (without query).
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .collect()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn answer(
    State((script, addr)): State<(Arc<Mutex<Script>>, SocketAddr)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = format!("http://{addr}");
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let mut s = script.lock().unwrap();
    s.received.push(Received {
        method: method.as_str().to_string(),
        target,
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    let path = uri.path().to_string();
    let found = s
        .routes
        .get(&(method.as_str().to_string(), path.clone()))
        .or_else(|| s.routes.get(&("*".to_string(), path)))
        .or(s.fallback.as_ref())
        .cloned();
    drop(s);
    let Some(a) = found else {
        return (StatusCode::NOT_FOUND, "not scripted").into_response();
    };
    let mut resp = Response::new(Body::from(replace_self(&a.body, &origin)));
    *resp.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    for (n, v) in &a.headers {
        let v = v.replace("{self}", &origin);
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(n.as_bytes()),
            axum::http::HeaderValue::from_bytes(v.as_bytes()),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

fn replace_self(body: &[u8], origin: &str) -> Vec<u8> {
    match std::str::from_utf8(body) {
        Ok(s) if s.contains("{self}") => s.replace("{self}", origin).into_bytes(),
        _ => body.to_vec(),
    }
}
