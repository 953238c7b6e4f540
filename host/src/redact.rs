//! The secret redactor: remembers secret values and removes them, in every encoding they
//! travel in, from text before it is logged or shown.

use std::sync::Mutex;

/// Remembers secret values and removes them from text before it is logged or shown.
///
/// A secret is found in every form it commonly travels in, not only verbatim: each character
/// may appear percent-encoded (`%7E` or `%7e`, UTF-8 bytes), a space as `+`
/// (`application/x-www-form-urlencoded`), JSON-escaped (`\/`, `\"`, `\u00xx`) or as an HTML
/// character reference (`&amp;`, `&#43;`), in any mix. Base64 forms are registered explicitly
/// (see [`Redactor::add_header_value`]).
#[derive(Default)]
pub struct Redactor {
    secrets: Mutex<Vec<Vec<char>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor([REDACTED])")
    }
}

/// Request and response fields whose values are secrets wherever they appear (OAuth 2.0
/// form and JSON parameters: RFC 6749, 7521/7523, 7636, 8628, 8693).
pub const SECRET_PARAMETERS: &[&str] = &[
    "client_secret",
    "client_assertion",
    "assertion",
    "refresh_token",
    "access_token",
    "id_token",
    "code",
    "code_verifier",
    "device_code",
    "password",
    "subject_token",
    "actor_token",
    "token",
];

/// Header names whose values are credentials even when a plugin forgot to mark them.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization"];

impl Redactor {
    /// Adds a secret (values shorter than 4 characters are ignored: too common to redact).
    pub fn add(&self, secret: &str) {
        let s = secret.trim();
        if s.chars().count() < 4 {
            return;
        }
        let chars: Vec<char> = s.chars().collect();
        let mut v = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !v.contains(&chars) {
            v.push(chars);
            // Longest first, so a secret containing another is removed whole.
            v.sort_by_key(|x| std::cmp::Reverse(x.len()));
        }
    }

    /// Adds a credential header value and its parts: `Bearer <t>`, `Basic <b64>`, the decoded
    /// `user:password` and the password.
    pub fn add_header_value(&self, value: &str) {
        self.add(value);
        if let Some((scheme, rest)) = value.trim().split_once(' ') {
            self.add(rest);
            if scheme.eq_ignore_ascii_case("basic") {
                use base64::Engine as _;
                if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) {
                    if let Ok(text) = String::from_utf8(decoded) {
                        self.add(&text);
                        if let Some((_, pw)) = text.split_once(':') {
                            self.add(pw);
                        }
                    }
                }
            }
        }
    }

    /// Registers the secrets a plugin's HTTP request carries: credential headers (marked
    /// sensitive, or named `Authorization`) and the [`SECRET_PARAMETERS`] of a form or JSON
    /// body (client secrets, signed client assertions, refresh tokens, codes).
    /// Headers are `(name, value, sensitive)`.
    pub fn add_from_request<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
        body: &[u8],
    ) {
        for (name, value, sensitive) in headers {
            let name = name.to_ascii_lowercase();
            if sensitive || CREDENTIAL_HEADERS.contains(&name.as_str()) {
                self.add_header_value(value);
            }
        }
        self.add_body_parameters(body);
    }

    /// Registers the [`SECRET_PARAMETERS`] of a form (`a=b&c=d`) or JSON object body, e.g.
    /// the tokens a token endpoint issued.
    pub fn add_body_parameters(&self, body: &[u8]) {
        let Ok(text) = std::str::from_utf8(body) else {
            return;
        };
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            if let Ok(serde_json::Value::Object(map)) =
                serde_json::from_str::<serde_json::Value>(trimmed)
            {
                for (k, v) in &map {
                    if let (true, Some(s)) = (SECRET_PARAMETERS.contains(&k.as_str()), v.as_str()) {
                        self.add(s);
                    }
                }
            }
        } else if text.contains('=') {
            for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
                if SECRET_PARAMETERS.contains(&k.as_ref()) {
                    self.add(&v);
                }
            }
        }
    }

    /// Replaces every known secret in `text`, in any of the forms it travels in.
    pub fn redact(&self, text: &str) -> String {
        let v = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = text.to_string();
        for s in v.iter() {
            out = replace_encoded(&out, s);
        }
        out
    }
}

const REDACTED: &str = "[REDACTED]";

