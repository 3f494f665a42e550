//! The filesystem sandbox disks live on, and copy-on-write copies there.
//!
//! Every sandbox's writable state is one file, `sandboxes/<id>/disk.img`
//! (see [`crate::disk`]). A fork copies that file; on a filesystem with
//! reflinks (XFS with `reflink=1`, btrfs) the copy is a clone that shares
//! every block until one side writes it (`FICLONE`): milliseconds and no
//! disk, whatever the size. Elsewhere it is a sparse byte copy.
//!
//! A host whose data directory is on a filesystem without reflinks (ext4)
//! gets a loop-backed XFS pool, as LXD makes loop-backed storage pools: a
//! sparse image `<data>/sandboxes.xfs` formatted once with `mkfs.xfs -m
//! reflink=1` and mounted at `<data>/sandboxes` (with `discard`, so what
//! sandboxes free goes back to the host). The mount outlives the server,
//! as its sandboxes do; a restart finds it mounted and keeps it. The pool
//! is sparse like the disk images in it: it takes only what is written.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SandboxFsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("mkfs.xfs failed on {path}: {output}")]
    Format { path: PathBuf, output: String },
    #[error("mkfs.xfs is not installed (Debian: apt-get install xfsprogs); use --sandboxes-fs host to keep sandbox disks on the host filesystem, where forks are byte copies")]
    NoMkfs,
    #[error("{dir} already holds sandboxes on a filesystem without reflinks; move them away or use --sandboxes-fs host")]
    NotEmpty { dir: PathBuf },
    #[error("the pool image {path} is attached to {device} but not mounted at {dir} (a lazy unmount still in use?); mounting it twice would corrupt it")]
    AttachedElsewhere {
        path: PathBuf,
        device: String,
        dir: PathBuf,
    },
    #[error("attaching {path}: {source}")]
    Attach {
        path: PathBuf,
        source: crate::disk::DiskError,
    },
    #[error("mounting {path} at {dir}: {source}")]
    Mount {
        path: PathBuf,
        dir: PathBuf,
        source: nix::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxFsError + 'a {
    move |source| SandboxFsError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// Where sandbox disks are to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reflinks if the host filesystem has them, else the XFS pool if it
    /// can be made (mkfs.xfs installed, the directory new), else the host
    /// filesystem.
    Auto,
    /// The XFS pool (or a host filesystem with reflinks); an error if it
    /// cannot be had.
    Pool,
    /// The host filesystem as it is.
    Host,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "xfs" | "pool" => Ok(Mode::Pool),
            "host" => Ok(Mode::Host),
            other => Err(format!("{other:?}: expected auto, xfs or host")),
        }
    }
}

/// What [`prepare`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The directory's filesystem clones files (a pool mounted now or
    /// before, or a host filesystem with reflinks).
    Reflinks { pool: Option<PathBuf> },
    /// Plain host filesystem: forks copy bytes.
    Copies,
}

// FICLONE: _IOW(0x94, 9, int), the source descriptor as the argument.
nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Makes `dst` share all of `src`'s blocks (copy-on-write). `EOPNOTSUPP`,
/// `EXDEV` or `EINVAL` when the filesystem cannot.
pub fn clone_file(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor by value; both
    // descriptors are open files we own for the duration of the call.
    unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Whether `err` means "this filesystem cannot clone", as opposed to a
/// real failure.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOTTY)
    )
}

/// Whether files in `dir` can be cloned: two unnamed temp files there,
/// one cloned into the other.
pub fn supports_reflink(dir: &Path) -> bool {
    let tmp = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
    };
    let (Ok(mut a), Ok(b)) = (tmp(), tmp()) else {
        return false;
    };
    if io::Write::write_all(&mut a, &[0x5a; 4096]).is_err() {
        return false;
    }
    clone_file(&a, &b).is_ok()
}

