//! Running user commands: `process/execute` and `process/code-run`.
//!
//! A request becomes an [`ExecPlan`] (program, argv, full environment, cwd,
//! identity, stdin) built by pure functions in `plan`, then `run` executes
//! it: own process group, stdout and stderr on one pipe so output
//! interleaves in order, bounded capture, timeout that SIGKILLs the whole
//! group. The privileged steps that happen between fork and exec live in
//! `child`.

pub mod charts;
pub(crate) mod child;
pub mod code_run;
pub mod env;
pub mod plan;
pub(crate) mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::identity::Identity;

pub use code_run::{code_run, CodeRunOutput, CodeRunParams, Language};
pub use plan::{ExecPlan, StdinSource};
pub use run::{run, run_with_side_channel, Outcome};

/// Most output kept per command; the rest is drained and dropped.
pub const OUTPUT_LIMIT: usize = 10 * 1024 * 1024;
/// Largest `command` accepted by `process/execute`.
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("command execution timed out after {secs} seconds; raise the timeout parameter of the request to allow longer runs")]
    Timeout { secs: u64 },
    #[error("command is {len} bytes; the limit is {limit} bytes")]
    CommandTooLarge { len: usize, limit: usize },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("working directory {} does not exist or is not a directory", path.display())]
    BadCwd { path: PathBuf },
    #[error("unsupported language {0:?}; supported: python, javascript, typescript")]
    UnsupportedLanguage(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What every command inherits: who runs it, where, and the base
/// environment.
#[derive(Debug, Clone)]
pub struct ProcessContext {
    pub identity: Identity,
    /// Absolute working directory for commands and relative cwds.
    pub work_dir: PathBuf,
    /// The daemon's own environment (minus its private variables), the
    /// bottom layer of every command's environment; it carries the image's
    /// `ENV` when the runner passes it that way.
    pub inherited_env: BTreeMap<String, String>,
    /// Sandbox env vars: given at create, changed by `POST /env`.
    pub sandbox_env: env::SandboxEnv,
}

/// `process/execute` input.
#[derive(Debug, Clone, Default)]
pub struct ExecuteParams {
    pub command: String,
    pub cwd: Option<String>,
    pub envs: BTreeMap<String, String>,
    /// Seconds; `None` or 0: no timeout.
    pub timeout: Option<u64>,
}

/// Runs `/bin/sh -c <command>` as the sandbox user. A command that cannot
/// be started yields exit code -1 with the error as output (Daytona's
/// behaviour), not an error.
pub async fn execute(ctx: &ProcessContext, params: ExecuteParams) -> Result<Outcome, ProcessError> {
    let plan = plan::shell_plan(ctx, &params)?;
    run(&plan, OUTPUT_LIMIT).await
}
