//! The credential store: where schemes keep refresh tokens and similar long-lived state
//! ([`MemoryStore`], or [`FileStore`]: one 0600 JSON file, a cross-process lock).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the credential store could not be used. Messages name the file, never a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is a symbolic link (its values could have been planted).
    #[error(
        "credential store {} is a symbolic link; refusing to use it (remove it, or point \
         $FHIRCONN_CREDENTIALS at the real file)",
        path.display()
    )]
    Symlink {
        /// The store.
        path: PathBuf,
    },
    /// The store could not be read.
    #[error("cannot read credential store {}: {source}", path.display())]
    Read {
        /// The store.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store is a directory, device or other non-file.
    #[error("credential store {} is not a regular file", path.display())]
    NotAFile {
        /// The store.
        path: PathBuf,
    },
    /// The store belongs to another user.
    #[error(
        "credential store {} belongs to another user (uid {uid}); refusing to use it",
        path.display()
    )]
    ForeignOwner {
        /// The store.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Group or others can write the store.
    #[error(
        "credential store {} can be written by group or others (mode {mode:o}); its values \
         may have been planted: check or remove it, then chmod 600 it",
        path.display()
    )]
    Shared {
        /// The store.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The store is larger than [`MAX_STORE_BYTES`].
    #[error("credential store {} is larger than {MAX_STORE_BYTES} bytes", path.display())]
    TooLarge {
        /// The store.
        path: PathBuf,
    },
    /// The store is not a JSON object of strings.
    #[error("credential store {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The store.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The store could not be written.
    #[error("cannot write credential store {}: {source}", path.display())]
    Write {
        /// The store.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store's directory could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {source}", lock.display())]
    Lock {
        /// The lock file.
        lock: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the lock for longer than the wait.
    #[error("credential store {} is locked by another fhirconn process", path.display())]
    Locked {
        /// The store.
        path: PathBuf,
    },
}

/// Where schemes keep refresh tokens and similar long-lived state.
pub trait CredentialStore: Send + Sync {
    /// Reads a value.
    fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Writes a value.
    fn put(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Deletes a value (absent is fine).
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Whether any key starts with `prefix` (a connection's stored sign-in: `<id>/...`).
    fn has_prefix(&self, prefix: &str) -> Result<bool, StoreError>;
}

/// A store that keeps values in memory only (tests, and hosts that want no persistence).
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<BTreeMap<String, String>>);

impl MemoryStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CredentialStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.map().get(key).cloned())
    }
    fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.map().insert(key.to_string(), value.to_string());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.map().remove(key);
        Ok(())
    }
    fn has_prefix(&self, prefix: &str) -> Result<bool, StoreError> {
        Ok(self.map().keys().any(|k| k.starts_with(prefix)))
    }
}

/// A JSON file readable by its owner only (mode 0600).
///
/// Written through [`crate::safe_write`] (a random temporary name created with
/// `O_EXCL|O_NOFOLLOW` at 0600, `fsync`, `rename`), so a planted temporary file or symlink can
/// neither read the values nor redirect them. Updates hold a cross-process lock
/// (`<store>.lock`), so concurrent `fhirconn` processes (a `proxy` and a `login`) do not lose
/// each other's refresh-token rotations. A store that is a symbolic link, belongs to another
/// user or can be written by group or others is refused: its values could have been planted.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock: Mutex<()>,
}

/// How long a store update waits for another process's lock.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// A credential store larger than this is refused (it holds a few tokens).
pub const MAX_STORE_BYTES: u64 = 16 * 1024 * 1024;

