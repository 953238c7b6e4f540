//! The JSON that travels through the ABI's extension points, as serde types shared by the SDK
//! (plugins) and the host, so the two sides cannot drift.
//!
//! ABI 1.0 is frozen; what was added after it travels as JSON text:
//! - host operations a plugin asks for with `HostServices::invoke(op, payload)`:
//!   [`HostOperation`] ([`BROWSER_REDIRECT`] → [`BrowserRedirect`] / [`RedirectAnswer`],
//!   [`REDACT_SECRET`] → [`RedactSecret`] / `{}`);
//! - host operation [`EXEC`] → [`Exec`] / [`ExecAnswer`] (run a credential process);
//! - connection operations the host asks a scheme for with `ConnectionAuth::invoke(op,
//!   payload)`: [`ConnectionOperation`] ([`LOGOUT`] → `{}` / [`LogoutAnswer`],
//!   [`SIGN_REQUEST`] → [`SignRequest`] / [`SignAnswer`]);
//! - the scheme description's `extensions_json`: [`SchemeExtensions`]
//!   (`{"signs_requests": true}`);
//! - `Credentials.extensions_json`: [`CredentialsExtensions`] (`{"warnings": [...]}`, and a
//!   SMART launch [`LaunchContext`] as `{"context": {...}}`);
//! - the `extensions_json` of the scheme description, the connection context and the
//!   authorization request: [`NoExtensions`] (`{}`), kept as an object so fields can be added.
//!
//! Every enumeration has an `Unknown` fallback: a newer peer's operation is answered
//! `unsupported`, never misread.

use serde::{Deserialize, Serialize};

mod exec;
mod launch;
mod sign;
pub use exec::{Exec, ExecAnswer, EXEC};
pub use launch::LaunchContext;
pub use sign::{
    SchemeExtensions, SignAnswer, SignRequest, WireHeader, EMPTY_BODY_SHA256, SIGN_REQUEST,
};

/// Host operation: send the person to an authorization URL and catch the browser's redirect
/// on a loopback listener (RFC 8252 §7.3).
pub const BROWSER_REDIRECT: &str = "browser-redirect";
/// Host operation: register a value that must be redacted like a secret.
pub const REDACT_SECRET: &str = "redact-secret";
/// Connection operation: forget stored sign-in state (refresh tokens).
pub const LOGOUT: &str = "logout";
/// Connection operation: may this connection's access tokens be shared with other processes,
/// and under which identity (payload `{}`, answer [`ShareKeyAnswer`])?
pub const SHARE_KEY: &str = "share-key";

/// Answer of [`SHARE_KEY`]: `{"share_key": "..."}`, or `{}`/`null` when the connection's
/// tokens must stay in this process (a person's sign-in, an identity from the machine).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeyAnswer {
    /// Names the identity the tokens belong to (everything that decides it and is not in the
    /// settings, e.g. an account read from a key file); hashed by the host under its fleet key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_key: Option<String>,
}

/// The text of an empty extension object.
pub const EMPTY_OBJECT: &str = "{}";

/// A JSON payload that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct WireError {
    /// The operation (or extension) whose payload it was.
    pub op: String,
    /// What was wrong with it.
    #[source]
    pub source: serde_json::Error,
}

fn parse<T: for<'de> Deserialize<'de>>(op: &str, json: &str) -> Result<T, WireError> {
    let json = if json.trim().is_empty() {
        EMPTY_OBJECT
    } else {
        json
    };
    serde_json::from_str(json).map_err(|source| WireError {
        op: op.to_string(),
        source,
    })
}

fn to_text(value: &impl Serialize) -> String {
    // These types hold only strings, numbers and lists: serialising cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| EMPTY_OBJECT.to_string())
}

