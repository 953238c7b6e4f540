//! ISO-8601 durations as used for timeouts (`PT2S`, `PT0.5S`, `PT10M`, `P1DT2H`).

use std::time::Duration;

/// Parses `PnWnDTnHnMnS` (fractional seconds allowed). Years and months are refused: their
/// length depends on a calendar date.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not an ISO-8601 duration such as PT30S, PT10M or P1DT2H");
    let rest = s.strip_prefix('P').ok_or_else(bad)?;
    if rest.is_empty() || rest == "T" {
        return Err(bad());
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut eat = |part: &str, units: &[(char, f64)], allow_fraction: bool| -> Result<(), String> {
        let mut num = String::new();
        let mut last_unit = None;
        for c in part.chars() {
            if c.is_ascii_digit() || (c == '.' && allow_fraction) {
                num.push(c);
                continue;
            }
            let idx = units.iter().position(|(u, _)| *u == c).ok_or_else(|| {
                if matches!(c, 'Y') || (c == 'M' && !allow_fraction) {
                    format!("'{s}': years and months are not allowed in timeouts")
                } else {
                    bad()
                }
            })?;
            if last_unit.is_some_and(|l| l >= idx) || num.is_empty() {
                return Err(bad());
            }
            let n: f64 = num.parse().map_err(|_| bad())?;
            if c != 'S' && num.contains('.') {
                return Err(bad());
            }
            total += n * units[idx].1;
            num.clear();
            last_unit = Some(idx);
        }
        if num.is_empty() {
            Ok(())
        } else {
            Err(bad())
        }
    };
    eat(date, &[('W', 604_800.0), ('D', 86_400.0)], false)?;
    if let Some(t) = time {
        eat(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)], true)?;
    }
    if !total.is_finite() || total > 365.0 * 86_400.0 {
        return Err(format!("'{s}' is longer than a year"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// The regular expression the schema uses for durations (the parser is the real check).
pub const PATTERN: &str = r"^P(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        for (s, secs) in [
            ("PT2S", 2.0),
            ("PT0.5S", 0.5),
            ("PT10M", 600.0),
            ("PT1H30M", 5400.0),
            ("P1D", 86_400.0),
            ("P1DT1S", 86_401.0),
            ("P1W", 604_800.0),
        ] {
            assert_eq!(parse(s).unwrap(), Duration::from_secs_f64(secs), "{s}");
        }
    }

    #[test]
    fn refused_forms() {
        for s in [
            "", "P", "PT", "2S", "PT2", "PTS", "PT2X", "P1Y", "P1M", "PT1S2M", "PT1.5M", "P1DT",
            "pt2s",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
        assert!(parse("P1M").unwrap_err().contains("months"));
    }
}
