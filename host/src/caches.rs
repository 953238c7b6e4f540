//! Wiring a connection's credential cache levels at host build: the file's shared fleet cache
//! (`credential-cache`) and each connection's persistent and fleet levels.

use crate::config::{self, Document};
use crate::fleet;
use crate::plugins::Registry;
use crate::redact::Redactor;
use crate::store::CredentialStore;
use crate::{auth, token_cache, ConnectionCache, Error, Result, TokenCacheMode};
use std::sync::Arc;

/// What a connection's credentials may be cached in besides memory.
pub(crate) struct Caches<'a> {
    pub(crate) doc: &'a Document,
    pub(crate) registry: &'a Registry,
    pub(crate) store: &'a Arc<dyn CredentialStore>,
    pub(crate) fleet: Option<&'a Arc<fleet::FleetCache>>,
}

impl Caches<'_> {
    /// Adds the persistent and fleet levels the connection's settings ask for. A signing
    /// scheme's keys live in the plugin, set by `authorize`: its credentials are never read
    /// from a cache instead. The fleet gets only tokens every scheme declares shareable.
    pub(crate) async fn attach(
        &self,
        mut runtime: auth::AuthRuntime,
        s: &config::ConnectionSettings,
    ) -> auth::AuthRuntime {
        if runtime.signs_requests() {
            return runtime;
        }
        let fleet_cache = self
            .fleet
            .filter(|_| s.host.credential_cache == ConnectionCache::Shared);
        let persistent = s.host.token_cache == TokenCacheMode::Persistent;
        if fleet_cache.is_none() && !persistent {
            return runtime;
        }
        // The identity the schemes name: the fleet shares only such tokens; the persistent
        // cache binds its tokens to it (another client id from the environment, another
        // service account in the same key file: another token).
        let share_key = runtime.share_key().await;
        if let (Some(cache), Some(share_key)) = (fleet_cache, &share_key) {
            let fp = token_cache::settings_fingerprint(self.doc, self.registry, &s.id);
            runtime =
                runtime.with_fleet(fleet::FleetTokens::new(cache.clone(), &s.id, fp, share_key));
        }
        if persistent {
            let mut tokens =
                token_cache::for_connection(self.doc, self.registry, &s.id, self.store.clone());
            if let Some(share_key) = &share_key {
                tokens = tokens.with_identity(share_key);
            }
            runtime = runtime.with_persistent(tokens);
        }
        runtime
    }
}

/// The file's shared credential cache (`credential-cache: {backend: redis}`; it connects at
/// its first use); its URL's password is redacted like any secret.
pub(crate) fn fleet_cache(
    doc: &Document,
    redactor: &Redactor,
) -> Result<Option<Arc<fleet::FleetCache>>> {
    let Some(redis) = config::fleet::read(doc).map_err(Error::Config)? else {
        return Ok(None);
    };
    if let Some(p) = url::Url::parse(&redis.url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        redactor.add(&p);
    }
    let cache =
        fleet::FleetCache::new(&redis.url, &redis.prefix, &redis.key_base64).map_err(|m| {
            Error::Config(vec![doc.error_at(
                &format!("/{}/url", config::fleet::CREDENTIAL_CACHE),
                false,
                m,
            )])
        })?;
    Ok(Some(cache))
}
