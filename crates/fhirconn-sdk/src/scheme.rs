//! The traits a scheme author implements, over plain Rust types.

use crate::error::{Error, Result};
use crate::host::{ClientIdentity, Host};
use crate::wire::{SignAnswer, SignRequest};
use secrecy::SecretString;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The connection a scheme is configured for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection id in the configuration file.
    pub id: String,
    /// The FHIR base URL as configured.
    pub base_url: String,
}

/// Why the host asks for credentials.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// The connection.
    pub connection: ConnectionInfo,
    /// The host may talk to a person (e.g. `fhirconn login`); otherwise a scheme that needs a
    /// person returns [`Error::interaction_required`].
    pub interactive: bool,
    /// Ignore stored refresh state and sign in afresh.
    pub force_login: bool,
}

/// One header of [`Credentials`].
#[derive(Debug, Clone)]
pub enum CredentialHeader {
    /// A header that is not a secret.
    Plain(String, String),
    /// A header whose value is a credential: never logged, redacted by the host.
    Secret(String, SecretString),
}

/// What a connection needs to authenticate: headers and/or a client identity, and when they
/// expire. `Debug` never shows secret values.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Headers to add to every request.
    pub headers: Vec<CredentialHeader>,
    /// A TLS client identity.
    pub identity: Option<ClientIdentity>,
    /// When the credentials stop working; `None` for credentials that do not expire.
    pub expires_at: Option<SystemTime>,
    /// Things a person should know (e.g. a certificate that expires soon); `fhirconn test`
    /// shows them. They travel in the ABI's `extensions_json` as `{"warnings": [...]}`.
    pub warnings: Vec<String>,
    /// The SMART launch context of the token response, shown by `fhirconn test` and
    /// `fhirconn token --json`; travels as `{"context": {...}}`.
    pub context: Option<crate::wire::LaunchContext>,
}

impl Credentials {
    /// No headers, no identity, no expiry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a non-secret header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push(CredentialHeader::Plain(name.to_string(), value.to_string()));
        self
    }
    /// Adds a secret header, such as `Authorization`.
    #[must_use]
    pub fn secret_header(mut self, name: &str, value: SecretString) -> Self {
        self.headers
            .push(CredentialHeader::Secret(name.to_string(), value));
        self
    }
    /// `Authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer(self, token: &SecretString) -> Self {
        use secrecy::ExposeSecret;
        let value = SecretString::from(format!("Bearer {}", token.expose_secret()));
        self.secret_header("Authorization", value)
    }
    /// Adds a client identity.
    #[must_use]
    pub fn identity(mut self, identity: ClientIdentity) -> Self {
        self.identity = Some(identity);
        self
    }
    /// Sets the absolute expiry.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Adds a warning for the person testing the connection.
    #[must_use]
    pub fn warning(mut self, message: impl Into<String>) -> Self {
        self.warnings.push(message.into());
        self
    }
    /// Attaches a SMART launch context (see [`crate::wire::LaunchContext`]).
    #[must_use]
    pub fn launch_context(mut self, context: crate::wire::LaunchContext) -> Self {
        self.context = Some(context);
        self
    }
    /// Sets the expiry relative to the host's clock (e.g. from `expires_in`).
    #[must_use]
    pub fn expires_in(self, host: &Host<'_>, lifetime: Duration) -> Self {
        // A server-chosen lifetime must not overflow the clock arithmetic (that would panic).
        let now = host.now();
        let at = now
            .checked_add(lifetime)
            .or_else(|| now.checked_add(Duration::from_secs(10 * 365 * 24 * 3600)))
            .unwrap_or(now);
        self.expires_at(at)
    }
}

/// An authentication scheme: validates settings and builds per-connection objects.
///
/// Implementations are stateless apart from their settings; the host caches credentials and
/// decides when to ask for new ones. Every call may block (it runs on a host worker thread) and
/// reaches the outside world only through [`Host`].
pub trait Scheme: Send + Sync + 'static {
    /// The registry name used in `auth: { scheme: NAME }`: lowercase, digits and `-`.
    fn name(&self) -> &str;

    /// One line saying what the scheme does.
    fn summary(&self) -> &str;

    /// JSON Schema of the settings object (without the `scheme` key, which the host adds).
    fn config_schema(&self) -> Value;

    /// Validates the settings and builds the connection object. Read secret files here, so
    /// a missing file is a configuration error found before any request is made.
    fn configure(
        &self,
        connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>>;

    /// Escape hatch for scheme-level operations added later; unknown ops are unsupported.
    fn invoke(&self, op: &str, _payload: Value, _host: &Host<'_>) -> Result<Value> {
        Err(Error::unsupported(op))
    }

    /// Whether connections of this scheme sign every request: the host then calls
    /// [`Connection::sign_request`] for each request it sends (retries and redirect hops
    /// included). Declared in the description as `{"signs_requests": true}`.
    fn signs_requests(&self) -> bool {
        false
    }
}

/// A configured connection: produces credentials on demand.
pub trait Connection: Send + Sync + 'static {
    /// Returns credentials for the connection (fetching a token if the scheme uses one).
    fn authorize(&self, request: &AuthRequest, host: &Host<'_>) -> Result<Credentials>;

    /// Escape hatch for connection-level operations added later (e.g. `logout`).
    fn invoke(&self, op: &str, _payload: Value, _host: &Host<'_>) -> Result<Value> {
        Err(Error::unsupported(op))
    }

    /// The identity this connection's access tokens belong to, when other processes configured
    /// the same way may use them (the fleet credential cache); `None` (the default) keeps them
    /// to this process. Return `None` for a person's sign-in and for identities that come from
    /// the machine or a process (a system-assigned managed identity, metadata servers, `exec`); otherwise name
    /// what decides the identity and is not in the settings (a client id read from the
    /// environment, the account inside a key file). The host hashes it under its fleet key.
    fn share_key(&self) -> Option<String> {
        None
    }

    /// Signs one request (only called when the scheme's [`Scheme::signs_requests`] is true):
    /// returns the headers to add. Runs once per request: keep it to computation, and ask
    /// [`Host`] for anything else (credentials are best fetched in [`Connection::authorize`]
    /// or cached by the connection).
    fn sign_request(&self, _request: &SignRequest, _host: &Host<'_>) -> Result<SignAnswer> {
        Err(Error::unsupported(crate::wire::SIGN_REQUEST))
    }
}
