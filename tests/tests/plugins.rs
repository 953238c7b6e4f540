//! Loading plugins: side by side, faults, duplicates, panics.

use fhirconn_host::plugins::Registry;
use fhirconn_host::PluginError;
use fhirconn_tests::{fixture, fixture_dir, plugin_dir};

#[test]
fn two_libraries_load_side_by_side_and_keep_their_own_names() {
    let reg = Registry::new(vec![plugin_dir()]);
    let basic = reg.get("basic").unwrap();
    let bearer = reg.get("bearer").unwrap();
    assert_eq!(basic.name, "basic");
    assert_eq!(bearer.name, "bearer");
    // Different libraries, not the first one's module returned twice (the
    // RootModule::load_from_file cache would do that).
    assert_ne!(basic.origin, bearer.origin);
    assert!(basic
        .origin
        .to_string()
        .ends_with(&fhirconn_host::plugins::library_file_name("basic")));
    assert!(bearer.summary.contains("bearer"));
    assert!(basic.summary.contains("Basic"));
    assert_eq!(basic.schema["required"][0], "username");
    // none is built in, in the same registry
    assert_eq!(
        reg.get("none").unwrap().origin,
        fhirconn_host::plugins::Origin::Builtin
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir
        .path()
        .join(fhirconn_host::plugins::library_file_name("bogus"));
    std::fs::write(&bogus, b"this is not an ELF file").unwrap();
    let reg = Registry::new(vec![dir.path().to_path_buf()]);
    let err = reg.get("bogus").unwrap_err();
    assert!(matches!(err, PluginError::Open { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("cannot load plugin "), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
}

#[test]
fn an_abi_mismatched_plugin_is_refused_in_at_most_five_lines() {
    let reg = Registry::new(vec![fixture_dir()]);
    let err = reg.load(&fixture("fhirconn_abi_mismatch")).unwrap_err();
    assert!(matches!(err, PluginError::Layout { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.lines().count() <= 5, "{msg}");
    assert!(msg.contains("fhirconn_abi_mismatch"), "{msg}");
    assert!(
        msg.contains("rebuild the plugin against fhirconn-sdk"),
        "{msg}"
    );
    // other schemes keep loading
    let reg = Registry::new(vec![fixture_dir(), plugin_dir()]);
    assert!(reg.get("abi-mismatch").is_err());
    assert!(reg.get("basic").is_ok());
}

#[test]
fn the_same_scheme_from_two_libraries_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = plugin_dir().join(fhirconn_host::plugins::library_file_name("basic"));
    let copy = dir
        .path()
        .join(fhirconn_host::plugins::library_file_name("basic_copy"));
    std::fs::copy(&a, &copy).unwrap();
    let reg = Registry::new(vec![plugin_dir(), dir.path().to_path_buf()]);
    reg.get("basic").unwrap();
    let err = reg.load(&copy).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PluginError::DuplicateScheme { .. }), "{msg}");
    assert!(
        msg.contains("fhirconn_basic.") && msg.contains("fhirconn_basic_copy."),
        "{msg}"
    );
}

#[test]
fn unknown_schemes_list_what_is_available() {
    let reg = Registry::new(vec![plugin_dir()]);
    let msg = reg.get("kerberos").unwrap_err().to_string();
    assert!(msg.contains("unknown scheme 'kerberos'"), "{msg}");
    assert!(
        msg.contains("basic") && msg.contains("bearer") && msg.contains("none"),
        "{msg}"
    );
}

/// A plugin compiled against the frozen copy of the 1.0.0 interface (tests/fixtures/abi-v1)
/// loads in the current host and works, although the host has since gained operations the
/// plugin never heard of (`logout`, `browser-redirect`, warnings in `extensions_json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_frozen_v1_interface_works_in_this_host() {
    use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
    let server = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Bearer {
            tokens: vec!["frozen-token-1".into()],
        },
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = fhirconn_host::Host::builder()
        .config_value(
            dir.path(),
            serde_json::json!({"connections": {"old": {
                "base-url": server.base_url(),
                "auth": {"scheme": "frozen-v1", "token": "frozen-token-1"}}}}),
        )
        .plugin_dir(fixture_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let scheme = host.registry().get("frozen-v1").unwrap();
    assert_eq!(scheme.sdk_version, "abi-1.0.0");
    let report = host.test(&[], Some("Patient/1")).await.unwrap().remove(0);
    assert!(report.ok, "{:?}", report.failure);
    let conn = host.connection("old").unwrap();
    // An operation added after 1.0: the old plugin answers `unsupported`, the host copes.
    assert!(!conn.logout().await.unwrap());
    assert_eq!(conn.get("Patient/1").await.unwrap().status, 200);
}

#[test]
fn a_truncated_library_and_two_schemes_with_one_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(plugin_dir().join(fhirconn_host::plugins::library_file_name("basic")))
        .unwrap();
    let cut = dir
        .path()
        .join(fhirconn_host::plugins::library_file_name("cut"));
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    let reg = Registry::new(vec![dir.path().to_path_buf()]);
    let err = reg.load(&cut).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("libfhirconn_cut"), "{msg}");
    assert!(msg.lines().count() <= 5, "{msg}");

    let reg = Registry::new(vec![fixture_dir()]);
    let err = reg.load(&fixture("fhirconn_twins")).unwrap_err();
    assert!(
        matches!(err, PluginError::DuplicateScheme { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("twin") && err.to_string().contains("fhirconn_twins"));
}

/// A plugin returning garbage from every entry point: each connection fails with a short,
/// printable diagnosis of its own; nothing panics; other connections pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_plugin_becomes_clear_per_connection_diagnoses() {
    use fhirconn_testkit::{FhirServer, FhirServerConfig};
    let server = FhirServer::start(FhirServerConfig::default())
        .await
        .unwrap();
    let modes = [
        "bad-header-name",
        "header-injection",
        "negative-expiry",
        "bad-identity",
        "bad-extensions",
        "authorize-error",
    ];
    let mut conns = serde_json::Map::new();
    for m in modes {
        conns.insert(
            m.into(),
            serde_json::json!({"base-url": server.base_url(), "auth": {"scheme": "garbage", "mode": m}}),
        );
    }
    conns.insert(
        "fine".into(),
        serde_json::json!({"base-url": server.base_url()}),
    );
    let dir = tempfile::tempdir().unwrap();
    let host = fhirconn_host::Host::builder()
        .config_value(dir.path(), serde_json::json!({ "connections": conns }))
        .plugin_dir(fixture_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reports = host.test(&[], None).await.unwrap();
    for r in &reports {
        let text = r
            .failure
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            text.len() < 2_000,
            "{}: a {}-byte diagnosis",
            r.id,
            text.len()
        );
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{}: control characters reach the terminal: {text:?}",
            r.id
        );
        match r.id.as_str() {
            "fine" | "bad-extensions" | "negative-expiry" => assert!(r.ok, "{}: {text}", r.id),
            "header-injection" | "bad-header-name" => {
                assert!(text.contains("invalid"), "{}: {text}", r.id)
            }
            "bad-identity" => assert!(text.contains("client certificate"), "{text}"),
            _ => assert!(
                !r.ok && text.starts_with("credentials: "),
                "{}: {text}",
                r.id
            ),
        }
    }
    // A configure-time error with an unknown kind and a megabyte of terminal escapes.
    let err = fhirconn_host::Host::builder()
        .config_value(
            dir.path(),
            serde_json::json!({"connections": {"g": {"base-url": server.base_url(),
                "auth": {"scheme": "garbage", "mode": "configure-error"}}}}),
        )
        .plugin_dir(fixture_dir())
        .only_explicit_plugin_dirs()
        .build()
        .await;
    let text = match err {
        Ok(h) => h
            .test(&[], None)
            .await
            .unwrap()
            .remove(0)
            .failure
            .map(|d| d.to_string())
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    assert!(!text.is_empty());
    assert!(text.len() < 2_000, "a {}-byte message", text.len());
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
}

/// Security boundary: a scheme name is a name, not a path. `x/../../elsewhere/evil` used to
/// load a library outside every plugin directory; now it loads nothing.
#[test]
fn scheme_names_are_names_not_paths() {
    let root = tempfile::tempdir().unwrap();
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(plugins.join("libfhirconn_x")).unwrap();
    std::fs::create_dir_all(root.path().join("elsewhere")).unwrap();
    std::fs::copy(
        fixture("fhirconn_frozen_v1"),
        root.path()
            .join(format!("elsewhere/evil{}", std::env::consts::DLL_SUFFIX)),
    )
    .unwrap();
    let reg = Registry::new(vec![plugins]);
    for name in [
        "x/../../elsewhere/evil",
        "../evil",
        "Basic",
        "-x",
        "a b",
        "",
    ] {
        let err = reg.get(name).unwrap_err();
        assert!(
            matches!(err, PluginError::UnknownScheme { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("not a valid scheme name"), "{err}");
    }
    assert!(
        reg.schemes().iter().all(|s| s.name != "frozen-v1"),
        "a library outside the plugin directories was loaded"
    );
    for bad in ["x/../../e", "a.b", "A"] {
        let file = fhirconn_host::plugins::library_file_name(bad);
        assert!(!file.contains(['/', '\\', '.']) || file.ends_with(std::env::consts::DLL_SUFFIX));
        assert!(!file.contains('/'), "{file}");
    }
    assert!(fhirconn_host::plugins::is_valid_scheme_name(
        "oidc-client-credentials"
    ));
    assert!(!fhirconn_host::plugins::is_valid_scheme_name("x_y"));
}

/// An unknown scheme loads no library (a typo used to load every library in every plugin
/// directory) and the error lists the schemes the directories offer.
#[test]
fn an_unknown_scheme_loads_nothing_and_lists_the_known_ones() {
    let reg = Registry::new(vec![plugin_dir(), fixture_dir()]);
    let msg = reg.get("kerberos").unwrap_err().to_string();
    assert!(msg.contains("unknown scheme 'kerberos'"), "{msg}");
    for known in ["basic", "bearer", "azure-ad", "frozen-v1", "none"] {
        assert!(msg.contains(known), "{known} not listed: {msg}");
    }
    let loaded: Vec<String> = reg.schemes().iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        loaded,
        ["none"],
        "nothing but the built-in scheme is loaded"
    );
    // A family member comes from its family's library, and nothing else is loaded.
    let reg = Registry::new(vec![fixture_dir()]);
    assert!(reg.get("frozen-v1").is_ok());
    assert!(reg.get("frozen-v2").is_err());
    let loaded: Vec<String> = reg.schemes().iter().map(|s| s.name.clone()).collect();
    assert_eq!(loaded, ["frozen-v1", "none"]);
}

/// A library, or a plugin directory, that other users can write is refused: plugins run as the
/// person using fhirconn from the moment they are loaded.
#[cfg(unix)]
#[test]
fn libraries_other_users_can_write_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let chmod = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let lib = dir
        .path()
        .join(fhirconn_host::plugins::library_file_name("frozen-v1"));
    std::fs::copy(fixture("fhirconn_frozen_v1"), &lib).unwrap();
    chmod(dir.path(), 0o755);
    chmod(&lib, 0o666);
    let err = Registry::new(vec![dir.path().to_path_buf()])
        .get("frozen-v1")
        .unwrap_err();
    assert!(
        err.to_string().contains("can be written by every user"),
        "{err}"
    );
    chmod(&lib, 0o755);
    chmod(dir.path(), 0o777);
    let err = Registry::new(vec![dir.path().to_path_buf()])
        .get("frozen-v1")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("its directory") && msg.contains("chmod o-w"),
        "{msg}"
    );
    chmod(dir.path(), 0o755);
    assert!(Registry::new(vec![dir.path().to_path_buf()])
        .get("frozen-v1")
        .is_ok());
}

fn fhirconn(dir: &std::path::Path, plugin_path: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut c = std::process::Command::new(fhirconn_tests::fhirconn_bin());
    c.current_dir(dir)
        .env_remove("FHIRCONN_CONFIG")
        .env_remove("FHIRCONN_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .args(args);
    if let Some(p) = plugin_path {
        c.env("FHIRCONN_PLUGIN_PATH", p);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A relative `FHIRCONN_PLUGIN_PATH` entry would load whatever the working directory holds
/// (an untrusted checkout): it is ignored, with a warning naming it.
#[test]
fn relative_plugin_path_entries_are_ignored_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rel-plugins")).unwrap();
    std::fs::copy(
        fixture("fhirconn_frozen_v1"),
        dir.path()
            .join("rel-plugins")
            .join(fhirconn_host::plugins::library_file_name("frozen-v1")),
    )
    .unwrap();
    let (_, out) = fhirconn(dir.path(), Some("rel-plugins"), &["schemes"]);
    assert!(!out.contains("frozen-v1"), "{out}");
    assert!(
        out.contains("ignoring the relative entry 'rel-plugins'"),
        "{out}"
    );
    let abs = dir.path().join("rel-plugins");
    let (_, out) = fhirconn(dir.path(), abs.to_str(), &["schemes"]);
    assert!(out.contains("frozen-v1"), "{out}");
}

/// A scheme provided by two plugin directories is reported by every command, not only by
/// `fhirconn schemes`: an environment variable alone could otherwise replace a scheme.
#[test]
fn a_shadowed_scheme_is_reported_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("shadow");
    std::fs::create_dir(&shadow).unwrap();
    let file = fhirconn_host::plugins::library_file_name("bearer");
    std::fs::copy(plugin_dir().join(&file), shadow.join(&file)).unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        "connections:\n  b:\n    base-url: https://h.example/fhir\n    \
         auth: {scheme: bearer, token-env: HOME}\n",
    )
    .unwrap();
    let plugins = plugin_dir();
    let (code, out) = fhirconn(
        dir.path(),
        shadow.to_str(),
        &["--plugin-dir", plugins.to_str().unwrap(), "config", "check"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("scheme 'bearer' comes from") && out.contains(shadow.to_str().unwrap()),
        "{out}"
    );
}
