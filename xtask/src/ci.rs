//! `cargo xtask ci`: every CI step, in order, each timed.

use crate::conformance::conformance;
use crate::demo::demo;
use crate::fuzz::fuzz;
use crate::test::test;
use crate::{shell, ConformanceArgs, Result, LOCKED};
use std::sync::atomic::Ordering;
use std::time::Instant;
use xshell::cmd;

/// Runs one CI step, printing its wall time.
fn step(name: &str, f: impl FnOnce() -> Result) -> Result {
    println!("\n=== ci: {name}");
    let t = Instant::now();
    let r = f();
    println!(
        "=== ci: {name}: {} in {:.0} s",
        if r.is_ok() { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    r.map_err(|e| format!("{name}: {e}").into())
}

/// The one definition of CI (`.ci/run` only installs what is needed and calls this).
pub(crate) fn ci() -> Result {
    LOCKED.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let sh = shell()?;
    step("fmt", || Ok(cmd!(sh, "cargo fmt --all -- --check").run()?))?;
    step("clippy", || {
        Ok(cmd!(
            sh,
            "cargo clippy --locked --workspace --all-targets -- -D warnings"
        )
        .run()?)
    })?;
    step("test (the README's test command)", test)?;
    step("demo (the README's first command)", demo)?;
    // The debug builds the test step made: the suite checks behaviour, not speed, and a
    // second (release) build of the whole tree would add minutes to a clean run.
    step("conformance (debug builds)", || {
        conformance(&ConformanceArgs {
            debug: true,
            ..ConformanceArgs::default()
        })
    })?;
    step("fuzz", || fuzz("all", 30, None))?;
    println!(
        "\n=== ci: all steps passed in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
