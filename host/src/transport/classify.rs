//! Why a request failed, for a person: reqwest (and hyper-util) errors classified as DNS, connect, TLS (with
//! the setting that fixes it), timeout.

use super::TransportError;
use crate::config::ConnectionSettings;

/// Timers fire a little late or early against `Instant`: a timeout this close to
/// `request-timeout` is that deadline.
const MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// Classifies a reqwest error for a person (DNS, connect, TLS with a hint, timeout...).
pub(crate) fn classify(
    e: &reqwest::Error,
    url: &url::Url,
    settings: &ConnectionSettings,
) -> TransportError {
    classify_timed(e, url, settings, None)
}

impl super::Transport {
    /// Classifies an error of an exchange that started at `started` (a timeout at
    /// `request-timeout` is named as that deadline).
    pub(crate) fn classify_since(
        &self,
        e: &reqwest::Error,
        url: &url::Url,
        started: std::time::Instant,
    ) -> TransportError {
        classify_timed(e, url, self.settings(), Some(started.elapsed()))
    }
}

/// [`classify`], knowing how long the exchange had run (`elapsed`): a timeout at or past
/// `request-timeout` is that deadline, any other one the idle `read-timeout`.
pub(crate) fn classify_timed(
    e: &reqwest::Error,
    url: &url::Url,
    settings: &ConnectionSettings,
    elapsed: Option<std::time::Duration>,
) -> TransportError {
    let mut chain = error_chain(e);
    // reqwest's text ends with " for url (<the whole URL>)": a pre-signed query or a
    // search's patient details must not reach an error, a log or a terminal.
    if let (Some(first), Some(u)) = (chain.first_mut(), e.url()) {
        *first = first.replace(
            &format!(" for url ({u})"),
            &format!(" for url ({})", crate::text::shown_url(u)),
        );
    }
    let facts = Facts {
        host: url.host_str().unwrap_or_default(),
        port: url.port_or_known_default(),
        connect: e.is_connect(),
        timeout: e.is_timeout(),
        elapsed,
    };
    classify_chain(e, chain, facts, settings)
}

/// What is known about a failed exchange besides its error.
pub(crate) struct Facts<'a> {
    /// The server's host.
    pub(crate) host: &'a str,
    /// Its port.
    pub(crate) port: Option<u16>,
    /// The error happened while connecting.
    pub(crate) connect: bool,
    /// The error is a timeout.
    pub(crate) timeout: bool,
    /// How long the exchange had run.
    pub(crate) elapsed: Option<std::time::Duration>,
}

/// Classifies any HTTP client's error (hyper-util's on the proxy's direct path).
pub(crate) fn classify_error_of(
    e: &(dyn std::error::Error + 'static),
    facts: Facts<'_>,
    settings: &ConnectionSettings,
) -> TransportError {
    classify_chain(e, error_chain(e), facts, settings)
}

fn classify_chain(
    e: &(dyn std::error::Error + 'static),
    chain: Vec<String>,
    facts: Facts<'_>,
    settings: &ConnectionSettings,
) -> TransportError {
    let host = facts.host.to_string();
    let hostport = match facts.port {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    if facts.timeout || chain.iter().any(|m| m.contains("timed out")) {
        let total = settings
            .request_timeout
            .filter(|t| facts.elapsed.is_some_and(|el| el + MARGIN >= *t));
        let (what, after) = if facts.connect {
            ("connect-timeout", settings.connect_timeout)
        } else if let Some(total) = total {
            ("request-timeout", total)
        } else {
            ("read-timeout", settings.read_timeout)
        };
        return TransportError::Timeout {
            what: what.to_string(),
            after,
        };
    }
    if let Some(tls) = find_rustls(e) {
        return TransportError::Tls {
            host,
            detail: describe_tls(tls),
        };
    }
    let joined = chain.join(": ");
    if let Some(cert_error) = tls_error_from_text(&joined) {
        return TransportError::Tls {
            host,
            detail: describe_tls(&cert_error),
        };
    }
    if joined.contains("dns error") || joined.contains("failed to lookup address") {
        let detail = chain.last().cloned().unwrap_or_default();
        return TransportError::Dns { host, detail };
    }
    if facts.connect {
        let detail = chain
            .iter()
            .rev()
            .find(|m| !m.is_empty())
            .cloned()
            .unwrap_or_else(|| "connection failed".into());
        return TransportError::Connect {
            host: hostport,
            detail,
        };
    }
    TransportError::Other(joined)
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        out.push(s.to_string());
        src = s.source();
    }
    out
}

fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    // `io::Error::source` skips the error it wraps, so look inside explicitly.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn std::error::Error + 'static) = inner;
        if let Some(r) = find_rustls(inner) {
            return Some(r);
        }
    }
    e.source().and_then(find_rustls)
}

/// Recognises a certificate error that reached us only as text (some verifiers flatten it).
fn tls_error_from_text(text: &str) -> Option<rustls::Error> {
    use rustls::{CertificateError as C, Error as E};
    let rest = text.split("invalid peer certificate: ").nth(1)?;
    let code = rest.split([':', ' ', ',', ')']).next().unwrap_or_default();
    Some(E::InvalidCertificate(match code {
        "UnknownIssuer" => C::UnknownIssuer,
        "NotValidForName" => C::NotValidForName,
        "Expired" => C::Expired,
        "NotValidYet" => C::NotValidYet,
        "BadSignature" => C::BadSignature,
        "Revoked" => C::Revoked,
        _ => return None,
    }))
}

/// Words a rustls error for a person, naming the setting that fixes it.
pub fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as E};
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not trusted (unknown issuer); \
             add its CA to trusted-root-certificates-file"
                .into()
        }
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for this host name (hostname mismatch); \
             use the name the certificate was issued for in base-url"
                .into()
        }
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        E::InvalidCertificate(CertificateError::NotValidYet)
        | E::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (check the clock)".into()
        }
        E::AlertReceived(alert) => format!(
            "the server refused the handshake ({alert:?}); if it requires a client certificate, \
             check that one is configured and issued by a CA the server trusts"
        ),
        other => other.to_string(),
    }
}
