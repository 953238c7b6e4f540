//! Plugin discovery, loading and the registry of schemes by name (built-in and loaded alike).
//!
//! A scheme name is a name, not a path: `^[a-z0-9][a-z0-9-]*$` ([`is_valid_scheme_name`]),
//! checked for names from configuration and for names plugins register. A scheme `NAME` is
//! looked for in its conventional file, `<dir>/libfhirconn_<NAME with - as _>.so` (`.dylib` on
//! macOS, `fhirconn_….dll` on Windows), in every plugin directory in order, then in the files
//! of its family: `a-b-c` may also come from `libfhirconn_a_b` or `libfhirconn_a` (a library
//! may export several schemes sharing its name as a prefix). An unknown name loads nothing
//! else; only [`Registry::load_all`] (`fhirconn schemes`) loads every library.
//!
//! Plugin libraries run as the person using fhirconn, from the moment they are loaded. So a
//! library is refused when it, or its directory, belongs to another user (root excepted) or can
//! be written by others; group-writable is accepted, with a warning, only for the user's own
//! primary group (user-private groups with umask 002). Relative entries in
//! `FHIRCONN_PLUGIN_PATH` are ignored (they would depend on the working directory), and a
//! scheme found in more than one directory is reported: the first directory wins.
//! Libraries are loaded at most once and never unloaded.

use crate::bridge::{self, PluginScheme, LIBRARY_PREFIX};
use crate::error::PluginError;
use crate::text::plugin_text;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use crate::bridge::{configure_raw, ABI_VERSION};

/// A scheme compiled into the host binary, registered with `inventory`.
#[derive(Debug)]
pub struct BuiltinScheme {
    /// Builds the scheme object.
    pub build: fn() -> Box<dyn fhirconn_sdk::Scheme>,
    /// The version it reports (the host crate's).
    pub version: &'static str,
}

inventory::collect!(BuiltinScheme);

