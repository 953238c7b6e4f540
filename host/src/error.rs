//! The host's typed errors: configuration errors with locations, plugin faults, connection
//! failures. Messages are lowercase and never contain secrets.

use std::fmt;
use std::path::PathBuf;

/// A configuration problem at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The connection id the problem belongs to.
    pub connection: Option<String>,
    /// The field, dotted (`auth.password-file`).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(c) = &self.connection {
            write!(f, "connection '{c}': ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a plugin library could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// dlopen failed.
    #[error("cannot load plugin {path}: {reason}")]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// The file is a library but not a fhirconn plugin.
    #[error("{path} is not a fhirconn plugin: it exports no fhirconn root module")]
    NotAPlugin {
        /// The library.
        path: PathBuf,
    },
    /// Built against another interface version.
    #[error(
        "plugin {path} was built for plugin interface {found}; this fhirconn speaks {expected}\n\
         fix: rebuild the plugin against fhirconn-sdk {sdk} (ABI {expected})"
    )]
    Version {
        /// The library.
        path: PathBuf,
        /// The host's interface version.
        expected: String,
        /// The library's interface version.
        found: String,
        /// The SDK version of this host.
        sdk: String,
    },
    /// The layout check failed.
    #[error(
        "plugin {path} does not match this fhirconn's plugin interface (ABI {expected}): its types differ\n\
         fix: rebuild the plugin against fhirconn-sdk {sdk}; run with -v to log abi_stable's layout report"
    )]
    Layout {
        /// The library.
        path: PathBuf,
        /// The host's interface version.
        expected: String,
        /// The SDK version of this host.
        sdk: String,
    },
    /// The library's initialisation failed or panicked.
    #[error("plugin {path} failed to initialise: {reason}")]
    Init {
        /// The library.
        path: PathBuf,
        /// What it said.
        reason: String,
    },
    /// Two libraries export one scheme name.
    #[error("scheme '{name}' is exported by two libraries: {first} and {second}; remove one")]
    DuplicateScheme {
        /// The scheme name.
        name: String,
        /// Where it was found first.
        first: String,
        /// Where it was found again.
        second: String,
    },
    /// No library provides the scheme.
    #[error("unknown scheme '{name}': no plugin provides it (looked in {searched}; available: {available})")]
    UnknownScheme {
        /// The scheme name.
        name: String,
        /// The directories searched, comma-separated.
        searched: String,
        /// Schemes that are available.
        available: String,
    },
}

/// Everything the host can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// One or more configuration errors, each with its location.
    #[error("{}", render_config_errors(.0))]
    Config(Vec<ConfigError>),
    /// A plugin fault.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The connection id is not in the configuration.
    #[error("unknown connection '{id}' (configured: {known})")]
    UnknownConnection {
        /// The id asked for.
        id: String,
        /// The ids configured, comma-separated.
        known: String,
    },
    /// The connection could not be set up (its plugin failed to load or configure).
    #[error("connection '{id}' is unavailable: {reason}")]
    Unavailable {
        /// The connection.
        id: String,
        /// Why.
        reason: String,
    },
    /// Obtaining credentials failed.
    #[error("connection '{id}': {kind}: {message}")]
    Credentials {
        /// The connection.
        id: String,
        /// The scheme's error kind.
        kind: fhirconn_sdk::ErrorKind,
        /// The scheme's message.
        message: String,
    },
    /// The request failed on the way (DNS, connect, TLS, timeout, body too large).
    #[error("connection '{id}': {error}")]
    Transport {
        /// The connection.
        id: String,
        /// What happened, classified.
        #[source]
        error: crate::transport::TransportError,
    },
    /// The HTTP client could not be built (bad roots, bad identity).
    #[error("connection '{id}': cannot set up TLS/HTTP: {reason}")]
    Client {
        /// The connection.
        id: String,
        /// Why.
        reason: String,
    },
    /// A request was malformed (bad path or header given by the caller).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A connection marked `test-connection-on-startup` failed its test
    /// ([`crate::Host::startup_checks`]).
    #[error(transparent)]
    Startup(#[from] crate::startup::StartupFailure),
}

fn render_config_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `Result` with the host's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
