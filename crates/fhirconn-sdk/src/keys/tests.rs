//! Unit tests of `keys`: every key format (PEM, JWK, JWKS, Google service-account file; RSA,
//! P-256, P-384) loads and signs verifiably with RS256, RS384, ES256 and ES384; a JWK's private
//! part must belong to its public part; RSA keys under 2048 bits and an `alg` that does not fit
//! the key are refused.

use super::*;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::json;

/// A freshly generated key: PKCS#8 DER and the public JWK.
fn generate(alg: Algorithm) -> (Vec<u8>, Value) {
    let pair = match alg {
        Algorithm::ES384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        _ => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .unwrap(),
    };
    let der = pair.serialize_der();
    let enc = match alg {
        Algorithm::ES384 | Algorithm::ES256 => EncodingKey::from_ec_der(&der),
        _ => EncodingKey::from_rsa_der(&pkcs8_inner(&der)),
    };
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).unwrap();
    (der, serde_json::to_value(jwk).unwrap())
}

/// DER reader: (tag, content, rest).
fn read_tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, hdr) = if der[1] & 0x80 == 0 {
        (der[1] as usize, 2)
    } else {
        let n = (der[1] & 0x7f) as usize;
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, 2 + n)
    };
    (tag, &der[hdr..hdr + len], &der[hdr + len..])
}

/// The private key inside PKCS#8 (PKCS#1 for RSA, SEC1 for EC).
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    let (_, body, _) = read_tlv(der);
    let (_, _, rest) = read_tlv(body); // version
    let (_, _, rest) = read_tlv(rest); // algorithm
    let (tag, key, _) = read_tlv(rest);
    assert_eq!(tag, 0x04);
    key.to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A private JWK built from PKCS#8 DER and the public JWK.
fn private_jwk(alg: Algorithm, der: &[u8], public: &Value, kid: &str) -> Value {
    let inner = pkcs8_inner(der);
    let mut jwk = public.clone();
    jwk["kid"] = json!(kid);
    match alg {
        Algorithm::ES384 | Algorithm::ES256 => {
            let (_, body, _) = read_tlv(&inner);
            let (_, _, rest) = read_tlv(body); // version
            let (_, d, _) = read_tlv(rest);
            jwk["d"] = json!(b64(d));
        }
        _ => {
            let (_, mut rest, _) = read_tlv(&inner);
            let mut ints = Vec::new();
            while !rest.is_empty() {
                let (_, v, r) = read_tlv(rest);
                let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
                ints.push(v);
                rest = r;
            }
            for (name, v) in ["d", "p", "q", "dp", "dq", "qi"].iter().zip(&ints[3..]) {
                jwk[*name] = json!(b64(v));
            }
        }
    }
    jwk
}

#[test]
fn pem_pkcs1_sec1_and_jwk_keys_all_load() {
    let (ec, ec_pub) = generate(Algorithm::ES384);
    let (rsa, rsa_pub) = generate(Algorithm::RS384);
    let cases: Vec<(String, Algorithm, Option<&str>)> =
        vec![
        (pem("PRIVATE KEY", &ec), Algorithm::ES384, None),
        (pem("EC PRIVATE KEY", &pkcs8_inner(&ec)), Algorithm::ES384, None),
        (pem("PRIVATE KEY", &rsa), Algorithm::RS384, None),
        (pem("RSA PRIVATE KEY", &pkcs8_inner(&rsa)), Algorithm::RS384, None),
        (
            private_jwk(Algorithm::ES384, &ec, &ec_pub, "ec-1").to_string(),
            Algorithm::ES384,
            Some("ec-1"),
        ),
        (
            private_jwk(Algorithm::RS384, &rsa, &rsa_pub, "rsa-1").to_string(),
            Algorithm::RS384,
            Some("rsa-1"),
        ),
        (
            json!({"keys": [ec_pub.clone(), private_jwk(Algorithm::ES384, &ec, &ec_pub, "ec-2")]})
                .to_string(),
            Algorithm::ES384,
            Some("ec-2"),
        ),
    ];
    for (text, alg, kid) in cases {
        let key = load(text.as_bytes(), None).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(key.alg, alg);
        assert_eq!(key.kid.as_deref(), kid);
        // The JWK-derived key signs verifiably with the public half.
        let public = if alg == Algorithm::ES384 {
            &ec_pub
        } else {
            &rsa_pub
        };
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(public.clone()).unwrap();
        let sig = jsonwebtoken::crypto::sign(b"m", &key.key, alg).unwrap();
        assert!(jsonwebtoken::crypto::verify(
            &sig,
            b"m",
            &DecodingKey::from_jwk(&jwk).unwrap(),
            alg
        )
        .unwrap());
    }
}

