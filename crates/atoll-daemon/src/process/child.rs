//! The steps a user command's process takes between fork and exec: make
//! itself the OOM killer's preferred victim instead of the daemon, put a
//! descriptor on fd 3 (a long command's script for the shell, or code-run's
//! side channel), drop to the sandbox user,
//! and enter its cwd (after dropping, so the user's permissions apply).
//!
//! Everything is prepared before the fork; `apply` only makes raw,
//! async-signal-safe syscalls (no allocation, no locks).

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use super::plan::{Credentials, ExecPlan, SCRIPT_FD};

pub(crate) struct ChildSetup {
    /// The `oom_score_adj` the child writes for itself (ASCII).
    oom_score_adj: Vec<u8>,
    credentials: Option<Credentials>,
    cwd: CString,
    fd3: Option<RawFd>,
}

impl ChildSetup {
    /// `fd3` (given to the child as fd 3) must stay open until the spawn
    /// returns.
    pub(crate) fn new(plan: &ExecPlan, fd3: Option<RawFd>) -> io::Result<Self> {
        let cwd = CString::new(plan.cwd.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cwd contains a NUL byte"))?;
        Ok(ChildSetup {
            oom_score_adj: child_oom_score_adj(own_oom_score_adj())
                .to_string()
                .into_bytes(),
            credentials: plan.credentials.clone(),
            cwd,
            fd3,
        })
    }

    /// Runs in the forked child, before exec.
    pub(crate) fn apply(&self) -> io::Result<()> {
        // SAFETY: raw syscalls on a NUL-terminated literal path and a
        // one-byte buffer that outlive the calls; no allocation happens.
        unsafe {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                // Best effort: raising a score needs no privilege.
                let v = &self.oom_score_adj;
                let _ = libc::write(fd, v.as_ptr().cast(), v.len());
                libc::close(fd);
            }
        }
        if let Some(fd) = self.fd3 {
            if fd == SCRIPT_FD {
                // SAFETY: `fd` is the open descriptor for fd 3; clearing
                // close-on-exec on it touches no memory.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else {
                // SAFETY: `fd` is the open descriptor for fd 3; dup2 onto
                // fd 3 (closing whatever was there, close-on-exec anyway)
                // yields an fd without close-on-exec.
                if unsafe { libc::dup2(fd, SCRIPT_FD) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if let Some(c) = &self.credentials {
            // SAFETY: `groups` is a live Vec whose pointer and length are
            // passed together; setgid/setuid take plain integers. Groups and
            // gid are set before uid, while still privileged.
            unsafe {
                if libc::setgroups(c.groups.len(), c.groups.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(c.gid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(c.uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // SAFETY: `cwd` is a valid NUL-terminated string owned by self.
        if unsafe { libc::chdir(self.cwd.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The score a user process gets so the OOM killer always prefers it to the
/// daemon: 0 when the daemon is protected (-1000); otherwise (hosts that
/// withhold CAP_SYS_RESOURCE, so the daemon could not go below 0) well above
/// the daemon's own score.
fn child_oom_score_adj(daemon: i32) -> i32 {
    if daemon < 0 {
        0
    } else {
        (daemon + 500).min(1000)
    }
}

/// A command for `plan` run as the sandbox user: program, args, exactly the
/// plan's environment, its own process group, and the pre-exec steps above
/// (OOM score, fd 3, user drop, cwd). Callers choose stdio and may add
/// pre-exec steps of their own, which run after these.
pub(crate) fn user_command(
    plan: &ExecPlan,
    fd3: Option<RawFd>,
) -> io::Result<tokio::process::Command> {
    let setup = ChildSetup::new(plan, fd3)?;
    let mut cmd = tokio::process::Command::new(&plan.program);
    cmd.args(&plan.args)
        .env_clear()
        .envs(&plan.env)
        .process_group(0);
    // SAFETY: `apply` only makes async-signal-safe syscalls on data prepared
    // before the fork, as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn children_always_rank_above_the_daemon() {
        assert_eq!(super::child_oom_score_adj(-1000), 0);
        assert_eq!(super::child_oom_score_adj(0), 500);
        assert_eq!(super::child_oom_score_adj(800), 1000);
    }
}
