//! The plugin bridge: the only module of the host that names ABI types (`fhirconn_abi`, the
//! `abi_stable` std types, the `sabi_trait` objects) and calls into plugins. The rest of the
//! host sees plain Rust: [`PluginScheme`], [`PluginConnection`], [`PluginCredentials`],
//! [`CallError`].
//!
//! Every call into a plugin runs on a blocking thread (`spawn_blocking`: plugins are
//! blocking and sans-IO, their callbacks block on the runtime); a call that panicked through
//! or was cancelled becomes [`CallError::NoReturn`]; a plugin's error message is redacted,
//! then sanitised ([`crate::text::plugin_text`]) once, here. Secrets the plugin hands back
//! (credential header values, client keys) are registered with the redactor before anyone
//! can print them.

mod host_services;
mod sign;

pub use host_services::MAX_PLUGIN_FILE_BYTES;
pub(crate) use host_services::{CallServices, SharedServices};
pub(crate) use sign::InlineServices;

use crate::error::PluginError;
use crate::redact::Redactor;
use crate::text::plugin_text;
use fhirconn_abi::{
    host_ref,
    loading::{load_library as load_abi_library, LoadFailure},
    std_types::{ROption, RResult},
    AbiError, AuthRequest, AuthSchemeBox, ConnectionAuthBox, ConnectionContext, SchemeDescription,
    AUTH_FLAG_FORCE_LOGIN, AUTH_FLAG_INTERACTIVE,
};
use fhirconn_sdk::wire::{
    ConnectionOperation, CredentialsExtensions, NoExtensions, SchemeExtensions,
};
use fhirconn_sdk::{ClientIdentity, ErrorKind, SecretString};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The plugin interface (ABI) version this host speaks.
pub const ABI_VERSION: &str = fhirconn_abi::ABI_VERSION;
/// The prefix of every plugin library's file stem (`fhirconn_`).
pub const LIBRARY_PREFIX: &str = fhirconn_abi::LIBRARY_PREFIX;

/// Why a call into a plugin failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The call panicked through the plugin's guard, or its thread was cancelled.
    #[error("scheme '{scheme}' did not return: {source}")]
    NoReturn {
        /// The scheme called.
        scheme: String,
        /// What became of the blocking task.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The plugin returned an error. `message` is redacted and sanitised.
    #[error("{scheme}: {message}")]
    Failed {
        /// The scheme called.
        scheme: String,
        /// The kind the plugin gave.
        kind: ErrorKind,
        /// The plugin's message, safe to show.
        message: String,
    },
}

impl CallError {
    /// The kind of failure (`internal` when the plugin did not return).
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            CallError::NoReturn { .. } => ErrorKind::Internal,
            CallError::Failed { kind, .. } => *kind,
        }
    }
}

/// Runs one plugin call on a blocking thread and maps its outcome: the one place that does.
async fn call<T: Send + 'static>(
    scheme: &str,
    redactor: &Redactor,
    f: impl FnOnce() -> RResult<T, AbiError> + Send + 'static,
) -> Result<T, CallError> {
    let result = tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| CallError::NoReturn {
            scheme: scheme.to_string(),
            source,
        })?;
    // Redact before cutting and escaping, so neither can split a secret.
    result.into_result().map_err(|e| CallError::Failed {
        scheme: scheme.to_string(),
        kind: ErrorKind::from_abi(e.kind),
        message: plugin_text(&redactor.redact(e.message.as_str())),
    })
}

/// The connection a plugin call is about.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    /// The connection id.
    pub id: String,
    /// Its base URL.
    pub base_url: String,
}

impl ConnectionInfo {
    fn to_abi(&self) -> ConnectionContext {
        ConnectionContext {
            connection_id: self.id.as_str().into(),
            base_url: self.base_url.as_str().into(),
            extensions_json: NoExtensions {}.to_json().into(),
        }
    }
}

/// A scheme's self-description, made safe to show.
#[derive(Debug, Clone)]
pub(crate) struct Description {
    pub name: String,
    pub version: String,
    pub summary: String,
    pub schema: serde_json::Value,
    pub sdk_version: String,
    /// The scheme declared `{"signs_requests": true}` (per-request signing).
    pub signs_requests: bool,
}

