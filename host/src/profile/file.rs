//! `fhirconn profile` on a file: reading the connections file, listing and describing its
//! entries, and [`apply`]ing one edit — validated whole against the composed schema before
//! anything is written, then written through `safe_write` at the symlink's target.

use super::{ProfileSet, SecretMarks};
use crate::config::Document;
use crate::plugins::Registry;
use crate::Error;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One edit of a connections file.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Add or replace a connection.
    Set(ProfileSet),
    /// Remove a connection.
    Remove(String),
}

/// Why a profile command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The file cannot be read (exit 2).
    #[error("{}: {source}", path.display())]
    Read {
        /// The connections file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse, or the edited file would not (exit 2).
    #[error(transparent)]
    Parse(Error),
    /// The edit itself is refused (an inline secret, a bad value; exit 2).
    #[error("{0}")]
    Edit(String),
    /// The connection is not in the file (exit 2).
    #[error("no connection '{id}' in {}", path.display())]
    Unknown {
        /// The id asked for.
        id: String,
        /// The connections file.
        path: PathBuf,
    },
    /// The edited file fails validation; the file was not changed.
    #[error(transparent)]
    Check(Error),
    /// Writing failed (exit 1).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The connections file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One line of `profile list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// The connection id.
    pub id: String,
    /// Its schemes (`none` when it has no `auth`).
    pub schemes: Vec<String>,
    /// Its base URL.
    #[serde(rename = "base-url")]
    pub base_url: String,
}

/// Reads and parses the connections file.
pub fn read(path: &Path) -> Result<Document, ProfileError> {
    parse(path, &read_text(path, false)?)
}

/// The text of the connections file; a missing file is an empty one when `missing_ok`.
fn read_text(path: &Path, missing_ok: bool) -> Result<String, ProfileError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => Ok(String::new()),
        Err(source) => Err(ProfileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse(path: &Path, text: &str) -> Result<Document, ProfileError> {
    Document::parse(path, text.as_bytes()).map_err(|e| ProfileError::Parse(Error::Config(e)))
}

fn connections(doc: &Document) -> serde_json::Map<String, Value> {
    doc.value["connections"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// The scheme names a connection entry uses.
pub fn schemes_of(conn: &Value) -> Vec<String> {
    match &conn["auth"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x["scheme"].as_str().map(String::from))
            .collect(),
        a => a["scheme"].as_str().map(String::from).into_iter().collect(),
    }
}

/// The connections of a file, in file order.
pub fn list(doc: &Document) -> Vec<Listed> {
    connections(doc)
        .iter()
        .map(|(id, c)| {
            let schemes = match &c["auth"] {
                Value::Array(_) | Value::Object(_) => schemes_of(c),
                _ => vec!["none".to_string()],
            };
            Listed {
                id: id.clone(),
                schemes,
                base_url: c["base-url"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// A connection's entry and the secret marks of its schemes.
fn entry(
    doc: &Document,
    id: &str,
    registry: &Registry,
) -> Result<(Value, SecretMarks), ProfileError> {
    let Some(v) = connections(doc).remove(id) else {
        return Err(ProfileError::Unknown {
            id: id.to_string(),
            path: doc.path.clone(),
        });
    };
    let marks = SecretMarks::from_registry(registry, schemes_of(&v).iter().map(String::as_str));
    Ok((v, marks))
}

/// One connection's entry as JSON with every secret (by the schemes' [`SecretMarks`]) as
/// `"***"`, whatever its type.
pub fn masked(doc: &Document, id: &str, registry: &Registry) -> Result<Value, ProfileError> {
    let (v, marks) = entry(doc, id, registry)?;
    let mut shown = v.clone();
    for ptr in marks.secrets_in_connection(&v) {
        if let Some(x) = shown.pointer_mut(&ptr) {
            *x = Value::String("***".into());
        }
    }
    Ok(shown)
}

/// `profile describe` as YAML text ([`super::describe`]), secrets as `***`.
pub fn describe(doc: &Document, id: &str, registry: &Registry) -> Result<String, ProfileError> {
    let (v, marks) = entry(doc, id, registry)?;
    Ok(super::describe(id, &v, &marks))
}

/// Applies one edit to the file at `path` (created when missing): the whole result is
/// validated against the composed schema first, then written through the safe-write helper
/// (a private temporary file renamed over the file's final target, so a symlinked config
/// stays a symlink). The mode is kept, except that a file holding an inline secret is 0600;
/// a new file is 0644, or 0600 with a secret.
pub fn apply(path: &Path, edit: &Edit, registry: &Registry) -> Result<(), ProfileError> {
    let text = read_text(path, matches!(edit, Edit::Set(_)))?;
    let edited = match edit {
        Edit::Remove(id) => super::remove(&text, id),
        Edit::Set(set) => super::entry_value(set).and_then(|v| {
            let marks =
                SecretMarks::from_registry(registry, schemes_of(&v).iter().map(String::as_str));
            super::check_inline_secrets(&v, &marks, set.allow_inline_secret)?;
            super::set(&text, &set.id, &v)
        }),
    }
    .map_err(ProfileError::Edit)?;
    let doc = parse(path, &edited)?;
    crate::Host::check_document(&doc, registry).map_err(ProfileError::Check)?;
    let marks = SecretMarks::new(
        registry
            .schemes()
            .iter()
            .map(|h| (h.name.clone(), h.schema.clone())),
    );
    let target = crate::safe_write::resolve_symlinks(path).unwrap_or_else(|_| path.to_path_buf());
    let mode = if marks.document_has_secrets(&doc.value) {
        0o600
    } else {
        existing_mode(&target).map_or(0o644, |m| m & 0o777)
    };
    let opts = crate::safe_write::Options {
        mode,
        follow_target_symlink: true,
        create_new: false,
    };
    crate::safe_write::write(path, edited.as_bytes(), opts).map_err(|source| ProfileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The permission bits of an existing file.
fn existing_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).ok().map(|m| m.permissions().mode())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}
