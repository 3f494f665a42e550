//! The runner's HTTP API (`atoll runner --listen`): each route is one call
//! of the [`Runtime`] it serves, every request authenticated by a
//! control-plane token for this runner. Stream routes (a sandbox's toolbox,
//! one of its ports) answer `101 Switching Protocols` and become a raw
//! byte pipe to what the runtime connected, after the runtime's own checks
//! passed (so a refused connect is an ordinary error answer).

use crate::token::{ControlVerifier, SCHEME};
use crate::wire::{self, ErrorBody, StreamEvent, STREAM_UPGRADE};
use atoll_runtime_api::{Limits, NetworkPolicy, Runtime, RuntimeError, SandboxSpec};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use std::sync::Arc;

#[derive(Clone)]
struct Served {
    runtime: Arc<dyn Runtime>,
    verifier: Arc<ControlVerifier>,
}

/// A runtime error as the protocol sends it.
struct Failure(RuntimeError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, body) = wire::encode(&self.0);
        (status, Json(body)).into_response()
    }
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Failure {
        Failure(e)
    }
}

type Answer<T> = Result<Json<T>, Failure>;

fn refuse(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            kind: kind.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn authenticate(State(s): State<Served>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(SCHEME))
        .map(|(_, t)| t.trim().to_string());
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Atoll-Control <token>",
        );
    };
    // The path and query as the client sent them (with a mount prefix
    // like `/runner`): the token signs both.
    let target = |u: &http::Uri| {
        u.path_and_query()
            .map_or_else(|| u.path().to_string(), |pq| pq.as_str().to_string())
    };
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| target(req.uri()), |u| target(&u.0));
    if let Err(e) = s
        .verifier
        .verify(&token, req.method().as_str(), &path, now_ms())
    {
        tracing::warn!(error = %e, "runner API: refused a request");
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
    }
    next.run(req).await
}

/// The runner API over `runtime`, for the control plane `verifier` trusts.
pub fn router(runtime: Arc<dyn Runtime>, verifier: ControlVerifier) -> Router {
    let s = Served {
        runtime,
        verifier: Arc::new(verifier),
    };
    Router::new()
        .route("/v1/sandboxes", get(observe))
        .route("/v1/recover", post(recover))
        .route("/v1/capacity", get(capacity))
        .route("/v1/images", get(images))
        .route("/v1/images/remove", post(remove_image))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/import", post(import_image))
        .route(
            "/v1/volumes/{id}",
            get(volume_usage).put(create_volume).delete(delete_volume),
        )
        .route(
            "/v1/volumes/{id}/files",
            get(volume_list).delete(volume_remove),
        )
        .route(
            "/v1/volumes/{id}/content",
            get(volume_read).put(volume_write),
        )
        .route(
            "/v1/build-contexts/{sha256}",
            get(has_build_context).put(put_build_context),
        )
        .route("/v1/sandboxes/{id}/commit", post(commit))
        .route("/v1/sandboxes/{id}/fork", post(fork))
        .route("/v1/sandboxes/{id}", get(observe_one))
        .route("/v1/sandboxes/{id}/start", post(start))
        .route("/v1/sandboxes/{id}/disk", get(disk_state))
        .route("/v1/sandboxes/{id}/usage", get(usage))
        .route("/v1/sandboxes/{id}/limits", put(update_limits))
        .route("/v1/sandboxes/{id}/network", put(update_network))
        .route("/v1/sandboxes/{id}/toolbox", get(toolbox))
        .route("/v1/sandboxes/{id}/ports/{port}", get(port))
        .route("/v1/sandboxes/{id}/{op}", post(operation))
        .layer(axum::middleware::from_fn_with_state(
            s.clone(),
            authenticate,
        ))
        .with_state(s)
}

async fn observe(State(s): State<Served>) -> Answer<Vec<atoll_runtime_api::Observed>> {
    Ok(Json(s.runtime.observe().await?))
}

async fn recover(State(s): State<Served>) -> Answer<Vec<atoll_runtime_api::Observed>> {
    Ok(Json(s.runtime.recover().await?))
}

async fn capacity(State(s): State<Served>) -> Answer<atoll_runtime_api::Capacity> {
    Ok(Json(s.runtime.capacity().await?))
}

async fn images(State(s): State<Served>) -> Answer<Vec<atoll_runtime_api::ImageInfo>> {
    Ok(Json(s.runtime.images().await?))
}

