//! The runtime's typed error: what went wrong, in kinds the control plane
//! maps to API errors in one place. Messages are safe to show a client (a
//! runtime never puts a host path in one).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The id is not one the runtime accepts (never used to build a path).
    #[error("invalid sandbox id {0:?}")]
    InvalidId(String),
    /// The spec names an image this runtime does not have.
    #[error("Snapshot {0} not found")]
    ImageNotFound(String),
    /// The sandbox is not running (an operation that needs it running).
    #[error("sandbox {id} is not running")]
    NotRunning { id: String },
    /// No disk space for what was asked (the sandbox's or the host's).
    #[error("{0}")]
    NoSpace(String),
    /// Every network address of the runtime is taken.
    #[error("{0}")]
    NetworkFull(String),
    /// The runtime cannot do this at all.
    #[error("this runtime cannot {0}")]
    Unsupported(&'static str),
    /// The runtime did not answer (a remote runner that is down or cut
    /// off): nothing is known about the outcome.
    #[error("the runner is unreachable: {0}")]
    Unreachable(String),
    /// Connecting to a sandbox's toolbox or one of its ports failed.
    #[error("{0}")]
    Connect(std::io::Error),
    /// A path asked for (a volume's file) does not exist.
    #[error("{0}")]
    PathNotFound(String),
    /// A path asked for cannot be used so (a directory read as a file, a
    /// write through a symlink, a non-empty directory removed alone).
    #[error("{0}")]
    BadPath(String),
    /// Anything else: the operation failed; the message says why.
    #[error("{0}")]
    Failed(String),
}

impl RuntimeError {
    /// Does the error say the outcome is unknown (nothing answered), as
    /// opposed to a failure the runtime reported?
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RuntimeError::Unreachable(_))
    }
}
