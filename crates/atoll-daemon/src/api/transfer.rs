//! Streamed transfer routes: `GET /files/download`, `POST /files/upload`
//! (legacy, multipart field `file`), `POST /files/upload-v2` (multipart
//! `file` or a raw body), `POST /files/bulk-upload` and
//! `POST /files/bulk-download` (a multipart response, one part per path, in
//! request order, built lazily so files are read while being sent).

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;

use super::error::{error_body_json, ApiError};
use super::extract::{JsonBody, QueryParams};
use super::multipart;
use super::AppState;
use crate::fs::transfer::{self, ExactReader, UploadedEntry};
use crate::fs::FsContext;

/// Read size for streamed downloads.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct DownloadRequest {
    paths: Vec<String>,
}

/// `UploadedFile`.
#[derive(Debug, Serialize)]
pub struct UploadedFile {
    name: String,
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// `UploadFilesResponse` on success.
#[derive(Debug, Serialize)]
pub struct UploadFilesResponse {
    files: Vec<UploadedEntry>,
}

fn multipart_of(
    headers: &HeaderMap,
    body: Body,
) -> Result<(multer::Multipart<'static>, BodyRest), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(ct)
        .map_err(|e| ApiError::InvalidBody(format!("expected a multipart/form-data body: {e}")))?;
    let shared = Arc::new(std::sync::Mutex::new(body.into_data_stream()));
    let stream = SharedBody(shared.clone());
    Ok((multer::Multipart::new(stream, boundary), BodyRest(shared)))
}

/// A request body multer reads from, shared with [`BodyRest`].
struct SharedBody(Arc<std::sync::Mutex<axum::body::BodyDataStream>>);

impl Stream for SharedBody {
    type Item = Result<bytes::Bytes, axum::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::pin::Pin::new(&mut *inner).poll_next(cx)
    }
}

/// What multer left of a request body: it stops at the closing boundary,
/// and a body not read to its end makes the server close the keep-alive
/// connection (the proxy then has to send its next request again).
struct BodyRest(Arc<std::sync::Mutex<axum::body::BodyDataStream>>);

/// Most of an epilogue read after the closing boundary.
const MAX_EPILOGUE: usize = 64 << 10;

