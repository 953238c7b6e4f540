//! fhirconn scheme `aws-sigv4`: AWS Signature Version 4 on every request (AWS HealthLake and any
//! SigV4-protected endpoint), signed with the official `aws-sigv4` crate.
//!
//! Settings: `region`, `service` (default `healthlake`), `sign-content-sha256` (S3-style
//! `x-amz-content-sha256`), and credentials from exactly one source: `access-key-id` +
//! `secret-access-key` (+ `session-token`), each inline / `-file` / `-env`; `profile` (the shared
//! `~/.aws/credentials` and `~/.aws/config`, `credential_process` run through the host); or
//! `from-environment: true` (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
//!
//! `authorize` resolves the keys, keeps them for `sign_request` and returns no headers, with the
//! temporary credentials' expiry (so the host renews them before it); `sign_request` signs one
//! request with the host's body hash and clock. The secret key, the session token and the
//! signature never appear in `Debug`, logs or errors; returned secrets are marked sensitive.

#![forbid(unsafe_code)]

mod profile;

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use fhirconn_sdk::settings::SecretSetting;
use fhirconn_sdk::signing::{self, Signer, SigningScheme};
use fhirconn_sdk::wire::{SignAnswer, SignRequest, WireHeader};
use fhirconn_sdk::{schemars, serde, Credentials, Error, ExposeSecret, Host, Result};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

/// The `aws-sigv4` scheme.
#[derive(Debug, Default)]
pub struct AwsSigV4;

fn healthlake() -> String {
    "healthlake".into()
}

/// AWS Signature Version 4
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
pub struct AwsSettings {
    /// AWS region of the endpoint, e.g. us-east-1
    #[schemars(regex(pattern = r"^[a-z0-9-]+$"))]
    region: String,
    /// signing name of the service (default healthlake)
    #[serde(default = "healthlake")]
    #[schemars(regex(pattern = r"^[a-z0-9-]+$"))]
    service: String,
    /// access key id (with secret-access-key)
    access_key_id: Option<SecretSetting>,
    /// secret access key (with access-key-id)
    secret_access_key: Option<SecretSetting>,
    /// session token of temporary credentials (with access-key-id)
    session_token: Option<SecretSetting>,
    /// a profile of the shared AWS config and credentials files
    #[schemars(length(min = 1))]
    profile: Option<String>,
    /// read AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN
    #[serde(default)]
    from_environment: bool,
    /// add x-amz-content-sha256 (services such as S3 require it)
    #[serde(default)]
    sign_content_sha256: bool,
}

/// Resolved AWS credentials (their `Debug` shows the access key id and expiry only).
pub(crate) type Keys = aws_credential_types::Credentials;

/// Where a connection's credentials come from.
#[derive(Debug)]
enum Source {
    Static(Keys),
    Profile(String),
    Environment,
}

/// A configured `aws-sigv4` connection: the credentials resolved by the last `authorize`.
#[derive(Debug)]
pub struct AwsConnection {
    region: String,
    service: String,
    content_sha256: bool,
    source: Source,
    keys: Mutex<Option<Keys>>,
}

impl SigningScheme for AwsSigV4 {
    const NAME: &'static str = "aws-sigv4";
    const SUMMARY: &'static str = "AWS Signature Version 4 on every request (AWS HealthLake), keys from settings, a profile or the environment";
    type Settings = AwsSettings;
    type Signer = AwsConnection;

    fn signer(&self, settings: AwsSettings, _host: &Host<'_>) -> Result<AwsConnection> {
        AwsConnection::new(settings)
    }
}

/// The one credential source the settings name.
fn source(s: &AwsSettings) -> Result<Source> {
    let given =
        s.access_key_id.is_some() || s.secret_access_key.is_some() || s.session_token.is_some();
    let named: Vec<&str> = [(given, "access-key-id"), (s.profile.is_some(), "profile")]
        .into_iter()
        .chain([(s.from_environment, "from-environment")])
        .filter_map(|(given, name)| given.then_some(name))
        .collect();
    if named.len() != 1 {
        let found = Some(named.join(" and ")).filter(|f| !f.is_empty());
        let found = found.unwrap_or_else(|| "none".into());
        return Err(Error::config(format!("give exactly one credential source: access-key-id with secret-access-key, profile, or from-environment: true (found {found})")));
    }
    let apart = Error::config("access-key-id and secret-access-key go together");
    Ok(match (&s.profile, &s.access_key_id, &s.secret_access_key) {
        (Some(p), _, _) => Source::Profile(p.clone()),
        (None, Some(id), Some(secret)) => Source::Static(keys(
            id.secret().expose_secret(),
            secret.secret().expose_secret(),
            s.session_token.as_ref().map(|t| t.secret().expose_secret()),
            "access-key-id",
        )?),
        _ if s.from_environment => Source::Environment,
        _ => return Err(apart),
    })
}

