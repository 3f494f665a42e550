//! The sandbox's filesystem as a plan of mount operations (data first, so it
//! can be printed and unit-tested), and its execution.
//!
//! Two stages, both with the cwd at the sandbox's host directory and every
//! path relative to it (so no mount option the sandbox can read in
//! `/proc/self/mountinfo` names a host path):
//! - [`prepare_host_side`], as host root in the helper's own mount
//!   namespace: the loop-mounted disk with its `upper` and `work` dirs, and
//!   a read-only sysfs of the sandbox's network namespace (a user namespace
//!   that does not own that namespace cannot mount one);
//! - [`plan`] + [`execute`], as root of the sandbox's user namespace in the
//!   mount namespace it owns: the overlay root over the idmapped image and
//!   disk, `/proc` with masked and read-only paths, a minimal `/dev` (bind
//!   mounts of the host's harmless devices: a user namespace cannot
//!   `mknod`), read-only `/sys` with block devices and firmware masked.
//!
//! Nothing host-backed is writable inside except the sandbox's own disk.

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

/// `/proc` entries hidden behind `/dev/null` (SECURITY.md items 4 and 25).
pub const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "timer_stats",
    "kpageflags",
    "kpagecount",
    "kpagecgroup",
];
/// `/proc` and `/sys` directories replaced by an empty read-only tmpfs:
/// Docker's set, plus every sysfs view of block devices (a loop device's
/// `backing_file` names a host path and another sandbox's id).
pub const MASKED_DIRS: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
    "sys/firmware",
    "sys/block",
    "sys/class/block",
    "sys/dev/block",
    "sys/devices/virtual/block",
    "sys/devices/virtual/powercap",
];
/// `/proc` entries made read-only (SECURITY.md item 5).
pub const READONLY_PROC: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Devices in `/dev`, bound from the host's (SECURITY.md item 6).
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Host-side preparation, as host root with the cwd at the sandbox's
/// directory: mount points, the disk with `upper` and `work`, and `sysfs`.
/// Returns the disk's loop device number.
pub fn prepare_host_side(layers: usize, volumes: usize) -> Result<Option<(u64, u64)>, MountError> {
    use crate::spec::{DISK_DIR, DISK_IMAGE, LOWER_DIR, ROOTFS_DIR, SYSFS_DIR};
    let d = |p: &str| PathBuf::from(p);
    let mut ops = Vec::new();
    for dir in [DISK_DIR, LOWER_DIR, ROOTFS_DIR, SYSFS_DIR] {
        ops.push(MountOp::Mkdir {
            path: d(dir),
            mode: 0o755,
        });
        ops.push(MountOp::RequireDir { path: d(dir) });
    }
    for i in 0..layers {
        let p = lower_layer_dir(i);
        ops.push(MountOp::Mkdir {
            path: p.clone(),
            mode: 0o755,
        });
        ops.push(MountOp::RequireDir { path: p });
    }
    if volumes > 0 {
        ops.push(MountOp::Mkdir {
            path: d(crate::spec::VOLUMES_DIR),
            mode: 0o755,
        });
        ops.push(MountOp::RequireDir {
            path: d(crate::spec::VOLUMES_DIR),
        });
    }
    for i in 0..volumes {
        let p = crate::spec::volume_dir(i);
        ops.push(MountOp::Mkdir {
            path: p.clone(),
            mode: 0o755,
        });
        ops.push(MountOp::RequireDir { path: p });
    }
    ops.push(MountOp::LoopMount {
        image: d(DISK_IMAGE),
        target: d(DISK_DIR),
    });
    for (dir, mode) in [("upper", 0o755), ("work", 0o700)] {
        let p = d(DISK_DIR).join(dir);
        ops.push(MountOp::Mkdir {
            path: p.clone(),
            mode,
        });
        ops.push(MountOp::RequireDir { path: p });
    }
    ops.push(MountOp::Mount {
        source: "sysfs".into(),
        target: d(SYSFS_DIR),
        fstype: "sysfs".into(),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        data: None,
    });
    execute(&ops)
}

/// Where image layer `i` (0 = lowest) is attached, relative to the
/// sandbox's directory.
pub fn lower_layer_dir(i: usize) -> PathBuf {
    Path::new(crate::spec::LOWER_DIR).join(i.to_string())
}

