//! Plans as data for PTY sessions: which shell runs, as whom, where, with
//! which environment and window size. Built and validated before anything
//! is spawned; the environment layering and cwd rules are those of
//! `crate::process::plan`, plus `TERM`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::process::plan::{checked_cwd, command_env, credentials};
use crate::process::{ExecPlan, ProcessContext, StdinSource};

use super::PtyError;

/// Window size when the request names none.
pub const DEFAULT_COLS: u16 = 80;
pub const DEFAULT_ROWS: u16 = 24;
/// Largest accepted width or height (Daytona's limit).
pub const MAX_DIMENSION: u16 = 1000;
/// `TERM` unless the request sets one.
pub const DEFAULT_TERM: &str = "xterm-256color";
/// Longest accepted session id.
pub const MAX_ID_BYTES: usize = 256;
/// The path segment of the create-and-attach route, so never an id.
pub const RESERVED_ID: &str = "create-connect";
/// Shells tried, in order, after the user's own.
const FALLBACK_SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u16,
    pub rows: u16,
}

impl Default for WindowSize {
    fn default() -> Self {
        WindowSize {
            cols: DEFAULT_COLS,
            rows: DEFAULT_ROWS,
        }
    }
}

impl WindowSize {
    /// Validates a requested size; absent dimensions take the defaults.
    pub fn checked(cols: Option<i64>, rows: Option<i64>) -> Result<Self, PtyError> {
        Ok(WindowSize {
            cols: dimension("cols", cols, DEFAULT_COLS)?,
            rows: dimension("rows", rows, DEFAULT_ROWS)?,
        })
    }
}

fn dimension(name: &str, value: Option<i64>, default: u16) -> Result<u16, PtyError> {
    match value {
        None => Ok(default),
        Some(v) => u16::try_from(v)
            .ok()
            .filter(|v| (1..=MAX_DIMENSION).contains(v))
            .ok_or_else(|| {
                PtyError::Invalid(format!(
                    "{name} must be between 1 and {MAX_DIMENSION}, not {v}"
                ))
            }),
    }
}

/// Everything needed to start one PTY session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyPlan {
    /// The shell, its argv, full environment, cwd and credentials.
    pub exec: ExecPlan,
    /// The variables the request set (with the default `TERM`), as the
    /// session's info reports them.
    pub envs: BTreeMap<String, String>,
}

/// Checks a session id: it becomes a URL path segment.
pub fn check_id(id: &str) -> Result<(), PtyError> {
    let problem = if id.is_empty() {
        Some("must not be empty".to_string())
    } else if id.len() > MAX_ID_BYTES {
        Some(format!(
            "is {} bytes; the limit is {MAX_ID_BYTES}",
            id.len()
        ))
    } else if id.contains('/') || id.chars().any(char::is_control) {
        Some("must not contain '/' or control characters".to_string())
    } else if id == RESERVED_ID {
        Some(format!("{RESERVED_ID:?} is reserved"))
    } else {
        None
    };
    match problem {
        Some(p) => Err(PtyError::Invalid(format!("PTY session id {p}"))),
        None => Ok(()),
    }
}

/// The shell a PTY runs: the user's login shell when it is a real one
/// (absolute, not `nologin`/`false`, and `usable`), else bash, else sh.
pub fn shell_for(user_shell: &Path, usable: impl Fn(&Path) -> bool) -> PathBuf {
    let not_a_shell = |p: &Path| {
        matches!(
            p.file_name().and_then(|n| n.to_str()),
            Some("nologin" | "false" | "true" | "sync" | "halt" | "shutdown")
        )
    };
    std::iter::once(user_shell)
        .chain(FALLBACK_SHELLS.iter().map(Path::new))
        .find(|p| p.is_absolute() && !not_a_shell(p) && usable(p))
        .unwrap_or(Path::new("/bin/sh"))
        .to_path_buf()
}

