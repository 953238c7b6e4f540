//! OAuth 2.0 for the token schemes, written once: discovery documents ([`discovery`]), token
//! requests with every client authentication method ([`TokenRequest`], [`ClientAuth`]),
//! token-response validation (RFC 6749 §5: [`token_response`], [`token_lifetime`],
//! [`scope_downgrade`]), device-code polling ([`device_code`], RFC 8628) and refresh
//! ([`refresh`]), PKCE ([`Pkce`]), signed JWTs at the token endpoint (`assertion`, feature
//! `keys`: `private_key_jwt`, `client_secret_jwt`, the RFC 7523 jwt-bearer grant) and relative
//! `token-url` values ([`token_url`]).
//!
//! Errors name the endpoint and quote the server's OAuth `error` and `error_description`, never
//! the request (it holds secrets).

#[cfg(feature = "keys")]
pub mod assertion;
#[cfg(feature = "keys")]
pub mod client_auth;
pub mod device_code;
pub mod discovery;
mod pkce;
mod token;

pub use pkce::{random_hex, Pkce};

pub use token::{assertion_claims, refresh, ClientAuth, TokenRequest, TokenResponse, JWT_BEARER};

use crate::host::{Host, HttpResponse};
use crate::scheme::Credentials;
use crate::secret::SecretString;
use crate::{Error, ErrorKind, Result};
use serde_json::Value;
use std::time::Duration;

/// Checks a configured endpoint URL (`token-url`, `issuer`, `authority-host`): it must parse
/// and be http or https. Plain http to anything but loopback is warned about (the host also
/// refuses to send to it unless the connection sets `allow-insecure-http`).
pub fn endpoint_url(field: &str, value: &str, host: &Host<'_>) -> Result<url::Url> {
    let u = url::Url::parse(value)
        .map_err(|e| Error::config(format!("{field}: not a valid URL ({e})")))?;
    match u.scheme() {
        "https" => {}
        "http" if matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) => {}
        "http" => host.warn(&format!(
            "{field} uses plain http: client credentials and tokens travel unencrypted \
             (RFC 6749 §2.3.1 requires TLS)"
        )),
        other => {
            return Err(Error::config(format!(
                "{field}: must be an http(s) URL, not scheme '{other}'"
            )))
        }
    }
    if u.host_str().is_none() {
        return Err(Error::config(format!("{field}: the URL names no host")));
    }
    Ok(u)
}

/// A `token-url` setting, absolute or relative: a relative one (`oauth2/token`, `/oauth2/token`)
/// is resolved against `base_url` by RFC 3986 §5 reference resolution, then checked like every
/// endpoint ([`endpoint_url`]: http(s), plain http warned about and refused by the host
/// unless `allow-insecure-http`).
pub fn token_url(value: &str, base_url: &str, host: &Host<'_>) -> Result<String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::config(
            "token-url: not a valid URL (it contains whitespace)",
        ));
    }
    let resolved = match url::Url::parse(value) {
        Ok(u) => u,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            let base = url::Url::parse(base_url)
                .map_err(|e| Error::config(format!("base-url: not a valid URL ({e})")))?;
            let u = base
                .join(value)
                .map_err(|e| Error::config(format!("token-url: not a valid URL ({e})")))?;
            host.debug(&format!(
                "token-url '{value}' resolved against base-url: {u}"
            ));
            u
        }
        Err(e) => return Err(Error::config(format!("token-url: not a valid URL ({e})"))),
    };
    endpoint_url("token-url", resolved.as_str(), host).map(String::from)
}

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The `error` code, e.g. `invalid_client`.
    pub error: String,
    /// The `error_description`, if any.
    pub description: Option<String>,
}

/// Reads an OAuth error response; `None` when the body is not one.
pub fn error_response(resp: &HttpResponse) -> Option<OAuthError> {
    let v: Value = serde_json::from_slice(&resp.body).ok()?;
    Some(OAuthError {
        error: v["error"].as_str()?.to_string(),
        description: v["error_description"].as_str().map(String::from),
    })
}

