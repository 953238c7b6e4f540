//! Unit tests of the bulk export: names, manifests, waits, NDJSON checks.

use super::*;

#[test]
fn resource_types_are_names_not_paths() {
    for ok in [
        "Patient",
        "Observation",
        "Ab",
        &format!("A{}", "b".repeat(63)),
    ] {
        assert!(is_resource_type(ok), "{ok}");
    }
    for bad in [
        "",
        "P",
        "patient",
        "../escaped",
        "/tmp/x",
        "Patient/../../x",
        "Pat\u{1b}[2Jient",
        "Patient.ndjson",
        "Patiént",
        &format!("A{}", "b".repeat(64)),
    ] {
        assert!(!is_resource_type(bad), "{bad:?}");
    }
}

#[test]
fn manifest_entries_are_checked_one_by_one() {
    let m = serde_json::json!({
        "requiresAccessToken": true,
        "output": [
            {"type": "Patient", "url": "https://h/f/1"},
            {"type": "../x", "url": "https://h/f/2"},
            {"type": "Observation", "url": "file:///etc/passwd"},
            {"type": "Encounter", "url": "/relative"},
            {"type": 7, "url": "https://h/f/3"},
            {"type": "Condition", "url": "http://h/f/4?sig=secret"},
        ]
    });
    let (token, entries) = parse_manifest(&m).unwrap();
    assert!(token);
    let ok: Vec<String> = entries
        .iter()
        .filter_map(|e| e.as_ref().ok().map(Entry::file_name))
        .collect();
    assert_eq!(ok, ["Patient.000.ndjson", "Condition.005.ndjson"]);
    let errs: Vec<String> = entries
        .iter()
        .filter_map(|e| e.as_ref().err().map(ToString::to_string))
        .collect();
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs[0].contains("entry 1") && errs[0].contains("\"../x\""));
    assert!(errs[1].contains("entry 2") && errs[1].contains("file"));
    assert!(parse_manifest(&serde_json::json!({})).is_err());
}

#[test]
fn shown_text_has_no_control_characters_or_signatures() {
    assert_eq!(printable("a\u{1b}[2Jb", 80), "a\\u{1b}[2Jb");
    assert!(printable(&"x".repeat(500), 80).ends_with('…'));
    let u = url::Url::parse("https://u:p@h/f?X-Amz-Signature=s#f").unwrap();
    assert_eq!(shown_url(&u), "https://h/f");
}

#[test]
fn retry_after_takes_seconds_and_http_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(
        parse_retry_after(" 120 ", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:51:07 GMT", now),
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", SystemTime::UNIX_EPOCH),
        Some(Duration::from_secs(1_709_164_800))
    );
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(Duration::from_secs(u64::MAX))
    );
    for bad in [
        "",
        "-1",
        "1.5",
        "soon",
        "Sun, 06 Nov 1994 25:00:00 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
    ] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad}");
    }
}

#[test]
fn a_single_wait_is_capped_by_the_maximum_and_the_deadline() {
    let s = Duration::from_secs;
    assert_eq!(next_wait(Some(s(3600)), s(1), s(60), s(3600)), s(60));
    assert_eq!(next_wait(Some(s(3600)), s(1), s(60), s(5)), s(5));
    assert_eq!(next_wait(Some(s(0)), s(1), s(60), s(100)), s(1));
    assert_eq!(next_wait(None, s(8), s(60), s(100)), s(8));
    assert_eq!(next_wait(Some(s(u64::MAX)), s(1), s(60), s(100)), s(60));
}

#[test]
fn ndjson_bytes_are_released_only_when_their_line_passed() {
    let mut c = NdjsonCheck::default();
    assert_eq!(c.feed(b"{\"resourceType\":\"Pa").unwrap(), b"");
    assert_eq!(
        c.feed(b"tient\"}\n{\"resou").unwrap(),
        b"{\"resourceType\":\"Patient\"}\n"
    );
    assert_eq!(
        c.feed(b"rceType\":\"X\"}\n\n").unwrap(),
        b"{\"resourceType\":\"X\"}\n\n"
    );
    assert_eq!(c.finish().unwrap(), b"");
    assert_eq!(c.resources(), 2);

    let mut c = NdjsonCheck::default();
    assert!(c.feed(b"{\"resourceType\":\"X\"}\nnot json\n").is_err());
    let mut c = NdjsonCheck::default();
    assert!(c.feed(b"{\"id\":\"1\"}\n").is_err());
    // The trailing line without a newline is checked too.
    let mut c = NdjsonCheck::default();
    assert_eq!(
        c.feed(b"{\"resourceType\":\"X\"}\n{\"bro").unwrap().len(),
        21
    );
    assert!(c.finish().is_err());
}

#[test]
fn an_endless_line_is_refused() {
    let mut c = NdjsonCheck::default();
    let chunk = vec![b'x'; 1 << 20];
    let mut failed = false;
    for _ in 0..=(MAX_LINE_BYTES >> 20) {
        if c.feed(&chunk).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed);
}

#[test]
fn kickoff_paths() {
    let r = ExportRequest {
        level: Level::Group("a/b c".into()),
        types: Some("Patient,Observation".into()),
        since: None,
    };
    assert_eq!(
        r.kickoff_path(),
        "Group/a%2Fb%20c/$export?_type=Patient%2CObservation"
    );
    assert_eq!(ExportRequest::default().kickoff_path(), "$export");
}

#[test]
fn ndjson_lines_pass_exactly_when_a_json_value_with_a_string_resource_type_parses() {
    // The check parses without building a `serde_json::Value`; it must agree with one.
    let oracle = |line: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(line)
            .is_ok_and(|v| v.get("resourceType").is_some_and(|t| t.is_string()))
    };
    let deep = |n: usize| {
        format!(
            "{{\"resourceType\":\"X\",\"a\":{}1{}}}",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let lines: Vec<Vec<u8>> = [
        r#"{"resourceType":"Patient","id":"1","a":[1,2.5,-3e2,true,null,{"b":"c"}]}"#,
        r#"{"resourceType":1}"#,
        r#"{"resourceType":null}"#,
        r#"{"resourceType":{"x":"y"}}"#,
        r#"{"resourceType":["Patient"]}"#,
        r#"{"resourceType":"A","resourceType":2}"#,
        r#"{"resourceType":2,"resourceType":"A"}"#,
        r#"{"a":{"resourceType":"Patient"}}"#,
        r#"{"resource\u0054ype":"Patient"}"#,
        r#"{"resourceType":"P\u00e9\n"}"#,
        r#"{"resourceType":"P","x":"\ud800"}"#,
        r#"{"resourceType":"P","x":"\q"}"#,
        r#"{"resourceType":"P","n":1e400}"#,
        r#"{"resourceType":"P","n":-}"#,
        r#"{"resourceType":"P","n":01}"#,
        r#"{"resourceType":"P"} x"#,
        r#"{"resourceType":"P",}"#,
        r#"[{"resourceType":"P"}]"#,
        r#""resourceType""#,
        "42",
        "{\"resourceType\":\"P\",\"x\":\"a\tb\"}",
        &deep(100),
        &deep(200),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        b"{\"resourceType\":\"P\",\"x\":\"\xff\"}".to_vec(),
        b"{\"resourceType\":\"P\",\"x\":\"\xc3\"}".to_vec(),
    ])
    .collect();
    for line in &lines {
        let mut c = NdjsonCheck::default();
        let ours = c.feed(&[line.as_slice(), b"\n"].concat()).is_ok();
        assert_eq!(ours, oracle(line), "{}", String::from_utf8_lossy(line));
    }
}
