//! Shared helpers for the workspace integration tests: where the built plugins, fixtures and
//! the `fhirconn` binary are (built by `cargo xtask test` / `cargo xtask build-plugins`), and
//! the helpers several test files share: running the binary, a bearer FHIR server, a browser
//! that follows a sign-in URL, file modes.

use fhirconn_host::TestReport;
use fhirconn_testkit::idp::IdentityProvider;
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod redis;

/// Every scheme the workspace ships (the built-in `none` and one plugin per scheme), sorted.
pub const SCHEMES: &[&str] = &[
    "aws-sigv4",
    "azure-ad",
    "basic",
    "bearer",
    "exec",
    "google-service-account",
    "mtls",
    "none",
    "oidc-client-credentials",
    "smart-app-launch",
    "smart-backend",
];

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn must_exist(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} not found at {}: run `cargo xtask test` (or `cargo xtask build-plugins` and \
         `cargo build -p fhirconn-host`) first",
        p.display()
    );
    p
}

/// The directory of built plugins.
pub fn plugin_dir() -> PathBuf {
    let p = std::env::var_os("FHIRCONN_TEST_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/plugins"));
    must_exist(p, "the plugin directory")
}

/// The directory of fixture plugins.
pub fn fixture_dir() -> PathBuf {
    must_exist(
        root().join("target/plugin-fixtures"),
        "the fixture plugin directory",
    )
}

/// One fixture library's path.
pub fn fixture(lib: &str) -> PathBuf {
    must_exist(
        fixture_dir().join(format!(
            "{}{lib}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )),
        "a fixture plugin",
    )
}

/// The `fhirconn` binary.
pub fn fhirconn_bin() -> PathBuf {
    let p = std::env::var_os("FHIRCONN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root()
                .join("target/debug")
                .join(format!("fhirconn{}", std::env::consts::EXE_SUFFIX))
        });
    must_exist(p, "the fhirconn binary")
}

/// What a finished `fhirconn` run left: its exit code (-1 when a signal ended it), stdout and
/// stderr (lossy UTF-8).
#[derive(Debug)]
pub struct Out {
    /// The exit code, -1 when a signal ended the process.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Stdout, a newline, then stderr.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Out {
    fn from(out: Output) -> Self {
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `fhirconn` run in `dir`, without `FHIRCONN_CONFIG`, `FHIRCONN_PLUGIN_PATH` and `RUST_LOG`
/// from the caller's environment; with `--plugin-dir` set to the built plugins when
/// `plugins` is true (then the caller's arguments follow it).
pub fn fhirconn_command(dir: &Path, plugins: bool) -> Command {
    let mut cmd = Command::new(fhirconn_bin());
    cmd.current_dir(dir)
        .env_remove("FHIRCONN_CONFIG")
        .env_remove("FHIRCONN_PLUGIN_PATH")
        .env_remove("RUST_LOG");
    if plugins {
        cmd.arg("--plugin-dir").arg(plugin_dir());
    }
    cmd
}

/// Runs `cmd` to its end and collects what it left.
pub fn run_command(cmd: &mut Command) -> Out {
    Out::from(cmd.output().expect("fhirconn starts"))
}

/// A connection test's failure as text (its `Display`), or `passed`.
pub fn failure(r: &TestReport) -> String {
    r.failure
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "passed".into())
}

/// A host builder over the connections file `config` (relative paths resolved from `dir`)
/// that loads only the built plugins; add more (a credential store, a person) and build.
pub fn host_builder(dir: &Path, config: serde_json::Value) -> fhirconn_host::HostBuilder {
    fhirconn_host::Host::builder()
        .config_value(dir, config)
        .plugin_dir(plugin_dir())
        .only_explicit_plugin_dirs()
}

/// [`host_builder`], built; panics with the error's text.
pub async fn build_host(dir: &Path, config: serde_json::Value) -> fhirconn_host::Host {
    host_builder(dir, config)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A connections file with one connection per `(id, auth)` to `base_url`, each also with the
/// members of `extra` (an object, e.g. `{"read-timeout": "PT10S"}`).
pub fn connections_to(
    base_url: &str,
    connections: &[(&str, serde_json::Value)],
    extra: serde_json::Value,
) -> serde_json::Value {
    let conns: serde_json::Map<String, serde_json::Value> = connections
        .iter()
        .map(|(id, auth)| {
            let mut c = serde_json::json!({"base-url": base_url, "auth": auth});
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            (id.to_string(), c)
        })
        .collect();
    serde_json::json!({ "connections": conns })
}

/// A proxy served by the library (`fhirconn_host::proxy::serve`) on a free loopback port.
#[derive(Debug)]
pub struct LibraryProxy {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Stops it (sent or dropped).
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// Its task: `Ok` when it stopped cleanly.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `host` through the library's proxy with `config` on 127.0.0.1 and a free port.
pub async fn serve_proxy(
    host: std::sync::Arc<fhirconn_host::Host>,
    config: fhirconn_host::proxy::Config,
) -> LibraryProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fhirconn_host::proxy::serve(
        host,
        listener,
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    LibraryProxy { addr, stop, server }
}

/// Tests that start many processes each take this first: within one test binary they run one
/// at a time, so timings are their own (a test that panicked does not block the others).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The runtime the benches measure in: multi-threaded with two workers (the machine's cores),
/// I/O and timers on.
pub fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Every variable the Azure SDKs read for managed and workload identity: the tests remove
/// them from the processes they start, so none leaks in from the caller.
pub const AZURE_ENV: &[&str] = &[
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
];

/// A FHIR server accepting the JWTs `verifier` checks for the server's own origin as the
/// audience (`verifier` gets `http://127.0.0.1:PORT`).
pub async fn jwt_server_for_own_origin(
    verifier: impl Fn(&str) -> fhirconn_testkit::JwtAuth,
) -> FhirServer {
    let fhir = FhirServer::start(FhirServerConfig::default())
        .await
        .expect("the FHIR server starts");
    fhir.set_auth(ServerAuth::Jwt(verifier(&fhir.origin())));
    fhir
}

/// A FHIR server that accepts exactly the bearer token `token`.
pub async fn bearer_server(token: &str) -> FhirServer {
    FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Bearer {
            tokens: vec![token.into()],
        },
        ..FhirServerConfig::default()
    })
    .await
    .expect("the FHIR server starts")
}

/// A FHIR server that accepts the access tokens `idp` issues for `audience`.
pub async fn jwt_server(idp: &IdentityProvider, audience: &str) -> FhirServer {
    FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Jwt(idp.verifier(audience)),
        ..FhirServerConfig::default()
    })
    .await
    .expect("the FHIR server starts")
}

