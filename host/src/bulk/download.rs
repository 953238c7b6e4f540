//! One download: credentials for the connection's own origin only, an idle timeout between
//! chunks, NDJSON checked before bytes reach a private temporary file (written 1 MiB at a time,
//! its writeback started every 8 MiB), synced and renamed when complete.

use super::*;
use crate::transport::Outgoing;

/// Why [`request_for`] gave no request.
enum Refused {
    /// The manifest asks for the token on a file of another origin.
    ForeignOrigin,
    /// The connection's credentials could not be had.
    Credentials(Error),
}

/// The GET of `entry`, with its credentials: only for the connection's own origin (a client
/// certificate then too), the headers only when the manifest asks for the token, signed by a
/// signing scheme when credentials go with it (a streamed GET signs the empty body).
async fn request_for(
    conn: &Connection,
    entry: &Entry,
    with_token: bool,
) -> Result<(Outgoing, Option<std::sync::Arc<crate::auth::Resolved>>), Refused> {
    let url = &entry.url;
    let same_origin = url.origin() == conn.base_url().origin();
    if with_token && !same_origin {
        return Err(Refused::ForeignOrigin);
    }
    let creds = if same_origin {
        Some(
            conn.credentials(false)
                .await
                .map_err(Refused::Credentials)?,
        )
    } else {
        None
    };
    let (credential_headers, signer) = match (&creds, with_token) {
        (Some(c), true) => (c.headers.clone(), conn.signer(None)),
        _ => (Vec::new(), None),
    };
    let get = Outgoing {
        method: reqwest::Method::GET,
        url: url.clone(),
        headers: vec![(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("application/fhir+ndjson"),
        )],
        credential_headers,
        body: None,
        follow_redirects: false,
        signer,
    };
    Ok((get, creds))
}

/// Downloads one entry into a private temporary file in `out`, checking NDJSON as it
/// streams, and renames it to its final name when every line passed. `slot` is the download's
/// share of the job's parallelism: given back once the last byte is written, so the next
/// download starts while this file's `fsync` waits for the disk.
pub(super) async fn download(
    conn: &Connection,
    entry: &Entry,
    with_token: bool,
    out: &Path,
    on: &Observer,
    slot: Slot,
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
    let (get, creds) = request_for(conn, entry, with_token)
        .await
        .map_err(|e| match e {
            Refused::ForeignOrigin => EntryError::ForeignOrigin {
                name: name.clone(),
                url: shown.clone(),
            },
            Refused::Credentials(source) => conn_err(source),
        })?;
    let identity = creds.as_ref().and_then(|c| c.identity.as_ref());
    let settings = conn.transport.settings();
    let idle = settings.read_timeout;
    let idle_err = || EntryError::Idle {
        name: name.clone(),
        idle,
        url: shown.clone(),
    };
    on(Event::Started { name: &name });
    let sent = conn.transport.open_long(&get, identity, DOWNLOAD_LIMIT);
    let mut resp = tokio::time::timeout(settings.connect_timeout + idle, sent)
        .await
        .map_err(|_| idle_err())?
        .map_err(transport_err)?;
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
    let path = tmp.path().to_path_buf();
    let mut check = track(NdjsonCheck::default(), &path);
    let ndjson_err = |reason| EntryError::Ndjson {
        name: name.clone(),
        reason,
    };
    let mut writeback = Writeback::default();
    loop {
        let chunk = tokio::time::timeout(idle, resp.chunk())
            .await
            .map_err(|_| idle_err())?
            .map_err(|e| transport_err(conn.transport.classify_error(&e, url)))?;
        let Some(chunk) = chunk else { break };
        check.push(&chunk).map_err(ndjson_err)?;
        let checked = check.checked();
        if checked.len() >= WRITE_BYTES {
            tmp.file()
                .write_all(checked)
                .map_err(|e| io_err(&path, e))?;
            let bytes = checked.len() as u64;
            check.consume();
            on(Event::Bytes { name: &name, bytes });
            writeback.wrote(tmp.file(), bytes);
        }
    }
    let last = check.finish().map_err(ndjson_err)?;
    tmp.file().write_all(&last).map_err(|e| io_err(&path, e))?;
    if !last.is_empty() {
        on(Event::Bytes {
            name: &name,
            bytes: last.len() as u64,
        });
    }
    let resources = check.resources();
    // Nothing more is read: the buffer and the download slot go before the wait for the disk,
    // once this file has a place among those waiting (bounded: open files, blocking threads).
    let Slot { download, syncing } = slot;
    let _waiting = syncing
        .acquire_owned()
        .await
        .map_err(|e| io_err(&path, std::io::Error::other(e)))?;
    drop((last, check, resp, download));
    tmp.set_mode(0o600).map_err(|e| io_err(&path, e))?;
    // The `fsync` of the data runs off the runtime's threads, so the other downloads go on
    // meanwhile (persist's own `fsync` is then quick); the writeback started while the file
    // was written leaves it little to do. The job reports the file only after this. On a
    // cancel, this task drops `tmp` (the file is removed) and the sync of the clone finishes
    // on an unlinked file.
    let synced = tmp.file().try_clone().map_err(|e| io_err(&path, e))?;
    let sync = fsync(out, &path, &name);
    tokio::task::spawn_blocking(move || sync(&synced))
        .await
        .map_err(|e| io_err(&path, std::io::Error::other(e)))?
        .map_err(|e| io_err(&path, e))?;
    let target = out.join(&name);
    tmp.persist(&target).map_err(|e| io_err(&target, e))?;
    Ok((name, resources))
}