/// `text` with every occurrence of `secret` (in any encoding [`Redactor`] knows) replaced.
fn replace_encoded(text: &str, secret: &[char]) -> String {
    let Some(&first) = secret.first() else {
        return text.to_string();
    };
    let mut first_buf = [0u8; 4];
    let first_byte = first.encode_utf8(&mut first_buf).as_bytes()[0];
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    let mut scratch = (Vec::new(), Vec::new());
    while i < bytes.len() {
        let b = bytes[i];
        let candidate =
            b == first_byte || b == b'%' || b == b'\\' || b == b'&' || (b == b'+' && first == ' ');
        if candidate && text.is_char_boundary(i) {
            if let Some(end) = match_encoded(bytes, i, secret, &mut scratch) {
                out.push_str(&text[copied..i]);
                out.push_str(REDACTED);
                copied = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// Where a match of `secret` starting at `start` ends (the longest one), if any.
fn match_encoded(
    text: &[u8],
    start: usize,
    secret: &[char],
    (positions, next): &mut (Vec<usize>, Vec<usize>),
) -> Option<usize> {
    positions.clear();
    positions.push(start);
    for &c in secret {
        next.clear();
        for &p in positions.iter() {
            encoded_char_ends(text, p, c, next);
        }
        if next.is_empty() {
            return None;
        }
        if next.len() > 1 {
            next.sort_unstable();
            next.dedup();
        }
        std::mem::swap(positions, next);
    }
    positions.last().copied()
}

fn hex_value(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// Pushes the end of every encoding of `c` that starts at `p`.
fn encoded_char_ends(text: &[u8], p: usize, c: char, ends: &mut Vec<usize>) {
    let rest = &text[p.min(text.len())..];
    let mut buf = [0u8; 4];
    let utf8 = c.encode_utf8(&mut buf).as_bytes();
    // Verbatim.
    if rest.starts_with(utf8) {
        ends.push(p + utf8.len());
    }
    match rest.first() {
        // Form encoding of a space.
        Some(b'+') if c == ' ' => ends.push(p + 1),
        // Percent-encoding of every UTF-8 byte, either case.
        Some(b'%') => {
            let all = utf8.iter().enumerate().all(|(k, &byte)| {
                let at = 3 * k;
                rest.get(at) == Some(&b'%')
                    && matches!(
                        (rest.get(at + 1).and_then(|&h| hex_value(h)),
                         rest.get(at + 2).and_then(|&l| hex_value(l))),
                        (Some(h), Some(l)) if h * 16 + l == u32::from(byte)
                    )
            });
            if all {
                ends.push(p + 3 * utf8.len());
            }
        }
        // JSON string escapes.
        Some(b'\\') => {
            let short = match c {
                '"' => Some(b'"'),
                '\\' => Some(b'\\'),
                '/' => Some(b'/'),
                '\n' => Some(b'n'),
                '\r' => Some(b'r'),
                '\t' => Some(b't'),
                '\u{8}' => Some(b'b'),
                '\u{c}' => Some(b'f'),
                _ => None,
            };
            if short.is_some() && rest.get(1).copied() == short {
                ends.push(p + 2);
            }
            if rest.get(1) == Some(&b'u') && rest.len() >= 6 {
                let v = rest[2..6]
                    .iter()
                    .try_fold(0u32, |acc, &h| hex_value(h).map(|d| acc * 16 + d));
                if v == Some(c as u32) {
                    ends.push(p + 6);
                }
            }
        }
        // HTML character references.
        Some(b'&') => {
            let named: &[u8] = match c {
                '&' => b"&amp;",
                '<' => b"&lt;",
                '>' => b"&gt;",
                '"' => b"&quot;",
                '\'' => b"&apos;",
                _ => b"",
            };
            if !named.is_empty() && rest.starts_with(named) {
                ends.push(p + named.len());
            }
            if rest.get(1) == Some(&b'#') {
                let (radix, digits_at) = match rest.get(2) {
                    Some(b'x' | b'X') => (16, 3),
                    _ => (10, 2),
                };
                let digits = rest[digits_at.min(rest.len())..]
                    .iter()
                    .take(8)
                    .take_while(|b| (**b as char).is_digit(radix))
                    .count();
                let semi = digits_at + digits;
                if digits > 0 && rest.get(semi) == Some(&b';') {
                    let n = std::str::from_utf8(&rest[digits_at..semi])
                        .ok()
                        .and_then(|d| u32::from_str_radix(d, radix).ok());
                    if n == Some(c as u32) {
                        ends.push(p + semi + 1);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_removes_header_parts_and_basic_passwords() {
        let r = Redactor::default();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("user:CANARY-pw");
        r.add_header_value(&format!("Basic {b64}"));
        r.add_header_value("Bearer CANARY-token");
        let out = r.redact(&format!("x CANARY-pw y {b64} z CANARY-token"));
        assert!(!out.contains("CANARY"), "{out}");
        assert!(!out.contains(&b64), "{out}");
    }
}
