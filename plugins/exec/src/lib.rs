//! fhirconn scheme `exec`: credentials from a credential process, the vendor path without
//! Rust (in the spirit of kubectl's ExecCredential plugins and cargo's credential processes).
//!
//! Settings: `command` (the program and its arguments, never run through a shell), optional
//! `timeout` (seconds, default 30, at most 300), `env` (variables to set) and `inherit-env`
//! (names of the host's variables to pass through besides PATH, HOME, USER, LOGNAME, LANG,
//! LC_ALL and TMPDIR). The host runs the process (the `exec` host operation): stdin closed,
//! the connections file's directory as working directory, stdout never logged. `env` values
//! are secrets (an API key is typically passed that way): the schema marks them `writeOnly`,
//! so `fhirconn profile describe` hides them and a file holding them inline is written 0600,
//! and each one (of 4 characters or more) is registered with the host's redactor, so the
//! process's stderr quoted in an error never shows it.
//!
//! The process prints one JSON object (format `fhirconn.exec/v1`):
//! `{"apiVersion": "fhirconn.exec/v1", "token": "...", "expires_at": "2026-01-01T12:00:00Z"}`
//! (a bearer token) or `{"apiVersion": "fhirconn.exec/v1", "headers": {"X-Api-Key": "..."},
//! "expires_in": 300}`; exactly one of `token` and `headers`; `expires_at` (RFC 3339) or
//! `expires_in` (seconds) optional — without either, the credentials are used until the
//! server answers 401. A non-zero exit (its stderr shown), output that is not such an object,
//! or an unknown `apiVersion` is an error naming the command; the output's values are never
//! part of an error.

#![forbid(unsafe_code)]

use fhirconn_sdk::serde_json::{Map, Value};
use fhirconn_sdk::wire::Exec;
use fhirconn_sdk::{
    schemars, serde, settings, AuthRequest, Connection, ConnectionInfo, Credentials, Error, Host,
    Result, Scheme, SecretString,
};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The only output format this version reads.
pub const API_VERSION: &str = "fhirconn.exec/v1";

/// The `exec` scheme.
#[derive(Debug, Default)]
pub struct ExecScheme;

/// credentials from a credential process
#[derive(Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct ExecSettings {
    /// the program and its arguments (no shell), e.g. ["./get-token.sh", "--audience", "fhir"]
    #[schemars(length(min = 1))]
    command: Vec<String>,
    /// seconds before the process is stopped (default 30, at most 300)
    #[serde(default)]
    #[schemars(range(min = 1, max = 300))]
    timeout: Option<u64>,
    /// environment variables to set for the process; their values are treated as secrets
    /// (hidden by profile describe, redacted from output)
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    env: BTreeMap<String, String>,
    /// names of environment variables passed through from fhirconn's environment
    #[serde(default)]
    inherit_env: Vec<String>,
}

/// `env` values are secrets: `Debug` shows their names only.
impl std::fmt::Debug for ExecSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: BTreeMap<&str, &str> = self.env.keys().map(|k| (k.as_str(), "***")).collect();
        f.debug_struct("ExecSettings")
            .field("command", &self.command)
            .field("timeout", &self.timeout)
            .field("env", &env)
            .field("inherit_env", &self.inherit_env)
            .finish()
    }
}

/// A configured `exec` connection.
#[derive(Debug)]
pub struct ExecConnection(ExecSettings);

impl Scheme for ExecScheme {
    fn name(&self) -> &str {
        "exec"
    }

    fn summary(&self) -> &str {
        "credentials printed by a credential process (fhirconn.exec/v1 JSON on stdout)"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<ExecSettings>()
    }

    fn configure(
        &self,
        _connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let s: ExecSettings = settings::parse(settings, host)?;
        if s.command.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(Error::config("command: the program must not be empty"));
        }
        if s.timeout.is_some_and(|t| !(1..=300).contains(&t)) {
            return Err(Error::config("timeout: must be 1 to 300 seconds"));
        }
        for value in s.env.values() {
            host.redact_secret(value);
        }
        Ok(Box::new(ExecConnection(s)))
    }
}

