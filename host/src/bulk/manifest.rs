//! What the server sends, read defensively: manifest entries (names made here, only
//! resource types), `Retry-After` (seconds or an HTTP date) and the capped wait.

use super::*;

/// Whether `s` is a resource type name fhirconn will use in a file name:
/// `^[A-Z][A-Za-z]{1,63}$`.
pub fn is_resource_type(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=64).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b[1..].iter().all(u8::is_ascii_alphabetic)
}

/// Text from a server made safe to print: control characters escaped, at most `max` chars.
pub(super) fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().flat_map(char::escape_debug).take(max).collect();
    if s.chars().flat_map(char::escape_debug).nth(max).is_some() {
        out.push('…');
    }
    out
}

pub(super) use crate::text::shown_url;

/// Reads a manifest: `requiresAccessToken` and every output entry, valid or not.
pub fn parse_manifest(
    manifest: &serde_json::Value,
) -> Result<(bool, Vec<Result<Entry, EntryError>>), BulkError> {
    let output = manifest
        .get("output")
        .and_then(|o| o.as_array())
        .ok_or_else(|| BulkError::Manifest("no `output` array".into()))?;
    if output.len() > MAX_ENTRIES {
        return Err(BulkError::Manifest(format!(
            "{} output entries (at most {MAX_ENTRIES})",
            output.len()
        )));
    }
    let with_token = manifest["requiresAccessToken"].as_bool().unwrap_or(false);
    let entries = output
        .iter()
        .enumerate()
        .map(|(index, o)| {
            let ty = o.get("type").and_then(|t| t.as_str());
            let resource_type = match ty {
                Some(t) if is_resource_type(t) => t.to_string(),
                Some(t) => {
                    return Err(EntryError::BadType {
                        index,
                        shown: format!("\"{}\"", printable(t, 80)),
                    })
                }
                None => {
                    return Err(EntryError::BadType {
                        index,
                        shown: "(missing or not a string)".into(),
                    })
                }
            };
            let raw = o
                .get("url")
                .and_then(|u| u.as_str())
                .ok_or_else(|| EntryError::BadUrl {
                    index,
                    why: "missing or not a string".into(),
                })?;
            let url = url::Url::parse(raw).map_err(|e| EntryError::BadUrl {
                index,
                why: e.to_string(),
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(EntryError::BadUrl {
                    index,
                    why: format!("scheme {}", printable(url.scheme(), 20)),
                });
            }
            Ok(Entry {
                index,
                resource_type,
                url,
            })
        })
        .collect();
    Ok((with_token, entries))
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP date (IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now`. A date in the past is zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let when = parse_http_date(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate (RFC 9110 §5.6.7), the form senders must use.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (wday, rest) = s.split_once(", ")?;
    if !["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&wday) {
        return None;
    }
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, mon, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let num = |t: &str, len: usize| -> Option<u32> {
        (t.len() == len && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let day = num(day, 2)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == mon)? as u32
        + 1;
    let year = num(year, 4)?;
    let hms: Vec<&str> = time.split(':').collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    let (h, m, sec) = (num(h, 2)?, num(m, 2)?, num(sec, 2)?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    // Days since 1970-01-01 (H. Hinnant's days_from_civil).
    let y = i64::from(if month <= 2 { year - 1 } else { year });
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The wait before the next status check: what the server asked (else the backoff), at least
/// 1 s, at most `max`, and never past the deadline (`remaining`).
pub fn next_wait(
    asked: Option<Duration>,
    backoff: Duration,
    max: Duration,
    remaining: Duration,
) -> Duration {
    asked
        .unwrap_or(backoff)
        .max(Duration::from_secs(1))
        .min(max)
        .min(remaining)
}
