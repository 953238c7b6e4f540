//! How the host talks to a person: [`Person`] (device codes, browser URLs) and the default
//! [`StderrPerson`], which hands a browser program only URLs that [`browser_url`] accepts.

use crate::text::{sanitize, sanitize_line};

/// How the host talks to a person (device codes, browser URLs).
pub trait Person: Send + Sync {
    /// Shows a message; returns `true` if `url` was opened for them.
    fn tell(&self, message: &str, url: Option<&str>) -> bool;
}

/// Whether `url` may be handed to a browser program: an absolute `https` URL, or `http` on a
/// loopback address (the login redirect listener). Returns the URL as the URL parser writes
/// it (so it starts with the scheme, never with `-`, and holds no raw control characters or
/// spaces), or `None` for anything else (`file:`, `javascript:`, `--no-sandbox`, ...).
pub fn browser_url(url: &str) -> Option<String> {
    if url.starts_with('-') || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let u = url::Url::parse(url).ok()?;
    if u.cannot_be_a_base() || !u.username().is_empty() || u.password().is_some() {
        return None;
    }
    let loopback = match u.host()? {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match u.scheme() {
        "https" => Some(u.to_string()),
        "http" if loopback => Some(u.to_string()),
        _ => None,
    }
}

/// Prints to standard error and opens URLs with `$BROWSER` when it is set. The program gets
/// exactly one argument, and only a URL that [`browser_url`] accepts; any other URL is shown
/// (escaped) for the person to open themselves. Messages are shown through [`sanitize`].
#[derive(Debug, Default)]
pub struct StderrPerson;

impl Person for StderrPerson {
    fn tell(&self, message: &str, url: Option<&str>) -> bool {
        let message = sanitize(message);
        let Some(u) = url else {
            eprintln!("{message}");
            return false;
        };
        let Some(safe) = browser_url(u) else {
            eprintln!(
                "{message}\n  {}\n  (not opened in a browser: only https URLs, or http on \
                 this machine, are; check the address before you open it yourself)",
                sanitize_line(u, 2000)
            );
            return false;
        };
        eprintln!("{message}\n  {safe}");
        match std::env::var_os("BROWSER").filter(|b| !b.is_empty()) {
            Some(browser) => std::process::Command::new(browser)
                .arg(&safe)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .is_ok(),
            None => false,
        }
    }
}