impl Connection for ExecConnection {
    fn authorize(&self, _request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        let s = &self.0;
        let program = &s.command[0];
        let answer = host.exec(&Exec {
            argv: s.command.clone(),
            env: s.env.clone(),
            inherit_env: s.inherit_env.clone(),
            timeout_seconds: s.timeout,
        })?;
        if answer.exit_code != Some(0) {
            let how = answer
                .exit_code
                .map_or("was killed by a signal".to_string(), |c| {
                    format!("exited with code {c}")
                });
            let stderr = last_chars(answer.stderr.trim(), 500);
            let said = if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            };
            return Err(Error::rejected(format!(
                "credential process '{program}' {how}{said}"
            )));
        }
        credentials(&answer.stdout, host)
            .map_err(|e| e.context(format!("credential process '{program}'")))
    }
}

/// The last `n` characters of `s`.
fn last_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let skip = s.char_indices().nth(count - n).map_or(0, |(i, _)| i);
    &s[skip..]
}

/// Reads a `fhirconn.exec/v1` answer. Messages never quote its values.
pub fn credentials(stdout: &str, host: &Host<'_>) -> Result<Credentials> {
    let v: Value = fhirconn_sdk::serde_json::from_str(stdout.trim()).map_err(|e| {
        Error::protocol(format!(
            "printed no JSON object on stdout (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(o) = v else {
        return Err(Error::protocol("printed JSON that is not an object"));
    };
    match o.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => {
            let shown: String = v.chars().filter(|c| !c.is_control()).take(64).collect();
            return Err(Error::protocol(format!(
                "unknown apiVersion '{shown}' (this fhirconn reads '{API_VERSION}')"
            )));
        }
        _ => {
            return Err(Error::protocol(format!(
                "the answer has no apiVersion (expected '{API_VERSION}')"
            )))
        }
    }
    let mut creds = match (o.get("token"), o.get("headers")) {
        (Some(Value::String(t)), None) if !t.trim().is_empty() => {
            Credentials::new().bearer(&SecretString::from(t.trim().to_string()))
        }
        (None, Some(Value::Object(h))) if !h.is_empty() => headers(h)?,
        (Some(_), Some(_)) => {
            return Err(Error::protocol(
                "the answer has both 'token' and 'headers'; give one",
            ))
        }
        (Some(_), None) => return Err(Error::protocol("'token' must be a non-empty string")),
        (None, Some(_)) => {
            return Err(Error::protocol(
                "'headers' must be a non-empty object of strings",
            ))
        }
        (None, None) => {
            return Err(Error::protocol(
                "the answer has neither 'token' nor 'headers'",
            ))
        }
    };
    match (o.get("expires_at"), o.get("expires_in")) {
        (None, None) => {}
        (Some(Value::String(at)), None) => {
            let at = rfc3339(at).ok_or_else(|| {
                Error::protocol("'expires_at' is not an RFC 3339 time (e.g. 2026-01-01T12:00:00Z)")
            })?;
            creds = creds.expires_at(at);
        }
        (None, Some(Value::Number(n))) => {
            let secs = n
                .as_u64()
                .ok_or_else(|| Error::protocol("'expires_in' must be a whole number of seconds"))?;
            creds = creds.expires_in(host, Duration::from_secs(secs));
        }
        (Some(_), Some(_)) => {
            return Err(Error::protocol(
                "the answer has both 'expires_at' and 'expires_in'; give one",
            ))
        }
        (Some(_), None) => return Err(Error::protocol("'expires_at' must be a string")),
        (None, Some(_)) => return Err(Error::protocol("'expires_in' must be a number")),
    }
    Ok(creds)
}

fn headers(h: &Map<String, Value>) -> Result<Credentials> {
    let mut creds = Credentials::new();
    for (name, value) in h {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(Error::protocol("'headers' has an invalid header name"));
        }
        let Value::String(v) = value else {
            return Err(Error::protocol(format!(
                "the value of header '{name}' must be a string"
            )));
        };
        if v.is_empty() || v.chars().any(|c| c.is_control()) {
            return Err(Error::protocol(format!(
                "the value of header '{name}' is empty or has control characters"
            )));
        }
        creds = creds.secret_header(name, SecretString::from(v.clone()));
    }
    Ok(creds)
}

/// An RFC 3339 date-time (`2026-01-01T12:00:00Z`, fractions and offsets allowed).
pub fn rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // days from the civil date (Howard Hinnant's algorithm)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

fhirconn_sdk::export_schemes!(ExecScheme);

#[cfg(test)]
mod tests;
