//! `credential-cache:` beside `connections:`: where a fleet of processes shares access tokens
//! (`backend: memory`, the default, or `backend: redis`), declared once with its schema.

use super::{ConfigError, Document};
use fhirconn_sdk::schemars::{self, JsonSchema};
use serde::Deserialize;
use serde_json::Value;

/// The top-level key.
pub const CREDENTIAL_CACHE: &str = "credential-cache";

/// The shared credential cache's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(crate = "fhirconn_sdk::schemars", inline)]
pub enum Backend {
    /// Each process keeps its own tokens (the default).
    #[default]
    Memory,
    /// Tokens are shared through Redis, sealed with AES-256-GCM.
    Redis,
}

/// `credential-cache:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct CredentialCacheSettings {
    /// `memory` (each process alone) or `redis` (shared by a fleet)
    #[serde(default)]
    pub backend: Backend,
    /// Redis URL: `redis://host:6379/0` or `rediss://` for TLS; `user:password@` for AUTH
    /// (the password is treated as a secret)
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub url: Option<String>,
    /// prefix of every key (default `fhirconn`)
    #[serde(default)]
    #[schemars(length(min = 1, max = 64))]
    pub key_prefix: Option<String>,
    /// environment variable holding the encryption key: 32 random bytes in base64
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub encryption_key_env: Option<String>,
    /// file holding the encryption key (relative to this file; not readable by others)
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub encryption_key_file: Option<String>,
}

/// A connection's choice (`credential-cache:` in a connection entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub enum ConnectionCache {
    /// Use the file's `credential-cache` (the default).
    #[default]
    Shared,
    /// Keep this connection's tokens to this process.
    Local,
}

/// The schema of `credential-cache:` (for the composed file schema).
pub fn schema() -> Value {
    let mut generator = schemars::SchemaGenerator::default();
    serde_json::to_value(CredentialCacheSettings::json_schema(&mut generator))
        .unwrap_or_else(|_| serde_json::json!({"type": "object"}))
}

/// A Redis cache ready to open: URL, key prefix and the key text (base64).
pub struct RedisCache {
    /// The Redis URL.
    pub url: String,
    /// Key prefix.
    pub prefix: String,
    /// The encryption key as written (base64); a secret.
    pub key_base64: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Reads `credential-cache:` of `doc`: `None` for `memory` (or none), the Redis cache to open,
/// or errors naming the field.
pub fn read(doc: &Document) -> Result<Option<RedisCache>, Vec<ConfigError>> {
    let Some(v) = doc.value.get(CREDENTIAL_CACHE) else {
        return Ok(None);
    };
    let at = |field: &str| format!("/{CREDENTIAL_CACHE}/{field}");
    let s: CredentialCacheSettings = serde_json::from_value(v.clone())
        .map_err(|e| vec![doc.error_at(&format!("/{CREDENTIAL_CACHE}"), false, e.to_string())])?;
    if s.backend == Backend::Memory {
        return Ok(None);
    }
    let mut errors = Vec::new();
    let url = match &s.url {
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => u.clone(),
        Some(_) => {
            errors.push(doc.error_at(&at("url"), false, "must start with redis:// or rediss://"));
            String::new()
        }
        None => {
            errors.push(doc.error_at(
                &format!("/{CREDENTIAL_CACHE}"),
                false,
                "backend: redis needs `url`",
            ));
            String::new()
        }
    };
    let key = match (&s.encryption_key_env, &s.encryption_key_file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => Some(k),
            _ => {
                errors.push(doc.error_at(
                    &at("encryption-key-env"),
                    false,
                    format!("environment variable {var} is not set"),
                ));
                None
            }
        },
        (None, Some(file)) => read_key_file(doc, file)
            .map_err(|m| errors.push(doc.error_at(&at("encryption-key-file"), false, m)))
            .ok(),
        _ => {
            errors.push(doc.error_at(
                &format!("/{CREDENTIAL_CACHE}"),
                false,
                "backend: redis needs exactly one of `encryption-key-env` and \
                 `encryption-key-file`",
            ));
            None
        }
    };
    if let Some(k) = &key {
        if let Err(e) = crate::fleet::check_key(k) {
            let field = if s.encryption_key_env.is_some() {
                "encryption-key-env"
            } else {
                "encryption-key-file"
            };
            errors.push(doc.error_at(&at(field), false, e.to_string()));
        }
    }
    match key {
        Some(k) if errors.is_empty() => Ok(Some(RedisCache {
            url,
            prefix: s.key_prefix.unwrap_or_else(|| "fhirconn".into()),
            key_base64: zeroize::Zeroizing::new(k),
        })),
        _ => Err(errors),
    }
}

fn read_key_file(doc: &Document, file: &str) -> Result<String, String> {
    let path = doc.base_dir().join(file);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() || meta.len() > 4096 {
            return Err(format!(
                "{} must be a regular file of at most 4 KiB (32 bytes in base64)",
                path.display()
            ));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "{} can be read by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.mode() & 0o777
            ));
        }
    }
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
}
