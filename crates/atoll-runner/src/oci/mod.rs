//! Pulling OCI images into the image store: resolve a reference, pick the
//! linux/amd64 manifest from an index, fetch and check the config, then
//! stream each layer the store lacks from the registry straight into the
//! unpacker (download and unpack overlap), verify its blob digest, size
//! and diff id, and store it content-addressed by diff id so images that
//! share a base share its layers on disk.

pub use atoll_types::image_ref as reference;
pub mod import;
pub mod registry;
pub mod unpack;

use crate::image::{Image, ImageConfig, ImageError, ImageStore, LayeredImage};
use reference::Reference;
use registry::{Credentials, RegistryClient, RegistryError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use unpack::{Compression, UnpackError, UnpackLimits};

/// Most layers an image may have (Docker's limit).
pub const MAX_LAYERS: usize = 127;
/// Layers fetched at once (Docker's default too).
const PARALLEL_LAYERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("image {reference}: {reason}")]
    Manifest { reference: String, reason: String },
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error(transparent)]
    Store(#[from] ImageError),
    #[error("image archive: {0}")]
    Archive(String),
}

impl PullError {
    fn manifest(r: &Reference, reason: impl Into<String>) -> PullError {
        PullError::Manifest {
            reference: r.to_string(),
            reason: reason.into(),
        }
    }

