//! Applying one OCI layer (a tar stream, maybe gzip- or zstd-compressed) to
//! a fresh directory, treating the layer as hostile.
//!
//! Every name is resolved beneath the layer's directory descriptor with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, so a
//! symlink the layer planted is followed as if the layer were `/` (Docker's
//! semantics) and never out of it; the last component is created with
//! `O_EXCL | O_NOFOLLOW` (`mkdirat`, `symlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`). What the layer may not have is refused (a `..`
//! component: the whole layer) or dropped with a count (device nodes,
//! xattrs other than `user.*`, and `user.overlay.*` which would forge
//! overlay metadata). The uncompressed stream is bounded in bytes, in ratio
//! to the compressed bytes (a decompression bomb), and in entries, and its
//! SHA-256 is returned for the caller to check against the image config's
//! `diff_id`.
//!
//! OCI whiteouts become overlayfs's own format (the sandbox's overlay is
//! mounted with `userxattr`): `.wh.<name>` a 0/0 character device,
//! `.wh..wh..opq` the `user.overlay.opaque` xattr on its directory.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Bounds on one layer.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Uncompressed bytes of the tar stream.
    pub max_bytes: u64,
    /// Entries in the tar stream.
    pub max_entries: u64,
    /// Uncompressed bytes may exceed `max_ratio` × compressed bytes read so
    /// far only by `ratio_slack` (real layers compress 2–10×).
    pub max_ratio: u64,
    pub ratio_slack: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 16 << 30,
            max_entries: 2_000_000,
            max_ratio: 100,
            ratio_slack: 64 << 20,
        }
    }
}

/// What unpacking one layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar stream (the layer's diff id).
    pub diff_id: String,
    /// Uncompressed bytes.
    pub bytes: u64,
    pub entries: u64,
    /// Bytes of regular files written.
    pub file_bytes: u64,
    /// Device nodes dropped.
    pub devices_skipped: u64,
    /// Extended attributes dropped (not `user.*`, or `user.overlay.*`).
    pub xattrs_skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?}: {reason}")]
    Hostile { path: String, reason: String },
    #[error("layer is larger than {limit} bytes uncompressed")]
    TooLarge { limit: u64 },
    #[error("layer has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("layer expands more than {ratio}x its compressed size (a decompression bomb)")]
    Bomb { ratio: u64 },
    #[error("layer is not a valid tar stream: {0}")]
    Format(String),
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    fn hostile(path: &str, reason: impl Into<String>) -> UnpackError {
        UnpackError::Hostile {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// True when the filesystem the layer is written to is full.
    pub fn is_no_space(&self) -> bool {
        match self {
            UnpackError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                )
            }
            _ => false,
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        action,
        path: path.to_string(),
        source,
    }
}

fn sys_err<'a>(action: &'static str, path: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        action,
        path: path.to_string(),
        source: io::Error::from(e),
    }
}

/// The uid/gid a sandbox's user namespace can map (65536 ids); others
/// become `nobody`.
const MAX_ID: u64 = 65535;
const NOBODY: u32 = 65534;
const OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Counts bytes read through it into a shared counter.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Hashes and bounds the uncompressed stream.
struct Guarded<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    compressed: Arc<AtomicU64>,
    limits: UnpackLimits,
    /// Set when a bound was crossed (the read error says which).
    tripped: Option<UnpackError>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        if self.bytes > self.limits.max_bytes {
            self.tripped = Some(UnpackError::TooLarge {
                limit: self.limits.max_bytes,
            });
            return Err(io::Error::other("layer too large"));
        }
        let compressed = self.compressed.load(Ordering::Relaxed);
        if self.bytes
            > compressed
                .saturating_mul(self.limits.max_ratio)
                .saturating_add(self.limits.ratio_slack)
        {
            self.tripped = Some(UnpackError::Bomb {
                ratio: self.limits.max_ratio,
            });
            return Err(io::Error::other("decompression bomb"));
        }
        Ok(n)
    }
}

