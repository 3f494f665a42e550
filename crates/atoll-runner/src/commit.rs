//! Capturing what a running sandbox changed (its overlay's upper dir) as
//! an OCI layer tar: the image of `sandbox.create_snapshot()`.
//!
//! The sandbox's processes are frozen while its disk is read, so the layer
//! is one instant of it. The disk is mounted a second time on the host
//! (same ext4 superblock, this mount read-only, nosuid, nodev, noexec) in a
//! scratch directory; its `upper/` is hostile data the sandbox wrote, so it
//! is walked by descriptors only (`openat2` beneath, no symlinks followed,
//! no mount crossings; files opened `O_NOFOLLOW | O_NONBLOCK` and checked
//! to be the inode listed). Overlay's own format becomes OCI's: a 0/0
//! character device is the whiteout `.wh.<name>`, the `user.overlay.opaque`
//! xattr the opaque marker `.wh..wh..opq`. Other devices and sockets are
//! left out.

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the sandbox's disk device {0}:{1} is not a block device on this host")]
    NoDevice(u64, u64),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> CommitError + 'a {
    move |source| CommitError::Io {
        action,
        path: path.to_string(),
        source,
    }
}

fn sys_err<'a>(
    action: &'static str,
    path: &'a str,
) -> impl FnOnce(nix::errno::Errno) -> CommitError + 'a {
    move |e| CommitError::Io {
        action,
        path: path.to_string(),
        source: io::Error::from(e),
    }
}

/// `/dev/<name>` of block device `major:minor`, checked.
pub fn block_device(major: u64, minor: u64) -> Result<PathBuf, CommitError> {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .map_err(|_| CommitError::NoDevice(major, minor))?;
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| !n.is_empty() && !n.contains(".."))
        .ok_or(CommitError::NoDevice(major, minor))?;
    let path = Path::new("/dev").join(name);
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::symlink_metadata(&path).map_err(|_| CommitError::NoDevice(major, minor))?;
    let rdev = md.rdev();
    if !md.file_type().is_block_device()
        || nix::sys::stat::major(rdev) != major
        || nix::sys::stat::minor(rdev) != minor
    {
        return Err(CommitError::NoDevice(major, minor));
    }
    Ok(path)
}

/// Mounts the ext4 filesystem on `device` read-only at `target` (a fresh
/// directory of the runner's); unmounted on drop.
pub struct ReadOnlyMount {
    target: PathBuf,
}

impl ReadOnlyMount {
    pub fn new(device: &Path, target: &Path) -> Result<ReadOnlyMount, CommitError> {
        use nix::mount::{mount, MsFlags};
        let shown = target.display().to_string();
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        // The superblock is the sandbox's own, read-write: a mount of it
        // must agree on that; this mount point is then made read-only.
        mount(Some(device), target, Some("ext4"), flags, None::<&str>)
            .map_err(sys_err("mounting the sandbox disk at", &shown))?;
        let m = ReadOnlyMount {
            target: target.to_path_buf(),
        };
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
            None::<&str>,
        )
        .map_err(sys_err("making read-only", &shown))?;
        Ok(m)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(target = %self.target.display(), error = %e, "could not unmount a sandbox disk");
        }
    }
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn is_opaque(dir: &OwnedFd) -> bool {
    let mut buf = [0u8; 4];
    // SAFETY: fgetxattr writes at most `buf.len()` bytes into `buf`; the
    // name is NUL-terminated and the fd open.
    let n = unsafe {
        libc::fgetxattr(
            dir.as_raw_fd(),
            c"user.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// What was written.
#[derive(Debug, Default, Clone, Copy)]
pub struct TarStats {
    pub entries: u64,
    pub file_bytes: u64,
    pub skipped: u64,
}

/// How a tree becomes tar entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeOptions {
    /// Overlay's whiteouts and opaque markers become OCI's (a captured
    /// upper dir); otherwise they are left out (a build context).
    pub overlay: bool,
    /// Every entry owned by this uid/gid rather than the file's own.
    pub owner: Option<(u32, u32)>,
}

/// Writes the tree under `upper` (a directory descriptor) as an OCI layer
/// tar to `out`.
pub fn upper_to_tar(upper: &OwnedFd, out: impl Write) -> Result<TarStats, CommitError> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    let mut stats = TarStats::default();
    let opts = TreeOptions {
        overlay: true,
        owner: None,
    };
    append_tree(&mut builder, upper, b"", &opts, &mut stats)?;
    builder
        .into_inner()
        .map_err(io_err("finishing the layer", ""))?
        .flush()
        .map_err(io_err("finishing the layer", ""))?;
    Ok(stats)
}

/// Appends what is under the directory `dir` to `b`, its entries named
/// below `prefix` (`b""`: at the top).
pub fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    prefix: &[u8],
    opts: &TreeOptions,
    stats: &mut TarStats,
) -> Result<(), CommitError> {
    let mut walker = Walker {
        b,
        opts,
        stats,
        links: HashMap::new(),
    };
    walker.walk(dir, prefix, 0)
}

