//! Unit tests of `oauth::client_auth`: the JSON Schema rules and [`configure`] agree on what
//! each `auth-method` and `grant` needs; what a method forbids only `configure` refuses.

use super::*;
use crate::settings;
use crate::testing::MockHost;

/// A settings struct with the fields [`configure`] reads, as a scheme declares them.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct S {
    client_id: String,
    client_secret: Option<SecretSetting>,
    auth_method: Option<AuthMethod>,
    #[serde(default)]
    grant: Grant,
    private_key: Option<SecretSetting>,
    kid: Option<String>,
    alg: Option<String>,
}

fn configured(v: &Value, mock: &MockHost) -> std::result::Result<(), String> {
    mock.with_host(|h| {
        let s: S = settings::parse(v.clone(), h).map_err(|e| e.to_string())?;
        let i = Inputs {
            client_id: &s.client_id,
            method: s.auth_method,
            grant: s.grant,
            client_secret: s.client_secret.as_ref(),
            private_key: s.private_key.as_ref(),
            kid: s.kid.as_deref(),
            alg: s.alg.as_deref(),
            ..Inputs::default()
        };
        configure(&i, h).map(|_| ()).map_err(|e| e.to_string())
    })
}

#[test]
fn the_schema_rules_and_configure_agree() {
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", p256.serialize_der()));
    let mock = MockHost::new()
        .with_file("k", pem.as_bytes())
        .with_env("S", "secret");
    let mut schema = settings::schema::<S>();
    schema["allOf"]
        .as_array_mut()
        .unwrap()
        .extend(schema_rules());
    // (settings, the schema accepts them, configure accepts them)
    let cases = [
        (json!({}), false, false),
        (json!({"client-secret": "s"}), true, true),
        (
            json!({"client-secret-env": "S", "auth-method": "client_secret_post"}),
            true,
            true,
        ),
        (
            json!({"client-secret": "s", "auth-method": "client_secret_jwt"}),
            true,
            true,
        ),
        (json!({"auth-method": "client_secret_jwt"}), false, false),
        (
            json!({"auth-method": "private_key_jwt", "private-key-file": "k"}),
            true,
            true,
        ),
        (
            json!({"auth-method": "private_key_jwt", "private-key-file": "k", "kid": "x", "alg": "ES256"}),
            true,
            true,
        ),
        (json!({"auth-method": "private_key_jwt"}), false, false),
        (
            json!({"auth-method": "none", "client-secret": "s"}),
            false,
            false,
        ),
        (json!({"grant": "jwt-bearer"}), false, false),
        (
            json!({"grant": "jwt-bearer", "client-secret": "s"}),
            true,
            true,
        ),
        (
            json!({"grant": "jwt-bearer", "private-key-file": "k"}),
            true,
            true,
        ),
        (
            json!({"grant": "jwt-bearer", "auth-method": "none", "private-key-file": "k"}),
            true,
            true,
        ),
        (
            json!({"grant": "jwt-bearer", "auth-method": "client_secret_basic", "client-secret": "s"}),
            true,
            true,
        ),
        (
            json!({"grant": "jwt-bearer", "auth-method": "client_secret_basic", "client-secret": "s", "private-key-file": "k"}),
            true,
            true,
        ),
        (
            json!({"grant": "jwt-bearer", "auth-method": "client_secret_jwt", "client-secret": "s"}),
            false,
            false,
        ),
        (
            json!({"grant": "jwt-bearer", "auth-method": "private_key_jwt", "private-key-file": "k"}),
            false,
            false,
        ),
        // Forbidden combinations: left to configure, whose errors name the setting.
        (
            json!({"auth-method": "private_key_jwt", "private-key-file": "k", "client-secret": "s"}),
            true,
            false,
        ),
        (json!({"client-secret": "s", "kid": "x"}), true, false),
        (json!({"client-secret": "s", "alg": "RS256"}), true, false),
    ];
    for (mut v, schema_ok, ok) in cases {
        v["client-id"] = json!("app");
        assert_eq!(jsonschema::is_valid(&schema, &v), schema_ok, "schema: {v}");
        let got = configured(&v, &mock);
        assert_eq!(got.is_ok(), ok, "configure: {v}: {got:?}");
    }
}

/// The default method is client_secret_basic, or none with the jwt-bearer grant; a jwt-bearer
/// grant is signed with the key when there is one, else HS256 with the secret.
#[test]
fn defaults_and_the_grant_signer() {
    let mock = MockHost::new();
    mock.with_host(|h| {
        let s: S = settings::parse(json!({"client-id": "a", "client-secret": "s"}), h).unwrap();
        let mut i = Inputs {
            client_id: "a",
            client_secret: s.client_secret.as_ref(),
            ..Inputs::default()
        };
        let (auth, grant) = configure(&i, h).unwrap();
        assert!(matches!(auth, Authenticator::Basic(_)) && grant.is_none());
        i.grant = Grant::JwtBearer;
        i.claims = [Some("iss"), Some("user"), None];
        let (auth, grant) = configure(&i, h).unwrap();
        assert!(matches!(auth, Authenticator::None));
        let grant = grant.unwrap();
        assert_eq!(
            (grant.issuer.as_str(), grant.subject.as_str()),
            ("iss", "user")
        );
        assert_eq!(grant.signer.alg_name(), "HS256");
    });
}
