//! FHIR Bulk Data export (`$export`): kick-off, status polling under an overall deadline,
//! downloads into one directory under names made here, NDJSON checked before bytes reach a
//! final file, resume and cancellation.
//!
//! The rules this module keeps (SECURITY.md, "export"):
//! - **Names come from fhirconn, not from the server.** A manifest entry's `type` must be a
//!   resource type (`^[A-Z][A-Za-z]{1,63}$`); the file is `<type>.<index>.ndjson` in the output
//!   directory. Any other `type`, or a `url` that is not `http(s)`, is an error for that entry
//!   (reported, nothing fetched); the other entries go on.
//! - **Files are private and never follow links.** The output directory is created 0700; every
//!   file (data and the state file) is written through [`crate::safe_write`]: a random
//!   `O_EXCL|O_NOFOLLOW` temporary file (0600) in that directory, renamed over the final name
//!   (a symlink there is replaced, never written through).
//! - **Only checked bytes become a file.** Each download keeps its incomplete last line in
//!   memory (at most [`MAX_LINE_BYTES`]); only complete lines that parsed as FHIR JSON are
//!   written to the temporary file, and it is renamed only after the last line passed too. A
//!   failed or cancelled download removes its temporary file.
//! - **Waiting is bounded.** Kick-off and polling run under [`Options::timeout`]; a single
//!   `Retry-After` (seconds or an HTTP date) is capped at [`Options::max_retry_after`] and the
//!   time left. Downloads are not cut by a total timeout: the connection's `read-timeout` is
//!   an idle timeout between chunks.
//! - **Cancellation is prompt.** When [`Cancel`] fires (at any moment: kick-off, a status
//!   request, a wait, downloads), in-flight work stops, the job is deleted on the server
//!   (`DELETE` on the status URL, at most [`CANCEL_GRACE`]) and the state file records it.

mod download;
mod job;
mod json_scan;
mod manifest;
mod ndjson;

pub use job::run;
pub use manifest::{is_resource_type, next_wait, parse_manifest, parse_retry_after};
pub use ndjson::NdjsonCheck;

use manifest::{printable, shown_url};

use crate::connection::{Connection, Request};
use crate::error::Error;
use crate::safe_write;
use crate::transport::TransportError;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The resume state file in the output directory.
pub const STATE_FILE: &str = ".fhirconn-export.json";
/// Default overall deadline of kick-off and polling.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default cap of a single `Retry-After`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest NDJSON line accepted (it is held in memory to be checked).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// How long a cancellation waits for the server to accept the `DELETE`.
pub const CANCEL_GRACE: Duration = Duration::from_secs(3);
/// Downloads at a time (default).
pub const DEFAULT_PARALLEL: usize = 4;
/// The per-request limit given to downloads instead of the client's total timeout (which
/// would cut a large file that keeps flowing); the idle timeout is what ends a stalled one.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_STATE_BYTES: u64 = 4 * 1024 * 1024;
/// The most output entries a manifest may list.
pub const MAX_ENTRIES: usize = 100_000;

/// What to export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Level {
    /// `$export` (system level).
    #[default]
    System,
    /// `Patient/$export`.
    Patient,
    /// `Group/<id>/$export`.
    Group(String),
}

/// The kick-off parameters.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    /// Level.
    pub level: Level,
    /// `_type` (comma-separated resource types).
    pub types: Option<String>,
    /// `_since` (an instant).
    pub since: Option<String>,
}

impl ExportRequest {
    /// The kick-off path relative to the base URL, with its query.
    pub fn kickoff_path(&self) -> String {
        let mut path = match &self.level {
            Level::Group(g) => format!("Group/{}/$export", path_segment(g)),
            Level::Patient => "Patient/$export".to_string(),
            Level::System => "$export".to_string(),
        };
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(t) = &self.types {
            q.append_pair("_type", t);
        }
        if let Some(s) = &self.since {
            q.append_pair("_since", s);
        }
        let q = q.finish();
        if !q.is_empty() {
            path = format!("{path}?{q}");
        }
        path
    }
}

/// `s` percent-encoded as one path segment (RFC 3986 unreserved characters kept).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How to run an export.
#[derive(Debug, Clone)]
pub struct Options {
    /// The output directory (created 0700 if missing).
    pub out: PathBuf,
    /// Overall deadline of kick-off and status polling.
    pub timeout: Duration,
    /// Cap of a single `Retry-After`.
    pub max_retry_after: Duration,
    /// Downloads at a time.
    pub parallel: usize,
}

impl Options {
    /// Defaults for `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            timeout: DEFAULT_TIMEOUT,
            max_retry_after: MAX_RETRY_AFTER,
            parallel: DEFAULT_PARALLEL,
        }
    }
}

/// Progress, reported to an [`Observer`]. Text from the server is already made printable.
#[derive(Debug)]
pub enum Event<'a> {
    /// A state file names a job: polling it again.
    Resuming {
        /// The status URL.
        status_url: &'a str,
    },
    /// The job of the state file is gone (cancelled or expired): a new one is started.
    Restarting {
        /// Why.
        reason: &'a str,
    },
    /// The server accepted the kick-off.
    KickedOff {
        /// The status URL.
        status_url: &'a str,
    },
    /// The job is not done; the next check is in `next`.
    Waiting {
        /// The server's `X-Progress`, if any.
        progress: Option<&'a str>,
        /// The wait before the next check.
        next: Duration,
    },
    /// The manifest arrived with `entries` output entries.
    Manifest {
        /// Number of output entries.
        entries: usize,
    },
    /// A file already downloaded by an earlier run.
    Skipped {
        /// File name.
        name: &'a str,
    },
    /// A download started.
    Started {
        /// File name.
        name: &'a str,
    },
    /// Checked bytes were written.
    Bytes {
        /// File name.
        name: &'a str,
        /// How many.
        bytes: u64,
    },
    /// A file is complete.
    Finished {
        /// File name.
        name: &'a str,
        /// Resources (non-empty lines) in it.
        resources: u64,
    },
    /// An entry failed (the others go on).
    Failed {
        /// The error.
        error: &'a EntryError,
    },
}

