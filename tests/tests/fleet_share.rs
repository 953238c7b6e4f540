//! Which `azure-ad` tokens a fleet shares, with a real Redis and two worker processes one after
//! the other: a service principal's (client credentials) and a user-assigned managed
//! identity's tokens are one identity's on every process, so the second process finds the
//! first one's token in Redis (the token endpoint counts one request); a system-assigned
//! managed identity is each machine's own, so every process asks its own endpoint and Redis
//! holds nothing.

use fhirconn_testkit::azure_identity::IdentityEndpoint;
use fhirconn_testkit::entra::{EntraConfig, MockEntra};
use fhirconn_tests::redis::RedisServer;
use fhirconn_tests::{jwt_server_for_own_origin, root, AZURE_ENV};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

// The fleet tests start many processes each: one at a time (`serial`), so timings are the
// fleet's own.
use fhirconn_tests::serial;

const SECRET: &str = "CANARY-fleet-share-daemon-secret-4417";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A connections file in `dir` whose connection `c` shares through Redis at `redis_url`.
fn config(dir: &Path, redis_url: &str, base_url: &str, auth: Value) -> PathBuf {
    let doc = json!({
        "credential-cache": {"backend": "redis", "url": redis_url,
                             "encryption-key-env": "FHIRCONN_TEST_CACHE_KEY"},
        "connections": {"c": {"base-url": base_url, "auth": auth}},
    });
    let path = dir.join("fhirconn.yaml");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

/// One worker process (5 concurrent GETs of `c`, once) with `env`: its JSON summary.
fn worker(config: &Path, env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirconn-fleet-worker"));
    for v in AZURE_ENV {
        cmd.env_remove(v);
    }
    let out = cmd
        .current_dir(root())
        .env("FHIRCONN_TEST_DAEMON_SECRET", SECRET)
        .env("FHIRCONN_TEST_CACHE_KEY", KEY)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .args(["--config", config.to_str().unwrap(), "--connection", "c"])
        .args(["--concurrency", "5", "--seconds", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "worker failed:\n{stdout}\n{stderr}");
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(v["failed"], 0, "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("CANARY"),
        "a secret in the worker's log: {stderr}"
    );
    v
}

/// Redis's raw contents hold no token of `tokens` and no secret.
fn assert_sealed(redis: &RedisServer, tokens: &[String]) {
    for (key, value) in redis.dump() {
        let text = format!("{key} {}", String::from_utf8_lossy(&value));
        assert!(!text.contains("CANARY"), "a secret in Redis: {key}");
        for t in tokens {
            assert!(
                !text.contains(t.as_str()),
                "a token in clear in Redis: {key}"
            );
        }
    }
}

#[test]
fn two_processes_with_a_service_principal_share_one_token_request() {
    let _serial = serial();
    let redis = RedisServer::start(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (entra, fhir) = rt.block_on(async {
        let entra = MockEntra::start(EntraConfig::daemon_secret(SECRET))
            .await
            .unwrap();
        let fhir = jwt_server_for_own_origin(|a| entra.verifier(a)).await;
        fhir.set_challenge(Some(entra.challenge(&fhir.origin())));
        (entra, fhir)
    });
    let dir = tempfile::tempdir().unwrap();
    let auth = json!({"scheme": "azure-ad", "flow": "client-credentials",
        "client-id": "daemon-app", "client-secret-env": "FHIRCONN_TEST_DAEMON_SECRET",
        "authority-host": entra.authority_host()});
    let config = config(dir.path(), &redis.url(), &fhir.base_url(), auth);
    let first = worker(&config, &[]);
    assert_eq!(first["last_source"], "fetched", "{first}");
    assert_eq!(entra.token_requests(), 1);
    let second = worker(&config, &[]);
    assert_eq!(second["last_source"], "fleet cache hit", "{second}");
    assert_eq!(
        entra.token_requests(),
        1,
        "the second process used the first one's token"
    );
    assert!(!redis.dump().is_empty(), "the token is in Redis");
    assert_sealed(&redis, &entra.issued_tokens());
}

#[test]
fn a_system_assigned_managed_identity_stays_in_its_process_a_user_assigned_one_is_shared() {
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mi, fhir) = rt.block_on(async {
        let mi = IdentityEndpoint::start(&["user-mi-client"]).await.unwrap();
        let fhir = jwt_server_for_own_origin(|a| mi.verifier(a)).await;
        (mi, fhir)
    });
    let imds = mi.imds_host();
    let env = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str())];
    // System-assigned: equal settings on two machines are two identities.
    let redis = RedisServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let auth = json!({"scheme": "azure-ad", "flow": "managed-identity"});
    let config_path = config(dir.path(), &redis.url(), &fhir.base_url(), auth);
    for n in 1..=2 {
        let s = worker(&config_path, &env);
        assert_eq!(s["last_source"], "fetched", "{s}");
        assert_eq!(
            mi.received().len(),
            n,
            "every process asked its own endpoint"
        );
    }
    assert!(
        redis.dump().is_empty(),
        "nothing was shared: {:?}",
        redis.dump()
    );
    // User-assigned: its client id names one identity wherever it is used.
    let auth = json!({"scheme": "azure-ad", "flow": "managed-identity",
                      "client-id": "user-mi-client"});
    let config_path = config(dir.path(), &redis.url(), &fhir.base_url(), auth);
    let first = worker(&config_path, &env);
    assert_eq!(first["last_source"], "fetched", "{first}");
    let second = worker(&config_path, &env);
    assert_eq!(second["last_source"], "fleet cache hit", "{second}");
    let got = mi.received();
    assert_eq!(got.len(), 3, "one request for both processes: {got:?}");
    assert_eq!(
        got[2].query.get("client_id").map(String::as_str),
        Some("user-mi-client")
    );
    assert_sealed(&redis, &mi.issued_tokens());
}