/// Unpacks the layer read from `blob` into the empty directory `dest`.
/// On error `dest` holds a partial tree the caller removes.
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    limits: UnpackLimits,
    progress: &mut dyn FnMut(u64),
) -> Result<UnpackStats, UnpackError> {
    let dest_s = dest.display().to_string();
    let root: OwnedFd = nix::fcntl::open(
        dest,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(sys_err("opening", &dest_s))?;
    let mut guarded = guarded(blob, compression, limits)?;
    let mut stats = UnpackStats::default();
    let result = apply_entries(&mut guarded, &root, &limits, &mut stats, progress);
    if let Some(tripped) = guarded.tripped.take() {
        return Err(tripped);
    }
    result?;
    // The diff id covers the whole stream, trailing blocks included.
    let drained = io::copy(&mut guarded, &mut io::sink());
    if let Some(tripped) = guarded.tripped.take() {
        return Err(tripped);
    }
    drained.map_err(|e| UnpackError::Format(e.to_string()))?;
    stats.bytes = guarded.bytes;
    stats.diff_id = format!("sha256:{}", hex::encode(guarded.hash.finalize()));
    Ok(stats)
}

/// The decoded stream of `blob`, hashed and held to `limits` as it is read.
fn guarded<'a>(
    blob: impl Read + 'a,
    compression: Compression,
    limits: UnpackLimits,
) -> Result<Guarded<Box<dyn Read + 'a>>, UnpackError> {
    let compressed = Arc::new(AtomicU64::new(0));
    let counted = Counting {
        inner: io::BufReader::with_capacity(1 << 16, blob),
        count: compressed.clone(),
    };
    let decoded: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(counted),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(counted)
                .map_err(|e| UnpackError::Format(format!("zstd: {e}")))?,
        ),
    };
    Ok(Guarded {
        inner: decoded,
        hash: Sha256::new(),
        bytes: 0,
        compressed,
        limits,
        tripped: None,
    })
}

/// The diff id of a layer blob (the sha256 of its decoded tar stream),
/// decoded under the same limits as an unpack, nothing written.
pub fn diff_id_of(
    blob: impl Read,
    compression: Compression,
    limits: UnpackLimits,
) -> Result<String, UnpackError> {
    let mut g = guarded(blob, compression, limits)?;
    let drained = io::copy(&mut g, &mut io::sink());
    if let Some(tripped) = g.tripped.take() {
        return Err(tripped);
    }
    drained.map_err(|e| UnpackError::Format(e.to_string()))?;
    Ok(format!("sha256:{}", hex::encode(g.hash.finalize())))
}

fn apply_entries(
    stream: &mut dyn Read,
    root: &OwnedFd,
    limits: &UnpackLimits,
    stats: &mut UnpackStats,
    progress: &mut dyn FnMut(u64),
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(stream);
    // Raw: long names, long links and PAX records are read here, bounded
    // (the tar crate would read any size into memory).
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Format(e.to_string()))?
        .raw(true);
    let mut meta = Meta::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Format(e.to_string()))?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        match entry.header().entry_type() {
            tar::EntryType::GNULongName => {
                meta.name = Some(read_meta(&mut entry, MAX_NAME)?);
                continue;
            }
            tar::EntryType::GNULongLink => {
                meta.link = Some(read_meta(&mut entry, MAX_NAME)?);
                continue;
            }
            tar::EntryType::XHeader => {
                meta.pax = Some(read_meta(&mut entry, MAX_PAX)?);
                continue;
            }
            tar::EntryType::XGlobalHeader => {
                // Defaults for later entries; Docker's layers carry none.
                read_meta(&mut entry, MAX_PAX)?;
                continue;
            }
            _ => {}
        }
        apply_entry(&mut entry, root, stats, &std::mem::take(&mut meta))?;
        if stats.entries.is_multiple_of(256) {
            progress(stats.file_bytes);
        }
    }
    progress(stats.file_bytes);
    Ok(())
}

/// Longest GNU long name or link accepted (a path is at most 4096 bytes).
const MAX_NAME: u64 = 4097;
/// Largest PAX record block accepted (xattrs included).
const MAX_PAX: u64 = 1 << 20;

/// What the metadata entries before an entry said of it.
#[derive(Default)]
struct Meta {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Meta {
    /// The PAX record `key`, if present.
    fn pax(&self, key: &str) -> Option<Vec<u8>> {
        let pax = self.pax.as_deref()?;
        tar::PaxExtensions::new(pax)
            .flatten()
            .find(|e| e.key() == Ok(key))
            .map(|e| e.value_bytes().to_vec())
    }
}

/// A metadata entry's body, refused past `limit` bytes; GNU names lose
/// their trailing NULs.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, limit: u64) -> Result<Vec<u8>, UnpackError> {
    let size = entry
        .header()
        .size()
        .map_err(|e| UnpackError::Format(e.to_string()))?;
    if size > limit {
        let shown = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        return Err(UnpackError::hostile(
            &shown,
            format!("a {size}-byte metadata record (at most {limit})"),
        ));
    }
    let mut body = Vec::with_capacity(size as usize);
    entry
        .take(limit)
        .read_to_end(&mut body)
        .map_err(|e| UnpackError::Format(e.to_string()))?;
    while body.last() == Some(&0) {
        body.pop();
    }
    Ok(body)
}

