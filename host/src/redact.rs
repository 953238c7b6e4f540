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
///
/// Redaction is bounded, because the text often comes from a hostile server that knows a
/// secret (it received the bearer token) and can shape text to make matching slow: at most
/// [`MAX_REDACTED_BYTES`] of a text are shown (the rest is cut, never shown unchecked), at most
/// [`MAX_SECRETS`] secrets are kept (the oldest are forgotten first: expired tokens), and the
/// matching work per call has a budget; when it runs out the text is withheld, not shown.
///
/// Names are not secrets: an occurrence of a secret that lies inside a longer name the host
/// knows — a setting name from the composed schema (`private-key-password`) or an OAuth
/// parameter (`client_secret`), as a whole word of identifier characters `[A-Za-z0-9_-]` — is
/// left as is, so `password: password` does not turn `private-key-password is set` into
/// `private-key-[REDACTED] is set`. The secret itself is still removed everywhere else: as
/// a whole word even when that word is a name (`password=password` shows
/// `[REDACTED]=[REDACTED]`), encoded, and where it runs past a name or sits in a longer word
/// that is no name (`private-key-passwordX`, `mypassword1`). What is left unredacted is a
/// public name, shown the same whatever the secret is: it reveals nothing about it.
#[derive(Default)]
pub struct Redactor {
    secrets: Mutex<Secrets>,
    /// Setting and parameter names (never redacted inside: see above).
    names: Mutex<std::sync::Arc<std::collections::HashSet<String>>>,
    /// Single-use secrets (per-request signatures), newest last: kept apart so that one per
    /// request never pushes the long-lived secrets out of [`MAX_SECRETS`].
    transient: Mutex<std::collections::VecDeque<Vec<char>>>,
}

/// How many single-use secrets a redactor remembers besides the long-lived ones.
pub const MAX_TRANSIENT_SECRETS: usize = 64;

/// The remembered secrets, longest first, each with the order it was added in.
#[derive(Default)]
struct Secrets {
    list: Vec<(u64, Vec<char>)>,
    added: u64,
}

/// The longest text [`Redactor::redact`] returns (longer texts are cut before matching).
pub const MAX_REDACTED_BYTES: usize = 1 << 20;
/// How many secrets a redactor remembers (a long-running proxy sees many tokens).
pub const MAX_SECRETS: usize = 1024;
/// Matching steps one [`Redactor::redact`] call may spend before it withholds the text.
const REDACT_BUDGET: u64 = 20_000_000;
/// What is shown instead of a text that could not be checked within the budget.
pub const WITHHELD: &str = "[text withheld: it could not be checked for secrets]";

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

/// Bytes of an identifier word: a match inside a longer known name made of them is a name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether the match `start..end` in `text` lies inside a longer word that is a known name.
fn inside_a_name(
    text: &[u8],
    start: usize,
    end: usize,
    names: &std::collections::HashSet<String>,
) -> bool {
    if !text[start..end].iter().all(|&b| is_name_byte(b)) {
        return false;
    }
    let from = text[..start]
        .iter()
        .rposition(|&b| !is_name_byte(b))
        .map_or(0, |p| p + 1);
    let to = text[end..]
        .iter()
        .position(|&b| !is_name_byte(b))
        .map_or(text.len(), |p| end + p);
    (from, to) != (start, end)
        && std::str::from_utf8(&text[from..to]).is_ok_and(|w| {
            names.contains(w) || SECRET_PARAMETERS.contains(&w) || PROTOCOL_NAMES.contains(&w)
        })
}

/// OAuth names that appear in the host's and plugins' messages besides the
/// [`SECRET_PARAMETERS`].
const PROTOCOL_NAMES: &[&str] = &[
    "client_id",
    "grant_type",
    "token_type",
    "expires_in",
    "token_endpoint",
    "client_assertion_type",
    "authorization_endpoint",
];

impl Redactor {
    /// Registers names that are never secrets (setting names): a secret found inside a
    /// longer one is not redacted there (see [`Redactor`]).
    pub fn add_names<I, S>(&self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::sync::Arc::make_mut(&mut set).extend(names.into_iter().map(Into::into));
    }

