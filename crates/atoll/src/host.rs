//! What a host that runs sandboxes needs, shared by `atoll serve` (its
//! embedded runner) and `atoll runner`: the flags of the sandbox runtime,
//! and `prepare`, which builds the default image if it is missing and
//! starts the namespace runtime under a data directory.

use anyhow::{Context, Result};
use atoll_runner::image::{Image, ImageStore};
use atoll_runner::{NamespaceRuntime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct HostArgs {
    /// Archive store: `s3://bucket[/prefix]` for an S3-compatible bucket
    /// (credentials, region and endpoint from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP);
    /// default: <data-dir>/archives.
    #[arg(long, env = "ATOLL_ARCHIVE_URL")]
    pub archive_url: Option<String>,
    /// Volume store: `s3://bucket[/prefix]` keeps each volume under a
    /// prefix of an S3-compatible bucket, mounted with s3fs where a sandbox
    /// needs it (every runner with the same bucket reaches every volume; no
    /// quota). Credentials and endpoint as for the archive store. Default:
    /// an ext4 image per volume on the runner that made it.
    #[arg(long, env = "ATOLL_VOLUMES_URL")]
    pub volumes_url: Option<String>,
    /// Sandbox network: `auto` (each sandbox gets a routed veth with NAT
    /// egress, addresses from a free /20 of 10.208.0.0/12: 4,093
    /// sandboxes), a CIDR to take addresses from (e.g. `10.50.0.0/16`), or
    /// `off` (loopback only).
    #[arg(long, env = "ATOLL_NETWORK", default_value = "auto")]
    pub network: String,
    /// Let sandboxes reach private networks (RFC 1918, 100.64.0.0/10),
    /// closed by default. The host itself, link-local addresses (cloud
    /// metadata) and other sandboxes stay closed.
    #[arg(long, env = "ATOLL_EGRESS_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub egress_allow_private: bool,
    /// Most connections one sandbox may have open (tracked by the host)
    /// at once; new ones past it are refused. 0: no cap.
    #[arg(long, env = "ATOLL_SANDBOX_MAX_CONNECTIONS", default_value_t = atoll_runner::network::DEFAULT_MAX_CONNECTIONS)]
    pub sandbox_max_connections: u32,
    /// Disk bandwidth of each sandbox, reads and writes each, in MiB/s
    /// (blkio/io controller on its disk's device). 0: unlimited.
    #[arg(long, env = "ATOLL_SANDBOX_IO_MBPS", default_value_t = 256)]
    pub sandbox_io_mbps: u64,
    /// Disk operations per second of each sandbox, reads and writes each.
    /// 0: unlimited.
    #[arg(long, env = "ATOLL_SANDBOX_IO_IOPS", default_value_t = 10_000)]
    pub sandbox_io_iops: u64,
    /// Where sandbox disks live: `auto` (a host filesystem with reflinks
    /// as it is; otherwise a loop-backed XFS pool with reflinks,
    /// <data-dir>/sandboxes.xfs mounted at <data-dir>/sandboxes, made on
    /// first start if mkfs.xfs is installed), `xfs` (the pool, or fail),
    /// or `host` (the host filesystem as it is). With reflinks a fork
    /// clones its parent's disk in milliseconds and shares its blocks;
    /// without, it copies them.
    #[arg(long, env = "ATOLL_SANDBOXES_FS", default_value = "auto")]
    pub sandboxes_fs: atoll_runner::sandbox_fs::Mode,
    /// Size of the XFS pool when it is made, in GiB (sparse: it takes
    /// only what sandboxes write). Default: the size of the filesystem
    /// holding the data dir.
    #[arg(long, env = "ATOLL_SANDBOXES_FS_GIB")]
    pub sandboxes_fs_gib: Option<u64>,
    /// Image store directory (default: <data-dir>/images).
    #[arg(long, env = "ATOLL_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Pull images of a registry from a mirror instead:
    /// `REGISTRY=MIRROR` (`docker.io=mirror.lan:5000`), repeatable.
    #[arg(
        long = "registry-mirror",
        env = "ATOLL_REGISTRY_MIRRORS",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
    /// A registry (`host[:port]`) reached without TLS verification, or
    /// over plain HTTP, as Docker's `insecure-registries`; repeatable.
    /// Loopback registries always are.
    #[arg(
        long = "insecure-registry",
        env = "ATOLL_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// How long an image layer nothing uses is kept before it is deleted.
    #[arg(long, env = "ATOLL_IMAGE_GC_GRACE_SECS", default_value_t = 3600)]
    pub image_gc_grace_secs: u64,
    /// How long a cached build step (and a build's base image) nothing
    /// used is kept.
    #[arg(long, env = "ATOLL_BUILD_CACHE_DAYS", default_value_t = 7)]
    pub build_cache_days: u64,
}

impl HostArgs {
    /// The registry settings the flags give.
    pub fn registry_config(&self) -> Result<atoll_runner::oci::registry::RegistryConfig> {
        let mut mirrors = std::collections::HashMap::new();
        for m in &self.registry_mirrors {
            let (from, to) = m
                .split_once('=')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .with_context(|| format!("--registry-mirror {m:?}: expected REGISTRY=MIRROR"))?;
            let from = match from {
                "index.docker.io" | "registry-1.docker.io" => "docker.io",
                f => f,
            };
            mirrors.insert(from.to_string(), to.trim_end_matches('/').to_string());
        }
        Ok(atoll_runner::oci::registry::RegistryConfig {
            mirrors,
            insecure: self.insecure_registries.clone(),
        })
    }
}

/// The runtime the control plane drives on this host.
pub fn local_runtime(host: &Host, args: &HostArgs) -> Result<atoll_runner::local::LocalRuntime> {
    let volumes = atoll_runner::volumes::Backend::from_url(args.volumes_url.as_deref())
        .map_err(|e| anyhow::anyhow!("--volumes-url: {e}"))?;
    atoll_runner::local::LocalRuntime::new(
        host.runtime.clone(),
        host.images.clone(),
        args.registry_config()?,
        volumes,
    )
    .map_err(|e| anyhow::anyhow!("opening the volume store: {e}"))
}

/// Deletes image layers nothing uses (no image, no sandbox of this host)
/// once they are older than the grace, every ten minutes.
pub fn spawn_image_collector(host: &Host, grace: Duration, cache_ttl: Duration) {
    let runtime = host.runtime.clone();
    let images = host.images.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            let (runtime, images) = (runtime.clone(), images.clone());
            let done = tokio::task::spawn_blocking(move || {
                images.collect(grace, cache_ttl, &runtime.layers_in_use())
            })
            .await;
            match done {
                Ok(Ok(r)) if r.layers > 0 => {
                    tracing::info!(
                        layers = r.layers,
                        bytes = r.bytes,
                        "collected unused image layers"
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "image collection failed"),
                Err(e) => tracing::warn!(error = %e, "image collection task failed"),
            }
        }
    });
}