/// Splits a tar path into its components: a leading `/` and `.` parts are
/// dropped (Docker does the same); `..` refuses the layer.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, UnpackError> {
    let shown = String::from_utf8_lossy(raw);
    if raw.len() > 4096 || raw.contains(&0) {
        return Err(UnpackError::hostile(
            &shown,
            "path is too long or has a NUL",
        ));
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err(UnpackError::hostile(&shown, "path has a `..` component")),
            p if p.len() > 255 => return Err(UnpackError::hostile(&shown, "name is too long")),
            p => parts.push(p),
        }
    }
    Ok(parts)
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

/// Opens the directory `parts` names inside the layer (symlinks resolved
/// as if the layer were `/`), creating missing directories (0755, root).
fn open_parent(root: &OwnedFd, parts: &[&[u8]], shown: &str) -> Result<OwnedFd, UnpackError> {
    let open = |dir: BorrowedFd<'_>, rel: &[u8]| {
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(resolve_flags());
        nix::fcntl::openat2(dir, OsStr::from_bytes(rel), how)
    };
    if parts.is_empty() {
        return open(root.as_fd(), b".").map_err(sys_err("opening the layer root", shown));
    }
    match open(root.as_fd(), &join(parts)) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(Errno::ENOTDIR) => {
            return Err(UnpackError::hostile(shown, "a parent is not a directory"))
        }
        Err(Errno::EXDEV | Errno::ELOOP) => {
            return Err(UnpackError::hostile(shown, "a parent leaves the layer"))
        }
        Err(e) => return Err(sys_err("opening the parent of", shown)(e)),
    }
    // Walk down, making what is missing and following symlinks the layer
    // made as if the layer were `/` (`..` stops at the layer's root).
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    let mut queue: std::collections::VecDeque<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        match part.as_slice() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let refs: Vec<&[u8]> = resolved.iter().map(|p| p.as_slice()).collect();
        let dir = if refs.is_empty() {
            open(root.as_fd(), b".")
        } else {
            open(root.as_fd(), &join(&refs))
        }
        .map_err(sys_err("opening a parent of", shown))?;
        let name = OsStr::from_bytes(&part);
        match lstat_at(&dir, name) {
            None => match nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => resolved.push(part),
                Err(e) => return Err(sys_err("creating a parent of", shown)(e)),
            },
            Some(st) if is_dir(&st) => resolved.push(part),
            Some(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
                links += 1;
                if links > 40 {
                    return Err(UnpackError::hostile(shown, "too many levels of symlinks"));
                }
                let target = nix::fcntl::readlinkat(&dir, name)
                    .map_err(sys_err("reading a symlink in", shown))?;
                let target = target.as_bytes();
                if target.starts_with(b"/") {
                    resolved.clear();
                }
                for (i, t) in target.split(|b| *b == b'/').enumerate() {
                    queue.insert(i, t.to_vec());
                }
            }
            Some(_) => return Err(UnpackError::hostile(shown, "a parent is not a directory")),
        }
    }
    let refs: Vec<&[u8]> = resolved.iter().map(|p| p.as_slice()).collect();
    if refs.is_empty() {
        open(root.as_fd(), b".")
    } else {
        open(root.as_fd(), &join(&refs))
    }
    .map_err(sys_err("opening the parent of", shown))
}

/// What is at `name` in `dir`, not following a symlink.
fn lstat_at(dir: &OwnedFd, name: &OsStr) -> Option<nix::sys::stat::FileStat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Removes `name` in `dir` and, for a directory, everything below it,
/// never following a symlink.
fn remove_at(dir: &OwnedFd, name: &OsStr, shown: &str) -> Result<(), UnpackError> {
    remove_below(dir, name, shown, 0)
}

/// Directories the layer itself nests deeper than this are refused (the
/// removal recurses, a frame and a descriptor a level).
const MAX_DEPTH: usize = 256;

