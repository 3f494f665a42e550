//! `COPY` and `ADD` from the build context: the named files of the
//! context (tars the client uploaded, each stored as a layer by the
//! hostile-layer unpacker) written as a new image layer.
//!
//! Sources are resolved in each context as if it were `/`
//! (`RESOLVE_IN_ROOT`: a symlink in the context never leads out of it),
//! and read by descriptors only. The layer is a tar built from them, with
//! Docker's rules: a directory's contents go into the destination, a
//! single file to the destination path (into it when it ends with `/` or
//! is a directory of the image), everything owned by root or `--chown`.
//! Parent directories the image already has keep their owner and mode
//! (copied from the uppermost layer that has them); missing ones are
//! made root-owned 0755. The tar goes through the same unpacker as any
//! pulled layer.

use crate::commit::{append_file, append_tree, TarStats, TreeOptions};
use crate::image::ImageStore;
use crate::oci::unpack::UnpackLimits;
use atoll_runtime_api::RuntimeError;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, SFlag};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

fn failed(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&message.into()))
}

/// One stored build context: its sha256 and its unpacked tree.
pub struct Context {
    pub sha256: String,
    pub root: PathBuf,
}

/// A source path as a context-relative path (`""`: the whole context).
/// `..` is refused (nothing outside the context can be named); wildcards
/// are not supported.
pub fn normalize_source(src: &str) -> Result<String, String> {
    if src.contains(['*', '?', '[']) {
        return Err(format!(
            "{src}: wildcards in COPY sources are not supported"
        ));
    }
    let mut parts = Vec::new();
    for p in src.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(format!("{src}: a path outside the build context")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

fn open_in(root: &OwnedFd, rel: &str, flags: OFlag, resolve: ResolveFlag) -> Option<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve);
    nix::fcntl::openat2(root, rel, how).ok()
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Where a source was found: a context's index, and whether it is a
/// directory there.
struct Found {
    context: usize,
    dir: bool,
}

fn find(contexts: &[(OwnedFd, &Context)], src: &str) -> Vec<Found> {
    let mut found = Vec::new();
    for (i, (root, _)) in contexts.iter().enumerate() {
        let Some(fd) = open_in(root, src, OFlag::O_PATH, in_root()) else {
            continue;
        };
        let Ok(st) = nix::sys::stat::fstat(&fd) else {
            continue;
        };
        found.push(Found {
            context: i,
            dir: is_dir(&st),
        });
    }
    found
}

fn open_contexts(contexts: &[Context]) -> Result<Vec<(OwnedFd, &Context)>, RuntimeError> {
    contexts
        .iter()
        .map(|c| {
            crate::safe_fs::open_dir(&c.root)
                .map(|fd| (fd, c))
                .map_err(|e| failed(format!("build context {}: {e}", c.sha256)))
        })
        .collect()
}

/// The contexts' sha256s each source was found in (what the step's
/// cache key covers); an error names a source found in none.
pub fn used_contexts(
    contexts: &[Context],
    sources: &[String],
) -> Result<Vec<String>, RuntimeError> {
    let opened = open_contexts(contexts)?;
    let mut used = Vec::new();
    for src in sources {
        let rel = normalize_source(src).map_err(failed)?;
        let found = find(&opened, &rel);
        if found.is_empty() {
            return Err(failed(format!("{src}: not found in the build context")));
        }
        for f in found {
            used.push(contexts[f.context].sha256.clone());
        }
    }
    Ok(used)
}

/// `uid[:gid]` of a `--chown`: numbers, or names looked up in the image's
/// `/etc/passwd` and `/etc/group` (its uppermost layer that has them).
pub fn resolve_owner(layers: &[PathBuf], spec: Option<&str>) -> Result<(u32, u32), RuntimeError> {
    let Some(spec) = spec else {
        return Ok((0, 0));
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str| -> Result<(u32, Option<u32>), RuntimeError> {
        if let Ok(n) = name.parse::<u32>() {
            return Ok((n, None));
        }
        let content = read_from_layers(layers, file).unwrap_or_default();
        for line in content.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 3 && fields[0] == name {
                let id = fields[2].parse().ok();
                let gid = fields.get(3).and_then(|g| g.parse().ok());
                if let Some(id) = id {
                    return Ok((id, gid));
                }
            }
        }
        Err(failed(format!(
            "--chown={spec}: no {name:?} in the image's /{file}"
        )))
    };
    let (uid, primary) = lookup("etc/passwd", user)?;
    let gid = match group {
        Some(g) => lookup("etc/group", g)?.0,
        None => primary.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// A small file of the image (at most 1 MiB), from its uppermost layer
/// that has it.
fn read_from_layers(layers: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers.iter().rev() {
        let Ok(root) = crate::safe_fs::open_dir(layer) else {
            continue;
        };
        // Non-blocking, and a regular file only: a FIFO a build step left
        // at /etc/passwd must not hang the build.
        if let Some(fd) = open_in(
            &root,
            rel,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
            in_root(),
        ) {
            let st = nix::sys::stat::fstat(&fd).ok()?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                return None;
            }
            let mut s = String::new();
            std::fs::File::from(fd)
                .take(1 << 20)
                .read_to_string(&mut s)
                .ok()?;
            return Some(s);
        }
    }
    None
}

/// What the image has at `rel`, as the overlay would show it: the entry of
/// the uppermost layer that has one.
enum InImage {
    Dir(FileStat),
    /// A symlink, a file, or a whiteout (deleted): nothing to copy into.
    Other,
    Missing,
}

fn in_image(layers: &[OwnedFd], rel: &str) -> InImage {
    let strict = ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_XDEV;
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    for root in layers.iter().rev() {
        let Some(dir) = open_in(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY, strict) else {
            continue;
        };
        let Ok(st) = nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            continue;
        };
        return if is_dir(&st) {
            InImage::Dir(st)
        } else {
            InImage::Other
        };
    }
    InImage::Missing
}

/// The metadata of directory `rel` in the image, `None` if it has none
/// there; an error if the image has something else there (a symlink, as
/// merged-/usr images have at `/lib`: writing a directory would hide it).
fn image_dir(layers: &[OwnedFd], rel: &str) -> Result<Option<FileStat>, RuntimeError> {
    match in_image(layers, rel) {
        InImage::Dir(st) => Ok(Some(st)),
        InImage::Missing => Ok(None),
        InImage::Other => Err(failed(format!(
            "COPY destination /{rel} is a symlink or a file in the image; copy to the path it resolves to"
        ))),
    }
}

/// What a `COPY` step copies.
pub struct CopyStep<'a> {
    pub sources: &'a [String],
    /// Absolute (already joined to the `WORKDIR`).
    pub dest: String,
    pub owner: (u32, u32),
}

