//! The downloads' resource bounds, seen through a slow, counting `fsync` that test builds put
//! in place of `File::sync_all` for the files of one output directory: a download gives its
//! slot back before its file's `fsync`, at most `parallel` downloads stream and at most
//! `parallel * SYNCING_PER_SLOT` files wait for the disk at once, no download buffer lives
//! through its file's `fsync`, and a file is reported done (observer, resume state) only once
//! its `fsync` returned.

use super::download::SYNCING_PER_SLOT;
use super::*;
use fhirconn_testkit::{FhirServer, FhirServerConfig};
use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

/// What the downloads into one output directory did.
#[derive(Debug, Default)]
struct Counts {
    /// Downloads whose NDJSON check (and its buffer) is alive: created after the download
    /// slot is taken, dropped before it is given back.
    streaming: usize,
    max_streaming: usize,
    /// Files whose buffer is gone and whose `fsync` has not returned.
    unsynced: usize,
    /// The most such files when a download started.
    max_unsynced_at_start: usize,
    /// Files inside their `fsync`.
    syncing: usize,
    max_syncing: usize,
    /// `fsync`s started.
    entered: usize,
    /// Names whose `fsync` returned.
    synced: HashSet<String>,
    /// Temporary files whose download buffer is alive.
    live: HashSet<PathBuf>,
    /// Files whose buffer was alive during their `fsync`.
    alive_during_sync: Vec<String>,
    /// Files reported done (observer, state file, final name) before their `fsync` returned.
    done_before_sync: Vec<String>,
}

/// The slow `fsync` of one output directory and what it saw.
#[derive(Debug)]
struct Probe {
    out: PathBuf,
    /// Files the export writes: an `fsync` waits until all of them entered theirs, or `hold`.
    files: usize,
    hold: Duration,
    counts: Mutex<Counts>,
    entered: Condvar,
}

/// The probes of the tests running (each on its own output directory).
static PROBES: Mutex<Vec<Arc<Probe>>> = Mutex::new(Vec::new());

fn probe_for(out: &Path) -> Option<Arc<Probe>> {
    let probes = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    probes.iter().find(|p| p.out == out).cloned()
}

impl Probe {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `fsync` of `tmp` (to become `name`): checks the file is not reported yet and its
    /// buffer is gone, then waits (until every file entered its `fsync`, at most `hold`).
    fn sync(&self, file: &std::fs::File, tmp: &Path, name: &str) -> std::io::Result<()> {
        let state = std::fs::read(self.out.join(STATE_FILE)).unwrap_or_default();
        let state: serde_json::Value = serde_json::from_slice(&state).unwrap_or_default();
        let recorded = state["done"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n == name));
        let renamed = self.out.join(name).exists();
        let mut c = self.counts();
        c.entered += 1;
        c.syncing += 1;
        c.max_syncing = c.max_syncing.max(c.syncing);
        if c.live.contains(tmp) {
            c.alive_during_sync.push(name.to_string());
        }
        if recorded || renamed {
            c.done_before_sync
                .push(format!("{name} (in the state file or renamed)"));
        }
        self.entered.notify_all();
        let until = Instant::now() + self.hold;
        while c.entered < self.files {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            c = self
                .entered
                .wait_timeout(c, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(c);
        let synced = file.sync_all();
        let mut c = self.counts();
        c.syncing -= 1;
        c.unsynced = c.unsynced.saturating_sub(1);
        c.synced.insert(name.to_string());
        synced
    }

    fn observe(&self, event: &Event<'_>) {
        let mut c = self.counts();
        match event {
            Event::Started { .. } => {
                c.max_unsynced_at_start = c.max_unsynced_at_start.max(c.unsynced)
            }
            Event::Finished { name, .. } if !c.synced.contains(*name) => {
                c.done_before_sync.push(format!("{name} (observer)"));
            }
            _ => {}
        }
    }
}

/// A file's `fsync`, run on a blocking thread.
type SyncFn = Box<dyn FnOnce(&std::fs::File) -> std::io::Result<()> + Send>;

/// Test builds' `fsync` of a download: the probe's for its output directory, else the real one.
pub(super) fn fsync(out: &Path, tmp: &Path, name: &str) -> SyncFn {
    let Some(probe) = probe_for(out) else {
        return Box::new(std::fs::File::sync_all);
    };
    let (tmp, name) = (tmp.to_path_buf(), name.to_string());
    Box::new(move |file| probe.sync(file, &tmp, &name))
}

/// A download's NDJSON check, counted while alive (test builds).
pub(super) struct Tracked {
    check: NdjsonCheck,
    tmp: PathBuf,
    probe: Option<Arc<Probe>>,
}

/// Test builds' download check: counted by the probe of its output directory, if any.
pub(super) fn track(check: NdjsonCheck, tmp: &Path) -> Tracked {
    let probe = tmp.parent().and_then(probe_for);
    if let Some(p) = &probe {
        let mut c = p.counts();
        c.streaming += 1;
        c.max_streaming = c.max_streaming.max(c.streaming);
        c.live.insert(tmp.to_path_buf());
    }
    Tracked {
        check,
        tmp: tmp.to_path_buf(),
        probe,
    }
}

impl std::ops::Deref for Tracked {
    type Target = NdjsonCheck;
    fn deref(&self) -> &NdjsonCheck {
        &self.check
    }
}

impl std::ops::DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut NdjsonCheck {
        &mut self.check
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(p) = &self.probe {
            let mut c = p.counts();
            c.streaming -= 1;
            c.unsynced += 1;
            c.live.remove(&self.tmp);
        }
    }
}