fn remove_below(dir: &OwnedFd, name: &OsStr, shown: &str, depth: usize) -> Result<(), UnpackError> {
    if depth > MAX_DEPTH {
        return Err(UnpackError::hostile(shown, "directories nest too deep"));
    }
    let Some(st) = lstat_at(dir, name) else {
        return Ok(());
    };
    if is_dir(&st) {
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let sub = nix::fcntl::openat2(dir, name, how).map_err(sys_err("opening", shown))?;
        let children: Vec<Vec<u8>> = {
            let listing =
                nix::dir::Dir::from_fd(nix::unistd::dup(&sub).map_err(sys_err("listing", shown))?)
                    .map_err(sys_err("listing", shown))?;
            let mut names = Vec::new();
            let mut listing = listing;
            for e in listing.iter() {
                let e = e.map_err(sys_err("listing", shown))?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            names
        };
        for child in children {
            remove_below(&sub, OsStr::from_bytes(&child), shown, depth + 1)?;
        }
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
            .map_err(sys_err("removing", shown))
    } else {
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(sys_err("removing", shown))
    }
}

fn set_xattr(fd: &impl AsRawFd, key: &str, value: &[u8], shown: &str) -> Result<(), UnpackError> {
    let key_c =
        CString::new(key).map_err(|_| UnpackError::hostile(shown, "xattr name has a NUL"))?;
    // SAFETY: fsetxattr reads a NUL-terminated name and `value.len()` bytes
    // from `value`, both valid for the call; the fd is open.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key_c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io_err("setting an xattr on", shown)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn owner(id: u64) -> u32 {
    if id > MAX_ID {
        NOBODY
    } else {
        id as u32
    }
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &OwnedFd,
    stats: &mut UnpackStats,
    meta: &Meta,
) -> Result<(), UnpackError> {
    let raw_path = meta
        .pax("path")
        .or_else(|| meta.name.clone())
        .unwrap_or_else(|| entry.header().path_bytes().into_owned());
    let link_name = meta
        .pax("linkpath")
        .or_else(|| meta.link.clone())
        .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let parts = components(&raw_path)?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(()); // the layer's root itself: keep ours
    };
    let header = entry.header();
    let kind = header.entry_type();
    let mode = header
        .mode()
        .map_err(|e| UnpackError::Format(e.to_string()))?
        & 0o7777;
    let pax_id = |k: &str| {
        meta.pax(k)
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let uid = owner(pax_id("uid").unwrap_or_else(|| header.uid().unwrap_or(0)));
    let gid = owner(pax_id("gid").unwrap_or_else(|| header.gid().unwrap_or(0)));
    let mtime = header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64;

    // Whiteouts (OCI image spec, "Representing Changes").
    if let Some(hidden) = last.strip_prefix(b".wh.") {
        let parent = open_parent(root, parents, &shown)?;
        if hidden == b".wh..opq" {
            return set_xattr(&parent, OPAQUE_XATTR, b"y", &shown);
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::hostile(&shown, "whiteout of no name"));
        }
        let name = OsStr::from_bytes(hidden);
        remove_at(&parent, name, &shown)?;
        return nix::sys::stat::mknodat(&parent, name, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(sys_err("creating a whiteout for", &shown));
    }

    // A device node would reach the host's devices through the sandbox's
    // lower dir; it is dropped.
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        stats.devices_skipped += 1;
        return Ok(());
    }

    let parent = open_parent(root, parents, &shown)?;
    let name = OsStr::from_bytes(last);
    // A later entry replaces an earlier one, except a directory over a
    // directory, which keeps its contents.
    if let Some(st) = lstat_at(&parent, name) {
        if !(kind == tar::EntryType::Directory && is_dir(&st)) {
            remove_at(&parent, name, &shown)?;
        }
    }
    let xattrs = collect_xattrs(meta, stats);
    match kind {
        tar::EntryType::Directory => {
            match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(sys_err("creating directory", &shown)(e)),
            }
            let how = OpenHow::new()
                .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            let dir = nix::fcntl::openat2(&parent, name, how)
                .map_err(sys_err("opening directory", &shown))?;
            finish_fd(&dir, uid, gid, mode, None, &xattrs, &shown)?;
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            if kind == tar::EntryType::GNUSparse {
                return Err(UnpackError::hostile(
                    &shown,
                    "sparse files are not supported",
                ));
            }
            let fd = nix::fcntl::openat(
                &parent,
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(sys_err("creating file", &shown))?;
            let mut file = File::from(fd);
            let n = io::copy(entry, &mut file).map_err(|e| {
                if e.raw_os_error().is_some() {
                    io_err("writing", &shown)(e)
                } else {
                    UnpackError::Format(e.to_string())
                }
            })?;
            stats.file_bytes += n;
            finish_fd(&file, uid, gid, mode, Some(mtime), &xattrs, &shown)?;
        }
        tar::EntryType::Symlink => {
            let target = link_name
                .clone()
                .ok_or_else(|| UnpackError::hostile(&shown, "symlink without a target"))?;
            if target.is_empty() || target.len() > 4096 || target.contains(&0) {
                return Err(UnpackError::hostile(&shown, "bad symlink target"));
            }
            nix::unistd::symlinkat(OsStr::from_bytes(&target), &parent, name)
                .map_err(sys_err("creating symlink", &shown))?;
            lchown_at(&parent, name, uid, gid, &shown)?;
            let t = TimeSpec::new(mtime, 0);
            let _ =
                nix::sys::stat::utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink);
        }
        tar::EntryType::Link => {
            let target = link_name
                .clone()
                .ok_or_else(|| UnpackError::hostile(&shown, "hard link without a target"))?;
            let tparts = components(&target)?;
            let Some((tlast, tparents)) = tparts.split_last() else {
                return Err(UnpackError::hostile(&shown, "hard link to the root"));
            };
            let tdir = open_parent(root, tparents, &shown)?;
            nix::unistd::linkat(
                &tdir,
                OsStr::from_bytes(tlast),
                &parent,
                name,
                AtFlags::empty(),
            )
            .map_err(|e| match e {
                Errno::ENOENT => UnpackError::hostile(&shown, "hard link to a missing file"),
                Errno::EPERM => UnpackError::hostile(&shown, "hard link to a directory"),
                e => sys_err("creating hard link", &shown)(e),
            })?;
        }
        tar::EntryType::Fifo => {
            nix::sys::stat::mknodat(
                &parent,
                name,
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o600),
                0,
            )
            .map_err(sys_err("creating fifo", &shown))?;
            lchown_at(&parent, name, uid, gid, &shown)?;
            nix::sys::stat::fchmodat(
                &parent,
                name,
                Mode::from_bits_truncate(mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(sys_err("chmod", &shown))?;
        }
        // PAX/GNU metadata entries are consumed by the tar reader; anything
        // else is not part of a filesystem.
        other => {
            return Err(UnpackError::hostile(
                &shown,
                format!("unsupported entry type {other:?}"),
            ))
        }
    }
    Ok(())
}

