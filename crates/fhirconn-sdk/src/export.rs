//! The FFI layer: adapts [`Scheme`]/[`Connection`] to the ABI traits, catching every panic.

use crate::error::Error;
use crate::host::Host;
use crate::scheme::{
    AuthRequest, Connection, ConnectionInfo, CredentialHeader, Credentials, Scheme,
};
use fhirconn_abi::{
    std_types::{RResult, RStr, RString, RVec},
    AbiError, AuthRequest as AbiAuthRequest, AuthScheme, AuthSchemeBox, ConnectionAuth,
    ConnectionAuthBox, ConnectionContext, Credentials as AbiCredentials, ErrorKind, Header,
    HostRef, SchemeDescription, AUTH_FLAG_FORCE_LOGIN, AUTH_FLAG_INTERACTIVE,
};
use secrecy::ExposeSecret;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::UNIX_EPOCH;

/// Runs `f`, turning a panic into an `internal` error. The panic payload is shown only when it
/// is a string literal: formatted panic messages may carry secrets.
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> RResult<T, AbiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(payload) => {
            let detail = match payload.downcast_ref::<&'static str>() {
                Some(s) => format!(": {s}"),
                None => String::new(),
            };
            RResult::RErr(AbiError::new(
                ErrorKind::INTERNAL,
                format!("the plugin panicked in {what}{detail}"),
            ))
        }
    }
}

static QUIET_PANICS: Once = Once::new();

/// Replaces this library's panic hook (each cdylib has its own std) with one that prints only
/// the location: the default hook would print formatted messages, which may hold secrets.
fn install_panic_hook() {
    QUIET_PANICS.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_else(|| "an unknown location".to_string());
            eprintln!("fhirconn plugin panicked at {location} (message withheld)");
        }));
    });
}

fn to_info(c: &ConnectionContext) -> ConnectionInfo {
    ConnectionInfo {
        id: c.connection_id.to_string(),
        base_url: c.base_url.to_string(),
    }
}

fn parse_payload(payload: RStr<'_>) -> Result<serde_json::Value, Error> {
    if payload.as_str().trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(payload.as_str())
        .map_err(|e| Error::protocol(format!("invoke payload is not JSON: {e}")))
}

pub(crate) fn credentials_to_abi(c: Credentials) -> AbiCredentials {
    let headers: RVec<Header> = c
        .headers
        .iter()
        .map(|h| match h {
            CredentialHeader::Plain(n, v) => Header {
                name: n.as_str().into(),
                value: v.as_str().into(),
                sensitive: false,
            },
            CredentialHeader::Secret(n, v) => Header {
                name: n.as_str().into(),
                value: v.expose_secret().into(),
                sensitive: true,
            },
        })
        .collect();
    AbiCredentials {
        headers,
        identity: c.identity.as_ref().map(|i| i.to_abi()).into(),
        expires_at_unix_ms: c
            .expires_at
            .map(|t| match t.duration_since(UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
                Err(_) => 0,
            })
            .into(),
        extensions_json: crate::wire::CredentialsExtensions {
            warnings: c.warnings,
            context: c.context,
        }
        .to_json()
        .into(),
        #[cfg(feature = "__fixture-changed-layout")]
        fixture_changed_layout: 0,
    }
}

/// A [`Scheme`] behind the ABI trait.
struct SchemeAdapter {
    inner: Box<dyn Scheme>,
    version: &'static str,
}

impl AuthScheme for SchemeAdapter {
    fn name(&self) -> RString {
        match catch_unwind(AssertUnwindSafe(|| self.inner.name().to_string())) {
            Ok(n) => n.into(),
            Err(_) => RString::from("<panicked>"),
        }
    }

    fn describe(&self) -> SchemeDescription {
        let (summary, schema, signs_requests) = match catch_unwind(AssertUnwindSafe(|| {
            (
                self.inner.summary().to_string(),
                self.inner.config_schema().to_string(),
                self.inner.signs_requests(),
            )
        })) {
            Ok(v) => v,
            Err(_) => ("<panicked>".to_string(), "{}".to_string(), false),
        };
        SchemeDescription {
            version: self.version.into(),
            summary: summary.into(),
            config_schema_json: schema.into(),
            sdk_version: crate::SDK_VERSION.into(),
            extensions_json: crate::wire::SchemeExtensions { signs_requests }
                .to_json()
                .into(),
        }
    }

    fn configure(
        &self,
        connection: &ConnectionContext,
        config_json: RStr<'_>,
        host: HostRef<'_>,
    ) -> RResult<ConnectionAuthBox, AbiError> {
        guard("configure", || {
            let host = Host::from_raw(host);
            let settings: serde_json::Value = serde_json::from_str(config_json.as_str())
                .map_err(|e| Error::config(format!("settings are not a JSON object: {e}")))?;
            let info = to_info(connection);
            let conn = self.inner.configure(&info, settings, &host)?;
            Ok(fhirconn_abi::box_connection(ConnectionAdapter {
                inner: conn,
            }))
        })
    }

    fn invoke(
        &self,
        op: RStr<'_>,
        payload_json: RStr<'_>,
        host: HostRef<'_>,
    ) -> RResult<RString, AbiError> {
        guard("invoke", || {
            let host = Host::from_raw(host);
            let payload = parse_payload(payload_json)?;
            let out = self.inner.invoke(op.as_str(), payload, &host)?;
            Ok(out.to_string().into())
        })
    }
}

/// A [`Connection`] behind the ABI trait.
struct ConnectionAdapter {
    inner: Box<dyn Connection>,
}

