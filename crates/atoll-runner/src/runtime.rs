//! The `Runtime` trait (what the control plane asks of a compute backend)
//! and `NamespaceRuntime`, the Linux-namespace implementation we ship.
//! Calls are blocking; async callers run them on a blocking thread.

use crate::cgroup::{CgroupError, Cgroups};
use crate::journal::{self, Entry, EntryState, Journal, JournalError};
use crate::network::{Lease, Network, NetworkConfig, NetworkPolicy};
use crate::spec::{self, DaemonConfig, InitRequest, SandboxDirs, SandboxSpec};
use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("invalid sandbox id {0:?}")]
    InvalidId(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting sandbox {id}: {reason}")]
    Spawn { id: String, reason: String },
    #[error("preparing the disk of sandbox {id}: {source}")]
    Disk {
        id: String,
        source: crate::disk::DiskError,
    },
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("sandbox {id} did not answer on its toolbox socket within {secs}s")]
    NotReady { id: String, secs: u64 },
    #[error("sandbox {id} is not running")]
    NotRunning { id: String },
    #[error("this runtime cannot {0}")]
    Unsupported(&'static str),
    #[error("capturing sandbox {id}: {source}")]
    Commit {
        id: String,
        #[source]
        source: crate::commit::CommitError,
    },
}

impl RuntimeError {
    /// No network address is left for another running sandbox.
    pub fn is_network_full(&self) -> bool {
        matches!(
            self,
            RuntimeError::Network(crate::network::NetworkError::Full { .. })
        )
    }

    /// Did it fail for want of disk space (the host's or a quota)? Read
    /// from the OS errors in its chain of sources, not from its text.
    pub fn is_no_space(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                    return true;
                }
            }
            cur = e.source();
        }
        false
    }
}

pub use atoll_runtime_api::{Observed, SandboxUsage};

/// A started sandbox.
#[derive(Debug, Clone)]
pub struct Handle {
    pub id: String,
    pub pid: i32,
    pub socket: PathBuf,
}

/// Who may answer on a sandbox's toolbox socket: a process of that
/// sandbox (its slice of host uids, its pid namespace). Checked with
/// `SO_PEERCRED` on every new connection, so even a socket swapped behind
/// the runner's back never carries one tenant's request to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolboxPeer {
    pub uids: crate::userns::UidRange,
    pub pid_ns: u64,
}

impl ToolboxPeer {
    /// Checks the peer of a connected unix stream.
    pub fn verify(&self, stream: &impl std::os::fd::AsFd) -> std::io::Result<()> {
        let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(std::io::Error::from)?;
        let refuse = |why: String| {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("toolbox peer refused: {why}"),
            ))
        };
        if !self.uids.contains(cred.uid()) {
            return refuse(format!("uid {} is not the sandbox's", cred.uid()));
        }
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata(format!("/proc/{}/ns/pid", cred.pid()))
            .map(|m| m.ino())
            .ok();
        if ns != Some(self.pid_ns) {
            return refuse(format!("pid {} is not in the sandbox", cred.pid()));
        }
        Ok(())
    }
}

/// How long a freeze may take before pause gives up (a task stuck in
/// the kernel, e.g. on a hung filesystem).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Runner state: journal and instance name.
    pub state_dir: PathBuf,
    /// Per-sandbox directories (upper, work, rootfs, run).
    pub sandboxes_dir: PathBuf,
    /// Executable run as the init helper (the `atoll` binary, invoked with
    /// argv[0] `atoll-sandbox-init`).
    pub helper_exe: PathBuf,
    /// Executable bind-mounted read-only as `/.atoll/atoll-daemon`.
    pub daemon_exe: PathBuf,
    /// Where cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    pub ready_timeout: Duration,
    /// Where archived sandboxes are kept (or staged, with `archive_url`).
    pub archive_dir: PathBuf,
    /// An S3-compatible archive store, `s3://bucket[/prefix]`; `None` keeps
    /// archives in `archive_dir`.
    pub archive_url: Option<String>,
    /// Disk size kept ready in the background pool (the default disk).
    pub pooled_disk_bytes: u64,
    /// The sandbox network; `None` leaves sandboxes with loopback only.
    pub network: Option<NetworkConfig>,
    /// The host-wide registry of uid slices (shared by every runner on
    /// the host; on a tmpfs, as sandboxes do not outlive a reboot).
    pub uid_slots_dir: PathBuf,
    /// I/O limits of each sandbox's disk.
    pub io_limits: crate::cgroup::IoLimits,
}

/// Disk templates and ready disks, in the sandboxes directory (a name no
/// sandbox id can have).
pub const DISKS_DIR: &str = ".disks";

/// Where runners on this host register sandboxes' uid slices.
pub const DEFAULT_UID_SLOTS_DIR: &str = "/run/atoll/uids";

