//! Typed errors for scheme authors, converted to and from the ABI error at the boundary.

use fhirconn_abi::{AbiError, ErrorKind as AbiKind};

/// What kind of failure an [`Error`] is; tells the host what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The settings are wrong: the host reports a configuration error (exit 2).
    Config,
    /// The server refused the credentials: the connection test fails with this diagnosis.
    CredentialsRejected,
    /// DNS, connect, TLS or timeout failure on the way to an endpoint.
    Network,
    /// An endpoint answered something that breaks its protocol.
    Protocol,
    /// A person must sign in (`fhirconn login ID`); never retried automatically.
    InteractionRequired,
    /// A bug or panic.
    Internal,
    /// The operation asked of an `invoke` escape hatch is not known.
    Unsupported,
    /// A code this SDK version does not know (sent by a newer peer).
    Unknown(u32),
}

impl ErrorKind {
    /// Short lowercase name, as shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "configuration error",
            ErrorKind::CredentialsRejected => "credentials rejected",
            ErrorKind::Network => "network error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::InteractionRequired => "needs login",
            ErrorKind::Internal => "internal error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Unknown(_) => "error",
        }
    }

    pub(crate) fn to_abi(self) -> AbiKind {
        match self {
            ErrorKind::Config => AbiKind::CONFIG,
            ErrorKind::CredentialsRejected => AbiKind::CREDENTIALS_REJECTED,
            ErrorKind::Network => AbiKind::NETWORK,
            ErrorKind::Protocol => AbiKind::PROTOCOL,
            ErrorKind::InteractionRequired => AbiKind::INTERACTION_REQUIRED,
            ErrorKind::Internal => AbiKind::INTERNAL,
            ErrorKind::Unsupported => AbiKind::UNSUPPORTED,
            ErrorKind::Unknown(code) => AbiKind(code),
        }
    }

    /// Maps an ABI code to a kind; unknown codes are kept as [`ErrorKind::Unknown`].
    pub fn from_abi(kind: AbiKind) -> Self {
        match kind {
            AbiKind::CONFIG => ErrorKind::Config,
            AbiKind::CREDENTIALS_REJECTED => ErrorKind::CredentialsRejected,
            AbiKind::NETWORK => ErrorKind::Network,
            AbiKind::PROTOCOL => ErrorKind::Protocol,
            AbiKind::INTERACTION_REQUIRED => ErrorKind::InteractionRequired,
            AbiKind::INTERNAL => ErrorKind::Internal,
            AbiKind::UNSUPPORTED => ErrorKind::Unsupported,
            AbiKind(code) => ErrorKind::Unknown(code),
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a scheme: a kind and a message for a person (no secrets, no request bodies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// Builds an error of any kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// A configuration error, e.g. `exactly one of password, password-file, password-env`.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// The server refused the credentials.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CredentialsRejected, message)
    }
    /// A network failure.
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Network, message)
    }
    /// A protocol violation by a peer.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }
    /// A person must sign in.
    pub fn interaction_required(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InteractionRequired, message)
    }
    /// A bug.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// An unknown `invoke` operation.
    pub fn unsupported(op: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("operation '{op}' is not supported"),
        )
    }
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Prefixes the message with context, e.g. the field it concerns.
    #[must_use]
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl From<Error> for AbiError {
    fn from(e: Error) -> Self {
        AbiError::new(e.kind.to_abi(), e.message)
    }
}

impl From<AbiError> for Error {
    fn from(e: AbiError) -> Self {
        Error::new(ErrorKind::from_abi(e.kind), e.message.into_string())
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_the_abi_and_unknown_codes_survive() {
        for kind in [
            ErrorKind::Config,
            ErrorKind::CredentialsRejected,
            ErrorKind::Network,
            ErrorKind::Protocol,
            ErrorKind::InteractionRequired,
            ErrorKind::Internal,
            ErrorKind::Unsupported,
            ErrorKind::Unknown(4711),
        ] {
            let abi: AbiError = Error::new(kind, "m").into();
            assert_eq!(Error::from(abi).kind(), kind);
        }
    }

    #[test]
    fn context_prefixes_the_message() {
        let e = Error::config("file not found").context("password-file");
        assert_eq!(e.to_string(), "password-file: file not found");
    }
}
