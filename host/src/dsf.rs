//! `fhirconn import dsf`: converts a DSF BPE "FHIR client connections" YAML (the value of
//! `DEV_DSF_BPE_FHIR_CLIENT_CONNECTIONS_CONFIG`, or a file holding that variable) into a
//! fhirconn connections file, and reports every setting that has no equivalent.

use crate::config::settings::kind as host_kind;
use crate::config::Document;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The result of a conversion.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The fhirconn connections file, as YAML text.
    pub yaml: String,
    /// What could not be carried over, one line each (`connection: setting: why`).
    pub notes: Vec<String>,
    /// Every secret copied inline into `yaml`, as `connection: setting` (the output must then
    /// be private; each is better moved to its `-file` or `-env` form).
    pub inline_secrets: Vec<String>,
}

/// DSF writes YAML 1.1 booleans (`yes`/`no`); fhirconn's YAML is 1.2.
fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" | "y" => Some(true),
            "no" | "false" | "off" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Copies `dsf` (inline) and `dsf-file` to `ours` and `ours-file`; an inline value is
/// recorded in `inline` as `id: ours`.
fn copy_secret(
    from: &Map<String, Value>,
    dsf: &str,
    to: &mut Map<String, Value>,
    ours: &str,
    (id, inline): (&str, &mut Vec<String>),
) {
    for (suffix_in, suffix_out) in [("", ""), ("-file", "-file")] {
        if let Some(v) = from.get(&format!("{dsf}{suffix_in}")) {
            to.insert(format!("{ours}{suffix_out}"), v.clone());
            if suffix_in.is_empty() {
                inline.push(format!("{id}: {ours}"));
            }
        }
    }
}

fn convert_auth(
    id: &str,
    kind: &str,
    a: &Map<String, Value>,
    notes: &mut Vec<String>,
    inline: &mut Vec<String>,
) -> Option<Value> {
    let mut out = Map::new();
    let known: &[&str] = match kind {
        "basic-auth" => {
            out.insert("scheme".into(), json!("basic"));
            if let Some(u) = a.get("username") {
                out.insert("username".into(), u.clone());
            }
            copy_secret(a, "password", &mut out, "password", (id, inline));
            &["username", "password", "password-file"]
        }
        "bearer-auth" => {
            out.insert("scheme".into(), json!("bearer"));
            copy_secret(a, "token", &mut out, "token", (id, inline));
            &["token", "token-file"]
        }
        "cert-auth" => {
            out.insert("scheme".into(), json!("mtls"));
            for k in ["certificate-file", "private-key-file", "p12-file"] {
                if let Some(v) = a.get(k) {
                    out.insert(k.into(), v.clone());
                }
            }
            // DSF's one `password` opens a PKCS#12 file or decrypts the PEM key.
            let password = if a.contains_key("p12-file") {
                "p12-password"
            } else {
                "private-key-password"
            };
            copy_secret(a, "password", &mut out, password, (id, inline));
            &[
                "certificate-file",
                "private-key-file",
                "p12-file",
                "password",
                "password-file",
            ]
        }
        "oidc-auth" => {
            out.insert("scheme".into(), json!("oidc-client-credentials"));
            if let Some(v) = a.get("base-url") {
                // DSF strips a trailing `/` from the provider's base URL before it appends
                // the discovery path; the issuer check then compares without it.
                let v = match v {
                    Value::String(u) => json!(u.trim_end_matches('/')),
                    other => other.clone(),
                };
                out.insert("issuer".into(), v);
            }
            for k in ["discovery-path", "client-id"] {
                if let Some(v) = a.get(k) {
                    out.insert(k.into(), v.clone());
                }
            }
            copy_secret(a, "client-secret", &mut out, "client-secret", (id, inline));
            &[
                "base-url",
                "discovery-path",
                "client-id",
                "client-secret",
                "client-secret-file",
            ]
        }
        other => {
            notes.push(format!(
                "{id}: {other}: no fhirconn scheme corresponds; left out"
            ));
            return None;
        }
    };
    for k in a.keys().filter(|k| !known.contains(&k.as_str())) {
        notes.push(format!("{id}: {kind}.{k}: no equivalent setting; left out"));
    }
    Some(Value::Object(out))
}