/// Receives [`Event`]s (from several tasks at once).
pub type Observer = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// A cancellation signal: [`Cancel::new`] gives the sender; sending `true` cancels.
#[derive(Debug, Clone)]
pub struct Cancel(tokio::sync::watch::Receiver<bool>);

impl Cancel {
    /// A signal and the sender that fires it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// A signal that never fires.
    pub fn never() -> Self {
        Self::new().1
    }

    /// Whether it has fired.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    async fn cancelled(&mut self) {
        if self.0.wait_for(|c| *c).await.is_err() {
            // The sender is gone without firing: never.
            std::future::pending::<()>().await;
        }
    }
}

/// How an export ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every entry was tried.
    Done(Report),
    /// Cancelled.
    Cancelled {
        /// Whether the server accepted the `DELETE` of the job (false when no job existed yet
        /// or the server did not answer in time).
        job_deleted: bool,
    },
}

/// The result of a completed export.
#[derive(Debug, Default)]
pub struct Report {
    /// Output entries in the manifest.
    pub entries: usize,
    /// Files written by this run: (name, resources).
    pub written: Vec<(String, u64)>,
    /// Files kept from an earlier run.
    pub skipped: Vec<String>,
    /// Entries that failed. When not empty, the state file stays for a resume.
    pub failed: Vec<EntryError>,
}

/// An export that could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The connection failed (credentials, transport...).
    #[error(transparent)]
    Connection(#[from] Error),
    /// A local file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state file is not one fhirconn wrote.
    #[error("{}: not an export state file ({reason}); remove it to start a new export", path.display())]
    State {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kick-off was refused.
    #[error("the kick-off answered HTTP {status} (expected 202 with Content-Location){detail}")]
    KickOff {
        /// HTTP status.
        status: u16,
        /// `: <OperationOutcome text>` or empty.
        detail: String,
    },
    /// The status URL answered an error.
    #[error("the export status answered HTTP {status}{detail}")]
    Status {
        /// HTTP status.
        status: u16,
        /// `: <OperationOutcome text>` or empty.
        detail: String,
    },
    /// The manifest is unusable as a whole.
    #[error("the export manifest is not usable: {0}")]
    Manifest(String),
    /// The job did not complete within the deadline; it is left on the server.
    #[error(
        "the export job did not complete within {}s (--timeout); it is left on the server: \
         run the same command again to keep waiting",
        .0.as_secs()
    )]
    Deadline(Duration),
}

/// One output entry that failed.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// `type` is not a resource type.
    #[error("output entry {index}: type {shown} is not a FHIR resource type; not downloaded")]
    BadType {
        /// Index in `output`.
        index: usize,
        /// The type, quoted with control characters escaped, shortened.
        shown: String,
    },
    /// `url` is not an absolute http(s) URL.
    #[error("output entry {index}: url is not an absolute http(s) URL ({why}); not downloaded")]
    BadUrl {
        /// Index in `output`.
        index: usize,
        /// Why.
        why: String,
    },
    /// The manifest asks for the token on a file of another origin.
    #[error(
        "{name}: {url} asks for the access token but is not on the connection's origin; \
         refusing to send credentials there"
    )]
    ForeignOrigin {
        /// File name.
        name: String,
        /// The URL without query.
        url: String,
    },
    /// The file answered an error status.
    #[error("{name}: HTTP {status} from {url}")]
    Http {
        /// File name.
        name: String,
        /// Status.
        status: u16,
        /// The URL without query.
        url: String,
    },
    /// The body is not NDJSON of FHIR resources.
    #[error("{name}: {reason} (nothing kept)")]
    Ndjson {
        /// File name.
        name: String,
        /// Why.
        reason: String,
    },
    /// No data arrived within the idle timeout.
    #[error("{name}: no data for {}s (read-timeout) from {url}", .idle.as_secs_f64())]
    Idle {
        /// File name.
        name: String,
        /// The idle timeout.
        idle: Duration,
        /// The URL without query.
        url: String,
    },
    /// The connection failed.
    #[error("{name}: {source}")]
    Connection {
        /// File name.
        name: String,
        /// The error.
        source: Error,
    },
    /// Writing the file failed.
    #[error("{name}: {}: {source}", path.display())]
    Io {
        /// File name.
        name: String,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The download task ended abnormally.
    #[error("{name}: the download stopped: {reason}")]
    Aborted {
        /// File name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// One valid output entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index in the manifest's `output`.
    pub index: usize,
    /// The validated resource type.
    pub resource_type: String,
    /// The file URL (http or https).
    pub url: url::Url,
}

impl Entry {
    /// The file name fhirconn gives it: `<type>.<index>.ndjson`.
    pub fn file_name(&self) -> String {
        format!("{}.{:03}.ndjson", self.resource_type, self.index)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sync_tests;
