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
