//! The connection test: credentials, `GET {base}/metadata` (with the 401 rule), then the
//! probe; each failure becomes a [`Diagnosis`].

use super::diagnosis::{credential_failure, http_failure, transport_failure};
use super::report::pem_first_certificate;
use super::{
    parse_capability, CertificateFacts, Connection, Diagnosis, DiagnosisKind, Failure, ProbeReport,
    Request, Stage, TestReport,
};
use crate::transport::Response;
use std::time::Instant;

impl Connection {
    /// Tests the connection: credentials, `GET {base}/metadata`, then the probe (if any).
    pub async fn test(&self, probe: Option<&str>) -> TestReport {
        let started = Instant::now();
        let mut report = TestReport::new(self.id(), self.base_url().as_str(), self.schemes());
        if self.transport.settings().host.allow_insecure_http {
            report.warnings.push(
                "allow-insecure-http is set: credentials may cross the network in plain text"
                    .to_string(),
            );
        }
        match self.run_test(&mut report, probe).await {
            Ok(()) => report.ok = true,
            Err(d) => report.failure = Some(d),
        }
        report.total_ms = started.elapsed().as_millis() as u64;
        report.clean(&self.auth.services.redactor);
        report
    }

    async fn run_test(
        &self,
        report: &mut TestReport,
        probe: Option<&str>,
    ) -> Result<(), Diagnosis> {
        // 1. credentials
        let t = Instant::now();
        let creds = self
            .auth
            .credentials(false)
            .await
            .map_err(|e| credential_failure(&e, self.id()))?;
        report.credentials_ms = t.elapsed().as_millis() as u64;
        report.warnings.extend(creds.warnings.iter().cloned());
        report.launch_context = creds.launch_context.clone();
        report.credential_source = Some(creds.source);
        report.client_certificate = creds.identity.as_ref().and_then(|i| {
            let block = pem_first_certificate(&i.certificate_chain_pem)?;
            CertificateFacts::from_der(&block)
        });
        // 2. metadata
        let t = Instant::now();
        let url = self.url_for("metadata").map_err(|e| {
            Diagnosis::new(Stage::Metadata, DiagnosisKind::InvalidUrl, e.to_string())
        })?;
        let limit = self.test_deadline();
        let resp = tokio::time::timeout(
            limit,
            self.send_renewing(creds, &Request::get("metadata"), &url),
        )
        .await
        .map_err(|_| test_timeout(Stage::Metadata, limit))?;
        report.metadata_ms = t.elapsed().as_millis() as u64;
        let resp = resp.map_err(|f| match f {
            Failure::Credentials(e) => credential_failure(&e, self.id()),
            Failure::Request(e) => transport_failure(Stage::Metadata, &e),
        })?;
        self.read_metadata(report, &resp)?;
        // 3. probe
        if let Some(path) = probe.or(self.probe()) {
            let t = Instant::now();
            let result = tokio::time::timeout(limit, self.send(Request::get(path)))
                .await
                .map_err(|_| test_timeout(Stage::Probe, limit))?;
            let ms = t.elapsed().as_millis() as u64;
            let r = result.map_err(|e| transport_failure(Stage::Probe, &e))?;
            report.probe = Some(ProbeReport {
                path: path.to_string(),
                status: r.status.as_u16(),
                ms,
            });
            if let Some(d) = http_failure(Stage::Probe, &r) {
                return Err(d);
            }
        }
        Ok(())
    }

    /// A connection test's read is bounded as a whole: `request-timeout` when set, else
    /// connect-timeout + read-timeout. (`read-timeout` alone is an idle timeout: a server that
    /// trickles bytes forever would otherwise hold the test for ever.)
    fn test_deadline(&self) -> std::time::Duration {
        let s = self.transport.settings();
        s.request_timeout
            .unwrap_or(s.connect_timeout + s.read_timeout)
    }

    /// Records the server's certificate and the CapabilityStatement's facts.
    fn read_metadata(&self, report: &mut TestReport, resp: &Response) -> Result<(), Diagnosis> {
        report.server_certificate = resp
            .peer_certificate
            .as_deref()
            .and_then(CertificateFacts::from_der);
        if let Some(c) = &report.server_certificate {
            if c.days_left < 30 {
                report.warnings.push(format!(
                    "the server's certificate '{}' expires in {} day(s)",
                    c.subject, c.days_left
                ));
            }
        }
        if let Some(d) = http_failure(Stage::Metadata, resp) {
            return Err(d);
        }
        let cap = parse_capability(resp)?;
        if let Some(v) = &cap.fhir_version {
            if !v.starts_with("4.0") {
                report.warnings.push(format!(
                    "the server speaks FHIR {v}; fhirconn targets R4 (4.0.x)"
                ));
            }
        }
        report.fhir_version = cap.fhir_version;
        report.software = cap.software;
        Ok(())
    }
}

/// The diagnosis of a connection test stage that did not finish within its deadline.
fn test_timeout(stage: Stage, limit: std::time::Duration) -> Diagnosis {
    Diagnosis::new(
        stage,
        DiagnosisKind::Timeout,
        format!(
            "no complete answer within {:.1}s (a connection test is bounded by \
             connect-timeout + read-timeout, or request-timeout when set)",
            limit.as_secs_f64()
        ),
    )
}
