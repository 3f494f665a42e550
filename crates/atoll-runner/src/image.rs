//! Image store: content-addressed, unpacked, read-only root filesystems that
//! sandboxes use as their overlay lower dir, and the built-in default image,
//! built on first use by `debootstrap` from Debian's packages.
//!
//! Layout under the images root:
//!
//! ```text
//! layers/sha256-<hex>/   an unpacked tree, named by its `tree_digest`
//! refs/<name>.json       {"name","digest","sizeBytes","createdAtMs","recipe"}
//!                        (a name with `/` lives in subdirectories: refs/atoll/default:bookworm.json)
//! tmp/build-<random>/    a build in progress, renamed into layers/ when complete
//! .lock                  flock held by whoever builds or writes refs
//! ```
//!
//! Readers (`get`, `list`) take no lock: refs are replaced by rename and a
//! layer directory appears by rename, so a reader sees either nothing or a
//! complete image. Builders serialize on `.lock`; a waiter re-reads the ref
//! after getting the lock and reuses what the first builder made.
//!
//! The default image build is a plan (`default_image_steps`) executed second,
//! so what is done to the tree is visible and unit-tested without root.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{chown, DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::mount::{umount2, MntFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The snapshot name of the built-in image, as shown in the API.
pub const DEFAULT_IMAGE: &str = "atoll/default:bookworm";

/// Bump when the way the default image is built changes (post-steps, flags):
/// a stored image made by an older recipe is rebuilt on next use.
const RECIPE_VERSION: u32 = 3;
const DEFAULT_SUITE: &str = "bookworm";
const DEFAULT_VARIANT: &str = "minbase";
const DEFAULT_PACKAGES: &[&str] = &[
    "python3",
    "python3-pip",
    "python3-venv",
    "git",
    "curl",
    "ca-certificates",
    "nodejs",
    "procps",
    "sudo",
];
/// Installed with apt in the tree after debootstrap: debootstrap's own
/// resolver cannot install npm (it does not follow virtual packages).
const APT_PACKAGES: &[&str] = &[
    // `process/code-run` with language typescript: tsc transpiles, node runs.
    "node-typescript",
    // Users' `npm install`, and the build's install of NPM_PACKAGES.
    "npm",
    // The Python language server behind the LSP API.
    "python3-pylsp",
    // What `scp` and `sftp` reach through the SSH gateway (the sftp
    // subsystem runs it as the sandbox user).
    "openssh-sftp-server",
    // `python` is Python 3 (code written for Daytona runs `python - <<'PY'`).
    "python-is-python3",
    // What Daytona's default snapshot ships for code-run, from Debian
    // (`plt.show()` in code-run returns charts; see DEFAULT_STEPS' matplotlib
    // step for the headless backend).
    "python3-numpy",
    "python3-pandas",
    "python3-matplotlib",
    "python3-requests",
    "python3-pil",
    "python3-scipy",
];
/// What a sandbox of the default image runs at boot as its entrypoint
/// session: Daytona's default snapshot's `ENTRYPOINT ["sleep", "infinity"]`.
pub const DEFAULT_ENTRYPOINT: &[&str] = &["sleep", "infinity"];
/// What the build installs from the npm registry (Debian has no
/// typescript-language-server), into its own prefix [`NPM_PREFIX`] so the
/// `tsc` on `PATH` stays Debian's. typescript-language-server 4.x is the last
/// series that supports bookworm's Node 18; it runs the TypeScript installed
/// beside it.
const NPM_PACKAGES: &[&str] = &["typescript-language-server@4.4.1", "typescript@5.9.3"];
/// Where `NPM_PACKAGES` live in the image; `/usr/local/bin/typescript-language-server`
/// links into it.
pub const NPM_PREFIX: &str = "/usr/local/lib/typescript-language-server";
/// Where the build puts the host's CA bundle inside the tree while npm runs
/// (so a registry behind a TLS-intercepting proxy the host trusts works);
/// removed again before the image is committed.
const BUILD_CA_PATH: &str = "tmp/atoll-build-ca.crt";
const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";
/// Environment variable naming the Debian mirror to debootstrap from.
pub const MIRROR_ENV: &str = "ATOLL_DEBIAN_MIRROR";

/// Counts from a trial run (bookworm minbase + DEFAULT_PACKAGES): 154
/// packages retrieved, 88 of them extracted as the required set. Only used
/// as debootstrap's progress-bar totals; a larger real count just stretches
/// the total. The apt step after it (APT_PACKAGES) reports apt's own count.
const ESTIMATED_PACKAGES: u64 = 154;
const ESTIMATED_REQUIRED: u64 = 88;

/// The user sandboxes run as, matching Daytona's images.
const SANDBOX_USER: &str = "daytona";
const SANDBOX_UID: u32 = 1000;
const SANDBOX_GID: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("image ref {path} is corrupt: {reason}")]
    CorruptRef { path: PathBuf, reason: String },
    #[error("image {name} points at layer {digest}, which is missing from the store")]
    MissingLayer { name: String, digest: String },
    #[error("locking the image store {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("building image {name} needs root (running as uid {uid})")]
    NotRoot { name: String, uid: u32 },
    #[error("building image {name} needs `{tool}`, which is not installed: {hint}")]
    ToolMissing {
        name: String,
        tool: &'static str,
        hint: &'static str,
    },
    #[error("debootstrap {suite} from {mirror} failed ({status}); last output:\n{output}")]
    Debootstrap {
        suite: String,
        mirror: String,
        status: String,
        output: String,
    },
    #[error("configuring image {name}: {step} failed: {detail}")]
    PostStep {
        name: String,
        step: String,
        detail: String,
    },
}

impl ImageError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
        move |source| ImageError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A stored, complete image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// `sha256:<hex>`: the `tree_digest` of a built image's one layer, or
    /// the manifest digest of a pulled or committed one.
    pub digest: String,
    /// The unpacked layers, lowest first: use them read-only (overlay
    /// lower dirs).
    pub layers: Vec<PathBuf>,
    pub size_bytes: u64,
    pub created_at_ms: i64,
    /// What a sandbox of this image runs at boot (the daemon starts it as
    /// the entrypoint session); empty: nothing.
    pub entrypoint: Vec<String>,
    /// The image config's `Env` (`KEY=value`), under the sandbox's own.
    pub env: Vec<String>,
    /// The image config's `WorkingDir` and `User`, if any.
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Where it came from (`docker.io/library/python:3.12`, a sandbox…).
    pub source: Option<String>,
}

impl Image {
    /// Every layer is present.
    pub fn is_complete(&self) -> bool {
        !self.layers.is_empty() && self.layers.iter().all(|l| l.is_dir())
    }
}

/// One progress report of a build.
///
/// `phase` says what is happening: a lowercase verb ("retrieving",
/// "extracting", "installing", "configuring", "hashing", "waiting"), followed
/// by a space and the item when there is one ("configuring libc6"). `done`
/// and `total` count that phase's items; `total` is 0 when unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildProgress {
    pub phase: String,
    pub done: u64,
    pub total: u64,
}

impl BuildProgress {
    fn new(phase: impl Into<String>, done: u64, total: u64) -> BuildProgress {
        BuildProgress {
            phase: phase.into(),
            done,
            total: total.max(done),
        }
    }
}

/// What an image was built from; a stored ref whose recipe differs from the
/// current one is rebuilt. The mirror is deliberately not part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipe {
    version: u32,
    source: String,
    suite: String,
    variant: String,
    packages: Vec<String>,
    #[serde(default)]
    apt_packages: Vec<String>,
    #[serde(default)]
    npm_packages: Vec<String>,
}

impl Recipe {
    fn default_image() -> Recipe {
        Recipe {
            version: RECIPE_VERSION,
            source: "debootstrap".into(),
            suite: DEFAULT_SUITE.into(),
            variant: DEFAULT_VARIANT.into(),
            packages: DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect(),
            apt_packages: APT_PACKAGES.iter().map(|p| p.to_string()).collect(),
            npm_packages: NPM_PACKAGES.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// `refs/<name>.json` on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefRecord {
    name: String,
    digest: String,
    size_bytes: u64,
    created_at_ms: i64,
    #[serde(default)]
    recipe: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entrypoint: Vec<String>,
    /// Layer digests (`sha256:<hex>`, named as in `layers/`), lowest first;
    /// empty: the one layer named by `digest` (a built image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<ImageConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// What of an OCI image config a sandbox uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// The image store rooted at one directory.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    /// Bytes each stored layer takes on disk, by its directory name
    /// (layers never change once stored, so each is measured once).
    layer_bytes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in [
            root.to_path_buf(),
            root.join("layers"),
            root.join("refs"),
            root.join("tmp"),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(ImageError::io("creating image store directory", &dir))?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            layer_bytes: Default::default(),
        };
        store.remove_dead_pulls();
        Ok(store)
    }

    /// Bytes the stored layers take on disk (allocated blocks; a file
    /// hard-linked within a layer counted once).
    pub fn disk_bytes(&self) -> u64 {
        let dir = self.root.join("layers");
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut known = self.layer_bytes.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        let mut total = 0u64;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("sha256-") {
                continue;
            }
            let bytes = *known
                .entry(name.clone())
                .or_insert_with(|| tree_bytes(&e.path()));
            total += bytes;
            seen.insert(name);
        }
        known.retain(|k, _| seen.contains(k));
        total
    }

    /// The image named `name`, if it is stored.
    pub fn get(&self, name: &str) -> Result<Option<Image>, ImageError> {
        let path = self.ref_path(name)?;
        let Some(record) = read_ref(&path)? else {
            return Ok(None);
        };
        if record.name != name {
            return Err(ImageError::CorruptRef {
                path,
                reason: format!("it names {:?}", record.name),
            });
        }
        let image = self.image_of(&path, record)?;
        if !image.is_complete() {
            return Err(ImageError::MissingLayer {
                name: image.name,
                digest: image.digest,
            });
        }
        Ok(Some(image))
    }

