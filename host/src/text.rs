//! Text from outside (servers, authorities, plugins) made safe for a terminal or a log:
//! control characters and bidi overrides shown escaped, one-line forms cut at a length.

/// Whether a terminal or a log viewer would act on `c` rather than show it: C0 controls,
/// DEL, C1 controls (e.g. U+009B, a one-byte CSI) and the Unicode bidirectional overrides
/// and isolates that reorder what is shown.
fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write as _;
    if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

/// Text from outside (a server, an authority, a plugin) made safe for a terminal or a log,
/// keeping its lines: `\n` and `\t` stay, every other control character (ESC, BEL, CR, DEL,
/// C1 such as U+009B) and the bidi overrides are shown escaped (`\x1b`, `\u{9b}`) instead of
/// acting on the terminal.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if is_unsafe_char(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// A URL as shown in logs and messages: no user info or fragment, and the query's values
/// elided (`?name=…&birthdate=…`): pre-signed file URLs carry their signature in the query
/// (a capability for patient data) and FHIR searches carry patient details there. A name is
/// shown only as written (not decoded), with a value, and when it looks like a parameter name
/// (at most 64 of `A-Za-z0-9_.:-`); anything else — a bare token as the whole query, an
/// encoded `=` — is shown as `…`.
pub fn shown_url(u: &url::Url) -> String {
    let mut shown = u.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    let plain = |n: &str| {
        (1..=64).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    };
    let names: Vec<String> = u
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if plain(name) => format!("{name}=\u{2026}"),
            _ => "\u{2026}".to_string(),
        })
        .collect();
    shown.set_query(None);
    let mut out = shown.to_string();
    if !names.is_empty() {
        out.push('?');
        out.push_str(&names.join("&"));
    }
    sanitize_line(&out, 300)
}

/// Like [`sanitize`], for text shown on one line (a diagnosis, a PASS line): line breaks and
/// tabs become spaces, and anything past `max` characters is cut with a note.
pub fn sanitize_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 16));
    let mut total = 0usize;
    for c in s.chars() {
        total += 1;
        if total > max {
            continue;
        }
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if is_unsafe_char(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    if total > max {
        out.push_str(&format!("… ({} more characters)", total - max));
    }
    out
}

/// JSON text (as serde_json writes it) with the characters it leaves raw but a terminal acts
/// on (DEL, C1 controls, bidi overrides) written as `\uXXXX` escapes: the same JSON value,
/// safe to print. Raw control characters outside strings cannot occur in valid JSON.
pub fn json_text_safe(json: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe_char(c) && !matches!(c, '\n' | '\t' | '\r') {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Text that came from a plugin, made fit for a terminal and a log: control characters
/// (terminal escapes, NULs, bells) are shown escaped, line breaks become spaces, and anything
/// past 1,000 characters is cut with a note. Plugins are trusted code, but not trusted to be
/// tidy (and they pass on what servers say).
pub fn plugin_text(s: &str) -> String {
    sanitize_line(s, 1000)
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn shown_urls_keep_parameter_names_and_drop_values_user_info_and_fragments() {
        let u = url::Url::parse(
            "https://u:p@files.example/f.ndjson?X-Amz-Signature=s3cr3t&name=Smith&flag#frag",
        )
        .unwrap();
        let shown = shown_url(&u);
        assert_eq!(
            shown,
            "https://files.example/f.ndjson?X-Amz-Signature=\u{2026}&name=\u{2026}&\u{2026}"
        );
        for gone in ["s3cr3t", "Smith", "frag", "u:p@", "flag"] {
            assert!(!shown.contains(gone), "{gone} in {shown}");
        }
        // A bare token as the whole query, an encoded `=`, an odd name: never shown.
        for hidden in [
            "https://h/f?S3CRETcapability",
            "https://h/f?a%3DS3CRET",
            "https://h/f?S3CRET%20x=1",
        ] {
            let shown = shown_url(&url::Url::parse(hidden).unwrap());
            assert!(!shown.contains("S3CRET"), "{hidden}: {shown}");
        }
        let plain = url::Url::parse("http://127.0.0.1:8080/fhir/metadata").unwrap();
        assert_eq!(shown_url(&plain), "http://127.0.0.1:8080/fhir/metadata");
        let hostile = url::Url::parse("https://h/p?%1b[2J=x").unwrap();
        assert!(!shown_url(&hostile).contains('\u{1b}'));
    }
}
