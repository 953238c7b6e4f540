//! The host side of the plugin contract: `HostServices` for one call, the secret redactor and
//! the credential store. Every callback is wrapped in `catch_unwind`.

use crate::transport::{Outgoing, Transport, TransportError};
use fhirconn_abi::{
    log_level,
    std_types::{ROption, RResult, RStr, RString, RVec},
    AbiError, ErrorKind, Header, HostServices, HttpRequest, HttpResponse,
};
use fhirconn_sdk::{ClientIdentity, SecretString};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    pub fn add_from_request(&self, headers: &[Header], body: &[u8]) {
        for h in headers {
            let name = h.name.as_str().to_ascii_lowercase();
            if h.sensitive || CREDENTIAL_HEADERS.contains(&name.as_str()) {
                self.add_header_value(h.value.as_str());
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

/// Where schemes keep refresh tokens and similar long-lived state.
pub trait CredentialStore: Send + Sync {
    /// Reads a value.
    fn get(&self, key: &str) -> Result<Option<String>, String>;
    /// Writes a value.
    fn put(&self, key: &str, value: &str) -> Result<(), String>;
    /// Deletes a value (absent is fine).
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// A store that keeps values in memory only (tests, and hosts that want no persistence).
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<BTreeMap<String, String>>);

impl CredentialStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.0.lock().map_err(|e| e.to_string())?.get(key).cloned())
    }
    fn put(&self, key: &str, value: &str) -> Result<(), String> {
        self.0
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key.to_string(), value.to_string());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.0.lock().map_err(|e| e.to_string())?.remove(key);
        Ok(())
    }
}

/// A JSON file readable by its owner only (mode 0600).
///
/// Written through [`crate::safe_write`] (a random temporary name created with
/// `O_EXCL|O_NOFOLLOW` at 0600, `fsync`, `rename`), so a planted temporary file or symlink can
/// neither read the values nor redirect them. Updates hold a cross-process lock
/// (`<store>.lock`), so concurrent `fhirconn` processes (a `proxy` and a `login`) do not lose
/// each other's refresh-token rotations. A store that is a symbolic link, belongs to another
/// user or can be written by group or others is refused: its values could have been planted.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock: Mutex<()>,
}

/// How long a store update waits for another process's lock.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// A credential store larger than this is refused (it holds a few tokens).
const MAX_STORE_BYTES: u64 = 16 * 1024 * 1024;

