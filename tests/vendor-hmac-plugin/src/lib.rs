//! `vendor-hmac`: a vendor API that signs every request with HMAC-SHA256 ("Vendor-HMAC-SHA256
//! v1"), written against `fhirconn-sdk` alone and loaded into an unchanged `fhirconn` binary.
//! It shows the per-request signing contract through the SDK's [`SigningScheme`]: the scheme
//! declares that it signs requests, and the host asks its [`Signer`] to sign every request it
//! sends (each retry and redirect hop again) with the method, the absolute URL, the headers,
//! the SHA-256 of the body and the time.
//!
//! The signature: `x-vendor-date` (Unix seconds), `x-vendor-nonce` (random, 32 hex
//! characters) and `x-vendor-signature: keyId=<key-id>,signature=<hex HMAC-SHA256>` over
//! `VENDOR-HMAC-SHA256\n<METHOD>\n<path?query>\n<date>\n<nonce>\n<hex SHA-256 of the body>`.
//!
//! Settings: `key-id`, and exactly one of `key`, `key-file`, `key-env`.

#![forbid(unsafe_code)]

use fhirconn_sdk::settings::SecretSetting;
use fhirconn_sdk::signing::{self, Signer, SigningScheme};
use fhirconn_sdk::wire::{SignAnswer, SignRequest, WireHeader};
use fhirconn_sdk::{schemars, serde, Error, ExposeSecret, Host, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The first line of the string to sign.
pub const ALGORITHM: &str = "VENDOR-HMAC-SHA256";

/// The `vendor-hmac` scheme.
#[derive(Debug, Default)]
pub struct VendorHmac;

/// Vendor HMAC request signing
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct VendorHmacSettings {
    /// the key id the vendor issued
    #[schemars(length(min = 1))]
    key_id: String,
    /// the shared signing key
    key: SecretSetting,
}

/// A configured connection: the key id and the keyed MAC, ready to sign (`Debug` shows no
/// secret).
pub struct VendorHmacConnection {
    key_id: String,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for VendorHmacConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorHmacConnection")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningScheme for VendorHmac {
    const NAME: &'static str = "vendor-hmac";
    const SUMMARY: &'static str = "a vendor API that signs every request with HMAC-SHA256";
    type Settings = VendorHmacSettings;
    type Signer = VendorHmacConnection;

    fn signer(&self, s: VendorHmacSettings, _host: &Host<'_>) -> Result<VendorHmacConnection> {
        let key = s.key.expose_secret().trim().as_bytes();
        if key.len() < 16 {
            return Err(Error::config("key: must be at least 16 bytes"));
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .map_err(|_| Error::config("key: not usable as an HMAC key"))?;
        Ok(VendorHmacConnection {
            key_id: s.key_id,
            mac,
        })
    }
}

impl VendorHmacConnection {
    /// The three signature headers of one request (the nonce given: tests fix it).
    pub fn signature(&self, request: &SignRequest, nonce: &str) -> Result<SignAnswer> {
        let date = request.unix_time.to_string();
        let text = format!(
            "{ALGORITHM}\n{}\n{}\n{date}\n{nonce}\n{}",
            request.method,
            signing::request_target(request)?,
            request.body_sha256
        );
        let mut mac = self.mac.clone();
        mac.update(text.as_bytes());
        let signature = signing::hex(&mac.finalize().into_bytes());
        Ok(SignAnswer {
            headers: vec![
                WireHeader::new("x-vendor-date", date),
                WireHeader::new("x-vendor-nonce", nonce),
                WireHeader::sensitive(
                    "x-vendor-signature",
                    format!("keyId={},signature={signature}", self.key_id),
                ),
            ],
        })
    }
}

/// Nothing to fetch (the default `authorize`): the key signs each request.
impl Signer for VendorHmacConnection {
    fn sign(&self, request: &SignRequest, _host: &Host<'_>) -> Result<SignAnswer> {
        self.signature(request, &fhirconn_sdk::oauth::random_hex(16)?)
    }
}

fhirconn_sdk::export_schemes!(VendorHmac);

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_sdk::serde_json::json;
    use fhirconn_sdk::testing::MockHost;
    use fhirconn_sdk::wire::EMPTY_BODY_SHA256;
    use fhirconn_sdk::{Connection, Scheme};

    fn connection(mock: &MockHost) -> Box<dyn Connection> {
        mock.configure(
            &VendorHmac,
            json!({"key-id": "k1", "key": "0123456789abcdef0123"}),
        )
        .unwrap()
    }

    #[test]
    fn signs_method_target_date_nonce_and_body_hash() {
        let mock = MockHost::new();
        let conn = connection(&mock);
        let request = SignRequest {
            method: "GET".into(),
            url: "https://api.vendor.example/fhir/Patient?name=a%20b#frag".into(),
            headers: vec![],
            body_sha256: EMPTY_BODY_SHA256.into(),
            unix_time: 1_700_000_000,
        };
        let answer = mock.with_host(|h| conn.sign_request(&request, h)).unwrap();
        let names: Vec<_> = answer.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            ["x-vendor-date", "x-vendor-nonce", "x-vendor-signature"]
        );
        assert_eq!(answer.headers[0].value, "1700000000");
        assert_eq!(answer.headers[1].value.len(), 32);
        assert!(answer.headers[2].sensitive && answer.headers[2].value.starts_with("keyId=k1,"));
        // Two signatures of the same request differ (fresh nonce): a replay is detectable.
        let again = mock.with_host(|h| conn.sign_request(&request, h)).unwrap();
        assert_ne!(answer.headers[2].value, again.headers[2].value);
        // Signed over `path?query` as sent: the fragment is not part of it.
        let text = "VENDOR-HMAC-SHA256\nGET\n/fhir/Patient?name=a%20b\n1700000000\n";
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"0123456789abcdef0123").unwrap();
        mac.update(format!("{text}{}\n{EMPTY_BODY_SHA256}", answer.headers[1].value).as_bytes());
        let expected = signing::hex(&mac.finalize().into_bytes());
        assert_eq!(
            answer.headers[2].value,
            format!("keyId=k1,signature={expected}")
        );
    }

    #[test]
    fn the_sdk_test_helpers_build_the_payload_as_the_host_does() {
        let mock = MockHost::new();
        let conn = connection(&mock);
        let request = fhirconn_sdk::testing::sign_request(
            "POST",
            "https://h/fhir/Patient",
            b"abc",
            1_700_000_000,
        );
        assert_eq!(
            request.body_sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let answer = mock.sign(conn.as_ref(), &request).unwrap();
        let signed = fhirconn_sdk::testing::signed_header(&answer, "X-Vendor-Signature").unwrap();
        assert!(signed.starts_with("keyId=k1,signature="), "{signed}");
        assert_eq!(signed.len(), "keyId=k1,signature=".len() + 64);
    }

    #[test]
    fn settings_are_checked_and_the_key_is_secret() {
        let mock = MockHost::new();
        let e = mock
            .configure(&VendorHmac, json!({"key-id": "k1", "key": "short"}))
            .err()
            .unwrap();
        assert!(e.message().contains("at least 16 bytes"), "{e}");
        assert_eq!(
            VendorHmac.config_schema()["properties"]["key"]["writeOnly"],
            true
        );
        assert!(VendorHmac.signs_requests());
    }
}
