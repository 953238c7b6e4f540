//! An AWS HealthLake-shaped FHIR endpoint that checks AWS Signature Version 4 on every request.
//!
//! [`MockHealthLake`] serves `/datastore/{id}/r4/` (`metadata`, `Patient` search, read and
//! create) and recomputes each request's signature from what arrived, by the published
//! algorithm ("Create a signed AWS API request", AWS IAM user guide) and independently of the
//! `aws-sigv4` crate the plugin uses: the canonical request (method, the path URI-encoded once
//! more as every service but S3 expects, the query decoded, sorted and re-encoded, the signed
//! headers lower-cased with runs of blanks folded, the SHA-256 of the body as received), the
//! string to sign, the HMAC-SHA256 key chain (`AWS4` + secret → date → region → service →
//! `aws4_request`, HMAC written here over `sha2`). Refusals are AWS's: 403 with
//! `x-amzn-ErrorType` and a JSON body `{"__type": "...#<Error>", "message": ...}`:
//! `MissingAuthenticationTokenException`, `UnrecognizedClientException` (an unknown access key
//! id or session token), `InvalidSignatureException` (`Signature expired: ...` when `x-amz-date`
//! is more than 5 minutes from the server's clock, a wrong credential scope, or "The request
//! signature we calculated does not match the signature you provided...").

use axum::{
    body::{to_bytes, Body},
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far `x-amz-date` may be from the server's clock (AWS: 5 minutes).
pub const MAX_SKEW_SECONDS: i64 = 300;
/// The message AWS gives when the recomputed signature differs.
pub const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// The credentials the endpoint accepts and where it lives.
#[derive(Clone)]
pub struct Sigv4Config {
    /// Accepted access key id.
    pub access_key_id: String,
    /// Its secret access key.
    pub secret_access_key: String,
    /// When set, requests must carry this `x-amz-security-token` (temporary credentials).
    pub session_token: Option<String>,
    /// Region of the credential scope, e.g. `us-east-1`.
    pub region: String,
    /// Service of the credential scope (`healthlake`).
    pub service: String,
    /// The datastore id in the path.
    pub datastore: String,
}

impl std::fmt::Debug for Sigv4Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sigv4Config")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Sigv4Config {
    /// HealthLake in `us-east-1` with the given keys and no session token.
    pub fn healthlake(access_key_id: &str, secret_access_key: &str) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            region: "us-east-1".into(),
            service: "healthlake".into(),
            datastore: "0123456789abcdef0123456789abcdef".into(),
        }
    }
}

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// The `SignedHeaders` of its `Authorization` (empty without one).
    pub signed_headers: Vec<String>,
    /// The body as received.
    pub body: Vec<u8>,
    /// The `Authorization` header as received (its signature is a canary for leak tests).
    pub authorization: Option<String>,
    /// `None` when the signature checked out, else the `__type` refused with.
    pub refused: Option<String>,
}

#[derive(Debug)]
struct Shared {
    config: Sigv4Config,
    clock_offset: AtomicI64,
    delay_ms: AtomicU64,
    received: Mutex<Vec<Received>>,
}

/// A running SigV4-checking FHIR endpoint; stops when dropped.
#[derive(Debug)]
pub struct MockHealthLake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _running: crate::Running,
}

impl MockHealthLake {
    /// Starts on 127.0.0.1 with a free port. Call inside a tokio runtime.
    pub async fn start(config: Sigv4Config) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            clock_offset: AtomicI64::new(0),
            delay_ms: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(serve).with_state(shared.clone());
        let _running = crate::serve(listener, app);
        Ok(Self {
            addr,
            shared,
            _running,
        })
    }

    /// The FHIR base URL: `http://127.0.0.1:PORT/datastore/{id}/r4`.
    pub fn base_url(&self) -> String {
        let id = &self.shared.config.datastore;
        format!("http://{}/datastore/{id}/r4", self.addr)
    }

    /// Moves the server's clock by `seconds` (a skewed client, seen from the server).
    pub fn set_clock_offset(&self, seconds: i64) {
        self.shared.clock_offset.store(seconds, Ordering::SeqCst);
    }

    /// Delays every answer by `delay` (a slow server), or not.
    pub fn set_delay(&self, delay: Option<std::time::Duration>) {
        let ms = delay.map_or(0, |d| d.as_millis() as u64);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Every request received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

/// Checks the signature, then answers as a small FHIR R4 server.
async fn serve(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, 16 << 20).await.unwrap_or_default().to_vec();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        + shared.clock_offset.load(Ordering::SeqCst);
    let parsed = parse_authorization(&parts.headers);
    let verdict = match &parsed {
        Some(auth) => check(
            &shared.config,
            auth,
            parts.method.as_str(),
            target,
            &parts.headers,
            &body,
            now,
        ),
        None => Err((
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".into(),
        )),
    };
    shared.received.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        target: target.to_string(),
        signed_headers: parsed.map(|a| a.signed_headers).unwrap_or_default(),
        body: body.clone(),
        authorization: (parts.headers.get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        refused: verdict.as_ref().err().map(|e| e.0.to_string()),
    });
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if let Err((kind, message)) = verdict {
        return refuse(kind, &message);
    }
    let prefix = format!("/datastore/{}/r4", shared.config.datastore);
    match (
        parts.method.as_str(),
        parts.uri.path().strip_prefix(&prefix),
    ) {
        ("GET", Some("/metadata")) => fhir(StatusCode::OK, metadata()),
        ("GET", Some("/Patient")) => fhir(StatusCode::OK, searchset()),
        ("POST", Some("/Patient")) => match serde_json::from_slice::<Value>(&body) {
            Ok(mut p) if p["resourceType"] == "Patient" => {
                p["id"] = json!("created-1");
                fhir(StatusCode::CREATED, p)
            }
            _ => fhir(
                StatusCode::BAD_REQUEST,
                outcome("the body is not a Patient"),
            ),
        },
        ("GET", Some(path)) if path.starts_with("/Patient/") => {
            let id = &path["/Patient/".len()..];
            match crate::patients().into_iter().find(|p| p["id"] == id) {
                Some(p) => fhir(StatusCode::OK, p),
                None => fhir(StatusCode::NOT_FOUND, outcome("no such Patient")),
            }
        }
        _ => fhir(StatusCode::NOT_FOUND, outcome("not found")),
    }
}

