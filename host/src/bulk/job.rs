//! The export job: kick-off, polling under the deadline, resume state, cancellation (the job
//! deleted on the server), and the downloads run in parallel.

use super::download::download;
use super::*;

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

/// A server's OperationOutcome text for a message: secrets it echoes redacted (before it is
/// cut), control characters escaped.
fn outcome_detail(conn: &Connection, body: &[u8]) -> String {
    crate::connection::operation_outcome_text(body)
        .map(|t| format!(": {}", printable(&conn.redact(&t), 300)))
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
    // Patient data and the resume state go there: nobody else may plant or swap files.
    safe_write::create_private_dir(out)
        .and_then(|()| safe_write::check_private_dir(out))
        .map_err(|source| BulkError::Io {
            path: out.clone(),
            source,
        })?;
    let mut job = Job {
        state_path: out.join(STATE_FILE),
        state: State::default(),
    };
    job.state = State::load(&job.state_path)?;
    // 1. Kick off (unless resuming), 2. poll until the manifest.
    let (status_url, manifest) = match job.manifest(conn, request, opts, &mut cancel, &on).await? {
        Ready::Manifest(url, manifest) => (url, manifest),
        Ready::Cancelled(outcome) => return Ok(outcome),
    };
    // 3. Download.
    job.download_all(conn, &status_url, &manifest, opts, &mut cancel, &on)
        .await
}

/// The resume state and where it is kept.
struct Job {
    state_path: PathBuf,
    state: State,
}

/// How waiting for the manifest ended.
enum Ready {
    Manifest(String, serde_json::Value),
    Cancelled(Outcome),
}

impl Job {
    /// Kicks the export off (or resumes it) and polls until the manifest; restarts once when
    /// a resumed job is gone on the server.
    async fn manifest(
        &mut self,
        conn: &Connection,
        request: &ExportRequest,
        opts: &Options,
        cancel: &mut Cancel,
        on: &Observer,
    ) -> Result<Ready, BulkError> {
        let deadline = Instant::now() + opts.timeout;
        let mut resuming = self.state.status.is_some() && !self.state.cancelled;
        if self.state.cancelled {
            on(Event::Restarting {
                reason: "the previous export job was cancelled",
            });
        }
        loop {
            let status_url = if resuming {
                let url = self.state.status.clone().unwrap_or_default();
                on(Event::Resuming {
                    status_url: &printable(&url, 200),
                });
                url
            } else {
                match self.kick_off(conn, request, opts, deadline, cancel).await? {
                    Ok(url) => {
                        on(Event::KickedOff {
                            status_url: &printable(&url, 200),
                        });
                        url
                    }
                    Err(cancelled) => return Ok(Ready::Cancelled(cancelled)),
                }
            };
            let polled = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    return Ok(Ready::Cancelled(self.cancel(conn, &status_url).await?));
                }
                r = poll(conn, &status_url, opts, deadline, on) => r?,
            };
            match polled {
                Polled::Manifest(m) => return Ok(Ready::Manifest(status_url, m)),
                Polled::Gone(status, _) if resuming => {
                    let reason = format!(
                        "the export job of {STATE_FILE} is gone on the server (HTTP {status})"
                    );
                    on(Event::Restarting { reason: &reason });
                    resuming = false;
                }
                Polled::Gone(status, detail) => return Err(BulkError::Status { status, detail }),
            }
        }
    }

    /// Kicks the job off and records its status URL; `Err(outcome)` when cancelled first.
    async fn kick_off(
        &mut self,
        conn: &Connection,
        request: &ExportRequest,
        opts: &Options,
        deadline: Instant,
        cancel: &mut Cancel,
    ) -> Result<Result<String, Outcome>, BulkError> {
        let started = kick_off(conn, request, deadline, opts.timeout);
        tokio::pin!(started);
        let url = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // The server may be creating the job: give the kick-off a moment to
                // answer, so that job can be deleted too.
                return match tokio::time::timeout(CANCEL_GRACE, &mut started).await {
                    Ok(Ok(url)) => {
                        self.state = State {
                            status: Some(url.clone()),
                            ..State::default()
                        };
                        Ok(Err(self.cancel(conn, &url).await?))
                    }
                    _ => Ok(Err(Outcome::Cancelled { job_deleted: false })),
                };
            }
            r = &mut started => r?,
        };
        self.state = State {
            status: Some(url.clone()),
            ..State::default()
        };
        self.state.save(&self.state_path)?;
        Ok(Ok(url))
    }

    /// Deletes the job on the server and records the cancel.
    async fn cancel(&mut self, conn: &Connection, status_url: &str) -> Result<Outcome, BulkError> {
        cancel_job(conn, status_url, &mut self.state, &self.state_path).await
    }

    /// Downloads the manifest's entries, `opts.parallel` at a time, skipping files a previous
    /// run completed; the state file is removed when every entry succeeded.
    async fn download_all(
        &mut self,
        conn: &Arc<Connection>,
        status_url: &str,
        manifest: &serde_json::Value,
        opts: &Options,
        cancel: &mut Cancel,
        on: &Observer,
    ) -> Result<Outcome, BulkError> {
        let out = &opts.out;
        let (with_token, entries) = parse_manifest(manifest)?;
        on(Event::Manifest {
            entries: entries.len(),
        });
        let mut report = Report {
            entries: entries.len(),
            ..Report::default()
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
        let syncing = Arc::new(tokio::sync::Semaphore::new(
            opts.parallel.max(1) * super::download::SYNCING_PER_SLOT,
        ));
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
            if self.state.done.contains(&name) && kept {
                on(Event::Skipped { name: &name });
                report.skipped.push(name);
                continue;
            }
            let (conn, out, permits, on) = (conn.clone(), out.clone(), permits.clone(), on.clone());
            let syncing = syncing.clone();
            let task_name = name.clone();
            let id = tasks
                .spawn(async move {
                    let download_slot =
                        permits
                            .acquire_owned()
                            .await
                            .map_err(|e| EntryError::Aborted {
                                name: entry.file_name(),
                                reason: e.to_string(),
                            })?;
                    let slot = super::download::Slot {
                        download: download_slot,
                        syncing,
                    };
                    download(&conn, &entry, with_token, &out, &on, slot).await
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
                    return self.cancel(conn, status_url).await;
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
                    self.state.done.push(name.clone());
                    self.state.save(&self.state_path)?;
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
            let _ = std::fs::remove_file(&self.state_path);
        }
        Ok(Outcome::Done(report))
    }
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
            detail: outcome_detail(conn, &resp.body),
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
            404 | 410 => return Ok(Polled::Gone(status, outcome_detail(conn, &resp.body))),
            _ => {
                return Err(BulkError::Status {
                    status,
                    detail: outcome_detail(conn, &resp.body),
                })
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let wait = next_wait(retry_after, backoff, opts.max_retry_after, remaining);
        backoff = (backoff * 2).min(Duration::from_secs(30));
        let progress = resp
            .header("x-progress")
            .map(|p| printable(&conn.redact(p), 100));
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
