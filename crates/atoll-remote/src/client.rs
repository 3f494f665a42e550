//! `RemoteRuntime`: the control plane's [`Runtime`] for a runner on
//! another host (or process), over the runner API (`server`). Calls go over
//! pooled keep-alive HTTP/1.1 connections; a stream (toolbox, port) is a
//! connection of its own upgraded to a byte pipe. A runner that cannot be
//! reached, or does not answer in time, is `RuntimeError::Unreachable`:
//! nothing is known of the outcome, and callers never read it as a
//! sandbox's state.

use crate::token::{ControlKey, SCHEME};
use crate::wire::{self, ErrorBody, StreamEvent, STREAM_UPGRADE};
use atoll_proxy::pool::{self, ConnPool, PoolBody, PoolError};
use atoll_runtime_api::{
    BoxedStream, Capacity, DiskState, ImageInfo, Limits, NetworkPolicy, Observed, Runtime,
    RuntimeError, SandboxSpec, SandboxUsage,
};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// How long a call may take (a start waits for the sandbox's daemon).
const START_TIMEOUT: Duration = Duration::from_secs(120);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a streamed call (a pull, a commit) may go without a line; the
/// runner sends keep-alives every 10 s.
const STREAM_IDLE: Duration = Duration::from_secs(60);
/// How long a streamed upload to a runner (a build context, a volume
/// file) may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Most bytes of an answer.
const MAX_ANSWER: usize = 16 << 20;

/// See the module doc.
pub struct RemoteRuntime {
    runner_id: String,
    /// `host:port` of the runner API.
    authority: String,
    /// `https://`: TLS, the runner's certificate checked against these
    /// roots (made with the client).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Path the runner API is mounted under (empty, or `/runner` on an
    /// `atoll serve` whose embedded runner it is).
    prefix: String,
    key: Arc<ControlKey>,
    pool: ConnPool<()>,
}