/// The kind of failure an `error` code means: the credentials (or what they may ask for) were
/// refused, or the exchange went wrong otherwise.
pub fn error_kind(code: &str) -> ErrorKind {
    match code {
        "invalid_client"
        | "unauthorized_client"
        | "invalid_grant"
        | "invalid_scope"
        | "access_denied" => ErrorKind::CredentialsRejected,
        _ => ErrorKind::Protocol,
    }
}

/// The error for a token endpoint that did not answer 2xx: its OAuth `error` and
/// `error_description` when it sent them, else the status and content type. Never the request.
pub fn refused(resp: &HttpResponse, endpoint: &str) -> Error {
    match error_response(resp) {
        Some(e) => Error::new(
            error_kind(&e.error),
            format!(
                "token endpoint {endpoint} answered HTTP {}: {}{}",
                resp.status,
                e.error,
                e.description.map(|d| format!(": {d}")).unwrap_or_default()
            ),
        ),
        None => Error::protocol(format!(
            "token endpoint {endpoint} answered HTTP {} without an OAuth error ({})",
            resp.status,
            resp.header("content-type").unwrap_or("no content type")
        )),
    }
}

/// Validates a successful token response (RFC 6749 §5.1): an `access_token` without
/// whitespace, `token_type` Bearer (case-insensitive) and, when present, a numeric
/// `expires_in`. Returns the credentials and the whole response (for `refresh_token` & co).
pub fn token_response(
    resp: &HttpResponse,
    endpoint: &str,
    host: &Host<'_>,
) -> Result<(Credentials, Value)> {
    let bad = |what: &str| {
        Error::protocol(format!(
            "token endpoint {endpoint} answered HTTP {} {what}",
            resp.status
        ))
    };
    let v: Value = serde_json::from_slice(&resp.body)
        .map_err(|_| bad("with a body that is not JSON (not a token response)"))?;
    let token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("with a body that is not a token response (without an access_token)"))?;
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("with an access_token containing whitespace"));
    }
    match v["token_type"].as_str() {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(t) => {
            return Err(bad(&format!(
                "with token_type '{t}' (only Bearer is supported)"
            )))
        }
        None => return Err(bad("without a token_type")),
    }
    let mut creds = Credentials::new().bearer(&SecretString::from(token.to_string()));
    match v.get("expires_in") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            let lifetime = n
                .as_f64()
                .ok_or_else(|| bad("with a non-numeric expires_in"))
                .and_then(|secs| token_lifetime(secs).map_err(|why| bad(&why)))?;
            creds = creds.expires_in(host, lifetime);
        }
        Some(_) => return Err(bad("with a non-numeric expires_in")),
    }
    Ok((creds, v))
}

