//! The JSON Schema of the connections file: the host's part (derived from
//! [`settings::HostSettings`]) composed with each scheme's.

use super::settings;
use serde_json::{json, Map, Value};

/// One scheme's contribution: its name and the schema of its settings.
#[derive(Debug, Clone)]
pub struct SchemePart {
    /// The scheme name.
    pub name: String,
    /// One-line summary (used as the schema description).
    pub summary: String,
    /// The scheme's settings schema (without `scheme`).
    pub schema: Value,
}

/// Pattern for connection ids (they appear in URLs of the local proxy and in file names).
pub const ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

/// Pattern for scheme names: names, never paths (the loader checks the same).
pub const SCHEME_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]*$";

/// Composes the whole schema from the host's part and the schemes'.
pub fn compose(schemes: &[SchemePart]) -> Value {
    let mut defs = Map::new();
    let mut names: Vec<&str> = schemes.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    let mut branches = Vec::new();
    for s in schemes {
        let mut schema = match &s.schema {
            Value::Object(o) => o.clone(),
            _ => Map::new(),
        };
        // The `scheme` key lives beside the settings; `additionalProperties: false` must see it.
        let props = schema
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(p) = props {
            p.insert("scheme".into(), json!({"const": s.name}));
        }
        schema
            .entry("description")
            .or_insert_with(|| Value::String(s.summary.clone()));
        let def = format!("scheme-{}", s.name);
        defs.insert(def.clone(), Value::Object(schema));
        branches.push(json!({
            "if": {"properties": {"scheme": {"const": s.name}}, "required": ["scheme"]},
            "then": {"$ref": format!("#/$defs/{def}")}
        }));
    }
    defs.insert(
        "auth".into(),
        json!({
            "type": "object",
            "description": "an authentication scheme and its settings",
            "required": ["scheme"],
            "properties": {"scheme": {"type": "string", "pattern": SCHEME_NAME_PATTERN, "enum": names}},
            "allOf": branches,
        }),
    );
    let connection = connection_schema(&mut defs);
    defs.insert("connection".into(), connection);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fhirconn connections",
        "description": "FHIR server connections for fhirconn, keyed by connection id",
        "type": "object",
        "required": ["connections"],
        "additionalProperties": false,
        "properties": {
            "connections": {
                "type": "object",
                "propertyNames": {"pattern": ID_PATTERN},
                "additionalProperties": {"$ref": "#/$defs/connection"}
            },
            (super::fleet::CREDENTIAL_CACHE): super::fleet::schema(),
        },
        "$defs": defs,
    })
}

/// The connection entry: the derived schema of [`settings::HostSettings`] plus `auth`.
fn connection_schema(defs: &mut Map<String, Value>) -> Value {
    let (mut connection, host_defs) = settings::schema();
    for (name, def) in host_defs {
        defs.entry(name).or_insert(def);
    }
    if let Some(Value::Object(props)) = connection.get_mut("properties") {
        props.insert(
            settings::AUTH.into(),
            json!({
                "if": {"type": "array"},
                "then": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/auth"}},
                "else": {"$ref": "#/$defs/auth"}
            }),
        );
    }
    Value::Object(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_schema_is_valid_and_checks_scheme_settings() {
        let schema = compose(&[SchemePart {
            name: "basic".into(),
            summary: "basic".into(),
            schema: json!({"type": "object", "required": ["username"],
                           "properties": {"username": {"type": "string"}},
                           "additionalProperties": false}),
        }]);
        let v = jsonschema::validator_for(&schema).unwrap();
        let ok = json!({"connections": {"a": {"base-url": "http://x",
                        "auth": {"scheme": "basic", "username": "u"}}}});
        assert!(v.is_valid(&ok));
        let missing = json!({"connections": {"a": {"base-url": "http://x",
                        "auth": {"scheme": "basic"}}}});
        assert!(!v.is_valid(&missing));
        let list = json!({"connections": {"a": {"base-url": "http://x",
                        "auth": [{"scheme": "basic", "username": "u"}]}}});
        assert!(v.is_valid(&list));
    }
}
