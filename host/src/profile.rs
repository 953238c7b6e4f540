//! `fhirconn profile`: editing connections in the connections file from the command line.
//!
//! Edits are made to the text, one connection entry at a time, so the rest of the file —
//! comments, order, formatting — stays as it was. The caller validates the result against the
//! composed schema and writes it atomically.

use crate::config::emit;

pub mod file;
use serde_json::{Map, Value};

/// Whether a setting holds a secret inline (`password`, `client-secret`, `private-key`...;
/// not `password-file` or `token-url`).
pub fn is_inline_secret(key: &str) -> bool {
    let last = key.rsplit(['-', '_']).next().unwrap_or_default();
    matches!(
        last,
        "password" | "passphrase" | "secret" | "token" | "key" | "assertion"
    )
}

/// A `profile set` request.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    /// Connection id.
    pub id: String,
    /// Scheme name.
    pub scheme: String,
    /// FHIR base URL.
    pub base_url: String,
    /// `key=value` settings: connection settings or the scheme's.
    pub settings: Vec<(String, String)>,
    /// Accept secrets on the command line (they end up in the file and the shell history).
    pub allow_inline_secret: bool,
}

/// A value as typed on the command line: JSON numbers, booleans and arrays stay typed.
fn typed(v: &str) -> Value {
    match serde_json::from_str::<Value>(v) {
        Ok(x @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_))) => x,
        _ => Value::String(v.to_string()),
    }
}

/// The entry a `profile set` writes.
pub fn entry_value(p: &ProfileSet) -> Result<Value, String> {
    if p.id.is_empty() || p.id.contains([' ', ':', '#', '/']) {
        return Err(format!("'{}' is not a valid connection id", p.id));
    }
    let mut conn = Map::new();
    conn.insert("base-url".into(), Value::String(p.base_url.clone()));
    let mut auth = Map::new();
    auth.insert("scheme".into(), Value::String(p.scheme.clone()));
    let connection_keys = crate::config::settings::connection_keys();
    for (k, v) in &p.settings {
        if is_inline_secret(k) && !p.allow_inline_secret {
            return Err(format!(
                "--set {k}=...: a secret on the command line lands in the file and the shell \
                 history; use {k}-file or {k}-env (or --allow-inline-secret)"
            ));
        }
        // Settings that belong to the connection rather than to its scheme: the host's.
        if connection_keys.contains(k) {
            conn.insert(k.clone(), typed(v));
        } else {
            auth.insert(k.clone(), typed(v));
        }
    }
    if p.scheme != "none" || auth.len() > 1 {
        conn.insert("auth".into(), Value::Object(auth));
    }
    Ok(Value::Object(conn))
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start();
    let (k, _) = t.split_once(':')?;
    Some(k.trim().trim_matches(['"', '\'']).to_string())
}

/// Where things are: the `connections:` line, the entries' indentation, and each entry's
/// line range `[start, end)`.
struct Layout {
    connections_line: Option<usize>,
    child_indent: usize,
    entries: Vec<(String, usize, usize)>,
    block_end: usize,
}

fn layout(lines: &[&str]) -> Result<Layout, String> {
    let connections_line = lines
        .iter()
        .position(|l| indent_of(l) == 0 && key_of(l).as_deref() == Some("connections"));
    let Some(c) = connections_line else {
        return Ok(Layout {
            connections_line: None,
            child_indent: 2,
            entries: Vec::new(),
            block_end: lines.len(),
        });
    };
    let after_colon = lines[c].split_once(':').map(|x| x.1).unwrap_or("").trim();
    if !after_colon.is_empty() && !after_colon.starts_with('#') {
        return Err(
            "`connections:` is written in flow style ({...}); edit this file by hand".into(),
        );
    }
    let block_end = (c + 1..lines.len())
        .find(|&i| is_content(lines[i]) && indent_of(lines[i]) == 0)
        .unwrap_or(lines.len());
    let child_indent = (c + 1..block_end)
        .find(|&i| is_content(lines[i]))
        .map(|i| indent_of(lines[i]))
        .unwrap_or(2);
    let starts: Vec<usize> = (c + 1..block_end)
        .filter(|&i| is_content(lines[i]) && indent_of(lines[i]) == child_indent)
        .collect();
    let entries = starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            let mut end = starts.get(n + 1).copied().unwrap_or(block_end);
            // Comments and blank lines just before the next entry belong to it.
            while end > s + 1 && !is_content(lines[end - 1]) {
                end -= 1;
            }
            (key_of(lines[s]).unwrap_or_default(), s, end)
        })
        .collect();
    Ok(Layout {
        connections_line: Some(c),
        child_indent,
        entries,
        block_end,
    })
}

