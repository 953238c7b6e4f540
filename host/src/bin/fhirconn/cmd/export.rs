//! `fhirconn export`: renders [`fhirconn_host::bulk::run`] (a spinner while the job runs, a
//! bar per download on a terminal; errors always) and maps its outcome to an exit code.

use crate::{CliError, CmdResult, Global};
use fhirconn_host::bulk::{self, BulkError, Event, Outcome};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

/// `fhirconn export` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connection id.
    id: String,
    /// Resource types, comma-separated (`_type`).
    #[arg(long = "type", value_name = "T,T")]
    types: Option<String>,
    /// Only resources changed since this instant (`_since`, e.g. 2026-01-01T00:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Export one Group's patients (`Group/ID/$export`).
    #[arg(long, conflicts_with = "patient")]
    group: Option<String>,
    /// Export all patients' data (`Patient/$export`); default: system level (`$export`).
    #[arg(long)]
    patient: bool,
    /// Directory for the NDJSON files (created 0700; files are 0600).
    #[arg(long)]
    out: PathBuf,
    /// Overall deadline for the kick-off and waiting for the job: seconds or an ISO-8601
    /// duration (a single Retry-After is capped at 60 s). Downloads are not limited by
    /// it; each stops only when no data arrives for the connection's read-timeout.
    #[arg(long, default_value = "PT1H", value_name = "DURATION")]
    timeout: String,
}

/// Parses `--timeout`: seconds (`3600`) or an ISO-8601 duration (`PT1H`).
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|e| format!("'{s}': {e}"));
    }
    fhirconn_host::config::duration::parse(s)
}

/// Ctrl-C (SIGINT) for the whole export: the listener is installed once, before anything
/// else, so a Ctrl-C at any moment (kick-off, a status request, a wait, downloads) cancels.
/// A second Ctrl-C exits at once.
fn cancel_on_ctrl_c() -> bulk::Cancel {
    let (tx, cancel) = bulk::Cancel::new();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::interrupt()) {
            Ok(mut sig) => {
                tokio::spawn(async move {
                    if sig.recv().await.is_some() {
                        let _ = tx.send(true);
                    }
                    if sig.recv().await.is_some() {
                        std::process::exit(130);
                    }
                });
            }
            Err(e) => eprintln!("warning: Ctrl-C cannot cancel this export: {e}"),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(true);
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    cancel
}

/// Runs the export and renders its progress and outcome.
pub async fn run(g: &Global, a: Args) -> CmdResult {
    let cancel = cancel_on_ctrl_c();
    let timeout =
        parse_timeout(&a.timeout).map_err(|e| CliError::Usage(format!("--timeout: {e}")))?;
    let host = g.host(std::slice::from_ref(&a.id)).await?;
    let conn = host.connection(&a.id)?;
    let request = bulk::ExportRequest {
        level: match a.group {
            Some(g) => bulk::Level::Group(g),
            None if a.patient => bulk::Level::Patient,
            None => bulk::Level::System,
        },
        types: a.types,
        since: a.since,
    };
    let opts = bulk::Options {
        timeout,
        ..bulk::Options::new(&a.out)
    };
    let view = Progress::new(!std::io::stderr().is_terminal());
    let result = bulk::run(&conn, &request, &opts, cancel, view.observer()).await;
    view.clear();
    outcome(result, &a.out)
}

fn outcome(result: Result<Outcome, BulkError>, out: &std::path::Path) -> CmdResult {
    match result {
        Ok(Outcome::Done(report)) if report.failed.is_empty() => {
            println!("{} file(s) in {}", report.entries, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(Outcome::Done(report)) => Err(CliError::Said {
            text: format!(
                "{} of {} output entries failed; run the same command again to resume",
                report.failed.len(),
                report.entries
            ),
            code: 1,
        }),
        Ok(Outcome::Cancelled { job_deleted }) => Err(CliError::Said {
            text: if job_deleted {
                "cancelled; the export job was deleted on the server".into()
            } else {
                "cancelled; the server did not confirm deleting the export job".into()
            },
            code: 130,
        }),
        Err(BulkError::Connection(e)) => Err(e.into()),
        Err(e @ (BulkError::Io { .. } | BulkError::State { .. })) => {
            Err(CliError::Usage(e.to_string()))
        }
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

/// The progress view: a spinner while waiting and a bar per download on a terminal, hidden
/// when standard error is not one (errors are said either way).
struct Progress {
    quiet: bool,
    multi: MultiProgress,
    spinner: ProgressBar,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let multi = MultiProgress::with_draw_target(if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let spinner = multi.add(ProgressBar::new_spinner());
        spinner.set_message("waiting for the export job");
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        Self {
            quiet,
            multi,
            spinner,
        }
    }

    fn clear(&self) {
        self.spinner.finish_and_clear();
        let _ = self.multi.clear();
    }

    fn observer(&self) -> bulk::Observer {
        let (quiet, progress, spinner) = (self.quiet, self.multi.clone(), self.spinner.clone());
        let bars = Mutex::new(HashMap::<String, ProgressBar>::new());
        Arc::new(move |event: Event<'_>| {
            let say = |m: String| {
                if !quiet {
                    progress.suspend(|| eprintln!("{m}"));
                }
            };
            let mut bars = bars.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                Event::Resuming { status_url } => {
                    say(format!("resuming the export at {status_url}"))
                }
                Event::Restarting { reason } => say(format!("{reason}; starting a new export")),
                Event::KickedOff { .. } | Event::Manifest { .. } => {}
                Event::Waiting { progress, next } => spinner.set_message(format!(
                    "waiting for the export job ({}; next check in {} s)",
                    progress.unwrap_or("in progress"),
                    next.as_secs()
                )),
                Event::Skipped { name } => say(format!("{name}: kept from an earlier run")),
                Event::Started { name } => {
                    spinner.finish_and_clear();
                    let bar = progress.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(name.to_string());
                    bars.insert(name.to_string(), bar);
                }
                Event::Bytes { name, bytes } => {
                    if let Some(bar) = bars.get(name) {
                        bar.inc(bytes);
                    }
                }
                Event::Finished { name, resources } => {
                    if let Some(bar) = bars.remove(name) {
                        bar.finish_and_clear();
                    }
                    say(format!("{name}: {resources} resources"));
                }
                Event::Failed { error } => {
                    progress.suspend(|| eprintln!("error: {error}"));
                }
            }
        })
    }
}
