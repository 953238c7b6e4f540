//! `fhirconn`: test and use authenticated FHIR connections from the command line.
//!
//! A thin user of the `fhirconn_host` library: this file parses arguments and dispatches to
//! one module per command (`cmd/`), each rendering a library result; `render.rs` holds what
//! commands share (bodies, reports, configuration errors, colour) and `error.rs` the
//! [`CliError`] every command returns. Exit codes: 0 success, 1 a connection or request
//! failed, 2 usage or configuration error (130: an export cancelled with Ctrl-C).

#![forbid(unsafe_code)]

mod cmd;
mod error;
mod render;

use clap::{Parser, Subcommand};
use error::CliError;
use fhirconn_host::{plugins::Registry, Host};
use render::Output;
use std::path::PathBuf;
use std::process::ExitCode;

/// What every command returns: an exit code, or an error that knows its own.
type CmdResult = Result<ExitCode, CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "fhirconn",
    version,
    about = "Authenticated connections to FHIR servers, with pluggable auth schemes"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(clap::Args, Debug)]
pub(crate) struct Global {
    /// The connections file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "FHIRCONN_CONFIG",
        default_value = "fhirconn.yaml"
    )]
    pub config: PathBuf,
    /// A directory of scheme plugins (repeatable; searched before FHIRCONN_PLUGIN_PATH and
    /// `plugins/` next to this binary).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// More logging: -v debug, -vv trace. Secrets are redacted.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log format on stderr: `text`, or `json` (one object per line, for log collectors).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the available schemes (built-in and every plugin found).
    Schemes {
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Test connections: credentials, GET {base}/metadata, and an optional probe read.
    Test(cmd::test::Args),
    /// GET a path relative to a connection's base URL, with its credentials.
    Get(cmd::get::Args),
    /// POST to a path (e.g. a transaction Bundle to '' or a resource to 'Patient').
    Post(cmd::get::Args),
    /// PUT a resource (e.g. 'Patient/123').
    Put(cmd::get::Args),
    /// DELETE a resource.
    Delete(cmd::get::Args),
    /// Serve connections on a local port: http://LISTEN/<ID>/<path> is forwarded to that
    /// connection with its authentication applied.
    Proxy(cmd::proxy::Args),
    /// Print a current access token of a connection (for scripts); fetched or cached.
    Token(cmd::token::Args),
    /// Generate a key pair for SMART Backend Services: the private key (mode 0600) and the
    /// public JWKS to register with the server.
    Keygen(cmd::keygen::Args),
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
    Export(cmd::export::Args),
    /// Edit connections in the connections file (comments and order are kept).
    Profile {
        #[command(subcommand)]
        command: cmd::profile::ProfileCommand,
    },
    /// Convert another tool's connection configuration into a fhirconn connections file.
    Import {
        #[command(subcommand)]
        from: cmd::import::ImportCommand,
    },
    /// Print the JSON Schema of the connections file (host settings + every scheme found).
    Schema,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: cmd::config::ConfigCommand,
    },
    /// Print a shell completion script (e.g. `fhirconn completions bash >
    /// ~/.local/share/bash-completion/completions/fhirconn`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of fhirconn, e.g. `fhirconn man > ~/.local/share/man/man1/fhirconn.1`.
    Man,
}

fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(match verbose {
            0 => "warn,fhirconn_host=info,fhirconn=info",
            1 => "warn,fhirconn_host=debug,fhirconn=debug",
            _ => "info,fhirconn_host=trace,fhirconn=trace",
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(render::colour_stderr())
            .with_target(verbose > 0)
            .try_init(),
    };
}

fn main() -> ExitCode {
    // Tokens, refresh tokens and keys live in this process: no core dumps of it.
    fhirconn_host::process::deny_core_dumps();
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.log_format);
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
    let code = rt.block_on(run(cli)).unwrap_or_else(|e| e.report());
    // Do not wait for a plugin call still blocking a thread (e.g. after a Ctrl-C).
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(cli: Cli) -> CmdResult {
    let g = &cli.global;
    match cli.command {
        Command::Schemes { output } => cmd::schemes::run(g, output),
        Command::Schema => cmd::schema::run(g),
        Command::Config { command } => cmd::config::run(g, command).await,
        Command::Test(a) => cmd::test::run(g, a).await,
        Command::Token(a) => cmd::token::run(g, a).await,
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Login { id } => cmd::login::login(g, &id).await,
        Command::Logout { id } => cmd::login::logout(g, &id).await,
        Command::Import { from } => cmd::import::run(from),
        Command::Profile { command } => cmd::profile::run(g, command),
        Command::Export(a) => cmd::export::run(g, a).await,
        Command::Get(a) => cmd::get::run(g, reqwest::Method::GET, a).await,
        Command::Post(a) => cmd::get::run(g, reqwest::Method::POST, a).await,
        Command::Put(a) => cmd::get::run(g, reqwest::Method::PUT, a).await,
        Command::Delete(a) => cmd::get::run(g, reqwest::Method::DELETE, a).await,
        Command::Proxy(a) => cmd::proxy::run(g, a).await,
        Command::Completions { shell } => cmd::completions::completions(shell),
        Command::Man => cmd::completions::man(),
    }
}

impl Global {
    /// A host for the whole file, or configured for only `ids` (the file is validated whole).
    pub async fn host(&self, ids: &[String]) -> Result<Host, fhirconn_host::Error> {
        let mut b = Host::builder()
            .config_file(&self.config)
            .only_connections(ids.iter().cloned())
            .credential_store(fhirconn_host::state::credential_store())
            // One-shot commands build the clients their requests need, no more.
            .warm_up_clients(false);
        for d in &self.plugin_dirs {
            b = b.plugin_dir(d);
        }
        b.build().await
    }

    /// The plugin registry of the directories given and the default ones (nothing loaded).
    pub fn registry(&self) -> Registry {
        Registry::new(fhirconn_host::plugins::default_dirs(&self.plugin_dirs))
    }
}