fn metadata() -> Value {
    let mut cs = crate::capability_statement(&crate::ServerAuth::None);
    cs["software"] = json!({"name": "MockHealthLake"});
    cs["rest"][0]["security"] = json!({"description": "AWS Signature Version 4"});
    cs
}

fn searchset() -> Value {
    let entries: Vec<Value> = crate::patients()
        .into_iter()
        .map(|p| json!({"resource": p}))
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries})
}

fn outcome(text: &str) -> Value {
    json!({"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]})
}

fn fhir(status: StatusCode, body: Value) -> Response {
    let headers = [(header::CONTENT_TYPE, "application/fhir+json")];
    (status, headers, body.to_string()).into_response()
}

/// AWS's refusal: 403, `x-amzn-ErrorType`, `{"__type", "message"}`.
fn refuse(kind: &str, message: &str) -> Response {
    let body = json!({"__type": format!("com.amazon.coral.service#{kind}"), "message": message});
    let mut r = (StatusCode::FORBIDDEN, Body::from(body.to_string())).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "application/x-amz-json-1.1".parse().unwrap(),
    );
    if let Ok(v) = kind.parse() {
        h.insert("x-amzn-errortype", v);
    }
    r
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Debug, Clone)]
struct Authorization {
    /// `AKID/DATE/REGION/SERVICE/aws4_request`, split.
    credential: Vec<String>,
    signed_headers: Vec<String>,
    signature: String,
}

fn parse_authorization(headers: &HeaderMap) -> Option<Authorization> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v.split('/').map(String::from).collect()),
            Some(("SignedHeaders", v)) => signed = Some(v.split(';').map(String::from).collect()),
            Some(("Signature", v)) => signature = Some(v.to_string()),
            _ => {}
        }
    }
    Some(Authorization {
        credential: credential?,
        signed_headers: signed?,
        signature: signature?,
    })
}

