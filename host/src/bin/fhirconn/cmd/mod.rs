//! One module per command; each renders a library result and returns `Result<ExitCode,
//! CliError>`.

pub mod completions;
pub mod config;
pub mod export;
pub mod get;
pub mod import;
pub mod keygen;
pub mod login;
pub mod profile;
pub mod proxy;
pub mod schema;
pub mod schemes;
pub mod test;
pub mod token;
