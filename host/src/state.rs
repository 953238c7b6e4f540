//! Where a command-line host keeps its state between runs: sign-ins (refresh tokens) in a
//! credential store file under the user's state directory, never beside the connections file
//! (that is often a project or shared directory).

use crate::services::{CredentialStore, FileStore, MemoryStore};
use std::path::PathBuf;
use std::sync::Arc;

/// The credential store file: `$FHIRCONN_CREDENTIALS`, else the user's state directory
/// (`$XDG_STATE_HOME/fhirconn/credentials.json`, else
/// `~/.local/state/fhirconn/credentials.json`; the directory 0700, the file 0600); `None`
/// without a home directory.
pub fn credentials_path() -> Option<PathBuf> {
    std::env::var_os("FHIRCONN_CREDENTIALS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(FileStore::default_path)
}

/// The credential store: a file at [`credentials_path`], or memory only (with a warning)
/// without a home directory.
pub fn credential_store() -> Arc<dyn CredentialStore> {
    match credentials_path() {
        Some(p) => Arc::new(FileStore::new(p)),
        None => {
            tracing::warn!(
                "no state directory ($XDG_STATE_HOME or $HOME) and no $FHIRCONN_CREDENTIALS: \
                 sign-ins are not kept"
            );
            Arc::new(MemoryStore::default())
        }
    }
}