/// Plans an interactive login shell (`-i -l`, as Daytona starts it) as the
/// sandbox user in `cwd` (relative to the work dir; default the work dir)
/// with the layered environment of `process::plan::command_env` plus the
/// request's `envs` and `TERM=xterm-256color` unless they set it; with a
/// `command`, the shell runs that (`-c`) instead.
pub fn pty_plan(
    ctx: &ProcessContext,
    cwd: Option<&str>,
    command: Option<&str>,
    mut envs: BTreeMap<String, String>,
    usable: impl Fn(&Path) -> bool,
) -> Result<PtyPlan, PtyError> {
    envs.entry("TERM".into())
        .or_insert_with(|| DEFAULT_TERM.into());
    let env = command_env(ctx, &envs)?;
    let cwd = checked_cwd(&ctx.work_dir, cwd)?;
    let shell = shell_for(&ctx.identity.shell, usable);
    Ok(PtyPlan {
        exec: ExecPlan {
            program: shell.to_string_lossy().into_owned(),
            args: match command {
                Some(c) => vec!["-c".into(), c.into()],
                None => vec!["-i".into(), "-l".into()],
            },
            env,
            cwd,
            credentials: credentials(ctx),
            stdin: StdinSource::Null,
            script: None,
            timeout_secs: None,
        },
        envs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::process::ProcessError;

    fn ctx() -> ProcessContext {
        ProcessContext {
            identity: Identity {
                name: "daytona".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/daytona".into(),
                shell: "/bin/zsh".into(),
                groups: vec![1000],
                switch: true,
            },
            work_dir: std::env::temp_dir(),
            inherited_env: BTreeMap::from([("TERM".to_string(), "dumb".to_string())]),
            sandbox_env: crate::process::env::SandboxEnv::from(BTreeMap::from([(
                "SB".to_string(),
                "1".to_string(),
            )])),
        }
    }

    #[test]
    fn sizes_default_and_stay_in_range() {
        assert_eq!(
            WindowSize::checked(None, None).ok(),
            Some(WindowSize::default())
        );
        assert_eq!(
            WindowSize::checked(Some(1000), Some(1)).ok(),
            Some(WindowSize {
                cols: 1000,
                rows: 1
            })
        );
        for (c, r) in [(0, 0), (0, 24), (80, 0), (1001, 24), (80, -1), (80, 70000)] {
            assert!(
                matches!(
                    WindowSize::checked(Some(c), Some(r)),
                    Err(PtyError::Invalid(_))
                ),
                "{c}x{r}"
            );
        }
    }

    #[test]
    fn ids_must_fit_a_path_segment() {
        assert!(check_id("my-session_1.x").is_ok());
        assert!(check_id(&"a".repeat(MAX_ID_BYTES)).is_ok());
        for bad in ["", "a/b", "a\nb", RESERVED_ID] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"a".repeat(MAX_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn shell_falls_back_from_non_shells() {
        let all = |_: &Path| true;
        assert_eq!(
            shell_for(Path::new("/bin/zsh"), all),
            PathBuf::from("/bin/zsh")
        );
        for not_shell in ["/usr/sbin/nologin", "/bin/false", "zsh", ""] {
            assert_eq!(
                shell_for(Path::new(not_shell), all),
                PathBuf::from("/bin/bash"),
                "{not_shell}"
            );
        }
        let no_bash = |p: &Path| p != Path::new("/bin/bash") && p != Path::new("/bin/zsh");
        assert_eq!(
            shell_for(Path::new("/bin/zsh"), no_bash),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            shell_for(Path::new("/bin/zsh"), |_| false),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn plan_layers_env_and_defaults_term() {
        let plan = pty_plan(
            &ctx(),
            None,
            None,
            BTreeMap::from([("FOO".to_string(), "bar".to_string())]),
            |_| true,
        )
        .expect("plan");
        assert_eq!(plan.exec.program, "/bin/zsh");
        assert_eq!(plan.exec.args, ["-i", "-l"]);
        assert_eq!(plan.exec.env["TERM"], DEFAULT_TERM);
        assert_eq!(plan.exec.env["FOO"], "bar");
        assert_eq!(plan.exec.env["SB"], "1");
        assert_eq!(plan.exec.env["HOME"], "/home/daytona");
        assert_eq!(plan.exec.cwd, std::env::temp_dir());
        assert_eq!(plan.exec.credentials.as_ref().map(|c| c.uid), Some(1000));
        assert_eq!(
            plan.envs,
            BTreeMap::from([
                ("FOO".to_string(), "bar".to_string()),
                ("TERM".to_string(), DEFAULT_TERM.to_string())
            ])
        );

        let plan = pty_plan(
            &ctx(),
            Some("/"),
            None,
            BTreeMap::from([("TERM".to_string(), "vt100".to_string())]),
            |_| true,
        )
        .expect("plan");
        assert_eq!(plan.exec.env["TERM"], "vt100");
        assert_eq!(plan.exec.cwd, PathBuf::from("/"));

        assert!(matches!(
            pty_plan(&ctx(), Some("/no/such/dir"), None, BTreeMap::new(), |_| {
                true
            }),
            Err(PtyError::Process(ProcessError::BadCwd { .. }))
        ));
        assert!(matches!(
            pty_plan(
                &ctx(),
                None,
                None,
                BTreeMap::from([("A=B".to_string(), String::new())]),
                |_| true
            ),
            Err(PtyError::Process(ProcessError::InvalidRequest(_)))
        ));
    }
}
