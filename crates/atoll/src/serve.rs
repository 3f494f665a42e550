//! `atoll serve`: opens the store, bootstraps the default organization and
//! admin key, prepares the default image, re-adopts running sandboxes and
//! serves the API until SIGTERM/SIGINT (sandboxes keep running).

use anyhow::{Context, Result};
use atoll_api::{auth, ApiConfig, AppState};
use atoll_runner::image::{Image, ImageStore};
use atoll_store::{ApiKeyRecord, OrgRecord, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where Atoll keeps its database, sandboxes and images.
    #[arg(long, env = "ATOLL_DATA_DIR", default_value = "/var/lib/atoll")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "ATOLL_LISTEN", default_value = "127.0.0.1:3000")]
    listen: String,
    /// Address of the SSH gateway (`ssh -p PORT <token>@host` with a
    /// token from `POST /api/sandbox/{id}/ssh-access`), e.g.
    /// `0.0.0.0:2222`. Off unless given. Its host key is made once at
    /// <data-dir>/ssh/ssh_host_ed25519_key.
    #[arg(long, env = "ATOLL_SSH_LISTEN")]
    ssh_listen: Option<String>,
    /// URL clients reach this server at (default: http://<listen>).
    #[arg(long, env = "ATOLL_PUBLIC_URL")]
    public_url: Option<String>,
    /// Certificate chain (PEM) for HTTPS on --listen (which then takes
    /// both HTTPS and plain HTTP). Default: one signed by a local CA made
    /// at <data-dir>/tls/ca.pem. The SDKs upload build contexts over HTTPS
    /// only.
    #[arg(long, env = "ATOLL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "ATOLL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Database: `postgres://user@host/db` for PostgreSQL (default: SQLite
    /// at <data-dir>/atoll.db). Never logged: it may carry a password.
    #[arg(long, env = "ATOLL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Wildcard DNS domain for host-form previews: a request for
    /// `{port}-{sandboxId}.<domain>` reaches that port of that sandbox,
    /// whatever its path (point `*.<domain>` at this server; preview URLs
    /// take scheme and port from --public-url). A bare lowercase DNS name,
    /// e.g. `preview.example.com`. Unset: the path form
    /// `/preview/{sandboxId}/{port}/…` only.
    #[arg(long, env = "ATOLL_PREVIEW_DOMAIN")]
    preview_domain: Option<String>,
    /// How often every running sandbox's cpu, memory and disk usage is
    /// sampled into the store (the SDKs' `get_metrics` history), in
    /// seconds.
    #[arg(long, env = "ATOLL_METRICS_INTERVAL", default_value_t = 15.0)]
    metrics_interval: f64,
    /// How long metric samples are kept, in hours.
    #[arg(long, env = "ATOLL_METRICS_RETENTION_HOURS", default_value_t = 24.0)]
    metrics_retention_hours: f64,
    /// Name of this server's embedded runner in `/api/runners` (default:
    /// the host name and the start of the runner's id).
    #[arg(long, env = "ATOLL_RUNNER_NAME")]
    runner_name: Option<String>,
    /// Where the deployment's other API servers reach this server's
    /// embedded runner (default: <public URL>/runner). Behind a load
    /// balancer, this server's own address, e.g. http://10.0.0.5:3000/runner.
    #[arg(long, env = "ATOLL_RUNNER_URL")]
    runner_url: Option<String>,
    /// File holding the Ed25519 seed this deployment signs its requests to
    /// remote runners with (64 hex characters; default
    /// <data-dir>/control.key, created on first use). Servers sharing one
    /// database must share this key.
    #[arg(long, env = "ATOLL_CONTROL_KEY_FILE")]
    control_key_file: Option<PathBuf>,
    /// An API-only server: no embedded runner (no sandbox runs on this
    /// host, no image is built here); sandboxes run on the deployment's
    /// `atoll runner` hosts and the other servers' embedded runners.
    #[arg(long, env = "ATOLL_NO_LOCAL_RUNNER", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    no_local_runner: bool,
    /// File holding the key organization secrets are sealed with (64 hex
    /// characters; default <data-dir>/secrets.key, created on first use).
    /// Servers sharing one database must share this key.
    #[arg(long, env = "ATOLL_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    tenancy: crate::tenancy::TenancyArgs,
    #[command(flatten)]
    host: crate::host::HostArgs,
}

pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ATOLL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // A log that cannot be written (full disk, closed pipe) must never
    // take a request down: tracing-subscriber's internal-error report uses
    // eprintln!, which panics when stderr fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .try_init();
}

