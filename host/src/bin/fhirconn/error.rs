//! [`CliError`]: what a command fails with, and the exit code each failure maps to. Rendering
//! (and escaping whatever servers and plugins said) happens once, in [`CliError::report`].

use crate::render;
use fhirconn_host::Error;
use std::process::ExitCode;

/// A command's failure. Exit codes: 2 usage or configuration, 1 a connection or request
/// failed, or the code a variant carries.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A library error; configuration errors are shown with their line and a caret.
    #[error(transparent)]
    Host(#[from] Error),
    /// Bad arguments or input (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A request, connection or write failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// An error answer of a server: its status line, then its (redacted) body (exit 1).
    #[error("HTTP {status} from {url}")]
    Http {
        /// The status.
        status: reqwest::StatusCode,
        /// The URL that answered.
        url: String,
        /// The body, already redacted and escaped (may be empty).
        body: String,
    },
    /// A message said as it is (no `error:` prefix), with its own exit code.
    #[error("{text}")]
    Said {
        /// What to say on standard error.
        text: String,
        /// The exit code.
        code: u8,
    },
    /// An error, then a note (`the file was not changed:` comes before; `the output is
    /// incomplete` after).
    #[error("{error}")]
    WithNote {
        /// A line said before the error, if any.
        before: Option<String>,
        /// The error.
        error: Box<CliError>,
        /// A line said after the error, if any.
        after: Option<String>,
    },
}

impl CliError {
    /// The exit code this failure maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Host(Error::Config(_))
            | Self::Host(
                Error::ConfigRead { .. }
                | Error::UnknownConnection { .. }
                | Error::InvalidRequest(_),
            ) => 2,
            Self::Host(_) | Self::Failed(_) | Self::Http { .. } => 1,
            Self::Usage(_) => 2,
            Self::Said { code, .. } => *code,
            Self::WithNote { error, .. } => error.exit_code(),
        }
    }

    /// Says the failure on standard error and returns its exit code. Errors quote servers and
    /// plugins (a redirect's Location, an authority's error text): control characters are
    /// shown escaped, never sent to the terminal.
    pub fn report(&self) -> ExitCode {
        self.say();
        ExitCode::from(self.exit_code())
    }

    fn say(&self) {
        match self {
            Self::Host(Error::Config(errors)) => render::config_errors(errors),
            Self::Http { body, .. } => {
                render::error_line(&self.to_string());
                if !body.is_empty() {
                    eprintln!("{body}");
                }
            }
            Self::Said { text, .. } => eprintln!("{}", render::sanitize(text)),
            Self::WithNote {
                before,
                error,
                after,
            } => {
                if let Some(b) = before {
                    eprintln!("{b}");
                }
                error.say();
                if let Some(a) = after {
                    eprintln!("{a}");
                }
            }
            _ => render::error_line(&self.to_string()),
        }
    }
}

impl From<fhirconn_host::paging::Incomplete> for CliError {
    fn from(e: fhirconn_host::paging::Incomplete) -> Self {
        use fhirconn_host::paging::PagingError;
        let pages = e.pages;
        let error = match e.error {
            PagingError::Connection(e) => Self::Host(e),
            // Standard output is gone: nothing more to say about what it holds.
            e @ PagingError::Output(_) => return Self::Failed(e.to_string()),
            e => Self::Failed(e.to_string()),
        };
        Self::WithNote {
            before: None,
            error: Box::new(error),
            after: Some(format!(
                "the output is incomplete: it stops after {pages} page(s)"
            )),
        }
    }
}
