//! User namespaces: each running sandbox gets a slice of host uids and gids
//! of its own (root inside is an unprivileged uid outside), and the
//! filesystems it sees are idmapped onto that slice.
//!
//! - [`UidSlots`] hands out host-wide unique slices. A slot is a small
//!   file under `/run/atoll/uids` (tmpfs: every sandbox is gone after a
//!   reboot, and so are the files) naming its sandbox and the sandbox's
//!   cgroup. A slot is in use while its cgroup holds a process, or while
//!   the runner that reserved it lives (the instant between reserving and
//!   the sandbox joining its cgroup). Several runners on one host share
//!   the directory, so no two sandboxes of any runner share host uids.
//! - [`create_userns`] makes a user namespace with a slice mapped (a
//!   throw-away child unshares it; we write its maps and keep its
//!   `/proc/<child>/ns/user` open).
//! - [`idmap_clone`] gives a detached copy of a mount whose owners are
//!   shifted into that namespace (`open_tree` + `mount_setattr` with
//!   `MOUNT_ATTR_IDMAP`): on-disk uid 0 is the sandbox's root.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Uids (and gids) in one sandbox's slice: 0..65535 inside.
pub const SLICE: u32 = 65_536;
/// First host uid handed to sandboxes (well above any human or system
/// account, and below 2^31 so tools that keep uids in an `int` cope).
pub const FIRST_HOST_UID: u32 = 1 << 28;
/// How many slices fit below 2^31.
pub const SLOTS: u32 = ((1u32 << 31) - FIRST_HOST_UID) / SLICE;

#[derive(Debug, Error)]
pub enum UsernsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("every host uid slice ({SLOTS}) is in use")]
    Exhausted,
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        source: std::io::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> UsernsError + 'a {
    move |source| UsernsError::Io {
        what,
        path: path.into(),
        source,
    }
}

fn sys(step: &'static str) -> impl FnOnce(std::io::Error) -> UsernsError {
    move |source| UsernsError::Sys { step, source }
}

/// One sandbox's slice of host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UidRange {
    /// Host uid (and gid) of root inside.
    pub base: u32,
    pub count: u32,
}

impl UidRange {
    pub fn of_slot(slot: u32) -> UidRange {
        UidRange {
            base: FIRST_HOST_UID + slot * SLICE,
            count: SLICE,
        }
    }

    pub fn slot(&self) -> u32 {
        (self.base - FIRST_HOST_UID) / SLICE
    }

    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.base && uid - self.base < self.count
    }

    /// The `uid_map`/`gid_map` line.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.base, self.count)
    }
}

/// The host-wide registry of slices.
#[derive(Debug, Clone)]
pub struct UidSlots {
    dir: PathBuf,
    /// Where this runner starts looking (spreads runners apart).
    hint: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// What a slot file records.
#[derive(Debug, PartialEq, Eq)]
struct SlotRecord {
    runner_pid: i32,
    runner_start: u64,
    sandbox: String,
    cgroup_procs: Vec<PathBuf>,
}

impl SlotRecord {
    /// A record of this runner (alive now) for `sandbox`.
    fn ours(sandbox: &str, cgroup_procs: &[PathBuf]) -> SlotRecord {
        let me = std::process::id() as i32;
        SlotRecord {
            runner_pid: me,
            runner_start: crate::journal::process_start_time(me).unwrap_or(0),
            sandbox: sandbox.into(),
            cgroup_procs: cgroup_procs.to_vec(),
        }
    }

    fn render(&self) -> String {
        let mut s = format!(
            "{} {} {}\n",
            self.runner_pid, self.runner_start, self.sandbox
        );
        for p in &self.cgroup_procs {
            s.push_str(&p.to_string_lossy());
            s.push('\n');
        }
        s
    }

    fn parse(text: &str) -> Option<SlotRecord> {
        let mut lines = text.lines();
        let mut head = lines.next()?.split(' ');
        let runner_pid = head.next()?.parse().ok()?;
        let runner_start = head.next()?.parse().ok()?;
        let sandbox = head.next()?.to_string();
        Some(SlotRecord {
            runner_pid,
            runner_start,
            sandbox,
            cgroup_procs: lines.filter(|l| !l.is_empty()).map(PathBuf::from).collect(),
        })
    }

