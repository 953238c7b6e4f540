//! `fhirconn-fuzz TARGET|all --seconds N [--seed S]`: a mutation fuzzer runnable on the stable
//! toolchain (cargo-fuzz needs nightly, which this project's machines do not have). It mutates
//! seed inputs (bit flips, insertions, deletions, duplications, splices, interesting tokens) and
//! feeds them to the parsers that read untrusted input; a panic is a finding: the input is
//! written to `target/fuzz-findings/` and the process exits 1. `cargo xtask fuzz --seconds N`
//! runs every target. Every finding becomes a regression test.

use fhirconn_sdk::testing::MockHost;
use fhirconn_sdk::HttpResponse;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\x00",
    b"\xff",
    b"&a ",
    b"*a",
    b"\n  ",
    b"- ",
    b"'",
    b"=",
    b"Bearer ",
    b"-1",
    b"1e999",
    b"null",
    b"true",
    b"\xe2\x82\xac",
    b"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
    b"PT",
    b"P1Y2M",
    b"https://",
    b"%",
    b"%ff",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, t.iter().copied());
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                data.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = data[a..b].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, chunk);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let at = rng.below(len + 1);
                    data.splice(at..at, other[a..].iter().copied().take(64));
                }
            }
            _ => {
                let at = rng.below(len + 1);
                data.insert(at, rng.next() as u8);
            }
        }
    }
    data.truncate(64 * 1024);
    data
}

fn json_response(body: &[u8]) -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
    }
}