impl FileStore {
    /// A store at `path` (created on first write, its directory 0700 when created).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    /// The default store: `$XDG_STATE_HOME/fhirconn/credentials.json` (when that is an absolute
    /// path), else `~/.local/state/fhirconn/credentials.json`; `None` without a home directory.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .map(|h| h.join(".local").join("state"))
            })?;
        Some(base.join("fhirconn").join("credentials.json"))
    }

    /// Where the store is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<BTreeMap<String, String>, String> {
        use std::io::Read as _;
        let shown = self.path.display();
        // safe-write: ok (reading, without following a symlink)
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.custom_flags(libc::O_NOFOLLOW);
        }
        let file = match opts.open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            #[cfg(unix)]
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(format!(
                    "credential store {shown} is a symbolic link; refusing to use it \
                     (remove it, or point $FHIRCONN_CREDENTIALS at the real file)"
                ))
            }
            Err(e) => return Err(format!("cannot read credential store {shown}: {e}")),
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read credential store {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("credential store {shown} is not a regular file"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            if meta.uid() != current_uid() {
                return Err(format!(
                    "credential store {shown} belongs to another user (uid {}); refusing to use it",
                    meta.uid()
                ));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(format!(
                    "credential store {shown} can be written by group or others (mode {:o}); \
                     its values may have been planted: check or remove it, then chmod 600 it",
                    meta.mode() & 0o777
                ));
            }
            if meta.mode() & 0o044 != 0 {
                tracing::warn!(
                    "credential store {shown} is readable by group or others (mode {:o}); \
                     it is rewritten 0600 on the next change, but what it held may have been read",
                    meta.mode() & 0o777
                );
            }
        }
        let mut bytes = Vec::new();
        file.take(MAX_STORE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read credential store {shown}: {e}"))?;
        if bytes.len() as u64 > MAX_STORE_BYTES {
            return Err(format!(
                "credential store {shown} is larger than {MAX_STORE_BYTES} bytes"
            ));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("credential store {shown} is corrupt: {e}"))
    }

    fn write(&self, map: &BTreeMap<String, String>) -> Result<(), String> {
        let data = serde_json::to_vec_pretty(map).map_err(|e| e.to_string())?;
        crate::safe_write::write(&self.path, &data, crate::safe_write::Options::default())
            .map_err(|e| format!("cannot write credential store {}: {e}", self.path.display()))
    }

    /// Creates the store's directory (0700) and takes the cross-process lock on
    /// `<store>.lock`; released when the returned file is dropped.
    fn lock_across_processes(&self) -> Result<std::fs::File, String> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::safe_write::create_private_dir(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let lock_path = dir.join(name);
        // safe-write: ok (an empty lock file: never truncated, O_NOFOLLOW, 0600)
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false); // safe-write: ok
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let file = opts
            .open(&lock_path)
            .map_err(|e| format!("cannot open lock file {}: {e}", lock_path.display()))?;
        let deadline = std::time::Instant::now() + STORE_LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(format!(
                        "credential store {} is locked by another fhirconn process",
                        self.path.display()
                    ))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(format!("cannot lock {}: {e}", lock_path.display()))
                }
            }
        }
    }

    /// Read, change, write: under the in-process and the cross-process lock.
    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, String>) -> bool) -> Result<(), String> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _file_lock = self.lock_across_processes()?;
        let mut m = self.read()?;
        if change(&mut m) {
            self.write(&m)?;
        }
        Ok(())
    }
}

/// The effective user id (files of other users are not trusted).
#[cfg(unix)]
pub(crate) fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl CredentialStore for FileStore {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.read()?.get(key).cloned())
    }
    fn put(&self, key: &str, value: &str) -> Result<(), String> {
        self.update(|m| {
            m.insert(key.to_string(), value.to_string());
            true
        })
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.update(|m| m.remove(key).is_some())
    }
}

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

/// What a connection's plugin calls share.
#[derive(Clone)]
pub(crate) struct SharedServices {
    pub rt: tokio::runtime::Handle,
    pub transport: Arc<Transport>,
    pub base_dir: PathBuf,
    pub connection_id: String,
    pub redactor: Arc<Redactor>,
    pub store: Arc<dyn CredentialStore>,
    pub person: Arc<dyn Person>,
}

/// `HostServices` for one plugin call.
pub(crate) struct CallServices {
    pub shared: SharedServices,
    /// The identity of earlier entries on a stacked connection (for token endpoints).
    pub identity: Option<ClientIdentity>,
    /// Whether this call may talk to a person.
    pub interactive: bool,
}

fn guard<T>(what: &str, f: impl FnOnce() -> RResult<T, AbiError>) -> RResult<T, AbiError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => RResult::RErr(AbiError::new(
            ErrorKind::INTERNAL,
            format!("the host panicked while serving {what}"),
        )),
    }
}

fn transport_kind(e: &TransportError) -> ErrorKind {
    match e {
        TransportError::TooLarge { .. } | TransportError::Redirect(_) => ErrorKind::PROTOCOL,
        _ => ErrorKind::NETWORK,
    }
}

impl CallServices {
    fn store_key(&self, key: &str) -> String {
        format!("{}/{key}", self.shared.connection_id)
    }

