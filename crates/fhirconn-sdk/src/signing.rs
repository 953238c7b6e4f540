//! Schemes that sign every request (AWS SigV4, a vendor's HMAC): the scaffolding written once.
//!
//! A signing scheme implements [`SigningScheme`] (its name, summary, settings type and how the
//! settings become a [`Signer`]) and gets [`Scheme`] from the blanket implementation here:
//! the JSON Schema derived from the settings type, `signs_requests` declared, the settings
//! parsed with [`settings::parse`](crate::settings::parse), and a [`Connection`] whose
//! `authorize` and `sign_request` are the signer's. [`request_target`] reads the path and
//! query of the request's URL as the host sends them; [`hex`] writes digests.
//!
//! ```
//! use fhirconn_sdk::signing::{self, Signer, SigningScheme};
//! use fhirconn_sdk::wire::{SignAnswer, SignRequest, WireHeader};
//! use fhirconn_sdk::{schemars, serde, Host, Result, Scheme};
//!
//! /// Date stamp
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! #[serde(crate = "fhirconn_sdk::serde", deny_unknown_fields)]
//! #[schemars(crate = "fhirconn_sdk::schemars")]
//! struct Settings {}
//!
//! struct Stamp;
//! struct StampSigner;
//!
//! impl SigningScheme for Stamp {
//!     const NAME: &'static str = "stamp";
//!     const SUMMARY: &'static str = "the signing time on every request";
//!     type Settings = Settings;
//!     type Signer = StampSigner;
//!     fn signer(&self, _s: Settings, _host: &Host<'_>) -> Result<StampSigner> {
//!         Ok(StampSigner)
//!     }
//! }
//!
//! impl Signer for StampSigner {
//!     fn sign(&self, request: &SignRequest, _host: &Host<'_>) -> Result<SignAnswer> {
//!         let stamp = format!("{} {}", request.unix_time, signing::request_target(request)?);
//!         Ok(SignAnswer { headers: vec![WireHeader::new("x-stamp", stamp)] })
//!     }
//! }
//!
//! assert!(Stamp.signs_requests());
//! let mock = fhirconn_sdk::testing::MockHost::new();
//! let conn = mock.configure(&Stamp, fhirconn_sdk::serde_json::json!({})).unwrap();
//! let request = fhirconn_sdk::testing::sign_request("GET", "https://h/r4/Patient?a=1", b"", 7);
//! let answer = mock.sign(conn.as_ref(), &request).unwrap();
//! assert_eq!(answer.headers[0].value, "7 /r4/Patient?a=1");
//! ```

use crate::scheme::{AuthRequest, Connection, ConnectionInfo, Credentials, Scheme};
use crate::wire::{SignAnswer, SignRequest};
use crate::{Error, Host, Result};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::borrow::Cow;

/// A scheme whose connections sign every request; [`Scheme`] comes with it.
pub trait SigningScheme: Send + Sync + 'static {
    /// The registry name (`auth: { scheme: NAME }`).
    const NAME: &'static str;
    /// One line saying what the scheme does.
    const SUMMARY: &'static str;
    /// The settings, declared once (see [`crate::settings`]).
    type Settings: DeserializeOwned + JsonSchema;
    /// What a configured connection signs with.
    type Signer: Signer;
    /// Checks the parsed settings and builds the signer (read secret files here).
    fn signer(&self, settings: Self::Settings, host: &Host<'_>) -> Result<Self::Signer>;
}

/// A configured connection of a [`SigningScheme`].
pub trait Signer: Send + Sync + 'static {
    /// Resolves what signing needs and returns the credentials (their expiry, if any): the
    /// host calls it before the first request and again before the expiry. Default: nothing
    /// to resolve, no headers, no expiry.
    fn authorize(&self, _host: &Host<'_>) -> Result<Credentials> {
        Ok(Credentials::new())
    }

    /// Signs one request: the headers to add. Runs on the caller's thread once per request
    /// (see [`Connection::sign_request`]): computation only.
    fn sign(&self, request: &SignRequest, host: &Host<'_>) -> Result<SignAnswer>;
}

impl<T: SigningScheme> Scheme for T {
    fn name(&self) -> &str {
        T::NAME
    }

    fn summary(&self) -> &str {
        T::SUMMARY
    }

    fn config_schema(&self) -> Value {
        crate::settings::schema::<T::Settings>()
    }

    fn signs_requests(&self) -> bool {
        true
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let settings = crate::settings::parse(settings, host)?;
        Ok(Box::new(Signed(self.signer(settings, host)?)))
    }
}

