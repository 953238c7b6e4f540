//! Per-request signing: the `sign-request` connection operation and the scheme extension that
//! declares it (AWS SigV4, HTTP message signatures, DPoP, vendor HMAC schemes).
//!
//! A scheme that signs every request says so in its description's `extensions_json`
//! (`{"signs_requests": true}`, [`SchemeExtensions`]). For such a connection the host first
//! adds the scheme's cached credentials (headers, client identity) as for any scheme, then, for
//! every request it sends — each retry and each redirect hop again — calls the connection's
//! `invoke("sign-request", `[`SignRequest`]`)` and adds the headers of the [`SignAnswer`].
//! A scheme without the extension is never asked.

use serde::{Deserialize, Serialize};

/// Connection operation: sign one request (payload [`SignRequest`], answer [`SignAnswer`]).
pub const SIGN_REQUEST: &str = "sign-request";

/// SHA-256 of the empty body in lowercase hex: what a streamed `GET` is signed with.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The scheme description's `extensions_json`: `{}` or `{"signs_requests": true}`; unknown
/// fields from a newer peer are ignored, and ABI 1.0 plugins send `{}` or nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemeExtensions {
    /// The host must call [`SIGN_REQUEST`] for every request of the scheme's connections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signs_requests: bool,
}

impl SchemeExtensions {
    /// The text for the ABI field (`{}` when nothing is declared).
    pub fn to_json(&self) -> String {
        super::to_text(self)
    }

    /// Reads the ABI field: empty text and `{}` declare nothing.
    pub fn from_json(json: &str) -> Result<Self, super::WireError> {
        super::parse("scheme extensions", json)
    }
}

/// One header of a request to sign or of a signature: `{"name", "value", "sensitive"}`.
/// A sensitive value (a session token, a signature) is redacted by the host and hidden from
/// `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHeader {
    /// Header name as sent (compare case-insensitively).
    pub name: String,
    /// Header value.
    pub value: String,
    /// Whether the value must be treated as a secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
}

impl WireHeader {
    /// A header that is not secret.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            sensitive: false,
        }
    }

    /// A header whose value is a secret.
    pub fn sensitive(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            sensitive: true,
            ..Self::new(name, value)
        }
    }
}

impl std::fmt::Debug for WireHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.sensitive {
            "[REDACTED]"
        } else {
            &self.value
        };
        write!(f, "{}: {}", self.name, value)
    }
}

/// Payload of [`SIGN_REQUEST`]: `{"method", "url", "headers", "body_sha256", "unix_time"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// HTTP method, upper case (`GET`, `POST`, ...).
    pub method: String,
    /// The absolute URL the request goes to, query included (percent-encoded as sent).
    pub url: String,
    /// Every header the host will send, the scheme's own credential headers included
    /// (`Host` is not among them: it is the authority of `url`).
    #[serde(default)]
    pub headers: Vec<WireHeader>,
    /// SHA-256 of the request body in lowercase hex ([`EMPTY_BODY_SHA256`] for none).
    pub body_sha256: String,
    /// The time of signing, seconds since the Unix epoch (the host's clock).
    pub unix_time: u64,
}

/// Answer of [`SIGN_REQUEST`]: `{"headers": [...]}`, added to the request (replacing headers
/// of the same names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignAnswer {
    /// Headers to add.
    #[serde(default)]
    pub headers: Vec<WireHeader>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn sign_request_and_answer_match_the_documented_json() {
        let text = r#"{"method":"POST","url":"https://h.example/r4/Patient?_count=1",
            "headers":[{"name":"content-type","value":"application/fhir+json"},
                       {"name":"authorization","value":"Bearer T","sensitive":true}],
            "body_sha256":"abc","unix_time":1700000000}"#;
        let r: SignRequest = serde_json::from_str(text).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.headers[1],
            WireHeader::sensitive("authorization", "Bearer T")
        );
        assert_eq!(r.unix_time, 1_700_000_000);
        let back: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(text).unwrap());
        assert!(!format!("{r:?}").contains("Bearer T"));

        let a = SignAnswer {
            headers: vec![
                WireHeader::new("x-amz-date", "20150830T123600Z"),
                WireHeader::sensitive("x-amz-security-token", "S"),
            ],
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({"headers": [{"name": "x-amz-date", "value": "20150830T123600Z"},
                               {"name": "x-amz-security-token", "value": "S", "sensitive": true}]})
        );
        assert_eq!(
            serde_json::from_str::<SignAnswer>("{}").unwrap(),
            SignAnswer::default()
        );
    }

    #[test]
    fn scheme_extensions_declare_signing_only_when_set() {
        assert_eq!(SchemeExtensions::default().to_json(), "{}");
        let on = SchemeExtensions {
            signs_requests: true,
        };
        assert_eq!(on.to_json(), r#"{"signs_requests":true}"#);
        for nothing in ["", "{}", r#"{"later":1}"#] {
            assert_eq!(
                SchemeExtensions::from_json(nothing).unwrap(),
                SchemeExtensions::default()
            );
        }
        assert_eq!(SchemeExtensions::from_json(&on.to_json()).unwrap(), on);
    }

    #[test]
    fn the_empty_body_hash_is_sha256_of_nothing() {
        use sha2::Digest;
        assert_eq!(hex(&sha2::Sha256::digest(b"")), EMPTY_BODY_SHA256);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
