//! `fhirconn`: test and use authenticated FHIR connections from the command line.
//!
//! A thin user of the `fhirconn_host` library; this file only parses arguments and renders
//! results for people. Exit codes: 0 success, 1 a connection or request failed, 2 usage or
//! configuration error.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use fhirconn_host::services as text;
use fhirconn_host::services::FileStore;
use fhirconn_host::{plugins::Registry, Error, Host, Request, TestReport};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "fhirconn",
    version,
    about = "Authenticated connections to FHIR servers, with pluggable auth schemes"
)]
struct Cli {
    /// The connections file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "FHIRCONN_CONFIG",
        default_value = "fhirconn.yaml"
    )]
    config: PathBuf,
    /// A directory of scheme plugins (repeatable; searched before FHIRCONN_PLUGIN_PATH and
    /// `plugins/` next to this binary).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// More logging: -v debug, -vv trace. Secrets are redacted.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the available schemes (built-in and every plugin found).
    Schemes {
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Test connections: credentials, GET {base}/metadata, and an optional probe read.
    Test {
        /// Connection ids (all when none is given).
        ids: Vec<String>,
        /// An authenticated read after /metadata, e.g. 'Patient?_count=1'.
        #[arg(long)]
        probe: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// GET a path relative to a connection's base URL, with its credentials.
    Get(RequestArgs),
    /// POST to a path (e.g. a transaction Bundle to '' or a resource to 'Patient').
    Post(RequestArgs),
    /// PUT a resource (e.g. 'Patient/123').
    Put(RequestArgs),
    /// DELETE a resource.
    Delete(RequestArgs),
    /// Serve connections on a local port: http://LISTEN/<ID>/<path> is forwarded to that
    /// connection with its authentication applied.
    Proxy(ProxyArgs),
    /// Print a current access token of a connection (for scripts); fetched or cached.
    Token {
        /// Connection id.
        id: String,
    },
    /// Generate a key pair for SMART Backend Services: the private key (mode 0600) and the
    /// public JWKS to register with the server.
    Keygen {
        /// Signature algorithm.
        #[arg(long, value_enum, default_value_t = Alg::Es384)]
        alg: Alg,
        /// Key id (default: the RFC 7638 thumbprint of the public key).
        #[arg(long)]
        kid: Option<String>,
        /// Directory for `private-key.pem` and `jwks.json`.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign in to a connection that needs a person (e.g. azure-ad) and store its refresh token.
    Login {
        /// Connection id.
        id: String,
    },
    /// Forget a connection's stored sign-in.
    Logout {
        /// Connection id.
        id: String,
    },
    /// FHIR Bulk Data export: kick off, wait for the job, download its NDJSON files to DIR.
    /// Run it again with the same --out to resume; Ctrl-C cancels the job on the server.
    /// File names are made from the manifest's resource types (`Patient.000.ndjson`).
    Export {
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
    },
    /// Edit connections in the connections file (comments and order are kept).
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Convert another tool's connection configuration into a fhirconn connections file.
    Import {
        #[command(subcommand)]
        from: ImportCommand,
    },
    /// Print the JSON Schema of the connections file (host settings + every scheme found).
    Schema,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(clap::Args, Debug)]
struct RequestArgs {
    /// Connection id.
    id: String,
    /// Path relative to the base URL, e.g. 'Patient/123' or 'Patient?name=smith'.
    path: String,
    /// Request body: '@file.json', '-' for standard input, or the JSON itself.
    #[arg(long)]
    data: Option<String>,
    /// Extra header 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// Extra query parameter 'key=value' (repeatable).
    #[arg(long = "query", value_name = "K=V")]
    query: Vec<String>,
    /// Follow the Bundle's `next` links (same origin only) and print one Bundle of all entries.
    #[arg(long)]
    all_pages: bool,
}

#[derive(Subcommand, Debug)]
enum ProfileCommand {
    /// Add or replace a connection.
    Set {
        /// Connection id.
        id: String,
        /// Scheme, e.g. basic, smart-backend, azure-ad.
        #[arg(long)]
        scheme: String,
        /// FHIR base URL.
        #[arg(long)]
        base_url: String,
        /// A setting 'key=value' (repeatable): the scheme's, or the connection's (timeouts...).
        #[arg(long = "set", value_name = "K=V")]
        settings: Vec<String>,
        /// Accept secrets on the command line (prefer *-file or *-env settings).
        #[arg(long)]
        allow_inline_secret: bool,
    },
    /// List the connections.
    List,
    /// Show a connection's settings (secrets as ***).
    Describe {
        /// Connection id.
        id: String,
    },
    /// Remove a connection.
    Remove {
        /// Connection id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// A DSF BPE FHIR client connections YAML (DEV_DSF_BPE_FHIR_CLIENT_CONNECTIONS_CONFIG).
    Dsf {
        /// The DSF YAML file.
        file: PathBuf,
        /// Write here instead of standard output (never overwrites).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the connections file and configure every connection, without network access.
    Check,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    #[value(name = "ES384")]
    Es384,
    #[value(name = "RS384")]
    Rs384,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Human,
    Json,
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(match verbose {
            0 => "warn,fhirconn_host=info,fhirconn=info",
            1 => "warn,fhirconn_host=debug,fhirconn=debug",
            _ => "info,fhirconn_host=trace,fhirconn=trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose > 0)
        .try_init();
}

fn main() -> ExitCode {
    // Tokens, refresh tokens and keys live in this process: no core dumps of it.
    fhirconn_host::process::deny_core_dumps();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(run(cli));
    // Do not wait for a plugin call still blocking a thread (e.g. after a Ctrl-C).
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn fail(e: &Error) -> ExitCode {
    // Errors quote servers and plugins (a redirect's Location, an authority's error text):
    // control characters are shown escaped, never sent to the terminal.
    let code = match e {
        Error::Config(errors) => {
            for err in errors {
                eprintln!("error: {}", text::sanitize(&err.to_string()));
            }
            if errors.len() > 1 {
                eprintln!("{} configuration errors", errors.len());
            }
            return ExitCode::from(2);
        }
        Error::ConfigRead { .. } | Error::UnknownConnection { .. } | Error::InvalidRequest(_) => 2,
        _ => 1,
    };
    eprintln!("error: {}", text::sanitize(&e.to_string()));
    ExitCode::from(code)
}

/// Where sign-ins (refresh tokens) are kept: `$FHIRCONN_CREDENTIALS`, else the user's state
/// directory (`$XDG_STATE_HOME/fhirconn/credentials.json`, else
/// `~/.local/state/fhirconn/credentials.json`; the directory 0700, the file 0600). Never beside
/// the connections file: that is often a project or shared directory.
fn credentials_path() -> Option<PathBuf> {
    std::env::var_os("FHIRCONN_CREDENTIALS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(FileStore::default_path)
}

/// The credential store: a file at [`credentials_path`], or memory only without a home.
fn credential_store() -> std::sync::Arc<dyn fhirconn_host::services::CredentialStore> {
    match credentials_path() {
        Some(p) => std::sync::Arc::new(FileStore::new(p)),
        None => {
            tracing::warn!(
                "no state directory ($XDG_STATE_HOME or $HOME) and no $FHIRCONN_CREDENTIALS: \
                 sign-ins are not kept"
            );
            std::sync::Arc::new(fhirconn_host::services::MemoryStore::default())
        }
    }
}

/// A host for the whole file, or configured for only `ids` (the file is validated whole).
async fn build_host(cli: &Cli, ids: &[String]) -> Result<Host, Error> {
    let mut b = Host::builder()
        .config_file(&cli.config)
        .only_connections(ids.iter().cloned())
        .credential_store(credential_store());
    for d in &cli.plugin_dirs {
        b = b.plugin_dir(d);
    }
    b.build().await
}

fn registry(cli: &Cli) -> Registry {
    Registry::new(fhirconn_host::plugins::default_dirs(&cli.plugin_dirs))
}

async fn run(cli: Cli) -> ExitCode {
    match &cli.command {
        Command::Schemes { output } => schemes(&cli, *output),
        Command::Schema => {
            let reg = registry(&cli);
            for e in reg.load_all() {
                eprintln!("warning: {e}");
            }
            let schema = Host::schema_for(&reg);
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => match build_host(&cli, &[]).await {
            Ok(host) => {
                println!(
                    "{}: {} connection(s) valid",
                    cli.config.display(),
                    host.connection_ids().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Test { ids, probe, output } => {
            let host = match build_host(&cli, ids).await {
                Ok(h) => h,
                Err(e) => return fail(&e),
            };
            let reports = match host.test(ids, probe.as_deref()).await {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            match output {
                Output::Json => println!(
                    "{}",
                    text::json_text_safe(
                        &serde_json::to_string_pretty(&reports).unwrap_or_default()
                    )
                ),
                Output::Human => print_reports(&reports),
            }
            if reports.iter().all(|r| r.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Token { id } => {
            let host = match build_host(&cli, std::slice::from_ref(id)).await {
                Ok(h) => h,
                Err(e) => return fail(&e),
            };
            let conn = match host.connection(id) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let creds = match conn.credentials(true).await {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let token = creds.headers.iter().find_map(|(name, value)| {
                let v = value.to_str().ok()?;
                let (scheme, token) = v.split_once(' ')?;
                (name == reqwest::header::AUTHORIZATION && scheme.eq_ignore_ascii_case("bearer"))
                    .then(|| token.to_string())
            });
            match token {
                Some(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!(
                        "error: connection '{id}' uses no bearer token (schemes: {})",
                        conn.schemes().join("+")
                    );
                    ExitCode::from(1)
                }
            }
        }
        Command::Keygen {
            alg,
            kid,
            out,
            force,
        } => {
            use fhirconn_host::keygen;
            let a = match alg {
                Alg::Es384 => keygen::KeyAlg::Es384,
                Alg::Rs384 => keygen::KeyAlg::Rs384,
            };
            let written = keygen::generate(a, kid.as_deref())
                .and_then(|key| keygen::write(out, &key, *force).map(|paths| (key, paths)));
            match written {
                Ok((key, (private, public))) => {
                    let name = match alg {
                        Alg::Es384 => "ES384",
                        Alg::Rs384 => "RS384",
                    };
                    println!("wrote {} (private, mode 0600)", private.display());
                    println!(
                        "wrote {} (public JWKS: register it with the server)",
                        public.display()
                    );
                    println!();
                    println!("auth:");
                    println!("  scheme: smart-backend");
                    println!("  client-id: <the client id the server assigned>");
                    println!("  private-key-file: {}", private.display());
                    println!("  kid: {}", key.kid);
                    println!("  alg: {name}");
                    println!("  scope: system/*.rs");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Login { id } | Command::Logout { id } => {
            let login = matches!(cli.command, Command::Login { .. });
            let host = match build_host(&cli, std::slice::from_ref(id)).await {
                Ok(h) => h,
                Err(e) => return fail(&e),
            };
            let conn = match host.connection(id) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            if login {
                match conn.login().await {
                    Ok(_) => {
                        match credentials_path() {
                            Some(p) => println!(
                                "signed in to '{id}'; a stored sign-in (if the scheme keeps one) is in {}",
                                p.display()
                            ),
                            None => println!("signed in to '{id}' (not kept: no state directory)"),
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                }
            } else {
                match conn.logout().await {
                    Ok(true) => {
                        println!("signed out of '{id}'");
                        ExitCode::SUCCESS
                    }
                    Ok(false) => {
                        println!("'{id}' keeps no sign-in; nothing to forget");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                }
            }
        }
        Command::Import {
            from: ImportCommand::Dsf { file, out },
        } => {
            // Read at most one byte over the size limit (the parser refuses larger files).
            let limit = fhirconn_host::config::yaml::MAX_CONFIG_BYTES as u64 + 1;
            let read = std::fs::File::open(file).and_then(|f| {
                use std::io::Read as _;
                let mut b = Vec::new();
                f.take(limit).read_to_end(&mut b).map(|_| b)
            });
            let bytes = match read {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            let imported = match fhirconn_host::dsf::import(file, &bytes) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            for n in &imported.notes {
                eprintln!("note: {n}");
            }
            for s in &imported.inline_secrets {
                eprintln!(
                    "warning: {s}: a secret copied inline into the output; move it to a file \
                     or the environment ({}-file or {}-env)",
                    s.rsplit(": ").next().unwrap_or_default(),
                    s.rsplit(": ").next().unwrap_or_default()
                );
            }
            match out {
                Some(path) => {
                    // Never replaces an existing file; private when it holds a secret.
                    let opts = fhirconn_host::safe_write::Options {
                        mode: if imported.inline_secrets.is_empty() {
                            0o644
                        } else {
                            0o600
                        },
                        follow_target_symlink: false,
                        create_new: true,
                    };
                    let written =
                        fhirconn_host::safe_write::write(path, imported.yaml.as_bytes(), opts);
                    if let Err(e) = written {
                        eprintln!("error: {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{}", imported.yaml),
            }
            ExitCode::SUCCESS
        }
        Command::Profile { command } => profile(&cli, command),
        Command::Export {
            id,
            types,
            since,
            group,
            patient,
            out,
            timeout,
        } => {
            export(
                &cli,
                id,
                types.as_deref(),
                since.as_deref(),
                group.as_deref(),
                *patient,
                out,
                timeout,
            )
            .await
        }
        Command::Get(a) => request(&cli, reqwest::Method::GET, a).await,
        Command::Post(a) => request(&cli, reqwest::Method::POST, a).await,
        Command::Put(a) => request(&cli, reqwest::Method::PUT, a).await,
        Command::Delete(a) => request(&cli, reqwest::Method::DELETE, a).await,
        Command::Proxy(a) => proxy(&cli, a).await,
    }
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
fn cancel_on_ctrl_c() -> fhirconn_host::bulk::Cancel {
    let (tx, cancel) = fhirconn_host::bulk::Cancel::new();
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

#[allow(clippy::too_many_arguments)]
async fn export(
    cli: &Cli,
    id: &str,
    types: Option<&str>,
    since: Option<&str>,
    group: Option<&str>,
    patient: bool,
    out: &std::path::Path,
    timeout: &str,
) -> ExitCode {
    use fhirconn_host::bulk::{self, BulkError, Event, Outcome};
    let cancel = cancel_on_ctrl_c();
    let timeout = match parse_timeout(timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --timeout: {e}");
            return ExitCode::from(2);
        }
    };
    let host = match build_host(cli, &[id.to_string()]).await {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    let conn = match host.connection(id) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let request = bulk::ExportRequest {
        level: match group {
            Some(g) => bulk::Level::Group(g.to_string()),
            None if patient => bulk::Level::Patient,
            None => bulk::Level::System,
        },
        types: types.map(String::from),
        since: since.map(String::from),
    };
    let opts = bulk::Options {
        timeout,
        ..bulk::Options::new(out)
    };
    // A spinner while waiting and a bar per download on a terminal; errors always.
    let quiet = !std::io::stderr().is_terminal();
    let progress = indicatif::MultiProgress::with_draw_target(if quiet {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    });
    let spinner = progress.add(indicatif::ProgressBar::new_spinner());
    spinner.set_message("waiting for the export job");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let bars =
        std::sync::Mutex::new(std::collections::HashMap::<String, indicatif::ProgressBar>::new());
    let observer: bulk::Observer = {
        let (progress, spinner) = (progress.clone(), spinner.clone());
        std::sync::Arc::new(move |event: Event<'_>| {
            let say = |m: String| {
                if !quiet {
                    progress.suspend(|| eprintln!("{m}"));
                }
            };
            let mut bars = bars
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
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
                    let bar = progress.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} {msg} {bytes} ({bytes_per_sec})",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
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
    };
    let result = bulk::run(&conn, &request, &opts, cancel, observer).await;
    spinner.finish_and_clear();
    let _ = progress.clear();
    match result {
        Ok(Outcome::Done(report)) => {
            if report.failed.is_empty() {
                println!("{} file(s) in {}", report.entries, out.display());
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{} of {} output entries failed; run the same command again to resume",
                    report.failed.len(),
                    report.entries
                );
                ExitCode::from(1)
            }
        }
        Ok(Outcome::Cancelled { job_deleted }) => {
            if job_deleted {
                eprintln!("cancelled; the export job was deleted on the server");
            } else {
                eprintln!("cancelled; the server did not confirm deleting the export job");
            }
            ExitCode::from(130)
        }
        Err(BulkError::Connection(e)) => fail(&e),
        Err(e @ (BulkError::Io { .. } | BulkError::State { .. })) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The scheme names a connection entry uses.
fn schemes_of(conn: &serde_json::Value) -> Vec<String> {
    match &conn["auth"] {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x["scheme"].as_str().map(String::from))
            .collect(),
        a => a["scheme"].as_str().map(String::from).into_iter().collect(),
    }
}

/// The permission bits of an existing file.
fn existing_mode(path: &std::path::Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).ok().map(|m| m.permissions().mode())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn profile(cli: &Cli, command: &ProfileCommand) -> ExitCode {
    use fhirconn_host::profile;
    let path = &cli.config;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && matches!(command, ProfileCommand::Set { .. }) =>
        {
            String::new()
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let parse = |t: &str| fhirconn_host::config::Document::parse(path, t.as_bytes());
    let edited = match command {
        ProfileCommand::List | ProfileCommand::Describe { .. } => {
            let doc = match parse(&text) {
                Ok(d) => d,
                Err(errors) => return fail(&Error::Config(errors)),
            };
            let conns = doc.value["connections"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if let ProfileCommand::Describe { id } = command {
                return match conns.get(id) {
                    Some(v) => {
                        let marks = profile::SecretMarks::from_registry(
                            &registry(cli),
                            schemes_of(v).iter().map(String::as_str),
                        );
                        print!("{}", profile::describe(id, v, &marks));
                        ExitCode::SUCCESS
                    }
                    None => {
                        eprintln!("error: no connection '{id}' in {}", path.display());
                        ExitCode::from(2)
                    }
                };
            }
            let w = conns.keys().map(String::len).max().unwrap_or(2);
            for (id, c) in &conns {
                let auth = &c["auth"];
                let schemes: Vec<&str> = match auth {
                    serde_json::Value::Array(a) => {
                        a.iter().filter_map(|x| x["scheme"].as_str()).collect()
                    }
                    serde_json::Value::Object(_) => auth["scheme"].as_str().into_iter().collect(),
                    _ => vec!["none"],
                };
                println!(
                    "{id:w$}  {:24}  {}",
                    schemes.join("+"),
                    c["base-url"].as_str().unwrap_or("")
                );
            }
            return ExitCode::SUCCESS;
        }
        ProfileCommand::Remove { id } => profile::remove(&text, id),
        ProfileCommand::Set {
            id,
            scheme,
            base_url,
            settings,
            allow_inline_secret,
        } => {
            let mut pairs = Vec::new();
            for s in settings {
                match s.split_once('=') {
                    Some((k, v)) => pairs.push((k.trim().to_string(), v.to_string())),
                    None => {
                        eprintln!("error: --set {s}: expected key=value");
                        return ExitCode::from(2);
                    }
                }
            }
            profile::entry_value(&profile::ProfileSet {
                id: id.clone(),
                scheme: scheme.clone(),
                base_url: base_url.clone(),
                settings: pairs,
                allow_inline_secret: *allow_inline_secret,
            })
            .and_then(|v| {
                let marks = profile::SecretMarks::from_registry(
                    &registry(cli),
                    schemes_of(&v).iter().map(String::as_str),
                );
                profile::check_inline_secrets(&v, &marks, *allow_inline_secret)?;
                profile::set(&text, id, &v)
            })
        }
    };
    let new_text = match edited {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Validate the whole result against the composed schema before writing anything.
    let doc = match parse(&new_text) {
        Ok(d) => d,
        Err(errors) => return fail(&Error::Config(errors)),
    };
    let reg = registry(cli);
    if let Err(e) = Host::check_document(&doc, &reg) {
        eprintln!("the file was not changed:");
        return fail(&e);
    }
    // Through the safe-write helper: a private temporary file renamed over the file's final
    // target (a symlinked config stays a symlink). The mode is kept, except that a file
    // holding an inline secret is 0600; a new file is 0644, or 0600 with a secret.
    let marks = profile::SecretMarks::new(reg.schemes().iter().map(|h| (h.name.clone(), h.schema.clone())));
    let target = fhirconn_host::safe_write::resolve_symlinks(path).unwrap_or_else(|_| path.clone());
    let mode = if marks.document_has_secrets(&doc.value) {
        0o600
    } else {
        existing_mode(&target).map_or(0o644, |m| m & 0o777)
    };
    let opts = fhirconn_host::safe_write::Options {
        mode,
        follow_target_symlink: true,
        create_new: false,
    };
    match fhirconn_host::safe_write::write(path, new_text.as_bytes(), opts) {
        Ok(()) => {
            println!("updated {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

/// Reads `--data`: `@file`, `-` (standard input) or the text itself.
fn read_data(data: &str) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("--data -: {e}"))?;
        Ok(buf)
    } else if let Some(file) = data.strip_prefix('@') {
        std::fs::read(file).map_err(|e| format!("--data @{file}: {e}"))
    } else {
        Ok(data.as_bytes().to_vec())
    }
}

fn build_request(method: reqwest::Method, a: &RequestArgs) -> Result<Request, String> {
    let mut path = a.path.clone();
    if !a.query.is_empty() {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for q in &a.query {
            let (k, v) = q
                .split_once('=')
                .ok_or_else(|| format!("--query {q}: expected key=value"))?;
            ser.append_pair(k, v);
        }
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&ser.finish());
    }
    let mut req = Request::get(&path);
    req.method = method;
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h}: expected 'Name: value'"))?;
        let name = reqwest::header::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("--header {h}: invalid header name"))?;
        let value = reqwest::header::HeaderValue::from_str(v.trim())
            .map_err(|_| format!("--header {h}: invalid header value"))?;
        req.headers.retain(|(n, _)| *n != name);
        req.headers.push((name, value));
    }
    if let Some(d) = &a.data {
        req.body = Some(read_data(d)?);
        if !req
            .headers
            .iter()
            .any(|(n, _)| n == reqwest::header::CONTENT_TYPE)
        {
            req.headers.push((
                reqwest::header::CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static(fhirconn_host::FHIR_JSON),
            ));
        }
    }
    Ok(req)
}

/// `get`, `post`, `put`, `delete`: FHIR JSON pretty on a terminal, raw when piped; a non-2xx
/// answer prints its body (an OperationOutcome) on stderr and exits 1.
async fn request(cli: &Cli, method: reqwest::Method, a: &RequestArgs) -> ExitCode {
    let req = match build_request(method.clone(), a) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let host = match build_host(cli, std::slice::from_ref(&a.id)).await {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    let conn = match host.connection(&a.id) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let pretty = std::io::stdout().is_terminal();
    let mut resp = match conn.send(req.clone()).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if !resp.status.is_success() {
        eprintln!("error: HTTP {} from {}", resp.status, resp.url);
        let body = error_body(&host, &resp.body);
        if !body.is_empty() {
            eprintln!("{body}");
        }
        return ExitCode::from(1);
    }
    if !(a.all_pages && method == reqwest::Method::GET) {
        println!("{}", render_body(&resp.body, pretty));
        return ExitCode::SUCCESS;
    }
    // Follow `next` links on the same origin; print one Bundle with every entry, written page
    // by page as the pages arrive (only one page is held in memory).
    let first: serde_json::Value = match serde_json::from_slice(&resp.body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            eprintln!("error: --all-pages: the answer is not a JSON Bundle");
            return ExitCode::from(1);
        }
    };
    let stdout = std::io::stdout();
    let mut out = match BundleWriter::start(stdout.lock(), &first, pretty) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: standard output: {e}");
            return ExitCode::from(1);
        }
    };
    let mut page = first;
    let mut pages = 1;
    let incomplete =
        |pages: u32| eprintln!("the output is incomplete: it stops after {pages} page(s)");
    loop {
        if let Err(e) = out.entries(page["entry"].as_array().map(Vec::as_slice).unwrap_or(&[])) {
            eprintln!("error: standard output: {e}");
            return ExitCode::from(1);
        }
        let next = page["link"].as_array().and_then(|links| {
            links
                .iter()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(String::from)
        });
        let Some(next) = next else { break };
        if pages >= MAX_PAGES {
            eprintln!("warning: stopped after {MAX_PAGES} pages");
            break;
        }
        let mut r = req.clone();
        r.path = next.clone();
        resp = match conn.send(r).await {
            Ok(x) if x.status.is_success() => x,
            Ok(x) => {
                eprintln!("error: HTTP {} from {next}", x.status);
                incomplete(pages);
                return ExitCode::from(1);
            }
            Err(e) => {
                incomplete(pages);
                return fail(&e);
            }
        };
        page = match serde_json::from_slice(&resp.body) {
            Ok(v) => v,
            Err(_) => {
                eprintln!("error: --all-pages: page {} is not JSON", pages + 1);
                incomplete(pages);
                return ExitCode::from(1);
            }
        };
        pages += 1;
    }
    if let Err(e) = out.finish() {
        eprintln!("error: standard output: {e}");
        return ExitCode::from(1);
    }
    eprintln!("{pages} page(s)");
    ExitCode::SUCCESS
}

/// `--all-pages` stops after this many pages (a loop of `next` links ends there).
const MAX_PAGES: u32 = 1000;

/// Writes one Bundle whose entries arrive page by page: the first page's other fields (its
/// `link` emptied), then `"entry": [...]`, flushed after every page.
struct BundleWriter<W: std::io::Write> {
    out: W,
    pretty: bool,
    first: bool,
}

impl<W: std::io::Write> BundleWriter<W> {
    fn start(mut out: W, first_page: &serde_json::Value, pretty: bool) -> std::io::Result<Self> {
        let mut head = first_page.as_object().cloned().unwrap_or_default();
        head.remove("entry");
        if let Some(links) = head.get_mut("link") {
            *links = serde_json::json!([]);
        }
        let empty = head.is_empty();
        let head = serde_json::Value::Object(head);
        let text = text::json_text_safe(
            &if pretty {
                serde_json::to_string_pretty(&head)
            } else {
                serde_json::to_string(&head)
            }
            .unwrap_or_default(),
        );
        let open = text.trim_end().strip_suffix('}').unwrap_or("{").trim_end();
        write!(out, "{open}")?;
        if !empty {
            write!(out, ",")?;
        }
        write!(
            out,
            "{}",
            if pretty {
                "\n  \"entry\": ["
            } else {
                "\"entry\":["
            }
        )?;
        Ok(Self {
            out,
            pretty,
            first: true,
        })
    }

    fn entries(&mut self, entries: &[serde_json::Value]) -> std::io::Result<()> {
        for e in entries {
            if !self.first {
                write!(self.out, ",")?;
            }
            self.first = false;
            if self.pretty {
                let text =
                    text::json_text_safe(&serde_json::to_string_pretty(e).unwrap_or_default());
                for line in text.lines() {
                    write!(self.out, "\n    {line}")?;
                }
            } else {
                let text = text::json_text_safe(&serde_json::to_string(e).unwrap_or_default());
                write!(self.out, "{text}")?;
            }
        }
        self.out.flush()
    }

    fn finish(mut self) -> std::io::Result<()> {
        if self.pretty {
            if !self.first {
                write!(self.out, "\n  ")?;
            }
            writeln!(self.out, "]\n}}")?;
        } else {
            writeln!(self.out, "]}}")?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod bundle_writer_tests {
    use super::BundleWriter;

    #[test]
    fn pages_make_one_valid_bundle_pretty_or_compact() {
        let page = |ids: &[&str]| {
            serde_json::json!({
                "resourceType": "Bundle", "type": "searchset", "total": 3,
                "link": [{"relation": "next", "url": "x"}],
                "entry": ids.iter().map(|i| serde_json::json!({"resource": {"id": i}})).collect::<Vec<_>>()
            })
        };
        for pretty in [true, false] {
            for pages in [
                vec![page(&["a", "b"]), page(&[]), page(&["c"])],
                vec![page(&[])],
            ] {
                let mut buf = Vec::new();
                let mut w = BundleWriter::start(&mut buf, &pages[0], pretty).unwrap();
                for p in &pages {
                    w.entries(p["entry"].as_array().unwrap()).unwrap();
                }
                w.finish().unwrap();
                let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
                let all: Vec<_> = pages
                    .iter()
                    .flat_map(|p| p["entry"].as_array().unwrap().clone())
                    .collect();
                assert_eq!(v["entry"], serde_json::Value::Array(all));
                assert_eq!(v["total"], 3);
                assert_eq!(v["link"], serde_json::json!([]));
            }
        }
        let mut buf = Vec::new();
        let w = BundleWriter::start(&mut buf, &serde_json::json!({}), true).unwrap();
        w.finish().unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&buf).unwrap(),
            serde_json::json!({"entry": []})
        );
    }
}

/// `fhirconn proxy` options.
#[derive(clap::Args, Debug)]
struct ProxyArgs {
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
}

async fn proxy(cli: &Cli, a: &ProxyArgs) -> ExitCode {
    let options = fhirconn_host::proxy::Options {
        listen: a.listen.clone(),
        token_file: a.token_file.clone(),
        no_token: a.no_token,
        allow_remote: a.allow_remote,
        tls_cert: a.tls_cert.clone(),
        tls_key: a.tls_key.clone(),
    };
    let prepared = match options.prepare() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let token_dir = match fhirconn_host::proxy::state_dir() {
        Some(d) => d,
        None if prepared.is_open() || a.token_file.is_some() => PathBuf::new(),
        None => {
            eprintln!(
                "error: no state directory for the proxy token (set $XDG_STATE_HOME or $HOME), \
                 or pass --token-file"
            );
            return ExitCode::from(2);
        }
    };
    let addr = prepared.addr();
    let prepared_loose = prepared.loose_token_file();
    let scheme = if prepared.is_tls() { "https" } else { "http" };
    let host = match build_host(cli, &[]).await {
        Ok(h) => std::sync::Arc::new(h),
        Err(e) => return fail(&e),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let bound = match listener.local_addr() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let (config, generated) = match prepared.into_config(bound, &token_dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if let (Some(mode), Some(f)) = (prepared_loose, &a.token_file) {
        eprintln!(
            "warning: --token-file {} can be read or changed by other users (mode {mode:03o}); \
             chmod 600 it",
            f.display()
        );
    }
    if let Some(g) = &generated {
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
    eprintln!(
        "proxy on {scheme}://{bound}/<connection>/<path> for: {}",
        host.connection_ids().join(", ")
    );
    // Ctrl-C or SIGTERM: stop, and remove a generated token file.
    let shutdown = async {
        #[cfg(unix)]
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = fhirconn_host::proxy::serve(host, listener, config, shutdown).await;
    drop(generated);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// A response body for standard output. JSON (pretty on a terminal) keeps its value but has
/// every character a terminal would act on written as a `\uXXXX` escape; other text is
/// escaped on a terminal and left as it is when piped (it is the data asked for).
fn render_body(body: &[u8], pretty: bool) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if pretty {
            return text::json_text_safe(&serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        return text::json_text_safe(String::from_utf8_lossy(body).trim_end());
    }
    let raw = String::from_utf8_lossy(body).trim_end().to_string();
    if pretty {
        text::sanitize(&raw)
    } else {
        raw
    }
}

/// The body of an error answer, for standard error: known secrets removed in all their forms
/// (servers and gateways echo `Authorization` and request bodies), control characters escaped.
fn error_body(host: &Host, body: &[u8]) -> String {
    // JSON pretty, other text raw: redaction sees the text before anything is escaped.
    let json = serde_json::from_slice::<serde_json::Value>(body).is_ok();
    text::sanitize(&host.redact(&render_body(body, json)))
}

fn schemes(cli: &Cli, output: Output) -> ExitCode {
    let reg = registry(cli);
    let errors = reg.load_all();
    let list = reg.schemes();
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = list
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "name": h.name, "version": h.version, "sdk": h.sdk_version,
                        "abi": fhirconn_abi::ABI_VERSION, "origin": h.origin.to_string(),
                        "summary": h.summary,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Human => {
            let w = list.iter().map(|h| h.name.len()).max().unwrap_or(4).max(6);
            println!(
                "{:w$}  {:8}  {:6}  SUMMARY / ORIGIN",
                "SCHEME", "VERSION", "SDK"
            );
            for h in &list {
                println!(
                    "{:w$}  {:8}  {:6}  {}",
                    h.name, h.version, h.sdk_version, h.summary
                );
                println!("{:w$}  {:8}  {:6}  from {}", "", "", "", h.origin);
            }
            println!("plugin interface (ABI) {}", fhirconn_abi::ABI_VERSION);
        }
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_reports(reports: &[TestReport]) {
    let w = reports.iter().map(|r| r.id.len()).max().unwrap_or(2).max(2);
    let sw = reports
        .iter()
        .map(|r| r.schemes.join("+").len())
        .max()
        .unwrap_or(4);
    for r in reports {
        let schemes = format!("{:sw$}", r.schemes.join("+"));
        if r.ok {
            let fhir = r.fhir_version.as_deref().unwrap_or("?");
            let software = r
                .software
                .as_deref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default();
            let probe = r
                .probe
                .as_ref()
                .map(|p| format!(", probe {} -> {}", p.path, p.status))
                .unwrap_or_default();
            println!(
                "PASS  {:w$}  {schemes}  {}  FHIR {fhir}{software}{probe}  ({} ms)",
                r.id, r.base_url, r.total_ms
            );
        } else {
            let why = r
                .failure
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "failed".into());
            println!("FAIL  {:w$}  {schemes}  {}", r.id, r.base_url);
            println!("      {:w$}  {why}", "");
        }
        if r.server_certificate.is_some() || r.client_certificate.is_some() {
            let server = r
                .server_certificate
                .as_ref()
                .map(|c| format!("server '{}' (expires {})", c.subject, c.not_after));
            let client = r
                .client_certificate
                .as_ref()
                .map(|c| format!("client certificate '{}' offered", c.subject));
            let facts: Vec<String> = server.into_iter().chain(client).collect();
            println!("      {:w$}  tls: {}", "", facts.join(", "));
        }
        for warn in &r.warnings {
            println!("      {:w$}  warning: {warn}", "");
        }
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    println!(
        "{} of {} connections passed",
        reports.len() - failed,
        reports.len()
    );
}