    /// Every stored image, sorted by name. Refs that are corrupt or whose
    /// layer is gone are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut refs = Vec::new();
        collect_refs(&self.root.join("refs"), &mut refs)?;
        let mut images = Vec::new();
        for path in refs {
            let record = match read_ref(&path) {
                Ok(Some(record)) => record,
                Ok(None) => continue, // replaced or removed meanwhile
                Err(err) => {
                    tracing::warn!(%err, "skipping image ref");
                    continue;
                }
            };
            match self.image_of(&path, record) {
                Ok(image) if image.is_complete() => images.push(image),
                Ok(image) => tracing::warn!(
                    name = %image.name, digest = %image.digest,
                    "skipping image whose layer is missing"
                ),
                Err(err) => tracing::warn!(%err, "skipping image ref"),
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Returns the default image, building it first if it is missing or was
    /// built by an older recipe. Blocking; a build takes about three minutes.
    pub fn ensure_default(
        &self,
        progress: &mut dyn FnMut(&BuildProgress),
    ) -> Result<Image, ImageError> {
        let recipe = Recipe::default_image();
        if let Some(image) = self.reusable(DEFAULT_IMAGE, &recipe)? {
            return Ok(image);
        }
        let _lock = self.lock(progress)?;
        // Whoever held the lock before us may have built it.
        if let Some(image) = self.reusable(DEFAULT_IMAGE, &recipe)? {
            return Ok(image);
        }
        self.build_default(&recipe, progress)
    }

    fn build_default(
        &self,
        recipe: &Recipe,
        progress: &mut dyn FnMut(&BuildProgress),
    ) -> Result<Image, ImageError> {
        let name = DEFAULT_IMAGE;
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(ImageError::NotRoot {
                name: name.into(),
                uid,
            });
        }
        let debootstrap = find_tool("debootstrap").ok_or(ImageError::ToolMissing {
            name: name.into(),
            tool: "debootstrap",
            hint: "run scripts/setup.sh, or apt-get install debootstrap",
        })?;
        let chroot = find_tool("chroot").ok_or(ImageError::ToolMissing {
            name: name.into(),
            tool: "chroot",
            hint: "install coreutils",
        })?;
        self.remove_stale_builds();

        let started = Instant::now();
        let mirror = debian_mirror();
        let build = TmpBuild::create(&self.root.join("tmp"))?;
        tracing::info!(image = name, %mirror, dir = %build.path.display(), "building default image with debootstrap");
        run_debootstrap(&debootstrap, recipe, &mirror, &build.path, progress)?;
        unmount_below(&build.path);

        let steps = default_image_steps();
        for (i, step) in steps.iter().enumerate() {
            progress(&BuildProgress::new(
                format!("configuring image: {}", step.describe()),
                i as u64,
                steps.len() as u64,
            ));
            step.apply(&build.path, &chroot, progress)
                .map_err(|detail| ImageError::PostStep {
                    name: name.into(),
                    step: step.describe(),
                    detail,
                })?;
        }

        // The apt step skips dpkg's fsyncs; one syncfs makes the whole tree
        // durable before a ref can point at it.
        sync_tree(&build.path).map_err(ImageError::io("syncing", &build.path))?;
        let summary = tree_digest(&build.path, &mut |done, total| {
            progress(&BuildProgress::new("hashing", done, total))
        })?;
        let image = self.commit(
            name,
            build,
            &summary,
            serde_json::to_value(recipe).unwrap_or_default(),
            DEFAULT_ENTRYPOINT.iter().map(|a| a.to_string()).collect(),
        )?;
        tracing::info!(
            image = name, digest = %image.digest, size_bytes = image.size_bytes,
            secs = started.elapsed().as_secs_f64(), "default image ready"
        );
        Ok(image)
    }

    /// Moves a finished build into `layers/` and points the ref at it.
    fn commit(
        &self,
        name: &str,
        build: TmpBuild,
        summary: &TreeSummary,
        recipe: serde_json::Value,
        entrypoint: Vec<String>,
    ) -> Result<Image, ImageError> {
        let layer = self.layer_path(&summary.digest_hex);
        if layer.is_dir() {
            // Identical content is already stored; `build` is removed on drop.
            tracing::info!(layer = %layer.display(), "identical layer already stored");
        } else {
            fs::rename(&build.path, &layer).map_err(ImageError::io("moving build into", &layer))?;
            build.disarm();
        }
        let record = RefRecord {
            name: name.into(),
            digest: format!("sha256:{}", summary.digest_hex),
            size_bytes: summary.size_bytes,
            created_at_ms: now_ms(),
            recipe,
            entrypoint,
            layers: Vec::new(),
            config: None,
            source: None,
        };
        let path = self.ref_path(name)?;
        write_ref(&path, &record)?;
        self.image_of(&path, record)
    }

    /// The stored image `name` if its layer exists and it was built by `recipe`.
    fn reusable(&self, name: &str, recipe: &Recipe) -> Result<Option<Image>, ImageError> {
        let path = self.ref_path(name)?;
        let record = match read_ref(&path) {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(err) => {
                tracing::warn!(%err, "rebuilding image");
                return Ok(None);
            }
        };
        let current = serde_json::to_value(recipe).unwrap_or_default();
        if record.recipe != current {
            tracing::info!(image = name, "image recipe changed; rebuilding");
            return Ok(None);
        }
        match self.image_of(&path, record) {
            Ok(image) if image.is_complete() => Ok(Some(image)),
            Ok(image) => {
                tracing::warn!(image = name, digest = %image.digest, "image layer missing; rebuilding");
                Ok(None)
            }
            Err(err) => {
                tracing::warn!(%err, "rebuilding image");
                Ok(None)
            }
        }
    }

    fn image_of(&self, path: &Path, record: RefRecord) -> Result<Image, ImageError> {
        let hex_of = |digest: &str| {
            digest
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_string)
                .ok_or_else(|| ImageError::CorruptRef {
                    path: path.to_path_buf(),
                    reason: format!("digest {digest:?} is not sha256:<64 hex>"),
                })
        };
        let layers = if record.layers.is_empty() {
            vec![self.layer_path(&hex_of(&record.digest)?)]
        } else {
            record
                .layers
                .iter()
                .map(|d| hex_of(d).map(|h| self.layer_path(&h)))
                .collect::<Result<Vec<_>, _>>()?
        };
        let config = record.config.unwrap_or_default();
        // A pulled image runs its ENTRYPOINT + CMD, as Docker would.
        let entrypoint = if record.entrypoint.is_empty() {
            config
                .entrypoint
                .iter()
                .chain(config.cmd.iter())
                .cloned()
                .collect()
        } else {
            record.entrypoint
        };
        Ok(Image {
            layers,
            name: record.name,
            digest: record.digest,
            size_bytes: record.size_bytes,
            created_at_ms: record.created_at_ms,
            entrypoint,
            env: config.env,
            workdir: config.workdir,
            user: config.user,
            source: record.source,
        })
    }

    fn layer_path(&self, hex: &str) -> PathBuf {
        self.root.join("layers").join(format!("sha256-{hex}"))
    }

    fn ref_path(&self, name: &str) -> Result<PathBuf, ImageError> {
        validate_name(name)?;
        Ok(self.root.join("refs").join(format!("{name}.json")))
    }

