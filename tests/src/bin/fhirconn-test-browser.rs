//! A test "browser" for `$BROWSER`: follows a sign-in URL as a person who approves at once
//! would (GET the authorize URL, then GET the redirect it answers with) and appends what it saw
//! to `$TEST_BROWSER_LOG`. With `TEST_BROWSER_KNOCK=/path` it first brings a forged code with
//! the real `state` to that path of the redirect's origin (a listener must ignore it).

use fhirconn_tests::http_get;

fn status(raw: &str) -> String {
    raw.lines().next().unwrap_or("no answer").trim().to_string()
}

fn main() {
    let Some(arg) = std::env::args().nth(1) else {
        return;
    };
    let mut lines = vec![format!("open {arg}")];
    if let Ok(url) = url::Url::parse(&arg) {
        let answer = http_get(&url).unwrap_or_default();
        lines.push(format!("authorize {}", status(&answer)));
        let back = answer
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .and_then(|l| url::Url::parse(&l).ok());
        if let Some(back) = back {
            if let Ok(path) = std::env::var("TEST_BROWSER_KNOCK") {
                let state = back
                    .query_pairs()
                    .find(|(k, _)| k == "state")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let mut forged = back.clone();
                forged.set_path(&path);
                forged
                    .query_pairs_mut()
                    .clear()
                    .append_pair("code", "FORGED")
                    .append_pair("state", &state);
                lines.push(format!(
                    "knock {}",
                    status(&http_get(&forged).unwrap_or_default())
                ));
            }
            lines.push(format!("redirect {back}"));
            lines.push(format!(
                "listener {}",
                status(&http_get(&back).unwrap_or_default())
            ));
        }
    }
    if let Some(log) = std::env::var_os("TEST_BROWSER_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{}", lines.join("\n"));
        }
    }
}
