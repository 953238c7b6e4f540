//! The fhirconn plugin SDK: everything a scheme author needs, over plain Rust types.
//!
//! A scheme implements [`Scheme`] (settings → a [`Connection`]) and [`Connection`]
//! (→ [`Credentials`]), then exports itself from a `cdylib` with [`export_schemes!`]. The SDK
//! builds the ABI root module, converts types, and wraps every entry point in `catch_unwind`:
//! a panicking scheme yields an `internal` error for its connections; the host lives on.
//!
//! # Contents
//! - [`Scheme`], [`Connection`], [`Credentials`], [`AuthRequest`], [`ConnectionInfo`]
//! - [`Host`]: the host's services (HTTP, files, env, clock, logs, person, credential store)
//! - [`Error`] / [`ErrorKind`]: typed errors
//! - [`settings`]: declare a scheme's settings once, as a serde struct whose JSON Schema is
//!   derived (schemars); [`SecretSetting`] is a secret written as `x`, `x-file` or `x-env`
//! - [`SecretSource`] and [`Secret`]: the `x` / `x-file` / `x-env` convention, redacted values
//! - [`HttpRequest`]: `form`, `json` bodies
//! - [`oauth`]: OAuth once for every token scheme: discovery (OIDC, SMART), token requests with
//!   every client authentication method, token-response validation, device code, refresh,
//!   PKCE; [`Memo`] caches a discovered endpoint per connection; [`www_authenticate`] reads
//!   challenges
//! - [`flows`]: token flows over [`oauth`] shared by schemes: cloud metadata endpoints,
//!   federated token files, device code, authorization code with PKCE, stored sign-ins bound to
//!   what they were issued for, authority-pinned challenges and discovery
//! - `identity` (feature `identity`): PEM and PKCS#12 private keys and certificate chains
//!   → a client identity (mTLS)
//! - [`signing`]: [`signing::SigningScheme`] and [`signing::Signer`] make a per-request
//!   signing scheme (the SDK supplies its `Scheme` and `Connection`)
//! - [`testing`]: [`testing::MockHost`] (a simulated host for unit tests,
//!   `configure_and_authorize`), `connection_info()`, `auth_request()`, `header_value()`
//!
//! # Security
//! Schemes never open sockets, read files or environment variables themselves: the host
//! applies TLS roots, proxies, timeouts and redirect rules (plugins' requests never follow
//! redirects). Error messages must never contain secrets, request bodies or tokens; token
//! endpoint failures should show the OAuth `error` and `error_description` only.
//!
//! ```
//! use fhirconn_sdk::serde_json::Value;
//! use fhirconn_sdk::settings::{self, SecretSetting};
//! use fhirconn_sdk::{
//!     schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Host, Result, Scheme,
//!     SecretString,
//! };
//!
//! /// A static API key header
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! #[serde(crate = "fhirconn_sdk::serde")]
//! #[serde(rename_all = "kebab-case", deny_unknown_fields)]
//! #[schemars(crate = "fhirconn_sdk::schemars")]
//! struct ApiKeySettings {
//!     /// header name
//!     #[schemars(length(min = 1))]
//!     header: Option<String>,
//!     /// API key: `key`, `key-file` or `key-env`
//!     key: SecretSetting,
//! }
//!
//! /// `X-Api-Key: <key>` on every request.
//! struct ApiKey;
//! struct ApiKeyConnection(String, SecretString);
//!
//! impl Scheme for ApiKey {
//!     fn name(&self) -> &str { "api-key" }
//!     fn summary(&self) -> &str { "a static API key header" }
//!     fn config_schema(&self) -> Value { settings::schema::<ApiKeySettings>() }
//!     fn configure(&self, _c: &ConnectionInfo, settings: Value, host: &Host<'_>)
//!         -> Result<Box<dyn Connection>>
//!     {
//!         let s: ApiKeySettings = settings::parse(settings, host)?;
//!         let header = s.header.unwrap_or_else(|| "X-Api-Key".into());
//!         Ok(Box::new(ApiKeyConnection(header, s.key.into_secret())))
//!     }
//! }
//!
//! impl Connection for ApiKeyConnection {
//!     fn authorize(&self, _r: &AuthRequest, _h: &Host<'_>) -> Result<Credentials> {
//!         Ok(Credentials::new().secret_header(&self.0, self.1.clone()))
//!     }
//! }
//!
//! fhirconn_sdk::export_schemes!(ApiKey);
//!
//! // Unit tests run a scheme against a simulated host:
//! let mock = fhirconn_sdk::testing::MockHost::new().with_env("KEY", "k-1");
//! let creds = mock.configure_and_authorize(&ApiKey, fhirconn_sdk::serde_json::json!({"key-env": "KEY"}));
//! let value = fhirconn_sdk::testing::header_value(&creds.unwrap(), "X-Api-Key");
//! assert_eq!(value.as_deref(), Some("k-1"));
//! ```

#![warn(missing_docs)]

mod error;
mod export;
pub mod flows;
mod host;
#[cfg(feature = "identity")]
pub mod identity;
#[cfg(feature = "keys")]
pub mod keys;
mod memo;
pub mod oauth;
mod scheme;
mod secret;
pub mod settings;
pub mod signing;
pub mod testing;
pub mod wire;
pub mod www_authenticate;

pub use error::{Error, ErrorKind, Result};
#[doc(hidden)]
pub use export::__private;
pub use host::{
    form_urlencode, form_urlencode_component, ClientIdentity, Host, HttpRequest, HttpResponse,
    INSTANCE_METADATA,
};
pub use memo::Memo;
pub use scheme::{AuthRequest, Connection, ConnectionInfo, CredentialHeader, Credentials, Scheme};
pub use secret::{ExposeSecret, Secret, SecretBox, SecretSource, SecretString};
pub use settings::SecretSetting;

/// The version of this SDK, recorded in every scheme's description.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ABI version plugins built with this SDK speak.
pub const ABI_VERSION: &str = fhirconn_abi::ABI_VERSION;

pub use schemars;
pub use serde;
pub use serde_json;
