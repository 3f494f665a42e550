//! Volumes on this runner: data that outlives sandboxes. Each volume is an
//! ext4 filesystem in a sparse image file `<volumes>/<id>/volume.img` (its
//! size is the volume's quota: writes past it get ENOSPC), loop-mounted
//! once on the host at `<volumes>/<id>/fs` (nodev, nosuid) and bound into
//! every sandbox that mounts it through an idmapped mount of that
//! sandbox's user namespace: files keep canonical owners on disk (`daytona`
//! is 1000 in every sandbox), so what one sandbox wrote is the same user's
//! in the next, although each sandbox has its own host uid range.
//!
//! Read-only mounts are read-only idmapped mounts made before the
//! sandbox's mount namespace exists, so the kernel locks the flag (root
//! inside cannot remount it writable). A subpath is resolved beneath the
//! volume's root by descriptors, refusing `..` and symlinks (a sandbox may
//! have planted one), and the mount is of that directory itself: nothing
//! the sandbox later creates inside it leads out.

use crate::disk::DiskTemplates;
use atoll_runtime_api::{RuntimeError, VolumeUsage};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

const IMAGE: &str = "volume.img";
const S3FS_PASSWD: &str = ".s3fs-passwd";
const FS: &str = "fs";

/// Where volumes' files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An ext4 image per volume on this host (its quota enforced).
    Local,
    /// A prefix per volume in an S3-compatible bucket, mounted on the host
    /// with `s3fs` (Debian's) wherever a sandbox needs it: every runner
    /// of the deployment with the same bucket reaches every volume. No
    /// quota (S3 has none), and the files show as owned by nobody with
    /// mode 0777 (a FUSE filesystem cannot be idmapped), as Daytona's are.
    S3 {
        bucket: String,
        prefix: String,
        /// The endpoint (`AWS_ENDPOINT`, else AWS's for `AWS_REGION`).
        url: String,
    },
}

impl Backend {
    /// `None`: local; `s3://bucket[/prefix]`: S3, with credentials,
    /// region and endpoint from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`.
    pub fn from_url(url: Option<&str>) -> Result<Backend, String> {
        let Some(url) = url else {
            return Ok(Backend::Local);
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url}: only s3:// urls are supported"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(format!("{url}: not a bucket name"));
        }
        let endpoint = std::env::var("AWS_ENDPOINT")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|_| {
                let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
                format!("https://s3.{region}.amazonaws.com")
            });
        Ok(Backend::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            url: endpoint.trim_end_matches('/').to_string(),
        })
    }
}

/// The volumes of this runner, under one directory.
pub struct Volumes {
    root: PathBuf,
    backend: Backend,
    /// Mounts are made one at a time (two sandboxes starting with one
    /// volume must not mount it twice).
    mounting: std::sync::Mutex<()>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |e| {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            return RuntimeError::NoSpace(format!("{what}: {e}"));
        }
        RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&format!(
            "{what} {}: {e}",
            path.display()
        )))
    }
}

fn is_mountpoint(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Some(parent)) = (std::fs::symlink_metadata(dir), dir.parent()) else {
        return false;
    };
    std::fs::symlink_metadata(parent).is_ok_and(|p| p.dev() != d.dev())
}