pub struct NamespaceRuntime {
    cfg: RuntimeConfig,
    disks: crate::disk::DiskTemplates,
    disk_pool: crate::disk::DiskPoolFiller,
    archives: crate::archive::ArchiveStore,
    cgroups: Cgroups,
    journal: Journal,
    network: Option<Network>,
    userns: crate::userns::UsernsPool,
    /// A sealed in-memory copy of the daemon, exec'd by every sandbox.
    daemon: std::fs::File,
    /// Toolbox peers of running sandboxes (rebuilt from the journal).
    peers: std::sync::Mutex<std::collections::HashMap<String, ToolboxPeer>>,
    instance: String,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.into(),
        source,
    }
}

impl RuntimeError {
    /// The error as a client may see it: host paths replaced (the full
    /// error goes to the log).
    pub fn public_message(&self) -> String {
        crate::safe_fs::scrub_host_paths(&self.to_string())
    }
}

impl NamespaceRuntime {
    pub fn new(cfg: RuntimeConfig) -> Result<NamespaceRuntime, RuntimeError> {
        for d in [&cfg.state_dir, &cfg.sandboxes_dir, &cfg.archive_dir] {
            crate::safe_fs::register_host_dir(d);
            if let Ok(c) = d.canonicalize() {
                crate::safe_fs::register_host_dir(&c);
            }
            if let Some(parent) = d.parent() {
                crate::safe_fs::register_host_dir(parent);
            }
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(io("creating", &cfg.state_dir))?;
        std::fs::create_dir_all(&cfg.sandboxes_dir).map_err(io("creating", &cfg.sandboxes_dir))?;
        let canonical = cfg
            .state_dir
            .canonicalize()
            .map_err(io("resolving", &cfg.state_dir))?;
        let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
        let instance = hex::encode(&digest[..6]);
        let instance_file = cfg.state_dir.join("instance");
        std::fs::write(&instance_file, &instance).map_err(io("writing", &instance_file))?;
        let cgroups = Cgroups::detect(&cfg.cgroup_root, &instance)?;
        let journal = Journal::open(&cfg.state_dir.join("journal"))?;
        let network = match &cfg.network {
            Some(n) => {
                // Sandboxes that may still run keep their addresses and rules.
                let live: Vec<Lease> = journal
                    .entries()
                    .into_iter()
                    .filter_map(|e| e.net)
                    .collect();
                Some(Network::start(n, &instance, &cfg.state_dir, &live)?)
            }
            None => None,
        };
        // Templates and ready disks sit on the sandboxes' filesystem: a
        // ready disk is renamed into place, a template cloned where the
        // filesystem has reflinks. (Before: under the state dir.)
        let _ = std::fs::remove_dir_all(cfg.state_dir.join("disk-templates"));
        let disks = crate::disk::DiskTemplates::new(&cfg.sandboxes_dir.join(DISKS_DIR));
        let disk_pool = crate::disk::DiskPoolFiller::start(disks.clone(), cfg.pooled_disk_bytes, 4);
        let archives =
            crate::archive::ArchiveStore::open_with(&cfg.archive_dir, cfg.archive_url.as_deref())?;
        let uid_slots =
            crate::userns::UidSlots::open(&cfg.uid_slots_dir, &instance).map_err(|e| {
                RuntimeError::Spawn {
                    id: String::new(),
                    reason: e.to_string(),
                }
            })?;
        let userns = crate::userns::UsernsPool::start(uid_slots, 4);
        let daemon = sealed_copy(&cfg.daemon_exe).map_err(io("copying", &cfg.daemon_exe))?;
        Ok(NamespaceRuntime {
            cfg,
            archives,
            userns,
            daemon,
            peers: Default::default(),
            disks,
            disk_pool,
            cgroups,
            journal,
            network,
            instance,
        })
    }

    /// Name of this runner's cgroup subtree (`atoll/<instance>`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn dirs(&self, id: &str) -> Result<SandboxDirs, RuntimeError> {
        if !spec::is_safe_id(id) {
            return Err(RuntimeError::InvalidId(id.into()));
        }
        Ok(SandboxDirs::new(&self.cfg.sandboxes_dir, id))
    }

    /// Gives a stopped sandbox's address back.
    fn release_lease(&self, lease: Option<&Lease>) {
        if let (Some(net), Some(l)) = (&self.network, lease) {
            if let Err(e) = net.release(l.ip) {
                tracing::warn!(error = %e, ip = %l.ip, "clearing a sandbox's network rules failed");
            }
        }
    }