    fn http_inner(&self, request: HttpRequest) -> Result<HttpResponse, AbiError> {
        let url = url::Url::parse(request.url.as_str()).map_err(|e| {
            AbiError::new(
                ErrorKind::CONFIG,
                format!("invalid URL '{}': {e}", request.url),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AbiError::new(
                ErrorKind::CONFIG,
                format!("unsupported URL scheme in '{url}'"),
            ));
        }
        // Token endpoints, discovery documents and authorities must be https (loopback
        // excepted): a plugin's request carries a credential or decides where one goes.
        let settings = self.shared.transport.settings();
        if !settings.allow_insecure_http && !crate::config::is_secure_or_loopback(&url) {
            return Err(AbiError::new(
                ErrorKind::CONFIG,
                format!(
                    "refusing plain http to {} (not loopback) for connection '{}': \
                     authentication traffic must use https; set 'allow-insecure-http: true' \
                     on the connection to accept that",
                    url.origin().ascii_serialization(),
                    settings.id
                ),
            ));
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| AbiError::new(ErrorKind::INTERNAL, "invalid HTTP method"))?;
        // Before anything can fail or echo: the secrets this request carries (credential
        // headers, client secrets and assertions, refresh tokens, codes in the body).
        self.shared
            .redactor
            .add_from_request(request.headers.as_slice(), request.body.as_slice());
        let mut headers = Vec::new();
        let mut credential_headers = Vec::new();
        for h in request.headers.iter() {
            let name =
                reqwest::header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    AbiError::new(
                        ErrorKind::INTERNAL,
                        format!("invalid header name '{}'", h.name),
                    )
                })?;
            let mut value =
                reqwest::header::HeaderValue::from_str(h.value.as_str()).map_err(|_| {
                    AbiError::new(
                        ErrorKind::INTERNAL,
                        format!("invalid value for header '{}'", h.name),
                    )
                })?;
            if h.sensitive {
                value.set_sensitive(true);
                self.shared.redactor.add_header_value(h.value.as_str());
                credential_headers.push((name, value));
            } else {
                headers.push((name, value));
            }
        }
        let identity = match &request.identity {
            ROption::RSome(i) => Some(ClientIdentity {
                certificate_chain_pem: i.certificate_chain_pem.to_string(),
                private_key_pem: SecretString::from(i.private_key_pem.to_string()),
            }),
            ROption::RNone => self.identity.clone(),
        };
        let out = Outgoing {
            method,
            url,
            headers,
            credential_headers,
            body: if request.body.is_empty() {
                None
            } else {
                Some(request.body.to_vec())
            },
            follow_redirects: false,
        };
        let transport = self.shared.transport.clone();
        let resp = self
            .shared
            .rt
            .block_on(async move { transport.send(out, identity.as_ref()).await })
            .map_err(|e| AbiError::new(transport_kind(&e), e.to_string()))?;
        // Issued tokens (access, refresh, id, device codes) are secrets from now on.
        self.shared.redactor.add_body_parameters(&resp.body);
        Ok(HttpResponse {
            status: resp.status.as_u16(),
            headers: resp
                .headers
                .iter()
                .map(|(k, v)| Header {
                    name: k.as_str().into(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                    sensitive: false,
                })
                .collect(),
            body: resp.body.into(),
        })
    }
}

impl HostServices for CallServices {
    fn http(&self, request: HttpRequest) -> RResult<HttpResponse, AbiError> {
        guard("http", || self.http_inner(request).into())
    }

    fn read_file(&self, path: RStr<'_>) -> RResult<RVec<u8>, AbiError> {
        guard("read_file", || {
            let p = self.shared.base_dir.join(path.as_str());
            match read_regular_file(&p) {
                Ok(bytes) => {
                    if bytes.len() <= 4096 {
                        if let Ok(text) = std::str::from_utf8(&bytes) {
                            if !text.contains("-----BEGIN CERTIFICATE") {
                                self.shared.redactor.add(text);
                            }
                        }
                    }
                    RResult::ROk(bytes.into())
                }
                Err(e) => RResult::RErr(AbiError::new(
                    ErrorKind::CONFIG,
                    format!("cannot read {}: {}", p.display(), io_reason(&e)),
                )),
            }
        })
    }

    fn env_var(&self, name: RStr<'_>) -> ROption<RString> {
        match catch_unwind(AssertUnwindSafe(|| std::env::var(name.as_str()).ok())) {
            Ok(Some(v)) => {
                self.shared.redactor.add(&v);
                ROption::RSome(v.into())
            }
            _ => ROption::RNone,
        }
    }

