//! Discovery documents: OpenID Connect (`/.well-known/openid-configuration`, with the exact
//! issuer check of OpenID Connect Discovery §4.3) and SMART (`/.well-known/smart-configuration`),
//! over one `GET JSON → 2xx → parse` helper. Cache the result per connection in a
//! [`crate::Memo`].

use super::error_response;
use crate::host::{Host, HttpRequest};
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The default OpenID Connect discovery path.
pub const OIDC_PATH: &str = "/.well-known/openid-configuration";
/// The SMART App Launch discovery path below the FHIR base URL.
pub const SMART_PATH: &str = "/.well-known/smart-configuration";

/// GETs `url` as JSON and parses it as `T`. Errors start with `{what} {url}` and name the
/// HTTP status (with the OAuth error, if the body is one) or the parse failure.
pub fn get_json<T: DeserializeOwned>(host: &Host<'_>, url: &str, what: &str) -> Result<T> {
    let resp = host
        .http(HttpRequest::new("GET", url).header("Accept", "application/json"))
        .map_err(|e| e.context(format!("{what} {url}")))?;
    if !resp.is_success() {
        let oauth = error_response(&resp)
            .map(|e| format!(": {}: {}", e.error, e.description.unwrap_or_default()))
            .unwrap_or_default();
        return Err(Error::protocol(format!(
            "{what} {url}: HTTP {}{oauth}",
            resp.status
        )));
    }
    serde_json::from_slice(&resp.body).map_err(|e| {
        Error::protocol(format!(
            "{what} {url}: not the expected JSON document ({e})"
        ))
    })
}

