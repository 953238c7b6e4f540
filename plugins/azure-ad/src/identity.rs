//! Identities without a person or a client secret: `flow: managed-identity` (Azure IMDS, or
//! App Service / Container Apps through `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`) and
//! `flow: workload-identity` (a federated token file as the client assertion). Endpoints,
//! client and tenant come from the settings or the environment, as the Azure SDKs read them;
//! the `resource` or `scope` is always this connection's configured audience.

use super::{Flow, Settings};
use fhirconn_sdk::flows;
use fhirconn_sdk::{Credentials, Error, ExposeSecret, Host, HttpRequest, Result, SecretString};

/// Azure IMDS, when `AZURE_POD_IDENTITY_AUTHORITY_HOST` names no other host.
const IMDS: &str = "http://169.254.169.254";

/// Where a managed identity's token comes from: IMDS (`Metadata: true`, API 2018-02-01), or
/// App Service / Container Apps / Functions with its `X-IDENTITY-HEADER` (API 2019-08-01).
#[derive(Debug)]
pub(crate) struct Source(url::Url, Option<SecretString>);

/// What a token without a person needs besides the audience.
#[derive(Debug)]
pub(crate) enum Identity {
    /// A managed identity; a user-assigned one as (parameter index, id): client, object or
    /// resource id.
    Managed(Source, Option<(usize, String)>),
    /// Workload identity federation: the file holding the client assertion.
    Federated(String),
}

fn env(host: &Host<'_>, name: &str) -> Option<String> {
    host.env_var(name).filter(|v| !v.trim().is_empty())
}

/// An endpoint named by the environment: an absolute http(s) URL.
fn env_url(name: &str, value: &str) -> Result<url::Url> {
    url::Url::parse(value)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| Error::config(format!("{name} '{value}' is not an http(s) URL")))
}

/// Reads the settings (and, as the Azure SDKs do, the environment) of the two flows; fills in
/// `client-id`, `tenant` and `authority-host` of workload identity from `AZURE_*`.
pub(crate) fn configure(s: &mut Settings, host: &Host<'_>) -> Result<Option<Identity>> {
    let ids = [&s.client_id, &s.object_id, &s.msi_res_id];
    let user_ids = ids.iter().filter(|v| v.is_some()).count() - usize::from(ids[0].is_some());
    if (s.flow != Flow::ManagedIdentity && user_ids > 0)
        || (s.flow != Flow::WorkloadIdentity && s.federated_token_file.is_some())
    {
        return Err(Error::config(
            "object-id and msi-res-id only apply to flow: \
            managed-identity, federated-token-file only to flow: workload-identity",
        ));
    }
    match s.flow {
        Flow::ManagedIdentity => {
            let mut user = ids
                .iter()
                .enumerate()
                .filter_map(|(i, v)| Some((i, (*v).clone()?)));
            let user_assigned = user.next();
            if user.next().is_some() {
                return Err(Error::config(
                    "name a user-assigned identity by one of client-id, \
                    object-id or msi-res-id",
                ));
            }
            let source = match (env(host, "IDENTITY_ENDPOINT"), env(host, "IDENTITY_HEADER")) {
                (Some(e), Some(h)) => Source(env_url("IDENTITY_ENDPOINT", &e)?, Some(h.into())),
                (Some(_), None) => {
                    return Err(Error::config(
                        "IDENTITY_ENDPOINT is set without \
                    IDENTITY_HEADER (Azure Arc's managed identity is not supported)",
                    ))
                }
                (None, _) => {
                    let base = env(host, "AZURE_POD_IDENTITY_AUTHORITY_HOST");
                    let base = base.as_deref().unwrap_or(IMDS).trim_end_matches('/');
                    let token = format!("{base}/metadata/identity/oauth2/token");
                    Source(env_url("AZURE_POD_IDENTITY_AUTHORITY_HOST", &token)?, None)
                }
            };
            Ok(Some(Identity::Managed(source, user_assigned)))
        }
        Flow::WorkloadIdentity => {
            for (v, name) in [
                (&mut s.client_id, "AZURE_CLIENT_ID"),
                (&mut s.tenant, "AZURE_TENANT_ID"),
                (&mut s.authority_host, "AZURE_AUTHORITY_HOST"),
                (&mut s.federated_token_file, "AZURE_FEDERATED_TOKEN_FILE"),
            ] {
                *v = v.take().or_else(|| env(host, name));
            }
            let file = s.federated_token_file.clone().ok_or_else(|| {
                Error::config(
                    "flow workload-identity needs federated-token-file (or \
                    AZURE_FEDERATED_TOKEN_FILE)",
                )
            })?;
            Ok(Some(Identity::Federated(file)))
        }
        _ => Ok(None),
    }
}

/// A managed identity's token for `audience` (sent as `resource`; the request carries no
/// secret but App Service's per-process `X-IDENTITY-HEADER`).
pub(crate) fn managed(
    source: &Source,
    user: Option<&(usize, String)>,
    audience: &str,
    host: &Host<'_>,
) -> Result<Credentials> {
    let (mut url, app_service) = (source.0.clone(), &source.1);
    let (api, names) = match app_service {
        None => ("2018-02-01", ["client_id", "object_id", "msi_res_id"]),
        Some(_) => ("2019-08-01", ["client_id", "principal_id", "mi_res_id"]),
    };
    url.query_pairs_mut()
        .append_pair("api-version", api)
        .append_pair("resource", audience);
    if let Some((i, id)) = user {
        url.query_pairs_mut().append_pair(names[*i], id);
    }
    let request = HttpRequest::new("GET", url.as_str()).header("Accept", "application/json");
    let request = match app_service {
        None => request.header("Metadata", "true"),
        Some(h) => request.sensitive_header("X-IDENTITY-HEADER", h.expose_secret()),
    };
    flows::metadata_token(host, request, "managed identity endpoint", None)
}

#[cfg(test)]
mod tests;
