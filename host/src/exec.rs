//! The `exec` host operation: runs a credential process for a plugin (plugins do no I/O), as
//! kubectl runs an ExecCredential plugin and cargo a credential process.
//!
//! The rules: `argv` is run directly (never through a shell); stdin is `/dev/null`; the
//! environment is cleared except the base set [`BASE_ENV`], the names the request lists in
//! `inherit_env`, and its own `env`; the working directory is the connections file's
//! directory (a relative program path with a `/` is resolved there); the process runs in a
//! process group of its own, which is killed (SIGKILL) when the timeout (default
//! [`DEFAULT_TIMEOUT`], at most [`MAX_TIMEOUT`]) passes, an output exceeds its bound
//! ([`MAX_STDOUT_BYTES`], [`MAX_STDERR_BYTES`]), the call ends, or this process ends in any
//! way (Ctrl-C, SIGTERM, SIGKILL, a crash): the group is led by a watchdog (`/bin/sh`
//! blocked reading a pipe only this process holds open) that kills the group when the pipe
//! closes, since Ctrl-C on the terminal does not reach another group and the host runs no
//! code after SIGKILL (nor `pre_exec`/`PR_SET_PDEATHSIG`: the host forbids unsafe code). Stdout holds credentials: it is never logged
//! and never part of an error, and its JSON string values are registered with the redactor.
//! Errors name the program (argv\[0\]) with control characters escaped.

use crate::redact::Redactor;
use crate::text::sanitize_line;
use fhirconn_sdk::wire::{Exec, ExecAnswer};
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The timeout when the request names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a request may ask for (longer ones are cut to it).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the output may stay open after the process ended (a child it left behind).
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The most a process may write to stdout.
pub const MAX_STDOUT_BYTES: usize = 1 << 20;
/// The most a process may write to stderr.
pub const MAX_STDERR_BYTES: usize = 64 << 10;
/// The watchdog leading a credential process's group: it waits for end of file on its stdin
/// (the write end is this process's, close-on-exec), then kills its own process group.
const WATCHDOG: &str = "read -r _; kill -s KILL 0";

/// The variables of the host's environment every process gets (when set): what a program
/// needs to find its tools, home, user, locale and temporary directory. Nothing else passes
/// unless the request names it in `inherit_env`.
pub const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR",
];

/// Why a process could not be run to its end. Messages name the program, never its output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The request has an empty `argv` or an empty program.
    #[error("exec: no command given")]
    NoCommand,
    /// An environment variable name or value the OS cannot take.
    #[error("exec '{command}': invalid environment variable '{name}'")]
    Environment {
        /// The program.
        command: String,
        /// The variable.
        name: String,
    },
    /// The process could not be started.
    #[error("cannot run '{command}': {reason}")]
    Spawn {
        /// The program.
        command: String,
        /// Why (from the OS).
        reason: String,
    },
    /// The process did not end in time; its process group was killed.
    #[error("'{command}' did not finish within {} s and was stopped", after.as_secs())]
    Timeout {
        /// The program.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// The process wrote more than its bound; its process group was killed.
    #[error("'{command}' wrote more than {limit} bytes to {stream} and was stopped")]
    TooMuchOutput {
        /// The program.
        command: String,
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The bound.
        limit: usize,
    },
    /// Reading its output failed.
    #[error("reading the output of '{command}' failed: {reason}")]
    Io {
        /// The program.
        command: String,
        /// Why.
        reason: String,
    },
}

