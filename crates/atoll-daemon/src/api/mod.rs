//! The HTTP edge: the daemon's state, the route table (paths exactly as the
//! Daytona SDKs build them, relative to the sandbox's toolbox base), the
//! unix-socket listener, and `serve`. Handlers live in `process`, `files`
//! and `transfer`; they parse, call one `crate::process` / `crate::fs`
//! function, and render. Status codes are chosen only in `error`.

pub mod error;
pub mod extract;
mod files;
mod git_routes;
mod interpreter_routes;
mod lsp_routes;
pub mod multipart;
mod port_routes;
mod preview_routes;
mod process;
mod pty_routes;
mod session_routes;
mod stream_routes;
mod transfer;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::UnixListener;

use crate::config::DaemonConfig;
use crate::fs::FsContext;
use crate::identity::{self, IdentityError};
use crate::process::ProcessContext;

pub use error::ApiError;

/// Limit for JSON request bodies (uploads stream and have none).
pub const JSON_BODY_LIMIT: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("resolving the sandbox user: {0}")]
    Identity(#[from] IdentityError),
    #[error("binding {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("building the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("serving: {0}")]
    Io(#[source] std::io::Error),
}

/// Everything handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub process: ProcessContext,
    pub fs: FsContext,
    pub sessions: Arc<crate::session::Sessions>,
    pub ptys: Arc<crate::pty::Ptys>,
    pub interpreters: Arc<crate::interpreter::Interpreters>,
    pub language_servers: Arc<crate::lsp::LanguageServers>,
    /// Idle keep-alive connections of the preview tunnel, by port.
    pub app_connections: atoll_proxy::pool::ConnPool<u16>,
}

impl AppState {
    /// Resolves the configured user and work dir.
    pub fn new(cfg: &DaemonConfig) -> Result<Self, ServeError> {
        let identity = identity::resolve(cfg.user.as_deref())?;
        let work_dir = absolute(
            cfg.work_dir
                .clone()
                .unwrap_or_else(|| identity.home.clone()),
        );
        let inherited_env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("ATOLL_DAEMON") && k != "RUST_LOG")
            .collect();
        Ok(AppState {
            fs: FsContext {
                work_dir: work_dir.clone(),
                owner: identity.owner(),
            },
            process: ProcessContext {
                identity,
                work_dir,
                inherited_env,
                sandbox_env: crate::process::env::SandboxEnv::new(
                    cfg.env.clone(),
                    cfg.env_file.clone(),
                ),
            },
            sessions: Arc::default(),
            ptys: Arc::default(),
            interpreters: Arc::default(),
            language_servers: Arc::default(),
            app_connections: preview_routes::app_pool(),
        })
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        crate::fs::path::clean(&p)
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        crate::fs::path::clean(&cwd.join(p))
    }
}

/// The toolbox routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/user-home-dir", get(user_home_dir))
        .route("/work-dir", get(work_dir))
        .route("/project-dir", get(work_dir))
        .route("/process/execute", post(process::execute))
        .route("/process/code-run", post(process::code_run))
        .route("/env", post(process::update_env))
        .route("/files", get(files::list).delete(files::delete))
        .route("/files/", get(files::list).delete(files::delete))
        .route("/files/info", get(files::info))
        .route("/files/folder", post(files::create_folder))
        .route("/files/move", post(files::move_file))
        .route("/files/permissions", post(files::set_permissions))
        .route("/files/find", get(files::find))
        .route("/files/search", get(files::search))
        .route("/files/replace", post(files::replace))
        .route("/files/download", get(transfer::download))
        .route("/files/upload", post(transfer::upload_legacy))
        .route("/files/upload-v2", post(transfer::upload_v2))
        .route("/files/bulk-upload", post(transfer::bulk_upload))
        .route("/files/bulk-download", post(transfer::bulk_download))
        .merge(session_routes::routes())
        .merge(pty_routes::routes())
        .merge(stream_routes::routes())
        .merge(interpreter_routes::routes())
        .merge(git_routes::routes())
        .merge(lsp_routes::routes())
        .merge(port_routes::routes())
        .merge(preview_routes::routes())
        .fallback(error::route_not_found)
        .layer(axum::middleware::from_fn(error::render_errors))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(state)
}

/// Serves the toolbox API on `listener` until it fails.
pub async fn serve(listener: UnixListener, cfg: DaemonConfig) -> Result<(), ServeError> {
    let state = Arc::new(AppState::new(&cfg)?);
    state
        .sessions
        .start_entrypoint(&state.process, &cfg.entrypoint);
    tracing::info!(
        user = %state.process.identity.name,
        uid = state.process.identity.uid,
        work_dir = %state.process.work_dir.display(),
        "toolbox ready"
    );
    axum::serve(listener, router(state))
        .await
        .map_err(ServeError::Io)
}

/// Serves on an inherited bound socket: we call `listen`, which makes this
/// process the peer clients see (`SO_PEERCRED`).
pub fn listen_on(fd: std::os::fd::OwnedFd) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Bind {
        path: PathBuf::from("<inherited socket>"),
        source,
    };
    nix::sys::socket::listen(
        &fd,
        nix::sys::socket::Backlog::new(1024).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    std_listener.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(std_listener).map_err(err)
}

/// Binds the socket: a stale socket file is removed first, anything else
/// at the path is an error; the socket is created mode 0600.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_err)?;
    }
    // Nobody but the owner may connect, not even between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

#[derive(Serialize)]
struct VersionResponse {
    version: &'static str,
}

#[derive(Serialize)]
struct DirResponse {
    dir: String,
}

async fn version() -> Json<VersionResponse> {
    Json(VersionResponse {
        version: crate::VERSION,
    })
}

async fn user_home_dir(State(st): State<Arc<AppState>>) -> Json<DirResponse> {
    Json(DirResponse {
        dir: st.process.identity.home.to_string_lossy().into_owned(),
    })
}

async fn work_dir(State(st): State<Arc<AppState>>) -> Json<DirResponse> {
    Json(DirResponse {
        dir: st.process.work_dir.to_string_lossy().into_owned(),
    })
}
