//! The `exec` host operation (`fhirconn_host::exec::run`) with real small scripts: argv
//! without a shell, stdin closed, the environment cleared except the base set and what the
//! request names, the connections file's directory as working directory, the timeout and the
//! output bounds killing the process group, errors naming the program, sanitised.

use fhirconn_host::exec::{self, ExecError, MAX_STDOUT_BYTES};
use fhirconn_host::services::Redactor;
use fhirconn_sdk::wire::Exec;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fhirconn_tests::chmod(&path, 0o700);
    format!("./{name}")
}

fn request(argv: &[&str]) -> Exec {
    Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        inherit_env: Vec::new(),
        timeout_seconds: None,
    }
}

#[test]
fn a_process_runs_without_a_shell_in_the_config_directory_with_stdin_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = script(
        dir.path(),
        "creds.sh",
        r#"read line && echo "stdin was open"
printf '{"apiVersion":"fhirconn.exec/v1","token":"CANARY-exec-token","args":"%s|%s","cwd":"%s"}' "$1" "$2" "$(pwd)""#,
    );
    let redactor = Redactor::default();
    // `$(rm -rf ~)` and `;` are arguments, never shell syntax.
    let a = exec::run(
        dir.path(),
        &request(&[&cmd, "a b;c", "$(echo nope)"]),
        &redactor,
    )
    .unwrap();
    assert_eq!(a.exit_code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&a.stdout).unwrap();
    assert_eq!(v["args"], "a b;c|$(echo nope)");
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(v["cwd"], cwd.to_str().unwrap());
    // stdout's values are secrets from now on
    assert_eq!(redactor.redact("CANARY-exec-token"), "[REDACTED]");
    assert!(!format!("{a:?}").contains("CANARY-exec-token"));
}

