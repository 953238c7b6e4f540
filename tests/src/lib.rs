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
