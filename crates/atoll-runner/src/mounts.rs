//! The sandbox's filesystem as a plan of mount operations (data first, so it
//! can be printed and unit-tested), and its execution inside the sandbox's
//! own mount namespace: overlay root, `/proc` with masked and read-only
//! paths, a minimal `/dev`, read-only `/sys`, and `/.atoll` (the read-only
//! daemon binary plus its socket directory).

use nix::mount::{mount, MsFlags};
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MountError {
    #[error("mount {what} at {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("preparing {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox root has a symlink or non-directory at mount target {0}; refusing to mount through it")]
    UnsafeTarget(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Attaches `image` to a loop device (autoclear) and mounts its ext4
    /// filesystem at `target`.
    LoopMount {
        image: PathBuf,
        target: PathBuf,
    },
    /// Refuse to continue unless `path` is a real directory (not a symlink).
    RequireDir {
        path: PathBuf,
    },
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MsFlags,
        data: Option<String>,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
        flags: MsFlags,
    },
    /// Hides an existing directory behind an empty read-only tmpfs.
    MaskDir {
        target: PathBuf,
    },
    /// Remounts an existing mount read-only in place.
    RemountReadonly {
        target: PathBuf,
        flags: MsFlags,
    },
    Mkdir {
        path: PathBuf,
        mode: u32,
    },
    Touch {
        path: PathBuf,
    },
    CharDevice {
        path: PathBuf,
        major: u64,
        minor: u64,
    },
    Symlink {
        target: String,
        link: PathBuf,
    },
    Chmod {
        path: PathBuf,
        mode: u32,
    },
}

/// `/proc` entries hidden behind `/dev/null` (SECURITY.md item 4).
pub const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "timer_stats",
];
/// `/proc` and `/sys` directories replaced by an empty read-only tmpfs.
pub const MASKED_DIRS: &[&str] = &["proc/acpi", "proc/scsi", "sys/firmware"];
/// `/proc` entries made read-only (SECURITY.md item 5).
pub const READONLY_PROC: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Character devices in `/dev`: (name, major, minor).
pub const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

pub struct PlanInput<'a> {
    pub rootfs: &'a Path,
    /// The sandbox's disk image and its mount point; `upper` and `work`
    /// are directories on it.
    pub disk_image: &'a Path,
    pub disk_mount: &'a Path,
    pub lower: &'a Path,
    pub upper: &'a Path,
    pub work: &'a Path,
    pub run_dir: &'a Path,
    pub daemon_exe: &'a Path,
    /// Host files bind-mounted over `/etc/hostname` and `/etc/hosts`.
    pub etc_hostname: &'a Path,
    pub etc_hosts: &'a Path,
    pub etc_resolv_conf: &'a Path,
}

