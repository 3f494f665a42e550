//! Archive store: a stopped sandbox's whole writable state (its disk
//! image) packed as sparse tar + zstd, so archive frees the runner's disk
//! and restore gives back the same filesystem byte for byte (content,
//! permissions, ownership, links, xattrs: it is the same ext4 image).
//!
//! Writes go to a temp name, are fsynced, then renamed; the disk image is
//! removed only after the archive is durable, and the archive only after a
//! restored image is. An interrupted archive or restore therefore leaves
//! the sandbox's data intact on one side or the other. `tar` and `zstd` do
//! the packing (GNU tar reads only the image's data extents, `--sparse`,
//! and recreates the holes).
//!
//! Where archives live is an `object_store`: by default the local
//! `<data>/archives` directory (the archive is renamed into place), or an
//! S3-compatible bucket (`s3://bucket/prefix`, credentials and endpoint from
//! the usual `AWS_*` environment), where the packed file is uploaded in
//! parts and removed locally once the upload completed.

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{step} failed for sandbox {id}: {detail}")]
    Tool {
        step: &'static str,
        id: String,
        detail: String,
    },
    #[error("sandbox {0} has no archive")]
    Missing(String),
    #[error("sandbox {0} has no disk to archive")]
    NoDisk(String),
    #[error("archive store: {0}")]
    Remote(#[from] object_store::Error),
    #[error("archive store url {url:?}: {reason}")]
    Config { url: String, reason: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// Where archives are kept.
#[derive(Clone)]
enum Backend {
    /// Files in the store's directory.
    Local,
    /// An object store (S3-compatible); the directory only stages files.
    Remote {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

#[derive(Clone)]
pub struct ArchiveStore {
    dir: PathBuf,
    backend: Backend,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.backend {
            Backend::Local => "local".to_string(),
            Backend::Remote { prefix, .. } => format!("remote:{prefix}"),
        };
        f.debug_struct("ArchiveStore")
            .field("dir", &self.dir)
            .field("backend", &kind)
            .finish()
    }
}

/// Runs an object-store future from the runner's blocking code: on the
/// caller's tokio runtime when there is one, else on a small private one.
fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, ArchiveError> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => Ok(h.block_on(fut)),
        Err(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ArchiveError::Io {
                    what: "starting a runtime for",
                    path: "archive store".into(),
                    source: e,
                })?;
            Ok(rt.block_on(fut))
        }
    }
}

/// What an archive took.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveInfo {
    /// Bytes of the archive file.
    pub archived_bytes: u64,
}