    /// Takes the store's build lock, telling `progress` if it has to wait.
    fn lock(&self, progress: &mut dyn FnMut(&BuildProgress)) -> Result<Flock<File>, ImageError> {
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io("opening lock file", &path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                tracing::info!(lock = %path.display(), "another process is building an image; waiting");
                progress(&BuildProgress::new("waiting for another build", 0, 0));
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, source)| ImageError::Lock { path, source })
            }
            Err((_, source)) => Err(ImageError::Lock { path, source }),
        }
    }

    /// A fresh directory under `tmp/`, removed on drop unless committed.
    pub fn scratch(&self) -> Result<TmpBuild, ImageError> {
        TmpBuild::create_named(
            &self.root.join("tmp"),
            &format!(
                "{}{}-{}",
                TmpBuild::PULL_PREFIX,
                std::process::id(),
                random_hex(8)
            ),
        )
    }

    /// Removes pull scratch directories whose process is gone.
    fn remove_dead_pulls(&self) {
        let tmp = self.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name
                .to_str()
                .and_then(|n| n.strip_prefix(TmpBuild::PULL_PREFIX))
            else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
                    && p != std::process::id() as i32
            });
            if !alive {
                let path = entry.path();
                tracing::info!(dir = %path.display(), "removing an interrupted image pull");
                if let Err(err) = remove_tree(&path) {
                    tracing::warn!(dir = %path.display(), %err, "could not remove interrupted pull");
                }
            }
        }
    }

    /// The unpacked layer `digest` (`sha256:<hex>`) if it is stored. Its
    /// modification time is refreshed, so a collection running meanwhile
    /// keeps it for another grace period.
    pub fn layer(&self, digest: &str) -> Result<Option<PathBuf>, ImageError> {
        let path = self.layer_path(layer_hex(digest)?);
        if !path.is_dir() {
            return Ok(None);
        }
        touch_dir(&path);
        Ok(Some(path))
    }

    /// Whether `scope` (an organization) has shown it holds the bytes of
    /// layer `digest`: pulled or imported them itself. Layers are shared
    /// across scopes by diff id, so one scope naming another's diff id in
    /// an image config must fetch and verify those bytes first, as
    /// containerd's isolated content policy has it.
    pub fn proven(&self, scope: &str, digest: &str) -> bool {
        layer_hex(digest).is_ok_and(|hex| self.proof_path(scope, hex).exists())
    }

    /// Records that `scope` has shown it holds layer `digest`.
    pub fn prove(&self, scope: &str, digest: &str) -> Result<(), ImageError> {
        let path = self.proof_path(scope, layer_hex(digest)?);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(ImageError::io("creating", dir))?;
        }
        fs::write(&path, b"").map_err(ImageError::io("writing", &path))
    }

    fn proof_path(&self, scope: &str, hex: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let scope_hex = hex::encode(Sha256::digest(scope.as_bytes()));
        self.root.join("proofs").join(&scope_hex[..32]).join(hex)
    }

    /// Moves an unpacked layer into `layers/` as `digest`; if another pull
    /// stored it meanwhile, ours is dropped.
    pub fn commit_layer(&self, tmp: TmpBuild, digest: &str) -> Result<PathBuf, ImageError> {
        let path = self.layer_path(layer_hex(digest)?);
        if path.is_dir() {
            touch_dir(&path);
            return Ok(path);
        }
        sync_tree(&tmp.path).map_err(ImageError::io("syncing", &tmp.path))?;
        match fs::rename(&tmp.path, &path) {
            Ok(()) => tmp.disarm(),
            Err(_) if path.is_dir() => {}
            Err(e) => return Err(ImageError::io("moving layer into", &path)(e)),
        }
        touch_dir(&path);
        Ok(path)
    }

    /// Points the ref `name` at stored layers (lowest first).
    pub fn put_layered(&self, image: LayeredImage) -> Result<Image, ImageError> {
        for d in &image.layers {
            let path = self.layer_path(layer_hex(d)?);
            if !path.is_dir() {
                return Err(ImageError::MissingLayer {
                    name: image.name.clone(),
                    digest: d.clone(),
                });
            }
        }
        let record = RefRecord {
            name: image.name.clone(),
            digest: image.digest,
            size_bytes: image.size_bytes,
            created_at_ms: now_ms(),
            recipe: serde_json::Value::Null,
            entrypoint: image.entrypoint,
            layers: image.layers,
            config: Some(image.config),
            source: image.source,
        };
        let path = self.ref_path(&image.name)?;
        atoll_types::failpoint::hit("image.put.before_ref");
        let _lock = self.lock(&mut |_| {})?;
        write_ref(&path, &record)?;
        self.image_of(&path, record)
    }

    /// Removes the ref `name` (its layers stay until [`ImageStore::collect`]).
    /// True if it existed.
    pub fn remove(&self, name: &str) -> Result<bool, ImageError> {
        let path = self.ref_path(name)?;
        let _lock = self.lock(&mut |_| {})?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("removing image ref", &path)(e)),
        }
    }

    /// Removes refs of the builder's cache and bases (names under
    /// `atoll/build-`) not used for `cache_ttl` (a cache hit refreshes its
    /// ref), then layers no ref names and `in_use` does not hold, once they
    /// are older than `grace` (a pull in progress refreshes what it
    /// reuses). Returns what was removed and its size.
    pub fn collect(
        &self,
        grace: std::time::Duration,
        cache_ttl: std::time::Duration,
        in_use: &std::collections::HashSet<PathBuf>,
    ) -> Result<CollectReport, ImageError> {
        let _lock = self.lock(&mut |_| {})?;
        let mut keep: std::collections::HashSet<PathBuf> = in_use.clone();
        let mut refs = Vec::new();
        collect_refs(&self.root.join("refs"), &mut refs)?;
        let build_refs = self.root.join("refs/atoll");
        let now = SystemTime::now();
        let mut live = Vec::new();
        for path in refs {
            let is_build = path.strip_prefix(&build_refs).is_ok_and(|rel| {
                rel.components()
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .is_some_and(|c| c.starts_with("build-"))
            });
            let unused = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= cache_ttl);
            if is_build && unused {
                match fs::remove_file(&path) {
                    Ok(()) => report_ref(&path),
                    Err(err) => {
                        tracing::warn!(path = %path.display(), %err, "could not remove a build cache ref")
                    }
                }
                continue;
            }
            live.push(path);
        }
        for path in live {
            match read_ref(&path) {
                Ok(Some(record)) => match self.image_of(&path, record) {
                    Ok(image) => keep.extend(image.layers),
                    Err(err) => tracing::warn!(%err, "image ref names no layers"),
                },
                Ok(None) => {}
                // A ref we cannot read may still name layers: keep everything.
                Err(err) => {
                    tracing::warn!(%err, "unreadable image ref; not collecting layers");
                    return Ok(CollectReport::default());
                }
            }
        }
        let layers = self.root.join("layers");
        let mut report = CollectReport::default();
        for entry in fs::read_dir(&layers).map_err(ImageError::io("listing", &layers))? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if keep.contains(&path) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= grace);
            if !old {
                continue;
            }
            let size = dir_size(&path);
            match remove_tree(&path) {
                Ok(()) => {
                    tracing::info!(layer = %path.display(), bytes = size, "collected unused image layer");
                    report.layers += 1;
                    report.bytes += size;
                }
                Err(err) => {
                    tracing::warn!(layer = %path.display(), %err, "could not remove unused layer")
                }
            }
        }
        Ok(report)
    }

    /// Marks the ref `name` as used now (the build cache's clock).
    pub fn touch_ref(&self, name: &str) {
        if let Ok(path) = self.ref_path(name) {
            touch(&path);
        }
    }

    /// Bytes of every stored layer.
    pub fn disk_usage(&self) -> u64 {
        let layers = self.root.join("layers");
        fs::read_dir(&layers)
            .map(|entries| entries.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0)
    }

    /// Removes builds left by a crashed process. Only called with the lock
    /// held, so no live build can be among them.
    fn remove_stale_builds(&self) {
        let tmp = self.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .as_bytes()
                .starts_with(TmpBuild::PREFIX.as_bytes())
            {
                let path = entry.path();
                tracing::info!(dir = %path.display(), "removing stale image build");
                unmount_below(&path);
                if let Err(err) = remove_tree(&path) {
                    tracing::warn!(dir = %path.display(), %err, "could not remove stale image build");
                }
            }
        }
    }
}

/// An image made of stored layers, to point a ref at.
#[derive(Debug, Clone)]
pub struct LayeredImage {
    pub name: String,
    /// The manifest digest (`sha256:<hex>`).
    pub digest: String,
    /// Layer digests, lowest first.
    pub layers: Vec<String>,
    pub size_bytes: u64,
    pub config: ImageConfig,
    /// Overrides the config's ENTRYPOINT + CMD when not empty.
    pub entrypoint: Vec<String>,
    pub source: Option<String>,
}

/// What [`ImageStore::collect`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectReport {
    pub layers: u64,
    pub bytes: u64,
}

fn layer_hex(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| ImageError::InvalidName {
            name: digest.to_string(),
            reason: "a layer digest is sha256: and 64 lowercase hex digits",
        })
}

/// The digest (`sha256:<hex>`) of a stored layer's directory.
pub fn layer_digest_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let digest = format!("sha256:{}", name.strip_prefix("sha256-")?);
    layer_hex(&digest).is_ok().then_some(digest)
}

fn report_ref(path: &Path) {
    tracing::info!(path = %path.display(), "removed an unused build cache ref");
}

/// Refreshes a file's or directory's modification time (collection's
/// clocks).
pub fn touch(path: &Path) {
    touch_dir(path)
}

/// Refreshes a directory's modification time (collection's grace clock).
fn touch_dir(path: &Path) {
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &now,
        &now,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

/// Bytes of regular files under `path` (hard links counted once per walk).
pub fn dir_size(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(md) = fs::symlink_metadata(p) else {
            return 0;
        };
        if md.is_dir() {
            fs::read_dir(p)
                .map(|es| es.flatten().map(|e| walk(&e.path(), seen)).sum())
                .unwrap_or(0)
        } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
            md.len()
        } else {
            0
        }
    }
    walk(path, &mut std::collections::HashSet::new())
}

/// A build directory under `tmp/`, removed on drop unless committed.
pub struct TmpBuild {
    pub path: PathBuf,
    armed: std::cell::Cell<bool>,
}

impl TmpBuild {
    const PREFIX: &'static str = "build-";

    /// Prefix of a pull's scratch directory, followed by the owner's pid.
    const PULL_PREFIX: &'static str = "pull-";

    pub fn create(tmp: &Path) -> Result<TmpBuild, ImageError> {
        Self::create_named(tmp, &format!("{}{}", Self::PREFIX, random_hex(8)))
    }

    fn create_named(tmp: &Path, name: &str) -> Result<TmpBuild, ImageError> {
        let path = tmp.join(name);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(ImageError::io("creating build directory", &path))?;
        // The tree's root mode is part of the image; don't inherit the umask.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io("setting mode of", &path))?;
        Ok(TmpBuild {
            path,
            armed: std::cell::Cell::new(true),
        })
    }

    fn disarm(&self) {
        self.armed.set(false);
    }
}

impl Drop for TmpBuild {
    fn drop(&mut self) {
        if self.armed.get() {
            unmount_below(&self.path);
            if let Err(err) = remove_tree(&self.path) {
                tracing::warn!(dir = %self.path.display(), %err, "could not remove image build");
            }
        }
    }
}

// ---------------------------------------------------------------- refs

fn validate_name(name: &str) -> Result<(), ImageError> {
    let bad = |reason| {
        Err(ImageError::InvalidName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 255 {
        return bad("it must be 1 to 255 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:@+/-".contains(&b))
    {
        return bad("only letters, digits and . _ : @ + / - are allowed");
    }
    if name.split('/').any(|c| c.is_empty() || c.starts_with('.')) {
        return bad("each /-separated part must be non-empty and not start with '.'");
    }
    Ok(())
}

fn read_ref(path: &Path) -> Result<Option<RefRecord>, ImageError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ImageError::Io {
                action: "reading image ref",
                path: path.into(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| ImageError::CorruptRef {
            path: path.into(),
            reason: err.to_string(),
        })
}

/// Writes a ref atomically: a temp file in the same directory, fsync, rename.
fn write_ref(path: &Path, record: &RefRecord) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(ImageError::io("creating refs directory", dir))?;
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{base}.tmp-{}", random_hex(4)));
    let mut json = serde_json::to_vec_pretty(record).unwrap_or_default();
    json.push(b'\n');
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ImageError::Io {
            action: "writing image ref",
            path: path.into(),
            source,
        }
    })
}

fn collect_refs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ImageError::Io {
                action: "listing image refs in",
                path: dir.into(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(ImageError::io("listing image refs in", dir))?;
        let name = entry.file_name();
        if name.as_bytes().starts_with(b".") {
            continue; // temp files of write_ref
        }
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(ImageError::io("inspecting", &path))?;
        if file_type.is_dir() {
            collect_refs(&path, out)?;
        } else if file_type.is_file() && path.extension() == Some(OsStr::new("json")) {
            out.push(path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- mirror

/// The Debian mirror to build from: `$ATOLL_DEBIAN_MIRROR`, else the host's
/// apt sources' main archive, else deb.debian.org.
pub fn debian_mirror() -> String {
    if let Ok(mirror) = std::env::var(MIRROR_ENV) {
        let mirror = mirror.trim();
        if !mirror.is_empty() {
            return mirror.to_string();
        }
    }
    let mut sources = Vec::new();
    let mut read = |path: PathBuf| {
        if let Ok(text) = fs::read_to_string(&path) {
            sources.push((path, text));
        }
    };
    read(PathBuf::from("/etc/apt/sources.list"));
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        // apt reads only *.list and *.sources; anything else (.disabled, .save) is ignored.
        for path in paths {
            if matches!(
                path.extension().and_then(OsStr::to_str),
                Some("list" | "sources")
            ) {
                read(path);
            }
        }
    }
    mirror_from_sources(&sources, DEFAULT_SUITE).unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

/// One `deb` source: its URIs, suites and components.
#[derive(Debug, PartialEq)]
struct AptSource {
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
}

/// Picks the Debian main archive among apt sources (file path, contents):
/// a `deb` entry with component `main` whose URI looks like a Debian archive
/// (not the security archive). One listing `suite` itself wins; otherwise
/// any plain release suite (a trixie host's mirror also serves bookworm).
fn mirror_from_sources(files: &[(PathBuf, String)], suite: &str) -> Option<String> {
    let mut all = Vec::new();
    for (path, text) in files {
        if path.extension() == Some(OsStr::new("sources")) {
            all.extend(parse_deb822(text));
        } else {
            all.extend(parse_one_line(text));
        }
    }
    let candidates: Vec<(&AptSource, &String)> = all
        .iter()
        .filter(|s| s.components.iter().any(|c| c == "main"))
        .flat_map(|s| s.uris.iter().map(move |u| (s, u)))
        .filter(|(_, uri)| {
            let uri = uri.to_ascii_lowercase();
            (uri.starts_with("http://") || uri.starts_with("https://"))
                && uri.contains("debian")
                && !uri.contains("security")
        })
        .collect();
    let exact = candidates
        .iter()
        .find(|(s, _)| s.suites.iter().any(|x| x == suite));
    let plain = || {
        candidates.iter().find(|(s, _)| {
            s.suites
                .iter()
                .any(|x| !x.contains('-') && !x.contains('/'))
        })
    };
    exact
        .or_else(plain)
        .map(|(_, uri)| uri.trim_end_matches('/').to_string())
}

/// `deb [options] uri suite component...` lines (sources.list format).
fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.strip_prefix("deb") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => continue,
        };
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
        });
    }
    out
}

