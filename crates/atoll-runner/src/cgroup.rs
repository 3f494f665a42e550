//! Control groups: one cgroup per sandbox under `atoll/<instance>/<id>`,
//! limiting cpu, memory (swap 0) and pids, and restricting devices on v1.
//! Works on cgroup v2 (unified) and v1 (per-controller hierarchies, as on
//! hybrid hosts where v2 has no controllers). The cgroup is also the
//! runtime's ground truth for "which processes belong to this sandbox",
//! freezes and thaws them (pause: v1 `freezer.state`, v2 `cgroup.freeze`)
//! and tells what they use (cpu time, memory).

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
    #[error("cgroup {path} did not freeze within {ms} ms (state {state})")]
    FreezeTimeout {
        path: PathBuf,
        ms: u128,
        state: String,
    },
    #[error("no freezer controller on this host (cgroup v1 without `freezer`)")]
    NoFreezer,
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

/// v1 controllers a sandbox joins: limits (memory, pids, cpu, devices,
/// blkio), cpu accounting (`cpuacct`, a separate hierarchy on some hosts)
/// and `freezer` (pause).
const V1_CONTROLLERS: &[&str] = &[
    "memory", "pids", "cpu", "devices", "blkio", "cpuacct", "freezer",
];

/// Memory charged to a sandbox's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Everything charged (anonymous memory, page cache, kernel).
    pub usage: u64,
    /// Page cache in it (`file` / `total_cache`).
    pub cache: u64,
    /// Page cache the kernel would reclaim first (`inactive_file`):
    /// usage minus this is what the sandbox really holds.
    pub inactive_file: u64,
    /// The limit (`None`: unlimited).
    pub limit: Option<u64>,
}

/// Parses a `memory.stat` file (`key value` lines) into the value of `key`.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Is a v2 cgroup frozen, by its `cgroup.events` (`frozen 1`)?
pub fn v2_events_frozen(events: &str) -> bool {
    stat_value(events, "frozen") == Some(1)
}

/// A v1 `freezer.state`: FROZEN, FREEZING or THAWED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

