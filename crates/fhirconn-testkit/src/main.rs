//! `fhirconn-testkit serve`: starts the reference servers on loopback for the demo and for
//! manual testing, prints their base URLs as one JSON line, and runs until stdin closes or
//! the process is interrupted.
//!
//! `serve --export-mb 200,50,...` adds a `bulk` server (bearer token, no polling) whose export
//! manifest lists generated NDJSON files of about those sizes in MB (for `cargo xtask bench`).

use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_testkit::pki::{ClientSpec, Pki};
use fhirconn_testkit::tls::{server_config, ClientCerts};
use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use tokio::io::AsyncReadExt as _;

/// Demo credentials (the demo writes them to files next to its config).
const DEMO_USER: &str = "demo";
const DEMO_PASSWORD: &str = "demo:pässword";
const DEMO_TOKEN: &str = "demo-token-7f3a";
const DEMO_CLIENT_SECRET: &str = "demo-client-secret:42";
const DEMO_AUDIENCE: &str = "https://fhirconn.demo/fhir";
const DEMO_KID: &str = "demo-es384";
/// The demo's AWS keys (a HealthLake-shaped endpoint checks SigV4 with them).
const DEMO_AWS_KEY_ID: &str = "AKIDFHIRCONNDEMO";
const DEMO_AWS_SECRET: &str = "demo/aws+secret-access-key";