/// An identity provider with one `client_secret_basic` client (`client_id`, `secret`, scope
/// `system/*.rs`) issuing tokens of `lifetime` for `audience`, and a FHIR server accepting them.
pub async fn idp_with_secret_client(
    audience: &str,
    client_id: &str,
    secret: &str,
    lifetime: std::time::Duration,
) -> (IdentityProvider, FhirServer) {
    use fhirconn_testkit::idp::{ClientAuth, IdpConfig, RegisteredClient};
    let idp = IdentityProvider::start(IdpConfig {
        audience: audience.into(),
        token_lifetime: lifetime,
        clients: vec![RegisteredClient {
            client_id: client_id.into(),
            auth: ClientAuth::SecretBasic(secret.into()),
            scopes: vec!["system/*.rs".into(), "system/*.read".into()],
        }],
        ..IdpConfig::default()
    })
    .await
    .expect("the identity provider starts");
    let fhir = jwt_server(&idp, audience).await;
    (idp, fhir)
}

/// A plain HTTP/1.1 `GET url` (no TLS, `Connection: close`): the whole raw answer, or `None`
/// when the address is unusable or nothing answers.
pub fn http_get(url: &url::Url) -> Option<String> {
    let addr = format!("{}:{}", url.host_str()?, url.port_or_known_default()?);
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        url.host_str()?
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Some(out)
}

/// What a browser does with a sign-in URL: GET it, then GET the redirect (`Location`) it
/// answers with, if any.
pub fn follow_sign_in(url: &url::Url) {
    let resp = http_get(url).unwrap_or_default();
    let location = resp
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(str::trim)
        .and_then(|l| url::Url::parse(l).ok());
    if let Some(back) = location {
        let _ = http_get(&back);
    }
}

/// The permission bits of `p` (`& 0o777`).
#[cfg(unix)]
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

/// Sets the permission bits of `p` to `m`.
#[cfg(unix)]
pub fn chmod(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod works");
}
