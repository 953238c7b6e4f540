//! The conventions the `fhirconn` CLI keeps for people and scripts: shell completions and a
//! man page generated from its definitions, `--output json` on commands that print data,
//! `NO_COLOR`, and configuration errors shown with their line (value masked) and a caret.

use fhirconn_tests::{fhirconn_command, run_command, Out};
use std::path::Path;

fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Out {
    let mut cmd = fhirconn_command(dir, true);
    cmd.env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("FHIRCONN_CREDENTIALS", dir.join("credentials.json"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd.args(args))
}

const GOOD: &str = "connections:\n  pub:\n    base-url: http://127.0.0.1:9/fhir\n  tok:\n    base-url: http://127.0.0.1:9/fhir\n    auth:\n      scheme: bearer\n      token: CANARY-token-42\n";

/// A type error on line 5 (column 20, the value), next to a secret on line 4.
const BAD: &str = "connections:\n  a:\n    base-url: http://127.0.0.1:9/fhir\n    auth: {scheme: basic, username: u, password: CANARY-secret-1}\n    read-timeout: 12 parsecs\n";

#[test]
fn completions_name_every_command_in_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(dir.path(), &[], &["completions", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        for sub in ["test", "get", "export", "profile", "proxy", "completions"] {
            assert!(out.stdout.contains(sub), "{shell} completion lacks '{sub}'");
        }
    }
    let out = run(dir.path(), &[], &["completions", "tcsh-or-so"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn the_man_page_is_roff_and_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &[], &["man"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with(".ie") || out.stdout.contains(".TH fhirconn"));
    for sub in ["test", "export", "completions", "man"] {
        assert!(out.stdout.contains(sub), "man page lacks '{sub}'");
    }
}

#[test]
fn a_config_error_shows_its_line_masked_and_a_caret_under_the_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fhirconn.yaml"), BAD).unwrap();
    let out = run(dir.path(), &[], &["config", "check"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!out.stderr.contains("CANARY"), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines[0].starts_with("error: fhirconn.yaml:5:"),
        "{}",
        out.stderr
    );
    let at = lines
        .iter()
        .position(|l| l.starts_with("5 |"))
        .unwrap_or_else(|| panic!("no source line:\n{}", out.stderr));
    assert_eq!(lines[at], "5 |     read-timeout: ***", "{}", out.stderr);
    // The caret sits under the value's first character.
    let caret = lines[at + 1];
    let col = lines[at].find("***").unwrap();
    assert_eq!(caret.find('^'), Some(col), "{}", out.stderr);
}

#[test]
fn no_color_wins_and_pipes_get_no_escapes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fhirconn.yaml"), BAD).unwrap();
    // Piped: no colour.
    let plain = run(dir.path(), &[], &["config", "check"]);
    assert!(!plain.stderr.contains('\x1b'), "{:?}", plain.stderr);
    // Forced colour shows that there is colour to take away...
    let forced = run(dir.path(), &[("CLICOLOR_FORCE", "1")], &["config", "check"]);
    assert!(forced.stderr.contains('\x1b'), "{:?}", forced.stderr);
    // ...and NO_COLOR takes it away.
    let env = [("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")];
    let no = run(dir.path(), &env, &["config", "check"]);
    assert!(!no.stderr.contains('\x1b'), "{:?}", no.stderr);
    assert_eq!(no.stderr.lines().count(), plain.stderr.lines().count());
}

#[test]
fn commands_that_print_data_speak_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fhirconn.yaml"), GOOD).unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run(dir.path(), &[], args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
    };
    let check = json(&["config", "check", "--output", "json"]);
    assert_eq!(check["valid"], true);
    assert_eq!(check["connections"], serde_json::json!(["pub", "tok"]));
    let list = json(&["profile", "list", "--output", "json"]);
    assert_eq!(list[1]["id"], "tok");
    assert_eq!(list[1]["schemes"], serde_json::json!(["bearer"]));
    assert_eq!(list[0]["schemes"], serde_json::json!(["none"]));
    let described = json(&["profile", "describe", "tok", "--output", "json"]);
    assert_eq!(described["auth"]["token"], "***");
    let schemes = json(&["schemes", "--output", "json"]);
    assert!(schemes
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "bearer"));
    let token = json(&["token", "tok", "--json"]);
    assert_eq!(token["token"], "CANARY-token-42");
}