impl FileStore {
    /// A store at `path` (created on first write, its directory 0700 when created).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    /// The default store: `$XDG_STATE_HOME/fhirconn/credentials.json` (when that is an absolute
    /// path), else `~/.local/state/fhirconn/credentials.json`; `None` without a home directory.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .map(|h| h.join(".local").join("state"))
            })?;
        Some(base.join("fhirconn").join("credentials.json"))
    }

    /// Where the store is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<BTreeMap<String, String>, StoreError> {
        use std::io::Read as _;
        let path = || self.path.clone();
        // safe-write: ok (reading, without following a symlink)
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.custom_flags(libc::O_NOFOLLOW);
        }
        let file = match opts.open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            #[cfg(unix)]
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StoreError::Symlink { path: path() })
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: path(),
                    source,
                })
            }
        };
        let meta = file.metadata().map_err(|source| StoreError::Read {
            path: path(),
            source,
        })?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile { path: path() });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            if meta.uid() != current_uid() {
                return Err(StoreError::ForeignOwner {
                    path: path(),
                    uid: meta.uid(),
                });
            }
            if meta.mode() & 0o022 != 0 {
                return Err(StoreError::Shared {
                    path: path(),
                    mode: meta.mode() & 0o777,
                });
            }
            if meta.mode() & 0o044 != 0 {
                tracing::warn!(
                    "credential store {} is readable by group or others (mode {:o}); \
                     it is rewritten 0600 on the next change, but what it held may have been read",
                    self.path.display(),
                    meta.mode() & 0o777
                );
            }
        }
        let mut bytes = Vec::new();
        file.take(MAX_STORE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::Read {
                path: path(),
                source,
            })?;
        if bytes.len() as u64 > MAX_STORE_BYTES {
            return Err(StoreError::TooLarge { path: path() });
        }
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
            path: path(),
            source,
        })
    }

    fn write(&self, map: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let data = serde_json::to_vec_pretty(map).map_err(|e| write_error(e.into()))?;
        crate::safe_write::write(&self.path, &data, crate::safe_write::Options::default())
            .map_err(write_error)
    }

    /// Creates the store's directory (0700) and takes the cross-process lock on
    /// `<store>.lock`; released when the returned file is dropped.
    fn lock_across_processes(&self) -> Result<std::fs::File, StoreError> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::safe_write::create_private_dir(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let lock_path = dir.join(name);
        // safe-write: ok (an empty lock file: never truncated, O_NOFOLLOW, 0600)
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false); // safe-write: ok
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let file = opts.open(&lock_path).map_err(|source| StoreError::Lock {
            lock: lock_path.clone(),
            source,
        })?;
        // A lock file planted by another user could be held by them for ever.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            let owner = file.metadata().map(|m| m.uid()).unwrap_or(u32::MAX);
            if owner != current_uid() {
                return Err(StoreError::Lock {
                    lock: lock_path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("belongs to another user (uid {owner})"),
                    ),
                });
            }
        }
        let deadline = std::time::Instant::now() + STORE_LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked {
                        path: self.path.clone(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError::Lock {
                        lock: lock_path,
                        source: e,
                    })
                }
            }
        }
    }

    /// Read, change, write: under the in-process and the cross-process lock.
    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> bool,
    ) -> Result<(), StoreError> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _file_lock = self.lock_across_processes()?;
        let mut m = self.read()?;
        if change(&mut m) {
            self.write(&m)?;
        }
        Ok(())
    }
}

/// The effective user id (files of other users are not trusted).
#[cfg(unix)]
pub(crate) fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl CredentialStore for FileStore {
    fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.read()?.get(key).cloned())
    }
    fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.update(|m| {
            m.insert(key.to_string(), value.to_string());
            true
        })
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.update(|m| m.remove(key).is_some())
    }
    fn has_prefix(&self, prefix: &str) -> Result<bool, StoreError> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.read()?.keys().any(|k| k.starts_with(prefix)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("c/credentials.json"));
        s.put("a/refresh", "v1").unwrap();
        assert_eq!(s.get("a/refresh").unwrap().as_deref(), Some("v1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("c/credentials.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.delete("a/refresh").unwrap();
        assert_eq!(s.get("a/refresh").unwrap(), None);
    }

    #[test]
    fn store_errors_are_typed_and_name_the_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(&path, "not json CANARY").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = FileStore::new(path.clone()).get("k").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
        let text = e.to_string();
        assert!(
            text.contains("is corrupt") && !text.contains("CANARY"),
            "{text}"
        );
    }
}