/// Converts DSF connections. `path` is used in messages only.
pub fn import(path: &Path, bytes: &[u8]) -> Result<Imported, String> {
    let doc = Document::parse(path, bytes).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let mut root = doc.value.clone();
    // A file holding the environment variable itself: its value is the YAML.
    if let Some(inner) = root
        .get("DEV_DSF_BPE_FHIR_CLIENT_CONNECTIONS_CONFIG")
        .and_then(Value::as_str)
    {
        root = Document::parse(path, inner.as_bytes())
            .map_err(|e| {
                format!(
                    "{} (inside DEV_DSF_BPE_FHIR_CLIENT_CONNECTIONS_CONFIG)",
                    e[0]
                )
            })?
            .value;
    }
    let Value::Object(connections) = root else {
        return Err(format!(
            "{}: expected a mapping of connection ids",
            path.display()
        ));
    };
    let mut notes = Vec::new();
    let mut inline_secrets = Vec::new();
    let mut out = Map::new();
    for (id, c) in &connections {
        let Value::Object(c) = c else {
            notes.push(format!("{id}: not a mapping; left out"));
            continue;
        };
        let mut conn = Map::new();
        let mut auth = Vec::new();
        for (k, v) in c {
            match k.as_str() {
                // DSF names its connection settings as fhirconn does: the host's definition
                // says which exist and which are booleans (DSF writes them as text too).
                k if host_kind(k).as_deref() == Some("boolean") => match boolean(v) {
                    Some(b) => {
                        conn.insert(k.to_string(), json!(b));
                    }
                    None => notes.push(format!("{id}: {k}: '{v}' is not a boolean; left out")),
                },
                // DSF's `proxy` (with its own credentials) is no fhirconn `proxy`: only plain
                // values carry over.
                k if matches!(host_kind(k).as_deref(), Some("string" | "integer")) => {
                    conn.insert(k.to_string(), v.clone());
                }
                "basic-auth" | "bearer-auth" | "cert-auth" | "oidc-auth" => match v {
                    Value::Object(a) => {
                        if let Some(x) = convert_auth(id, k, a, &mut notes, &mut inline_secrets) {
                            auth.push((k.clone(), x));
                        }
                    }
                    _ => notes.push(format!("{id}: {k}: not a mapping; left out")),
                },
                other => notes.push(format!("{id}: {other}: no equivalent setting; left out")),
            }
        }
        // DSF trusts exactly the roots in `trusted-root-certificates-file`, not the system's.
        if conn.contains_key("trusted-root-certificates-file")
            && !conn.contains_key("use-system-roots")
        {
            conn.insert("use-system-roots".into(), json!(false));
        }
        // A certificate first: later schemes' token requests present it.
        auth.sort_by_key(|(k, _)| (k != "cert-auth") as u8);
        match auth.len() {
            0 => {}
            1 => {
                conn.insert("auth".into(), auth.remove(0).1);
            }
            _ => {
                conn.insert(
                    "auth".into(),
                    Value::Array(auth.into_iter().map(|(_, v)| v).collect()),
                );
            }
        }
        out.insert(id.clone(), Value::Object(conn));
    }
    let mut yaml = String::from(
        "# Converted from a DSF FHIR client connections file by `fhirconn import dsf`.\n\
         # Relative paths were relative to the DSF BPE's working directory; check them.\n\
         connections:\n",
    );
    for (id, conn) in &out {
        yaml.push_str(&crate::config::emit::entry(id, conn, 2));
    }
    Ok(Imported {
        yaml,
        notes,
        inline_secrets,
    })
}
