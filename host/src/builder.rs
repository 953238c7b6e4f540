//! [`HostBuilder`]: where the configuration comes from, which plugin directories are searched,
//! the credential store and the person schemes talk to; `build` assembles the [`Host`].

use crate::config::Document;
use crate::plugins::{self, Registry};
use crate::services::{CredentialStore, MemoryStore, Person, StderrPerson};
use crate::{config, Error, Host, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

enum Source {
    File(PathBuf),
    Yaml(PathBuf, Vec<u8>),
    Value(PathBuf, serde_json::Value),
}

/// Builds a [`Host`].
pub struct HostBuilder {
    source: Option<Source>,
    plugin_dirs: Vec<PathBuf>,
    default_dirs: bool,
    store: Option<Arc<dyn CredentialStore>>,
    person: Option<Arc<dyn Person>>,
    only: Option<Vec<String>>,
    no_warm_up: bool,
}

impl std::fmt::Debug for HostBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuilder")
            .field("plugin_dirs", &self.plugin_dirs)
            .finish_non_exhaustive()
    }
}

impl HostBuilder {
    /// Reads connections from a YAML file.
    #[must_use]
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(Source::File(path.into()));
        self
    }
    /// Reads connections from YAML text; `path` names it in errors and anchors relative paths.
    #[must_use]
    pub fn config_yaml(mut self, path: impl Into<PathBuf>, yaml: impl Into<Vec<u8>>) -> Self {
        self.source = Some(Source::Yaml(path.into(), yaml.into()));
        self
    }
    /// Takes connections as a JSON value shaped like the YAML file.
    #[must_use]
    pub fn config_value(mut self, base_dir: impl Into<PathBuf>, value: serde_json::Value) -> Self {
        self.source = Some(Source::Value(base_dir.into().join("<config>"), value));
        self
    }
    /// Adds a plugin directory (searched before `FHIRCONN_PLUGIN_PATH` and the default).
    #[must_use]
    pub fn plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugin_dirs.push(dir.into());
        self
    }
    /// Searches only the directories given with [`HostBuilder::plugin_dir`].
    #[must_use]
    pub fn only_explicit_plugin_dirs(mut self) -> Self {
        self.default_dirs = false;
        self
    }
    /// Where schemes keep refresh tokens (default: in memory).
    #[must_use]
    pub fn credential_store(mut self, store: Arc<dyn CredentialStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// How schemes talk to a person (default: standard error).
    #[must_use]
    pub fn person(mut self, person: Arc<dyn Person>) -> Self {
        self.person = Some(person);
        self
    }

    /// The plugin directories this builder will search.
    pub fn resolved_plugin_dirs(&self) -> Vec<PathBuf> {
        if self.default_dirs {
            plugins::default_dirs(&self.plugin_dirs)
        } else {
            self.plugin_dirs.clone()
        }
    }

    /// Configures only these connections (the whole file is still validated). Asking for an
    /// id the file lacks is an [`Error::UnknownConnection`] at build time. Without this, every
    /// connection is configured.
    pub fn only_connections<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ids: Vec<String> = ids.into_iter().map(Into::into).collect();
        self.only = (!ids.is_empty()).then_some(ids);
        self
    }

    /// Loads the configuration and the plugins it needs, validates it against the composed
    /// schema and configures every connection. Must be called inside a tokio runtime.
    ///
    /// Configuration errors (of the file or reported by a scheme as such) fail the build,
    /// all of them at once. A plugin that cannot be loaded or fails otherwise only makes its
    /// connections unavailable.
    pub async fn build(self) -> Result<Host> {
        let dirs = self.resolved_plugin_dirs();
        let doc = match self.source {
            None => {
                return Err(Error::ConfigRead {
                    path: PathBuf::from("fhirconn.yaml"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no configuration given",
                    ),
                })
            }
            Some(Source::File(path)) => {
                let bytes = read_config(&path)?;
                Document::parse(&path, &bytes).map_err(Error::Config)?
            }
            Some(Source::Yaml(path, bytes)) => {
                Document::parse(&path, &bytes).map_err(Error::Config)?
            }
            Some(Source::Value(path, value)) => Document::from_value(&path, value),
        };
        let registry = Arc::new(Registry::new(dirs));
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::default()));
        let person = self.person.unwrap_or_else(|| Arc::new(StderrPerson));
        let host = Host::assemble(doc, registry, store, person, self.only).await?;
        if !self.no_warm_up {
            host.warm_up_clients().await;
        }
        Ok(host)
    }

    /// Whether [`HostBuilder::build`] builds each connection's default HTTP client up front
    /// (the default: a service's first request then does not pay for reading the system
    /// roots). A one-shot command turns it off: its first request builds exactly the client it
    /// needs (with a client certificate, the default one would be built for nothing).
    #[must_use]
    pub fn warm_up_clients(mut self, warm: bool) -> Self {
        self.no_warm_up = !warm;
        self
    }
}

fn read_config(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|source| Error::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    let mut buf = Vec::new();
    f.take(config::yaml::MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(buf)
}

impl Host {
    /// Starts building a host.
    pub fn builder() -> HostBuilder {
        HostBuilder {
            source: None,
            plugin_dirs: Vec::new(),
            default_dirs: true,
            store: None,
            person: None,
            only: None,
            no_warm_up: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A built host has its connections' default clients ready: the first request does not
    /// build one (it reads the system roots, milliseconds); equal settings share it.
    #[tokio::test]
    async fn a_built_host_has_its_default_clients() {
        let conns: serde_json::Map<String, serde_json::Value> = (0..3)
            .map(|i| {
                let c =
                    serde_json::json!({"base-url": format!("http://127.0.0.1:{}/fhir", 9000 + i)});
                (format!("c{i}"), c)
            })
            .chain([(
                "slow".to_string(),
                serde_json::json!({"base-url": "http://127.0.0.1:9/fhir", "read-timeout": "PT7S"}),
            )])
            .collect();
        let host = Host::builder()
            .config_value(".", serde_json::json!({ "connections": conns }))
            .only_explicit_plugin_dirs()
            .build()
            .await
            .unwrap();
        assert_eq!(host.clients().len(), 2, "one client per distinct settings");
    }
}
