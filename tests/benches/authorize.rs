//! Criterion: `authorize` of the basic scheme through the ABI (loaded cdylib, sabi_trait
//! dispatch, type conversion) versus a direct Rust call on the same scheme's rlib.

use criterion::{criterion_group, criterion_main, Criterion};
use fhirconn_abi::{host_ref, AuthRequest, ConnectionContext};
use fhirconn_host::plugins::Registry;
use fhirconn_sdk::testing::MockHost;
use fhirconn_sdk::{ConnectionInfo, Scheme};
use std::hint::black_box;

fn authorize(c: &mut Criterion) {
    let mock = MockHost::new();
    let settings = serde_json::json!({"username": "bench", "password": "bench-password"});
    let info = ConnectionInfo {
        id: "b".into(),
        base_url: "http://127.0.0.1/fhir".into(),
    };

    // Direct: the rlib, SDK types, no FFI.
    let direct = mock.with_host(|h| {
        fhirconn_basic::Basic
            .configure(&info, settings.clone(), h)
            .unwrap()
    });
    let req = fhirconn_sdk::AuthRequest {
        connection: info.clone(),
        interactive: false,
        force_login: false,
    };

    // Across the ABI: the cdylib loaded by the host's registry.
    let reg = Registry::new(vec![fhirconn_tests::plugin_dir()]);
    let scheme = reg.get("basic").unwrap();
    let ctx = ConnectionContext {
        connection_id: "b".into(),
        base_url: "http://127.0.0.1/fhir".into(),
        extensions_json: "{}".into(),
    };
    let conn =
        fhirconn_host::plugins::configure_raw(&scheme, &ctx, &settings.to_string(), &mock).unwrap();
    let abi_req = AuthRequest {
        connection: ctx.clone(),
        flags: 0,
        extensions_json: "{}".into(),
    };

    let mut g = c.benchmark_group("authorize/basic");
    g.bench_function("direct", |b| {
        mock.with_host(|h| b.iter(|| black_box(direct.authorize(black_box(&req), h).unwrap())))
    });
    g.bench_function("abi", |b| {
        b.iter(|| {
            black_box(
                conn.authorize(black_box(&abi_req), host_ref(&mock))
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, authorize);
criterion_main!(benches);
