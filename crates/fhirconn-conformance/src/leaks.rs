//! Every form in which a secret can leak into output: as configured, percent-encoded (RFC 3986
//! and HTML-form style), JSON-escaped (with and without `\u` escapes for non-ASCII), base64 (of
//! the secret and of `user:secret`, raw and form-encoded as RFC 6749 §2.3.1 has it, standard
//! and URL-safe alphabets).

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Forms shorter than this are too common to be evidence of a leak.
pub const MIN_LEN: usize = 8;

/// RFC 3986 unreserved characters stay as they are.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// JSON string escaping as serde_json writes it (non-ASCII kept).
fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default()
        .to_string()
}

/// JSON string escaping with every non-ASCII character as `\uXXXX` (UTF-16).
fn json_escape_ascii(s: &str) -> String {
    let mut out = String::new();
    for c in json_escape(s).chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Base64 of `bytes` wherever they sit in a longer base64 text: for each of the three
/// alignments, the characters that depend on `bytes` alone.
fn base64_anywhere(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for pad in 0..3usize {
        let mut padded = vec![0u8; pad];
        padded.extend_from_slice(bytes);
        // The first characters mix padding bits (0, 2 or 3 of them); the last group may
        // mix in whatever follows the secret.
        let skip = [0, 2, 3][pad];
        let whole = padded.len() / 3 * 4;
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let text = engine.encode(&padded);
            if let Some(core) = text.get(skip..whole.min(text.len())) {
                out.push(core.to_string());
            }
        }
    }
    out
}

fn base64_forms(bytes: &[u8]) -> [String; 2] {
    // Padding only appends to the unpadded form, so searching the unpadded one finds both.
    [
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ]
}

/// Each form of each secret, with what it is (for the failure message), without duplicates
/// and without forms shorter than [`MIN_LEN`].
pub fn forms(secrets: &[String], users: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |form: String, what: String| {
        if form.len() >= MIN_LEN && !out.iter().any(|(f, _)| *f == form) {
            out.push((form, what));
        }
    };
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        let n = s.chars().count();
        let what = |how: &str| format!("a secret ({n} chars) {how}");
        add(s.clone(), what("as configured"));
        add(
            utf8_percent_encode(s, NON_ALPHANUMERIC).to_string(),
            what("percent-encoded"),
        );
        add(
            utf8_percent_encode(s, RFC3986).to_string(),
            what("percent-encoded"),
        );
        add(form_encode(s), what("form-encoded"));
        add(json_escape(s), what("JSON-escaped"));
        add(json_escape_ascii(s), what("JSON-escaped"));
        for u in users {
            for pair in [
                format!("{u}:{s}"),
                format!("{}:{}", form_encode(u), form_encode(s)),
            ] {
                for b in base64_forms(pair.as_bytes()) {
                    add(b, what("in base64 of user:secret"));
                }
            }
        }
        for b in base64_forms(s.as_bytes())
            .into_iter()
            .chain(base64_anywhere(s.as_bytes()))
        {
            add(b, what("in base64"));
        }
    }
    out
}

/// The first leak found in `text`, described without the secret.
pub fn find(text: &str, secrets: &[String], users: &[String]) -> Option<String> {
    forms(secrets, users)
        .into_iter()
        .find(|(form, _)| text.contains(form.as_str()))
        .map(|(_, what)| format!("{what} appeared in the output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_of_a_secret_is_found_and_short_ones_are_ignored() {
        let secret = "CANARY-p:ä ss/€";
        // "client 01:" is 10 bytes: not a multiple of 3, so base64 of `user:secret` does not
        // contain base64 of the secret (that alignment is caught as "in base64").
        let user = "client 01";
        let secrets = vec![secret.to_string(), "short".to_string()];
        let users = vec![user.to_string()];
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let leaks = [
            (secret.to_string(), "as configured"),
            (
                "CANARY-p%3A%C3%A4%20ss%2F%E2%82%AC".to_string(),
                "percent-encoded",
            ),
            (
                "CANARY-p%3A%C3%A4+ss%2F%E2%82%AC".to_string(),
                "form-encoded",
            ),
            ("CANARY-p:\\u00e4 ss/\\u20ac".to_string(), "JSON-escaped"),
            (b64(secret), "in base64"),
            (b64(&format!("{user}:{secret}")), "user:secret"),
            (
                b64("client+01:CANARY-p%3A%C3%A4+ss%2F%E2%82%AC"),
                "user:secret",
            ),
        ];
        for (leak, what) in leaks {
            let text = format!("log line: {leak} end");
            let found = find(&text, &secrets, &users).unwrap_or_else(|| panic!("{leak}"));
            assert!(found.contains(what), "{leak}: {found}");
            assert!(!found.contains("CANARY"), "{found}");
        }
        assert_eq!(find("short and CANARY-p", &secrets, &users), None);
        // Base64 of the secret inside base64 of anything else, at each alignment.
        for prefix in ["", "x", "xy", "someone-else:"] {
            let text = b64(&format!("{prefix}{secret} and more"));
            let found = find(&text, &secrets, &[]).unwrap_or_else(|| panic!("{prefix}"));
            assert!(found.contains("in base64"), "{prefix}: {found}");
        }
    }
}
