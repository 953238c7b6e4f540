//! Security boundary: files holding secrets. The credential store, `profile` edits of the
//! connections file, `import dsf` output and `keygen` keys are written through the safe-write
//! helper: a planted temporary file or symlink neither leaks nor redirects a secret, modes are
//! private from creation, and a symlinked connections file is edited at its target.
#![cfg(unix)]

use fhirconn_host::services::{CredentialStore, FileStore};
use fhirconn_tests::{chmod, fhirconn_command, mode, run_command, Out};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

const REFRESH: &str = "CANARY-refresh-token-0123456789";

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .unwrap()
        .file_type()
        .is_symlink()
}

/// Runs `fhirconn` in `dir` with a private state directory and home, and `env` set.
fn run(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Out {
    let mut c = fhirconn_command(dir, true);
    c.env_remove("FHIRCONN_CREDENTIALS")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", dir.join("home"))
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_command(&mut c)
}

/// A pre-created, world-writable file at the old fixed temporary name (`<store>.tmp`) does not
/// make the store world-readable: the store is 0600 and the planted file is not written.
#[test]
fn credential_store_ignores_a_planted_world_writable_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("credentials.json");
    let planted = dir.path().join("credentials.json.tmp");
    std::fs::write(&planted, "").unwrap();
    chmod(&planted, 0o666);
    let store = FileStore::new(store_path.clone());
    store.put("conn", REFRESH).unwrap();
    assert_eq!(mode(&store_path), 0o600, "the store is private");
    assert_eq!(
        std::fs::read_to_string(&planted).unwrap(),
        "",
        "planted file untouched"
    );
    assert_eq!(store.get("conn").unwrap().as_deref(), Some(REFRESH));
    // No temporary file is left beside the store (only the lock file and the planted one).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "credentials.json",
            "credentials.json.lock",
            "credentials.json.tmp"
        ]
    );
}

/// A symlink at the old temporary name pointing at another file does not send the refresh
/// token there, and the store does not become a symlink.
#[test]
fn credential_store_does_not_write_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("attacker-readable");
    std::fs::write(&victim, "untouched").unwrap();
    let store_path = dir.path().join("credentials.json");
    symlink(&victim, dir.path().join("credentials.json.tmp")).unwrap();
    let store = FileStore::new(store_path.clone());
    store.put("conn", REFRESH).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(!is_symlink(&store_path));
    assert_eq!(mode(&store_path), 0o600);
    assert!(std::fs::read_to_string(&store_path)
        .unwrap()
        .contains(REFRESH));
}

/// A store that is a symlink, or that others can write, is refused: its values could have been
/// planted (an attacker's refresh token).
#[test]
fn credential_store_refuses_a_symlinked_or_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    std::fs::write(&real, r#"{"conn": "planted"}"#).unwrap();
    chmod(&real, 0o600);
    let link = dir.path().join("credentials.json");
    symlink(&real, &link).unwrap();
    let e = FileStore::new(link).get("conn").unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    chmod(&real, 0o666);
    let e = FileStore::new(real.clone())
        .get("conn")
        .unwrap_err()
        .to_string();
    assert!(e.contains("written by group or others"), "{e}");
    chmod(&real, 0o600);
    assert_eq!(
        FileStore::new(real).get("conn").unwrap().as_deref(),
        Some("planted")
    );
}

/// Concurrent updates from several stores on one file (as from several processes) lose none.
#[test]
fn credential_store_updates_do_not_lose_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/fhirconn/credentials.json");
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                // A store object each: only the file lock orders them.
                FileStore::new(path).put(&format!("k{i}"), "v").unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = FileStore::new(path.clone());
    for i in 0..8 {
        assert!(store.get(&format!("k{i}")).unwrap().is_some(), "k{i} lost");
    }
    assert_eq!(mode(path.parent().unwrap()), 0o700, "created private");
}

