//! fhirconn scheme `azure-ad`: Microsoft Entra ID (Azure AD) organizational sign-in for Azure
//! API for FHIR / Azure Health Data Services, as Power BI's FHIR connector does it: the
//! `{audience}/user_impersonation` scope for people (device code, RFC 8628, or auth code with
//! PKCE through a loopback redirect, RFC 8252), refresh tokens kept in the host's credential
//! store, and `{audience}/.default` with a client secret for daemons.
//!
//! Settings: `client-id`; `tenant` (optional: discovered from the FHIR server's 401 challenge
//! `authorization_uri`); `authority-host` (default `https://login.microsoftonline.com`; a
//! discovered authority on another host is refused); `audience` (default: the origin of the
//! base URL); `flow`: `device-code` (default), `auth-code`, `client-credentials` (with
//! `client-secret`, `-file` or `-env`), `managed-identity` or `workload-identity` (module
//! [`identity`]).
//!
//! **The audience comes from configuration, never from the server.** A FHIR server's challenge
//! may name a `resource_id`; it is only compared with the configured (or default) audience, and
//! a mismatch is an error naming both, before any token request. Otherwise a hostile server
//! could name `https://management.azure.com` and receive an Azure Resource Manager token.
//! A stored refresh token is bound to the authority, tenant, client id and audience it was
//! issued for, and used only when all four match.
//!
//! No `resource` parameter is ever sent: the v2.0 endpoints reject it.

#![forbid(unsafe_code)]

use fhirconn_sdk::flows::{self, AuthorizationRequest, Challenge, StoredSignIn};
use fhirconn_sdk::oauth::{endpoint_url, ClientAuth, TokenRequest};
use fhirconn_sdk::serde_json::{json, Value};
use fhirconn_sdk::settings::{self, SecretSetting};
use fhirconn_sdk::{
    schemars, serde, AuthRequest, Connection, ConnectionInfo, Credentials, Error, Host, Memo,
    Result, Scheme, SecretString,
};

/// Entra's public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Where the refresh token is kept in the host's credential store (per connection).
const REFRESH_KEY: &str = "azure-ad/refresh-token";

/// The `azure-ad` scheme.
#[derive(Debug, Default)]
pub struct AzureAd;

/// How people (or a daemon) sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde", rename_all = "kebab-case")]
#[schemars(crate = "fhirconn_sdk::schemars")]
enum Flow {
    #[default]
    DeviceCode,
    AuthCode,
    ClientCredentials,
    ManagedIdentity,
    WorkloadIdentity,
}

/// Microsoft Entra ID (Azure AD)
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(crate = "fhirconn_sdk::serde")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(crate = "fhirconn_sdk::schemars")]
struct Settings {
    /// application (client) id; workload-identity: default AZURE_CLIENT_ID; managed-identity: a user-assigned identity's client id
    #[schemars(length(min = 1))]
    client_id: Option<String>,
    /// managed-identity: a user-assigned identity's object (principal) id
    #[schemars(length(min = 1))]
    object_id: Option<String>,
    /// managed-identity: a user-assigned identity's Azure resource id
    #[schemars(length(min = 1))]
    msi_res_id: Option<String>,
    /// workload-identity: the federated token file, read for every token (default AZURE_FEDERATED_TOKEN_FILE)
    #[schemars(length(min = 1))]
    federated_token_file: Option<String>,
    /// tenant id or domain; default: from the FHIR server's 401 challenge
    #[schemars(length(min = 1))]
    tenant: Option<String>,
    /// Entra's host (default https://login.microsoftonline.com)
    #[schemars(url)]
    authority_host: Option<String>,
    /// the FHIR service's audience; default: the origin of base-url (a challenge's resource_id must match it)
    #[schemars(length(min = 1))]
    audience: Option<String>,
    #[serde(default)]
    flow: Flow,
    /// client secret (flow: client-credentials)
    client_secret: Option<SecretSetting>,
}

/// Endpoints of the resolved authority.
#[derive(Debug, Clone)]
struct Authority {
    tenant: String,
    audience: String,
    token_endpoint: String,
    device_endpoint: Option<String>,
    authorize_endpoint: Option<String>,
}

/// A configured `azure-ad` connection. (`Debug` shows the secret as `[REDACTED]`.)
#[derive(Debug)]
pub struct AzureConnection {
    client_id: String,
    tenant: Option<String>,
    authority_host: url::Url,
    /// The audience, and where it came from (for messages).
    audience: (String, &'static str),
    base_url: String,
    flow: Flow,
    secret: Option<SecretString>,
    identity: Option<identity::Identity>,
    resolved: Memo<Authority>,
}

/// The audience as Azure FHIR services expect it: the URL without a trailing slash.
pub fn normalize_audience(a: &str) -> String {
    a.trim_end_matches('/').to_string()
}

impl Scheme for AzureAd {
    fn name(&self) -> &str {
        "azure-ad"
    }

