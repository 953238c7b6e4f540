//! The stable ABI between the fhirconn host and its authentication scheme plugins.
//!
//! This is the only crate in fhirconn that names `abi_stable`. Everything reachable from the
//! root module ([`SchemeLibrary`]) is **frozen at ABI version 1**: a layout change here breaks
//! every plugin already built by a vendor. Later capabilities travel through the `invoke`
//! escape hatches (an operation name plus a JSON payload, answered with JSON or an
//! [`ErrorKind::UNSUPPORTED`] error), or through JSON fields such as `extensions_json`.
//!
//! # Contents
//! - [`SchemeLibrary`] / [`SchemeLibrary_Ref`]: the root module a plugin library exports.
//! - [`AuthScheme`]: one authentication scheme (a library may export several).
//! - [`ConnectionAuth`]: the per-connection object a scheme's `configure` returns.
//! - [`HostServices`]: implemented by the host, passed on every call; the plugin's only way to
//!   reach the network, files, the clock, logs, the person and the credential store.
//! - [`AbiError`] and [`ErrorKind`]: the error that crosses the boundary.
//!
//! Scheme authors do not use this crate directly: `fhirconn-sdk` wraps it in safe traits.
//!
//! # Safety
//! Every `extern "C"` function and trait method implemented on the plugin side must catch
//! panics before they reach the boundary (the SDK does this); an unwinding panic across the
//! boundary aborts the host.

// abi_stable's macros generate `*_Ref` types and impls inside `const _` blocks.
#![allow(non_camel_case_types, non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::{RRef, VersionStrings},
    std_types::{RBox, ROption, RResult, RStr, RString, RVec},
    StableAbi,
};

pub use abi_stable::std_types;

/// The version of the plugin interface, frozen for every plugin built against ABI 1.x.
///
/// abi_stable refuses a library whose interface minor version is *older* than the host's, which
/// is the wrong direction for a plugin host, so this string never moves within major version 1:
/// additions go through `invoke` instead (see the crate docs and ARCHITECTURE.md).
pub const ABI_VERSION: &str = "1.0.0";

/// The major ABI version, as reported by `fhirconn schemes`.
pub const ABI_MAJOR: u32 = 1;

/// The file-name stem every plugin library uses: `libfhirconn_<scheme>.so` on Linux,
/// `libfhirconn_<scheme>.dylib` on macOS, `fhirconn_<scheme>.dll` on Windows, with `-` in the
/// scheme name written as `_`.
pub const LIBRARY_PREFIX: &str = "fhirconn_";

/// A kind of failure, as a stable numeric code.
///
/// This is deliberately not a Rust `enum`: a newer plugin may send a code this host does not
/// know, and an unknown discriminant of a `#[repr(u8)]` enum would be undefined behaviour.
/// Unknown codes are treated like [`ErrorKind::INTERNAL`] by callers.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The configuration is invalid (missing field, unreadable file, bad key...).
    pub const CONFIG: Self = Self(1);
    /// The server refused the credentials (wrong password, `invalid_client`, revoked key...).
    pub const CREDENTIALS_REJECTED: Self = Self(2);
    /// The network failed (DNS, connect, TLS, timeout).
    pub const NETWORK: Self = Self(3);
    /// A peer broke its protocol (non-JSON token response, missing `access_token`...).
    pub const PROTOCOL: Self = Self(4);
    /// A person must sign in first and the call was not allowed to ask them.
    pub const INTERACTION_REQUIRED: Self = Self(5);
    /// A bug or a panic inside the plugin or the host.
    pub const INTERNAL: Self = Self(6);
    /// The operation passed to an `invoke` escape hatch is not known to the callee.
    pub const UNSUPPORTED: Self = Self(7);
}

/// The error that crosses the boundary: a kind plus a message for a person.
///
/// The message must never contain a secret, a request body or a token.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct AbiError {
    /// What kind of failure this is; decides what the caller does next.
    pub kind: ErrorKind,
    /// Lowercase, no trailing period, no secrets.
    pub message: RString,
}

