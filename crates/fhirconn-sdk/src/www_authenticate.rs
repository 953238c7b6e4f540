//! A forgiving parser of `WWW-Authenticate: Bearer k="v", ...` challenges (RFC 7235 §2.1
//! auth-params), e.g. the `authorization_uri` and `resource_id` that Azure FHIR services name.
//! Real servers vary: spaces around `=`, missing commas, single quotes, unquoted values (which
//! is why this is not the strict `http-auth` crate). The values are server input: a scheme
//! must check them before it acts on them.

use std::collections::HashMap;

/// The parameters of the first Bearer challenge (keys lowercased); empty if there is none.
pub fn parse(header: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let h = header.trim();
    let Some(pos) = find_bearer(h) else {
        return out;
    };
    let chars: Vec<char> = h[pos + "bearer".len()..].chars().collect();
    let mut i = 0;
    let skip = |i: &mut usize, pred: &dyn Fn(char) -> bool| {
        while *i < chars.len() && pred(chars[*i]) {
            *i += 1;
        }
    };
    loop {
        skip(&mut i, &|c| c.is_whitespace() || c == ',');
        if i >= chars.len() {
            break;
        }
        let start = i;
        skip(&mut i, &|c| !(c.is_whitespace() || c == '=' || c == ','));
        let key: String = chars[start..i]
            .iter()
            .collect::<String>()
            .to_ascii_lowercase();
        skip(&mut i, &|c| c.is_whitespace());
        if i >= chars.len() || chars[i] != '=' {
            // A new auth scheme (e.g. `, Basic realm=...`) ends the Bearer parameters.
            if !key.is_empty() && out.is_empty() {
                continue;
            }
            break;
        }
        i += 1;
        skip(&mut i, &|c| c.is_whitespace());
        let mut value = String::new();
        if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
            let quote = chars[i];
            i += 1;
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            let start = i;
            skip(&mut i, &|c| !(c.is_whitespace() || c == ','));
            value = chars[start..i].iter().collect();
        }
        if !key.is_empty() {
            out.entry(key).or_insert(value);
        }
    }
    out
}

fn find_bearer(h: &str) -> Option<usize> {
    let lower = h.to_ascii_lowercase();
    let mut from = 0;
    while let Some(p) = lower[from..].find("bearer") {
        let at = from + p;
        let before_ok = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = lower.as_bytes().get(at + 6).copied();
        let after_ok = after.is_none_or(|c| c == b' ' || c == b'\t' || c == b',');
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + 6;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn microsoft_fhir_server_challenges_in_their_many_spellings() {
        let cases = [
            r#"Bearer authorization_uri="https://login.microsoftonline.com/t1", resource_id="https://x.azurehealthcareapis.com", realm="https://x.azurehealthcareapis.com""#,
            r#"Bearer authorization_uri = "https://login.microsoftonline.com/t1" , resource_id = "https://x.azurehealthcareapis.com""#,
            r#"bearer authorization_uri="https://login.microsoftonline.com/t1",resource_id="https://x.azurehealthcareapis.com""#,
            r#"Bearer authorization_uri='https://login.microsoftonline.com/t1' resource_id='https://x.azurehealthcareapis.com'"#,
            r#"Bearer authorization_uri=https://login.microsoftonline.com/t1, resource_id=https://x.azurehealthcareapis.com"#,
            r#"Basic realm="x", Bearer Authorization_URI="https://login.microsoftonline.com/t1", Resource_Id="https://x.azurehealthcareapis.com""#,
            "Bearer\tauthorization_uri=\"https://login.microsoftonline.com/t1\",\n resource_id=\"https://x.azurehealthcareapis.com\"",
        ];
        for c in cases {
            let p = parse(c);
            assert_eq!(
                p.get("authorization_uri").map(String::as_str),
                Some("https://login.microsoftonline.com/t1"),
                "{c}"
            );
            assert_eq!(
                p.get("resource_id").map(String::as_str),
                Some("https://x.azurehealthcareapis.com"),
                "{c}"
            );
        }
    }

    #[test]
    fn no_bearer_challenge_gives_nothing_and_nothing_panics() {
        for c in [
            "",
            "Basic realm=\"x\"",
            "Bearer",
            "Bearer =",
            "Bearer a=\"unterminated",
            "Bearerx a=b",
            "Bearer ,,, =, a",
            "\u{1F600} Bearer a=\u{1F600}",
        ] {
            let _ = parse(c);
        }
        assert!(parse("Basic realm=\"x\"").is_empty());
        assert_eq!(parse("Bearer a=\"q\\\"uoted\"")["a"], "q\"uoted");
    }
}