    fn now_unix_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn sleep_ms(&self, millis: u64) {
        std::thread::sleep(std::time::Duration::from_millis(millis));
    }

    fn log(&self, level: u32, message: RStr<'_>) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let msg = plugin_text(&self.shared.redactor.redact(message.as_str()));
            let id = &self.shared.connection_id;
            match level {
                log_level::ERROR => {
                    tracing::error!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                log_level::WARN => {
                    tracing::warn!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                log_level::INFO => {
                    tracing::info!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                log_level::DEBUG => {
                    tracing::debug!(target: "fhirconn::plugin", connection = %id, "{msg}")
                }
                _ => tracing::trace!(target: "fhirconn::plugin", connection = %id, "{msg}"),
            }
        }));
    }

    fn tell_person(&self, message: RStr<'_>, url: ROption<RStr<'_>>) -> bool {
        if !self.interactive {
            tracing::warn!(connection = %self.shared.connection_id,
                "a plugin tried to talk to a person during a non-interactive call");
            return false;
        }
        let url = match url {
            ROption::RSome(u) => Some(u.to_string()),
            ROption::RNone => None,
        };
        // The message often quotes an authority (a device-code `message`): no secrets, no
        // terminal control sequences reach the person.
        let message = sanitize(&self.shared.redactor.redact(message.as_str()));
        catch_unwind(AssertUnwindSafe(|| {
            self.shared.person.tell(&message, url.as_deref())
        }))
        .unwrap_or(false)
    }

    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RString>, AbiError> {
        guard("store_get", || {
            match self.shared.store.get(&self.store_key(key.as_str())) {
                Ok(v) => {
                    if let Some(s) = &v {
                        self.shared.redactor.add(s);
                    }
                    RResult::ROk(v.map(RString::from).into())
                }
                Err(e) => RResult::RErr(AbiError::new(ErrorKind::INTERNAL, e)),
            }
        })
    }

    fn store_put(&self, key: RStr<'_>, value: RStr<'_>) -> RResult<(), AbiError> {
        guard("store_put", || {
            self.shared.redactor.add(value.as_str());
            self.shared
                .store
                .put(&self.store_key(key.as_str()), value.as_str())
                .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e))
                .into()
        })
    }

    fn store_delete(&self, key: RStr<'_>) -> RResult<(), AbiError> {
        guard("store_delete", || {
            self.shared
                .store
                .delete(&self.store_key(key.as_str()))
                .map_err(|e| AbiError::new(ErrorKind::INTERNAL, e))
                .into()
        })
    }

    fn invoke(&self, op: RStr<'_>, payload_json: RStr<'_>) -> RResult<RString, AbiError> {
        match op.as_str() {
            BROWSER_REDIRECT => guard(BROWSER_REDIRECT, || {
                self.browser_redirect(payload_json.as_str()).into()
            }),
            REDACT_SECRET => guard(REDACT_SECRET, || {
                self.redact_secret(payload_json.as_str()).into()
            }),
            other => RResult::RErr(AbiError::new(
                ErrorKind::UNSUPPORTED,
                format!("host operation '{other}' is not supported"),
            )),
        }
    }
}

/// Host operation: send the person to an authorization URL and catch the browser's redirect
/// on a loopback listener (RFC 8252 §7.3). Payload `{"url", "message", "timeout_seconds"}`;
/// the host adds `redirect_uri=http://127.0.0.1:PORT/` to `url` and answers
/// `{"redirect_uri", "query"}` with the query string the browser brought back.
///
/// When `url` carries a `state` parameter, only a redirect with that same `state` ends the
/// wait: any other request (another local process, a web page scanning ports, a stale tab)
/// is answered 400 and ignored, and the listener keeps waiting until its own deadline.
pub const BROWSER_REDIRECT: &str = "browser-redirect";

/// Host operation: a plugin registers a value that must be redacted like a secret.
/// Payload `{"secret": "..."}`; answers `{}`.
pub const REDACT_SECRET: &str = "redact-secret";

