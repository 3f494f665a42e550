//! Sessions (`process/session…`): long-lived shells whose commands share
//! state (cwd, exported and plain variables, functions, background jobs),
//! with per-command logs (stdout and stderr demultiplexed, Daytona's marked
//! format), exit codes, input and live following.
//!
//! Layout: `shell` (the session shell and the one line it is sent per
//! command), `command` (a command's files, log, exit code, input and the
//! pump that fills its log), `log` (the bounded marked log, pure),
//! `entrypoint` (the image's entrypoint, started at boot as the reserved
//! entrypoint session's one command).
//!
//! Each session has a private directory under the temp dir
//! (`atoll-session-<uuid>`, mode 0711, owned by the daemon) holding, per
//! command, the script and four FIFOs (stdout, stderr, exit status, and
//! stdin for `runAsync` commands). They are removed when the command
//! finishes; the directory when the session is deleted.
//!
//! Bounds: a command keeps the newest [`LOG_LIMIT`] bytes of its marked log
//! (older bytes are dropped, the log says it was truncated); a session keeps
//! at most [`SESSION_LOG_BUDGET`] bytes of logs and command text, evicting
//! the logs of its oldest finished commands first. Commands are at most
//! [`MAX_COMMAND_BYTES`] long.
//!
//! Stdin: synchronous commands read `/dev/null`, so nothing waits for input
//! that cannot come; `runAsync` commands read a FIFO fed by `send_input`
//! and see end of file when they finish.
//!
//! Lifetimes: background processes a command starts keep running after it
//! returns (the shell outlives them and reaps them); deleting a session
//! SIGKILLs the shell's whole process group. A shell that exits (`exit` in
//! a command, `set -e`) ends the session: its running command gets the
//! shell's status, later commands are refused with 410.

pub mod command;
pub mod entrypoint;
pub mod log;
pub mod shell;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::process::ProcessContext;

pub use command::{Chunk, Command, Cursor, LogSnapshot, KILLED_EXIT_CODE};
use shell::{CommandFiles, ShellKind};

/// Newest bytes of a command's marked log kept in memory.
pub const LOG_LIMIT: usize = 4 * 1024 * 1024;
/// Bytes of logs and command text a session keeps across its commands.
pub const SESSION_LOG_BUDGET: usize = 64 * 1024 * 1024;
/// Longest command accepted.
pub const MAX_COMMAND_BYTES: usize = crate::process::MAX_COMMAND_BYTES;
/// Largest input accepted per request.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Commands of one session that may be unfinished at once (each holds
/// a few file descriptors until it finishes).
pub const MAX_PENDING_COMMANDS: usize = 256;
/// Longest session id accepted.
pub const MAX_SESSION_ID_LEN: usize = 256;
/// The id `GET /process/session/entrypoint` reports for the entrypoint
/// session (Daytona's); reserved.
pub const ENTRYPOINT_SESSION_ID: &str = "entrypoint_session_id";
/// The id of the entrypoint's command in that session (Daytona's).
pub const ENTRYPOINT_COMMAND_ID: &str = "entrypoint_command_id";
/// Reserved too: `/process/session/entrypoint` is the entrypoint's route,
/// so a session of that name could never be reached.
pub const ENTRYPOINT_ROUTE_ID: &str = "entrypoint";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session {id:?} not found")]
    NotFound { id: String },
    #[error("command {command:?} not found in session {session:?}")]
    CommandNotFound { session: String, command: String },
    #[error("session {id:?} already exists")]
    AlreadyExists { id: String },
    #[error("invalid session id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("command is {len} bytes; the limit is {limit} bytes")]
    CommandTooLarge { len: usize, limit: usize },
    #[error("input is {len} bytes; the limit is {limit} bytes per request")]
    InputTooLarge { len: usize, limit: usize },
    #[error("{0}")]
    InvalidCommand(&'static str),
    #[error("the shell of session {id:?} has exited with status {status}; delete the session and create a new one")]
    Ended { id: String, status: i32 },
    #[error("command {id:?} has already completed with exit code {exit_code}")]
    CommandCompleted { id: String, exit_code: i32 },
    #[error("command {id:?} was run synchronously, so its stdin is /dev/null; run it with runAsync to send it input")]
    NoStdin { id: String },
    #[error("session {id:?} already has {limit} unfinished commands; wait for some to finish")]
    TooManyPending { id: String, limit: usize },
    #[error("command {id:?} is not reading its input; {queue} inputs are already waiting")]
    InputBacklog { id: String, queue: usize },
    #[error("starting the session shell {shell}: {source}")]
    Spawn {
        shell: &'static str,
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

/// What `execute` is asked to run.
#[derive(Debug, Clone, Default)]
pub struct ExecuteParams {
    pub command: String,
    /// Return at once (the command's stdin is then fed by `send_input`).
    pub run_async: bool,
    pub suppress_input_echo: bool,
}

/// A session as listed.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub commands: Vec<CommandInfo>,
}

/// A command as listed.
#[derive(Debug, Clone)]
pub struct CommandInfo {
    pub id: String,
    pub command: String,
    pub exit_code: Option<i32>,
}

impl CommandInfo {
    fn of(c: &Command) -> Self {
        CommandInfo {
            id: c.id.clone(),
            command: c.text(),
            exit_code: c.exit_code(),
        }
    }
}

/// Every session of this daemon, in creation order, and the entrypoint's
/// command (kept apart: it is not listed, deleted or sent commands).
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<Vec<Arc<Session>>>,
    entrypoint: std::sync::OnceLock<entrypoint::Entrypoint>,
}

