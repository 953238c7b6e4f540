//! Plugin discovery, loading and the registry of schemes by name (built-in and loaded alike).
//!
//! A scheme `NAME` is looked for first in its conventional file,
//! `<dir>/libfhirconn_<NAME with - as _>.so` (`.dylib` on macOS, `fhirconn_….dll` on Windows),
//! in every plugin directory in order; when no such file provides it, every other
//! `fhirconn_*` library in those directories is loaded (a library may export several schemes).
//! Libraries are loaded at most once and never unloaded.

use crate::error::PluginError;
use fhirconn_abi::{
    loading::{load_library, LoadFailure},
    AuthSchemeBox, SchemeDescription,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A scheme compiled into the host binary, registered with `inventory`.
#[derive(Debug)]
pub struct BuiltinScheme {
    /// Builds the scheme object.
    pub build: fn() -> AuthSchemeBox,
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
    /// Where it came from.
    pub origin: Origin,
    /// The ABI object.
    pub(crate) imp: AuthSchemeBox,
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
    fn new(imp: AuthSchemeBox, origin: Origin) -> Self {
        let name = imp.name().into_string();
        let SchemeDescription {
            version,
            summary,
            config_schema_json,
            sdk_version,
            ..
        } = imp.describe();
        let schema = serde_json::from_str(config_schema_json.as_str())
            .unwrap_or_else(|_| serde_json::json!({"type": "object"}));
        Self {
            name,
            version: crate::services::plugin_text(&version),
            summary: crate::services::plugin_text(&summary),
            schema,
            sdk_version: crate::services::plugin_text(&sdk_version),
            origin,
            imp,
        }
    }
}

/// The platform's file name for a scheme's library.
pub fn library_file_name(scheme: &str) -> String {
    let stem = format!(
        "{}{}",
        fhirconn_abi::LIBRARY_PREFIX,
        scheme.replace('-', "_")
    );
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
    let prefix = format!(
        "{}{}",
        std::env::consts::DLL_PREFIX,
        fhirconn_abi::LIBRARY_PREFIX
    );
    name.starts_with(&prefix) && name.ends_with(std::env::consts::DLL_SUFFIX)
}

#[derive(Default)]
struct RegistryState {
    schemes: BTreeMap<String, Arc<SchemeHandle>>,
    /// Every library tried, with its outcome (so each is loaded once).
    libraries: BTreeMap<PathBuf, Result<Vec<String>, PluginError>>,
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
            let h = SchemeHandle::new((b.build)(), Origin::Builtin);
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

    /// Looks a scheme up, loading the library that provides it if needed.
    pub fn get(&self, name: &str) -> Result<Arc<SchemeHandle>, PluginError> {
        if let Some(h) = self.lock().schemes.get(name) {
            return Ok(h.clone());
        }
        // 1. The conventional file name, in each directory.
        let file = library_file_name(name);
        for dir in &self.dirs {
            let path = dir.join(&file);
            if path.exists() {
                self.load(&path)?;
                if let Some(h) = self.lock().schemes.get(name) {
                    return Ok(h.clone());
                }
            }
        }
        // 2. Any other fhirconn library (one may export several schemes). Failures of
        //    unrelated libraries do not matter here.
        for path in self.candidates() {
            let _ = self.load(&path);
            if let Some(h) = self.lock().schemes.get(name) {
                return Ok(h.clone());
            }
        }
        let available = {
            let st = self.lock();
            st.schemes.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        Err(PluginError::UnknownScheme {
            name: name.to_string(),
            searched: if self.dirs.is_empty() {
                "no plugin directories".to_string()
            } else {
                self.dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            available,
        })
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
        let sdk = fhirconn_sdk::SDK_VERSION.to_string();
        let expected = fhirconn_abi::ABI_VERSION.to_string();
        let module = load_library(path).map_err(|f| match f {
            LoadFailure::Open(reason) => PluginError::Open {
                path: path.to_path_buf(),
                reason: first_line(&reason),
            },
            LoadFailure::NotAPlugin => PluginError::NotAPlugin {
                path: path.to_path_buf(),
            },
            LoadFailure::Version { expected, found } => PluginError::Version {
                path: path.to_path_buf(),
                expected,
                found,
                sdk: sdk.clone(),
            },
            LoadFailure::Layout { report } => {
                tracing::debug!(library = %path.display(), "abi_stable layout report:\n{report}");
                PluginError::Layout {
                    path: path.to_path_buf(),
                    expected: expected.clone(),
                    sdk: sdk.clone(),
                }
            }
            LoadFailure::AbiStable(reason) | LoadFailure::Init(reason) => PluginError::Init {
                path: path.to_path_buf(),
                reason: first_line(&reason),
            },
        })?;
        let list = (module.schemes())()
            .into_result()
            .map_err(|e| PluginError::Init {
                path: path.to_path_buf(),
                reason: crate::services::plugin_text(&e.message),
            })?;
        let handles: Vec<SchemeHandle> = list
            .into_iter()
            .map(|imp| SchemeHandle::new(imp, Origin::Library(path.to_path_buf())))
            .collect();
        // Check duplicates (within the library and against the registry) before adding any.
        let mut st = self.lock();
        let mut names = Vec::new();
        for h in &handles {
            if let Some(existing) = st.schemes.get(&h.name) {
                return Err(PluginError::DuplicateScheme {
                    name: h.name.clone(),
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

fn first_line(s: &str) -> String {
    s.trim()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The plugin directories: explicit ones, then `FHIRCONN_PLUGIN_PATH`, then `plugins/` next
/// to the running executable.
pub fn default_dirs(explicit: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = explicit.to_vec();
    if let Some(p) = std::env::var_os("FHIRCONN_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&p).filter(|p| !p.as_os_str().is_empty()));
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

/// Configures a scheme directly against any host-services implementation: the raw ABI path
/// for benchmarks and the fuzz harness (the host itself goes through `Host::builder`).
pub fn configure_raw(
    scheme: &SchemeHandle,
    context: &fhirconn_abi::ConnectionContext,
    settings_json: &str,
    services: &impl fhirconn_abi::HostServices,
) -> Result<fhirconn_abi::ConnectionAuthBox, fhirconn_abi::AbiError> {
    scheme
        .imp
        .configure(
            context,
            settings_json.into(),
            fhirconn_abi::host_ref(services),
        )
        .into_result()
}
