//! Canned hostile documents: what an untrusted FHIR server, token server or authority may send.
//!
//! Each function returns the JSON or text a hostile peer answers with; the tests that use them
//! assert that fhirconn refuses, sanitises or confines what it receives.

use serde_json::{json, Value};

/// Text carrying terminal control sequences: clear screen, a fake PASS line in green, a window
/// title (OSC 0), an OSC 52 clipboard write, BEL, and a C1 CSI.
pub const CONTROL_TEXT: &str =
    "evil\x1b[2J\x1b[H\x1b[32mPASS\x1b[0m\x1b]0;pwned\x07\x1b]52;c;cHduZWQ=\x07\x07\u{9b}31m";

/// True when `s` still holds a raw control character that a terminal would interpret
/// (ESC, BEL, other C0 except `\n`/`\t`, DEL, or C1).
pub fn has_raw_control(s: &str) -> bool {
    s.chars().any(|c| {
        (c.is_control() && c != '\n' && c != '\t' && c != '\r')
            || ('\u{80}'..='\u{9f}').contains(&c)
    })
}

/// A CapabilityStatement whose `software` fields carry control sequences.
pub fn capability_with_control_text() -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "software": {"name": CONTROL_TEXT, "version": CONTROL_TEXT},
        "rest": [{"mode": "server"}]
    })
}

/// An OperationOutcome whose diagnostics carry control sequences.
pub fn outcome_with_control_text() -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden", "diagnostics": CONTROL_TEXT}]
    })
}

/// An Entra-style challenge naming a foreign resource (Azure Resource Manager).
pub fn foreign_resource_challenge(authority: &str, tenant: &str) -> String {
    format!(
        "Bearer authorization_uri=\"{authority}/{tenant}/oauth2/authorize\", \
         resource_id=\"https://management.azure.com\""
    )
}

/// A SMART configuration advertising `token_endpoint` (e.g. plain http or another host).
pub fn smart_configuration(token_endpoint: &str) -> Value {
    json!({
        "token_endpoint": token_endpoint,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.rs"],
        "capabilities": ["client-confidential-asymmetric"]
    })
}

/// An OIDC discovery document for `issuer` whose token endpoint is `token_endpoint`.
pub fn oidc_discovery(issuer: &str, token_endpoint: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": token_endpoint,
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"]
    })
}

/// Manifest `type` values that must never become a path.
pub const HOSTILE_EXPORT_TYPES: &[&str] = &[
    "../escaped",
    "/tmp/fhirconn-abs-escape",
    "Patient/../../x",
    "",
    "patient",
    "Pat\u{1b}[2Jient",
    "AVeryLongResourceTypeNameThatGoesOnAndOnAndOnBeyondSixtyFourCharactersXX",
];

/// A Bulk Data manifest with one output entry per `(type, url)`.
pub fn export_manifest(request: &str, outputs: &[(&str, &str)]) -> Value {
    json!({
        "transactionTime": "2026-01-01T00:00:00Z",
        "request": request,
        "requiresAccessToken": true,
        "output": outputs.iter().map(|(t, u)| json!({"type": t, "url": u})).collect::<Vec<_>>(),
        "error": []
    })
}

/// A device authorization response whose `verification_uri` is `uri` (e.g. `--no-sandbox`,
/// `file:///etc/passwd`) and whose `message` carries control sequences.
pub fn device_code_response(uri: &str) -> Value {
    json!({
        "device_code": "hostile-device-code",
        "user_code": "HOSTILE1",
        "verification_uri": uri,
        "expires_in": 900,
        "interval": 1,
        "message": format!("To sign in {CONTROL_TEXT} open {uri}")
    })
}

/// The 453-byte YAML alias bomb of the security review: every level is a complex mapping key
/// holding ten aliases of the level below (10^6-fold expansion), so saphyr's own alias budget,
/// which charges a key as one node, lets it through.
pub fn complex_key_alias_bomb() -> String {
    let mut y = String::from("k0: &k0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..=6 {
        let p = format!("*k{}", i - 1);
        y.push_str(&format!(
            "k{i}: &k{i}\n  ? [{}]\n  : v\n",
            [p.as_str(); 10].join(", ")
        ));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_text_is_detected() {
        assert!(has_raw_control(CONTROL_TEXT));
        assert!(!has_raw_control("plain text\nwith a newline"));
        assert!(has_raw_control("c1 \u{9b} csi"));
    }
}