pub fn ensure_default_image(images_dir: &Path) -> Result<Image> {
    let store = ImageStore::open(images_dir).context("opening the image store")?;
    let mut shown = false;
    let image = store
        .ensure_default(&mut |p| {
            if !shown {
                eprintln!(
                    "Preparing the default sandbox image (Debian bookworm, first run only)..."
                );
                shown = true;
            }
            crate::progress::render(p);
        })
        .context("preparing the default image")?;
    if shown {
        crate::progress::finish();
    }
    Ok(image)
}

pub fn run(args: ServeArgs) -> Result<()> {
    init_logging();
    let positive = |v: f64, what: &str| -> Result<Duration> {
        anyhow::ensure!(
            v.is_finite() && v > 0.0 && v < 1e9,
            "{what} must be a positive number"
        );
        Ok(Duration::from_secs_f64(v))
    };
    anyhow::ensure!(
        args.metrics_interval >= 0.1,
        "--metrics-interval must be at least 0.1 seconds"
    );
    let metrics = atoll_api::metrics::MetricsConfig {
        interval: positive(args.metrics_interval, "--metrics-interval")?,
        retention: positive(
            args.metrics_retention_hours * 3600.0,
            "--metrics-retention-hours",
        )?,
    };
    let preview_domain = args
        .preview_domain
        .as_deref()
        .map(atoll_api::preview::parse_preview_domain)
        .transpose()
        .context("--preview-domain (ATOLL_PREVIEW_DOMAIN)")?;
    let data_dir = crate::tenancy::private_data_dir(&args.data_dir)?;
    let host = if args.no_local_runner {
        None
    } else {
        Some(crate::host::prepare(&args.host, &data_dir)?)
    };
    let default_snapshot = host.as_ref().map_or_else(
        || atoll_runner::image::DEFAULT_IMAGE.to_string(),
        |h| h.default_image.name.clone(),
    );
    let runner_id = crate::tenancy::runner_id(&data_dir)?;
    let runner_name = match &args.runner_name {
        Some(n) => {
            anyhow::ensure!(
                atoll_api::runners::valid_runner_name(n),
                "--runner-name {n:?}: use 1-63 of a-z, 0-9, '-' and '.'"
            );
            n.clone()
        }
        None => default_runner_name(&runner_id),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let url = match &args.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", data_dir.join("atoll.db").display()),
        };
        let db_file = crate::tenancy::sqlite_file(&url);
        if let Some(db) = &db_file {
            crate::tenancy::precreate_database(db)?;
        }
        let store = Store::open(&url).await.context("opening the database")?;
        if let Some(db) = &db_file {
            crate::tenancy::private_database(db)?;
        }
        let key = bootstrap(&store).await?;
        let control_key = crate::tenancy::control_key(
            &args
                .control_key_file
                .clone()
                .unwrap_or_else(|| data_dir.join("control.key")),
        )?;
        let secrets_key = crate::tenancy::secrets_key(
            &args
                .secrets_key_file
                .clone()
                .unwrap_or_else(|| data_dir.join("secrets.key")),
        )?;
        let public_url = args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", args.listen));
        let mut fresh = [0u8; 32];
        getrandom_fill(&mut fresh).context("reading /dev/urandom")?;
        let preview_secret = store
            .secret(atoll_api::preview::SECRET_NAME, &hex_encode(&fresh))
            .await
            .context("loading the preview key")?;
        let runtime: Arc<dyn atoll_runtime_api::Runtime> = match host {
            Some(h) => {
                crate::host::spawn_image_collector(
                    &h,
                    Duration::from_secs(args.host.image_gc_grace_secs),
                    Duration::from_secs(args.host.build_cache_days * 86_400),
                );
                Arc::new(crate::host::local_runtime(&h, &args.host)?)
            }
            None => Arc::new(atoll_api::runtimes::NoRuntime),
        };
        let state = AppState::new(
            store,
            runtime,
            ApiConfig {
                public_url: public_url.clone(),
                preview_domain: preview_domain.clone(),
                default_snapshot,
                lifecycle: lifecycle_timing()?,
                egress_allow_private: args.host.egress_allow_private,
                quota_defaults: args.tenancy.quota_defaults(),
                rate_limit: args.tenancy.rate_limit(),
                metrics,
            },
            preview_secret,
        )
        .with_secrets_key(secrets_key)
        .with_local_runner_id(runner_id.clone())
        .with_control_key(control_key);
        // HTTPS on the same port as HTTP: the operator's certificate or
        // the local CA's.
        let (tls_cert, tls_key, local_ca) = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone(), None),
            _ => {
                let ca = crate::tls::local_ca(&data_dir.join("tls"), &public_url, &args.listen)?;
                (ca.cert_pem, ca.key_pem, Some(ca.ca_pem))
            }
        };
        let tls_config = atoll_remote::tls::server_config(&tls_cert, &tls_key)
            .map_err(|e| anyhow::anyhow!("HTTPS: {e}"))?;
        let state = state.with_storage_url(storage_url(&public_url));
        let ssh = match &args.ssh_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--ssh-listen {addr}"))?;
                let key = atoll_ssh::load_or_create_host_key(
                    &data_dir.join("ssh").join("ssh_host_ed25519_key"),
                )?;
                Some((listener, key))
            }
            None => None,
        };
        let mut state = state;
        if let Some((l, _)) = &ssh {
            state.ssh_port = Some(l.local_addr()?.port());
        }
        let state = if args.no_local_runner {
            state.without_embedded_runner()
        } else {
            state
        };
        let state = match &args.runner_url {
            Some(url) => {
                atoll_api::runners::check_runner_url(url)
                    .map_err(|e| anyhow::anyhow!("--runner-url: {e}"))?;
                state.with_embedded_runner_address(url.trim_end_matches('/').to_string())
            }
            None => state,
        };
        let public_key = state
            .control_key
            .as_ref()
            .map(|k| k.public_key())
            .unwrap_or_default();
        state
            .reconcile_on_boot()
            .await
            .map_err(|e| anyhow::anyhow!("reconciling sandboxes: {e}"))?;
        if state.embedded_runner {
            state
                .register_local_runner(&runner_name, atoll_api::routes::account::REGION)
                .await
                .map_err(|e| anyhow::anyhow!("registering the embedded runner: {e}"))?;
            if let Err(e) = state.check_local_runner().await {
                tracing::warn!(error = %e, "first health check of the embedded runner failed");
            }
        }
        atoll_api::runners::spawn_health(state.clone());
        atoll_api::scheduler::spawn(state.clone());
        atoll_api::warm_pool::spawn(state.clone());
        atoll_api::metrics::spawn_sampler(state.clone());
        state.spawn_snapshot_keeper();
        if let Some((listener, key)) = ssh {
            tracing::info!(
                addr = %listener.local_addr()?,
                host_key = %atoll_ssh::public_key_line(&key),
                "SSH gateway listening"
            );
            tokio::spawn(atoll_ssh::serve(listener, state.clone(), key));
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(
            url = %public_url,
            data_dir = %data_dir.display(),
            preview_domain = preview_domain.as_deref().unwrap_or("-"),
            "atoll is serving"
        );
        print_welcome(&public_url, key.as_deref(), local_ca.as_deref());
        // HTTP and HTTPS on one port. Connections have Nagle off: proxied
        // responses (toolbox, previews) often reach hyper as head and body
        // in separate writes, and the second would wait for the client's
        // delayed ACK (40 ms) on a keep-alive connection.
        let listener = atoll_remote::tls::TlsListener::dual(listener, tls_config);
        // The embedded runner's API, for the other API servers of a
        // deployment (requests signed with the shared control-plane key).
        let verifier = atoll_remote::ControlVerifier::new(&public_key, &runner_id)
            .map_err(|e| anyhow::anyhow!("the control-plane key: {e}"))?;
        let mut app = atoll_api::router(state.clone());
        if state.embedded_runner {
            app = app.nest(
                atoll_api::runners::EMBEDDED_RUNNER_PATH,
                atoll_remote::server::router(state.runtime.clone(), verifier),
            );
        }
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!(
            "shutting down; sandboxes keep running and are re-adopted on the next start"
        );
        state.release_leases().await;
        state.store.close().await;
        Ok(())
    })
}