    fn spawn_failed(&self, id: &str, reason: String) -> RuntimeError {
        let entry = self.journal.get(id);
        if let Some(e) = &entry {
            if let Some(pid) = e.pid.filter(|_| journal::is_alive(e)) {
                // SAFETY: `is_alive` just matched pid and start time.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        self.release_lease(entry.as_ref().and_then(|e| e.net.as_ref()));
        let _ = self.cgroups.remove(id);
        if let Some(u) = entry.as_ref().and_then(|e| e.uids) {
            self.userns.release(&u, id);
        }
        self.forget_peer(id);
        let _ = self.journal.remove(id);
        RuntimeError::Spawn {
            id: id.into(),
            reason,
        }
    }

    fn cleanup(&self, id: &str) -> Result<(), RuntimeError> {
        let entry = self.journal.get(id);
        if let Some(e) = &entry {
            if journal::is_alive(e) {
                if let Some(pid) = e.pid {
                    // SAFETY: `is_alive` just matched pid and start time, so the
                    // pid still names the sandbox's PID 1; killing it ends the
                    // whole pid namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        atoll_types::failpoint::hit("runtime.stop.after_kill");
        self.cgroups.remove(id)?;
        self.forget_peer(id);
        if let Ok(d) = self.dirs(id) {
            let _ = std::fs::remove_file(d.socket());
            sync_fs(&d.root);
        }
        if let Some(u) = entry.as_ref().and_then(|e| e.uids) {
            // Only now: its cgroup is gone, so no process holds the slice.
            self.userns.release(&u, id);
        }
        self.release_lease(entry.and_then(|e| e.net).as_ref());
        self.journal.remove(id)?;
        Ok(())
    }

    fn forget_peer(&self, id: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// A read-only descriptor of a sealed memfd copy of `exe`: the daemon
/// every sandbox execs. Sealed, nothing can change it (CVE-2019-5736), and
/// exec'ing it by descriptor leaves no host path in any sandbox.
fn sealed_copy(exe: &Path) -> std::io::Result<std::fs::File> {
    let copy = crate::safe_fs::sealed_memfd("atoll-daemon", &mut std::fs::File::open(exe)?)?;
    // exec refuses a file open for writing: keep a read-only descriptor
    // (close-on-exec, as std opens everything).
    std::fs::File::open(format!("/proc/self/fd/{}", copy.as_raw_fd()))
}

/// Flushes the filesystem holding `path` so a stop survives a host crash.
fn sync_fs(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: syncfs takes an open fd and no pointers.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

/// The operations behind [`crate::local::LocalRuntime`]: blocking calls,
/// run on a blocking thread by async callers.
impl NamespaceRuntime {
    pub fn start(&self, spec: &SandboxSpec) -> Result<Handle, RuntimeError> {
        let id = spec.id.as_str();
        let dirs = self.dirs(id)?;
        if let Some(e) = self.journal.get(id) {
            if journal::is_alive(&e) {
                return Ok(Handle {
                    id: id.into(),
                    pid: e.pid.unwrap_or(0),
                    socket: dirs.socket(),
                });
            }
            self.cleanup(id)?;
        }
        if let Some(n) = &self.network {
            // A full network refuses the start before anything is prepared.
            n.check_capacity()?;
        }
        let t0 = Instant::now();
        // The sandbox's host directory: the runner's alone (nothing in it
        // is visible inside the sandbox).
        match std::fs::DirBuilder::new().mode(0o711).create(&dirs.root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("creating", &dirs.root)(e)),
        }
        let root_fd = crate::safe_fs::open_dir(&dirs.root).map_err(io("opening", &dirs.root))?;
        let disk_image = dirs.disk_image();
        let had_disk = disk_image.exists();
        let pinned;
        let spec = match pin_layers(&root_fd, spec, had_disk) {
            Some(layers) => {
                pinned = SandboxSpec {
                    image_layers: layers,
                    ..spec.clone()
                };
                &pinned
            }
            None => spec,
        };
        self.disks
            .provision(&disk_image, spec.disk_bytes)
            .map_err(|source| RuntimeError::Disk {
                id: id.into(),
                source,
            })?;
        if !had_disk {
            self.disk_pool.taken();
        }
        let daemon_config = DaemonConfig {
            socket: None,
            user: spec.user.clone(),
            env: spec.env.clone(),
            work_dir: spec.work_dir.clone(),
            env_file: Some(spec::SANDBOX_ENV_FILE.into()),
            entrypoint: spec.entrypoint.clone(),
        };

        let slot = match &self.network {
            Some(n) => Some(n.take()?),
            None => None,
        };
        let lease = slot.as_ref().map(|s| Lease {
            ip: s.ip,
            host_if: s.host_if.clone(),
            policy: spec.network.clone(),
        });
        // A uid slice with its user namespace (ready from the pool), held
        // from here by the sandbox's cgroup.
        let (uids, userns) = match self.userns.take(id, &self.cgroups.procs_files(id)) {
            Ok(u) => u,
            Err(e) => {
                self.release_lease(lease.as_ref());
                return Err(RuntimeError::Spawn {
                    id: id.into(),
                    reason: e.to_string(),
                });
            }
        };
        let mut entry = Entry {
            id: id.into(),
            state: EntryState::Creating,
            pid: None,
            start_time: None,
            updated_at_ms: atoll_types::time::now_millis(),
            net: lease.clone(),
            uids: Some(uids),
            pid_ns: None,
            paused: false,
            disk_dev: None,
        };
        if let Err(e) = self.journal.write(&entry) {
            self.release_lease(lease.as_ref());
            self.userns.release(&uids, id);
            return Err(e.into());
        }
        if let (Some(n), Some(l)) = (&self.network, &lease) {
            // The policy is in place before anything in the sandbox runs.
            if let Err(e) = n.apply(l.ip, &l.policy) {
                return Err(self.spawn_failed(id, format!("applying the network policy: {e}")));
            }
        }
        // The helper opens the namespace through our descriptor
        // (`/proc/<us>/fd/<n>`) while we wait for it; nothing inherits it.
        let netns = slot.as_ref().map(|s| {
            PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                s.ns.as_raw_fd()
            ))
        });
        atoll_types::failpoint::hit("runtime.start.after_journal");
        let cgroup_procs = match self.cgroups.create(id, &spec.limits) {
            Ok(p) => p,
            Err(e) => return Err(self.spawn_failed(id, e.to_string())),
        };
        atoll_types::failpoint::hit("runtime.start.after_cgroup");
        let req = InitRequest {
            spec: spec.clone(),
            dirs: dirs.clone(),
            daemon_exe: PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                self.daemon.as_raw_fd()
            )),
            daemon_config,
            etc: crate::etc::EtcFiles::new(&spec.hostname, crate::network::sandbox_resolv_conf()),
            uids,
            userns: Some(PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                userns.as_raw_fd()
            ))),
            cgroup_procs,
            netns,
        };
        let log = crate::safe_fs::open_file(
            &root_fd,
            spec::LOG_NAME,
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_APPEND | nix::fcntl::OFlag::O_CREAT,
            0o600,
        )
        .map_err(io("opening", &dirs.log()))?;
        let t_prepared = t0.elapsed();
        let mut child = match Command::new(&self.cfg.helper_exe)
            .arg0("atoll-sandbox-init")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Err(self.spawn_failed(id, format!("running the init helper: {e}"))),
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&body);
        }
        let report = match child.stdout.take() {
            Some(out) => read_report(out, self.cfg.ready_timeout),
            None => Err("no report pipe".to_string()),
        };
        let _ = child.wait();
        // The helper has joined the namespaces (or failed): ours can go.
        drop(slot);
        drop(userns);
        let (pid, error, disk_dev) = match report {
            Ok(r) => r,
            Err(e) => return Err(self.spawn_failed(id, e)),
        };
        let Some(pid) = pid else {
            return Err(self.spawn_failed(
                id,
                error.unwrap_or_else(|| "init helper reported no pid".into()),
            ));
        };
        if let Some(error) = error {
            return Err(self.spawn_failed(id, error));
        }
        let t_spawned = t0.elapsed();
        atoll_types::failpoint::hit("runtime.start.after_spawn");
        use std::os::unix::fs::MetadataExt;
        entry.state = EntryState::Running;
        entry.pid = Some(pid);
        entry.disk_dev = disk_dev;
        entry.start_time = journal::process_start_time(pid);
        entry.pid_ns = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .map(|m| m.ino())
            .ok();
        entry.updated_at_ms = atoll_types::time::now_millis();
        self.journal.write(&entry)?;
        let peer = entry.pid_ns.map(|pid_ns| ToolboxPeer { uids, pid_ns });
        if let Some(p) = peer {
            self.peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.into(), p);
        }
        atoll_types::failpoint::hit("runtime.start.before_ready");
        let socket = dirs.socket();
        let deadline = Instant::now() + self.cfg.ready_timeout;
        loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
                match peer.map(|p| p.verify(&s)) {
                    Some(Ok(())) => break,
                    Some(Err(e)) => return Err(self.spawn_failed(id, e.to_string())),
                    None => return Err(self.spawn_failed(id, "the sandbox exited at once".into())),
                }
            }
            if journal::process_start_time(pid).is_none() {
                // The details (the daemon's own words) stay in the host's
                // log: they may name host paths.
                let log = std::fs::read_to_string(dirs.log()).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                tracing::warn!(sandbox = %id, log_tail = %tail, "sandbox daemon exited during start");
                return Err(self.spawn_failed(id, "the sandbox daemon exited during start".into()));
            }
            if Instant::now() > deadline {
                let _ = self.cleanup(id);
                return Err(RuntimeError::NotReady {
                    id: id.into(),
                    secs: self.cfg.ready_timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Disk I/O limits, off the create path: configuring a block
        // device's throttle waits for RCU grace periods (tens of ms).
        if let (Some((major, minor)), Some(throttle), true) = (
            disk_dev,
            self.cgroups.io_throttle(id),
            self.cfg.io_limits != crate::cgroup::IoLimits::default(),
        ) {
            let limits = self.cfg.io_limits;
            let sandbox = id.to_string();
            let _ = std::thread::Builder::new()
                .name("atoll-io-limits".into())
                .spawn(move || {
                    if let Err(e) = throttle.apply(major, minor, &limits) {
                        // A sandbox stopped at once has no cgroup left.
                        tracing::debug!(sandbox = %sandbox, error = %e, "disk I/O limits not applied");
                    }
                });
        }
        tracing::debug!(
            sandbox = %id,
            prepare_us = t_prepared.as_micros() as u64,
            spawn_us = (t_spawned - t_prepared).as_micros() as u64,
            ready_us = (t0.elapsed() - t_spawned).as_micros() as u64,
            "sandbox started"
        );
        Ok(Handle {
            id: id.into(),
            pid,
            socket,
        })
    }

    pub fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.dirs(id)?;
        self.cleanup(id)
    }

    pub fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let dirs = self.dirs(id)?;
        self.cleanup(id)?;
        self.archives.remove(id)?;
        match std::fs::remove_dir_all(&dirs.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::Io {
                what: "removing",
                path: dirs.root,
                source: e,
            }),
        }
    }

    pub fn recover(&self) -> Result<Vec<Observed>, RuntimeError> {
        let mut out = Vec::new();
        let entries = self.journal.entries();
        for e in &entries {
            if e.state == EntryState::Running && journal::is_alive(e) && self.cgroups.exists(&e.id)
            {
                // The journal says what it should be: a runner stopped
                // between writing it and (un)freezing finishes the job.
                if self.cgroups.is_frozen(&e.id).unwrap_or(false) != e.paused {
                    let done = if e.paused {
                        self.cgroups.freeze(&e.id, FREEZE_TIMEOUT)
                    } else {
                        self.cgroups.thaw(&e.id)
                    };
                    if let Err(err) = done {
                        tracing::warn!(sandbox = %e.id, paused = e.paused, error = %err, "re-applying the sandbox's pause state failed");
                    }
                }
                out.push(Observed::Running {
                    id: e.id.clone(),
                    pid: e.pid.unwrap_or(0),
                    paused: e.paused,
                });
                continue;
            }
            self.cleanup(&e.id)?;
            out.push(match e.state {
                EntryState::Creating => Observed::Failed {
                    id: e.id.clone(),
                    reason: "the runner stopped while this sandbox was starting".into(),
                },
                EntryState::Running => Observed::Stopped { id: e.id.clone() },
            });
        }
        for id in self.cgroups.list() {
            if !entries.iter().any(|e| e.id == id) {
                tracing::warn!(sandbox = %id, "removing orphaned sandbox cgroup");
                self.cgroups.remove(&id)?;
            }
        }
        Ok(out)
    }

    pub fn observe(&self) -> Vec<Observed> {
        self.journal.entries().into_iter().map(observed).collect()
    }

    pub fn observe_one(&self, id: &str) -> Option<Observed> {
        self.dirs(id).ok()?;
        self.journal.get(id).map(observed)
    }

    /// Where this runner keeps its volumes.
    pub fn volumes_dir(&self) -> PathBuf {
        self.cfg
            .sandboxes_dir
            .parent()
            .unwrap_or(&self.cfg.sandboxes_dir)
            .join("volumes")
    }

    /// The formatted filesystem templates disks (and volumes) are copied
    /// from.
    pub fn disk_templates(&self) -> &crate::disk::DiskTemplates {
        &self.disks
    }

    pub fn socket(&self, id: &str) -> PathBuf {
        SandboxDirs::new(&self.cfg.sandboxes_dir, id).socket()
    }

    pub fn toolbox_peer(&self, id: &str) -> Option<ToolboxPeer> {
        if let Some(p) = self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Some(*p);
        }
        // Not cached (a restarted runner): the journal knows.
        let e = self.journal.get(id)?;
        if e.state != EntryState::Running || !journal::is_alive(&e) {
            return None;
        }
        let peer = ToolboxPeer {
            uids: e.uids?,
            pid_ns: e.pid_ns?,
        };
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.into(), peer);
        Some(peer)
    }

    pub fn memory_usage(&self, id: &str) -> Option<u64> {
        self.cgroups.memory_usage(id)
    }

    pub fn archive(&self, id: &str) -> Result<(), RuntimeError> {
        let dirs = self.dirs(id)?;
        if let Some(e) = self.journal.get(id) {
            if journal::is_alive(&e) {
                return Err(RuntimeError::Spawn {
                    id: id.into(),
                    reason: "cannot archive a running sandbox".into(),
                });
            }
        }
        self.archives.archive(id, &dirs.disk_image())?;
        Ok(())
    }

    pub fn restore(&self, id: &str) -> Result<(), RuntimeError> {
        let dirs = self.dirs(id)?;
        Ok(self.archives.restore(id, &dirs.disk_image())?)
    }

    pub fn is_archived(&self, id: &str) -> bool {
        self.dirs(id).is_ok() && self.archives.exists(id)
    }

    pub fn has_disk(&self, id: &str) -> bool {
        self.dirs(id).is_ok_and(|d| d.disk_image().exists())
    }

    pub fn discard_archive(&self, id: &str) -> Result<(), RuntimeError> {
        self.dirs(id)?;
        Ok(self.archives.remove(id)?)
    }

    pub fn update_limits(
        &self,
        id: &str,
        limits: &crate::spec::Limits,
    ) -> Result<(), RuntimeError> {
        self.dirs(id)?;
        Ok(self.cgroups.apply(id, limits)?)
    }

    pub fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RuntimeError> {
        self.dirs(id)?;
        let (Some(net), Some(mut entry)) = (&self.network, self.journal.get(id)) else {
            return Ok(());
        };
        let Some(lease) = entry.net.as_mut() else {
            return Ok(());
        };
        // Journal first: a runner restarted in between rebuilds the table
        // from the journal, so it must hold the newest policy.
        lease.policy = policy.clone();
        let ip = lease.ip;
        self.journal.write(&entry)?;
        net.apply(ip, policy)?;
        Ok(())
    }

    pub fn open_netns(&self, id: &str) -> Option<std::fs::File> {
        let e = self.journal.get(id)?;
        if e.state != EntryState::Running {
            return None;
        }
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", e.pid?)).ok()?;
        // Checked after the open: if the pid still names the sandbox's
        // PID 1 now, it did when we opened (a pid never comes back), so a
        // reused pid can never hand out another process's namespace.
        journal::is_alive(&e).then_some(ns)
    }

    pub fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.dirs(id)?;
        let mut e = self.running_entry(id)?;
        // Journal first: a runner restarted before the freeze finished
        // freezes it on recovery (the caller's record says "pausing").
        if !e.paused {
            e.paused = true;
            e.updated_at_ms = atoll_types::time::now_millis();
            self.journal.write(&e)?;
        }
        atoll_types::failpoint::hit("runtime.pause.after_journal");
        if let Err(err) = self.cgroups.freeze(id, FREEZE_TIMEOUT) {
            let _ = self.cgroups.thaw(id);
            e.paused = false;
            e.updated_at_ms = atoll_types::time::now_millis();
            self.journal.write(&e)?;
            return Err(err.into());
        }
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.dirs(id)?;
        let mut e = self.running_entry(id)?;
        self.cgroups.thaw(id)?;
        atoll_types::failpoint::hit("runtime.resume.after_thaw");
        if e.paused {
            // After the thaw: a runner restarted in between still has it
            // paused, as the caller's record does until resume returns.
            e.paused = false;
            e.updated_at_ms = atoll_types::time::now_millis();
            self.journal.write(&e)?;
        }
        Ok(())
    }

    pub fn usage(&self, id: &str) -> Option<SandboxUsage> {
        self.dirs(id).ok()?;
        let e = self.running_entry(id).ok()?;
        let memory = self.cgroups.memory_stats(id).unwrap_or_default();
        let (disk_used, disk_total, disk_free) = disk_usage(&e).unwrap_or_default();
        Some(SandboxUsage {
            cpu_ns: self.cgroups.cpu_usage_ns(id).unwrap_or(0),
            memory_used: memory.usage.saturating_sub(memory.inactive_file),
            memory_cache: memory.cache,
            memory_limit: memory.limit.unwrap_or(0),
            disk_used,
            disk_total,
            disk_free,
        })
    }
}

