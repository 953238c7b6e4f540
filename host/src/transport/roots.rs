//! Trust roots read when a TLS handshake first needs them, not when a client is built.
//!
//! Reading and parsing the system's roots (on Linux `/etc/ssl/certs`: the bundle and then
//! every file of the directory, ~300 files) costs about 10 ms, half of a one-shot
//! `fhirconn test` against a plain-http server, and reqwest does it whenever it builds a
//! client, whatever the URL. [`LazyVerifier`] is the verifier reqwest would have built (the
//! platform's, `rustls-platform-verifier`: the system's roots plus the connection's
//! `trusted-root-certificates-file`, or the file's roots alone with `use-system-roots: false`),
//! built at the first server certificate it is asked to check. Where the platform verifier is
//! webpki over the system's roots (Linux, the BSDs), a chain that the file's roots alone accept
//! is accepted without reading the system's: the merged store accepts exactly such a chain
//! too, and anything else is checked by the full verifier, so its errors are unchanged.
//! One verifier per distinct roots is shared by a host's clients ([`super::ClientPool`]).

use super::ClientError;
use fhirconn_sdk::ClientIdentity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use secrecy::ExposeSecret as _;
use std::sync::{Arc, OnceLock};

/// Whether the platform verifier is webpki over the system's roots (then the file's roots may
/// be tried alone first, and signatures are checked as webpki checks them).
const PLATFORM_IS_WEBPKI: bool = cfg!(all(
    unix,
    not(target_os = "android"),
    not(target_vendor = "apple"),
    not(target_arch = "wasm32")
));

/// The crypto provider reqwest would use: the process default, else aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A server certificate verifier whose roots are read at its first use.
pub(crate) struct LazyVerifier {
    provider: Arc<CryptoProvider>,
    /// The roots of `trusted-root-certificates-file` (DER), possibly none.
    extra: Vec<CertificateDer<'static>>,
    /// Whether the system's roots are trusted as well (`use-system-roots`).
    system: bool,
    /// webpki over the file's roots alone, when there are any.
    file_only: Option<Arc<WebPkiServerVerifier>>,
    /// The verifier over every trusted root, built at first use.
    full: OnceLock<Arc<dyn ServerCertVerifier>>,
}

impl std::fmt::Debug for LazyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyVerifier")
            .field("file_roots", &self.extra.len())
            .field("system_roots", &self.system)
            .field("loaded", &self.full.get().is_some())
            .finish()
    }
}

impl LazyVerifier {
    /// A verifier over the roots of `roots_pem` (the file as read; may be empty) and, when
    /// `system`, the system's. The file's roots are parsed now: a certificate rustls refuses
    /// fails the client's build, as it did when reqwest parsed them.
    pub(crate) fn new(
        roots_pem: &[u8],
        system: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ClientError> {
        let build_error =
            |e: &dyn std::fmt::Display| ClientError::Build(format!("builder error: {e}"));
        let extra = CertificateDer::pem_slice_iter(roots_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| build_error(&"invalid certificate encoding"))?;
        let file_only = if extra.is_empty() {
            None
        } else {
            let mut store = rustls::RootCertStore::empty();
            for cert in &extra {
                store.add(cert.clone()).map_err(|e| build_error(&e))?;
            }
            let v = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| build_error(&e))?;
            Some(v)
        };
        Ok(Self {
            provider,
            extra,
            system,
            file_only,
            full: OnceLock::new(),
        })
    }

    /// The verifier over every trusted root (reads the system's roots the first time). A
    /// failure is not kept: the next handshake tries again (a transient `EMFILE` must not
    /// fail a long-lived proxy's TLS for good).
    fn full(&self) -> Result<&Arc<dyn ServerCertVerifier>, rustls::Error> {
        if let Some(v) = self.full.get() {
            return Ok(v);
        }
        let built: Arc<dyn ServerCertVerifier> = if !self.system {
            match &self.file_only {
                Some(v) => v.clone(),
                None => return Err(rustls::Error::General("no trusted roots".into())),
            }
        } else {
            let p = self.provider.clone();
            let v = if self.extra.is_empty() {
                rustls_platform_verifier::Verifier::new(p)
            } else {
                rustls_platform_verifier::Verifier::new_with_extra_roots(self.extra.clone(), p)
            };
            Arc::new(v?)
        };
        Ok(self.full.get_or_init(|| built))
    }

    /// Reads the roots now (a long-lived host's warm-up), so no handshake waits for them.
    pub(crate) fn preload(&self) {
        let _ = self.full();
    }

    /// Whether the system's roots have been read (tests).
    #[cfg(test)]
    pub(crate) fn loaded(&self) -> bool {
        self.full.get().is_some()
    }
}

impl LazyVerifier {
    /// A handshake signature checked as webpki checks it where the platform verifier is webpki
    /// (no roots needed), else by the verifier over every root.
    fn signature(
        &self,
        webpki: impl FnOnce(
            &rustls::crypto::WebPkiSupportedAlgorithms,
        ) -> Result<HandshakeSignatureValid, rustls::Error>,
        full: impl FnOnce(&dyn ServerCertVerifier) -> Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if PLATFORM_IS_WEBPKI {
            webpki(&self.provider.signature_verification_algorithms)
        } else {
            full(self.full()?.as_ref())
        }
    }
}