impl AbiError {
    /// Builds an error from a kind and a message.
    pub fn new(kind: ErrorKind, message: impl Into<RString>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// One HTTP header.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name, case-insensitive.
    pub name: RString,
    /// Header value; treat as a secret when `sensitive` is set.
    pub value: RString,
    /// The value is a credential: the host never logs it and redacts it from plugin logs.
    pub sensitive: bool,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: &str = if self.sensitive {
            "[REDACTED]"
        } else {
            &self.value
        };
        f.debug_struct("Header")
            .field("name", &self.name)
            .field("value", &value)
            .finish()
    }
}

/// A TLS client identity: a PEM certificate chain (leaf first) and its PEM private key.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// PEM certificates, the leaf first, then intermediates.
    pub certificate_chain_pem: RString,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), never encrypted at this point.
    pub private_key_pem: RString,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificate_chain_pem", &self.certificate_chain_pem)
            .field("private_key_pem", &"[REDACTED]")
            .finish()
    }
}

/// What a scheme knows about the connection it is configured for.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct ConnectionContext {
    /// The connection id from the configuration file.
    pub connection_id: RString,
    /// The connection's FHIR base URL, as configured.
    pub base_url: RString,
    /// A JSON object reserved for later additions; `{}` in ABI 1.0.
    pub extensions_json: RString,
}

/// Flag for [`AuthRequest::flags`]: the host may talk to a person (device code, browser).
pub const AUTH_FLAG_INTERACTIVE: u32 = 1;
/// Flag for [`AuthRequest::flags`]: ignore stored refresh state and sign in afresh (`login`).
pub const AUTH_FLAG_FORCE_LOGIN: u32 = 2;

/// Why the host asks for credentials.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct AuthRequest {
    /// The connection the credentials are for.
    pub connection: ConnectionContext,
    /// Bit set of `AUTH_FLAG_*`; unknown bits are ignored.
    pub flags: u32,
    /// A JSON object reserved for later additions; `{}` in ABI 1.0.
    pub extensions_json: RString,
}

/// What a connection needs to authenticate its requests.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct Credentials {
    /// Headers to add to every request (e.g. `Authorization`).
    pub headers: RVec<Header>,
    /// A TLS client identity for the FHIR server and the connection's token endpoints.
    pub identity: ROption<ClientIdentity>,
    /// When these credentials stop working, in milliseconds since the Unix epoch.
    /// `None` means they do not expire (basic, static bearer, a certificate).
    pub expires_at_unix_ms: ROption<i64>,
    /// A JSON object reserved for later additions; `{}` or empty in ABI 1.0.
    pub extensions_json: RString,
    /// Present only in the test fixture that proves a changed layout is refused.
    #[cfg(feature = "__fixture-changed-layout")]
    pub fixture_changed_layout: u64,
}

/// A blocking HTTP request a plugin asks the host to send. Its `Debug` shows credential
/// header values as `[REDACTED]` and the body as its length only.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct HttpRequest {
    /// `GET`, `POST`...
    pub method: RString,
    /// Absolute URL.
    pub url: RString,
    /// Request headers; mark credentials `sensitive`.
    pub headers: RVec<Header>,
    /// Request body (may hold a client secret: the host never logs it).
    pub body: RVec<u8>,
    /// A client identity to present; `None` uses the connection's own identity, if any.
    pub identity: ROption<ClientIdentity>,
    /// A JSON object reserved for later additions; `{}` or empty in ABI 1.0.
    pub extensions_json: RString,
}

/// The host's answer to an [`HttpRequest`]. Redirects are never followed for plugins. Its
/// `Debug` shows credential header values (`Set-Cookie`, ...) as `[REDACTED]` and the body
/// (which may hold issued tokens) as its length only.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: RVec<Header>,
    /// Response body, capped by the host.
    pub body: RVec<u8>,
}

