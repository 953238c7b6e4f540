//! `fhirconn-testkit serve`: starts the reference servers on loopback for the demo and for
//! manual testing, prints their base URLs as one JSON line, and runs until stdin closes or
//! the process is interrupted.

use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use tokio::io::AsyncReadExt as _;

/// Demo credentials (the demo writes them to files next to its config).
const DEMO_USER: &str = "demo";
const DEMO_PASSWORD: &str = "demo:pässword";
const DEMO_TOKEN: &str = "demo-token-7f3a";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        eprintln!("usage: fhirconn-testkit serve");
        std::process::exit(2);
    }
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
    let info = serde_json::json!({
        "none": {"base-url": none.base_url()},
        "basic": {"base-url": basic.base_url(), "username": DEMO_USER, "password": DEMO_PASSWORD},
        "bearer": {"base-url": bearer.base_url(), "token": DEMO_TOKEN},
    });
    println!("{info}");
    // Run until stdin reaches EOF (the parent closed it or exited) or Ctrl-C.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    tokio::select! {
        _ = async { while let Ok(n) = stdin.read(&mut buf).await { if n == 0 { break; } } } => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
