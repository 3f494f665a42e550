//! Atoll's control plane: the Daytona-compatible REST API under `/api`,
//! bearer-key auth, the sandbox service (lifecycle rules and reconcile on
//! boot), the `/toolbox/{id}/…` proxy route and the preview proxy (path
//! form `/preview/{id}/{port}/…`, host form `{port}-{id}.{domain}`).

pub mod auth;
pub mod dto;
pub mod error;
pub mod extract;
pub mod forks;
pub mod leases;
pub mod lifecycle;
pub mod metrics;
pub mod object_storage;
pub mod openapi;
pub mod permissions;
pub mod preview;
pub mod quota;
pub mod ratelimit;
pub mod routes;
pub mod runners;
pub mod runtimes;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod signing;
pub mod snapshots;
pub mod ssh_access;
pub mod volumes;
pub mod warm_pool;

use atoll_proxy::pool::{ConnPool, PoolError};
use atoll_runtime_api::Runtime;
use atoll_store::Store;
use axum::extract::Request;
use axum::middleware::Next;
use axum::routing::{any, get, patch, post, put};
use axum::Router;
use error::{ApiError, RequestInfo, REQUEST_INFO};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base URL clients reach this server at (toolbox URLs derive from it).
    pub public_url: String,
    /// Wildcard domain of host-form previews: a request for
    /// `{port}-{sandboxId}.{domain}` is a preview of that port (checked
    /// with `preview::parse_preview_domain`). `None`: path form only.
    pub preview_domain: Option<String>,
    /// Snapshot used when a create names none.
    pub default_snapshot: String,
    pub lifecycle: scheduler::LifecycleTiming,
    /// The operator lets sandboxes reach private ranges (`atoll serve
    /// --egress-allow-private`); allow lists may then name them.
    pub egress_allow_private: bool,
    /// Quotas of organizations that have no override of their own.
    pub quota_defaults: quota::Quota,
    /// Per-API-key rate limit on `/api`; `None`: unlimited.
    pub rate_limit: Option<ratelimit::RateLimit>,
    /// The metrics sampler's interval and retention.
    pub metrics: metrics::MetricsConfig,
}

/// The embedded runner's id when the server names none (tests).
pub const DEFAULT_LOCAL_RUNNER_ID: &str = "local";

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// The embedded runner's runtime (a fake in tests); sandboxes on other
    /// runners are driven through [`AppState::rt`].
    pub runtime: Arc<dyn Runtime>,
    /// Signs this deployment's requests to remote runners (`None`: none
    /// can be driven from this server).
    pub control_key: Option<Arc<atoll_remote::ControlKey>>,
    /// Clients of remote runners.
    pub remote_runtimes: Arc<runtimes::RemoteRuntimes>,
    pub config: Arc<ApiConfig>,
    pub locks: Arc<service::SandboxLocks>,
    /// Key the per-sandbox preview tokens are derived with.
    pub preview_secret: Arc<String>,
    /// Last activity written per sandbox (ms), to throttle the writes.
    pub activity: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// Idle keep-alive connections to apps inside sandboxes (previews), by
    /// sandbox and port.
    pub app_connections: ConnPool<(String, u16)>,
    /// Idle keep-alive connections to sandbox daemons, by sandbox id (each
    /// checked by the runtime, when made, to reach that sandbox).
    pub toolbox_connections: ConnPool<String>,
    /// Token buckets of API keys; `None` when rate limiting is off.
    pub rate_limiter: Option<Arc<ratelimit::RateLimiter>>,
    /// Seals organization secrets at rest (see [`AppState::with_secrets_key`]).
    pub secrets_key: Arc<secrets::SecretsKey>,
    /// Wakes the warm-pool filler (a pool changed or a member was taken).
    pub warm_pool_wake: Arc<tokio::sync::Notify>,
    /// This server's embedded runner (the runner of rows without one).
    pub local_runner_id: Arc<String>,
    /// This server runs sandboxes itself (false: `--no-local-runner`).
    pub embedded_runner: bool,
    /// Where the other API servers reach this server's embedded runner
    /// (`None`: `<public URL>/runner`).
    pub embedded_runner_address: Option<Arc<String>>,
    /// Each runner's region, as last read (a sandbox's `target`).
    pub runner_regions: Arc<std::sync::RwLock<std::collections::HashMap<String, String>>>,
    /// This process, as the holder of leases (random per start).
    pub server_id: Arc<String>,
    /// The SSH gateway's port (`atoll serve --ssh-listen`), for the
    /// `sshCommand` of SSH access; `None`: 2222.
    pub ssh_port: Option<u16>,
    /// Where the SDKs upload build contexts (`https://…/s3`, see
    /// [`object_storage`]); `None`: this server has no HTTPS listener.
    pub storage_url: Option<Arc<String>>,
    /// The latest-metrics endpoint's last cpu reading per sandbox.
    pub cpu_readings: Arc<std::sync::Mutex<std::collections::HashMap<String, metrics::CpuReading>>>,
}