/// JWK private parts are checked against their public parts by the RustCrypto crates: an EC
/// `d` from another key, or an RSA `d` that does not fit `n`/`e`, is refused; an RSA JWK without
/// the CRT parameters has its primes recovered.
#[test]
fn jwk_private_parts_must_belong_to_their_public_parts() {
    let (ec, ec_pub) = generate(Algorithm::ES384);
    let (_, other_pub) = generate(Algorithm::ES384);
    let mut mixed = private_jwk(Algorithm::ES384, &ec, &ec_pub, "k");
    mixed["x"] = other_pub["x"].clone();
    mixed["y"] = other_pub["y"].clone();
    let e = load(mixed.to_string().as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong to its 'x' and 'y'"), "{e}");

    let (rsa, rsa_pub) = generate(Algorithm::RS384);
    let mut no_crt = private_jwk(Algorithm::RS384, &rsa, &rsa_pub, "r");
    for f in ["p", "q", "dp", "dq", "qi"] {
        no_crt.as_object_mut().unwrap().remove(f);
    }
    let key = load(no_crt.to_string().as_bytes(), None).unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(rsa_pub.clone()).unwrap();
    let sig = jsonwebtoken::crypto::sign(b"m", &key.key, Algorithm::RS384).unwrap();
    let public = DecodingKey::from_jwk(&jwk).unwrap();
    assert!(jsonwebtoken::crypto::verify(&sig, b"m", &public, Algorithm::RS384).unwrap());

    let mut wrong_d = private_jwk(Algorithm::RS384, &rsa, &rsa_pub, "r");
    wrong_d["d"] = json!(b64(&[7u8; 200]));
    let e = load(wrong_d.to_string().as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a consistent private key"), "{e}");
}

/// A 1024-bit RSA key (PKCS#1): too small for RS384.
const RSA_1024: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXgIBAAKBgQCnlJ1NOp6cezZ2VOFV23Hn9S5R1fJV3mz+V4qqMd2LM93ILYLZ
OHiAv7n/jciARxtHryS5WgwWUptUCYfVqMtTaxzviM87ChaCO3OkDrjF7GLgQ4e3
21KI99d5B+QJ8NI2b4c5fxabgfwcfOPUcKxsPa0/pL8qSsNE8l8pr7k4iQIDAQAB
AoGBAIpTUcR9ro7b5YinZ5jHGq6s4x8Jyo62mqEXAY6aupQ8q8SgTHGg+1bK62zW
S7oW952kJFwax/9lEHG9rDHgsnNCs5caSxDWvG+epRCR6+U50uQBEfM6u5s3U1s1
CplrA5JnKOwCwdKN73uSWXCWlm7ncywdVWx6xrNiEsN4l4UBAkEA12pCit/y3RuK
T+Uiin+hvPxJx8g/zZ0z80UQRrkl8Oejl6zvDnSipSmARehW1J2OmxqOI4qefuJp
kxovTbLQLQJBAMcnO+FhCEMG5tTRvx4Fi0j0ap/WPVAKyelSCZ0so7BtbNupIqIW
GORigPKpZjZ87sHVnE0uI68qnT4Tgip4500CQGSB7b5CM1y65tPUQ0N/vYUh6YLP
igVznbOZu7hj1rIKQigYxglmniSVsoXrm+fkA4+W2k729HCbT0sVYpDMJ5kCQQC8
0X38mbrzkb+ZV6QUGr2MVfAhy0YmdZQqGxXyZzhrNdRYD2w+sSS4pIwNhn7aemkE
bjrbEjvTAFxFVsm66xahAkEAoAh2B+PbCrt4beK9VWGvMD8QH7VHLNoSU0onnw4I
LZoarvq0Bs2I++WuJ9RrBaSvW7/fV9Z3NTl8oh8SgIPq6A==
-----END RSA PRIVATE KEY-----";

/// RSA keys must have at least 2048 bits (proven by a test signature), and a JWK's `alg` must
/// fit its key.
#[test]
fn small_rsa_keys_and_a_mismatched_jwk_alg_are_refused() {
    let e = load(RSA_1024.as_bytes(), None).unwrap_err().to_string();
    assert!(e.contains("at least 2048 bits are required"), "{e}");

    let (ec, ec_pub) = generate(Algorithm::ES384);
    let mut jwk = private_jwk(Algorithm::ES384, &ec, &ec_pub, "k");
    jwk["alg"] = json!("RS384");
    let e = load(jwk.to_string().as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "the JWK's alg is RS384; this key can only be used with ES384"
    );
    jwk["alg"] = json!("ES384");
    assert_eq!(
        load(jwk.to_string().as_bytes(), None).unwrap().alg_name(),
        "ES384"
    );
}

/// `client_assertion` signs the claims with the key's algorithm and puts `typ`, `kid` and `jku`
/// in the header.
#[test]
fn client_assertions_carry_the_header_and_verify_with_the_public_key() {
    let (rsa, rsa_pub) = generate(Algorithm::RS384);
    let key = load(pem("RSA PRIVATE KEY", &pkcs8_inner(&rsa)).as_bytes(), None).unwrap();
    let claims = json!({"iss": "c", "sub": "c", "aud": "https://a/t", "exp": 1, "jti": "j"});
    let jwt = key
        .client_assertion("k1", Some("https://c/jwks"), &claims)
        .unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, Algorithm::RS384);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some("k1"));
    assert_eq!(header.jku.as_deref(), Some("https://c/jwks"));
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(rsa_pub).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS384);
    v.validate_exp = false;
    v.set_audience(&["https://a/t"]);
    let got =
        jsonwebtoken::decode::<serde_json::Value>(&jwt, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
            .unwrap()
            .claims;
    assert_eq!(got, claims);
    assert!(!format!("{key:?}").contains("key:"), "{key:?}");
}