impl NamespaceRuntime {
    /// The journal entry of a sandbox whose PID 1 lives.
    fn running_entry(&self, id: &str) -> Result<Entry, RuntimeError> {
        self.journal
            .get(id)
            .filter(|e| e.state == EntryState::Running && journal::is_alive(e))
            .ok_or_else(|| RuntimeError::NotRunning { id: id.into() })
    }
}

impl NamespaceRuntime {
    /// What this host offers sandboxes: its cores, memory, the filesystem
    /// sandbox disks live on, and the network block's addresses.
    pub fn capacity(&self) -> atoll_runtime_api::Capacity {
        const GIB: u64 = 1 << 30;
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        let (disk, free) = nix::sys::statvfs::statvfs(&self.cfg.sandboxes_dir)
            .map(|st| {
                let frag = st.fragment_size();
                (
                    st.blocks().saturating_mul(frag),
                    st.blocks_available().saturating_mul(frag),
                )
            })
            .unwrap_or((0, 0));
        let running = self
            .journal
            .entries()
            .iter()
            .filter(|e| e.state == EntryState::Running && journal::is_alive(e))
            .count() as u32;
        atoll_runtime_api::Capacity {
            cpu,
            memory_gib: memory / GIB,
            disk_gib: disk / GIB,
            disk_free_gib: free / GIB,
            network_slots: self.network.as_ref().map_or(0, |n| n.slots()),
            running,
            images_bytes: 0,
        }
    }
}

