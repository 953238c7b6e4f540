//! Using a connection: `get`/`post`/`put`/`delete` with data, headers, queries and paging,
//! `import dsf` and `profile` (the proxy's tests are in `proxy.rs`).

use fhirconn_testkit::{FhirServer, FhirServerConfig, ServerAuth};
use fhirconn_tests::{fhirconn_bin, plugin_dir};
use serde_json::json;
use std::process::Command;

const TOKEN: &str = "CANARY-requests-token-77";

/// A bearer-protected and a basic-protected server.
async fn start_servers() -> (FhirServer, FhirServer) {
    let bearer = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Bearer {
            tokens: vec![TOKEN.into()],
        },
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    let basic = FhirServer::start(FhirServerConfig {
        auth: ServerAuth::Basic {
            username: "u".into(),
            password: "CANARY-requests-pw".into(),
        },
        ..FhirServerConfig::default()
    })
    .await
    .unwrap();
    (bearer, basic)
}

fn servers(rt: &tokio::runtime::Runtime) -> (FhirServer, FhirServer) {
    rt.block_on(start_servers())
}

fn run(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(fhirconn_bin())
        .current_dir(dir)
        .env_remove("FHIRCONN_CONFIG")
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn get_post_put_delete_with_data_headers_queries_and_pages() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, _) = servers(&rt);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fhirconn.yaml"),
        format!(
            "connections:\n  s:\n    base-url: {}\n    auth: {{scheme: bearer, token: {TOKEN}}}\n",
            s.base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.json"),
        r#"{"resourceType":"Patient","name":[{"family":"New"}]}"#,
    )
    .unwrap();
    let d = dir.path();

    let (code, out, err) = run(d, &["post", "s", "Patient", "--data", "@p.json"], None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], "new-1");

    let (code, out, err) = run(
        d,
        &[
            "put",
            "s",
            "Patient/7",
            "--data",
            "-",
            "--header",
            "If-Match: W/\"1\"",
        ],
        Some(r#"{"resourceType":"Patient","id":"7"}"#),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"id\":\"7\""),
        "raw (not pretty) when piped: {out}"
    );

    let (code, _, err) = run(d, &["delete", "s", "Patient/7"], None);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = run(
        d,
        &["get", "s", "Patient", "--query", "_count=1", "--all-pages"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entry"].as_array().unwrap().len(), 2, "{out}");
    assert!(err.contains("2 page(s)"), "{err}");

    let (code, _, err) = run(d, &["get", "s", "Patient/999"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 404") && err.contains("OperationOutcome"),
        "{err}"
    );

    let (code, _, err) = run(d, &["get", "s", "Patient", "--query", "novalue"], None);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(TOKEN) && !out.contains(TOKEN));
}

#[test]
fn a_dsf_connections_file_is_imported_and_what_has_no_equivalent_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // As DSF documents it: the environment variable holding the YAML as a block scalar.
    std::fs::write(
        d.join("dsf.yaml"),
        "DEV_DSF_BPE_FHIR_CLIENT_CONNECTIONS_CONFIG: |\n  no-auth-server:\n    base-url: https://no.auth.server:8443/fhir\n    test-connection-on-startup: yes\n    connect-timeout: PT0.5S\n    read-timeout: PT5M\n  basic-auth-server:\n    base-url: https://basic.auth.server/fhir\n    basic-auth:\n      username: user\n      password-file: password.file\n  token-server:\n    base-url: https://token.server/fhir\n    bearer-auth:\n      token-file: token.file\n  cert-and-oidc:\n    base-url: https://cert.server/fhir\n    oidc-auth:\n      base-url: https://oidc.server/realms/x\n      client-id: some_client_id\n      client-secret-file: secret.file\n    cert-auth:\n      private-key-file: client.key\n      certificate-file: client.crt\n      password: pw\n    proxy:\n      url: http://proxy:8080\n",
    )
    .unwrap();
    let (code, _, err) = run(
        d,
        &["import", "dsf", "dsf.yaml", "--out", "fhirconn.yaml"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: cert-and-oidc: proxy: no equivalent setting"),
        "{err}"
    );
    let yaml = std::fs::read_to_string(d.join("fhirconn.yaml")).unwrap();
    // The certificate comes first, so the token request presents it.
    let mtls = yaml.find("\"mtls\"").unwrap();
    let oidc = yaml.find("\"oidc-client-credentials\"").unwrap();
    assert!(mtls < oidc, "{yaml}");
    assert!(
        yaml.contains("private-key-password: \"pw\"")
            && yaml.contains("issuer: \"https://oidc.server/realms/x\""),
        "{yaml}"
    );
    assert!(yaml.contains("test-connection-on-startup: true"), "{yaml}");
    // The result validates against the composed schema; only the referenced files are missing.
    let (code, _, err) = run(d, &["config", "check"], None);
    assert_eq!(code, 2, "{err}");
    for line in err.lines().filter(|l| l.starts_with("error:")) {
        assert!(
            line.contains("no such file") || line.contains("cannot read"),
            "a schema error in the converted file: {line}"
        );
    }
    // Never overwrite an existing file.
    let (code, _, err) = run(
        d,
        &["import", "dsf", "dsf.yaml", "--out", "fhirconn.yaml"],
        None,
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn profiles_are_edited_in_place_keeping_comments_and_validated_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let original = "# Team connections — keep this comment\nconnections:\n  # production\n  prod:\n    base-url: https://prod.example/fhir  # the real one\n";
    std::fs::write(d.join("fhirconn.yaml"), original).unwrap();
    let read = || std::fs::read_to_string(d.join("fhirconn.yaml")).unwrap();

    let (code, out, err) = run(
        d,
        &[
            "profile",
            "set",
            "lab",
            "--scheme",
            "basic",
            "--base-url",
            "https://lab.example/fhir",
            "--set",
            "username=ann",
            "--set",
            "password-file=lab.pw",
            "--set",
            "read-timeout=PT30S",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let text = read();
    assert!(
        text.starts_with(original.trim_end()),
        "the rest of the file is kept:\n{text}"
    );
    assert!(
        text.contains("read-timeout: \"PT30S\"") && text.contains("scheme: \"basic\""),
        "{text}"
    );

    // A secret on the command line is refused; so is a setting the scheme does not know.
    for args in [
        &[
            "profile",
            "set",
            "x",
            "--scheme",
            "basic",
            "--base-url",
            "https://x",
            "--set",
            "username=u",
            "--set",
            "password=CANARY-inline",
        ][..],
        &[
            "profile",
            "set",
            "x",
            "--scheme",
            "basic",
            "--base-url",
            "https://x",
            "--set",
            "username=u",
            "--set",
            "pasword-file=p",
        ][..],
        &[
            "profile",
            "set",
            "x",
            "--scheme",
            "kerberos",
            "--base-url",
            "https://x",
        ][..],
    ] {
        let (code, _, err) = run(d, args, None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.contains("CANARY-inline"));
        assert_eq!(read(), text, "{args:?} changed the file");
    }

    let (code, out, _) = run(d, &["profile", "list"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("lab") && out.contains("basic") && out.contains("prod"),
        "{out}"
    );
    run(
        d,
        &[
            "profile",
            "set",
            "tok",
            "--scheme",
            "bearer",
            "--base-url",
            "https://t",
            "--set",
            "token=CANARY-tok-1",
            "--allow-inline-secret",
        ],
        None,
    );
    let (code, out, _) = run(d, &["profile", "describe", "tok"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("***") && !out.contains("CANARY-tok-1"),
        "{out}"
    );

    let (code, _, err) = run(d, &["profile", "remove", "lab"], None);
    assert_eq!(code, 0, "{err}");
    let text = read();
    assert!(
        !text.contains("lab.example")
            && text.contains("# Team connections")
            && text.contains("# the real one")
    );
}

/// `--header` on `get` and `post` reaches the server (observed by a recording server), next to
/// the connection's credentials; a `Content-Type` given with `--header` replaces the default
/// FHIR JSON one instead of being sent twice.
#[test]
fn headers_given_with_dash_dash_header_reach_the_server() {
    use fhirconn_testkit::hostile::{Answer, HostileServer};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(HostileServer::start()).unwrap();
    server.otherwise(Answer::fhir(
        200,
        &json!({"resourceType": "Patient", "id": "1"}),
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("fhirconn.yaml"),
        format!(
            "connections:\n  s:\n    base-url: {}\n    auth: {{scheme: bearer, token: {TOKEN}}}\n",
            server.url("/fhir")
        ),
    )
    .unwrap();

    let (code, _, err) = run(
        d,
        &[
            "get",
            "s",
            "Patient/1",
            "--header",
            "X-Fhirconn-Test: get-header-value",
            "--header",
            "Prefer:  handling=strict  ",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let got = server.received_at("/fhir/Patient/1");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "GET");
    assert_eq!(got[0].header("x-fhirconn-test"), Some("get-header-value"));
    assert_eq!(got[0].header("prefer"), Some("handling=strict"));
    assert_eq!(
        got[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );

    let (code, _, err) = run(
        d,
        &[
            "post",
            "s",
            "Patient",
            "--data",
            "-",
            "--header",
            "If-None-Exist: identifier=urn:x|42",
            "--header",
            "Content-Type: application/json",
        ],
        Some(r#"{"resourceType":"Patient"}"#),
    );
    assert_eq!(code, 0, "{err}");
    let got = server.received_at("/fhir/Patient");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].header("if-none-exist"), Some("identifier=urn:x|42"));
    let types: Vec<&str> = got[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "content-type")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(types, ["application/json"]);
    assert_eq!(got[0].body_text(), r#"{"resourceType":"Patient"}"#);
    assert_eq!(
        got[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );

    // Without --header, none of them is sent (the server really records what it gets).
    let (code, _, err) = run(d, &["get", "s", "Patient/2"], None);
    assert_eq!(code, 0, "{err}");
    let got = server.received_at("/fhir/Patient/2");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-fhirconn-test"), None);
}