    /// Registers every property name in a JSON Schema (the composed schema: the host's
    /// settings and each scheme's) with [`Redactor::add_names`].
    pub fn add_schema_names(&self, schema: &serde_json::Value) {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some(serde_json::Value::Object(props)) = o.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    o.values().for_each(|x| walk(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut names = Vec::new();
        walk(schema, &mut names);
        self.add_names(names);
    }

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
        if v.list.iter().any(|(_, x)| *x == chars) {
            return;
        }
        if v.list.len() >= MAX_SECRETS {
            if let Some(oldest) = (0..v.list.len()).min_by_key(|&i| v.list[i].0) {
                v.list.remove(oldest);
            }
        }
        v.added += 1;
        let seq = v.added;
        // Longest first, so a secret containing another is removed whole.
        let at = v.list.partition_point(|(_, x)| x.len() >= chars.len());
        v.list.insert(at, (seq, chars));
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

    /// Adds a single-use secret (a per-request signature, a value that changes with every
    /// request): remembered among the last [`MAX_TRANSIENT_SECRETS`] such values, so a
    /// value repeated on every request stays, and the long-lived secrets are never pushed
    /// out. Cheap enough for every request.
    pub fn add_transient(&self, secret: &str) {
        let s = secret.trim();
        if s.chars().count() < 4 {
            return;
        }
        let chars: Vec<char> = s.chars().collect();
        let mut ring = self
            .transient
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = ring.iter().position(|x| *x == chars) {
            ring.remove(at);
        } else if ring.len() >= MAX_TRANSIENT_SECRETS {
            ring.pop_front();
        }
        ring.push_back(chars);
    }

    /// Replaces every known secret in `text`, in any of the forms it travels in.
    pub fn redact(&self, text: &str) -> String {
        // A snapshot: matching runs without the lock, so a slow text delays no other thread.
        let mut secrets: Vec<Vec<char>> = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .list
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        {
            let ring = self
                .transient
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !ring.is_empty() {
                secrets.extend(ring.iter().cloned());
                // Longest first, so a secret containing another is removed whole.
                secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
            }
        }
        let names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let names: &std::collections::HashSet<String> = &names;
        let mut out = cut(text);
        let mut budget = REDACT_BUDGET;
        for s in &secrets {
            match replace_encoded(&out, s, names, &mut budget) {
                Some(next) => out = next,
                None => return WITHHELD.to_string(),
            }
        }
        out
    }
}

/// `text`, cut to [`MAX_REDACTED_BYTES`] at a character boundary, saying how much was cut.
fn cut(text: &str) -> String {
    if text.len() <= MAX_REDACTED_BYTES {
        return text.to_string();
    }
    let mut end = MAX_REDACTED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [... {} more bytes not shown]",
        &text[..end],
        text.len() - end
    )
}

const REDACTED: &str = "[REDACTED]";

/// `text` with every occurrence of `secret` (in any encoding [`Redactor`] knows) replaced;
/// `None` when the matching work ran past `budget`.
fn replace_encoded(
    text: &str,
    secret: &[char],
    names: &std::collections::HashSet<String>,
    budget: &mut u64,
) -> Option<String> {
    let Some(&first) = secret.first() else {
        return Some(text.to_string());
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
        *budget = budget.checked_sub(1)?;
        if candidate && text.is_char_boundary(i) {
            let found = match_encoded(bytes, i, secret, &mut scratch, budget)?;
            if let Some(end) = found.filter(|&end| !inside_a_name(bytes, i, end, names)) {
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
    Some(out)
}

/// Where a match of `secret` starting at `start` ends (the longest one), if any; `None` when
/// the work ran past `budget`.
fn match_encoded(
    text: &[u8],
    start: usize,
    secret: &[char],
    (positions, next): &mut (Vec<usize>, Vec<usize>),
    budget: &mut u64,
) -> Option<Option<usize>> {
    positions.clear();
    positions.push(start);
    for &c in secret {
        next.clear();
        *budget = budget.checked_sub(positions.len() as u64)?;
        for &p in positions.iter() {
            encoded_char_ends(text, p, c, next);
        }
        if next.is_empty() {
            return Some(None);
        }
        if next.len() > 1 {
            next.sort_unstable();
            next.dedup();
        }
        std::mem::swap(positions, next);
    }
    Some(positions.last().copied())
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

    /// A hostile server that received the token answers with a large text made of near-copies
    /// of it: redaction stays bounded in time and never shows unchecked text.
    #[test]
    fn hostile_text_cannot_make_redaction_slow_or_leak() {
        let r = Redactor::default();
        let token = format!("{}CANARY", "a".repeat(2000));
        r.add(&token);
        // Every position starts a match that fails only near its end: quadratic without the
        // budget (2 * 10^9 steps), bounded with it.
        let hostile = "a".repeat(MAX_REDACTED_BYTES - 10) + &token;
        let started = std::time::Instant::now();
        let out = r.redact(&hostile);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        assert!(!out.contains(&token), "the token leaked");
        // A long text is cut, and what is shown was checked.
        let long = format!("{}{token}", "x".repeat(MAX_REDACTED_BYTES + 10));
        let out = r.redact(&long);
        assert!(out.len() < MAX_REDACTED_BYTES + 100 && out.contains("more bytes not shown"));
    }

    #[test]
    fn the_oldest_secrets_are_forgotten_first() {
        let r = Redactor::default();
        for i in 0..MAX_SECRETS + 5 {
            r.add(&format!("CANARY-old-{i:05}"));
        }
        let newest = format!("CANARY-old-{:05}", MAX_SECRETS + 4);
        assert_eq!(r.redact(&newest), REDACTED);
        assert_eq!(r.redact("CANARY-old-00000"), "CANARY-old-00000");
        assert_eq!(r.secrets.lock().unwrap().list.len(), MAX_SECRETS);
    }

    #[test]
    fn per_request_signatures_never_push_long_lived_secrets_out() {
        let r = Redactor::default();
        r.add("CANARY-session-token");
        for i in 0..MAX_SECRETS * 2 {
            r.add_transient(&format!("SIG-{i:06}"));
            // a value sent with every request stays however many others pass
            r.add_transient("CANARY-every-request");
        }
        assert_eq!(r.redact("CANARY-session-token"), REDACTED);
        assert_eq!(r.redact("CANARY-every-request"), REDACTED);
        let last = format!("SIG-{:06}", MAX_SECRETS * 2 - 1);
        assert_eq!(r.redact(&last), REDACTED);
        assert_eq!(r.redact("SIG-000000"), "SIG-000000");
        assert_eq!(r.transient.lock().unwrap().len(), MAX_TRANSIENT_SECRETS);
    }

    /// DSF's example `password: 'password'`: the setting names around it survive; the secret
    /// is still removed wherever it is a value (a word of its own, in a URL, in JSON,
    /// percent-encoded, running past a name).
    #[test]
    fn setting_names_survive_and_the_secret_in_a_value_does_not() {
        let r = Redactor::default();
        r.add("password");
        r.add_names([
            "private-key-password",
            "private-key-password-file",
            "password",
        ]);
        for kept in [
            "private-key-password is set, but the key is not encrypted",
            "auth.private-key-password-file: cannot read",
            "client_secret missing",
        ] {
            assert_eq!(r.redact(kept), kept);
        }
        for (text, shown) in [
            ("password", "[REDACTED]"),
            (
                "private-key-password: password",
                "private-key-password: [REDACTED]",
            ),
            (
                "https://h/t?private-key-password=password&x=1",
                "https://h/t?private-key-password=[REDACTED]&x=1",
            ),
            (
                r#"{"password":"password"}"#,
                r#"{"[REDACTED]":"[REDACTED]"}"#,
            ),
            ("user:password@h", "user:[REDACTED]@h"),
            ("pass%77ord", "[REDACTED]"),
            // Past the end of a name, or inside a word that is no name: a value.
            ("private-key-passwordX", "private-key-[REDACTED]X"),
            ("mypassword123", "my[REDACTED]123"),
            ("x-private-key-password", "x-private-key-[REDACTED]"),
        ] {
            assert_eq!(r.redact(text), shown, "{text}");
        }
    }

    /// The names come from the composed schema (every `properties` key, nested too).
    #[test]
    fn schema_property_names_are_names() {
        let r = Redactor::default();
        r.add("hunter22");
        r.add_schema_names(&serde_json::json!({"$defs": {"scheme-x": {"oneOf": [
            {"properties": {"hunter22-file": {}, "scheme": {}}}]}}}));
        assert_eq!(r.redact("set hunter22-file"), "set hunter22-file");
        assert_eq!(
            r.redact("hunter22 hunter22-env"),
            "[REDACTED] [REDACTED]-env"
        );
    }
}
