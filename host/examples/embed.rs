//! Embedding fhirconn in a service that has its own reqwest client: load the plugins a
//! connection needs, configure it from YAML, and let a middleware authenticate the requests.
//! Run: `FHIR_BASE_URL=https://... FHIR_TOKEN=... cargo run -p fhirconn-host --example embed`.

use fhirconn_host::{middleware::Authentication, Host};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("FHIR_BASE_URL")?;
    let yaml = format!(
        "connections:\n  ehr:\n    base-url: {base}\n    auth: {{scheme: bearer, token-env: FHIR_TOKEN}}\n"
    );
    // Plugins come from FHIRCONN_PLUGIN_PATH, or `plugins/` next to the executable.
    let host = Host::builder()
        .config_yaml("embed.yaml", yaml)
        .build()
        .await?;
    let conn = host.connection("ehr")?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(Authentication::new(conn.clone()))
        .build();
    for path in ["metadata", "Patient?_count=1"] {
        let resp = client.get(conn.url_for(path)?).send().await?;
        println!("GET {path}: {}", resp.status());
    }
    Ok(())
}
