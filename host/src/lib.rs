//! fhirconn's host runtime: plugin discovery and registry, the connections file and its
//! composed schema, credentials with caching, HTTP, and connection tests.
//!
//! Embed it in a Rust service to get authenticated FHIR connections without knowing their
//! schemes; the `fhirconn` CLI is a thin user of this API.
//!
//! # Contents
//! - [`Host`] / [`HostBuilder`]: load a configuration and the plugins it needs
//! - [`Connection`]: send requests with credentials applied and cached; [`Connection::test`]
//! - [`plugins::Registry`]: schemes by name; [`config`]: the file format and its schema
//! - [`Error`]: typed errors, configuration errors carry file, line, column, id and field
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), fhirconn_host::Error> {
//! let host = fhirconn_host::Host::builder()
//!     .config_file("fhirconn.yaml")
//!     .plugin_dir("target/plugins")
//!     .build()
//!     .await?;
//! let conn = host.connection("my-server")?;
//! let resp = conn.get("Patient?_count=1").await?;
//! println!("{} {}", resp.status, String::from_utf8_lossy(&resp.body));
//! # Ok(()) }
//! ```
//!
//! # Security
//! Plugin libraries are trusted code: loading runs their constructors. Only configure plugin
//! directories you control. Credentials are never logged; plugin log lines are redacted.
//! Redirects are followed by hand and drop every credential header when the origin changes.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod bridge;
mod builder;
mod builtin;
pub mod bulk;
mod caches;
pub mod config;
mod connection;
pub mod dsf;
mod error;
pub mod exec;
mod fleet;
pub mod import;
pub mod keygen;
mod loopback;
pub mod middleware;
pub mod paging;
mod person;
pub mod plugins;
pub mod process;
pub mod profile;
pub mod proxy;
mod redact;
pub mod safe_write;
pub mod services;
mod startup;
pub mod state;
mod store;
mod text;
mod token;
mod token_cache;
pub mod transport;

pub use auth::Resolved;
pub use builder::HostBuilder;
pub use config::fleet::ConnectionCache;
use config::validate;
pub use connection::{
    operation_outcome_text, parse_capability, Capability, CertificateFacts, Connection, Diagnosis,
    DiagnosisKind, ProbeReport, Request, Stage, TestReport, FHIR_JSON,
};
pub use error::{ConfigError, Error, PluginError, Result};
pub use fleet::CredentialSource;
pub use startup::StartupFailure;
pub use token_cache::{credential_state, CredentialState, TokenCacheMode};

use bridge::{CallError, CallServices, ConnectionInfo, SharedServices};
use config::schema::SchemePart;
use config::{ConnectionSettings, Document};
use plugins::{Registry, SchemeHandle};
use services::{CredentialStore, Person, Redactor};
use std::collections::BTreeMap;
use std::sync::Arc;
use transport::{ClientPool, Transport};

enum Slot {
    Ready(Arc<Connection>),
    Unavailable {
        base_url: String,
        schemes: Vec<String>,
        reason: String,
        /// Marked `test-connection-on-startup` (its startup test then fails).
        on_startup: bool,
    },
}

/// The transports of the connections that are ready.
fn slots_transports(slots: &BTreeMap<String, Slot>) -> Vec<Arc<Transport>> {
    slots
        .values()
        .filter_map(|s| match s {
            Slot::Ready(c) => Some(c.transport.clone()),
            Slot::Unavailable { .. } => None,
        })
        .collect()
}

/// How many connection tests [`Host::test`] runs at once.
pub const MAX_CONCURRENT_TESTS: usize = 64;

/// A loaded configuration with its plugins: the entry point of the library API.
pub struct Host {
    registry: Arc<Registry>,
    slots: BTreeMap<String, Slot>,
    redactor: Arc<Redactor>,
    clients: Arc<ClientPool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("connections", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// The composed JSON Schema for the given registry's schemes.
    pub fn schema_for(registry: &Registry) -> serde_json::Value {
        config::schema::compose(&scheme_parts(&registry.schemes()))
    }

    /// Loads the schemes a document uses and validates it against the composed schema.
    /// Returns the schemes whose plugins failed to load (their settings are not checked) and
    /// the composed schema (composed once: the redactor reads its setting names).
    fn load_and_validate(
        doc: &Document,
        registry: &Registry,
    ) -> Result<(BTreeMap<String, String>, serde_json::Value)> {
        let mut errors = Vec::new();
        // 1. Load the schemes the file uses.
        let mut broken: BTreeMap<String, String> = BTreeMap::new();
        for (name, pointer) in doc.schemes_used() {
            if broken.contains_key(&name) {
                continue;
            }
            match registry.get(&name) {
                Ok(_) => {}
                Err(e @ PluginError::UnknownScheme { .. }) => {
                    errors.push(doc.error_at(&pointer, false, e.to_string()));
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    broken.insert(name, e.to_string());
                }
            }
        }
        if !errors.is_empty() {
            return Err(Error::Config(errors));
        }
        // 2. Validate against the composed schema (broken schemes accept anything).
        let mut parts = scheme_parts(&registry.schemes());
        for name in broken.keys() {
            parts.push(SchemePart {
                name: name.clone(),
                summary: "unavailable".into(),
                schema: serde_json::json!({"type": "object"}),
            });
        }
        let schema = config::schema::compose(&parts);
        let errors = validate::validate(doc, &schema);
        if !errors.is_empty() {
            return Err(Error::Config(errors));
        }
        Ok((broken, schema))
    }

    /// Validates a connections document (schema, typed settings) without configuring any
    /// connection: what `fhirconn profile set` checks before it writes.
    pub fn check_document(doc: &Document, registry: &Registry) -> Result<()> {
        Self::load_and_validate(doc, registry)?;
        config::connections(doc).map_err(Error::Config)?;
        Ok(())
    }

    async fn assemble(
        doc: Document,
        registry: Arc<Registry>,
        store: Arc<dyn CredentialStore>,
        person: Arc<dyn Person>,
        only: Option<Vec<String>>,
    ) -> Result<Host> {
        let (broken, schema) = Host::load_and_validate(&doc, &registry)?;
        // 3. Typed settings, transports, then each scheme's configure.
        let mut settings = config::connections(&doc).map_err(Error::Config)?;
        if let Some(only) = &only {
            if let Some(missing) = only.iter().find(|id| !settings.contains_key(*id)) {
                return Err(Error::UnknownConnection {
                    id: missing.clone(),
                    known: settings.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
            settings.retain(|id, _| only.contains(id));
        }
        let redactor = host_redactor(&doc, &schema);
        let fleet_cache = caches::fleet_cache(&doc, &redactor)?;
        let rt = tokio::runtime::Handle::current();
        let clients = Arc::new(ClientPool::default());
        let mut slots = BTreeMap::new();
        let mut errors = Vec::new();
        for (id, s) in settings {
            let schemes: Vec<String> = if s.auth.is_empty() {
                vec!["none".to_string()]
            } else {
                s.auth.iter().map(|a| a.scheme.clone()).collect()
            };
            let base_url = s.base_url.to_string();
            if let Some(reason) = s.auth.iter().find_map(|a| broken.get(&a.scheme)) {
                slots.insert(
                    id,
                    Slot::Unavailable {
                        base_url,
                        schemes,
                        reason: reason.clone(),
                        on_startup: s.host.test_connection_on_startup,
                    },
                );
                continue;
            }
            let pointer = format!("/connections/{}", config::yaml::escape_segment(&id));
            let transport = match Transport::new(s.clone(), clients.clone()) {
                Ok(t) => Arc::new(t),
                Err(e) => {
                    let at = format!("{pointer}/{}", e.field());
                    errors.push(doc.error_at(&at, false, e.to_string()));
                    continue;
                }
            };
            let shared = SharedServices {
                rt: rt.clone(),
                transport: transport.clone(),
                base_dir: doc.base_dir(),
                connection_id: id.clone(),
                redactor: redactor.clone(),
                store: store.clone(),
                person: person.clone(),
            };
            let context = ConnectionInfo {
                id: id.clone(),
                base_url: base_url.clone(),
            };
            match configure_entries(&doc, &registry, &s, &context, &shared).await {
                Ok(entries) => {
                    let runtime = auth::AuthRuntime::new(
                        id.clone(),
                        context,
                        entries,
                        shared,
                        s.token_renewal_margin,
                    );
                    let caches = caches::Caches {
                        doc: &doc,
                        registry: &registry,
                        store: &store,
                        fleet: fleet_cache.as_ref(),
                    };
                    let runtime = caches.attach(runtime, &s).await;
                    let auth = Arc::new(runtime);
                    slots.insert(id, Slot::Ready(Arc::new(Connection { transport, auth })));
                }
                Err(Configured::Config(mut e)) => errors.append(&mut e),
                Err(Configured::Unavailable(reason)) => {
                    slots.insert(
                        id,
                        Slot::Unavailable {
                            base_url,
                            schemes,
                            reason,
                            on_startup: s.host.test_connection_on_startup,
                        },
                    );
                }
            }
        }
        if !errors.is_empty() {
            return Err(Error::Config(errors));
        }
        Ok(Host {
            registry,
            slots,
            redactor,
            clients,
        })
    }

    /// Builds each connection's default HTTP client now (reading the system roots once per
    /// distinct client), so a long-lived host's first request does not pay for it.
    pub(crate) async fn warm_up_clients(&self) {
        transport::warm_up(&slots_transports(&self.slots)).await;
    }

    /// The registry of schemes.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The HTTP clients this host's connections share (one per distinct roots, proxy,
    /// timeouts and client identity).
    pub fn clients(&self) -> &ClientPool {
        &self.clients
    }

    /// The configured connection ids, sorted.
    pub fn connection_ids(&self) -> Vec<String> {
        self.slots.keys().cloned().collect()
    }

    /// A connection by id.
    pub fn connection(&self, id: &str) -> Result<Arc<Connection>> {
        match self.slots.get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            Some(Slot::Unavailable { reason, .. }) => Err(Error::Unavailable {
                id: id.to_string(),
                reason: reason.clone(),
            }),
            None => Err(Error::UnknownConnection {
                id: id.to_string(),
                known: self.connection_ids().join(", "),
            }),
        }
    }

    /// Removes known secrets from text (for callers that print errors from elsewhere).
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// Tests connections concurrently (all when `ids` is empty), in id order.
    pub async fn test(&self, ids: &[String], probe: Option<&str>) -> Result<Vec<TestReport>> {
        let ids: Vec<String> = if ids.is_empty() {
            self.connection_ids()
        } else {
            ids.to_vec()
        };
        for id in &ids {
            if !self.slots.contains_key(id) {
                return Err(Error::UnknownConnection {
                    id: id.clone(),
                    known: self.connection_ids().join(", "),
                });
            }
        }
        // Concurrent, but bounded: a file of a thousand connections must not open a thousand
        // sockets (or hit one server a thousand times) at once.
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_TESTS));
        let mut set = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            match &self.slots[id] {
                Slot::Ready(c) => {
                    let c = c.clone();
                    let probe = probe.map(String::from);
                    let permits = permits.clone();
                    set.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        (i, c.test(probe.as_deref()).await)
                    });
                }
                Slot::Unavailable {
                    base_url,
                    schemes,
                    reason,
                    ..
                } => {
                    let r = TestReport::unavailable(id, base_url, schemes.clone(), reason);
                    set.spawn(async move { (i, r) });
                }
            }
        }
        let mut out: Vec<Option<TestReport>> = vec![None; ids.len()];
        while let Some(res) = set.join_next().await {
            match res {
                Ok((i, r)) => out[i] = Some(r),
                Err(e) => tracing::error!("a connection test task failed: {e}"),
            }
        }
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    TestReport::unavailable(&ids[i], "", vec![], "the test task failed")
                })
            })
            .collect())
    }

    /// Tests the connections marked `test-connection-on-startup` (one whose plugin failed
    /// to load is reported as failed).
    pub async fn test_on_startup(&self) -> Result<Vec<TestReport>> {
        let ids: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| match s {
                Slot::Ready(c) => c.transport.settings().host.test_connection_on_startup,
                Slot::Unavailable { on_startup, .. } => *on_startup,
            })
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.test(&ids, None).await
    }
}