enum Event {
    Exited(std::io::Result<ExitStatus>),
    Output(&'static str, Result<Vec<u8>, Overflow>),
}

enum Overflow {
    Limit,
    Io(std::io::Error),
}

/// Runs `request` in `dir` (see the module documentation). Blocks the calling thread: call it
/// from a plugin call (a blocking thread), never on a runtime worker.
pub fn run(dir: &Path, request: &Exec, redactor: &Redactor) -> Result<ExecAnswer, ExecError> {
    let program = request
        .argv
        .first()
        .filter(|p| !p.is_empty())
        .ok_or(ExecError::NoCommand)?;
    let command = sanitize_line(program, 200);
    let mut cmd = command_for(dir, request, &command)?;
    let timeout = request
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
        .min(MAX_TIMEOUT);
    tracing::debug!(command = %command, args = request.argv.len() - 1,
        timeout_s = timeout.as_secs(), "exec: running a credential process");
    let started = Instant::now();
    let mut group = Group::start();
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // Its own group (0: a new one), led by the watchdog when it started.
        cmd.process_group(group.id.and_then(|id| i32::try_from(id).ok()).unwrap_or(0));
    }
    let child = cmd.spawn().map_err(|e| ExecError::Spawn {
        command: command.clone(),
        reason: spawn_reason(&e),
    })?;
    group.id.get_or_insert(child.id());
    let rx = watch(child);
    let (mut status, mut stdout, mut stderr) = (None, None, None);
    let mut deadline = started + timeout;
    let mut killed = false;
    while status.is_none() || stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match rx.recv_timeout(left) {
            Ok(e) => e,
            // It ended, but something it started still holds its output open: stop that
            // and take what was written.
            Err(_) if status.is_some() && !killed => {
                group.kill();
                killed = true;
                deadline = Instant::now() + EXIT_GRACE;
                continue;
            }
            Err(_) => {
                group.kill();
                return Err(ExecError::Timeout {
                    command,
                    after: timeout,
                });
            }
        };
        match event {
            Event::Exited(s) => {
                status = Some(s.map_err(|e| ExecError::Io {
                    command: command.clone(),
                    reason: e.to_string(),
                })?);
                deadline = deadline.min(Instant::now() + EXIT_GRACE);
            }
            Event::Output(stream, Err(Overflow::Limit)) => {
                group.kill();
                let limit = if stream == "stdout" {
                    MAX_STDOUT_BYTES
                } else {
                    MAX_STDERR_BYTES
                };
                return Err(ExecError::TooMuchOutput {
                    command,
                    stream,
                    limit,
                });
            }
            Event::Output(_, Err(Overflow::Io(e))) => {
                group.kill();
                return Err(ExecError::Io {
                    command,
                    reason: e.to_string(),
                });
            }
            Event::Output("stdout", Ok(b)) => stdout = Some(b),
            Event::Output(_, Ok(b)) => stderr = Some(b),
        }
    }
    // A child left behind in the group (a daemon holding no pipe) does not outlive the call.
    drop(group);
    let stdout = String::from_utf8_lossy(&stdout.unwrap_or_default()).into_owned();
    register_secrets(&stdout, redactor);
    let exit_code = status.and_then(|s| s.code());
    tracing::debug!(command = %command, ?exit_code, stdout_bytes = stdout.len(),
        elapsed_ms = started.elapsed().as_millis() as u64, "exec: done");
    Ok(ExecAnswer {
        exit_code,
        stdout,
        stderr: String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned(),
    })
}

/// Threads that read the child's stdout and stderr (each bounded) and wait for its exit, each
/// reporting one [`Event`] on the returned channel.
fn watch(mut child: std::process::Child) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    for (stream, pipe, limit) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            MAX_STDOUT_BYTES,
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            MAX_STDERR_BYTES,
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let read = pipe.map_or(Ok(Vec::new()), |p| read_bounded(p, limit));
            let _ = tx.send(Event::Output(stream, read));
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(Event::Exited(child.wait()));
    });
    rx
}