/// One session: its shell and its commands.
#[derive(Debug)]
struct Session {
    id: String,
    dir: PathBuf,
    kind: ShellKind,
    /// Process group of the shell (= its pid).
    pgid: i32,
    owner: Option<(u32, u32)>,
    /// Lines for the shell's stdin.
    lines: mpsc::UnboundedSender<Vec<u8>>,
    /// The shell's exit status once it has exited.
    ended: watch::Receiver<Option<i32>>,
    cancel: CancellationToken,
    commands: Mutex<Commands>,
    terminated: AtomicBool,
}

#[derive(Debug, Default)]
struct Commands {
    list: Vec<Arc<Command>>,
    next_seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn validate_id(id: &str) -> Result<(), SessionError> {
    let invalid = |reason| {
        Err(SessionError::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.trim().is_empty() {
        return invalid("it is empty");
    }
    if id.len() > MAX_SESSION_ID_LEN {
        return invalid("it is longer than 256 bytes");
    }
    if id.contains('/') || id.chars().any(char::is_control) {
        return invalid("it contains '/' or control characters");
    }
    if id == ENTRYPOINT_SESSION_ID || id == ENTRYPOINT_ROUTE_ID {
        return invalid("it is reserved for the entrypoint session");
    }
    Ok(())
}

fn validate_command(command: &str) -> Result<(), SessionError> {
    if command.len() > MAX_COMMAND_BYTES {
        return Err(SessionError::CommandTooLarge {
            len: command.len(),
            limit: MAX_COMMAND_BYTES,
        });
    }
    if command.trim().is_empty() {
        return Err(SessionError::InvalidCommand("command is empty"));
    }
    if command.contains('\0') {
        return Err(SessionError::InvalidCommand("command contains a NUL byte"));
    }
    Ok(())
}

/// Parents tried for session directories.
fn run_dir_parents() -> Vec<PathBuf> {
    let mut v = vec![std::env::temp_dir()];
    for p in ["/tmp", "/dev/shm"] {
        if !v.iter().any(|q| q == Path::new(p)) {
            v.push(PathBuf::from(p));
        }
    }
    v
}

fn create_session_dir() -> Result<PathBuf, SessionError> {
    let name = format!("atoll-session-{}", uuid::Uuid::new_v4().simple());
    let mut last = None;
    for parent in run_dir_parents() {
        let dir = parent.join(&name);
        match command::create_private_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(SessionError::Io {
        what: "creating the session directory",
        source: last.unwrap_or_else(|| std::io::Error::other("no temp directory")),
    })
}

impl Sessions {
    fn find(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        lock(&self.sessions)
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound { id: id.to_string() })
    }

    /// Starts a session's shell.
    pub fn create(&self, ctx: &ProcessContext, id: &str) -> Result<(), SessionError> {
        validate_id(id)?;
        let mut sessions = lock(&self.sessions);
        if sessions.iter().any(|s| s.id == id) {
            return Err(SessionError::AlreadyExists { id: id.to_string() });
        }
        let kind = ShellKind::detect();
        let spawn_err = |source| SessionError::Spawn {
            shell: kind.program(),
            source,
        };
        let plan = shell::shell_plan(ctx, kind).map_err(spawn_err)?;
        let dir = create_session_dir()?;
        let spawned = match shell::spawn(&plan) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(spawn_err(e));
            }
        };
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        tokio::spawn(write_lines(spawned.stdin, lines_rx, cancel.clone()));
        tokio::spawn(reap(spawned.child, ended_tx, id.to_string()));
        tracing::debug!(session = id, pid = spawned.pid, dir = %dir.display(), "session started");
        sessions.push(Arc::new(Session {
            id: id.to_string(),
            dir,
            kind,
            pgid: spawned.pid,
            owner: ctx.identity.owner(),
            lines: lines_tx,
            ended: ended_rx,
            cancel,
            commands: Mutex::default(),
            terminated: AtomicBool::new(false),
        }));
        Ok(())
    }

    /// Starts the image's entrypoint `argv` as the entrypoint session's
    /// command (once; later calls are ignored). Needs a tokio runtime.
    pub fn start_entrypoint(&self, ctx: &ProcessContext, argv: &[String]) {
        if argv.is_empty() || self.entrypoint.get().is_some() {
            return;
        }
        let _ = self.entrypoint.set(entrypoint::start(ctx, argv));
    }

    /// The entrypoint session: its one command, or none when the image has
    /// no entrypoint.
    pub fn entrypoint_info(&self) -> SessionInfo {
        SessionInfo {
            id: ENTRYPOINT_SESSION_ID.to_string(),
            commands: self
                .entrypoint
                .get()
                .map(|e| CommandInfo::of(&e.command))
                .into_iter()
                .collect(),
        }
    }

    /// The entrypoint's command, if the image has an entrypoint.
    pub fn entrypoint_command(&self) -> Option<Arc<Command>> {
        self.entrypoint.get().map(|e| e.command.clone())
    }

    /// Every session with its commands.
    pub fn list(&self) -> Vec<SessionInfo> {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).clone();
        sessions.iter().map(|s| s.info()).collect()
    }

