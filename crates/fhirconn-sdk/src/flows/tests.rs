//! Unit tests of the shared flows against the simulated host: what a metadata endpoint is sent
//! and how its dialects are read, the federated token file, the redirect's `state`, and the
//! binding of a stored sign-in.

use super::*;
use crate::host::HttpResponse;
use crate::testing::MockHost;
use crate::ErrorKind;

/// The mock's clock: 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;

fn answer(status: u16, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut h = vec![("content-type".to_string(), "application/json".to_string())];
    h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    HttpResponse {
        status,
        headers: h,
        body: body.as_bytes().to_vec(),
    }
}

fn metadata(mock: &MockHost, marker: Option<(&str, &str)>) -> Result<Credentials> {
    mock.with_host(|h| {
        let req = HttpRequest::new("GET", "http://169.254.169.254/token?resource=r")
            .header("Metadata", "true");
        metadata_token(h, req, "metadata endpoint", marker)
    })
}

fn expiry(c: &Credentials) -> u64 {
    c.expires_at
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn metadata_lifetimes_are_read_in_every_dialect_and_validated() {
    for (body, lifetime) in [
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":"3599"}"#,
            3599,
        ),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":60}"#,
            60,
        ),
        (
            &*format!(
                r#"{{"access_token":"t","token_type":"Bearer","expires_on":"{}"}}"#,
                NOW + 600
            ),
            600,
        ),
        (
            &*format!(
                r#"{{"access_token":"t","token_type":"Bearer","expires_on":{}}}"#,
                NOW + 70
            ),
            70,
        ),
    ] {
        let body = body.to_string();
        let mock = MockHost::new().with_http(move |_| Ok(answer(200, &body, &[])));
        let c = metadata(&mock, None).unwrap();
        assert_eq!(expiry(&c), NOW + lifetime);
        let reqs = mock.requests.lock().unwrap();
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].url, "http://169.254.169.254/token?resource=r");
    }
    for (body, expected) in [
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":"soon"}"#,
            "non-numeric",
        ),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_on":"1767225600"}"#,
            "already expired",
        ),
        (
            r#"{"access_token":"t u","token_type":"Bearer"}"#,
            "whitespace",
        ),
        (r#"{"access_token":"t","token_type":"pop"}"#, "only Bearer"),
        ("<html>", "not JSON"),
        // Not finite: must never become "no expiry".
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":"inf"}"#,
            "non-numeric",
        ),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":"NaN"}"#,
            "non-numeric",
        ),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_in":"1e999"}"#,
            "non-numeric",
        ),
        (
            r#"{"access_token":"t","token_type":"Bearer","expires_on":"inf"}"#,
            "non-numeric",
        ),
    ] {
        let mock = MockHost::new().with_http(move |_| Ok(answer(200, body, &[])));
        let e = metadata(&mock, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.message().contains(expected), "{body}: {e}");
        assert!(
            e.message().contains("http://169.254.169.254/token")
                && !e.message().contains("resource=r"),
            "{e}"
        );
    }
}