fn fsync_path(path: &Path) -> Result<(), ArchiveError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", path))
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl ArchiveStore {
    /// An archive store kept in `dir`, or in the object store at `url`
    /// (`s3://bucket[/prefix]`) with `dir` for staging.
    pub fn open_with(dir: &Path, url: Option<&str>) -> Result<ArchiveStore, ArchiveError> {
        let mut store = ArchiveStore::open(dir)?;
        if let Some(url) = url {
            let cfg = |reason: String| ArchiveError::Config {
                url: url.to_string(),
                reason,
            };
            let rest = url
                .strip_prefix("s3://")
                .ok_or_else(|| cfg("only s3:// urls are supported".into()))?;
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(cfg("no bucket".into()));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| cfg(e.to_string()))?;
            store.backend = Backend::Remote {
                store: Arc::new(s3),
                prefix: prefix.trim_matches('/').to_string(),
            };
        }
        Ok(store)
    }

    fn object(&self, prefix: &str, id: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(format!("{id}.tar.zst"))
        } else {
            ObjectPath::from(format!("{prefix}/{id}.tar.zst"))
        }
    }

    pub fn open(dir: &Path) -> Result<ArchiveStore, ArchiveError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        // Temp files of an interrupted archive are garbage: the disk image
        // they were made from is still in place.
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(ArchiveStore {
            dir: dir.into(),
            backend: Backend::Local,
        })
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tar.zst"))
    }

    pub fn exists(&self, id: &str) -> bool {
        match &self.backend {
            Backend::Local => self.path(id).exists(),
            Backend::Remote { store, prefix } => {
                let loc = self.object(prefix, id);
                matches!(block_on(store.head(&loc)), Ok(Ok(_)))
            }
        }
    }

    /// Uploads the packed file `tmp` as the archive of `id`, in parts.
    fn upload(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &str,
        id: &str,
        tmp: &Path,
    ) -> Result<(), ArchiveError> {
        use tokio::io::AsyncReadExt;
        let loc = self.object(prefix, id);
        let tmp = tmp.to_path_buf();
        let store = store.clone();
        block_on(async move {
            let upload = store.put_multipart(&loc).await?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
            let mut file = tokio::fs::File::open(&tmp)
                .await
                .map_err(io_err("reading", &tmp))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).await.map_err(io_err("reading", &tmp))?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await?;
                writer.write(&buf[..n]);
            }
            writer.finish().await?;
            Ok::<(), ArchiveError>(())
        })?
    }

    /// Downloads the archive of `id` to the local file `to`.
    fn download(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &str,
        id: &str,
        to: &Path,
    ) -> Result<(), ArchiveError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let loc = self.object(prefix, id);
        let to = to.to_path_buf();
        let store = store.clone();
        block_on(async move {
            let got = match store.get(&loc).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(ArchiveError::Missing(id.to_string()))
                }
                Err(e) => return Err(e.into()),
            };
            let mut stream = got.into_stream();
            let mut file = tokio::fs::File::create(&to)
                .await
                .map_err(io_err("creating", &to))?;
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk?)
                    .await
                    .map_err(io_err("writing", &to))?;
            }
            file.sync_all().await.map_err(io_err("syncing", &to))?;
            Ok(())
        })?
    }

    /// Packs `disk_image` (unmounted) and, once the archive is durable,
    /// removes the image.
    pub fn archive(&self, id: &str, disk_image: &Path) -> Result<ArchiveInfo, ArchiveError> {
        let (Some(parent), Some(name)) = (disk_image.parent(), disk_image.file_name()) else {
            return Err(ArchiveError::NoDisk(id.into()));
        };
        if !disk_image.exists() {
            return Err(ArchiveError::NoDisk(id.into()));
        }
        let out = self.path(id);
        let tmp = self.dir.join(format!("{id}.tar.zst.tmp"));
        let tmp_file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        let mut tar = Command::new("tar")
            .args(["--sparse", "--numeric-owner", "-C"])
            .arg(parent)
            .arg("-cf")
            .arg("-")
            .arg(name)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running tar for", disk_image))?;
        let tar_out = tar.stdout.take().ok_or_else(|| ArchiveError::Tool {
            step: "tar",
            id: id.into(),
            detail: "no output pipe".into(),
        })?;
        let zstd = Command::new("zstd")
            .args(["-q", "-3", "-T0", "-c"])
            .stdin(tar_out)
            .stdout(tmp_file)
            .stderr(Stdio::piped())
            .output()
            .map_err(io_err("running zstd for", disk_image))?;
        let tar_done = tar
            .wait_with_output()
            .map_err(io_err("waiting for tar on", disk_image))?;
        let fail = |step, detail: Vec<u8>| {
            let _ = fs::remove_file(&tmp);
            ArchiveError::Tool {
                step,
                id: id.into(),
                detail: String::from_utf8_lossy(&detail).trim().to_string(),
            }
        };
        if !tar_done.status.success() {
            return Err(fail("tar", tar_done.stderr));
        }
        if !zstd.status.success() {
            return Err(fail("zstd", zstd.stderr));
        }
        fsync_path(&tmp)?;
        let archived_bytes = fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        match &self.backend {
            Backend::Local => {
                fs::rename(&tmp, &out).map_err(io_err("installing", &out))?;
                fsync_dir(&self.dir);
            }
            Backend::Remote { store, prefix } => {
                let uploaded = self.upload(store, prefix, id, &tmp);
                let _ = fs::remove_file(&tmp);
                uploaded?;
            }
        }
        atoll_types::failpoint::hit("runtime.archive.before_disk_removal");
        fs::remove_file(disk_image).map_err(io_err("removing", disk_image))?;
        fsync_dir(parent);
        Ok(ArchiveInfo { archived_bytes })
    }

    /// Unpacks the archive back to `disk_image` and, once that is durable,
    /// removes the archive.
    pub fn restore(&self, id: &str, disk_image: &Path) -> Result<(), ArchiveError> {
        let src = self.path(id);
        if let Backend::Remote { store, prefix } = &self.backend {
            // Stage the archive locally; the remote copy goes only once the
            // disk is back and durable.
            self.download(store, prefix, id, &src)?;
        }
        if !src.exists() {
            return Err(ArchiveError::Missing(id.into()));
        }
        let Some(parent) = disk_image.parent() else {
            return Err(ArchiveError::NoDisk(id.into()));
        };
        let staging = parent.join(".restore.tmp");
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io_err("creating", &staging))?;
        let mut zstd = Command::new("zstd")
            .args(["-q", "-d", "-c"])
            .arg(&src)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running zstd on", &src))?;
        let z_out = zstd.stdout.take().ok_or_else(|| ArchiveError::Tool {
            step: "zstd",
            id: id.into(),
            detail: "no output pipe".into(),
        })?;
        // Only the one member we expect, as a regular file: an archive is
        // data from a bucket, so nothing else in it is unpacked.
        let name = disk_image.file_name().unwrap_or_default();
        let tar = Command::new("tar")
            .args(["--sparse", "--numeric-owner", "--no-same-permissions", "-C"])
            .arg(&staging)
            .arg("-xf")
            .arg("-")
            .arg("--")
            .arg(name)
            .stdin(z_out)
            .stderr(Stdio::piped())
            .output()
            .map_err(io_err("running tar on", &src))?;
        let z_done = zstd
            .wait_with_output()
            .map_err(io_err("waiting for zstd on", &src))?;
        let fail = |step, detail: Vec<u8>| {
            let _ = fs::remove_dir_all(&staging);
            ArchiveError::Tool {
                step,
                id: id.into(),
                detail: String::from_utf8_lossy(&detail).trim().to_string(),
            }
        };
        if !z_done.status.success() {
            return Err(fail("zstd", z_done.stderr));
        }
        if !tar.status.success() {
            return Err(fail("tar", tar.stderr));
        }
        let unpacked = staging.join(name);
        if !fs::symlink_metadata(&unpacked).is_ok_and(|m| m.file_type().is_file()) {
            return Err(fail(
                "tar",
                b"the archive does not contain the disk image as a regular file".to_vec(),
            ));
        }
        fsync_path(&unpacked)?;
        fs::rename(&unpacked, disk_image).map_err(io_err("installing", disk_image))?;
        fsync_dir(parent);
        let _ = fs::remove_dir_all(&staging);
        atoll_types::failpoint::hit("runtime.restore.before_archive_removal");
        fs::remove_file(&src).map_err(io_err("removing", &src))?;
        fsync_dir(&self.dir);
        self.remove_remote(id)
    }

    fn remove_remote(&self, id: &str) -> Result<(), ArchiveError> {
        if let Backend::Remote { store, prefix } = &self.backend {
            let loc = self.object(prefix, id);
            match block_on(store.delete(&loc))? {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    pub fn remove(&self, id: &str) -> Result<(), ArchiveError> {
        let p = self.path(id);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ArchiveError::Io {
                    what: "removing",
                    path: p,
                    source: e,
                })
            }
        }
        self.remove_remote(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn archive_then_restore_gives_back_the_same_sparse_image() {
        let root = std::env::temp_dir().join(format!("atoll-archive-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let sb = root.join("sb");
        fs::create_dir_all(&sb).unwrap();
        let image = sb.join("disk.img");
        let mut f = File::create(&image).unwrap();
        f.set_len(256 << 20).unwrap();
        f.seek(SeekFrom::Start(100 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        drop(f);
        let before = fs::read(&image).unwrap();
        let store = ArchiveStore::open(&root.join("archives")).unwrap();
        let info = store.archive("sb", &image).unwrap();
        assert!(!image.exists(), "archive frees the disk");
        assert!(
            info.archived_bytes < 1 << 20,
            "archive of a sparse image is small: {}",
            info.archived_bytes
        );
        assert!(store.exists("sb"));
        store.restore("sb", &image).unwrap();
        assert!(!store.exists("sb"));
        assert_eq!(fs::read(&image).unwrap(), before);
        use std::os::unix::fs::MetadataExt;
        assert!(
            fs::metadata(&image).unwrap().blocks() * 512 < 8 << 20,
            "restored image stays sparse"
        );
        assert!(matches!(
            store.restore("sb", &image),
            Err(ArchiveError::Missing(_))
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_hostile_archive_unpacks_nothing_but_a_regular_disk_image() {
        let root = std::env::temp_dir().join(format!("atoll-archive-evil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let work = root.join("work");
        fs::create_dir_all(&work).unwrap();
        let target = root.join("host-target");
        // disk.img is a symlink to a host path, plus an extra member.
        std::os::unix::fs::symlink(&target, work.join("disk.img")).unwrap();
        fs::write(work.join("extra"), "x").unwrap();
        let store = ArchiveStore::open(&root.join("archives")).unwrap();
        let tar = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -cf - disk.img extra | zstd -q -c > {}",
                work.display(),
                store.path("sb").display()
            ))
            .status()
            .unwrap();
        assert!(tar.success());
        let sb = root.join("sb");
        fs::create_dir_all(&sb).unwrap();
        let image = sb.join("disk.img");
        assert!(store.restore("sb", &image).is_err());
        assert!(fs::symlink_metadata(&image).is_err(), "nothing installed");
        assert!(!target.exists() && !sb.join("extra").exists());
        assert!(store.exists("sb"), "the archive is kept for inspection");
        fs::remove_dir_all(root).unwrap();
    }
}