/// The CLI keeps sign-ins in the user's state directory, not beside the connections file
/// (often a shared project directory); `$FHIRCONN_CREDENTIALS` overrides it. Shown by which
/// store `logout` reads: a corrupt store in the expected place makes it fail, naming it.
#[test]
fn cli_keeps_sign_ins_in_the_state_directory_or_fhirconn_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("fhirconn.yaml"),
        "connections:\n  az:\n    base-url: https://fhir.example/fhir\n    auth:\n      \
         scheme: azure-ad\n      client-id: app\n      tenant: contoso.example\n",
    )
    .unwrap();
    let corrupt = |p: &Path| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "not json").unwrap();
        chmod(p, 0o600);
    };
    // Beside the config: no longer read.
    corrupt(&d.join(".fhirconn-credentials.json"));
    let state = d.join("state");
    let out = run(d, &[("XDG_STATE_HOME", &state)], &["logout", "az"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        mode(&state.join("fhirconn")),
        0o700,
        "the state directory is created private"
    );
    // $XDG_STATE_HOME/fhirconn/credentials.json
    let xdg_store = state.join("fhirconn/credentials.json");
    corrupt(&xdg_store);
    let out = run(d, &[("XDG_STATE_HOME", &state)], &["logout", "az"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&xdg_store.display().to_string()) && out.stderr.contains("corrupt"),
        "{}",
        out.stderr
    );
    // ~/.local/state/fhirconn/credentials.json without $XDG_STATE_HOME.
    let home_store = d.join("home/.local/state/fhirconn/credentials.json");
    corrupt(&home_store);
    let out = run(d, &[], &["logout", "az"]);
    assert!(
        out.stderr.contains(&home_store.display().to_string()),
        "{}",
        out.stderr
    );
    // $FHIRCONN_CREDENTIALS wins over both.
    let chosen = d.join("chosen.json");
    corrupt(&chosen);
    let out = run(
        d,
        &[
            ("XDG_STATE_HOME", &state),
            ("FHIRCONN_CREDENTIALS", &chosen),
        ],
        &["logout", "az"],
    );
    assert!(
        out.stderr.contains(&chosen.display().to_string()),
        "{}",
        out.stderr
    );
}

