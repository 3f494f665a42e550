//! PTY sessions (`process/pty…`): interactive login shells on
//! pseudo-terminals that outlive their WebSocket connections.
//!
//! A request becomes a [`PtyPlan`] (`plan`: shell, user, env, cwd), which
//! `terminal` starts on a new pseudo-terminal; `session` holds each
//! session's state and the pump task that moves bytes between the terminal
//! and a bounded scrollback (`scrollback`). [`Ptys`] is the registry the
//! HTTP edge talks to; `wire` has the pure pieces of the WebSocket
//! protocol. Sessions leave the registry when their shell exits or is
//! killed.
//!
//! Memory is bounded per session: [`SCROLLBACK_BYTES`] of output (oldest
//! dropped first), [`INPUT_QUEUE`] pending input frames, and at most
//! [`MAX_PTYS`] sessions exist at once.

mod plan;
mod scrollback;
mod session;
mod terminal;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::process::{ProcessContext, ProcessError};

pub use plan::{PtyPlan, WindowSize, DEFAULT_TERM, MAX_DIMENSION};
pub use session::{Output, Pty};

/// Output kept per session for clients that attach later or fall behind.
pub const SCROLLBACK_BYTES: usize = 512 * 1024;
/// Input frames queued per session while the shell is not reading.
pub const INPUT_QUEUE: usize = 16;
/// Sessions (running or waiting for a lazy start) that may exist at once.
pub const MAX_PTYS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("PTY session {id:?} not found")]
    NotFound { id: String },
    #[error("PTY session {id:?} already exists")]
    AlreadyExists { id: String },
    #[error("PTY session {id:?} has exited")]
    Exited { id: String },
    #[error("{0}")]
    Invalid(String),
    #[error("at most {limit} PTY sessions can exist at once; kill one first")]
    TooMany { limit: usize },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("starting {program} on a terminal: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How a session's shell ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status; 128+signal when killed by a signal.
    pub code: i32,
}

impl ExitInfo {
    fn from_wait(status: std::io::Result<std::process::ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        let code = match status {
            Ok(s) => s
                .code()
                .or_else(|| s.signal().map(|sig| 128 + sig))
                .unwrap_or(1),
            Err(_) => 1,
        };
        ExitInfo { code }
    }

    fn killed() -> Self {
        ExitInfo {
            code: 128 + libc::SIGKILL,
        }
    }

    /// Daytona's description of a non-zero exit; `None` for 0.
    pub fn reason(&self) -> Option<String> {
        Some(match self.code {
            0 => return None,
            130 => "Ctrl+C".into(),
            137 => "SIGKILL".into(),
            143 => "SIGTERM".into(),
            c if c > 128 => format!("signal {}", c - 128),
            _ => "non-zero exit".into(),
        })
    }
}

/// A session as `GET /process/pty/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyInfo {
    pub id: String,
    pub cwd: String,
    pub envs: BTreeMap<String, String>,
    pub size: WindowSize,
    pub created_at: SystemTime,
    /// The shell is running (false while a lazy session waits to start).
    pub active: bool,
    pub lazy_start: bool,
}

/// What a new session is asked to be.
#[derive(Debug, Clone, Default)]
pub struct CreateParams {
    /// `None`: a fresh UUID.
    pub id: Option<String>,
    /// Relative to the work dir; `None`: the work dir.
    pub cwd: Option<String>,
    pub envs: BTreeMap<String, String>,
    pub size: WindowSize,
    /// Start the shell on the first attach instead of now.
    pub lazy_start: bool,
    /// Run this command (`shell -c`) instead of an interactive login
    /// shell (Atoll's own: `ssh -t host cmd`).
    pub command: Option<String>,
}

/// Every PTY session of this daemon.
#[derive(Debug, Default)]
pub struct Ptys {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    by_id: HashMap<String, Arc<Pty>>,
    next_seq: u64,
}

impl Ptys {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a session and, unless it is lazy, starts its shell.
    pub fn create(&self, ctx: &ProcessContext, params: CreateParams) -> Result<Arc<Pty>, PtyError> {
        let id = params
            .id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        plan::check_id(&id)?;
        let plan = plan::pty_plan(
            ctx,
            params.cwd.as_deref(),
            params.command.as_deref(),
            params.envs,
            is_executable,
        )?;
        let mut reg = self.lock();
        if reg.by_id.contains_key(&id) {
            return Err(PtyError::AlreadyExists { id });
        }
        if reg.by_id.len() >= MAX_PTYS {
            return Err(PtyError::TooMany { limit: MAX_PTYS });
        }
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let pty = Arc::new(Pty::new(
            id.clone(),
            plan,
            params.size,
            params.lazy_start,
            seq,
            Arc::downgrade(&self.registry),
        ));
        // Registered before the shell starts, so an instant exit finds
        // the entry to remove.
        reg.by_id.insert(id.clone(), Arc::clone(&pty));
        if !params.lazy_start {
            if let Err(e) = pty.start() {
                reg.by_id.remove(&id);
                return Err(e);
            }
        }
        tracing::debug!(id = %id, lazy = params.lazy_start, "PTY session created");
        Ok(pty)
    }

    /// Sessions in creation order.
    pub fn list(&self) -> Vec<PtyInfo> {
        let mut ptys: Vec<Arc<Pty>> = self.lock().by_id.values().cloned().collect();
        ptys.sort_by_key(|p| p.seq);
        ptys.iter().map(|p| p.info()).collect()
    }

    pub fn get(&self, id: &str) -> Result<Arc<Pty>, PtyError> {
        self.lock()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| PtyError::NotFound { id: id.to_string() })
    }

    /// The session to attach a client to, its shell started if it was lazy.
    pub fn attach(&self, id: &str) -> Result<Arc<Pty>, PtyError> {
        let pty = self.get(id)?;
        pty.start()?;
        Ok(pty)
    }

    pub fn resize(&self, id: &str, size: WindowSize) -> Result<PtyInfo, PtyError> {
        self.get(id)?.resize(size)
    }

    /// Removes the session and SIGKILLs its processes; returns once the
    /// shell is reaped (or after a bounded wait).
    pub async fn kill(&self, id: &str) -> Result<(), PtyError> {
        let pty = self
            .lock()
            .by_id
            .remove(id)
            .ok_or_else(|| PtyError::NotFound { id: id.to_string() })?;
        pty.kill().await;
        tracing::debug!(id = %id, "PTY session killed");
        Ok(())
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::ExitInfo;

    #[test]
    fn exit_reasons_follow_daytona() {
        let reason = |code| ExitInfo { code }.reason();
        assert_eq!(reason(0), None);
        assert_eq!(reason(1).as_deref(), Some("non-zero exit"));
        assert_eq!(reason(130).as_deref(), Some("Ctrl+C"));
        assert_eq!(reason(137).as_deref(), Some("SIGKILL"));
        assert_eq!(reason(143).as_deref(), Some("SIGTERM"));
        assert_eq!(reason(129).as_deref(), Some("signal 1"));
        assert_eq!(ExitInfo::killed().code, 137);
    }
}
