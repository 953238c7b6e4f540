//! YAML to JSON with a line/column for every node, so every error can name its place.
//!
//! Input is bounded before saphyr builds a tree: size, nesting depth and alias expansion are
//! checked on the parser's events ([`MAX_CONFIG_BYTES`], [`MAX_DEPTH`], [`MAX_NODES`]), so any
//! file parses in bounded memory and stack, or is refused with its line and column.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

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

/// The largest configuration file accepted (a connections file is a few kilobytes).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// The deepest nesting of sequences and mappings accepted, aliases expanded.
pub const MAX_DEPTH: usize = 64;
/// The most nodes a document may hold, every alias counted at the size of what it repeats.
pub const MAX_NODES: u64 = 20_000;
/// The most bytes of scalars (values and keys) a document may expand to, aliases included.
pub const MAX_SCALAR_BYTES: u64 = 2 * 1024 * 1024;
/// The most bytes of JSON pointers (one per node, for error positions) a document may need.
pub const MAX_POINTER_BYTES: u64 = 4 * 1024 * 1024;

/// What a document expands to so far, or what one anchored node costs where it is used.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    nodes: u64,
    scalar_bytes: u64,
    /// Pointer bytes relative to the node itself (add `nodes × its own pointer length`).
    pointer_bytes: u64,
    /// Collection levels below and including the node (0 for a scalar).
    height: usize,
}

/// An open sequence or mapping in the pre-pass.
struct Open {
    anchor: usize,
    is_map: bool,
    children: u64,
    /// Length of this collection's JSON pointer.
    pointer_len: u64,
    /// In a mapping: the length of the pointer segment of the key just read.
    key_segment: u64,
    /// Totals when it opened (to compute its own cost when it closes).
    start: Cost,
    height: usize,
}

/// Why a key that is not a plain string is refused.
const KEYS_ARE_STRINGS: &str =
    "mapping keys must be plain strings (no anchors, aliases, sequences or mappings in keys)";

/// Where a node sits under `parent`: in a mapping's key position, and its pointer's length.
fn position(parent: Option<&Open>) -> (bool, u64) {
    match parent {
        None => (false, 0),
        Some(o) if o.is_map && o.children % 2 == 0 => (true, o.pointer_len),
        Some(o) if o.is_map => (false, o.pointer_len + o.key_segment),
        Some(o) => {
            let index_digits = (o.children.max(1).ilog10() + 1) as u64;
            (false, o.pointer_len + 1 + index_digits)
        }
    }
}

/// The document's expanded size so far against the limits.
fn check_totals(total: &Cost) -> Result<(), String> {
    if total.nodes > MAX_NODES {
        return Err(format!(
            "the document expands to more than {MAX_NODES} nodes (every alias counts at \
             the size of what it repeats)"
        ));
    }
    if total.scalar_bytes > MAX_SCALAR_BYTES {
        return Err(format!(
            "the document expands to more than {MAX_SCALAR_BYTES} bytes of text (every \
             alias counts at the size of what it repeats)"
        ));
    }
    if total.pointer_bytes > MAX_POINTER_BYTES {
        return Err(format!(
            "the document is too large once expanded (more than {MAX_POINTER_BYTES} bytes \
             of paths: long keys, deep nesting or aliases)"
        ));
    }
    Ok(())
}

