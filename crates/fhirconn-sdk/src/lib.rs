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
//! - [`SecretSource`] and [`Secret`]: the `x` / `x-file` / `x-env` convention, redacted values
//! - [`HostHttpClient`] (feature `oauth2`): oauth2/openidconnect's `SyncHttpClient` over [`Host`]
//! - [`testing::MockHost`]: a simulated host for unit tests
//!
//! # Security
//! Schemes never open sockets, read files or environment variables themselves: the host
//! applies TLS roots, proxies, timeouts and redirect rules (plugins' requests never follow
//! redirects). Error messages must never contain secrets, request bodies or tokens; token
//! endpoint failures should show the OAuth `error` and `error_description` only.
//!
//! ```
//! use fhirconn_sdk::{
//!     AuthRequest, Connection, ConnectionInfo, Credentials, Host, Result, Scheme, SecretSource,
//!     SecretString,
//! };
//! use fhirconn_sdk::serde_json::{json, Value};
//!
//! /// `X-Api-Key: <key>` on every request.
//! struct ApiKey;
//! struct ApiKeyConnection(SecretString);
//!
//! impl Scheme for ApiKey {
//!     fn name(&self) -> &str { "api-key" }
//!     fn summary(&self) -> &str { "a static API key header" }
//!     fn config_schema(&self) -> Value {
//!         let mut props = SecretSource::schema_properties("key", "API key");
//!         json!({"type": "object", "properties": props, "additionalProperties": false})
//!     }
//!     fn configure(&self, _c: &ConnectionInfo, settings: Value, host: &Host<'_>)
//!         -> Result<Box<dyn Connection>>
//!     {
//!         let settings = settings.as_object().cloned().unwrap_or_default();
//!         let key = SecretSource::resolve(&settings, "key", true, host)?.expect("required");
//!         Ok(Box::new(ApiKeyConnection(key)))
//!     }
//! }
//!
//! impl Connection for ApiKeyConnection {
//!     fn authorize(&self, _r: &AuthRequest, _h: &Host<'_>) -> Result<Credentials> {
//!         Ok(Credentials::new().secret_header("X-Api-Key", self.0.clone()))
//!     }
//! }
//!
//! fhirconn_sdk::export_schemes!(ApiKey);
//! # fn main() {}
//! ```

mod error;
mod export;
mod host;
#[cfg(feature = "oauth2")]
mod http;
pub mod oauth;
mod scheme;
mod secret;
pub mod testing;

pub use error::{Error, ErrorKind, Result};
#[doc(hidden)]
pub use export::__private;
pub use host::{
    form_urlencode, form_urlencode_component, ClientIdentity, Host, HttpRequest, HttpResponse,
};
#[cfg(feature = "oauth2")]
pub use http::{HostHttpClient, HostHttpError};
pub use scheme::{
    parse_settings, AuthRequest, Connection, ConnectionInfo, CredentialHeader, Credentials, Scheme,
};
pub use secret::{ExposeSecret, Secret, SecretBox, SecretSource, SecretString};

/// The version of this SDK, recorded in every scheme's description.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ABI version plugins built with this SDK speak.
pub const ABI_VERSION: &str = fhirconn_abi::ABI_VERSION;

pub use serde_json;
