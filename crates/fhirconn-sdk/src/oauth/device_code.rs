//! The device authorization grant (RFC 8628): ask for a code, show it to the person, poll.
//!
//! Server-chosen waits are bounded ([`super::bounded_seconds`]): the interval to 1–60 s
//! (default 5 s), the code's lifetime to at most 30 minutes, so a hostile authority can neither
//! make the client poll in a tight loop nor park it for ever. The deadline is read from the
//! host's clock. A network error while polling ends the sign-in at once (it is not retried).

use super::{bounded_seconds, error_response, refused, TokenRequest, TokenResponse};
use crate::host::Host;
use crate::secret::SecretString;
use crate::{Error, Result};
use serde_json::Value;
use std::time::Duration;

/// The device-code grant type (RFC 8628 §3.4).
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The longest wait between two polls, also after `slow_down`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// A device authorization response (RFC 8628 §3.2), its waits bounded.
pub struct DeviceAuthorization {
    /// `device_code` (secret: it can be exchanged for the person's tokens).
    pub device_code: SecretString,
    /// `user_code`, shown to the person.
    pub user_code: String,
    /// `verification_uri` (or Microsoft's older `verification_url`).
    pub verification_uri: String,
    /// The server's own instructions (`message`, an Entra extension), if any.
    pub message: Option<String>,
    /// Seconds between polls, bounded to 1–60.
    pub interval: Duration,
    /// How long the code lives, bounded to 1 s – 30 min.
    pub expires_in: Duration,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("interval", &self.interval)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl DeviceAuthorization {
    /// What to tell the person: the server's message, else where to enter which code.
    pub fn instructions(&self) -> String {
        self.message.clone().unwrap_or_else(|| {
            format!(
                "To sign in, open {} and enter the code {}",
                self.verification_uri, self.user_code
            )
        })
    }
}

/// Asks `endpoint` for a device code for `client_id` and `scope` (RFC 8628 §3.1).
pub fn start(
    endpoint: &str,
    client_id: &str,
    scope: &str,
    host: &Host<'_>,
) -> Result<DeviceAuthorization> {
    let req = TokenRequest::new(endpoint)
        .client_id(client_id)
        .scope(scope);
    let resp = req.send_raw(host)?;
    if !resp.is_success() {
        return Err(refused(&resp, endpoint));
    }
    let v: Value = serde_json::from_slice(&resp.body)
        .map_err(|_| Error::protocol("the device code response is not JSON"))?;
    let device_code = v["device_code"]
        .as_str()
        .ok_or_else(|| Error::protocol("no device_code"))?;
    Ok(DeviceAuthorization {
        device_code: SecretString::from(device_code.to_string()),
        user_code: v["user_code"].as_str().unwrap_or("").to_string(),
        verification_uri: v["verification_uri"]
            .as_str()
            .or_else(|| v["verification_url"].as_str())
            .unwrap_or("")
            .to_string(),
        message: v["message"].as_str().map(String::from),
        interval: bounded_seconds(v["interval"].as_u64(), 5, 1, MAX_INTERVAL.as_secs()),
        expires_in: bounded_seconds(v["expires_in"].as_u64(), 900, 1, 1800),
    })
}

/// Polls the token endpoint of `request` (which carries the client id and authentication)
/// until the person has signed in (RFC 8628 §3.4–3.5): `authorization_pending` waits,
/// `slow_down` adds 5 s to this and every later wait, `expired_token` and the code's own
/// lifetime end in "needs login", `access_denied` is a rejection, anything else is an error.
pub fn poll(
    request: &TokenRequest,
    authorization: &DeviceAuthorization,
    host: &Host<'_>,
) -> Result<TokenResponse> {
    let request = request
        .clone()
        .grant(GRANT)
        .secret_param("device_code", &authorization.device_code);
    let deadline = host.now() + authorization.expires_in;
    let mut interval = authorization.interval;
    loop {
        host.sleep(interval);
        if host.now() > deadline {
            return Err(Error::interaction_required(
                "the sign-in code expired; run login again",
            ));
        }
        let resp = request.send_raw(host)?;
        if resp.is_success() {
            return request.accept(&resp, host);
        }
        match error_response(&resp).map(|e| e.error).as_deref() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval = (interval + Duration::from_secs(5)).min(MAX_INTERVAL),
            Some("expired_token") => {
                return Err(Error::interaction_required(
                    "the sign-in code expired before it was used; run login again",
                ))
            }
            Some("access_denied") => return Err(Error::rejected("the sign-in was declined")),
            _ => return Err(refused(&resp, request.endpoint())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::tests::json;
    use crate::testing::MockHost;
    use crate::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A device endpoint answering `device`, then a token endpoint answering `polls` in turn
    /// (the last one again and again). Returns the mock and the number of token polls.
    fn authority(
        device: &'static str,
        polls: Vec<Result<&'static str, &'static str>>,
    ) -> (MockHost, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let count = n.clone();
        let mock = MockHost::new().with_http(move |req| {
            if req.url == "https://idp/device" {
                return Ok(json(200, device));
            }
            let i = count.fetch_add(1, Ordering::SeqCst).min(polls.len() - 1);
            match polls[i] {
                Ok(body) if body.contains("access_token") => Ok(json(200, body)),
                Ok(body) => Ok(json(400, body)),
                Err(e) => Err(e.to_string()),
            }
        });
        (mock, n)
    }

    const DEVICE: &str = r#"{"device_code":"dc","user_code":"U1","verification_uri":"https://idp/login","interval":2,"expires_in":600}"#;
    const PENDING: Result<&str, &str> = Ok(r#"{"error":"authorization_pending"}"#);
    const TOKEN: Result<&str, &str> =
        Ok(r#"{"access_token":"at","token_type":"Bearer","expires_in":60}"#);

    fn sign_in(mock: &MockHost) -> Result<TokenResponse> {
        mock.with_host(|h| {
            let a = start("https://idp/device", "app", "s offline_access", h)?;
            h.tell_person(&a.instructions(), Some(&a.verification_uri));
            poll(
                &TokenRequest::new("https://idp/token").client_id("app"),
                &a,
                h,
            )
        })
    }

    #[test]
    fn pending_then_token_polls_at_the_interval_with_the_device_code() {
        let (mock, polls) = authority(DEVICE, vec![PENDING, PENDING, TOKEN]);
        let start_ms = mock.now_ms();
        sign_in(&mock).unwrap();
        assert_eq!(polls.load(Ordering::SeqCst), 3);
        assert_eq!(mock.now_ms() - start_ms, 6_000, "three waits of 2 s");
        let told = mock.told.lock().unwrap();
        assert!(told[0].0.contains("enter the code U1"), "{told:?}");
        let reqs = mock.requests.lock().unwrap();
        let body = String::from_utf8(reqs[1].body.clone()).unwrap();
        assert_eq!(
            body,
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=dc&client_id=app"
        );
    }

    #[test]
    fn slow_down_adds_five_seconds_to_every_later_wait() {
        let (mock, _) = authority(DEVICE, vec![Ok(r#"{"error":"slow_down"}"#), PENDING, TOKEN]);
        let t0 = mock.now_ms();
        sign_in(&mock).unwrap();
        assert_eq!(mock.now_ms() - t0, 2_000 + 7_000 + 7_000);
    }

    #[test]
    fn endings_declined_expired_errors_and_network_failures_surface_at_once() {
        let cases: Vec<(Result<&'static str, &'static str>, ErrorKind, &str)> = vec![
            (
                Ok(r#"{"error":"access_denied"}"#),
                ErrorKind::CredentialsRejected,
                "declined",
            ),
            (
                Ok(r#"{"error":"expired_token"}"#),
                ErrorKind::InteractionRequired,
                "expired before it was used",
            ),
            (
                Ok(r#"{"error":"invalid_client","error_description":"x"}"#),
                ErrorKind::CredentialsRejected,
                "HTTP 400: invalid_client: x",
            ),
            (
                Err("connection reset"),
                ErrorKind::Network,
                "token endpoint https://idp/token: connection reset",
            ),
        ];
        for (answer, kind, expected) in cases {
            let (mock, polls) = authority(DEVICE, vec![PENDING, answer]);
            let e = sign_in(&mock).unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.message().contains(expected), "{expected}: {e}");
            assert_eq!(polls.load(Ordering::SeqCst), 2, "no poll after {expected}");
        }
    }

    #[test]
    fn hostile_waits_are_bounded_and_the_code_expires() {
        // interval 0 → 1 s, a day-long expiry → 30 min: pending for ever ends at 30 min.
        let (mock, polls) = authority(
            r#"{"device_code":"dc","user_code":"U","verification_uri":"u","interval":0,"expires_in":86400}"#,
            vec![PENDING],
        );
        let t0 = mock.now_ms();
        let e = sign_in(&mock).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InteractionRequired);
        assert!(e.message().contains("expired; run login again"), "{e}");
        assert_eq!(polls.load(Ordering::SeqCst), 1800);
        assert_eq!(mock.now_ms() - t0, 1_801_000);
        // an hour-long interval is cut to a minute.
        let (mock, _) = authority(
            r#"{"device_code":"dc","interval":3600,"expires_in":60}"#,
            vec![TOKEN],
        );
        let t0 = mock.now_ms();
        sign_in(&mock).unwrap();
        assert_eq!(mock.now_ms() - t0, 60_000);
    }

    #[test]
    fn a_device_endpoint_without_a_code_is_a_protocol_error() {
        for (body, expected) in [
            ("<html>", "not JSON"),
            (r#"{"user_code":"U"}"#, "no device_code"),
        ] {
            let (mock, _) = authority(body, vec![TOKEN]);
            let e = sign_in(&mock).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(e.message().contains(expected), "{e}");
        }
    }
}
