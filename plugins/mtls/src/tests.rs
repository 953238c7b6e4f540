//! Unit tests of the `mtls` scheme with certificates from the testkit PKI: every key format,
//! PKCS#12, and each configuration error a person could make.

use super::*;
use fhirconn_sdk::serde_json::json;
use fhirconn_sdk::testing::MockHost;
use fhirconn_sdk::ErrorKind;
use fhirconn_testkit::pki::{CertAndKey, ClientSpec, KeyKind, Pki, Validity};
use std::sync::OnceLock;

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::new)
}

fn configure(settings: Value, mock: &MockHost) -> Result<Credentials> {
    mock.configure_and_authorize(&Mtls, settings)
}

/// MockHost's clock starts at a fixed time; certificates are made relative to the real clock.
fn mock() -> MockHost {
    let m = MockHost::new();
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    m.advance_ms(real - m.now_ms());
    m
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// The inner key of PKCS#8 DER (PKCS#1 for RSA, SEC1 for EC).
fn inner_key(pkcs8_der: &[u8]) -> Vec<u8> {
    let info = pkcs8::PrivateKeyInfoRef::try_from(pkcs8_der).unwrap();
    info.private_key.as_bytes().to_vec()
}

fn with_files(c: &CertAndKey, key_pem: &str) -> MockHost {
    mock()
        .with_file("cert.pem", c.chain_pem.as_bytes())
        .with_file("key.pem", key_pem.as_bytes())
}

fn settings() -> Value {
    json!({"certificate-file": "cert.pem", "private-key-file": "key.pem"})
}

fn identity_of(creds: &Credentials) -> &ClientIdentity {
    assert!(creds.headers.is_empty(), "mtls adds no headers");
    creds.identity.as_ref().expect("an identity")
}

#[test]
fn pem_keys_in_every_format_give_an_identity() {
    let ec = pki().client(&ClientSpec::new("ec client"));
    let rsa = pki().client(&ClientSpec {
        key: KeyKind::Rsa,
        ..ClientSpec::new("rsa client")
    });
    let cases = [
        (&ec, ec.key_pem.clone(), "PRIVATE KEY"),
        (
            &ec,
            pem_block("EC PRIVATE KEY", &inner_key(&ec.key_der)),
            "EC PRIVATE KEY",
        ),
        (&rsa, rsa.key_pem.clone(), "PRIVATE KEY"),
        (
            &rsa,
            pem_block("RSA PRIVATE KEY", &inner_key(&rsa.key_der)),
            "RSA PRIVATE KEY",
        ),
    ];
    for (cert, key, label) in cases {
        let creds = configure(settings(), &with_files(cert, &key)).unwrap();
        let id = identity_of(&creds);
        assert_eq!(id.certificate_chain_pem, cert.chain_pem);
        assert!(id
            .private_key_pem
            .expose_secret()
            .contains(&format!("BEGIN {label}")));
        assert!(creds.warnings.is_empty());
    }
}

#[test]
fn encrypted_pkcs8_and_pkcs12_and_chains_load() {
    let c = pki().client(&ClientSpec {
        via_intermediate: true,
        ..ClientSpec::new("chained")
    });
    assert_eq!(c.chain_der.len(), 2);
    let info = pkcs8::PrivateKeyInfoRef::try_from(c.key_der.as_slice()).unwrap();
    let encrypted = info.encrypt("kennwort ü").unwrap();
    let enc_pem = pem_block("ENCRYPTED PRIVATE KEY", encrypted.as_bytes());
    let m = with_files(&c, &enc_pem).with_file("pw.txt", "kennwort ü\n".as_bytes());
    let mut s = settings();
    s["private-key-password-file"] = json!("pw.txt");
    let creds = configure(s.clone(), &m).unwrap();
    let id = identity_of(&creds);
    assert!(id
        .private_key_pem
        .expose_secret()
        .contains("BEGIN PRIVATE KEY"));
    assert_eq!(
        id.certificate_chain_pem, c.chain_pem,
        "leaf and intermediate"
    );

    // Wrong password, no password.
    let m = with_files(&c, &enc_pem).with_file("pw.txt", b"wrong");
    let e = configure(s, &m).unwrap_err();
    assert!(e.message().contains("wrong private-key-password"), "{e}");
    let e = configure(settings(), &with_files(&c, &enc_pem)).unwrap_err();
    assert!(e.message().contains("the key is encrypted"), "{e}");

    // PKCS#12 with the chain.
    let mut store = p12_keystore::KeyStore::new();
    let certs: Vec<p12_keystore::Certificate> = c
        .chain_der
        .iter()
        .map(|d| p12_keystore::Certificate::from_der(d).unwrap())
        .collect();
    let key = p12_keystore::PrivateKey::from_der(&c.key_der).unwrap();
    store.add_entry(
        "client",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            "id-1", key, certs,
        )),
    );
    let p12 = store.writer("p12-secret").write().unwrap();
    let m = mock()
        .with_file("client.p12", &p12)
        .with_env("P12_PW", "p12-secret");
    let creds = configure(
        json!({"p12-file": "client.p12", "p12-password-env": "P12_PW"}),
        &m,
    )
    .unwrap();
    let id = identity_of(&creds);
    assert!(id
        .certificate_chain_pem
        .starts_with(&pem_block("CERTIFICATE", &c.chain_der[0])));
    let m = mock().with_file("client.p12", &p12);
    let e = configure(
        json!({"p12-file": "client.p12", "p12-password": "nope"}),
        &m,
    )
    .unwrap_err();
    assert!(e.message().contains("wrong p12-password"), "{e}");
}

