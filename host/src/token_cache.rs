//! Tokens that outlive one process: the second-level cache below a connection's in-memory
//! credentials (`token-cache: persistent` keeps them in the credential store until they
//! expire, so scripts calling `fhirconn get` repeatedly do not fetch a token every time).
//!
//! What is kept: the credential headers, their expiry, warnings and launch context — never a
//! client identity (a connection whose credentials include a client certificate is not
//! persisted) and never credentials without an expiry. The key is
//! `@host/token-cache/<connection id>`; the value records a fingerprint of the connection's
//! settings with every secret value removed (as the schemes' schemas mark them), so editing
//! the connection (another client, scope, token URL, key file) makes a cached token unusable
//! while the key itself names nothing secret.

use crate::auth::{renew_at, Resolved};
use crate::store::{CredentialStore, StoreError};
use fhirconn_sdk::schemars::JsonSchema;
use fhirconn_sdk::wire::LaunchContext;
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a connection's credentials are cached besides memory (`token-cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub enum TokenCacheMode {
    /// In this process only (the default).
    #[default]
    Memory,
    /// Also in the credential store (0600), until the token expires.
    Persistent,
}

/// Credentials that expire within this margin are not worth storing or reusing.
const MIN_REMAINING: Duration = Duration::from_secs(5);

/// The stored form of [`Resolved`] (headers as text; the expiry in Unix seconds).
#[derive(Serialize, Deserialize)]
struct Stored {
    fingerprint: String,
    headers: Vec<(String, String)>,
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    launch_context: Option<LaunchContext>,
}

/// A connection's persistent token cache in the credential store.
pub(crate) struct PersistentTokens {
    store: Arc<dyn CredentialStore>,
    key: String,
    fingerprint: String,
}

impl std::fmt::Debug for PersistentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentTokens")
            .field("key", &self.key)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// What the credential store holds for a connection (`fhirconn profile describe`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialState {
    /// A scheme keeps sign-in state (a refresh token) for the connection.
    pub signed_in: bool,
    /// A token for the connection's current settings is cached until then.
    pub token_cached_until: Option<SystemTime>,
}

impl std::fmt::Display for CredentialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.token_cached_until.map(|t| {
            let secs = unix(t);
            format!(
                "token cached until {} (unix {secs})",
                httpdate::fmt_http_date(t)
            )
        });
        match (self.signed_in, cached) {
            (true, Some(c)) => write!(f, "signed in; {c}"),
            (true, None) => f.write_str("signed in"),
            (false, Some(c)) => f.write_str(&c),
            (false, None) => f.write_str("none"),
        }
    }
}

/// What `store` holds for connection `id` of `doc`.
pub fn credential_state(
    doc: &crate::config::Document,
    registry: &crate::plugins::Registry,
    store: Arc<dyn CredentialStore>,
    id: &str,
) -> Result<CredentialState, StoreError> {
    let signed_in = store.has_prefix(&format!("{id}/"))?;
    let tokens = for_connection(doc, registry, id, store);
    Ok(CredentialState {
        signed_in,
        token_cached_until: tokens.cached_until(),
    })
}

/// The persistent token cache of connection `id` of `doc`: bound to a fingerprint of its
/// entry in the file without the values its schemes' schemas mark secret.
pub(crate) fn for_connection(
    doc: &crate::config::Document,
    registry: &crate::plugins::Registry,
    id: &str,
    store: Arc<dyn CredentialStore>,
) -> PersistentTokens {
    let entry = doc
        .value
        .get("connections")
        .and_then(|c| c.get(id))
        .cloned()
        .unwrap_or_default();
    let schemes: Vec<&str> = match entry.get("auth") {
        Some(Value::Array(a)) => a.iter().filter_map(|e| e.get("scheme")?.as_str()).collect(),
        Some(e) => e
            .get("scheme")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
        None => Vec::new(),
    };
    let marks = crate::profile::SecretMarks::from_registry(registry, schemes);
    let fingerprint = fingerprint(&entry, &marks.secrets_in_connection(&entry));
    PersistentTokens::new(store, id, fingerprint)
}

/// The store key of a connection's cached token.
pub(crate) fn store_key(connection_id: &str) -> String {
    format!("@host/token-cache/{connection_id}")
}

