//! `atoll runner`: a compute host of a larger deployment. It checks its
//! key with the control plane (`GET /api/runners/me`, which also names
//! this runner and gives the control plane's public key), re-adopts the
//! sandboxes it ran before a restart, serves the runner API (`/v1/…`, only
//! to requests the control plane signed for this runner) and reports its
//! health and address every 10 s (`POST /api/runners/healthcheck`).
//!
//! A deployment of several API servers (one database) can be given to it
//! as several URLs: each call goes to the one that answered last, and on
//! to the next when that one cannot be reached or answers 5xx, so a dead
//! server does not make its runners look dead to the others.

use anyhow::{Context, Result};
use atoll_remote::ControlVerifier;
use atoll_runtime_api::Runtime;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct RunnerArgs {
    /// The control plane's API, as the SDKs are given it
    /// (`http://host:port/api`); several API servers of one deployment
    /// comma-separated, tried in turn.
    #[arg(long, env = "ATOLL_API_URL", value_delimiter = ',', required = true)]
    api_url: Vec<String>,
    /// This runner's key, from `POST /api/runners`. Never logged.
    #[arg(long, env = "ATOLL_RUNNER_TOKEN", hide_env_values = true)]
    token: String,
    /// Where this runner keeps its sandboxes, images and journal.
    #[arg(long, env = "ATOLL_DATA_DIR", default_value = "/var/lib/atoll-runner")]
    data_dir: PathBuf,
    /// Address the runner API listens on.
    #[arg(long, env = "ATOLL_RUNNER_LISTEN", default_value = "127.0.0.1:2281")]
    listen: String,
    /// URL the control plane reaches the runner API at (default:
    /// http(s)://<listen>).
    #[arg(long, env = "ATOLL_RUNNER_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Serve the runner API over TLS with this certificate chain (PEM);
    /// needs --tls-key. The control plane then reaches it at https://…
    /// (trusting the system's CAs and ATOLL_TLS_CA_FILE).
    #[arg(long, env = "ATOLL_RUNNER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "ATOLL_RUNNER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    host: crate::host::HostArgs,
}

/// The control plane's API, as this runner calls it.
struct ControlPlane {
    /// `host:port`.
    authority: String,
    /// TLS roots when the API URL is https://.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Path prefix (`/api`).
    base: String,
    token: String,
}

