//! The conformance cases: one function per case, each `Ok(Some(()))` (pass), `Ok(None)`
//! (does not apply to this scheme) or `Err` (fails, with why).

use crate::{fhirconn, leaks, why, Fixture, Outcome, Setup};
use fhirconn_host::DiagnosisKind;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The outcome of `case` for the scheme of `f`.
pub(crate) async fn run_case(case: &str, f: &Fixture, setup: &Setup) -> Outcome {
    let result: Result<Option<()>, String> = match case {
        "passes" => passes(f, setup).await,
        "wrong-credentials-diagnosed" => wrong_credentials_diagnosed(f, setup).await,
        "renews-across-expiry" => renews_across_expiry(f, setup).await,
        "401-retries-once" => retries_401_once(f, setup).await,
        "slow-server-times-out" => slow_server_times_out(f, setup).await,
        "no-secret-in-verbose-output" => no_secret_in_verbose_output(f, setup).await,
        "scheme-specific" => f.scheme_specific(setup).await,
        other => Err(format!("unknown case {other}")),
    };
    match result {
        Ok(Some(())) => Outcome::Pass,
        Ok(None) => Outcome::NotApplicable,
        Err(e) => Outcome::Fail(e),
    }
}

/// The case `passes`.
async fn passes(f: &Fixture, setup: &Setup) -> Result<Option<()>, String> {
    let r = f.test_once(setup, &f.good(), Value::Null).await?;
    r.ok.then_some(Some(())).ok_or_else(|| why(&r))
}

/// The case `wrong-credentials-diagnosed`.
async fn wrong_credentials_diagnosed(f: &Fixture, setup: &Setup) -> Result<Option<()>, String> {
    if f.wrong().is_null() {
        return Ok(None);
    }
    let r = f.test_once(setup, &f.wrong(), Value::Null).await?;
    let d = r.failure.as_ref().ok_or("wrong credentials passed")?;
    let clear = matches!(
        d.kind,
        DiagnosisKind::Unauthorized
            | DiagnosisKind::CredentialsRejected
            | DiagnosisKind::Forbidden
            | DiagnosisKind::Tls
    );
    if clear {
        Ok(Some(()))
    } else {
        Err(format!("unclear diagnosis: {}", why(&r)))
    }
}

/// The case `renews-across-expiry`.
async fn renews_across_expiry(f: &Fixture, setup: &Setup) -> Result<Option<()>, String> {
    if !f.issues_tokens() {
        return Ok(None);
    }
    f.set_token_lifetime(Duration::from_secs(2));
    let host = f.host(setup, &f.good(), Value::Null).await?;
    let conn = host.connection("c").map_err(|e| e.to_string())?;
    let before = f.tokens_issued();
    let get = || async { conn.get("Patient/1").await.map(|r| r.status.as_u16()) };
    let first = get().await.map_err(|e| e.to_string())?;
    // The credentials the first request used (cached: no new fetch).
    let expires = conn
        .credentials(false)
        .await
        .map_err(|e| e.to_string())?
        .expires_at;
    let unauthorized = f.unauthorized();
    // Past the 2 s lifetime by more than the servers' one-second `exp` granularity, so
    // a token that was not renewed is refused for sure.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let second = get().await.map_err(|e| e.to_string())?;
    let rejected = f.unauthorized() - unauthorized;
    let fetched = f.tokens_issued() - before;
    let mut problems = Vec::new();
    if expires.is_none() {
        problems.push(
            "the credentials carry no expiry, so the host cannot renew them ahead of time"
                .to_string(),
        );
    }
    if rejected > 0 {
        problems.push(format!(
            "{rejected} request(s) answered 401 around the renewal (renewed by retry, \
             not ahead of expiry)"
        ));
    }
    if (first, second) != (200, 200) || fetched != 2 {
        problems.push(format!(
            "statuses {first}, {second}; {fetched} tokens fetched (expected 2)"
        ));
    }
    if problems.is_empty() {
        Ok(Some(()))
    } else {
        Err(problems.join("; "))
    }
}

