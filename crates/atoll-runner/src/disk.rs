//! Per-sandbox disks: every sandbox's writable layer (overlay upper and
//! work dirs) lives on its own ext4 filesystem in a sparse image file,
//! `sandboxes/<id>/disk.img`, loop-mounted only inside the sandbox's mount
//! namespace. The image's size is the sandbox's disk quota: writing past it
//! gives ENOSPC inside and the host loses at most that much space.
//!
//! Why not project quotas: they need the host filesystem mounted with
//! `prjquota` and a kernel with `CONFIG_QFMT_V2`/`CONFIG_XFS_QUOTA`; these
//! hosts have neither. A loop image works on any host with loop devices,
//! and makes a sandbox's whole writable state one file (archive, move).
//!
//! Formatting is off the create path: one formatted template per size is
//! made once (`mkfs.ext4`, lazy init) and every new disk is a sparse copy
//! of it (a few MiB of metadata, ~1 ms). The loop device is attached with
//! `LO_FLAGS_AUTOCLEAR`, so it is released when the sandbox's mount
//! namespace goes away; nothing is left on the host.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{tool} failed on {path}: {output}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        output: String,
    },
    #[error("disk image {path} is {have} bytes; it can only grow, not shrink to {want}")]
    Shrink { path: PathBuf, have: u64, want: u64 },
    #[error("attaching a loop device for {path}: {source}")]
    Loop { path: PathBuf, source: io::Error },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// Formatted empty filesystems, one per size, copied for each new disk.
#[derive(Debug, Clone)]
pub struct DiskTemplates {
    dir: PathBuf,
}

impl DiskTemplates {
    pub fn new(dir: &Path) -> DiskTemplates {
        DiskTemplates { dir: dir.into() }
    }