/// Sets (adds or replaces) one connection entry, keeping the rest of the text.
pub fn set(text: &str, id: &str, value: &Value) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let l = layout(&lines)?;
    let entry = emit::entry(id, value, l.child_indent);
    let mut out: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    match (l.connections_line, l.entries.iter().find(|(k, ..)| k == id)) {
        (_, Some((_, start, end))) => {
            out.splice(*start..*end, entry.lines().map(String::from));
        }
        (Some(_), None) => {
            // After the last entry (or right after `connections:`), before trailing comments.
            let at = l.entries.last().map(|e| e.2).unwrap_or(l.block_end);
            out.splice(at..at, entry.lines().map(String::from));
        }
        (None, None) => {
            out.push("connections:".into());
            out.extend(entry.lines().map(String::from));
        }
    }
    Ok(out.join("\n") + "\n")
}

/// Removes one connection entry; an error if there is none.
pub fn remove(text: &str, id: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let l = layout(&lines)?;
    let Some((_, start, end)) = l.entries.iter().find(|(k, ..)| k == id) else {
        return Err(format!("no connection '{id}' in the file"));
    };
    let mut out: Vec<&str> = lines.clone();
    out.drain(*start..*end);
    Ok(out.join("\n") + "\n")
}

/// What each scheme's settings schema marks as secret (`writeOnly: true`, as
/// `SecretSource::schema_properties` emits for the inline form of every secret).
///
/// Deciding by the schema, not by key names, also covers numbers, nested objects and vendor
/// keys (`pin`, `apikey`). What no schema describes is treated as secret: an unknown scheme's
/// settings (except `*-file`/`*-env`, which name where a secret is, and `scheme`), settings a
/// schema does not list, and every value under `extra-params` (vendor token parameters).
#[derive(Debug, Clone, Default)]
pub struct SecretMarks {
    schemas: std::collections::BTreeMap<String, Value>,
}

impl SecretMarks {
    /// Marks from `(scheme name, settings schema)` pairs.
    pub fn new(schemas: impl IntoIterator<Item = (String, Value)>) -> Self {
        Self {
            schemas: schemas.into_iter().collect(),
        }
    }

    /// Marks for the schemes `names`, loaded from `registry` (a scheme that cannot be loaded
    /// has no schema: all its settings count as secret).
    pub fn from_registry<'a>(
        registry: &crate::plugins::Registry,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self::new(names.into_iter().filter_map(|n| {
            registry
                .get(n)
                .ok()
                .map(|h| (h.name.clone(), h.schema.clone()))
        }))
    }

    /// JSON pointers (relative to `conn`, one connection entry) of every inline secret value.
    pub fn secrets_in_connection(&self, conn: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let Some(obj) = conn.as_object() else {
            return out;
        };
        for (k, v) in obj {
            let ptr = format!("/{}", crate::config::yaml::escape_segment(k));
            match (k.as_str(), v) {
                ("auth", Value::Array(entries)) => {
                    for (i, e) in entries.iter().enumerate() {
                        self.secrets_in_auth(e, &format!("{ptr}/{i}"), &mut out);
                    }
                }
                ("auth", e) => self.secrets_in_auth(e, &ptr, &mut out),
                // A proxy URL may carry `user:password@`.
                ("proxy", Value::Object(p)) => {
                    if let Some(Value::String(u)) = p.get("url") {
                        if url::Url::parse(u).is_ok_and(|u| u.password().is_some()) {
                            out.push(format!("{ptr}/url"));
                        }
                    }
                }
                _ if is_inline_secret(k) => out.push(ptr),
                _ => {}
            }
        }
        out
    }

    /// Whether any connection of a connections document holds a secret inline.
    pub fn document_has_secrets(&self, doc: &Value) -> bool {
        doc.get("connections")
            .and_then(Value::as_object)
            .is_some_and(|c| {
                c.values()
                    .any(|v| !self.secrets_in_connection(v).is_empty())
            })
    }

    fn secrets_in_auth(&self, entry: &Value, ptr: &str, out: &mut Vec<String>) {
        let Some(obj) = entry.as_object() else {
            return;
        };
        let schema = obj
            .get("scheme")
            .and_then(Value::as_str)
            .and_then(|s| self.schemas.get(s));
        for (k, v) in obj {
            if k == "scheme" {
                continue;
            }
            let p = format!("{ptr}/{}", crate::config::yaml::escape_segment(k));
            secrets_in_setting(k, v, schema, &p, out);
        }
    }
}

