//! `token-cache: persistent` end to end: the `fhirconn` binary run several times against the
//! testkit identity provider keeps one token in the credential store (0600) until it expires,
//! binds it to the connection's settings, and forgets it on `fhirconn logout`.

use fhirconn_testkit::idp::IdentityProvider;
use fhirconn_testkit::FhirServer;
use fhirconn_tests::{fhirconn_command, mode, run_command, Out};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const AUDIENCE: &str = "https://fhir.testkit/r4";
const SECRET: &str = "CANARY-token-cache-secret-5150";

struct Env {
    idp: IdentityProvider,
    fhir: FhirServer,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let (idp, fhir) = fhirconn_tests::idp_with_secret_client(
        AUDIENCE,
        "cache-client",
        SECRET,
        Duration::from_secs(600),
    )
    .await;
    Env {
        idp,
        fhir,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Env {
    fn write(&self, cache: &str, scope: &str) {
        let auth = json!({"scheme": "oidc-client-credentials",
            "token-url": self.idp.token_endpoint(), "client-id": "cache-client",
            "client-secret-env": "FHIRCONN_TEST_CACHE_SECRET", "scope": scope});
        let conn = |cache: &str| json!({"base-url": self.fhir.base_url(), "auth": auth, "token-cache": cache});
        let doc = json!({"connections": {"kept": conn(cache), "memory": conn("memory")}});
        std::fs::write(
            self.dir.path().join("fhirconn.yaml"),
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .unwrap();
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("state/credentials.json")
    }

    fn run(&self, args: &[&str]) -> Out {
        run_command(
            fhirconn_command(self.dir.path(), true)
                .env("FHIRCONN_TEST_CACHE_SECRET", SECRET)
                .env("FHIRCONN_CREDENTIALS", self.store())
                .args(args),
        )
    }
}

fn ok(out: &Out) {
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

fn store_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_persistent_cache_serves_later_processes_until_the_settings_change_or_logout() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env());
    std::fs::create_dir(e.dir.path().join("state")).unwrap();
    e.write("persistent", "system/*.rs");

    let first = Instant::now();
    ok(&e.run(&["get", "kept", "Patient/1"]));
    let first = first.elapsed();
    assert_eq!(e.idp.token_requests(), 1);
    let second = Instant::now();
    ok(&e.run(&["get", "kept", "Patient/1"]));
    let second = second.elapsed();
    ok(&e.run(&["token", "kept"]));
    assert_eq!(
        e.idp.token_requests(),
        1,
        "later processes reuse the stored token"
    );
    eprintln!("fhirconn get: first run {first:?}, second run {second:?} (token from the store)");

    // The store is private, holds the token but never the client secret.
    assert_eq!(mode(&e.store()) & 0o777, 0o600);
    let text = store_text(&e.store());
    assert!(text.contains("@host/token-cache/kept"), "{text}");
    assert!(
        !text.contains(SECRET),
        "the client secret reached the store"
    );

    // `memory` (the default) never touches the store.
    ok(&e.run(&["get", "memory", "Patient/1"]));
    assert_eq!(e.idp.token_requests(), 2);
    assert!(!store_text(&e.store()).contains("token-cache/memory"));

    // `profile describe` tells where the credentials are.
    let out = e.run(&["profile", "describe", "kept"]);
    ok(&out);
    assert!(
        out.stdout.contains("# credentials: token cached until"),
        "{}",
        out.stdout
    );
    let out = e.run(&["profile", "describe", "kept", "--output", "json"]);
    ok(&out);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        v["credentials"]["token-cached-until"].as_u64().is_some(),
        "{v}"
    );

    // Other settings (another scope): the stored token is not used.
    e.write("persistent", "system/*.read");
    ok(&e.run(&["get", "kept", "Patient/1"]));
    assert_eq!(e.idp.token_requests(), 3);
    ok(&e.run(&["get", "kept", "Patient/1"]));
    assert_eq!(e.idp.token_requests(), 3);

    // Logout clears it.
    let out = e.run(&["logout", "kept"]);
    ok(&out);
    assert!(!store_text(&e.store()).contains("token-cache/kept"));
    let out = e.run(&["profile", "describe", "kept"]);
    assert!(out.stdout.contains("# credentials: none"), "{}", out.stdout);
    ok(&e.run(&["get", "kept", "Patient/1"]));
    assert_eq!(e.idp.token_requests(), 4);
}

#[test]
fn a_revoked_stored_token_is_replaced_after_one_401() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(env());
    std::fs::create_dir(e.dir.path().join("state")).unwrap();
    e.write("persistent", "system/*.rs");
    ok(&e.run(&["get", "kept", "Patient/1"]));
    assert_eq!(e.idp.token_requests(), 1);
    e.fhir.revoke_presented_tokens();
    // The next process loads the stored (revoked) token, gets a 401, drops it and refetches.
    ok(&e.run(&["get", "kept", "Patient/1"]));
    assert_eq!(e.idp.token_requests(), 2);
    ok(&e.run(&["get", "kept", "Patient/1"]));
    assert_eq!(e.idp.token_requests(), 2, "the new token was stored");
}

