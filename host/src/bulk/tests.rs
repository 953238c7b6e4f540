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
    assert_eq!(shown_url(&u), "https://h/f?X-Amz-Signature=\u{2026}");
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

/// Whether `line` passes the check, and whether a `serde_json::Value` with a string
/// `resourceType` parses from it (blank lines, which the check skips, are not asked).
fn agree(line: &[u8]) -> (bool, bool) {
    let oracle = serde_json::from_slice::<serde_json::Value>(line)
        .is_ok_and(|v| v.get("resourceType").is_some_and(|t| t.is_string()));
    let mut c = NdjsonCheck::default();
    let ours = c.feed(&[line, b"\n"].concat()).is_ok();
    // The last line without its newline goes through `finish`, one line UTF-8-checked alone.
    let mut c = NdjsonCheck::default();
    let finished = c.feed(line).is_ok() && c.finish().is_ok();
    assert_eq!(ours, finished, "{}", String::from_utf8_lossy(line));
    (ours, oracle)
}

#[test]
fn the_check_agrees_with_serde_json_on_escapes_surrogates_numbers_depth_and_syntax() {
    let deep = |n: usize, open: &str, close: &str| {
        format!(
            "{{\"resourceType\":\"X\",\"a\":{}1{}}}",
            open.repeat(n),
            close.repeat(n)
        )
    };
    let mut lines: Vec<String> = Vec::new();
    for n in 120..=130 {
        lines.push(deep(n, "[", "]"));
        lines.push(deep(n, "{\"k\":", "}"));
    }
    let big = |d: usize| format!("1{}", "0".repeat(d));
    for n in [
        "0",
        "-0",
        "1",
        "-1",
        "01",
        "-01",
        "+1",
        "1.",
        ".5",
        "1.e5",
        "1e",
        "1e+",
        "1E5",
        "2.5E-3",
        "0x10",
        "1e308",
        "1e309",
        "-1e309",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "0e99999",
        "0.0e99999999999999999999",
        "1e-99999",
        "1e99999999999999999999",
        "- 1",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "1.5e+2",
        &big(300),
        &big(307),
        &big(308),
        &big(309),
        &big(400),
        &format!("0.{}", big(400)),
        &format!("-{}", big(308)),
        &format!("-{}", big(309)),
    ] {
        lines.push(format!("{{\"resourceType\":\"X\",\"n\":{n}}}"));
        lines.push(format!("{{\"resourceType\":\"X\",\"n\":[{n},{n}]}}"));
    }
    for s in [
        r"\u0000",
        r"\u001f",
        r"\ud83d\ude00",
        r"\ud83d",
        r"\ude00",
        r"\ud83d\u0041",
        r"\ud83dx",
        r"\ud83d\\",
        r"\uZZZZ",
        r"\u12",
        r"\u12\",
        r"\/",
        r"\b\f\n\r\t\\\",
        r"\x",
        r"\U0041",
        r"\uDBFF\uDFFF",
        r"\uD800\uDC00",
        r"\uDC00\uD800",
        "\u{7f}",
        "\u{1}",
        "\t",
        "\u{1f}",
        "é",
        "\u{2028}",
        "😀",
        "\u{0}",
    ] {
        lines.push(format!("{{\"resourceType\":\"X\",\"s\":\"{s}\"}}"));
        lines.push(format!("{{\"resourceType\":\"X{s}\"}}"));
        lines.push(format!("{{\"resourc{s}eType\":\"X\"}}"));
    }
    // A special byte at every offset of strings around the eight-byte steps.
    for len in 0..20 {
        for at in 0..len {
            for special in ["\"", "\\", "\u{1}", "\\n", "é", "\u{7f}", " "] {
                let mut s: String = "a".repeat(len);
                s.replace_range(at..=at, special);
                lines.push(format!("{{\"resourceType\":\"X\",\"s\":\"{s}\"}}"));
                lines.push(format!("{{\"{s}\":1,\"resourceType\":\"{s}\"}}"));
            }
        }
    }
    for l in [
        "{}",
        "[]",
        "{\"resourceType\":\"X\"",
        "{\"resourceType\" \"X\"}",
        "{resourceType:\"X\"}",
        "{\"resourceType\":\"X\",\"a\":1,}",
        "{\"resourceType\":\"X\",\"a\":[1,]}",
        "{,\"resourceType\":\"X\"}",
        "{\"resourceType\":\"X\",\"a\"}",
        " {\"resourceType\":\"X\"} ",
        "\t{ \"resourceType\" : \"X\" , \"a\" : [ 1 , { } , [ ] ] }\r",
        "{\"resourceType\":\"X\"}\u{c}",
        "{\"resourceType\":\"X\"}}",
        "{\"resourceType\":\"X\"]",
        "{\"resourceType\":\"X\",\"a\":[}",
        "{\"resourceType\":\"X\",\"a\":{]}",
        "{\"resourceType\":\"X\",\"a\":tru}",
        "{\"resourceType\":\"X\",\"a\":True}",
        "{\"resourceType\":\"X\",\"a\":nulll}",
        "{\"resourceType\":\"X\",\"a\":false}",
        "{\"resourceType\":\"X\"}{}",
        "{\"resourceType\":\"X\"} 1",
        "{\"resourceType\":\"\"}",
        "{\"a\":{\"resourceType\":\"X\"},\"resourceType\":\"Y\"}",
        "{\"resourceType\":\"X\",\"resourceType\":{}}",
        "{\"resourceType\":[],\"resourceType\":\"X\"}",
        "{\"resourceType\":\"X\"\u{a0}}",
        "{\"resourceType\":\"X\",\"\":\"\"}",
    ] {
        lines.push(l.to_string());
    }
    let mut disagree = Vec::new();
    for l in &lines {
        let (ours, oracle) = agree(l.as_bytes());
        if ours != oracle {
            disagree.push(format!("{l} (check {ours}, serde_json {oracle})"));
        }
    }
    assert!(disagree.is_empty(), "{disagree:#?}");
}