/// How many redirect requests the login listener reads at the same time.
const LISTENER_CONNECTIONS: usize = 16;

/// What the login listener makes of one request: the query when it is the awaited redirect.
#[derive(Debug, PartialEq, Eq)]
enum RedirectVerdict {
    /// The awaited redirect (a `code` or `error`, and the expected `state` if one was sent).
    Accept(String),
    /// A `code` or `error` with a missing or different `state`.
    WrongState,
    /// Anything else (a favicon, a probe).
    NotFound,
}

/// Constant-time comparison (the `state` is a CSRF token).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Judges the request head a browser (or anyone else) sent to the login listener.
fn judge_redirect(head: &str, expected_state: Option<&str>) -> RedirectVerdict {
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default();
    let Some((_, query)) = target.split_once('?') else {
        return RedirectVerdict::NotFound;
    };
    let mut relevant = false;
    let mut state: Option<String> = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "code" | "error" => relevant = true,
            "state" => state = Some(v.into_owned()),
            _ => {}
        }
    }
    if !relevant {
        return RedirectVerdict::NotFound;
    }
    match (expected_state, state.as_deref()) {
        (None, _) => RedirectVerdict::Accept(query.to_string()),
        (Some(want), Some(got)) if same_secret(want, got) => {
            RedirectVerdict::Accept(query.to_string())
        }
        _ => RedirectVerdict::WrongState,
    }
}

/// Reads one request head (up to 16 KiB, 10 s) from a listener connection, answers it, and
/// sends the query on `found` when it is the awaited redirect.
async fn serve_redirect_request(
    mut stream: tokio::net::TcpStream,
    expected_state: Option<String>,
    found: tokio::sync::mpsc::Sender<String>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    let read_until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while len < buf.len() {
        match tokio::time::timeout_at(read_until, stream.read(&mut buf[len..])).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                len += n;
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]).into_owned();
    let verdict = judge_redirect(&head, expected_state.as_deref());
    let (status, text) = match &verdict {
        RedirectVerdict::Accept(_) => (
            "200 OK",
            "Signed in. You can close this window and return to fhirconn.",
        ),
        RedirectVerdict::WrongState => (
            "400 Bad Request",
            "This sign-in answer does not belong to the sign-in fhirconn is waiting for.",
        ),
        RedirectVerdict::NotFound => ("404 Not Found", "Not found."),
    };
    let page = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n<html><body><p>{text}</p></body></html>"
    );
    let _ = stream.write_all(page.as_bytes()).await;
    let _ = stream.shutdown().await;
    match verdict {
        RedirectVerdict::Accept(q) => {
            let _ = found.try_send(q);
        }
        RedirectVerdict::WrongState => {
            tracing::warn!("the login listener ignored a sign-in answer with a wrong state");
        }
        RedirectVerdict::NotFound => {}
    }
}

impl CallServices {
    fn redact_secret(&self, payload: &str) -> Result<RString, AbiError> {
        let p: serde_json::Value = serde_json::from_str(payload)
            .map_err(|e| AbiError::new(ErrorKind::INTERNAL, format!("{REDACT_SECRET}: {e}")))?;
        if let Some(s) = p["secret"].as_str() {
            self.shared.redactor.add(s);
        }
        Ok("{}".into())
    }

