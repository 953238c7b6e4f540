//! Tokens that outlive one process: the second-level cache below a connection's in-memory
//! credentials (`token-cache: persistent` keeps them in the credential store until they
//! expire, so scripts calling `fhirconn get` repeatedly do not fetch a token every time).
//!
//! What is kept: the credential headers, their expiry, warnings and launch context — never a
//! client identity (a connection whose credentials include a client certificate is not
//! persisted) and never credentials without an expiry. The key is
//! `@host/token-cache/<connection id>`; the value records
//! - a fingerprint of the connection's settings with every secret value removed (as the
//!   schemes' schemas mark them), so editing the connection (another client, scope, token
//!   URL, key file) makes a cached token unusable while the key itself names nothing secret;
//! - a binding: HMAC-SHA-256, under a random key kept in the same store
//!   (`@host/token-cache-key`), of the directory the connections file's relative paths
//!   resolve against (canonical), the inline secret values, the values of the `*-env`
//!   variables and the contents of the `*-file` files its `auth` names, so the same entry in
//!   another directory, or with another secret, is another token, and the store reveals
//!   nothing about the secrets;
//! - the scheme's identity: the same HMAC of its `share-key` answer (the client id, service
//!   account, managed identity it reads, also from the environment), when it gives one.
//!
//! Stored expiries past [`MAX_AHEAD`] (or past what the clock can represent) are misses.

use crate::auth::{renew_at, Resolved};
use crate::store::{CredentialStore, StoreError};
use fhirconn_sdk::schemars::JsonSchema;
use fhirconn_sdk::wire::LaunchContext;
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, OnceLock};
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

/// A stored expiry further ahead than this is not believed (a miss).
pub(crate) const MAX_AHEAD: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The store key of the random key the bindings are computed with.
pub(crate) const BINDING_KEY: &str = "@host/token-cache-key";

/// The most of a `*-file` secret read for the binding.
const MAX_SECRET_FILE_BYTES: u64 = 1 << 20;

/// The stored form of [`Resolved`] (headers as text; the expiry in Unix seconds).
#[derive(Serialize, Deserialize)]
struct Stored {
    fingerprint: String,
    /// The binding to where the file is and its secrets ("" in the fleet cache).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    binding: String,
    /// The binding to the schemes' identity ("" when they name none, and in the fleet cache).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    identity: String,
    headers: Vec<(String, String)>,
    expires_at: u64,
    /// When the process that fetched the token planned to renew it (unix seconds): readers
    /// without a margin of their own renew then too, not a fraction of what is left when they
    /// read it (which put a fleet's renewal off to the last seconds of a token's life).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renew_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    launch_context: Option<LaunchContext>,
}

/// What a stored value must match to be used: the settings fingerprint, the binding, and the
/// identity (`None`: not checked, for `profile describe`, which configures no scheme).
struct Match<'a> {
    fingerprint: &'a str,
    binding: &'a str,
    identity: Option<&'a str>,
}

impl Match<'_> {
    fn accepts(&self, stored: &Stored) -> bool {
        stored.fingerprint == self.fingerprint
            && stored.binding == self.binding
            && self.identity.is_none_or(|i| stored.identity == i)
    }
}

/// The bindings of a connection under the store's key (hex HMACs).
struct Sealed {
    binding: String,
    identity: String,
}

/// A connection's persistent token cache in the credential store.
pub(crate) struct PersistentTokens {
    store: Arc<dyn CredentialStore>,
    key: String,
    fingerprint: String,
    /// SHA-256 of the directory and the secret values (in memory only; the store gets an
    /// HMAC of it).
    material: [u8; 32],
    /// SHA-256 of the schemes' share key, when they answered one.
    identity: Option<[u8; 32]>,
    sealed: OnceLock<Sealed>,
}

impl std::fmt::Debug for PersistentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentTokens")
            .field("key", &self.key)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
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

/// What `store` holds for connection `id` of `doc`. The schemes are not configured here, so
/// a cached token is reported for the file, directory and secrets, whatever identity the
/// schemes would name (a token for another identity is still a miss when used).
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

/// Connection `id`'s entry in `doc` and the pointers of its secret values.
fn entry_and_secrets(
    doc: &crate::config::Document,
    registry: &crate::plugins::Registry,
    id: &str,
) -> (Value, Vec<String>) {
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
    let secrets = marks.secrets_in_connection(&entry);
    (entry, secrets)
}