    fn summary(&self) -> &str {
        "Microsoft Entra ID (Azure AD): user_impersonation by device code or auth code + PKCE; a service principal, managed identity or workload identity"
    }

    fn config_schema(&self) -> Value {
        settings::schema::<Settings>()
    }

    fn configure(
        &self,
        connection: &ConnectionInfo,
        settings: Value,
        host: &Host<'_>,
    ) -> Result<Box<dyn Connection>> {
        let mut s: Settings = settings::parse(settings, host)?;
        let identity = identity::configure(&mut s, host)?;
        let secret = s.client_secret.map(SecretSetting::into_secret);
        if (s.flow == Flow::ClientCredentials) != secret.is_some() {
            return Err(Error::config(match secret {
                None => "flow client-credentials needs client-secret, client-secret-file or client-secret-env",
                Some(_) => "client-secret only applies to flow: client-credentials (people sign in with a public client)",
            }));
        }
        let authority = s
            .authority_host
            .as_deref()
            .unwrap_or(DEFAULT_AUTHORITY_HOST);
        let authority_host = endpoint_url("authority-host", authority, host)?;
        if s.tenant
            .as_deref()
            .is_some_and(|t| t.contains(['/', '?', '#']))
        {
            return Err(Error::config("tenant: a tenant id or domain, without '/'"));
        }
        let client_id = match (s.client_id, s.flow) {
            (_, Flow::ManagedIdentity) => String::new(),
            (Some(id), _) => id,
            (None, Flow::WorkloadIdentity) => {
                return Err(Error::config(
                    "flow workload-identity needs client-id (or AZURE_CLIENT_ID)",
                ))
            }
            (None, _) => return Err(Error::config("client-id: required")),
        };
        Ok(Box::new(AzureConnection {
            client_id,
            tenant: s.tenant,
            authority_host,
            audience: match s.audience {
                Some(a) => (normalize_audience(&a), "the audience setting"),
                None => (
                    flows::origin_of(&connection.base_url),
                    "the origin of base-url",
                ),
            },
            base_url: connection.base_url.clone(),
            flow: s.flow,
            secret,
            identity,
            resolved: Memo::new(),
        }))
    }
}

impl AzureConnection {
    fn origin(&self) -> String {
        self.authority_host.origin().ascii_serialization()
    }

    /// The tenant: configured, or read from the FHIR server's 401 challenge, whose
    /// `resource_id` (if any) must be this connection's audience.
    fn tenant(&self, host: &Host<'_>) -> Result<String> {
        if let Some(t) = &self.tenant {
            return Ok(t.clone());
        }
        let probe = format!("{}/Patient?_count=1", self.base_url.trim_end_matches('/'));
        let ch = Challenge::read(host, &probe, "tenant")?;
        let names = ["authorization_uri", "authorization"];
        let uri = ch.url_on(&names, &self.origin(), "tenant")?;
        let tenant = uri
            .path_segments()
            .and_then(|mut s| s.find(|seg| !seg.is_empty()))
            .map(String::from)
            .ok_or_else(|| Error::protocol(format!("authorization_uri '{uri}' names no tenant")))?;
        let (audience, from) = &self.audience;
        if let Some(resource) = ch
            .params
            .get("resource_id")
            .filter(|r| !flows::same_resource(r, audience))
        {
            return Err(Error::config(format!(
                "the FHIR server's challenge names the audience '{resource}', but this \
                 connection's audience is '{audience}' ({from}); refusing to request a token for \
                 another resource. Set 'audience' if the server's value is right"
            )));
        }
        host.debug(&format!(
            "discovered tenant {tenant} for audience {audience}"
        ));
        Ok(tenant)
    }

    fn authority(&self, host: &Host<'_>) -> Result<Authority> {
        self.resolved.get_or_try_init(|| self.resolve(host))
    }

    /// Tenant and audience, then Entra's v2.0 discovery document. Entra's issuer for
    /// `common`/`organizations` is a `{tenantid}` template, so the issuer and every endpoint are
    /// checked against the authority host rather than for equality (design notes: Azure).
    fn resolve(&self, host: &Host<'_>) -> Result<Authority> {
        let tenant = self.tenant(host)?;
        let audience = self.audience.0.clone();
        let doc_url = format!(
            "{}/{tenant}/v2.0/.well-known/openid-configuration",
            self.origin()
        );
        let (token_endpoint, meta) =
            flows::oidc_on_origin(host, &doc_url, &self.origin(), "Entra discovery")?;
        Ok(Authority {
            tenant,
            audience,
            token_endpoint,
            device_endpoint: meta.device_authorization_endpoint,
            authorize_endpoint: meta.authorization_endpoint,
        })
    }

    fn delegated_scope(a: &Authority) -> String {
        format!("{}/user_impersonation offline_access", a.audience)
    }

