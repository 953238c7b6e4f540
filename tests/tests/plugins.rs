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