/// Whether a key names where a secret is rather than holding it.
fn names_a_source(key: &str) -> bool {
    key.ends_with("-file") || key.ends_with("-env")
}

/// Collects the secret values of one setting `key: v`, described (or not) by `parent`, the
/// schema of the object holding it.
fn secrets_in_setting(
    key: &str,
    v: &Value,
    parent: Option<&Value>,
    ptr: &str,
    out: &mut Vec<String>,
) {
    if key == "extra-params" {
        match v {
            Value::Object(m) => out.extend(
                m.keys()
                    .map(|k| format!("{ptr}/{}", crate::config::yaml::escape_segment(k))),
            ),
            _ => out.push(ptr.to_string()),
        }
        return;
    }
    if is_inline_secret(key) {
        out.push(ptr.to_string());
        return;
    }
    let Some(parent) = parent else {
        // No schema for this scheme: everything but a secret's source is treated as secret.
        if !names_a_source(key) {
            out.push(ptr.to_string());
        }
        return;
    };
    let Some(prop) = parent.get("properties").and_then(|p| p.get(key)) else {
        // Not described by the schema (a vendor extension): secret unless it names a source.
        if !names_a_source(key) {
            out.push(ptr.to_string());
        }
        return;
    };
    if prop.get("writeOnly").and_then(Value::as_bool) == Some(true) {
        out.push(ptr.to_string());
        return;
    }
    if let Value::Object(m) = v {
        if prop.get("properties").is_some() {
            for (k, x) in m {
                let p = format!("{ptr}/{}", crate::config::yaml::escape_segment(k));
                secrets_in_setting(k, x, Some(prop), &p, out);
            }
        } else {
            // An object the schema does not describe key by key: all of it is hidden.
            out.push(ptr.to_string());
        }
    }
}

/// A connection's settings for people: every secret (by [`SecretMarks`]) shown as `"***"`,
/// whatever its type; files and environment variables named.
pub fn describe(id: &str, settings: &Value, marks: &SecretMarks) -> String {
    let mut shown = settings.clone();
    for ptr in marks.secrets_in_connection(settings) {
        if let Some(v) = shown.pointer_mut(&ptr) {
            *v = Value::String("***".into());
        }
    }
    emit::entry(id, &shown, 0)
}

