//! `/api/runners…`: Daytona's runner routes. An admin registers, lists,
//! drains, marks unschedulable and deletes runners; a runner reads itself
//! and reports health with its own key.

use crate::auth::{Principal, RunnerPrincipal};
use crate::dto::{
    CreateRunner, CreateRunnerResponse, Runner, RunnerDraining, RunnerHealthcheck, RunnerScheduling,
};
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::runners::{state, valid_runner_name, RUNNER_CLASS};
use crate::AppState;
use atoll_store::{RunnerFlag, RunnerRecord};
use atoll_types::time::now_millis;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;

/// A query with a parameter the route does not know is a 400, never a
/// filter silently ignored.
fn only_keys(q: &QueryPairs, known: &[&str]) -> Result<(), ApiError> {
    match q.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(ApiError::BadRequest(format!(
            "unknown query parameter {k:?}"
        ))),
        None => Ok(()),
    }
}

async fn find(s: &AppState, id: &str) -> Result<RunnerRecord, ApiError> {
    s.store
        .runner(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Runner {id} not found")))
}

async fn dto(s: &AppState, r: &RunnerRecord, full: bool) -> Result<Runner, ApiError> {
    let held = s
        .store
        .runner_allocations(&s.local_runner_id)
        .await?
        .remove(&r.id)
        .unwrap_or_default();
    Ok(s.runner_dto(r, &held, full))
}

#[utoipa::path(post, path = "/api/runners", request_body = CreateRunner,
    responses((status = 201, body = CreateRunnerResponse), (status = 400), (status = 403), (status = 409)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateRunner>,
) -> Result<(StatusCode, Json<CreateRunnerResponse>), ApiError> {
    p.require_admin()?;
    if !valid_runner_name(&req.name) {
        return Err(ApiError::BadRequest(format!(
            "invalid runner name {:?}: 1-63 of a-z, 0-9, '-' and '.', starting with a letter or digit",
            req.name
        )));
    }
    if !valid_runner_name(&req.region_id) {
        return Err(ApiError::BadRequest(format!(
            "invalid regionId {:?}",
            req.region_id
        )));
    }
    if let Some(c) = req.sandbox_class.as_deref().filter(|c| *c != RUNNER_CLASS) {
        return Err(ApiError::BadRequest(format!(
            "sandboxClass {c:?} is not supported: Atoll runners run {RUNNER_CLASS:?} sandboxes"
        )));
    }
    let pinned = match req.api_url.as_deref() {
        Some(u) => {
            crate::runners::check_runner_url(u)?;
            Some(u.trim_end_matches('/').to_string())
        }
        None => None,
    };
    let tags = req.tags.unwrap_or_default();
    if tags.len() > 32
        || tags
            .iter()
            .any(|t| t.is_empty() || t.len() > 63 || t.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "tags: at most 32, each 1-63 printable characters".into(),
        ));
    }
    let key = crate::auth::generate_key()?;
    let now = now_millis();
    let r = RunnerRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        region: req.region_id,
        runner_class: RUNNER_CLASS.into(),
        tags,
        api_key_hash: crate::auth::hash_key(&key),
        state: state::INITIALIZING.into(),
        unschedulable: false,
        draining: false,
        local: false,
        api_url: pinned.clone(),
        proxy_url: None,
        domain: None,
        app_version: None,
        cpu: 0,
        memory_gib: 0,
        disk_gib: 0,
        metrics: None,
        last_checked: None,
        pinned_api_url: pinned,
        created_at: now,
        updated_at: now,
    };
    s.store.insert_runner(&r).await?;
    tracing::info!(runner = %r.id, name = %r.name, region = %r.region, "runner registered");
    Ok((
        StatusCode::CREATED,
        Json(CreateRunnerResponse {
            id: r.id,
            api_key: key,
        }),
    ))
}

#[utoipa::path(get, path = "/api/runners", params(("regionId" = Option<String>, Query)),
    responses((status = 200, body = Vec<Runner>), (status = 403)))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    uri: Uri,
) -> Result<Json<Vec<Runner>>, ApiError> {
    p.require_admin()?;
    let q = QueryPairs::parse(uri.query());
    only_keys(&q, &["regionId"])?;
    let region = q.get("regionId");
    let held = s.store.runner_allocations(&s.local_runner_id).await?;
    Ok(Json(
        s.store
            .runners()
            .await?
            .iter()
            .filter(|r| region.is_none_or(|want| r.region == want))
            .map(|r| s.runner_dto(r, &held.get(&r.id).copied().unwrap_or_default(), false))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/runners/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Runner), (status = 404)))]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Runner>, ApiError> {
    p.require_admin()?;
    let r = find(&s, &id).await?;
    Ok(Json(dto(&s, &r, false).await?))
}

