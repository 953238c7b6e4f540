//! A real `redis-server` for the fleet tests: started on a free loopback port with a temporary
//! directory and no persistence, stopped (by PID) when dropped. Needs Debian's `redis-server`
//! package (`cargo xtask test` installs it when it can; otherwise it says how).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Redis.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
}

/// Where `redis-server` is, or a message saying how to install it.
pub fn redis_server_binary() -> Result<PathBuf, String> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("redis-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    for p in [
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        "/usr/sbin/redis-server",
    ] {
        if std::path::Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    Err(
        "the fleet tests need a real Redis: install it with `sudo apt-get install -y \
         redis-server` (Debian/Ubuntu) or `brew install redis` (macOS), or run `cargo xtask \
         test`, which installs it when run as root"
            .into(),
    )
}

impl RedisServer {
    /// Starts a server (optionally requiring `password`) and waits until it answers.
    pub fn start(password: Option<&str>) -> Self {
        let port = free_port();
        let mut s = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            password: password.map(str::to_string),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = redis_server_binary().unwrap_or_else(|m| panic!("{m}"));
        let mut cmd = Command::new(bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).is_some_and(|o| o.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// `redis://` URL of the server (with the password when set).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn cli_command(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "--no-auth-warning",
        ]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p]);
        }
        cmd
    }

    /// Runs `redis-cli` against the server; its stdout, `None` when it could not run.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = self.cli_command().args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every key and its raw value (`--scan` + `GET`), as the canary scan reads them.
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let keys = self.cli(&["--scan"]).unwrap_or_default();
        keys.lines()
            .filter(|k| !k.is_empty())
            .map(|k| {
                let v = self.cli_command().args(["--raw", "GET", k]).output();
                (k.to_string(), v.map(|o| o.stdout).unwrap_or_default())
            })
            .collect()
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(6390)
}