#[test]
fn a_failing_process_answers_its_exit_code_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = script(
        dir.path(),
        "fail.sh",
        "printf 'login expired \\033[31mred\\033[0m\\n' >&2; exit 3",
    );
    let a = exec::run(dir.path(), &request(&[&cmd]), &Redactor::default()).unwrap();
    assert_eq!(a.exit_code, Some(3));
    assert!(a.stderr.contains("login expired"));
    assert!(a.stdout.is_empty());
    // A program that cannot start: the error names it, control characters escaped.
    let e = exec::run(
        dir.path(),
        &request(&["no-such-\u{1b}[2Jprogram"]),
        &Redactor::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ExecError::Spawn { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("no-such-") && text.contains("not found"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(matches!(
        exec::run(dir.path(), &request(&[]), &Redactor::default()),
        Err(ExecError::NoCommand)
    ));
}

#[test]
fn a_process_past_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child-survived");
    let cmd = script(
        dir.path(),
        "slow.sh",
        &format!(
            "(sleep 3; touch '{}') & sleep 30; echo never",
            marker.display()
        ),
    );
    let mut r = request(&[&cmd]);
    r.timeout_seconds = Some(1);
    let t = Instant::now();
    let e = exec::run(dir.path(), &r, &Redactor::default()).unwrap_err();
    assert!(matches!(e, ExecError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("slow.sh"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // the process group died with it: the background child never touches its file
    std::thread::sleep(Duration::from_millis(3500));
    assert!(!marker.exists(), "a child outlived the timeout");
}

#[test]
fn huge_output_is_cut_off_and_the_process_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = script(
        dir.path(),
        "flood.sh",
        "while :; do echo 0123456789012345678901234567890123456789; done",
    );
    let t = Instant::now();
    let e = exec::run(dir.path(), &request(&[&cmd]), &Redactor::default()).unwrap_err();
    match e {
        ExecError::TooMuchOutput { stream, limit, .. } => {
            assert_eq!((stream, limit), ("stdout", MAX_STDOUT_BYTES));
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn only_the_base_set_and_named_variables_reach_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = script(dir.path(), "env.sh", "env");
    // The canary is in this process's environment (set for the test process only).
    std::env::set_var("FHIRCONN_EXEC_CANARY", "CANARY-env-leak");
    std::env::set_var("FHIRCONN_EXEC_PASSED", "passed-through");
    let mut r = request(&[&cmd]);
    r.inherit_env = vec!["FHIRCONN_EXEC_PASSED".into()];
    r.env.insert("GIVEN".into(), "given-value".into());
    let a = exec::run(dir.path(), &r, &Redactor::default()).unwrap();
    let vars: Vec<&str> = a
        .stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(!a.stdout.contains("CANARY-env-leak"), "{vars:?}");
    assert!(a.stdout.contains("FHIRCONN_EXEC_PASSED=passed-through"));
    assert!(a.stdout.contains("GIVEN=given-value"));
    let allowed = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "FHIRCONN_EXEC_PASSED",
        "GIVEN",
        // set by sh itself
        "PWD",
        "SHLVL",
        "OLDPWD",
        "_",
    ];
    for v in &vars {
        assert!(allowed.contains(v), "unexpected variable {v} in {vars:?}");
    }
    // a name the OS cannot take is refused, not passed on
    let mut bad = request(&[&cmd]);
    bad.env.insert("A=B".into(), "x".into());
    assert!(matches!(
        exec::run(dir.path(), &bad, &Redactor::default()),
        Err(ExecError::Environment { .. })
    ));
}

/// A connections file with one `exec` connection `c` running `command`.
fn exec_config(dir: &Path, base_url: &str, command: &str) {
    std::fs::write(
        dir.join("fhirconn.yaml"),
        format!(
            "connections:\n  c:\n    base-url: {base_url}\n    auth:\n      scheme: exec\n      command: [{command}, --audience, fhir]\n      inherit-env: [FHIRCONN_EXEC_PASSED]\n"
        ),
    )
    .unwrap();
}

#[test]
fn the_exec_scheme_gives_the_binary_a_token_from_a_credential_process() {
    use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
    use fhirconn_tests::{fhirconn_command, run_command};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fhir = rt
        .block_on(FhirServer::start(FhirServerConfig {
            auth: ServerAuth::Bearer {
                tokens: vec!["CANARY-exec-tok".into()],
            },
            ..FhirServerConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ok = script(
        dir.path(),
        "get-token.sh",
        r#"[ "$1 $2" = "--audience fhir" ] || exit 9
echo "diagnostics go to stderr" >&2
printf '{"apiVersion":"fhirconn.exec/v1","token":"CANARY-exec-tok","expires_in":300}'"#,
    );
    exec_config(dir.path(), &fhir.base_url(), &ok);
    let out = run_command(fhirconn_command(dir.path(), true).args(["-vv", "test", "c"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("PASS  c"), "{}", out.all());
    assert!(!out.all().contains("CANARY-exec-tok"), "{}", out.all());

    // A failing process: its stderr is shown, escaped; the command is named.
    let failing = script(
        dir.path(),
        "not-logged-in.sh",
        "printf 'run vendor-cli login first \\033[2J\\n' >&2; exit 1",
    );
    exec_config(dir.path(), &fhir.base_url(), &failing);
    let out = run_command(fhirconn_command(dir.path(), true).args(["test", "c"]));
    assert_ne!(out.code, 0);
    let all = out.all();
    assert!(
        all.contains("not-logged-in.sh") && all.contains("run vendor-cli login first"),
        "{all}"
    );
    assert!(!all.contains('\u{1b}'), "{all}");

    // An unknown format version is a clear error.
    let newer = script(
        dir.path(),
        "newer.sh",
        r#"printf '{"apiVersion":"fhirconn.exec/v9","token":"CANARY-exec-tok"}'"#,
    );
    exec_config(dir.path(), &fhir.base_url(), &newer);
    let out = run_command(fhirconn_command(dir.path(), true).args(["test", "c"]));
    assert_ne!(out.code, 0);
    assert!(
        out.all().contains("unknown apiVersion 'fhirconn.exec/v9'"),
        "{}",
        out.all()
    );
    assert!(!out.all().contains("CANARY-exec-tok"), "{}", out.all());
}

/// Security boundary (secrets never in errors or output): `env` values are secrets. A
/// credential process that fails and echoes the value it was given on stderr gets an error
/// that does not show it, in `test`, `get` and `-vv` output, while its other words still
/// show. (The variable's name does not look like a secret's, so the host's guess by key name,
/// `...-key`, `...-token`, does not cover it: only the scheme's registration does.) `env`
/// values of fewer than 4 characters are too common to redact.
#[test]
fn env_values_never_reach_the_output_when_the_process_echoes_them() {
    use fhirconn_tests::{fhirconn_command, run_command};
    let dir = tempfile::tempdir().unwrap();
    let failing = script(
        dir.path(),
        "echo-key.sh",
        r#"printf 'vendor said: bad key %s for %s\n' "$VENDOR_CREDENTIAL" "$REGION" >&2; exit 1"#,
    );
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        format!(
            "connections:\n  c:\n    base-url: https://fhir.example/r4\n    auth:\n      \
             scheme: exec\n      command: [{failing}]\n      \
             env: {{VENDOR_CREDENTIAL: CANARY-env-key-0042, REGION: eu}}\n"
        ),
    )
    .unwrap();
    for args in [
        &["test", "c"][..],
        &["get", "c", "Patient/1"],
        &["-vv", "test", "c"],
    ] {
        let out = run_command(fhirconn_command(dir.path(), true).args(args));
        assert_ne!(out.code, 0, "{args:?}: {}", out.all());
        let all = out.all();
        assert!(all.contains("vendor said: bad key"), "{args:?}: {all}");
        assert!(!all.contains("CANARY-env-key-0042"), "{args:?}: {all}");
        assert!(all.contains("for eu"), "{args:?}: {all}");
    }
}

/// Whether process `pid` still runs (a zombie waiting for a parent that does not reap it
/// counts as ended).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
    })
}

/// `fhirconn token` running a credential process that starts a child and sleeps: stopped by
/// `signal` (`INT` as Ctrl-C sends it, or `KILL`), it leaves neither behind.
fn a_stopped_fhirconn_leaves_no_credential_process(signal: &str) {
    use fhirconn_tests::fhirconn_command;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let cmd = script(
        dir.path(),
        "hang.sh",
        &format!(
            "sleep 600 &\necho \"$$ $!\" > '{}.tmp'; mv '{0}.tmp' '{0}'\nexec sleep 600",
            pids.display()
        ),
    );
    exec_config(dir.path(), "http://127.0.0.1:9/fhir", &cmd);
    let mut fhirconn = fhirconn_command(dir.path(), true)
        .args(["token", "c"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !pids.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the credential process did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&pids).unwrap();
    let procs: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(procs.len(), 2, "{text}");
    assert!(procs.iter().all(|p| running(p)), "{text}");
    let sent = std::process::Command::new("kill")
        .args(["-s", signal, &fhirconn.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    fhirconn.wait().unwrap();
    let stopped = Instant::now();
    while procs.iter().any(|p| running(p)) && stopped.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<&&str> = procs.iter().filter(|p| running(p)).collect();
    for p in &left {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", p])
            .status();
    }
    assert!(
        left.is_empty(),
        "SIG{signal} to fhirconn left {left:?} of the credential process ({text}) running"
    );
}

#[test]
fn ctrl_c_on_fhirconn_token_stops_the_credential_process_and_its_children() {
    a_stopped_fhirconn_leaves_no_credential_process("INT");
}

#[test]
fn a_killed_fhirconn_token_leaves_no_credential_process_behind() {
    a_stopped_fhirconn_leaves_no_credential_process("KILL");
}

#[test]
fn a_terminated_fhirconn_token_leaves_no_credential_process_behind() {
    a_stopped_fhirconn_leaves_no_credential_process("TERM");
}
