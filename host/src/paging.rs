//! Following a searchset Bundle's `next` links (`fhirconn get --all-pages`): the pages are
//! fetched one at a time on the connection's own origin and their entries handed on as they
//! arrive, so only one page is held in memory; [`BundleWriter`] writes them out as one Bundle.

use crate::services::json_text_safe;
use crate::{Connection, Error, Request};
use serde_json::Value;

/// Following stops after this many pages (a loop of `next` links ends there).
pub const MAX_PAGES: u32 = 1000;

/// How following the pages ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    /// Pages read, the first included.
    pub pages: u32,
    /// `true` when [`MAX_PAGES`] were read and a `next` link was still there.
    pub stopped_at_limit: bool,
}

/// Why following the pages stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PagingError {
    /// The first answer is not a JSON object.
    #[error("--all-pages: the answer is not a JSON Bundle")]
    NotABundle,
    /// A later page is not JSON.
    #[error("--all-pages: page {page} is not JSON")]
    PageNotJson {
        /// The 1-based number of the page.
        page: u32,
    },
    /// A later page answered with an error status.
    #[error("HTTP {status} from {url}")]
    Status {
        /// The status.
        status: reqwest::StatusCode,
        /// The page's URL, as `text::shown_url` shows it (query values elided).
        url: String,
    },
    /// The request for a later page failed.
    #[error(transparent)]
    Connection(#[from] Error),
    /// The caller's sink failed (standard output closed).
    #[error("standard output: {0}")]
    Output(#[source] std::io::Error),
}

/// A failure after `pages` pages were handed on: what was written so far is incomplete.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Incomplete {
    /// Pages handed on before the failure.
    pub pages: u32,
    /// What went wrong.
    #[source]
    pub error: PagingError,
}

/// The `next` link of a Bundle, if any.
pub fn next_link(page: &Value) -> Option<String> {
    page["link"].as_array().and_then(|links| {
        links
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(String::from)
    })
}

/// Parses the first answer of a search as a Bundle (any JSON object).
pub fn first_page(body: &[u8]) -> Result<Value, PagingError> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(PagingError::NotABundle),
    }
}

