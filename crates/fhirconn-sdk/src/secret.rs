//! Secrets: a redacted wrapper and the `x` / `x-file` / `x-env` convention every scheme uses.

use crate::error::{Error, Result};
use crate::host::Host;
use serde_json::{json, Map, Value};

pub use secrecy::{ExposeSecret, SecretBox, SecretString};

/// A secret value: `Debug` prints `[REDACTED]`, there is no `Display`, the memory is zeroized
/// on drop, and reading it takes an explicit `expose_secret()`.
pub type Secret<T> = SecretBox<T>;

/// Where a secret setting comes from: inline, a file, or an environment variable.
#[derive(Debug)]
pub enum SecretSource {
    /// `name: value` (discouraged; files and environment variables keep secrets out of YAML).
    Inline(SecretString),
    /// `name-file: path`, resolved relative to the configuration file.
    File(String),
    /// `name-env: VARIABLE`.
    Env(String),
}

impl SecretSource {
    /// Picks the one source set among `name`, `name-file` and `name-env` in a settings object.
    ///
    /// Exactly one must be set; `required = false` allows none.
    pub fn from_settings(
        settings: &Map<String, Value>,
        name: &str,
        required: bool,
    ) -> Result<Option<Self>> {
        let file_key = format!("{name}-file");
        let env_key = format!("{name}-env");
        let mut found = Vec::new();
        for key in [name, file_key.as_str(), env_key.as_str()] {
            if let Some(v) = settings.get(key) {
                if !v.is_null() {
                    found.push((key, v));
                }
            }
        }
        match found.as_slice() {
            [] if required => Err(Error::config(format!(
                "exactly one of '{name}', '{file_key}', '{env_key}' must be set; none is"
            ))),
            [] => Ok(None),
            [(key, value)] => {
                let Some(s) = value.as_str() else {
                    return Err(Error::config(format!("'{key}' must be a string")));
                };
                Ok(Some(if *key == name {
                    SecretSource::Inline(SecretString::from(s.to_string()))
                } else if *key == file_key {
                    SecretSource::File(s.to_string())
                } else {
                    SecretSource::Env(s.to_string())
                }))
            }
            many => Err(Error::config(format!(
                "exactly one of '{name}', '{file_key}', '{env_key}' must be set; found {}",
                many.iter()
                    .map(|(k, _)| format!("'{k}'"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))),
        }
    }

    /// Reads the secret. A file's trailing line break is removed; nothing else is trimmed.
    pub fn load(&self, name: &str, host: &Host<'_>) -> Result<SecretString> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(path) => {
                let bytes = host
                    .read_file(path)
                    .map_err(|e| e.context(format!("{name}-file")))?;
                let mut text = String::from_utf8(bytes).map_err(|_| {
                    Error::config(format!("{name}-file: '{path}' is not UTF-8 text"))
                })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                if text.is_empty() {
                    return Err(Error::config(format!("{name}-file: '{path}' is empty")));
                }
                Ok(SecretString::from(text))
            }
            SecretSource::Env(var) => match host.env_var(var) {
                Some(v) if !v.is_empty() => Ok(SecretString::from(v)),
                Some(_) => Err(Error::config(format!(
                    "{name}-env: environment variable {var} is empty"
                ))),
                None => Err(Error::config(format!(
                    "{name}-env: environment variable {var} is not set"
                ))),
            },
        }
    }

    /// Picks and loads in one step; `Ok(None)` only when `required` is false and none is set.
    pub fn resolve(
        settings: &Map<String, Value>,
        name: &str,
        required: bool,
        host: &Host<'_>,
    ) -> Result<Option<SecretString>> {
        match Self::from_settings(settings, name, required)? {
            Some(src) => src.load(name, host).map(Some),
            None => Ok(None),
        }
    }

    /// JSON Schema properties for `name`, `name-file` and `name-env`, each with
    /// `"x-secret-source"`: `inline`, `file` or `env`. The inline one is `"writeOnly": true`:
    /// the host masks, and refuses on the command line, exactly the values the schema marks so
    /// (never guessing from key names). A path or a variable name is not itself a secret, so
    /// `-file`/`-env` are not `writeOnly` (`profile set --set x-file=...` must stay allowed).
    pub fn schema_properties(name: &str, what: &str) -> Map<String, Value> {
        let mut props = Map::new();
        props.insert(
            name.to_string(),
            json!({"type": "string", "minLength": 1, "writeOnly": true, "x-secret-source": "inline",
                   "description": format!("{what}, inline (prefer {name}-file or {name}-env)")}),
        );
        props.insert(
            format!("{name}-file"),
            json!({"type": "string", "minLength": 1, "x-secret-source": "file",
                   "description": format!("file holding the {what}, relative to this config file")}),
        );
        props.insert(
            format!("{name}-env"),
            json!({"type": "string", "minLength": 1, "x-secret-source": "env",
                   "description": format!("environment variable holding the {what}")}),
        );
        props
    }

    /// A JSON Schema fragment saying exactly one of the three must be present.
    pub fn schema_exactly_one(name: &str) -> Value {
        json!({"oneOf": [
            {"required": [name]},
            {"required": [format!("{name}-file")]},
            {"required": [format!("{name}-env")]},
        ]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockHost;

    fn settings(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn exactly_one_source_is_required() {
        let none = SecretSource::from_settings(&settings(json!({})), "password", true);
        assert!(none.unwrap_err().message().contains("none is"));
        let two = SecretSource::from_settings(
            &settings(json!({"password": "a", "password-file": "b"})),
            "password",
            true,
        );
        let msg = two.unwrap_err().to_string();
        assert!(msg.contains("'password' and 'password-file'"), "{msg}");
        assert!(!msg.contains("\"a\""), "value leaked: {msg}");
    }

    #[test]
    fn file_sources_drop_one_trailing_newline_only() {
        let mock = MockHost::new().with_file("pw.txt", b" p:w \r\n");
        mock.with_host(|host| {
            let s = SecretSource::resolve(
                &settings(json!({"password-file": "pw.txt"})),
                "password",
                true,
                host,
            )
            .unwrap()
            .unwrap();
            assert_eq!(s.expose_secret(), " p:w ");
        });
    }

    #[test]
    fn env_and_missing_file_errors_name_the_field() {
        let mock = MockHost::new().with_env("PW", "secret-value");
        mock.with_host(|host| {
            let s = SecretSource::resolve(
                &settings(json!({"password-env": "PW"})),
                "password",
                true,
                host,
            );
            assert_eq!(s.unwrap().unwrap().expose_secret(), "secret-value");
            let e = SecretSource::resolve(
                &settings(json!({"password-env": "NOPE"})),
                "password",
                true,
                host,
            )
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                "password-env: environment variable NOPE is not set"
            );
            let e = SecretSource::resolve(
                &settings(json!({"password-file": "missing.txt"})),
                "password",
                true,
                host,
            )
            .unwrap_err();
            assert!(e.to_string().starts_with("password-file: "), "{e}");
        });
    }

    #[test]
    fn debug_of_a_secret_is_redacted() {
        let s = SecretSource::Inline(SecretString::from("CANARY-sdk-secret".to_string()));
        assert!(!format!("{s:?}").contains("CANARY"));
    }
}