impl Volumes {
    pub fn open(root: &Path, backend: Backend) -> Result<Volumes, RuntimeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io("creating", root))?;
        crate::safe_fs::register_host_dir(root);
        if let Backend::S3 { .. } = backend {
            // s3fs reads its credentials from a file only root may read.
            let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
            let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
            if key.is_empty() || secret.is_empty() || key.contains(':') {
                return Err(RuntimeError::Failed(
                    "S3 volumes need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                ));
            }
            crate::safe_fs::write_file(
                crate::safe_fs::open_dir(root).map_err(io("opening", root))?,
                S3FS_PASSWD,
                format!("{key}:{secret}\n").as_bytes(),
                0o600,
            )
            .map_err(io("writing the s3fs credentials in", root))?;
        }
        Ok(Volumes {
            root: root.to_path_buf(),
            backend,
            mounting: std::sync::Mutex::new(()),
        })
    }

    /// Every runner reaches this store's volumes (S3).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::S3 { .. })
    }

    /// Sandboxes see the volumes' owners shifted into their user
    /// namespaces (not for FUSE-mounted S3).
    pub fn idmap(&self) -> bool {
        !self.shared()
    }

    fn dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        if !crate::spec::is_safe_id(id) {
            return Err(RuntimeError::InvalidId(id.into()));
        }
        Ok(self.root.join(id))
    }

    /// Creates volume `id` (a sparse copy of a formatted template of
    /// `bytes`) and mounts it; an existing one is only mounted.
    pub fn create(
        &self,
        templates: &DiskTemplates,
        id: &str,
        bytes: u64,
    ) -> Result<(), RuntimeError> {
        let dir = self.dir(id)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("creating", &dir)(e)),
        }
        if self.shared() {
            return self.mount(id).map(|_| ());
        }
        let image = dir.join(IMAGE);
        if !image.exists() {
            // Made aside and renamed: a crash leaves no half image.
            let tmp = dir.join("volume.img.tmp");
            let _ = std::fs::remove_file(&tmp);
            templates.provision(&tmp, bytes).map_err(|e| {
                RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&e.to_string()))
            })?;
            std::fs::write(dir.join("fresh"), b"").map_err(io("marking", &dir))?;
            std::fs::rename(&tmp, &image).map_err(io("storing", &image))?;
        }
        self.mount(id).map(|_| ())
    }

    /// The volume's filesystem, mounted (again, after a host reboot).
    pub fn mount(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let dir = self.dir(id)?;
        let fs = dir.join(FS);
        let _one = self.mounting.lock().unwrap_or_else(|p| p.into_inner());
        if is_mountpoint(&fs) {
            return Ok(fs);
        }
        if let Backend::S3 {
            bucket,
            prefix,
            url,
        } = &self.backend
        {
            return self.mount_s3(id, &dir, &fs, bucket, prefix, url);
        }
        let image = dir.join(IMAGE);
        if !image.is_file() {
            return Err(RuntimeError::Failed(format!(
                "volume {id} is not stored on this runner"
            )));
        }
        match std::fs::DirBuilder::new().mode(0o755).create(&fs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("creating", &fs)(e)),
        }
        let dev = crate::disk::attach(&image)
            .map_err(|e| RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&e.to_string())))?;
        nix::mount::mount(
            Some(dev.path.as_path()),
            &fs,
            Some("ext4"),
            nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(|e| io("mounting", &fs)(e.into()))?;
        // A fresh filesystem (first mount): its root open to every user of
        // a sandbox (as Daytona's volumes are), without mkfs's lost+found.
        let fresh = dir.join("fresh");
        if fresh.exists() {
            let _ = std::fs::remove_dir(fs.join("lost+found"));
            std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(0o777))
                .map_err(io("opening up", &fs))?;
            let _ = std::fs::remove_file(&fresh);
        }
        Ok(fs)
    }

    /// Mounts volume `id`'s prefix of the bucket at `fs` with s3fs.
    fn mount_s3(
        &self,
        id: &str,
        dir: &Path,
        fs: &Path,
        bucket: &str,
        prefix: &str,
        url: &str,
    ) -> Result<PathBuf, RuntimeError> {
        for d in [dir, fs] {
            match std::fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("creating", d)(e)),
            }
        }
        let _ = std::fs::set_permissions(fs, std::fs::Permissions::from_mode(0o755));
        let key = if prefix.is_empty() {
            format!("{bucket}:/{id}")
        } else {
            format!("{bucket}:/{prefix}/{id}")
        };
        let passwd = self.root.join(S3FS_PASSWD);
        let out = std::process::Command::new("s3fs")
            .arg(&key)
            .arg(fs)
            .arg("-o")
            .arg(format!(
                "passwd_file={},url={url},use_path_request_style,allow_other,umask=0000,mp_umask=0000,\
                 uid=0,gid=0,nonempty,nosuid,nodev",
                passwd.display()
            ))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| RuntimeError::Failed(format!("running s3fs (is it installed?): {e}")))?;
        if !out.status.success() || !is_mountpoint(fs) {
            return Err(RuntimeError::Failed(format!(
                "mounting volume {id} from S3 failed: {}",
                crate::safe_fs::scrub_host_paths(String::from_utf8_lossy(&out.stderr).trim())
            )));
        }
        Ok(fs.to_path_buf())
    }

    /// Unmounts and deletes volume `id`; gone already is fine.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id)?;
        let fs = dir.join(FS);
        if self.shared() {
            // The files are in the bucket: removed through the mount.
            let root = self.root_fd(id)?;
            remove_below(&root, "/", 0)?;
        }
        {
            let _one = self.mounting.lock().unwrap_or_else(|p| p.into_inner());
            if is_mountpoint(&fs) {
                // Detached: sandboxes still holding it keep their view until
                // they stop; the loop device goes with the last user.
                nix::mount::umount2(&fs, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| io("unmounting", &fs)(e.into()))?;
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("deleting", &dir)(e)),
        }
    }

    /// What volume `id` holds.
    pub fn usage(&self, id: &str) -> Result<VolumeUsage, RuntimeError> {
        let fs = self.mount(id)?;
        let st = nix::sys::statvfs::statvfs(&fs).map_err(|e| io("measuring", &fs)(e.into()))?;
        let frag = st.fragment_size();
        let total = st.blocks().saturating_mul(frag);
        let free = st.blocks_free().saturating_mul(frag);
        Ok(VolumeUsage {
            used_bytes: total.saturating_sub(free),
            size_bytes: total,
        })
    }
}