/// Header names whose values are credentials whether or not they are marked `sensitive`.
/// A free function (no type or layout of ABI 1.0 changes); the SDK's `Debug` uses it too.
pub fn is_credential_header(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// A header value as `Debug` may show it: `[REDACTED]` when it is marked `sensitive` or its
/// name is a credential header, else the value.
pub fn redacted_header_value<'a>(name: &str, value: &'a str, sensitive: bool) -> &'a str {
    if sensitive || is_credential_header(name) {
        "[REDACTED]"
    } else {
        value
    }
}

/// Headers for `Debug`: `(name, value)` with credential values replaced.
struct DebugHeaders<'a>(&'a [Header]);

impl std::fmt::Debug for DebugHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|h| {
                (
                    h.name.as_str(),
                    redacted_header_value(&h.name, &h.value, h.sensitive),
                )
            }))
            .finish()
    }
}

/// A body for `Debug`: its length, never its bytes (form-encoded secrets, tokens).
struct DebugBody(usize);

impl std::fmt::Debug for DebugBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} bytes]", self.0)
    }
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method.as_str())
            .field("url", &self.url.as_str())
            .field("headers", &DebugHeaders(&self.headers))
            .field("body", &DebugBody(self.body.len()))
            .field("identity", &self.identity)
            .field("extensions_json", &DebugBody(self.extensions_json.len()))
            .finish()
    }
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &DebugHeaders(&self.headers))
            .field("body", &DebugBody(self.body.len()))
            .finish()
    }
}

/// Log levels for [`HostServices::log`].
pub mod log_level {
    /// An error the person should see.
    pub const ERROR: u32 = 1;
    /// Something suspicious.
    pub const WARN: u32 = 2;
    /// Normal progress.
    pub const INFO: u32 = 3;
    /// Detail for `-v`.
    pub const DEBUG: u32 = 4;
    /// Detail for `-vv`.
    pub const TRACE: u32 = 5;
}

/// Static facts about a scheme.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct SchemeDescription {
    /// The scheme's own version (the plugin crate's version).
    pub version: RString,
    /// One line saying what the scheme does.
    pub summary: RString,
    /// The JSON Schema of the scheme's settings (the `auth:` object without `scheme`).
    pub config_schema_json: RString,
    /// The version of fhirconn-sdk the plugin was built with.
    pub sdk_version: RString,
    /// A JSON object reserved for later additions; `{}` in ABI 1.0.
    pub extensions_json: RString,
}

/// The services the host offers a plugin during a call. Implemented by the host.
#[sabi_trait]
pub trait HostServices {
    /// Sends one HTTP request through the host's transport (its TLS roots, proxy, timeouts).
    fn http(&self, request: HttpRequest) -> RResult<HttpResponse, AbiError>;

