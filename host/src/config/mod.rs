//! The connections file: YAML with positions, the composed JSON Schema, and typed settings.

pub mod duration;
pub mod emit;
pub mod fleet;
pub mod schema;
pub mod settings;
pub mod validate;
pub mod yaml;

use crate::error::ConfigError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml::{escape_segment, Positions};

/// Default connect timeout (DSF's default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default read timeout (DSF's default).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Default cap on a response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// A parsed configuration document with the positions of its nodes.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file (for messages and for resolving relative paths).
    pub path: PathBuf,
    /// The document as JSON.
    pub value: Value,
    /// Where each node is.
    pub positions: Positions,
}

impl Document {
    /// Parses a document; `path` is used in messages and to resolve relative paths.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, Vec<ConfigError>> {
        match yaml::parse(bytes) {
            Ok((value, positions)) => Ok(Self {
                path: path.to_path_buf(),
                value,
                positions,
            }),
            Err(e) => Err(vec![ConfigError {
                file: path.to_path_buf(),
                line: e.loc.map(|l| l.line),
                column: e.loc.map(|l| l.column),
                connection: None,
                field: None,
                message: e.message,
            }]),
        }
    }

    /// A document built from a JSON value (for hosts configured in code).
    pub fn from_value(path: &Path, value: Value) -> Self {
        Self {
            path: path.to_path_buf(),
            value,
            positions: Positions::default(),
        }
    }

    /// The directory relative paths resolve against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Builds an error located at a JSON pointer (`key` = point at the key, not the value).
    pub fn error_at(&self, pointer: &str, key: bool, message: impl Into<String>) -> ConfigError {
        let loc = if key {
            self.positions.key(pointer)
        } else {
            self.positions.value(pointer)
        };
        let (connection, field) = split_pointer(pointer);
        ConfigError {
            file: self.path.clone(),
            line: loc.map(|l| l.line),
            column: loc.map(|l| l.column),
            connection,
            field,
            message: message.into(),
        }
    }

    /// The scheme names used by the connections, with the pointer of each use.
    pub fn schemes_used(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(conns) = self.value.get("connections").and_then(Value::as_object) else {
            return out;
        };
        for (id, conn) in conns {
            let base = format!("/connections/{}/auth", escape_segment(id));
            match conn.get("auth") {
                Some(Value::Object(o)) => {
                    if let Some(Value::String(s)) = o.get("scheme") {
                        out.push((s.clone(), format!("{base}/scheme")));
                    }
                }
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(Value::String(s)) = item.get("scheme") {
                            out.push((s.clone(), format!("{base}/{i}/scheme")));
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// Splits `/connections/<id>/<field...>` into the id and a dotted field.
fn split_pointer(pointer: &str) -> (Option<String>, Option<String>) {
    let unescape = |s: &str| s.replace("~1", "/").replace("~0", "~");
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    match parts.as_slice() {
        ["connections", id, rest @ ..] => {
            let field = if rest.is_empty() {
                None
            } else {
                Some(
                    rest.iter()
                        .map(|s| unescape(s))
                        .collect::<Vec<_>>()
                        .join("."),
                )
            };
            (Some(unescape(id)), field)
        }
        [] | [""] => (None, None),
        other => (
            None,
            Some(
                other
                    .iter()
                    .map(|s| unescape(s))
                    .collect::<Vec<_>>()
                    .join("."),
            ),
        ),
    }
}

/// One `auth:` entry: a scheme name and its settings.
#[derive(Debug, Clone)]
pub struct AuthEntry {
    /// The scheme name.
    pub scheme: String,
    /// The settings without `scheme`.
    pub settings: serde_json::Map<String, Value>,
    /// JSON pointer of the entry (for errors).
    pub pointer: String,
}

/// A proxy for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxySettings {
    /// `http://` or `https://` proxy URL.
    pub url: String,
    /// Hosts, domains or CIDRs that bypass the proxy.
    pub no_proxy: Vec<String>,
}

/// The host's settings for one connection.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// The connection id.
    pub id: String,
    /// The FHIR base URL, without a trailing slash.
    pub base_url: url::Url,
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout: the longest wait for the response to begin or for its next bytes.
    pub read_timeout: Duration,
    /// Total deadline for one request and its response (`request-timeout`; none when unset).
    pub request_timeout: Option<Duration>,
    /// Extra trusted roots (absolute path).
    pub trusted_roots_file: Option<PathBuf>,
    /// Proxy, if any (otherwise the environment's `HTTPS_PROXY` etc. apply).
    pub proxy: Option<ProxySettings>,
    /// Path read by `fhirconn test` after `/metadata`, e.g. `Patient?_count=1`.
    pub probe: Option<String>,
    /// Cap on response bodies.
    pub max_response_bytes: u64,
    /// Renew credentials this long before they expire (default: 30 s or a tenth of the
    /// lifetime, whichever is smaller).
    pub token_renewal_margin: Option<Duration>,
    /// The auth entries, in order (empty = `none`).
    pub auth: Vec<AuthEntry>,
    /// The host settings as written: settings used as written are read from here
    /// (`use-system-roots`, `enable-debug-logging`, `test-connection-on-startup`,
    /// `allow-insecure-http`, a new one);
    /// the fields above hold the ones that are parsed or checked.
    pub host: settings::HostSettings,
}

/// Whether `url` may carry a credential without `allow-insecure-http`: https, or http to a
/// loopback host (`localhost`, 127.0.0.0/8, `[::1]`).
pub fn is_secure_or_loopback(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => is_loopback_host(url),
        _ => false,
    }
}

/// Whether the URL's host is loopback: `localhost`, 127.0.0.0/8 or `[::1]`.
pub fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Extracts typed connection settings from a schema-valid document.
pub fn connections(
    doc: &Document,
) -> Result<BTreeMap<String, ConnectionSettings>, Vec<ConfigError>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    let Some(conns) = doc.value.get("connections").and_then(Value::as_object) else {
        return Err(vec![doc.error_at("", false, "missing 'connections'")]);
    };
    if conns.is_empty() {
        errors.push(doc.error_at("/connections", false, "no connections are configured"));
    }
    for (id, conn) in conns {
        let ptr = format!("/connections/{}", escape_segment(id));
        match connection(doc, id, &ptr, conn) {
            Ok(c) => {
                out.insert(id.clone(), c);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn connection(
    doc: &Document,
    id: &str,
    ptr: &str,
    conn: &Value,
) -> Result<ConnectionSettings, Vec<ConfigError>> {
    let Some(host) = settings::read(conn) else {
        return Err(vec![doc.error_at(
            ptr,
            false,
            "does not match the schema of a connection",
        )]);
    };
    let mut errors = Vec::new();
    let field = |k: &str| format!("{ptr}/{k}");
    let base_url = parse_base_url(&host.base_url)
        .map_err(|m| errors.push(doc.error_at(&field("base-url"), false, m)))
        .ok();
    let mut duration = |k: &str, text: &settings::DurationText, default: Duration| {
        match duration::parse(&text.0) {
            Ok(d) if d.is_zero() => {
                errors.push(doc.error_at(&field(k), false, "must be longer than zero"));
                default
            }
            Ok(d) => d,
            Err(m) => {
                errors.push(doc.error_at(&field(k), false, m));
                default
            }
        }
    };
    let connect_timeout = duration(
        "connect-timeout",
        &host.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let read_timeout = duration("read-timeout", &host.read_timeout, DEFAULT_READ_TIMEOUT);
    let request_timeout = host
        .request_timeout
        .as_ref()
        .map(|t| duration("request-timeout", t, DEFAULT_READ_TIMEOUT));
    let token_renewal_margin = host.token_renewal_margin.as_ref().and_then(|t| {
        duration::parse(&t.0)
            .map_err(|m| errors.push(doc.error_at(&field("token-renewal-margin"), false, m)))
            .ok()
    });
    let proxy = host.proxy.as_ref().map(|p| ProxySettings {
        url: p.url.clone(),
        no_proxy: p.no_proxy.clone(),
    });
    if let Some(p) = &proxy {
        if let Err(m) = check_proxy_url(&p.url) {
            errors.push(doc.error_at(&field("proxy/url"), false, m));
        }
    }
    let auth = auth_entries(doc, ptr, conn.get(settings::AUTH), &mut errors);
    if let Some(u) = &base_url {
        if let Err(m) = check_plain_http(u, &auth, host.allow_insecure_http) {
            errors.push(doc.error_at(&field("base-url"), false, m));
        }
    }
    let Some(base_url) = base_url.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };
    Ok(ConnectionSettings {
        id: id.to_string(),
        base_url,
        connect_timeout,
        read_timeout,
        request_timeout,
        token_renewal_margin,
        trusted_roots_file: host
            .trusted_root_certificates_file
            .as_ref()
            .map(|p| doc.base_dir().join(p)),
        proxy,
        probe: host
            .probe
            .as_deref()
            .map(|s| s.trim_start_matches('/').to_string()),
        max_response_bytes: host
            .max_response_bytes
            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
        auth,
        host,
    })
}

/// A proxy URL: http(s), without credentials.
fn check_proxy_url(url: &str) -> Result<(), &'static str> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {
            if !u.username().is_empty() || u.password().is_some() {
                return Err("put no credentials in the proxy URL");
            }
            Ok(())
        }
        _ => Err("must be an http:// or https:// URL (SOCKS proxies are not supported)"),
    }
}

/// Credentials over plain http to a host that is not loopback need `allow-insecure-http`.
fn check_plain_http(u: &url::Url, auth: &[AuthEntry], allowed: bool) -> Result<(), String> {
    let sends_credentials = auth.iter().any(|a| a.scheme != "none");
    if !sends_credentials || allowed || is_secure_or_loopback(u) {
        return Ok(());
    }
    let schemes: Vec<&str> = auth.iter().map(|a| a.scheme.as_str()).collect();
    Err(format!(
        "{} would send credentials ({}) over plain http to a host that is not \
         loopback; use https, or set 'allow-insecure-http: true' on this connection \
         to accept that",
        u.origin().ascii_serialization(),
        schemes.join(", ")
    ))
}

/// The `auth:` entries of a connection, in order (one mapping or a list of them).
fn auth_entries(
    doc: &Document,
    ptr: &str,
    auth: Option<&Value>,
    errors: &mut Vec<ConfigError>,
) -> Vec<AuthEntry> {
    let entries: Vec<(String, &Value)> = match auth {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{ptr}/auth/{i}"), v))
            .collect(),
        Some(v) => vec![(format!("{ptr}/auth"), v)],
    };
    let mut out = Vec::new();
    for (p, entry) in entries {
        let Some(obj) = entry.as_object() else {
            errors.push(doc.error_at(&p, false, "must be a mapping with 'scheme'"));
            continue;
        };
        let Some(scheme) = obj.get("scheme").and_then(Value::as_str) else {
            errors.push(doc.error_at(&p, false, "missing required field 'scheme'"));
            continue;
        };
        let mut settings = obj.clone();
        settings.remove("scheme");
        out.push(AuthEntry {
            scheme: scheme.to_string(),
            settings,
            pointer: p,
        });
    }
    out
}

/// Checks a FHIR base URL: absolute http(s), a host, no query, fragment or credentials.
pub fn parse_base_url(s: &str) -> Result<url::Url, String> {
    let mut u = url::Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!(
            "must be http:// or https://, not {}://",
            u.scheme()
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not contain credentials; use an auth scheme".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    let trimmed = u.path().trim_end_matches('/').to_string();
    u.set_path(&trimmed);
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_split_into_connection_and_field() {
        assert_eq!(
            split_pointer("/connections/a~1b/auth/password-file"),
            (Some("a/b".into()), Some("auth.password-file".into()))
        );
        assert_eq!(split_pointer(""), (None, None));
    }

    #[test]
    fn base_urls_are_checked_and_normalised() {
        assert_eq!(
            parse_base_url("https://h/fhir/").unwrap().as_str(),
            "https://h/fhir"
        );
        assert!(parse_base_url("ftp://h").unwrap_err().contains("http"));
        assert!(parse_base_url("https://u:p@h")
            .unwrap_err()
            .contains("credentials"));
        assert!(parse_base_url("https://h/?x=1")
            .unwrap_err()
            .contains("query"));
        assert!(parse_base_url("not a url")
            .unwrap_err()
            .contains("not a valid URL"));
    }
}