    /// The template for `bytes`, formatting it on first use.
    pub fn template(&self, bytes: u64) -> Result<PathBuf, DiskError> {
        let path = self.dir.join(format!("ext4-{bytes}.img"));
        if path.exists() {
            return Ok(path);
        }
        fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let lock_path = self.dir.join(".lock");
        let lock = File::create(&lock_path).map_err(io_err("opening", &lock_path))?;
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, e)| DiskError::Io {
                what: "locking",
                path: lock_path.clone(),
                source: e.into(),
            },
        )?;
        if path.exists() {
            return Ok(path);
        }
        let tmp = self
            .dir
            .join(format!(".ext4-{bytes}.{}.tmp", std::process::id()));
        let f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.set_len(bytes).map_err(io_err("sizing", &tmp))?;
        drop(f);
        run_tool(
            "mkfs.ext4",
            Command::new("mkfs.ext4")
                // A 4 MiB journal keeps mounting fast (~4 ms instead of ~8).
                .args(["-q", "-F", "-m", "0", "-L", "atoll-disk", "-J", "size=4"])
                .args([
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
                ])
                .arg(&tmp),
            &tmp,
        )?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("installing", &path))?;
        Ok(path)
    }

    /// Gives `image` a filesystem of `bytes`: a ready disk from the pool
    /// (or a fresh sparse copy of the template) when it does not exist,
    /// grown (offline) when it is smaller.
    pub fn provision(&self, image: &Path, bytes: u64) -> Result<(), DiskError> {
        match fs::metadata(image) {
            Ok(m) if m.len() == bytes => Ok(()),
            Ok(m) if m.len() > bytes => Err(DiskError::Shrink {
                path: image.into(),
                have: m.len(),
                want: bytes,
            }),
            Ok(_) => grow(image, bytes),
            Err(_) => {
                if self.take_ready(image, bytes) {
                    return Ok(());
                }
                let template = self.template(bytes)?;
                let tmp = image.with_extension("img.tmp");
                sparse_copy(&template, &tmp)?;
                fs::rename(&tmp, image).map_err(io_err("installing", image))
            }
        }
    }

    fn pool_dir(&self) -> PathBuf {
        self.dir.join("ready")
    }

    /// Moves a pre-made disk of `bytes` to `image`, if one is ready.
    fn take_ready(&self, image: &Path, bytes: u64) -> bool {
        let prefix = format!("{bytes}-");
        let Ok(entries) = fs::read_dir(self.pool_dir()) else {
            return false;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".img") {
                // rename is atomic: two takers cannot get the same disk.
                if fs::rename(e.path(), image).is_ok() {
                    return true;
                }
            }
        }
        false
    }

    /// Tops the pool up to `want` ready disks of `bytes` (copied from the
    /// template and fsynced off the create path). Returns how many it made.
    pub fn refill(&self, bytes: u64, want: usize) -> Result<usize, DiskError> {
        let pool = self.pool_dir();
        fs::create_dir_all(&pool).map_err(io_err("creating", &pool))?;
        let prefix = format!("{bytes}-");
        let have = fs::read_dir(&pool)
            .map_err(io_err("listing", &pool))?
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".img")
            })
            .count();
        let template = self.template(bytes)?;
        let mut made = 0;
        for _ in have..want {
            let mut rnd = [0u8; 8];
            File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd))
                .map_err(io_err("reading", Path::new("/dev/urandom")))?;
            let name = format!("{bytes}-{}", hex::encode(rnd));
            let tmp = pool.join(format!(".{name}.tmp"));
            sparse_copy(&template, &tmp)?;
            fs::rename(&tmp, pool.join(format!("{name}.img")))
                .map_err(io_err("installing", &tmp))?;
            made += 1;
        }
        Ok(made)
    }

    /// Removes temp files a crash left in the pool.
    pub fn sweep(&self) {
        for e in fs::read_dir(self.pool_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Keeps a few disks of the common size ready in the background, so a
/// create only renames one into place.
pub struct DiskPoolFiller {
    wake: std::sync::mpsc::Sender<()>,
}

impl DiskPoolFiller {
    pub fn start(templates: DiskTemplates, bytes: u64, want: usize) -> DiskPoolFiller {
        templates.sweep();
        let (wake, rx) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("atoll-disk-pool".into())
            .spawn(move || loop {
                if let Err(e) = templates.refill(bytes, want) {
                    tracing::warn!(error = %e, "refilling the disk pool failed");
                }
                // Sleep until a disk is taken (or the runtime goes away).
                if rx.recv().is_err() {
                    return;
                }
                while rx.try_recv().is_ok() {}
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no disk pool thread; disks are made on demand");
        }
        DiskPoolFiller { wake }
    }

    /// Tells the filler a disk was used.
    pub fn taken(&self) {
        let _ = self.wake.send(());
    }
}

fn run_tool(tool: &'static str, cmd: &mut Command, path: &Path) -> Result<(), DiskError> {
    let out = cmd.output().map_err(io_err("running the tool on", path))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(DiskError::Tool {
            tool,
            path: path.into(),
            output: text.trim().to_string(),
        });
    }
    Ok(())
}

/// Grows an unmounted image to `bytes` (file, then filesystem).
fn grow(image: &Path, bytes: u64) -> Result<(), DiskError> {
    // e2fsck exits 1 when it fixed something; only >= 4 is a failure.
    let out = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(image)
        .output()
        .map_err(io_err("checking", image))?;
    if out.status.code().is_none_or(|c| c >= 4) {
        return Err(DiskError::Tool {
            tool: "e2fsck",
            path: image.into(),
            output: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    let f = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io_err("opening", image))?;
    f.set_len(bytes).map_err(io_err("growing", image))?;
    drop(f);
    run_tool("resize2fs", Command::new("resize2fs").arg(image), image)
}

/// Copies `src` to `dst` keeping holes (SEEK_DATA/SEEK_HOLE), so a 3 GiB
/// template costs only its few MiB of metadata.
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<(), DiskError> {
    let input = File::open(src).map_err(io_err("opening", src))?;
    let len = input.metadata().map_err(io_err("reading", src))?.len();
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)
        .map_err(io_err("creating", dst))?;
    output.set_len(len).map_err(io_err("sizing", dst))?;
    let ifd = input.as_raw_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on an fd we own; no memory is passed.
        let data = unsafe { libc::lseek(ifd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole remains
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(ifd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        copy_range(&input, &output, data as u64, end as u64).map_err(io_err("copying", dst))?;
        pos = end;
    }
    output.sync_all().map_err(io_err("syncing", dst))?;
    Ok(())
}

/// Copies bytes `start..end` of `input` to the same offsets of `output`:
/// `copy_file_range` (in-kernel; a clone where the filesystem can), or
/// reads and writes where it cannot cross filesystems.
fn copy_range(input: &File, output: &File, start: u64, end: u64) -> io::Result<()> {
    let (ifd, ofd) = (input.as_raw_fd(), output.as_raw_fd());
    let mut off_in = start as i64;
    let mut off_out = start as i64;
    while (off_in as u64) < end {
        // SAFETY: copy_file_range between two fds we own, with offsets
        // held in locals that outlive the call.
        let n = unsafe {
            libc::copy_file_range(
                ifd,
                &mut off_in,
                ofd,
                &mut off_out,
                (end - off_in as u64) as usize,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) {
                return copy_range_by_reads(input, output, off_in as u64, end);
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
    }
    Ok(())
}

fn copy_range_by_reads(input: &File, output: &File, start: u64, end: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let want = buf.len().min((end - at) as usize);
        let n = input.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        output.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Copies the disk image `src` to `dst` (made aside and renamed into
/// place once whole): a reflink clone sharing
/// every block where the filesystem has them (true), a sparse copy
/// otherwise (false).
pub fn clone_or_copy(src: &Path, dst: &Path) -> Result<bool, DiskError> {
    let input = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(src)
        .map_err(io_err("opening", src))?;
    if !input.metadata().map_err(io_err("reading", src))?.is_file() {
        return Err(DiskError::Io {
            what: "copying",
            path: src.into(),
            source: io::Error::other("not a regular file"),
        });
    }
    let tmp = dst.with_extension("img.tmp");
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    let cloned = match crate::sandbox_fs::clone_file(&input, &output) {
        // No fsync: the clone is one metadata transaction, made durable
        // with the directory's fsync by the caller.
        Ok(()) => true,
        Err(e) if crate::sandbox_fs::is_unsupported(&e) => {
            drop(output);
            sparse_copy(src, &tmp)?;
            false
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(DiskError::Io {
                what: "cloning",
                path: src.into(),
                source: e,
            });
        }
    };
    fs::rename(&tmp, dst).map_err(io_err("installing", dst))?;
    Ok(cloned)
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. It detaches itself (autoclear) once it is
/// neither open nor mounted.
pub struct LoopDevice {
    pub path: PathBuf,
    _file: File,
}

/// Attaches `image` to a free loop device with autoclear set.
pub fn attach(image: &Path) -> Result<LoopDevice, DiskError> {
    let lerr = |source| DiskError::Loop {
        path: image.into(),
        source,
    };
    // Never through a link, never blocking on a FIFO, only a regular file.
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(image)
        .map_err(lerr)?;
    if !backing.metadata().map_err(lerr)?.file_type().is_file() {
        return Err(lerr(io::Error::other(
            "the disk image is not a regular file",
        )));
    }
    // The loop device does blocking I/O on it.
    let fl =
        nix::fcntl::fcntl(&backing, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| lerr(e.into()))?;
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&backing, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(|e| lerr(e.into()))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(lerr)?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(lerr(io::Error::last_os_error()));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(lerr)?;
        // SAFETY: LoopConfig is plain old data; all-zero is a valid value.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads one LoopConfig that lives across the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if rc == 0 {
            return Ok(LoopDevice { path, _file: dev });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(lerr(e));
        }
        // Another attach won the race for this device: take the next.
    }
    Err(lerr(io::Error::other("no free loop device after 16 tries")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = std::env::temp_dir().join(format!("atoll-disk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        let mut f = OpenOptions::new().write(true).open(&src).unwrap();
        use std::io::{Seek, SeekFrom, Write};
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(b"in the middle").unwrap();
        drop(f);
        let dst = dir.join("dst");
        sparse_copy(&src, &dst).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        let blocks = fs::metadata(&dst).unwrap().blocks();
        assert!(
            blocks * 512 < (1 << 20),
            "copy is not sparse: {blocks} blocks"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
