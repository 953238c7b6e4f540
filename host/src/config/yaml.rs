//! YAML to JSON with a line/column for every node, so every error can name its place.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// The largest configuration file accepted.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Where each node of the document is: by JSON pointer, for values and for mapping keys.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    values: HashMap<String, Loc>,
    keys: HashMap<String, Loc>,
}

impl Positions {
    /// The position of the node at `pointer`, or of its nearest located ancestor.
    pub fn value(&self, pointer: &str) -> Option<Loc> {
        let mut p = pointer.to_string();
        loop {
            if let Some(l) = self.values.get(&p) {
                return Some(*l);
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => return None,
            }
        }
    }

    /// The position of the mapping key that names `pointer` (falls back to the value).
    pub fn key(&self, pointer: &str) -> Option<Loc> {
        self.keys
            .get(pointer)
            .copied()
            .or_else(|| self.value(pointer))
    }
}

/// A YAML problem with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where, if known.
    pub loc: Option<Loc>,
    /// What.
    pub message: String,
}

/// Escapes one JSON-pointer segment (RFC 6901).
pub fn escape_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Parses YAML bytes into JSON plus positions.
pub fn parse(bytes: &[u8]) -> Result<(Value, Positions), YamlError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(YamlError {
            loc: None,
            message: format!(
                "the file is {} bytes; the limit is {MAX_CONFIG_BYTES} bytes",
                bytes.len()
            ),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        YamlError {
            loc: Some(Loc { line, column }),
            message: "the file is not valid UTF-8".to_string(),
        }
    })?;
    let docs = MarkedYaml::load_from_str(text).map_err(|e| YamlError {
        loc: Some(Loc {
            line: e.marker().line(),
            column: e.marker().col() + 1,
        }),
        message: format!("invalid YAML: {}", e.info()),
    })?;
    let doc = match docs.len() {
        0 => {
            return Err(YamlError {
                loc: None,
                message: "the file is empty; expected a mapping with 'connections:'".into(),
            })
        }
        1 => &docs[0],
        _ => {
            return Err(YamlError {
                loc: loc_of(&docs[1]),
                message: "expected one YAML document, found several".into(),
            })
        }
    };
    let mut positions = Positions::default();
    let value = convert(doc, "", &mut positions)?;
    Ok((value, positions))
}

fn loc_of(node: &MarkedYaml<'_>) -> Option<Loc> {
    let m = node.span.start;
    Some(Loc {
        line: m.line(),
        column: m.col() + 1,
    })
}

fn convert(node: &MarkedYaml<'_>, pointer: &str, pos: &mut Positions) -> Result<Value, YamlError> {
    if let Some(l) = loc_of(node) {
        pos.values.insert(pointer.to_string(), l);
    }
    let err = |message: String| YamlError {
        loc: loc_of(node),
        message,
    };
    Ok(match &node.data {
        YamlData::Value(s) => scalar(s).map_err(err)?,
        YamlData::Representation(text, _, _) => Value::String(text.to_string()),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(item, &format!("{pointer}/{i}"), pos)?);
            }
            Value::Array(out)
        }
        YamlData::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                    YamlData::Representation(text, _, _) => text.to_string(),
                    _ => {
                        return Err(YamlError {
                            loc: loc_of(k),
                            message: "mapping keys must be plain strings".into(),
                        })
                    }
                };
                let child = format!("{pointer}/{}", escape_segment(&key));
                if let Some(l) = loc_of(k) {
                    pos.keys.insert(child.clone(), l);
                }
                let value = convert(v, &child, pos)?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(YamlError {
                        loc: loc_of(k),
                        message: format!("duplicate key '{key}'"),
                    });
                }
            }
            Value::Object(out)
        }
        YamlData::Tagged(tag, _) => {
            return Err(err(format!(
                "YAML tags are not supported here (found !{})",
                tag.suffix
            )))
        }
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(err(
                "unresolvable value: an unknown anchor, or an alias expansion over the limit \
                 (alias bombs are refused)"
                    .into(),
            ))
        }
    })
}

fn scalar(s: &Scalar<'_>) -> Result<Value, String> {
    Ok(match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => match Number::from_f64(f.into_inner()) {
            Some(n) => Value::Number(n),
            None => return Err("numbers must be finite".into()),
        },
        Scalar::String(s) => Value::String(s.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_for_values_and_keys() {
        let (v, p) = parse(b"connections:\n  a:\n    base-url: http://x\n").unwrap();
        assert_eq!(v["connections"]["a"]["base-url"], "http://x");
        assert_eq!(
            p.value("/connections/a/base-url"),
            Some(Loc {
                line: 3,
                column: 15
            })
        );
        assert_eq!(
            p.key("/connections/a/base-url"),
            Some(Loc { line: 3, column: 5 })
        );
        // unknown pointers fall back to the nearest ancestor
        assert_eq!(p.value("/connections/a/nope"), p.value("/connections/a"));
    }

    #[test]
    fn duplicate_keys_bad_utf8_and_alias_bombs_are_errors() {
        let e = parse(b"a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains("dup"), "{e:?}");
        let e = parse(b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!(e.loc, Some(Loc { line: 2, column: 4 }));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!(
                "b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = parse(bomb.as_bytes()).unwrap_err();
        assert!(e.message.contains("alias"), "{e:?}");
    }
}
