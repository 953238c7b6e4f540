//! The HTTP clients a [`crate::Host`] owns: one reqwest client (and one direct client, for the
//! proxy) per distinct [`ClientKey`], with the proxies that apply to them,
//! shared by the host's connections, and one certificate verifier per distinct roots (it reads
//! the system roots, ~10 ms, at the first TLS handshake: `roots.rs`).

use super::roots::LazyVerifier;
use crate::config::{ConnectionSettings, ProxySettings};
use fhirconn_sdk::ClientIdentity;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything a client is built from, compared by value: two connections with equal keys
/// share one client and its connection pool.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The extra trusted roots (PEM, as read from the file).
    pub(crate) roots_pem: Arc<[u8]>,
    /// Whether the system's roots are trusted as well.
    pub(crate) use_system_roots: bool,
    /// The proxy, if any.
    pub(crate) proxy: Option<ProxySettings>,
    /// Connect timeout.
    pub(crate) connect_timeout: Duration,
    /// Read (idle) timeout.
    pub(crate) read_timeout: Duration,
    /// Total deadline (`request-timeout`), if any.
    pub(crate) request_timeout: Option<Duration>,
    /// The client certificate, if any.
    pub(crate) identity: Option<IdentityKey>,
}

impl ClientKey {
    /// The key of a connection's clients without an identity.
    pub(crate) fn new(settings: &ConnectionSettings, roots_pem: Arc<[u8]>) -> Self {
        Self {
            roots_pem,
            use_system_roots: settings.host.use_system_roots,
            proxy: settings.proxy.clone(),
            connect_timeout: settings.connect_timeout,
            read_timeout: settings.read_timeout,
            request_timeout: settings.request_timeout,
            identity: None,
        }
    }

    /// The same key for a client presenting `identity`.
    pub(crate) fn with_identity(&self, identity: Option<&ClientIdentity>) -> Self {
        Self {
            identity: identity.map(IdentityKey::new),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("roots_pem_bytes", &self.roots_pem.len())
            .field("use_system_roots", &self.use_system_roots)
            .field("proxy", &self.proxy)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("identity", &self.identity)
            .finish()
    }
}

/// A connection's timeouts on a client: `connect-timeout`; `read-timeout` as an idle timeout,
/// as DSF's (reqwest restarts it after every read of the body, so a download that keeps
/// flowing is never cut); `request-timeout`, when set, the only total deadline.
pub(crate) fn with_timeouts(
    b: reqwest::ClientBuilder,
    s: &ConnectionSettings,
) -> reqwest::ClientBuilder {
    let b = b
        .connect_timeout(s.connect_timeout)
        .read_timeout(s.read_timeout);
    match s.request_timeout {
        Some(total) => b.timeout(total),
        None => b,
    }
}

/// A client identity compared by value: the certificate chain and a SHA-256 of the private
/// key (the key itself never enters a key, a hash table or a `Debug` line).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    certificate_chain_pem: String,
    private_key_sha256: [u8; 32],
}

impl IdentityKey {
    fn new(identity: &ClientIdentity) -> Self {
        Self {
            certificate_chain_pem: identity.certificate_chain_pem.clone(),
            private_key_sha256: Sha256::digest(identity.private_key_pem.expose_secret().as_bytes())
                .into(),
        }
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey").finish_non_exhaustive()
    }
}

/// The clients of one host, by [`ClientKey`]; never global, dropped with the host.
#[derive(Default)]
pub struct ClientPool {
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
    /// The proxy's direct clients (hyper-util, no HTTP proxy), by the same keys.
    direct: Mutex<HashMap<ClientKey, super::direct::DirectClient>>,
    verifiers: Mutex<HashMap<RootsKey, Arc<LazyVerifier>>>,
}

/// What a verifier is built from: the roots file as read, and `use-system-roots`.
type RootsKey = (Arc<[u8]>, bool);

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool")
            .field("clients", &self.len())
            .finish()
    }
}

impl ClientPool {
    /// The client for `key`, built by `build` the first time it is asked for.
    pub(crate) fn get_or_build<E>(
        &self,
        key: ClientKey,
        build: impl FnOnce() -> Result<reqwest::Client, E>,
    ) -> Result<reqwest::Client, E> {
        get_or_insert(&self.clients, key, build)
    }

    /// The direct client for `key` (see `direct.rs`), built by `build` the first time.
    pub(crate) fn get_or_build_direct<E>(
        &self,
        key: ClientKey,
        build: impl FnOnce() -> Result<super::direct::DirectClient, E>,
    ) -> Result<super::direct::DirectClient, E> {
        get_or_insert(&self.direct, key, build)
    }

