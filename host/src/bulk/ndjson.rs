//! NDJSON checked as it streams: only complete lines that parsed as FHIR JSON are released,
//! an incomplete last line is held (at most [`MAX_LINE_BYTES`]).
//!
//! One buffer per download: chunks are appended to it, the complete lines in what arrived are
//! checked in place, and the checked bytes at its front are handed to the writer when there
//! are enough of them for one large write ([`NdjsonCheck::push`], [`NdjsonCheck::checked`],
//! [`NdjsonCheck::consume`]): no allocation per chunk, one copy of each byte.

use super::json_scan;
use super::*;

/// Checks NDJSON as it streams and hands back only the bytes of complete lines that passed:
/// every non-blank line must be a JSON object with a `resourceType`. The incomplete last line
/// stays here (at most [`MAX_LINE_BYTES`]) until its newline or [`NdjsonCheck::finish`].
#[derive(Debug, Default)]
pub struct NdjsonCheck {
    /// Checked complete lines (`..checked`), then the incomplete last line.
    buf: Vec<u8>,
    checked: usize,
    count: Count,
}

/// Lines and resources seen.
#[derive(Debug, Default)]
struct Count {
    lines: u64,
    resources: u64,
}

impl NdjsonCheck {
    /// Feeds a chunk; returns the checked bytes to write (complete lines only).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        self.push(chunk)?;
        let rest = self.buf.split_off(self.checked);
        self.checked = 0;
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// Appends a chunk and checks the lines it completes; their bytes join
    /// [`NdjsonCheck::checked`]. On an error nothing more may be fed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), String> {
        let old = self.buf.len();
        self.buf.extend_from_slice(chunk);
        if let Some(pos) = memchr::memrchr(b'\n', chunk) {
            let end = old + pos + 1;
            let complete = &self.buf[self.checked..end];
            // UTF-8 once for all the complete lines ('\n' never sits inside a character); only
            // when it fails is each line checked alone, for the message.
            let utf8 = simdutf8::basic::from_utf8(complete).is_ok();
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', complete) {
                self.count.check(&complete[start..nl], utf8)?;
                start = nl + 1;
            }
            self.checked = end;
        }
        self.bounded()
    }

    /// The checked bytes not yet consumed (complete lines).
    pub fn checked(&self) -> &[u8] {
        &self.buf[..self.checked]
    }

    /// Drops the checked bytes (written); the incomplete line moves to the front.
    pub fn consume(&mut self) {
        self.buf.drain(..self.checked);
        self.checked = 0;
    }

    /// Checks the last line (without a newline); returns its bytes to write, after the
    /// checked ones not yet consumed.
    pub fn finish(&mut self) -> Result<Vec<u8>, String> {
        let rest = std::mem::take(&mut self.buf);
        self.count.check(&rest[self.checked..], false)?;
        self.checked = 0;
        Ok(rest)
    }

    /// Resources seen so far.
    pub fn resources(&self) -> u64 {
        self.count.resources
    }

    fn bounded(&self) -> Result<(), String> {
        if self.buf.len() - self.checked > MAX_LINE_BYTES {
            return Err(format!(
                "line {} is longer than {} MiB",
                self.count.lines + 1,
                MAX_LINE_BYTES >> 20
            ));
        }
        Ok(())
    }
}

impl Count {
    /// Checks one line; `utf8`: it is known to be valid UTF-8.
    fn check(&mut self, line: &[u8], utf8: bool) -> Result<(), String> {
        self.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if !utf8 {
            std::str::from_utf8(line)
                .map_err(|e| format!("line {}: not JSON (not UTF-8: {e})", self.lines))?;
        }
        match json_scan::resource_line(line) {
            Ok(true) => {
                self.resources += 1;
                Ok(())
            }
            Ok(false) => Err(format!("line {}: not a FHIR resource", self.lines)),
            // serde_json, which the scan agrees with, says what is wrong.
            Err(json_scan::Invalid) => {
                Err(match serde_json::from_slice::<serde_json::Value>(line) {
                    Err(e) => format!("line {}: not JSON ({e})", self.lines),
                    Ok(_) => format!("line {}: not JSON", self.lines),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffered API of the download loop: checked bytes are exactly the complete lines
    /// that passed, consumed ones are gone, the incomplete line waits for its newline.
    #[test]
    fn only_complete_checked_lines_are_offered_and_the_incomplete_one_waits() {
        let mut c = NdjsonCheck::default();
        c.push(b"{\"resourceType\":\"A\"}\n{\"resource").unwrap();
        assert_eq!(c.checked(), b"{\"resourceType\":\"A\"}\n");
        c.push(b"Type\":\"B\"}\n{\"resourceType\":").unwrap();
        assert_eq!(
            c.checked(),
            b"{\"resourceType\":\"A\"}\n{\"resourceType\":\"B\"}\n"
        );
        c.consume();
        assert_eq!(c.checked(), b"");
        c.push(b"\"C\"}\n\n{\"resourceType\":\"D\"}").unwrap();
        assert_eq!(c.checked(), b"{\"resourceType\":\"C\"}\n\n");
        // `finish` gives what was checked but not consumed, then the last line, checked.
        assert_eq!(
            c.finish().unwrap(),
            b"{\"resourceType\":\"C\"}\n\n{\"resourceType\":\"D\"}"
        );
        assert_eq!(c.resources(), 4);
    }

    #[test]
    fn a_failing_line_is_never_offered_and_neither_is_anything_after_it() {
        let mut c = NdjsonCheck::default();
        c.push(b"{\"resourceType\":\"A\"}\n").unwrap();
        let err = c
            .push(b"{\"resourceType\":\"B\"}\n{\"id\":1}\n{\"resourceType\":\"C\"}\n")
            .unwrap_err();
        assert!(err.starts_with("line 3: not a FHIR resource"), "{err}");
        assert_eq!(c.checked(), b"{\"resourceType\":\"A\"}\n");
        // A line that fails after a consume: the error counts lines from the start.
        let mut c = NdjsonCheck::default();
        c.push(b"{\"resourceType\":\"A\"}\n").unwrap();
        c.consume();
        let err = c.push(b"{\"resourceType\":\"A\"\n").unwrap_err();
        assert!(err.starts_with("line 2: not JSON"), "{err}");
        assert_eq!(c.checked(), b"");
        // Invalid UTF-8 in a chunk of otherwise good lines.
        let mut c = NdjsonCheck::default();
        let err = c
            .push(b"{\"resourceType\":\"A\"}\n{\"resourceType\":\"\xff\"}\n")
            .unwrap_err();
        assert!(err.contains("line 2: not JSON (not UTF-8"), "{err}");
        assert_eq!(c.checked(), b"");
    }

    #[test]
    fn the_incomplete_line_is_bounded_after_consumed_bytes_too() {
        let mut c = NdjsonCheck::default();
        c.push(b"{\"resourceType\":\"A\"}\n").unwrap();
        let chunk = vec![b' '; 1 << 20];
        let mut failed = None;
        for _ in 0..=(MAX_LINE_BYTES >> 20) {
            if let Err(e) = c.push(&chunk) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("an endless line must be refused");
        assert!(e.starts_with("line 2 is longer than 64 MiB"), "{e}");
    }
}
