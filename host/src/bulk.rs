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

/// Whether `s` is a resource type name fhirconn will use in a file name:
/// `^[A-Z][A-Za-z]{1,63}$`.
pub fn is_resource_type(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=64).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b[1..].iter().all(u8::is_ascii_alphabetic)
}

/// Text from a server made safe to print: control characters escaped, at most `max` chars.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().flat_map(char::escape_debug).take(max).collect();
    if s.chars().flat_map(char::escape_debug).nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A URL as shown in messages: no user info, query or fragment (pre-signed file URLs carry
/// their signature in the query).
fn shown_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    printable(u.as_str(), 200)
}

/// Reads a manifest: `requiresAccessToken` and every output entry, valid or not.
pub fn parse_manifest(
    manifest: &serde_json::Value,
) -> Result<(bool, Vec<Result<Entry, EntryError>>), BulkError> {
    let output = manifest
        .get("output")
        .and_then(|o| o.as_array())
        .ok_or_else(|| BulkError::Manifest("no `output` array".into()))?;
    if output.len() > MAX_ENTRIES {
        return Err(BulkError::Manifest(format!(
            "{} output entries (at most {MAX_ENTRIES})",
            output.len()
        )));
    }
    let with_token = manifest["requiresAccessToken"].as_bool().unwrap_or(false);
    let entries = output
        .iter()
        .enumerate()
        .map(|(index, o)| {
            let ty = o.get("type").and_then(|t| t.as_str());
            let resource_type = match ty {
                Some(t) if is_resource_type(t) => t.to_string(),
                Some(t) => {
                    return Err(EntryError::BadType {
                        index,
                        shown: format!("\"{}\"", printable(t, 80)),
                    })
                }
                None => {
                    return Err(EntryError::BadType {
                        index,
                        shown: "(missing or not a string)".into(),
                    })
                }
            };
            let raw = o
                .get("url")
                .and_then(|u| u.as_str())
                .ok_or_else(|| EntryError::BadUrl {
                    index,
                    why: "missing or not a string".into(),
                })?;
            let url = url::Url::parse(raw).map_err(|e| EntryError::BadUrl {
                index,
                why: e.to_string(),
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(EntryError::BadUrl {
                    index,
                    why: format!("scheme {}", printable(url.scheme(), 20)),
                });
            }
            Ok(Entry {
                index,
                resource_type,
                url,
            })
        })
        .collect();
    Ok((with_token, entries))
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP date (IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now`. A date in the past is zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let when = parse_http_date(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate (RFC 9110 §5.6.7), the form senders must use.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (wday, rest) = s.split_once(", ")?;
    if !["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&wday) {
        return None;
    }
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, mon, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let num = |t: &str, len: usize| -> Option<u32> {
        (t.len() == len && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let day = num(day, 2)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == mon)? as u32
        + 1;
    let year = num(year, 4)?;
    let hms: Vec<&str> = time.split(':').collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    let (h, m, sec) = (num(h, 2)?, num(m, 2)?, num(sec, 2)?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    // Days since 1970-01-01 (H. Hinnant's days_from_civil).
    let y = i64::from(if month <= 2 { year - 1 } else { year });
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The wait before the next status check: what the server asked (else the backoff), at least
/// 1 s, at most `max`, and never past the deadline (`remaining`).
pub fn next_wait(
    asked: Option<Duration>,
    backoff: Duration,
    max: Duration,
    remaining: Duration,
) -> Duration {
    asked
        .unwrap_or(backoff)
        .max(Duration::from_secs(1))
        .min(max)
        .min(remaining)
}

/// Checks NDJSON as it streams and hands back only the bytes of complete lines that passed:
/// every non-blank line must be a JSON object with a `resourceType`. The incomplete last line
/// stays here (at most [`MAX_LINE_BYTES`]) until its newline or [`NdjsonCheck::finish`].
#[derive(Debug, Default)]
pub struct NdjsonCheck {
    partial: Vec<u8>,
    lines: u64,
    resources: u64,
}

impl NdjsonCheck {
    /// Feeds a chunk; returns the checked bytes to write (complete lines only).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        let old = self.partial.len();
        self.partial.extend_from_slice(chunk);
        let Some(pos) = chunk.iter().rposition(|b| *b == b'\n') else {
            return self.bounded().map(|()| Vec::new());
        };
        let rest = self.partial.split_off(old + pos + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in complete[..complete.len() - 1].split(|b| *b == b'\n') {
            self.check(line)?;
        }
        self.bounded()?;
        Ok(complete)
    }

    /// Checks the last line (without a newline); returns its bytes to write.
    pub fn finish(&mut self) -> Result<Vec<u8>, String> {
        let rest = std::mem::take(&mut self.partial);
        self.check(&rest)?;
        Ok(rest)
    }

    /// Resources seen so far.
    pub fn resources(&self) -> u64 {
        self.resources
    }

    fn bounded(&self) -> Result<(), String> {
        if self.partial.len() > MAX_LINE_BYTES {
            return Err(format!(
                "line {} is longer than {} MiB",
                self.lines + 1,
                MAX_LINE_BYTES >> 20
            ));
        }
        Ok(())
    }

    fn check(&mut self, line: &[u8]) -> Result<(), String> {
        self.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| format!("line {}: not JSON ({e})", self.lines))?;
        if v.get("resourceType").and_then(|t| t.as_str()).is_none() {
            return Err(format!("line {}: not a FHIR resource", self.lines));
        }
        self.resources += 1;
        Ok(())
    }
}

/// The resume state kept in [`STATE_FILE`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default)]
    done: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    cancelled: bool,
}

impl State {
    fn load(path: &Path) -> Result<Self, BulkError> {
        let io = |source| BulkError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io(e)),
        };
        let bad = |reason: &str| BulkError::State {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        if !meta.file_type().is_file() {
            return Err(bad("not a regular file"));
        }
        if meta.len() > MAX_STATE_BYTES {
            return Err(bad("too large"));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))
    }

    fn save(&self, path: &Path) -> Result<(), BulkError> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        safe_write::write(path, &bytes, safe_write::Options::default()).map_err(|source| {
            BulkError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

enum Polled {
    Manifest(serde_json::Value),
    Gone(u16, String),
}

fn outcome_detail(body: &[u8]) -> String {
    crate::connection::operation_outcome_text(body)
        .map(|t| format!(": {}", printable(&t, 300)))
        .unwrap_or_default()
}

/// Runs (or resumes) an export into `opts.out`. See the module docs for the rules.
pub async fn run(
    conn: &Arc<Connection>,
    request: &ExportRequest,
    opts: &Options,
    mut cancel: Cancel,
    on: Observer,
) -> Result<Outcome, BulkError> {
    let out = &opts.out;
    safe_write::create_private_dir(out).map_err(|source| BulkError::Io {
        path: out.clone(),
        source,
    })?;
    let state_path = out.join(STATE_FILE);
    let mut state = State::load(&state_path)?;
    let deadline = Instant::now() + opts.timeout;
    let mut resuming = state.status.is_some() && !state.cancelled;
    if state.cancelled {
        on(Event::Restarting {
            reason: "the previous export job was cancelled",
        });
    }
    // 1. Kick off (unless resuming), 2. poll until the manifest.
    let (status_url, manifest) = loop {
        let status_url = if resuming {
            let url = state.status.clone().unwrap_or_default();
            on(Event::Resuming {
                status_url: &printable(&url, 200),
            });
            url
        } else {
            let started = kick_off(conn, request, deadline, opts.timeout);
            tokio::pin!(started);
            let url = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // The server may be creating the job: give the kick-off a moment to
                    // answer, so that job can be deleted too.
                    return match tokio::time::timeout(CANCEL_GRACE, &mut started).await {
                        Ok(Ok(url)) => {
                            state = State {
                                status: Some(url.clone()),
                                ..State::default()
                            };
                            cancel_job(conn, &url, &mut state, &state_path).await
                        }
                        _ => Ok(Outcome::Cancelled { job_deleted: false }),
                    };
                }
                r = &mut started => r?,
            };
            state = State {
                status: Some(url.clone()),
                ..State::default()
            };
            state.save(&state_path)?;
            on(Event::KickedOff {
                status_url: &printable(&url, 200),
            });
            url
        };
        let polled = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                return cancel_job(conn, &status_url, &mut state, &state_path).await;
            }
            r = poll(conn, &status_url, opts, deadline, &on) => r?,
        };
        match polled {
            Polled::Manifest(m) => break (status_url, m),
            Polled::Gone(status, _) if resuming => {
                let reason =
                    format!("the export job of {STATE_FILE} is gone on the server (HTTP {status})");
                on(Event::Restarting { reason: &reason });
                resuming = false;
            }
            Polled::Gone(status, detail) => return Err(BulkError::Status { status, detail }),
        }
    };
    // 3. Download.
    let (with_token, entries) = parse_manifest(&manifest)?;
    on(Event::Manifest {
        entries: entries.len(),
    });
    let mut report = Report {
        entries: entries.len(),
        ..Report::default()
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = std::collections::HashMap::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(error) => {
                on(Event::Failed { error: &error });
                report.failed.push(error);
                continue;
            }
        };
        let name = entry.file_name();
        let kept = std::fs::symlink_metadata(out.join(&name)).is_ok_and(|m| m.is_file());
        if state.done.contains(&name) && kept {
            on(Event::Skipped { name: &name });
            report.skipped.push(name);
            continue;
        }
        let (conn, out, permits, on) = (conn.clone(), out.clone(), permits.clone(), on.clone());
        let task_name = name.clone();
        let id = tasks
            .spawn(async move {
                let _permit = permits.acquire_owned().await;
                download(&conn, &entry, with_token, &out, &on).await
            })
            .id();
        names.insert(id, task_name);
    }
    loop {
        let joined = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // Abort every download and wait until each has dropped (removed) its
                // temporary file before the job is deleted and the process may exit.
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return cancel_job(conn, &status_url, &mut state, &state_path).await;
            }
            j = tasks.join_next_with_id() => j,
        };
        let Some(joined) = joined else { break };
        match joined {
            Ok((_, Ok((name, resources)))) => {
                on(Event::Finished {
                    name: &name,
                    resources,
                });
                state.done.push(name.clone());
                state.save(&state_path)?;
                report.written.push((name, resources));
            }
            Ok((_, Err(error))) => {
                on(Event::Failed { error: &error });
                report.failed.push(error);
            }
            Err(e) => {
                let error = EntryError::Aborted {
                    name: names.get(&e.id()).cloned().unwrap_or_default(),
                    reason: e.to_string(),
                };
                on(Event::Failed { error: &error });
                report.failed.push(error);
            }
        }
    }
    if report.failed.is_empty() {
        let _ = std::fs::remove_file(&state_path);
    }
    Ok(Outcome::Done(report))
}

async fn kick_off(
    conn: &Connection,
    request: &ExportRequest,
    deadline: Instant,
    timeout: Duration,
) -> Result<String, BulkError> {
    let mut req = Request::get(&request.kickoff_path());
    req.headers.push((
        reqwest::header::HeaderName::from_static("prefer"),
        reqwest::header::HeaderValue::from_static("respond-async"),
    ));
    let remaining = deadline.saturating_duration_since(Instant::now());
    let resp = tokio::time::timeout(remaining, conn.send(req))
        .await
        .map_err(|_| BulkError::Deadline(timeout))??;
    let location = resp.header("content-location").map(str::to_string);
    match (resp.status.as_u16(), location) {
        (202, Some(l)) => {
            // The status URL must be on the connection's origin (it gets the credentials).
            conn.url_for(&l)?;
            Ok(l)
        }
        (status, _) => Err(BulkError::KickOff {
            status,
            detail: outcome_detail(&resp.body),
        }),
    }
}

async fn poll(
    conn: &Connection,
    status_url: &str,
    opts: &Options,
    deadline: Instant,
    on: &Observer,
) -> Result<Polled, BulkError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(BulkError::Deadline(opts.timeout));
        }
        let resp = tokio::time::timeout(remaining, conn.get(status_url))
            .await
            .map_err(|_| BulkError::Deadline(opts.timeout))??;
        let status = resp.status.as_u16();
        let retry_after = resp
            .header("retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        match status {
            200 => {
                return serde_json::from_slice(&resp.body)
                    .map(Polled::Manifest)
                    .map_err(|e| BulkError::Manifest(format!("not JSON ({e})")));
            }
            // In progress; 429 (polling too often) and 503 with Retry-After: wait too.
            202 | 429 => {}
            503 if retry_after.is_some() => {}
            404 | 410 => return Ok(Polled::Gone(status, outcome_detail(&resp.body))),
            _ => {
                return Err(BulkError::Status {
                    status,
                    detail: outcome_detail(&resp.body),
                })
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let wait = next_wait(retry_after, backoff, opts.max_retry_after, remaining);
        backoff = (backoff * 2).min(Duration::from_secs(30));
        let progress = resp.header("x-progress").map(|p| printable(p, 100));
        on(Event::Waiting {
            progress: progress.as_deref(),
            next: wait,
        });
        tokio::time::sleep(wait).await;
    }
}

/// Deletes the job on the server (bounded by [`CANCEL_GRACE`]) and records the cancel.
async fn cancel_job(
    conn: &Connection,
    status_url: &str,
    state: &mut State,
    state_path: &Path,
) -> Result<Outcome, BulkError> {
    let mut del = Request::get(status_url);
    del.method = reqwest::Method::DELETE;
    let job_deleted = matches!(
        tokio::time::timeout(CANCEL_GRACE, conn.send(del)).await,
        Ok(Ok(r)) if r.status.is_success() || r.status.as_u16() == 404
    );
    state.cancelled = true;
    state.save(state_path)?;
    Ok(Outcome::Cancelled { job_deleted })
}

/// Downloads one entry into a private temporary file in `out`, checking NDJSON as it
/// streams, and renames it to its final name when every line passed.
async fn download(
    conn: &Connection,
    entry: &Entry,
    with_token: bool,
    out: &Path,
    on: &Observer,
) -> Result<(String, u64), EntryError> {
    let name = entry.file_name();
    let url = &entry.url;
    let shown = shown_url(url);
    let conn_err = |source: Error| EntryError::Connection {
        name: name.clone(),
        source,
    };
    let transport_err = |error: TransportError| {
        conn_err(Error::Transport {
            id: conn.id().to_string(),
            error,
        })
    };
    let same_origin = url.origin() == conn.base_url().origin();
    if with_token && !same_origin {
        return Err(EntryError::ForeignOrigin { name, url: shown });
    }
    // Credentials (and a client certificate) only for the connection's own origin; the
    // headers only when the manifest asks for the token.
    let creds = if same_origin {
        Some(conn.credentials(false).await.map_err(conn_err)?)
    } else {
        None
    };
    let client = conn
        .transport
        .client(creds.as_ref().and_then(|c| c.identity.as_ref()))
        .map_err(|e| transport_err(e.into()))?;
    let mut rb = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/fhir+ndjson")
        .timeout(DOWNLOAD_LIMIT);
    if with_token {
        for (k, v) in creds.iter().flat_map(|c| c.headers.iter()) {
            rb = rb.header(k, v);
        }
    }
    let settings = conn.transport.settings();
    let idle = settings.read_timeout;
    let idle_err = || EntryError::Idle {
        name: name.clone(),
        idle,
        url: shown.clone(),
    };
    on(Event::Started { name: &name });
    let mut resp = tokio::time::timeout(settings.connect_timeout + idle, rb.send())
        .await
        .map_err(|_| idle_err())?
        .map_err(|e| transport_err(conn.transport.classify_error(&e, url)))?;
    if !resp.status().is_success() {
        return Err(EntryError::Http {
            name,
            status: resp.status().as_u16(),
            url: shown,
        });
    }
    let io_err = |path: &Path, source| EntryError::Io {
        name: name.clone(),
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = safe_write::TempFile::new_in(out).map_err(|e| io_err(out, e))?;
    let mut check = NdjsonCheck::default();
    let ndjson_err = |reason| EntryError::Ndjson {
        name: name.clone(),
        reason,
    };
    loop {
        let chunk = tokio::time::timeout(idle, resp.chunk())
            .await
            .map_err(|_| idle_err())?
            .map_err(|e| transport_err(conn.transport.classify_error(&e, url)))?;
        let Some(chunk) = chunk else { break };
        let checked = check.feed(&chunk).map_err(ndjson_err)?;
        if !checked.is_empty() {
            let path = tmp.path().to_path_buf();
            tmp.file()
                .write_all(&checked)
                .map_err(|e| io_err(&path, e))?;
            on(Event::Bytes {
                name: &name,
                bytes: checked.len() as u64,
            });
        }
    }
    let last = check.finish().map_err(ndjson_err)?;
    let path = tmp.path().to_path_buf();
    tmp.file().write_all(&last).map_err(|e| io_err(&path, e))?;
    tmp.set_mode(0o600).map_err(|e| io_err(&path, e))?;
    let target = out.join(&name);
    tmp.persist(&target).map_err(|e| io_err(&target, e))?;
    Ok((name, check.resources()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_names_not_paths() {
        for ok in [
            "Patient",
            "Observation",
            "Ab",
            &format!("A{}", "b".repeat(63)),
        ] {
            assert!(is_resource_type(ok), "{ok}");
        }
        for bad in [
            "",
            "P",
            "patient",
            "../escaped",
            "/tmp/x",
            "Patient/../../x",
            "Pat\u{1b}[2Jient",
            "Patient.ndjson",
            "Patiént",
            &format!("A{}", "b".repeat(64)),
        ] {
            assert!(!is_resource_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn manifest_entries_are_checked_one_by_one() {
        let m = serde_json::json!({
            "requiresAccessToken": true,
            "output": [
                {"type": "Patient", "url": "https://h/f/1"},
                {"type": "../x", "url": "https://h/f/2"},
                {"type": "Observation", "url": "file:///etc/passwd"},
                {"type": "Encounter", "url": "/relative"},
                {"type": 7, "url": "https://h/f/3"},
                {"type": "Condition", "url": "http://h/f/4?sig=secret"},
            ]
        });
        let (token, entries) = parse_manifest(&m).unwrap();
        assert!(token);
        let ok: Vec<String> = entries
            .iter()
            .filter_map(|e| e.as_ref().ok().map(Entry::file_name))
            .collect();
        assert_eq!(ok, ["Patient.000.ndjson", "Condition.005.ndjson"]);
        let errs: Vec<String> = entries
            .iter()
            .filter_map(|e| e.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("entry 1") && errs[0].contains("\"../x\""));
        assert!(errs[1].contains("entry 2") && errs[1].contains("file"));
        assert!(parse_manifest(&serde_json::json!({})).is_err());
    }

    #[test]
    fn shown_text_has_no_control_characters_or_signatures() {
        assert_eq!(printable("a\u{1b}[2Jb", 80), "a\\u{1b}[2Jb");
        assert!(printable(&"x".repeat(500), 80).ends_with('…'));
        let u = url::Url::parse("https://u:p@h/f?X-Amz-Signature=s#f").unwrap();
        assert_eq!(shown_url(&u), "https://h/f");
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:07 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", SystemTime::UNIX_EPOCH),
            Some(Duration::from_secs(1_709_164_800))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn a_single_wait_is_capped_by_the_maximum_and_the_deadline() {
        let s = Duration::from_secs;
        assert_eq!(next_wait(Some(s(3600)), s(1), s(60), s(3600)), s(60));
        assert_eq!(next_wait(Some(s(3600)), s(1), s(60), s(5)), s(5));
        assert_eq!(next_wait(Some(s(0)), s(1), s(60), s(100)), s(1));
        assert_eq!(next_wait(None, s(8), s(60), s(100)), s(8));
        assert_eq!(next_wait(Some(s(u64::MAX)), s(1), s(60), s(100)), s(60));
    }

    #[test]
    fn ndjson_bytes_are_released_only_when_their_line_passed() {
        let mut c = NdjsonCheck::default();
        assert_eq!(c.feed(b"{\"resourceType\":\"Pa").unwrap(), b"");
        assert_eq!(
            c.feed(b"tient\"}\n{\"resou").unwrap(),
            b"{\"resourceType\":\"Patient\"}\n"
        );
        assert_eq!(
            c.feed(b"rceType\":\"X\"}\n\n").unwrap(),
            b"{\"resourceType\":\"X\"}\n\n"
        );
        assert_eq!(c.finish().unwrap(), b"");
        assert_eq!(c.resources(), 2);

        let mut c = NdjsonCheck::default();
        assert!(c.feed(b"{\"resourceType\":\"X\"}\nnot json\n").is_err());
        let mut c = NdjsonCheck::default();
        assert!(c.feed(b"{\"id\":\"1\"}\n").is_err());
        // The trailing line without a newline is checked too.
        let mut c = NdjsonCheck::default();
        assert_eq!(
            c.feed(b"{\"resourceType\":\"X\"}\n{\"bro").unwrap().len(),
            21
        );
        assert!(c.finish().is_err());
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut c = NdjsonCheck::default();
        let chunk = vec![b'x'; 1 << 20];
        let mut failed = false;
        for _ in 0..=(MAX_LINE_BYTES >> 20) {
            if c.feed(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn kickoff_paths() {
        let r = ExportRequest {
            level: Level::Group("a/b c".into()),
            types: Some("Patient,Observation".into()),
            since: None,
        };
        assert_eq!(
            r.kickoff_path(),
            "Group/a%2Fb%20c/$export?_type=Patient%2CObservation"
        );
        assert_eq!(ExportRequest::default().kickoff_path(), "$export");
    }
}