/// The entry's `user.*` xattrs from its PAX header (`SCHILY.xattr.*`),
/// others counted as dropped.
fn collect_xattrs(meta: &Meta, stats: &mut UnpackStats) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(pax) = meta.pax.as_deref() else {
        return out;
    };
    for ext in tar::PaxExtensions::new(pax).flatten() {
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if name.starts_with("user.") && !name.starts_with("user.overlay.") && out.len() < 64 {
            out.push((name.to_string(), ext.value_bytes().to_vec()));
        } else {
            stats.xattrs_skipped += 1;
        }
    }
    out
}

/// Sets the owner of `name` in `dir`, not following a symlink.
fn lchown_at(
    dir: &OwnedFd,
    name: &OsStr,
    uid: u32,
    gid: u32,
    shown: &str,
) -> Result<(), UnpackError> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys_err("chown", shown))
}

/// Owner, mode (after chown, which clears set-id bits), xattrs and mtime
/// of a file or directory we just created.
fn finish_fd(
    fd: &(impl AsFd + AsRawFd),
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Option<i64>,
    xattrs: &[(String, Vec<u8>)],
    shown: &str,
) -> Result<(), UnpackError> {
    nix::unistd::fchown(
        fd.as_fd(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(sys_err("chown", shown))?;
    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
        .map_err(sys_err("chmod", shown))?;
    for (k, v) in xattrs {
        set_xattr(fd, k, v, shown)?;
    }
    if let Some(mtime) = mtime {
        let t = TimeSpec::new(mtime, 0);
        let _ = nix::sys::stat::futimens(fd.as_fd(), &t, &t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    struct Scratch(PathBuf);

    impl Scratch {
        /// `<tmp>/…/layer` (the unpack target) beside `<tmp>/…/outside`.
        fn new(tag: &str) -> Scratch {
            let mut rnd = [0u8; 6];
            getrandom_fill(&mut rnd);
            let p = std::env::temp_dir().join(format!("atoll-unpack-{tag}-{}", hex::encode(rnd)));
            fs::create_dir_all(p.join("layer")).unwrap();
            fs::create_dir_all(p.join("outside")).unwrap();
            Scratch(p)
        }
        fn layer(&self) -> PathBuf {
            self.0.join("layer")
        }
        fn outside(&self) -> PathBuf {
            self.0.join("outside")
        }
        fn outside_is_empty(&self) -> bool {
            fs::read_dir(self.outside()).unwrap().next().is_none()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn getrandom_fill(buf: &mut [u8]) {
        let mut f = File::open("/dev/urandom").unwrap();
        f.read_exact(buf).unwrap();
    }

    /// One raw tar entry; the name is written as given (no checks), so
    /// hostile names can be built.
    struct E<'a> {
        name: &'a [u8],
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        link: &'a [u8],
        data: &'a [u8],
        pax: Vec<(&'a str, &'a [u8])>,
    }

    fn e<'a>(name: &'a str, kind: tar::EntryType) -> E<'a> {
        E {
            name: name.as_bytes(),
            kind,
            mode: 0o644,
            uid: 0,
            link: b"",
            data: b"",
            pax: vec![],
        }
    }

    fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for en in entries {
            if !en.pax.is_empty() {
                let mut body = Vec::new();
                for (k, v) in &en.pax {
                    let rec_len = |n: usize| {
                        // "<len> <key>=<value>\n" where len counts itself.
                        let base = 1 + k.len() + 1 + v.len() + 1;
                        let mut len = base + n.to_string().len();
                        if (base + len.to_string().len()) != len {
                            len = base + len.to_string().len();
                        }
                        len
                    };
                    let len = rec_len(0);
                    body.extend_from_slice(format!("{len} {k}=").as_bytes());
                    body.extend_from_slice(v);
                    body.push(b'\n');
                }
                let mut h = tar::Header::new_ustar();
                raw_name(&mut h, b"pax");
                h.set_entry_type(tar::EntryType::XHeader);
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(&body);
                pad(&mut out);
            }
            let mut h = tar::Header::new_ustar();
            raw_name(&mut h, en.name);
            h.set_entry_type(en.kind);
            h.set_mode(en.mode);
            h.set_uid(en.uid);
            h.set_gid(en.uid);
            h.set_mtime(1_700_000_000);
            h.set_size(en.data.len() as u64);
            if !en.link.is_empty() {
                let l = &mut h.as_old_mut().linkname;
                l[..en.link.len()].copy_from_slice(en.link);
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(en.data);
            pad(&mut out);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn raw_name(h: &mut tar::Header, name: &[u8]) {
        let n = &mut h.as_old_mut().name;
        n.fill(0);
        n[..name.len()].copy_from_slice(name);
    }

    fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(512) {
            out.push(0);
        }
    }

    fn unpack(s: &Scratch, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        unpack_layer(
            tar,
            Compression::None,
            &s.layer(),
            UnpackLimits::default(),
            &mut |_| {},
        )
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_plain_layer_unpacks_with_owners_modes_links_and_its_diff_id() {
        if !is_root() {
            return;
        }
        let s = Scratch::new("plain");
        let mut bin = e("usr/bin/tool", tar::EntryType::Regular);
        bin.mode = 0o4755;
        bin.uid = 1000;
        bin.data = b"#!/bin/sh\necho hi\n";
        let mut link = e("usr/bin/tool2", tar::EntryType::Link);
        link.link = b"usr/bin/tool";
        let mut sym = e("bin", tar::EntryType::Symlink);
        sym.link = b"usr/bin";
        let mut big_uid = e("odd", tar::EntryType::Regular);
        big_uid.uid = 1 << 20;
        let tar = tar_of(&[
            e("usr/", tar::EntryType::Directory),
            bin,
            link,
            sym,
            e("run/fifo", tar::EntryType::Fifo),
            big_uid,
        ]);
        let stats = unpack(&s, &tar).unwrap();
        assert_eq!(
            stats.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        let l = s.layer();
        let md = fs::metadata(l.join("usr/bin/tool")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((md.uid(), md.gid()), (1000, 1000));
        assert_eq!(md.nlink(), 2);
        assert_eq!(
            fs::read_link(l.join("bin")).unwrap(),
            PathBuf::from("usr/bin")
        );
        assert!(fs::symlink_metadata(l.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like());
        assert_eq!(fs::metadata(l.join("odd")).unwrap().uid(), NOBODY);
        assert_eq!(stats.entries, 6);
    }

    trait FifoLike {
        fn is_fifo_like(&self) -> bool;
    }
    impl FifoLike for fs::FileType {
        fn is_fifo_like(&self) -> bool {
            use std::os::unix::fs::FileTypeExt;
            self.is_fifo()
        }
    }

    #[test]
    fn dot_dot_refuses_the_layer_and_writes_nothing_outside() {
        let s = Scratch::new("dotdot");
        let mut f = e("../outside/pwned", tar::EntryType::Regular);
        f.data = b"x";
        let err = unpack(&s, &tar_of(&[f])).unwrap_err();
        assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
        assert!(s.outside_is_empty());
        let mut l = e("ok", tar::EntryType::Link);
        l.link = b"../outside/x";
        let err = unpack(&s, &tar_of(&[l])).unwrap_err();
        assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
    }

    #[test]
    fn absolute_names_and_symlinks_stay_inside_the_layer() {
        if !is_root() {
            return;
        }
        let s = Scratch::new("symlink");
        let outside = s.outside();
        let outside_s = outside.to_str().unwrap().to_string();
        // A symlink to a real host directory, then writes through it.
        let mut evil = e("evil", tar::EntryType::Symlink);
        evil.link = outside_s.as_bytes();
        let mut through = e("evil/pwned", tar::EntryType::Regular);
        through.data = b"owned";
        let mut up = e("up", tar::EntryType::Symlink);
        up.link = b"../../../../../../..";
        let upfile_name = format!("up{outside_s}/pwned2");
        let mut upfile = e(&upfile_name, tar::EntryType::Regular);
        upfile.data = b"owned";
        let mut abs_name = format!("{outside_s}/pwned3");
        abs_name.insert(0, '/');
        let mut abs = e(&abs_name, tar::EntryType::Regular);
        abs.data = b"x";
        let mut hl = e("hl", tar::EntryType::Link);
        hl.link = b"evil/pwned";
        unpack(&s, &tar_of(&[evil, through, up, upfile, abs, hl])).unwrap();
        assert!(s.outside_is_empty(), "a write escaped the layer");
        let inner = s.layer().join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read(inner.join("pwned")).unwrap(), b"owned");
        assert_eq!(fs::read(inner.join("pwned2")).unwrap(), b"owned");
        assert_eq!(fs::read(inner.join("pwned3")).unwrap(), b"x");
        assert_eq!(fs::read(s.layer().join("hl")).unwrap(), b"owned");
    }

    #[test]
    fn devices_are_dropped_and_whiteouts_become_overlay_whiteouts() {
        if !is_root() {
            return;
        }
        let s = Scratch::new("wh");
        let mut dev = e("dev/sda", tar::EntryType::Block);
        dev.mode = 0o666;
        let mut old = e("etc/old", tar::EntryType::Regular);
        old.data = b"x";
        let tar = tar_of(&[
            dev,
            e("dev/null", tar::EntryType::Char),
            old,
            e("etc/.wh.old", tar::EntryType::Regular),
            e("etc/.wh.gone", tar::EntryType::Regular),
            e("var/cache/.wh..wh..opq", tar::EntryType::Regular),
        ]);
        let stats = unpack(&s, &tar).unwrap();
        assert_eq!(stats.devices_skipped, 2);
        let l = s.layer();
        assert!(!l.join("dev/sda").exists() && !l.join("dev/null").exists());
        for w in ["etc/old", "etc/gone"] {
            let md = fs::symlink_metadata(l.join(w)).unwrap();
            use std::os::unix::fs::FileTypeExt;
            assert!(md.file_type().is_char_device(), "{w}");
            assert_eq!(md.rdev(), 0);
        }
        assert!(!l.join("etc/.wh.old").exists());
        let mut buf = [0u8; 8];
        let path = CString::new(l.join("var/cache").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path and name and a buffer we own.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"user.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, 1);
        assert_eq!(buf[0], b'y');
    }

    #[test]
    fn only_plain_user_xattrs_are_kept() {
        if !is_root() {
            return;
        }
        let s = Scratch::new("xattr");
        let mut f = e("f", tar::EntryType::Regular);
        f.pax = vec![
            ("SCHILY.xattr.user.note", b"hello"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.security.capability", b"\x01"),
        ];
        let stats = unpack(&s, &tar_of(&[f])).unwrap();
        assert_eq!(stats.xattrs_skipped, 3);
        let path = CString::new(s.layer().join("f").to_str().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: NUL-terminated strings and a buffer we own.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"user.note".as_ptr(),
                buf.as_mut_ptr().cast(),
                16,
            )
        };
        assert_eq!(&buf[..n as usize], b"hello");
        // SAFETY: as above.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"user.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                16,
            )
        };
        assert!(n < 0);
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        if !is_root() {
            return;
        }
        let s = Scratch::new("replace");
        let mut a = e("d/keep", tar::EntryType::Regular);
        a.data = b"1";
        let mut link = e("x", tar::EntryType::Symlink);
        link.link = b"/etc/passwd";
        let mut x = e("x", tar::EntryType::Regular);
        x.data = b"file";
        let mut d = e("d", tar::EntryType::Directory);
        d.mode = 0o700;
        unpack(&s, &tar_of(&[a, link, x, d])).unwrap();
        let l = s.layer();
        assert_eq!(fs::read(l.join("x")).unwrap(), b"file");
        assert!(!fs::symlink_metadata(l.join("x"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(l.join("d/keep")).unwrap(), b"1");
        assert_eq!(
            fs::metadata(l.join("d")).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn decompression_bombs_and_oversized_layers_are_refused() {
        let s = Scratch::new("bomb");
        let zeros = vec![0u8; 24 << 20];
        let mut f = e("zeros", tar::EntryType::Regular);
        f.data = &zeros;
        let tar = tar_of(&[f]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let limits = UnpackLimits {
            ratio_slack: 1 << 20,
            ..UnpackLimits::default()
        };
        let err =
            unpack_layer(&gz[..], Compression::Gzip, &s.layer(), limits, &mut |_| {}).unwrap_err();
        assert!(matches!(err, UnpackError::Bomb { .. }), "{err}");
        let small = UnpackLimits {
            max_bytes: 1 << 20,
            ..UnpackLimits::default()
        };
        let s2 = Scratch::new("large");
        let err =
            unpack_layer(&tar[..], Compression::None, &s2.layer(), small, &mut |_| {}).unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn gzip_and_zstd_layers_have_the_diff_id_of_their_tar() {
        if !is_root() {
            return;
        }
        let mut f = e("hello.txt", tar::EntryType::Regular);
        f.data = b"hello world\n";
        let tar = tar_of(&[f]);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for (c, blob) in [(Compression::Gzip, gz), (Compression::Zstd, zst)] {
            let s = Scratch::new("codec");
            let stats = unpack_layer(
                &blob[..],
                c,
                &s.layer(),
                UnpackLimits::default(),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(stats.diff_id, want, "{c:?}");
            assert_eq!(
                fs::read(s.layer().join("hello.txt")).unwrap(),
                b"hello world\n"
            );
        }
    }

    #[test]
    fn long_names_work_and_huge_metadata_records_are_refused() {
        if !is_root() {
            return;
        }
        let s = Scratch::new("long");
        let long = format!("{}/file", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        l.set_mode(0o777);
        let target = format!("/{}", "t".repeat(200));
        b.append_link(&mut l, "link", &target).unwrap();
        let tar = b.into_inner().unwrap();
        unpack(&s, &tar).unwrap();
        assert_eq!(fs::read(s.layer().join(&long)).unwrap(), b"ok");
        assert_eq!(
            fs::read_link(s.layer().join("link")).unwrap(),
            PathBuf::from(&target)
        );
        // A GNU long-name record that claims a gigabyte: refused before
        // anything is read into memory.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(1 << 30);
        h.set_cksum();
        let mut bomb = h.as_bytes().to_vec();
        bomb.extend_from_slice(&[b'a'; 8192]);
        let s2 = Scratch::new("longbomb");
        let err = unpack(&s2, &bomb).unwrap_err();
        assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
    }

    #[test]
    fn garbage_is_a_format_error() {
        let s = Scratch::new("garbage");
        let err = unpack_layer(
            &b"not a gzip stream at all"[..],
            Compression::Gzip,
            &s.layer(),
            UnpackLimits::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, UnpackError::Format(_)), "{err}");
    }
}