/// Payload of [`BROWSER_REDIRECT`]: `{"url", "message", "timeout_seconds", "redirect_uri"}`.
/// The host adds `redirect_uri` (the given one, or `http://127.0.0.1:PORT/`) to `url`; when `url` carries a `state`, only a
/// redirect bringing the same `state` back ends the wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserRedirect {
    /// The authorization URL (http or https), without `redirect_uri`.
    pub url: String,
    /// What to tell the person (the host has a default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long to wait for the redirect (the host's default is 300, its maximum 900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// The exact `redirect_uri` the client is registered with (e.g.
    /// `http://127.0.0.1:8765/callback`): the host then listens on exactly that loopback
    /// address, port and path while it waits, and adds this text unchanged. Only `http` on a
    /// loopback address with an explicit port is accepted. Absent: a free port and `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
}

/// Answer of [`BROWSER_REDIRECT`]: `{"redirect_uri", "query"}`, the query string the browser
/// brought back (`code=...&state=...` or `error=...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectAnswer {
    /// The `redirect_uri` the host added (repeat it in the token request).
    pub redirect_uri: String,
    /// The raw query string of the redirect.
    pub query: String,
}

/// Payload of [`REDACT_SECRET`]: `{"secret"}`. The answer is `{}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactSecret {
    /// The value to redact from now on.
    pub secret: String,
}

impl std::fmt::Debug for RedactSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedactSecret([REDACTED])")
    }
}

/// An answer without content: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// An operation a plugin asks of the host (`HostServices::invoke`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOperation {
    /// [`BROWSER_REDIRECT`].
    BrowserRedirect(BrowserRedirect),
    /// [`REDACT_SECRET`].
    RedactSecret(RedactSecret),
    /// [`EXEC`].
    Exec(Exec),
    /// An operation this side does not know (answered `unsupported`).
    Unknown(String),
}

impl HostOperation {
    /// Reads an operation from its name and payload text. An unknown name is
    /// [`HostOperation::Unknown`]; a known one with a malformed payload is an error.
    pub fn parse(op: &str, payload_json: &str) -> Result<Self, WireError> {
        Ok(match op {
            BROWSER_REDIRECT => Self::BrowserRedirect(parse(op, payload_json)?),
            REDACT_SECRET => Self::RedactSecret(parse(op, payload_json)?),
            EXEC => Self::Exec(parse(op, payload_json)?),
            other => Self::Unknown(other.to_string()),
        })
    }

    /// The operation's name.
    pub fn name(&self) -> &str {
        match self {
            Self::BrowserRedirect(_) => BROWSER_REDIRECT,
            Self::RedactSecret(_) => REDACT_SECRET,
            Self::Exec(_) => EXEC,
            Self::Unknown(op) => op,
        }
    }

    /// The payload as JSON text.
    pub fn payload_json(&self) -> String {
        match self {
            Self::BrowserRedirect(p) => to_text(p),
            Self::RedactSecret(p) => to_text(p),
            Self::Exec(p) => to_text(p),
            Self::Unknown(_) => EMPTY_OBJECT.to_string(),
        }
    }
}

/// Answer of [`LOGOUT`]: `{"logged_out": true}` (schemes without the field answer `{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutAnswer {
    /// Whether stored sign-in state was removed.
    #[serde(default)]
    pub logged_out: bool,
}

/// An operation the host asks of a configured connection (`ConnectionAuth::invoke`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionOperation {
    /// [`LOGOUT`], payload `{}`.
    Logout,
    /// [`SHARE_KEY`], payload `{}`.
    ShareKey,
    /// [`SIGN_REQUEST`].
    SignRequest(SignRequest),
    /// An operation this side does not know (answered `unsupported`).
    Unknown(String),
}

impl ConnectionOperation {
    /// Reads an operation from its name and payload text. An unknown name is
    /// [`ConnectionOperation::Unknown`]; a known one with a malformed payload is an error.
    pub fn parse(op: &str, payload_json: &str) -> Result<Self, WireError> {
        Ok(match op {
            LOGOUT => Self::Logout,
            SHARE_KEY => Self::ShareKey,
            SIGN_REQUEST => Self::SignRequest(parse(op, payload_json)?),
            other => Self::Unknown(other.to_string()),
        })
    }

