//! Importing an image archive into the image store: the OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`, as `skopeo copy
//! oci-archive:`, buildah and `docker save` since Docker 25 write it) or
//! the older `docker save` format (`manifest.json` naming a config file
//! and one tar per layer).
//!
//! The archive arrives as a build context: the hostile-layer unpacker has
//! already made it a directory tree in the store. Its files are opened
//! by descriptors inside that tree only (symbolic links resolve within
//! it, as the older format's shared layers need), JSON reads are capped,
//! every OCI blob is checked against its digest, and each layer goes
//! through the same unpacker and diff-id check as a pulled one.

use super::unpack::{self, Compression, UnpackLimits};
use super::{image_config, is_digest, layer_compression, ConfigFile, Manifest, PullError, PullLog};
use crate::image::{Image, ImageStore, LayeredImage};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// Largest index, manifest or config read.
const MAX_JSON: u64 = 4 << 20;

fn bad(reason: impl Into<String>) -> PullError {
    PullError::Archive(reason.into())
}

/// Opens the regular file `rel` inside `root`, never leaving it.
fn open_file(root: &OwnedFd, rel: &str) -> Result<std::fs::File, PullError> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = nix::fcntl::openat2(root, rel, how).map_err(|e| bad(format!("{rel}: {e}")))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| bad(format!("{rel}: {e}")))?;
    if !meta.is_file() {
        return Err(bad(format!("{rel} is not a regular file")));
    }
    Ok(file)
}

fn exists(root: &OwnedFd, rel: &str) -> bool {
    open_file(root, rel).is_ok()
}

fn read_json(root: &OwnedFd, rel: &str) -> Result<Vec<u8>, PullError> {
    let mut out = Vec::new();
    open_file(root, rel)?
        .take(MAX_JSON + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("{rel}: {e}")))?;
    if out.len() as u64 > MAX_JSON {
        return Err(bad(format!("{rel} is larger than {MAX_JSON} bytes")));
    }
    Ok(out)
}

fn blob_path(digest: &str) -> Result<String, PullError> {
    if !is_digest(digest) {
        return Err(bad(format!("{digest:?} is not a sha256 digest")));
    }
    Ok(format!("blobs/sha256/{}", &digest[7..]))
}

/// A small OCI blob, checked against its digest.
fn read_blob(root: &OwnedFd, digest: &str) -> Result<Vec<u8>, PullError> {
    let bytes = read_json(root, &blob_path(digest)?)?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if actual != digest {
        return Err(bad(format!("blob {digest} hashes to {actual}")));
    }
    Ok(bytes)
}

/// One layer to unpack: where it is, how it is compressed, the blob
/// digest it must hash to (OCI layouts name one), its diff id.
struct LayerFile {
    path: String,
    compression: Option<Compression>,
    blob_digest: Option<String>,
    diff_id: String,
}

/// What the archive holds: the image's digest, its config, its layers.
struct Parsed {
    digest: String,
    config: ConfigFile,
    layers: Vec<LayerFile>,
    source: String,
}