    /// The stored sign-in of this authority, tenant, client id and audience: a refresh token
    /// stored for anything else is never sent.
    fn sign_in(&self, a: &Authority) -> StoredSignIn<'static> {
        let binding = json!({"authority": self.origin(), "tenant": a.tenant,
            "client_id": self.client_id, "audience": a.audience});
        StoredSignIn::new(REFRESH_KEY, binding)
    }

    /// A token request from this client (a public client unless it has a secret).
    fn request(&self, a: &Authority) -> TokenRequest {
        TokenRequest::new(&a.token_endpoint).client_id(&self.client_id)
    }

    fn device_code(&self, a: &Authority, host: &Host<'_>) -> Result<Credentials> {
        let endpoint = a.device_endpoint.as_deref().ok_or_else(|| {
            Error::protocol(
                "the authority advertises no device_authorization_endpoint; use flow: auth-code",
            )
        })?;
        let scope = Self::delegated_scope(a);
        let resp = flows::device_code(host, endpoint, &self.client_id, &scope, &self.request(a))?;
        self.sign_in(a).accept(resp, host)
    }

    fn auth_code(&self, a: &Authority, host: &Host<'_>) -> Result<Credentials> {
        let scope = Self::delegated_scope(a);
        let endpoint = a
            .authorize_endpoint
            .as_deref()
            .ok_or_else(|| Error::protocol("the authority advertises no authorization_endpoint"))?;
        let code = flows::authorization_code(
            host,
            &AuthorizationRequest {
                endpoint,
                client_id: &self.client_id,
                scope: &scope,
                params: Vec::new(),
                message: "Sign in to Microsoft Entra in your browser:".into(),
                redirect_uri: None,
            },
        )?;
        let resp = code
            .token_request(self.request(a).scope(&scope))
            .send(host)?;
        self.sign_in(a).accept(resp, host)
    }

    /// A token for the application itself (`{audience}/.default`): a service principal's
    /// secret, or a workload identity's federated token as the client assertion.
    fn app_token(&self, a: &Authority, host: &Host<'_>) -> Result<Credentials> {
        let auth = match (&self.identity, &self.secret) {
            (Some(identity::Identity::Federated(file)), _) => ClientAuth::PrivateKeyJwt(
                flows::federated_assertion(host, "federated-token-file", file)?,
            ),
            (_, Some(secret)) => ClientAuth::SecretPost(secret.clone()),
            _ => return Err(Error::internal("no client secret")),
        };
        let request = self
            .request(a)
            .grant("client_credentials")
            .client_auth(auth);
        let scope = format!("{}/.default", a.audience);
        Ok(request.scope(&scope).send(host)?.credentials)
    }
}

impl Connection for AzureConnection {
    /// Tokens of an application (a service principal's client credentials, a workload
    /// identity) and of a user-assigned managed identity belong to that one identity on every
    /// process that names it: a fleet may share them, keyed by what names it (client id,
    /// tenant and authority may come from the environment; a tenant from the challenge comes
    /// from base-url, which is in the settings). A person's sign-in and a system-assigned
    /// managed identity (each machine its own) are never shared.
    fn share_key(&self) -> Option<String> {
        let who = match (self.flow, &self.identity) {
            (Flow::ClientCredentials | Flow::WorkloadIdentity, _) => self.client_id.clone(),
            (_, Some(identity::Identity::Managed(_, Some((i, id))))) => format!("mi {i} {id}"),
            _ => return None,
        };
        let tenant = self.tenant.as_deref().unwrap_or("-");
        let (flow, origin, audience) = (self.flow, self.origin(), &self.audience.0);
        Some(format!("{flow:?} {who}\n{origin}\n{tenant}\n{audience}"))
    }

    fn authorize(&self, request: &AuthRequest, host: &Host<'_>) -> Result<Credentials> {
        if let Some(identity::Identity::Managed(source, user)) = &self.identity {
            return identity::managed(source, user.as_ref(), &self.audience.0, host);
        }
        let a = self.authority(host)?;
        if matches!(self.flow, Flow::ClientCredentials | Flow::WorkloadIdentity) {
            return self.app_token(&a, host);
        }
        if !request.force_login {
            let request = self.request(&a).scope(&Self::delegated_scope(&a));
            if let Some(creds) = self.sign_in(&a).refresh(request, host)? {
                return Ok(creds);
            }
        }
        if !request.interactive {
            return Err(Error::interaction_required(format!(
                "no stored sign-in for {}",
                a.audience
            )));
        }
        match self.flow {
            Flow::AuthCode => self.auth_code(&a, host),
            _ => self.device_code(&a, host),
        }
    }

    fn invoke(&self, op: &str, _payload: Value, host: &Host<'_>) -> Result<Value> {
        match op {
            fhirconn_sdk::wire::LOGOUT => flows::logout(host, REFRESH_KEY),
            other => Err(Error::unsupported(other)),
        }
    }
}

fhirconn_sdk::export_schemes!(AzureAd);

mod identity;

#[cfg(test)]
mod tests;