impl AppState {
    pub fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        config: ApiConfig,
        preview_secret: String,
    ) -> AppState {
        let rate_limiter = config
            .rate_limit
            .and_then(ratelimit::RateLimiter::new)
            .map(Arc::new);
        AppState {
            rate_limiter,
            store,
            runtime,
            config: Arc::new(config),
            locks: Arc::default(),
            activity: Arc::default(),
            app_connections: routes::preview::app_pool(),
            toolbox_connections: ConnPool::new(
                atoll_proxy::DEFAULT_MAX_IDLE_PER_SOCKET,
                atoll_proxy::DEFAULT_IDLE_TIMEOUT,
            ),
            cpu_readings: Arc::default(),
            storage_url: None,
            ssh_port: None,
            preview_secret: Arc::new(preview_secret),
            secrets_key: Arc::new(secrets::SecretsKey::random().expect("the OS gives randomness")),
            warm_pool_wake: Arc::default(),
            local_runner_id: Arc::new(DEFAULT_LOCAL_RUNNER_ID.to_string()),
            server_id: Arc::new(uuid::Uuid::new_v4().to_string()),
            embedded_runner: true,
            runner_regions: Arc::default(),
            embedded_runner_address: None,
            control_key: None,
            remote_runtimes: Arc::default(),
        }
    }

    /// An API-only server: no embedded runner (its runtime is
    /// [`runtimes::NoRuntime`]); sandboxes run on remote runners only.
    pub fn without_embedded_runner(mut self) -> AppState {
        self.embedded_runner = false;
        self.local_runner_id = Arc::new("none".into());
        self
    }

    /// Where the other API servers reach this server's embedded runner
    /// (behind a load balancer, each server's own address).
    pub fn with_embedded_runner_address(mut self, url: String) -> AppState {
        self.embedded_runner_address = Some(Arc::new(url));
        self
    }

    /// The key this server signs requests to remote runners with.
    pub fn with_control_key(mut self, key: atoll_remote::ControlKey) -> AppState {
        self.control_key = Some(Arc::new(key));
        self
    }

    /// The S3-compatible endpoint's URL push-access hands out.
    pub fn with_storage_url(mut self, url: String) -> AppState {
        self.storage_url = Some(Arc::new(url));
        self
    }

    /// Names this server's embedded runner (kept in its data directory, so
    /// it survives restarts; several servers each have their own).
    pub fn with_local_runner_id(mut self, id: String) -> AppState {
        self.local_runner_id = Arc::new(id);
        self
    }

    /// The server's key for secret values (a fresh random one otherwise:
    /// fine for tests, lost on restart).
    pub fn with_secrets_key(mut self, key: secrets::SecretsKey) -> AppState {
        self.secrets_key = Arc::new(key);
        self
    }
}

/// A pool connection from a runtime's stream (its errors as connect errors:
/// the proxy answers them with a 502).
async fn daemon_connection(
    stream: Result<atoll_runtime_api::BoxedStream, atoll_runtime_api::RuntimeError>,
) -> Result<hyper::client::conn::http1::SendRequest<atoll_proxy::pool::PoolBody>, PoolError> {
    let stream = stream.map_err(|e| match e {
        atoll_runtime_api::RuntimeError::Connect(e) => PoolError::Connect(e),
        other => PoolError::Connect(std::io::Error::other(other.to_string())),
    })?;
    Ok(atoll_proxy::pool::handshake_io(stream).await?)
}