impl std::fmt::Debug for RemoteRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRuntime")
            .field("runner_id", &self.runner_id)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl RemoteRuntime {
    /// A client of the runner `runner_id` whose API is at `api_url`
    /// (`http://host:port`), signing its requests with `key`.
    pub fn new(
        runner_id: &str,
        api_url: &str,
        key: Arc<ControlKey>,
    ) -> Result<RemoteRuntime, RuntimeError> {
        let (tls, rest) = match api_url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => {
                return Err(RuntimeError::Failed(format!(
                    "runner URL {api_url:?}: expected http:// or https://"
                )))
            }
        };
        let rest = rest.trim_end_matches('/');
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a, format!("/{p}")),
            None => (rest, String::new()),
        };
        let bad_prefix = prefix.contains("..")
            || prefix.bytes().any(|b| {
                !(b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_' || b == b'.')
            });
        if authority.is_empty() || authority.contains('@') || bad_prefix {
            return Err(RuntimeError::Failed(format!(
                "runner URL {api_url:?} is not http://host:port[/path]"
            )));
        }
        Ok(RemoteRuntime {
            runner_id: runner_id.to_string(),
            authority: authority.to_string(),
            tls: if tls {
                Some(crate::tls::client_config().map_err(|e| {
                    RuntimeError::Failed(format!("TLS for runner {runner_id}: {e}"))
                })?)
            } else {
                None
            },
            prefix,
            key,
            pool: ConnPool::new(8, Duration::from_secs(30)),
        })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Unreachable(format!(
            "runner {} ({}): {e}",
            self.runner_id, self.authority
        ))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<PoolBody>, RuntimeError> {
        let token = self
            .key
            .token(&self.runner_id, method.as_str(), path, now_ms());
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("{SCHEME} {token}"));
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        b.body(pool::boxed(Full::new(Bytes::from(
            body.unwrap_or_default(),
        ))))
        .map_err(|e| RuntimeError::Failed(format!("building a runner request: {e}")))
    }

    async fn connect(&self) -> Result<Box<dyn crate::tls::Stream>, PoolError> {
        crate::tls::connect(&self.authority, self.tls.as_ref())
            .await
            .map_err(PoolError::Connect)
    }

    /// One call: `method path` with a JSON body, answered with JSON `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, RuntimeError> {
        let req = self.request(method, path, body)?;
        let connect = || async { Ok(pool::handshake_io(self.connect().await?).await?) };
        let sent = tokio::time::timeout(timeout, async {
            let resp = self.pool.send(&(), req, true, connect).await?;
            read_answer(resp).await
        })
        .await;
        let (status, bytes) = match sent {
            Err(_) => {
                return Err(self.unreachable(format!("no answer within {} s", timeout.as_secs())))
            }
            Ok(Err(e)) => return Err(self.unreachable(e)),
            Ok(Ok(answer)) => answer,
        };
        answer(status, &bytes)
    }

    /// `PUT route` with `body` streamed; the answer comes once the runner
    /// has read it all.
    async fn put_streamed<T: DeserializeOwned>(
        &self,
        route: &str,
        body: atoll_runtime_api::ByteSource,
    ) -> Result<T, RuntimeError> {
        use futures_util::StreamExt;
        let token = self.key.token(&self.runner_id, "PUT", route, now_ms());
        let frames = tokio_util::io::ReaderStream::with_capacity(body, 1 << 16)
            .map(|chunk| chunk.map(hyper::body::Frame::data));
        let req = Request::builder()
            .method(Method::PUT)
            .uri(route)
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("{SCHEME} {token}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(pool::boxed(http_body_util::StreamBody::new(frames)))
            .map_err(|e| RuntimeError::Failed(format!("building a runner request: {e}")))?;
        let sent = tokio::time::timeout(UPLOAD_TIMEOUT, async {
            let tcp = self.connect().await?;
            let mut sender = pool::handshake_io(tcp).await?;
            let resp = sender.send_request(req).await?;
            read_answer(resp).await
        })
        .await;
        match sent {
            Err(_) => Err(self.unreachable("an upload to the runner did not finish in time")),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Ok(Ok((status, bytes))) => answer(status, &bytes),
        }
    }

    fn path(&self, id: &str, tail: &str) -> String {
        // Ids are validated by the runtime at the other end; they must not
        // change the path here either.
        format!(
            "{}{}/sandboxes/{}{tail}",
            self.prefix,
            wire::PREFIX,
            enc(id)
        )
    }

    /// A route outside any sandbox, under the mount prefix.
    fn root(&self, route: &str) -> String {
        format!("{}{route}", self.prefix)
    }

    /// Sends `req` on a connection of its own (not the pool's: its answer
    /// is long or becomes a stream); the answer's head within
    /// [`CALL_TIMEOUT`].
    async fn send_alone(
        &self,
        req: Request<PoolBody>,
        what: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, RuntimeError> {
        let opened = tokio::time::timeout(CALL_TIMEOUT, async {
            let tcp = self.connect().await?;
            let mut sender = pool::handshake_io(tcp).await?;
            Ok::<_, PoolError>(sender.send_request(req).await?)
        })
        .await;
        match opened {
            Err(_) => Err(self.unreachable(format!("no answer to {what}"))),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// A call answered with a stream of [`StreamEvent`] lines: progress
    /// goes to `log`, the last line is the outcome. A runner silent for
    /// [`STREAM_IDLE`] (it sends keep-alives) is unreachable.
    async fn streamed_call(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
        log: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let req = self.request(Method::POST, path, body)?;
        let resp = self.send_alone(req, "a streamed call").await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = http_body_util::Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(answer::<ImageInfo>(status, &bytes)
                .err()
                .unwrap_or_else(|| RuntimeError::Failed(format!("the runner answered {status}"))));
        }
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let frame = match tokio::time::timeout(STREAM_IDLE, body.frame()).await {
                Err(_) => {
                    return Err(self.unreachable("the runner went silent during a streamed call"))
                }
                Ok(None) => {
                    return Err(
                        self.unreachable("the runner ended a streamed call without an outcome")
                    )
                }
                Ok(Some(Err(e))) => return Err(self.unreachable(e)),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            if pending.len() > MAX_ANSWER {
                return Err(self.unreachable("a streamed answer line is too long"));
            }
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let line = &line[..line.len() - 1];
                if line.is_empty() {
                    continue; // keep-alive
                }
                match serde_json::from_slice::<StreamEvent>(line) {
                    Ok(StreamEvent::Log(l)) => log(&l),
                    Ok(StreamEvent::Image(i)) => return Ok(i),
                    Ok(StreamEvent::Error(e)) => return Err(wire::decode(e)),
                    Err(e) => {
                        return Err(self.unreachable(format!(
                            "the runner's streamed answer is not the runner protocol: {e}"
                        )))
                    }
                }
            }
        }
    }

    async fn stream(&self, path: &str) -> Result<BoxedStream, RuntimeError> {
        let mut req = self.request(Method::GET, path, None)?;
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static(STREAM_UPGRADE));
        let resp = self.send_alone(req, "a stream request").await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(answer::<()>(status, &bytes).err().unwrap_or_else(|| {
                RuntimeError::Failed(format!("the runner answered {status} to a stream request"))
            }));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(Box::new(hyper_util::rt::TokioIo::new(upgraded)))
    }
}

