//! A FHIR server protected by a vendor's per-request HMAC signature (the out-of-tree
//! `vendor-hmac` example scheme in `tests/vendor-hmac-plugin`), verifying every request
//! independently of the plugin: its own HMAC-SHA256 (RFC 2104 over `sha2`), the body hash
//! from the bytes it received, the time window and a nonce it has not seen.
//!
//! The protocol ("Vendor-HMAC-SHA256 v1"), as a vendor would document it:
//! - `x-vendor-date`: the signing time, decimal seconds since the Unix epoch;
//! - `x-vendor-nonce`: 16 to 64 characters `[0-9a-f]`, never used twice;
//! - `x-vendor-signature`: `keyId=<id>,signature=<64 lowercase hex>`, where the signature
//!   is HMAC-SHA256 with the key over the string to sign:
//!   `VENDOR-HMAC-SHA256\n<METHOD>\n<path and query as sent>\n<date>\n<nonce>\n<hex SHA-256 of the body>`.
//!
//! A request is rejected with 401 and `WWW-Authenticate: Vendor-HMAC error="..."` when a
//! header is missing or malformed, the key id is unknown, the date is more than
//! [`HmacConfig::max_skew`] away from the server's clock, the nonce was seen before
//! (replay), or the signature does not match.

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first line of the string to sign.
pub const ALGORITHM: &str = "VENDOR-HMAC-SHA256";

/// The server's key and rules.
#[derive(Debug, Clone)]
pub struct HmacConfig {
    /// The key id clients name.
    pub key_id: String,
    /// The shared key.
    pub key: Vec<u8>,
    /// The largest accepted distance between `x-vendor-date` and the server's clock.
    pub max_skew: Duration,
}

impl Default for HmacConfig {
    fn default() -> Self {
        Self {
            key_id: "vendor-key-1".into(),
            key: b"CANARY-vendor-hmac-key".to_vec(),
            max_skew: Duration::from_secs(300),
        }
    }
}

/// One request the server saw, with its verdict.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// Every header (lowercase names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// `None` when accepted, else why it was rejected.
    pub rejected: Option<String>,
}

#[derive(Default)]
struct Shared {
    seen: Vec<Seen>,
    nonces: HashSet<String>,
    flaky_done: bool,
    /// Every answer waits this long first (a slow server).
    delay: Option<Duration>,
}

/// The running server. Routes (under `/fhir`): `metadata` (a CapabilityStatement), `moved`
/// (a 307 to `Patient/1` on the same origin), `flaky` (401 to the first correctly signed
/// request, 200 after), anything else (a JSON echo of method, target and body length). Every
/// request, `metadata` and redirects included, must be signed.
#[derive(Debug)]
pub struct HmacServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    _running: crate::Running,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl HmacServer {
    /// Starts on a loopback port.
    pub async fn start(config: HmacConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .fallback(handle)
            .with_state((Arc::new(config), shared.clone()));
        let running = crate::serve(listener, app);
        Ok(Self {
            addr,
            shared,
            _running: running,
        })
    }

    /// `http://127.0.0.1:PORT/fhir`.
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .clone()
    }

    /// How many requests were accepted.
    pub fn accepted(&self) -> usize {
        self.seen().iter().filter(|s| s.rejected.is_none()).count()
    }

    /// Delays every answer by `delay` (a slow server), or not.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).delay = delay;
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` with `key`, written out over `sha2` so that the
/// server shares no code with the plugin it checks.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The string to sign (see the module documentation).
pub fn string_to_sign(method: &str, target: &str, date: &str, nonce: &str, body: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{method}\n{target}\n{date}\n{nonce}\n{}",
        hex(&Sha256::digest(body))
    )
}

/// The three headers of a correctly signed request: a reference signer for tests (and the
/// "direct call" the signing benchmark compares the host path with).
pub fn sign(
    config: &HmacConfig,
    method: &str,
    target: &str,
    unix_time: u64,
    nonce: &str,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let date = unix_time.to_string();
    let text = string_to_sign(method, target, &date, nonce, body);
    let signature = hex(&hmac_sha256(&config.key, text.as_bytes()));
    [
        ("x-vendor-date", date),
        ("x-vendor-nonce", nonce.to_string()),
        (
            "x-vendor-signature",
            format!("keyId={},signature={signature}", config.key_id),
        ),
    ]
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks one request; `Err` is the challenge's `error`.
fn verify(
    config: &HmacConfig,
    shared: &Mutex<Shared>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("missing {name}"))
    };
    let date = get("x-vendor-date")?;
    let nonce = get("x-vendor-nonce")?;
    let sig = get("x-vendor-signature")?;
    let (key_id, signature) = sig
        .strip_prefix("keyId=")
        .and_then(|s| s.split_once(",signature="))
        .ok_or("malformed x-vendor-signature")?;
    if key_id != config.key_id {
        return Err("unknown key id".into());
    }
    let when: u64 = date.parse().map_err(|_| "malformed x-vendor-date")?;
    if now().abs_diff(when) > config.max_skew.as_secs() {
        return Err("signature expired".into());
    }
    if !(16..=64).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("malformed x-vendor-nonce".into());
    }
    let text = string_to_sign(method.as_str(), target, date, nonce, body);
    let expected = hex(&hmac_sha256(&config.key, text.as_bytes()));
    let same = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err("signature does not match".into());
    }
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    if !s.nonces.insert(nonce.to_string()) {
        return Err("replayed nonce".into());
    }
    Ok(())
}

type AppState = (Arc<HmacConfig>, Arc<Mutex<Shared>>);

async fn handle(
    State((config, shared)): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = shared.lock().unwrap_or_else(|p| p.into_inner()).delay;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let verdict = verify(&config, &shared, &method, &target, &headers, &body);
    let record = |rejected: Option<String>| Seen {
        method: method.to_string(),
        target: target.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        rejected,
    };
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(why) = verdict {
        s.seen.push(record(Some(why.clone())));
        let mut resp = (StatusCode::UNAUTHORIZED, why.clone()).into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("Vendor-HMAC error=\"{why}\"")) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return resp;
    }
    let path = uri.path();
    if path == "/fhir/flaky" && !s.flaky_done {
        s.flaky_done = true;
        s.seen
            .push(record(Some("flaky: first request refused".into())));
        return (StatusCode::UNAUTHORIZED, "try again").into_response();
    }
    s.seen.push(record(None));
    drop(s);
    if path == "/fhir/moved" {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, "/fhir/Patient/1")],
        )
            .into_response();
    }
    let body = if path == "/fhir/metadata" {
        crate::capability_statement(&crate::ServerAuth::None)
    } else {
        json!({"resourceType": "Basic", "method": method.as_str(), "target": target,
               "body_bytes": body.len()})
    };
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // a key longer than the block is hashed first (RFC 4231 test case 6)
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