/// Where a scheme comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into the host.
    Builtin,
    /// Loaded from a library.
    Library(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::Library(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A registered scheme.
pub struct SchemeHandle {
    /// The scheme name.
    pub name: String,
    /// Its self-description.
    pub version: String,
    /// One-line summary.
    pub summary: String,
    /// Settings schema.
    pub schema: serde_json::Value,
    /// SDK version it was built with.
    pub sdk_version: String,
    /// Whether its connections sign every request (`sign-request`, declared in its
    /// description's extensions).
    pub signs_requests: bool,
    /// Where it came from.
    pub origin: Origin,
    /// The scheme object behind the plugin bridge.
    pub(crate) imp: PluginScheme,
}

impl std::fmt::Debug for SchemeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemeHandle")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl SchemeHandle {
    fn new(imp: PluginScheme, origin: Origin) -> Self {
        let d = imp.describe();
        Self {
            name: d.name,
            version: d.version,
            summary: d.summary,
            schema: d.schema,
            sdk_version: d.sdk_version,
            signs_requests: d.signs_requests,
            origin,
            imp,
        }
    }
}

/// Whether `name` is a valid scheme name: `^[a-z0-9][a-z0-9-]*$`, at most 64 characters.
pub fn is_valid_scheme_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The platform's file name for a scheme's library. Only `[a-z0-9_]` reach the file name (`-`
/// becomes `_`, anything else `_` too), so no name can make it a path.
pub fn library_file_name(scheme: &str) -> String {
    let safe: String = scheme
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    let stem = format!("{LIBRARY_PREFIX}{safe}");
    format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let prefix = format!("{}{LIBRARY_PREFIX}", std::env::consts::DLL_PREFIX);
    name.starts_with(&prefix) && name.ends_with(std::env::consts::DLL_SUFFIX)
}

#[derive(Default)]
struct RegistryState {
    schemes: BTreeMap<String, Arc<SchemeHandle>>,
    /// Every library tried, with its outcome (so each is loaded once).
    libraries: BTreeMap<PathBuf, Result<Vec<String>, PluginError>>,
    /// Schemes whose shadowing was reported already.
    shadow_reported: std::collections::BTreeSet<String>,
}

/// Schemes by name. Built-in schemes are present from the start; plugins load on demand.
pub struct Registry {
    dirs: Vec<PathBuf>,
    state: Mutex<RegistryState>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry over these plugin directories, holding the built-in schemes.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        let mut state = RegistryState::default();
        for b in inventory::iter::<BuiltinScheme> {
            let h = SchemeHandle::new(
                PluginScheme::builtin((b.build)(), b.version),
                Origin::Builtin,
            );
            state.schemes.insert(h.name.clone(), Arc::new(h));
        }
        Self {
            dirs,
            state: Mutex::new(state),
        }
    }

    /// The plugin directories, in search order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Looks a scheme up, loading the library that provides it if needed: its conventional
    /// file, then the files of its family (`a-b` → `fhirconn_a`), never any other library.
    pub fn get(&self, name: &str) -> Result<Arc<SchemeHandle>, PluginError> {
        if let Some(h) = self.lock().schemes.get(name) {
            return Ok(h.clone());
        }
        if !is_valid_scheme_name(name) {
            return Err(self.unknown(
                name,
                "no directory: it is not a valid scheme name (lowercase letters, digits and '-')"
                    .into(),
            ));
        }
        // The scheme's own name first, then shorter prefixes at '-' boundaries.
        let mut stems = vec![name];
        let mut rest = name;
        while let Some((head, _)) = rest.rsplit_once('-') {
            stems.push(head);
            rest = head;
        }
        for stem in stems {
            let file = library_file_name(stem);
            let found: Vec<PathBuf> = self
                .dirs
                .iter()
                .map(|d| d.join(&file))
                .filter(|p| p.exists())
                .collect();
            let Some(first) = found.first() else { continue };
            self.load(first)?;
            let registered = self.lock().schemes.get(name).cloned();
            if let Some(h) = registered {
                self.report_shadowed(name, first, &found[1..]);
                return Ok(h);
            }
        }
        let searched = if self.dirs.is_empty() {
            "no plugin directories".to_string()
        } else {
            self.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(self.unknown(name, searched))
    }

    /// An unknown-scheme error listing the registered schemes and those the plugin directories
    /// offer by file name (nothing is loaded to find them).
    fn unknown(&self, name: &str, searched: String) -> PluginError {
        let mut known: Vec<String> = self.lock().schemes.keys().cloned().collect();
        for path in self.candidates() {
            let stem = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(std::env::consts::DLL_PREFIX))
                .and_then(|n| n.strip_prefix(LIBRARY_PREFIX))
                .and_then(|n| n.strip_suffix(std::env::consts::DLL_SUFFIX))
                .map(|n| n.replace('_', "-"));
            if let Some(s) = stem.filter(|s| is_valid_scheme_name(s)) {
                known.push(s);
            }
        }
        known.sort();
        known.dedup();
        PluginError::UnknownScheme {
            name: plugin_text(name),
            searched,
            available: known.join(", "),
        }
    }

    /// Warns (once per scheme) that later directories also have a library for `name`.
    fn report_shadowed(&self, name: &str, used: &Path, others: &[PathBuf]) {
        if others.is_empty() || !self.lock().shadow_reported.insert(name.to_string()) {
            return;
        }
        let others: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
        tracing::warn!(
            "scheme '{name}' comes from {} (the first plugin directory wins); also found, \
             not used: {}",
            used.display(),
            others.join(", ")
        );
    }

    /// Loads every library in the plugin directories; returns the failures.
    pub fn load_all(&self) -> Vec<PluginError> {
        let mut errors = Vec::new();
        for path in self.candidates() {
            if let Err(e) = self.load(&path) {
                if !errors
                    .iter()
                    .any(|x: &PluginError| x.to_string() == e.to_string())
                {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Every registered scheme, sorted by name.
    pub fn schemes(&self) -> Vec<Arc<SchemeHandle>> {
        self.lock().schemes.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn candidates(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_plugin_file(p))
                .collect();
            files.sort();
            out.extend(files);
        }
        out
    }

    /// Loads one library (once) and registers its schemes.
    pub fn load(&self, path: &Path) -> Result<Vec<String>, PluginError> {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(done) = self.lock().libraries.get(&path) {
            return done.clone();
        }
        let result = self.load_uncached(&path);
        self.lock().libraries.insert(path, result.clone());
        result
    }

    fn load_uncached(&self, path: &Path) -> Result<Vec<String>, PluginError> {
        check_ownership_and_mode(path)?;
        let list = bridge::load_library(path)?;
        let handles: Vec<SchemeHandle> = list
            .into_iter()
            .map(|imp| SchemeHandle::new(imp, Origin::Library(path.to_path_buf())))
            .collect();
        // Check duplicates (within the library and against the registry) before adding any.
        let mut st = self.lock();
        let mut names = Vec::new();
        for h in &handles {
            check_registered_name(path, &h.name)?;
            if let Some(existing) = st.schemes.get(&h.name) {
                return Err(PluginError::DuplicateScheme {
                    name: plugin_text(&h.name),
                    first: existing.origin.to_string(),
                    second: path.display().to_string(),
                });
            }
            if names.contains(&h.name) {
                return Err(PluginError::DuplicateScheme {
                    name: h.name.clone(),
                    first: path.display().to_string(),
                    second: format!("{} (again)", path.display()),
                });
            }
            names.push(h.name.clone());
        }
        for h in handles {
            tracing::debug!(scheme = %h.name, library = %path.display(), "registered scheme");
            st.schemes.insert(h.name.clone(), Arc::new(h));
        }
        Ok(names)
    }
}

/// Refuses a library that another user could have written: the file or its directory owned by
/// someone other than the user or root, or writable by others (or by a group that is not the
/// user's primary group, which user-private-group systems make group-writable with umask 002).
fn check_ownership_and_mode(path: &Path) -> Result<(), PluginError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let uid = crate::store::current_uid();
        let gid = rustix::process::getegid().as_raw();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (what, p) in [("the library", path), ("its directory", dir)] {
            let refuse = |why: String| PluginError::Open {
                path: path.to_path_buf(),
                reason: format!("refused: {what} {why}; plugins run as you"),
            };
            let m = std::fs::metadata(p).map_err(|e| refuse(format!("cannot be checked: {e}")))?;
            let mode = m.mode() & 0o7777;
            if m.uid() != uid && m.uid() != 0 {
                return Err(refuse(format!(
                    "{} belongs to another user (uid {})",
                    p.display(),
                    m.uid()
                )));
            }
            if mode & 0o002 != 0 {
                return Err(refuse(format!(
                    "{} can be written by every user (mode {mode:o}); fix: chmod o-w {}",
                    p.display(),
                    p.display()
                )));
            }
            if mode & 0o020 != 0 {
                if m.gid() != gid {
                    return Err(refuse(format!(
                        "{} can be written by group {} (mode {mode:o}); fix: chmod g-w {}",
                        p.display(),
                        m.gid(),
                        p.display()
                    )));
                }
                tracing::warn!(
                    "{} can be written by your group {} (mode {mode:o}); make sure only you are \
                     in it, or chmod g-w it",
                    p.display(),
                    m.gid()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A library that registers a scheme under an invalid name (a path, capitals, spaces) is refused
/// whole: configuration could never name it, and its name would reach file names and messages.
fn check_registered_name(path: &Path, name: &str) -> Result<(), PluginError> {
    if is_valid_scheme_name(name) {
        return Ok(());
    }
    Err(PluginError::Init {
        path: path.to_path_buf(),
        reason: format!(
            "it registers the scheme name '{}', which is not a valid name (lowercase letters, \
             digits and '-'); the library is refused",
            plugin_text(name)
        ),
    })
}

/// The plugin directories: explicit ones, then the absolute entries of `FHIRCONN_PLUGIN_PATH`
/// (a relative entry is ignored with a warning: it would load whatever the working directory
/// holds), then `plugins/` next to the running executable.
pub fn default_dirs(explicit: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = explicit.to_vec();
    if let Some(p) = std::env::var_os("FHIRCONN_PLUGIN_PATH") {
        for entry in std::env::split_paths(&p).filter(|p| !p.as_os_str().is_empty()) {
            if entry.is_absolute() {
                dirs.push(entry);
            } else {
                tracing::warn!(
                    "FHIRCONN_PLUGIN_PATH: ignoring the relative entry '{}' (it would depend on \
                     the working directory); use an absolute path",
                    entry.display()
                );
            }
        }
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir.join("plugins"));
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let keep = !seen.contains(d);
        seen.push(d.clone());
        keep
    });
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_registering_invalid_names_are_refused() {
        let lib = Path::new("/p/libfhirconn_x.so");
        for bad in ["../x", "X", "a b", "-a", "", "a\u{1b}[2J", &"a".repeat(65)] {
            let e = check_registered_name(lib, bad).unwrap_err().to_string();
            assert!(
                e.contains("not a valid name") && !e.contains('\u{1b}'),
                "{e}"
            );
        }
        for good in ["basic", "oidc-client-credentials", "frozen-v1", "0x"] {
            assert!(check_registered_name(lib, good).is_ok(), "{good}");
        }
    }

    #[test]
    fn library_file_names_never_hold_a_path() {
        for name in ["x/../../evil", "..", "a\\b", "C:evil", "a.b"] {
            let f = library_file_name(name);
            let stem = f.strip_suffix(std::env::consts::DLL_SUFFIX).unwrap_or(&f);
            assert!(!stem.contains(['/', '\\', '.', ':']), "{name} -> {f}");
        }
        assert_eq!(
            library_file_name("azure-ad"),
            format!(
                "{}fhirconn_azure_ad{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            )
        );
    }
}