/// An ES384 key for the SMART demo client: (PKCS#8 PEM, public JWKS).
fn demo_key() -> std::io::Result<(String, JwkSet)> {
    let err = |e: String| std::io::Error::other(e);
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .map_err(|e| err(e.to_string()))?;
    let enc = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::ES384)
        .map_err(|e| err(e.to_string()))?;
    jwk.common.key_id = Some(DEMO_KID.into());
    jwk.common.key_algorithm = Some(KeyAlgorithm::ES384);
    Ok((pair.serialize_pem(), JwkSet { keys: vec![jwk] }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let export_mb: Option<Vec<u64>> = match args.iter().map(String::as_str).collect::<Vec<_>>()[..]
    {
        ["serve"] => None,
        ["serve", "--export-mb", list] => list.split(',').map(|n| n.parse().ok()).collect(),
        _ => {
            eprintln!("usage: fhirconn-testkit serve [--export-mb MB,MB,...]");
            std::process::exit(2);
        }
    };
    let bulk = match export_mb {
        Some(sizes) => {
            let bulk = FhirServer::start(FhirServerConfig {
                auth: ServerAuth::Bearer {
                    tokens: vec![DEMO_TOKEN.into()],
                },
                export_polls: 0,
                export_retry_after: None,
                ..FhirServerConfig::default()
            })
            .await?;
            bulk.set_export_generated(Some(sizes.iter().map(|mb| mb * 1_000_000).collect()));
            Some(bulk)
        }
        None => None,
    };
    let none = FhirServer::start(FhirServerConfig::default()).await?;
    let basic = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Basic {
            username: DEMO_USER.into(),
            password: DEMO_PASSWORD.into(),
        },
        ..FhirServerConfig::default()
    })
    .await?;
    let bearer = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Bearer {
            tokens: vec![DEMO_TOKEN.into()],
        },
        ..FhirServerConfig::default()
    })
    .await?;
    let (pem, jwks) = demo_key()?;
    let signer = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let scopes = vec!["system/*.rs".to_string(), "system/*.read".to_string()];
    let idp = IdentityProvider::start(IdpConfig {
        audience: DEMO_AUDIENCE.into(),
        clients: vec![
            RegisteredClient {
                client_id: "demo-client".into(),
                auth: ClientAuth::SecretBasic(DEMO_CLIENT_SECRET.into()),
                scopes: scopes.clone(),
            },
            RegisteredClient {
                client_id: "demo-backend".into(),
                auth: ClientAuth::PrivateKeyJwt(jwks),
                scopes,
            },
        ],
        ..IdpConfig::default()
    })
    .await?;
    let oauth = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Jwt(idp.verifier(DEMO_AUDIENCE)),
        smart_configuration: Some(idp.smart_configuration()),
        ..FhirServerConfig::default()
    })
    .await?;
    let pki = Pki::new();
    let client = pki.client(&ClientSpec::new("fhirconn demo client"));
    let mtls = FhirServer::start_tls(
        FhirServerConfig::default(),
        server_config(&pki, ClientCerts::Required),
    )
    .await?;
    // Workload identity: a federated token file (as Kubernetes projects it) the mock Entra
    // accepts as the client assertion of `workload-app`.
    let federated_file = std::env::temp_dir().join(format!(
        "fhirconn-testkit-{}-federated-token",
        std::process::id()
    ));
    let federated = fhirconn_testkit::azure_identity::federated_token(
        "system:serviceaccount:demo:app",
        std::time::Duration::from_secs(24 * 3600),
    );
    std::fs::write(&federated_file, federated)?;
    let entra = fhirconn_testkit::entra::MockEntra::start(fhirconn_testkit::entra::EntraConfig {
        federated_clients: vec![("workload-app".into(), federated_file.clone())],
        ..Default::default()
    })
    .await?;
    // Managed identity: IMDS and a FHIR server accepting its tokens.
    let imds = fhirconn_testkit::azure_identity::IdentityEndpoint::start(&[]).await?;
    let azure_mi = FhirServer::start(FhirServerConfig::default()).await?;
    azure_mi.set_auth(ServerAuth::Jwt(
        imds.verifier(&format!("http://{}", azure_mi.addr())),
    ));
    let azure = FhirServer::start(FhirServerConfig::default()).await?;
    // Azure FHIR services name their origin as the token audience (fhirconn's default).
    let azure_audience = format!("http://{}", azure.addr());
    azure.set_auth(ServerAuth::Jwt(entra.verifier(&azure_audience)));
    azure.set_challenge(Some(entra.challenge(&azure_audience)));
    // Pre-signed client assertions, one per use (jti), for `cargo xtask bench` to compare
    // against curl, which cannot sign a JWT itself.
    let assertions: Vec<String> = (0..50)
        .map(|i| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
            header.kid = Some(DEMO_KID.into());
            header.typ = Some("JWT".into());
            let claims = serde_json::json!({"iss": "demo-backend", "sub": "demo-backend",
                "aud": idp.token_endpoint(), "iat": now, "exp": now + 290,
                "jti": format!("presigned-{i}-{now}")});
            jsonwebtoken::encode(&header, &claims, &signer).unwrap_or_default()
        })
        .collect();
    let info = serde_json::json!({
        "none": {"base-url": none.base_url()},
        "basic": {"base-url": basic.base_url(), "username": DEMO_USER, "password": DEMO_PASSWORD},
        "bearer": {"base-url": bearer.base_url(), "token": DEMO_TOKEN},
        "oauth": {"base-url": oauth.base_url(), "issuer": idp.issuer(),
                  "client-id": "demo-client", "client-secret": DEMO_CLIENT_SECRET,
                  "token-endpoint": idp.token_endpoint(),
                  "smart-client-id": "demo-backend", "kid": DEMO_KID, "private-key-pem": pem,
                  "presigned-assertions": assertions},
        "azure": {"base-url": azure.base_url(), "authority-host": entra.authority_host(),
                  "client-id": "daemon-app", "client-secret": "daemon-secret",
                  "public-client-id": "public-app",
                  "workload-client-id": "workload-app",
                  "federated-token-file": federated_file.to_string_lossy(),
                  "imds-host": imds.imds_host(), "managed-identity-base-url": azure_mi.base_url()},
        "mtls": {"base-url": mtls.base_url(), "ca-pem": pki.root_pem(),
                 "certificate-pem": client.chain_pem, "private-key-pem": client.key_pem},
    });
    let mut info = info;
    let healthlake = fhirconn_testkit::sigv4::MockHealthLake::start(
        fhirconn_testkit::sigv4::Sigv4Config::healthlake(DEMO_AWS_KEY_ID, DEMO_AWS_SECRET),
    )
    .await?;
    info["aws"] = serde_json::json!({"base-url": healthlake.base_url(), "region": "us-east-1",
        "access-key-id": DEMO_AWS_KEY_ID, "secret-access-key": DEMO_AWS_SECRET});
    let google =
        fhirconn_testkit::google::MockGoogle::start(fhirconn_testkit::google::GoogleConfig {
            audience: DEMO_AUDIENCE.into(),
            ..Default::default()
        })
        .await?;
    let gcp = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Jwt(google.verifier(DEMO_AUDIENCE)),
        ..FhirServerConfig::default()
    })
    .await?;
    info["google"] = serde_json::json!({"base-url": gcp.base_url(),
        "key-file": google.key_file(), "metadata-host": google.metadata_host()});
    if let Some(bulk) = &bulk {
        info["bulk"] = serde_json::json!({"base-url": bulk.base_url(), "token": DEMO_TOKEN,
            "file-sizes": bulk.export_generated_sizes()});
    }
    println!("{info}");
    // Run until stdin reaches EOF (the parent closed it or exited) or Ctrl-C.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    tokio::select! {
        _ = async { while let Ok(n) = stdin.read(&mut buf).await { if n == 0 { break; } } } => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = std::fs::remove_file(&federated_file);
    Ok(())
}
