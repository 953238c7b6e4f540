//! `fhirconn proxy`: serves the connections on a local port ([`fhirconn_host::proxy`]); this
//! module turns the options into a configuration, says how callers authenticate, tests the
//! connections for `/readyz`, reloads the connections file on SIGHUP (a bad file keeps the
//! old one), and on Ctrl-C or SIGTERM drains requests in flight (bounded) and exits 0.

use crate::{CliError, CmdResult, Global};
use std::path::PathBuf;
use std::process::ExitCode;

/// `fhirconn proxy` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: String,
    /// A file with the bearer token clients must send (`Authorization: Bearer <token>`).
    /// Without it, a token is generated for each run into a private file in the state
    /// directory ($XDG_STATE_HOME/fhirconn/proxy-PORT.token), whose path is printed.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Require no token (loopback only): every local user and process can then use your
    /// connections.
    #[arg(long, conflicts_with = "token_file")]
    no_token: bool,
    /// Listen on a non-loopback address (requires --tls-cert and --tls-key, and a token).
    #[arg(long)]
    allow_remote: bool,
    /// PEM certificate chain to serve HTTPS with (leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, wait at most this many seconds for requests in flight.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    drain_timeout: u64,
}

/// Ctrl-C or SIGTERM; SIGTERM's handler is installed when this is made, so a SIGTERM sent
/// after the proxy said it is on is never lost (nor kills it without draining).
struct Stop {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the proxy until Ctrl-C or SIGTERM (a generated token file is then removed).
pub async fn run(g: &Global, a: Args) -> CmdResult {
    let options = fhirconn_host::proxy::Options {
        listen: a.listen.clone(),
        token_file: a.token_file.clone(),
        no_token: a.no_token,
        allow_remote: a.allow_remote,
        tls_cert: a.tls_cert.clone(),
        tls_key: a.tls_key.clone(),
    };
    let prepared = options
        .prepare()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let token_dir = match fhirconn_host::proxy::state_dir() {
        Some(d) => d,
        None if prepared.is_open() || a.token_file.is_some() => PathBuf::new(),
        None => {
            return Err(CliError::Usage(
                "no state directory for the proxy token (set $XDG_STATE_HOME or $HOME), \
                 or pass --token-file"
                    .into(),
            ))
        }
    };
    let addr = prepared.addr();
    let prepared_loose = prepared.loose_token_file();
    let scheme = if prepared.is_tls() { "https" } else { "http" };
    // Before any request (start-up checks too): metric handles taken earlier would be no-ops.
    fhirconn_host::proxy::install_metrics();
    let host = std::sync::Arc::new(g.host(&[]).await?);
    // `test-connection-on-startup: true`: tested before anything listens; one failure and the
    // proxy does not start (a service manager sees the exit code and the reason).
    // Each result is logged by the library (info: passed; error: the diagnosis).
    if let Err(e) = host.startup_checks().await {
        return Err(CliError::WithNote {
            before: None,
            error: Box::new(CliError::Host(e)),
            after: Some(
                "the proxy did not start: fix the connection, or remove \
                 test-connection-on-startup from it to start without the check"
                    .into(),
            ),
        });
    }
    let cannot_listen =
        |e: std::io::Error| CliError::Failed(format!("cannot listen on {addr}: {e}"));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(cannot_listen)?;
    let bound = listener.local_addr().map_err(cannot_listen)?;
    let (config, generated) = prepared
        .into_config(bound, &token_dir)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    tell_about_the_token(&a, prepared_loose, generated.as_ref());
    // Both signal handlers are in place before the proxy says it is on.
    let stop = Stop::new();
    let mut reloads = Reloads::new();
    eprintln!(
        "proxy on {scheme}://{bound}/<connection>/<path> for: {}",
        host.connection_ids().join(", ")
    );
    let served = fhirconn_host::proxy::ServedHost::from(host);
    tokio::spawn({
        let served = served.clone();
        async move { served.test_all().await }
    });
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.wait().await;
        let _ = stopping_tx.send(true);
    });
    let graceful = {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    };
    let serve = fhirconn_host::proxy::serve(served.clone(), listener, config, graceful);
    tokio::pin!(serve);
    let drain = std::time::Duration::from_secs(a.drain_timeout);
    let reloading = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    let result = loop {
        tokio::select! {
            r = &mut serve => break r,
            // In its own task: serving and the stop signal are polled meanwhile.
            _ = reloads.next() => {
                tokio::spawn(reload(owned(g), served.clone(), reloading.clone()));
            }
            _ = stopping.wait_for(|s| *s) => {
                tracing::info!("stopping: draining requests in flight (at most {}s)", drain.as_secs());
                break match tokio::time::timeout(drain, &mut serve).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("drain timeout: closing the connections still open");
                        Ok(())
                    }
                };
            }
        }
    };
    drop(generated);
    result.map_err(|e| CliError::Failed(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// What a caller needs to know about the proxy's token, and the warnings about it.
fn tell_about_the_token(
    a: &Args,
    loose_mode: Option<u32>,
    generated: Option<&fhirconn_host::proxy::GeneratedToken>,
) {
    if let (Some(mode), Some(f)) = (loose_mode, &a.token_file) {
        eprintln!(
            "warning: --token-file {} can be read or changed by other users (mode {mode:03o}); \
             chmod 600 it",
            f.display()
        );
    }
    if let Some(g) = generated {
        eprintln!(
            "callers must send 'Authorization: Bearer <token>'; the token (new for this run) is \
             in {}",
            g.path().display()
        );
    } else if a.no_token {
        eprintln!(
            "warning: --no-token: every local user and process (and any container sharing this \
             network namespace) can use these connections with your credentials"
        );
    }
}

/// SIGHUP, as a stream (never ready where there is no such signal).
struct Reloads {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Reloads {
    fn new() -> Self {
        Self {
            #[cfg(unix)]
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(h) = self.hup.as_mut() {
            h.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// A copy of the global options a reload task can own.
fn owned(g: &Global) -> Global {
    Global {
        config: g.config.clone(),
        plugin_dirs: g.plugin_dirs.clone(),
        verbose: g.verbose,
        log_format: g.log_format,
    }
}

/// Re-reads the connections file: a valid one replaces the served host (and its connections
/// are tested again, in another task); a bad one is logged and the old one kept. Reloads run
/// one at a time (`reloading`), so an older file never replaces a newer one.
async fn reload(
    g: Global,
    served: fhirconn_host::proxy::ServedHost,
    reloading: std::sync::Arc<tokio::sync::Mutex<()>>,
) {
    let _one_at_a_time = reloading.lock().await;
    match g.host(&[]).await {
        Ok(host) => {
            let ids = host.connection_ids().join(", ");
            served.replace(std::sync::Arc::new(host));
            tracing::info!("SIGHUP: reloaded {}: {ids}", g.config.display());
            tokio::spawn(async move { served.test_all().await });
        }
        Err(e) => tracing::error!(
            "SIGHUP: {} not reloaded, keeping the previous configuration: {}",
            g.config.display(),
            crate::render::sanitize(&e.to_string())
        ),
    }
}