impl AppState {
    /// Forwards `req` to a sandbox's daemon, its target rewritten to
    /// `path_and_query` (see [`atoll_proxy::forward`]), over this server's
    /// pooled connections; a new one comes from the runtime, which checks
    /// that the peer is that sandbox's own process (SECURITY.md item 24).
    pub async fn forward_to_toolbox<B>(
        &self,
        id: &str,
        req: http::Request<B>,
        path_and_query: &str,
    ) -> Result<http::Response<atoll_proxy::PooledBody>, atoll_proxy::ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connect = || async move {
            let stream = match self.rt_by_id(id).await {
                Ok(rt) => rt.connect_toolbox(id).await,
                Err(e) => Err(e),
            };
            daemon_connection(stream).await
        };
        self.toolbox_connections
            .forward_with(&id.to_string(), connect, req, path_and_query, &[])
            .await
    }

    /// A small GET to a sandbox's daemon (for the control plane's own
    /// questions): status and the whole body, under `limit` bytes.
    pub async fn toolbox_get(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<(http::StatusCode, bytes::Bytes), atoll_proxy::ProxyError> {
        let connect = || async move {
            let stream = match self.rt_by_id(id).await {
                Ok(rt) => rt.connect_toolbox(id).await,
                Err(e) => Err(e),
            };
            daemon_connection(stream).await
        };
        self.toolbox_connections
            .get_with(&id.to_string(), connect, path, limit)
            .await
    }

    /// An HTTP connection to `127.0.0.1:{port}` inside a sandbox (previews).
    pub(crate) async fn app_connection(
        &self,
        id: &str,
        port: u16,
    ) -> Result<hyper::client::conn::http1::SendRequest<atoll_proxy::pool::PoolBody>, PoolError>
    {
        let stream = match self.rt_by_id(id).await {
            Ok(rt) => rt.connect_port(id, port).await,
            Err(e) => Err(e),
        };
        daemon_connection(stream).await
    }
}

async fn request_info(req: Request, next: Next) -> axum::response::Response {
    let info = RequestInfo {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    };
    REQUEST_INFO.scope(info, next.run(req)).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("Cannot {} {}", req.method(), req.uri().path()))
}

