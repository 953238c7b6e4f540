//! Per-request signing end to end: the out-of-tree `vendor-hmac` plugin
//! (tests/vendor-hmac-plugin, built by `cargo xtask build-plugins` into
//! target/vendor-plugins) in the unchanged `fhirconn` binary, against the testkit's
//! HMAC-verifying server, which recomputes every signature independently and rejects wrong,
//! expired and replayed ones.

use fhirconn_testkit::hmac::{self, HmacConfig, HmacServer};
use fhirconn_tests::{fhirconn_command, root, run_command, Out};
use std::path::{Path, PathBuf};

const KEY: &str = "CANARY-vendor-hmac-key";

fn vendor_dir() -> PathBuf {
    let d = root().join("target/vendor-plugins");
    assert!(
        d.join("libfhirconn_vendor_hmac.so").exists() || cfg!(not(target_os = "linux")),
        "run `cargo xtask build-plugins` (it builds tests/vendor-hmac-plugin) first"
    );
    d
}

fn write_config(dir: &Path, base_url: &str, key: &str) {
    std::fs::write(dir.join("key.txt"), format!("{key}\n")).unwrap();
    std::fs::write(
        dir.join("fhirconn.yaml"),
        format!(
            "connections:\n  v:\n    base-url: {base_url}\n    auth:\n      scheme: vendor-hmac\n      key-id: vendor-key-1\n      key-file: key.txt\n"
        ),
    )
    .unwrap();
}

fn fhirconn(dir: &Path, args: &[&str]) -> Out {
    run_command(
        fhirconn_command(dir, false)
            .arg("--plugin-dir")
            .arg(vendor_dir())
            .args(args),
    )
}

fn server(rt: &tokio::runtime::Runtime) -> HmacServer {
    rt.block_on(HmacServer::start(HmacConfig::default()))
        .unwrap()
}

#[test]
fn the_binary_signs_every_request_hop_and_retry_with_an_out_of_tree_scheme() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = server(&rt);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &server.base_url(), KEY);

    let out = fhirconn(dir.path(), &["-vv", "test", "v"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("PASS  v"), "{}", out.all());
    let out = fhirconn(
        dir.path(),
        &[
            "-vv",
            "get",
            "v",
            "Patient?name=a%20b",
            "--query",
            "_count=2",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("/fhir/Patient?name=a%20b&_count=2"),
        "{}",
        out.all()
    );
    let out = fhirconn(
        dir.path(),
        &[
            "post",
            "v",
            "Patient",
            "--data",
            r#"{"resourceType":"Patient"}"#,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains(r#""body_bytes":26"#), "{}", out.all());
    // A redirect: each hop is signed for its own URL.
    let out = fhirconn(dir.path(), &["get", "v", "moved"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("/fhir/Patient/1"), "{}", out.all());
    // A 401 to a correctly signed request: retried once, signed afresh (a new nonce).
    let flaky = fhirconn(dir.path(), &["-vv", "get", "v", "flaky"]);
    assert_eq!(flaky.code, 0, "{}", flaky.all());

    let seen = server.seen();
    let targets: Vec<(&str, Option<&str>)> = seen
        .iter()
        .map(|s| (s.target.as_str(), s.rejected.as_deref()))
        .collect();
    assert_eq!(
        targets,
        [
            ("/fhir/metadata", None),
            ("/fhir/Patient?name=a%20b&_count=2", None),
            ("/fhir/Patient", None),
            ("/fhir/moved", None),
            ("/fhir/Patient/1", None),
            ("/fhir/flaky", Some("flaky: first request refused")),
            ("/fhir/flaky", None),
        ]
    );
    let nonce = |i: usize| {
        seen[i]
            .headers
            .iter()
            .find(|(n, _)| n == "x-vendor-nonce")
            .map(|(_, v)| v.clone())
    };
    assert_ne!(nonce(5), nonce(6));
    // Neither the key nor a signature reaches the output, even at -vv.
    for s in &seen {
        let sig = &s
            .headers
            .iter()
            .find(|(n, _)| n == "x-vendor-signature")
            .unwrap()
            .1;
        let mac = sig.rsplit('=').next().unwrap();
        for out in [&out, &flaky] {
            assert!(!out.all().contains(mac) && !out.all().contains(KEY));
        }
    }
}

#[test]
fn a_wrong_key_is_rejected_and_the_server_detects_replays_and_expired_signatures() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = server(&rt);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &server.base_url(), "CANARY-not-the-right-key");
    let out = fhirconn(dir.path(), &["get", "v", "Patient/1"]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(out.all().contains("401"), "{}", out.all());
    assert!(
        !out.all().contains("CANARY-not-the-right-key"),
        "{}",
        out.all()
    );
    let seen = server.seen();
    // the first refusal and the one retry with a fresh signature
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.rejected.as_deref() == Some("signature does not match")));

    // The server's own checks, with its reference signer.
    let config = HmacConfig::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = format!("{}/Patient/2", server.base_url());
    let send = |time: u64, nonce: &str| {
        let headers = hmac::sign(&config, "GET", "/fhir/Patient/2", time, nonce, b"");
        rt.block_on(async {
            let mut rb = reqwest::Client::new().get(&url);
            for (n, v) in headers {
                rb = rb.header(n, v);
            }
            rb.send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!(send(now, "00112233445566778899aabbccddeeff"), 200);
    assert_eq!(send(now, "00112233445566778899aabbccddeeff"), 401);
    assert_eq!(send(now - 600, "ffeeddccbbaa99887766554433221100"), 401);
    let reasons: Vec<_> = server
        .seen()
        .into_iter()
        .skip(2)
        .map(|s| s.rejected)
        .collect();
    assert_eq!(
        reasons,
        [
            None,
            Some("replayed nonce".to_string()),
            Some("signature expired".to_string())
        ]
    );
}