impl FreezerState {
    pub fn parse(s: &str) -> Option<FreezerState> {
        match s.trim() {
            "THAWED" => Some(FreezerState::Thawed),
            "FREEZING" => Some(FreezerState::Freezing),
            "FROZEN" => Some(FreezerState::Frozen),
            _ => None,
        }
    }
}

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

    /// Memory charged to the sandbox, with its page cache and limit.
    pub fn memory_stats(&self, id: &str) -> Option<MemoryStats> {
        let read = |p: PathBuf| fs::read_to_string(p).ok();
        let num = |p: PathBuf| read(p)?.trim().parse::<u64>().ok();
        self.dirs(id)
            .into_iter()
            .find_map(|(c, d)| match c.as_str() {
                "unified" => {
                    let stat = read(d.join("memory.stat")).unwrap_or_default();
                    Some(MemoryStats {
                        usage: num(d.join("memory.current"))?,
                        cache: stat_value(&stat, "file").unwrap_or(0),
                        inactive_file: stat_value(&stat, "inactive_file").unwrap_or(0),
                        // "max" does not parse: unlimited.
                        limit: num(d.join("memory.max")),
                    })
                }
                "memory" => {
                    let stat = read(d.join("memory.stat")).unwrap_or_default();
                    Some(MemoryStats {
                        usage: num(d.join("memory.usage_in_bytes"))?,
                        cache: stat_value(&stat, "total_cache").unwrap_or(0),
                        inactive_file: stat_value(&stat, "total_inactive_file").unwrap_or(0),
                        // v1 spells "unlimited" as the largest page-aligned value.
                        limit: num(d.join("memory.limit_in_bytes")).filter(|&l| l < 1 << 62),
                    })
                }
                _ => None,
            })
    }

    /// Cpu time the sandbox's processes used, in nanoseconds, since its
    /// cgroup was made (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`).
    pub fn cpu_usage_ns(&self, id: &str) -> Option<u64> {
        self.dirs(id)
            .into_iter()
            .find_map(|(c, d)| match c.as_str() {
                "unified" => {
                    let stat = fs::read_to_string(d.join("cpu.stat")).ok()?;
                    Some(stat_value(&stat, "usage_usec")?.saturating_mul(1000))
                }
                "cpuacct" => fs::read_to_string(d.join("cpuacct.usage"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok(),
                _ => None,
            })
    }

    /// The directory that freezes the sandbox (`None`: no freezer here).
    fn freezer_dir(&self, id: &str) -> Option<(bool, PathBuf)> {
        let rel = self.parent.join(id);
        match &self.hierarchy {
            Hierarchy::V2 { root } => Some((true, root.join(rel))),
            Hierarchy::V1 { controllers } => controllers
                .iter()
                .find(|(n, _)| n == "freezer")
                .map(|(_, m)| (false, m.join(&rel))),
        }
    }

    /// Is the sandbox frozen (or freezing)? `None`: it has no freezer
    /// cgroup (v1 without the controller, or a sandbox started before its
    /// runner joined sandboxes to it).
    pub fn is_frozen(&self, id: &str) -> Option<bool> {
        let (v2, dir) = self.freezer_dir(id)?;
        if v2 {
            let want = fs::read_to_string(dir.join("cgroup.freeze")).ok()?;
            Some(want.trim() == "1")
        } else {
            let state = fs::read_to_string(dir.join("freezer.state")).ok()?;
            Some(FreezerState::parse(&state)? != FreezerState::Thawed)
        }
    }

    /// Freezes every process of the sandbox and waits until the kernel
    /// reports the whole cgroup frozen (their memory stays as it is). On
    /// a timeout the cgroup is thawed again.
    pub fn freeze(&self, id: &str, timeout: Duration) -> Result<(), CgroupError> {
        let (v2, dir) = self.freezer_dir(id).ok_or(CgroupError::NoFreezer)?;
        if !dir.exists() || (!v2 && !self.all_in(&dir, id)) {
            // A sandbox started by an older runner, outside the freezer.
            return Err(CgroupError::Io {
                path: dir,
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "the sandbox's processes are not in a freezer cgroup (stop and start it once)",
                ),
            });
        }
        let deadline = Instant::now() + timeout;
        let (file, value) = if v2 {
            ("cgroup.freeze", "1")
        } else {
            ("freezer.state", "FROZEN")
        };
        write(&dir.join(file), value)?;
        loop {
            let state = if v2 {
                fs::read_to_string(dir.join("cgroup.events")).map_err(io_err(&dir))?
            } else {
                fs::read_to_string(dir.join("freezer.state")).map_err(io_err(&dir))?
            };
            let frozen = if v2 {
                v2_events_frozen(&state)
            } else {
                FreezerState::parse(&state) == Some(FreezerState::Frozen)
            };
            if frozen {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.thaw(id);
                return Err(CgroupError::FreezeTimeout {
                    path: dir,
                    ms: timeout.as_millis(),
                    state: state.trim().replace('\n', "; "),
                });
            }
            if !v2 {
                // v1 retries tasks that were busy in the kernel when the
                // state is written again.
                let _ = fs::write(dir.join(file), value);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Thaws the sandbox (nothing to do if it is not frozen or has no
    /// freezer cgroup).
    pub fn thaw(&self, id: &str) -> Result<(), CgroupError> {
        let Some((v2, dir)) = self.freezer_dir(id) else {
            return Ok(());
        };
        let (file, value) = if v2 {
            ("cgroup.freeze", "0")
        } else {
            ("freezer.state", "THAWED")
        };
        write_optional(&dir.join(file), value)
    }

    /// Is every process of the sandbox (by its pids cgroup) in `dir`'s?
    fn all_in(&self, dir: &Path, id: &str) -> bool {
        let inside = read_pids(&dir.join("cgroup.procs"));
        self.pids(id).iter().all(|p| inside.contains(p))
    }

    /// SIGKILLs every process in the cgroup until it is empty. A frozen
    /// sandbox is thawed once every process has the signal pending, so
    /// they die without running another instruction of their own.
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
            if self.is_frozen(id) == Some(true) {
                // Frozen tasks act on SIGKILL only once thawed.
                self.thaw(id)?;
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

    #[test]
    fn parses_freezer_states_and_stat_files() {
        assert_eq!(FreezerState::parse("FROZEN\n"), Some(FreezerState::Frozen));
        assert_eq!(
            FreezerState::parse("FREEZING"),
            Some(FreezerState::Freezing)
        );
        assert_eq!(FreezerState::parse("THAWED\n"), Some(FreezerState::Thawed));
        assert_eq!(FreezerState::parse("frozen"), None);
        assert!(v2_events_frozen("populated 1\nfrozen 1\n"));
        assert!(!v2_events_frozen("populated 1\nfrozen 0\n"));
        assert!(!v2_events_frozen("populated 0\n"));
        let stat = "cache 10\ntotal_cache 4096\ntotal_inactive_file 1024\nfile 7\n";
        assert_eq!(stat_value(stat, "total_cache"), Some(4096));
        assert_eq!(stat_value(stat, "cache"), Some(10));
        assert_eq!(stat_value(stat, "file"), Some(7));
        assert_eq!(stat_value(stat, "inactive_file"), None);
    }

    /// A fake cgroup tree: the files the kernel would show, as plain files.
    fn fake(root: &Path, files: &[(&str, &str)]) {
        for (path, body) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
    }

    #[test]
    fn v1_usage_and_freezing_read_their_own_controllers() {
        let t = std::env::temp_dir().join(format!("atoll-cg-v1-{}", std::process::id()));
        let me = std::process::id().to_string();
        let sb = "atoll/inst/sb";
        let mut files = vec![];
        for c in ["memory", "pids", "cpuacct", "freezer"] {
            files.push((format!("{c}/cgroup.procs"), String::new()));
        }
        files.extend([
            (format!("pids/{sb}/cgroup.procs"), format!("{me}\n")),
            (format!("freezer/{sb}/cgroup.procs"), format!("{me}\n")),
            (format!("freezer/{sb}/freezer.state"), "THAWED\n".into()),
            (format!("cpuacct/{sb}/cpuacct.usage"), "123456789\n".into()),
            (
                format!("memory/{sb}/memory.usage_in_bytes"),
                "300000000\n".into(),
            ),
            (
                format!("memory/{sb}/memory.limit_in_bytes"),
                "1073741824\n".into(),
            ),
            (
                format!("memory/{sb}/memory.stat"),
                "cache 1\ntotal_cache 50000000\ntotal_inactive_file 40000000\n".into(),
            ),
        ]);
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        fake(&t, &files);
        let cg = Cgroups::detect(&t, "inst").unwrap();
        assert_eq!(cg.cpu_usage_ns("sb"), Some(123_456_789));
        assert_eq!(
            cg.memory_stats("sb"),
            Some(MemoryStats {
                usage: 300_000_000,
                cache: 50_000_000,
                inactive_file: 40_000_000,
                limit: Some(1 << 30),
            })
        );
        assert_eq!(cg.is_frozen("sb"), Some(false));
        cg.freeze("sb", Duration::from_secs(1)).unwrap();
        assert_eq!(
            fs::read_to_string(t.join("freezer").join(sb).join("freezer.state")).unwrap(),
            "FROZEN"
        );
        assert_eq!(cg.is_frozen("sb"), Some(true));
        cg.thaw("sb").unwrap();
        assert_eq!(cg.is_frozen("sb"), Some(false));
        // a process outside the freezer cgroup: refused, nothing frozen
        fs::write(
            t.join("pids").join(sb).join("cgroup.procs"),
            format!("{me}\n1\n"),
        )
        .unwrap();
        assert!(cg.freeze("sb", Duration::from_secs(1)).is_err());
        assert_eq!(cg.is_frozen("sb"), Some(false));
        // no such sandbox: nothing to read
        assert_eq!(cg.cpu_usage_ns("other"), None);
        assert_eq!(cg.is_frozen("other"), None);
        fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn v2_freezing_waits_for_the_events_file() {
        let t = std::env::temp_dir().join(format!("atoll-cg-v2-{}", std::process::id()));
        let sb = "atoll/inst/sb";
        let events = format!("{sb}/cgroup.events");
        fake(
            &t,
            &[
                ("cgroup.controllers", "cpu io memory pids"),
                (&format!("{sb}/cgroup.freeze"), "0\n"),
                (&events, "populated 1\nfrozen 0\n"),
                (
                    &format!("{sb}/cpu.stat"),
                    "usage_usec 2500\nuser_usec 2000\n",
                ),
                (&format!("{sb}/memory.current"), "1000\n"),
                (&format!("{sb}/memory.max"), "max\n"),
                (
                    &format!("{sb}/memory.stat"),
                    "anon 900\nfile 100\ninactive_file 60\n",
                ),
            ],
        );
        let cg = Cgroups::detect(&t, "inst").unwrap();
        assert_eq!(cg.cpu_usage_ns("sb"), Some(2_500_000));
        let m = cg.memory_stats("sb").unwrap();
        assert_eq!(
            (m.usage, m.cache, m.inactive_file, m.limit),
            (1000, 100, 60, None)
        );
        // the kernel never reports frozen: timeout, and thawed again
        let err = cg.freeze("sb", Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, CgroupError::FreezeTimeout { .. }), "{err}");
        assert_eq!(cg.is_frozen("sb"), Some(false));
        fs::write(t.join(&events), "populated 1\nfrozen 1\n").unwrap();
        cg.freeze("sb", Duration::from_secs(1)).unwrap();
        assert_eq!(cg.is_frozen("sb"), Some(true));
        fs::remove_dir_all(&t).unwrap();
    }
}