/// Verifies `jwt` with the public JWK under `alg`, returning the claims.
fn verify(jwt: &str, public: &Value, alg: Algorithm) -> Value {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(public.clone()).unwrap();
    let mut v = jsonwebtoken::Validation::new(alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .unwrap_or_else(|e| panic!("{e}"))
        .claims
}

/// Each supported algorithm signs an assertion that verifies with the public key under that
/// algorithm (and only that one): RS256 and RS384 from one RSA key, ES256 from P-256 (PEM,
/// SEC1 and JWK), ES384 from P-384.
#[test]
fn every_supported_algorithm_signs_verifiably() {
    let (rsa, rsa_pub) = generate(Algorithm::RS384);
    let (p256, p256_pub) = generate(Algorithm::ES256);
    let (p384, p384_pub) = generate(Algorithm::ES384);
    let claims = json!({"iss": "c", "sub": "c", "aud": "https://a/t", "exp": 1, "jti": "j"});
    let cases = [
        (pem("PRIVATE KEY", &rsa), &rsa_pub, Algorithm::RS256),
        (
            pem("RSA PRIVATE KEY", &pkcs8_inner(&rsa)),
            &rsa_pub,
            Algorithm::RS384,
        ),
        (pem("PRIVATE KEY", &p256), &p256_pub, Algorithm::ES256),
        (
            pem("EC PRIVATE KEY", &pkcs8_inner(&p256)),
            &p256_pub,
            Algorithm::ES256,
        ),
        (
            private_jwk(Algorithm::ES256, &p256, &p256_pub, "p").to_string(),
            &p256_pub,
            Algorithm::ES256,
        ),
        (pem("PRIVATE KEY", &p384), &p384_pub, Algorithm::ES384),
    ];
    for (text, public, alg) in cases {
        let key = load_with_alg(text.as_bytes(), None, Some(alg)).unwrap();
        assert_eq!(key.alg, alg);
        let jwt = key.client_assertion("k", None, &claims).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&jwt).unwrap().alg, alg);
        assert_eq!(verify(&jwt, public, alg), claims);
    }
    // Defaults without an alg: RSA → RS384, P-256 → ES256, P-384 → ES384.
    for (der, alg) in [
        (&rsa, Algorithm::RS384),
        (&p256, Algorithm::ES256),
        (&p384, Algorithm::ES384),
    ] {
        let key = load(pem("PRIVATE KEY", der).as_bytes(), None).unwrap();
        assert_eq!(key.alg, alg);
        assert_eq!(key.alg_name(), alg_name(alg));
    }
}

