//! The local authenticating proxy behind `fhirconn proxy`: `http://LISTEN/<ID>/<path>` is
//! forwarded to connection `<ID>`'s base URL with its authentication applied (tokens cached and
//! renewed, client certificates presented), so any HTTP tool can use a configured connection
//! without knowing its scheme.
//!
//! The proxy spends the person's credentials for whoever reaches it, so before anything is
//! forwarded it checks, in this order:
//!
//! 1. **`Host`** (and an absolute request target) names the proxy itself: `127.0.0.1:PORT`,
//!    `[::1]:PORT`, `localhost:PORT`, the `--listen` address, or a name of its TLS certificate.
//!    Anything else is a DNS-rebinding page (`rebind.attacker.example` resolving to 127.0.0.1)
//!    and gets 421.
//! 2. **Browser cross-site requests** are refused (403): an `Origin` or `Referer` that is not
//!    the proxy's own origin, or `Sec-Fetch-Site` other than `same-origin`/`none` (`same-site`
//!    is refused too: every `localhost` port is the same site).
//! 3. **The proxy's bearer token** (`Authorization: Bearer <token>`), compared in constant time
//!    (SHA-256 digests compared with `subtle`). Only an authorised caller gets the list of
//!    connection ids; with `--no-token` nobody does (not in 404s, `/readyz` says only
//!    `{"ready": bool}`, `/metrics`, whose labels are ids, answers 404).
//!
//! Hop-by-hop headers, the caller's `Authorization`, `Cookie`, `Origin` and `Referer` are not
//! forwarded; `Set-Cookie`, `Set-Cookie2`, `Alt-Svc` and CORS headers do not come back, and
//! every answer carries `X-Content-Type-Options: nosniff` and `Content-Security-Policy:
//! sandbox`, so a server's HTML cannot run script in the proxy's origin (shared by all
//! connections). Requests are independent: one connection failing answers 502 for that
//! connection only. Response bodies are streamed through; request bodies are buffered (up to
//! 64 MiB) so that a request can be resent after a 401. With a certificate and key the proxy
//! serves HTTPS (required to listen beyond loopback).

mod guard;
mod h1;
mod relay;
mod rewind;
mod service;
mod tls;

pub use service::{install_metrics, Readiness, ServedHost, REQUEST_ID};

pub use tls::tls_config;

use guard::{authorities, ProxyState};
use tls::TlsListener;

use crate::connection::Request;
use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq as _;

/// Largest request body the proxy accepts.
pub const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once (more wait in the kernel's accept queue).
const MAX_HANDSHAKES: usize = 256;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the ones the
/// proxy sets itself and the ones that belong to the caller's browser, not to the server.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "cookie",
    "cookie2",
    "origin",
    "referer",
];

/// Response headers that would act on the proxy's origin in a browser, never returned.
const RESPONSE_DROPPED: &[&str] = &["set-cookie", "set-cookie2", "alt-svc"];

/// The `Content-Security-Policy` added to every answer.
const CSP: &str = "sandbox; frame-ancestors 'none'";

/// Why `fhirconn proxy` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `--listen` is not an address.
    #[error("--listen {listen}: {reason}")]
    Listen {
        /// The text given.
        listen: String,
        /// Why it is not an address.
        reason: String,
    },
    /// A non-loopback address without `--allow-remote`.
    #[error(
        "--listen {0} is not a loopback address: the proxy adds your credentials to every \
         request; use --allow-remote with --tls-cert and --tls-key to accept that"
    )]
    NotLoopback(String),
    /// `--allow-remote` without TLS.
    #[error(
        "--allow-remote requires --tls-cert and --tls-key: the proxy will not send what your \
         credentials return over the network in plain text"
    )]
    RemoteWithoutTls,
    /// `--allow-remote` with `--no-token`.
    #[error("--allow-remote requires a token: --no-token is for loopback addresses only")]
    RemoteWithoutToken,
    /// `--no-token` and `--token-file` together.
    #[error("--no-token and --token-file exclude each other")]
    TokenConflict,
    /// Only one of `--tls-cert`/`--tls-key`.
    #[error("--tls-cert and --tls-key go together")]
    TlsHalf,
    /// The token file cannot be read or is empty.
    #[error("--token-file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used (never its content).
        reason: String,
    },
    /// The certificate or key cannot be used.
    #[error("{option} {path}: {reason}")]
    Tls {
        /// `--tls-cert` or `--tls-key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The generated token cannot be written.
    #[error("cannot write the proxy token to {path}: {reason}")]
    TokenWrite {
        /// Where it was to go.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// How `fhirconn proxy` was asked to run (its command-line options).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--listen`: the address to listen on.
    pub listen: String,
    /// `--token-file`: the token callers must send.
    pub token_file: Option<PathBuf>,
    /// `--no-token`: no token at all (loopback only).
    pub no_token: bool,
    /// `--allow-remote`: listen beyond loopback (requires TLS and a token).
    pub allow_remote: bool,
    /// `--tls-cert`: PEM certificate chain, leaf first.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: PEM private key.
    pub tls_key: Option<PathBuf>,
}

/// Checked options: what to bind, which token, which TLS configuration.
pub struct Prepared {
    addr: SocketAddr,
    loose_token_file: Option<u32>,
    listen: String,
    token: TokenChoice,
    tls: Option<(Arc<rustls::ServerConfig>, Vec<String>)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

enum TokenChoice {
    File(SecretString),
    Generate,
    Off,
}

/// A token generated for this run, in a private file that is removed when this is dropped.
#[derive(Debug)]
pub struct GeneratedToken {
    path: PathBuf,
}

impl GeneratedToken {
    /// The file holding the token (mode 0600).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for GeneratedToken {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Options {
    /// Checks the options and reads the token file and the certificate (before any
    /// connection is set up).
    pub fn prepare(&self) -> Result<Prepared, ProxyError> {
        let addr: SocketAddr = self.listen.parse().map_err(|e| ProxyError::Listen {
            listen: self.listen.clone(),
            reason: format!("{e}"),
        })?;
        if self.no_token && self.token_file.is_some() {
            return Err(ProxyError::TokenConflict);
        }
        let tls_files = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(ProxyError::TlsHalf),
        };
        if self.allow_remote && tls_files.is_none() {
            return Err(ProxyError::RemoteWithoutTls);
        }
        if self.allow_remote && self.no_token {
            return Err(ProxyError::RemoteWithoutToken);
        }
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(ProxyError::NotLoopback(self.listen.clone()));
        }
        let loose_token_file = self.token_file.as_deref().and_then(loose_mode);
        let token = match &self.token_file {
            Some(path) => TokenChoice::File(read_token(path)?),
            None if self.no_token => TokenChoice::Off,
            None => TokenChoice::Generate,
        };
        let tls = match tls_files {
            Some((cert, key)) => Some(tls_config(cert, key)?),
            None => None,
        };
        Ok(Prepared {
            addr,
            loose_token_file,
            listen: self.listen.clone(),
            token,
            tls,
        })
    }
}