/// Keys without an expiry; `from` names where the access key id came from (for errors).
pub(crate) fn keys(id: &str, secret: &str, token: Option<&str>, from: &str) -> Result<Keys> {
    let id = id.trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        let e = format!("{from}: an access key id is letters and digits only");
        return Err(Error::config(e));
    }
    let token = token.map(str::to_string);
    Ok(Keys::new(id, secret, token, None, "fhirconn"))
}

/// Keys from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optional) `AWS_SESSION_TOKEN`.
fn from_environment(host: &Host<'_>) -> Result<Keys> {
    let var = |name: &str| host.env_var(name).filter(|v| !v.is_empty());
    let missing = |name: &str| Error::config(format!("from-environment: {name} is not set"));
    let id = var("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
    let secret = var("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?;
    let token = var("AWS_SESSION_TOKEN");
    keys(&id, &secret, token.as_deref(), "AWS_ACCESS_KEY_ID")
}

impl AwsConnection {
    fn new(s: AwsSettings) -> Result<Self> {
        let source = source(&s)?;
        let (region, service, content_sha256) = (s.region, s.service, s.sign_content_sha256);
        let keys = Mutex::new(None);
        Ok(AwsConnection {
            region,
            service,
            content_sha256,
            source,
            keys,
        })
    }

    /// Resolves the keys from the source (a profile's process runs again) and keeps them.
    fn resolve(&self, host: &Host<'_>) -> Result<Keys> {
        let keys = match &self.source {
            Source::Static(k) => k.clone(),
            Source::Environment => from_environment(host)?,
            Source::Profile(name) => profile::load(name, host)?,
        };
        host.redact_secret(keys.secret_access_key());
        if let Some(t) = keys.session_token() {
            host.redact_secret(t);
        }
        *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some(keys.clone());
        Ok(keys)
    }
}

impl Signer for AwsConnection {
    fn authorize(&self, host: &Host<'_>) -> Result<Credentials> {
        let keys = self.resolve(host)?;
        Ok(match keys.expiry() {
            Some(at) => Credentials::new().expires_at(at),
            None => Credentials::new(),
        })
    }

    /// Runs on the caller's thread, where the host answers no files, HTTP or processes: it
    /// signs with the keys the last `authorize` resolved (the host renews them before expiry).
    fn sign(&self, request: &SignRequest, _host: &Host<'_>) -> Result<SignAnswer> {
        let at = UNIX_EPOCH + Duration::from_secs(request.unix_time);
        match self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(k) if k.expiry().is_none_or(|e| e > at) => sign_with(&k, self, request),
            Some(_) => Err(Error::rejected("the temporary AWS credentials expired")),
            None => Err(Error::internal("sign-request before authorize")),
        }
    }
}

/// Signs `request` with `keys` at its `unix_time` through `aws_sigv4::http_request::sign`.
fn sign_with(keys: &Keys, c: &AwsConnection, request: &SignRequest) -> Result<SignAnswer> {
    let bad = |what: &str| Error::protocol(format!("sign-request: {what}"));
    signing::request_target(request)?;
    let identity = keys.clone().into();
    let mut signing = SigningSettings::default();
    if c.content_sha256 {
        signing.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&c.region)
        .name(&c.service)
        .time(UNIX_EPOCH + Duration::from_secs(request.unix_time))
        .settings(signing)
        .build()
        .map_err(|_| Error::internal("sign-request: incomplete signing parameters"))?
        .into();
    let headers = request.headers.iter().map(|h| (&*h.name, &*h.value));
    let body = SignableBody::Precomputed(request.body_sha256.clone());
    let signable = SignableRequest::new(&request.method, request.url.as_str(), headers, body)
        .map_err(|e| bad(&e.to_string()))?;
    let signed = sign(signable, &params).map_err(|e| bad(&e.to_string()))?;
    let (instructions, _signature) = signed.into_parts();
    let headers = instructions.headers().map(|(name, value)| match name {
        "authorization" | "x-amz-security-token" => WireHeader::sensitive(name, value),
        _ => WireHeader::new(name, value),
    });
    let headers = headers.collect();
    Ok(SignAnswer { headers })
}

fhirconn_sdk::export_schemes!(AwsSigV4);

#[cfg(test)]
mod tests;
