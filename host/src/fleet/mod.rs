//! The fleet credential cache: access tokens shared by every process of a fleet through Redis
//! (`credential-cache: {backend: redis, ...}` beside `connections:`), so 50 workers make one
//! token request per token lifetime instead of 50.
//!
//! - Values are sealed ([`seal`]: AES-256-GCM, the Redis key as associated data) with a key
//!   from the environment or a file; keys are `<prefix>:token:<fingerprint>` where the
//!   fingerprint covers the connection's settings without any secret value.
//! - Distributed single flight: on a miss one process takes `<key>:lock` (`SET NX PX` with a
//!   random fencing token), looks once more for a value stored between its lookup and its
//!   lock (then releases the lock and uses it), else fetches, and stores the value only while it still holds the lock
//!   (one Lua script: compare the lock, `SET PX`, delete the lock); the others poll with
//!   backoff for the value, bounded by [`WAIT_FOR_FLEET`], then fetch themselves. When a value
//!   is due for renewal but still valid, the processes that lose the lock keep using it.
//! - A 401 invalidates fleet-wide: compare-and-delete of the exact sealed value.
//! - Redis down, slow or wrong (refused, timeout, AUTH, a value that does not open) never
//!   fails a request: the connection falls back to its own fetch, warns once, and the
//!   connection manager reconnects in the background.

mod seal;

pub use seal::KeyError;

use crate::auth::Resolved;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use reqwest::header::{HeaderName, HeaderValue};
use seal::Sealer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long a process waits for another one's fetch before fetching itself.
pub const WAIT_FOR_FLEET: Duration = Duration::from_secs(10);
/// The lock's lifetime: a fetch that takes longer loses it (and does not store its value).
const LOCK_TTL: Duration = Duration::from_secs(15);
/// Every Redis operation is bounded by this.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Connecting (TCP, TLS, AUTH) is bounded by this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed connection attempt, lookups fall back at once for this long.
const RETRY_CONNECT: Duration = Duration::from_secs(2);

/// Where a connection's credentials came from (shown by `fhirconn test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSource {
    /// Fetched by this process from the scheme.
    Fetched,
    /// Read from the persistent cache (`token-cache: persistent`).
    PersistentCache,
    /// Read from the fleet cache (another process fetched it).
    FleetCache,
    /// Fetched by this process because the fleet cache could not be used.
    LocalFallback,
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fetched => "fetched",
            Self::PersistentCache => "persistent cache hit",
            Self::FleetCache => "fleet cache hit",
            Self::LocalFallback => "fetched (fleet cache unavailable: local fallback)",
        })
    }
}

/// Why the fleet cache could not be used for one lookup.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    /// Not connected (yet, or any more).
    #[error("Redis is not reachable ({0})")]
    Unreachable(String),
    /// A command failed or timed out.
    #[error("Redis command failed: {0}")]
    Command(String),
    /// A value did not open with this process's key.
    #[error("a cached value does not decrypt with this process's encryption key")]
    Undecryptable,
}

/// One Redis server shared by the connections of a host.
pub(crate) struct FleetCache {
    client: redis::Client,
    conn: tokio::sync::RwLock<Option<ConnectionManager>>,
    /// Single flight for connecting; holds when the last attempt failed.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    sealer: Sealer,
    prefix: String,
    /// Operations answered by Redis (for tests and metrics).
    pub(crate) lookups: AtomicU64,
}

impl std::fmt::Debug for FleetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const STORE_IF_LOCKED: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0";

/// A value larger than this was not written by fhirconn: not read (a planted huge value must
/// not cost every worker its memory).
const MAX_VALUE: usize = 64 * 1024;

const GET_BOUNDED: &str = r"
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then
  return 'too-large'
end
return redis.call('GET', KEYS[1])";

const DELETE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

