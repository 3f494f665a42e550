//! Opening files the sandbox could have touched, or that live next to
//! such files, without following anything it planted: every open resolves
//! beneath a directory descriptor with no symlinks, magic links or mount
//! crossings (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV`), never blocks on a FIFO (`O_NONBLOCK`), and refuses
//! anything but a regular file.

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

/// Opens the directory `path` itself, refusing a symlink in its last
/// component (its parents are the runner's own directories).
pub fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
}

/// Opens `rel` beneath `dir` with `flags` (`O_CREAT` honoured with
/// `mode`), as a regular file only.
pub fn open_file(dir: impl AsFd, rel: &str, flags: OFlag, mode: u32) -> std::io::Result<File> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(resolve());
    let fd = nix::fcntl::openat2(dir, rel, how).map_err(std::io::Error::from)?;
    let f = File::from(fd);
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{rel} is not a regular file"),
        ));
    }
    // Blocking I/O from here on (O_NONBLOCK only guarded the open).
    let fl = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(std::io::Error::from)?;
    Ok(f)
}

/// Writes `body` to `rel` beneath `dir` (created with `mode`, truncated).
pub fn write_file(dir: impl AsFd, rel: &str, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = open_file(
        dir,
        rel,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
        mode,
    )?;
    f.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("atoll-safefs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn planted_links_fifos_and_escapes_are_refused() {
        let d = scratch("plant");
        let outside = d.join("outside");
        std::fs::write(&outside, "host").unwrap();
        let inner = d.join("sb");
        std::fs::create_dir(&inner).unwrap();
        std::os::unix::fs::symlink(&outside, inner.join("link")).unwrap();
        std::os::unix::fs::symlink("../outside", inner.join("rel")).unwrap();
        nix::unistd::mkfifo(&inner.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(inner.join("dir")).unwrap();
        let dir = open_dir(&inner).unwrap();
        for name in ["link", "rel", "fifo", "dir", "../outside", "/etc/passwd"] {
            assert!(
                write_file(&dir, name, b"pwned", 0o600).is_err(),
                "{name} was written"
            );
        }
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host");
        write_file(&dir, "ok", b"fine", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(inner.join("ok")).unwrap(), "fine");
        // The directory itself replaced by a symlink: refused too.
        std::os::unix::fs::symlink(&inner, d.join("alias")).unwrap();
        assert!(open_dir(&d.join("alias")).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// A sealed memfd holding everything `src` reads (no write, grow, shrink
/// or further seals), positioned at its start: content a sandbox is given
/// by descriptor and can never change.
pub fn sealed_memfd(name: &str, src: &mut impl std::io::Read) -> std::io::Result<File> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::os::fd::AsRawFd;
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(std::io::Error::from)?;
    let mut f = File::from(fd);
    // A plain read/write loop, not `io::copy`: its file-to-file fast path
    // (splice/sendfile) can leave the memfd's pages referenced for a moment,
    // and F_SEAL_WRITE answers EBUSY while they are.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => std::io::Write::write_all(&mut f, &buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    std::io::Seek::rewind(&mut f)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // Pages still referenced by the kernel make the seal fail with EBUSY
    // for a moment: retry briefly before giving up.
    let mut attempts = 0;
    loop {
        // SAFETY: fcntl(F_ADD_SEALS) on a memfd we own; no pointers.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        attempts += 1;
        if e.raw_os_error() != Some(libc::EBUSY) || attempts >= 50 {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Host directories whose paths must never reach a client (error reasons,
/// API errors): registered by the runtime at start.
static HOST_PREFIXES: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Registers a host directory as private (see [`scrub_host_paths`]).
pub fn register_host_dir(dir: &Path) {
    let s = dir.to_string_lossy().trim_end_matches('/').to_string();
    if s.is_empty() {
        return;
    }
    let mut v = HOST_PREFIXES.write().unwrap_or_else(|p| p.into_inner());
    if !v.contains(&s) {
        v.push(s);
    }
}

/// `message` with every host path replaced by `<host path>`: paths under
/// a registered directory, and the host's own cgroup, run, loop-device and
/// proc paths the runtime works with.
pub fn scrub_host_paths(message: &str) -> String {
    const FIXED: &[&str] = &["/sys/fs/cgroup", "/run/atoll", "/dev/loop", "/proc/"];
    let dirs = HOST_PREFIXES.read().unwrap_or_else(|p| p.into_inner());
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find('/') {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let private = dirs
            .iter()
            .map(String::as_str)
            .chain(FIXED.iter().copied())
            .any(|p| tail.starts_with(p));
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | ')' | '"' | '\'' | ';'))
            .unwrap_or(tail.len());
        if private {
            out.push_str("<host path>");
        } else {
            out.push_str(&tail[..end.max(1)]);
        }
        rest = &tail[end.max(1)..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod scrub_tests {
    use super::*;

    #[test]
    fn host_paths_are_replaced_and_sandbox_paths_kept() {
        register_host_dir(Path::new("/srv/atoll-data/"));
        let m = scrub_host_paths(
            "mount sandbox disk at /srv/atoll-data/sandboxes/ab/disk: EINVAL; cgroup /sys/fs/cgroup/pids/atoll/x, file /home/daytona/a.txt",
        );
        assert_eq!(
            m,
            "mount sandbox disk at <host path>: EINVAL; cgroup <host path>, file /home/daytona/a.txt"
        );
        assert_eq!(scrub_host_paths("no paths"), "no paths");
    }
}