    /// Is the slice still held: by a sandbox process in its cgroup, or by
    /// the runner that is starting it?
    fn in_use(&self) -> bool {
        let runner_alive = crate::journal::process_start_time(self.runner_pid)
            .is_some_and(|t| t == self.runner_start);
        runner_alive
            || self.cgroup_procs.iter().any(|p| {
                std::fs::read_to_string(p).is_ok_and(|s| s.split_whitespace().next().is_some())
            })
    }
}

impl UidSlots {
    pub fn open(dir: &Path, instance: &str) -> Result<UidSlots, UsernsError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("securing", dir))?;
        let seed = u32::from_str_radix(instance.get(..6).unwrap_or("0"), 16).unwrap_or(0) % SLOTS;
        let slots = UidSlots {
            dir: dir.into(),
            hint: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(seed)),
        };
        slots.sweep();
        Ok(slots)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, UsernsError> {
        let path = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            UsernsError::Sys {
                step: "locking the uid slots",
                source: e.into(),
            }
        })
    }

    /// Removes the records of slices nobody holds any more (runners that
    /// died with slices reserved, sandboxes whose cgroup is gone).
    fn sweep(&self) {
        let Ok(_lock) = self.lock() else { return };
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            if name.to_string_lossy().parse::<u32>().is_err() {
                continue;
            }
            let stale = std::fs::read_to_string(e.path())
                .map(|t| SlotRecord::parse(&t).is_none_or(|r| !r.in_use()))
                .unwrap_or(false);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Reserves a slice for `sandbox`, whose cgroup will be `cgroup_procs`.
    pub fn reserve(
        &self,
        sandbox: &str,
        cgroup_procs: &[PathBuf],
    ) -> Result<UidRange, UsernsError> {
        let _lock = self.lock()?;
        let record = SlotRecord::ours(sandbox, cgroup_procs);
        let start = self.hint.load(std::sync::atomic::Ordering::Relaxed) % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let path = self.dir.join(slot.to_string());
            let free = match std::fs::read_to_string(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(io_err("reading", &path)(e)),
                Ok(text) => SlotRecord::parse(&text).is_none_or(|r| !r.in_use()),
            };
            if !free {
                continue;
            }
            write_atomic(&path, record.render().as_bytes())?;
            self.hint
                .store((slot + 1) % SLOTS, std::sync::atomic::Ordering::Relaxed);
            return Ok(UidRange::of_slot(slot));
        }
        Err(UsernsError::Exhausted)
    }

    /// Hands a reserved slice (by this runner) to `sandbox`, whose cgroup
    /// will be `cgroup_procs`: from here the slice is held while that
    /// cgroup has a process, even if this runner dies.
    pub fn assign(
        &self,
        range: &UidRange,
        sandbox: &str,
        cgroup_procs: &[PathBuf],
    ) -> Result<(), UsernsError> {
        let _lock = self.lock()?;
        let record = SlotRecord::ours(sandbox, cgroup_procs);
        write_atomic(
            &self.dir.join(range.slot().to_string()),
            record.render().as_bytes(),
        )
    }

    /// Gives the slice back, if it still names `sandbox`.
    pub fn release(&self, range: &UidRange, sandbox: &str) {
        let Ok(_lock) = self.lock() else { return };
        let path = self.dir.join(range.slot().to_string());
        if let Ok(text) = std::fs::read_to_string(&path) {
            if SlotRecord::parse(&text).is_some_and(|r| r.sandbox == sandbox) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn write_atomic(path: &Path, body: &[u8]) -> Result<(), UsernsError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err("writing", &tmp))?;
    f.write_all(body).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("renaming", path))
}

/// Name a pooled slice is reserved under until a sandbox takes it.
const POOLED: &str = "-";

/// Slices with their user namespaces made ahead of time by a background
/// thread (like the network slots), so a create does not pay for the
/// throw-away process that makes one.
pub struct UsernsPool {
    inner: std::sync::Arc<PoolInner>,
}

struct PoolInner {
    slots: UidSlots,
    ready: std::sync::Mutex<Vec<(UidRange, File)>>,
    want: usize,
    wake: std::sync::Condvar,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let ready = std::mem::take(self.ready.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (range, _) in ready {
            self.slots.release(&range, POOLED);
        }
    }
}

impl UsernsPool {
    /// Starts the filler keeping `want` namespaces ready (0: none, every
    /// take makes its own).
    pub fn start(slots: UidSlots, want: usize) -> UsernsPool {
        let inner = std::sync::Arc::new(PoolInner {
            slots,
            ready: Default::default(),
            want,
            wake: Default::default(),
        });
        if want > 0 {
            let weak = std::sync::Arc::downgrade(&inner);
            let _ = std::thread::Builder::new()
                .name("atoll-userns-pool".into())
                .spawn(move || fill(weak));
        }
        UsernsPool { inner }
    }