/// deb822 stanzas (`*.sources` format).
fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut last_key: Option<String> = None;
    let mut flush = |fields: &mut HashMap<String, String>| {
        let get = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let enabled = fields
            .get("enabled")
            .map(|v| !v.trim().eq_ignore_ascii_case("no"))
            .unwrap_or(true);
        if enabled && get("types").iter().any(|t| t == "deb") {
            out.push(AptSource {
                uris: get("uris"),
                suites: get("suites"),
                components: get("components"),
            });
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut fields);
            last_key = None;
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some(value) = last_key.as_ref().and_then(|k| fields.get_mut(k)) {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            let key = key.trim().to_ascii_lowercase();
            fields.insert(key.clone(), value.trim().to_string());
            last_key = Some(key);
        }
    }
    flush(&mut fields);
    out
}

// ---------------------------------------------------------------- debootstrap

fn find_tool(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

/// The environment for debootstrap and chroot: nothing of ours leaks into
/// the image except proxy and registry settings needed to reach the mirror
/// and the npm registry.
fn build_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .env("HOME", "/root")
        .env("DEBIAN_FRONTEND", "noninteractive");
    for var in [
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        // An npm registry mirror the host is configured to use.
        "npm_config_registry",
        "NPM_CONFIG_REGISTRY",
    ] {
        if let Ok(value) = std::env::var(var) {
            cmd.env(var, value);
        }
    }
    cmd
}

fn debootstrap_args(recipe: &Recipe, mirror: &str, target: &Path) -> Vec<std::ffi::OsString> {
    vec![
        format!("--variant={}", recipe.variant).into(),
        format!("--include={}", recipe.packages.join(",")).into(),
        recipe.suite.clone().into(),
        target.as_os_str().to_owned(),
        mirror.into(),
    ]
}

fn run_debootstrap(
    debootstrap: &Path,
    recipe: &Recipe,
    mirror: &str,
    target: &Path,
    progress: &mut dyn FnMut(&BuildProgress),
) -> Result<(), ImageError> {
    let fail = |status: String, output: String| ImageError::Debootstrap {
        suite: recipe.suite.clone(),
        mirror: mirror.into(),
        status,
        output,
    };
    // One pipe for stdout and stderr keeps debootstrap's lines in order.
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| fail("creating its output pipe".into(), e.to_string()))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| fail("creating its output pipe".into(), e.to_string()))?;
    let mut child = {
        let mut cmd = build_command(debootstrap);
        cmd.args(debootstrap_args(recipe, mirror, target))
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2));
        // If we die mid-build, debootstrap must die too: the next builder
        // removes this directory and must not race a live debootstrap in it.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl and getppid, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(io::Error::other("image build process exited"));
                }
                Ok(())
            });
        }
        tracing::debug!(?cmd, "running debootstrap");
        cmd.spawn()
            .map_err(|e| fail("starting it".into(), e.to_string()))?
        // `cmd` drops here, closing our copies of the write end, so EOF
        // arrives when debootstrap exits.
    };

    progress(&BuildProgress::new("resolving packages", 0, 0));
    let mut parser = DebootstrapProgress::default();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut reader = BufReader::new(File::from(reader));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(%err, "reading debootstrap output");
                break;
            }
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("W:") || line.starts_with("E:") {
            tracing::warn!(target: "debootstrap", "{line}");
        } else {
            tracing::debug!(target: "debootstrap", "{line}");
        }
        if let Some(p) = parser.line(&line) {
            progress(&p);
        }
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child
        .wait()
        .map_err(|e| fail("waiting for it".into(), e.to_string()))?;
    if !status.success() {
        let mut output: Vec<String> = tail.into_iter().collect();
        // debootstrap's own log has the failing command's output.
        if let Ok(log) = fs::read_to_string(target.join("debootstrap/debootstrap.log")) {
            let lines: Vec<&str> = log.lines().collect();
            output.push("--- debootstrap.log (end) ---".into());
            output.extend(
                lines[lines.len().saturating_sub(20)..]
                    .iter()
                    .map(|l| l.to_string()),
            );
        }
        return Err(fail(status.to_string(), output.join("\n")));
    }
    Ok(())
}

/// Turns debootstrap's `I:` lines into progress. debootstrap prints no totals,
/// so retrieval and extraction use the trial counts; unpack and configure
/// use the number of packages actually retrieved.
#[derive(Debug, Default)]
struct DebootstrapProgress {
    retrieved: u64,
    extracted: u64,
    unpacked: u64,
    configured: u64,
}