    /// The operation's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Logout => LOGOUT,
            Self::ShareKey => SHARE_KEY,
            Self::SignRequest(_) => SIGN_REQUEST,
            Self::Unknown(op) => op,
        }
    }

    /// The payload as JSON text.
    pub fn payload_json(&self) -> String {
        match self {
            Self::SignRequest(p) => to_text(p),
            Self::Logout | Self::ShareKey | Self::Unknown(_) => EMPTY_OBJECT.to_string(),
        }
    }
}

/// `Credentials.extensions_json`: `{"warnings": [...]}`, or empty text when there is nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsExtensions {
    /// Warnings for the person (e.g. a client certificate about to expire). Entries that are
    /// not strings are skipped when reading.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "strings_only"
    )]
    pub warnings: Vec<String>,
    /// The SMART launch context of the token response (`patient`, `encounter`, `fhirUser`,
    /// granted `scope`, ...): `{"context": {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<LaunchContext>,
}

/// A list's string entries (a peer's odd entry costs that entry, not the whole list).
fn strings_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let values = Vec::<serde_json::Value>::deserialize(d)?;
    Ok(values
        .into_iter()
        .filter_map(|v| match v {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .collect())
}

impl CredentialsExtensions {
    /// The text for the ABI field: empty when there is nothing to say (as ABI 1.0 plugins send).
    pub fn to_json(&self) -> String {
        if self.warnings.is_empty() && self.context.is_none() {
            String::new()
        } else {
            to_text(self)
        }
    }

    /// Reads the ABI field: empty text, `{}` and unknown fields mean no warnings.
    pub fn from_json(json: &str) -> Result<Self, WireError> {
        parse("credentials extensions", json)
    }
}

/// The `extensions_json` that has no fields yet (scheme description, connection context,
/// authorization request): `{}`; unknown fields from a newer peer are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoExtensions {}

impl NoExtensions {
    /// `{}`.
    pub fn to_json(self) -> String {
        EMPTY_OBJECT.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn same_json(text: &str, expected: Value) {
        let got: Value = serde_json::from_str(text).unwrap();
        assert_eq!(got, expected, "{text}");
    }

    #[test]
    fn browser_redirect_payload_and_answer_match_the_documented_json() {
        let op = HostOperation::parse(
            "browser-redirect",
            r#"{"url":"https://login.example/authorize?state=s1","message":"Sign in:","timeout_seconds":300}"#,
        )
        .unwrap();
        let HostOperation::BrowserRedirect(p) = &op else {
            panic!("{op:?}")
        };
        assert_eq!(p.url, "https://login.example/authorize?state=s1");
        assert_eq!(p.message.as_deref(), Some("Sign in:"));
        assert_eq!(p.timeout_seconds, Some(300));
        assert_eq!(op.name(), "browser-redirect");
        same_json(
            &op.payload_json(),
            json!({"url": "https://login.example/authorize?state=s1", "message": "Sign in:",
                   "timeout_seconds": 300}),
        );
        // message and timeout are optional
        let op = HostOperation::parse("browser-redirect", r#"{"url":"https://x/"}"#).unwrap();
        same_json(&op.payload_json(), json!({"url": "https://x/"}));
        // an exact redirect_uri travels as given
        let exact = r#"{"url":"https://x/","redirect_uri":"http://127.0.0.1:8765/callback"}"#;
        let op = HostOperation::parse("browser-redirect", exact).unwrap();
        let HostOperation::BrowserRedirect(p) = &op else {
            panic!("{op:?}")
        };
        assert_eq!(
            p.redirect_uri.as_deref(),
            Some("http://127.0.0.1:8765/callback")
        );
        same_json(
            &op.payload_json(),
            json!({"url": "https://x/", "redirect_uri": "http://127.0.0.1:8765/callback"}),
        );
        // url is not
        let e = HostOperation::parse("browser-redirect", r#"{"message":"m"}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("browser-redirect: missing field `url`"),
            "{e}"
        );
        let a: RedirectAnswer = serde_json::from_str(
            r#"{"redirect_uri":"http://127.0.0.1:5/","query":"code=c&state=s1"}"#,
        )
        .unwrap();
        assert_eq!(a.redirect_uri, "http://127.0.0.1:5/");
        assert_eq!(a.query, "code=c&state=s1");
        same_json(
            &to_text(&a),
            json!({"redirect_uri": "http://127.0.0.1:5/", "query": "code=c&state=s1"}),
        );
    }

    #[test]
    fn redact_secret_payload_matches_and_hides_its_value_from_debug() {
        let op = HostOperation::parse("redact-secret", r#"{"secret":"CANARY-1"}"#).unwrap();
        assert_eq!(
            op,
            HostOperation::RedactSecret(RedactSecret {
                secret: "CANARY-1".into()
            })
        );
        same_json(&op.payload_json(), json!({"secret": "CANARY-1"}));
        assert!(!format!("{op:?}").contains("CANARY"));
        same_json(&to_text(&Empty {}), json!({}));
    }

    #[test]
    fn unknown_operations_fall_back_instead_of_failing() {
        assert_eq!(
            HostOperation::parse("teleport", "not json").unwrap(),
            HostOperation::Unknown("teleport".into())
        );
        assert_eq!(
            ConnectionOperation::parse("rotate", "not json").unwrap(),
            ConnectionOperation::Unknown("rotate".into())
        );
        assert_eq!(
            ConnectionOperation::parse("logout", "").unwrap(),
            ConnectionOperation::Logout
        );
        assert!(ConnectionOperation::parse("sign-request", "{}").is_err());
        assert_eq!(ConnectionOperation::Logout.name(), "logout");
        same_json(&ConnectionOperation::Logout.payload_json(), json!({}));
    }

    #[test]
    fn share_key_answers_with_and_without_a_key() {
        assert_eq!(
            ConnectionOperation::parse("share-key", "").unwrap(),
            ConnectionOperation::ShareKey
        );
        same_json(&ConnectionOperation::ShareKey.payload_json(), json!({}));
        let a: ShareKeyAnswer = serde_json::from_str(r#"{"share_key":"client-a"}"#).unwrap();
        assert_eq!(a.share_key.as_deref(), Some("client-a"));
        for none in ["{}", r#"{"share_key":null}"#] {
            assert_eq!(
                serde_json::from_str::<ShareKeyAnswer>(none)
                    .unwrap()
                    .share_key,
                None
            );
        }
        same_json(&to_text(&ShareKeyAnswer::default()), json!({}));
    }

    #[test]
    fn logout_answer_reads_with_and_without_the_field() {
        let a: LogoutAnswer = serde_json::from_str(r#"{"logged_out":true}"#).unwrap();
        assert!(a.logged_out);
        let a: LogoutAnswer = serde_json::from_str("{}").unwrap();
        assert!(!a.logged_out);
    }

    #[test]
    fn credential_warnings_travel_as_a_warnings_list() {
        let ext = CredentialsExtensions {
            warnings: vec!["certificate expires in 3 days".into()],
            ..CredentialsExtensions::default()
        };
        same_json(
            &ext.to_json(),
            json!({"warnings": ["certificate expires in 3 days"]}),
        );
        assert_eq!(CredentialsExtensions::default().to_json(), "");
        for nothing in ["", "{}", r#"{"other":1}"#] {
            assert_eq!(
                CredentialsExtensions::from_json(nothing).unwrap(),
                CredentialsExtensions::default()
            );
        }
        assert_eq!(
            CredentialsExtensions::from_json(r#"{"warnings":["a","b"]}"#)
                .unwrap()
                .warnings,
            ["a", "b"]
        );
        assert_eq!(
            CredentialsExtensions::from_json(r#"{"warnings":["a",3,null,"b"]}"#)
                .unwrap()
                .warnings,
            ["a", "b"]
        );
        assert!(CredentialsExtensions::from_json(r#"{"warnings":"a"}"#).is_err());
    }

    #[test]
    fn empty_extensions_are_an_object() {
        assert_eq!(NoExtensions::default().to_json(), "{}");
        let _: NoExtensions = serde_json::from_str(r#"{"added-later":true}"#).unwrap();
    }
}
