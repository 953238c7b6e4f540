//! Large generated bulk export files for benchmarks: deterministic NDJSON (Observation
//! resources) streamed from one shared block in memory, so a server can serve gigabytes
//! without holding them.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::OnceLock;

/// The file name of generated file `i` in a manifest (`gen-<i>.ndjson`).
pub(crate) fn file_name(i: usize) -> String {
    format!("gen-{i}.ndjson")
}

/// The index of a generated file name, if it is one.
pub(crate) fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix("gen-")?
        .strip_suffix(".ndjson")?
        .parse()
        .ok()
}

/// About 1 MiB of complete NDJSON lines, built once.
fn block() -> &'static Bytes {
    static BLOCK: OnceLock<Bytes> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut out = Vec::with_capacity(1 << 20);
        let mut i = 0u32;
        while out.len() < (1 << 20) - 1024 {
            let line = json!({
                "resourceType": "Observation",
                "id": format!("obs-{i:08}"),
                "status": "final",
                "category": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                    "display": "Heart rate"}], "text": "Heart rate"},
                "subject": {"reference": format!("Patient/p-{}", i % 997)},
                "effectiveDateTime": format!("2026-{:02}-{:02}T{:02}:{:02}:00Z",
                    1 + i % 12, 1 + i % 28, i % 24, i % 60),
                "valueQuantity": {"value": 50.0 + f64::from(i % 700) / 10.0,
                    "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                    "code": "/min"},
                "note": [{"text": "généré \u{2014} \"quoted\" \\ text"}],
            });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
            i += 1;
        }
        Bytes::from(out)
    })
}

/// The block generated export files repeat: about 1 MiB of Observation lines (for benches).
pub fn ndjson_block() -> &'static [u8] {
    block()
}

/// The exact size of a generated file asked to be about `bytes` long (whole blocks, at
/// least one).
pub(crate) fn actual_size(bytes: u64) -> u64 {
    let b = block().len() as u64;
    (bytes / b).max(1) * b
}

/// A 200 answer streaming a generated file of [`actual_size`]`(bytes)` bytes.
pub(crate) fn answer(bytes: u64) -> Response {
    let size = actual_size(bytes);
    let blocks = size / block().len() as u64;
    let stream =
        futures_util::stream::iter((0..blocks).map(|_| Ok::<_, std::io::Error>(block().clone())));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/fhir+ndjson".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