impl DebootstrapProgress {
    fn line(&mut self, line: &str) -> Option<BuildProgress> {
        let rest = line.strip_prefix("I: ")?;
        let (verb, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        // "Unpacking required packages...", "Configuring the base system..." are headers.
        let item = arg.trim_end_matches("...").trim();
        let is_header = arg.contains(' ');
        let package = item.split(':').next().unwrap_or(item);
        let packages = self.retrieved.max(1);
        match verb {
            "Retrieving" => {
                let package = item.split(' ').next().unwrap_or("");
                if matches!(
                    package,
                    "InRelease" | "Release" | "Release.gpg" | "Packages" | ""
                ) {
                    return Some(BuildProgress::new("retrieving package index", 0, 0));
                }
                self.retrieved += 1;
                Some(BuildProgress::new(
                    format!("retrieving {package}"),
                    self.retrieved,
                    ESTIMATED_PACKAGES,
                ))
            }
            "Extracting" if !is_header => {
                self.extracted += 1;
                Some(BuildProgress::new(
                    format!("extracting {package}"),
                    self.extracted,
                    ESTIMATED_REQUIRED,
                ))
            }
            "Unpacking" if !is_header => {
                self.unpacked += 1;
                Some(BuildProgress::new(
                    format!("installing {package}"),
                    self.unpacked,
                    packages,
                ))
            }
            "Configuring" if !is_header => {
                self.configured += 1;
                Some(BuildProgress::new(
                    format!("configuring {package}"),
                    self.configured,
                    packages,
                ))
            }
            "Base" if item.starts_with("system installed") => {
                Some(BuildProgress::new("configuring", packages, packages))
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------- post-steps

/// One change made to a freshly debootstrapped tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PostStep {
    /// Run a shell script inside the tree with chroot.
    Chroot {
        what: &'static str,
        script: String,
    },
    /// Run an `apt-get` script inside the tree with chroot, reporting
    /// apt's progress (retrieving, installing, configuring each package).
    AptInstall {
        what: &'static str,
        script: String,
    },
    /// Copy the host's CA bundle (the first of `HOST_CA_BUNDLES` that
    /// exists) to `path`; nothing when the host has none.
    CopyHostCaBundle {
        path: &'static str,
    },
    /// Replace a file (never following a symlink out of the tree).
    WriteFile {
        path: &'static str,
        contents: String,
        mode: u32,
    },
    RemoveFile {
        path: &'static str,
    },
    /// Empty a directory, keeping it.
    RemoveContents {
        path: &'static str,
    },
    /// Make sure a directory exists with this mode and owner.
    Dir {
        path: &'static str,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// What turns debootstrap's output into the default sandbox image.
fn default_image_steps() -> Vec<PostStep> {
    use PostStep::*;
    vec![
        Chroot {
            what: "creating user daytona",
            script: format!(
                "set -e\n\
                 getent group {u} >/dev/null || groupadd --gid {g} {u}\n\
                 getent passwd {u} >/dev/null || useradd --uid {i} --gid {g} --create-home \
                 --home-dir /home/{u} --shell /bin/bash {u}\n",
                u = SANDBOX_USER,
                g = SANDBOX_GID,
                i = SANDBOX_UID
            ),
        },
        Chroot {
            what: "standing in for python3-pythran (SciPy's unused build compiler)",
            script: PYTHRAN_STAND_IN_SCRIPT.into(),
        },
        AptInstall {
            what:
                "installing TypeScript, npm, the Python language server and Python's data packages",
            script: apt_install_script(),
        },
        Chroot {
            what: "making matplotlib's default backend Agg (headless)",
            script: MATPLOTLIB_HEADLESS_SCRIPT.into(),
        },
        Chroot {
            what: "checking python and its data packages as daytona",
            script: PYTHON_CHECK_SCRIPT.into(),
        },
        CopyHostCaBundle {
            path: BUILD_CA_PATH,
        },
        Chroot {
            what: "installing typescript-language-server from npm",
            script: npm_install_script(),
        },
        RemoveFile {
            path: BUILD_CA_PATH,
        },
        WriteFile {
            path: "etc/sudoers.d/daytona",
            contents: format!("{SANDBOX_USER} ALL=(ALL) NOPASSWD:ALL\n"),
            mode: 0o440,
        },
        Chroot {
            what: "checking sudoers",
            script: "visudo --check --quiet --file=/etc/sudoers.d/daytona".into(),
        },
        WriteFile {
            path: "etc/hosts",
            contents: "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".into(),
            mode: 0o644,
        },
        // debootstrap copies the host's resolv.conf and hostname in; neither belongs in an image.
        WriteFile {
            path: "etc/resolv.conf",
            contents: String::new(),
            mode: 0o644,
        },
        WriteFile {
            path: "etc/hostname",
            contents: "localhost\n".into(),
            mode: 0o644,
        },
        // Daytona's images let `pip install` work without --break-system-packages.
        RemoveFile {
            path: "usr/lib/python3.11/EXTERNALLY-MANAGED",
        },
        RemoveContents {
            path: "var/cache/apt",
        },
        RemoveContents {
            path: "var/lib/apt/lists",
        },
        Dir {
            path: "var/lib/apt/lists/partial",
            mode: 0o700,
            uid: 0,
            gid: 0,
        },
        // Mount targets of the sandbox runtime.
        Dir {
            path: "proc",
            mode: 0o555,
            uid: 0,
            gid: 0,
        },
        Dir {
            path: "sys",
            mode: 0o555,
            uid: 0,
            gid: 0,
        },
        Dir {
            path: "dev",
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Dir {
            path: "tmp",
            mode: 0o1777,
            uid: 0,
            gid: 0,
        },
        Dir {
            path: "home/daytona",
            mode: 0o750,
            uid: SANDBOX_UID,
            gid: SANDBOX_GID,
        },
        Dir {
            path: ".atoll",
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    ]
}

/// Flushes the filesystem holding `dir` to disk.
fn sync_tree(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    nix::unistd::syncfs(&file).map_err(io::Error::from)
}

/// Host CA bundles tried in order by [`PostStep::CopyHostCaBundle`].
const HOST_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Installs an empty `python3-pythran` package before the apt step.
/// Debian's python3-scipy depends on Pythran, a compiler used only to build
/// SciPy, and Pythran pulls a C++ toolchain, Boost and BLAS headers (about
/// 500 MB, a third of the image) that SciPy never uses at run time. Its
/// version sorts below Debian's, so `apt-get install python3-pythran` in a
/// sandbox replaces it with the real one.
const PYTHRAN_STAND_IN_SCRIPT: &str = "set -e\n\
     d=/tmp/atoll-pythran-stand-in\n\
     mkdir -p $d/DEBIAN\n\
     cat >$d/DEBIAN/control <<'EOF'\n\
     Package: python3-pythran\n\
     Version: 0~atoll1\n\
     Architecture: all\n\
     Maintainer: Atoll <root@localhost>\n\
     Section: python\n\
     Priority: optional\n\
     Description: stand-in for Pythran, which SciPy needs only to be built\n \
     Atoll's default image installs this empty package instead of Pythran and\n \
     its C++ toolchain; apt-get install python3-pythran replaces it.\n\
     EOF\n\
     dpkg-deb --build $d $d.deb >/dev/null\n\
     dpkg -i $d.deb >/dev/null\n\
     rm -rf $d $d.deb\n";

/// Debian's /etc/matplotlibrc says `backend: TkAgg`, which fails without a
/// display; sandboxes have none, so Agg it is (`MPLBACKEND` still
/// overrides it).
const MATPLOTLIB_HEADLESS_SCRIPT: &str = "set -e\n\
     f=/etc/matplotlibrc\n\
     if grep -q '^backend *:' $f; then sed -i 's/^backend *:.*/backend: Agg/' $f; \
     else echo 'backend: Agg' >>$f; fi\n\
     grep -qx 'backend: Agg' $f\n";

/// Runs `python - <<'PY'` as the sandbox user: `python` is Python 3, the
/// data packages import, and matplotlib draws headless. It also leaves
/// matplotlib's font cache in daytona's home, so a sandbox's first chart
/// does not build it.
const PYTHON_CHECK_SCRIPT: &str = "set -e\n\
     setpriv --reuid=1000 --regid=1000 --clear-groups env HOME=/home/daytona python - <<'PY'\n\
     import sys\n\
     assert sys.version_info[0] == 3, sys.version\n\
     import numpy, pandas, scipy, requests, PIL\n\
     import scipy.optimize, scipy.stats, scipy.signal, scipy.interpolate, scipy.sparse.linalg\n\
     import matplotlib\n\
     import matplotlib.pyplot as plt\n\
     assert matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()\n\
     plt.plot([1, 2], [3, 4])\n\
     plt.savefig('/tmp/atoll-check.png')\n\
     PY\n\
     rm -f /tmp/atoll-check.png\n";

/// The chroot script that installs [`APT_PACKAGES`] from the mirror
/// debootstrap wrote into the tree's sources.list (its lists and cache are
/// emptied by later steps). dpkg skips its fsyncs, which double the time of
/// this step: a half-written tree is thrown away anyway, and the finished one
/// is synced once before it is committed.
fn apt_install_script() -> String {
    format!(
        "set -e\n\
         apt-get update -q\n\
         apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io {packages}\n\
         apt-get clean\n",
        packages = APT_PACKAGES.join(" "),
    )
}

/// The chroot script that installs [`NPM_PACKAGES`] into [`NPM_PREFIX`].
/// It runs while the tree still has the host's resolv.conf (debootstrap
/// copies it in; a later step empties it) and trusts the host's CA bundle
/// when the previous step copied one in. npm's cache is dropped afterwards.
fn npm_install_script() -> String {
    format!(
        "set -e\n\
         if [ -s /{ca} ]; then export NODE_EXTRA_CA_CERTS=/{ca}; fi\n\
         export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false\n\
         npm install --prefix {prefix} --omit=dev --no-progress --fetch-retries=1 {packages}\n\
         ln -sfn {prefix}/node_modules/typescript-language-server/lib/cli.mjs \
         /usr/local/bin/typescript-language-server\n\
         /usr/local/bin/typescript-language-server --version >/dev/null\n\
         rm -rf /root/.npm\n",
        ca = BUILD_CA_PATH,
        prefix = NPM_PREFIX,
        packages = NPM_PACKAGES.join(" "),
    )
}

/// Runs an apt script in the tree with its output (stdout and stderr,
/// merged) parsed into progress as it comes; on failure the last lines are
/// the error.
fn apt_in_chroot(
    root: &Path,
    chroot: &Path,
    script: &str,
    progress: &mut dyn FnMut(&BuildProgress),
) -> Result<(), String> {
    let mut child = build_command(chroot)
        .arg(root)
        .args(["/bin/sh", "-c", &format!("exec 2>&1\n{script}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running chroot: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| "chroot has no stdout pipe".to_string())?;
    let mut parser = AptProgress::default();
    let mut tail: VecDeque<String> = VecDeque::new();
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        tracing::debug!(target: "apt", "{line}");
        if let Some(p) = parser.line(&line) {
            progress(&p);
        }
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for chroot: {e}"))?;
    if !status.success() {
        let tail: Vec<String> = tail.into_iter().collect();
        return Err(format!("{status}; last output:\n{}", tail.join("\n")));
    }
    Ok(())
}

/// Turns `apt-get update` and `apt-get install` output into progress:
/// `Get:` lines are retrieval (the index before the install's package count
/// is known), dpkg's `Unpacking` and `Setting up` lines installation and
/// configuration, all counted against apt's "N newly installed".
#[derive(Debug, Default)]
struct AptProgress {
    total: u64,
    retrieved: u64,
    unpacked: u64,
    configured: u64,
}

impl AptProgress {
    fn line(&mut self, line: &str) -> Option<BuildProgress> {
        if let Some(part) = line.split(", ").find(|p| p.ends_with(" newly installed")) {
            self.total = part.split(' ').next()?.parse().ok()?;
            return None;
        }
        let package = |rest: &str| {
            let word = rest.split(' ').next().unwrap_or("");
            word.split(':').next().unwrap_or(word).to_string()
        };
        if line.starts_with("Get:") {
            // Get:3 http://deb.debian.org/debian bookworm/main amd64 libfoo amd64 1.0 [9 kB]
            let fields: Vec<&str> = line.split(' ').collect();
            if self.total == 0 || fields.len() < 6 {
                return Some(BuildProgress::new("retrieving package index", 0, 0));
            }
            self.retrieved += 1;
            return Some(BuildProgress::new(
                format!("retrieving {}", fields[4]),
                self.retrieved,
                self.total,
            ));
        }
        if let Some(rest) = line.strip_prefix("Unpacking ") {
            self.unpacked += 1;
            return Some(BuildProgress::new(
                format!("installing {}", package(rest)),
                self.unpacked,
                self.total,
            ));
        }
        if let Some(rest) = line.strip_prefix("Setting up ") {
            self.configured += 1;
            return Some(BuildProgress::new(
                format!("configuring {}", package(rest)),
                self.configured,
                self.total,
            ));
        }
        None
    }
}

impl PostStep {
    fn describe(&self) -> String {
        match self {
            PostStep::Chroot { what, .. } | PostStep::AptInstall { what, .. } => what.to_string(),
            PostStep::CopyHostCaBundle { path } => {
                format!("copying the host's CA bundle to /{path}")
            }
            PostStep::WriteFile { path, .. } => format!("writing /{path}"),
            PostStep::RemoveFile { path } => format!("removing /{path}"),
            PostStep::RemoveContents { path } => format!("emptying /{path}"),
            PostStep::Dir { path, .. } => format!("preparing /{path}"),
        }
    }

    fn apply(
        &self,
        root: &Path,
        chroot: &Path,
        progress: &mut dyn FnMut(&BuildProgress),
    ) -> Result<(), String> {
        match self {
            PostStep::AptInstall { script, .. } => apt_in_chroot(root, chroot, script, progress),
            PostStep::Chroot { script, .. } => {
                let output = build_command(chroot)
                    .arg(root)
                    .args(["/bin/sh", "-c", script])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("running chroot: {e}"))?;
                if !output.status.success() {
                    return Err(format!(
                        "{}: {}{}",
                        output.status,
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    ));
                }
                Ok(())
            }
            PostStep::WriteFile {
                path,
                contents,
                mode,
            } => {
                let target = inside(root, path)?;
                remove_if_present(&target)?;
                let err = |e: io::Error| format!("{}: {e}", target.display());
                fs::write(&target, contents).map_err(err)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(*mode)).map_err(err)?;
                chown(&target, Some(0), Some(0)).map_err(err)
            }
            PostStep::CopyHostCaBundle { path } => {
                let Some(bundle) = HOST_CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file())
                else {
                    return Ok(());
                };
                let target = inside(root, path)?;
                remove_if_present(&target)?;
                let err =
                    |e: io::Error| format!("{} -> {}: {e}", bundle.display(), target.display());
                fs::copy(bundle, &target).map_err(err)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).map_err(err)
            }
            PostStep::RemoveFile { path } => remove_if_present(&inside(root, path)?),
            PostStep::RemoveContents { path } => {
                let dir = inside(root, path)?;
                let entries = match fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(format!("{}: {e}", dir.display())),
                };
                for entry in entries.flatten() {
                    remove_tree(&entry.path())
                        .map_err(|e| format!("{}: {e}", entry.path().display()))?;
                }
                Ok(())
            }
            PostStep::Dir {
                path,
                mode,
                uid,
                gid,
            } => {
                let dir = inside(root, path)?;
                let err = |e: io::Error| format!("{}: {e}", dir.display());
                match fs::symlink_metadata(&dir) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        remove_if_present(&dir)?;
                        fs::create_dir(&dir).map_err(err)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir(&dir).map_err(err)?
                    }
                    Err(e) => return Err(err(e)),
                }
                fs::set_permissions(&dir, fs::Permissions::from_mode(*mode)).map_err(err)?;
                chown(&dir, Some(*uid), Some(*gid)).map_err(err)
            }
        }
    }
}

/// `root/rel`, refusing any existing ancestor that is a symlink, so writes
/// stay inside the tree (the host's /etc is one `../` away otherwise).
fn inside(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("{} is not a plain relative path", rel.display()));
    }
    let mut path = root.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(component) = components.next() {
        path.push(component);
        if components.peek().is_some() {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(format!(
                        "{} is a symlink; refusing to write through it",
                        path.display()
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(path)
}

fn remove_if_present(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_tree(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------- trees

/// Lazily unmounts anything mounted below `dir` (debootstrap mounts /proc
/// and /sys in its target and a killed run leaves them behind).
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut prefix = dir.as_os_str().as_bytes().to_vec();
    prefix.push(b'/');
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.as_os_str().as_bytes().starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        if let Err(err) = umount2(&point, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %point.display(), %err, "could not unmount");
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// `rm -r --one-file-system`: never descends into something mounted below
/// `path` (a bind-mounted host /dev must never be emptied).
fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    remove_tree_on(path, meta.dev())
}

fn remove_tree_on(path: &Path, dev: u64) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if meta.dev() != dev {
        return Err(io::Error::other(format!(
            "{} is a mount point; not removing across it",
            path.display()
        )));
    }
    for entry in fs::read_dir(path)? {
        remove_tree_on(&entry?.path(), dev)?;
    }
    fs::remove_dir(path)
}

/// The result of hashing a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeSummary {
    digest_hex: String,
    /// Bytes of regular files (hard links counted once) and symlink targets.
    size_bytes: u64,
}

/// SHA-256 over a deterministic walk of `root`: entries sorted by relative
/// path bytes; each contributes `path\0type\0mode\0uid\0gid\0payload\n`,
/// where payload is the content's SHA-256 for files, the target for
/// symlinks and `major:minor` for devices. Timestamps are not included.
/// `progress(done, total)` counts entries.
fn tree_digest(root: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<TreeSummary, ImageError> {
    let mut entries = Vec::new();
    walk(root, PathBuf::new(), &mut entries)?;
    entries.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));

    let total = entries.len() as u64;
    let step = (total / 200).max(1);
    let mut next_report = step;
    let mut tree = Sha256::new();
    let mut by_inode: HashMap<(u64, u64), String> = HashMap::new();
    let mut size_bytes = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    for (i, (rel, meta)) in entries.iter().enumerate() {
        let path = root.join(rel);
        let file_type = meta.file_type();
        let (kind, payload): (&[u8], Vec<u8>) = if file_type.is_file() {
            let key = (meta.dev(), meta.ino());
            let hex = match by_inode.get(&key) {
                Some(hex) => hex.clone(),
                None => {
                    let hex =
                        hash_file(&path, &mut buf).map_err(ImageError::io("hashing", &path))?;
                    size_bytes += meta.len();
                    by_inode.insert(key, hex.clone());
                    hex
                }
            };
            (b"f", hex.into_bytes())
        } else if file_type.is_dir() {
            (b"d", Vec::new())
        } else if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(ImageError::io("reading symlink", &path))?;
            size_bytes += target.as_os_str().len() as u64;
            (b"l", target.into_os_string().into_vec())
        } else {
            use std::os::unix::fs::FileTypeExt;
            let rdev = meta.rdev();
            let device = format!("{}:{}", libc::major(rdev), libc::minor(rdev)).into_bytes();
            if file_type.is_char_device() {
                (b"c", device)
            } else if file_type.is_block_device() {
                (b"b", device)
            } else if file_type.is_fifo() {
                (b"p", Vec::new())
            } else {
                (b"s", Vec::new())
            }
        };
        let rel_bytes: &[u8] = if rel.as_os_str().is_empty() {
            b"."
        } else {
            rel.as_os_str().as_bytes()
        };
        tree.update(rel_bytes);
        tree.update(b"\0");
        tree.update(kind);
        tree.update(format!(
            "\0{:o}\0{}\0{}\0",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        ));
        tree.update(&payload);
        tree.update(b"\n");
        let done = i as u64 + 1;
        if done >= next_report || done == total {
            progress(done, total);
            next_report = done + step;
        }
    }
    Ok(TreeSummary {
        digest_hex: hex::encode(tree.finalize()),
        size_bytes,
    })
}

fn walk(
    root: &Path,
    rel: PathBuf,
    out: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<(), ImageError> {
    let path = root.join(&rel);
    let meta = fs::symlink_metadata(&path).map_err(ImageError::io("inspecting", &path))?;
    let is_dir = meta.is_dir();
    out.push((rel.clone(), meta));
    if is_dir {
        for entry in fs::read_dir(&path).map_err(ImageError::io("listing", &path))? {
            let entry = entry.map_err(ImageError::io("listing", &path))?;
            walk(root, rel.join(entry.file_name()), out)?;
        }
    }
    Ok(())
}

fn hash_file(path: &Path, buf: &mut [u8]) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

// ---------------------------------------------------------------- misc

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        // Uniqueness, not secrecy, is what matters here.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = nanos ^ ((std::process::id() as u128) << 64);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    hex::encode(buf)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Allocated bytes of the tree at `root` (symlinks not followed; hard
/// links counted once), walked with an explicit stack.
fn tree_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut inodes = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.nlink() > 1 && !m.is_dir() && !inodes.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("atoll-image-test-{tag}-{}", random_hex(6)));
            fs::create_dir_all(&path).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn small_tree(root: &Path) {
        fs::create_dir_all(root.join("etc/app")).unwrap();
        fs::write(root.join("etc/app/conf"), "a = 1\n").unwrap();
        fs::write(root.join("etc/hostname"), "localhost\n").unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).unwrap();
    }

    fn digest(root: &Path) -> TreeSummary {
        tree_digest(root, &mut |_, _| {}).unwrap()
    }

    #[test]
    fn same_tree_gives_same_digest() {
        let (a, b) = (TempDir::new("a"), TempDir::new("b"));
        small_tree(&a.0);
        small_tree(&b.0);
        let (da, db) = (digest(&a.0), digest(&b.0));
        assert_eq!(da, db);
        assert_eq!(da.digest_hex.len(), 64);
        // conf (6) + hostname (10, hard link counted once) + tool (18) + symlink target (7)
        assert_eq!(da.size_bytes, 6 + 10 + 18 + 7);
        assert_eq!(digest(&a.0), da, "hashing twice is stable");
    }

    #[test]
    fn timestamps_do_not_change_the_digest() {
        let t = TempDir::new("mtime");
        small_tree(&t.0);
        let before = digest(&t.0);
        let file = File::options()
            .write(true)
            .open(t.0.join("etc/app/conf"))
            .unwrap();
        file.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
        assert_eq!(digest(&t.0), before);
    }

    #[test]
    fn a_changed_mode_changes_the_digest() {
        let t = TempDir::new("mode");
        small_tree(&t.0);
        let before = digest(&t.0);
        fs::set_permissions(t.0.join("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_ne!(digest(&t.0), before);
    }

    #[test]
    fn changed_content_target_name_or_owner_change_the_digest() {
        let t = TempDir::new("content");
        small_tree(&t.0);
        let mut seen = vec![digest(&t.0).digest_hex];
        let mut check = |what: &str| {
            let d = digest(&t.0).digest_hex;
            assert!(!seen.contains(&d), "{what} did not change the digest");
            seen.push(d);
        };
        fs::write(t.0.join("etc/app/conf"), "a = 2\n").unwrap();
        check("content");
        fs::remove_file(t.0.join("bin")).unwrap();
        symlink("usr/sbin", t.0.join("bin")).unwrap();
        check("symlink target");
        fs::rename(t.0.join("etc/app/conf"), t.0.join("etc/app/conf2")).unwrap();
        check("rename");
        fs::create_dir(t.0.join("empty")).unwrap();
        check("new empty dir");
        if nix::unistd::geteuid().is_root() {
            chown(t.0.join("etc/hostname"), Some(1000), Some(1000)).unwrap();
            check("owner");
        }
    }

    #[test]
    fn sources_list_one_line_format() {
        let text = "# comment\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://ftp.de.debian.org/debian/ bookworm main contrib # trailing\n\
                    deb http://security.debian.org/debian-security bookworm-security main\n";
        let files = vec![(PathBuf::from("/etc/apt/sources.list"), text.to_string())];
        assert_eq!(
            mirror_from_sources(&files, "bookworm").as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
    }

    #[test]
    fn sources_deb822_format_skips_security_and_third_party() {
        let debian = "Types: deb\n\
                      # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                      URIs: http://deb.debian.org/debian\n\
                      Suites: bookworm bookworm-updates\n\
                      Components: main\n\
                      Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
                      \n\
                      Types: deb\n\
                      URIs: http://deb.debian.org/debian-security\n\
                      Suites: bookworm-security\n\
                      Components: main\n";
        let node = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n";
        let google = "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n";
        let files = vec![
            (
                PathBuf::from("/etc/apt/sources.list.d/a.list"),
                google.to_string(),
            ),
            (
                PathBuf::from("/etc/apt/sources.list.d/b.sources"),
                node.to_string(),
            ),
            (
                PathBuf::from("/etc/apt/sources.list.d/debian.sources"),
                debian.to_string(),
            ),
        ];
        assert_eq!(
            mirror_from_sources(&files, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
    }

    #[test]
    fn sources_prefer_exact_suite_then_any_release_suite() {
        let trixie = "Types: deb\nURIs: http://mirror.example/debian/\nSuites: trixie trixie-updates\nComponents: main\n";
        let files = vec![(PathBuf::from("x.sources"), trixie.to_string())];
        assert_eq!(
            mirror_from_sources(&files, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );

        let disabled = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n";
        let files = vec![
            (PathBuf::from("a.sources"), disabled.to_string()),
            (PathBuf::from("b.sources"), trixie.to_string()),
        ];
        assert_eq!(
            mirror_from_sources(&files, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );

        let continued =
            "Types: deb\nURIs:\n http://cont.example/debian\nSuites: bookworm\nComponents: main\n";
        let files = vec![(PathBuf::from("c.sources"), continued.to_string())];
        assert_eq!(
            mirror_from_sources(&files, "bookworm").as_deref(),
            Some("http://cont.example/debian")
        );
    }

    #[test]
    fn sources_without_a_debian_archive_give_none() {
        let ubuntu = "deb http://archive.ubuntu.com/ubuntu jammy main restricted\n";
        let files = vec![(PathBuf::from("/etc/apt/sources.list"), ubuntu.to_string())];
        assert_eq!(mirror_from_sources(&files, "bookworm"), None);
        assert_eq!(mirror_from_sources(&[], "bookworm"), None);
    }

    #[test]
    fn debootstrap_lines_become_progress() {
        let mut p = DebootstrapProgress::default();
        let mut out = Vec::new();
        for line in [
            "I: Target architecture can be executed",
            "I: Retrieving InRelease ",
            "I: Retrieving adduser 3.134",
            "I: Validating adduser 3.134",
            "I: Retrieving apt 2.6.1",
            "I: Chosen extractor for .deb packages: dpkg-deb",
            "I: Extracting adduser...",
            "I: Unpacking required packages...",
            "I: Unpacking libc6:amd64...",
            "I: Configuring required packages...",
            "I: Configuring libc-bin...",
            "W: something odd",
            "I: Base system installed successfully.",
        ] {
            out.extend(p.line(line));
        }
        let got: Vec<(String, u64, u64)> = out
            .into_iter()
            .map(|b| (b.phase, b.done, b.total))
            .collect();
        assert_eq!(
            got,
            vec![
                ("retrieving package index".to_string(), 0, 0),
                ("retrieving adduser".to_string(), 1, ESTIMATED_PACKAGES),
                ("retrieving apt".to_string(), 2, ESTIMATED_PACKAGES),
                ("extracting adduser".to_string(), 1, ESTIMATED_REQUIRED),
                ("installing libc6".to_string(), 1, 2),
                ("configuring libc-bin".to_string(), 1, 2),
                ("configuring".to_string(), 2, 2),
            ]
        );
    }

    #[test]
    fn progress_total_never_below_done() {
        let p = BuildProgress::new("x", 200, 154);
        assert_eq!((p.done, p.total), (200, 200));
    }

    #[test]
    fn image_names_are_validated() {
        for ok in [
            DEFAULT_IMAGE,
            "python:3.12",
            "docker.io/library/debian:bookworm",
            "a@sha256:00",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/./b",
            "a/.hidden",
            "sp ace",
            "a\\b",
            "trail/",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    fn fake_layer(store: &ImageStore, hex: &str) -> PathBuf {
        let layer = store.layer_path(hex);
        fs::create_dir_all(layer.join("etc")).unwrap();
        layer
    }

    #[test]
    fn layer_proofs_are_per_scope() {
        let t = TempDir::new("proofs");
        let store = ImageStore::open(&t.0).unwrap();
        let d = format!("sha256:{}", "ab".repeat(32));
        assert!(!store.proven("org-a", &d));
        store.prove("org-a", &d).unwrap();
        assert!(store.proven("org-a", &d));
        assert!(
            !store.proven("org-b", &d),
            "one scope's proof is not another's"
        );
        assert!(!store.proven("", &d));
        assert!(!store.proven("org-a", "sha256:../../x"));
        assert!(store.prove("org-a", "not-a-digest").is_err());
    }

    #[test]
    fn layered_images_share_layers_and_collection_keeps_what_is_used() {
        let t = TempDir::new("collect");
        let store = ImageStore::open(&t.0).unwrap();
        let [base, a, b, orphan, pinned] =
            ["0a", "0b", "0c", "0d", "0e"].map(|h| format!("sha256:{}", h.repeat(32)));
        for d in [&base, &a, &b, &orphan, &pinned] {
            fs::write(
                fake_layer(&store, layer_hex(d).unwrap()).join("etc/f"),
                "12345",
            )
            .unwrap();
        }
        let put = |name: &str, layers: Vec<String>| {
            store
                .put_layered(LayeredImage {
                    name: name.into(),
                    digest: format!("sha256:{}", "ff".repeat(32)),
                    layers,
                    size_bytes: 10,
                    config: ImageConfig {
                        env: vec!["A=1".into()],
                        cmd: vec!["sleep".into(), "1".into()],
                        ..ImageConfig::default()
                    },
                    entrypoint: vec![],
                    source: Some("reg/x:1".into()),
                })
                .unwrap()
        };
        let img = put("x:a", vec![base.clone(), a.clone()]);
        put("x:b", vec![base.clone(), b.clone()]);
        assert_eq!(img.layers.len(), 2);
        assert_eq!(img.layers[0], store.layer_path(layer_hex(&base).unwrap()));
        assert_eq!(img.entrypoint, vec!["sleep".to_string(), "1".into()]);
        assert_eq!(img.env, vec!["A=1".to_string()]);
        assert_eq!(store.get("x:a").unwrap().unwrap(), img);
        // A ref naming a layer that is not stored is refused.
        let missing = store.put_layered(LayeredImage {
            name: "x:c".into(),
            digest: base.clone(),
            layers: vec![format!("sha256:{}", "99".repeat(32))],
            size_bytes: 0,
            config: ImageConfig::default(),
            entrypoint: vec![],
            source: None,
        });
        assert!(matches!(missing, Err(ImageError::MissingLayer { .. })));

        // Within the grace nothing goes; after it, only the orphan.
        let in_use: std::collections::HashSet<PathBuf> =
            [store.layer_path(layer_hex(&pinned).unwrap())].into();
        let hour = std::time::Duration::from_secs(3600);
        let none = store.collect(hour, hour, &in_use).unwrap();
        assert_eq!(none, CollectReport::default());
        let r = store
            .collect(std::time::Duration::ZERO, hour, &in_use)
            .unwrap();
        assert_eq!((r.layers, r.bytes), (1, 5));
        assert!(!store.layer_path(layer_hex(&orphan).unwrap()).exists());
        // Removing x:b frees its own layer but not the shared base.
        assert!(store.remove("x:b").unwrap());
        assert!(!store.remove("x:b").unwrap());
        let r = store
            .collect(std::time::Duration::ZERO, hour, &in_use)
            .unwrap();
        assert_eq!(r.layers, 1);
        assert!(!store.layer_path(layer_hex(&b).unwrap()).exists());
        assert!(store.get("x:a").unwrap().unwrap().is_complete());
        assert!(store.layer_path(layer_hex(&pinned).unwrap()).exists());
        assert_eq!(layer_digest_of(&img.layers[1]).as_deref(), Some(a.as_str()));

        // A build cache ref unused for its time goes, and its layer after
        // it; ordinary refs never do.
        put("atoll/build-cache/0123", vec![base.clone(), pinned.clone()]);
        let r = store
            .collect(std::time::Duration::ZERO, hour, &[].into())
            .unwrap();
        assert_eq!(r.layers, 0);
        let r = store
            .collect(
                std::time::Duration::ZERO,
                std::time::Duration::ZERO,
                &[].into(),
            )
            .unwrap();
        assert_eq!(r.layers, 1);
        assert!(store.get("atoll/build-cache/0123").unwrap().is_none());
        assert!(!store.layer_path(layer_hex(&pinned).unwrap()).exists());
        assert!(store.get("x:a").unwrap().unwrap().is_complete());
    }

    #[test]
    fn refs_round_trip_and_list_skips_broken_ones() {
        let t = TempDir::new("store");
        let store = ImageStore::open(&t.0).unwrap();
        assert_eq!(store.get(DEFAULT_IMAGE).unwrap(), None);
        let hex = "ab".repeat(32);
        let layer = fake_layer(&store, &hex);
        let record = RefRecord {
            name: DEFAULT_IMAGE.into(),
            digest: format!("sha256:{hex}"),
            size_bytes: 42,
            created_at_ms: 1_700_000_000_000,
            recipe: serde_json::to_value(Recipe::default_image()).unwrap(),
            entrypoint: vec!["sleep".into(), "infinity".into()],
            layers: vec![],
            config: None,
            source: None,
        };
        write_ref(&store.ref_path(DEFAULT_IMAGE).unwrap(), &record).unwrap();
        assert!(t.0.join("refs/atoll/default:bookworm.json").is_file());

        let image = store.get(DEFAULT_IMAGE).unwrap().unwrap();
        assert_eq!(
            image,
            Image {
                name: DEFAULT_IMAGE.into(),
                digest: format!("sha256:{hex}"),
                layers: vec![layer],
                size_bytes: 42,
                created_at_ms: 1_700_000_000_000,
                entrypoint: vec!["sleep".into(), "infinity".into()],
                env: vec![],
                workdir: None,
                user: None,
                source: None,
            }
        );
        // Reused without a build (which would need root and network).
        let reused = store
            .ensure_default(&mut |_| panic!("no build expected"))
            .unwrap();
        assert_eq!(reused, image);

        // A ref whose layer is gone: get says so, list skips it.
        let other = "cd".repeat(32);
        let rec2 = RefRecord {
            name: "other:1".into(),
            digest: format!("sha256:{other}"),
            ..record.clone()
        };
        write_ref(&store.ref_path("other:1").unwrap(), &rec2).unwrap();
        assert!(matches!(
            store.get("other:1"),
            Err(ImageError::MissingLayer { .. })
        ));
        fs::write(t.0.join("refs/garbage.json"), "{not json").unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, vec![DEFAULT_IMAGE.to_string()]);
        assert!(matches!(
            store.get("garbage"),
            Err(ImageError::CorruptRef { .. })
        ));
    }

    #[test]
    fn a_changed_recipe_is_not_reused() {
        let t = TempDir::new("recipe");
        let store = ImageStore::open(&t.0).unwrap();
        let hex = "ef".repeat(32);
        fake_layer(&store, &hex);
        let mut old = Recipe::default_image();
        old.version -= 1;
        let record = RefRecord {
            name: DEFAULT_IMAGE.into(),
            digest: format!("sha256:{hex}"),
            size_bytes: 1,
            created_at_ms: 1,
            recipe: serde_json::to_value(old).unwrap(),
            entrypoint: Vec::new(),
            layers: vec![],
            config: None,
            source: None,
        };
        write_ref(&store.ref_path(DEFAULT_IMAGE).unwrap(), &record).unwrap();
        assert!(store
            .reusable(DEFAULT_IMAGE, &Recipe::default_image())
            .unwrap()
            .is_none());
        // ... but it is still a stored image.
        assert!(store.get(DEFAULT_IMAGE).unwrap().is_some());
    }

    #[test]
    fn ref_json_uses_the_documented_field_names() {
        let record = RefRecord {
            name: "n".into(),
            digest: "sha256:00".into(),
            size_bytes: 3,
            created_at_ms: 4,
            recipe: serde_json::json!({"version": 1}),
            entrypoint: vec!["sleep".into(), "infinity".into()],
            layers: vec![],
            config: None,
            source: None,
        };
        let value = serde_json::to_value(&record).unwrap();
        let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "createdAtMs",
                "digest",
                "entrypoint",
                "name",
                "recipe",
                "sizeBytes"
            ]
        );
        // Refs written before entrypoints existed still read (no entrypoint).
        let old: RefRecord = serde_json::from_str(
            r#"{"name":"n","digest":"sha256:00","sizeBytes":3,"createdAtMs":4}"#,
        )
        .unwrap();
        assert!(old.entrypoint.is_empty());
    }

    #[test]
    fn debootstrap_command_is_the_documented_one() {
        let args = debootstrap_args(&Recipe::default_image(), "http://m/debian", Path::new("/t"));
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--variant=minbase",
                "--include=python3,python3-pip,python3-venv,git,curl,ca-certificates,nodejs,procps,sudo",
                "bookworm",
                "/t",
                "http://m/debian",
            ]
        );
    }

    #[test]
    fn post_steps_prepare_user_sudo_and_mount_targets() {
        let steps = default_image_steps();
        let dirs: Vec<(&str, u32, u32)> = steps
            .iter()
            .filter_map(|s| match s {
                PostStep::Dir {
                    path, mode, uid, ..
                } => Some((*path, *mode, *uid)),
                _ => None,
            })
            .collect();
        for want in [
            ("proc", 0o555, 0),
            ("sys", 0o555, 0),
            ("dev", 0o755, 0),
            ("tmp", 0o1777, 0),
            (".atoll", 0o755, 0),
            ("home/daytona", 0o750, 1000),
        ] {
            assert!(dirs.contains(&want), "missing {want:?}");
        }
        assert!(steps.contains(&PostStep::WriteFile {
            path: "etc/sudoers.d/daytona",
            contents: "daytona ALL=(ALL) NOPASSWD:ALL\n".into(),
            mode: 0o440
        }));
        let user = steps.iter().find_map(|s| match s {
            PostStep::Chroot { script, .. } if script.contains("useradd") => Some(script.clone()),
            _ => None,
        });
        let user = user.expect("a useradd step");
        // npm runs with the host's CA bundle, which is gone before the resolv.conf step.
        let pos = |want: &PostStep| steps.iter().position(|s| s == want);
        let ca = pos(&PostStep::CopyHostCaBundle {
            path: BUILD_CA_PATH,
        })
        .expect("CA copy step");
        let npm = steps
            .iter()
            .position(
                |s| matches!(s, PostStep::Chroot { script, .. } if script.contains("npm install")),
            )
            .expect("npm step");
        let ca_gone = pos(&PostStep::RemoveFile {
            path: BUILD_CA_PATH,
        })
        .expect("CA removal step");
        let resolv = steps
            .iter()
            .position(|s| {
                matches!(
                    s,
                    PostStep::WriteFile {
                        path: "etc/resolv.conf",
                        ..
                    }
                )
            })
            .expect("resolv.conf step");
        assert!(ca < npm && npm < ca_gone && ca_gone < resolv);
        let script = npm_install_script();
        assert!(script
            .contains("npm install --prefix /usr/local/lib/typescript-language-server --omit=dev"));
        assert!(script.contains("typescript-language-server@4.4.1 typescript@5.9.3"));
        let apt = steps
            .iter()
            .position(|s| matches!(s, PostStep::AptInstall { script, .. } if script.contains("apt-get install")))
            .expect("apt step");
        assert!(apt < npm && apt < resolv);
        let apt_script = apt_install_script();
        assert!(apt_script.contains("node-typescript npm python3-pylsp"));
        for package in [
            "python-is-python3",
            "python3-numpy",
            "python3-pandas",
            "python3-matplotlib",
            "python3-requests",
            "python3-pil",
            "python3-scipy",
        ] {
            assert!(apt_script.contains(package), "{package}");
        }
        // matplotlib is made headless after it is installed, then checked
        // (as daytona) while the tree still resolves names.
        let script_pos = |needle: &str| {
            steps
                .iter()
                .position(
                    |s| matches!(s, PostStep::Chroot { script, .. } if script.contains(needle)),
                )
                .unwrap_or_else(|| panic!("no step runs {needle:?}"))
        };
        // Pythran's stand-in is installed before apt could pull the real one.
        assert!(script_pos("Package: python3-pythran") < apt);
        assert!(PYTHRAN_STAND_IN_SCRIPT.contains("Version: 0~atoll1\nArchitecture: all\n"));
        assert!(PYTHRAN_STAND_IN_SCRIPT.contains("be built\n Atoll's default image"));
        let headless = script_pos("backend: Agg");
        let check = script_pos("python - <<'PY'");
        assert!(apt < headless && headless < check && check < resolv);
        assert!(
            user.contains("--uid 1000 --gid 1000")
                && user.contains("--home-dir /home/daytona --shell /bin/bash daytona")
        );
    }

    #[test]
    fn apt_output_becomes_progress() {
        let mut p = AptProgress::default();
        let phases: Vec<Option<(String, u64, u64)>> = [
            "Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]",
            "Reading package lists...",
            "0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.",
            "Get:1 http://deb.debian.org/debian bookworm/main amd64 python3-numpy amd64 1:1.24.2-1 [4900 kB]",
            "Unpacking python3-numpy (1:1.24.2-1) ...",
            "Unpacking libfoo:amd64 (1.0) ...",
            "Setting up libfoo:amd64 (1.0) ...",
            "Processing triggers for libc-bin (2.36-9) ...",
        ]
        .iter()
        .map(|l| p.line(l).map(|b| (b.phase, b.done, b.total)))
        .collect();
        assert_eq!(
            phases,
            vec![
                Some(("retrieving package index".to_string(), 0, 0)),
                None,
                None,
                Some(("retrieving python3-numpy".to_string(), 1, 3)),
                Some(("installing python3-numpy".to_string(), 1, 3)),
                Some(("installing libfoo".to_string(), 2, 3)),
                Some(("configuring libfoo".to_string(), 1, 3)),
                None,
            ]
        );
    }

    #[test]
    fn inside_refuses_symlinked_ancestors() {
        let t = TempDir::new("inside");
        fs::create_dir(t.0.join("real")).unwrap();
        symlink("/", t.0.join("etc")).unwrap();
        assert!(inside(&t.0, "etc/passwd").is_err());
        assert!(inside(&t.0, "../x").is_err());
        assert_eq!(inside(&t.0, "real/x").unwrap(), t.0.join("real/x"));
        // The last component may be a symlink: WriteFile replaces it rather than following it.
        symlink("/etc/hostname", t.0.join("real/link")).unwrap();
        let step = PostStep::WriteFile {
            path: "real/link",
            contents: "x".into(),
            mode: 0o644,
        };
        if nix::unistd::geteuid().is_root() {
            step.apply(&t.0, Path::new("/usr/sbin/chroot"), &mut |_| {})
                .unwrap();
            assert!(fs::symlink_metadata(t.0.join("real/link"))
                .unwrap()
                .is_file());
        }
    }

    #[test]
    fn remove_tree_removes_nested_content() {
        let t = TempDir::new("rm");
        fs::create_dir(t.0.join("x")).unwrap();
        small_tree(&t.0.join("x"));
        remove_tree(&t.0.join("x")).unwrap();
        assert!(!t.0.join("x").exists());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\134c"),
            PathBuf::from("/a b\\c")
        );
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    /// Runs the post-steps and the hash on a copy of a real debootstrap tree:
    /// `ATOLL_TEST_ROOTFS=/tmp/copy cargo test -p atoll-runner -- --ignored post_steps_on_real`
    /// (needs root; modifies the tree).
    #[test]
    #[ignore = "needs root and a debootstrapped tree in ATOLL_TEST_ROOTFS"]
    fn post_steps_on_real_tree_as_root() {
        let root = PathBuf::from(std::env::var("ATOLL_TEST_ROOTFS").expect("ATOLL_TEST_ROOTFS"));
        for step in default_image_steps() {
            step.apply(&root, Path::new("/usr/sbin/chroot"), &mut |_| {})
                .unwrap_or_else(|e| panic!("{}: {e}", step.describe()));
        }
        let start = Instant::now();
        let summary = digest(&root);
        eprintln!(
            "digest {} size {} in {:?}",
            summary.digest_hex,
            summary.size_bytes,
            start.elapsed()
        );
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(
            passwd.contains("daytona:x:1000:1000::/home/daytona:/bin/bash"),
            "{passwd}"
        );
    }

    /// The whole build, into `ATOLL_TEST_IMAGES_DIR` (default /var/lib/atoll/images).
    #[test]
    #[ignore = "needs root and network; takes about three minutes"]
    fn ensure_default_builds_as_root() {
        let dir = std::env::var("ATOLL_TEST_IMAGES_DIR")
            .unwrap_or_else(|_| "/var/lib/atoll/images".into());
        let store = ImageStore::open(Path::new(&dir)).unwrap();
        let start = Instant::now();
        let mut last = String::new();
        let image = store
            .ensure_default(&mut |p| {
                let word = p.phase.split(' ').next().unwrap_or("").to_string();
                if word != last {
                    eprintln!(
                        "{:>6.1}s {} {}/{}",
                        start.elapsed().as_secs_f64(),
                        p.phase,
                        p.done,
                        p.total
                    );
                    last = word;
                }
            })
            .unwrap();
        eprintln!("{image:?} in {:?}", start.elapsed());
        assert!(image.layers[0].join("usr/bin/python3").exists());
        assert_eq!(store.get(DEFAULT_IMAGE).unwrap(), Some(image));
    }
}