/// The directory `subpath` beneath the volume root `root` (made, mode
/// 0777, where missing), as an `O_PATH` descriptor. `..`, symlinks and
/// other filesystems on the way are refused.
pub fn subdir(root: &OwnedFd, subpath: &str) -> Result<OwnedFd, std::io::Error> {
    let mut cur = nix::unistd::dup(root).map_err(std::io::Error::from)?;
    for part in subpath.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(std::io::Error::other(format!(
                "subpath {subpath:?} leads out of the volume"
            )));
        }
        let how = || {
            OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_XDEV
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                )
        };
        let next = match nix::fcntl::openat2(&cur, part, how()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(&cur, part, Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                // mkdir's mode is masked by the umask: open it up.
                let fd = nix::fcntl::openat2(&cur, part, how()).map_err(std::io::Error::from)?;
                let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
                fd
            }
            Err(nix::errno::Errno::ELOOP) | Err(nix::errno::Errno::ENOTDIR) => {
                return Err(std::io::Error::other(format!(
                    "subpath {subpath:?}: {part:?} is a symlink or not a directory"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        cur = next;
    }
    Ok(cur)
}

// ---- files of a volume, without a sandbox -------------------------------

/// Who owns what the API writes into a volume: the default image's user
/// (`daytona`, 1000), so sandboxes can change it.
const API_OWNER: u32 = 1000;
/// Directories nested deeper than this are not removed (the walk recurses
/// over a tree sandboxes made).
const MAX_DEPTH: usize = 256;

fn bad(m: impl Into<String>) -> RuntimeError {
    RuntimeError::BadPath(m.into())
}

/// `path` as parts below the volume's root: `""`, `.` and a leading `/`
/// dropped; `..` refused.
fn parts(path: &str) -> Result<Vec<&str>, RuntimeError> {
    if path.len() > 4096 || path.contains('\0') {
        return Err(bad("the path is too long or has a NUL byte"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(bad(format!("{path:?}: `..` is not allowed")));
    }
    Ok(parts)
}

fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_IN_ROOT
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    )
}

fn strict(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

fn errno(path: &str, e: nix::errno::Errno) -> RuntimeError {
    use nix::errno::Errno;
    match e {
        Errno::ENOENT => RuntimeError::PathNotFound(format!("{path}: no such file or directory")),
        Errno::ENOTDIR => bad(format!("{path}: not a directory")),
        Errno::EISDIR => bad(format!("{path}: is a directory")),
        Errno::ELOOP => bad(format!("{path}: a symlink is in the way")),
        Errno::ENOTEMPTY | Errno::EEXIST => bad(format!("{path}: the directory is not empty")),
        Errno::ENOSPC | Errno::EDQUOT => {
            RuntimeError::NoSpace(format!("{path}: the volume is full"))
        }
        e => RuntimeError::Failed(format!("{path}: {e}")),
    }
}

fn entry_of(name: &str, st: &nix::sys::stat::FileStat, symlink: Option<String>) -> VolumeEntry {
    let kind = st.st_mode & libc::S_IFMT;
    VolumeEntry {
        name: name.to_string(),
        is_dir: kind == libc::S_IFDIR,
        symlink,
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        modified_at_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
    }
}

use atoll_runtime_api::VolumeEntry;

impl Volumes {
    fn root_fd(&self, id: &str) -> Result<OwnedFd, RuntimeError> {
        let fs = self.mount(id)?;
        crate::safe_fs::open_dir(&fs).map_err(io("opening", &fs))
    }

    /// The entries of directory `path` (symlinks inside resolve within
    /// the volume), sorted by name.
    pub fn list(&self, id: &str, path: &str) -> Result<Vec<VolumeEntry>, RuntimeError> {
        let root = self.root_fd(id)?;
        let rel = parts(path)?.join("/");
        let dir = nix::fcntl::openat2(
            &root,
            if rel.is_empty() { "." } else { rel.as_str() },
            in_root(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
        )
        .map_err(|e| errno(path, e))?;
        let listing_fd = nix::unistd::dup(&dir).map_err(|e| errno(path, e))?;
        let mut listing = nix::dir::Dir::from_fd(listing_fd).map_err(|e| errno(path, e))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in listing.iter() {
            let e = e.map_err(|e| errno(path, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let Ok(st) = nix::sys::stat::fstatat(
                &dir,
                e.file_name(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            let link = (st.st_mode & libc::S_IFMT == libc::S_IFLNK)
                .then(|| nix::fcntl::readlinkat(&dir, e.file_name()).ok())
                .flatten()
                .map(|t| t.to_string_lossy().into_owned());
            bytes += name.len() + link.as_ref().map_or(0, String::len) + 64;
            out.push(entry_of(&name, &st, link));
            if out.len() > 100_000 || bytes > 8 << 20 {
                return Err(bad(format!(
                    "{path}: too many entries to list (at most 100000, 8 MiB)"
                )));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// File `path` open for reading (symlinks resolve within the volume)
    /// and its size.
    pub fn open_file(&self, id: &str, path: &str) -> Result<(u64, std::fs::File), RuntimeError> {
        let root = self.root_fd(id)?;
        let rel = parts(path)?.join("/");
        if rel.is_empty() {
            return Err(bad(format!("{path}: is a directory")));
        }
        // Non-blocking: a FIFO a sandbox left must not hang the reader.
        let fd = nix::fcntl::openat2(
            &root,
            rel.as_str(),
            in_root(OFlag::O_RDONLY | OFlag::O_NONBLOCK),
        )
        .map_err(|e| errno(path, e))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| errno(path, e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(bad(format!("{path}: not a regular file")));
        }
        Ok((st.st_size.max(0) as u64, std::fs::File::from(fd)))
    }

    /// The directory `parts` below the root, made (owned by the API's
    /// user) where missing; symlinks on the way are refused.
    fn parent_dir(
        root: &OwnedFd,
        parts: &[&str],
        path: &str,
        create: bool,
    ) -> Result<OwnedFd, RuntimeError> {
        let mut cur = nix::unistd::dup(root).map_err(|e| errno(path, e))?;
        for part in parts {
            let open = |cur: &OwnedFd| {
                nix::fcntl::openat2(cur, *part, strict(OFlag::O_RDONLY | OFlag::O_DIRECTORY))
            };
            cur = match open(&cur) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(&cur, *part, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                        Err(e) => return Err(errno(path, e)),
                    }
                    let fd = open(&cur).map_err(|e| errno(path, e))?;
                    let _ = nix::unistd::fchown(
                        &fd,
                        Some(nix::unistd::Uid::from_raw(API_OWNER)),
                        Some(nix::unistd::Gid::from_raw(API_OWNER)),
                    );
                    fd
                }
                Err(e @ (nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP)) => {
                    let link = nix::sys::stat::fstatat(
                        &cur,
                        *part,
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
                    if link {
                        return Err(bad(format!(
                            "{path}: {part} is a symlink (never followed here)"
                        )));
                    }
                    return Err(errno(path, e));
                }
                Err(e) => return Err(errno(path, e)),
            };
        }
        Ok(cur)
    }

    /// Writes file `path` from `body`: into a temporary file beside it,
    /// synced, then renamed over it, so a reader never sees half a file.
    pub fn write(
        &self,
        id: &str,
        path: &str,
        body: &mut dyn std::io::Read,
    ) -> Result<u64, RuntimeError> {
        let root = self.root_fd(id)?;
        let all = parts(path)?;
        let Some((name, dirs)) = all.split_last() else {
            return Err(bad(format!("{path}: a file path is needed")));
        };
        let parent = Self::parent_dir(&root, dirs, path, true)?;
        let mut rnd = [0u8; 8];
        let _ = std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom")
                .map_err(io("reading", Path::new("/dev/urandom")))?,
            &mut rnd,
        );
        let tmp = format!(".atoll-upload-{}", hex::encode(rnd));
        let fd = nix::fcntl::openat(
            &parent,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| errno(path, e))?;
        let mut file = std::fs::File::from(fd);
        let written = (|| {
            let _ = nix::unistd::fchown(
                &file,
                Some(nix::unistd::Uid::from_raw(API_OWNER)),
                Some(nix::unistd::Gid::from_raw(API_OWNER)),
            );
            let n = std::io::copy(body, &mut file)?;
            file.sync_all()?;
            Ok::<u64, std::io::Error>(n)
        })();
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = nix::unistd::unlinkat(
                    &parent,
                    tmp.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                return Err(match e.raw_os_error() {
                    Some(c) => errno(path, nix::errno::Errno::from_raw(c)),
                    None => RuntimeError::Failed(format!("{path}: {e}")),
                });
            }
        };
        if let Err(e) = nix::fcntl::renameat(&parent, tmp.as_str(), &parent, *name) {
            let _ = nix::unistd::unlinkat(
                &parent,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(errno(path, e));
        }
        Ok(n)
    }

    /// Removes `path` (a directory and what it holds only with
    /// `recursive`). Symlinks are removed, never followed.
    pub fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), RuntimeError> {
        let root = self.root_fd(id)?;
        let all = parts(path)?;
        let Some((name, dirs)) = all.split_last() else {
            return Err(bad("the volume's root cannot be removed"));
        };
        let parent = Self::parent_dir(&root, dirs, path, false)?;
        let st = nix::sys::stat::fstatat(&parent, *name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| errno(path, e))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            if recursive {
                let dir = nix::fcntl::openat2(
                    &parent,
                    *name,
                    strict(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
                )
                .map_err(|e| errno(path, e))?;
                remove_below(&dir, path, 0)?;
            }
            nix::unistd::unlinkat(&parent, *name, nix::unistd::UnlinkatFlags::RemoveDir)
                .map_err(|e| errno(path, e))
        } else {
            nix::unistd::unlinkat(&parent, *name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(|e| errno(path, e))
        }
    }
}

/// Empties the directory `dir`, by descriptors.
fn remove_below(dir: &OwnedFd, path: &str, depth: usize) -> Result<(), RuntimeError> {
    if depth > MAX_DEPTH {
        return Err(bad(format!(
            "{path}: directories nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let names: Vec<std::ffi::OsString> = {
        let fd = nix::unistd::dup(dir).map_err(|e| errno(path, e))?;
        let mut listing = nix::dir::Dir::from_fd(fd).map_err(|e| errno(path, e))?;
        listing
            .iter()
            .filter_map(Result::ok)
            .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    for name in names {
        let Ok(st) = nix::sys::stat::fstatat(
            dir,
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub = nix::fcntl::openat2(
                dir,
                name.as_os_str(),
                strict(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
            )
            .map_err(|e| errno(path, e))?;
            remove_below(&sub, path, depth + 1)?;
            nix::unistd::unlinkat(dir, name.as_os_str(), nix::unistd::UnlinkatFlags::RemoveDir)
                .map_err(|e| errno(path, e))?;
        } else {
            nix::unistd::unlinkat(
                dir,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .map_err(|e| errno(path, e))?;
        }
    }
    Ok(())
}
