//! Everything the host needs to load a library: its root module after the version and layout
//! checks, or a typed failure.

use super::SchemeLibrary_Ref;
use abi_stable::library::{lib_header_from_path, LibraryError};
use std::path::Path;

/// Why a library could not be loaded, with abi_stable's raw report kept apart.
#[derive(Debug)]
pub enum LoadFailure {
    /// dlopen failed (not a shared library, truncated, missing dependency...).
    Open(String),
    /// The library does not export the fhirconn root module symbol.
    NotAPlugin,
    /// Built against an incompatible interface version.
    Version {
        /// The interface version this host expects.
        expected: String,
        /// The interface version the library was built against.
        found: String,
    },
    /// The layout check failed. `report` is abi_stable's (long) raw report.
    Layout {
        /// abi_stable's raw layout report; for debug logs only.
        report: String,
    },
    /// The library was built with an incompatible `abi_stable`.
    AbiStable(String),
    /// The library's root module constructor failed or panicked.
    Init(String),
}

/// A truncated ELF library may still `dlopen` (its pages are mapped lazily) and then fault
/// when code past the end is reached: check that the file holds its own section header
/// table, which the linker writes last. Files that are not 64-bit ELF are left to `dlopen`.
fn check_elf_complete(path: &Path) -> Result<(), LoadFailure> {
    use std::io::Read as _;
    let mut head = [0u8; 64];
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return Ok(());
    }
    let shoff = u64::from_le_bytes(head[0x28..0x30].try_into().unwrap_or_default());
    let shentsize = u64::from(u16::from_le_bytes([head[0x3a], head[0x3b]]));
    let shnum = u64::from(u16::from_le_bytes([head[0x3c], head[0x3d]]));
    let needed = shoff.saturating_add(shentsize.saturating_mul(shnum));
    if needed > len {
        return Err(LoadFailure::Open(format!(
            "the file is truncated ({len} bytes; its ELF header describes at least {needed})"
        )));
    }
    Ok(())
}

/// Loads the library at `path` and returns its root module.
///
/// Uses `lib_header_from_path` rather than `RootModule::load_from_file`: the latter caches
/// the first module loaded per type and would return it for every later library.
/// The library is never unloaded.
pub fn load_library(path: &Path) -> Result<SchemeLibrary_Ref, LoadFailure> {
    check_elf_complete(path)?;
    let header = lib_header_from_path(path).map_err(classify)?;
    header
        .init_root_module::<SchemeLibrary_Ref>()
        .map_err(classify)
}

fn classify(err: LibraryError) -> LoadFailure {
    match err {
        LibraryError::OpenError { err, .. } => LoadFailure::Open(err.to_string()),
        LibraryError::GetSymbolError { .. } => LoadFailure::NotAPlugin,
        LibraryError::ParseVersionError(e) => LoadFailure::Version {
            expected: super::ABI_VERSION.to_string(),
            found: format!("unparseable ({e})"),
        },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadFailure::Version {
            expected: expected_version.to_string(),
            found: actual_version.to_string(),
        },
        LibraryError::AbiInstability(report) => LoadFailure::Layout {
            report: report.to_string(),
        },
        LibraryError::InvalidAbiHeader(h) => LoadFailure::AbiStable(format!(
            "abi_stable header {}.{} is incompatible",
            h.abi_major, h.abi_minor
        )),
        LibraryError::InvalidCAbi { .. } => {
            LoadFailure::AbiStable("the C ABI check failed".to_string())
        }
        LibraryError::RootModule { err, .. } => LoadFailure::Init(err.to_string()),
        LibraryError::Many(errs) => match errs.into_iter().next() {
            Some(first) => classify(first),
            None => LoadFailure::Init("unknown loading error".to_string()),
        },
    }
}
