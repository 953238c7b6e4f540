//! Renders conformance results: a scheme × case matrix for people, JSON, or JUnit XML for CI.

use crate::{CaseResult, Outcome, CASES, SETUP};

fn cell(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail(_) => "FAIL",
        Outcome::NotApplicable => "-",
    }
}

/// The matrix, then one line per failure.
pub fn table(results: &[CaseResult]) -> String {
    let mut schemes: Vec<&str> = Vec::new();
    for r in results {
        if !schemes.contains(&r.scheme.as_str()) {
            schemes.push(&r.scheme);
        }
    }
    let w = schemes.iter().map(|s| s.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:w$}", "scheme");
    for c in CASES {
        out.push_str(&format!("  {c}"));
    }
    out.push('\n');
    for s in &schemes {
        out.push_str(&format!("{s:w$}"));
        let setup_failed = results
            .iter()
            .any(|r| r.scheme == *s && r.case == SETUP && matches!(r.outcome, Outcome::Fail(_)));
        if setup_failed {
            out.push_str("  FAIL: did not load or set up (see below)\n");
            continue;
        }
        for c in CASES {
            let o = results
                .iter()
                .find(|r| r.scheme == *s && r.case == *c)
                .map(|r| cell(&r.outcome))
                .unwrap_or("?");
            out.push_str(&format!("  {o:^width$}", width = c.len()));
        }
        out.push('\n');
    }
    for r in results {
        if let Outcome::Fail(why) = &r.outcome {
            out.push_str(&format!("FAIL {} / {}: {why}\n", r.scheme, r.case));
        }
    }
    let failed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .count();
    let passed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .count();
    out.push_str(&format!("{passed} passed, {failed} failed\n"));
    out
}

/// JSON: an array of results.
pub fn json(results: &[CaseResult]) -> String {
    serde_json::to_string_pretty(results).unwrap_or_default()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML: one test suite per scheme.
pub fn junit(results: &[CaseResult]) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"fhirconn-conformance\">\n",
    );
    let mut schemes: Vec<&str> = Vec::new();
    for r in results {
        if !schemes.contains(&r.scheme.as_str()) {
            schemes.push(&r.scheme);
        }
    }
    for s in schemes {
        let rows: Vec<&CaseResult> = results.iter().filter(|r| r.scheme == s).collect();
        let failures = rows
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .count();
        let skipped = rows
            .iter()
            .filter(|r| r.outcome == Outcome::NotApplicable)
            .count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">\n",
            xml_escape(s),
            rows.len()
        ));
        for r in rows {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
                xml_escape(s),
                xml_escape(&r.case),
                r.ms as f64 / 1000.0
            ));
            match &r.outcome {
                Outcome::Fail(why) => {
                    out.push_str(&format!("<failure message=\"{}\"/>", xml_escape(why)))
                }
                Outcome::NotApplicable => out.push_str("<skipped/>"),
                Outcome::Pass => {}
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(case: &str, outcome: Outcome) -> CaseResult {
        CaseResult {
            scheme: "s<1>".into(),
            case: case.into(),
            outcome,
            ms: 12,
        }
    }

    #[test]
    fn failures_are_listed_and_escaped() {
        let rs = vec![
            r("passes", Outcome::Pass),
            r("401-retries-once", Outcome::Fail("a \"b\" <c>".into())),
            r("renews-across-expiry", Outcome::NotApplicable),
        ];
        let t = table(&rs);
        assert!(
            t.contains("FAIL s<1> / 401-retries-once: a \"b\" <c>"),
            "{t}"
        );
        assert!(t.ends_with("1 passed, 1 failed\n"), "{t}");
        let x = junit(&rs);
        assert!(
            x.contains("<failure message=\"a &quot;b&quot; &lt;c&gt;\"/>"),
            "{x}"
        );
        assert!(x.contains("failures=\"1\" skipped=\"1\""), "{x}");
        assert!(json(&rs).contains("\"outcome\": \"fail\""));
    }

    #[test]
    fn a_library_that_did_not_load_is_a_failed_row() {
        let rs = vec![CaseResult {
            scheme: "/p/libfhirconn_x.so".into(),
            case: SETUP.into(),
            outcome: Outcome::Fail("/p/libfhirconn_x.so did not load: bad".into()),
            ms: 0,
        }];
        let t = table(&rs);
        assert!(t.contains("/p/libfhirconn_x.so  FAIL: did not load"), "{t}");
        assert!(
            t.contains("FAIL /p/libfhirconn_x.so / setup: /p/libfhirconn_x.so did not load: bad"),
            "{t}"
        );
        assert!(t.ends_with("0 passed, 1 failed\n"), "{t}");
    }
}
