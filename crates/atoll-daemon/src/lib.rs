//! The in-sandbox toolbox daemon: PID 1 of every Atoll sandbox.
//!
//! It speaks Daytona's toolbox HTTP API (what the official SDKs call under
//! `{toolboxProxyUrl}/{sandboxId}/...`) on a unix socket that the runner
//! bind-mounts into the sandbox. As PID 1 it also acts as a tiny init: a
//! parent process that reaps orphans and forwards termination signals, with
//! the HTTP server in a forked child.
//!
//! Layout: `config` (the JSON the runner writes), `identity` (who commands
//! run as), `init` (the PID 1 reaper), `process` (spawning user commands),
//! `fs` (file operations and transfers), `api` (the HTTP edge: routes,
//! extractors, the one error type that picks status codes).

pub mod api;
pub mod config;
pub mod fs;
pub mod git;
pub mod identity;
pub mod init;
pub mod interpreter;
pub mod lsp;
pub mod process;
pub mod pty;
pub mod session;
pub mod sftp;

use std::path::Path;

pub use api::{router, serve, AppState, ServeError};
pub use config::{ConfigError, DaemonConfig};

/// Environment variable naming the daemon's config file (tests and
/// standalone runs).
pub const CONFIG_ENV: &str = "ATOLL_DAEMON_CONFIG";
/// Environment variable naming an inherited descriptor holding the config
/// (how a sandbox's PID 1 hands it over: no file the sandbox could swap).
pub const CONFIG_FD_ENV: &str = "ATOLL_DAEMON_CONFIG_FD";
/// Environment variable naming an inherited, bound (not yet listening)
/// unix socket to serve on: the runner bound it outside the sandbox.
pub const LISTEN_FD_ENV: &str = "ATOLL_DAEMON_LISTEN_FD";
/// The version `GET /version` reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Entry point of the `atoll-daemon` binary (and of `atoll` when invoked
/// under that name). Never returns.
///
/// Reads the config, sets up logging, then either becomes the sandbox's init
/// (when it is PID 1: fork, the parent reaps and forwards signals, the child
/// serves) or serves directly.
pub fn main_entry() -> ! {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == sftp::SUBCOMMAND)
    {
        sftp::main_stdio();
    }
    // Exec'd from a memfd, the kernel names us "memfd:atoll-dae"; ps and
    // /proc/<pid>/status should say what we are.
    let _ = nix::sys::prctl::set_name(c"atoll-daemon");
    tune_allocator();
    init_tracing();
    let cfg = match inherited_fd(CONFIG_FD_ENV) {
        Some(fd) => DaemonConfig::from_fd(fd),
        None => match std::env::var_os(CONFIG_ENV) {
            Some(path) => DaemonConfig::load(Path::new(&path)),
            None => {
                tracing::error!("atoll-daemon needs {CONFIG_FD_ENV} or {CONFIG_ENV}");
                std::process::exit(2);
            }
        },
    };
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!(error = %e, "atoll-daemon cannot start");
            std::process::exit(2);
        }
    };
    if std::process::id() == 1 {
        // Still single-threaded here: the fork below is sound.
        init::become_init();
    }
    let code = match run_server(cfg) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "atoll-daemon stopped");
            1
        }
    };
    std::process::exit(code)
}

/// Binds the socket and serves on a current-thread runtime until the
/// listener fails.
fn run_server(cfg: DaemonConfig) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // File I/O goes through the blocking pool; keep it small and short
        // lived so an idle daemon holds no extra threads.
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let listener = match inherited_fd(LISTEN_FD_ENV) {
            Some(fd) => api::listen_on(fd)?,
            None => api::bind_socket(&cfg.socket)?,
        };
        tracing::info!(version = VERSION, "atoll-daemon listening");
        serve(listener, cfg).await
    })
}

/// Takes ownership of the descriptor named by `var` (and removes the
/// variable, so nothing the daemon starts sees it).
fn inherited_fd(var: &str) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var(var).ok()?.parse().ok()?;
    // SAFETY: still single-threaded (called from main_entry/run_server
    // before other threads touch the environment).
    unsafe { std::env::remove_var(var) };
    if fd < 3
        || nix::fcntl::fcntl(
            // SAFETY: a probe of the descriptor number only.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .is_err()
    {
        return None;
    }
    // SAFETY: PID 1 handed this descriptor to us alone (the variable is
    // gone now, so nothing else will claim it); it is close-on-exec, so
    // no process we start inherits it.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Keeps an idle daemon small after a burst: fixed mmap threshold so big
/// buffers (command output, JSON bodies) go back to the kernel when freed
/// instead of raising glibc's dynamic threshold and staying on the heap, a
/// low trim threshold, and few arenas for the blocking pool's threads.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
