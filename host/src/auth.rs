//! Credentials for one connection: calls its scheme(s) on blocking threads, combines stacked
//! schemes, and caches the result until shortly before it expires (single flight).

use crate::bridge::{
    CallError, CallServices, ConnectionInfo, InlineServices, PluginConnection, SharedServices,
};
use crate::error::Error;
use crate::plugins::SchemeHandle;
use crate::token_cache::PersistentTokens;
use crate::transport::{Signer, Signing};
use fhirconn_sdk::wire::ConnectionOperation;
use fhirconn_sdk::{ClientIdentity, ErrorKind, ExposeSecret as _};
use reqwest::header::{HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Renew this long before expiry at most...
pub const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(30);
/// ...and at most this fraction of the lifetime.
pub const RENEWAL_FRACTION: f64 = 0.1;

/// Resolved credentials, ready to apply to requests. `Debug` shows no secret.
#[derive(Clone)]
pub struct Resolved {
    /// Credential headers (all treated as sensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The client identity, if any scheme supplied one.
    pub identity: Option<ClientIdentity>,
    /// When the credentials expire.
    pub expires_at: Option<SystemTime>,
    /// When the host renews them.
    pub renew_at: Option<SystemTime>,
    /// Warnings the schemes reported (shown by `fhirconn test`).
    pub warnings: Vec<String>,
    /// The SMART launch context a scheme reported (the first one), sanitised.
    pub launch_context: Option<fhirconn_sdk::wire::LaunchContext>,
    /// Where these credentials came from (fetched, persistent cache, fleet cache...).
    pub source: crate::fleet::CredentialSource,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("identity", &self.identity.is_some())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// When to renew credentials that expire at `expires_at`, fetched at `now`: `margin` before
/// expiry when configured, else 30 s or a tenth of the lifetime, whichever is smaller; never
/// before `now`.
pub fn renew_at(now: SystemTime, expires_at: SystemTime, margin: Option<Duration>) -> SystemTime {
    let lifetime = expires_at.duration_since(now).unwrap_or_default();
    let margin = margin
        .unwrap_or_else(|| MAX_RENEWAL_MARGIN.min(lifetime.mul_f64(RENEWAL_FRACTION)))
        .min(lifetime);
    expires_at - margin
}

/// One configured scheme of a connection.
pub(crate) struct Entry {
    pub scheme: Arc<SchemeHandle>,
    pub conn: PluginConnection,
}

/// The credential runtime of one connection.
pub(crate) struct AuthRuntime {
    pub id: String,
    pub context: ConnectionInfo,
    pub entries: Vec<Entry>,
    pub services: SharedServices,
    pub renewal_margin: Option<Duration>,
    cache: RwLock<Option<Arc<Resolved>>>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    /// `token-cache: persistent`: the second level below `cache`.
    persistent: Option<Arc<PersistentTokens>>,
    /// `credential-cache` (Redis): the third level, shared by a fleet.
    fleet: Option<Arc<crate::fleet::FleetTokens>>,
    /// The entries whose scheme signs every request, with their inline services.
    signing: Option<Arc<Signing>>,
    /// The counter of hits in `cache`, taken at the first hit (looking a labelled counter up
    /// in the recorder costs more than the hit itself).
    memory_hits: std::sync::OnceLock<metrics::Counter>,
}

impl AuthRuntime {
    pub fn new(
        id: String,
        context: ConnectionInfo,
        entries: Vec<Entry>,
        services: SharedServices,
        renewal_margin: Option<Duration>,
    ) -> Self {
        let signers = entries
            .iter()
            .filter(|e| e.scheme.signs_requests)
            .map(|e| e.conn.clone())
            .collect();
        let inline = InlineServices(CallServices {
            shared: services.clone(),
            identity: None,
            interactive: false,
        });
        Self {
            signing: Signing::new(signers, inline).map(Arc::new),
            id,
            context,
            entries,
            services,
            renewal_margin,
            cache: RwLock::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            persistent: None,
            fleet: None,
            memory_hits: std::sync::OnceLock::new(),
        }
    }

    /// Shares credentials through the fleet cache too (`credential-cache`).
    pub fn with_fleet(mut self, tokens: crate::fleet::FleetTokens) -> Self {
        self.fleet = Some(Arc::new(tokens));
        self
    }

    /// Keeps credentials in `tokens` too (`token-cache: persistent`).
    pub fn with_persistent(mut self, tokens: PersistentTokens) -> Self {
        self.persistent = Some(Arc::new(tokens));
        self
    }

    /// Runs `f` on the persistent cache on a blocking thread (the store is a locked file);
    /// a store that cannot be used is a warning, never a failed request.
    async fn on_persistent<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&PersistentTokens) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let tokens = self.persistent.clone()?;
        let id = self.id.clone();
        match tokio::task::spawn_blocking(move || f(&tokens)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(connection = %id, "token cache: cannot {what}: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Fresh credentials from the persistent cache, else from the schemes (then kept there).
    async fn load_or_fetch(&self, interactive: bool) -> Result<Resolved, Error> {
        let margin = self.renewal_margin;
        if let Some(Some(mut hit)) = self.on_persistent("read", move |t| t.load(margin)).await {
            hit.source = crate::fleet::CredentialSource::PersistentCache;
            return Ok(hit);
        }
        let fresh = match &self.fleet {
            Some(fleet) => {
                let (mut r, source) = fleet
                    .obtain(margin, || self.fetch(interactive, false))
                    .await?;
                r.source = source;
                r
            }
            None => self.fetch(interactive, false).await?,
        };
        self.persist(&fresh).await;
        Ok(fresh)
    }

    async fn persist(&self, fresh: &Resolved) {
        if self.persistent.is_some() {
            let copy = fresh.clone();
            self.on_persistent("write", move |t| t.save(&copy)).await;
        }
    }

    /// Whether a scheme of the connection signs every request.
    pub fn signs_requests(&self) -> bool {
        self.signing.is_some()
    }

    /// The signer of one request with body `body` (its hash computed here, once), when a
    /// scheme of the connection signs requests.
    pub fn signer(&self, body: Option<&[u8]>) -> Option<Signer> {
        self.signing.as_ref().map(|s| Signer::for_body(s, body))
    }

    /// How many times the schemes were asked for credentials.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn cached(&self) -> Option<Arc<Resolved>> {
        let guard = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = guard.as_ref()?;
        match c.renew_at {
            Some(at) if SystemTime::now() >= at => None,
            _ => Some(c.clone()),
        }
    }

    /// Current credentials: cached, or fetched by exactly one caller while the others wait.
    pub async fn credentials(&self, interactive: bool) -> Result<Arc<Resolved>, Error> {
        if let Some(c) = self.cached() {
            self.memory_hits
                .get_or_init(|| {
                    metrics::counter!("fhirconn_token_cache_hits_total",
                        "connection" => self.id.clone(), "cache" => "memory")
                })
                .increment(1);
            return Ok(c);
        }
        let _flight = self.fetch_lock.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let fresh = Arc::new(self.load_or_fetch(interactive).await?);
        if !matches!(
            fresh.source,
            crate::fleet::CredentialSource::Fetched | crate::fleet::CredentialSource::LocalFallback
        ) {
            // Read from a cache, not from a plugin (which registers what it returns): masked
            // like every credential from here on.
            for (_, v) in &fresh.headers {
                if let Ok(v) = v.to_str() {
                    self.services.redactor.add_header_value(v);
                }
            }
        }
        let (counter, source) = match fresh.source {
            crate::fleet::CredentialSource::Fetched => ("fhirconn_token_fetches_total", "scheme"),
            crate::fleet::CredentialSource::LocalFallback => {
                ("fhirconn_token_fetches_total", "local-fallback")
            }
            crate::fleet::CredentialSource::PersistentCache => {
                ("fhirconn_token_cache_hits_total", "persistent")
            }
            crate::fleet::CredentialSource::FleetCache => {
                ("fhirconn_token_cache_hits_total", "fleet")
            }
        };
        let label = if counter == "fhirconn_token_fetches_total" {
            "source"
        } else {
            "cache"
        };
        metrics::counter!(counter, "connection" => self.id.clone(), label => source).increment(1);
        *self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }

    /// What every scheme of the connection says about sharing its tokens
    /// ([`fhirconn_sdk::wire::SHARE_KEY`]): the keys joined, or `None` when any scheme keeps
    /// them to this process (or does not know the operation).
    pub async fn share_key(&self) -> Option<String> {
        let mut keys = Vec::new();
        for entry in &self.entries {
            let answer = entry
                .conn
                .invoke(
                    &ConnectionOperation::ShareKey,
                    self.call_services(None, false),
                )
                .await
                .ok()??;
            let answer: fhirconn_sdk::wire::ShareKeyAnswer = serde_json::from_str(&answer).ok()?;
            keys.push(format!("{}={}", entry.scheme.name, answer.share_key?));
        }
        Some(keys.join("\n"))
    }

    /// Drops the in-memory credentials only (the shared levels keep theirs).
    pub async fn drop_memory(&self) {
        let _flight = self.fetch_lock.lock().await;
        *self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Signs in afresh (interactive, ignoring stored refresh state) and caches the result.
    pub async fn login(&self) -> Result<Arc<Resolved>, Error> {
        let _flight = self.fetch_lock.lock().await;
        let fresh = Arc::new(self.fetch(true, true).await?);
        self.persist(&fresh).await;
        *self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Runs a connection-level operation (e.g. `logout`) on every scheme; returns whether any
    /// scheme knew it. Drops the cached credentials.
    pub async fn invoke_all(&self, op: &str) -> Result<bool, Error> {
        let op = ConnectionOperation::parse(op, "")
            .unwrap_or_else(|_| ConnectionOperation::Unknown(op.to_string()));
        let _flight = self.fetch_lock.lock().await;
        *self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let mut handled = false;
        if matches!(op, ConnectionOperation::Logout) {
            handled |= self
                .on_persistent("remove", |t| t.forget(None))
                .await
                .unwrap_or(false);
        }
        for entry in &self.entries {
            let answer = entry
                .conn
                .invoke(&op, self.call_services(None, false))
                .await
                .map_err(|e| self.call_error(e))?;
            handled |= answer.is_some();
        }
        Ok(handled)
    }

    fn call_services(&self, identity: Option<ClientIdentity>, interactive: bool) -> CallServices {
        CallServices {
            shared: self.services.clone(),
            identity,
            interactive,
        }
    }

    fn call_error(&self, e: CallError) -> Error {
        Error::Credentials {
            id: self.id.clone(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// Drops `stale` from the cache (after a 401), unless a newer value replaced it already;
    /// then from the persistent and the fleet cache (compare-and-delete: a newer token another
    /// process stored stays).
    pub async fn invalidate(&self, stale: &Arc<Resolved>) {
        // Under the fetch lock: a concurrent fetch must not read the stale value back from a
        // shared cache before it is deleted there.
        let _flight = self.fetch_lock.lock().await;
        let was_current = {
            let mut guard = self
                .cache
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let current = guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, stale));
            if current {
                *guard = None;
            }
            current
        };
        if !was_current {
            return;
        }
        if let Some(fleet) = &self.fleet {
            fleet.invalidate(stale).await;
        }
        if self.persistent.is_some() {
            let stale = (**stale).clone();
            self.on_persistent("remove", move |t| t.forget(Some(&stale)))
                .await;
        }
    }

    /// Asks every scheme in order; identities of earlier entries are presented by later ones'
    /// token requests.
    pub async fn fetch(&self, interactive: bool, force_login: bool) -> Result<Resolved, Error> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let mut identity: Option<ClientIdentity> = None;
        let mut expires_at: Option<SystemTime> = None;
        let mut warnings: Vec<String> = Vec::new();
        let mut launch_context = None;
        for entry in &self.entries {
            let scheme = &entry.scheme.name;
            let creds = entry
                .conn
                .authorize(
                    &self.context,
                    interactive,
                    force_login,
                    self.call_services(identity.clone(), interactive),
                )
                .await
                .map_err(|e| self.call_error(e))?;
            for h in &creds.headers {
                let name =
                    HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Credentials {
                        id: self.id.clone(),
                        kind: ErrorKind::Protocol,
                        message: format!("{scheme}: invalid header name '{}'", h.name),
                    })?;
                let mut value = HeaderValue::from_str(h.value.expose_secret()).map_err(|_| {
                    Error::Credentials {
                        id: self.id.clone(),
                        kind: ErrorKind::Protocol,
                        message: format!("{scheme}: invalid value for header '{name}'"),
                    }
                })?;
                value.set_sensitive(true);
                if headers.iter().any(|(n, _)| *n == name) {
                    return Err(Error::Credentials {
                        id: self.id.clone(),
                        kind: ErrorKind::Config,
                        message: format!(
                            "two stacked schemes both set the '{name}' header; keep one"
                        ),
                    });
                }
                headers.push((name, value));
            }
            if let Some(id) = creds.identity {
                if identity.is_some() {
                    return Err(Error::Credentials {
                        id: self.id.clone(),
                        kind: ErrorKind::Config,
                        message: "two stacked schemes both supply a client certificate; keep one"
                            .into(),
                    });
                }
                identity = Some(id);
            }
            warnings.extend(creds.warnings);
            launch_context = launch_context.or(creds.context);
            if let Some(at) = creds.expires_at {
                expires_at = Some(expires_at.map_or(at, |e: SystemTime| e.min(at)));
            }
        }
        let now = SystemTime::now();
        Ok(Resolved {
            headers,
            identity,
            expires_at,
            renew_at: expires_at.map(|e| renew_at(now, e, self.renewal_margin)),
            warnings,
            launch_context,
            source: crate::fleet::CredentialSource::Fetched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn renewal_margin_is_30s_or_a_tenth_of_the_lifetime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: u64, margin: Option<u64>| {
            renew_at(
                now,
                now + Duration::from_secs(secs),
                margin.map(Duration::from_secs),
            )
        };
        assert_eq!(at(3600, None), now + Duration::from_secs(3570));
        assert_eq!(at(20, None), now + Duration::from_secs(18));
        // a configured margin wins, but never reaches before now
        assert_eq!(at(3600, Some(300)), now + Duration::from_secs(3300));
        assert_eq!(at(60, Some(300)), now);
        // already expired: renew now
        assert_eq!(
            renew_at(now, now - Duration::from_secs(5), None),
            now - Duration::from_secs(5)
        );
    }
}