/// An `alg` that does not fit the key (or the alg its JWK declares) is refused, naming both.
#[test]
fn an_alg_that_does_not_fit_the_key_is_refused() {
    let (rsa, rsa_pub) = generate(Algorithm::RS384);
    let (p256, _) = generate(Algorithm::ES256);
    let (p384, _) = generate(Algorithm::ES384);
    let rsa_pem = pem("PRIVATE KEY", &rsa);
    for (bytes, alg, expected) in [
        (
            rsa_pem.clone(),
            Algorithm::ES256,
            "alg: ES256 does not fit the key, which is an RSA key (RS256 or RS384)",
        ),
        (
            rsa_pem.clone(),
            Algorithm::RS512,
            "alg: RS512 does not fit the key, which is an RSA key (RS256 or RS384)",
        ),
        (
            pem("PRIVATE KEY", &p256),
            Algorithm::ES384,
            "alg: ES384 does not fit the key, which is an EC P-256 key (ES256)",
        ),
        (
            pem("PRIVATE KEY", &p384),
            Algorithm::ES256,
            "alg: ES256 does not fit the key, which is an EC P-384 key (ES384)",
        ),
        (
            pem("PRIVATE KEY", &p384),
            Algorithm::RS384,
            "alg: RS384 does not fit the key, which is an EC P-384 key (ES384)",
        ),
    ] {
        let e = load_with_alg(bytes.as_bytes(), None, Some(alg)).unwrap_err();
        assert_eq!(e.to_string(), expected);
    }
    let mut jwk = private_jwk(Algorithm::RS384, &rsa, &rsa_pub, "r");
    jwk["alg"] = json!("RS256");
    let key = load(jwk.to_string().as_bytes(), None).unwrap();
    assert_eq!(key.alg, Algorithm::RS256, "a JWK's alg is the key's alg");
    let e = key.with_alg(Algorithm::RS384).unwrap_err().to_string();
    assert_eq!(e, "RS384 differs from the alg its JWK declares (RS256)");
    jwk["alg"] = json!("PS256");
    let e = load(jwk.to_string().as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "the JWK's alg is PS256; this key can only be used with RS384 or RS256"
    );
    assert_eq!(parse_alg("ES256").unwrap(), Algorithm::ES256);
    assert!(parse_alg("HS256").is_err() && parse_alg("none").is_err());
}

/// A Google service-account key file: its `private_key` is PKCS#8 PEM with `\n` escapes in
/// JSON. The PEM alone loads (RS256 chosen), and so does the whole file (RS256, kid =
/// `private_key_id`).
#[test]
fn a_google_service_account_key_loads() {
    let (rsa, rsa_pub) = generate(Algorithm::RS256);
    let file = json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "abc123",
        "private_key": pem("PRIVATE KEY", &rsa).replace("\r\n", "\n"),
        "client_email": "svc@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string();
    assert!(file.contains("-----BEGIN PRIVATE KEY-----\\n"), "{file}");
    let parsed: Value = serde_json::from_str(&file).unwrap();
    let pem_text = parsed["private_key"].as_str().unwrap();
    let key = load_with_alg(pem_text.as_bytes(), None, Some(Algorithm::RS256)).unwrap();
    let claims = json!({"iss": "svc@p.iam.gserviceaccount.com", "exp": 1});
    assert_eq!(
        verify(
            &key.client_assertion("abc123", None, &claims).unwrap(),
            &rsa_pub,
            Algorithm::RS256
        ),
        claims
    );
    let key = load(file.as_bytes(), None).unwrap();
    assert_eq!(
        (key.alg, key.kid.as_deref()),
        (Algorithm::RS256, Some("abc123"))
    );
    let e = key.with_alg(Algorithm::RS384).unwrap_err().to_string();
    assert!(e.contains("differs"), "{e}");
}

/// `hs256` MACs the claims with the secret (client_secret_jwt).
#[test]
fn hs256_assertions_verify_with_the_secret_only() {
    let claims = json!({"iss": "c", "exp": 1});
    let jwt = hs256(b"0123456789abcdef0123456789abcdef", &claims).unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(
        (header.alg, header.typ.as_deref()),
        (Algorithm::HS256, Some("JWT"))
    );
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.validate_exp = false;
    v.required_spec_claims.clear();
    let ok = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
    assert_eq!(
        jsonwebtoken::decode::<Value>(&jwt, &ok, &v).unwrap().claims,
        claims
    );
    let wrong = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdeX");
    assert!(jsonwebtoken::decode::<Value>(&jwt, &wrong, &v).is_err());
}

/// P-256 JWKs are checked like P-384 ones, and an EC key on another curve (P-521) is refused.
#[test]
fn p256_jwk_parts_are_checked_and_other_curves_refused() {
    let (ec, ec_pub) = generate(Algorithm::ES256);
    let (_, other_pub) = generate(Algorithm::ES256);
    let mut mixed = private_jwk(Algorithm::ES256, &ec, &ec_pub, "k");
    mixed["x"] = other_pub["x"].clone();
    mixed["y"] = other_pub["y"].clone();
    let e = load(mixed.to_string().as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong to its 'x' and 'y'"), "{e}");
    let p521 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let e = load(pem("PRIVATE KEY", &p521.serialize_der()).as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(e, NOT_EC);
}