fn dir_header(st: Option<&FileStat>, owner: (u32, u32)) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    match st {
        Some(st) => {
            h.set_mode(st.st_mode & 0o7777);
            h.set_uid(u64::from(st.st_uid));
            h.set_gid(u64::from(st.st_gid));
            h.set_mtime(st.st_mtime.max(0) as u64);
        }
        None => {
            h.set_mode(0o755);
            h.set_uid(u64::from(owner.0));
            h.set_gid(u64::from(owner.1));
        }
    }
    h
}

fn tar_err(what: &str) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |e| failed(format!("COPY into {what}: {e}"))
}

/// Writes the step's layer tar to `out`.
fn write_copy_tar(
    out: impl std::io::Write,
    contexts: &[Context],
    layers: &[PathBuf],
    step: &CopyStep<'_>,
) -> Result<TarStats, RuntimeError> {
    let opened = open_contexts(contexts)?;
    let layer_fds: Vec<OwnedFd> = layers
        .iter()
        .filter_map(|l| crate::safe_fs::open_dir(l).ok())
        .collect();
    let dest_parts: Vec<&str> = step
        .dest
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if dest_parts.contains(&"..") {
        return Err(failed(format!("COPY destination {}: `..`", step.dest)));
    }
    let dest_rel = dest_parts.join("/");
    let mut plan = Vec::new();
    for src in step.sources {
        let rel = normalize_source(src).map_err(failed)?;
        let found = find(&opened, &rel);
        if found.is_empty() {
            return Err(failed(format!("{src}: not found in the build context")));
        }
        plan.push((rel, found));
    }
    let single_file = plan.len() == 1 && plan[0].1.iter().all(|f| !f.dir);
    // A single file goes to the destination path itself unless it names
    // a directory (a trailing `/`, or one the image has).
    let into_dir = !single_file
        || step.dest.ends_with('/')
        || dest_rel.is_empty()
        || matches!(in_image(&layer_fds, &dest_rel), InImage::Dir(_));
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let mut stats = TarStats::default();
    // The destination's directories (its parent's, for a file copied to a
    // path of its own), as the image has them, or new.
    let dirs = if into_dir {
        dest_parts.len()
    } else {
        dest_parts.len().saturating_sub(1)
    };
    for n in 1..=dirs {
        let path = dest_parts[..n].join("/");
        let existing = image_dir(&layer_fds, &path)?;
        let mut h = dir_header(existing.as_ref(), step.owner);
        b.append_data(&mut h, &path, std::io::empty())
            .map_err(tar_err(&step.dest))?;
    }
    let opts = TreeOptions {
        overlay: false,
        owner: Some(step.owner),
    };
    let commit = |e: crate::commit::CommitError| failed(format!("COPY: {e}"));
    for (rel, found) in &plan {
        for f in found {
            let root = &opened[f.context].0;
            if f.dir {
                let dir = open_in(root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, in_root())
                    .ok_or_else(|| failed(format!("{rel}: not readable in the build context")))?;
                append_tree(&mut b, &dir, dest_rel.as_bytes(), &opts, &mut stats)
                    .map_err(commit)?;
            } else {
                let file = open_in(root, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, in_root())
                    .ok_or_else(|| failed(format!("{rel}: not readable in the build context")))?;
                let target = if into_dir {
                    let base = rel.rsplit('/').next().unwrap_or(rel);
                    if dest_rel.is_empty() {
                        base.to_string()
                    } else {
                        format!("{dest_rel}/{base}")
                    }
                } else {
                    dest_rel.clone()
                };
                append_file(&mut b, file, target.as_bytes(), &opts, &mut stats).map_err(commit)?;
            }
        }
    }
    b.into_inner()
        .map_err(tar_err(&step.dest))?
        .flush()
        .map_err(tar_err(&step.dest))?;
    Ok(stats)
}

/// Makes and stores the step's layer; its diff id and file bytes.
pub fn copy_layer(
    images: &ImageStore,
    limits: UnpackLimits,
    contexts: &[Context],
    layers: &[PathBuf],
    step: &CopyStep<'_>,
) -> Result<(String, u64), RuntimeError> {
    let stats = crate::local::layer_from_tar(images, limits, |writer| {
        write_copy_tar(writer, contexts, layers, step).map(|_| ())
    })?;
    Ok((stats.diff_id, stats.file_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_in_the_context() {
        assert_eq!(normalize_source("./a/b/").unwrap(), "a/b");
        assert_eq!(normalize_source("/abs/x").unwrap(), "abs/x");
        assert_eq!(normalize_source(".").unwrap(), "");
        assert!(normalize_source("../etc/passwd").is_err());
        assert!(normalize_source("a/../../b").is_err());
        assert!(normalize_source("*.py").is_err());
    }
}
