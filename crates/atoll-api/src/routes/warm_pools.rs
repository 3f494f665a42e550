//! `/api/warm-pools`: `WarmPoolService` (list, create, update, delete).

use crate::auth::Principal;
use crate::dto::{CreateWarmPool, UpdateWarmPool, WarmPool};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

#[utoipa::path(get, path = "/api/warm-pools", responses((status = 200, body = Vec<WarmPool>)))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<WarmPool>>, ApiError> {
    Ok(Json(s.list_warm_pools(&p).await?))
}

#[utoipa::path(post, path = "/api/warm-pools", request_body = CreateWarmPool,
    responses((status = 201, body = WarmPool), (status = 400), (status = 404), (status = 409)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateWarmPool>,
) -> Result<(StatusCode, Json<WarmPool>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.create_warm_pool(&p, req).await?),
    ))
}

#[utoipa::path(patch, path = "/api/warm-pools/{id}", request_body = UpdateWarmPool,
    params(("id" = String, Path)), responses((status = 200, body = WarmPool), (status = 400), (status = 404)))]
pub async fn update(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateWarmPool>,
) -> Result<Json<WarmPool>, ApiError> {
    Ok(Json(s.update_warm_pool(&p, &id, req).await?))
}

#[utoipa::path(delete, path = "/api/warm-pools/{id}",
    params(("id" = String, Path)), responses((status = 204), (status = 404)))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.delete_warm_pool(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