/// A connections file in `dir` whose connection `c` gets its token from `./tok.sh` (relative
/// to the file) and keeps it in the persistent cache.
fn exec_connection(dir: &Path, token: &str) {
    let script = dir.join("tok.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '{{\"apiVersion\":\"fhirconn.exec/v1\",\"token\":\"{token}\",\"expires_in\":600}}'\n"
        ),
    )
    .unwrap();
    fhirconn_tests::chmod(&script, 0o700);
    std::fs::write(
        dir.join("fhirconn.yaml"),
        "connections:\n  c:\n    base-url: http://127.0.0.1:9/fhir\n    token-cache: persistent\n    auth:\n      scheme: exec\n      command: [./tok.sh]\n",
    )
    .unwrap();
}

#[test]
fn identical_entries_in_two_directories_do_not_share_a_stored_token() {
    // One per-user store; two directories whose identical entries run different `./tok.sh`.
    let state = tempfile::tempdir().unwrap();
    let store = state.path().join("credentials.json");
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    exec_connection(one.path(), "CANARY-dir-one-token");
    exec_connection(two.path(), "CANARY-dir-two-token");
    let token = |dir: &Path| {
        let out = run_command(
            fhirconn_command(dir, true)
                .env("FHIRCONN_CREDENTIALS", &store)
                .args(["token", "c"]),
        );
        ok(&out);
        out.stdout
    };
    assert!(token(one.path()).contains("CANARY-dir-one-token"));
    assert!(
        store_text(&store).contains("@host/token-cache/c"),
        "the first token was stored"
    );
    let second = token(two.path());
    assert!(
        second.contains("CANARY-dir-two-token"),
        "the second directory got another directory's token: {second}"
    );
    // The second directory's own token is still served from the store (its script now
    // fails): the binding changes nothing for the same file.
    std::fs::write(two.path().join("tok.sh"), "#!/bin/sh\nexit 7\n").unwrap();
    assert!(token(two.path()).contains("CANARY-dir-two-token"));
}

#[test]
fn an_absurd_stored_expiry_is_a_miss_for_token_and_profile_describe() {
    let state = tempfile::tempdir().unwrap();
    let store = state.path().join("credentials.json");
    let dir = tempfile::tempdir().unwrap();
    exec_connection(dir.path(), "CANARY-expiry-token");
    let run = |args: &[&str]| {
        run_command(
            fhirconn_command(dir.path(), true)
                .env("FHIRCONN_CREDENTIALS", &store)
                .args(args),
        )
    };
    ok(&run(&["token", "c"]));
    let out = run(&["profile", "describe", "c"]);
    ok(&out);
    assert!(out.stdout.contains("token cached until"), "{}", out.stdout);
    // The stored value, otherwise valid, claims u64::MAX (or 20 years from now).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for absurd in [u64::MAX, now + 20 * 365 * 24 * 3600] {
        let mut file: Value = serde_json::from_str(&store_text(&store)).unwrap();
        let slot = &mut file["@host/token-cache/c"];
        let mut value: Value = serde_json::from_str(slot.as_str().unwrap()).unwrap();
        value["expires_at"] = json!(absurd);
        *slot = Value::String(value.to_string());
        std::fs::write(&store, file.to_string()).unwrap();
        let out = run(&["profile", "describe", "c"]);
        ok(&out);
        assert!(out.stdout.contains("# credentials: none"), "{}", out.stdout);
        let out = run(&["token", "c"]);
        ok(&out);
        assert!(out.stdout.contains("CANARY-expiry-token"), "{}", out.stdout);
        let out = run(&["profile", "describe", "c"]);
        assert!(out.stdout.contains("token cached until"), "{}", out.stdout);
        assert!(
            !out.stdout.contains(&absurd.to_string()),
            "the token was fetched again: {}",
            out.stdout
        );
    }
}