/// The longest token lifetime accepted from a server: ten years (anything longer is a bug or
/// an attack on the host's clock arithmetic).
pub const MAX_TOKEN_LIFETIME_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// Checks a server-chosen `expires_in` (seconds): it must be finite, above zero and at most
/// [`MAX_TOKEN_LIFETIME_SECS`]. The error says what was wrong, for a diagnosis.
pub fn token_lifetime(secs: f64) -> std::result::Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("with a negative or absurd expires_in ({secs})"));
    }
    if secs < 1.0 {
        return Err(format!(
            "with expires_in {secs}: a token that has already expired (the server's clock or \
             configuration is wrong)"
        ));
    }
    if secs > MAX_TOKEN_LIFETIME_SECS {
        return Err(format!(
            "with an absurd expires_in ({secs:.0} s, more than ten years)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Bounds a server-chosen wait (a device-code `interval`, `expires_in`, or `Retry-After`) to
/// `[min, max]` seconds, so a hostile server can neither spin the client nor park it forever.
pub fn bounded_seconds(value: Option<u64>, default: u64, min: u64, max: u64) -> Duration {
    Duration::from_secs(value.unwrap_or(default).clamp(min, max))
}

/// RFC 6749 §5.1: a token response's `scope` differs from the request when the server granted
/// less. Returns a warning naming the scopes that were asked for and not granted.
pub fn scope_downgrade(requested: &[&str], granted: Option<&str>) -> Option<String> {
    let granted: Vec<&str> = granted?.split(' ').filter(|s| !s.is_empty()).collect();
    let missing: Vec<&str> = requested
        .iter()
        .copied()
        .filter(|r| !r.is_empty() && !granted.contains(r))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "the token endpoint granted fewer scopes than requested: not granted {}; granted '{}'",
        missing.join(" "),
        granted.join(" ")
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::MockHost;

    /// A JSON answer with this status (shared by the oauth test modules).
    pub(crate) fn json(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn errors_are_quoted_and_classified() {
        let e = refused(
            &json(
                401,
                r#"{"error":"invalid_client","error_description":"bad"}"#,
            ),
            "https://t",
        );
        assert_eq!(e.kind(), ErrorKind::CredentialsRejected);
        assert_eq!(
            e.message(),
            "token endpoint https://t answered HTTP 401: invalid_client: bad"
        );
        let e = refused(&json(500, "<html>"), "https://t");
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e
            .message()
            .contains("without an OAuth error (application/json)"));
        assert_eq!(error_kind("temporarily_unavailable"), ErrorKind::Protocol);
    }

    #[test]
    fn token_responses_are_validated() {
        let mock = MockHost::new();
        mock.with_host(|h| {
            let (c, v) = token_response(&json(200, r#"{"access_token":"a","token_type":"BEARER","expires_in":60,"refresh_token":"r"}"#), "t", h).unwrap();
            assert!(c.expires_at.is_some());
            assert_eq!(v["refresh_token"], "r");
            for (body, expected) in [
                ("nope", "not JSON"),
                (r#"{"token_type":"Bearer"}"#, "without an access_token"),
                (r#"{"access_token":"a b","token_type":"Bearer"}"#, "whitespace"),
                (r#"{"access_token":"a","token_type":"mac"}"#, "token_type 'mac'"),
                (r#"{"access_token":"a"}"#, "without a token_type"),
                (r#"{"access_token":"a","token_type":"Bearer","expires_in":"60"}"#, "non-numeric"),
                (r#"{"access_token":"a","token_type":"Bearer","expires_in":-1}"#, "negative"),
                (r#"{"access_token":"a","token_type":"Bearer","expires_in":1e300}"#, "absurd"),
                (r#"{"access_token":"a","token_type":"Bearer","expires_in":1e10}"#, "absurd"),
                (r#"{"access_token":"a","token_type":"Bearer","expires_in":0}"#, "already expired"),
            ] {
                let e = token_response(&json(200, body), "t", h).unwrap_err();
                assert!(e.message().contains(expected), "{body}: {e}");
            }
        });
    }

    #[test]
    fn endpoint_urls_must_be_http_and_plain_http_is_warned_about() {
        let mock = MockHost::new();
        mock.with_host(|h| {
            assert!(endpoint_url("token-url", "https://idp/t", h).is_ok());
            assert!(endpoint_url("token-url", "http://127.0.0.1:9/t", h).is_ok());
            assert!(endpoint_url("token-url", "http://idp.example/t", h).is_ok());
            for (v, expected) in [
                (
                    "ftp://t",
                    "token-url: must be an http(s) URL, not scheme 'ftp'",
                ),
                ("not a url", "token-url: not a valid URL ("),
            ] {
                let e = endpoint_url("token-url", v, h).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Config);
                assert!(e.message().starts_with(expected), "{e}");
            }
        });
        let logs = mock.logs.lock().unwrap();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(
            logs[0].1.starts_with("token-url uses plain http"),
            "{logs:?}"
        );
    }

    #[test]
    fn scope_downgrades_and_waits_are_reported_and_bounded() {
        assert_eq!(scope_downgrade(&["a", "b"], None), None);
        assert_eq!(scope_downgrade(&["a", "b"], Some("b a")), None);
        let w = scope_downgrade(
            &["system/*.rs", "system/Patient.r"],
            Some("system/Patient.r"),
        )
        .unwrap();
        assert!(w.contains("not granted system/*.rs"), "{w}");
        assert_eq!(bounded_seconds(Some(0), 5, 1, 60), Duration::from_secs(1));
        assert_eq!(
            bounded_seconds(Some(u64::MAX), 5, 1, 60),
            Duration::from_secs(60)
        );
        assert_eq!(bounded_seconds(None, 5, 1, 60), Duration::from_secs(5));
        assert!(token_lifetime(3600.0).is_ok());
        assert!(token_lifetime(f64::NAN).is_err());
    }
}
