//! A profile of the shared AWS files: `~/.aws/credentials` (`[name]`) and `~/.aws/config`
//! (`[profile name]`, `[default]`), or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`, read
//! through the host; static keys, or `credential_process` run through the host's `exec`.

use crate::{keys, Keys};
use aws_smithy_types::date_time::{DateTime, Format};
use fhirconn_sdk::serde_json::{self, Value};
use fhirconn_sdk::wire::Exec;
use fhirconn_sdk::{Error, Host, Result};
use std::collections::HashMap;

/// Settings that name a way to get credentials this scheme does not implement.
const UNSUPPORTED: &str = "role_arn sso_session sso_start_url web_identity_token_file";

/// The keys of profile `name`: the credentials file's properties win over the config file's.
pub(crate) fn load(name: &str, host: &Host<'_>) -> Result<Keys> {
    let (mut props, mut looked) = (HashMap::new(), Vec::new());
    for (var, file, config) in [
        ("AWS_CONFIG_FILE", "config", true),
        ("AWS_SHARED_CREDENTIALS_FILE", "credentials", false),
    ] {
        let given = host.env_var(var).filter(|p| !p.is_empty());
        let path = given.unwrap_or_else(|| format!("~/.aws/{file}"));
        let path = match (path.strip_prefix("~/"), host.env_var("HOME")) {
            (Some(rest), Some(home)) => format!("{}/{rest}", home.trim_end_matches('/')),
            _ => path,
        };
        if let Ok(text) = host.read_to_string(&path) {
            props.extend(section(&text, name, config));
        }
        looked.push(path);
    }
    let err = |what: &str| Error::config(format!("profile '{name}': {what}"));
    if props.is_empty() {
        return Err(err(&format!("not found in {}", looked.join(", "))));
    }
    if let Some(key) = UNSUPPORTED.split(' ').find(|k| props.contains_key(*k)) {
        return Err(err(&format!("{key} is not supported: use credential_process (e.g. `aws configure export-credentials --format process`)")));
    }
    let Some(id) = props.get("aws_access_key_id") else {
        let process = props.get("credential_process");
        let process = process.ok_or_else(|| err("no aws_access_key_id, no credential_process"))?;
        return run(process, host)
            .map_err(|e| e.context(format!("profile '{name}': credential_process")));
    };
    let secret = props.get("aws_secret_access_key");
    let secret = secret.ok_or_else(|| err("aws_secret_access_key is missing"))?;
    let token = props.get("aws_session_token").map(String::as_str);
    keys(id, secret, token, "aws_access_key_id")
}

/// The properties of profile `name` in an INI text: `[profile name]` (or `[default]`) in the
/// config file, `[name]` in the credentials file. Comments and indented lines (sub-properties,
/// continuations) are skipped.
fn section(text: &str, name: &str, config: bool) -> HashMap<String, String> {
    let (mut props, mut inside) = (HashMap::new(), false);
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) || raw.starts_with([' ', '\t']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            let header = header.trim();
            inside = match header.strip_prefix("profile ") {
                Some(p) if config => p.trim() == name,
                _ => header == name && (!config || header == "default"),
            };
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            let v = [" #", "\t#", " ;", "\t;"]
                .iter()
                .fold(v, |v, c| v.split(c).next().unwrap_or(v));
            props.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    props
}

/// Runs a `credential_process` with `sh -c`, as the AWS SDKs do (the command is the person's own
/// configuration), and reads its answer:
/// `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}`.
fn run(command: &str, host: &Host<'_>) -> Result<Keys> {
    let argv = ["sh", "-c", command].map(String::from).to_vec();
    let answer = host.exec(&Exec {
        argv,
        env: Default::default(),
        inherit_env: Vec::new(),
        timeout_seconds: Some(60),
    })?;
    if answer.exit_code != Some(0) {
        let said = answer.stderr.lines().next().unwrap_or("").chars().take(200);
        let said: String = said.collect();
        let status = answer.exit_code;
        return Err(Error::rejected(format!("it failed ({status:?}): {said}")));
    }
    let out: Value = serde_json::from_str(answer.stdout.trim())
        .map_err(|e| Error::protocol(format!("its output is not JSON ({e})")))?;
    let text = |key: &str| out.get(key)?.as_str().filter(|v| !v.is_empty());
    let need =
        |key: &str| text(key).ok_or_else(|| Error::protocol(format!("its output needs {key}")));
    if out.get("Version").and_then(Value::as_u64) != Some(1) {
        return Err(Error::protocol("its output needs \"Version\": 1"));
    }
    let (id, secret) = (need("AccessKeyId")?, need("SecretAccessKey")?);
    let mut creds = keys(id, secret, text("SessionToken"), "AccessKeyId")?;
    if let Some(at) = text("Expiration") {
        let at = DateTime::from_str(at, Format::DateTime)
            .ok()
            .and_then(|t| t.try_into().ok());
        *creds.expiry_mut() =
            Some(at.ok_or_else(|| Error::protocol("its Expiration is not an RFC 3339 time"))?);
    }
    Ok(creds)
}
