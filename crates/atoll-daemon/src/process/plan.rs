//! Plans as data: what a command will be (program, argv, environment, cwd,
//! identity, stdin, timeout), built and validated before anything is
//! spawned so the rules are easy to read and unit-test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ExecuteParams, ProcessContext, ProcessError, MAX_COMMAND_BYTES};

/// `PATH` when neither the daemon nor the sandbox env provides one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The shell commands run under.
pub const SHELL: &str = "/bin/sh";
/// Longer commands are not passed as an argument (Linux caps a single
/// argument at 128 KiB) but as a script on fd 3.
pub const MAX_INLINE_COMMAND: usize = 100 * 1024;
/// Fd a long command's script is handed to the shell on.
pub const SCRIPT_FD: i32 = 3;

/// Where a command's stdin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinSource {
    /// `/dev/null`.
    Null,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
}

/// Credentials a command switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything needed to start one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    /// Program name or path (looked up on the plan's `PATH`).
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment (nothing else is inherited).
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// `None`: run as the daemon's own user.
    pub credentials: Option<Credentials>,
    pub stdin: StdinSource,
    /// A shell script handed over on fd [`SCRIPT_FD`] (long commands).
    pub script: Option<Vec<u8>>,
    /// Seconds; `None`: no timeout.
    pub timeout_secs: Option<u64>,
}

impl ExecPlan {
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_secs.map(Duration::from_secs)
    }
}

/// Whether `name=value` can be put in an environment.
pub(crate) fn valid_env(name: &str, value: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0') && !value.contains('\0')
}

