//! `fhirconn get|post|put|delete`: one request with a connection's credentials; `get
//! --all-pages` follows a searchset's `next` links ([`fhirconn_host::paging`]).

use crate::render;
use crate::{CliError, CmdResult, Global};
use fhirconn_host::paging::{self, BundleWriter};
use fhirconn_host::Request;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use std::io::IsTerminal as _;
use std::process::ExitCode;

/// Options of the request commands.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connection id.
    id: String,
    /// Path relative to the base URL, e.g. 'Patient/123' or 'Patient?name=smith'.
    path: String,
    /// Request body: '@file.json', '-' for standard input, or the JSON itself.
    #[arg(long)]
    data: Option<String>,
    /// Extra header 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// Extra query parameter 'key=value' (repeatable).
    #[arg(long = "query", value_name = "K=V")]
    query: Vec<String>,
    /// Follow the Bundle's `next` links (same origin only) and print one Bundle of all entries.
    #[arg(long)]
    all_pages: bool,
}

/// Reads `--data`: `@file`, `-` (standard input) or the text itself.
fn read_data(data: &str) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("--data -: {e}"))?;
        Ok(buf)
    } else if let Some(file) = data.strip_prefix('@') {
        std::fs::read(file).map_err(|e| format!("--data @{file}: {e}"))
    } else {
        Ok(data.as_bytes().to_vec())
    }
}

fn build_request(method: reqwest::Method, a: &Args) -> Result<Request, String> {
    let mut path = a.path.clone();
    if !a.query.is_empty() {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for q in &a.query {
            let (k, v) = q
                .split_once('=')
                .ok_or_else(|| format!("--query {q}: expected key=value"))?;
            ser.append_pair(k, v);
        }
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&ser.finish());
    }
    let mut req = Request::get(&path);
    req.method = method;
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h}: expected 'Name: value'"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("--header {h}: invalid header name"))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("--header {h}: invalid header value"))?;
        req.headers.retain(|(n, _)| *n != name);
        req.headers.push((name, value));
    }
    if let Some(d) = &a.data {
        req.body = Some(read_data(d)?);
        if !req.headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
            req.headers.push((
                CONTENT_TYPE,
                HeaderValue::from_static(fhirconn_host::FHIR_JSON),
            ));
        }
    }
    Ok(req)
}

/// `get`, `post`, `put`, `delete`: FHIR JSON pretty on a terminal, raw when piped; a non-2xx
/// answer prints its body (an OperationOutcome) on stderr and exits 1.
pub async fn run(g: &Global, method: reqwest::Method, a: Args) -> CmdResult {
    let req = build_request(method.clone(), &a).map_err(CliError::Usage)?;
    let host = g.host(std::slice::from_ref(&a.id)).await?;
    let conn = host.connection(&a.id)?;
    let pretty = std::io::stdout().is_terminal();
    let resp = conn.send(req.clone()).await?;
    if !resp.status.is_success() {
        return Err(CliError::Http {
            status: resp.status,
            url: fhirconn_host::services::shown_url(&resp.url),
            body: render::error_body(&host, &resp.body),
        });
    }
    if !(a.all_pages && method == reqwest::Method::GET) {
        println!("{}", render::body(&resp.body, pretty));
        return Ok(ExitCode::SUCCESS);
    }
    // One Bundle with every entry, written page by page as the pages arrive.
    let first = paging::first_page(&resp.body).map_err(|e| CliError::Failed(e.to_string()))?;
    let stdout = std::io::stdout();
    let mut out = BundleWriter::start(stdout.lock(), &first, pretty)
        .map_err(|e| CliError::Failed(format!("standard output: {e}")))?;
    let followed = paging::follow(&conn, &req, first, |entries| out.entries(entries)).await?;
    if followed.stopped_at_limit {
        eprintln!("warning: stopped after {} pages", paging::MAX_PAGES);
    }
    out.finish()
        .map_err(|e| CliError::Failed(format!("standard output: {e}")))?;
    eprintln!("{} page(s)", followed.pages);
    Ok(ExitCode::SUCCESS)
}