/// The file in a sandbox's directory naming the image layers its disk was
/// made over.
pub const LAYERS_FILE: &str = "layers.json";

/// A sandbox keeps the layers its disk was first made over (its upper dir
/// only makes sense on them), even if its image name was pulled again
/// since. On a restart whose pinned layers are all still there, those;
/// otherwise the spec's are pinned now and `None` is returned.
fn pin_layers(root: &OwnedFd, spec: &SandboxSpec, had_disk: bool) -> Option<Vec<PathBuf>> {
    if had_disk {
        if let Some(p) = read_pinned(root) {
            if !p.layers.is_empty() && p.layers.iter().all(|l| l.is_dir()) {
                return (p.layers != spec.image_layers).then_some(p.layers);
            }
        }
    }
    let body = serde_json::to_vec(&PinnedImage {
        image: spec.image.clone(),
        layers: spec.image_layers.clone(),
    })
    .unwrap_or_default();
    if let Err(e) = crate::safe_fs::write_file(root, LAYERS_FILE, &body, 0o600) {
        tracing::warn!(sandbox = %spec.id, error = %e, "could not record the sandbox's image layers");
    }
    None
}

/// What [`LAYERS_FILE`] says.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PinnedImage {
    /// The image name the sandbox was first started from.
    pub image: String,
    /// Its layers then, lowest first.
    pub layers: Vec<PathBuf>,
}