/// A scheme object (built in, or from a library).
#[derive(Clone)]
pub(crate) struct PluginScheme {
    imp: Arc<AuthSchemeBox>,
}

impl PluginScheme {
    /// Boxes a scheme compiled into the host.
    pub(crate) fn builtin(scheme: Box<dyn fhirconn_sdk::Scheme>, version: &'static str) -> Self {
        Self {
            imp: Arc::new(fhirconn_sdk::__private::boxed_scheme(scheme, version)),
        }
    }

    /// Asks the scheme to describe itself; text is sanitised, a schema that is not JSON
    /// becomes `{"type": "object"}`.
    pub(crate) fn describe(&self) -> Description {
        let name = self.imp.name().into_string();
        let SchemeDescription {
            version,
            summary,
            config_schema_json,
            sdk_version,
            extensions_json,
        } = self.imp.describe();
        let schema = serde_json::from_str(config_schema_json.as_str())
            .unwrap_or_else(|_| serde_json::json!({"type": "object"}));
        // ABI 1.0 plugins send `{}` (or nothing); a malformed field declares nothing.
        let extensions =
            SchemeExtensions::from_json(extensions_json.as_str()).unwrap_or_else(|e| {
                tracing::debug!(scheme = %plugin_text(&name), "ignoring scheme extensions: {e}");
                SchemeExtensions::default()
            });
        Description {
            name,
            version: plugin_text(&version),
            summary: plugin_text(&summary),
            schema,
            sdk_version: plugin_text(&sdk_version),
            signs_requests: extensions.signs_requests,
        }
    }

    /// Configures a connection of scheme `name` from its settings (JSON text).
    pub(crate) async fn configure(
        &self,
        name: &str,
        connection: &ConnectionInfo,
        settings_json: String,
        services: CallServices,
    ) -> Result<PluginConnection, CallError> {
        let redactor = services.shared.redactor.clone();
        let imp = self.imp.clone();
        let ctx = connection.to_abi();
        let conn = call(name, &redactor, move || {
            imp.configure(&ctx, settings_json.as_str().into(), host_ref(&services))
        })
        .await?;
        Ok(PluginConnection {
            scheme: name.to_string(),
            imp: Arc::new(conn),
        })
    }
}

/// Loads a plugin library and returns its schemes; loader failures become [`PluginError`]s
/// (abi_stable's layout report only at debug level).
pub(crate) fn load_library(path: &Path) -> Result<Vec<PluginScheme>, PluginError> {
    let sdk = fhirconn_sdk::SDK_VERSION.to_string();
    let module = load_abi_library(path).map_err(|f| match f {
        LoadFailure::Open(reason) => PluginError::Open {
            path: path.to_path_buf(),
            reason: first_line(&reason),
        },
        LoadFailure::NotAPlugin => PluginError::NotAPlugin {
            path: path.to_path_buf(),
        },
        LoadFailure::Version { expected, found } => PluginError::Version {
            path: path.to_path_buf(),
            expected,
            found,
            sdk: sdk.clone(),
        },
        LoadFailure::Layout { report } => {
            tracing::debug!(library = %path.display(), "abi_stable layout report:\n{report}");
            PluginError::Layout {
                path: path.to_path_buf(),
                expected: ABI_VERSION.to_string(),
                sdk: sdk.clone(),
            }
        }
        LoadFailure::AbiStable(reason) | LoadFailure::Init(reason) => PluginError::Init {
            path: path.to_path_buf(),
            reason: first_line(&reason),
        },
    })?;
    let list = (module.schemes())()
        .into_result()
        .map_err(|e| PluginError::Init {
            path: path.to_path_buf(),
            reason: plugin_text(&e.message),
        })?;
    Ok(list
        .into_iter()
        .map(|imp| PluginScheme { imp: Arc::new(imp) })
        .collect())
}