    /// The verifier of `key`'s roots, shared by every client with the same roots (whatever
    /// their identity, proxy or timeouts): the system's roots are read once per host.
    pub(crate) fn verifier(
        &self,
        key: &ClientKey,
    ) -> Result<Arc<LazyVerifier>, super::ClientError> {
        let mut verifiers = self
            .verifiers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = (key.roots_pem.clone(), key.use_system_roots);
        if let Some(v) = verifiers.get(&id) {
            return Ok(v.clone());
        }
        let v = Arc::new(LazyVerifier::new(
            &key.roots_pem,
            key.use_system_roots,
            super::roots::provider(),
        )?);
        verifiers.insert(id, v.clone());
        Ok(v)
    }

    /// How many distinct clients the pool holds.
    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether the pool holds no client yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of `key` in `map`, built by `build` (under the lock: once) when absent.
fn get_or_insert<T: Clone, E>(
    map: &Mutex<HashMap<ClientKey, T>>,
    key: ClientKey,
    build: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    let value = build()?;
    map.insert(key, value.clone());
    Ok(value)
}

/// Builds the default client (no client identity) of each of `transports` now, on a
/// blocking thread, and reads their trusted roots, so that a host's first request pays for
/// neither (reading and parsing the system roots takes milliseconds); equal keys build one
/// client. A client that
/// cannot be built is left to fail, with its error, at the first request. Clients for a
/// scheme's identity are built when the scheme returns it.
pub(crate) async fn warm_up(transports: &[Arc<super::Transport>]) {
    let transports = transports.to_vec();
    // A JoinError only means the warm-up did not finish: the first request builds the client.
    let _ = tokio::task::spawn_blocking(move || {
        for t in transports {
            let _ = t.client(None);
            t.preload_roots();
        }
    })
    .await;
}

/// Destinations that never go through a proxy, whatever the configuration says.
pub(super) const LOOPBACK_NO_PROXY: &str = "localhost,127.0.0.0/8,::1";

/// The proxies of the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, either case, with
/// `NO_PROXY`), as reqwest would use them, except that loopback is always direct.
/// `HTTP_PROXY` is ignored in a CGI context (`REQUEST_METHOD` set: "httpoxy").
pub(super) fn env_proxies() -> Result<Vec<reqwest::Proxy>, String> {
    let var = |name: &str| {
        std::env::var(name)
            .or_else(|_| std::env::var(name.to_ascii_lowercase()))
            .ok()
            .filter(|v| !v.trim().is_empty())
    };
    let mut no_proxy = var("NO_PROXY").unwrap_or_default();
    if !no_proxy.is_empty() {
        no_proxy.push(',');
    }
    no_proxy.push_str(LOOPBACK_NO_PROXY);
    let cgi = std::env::var_os("REQUEST_METHOD").is_some();
    let mut out = Vec::new();
    let mut add = |url: Option<String>, make: fn(&str) -> reqwest::Result<reqwest::Proxy>| {
        if let Some(u) = url {
            let p = make(&u).map_err(|e| format!("proxy from the environment: {e}"))?;
            out.push(p.no_proxy(reqwest::NoProxy::from_string(&no_proxy)));
        }
        Ok::<(), String>(())
    };
    add(var("HTTPS_PROXY"), |u| reqwest::Proxy::https(u))?;
    add(if cgi { None } else { var("HTTP_PROXY") }, |u| {
        reqwest::Proxy::http(u)
    })?;
    add(var("ALL_PROXY"), |u| reqwest::Proxy::all(u))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn identity(key: &str) -> ClientIdentity {
        ClientIdentity {
            certificate_chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
                .into(),
            private_key_pem: SecretString::from(key.to_string()),
        }
    }

    fn key(id: Option<&ClientIdentity>) -> ClientKey {
        ClientKey {
            roots_pem: Arc::from(&b"roots"[..]),
            use_system_roots: true,
            proxy: None,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(600),
            request_timeout: None,
            identity: None,
        }
        .with_identity(id)
    }

    #[test]
    fn identities_compare_by_value_and_never_show_the_key() {
        let a = identity("-----BEGIN PRIVATE KEY-----\nSECRET-A\n");
        let b = identity("-----BEGIN PRIVATE KEY-----\nSECRET-B\n");
        assert_eq!(key(Some(&a)), key(Some(&a.clone())));
        assert_ne!(
            key(Some(&a)),
            key(Some(&b)),
            "another key is another client"
        );
        assert_ne!(key(Some(&a)), key(None));
        let shown = format!("{:?}", key(Some(&a)));
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("BEGIN"), "{shown}");
    }

    #[test]
    fn equal_keys_build_one_client_and_pools_share_nothing() {
        let pool = ClientPool::default();
        let mut built = 0;
        for _ in 0..3 {
            pool.get_or_build(key(None), || {
                built += 1;
                reqwest::Client::builder().build()
            })
            .unwrap();
        }
        assert_eq!((built, pool.len()), (1, 1));
        let other = ClientPool::default();
        assert!(other.is_empty(), "no process-wide cache");
        other
            .get_or_build(key(None), || reqwest::Client::builder().build())
            .unwrap();
        assert_eq!(other.len(), 1);
    }
}