#[test]
fn a_metadata_answer_without_its_marker_header_is_refused_unread() {
    let token = r#"{"access_token":"t","token_type":"Bearer","expires_in":60}"#;
    let marker = Some(("Metadata-Flavor", "Google"));
    let mock = MockHost::new().with_http(move |_| Ok(answer(200, token, &[])));
    let e = metadata(&mock, marker).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(
        e.message()
            .ends_with("answered without 'Metadata-Flavor: Google': not a metadata server"),
        "{e}"
    );
    // Even an error answer is not quoted without the marker.
    let mock = MockHost::new()
        .with_http(|_| Ok(answer(403, r#"{"error":"quoted-only-from-metadata"}"#, &[])));
    let e = metadata(&mock, marker).unwrap_err();
    assert!(!e.message().contains("quoted-only"), "{e}");
    let mock = MockHost::new()
        .with_http(move |_| Ok(answer(200, token, &[("metadata-flavor", "Google")])));
    assert!(metadata(&mock, marker).is_ok());
}

#[test]
fn metadata_errors_quote_the_oauth_error_sanitised_or_the_status() {
    let mock = MockHost::new().with_http(|_| {
        Ok(answer(
            400,
            "{\"error\":\"invalid_request\",\"error_description\":\"Identity \\u001b[31mnot found\"}",
            &[],
        ))
    });
    let e = metadata(&mock, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(
        e.message()
            .contains("answered HTTP 400: invalid_request: Identity"),
        "{e}"
    );
    assert!(!e.message().contains('\u{1b}'), "{e:?}");
    let long = format!(
        r#"{{"error":"invalid_client","error_description":"{}"}}"#,
        "x".repeat(5000)
    );
    let mock = MockHost::new().with_http(move |_| Ok(answer(401, &long, &[])));
    let e = metadata(&mock, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CredentialsRejected);
    assert!(e.message().len() < 400, "bounded: {}", e.message().len());
    let mock = MockHost::new().with_http(|_| Ok(answer(404, "<html>secret page</html>", &[])));
    let e = metadata(&mock, None).unwrap_err();
    assert!(e.message().ends_with("answered HTTP 404"), "{e}");
    let mock = MockHost::new().with_http(|_| Err("connection refused".into()));
    let e = metadata(&mock, None).unwrap_err();
    assert!(
        e.message()
            .starts_with("metadata endpoint http://169.254.169.254/token: "),
        "{e}"
    );
}

#[test]
fn a_federated_token_file_is_read_at_every_call_and_never_quoted() {
    let read = |content: &'static [u8]| {
        MockHost::new()
            .with_file("/t/token", content)
            .with_host(|h| federated_assertion(h, "federated-token-file", "/t/token"))
    };
    assert_eq!(
        read(b"jwt.one.sig\n").unwrap().expose_secret(),
        "jwt.one.sig"
    );
    assert_eq!(read(b"jwt.two.sig").unwrap().expose_secret(), "jwt.two.sig");
    for bad in [&b"  \n"[..], b"jwt.one sig-with-space"] {
        let e = read(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(
            e.message(),
            "federated-token-file /t/token: not a token (empty or with spaces)"
        );
    }
    let missing = MockHost::new().with_host(|h| federated_assertion(h, "f", "/nope"));
    assert!(missing.is_err());
}

#[test]
fn a_redirect_gives_its_code_only_with_the_right_state_and_no_error() {
    let code = redirect_code("code=c-1&state=s1", "s1").unwrap();
    assert_eq!(code.expose_secret(), "c-1");
    for (query, kind, expected) in [
        ("code=c-1&state=s2", ErrorKind::Protocol, "wrong state"),
        ("code=c-1", ErrorKind::Protocol, "wrong state"),
        (
            "code=c-1&state=s2&state=s1",
            ErrorKind::Protocol,
            "wrong state",
        ),
        ("state=s1", ErrorKind::Protocol, "carried no code"),
        (
            "state=s1&error=access_denied&error_description=no%1b%5B31m",
            ErrorKind::CredentialsRejected,
            "sign-in failed: access_denied: no\u{FFFD}[31m",
        ),
    ] {
        let e = redirect_code(query, "s1").unwrap_err();
        assert_eq!(e.kind(), kind, "{query}");
        assert!(e.message().contains(expected), "{query}: {e}");
    }
    let code = AuthorizationCode {
        code: "c-1".to_string().into(),
        redirect_uri: "http://127.0.0.1:9/".into(),
        verifier: "v-1".to_string().into(),
    };
    assert!(!format!("{code:?}").contains("c-1") && !format!("{code:?}").contains("v-1"));
    let form = String::from_utf8(
        code.token_request(TokenRequest::new("https://t"))
            .to_http()
            .body,
    )
    .unwrap();
    assert_eq!(
        form,
        "grant_type=authorization_code&code=c-1&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F&code_verifier=v-1"
    );
}

fn refresh_answers(status: u16, body: &'static str) -> MockHost {
    MockHost::new().with_http(move |_| Ok(answer(status, body, &[])))
}

#[test]
fn a_stored_sign_in_is_used_only_with_its_binding() {
    let mock = refresh_answers(
        200,
        r#"{"access_token":"a-2","token_type":"Bearer","expires_in":60,"refresh_token":"rt-2"}"#,
    );
    let ours = StoredSignIn::new("k", serde_json::json!({"client_id": "c", "aud": "x"}));
    let theirs = StoredSignIn::new("k", serde_json::json!({"client_id": "c", "aud": "y"}));
    mock.with_host(|h| {
        let resp = TokenRequest::new("https://t").send(h).unwrap();
        ours.accept(resp, h).unwrap();
        assert_eq!(ours.load(h).unwrap().unwrap().expose_secret(), "rt-2");
        assert!(theirs.load(h).unwrap().is_none(), "another binding");
        assert!(StoredSignIn::new("k", Value::Null)
            .load(h)
            .unwrap()
            .is_none());
        assert!(theirs
            .refresh(TokenRequest::new("https://t"), h)
            .unwrap()
            .is_none());
    });
    assert_eq!(
        mock.requests.lock().unwrap().len(),
        1,
        "the other binding sent nothing"
    );
    let stored = mock.with_host(|h| h.store_get("k")).unwrap().unwrap();
    let stored: Value = serde_json::from_str(stored.expose_secret()).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"client_id": "c", "aud": "x", "refresh_token": "rt-2"})
    );
    // An older format (no binding) is never sent.
    mock.with_host(|h| h.store_put("k", &SecretString::from("rt-old".to_string())))
        .unwrap();
    assert!(mock.with_host(|h| ours.load(h)).unwrap().is_none());
    // logout forgets it.
    let answer = mock.with_host(|h| logout(h, "k")).unwrap();
    assert_eq!(answer, serde_json::json!({"logged_out": true}));
    assert!(mock.with_host(|h| h.store_get("k")).unwrap().is_none());
}

#[test]
fn a_refused_refresh_token_is_deleted() {
    let mock = refresh_answers(400, r#"{"error":"invalid_grant"}"#);
    let ours = StoredSignIn::new("k", serde_json::json!({"client_id": "c"}));
    let stored = serde_json::json!({"client_id": "c", "refresh_token": "rt-1"}).to_string();
    mock.with_host(|h| h.store_put("k", &SecretString::from(stored)))
        .unwrap();
    let got = mock.with_host(|h| ours.refresh(TokenRequest::new("https://t").scope("s"), h));
    assert!(got.unwrap().is_none());
    let form = String::from_utf8(mock.requests.lock().unwrap()[0].body.clone()).unwrap();
    assert_eq!(form, "grant_type=refresh_token&refresh_token=rt-1&scope=s");
    assert!(mock.with_host(|h| h.store_get("k")).unwrap().is_none());
}

#[test]
fn a_challenge_gives_urls_only_on_the_configured_authority() {
    let challenge = |header: &'static str| {
        MockHost::new().with_http(move |_| Ok(answer(401, "{}", &[("www-authenticate", header)])))
    };
    let m = challenge(r#"Bearer authorization_uri="https://login.example/t1", resource_id="r""#);
    let ch = m
        .with_host(|h| Challenge::read(h, "https://fhir/Patient", "tenant"))
        .unwrap();
    assert_eq!(ch.params["resource_id"], "r");
    let u = ch
        .url_on(&["authorization_uri"], "https://login.example", "tenant")
        .unwrap();
    assert_eq!(u.path(), "/t1");
    let e = ch
        .url_on(&["authorization_uri"], "https://login.other", "tenant")
        .unwrap_err();
    assert!(
        e.message().contains("refusing to send credentials there"),
        "{e}"
    );
    let e = ch
        .url_on(&["nope"], "https://login.example", "tenant")
        .unwrap_err();
    assert!(e.message().contains("names no nope"), "{e}");
    let m = MockHost::new().with_http(|_| Ok(answer(200, "{}", &[])));
    let e = m
        .with_host(|h| Challenge::read(h, "https://fhir/Patient", "tenant"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e
        .message()
        .starts_with("tenant: not set, and https://fhir/Patient answered HTTP 200"));
}

#[test]
fn a_templated_issuer_and_every_endpoint_must_be_on_the_authority() {
    let doc = |body: &'static str| {
        MockHost::new()
            .with_http(move |_| Ok(answer(200, body, &[])))
            .with_host(|h| {
                oidc_on_origin(
                    h,
                    "https://a.example/d",
                    "https://a.example",
                    "Entra discovery",
                )
            })
    };
    let (token, _) = doc(
        r#"{"issuer":"https://a.example/{tenantid}/v2.0","token_endpoint":"https://a.example/t"}"#,
    )
    .unwrap();
    assert_eq!(token, "https://a.example/t");
    for (body, bad) in [
        (
            r#"{"issuer":"https://evil.example/x","token_endpoint":"https://a.example/t"}"#,
            "https://evil.example/x",
        ),
        (
            r#"{"issuer":"https://a.example/x","token_endpoint":"https://a.example.evil/t"}"#,
            "https://a.example.evil/t",
        ),
        (
            r#"{"issuer":"https://a.example/x","token_endpoint":"https://a.example/t","authorization_endpoint":"http://a.example/a"}"#,
            "http://a.example/a",
        ),
        (
            r#"{"issuer":"https://a.example/x","token_endpoint":"https://a.example/t","device_authorization_endpoint":"https://a.example:8443/d"}"#,
            "https://a.example:8443/d",
        ),
    ] {
        let e = doc(body).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(
            e.message(),
            format!("Entra discovery https://a.example/d: {bad} is not on the authority https://a.example")
        );
    }
    let e = doc(r#"{"issuer":"https://a.example/x"}"#).unwrap_err();
    assert!(e.message().ends_with("no token_endpoint"), "{e}");
}

#[test]
fn resource_identifiers_compare_as_resources() {
    assert!(same_resource(
        "https://FHIR.example:443/",
        "https://fhir.example"
    ));
    assert!(same_resource("api://App-1/", "api://app-1"));
    assert!(!same_resource(
        "https://fhir.example",
        "https://management.azure.com"
    ));
    assert!(!same_resource(
        "https://fhir.example/a",
        "https://fhir.example/b"
    ));
    assert_eq!(
        origin_of("https://ws.fhir.example/r4/"),
        "https://ws.fhir.example"
    );
    assert_eq!(origin_of("urn:x/"), "urn:x");
}