/// `keygen --force` replaces a symlink planted at its output paths instead of writing the
/// private key (or the JWKS) into the file it points to.
#[test]
fn keygen_force_does_not_follow_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    std::fs::create_dir(&out_dir).unwrap();
    for (name, victim) in [
        ("private-key.pem", "victim-key"),
        ("jwks.json", "victim-jwks"),
    ] {
        let v = elsewhere.path().join(victim);
        std::fs::write(&v, "untouched").unwrap();
        chmod(&v, 0o644);
        symlink(&v, out_dir.join(name)).unwrap();
    }
    let out = run(
        dir.path(),
        &[],
        &["keygen", "--out", out_dir.to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "without --force a symlink counts as existing");
    let out = run(
        dir.path(),
        &[],
        &["keygen", "--force", "--out", out_dir.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (name, victim) in [
        ("private-key.pem", "victim-key"),
        ("jwks.json", "victim-jwks"),
    ] {
        let v = elsewhere.path().join(victim);
        assert_eq!(std::fs::read_to_string(&v).unwrap(), "untouched", "{name}");
        assert_eq!(mode(&v), 0o644, "{name}: the target's mode is not changed");
        assert!(!is_symlink(&out_dir.join(name)), "{name}");
    }
    assert_eq!(mode(&out_dir.join("private-key.pem")), 0o600);
    assert!(std::fs::read_to_string(out_dir.join("private-key.pem"))
        .unwrap()
        .contains("PRIVATE KEY"));
}

const BASIC_FILE: &str = "# mine\nconnections:\n  a:\n    base-url: https://a.example/fhir\n    \
                          auth: {scheme: basic, username: u, password-file: pw}\n";

/// `profile set` edits a symlinked connections file at its target (dotfile managers keep it a
/// symlink), keeps its mode, and does not write through a planted temporary file.
#[test]
fn profile_edits_a_symlinked_config_at_its_target_and_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("dotfiles")).unwrap();
    let real = d.join("dotfiles/fhirconn.yaml");
    std::fs::write(&real, BASIC_FILE).unwrap();
    chmod(&real, 0o640);
    symlink("dotfiles/fhirconn.yaml", d.join("fhirconn.yaml")).unwrap();
    // The old predictable temporary name, planted as a symlink to a victim.
    let victim = d.join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    for pid_guess in 0..64 {
        let _ = symlink(&victim, d.join(format!(".fhirconn.yaml.{pid_guess}.tmp")));
    }
    let out = run(
        d,
        &[],
        &[
            "profile",
            "set",
            "b",
            "--scheme",
            "none",
            "--base-url",
            "https://b.example/fhir",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(is_symlink(&d.join("fhirconn.yaml")), "the link stays");
    let text = std::fs::read_to_string(&real).unwrap();
    assert!(
        text.contains("# mine") && text.contains("b.example"),
        "{text}"
    );
    assert_eq!(mode(&real), 0o640, "the mode is kept");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    // Removing works the same way.
    let out = run(d, &[], &["profile", "remove", "b"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(is_symlink(&d.join("fhirconn.yaml")));
    assert!(!std::fs::read_to_string(&real)
        .unwrap()
        .contains("b.example"));
}

/// A connections file that holds an inline secret is written 0600 (a new one too); one
/// without stays 0644 when new.
#[test]
fn profile_writes_a_file_with_an_inline_secret_private() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = |id: &str, extra: &[&str]| {
        let mut args = vec![
            "profile",
            "set",
            id,
            "--scheme",
            "basic",
            "--base-url",
            "https://a.example/fhir",
            "--set",
            "username=u",
        ];
        args.extend_from_slice(extra);
        run(d, &[], &args)
    };
    let out = set("a", &["--set", "password-file=pw"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(&d.join("fhirconn.yaml")), 0o644, "no secret: 0644");
    let out = set("b", &["--set", "password=CANARY-pw"]);
    assert_eq!(out.code, 2, "an inline secret needs consent");
    assert!(!out.stderr.contains("CANARY"));
    let out = set(
        "b",
        &["--set", "password=CANARY-pw", "--allow-inline-secret"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        mode(&d.join("fhirconn.yaml")),
        0o600,
        "a secret inside: 0600"
    );
    // A brand-new file with a secret is 0600 from the start.
    let fresh = tempfile::tempdir().unwrap();
    let out = run(
        fresh.path(),
        &[],
        &[
            "profile",
            "set",
            "x",
            "--scheme",
            "bearer",
            "--base-url",
            "https://x.example/fhir",
            "--set",
            "token=CANARY-token",
            "--allow-inline-secret",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(&fresh.path().join("fhirconn.yaml")), 0o600);
}

/// `profile describe` masks what the scheme's schema marks secret, whatever its type.
#[test]
fn profile_describe_masks_secrets_by_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("fhirconn.yaml"),
        "connections:\n  a:\n    base-url: https://a.example/fhir\n    auth:\n      \
         scheme: basic\n      username: visible-user\n      password: 987654321\n  \
         o:\n    base-url: https://o.example/fhir\n    auth:\n      \
         scheme: oidc-client-credentials\n      token-url: https://idp.example/token\n      \
         client-id: visible-client\n      client-secret: CANARY-secret\n      \
         extra-params: {apikey: CANARY-apikey, resource: CANARY-resource}\n",
    )
    .unwrap();
    let out = run(d, &[], &["profile", "describe", "a"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("987654321"), "{}", out.stdout);
    assert!(out.stdout.contains("visible-user"), "{}", out.stdout);
    let out = run(d, &[], &["profile", "describe", "o"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("CANARY"), "{}", out.stdout);
    assert!(
        out.stdout.contains("visible-client") && out.stdout.contains("apikey"),
        "{}",
        out.stdout
    );
}

/// `profile describe` hides an `exec` connection's `env` values (the scheme's schema marks
/// `env` secret); `profile set` refuses one inline without `--allow-inline-secret`, and with
/// it writes the file 0600.
#[test]
fn profile_describe_hides_exec_env_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("fhirconn.yaml"),
        "connections:\n  x:\n    base-url: https://x.example/fhir\n    auth:\n      \
         scheme: exec\n      command: [./get-token, --visible-arg]\n      \
         env: {VENDOR_CREDENTIAL: CANARY-exec-env}\n",
    )
    .unwrap();
    let out = run(d, &[], &["profile", "describe", "x"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.all().contains("CANARY"), "{}", out.stdout);
    assert!(out.stdout.contains("--visible-arg"), "{}", out.stdout);
    let set_y = |extra: &[&str]| {
        let mut args = vec![
            "profile",
            "set",
            "y",
            "--scheme",
            "exec",
            "--base-url",
            "https://y.example/fhir",
            "--set",
            "command=[\"./t\"]",
            "--set",
            "env={\"VENDOR_CREDENTIAL\":\"CANARY-exec-env\"}",
        ];
        args.extend_from_slice(extra);
        run(d, &[], &args)
    };
    let out = set_y(&[]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("is a secret"), "{}", out.stderr);
    assert!(!out.all().contains("CANARY"), "{}", out.all());
    // Allowed inline, the file holding it is private.
    let out = set_y(&["--allow-inline-secret"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(mode(&d.join("fhirconn.yaml")), 0o600);
}

/// `import dsf` writes its output 0600 when it carries a secret inline, and names every such
/// secret on standard error with the `-file`/`-env` alternative.
#[test]
fn import_dsf_output_with_inline_secrets_is_private_and_they_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("dsf.yaml"),
        "a:\n  base-url: https://a.example/fhir\n  basic-auth:\n    username: u\n    \
         password: CANARY-pw\n\
         b:\n  base-url: https://b.example/fhir\n  oidc-auth:\n    base-url: https://idp.example\n    \
         client-id: c\n    client-secret: CANARY-cs\n\
         c:\n  base-url: https://c.example/fhir\n  bearer-auth:\n    token-file: t\n",
    )
    .unwrap();
    let out = run(d, &[], &["import", "dsf", "dsf.yaml", "--out", "with.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(&d.join("with.yaml")), 0o600);
    for s in ["a: password", "b: client-secret"] {
        assert!(out.stderr.contains(s), "{s} not listed: {}", out.stderr);
    }
    assert!(out.stderr.contains("-file") && out.stderr.contains("-env"));
    assert!(!out.stderr.contains("CANARY"), "{}", out.stderr);
    assert!(!out.stderr.contains("c: token"), "{}", out.stderr);
    // Never overwrites, and no secret means an ordinary mode.
    let out = run(d, &[], &["import", "dsf", "dsf.yaml", "--out", "with.yaml"]);
    assert_eq!(out.code, 2);
    std::fs::write(
        d.join("plain.yaml"),
        "c:\n  base-url: https://c.example/fhir\n  bearer-auth:\n    token-file: t\n",
    )
    .unwrap();
    let out = run(
        d,
        &[],
        &["import", "dsf", "plain.yaml", "--out", "out.yaml"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(&d.join("out.yaml")), 0o644);
}

/// A lock file planted by another user (who could hold it for ever) is refused. Needs root to
/// give the file away; CI and the project's machines run as root.
#[test]
fn credential_store_refuses_a_lock_file_of_another_user() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("credentials.json");
    let lock = dir.path().join("credentials.json.lock");
    std::fs::write(&lock, b"").unwrap();
    let given_away = Command::new("chown")
        .arg("65534")
        .arg(&lock)
        .status()
        .is_ok_and(|s| s.success());
    if !given_away {
        eprintln!("not root: cannot give the lock file to another user; nothing to check");
        return;
    }
    let e = FileStore::new(store_path.clone())
        .put("conn/x", "v")
        .unwrap_err()
        .to_string();
    assert!(e.contains("another user"), "{e}");
    assert!(!store_path.exists());
}