/// The parts of an OpenID provider configuration the token schemes use.
#[derive(Debug, Clone, Deserialize)]
pub struct OidcConfiguration {
    /// `issuer`.
    pub issuer: String,
    /// `token_endpoint`.
    pub token_endpoint: Option<String>,
    /// `authorization_endpoint`.
    pub authorization_endpoint: Option<String>,
    /// `device_authorization_endpoint` (RFC 8628 §4).
    pub device_authorization_endpoint: Option<String>,
    /// `token_endpoint_auth_methods_supported`.
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Reads `discovery_url` and checks that the document names exactly `issuer` (OpenID Connect
/// Discovery §4.3: a lying document could otherwise send credentials elsewhere).
pub fn oidc(host: &Host<'_>, issuer: &str, discovery_url: &str) -> Result<OidcConfiguration> {
    let doc: OidcConfiguration = get_json(host, discovery_url, "OIDC discovery")?;
    if doc.issuer != issuer {
        return Err(Error::protocol(format!(
            "OIDC discovery {discovery_url}: the document names issuer '{}', not the configured \
             '{issuer}' (OpenID Connect Discovery §4.3 requires them to be identical)",
            doc.issuer
        )));
    }
    Ok(doc)
}

/// The parts of a SMART configuration the token schemes use.
#[derive(Debug, Clone, Deserialize)]
pub struct SmartConfiguration {
    /// Where the document was read from (for messages).
    #[serde(skip)]
    pub url: String,
    /// `token_endpoint`, resolved against the FHIR base URL by [`smart`].
    pub token_endpoint: String,
    /// `authorization_endpoint` (required by SMART App Launch), resolved like the token
    /// endpoint.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// `grant_types_supported`.
    pub grant_types_supported: Option<Vec<String>>,
    /// `token_endpoint_auth_methods_supported`.
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// `token_endpoint_auth_signing_alg_values_supported`.
    pub token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
}

impl SmartConfiguration {
    /// Checks that the server does not rule out what this client does: the grant type, the
    /// client authentication method and (if any) the signing algorithm. A list the server does
    /// not publish rules nothing out.
    pub fn require(&self, grant: &str, auth_method: &str, alg: Option<&str>) -> Result<()> {
        let checks = [
            (
                "grant_types_supported",
                &self.grant_types_supported,
                Some(grant),
            ),
            (
                "token_endpoint_auth_methods_supported",
                &self.token_endpoint_auth_methods_supported,
                Some(auth_method),
            ),
            (
                "token_endpoint_auth_signing_alg_values_supported",
                &self.token_endpoint_auth_signing_alg_values_supported,
                alg,
            ),
        ];
        for (field, list, wanted) in checks {
            if let Some(wanted) = wanted.filter(|w| excludes(list, w)) {
                return Err(Error::protocol(format!(
                    "SMART discovery {}: {field} does not include {wanted}",
                    self.url
                )));
            }
        }
        Ok(())
    }
}

/// Whether an advertised list rules `wanted` out: it is present and does not contain it (an
/// absent list rules nothing out).
pub fn excludes(list: &Option<Vec<String>>, wanted: &str) -> bool {
    list.as_ref()
        .is_some_and(|l| !l.iter().any(|v| v == wanted))
}

/// Reads `{base_url}/.well-known/smart-configuration`; a relative `token_endpoint` is resolved
/// against the base URL.
pub fn smart(host: &Host<'_>, base_url: &str) -> Result<SmartConfiguration> {
    let url = format!("{}{SMART_PATH}", base_url.trim_end_matches('/'));
    let mut doc: SmartConfiguration = get_json(host, &url, "SMART discovery")?;
    doc.token_endpoint = resolve_url(base_url, &doc.token_endpoint)?;
    if let Some(a) = doc.authorization_endpoint.take() {
        doc.authorization_endpoint = Some(resolve_url(base_url, &a)?);
    }
    doc.url = url;
    Ok(doc)
}

/// Whether two URLs name the same host (scheme and port aside, case-insensitive). A token
/// endpoint discovered on another host than the FHIR server deserves a warning.
pub fn same_host(a: &str, b: &str) -> bool {
    let host = |u: &str| {
        url::Url::parse(u)
            .ok()?
            .host_str()
            .map(str::to_ascii_lowercase)
    };
    host(a).is_some() && host(a) == host(b)
}

/// Resolves `reference` (absolute or relative) against a base URL (which gets a trailing `/`,
/// as a FHIR base is a directory).
pub fn resolve_url(base: &str, reference: &str) -> Result<String> {
    let base = url::Url::parse(&format!("{}/", base.trim_end_matches('/')))
        .map_err(|e| Error::config(format!("base URL '{base}': {e}")))?;
    base.join(reference)
        .map(String::from)
        .map_err(|e| Error::protocol(format!("'{reference}' is not a valid URL ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::tests::json;
    use crate::testing::MockHost;
    use crate::ErrorKind;

    fn mock() -> MockHost {
        MockHost::new().with_http(|req| match req.url.as_str() {
            "https://idp/realm/.well-known/openid-configuration" => Ok(json(
                200,
                r#"{"issuer":"https://idp/realm","token_endpoint":"https://idp/realm/token"}"#,
            )),
            "https://fhir/r4/.well-known/smart-configuration" => Ok(json(
                200,
                r#"{"token_endpoint":"auth/token","grant_types_supported":["client_credentials"]}"#,
            )),
            "https://idp/entra" => Ok(json(
                400,
                r#"{"error":"invalid_tenant","error_description":"AADSTS90002"}"#,
            )),
            "https://idp/html" => Ok(json(200, "<html>")),
            "https://idp/down" => Err("connection refused".into()),
            _ => Ok(json(404, "{}")),
        })
    }

    #[test]
    fn oidc_discovery_requires_the_identical_issuer() {
        let mock = mock();
        mock.with_host(|h| {
            let url = "https://idp/realm/.well-known/openid-configuration";
            let doc = oidc(h, "https://idp/realm", url).unwrap();
            assert_eq!(
                doc.token_endpoint.as_deref(),
                Some("https://idp/realm/token")
            );
            let e = oidc(h, "https://idp/realm/", url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(
                e.message().contains(
                    "names issuer 'https://idp/realm', not the configured 'https://idp/realm/'"
                ),
                "{e}"
            );
        });
    }

    #[test]
    fn smart_discovery_resolves_a_relative_endpoint_and_reads_the_lists() {
        let mock = mock();
        let doc = mock.with_host(|h| smart(h, "https://fhir/r4/")).unwrap();
        assert_eq!(doc.token_endpoint, "https://fhir/r4/auth/token");
        assert!(!excludes(&doc.grant_types_supported, "client_credentials"));
        assert!(excludes(&doc.grant_types_supported, "authorization_code"));
        assert!(!excludes(
            &doc.token_endpoint_auth_methods_supported,
            "private_key_jwt"
        ));
        doc.require("client_credentials", "private_key_jwt", Some("ES384"))
            .unwrap();
        let e = doc
            .require("authorization_code", "private_key_jwt", None)
            .unwrap_err();
        assert_eq!(
            e.message(),
            "SMART discovery https://fhir/r4/.well-known/smart-configuration: \
             grant_types_supported does not include authorization_code"
        );
    }

    #[test]
    fn same_host_ignores_scheme_port_and_case_only() {
        assert!(same_host(
            "https://Fhir.example:8443/t",
            "http://fhir.example/r4"
        ));
        assert!(!same_host(
            "https://auth.example/t",
            "https://fhir.example/r4"
        ));
        assert!(!same_host("not a url", "not a url"));
    }

    #[test]
    fn get_json_names_what_where_and_why() {
        let mock = mock();
        mock.with_host(|h| {
            let e = get_json::<serde_json::Value>(h, "https://idp/nothing", "SMART discovery")
                .unwrap_err();
            assert_eq!(e.message(), "SMART discovery https://idp/nothing: HTTP 404");
            let e = get_json::<serde_json::Value>(h, "https://idp/entra", "Entra discovery")
                .unwrap_err();
            assert_eq!(
                e.message(),
                "Entra discovery https://idp/entra: HTTP 400: invalid_tenant: AADSTS90002"
            );
            let e =
                get_json::<OidcConfiguration>(h, "https://idp/html", "OIDC discovery").unwrap_err();
            assert!(
                e.message().starts_with(
                    "OIDC discovery https://idp/html: not the expected JSON document ("
                ),
                "{e}"
            );
            let e =
                get_json::<serde_json::Value>(h, "https://idp/down", "OIDC discovery").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Network);
            assert_eq!(
                e.message(),
                "OIDC discovery https://idp/down: connection refused"
            );
        });
    }
}