/// The overlay's `lowerdir` value for `layers` layers: topmost first.
fn lowerdir(layers: usize) -> String {
    (0..layers.max(1))
        .rev()
        .map(|i| lower_layer_dir(i).display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Builds the mount plan PID 1 runs in the sandbox's user namespace for an
/// image of `layers` layers; every target is under `rootfs`.
pub fn plan(layers: usize, volumes: &[(String, bool)]) -> Vec<MountOp> {
    use crate::spec::{DISK_DIR, ROOTFS_DIR, SYSFS_DIR};
    let rootfs = Path::new(ROOTFS_DIR);
    let r = |p: &str| rootfs.join(p);
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut ops = vec![MountOp::Mount {
        source: "overlay".into(),
        target: rootfs.into(),
        fstype: "overlay".into(),
        flags: MsFlags::empty(),
        // user.overlay.* xattrs: the mounter is root of a user namespace.
        data: Some(format!(
            "lowerdir={},upperdir={DISK_DIR}/upper,workdir={DISK_DIR}/work,userxattr",
            lowerdir(layers)
        )),
    }];
    for d in ["proc", "dev", "sys", "tmp"] {
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
    for name in DEVICES {
        ops.push(MountOp::Touch {
            path: r("dev").join(name),
        });
        ops.push(MountOp::Bind {
            source: Path::new("/dev").join(name),
            target: r("dev").join(name),
            readonly: false,
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
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
    // Read-only /sys of the sandbox's own network namespace, mounted by
    // the helper before it entered the user namespace.
    ops.push(MountOp::Bind {
        source: SYSFS_DIR.into(),
        target: r("sys"),
        readonly: true,
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
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
    // Volumes, each at its path (made where missing, each step checked to
    // be a real directory: the sandbox's own disk may hold symlinks).
    for (i, (mount_path, read_only)) in volumes.iter().enumerate() {
        let mut target = rootfs.to_path_buf();
        for part in mount_path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            target.push(part);
            ops.push(MountOp::Mkdir {
                path: target.clone(),
                mode: 0o755,
            });
            ops.push(MountOp::RequireDir {
                path: target.clone(),
            });
        }
        ops.push(MountOp::Bind {
            source: crate::spec::volume_dir(i),
            target,
            readonly: *read_only,
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

/// Executes a plan. Must run inside a private mount namespace. Returns the
/// device number (major, minor) of the last loop device it attached.
pub fn execute(ops: &[MountOp]) -> Result<Option<(u64, u64)>, MountError> {
    let mut loop_dev = None;
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
                if let Ok(md) = std::fs::metadata(&dev.path) {
                    use std::os::unix::fs::MetadataExt;
                    let rdev = md.rdev();
                    loop_dev = Some((nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)));
                }
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
    Ok(loop_dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(op: &MountOp) -> &Path {
        match op {
            MountOp::Mount { target, .. }
            | MountOp::Bind { target, .. }
            | MountOp::MaskDir { target }
            | MountOp::LoopMount { target, .. }
            | MountOp::RemountReadonly { target, .. } => target,
            MountOp::Mkdir { path, .. }
            | MountOp::Touch { path }
            | MountOp::CharDevice { path, .. }
            | MountOp::Chmod { path, .. }
            | MountOp::RequireDir { path } => path,
            MountOp::Symlink { link, .. } => link,
        }
    }

    fn volumes() -> Vec<(String, bool)> {
        vec![
            ("/home/daytona/data".to_string(), false),
            ("/mnt/ro".to_string(), true),
        ]
    }

    #[test]
    fn every_target_is_relative_and_inside_the_rootfs() {
        for op in plan(1, &volumes()) {
            let t = target(&op);
            assert!(t.is_relative() && t.starts_with("rootfs"), "{op:?}");
        }
    }

    #[test]
    fn no_mount_option_names_a_host_path() {
        for op in plan(1, &volumes()) {
            if let MountOp::Mount { data: Some(d), .. } = &op {
                assert!(!d.contains('/') || !d.contains("=/"), "{op:?}");
            }
            if let MountOp::Bind { source, .. } = &op {
                let host_dev = source.starts_with("/dev/");
                assert!(source.is_relative() || host_dev, "{op:?}");
            }
        }
    }

    #[test]
    fn mount_targets_are_checked_before_they_are_used() {
        let ops = plan(1, &volumes());
        for d in ["proc", "dev", "sys", "home/daytona/data", "mnt/ro"] {
            let p = Path::new("rootfs").join(d);
            let check = ops
                .iter()
                .position(|o| *o == MountOp::RequireDir { path: p.clone() });
            let used = ops.iter().position(|o| {
                target(o) == p && !matches!(o, MountOp::Mkdir { .. } | MountOp::RequireDir { .. })
            });
            assert!(check.unwrap() < used.unwrap(), "{d}");
        }
    }

    #[test]
    fn volumes_are_bound_at_their_paths_read_only_when_asked() {
        let ops = plan(1, &volumes());
        // Every directory on the way is checked to be a real one first.
        let bind = ops
            .iter()
            .position(|o| matches!(o, MountOp::Bind { target, .. } if target.ends_with("home/daytona/data")))
            .unwrap();
        for d in ["rootfs/home", "rootfs/home/daytona"] {
            let check = ops
                .iter()
                .position(|o| *o == MountOp::RequireDir { path: d.into() })
                .unwrap();
            assert!(check < bind, "{d}");
        }
        assert!(ops.contains(&MountOp::Bind {
            source: crate::spec::volume_dir(0),
            target: Path::new("rootfs/home/daytona/data").into(),
            readonly: false,
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        }));
        assert!(ops.contains(&MountOp::Bind {
            source: crate::spec::volume_dir(1),
            target: Path::new("rootfs/mnt/ro").into(),
            readonly: true,
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        }));
    }

    #[test]
    fn masks_cover_host_and_tenant_information() {
        let ops = plan(1, &[]);
        for f in [
            "kcore",
            "keys",
            "timer_list",
            "sched_debug",
            "kpageflags",
            "kpagecount",
        ] {
            assert!(ops.iter().any(|o| matches!(o,
                MountOp::Bind { source, target, readonly: true, .. }
                    if source.ends_with("dev/null") && target.ends_with(Path::new("proc").join(f)))), "{f}");
        }
        for d in [
            "sys/block",
            "sys/class/block",
            "sys/devices/virtual/block",
            "sys/devices/virtual/powercap",
            "proc/asound",
        ] {
            assert!(
                ops.contains(&MountOp::MaskDir {
                    target: Path::new("rootfs").join(d)
                }),
                "{d}"
            );
        }
        assert!(ops.iter().any(|o| matches!(o,
            MountOp::Bind { target, readonly: true, .. } if target.ends_with("sys"))));
        // the only devices are the harmless ones, bound from the host
        let devs: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                MountOp::Bind { source, .. } if source.starts_with("/dev") => {
                    source.file_name().map(|n| n.to_string_lossy().to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(devs, ["null", "zero", "full", "random", "urandom", "tty"]);
        assert!(!ops.iter().any(|o| matches!(o, MountOp::CharDevice { .. })));
    }
}