/// Builds the mount plan for one sandbox; every target is under `rootfs`.
pub fn plan(i: &PlanInput<'_>) -> Vec<MountOp> {
    let r = |p: &str| i.rootfs.join(p);
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut ops = vec![
        MountOp::LoopMount {
            image: i.disk_image.into(),
            target: i.disk_mount.into(),
        },
        MountOp::Mkdir {
            path: i.upper.into(),
            mode: 0o755,
        },
        MountOp::RequireDir {
            path: i.upper.into(),
        },
        MountOp::Mkdir {
            path: i.work.into(),
            mode: 0o700,
        },
        MountOp::RequireDir {
            path: i.work.into(),
        },
    ];
    ops.push(MountOp::Mount {
        source: "overlay".into(),
        target: i.rootfs.into(),
        fstype: "overlay".into(),
        flags: MsFlags::empty(),
        data: Some(format!(
            "lowerdir={},upperdir={},workdir={}",
            i.lower.display(),
            i.upper.display(),
            i.work.display()
        )),
    });
    for d in ["proc", "dev", "sys", "tmp", ".atoll"] {
        ops.push(MountOp::Mkdir {
            path: r(d),
            mode: 0o755,
        });
        ops.push(MountOp::RequireDir { path: r(d) });
    }
    ops.push(MountOp::Chmod {
        path: r("tmp"),
        mode: 0o1777,
    });
    // /proc of the sandbox's own pid namespace.
    ops.push(MountOp::Mount {
        source: "proc".into(),
        target: r("proc"),
        fstype: "proc".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: None,
    });
    // Minimal /dev.
    ops.push(MountOp::Mount {
        source: "tmpfs".into(),
        target: r("dev"),
        fstype: "tmpfs".into(),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        data: Some("mode=755,size=65536k".into()),
    });
    for (name, major, minor) in DEVICES {
        ops.push(MountOp::CharDevice {
            path: r("dev").join(name),
            major: *major,
            minor: *minor,
        });
    }
    for d in ["pts", "shm"] {
        ops.push(MountOp::Mkdir {
            path: r("dev").join(d),
            mode: 0o755,
        });
    }
    ops.push(MountOp::Mount {
        source: "devpts".into(),
        target: r("dev/pts"),
        fstype: "devpts".into(),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5".into()),
    });
    ops.push(MountOp::Mount {
        source: "shm".into(),
        target: r("dev/shm"),
        fstype: "tmpfs".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: Some("mode=1777,size=65536k".into()),
    });
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        ops.push(MountOp::Symlink {
            target: target.into(),
            link: r("dev").join(link),
        });
    }
    // Read-only /sys of the sandbox's own network namespace.
    ops.push(MountOp::Mount {
        source: "sysfs".into(),
        target: r("sys"),
        fstype: "sysfs".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        data: None,
    });
    for f in MASKED_PROC_FILES {
        // Not nodev: the mask must stay openable (it reads as empty).
        ops.push(MountOp::Bind {
            source: r("dev/null"),
            target: r("proc").join(f),
            readonly: true,
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        });
    }
    for d in MASKED_DIRS {
        ops.push(MountOp::MaskDir { target: r(d) });
    }
    for p in READONLY_PROC {
        let target = r("proc").join(p);
        ops.push(MountOp::Bind {
            source: target.clone(),
            target,
            readonly: true,
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        });
    }
    // /.atoll: a tmpfs holding the daemon binary (read-only bind) and the
    // run dir (the socket), then itself made read-only.
    ops.push(MountOp::Mount {
        source: "tmpfs".into(),
        target: r(".atoll"),
        fstype: "tmpfs".into(),
        flags: nosuid_nodev,
        data: Some("mode=755,size=64k".into()),
    });
    ops.push(MountOp::Touch {
        path: r(".atoll/atoll-daemon"),
    });
    ops.push(MountOp::Bind {
        source: i.daemon_exe.into(),
        target: r(".atoll/atoll-daemon"),
        readonly: true,
        flags: nosuid_nodev,
    });
    ops.push(MountOp::Mkdir {
        path: r(".atoll/run"),
        mode: 0o700,
    });
    ops.push(MountOp::Bind {
        source: i.run_dir.into(),
        target: r(".atoll/run"),
        readonly: false,
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
    });
    ops.push(MountOp::RemountReadonly {
        target: r(".atoll"),
        flags: nosuid_nodev,
    });
    // The sandbox's own hostname and hosts file (so `sudo` can resolve
    // it), and the resolvers it may use.
    ops.push(MountOp::RequireDir { path: r("etc") });
    for (source, name) in [
        (i.etc_hostname, "etc/hostname"),
        (i.etc_hosts, "etc/hosts"),
        (i.etc_resolv_conf, "etc/resolv.conf"),
    ] {
        ops.push(MountOp::Touch { path: r(name) });
        ops.push(MountOp::Bind {
            source: source.into(),
            target: r(name),
            readonly: false,
            flags: nosuid_nodev,
        });
    }
    ops
}

fn prep(path: &Path) -> impl FnOnce(std::io::Error) -> MountError + '_ {
    move |source| MountError::Prepare {
        path: path.into(),
        source,
    }
}