    /// A slice and its user namespace for `sandbox` (whose cgroup will be
    /// `cgroup_procs`): a ready one, or one made now.
    pub fn take(
        &self,
        sandbox: &str,
        cgroup_procs: &[PathBuf],
    ) -> Result<(UidRange, File), UsernsError> {
        let pooled = self
            .inner
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        self.inner.wake.notify_one();
        let (range, ns) = match pooled {
            Some(p) => p,
            None => {
                let range = self.inner.slots.reserve(sandbox, cgroup_procs)?;
                match create_userns(&range) {
                    Ok(ns) => (range, ns),
                    Err(e) => {
                        self.inner.slots.release(&range, sandbox);
                        return Err(e);
                    }
                }
            }
        };
        if let Err(e) = self.inner.slots.assign(&range, sandbox, cgroup_procs) {
            self.inner.slots.release(&range, POOLED);
            return Err(e);
        }
        Ok((range, ns))
    }

    /// Gives a slice back (its sandbox's cgroup is gone).
    pub fn release(&self, range: &UidRange, sandbox: &str) {
        self.inner.slots.release(range, sandbox);
    }
}

fn fill(inner: std::sync::Weak<PoolInner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        let short = me.ready.lock().unwrap_or_else(|p| p.into_inner()).len() < me.want;
        if short {
            let made = me.slots.reserve(POOLED, &[]).and_then(|range| {
                create_userns(&range)
                    .inspect_err(|_| me.slots.release(&range, POOLED))
                    .map(|ns| (range, ns))
            });
            match made {
                Ok(p) => me.ready.lock().unwrap_or_else(|p| p.into_inner()).push(p),
                Err(e) => {
                    tracing::warn!(error = %e, "preparing a user namespace failed");
                    let g = me.ready.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = me.wake.wait_timeout(g, std::time::Duration::from_secs(5));
                }
            }
            continue;
        }
        let g = me.ready.lock().unwrap_or_else(|p| p.into_inner());
        let _ = me.wake.wait_timeout(g, std::time::Duration::from_secs(2));
    }
}