#[utoipa::path(get, path = "/api/runners/{id}/full", params(("id" = String, Path)),
    responses((status = 200, body = Runner), (status = 404)))]
pub async fn get_full(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Runner>, ApiError> {
    p.require_admin()?;
    let r = find(&s, &id).await?;
    Ok(Json(dto(&s, &r, true).await?))
}

#[utoipa::path(get, path = "/api/runners/by-sandbox/{sandboxId}", params(("sandboxId" = String, Path)),
    responses((status = 200, body = Runner), (status = 404)))]
pub async fn by_sandbox(
    State(s): State<AppState>,
    p: Principal,
    Path(sandbox_id): Path<String>,
) -> Result<Json<Runner>, ApiError> {
    p.require_admin()?;
    let sb = s
        .store
        .sandbox(&sandbox_id)
        .await?
        .ok_or_else(|| ApiError::sandbox_not_found(&sandbox_id))?;
    let r = find(&s, s.runner_of(&sb)).await?;
    Ok(Json(dto(&s, &r, true).await?))
}

/// Sets one admin flag of a runner (one statement: a health check or
/// another admin change racing it is never undone).
async fn set_flag(
    s: &AppState,
    p: &Principal,
    id: &str,
    flag: RunnerFlag,
    on: bool,
) -> Result<Json<Runner>, ApiError> {
    p.require_admin()?;
    let r = s
        .store
        .set_runner_flag(id, flag, on, now_millis())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Runner {id} not found")))?;
    tracing::info!(runner = %r.id, ?flag, on, "runner flag changed");
    Ok(Json(dto(s, &r, false).await?))
}

#[utoipa::path(patch, path = "/api/runners/{id}/scheduling", request_body = RunnerScheduling,
    params(("id" = String, Path)), responses((status = 200, body = Runner), (status = 404)))]
pub async fn scheduling(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RunnerScheduling>,
) -> Result<Json<Runner>, ApiError> {
    set_flag(&s, &p, &id, RunnerFlag::Unschedulable, req.unschedulable).await
}

#[utoipa::path(patch, path = "/api/runners/{id}/draining", request_body = RunnerDraining,
    params(("id" = String, Path)), responses((status = 200, body = Runner), (status = 404)))]
pub async fn draining(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RunnerDraining>,
) -> Result<Json<Runner>, ApiError> {
    set_flag(&s, &p, &id, RunnerFlag::Draining, req.draining).await
}

#[utoipa::path(delete, path = "/api/runners/{id}", params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 404), (status = 409)))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    let q = QueryPairs::parse(uri.query());
    only_keys(&q, &["force"])?;
    let force = match q.get("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "force must be true or false, got {v:?}"
            )))
        }
    };
    let r = find(&s, &id).await?;
    if r.local {
        return Err(ApiError::Conflict(format!(
            "runner {} is the embedded runner of a server: drain it or mark it unschedulable instead",
            r.name
        )));
    }
    if force {
        // What it held is gone with it: its rows are deleted, not left
        // waiting for a runner that will not return.
        for sb in s.store.sandboxes_on_runner(&id, &s.local_runner_id).await? {
            tracing::warn!(sandbox = %sb.id, runner = %id, "deleted with its force-deleted runner");
            s.store.delete_sandbox(&sb.id).await?;
        }
    }
    s.store.delete_runner(&id, force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/runners/me", responses((status = 200, body = Runner), (status = 401)))]
pub async fn me(State(s): State<AppState>, r: RunnerPrincipal) -> Result<Json<Runner>, ApiError> {
    let mut out = dto(&s, &r.0, true).await?;
    out.control_plane_key = s.control_key.as_ref().map(|k| k.public_key());
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/runners/healthcheck", request_body = RunnerHealthcheck,
    responses((status = 200), (status = 400), (status = 401)))]
pub async fn healthcheck(
    State(s): State<AppState>,
    r: RunnerPrincipal,
    JsonBody(req): JsonBody<RunnerHealthcheck>,
) -> Result<StatusCode, ApiError> {
    s.runner_healthcheck(r.0, req).await?;
    Ok(StatusCode::OK)
}
