//! Executes an [`ExecPlan`]: spawn in a new process group with stdout and
//! stderr on one pipe, feed stdin, capture at most `limit` bytes while
//! draining the rest, then reap. On timeout (or if the caller goes away)
//! the whole process group is SIGKILLed.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;

use super::plan::{ExecPlan, StdinSource};
use super::ProcessError;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit status; 128+signal when killed by a signal; -1 if it never ran.
    pub exit_code: i32,
    /// Combined stdout and stderr (lossy UTF-8), possibly truncated.
    pub output: String,
}

impl Outcome {
    fn spawn_failed(program: &str, e: &io::Error) -> Self {
        Outcome {
            exit_code: -1,
            output: format!("failed to start {program}: {e}"),
        }
    }
}

/// Runs the plan to completion. Errors only for a timeout or when the
/// plumbing (pipe, memfd) cannot be set up; a program that cannot be
/// started is an [`Outcome`] with exit code -1.
pub async fn run(plan: &ExecPlan, limit: usize) -> Result<Outcome, ProcessError> {
    run_inner(plan, limit, None)
        .await
        .map(|(outcome, _)| outcome)
}

/// [`run`] with a side channel: the command gets the write end of a pipe as
/// fd 3 (so the plan must have no script) and what it writes there, at most
/// `side_limit` bytes, is returned beside the outcome. Code-run's Python
/// driver reports charts this way, apart from the code's own output.
pub async fn run_with_side_channel(
    plan: &ExecPlan,
    limit: usize,
    side_limit: usize,
) -> Result<(Outcome, Vec<u8>), ProcessError> {
    run_inner(plan, limit, Some(side_limit)).await
}

async fn run_inner(
    plan: &ExecPlan,
    limit: usize,
    side_limit: Option<usize>,
) -> Result<(Outcome, Vec<u8>), ProcessError> {
    let io_err = |what| move |source| ProcessError::Io { what, source };
    let (tx, rx) = tokio::net::unix::pipe::pipe().map_err(io_err("creating output pipe"))?;
    let out_w = tx
        .into_blocking_fd()
        .map_err(io_err("creating output pipe"))?;
    let err_w = out_w.try_clone().map_err(io_err("creating output pipe"))?;
    let script = match &plan.script {
        Some(bytes) => Some(script_memfd(bytes).map_err(io_err("passing the command script"))?),
        None => None,
    };
    let side = match side_limit {
        Some(_) if script.is_some() => {
            return Err(ProcessError::Io {
                what: "preparing the command",
                source: io::Error::other("a command with a script has no side channel"),
            })
        }
        Some(side_limit) => {
            let (tx, rx) =
                tokio::net::unix::pipe::pipe().map_err(io_err("creating the side channel"))?;
            let w = tx
                .into_blocking_fd()
                .map_err(io_err("creating the side channel"))?;
            Some((w, rx, side_limit))
        }
        None => None,
    };
    let fd3 = script
        .as_ref()
        .or(side.as_ref().map(|(w, _, _)| w))
        .map(|f| f.as_raw_fd());
    let mut cmd = super::child::user_command(plan, fd3).map_err(io_err("preparing the command"))?;
    cmd.stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .stdin(match plan.stdin {
            StdinSource::Null => Stdio::null(),
            StdinSource::Bytes(_) => Stdio::piped(),
        });
    let spawned = cmd.spawn();
    // Our copies of the pipes' write ends live in `cmd` (and `side`): close
    // them so the readers see EOF once the command's process tree is done
    // with them.
    drop(cmd);
    drop(script);
    let side = side.map(|(w, rx, side_limit)| {
        drop(w);
        (rx, side_limit)
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Ok((Outcome::spawn_failed(&plan.program, &e), Vec::new())),
    };
    let Some(pid) = child.id() else {
        return Err(ProcessError::Io {
            what: "spawning",
            source: io::Error::other("child exited before its pid was read"),
        });
    };
    let mut group = GroupKiller::new(pid);
    let stdin = child.stdin.take();
    let stdin_bytes = match &plan.stdin {
        StdinSource::Bytes(b) => Some(b.as_slice()),
        StdinSource::Null => None,
    };

    // Drain first, then reap: the group leader stays unreaped (its pid
    // pinned) for as long as the group may still need killing.
    let side_drain = async {
        match side {
            Some((rx, side_limit)) => drain(rx, side_limit).await.kept,
            None => Vec::new(),
        }
    };
    let work = async {
        let (captured, side, ()) =
            tokio::join!(drain(rx, limit), side_drain, feed(stdin, stdin_bytes));
        let status = child.wait().await;
        (captured, side, status)
    };
    let finished = match plan.timeout() {
        None => Some(work.await),
        Some(limit) => tokio::time::timeout(limit, work).await.ok(),
    };
    let Some((captured, side, status)) = finished else {
        group.kill();
        let _ = child.wait().await;
        group.disarm();
        return Err(ProcessError::Timeout {
            secs: plan.timeout_secs.unwrap_or_default(),
        });
    };
    group.disarm();
    let status = status.map_err(io_err("waiting for the command"))?;
    let exit_code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1);
    Ok((
        Outcome {
            exit_code,
            output: captured.render(),
        },
        side,
    ))
}

/// Output kept so far and how much was dropped.
struct Captured {
    kept: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Captured {
    fn render(self) -> String {
        let mut s = match String::from_utf8(self.kept) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if self.dropped > 0 {
            s.push_str(&truncation_notice(self.limit));
        }
        s
    }
}

/// The line appended to output cut at `limit` bytes.
pub fn truncation_notice(limit: usize) -> String {
    format!("\n[atoll: output truncated after {limit} bytes]\n")
}

/// Reads the pipe to EOF, keeping the first `limit` bytes.
async fn drain(mut rx: tokio::net::unix::pipe::Receiver, limit: usize) -> Captured {
    let mut captured = Captured {
        kept: Vec::new(),
        limit,
        dropped: 0,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = limit.saturating_sub(captured.kept.len());
        let take = n.min(room);
        captured.kept.extend_from_slice(&buf[..take]);
        captured.dropped += (n - take) as u64;
    }
    captured
}

/// Writes stdin then closes it; a command that exits without reading is
/// fine (EPIPE is ignored).
async fn feed(stdin: Option<ChildStdin>, bytes: Option<&[u8]>) {
    if let (Some(mut stdin), Some(bytes)) = (stdin, bytes) {
        let _ = stdin.write_all(bytes).await;
        let _ = stdin.shutdown().await;
    }
}

/// A memfd holding `bytes`, for the shell to read its script from.
pub(crate) fn script_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a NUL-terminated literal name and flags; a
    // non-negative result is a fresh fd nobody else owns.
    let fd = unsafe { libc::memfd_create(c"atoll-command".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned only here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = File::from(owned);
    file.write_all(bytes)?;
    Ok(OwnedFd::from(file))
}

/// SIGKILLs a command's process group unless disarmed: on timeout, and
/// when the request future is dropped (client gone) mid-run.
struct GroupKiller {
    pgid: Option<libc::pid_t>,
}

impl GroupKiller {
    fn new(pid: u32) -> Self {
        GroupKiller {
            pgid: libc::pid_t::try_from(pid).ok(),
        }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: the group leader is our child and is not reaped until
            // after this call (`disarm` follows the reap), so the pgid cannot
            // have been reused by an unrelated group.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}
