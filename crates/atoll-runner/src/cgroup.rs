//! Control groups: one cgroup per sandbox under `atoll/<instance>/<id>`,
//! limiting cpu, memory (swap 0) and pids, and restricting devices on v1.
//! Works on cgroup v2 (unified) and v1 (per-controller hierarchies, as on
//! hybrid hosts where v2 has no controllers). The cgroup is also the
//! runtime's ground truth for "which processes belong to this sandbox".

use crate::spec::Limits;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy with memory and pids controllers under {0}")]
    Unsupported(PathBuf),
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup {0} still has processes after kill")]
    Busy(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified hierarchy mounted at the root.
    V2 { root: PathBuf },
    /// One hierarchy per controller: (controller name, mount point).
    V1 { controllers: Vec<(String, PathBuf)> },
}

/// The cgroups of one runner instance.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchy: Hierarchy,
    /// `atoll/<instance>`: relative path of this runner's parent cgroup.
    parent: PathBuf,
}

const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "devices", "blkio"];

/// I/O limits of every sandbox's disk (0: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoLimits {
    /// Bytes per second, reads and writes each.
    pub bps: u64,
    /// Operations per second, reads and writes each.
    pub iops: u64,
}

/// Where a sandbox's I/O limits are written once its disk's device is
/// known (the init helper attaches the loop device).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IoThrottle {
    /// The v1 blkio controller's cgroup directory.
    V1(PathBuf),
    /// The unified hierarchy's cgroup directory (`io.max`).
    V2(PathBuf),
}

impl IoThrottle {
    /// Limits I/O to the block device `major:minor` (v1: blkio throttle
    /// files; v2: one `io.max` line).
    pub fn apply(&self, major: u64, minor: u64, l: &IoLimits) -> Result<(), CgroupError> {
        let dev = format!("{major}:{minor}");
        let v = |x: u64| {
            if x == 0 {
                "max".to_string()
            } else {
                x.to_string()
            }
        };
        match self {
            IoThrottle::V1(dir) => {
                // v1 takes 0 as "no limit".
                for (file, value) in [
                    ("blkio.throttle.read_bps_device", l.bps),
                    ("blkio.throttle.write_bps_device", l.bps),
                    ("blkio.throttle.read_iops_device", l.iops),
                    ("blkio.throttle.write_iops_device", l.iops),
                ] {
                    write(&dir.join(file), &format!("{dev} {value}"))?;
                }
                Ok(())
            }
            IoThrottle::V2(dir) => write(
                &dir.join("io.max"),
                &format!(
                    "{dev} rbps={} wbps={} riops={} wiops={}",
                    v(l.bps),
                    v(l.bps),
                    v(l.iops),
                    v(l.iops)
                ),
            ),
        }
    }
}

