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