#[derive(serde::Deserialize)]
struct NameBody {
    name: String,
}

/// A body, not a query: the control-plane token signs the path only.
async fn remove_image(State(s): State<Served>, Json(b): Json<NameBody>) -> Answer<bool> {
    Ok(Json(s.runtime.remove_image(&b.name).await?))
}

/// How often a streamed answer sends a keep-alive line.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `call` (given a log sink) and answers with its progress lines and
/// outcome as they come ([`StreamEvent`]), a keep-alive meanwhile. The call
/// runs to its end even if the client goes away.
fn streamed<F>(call: F) -> Response
where
    F: for<'a> FnOnce(
            atoll_runtime_api::LogSink<'a>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<atoll_runtime_api::ImageInfo, RuntimeError>>
                    + Send
                    + 'a,
            >,
        > + Send
        + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    tokio::spawn(async move {
        let log_tx = tx.clone();
        let log = move |line: &str| {
            let _ = log_tx.send(StreamEvent::Log(line.to_string()).line());
        };
        let fut = call(&log);
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(KEEPALIVE);
        tick.tick().await;
        let out = loop {
            tokio::select! {
                out = &mut fut => break out,
                _ = tick.tick() => { let _ = tx.send(bytes::Bytes::from_static(b"\n")); }
            }
        };
        let event = match out {
            Ok(image) => StreamEvent::Image(image),
            Err(e) => StreamEvent::Error(wire::encode(&e).1),
        };
        let _ = tx.send(event.line());
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut resp = axum::body::Body::from_stream(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

async fn pull_image(
    State(s): State<Served>,
    Json(pull): Json<atoll_runtime_api::ImagePull>,
) -> Response {
    streamed(move |log| Box::pin(async move { s.runtime.pull_image(&pull, log).await }))
}

async fn build_image(
    State(s): State<Served>,
    Json(build): Json<atoll_runtime_api::ImageBuild>,
) -> Response {
    streamed(move |log| Box::pin(async move { s.runtime.build_image(&build, log).await }))
}

async fn import_image(
    State(s): State<Served>,
    Json(import): Json<atoll_runtime_api::ImageImport>,
) -> Response {
    streamed(move |log| Box::pin(async move { s.runtime.import_image(&import, log).await }))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateVolumeBody {
    size_bytes: u64,
}

async fn create_volume(
    State(s): State<Served>,
    Path(id): Path<String>,
    Json(body): Json<CreateVolumeBody>,
) -> Answer<atoll_runtime_api::VolumePlacement> {
    Ok(Json(s.runtime.create_volume(&id, body.size_bytes).await?))
}

async fn delete_volume(State(s): State<Served>, Path(id): Path<String>) -> Answer<()> {
    Ok(Json(s.runtime.delete_volume(&id).await?))
}

async fn volume_usage(
    State(s): State<Served>,
    Path(id): Path<String>,
) -> Answer<atoll_runtime_api::VolumeUsage> {
    Ok(Json(s.runtime.volume_usage(&id).await?))
}

#[derive(serde::Deserialize)]
struct VolumePath {
    path: String,
    #[serde(default)]
    recursive: bool,
}

async fn volume_list(
    State(s): State<Served>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<VolumePath>,
) -> Answer<Vec<atoll_runtime_api::VolumeEntry>> {
    Ok(Json(s.runtime.volume_list(&id, &q.path).await?))
}

async fn volume_remove(
    State(s): State<Served>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<VolumePath>,
) -> Answer<()> {
    Ok(Json(
        s.runtime.volume_remove(&id, &q.path, q.recursive).await?,
    ))
}

async fn volume_read(
    State(s): State<Served>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<VolumePath>,
) -> Result<Response, Failure> {
    let (size, reader) = s.runtime.volume_read(&id, &q.path).await?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok((
        [
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        ],
        body,
    )
        .into_response())
}

async fn volume_write(
    State(s): State<Served>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<VolumePath>,
    body: axum::body::Body,
) -> Answer<u64> {
    use futures_util::TryStreamExt;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    Ok(Json(
        s.runtime
            .volume_write(&id, &q.path, Box::new(reader))
            .await?,
    ))
}

async fn has_build_context(State(s): State<Served>, Path(sha256): Path<String>) -> Answer<bool> {
    Ok(Json(s.runtime.has_build_context(&sha256).await?))
}

async fn put_build_context(
    State(s): State<Served>,
    Path(sha256): Path<String>,
    body: axum::body::Body,
) -> Answer<()> {
    use futures_util::TryStreamExt;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    s.runtime
        .put_build_context(&sha256, Box::new(reader))
        .await?;
    Ok(Json(()))
}

#[derive(serde::Deserialize)]
struct CommitBody {
    name: String,
}

async fn commit(
    State(s): State<Served>,
    Path(id): Path<String>,
    Json(body): Json<CommitBody>,
) -> Response {
    streamed(move |log| Box::pin(async move { s.runtime.commit(&id, &body.name, log).await }))
}

#[derive(serde::Deserialize)]
struct ForkBody {
    child: String,
    image: String,
}

async fn fork(
    State(s): State<Served>,
    Path(id): Path<String>,
    Json(body): Json<ForkBody>,
) -> Answer<atoll_runtime_api::ForkedDisk> {
    Ok(Json(s.runtime.fork(&id, &body.child, &body.image).await?))
}

async fn observe_one(
    State(s): State<Served>,
    Path(id): Path<String>,
) -> Answer<Option<atoll_runtime_api::Observed>> {
    Ok(Json(s.runtime.observe_one(&id).await?))
}

async fn start(
    State(s): State<Served>,
    Path(id): Path<String>,
    Json(spec): Json<SandboxSpec>,
) -> Answer<()> {
    if spec.id != id {
        return Err(RuntimeError::InvalidId(spec.id).into());
    }
    Ok(Json(s.runtime.start(&spec).await?))
}

async fn operation(State(s): State<Served>, Path((id, op)): Path<(String, String)>) -> Response {
    let rt = &s.runtime;
    let done = match op.as_str() {
        "stop" => rt.stop(&id).await,
        "destroy" => rt.destroy(&id).await,
        "pause" => rt.pause(&id).await,
        "resume" => rt.resume(&id).await,
        "archive" => rt.archive(&id).await,
        "restore" => rt.restore(&id).await,
        "discard-archive" => rt.discard_archive(&id).await,
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "notFound",
                &format!("no operation {op:?}"),
            )
        }
    };
    match done {
        Ok(()) => Json(()).into_response(),
        Err(e) => Failure(e).into_response(),
    }
}

async fn disk_state(
    State(s): State<Served>,
    Path(id): Path<String>,
) -> Answer<atoll_runtime_api::DiskState> {
    Ok(Json(s.runtime.disk_state(&id).await?))
}

async fn usage(
    State(s): State<Served>,
    Path(id): Path<String>,
) -> Answer<Option<atoll_runtime_api::SandboxUsage>> {
    Ok(Json(s.runtime.usage(&id).await?))
}

async fn update_limits(
    State(s): State<Served>,
    Path(id): Path<String>,
    Json(limits): Json<Limits>,
) -> Answer<()> {
    Ok(Json(s.runtime.update_limits(&id, &limits).await?))
}

async fn update_network(
    State(s): State<Served>,
    Path(id): Path<String>,
    Json(policy): Json<NetworkPolicy>,
) -> Answer<()> {
    Ok(Json(s.runtime.update_network(&id, &policy).await?))
}

async fn toolbox(State(s): State<Served>, Path(id): Path<String>, req: Request) -> Response {
    if !wants_stream(&req) {
        return not_a_stream();
    }
    let stream = s.runtime.connect_toolbox(&id).await;
    splice(req, stream)
}

async fn port(
    State(s): State<Served>,
    Path((id, port)): Path<(String, u16)>,
    req: Request,
) -> Response {
    if !wants_stream(&req) {
        return not_a_stream();
    }
    let stream = s.runtime.connect_port(&id, port).await;
    splice(req, stream)
}

fn wants_stream(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STREAM_UPGRADE))
}

fn not_a_stream() -> Response {
    refuse(
        StatusCode::BAD_REQUEST,
        "badRequest",
        "stream routes need Upgrade: atoll-stream",
    )
}

/// Answers 101 and joins the client's upgraded connection to `stream`.
fn splice(
    mut req: Request,
    stream: Result<atoll_runtime_api::BoxedStream, RuntimeError>,
) -> Response {
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => return Failure(e).into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
            }
            Err(e) => tracing::debug!(error = %e, "runner API: upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(STREAM_UPGRADE));
    resp
}