impl BodyRest {
    /// Reads the rest of the body (an epilogue, a last CRLF), up to
    /// [`MAX_EPILOGUE`] bytes and a second: past that the connection is
    /// not worth keeping.
    async fn drain(self) {
        let read = async {
            let mut seen = 0usize;
            loop {
                let next = futures_util::future::poll_fn(|cx| {
                    let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
                    std::pin::Pin::new(&mut *inner).poll_next(cx)
                })
                .await;
                match next {
                    Some(Ok(chunk)) => {
                        seen += chunk.len();
                        if seen > MAX_EPILOGUE {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read).await;
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

fn resolve(fs: &FsContext, raw: Option<&str>) -> Result<std::path::PathBuf, ApiError> {
    Ok(fs.resolve(raw.unwrap_or(""))?)
}

/// `GET /files/download?path=`: the file's bytes, streamed.
pub async fn download(
    State(st): State<Arc<AppState>>,
    QueryParams(q): QueryParams<PathQuery>,
) -> Result<Response, ApiError> {
    let path = resolve(&st.fs, q.path.as_deref())?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let d = transfer::open_download(path).await?;
    let body = Body::from_stream(ReaderStream::with_capacity(
        ExactReader::new(d.file, d.len),
        READ_CHUNK,
    ));
    let disposition = multipart::attachment_disposition(&name);
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.len));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// `POST /files/upload?path=` (multipart `file`) → 200, empty body.
pub async fn upload_legacy(
    State(st): State<Arc<AppState>>,
    QueryParams(q): QueryParams<PathQuery>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let target = resolve(&st.fs, q.path.as_deref())?;
    let (parts, body) = req.into_parts();
    let (mp, rest) = multipart_of(&parts.headers, body)?;
    transfer::upload_form_file(&st.fs, target, mp).await?;
    rest.drain().await;
    Ok(StatusCode::OK)
}

/// `POST /files/upload-v2?path=` (multipart `file`, or a raw body) →
/// `UploadedFile`.
pub async fn upload_v2(
    State(st): State<Arc<AppState>>,
    QueryParams(q): QueryParams<PathQuery>,
    req: Request,
) -> Result<Json<UploadedFile>, ApiError> {
    let raw = q.path.unwrap_or_default();
    let target = st.fs.resolve(&raw)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    if is_multipart(&parts.headers) {
        let (mp, rest) = multipart_of(&parts.headers, body)?;
        transfer::upload_form_file(&st.fs, target, mp).await?;
        rest.drain().await;
    } else {
        transfer::upload_body(&st.fs, target, body.into_data_stream()).await?;
    }
    Ok(Json(UploadedFile {
        name,
        path: raw,
        kind: "file",
    }))
}

/// `POST /files/bulk-upload` → `{"files":[{"path","bytes"}]}`, or the
/// error body plus `errors` and `files` when some entries failed.
pub async fn bulk_upload(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Json<UploadFilesResponse>, ApiError> {
    let (parts, body) = req.into_parts();
    let (mp, rest) = multipart_of(&parts.headers, body)?;
    let report = transfer::bulk_upload(&st.fs, mp).await?;
    rest.drain().await;
    if !report.failures.is_empty() {
        return Err(ApiError::BulkUpload(report));
    }
    Ok(Json(UploadFilesResponse {
        files: report.files,
    }))
}

/// `POST /files/bulk-download` `{"paths":[...]}` → `multipart/form-data`.
pub async fn bulk_download(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    JsonBody(req): JsonBody<DownloadRequest>,
) -> Result<Response, ApiError> {
    if req.paths.is_empty() {
        return Err(ApiError::InvalidBody(
            "paths must be a non-empty list".into(),
        ));
    }
    let boundary = multipart::new_boundary();
    let content_type = multipart::content_type(&boundary);
    let ctx = PartContext {
        fs: st.fs.clone(),
        boundary: boundary.clone(),
        method,
        request_path: uri.path().to_string(),
    };
    let ctx = Arc::new(ctx);
    let parts = stream::iter(req.paths)
        .then(move |raw| {
            let ctx = ctx.clone();
            async move { part(&ctx, raw).await }
        })
        .flatten();
    let body = parts.chain(stream::once(async move {
        Ok::<_, io::Error>(multipart::closing(&boundary))
    }));
    let mut res = Body::from_stream(body).into_response();
    let value = HeaderValue::from_str(&content_type)
        .map_err(|e| ApiError::InvalidBody(format!("building the response: {e}")))?;
    res.headers_mut().insert(header::CONTENT_TYPE, value);
    Ok(res)
}

struct PartContext {
    fs: FsContext,
    boundary: String,
    method: Method,
    request_path: String,
}

/// The bytes of one part: the file, or an error part with Daytona's error
/// body (status and code as the single-file routes would answer).
async fn part(ctx: &PartContext, raw: String) -> BoxStream<'static, io::Result<Bytes>> {
    let opened = match ctx.fs.resolve(&raw) {
        Ok(path) => transfer::open_download(path).await,
        Err(e) => Err(e),
    };
    match opened {
        Ok(d) => {
            let head = multipart::file_part_head(&ctx.boundary, &raw, d.len);
            stream::once(async move { Ok(head) })
                .chain(ReaderStream::with_capacity(
                    ExactReader::new(d.file, d.len),
                    READ_CHUNK,
                ))
                .chain(stream::once(async {
                    Ok(Bytes::from_static(multipart::PART_END))
                }))
                .boxed()
        }
        Err(e) => {
            let mark = ApiError::Fs(e).mark();
            let json = error_body_json(&mark, &ctx.method, &ctx.request_path);
            let part = multipart::error_part(&ctx.boundary, &raw, &json);
            stream::once(async move { Ok(part) }).boxed()
        }
    }
}
