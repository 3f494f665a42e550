//! Toolbox proxy: forwards one HTTP request to a sandbox daemon's unix
//! socket and streams the answer back, bodies never buffered whole.
//! Upgrades (WebSockets) are passed through as raw byte pipes. Keep-alive
//! connections to each daemon are pooled ([`pool`], also used by the
//! daemon's preview tunnel): the free functions use one process-wide
//! [`DaemonPool`].

pub mod app;
pub mod pool;

pub use pool::PooledBody;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use pool::{boxed, ConnPool, PoolBody, PoolError};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("the sandbox's toolbox is not reachable: {0}")]
    Connect(std::io::Error),
    #[error("talking to the sandbox's toolbox: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the forwarded request: {0}")]
    Request(#[from] http::Error),
}

/// Hop-by-hop headers that are never forwarded (RFC 9110 §7.6.1), except
/// `connection`/`upgrade` on upgrade requests.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Joins an upgraded client connection to the upstream one that answered
/// `101 Switching Protocols` (a WebSocket through a proxy): a raw byte pipe
/// both ways, on a task of its own. Each direction runs to its own end and
/// then shuts its writer down: an error one way (the upstream gone while
/// the client still sends) never cuts off what the other way still has to
/// deliver, such as a command's last frames.
pub fn splice_upgrade<B>(client: hyper::upgrade::OnUpgrade, upstream: &mut Response<B>) {
    let upstream = hyper::upgrade::on(upstream);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        use tokio::io::AsyncWriteExt;
        let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
        let (mut up_read, mut up_write) = tokio::io::split(TokioIo::new(upstream));
        let to_upstream = async {
            let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
            let _ = up_write.shutdown().await;
        };
        let to_client = async {
            let _ = tokio::io::copy(&mut up_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
        };
        tokio::join!(to_upstream, to_client);
    });
}

/// Idle connections to sandbox daemons, by socket path.
pub type DaemonPool = ConnPool<PathBuf>;

/// Idle connections kept per daemon socket.
pub const DEFAULT_MAX_IDLE_PER_SOCKET: usize = 32;
/// How long an idle daemon connection is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for DaemonPool {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_IDLE_PER_SOCKET, DEFAULT_IDLE_TIMEOUT)
    }
}

impl From<PoolError> for ProxyError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Connect(e) => ProxyError::Connect(e),
            PoolError::Http(e) => ProxyError::Http(e),
        }
    }
}

/// Decides whether the process at the other end of a new connection may
/// receive requests (an `Err` drops the connection unused).
pub type PeerCheck =
    std::sync::Arc<dyn Fn(&tokio::net::UnixStream) -> std::io::Result<()> + Send + Sync>;

/// A sandbox daemon's socket and a check of who answers on it: called on
/// every new connection before anything is sent (the control plane checks
/// `SO_PEERCRED` against the sandbox there).
#[derive(Clone)]
pub struct Endpoint {
    pub socket: PathBuf,
    pub verify: Option<PeerCheck>,
}

impl Endpoint {
    /// A socket whose peer is not checked (tests, standalone daemons).
    pub fn unchecked(socket: &Path) -> Endpoint {
        Endpoint {
            socket: socket.into(),
            verify: None,
        }
    }

    async fn connect(&self) -> Result<tokio::net::UnixStream, PoolError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(PoolError::Connect)?;
        if let Some(v) = &self.verify {
            v(&stream).map_err(PoolError::Connect)?;
        }
        Ok(stream)
    }
}

/// The pool behind [`forward`] and [`get`]: every toolbox and preview
/// request of this process shares its idle daemon connections.
pub fn shared_pool() -> &'static DaemonPool {
    static POOL: LazyLock<DaemonPool> = LazyLock::new(DaemonPool::default);
    &POOL
}

/// Forwards `req` to the daemon listening on `socket`, rewriting its target
/// to `path_and_query` (the part after `/toolbox/{sandboxId}`) and dropping
/// the caller's credentials. Extra headers are added as given. Uses the
/// process-wide [`shared_pool`].
pub async fn forward<B>(
    socket: &Endpoint,
    req: Request<B>,
    path_and_query: &str,
    extra_headers: &[(HeaderName, HeaderValue)],
) -> Result<Response<PooledBody>, ProxyError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    shared_pool()
        .forward(socket, req, path_and_query, extra_headers)
        .await
}

/// A small GET to a sandbox daemon (for the control plane's own questions,
/// like "is anything still running?"): status and the whole body, which
/// must be under `limit` bytes. Uses the process-wide [`shared_pool`].
pub async fn get(
    socket: &Endpoint,
    path: &str,
    limit: usize,
) -> Result<(StatusCode, Bytes), ProxyError> {
    shared_pool().get(socket, path, limit).await
}

