//! TLS for the testkit servers: a rustls server configuration from the test PKI (optionally
//! requiring a client certificate issued by its root) and an axum `Listener` that completes
//! the handshake, counting handshakes and remembering the client certificates presented.

use crate::pki::Pki;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Whether the server asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// No client certificate requested.
    None,
    /// A certificate chaining to the PKI's root is required.
    Required,
}

/// A rustls server configuration with the PKI's server certificate.
pub fn server_config(pki: &Pki, client_certs: ClientCerts) -> Arc<rustls::ServerConfig> {
    server_config_with(pki, &pki.server, client_certs)
}

/// A rustls server configuration with a given server certificate (e.g. one for the wrong name).
pub fn server_config_with(
    pki: &Pki,
    server: &crate::pki::CertAndKey,
    client_certs: ClientCerts,
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match client_certs {
        ClientCerts::None => builder.with_no_client_auth(),
        ClientCerts::Required => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(pki.root_der()))
                .expect("root CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = server
        .chain_der
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone()));
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What a TLS listener saw.
#[derive(Debug, Default)]
pub struct TlsStats {
    handshakes: AtomicU64,
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
    client_certs: Mutex<Vec<Vec<u8>>>,
}

impl TlsStats {
    /// Completed handshakes.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }
    /// Failed handshakes.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }
    /// Why the last handshake failed.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().unwrap().clone()
    }
    /// The leaf client certificate (DER) of each completed handshake that presented one.
    pub fn client_certs(&self) -> Vec<Vec<u8>> {
        self.client_certs.lock().unwrap().clone()
    }
}

/// An axum listener serving TLS on a TCP listener.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    stats: Arc<TlsStats>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Wraps a bound TCP listener.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            stats: Arc::default(),
        }
    }

    /// The listener's statistics (shared; stays valid after the listener moves into a server).
    pub fn stats(&self) -> Arc<TlsStats> {
        self.stats.clone()
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // Without this, Nagle's algorithm on the server and delayed ACKs on the client
            // add ~40 ms to some responses (real servers disable Nagle too).
            let _ = tcp.set_nodelay(true);
            match self.acceptor.accept(tcp).await {
                Ok(tls) => {
                    self.stats.handshakes.fetch_add(1, Ordering::SeqCst);
                    if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                    {
                        self.stats
                            .client_certs
                            .lock()
                            .unwrap()
                            .push(leaf.as_ref().to_vec());
                    }
                    return (tls, addr);
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::SeqCst);
                    *self.stats.last_failure.lock().unwrap() = Some(e.to_string());
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
