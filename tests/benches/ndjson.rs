//! Criterion: the bulk export's NDJSON check alone (no I/O), in bytes per second over the
//! ~1 MiB block of Observation lines the testkit's export server repeats, fed in 16 KiB
//! chunks: the check (`fhirconn_host::bulk::NdjsonCheck`) against the previous one (each line
//! UTF-8-checked, then parsed by serde_json into a visitor that builds nothing) and against
//! building a `serde_json::Value` per line, in the same run.

use criterion::{criterion_group, Criterion, Throughput};
use fhirconn_host::bulk::NdjsonCheck;
use fhirconn_sdk::serde;
use std::hint::black_box;

const CHUNK: usize = 16 * 1024;

/// The previous check: one JSON value parsed in full by serde_json without building it.
struct Probe(bool);

impl<'de> serde::Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Visit { top: true }).map(Probe)
    }
}

struct Visit {
    top: bool,
}

struct IsString(bool);

impl<'de> serde::Deserialize<'de> for IsString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Visit { top: false }).map(IsString)
    }
}

struct IsKey(bool);

impl<'de> serde::Deserialize<'de> for IsKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<bool, E> {
                Ok(v == "resourceType")
            }
        }
        d.deserialize_str(Key).map(IsKey)
    }
}

impl<'de> serde::de::Visitor<'de> for Visit {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(!self.top)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IsString>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(IsKey(key)) = map.next_key()? {
            let IsString(string) = map.next_value()?;
            if key {
                found = string;
            }
        }
        Ok(found && self.top)
    }
}

/// Runs `line` over every complete line of `block` fed in chunks, as the checks buffer.
fn by_lines(block: &[u8], mut line: impl FnMut(&[u8]) -> bool) -> u64 {
    let mut partial = Vec::new();
    let mut ok = 0;
    for chunk in block.chunks(CHUNK) {
        partial.extend_from_slice(chunk);
        let Some(pos) = memchr_last(chunk) else {
            continue;
        };
        let rest = partial.split_off(partial.len() - chunk.len() + pos + 1);
        let complete = std::mem::replace(&mut partial, rest);
        for l in complete.split(|&b| b == b'\n') {
            if !l.is_empty() && line(l) {
                ok += 1;
            }
        }
    }
    ok
}

fn memchr_last(chunk: &[u8]) -> Option<usize> {
    chunk.iter().rposition(|&b| b == b'\n')
}

fn ndjson(c: &mut Criterion) {
    let block = fhirconn_testkit::ndjson_block();
    let lines = block.iter().filter(|&&b| b == b'\n').count() as u64;
    let mut g = c.benchmark_group("ndjson check");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("check (byte scanner)", |b| {
        b.iter(|| {
            let mut check = NdjsonCheck::default();
            for chunk in black_box(block).chunks(CHUNK) {
                black_box(check.feed(chunk).unwrap());
            }
            check.finish().unwrap();
            assert_eq!(check.resources(), lines);
        })
    });
    g.bench_function("previous check (serde_json visitor)", |b| {
        b.iter(|| {
            let n = by_lines(black_box(block), |l| {
                std::str::from_utf8(l)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Probe>(t).ok())
                    .is_some_and(|Probe(ok)| ok)
            });
            assert_eq!(n, lines);
        })
    });
    g.bench_function("serde_json::Value per line", |b| {
        b.iter(|| {
            let n = by_lines(black_box(block), |l| {
                serde_json::from_slice::<serde_json::Value>(l)
                    .is_ok_and(|v| v.get("resourceType").is_some_and(|t| t.is_string()))
            });
            assert_eq!(n, lines);
        })
    });
    g.finish();
}

criterion_group!(benches, ndjson);

/// `NDJSON_CHECK_ROUNDS=N`: no criterion, only the check over the block `N` times, fed in
/// chunks as a download feeds it (for an
/// instruction count: `valgrind --tool=callgrind` with N and with 0, the difference over
/// N times the block's bytes is the check's instructions per byte).
fn main() {
    if let Some(rounds) = std::env::var("NDJSON_CHECK_ROUNDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let block = fhirconn_testkit::ndjson_block();
        let mut resources = 0;
        for _ in 0..rounds {
            // As a download does: checked bytes taken a MiB at a time.
            let mut check = NdjsonCheck::default();
            for chunk in black_box(block).chunks(CHUNK) {
                check.push(chunk).unwrap();
                if check.checked().len() >= 1 << 20 {
                    black_box(check.checked());
                    check.consume();
                }
            }
            black_box(check.finish().unwrap());
            resources += check.resources();
        }
        println!(
            "{rounds} rounds of {} bytes, {resources} resources",
            block.len()
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