pub fn router(state: AppState) -> Router {
    use routes::{
        account, api_keys, preview, runners, sandbox, secrets, snapshots, system, terminal,
        toolbox, volumes, warm_pools,
    };
    let api = Router::new()
        .route("/health", get(system::health))
        .route("/users/me", get(account::users_me))
        .route("/regions", get(account::regions))
        .route("/shared-regions", get(account::shared_regions))
        .route("/openapi.json", get(system::openapi))
        .route("/api-keys", get(api_keys::list).post(api_keys::create))
        .route("/api-keys/current", get(api_keys::current))
        .route(
            "/api-keys/{name}",
            get(api_keys::get).delete(api_keys::delete),
        )
        .route("/organizations", get(api_keys::organizations))
        .route("/organizations/{id}", get(api_keys::organization_get))
        .route("/admin/organizations", post(system::create_organization))
        .route(
            "/admin/organizations/{id}/quota",
            get(system::get_quota).put(system::put_quota),
        )
        .route("/runners", get(runners::list).post(runners::create))
        .route("/runners/me", get(runners::me))
        .route("/runners/healthcheck", post(runners::healthcheck))
        .route("/runners/by-sandbox/{sandbox_id}", get(runners::by_sandbox))
        .route("/runners/{id}", get(runners::get).delete(runners::delete))
        .route("/runners/{id}/full", get(runners::get_full))
        .route("/runners/{id}/scheduling", patch(runners::scheduling))
        .route("/runners/{id}/draining", patch(runners::draining))
        .route("/sandbox", get(sandbox::list).post(sandbox::create))
        .route("/sandbox/paginated", get(sandbox::paginated))
        .route("/sandbox/{id}", get(sandbox::get).delete(sandbox::delete))
        .route("/sandbox/{id}/start", post(sandbox::start))
        .route("/sandbox/{id}/stop", post(sandbox::stop))
        .route("/sandbox/{id}/labels", put(sandbox::labels))
        .route("/config", get(system::config))
        .route("/sandbox/{id}/autostop/{interval}", post(sandbox::autostop))
        .route(
            "/sandbox/{id}/autopause/{interval}",
            post(sandbox::autopause),
        )
        .route("/sandbox/{id}/pause", post(sandbox::pause))
        .route(
            "/sandbox/{id}/telemetry/metrics",
            get(sandbox::telemetry_metrics),
        )
        .route(
            "/sandbox/{id}/autoarchive/{interval}",
            post(sandbox::autoarchive),
        )
        .route(
            "/sandbox/{id}/autodelete/{interval}",
            post(sandbox::autodelete),
        )
        .route(
            "/sandbox/{id}/toolbox-proxy-url",
            get(sandbox::toolbox_proxy_url),
        )
        .route("/sandbox/{id}/resize", post(sandbox::resize))
        .route(
            "/sandbox/{id}/network-settings",
            post(sandbox::network_settings),
        )
        .route("/sandbox/{id}/recover", post(sandbox::recover))
        .route("/sandbox/{id}/archive", post(sandbox::archive))
        .route(
            "/sandbox/{id}/ports/{port}/preview-url",
            get(preview::preview_url),
        )
        .route(
            "/sandbox/{id}/ports/{port}/signed-preview-url",
            get(preview::signed_preview_url),
        )
        .route(
            "/sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire",
            post(preview::expire_signed_preview_url),
        )
        .route(
            "/sandbox/{id}/public/{is_public}",
            post(preview::set_public),
        )
        .route("/sandbox/{id}/last-activity", post(sandbox::last_activity))
        .route("/sandbox/{id}/signing-key", get(sandbox::signing_key))
        .route(
            "/sandbox/{id}/signing-key/rotate",
            post(sandbox::rotate_signing_key),
        )
        .route("/sandbox/{id}/ttl/{minutes}", post(sandbox::ttl))
        .route("/sandbox/{id}/secrets", put(sandbox::secrets))
        .route("/secret", get(secrets::list).post(secrets::create))
        .route("/secret/paginated", get(secrets::paginated))
        .route(
            "/secret/{id}",
            get(secrets::get)
                .patch(secrets::update)
                .delete(secrets::delete),
        )
        .route(
            "/warm-pools",
            get(warm_pools::list).post(warm_pools::create),
        )
        .route(
            "/warm-pools/{id}",
            patch(warm_pools::update).delete(warm_pools::delete),
        )
        .route("/snapshots", get(snapshots::list).post(snapshots::create))
        .route(
            "/snapshots/{id}",
            get(snapshots::get).delete(snapshots::delete),
        )
        .route("/snapshots/{id}/activate", post(snapshots::activate))
        .route("/snapshots/{id}/deactivate", post(snapshots::deactivate))
        .route("/snapshots/{id}/build-logs", get(snapshots::build_logs))
        .route(
            "/snapshots/{id}/build-logs-url",
            get(snapshots::build_logs_url),
        )
        .route(
            "/docker-registry",
            get(snapshots::list_registries).post(snapshots::create_registry),
        )
        .route(
            "/docker-registry/{id}",
            get(snapshots::get_registry)
                .patch(snapshots::update_registry)
                .delete(snapshots::delete_registry),
        )
        .route("/object-storage/push-access", get(snapshots::push_access))
        .route("/volumes", get(volumes::list).post(volumes::create))
        .route("/volumes/by-name/{name}", get(volumes::by_name))
        .route("/volumes/{id}", get(volumes::get).delete(volumes::delete))
        .route(
            "/volumes/{id}/files",
            get(volumes::list_files).delete(volumes::delete_file),
        )
        .route("/volumes/{id}/files/download", get(volumes::download))
        .route("/volumes/{id}/files/upload", post(volumes::upload))
        .route("/sandbox/{id}/snapshot", post(sandbox::snapshot))
        .route("/sandbox/{id}/fork", post(sandbox::fork))
        .route(
            "/sandbox/{id}/ssh-access",
            post(sandbox::create_ssh_access).delete(sandbox::revoke_ssh_access),
        )
        .route(
            "/sandbox/ssh-access/validate",
            get(sandbox::validate_ssh_access),
        )
        .route("/sandbox/{id}/forks", get(sandbox::forks))
        .route("/sandbox/{id}/parent", get(sandbox::parent))
        .route("/sandbox/{id}/ancestors", get(sandbox::ancestors))
        .route("/sandbox/{id}/build-logs", get(sandbox::build_logs))
        .route("/sandbox/{id}/build-logs-url", get(sandbox::build_logs_url))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::limit_rate,
        ));
    Router::new()
        .nest("/api", api)
        .route("/toolbox/{id}/{*path}", any(toolbox::forward))
        .route(
            &format!("{}/{{*rest}}", object_storage::PATH),
            any(object_storage::serve),
        )
        .route("/terminal/assets/{file}", get(terminal::asset))
        .route("/terminal/{id}", get(terminal::page))
        .route("/terminal/{id}/pty", get(terminal::pty))
        .route("/terminal/{id}/resize", post(terminal::resize))
        .route("/terminal/{id}/close", post(terminal::close))
        .route("/preview/{id}/{port}", any(preview::forward))
        .route("/preview/{id}/{port}/", any(preview::forward))
        .route("/preview/{id}/{port}/{*path}", any(preview::forward))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        // Host-form previews take any path, so they are picked out by Host
        // before the route's handler runs.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            preview::by_host,
        ))
        .layer(axum::middleware::from_fn(request_info))
        .with_state(state)
}
