//! The init helper: a short-lived, single-threaded process (the `atoll`
//! binary invoked as `atoll-sandbox-init`) that turns an `InitRequest` into
//! a running sandbox, then exits, so the sandbox is not a child of the
//! runner and survives it.
//!
//! As host root it joins the network namespace the runner prepared (or
//! unshares a bare one), shields itself from the OOM killer, loop-mounts
//! the sandbox's disk in a mount namespace of its own, binds the toolbox
//! socket, creates the sandbox's user namespace (its own slice of host
//! uids) and idmaps the image and the disk into it, and joins the
//! sandbox's cgroups. Then it enters the user namespace as its root (an
//! unprivileged uid on the host), unshares mount, uts, ipc and pid
//! namespaces owned by it, forks the sandbox's PID 1, reports that pid on
//! stdout and exits. PID 1 mounts the overlay root and the rest of the
//! filesystem, enters a new cgroup namespace, pivots, writes its generated
//! `/etc` files, cuts capabilities, installs seccomp and execs the daemon
//! from a descriptor, handing it its config and listening socket as
//! descriptors: nothing on any filesystem the sandbox can reach.
//!
//! Report protocol on stdout: `disk <major>:<minor>` (the disk's loop
//! device) and `pid <host pid>` from the helper, then either
//! `error <message>` from PID 1 or EOF when the daemon was exec'd (the
//! report pipe is close-on-exec).

use crate::caps;
use crate::mounts;
use crate::seccomp;
use crate::spec::{self, InitRequest};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{fork, ForkResult};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
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
    shield_from_oom();
    let last_cap = caps::last_cap();

    // Network first, as host root: the namespace stays owned by the host's
    // user namespace, so root inside can never reconfigure it.
    match &req.netns {
        // The runner prepared this namespace (veth, addresses, routes).
        Some(path) => {
            let ns = std::fs::File::open(path).map_err(io("opening the network namespace"))?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(sys("joining the network namespace"))?;
        }
        None => unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare network namespace"))?,
    }
    loopback_up()?;
    // What CAP_NET_BIND_SERVICE and CAP_NET_RAW gave root inside before
    // user namespaces: low ports and ping (Docker sets the same).
    for (key, value) in [
        ("net/ipv4/ip_unprivileged_port_start", "0"),
        ("net/ipv4/ping_group_range", "0 2147483647"),
    ] {
        std::fs::write(format!("/proc/sys/{key}"), value).map_err(io("setting a sysctl"))?;
    }

    // Host-side preparation in a mount namespace of our own (still owned by
    // the host's user namespace): the disk, the idmapped layers, /sys.
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare mount namespace"))?;
    make_private()?;
    let root = &req.dirs.root;
    let root_dir = open_dir_nofollow(root)?;
    nix::unistd::fchdir(&root_dir).map_err(sys("entering the sandbox directory"))?;
    if let Some((major, minor)) =
        mounts::prepare_host_side(req.spec.image_layers.len(), req.spec.volumes.len())?
    {
        // The runner throttles the disk's I/O off the create path
        // (configuring a block device's throttle waits for RCU).
        let _ = writeln!(report, "disk {major}:{minor}");
    }
    let listener = bind_toolbox_socket()?;
    let userns = match &req.userns {
        Some(path) => std::fs::File::open(path).map_err(io("opening the user namespace"))?,
        None => crate::userns::create_userns(&req.uids)?,
    };
    let disk = crate::userns::idmap_clone(Path::new(spec::DISK_DIR), &userns, false)?;
    crate::userns::attach(&disk, Path::new(spec::DISK_DIR))?;
    for (i, layer) in req.spec.image_layers.iter().enumerate() {
        let lower = crate::userns::idmap_clone(layer, &userns, true)?;
        crate::userns::attach(&lower, &mounts::lower_layer_dir(i))?;
    }
    // Volumes: idmapped (read-only ones read-only, a flag the sandbox's
    // mount namespace then locks), a subpath resolved beneath the root.
    for (i, v) in req.spec.volumes.iter().enumerate() {
        let root = open_dir_nofollow(&v.source)?;
        let dir = match &v.subpath {
            Some(sub) => {
                crate::volumes::subdir(&root, sub).map_err(io("resolving a volume subpath"))?
            }
            None => root,
        };
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let tree = if v.idmap {
            crate::userns::idmap_clone(&path, &userns, v.read_only)?
        } else {
            crate::userns::plain_clone(&path, v.read_only)?
        };
        crate::userns::attach(&tree, &spec::volume_dir(i))?;
    }
    let exe = std::fs::File::open(&req.daemon_exe).map_err(io("opening the daemon"))?;
    let config = config_memfd(&req.daemon_config)?;
    // Join the sandbox's cgroups only now: the disk's loop device had to be
    // opened before the devices whitelist applies. "0" is the writer itself.
    for procs in &req.cgroup_procs {
        std::fs::write(procs, "0").map_err(io("joining the sandbox cgroup"))?;
    }

    // Into the sandbox's user namespace: from here on we are its root, an
    // unprivileged uid on the host. Everything it owns is created here.
    nix::sched::setns(&userns, CloneFlags::CLONE_NEWUSER)
        .map_err(sys("joining the user namespace"))?;
    drop(userns);
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    let zero_g = nix::unistd::Gid::from_raw(0);
    let zero_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(zero_g, zero_g, zero_g).map_err(sys("setresgid"))?;
    nix::unistd::setresuid(zero_u, zero_u, zero_u).map_err(sys("setresuid"))?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(sys("unshare namespaces"))?;
    // SAFETY: this helper is single-threaded (the binary dispatches here
    // before starting any runtime), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(sys("fork sandbox init"))? {
        ForkResult::Parent { child } => {
            let _ = writeln!(report, "pid {child}");
            // SAFETY: see init_main; the helper's job is done.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Child => sandbox_pid1(
            &req,
            last_cap,
            Fds {
                exe,
                config,
                listener,
            },
        ),
    }
}