/// A host ready to run sandboxes.
pub struct Host {
    pub runtime: Arc<NamespaceRuntime>,
    pub images: Arc<ImageStore>,
    pub default_image: Image,
}

/// Builds the default image if it is missing and starts the runtime with
/// its state under `data_dir`.
pub fn prepare(args: &HostArgs, data_dir: &Path) -> Result<Host> {
    let network = match args.network.as_str() {
        "off" => None,
        spec => Some(atoll_runner::network::NetworkConfig {
            block: match spec {
                "auto" => None,
                cidr => Some(
                    atoll_runner::network::Cidr::parse(cidr)
                        .context("--network (ATOLL_NETWORK): auto, off or a CIDR")?,
                ),
            },
            lock_dir: PathBuf::from("/run/atoll/net"),
            pool_size: 4,
            allow_private: args.egress_allow_private,
            max_connections: args.sandbox_max_connections,
        }),
    };
    let images_dir = args
        .images_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("images"));
    let default_image = crate::serve::ensure_default_image(&images_dir)?;
    let images = Arc::new(ImageStore::open(&images_dir)?);
    let exe = std::env::current_exe().context("locating the atoll binary")?;
    let sandboxes_dir = data_dir.join("sandboxes");
    atoll_runner::sandbox_fs::prepare(
        &sandboxes_dir,
        &data_dir.join("sandboxes.xfs"),
        args.sandboxes_fs_gib.map(|g| g << 30),
        args.sandboxes_fs,
    )
    .context("preparing the sandbox disks' filesystem (--sandboxes-fs)")?;
    let runtime = NamespaceRuntime::new(RuntimeConfig {
        state_dir: data_dir.join("runner"),
        sandboxes_dir,
        helper_exe: exe.clone(),
        daemon_exe: exe,
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        ready_timeout: Duration::from_secs(30),
        archive_dir: data_dir.join("archives"),
        archive_url: args.archive_url.clone(),
        pooled_disk_bytes: (atoll_api::service::DEFAULT_DISK_GIB as u64) << 30,
        network,
        uid_slots_dir: PathBuf::from(atoll_runner::runtime::DEFAULT_UID_SLOTS_DIR),
        io_limits: atoll_runner::cgroup::IoLimits {
            bps: args.sandbox_io_mbps << 20,
            iops: args.sandbox_io_iops,
        },
    })
    .context("starting the sandbox runtime")?;
    Ok(Host {
        runtime: Arc::new(runtime),
        images,
        default_image,
    })
}

