//! Writes connection entries as YAML text (block style, JSON-quoted scalars, which YAML reads
//! as double-quoted strings), keys in reading order: `scheme`, `base-url`, the rest, `auth`.

use serde_json::{Map, Value};

/// One `ID:` entry with its settings, indented by `indent` spaces.
pub fn entry(id: &str, settings: &Value, indent: usize) -> String {
    let mut out = format!(
        "{}{}:\n",
        " ".repeat(indent),
        scalar(&Value::String(id.to_string()))
    );
    if let Value::Object(m) = settings {
        for (k, v) in ordered(m) {
            emit(&mut out, indent + 2, k, v);
        }
    }
    out
}

/// A YAML scalar: JSON's string syntax is YAML's double-quoted style.
pub fn scalar(v: &Value) -> String {
    v.to_string()
}

/// Keys in the order a person reads them: `scheme` and `base-url` first.
fn ordered(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by_key(|(k, _)| match k.as_str() {
        "scheme" => 0,
        "base-url" => 1,
        "auth" => 3,
        _ => 2,
    });
    v
}

/// Appends `key: v` to `out` at `indent` spaces (objects and lists as nested blocks).
pub fn emit(out: &mut String, indent: usize, key: &str, v: &Value) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (k, x) in ordered(m) {
                emit(out, indent + 2, k, x);
            }
        }
        Value::Array(items) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for item in items {
                match item {
                    Value::Object(m) => {
                        let mut first = true;
                        for (k, x) in ordered(m) {
                            let lead = if first {
                                format!("{pad}  - ")
                            } else {
                                format!("{pad}    ")
                            };
                            first = false;
                            let mut line = String::new();
                            emit(&mut line, 0, k, x);
                            // Re-indent nested lines under the list item.
                            for (i, l) in line.lines().enumerate() {
                                if i == 0 {
                                    out.push_str(&format!("{lead}{l}\n"));
                                } else {
                                    out.push_str(&format!("{pad}    {l}\n"));
                                }
                            }
                        }
                    }
                    other => out.push_str(&format!("{pad}  - {}\n", scalar(other))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{key}: {}\n", scalar(other))),
    }
}
