//! `LocalRuntime`: the embedded runner, behind the control plane's
//! [`atoll_runtime_api::Runtime`] boundary. It resolves a spec's image in
//! this host's image store, runs the [`NamespaceRuntime`]'s blocking calls
//! on blocking threads, connects to a sandbox's toolbox socket (checking
//! the peer is that sandbox's own process) and to ports on its loopback
//! (a socket made in its network namespace), and turns its errors into the
//! boundary's kinds with host paths scrubbed from every message. Nothing
//! that crosses this boundary names a host path or a namespace.

use crate::image::{Image, ImageConfig, ImageStore, LayeredImage};
use crate::oci::registry::{Credentials, RegistryClient, RegistryConfig};
use crate::oci::unpack::{Compression, UnpackLimits};
use crate::runtime::{NamespaceRuntime, RuntimeError as HostError};
use atoll_runtime_api::{
    BoxedStream, Capacity, DiskState, ForkedDisk, ImageInfo, ImagePull, Limits, LogSink,
    NetworkPolicy, Observed, Runtime, RuntimeError, SandboxSpec, SandboxUsage,
};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The in-process runtime of `atoll serve`.
pub struct LocalRuntime {
    sandboxes: Arc<NamespaceRuntime>,
    volumes: Arc<crate::volumes::Volumes>,
    images: Arc<ImageStore>,
    registry: Arc<RegistryClient>,
    limits: UnpackLimits,
}

impl LocalRuntime {
    pub fn new(
        sandboxes: Arc<NamespaceRuntime>,
        images: Arc<ImageStore>,
        registry: RegistryConfig,
        volumes: crate::volumes::Backend,
    ) -> Result<LocalRuntime, RuntimeError> {
        let volumes = Arc::new(crate::volumes::Volumes::open(
            &sandboxes.volumes_dir(),
            volumes,
        )?);
        Ok(LocalRuntime {
            sandboxes,
            volumes,
            images,
            registry: Arc::new(RegistryClient::new(registry)),
            limits: UnpackLimits::default(),
        })
    }

    /// Sets the bounds every pulled layer must stay within.
    pub fn with_layer_limits(mut self, limits: UnpackLimits) -> LocalRuntime {
        self.limits = limits;
        self
    }

    /// Runs `f` on the namespace runtime, on a blocking thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce(&NamespaceRuntime) -> Result<T, HostError> + Send + 'static,
    {
        let rt = self.sandboxes.clone();
        tokio::task::spawn_blocking(move || f(&rt))
            .await
            .map_err(|e| RuntimeError::Failed(format!("runtime task: {e}")))?
            .map_err(to_boundary)
    }

    fn image_of(&self, name: &str) -> Result<Image, RuntimeError> {
        self.images
            .get(name)
            .map_err(|e| {
                RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&format!(
                    "image store: {e}"
                )))
            })?
            .ok_or_else(|| RuntimeError::ImageNotFound(name.to_string()))
    }
}

/// The boundary's kind of a runtime error; messages scrubbed of host paths
/// (the full error is logged here, where the paths mean something).
pub fn to_boundary(e: HostError) -> RuntimeError {
    match e {
        HostError::InvalidId(id) => RuntimeError::InvalidId(id),
        HostError::NotRunning { id } => RuntimeError::NotRunning { id },
        HostError::Unsupported(what) => RuntimeError::Unsupported(what),
        e if e.is_network_full() => RuntimeError::NetworkFull(e.public_message()),
        e if e.is_no_space() => {
            tracing::warn!(error = %e, "runtime: out of disk space");
            RuntimeError::NoSpace(e.public_message())
        }
        e => {
            tracing::debug!(error = %e, "runtime error");
            RuntimeError::Failed(e.public_message())
        }
    }
}

fn image_info(i: Image) -> ImageInfo {
    ImageInfo {
        name: i.name,
        digest: i.digest,
        size_bytes: i.size_bytes,
        created_at_ms: i.created_at_ms,
        entrypoint: i.entrypoint,
        source: i.source,
        layers: i.layers.len() as u32,
    }
}