/// Random mutations (a fixed-seed generator) of resource lines, each answered as a
/// `serde_json::Value` would: bytes replaced, inserted, deleted, or cut, invalid UTF-8 too.
#[test]
fn the_check_agrees_with_serde_json_on_mutated_lines() {
    let bases: [&[u8]; 3] = [
        br#"{"resourceType":"Observation","id":"o-1","valueQuantity":{"value":-72.5e-1,"unit":"b/m"},"note":[{"text":"g\u00e9n\u00e9r\u00e9 \"q\" \\ \ud83d\ude00 ok"}],"flag":[true,false,null]}"#,
        "{\"resourceType\":\"Patient\",\"name\":[{\"given\":[\"Zoë\",\"ß\"]}],\"n\":[0,1,2e3,[[{}]]]}".as_bytes(),
        br#"{"a":{"b":[1,2,{"c":"\/\b\f\n\r\t"}]},"resourceType":"X"}"#,
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let alphabet = b"{}[]\",:\\/ 0123456789.eE+-tfnulrsaubU\x01\x7f\xc3\xa9\xff\xed\xa0\x80";
    let mut checked = 0;
    let mut disagree = Vec::new();
    for _ in 0..30_000 {
        let mut line = bases[next(bases.len())].to_vec();
        for _ in 0..1 + next(3) {
            let at = next(line.len() + 1);
            let byte = alphabet[next(alphabet.len())];
            match next(4) {
                0 if at < line.len() => line[at] = byte,
                1 => line.insert(at, byte),
                2 if at < line.len() => {
                    line.remove(at);
                }
                _ => line.truncate(at),
            }
        }
        if line.contains(&b'\n') || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        checked += 1;
        let (ours, oracle) = agree(&line);
        if ours != oracle {
            disagree.push(String::from_utf8_lossy(&line).into_owned());
        }
    }
    assert!(checked > 20_000);
    assert!(
        disagree.is_empty(),
        "{} disagreements: {disagree:#?}",
        disagree.len()
    );
}
