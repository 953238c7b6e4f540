//! What the proxy checks before it spends credentials (`Host`, browser cross-site requests,
//! its bearer token) and how it forwards: headers filtered both ways, answers hardened.

use super::*;

/// What every request handler sees.
#[derive(Clone)]
pub(super) struct ProxyState {
    /// The connections.
    pub(super) host: super::service::ServedHost,
    /// SHA-256 of the token.
    pub(super) token: Option<[u8; 32]>,
    /// Lowercase `host:port` authorities (and `host` alone on the scheme's default port).
    pub(super) authorities: Arc<Vec<String>>,
    /// `http` or `https`.
    pub(super) scheme: &'static str,
    /// Metric handles per connection.
    pub(super) meters: Arc<super::service::Meters>,
}

fn harden(headers: &mut HeaderMap) {
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = serde_json::json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}]});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    harden(r.headers_mut());
    r
}

fn forwardable(name: &HeaderName, connection_listed: &[String]) -> bool {
    let n = name.as_str();
    !HOP_BY_HOP.contains(&n) && !connection_listed.iter().any(|c| c == n)
}

fn returnable(name: &HeaderName, connection_listed: &[String]) -> bool {
    let n = name.as_str();
    forwardable(name, connection_listed)
        && !RESPONSE_DROPPED.contains(&n)
        && !n.starts_with("access-control-")
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

/// The authorities a request may name: loopback names on the bound port, then `names`.
pub(super) fn authorities(bound: SocketAddr, names: &[String], tls: bool) -> Vec<String> {
    let port = bound.port();
    let mut out = vec![
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        bound.to_string(),
    ];
    if bound.ip().is_unspecified() {
        out.pop();
    }
    for n in names {
        match n.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => {}
            Ok(_) => out.push(n.clone()),
            Err(_) if has_port(n) => out.push(n.clone()),
            Err(_) => out.push(format!("{n}:{port}")),
        }
    }
    let default_port = if tls { 443 } else { 80 };
    let suffix = format!(":{default_port}");
    let bare: Vec<String> = out
        .iter()
        .filter_map(|a| a.strip_suffix(&suffix).map(str::to_string))
        .collect();
    out.extend(bare);
    out.iter_mut().for_each(|a| a.make_ascii_lowercase());
    out.sort();
    out.dedup();
    out
}

/// `name:port` (not a bare IPv6 address).
fn has_port(n: &str) -> bool {
    n.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !h.contains(':') && !h.contains('[') && p.parse::<u16>().is_ok()
    })
}

/// Whether `authority` (a `Host` value) is one of the proxy's own.
pub(super) fn names_the_proxy(st: &ProxyState, authority: &str) -> bool {
    st.authorities
        .iter()
        .any(|a| a.eq_ignore_ascii_case(authority))
}

/// Refuses requests that do not name the proxy (DNS rebinding) and browser requests from
/// other sites (CSRF), before anything else is looked at.
#[allow(clippy::result_large_err)]
fn check_browser(st: &ProxyState, parts: &axum::http::request::Parts) -> Result<(), Response> {
    let own = |authority: &str| names_the_proxy(st, authority);
    let misdirected = |what: &str| {
        outcome(
            StatusCode::MISDIRECTED_REQUEST,
            "forbidden",
            &format!(
                "{what}: the proxy answers only requests addressed to itself \
                 (e.g. Host: {}); this protects against DNS rebinding",
                st.authorities.first().map(String::as_str).unwrap_or("")
            ),
        )
    };
    let hosts: Vec<_> = parts.headers.get_all(header::HOST).iter().collect();
    let host_ok = match hosts.as_slice() {
        [one] => one.to_str().is_ok_and(own),
        _ => false,
    };
    if !host_ok {
        return Err(misdirected("the Host header does not name this proxy"));
    }
    if let Some(a) = parts.uri.authority() {
        if !own(a.as_str()) {
            return Err(misdirected("the request target does not name this proxy"));
        }
    }
    let cross_site = |what: &str| {
        outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "{what}: the proxy refuses requests from web pages of other origins, \
                 which would otherwise use your credentials"
            ),
        )
    };
    let own_origin = |value: &str| {
        value
            .strip_prefix(st.scheme)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(own)
    };
    for v in parts.headers.get_all(header::ORIGIN) {
        if !v.to_str().is_ok_and(own_origin) {
            return Err(cross_site("the Origin is not the proxy's own"));
        }
    }
    for v in parts.headers.get_all(header::REFERER) {
        let ok = v
            .to_str()
            .ok()
            .and_then(|r| url::Url::parse(r).ok())
            .is_some_and(|u| own_origin(&u.origin().ascii_serialization()));
        if !ok {
            return Err(cross_site("the Referer is not the proxy's own origin"));
        }
    }
    for v in parts.headers.get_all("sec-fetch-site") {
        let site = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return Err(cross_site("Sec-Fetch-Site is not same-origin"));
        }
    }
    Ok(())
}