/// A runner's answer: `T` on success, its runtime error otherwise.
fn answer<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, RuntimeError> {
    // Only an answer in the protocol's own shape says what happened; any
    // other (a refusal of our credentials, a proxy's error page, another
    // service on that address) says nothing about the sandbox: the
    // runner is, for this call, unreachable.
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| {
            RuntimeError::Unreachable(format!(
                "the runner's answer is not the runner protocol: {e}"
            ))
        });
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) if status == StatusCode::UNAUTHORIZED => Err(RuntimeError::Unreachable(format!(
            "the runner refused this control plane's credentials: {}",
            b.message
        ))),
        Ok(b) if b.kind == "notFound" || b.kind == "badRequest" => {
            Err(RuntimeError::Unreachable(format!(
                "the runner does not speak this protocol version: {}",
                b.message
            )))
        }
        Ok(b) => Err(wire::decode(b)),
        Err(_) => Err(RuntimeError::Unreachable(format!(
            "the runner answered {status} outside the runner protocol"
        ))),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An answer's status and body (at most [`MAX_ANSWER`] bytes).
async fn read_answer<B>(resp: http::Response<B>) -> Result<(StatusCode, Bytes), PoolError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| PoolError::Connect(std::io::Error::other(e.to_string())))?
        .to_bytes();
    Ok((status, bytes))
}

