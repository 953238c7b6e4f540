//! Schemes compiled into the host and registered with `inventory`: `none`.

use crate::plugins::BuiltinScheme;
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::{
    AuthRequest, Connection, ConnectionInfo, Credentials, Error, Host, Result, Scheme,
};

/// `none`: anonymous access (a public server, or one behind a network boundary).
#[derive(Debug)]
struct NoneScheme;

#[derive(Debug)]
struct NoneConnection;

impl Scheme for NoneScheme {
    fn name(&self) -> &str {
        "none"
    }
    fn summary(&self) -> &str {
        "no authentication (anonymous access)"
    }
    fn config_schema(&self) -> Value {
        json!({"type": "object", "additionalProperties": false, "properties": {}})
    }
    fn configure(
        &self,
        _c: &ConnectionInfo,
        settings: Value,
        _h: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        if let Some(key) = settings.as_object().and_then(|o| o.keys().next()) {
            return Err(Error::config(format!(
                "unknown setting '{key}' (scheme 'none' takes none)"
            )));
        }
        Ok(Box::new(NoneConnection))
    }
}

impl Connection for NoneConnection {
    fn authorize(&self, _r: &AuthRequest, _h: &Host<'_>) -> Result<Credentials> {
        Ok(Credentials::new())
    }
}

inventory::submit! {
    BuiltinScheme {
        build: || Box::new(NoneScheme),
        version: env!("CARGO_PKG_VERSION"),
    }
}
