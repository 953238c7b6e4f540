//! `fhirconn profile`: list, describe, set and remove connections in the connections file.

use crate::render::{print_json, Output};
use crate::{CliError, CmdResult, Global};
use fhirconn_host::profile::{self, file, file::ProfileError};
use std::process::ExitCode;

/// Profile commands.
#[derive(clap::Subcommand, Debug)]
pub enum ProfileCommand {
    /// Add or replace a connection.
    Set {
        /// Connection id.
        id: String,
        /// Scheme, e.g. basic, smart-backend, azure-ad.
        #[arg(long)]
        scheme: String,
        /// FHIR base URL.
        #[arg(long)]
        base_url: String,
        /// A setting 'key=value' (repeatable): the scheme's, or the connection's (timeouts...).
        #[arg(long = "set", value_name = "K=V")]
        settings: Vec<String>,
        /// Accept secrets on the command line (prefer *-file or *-env settings).
        #[arg(long)]
        allow_inline_secret: bool,
    },
    /// List the connections.
    List {
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Show a connection's settings (secrets as ***).
    Describe {
        /// Connection id.
        id: String,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Remove a connection.
    Remove {
        /// Connection id.
        id: String,
    },
}

impl From<ProfileError> for CliError {
    fn from(e: ProfileError) -> Self {
        match e {
            ProfileError::Parse(e) => Self::Host(e),
            ProfileError::Check(e) => Self::WithNote {
                before: Some("the file was not changed:".into()),
                error: Box::new(Self::Host(e)),
                after: None,
            },
            e @ ProfileError::Write { .. } => Self::Failed(e.to_string()),
            e => Self::Usage(e.to_string()),
        }
    }
}

/// Runs a profile command.
pub fn run(g: &Global, command: ProfileCommand) -> CmdResult {
    let path = &g.config;
    let edit = match command {
        ProfileCommand::List { output } => {
            let rows = file::list(&file::read(path)?);
            match output {
                Output::Json => print_json(&rows),
                Output::Human => {
                    let w = rows.iter().map(|r| r.id.len()).max().unwrap_or(2);
                    for r in rows {
                        println!("{:w$}  {:24}  {}", r.id, r.schemes.join("+"), r.base_url);
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        ProfileCommand::Describe { id, output } => {
            let doc = file::read(path)?;
            let registry = g.registry();
            // The store is best effort here: describing the file must work without it.
            let state = fhirconn_host::credential_state(
                &doc,
                &registry,
                fhirconn_host::state::credential_store(),
                &id,
            );
            match output {
                Output::Json => {
                    let mut v = file::masked(&doc, &id, &registry)?;
                    if let (Some(obj), Ok(state)) = (v.as_object_mut(), &state) {
                        obj.insert(
                            "credentials".into(),
                            serde_json::json!({
                                "signed-in": state.signed_in,
                                "token-cached-until": state.token_cached_until.map(|t| {
                                    t.duration_since(std::time::UNIX_EPOCH)
                                        .map_or(0, |d| d.as_secs())
                                }),
                            }),
                        );
                    }
                    print_json(&v)
                }
                Output::Human => {
                    print!("{}", file::describe(&doc, &id, &registry)?);
                    match state {
                        Ok(state) => println!("# credentials: {state}"),
                        Err(e) => println!("# credentials: unknown ({e})"),
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        ProfileCommand::Remove { id } => file::Edit::Remove(id),
        ProfileCommand::Set {
            id,
            scheme,
            base_url,
            settings,
            allow_inline_secret,
        } => {
            let mut pairs = Vec::new();
            for s in settings {
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("--set {s}: expected key=value")))?;
                pairs.push((k.trim().to_string(), v.to_string()));
            }
            file::Edit::Set(profile::ProfileSet {
                id,
                scheme,
                base_url,
                settings: pairs,
                allow_inline_secret,
            })
        }
    };
    file::apply(path, &edit, &g.registry())?;
    println!("updated {}", path.display());
    Ok(ExitCode::SUCCESS)
}
