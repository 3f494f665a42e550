//! The sandbox plan as data: everything the init helper needs to build one
//! sandbox, serialised to it over a pipe. Host paths in a spec are derived
//! only from server-generated ids, never from user input.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub use atoll_runtime_api::Limits;

/// What the daemon is told at start (through a sealed memfd, see
/// [`DAEMON_CONFIG_FD_ENV`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonConfig {
    /// Where to bind when no socket descriptor is handed over (daemon
    /// tests); sandboxes get theirs as a descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Where the daemon keeps environment changes (`POST /env`) so they
    /// survive a stop and start: a path on the sandbox's own disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_file: Option<PathBuf>,
    /// The image's entrypoint, which the daemon starts at boot as the
    /// entrypoint session; empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
}

/// A path or a list of paths.
fn one_or_many_paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// The daemon's environment state inside every sandbox (root-only).
pub const SANDBOX_ENV_FILE: &str = "/var/lib/atoll-daemon/env.json";

/// One sandbox, as the runtime builds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Server-generated id (a UUID); names host paths and cgroups.
    pub id: String,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// Read-only image layers, lowest first: the overlay's lower dirs. (A
    /// journal written before layered images names one, `image_rootfs`.)
    #[serde(alias = "image_rootfs", deserialize_with = "one_or_many_paths")]
    pub image_layers: Vec<PathBuf>,
    /// The name of that image in the store.
    #[serde(default)]
    pub image: String,
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
    /// The image's entrypoint (argv), run by the daemon at every boot as the
    /// entrypoint session; empty: none.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image's working directory (`WORKDIR`), where commands start
    /// unless told otherwise; none: the user's home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Volumes bound into the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeBind>,
}

/// A volume bound into a sandbox: its mounted filesystem on the host (the
/// runner's), the directory of it to bind, where, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBind {
    pub source: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// Absolute path inside the sandbox.
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
    /// Whether its owners are shifted into the sandbox's user namespace
    /// (filesystems that cannot be idmapped, FUSE ones, are bound as they
    /// are).
    #[serde(default = "yes")]
    pub idmap: bool,
}

fn yes() -> bool {
    true
}

/// Where volume `i` is attached, relative to the sandbox's directory.
pub fn volume_dir(i: usize) -> PathBuf {
    std::path::Path::new(VOLUMES_DIR).join(i.to_string())
}

/// Environment variables naming the descriptors PID 1 hands the daemon:
/// its configuration (a sealed memfd of JSON) and its toolbox socket
/// (bound outside the sandbox, not yet listening).
pub const DAEMON_CONFIG_FD_ENV: &str = "ATOLL_DAEMON_CONFIG_FD";
pub const DAEMON_LISTEN_FD_ENV: &str = "ATOLL_DAEMON_LISTEN_FD";

/// Names inside a sandbox's host directory. The init helper works with
/// its cwd there and uses these relative names, so no mount option or
/// socket address the sandbox can read names a host path.
pub const DISK_DIR: &str = "disk";
pub const LOWER_DIR: &str = "lower";
pub const ROOTFS_DIR: &str = "rootfs";
pub const SYSFS_DIR: &str = "sysfs";
pub const VOLUMES_DIR: &str = "volumes";
pub const SOCKET_NAME: &str = "toolbox.sock";
pub const DISK_IMAGE: &str = "disk.img";
pub const LOG_NAME: &str = "daemon.log";

/// Host-side directory of one sandbox, under the runner's data dir. None
/// of it is visible inside the sandbox: the sandbox sees its disk only
/// through the overlay, and its daemon gets socket and config as
/// descriptors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxDirs {
    pub root: PathBuf,
}

impl SandboxDirs {
    pub fn new(sandboxes_dir: &std::path::Path, id: &str) -> SandboxDirs {
        SandboxDirs {
            root: sandboxes_dir.join(id),
        }
    }

    /// The sandbox's disk: a sparse ext4 image whose size is its quota.
    pub fn disk_image(&self) -> PathBuf {
        self.root.join(DISK_IMAGE)
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join(SOCKET_NAME)
    }

    pub fn log(&self) -> PathBuf {
        self.root.join(LOG_NAME)
    }
}

/// What the runtime hands the init helper over its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRequest {
    pub spec: SandboxSpec,
    pub dirs: SandboxDirs,
    /// The daemon executable (a `/proc/<runner>/fd/<n>` path to the
    /// runner's sealed copy), exec'd by descriptor.
    pub daemon_exe: PathBuf,
    /// What the daemon is told, through a sealed memfd.
    pub daemon_config: DaemonConfig,
    /// Generated `/etc` files, written onto the sandbox's own disk.
    pub etc: crate::etc::EtcFiles,
    /// The sandbox's slice of host uids and gids.
    pub uids: crate::userns::UidRange,
    /// Its user namespace, made ahead of time by the runner (a
    /// `/proc/<runner>/fd/<n>` path, valid while the runner waits); `None`:
    /// the helper makes it.
    #[serde(default)]
    pub userns: Option<PathBuf>,
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
    fn the_daemon_is_told_the_entrypoint_only_when_there_is_one() {
        let mut cfg = DaemonConfig {
            socket: None,
            user: Some("daytona".into()),
            env: BTreeMap::new(),
            work_dir: None,
            env_file: None,
            entrypoint: vec!["sleep".into(), "infinity".into()],
        };
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(v["entrypoint"], serde_json::json!(["sleep", "infinity"]));
        cfg.entrypoint.clear();
        let v = serde_json::to_value(&cfg).unwrap();
        assert!(v.get("entrypoint").is_none(), "{v}");
        // A spec written before entrypoints existed has none.
        let spec: SandboxSpec = serde_json::from_value(serde_json::json!({
            "id": "a", "hostname": "h", "image_rootfs": "/i", "user": null, "env": {},
            "limits": {"cpus": 1, "memory_bytes": 1, "pids": 1}, "disk_bytes": 1,
        }))
        .unwrap();
        assert!(spec.entrypoint.is_empty());
        assert_eq!(spec.image_layers, vec![PathBuf::from("/i")]);
    }

    #[test]
    fn dirs_stay_under_the_sandbox_root() {
        let d = SandboxDirs::new(std::path::Path::new("/data/sandboxes"), "abc");
        assert_eq!(
            d.disk_image(),
            std::path::Path::new("/data/sandboxes/abc/disk.img")
        );
        assert_eq!(
            d.socket(),
            std::path::Path::new("/data/sandboxes/abc/toolbox.sock")
        );
    }
}
