//! `fhirconn`: test and use authenticated FHIR connections from the command line.
//!
//! A thin user of the `fhirconn_host` library; this file only parses arguments and renders
//! results for people. Exit codes: 0 success, 1 a connection or request failed, 2 usage or
//! configuration error.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use fhirconn_host::services::FileStore;
use fhirconn_host::{plugins::Registry, Error, Host, TestReport};
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
    Get {
        /// Connection id.
        id: String,
        /// Path, e.g. 'Patient/123' or 'Patient?name=smith'.
        path: String,
    },
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
    /// Print the JSON Schema of the connections file (host settings + every scheme found).
    Schema,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
        Command::Get { id, path } => {
            let host = match build_host(&cli, std::slice::from_ref(id)).await {
                Ok(h) => h,
                Err(e) => return fail(&e),
            };
            let conn = match host.connection(id) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            match conn.get(path).await {
                Ok(resp) => {
                    let body = render_body(&resp.body, std::io::stdout().is_terminal());
                    if resp.status.is_success() {
                        println!("{body}");
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("error: HTTP {} from {}", resp.status, resp.url);
                        if !body.is_empty() {
                            eprintln!("{body}");
                        }
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail(&e),
            }
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
