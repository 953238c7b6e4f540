//! `fhirconn export` end to end: FHIR Bulk Data kick-off, several status polls honouring
//! `Retry-After`, a token that expires mid-export, parallel streamed downloads checked as
//! NDJSON, resuming (only missing files are fetched again), Ctrl-C at any moment, an overall
//! polling deadline, downloads bounded by an idle timeout only, and hostile manifests that
//! must not write outside `--out`. Also `get --all-pages`, which writes pages as they arrive.
//!
//! Every child process runs under a deadline: a test that would hang fails instead.

use fhirconn_testkit::hostile::documents::{export_manifest, HOSTILE_EXPORT_TYPES};
use fhirconn_testkit::hostile::{Answer, HostileServer};
use fhirconn_testkit::idp::{ClientAuth, IdentityProvider, IdpConfig, RegisteredClient};
use fhirconn_testkit::{Fault, FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{chmod, fhirconn_bin, mode, plugin_dir};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(fhirconn_bin());
    c.current_dir(dir)
        .env_remove("FHIRCONN_CONFIG")
        .env_remove("RUST_LOG")
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `limit`; kills it and panics when it does not end in time.
fn finish(mut child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn run(dir: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let child = command(dir, args).spawn().unwrap();
    let (out, _) = finish(child, limit, &format!("fhirconn {args:?}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sigint(child: &Child) {
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file and directory under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

fn state_of(data: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data.join(".fhirconn-export.json")).unwrap()).unwrap()
}

fn open_config(dir: &Path, base_url: &str, extra: &str) {
    std::fs::write(
        dir.join("fhirconn.yaml"),
        format!("connections:\n  open:\n    base-url: {base_url}\n{extra}"),
    )
    .unwrap();
}

fn start_fhir(config: FhirServerConfig) -> (tokio::runtime::Runtime, FhirServer) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fhir = rt.block_on(FhirServer::start(config)).unwrap();
    (rt, fhir)
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_bulk_export_waits_renews_its_token_and_downloads_checked_ndjson() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (idp, fhir) = rt.block_on(async {
        let idp = IdentityProvider::start(IdpConfig {
            audience: "bulk".into(),
            token_lifetime: Duration::from_secs(2),
            clients: vec![RegisteredClient {
                client_id: "bulk".into(),
                auth: ClientAuth::SecretBasic("bulk-secret".into()),
                scopes: vec![],
            }],
            ..IdpConfig::default()
        })
        .await
        .unwrap();
        let fhir = FhirServer::start(FhirServerConfig {
            auth: ServerAuth::Jwt(idp.verifier("bulk")),
            export_polls: 3,
            export_retry_after: Some(1),
            ..FhirServerConfig::default()
        })
        .await
        .unwrap();
        (idp, fhir)
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        format!(
            "connections:\n  bulk:\n    base-url: {}\n    auth: {{scheme: oidc-client-credentials, token-url: '{}', client-id: bulk, client-secret: bulk-secret}}\n",
            fhir.base_url(),
            idp.token_endpoint()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run(
        dir.path(),
        &[
            "export",
            "bulk",
            "--type",
            "Patient,Observation",
            "--out",
            "data",
        ],
        MINUTE,
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("2 file(s)"), "{stdout}");
    let data = dir.path().join("data");
    let patients = std::fs::read_to_string(data.join("Patient.000.ndjson")).unwrap();
    assert_eq!(patients.lines().count(), 2);
    let obs = std::fs::read_to_string(data.join("Observation.001.ndjson")).unwrap();
    assert_eq!(obs.lines().count(), 3);
    #[cfg(unix)]
    {
        assert_eq!(mode(&data), 0o700, "--out is created private");
        assert_eq!(mode(&data.join("Patient.000.ndjson")), 0o600);
        assert_eq!(mode(&data.join("Observation.001.ndjson")), 0o600);
    }
    assert_eq!(
        tree(&data),
        ["Observation.001.ndjson", "Patient.000.ndjson"],
        "state removed when done, no temporary files"
    );
    // Three polls one second apart with two-second tokens: the token was renewed mid-export.
    assert!(
        idp.tokens_issued() >= 2,
        "tokens issued: {}",
        idp.tokens_issued()
    );
    assert_eq!(
        fhir.unauthorized(),
        0,
        "no request went out with an expired token"
    );
    let mut fetched = fhir.export_file_requests();
    fetched.sort();
    assert_eq!(
        fetched,
        ["1/Observation.ndjson", "1/Patient.ndjson"],
        "each file fetched once"
    );

    // Resume: a state file naming a finished job downloads what is missing only.
    let status = format!("{}/$export-status/1", fhir.base_url());
    std::fs::remove_file(data.join("Observation.001.ndjson")).unwrap();
    std::fs::write(
        data.join(".fhirconn-export.json"),
        serde_json::json!({"status": status, "done": ["Patient.000.ndjson"]}).to_string(),
    )
    .unwrap();
    let (code, _, stderr) = run(dir.path(), &["export", "bulk", "--out", "data"], MINUTE);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(data.join("Observation.001.ndjson").exists());
    let fetched = fhir.export_file_requests();
    let count = |f: &str| fetched.iter().filter(|x| *x == f).count();
    assert_eq!(
        count("1/Patient.ndjson"),
        1,
        "kept, not fetched again: {fetched:?}"
    );
    assert_eq!(
        count("1/Observation.ndjson"),
        2,
        "missing, fetched again: {fetched:?}"
    );
    assert_eq!(fetched.len(), 3, "{fetched:?}");
    assert_eq!(fhir.exports_started(), 1, "resumed, no new kick-off");
}

/// Starts `fhirconn export open --out data` against `fhir` in `dir`.
fn spawn_export(dir: &Path) -> Child {
    command(dir, &["export", "open", "--out", "data"])
        .spawn()
        .unwrap()
}

/// After a Ctrl-C: exit 130 within 5 s, the job deleted on the server, a private state file
/// recording the cancel, and no temporary file left.
fn assert_cancelled(child: Child, fhir: &FhirServer, data: &Path) {
    sigint(&child);
    let (out, took) = finish(child, Duration::from_secs(15), "export after Ctrl-C");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    assert_eq!(fhir.exports_cancelled(), 1, "DELETE on the status URL");
    assert!(stderr.contains("deleted on the server"), "{stderr}");
    let state = state_of(data);
    assert_eq!(state["cancelled"], true, "{state}");
    #[cfg(unix)]
    assert_eq!(mode(&data.join(".fhirconn-export.json")), 0o600);
    assert!(
        tree(data)
            .iter()
            .all(|n| !n.ends_with(".tmp") && !n.ends_with(".part")),
        "{:?}",
        tree(data)
    );
}

/// `fhirconn export` of a job that stays in progress (1000 polls, `Retry-After: 1`), returned
/// once its kick-off is recorded: the runtime, the server, the directory, the process, and
/// the data directory.
fn start_waiting_export() -> (
    tokio::runtime::Runtime,
    FhirServer,
    tempfile::TempDir,
    Child,
    std::path::PathBuf,
) {
    let (rt, fhir) = start_fhir(FhirServerConfig {
        export_polls: 1000,
        export_retry_after: Some(1),
        ..FhirServerConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    open_config(dir.path(), &fhir.base_url(), "");
    let child = spawn_export(dir.path());
    let data = dir.path().join("data");
    wait_for("the kick-off", Duration::from_secs(20), || {
        data.join(".fhirconn-export.json").exists()
    });
    (rt, fhir, dir, child, data)
}

#[test]
fn ctrl_c_while_waiting_deletes_the_job_on_the_server() {
    let (_rt, fhir, _dir, child, data) = start_waiting_export();
    // Several polls have been made: the old listener, recreated per wait, would still work
    // here; the point is the state it leaves.
    std::thread::sleep(Duration::from_millis(2300));
    assert_cancelled(child, &fhir, &data);
}

#[test]
fn ctrl_c_during_a_status_request_cancels_within_5_s() {
    let (_rt, fhir, _dir, child, data) = start_waiting_export();
    // The next status request hangs (the cancel's DELETE is answered at once).
    fhir.set_fault(Fault::Slow(Duration::from_secs(120)));
    std::thread::sleep(Duration::from_millis(1500));
    assert_cancelled(child, &fhir, &data);
}

#[test]
fn ctrl_c_during_the_kick_off_deletes_the_job_it_created() {
    let (_rt, fhir) = start_fhir(FhirServerConfig {
        export_polls: 1000,
        fault: Fault::Slow(Duration::from_secs(2)),
        ..FhirServerConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    open_config(dir.path(), &fhir.base_url(), "");
    let child = spawn_export(dir.path());
    wait_for("the kick-off request", Duration::from_secs(20), || {
        fhir.requests() > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_cancelled(child, &fhir, &dir.path().join("data"));
    assert_eq!(fhir.exports_started(), 1);
}

#[test]
fn ctrl_c_during_downloads_cancels_keeps_no_unchecked_bytes_and_a_rerun_starts_over() {
    let (_rt, fhir) = start_fhir(FhirServerConfig {
        export_polls: 0,
        ..FhirServerConfig::default()
    });
    fhir.set_export_file_trickle(Some((100_000, Duration::from_millis(50))));
    let dir = tempfile::tempdir().unwrap();
    open_config(dir.path(), &fhir.base_url(), "");
    let child = spawn_export(dir.path());
    let data = dir.path().join("data");
    wait_for("a download", Duration::from_secs(20), || {
        !fhir.export_file_requests().is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_cancelled(child, &fhir, &data);
    assert_eq!(tree(&data), [".fhirconn-export.json"]);

    // The same command again: the cancelled job is not polled; a new one is started.
    fhir.set_export_file_trickle(None);
    let (code, stdout, stderr) = run(dir.path(), &["export", "open", "--out", "data"], MINUTE);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(fhir.exports_started(), 2);
    assert_eq!(tree(&data), ["Patient.000.ndjson"]);
}

#[test]
fn polling_stops_at_the_deadline_whatever_retry_after_says() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hostile = rt.block_on(HostileServer::start()).unwrap();
    hostile.on(
        "GET",
        "/fhir/$export",
        Answer::raw(202, "").header("content-location", "{self}/fhir/status/1"),
    );
    let dir = tempfile::tempdir().unwrap();
    open_config(dir.path(), &hostile.url("/fhir"), "");
    for (retry_after, timeout) in [("3600", "3"), ("Fri, 01 Jan 2100 00:00:00 GMT", "PT2S")] {
        hostile.on(
            "GET",
            "/fhir/status/1",
            Answer::raw(202, "").header("retry-after", retry_after),
        );
        let start = Instant::now();
        let out = format!("data-{timeout}");
        let (code, _, stderr) = run(
            dir.path(),
            &["export", "open", "--out", &out, "--timeout", timeout],
            Duration::from_secs(30),
        );
        let took = start.elapsed();
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("--timeout"), "{stderr}");
        assert!(
            took < Duration::from_secs(8),
            "Retry-After {retry_after}: {took:?}"
        );
        // The job stays on the server and can be waited for again.
        let state = state_of(&dir.path().join(&out));
        assert!(state["status"].as_str().is_some(), "{state}");
    }
    let (code, _, stderr) = run(
        dir.path(),
        &["export", "open", "--out", "x", "--timeout", "soon"],
        MINUTE,
    );
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn a_download_that_keeps_flowing_is_not_cut_but_a_stalled_one_is() {
    let (_rt, fhir) = start_fhir(FhirServerConfig {
        export_polls: 0,
        ..FhirServerConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    // connect + read = 2 s: the old total timeout of every request.
    open_config(
        dir.path(),
        &fhir.base_url(),
        "    connect-timeout: PT1S\n    read-timeout: PT1S\n",
    );
    fhir.set_export_file_trickle(Some((12, Duration::from_millis(300))));
    let (code, stdout, stderr) = run(dir.path(), &["export", "open", "--out", "a"], MINUTE);
    assert_eq!(
        code,
        Some(0),
        "a 3.6 s download with data every 0.3 s: {stdout}{stderr}"
    );
    let body = std::fs::read_to_string(dir.path().join("a/Patient.000.ndjson")).unwrap();
    assert_eq!(body.lines().count(), 12);

    fhir.set_export_file_trickle(Some((3, Duration::from_millis(1600))));
    let (code, _, stderr) = run(dir.path(), &["export", "open", "--out", "b"], MINUTE);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("read-timeout"), "{stderr}");
    assert_eq!(tree(&dir.path().join("b")), [".fhirconn-export.json"]);
}

#[test]
fn a_hostile_manifest_writes_nothing_outside_out_and_nothing_unchecked() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hostile = rt.block_on(HostileServer::start()).unwrap();
    let mut outputs: Vec<(&str, &str)> = HOSTILE_EXPORT_TYPES
        .iter()
        .map(|t| (*t, "{self}/files/bad"))
        .collect();
    let n = outputs.len();
    outputs.extend([
        ("Patient", "{self}/files/good"),
        ("Observation", "{self}/files/broken-middle"),
        ("Condition", "{self}/files/broken-tail"),
        ("Encounter", "file:///etc/passwd"),
        ("Procedure", "ftp://127.0.0.1/x"),
    ]);
    hostile
        .on(
            "GET",
            "/fhir/$export",
            Answer::raw(202, "").header("content-location", "{self}/fhir/status/1"),
        )
        .on(
            "GET",
            "/fhir/status/1",
            Answer::json(200, &export_manifest("{self}/fhir/$export", &outputs)),
        )
        .on(
            "GET",
            "/files/bad",
            Answer::text(200, "{\"resourceType\":\"Patient\",\"id\":\"evil\"}\n"),
        )
        .on(
            "GET",
            "/files/good",
            Answer::text(
                200,
                "{\"resourceType\":\"Patient\",\"id\":\"1\"}\n{\"resourceType\":\"Patient\",\"id\":\"2\"}\n",
            ),
        )
        .on(
            "GET",
            "/files/broken-middle",
            Answer::text(
                200,
                "{\"resourceType\":\"Observation\",\"id\":\"1\"}\nnot json\n{\"resourceType\":\"Observation\",\"id\":\"3\"}\n",
            ),
        )
        .on(
            "GET",
            "/files/broken-tail",
            Answer::text(
                200,
                "{\"resourceType\":\"Condition\",\"id\":\"1\"}\n{\"resourceType\":\"Condi",
            ),
        );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    open_config(root, &hostile.url("/fhir"), "");
    let abs = Path::new("/tmp/fhirconn-abs-escape.001.ndjson");
    let _ = std::fs::remove_file(abs);
    // Planted links inside --out: at a final name and at the old `.part` name.
    let data = root.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(root.join("victim"), "untouched").unwrap();
    std::fs::write(root.join("victim-part"), "untouched").unwrap();
    let good = format!("Patient.{n:03}.ndjson");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("../victim", data.join(&good)).unwrap();
        std::os::unix::fs::symlink("../victim-part", data.join(format!("{good}.part"))).unwrap();
        std::os::unix::fs::symlink(
            "../victim-part",
            data.join(format!("Observation.{:03}.ndjson.part", n + 1)),
        )
        .unwrap();
    }

    let (code, stdout, stderr) = run(root, &["export", "open", "--out", "data"], MINUTE);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    for i in 0..n {
        assert!(
            stderr.contains(&format!("output entry {i}: type")),
            "entry {i} reported: {stderr}"
        );
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "server text printed raw: {stderr}"
    );
    assert!(
        stderr.contains(&format!("output entry {}: url", n + 3)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("output entry {}: url", n + 4)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Observation.{:03}.ndjson: line 2", n + 1)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Condition.{:03}.ndjson: line 2", n + 2)),
        "{stderr}"
    );
    assert!(
        hostile.received_at("/files/bad").is_empty(),
        "an entry with a bad type is not even fetched"
    );

    // Nothing outside --out.
    assert!(!abs.exists(), "absolute path written");
    assert_eq!(
        std::fs::read_to_string(root.join("victim")).unwrap(),
        "untouched"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("victim-part")).unwrap(),
        "untouched"
    );
    let mut expected = vec![
        "data".to_string(),
        "data/.fhirconn-export.json".to_string(),
        format!("data/{good}"),
        "fhirconn.yaml".to_string(),
        "victim".to_string(),
        "victim-part".to_string(),
    ];
    #[cfg(unix)]
    expected.extend([
        format!("data/{good}.part"),
        format!("data/Observation.{:03}.ndjson.part", n + 1),
    ]);
    expected.sort();
    assert_eq!(tree(root), expected, "only the good file and the state");
    // The good file replaced the planted link; it is private and complete.
    let meta = std::fs::symlink_metadata(data.join(&good)).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(
        std::fs::read_to_string(data.join(&good))
            .unwrap()
            .lines()
            .count(),
        2
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&data.join(&good)), 0o600);
        assert_eq!(mode(&data.join(".fhirconn-export.json")), 0o600);
    }
}

#[test]
fn all_pages_writes_each_page_as_it_arrives() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hostile = rt.block_on(HostileServer::start()).unwrap();
    let page = |id: &str, next: Option<&str>| {
        let mut b = serde_json::json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Patient", "id": id}}],
            "link": [{"relation": "self", "url": "{self}/fhir/Patient"}]
        });
        if let Some(n) = next {
            b["link"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"relation": "next", "url": n}));
        }
        Answer::fhir(200, &b)
    };
    hostile.on(
        "GET",
        "/fhir/Patient",
        page("p1", Some("{self}/fhir/page2")),
    );
    hostile.on("GET", "/fhir/page2", Answer::text(500, "down"));
    let dir = tempfile::tempdir().unwrap();
    open_config(dir.path(), &hostile.url("/fhir"), "");
    // Page 2 fails: page 1 has already been written (it was not held back in memory).
    let (code, stdout, stderr) = run(
        dir.path(),
        &["get", "open", "Patient", "--all-pages"],
        MINUTE,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stdout.contains("\"id\":\"p1\""),
        "page 1 written first: {stdout:?}"
    );
    assert!(stderr.contains("incomplete"), "{stderr}");

    // All pages: one Bundle with every entry, its links emptied.
    hostile.on("GET", "/fhir/page2", page("p2", Some("{self}/fhir/page3")));
    hostile.on("GET", "/fhir/page3", page("p3", None));
    let (code, stdout, stderr) = run(
        dir.path(),
        &["get", "open", "Patient", "--all-pages"],
        MINUTE,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ids: Vec<&str> = v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1", "p2", "p3"]);
    assert_eq!(v["type"], "searchset");
    assert_eq!(v["link"], serde_json::json!([]));
    assert!(stderr.contains("3 page(s)"), "{stderr}");
}

#[test]
fn the_token_goes_only_to_the_own_origin_and_only_when_the_manifest_asks() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (fhir, other) = rt.block_on(async {
        (
            HostileServer::start().await.unwrap(),
            HostileServer::start().await.unwrap(),
        )
    });
    let ndjson = "{\"resourceType\":\"Patient\",\"id\":\"1\"}\n";
    other.on("GET", "/files/p", Answer::text(200, ndjson));
    fhir.on("GET", "/files/p", Answer::text(200, ndjson));
    fhir.on(
        "GET",
        "/fhir/$export",
        Answer::raw(202, "").header("content-location", "{self}/fhir/status/1"),
    );
    let dir = tempfile::tempdir().unwrap();
    open_config(
        dir.path(),
        &fhir.url("/fhir"),
        "    auth: {scheme: bearer, token: CANARY-export-token}\n",
    );
    let foreign = other.url("/files/p");
    // requiresAccessToken: true with a file on another origin: refused, not fetched.
    let mut m = export_manifest(
        "{self}/fhir/$export",
        &[("Patient", "{self}/files/p"), ("Patient", &foreign)],
    );
    fhir.on("GET", "/fhir/status/1", Answer::json(200, &m));
    let (code, _, stderr) = run(dir.path(), &["export", "open", "--out", "a"], MINUTE);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("Patient.001.ndjson") && stderr.contains("origin"),
        "{stderr}"
    );
    assert!(
        other.received().is_empty(),
        "nothing sent to the other origin"
    );
    let own = fhir.received_at("/files/p");
    assert_eq!(own.len(), 1);
    assert_eq!(
        own[0].header("authorization"),
        Some("Bearer CANARY-export-token")
    );
    // requiresAccessToken: false: no token, to anyone.
    m["requiresAccessToken"] = serde_json::json!(false);
    fhir.on("GET", "/fhir/status/1", Answer::json(200, &m));
    let (code, _, stderr) = run(dir.path(), &["export", "open", "--out", "b"], MINUTE);
    assert_eq!(code, Some(0), "{stderr}");
    let sent: Vec<_> = fhir.received_at("/files/p")[1..]
        .iter()
        .chain(other.received().iter())
        .map(|r| r.header("authorization").map(String::from))
        .collect();
    assert_eq!(
        sent,
        [None, None],
        "no token when the manifest does not ask"
    );
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

#[test]
fn kick_off_parameters_reach_the_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hostile = rt.block_on(HostileServer::start()).unwrap();
    hostile.otherwise(Answer::text(400, "refused"));
    let dir = tempfile::tempdir().unwrap();
    open_config(dir.path(), &hostile.url("/fhir"), "");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--group", "g 1", "--type", "Patient,Observation"],
            "/fhir/Group/g%201/$export?_type=Patient%2CObservation",
        ),
        (
            &["--patient", "--since", "2026-01-01T00:00:00+01:00"],
            "/fhir/Patient/$export?_since=2026-01-01T00%3A00%3A00%2B01%3A00",
        ),
        (&[], "/fhir/$export"),
    ];
    for (i, (args, target)) in cases.iter().enumerate() {
        let out = format!("o{i}");
        let mut all = vec!["export", "open", "--out", &out];
        all.extend_from_slice(args);
        let (code, _, stderr) = run(dir.path(), &all, MINUTE);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("kick-off answered HTTP 400"), "{stderr}");
        let got = hostile.received().pop().unwrap();
        assert_eq!(got.target, *target);
        assert_eq!(got.header("prefer"), Some("respond-async"));
    }
}