/// Whether the request carries the proxy's token (or no token is required).
fn authorised(st: &ProxyState, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    token_allows(st, given)
}

/// Whether an `Authorization` value (the first one) carries the proxy's token, or no token
/// is required.
pub(super) fn token_allows(st: &ProxyState, authorization: Option<&[u8]>) -> bool {
    st.token
        .as_ref()
        .is_none_or(|expected| token_matches(expected, authorization))
}

/// Compares the presented bearer token with the expected one's SHA-256 digest in constant
/// time (digests have one length, so the token's length does not show either).
fn token_matches(expected: &[u8; 32], authorization: Option<&[u8]>) -> bool {
    let presented = authorization
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    bool::from(digest.ct_eq(expected))
}

/// The 401 answer to a request without the proxy's token.
fn unauthorised() -> Response {
    let mut r = outcome(
        StatusCode::UNAUTHORIZED,
        "login",
        "the proxy requires its bearer token (Authorization: Bearer <token>)",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fhirconn proxy\""),
    );
    r
}

/// Whether `path` is one of the reserved service paths.
pub(super) fn is_service_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The reserved service paths (`/healthz`, `/readyz`, `/metrics`), answered after the access
/// checks. Without a proxy token (`may_list` false) no connection id is shown: `/readyz`
/// says only whether the proxy is ready and `/metrics` (whose labels are ids) answers 404.
fn service_path(st: &ProxyState, path: &str, may_list: bool) -> Option<Response> {
    match path {
        "/healthz" => Some(super::service::healthz()),
        "/readyz" => Some(st.host.readyz(may_list)),
        "/metrics" if may_list => Some(super::service::metrics()),
        "/metrics" => Some(outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "metrics are served only when the proxy requires a token (their labels name \
             the connections)",
        )),
        _ => None,
    }
}

/// The upstream request: the caller's headers minus hop-by-hop ones, with the request id.
fn upstream_request(
    parts: &axum::http::request::Parts,
    rest: &str,
    body: axum::body::Bytes,
    id_value: HeaderValue,
) -> Request {
    let listed = connection_listed(&parts.headers);
    let mut headers: Vec<(HeaderName, HeaderValue)> = parts
        .headers
        .iter()
        .filter(|(k, _)| forwardable(k, &listed) && k.as_str() != super::service::REQUEST_ID)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.push((
        HeaderName::from_static(super::service::REQUEST_ID),
        id_value,
    ));
    let target = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    Request {
        method: parts.method.clone(),
        path: target,
        headers,
        body: (!body.is_empty()).then(|| body.to_vec()),
    }
}

/// Streams the upstream answer back (returnable headers only, hardened), counting bytes. The
/// body keeps its size, so an answer of known length goes back with a `Content-Length`.
fn stream_back(resp: crate::transport::Streamed, bytes: metrics::Counter) -> Response {
    let (parts, body) = resp.into_parts();
    let listed = connection_listed(&parts.headers);
    let mut out = Response::new(Body::new(Counted { body, bytes }));
    *out.status_mut() = parts.status;
    let mut name = None;
    for (k, v) in parts.headers {
        // `None` continues the previous name's values (a header sent more than once).
        if k.is_some() {
            name = k;
        }
        if let Some(k) = name.as_ref().filter(|k| returnable(k, &listed)) {
            out.headers_mut().append(k.clone(), v);
        }
    }
    harden(out.headers_mut());
    out
}

/// A streamed body that counts the bytes it passes on.
struct Counted {
    body: crate::transport::StreamedBody,
    bytes: metrics::Counter,
}