impl ControlPlane {
    fn new(api_url: &str, token: &str) -> Result<ControlPlane> {
        let (tls, rest) = match api_url.split_once("://") {
            Some(("http", rest)) => (None, rest),
            Some(("https", rest)) => (
                Some(atoll_remote::tls::client_config().context("TLS to the control plane")?),
                rest,
            ),
            _ => anyhow::bail!("--api-url {api_url:?}: expected http:// or https://"),
        };
        let (authority, base) = match rest.split_once('/') {
            Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        anyhow::ensure!(!authority.is_empty(), "--api-url {api_url:?} names no host");
        Ok(ControlPlane {
            authority: authority.to_string(),
            tls,
            base,
            token: token.trim().to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes)> {
        let stream = atoll_remote::tls::connect(&self.authority, self.tls.as_ref())
            .await
            .with_context(|| format!("connecting to the control plane at {}", self.authority))?;
        let mut sender = atoll_proxy::pool::handshake_io(stream)
            .await
            .context("talking to the control plane")?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        let bytes = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(atoll_proxy::pool::boxed(Full::new(bytes)))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .context("the control plane did not answer within 30 s")??;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the control plane's answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// How long one call to one API server may take in all.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);

/// Answers that say "not this server" rather than "not this request":
/// its own failures, and what a misrouting proxy answers.
fn fails_over(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::NOT_FOUND
        || status == StatusCode::MISDIRECTED_REQUEST
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Every API server of the deployment; calls go to the one that answered
/// last first.
struct ControlPlanes {
    servers: Vec<ControlPlane>,
    current: std::sync::atomic::AtomicUsize,
}

impl ControlPlanes {
    fn new(urls: &[String], token: &str) -> Result<ControlPlanes> {
        let servers = urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .map(|u| ControlPlane::new(u, token))
            .collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(!servers.is_empty(), "--api-url names no server");
        Ok(ControlPlanes {
            servers,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The first answer that is not a failure of the server itself (a
    /// connection error, a timeout, a 5xx); the last failure if all fail.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes)> {
        use std::sync::atomic::Ordering;
        let n = self.servers.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            let server = &self.servers[at];
            // The whole attempt is bounded (connect, TLS, answer): a server
            // that accepts but never answers must not stall the reports.
            let attempt = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                server.call(method.clone(), path, body.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer within {} s",
                    ATTEMPT_TIMEOUT.as_secs()
                ))
            });
            match attempt {
                Ok((status, b)) if !fails_over(status) => {
                    if at != start {
                        tracing::info!(server = %server.authority, "now reporting to this API server");
                    }
                    self.current.store(at, Ordering::Relaxed);
                    return Ok((status, b));
                }
                Ok((status, b)) => {
                    tracing::warn!(server = %server.authority, %status, "an API server failed; trying the next");
                    last = Some(Ok((status, b)));
                }
                Err(e) => {
                    if n > 1 {
                        tracing::warn!(server = %server.authority, error = %e, "an API server is unreachable; trying the next");
                    }
                    last = Some(Err(e));
                }
            }
        }
        last.unwrap_or_else(|| Err(anyhow::anyhow!("no API server to call")))
    }
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

pub fn run(args: RunnerArgs) -> Result<()> {
    crate::serve::init_logging();
    let control = ControlPlanes::new(&args.api_url, &args.token)?;
    let data_dir = crate::tenancy::private_data_dir(&args.data_dir)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            atoll_remote::tls::server_config(cert, key).context("the runner's TLS certificate")?,
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertise = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (status, body) = control.call(Method::GET, "/runners/me", None).await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "the control plane refused this runner's key ({status}): {}",
            message(&body)
        );
        let me: serde_json::Value = serde_json::from_slice(&body).context("reading /api/runners/me")?;
        let id = me["id"].as_str().context("/api/runners/me names no runner id")?.to_string();
        let name = me["name"].as_str().unwrap_or_default().to_string();
        let public = me["controlPlaneKey"]
            .as_str()
            .context("the control plane gave no controlPlaneKey: is it an Atoll server?")?;
        let verifier = ControlVerifier::new(public, &id)
            .map_err(|e| anyhow::anyhow!("the control plane's key: {e}"))?;

        let host = crate::host::prepare(&args.host, &data_dir)?;
        crate::host::spawn_image_collector(
            &host,
            std::time::Duration::from_secs(args.host.image_gc_grace_secs),
            std::time::Duration::from_secs(args.host.build_cache_days * 86_400),
        );
        let runtime: Arc<dyn Runtime> = Arc::new(crate::host::local_runtime(&host, &args.host)?);
        let recovered = runtime
            .recover()
            .await
            .map_err(|e| anyhow::anyhow!("re-adopting sandboxes: {e}"))?;
        tracing::info!(runner = %id, %name, sandboxes = recovered.len(), "runner recovered its sandboxes");

        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let app = atoll_remote::server::router(runtime.clone(), verifier);
        let health = tokio::spawn(report_health(control, runtime, advertise.clone()));
        tracing::info!(runner = %id, %name, listen = %args.listen, advertise = %advertise, "atoll runner is serving");
        match tls {
            Some(config) => {
                axum::serve(atoll_remote::tls::TlsListener::new(listener, config), app)
                    .with_graceful_shutdown(crate::serve::shutdown_signal())
                    .await
                    .context("serving")?;
            }
            None => {
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(crate::serve::shutdown_signal())
                    .await
                    .context("serving")?;
            }
        }
        health.abort();
        tracing::info!("runner shutting down; sandboxes keep running and are re-adopted on the next start");
        Ok(())
    })
}

/// Reports this runner's health and address every 10 s.
async fn report_health(control: ControlPlanes, runtime: Arc<dyn Runtime>, advertise: String) {
    let mut interval = tokio::time::interval(atoll_api::runners::health_interval());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let metrics = match runtime.capacity().await {
            Ok(c) => {
                let disk_used = c.disk_gib.saturating_sub(c.disk_free_gib) as f64;
                let pct = |used: f64, total: f64| {
                    if total > 0.0 {
                        100.0 * used / total
                    } else {
                        0.0
                    }
                };
                let images = runtime.images().await.map_or(0, |i| i.len());
                serde_json::json!({
                    "currentCpuLoadAverage": 0.0,
                    "currentCpuUsagePercentage": 0.0,
                    "currentMemoryUsagePercentage": 0.0,
                    "currentDiskUsagePercentage": pct(disk_used, c.disk_gib as f64),
                    "currentAllocatedCpu": 0,
                    "currentAllocatedMemoryGiB": 0,
                    "currentAllocatedDiskGiB": 0,
                    "currentSnapshotCount": images,
                    "currentStartedSandboxes": c.running,
                    "currentImageDiskBytes": c.images_bytes,
                    "cpu": c.cpu,
                    "memoryGiB": c.memory_gib,
                    "diskGiB": c.disk_gib,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading this host's capacity failed");
                serde_json::Value::Null
            }
        };
        let body = serde_json::json!({
            "appVersion": env!("CARGO_PKG_VERSION"),
            "apiUrl": advertise,
            "metrics": metrics,
        });
        match control
            .call(Method::POST, "/runners/healthcheck", Some(body))
            .await
        {
            Ok((s, _)) if s.is_success() => {}
            Ok((s, b)) => {
                tracing::warn!(status = %s, message = %message(&b), "the control plane refused a health check")
            }
            Err(e) => tracing::warn!(error = %e, "health check failed"),
        }
    }
}