/// The fingerprint of connection `id`'s settings without its secret values (what the fleet
/// cache binds a token to, besides the schemes' share key).
pub(crate) fn settings_fingerprint(
    doc: &crate::config::Document,
    registry: &crate::plugins::Registry,
    id: &str,
) -> String {
    let (entry, secrets) = entry_and_secrets(doc, registry, id);
    fingerprint(&entry, &secrets)
}

/// The persistent token cache of connection `id` of `doc`: bound to a fingerprint of its
/// entry in the file without the values its schemes' schemas mark secret, and to the
/// directory and secret values (see the module documentation).
pub(crate) fn for_connection(
    doc: &crate::config::Document,
    registry: &crate::plugins::Registry,
    id: &str,
    store: Arc<dyn CredentialStore>,
) -> PersistentTokens {
    let (entry, secrets) = entry_and_secrets(doc, registry, id);
    let fingerprint = fingerprint(&entry, &secrets);
    let material = secret_material(&doc.base_dir(), &entry, &secrets);
    PersistentTokens::new(store, id, fingerprint).with_material(material)
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
    hex(&digest[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A length-prefixed part of a digest's input (parts cannot run into each other).
fn part(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// SHA-256 of what a token depends on besides the settings fingerprint: the canonical
/// directory relative paths resolve against, the inline secret values at `secrets`, and for
/// every `*-env`/`*-file` setting under `auth` the variable's value (of each variable, for a
/// list of names such as exec's `inherit-env`) or the file's content
/// (read as the plugins read it: relative to `base_dir`, regular files only, bounded).
pub(crate) fn secret_material(base_dir: &Path, entry: &Value, secrets: &[String]) -> [u8; 32] {
    let mut h = Sha256::new();
    part(&mut h, b"fhirconn token-cache binding v1");
    let dir = std::fs::canonicalize(base_dir)
        .or_else(|_| std::path::absolute(base_dir))
        .unwrap_or_else(|_| base_dir.to_path_buf());
    part(&mut h, dir.as_os_str().as_encoded_bytes());
    for p in secrets {
        part(&mut h, p.as_bytes());
        let v = entry.pointer(p).map(Value::to_string).unwrap_or_default();
        part(&mut h, v.as_bytes());
    }
    let mut sources = Vec::new();
    if let Some(auth) = entry.get("auth") {
        secret_sources(auth, "/auth", &mut sources, 0);
    }
    for (pointer, key, name) in sources {
        part(&mut h, pointer.as_bytes());
        if key.ends_with("-env") {
            match std::env::var_os(&name) {
                Some(v) => part(&mut h, v.as_encoded_bytes()),
                None => part(&mut h, b"\0unset"),
            }
        } else {
            match read_secret_file(&base_dir.join(&name)) {
                Some(bytes) => part(&mut h, &Sha256::digest(&bytes)),
                None => part(&mut h, b"\0unreadable"),
            }
        }
    }
    h.finalize().into()
}

/// `(pointer, key, value)` of every `*-env`/`*-file` string setting in `v` (depth-bounded).
fn secret_sources(v: &Value, ptr: &str, out: &mut Vec<(String, String, String)>, depth: usize) {
    if depth > 8 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{ptr}/{}", crate::config::yaml::escape_segment(k));
                match x {
                    Value::String(s) if k.ends_with("-env") || k.ends_with("-file") => {
                        out.push((p, k.clone(), s.clone()));
                    }
                    // A list of variable names (exec's `inherit-env`): each one's value.
                    Value::Array(names) if k.ends_with("-env") => {
                        for (i, n) in names.iter().enumerate() {
                            if let Value::String(n) = n {
                                out.push((format!("{p}/{i}"), k.clone(), n.clone()));
                            }
                        }
                    }
                    _ => secret_sources(x, &p, out, depth + 1),
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                secret_sources(x, &format!("{ptr}/{i}"), out, depth + 1);
            }
        }
        _ => {}
    }
}

/// A secret file's bytes (at most [`MAX_SECRET_FILE_BYTES`] + 1; a FIFO or device is never
/// opened), or `None`.
fn read_secret_file(p: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    if !std::fs::metadata(p).ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(p)
        .ok()?
        .take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// HMAC-SHA-256 (RFC 2104) of `message` under `key` (RustCrypto `hmac`).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac as _;
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A stored expiry as a time: `None` when the clock cannot represent it or it lies further
/// ahead than [`MAX_AHEAD`] (never believed, never a panic).
fn stored_expiry(secs: u64, now: SystemTime) -> Option<SystemTime> {
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
    let limit = now.checked_add(MAX_AHEAD)?;
    (at <= limit).then_some(at)
}

/// The stored text of `fresh` for settings `fingerprint` (the fleet cache's form; no
/// binding); `None` when it must not be kept (no expiry, a client identity, nearly expired,
/// a header that is not text).
pub(crate) fn encode(fresh: &Resolved, fingerprint: &str) -> Option<String> {
    encode_bound(fresh, fingerprint, "", "")
}

fn encode_bound(
    fresh: &Resolved,
    fingerprint: &str,
    binding: &str,
    identity: &str,
) -> Option<String> {
    let expires_at = fresh.expires_at?;
    let now = SystemTime::now();
    // Nothing to keep without headers (a signing scheme keeps its keys itself: a process that
    // skipped its `authorize` could not sign).
    if fresh.headers.is_empty()
        || fresh.identity.is_some()
        || expires_at <= now + MIN_REMAINING
        || stored_expiry(unix(expires_at), now).is_none()
    {
        return None;
    }
    let mut headers = Vec::with_capacity(fresh.headers.len());
    for (name, value) in &fresh.headers {
        headers.push((name.as_str().to_string(), value.to_str().ok()?.to_string()));
    }
    let stored = Stored {
        fingerprint: fingerprint.to_string(),
        binding: binding.to_string(),
        identity: identity.to_string(),
        headers,
        expires_at: unix(expires_at),
        renew_at: fresh.renew_at.filter(|r| *r < expires_at).map(unix),
        warnings: fresh.warnings.clone(),
        launch_context: fresh.launch_context.clone(),
    };
    serde_json::to_string(&stored).ok()
}

/// Credentials read back from [`encode`]'s text: `None` when unreadable, for other settings,
/// or expiring within a few seconds. `renew_at` may already have passed (the caller decides
/// whether a still valid token is good enough).
pub(crate) fn decode(text: &str, fingerprint: &str, margin: Option<Duration>) -> Option<Resolved> {
    let m = Match {
        fingerprint,
        binding: "",
        identity: Some(""),
    };
    decode_bound(text, &m, margin)
}

fn decode_bound(text: &str, m: &Match<'_>, margin: Option<Duration>) -> Option<Resolved> {
    let stored = serde_json::from_str::<Stored>(text).ok()?;
    if !m.accepts(&stored) {
        return None;
    }
    let now = SystemTime::now();
    let expires_at = stored_expiry(stored.expires_at, now)?;
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
        renew_at: Some(match (margin, stored.renew_at) {
            (None, Some(planned)) => UNIX_EPOCH
                .checked_add(Duration::from_secs(planned))
                .filter(|r| *r < expires_at)
                .unwrap_or_else(|| renew_at(now, expires_at, None)),
            _ => renew_at(now, expires_at, margin),
        }),
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

/// The store's binding key (64 hex digits), if it holds a readable one.
fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

impl PersistentTokens {
    /// The cache of connection `id` whose settings have `fingerprint` (bound to no
    /// directory or secret until [`Self::with_material`]).
    pub(crate) fn new(store: Arc<dyn CredentialStore>, id: &str, fingerprint: String) -> Self {
        Self {
            store,
            key: store_key(id),
            fingerprint,
            material: [0; 32],
            identity: None,
            sealed: OnceLock::new(),
        }
    }

    /// Binds the cache to [`secret_material`].
    pub(crate) fn with_material(mut self, material: [u8; 32]) -> Self {
        self.material = material;
        self.sealed = OnceLock::new();
        self
    }

    /// Binds the cache to the identity its schemes name (their joined share keys).
    pub(crate) fn with_identity(mut self, share_key: &str) -> Self {
        self.identity = Some(Sha256::digest(share_key.as_bytes()).into());
        self.sealed = OnceLock::new();
        self
    }

    /// The bindings under the store's key; `None` when the store has no key and `create` is
    /// false (nothing can have been stored for this binding), or no key can be made.
    fn sealed(&self, create: bool) -> Result<Option<&Sealed>, StoreError> {
        if let Some(s) = self.sealed.get() {
            return Ok(Some(s));
        }
        let mut key = self.store.get(BINDING_KEY)?.as_deref().and_then(parse_key);
        if key.is_none() && create {
            let mut fresh = [0u8; 32];
            if getrandom::fill(&mut fresh).is_err() {
                return Ok(None);
            }
            self.store.put(BINDING_KEY, &hex(&fresh))?;
            // Another process may have put its own meanwhile: the stored one wins.
            key = self.store.get(BINDING_KEY)?.as_deref().and_then(parse_key);
        }
        let Some(key) = key else {
            return Ok(None);
        };
        let seal = |label: &[u8], digest: &[u8; 32]| {
            let mut message = label.to_vec();
            message.extend_from_slice(digest);
            hex(&hmac_sha256(&key, &message)[..16])
        };
        let sealed = Sealed {
            binding: seal(b"binding\0", &self.material),
            identity: self
                .identity
                .map(|i| seal(b"identity\0", &i))
                .unwrap_or_default(),
        };
        Ok(Some(self.sealed.get_or_init(|| sealed)))
    }

    /// The stored credentials, when they belong to these settings and are still fresh.
    /// Anything unreadable counts as a miss (and is overwritten by the next store).
    pub(crate) fn load(&self, margin: Option<Duration>) -> Result<Option<Resolved>, StoreError> {
        let Some(text) = self.store.get(&self.key)? else {
            return Ok(None);
        };
        let Some(sealed) = self.sealed(false)? else {
            return Ok(None);
        };
        let m = Match {
            fingerprint: &self.fingerprint,
            binding: &sealed.binding,
            identity: Some(&sealed.identity),
        };
        Ok(decode_bound(&text, &m, margin)
            .filter(|r| r.renew_at.is_some_and(|renew| renew > SystemTime::now())))
    }

    /// Keeps `fresh` when it can be kept (an expiry, no client identity, readable headers).
    pub(crate) fn save(&self, fresh: &Resolved) -> Result<bool, StoreError> {
        let Some(sealed) = self.sealed(true)? else {
            return Ok(false);
        };
        let Some(text) = encode_bound(fresh, &self.fingerprint, &sealed.binding, &sealed.identity)
        else {
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

    /// Until when a token is cached for these settings, directory and secrets (for `profile
    /// describe`; the identity is not checked).
    pub(crate) fn cached_until(&self) -> Option<SystemTime> {
        let text = self.store.get(&self.key).ok()??;
        let stored = serde_json::from_str::<Stored>(&text).ok()?;
        let sealed = self.sealed(false).ok()??;
        let m = Match {
            fingerprint: &self.fingerprint,
            binding: &sealed.binding,
            identity: None,
        };
        let now = SystemTime::now();
        let at = stored_expiry(stored.expires_at, now)?;
        (m.accepts(&stored) && at > now).then_some(at)
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
    fn readers_renew_when_the_fetcher_planned_to_not_when_a_fraction_of_the_rest_is_left() {
        // A 300 s token planned for renewal 30 s before its expiry, read 280 s before it.
        let mut fresh = resolved("T", Duration::from_secs(280));
        let expires = fresh.expires_at.unwrap();
        fresh.renew_at = Some(expires - Duration::from_secs(30));
        let text = encode(&fresh, "fp").unwrap();
        let back = decode(&text, "fp", None).unwrap();
        let planned = back.renew_at.unwrap();
        let off = expires.duration_since(planned).unwrap().as_secs_f64();
        assert!((29.0..=31.0).contains(&off), "renews {off} s before expiry");
        // A margin of the reader's own wins; a value without a plan is read as before.
        let back = decode(&text, "fp", Some(Duration::from_secs(60))).unwrap();
        let off = expires.duration_since(back.renew_at.unwrap()).unwrap();
        assert!((59..=61).contains(&off.as_secs()), "{off:?}");
        fresh.renew_at = None;
        let back = decode(&encode(&fresh, "fp").unwrap(), "fp", None).unwrap();
        assert!(back.renew_at.unwrap() < expires);
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

    /// The stored value of `c1` with its `expires_at` replaced (everything else valid).
    fn with_expiry(store: &Arc<MemoryStore>, expires_at: u64) {
        let mut v: Value =
            serde_json::from_str(&store.get(&store_key("c1")).unwrap().unwrap()).unwrap();
        v["expires_at"] = json!(expires_at);
        store.put(&store_key("c1"), &v.to_string()).unwrap();
    }

    #[test]
    fn an_expiry_the_clock_cannot_hold_or_too_far_ahead_is_a_miss_not_a_panic() {
        let store = Arc::new(MemoryStore::default());
        let c = cache(&store, "fp");
        assert!(c.save(&resolved("T", Duration::from_secs(600))).unwrap());
        assert!(c.load(None).unwrap().is_some() && c.cached_until().is_some());
        let now = unix(SystemTime::now());
        let eleven_years = 11 * 365 * 24 * 3600;
        for bad in [u64::MAX, u64::MAX / 2, i64::MAX as u64, now + eleven_years] {
            with_expiry(&store, bad);
            assert!(c.load(None).unwrap().is_none(), "{bad}");
            // `profile describe`
            assert!(c.cached_until().is_none(), "{bad}");
            // the fleet's form
            let text = store.get(&store_key("c1")).unwrap().unwrap();
            let mut fleet: Value = serde_json::from_str(&text).unwrap();
            fleet.as_object_mut().unwrap().remove("binding");
            assert!(decode(&fleet.to_string(), "fp", None).is_none(), "{bad}");
        }
        // nine years ahead is still believed
        with_expiry(&store, now + 9 * 365 * 24 * 3600);
        assert!(c.load(None).unwrap().is_some());
        // and a token claiming to live longer is not stored
        assert!(!c
            .save(&resolved("T", Duration::from_secs(eleven_years)))
            .unwrap());
    }

    #[test]
    fn a_token_is_bound_to_the_directory_secrets_and_identity_under_the_store_s_key() {
        let store = Arc::new(MemoryStore::default());
        let bound = |material: u8, identity: Option<&str>| {
            let c = cache(&store, "fp").with_material([material; 32]);
            match identity {
                Some(i) => c.with_identity(i),
                None => c,
            }
        };
        // Nothing stored yet: a load makes no key.
        assert!(bound(1, None).load(None).unwrap().is_none());
        assert!(store.get(BINDING_KEY).unwrap().is_none());
        assert!(bound(1, Some("client-a"))
            .save(&resolved("T1", Duration::from_secs(600)))
            .unwrap());
        let key = store.get(BINDING_KEY).unwrap().expect("a key was made");
        assert!(parse_key(&key).is_some(), "{key}");
        assert!(bound(1, Some("client-a")).load(None).unwrap().is_some());
        // another directory or secret: a miss, also for `profile describe`
        assert!(bound(2, Some("client-a")).load(None).unwrap().is_none());
        assert!(bound(2, None).cached_until().is_none());
        // another identity (or none): a miss; `profile describe` does not know it
        assert!(bound(1, Some("client-b")).load(None).unwrap().is_none());
        assert!(bound(1, None).load(None).unwrap().is_none());
        assert!(bound(1, None).cached_until().is_some());
        // another store key (a store from elsewhere): a miss
        store.put(BINDING_KEY, &"ab".repeat(32)).unwrap();
        assert!(bound(1, Some("client-a")).load(None).unwrap().is_none());
        // the store shows neither the identity nor the material
        let text = store.get(&store_key("c1")).unwrap().unwrap();
        assert!(
            !text.contains("client-a") && !text.contains(&hex(&[1; 16])),
            "{text}"
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_material_covers_the_directory_inline_secrets_env_values_and_file_contents() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        for d in [&one, &two] {
            std::fs::write(d.path().join("key.json"), "KEY-A").unwrap();
        }
        std::env::set_var("FHIRCONN_TOKEN_CACHE_TEST_SECRET", "S1");
        let entry = json!({"base-url": "https://h/", "auth": {"scheme": "x",
            "client-secret": "CANARY-1", "key-file": "key.json",
            "token-env": "FHIRCONN_TOKEN_CACHE_TEST_SECRET"}});
        let secrets = vec!["/auth/client-secret".to_string()];
        let m = |dir: &Path, e: &Value| secret_material(dir, e, &secrets);
        let base = m(one.path(), &entry);
        assert_eq!(m(one.path(), &entry), base);
        // the same entry in another directory
        assert_ne!(m(two.path(), &entry), base);
        // the same directory reached through another path
        let dotted = one.path().join(".");
        assert_eq!(m(&dotted, &entry), base);
        // another inline secret
        let mut other = entry.clone();
        other["auth"]["client-secret"] = json!("CANARY-2");
        assert_ne!(m(one.path(), &other), base);
        // another file content at the same path
        std::fs::write(one.path().join("key.json"), "KEY-B").unwrap();
        assert_ne!(m(one.path(), &entry), base);
        std::fs::write(one.path().join("key.json"), "KEY-A").unwrap();
        assert_eq!(m(one.path(), &entry), base);
        // another value of the variable
        std::env::set_var("FHIRCONN_TOKEN_CACHE_TEST_SECRET", "S2");
        assert_ne!(m(one.path(), &entry), base);
        // the variables a list names (exec's `inherit-env`)
        let listed = json!({"auth": {"scheme": "exec", "command": ["./t"],
            "inherit-env": ["FHIRCONN_TOKEN_CACHE_TEST_SECRET"]}});
        let before = m(one.path(), &listed);
        std::env::set_var("FHIRCONN_TOKEN_CACHE_TEST_SECRET", "S3");
        assert_ne!(m(one.path(), &listed), before);
        std::env::remove_var("FHIRCONN_TOKEN_CACHE_TEST_SECRET");
        assert_ne!(m(one.path(), &entry), base);
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
