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
        let Some(pos) = chunk.iter().rposition(|b| *b == b'\n') else {
            return self.bounded().map(|()| Vec::new());
        };
        let rest = self.partial.split_off(old + pos + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in complete[..complete.len() - 1].split(|b| *b == b'\n') {
            self.check(line)?;
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
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| format!("line {}: not JSON ({e})", self.lines))?;
        if v.get("resourceType").and_then(|t| t.as_str()).is_none() {
            return Err(format!("line {}: not a FHIR resource", self.lines));
        }
        self.resources += 1;
        Ok(())
    }
}