/// A bounded pass over the parser's events, before any tree is built: saphyr's loader clones
/// every alias (its own budget charges a complex key as one node, so an alias bomb hidden in
/// keys grows to gigabytes), and deep nesting overflows recursive code. This refuses
///
/// - nesting deeper than [`MAX_DEPTH`] (aliases expanded),
/// - documents expanding to more than [`MAX_NODES`] nodes, [`MAX_SCALAR_BYTES`] of scalars or
///   [`MAX_POINTER_BYTES`] of error-position pointers (aliases counted where they are used,
///   at the full size of the anchored node, nodes inside keys included),
/// - anchors, aliases and collections inside mapping keys (keys are plain strings),
///
/// each with the place of the event that crossed the line.
fn bounded_prepass(text: &str) -> Result<(), YamlError> {
    use saphyr_parser::{Event, Parser};
    let mut total = Cost::default();
    let mut anchors: HashMap<usize, Cost> = HashMap::new();
    let mut stack: Vec<Open> = Vec::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            loc: Some(Loc {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            }),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let loc = Some(Loc {
            line: span.start.line(),
            column: span.start.col() + 1,
        });
        let err = |message: String| YamlError { loc, message };
        let (in_key, pointer_len) = position(stack.last());
        let keys_are_strings = || err(KEYS_ARE_STRINGS.into());
        // The node this event completes (its anchor, and its cost where it is used).
        let done: Option<(usize, Cost)> = match event {
            Event::Scalar(value, _, anchor, _) => {
                if in_key && anchor != 0 {
                    return Err(keys_are_strings());
                }
                let len = value.len() as u64;
                let segment = if in_key { 1 + len } else { 0 };
                let pointer = pointer_len + segment;
                total.nodes += 1;
                total.scalar_bytes += len;
                total.pointer_bytes += pointer;
                if in_key {
                    if let Some(o) = stack.last_mut() {
                        o.key_segment = segment;
                    }
                }
                let cost = Cost {
                    nodes: 1,
                    scalar_bytes: len,
                    ..Cost::default()
                };
                Some((anchor, cost))
            }
            Event::Alias(id) => {
                if in_key {
                    return Err(keys_are_strings());
                }
                let Some(c) = anchors.get(&id).copied() else {
                    return Err(err("an alias to an unknown anchor".into()));
                };
                if stack.len() + c.height > MAX_DEPTH {
                    return Err(err(format!(
                        "this alias nests deeper than {MAX_DEPTH} levels where it is used"
                    )));
                }
                total.nodes = total.nodes.saturating_add(c.nodes);
                total.scalar_bytes = total.scalar_bytes.saturating_add(c.scalar_bytes);
                total.pointer_bytes = total
                    .pointer_bytes
                    .saturating_add(c.pointer_bytes)
                    .saturating_add(c.nodes.saturating_mul(pointer_len));
                Some((0, c))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if in_key {
                    return Err(keys_are_strings());
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(err(format!(
                        "nesting deeper than {MAX_DEPTH} levels is not accepted"
                    )));
                }
                let start = total;
                total.nodes += 1;
                total.pointer_bytes += pointer_len;
                stack.push(Open {
                    anchor,
                    is_map: matches!(event, Event::MappingStart(..)),
                    children: 0,
                    pointer_len,
                    key_segment: 0,
                    start,
                    height: 1,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(o) = stack.pop() else { continue };
                let nodes = total.nodes - o.start.nodes;
                Some((
                    o.anchor,
                    Cost {
                        nodes,
                        scalar_bytes: total.scalar_bytes - o.start.scalar_bytes,
                        pointer_bytes: (total.pointer_bytes - o.start.pointer_bytes)
                            .saturating_sub(nodes.saturating_mul(o.pointer_len)),
                        height: o.height,
                    },
                ))
            }
            _ => None,
        };
        check_totals(&total).map_err(err)?;
        if let Some((anchor, cost)) = done {
            if anchor != 0 {
                anchors.insert(anchor, cost);
            }
            if let Some(parent) = stack.last_mut() {
                parent.children += 1;
                parent.height = parent.height.max(cost.height + 1);
            }
        }
    }
    Ok(())
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
    bounded_prepass(text)?;
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

    #[test]
    fn input_is_bounded_before_a_tree_is_built() {
        // Aliases inside complex keys: refused at the first key, whatever the budget says.
        let e = parse(fhirconn_testkit::hostile::documents::complex_key_alias_bomb().as_bytes())
            .unwrap_err();
        assert!(e.message.contains("plain strings"), "{e:?}");
        assert_eq!(e.loc, Some(Loc { line: 3, column: 5 }));
        // 20,000 levels of `- - - x`: refused at level 65, no stack overflow.
        let deep = "- ".repeat(20_000) + "x\n";
        let e = parse(deep.as_bytes()).unwrap_err();
        assert!(e.message.contains("deeper than 64"), "{e:?}");
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 1,
                column: 129
            })
        );
        let deep = "[".repeat(20_000) + &"]".repeat(20_000);
        assert!(parse(deep.as_bytes()).is_err());
        // Anchors on keys and aliases as keys.
        for y in [
            "&a k: v\n",
            "a: &x k\n*x : v\n",
            "? [a]\n: v\n",
            "? {a: b}\n: v\n",
        ] {
            let e = parse(y.as_bytes()).unwrap_err();
            assert!(e.message.contains("plain strings"), "{y}: {e:?}");
        }
        // A long string repeated by aliases: bounded by bytes, not nodes.
        let big = "s".repeat(500_000);
        let y = format!("a: &a {big}\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n");
        let e = parse(y.as_bytes()).unwrap_err();
        assert!(e.message.contains("bytes of text"), "{e:?}");
        // Long keys nested deep, then many nodes: bounded by the pointers they would need.
        let mut y = String::new();
        for d in 0..60 {
            y.push_str(&format!("{}{}:\n", "  ".repeat(d), "k".repeat(1_000)));
        }
        for _ in 0..5_000 {
            y.push_str(&format!("{}- x\n", "  ".repeat(60)));
        }
        assert!(y.len() < MAX_CONFIG_BYTES);
        let e = parse(y.as_bytes()).unwrap_err();
        assert!(e.message.contains("paths"), "{e:?}");
        // Ordinary aliases still work; the limits leave room for real files.
        let (v, _) = parse(b"d: &d {t: PT2S}\nc: {a: *d, b: *d}\n").unwrap();
        assert_eq!(v["c"]["b"]["t"], "PT2S");
        let many: String = (0..2_000)
            .map(|i| format!("c{i}:\n  base-url: http://h/{i}\n"))
            .collect();
        assert!(parse(many.as_bytes()).is_ok());
    }
}
