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
