//! `fhirconn import`: reading another tool's configuration file (bounded) and writing the
//! converted connections file (never over an existing file, private when it holds a secret).
//! The conversion itself is [`crate::dsf::import`].

use crate::dsf::Imported;
use std::path::{Path, PathBuf};

/// Why an import failed (all are usage errors: exit 2 in the CLI).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The input cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The input file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not a configuration this importer understands.
    #[error("{0}")]
    Convert(String),
    /// The output cannot be written (it exists, or the directory is not writable).
    #[error("{}: {source}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads at most one byte over the configuration size limit (the parser refuses larger
/// files), so a huge or endless input is never read whole.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ImportError> {
    use std::io::Read as _;
    let limit = crate::config::yaml::MAX_CONFIG_BYTES as u64 + 1;
    std::fs::File::open(path)
        .and_then(|f| {
            let mut b = Vec::new();
            f.take(limit).read_to_end(&mut b).map(|_| b)
        })
        .map_err(|source| ImportError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads and converts a DSF BPE FHIR client connections file.
pub fn dsf_file(path: &Path) -> Result<Imported, ImportError> {
    let bytes = read_bounded(path)?;
    crate::dsf::import(path, &bytes).map_err(ImportError::Convert)
}

/// Writes an imported connections file through `safe_write`: never replaces an existing
/// file; mode 0600 when a secret was copied inline, else 0644.
pub fn write(path: &Path, imported: &Imported) -> Result<(), ImportError> {
    let opts = crate::safe_write::Options {
        mode: if imported.inline_secrets.is_empty() {
            0o644
        } else {
            0o600
        },
        follow_target_symlink: false,
        create_new: true,
    };
    crate::safe_write::write(path, imported.yaml.as_bytes(), opts).map_err(|source| {
        ImportError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The setting name of an `inline_secrets` entry (`connection: setting`), for the advice to
/// use its `-file` or `-env` form.
pub fn secret_setting(entry: &str) -> &str {
    entry.rsplit(": ").next().unwrap_or_default()
}
