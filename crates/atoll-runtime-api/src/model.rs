//! What crosses the boundary: the spec of a sandbox as the control plane
//! states it (ids and names, never a host path), what a runtime sees of a
//! sandbox, what a sandbox uses, the images a runtime can start.

use crate::net::NetworkPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// One sandbox as the control plane asks for it. The runtime resolves
/// `image` to its own copy of that image and derives every host path from
/// `id`, which it validates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Server-generated id (a UUID).
    pub id: String,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// The image (a snapshot name) the sandbox starts from.
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
    pub network: NetworkPolicy,
    /// Volumes mounted into it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeAttachment>,
}

/// A volume mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeAttachment {
    /// The volume's id (a UUID).
    pub volume_id: String,
    /// Absolute path inside the sandbox.
    pub mount_path: String,
    /// A directory of the volume to mount instead of its root (made if
    /// missing); confined to the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

/// Checks a volume's mount path: absolute, no `.`/`..` parts, not `/`,
/// and not where the runtime mounts its own (`/proc`, `/dev`, `/sys`,
/// `/.atoll`).
pub fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() > 1024 || path.contains('\0') {
        return Err(format!("mountPath {path:?} must be an absolute path"));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("mountPath must not be /".into());
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("mountPath {path:?} must not contain . or .. parts"));
    }
    if ["proc", "dev", "sys", ".atoll"].contains(&parts[0]) {
        return Err(format!("mountPath {path:?} is reserved"));
    }
    Ok(())
}

/// Checks a subpath: relative to the volume, no `..` parts.
pub fn check_subpath(subpath: &str) -> Result<(), String> {
    if subpath.len() > 1024 || subpath.contains('\0') {
        return Err("subpath is too long".into());
    }
    if subpath.split('/').any(|p| p == "..") {
        return Err(format!("subpath {subpath:?} must not contain .. parts"));
    }
    Ok(())
}

/// One entry of a volume directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeEntry {
    pub name: String,
    pub is_dir: bool,
    /// Set for a symlink: its target (never followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
    pub size: u64,
    /// Permission bits (`0o644`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub modified_at_ms: i64,
}

/// Where a volume made by a runtime lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumePlacement {
    /// Its files are in shared storage (an S3 bucket) that every runner of
    /// the deployment mounts: sandboxes that mount it may run anywhere.
    /// Otherwise they are on this runner only.
    pub shared: bool,
}

/// What a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeUsage {
    pub used_bytes: u64,
    /// Its quota.
    pub size_bytes: u64,
}

/// What a runtime sees of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Observed {
    /// PID 1 lives (`paused`: every process frozen, memory kept).
    Running {
        id: String,
        pid: i32,
        paused: bool,
    },
    Stopped {
        id: String,
    },
    /// A start that was interrupted (runner crash) or failed.
    Failed {
        id: String,
        reason: String,
    },
}

impl Observed {
    pub fn id(&self) -> &str {
        match self {
            Observed::Running { id, .. }
            | Observed::Stopped { id }
            | Observed::Failed { id, .. } => id,
        }
    }
}

/// Where a stopped sandbox's disk is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskState {
    /// Its disk is on the runtime, ready to start.
    pub present: bool,
    /// An archive of it is in the archive store.
    pub archived: bool,
}

/// What a running sandbox uses, read from its cgroup and its disk (never
/// the host's figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxUsage {
    /// Cpu time used since it started, in nanoseconds (a rate needs two
    /// readings).
    pub cpu_ns: u64,
    /// Memory it holds: charged memory minus the page cache the kernel
    /// reclaims first.
    pub memory_used: u64,
    /// Page cache charged to it.
    pub memory_cache: u64,
    /// Its memory limit (0: none).
    pub memory_limit: u64,
    /// Bytes used on its disk's filesystem.
    pub disk_used: u64,
    /// Size of its disk's filesystem.
    pub disk_total: u64,
    /// Bytes still writable by its users (ext4 keeps some for root).
    pub disk_free: u64,
}

/// What a runtime's host offers sandboxes, as it reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Cores.
    pub cpu: u32,
    pub memory_gib: u64,
    /// Space on the filesystem sandbox disks live on.
    pub disk_gib: u64,
    /// Free space there now.
    pub disk_free_gib: u64,
    /// Sandboxes that can run at once for want of network addresses (0:
    /// sandboxes get loopback only, no limit from the network).
    pub network_slots: u32,
    /// Sandboxes the runtime runs now.
    pub running: u32,
    /// Bytes the runtime's stored images (their layers) take on disk.
    #[serde(default)]
    pub images_bytes: u64,
}

/// An image a runtime can start sandboxes from ("snapshot" in Daytona's
/// API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub name: String,
    /// `sha256:<hex>` of the image's content.
    pub digest: String,
    pub size_bytes: u64,
    pub created_at_ms: i64,
    /// What a sandbox of this image runs at boot; empty: nothing.
    pub entrypoint: Vec<String>,
    /// Where it came from (`docker.io/library/python:3.12`), if pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How many layers it has.
    #[serde(default)]
    pub layers: u32,
}

/// What [`crate::Runtime::fork`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkedDisk {
    /// The image the child starts over: the parent's layers and config.
    pub image: ImageInfo,
    /// Whether the child's disk shares the parent's blocks until either
    /// writes them (a reflink clone), or is a byte copy.
    pub copy_on_write: bool,
}

/// An image to pull from a registry into a runtime's store.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePull {
    /// The name to store it under (what `SandboxSpec::image` will say).
    pub name: String,
    /// The registry reference (`python:3.12-slim`, `host:5000/a/b@sha256:…`).
    pub reference: String,
    /// Credentials for its registry, if it needs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Whose pull this is (an organization): layers another scope stored
    /// are fetched and verified before this one reuses them.
    #[serde(default)]
    pub scope: String,
}

/// Credentials for one registry (a build's `FROM`).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredential {
    /// The registry as references name it (`docker.io`, `host:5000`).
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// An image archive to import into a runtime's store: an OCI image layout
/// or a `docker save` tar, stored first with `put_build_context`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageImport {
    /// The name to store it under.
    pub name: String,
    /// The sha256 (hex) the archive was stored under.
    pub archive: String,
}

/// An image to build from a Dockerfile into a runtime's store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuild {
    /// The name to store it under.
    pub name: String,
    pub dockerfile: String,
    /// `ARG` values.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// When set, `FROM` is this image of the runtime's store (another
    /// snapshot) rather than a registry reference.
    #[serde(default)]
    pub base_image: Option<String>,
    #[serde(default)]
    pub registries: Vec<RegistryCredential>,
    /// Limits of each build sandbox.
    pub limits: Limits,
    pub disk_bytes: u64,
    /// The whole build's time bound.
    pub timeout_secs: u64,
    /// Whose build this is (an organization): cached steps are reused
    /// only within one scope.
    #[serde(default)]
    pub cache_scope: String,
    /// The build context: tars stored with
    /// [`crate::Runtime::put_build_context`], by sha256, in order (a later
    /// one's files win). `COPY`/`ADD` read from their union.
    #[serde(default)]
    pub contexts: Vec<String>,
}

impl std::fmt::Debug for ImagePull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePull")
            .field("name", &self.name)
            .field("reference", &self.reference)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .finish()
    }
}