/// The environment of a command, lowest layer first: the daemon's own
/// environment, the identity's `HOME`/`USER`/`LOGNAME`/`SHELL` (and a
/// default `PATH` if none), the sandbox env, the request's env. Request
/// variables that cannot be represented are an error; inherited ones are
/// dropped.
pub fn command_env(
    ctx: &ProcessContext,
    request: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ProcessError> {
    if let Some((k, _)) = request.iter().find(|(k, v)| !valid_env(k, v)) {
        return Err(ProcessError::InvalidRequest(format!(
            "invalid environment variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
        )));
    }
    let layer = ctx.sandbox_env.snapshot();
    let mut env: BTreeMap<String, String> = ctx
        .inherited_env
        .iter()
        .filter(|(k, v)| valid_env(k, v) && !layer.removed.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let id = &ctx.identity;
    env.insert("HOME".into(), id.home.to_string_lossy().into_owned());
    env.insert("USER".into(), id.name.clone());
    env.insert("LOGNAME".into(), id.name.clone());
    env.insert("SHELL".into(), id.shell.to_string_lossy().into_owned());
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    for (k, v) in layer.set.iter().filter(|(k, v)| valid_env(k, v)) {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in request {
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

/// A request's cwd as a path: relative ones against the work dir.
pub fn cwd_path(work_dir: &Path, cwd: Option<&str>) -> PathBuf {
    match cwd {
        None | Some("") => work_dir.to_path_buf(),
        Some(c) => work_dir.join(c),
    }
}

/// Resolves and checks the cwd: an explicit one must be an existing
/// directory; the default work dir falls back to `/` if it is missing.
pub fn checked_cwd(work_dir: &Path, cwd: Option<&str>) -> Result<PathBuf, ProcessError> {
    let path = cwd_path(work_dir, cwd);
    if let Some(c) = cwd.filter(|c| !c.is_empty()) {
        if c.contains('\0') {
            return Err(ProcessError::InvalidRequest(
                "cwd contains a NUL byte".into(),
            ));
        }
        if !path.is_dir() {
            return Err(ProcessError::BadCwd { path });
        }
        return Ok(path);
    }
    Ok(if path.is_dir() {
        path
    } else {
        PathBuf::from("/")
    })
}

pub fn credentials(ctx: &ProcessContext) -> Option<Credentials> {
    let id = &ctx.identity;
    id.switch.then(|| Credentials {
        uid: id.uid,
        gid: id.gid,
        groups: id.groups.clone(),
    })
}

/// Seconds of a request timeout; 0 or absent means none.
pub fn timeout_secs(timeout: Option<u64>) -> Option<u64> {
    timeout.filter(|t| *t > 0)
}

/// `/bin/sh -c <command>`, or for long commands `/bin/sh` reading the
/// command from fd 3 (the script first closes fd 3 so the user's command
/// does not inherit it).
pub fn shell_plan(ctx: &ProcessContext, params: &ExecuteParams) -> Result<ExecPlan, ProcessError> {
    let command = &params.command;
    if command.len() > MAX_COMMAND_BYTES {
        return Err(ProcessError::CommandTooLarge {
            len: command.len(),
            limit: MAX_COMMAND_BYTES,
        });
    }
    if command.trim().is_empty() {
        return Err(ProcessError::InvalidRequest("command is empty".into()));
    }
    if command.contains('\0') {
        return Err(ProcessError::InvalidRequest(
            "command contains a NUL byte".into(),
        ));
    }
    let (args, script) = if command.len() <= MAX_INLINE_COMMAND {
        (vec!["-c".to_string(), command.clone()], None)
    } else {
        let mut script = format!("exec {SCRIPT_FD}<&-\n").into_bytes();
        script.extend_from_slice(command.as_bytes());
        (vec![format!("/proc/self/fd/{SCRIPT_FD}")], Some(script))
    };
    Ok(ExecPlan {
        program: SHELL.into(),
        args,
        env: command_env(ctx, &params.envs)?,
        cwd: checked_cwd(&ctx.work_dir, params.cwd.as_deref())?,
        credentials: credentials(ctx),
        stdin: StdinSource::Null,
        script,
        timeout_secs: timeout_secs(params.timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn ctx(switch: bool) -> ProcessContext {
        ProcessContext {
            identity: Identity {
                name: "daytona".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/daytona".into(),
                shell: "/bin/bash".into(),
                groups: vec![1000, 27],
                switch,
            },
            work_dir: std::env::temp_dir(),
            inherited_env: BTreeMap::from([
                ("HOME".to_string(), "/root".to_string()),
                ("LANG".to_string(), "C.UTF-8".to_string()),
                ("A".to_string(), "inherited".to_string()),
            ]),
            sandbox_env: crate::process::env::SandboxEnv::from(BTreeMap::from([
                ("A".to_string(), "sandbox".to_string()),
                ("B".to_string(), "sandbox".to_string()),
            ])),
        }
    }

    #[test]
    fn env_layers_in_order() {
        let req = BTreeMap::from([("B".to_string(), "request".to_string())]);
        let env = command_env(&ctx(true), &req).expect("valid env");
        assert_eq!(env["HOME"], "/home/daytona");
        assert_eq!(env["USER"], "daytona");
        assert_eq!(env["LOGNAME"], "daytona");
        assert_eq!(env["SHELL"], "/bin/bash");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["LANG"], "C.UTF-8");
        assert_eq!(env["A"], "sandbox");
        assert_eq!(env["B"], "request");
    }

    #[test]
    fn rejects_bad_request_env() {
        for (k, v) in [("", "x"), ("A=B", "x"), ("A", "x\0y")] {
            let req = BTreeMap::from([(k.to_string(), v.to_string())]);
            assert!(command_env(&ctx(false), &req).is_err(), "{k:?}={v:?}");
        }
    }

    #[test]
    fn cwd_resolution() {
        let wd = Path::new("/work");
        assert_eq!(cwd_path(wd, None), PathBuf::from("/work"));
        assert_eq!(cwd_path(wd, Some("")), PathBuf::from("/work"));
        assert_eq!(cwd_path(wd, Some("src")), PathBuf::from("/work/src"));
        assert_eq!(cwd_path(wd, Some("/tmp")), PathBuf::from("/tmp"));
        assert!(matches!(
            checked_cwd(wd, Some("/definitely/not/here")),
            Err(ProcessError::BadCwd { .. })
        ));
        assert_eq!(
            checked_cwd(Path::new("/no/such/workdir"), None).ok(),
            Some(PathBuf::from("/"))
        );
    }

    #[test]
    fn shell_plan_inline_and_script() {
        let c = ctx(true);
        let plan = shell_plan(
            &c,
            &ExecuteParams {
                command: "echo hi".into(),
                timeout: Some(0),
                ..Default::default()
            },
        )
        .expect("plan");
        assert_eq!(plan.program, SHELL);
        assert_eq!(plan.args, vec!["-c".to_string(), "echo hi".to_string()]);
        assert_eq!(plan.timeout_secs, None);
        assert_eq!(plan.credentials.as_ref().map(|c| c.uid), Some(1000));
        assert_eq!(plan.stdin, StdinSource::Null);

        let long = "x".repeat(MAX_INLINE_COMMAND + 1);
        let plan = shell_plan(
            &c,
            &ExecuteParams {
                command: long.clone(),
                timeout: Some(5),
                ..Default::default()
            },
        )
        .expect("plan");
        assert_eq!(plan.args, vec!["/proc/self/fd/3".to_string()]);
        let script = plan.script.expect("script");
        assert!(script.starts_with(b"exec 3<&-\n"));
        assert!(script.ends_with(long.as_bytes()));
        assert_eq!(plan.timeout_secs, Some(5));

        let err = shell_plan(
            &c,
            &ExecuteParams {
                command: "y".repeat(MAX_COMMAND_BYTES + 1),
                ..Default::default()
            },
        );
        assert!(matches!(err, Err(ProcessError::CommandTooLarge { .. })));
        assert!(shell_plan(&ctx(false), &ExecuteParams::default()).is_err());
        assert_eq!(credentials(&ctx(false)), None);
    }
}
