//! The one choke point for writing files that hold secrets or patient data.
//!
//! Every such file (the credential store, `profile` edits of the connections file, `import dsf`
//! output, `keygen` keys, exported NDJSON and the export state) is written the same way:
//!
//! 1. a temporary file with a **random** name in the target's own directory, opened with
//!    `O_CREAT | O_EXCL | O_NOFOLLOW` and mode **0600 from creation** (so a pre-created file or a
//!    planted symlink makes the open fail instead of leaking or redirecting the bytes);
//! 2. the bytes, then `fsync`;
//! 3. the final mode (0600 unless the caller asks otherwise), then `rename` over the target,
//!    then `fsync` of the directory.
//!
//! A failed or abandoned write removes its temporary file: no partial bytes stay on disk.
//! The target itself is replaced, never written through: a symlink at the target is replaced by
//! a regular file, except with [`Options::follow_target_symlink`], used for the connections file,
//! which is edited at its final target (dotfile managers keep it as a symlink).

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// How [`write`] treats the target.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The final file's permission bits (Unix). Default 0600.
    pub mode: u32,
    /// When the target is a symlink, write the file it finally points to (the symlink stays).
    /// Default: `false` (the symlink itself is replaced by a regular file).
    pub follow_target_symlink: bool,
    /// Refuse to replace an existing target (`AlreadyExists`). Default `false`.
    pub create_new: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: 0o600,
            follow_target_symlink: false,
            create_new: false,
        }
    }
}

/// Writes `bytes` to `path` through a private temporary file and a rename (see the module docs).
pub fn write(path: &Path, bytes: &[u8], opts: Options) -> io::Result<()> {
    let target = if opts.follow_target_symlink {
        resolve_symlinks(path)?
    } else {
        path.to_path_buf()
    };
    if opts.create_new && std::fs::symlink_metadata(&target).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists", target.display()),
        ));
    }
    let dir = parent_dir(&target);
    let mut tmp = TempFile::new_in(&dir)?;
    tmp.file().write_all(bytes)?;
    tmp.set_mode(opts.mode)?;
    if opts.create_new {
        tmp.persist_new(&target)
    } else {
        tmp.persist(&target)
    }
}

/// A private (0600) temporary file with a random name, removed on drop unless persisted.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates `.fhirconn-<random>.tmp` in `dir` with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600.
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        for _ in 0..16 {
            let path = dir.join(format!(".fhirconn-{}.tmp", random_suffix()?));
            match open_new_private(&path) {
                Ok(file) => {
                    return Ok(Self {
                        path,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free temporary name in {}", dir.display()),
        ))
    }

    /// The open file, for writing.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("TempFile used after persist")
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the permission bits the final file will have (Unix; no-op elsewhere).
    pub fn set_mode(&mut self, mode: u32) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            self.file()
                .set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(())
    }

    /// `fsync`s and renames the file over `target` (replacing it), then syncs the directory.
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        let file = self.file.take().expect("TempFile persisted twice");
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.path, target)?;
        self.path = PathBuf::new();
        sync_dir(&parent_dir(target));
        Ok(())
    }

    /// Like [`persist`](Self::persist), but fails with `AlreadyExists` if `target` exists
    /// (a hard link, which never replaces, then the temporary name is removed).
    pub fn persist_new(mut self, target: &Path) -> io::Result<()> {
        let file = self.file.take().expect("TempFile persisted twice");
        file.sync_all()?;
        drop(file);
        std::fs::hard_link(&self.path, target)?;
        let _ = std::fs::remove_file(&self.path);
        self.path = PathBuf::new();
        sync_dir(&parent_dir(target));
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Opens a new file for writing with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600 from creation.
pub fn open_new_private(path: &Path) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Creates `dir` (and missing parents) and makes a newly created last component 0700.
/// An existing directory is used as it is (it was named by the person running fhirconn).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Checks that files in `dir` can only be planted or replaced by the person running fhirconn:
/// the directory must belong to them (or to root) and must not be writable by others
/// (group-writable is accepted: a project group is the person's own choice). A shared
/// directory such as `/tmp` itself is refused, since another user could plant files there.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(dir)?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to another user (uid {}); use a directory of your own",
                    dir.display(),
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o002 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} can be written by every user (another user could plant or replace \
                     files there); use a private directory",
                    dir.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Follows symlinks at `path` (up to 32) to the file they finally name; a missing file at the
/// end is fine (it will be created there).
pub fn resolve_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..32 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p)?;
                p = if link.is_absolute() {
                    link
                } else {
                    parent_dir(&p).join(link)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::other(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

fn random_suffix() -> io::Result<String> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    #[cfg(unix)]
    fn new_file_is_private_and_complete() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("store.json");
        write(&p, b"secret", Options::default()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        assert_eq!(mode(&p), 0o600);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    #[cfg(unix)]
    fn symlink_at_target_is_replaced_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let p = d.path().join("store.json");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write(&p, b"secret", Options::default()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    #[cfg(unix)]
    fn follow_target_symlink_edits_the_target_and_keeps_the_link() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("dotfiles")).unwrap();
        let real = d.path().join("dotfiles/fhirconn.yaml");
        std::fs::write(&real, b"old").unwrap();
        let link = d.path().join("fhirconn.yaml");
        std::os::unix::fs::symlink("dotfiles/fhirconn.yaml", &link).unwrap();
        let opts = Options {
            mode: 0o644,
            follow_target_symlink: true,
            ..Options::default()
        };
        write(&link, b"new", opts).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        assert_eq!(mode(&real), 0o644);
    }

    #[test]
    #[cfg(unix)]
    fn open_new_private_refuses_precreated_files_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let pre = d.path().join("pre");
        std::fs::write(&pre, b"").unwrap();
        assert_eq!(
            open_new_private(&pre).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &link).unwrap();
        assert!(open_new_private(&link).is_err());
        assert!(!d.path().join("nowhere").exists());
    }

    #[test]
    fn create_new_refuses_an_existing_target() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pem");
        std::fs::write(&p, b"old").unwrap();
        let opts = Options {
            create_new: true,
            ..Options::default()
        };
        let e = write(&p, b"new", opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_temp_file_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let mut t = TempFile::new_in(d.path()).unwrap();
        t.file().write_all(b"unchecked").unwrap();
        drop(t);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    #[cfg(unix)]
    fn shared_directories_are_not_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        assert!(check_private_dir(d.path()).is_ok());
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_private_dir(d.path()).unwrap_err();
        assert!(e.to_string().contains("every user"), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(check_private_dir(d.path()).is_ok());
    }
}
