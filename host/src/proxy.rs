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
//!    connection ids.
//!
//! Hop-by-hop headers, the caller's `Authorization`, `Cookie`, `Origin` and `Referer` are not
//! forwarded; `Set-Cookie`, `Set-Cookie2`, `Alt-Svc` and CORS headers do not come back, and
//! every answer carries `X-Content-Type-Options: nosniff` and `Content-Security-Policy:
//! sandbox`, so a server's HTML cannot run script in the proxy's origin (shared by all
//! connections). Requests are independent: one connection failing answers 502 for that
//! connection only. Response bodies are streamed through; request bodies are buffered (up to
//! 64 MiB) so that a request can be resent after a 401. With a certificate and key the proxy
//! serves HTTPS (required to listen beyond loopback).

use crate::connection::Request;
use crate::Host;
use axum::body::{to_bytes, Body};
use axum::extract::State;
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

/// A rustls server configuration from PEM files, and the names (DNS and IP subject
/// alternative names) its leaf certificate is valid for.
pub fn tls_config(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Vec<String>), ProxyError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |reason: String| ProxyError::Tls {
        option: "--tls-cert",
        path: cert.to_path_buf(),
        reason,
    };
    let key_err = |reason: String| ProxyError::Tls {
        option: "--tls-key",
        path: key.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_err("no PEM certificate in the file".into()));
    };
    let names = certificate_names(leaf).map_err(cert_err)?;
    // The key's parser error never quotes the key.
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            key_err("no PEM private key in the file".into())
        }
        e => key_err(e.to_string()),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| key_err(format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), names))
}

fn certificate_names(leaf: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) if !d.starts_with("*.") => {
                    names.push(d.to_ascii_lowercase());
                }
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(format!(
                        "[{}]",
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                    )),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(names)
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

#[derive(Clone)]
struct ProxyState {
    host: Arc<Host>,
    /// SHA-256 of the token.
    token: Option<[u8; 32]>,
    /// Lowercase `host:port` authorities (and `host` alone on the scheme's default port).
    authorities: Arc<Vec<String>>,
    scheme: &'static str,
}

fn harden(headers: &mut HeaderMap) {
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = serde_json::json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}]});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    harden(r.headers_mut());
    r
}

fn forwardable(name: &HeaderName, connection_listed: &[String]) -> bool {
    let n = name.as_str();
    !HOP_BY_HOP.contains(&n) && !connection_listed.iter().any(|c| c == n)
}

fn returnable(name: &HeaderName, connection_listed: &[String]) -> bool {
    let n = name.as_str();
    forwardable(name, connection_listed)
        && !RESPONSE_DROPPED.contains(&n)
        && !n.starts_with("access-control-")
}

/// Names listed in a `Connection` header are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// The authorities a request may name: loopback names on the bound port, then `names`.
fn authorities(bound: SocketAddr, names: &[String], tls: bool) -> Vec<String> {
    let port = bound.port();
    let mut out = vec![
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        bound.to_string(),
    ];
    if bound.ip().is_unspecified() {
        out.pop();
    }
    for n in names {
        match n.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => {}
            Ok(_) => out.push(n.clone()),
            Err(_) if has_port(n) => out.push(n.clone()),
            Err(_) => out.push(format!("{n}:{port}")),
        }
    }
    let default_port = if tls { 443 } else { 80 };
    let suffix = format!(":{default_port}");
    let bare: Vec<String> = out
        .iter()
        .filter_map(|a| a.strip_suffix(&suffix).map(str::to_string))
        .collect();
    out.extend(bare);
    out.iter_mut().for_each(|a| a.make_ascii_lowercase());
    out.sort();
    out.dedup();
    out
}

/// `name:port` (not a bare IPv6 address).
fn has_port(n: &str) -> bool {
    n.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !h.contains(':') && !h.contains('[') && p.parse::<u16>().is_ok()
    })
}

/// Refuses requests that do not name the proxy (DNS rebinding) and browser requests from
/// other sites (CSRF), before anything else is looked at.
#[allow(clippy::result_large_err)]
fn check_browser(st: &ProxyState, parts: &axum::http::request::Parts) -> Result<(), Response> {
    let own = |authority: &str| {
        st.authorities
            .iter()
            .any(|a| a.eq_ignore_ascii_case(authority))
    };
    let misdirected = |what: &str| {
        outcome(
            StatusCode::MISDIRECTED_REQUEST,
            "forbidden",
            &format!(
                "{what}: the proxy answers only requests addressed to itself \
                 (e.g. Host: {}); this protects against DNS rebinding",
                st.authorities.first().map(String::as_str).unwrap_or("")
            ),
        )
    };
    let hosts: Vec<_> = parts.headers.get_all(header::HOST).iter().collect();
    let host_ok = match hosts.as_slice() {
        [one] => one.to_str().is_ok_and(own),
        _ => false,
    };
    if !host_ok {
        return Err(misdirected("the Host header does not name this proxy"));
    }
    if let Some(a) = parts.uri.authority() {
        if !own(a.as_str()) {
            return Err(misdirected("the request target does not name this proxy"));
        }
    }
    let cross_site = |what: &str| {
        outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "{what}: the proxy refuses requests from web pages of other origins, \
                 which would otherwise use your credentials"
            ),
        )
    };
    let own_origin = |value: &str| {
        value
            .strip_prefix(st.scheme)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(own)
    };
    for v in parts.headers.get_all(header::ORIGIN) {
        if !v.to_str().is_ok_and(own_origin) {
            return Err(cross_site("the Origin is not the proxy's own"));
        }
    }
    for v in parts.headers.get_all(header::REFERER) {
        let ok = v
            .to_str()
            .ok()
            .and_then(|r| url::Url::parse(r).ok())
            .is_some_and(|u| own_origin(&u.origin().ascii_serialization()));
        if !ok {
            return Err(cross_site("the Referer is not the proxy's own origin"));
        }
    }
    for v in parts.headers.get_all("sec-fetch-site") {
        let site = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return Err(cross_site("Sec-Fetch-Site is not same-origin"));
        }
    }
    Ok(())
}

