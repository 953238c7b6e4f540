//! `test-connection-on-startup`: the startup call a long-running host makes once its
//! configuration is loaded ([`Host::startup_checks`]; `fhirconn proxy` makes it before it
//! listens). Each marked connection is tested as `fhirconn test` would, the result logged;
//! one failure fails the call, so a service refuses to start rather than serve a connection
//! it was told to check.

use crate::{Error, Host, Result, TestReport};

/// Why [`Host::startup_checks`] failed: the connections whose test failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "test-connection-on-startup: {} connection(s) failed their test: {}",
    failed.len(),
    failed.iter().map(|(id, why)| format!("{id}: {why}")).collect::<Vec<_>>().join("; ")
)]
pub struct StartupFailure {
    /// `(connection id, why its test failed)`, in id order.
    pub failed: Vec<(String, String)>,
}

impl Host {
    /// Tests every connection marked `test-connection-on-startup: true` (concurrently, as
    /// [`Host::test`]), logs each result (info when it passed, error with the diagnosis when
    /// not) and returns the reports; fails with [`Error::Startup`] when one failed. Hosts
    /// that only want the reports call [`Host::test_on_startup`].
    pub async fn startup_checks(&self) -> Result<Vec<TestReport>> {
        let reports = self.test_on_startup().await?;
        let mut failed = Vec::new();
        for r in &reports {
            match &r.failure {
                None if r.ok => tracing::info!(connection = %r.id, base_url = %r.base_url,
                    ms = r.total_ms, "test-connection-on-startup: passed"),
                failure => {
                    let why = failure
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "failed".into());
                    tracing::error!(connection = %r.id, base_url = %r.base_url,
                        "test-connection-on-startup: failed: {why}");
                    failed.push((r.id.clone(), why));
                }
            }
        }
        if failed.is_empty() {
            Ok(reports)
        } else {
            Err(Error::Startup(StartupFailure { failed }))
        }
    }
}