    pub fn get(&self, id: &str) -> Result<SessionInfo, SessionError> {
        Ok(self.find(id)?.info())
    }

    /// A command of a session.
    pub fn command(&self, session: &str, command: &str) -> Result<Arc<Command>, SessionError> {
        let s = self.find(session)?;
        let found = lock(&s.commands)
            .list
            .iter()
            .find(|c| c.id == command)
            .cloned();
        found.ok_or_else(|| SessionError::CommandNotFound {
            session: session.to_string(),
            command: command.to_string(),
        })
    }

    /// Kills the session's process group and forgets it. The entrypoint
    /// session cannot be deleted.
    pub fn delete(&self, id: &str) -> Result<(), SessionError> {
        if id == ENTRYPOINT_SESSION_ID || id == ENTRYPOINT_ROUTE_ID {
            return Err(SessionError::InvalidId {
                id: id.to_string(),
                reason: "it is reserved for the entrypoint session",
            });
        }
        let session = {
            let mut sessions = lock(&self.sessions);
            let i = sessions
                .iter()
                .position(|s| s.id == id)
                .ok_or_else(|| SessionError::NotFound { id: id.to_string() })?;
            sessions.remove(i)
        };
        session.terminate();
        Ok(())
    }

    /// Starts a command in the session; it is running (or queued behind the
    /// session's running command) when this returns.
    pub fn execute(
        &self,
        session: &str,
        params: ExecuteParams,
    ) -> Result<Arc<Command>, SessionError> {
        validate_command(&params.command)?;
        let s = self.find(session)?;
        if let Some(status) = *s.ended.borrow() {
            return Err(SessionError::Ended {
                id: s.id.clone(),
                status,
            });
        }
        let seq = {
            let mut cmds = lock(&s.commands);
            let pending = cmds.list.iter().filter(|c| c.exit_code().is_none()).count();
            if pending >= MAX_PENDING_COMMANDS {
                return Err(SessionError::TooManyPending {
                    id: s.id.clone(),
                    limit: MAX_PENDING_COMMANDS,
                });
            }
            cmds.next_seq += 1;
            cmds.next_seq
        };
        let files = CommandFiles::new(&s.dir, seq, params.run_async);
        let pipes = command::prepare(&files, &params.command, s.owner)?;
        let cmd = Arc::new(Command::new(
            uuid::Uuid::new_v4().to_string(),
            params.command,
            params.run_async,
            params.suppress_input_echo,
            LOG_LIMIT,
        ));
        {
            let mut cmds = lock(&s.commands);
            cmds.list.push(cmd.clone());
            enforce_budget(&cmds.list);
        }
        let line = shell::wrapper_line(s.kind, &files);
        command::start(cmd.clone(), pipes, files, s.ended.clone(), s.cancel.clone());
        // A closed queue means the shell is gone; the pump then finishes
        // the command with the shell's status.
        let _ = s.lines.send(line.into_bytes());
        Ok(cmd)
    }