/// What `atoll image pull` was given.
pub struct PullArgs {
    pub reference: String,
    pub name: String,
    pub images_dir: PathBuf,
    pub auth: Option<String>,
    pub registry_mirrors: Vec<String>,
    pub insecure_registries: Vec<String>,
}

/// `atoll image pull`: one pull into a store, its progress on stderr.
pub fn pull_image(a: PullArgs) -> Result<()> {
    let config = HostArgs {
        archive_url: None,
        volumes_url: None,
        network: "off".into(),
        egress_allow_private: false,
        sandbox_max_connections: 0,
        sandbox_io_mbps: 0,
        sandbox_io_iops: 0,
        images_dir: None,
        sandboxes_fs: atoll_runner::sandbox_fs::Mode::Host,
        sandboxes_fs_gib: None,
        registry_mirrors: a.registry_mirrors,
        insecure_registries: a.insecure_registries,
        image_gc_grace_secs: 0,
        build_cache_days: 0,
    }
    .registry_config()?;
    let creds = match a.auth.as_deref() {
        None => None,
        Some(s) => {
            let (u, p) = s
                .split_once(':')
                .context("--auth (ATOLL_REGISTRY_AUTH): expected user:password")?;
            Some(atoll_runner::oci::registry::Credentials {
                username: u.into(),
                password: p.into(),
            })
        }
    };
    let store = Arc::new(ImageStore::open(&a.images_dir)?);
    let client = atoll_runner::oci::registry::RegistryClient::new(config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = std::time::Instant::now();
    let log = |line: &str| eprintln!("{line}");
    let image = rt
        .block_on(atoll_runner::oci::pull(
            &store,
            &client,
            &a.reference,
            &a.name,
            creds.as_ref(),
            // A host operator's pre-pull: the shared scope.
            "",
            atoll_runner::oci::unpack::UnpackLimits::default(),
            &log,
        ))
        .with_context(|| format!("pulling {}", a.reference))?;
    println!(
        "{} {} ({} layers, {}) in {:.2}s",
        image.name,
        image.digest,
        image.layers.len(),
        atoll_runner::oci::human_bytes(image.size_bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
