//! The boundary between Atoll's control plane and its compute backends,
//! as cloud-hypervisor's `hypervisor::Vm` is between its VMM and KVM/MSHV:
//! the [`Runtime`] trait, whose calls take and return ids, specs and
//! streams (never a host path), the data they carry ([`model`], [`net`])
//! and one typed error ([`RuntimeError`]).
//!
//! Implementations: the runner's `LocalRuntime` (in-process, the embedded
//! runner of `atoll serve`) and the control plane's fake for tests. The
//! control plane depends on this crate only, never on the runner's
//! internals.

pub mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod model;
pub mod net;

pub use error::RuntimeError;
pub use model::{
    Capacity, DiskState, ForkedDisk, ImageBuild, ImageImport, ImageInfo, ImagePull, Limits,
    Observed, RegistryCredential, SandboxSpec, SandboxUsage, VolumeAttachment, VolumeEntry,
    VolumePlacement, VolumeUsage,
};

/// Where a long call (a pull, a commit) reports progress, one line at a time.
pub type LogSink<'a> = &'a (dyn Fn(&str) + Send + Sync);
pub use net::{Cidr, NetworkPolicy, PolicyError};

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to something inside a sandbox (its toolbox daemon, or a
/// port on its loopback), already checked to be that sandbox's.
pub trait SandboxStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> SandboxStream for T {}

/// A boxed [`SandboxStream`].
pub type BoxedStream = Box<dyn SandboxStream>;

/// Bytes read once, front to back (a build context sent to a runtime).
pub type ByteSource = Box<dyn AsyncRead + Send + Unpin>;

/// True for a lowercase hex sha256 (how build contexts are named).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the control plane asks of a compute backend. Every call names a
/// sandbox by its server-generated id; the runtime validates it.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Starts the sandbox: first start, or a restart over the disk it kept.
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError>;
    /// Stops it, keeping its disk.
    async fn stop(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops it and deletes everything it had (its archive too).
    async fn destroy(&self, id: &str) -> Result<(), RuntimeError>;
    /// Freezes every process of a running sandbox, keeping its memory.
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Thaws a paused sandbox (a running one is left as it is).
    async fn resume(&self, id: &str) -> Result<(), RuntimeError>;
    /// Packs a stopped sandbox's disk into the archive store, freeing it.
    async fn archive(&self, id: &str) -> Result<(), RuntimeError>;
    /// Unpacks an archived sandbox's disk so it can start again.
    async fn restore(&self, id: &str) -> Result<(), RuntimeError>;
    /// Drops a sandbox's archive (stale once its disk is back).
    async fn discard_archive(&self, id: &str) -> Result<(), RuntimeError>;
    /// Where a stopped sandbox's disk is.
    async fn disk_state(&self, id: &str) -> Result<DiskState, RuntimeError>;
    /// After a restart of the runtime: re-adopts live sandboxes and cleans
    /// up interrupted starts; what it found.
    async fn recover(&self) -> Result<Vec<Observed>, RuntimeError>;
    /// The state of every sandbox the runtime knows. An `Err` says
    /// nothing about any sandbox (never read it as "all stopped").
    async fn observe(&self) -> Result<Vec<Observed>, RuntimeError>;
    /// The state of one sandbox, looked at now; `None` if the runtime
    /// knows no such sandbox.
    async fn observe_one(&self, id: &str) -> Result<Option<Observed>, RuntimeError>;
    /// What a running (or paused) sandbox uses now; `None` if it is not
    /// running.
    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>, RuntimeError>;
    /// Applies new limits to a running sandbox, live.
    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError>;
    /// Applies a new network policy to a running sandbox, live (a stopped
    /// one gets its policy from its spec at the next start).
    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RuntimeError>;
    /// A new connection to the sandbox's toolbox daemon, checked to reach
    /// that sandbox's own process.
    async fn connect_toolbox(&self, id: &str) -> Result<BoxedStream, RuntimeError>;
    /// A new TCP connection to `127.0.0.1:port` inside the sandbox.
    async fn connect_port(&self, id: &str, port: u16) -> Result<BoxedStream, RuntimeError>;
    /// What the runtime's host offers sandboxes (its health check).
    async fn capacity(&self) -> Result<Capacity, RuntimeError>;
    /// The images this runtime can start sandboxes from.
    async fn images(&self) -> Result<Vec<ImageInfo>, RuntimeError>;
    /// One image by name.
    async fn image(&self, name: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        Ok(self.images().await?.into_iter().find(|i| i.name == name))
    }
    /// Pulls an image from its registry into this runtime's store as
    /// `pull.name` (layers it already has are reused). `ImageNotFound`
    /// when the registry has no such image.
    async fn pull_image(
        &self,
        pull: &ImagePull,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError>;
    /// Builds an image from a Dockerfile (each `RUN` in a build sandbox),
    /// its output line by line to `log`.
    async fn build_image(
        &self,
        build: &ImageBuild,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError>;
    /// Imports an image archive stored with `put_build_context` as
    /// `import.name` (layers it already has are reused), its progress line
    /// by line to `log`.
    async fn import_image(
        &self,
        import: &ImageImport,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError>;
    /// Creates volume `id` (a UUID) with a quota of `size_bytes`; done
    /// already is fine.
    async fn create_volume(
        &self,
        id: &str,
        size_bytes: u64,
    ) -> Result<VolumePlacement, RuntimeError>;
    /// Deletes volume `id` and its files; gone already is fine.
    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError>;
    /// What volume `id` holds.
    async fn volume_usage(&self, id: &str) -> Result<VolumeUsage, RuntimeError>;
    /// The entries of directory `path` of volume `id` (`""` or `/`: its
    /// root). Paths resolve inside the volume, whatever symlinks say.
    async fn volume_list(&self, id: &str, path: &str) -> Result<Vec<VolumeEntry>, RuntimeError>;
    /// The bytes of file `path` of volume `id`, and how many.
    async fn volume_read(&self, id: &str, path: &str) -> Result<(u64, ByteSource), RuntimeError>;
    /// Writes file `path` of volume `id` (replacing it; missing parent
    /// directories made) from `body`; the bytes written.
    async fn volume_write(
        &self,
        id: &str,
        path: &str,
        body: ByteSource,
    ) -> Result<u64, RuntimeError>;
    /// Deletes `path` of volume `id` (a directory only with `recursive`).
    async fn volume_remove(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), RuntimeError>;
    /// Whether the build context `sha256` is stored (ready for a build).
    async fn has_build_context(&self, sha256: &str) -> Result<bool, RuntimeError>;
    /// Stores a build context (a tar, read from `body`) under `sha256`,
    /// which the runtime checks against what it read; a tar with hostile
    /// names is refused as a hostile layer would be.
    async fn put_build_context(&self, sha256: &str, body: ByteSource) -> Result<(), RuntimeError>;
    /// Forgets the image `name`; its layers are collected once no image
    /// or sandbox uses them. True if it was stored.
    async fn remove_image(&self, name: &str) -> Result<bool, RuntimeError>;
    /// Gives a new sandbox `child` a disk that is running sandbox
    /// `parent`'s at this instant (its processes frozen for the copy,
    /// then thawed: it keeps running), and records image `image` (the
    /// parent's layers and config) for it; starting a spec with id
    /// `child` over `image` then boots the copy. Copy-on-write where the
    /// runtime's disks allow (see [`ForkedDisk::copy_on_write`]);
    /// destroying `child` removes the copy.
    async fn fork(
        &self,
        parent: &str,
        child: &str,
        image: &str,
    ) -> Result<ForkedDisk, RuntimeError>;
    /// Captures a running sandbox's filesystem, its processes frozen
    /// meanwhile, as the new image `name`: the sandbox's image layers plus
    /// one layer of what it changed.
    async fn commit(
        &self,
        id: &str,
        name: &str,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError>;
}
