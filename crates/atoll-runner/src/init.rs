//! The init helper: a short-lived, single-threaded process (the `atoll`
//! binary invoked as `atoll-sandbox-init`) that turns an `InitRequest` into
//! a running sandbox. It joins the network namespace the runner prepared
//! (or unshares a bare one), unshares the mount, uts, ipc and pid
//! namespaces, forks the sandbox's PID 1, reports that pid on stdout and
//! exits, so the sandbox is not a child of the runner and survives it.
//! PID 1 builds the filesystem (including the loop-mounted disk), joins the
//! sandbox's cgroups and a new cgroup namespace, cuts capabilities,
//! installs seccomp and execs the daemon.
//!
//! Report protocol on stdout: `pid <host pid>` from the helper, then either
//! `error <message>` from PID 1 or EOF when the daemon was exec'd (the
//! report pipe is close-on-exec).

use crate::caps;
use crate::mounts::{self, PlanInput};
use crate::seccomp;
use crate::spec::{self, InitRequest};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{fork, ForkResult};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InitError {
    #[error("reading the init request: {0}")]
    Request(String),
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        source: nix::Error,
    },
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> InitError {
    move |source| InitError::Sys { step, source }
}
fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> InitError {
    move |source| InitError::Io { step, source }
}

/// Entry point of the helper. Never returns.
pub fn init_main() -> ! {
    // Keep the report channel away from fd 1, which becomes the log.
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on fd 1 has no memory effects.
    let report_fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if report_fd < 0 {
        std::process::exit(2);
    }
    // SAFETY: report_fd was just created by us and is owned by this File alone.
    let mut report = unsafe { std::fs::File::from_raw_fd(report_fd) };
    match run(&mut report) {
        Ok(never) => match never {},
        Err(e) => {
            let _ = writeln!(report, "error {}", e.to_string().replace('\n', " "));
            // SAFETY: _exit ends the process without running destructors,
            // which is what a failed helper or PID 1 wants.
            unsafe { libc::_exit(1) }
        }
    }
}

enum Never {}

fn run(report: &mut std::fs::File) -> Result<Never, InitError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| InitError::Request(e.to_string()))?;
    let req: InitRequest =
        serde_json::from_slice(&buf).map_err(|e| InitError::Request(e.to_string()))?;
    if !spec::is_safe_id(&req.spec.id) {
        return Err(InitError::Request(format!(
            "unsafe sandbox id {:?}",
            req.spec.id
        )));
    }
    redirect_stdio()?;
    nix::unistd::setsid().map_err(sys("setsid"))?;
    // The daemon (and only it: it raises this for every process it starts)
    // is exempt from the OOM killer; inherited across fork and exec. Hosts
    // that withhold CAP_SYS_RESOURCE refuse this; the daemon then ranks its
    // children above itself instead (see atoll-daemon's `oom` handling).
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        eprintln!("atoll-sandbox-init: cannot lower the daemon's oom_score_adj ({e}); relying on children's higher score");
    }
    let last_cap = caps::last_cap();
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    match &req.netns {
        // The runner prepared this namespace (veth, addresses, routes).
        Some(path) => {
            let ns = std::fs::File::open(path).map_err(io("opening the network namespace"))?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(sys("joining the network namespace"))?;
        }
        None => flags |= CloneFlags::CLONE_NEWNET,
    }
    unshare(flags).map_err(sys("unshare namespaces"))?;
    // SAFETY: this helper is single-threaded (the binary dispatches here
    // before starting any runtime), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(sys("fork sandbox init"))? {
        ForkResult::Parent { child } => {
            let _ = writeln!(report, "pid {child}");
            // SAFETY: see init_main; the helper's job is done.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Child => sandbox_pid1(&req, last_cap),
    }
}