impl http_body::Body for Counted {
    type Data = axum::body::Bytes;
    type Error = crate::transport::TransportError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.increment(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pub(super) async fn forward(st: ProxyState, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(refused) = check_browser(&st, &parts) {
        return refused;
    }
    if !authorised(&st, &parts.headers) {
        return unauthorised();
    }
    // CONNECT would reach the server as a tunnel request with credentials (its path lost);
    // TRACE would have the server echo the credential headers back to the caller.
    if parts.method == axum::http::Method::CONNECT || parts.method == axum::http::Method::TRACE {
        return outcome(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "the proxy forwards neither CONNECT nor TRACE",
        );
    }
    // Without a token nobody is known to be the person: ids are not listed.
    let may_list = st.token.is_some();
    if let Some(answer) = service_path(&st, parts.uri.path(), may_list) {
        return answer;
    }
    let host = st.host.current();
    let path = parts.uri.path().trim_start_matches('/');
    let (id, rest) = path.split_once('/').unwrap_or((path, ""));
    if id.is_empty() {
        let text = if may_list {
            format!(
                "use /<connection id>/<path>; connections: {}",
                host.connection_ids().join(", ")
            )
        } else {
            "use /<connection id>/<path>".to_string()
        };
        return outcome(StatusCode::NOT_FOUND, "not-found", &text);
    }
    let conn = match host.connection(id) {
        Ok(c) => c,
        Err(crate::Error::UnknownConnection { .. }) if !may_list => {
            return outcome(StatusCode::NOT_FOUND, "not-found", "no such connection");
        }
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
    let request_id = super::service::request_id(&parts.headers);
    let id_value = HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("-"));
    let request = upstream_request(&parts, rest, body, id_value.clone());
    let started = std::time::Instant::now();
    let method = parts.method.clone();
    tracing::debug!(request_id = %request_id, connection = %id, method = %method, path = %rest, "forwarding");
    let answer = conn.send_streaming(request).await;
    let meters = st.meters.of(id);
    let mut out = match answer {
        Ok(resp) => {
            let status = resp.status();
            let took = started.elapsed();
            let class = super::service::status_class(status.as_u16());
            meters.request(class);
            meters.upstream(class, took);
            tracing::info!(request_id = %request_id, connection = %id, status = status.as_u16(),
                ms = took.as_millis() as u64, "answered");
            stream_back(resp, meters.bytes())
        }
        // e.g. an absolute URL on another origin: the caller's mistake, nothing was sent.
        Err(e @ crate::Error::InvalidRequest(_)) => outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("connection '{id}': {}", host.redact(&e.to_string())),
        ),
        Err(e) => failed(&|t: &str| host.redact(t), id, &request_id, &meters, e),
    };
    out.headers_mut()
        .insert(super::service::REQUEST_ID, id_value);
    out
}

/// The 502 answer to a request that got no answer from the server (`redact` removes the
/// connections' secrets from the error's text).
pub(super) fn failed(
    redact: &dyn Fn(&str) -> String,
    id: &str,
    request_id: &str,
    meters: &super::service::ConnectionMeters,
    e: crate::Error,
) -> Response {
    meters.request(super::service::FAILED);
    let mut text = redact(&e.to_string());
    tracing::warn!(request_id = %request_id, connection = %id, "failed: {text}");
    // Most errors name the connection already (`connection 'id': ...`).
    if !text.starts_with(&format!("connection '{id}'")) {
        text = format!("connection '{id}': {text}");
    }
    outcome(StatusCode::BAD_GATEWAY, "transient", &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_cover_loopback_names_the_listen_text_and_default_ports() {
        let bound: SocketAddr = "127.0.0.1:8089".parse().unwrap();
        let a = authorities(
            bound,
            &["127.0.0.1:8089".into(), "proxy.example".into()],
            true,
        );
        for want in [
            "127.0.0.1:8089",
            "[::1]:8089",
            "localhost:8089",
            "proxy.example:8089",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        assert!(!a.iter().any(|x| x == "localhost"));
        let a = authorities("127.0.0.1:443".parse().unwrap(), &[], true);
        assert!(a.iter().any(|x| x == "localhost"), "{a:?}");
    }

    #[test]
    fn the_token_check_compares_digests_of_bearer_tokens() {
        let expected: [u8; 32] = Sha256::digest(b"abc").into();
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            token_matches(
                &expected,
                h.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
            )
        };
        assert!(with("Bearer abc"));
        assert!(with("bearer abc"));
        assert!(!with("Bearer abd"));
        assert!(!with("Bearer abcd"));
        assert!(!with("Basic abc"));
        assert!(!token_matches(&expected, None));
        assert!(!token_matches(&expected, Some(b"Bearer abc\xff")));
    }
}