/// A pull's error as the boundary's kind, host paths scrubbed.
fn pull_error(reference: &str, e: crate::oci::PullError) -> RuntimeError {
    if e.is_not_found() {
        return RuntimeError::ImageNotFound(reference.to_string());
    }
    let message = crate::safe_fs::scrub_host_paths(&e.to_string());
    if e.is_no_space() {
        tracing::warn!(error = %e, "image pull: out of disk space");
        return RuntimeError::NoSpace(message);
    }
    tracing::info!(error = %e, "image pull failed");
    RuntimeError::Failed(message)
}

fn store_error(e: crate::image::ImageError) -> RuntimeError {
    RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&format!(
        "image store: {e}"
    )))
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let image = self.image_of(&spec.image)?;
        // The image's ENV under the sandbox's own.
        let mut env: std::collections::BTreeMap<String, String> = image
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(spec.env.clone());
        let mut volumes = Vec::new();
        for v in &spec.volumes {
            atoll_runtime_api::model::check_mount_path(&v.mount_path)
                .map_err(RuntimeError::Failed)?;
            if let Some(s) = &v.subpath {
                atoll_runtime_api::model::check_subpath(s).map_err(RuntimeError::Failed)?;
            }
            let vols = self.volumes.clone();
            let id = v.volume_id.clone();
            let source = tokio::task::spawn_blocking(move || vols.mount(&id))
                .await
                .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))??;
            volumes.push(crate::spec::VolumeBind {
                idmap: self.volumes.idmap(),
                source,
                subpath: v.subpath.clone(),
                mount_path: v.mount_path.clone(),
                read_only: v.read_only,
            });
        }
        let host_spec = crate::spec::SandboxSpec {
            volumes,
            id: spec.id.clone(),
            hostname: spec.hostname.clone(),
            image_layers: image.layers,
            image: spec.image.clone(),
            work_dir: image
                .workdir
                .filter(|w| w.starts_with('/'))
                .map(std::path::PathBuf::from),
            user: spec.user.clone(),
            env,
            limits: spec.limits.clone(),
            disk_bytes: spec.disk_bytes,
            network: spec.network.clone(),
            entrypoint: image.entrypoint,
        };
        self.blocking(move |rt| rt.start(&host_spec).map(|_| ()))
            .await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.stop(&id)).await
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.destroy(&id)).await
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.pause(&id)).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.resume(&id)).await
    }

    async fn archive(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.archive(&id)).await
    }

    async fn restore(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.restore(&id)).await
    }

    async fn discard_archive(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.discard_archive(&id)).await
    }

    async fn disk_state(&self, id: &str) -> Result<DiskState, RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| {
            Ok(DiskState {
                present: rt.has_disk(&id),
                archived: rt.is_archived(&id),
            })
        })
        .await
    }

    /// Build sandboxes are the builder's own: a crash's leftovers are
    /// destroyed here, and no observer ever sees one.
    async fn recover(&self) -> Result<Vec<Observed>, RuntimeError> {
        self.blocking(|rt| {
            let all = rt.recover()?;
            let mut out = Vec::new();
            for o in all {
                if crate::build::is_build_id(o.id()) {
                    if let Err(e) = rt.destroy(o.id()) {
                        tracing::warn!(sandbox = %o.id(), error = %e, "could not destroy a leftover build sandbox");
                    }
                } else {
                    out.push(o);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn observe(&self) -> Result<Vec<Observed>, RuntimeError> {
        self.blocking(|rt| {
            Ok(rt
                .observe()
                .into_iter()
                .filter(|o| !crate::build::is_build_id(o.id()))
                .collect())
        })
        .await
    }

    async fn observe_one(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        if crate::build::is_build_id(id) {
            return Ok(None);
        }
        let id = id.to_string();
        self.blocking(move |rt| Ok(rt.observe_one(&id))).await
    }

    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>, RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| Ok(rt.usage(&id))).await
    }

    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        let (id, limits) = (id.to_string(), limits.clone());
        self.blocking(move |rt| rt.update_limits(&id, &limits))
            .await
    }

    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RuntimeError> {
        let (id, policy) = (id.to_string(), policy.clone());
        self.blocking(move |rt| rt.update_network(&id, &policy))
            .await
    }

    async fn connect_toolbox(&self, id: &str) -> Result<BoxedStream, RuntimeError> {
        if !crate::spec::is_safe_id(id) {
            return Err(RuntimeError::InvalidId(id.into()));
        }
        // A small cached lookup (the journal only after a restart): cheaper
        // inline than a blocking-pool handoff on every new connection.
        let peer = self
            .sandboxes
            .toolbox_peer(id)
            .ok_or_else(|| RuntimeError::NotRunning { id: id.into() })?;
        let socket = self.sandboxes.socket(id);
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|e| RuntimeError::Connect(scrubbed(e)))?;
        // SECURITY.md item 24: the peer must be this sandbox's own process,
        // even if the socket was swapped behind the runner's back.
        peer.verify(&stream).map_err(RuntimeError::Connect)?;
        Ok(Box::new(stream))
    }

    async fn connect_port(&self, id: &str, port: u16) -> Result<BoxedStream, RuntimeError> {
        if !crate::spec::is_safe_id(id) {
            return Err(RuntimeError::InvalidId(id.into()));
        }
        // A small file read and a /proc lookup: cheaper inline too.
        let ns = self
            .sandboxes
            .open_netns(id)
            .ok_or_else(|| RuntimeError::NotRunning { id: id.into() })?;
        let stream = connect_in_netns(ns.into(), port)
            .await
            .map_err(RuntimeError::Connect)?;
        Ok(Box::new(atoll_proxy::app::QuickAck::new(stream)))
    }

    async fn capacity(&self) -> Result<Capacity, RuntimeError> {
        let images = self.images.clone();
        self.blocking(move |rt| {
            Ok(atoll_runtime_api::Capacity {
                images_bytes: images.disk_bytes(),
                ..rt.capacity()
            })
        })
        .await
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.list())
            .await
            .map_err(|e| RuntimeError::Failed(format!("image task: {e}")))?
            .map(|v| v.into_iter().map(image_info).collect())
            .map_err(|e| {
                RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&format!(
                    "image store: {e}"
                )))
            })
    }

    async fn image(&self, name: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        match self.image_of(name) {
            Ok(i) => Ok(Some(image_info(i))),
            Err(RuntimeError::ImageNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn pull_image(
        &self,
        pull: &ImagePull,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let creds = match (&pull.username, &pull.password) {
            (Some(u), Some(p)) => Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        };
        crate::oci::pull(
            &self.images,
            &self.registry,
            &pull.reference,
            &pull.name,
            creds.as_ref(),
            &pull.scope,
            self.limits,
            log,
        )
        .await
        .map(image_info)
        .map_err(|e| pull_error(&pull.reference, e))
    }

    async fn build_image(
        &self,
        build: &atoll_runtime_api::ImageBuild,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let builder = crate::build::Builder {
            sandboxes: self.sandboxes.clone(),
            images: self.images.clone(),
            registry: self.registry.clone(),
            limits: self.limits,
        };
        builder.build(build, log).await.map(image_info)
    }

    async fn import_image(
        &self,
        import: &atoll_runtime_api::ImageImport,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        if !atoll_runtime_api::is_sha256_hex(&import.archive) {
            return Err(RuntimeError::InvalidId(import.archive.clone()));
        }
        let root = self
            .images
            .layer(&format!("sha256:{}", import.archive))
            .map_err(store_error)?
            .ok_or_else(|| {
                RuntimeError::Failed(format!(
                    "image archive {} is not stored here",
                    import.archive
                ))
            })?;
        crate::oci::import::import(&self.images, &root, &import.name, self.limits, log)
            .await
            .map(image_info)
            .map_err(|e| pull_error(&import.name, e))
    }

    async fn create_volume(
        &self,
        id: &str,
        size_bytes: u64,
    ) -> Result<atoll_runtime_api::VolumePlacement, RuntimeError> {
        let (rt, vols, id) = (self.sandboxes.clone(), self.volumes.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            vols.create(rt.disk_templates(), &id, size_bytes)?;
            Ok(atoll_runtime_api::VolumePlacement {
                shared: vols.shared(),
            })
        })
        .await
        .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))?
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let (vols, id) = (self.volumes.clone(), id.to_string());
        tokio::task::spawn_blocking(move || vols.delete(&id))
            .await
            .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))?
    }

    async fn volume_usage(&self, id: &str) -> Result<atoll_runtime_api::VolumeUsage, RuntimeError> {
        let (vols, id) = (self.volumes.clone(), id.to_string());
        tokio::task::spawn_blocking(move || vols.usage(&id))
            .await
            .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))?
    }

    async fn volume_list(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Vec<atoll_runtime_api::VolumeEntry>, RuntimeError> {
        let (vols, id, path) = (self.volumes.clone(), id.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || vols.list(&id, &path))
            .await
            .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))?
    }

    async fn volume_read(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(u64, atoll_runtime_api::ByteSource), RuntimeError> {
        let (vols, id, path) = (self.volumes.clone(), id.to_string(), path.to_string());
        let (size, file) = tokio::task::spawn_blocking(move || vols.open_file(&id, &path))
            .await
            .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))??;
        // Exactly the size announced, even if a sandbox changes the file
        // meanwhile.
        let file = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), size);
        Ok((size, Box::new(file)))
    }

    async fn volume_write(
        &self,
        id: &str,
        path: &str,
        body: atoll_runtime_api::ByteSource,
    ) -> Result<u64, RuntimeError> {
        let (vols, id, path) = (self.volumes.clone(), id.to_string(), path.to_string());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut reader = tokio_util::io::SyncIoBridge::new_with_handle(body, handle);
            vols.write(&id, &path, &mut reader)
        })
        .await
        .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))?
    }

    async fn volume_remove(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), RuntimeError> {
        let (vols, id, path) = (self.volumes.clone(), id.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || vols.remove(&id, &path, recursive))
            .await
            .map_err(|e| RuntimeError::Failed(format!("volume task: {e}")))?
    }

    async fn has_build_context(&self, sha256: &str) -> Result<bool, RuntimeError> {
        if !atoll_runtime_api::is_sha256_hex(sha256) {
            return Err(RuntimeError::InvalidId(sha256.into()));
        }
        Ok(self
            .images
            .layer(&format!("sha256:{sha256}"))
            .map_err(store_error)?
            .is_some())
    }

    /// A build context is stored as a layer (its tar unpacked by the
    /// hostile-layer unpacker, its diff id the tar's sha256): `COPY` reads
    /// it by descriptors, and the collector removes it once unused.
    async fn put_build_context(
        &self,
        sha256: &str,
        body: atoll_runtime_api::ByteSource,
    ) -> Result<(), RuntimeError> {
        if self.has_build_context(sha256).await? {
            return Ok(());
        }
        let images = self.images.clone();
        let limits = self.limits;
        let expected = format!("sha256:{sha256}");
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let reader = tokio_util::io::SyncIoBridge::new_with_handle(body, handle);
            let scratch = images.scratch().map_err(store_error)?;
            let stats = crate::oci::unpack::unpack_layer(
                reader,
                Compression::None,
                &scratch.path,
                limits,
                &mut |_| {},
            )
            .map_err(|e| {
                let message = crate::safe_fs::scrub_host_paths(&format!("build context: {e}"));
                if e.is_no_space() {
                    RuntimeError::NoSpace(message)
                } else {
                    RuntimeError::Failed(message)
                }
            })?;
            if stats.diff_id != expected {
                return Err(RuntimeError::Failed(format!(
                    "the build context read has {}, not {expected}",
                    stats.diff_id
                )));
            }
            images
                .commit_layer(scratch, &stats.diff_id)
                .map(|_| ())
                .map_err(store_error)
        })
        .await
        .map_err(|e| RuntimeError::Failed(format!("context task: {e}")))?
    }

    async fn remove_image(&self, name: &str) -> Result<bool, RuntimeError> {
        let images = self.images.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || images.remove(&name))
            .await
            .map_err(|e| RuntimeError::Failed(format!("image task: {e}")))?
            .map_err(store_error)
    }

    async fn fork(
        &self,
        parent: &str,
        child: &str,
        image: &str,
    ) -> Result<ForkedDisk, RuntimeError> {
        for id in [parent, child] {
            if !crate::spec::is_safe_id(id) {
                return Err(RuntimeError::InvalidId(id.into()));
            }
        }
        let rt = self.sandboxes.clone();
        let images = self.images.clone();
        let (parent, child, image) = (parent.to_string(), child.to_string(), image.to_string());
        tokio::task::spawn_blocking(move || fork_blocking(&rt, &images, &parent, &child, &image))
            .await
            .map_err(|e| RuntimeError::Failed(format!("fork task: {e}")))?
    }

    async fn commit(
        &self,
        id: &str,
        name: &str,
        log: LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        if !crate::spec::is_safe_id(id) {
            return Err(RuntimeError::InvalidId(id.into()));
        }
        log(&format!(
            "Capturing sandbox {id} (its processes frozen meanwhile)"
        ));
        let rt = self.sandboxes.clone();
        let images = self.images.clone();
        let limits = self.limits;
        let (id, name) = (id.to_string(), name.to_string());
        let started = std::time::Instant::now();
        let image =
            tokio::task::spawn_blocking(move || commit_blocking(&rt, &images, limits, &id, &name))
                .await
                .map_err(|e| RuntimeError::Failed(format!("commit task: {e}")))??;
        log(&format!(
            "Captured {} in {:.1}s",
            crate::oci::human_bytes(image.size_bytes),
            started.elapsed().as_secs_f64()
        ));
        Ok(image)
    }
}