/// An id as one path segment: anything but `[A-Za-z0-9_-]` escaped.
fn enc(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn json<T: serde::Serialize>(v: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(v).ok()
}

#[async_trait::async_trait]
impl Runtime for RemoteRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let path = self.path(&spec.id, "/start");
        self.call(Method::POST, &path, json(spec), START_TIMEOUT)
            .await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(Method::POST, &self.path(id, "/stop"), None, CALL_TIMEOUT)
            .await
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(Method::POST, &self.path(id, "/destroy"), None, CALL_TIMEOUT)
            .await
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(Method::POST, &self.path(id, "/pause"), None, CALL_TIMEOUT)
            .await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(Method::POST, &self.path(id, "/resume"), None, CALL_TIMEOUT)
            .await
    }

    async fn archive(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(
            Method::POST,
            &self.path(id, "/archive"),
            None,
            START_TIMEOUT,
        )
        .await
    }

    async fn restore(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(
            Method::POST,
            &self.path(id, "/restore"),
            None,
            START_TIMEOUT,
        )
        .await
    }

    async fn discard_archive(&self, id: &str) -> Result<(), RuntimeError> {
        let path = self.path(id, "/discard-archive");
        self.call(Method::POST, &path, None, CALL_TIMEOUT).await
    }

    async fn disk_state(&self, id: &str) -> Result<DiskState, RuntimeError> {
        self.call(Method::GET, &self.path(id, "/disk"), None, CALL_TIMEOUT)
            .await
    }

    async fn recover(&self) -> Result<Vec<Observed>, RuntimeError> {
        self.call(Method::POST, &self.root("/v1/recover"), None, START_TIMEOUT)
            .await
    }

    async fn observe(&self) -> Result<Vec<Observed>, RuntimeError> {
        self.call(Method::GET, &self.root("/v1/sandboxes"), None, CALL_TIMEOUT)
            .await
    }

    async fn observe_one(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        self.call(Method::GET, &self.path(id, ""), None, CALL_TIMEOUT)
            .await
    }

    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>, RuntimeError> {
        self.call(Method::GET, &self.path(id, "/usage"), None, CALL_TIMEOUT)
            .await
    }

    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        let path = self.path(id, "/limits");
        self.call(Method::PUT, &path, json(limits), CALL_TIMEOUT)
            .await
    }

    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RuntimeError> {
        let path = self.path(id, "/network");
        self.call(Method::PUT, &path, json(policy), CALL_TIMEOUT)
            .await
    }

    async fn connect_toolbox(&self, id: &str) -> Result<BoxedStream, RuntimeError> {
        self.stream(&self.path(id, "/toolbox")).await
    }

    async fn connect_port(&self, id: &str, port: u16) -> Result<BoxedStream, RuntimeError> {
        self.stream(&self.path(id, &format!("/ports/{port}"))).await
    }

    async fn capacity(&self) -> Result<Capacity, RuntimeError> {
        self.call(Method::GET, &self.root("/v1/capacity"), None, CALL_TIMEOUT)
            .await
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        self.call(Method::GET, &self.root("/v1/images"), None, CALL_TIMEOUT)
            .await
    }

    async fn pull_image(
        &self,
        pull: &atoll_runtime_api::ImagePull,
        log: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        self.streamed_call(&self.root("/v1/images/pull"), json(pull), log)
            .await
    }

    async fn build_image(
        &self,
        build: &atoll_runtime_api::ImageBuild,
        log: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        self.streamed_call(&self.root("/v1/images/build"), json(build), log)
            .await
    }

    async fn import_image(
        &self,
        import: &atoll_runtime_api::ImageImport,
        log: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        self.streamed_call(&self.root("/v1/images/import"), json(import), log)
            .await
    }

    async fn create_volume(
        &self,
        id: &str,
        size_bytes: u64,
    ) -> Result<atoll_runtime_api::VolumePlacement, RuntimeError> {
        self.call(
            Method::PUT,
            &self.root(&format!("/v1/volumes/{}", enc(id))),
            json(&serde_json::json!({ "sizeBytes": size_bytes })),
            CALL_TIMEOUT,
        )
        .await
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(
            Method::DELETE,
            &self.root(&format!("/v1/volumes/{}", enc(id))),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    async fn volume_usage(&self, id: &str) -> Result<atoll_runtime_api::VolumeUsage, RuntimeError> {
        self.call(
            Method::GET,
            &self.root(&format!("/v1/volumes/{}", enc(id))),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    async fn has_build_context(&self, sha256: &str) -> Result<bool, RuntimeError> {
        if !atoll_runtime_api::is_sha256_hex(sha256) {
            return Err(RuntimeError::InvalidId(sha256.into()));
        }
        self.call(
            Method::GET,
            &self.root(&format!("/v1/build-contexts/{sha256}")),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    async fn put_build_context(
        &self,
        sha256: &str,
        body: atoll_runtime_api::ByteSource,
    ) -> Result<(), RuntimeError> {
        if !atoll_runtime_api::is_sha256_hex(sha256) {
            return Err(RuntimeError::InvalidId(sha256.into()));
        }
        self.put_streamed(&self.root(&format!("/v1/build-contexts/{sha256}")), body)
            .await
    }

    async fn volume_list(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Vec<atoll_runtime_api::VolumeEntry>, RuntimeError> {
        self.call(
            Method::GET,
            &self.root(&format!("/v1/volumes/{}/files?path={}", enc(id), enc(path))),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    async fn volume_read(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(u64, atoll_runtime_api::ByteSource), RuntimeError> {
        use futures_util::TryStreamExt;
        let route = self.root(&format!(
            "/v1/volumes/{}/content?path={}",
            enc(id),
            enc(path)
        ));
        let req = self.request(Method::GET, &route, None)?;
        let resp = self.send_alone(req, "a volume file read").await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(answer::<()>(status, &bytes)
                .err()
                .unwrap_or_else(|| RuntimeError::Failed(format!("the runner answered {status}"))));
        }
        let size = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let stream =
            http_body_util::BodyDataStream::new(resp.into_body()).map_err(std::io::Error::other);
        Ok((size, Box::new(tokio_util::io::StreamReader::new(stream))))
    }

    async fn volume_write(
        &self,
        id: &str,
        path: &str,
        body: atoll_runtime_api::ByteSource,
    ) -> Result<u64, RuntimeError> {
        let route = self.root(&format!(
            "/v1/volumes/{}/content?path={}",
            enc(id),
            enc(path)
        ));
        self.put_streamed(&route, body).await
    }

    async fn volume_remove(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), RuntimeError> {
        self.call(
            Method::DELETE,
            &self.root(&format!(
                "/v1/volumes/{}/files?path={}&recursive={recursive}",
                enc(id),
                enc(path)
            )),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    async fn remove_image(&self, name: &str) -> Result<bool, RuntimeError> {
        self.call(
            Method::POST,
            &self.root("/v1/images/remove"),
            json(&serde_json::json!({ "name": name })),
            CALL_TIMEOUT,
        )
        .await
    }

    async fn fork(
        &self,
        parent: &str,
        child: &str,
        image: &str,
    ) -> Result<atoll_runtime_api::ForkedDisk, RuntimeError> {
        // A byte copy (a host without reflinks) takes as long as the disk.
        self.call(
            Method::POST,
            &self.path(parent, "/fork"),
            json(&serde_json::json!({ "child": child, "image": image })),
            START_TIMEOUT,
        )
        .await
    }

    async fn commit(
        &self,
        id: &str,
        name: &str,
        log: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        self.streamed_call(
            &self.path(id, "/commit"),
            json(&serde_json::json!({ "name": name })),
            log,
        )
        .await
    }
}