/// Character devices a sandbox may open (v1 devices controller):
/// null, zero, full, random, urandom, tty, ptmx and the pts range.
const ALLOWED_DEVICES: &[&str] = &[
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

impl Cgroups {
    /// Detects the hierarchy under `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path, instance: &str) -> Result<Cgroups, CgroupError> {
        let parent = Path::new("atoll").join(instance);
        let unified = root.join("cgroup.controllers");
        if let Ok(c) = fs::read_to_string(&unified) {
            let have: Vec<&str> = c.split_whitespace().collect();
            if have.contains(&"memory") && have.contains(&"pids") {
                return Ok(Cgroups {
                    hierarchy: Hierarchy::V2 { root: root.into() },
                    parent,
                });
            }
        }
        let mut controllers = Vec::new();
        for c in V1_CONTROLLERS {
            let p = root.join(c);
            if p.join("cgroup.procs").exists() {
                controllers.push((c.to_string(), p));
            }
        }
        let names: Vec<&str> = controllers.iter().map(|(n, _)| n.as_str()).collect();
        if !names.contains(&"memory") || !names.contains(&"pids") {
            return Err(CgroupError::Unsupported(root.into()));
        }
        Ok(Cgroups {
            hierarchy: Hierarchy::V1 { controllers },
            parent,
        })
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Directories of the sandbox's cgroup, one per hierarchy.
    fn dirs(&self, id: &str) -> Vec<(String, PathBuf)> {
        let rel = self.parent.join(id);
        match &self.hierarchy {
            Hierarchy::V2 { root } => vec![("unified".into(), root.join(rel))],
            Hierarchy::V1 { controllers } => controllers
                .iter()
                .map(|(n, m)| (n.clone(), m.join(&rel)))
                .collect(),
        }
    }

    /// Where the sandbox's disk I/O is throttled (`None`: no io/blkio
    /// controller on this host).
    pub fn io_throttle(&self, id: &str) -> Option<IoThrottle> {
        let rel = self.parent.join(id);
        match &self.hierarchy {
            Hierarchy::V2 { root } => {
                let dir = root.join(rel);
                dir.join("io.max").exists().then_some(IoThrottle::V2(dir))
            }
            Hierarchy::V1 { controllers } => controllers
                .iter()
                .find(|(n, _)| n == "blkio")
                .map(|(_, m)| IoThrottle::V1(m.join(&rel))),
        }
    }

    /// The directory whose `cgroup.procs` lists the sandbox's processes.
    fn procs_dir(&self, id: &str) -> PathBuf {
        let rel = self.parent.join(id);
        match &self.hierarchy {
            Hierarchy::V2 { root } => root.join(rel),
            Hierarchy::V1 { controllers } => controllers
                .iter()
                .find(|(n, _)| n == "pids")
                .map(|(_, m)| m.join(&rel))
                .unwrap_or_default(),
        }
    }

    fn ensure_parent(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => {
                let mut dir = root.clone();
                for comp in self.parent.components() {
                    enable_v2_controllers(&dir);
                    dir.push(comp);
                    mkdir(&dir)?;
                }
                enable_v2_controllers(&dir);
            }
            Hierarchy::V1 { controllers } => {
                for (_, mount) in controllers {
                    mkdir_all(&mount.join(&self.parent))?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files of the sandbox's cgroup (which [`create`]
    /// makes).
    ///
    /// [`create`]: Cgroups::create
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.dirs(id)
            .into_iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Creates the sandbox's cgroup with `limits` and returns the
    /// `cgroup.procs` files a process writes itself into to join it.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<Vec<PathBuf>, CgroupError> {
        self.ensure_parent()?;
        let mut procs = Vec::new();
        for (controller, dir) in self.dirs(id) {
            mkdir(&dir)?;
            procs.push(dir.join("cgroup.procs"));
            if controller == "devices" {
                write(&dir.join("devices.deny"), "a")?;
                for rule in ALLOWED_DEVICES {
                    write(&dir.join("devices.allow"), rule)?;
                }
            }
        }
        self.apply(id, limits)?;
        Ok(procs)
    }

    /// Writes `limits` to an existing cgroup (also used for live resize).
    pub fn apply(&self, id: &str, limits: &Limits) -> Result<(), CgroupError> {
        let period: u64 = 100_000;
        let quota = period * u64::from(limits.cpus.max(1));
        for (controller, dir) in self.dirs(id) {
            match controller.as_str() {
                "unified" => {
                    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                    write_optional(&dir.join("memory.swap.max"), "0")?;
                    write(&dir.join("pids.max"), &limits.pids.to_string())?;
                    write_optional(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                }
                "memory" => {
                    write_optional(&dir.join("memory.swappiness"), "0")?;
                    // memsw must stay >= limit: raise in the right order.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    let bytes = limits.memory_bytes.to_string();
                    if write(&dir.join("memory.limit_in_bytes"), &bytes).is_err() {
                        write_optional(&memsw, &bytes)?;
                        write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                    }
                    write_optional(&memsw, &bytes)?;
                }
                "pids" => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                "cpu" => {
                    write_optional(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                    write_optional(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Host pids of every process in the sandbox's cgroup.
    pub fn pids(&self, id: &str) -> Vec<i32> {
        read_pids(&self.procs_dir(id).join("cgroup.procs"))
    }

    pub fn exists(&self, id: &str) -> bool {
        self.procs_dir(id).exists()
    }

    /// Memory the kernel charges to the sandbox, in bytes.
    pub fn memory_usage(&self, id: &str) -> Option<u64> {
        self.dirs(id).into_iter().find_map(|(c, d)| {
            let f = match c.as_str() {
                "unified" => d.join("memory.current"),
                "memory" => d.join("memory.usage_in_bytes"),
                _ => return None,
            };
            fs::read_to_string(f).ok()?.trim().parse().ok()
        })
    }

    /// SIGKILLs every process in the cgroup until it is empty.
    pub fn kill_all(&self, id: &str, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        let dir = self.procs_dir(id);
        loop {
            let pids = self.pids(id);
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                // SAFETY: kill takes plain integers; the pid was read from the
                // sandbox's own cgroup, so it names one of its processes.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy(dir));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills what is left and removes the sandbox's cgroup directories.
    pub fn remove(&self, id: &str) -> Result<(), CgroupError> {
        self.kill_all(id, Duration::from_secs(10))?;
        for (_, dir) in self.dirs(id) {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // EBUSY while the last task is still exiting.
                    Err(e)
                        if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        return Err(CgroupError::Io {
                            path: dir,
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Ids of every sandbox cgroup under this instance.
    pub fn list(&self) -> Vec<String> {
        let dir = match &self.hierarchy {
            Hierarchy::V2 { root } => root.join(&self.parent),
            Hierarchy::V1 { controllers } => controllers
                .iter()
                .find(|(n, _)| n == "pids")
                .map(|(_, m)| m.join(&self.parent))
                .unwrap_or_default(),
        };
        let mut ids: Vec<String> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }
}

fn enable_v2_controllers(dir: &Path) {
    // Best effort: the root may already delegate them.
    let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu +io");
}

fn read_pids(file: &Path) -> Vec<i32> {
    fs::read_to_string(file)
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Io {
            path: dir.into(),
            source: e,
        }),
    }
}

fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(io_err(dir))
}

fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(file, value).map_err(io_err(file))
}

/// Writes a knob that a kernel may not have (swap accounting, cpu quota).
fn write_optional(file: &Path, value: &str) -> Result<(), CgroupError> {
    match fs::write(file, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::Io {
            path: file.into(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v1_and_v2_layouts() {
        let t = std::env::temp_dir().join(format!("atoll-cg-{}", std::process::id()));
        let v1 = t.join("v1");
        for c in ["memory", "pids", "cpu"] {
            fs::create_dir_all(v1.join(c)).unwrap();
            fs::write(v1.join(c).join("cgroup.procs"), "").unwrap();
        }
        let cg = Cgroups::detect(&v1, "inst").unwrap();
        assert!(matches!(cg.hierarchy(), Hierarchy::V1 { controllers } if controllers.len() == 3));
        assert!(cg.procs_dir("x").ends_with("pids/atoll/inst/x"));

        let v2 = t.join("v2");
        fs::create_dir_all(&v2).unwrap();
        fs::write(v2.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let cg = Cgroups::detect(&v2, "inst").unwrap();
        assert!(matches!(cg.hierarchy(), Hierarchy::V2 { .. }));

        let none = t.join("none");
        fs::create_dir_all(&none).unwrap();
        assert!(Cgroups::detect(&none, "inst").is_err());
        fs::remove_dir_all(&t).unwrap();
    }
}