fn read_pinned(root: &OwnedFd) -> Option<PinnedImage> {
    let f = crate::safe_fs::open_file(root, LAYERS_FILE, OFlag::O_RDONLY, 0).ok()?;
    let mut body = Vec::new();
    Read::take(f, 1 << 20).read_to_end(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl NamespaceRuntime {
    /// The image layers of every sandbox this runtime has a directory for
    /// (running or stopped): what image collection must keep.
    pub fn layers_in_use(&self) -> std::collections::HashSet<PathBuf> {
        let mut out = std::collections::HashSet::new();
        let Ok(entries) = std::fs::read_dir(&self.cfg.sandboxes_dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(dirs) = self.dirs(&id) else { continue };
            let Ok(root) = crate::safe_fs::open_dir(&dirs.root) else {
                continue;
            };
            out.extend(read_pinned(&root).unwrap_or_default().layers);
        }
        out
    }

    /// Writes what the running sandbox `id` changed, as an OCI layer tar,
    /// to `out`, its processes frozen meanwhile (a paused sandbox stays
    /// paused). `mount_dir` is an empty directory of the runner's to mount
    /// the sandbox's disk on.
    pub fn commit_tar(
        &self,
        id: &str,
        mount_dir: &Path,
        out: impl Write,
    ) -> Result<crate::commit::TarStats, RuntimeError> {
        self.dirs(id)?;
        let e = self.running_entry(id)?;
        let (major, minor) = e.disk_dev.ok_or(RuntimeError::Unsupported(
            "snapshot a sandbox started before this version (restart it first)",
        ))?;
        let commit_err = |source| RuntimeError::Commit {
            id: id.into(),
            source,
        };
        let device = crate::commit::block_device(major, minor).map_err(commit_err)?;
        let freeze = !e.paused;
        if freeze {
            self.cgroups.freeze(id, FREEZE_TIMEOUT)?;
        }
        atoll_types::failpoint::hit("runtime.commit.frozen");
        let written = (|| {
            let _mount = crate::commit::ReadOnlyMount::new(&device, mount_dir)?;
            let upper = crate::safe_fs::open_dir(&mount_dir.join("upper")).map_err(|source| {
                crate::commit::CommitError::Io {
                    action: "opening",
                    path: "upper".into(),
                    source,
                }
            })?;
            crate::commit::upper_to_tar(&upper, out)
        })();
        if freeze {
            if let Err(err) = self.cgroups.thaw(id) {
                tracing::error!(sandbox = %id, error = %err, "could not thaw a sandbox after a snapshot");
            }
        }
        written.map_err(commit_err)
    }

    /// Copies sandbox `parent`'s disk and pinned layers to a new sandbox
    /// directory `child` (which must not exist), for `child` to start
    /// from. A running parent's processes are frozen and its disk's
    /// filesystem flushed for the instant of the copy, then thawed: it
    /// keeps running. The copy is a reflink clone where
    /// the sandboxes' filesystem has them (true is returned), a sparse
    /// byte copy otherwise.
    pub fn fork_disk(&self, parent: &str, child: &str) -> Result<bool, RuntimeError> {
        let from = self.dirs(parent)?;
        let to = self.dirs(child)?;
        let pinned = self.sandbox_image(parent)?;
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&to.root)
            .map_err(io("creating", &to.root))?;
        let t0 = Instant::now();
        let mut steps = [0u128; 3];
        let copied = (|| {
            let running = self.running_entry(parent).ok();
            let freeze = running.as_ref().is_some_and(|e| !e.paused);
            if freeze {
                self.cgroups.freeze(parent, FREEZE_TIMEOUT)?;
            }
            atoll_types::failpoint::hit("runtime.fork.frozen");
            let copied = (|| {
                // What the sandbox wrote, flushed to its disk's device:
                // syncfs of its root (an overlay: that syncs its upper
                // filesystem, the disk), seen through its PID 1. With its
                // processes frozen nothing new is written, so the clone
                // is what a power cut would leave (the journal replays on
                // the child's first mount), with every write made before
                // the fork in it.
                if let Some(e) = &running {
                    let root = std::fs::File::open(format!("/proc/{}/root", e.pid.unwrap_or(0)))
                        .ok()
                        .filter(|_| journal::is_alive(e))
                        .ok_or_else(|| RuntimeError::NotRunning { id: parent.into() })?;
                    nix::unistd::syncfs(&root).map_err(|e| RuntimeError::Io {
                        what: "flushing the disk of",
                        path: from.root.clone(),
                        source: e.into(),
                    })?;
                }
                steps[0] = t0.elapsed().as_micros();
                crate::disk::clone_or_copy(&from.disk_image(), &to.disk_image()).map_err(|source| {
                    RuntimeError::Disk {
                        id: child.into(),
                        source,
                    }
                })
            })();
            steps[1] = t0.elapsed().as_micros();
            if freeze {
                if let Err(err) = self.cgroups.thaw(parent) {
                    tracing::error!(sandbox = %parent, error = %err, "could not thaw a sandbox after a fork");
                }
            }
            steps[2] = t0.elapsed().as_micros();
            let cloned = copied?;
            let root = crate::safe_fs::open_dir(&to.root).map_err(io("opening", &to.root))?;
            let body = serde_json::to_vec(&pinned).unwrap_or_default();
            crate::safe_fs::write_file(&root, LAYERS_FILE, &body, 0o600)
                .map_err(io("writing the layers of", &to.root))?;
            // The new names on disk (not a syncfs: that would flush every
            // other sandbox's disk too).
            std::fs::File::open(&to.root)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", &to.root))?;
            tracing::debug!(
                parent,
                child,
                frozen_us = steps[0],
                cloned_us = steps[1],
                thawed_us = steps[2],
                done_us = t0.elapsed().as_micros(),
                copy_on_write = cloned,
                "forked a sandbox disk"
            );
            Ok(cloned)
        })();
        if copied.is_err() {
            let _ = std::fs::remove_dir_all(&to.root);
        }
        copied
    }

    /// The image a sandbox runs over.
    pub fn sandbox_image(&self, id: &str) -> Result<PinnedImage, RuntimeError> {
        let dirs = self.dirs(id)?;
        let root = crate::safe_fs::open_dir(&dirs.root).map_err(io("opening", &dirs.root))?;
        read_pinned(&root).ok_or_else(|| RuntimeError::NotRunning { id: id.into() })
    }
}

/// Used, total and available bytes of a running sandbox's disk: the
/// filesystem under its root (an overlay whose statfs is its upper
/// layer's, the sandbox's own loop-mounted disk), seen through its PID 1.
fn disk_usage(e: &Entry) -> Option<(u64, u64, u64)> {
    let root = std::fs::File::open(format!("/proc/{}/root", e.pid?)).ok()?;
    // As in `open_netns`: the pid still names PID 1 after the open, so the
    // directory opened is the sandbox's.
    if !journal::is_alive(e) {
        return None;
    }
    let st = nix::sys::statvfs::fstatvfs(&root).ok()?;
    let frag = st.fragment_size();
    let total = st.blocks().saturating_mul(frag);
    let free = st.blocks_free().saturating_mul(frag);
    let available = st.blocks_available().saturating_mul(frag);
    Some((total.saturating_sub(free), total, available))
}

/// What a journal entry says of its sandbox, checked against `/proc` now.
fn observed(e: Entry) -> Observed {
    match (e.state, journal::is_alive(&e)) {
        (EntryState::Running, true) => Observed::Running {
            id: e.id,
            pid: e.pid.unwrap_or(0),
            paused: e.paused,
        },
        (EntryState::Creating, _) => Observed::Failed {
            id: e.id,
            reason: "starting".into(),
        },
        (EntryState::Running, false) => Observed::Stopped { id: e.id },
    }
}

/// What the helper reported: PID 1's host pid, an error, the disk's
/// loop device number.
type Report = (Option<i32>, Option<String>, Option<(u64, u64)>);

/// Reads the helper's report until EOF (daemon exec'd) or timeout.
fn read_report(mut out: std::process::ChildStdout, timeout: Duration) -> Result<Report, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let fd = out.as_raw_fd();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "sandbox setup did not finish within {}s",
                timeout.as_secs()
            ));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes exactly one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.to_string());
        }
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 1024];
        match out.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut pid = None;
    let mut error = None;
    let mut disk = None;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("pid ") {
            pid = p.trim().parse().ok();
        } else if let Some(e) = line.strip_prefix("error ") {
            error = Some(e.to_string());
        } else if let Some(d) = line.strip_prefix("disk ") {
            disk = d
                .trim()
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        }
    }
    Ok((pid, error, disk))
}