/// Hands the entries of `first` and of every page its `next` links lead to (at most
/// [`MAX_PAGES`] pages; same origin only, as [`Connection::send`] refuses others) to
/// `on_entries`, in order. `request` is the first page's request: later pages are sent with
/// its method and headers.
pub async fn follow<F>(
    conn: &Connection,
    request: &Request,
    first: Value,
    mut on_entries: F,
) -> Result<Followed, Incomplete>
where
    F: FnMut(&[Value]) -> std::io::Result<()>,
{
    let mut page = first;
    let mut pages = 1;
    let fail = |pages, error| Incomplete { pages, error };
    loop {
        let entries = page["entry"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        on_entries(entries).map_err(|e| fail(pages, PagingError::Output(e)))?;
        let Some(next) = next_link(&page) else {
            return Ok(Followed {
                pages,
                stopped_at_limit: false,
            });
        };
        if pages >= MAX_PAGES {
            return Ok(Followed {
                pages,
                stopped_at_limit: true,
            });
        }
        let mut r = request.clone();
        r.path = next.clone();
        let resp = match conn.send(r).await {
            Ok(x) if x.status.is_success() => x,
            Ok(x) => {
                // The URL answered (after redirects), its query values elided.
                let error = PagingError::Status {
                    status: x.status,
                    url: crate::text::shown_url(&x.url),
                };
                return Err(fail(pages, error));
            }
            Err(e) => return Err(fail(pages, e.into())),
        };
        page = serde_json::from_slice(&resp.body)
            .map_err(|_| fail(pages, PagingError::PageNotJson { page: pages + 1 }))?;
        pages += 1;
    }
}

/// Writes one Bundle whose entries arrive page by page: the first page's other fields (its
/// `link` emptied), then `"entry": [...]`, flushed after every page. Every character a
/// terminal would act on is written as a `\uXXXX` escape.
#[derive(Debug)]
pub struct BundleWriter<W: std::io::Write> {
    out: W,
    pretty: bool,
    first: bool,
}

impl<W: std::io::Write> BundleWriter<W> {
    /// Writes the head of the Bundle from the first page.
    pub fn start(mut out: W, first_page: &Value, pretty: bool) -> std::io::Result<Self> {
        let mut head = first_page.as_object().cloned().unwrap_or_default();
        head.remove("entry");
        if let Some(links) = head.get_mut("link") {
            *links = serde_json::json!([]);
        }
        let empty = head.is_empty();
        let head = Value::Object(head);
        let text = json_text_safe(
            &if pretty {
                serde_json::to_string_pretty(&head)
            } else {
                serde_json::to_string(&head)
            }
            .unwrap_or_default(),
        );
        let open = text.trim_end().strip_suffix('}').unwrap_or("{").trim_end();
        write!(out, "{open}")?;
        if !empty {
            write!(out, ",")?;
        }
        let entry = if pretty {
            "\n  \"entry\": ["
        } else {
            "\"entry\":["
        };
        write!(out, "{entry}")?;
        Ok(Self {
            out,
            pretty,
            first: true,
        })
    }

    /// Appends entries and flushes.
    pub fn entries(&mut self, entries: &[Value]) -> std::io::Result<()> {
        for e in entries {
            if !self.first {
                write!(self.out, ",")?;
            }
            self.first = false;
            if self.pretty {
                let text = json_text_safe(&serde_json::to_string_pretty(e).unwrap_or_default());
                for line in text.lines() {
                    write!(self.out, "\n    {line}")?;
                }
            } else {
                let text = json_text_safe(&serde_json::to_string(e).unwrap_or_default());
                write!(self.out, "{text}")?;
            }
        }
        self.out.flush()
    }

    /// Closes the entry array and the Bundle.
    pub fn finish(mut self) -> std::io::Result<()> {
        if self.pretty {
            if !self.first {
                write!(self.out, "\n  ")?;
            }
            writeln!(self.out, "]\n}}")?;
        } else {
            writeln!(self.out, "]}}")?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_make_one_valid_bundle_pretty_or_compact() {
        let page = |ids: &[&str]| {
            serde_json::json!({
                "resourceType": "Bundle", "type": "searchset", "total": 3,
                "link": [{"relation": "next", "url": "x"}],
                "entry": ids.iter().map(|i| serde_json::json!({"resource": {"id": i}})).collect::<Vec<_>>()
            })
        };
        for pretty in [true, false] {
            for pages in [
                vec![page(&["a", "b"]), page(&[]), page(&["c"])],
                vec![page(&[])],
            ] {
                let mut buf = Vec::new();
                let mut w = BundleWriter::start(&mut buf, &pages[0], pretty).unwrap();
                for p in &pages {
                    w.entries(p["entry"].as_array().unwrap()).unwrap();
                }
                w.finish().unwrap();
                let v: Value = serde_json::from_slice(&buf).unwrap();
                let all: Vec<_> = pages
                    .iter()
                    .flat_map(|p| p["entry"].as_array().unwrap().clone())
                    .collect();
                assert_eq!(v["entry"], Value::Array(all));
                assert_eq!(v["total"], 3);
                assert_eq!(v["link"], serde_json::json!([]));
            }
        }
        let mut buf = Vec::new();
        let w = BundleWriter::start(&mut buf, &serde_json::json!({}), true).unwrap();
        w.finish().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&buf).unwrap(),
            serde_json::json!({"entry": []})
        );
    }

    #[test]
    fn next_link_and_first_page() {
        let b = serde_json::json!({"link": [{"relation": "self", "url": "a"},
                                            {"relation": "next", "url": "b"}]});
        assert_eq!(next_link(&b).as_deref(), Some("b"));
        assert_eq!(next_link(&serde_json::json!({})), None);
        assert!(matches!(first_page(b"[1]"), Err(PagingError::NotABundle)));
        assert!(first_page(b"{}").is_ok());
    }
}
