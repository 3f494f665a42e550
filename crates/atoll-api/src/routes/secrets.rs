//! `/api/secret…`: the organization's secrets (`SecretService`). Values go
//! in, never come out.

use crate::auth::Principal;
use crate::dto::{CreateSecret, ListSecretsResponse, Secret, UpdateSecret};
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;

#[utoipa::path(post, path = "/api/secret", request_body = CreateSecret,
    responses((status = 201, body = Secret), (status = 400), (status = 409)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateSecret>,
) -> Result<(StatusCode, Json<Secret>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.create_secret(&p, req).await?)))
}

#[utoipa::path(get, path = "/api/secret", responses((status = 200, body = Vec<Secret>)))]
pub async fn list(State(s): State<AppState>, p: Principal) -> Result<Json<Vec<Secret>>, ApiError> {
    Ok(Json(s.list_secrets(&p).await?))
}

const SORT_FIELDS: &[&str] = &["name", "createdAt", "updatedAt"];

/// `SecretService.list`: cursor pages, `name` a partial match.
#[utoipa::path(get, path = "/api/secret/paginated",
    params(("cursor" = Option<String>, Query), ("limit" = Option<i64>, Query), ("name" = Option<String>, Query),
        ("sort" = Option<String>, Query), ("order" = Option<String>, Query)),
    responses((status = 200, body = ListSecretsResponse), (status = 400)))]
pub async fn paginated(
    State(s): State<AppState>,
    p: Principal,
    uri: Uri,
) -> Result<Json<ListSecretsResponse>, ApiError> {
    let q = QueryPairs::parse(uri.query());
    if let Some((k, _)) =
        q.0.iter()
            .find(|(k, _)| !["cursor", "limit", "name", "sort", "order"].contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter {k:?}"
        )));
    }
    let limit = q.int("limit")?.unwrap_or(100);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 200, got {limit}"
        )));
    }
    let offset: usize = match q.get("cursor") {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}")))?,
    };
    let (sort, desc) = q.sort_order(SORT_FIELDS)?;
    let mut all = s.list_secrets(&p).await?;
    if let Some(n) = q.get("name") {
        let n = n.to_lowercase();
        all.retain(|x| x.name.to_lowercase().contains(&n));
    }
    all.sort_by(|a, b| {
        let o = match sort {
            "name" => a.name.cmp(&b.name),
            "updatedAt" => a.updated_at.cmp(&b.updated_at),
            _ => a.created_at.cmp(&b.created_at),
        }
        .then_with(|| a.id.cmp(&b.id));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    let total = all.len();
    let end = (offset + limit as usize).min(total);
    let items = all.get(offset.min(total)..end).unwrap_or_default().to_vec();
    Ok(Json(ListSecretsResponse {
        items,
        total: total as i64,
        next_cursor: (end < total).then(|| end.to_string()),
    }))
}

#[utoipa::path(get, path = "/api/secret/{secretId}",
    params(("secretId" = String, Path)), responses((status = 200, body = Secret), (status = 404)))]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Secret>, ApiError> {
    Ok(Json(s.get_secret(&p, &id).await?))
}

#[utoipa::path(patch, path = "/api/secret/{secretId}", request_body = UpdateSecret,
    params(("secretId" = String, Path)), responses((status = 200, body = Secret), (status = 404)))]
pub async fn update(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateSecret>,
) -> Result<Json<Secret>, ApiError> {
    Ok(Json(s.update_secret(&p, &id, req).await?))
}

#[utoipa::path(delete, path = "/api/secret/{secretId}",
    params(("secretId" = String, Path)), responses((status = 204), (status = 404), (status = 409)))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.delete_secret(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
