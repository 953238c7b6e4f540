//! `fhirconn`: test and use authenticated FHIR connections from the command line.
//!
//! A thin user of the `fhirconn_host` library; this file only parses arguments and renders
//! results for people. Exit codes: 0 success, 1 a connection or request failed, 2 usage or
//! configuration error.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
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
        /// Directory for the NDJSON files.
        #[arg(long)]
        out: PathBuf,
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
    rt.block_on(run(cli))
}

fn fail(e: &Error) -> ExitCode {
    match e {
        Error::Config(errors) => {
            for err in errors {
                eprintln!("error: {err}");
            }
            if errors.len() > 1 {
                eprintln!("{} configuration errors", errors.len());
            }
            ExitCode::from(2)
        }
        Error::ConfigRead { .. } | Error::UnknownConnection { .. } | Error::InvalidRequest(_) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        other => {
            eprintln!("error: {other}");
            ExitCode::from(1)
        }
    }
}

/// Where sign-ins (refresh tokens) are kept: `$FHIRCONN_CREDENTIALS`, else
/// `.fhirconn-credentials.json` beside the connections file (mode 0600).
fn credentials_path(cli: &Cli) -> PathBuf {
    if let Some(p) = std::env::var_os("FHIRCONN_CREDENTIALS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let dir = cli
        .config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    dir.join(".fhirconn-credentials.json")
}

/// A host for the whole file, or configured for only `ids` (the file is validated whole).
async fn build_host(cli: &Cli, ids: &[String]) -> Result<Host, Error> {
    let mut b = Host::builder()
        .config_file(&cli.config)
        .only_connections(ids.iter().cloned())
        .credential_store(std::sync::Arc::new(FileStore::new(credentials_path(cli))));
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
                    serde_json::to_string_pretty(&reports).unwrap_or_default()
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
                        println!(
                            "signed in to '{id}'; a stored sign-in (if the scheme keeps one) is in {}",
                            credentials_path(&cli).display()
                        );
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
            let bytes = match std::fs::read(file) {
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
            match out {
                Some(path) => {
                    let written = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .and_then(|mut f| {
                            use std::io::Write as _;
                            f.write_all(imported.yaml.as_bytes())
                        });
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
        } => {
            export(
                &cli,
                id,
                types.as_deref(),
                since.as_deref(),
                group.as_deref(),
                *patient,
                out,
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

/// Checks NDJSON as it streams: every complete line must be a JSON object with a
/// `resourceType`.
struct NdjsonCheck {
    partial: Vec<u8>,
    lines: u64,
}

impl NdjsonCheck {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.partial.extend_from_slice(chunk);
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.check(&line[..line.len() - 1])?;
        }
        Ok(())
    }
    fn check(&mut self, line: &[u8]) -> Result<(), String> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.lines += 1;
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| format!("line {}: not JSON ({e})", self.lines))?;
        if v["resourceType"].as_str().is_none() {
            return Err(format!("line {}: no resourceType", self.lines));
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<(), String> {
        let rest = std::mem::take(&mut self.partial);
        self.check(&rest)
    }
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
) -> ExitCode {
    use std::io::Write as _;
    let quiet = !std::io::stderr().is_terminal();
    let say = |m: &str| {
        if !quiet {
            eprintln!("{m}");
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
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: {}: {e}", out.display());
        return ExitCode::from(2);
    }
    let state_path = out.join(".fhirconn-export.json");
    let mut state: serde_json::Value = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let save = |state: &serde_json::Value| {
        let _ = std::fs::write(&state_path, state.to_string());
    };
    // 1. Kick off (unless resuming).
    let status_url = match state["status"].as_str() {
        Some(u) => {
            say(&format!("resuming the export at {u}"));
            u.to_string()
        }
        None => {
            let mut path = match group {
                Some(g) => format!("Group/{g}/$export"),
                None if patient => "Patient/$export".to_string(),
                None => "$export".to_string(),
            };
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(t) = types {
                q.append_pair("_type", t);
            }
            if let Some(s) = since {
                q.append_pair("_since", s);
            }
            let q = q.finish();
            if !q.is_empty() {
                path = format!("{path}?{q}");
            }
            let mut req = Request::get(&path);
            req.headers.push((
                reqwest::header::HeaderName::from_static("prefer"),
                reqwest::header::HeaderValue::from_static("respond-async"),
            ));
            let resp = match conn.send(req).await {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            let location = resp.header("content-location").map(String::from);
            match (resp.status.as_u16(), location) {
                (202, Some(l)) => {
                    state["status"] = serde_json::json!(l);
                    save(&state);
                    l
                }
                (code, _) => {
                    eprintln!(
                        "error: the kick-off answered HTTP {code} (expected 202 with Content-Location)"
                    );
                    let body = render_body(&resp.body, true);
                    if !body.is_empty() {
                        eprintln!("{body}");
                    }
                    return ExitCode::from(1);
                }
            }
        }
    };
    // 2. Wait, honouring Retry-After; Ctrl-C cancels the job. A spinner on a terminal.
    let progress = indicatif::MultiProgress::with_draw_target(if quiet {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    });
    let spinner = progress.add(indicatif::ProgressBar::new_spinner());
    spinner.set_message("waiting for the export job");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut backoff = 1u64;
    let manifest = loop {
        let resp = match conn.get(&status_url).await {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        match resp.status.as_u16() {
            200 => match serde_json::from_slice::<serde_json::Value>(&resp.body) {
                Ok(m) => break m,
                Err(e) => {
                    eprintln!("error: the export manifest is not JSON: {e}");
                    return ExitCode::from(1);
                }
            },
            202 => {
                let wait = resp
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(backoff)
                    .clamp(1, 120);
                backoff = (backoff * 2).min(30);
                spinner.set_message(format!(
                    "waiting for the export job ({}; next check in {wait} s)",
                    resp.header("x-progress").unwrap_or("in progress")
                ));
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
                    _ = tokio::signal::ctrl_c() => {
                        let mut del = Request::get(&status_url);
                        del.method = reqwest::Method::DELETE;
                        let _ = conn.send(del).await;
                        let _ = std::fs::remove_file(&state_path);
                        eprintln!("cancelled; the export job was deleted on the server");
                        return ExitCode::from(130);
                    }
                }
            }
            code => {
                eprintln!("error: the export status answered HTTP {code}");
                let body = render_body(&resp.body, true);
                if !body.is_empty() {
                    eprintln!("{body}");
                }
                return ExitCode::from(1);
            }
        }
    };
    spinner.finish_and_clear();
    // 3. Download, a few files at a time, streaming to disk and checking NDJSON.
    let with_token = manifest["requiresAccessToken"].as_bool().unwrap_or(false);
    let outputs: Vec<(String, String)> = manifest["output"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| {
                    Some((
                        o["type"].as_str()?.to_string(),
                        o["url"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let done: Vec<String> = state["done"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, (ty, url)) in outputs.iter().enumerate() {
        let name = format!("{ty}.{n:03}.ndjson");
        if done.contains(&name) && out.join(&name).exists() {
            continue;
        }
        let (conn, url, out, permits) = (
            conn.clone(),
            url.clone(),
            out.to_path_buf(),
            permits.clone(),
        );
        let bar = progress.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(name.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let part = out.join(format!("{name}.part"));
            let mut file =
                std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
            let mut check = NdjsonCheck {
                partial: Vec::new(),
                lines: 0,
            };
            let status = conn
                .download(&url, with_token, |chunk| {
                    check.feed(chunk)?;
                    bar.inc(chunk.len() as u64);
                    file.write_all(chunk).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{url}: HTTP {status}"));
            }
            check.finish().map_err(|e| format!("{url}: {e}"))?;
            bar.finish_and_clear();
            std::fs::rename(&part, out.join(&name)).map_err(|e| e.to_string())?;
            Ok::<_, String>((name, check.lines))
        });
    }
    let mut failed = false;
    let mut done = done;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((name, lines))) => {
                say(&format!("{name}: {lines} resources"));
                done.push(name);
                state["done"] = serde_json::json!(done);
                save(&state);
            }
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("error: a download failed: {e}");
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("run the same command again to resume");
        return ExitCode::from(1);
    }
    let _ = std::fs::remove_file(&state_path);
    println!("{} file(s) in {}", outputs.len(), out.display());
    ExitCode::SUCCESS
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, then rename.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("fhirconn.yaml"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
                        print!("{}", profile::describe(id, v));
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
            .and_then(|v| profile::set(&text, id, &v))
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
    if let Err(e) = Host::check_document(&doc, &registry(cli)) {
        eprintln!("the file was not changed:");
        return fail(&e);
    }
    match write_atomically(path, &new_text) {
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
        let body = render_body(&resp.body, true);
        if !body.is_empty() {
            eprintln!("{body}");
        }
        return ExitCode::from(1);
    }
    if !(a.all_pages && method == reqwest::Method::GET) {
        println!("{}", render_body(&resp.body, pretty));
        return ExitCode::SUCCESS;
    }
    // Follow `next` links on the same origin; print one Bundle with every entry.
    let mut bundle: serde_json::Value = match serde_json::from_slice(&resp.body) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("error: --all-pages: the answer is not JSON");
            return ExitCode::from(1);
        }
    };
    let mut pages = 1;
    loop {
        let page: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        if pages > 1 {
            if let (Some(all), Some(more)) =
                (bundle["entry"].as_array_mut(), page["entry"].as_array())
            {
                all.extend(more.iter().cloned());
            }
        }
        let next = page["link"].as_array().and_then(|links| {
            links
                .iter()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(String::from)
        });
        let Some(next) = next else { break };
        if pages >= 1000 {
            eprintln!("warning: stopped after 1000 pages");
            break;
        }
        let mut r = req.clone();
        r.path = next.clone();
        resp = match conn.send(r).await {
            Ok(x) if x.status.is_success() => x,
            Ok(x) => {
                eprintln!("error: HTTP {} from {next}", x.status);
                return ExitCode::from(1);
            }
            Err(e) => return fail(&e),
        };
        pages += 1;
    }
    if let Some(links) = bundle.get_mut("link") {
        *links = serde_json::json!([]);
    }
    let text = if pretty {
        serde_json::to_string_pretty(&bundle)
    } else {
        serde_json::to_string(&bundle)
    };
    println!("{}", text.unwrap_or_default());
    eprintln!("{pages} page(s)");
    ExitCode::SUCCESS
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
    eprintln!(
        "proxy on {scheme}://{bound}/<connection>/<path> for: {}",
        host.connection_ids().join(", ")
    );
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
    let shutdown = async {
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

fn render_body(body: &[u8], pretty: bool) -> String {
    if pretty {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            return serde_json::to_string_pretty(&v).unwrap_or_default();
        }
    }
    String::from_utf8_lossy(body).trim_end().to_string()
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