impl FleetCache {
    /// A cache on the Redis at `url` (`redis://` or `rediss://`, AUTH in the URL) with values
    /// sealed by `key_base64`. Connects in the background; lookups fall back until then.
    pub(crate) fn new(url: &str, prefix: &str, key_base64: &str) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        let sealer = Sealer::from_base64(key_base64).map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            client,
            conn: tokio::sync::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
            sealer,
            prefix: prefix.to_string(),
            lookups: AtomicU64::new(0),
        }))
    }

    /// The connection: made on first use by one caller while the others wait (bounded);
    /// after a failed attempt, lookups fall back at once for [`RETRY_CONNECT`]. Once made, the
    /// connection manager reconnects by itself.
    async fn conn(&self) -> Result<ConnectionManager, FleetError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        if last_failure.is_some_and(|t| t.elapsed() < RETRY_CONNECT) {
            return Err(FleetError::Unreachable(
                "connection refused recently".into(),
            ));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let made = tokio::time::timeout(
            CONNECT_TIMEOUT + OP_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(m)) => {
                *self.conn.write().await = Some(m.clone());
                *last_failure = None;
                Ok(m)
            }
            Ok(Err(e)) => {
                *last_failure = Some(Instant::now());
                Err(FleetError::Unreachable(e.to_string()))
            }
            Err(_) => {
                *last_failure = Some(Instant::now());
                Err(FleetError::Unreachable("timed out".into()))
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, FleetError> {
        let mut c = self.conn().await?;
        let out = tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<T>(&mut c))
            .await
            .map_err(|_| FleetError::Command("timed out".into()))?
            .map_err(|e| FleetError::Command(e.to_string()))?;
        self.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        code: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, FleetError> {
        let mut c = self.conn().await?;
        let script = redis::Script::new(code);
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let out = tokio::time::timeout(OP_TIMEOUT, inv.invoke_async::<T>(&mut c))
            .await
            .map_err(|_| FleetError::Command("timed out".into()))?
            .map_err(|e| FleetError::Command(e.to_string()))?;
        self.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }
}

/// A connection's view of the fleet cache.
pub(crate) struct FleetTokens {
    cache: Arc<FleetCache>,
    key: String,
    lock_key: String,
    fingerprint: String,
    connection_id: String,
    warned: AtomicBool,
    /// The credential headers a server answered 401 to: a shared value holding them is a
    /// miss (another process may store the rejected token back, or read it from elsewhere).
    rejected: std::sync::Mutex<Option<Vec<(HeaderName, HeaderValue)>>>,
    /// The sealed value the current credentials came from (for compare-and-delete).
    last_value: std::sync::Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for FleetTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTokens")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What a lookup found.
enum Found {
    /// A value due for use (`fresh`) or only still valid (`!fresh`).
    Value {
        creds: Box<Resolved>,
        raw: Vec<u8>,
        fresh: bool,
    },
    Nothing,
}

impl FleetTokens {
    /// The fleet view of connection `id` whose settings have `fingerprint` and whose schemes
    /// name the identity of their tokens `share_key`. The Redis key is a name only holders of
    /// the encryption key can compute from both.
    pub(crate) fn new(
        cache: Arc<FleetCache>,
        id: &str,
        fingerprint: String,
        share_key: &str,
    ) -> Self {
        let name = cache.sealer.name(&[&fingerprint, share_key]);
        let key = format!("{}:token:{name}", cache.prefix);
        Self {
            lock_key: format!("{key}:lock"),
            key,
            cache,
            fingerprint,
            connection_id: id.to_string(),
            warned: AtomicBool::new(false),
            rejected: std::sync::Mutex::new(None),
            last_value: std::sync::Mutex::new(None),
        }
    }

    fn warn_once(&self, e: &FleetError) {
        if !self.warned.swap(true, Ordering::AcqRel) {
            // Redis error text comes from the network: escaped before it reaches a terminal.
            let e = crate::text::sanitize_line(&e.to_string(), 500);
            tracing::warn!(
                connection = %self.connection_id,
                "fleet credential cache not used: {e}; fetching locally (warned once)"
            );
        }
    }

    async fn lookup(&self, margin: Option<Duration>) -> Result<Found, FleetError> {
        let max = MAX_VALUE.to_string();
        let raw: Option<Vec<u8>> = self
            .cache
            .script(GET_BOUNDED, &[&self.key], &[max.as_bytes()])
            .await?;
        let Some(raw) = raw else {
            return Ok(Found::Nothing);
        };
        if raw == b"too-large" {
            return Err(FleetError::Undecryptable);
        }
        let plain = self
            .cache
            .sealer
            .open(&self.key, &raw)
            .ok_or(FleetError::Undecryptable)?;
        let text = String::from_utf8(plain).map_err(|_| FleetError::Undecryptable)?;
        match crate::token_cache::decode(&text, &self.fingerprint, margin) {
            Some(creds) if self.was_rejected(&creds) => Ok(Found::Nothing),
            Some(creds) => {
                let fresh = creds.renew_at.is_some_and(|r| r > SystemTime::now());
                Ok(Found::Value {
                    creds: Box::new(creds),
                    raw,
                    fresh,
                })
            }
            None => Ok(Found::Nothing),
        }
    }

    fn remember(&self, raw: Option<Vec<u8>>) {
        *self
            .last_value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = raw;
    }

    /// Credentials through the fleet: a fresh shared value, or the result of `fetch` run by
    /// this process when it wins the fleet's lock (or waited long enough, or Redis cannot be
    /// used). `fetch` runs at most once.
    pub(crate) async fn obtain<F, Fut>(
        &self,
        margin: Option<Duration>,
        fetch: F,
    ) -> Result<(Resolved, CredentialSource), crate::Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Resolved, crate::Error>>,
    {
        let deadline = Instant::now() + WAIT_FOR_FLEET;
        let mut pause = Duration::from_millis(10);
        loop {
            let usable = match self.lookup(margin).await {
                Ok(Found::Value { creds, raw, fresh }) if fresh => {
                    self.remember(Some(raw));
                    return Ok((*creds, CredentialSource::FleetCache));
                }
                Ok(Found::Value { creds, raw, .. }) => Some((*creds, raw)),
                Ok(Found::Nothing) => None,
                // Names are keyed by the encryption key: a value under ours that does not
                // open was planted or damaged. Never used; replaced by the next fetch.
                Err(e @ FleetError::Undecryptable) => {
                    self.warn_once(&e);
                    None
                }
                Err(e) => return self.fallback(e, fetch).await,
            };
            let fence = random_fence();
            let locked: Result<Option<String>, FleetError> = self
                .cache
                .run(
                    redis::cmd("SET")
                        .arg(&self.lock_key)
                        .arg(&fence)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOCK_TTL.as_millis() as u64),
                )
                .await;
            match locked {
                Ok(Some(_)) => {
                    if let Some(shared) = self.stored_before_our_lock(margin, &fence).await {
                        return Ok(shared);
                    }
                    return self.fetch_as_leader(&fence, fetch).await;
                }
                Ok(None) => {}
                // A `SET NX` that timed out may still have landed: the fetched value is then
                // stored under it (which releases it), else the lock would hold every other
                // process back for its whole lifetime.
                Err(e) => {
                    let sent = matches!(e, FleetError::Command(_));
                    let fetched = self.fallback(e, fetch).await;
                    if !sent {
                        return fetched;
                    }
                    let Ok((fresh, source)) = fetched else {
                        self.release(&fence).await;
                        return fetched;
                    };
                    if let Some(raw) = self.store_if_locked(&fence, &fresh).await {
                        self.remember(Some(raw));
                    }
                    return Ok((fresh, source));
                }
            }
            if let Some((mut creds, raw)) = usable {
                // Another process is renewing: keep using the valid value a little longer.
                let soon = SystemTime::now() + Duration::from_millis(500);
                creds.renew_at = creds.expires_at.map(|e| e.min(soon));
                self.remember(Some(raw));
                return Ok((creds, CredentialSource::FleetCache));
            }
            if Instant::now() + pause >= deadline || self.lock_is_stuck().await {
                let fresh = fetch().await?;
                self.remember(None);
                return Ok((fresh, CredentialSource::Fetched));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Under a lock just won: the value another process stored (and released its lock) between
    /// our lookup and our `SET NX`, if there is a fresh one. Then our lock is released and the
    /// value used: without this check, that window made a second token request for the fleet.
    async fn stored_before_our_lock(
        &self,
        margin: Option<Duration>,
        fence: &str,
    ) -> Option<(Resolved, CredentialSource)> {
        let Ok(Found::Value {
            creds,
            raw,
            fresh: true,
        }) = self.lookup(margin).await
        else {
            return None;
        };
        self.release(fence).await;
        self.remember(Some(raw));
        Some((*creds, CredentialSource::FleetCache))
    }

    /// Whether the lock was set without the expiry fhirconn gives it (planted): waiting for
    /// it would be waiting for nothing.
    async fn lock_is_stuck(&self) -> bool {
        let ttl: Result<i64, FleetError> =
            self.cache.run(redis::cmd("PTTL").arg(&self.lock_key)).await;
        matches!(ttl, Ok(t) if t == -1 || t > LOCK_TTL.as_millis() as i64)
    }

    async fn fetch_as_leader<F, Fut>(
        &self,
        fence: &str,
        fetch: F,
    ) -> Result<(Resolved, CredentialSource), crate::Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Resolved, crate::Error>>,
    {
        let fresh = match fetch().await {
            Ok(f) => f,
            Err(e) => {
                self.release(fence).await;
                return Err(e);
            }
        };
        let kept = self.store_if_locked(fence, &fresh).await;
        self.remember(kept);
        Ok((fresh, CredentialSource::Fetched))
    }

    /// Stores `fresh` while `fence` still holds the lock (and releases it), else releases
    /// nothing that is not ours; the sealed value when it was stored.
    async fn store_if_locked(&self, fence: &str, fresh: &Resolved) -> Option<Vec<u8>> {
        let stored = crate::token_cache::encode(fresh, &self.fingerprint)
            .and_then(|text| self.cache.sealer.seal(&self.key, text.as_bytes()));
        let ttl = fresh
            .expires_at
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let mut raw_kept = None;
        if let Some(sealed) = stored.filter(|_| ttl > 0) {
            let ttl = ttl.to_string();
            let kept: Result<i64, FleetError> = self
                .cache
                .script(
                    STORE_IF_LOCKED,
                    &[&self.key, &self.lock_key],
                    &[fence.as_bytes(), &sealed, ttl.as_bytes()],
                )
                .await;
            match kept {
                Ok(1) => raw_kept = Some(sealed),
                Ok(_) => {}
                Err(e) => self.warn_once(&e),
            }
        } else {
            self.release(fence).await;
        }
        raw_kept
    }

    /// Deletes the lock if `fence` still holds it (best effort: it expires anyway).
    async fn release(&self, fence: &str) {
        let _ = self
            .cache
            .script::<i64>(DELETE_IF_EQUAL, &[&self.lock_key], &[fence.as_bytes()])
            .await;
    }

    async fn fallback<F, Fut>(
        &self,
        e: FleetError,
        fetch: F,
    ) -> Result<(Resolved, CredentialSource), crate::Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Resolved, crate::Error>>,
    {
        self.warn_once(&e);
        let fresh = fetch().await?;
        self.remember(None);
        Ok((fresh, CredentialSource::LocalFallback))
    }

    fn was_rejected(&self, creds: &Resolved) -> bool {
        self.rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|r| *r == creds.headers)
    }

    /// After a 401 to `stale`: deletes the shared value the credentials came from, unless
    /// another process replaced it already (compare-and-delete on the exact bytes), and
    /// takes a shared value holding them for a miss from now on.
    pub(crate) async fn invalidate(&self, stale: &Resolved) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stale.headers.clone());
        let raw = self
            .last_value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(raw) = raw else { return };
        if let Err(e) = self
            .cache
            .script::<i64>(DELETE_IF_EQUAL, &[&self.key], &[&raw])
            .await
        {
            self.warn_once(&e);
        }
    }
}

/// Checks an encryption key's text (32 bytes in base64) without keeping it.
pub fn check_key(text: &str) -> Result<(), KeyError> {
    Sealer::from_base64(text).map(|_| ())
}

fn random_fence() -> String {
    let mut b = [0u8; 16];
    // Without randomness the fence is still unique enough per process and time.
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
