//! Criterion: the per-request signing path. The out-of-tree `vendor-hmac` scheme (a loaded
//! cdylib) signing one request through the host — cached credentials, the body's SHA-256,
//! the `sign-request` payload, the ABI crossing, the plugin's work, the answer read back into
//! header values and the signature registered with the redactor
//! (`Connection::authorization_headers`, what the transport does for every hop) — versus the
//! same signature computed by a direct call in this process (the testkit's reference
//! signer: body hash, HMAC-SHA256, hex, headers, plus the random nonce the plugin draws).
//! The difference is the cost of the host path per request (issue 15: at most 10 µs).
//!
//! The plugin comes from `FHIRCONN_TEST_VENDOR_DIR` (release builds, set by `cargo xtask
//! bench`), else target/vendor-plugins (`cargo xtask build-plugins`).

use criterion::{criterion_group, criterion_main, Criterion};
use fhirconn_testkit::hmac::{self, HmacConfig};
use reqwest::header::{HeaderName, HeaderValue};
use std::hint::black_box;

fn vendor_dir() -> std::path::PathBuf {
    std::env::var_os("FHIRCONN_TEST_VENDOR_DIR")
        .map(Into::into)
        .unwrap_or_else(|| fhirconn_tests::root().join("target/vendor-plugins"))
}

fn sign(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = HmacConfig::default();
    let key = String::from_utf8(config.key.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = rt
        .block_on(
            fhirconn_host::Host::builder()
                .config_value(
                    dir.path(),
                    serde_json::json!({"connections": {"v": {
                        "base-url": "https://fhir.vendor.example/r4",
                        "auth": {"scheme": "vendor-hmac", "key-id": config.key_id, "key": key}
                    }}}),
                )
                .plugin_dir(vendor_dir())
                .only_explicit_plugin_dirs()
                .build(),
        )
        .unwrap_or_else(|e| panic!("{e} (build the vendor-hmac plugin first)"));
    let conn = host.connection("v").unwrap();
    let url = conn.url_for("Patient?name=smith&_count=10").unwrap();
    let target = "/r4/Patient?name=smith&_count=10";
    let headers = vec![(
        HeaderName::from_static("accept"),
        HeaderValue::from_static("application/fhir+json"),
    )];
    let body = vec![b'x'; 4096];
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };

    let mut g = c.benchmark_group("sign/vendor-hmac");
    for (name, method, body) in [
        ("get", reqwest::Method::GET, None),
        ("post-4k", reqwest::Method::POST, Some(&body[..])),
    ] {
        g.bench_function(format!("{name}/direct"), |b| {
            b.iter(|| {
                let nonce = fhirconn_sdk::oauth::random_hex(16).unwrap();
                black_box(hmac::sign(
                    &config,
                    method.as_str(),
                    black_box(target),
                    now(),
                    &nonce,
                    body.unwrap_or_default(),
                ))
            })
        });
        g.bench_function(format!("{name}/host"), |b| {
            b.iter(|| {
                black_box(
                    rt.block_on(conn.authorization_headers(
                        &method,
                        black_box(&url),
                        &headers,
                        body,
                    ))
                    .unwrap(),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