/// What a running sandbox changed, as a stored layer: its upper dir packed
/// (processes frozen) through a pipe into the unpacker, then stored by
/// diff id. Captures and the builder's `RUN` steps both use it.
pub(crate) fn capture_layer(
    rt: &NamespaceRuntime,
    images: &ImageStore,
    limits: UnpackLimits,
    id: &str,
) -> Result<crate::oci::unpack::UnpackStats, RuntimeError> {
    let mount_dir = images.scratch().map_err(store_error)?;
    layer_from_tar(images, limits, |writer| {
        rt.commit_tar(id, &mount_dir.path, writer)
            .map(|_| ())
            .map_err(to_boundary)
    })
}

/// A layer made of the tar `write` writes (on this thread) while the
/// unpacker reads it (on another), stored by its diff id.
pub(crate) fn layer_from_tar(
    images: &ImageStore,
    limits: UnpackLimits,
    write: impl FnOnce(std::io::PipeWriter) -> Result<(), RuntimeError>,
) -> Result<crate::oci::unpack::UnpackStats, RuntimeError> {
    let layer_dir = images.scratch().map_err(store_error)?;
    let (reader, writer) =
        std::io::pipe().map_err(|e| RuntimeError::Failed(format!("pipe: {e}")))?;
    let dest = layer_dir.path.clone();
    let unpacker = std::thread::spawn(move || {
        crate::oci::unpack::unpack_layer(reader, Compression::None, &dest, limits, &mut |_| {})
    });
    let written = write(writer);
    let unpacked = unpacker
        .join()
        .map_err(|_| RuntimeError::Failed("the unpacker panicked".into()))?;
    let stats = match (written, unpacked) {
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => {
            let message = crate::safe_fs::scrub_host_paths(&e.to_string());
            return Err(if e.is_no_space() {
                RuntimeError::NoSpace(message)
            } else {
                RuntimeError::Failed(message)
            });
        }
        (Ok(_), Ok(stats)) => stats,
    };
    images
        .commit_layer(layer_dir, &stats.diff_id)
        .map_err(store_error)?;
    Ok(stats)
}