/// The command with its environment, directory, pipes and process group set.
fn command_for(dir: &Path, request: &Exec, command: &str) -> Result<Command, ExecError> {
    let program = &request.argv[0];
    let path = Path::new(program);
    let mut cmd = if path.is_relative() && program.contains('/') {
        Command::new(dir.join(path))
    } else {
        Command::new(program)
    };
    cmd.args(&request.argv[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear();
    let bad = |name: &str| ExecError::Environment {
        command: command.to_string(),
        name: sanitize_line(name, 100),
    };
    let valid = |name: &str| !name.is_empty() && !name.contains(['=', '\0']);
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(request.inherit_env.iter().map(String::as_str))
    {
        if !valid(name) {
            return Err(bad(name));
        }
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    for (name, value) in &request.env {
        if !valid(name) || value.contains('\0') {
            return Err(bad(name));
        }
        cmd.env(name, value);
    }
    Ok(cmd)
}

/// Reads `pipe` to its end, failing past `limit` bytes.
fn read_bounded(pipe: Box<dyn Read + Send>, limit: usize) -> Result<Vec<u8>, Overflow> {
    let mut buf = Vec::new();
    pipe.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(Overflow::Io)?;
    if buf.len() > limit {
        return Err(Overflow::Limit);
    }
    Ok(buf)
}

/// The process group of one credential process: killed when the call ends (also on an
/// early return or a panic), and by its watchdog when this process ends.
struct Group {
    /// The group's id: the watchdog's pid, else the credential process's once started.
    id: Option<u32>,
    /// The watchdog, reaped after the group is killed (so its id is never reused meanwhile).
    watchdog: Option<std::process::Child>,
}

impl Group {
    /// A group led by a new watchdog; without one (no `/bin/sh`, not Unix) the credential
    /// process leads its own group and is killed only by this process.
    fn start() -> Self {
        let watchdog = if cfg!(unix) {
            watchdog()
                .inspect_err(|e| {
                    tracing::debug!("exec: no watchdog ({e}); the group dies with the call only");
                })
                .ok()
        } else {
            None
        };
        Self {
            id: watchdog.as_ref().map(std::process::Child::id),
            watchdog,
        }
    }

    /// SIGKILL to the group (the watchdog, the process and what it started).
    fn kill(&self) {
        if let Some(id) = self.id {
            kill_group(id);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.wait();
        }
    }
}

/// `/bin/sh` running [`WATCHDOG`] as the leader of a new process group, its stdin the pipe
/// whose write end (kept in the returned child) closes when this process ends.
#[cfg(unix)]
fn watchdog() -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    Command::new("/bin/sh")
        .args(["-c", WATCHDOG])
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

#[cfg(not(unix))]
fn watchdog() -> std::io::Result<std::process::Child> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// SIGKILL to the process group (the process and what it started); errors ignored (it ended).
fn kill_group(group: u32) {
    #[cfg(unix)]
    {
        use rustix::process::{kill_process_group, Pid, Signal};
        if let Some(pid) = i32::try_from(group).ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
    #[cfg(not(unix))]
    let _ = group;
}

fn spawn_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such program (not found on PATH)".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied (not executable?)".into(),
        _ => sanitize_line(&e.to_string(), 200),
    }
}

/// Keys of credential-process answers whose values are not secrets.
const PUBLIC_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "Version",
    "expires_at",
    "expires_in",
    "Expiration",
    "expirationTimestamp",
];

/// Registers the string values of a JSON answer (a token, headers, keys) with the redactor,
/// so that a plugin's error quoting part of it shows `[REDACTED]`.
fn register_secrets(stdout: &str, redactor: &Redactor) {
    fn walk(v: &serde_json::Value, redactor: &Redactor, depth: usize) {
        match v {
            serde_json::Value::String(s) => redactor.add(s),
            serde_json::Value::Object(map) if depth < 4 => {
                for (k, v) in map {
                    if !PUBLIC_KEYS.contains(&k.as_str()) {
                        walk(v, redactor, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(stdout.trim()) {
        walk(&v, redactor, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_s_values_become_secrets_but_not_its_version() {
        let r = Redactor::default();
        register_secrets(
            r#"{"apiVersion":"fhirconn.exec/v1","token":"CANARY-tok-1","headers":{"X-K":"CANARY-h-2"}}"#,
            &r,
        );
        let shown = r.redact("fhirconn.exec/v1 CANARY-tok-1 CANARY-h-2");
        assert_eq!(shown, "fhirconn.exec/v1 [REDACTED] [REDACTED]");
    }
}