type Refusal = (&'static str, String);

/// The SigV4 check of one request at server time `now` (Unix seconds).
fn check(
    config: &Sigv4Config,
    auth: &Authorization,
    method: &str,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), Refusal> {
    let invalid = |m: &str| ("InvalidSignatureException", m.to_string());
    let unrecognized = || {
        let m = "The security token included in the request is invalid.";
        ("UnrecognizedClientException", m.to_string())
    };
    let [key_id, date, region, service, terminator] = auth.credential.as_slice() else {
        return Err(invalid(
            "Authorization header requires a Credential of 5 parts.",
        ));
    };
    if *key_id != config.access_key_id {
        return Err(unrecognized());
    }
    let token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    if token != config.session_token.as_deref() {
        return Err(unrecognized());
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."))?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| invalid("Invalid X-Amz-Date."))?;
    if (now - signed_at).abs() > MAX_SKEW_SECONDS {
        let (edge, now_text) = (amz_format(now - MAX_SKEW_SECONDS), amz_format(now));
        return Err(invalid(&if signed_at < now {
            format!(
                "Signature expired: {amz_date} is now earlier than {edge} ({now_text} - 5 min.)"
            )
        } else {
            let edge = amz_format(now + MAX_SKEW_SECONDS);
            format!("Signature not yet current: {amz_date} is still later than {edge} ({now_text} + 5 min.)")
        }));
    }
    if !amz_date.starts_with(date.as_str()) || terminator != "aws4_request" {
        return Err(invalid("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP."));
    }
    if *region != config.region || *service != config.service {
        return Err(invalid(&format!(
            "Credential should be scoped to a valid region and service ('{}', '{}').",
            config.region, config.service
        )));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(invalid(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let body_hash = hex(&Sha256::digest(body));
    if let Some(claimed) = headers.get("x-amz-content-sha256") {
        if claimed.as_bytes() != body_hash.as_bytes() {
            return Err(invalid(
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
    }
    let canonical = canonical_request(method, target, headers, &auth.signed_headers, &body_hash);
    let scope = auth.credential[1..].join("/");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", config.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [region.as_str(), service.as_str(), "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    if hex(&hmac(&key, to_sign.as_bytes())) != auth.signature {
        return Err(invalid(SIGNATURE_MISMATCH));
    }
    Ok(())
}

/// The canonical request of SigV4 for a service that is not S3.
fn canonical_request(
    method: &str,
    target: &str,
    headers: &HeaderMap,
    signed: &[String],
    body_hash: &str,
) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = if path.is_empty() { "/" } else { path };
    // The path as sent (encoded once), each segment encoded again.
    let uri: Vec<String> = path.split('/').map(|s| encode(s.as_bytes())).collect();
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k)), encode(&decode(v)))
        })
        .collect();
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let lines: String = signed
        .iter()
        .map(|name| {
            let values: Vec<String> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| {
                    let v = String::from_utf8_lossy(v.as_bytes());
                    v.split_whitespace().collect::<Vec<_>>().join(" ")
                })
                .collect();
            format!("{name}:{}\n", values.join(","))
        })
        .collect();
    format!(
        "{method}\n{}\n{}\n{lines}\n{}\n{body_hash}",
        uri.join("/"),
        query.join("&"),
        signed.join(";")
    )
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, upper-case hex.
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-decoding (`+` stays `+`).
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let pair = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], pair.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDTHHMMSSZ` → Unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let month = time::Month::try_from(n(4..6)? as u8).ok()?;
    let date = time::Date::from_calendar_date(n(0..4)? as i32, month, n(6..8)? as u8).ok()?;
    let at = date
        .with_hms(n(9..11)? as u8, n(11..13)? as u8, n(13..15)? as u8)
        .ok()?;
    Some(at.assume_utc().unix_timestamp())
}

/// Unix seconds → `YYYYMMDDTHHMMSSZ`.
fn amz_format(t: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(t) else {
        return t.to_string();
    };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    // The AWS SigV4 test suite's credentials and time (aws-c-auth's aws-signing-test-suite/v4,
    // Apache-2.0), checked here with hand-made requests: the verifier, not the plugin.
    const TIME: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    fn suite() -> Sigv4Config {
        Sigv4Config {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            region: "us-east-1".into(),
            service: "service".into(),
            datastore: "d".into(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn verify(
        target: &str,
        signature: &str,
        method: &str,
        extra: &[(&'static str, &str)],
        signed: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), Refusal> {
        let auth = format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={signature}");
        let mut pairs = vec![
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ];
        pairs.extend_from_slice(extra);
        let mut h = headers(&pairs);
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&auth).unwrap());
        let parsed = parse_authorization(&h).unwrap();
        check(&suite(), &parsed, method, target, &h, body, now)
    }

    /// [`verify`] for a bodiless GET signing `host;x-amz-date`.
    fn verify_get(target: &str, signature: &str, now: i64) -> Result<(), Refusal> {
        verify(target, signature, "GET", &[], "host;x-amz-date", b"", now)
    }

    #[test]
    fn the_verifier_accepts_the_aws_test_suite_signatures() {
        let vanilla = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        verify_get("/", vanilla, TIME).unwrap();
        let query = "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500";
        verify_get("/?Param2=value2&Param1=value1", query, TIME).unwrap();
        let form = "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b";
        let extra = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "13"),
            (
                "x-amz-content-sha256",
                "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
            ),
        ];
        let signed = "content-length;content-type;host;x-amz-content-sha256;x-amz-date";
        verify("/", form, "POST", &extra, signed, b"Param1=value1", TIME).unwrap();
        let unreserved = "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197";
        let q = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        verify_get(&format!("/?{q}={q}"), unreserved, TIME).unwrap();
    }

    #[test]
    fn the_verifier_refuses_as_aws_does() {
        let vanilla = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let wrong = verify_get("/", &vanilla.replace('5', "6"), TIME);
        assert_eq!(
            wrong.unwrap_err(),
            ("InvalidSignatureException", SIGNATURE_MISMATCH.to_string())
        );
        // the same signature on another path, method or body is refused
        assert!(verify_get("/x", vanilla, TIME).is_err());
        assert!(verify("/", vanilla, "POST", &[], "host;x-amz-date", b"", TIME).is_err());
        let (kind, message) = verify_get("/", vanilla, TIME + 301).unwrap_err();
        assert_eq!(kind, "InvalidSignatureException");
        assert_eq!(message, "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z (20150830T124101Z - 5 min.)");
        verify_get("/", vanilla, TIME + 299).unwrap();
        let mut other = suite();
        other.access_key_id = "AKIDOTHER".into();
        let h = headers(&[("host", "h"), ("x-amz-date", "20150830T123600Z"), ("authorization", &format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={vanilla}"))]);
        let e = check(
            &other,
            &parse_authorization(&h).unwrap(),
            "GET",
            "/",
            &h,
            b"",
            TIME,
        )
        .unwrap_err();
        assert_eq!(e.0, "UnrecognizedClientException");
    }
}
