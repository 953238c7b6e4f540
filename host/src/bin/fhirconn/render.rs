//! Rendering shared by the commands: `--output`, response bodies for a terminal, error lines,
//! configuration errors shown rustc-style (the offending YAML line with its value masked and
//! a caret under the column), and whether to use colour (`NO_COLOR`, a terminal).

use fhirconn_host::services as text;
use fhirconn_host::{ConfigError, Host};
use std::io::IsTerminal as _;

/// `--output`: text for people, or JSON for programs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Text for people.
    Human,
    /// JSON (terminal controls escaped).
    Json,
}

/// Whether to colour a stream: never with `NO_COLOR` set (https://no-color.org), always with
/// `CLICOLOR_FORCE` set (and not `0`), else only on a terminal.
fn colour(is_terminal: bool) -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("NO_COLOR") {
        return false;
    }
    if set("CLICOLOR_FORCE") && std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
        return true;
    }
    is_terminal
}

/// Whether standard error gets colour.
pub fn colour_stderr() -> bool {
    colour(std::io::stderr().is_terminal())
}

/// Whether standard output gets colour.
pub fn colour_stdout() -> bool {
    colour(std::io::stdout().is_terminal())
}

/// `text` in a colour (an ANSI SGR code such as `32` for green) when `on`.
pub fn paint(text: &str, sgr: &str, on: bool) -> String {
    if on {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Control characters escaped (server and plugin text never drives the terminal).
pub fn sanitize(s: &str) -> String {
    text::sanitize(s)
}

/// `error: <message>` on standard error, the message sanitized.
pub fn error_line(message: &str) {
    let prefix = paint("error:", "1;31", colour_stderr());
    eprintln!("{prefix} {}", sanitize(message));
}

/// A value as pretty JSON on standard output, terminal controls escaped.
pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        text::json_text_safe(&serde_json::to_string_pretty(value).unwrap_or_default())
    );
}

/// Configuration errors: each as `error: file:line:col: ...`, followed by the line of the file
/// it points at (value masked) with a caret under the column, then how many there were.
pub fn config_errors(errors: &[ConfigError]) {
    let styled = colour_stderr();
    for err in errors {
        let title = sanitize(&err.to_string());
        match snippet::render(err, &title, styled) {
            Some(s) => eprintln!("{s}"),
            None => eprintln!("error: {title}"),
        }
    }
    if errors.len() > 1 {
        eprintln!("{} configuration errors", errors.len());
    }
}

/// A response body for standard output. JSON (pretty on a terminal) keeps its value but has
/// every character a terminal would act on written as a `\uXXXX` escape; other text is
/// escaped on a terminal and left as it is when piped (it is the data asked for).
pub fn body(body: &[u8], pretty: bool) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if pretty {
            return text::json_text_safe(&serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        return text::json_text_safe(String::from_utf8_lossy(body).trim_end());
    }
    let raw = String::from_utf8_lossy(body).trim_end().to_string();
    if pretty {
        text::sanitize(&raw)
    } else {
        raw
    }
}

/// The body of an error answer, for standard error: known secrets removed in all their forms
/// (servers and gateways echo `Authorization` and request bodies), control characters escaped.
pub fn error_body(host: &Host, bytes: &[u8]) -> String {
    // JSON pretty, other text raw: redaction sees the text before anything is escaped.
    let json = serde_json::from_slice::<serde_json::Value>(bytes).is_ok();
    text::sanitize(&host.redact(&body(bytes, json)))
}

/// The rustc-style snippet of a configuration error.
mod snippet {
    use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};
    use fhirconn_host::ConfigError;

    /// Lines longer than this are not shown.
    const MAX_LINE: usize = 200;

    /// `None` when the error has no line or the file cannot be read again.
    pub fn render(err: &ConfigError, title: &str, styled: bool) -> Option<String> {
        let line_no = err.line?;
        let limit = fhirconn_host::config::yaml::MAX_CONFIG_BYTES;
        let bytes = std::fs::read(&err.file).ok().filter(|b| b.len() <= limit)?;
        let text = String::from_utf8_lossy(&bytes);
        let line = text.lines().nth(line_no.checked_sub(1)?)?;
        if line.chars().count() > MAX_LINE {
            return None;
        }
        let (shown, kept) = mask(line);
        // The caret: under the column when it falls in the part shown as it is, else under
        // the masked value; without a column, under the first character.
        let col = err
            .column
            .unwrap_or_else(|| line.chars().take_while(|c| *c == ' ').count() + 1);
        let at = col.saturating_sub(1).min(kept);
        let start = shown.char_indices().nth(at).map_or(shown.len(), |(i, _)| i);
        let end = shown[start..]
            .chars()
            .next()
            .map_or(start, |c| start + c.len_utf8());
        let path = super::sanitize(&err.file.display().to_string());
        let report = &[Level::ERROR.primary_title(title).element(
            Snippet::source(&shown)
                .line_start(line_no)
                .path(&path)
                .annotation(AnnotationKind::Primary.span(start..end)),
        )];
        let renderer = if styled {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        Some(renderer.render(report).to_string())
    }

    /// A line of the file with everything that could be a secret replaced by `***`: only the
    /// indentation, list dashes and a plain key (`[A-Za-z0-9_.-]+:`) are shown as they are.
    /// Returns the shown line and how many characters of it are the original's.
    pub fn mask(line: &str) -> (String, usize) {
        let bytes = line.as_bytes();
        let mut i = 0;
        loop {
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            if bytes.get(i) == Some(&b'-') && matches!(bytes.get(i + 1), Some(b' ') | None) {
                i += 1;
                continue;
            }
            break;
        }
        let key_len = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            .count();
        if key_len > 0 && bytes.get(i + key_len) == Some(&b':') {
            i += key_len + 1;
            if bytes.get(i) == Some(&b' ') {
                i += 1;
            }
        }
        let mut shown = line[..i].to_string();
        let rest = line[i..].trim();
        if !rest.is_empty() && !rest.starts_with('#') {
            shown.push_str("***");
        }
        (shown, i)
    }

    #[cfg(test)]
    mod tests {
        use super::mask;

        #[test]
        fn only_indentation_dashes_and_plain_keys_are_shown() {
            assert_eq!(
                mask("    password: hunter2"),
                ("    password: ***".into(), 14)
            );
            assert_eq!(mask("  - scheme: basic"), ("  - scheme: ***".into(), 12));
            assert_eq!(mask("auth: {password: x}"), ("auth: ***".into(), 6));
            assert_eq!(mask("  MIIBsecretpem"), ("  ***".into(), 2));
            assert_eq!(mask("  - \"user: pw\""), ("  - ***".into(), 4));
            assert_eq!(mask("connections:"), ("connections:".into(), 12));
            assert_eq!(mask("x: # note"), ("x: ".into(), 3));
        }
    }
}
