//! NDJSON checked as it streams: only complete lines that parsed as FHIR JSON are released,
//! an incomplete last line is held (at most [`MAX_LINE_BYTES`]).

use super::json_scan;
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
        // UTF-8 once for all the complete lines ('\n' never sits inside a character); only
        // when it fails is each line checked alone, for the message.
        let utf8 = std::str::from_utf8(&complete).is_ok();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &complete) {
            self.check(&complete[start..end], utf8)?;
            start = end + 1;
        }
        self.bounded()?;
        Ok(complete)
    }

    /// Checks the last line (without a newline); returns its bytes to write.
    pub fn finish(&mut self) -> Result<Vec<u8>, String> {
        let rest = std::mem::take(&mut self.partial);
        self.check(&rest, false)?;
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
