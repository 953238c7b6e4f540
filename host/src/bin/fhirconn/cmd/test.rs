//! `fhirconn test`: credentials, `GET {base}/metadata` and an optional probe per connection.

use crate::render::{colour_stdout, paint, print_json, Output};
use crate::{CmdResult, Global};
use fhirconn_host::TestReport;
use std::process::ExitCode;

/// `fhirconn test` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connection ids (all when none is given).
    ids: Vec<String>,
    /// An authenticated read after /metadata, e.g. 'Patient?_count=1'.
    #[arg(long)]
    probe: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// Tests the connections; exits 1 when one fails.
pub async fn run(g: &Global, a: Args) -> CmdResult {
    let host = g.host(&a.ids).await?;
    let reports = host.test(&a.ids, a.probe.as_deref()).await?;
    match a.output {
        Output::Json => print_json(&reports),
        Output::Human => print_reports(&reports),
    }
    Ok(if reports.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_reports(reports: &[TestReport]) {
    let w = reports.iter().map(|r| r.id.len()).max().unwrap_or(2).max(2);
    let sw = reports
        .iter()
        .map(|r| r.schemes.join("+").len())
        .max()
        .unwrap_or(4);
    let colour = colour_stdout();
    for r in reports {
        let schemes = format!("{:sw$}", r.schemes.join("+"));
        if r.ok {
            let fhir = r.fhir_version.as_deref().unwrap_or("?");
            let software = r
                .software
                .as_deref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default();
            let probe = r
                .probe
                .as_ref()
                .map(|p| format!(", probe {} -> {}", p.path, p.status))
                .unwrap_or_default();
            println!(
                "{}  {:w$}  {schemes}  {}  FHIR {fhir}{software}{probe}  ({} ms)",
                paint("PASS", "32", colour),
                r.id,
                r.base_url,
                r.total_ms
            );
        } else {
            let why = r
                .failure
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "failed".into());
            println!(
                "{}  {:w$}  {schemes}  {}",
                paint("FAIL", "31", colour),
                r.id,
                r.base_url
            );
            println!("      {:w$}  {why}", "");
        }
        print_details(r, w);
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    println!(
        "{} of {} connections passed",
        reports.len() - failed,
        reports.len()
    );
}

/// The TLS facts and warnings under a report's line.
fn print_details(r: &TestReport, w: usize) {
    if r.server_certificate.is_some() || r.client_certificate.is_some() {
        let server = r
            .server_certificate
            .as_ref()
            .map(|c| format!("server '{}' (expires {})", c.subject, c.not_after));
        let client = r
            .client_certificate
            .as_ref()
            .map(|c| format!("client certificate '{}' offered", c.subject));
        let facts: Vec<String> = server.into_iter().chain(client).collect();
        println!("      {:w$}  tls: {}", "", facts.join(", "));
    }
    print_launch_context(r, w);
    for warn in &r.warnings {
        println!("      {:w$}  warning: {warn}", "");
    }
}

/// The SMART launch context under a report's line (its texts were sanitised by the host).
fn print_launch_context(r: &TestReport, w: usize) {
    let Some(c) = &r.launch_context else {
        return;
    };
    let facts: Vec<String> = [
        ("patient", &c.patient),
        ("encounter", &c.encounter),
        ("fhirUser", &c.fhir_user),
        ("smart_style_url", &c.smart_style_url),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
    .chain(
        c.need_patient_banner
            .map(|b| format!("need_patient_banner {b}")),
    )
    .collect();
    if !facts.is_empty() {
        println!("      {:w$}  launch: {}", "", facts.join(", "));
    }
    if let Some(scope) = &c.scope {
        println!("      {:w$}  granted scope: {scope}", "");
    }
}