    /// Queues input for a running `runAsync` command.
    pub fn send_input(&self, session: &str, command: &str, data: &str) -> Result<(), SessionError> {
        if data.len() > MAX_INPUT_BYTES {
            return Err(SessionError::InputTooLarge {
                len: data.len(),
                limit: MAX_INPUT_BYTES,
            });
        }
        self.command(session, command)?.send_input(data)
    }
}

/// Evicts the logs of the oldest finished commands while the session holds
/// more than its budget.
fn enforce_budget(list: &[Arc<Command>]) {
    let mut total: usize = list.iter().map(|c| c.retained()).sum();
    for c in list {
        if total <= SESSION_LOG_BUDGET {
            break;
        }
        if c.exit_code().is_some() {
            let before = c.retained();
            c.evict();
            total = total - before + c.retained();
        }
    }
}

impl Session {
    fn info(&self) -> SessionInfo {
        let commands = lock(&self.commands)
            .list
            .iter()
            .map(|c| CommandInfo::of(c))
            .collect();
        SessionInfo {
            id: self.id.clone(),
            commands,
        }
    }

    /// Kills the process group and removes the directory (once).
    fn terminate(&self) {
        if self.terminated.swap(true, Ordering::SeqCst) {
            return;
        }
        self.cancel.cancel();
        // The shell is our child and is reaped only by `reap`. While it is
        // unreaped its pid pins the group id; once reaped, the group id stays
        // pinned by any member still alive. Only when the whole group is
        // gone could the number be reused, and then only by a new group
        // leader of this same sandbox: accepted.
        if let Err(e) = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pgid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            tracing::debug!(session = %self.id, error = %e, "killing the session's process group");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(session = %self.id, error = %e, "removing the session directory");
        }
        tracing::debug!(session = %self.id, "session deleted");
    }
}

impl Drop for Session {
    /// A daemon that drops its sessions (tests, shutdown) leaves no shells
    /// or directories behind.
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Writes queued lines to the shell until the queue closes, the shell stops
/// reading, or the session is deleted.
async fn write_lines(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    cancel: CancellationToken,
) {
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = cancel.cancelled() => None,
        };
        let Some(line) = line else { return };
        if stdin.write_all(&line).await.is_err() {
            return;
        }
    }
}

/// Waits for the shell and publishes its exit status.
async fn reap(mut child: tokio::process::Child, ended: watch::Sender<Option<i32>>, id: String) {
    use std::os::unix::process::ExitStatusExt;
    let status = match child.wait().await {
        Ok(st) => st
            .code()
            .or_else(|| st.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        Err(_) => -1,
    };
    tracing::debug!(session = %id, status, "session shell exited");
    ended.send_replace(Some(status));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert!(validate_id("s1").is_ok());
        assert!(validate_id("my session-ü").is_ok());
        for bad in [
            "",
            "  ",
            "a/b",
            "a\nb",
            ENTRYPOINT_SESSION_ID,
            ENTRYPOINT_ROUTE_ID,
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id(&"x".repeat(MAX_SESSION_ID_LEN + 1)).is_err());
    }

    #[test]
    fn commands() {
        assert!(validate_command("echo hi").is_ok());
        assert!(matches!(
            validate_command(&"y".repeat(MAX_COMMAND_BYTES + 1)),
            Err(SessionError::CommandTooLarge { .. })
        ));
        assert!(validate_command(" \n").is_err());
        assert!(validate_command("a\0b").is_err());
    }

    #[test]
    fn budget_evicts_oldest_finished_logs() {
        let list: Vec<Arc<Command>> = (0..20)
            .map(|i| {
                Arc::new(Command::new(
                    format!("c{i}"),
                    "x".into(),
                    false,
                    false,
                    LOG_LIMIT,
                ))
            })
            .collect();
        let chunk = vec![b'a'; LOG_LIMIT - 16];
        for c in &list {
            c.append(log::Stream::Stdout, &chunk);
        }
        // Nothing finished: nothing can be evicted.
        enforce_budget(&list);
        assert!(list.iter().all(|c| !c.snapshot().truncated));
        for c in &list[1..] {
            c.finish(0);
        }
        enforce_budget(&list);
        assert!(
            !list[0].snapshot().truncated,
            "running commands keep their logs"
        );
        assert!(
            list[1].snapshot().truncated,
            "the oldest finished log goes first"
        );
        assert!(!list[19].snapshot().truncated, "only as much as needed");
        assert!(list.iter().map(|c| c.retained()).sum::<usize>() <= SESSION_LOG_BUDGET);
    }
}