/// Descriptors PID 1 hands to the daemon.
struct Fds {
    exe: std::fs::File,
    config: OwnedFd,
    listener: OwnedFd,
}

/// The daemon (and only it) is exempt from the OOM killer, and nothing it
/// starts can claim that exemption: a privileged write of 0 to
/// `oom_score_adj` sets the floor processes may lower themselves to
/// (`oom_score_adj_min`) to 0; the legacy `oom_adj` interface then drops
/// our own score to -1000 without moving that floor. Children inherit
/// both; the daemon raises each child to 0, below which it cannot go back.
/// Hosts that withhold CAP_SYS_RESOURCE refuse this; the daemon then ranks
/// its children above itself instead (see atoll-daemon's `oom` handling).
fn shield_from_oom() {
    let floor = std::fs::write("/proc/self/oom_score_adj", "0");
    let shield = floor.and_then(|()| std::fs::write("/proc/self/oom_adj", "-17"));
    if let Err(e) = shield {
        eprintln!("atoll-sandbox-init: cannot lower the daemon's oom_score_adj ({e}); relying on children's higher score");
    }
}

fn make_private() -> Result<(), InitError> {
    use nix::mount::{mount, MsFlags};
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making / private"))
}

/// Opens a host directory of the runner's own, refusing a symlink.
fn open_dir_nofollow(path: &Path) -> Result<OwnedFd, InitError> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("opening the sandbox directory"))
}

/// Binds the toolbox socket at `toolbox.sock` in the current directory (the
/// sandbox's host directory, out of the sandbox's reach). The name is bound
/// relative, so the socket's address names no host path; the daemon calls
/// `listen`, which makes it the peer every client sees (`SO_PEERCRED`).
fn bind_toolbox_socket() -> Result<OwnedFd, InitError> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    match nix::unistd::unlink(spec::SOCKET_NAME) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(sys("removing a stale toolbox socket")(e)),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("creating the toolbox socket"))?;
    let addr = UnixAddr::new(spec::SOCKET_NAME).map_err(sys("toolbox socket address"))?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = bind(fd.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(sys("binding the toolbox socket"))?;
    Ok(fd)
}

/// The daemon's configuration in a sealed memfd: nothing on any
/// filesystem for the sandbox to replace.
fn config_memfd(cfg: &spec::DaemonConfig) -> Result<OwnedFd, InitError> {
    let body = serde_json::to_vec(cfg).map_err(|e| InitError::Request(e.to_string()))?;
    crate::safe_fs::sealed_memfd("atoll-daemon-config", &mut body.as_slice())
        .map(OwnedFd::from)
        .map_err(io("sealing the daemon config"))
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

fn sandbox_pid1(req: &InitRequest, last_cap: u32, fds: Fds) -> Result<Never, InitError> {
    // We are root of the sandbox's user namespace, in a mount namespace it
    // owns, with the cwd at the sandbox's host directory.
    let volumes: Vec<(String, bool)> = req
        .spec
        .volumes
        .iter()
        .map(|v| (v.mount_path.clone(), v.read_only))
        .collect();
    let ops = mounts::plan(req.spec.image_layers.len(), &volumes);
    mounts::execute(&ops)?;
    // A cgroup namespace rooted at the sandbox's own cgroup.
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("unshare cgroup namespace"))?;
    nix::unistd::sethostname(&req.spec.hostname).map_err(sys("sethostname"))?;
    pivot_into(Path::new(spec::ROOTFS_DIR))?;
    req.etc.write();
    raise_nofile_soft_limit();
    // Every descriptor we still hold must not leak into the sandbox; the
    // two the daemon needs are handed over explicitly below.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    for fd in [fds.config.as_raw_fd(), fds.listener.as_raw_fd()] {
        // SAFETY: clears FD_CLOEXEC on a descriptor we own.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(io("passing a descriptor to the daemon")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    let program = seccomp::sandbox_program()?;
    caps::restrict_bounding_set(last_cap)?;
    seccomp::install(&program)?;
    caps::set_process_caps()?;
    exec_daemon(&fds)
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

fn exec_daemon(fds: &Fds) -> Result<Never, InitError> {
    detach_host_log()?;
    let argv = [CString::new("atoll-daemon").map_err(|e| InitError::Request(e.to_string()))?];
    let env: Vec<CString> = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("{}={}", spec::DAEMON_CONFIG_FD_ENV, fds.config.as_raw_fd()),
        format!(
            "{}={}",
            spec::DAEMON_LISTEN_FD_ENV,
            fds.listener.as_raw_fd()
        ),
        "LANG=C.UTF-8".to_string(),
        "HOME=/root".to_string(),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect();
    // From the descriptor the runner gave us: no path inside names the
    // daemon, and nothing inside can write to it (CVE-2019-5736).
    let err = nix::unistd::execveat(
        &fds.exe,
        c"",
        &argv,
        &env,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map_err(sys("exec atoll-daemon"));
    match err {
        Ok(never) => match never {},
        Err(e) => Err(e),
    }
}