/// A fingerprint of a connection entry (its JSON in the connections file) with the values at
/// `secret_pointers` removed: SHA-256 of the canonical JSON, first 16 bytes in hex.
pub(crate) fn fingerprint(connection: &Value, secret_pointers: &[String]) -> String {
    let mut v = connection.clone();
    for p in secret_pointers {
        if let Some(slot) = v.pointer_mut(p) {
            *slot = Value::Null;
        }
    }
    // serde_json's map is ordered by key: the text is canonical.
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The stored text of `fresh` for settings `fingerprint`; `None` when it must not be kept
/// (no expiry, a client identity, nearly expired, a header that is not text).
pub(crate) fn encode(fresh: &Resolved, fingerprint: &str) -> Option<String> {
    let expires_at = fresh.expires_at?;
    // Nothing to keep without headers (a signing scheme keeps its keys itself: a process that
    // skipped its `authorize` could not sign).
    if fresh.headers.is_empty()
        || fresh.identity.is_some()
        || expires_at <= SystemTime::now() + MIN_REMAINING
    {
        return None;
    }
    let mut headers = Vec::with_capacity(fresh.headers.len());
    for (name, value) in &fresh.headers {
        headers.push((name.as_str().to_string(), value.to_str().ok()?.to_string()));
    }
    let stored = Stored {
        fingerprint: fingerprint.to_string(),
        headers,
        expires_at: unix(expires_at),
        warnings: fresh.warnings.clone(),
        launch_context: fresh.launch_context.clone(),
    };
    serde_json::to_string(&stored).ok()
}

/// Credentials read back from [`encode`]'s text: `None` when unreadable, for other settings,
/// or expiring within a few seconds. `renew_at` may already have passed (the caller decides
/// whether a still valid token is good enough).
pub(crate) fn decode(text: &str, fingerprint: &str, margin: Option<Duration>) -> Option<Resolved> {
    let stored = serde_json::from_str::<Stored>(text).ok()?;
    if stored.fingerprint != fingerprint {
        return None;
    }
    let now = SystemTime::now();
    let expires_at = UNIX_EPOCH + Duration::from_secs(stored.expires_at);
    if expires_at <= now + MIN_REMAINING {
        return None;
    }
    let mut headers = Vec::with_capacity(stored.headers.len());
    for (name, value) in &stored.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let mut value = HeaderValue::from_str(value).ok()?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Some(Resolved {
        headers,
        identity: None,
        expires_at: Some(expires_at),
        renew_at: Some(renew_at(now, expires_at, margin)),
        warnings: stored.warnings,
        launch_context: stored.launch_context,
        source: crate::fleet::CredentialSource::PersistentCache,
    })
}

/// Whether the stored text holds exactly the headers of `stale`.
pub(crate) fn same_headers(text: &str, stale: &Resolved) -> bool {
    serde_json::from_str::<Stored>(text).is_ok_and(|s| {
        s.headers.len() == stale.headers.len()
            && s.headers
                .iter()
                .zip(&stale.headers)
                .all(|((n, v), (sn, sv))| n == sn.as_str() && sv.to_str().is_ok_and(|sv| sv == v))
    })
}

impl PersistentTokens {
    /// The cache of connection `id` whose settings have `fingerprint`.
    pub(crate) fn new(store: Arc<dyn CredentialStore>, id: &str, fingerprint: String) -> Self {
        Self {
            store,
            key: store_key(id),
            fingerprint,
        }
    }

    /// The fingerprint of the connection's settings (without secret values).
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The stored credentials, when they belong to these settings and are still fresh.
    /// Anything unreadable counts as a miss (and is overwritten by the next store).
    pub(crate) fn load(&self, margin: Option<Duration>) -> Result<Option<Resolved>, StoreError> {
        let Some(text) = self.store.get(&self.key)? else {
            return Ok(None);
        };
        Ok(decode(&text, &self.fingerprint, margin)
            .filter(|r| r.renew_at.is_some_and(|renew| renew > SystemTime::now())))
    }

    /// Keeps `fresh` when it can be kept (an expiry, no client identity, readable headers).
    pub(crate) fn save(&self, fresh: &Resolved) -> Result<bool, StoreError> {
        let Some(text) = encode(fresh, &self.fingerprint) else {
            return Ok(false);
        };
        self.store.put(&self.key, &text)?;
        Ok(true)
    }

    /// Forgets the stored credentials when they are `stale` (after a 401), or always when
    /// `stale` is `None` (logout). Returns whether something was removed.
    pub(crate) fn forget(&self, stale: Option<&Resolved>) -> Result<bool, StoreError> {
        let Some(text) = self.store.get(&self.key)? else {
            return Ok(false);
        };
        if let Some(stale) = stale {
            let same = same_headers(&text, stale);
            if !same {
                return Ok(false);
            }
        }
        self.store.delete(&self.key)?;
        Ok(true)
    }

    /// Until when a token is cached for these settings (for `profile describe`).
    pub(crate) fn cached_until(&self) -> Option<SystemTime> {
        let text = self.store.get(&self.key).ok()??;
        let stored = serde_json::from_str::<Stored>(&text).ok()?;
        let at = UNIX_EPOCH + Duration::from_secs(stored.expires_at);
        (stored.fingerprint == self.fingerprint && at > SystemTime::now()).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use serde_json::json;

    fn resolved(token: &str, lifetime: Duration) -> Resolved {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        v.set_sensitive(true);
        Resolved {
            headers: vec![(reqwest::header::AUTHORIZATION, v)],
            identity: None,
            expires_at: Some(SystemTime::now() + lifetime),
            renew_at: None,
            warnings: vec!["w".into()],
            launch_context: None,
            source: crate::fleet::CredentialSource::Fetched,
        }
    }

    fn cache(store: &Arc<MemoryStore>, fp: &str) -> PersistentTokens {
        PersistentTokens::new(store.clone(), "c1", fp.into())
    }

    #[test]
    fn a_saved_token_loads_until_it_expires_and_only_for_the_same_settings() {
        let store = Arc::new(MemoryStore::default());
        let c = cache(&store, "fp1");
        assert!(c.load(None).unwrap().is_none());
        assert!(c.save(&resolved("T1", Duration::from_secs(3600))).unwrap());
        let back = c.load(None).unwrap().expect("cached");
        assert_eq!(back.headers[0].1.to_str().unwrap(), "Bearer T1");
        assert!(back.headers[0].1.is_sensitive());
        assert_eq!(back.warnings, ["w"]);
        assert!(back.renew_at.unwrap() < back.expires_at.unwrap());
        assert!(c.cached_until().is_some());
        // other settings: a miss
        assert!(cache(&store, "fp2").load(None).unwrap().is_none());
        assert!(cache(&store, "fp2").cached_until().is_none());
        // nearly expired: neither saved nor loaded
        assert!(!c.save(&resolved("T2", Duration::from_secs(2))).unwrap());
        assert_eq!(
            c.load(None).unwrap().unwrap().headers[0]
                .1
                .to_str()
                .unwrap(),
            "Bearer T1"
        );
    }

    #[test]
    fn identities_and_endless_credentials_are_not_persisted() {
        let store = Arc::new(MemoryStore::default());
        let c = cache(&store, "fp");
        let mut endless = resolved("T", Duration::from_secs(60));
        endless.expires_at = None;
        assert!(!c.save(&endless).unwrap());
        assert!(store.get(&store_key("c1")).unwrap().is_none());
    }

    #[test]
    fn forget_removes_only_the_stale_value_or_everything_on_logout() {
        let store = Arc::new(MemoryStore::default());
        let c = cache(&store, "fp");
        c.save(&resolved("NEW", Duration::from_secs(600))).unwrap();
        assert!(!c
            .forget(Some(&resolved("OLD", Duration::from_secs(600))))
            .unwrap());
        assert!(c.load(None).unwrap().is_some());
        assert!(c
            .forget(Some(&resolved("NEW", Duration::from_secs(600))))
            .unwrap());
        assert!(c.load(None).unwrap().is_none());
        c.save(&resolved("NEW", Duration::from_secs(600))).unwrap();
        assert!(c.forget(None).unwrap());
        assert!(!c.forget(None).unwrap());
    }

    #[test]
    fn garbage_in_the_store_is_a_miss() {
        let store = Arc::new(MemoryStore::default());
        store.put(&store_key("c1"), "not json").unwrap();
        assert!(cache(&store, "fp").load(None).unwrap().is_none());
        store
            .put(
                &store_key("c1"),
                r#"{"fingerprint":"fp","headers":[["bad name","v"]],"expires_at":99999999999}"#,
            )
            .unwrap();
        assert!(cache(&store, "fp").load(None).unwrap().is_none());
    }

    #[test]
    fn the_fingerprint_ignores_secret_values_but_not_other_settings() {
        let conn = json!({"base-url": "https://h/", "auth": {"scheme": "oidc-client-credentials",
            "client-id": "a", "client-secret": "CANARY-1"}});
        let secret = vec!["/auth/client-secret".to_string()];
        let fp = fingerprint(&conn, &secret);
        let mut other_secret = conn.clone();
        other_secret["auth"]["client-secret"] = json!("CANARY-2");
        assert_eq!(fingerprint(&other_secret, &secret), fp);
        let mut other_client = conn.clone();
        other_client["auth"]["client-id"] = json!("b");
        assert_ne!(fingerprint(&other_client, &secret), fp);
        assert_eq!(fp.len(), 32);
        // without the pointer, the secret would change it
        assert_ne!(fingerprint(&other_secret, &[]), fingerprint(&conn, &[]));
    }
}