/// The case `401-retries-once`.
async fn retries_401_once(f: &Fixture, setup: &Setup) -> Result<Option<()>, String> {
    if !f.issues_tokens() {
        return Ok(None);
    }
    let host = f.host(setup, &f.good(), Value::Null).await?;
    let conn = host.connection("c").map_err(|e| e.to_string())?;
    let status = |r: Result<fhirconn_host::transport::Response, fhirconn_host::Error>| {
        r.map(|r| r.status.as_u16()).map_err(|e| e.to_string())
    };
    let a = status(conn.get("Patient/1").await)?;
    f.revoke_tokens();
    let unauthorized = f.unauthorized();
    let before = f.tokens_issued();
    let b = status(conn.get("Patient/1").await)?;
    let retries = f.unauthorized() - unauthorized;
    let fetched = f.tokens_issued() - before;
    if (a, b, retries, fetched) == (200, 200, 1, 1) {
        Ok(Some(()))
    } else {
        Err(format!(
            "statuses {a}, {b}; {retries} 401(s); {fetched} new token(s)"
        ))
    }
}

/// The case `slow-server-times-out`.
async fn slow_server_times_out(f: &Fixture, setup: &Setup) -> Result<Option<()>, String> {
    f.set_slow(Some(Duration::from_secs(5)));
    let started = Instant::now();
    let r = f
        .test_once(
            setup,
            &f.good(),
            serde_json::json!({"read-timeout": "PT1S"}),
        )
        .await;
    f.set_slow(None);
    let r = r?;
    let took = started.elapsed();
    let kind = r.failure.as_ref().map(|d| d.kind);
    if kind == Some(DiagnosisKind::Timeout) && took < Duration::from_millis(4000) {
        Ok(Some(()))
    } else {
        Err(format!("after {took:?}: {}", why(&r)))
    }
}

/// The case `no-secret-in-verbose-output`.
async fn no_secret_in_verbose_output(f: &Fixture, setup: &Setup) -> Result<Option<()>, String> {
    if f.secrets().is_empty() && !f.issues_tokens() {
        // Nothing secret to leak (`none`): not a pass.
        return Ok(None);
    }
    let cfg = f.dir().join("conformance.yaml");
    let mut conn =
        serde_json::json!({"base-url": f.base_url(), "auth": f.good(), "probe": "Patient/1"});
    if let (Value::Object(c), Value::Object(e)) = (&mut conn, f.connection_extra()) {
        c.extend(e);
    }
    std::fs::write(
        &cfg,
        serde_json::to_string(&serde_json::json!({"connections": {"c": conn}}))
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    // `test` and `get` at the most verbose logging.
    let mut text = String::new();
    for args in [&["test"][..], &["get", "c", "Patient/1"][..]] {
        let out = fhirconn(setup, &cfg, args).await?;
        let both = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!(
                "fhirconn {} failed: {}",
                args.join(" "),
                both.lines().last().unwrap_or("")
            ));
        }
        text.push_str(&both);
    }
    // The error path too: the wrong credentials' diagnosis must not quote them.
    if !f.wrong().is_null() {
        let mut conn = serde_json::json!({"base-url": f.base_url(), "auth": f.wrong()});
        if let (Value::Object(c), Value::Object(e)) = (&mut conn, f.connection_extra()) {
            c.extend(e);
        }
        let wrong_cfg = f.dir().join("conformance-wrong.yaml");
        std::fs::write(
            &wrong_cfg,
            serde_json::to_string(&serde_json::json!({"connections": {"c": conn}}))
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let out = fhirconn(setup, &wrong_cfg, &["test"]).await?;
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let mut secrets = f.secrets();
    secrets.extend(f.issued_tokens());
    match leaks::find(&text, &secrets, &f.users()) {
        Some(leak) => Err(leak),
        None => Ok(Some(())),
    }
}