/// Appends the regular file open as `file` to `b` as `path`.
pub fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    file: OwnedFd,
    path: &[u8],
    opts: &TreeOptions,
    stats: &mut TarStats,
) -> Result<(), CommitError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let st = nix::sys::stat::fstat(&file).map_err(sys_err("inspecting", &shown))?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(CommitError::Io {
            action: "copying",
            path: shown,
            source: io::Error::other("not a regular file"),
        });
    }
    let size = st.st_size.max(0) as u64;
    let mut h = header_for(&st, tar::EntryType::Regular, size, opts);
    let rel = Path::new(OsStr::from_bytes(path));
    b.append_data(
        &mut h,
        rel,
        Exact(std::fs::File::from(file).take(size), size),
    )
    .map_err(io_err("writing", &shown))?;
    stats.entries += 1;
    stats.file_bytes += size;
    Ok(())
}

fn header_for(st: &FileStat, entry: tar::EntryType, size: u64, opts: &TreeOptions) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(entry);
    h.set_mode(st.st_mode & 0o7777);
    let (uid, gid) = opts.owner.unwrap_or((st.st_uid, st.st_gid));
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(size);
    h
}

/// Directories nested deeper than this are refused: the walk recurses
/// (one frame and one descriptor a level) over a tree the sandbox made.
pub const MAX_DEPTH: usize = 256;

struct Walker<'a, W: Write> {
    b: &'a mut tar::Builder<W>,
    opts: &'a TreeOptions,
    stats: &'a mut TarStats,
    /// Hard-linked files seen, by device and inode: their first name.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Walker<'_, W> {
    fn walk(&mut self, dir: &OwnedFd, prefix: &[u8], depth: usize) -> Result<(), CommitError> {
        let shown = String::from_utf8_lossy(prefix).into_owned();
        if depth > MAX_DEPTH {
            return Err(CommitError::Io {
                action: "walking",
                path: shown,
                source: io::Error::other(format!(
                    "directories nest deeper than {MAX_DEPTH} levels"
                )),
            });
        }
        let mut names: Vec<Vec<u8>> = {
            let fd = nix::unistd::dup(dir).map_err(sys_err("listing", &shown))?;
            let mut listing = nix::dir::Dir::from_fd(fd).map_err(sys_err("listing", &shown))?;
            let mut v = Vec::new();
            for e in listing.iter() {
                let e = e.map_err(sys_err("listing", &shown))?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    v.push(n.to_vec());
                }
            }
            v
        };
        names.sort();
        for name in names {
            self.entry(dir, prefix, &name, depth)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: &OwnedFd,
        prefix: &[u8],
        name: &[u8],
        depth: usize,
    ) -> Result<(), CommitError> {
        let (opts, b) = (self.opts, &mut *self.b);
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let shown = String::from_utf8_lossy(&path).into_owned();
        let os_name = OsStr::from_bytes(name);
        let Ok(st) =
            nix::sys::stat::fstatat(dir, os_name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            self.stats.skipped += 1;
            return Ok(());
        };
        let rel = Path::new(OsStr::from_bytes(&path));
        match kind(&st) {
            SFlag::S_IFDIR => {
                let how = OpenHow::new()
                    .flags(
                        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    )
                    .resolve(beneath());
                let sub = nix::fcntl::openat2(dir, os_name, how)
                    .map_err(sys_err("opening directory", &shown))?;
                let mut h = header_for(&st, tar::EntryType::Directory, 0, opts);
                b.append_data(&mut h, rel, io::empty())
                    .map_err(io_err("writing", &shown))?;
                self.stats.entries += 1;
                if opts.overlay && is_opaque(&sub) {
                    let mut h = header_for(&st, tar::EntryType::Regular, 0, opts);
                    h.set_mode(0o644);
                    b.append_data(&mut h, rel.join(".wh..wh..opq"), io::empty())
                        .map_err(io_err("writing", &shown))?;
                    self.stats.entries += 1;
                }
                self.walk(&sub, &path, depth + 1)?;
            }
            SFlag::S_IFREG => {
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key) {
                        let mut h = header_for(&st, tar::EntryType::Link, 0, opts);
                        b.append_link(&mut h, rel, Path::new(OsStr::from_bytes(first)))
                            .map_err(io_err("writing", &shown))?;
                        self.stats.entries += 1;
                        return Ok(());
                    }
                    self.links.insert(key, path.clone());
                }
                let how = OpenHow::new()
                    .flags(
                        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
                    )
                    .mode(Mode::empty())
                    .resolve(beneath());
                let fd =
                    nix::fcntl::openat2(dir, os_name, how).map_err(sys_err("opening", &shown))?;
                let opened = nix::sys::stat::fstat(&fd).map_err(sys_err("inspecting", &shown))?;
                if kind(&opened) != SFlag::S_IFREG || opened.st_ino != st.st_ino {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let size = opened.st_size.max(0) as u64;
                let mut h = header_for(&opened, tar::EntryType::Regular, size, opts);
                let file = std::fs::File::from(fd);
                // Exactly `size` bytes: a frozen sandbox cannot change it,
                // and a short read is an error rather than a bad layer.
                b.append_data(&mut h, rel, Exact(file.take(size), size))
                    .map_err(io_err("writing", &shown))?;
                self.stats.entries += 1;
                self.stats.file_bytes += size;
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(dir, os_name)
                    .map_err(sys_err("reading symlink", &shown))?;
                let mut h = header_for(&st, tar::EntryType::Symlink, 0, opts);
                b.append_link(&mut h, rel, Path::new(&target))
                    .map_err(io_err("writing", &shown))?;
                self.stats.entries += 1;
            }
            SFlag::S_IFCHR if st.st_rdev == 0 && opts.overlay => {
                // An overlay whiteout: the file is deleted in this layer.
                let mut wh = prefix.to_vec();
                if !wh.is_empty() {
                    wh.push(b'/');
                }
                wh.extend_from_slice(b".wh.");
                wh.extend_from_slice(name);
                let mut h = header_for(&st, tar::EntryType::Regular, 0, opts);
                h.set_mode(0o644);
                b.append_data(&mut h, Path::new(OsStr::from_bytes(&wh)), io::empty())
                    .map_err(io_err("writing", &shown))?;
                self.stats.entries += 1;
            }
            SFlag::S_IFIFO => {
                let mut h = header_for(&st, tar::EntryType::Fifo, 0, opts);
                b.append_data(&mut h, rel, io::empty())
                    .map_err(io_err("writing", &shown))?;
                self.stats.entries += 1;
            }
            _ => self.stats.skipped += 1,
        }
        Ok(())
    }
}

