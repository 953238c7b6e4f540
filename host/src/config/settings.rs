//! The host's settings of one connection, declared once: [`HostSettings`] is a serde struct
//! whose JSON Schema is derived (schemars). The composed schema, the typed settings, `profile
//! set` (which `--set key=...` belongs to the connection) and `import dsf` all read it, so a
//! new setting is one field here (plus its documentation).

use super::duration;
use fhirconn_sdk::schemars::{self, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// A connection's host settings as written in the file (everything beside `auth`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct HostSettings {
    /// FHIR base URL, e.g. https://fhir.example.org/fhir
    #[schemars(length(min = 1))]
    pub base_url: String,
    /// TCP+TLS connect timeout
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationText,
    /// idle timeout, as DSF's: the longest wait for the response to begin or for the next
    /// bytes of its body; a response that keeps flowing is never cut by it
    #[serde(default = "default_read_timeout")]
    pub read_timeout: DurationText,
    /// a total deadline for one request and its whole response (unset: none; read-timeout
    /// still cuts a stalled response; bulk export downloads are bounded by read-timeout only)
    #[serde(default)]
    pub request_timeout: Option<DurationText>,
    /// renew tokens this long before they expire (default: 30 s or 10% of the lifetime,
    /// whichever is smaller)
    #[serde(default)]
    pub token_renewal_margin: Option<DurationText>,
    /// where tokens are cached: `memory` (this process) or `persistent` (also the credential
    /// store, 0600, until they expire; `fhirconn logout` clears it)
    #[serde(default)]
    pub token_cache: crate::TokenCacheMode,
    /// `local` keeps this connection's tokens out of the file's shared `credential-cache`
    /// (default `shared`)
    #[serde(default)]
    pub credential_cache: super::fleet::ConnectionCache,
    /// PEM bundle of extra trusted roots, relative to this file
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub trusted_root_certificates_file: Option<String>,
    /// trust the system's roots as well
    #[serde(default = "yes")]
    pub use_system_roots: bool,
    /// an HTTP(S) proxy for this connection (otherwise HTTPS_PROXY etc. apply)
    #[serde(default)]
    pub proxy: Option<ProxyFile>,
    /// log this connection's requests at info level
    #[serde(default)]
    pub enable_debug_logging: bool,
    /// test this connection when a host starts
    #[serde(default)]
    pub test_connection_on_startup: bool,
    /// authenticated read after /metadata, e.g. Patient?_count=1
    #[serde(default)]
    pub probe: Option<String>,
    /// cap on response bodies (default 64 MiB)
    #[serde(default)]
    #[schemars(range(min = 1024))]
    pub max_response_bytes: Option<u64>,
    /// allow credentials over plain http to a host that is not loopback (warned about in
    /// every report)
    #[serde(default)]
    pub allow_insecure_http: bool,
}

/// `proxy:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars", inline)]
pub struct ProxyFile {
    /// `http://` or `https://` proxy URL, without credentials
    pub url: String,
    /// hosts, domains or CIDRs that bypass the proxy
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

/// An ISO-8601 duration as written (`PT2S`); parsed by [`duration::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl JsonSchema for DurationText {
    fn inline_schema() -> bool {
        false
    }

    fn schema_name() -> Cow<'static, str> {
        "duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": duration::PATTERN,
            "description": "ISO-8601 duration, e.g. PT2S, PT30S, PT10M"
        })
    }
}

fn default_connect_timeout() -> DurationText {
    DurationText("PT2S".into())
}

fn default_read_timeout() -> DurationText {
    DurationText("PT10M".into())
}

fn yes() -> bool {
    true
}

/// The key beside the host settings in a connection entry.
pub const AUTH: &str = "auth";

/// The derived schema of the host settings: the object schema (`additionalProperties:
/// false`, `required: [base-url]`) and the definitions it refers to (`duration`).
pub fn schema() -> (Map<String, Value>, Map<String, Value>) {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.meta_schema = None)
        .into_generator();
    let Value::Object(mut root) = generator.into_root_schema_for::<HostSettings>().to_value()
    else {
        return (Map::new(), Map::new());
    };
    root.remove("title");
    root.remove("description");
    let defs = match root.remove("$defs") {
        Some(Value::Object(d)) => d,
        _ => Map::new(),
    };
    if let Some(Value::Object(props)) = root.get_mut("properties") {
        // A person leaves an optional setting out: `key:` with no value stays an error.
        props
            .values_mut()
            .for_each(fhirconn_sdk::settings::forbid_null);
    }
    (root, defs)
}