/// Scheduler timing. `ATOLL_LIFECYCLE_MINUTE_SECS` (test-only: how long a
/// "minute" of autoStop/autoDelete intervals is) and
/// `ATOLL_LIFECYCLE_TICK_SECS` (how often the scheduler runs, default 10).
fn lifecycle_timing() -> Result<atoll_api::scheduler::LifecycleTiming> {
    let mut t = atoll_api::scheduler::LifecycleTiming::default();
    let secs = |name: &str| -> Result<Option<Duration>> {
        match std::env::var(name) {
            Ok(v) => {
                let f: f64 = v
                    .parse()
                    .with_context(|| format!("{name} must be a number of seconds"))?;
                anyhow::ensure!(f > 0.0 && f.is_finite(), "{name} must be positive");
                Ok(Some(Duration::from_secs_f64(f)))
            }
            Err(_) => Ok(None),
        }
    };
    if let Some(m) = secs("ATOLL_LIFECYCLE_MINUTE_SECS")? {
        t.minute = m;
    }
    if let Some(k) = secs("ATOLL_LIFECYCLE_TICK_SECS")? {
        t.tick = k;
    }
    Ok(t)
}

/// Creates the default organization and admin key on first start. Returns
/// a newly generated key (to print once); `ATOLL_API_KEY` is accepted as
/// an admin key without being printed.
async fn bootstrap(store: &Store) -> Result<Option<String>> {
    let now = atoll_types::time::now_millis();
    let org = match store.org_by_name("default").await? {
        Some(o) => o,
        None => {
            let o = OrgRecord {
                id: uuid_v4(),
                name: "default".into(),
                created_at: now,
            };
            store.insert_org(&o).await?;
            o
        }
    };
    let add_key = |key: String, name: &'static str| {
        let org_id = org.id.clone();
        async move {
            store
                .insert_api_key(&ApiKeyRecord {
                    id: uuid_v4(),
                    organization_id: org_id,
                    name: name.into(),
                    key_hash: auth::hash_key(&key),
                    key_prefix: key.chars().take(8).collect(),
                    role: auth::ROLE_ADMIN.into(),
                    created_at: now,
                    expires_at: None,
                    revoked_at: None,
                    permissions: None,
                })
                .await
        }
    };
    let env_key = std::env::var("ATOLL_API_KEY")
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty());
    if let Some(key) = env_key {
        if store
            .api_key_by_hash(&auth::hash_key(&key))
            .await?
            .is_none()
        {
            add_key(key, "from ATOLL_API_KEY").await?;
        }
        return Ok(None);
    }
    if store.count_api_keys(&org.id).await? > 0 {
        return Ok(None);
    }
    let key = auth::generate_key().map_err(|e| anyhow::anyhow!("{e}"))?;
    add_key(key.clone(), "admin").await?;
    Ok(Some(key))
}

