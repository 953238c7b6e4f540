//! The `exec` host operation: a plugin asks the host to run a credential process (plugins do no
//! I/O). Used by the `exec` scheme and by `credential_process` of AWS profiles.
//!
//! The host runs `argv` directly (never through a shell) with stdin closed, a cleared
//! environment plus the variables named in `inherit_env` (and the host's documented base set)
//! plus `env`, in the directory of the connections file, under a timeout; it captures stdout
//! and stderr (bounded) and never logs stdout, which holds credentials.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Host operation: run a process (payload [`Exec`], answer [`ExecAnswer`]).
pub const EXEC: &str = "exec";

/// Payload of [`EXEC`]: `{"argv", "env", "inherit_env", "timeout_seconds"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Program and arguments; the program is looked up on `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Variables to set for the process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of the host's environment variables passed through (besides the base set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherit_env: Vec<String>,
    /// Kill the process after this many seconds (the host has a default and a maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Answer of [`EXEC`]: `{"exit_code", "stdout", "stderr"}` once the process has ended; a
/// process that could not start or timed out is an error of the operation instead.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecAnswer {
    /// The exit status (`None` when ended by a signal).
    pub exit_code: Option<i32>,
    /// Everything written to stdout (UTF-8, lossily converted). Holds credentials: it is
    /// hidden from `Debug`, and must never be logged.
    pub stdout: String,
    /// Everything written to stderr (bounded; may be shown, sanitised, on failure).
    #[serde(default)]
    pub stderr: String,
}

impl std::fmt::Debug for ExecAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecAnswer")
            .field("exit_code", &self.exit_code)
            .field("stdout", &format_args!("[{} bytes]", self.stdout.len()))
            .field("stderr", &self.stderr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_payload_and_answer_match_the_documented_json() {
        let op: Exec = serde_json::from_value(json!({
            "argv": ["aws-creds", "--profile", "p"],
            "env": {"A": "1"},
            "inherit_env": ["HOME"],
            "timeout_seconds": 30
        }))
        .unwrap();
        assert_eq!(op.argv, ["aws-creds", "--profile", "p"]);
        assert_eq!(op.env["A"], "1");
        assert_eq!(op.timeout_seconds, Some(30));
        let minimal: Exec = serde_json::from_value(json!({"argv": ["x"]})).unwrap();
        assert_eq!(
            serde_json::to_value(&minimal).unwrap(),
            json!({"argv": ["x"]})
        );
        assert!(serde_json::from_value::<Exec>(json!({"env": {}})).is_err());

        let a: ExecAnswer = serde_json::from_value(json!({
            "exit_code": 0, "stdout": "{\"token\":\"CANARY\"}", "stderr": ""
        }))
        .unwrap();
        assert_eq!(a.exit_code, Some(0));
        assert!(!format!("{a:?}").contains("CANARY"));
        let killed: ExecAnswer =
            serde_json::from_value(json!({"exit_code": null, "stdout": ""})).unwrap();
        assert_eq!(killed.exit_code, None);
    }
}