    /// The image (or a blob of it) does not exist in the registry.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PullError::Registry(RegistryError::NotFound { .. }))
    }

    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            PullError::Registry(RegistryError::Unauthorized { .. })
        )
    }

    pub fn is_no_space(&self) -> bool {
        match self {
            PullError::Unpack { source, .. } => source.is_no_space(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: i64,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// What a pull reports as it goes, one line at a time.
pub type PullLog<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Pulls `reference` and stores it in `store` as `name`, for `scope` (an
/// organization): a layer stored already is reused without a download
/// only if this scope fetched it before ([`ImageStore::proven`]);
/// otherwise it is fetched and checked once more.
#[allow(clippy::too_many_arguments)]
pub async fn pull(
    store: &std::sync::Arc<ImageStore>,
    client: &RegistryClient,
    reference: &str,
    name: &str,
    creds: Option<&Credentials>,
    scope: &str,
    limits: UnpackLimits,
    log: PullLog<'_>,
) -> Result<Image, PullError> {
    let r = Reference::parse(reference)?;
    log(&format!("Pulling {r}"));
    let mut fetched = client.manifest(&r, r.manifest_ref(), creds).await?;
    let mut manifest = parse_manifest(&r, &fetched.body)?;
    if !manifest.manifests.is_empty() || is_index(&fetched.media_type, &manifest) {
        let pick = manifest
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| PullError::manifest(&r, "has no linux/amd64 image"))?;
        if !is_digest(&pick.digest) {
            return Err(PullError::manifest(&r, "index names a malformed digest"));
        }
        let digest = pick.digest.clone();
        log(&format!("linux/amd64: {digest}"));
        fetched = client.manifest(&r, &digest, creds).await?;
        manifest = parse_manifest(&r, &fetched.body)?;
        if !manifest.manifests.is_empty() {
            return Err(PullError::manifest(&r, "an index inside an index"));
        }
    }
    let config_desc = manifest
        .config
        .as_ref()
        .ok_or_else(|| PullError::manifest(&r, "manifest has no config"))?;
    if !is_digest(&config_desc.digest) || config_desc.size < 0 {
        return Err(PullError::manifest(&r, "config descriptor is malformed"));
    }
    if manifest.layers.is_empty() || manifest.layers.len() > MAX_LAYERS {
        return Err(PullError::manifest(
            &r,
            format!("an image has 1 to {MAX_LAYERS} layers"),
        ));
    }
    let config_bytes = client
        .small_blob(&r, &config_desc.digest, config_desc.size as u64, creds)
        .await?;
    let config: ConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| PullError::manifest(&r, format!("image config: {e}")))?;
    check_config(&config, manifest.layers.len()).map_err(|e| PullError::manifest(&r, e))?;
    // Check every descriptor first; then fetch what the store lacks, a
    // few layers at once (download of one overlaps the unpack of another).
    let total = manifest.layers.len();
    let mut layer_digests = Vec::new();
    let mut size_bytes = 0u64;
    let mut jobs = Vec::new();
    for (i, (desc, diff_id)) in manifest
        .layers
        .iter()
        .zip(config.rootfs.diff_ids.iter())
        .enumerate()
    {
        if !is_digest(&desc.digest) || !is_digest(diff_id) || desc.size < 0 {
            return Err(PullError::manifest(&r, "layer descriptor is malformed"));
        }
        let compression = layer_compression(&desc.media_type).ok_or_else(|| {
            PullError::manifest(
                &r,
                format!("layer media type {:?} is not supported", desc.media_type),
            )
        })?;
        layer_digests.push(diff_id.clone());
        let short = &desc.digest[7..19];
        if let Some(path) = store.layer(diff_id)? {
            if store.proven(scope, diff_id) {
                log(&format!("[{}/{total}] {short}: already present", i + 1));
                size_bytes += crate::image::dir_size(&path);
                continue;
            }
            // Stored for another scope: this one fetches the bytes its
            // config claims, and they must be that layer.
            log(&format!("[{}/{total}] {short}: present, verifying", i + 1));
        }
        if jobs
            .iter()
            .any(|(_, _, d, _): &(usize, Descriptor, String, Compression)| d == diff_id)
        {
            continue; // the same layer twice in one image
        }
        jobs.push((i, desc.clone(), diff_id.clone(), compression));
    }
    use futures_util::{StreamExt, TryStreamExt};
    let fetched_layers: Vec<(crate::image::TmpBuild, String, u64)> =
        futures_util::stream::iter(jobs)
            .map(|(i, desc, diff_id, compression)| {
                let r = &r;
                async move {
                    let short = desc.digest[7..19].to_string();
                    log(&format!(
                        "[{}/{total}] {short}: pulling {}",
                        i + 1,
                        human_bytes(desc.size as u64)
                    ));
                    let started = std::time::Instant::now();
                    let (scratch, written) = fetch_layer(
                        store,
                        client,
                        r,
                        &desc,
                        &diff_id,
                        compression,
                        creds,
                        limits,
                    )
                    .await?;
                    log(&format!(
                        "[{}/{total}] {short}: done ({} in {:.1}s)",
                        i + 1,
                        human_bytes(written),
                        started.elapsed().as_secs_f64()
                    ));
                    Ok::<_, PullError>((scratch, diff_id, written))
                }
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect()
            .await?;
    if !fetched_layers.is_empty() {
        // The first commit's syncfs makes every new layer durable before
        // any is stored (the later ones find little left to write).
        let store2 = store.clone();
        let scope2 = scope.to_string();
        tokio::task::spawn_blocking(move || {
            for (scratch, diff_id, written) in fetched_layers {
                store2.commit_layer(scratch, &diff_id)?;
                store2.prove(&scope2, &diff_id)?;
                size_bytes += written;
            }
            Ok::<_, ImageError>(size_bytes)
        })
        .await
        .map_err(|e| PullError::manifest(&r, format!("store task: {e}")))?
        .map(|total| size_bytes = total)?;
    }
    let run = config.config.unwrap_or_default();
    let layered = LayeredImage {
        name: name.to_string(),
        digest: fetched.digest.clone(),
        layers: layer_digests,
        size_bytes,
        config: image_config(run),
        entrypoint: Vec::new(),
        source: Some(r.to_string()),
    };
    // The ref is written under the store's lock, fsynced: off the runtime.
    let store2 = store.clone();
    let image = tokio::task::spawn_blocking(move || store2.put_layered(layered))
        .await
        .map_err(|e| PullError::manifest(&r, format!("store task: {e}")))??;
    log(&format!("Digest: {}", fetched.digest));
    Ok(image)
}

/// An image config fit to run here: linux/amd64 (or unsaid), one diff id
/// per layer, 1 to [`MAX_LAYERS`] layers.
fn check_config(config: &ConfigFile, layers: usize) -> Result<(), String> {
    if config.os.as_deref().is_some_and(|o| o != "linux")
        || config.architecture.as_deref().is_some_and(|a| a != "amd64")
    {
        return Err(format!(
            "is for {}/{}, not linux/amd64",
            config.os.as_deref().unwrap_or("?"),
            config.architecture.as_deref().unwrap_or("?")
        ));
    }
    if config.rootfs.kind != "layers" || config.rootfs.diff_ids.len() != layers {
        return Err("config's diff_ids do not match the manifest's layers".into());
    }
    if layers == 0 || layers > MAX_LAYERS {
        return Err(format!("an image has 1 to {MAX_LAYERS} layers"));
    }
    Ok(())
}

/// What a sandbox of the image runs with, from its config.
fn image_config(run: RunConfig) -> ImageConfig {
    ImageConfig {
        env: run.env.unwrap_or_default(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        workdir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
    }
}

fn is_index(media_type: &str, m: &Manifest) -> bool {
    let mt = m.media_type.as_deref().unwrap_or(media_type);
    mt == registry::MEDIA_OCI_INDEX || mt == registry::MEDIA_DOCKER_LIST
}

fn parse_manifest(r: &Reference, body: &[u8]) -> Result<Manifest, PullError> {
    let m: Manifest = serde_json::from_slice(body)
        .map_err(|e| PullError::manifest(r, format!("manifest: {e}")))?;
    if m.schema_version != 2 {
        return Err(PullError::manifest(
            r,
            format!(
                "manifest schema version {} is not supported (only 2)",
                m.schema_version
            ),
        ));
    }
    Ok(m)
}

/// Reads chunks the download task sends, for the unpacker's thread.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Streams one layer blob into the unpacker; returns the unpacked layer
/// (to store) once its blob digest, size and diff id check out, and the
/// bytes written.
#[allow(clippy::too_many_arguments)]
async fn fetch_layer(
    store: &std::sync::Arc<ImageStore>,
    client: &RegistryClient,
    r: &Reference,
    desc: &Descriptor,
    diff_id: &str,
    compression: Compression,
    creds: Option<&Credentials>,
    limits: UnpackLimits,
) -> Result<(crate::image::TmpBuild, u64), PullError> {
    let scratch = store.scratch()?;
    let dest = scratch.path.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let unpacker = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        };
        let stats = unpack::unpack_layer(reader, compression, &dest, limits, &mut |_| {});
        (scratch, stats)
    });
    let expected = desc.size as u64;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    let download: Result<(), PullError> = async {
        let mut body = client.blob_stream(r, &desc.digest, creds).await?;
        while let Some(chunk) = body.next_chunk().await? {
            got += chunk.len() as u64;
            if got > expected {
                return Err(PullError::manifest(
                    r,
                    format!(
                        "layer {} is larger than its descriptor's {expected} bytes",
                        desc.digest
                    ),
                ));
            }
            hash.update(&chunk);
            if tx.send(chunk).await.is_err() {
                break; // the unpacker stopped; its error says why
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let (scratch, stats) = unpacker
        .await
        .map_err(|e| PullError::manifest(r, format!("unpack task: {e}")))?;
    download?;
    let stats = stats.map_err(|source| PullError::Unpack {
        digest: desc.digest.clone(),
        source,
    })?;
    if got != expected {
        return Err(PullError::manifest(
            r,
            format!(
                "layer {} has {got} bytes, its descriptor says {expected}",
                desc.digest
            ),
        ));
    }
    let actual = format!("sha256:{}", hex::encode(hash.finalize()));
    if actual != desc.digest {
        return Err(PullError::manifest(
            r,
            format!("layer {} hashes to {actual}", desc.digest),
        ));
    }
    if stats.diff_id != diff_id {
        return Err(PullError::manifest(
            r,
            format!(
                "layer {} unpacks to {}, the config says {diff_id}",
                desc.digest, stats.diff_id
            ),
        ));
    }
    if stats.devices_skipped > 0 || stats.xattrs_skipped > 0 {
        tracing::info!(
            layer = %desc.digest,
            devices = stats.devices_skipped,
            xattrs = stats.xattrs_skipped,
            "dropped device nodes and xattrs a sandbox may not have"
        );
    }
    Ok((scratch, stats.file_bytes))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
