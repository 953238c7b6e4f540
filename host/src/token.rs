//! The bearer token among a connection's credentials (`fhirconn token`, and callers that
//! hand a token to another tool).

use crate::Resolved;

impl Resolved {
    /// The token of an `Authorization: Bearer <token>` header, if the credentials have one.
    pub fn bearer_token(&self) -> Option<String> {
        self.headers.iter().find_map(|(name, value)| {
            let v = value.to_str().ok()?;
            let (scheme, token) = v.split_once(' ')?;
            (name == reqwest::header::AUTHORIZATION && scheme.eq_ignore_ascii_case("bearer"))
                .then(|| token.to_string())
        })
    }
}