/// Another user must not be able to plant files (or a resume state) where the patient data goes:
/// an existing `--out` that every user can write is refused before anything is requested.
#[test]
#[cfg(unix)]
fn an_out_directory_every_user_can_write_is_refused() {
    let (_rt, fhir) = start_fhir(FhirServerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    open_config(dir.path(), &fhir.base_url(), "    auth: {scheme: none}\n");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let (code, _, stderr) = run(dir.path(), &["export", "open", "--out", "shared"], MINUTE);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("every user"), "{stderr}");
    assert_eq!(fhir.exports_started(), 0, "nothing was requested");
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
}

/// A server that echoes the request's `Authorization` in its OperationOutcome does not get the
/// token printed by `fhirconn export`.
#[test]
fn export_errors_redact_what_the_server_echoes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = "CANARY-export-echo-token-5150";
    let s = rt
        .block_on(fhirconn_testkit::hostile::HostileServer::start())
        .unwrap();
    let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "security",
        "diagnostics": format!("rejected Authorization: Bearer {token}")}]});
    s.otherwise(fhirconn_testkit::hostile::Answer::fhir(500, &outcome));
    let dir = tempfile::tempdir().unwrap();
    open_config(
        dir.path(),
        &s.url("/fhir"),
        &format!("    auth: {{scheme: bearer, token: {token}}}\n"),
    );
    let (code, stdout, stderr) = run(dir.path(), &["export", "open", "--out", "data"], MINUTE);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("500"), "{stderr}");
    assert!(
        !stderr.contains(token) && !stdout.contains(token),
        "{stderr}"
    );
    assert!(
        s.received()
            .iter()
            .any(|r| r.header("authorization").is_some()),
        "the server did receive the token"
    );
}
