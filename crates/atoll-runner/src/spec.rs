//! The sandbox plan as data: everything the init helper needs to build one
//! sandbox, serialised to it over a pipe. Host paths in a spec are derived
//! only from server-generated ids, never from user input.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// CPU quota in whole cores.
    pub cpus: u32,
    /// Memory limit in bytes; swap is always 0.
    pub memory_bytes: u64,
    /// Maximum number of tasks (processes and threads).
    pub pids: u32,
}

/// What the daemon is told at start (written to `/.atoll/run/daemon.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
}

/// One sandbox, as the runtime builds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Server-generated id (a UUID); names host paths and cgroups.
    pub id: String,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// Read-only image layer: the overlay's lower dir.
    pub image_rootfs: PathBuf,
    /// The user commands run as (`daytona` in the default image).
    pub user: Option<String>,
    /// Sandbox environment variables, passed to every command.
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    /// Size of the sandbox's disk in bytes (its quota).
    pub disk_bytes: u64,
    /// What the sandbox may reach beyond loopback.
    #[serde(default)]
    pub network: crate::network::NetworkPolicy,
}

/// Where the daemon's unix socket lives inside the sandbox.
pub const SANDBOX_RUN_DIR: &str = "/.atoll/run";
pub const SANDBOX_SOCKET: &str = "/.atoll/run/toolbox.sock";
pub const SANDBOX_DAEMON_BIN: &str = "/.atoll/atoll-daemon";
pub const SANDBOX_DAEMON_CONFIG: &str = "/.atoll/run/daemon.json";

/// Host-side directories of one sandbox, all under the runner's data dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxDirs {
    pub root: PathBuf,
    /// The sandbox's disk: a sparse ext4 image whose size is its quota.
    pub disk_image: PathBuf,
    /// Where the disk is mounted (inside the sandbox's mount namespace only).
    pub disk_mount: PathBuf,
    /// Overlay upper dir, on the disk: the sandbox's own writes.
    pub upper: PathBuf,
    /// Overlay work dir, on the disk.
    pub work: PathBuf,
    /// Mount point of the merged root (mounted only inside the sandbox's
    /// own mount namespace, so nothing appears on the host).
    pub rootfs: PathBuf,
    /// Bind-mounted at `/.atoll/run`: the daemon's socket and config.
    pub run: PathBuf,
}

impl SandboxDirs {
    pub fn new(sandboxes_dir: &std::path::Path, id: &str) -> SandboxDirs {
        let root = sandboxes_dir.join(id);
        let disk_mount = root.join("disk");
        SandboxDirs {
            disk_image: root.join("disk.img"),
            upper: disk_mount.join("upper"),
            work: disk_mount.join("work"),
            disk_mount,
            rootfs: root.join("rootfs"),
            run: root.join("run"),
            root,
        }
    }

    /// Generated `/etc/hostname` and `/etc/hosts` of the sandbox.
    pub fn etc_hostname(&self) -> PathBuf {
        self.root.join("etc").join("hostname")
    }

    pub fn etc_hosts(&self) -> PathBuf {
        self.root.join("etc").join("hosts")
    }

    /// Generated `/etc/resolv.conf`: the host's upstream resolvers.
    pub fn etc_resolv_conf(&self) -> PathBuf {
        self.root.join("etc").join("resolv.conf")
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("toolbox.sock")
    }
}

/// What the runtime hands the init helper over its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRequest {
    pub spec: SandboxSpec,
    pub dirs: SandboxDirs,
    /// Host path of the daemon executable to bind read-only into the sandbox.
    pub daemon_exe: PathBuf,
    /// `cgroup.procs` files the helper joins before unsharing.
    pub cgroup_procs: Vec<PathBuf>,
    /// The prepared network namespace to join (a `/proc/<runner>/fd/<n>`
    /// path, valid while the runner waits for the helper); `None` gives the
    /// sandbox a fresh one with loopback only.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// Is `id` safe to use as a path component? Ids are server-generated UUIDs;
/// this is the last line of defence (SECURITY.md item 14).
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_path_syntax_are_refused() {
        assert!(is_safe_id("3f0c1a52-8f7e-4c1e-9d1b-0a2b3c4d5e6f"));
        for bad in ["", "..", "a/b", "../x", "a\0b", "x y"] {
            assert!(!is_safe_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn dirs_stay_under_the_sandbox_root() {
        let d = SandboxDirs::new(std::path::Path::new("/data/sandboxes"), "abc");
        assert_eq!(
            d.upper,
            std::path::Path::new("/data/sandboxes/abc/disk/upper")
        );
        assert_eq!(
            d.disk_image,
            std::path::Path::new("/data/sandboxes/abc/disk.img")
        );
        assert_eq!(
            d.socket(),
            std::path::Path::new("/data/sandboxes/abc/run/toolbox.sock")
        );
    }
}
