//! Per-scheme fixtures: the reference servers a scheme talks to, its good and wrong settings,
//! the secrets that must never be printed, and its scheme-specific case.

mod aws;
mod azure_identity;
mod exec;
mod google;
mod jwt_auth;
mod signed;
mod smart_launch;
mod starters;
mod vendor_hmac;

use crate::Setup;
use fhirconn_testkit::entra::MockEntra;
use fhirconn_testkit::idp::IdentityProvider;
use fhirconn_testkit::{Fault, FhirServer, ServerAuth};
use serde_json::{json, Value};
use starters::Parts;
use std::path::Path;
use std::time::Duration;

/// Schemes with a fixture, in matrix order.
pub const SCHEMES: &[&str] = &[
    "none",
    "basic",
    "bearer",
    "oidc-client-credentials",
    "smart-backend",
    "mtls",
    "azure-ad",
    "aws-sigv4",
    "google-service-account",
    "smart-app-launch",
    "exec",
];

const AUDIENCE: &str = "https://conformance.fhirconn.example/fhir";
const PASSWORD: &str = "CANARY-conf:pässword:42";
const TOKEN: &str = "CANARY-conformance-token-5150";
const SECRET: &str = "CANARY-client:secret%/€";
const AZURE_SECRET: &str = "CANARY-daemon-secret-8231";
/// The token a bearer `token-file` is rotated to by the scheme-specific case.
const ROTATED_TOKEN: &str = "CANARY-rotated-token-6161";

/// Reference servers and settings for one scheme.
pub struct Fixture {
    scheme: String,
    dir: tempfile::TempDir,
    fhir: FhirServer,
    idp: Option<IdentityProvider>,
    entra: Option<MockEntra>,
    healthlake: Option<fhirconn_testkit::sigv4::MockHealthLake>,
    google: Option<fhirconn_testkit::google::MockGoogle>,
    smart: Option<smart_launch::SmartLaunch>,
    hmac: Option<fhirconn_testkit::hmac::HmacServer>,
    good: Value,
    wrong: Option<Value>,
    extra: Value,
    secrets: Vec<String>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Fixture {
    /// Starts the reference servers for `scheme`.
    pub async fn new(scheme: &str, _setup: &Setup) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(err)?;
        let d = dir.path().to_path_buf();
        let mut parts = Parts {
            idp: None,
            entra: None,
            healthlake: None,
            google: None,
            smart: None,
            hmac: None,
            extra: json!({}),
            secrets: Vec::new(),
        };
        let (fhir, good, wrong) = match scheme {
            "none" => starters::none(&d, &mut parts).await?,
            "basic" => starters::basic(&d, &mut parts).await?,
            "bearer" => starters::bearer(&d, &mut parts).await?,
            "oidc-client-credentials" => starters::oidc_client_credentials(&d, &mut parts).await?,
            "smart-backend" => starters::smart_backend(&d, &mut parts).await?,
            "mtls" => starters::mtls(&d, &mut parts).await?,
            "azure-ad" => starters::azure_ad(&d, &mut parts).await?,
            "aws-sigv4" => aws::start(&d, &mut parts).await?,
            "exec" => exec::start(&d, &mut parts).await?,
            "google-service-account" => google::start(&d, &mut parts).await?,
            "smart-app-launch" => smart_launch::start(&d, &mut parts).await?,
            // Not in SCHEMES: the out-of-tree example, in a vendor plugin directory.
            "vendor-hmac" => vendor_hmac::start(&d, &mut parts).await?,
            other => starters::vendor(other, _setup, &d, &mut parts).await?,
        };
        let Parts {
            idp,
            entra,
            healthlake,
            google,
            smart,
            hmac,
            extra,
            mut secrets,
        } = parts;
        // Inline secrets of either settings (the host's rule: the last word of the key names
        // a secret), e.g. a vendor's `api-key`.
        for settings in std::iter::once(&good).chain(wrong.as_ref()) {
            for (k, v) in settings.as_object().into_iter().flatten() {
                let last = k.rsplit(['-', '_']).next().unwrap_or_default();
                let secretish = matches!(
                    last,
                    "password" | "passphrase" | "secret" | "token" | "key" | "assertion"
                );
                if let (true, Some(v)) = (secretish, v.as_str()) {
                    if !secrets.iter().any(|s| s == v) {
                        secrets.push(v.to_string());
                    }
                }
            }
        }
        Ok(Self {
            scheme: scheme.to_string(),
            dir,
            fhir,
            idp,
            entra,
            healthlake,
            google,
            smart,
            hmac,
            good,
            wrong,
            extra,
            secrets,
        })
    }

    /// The credential store the scheme's hosts share (a seeded sign-in), if it needs one.
    pub fn credential_store(
        &self,
    ) -> Option<std::sync::Arc<dyn fhirconn_host::services::CredentialStore>> {
        self.smart.as_ref().map(smart_launch::SmartLaunch::store)
    }