/// Makes sure sandbox disks in `dir` can be cloned, as `mode` asks:
/// keeps a host filesystem with reflinks, or mounts (making it the first
/// time) the XFS pool `pool` of `size` bytes (default: the size of the
/// filesystem it is on; at least 4 GiB) at `dir`.
pub fn prepare(
    dir: &Path,
    pool: &Path,
    size: Option<u64>,
    mode: Mode,
) -> Result<Prepared, SandboxFsError> {
    if mode == Mode::Host {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        return Ok(Prepared::Copies);
    }
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    if is_pool_mount(dir, pool)? {
        return Ok(Prepared::Reflinks {
            pool: Some(pool.into()),
        });
    }
    if supports_reflink(dir) {
        return Ok(Prepared::Reflinks { pool: None });
    }
    let empty = fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .next()
        .is_none();
    let have_mkfs = mkfs_xfs().is_some();
    if mode == Mode::Auto && (!empty || (!have_mkfs && !pool.exists())) {
        if !have_mkfs {
            tracing::warn!(
                "mkfs.xfs is not installed: sandbox disks stay on the host filesystem, without \
                 reflinks, so a fork copies its parent's disk (apt-get install xfsprogs)"
            );
        } else {
            tracing::warn!(dir = %dir.display(), "sandboxes already live on a filesystem without reflinks: a fork copies its parent's disk");
        }
        return Ok(Prepared::Copies);
    }
    if !empty {
        return Err(SandboxFsError::NotEmpty { dir: dir.into() });
    }
    if !pool.exists() {
        let size = match size {
            Some(s) => s,
            None => {
                let parent = pool.parent().unwrap_or(Path::new("/"));
                let st = nix::sys::statvfs::statvfs(parent)
                    .map_err(|e| io_err("reading the size of", parent)(e.into()))?;
                st.blocks() as u64 * st.fragment_size() as u64
            }
        };
        format(pool, size.max(4 << 30))?;
    }
    if let Some(device) = attached_to(pool) {
        return Err(SandboxFsError::AttachedElsewhere {
            path: pool.into(),
            device,
            dir: dir.into(),
        });
    }
    mount_pool(pool, dir)?;
    tracing::info!(pool = %pool.display(), dir = %dir.display(), "mounted the sandbox disk pool (XFS, reflinks)");
    Ok(Prepared::Reflinks {
        pool: Some(pool.into()),
    })
}

fn mkfs_xfs() -> Option<PathBuf> {
    ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs", "/usr/bin/mkfs.xfs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Formats a new sparse pool image of `size` bytes: made aside, renamed
/// into place once whole.
fn format(pool: &Path, size: u64) -> Result<(), SandboxFsError> {
    let mkfs = mkfs_xfs().ok_or(SandboxFsError::NoMkfs)?;
    let tmp = pool.with_extension("xfs.tmp");
    let _ = fs::remove_file(&tmp);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    f.set_len(size).map_err(io_err("sizing", &tmp))?;
    drop(f);
    // -K: no discard pass over the (sparse) image; a 64 MiB log whatever
    // the size, so a large pool does not write a large log up front.
    let out = Command::new(mkfs)
        .args([
            "-q",
            "-K",
            "-m",
            "reflink=1",
            "-l",
            "size=64m",
            "-L",
            "atoll",
        ])
        .arg(&tmp)
        .output()
        .map_err(io_err("running mkfs.xfs on", &tmp))?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(SandboxFsError::Format {
            path: pool.into(),
            output: text.trim().to_string(),
        });
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, pool).map_err(io_err("installing", pool))
}

