//! `/api/volumes…` (`VolumeService`): see [`crate::volumes`].

use crate::auth::Principal;
use crate::dto::{CreateVolume, VolumeDto};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::volumes::dto_of;
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;

#[utoipa::path(get, path = "/api/volumes", responses((status = 200, body = Vec<VolumeDto>)))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<VolumeDto>>, ApiError> {
    let mut out = Vec::new();
    for v in s.store.volumes_of(&p.organization_id).await? {
        out.push(dto_of(&s.volume_with_usage(v).await));
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/volumes", request_body = CreateVolume,
    responses((status = 200, body = VolumeDto), (status = 400), (status = 403)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateVolume>,
) -> Result<Json<VolumeDto>, ApiError> {
    Ok(Json(dto_of(&s.create_volume(&p, req).await?)))
}

#[utoipa::path(get, path = "/api/volumes/{volumeId}", params(("volumeId" = String, Path)),
    responses((status = 200, body = VolumeDto), (status = 404)))]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<VolumeDto>, ApiError> {
    let v = s.volume_of(&p, &id).await?;
    Ok(Json(dto_of(&s.volume_with_usage(v).await)))
}

#[utoipa::path(get, path = "/api/volumes/by-name/{name}", params(("name" = String, Path)),
    responses((status = 200, body = VolumeDto), (status = 404)))]
pub async fn by_name(
    State(s): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<Json<VolumeDto>, ApiError> {
    let v = s.volume_named(&p, &name).await?;
    Ok(Json(dto_of(&s.volume_with_usage(v).await)))
}

#[utoipa::path(delete, path = "/api/volumes/{volumeId}", params(("volumeId" = String, Path)),
    responses((status = 200), (status = 400), (status = 404), (status = 409)))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<(), ApiError> {
    s.delete_volume(&p, &id).await
}

// ---- files of a volume, without a sandbox -------------------------------

use crate::dto::VolumeFile;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Volume uploads streaming at once on this server.
const MAX_UPLOADS: usize = 32;
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UPLOADS);

/// `path` (required) and `recursive` of a files request.
fn file_query(uri: &Uri) -> Result<(String, bool), ApiError> {
    let q = crate::extract::QueryPairs::parse(uri.query());
    let path =
        q.0.iter()
            .find(|(k, _)| k == "path")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| ApiError::BadRequest("the path query parameter is required".into()))?;
    let recursive =
        q.0.iter()
            .any(|(k, v)| k == "recursive" && (v == "true" || v == "1"));
    Ok((path, recursive))
}

#[utoipa::path(get, path = "/api/volumes/{volumeId}/files",
    params(("volumeId" = String, Path), ("path" = String, Query)),
    responses((status = 200, body = Vec<VolumeFile>), (status = 400), (status = 404)))]
pub async fn list_files(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<Vec<VolumeFile>>, ApiError> {
    let (path, _) = file_query(&uri)?;
    let rt = s.volume_runtime(&p, &id).await?;
    let entries = rt.volume_list(&id, &path).await?;
    let dir = path.trim_end_matches('/');
    Ok(Json(
        entries
            .into_iter()
            .map(|e| crate::volumes::file_dto(dir, e))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/volumes/{volumeId}/files/download",
    params(("volumeId" = String, Path), ("path" = String, Query)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 404)))]
pub async fn download(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (path, _) = file_query(&uri)?;
    let rt = s.volume_runtime(&p, &id).await?;
    let (size, reader) = rt.volume_read(&id, &path).await?;
    let name = path.rsplit('/').next().unwrap_or("file").replace('"', "");
    Ok((
        [
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

#[utoipa::path(post, path = "/api/volumes/{volumeId}/files/upload",
    params(("volumeId" = String, Path), ("path" = String, Query)),
    responses((status = 200), (status = 400), (status = 404), (status = 507)))]
pub async fn upload(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    use futures_util::TryStreamExt;
    let (path, _) = file_query(&uri)?;
    // Each upload holds a runner thread while it streams: a bounded number
    // at once, so slow clients cannot hold them all.
    let Ok(_slot) = UPLOADS.try_acquire() else {
        return Err(ApiError::TooManyRequests {
            message: format!("at most {MAX_UPLOADS} volume uploads run at once; retry shortly"),
            retry_after_secs: 2,
        });
    };
    let rt = s.volume_runtime(&p, &id).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let stream = body.into_data_stream();
    if content_type.starts_with("multipart/form-data") {
        // As the toolbox's upload: the file is the part named `file`.
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| ApiError::BadRequest(format!("multipart body: {e}")))?;
        let mut form = multer::Multipart::new(stream, boundary);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::BadRequest(format!("multipart body: {e}")))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let reader = tokio_util::io::StreamReader::new(field.map_err(std::io::Error::other));
            rt.volume_write(&id, &path, Box::new(reader)).await?;
            return Ok(StatusCode::OK);
        }
        return Err(ApiError::BadRequest(
            "the multipart body has no part named file".into(),
        ));
    }
    let reader = tokio_util::io::StreamReader::new(stream.map_err(std::io::Error::other));
    rt.volume_write(&id, &path, Box::new(reader)).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(delete, path = "/api/volumes/{volumeId}/files",
    params(("volumeId" = String, Path), ("path" = String, Query), ("recursive" = Option<bool>, Query)),
    responses((status = 204), (status = 400), (status = 404)))]
pub async fn delete_file(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let (path, recursive) = file_query(&uri)?;
    let rt = s.volume_runtime(&p, &id).await?;
    rt.volume_remove(&id, &path, recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}
