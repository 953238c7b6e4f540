//! What the host offers plugins and embedders around a plugin call: the secret
//! [`Redactor`], text sanitising ([`sanitize`], [`sanitize_line`], [`plugin_text`]), the
//! [`CredentialStore`] ([`MemoryStore`], [`FileStore`]) and the [`Person`]. Each lives in its
//! own module; this one gathers them under one public path. The `HostServices` implementation
//! itself is in the plugin bridge (`bridge/host_services.rs`), the login listener behind the
//! `browser-redirect` operation in `loopback.rs`.

pub use crate::bridge::MAX_PLUGIN_FILE_BYTES;
pub use crate::person::{browser_url, Person, StderrPerson};
pub use crate::redact::{Redactor, SECRET_PARAMETERS};
pub use crate::store::{CredentialStore, FileStore, MemoryStore, StoreError, MAX_STORE_BYTES};
pub use crate::text::{json_text_safe, plugin_text, sanitize, sanitize_line, shown_url};
pub use fhirconn_sdk::wire::{BROWSER_REDIRECT, REDACT_SECRET};

#[cfg(test)]
mod text_tests {
    use super::*;
    use crate::loopback::{judge_redirect, RedirectVerdict};

    const CANARY: &str = "CANARY~a+b/c&d=e f\"g\\h";

    #[test]
    fn redactor_finds_secrets_in_every_encoding_they_travel_in() {
        let r = Redactor::default();
        r.add(CANARY);
        let form = fhirconn_sdk::form_urlencode_component(CANARY);
        let lower_pct = form.replace("%7E", "%7e").replace('+', "%20");
        let json = serde_json::to_string(CANARY).unwrap();
        let json_slash = json.replace('/', "\\/");
        let json_u = json.replace('~', "\\u007E");
        let html = CANARY
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('~', "&#126;");
        let html_hex = CANARY.replace('+', "&#x2B;");
        for (what, form_of_secret) in [
            ("raw", CANARY.to_string()),
            ("form", form.clone()),
            ("percent, lower case", lower_pct),
            ("json", json),
            ("json \\/", json_slash),
            ("json \\u", json_u),
            ("html", html),
            ("html hex", html_hex),
        ] {
            let text = format!("echo: client_secret={form_of_secret}&scope=x");
            let out = r.redact(&text);
            assert!(
                !out.contains("CANARY") && out.contains("[REDACTED]"),
                "{what}: {out}"
            );
            assert!(out.ends_with("&scope=x"), "{what}: {out}");
        }
        // Nothing else is touched.
        assert_eq!(r.redact("a+b %7E plain"), "a+b %7E plain");
    }

    #[test]
    fn redactor_removes_header_parts_basic_passwords_and_user_password() {
        let r = Redactor::default();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("user:CANARY pw~");
        r.add_header_value(&format!("Basic {b64}"));
        let out = r.redact(&format!("a {b64} b user%3ACANARY+pw%7E c CANARY+pw~"));
        assert!(!out.contains("CANARY"), "{out}");
        assert!(!out.contains(&b64), "{out}");
    }

    #[test]
    fn request_bodies_and_token_responses_register_their_secrets() {
        let r = Redactor::default();
        let form = fhirconn_sdk::form_urlencode(&[
            ("grant_type", "client_credentials"),
            ("client_assertion", "eyJCANARY.assertion.sig"),
            ("client_secret", "CANARY secret~"),
            ("scope", "system/*.rs"),
        ]);
        r.add_from_request([], form.as_bytes());
        r.add_body_parameters(
            br#"{"access_token":"CANARY-access","refresh_token":"CANARY-refresh","token_type":"Bearer","user_code":"SHOWME12"}"#,
        );
        let out = r.redact(&format!(
            "{form} CANARY-access CANARY-refresh CANARY+secret%7E SHOWME12 client_credentials"
        ));
        assert!(!out.contains("CANARY"), "{out}");
        assert!(
            out.contains("SHOWME12") && out.contains("client_credentials"),
            "{out}"
        );
        // Authorization headers count as credentials even when not marked sensitive.
        r.add_from_request([("authorization", "Bearer CANARY-unmarked", false)], b"");
        assert!(!r.redact("x CANARY-unmarked").contains("CANARY"));
    }

    #[test]
    fn redaction_handles_multibyte_text_and_overlaps() {
        let r = Redactor::default();
        r.add("pässwörd-CANARY");
        r.add("CANARY");
        let out = r.redact("é p%C3%A4ssw%c3%b6rd-CANARY ü CANARY ß");
        assert_eq!(out, "é [REDACTED] ü [REDACTED] ß");
    }

    #[test]
    fn sanitize_escapes_control_characters_visibly() {
        let s = sanitize("a\x1b[2Jb\x07c\u{9b}31md\x7fe\rf\ng\th\u{202e}i");
        assert_eq!(s, "a\\x1b[2Jb\\x07c\\u{9b}31md\\x7fe\\x0df\ng\th\\u{202e}i");
        let l = sanitize_line("a\nb\x1bc", 1000);
        assert_eq!(l, "a b\\x1bc");
        assert!(sanitize_line(&"x".repeat(20), 5).starts_with("xxxxx… (15 more"));
        assert_eq!(plugin_text("ok\x1b"), "ok\\x1b");
        let j = json_text_safe("{\"a\":\"x\u{9b}y\u{7f}\"}");
        assert_eq!(j, "{\"a\":\"x\\u009by\\u007f\"}");
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["a"], "x\u{9b}y\u{7f}");
    }

    #[test]
    fn only_https_or_loopback_http_urls_reach_a_browser() {
        for bad in [
            "--no-sandbox",
            "-x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "http://evil.example/login",
            "ftp://example.org/",
            "https://user:pw@example.org/",
            "https://example.org/\x1b[2J",
            "https://example.org/ --flag",
            "",
        ] {
            assert_eq!(browser_url(bad), None, "{bad}");
        }
        for good in [
            "https://microsoft.com/devicelogin",
            "http://127.0.0.1:8080/",
            "http://[::1]:9/x",
            "http://localhost:1/a?b=c",
        ] {
            let u = browser_url(good).unwrap_or_else(|| panic!("{good}"));
            assert!(!u.starts_with('-'));
        }
    }

    #[test]
    fn the_login_listener_accepts_only_its_own_state() {
        let query = |q: &'static str| Some(q);
        assert_eq!(
            judge_redirect(query("code=abc&state=s1"), Some("s1")),
            RedirectVerdict::Accept("code=abc&state=s1".into())
        );
        assert_eq!(
            judge_redirect(query("code=abc&state=other"), Some("s1")),
            RedirectVerdict::WrongState
        );
        assert_eq!(
            judge_redirect(query("error=access_denied"), Some("s1")),
            RedirectVerdict::WrongState
        );
        assert_eq!(
            judge_redirect(query("favicon=1"), Some("s1")),
            RedirectVerdict::NotFound
        );
        assert_eq!(
            judge_redirect(query("code=abc"), None),
            RedirectVerdict::Accept("code=abc".into())
        );
    }
}
