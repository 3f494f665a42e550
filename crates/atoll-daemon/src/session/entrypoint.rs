//! The entrypoint session: the image's entrypoint (Daytona's default
//! snapshot's is `sleep infinity`), started once at boot as the single
//! command of a reserved session, as Daytona's daemon runs it. It runs as
//! the sandbox user with the sandbox environment in the work dir, in its own
//! process group; its stdout and stderr fill a [`Command`] log like any
//! session command's (so the logs routes and following work the same), and
//! its exit code is recorded when it exits. It is not restarted.
//!
//! Unlike Daytona, no shell sits between the daemon and the entrypoint: the
//! argv is executed directly (exec form), which is what Daytona's quoted
//! join of the argv amounts to, minus one idle bash per sandbox.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;

use tokio::net::unix::pipe;

use super::command::{drain_now, read_some, Command};
use super::log::Stream;
use super::{ENTRYPOINT_COMMAND_ID, LOG_LIMIT};
use crate::process::plan::{self, ExecPlan, StdinSource};
use crate::process::ProcessContext;

/// Exit code recorded when the entrypoint cannot be found (as a shell says).
const NOT_FOUND_EXIT_CODE: i32 = 127;
/// Exit code recorded when the entrypoint cannot be executed otherwise.
const NOT_EXECUTABLE_EXIT_CODE: i32 = 126;

/// `argv` as one shell command line: words made only of safe characters
/// stay bare, others are single-quoted (how Daytona shows the entrypoint).
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let safe = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
            if safe {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The started entrypoint.
#[derive(Debug)]
pub struct Entrypoint {
    pub command: Arc<Command>,
    /// Its process group (= its pid); `None` when it never started.
    pgid: Option<i32>,
}

impl Drop for Entrypoint {
    /// A daemon that drops its state (tests) leaves no entrypoint behind. In
    /// a sandbox the daemon never drops it; the sandbox's end kills it.
    fn drop(&mut self) {
        if let (Some(pgid), None) = (self.pgid, self.command.exit_code()) {
            // The leader is unreaped while no exit code is recorded (the
            // pump records it right after reaping), so the group id is
            // still this entrypoint's.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Starts `argv` (non-empty); the log fills and the exit code is set by a
/// background task. A program that cannot be started is a finished command
/// with the reason on its stderr.
pub fn start(ctx: &ProcessContext, argv: &[String]) -> Entrypoint {
    let cmd = Arc::new(Command::new(
        ENTRYPOINT_COMMAND_ID.to_string(),
        shell_join(argv),
        false,
        true,
        LOG_LIMIT,
    ));
    let mut pgid = None;
    match spawn(ctx, argv) {
        Ok((child, out, err)) => {
            tracing::info!(entrypoint = %cmd.text(), pid = child.id(), "entrypoint started");
            pgid = child.id().and_then(|p| i32::try_from(p).ok());
            tokio::spawn(pump(cmd.clone(), child, out, err));
        }
        Err(e) => {
            tracing::warn!(entrypoint = %cmd.text(), error = %e, "the entrypoint cannot start");
            let program = argv.first().map(String::as_str).unwrap_or("");
            cmd.append(
                Stream::Stderr,
                format!("cannot start the entrypoint {program}: {e}\n").as_bytes(),
            );
            cmd.finish(match e.kind() {
                io::ErrorKind::NotFound => NOT_FOUND_EXIT_CODE,
                _ => NOT_EXECUTABLE_EXIT_CODE,
            });
        }
    }
    Entrypoint { command: cmd, pgid }
}

/// What the entrypoint runs as: the sandbox user, the command environment
/// without request variables, the work dir (or `/`), no timeout.
fn entrypoint_plan(ctx: &ProcessContext, argv: &[String]) -> io::Result<ExecPlan> {
    let invalid = |e: crate::process::ProcessError| io::Error::other(e.to_string());
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the entrypoint is empty"))?;
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the entrypoint contains a NUL byte",
        ));
    }
    Ok(ExecPlan {
        program: program.clone(),
        args: args.to_vec(),
        env: plan::command_env(ctx, &Default::default()).map_err(invalid)?,
        cwd: plan::checked_cwd(&ctx.work_dir, None).map_err(invalid)?,
        credentials: plan::credentials(ctx),
        stdin: StdinSource::Null,
        script: None,
        timeout_secs: None,
    })
}

fn spawn(
    ctx: &ProcessContext,
    argv: &[String],
) -> io::Result<(tokio::process::Child, pipe::Receiver, pipe::Receiver)> {
    let plan = entrypoint_plan(ctx, argv)?;
    let (out_tx, out_rx) = pipe::pipe()?;
    let (err_tx, err_rx) = pipe::pipe()?;
    let mut cmd = crate::process::child::user_command(&plan, None)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_tx.into_blocking_fd()?))
        .stderr(Stdio::from(err_tx.into_blocking_fd()?));
    let child = cmd.spawn()?;
    // The write ends live in `cmd`: dropping it leaves them to the child, so
    // the reads end when the entrypoint's process tree closes them.
    drop(cmd);
    Ok((child, out_rx, err_rx))
}

/// Moves output into the log until both pipes close; records the exit code
/// when the entrypoint exits (after taking what it wrote), while background
/// processes it left may keep appending.
async fn pump(
    cmd: Arc<Command>,
    mut child: tokio::process::Child,
    out: pipe::Receiver,
    err: pipe::Receiver,
) {
    let mut out = Some(out);
    let mut err = Some(err);
    let mut obuf = vec![0u8; 64 * 1024];
    let mut ebuf = vec![0u8; 64 * 1024];
    let mut running = true;
    while running || out.is_some() || err.is_some() {
        tokio::select! {
            r = read_some(&mut out, &mut obuf) => match r {
                Ok(n) if n > 0 => cmd.append(Stream::Stdout, &obuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => out = None,
            },
            r = read_some(&mut err, &mut ebuf) => match r {
                Ok(n) if n > 0 => cmd.append(Stream::Stderr, &ebuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => err = None,
            },
            status = child.wait(), if running => {
                running = false;
                let code = match status {
                    Ok(st) => st.code().or_else(|| st.signal().map(|s| 128 + s)).unwrap_or(-1),
                    Err(_) => -1,
                };
                // Everything it wrote before exiting is in the pipes now.
                if let Some(rx) = &out {
                    if !drain_now(rx, &mut obuf, |b| cmd.append(Stream::Stdout, b)) {
                        out = None;
                    }
                }
                if let Some(rx) = &err {
                    if !drain_now(rx, &mut ebuf, |b| cmd.append(Stream::Stderr, b)) {
                        err = None;
                    }
                }
                tracing::info!(entrypoint = %cmd.text(), exit_code = code, "entrypoint exited");
                cmd.finish(code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn joins_like_a_shell_would_read_it() {
        assert_eq!(shell_join(&argv(&["sleep", "infinity"])), "sleep infinity");
        assert_eq!(
            shell_join(&argv(&["sh", "-c", "echo hi; exit 3"])),
            "sh -c 'echo hi; exit 3'"
        );
        assert_eq!(shell_join(&argv(&["a", "", "it's"])), r"a '' 'it'\''s'");
        assert_eq!(
            shell_join(&argv(&["/usr/bin/env", "A=1", "x@y:z,w+%"])),
            "/usr/bin/env A=1 x@y:z,w+%"
        );
    }
}