    /// The FHIR base URL.
    pub fn base_url(&self) -> String {
        match (&self.healthlake, &self.hmac) {
            (Some(h), _) => h.base_url(),
            (None, Some(h)) => h.base_url(),
            (None, None) => self.fhir.base_url(),
        }
    }
    /// The directory of the fixture's files (relative paths resolve here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// Host settings the connection needs besides `auth` (e.g. trusted roots).
    pub fn connection_extra(&self) -> Value {
        self.extra.clone()
    }
    /// Working settings.
    pub fn good(&self) -> Value {
        self.good.clone()
    }
    /// Settings the server must refuse (the scheme's `auth` with the good one's secret wrong).
    pub fn wrong(&self) -> Value {
        self.wrong.clone().unwrap_or(Value::Null)
    }
    /// Whether the scheme fetches expiring tokens.
    pub fn issues_tokens(&self) -> bool {
        self.idp.is_some() || self.entra.is_some() || self.google.is_some()
    }
    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        if let Some(p) = &self.idp {
            p.set_token_lifetime(d);
        }
        if let Some(e) = &self.entra {
            e.set_access_token_lifetime(d);
        }
        if let Some(g) = &self.google {
            g.set_token_lifetime(d);
        }
    }
    /// Tokens issued (or token requests, for the Entra mock).
    pub fn tokens_issued(&self) -> u64 {
        self.idp
            .as_ref()
            .map(|p| p.tokens_issued())
            .or_else(|| self.entra.as_ref().map(|e| e.token_requests()))
            .or_else(|| self.google.as_ref().map(|g| g.tokens_issued()))
            .unwrap_or(0)
    }
    /// Revokes every token the FHIR server has seen.
    pub fn revoke_tokens(&self) {
        self.fhir.revoke_presented_tokens();
    }
    /// 401 answers so far.
    pub fn unauthorized(&self) -> u64 {
        self.fhir.unauthorized()
    }
    /// Makes the FHIR server slow (or normal again).
    pub fn set_slow(&self, d: Option<Duration>) {
        self.fhir.set_fault(d.map_or(Fault::None, Fault::Slow));
        if let Some(h) = &self.healthlake {
            h.set_delay(d);
        }
        if let Some(h) = &self.hmac {
            h.set_delay(d);
        }
    }
    /// Secrets in the fixture's settings and files.
    pub fn secrets(&self) -> Vec<String> {
        self.secrets.clone()
    }
    /// User names and client ids of the settings (for `user:secret` forms of the secrets).
    pub fn users(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for settings in std::iter::once(&self.good).chain(self.wrong.as_ref()) {
            for k in ["username", "client-id", "user"] {
                if let Some(v) = settings[k].as_str() {
                    if !out.iter().any(|u| u == v) {
                        out.push(v.to_string());
                    }
                }
            }
        }
        out
    }
    /// Undoes what a case may have changed and not restored (it failed or timed out).
    pub fn reset(&self) {
        self.set_token_lifetime(Duration::from_secs(300));
        self.set_slow(None);
        if let Some(e) = &self.entra {
            self.fhir
                .set_challenge(Some(e.challenge(&origin(&self.base_url()))));
        }
        if self.scheme == "bearer" {
            let _ = write(self.dir(), "token.txt", TOKEN);
            self.fhir.set_auth(ServerAuth::Bearer {
                tokens: vec![TOKEN.into()],
            });
        }
    }
    /// Credentials the FHIR server received: every issued token, and the credential part of
    /// any other `Authorization` (e.g. Basic's base64).
    pub fn issued_tokens(&self) -> Vec<String> {
        let mut out: Vec<String> = self.healthlake.iter().flat_map(aws::signatures).collect();
        out.extend(self.hmac.iter().flat_map(vendor_hmac::signatures));
        for a in self.fhir.distinct_authorizations() {
            let credential = a.split_once(' ').map_or(a.as_str(), |(_, c)| c).trim();
            if !out.iter().any(|t| t == credential) {
                out.push(credential.to_string());
            }
        }
        out
    }

    /// The scheme-specific case of `bearer`: a `token-file` rotated by another process.
    async fn bearer_rotation(&self, setup: &Setup) -> Result<Option<()>, String> {
        // Rotation by another process: the server now accepts only a new token and the
        // `token-file` is replaced (atomically, as a rotating agent would). The next
        // request is answered 401 once, then retried with the new token.
        let host = self.host(setup, &self.good, Value::Null).await?;
        let conn = host.connection("c").map_err(err)?;
        let status = |r: Result<fhirconn_host::transport::Response, fhirconn_host::Error>| {
            r.map(|r| r.status.as_u16()).map_err(err)
        };
        let a = status(conn.get("Patient/1").await)?;
        self.fhir.set_auth(ServerAuth::Bearer {
            tokens: vec![ROTATED_TOKEN.into()],
        });
        write(self.dir(), "token.txt.new", &format!("{ROTATED_TOKEN}\n"))?;
        std::fs::rename(
            self.dir().join("token.txt.new"),
            self.dir().join("token.txt"),
        )
        .map_err(err)?;
        let unauthorized = self.unauthorized();
        let b = status(conn.get("Patient/1").await)?;
        let rejected = self.unauthorized() - unauthorized;
        let last = self
            .fhir
            .authorizations()
            .pop()
            .flatten()
            .unwrap_or_default();
        self.reset();
        let sent_new = last == format!("Bearer {ROTATED_TOKEN}");
        if (a, b, rejected) == (200, 200, 1) && sent_new {
            Ok(Some(()))
        } else {
            Err(format!(
                "after the token-file was rotated: statuses {a}, {b}; {rejected} 401(s); \
                 the last request {} the new token",
                if sent_new { "carried" } else { "did not carry" }
            ))
        }
    }

    /// The case this scheme's specification adds.
    pub async fn scheme_specific(&self, setup: &Setup) -> Result<Option<()>, String> {
        let expect_failure =
            |r: fhirconn_host::TestReport, needle: &str| -> Result<Option<()>, String> {
                let text = r
                    .failure
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if text.contains(needle) {
                    Ok(Some(()))
                } else {
                    Err(format!(
                        "expected '{needle}' in: {}",
                        if r.ok { "passed" } else { &text }
                    ))
                }
            };
        match self.scheme.as_str() {
            // The reference provider verifies assertions by RFC 7523 / OIDC Core §9 / SMART
            // (alg, kid, typ, iss, sub, aud = the token URL exactly, exp <= 5 min, jti replay).
            "smart-backend" => jwt_auth::smart(self, setup).await,
            // Secret methods, client_secret_jwt, private_key_jwt (every alg), jwt-bearer grant.
            "oidc-client-credentials" => jwt_auth::oidc(self, setup).await,
            "mtls" => {
                let expired = json!({"scheme": "mtls", "certificate-file": "expired.crt", "private-key-file": "expired.key"});
                match self.host(setup, &expired, Value::Null).await {
                    Err(e) if e.contains("expired on") => Ok(Some(())),
                    Err(e) => Err(format!("unexpected error: {e}")),
                    Ok(_) => Err("an expired client certificate was accepted".into()),
                }
            }
            "azure-ad" => {
                // The tenant was discovered from the challenge in `passes`; a challenge that
                // names another authority host must not receive the secret.
                self.fhir.set_challenge(Some(format!(
                    "Bearer authorization_uri=\"https://login.evil.example/t\", resource_id=\"{}\"",
                    origin(&self.base_url())
                )));
                let r = self.test_once(setup, &self.good, Value::Null).await;
                self.reset();
                expect_failure(r?, "refusing to send credentials there")?;
                // Without a person or a secret: workload and managed identity.
                azure_identity::workload_rereads_rotated_file(self, setup).await?;
                azure_identity::managed_sends_metadata_and_no_secret(self, setup)
                    .await
                    .map(Some)
            }
            "bearer" => self.bearer_rotation(setup).await,
            "aws-sigv4" => aws::case(self, setup).await,
            "vendor-hmac" => vendor_hmac::case(self, setup).await,
            "google-service-account" => google::assertion_claims(self, setup).await,
            "smart-app-launch" => smart_launch::case(self, setup).await,
            "basic" => {
                // A UTF-8 password with colons (the canary) passed in `passes`; a username
                // with a colon cannot be sent (RFC 7617 §2) and is refused.
                let bad = json!({"scheme": "basic", "username": "a:b", "password": "x"});
                match self.host(setup, &bad, Value::Null).await {
                    Err(e) if e.contains("username") => Ok(Some(())),
                    other => Err(format!(
                        "expected a username error, got {:?}",
                        other.map(|_| ())
                    )),
                }
            }
            _ => Ok(None),
        }
    }
}

/// A vendor scheme's `<scheme>.conformance.json`, found next to its library in a plugin
/// directory: which reference server it talks to and its good and wrong settings, with
/// placeholders (`${APIKEY_TOKEN_URL}`, `${TOKEN_URL}`, `${ISSUER}`, `${CLIENT_ID}`,
/// `${SECRET_FILE}`, `${SECRET}`) filled in by the suite.
fn descriptor(scheme: &str, setup: &Setup) -> Result<(Value, std::path::PathBuf), String> {
    for dir in &setup.plugin_dirs {
        let path = dir.join(format!("{scheme}.conformance.json"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let v = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok((v, path));
        }
    }
    Err(format!(
        "no conformance fixture for scheme '{scheme}': built-in fixtures exist for {}, and no \
         {scheme}.conformance.json was found in the plugin directories",
        SCHEMES.join(", ")
    ))
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> String {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => url[..after + i].to_string(),
        None => url.to_string(),
    }
}

/// The second line of a PEM file (base64 key material), as a canary.
fn private_body(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(err)?;
    text.lines()
        .nth(1)
        .map(String::from)
        .ok_or_else(|| format!("{}: empty", path.display()))
}