/// A reader that yields exactly `n` bytes or fails.
struct Exact<R>(R, u64);

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && self.1 > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was read",
            ));
        }
        self.1 -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::unpack::{unpack_layer, Compression, UnpackLimits};
    use std::fs;

    #[test]
    fn an_upper_dir_round_trips_through_a_layer_with_its_whiteouts() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let base = std::env::temp_dir().join(format!("atoll-commit-{}", std::process::id()));
        let upper = base.join("upper");
        let out = base.join("out");
        fs::create_dir_all(upper.join("etc/app")).unwrap();
        fs::create_dir_all(upper.join("opaque")).unwrap();
        fs::create_dir_all(&out).unwrap();
        fs::write(upper.join("etc/app/conf"), "x = 1\n").unwrap();
        fs::hard_link(upper.join("etc/app/conf"), upper.join("etc/conf2")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", upper.join("link")).unwrap();
        nix::sys::stat::mknod(&upper.join("etc/deleted"), SFlag::S_IFCHR, Mode::empty(), 0)
            .unwrap();
        let dir = crate::safe_fs::open_dir(&upper.join("opaque")).unwrap();
        // SAFETY: NUL-terminated name, a 1-byte value we own, an open fd.
        let rc = unsafe {
            libc::fsetxattr(
                dir.as_raw_fd(),
                c"user.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(rc, 0);
        let root = crate::safe_fs::open_dir(&upper).unwrap();
        let mut tar = Vec::new();
        let stats = upper_to_tar(&root, &mut tar).unwrap();
        assert!(stats.entries >= 7, "{stats:?}");
        unpack_layer(
            &tar[..],
            Compression::None,
            &out,
            UnpackLimits::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(fs::read(out.join("etc/app/conf")).unwrap(), b"x = 1\n");
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert_eq!(fs::metadata(out.join("etc/conf2")).unwrap().nlink(), 2);
        assert_eq!(
            fs::read_link(out.join("link")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        assert!(fs::symlink_metadata(out.join("etc/deleted"))
            .unwrap()
            .file_type()
            .is_char_device());
        let d = crate::safe_fs::open_dir(&out.join("opaque")).unwrap();
        assert!(is_opaque(&d));
        let _ = fs::remove_dir_all(&base);
    }
}