impl Prepared {
    /// The address to bind.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the proxy will serve HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The mode of a `--token-file` that other users may read or write (`None` when private).
    pub fn loose_token_file(&self) -> Option<u32> {
        self.loose_token_file
    }

    /// Whether callers need no token (`--no-token`).
    pub fn is_open(&self) -> bool {
        matches!(self.token, TokenChoice::Off)
    }

    /// The serving configuration for the bound address; a token to generate is written to
    /// `token_dir` (created 0700) as `proxy-<port>.token`, mode 0600.
    pub fn into_config(
        self,
        bound: SocketAddr,
        token_dir: &Path,
    ) -> Result<(Config, Option<GeneratedToken>), ProxyError> {
        let mut config = Config::default().with_name(&self.listen);
        if let Some((tls, names)) = self.tls {
            config = config.with_tls(tls);
            for n in names {
                config = config.with_name(&n);
            }
        }
        let generated = match self.token {
            TokenChoice::File(t) => {
                config.token = Some(t);
                None
            }
            TokenChoice::Off => None,
            TokenChoice::Generate => {
                let path = token_dir.join(format!("proxy-{}.token", bound.port()));
                let token = random_token().map_err(|e| ProxyError::TokenWrite {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                crate::safe_write::create_private_dir(token_dir)
                    .and_then(|()| {
                        crate::safe_write::write(
                            &path,
                            token.as_bytes(),
                            crate::safe_write::Options::default(),
                        )
                    })
                    .map_err(|e| ProxyError::TokenWrite {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                config.token = Some(SecretString::from(token));
                Some(GeneratedToken { path })
            }
        };
        Ok((config, generated))
    }
}

/// fhirconn's state directory: `$XDG_STATE_HOME/fhirconn` (when absolute), else
/// `~/.local/state/fhirconn`; `None` without a home directory.
pub fn state_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".local/state"))
    })?;
    Some(base.join("fhirconn"))
}

/// The permission bits of `path` when group or others have any access.
fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn read_token(path: &Path) -> Result<SecretString, ProxyError> {
    let err = |reason: String| ProxyError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("the file is empty".into()));
    }
    if HeaderValue::from_str(&format!("Bearer {token}")).is_err() || token.contains(' ') {
        return Err(err(
            "the token cannot be sent in an Authorization header (spaces or control characters)"
                .into(),
        ));
    }
    Ok(SecretString::from(token.to_string()))
}

/// 32 random bytes, base64url.
fn random_token() -> std::io::Result<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// How the proxy serves: its token, TLS, and the extra names `Host` may use.
#[derive(Clone, Default)]
pub struct Config {
    token: Option<SecretString>,
    tls: Option<Arc<rustls::ServerConfig>>,
    names: Vec<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("tls", &self.tls.is_some())
            .field("names", &self.names)
            .finish()
    }
}

impl Config {
    /// Callers must send `Authorization: Bearer <token>`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(SecretString::from(token.into()));
        self
    }

    /// Serve HTTPS with this configuration.
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Also accept `Host: <name>` (with the port, or a `host:port` as given to `--listen`).
    pub fn with_name(mut self, name: &str) -> Self {
        self.names.push(name.to_ascii_lowercase());
        self
    }
}

/// Serves the proxy on `listener` until `shutdown` completes (HTTPS when `config` has TLS).
pub async fn serve(
    host: impl Into<ServedHost>,
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bound = listener.local_addr()?;
    let state = ProxyState {
        host: host.into(),
        token: config.token.as_ref().map(|t| {
            let d: [u8; 32] = Sha256::digest(t.expose_secret().as_bytes()).into();
            d
        }),
        authorities: Arc::new(authorities(bound, &config.names, config.tls.is_some())),
        scheme: if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        meters: Arc::default(),
    };
    match config.tls {
        None => {
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            accept(listener, state, shutdown).await
        }
        Some(tls) => accept(TlsListener::new(listener, tls), state, shutdown).await,
    }
}

/// Accepts connections until `shutdown`, each served by the relay in a task of its own;
/// then stops accepting, lets every connection finish the request it is serving, and
/// returns when all have closed.
async fn accept<L>(
    mut listener: L,
    state: ProxyState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (io, _) = listener.accept() => {
                tasks.spawn(relay::serve_connection(io, state.clone(), stopping.clone()));
            }
            // Finished connections are reaped as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
