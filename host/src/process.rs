//! Process hardening for programs that hold secrets: no core dumps, no same-user ptrace.
//!
//! A core dump of a process holding tokens, refresh tokens and private keys writes them to disk
//! (crash directories, crash reporters). The `fhirconn` CLI calls [`deny_core_dumps`] first
//! thing, as ssh-agent does; embedding services decide for themselves.

/// Sets the core-file size limit to zero and, on Linux, marks the process non-dumpable (which
/// also stops other processes of the same user from attaching a debugger or reading its
/// memory through `/proc`). Failures are ignored: this is defence in depth.
pub fn deny_core_dumps() {
    #[cfg(unix)]
    {
        use rustix::process::{setrlimit, Resource, Rlimit};
        let _ = setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        );
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::process::{set_dumpable_behavior, DumpableBehavior};
        let _ = set_dumpable_behavior(DumpableBehavior::NotDumpable);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn core_dumps_are_off_after_the_call() {
        // Runs in a child so the test harness itself keeps its limits.
        if std::env::var_os("FHIRCONN_PROCESS_TEST_CHILD").is_some() {
            super::deny_core_dumps();
            let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
            let core = limits
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .unwrap();
            assert!(core.split_whitespace().any(|w| w == "0"), "{core}");
            assert_eq!(
                rustix::process::dumpable_behavior().unwrap(),
                rustix::process::DumpableBehavior::NotDumpable
            );
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args([
                "--exact",
                "process::tests::core_dumps_are_off_after_the_call",
            ])
            .env("FHIRCONN_PROCESS_TEST_CHILD", "1")
            .status()
            .unwrap();
        assert!(status.success());
    }
}