#[test]
fn mismatched_expired_and_misused_certificates_are_config_errors() {
    let a = pki().client(&ClientSpec::new("a"));
    let b = pki().client(&ClientSpec::new("b"));
    let expired = pki().client(&ClientSpec {
        validity: Validity::Expired,
        ..ClientSpec::new("old")
    });
    let future = pki().client(&ClientSpec {
        validity: Validity::NotYetValid,
        ..ClientSpec::new("future")
    });
    let server_only = pki().client(&ClientSpec {
        server_auth_only: true,
        ..ClientSpec::new("server-ish")
    });
    let cases = [
        (
            with_files(&a, &b.key_pem),
            "does not belong to the certificate",
        ),
        (with_files(&expired, &expired.key_pem), "expired on"),
        (with_files(&future, &future.key_pem), "is not valid before"),
        (
            with_files(&server_only, &server_only.key_pem),
            "does not allow TLS client authentication (its extended key usage lists serverAuth",
        ),
        (
            with_files(&a, &a.chain_pem),
            "holds a certificate, not a private key",
        ),
        (
            mock()
                .with_file("cert.pem", a.key_pem.as_bytes())
                .with_file("key.pem", a.key_pem.as_bytes()),
            "holds no CERTIFICATE block",
        ),
    ];
    for (m, expected) in cases {
        let e = configure(settings(), &m).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains(expected), "{expected}: {e}");
        assert!(
            !e.message().contains("PRIVATE KEY-----"),
            "no key material in messages"
        );
    }
    for (s, expected) in [
        (
            json!({"certificate-file": "c", "p12-file": "p"}),
            "not both",
        ),
        (json!({}), "set certificate-file"),
        (
            json!({"certificate-file": "cert.pem"}),
            "exactly one of 'private-key'",
        ),
        (
            json!({"certificate-file": "cert.pem", "private-key-file": "key.pem", "pasword": "x"}),
            "unknown setting 'pasword'",
        ),
    ] {
        let e = configure(s, &with_files(&a, &a.key_pem)).unwrap_err();
        assert!(e.message().contains(expected), "{expected}: {e}");
    }
}

#[test]
fn a_certificate_expiring_within_30_days_warns() {
    let soon = pki().client(&ClientSpec {
        validity: Validity::ExpiresInDays(10),
        ..ClientSpec::new("soon")
    });
    let creds = configure(settings(), &with_files(&soon, &soon.key_pem)).unwrap();
    assert_eq!(creds.warnings.len(), 1);
    assert!(
        creds.warnings[0].contains("expires in 9 day(s)")
            || creds.warnings[0].contains("expires in 10 day(s)"),
        "{:?}",
        creds.warnings
    );
}

/// DSF's example sets `password` beside a key that is not encrypted; DSF ignores it, so does
/// mtls: the key is used, and a warning says the password is ignored.
#[test]
fn a_password_beside_an_unencrypted_key_is_a_warning() {
    let a = pki().client(&ClientSpec::new("plain key"));
    let mut s = settings();
    s["private-key-password"] = json!("password");
    let m = with_files(&a, &a.key_pem);
    let creds = configure(s, &m).expect("the password is ignored, not an error");
    identity_of(&creds);
    let expected = "private-key-password is set, but the key in private-key-file is not \
                    encrypted; the password is ignored";
    assert_eq!(creds.warnings, [expected]);
    // Logged at warning level (2 in the ABI's `log_level`).
    let logs = m.logs.lock().unwrap();
    assert!(
        logs.iter()
            .any(|(level, text)| *level == 2 && text == expected),
        "{logs:?}"
    );
}

/// A key encrypted the classic OpenSSL way (`Proc-Type: 4,ENCRYPTED`) is named as such, with
/// the command that converts it, not called "not encrypted".
#[test]
fn a_classic_openssl_encrypted_key_says_how_to_convert_it() {
    let a = pki().client(&ClientSpec {
        key: KeyKind::Rsa,
        ..ClientSpec::new("classic")
    });
    // What `openssl rsa -aes256 -traditional` writes: the headers, then ciphertext.
    let classic = format!(
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
         DEK-Info: AES-256-CBC,9A1C3E5F7B2D4A6C8E0F1A3B5C7D9E1F\n\n{}\n\
         -----END RSA PRIVATE KEY-----\n",
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1"
    );
    for password in [Some("password"), None] {
        let mut s = settings();
        if let Some(p) = password {
            s["private-key-password"] = json!(p);
        }
        let e = configure(s, &with_files(&a, &classic)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let m = e.message();
        assert!(m.contains("classic OpenSSL format"), "{m}");
        assert!(m.contains("AES-256-CBC"), "{m}");
        assert!(m.contains("openssl pkcs8 -topk8"), "{m}");
        assert!(!m.contains("not encrypted"), "{m}");
    }
}