impl ConnectionAuth for ConnectionAdapter {
    fn authorize(
        &self,
        request: &AbiAuthRequest,
        host: HostRef<'_>,
    ) -> RResult<AbiCredentials, AbiError> {
        guard("authorize", || {
            let host = Host::from_raw(host);
            let req = AuthRequest {
                connection: to_info(&request.connection),
                interactive: request.flags & AUTH_FLAG_INTERACTIVE != 0,
                force_login: request.flags & AUTH_FLAG_FORCE_LOGIN != 0,
            };
            self.inner.authorize(&req, &host).map(credentials_to_abi)
        })
    }

    fn invoke(
        &self,
        op: RStr<'_>,
        payload_json: RStr<'_>,
        host: HostRef<'_>,
    ) -> RResult<RString, AbiError> {
        guard("invoke", || {
            let host = Host::from_raw(host);
            if op.as_str() == crate::wire::SHARE_KEY {
                let answer = crate::wire::ShareKeyAnswer {
                    share_key: self.inner.share_key(),
                };
                return serde_json::to_string(&answer)
                    .map(RString::from)
                    .map_err(|e| Error::internal(format!("share-key answer: {e}")));
            }
            if op.as_str() == crate::wire::SIGN_REQUEST {
                // The per-request path: typed in, typed out, no `Value` in between.
                let request: crate::wire::SignRequest = serde_json::from_str(payload_json.as_str())
                    .map_err(|e| Error::protocol(format!("sign-request payload: {e}")))?;
                let answer = self.inner.sign_request(&request, &host)?;
                return serde_json::to_string(&answer)
                    .map(RString::from)
                    .map_err(|e| Error::internal(format!("sign-request answer: {e}")));
            }
            let payload = parse_payload(payload_json)?;
            let out = self.inner.invoke(op.as_str(), payload, &host)?;
            Ok(out.to_string().into())
        })
    }
}

/// Boxes a scheme for the root module; `version` is the plugin crate's version.
pub fn boxed_scheme(scheme: Box<dyn Scheme>, version: &'static str) -> AuthSchemeBox {
    fhirconn_abi::box_scheme(SchemeAdapter {
        inner: scheme,
        version,
    })
}

/// Builds the scheme list for the root module, catching a panic in any constructor.
pub fn collect_schemes(
    build: impl FnOnce() -> Vec<AuthSchemeBox>,
) -> RResult<RVec<AuthSchemeBox>, AbiError> {
    install_panic_hook();
    guard("the scheme list", || Ok(build().into()))
}

/// Implementation details of [`crate::export_schemes!`].
#[doc(hidden)]
pub mod __private {
    pub use super::{boxed_scheme, collect_schemes};
    pub use fhirconn_abi::{
        export_root_module, library,
        std_types::{RResult, RVec},
        AbiError, AuthSchemeBox, SchemeLibrary_Ref,
    };
}

/// Exports the schemes of a plugin library: its root module, with every entry point wrapped
/// in `catch_unwind`.
///
/// ```text
/// fhirconn_sdk::export_schemes!(MyScheme::default(), MyOtherScheme);
/// ```
///
/// Each argument is an expression whose type implements [`Scheme`]. Use it once per library,
/// in a crate with `crate-type = ["cdylib", "rlib"]`.
#[macro_export]
macro_rules! export_schemes {
    ($($scheme:expr),+ $(,)?) => {
        #[doc(hidden)]
        extern "C" fn __fhirconn_schemes() -> $crate::__private::RResult<
            $crate::__private::RVec<$crate::__private::AuthSchemeBox>,
            $crate::__private::AbiError,
        > {
            $crate::__private::collect_schemes(|| {
                ::std::vec![$(
                    $crate::__private::boxed_scheme(
                        ::std::boxed::Box::new($scheme),
                        ::std::env!("CARGO_PKG_VERSION"),
                    )
                ),+]
            })
        }

        #[doc(hidden)]
        fn __fhirconn_root_module() -> $crate::__private::SchemeLibrary_Ref {
            $crate::__private::library(__fhirconn_schemes)
        }

        $crate::__private::export_root_module!(__fhirconn_root_module);
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockHost;

    struct Panicky;
    impl Scheme for Panicky {
        fn name(&self) -> &str {
            "panicky"
        }
        fn summary(&self) -> &str {
            "panics"
        }
        fn config_schema(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn configure(
            &self,
            _c: &ConnectionInfo,
            settings: serde_json::Value,
            _h: &Host<'_>,
        ) -> Result<Box<dyn Connection>, Error> {
            panic!("secret in message: {}", settings["password"]);
        }
    }

    #[test]
    fn a_panic_in_configure_becomes_an_internal_error_without_the_message() {
        install_panic_hook();
        let adapter = SchemeAdapter {
            inner: Box::new(Panicky),
            version: "0.0.0",
        };
        let mock = MockHost::new();
        let ctx = ConnectionContext {
            connection_id: "c".into(),
            base_url: "http://x".into(),
            extensions_json: "{}".into(),
        };
        let res = mock.with_raw(|raw| {
            adapter
                .configure(&ctx, RStr::from(r#"{"password":"CANARY-panic"}"#), raw)
                .into_result()
                .map(|_| ())
        });
        let err = res.unwrap_err();
        assert_eq!(err.kind, ErrorKind::INTERNAL);
        assert!(
            err.message.contains("panicked in configure"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("CANARY"), "{}", err.message);
    }

    #[test]
    fn literal_panic_messages_are_kept() {
        let r: RResult<(), AbiError> = guard("authorize", || panic!("static reason"));
        let e = r.into_result().unwrap_err();
        assert_eq!(
            e.message.as_str(),
            "the plugin panicked in authorize: static reason"
        );
    }
}