/// See [`Runtime::commit`]: the sandbox's changes as a layer over the
/// sandbox's own layers.
fn commit_blocking(
    rt: &NamespaceRuntime,
    images: &ImageStore,
    limits: UnpackLimits,
    id: &str,
    name: &str,
) -> Result<ImageInfo, RuntimeError> {
    let pinned = rt.sandbox_image(id).map_err(to_boundary)?;
    let stats = capture_layer(rt, images, limits, id)?;
    image_over(
        images,
        &pinned,
        Some((stats.diff_id, stats.file_bytes)),
        name,
        format!("sandbox {id}"),
    )
}

/// Records image `name`: the layers a sandbox runs over (`pinned`), plus
/// `extra` (a layer's diff id and size) if given, with the config of the
/// image the sandbox was made from.
fn image_over(
    images: &ImageStore,
    pinned: &crate::runtime::PinnedImage,
    extra: Option<(String, u64)>,
    name: &str,
    source: String,
) -> Result<ImageInfo, RuntimeError> {
    let mut layers = Vec::new();
    for l in &pinned.layers {
        layers.push(crate::image::layer_digest_of(l).ok_or_else(|| {
            RuntimeError::Failed("the sandbox's image layers are not in the image store".into())
        })?);
    }
    let base = images.get(&pinned.image).ok().flatten();
    let mut extra_bytes = 0;
    if let Some((diff_id, bytes)) = extra {
        layers.push(diff_id);
        extra_bytes = bytes;
    }
    let digest = {
        use sha2::Digest as _;
        let joined = layers.join("\n");
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(joined.as_bytes()))
        )
    };
    let (config, entrypoint, base_size) = match base {
        Some(b) => (
            ImageConfig {
                env: b.env,
                entrypoint: Vec::new(),
                cmd: Vec::new(),
                workdir: b.workdir,
                user: b.user,
            },
            b.entrypoint,
            b.size_bytes,
        ),
        None => (ImageConfig::default(), Vec::new(), 0),
    };
    images
        .put_layered(LayeredImage {
            name: name.to_string(),
            digest,
            layers,
            size_bytes: base_size + extra_bytes,
            config,
            entrypoint,
            source: Some(source),
        })
        .map(image_info)
        .map_err(store_error)
}