/// stdin from /dev/null; stdout joins stderr (the sandbox log).
fn redirect_stdio() -> Result<(), InitError> {
    let null = std::fs::File::open("/dev/null").map_err(io("opening /dev/null"))?;
    // SAFETY: dup2 onto the standard descriptors; both source fds are open.
    unsafe {
        if libc::dup2(null.as_raw_fd(), 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(InitError::Io {
                step: "redirecting stdio",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn sandbox_pid1(req: &InitRequest, last_cap: u32) -> Result<Never, InitError> {
    use nix::mount::{mount, MsFlags};
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making / private"))?;
    let d = &req.dirs;
    let ops = mounts::plan(&PlanInput {
        rootfs: &d.rootfs,
        disk_image: &d.disk_image,
        disk_mount: &d.disk_mount,
        lower: &req.spec.image_rootfs,
        upper: &d.upper,
        work: &d.work,
        run_dir: &d.run,
        daemon_exe: &req.daemon_exe,
        etc_hostname: &d.etc_hostname(),
        etc_hosts: &d.etc_hosts(),
        etc_resolv_conf: &d.etc_resolv_conf(),
    });
    mounts::execute(&ops)?;
    // Join the sandbox's cgroups only now: the disk's loop device had to be
    // opened before the devices whitelist applies. "0" is the writer itself.
    for procs in &req.cgroup_procs {
        std::fs::write(procs, "0").map_err(io("joining the sandbox cgroup"))?;
    }
    // A cgroup namespace rooted at the sandbox's own cgroup.
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("unshare cgroup namespace"))?;
    nix::unistd::sethostname(&req.spec.hostname).map_err(sys("sethostname"))?;
    pivot_into(&d.rootfs)?;
    loopback_up()?;
    raise_nofile_soft_limit();
    // Every descriptor we still hold must not leak into the sandbox.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let program = seccomp::sandbox_program()?;
    caps::restrict_bounding_set(last_cap)?;
    seccomp::install(&program)?;
    caps::set_process_caps()?;
    exec_daemon()
}

/// Raises the open-files soft limit to 65536 (or the hard limit if lower);
/// the hard limit is inherited from the host and never raised.
fn raise_nofile_soft_limit() {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) == 0 {
            let want = libc::rlimit {
                rlim_cur: cur.rlim_max.min(65_536).max(cur.rlim_cur),
                rlim_max: cur.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &want);
        }
    }
}

fn pivot_into(rootfs: &Path) -> Result<(), InitError> {
    nix::unistd::chdir(rootfs).map_err(sys("chdir to rootfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    // The old root is stacked under the new one at "."; detach it.
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(sys("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// Brings `lo` up in the sandbox's fresh network namespace.
fn loopback_up() -> Result<(), InitError> {
    // SAFETY: a plain socket(2) call; the fd is wrapped immediately below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(InitError::Io {
            step: "socket for lo",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(InitError::Io {
                step: "reading lo flags",
                source: std::io::Error::last_os_error(),
            });
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(InitError::Io {
                step: "bringing lo up",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Points stdout and stderr at the sandbox's own `/dev/null`: the host log
/// file the helper wrote to must not stay open in the sandbox (a host
/// descriptor reachable through `/proc/1/fd`, and a file root inside could
/// grow without bound).
fn detach_host_log() -> Result<(), InitError> {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(io("opening the sandbox's /dev/null"))?;
    // SAFETY: dup2 onto fds 1 and 2 from a descriptor we own.
    unsafe {
        if libc::dup2(null.as_raw_fd(), 1) < 0 || libc::dup2(null.as_raw_fd(), 2) < 0 {
            return Err(InitError::Io {
                step: "detaching the host log",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn exec_daemon() -> Result<Never, InitError> {
    detach_host_log()?;
    let path =
        CString::new(spec::SANDBOX_DAEMON_BIN).map_err(|e| InitError::Request(e.to_string()))?;
    let argv = [CString::new("atoll-daemon").map_err(|e| InitError::Request(e.to_string()))?];
    let env: Vec<CString> = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("ATOLL_DAEMON_CONFIG={}", spec::SANDBOX_DAEMON_CONFIG),
        "LANG=C.UTF-8".to_string(),
        "HOME=/root".to_string(),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect();
    let err = nix::unistd::execve(&path, &argv, &env).map_err(sys("exec atoll-daemon"));
    match err {
        Ok(never) => match never {},
        Err(e) => Err(e),
    }
}
