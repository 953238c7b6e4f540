//! A JSON validator for one NDJSON line that builds nothing: the same rules as parsing a
//! `serde_json::Value` (RFC 8259 syntax, escapes with paired surrogates, no control characters
//! in strings, numbers that fit an `f64`, at most 127 nested containers, nothing after the
//! value) at a few bytes per cycle: string contents are skipped eight bytes at a time.
//!
//! The caller has checked UTF-8 already (once per chunk, with the standard library's fast
//! check), so bytes of 0x80 and above need no look inside strings and are errors outside them.

/// Nested containers a `serde_json::Value` accepts (its recursion limit is 128).
const MAX_DEPTH: usize = 127;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bits of the bytes of `w` (little-endian) that may be `"`, `\` or below 0x20: the
/// lowest set bit marks the first such byte exactly (the borrows of the classic "has a zero
/// byte" test only reach bytes above a true hit), zero when there is none.
#[inline(always)]
fn special(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    quote | backslash | control
}

/// The invalid JSON marker (the caller asks serde_json for the message).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Invalid;

/// A line being scanned: its bytes and the position.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    /// The byte at `i`, or 0 past the end (0 is wrong everywhere in JSON).
    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn ws(&mut self) {
        // One comparison for the usual case: no white space at all.
        while self.at(self.i) <= b' ' && matches!(self.at(self.i), b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    /// A string starting at the quote at `i`; returns whether it held an escape.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, Invalid> {
        let b = self.b;
        let mut i = self.i + 1;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first special one (or the last eight bytes).
            while let Some(w) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
                let hits = special(u64::from_le_bytes(*w));
                if hits != 0 {
                    i += (hits.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match self.at(i) {
                b'"' if i < b.len() => {
                    self.i = i + 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    i = self.escape(i + 1)?;
                }
                c if c < 0x20 => return Err(Invalid),
                _ => i += 1,
            }
        }
    }

    /// The escape after the backslash at `i - 1`; returns the position after it.
    fn escape(&self, i: usize) -> Result<usize, Invalid> {
        match self.at(i) {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(i + 1),
            b'u' => {
                let unit = self.hex4(i + 1)?;
                match unit {
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed by a trailing one.
                        if self.at(i + 5) != b'\\' || self.at(i + 6) != b'u' {
                            return Err(Invalid);
                        }
                        match self.hex4(i + 7)? {
                            0xDC00..=0xDFFF => Ok(i + 11),
                            _ => Err(Invalid),
                        }
                    }
                    0xDC00..=0xDFFF => Err(Invalid),
                    _ => Ok(i + 5),
                }
            }
            _ => Err(Invalid),
        }
    }

    fn hex4(&self, i: usize) -> Result<u16, Invalid> {
        let mut v = 0u16;
        for k in i..i + 4 {
            let d = match self.at(k) {
                c @ b'0'..=b'9' => c - b'0',
                c @ b'a'..=b'f' => c - b'a' + 10,
                c @ b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(Invalid),
            };
            v = v << 4 | u16::from(d);
        }
        Ok(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.at(self.i).is_ascii_digit() {
            self.i += 1;
        }
        self.i - start
    }

    /// A number starting at `i`. Short plain numbers are finite; one with an exponent or
    /// over 300 integer digits is read by serde_json itself, which refuses what overflows.
    fn number(&mut self) -> Result<(), Invalid> {
        let start = self.i;
        if self.at(self.i) == b'-' {
            self.i += 1;
        }
        let int_digits = match self.at(self.i) {
            b'0' => {
                self.i += 1;
                1
            }
            b'1'..=b'9' => self.digits(),
            _ => return Err(Invalid),
        };
        if self.at(self.i) == b'.' {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        let mut plain = int_digits <= 300;
        if matches!(self.at(self.i), b'e' | b'E') {
            plain = false;
            self.i += 1;
            if matches!(self.at(self.i), b'+' | b'-') {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        if plain || serde_json::from_slice::<f64>(&self.b[start..self.i]).is_ok() {
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// An object key at `i` (a quote expected) and its colon; returns whether it is
    /// `resourceType` (escapes decoded) when `top` asks.
    #[inline(always)]
    fn key(&mut self, top: bool) -> Result<bool, Invalid> {
        self.ws();
        if self.at(self.i) != b'"' {
            return Err(Invalid);
        }
        let start = self.i;
        let escaped = self.string()?;
        let is_rt = top
            && if escaped {
                serde_json::from_slice::<String>(&self.b[start..self.i])
                    .is_ok_and(|k| k == "resourceType")
            } else {
                &self.b[start..self.i] == b"\"resourceType\""
            };
        self.ws();
        if self.at(self.i) != b':' {
            return Err(Invalid);
        }
        self.i += 1;
        Ok(is_rt)
    }
}

/// Checks one line (valid UTF-8) as JSON; `Ok(true)` when it is an object whose
/// `resourceType` (the last, when repeated) is a string.
pub(super) fn resource_line(line: &[u8]) -> Result<bool, Invalid> {
    let mut s = Scan { b: line, i: 0 };
    // The open containers, innermost last: true for an object.
    let mut stack = [false; MAX_DEPTH];
    let mut depth = 0usize;
    s.ws();
    let top_object = s.at(s.i) == b'{';
    let mut found = false;
    // The key just read is the top object's `resourceType`.
    let mut rt_key = false;
    'value: loop {
        s.ws();
        if rt_key {
            found = s.at(s.i) == b'"';
            rt_key = false;
        }
        match s.at(s.i) {
            open @ (b'{' | b'[') => {
                if depth == MAX_DEPTH {
                    return Err(Invalid);
                }
                let object = open == b'{';
                stack[depth] = object;
                depth += 1;
                s.i += 1;
                s.ws();
                let close = if object { b'}' } else { b']' };
                if s.at(s.i) != close {
                    if object {
                        rt_key = s.key(depth == 1)?;
                    }
                    continue 'value;
                }
                s.i += 1;
                depth -= 1;
            }
            b'"' => {
                s.string()?;
            }
            b'-' | b'0'..=b'9' => s.number()?,
            b't' => s.literal(b"true")?,
            b'f' => s.literal(b"false")?,
            b'n' => s.literal(b"null")?,
            _ => return Err(Invalid),
        }
        // After a value: a comma, the end of its container(s), or the end of the line.
        loop {
            s.ws();
            if depth == 0 {
                return if s.i == line.len() {
                    Ok(top_object && found)
                } else {
                    Err(Invalid)
                };
            }
            let object = stack[depth - 1];
            match (object, s.at(s.i)) {
                (_, b',') => {
                    s.i += 1;
                    if object {
                        rt_key = s.key(depth == 1)?;
                    }
                    continue 'value;
                }
                (true, b'}') | (false, b']') => {
                    s.i += 1;
                    depth -= 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}