/// See [`Runtime::fork`]: the parent's disk cloned for the child, and the
/// child's image (the parent's layers and config).
fn fork_blocking(
    rt: &NamespaceRuntime,
    images: &ImageStore,
    parent: &str,
    child: &str,
    name: &str,
) -> Result<ForkedDisk, RuntimeError> {
    let pinned = rt.sandbox_image(parent).map_err(to_boundary)?;
    let copy_on_write = rt.fork_disk(parent, child).map_err(to_boundary)?;
    match image_over(
        images,
        &pinned,
        None,
        name,
        format!("fork of sandbox {parent}"),
    ) {
        Ok(image) => Ok(ForkedDisk {
            image,
            copy_on_write,
        }),
        Err(e) => {
            let _ = rt.destroy(child);
            Err(e)
        }
    }
}

/// An I/O error with host paths scrubbed from its text.
fn scrubbed(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), crate::safe_fs::scrub_host_paths(&e.to_string()))
}

/// Connects to `127.0.0.1:{port}` in the network namespace `ns` (an open
/// `/proc/<pid>/ns/net`). Only the socket is made there: this thread joins
/// the namespace for the one `socket(2)` call and returns at once (a socket
/// keeps the namespace it was made in); the connect is tokio's usual
/// non-blocking one, in this process's namespace's event loop.
pub async fn connect_in_netns(ns: OwnedFd, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let fd = socket_in(&ns)?;
    drop(ns);
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let stream = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// This process's own network namespace, opened on first use (by a thread
/// that is in it: every thread is, outside `socket_in`).
fn host_netns() -> std::io::Result<&'static std::fs::File> {
    static HOST: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = HOST.get() {
        return Ok(f);
    }
    let f = std::fs::File::open("/proc/thread-self/ns/net")?;
    Ok(HOST.get_or_init(|| f))
}

/// A non-blocking TCP socket made inside `ns`.
fn socket_in(ns: &OwnedFd) -> std::io::Result<OwnedFd> {
    use nix::sched::{setns, CloneFlags};
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let host = host_netns()?;
    // Moves only this thread; it is moved back below before anything else
    // runs on it.
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    let made = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    );
    if let Err(e) = setns(host, CloneFlags::CLONE_NEWNET) {
        // A worker thread left in a sandbox's namespace would make the
        // control plane's own sockets there: never carry on.
        eprintln!("atoll: cannot return to the host network namespace: {e}");
        std::process::abort();
    }
    Ok(made?)
}