/// Executes a plan. Must run inside a private mount namespace.
pub fn execute(ops: &[MountOp]) -> Result<(), MountError> {
    for op in ops {
        match op {
            MountOp::LoopMount { image, target } => {
                let dev = crate::disk::attach(image).map_err(|e| MountError::Prepare {
                    path: image.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                mount(
                    Some(dev.path.as_path()),
                    target,
                    Some("ext4"),
                    MsFlags::MS_NODEV,
                    Some("noinit_itable,errors=remount-ro"),
                )
                .map_err(|e| MountError::Mount {
                    what: "sandbox disk".into(),
                    target: target.clone(),
                    source: e,
                })?;
                // The mount holds the device now; closing ours lets autoclear
                // detach it when the sandbox's namespace goes away.
                drop(dev);
            }
            MountOp::RequireDir { path } => {
                let md = std::fs::symlink_metadata(path).map_err(prep(path))?;
                if !md.file_type().is_dir() {
                    return Err(MountError::UnsafeTarget(path.clone()));
                }
            }
            MountOp::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                mount(
                    Some(source.as_str()),
                    target,
                    Some(fstype.as_str()),
                    *flags,
                    data.as_deref(),
                )
                .map_err(|e| MountError::Mount {
                    what: fstype.clone(),
                    target: target.clone(),
                    source: e,
                })?;
            }
            MountOp::Bind {
                source,
                target,
                readonly,
                flags,
            } => {
                let err = |e| MountError::Mount {
                    what: format!("bind of {}", source.display()),
                    target: target.clone(),
                    source: e,
                };
                if !target.exists() {
                    continue; // an optional /proc entry this kernel lacks
                }
                mount(
                    Some(source),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(err)?;
                let mut f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | *flags;
                if *readonly {
                    f |= MsFlags::MS_RDONLY;
                }
                mount(None::<&str>, target, None::<&str>, f, None::<&str>).map_err(err)?;
            }
            MountOp::MaskDir { target } => {
                if !target.is_dir() {
                    continue;
                }
                mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC
                        | MsFlags::MS_RDONLY,
                    Some("size=0"),
                )
                .map_err(|e| MountError::Mount {
                    what: "mask tmpfs".into(),
                    target: target.clone(),
                    source: e,
                })?;
            }
            MountOp::RemountReadonly { target, flags } => {
                mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | *flags,
                    None::<&str>,
                )
                .map_err(|e| MountError::Mount {
                    what: "remount ro".into(),
                    target: target.clone(),
                    source: e,
                })?;
            }
            MountOp::Mkdir { path, mode } => {
                match std::fs::DirBuilder::new().mode(*mode).create(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(MountError::Prepare {
                            path: path.clone(),
                            source: e,
                        })
                    }
                }
            }
            MountOp::Touch { path } => {
                match std::fs::symlink_metadata(path) {
                    // Already a file: opening it for writing would make the
                    // overlay copy it up for nothing.
                    Ok(m) if m.file_type().is_file() => continue,
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(MountError::UnsafeTarget(path.clone()))
                    }
                    _ => {}
                }
                // Never through a symlink: it could point at a host path.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::ELOOP) => MountError::UnsafeTarget(path.clone()),
                        _ => MountError::Prepare {
                            path: path.clone(),
                            source: e,
                        },
                    })?;
            }
            MountOp::CharDevice { path, major, minor } => {
                let dev = nix::sys::stat::makedev(*major, *minor);
                nix::sys::stat::mknod(
                    path.as_path(),
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o666),
                    dev,
                )
                .map_err(|e| MountError::Prepare {
                    path: path.clone(),
                    source: e.into(),
                })?;
                // mknod honours the umask; devices must be 0666.
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                    .map_err(prep(path))?;
            }
            MountOp::Symlink { target, link } => {
                symlink(target, link).map_err(prep(link))?;
            }
            MountOp::Chmod { path, mode } => {
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                    .map_err(prep(path))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<MountOp> {
        plan(&PlanInput {
            rootfs: Path::new("/d/sb/1/rootfs"),
            disk_image: Path::new("/d/sb/1/disk.img"),
            disk_mount: Path::new("/d/sb/1/disk"),
            lower: Path::new("/d/images/layers/sha256-aa"),
            upper: Path::new("/d/sb/1/disk/upper"),
            work: Path::new("/d/sb/1/disk/work"),
            run_dir: Path::new("/d/sb/1/run"),
            daemon_exe: Path::new("/usr/bin/atoll"),
            etc_hostname: Path::new("/d/sb/1/etc/hostname"),
            etc_hosts: Path::new("/d/sb/1/etc/hosts"),
            etc_resolv_conf: Path::new("/d/sb/1/etc/resolv.conf"),
        })
    }

    fn target(op: &MountOp) -> Option<&Path> {
        match op {
            MountOp::Mount { target, .. }
            | MountOp::Bind { target, .. }
            | MountOp::MaskDir { target }
            | MountOp::LoopMount { target, .. }
            | MountOp::RemountReadonly { target, .. } => Some(target),
            MountOp::Mkdir { path, .. }
            | MountOp::Touch { path }
            | MountOp::CharDevice { path, .. }
            | MountOp::Chmod { path, .. }
            | MountOp::RequireDir { path } => Some(path),
            MountOp::Symlink { link, .. } => Some(link),
        }
    }

    #[test]
    fn every_target_is_inside_the_rootfs_or_the_sandbox_disk() {
        let ops = sample();
        assert_eq!(
            ops[0],
            MountOp::LoopMount {
                image: "/d/sb/1/disk.img".into(),
                target: "/d/sb/1/disk".into()
            },
            "the disk is mounted before anything is created on it"
        );
        for op in ops {
            let t = target(&op).unwrap();
            assert!(
                t.starts_with("/d/sb/1/rootfs") || t.starts_with("/d/sb/1/disk"),
                "{op:?}"
            );
        }
    }

    #[test]
    fn mount_targets_are_checked_before_they_are_used() {
        let ops = sample();
        for d in ["proc", "dev", "sys", ".atoll"] {
            let p = Path::new("/d/sb/1/rootfs").join(d);
            let check = ops
                .iter()
                .position(|o| *o == MountOp::RequireDir { path: p.clone() });
            let used = ops
                .iter()
                .position(|o| matches!(o, MountOp::Mount { target, .. } if *target == p));
            assert!(check.unwrap() < used.unwrap(), "{d}");
        }
    }

    #[test]
    fn daemon_binary_is_read_only_and_masks_are_present() {
        let ops = sample();
        assert!(ops.iter().any(|o| matches!(o,
            MountOp::Bind { target, readonly: true, .. } if target.ends_with(".atoll/atoll-daemon"))));
        for f in ["kcore", "keys", "timer_list", "sched_debug"] {
            assert!(ops.iter().any(|o| matches!(o,
                MountOp::Bind { source, target, readonly: true, .. }
                    if source.ends_with("dev/null") && target.ends_with(Path::new("proc").join(f)))));
        }
        assert!(ops.iter().any(|o| matches!(o,
            MountOp::Mount { target, flags, .. } if target.ends_with("sys") && flags.contains(MsFlags::MS_RDONLY))));
        // the only device nodes are the harmless ones
        let devs: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                MountOp::CharDevice { path, .. } => {
                    path.file_name().map(|n| n.to_string_lossy().to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(devs, ["null", "zero", "full", "random", "urandom", "tty"]);
    }
}