/// The JSON type of a host setting (`boolean`, `string`, `integer`, `object`; `string` for a
/// duration), or `None` when `key` is not one.
pub fn kind(key: &str) -> Option<String> {
    let (root, defs) = schema();
    let p = root.get("properties")?.get(key)?;
    let p = match p.get("$ref").and_then(Value::as_str) {
        Some(r) => defs.get(r.rsplit('/').next()?)?,
        None => p,
    };
    p.get("type").and_then(Value::as_str).map(String::from)
}

/// The settings `profile set --set key=...` puts on the connection (not the scheme): every
/// host setting but `base-url` (a flag of its own).
pub fn connection_keys() -> Vec<String> {
    let (root, _) = schema();
    root.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().filter(|k| *k != "base-url").cloned().collect())
        .unwrap_or_default()
}

/// Reads the host settings of a (schema-valid) connection entry; `None` when it does not
/// match (the message would quote values, which may be secrets).
pub fn read(entry: &Value) -> Option<HostSettings> {
    let mut entry = entry.as_object()?.clone();
    entry.remove(AUTH);
    serde_json::from_value(Value::Object(entry)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_derived_schema_keeps_the_hand_written_rules() {
        let (root, defs) = schema();
        assert_eq!(root["additionalProperties"], json!(false));
        assert_eq!(root["required"], json!(["base-url"]));
        let p = &root["properties"];
        assert_eq!(p["connect-timeout"]["$ref"], json!("#/$defs/duration"));
        assert_eq!(p["connect-timeout"]["default"], json!("PT2S"));
        assert_eq!(p["token-renewal-margin"]["$ref"], json!("#/$defs/duration"));
        assert_eq!(p["request-timeout"]["$ref"], json!("#/$defs/duration"));
        assert!(
            p["request-timeout"]
                .get("default")
                .is_none_or(Value::is_null),
            "unset by default"
        );
        assert_eq!(p["use-system-roots"]["default"], json!(true));
        assert_eq!(p["max-response-bytes"]["minimum"], json!(1024));
        assert_eq!(
            p["probe"]["type"],
            json!("string"),
            "no null: {}",
            p["probe"]
        );
        assert_eq!(p["proxy"]["required"], json!(["url"]));
        assert_eq!(p["proxy"]["additionalProperties"], json!(false));
        assert_eq!(defs["duration"]["pattern"], json!(duration::PATTERN));
    }

    #[test]
    fn kinds_and_connection_keys_come_from_the_struct() {
        assert_eq!(kind("enable-debug-logging").as_deref(), Some("boolean"));
        assert_eq!(kind("connect-timeout").as_deref(), Some("string"));
        assert_eq!(kind("max-response-bytes").as_deref(), Some("integer"));
        assert_eq!(kind("password"), None);
        let keys = connection_keys();
        for k in [
            "probe",
            "allow-insecure-http",
            "token-renewal-margin",
            "proxy",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k}");
        }
        assert!(!keys.iter().any(|x| x == "base-url" || x == "auth"));
    }

    #[test]
    fn profile_set_puts_every_host_setting_on_the_connection() {
        let p = crate::profile::ProfileSet {
            id: "a".into(),
            scheme: "basic".into(),
            base_url: "https://h".into(),
            settings: vec![
                ("proxy".into(), r#"{"url": "http://p:8080"}"#.into()),
                ("probe".into(), "Patient".into()),
                ("username".into(), "u".into()),
            ],
            allow_inline_secret: false,
        };
        let v = crate::profile::entry_value(&p).unwrap();
        assert_eq!(v["proxy"]["url"], json!("http://p:8080"), "{v}");
        assert_eq!(v["probe"], json!("Patient"));
        assert_eq!(v["auth"]["username"], json!("u"));
        assert!(v["auth"].get("proxy").is_none());
    }

    #[tokio::test]
    async fn only_connections_marked_test_connection_on_startup_are_tested_at_start() {
        let server = fhirconn_testkit::FhirServer::start(Default::default())
            .await
            .unwrap();
        let base = server.base_url();
        let host = crate::Host::builder()
            .config_value(
                ".",
                json!({"connections": {
                    "a": {"base-url": base, "test-connection-on-startup": true},
                    "b": {"base-url": base}}}),
            )
            .only_explicit_plugin_dirs()
            .build()
            .await
            .unwrap();
        let reports = host.test_on_startup().await.unwrap();
        let ids: Vec<&str> = reports.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        assert!(reports[0].ok, "{:?}", reports[0].failure);
    }

    #[test]
    fn an_entry_reads_without_its_auth() {
        let s = read(
            &json!({"base-url": "https://h", "auth": {"scheme": "basic"},
                             "probe": "metadata"}),
        )
        .unwrap();
        assert_eq!(s.probe.as_deref(), Some("metadata"));
        assert_eq!(s.connect_timeout, default_connect_timeout());
        assert!(s.use_system_roots);
        assert!(read(&json!({"base-url": "https://h", "nope": 1})).is_none());
    }
}