/// Whether the request carries the proxy's token (or no token is required).
fn authorised(st: &ProxyState, headers: &HeaderMap) -> bool {
    st.token
        .as_ref()
        .is_none_or(|expected| token_matches(expected, headers))
}

/// Compares the presented bearer token with the expected one's SHA-256 digest in constant
/// time (digests have one length, so the token's length does not show either).
fn token_matches(expected: &[u8; 32], headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    bool::from(digest.ct_eq(expected))
}

async fn forward(State(st): State<ProxyState>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(refused) = check_browser(&st, &parts) {
        return refused;
    }
    if !authorised(&st, &parts.headers) {
        let mut r = outcome(
            StatusCode::UNAUTHORIZED,
            "login",
            "the proxy requires its bearer token (Authorization: Bearer <token>)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fhirconn proxy\""),
        );
        return r;
    }
    // Without a token nobody is known to be the person: ids are not listed.
    let may_list = st.token.is_some();
    let path = parts.uri.path().trim_start_matches('/');
    let (id, rest) = path.split_once('/').unwrap_or((path, ""));
    if id.is_empty() {
        let text = if may_list {
            format!(
                "use /<connection id>/<path>; connections: {}",
                st.host.connection_ids().join(", ")
            )
        } else {
            "use /<connection id>/<path>".to_string()
        };
        return outcome(StatusCode::NOT_FOUND, "not-found", &text);
    }
    let conn = match st.host.connection(id) {
        Ok(c) => c,
        Err(crate::Error::UnknownConnection { .. }) if !may_list => {
            return outcome(StatusCode::NOT_FOUND, "not-found", "no such connection");
        }
        Err(e) => return outcome(StatusCode::NOT_FOUND, "not-found", &e.to_string()),
    };
    let body = match to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                "the request body is larger than 64 MiB",
            )
        }
    };
    let listed = connection_listed(&parts.headers);
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| forwardable(k, &listed))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let target = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let request = Request {
        method: parts.method.clone(),
        path: target,
        headers,
        body: (!body.is_empty()).then(|| body.to_vec()),
    };
    match conn.send_streaming(request).await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let listed = connection_listed(&headers);
            let chunks = futures_util::stream::unfold(Some(resp), |state| async move {
                let mut resp = state?;
                match resp.chunk().await {
                    Ok(Some(c)) => Some((Ok::<_, reqwest::Error>(c), Some(resp))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            });
            let mut out = Response::new(Body::from_stream(chunks));
            *out.status_mut() = status;
            for (k, v) in headers.iter() {
                if returnable(k, &listed) {
                    out.headers_mut().append(k.clone(), v.clone());
                }
            }
            harden(out.headers_mut());
            out
        }
        // e.g. an absolute URL on another origin: the caller's mistake, nothing was sent.
        Err(e @ crate::Error::InvalidRequest(_)) => outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("connection '{id}': {}", st.host.redact(&e.to_string())),
        ),
        Err(e) => outcome(
            StatusCode::BAD_GATEWAY,
            "transient",
            &format!("connection '{id}': {}", st.host.redact(&e.to_string())),
        ),
    }
}

/// Serves the proxy on `listener` until `shutdown` completes (HTTPS when `config` has TLS).
pub async fn serve(
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bound = listener.local_addr()?;
    let state = ProxyState {
        host,
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
    };
    let app = axum::Router::new().fallback(forward).with_state(state);
    match config.tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            axum::serve(TlsListener::new(listener, tls), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// An axum listener completing TLS handshakes concurrently (each bounded by a timeout), so a
/// client that never finishes its handshake holds up no one else.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: std::io::Result<SocketAddr>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(tcp: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local = tcp.local_addr();
        let (tx, ready) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let tls = tokio_rustls::TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(_) => {
                        // e.g. out of file descriptors: wait instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream));
                    if let Ok(Ok(s)) = handshake.await {
                        drop(permit);
                        let _ = tx.send((s, peer)).await;
                    }
                });
            }
        });
        Self {
            ready,
            local,
            acceptor,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_cover_loopback_names_the_listen_text_and_default_ports() {
        let bound: SocketAddr = "127.0.0.1:8089".parse().unwrap();
        let a = authorities(
            bound,
            &["127.0.0.1:8089".into(), "proxy.example".into()],
            true,
        );
        for want in [
            "127.0.0.1:8089",
            "[::1]:8089",
            "localhost:8089",
            "proxy.example:8089",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        assert!(!a.iter().any(|x| x == "localhost"));
        let a = authorities("127.0.0.1:443".parse().unwrap(), &[], true);
        assert!(a.iter().any(|x| x == "localhost"), "{a:?}");
    }

    #[test]
    fn the_token_check_compares_digests_of_bearer_tokens() {
        let expected: [u8; 32] = Sha256::digest(b"abc").into();
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            token_matches(&expected, &h)
        };
        assert!(with("Bearer abc"));
        assert!(with("bearer abc"));
        assert!(!with("Bearer abd"));
        assert!(!with("Bearer abcd"));
        assert!(!with("Basic abc"));
        assert!(!token_matches(&expected, &HeaderMap::new()));
    }
}
