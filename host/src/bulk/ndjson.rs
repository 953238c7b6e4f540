//! NDJSON checked as it streams: only complete lines that parsed as FHIR JSON are released,
//! an incomplete last line is held (at most [`MAX_LINE_BYTES`]).

use super::*;

/// Checks NDJSON as it streams and hands back only the bytes of complete lines that passed:
/// every non-blank line must be a JSON object with a `resourceType`. The incomplete last line
/// stays here (at most [`MAX_LINE_BYTES`]) until its newline or [`NdjsonCheck::finish`].
#[derive(Debug, Default)]
pub struct NdjsonCheck {
    partial: Vec<u8>,
    lines: u64,
    resources: u64,
}

impl NdjsonCheck {
    /// Feeds a chunk; returns the checked bytes to write (complete lines only).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        let old = self.partial.len();
        self.partial.extend_from_slice(chunk);
        let Some(pos) = memchr::memrchr(b'\n', chunk) else {
            return self.bounded().map(|()| Vec::new());
        };
        let rest = self.partial.split_off(old + pos + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &complete) {
            self.check(&complete[start..end])?;
            start = end + 1;
        }
        self.bounded()?;
        Ok(complete)
    }

    /// Checks the last line (without a newline); returns its bytes to write.
    pub fn finish(&mut self) -> Result<Vec<u8>, String> {
        let rest = std::mem::take(&mut self.partial);
        self.check(&rest)?;
        Ok(rest)
    }

    /// Resources seen so far.
    pub fn resources(&self) -> u64 {
        self.resources
    }

    fn bounded(&self) -> Result<(), String> {
        if self.partial.len() > MAX_LINE_BYTES {
            return Err(format!(
                "line {} is longer than {} MiB",
                self.lines + 1,
                MAX_LINE_BYTES >> 20
            ));
        }
        Ok(())
    }

    fn check(&mut self, line: &[u8]) -> Result<(), String> {
        self.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        // UTF-8 first (parsing a `&str` then skips no check a `Value` would have made), then
        // the whole line parsed without building it: only `resourceType` is looked at.
        let text = std::str::from_utf8(line)
            .map_err(|e| format!("line {}: not JSON (not UTF-8: {e})", self.lines))?;
        let Probe(resource) = serde_json::from_str(text)
            .map_err(|e| format!("line {}: not JSON ({e})", self.lines))?;
        if !resource {
            return Err(format!("line {}: not a FHIR resource", self.lines));
        }
        self.resources += 1;
        Ok(())
    }
}

/// One JSON value parsed in full, with the same rules as a `serde_json::Value` (syntax,
/// escapes, number ranges, nesting depth) but without building it: whether it is an object
/// whose `resourceType` is a string (the last one, when repeated, as a `Value` keeps).
struct Probe(bool);

impl<'de> serde::Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbeVisitor { top: true }).map(Probe)
    }
}

/// `top`: an object is looked into; otherwise (the value of `resourceType`) a string is true.
struct ProbeVisitor {
    top: bool,
}

/// Any value below the top: whether it is a string (what `resourceType` must be).
struct IsString(bool);

impl<'de> serde::Deserialize<'de> for IsString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbeVisitor { top: false }).map(IsString)
    }
}

/// An object key: whether it is `resourceType`.
struct IsResourceTypeKey(bool);

impl<'de> serde::Deserialize<'de> for IsResourceTypeKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<bool, E> {
                Ok(v == "resourceType")
            }
        }
        d.deserialize_str(Key).map(IsResourceTypeKey)
    }
}

impl<'de> serde::de::Visitor<'de> for ProbeVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(!self.top)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IsString>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(IsResourceTypeKey(key)) = map.next_key()? {
            let IsString(string) = map.next_value()?;
            if key {
                found = string;
            }
        }
        Ok(found && self.top)
    }
}
