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
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

const IMAGE: &str = "volume.img";
const FS: &str = "fs";

/// The volumes of this runner, under one directory.
pub struct Volumes {
    root: PathBuf,
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
    pub fn open(root: &Path) -> Result<Volumes, RuntimeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io("creating", root))?;
        crate::safe_fs::register_host_dir(root);
        Ok(Volumes {
            root: root.to_path_buf(),
            mounting: std::sync::Mutex::new(()),
        })
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
        let image = dir.join(IMAGE);
        if !image.exists() {
            // Made aside and renamed: a crash leaves no half image.
            let tmp = dir.join("volume.img.tmp");
            let _ = std::fs::remove_file(&tmp);
            templates.provision(&tmp, bytes).map_err(|e| {
                RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&e.to_string()))
            })?;
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
        // A fresh filesystem: its root open to every user of a sandbox (as
        // Daytona's volumes are), without mkfs's lost+found.
        let meta = std::fs::metadata(&fs).map_err(io("inspecting", &fs))?;
        if meta.permissions().mode() & 0o7777 != 0o777 {
            let _ = std::fs::remove_dir(fs.join("lost+found"));
            std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(0o777))
                .map_err(io("opening up", &fs))?;
        }
        Ok(fs)
    }

    /// Unmounts and deletes volume `id`; gone already is fine.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id)?;
        let fs = dir.join(FS);
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