enum Configured {
    Config(Vec<ConfigError>),
    Unavailable(String),
}

async fn configure_entries(
    doc: &Document,
    registry: &Registry,
    s: &ConnectionSettings,
    context: &ConnectionInfo,
    shared: &SharedServices,
) -> std::result::Result<Vec<auth::Entry>, Configured> {
    let mut entries = Vec::new();
    let default_none = [config::AuthEntry {
        scheme: "none".into(),
        settings: serde_json::Map::new(),
        pointer: format!("/connections/{}", config::yaml::escape_segment(&s.id)),
    }];
    let list: &[config::AuthEntry] = if s.auth.is_empty() {
        &default_none
    } else {
        &s.auth
    };
    let mut errors = Vec::new();
    for entry in list {
        let handle: Arc<SchemeHandle> = registry
            .get(&entry.scheme)
            .map_err(|e| Configured::Unavailable(e.to_string()))?;
        let json = serde_json::Value::Object(entry.settings.clone()).to_string();
        let call = CallServices {
            shared: shared.clone(),
            identity: None,
            interactive: false,
        };
        let result = handle
            .imp
            .configure(&handle.name, context, json, call)
            .await;
        match result {
            Ok(conn) => entries.push(auth::Entry {
                scheme: handle,
                conn,
            }),
            Err(CallError::Failed {
                kind: fhirconn_sdk::ErrorKind::Config,
                message,
                ..
            }) => errors.push(locate_scheme_error(doc, entry, &message)),
            Err(e @ CallError::NoReturn { .. }) => {
                return Err(Configured::Unavailable(e.to_string()))
            }
            Err(CallError::Failed {
                scheme, message, ..
            }) => {
                return Err(Configured::Unavailable(format!(
                    "scheme '{scheme}': {message}"
                )))
            }
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(Configured::Config(errors))
    }
}

/// Points a scheme's configuration error at the setting it names (`key: ...` or `'key'`).
fn locate_scheme_error(doc: &Document, entry: &config::AuthEntry, message: &str) -> ConfigError {
    let mut keys: Vec<&String> = entry.settings.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for k in keys {
        let ptr = format!("{}/{}", entry.pointer, config::yaml::escape_segment(k));
        if let Some(rest) = message.strip_prefix(&format!("{k}: ")) {
            return doc.error_at(&ptr, false, rest);
        }
        if message.contains(&format!("'{k}'")) {
            return doc.error_at(&ptr, message.contains("unknown"), message);
        }
    }
    doc.error_at(&entry.pointer, false, message)
}

/// A host's redactor: the file's inline secrets registered, and the setting names of the
/// composed schema, which are never redacted inside (see [`Redactor`]).
fn host_redactor(doc: &Document, schema: &serde_json::Value) -> Arc<Redactor> {
    let redactor = Arc::new(Redactor::default());
    redactor.add_schema_names(schema);
    register_inline_secrets(&doc.value, &redactor);
    redactor
}

/// Inline secrets in the file (keys that look like secrets) are redacted from logs too.
fn register_inline_secrets(v: &serde_json::Value, redactor: &Redactor) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, val) in o {
                // The last word names what the value is: `client-secret`, `private-key`,
                // `p12-password` are secrets; `token-url`, `private-key-file` are not.
                let k = k.to_ascii_lowercase();
                let last = k.rsplit(['-', '_']).next().unwrap_or_default();
                let secretish = matches!(
                    last,
                    "password" | "passphrase" | "secret" | "token" | "key" | "assertion"
                );
                match val {
                    serde_json::Value::String(s) if secretish => redactor.add(s),
                    other => register_inline_secrets(other, redactor),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| register_inline_secrets(x, redactor)),
        _ => {}
    }
}

/// Turns a [`SchemeHandle`] list into schema parts (for tools that compose the schema).
pub fn scheme_parts(handles: &[Arc<SchemeHandle>]) -> Vec<SchemePart> {
    handles
        .iter()
        .map(|h| SchemePart {
            name: h.name.clone(),
            summary: h.summary.clone(),
            schema: h.schema.clone(),
        })
        .collect()
}