    fn browser_redirect(&self, payload: &str) -> Result<RString, AbiError> {
        let bad = |m: String| AbiError::new(ErrorKind::INTERNAL, m);
        if !self.interactive {
            return Err(AbiError::new(
                ErrorKind::INTERACTION_REQUIRED,
                "signing in needs a person",
            ));
        }
        let p: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| bad(format!("{BROWSER_REDIRECT}: {e}")))?;
        let mut url = url::Url::parse(p["url"].as_str().unwrap_or_default())
            .map_err(|e| bad(format!("{BROWSER_REDIRECT}: url: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad(format!("{BROWSER_REDIRECT}: url must be http(s)")));
        }
        let expected_state = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned());
        let message = sanitize(
            &self
                .shared
                .redactor
                .redact(p["message"].as_str().unwrap_or("Sign in in your browser:")),
        );
        let timeout =
            std::time::Duration::from_secs(p["timeout_seconds"].as_u64().unwrap_or(300).min(900));
        let person = self.shared.person.clone();
        let redactor = self.shared.redactor.clone();
        self.shared.rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| bad(format!("cannot listen on 127.0.0.1: {e}")))?;
            let port = listener
                .local_addr()
                .map_err(|e| bad(e.to_string()))?
                .port();
            let redirect_uri = format!("http://127.0.0.1:{port}/");
            url.query_pairs_mut()
                .append_pair("redirect_uri", &redirect_uri);
            let full = url.to_string();
            let opened = catch_unwind(AssertUnwindSafe(|| person.tell(&message, Some(&full))))
                .unwrap_or(false);
            if !opened {
                tracing::info!("open the URL above in a browser on this machine");
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let (found_tx, mut found_rx) = tokio::sync::mpsc::channel::<String>(1);
            let slots = Arc::new(tokio::sync::Semaphore::new(LISTENER_CONNECTIONS));
            loop {
                tokio::select! {
                    q = found_rx.recv() => {
                        let Some(q) = q else { continue };
                        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                            if k == "code" {
                                redactor.add(&v);
                            }
                        }
                        return Ok(serde_json::json!({"redirect_uri": redirect_uri, "query": q})
                            .to_string()
                            .into());
                    }
                    accepted = listener.accept() => {
                        let (stream, _) = accepted
                            .map_err(|e| bad(format!("loopback listener: {e}")))?;
                        // Too many slow connections at once: drop the newcomer.
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            continue;
                        };
                        let tx = found_tx.clone();
                        let want = expected_state.clone();
                        tokio::spawn(async move {
                            serve_redirect_request(stream, want, tx).await;
                            drop(permit);
                        });
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(AbiError::new(
                            ErrorKind::INTERACTION_REQUIRED,
                            format!("no sign-in within {} s", timeout.as_secs()),
                        ));
                    }
                }
            }
        })
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The largest file a plugin may read (keys, certificate chains, PKCS#12 bundles, secrets).
pub const MAX_PLUGIN_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a regular file of at most [`MAX_PLUGIN_FILE_BYTES`]. A device (`/dev/zero`), FIFO
/// (which would block for ever) or socket is refused before it is opened.
fn read_regular_file(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let meta = std::fs::metadata(p)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(p)?
        .take(MAX_PLUGIN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PLUGIN_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "larger than 16 MiB",
        ));
    }
    Ok(bytes)
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

    #[test]
    fn file_store_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("c/credentials.json"));
        s.put("a/refresh", "v1").unwrap();
        assert_eq!(s.get("a/refresh").unwrap().as_deref(), Some("v1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("c/credentials.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.delete("a/refresh").unwrap();
        assert_eq!(s.get("a/refresh").unwrap(), None);
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

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
        r.add_from_request(&[], form.as_bytes());
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
        let h = Header {
            name: "authorization".into(),
            value: "Bearer CANARY-unmarked".into(),
            sensitive: false,
        };
        r.add_from_request(&[h], b"");
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
        let head = |q: &str| format!("GET /?{q} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(
            judge_redirect(&head("code=abc&state=s1"), Some("s1")),
            RedirectVerdict::Accept("code=abc&state=s1".into())
        );
        assert_eq!(
            judge_redirect(&head("code=abc&state=other"), Some("s1")),
            RedirectVerdict::WrongState
        );
        assert_eq!(
            judge_redirect(&head("error=access_denied"), Some("s1")),
            RedirectVerdict::WrongState
        );
        assert_eq!(
            judge_redirect(&head("favicon=1"), Some("s1")),
            RedirectVerdict::NotFound
        );
        assert_eq!(
            judge_redirect(&head("code=abc"), None),
            RedirectVerdict::Accept("code=abc".into())
        );
    }
}