fn parse_oci(root: &OwnedFd) -> Result<Parsed, PullError> {
    let index: Manifest = serde_json::from_slice(&read_json(root, "index.json")?)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    // index.json → (an index →) a manifest; the linux/amd64 one, or the
    // only one.
    let mut candidates = index.manifests;
    let mut manifest = None;
    for _ in 0..2 {
        let pick = match candidates.iter().find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        }) {
            Some(m) => m.clone(),
            None if candidates.len() == 1 => candidates[0].clone(),
            None if candidates.is_empty() => return Err(bad("index.json names no image")),
            None => return Err(bad("the archive has no linux/amd64 image")),
        };
        let body = read_blob(root, &pick.digest)?;
        let m: Manifest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("manifest {}: {e}", pick.digest)))?;
        if m.manifests.is_empty() {
            manifest = Some((pick.digest.clone(), m));
            break;
        }
        candidates = m.manifests;
    }
    let (digest, manifest) = manifest.ok_or_else(|| bad("indexes nested too deep"))?;
    if manifest.schema_version != 2 {
        return Err(bad("only schema version 2 manifests are supported"));
    }
    let config_desc = manifest
        .config
        .ok_or_else(|| bad("the manifest has no config"))?;
    let config: ConfigFile = serde_json::from_slice(&read_blob(root, &config_desc.digest)?)
        .map_err(|e| bad(format!("image config: {e}")))?;
    let mut layers = Vec::new();
    for (desc, diff_id) in manifest.layers.iter().zip(config.rootfs.diff_ids.iter()) {
        let compression = layer_compression(&desc.media_type).ok_or_else(|| {
            bad(format!(
                "layer media type {:?} is not supported",
                desc.media_type
            ))
        })?;
        layers.push(LayerFile {
            path: blob_path(&desc.digest)?,
            compression: Some(compression),
            blob_digest: Some(desc.digest.clone()),
            diff_id: diff_id.clone(),
        });
    }
    if layers.len() != manifest.layers.len() {
        return Err(bad(
            "the config's diff_ids do not match the manifest's layers",
        ));
    }
    Ok(Parsed {
        digest,
        config,
        layers,
        source: "archive (OCI layout)".into(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn parse_docker_save(root: &OwnedFd) -> Result<Parsed, PullError> {
    let saved: Vec<SavedImage> = serde_json::from_slice(&read_json(root, "manifest.json")?)
        .map_err(|e| bad(format!("manifest.json: {e}")))?;
    let [image] = <[SavedImage; 1]>::try_from(saved)
        .map_err(|s| bad(format!("manifest.json lists {} images; save one", s.len())))?;
    let config_bytes = read_json(root, &image.config)?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
    let config: ConfigFile =
        serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("image config: {e}")))?;
    if image.layers.len() != config.rootfs.diff_ids.len() {
        return Err(bad("the config's diff_ids do not match the saved layers"));
    }
    let layers = image
        .layers
        .iter()
        .zip(config.rootfs.diff_ids.iter())
        .map(|(path, diff_id)| LayerFile {
            path: path.clone(),
            compression: None,
            blob_digest: None,
            diff_id: diff_id.clone(),
        })
        .collect();
    let source = image
        .repo_tags
        .and_then(|t| t.into_iter().next())
        .map(|t| format!("archive ({t})"))
        .unwrap_or_else(|| "archive (docker save)".into());
    Ok(Parsed {
        digest,
        config,
        layers,
        source,
    })
}

/// How a layer file of the older format is compressed, from its first
/// bytes.
fn sniff(file: &mut std::fs::File) -> Result<Compression, PullError> {
    use std::io::{Seek, SeekFrom};
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(|e| bad(e.to_string()))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| bad(e.to_string()))?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

/// Hashes what the unpacker reads.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads the archive's file of `layer` through the hostile-layer
/// unpacker, into `dest` (`None`: decoded and hashed, nothing written),
/// and checks it has its blob digest (when the archive names one) and
/// decodes to its diff id; the bytes of files written.
fn read_layer(
    root: &OwnedFd,
    layer: &LayerFile,
    limits: UnpackLimits,
    dest: Option<&Path>,
) -> Result<u64, PullError> {
    let mut file = open_file(root, &layer.path)?;
    let compression = match layer.compression {
        Some(c) => c,
        None => sniff(&mut file)?,
    };
    let mut reader = Hashing {
        inner: file,
        hash: Sha256::new(),
    };
    let unpack_error = |source| PullError::Unpack {
        digest: layer.diff_id.clone(),
        source,
    };
    let (diff_id, written) = match dest {
        Some(dest) => {
            let stats = unpack::unpack_layer(&mut reader, compression, dest, limits, &mut |_| {})
                .map_err(unpack_error)?;
            (stats.diff_id, stats.file_bytes)
        }
        None => (
            unpack::diff_id_of(&mut reader, compression, limits).map_err(unpack_error)?,
            0,
        ),
    };
    // Whatever follows the tar's end still counts in the blob.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| bad(e.to_string()))?;
    if let Some(want) = &layer.blob_digest {
        let got = format!("sha256:{}", hex::encode(reader.hash.finalize()));
        if &got != want {
            return Err(bad(format!("layer blob {want} hashes to {got}")));
        }
    }
    if diff_id != layer.diff_id {
        return Err(bad(format!(
            "layer {} decodes to {diff_id}, the config says {}",
            layer.path, layer.diff_id
        )));
    }
    Ok(written)
}

/// Imports the archive unpacked at `archive` as the image `name`.
pub async fn import(
    store: &Arc<ImageStore>,
    archive: &Path,
    name: &str,
    limits: UnpackLimits,
    log: PullLog<'_>,
) -> Result<Image, PullError> {
    let root = crate::safe_fs::open_dir(archive).map_err(|e| bad(e.to_string()))?;
    let parsed = if exists(&root, "index.json") {
        parse_oci(&root)?
    } else if exists(&root, "manifest.json") {
        parse_docker_save(&root)?
    } else {
        return Err(bad(
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ));
    };
    super::check_config(&parsed.config, parsed.layers.len()).map_err(bad)?;
    log(&format!("Importing {} ({})", name, parsed.source));
    let total = parsed.layers.len();
    let root = Arc::new(root);
    let mut diff_ids = Vec::new();
    let mut size_bytes = 0u64;
    for (i, layer) in parsed.layers.into_iter().enumerate() {
        if !is_digest(&layer.diff_id) {
            return Err(bad(format!("diff id {:?} is malformed", layer.diff_id)));
        }
        diff_ids.push(layer.diff_id.clone());
        let short = layer.diff_id[7..19].to_string();
        if let Some(path) = store.layer(&layer.diff_id)? {
            // Stored already (by any organization): reused only once the
            // archive's own bytes prove they are that layer, so claiming
            // a diff id is never a way to another's layer.
            let root2 = root.clone();
            tokio::task::spawn_blocking(move || read_layer(&root2, &layer, limits, None))
                .await
                .map_err(|e| bad(format!("import task: {e}")))??;
            log(&format!("[{}/{total}] {short}: already present", i + 1));
            size_bytes += crate::image::dir_size(&path);
            continue;
        }
        let (store2, root2) = (store.clone(), root.clone());
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || -> Result<u64, PullError> {
            let scratch = store2.scratch()?;
            let written = read_layer(&root2, &layer, limits, Some(&scratch.path))?;
            store2.commit_layer(scratch, &layer.diff_id)?;
            Ok(written)
        })
        .await
        .map_err(|e| bad(format!("import task: {e}")))??;
        size_bytes += written;
        log(&format!(
            "[{}/{total}] {short}: imported ({} in {:.1}s)",
            i + 1,
            super::human_bytes(written),
            started.elapsed().as_secs_f64()
        ));
    }
    let layered = LayeredImage {
        name: name.to_string(),
        digest: parsed.digest.clone(),
        layers: diff_ids,
        size_bytes,
        config: image_config(parsed.config.config.unwrap_or_default()),
        entrypoint: Vec::new(),
        source: Some(parsed.source),
    };
    let store2 = store.clone();
    let image = tokio::task::spawn_blocking(move || store2.put_layered(layered))
        .await
        .map_err(|e| bad(format!("store task: {e}")))??;
    log(&format!("Digest: {}", parsed.digest));
    Ok(image)
}