const TYPES: [&str; 6] = [
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "Procedure",
    "Immunization",
];
const PARALLEL: usize = 2;

/// Exports six files (each streamed over ~100 ms), `PARALLEL` at a time, every `fsync` held
/// up to 1 s; checks the export itself succeeded and gives what the probe saw.
async fn export_with_slow_fsync() -> Counts {
    let fhir = FhirServer::start(FhirServerConfig {
        export_polls: 0,
        export_retry_after: None,
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    fhir.set_export_file_trickle(Some((2, Duration::from_millis(50))));
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"connections": {"open": {"base-url": fhir.base_url()}}});
    let host = crate::Host::builder()
        .config_value(dir.path(), config)
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let conn = host.connection("open").unwrap();
    let out = dir.path().join("out");
    let probe = Arc::new(Probe {
        out: out.clone(),
        files: TYPES.len(),
        hold: Duration::from_secs(1),
        counts: Mutex::default(),
        entered: Condvar::new(),
    });
    PROBES.lock().unwrap().push(probe.clone());
    let observed = probe.clone();
    let on: Observer = Arc::new(move |e: Event<'_>| observed.observe(&e));
    let request = ExportRequest {
        types: Some(TYPES.join(",")),
        ..ExportRequest::default()
    };
    let opts = Options {
        parallel: PARALLEL,
        ..Options::new(&out)
    };
    let ran = tokio::time::timeout(
        Duration::from_secs(60),
        run(&conn, &request, &opts, Cancel::never(), on),
    )
    .await;
    PROBES.lock().unwrap().retain(|p| !Arc::ptr_eq(p, &probe));
    let Ok(Ok(Outcome::Done(report))) = ran else {
        panic!("the export did not complete: {ran:?}");
    };
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.written.len(), TYPES.len());
    for (i, ty) in TYPES.iter().enumerate() {
        let text = std::fs::read_to_string(out.join(format!("{ty}.{i:03}.ndjson"))).unwrap();
        assert_eq!(text.lines().count(), 2, "{ty}");
    }
    assert!(!out.join(STATE_FILE).exists());
    let counts = std::mem::take(&mut *probe.counts());
    assert_eq!(counts.entered, TYPES.len(), "{counts:?}");
    counts
}

/// Counted by their live buffers: a download's check lives from after its slot is taken
/// until before it is given back, so this bounds the memory of the downloads too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_parallel_downloads_stream_at_once() {
    let c = export_with_slow_fsync().await;
    assert_eq!(c.max_streaming, PARALLEL, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_slot_is_given_back_before_its_fsync() {
    let c = export_with_slow_fsync().await;
    // Held through the `fsync`, a slot frees only once its file synced: a download would then
    // start beside at most `PARALLEL - 1` unsynced files.
    assert!(c.max_unsynced_at_start >= PARALLEL, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_parallel_times_two_files_wait_for_the_disk() {
    let c = export_with_slow_fsync().await;
    assert_eq!(c.max_syncing, PARALLEL * SYNCING_PER_SLOT, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_download_buffer_lives_through_its_fsync() {
    let c = export_with_slow_fsync().await;
    assert!(c.alive_during_sync.is_empty(), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_reported_done_only_after_its_fsync() {
    let c = export_with_slow_fsync().await;
    assert!(c.done_before_sync.is_empty(), "{c:?}");
}