impl DaemonPool {
    /// [`forward`] over this pool's connections.
    pub async fn forward<B>(
        &self,
        socket: &Endpoint,
        req: Request<B>,
        path_and_query: &str,
        extra_headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<PooledBody>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let socket_key = socket.socket.clone();
        let connect = || async {
            let stream = socket.connect().await?;
            Ok(pool::handshake(TokioIo::new(stream)).await?)
        };
        self.forward_with(&socket_key, connect, req, path_and_query, extra_headers)
            .await
    }
}

impl<K> ConnPool<K>
where
    K: std::hash::Hash + Eq + Clone + Send + 'static,
{
    /// A small GET over a pooled connection for `key` (or a new one from
    /// `connect`): status and the whole body, which must be under `limit`
    /// bytes (for the control plane's own questions, like "is anything
    /// still running?").
    pub async fn get_with<C, F>(
        &self,
        key: &K,
        connect: C,
        path: &str,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), ProxyError>
    where
        C: FnOnce() -> F,
        F: std::future::Future<
            Output = Result<hyper::client::conn::http1::SendRequest<PoolBody>, PoolError>,
        >,
    {
        use http_body_util::{Empty, Limited};
        let req = Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .header(header::HOST, "sandbox")
            .body(boxed(Empty::<Bytes>::new()))?;
        let resp = self.send(key, req, true, connect).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| ProxyError::Connect(std::io::Error::other(e.to_string())))?
            .to_bytes();
        Ok((status, body))
    }

    /// Forwards `req` over a pooled connection for `key` (or a new one from
    /// `connect`) as [`forward`] does: target rewritten to
    /// `path_and_query`, hop-by-hop headers and the caller's credentials
    /// dropped, `extra_headers` added, upgrades spliced as raw byte pipes,
    /// and the answer's own hop-by-hop headers dropped.
    pub async fn forward_with<B, C, F>(
        &self,
        key: &K,
        connect: C,
        mut req: Request<B>,
        path_and_query: &str,
        extra_headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<PooledBody>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        C: FnOnce() -> F,
        F: std::future::Future<
            Output = Result<hyper::client::conn::http1::SendRequest<PoolBody>, PoolError>,
        >,
    {
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let out = daemon_request(req, path_and_query, extra_headers, upgrade)?;
        let mut resp = self.send(key, out, !upgrade, connect).await?;
        // Our client talks to us, an HTTP/1.1 server, whatever the daemon
        // (or an app behind its preview tunnel) said: an HTTP/1.0 status
        // line would make hyper close the client's connection.
        *resp.version_mut() = http::Version::HTTP_11;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        for name in HOP_BY_HOP {
            headers.remove(*name);
        }
        if !switching {
            headers.remove(header::CONNECTION);
            headers.remove(header::UPGRADE);
        }

        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            splice_upgrade(client_upgrade, &mut resp);
        }
        Ok(resp)
    }
}

impl DaemonPool {
    /// [`get`] over this pool's connections.
    pub async fn get(
        &self,
        socket: &Endpoint,
        path: &str,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let connect = || async {
            let stream = socket.connect().await?;
            Ok(pool::handshake(TokioIo::new(stream)).await?)
        };
        self.get_with(&socket.socket, connect, path, limit).await
    }
}

/// The request the daemon gets: `req`'s method, headers and body with
/// `path_and_query` as target, hop-by-hop headers and the caller's
/// credentials dropped (`Connection`/`Upgrade` kept on upgrades), Host
/// "sandbox" unless `extra_headers` names one, and `extra_headers` added.
fn daemon_request<B>(
    req: Request<B>,
    path_and_query: &str,
    extra_headers: &[(HeaderName, HeaderValue)],
    upgrade: bool,
) -> Result<Request<PoolBody>, ProxyError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(path_and_query)
        .version(http::Version::HTTP_11);
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || name == header::AUTHORIZATION || name == header::HOST {
            continue;
        }
        if !upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        builder = builder.header(name, value);
    }
    // The daemon sees Host "sandbox" unless the caller passes one (the
    // preview proxy keeps the client's, for apps that build URLs from it).
    let host = extra_headers
        .iter()
        .find(|(n, _)| n == header::HOST)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| HeaderValue::from_static("sandbox"));
    builder = builder.header(header::HOST, host);
    for (n, v) in extra_headers.iter().filter(|(n, _)| n != header::HOST) {
        builder = builder.header(n, v);
    }
    Ok(builder.body(boxed(body))?)
}
