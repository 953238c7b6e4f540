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
