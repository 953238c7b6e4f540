//! Validates a document against the composed schema and words each error for a person,
//! at the line and column of the offending node. Values are never echoed (they may be secrets).

use super::Document;
use crate::error::ConfigError;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

/// Validates `doc` against `schema`; an empty vector means valid.
pub fn validate(doc: &Document, schema: &Value) -> Vec<ConfigError> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![doc.error_at(
                "",
                false,
                format!(
                    "internal error: the composed schema is invalid: {}",
                    e.masked()
                ),
            )]
        }
    };
    let mut out: Vec<ConfigError> = Vec::new();
    for err in validator.iter_errors(&doc.value) {
        let pointer = err.instance_path().as_str().to_string();
        for (ptr, key, message) in describe(&err, &pointer, schema) {
            let e = doc.error_at(&ptr, key, message);
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out.sort_by_key(|e| (e.line, e.column));
    out
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Returns (pointer, point-at-key, message) triples for one validation error.
fn describe(
    err: &jsonschema::ValidationError<'_>,
    pointer: &str,
    schema: &Value,
) -> Vec<(String, bool, String)> {
    let one = |m: String| vec![(pointer.to_string(), false, m)];
    match err.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            vec![(
                pointer.to_string(),
                true,
                format!("missing required field '{name}'"),
            )]
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|u| {
                (
                    format!("{pointer}/{}", super::yaml::escape_segment(u)),
                    true,
                    format!("unknown field '{u}'"),
                )
            })
            .collect(),
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => format!("{t}"),
                TypeKind::Multiple(ts) => format!("{ts:?}"),
            }
            .replace("object", "mapping")
            .replace("array", "list");
            let article = if expected.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            let found = type_name(err.instance());
            one(format!("must be {article} {expected}, found {found}"))
        }
        ValidationErrorKind::OneOfNotValid { context } => {
            one(one_of_not_valid(err, context, schema))
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            one(exactly_one(err, schema, false).unwrap_or_else(|| err.masked().to_string()))
        }
        ValidationErrorKind::Pattern { pattern } => {
            if pattern == super::duration::PATTERN {
                let s = err.instance().as_str().unwrap_or_default();
                one(super::duration::parse(s)
                    .err()
                    .unwrap_or_else(|| "not an ISO-8601 duration such as PT30S".to_string()))
            } else {
                one(format!("does not match the pattern {pattern}"))
            }
        }
        ValidationErrorKind::PropertyNames { .. } => {
            let ids: Vec<String> = err
                .instance()
                .as_object()
                .map(|o| o.keys().filter(|k| !id_is_valid(k)).cloned().collect())
                .unwrap_or_default();
            ids.into_iter()
                .map(|id| {
                    (
                        format!("{pointer}/{}", super::yaml::escape_segment(&id)),
                        true,
                        format!(
                            "connection id '{id}' may contain only letters, digits, '.', '_' \
                             and '-', and must start with a letter or digit"
                        ),
                    )
                })
                .collect()
        }
        ValidationErrorKind::Enum { options } => one(format!("must be one of {options}")),
        ValidationErrorKind::Constant { expected_value } => {
            one(format!("must be {expected_value}"))
        }
        ValidationErrorKind::MinLength { .. } => one("must not be empty".to_string()),
        ValidationErrorKind::MinItems { limit } => {
            one(format!("must have at least {limit} item(s)"))
        }
        _ => one(err.masked().to_string()),
    }
}

/// Words a failed `oneOf`: "exactly one of ... must be set" for the secret-setting fragments,
/// "must be a string or a list" for branches of one type each.
fn one_of_not_valid(
    err: &jsonschema::ValidationError<'_>,
    context: &[Vec<jsonschema::ValidationError<'_>>],
    schema: &Value,
) -> String {
    // Our "exactly one of x, x-file, x-env" fragments: every branch is one `required`.
    let names: Option<Vec<String>> = context
        .iter()
        .map(|branch| match branch.as_slice() {
            [e] => match e.kind() {
                ValidationErrorKind::Required { property } => property.as_str().map(String::from),
                _ => None,
            },
            _ => None,
        })
        .collect();
    // Branches that each accept one JSON type: "must be a string or a list".
    let types: Option<Vec<String>> = context
        .iter()
        .map(|branch| match branch.as_slice() {
            [e] => match e.kind() {
                ValidationErrorKind::Type {
                    kind: TypeKind::Single(t),
                } => Some(
                    format!("{t}")
                        .replace("object", "mapping")
                        .replace("array", "list"),
                ),
                _ => None,
            },
            _ => None,
        })
        .collect();
    match (names, types) {
        (Some(n), _) if !n.is_empty() => {
            format!("exactly one of {} must be set; none is", quoted(&n))
        }
        (_, Some(t)) if !t.is_empty() => {
            format!(
                "must be a {}, found {}",
                t.join(" or a "),
                type_name(err.instance())
            )
        }
        _ => {
            // Branches like `{required: [x], not: {...}}`: say which ones are present.
            exactly_one(err, schema, true).unwrap_or_else(|| err.masked().to_string())
        }
    }
}

/// "exactly one of 'x', 'x-file', 'x-env' must be set; found 'x' and 'x-file'" (or "; none
/// is", when `none_too`), from the names the branches of the failed `oneOf` require.
fn exactly_one(
    err: &jsonschema::ValidationError<'_>,
    schema: &Value,
    none_too: bool,
) -> Option<String> {
    let names = one_of_required_names(schema, err.schema_path().as_str());
    let present: Vec<String> = names
        .iter()
        .filter(|n| err.instance().get(n.as_str()).is_some())
        .map(|p| format!("'{p}'"))
        .collect();
    match present.len() {
        0 if none_too && !names.is_empty() => Some(format!(
            "exactly one of {} must be set; none is",
            quoted(&names)
        )),
        n if n > 1 => Some(format!(
            "exactly one of {} must be set; found {}",
            quoted(&names),
            present.join(" and ")
        )),
        _ => None,
    }
}

fn id_is_valid(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Finds the `oneOf` at a keyword location and returns the names its branches require.
fn one_of_required_names(schema: &Value, schema_path: &str) -> Vec<String> {
    // The keyword location may pass through `$ref`s; follow them while walking.
    let mut node = schema;
    for raw in schema_path.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        if seg == "$ref" {
            if let Some(target) = node.get("$ref").and_then(Value::as_str) {
                if let Some(p) = target.strip_prefix('#') {
                    if let Some(n) = schema.pointer(p) {
                        node = n;
                        continue;
                    }
                }
            }
            return Vec::new();
        }
        node = match node {
            Value::Object(o) => match o.get(&seg) {
                Some(n) => n,
                None => return Vec::new(),
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(n) => n,
                None => return Vec::new(),
            },
            _ => return Vec::new(),
        };
    }
    node.as_array()
        .map(|branches| {
            branches
                .iter()
                .filter_map(|b| b.get("required")?.get(0)?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