fn first_line(s: &str) -> String {
    s.trim()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One credential header a scheme returned.
#[derive(Clone)]
pub(crate) struct PluginHeader {
    pub name: String,
    pub value: SecretString,
}

/// Credentials a scheme returned, with its secrets registered for redaction and its warnings
/// made safe to show.
#[derive(Clone, Default)]
pub(crate) struct PluginCredentials {
    pub headers: Vec<PluginHeader>,
    pub identity: Option<ClientIdentity>,
    pub expires_at: Option<SystemTime>,
    /// `"<scheme>: <warning>"`, redacted and sanitised.
    pub warnings: Vec<String>,
    /// The SMART launch context, every text redacted and sanitised (server text).
    pub context: Option<fhirconn_sdk::wire::LaunchContext>,
}

/// A configured connection of one scheme.
#[derive(Clone)]
pub(crate) struct PluginConnection {
    scheme: String,
    imp: Arc<ConnectionAuthBox>,
}

impl PluginConnection {
    /// The scheme's name.
    pub(crate) fn scheme_name(&self) -> &str {
        &self.scheme
    }

    /// Asks the scheme for credentials.
    pub(crate) async fn authorize(
        &self,
        connection: &ConnectionInfo,
        interactive: bool,
        force_login: bool,
        services: CallServices,
    ) -> Result<PluginCredentials, CallError> {
        let redactor = services.shared.redactor.clone();
        let flags = (if interactive {
            AUTH_FLAG_INTERACTIVE
        } else {
            0
        }) | (if force_login {
            AUTH_FLAG_FORCE_LOGIN
        } else {
            0
        });
        let request = AuthRequest {
            connection: connection.to_abi(),
            flags,
            extensions_json: NoExtensions {}.to_json().into(),
        };
        let imp = self.imp.clone();
        let creds = call(&self.scheme, &redactor, move || {
            imp.authorize(&request, host_ref(&services))
        })
        .await?;
        let mut out = PluginCredentials::default();
        for h in creds.headers.iter() {
            redactor.add_header_value(h.value.as_str());
            out.headers.push(PluginHeader {
                name: h.name.to_string(),
                value: SecretString::from(h.value.to_string()),
            });
        }
        if let ROption::RSome(id) = &creds.identity {
            redactor.add(id.private_key_pem.as_str());
            out.identity = Some(ClientIdentity {
                certificate_chain_pem: id.certificate_chain_pem.to_string(),
                private_key_pem: SecretString::from(id.private_key_pem.to_string()),
            });
        }
        if let ROption::RSome(ms) = creds.expires_at_unix_ms {
            out.expires_at =
                Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        }
        match CredentialsExtensions::from_json(creds.extensions_json.as_str()) {
            Ok(ext) => {
                out.warnings = ext
                    .warnings
                    .iter()
                    .map(|w| plugin_text(&redactor.redact(&format!("{}: {w}", self.scheme))))
                    .collect();
                out.context = ext
                    .context
                    .map(|c| c.map_text(|t| crate::text::sanitize_line(&redactor.redact(t), 2000)));
            }
            Err(e) => tracing::debug!(scheme = %self.scheme, "ignoring credential extensions: {e}"),
        }
        Ok(out)
    }

    /// Runs a connection operation; `Ok(None)` when the scheme does not know it.
    pub(crate) async fn invoke(
        &self,
        op: &ConnectionOperation,
        services: CallServices,
    ) -> Result<Option<String>, CallError> {
        let redactor = services.shared.redactor.clone();
        let imp = self.imp.clone();
        let (name, payload) = (op.name().to_string(), op.payload_json());
        match call(&self.scheme, &redactor, move || {
            imp.invoke(
                name.as_str().into(),
                payload.as_str().into(),
                host_ref(&services),
            )
        })
        .await
        {
            Ok(answer) => Ok(Some(answer.into_string())),
            Err(CallError::Failed {
                kind: ErrorKind::Unsupported,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Configures a scheme directly against any host-services implementation: the raw ABI path
/// for benchmarks and the fuzz harness (the host itself goes through `Host::builder`).
pub fn configure_raw(
    scheme: &crate::plugins::SchemeHandle,
    context: &ConnectionContext,
    settings_json: &str,
    services: &impl fhirconn_abi::HostServices,
) -> Result<ConnectionAuthBox, AbiError> {
    scheme
        .imp
        .imp
        .configure(context, settings_json.into(), host_ref(services))
        .into_result()
}