type Target = (&'static str, Vec<Vec<u8>>, fn(&[u8]));

thread_local! {
    static REGISTRY: fhirconn_host::plugins::Registry =
        fhirconn_host::plugins::Registry::new(vec![fhirconn_tests::plugin_dir()]);
}

static SMART_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn smart_settings(token_url: Option<&str>) -> serde_json::Value {
    let key = SMART_KEY.get_or_init(|| {
        let k = fhirconn_host::keygen::generate(fhirconn_host::keygen::KeyAlg::Es384, Some("k"))
            .expect("key");
        use secrecy_expose::ExposeSecret as _;
        k.private_pem.expose_secret().to_string()
    });
    let mut s = serde_json::json!({"client-id": "c", "private-key": key, "kid": "k", "scope": "system/*.rs"});
    if let Some(t) = token_url {
        s["token-url"] = serde_json::json!(t);
    }
    s
}

mod secrecy_expose {
    pub use fhirconn_sdk::ExposeSecret;
}

/// Configures `scheme` (the built cdylib, through the ABI) against a mock host whose HTTP
/// answers come from `answer`, then authorizes once. A panic inside the plugin is caught by the
/// SDK and comes back as an error saying so: that is a finding.
fn through_plugin(
    scheme: &str,
    settings: serde_json::Value,
    answer: impl Fn(&fhirconn_sdk::HttpRequest) -> HttpResponse + Send + Sync + 'static,
) {
    through_plugin_on(
        scheme,
        settings,
        MockHost::new().with_http(move |req| Ok(answer(req))),
    );
}

/// Configures `scheme` with `settings` on `mock` (files, HTTP answers) and authorizes once; a
/// plugin panic fails the run.
fn through_plugin_on(scheme: &str, settings: serde_json::Value, mock: MockHost) {
    let handle = REGISTRY
        .with(|r| r.get(scheme))
        .expect("the scheme's plugin loads");
    let ctx = fhirconn_abi::ConnectionContext {
        connection_id: "fuzz".into(),
        base_url: "https://fhir.example/r4".into(),
        extensions_json: "{}".into(),
    };
    let check = |e: &fhirconn_abi::AbiError| {
        if e.message.as_str().starts_with("the plugin panicked") {
            panic!("{scheme}: {}", e.message);
        }
    };
    match fhirconn_host::plugins::configure_raw(&handle, &ctx, &settings.to_string(), &mock) {
        Ok(conn) => {
            let req = fhirconn_abi::AuthRequest {
                connection: ctx.clone(),
                flags: 0,
                extensions_json: "{}".into(),
            };
            if let Err(e) = conn
                .authorize(&req, fhirconn_abi::host_ref(&mock))
                .into_result()
            {
                check(&e);
            }
        }
        Err(e) => check(&e),
    }
}

fn targets() -> Vec<Target> {
    vec![
        (
            "config",
            vec![
                b"connections:\n  a:\n    base-url: https://h/fhir\n    read-timeout: PT30S\n    auth: {scheme: basic, username: u, password-file: pw.txt}\n".to_vec(),
                b"connections:\n  a:\n    base-url: http://h\n    auth:\n      - {scheme: mtls, certificate-file: c.pem, private-key-file: k.pem}\n      - {scheme: smart-backend, client-id: x, private-key-file: k.pem, kid: k, scope: system/*.rs}\n".to_vec(),
                b"a: &a [x,x]\nb: [*a,*a]\nconnections: {}\n".to_vec(),
            ],
            |input| {
                if let Ok(doc) = fhirconn_host::config::Document::parse(Path::new("fuzz.yaml"), input) {
                    let _ = fhirconn_host::config::connections(&doc);
                }
            },
        ),
        (
            "www-authenticate",
            vec![
                br#"Bearer authorization_uri="https://login.microsoftonline.com/t", resource_id="https://x", realm="https://x""#.to_vec(),
                br#"Basic realm="a", Bearer error="invalid_token", error_description="expired""#.to_vec(),
            ],
            |input| {
                // The SDK's parser in-process, then azure-ad, which without a tenant reads the
                // challenge of an unauthenticated request.
                let header = String::from_utf8_lossy(input).replace(['\r', '\n'], " ");
                let _ = fhirconn_sdk::www_authenticate::parse(&header);
                through_plugin(
                    "azure-ad",
                    serde_json::json!({"client-id": "c", "flow": "client-credentials", "client-secret": "s"}),
                    move |_| HttpResponse {
                        status: 401,
                        headers: vec![("www-authenticate".into(), header.clone())],
                        body: Vec::new(),
                    },
                );
            },
        ),
        (
            "token-response",
            vec![
                br#"{"access_token":"abc","token_type":"Bearer","expires_in":300,"scope":"system/*.rs"}"#.to_vec(),
                br#"{"access_token":"abc","token_type":"bearer","expires_in":1.5e3}"#.to_vec(),
            ],
            |input| {
                let body = input.to_vec();
                through_plugin(
                    "oidc-client-credentials",
                    serde_json::json!({"token-url": "https://i/t", "client-id": "c", "client-secret": "s"}),
                    move |_| json_response(&body),
                );
                let body = input.to_vec();
                through_plugin("smart-backend", smart_settings(Some("https://i/t")), move |_| json_response(&body));
            },
        ),
        (
            "smart-configuration",
            vec![
                br#"{"token_endpoint":"auth/token","grant_types_supported":["client_credentials"],"token_endpoint_auth_methods_supported":["private_key_jwt"],"token_endpoint_auth_signing_alg_values_supported":["ES384"]}"#.to_vec(),
            ],
            |input| {
                let body = input.to_vec();
                through_plugin("smart-backend", smart_settings(None), move |req| {
                    if req.url.ends_with("smart-configuration") {
                        json_response(&body)
                    } else {
                        json_response(br#"{"access_token":"a","token_type":"Bearer"}"#)
                    }
                });
            },
        ),
        (
            "oidc-discovery",
            vec![
                br#"{"issuer":"https://i","authorization_endpoint":"https://i/a","token_endpoint":"https://i/t","jwks_uri":"https://i/k","response_types_supported":["code"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256"]}"#.to_vec(),
            ],
            |input| {
                let body = input.to_vec();
                through_plugin(
                    "oidc-client-credentials",
                    serde_json::json!({"issuer": "https://i", "client-id": "c", "client-secret": "s"}),
                    move |req| {
                        if req.url.contains("well-known") {
                            json_response(&body)
                        } else {
                            json_response(br#"{"access_token":"a","token_type":"Bearer"}"#)
                        }
                    },
                );
            },
        ),
        (
            "device-code",
            vec![
                br#"{"device_code":"d","user_code":"U","verification_uri":"https://i/v","interval":5,"expires_in":30,"error":"authorization_pending"}"#.to_vec(),
                br#"{"device_code":"d","interval":1,"expires_in":9,"error":"slow_down"}"#.to_vec(),
            ],
            |input| {
                // The SDK's device-code grant in-process: the fuzzed body answers the device
                // authorization request (200) and every poll (400); MockHost's clock makes the
                // waits instant, and the code's lifetime is bounded, so the loop ends.
                use fhirconn_sdk::oauth::{device_code, TokenRequest};
                let body = input.to_vec();
                let mock = MockHost::new().with_http(move |req| {
                    let status = if req.url.ends_with("/d") { 200 } else { 400 };
                    Ok(HttpResponse { status, ..json_response(&body) })
                });
                mock.with_host(|h| {
                    let body = input.to_vec();
                    if let Ok(a) = device_code::start("https://i/d", "c", "s", h) {
                        let _ = device_code::poll(&TokenRequest::new("https://i/t"), &a, h);
                    }
                    let _ = fhirconn_sdk::oauth::token_response(&json_response(&body), "t", h);
                });
            },
        ),
        (
            "capability-statement",
            vec![
                br#"{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","software":{"name":"x","version":"1"},"format":["json"],"rest":[{"mode":"server"}]}"#.to_vec(),
                br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"x","diagnostics":"d"}]}"#.to_vec(),
            ],
            |input| {
                let resp = fhirconn_host::transport::Response {
                    status: reqwest::StatusCode::OK,
                    headers: Default::default(),
                    body: input.to_vec(),
                    url: url::Url::parse("https://h/fhir/metadata").expect("url"),
                    peer_certificate: None,
                };
                let _ = fhirconn_host::parse_capability(&resp);
                let _ = fhirconn_host::operation_outcome_text(input);
            },
        ),
        (
            "private-key",
            vec![
                smart_settings(None)["private-key"].as_str().unwrap_or_default().as_bytes().to_vec(),
                br#"{"kty":"EC","crv":"P-384","x":"AA","y":"AA","d":"AA","kid":"k"}"#.to_vec(),
                b"-----BEGIN RSA PRIVATE KEY-----
MIIB
-----END RSA PRIVATE KEY-----
".to_vec(),
                b"-----BEGIN EC PRIVATE KEY-----
Proc-Type: 4,ENCRYPTED

AAAA
-----END EC PRIVATE KEY-----
".to_vec(),
            ],
            |input| {
                // The SDK's key reader in-process (PEM: PKCS#8, PKCS#1, SEC1; JWK and JWKS, with
                // and without a kid), then smart-backend, which reads it from a file, and mtls,
                // which reads the same key formats beside a certificate.
                let _ = fhirconn_sdk::keys::load(input, None);
                let _ = fhirconn_sdk::keys::load(input, Some("k"));
                let mut s = smart_settings(Some("https://i/t"));
                if let Some(o) = s.as_object_mut() {
                    o.remove("private-key");
                    o.insert("private-key-file".into(), "key.pem".into());
                }
                through_plugin_on("smart-backend", s, MockHost::new().with_file("key.pem", input));
                through_plugin_on(
                    "mtls",
                    serde_json::json!({"certificate-file": "c.pem", "private-key-file": "k.pem"}),
                    MockHost::new()
                        .with_file("c.pem", input)
                        .with_file("k.pem", input),
                );
            },
        ),
        (
            "pkcs12",
            vec![
                vec![0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x03, 0x30, 0x80],
                b"not a pkcs12 file".to_vec(),
            ],
            |input| {
                through_plugin_on(
                    "mtls",
                    serde_json::json!({"p12-file": "c.p12", "p12-password": "pw"}),
                    MockHost::new().with_file("c.p12", input),
                );
            },
        ),
        (
            "ndjson",
            vec![
                b"{\"resourceType\":\"Patient\",\"id\":\"1\"}\n{\"resourceType\":\"Patient\",\"id\":\"2\"}\n".to_vec(),
                b"{\"resourceType\":\"Observation\"}\r\n{\"resourceType\":".to_vec(),
            ],
            |input| {
                // Fed in two chunks split at a varying point, as downloads arrive.
                let mut check = fhirconn_host::bulk::NdjsonCheck::default();
                let at = input.first().map_or(0, |&b| usize::from(b) % (input.len() + 1));
                let mut passed = 0;
                for chunk in [&input[..at], &input[at..]] {
                    match check.feed(chunk) {
                        Ok(bytes) => passed += bytes.len(),
                        Err(_) => return,
                    }
                }
                if let Ok(bytes) = check.finish() {
                    passed += bytes.len();
                }
                assert!(passed <= input.len(), "more bytes released than received");
            },
        ),
        (
            "export-manifest",
            vec![
                br#"{"transactionTime":"2026-01-01T00:00:00Z","request":"https://h/fhir/$export","requiresAccessToken":true,"output":[{"type":"Patient","url":"https://h/f/1"},{"type":"../x","url":"file:///etc/passwd"}],"error":[]}"#.to_vec(),
            ],
            |input| {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) {
                    if let Ok((_, entries)) = fhirconn_host::bulk::parse_manifest(&v) {
                        // Whatever the server sends, an accepted entry names a file inside
                        // --out and an http(s) URL.
                        for e in entries.into_iter().flatten() {
                            assert!(fhirconn_host::bulk::is_resource_type(&e.resource_type));
                            assert!(matches!(e.url.scheme(), "http" | "https"), "{}", e.url);
                            let name = e.file_name();
                            assert!(!name.contains('/') && !name.contains("..") && !name.starts_with('.'), "{name}");
                        }
                    }
                }
            },
        ),
        // Not in `all`: proves that a panicking seed fails the run (tests/tests/conformance_teeth.rs).
        ("selftest-panic", vec![b"panic".to_vec()], |input| {
            assert!(input != b"panic", "the self-test seed panics");
        }),
    ]
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    let mut seconds = 10u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            "--seed" => seed = it.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            _ => {}
        }
    }
    // Findings are reported by this harness; silence the default panic output.
    std::panic::set_hook(Box::new(|_| {}));
    let all = targets();
    let chosen: Vec<&Target> = all
        .iter()
        .filter(|t| (which == "all" && !t.0.starts_with("selftest")) || t.0 == which)
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "unknown target {which}; targets: all, {}",
            all.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
        );
        return std::process::ExitCode::from(2);
    }
    let findings_dir = fhirconn_tests::root().join("target/fuzz-findings");
    let per_target = Duration::from_secs(seconds.max(1)) / chosen.len() as u32;
    let mut rng = Rng(seed);
    let mut findings = 0;
    println!("seed {seed}, {:.1} s per target", per_target.as_secs_f64());
    for (name, seeds, run) in chosen {
        let started = Instant::now();
        let mut execs = 0u64;
        // A seed that panics is a finding like any other input.
        for (i, s) in seeds.iter().enumerate() {
            if catch_unwind(AssertUnwindSafe(|| run(s))).is_err() {
                findings += 1;
                let _ = std::fs::create_dir_all(&findings_dir);
                let path = findings_dir.join(format!("{name}-seed-{i}.bin"));
                let _ = std::fs::write(&path, s);
                println!(
                    "FINDING {name}: seed {i} panics; input saved to {}",
                    path.display()
                );
            }
        }
        while started.elapsed() < per_target {
            let input = mutate(&mut rng, seeds);
            execs += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                findings += 1;
                let _ = std::fs::create_dir_all(&findings_dir);
                let path = findings_dir.join(format!("{name}-{execs}.bin"));
                let _ = std::fs::write(&path, &input);
                println!("FINDING {name}: a panic; input saved to {}", path.display());
            }
        }
        println!(
            "{name:22} {execs:>9} inputs, {:.0}/s",
            execs as f64 / started.elapsed().as_secs_f64()
        );
    }
    if findings > 0 {
        std::process::ExitCode::FAILURE
    } else {
        println!("no findings");
        std::process::ExitCode::SUCCESS
    }
}