pub(crate) fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Prints where the server is, the key (first start only) and a first
/// example. Written with `write!`, not `println!`: stdout may be a full
/// disk or a closed pipe, and that must not stop the server.
/// The S3-compatible endpoint's URL: the public URL's host over HTTPS
/// (the same port takes both).
fn storage_url(public_url: &str) -> String {
    let rest = public_url
        .strip_prefix("https://")
        .or_else(|| public_url.strip_prefix("http://"))
        .unwrap_or(public_url);
    format!(
        "https://{}{}",
        rest.trim_end_matches('/'),
        atoll_api::object_storage::PATH
    )
}

fn print_welcome(url: &str, key: Option<&str>, local_ca: Option<&Path>) {
    use std::io::Write;
    let key_line = match key {
        Some(k) => format!("  Admin API key (shown once, stored hashed): {k}"),
        None => "  API key: the one printed on first start, or $ATOLL_API_KEY".to_string(),
    };
    let text = format!(
        "\n  Atoll is running at {url}\n{key_line}\n\n  Try it with the Daytona Python SDK (`pip install daytona`, or this repo's .venv/bin/python):\n    \
         export DAYTONA_API_URL={url}/api DAYTONA_API_KEY={}\n    \
         python3 -c 'from daytona import Daytona; sb = Daytona().create(); \
         print(sb.process.code_run(\"print(6*7)\").result)'\n\n",
        key.unwrap_or("<your key>")
    );
    let text = match local_ca {
        Some(ca) => format!(
            "{text}  Images with local files (Image.add_local_file/dir, COPY) upload them over HTTPS with a\n  \
             certificate from Atoll's local CA. Trust it once on the machine running the SDK:\n    \
             sudo cp {} /usr/local/share/ca-certificates/atoll.crt && sudo update-ca-certificates\n  \
             (Node: export NODE_EXTRA_CA_CERTS={}; or start atoll with --tls-cert/--tls-key)\n\n",
            ca.display(),
            ca.display()
        ),
        None => text,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `<host name>-<start of the runner id>`, in the characters runner names
/// allow.
fn default_runner_name(runner_id: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let host = host.trim_matches(|c| c == '-' || c == '.');
    let short: String = runner_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    if host.is_empty() {
        format!("runner-{short}")
    } else {
        format!("{host}-{short}")
    }
}
