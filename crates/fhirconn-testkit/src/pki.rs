//! A throwaway PKI made with rcgen at test time: a root CA, an intermediate, a server
//! certificate for 127.0.0.1, localhost and ::1, client certificates (RSA or EC, direct or via
//! the intermediate, expired, not yet valid, expiring soon, server-only EKU), and a rogue CA
//! whose client certificates no server here trusts.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::time::Duration;
use time::OffsetDateTime;

/// A certificate chain (leaf first) and its PKCS#8 private key, both PEM.
#[derive(Clone)]
pub struct CertAndKey {
    /// Leaf first, then intermediates.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// PKCS#8 DER of the key.
    pub key_der: Vec<u8>,
    /// DER of each certificate, leaf first.
    pub chain_der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").finish_non_exhaustive()
    }
}

/// The client key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256.
    Ec,
    /// RSA 2048.
    Rsa,
}

/// When a client certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for a year.
    Current,
    /// Expired yesterday.
    Expired,
    /// Valid from tomorrow.
    NotYetValid,
    /// Expires in this many days.
    ExpiresInDays(i64),
}

/// What a client certificate should look like.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Common name.
    pub name: String,
    /// Key algorithm.
    pub key: KeyKind,
    /// Validity.
    pub validity: Validity,
    /// Issued by the intermediate (chain of two) rather than the root.
    pub via_intermediate: bool,
    /// Only `serverAuth` in the EKU (not usable as a client certificate).
    pub server_auth_only: bool,
}

impl ClientSpec {
    /// A current EC client certificate issued by the root.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            key: KeyKind::Ec,
            validity: Validity::Current,
            via_intermediate: false,
            server_auth_only: false,
        }
    }
}

/// The PKI.
pub struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
    rogue: CertifiedIssuer<'static, KeyPair>,
    /// The server certificate (127.0.0.1, localhost, ::1) issued by the root.
    pub server: CertAndKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "fhirconn testkit");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::from_secs(86_400);
    p.not_after = now + Duration::from_secs(3 * 365 * 86_400);
    p
}

fn key(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::Ec => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::Rsa => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
    .expect("key generation")
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn server_cert(root: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> CertAndKey {
    server_cert_valid(root, names, false)
}

fn server_cert_valid(
    root: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    expired: bool,
) -> CertAndKey {
    let server_key = key(KeyKind::Ec);
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
    for n in names {
        p.subject_alt_names
            .push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("DNS name")),
            });
    }
    p.distinguished_name.push(
        DnType::CommonName,
        format!("fhirconn test server {}", names.join(" ")),
    );
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    let day = Duration::from_secs(86_400);
    (p.not_before, p.not_after) = if expired {
        (now - 30 * day, now - day)
    } else {
        (now - day, now + 365 * day)
    };
    let cert = p.signed_by(&server_key, root).expect("server certificate");
    CertAndKey {
        chain_pem: pem_of(cert.der()),
        key_pem: server_key.serialize_pem(),
        key_der: server_key.serialize_der(),
        chain_der: vec![cert.der().to_vec()],
    }
}

impl Pki {
    /// Makes a new PKI (a few milliseconds; RSA keys take longer).
    pub fn new() -> Self {
        let root =
            CertifiedIssuer::self_signed(ca_params("fhirconn test root CA"), key(KeyKind::Ec))
                .expect("root CA");
        let intermediate = CertifiedIssuer::signed_by(
            ca_params("fhirconn test intermediate CA"),
            key(KeyKind::Ec),
            &root,
        )
        .expect("intermediate CA");
        let rogue = CertifiedIssuer::self_signed(ca_params("rogue CA"), key(KeyKind::Ec))
            .expect("rogue CA");
        let server = server_cert(&root, &["localhost", "127.0.0.1", "::1"]);
        Self {
            root,
            intermediate,
            rogue,
            server,
        }
    }

    /// A server certificate from the root for other names (e.g. to provoke a name mismatch).
    pub fn server_for(&self, names: &[&str]) -> CertAndKey {
        server_cert(&self.root, names)
    }

    /// An expired server certificate for 127.0.0.1, localhost and ::1.
    pub fn expired_server(&self) -> CertAndKey {
        server_cert_valid(&self.root, &["localhost", "127.0.0.1", "::1"], true)
    }

    /// The root CA certificate, PEM (what clients and servers trust).
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// The root CA certificate, DER.
    pub fn root_der(&self) -> Vec<u8> {
        self.root.der().to_vec()
    }

    fn issue(
        &self,
        spec: &ClientSpec,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        chain_extra: Option<&[u8]>,
    ) -> CertAndKey {
        let k = key(spec.key);
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
        p.distinguished_name
            .push(DnType::CommonName, spec.name.as_str());
        p.distinguished_name
            .push(DnType::OrganizationName, "fhirconn testkit clients");
        p.extended_key_usages = if spec.server_auth_only {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(86_400);
        (p.not_before, p.not_after) = match spec.validity {
            Validity::Current => (now - day, now + 365 * day),
            Validity::Expired => (now - 30 * day, now - day),
            Validity::NotYetValid => (now + day, now + 30 * day),
            Validity::ExpiresInDays(n) => (now - day, now + Duration::from_secs(n as u64 * 86_400)),
        };
        let cert = p.signed_by(&k, issuer).expect("client certificate");
        let mut chain_pem = pem_of(cert.der());
        let mut chain_der = vec![cert.der().to_vec()];
        if let Some(extra) = chain_extra {
            chain_pem.push_str(&pem_of(extra));
            chain_der.push(extra.to_vec());
        }
        CertAndKey {
            chain_pem,
            key_pem: k.serialize_pem(),
            key_der: k.serialize_der(),
            chain_der,
        }
    }

    /// A client certificate as specified.
    pub fn client(&self, spec: &ClientSpec) -> CertAndKey {
        if spec.via_intermediate {
            self.issue(spec, &self.intermediate, Some(self.intermediate.der()))
        } else {
            self.issue(spec, &self.root, None)
        }
    }

    /// A client certificate from a CA no server trusts.
    pub fn rogue_client(&self, name: &str) -> CertAndKey {
        self.issue(&ClientSpec::new(name), &self.rogue, None)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