/// Refuses inline secrets in a `profile set` entry unless the person allowed them.
pub fn check_inline_secrets(entry: &Value, marks: &SecretMarks, allow: bool) -> Result<(), String> {
    if allow {
        return Ok(());
    }
    match marks.secrets_in_connection(entry).first() {
        Some(ptr) => {
            let key = ptr
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .replace("~1", "/")
                .replace("~0", "~");
            Err(format!(
                "--set {key}=...: that value is a secret (as the scheme's schema says); on the \
                 command line it lands in the file and the shell history; use its -file or -env \
                 form (or --allow-inline-secret)"
            ))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = "# my connections\nconnections:\n  # the first one\n  a:\n    base-url: http://a/fhir   # keep me\n\n  b:\n    base-url: http://b/fhir\n    auth: {scheme: basic, username: u, password-file: pw}\n# trailing comment\nother: 1\n";

    #[test]
    fn set_replaces_or_appends_one_entry_and_keeps_everything_else() {
        let v =
            json!({"base-url": "http://new/fhir", "auth": {"scheme": "bearer", "token-file": "t"}});
        let out = set(FILE, "b", &v).unwrap();
        assert!(out.contains("# my connections") && out.contains("# the first one"));
        assert!(out.contains("base-url: http://a/fhir   # keep me"));
        assert!(
            out.contains("  \"b\":\n    base-url: \"http://new/fhir\""),
            "{out}"
        );
        assert!(!out.contains("password-file: pw"), "{out}");
        assert!(out.contains("# trailing comment\nother: 1"), "{out}");
        let out = set(FILE, "c", &v).unwrap();
        let c = out.find("\"c\":").unwrap();
        assert!(
            c > out.find("password-file: pw").unwrap() && c < out.find("# trailing").unwrap(),
            "{out}"
        );
        assert!(set("", "x", &v)
            .unwrap()
            .starts_with("connections:\n  \"x\":"));
        assert!(set("connections: {a: {base-url: x}}\n", "x", &v).is_err());
    }

    #[test]
    fn remove_drops_only_that_entry() {
        let out = remove(FILE, "a").unwrap();
        assert!(!out.contains("http://a/fhir") && out.contains("http://b/fhir"));
        assert!(out.contains("# my connections"));
        assert!(remove(FILE, "zz").is_err());
    }

    #[test]
    fn inline_secrets_need_consent_and_are_masked() {
        let p = ProfileSet {
            id: "x".into(),
            scheme: "basic".into(),
            base_url: "http://x".into(),
            settings: vec![
                ("username".into(), "u".into()),
                ("password".into(), "CANARY".into()),
            ],
            allow_inline_secret: false,
        };
        assert!(entry_value(&p).unwrap_err().contains("password-file"));
        let v = entry_value(&ProfileSet {
            allow_inline_secret: true,
            ..p
        })
        .unwrap();
        let shown = describe("x", &v, &SecretMarks::default());
        assert!(
            shown.contains("\"***\"") && !shown.contains("CANARY"),
            "{shown}"
        );
        assert!(!is_inline_secret("password-file") && !is_inline_secret("token-url"));
    }

    /// Security boundary: `profile describe` masks by the schema's `writeOnly` marking, not by
    /// key names: numbers, nested objects, vendor keys and every `extra-params` value.
    #[test]
    fn describe_masks_every_secret_the_schema_marks() {
        let schema = json!({"type": "object", "properties": {
            "username": {"type": "string"},
            "password": {"type": "string", "writeOnly": true},
            "pin": {"writeOnly": true},
            "vault": {"type": "object", "properties": {
                "name": {"type": "string"},
                "unlock": {"type": "object", "writeOnly": true}}},
            "extra-params": {"type": "object"},
            "pin-file": {"type": "string"}}});
        let marks = SecretMarks::new([("vendor".to_string(), schema)]);
        let conn = json!({"base-url": "http://x", "auth": {"scheme": "vendor",
            "username": "visible-user", "password": 987654321, "pin": 4321,
            "vault": {"name": "visible-vault", "unlock": {"code": "CANARY-nested"}},
            "extra-params": {"apikey": "CANARY-apikey", "audience": "CANARY-aud"},
            "pin-file": "visible-file", "undocumented": "CANARY-undocumented"}});
        let shown = describe("x", &conn, &marks);
        for canary in ["987654321", "4321", "CANARY"] {
            assert!(!shown.contains(canary), "{canary} shown:\n{shown}");
        }
        for visible in [
            "visible-user",
            "visible-vault",
            "visible-file",
            "apikey",
            "http://x",
        ] {
            assert!(shown.contains(visible), "{visible} hidden:\n{shown}");
        }
        // The same marks decide the file mode and the inline-secret gate.
        assert!(marks.document_has_secrets(&json!({"connections": {"x": conn}})));
        let entry = json!({"base-url": "http://x", "auth": {"scheme": "vendor",
            "extra-params": {"tenant": "t"}}});
        assert!(check_inline_secrets(&entry, &marks, false).is_err());
        assert!(check_inline_secrets(&entry, &marks, true).is_ok());
        let entry = json!({"base-url": "http://x", "auth": {"scheme": "vendor",
            "username": "u", "pin-file": "p"}});
        assert!(check_inline_secrets(&entry, &marks, false).is_ok());
        // A password in a proxy URL is a secret too.
        let p = json!({"base-url": "http://x", "proxy": {"url": "http://u:CANARY-proxy@p:3128"}});
        assert!(!describe("x", &p, &marks).contains("CANARY"));
    }
}
