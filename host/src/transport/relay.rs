//! The upstream side of the proxy's relay (`proxy/relay.rs`): HTTP/1.1 connections to one
//! connection's server, plain TCP or rustls with the connection's own roots and verifier
//! (ALPN `http/1.1` only), set up within `connect-timeout` by the direct path's connector and
//! kept idle between requests. The relay writes each request head itself and reads the
//! answer's head with `httparse`; nothing here parses HTTP.
//!
//! Only connections that the direct path would serve get one: no HTTP proxy applies and no
//! client identity is presented (those take the hyper-util or reqwest path).

use super::TransportError;
use crate::config::ConnectionSettings;
use http::Uri;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A connection to the server, read and written with tokio's traits.
pub(crate) type UpstreamIo = hyper_util::rt::TokioIo<super::direct::Connected>;

/// Idle connections kept per server (more are closed when returned).
const MAX_IDLE: usize = 64;

/// How long an idle connection is kept (servers commonly close theirs after 60 s or more;
/// one older than this may be half-closed already).
const IDLE_FOR: Duration = Duration::from_secs(30);

/// The relay's connections to one connection's server.
pub(crate) struct Upstreams {
    connector: super::direct::TimedConnector,
    idle: Mutex<Vec<(Instant, UpstreamIo)>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

impl Upstreams {
    fn new(settings: &ConnectionSettings, tls: rustls::ClientConfig) -> Self {
        Self {
            connector: super::direct::connector(settings, tls),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, UpstreamIo)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently returned idle connection that is young enough and has nothing to
    /// read: a server's bytes after an answer ended (a `HEAD` answered with a body, say) or
    /// its close would otherwise be read as the next request's answer.
    pub(crate) fn checkout(&self) -> Option<UpstreamIo> {
        let mut idle = self.idle();
        prune(&mut idle);
        while let Some((_, mut io)) = idle.pop() {
            if quiet(&mut io) {
                return Some(io);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange ended cleanly for the next request.
    pub(crate) fn checkin(&self, io: UpstreamIo) {
        let mut idle = self.idle();
        prune(&mut idle);
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), io));
        }
    }

    /// Closes the connections idle for too long (every few seconds, while `this` lives).
    fn sweep(this: std::sync::Weak<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(IDLE_FOR / 4).await;
                let Some(upstreams) = this.upgrade() else {
                    return;
                };
                prune(&mut upstreams.idle());
            }
        });
    }

    /// A new connection to `uri`'s origin (DNS, TCP and TLS within `connect-timeout`).
    pub(crate) async fn connect(
        &self,
        uri: &Uri,
        settings: &ConnectionSettings,
    ) -> Result<UpstreamIo, TransportError> {
        use tower::Service as _;
        let started = Instant::now();
        let mut connector = self.connector.clone();
        match connector.call(uri.clone()).await {
            Ok(io) => Ok(hyper_util::rt::TokioIo::new(io)),
            Err(e) => Err(super::direct::classify_at(
                &*e, uri, true, settings, started,
            )),
        }
    }
}

/// Drops the connections idle for longer than [`IDLE_FOR`] (the oldest come first).
fn prune(idle: &mut Vec<(Instant, UpstreamIo)>) {
    let now = Instant::now();
    let stale = idle
        .iter()
        .take_while(|(at, _)| now.duration_since(*at) > IDLE_FOR)
        .count();
    idle.drain(..stale);
}

/// Whether an idle connection has nothing to read (no bytes, no end, no error), polled once
/// without waiting.
fn quiet(io: &mut UpstreamIo) -> bool {
    use tokio::io::AsyncRead as _;
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(io)
        .poll_read(&mut cx, &mut buf)
        .is_pending()
}

impl super::Transport {
    /// The relay's connections to this connection's server, or `None` when its requests
    /// must take another path (an HTTP proxy applies, or the TLS set-up cannot be built:
    /// that path reports why).
    pub(crate) fn relay_upstreams(&self) -> Option<&Arc<Upstreams>> {
        self.relay
            .get_or_init(|| {
                if !self.goes_direct() {
                    return None;
                }
                let verifier = self.pool.verifier(&self.key).ok()?;
                let mut tls = super::roots::client_config(verifier, None).ok()?;
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                let upstreams = Arc::new(Upstreams::new(&self.settings, tls));
                Upstreams::sweep(Arc::downgrade(&upstreams));
                Some(upstreams)
            })
            .as_ref()
    }
}