/// A file's `fsync`: `File::sync_all` itself (the tests put a slow, counting one in its place
/// for the files of their output directory: `sync_tests`).
#[cfg(not(test))]
fn fsync(
    _out: &Path,
    _tmp: &Path,
    _name: &str,
) -> impl FnOnce(&std::fs::File) -> std::io::Result<()> + Send + 'static {
    std::fs::File::sync_all
}

/// A download's NDJSON check (and the buffer it holds) as it is (the tests count the live
/// ones: `sync_tests`).
#[cfg(not(test))]
#[inline]
fn track(check: NdjsonCheck, _tmp: &Path) -> NdjsonCheck {
    check
}

#[cfg(test)]
use super::sync_tests::{fsync, track};

/// A download's share of the job's parallelism.
pub(super) struct Slot {
    /// One of the job's `parallel` download slots.
    pub(super) download: tokio::sync::OwnedSemaphorePermit,
    /// The files waiting for the disk ([`SYNCING_PER_SLOT`] per download slot).
    pub(super) syncing: Arc<tokio::sync::Semaphore>,
}

/// Files that may wait for their `fsync` at once, per download slot.
pub(super) const SYNCING_PER_SLOT: usize = 2;

/// Checked bytes gathered for one `write` (fewer, larger writes).
const WRITE_BYTES: usize = 1 << 20;
/// Written bytes after which their writeback is started.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Durability overlapped with the download: every [`WRITEBACK_BYTES`] written, the kernel is
/// asked to start writing them to disk (Linux: `posix_fadvise(POSIX_FADV_DONTNEED)` starts
/// an asynchronous writeback of the range, like `sync_file_range(SYNC_FILE_RANGE_WRITE)`, and
/// drops pages already clean), so the disk writes while bytes arrive and the `fsync` at the
/// end has only the tail left. Without it the page cache holds the whole file until then
/// (background writeback starts only at `dirty_background_ratio`), and the last files'
/// `fsync`s add their full length to the wall time. The advice can block (queueing I/O,
/// draining page lists: 0.9 s in all for 1 GB, measured), so it runs on a blocking thread,
/// one at a time per file. Advice only: the `fsync` before the rename is what makes the file
/// durable, so a refused advice is no error.
#[derive(Debug, Default)]
struct Writeback {
    written: u64,
    started: u64,
    file: Option<Arc<std::fs::File>>,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Writeback {
    /// `bytes` more were written to `file`.
    fn wrote(&mut self, file: &std::fs::File, bytes: u64) {
        self.written += bytes;
        let pending = self.written - self.started;
        if pending < WRITEBACK_BYTES || self.running.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        if self.file.is_none() {
            self.file = file.try_clone().ok().map(Arc::new);
        }
        let Some(file) = self.file.clone() else {
            return;
        };
        let offset = self.started;
        self.started = self.written;
        self.running = Some(tokio::task::spawn_blocking(move || {
            start_writeback(&file, offset, pending);
        }));
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    let advice = rustix::fs::Advice::DontNeed;
    let _ = rustix::fs::fadvise(file, offset, std::num::NonZeroU64::new(len), advice);
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &std::fs::File, _: u64, _: u64) {}