/// The connection of a [`SigningScheme`]: its signer.
struct Signed<S>(S);

impl<S: Signer> Connection for Signed<S> {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        self.0.authorize(host)
    }

    fn sign_request(&self, request: &SignRequest, host: &Host<'_>) -> Result<SignAnswer> {
        self.0.sign(request, host)
    }
}

/// The request-target of the request in origin form (RFC 9112 §3.2.1: the absolute path and
/// the query as sent, no fragment), read from its URL, which must be absolute `http(s)` with a
/// host (a `protocol` error otherwise: the host never sends anything else). No parsing beyond
/// that: the host's URLs are already normalised, and signing runs for every request.
pub fn request_target(request: &SignRequest) -> Result<Cow<'_, str>> {
    let bad = |what: &str| Error::protocol(format!("sign-request: {what}"));
    let (scheme, rest) = request
        .url
        .split_once("://")
        .ok_or_else(|| bad("the URL is not absolute"))?;
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (authority, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if !http || authority.is_empty() {
        return Err(bad("the URL needs http(s) and a host"));
    }
    Ok(if target.starts_with('/') {
        Cow::Borrowed(target)
    } else {
        Cow::Owned(format!("/{target}"))
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{sign_request, MockHost};
    use crate::wire::WireHeader;
    use serde_json::json;

    /// Echo
    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct EchoSettings {
        /// the header's value
        word: String,
    }
    struct Echo;
    struct EchoSigner(String);

    impl SigningScheme for Echo {
        const NAME: &'static str = "echo";
        const SUMMARY: &'static str = "echoes";
        type Settings = EchoSettings;
        type Signer = EchoSigner;
        fn signer(&self, s: EchoSettings, _host: &Host<'_>) -> Result<EchoSigner> {
            if s.word.is_empty() {
                return Err(Error::config("word: empty"));
            }
            Ok(EchoSigner(s.word))
        }
    }

    impl Signer for EchoSigner {
        fn sign(&self, request: &SignRequest, _host: &Host<'_>) -> Result<SignAnswer> {
            let value = format!("{} {}", self.0, request_target(request)?);
            Ok(SignAnswer {
                headers: vec![WireHeader::sensitive("x-echo", value)],
            })
        }
    }

    #[test]
    fn the_blanket_scheme_parses_settings_and_signs_through_the_signer() {
        assert_eq!((Echo.name(), Echo.summary()), ("echo", "echoes"));
        assert!(Echo.signs_requests());
        assert_eq!(Echo.config_schema()["properties"]["word"]["type"], "string");
        let mock = MockHost::new();
        let e = mock.configure(&Echo, json!({"wrd": "x"})).err().unwrap();
        assert!(e.message().contains("unknown setting 'wrd'"), "{e}");
        let e = mock.configure(&Echo, json!({"word": ""})).err().unwrap();
        assert_eq!(e.message(), "word: empty");
        let conn = mock.configure(&Echo, json!({"word": "hi"})).unwrap();
        let creds = mock.with_host(|h| conn.authorize(&crate::testing::auth_request(), h));
        let creds = creds.unwrap();
        assert!(creds.headers.is_empty() && creds.expires_at.is_none());
        let r = sign_request(
            "GET",
            "https://h.example/r4/Patient?name=a%20b#frag",
            b"",
            1,
        );
        let a = mock.sign(conn.as_ref(), &r).unwrap();
        assert_eq!(a.headers[0].value, "hi /r4/Patient?name=a%20b");
    }

    #[test]
    fn targets_are_absolute_http_urls_and_keep_the_query_as_sent() {
        let path = |u: &str| request_target(&sign_request("GET", u, b"", 1)).map(Cow::into_owned);
        assert_eq!(path("https://h").unwrap(), "/");
        assert_eq!(path("HTTP://h:8080/a/b?x=%2F&y#f").unwrap(), "/a/b?x=%2F&y");
        assert_eq!(path("https://h?q=1").unwrap(), "/?q=1");
        assert_eq!(path("https://h#/not-a-path").unwrap(), "/");
        for bad in [
            "/relative",
            "mailto:x@example.com",
            "https:///nohost",
            "https://?q",
            "not a url",
            "ftp://h/x",
        ] {
            let e = path(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Protocol, "{bad}");
            assert!(e.message().starts_with("sign-request: "), "{e}");
        }
        assert_eq!(hex(&[0, 0x0f, 0xab, 0xff]), "000fabff");
    }
}