/// Whether `dir` is the mount of `pool` (a loop device backed by it).
fn is_pool_mount(dir: &Path, pool: &Path) -> Result<bool, SandboxFsError> {
    let here = fs::metadata(dir).map_err(io_err("reading", dir))?;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let up = fs::metadata(parent).map_err(io_err("reading", parent))?;
    if here.dev() == up.dev() {
        return Ok(false);
    }
    let major = nix::sys::stat::major(here.dev());
    let minor = nix::sys::stat::minor(here.dev());
    let backing = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/loop/backing_file"))
        .unwrap_or_default();
    Ok(same_file(Path::new(backing.trim_end()), pool))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The loop device `pool` is attached to, if any.
fn attached_to(pool: &Path) -> Option<String> {
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if same_file(Path::new(b.trim_end()), pool) {
                return Some(format!("/dev/{name}"));
            }
        }
    }
    None
}

fn mount_pool(pool: &Path, dir: &Path) -> Result<(), SandboxFsError> {
    use nix::mount::{mount, MsFlags};
    let device = crate::disk::attach(pool).map_err(|source| SandboxFsError::Attach {
        path: pool.into(),
        source,
    })?;
    // The loop device detaches itself (autoclear) once unmounted.
    mount(
        Some(&device.path),
        dir,
        Some("xfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        Some("discard"),
    )
    .map_err(|source| SandboxFsError::Mount {
        path: pool.into(),
        dir: dir.into(),
        source,
    })?;
    // Root only, as the directory was.
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .map_err(io_err("setting the mode of", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<Mode>(), Ok(Mode::Auto));
        assert_eq!("xfs".parse::<Mode>(), Ok(Mode::Pool));
        assert_eq!("host".parse::<Mode>(), Ok(Mode::Host));
        assert!("zfs".parse::<Mode>().is_err());
    }

    fn used(dir: &Path) -> u64 {
        let st = nix::sys::statvfs::statvfs(dir).unwrap();
        (st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64
    }

    #[test]
    fn a_pool_is_made_once_clones_disks_and_is_found_again() {
        if !nix::unistd::Uid::effective().is_root() || mkfs_xfs().is_none() {
            eprintln!("skipped: needs root and mkfs.xfs");
            return;
        }
        let base = std::env::temp_dir().join(format!("atoll-sfs-pool-{}", std::process::id()));
        let (dir, pool) = (base.join("sandboxes"), base.join("sandboxes.xfs"));
        let want = Prepared::Reflinks {
            pool: Some(pool.clone()),
        };
        assert_eq!(
            prepare(&dir, &pool, Some(4 << 30), Mode::Auto).unwrap(),
            want
        );
        let unmount = || nix::mount::umount(&dir).unwrap();
        let checks = || {
            assert!(supports_reflink(&dir));
            // Found mounted: kept, not mounted twice.
            assert_eq!(prepare(&dir, &pool, None, Mode::Pool).unwrap(), want);
            let src = dir.join("disk.img");
            let mut f = File::create(&src).unwrap();
            io::Write::write_all(&mut f, &vec![7u8; 16 << 20]).unwrap();
            f.sync_all().unwrap();
            let before = used(&dir);
            assert!(crate::disk::clone_or_copy(&src, &dir.join("copy.img")).unwrap());
            assert!(used(&dir) - before < 1 << 20, "a clone took space");
            assert_eq!(fs::read(dir.join("copy.img")).unwrap(), vec![7u8; 16 << 20]);
        };
        let first = std::panic::catch_unwind(checks);
        unmount();
        // Unmounted: the next start mounts the same pool, files and all.
        assert_eq!(prepare(&dir, &pool, None, Mode::Auto).unwrap(), want);
        let kept = fs::read(dir.join("copy.img")).map(|b| b.len());
        unmount();
        fs::remove_dir_all(&base).unwrap();
        first.unwrap();
        assert_eq!(kept.unwrap(), 16 << 20);
    }

    #[test]
    fn host_mode_never_mounts() {
        let dir = std::env::temp_dir().join(format!("atoll-sfs-host-{}", std::process::id()));
        let pool = dir.with_extension("xfs");
        let got = prepare(&dir, &pool, None, Mode::Host).unwrap();
        assert_eq!(got, Prepared::Copies);
        assert!(!pool.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