    /// Reads a file; relative paths resolve against the configuration file's directory.
    fn read_file(&self, path: RStr<'_>) -> RResult<RVec<u8>, AbiError>;

    /// Reads an environment variable (the host may restrict or simulate these).
    fn env_var(&self, name: RStr<'_>) -> ROption<RString>;

    /// The current time in milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> i64;

    /// Blocks the calling thread (e.g. between device-code polls).
    fn sleep_ms(&self, millis: u64);

    /// Logs a message; the host redacts known secrets from it.
    fn log(&self, level: u32, message: RStr<'_>);

    /// Tells the person something (e.g. a device code); returns `true` when the host opened
    /// `url` in a browser for them.
    fn tell_person(&self, message: RStr<'_>, url: ROption<RStr<'_>>) -> bool;

    /// Reads a value from the host's credential store; keys are scoped to the connection.
    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RString>, AbiError>;

    /// Writes a value to the host's credential store.
    fn store_put(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), AbiError>;

    /// Deletes a value from the host's credential store (absent is not an error).
    fn store_delete(&self, key: RStr<'_>) -> RResult<(), AbiError>;

    /// Escape hatch for services added after ABI 1.0: an unknown `op` answers
    /// [`ErrorKind::UNSUPPORTED`].
    #[sabi(last_prefix_field)]
    fn invoke(&self, op: RStr<'_>, payload_json: RStr<'_>) -> RResult<RString, AbiError>;
}

/// A borrowed host-services object, as passed to every plugin call.
pub type HostRef<'a> = HostServices_TO<'a, RRef<'a, ()>>;

/// The per-connection authentication object returned by [`AuthScheme::configure`].
#[sabi_trait]
pub trait ConnectionAuth: Send + Sync {
    /// Produces credentials for the connection. Schemes stay stateless: the host caches the
    /// result until `expires_at_unix_ms` and asks again when it needs fresh credentials.
    fn authorize(&self, request: &AuthRequest, host: HostRef<'_>)
        -> RResult<Credentials, AbiError>;

    /// Escape hatch for operations added after ABI 1.0 (e.g. `logout`).
    #[sabi(last_prefix_field)]
    fn invoke(
        &self,
        op: RStr<'_>,
        payload_json: RStr<'_>,
        host: HostRef<'_>,
    ) -> RResult<RString, AbiError>;
}

/// An owned [`ConnectionAuth`] trait object.
pub type ConnectionAuthBox = ConnectionAuth_TO<'static, RBox<()>>;

/// One authentication scheme.
#[sabi_trait]
pub trait AuthScheme: Send + Sync {
    /// The scheme's registry name, e.g. `basic`, `smart-backend`.
    fn name(&self) -> RString;

    /// Version, summary and configuration schema.
    fn describe(&self) -> SchemeDescription;

    /// Validates the scheme's settings (a JSON object) and builds the per-connection object.
    fn configure(
        &self,
        connection: &ConnectionContext,
        config_json: RStr<'_>,
        host: HostRef<'_>,
    ) -> RResult<ConnectionAuthBox, AbiError>;

    /// Escape hatch for scheme-level operations added after ABI 1.0.
    #[sabi(last_prefix_field)]
    fn invoke(
        &self,
        op: RStr<'_>,
        payload_json: RStr<'_>,
        host: HostRef<'_>,
    ) -> RResult<RString, AbiError>;
}

/// An owned [`AuthScheme`] trait object.
pub type AuthSchemeBox = AuthScheme_TO<'static, RBox<()>>;

/// The root module of a plugin library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = SchemeLibrary_Ref)))]
#[sabi(missing_field(option))]
#[allow(missing_debug_implementations)]
pub struct SchemeLibrary {
    /// The schemes this library provides (usually one).
    #[sabi(last_prefix_field)]
    pub schemes: extern "C" fn() -> RResult<RVec<AuthSchemeBox>, AbiError>,
}

impl RootModule for SchemeLibrary_Ref {
    declare_root_module_statics! {SchemeLibrary_Ref}
    const BASE_NAME: &'static str = "fhirconn_scheme";
    const NAME: &'static str = "fhirconn scheme library";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ABI_VERSION);
}

/// The symbol every plugin library exports; it must equal abi_stable's
/// `ROOT_MODULE_LOADER_NAME` (a unit test checks it).
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Re-exports used by [`export_root_module!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable::{
        library::{CheckTypeLayout, IntoRootModuleResult, LibHeader, RootModuleResult},
        prefix_type::{PrefixTypeTrait, WithMetadata},
        sabi_trait::TD_Opaque,
        std_types::RBox,
    };

    /// Calls the root-module constructor, turning a panic into an error value.
    pub fn call_root_module_loader(f: fn() -> super::SchemeLibrary_Ref) -> RootModuleResult {
        abi_stable::library::__call_root_module_loader(f)
    }
}

/// Wraps a plugin-side scheme into a boxed trait object.
pub fn box_scheme<T: AuthScheme + Send + Sync + 'static>(scheme: T) -> AuthSchemeBox {
    AuthScheme_TO::from_value(scheme, abi_stable::sabi_trait::TD_Opaque)
}

/// Wraps a plugin-side connection object into a boxed trait object.
pub fn box_connection<T: ConnectionAuth + Send + Sync + 'static>(conn: T) -> ConnectionAuthBox {
    ConnectionAuth_TO::from_value(conn, abi_stable::sabi_trait::TD_Opaque)
}

/// Borrows a host-side services implementation as the object passed to plugins.
pub fn host_ref<T: HostServices>(services: &T) -> HostRef<'_> {
    HostServices_TO::from_ptr(RRef::new(services), abi_stable::sabi_trait::TD_Opaque)
}

/// Builds the root module from a function listing the schemes.
pub fn library(
    schemes: extern "C" fn() -> RResult<RVec<AuthSchemeBox>, AbiError>,
) -> SchemeLibrary_Ref {
    use abi_stable::prefix_type::PrefixTypeTrait;
    SchemeLibrary { schemes }.leak_into_prefix()
}

/// Exports the root module of a plugin library. Used by `fhirconn_sdk::export_schemes!`;
/// `$build` is a `fn() -> SchemeLibrary_Ref`.
///
/// This writes by hand what `#[abi_stable::export_root_module]` generates, with `$crate` paths,
/// so that plugin crates need not depend on `abi_stable` themselves.
#[macro_export]
macro_rules! export_root_module {
    ($build:path) => {
        #[no_mangle]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            extern "C" fn __fhirconn_erased_module() -> $crate::__private::RootModuleResult {
                $crate::__private::call_root_module_loader($build)
            }
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::SchemeLibrary_Ref>(
                    __fhirconn_erased_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

pub mod loading;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    #[test]
    fn sensitive_header_debug_is_redacted() {
        let h = Header {
            name: "Authorization".into(),
            value: "Bearer CANARY-abi-1".into(),
            sensitive: true,
        };
        let dbg = format!("{h:?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        let id = ClientIdentity {
            certificate_chain_pem: "cert".into(),
            private_key_pem: "CANARY-key".into(),
        };
        assert!(!format!("{id:?}").contains("CANARY"));
    }

    #[test]
    fn http_request_and_response_debug_hide_credentials_and_bodies() {
        let header = |name: &str, value: &str, sensitive: bool| Header {
            name: name.into(),
            value: value.into(),
            sensitive,
        };
        let req = HttpRequest {
            method: "POST".into(),
            url: "https://idp.example/token".into(),
            headers: vec![
                header("Authorization", "Basic CANARY-basic", false),
                header("X-Custom", "CANARY-marked", true),
                header("Accept", "application/json", false),
            ]
            .into(),
            body: b"client_secret=CANARY-body".to_vec().into(),
            identity: ROption::RSome(ClientIdentity {
                certificate_chain_pem: "cert".into(),
                private_key_pem: "CANARY-key".into(),
            }),
            extensions_json: "{}".into(),
        };
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(
            dbg.contains("application/json") && dbg.contains("[25 bytes]"),
            "{dbg}"
        );
        let resp = HttpResponse {
            status: 200,
            headers: vec![header("Set-Cookie", "s=CANARY-cookie", false)].into(),
            body: br#"{"access_token":"CANARY-token"}"#.to_vec().into(),
        };
        let dbg = format!("{resp:#?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(dbg.contains("200"), "{dbg}");
    }

    #[test]
    fn interface_version_is_frozen_at_1_0_0() {
        assert_eq!(ABI_VERSION, "1.0.0");
        assert_eq!(
            <SchemeLibrary_Ref as RootModule>::VERSION_STRINGS.version,
            "1.0.0"
        );
    }
}