/// Creates a user namespace with `range` mapped as 0..count inside, for
/// uids and gids, owned by the range's first host uid, and returns it as an
/// open `/proc/<pid>/ns/user`.
///
/// Forks a child that makes only raw system calls before `_exit`, so it
/// may be called from a multi-threaded process.
pub fn create_userns(range: &UidRange) -> Result<File, UsernsError> {
    // The child unshares, tells us, and waits until we have what we need.
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys("pipe")(e.into()))?;
    let (done_r, done_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys("pipe")(e.into()))?;
    // SAFETY: the child only makes raw, async-signal-safe syscalls on
    // descriptors it owns and _exits: sound after fork even from a
    // multi-threaded process.
    match unsafe { nix::unistd::fork() }.map_err(|e| sys("fork")(e.into()))? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            // SAFETY: setres[ug]id/unshare/write/read/_exit on fds we own;
            // no allocation.
            unsafe {
                // The namespace's owner is the sandbox's own host uid, not
                // root: per-user kernel counters (inotify instances,
                // processes) charged inside are charged to that uid
                // outside, so one sandbox cannot exhaust another's or the
                // host's.
                let ok = libc::setresgid(range.base, range.base, range.base) == 0
                    && libc::setresuid(range.base, range.base, range.base) == 0
                    && libc::unshare(libc::CLONE_NEWUSER) == 0;
                let b = [u8::from(ok)];
                libc::write(ready_w.as_raw_fd(), b.as_ptr().cast(), 1);
                let mut x = [0u8; 1];
                libc::read(done_r.as_raw_fd(), x.as_mut_ptr().cast(), 1);
                libc::_exit(0)
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let result = (|| {
                let mut b = [0u8; 1];
                File::from(ready_r)
                    .read_exact(&mut b)
                    .map_err(sys("waiting for the user namespace"))?;
                if b[0] != 1 {
                    return Err(UsernsError::Sys {
                        step: "unshare(CLONE_NEWUSER)",
                        source: std::io::Error::from_raw_os_error(libc::EPERM),
                    });
                }
                let line = range.map_line();
                for map in ["uid_map", "gid_map"] {
                    let p = PathBuf::from(format!("/proc/{child}/{map}"));
                    std::fs::write(&p, &line).map_err(io_err("writing", &p))?;
                }
                let p = PathBuf::from(format!("/proc/{child}/ns/user"));
                File::open(&p).map_err(io_err("opening", &p))
            })();
            drop(File::from(done_w));
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> Result<CString, UsernsError> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| UsernsError::Sys {
        step: "path with a NUL byte",
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// A detached copy of the mount tree at `path` whose file owners appear
/// shifted into `userns` (and read-only if asked). Attach it with
/// [`attach`].
pub fn idmap_clone(path: &Path, userns: &File, readonly: bool) -> Result<OwnedFd, UsernsError> {
    clone_tree(path, Some(userns), readonly)
}

/// A detached copy of the mount tree at `path`, owners as they are
/// (read-only if asked): for filesystems that cannot be idmapped.
pub fn plain_clone(path: &Path, readonly: bool) -> Result<OwnedFd, UsernsError> {
    clone_tree(path, None, readonly)
}

fn clone_tree(path: &Path, userns: Option<&File>, readonly: bool) -> Result<OwnedFd, UsernsError> {
    let c = cpath(path)?;
    // SAFETY: open_tree reads a NUL-terminated path we own; the returned fd
    // is wrapped at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(sys("open_tree")(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut set = MOUNT_ATTR_NODEV;
    if userns.is_some() {
        set |= MOUNT_ATTR_IDMAP;
    }
    if readonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    // SAFETY: mount_setattr reads `attr` (size given) and an empty path
    // relative to our tree fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(sys("idmapping a mount")(std::io::Error::last_os_error()));
    }
    Ok(tree)
}

/// Attaches a detached mount (from [`idmap_clone`] or `fsmount`) at `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> Result<(), UsernsError> {
    let c = cpath(target)?;
    // SAFETY: move_mount reads an empty path relative to the tree fd and a
    // NUL-terminated target path we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(sys("attaching a mount")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A new, detached, read-only sysfs of the caller's network namespace
/// (`fsopen` + `fsmount`), for the sandbox to attach at `/sys`: a user
/// namespace that does not own the network namespace cannot mount one.
pub fn detached_sysfs() -> Result<OwnedFd, UsernsError> {
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NOEXEC: u64 = 0x8;
    // SAFETY: fsopen reads a NUL-terminated name; the fd is wrapped below.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"sysfs".as_ptr(), 1 as libc::c_uint) };
    if fs < 0 {
        return Err(sys("fsopen sysfs")(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    // SAFETY: fsconfig CMD_CREATE takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return Err(sys("creating sysfs")(std::io::Error::last_os_error()));
    }
    // SAFETY: fsmount on the configured context; the fd is wrapped below.
    let m = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        )
    };
    if m < 0 {
        return Err(sys("fsmount sysfs")(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_do_not_overlap_and_stay_below_2_pow_31() {
        let a = UidRange::of_slot(0);
        let b = UidRange::of_slot(1);
        assert_eq!(a.base + a.count, b.base);
        assert!(!a.contains(b.base) && a.contains(a.base + 1000));
        let last = UidRange::of_slot(SLOTS - 1);
        assert!(u64::from(last.base) + u64::from(last.count) <= 1 << 31);
        assert_eq!(last.slot(), SLOTS - 1);
        assert_eq!(a.map_line(), format!("0 {} 65536\n", FIRST_HOST_UID));
    }

    #[test]
    fn slot_records_round_trip() {
        let r = SlotRecord {
            runner_pid: 42,
            runner_start: 7,
            sandbox: "abc".into(),
            cgroup_procs: vec!["/sys/fs/cgroup/pids/atoll/x/abc/cgroup.procs".into()],
        };
        assert_eq!(SlotRecord::parse(&r.render()), Some(r));
        assert_eq!(SlotRecord::parse("garbage"), None);
    }

    #[test]
    fn a_slot_is_held_by_a_live_runner_or_a_populated_cgroup() {
        let dir = std::env::temp_dir().join(format!("atoll-uids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let slots = UidSlots::open(&dir, "000000").unwrap();
        let a = slots.reserve("a", &[]).unwrap();
        let b = slots.reserve("b", &[]).unwrap();
        assert_ne!(a, b, "the reserving runner (us) is alive: a stays taken");
        slots.release(&a, "someone-else");
        let c = slots.reserve("c", &[]).unwrap();
        assert_ne!(c, a, "release only frees the slot of the named sandbox");
        slots.release(&a, "a");
        // A dead runner's reservation whose cgroup is empty is free again.
        let dead = SlotRecord {
            runner_pid: i32::MAX,
            runner_start: 1,
            sandbox: "gone".into(),
            cgroup_procs: vec![dir.join("empty.procs")],
        };
        std::fs::write(dir.join("empty.procs"), "").unwrap();
        assert!(!dead.in_use());
        std::fs::write(dir.join("busy.procs"), "123\n").unwrap();
        let busy = SlotRecord {
            cgroup_procs: vec![dir.join("busy.procs")],
            ..dead
        };
        assert!(busy.in_use());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
