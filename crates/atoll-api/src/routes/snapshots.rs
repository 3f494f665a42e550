//! `/api/snapshots…`: the images sandboxes start from ("snapshots" in
//! Daytona's API). For now the built-in default image.

use crate::auth::Principal;
use crate::dto::{PaginatedSnapshots, SnapshotDto};
use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::Json;

async fn images(s: &AppState) -> Result<Vec<atoll_runtime_api::ImageInfo>, ApiError> {
    s.image_catalog().await
}

#[utoipa::path(get, path = "/api/snapshots",
    params(("page" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("name" = Option<String>, Query)),
    responses((status = 200, body = PaginatedSnapshots)))]
pub async fn list(
    State(s): State<AppState>,
    _p: Principal,
    uri: Uri,
) -> Result<Json<PaginatedSnapshots>, ApiError> {
    let q = QueryPairs::parse(uri.query());
    let page = q.int("page")?.unwrap_or(1);
    let limit = q.int("limit")?.unwrap_or(100);
    if page < 1 || !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(
            "page must be >= 1 and limit between 1 and 200".into(),
        ));
    }
    let mut all: Vec<SnapshotDto> = images(&s)
        .await?
        .iter()
        .map(|i| s.snapshot_dto(i))
        .collect();
    if let Some(n) = q.get("name") {
        all.retain(|d| d.name.contains(n));
    }
    let total = all.len() as i64;
    let items = all
        .into_iter()
        .skip(((page - 1) * limit) as usize)
        .take(limit as usize)
        .collect();
    Ok(Json(PaginatedSnapshots {
        items,
        total,
        page,
        total_pages: (total + limit - 1) / limit,
    }))
}

#[utoipa::path(get, path = "/api/snapshots/{id}",
    params(("id" = String, Path, description = "snapshot id or name")),
    responses((status = 200, body = SnapshotDto), (status = 404)))]
pub async fn get(
    State(s): State<AppState>,
    _p: Principal,
    Path(id): Path<String>,
) -> Result<Json<SnapshotDto>, ApiError> {
    images(&s)
        .await?
        .iter()
        .find(|i| i.name == id || i.digest == id)
        .map(|i| Json(s.snapshot_dto(i)))
        .ok_or_else(|| ApiError::NotFound(format!("Snapshot {id} not found")))
}