impl ServerCertVerifier for LazyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if PLATFORM_IS_WEBPKI && self.system {
            if let Some(file) = &self.file_only {
                if let Ok(ok) = file.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    return Ok(ok);
                }
            }
        }
        self.full()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(
            |algs| rustls::crypto::verify_tls12_signature(message, cert, dss, algs),
            |full| full.verify_tls12_signature(message, cert, dss),
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(
            |algs| rustls::crypto::verify_tls13_signature(message, cert, dss, algs),
            |full| full.verify_tls13_signature(message, cert, dss),
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // What webpki and the platform verifiers answer alike; asked before any certificate.
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls configuration reqwest would build for a client: every TLS version, the roots of
/// `verifier`, the client certificate of `identity`, ALPN h2 then http/1.1.
pub(crate) fn client_config(
    verifier: Arc<LazyVerifier>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| ClientError::Build(format!("builder error: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let (certs, key) = identity_der(id)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientError::Build(format!("builder error: {e}")))?
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// The certificate chain and key of an identity, read as reqwest's `Identity::from_pem` reads
/// them: certificates and the last private key (PKCS#8, PKCS#1 or SEC1), nothing else.
fn identity_der(
    id: &ClientIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ClientError> {
    use rustls::pki_types::pem::SectionKind;
    let mut certs = Vec::new();
    let mut key = None;
    // The chain then the key, as reqwest read the two joined by a line end.
    let texts = [
        id.certificate_chain_pem.as_bytes(),
        id.private_key_pem.expose_secret().as_bytes(),
    ];
    for section in texts
        .into_iter()
        .flat_map(<(SectionKind, Vec<u8>)>::pem_slice_iter)
    {
        let (kind, der) = section.map_err(|_| ClientError::Identity)?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => key = Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => key = Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => key = Some(PrivateKeyDer::Sec1(der.into())),
            _ => return Err(ClientError::Identity),
        }
    }
    match key {
        Some(key) if !certs.is_empty() => Ok((certs, key)),
        _ => Err(ClientError::Identity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirconn_testkit::pki::Pki;

    fn check(
        v: &dyn ServerCertVerifier,
        chain: &[Vec<u8>],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ee = CertificateDer::from(chain[0].clone());
        let rest: Vec<_> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let name = ServerName::try_from("localhost").unwrap();
        v.verify_server_cert(&ee, &rest, &name, &[], now)
    }

    /// A connection's `trusted-root-certificates-file` vouches for its server without the
    /// system's roots being read (they cost ~10 ms); a server it does not vouch for is judged
    /// by the verifier over every root, with that verifier's own error.
    #[test]
    fn the_files_roots_vouch_without_reading_the_systems() {
        let pki = Pki::new();
        let now = UnixTime::now();
        let v = LazyVerifier::new(pki.root_pem().as_bytes(), true, provider()).unwrap();
        let _ = client_config(
            Arc::new(LazyVerifier::new(b"", true, provider()).unwrap()),
            None,
        )
        .unwrap();
        assert!(!v.loaded(), "building reads no system roots");
        check(&v, &pki.server.chain_der, now).unwrap();
        if PLATFORM_IS_WEBPKI {
            assert!(!v.loaded(), "the file's roots sufficed");
        }
        let merged = rustls_platform_verifier::Verifier::new_with_extra_roots(
            [CertificateDer::from(pki.root_der())],
            provider(),
        )
        .unwrap();
        let stranger = Pki::new();
        let wrong_name = pki.server_for(&["elsewhere.example"]);
        for (chain, what) in [
            (&stranger.server.chain_der, "another CA's server"),
            (&pki.expired_server().chain_der, "an expired certificate"),
            (&wrong_name.chain_der, "another name"),
        ] {
            let lazy = check(&v, chain, now).unwrap_err();
            let full = check(&merged, chain, now).unwrap_err();
            assert_eq!(lazy, full, "{what}: the error of the merged store");
        }
        assert!(v.loaded(), "a refused chain was judged with every root");
        let e = check(&v, &stranger.server.chain_der, now).unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
    }

    /// Without the system's roots, only the file's count (`use-system-roots: false`).
    #[test]
    fn without_system_roots_only_the_files_count() {
        let pki = Pki::new();
        let now = UnixTime::now();
        let v = LazyVerifier::new(pki.root_pem().as_bytes(), false, provider()).unwrap();
        check(&v, &pki.server.chain_der, now).unwrap();
        // Another CA of the same name: the file's root does not vouch for its server.
        let e = check(&v, &Pki::new().server.chain_der, now).unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
        assert!(v.loaded());
    }

    /// A roots file rustls cannot use fails the client's build, as before (not a handshake).
    #[test]
    fn a_bad_root_fails_the_build() {
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = LazyVerifier::new(bad.as_bytes(), true, provider()).unwrap_err();
        assert!(matches!(e, ClientError::Build(_)), "{e:?}");
    }
}
