//! `/api/sandbox…`: sandbox lifecycle and settings.

use crate::auth::Principal;
use crate::dto::{
    CreateSandbox, ListSandboxesResponse, MetricsResponse, PaginatedSandboxes, ResizeSandbox,
    Sandbox, SandboxLabels, ToolboxProxyUrl, UpdateNetworkSettings,
};
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::service::Interval;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::Json;
use std::collections::BTreeMap;

#[utoipa::path(post, path = "/api/sandbox", request_body = CreateSandbox,
    responses((status = 200, body = Sandbox), (status = 400), (status = 401), (status = 409)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.create_sandbox(&p, req).await?))
}

#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}",
    params(("sandboxIdOrName" = String, Path)), responses((status = 200, body = Sandbox), (status = 404)))]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let r = s.find(&p, &id).await?;
    Ok(Json(s.to_dto(&r)))
}

#[utoipa::path(delete, path = "/api/sandbox/{sandboxIdOrName}",
    params(("sandboxIdOrName" = String, Path)), responses((status = 200, body = Sandbox), (status = 404)))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.delete_sandbox(&p, &id).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/start",
    params(("sandboxIdOrName" = String, Path)), responses((status = 200, body = Sandbox), (status = 404), (status = 409)))]
pub async fn start(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.start_sandbox(&p, &id).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/stop",
    params(("sandboxIdOrName" = String, Path)), responses((status = 200, body = Sandbox), (status = 404), (status = 409)))]
pub async fn stop(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.stop_sandbox(&p, &id).await?))
}

#[utoipa::path(put, path = "/api/sandbox/{sandboxIdOrName}/labels", request_body = SandboxLabels,
    params(("sandboxIdOrName" = String, Path)), responses((status = 200, body = SandboxLabels), (status = 404)))]
pub async fn labels(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SandboxLabels>,
) -> Result<Json<SandboxLabels>, ApiError> {
    Ok(Json(SandboxLabels {
        labels: s.replace_labels(&p, &id, req.labels).await?,
    }))
}

async fn set_interval(
    s: AppState,
    p: Principal,
    id: String,
    minutes: String,
    which: Interval,
) -> Result<Json<Sandbox>, ApiError> {
    let minutes: i64 = minutes.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "interval must be an integer number of minutes, got {minutes:?}"
        ))
    })?;
    Ok(Json(s.set_interval(&p, &id, which, minutes).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/autostop/{interval}",
    params(("sandboxIdOrName" = String, Path), ("interval" = i64, Path)), responses((status = 200, body = Sandbox)))]
pub async fn autostop(
    State(s): State<AppState>,
    p: Principal,
    Path((id, m)): Path<(String, String)>,
) -> Result<Json<Sandbox>, ApiError> {
    set_interval(s, p, id, m, Interval::AutoStop).await
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/autopause/{interval}",
    params(("sandboxIdOrName" = String, Path), ("interval" = i64, Path)),
    responses((status = 200, body = Sandbox), (status = 400)))]
pub async fn autopause(
    State(s): State<AppState>,
    p: Principal,
    Path((id, m)): Path<(String, String)>,
) -> Result<Json<Sandbox>, ApiError> {
    set_interval(s, p, id, m, Interval::AutoPause).await
}

/// Freezes every process of a started sandbox (memory kept); `start`
/// resumes it.
#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/pause",
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 404), (status = 409)))]
pub async fn pause(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.pause_sandbox(&p, &id).await?))
}

/// The sandbox's sampled cpu, memory and disk usage over a time range.
#[utoipa::path(get, path = "/api/sandbox/{sandboxId}/telemetry/metrics",
    params(("sandboxId" = String, Path), ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("metricNames" = Option<Vec<String>>, Query)),
    responses((status = 200, body = MetricsResponse), (status = 400), (status = 404)))]
pub async fn telemetry_metrics(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<MetricsResponse>, ApiError> {
    let q = QueryPairs::parse(uri.query());
    Ok(Json(s.metrics_history(&p, &id, &q).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/autoarchive/{interval}",
    params(("sandboxIdOrName" = String, Path), ("interval" = i64, Path)), responses((status = 200, body = Sandbox)))]
pub async fn autoarchive(
    State(s): State<AppState>,
    p: Principal,
    Path((id, m)): Path<(String, String)>,
) -> Result<Json<Sandbox>, ApiError> {
    set_interval(s, p, id, m, Interval::AutoArchive).await
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/autodelete/{interval}",
    params(("sandboxIdOrName" = String, Path), ("interval" = i64, Path)), responses((status = 200, body = Sandbox)))]
pub async fn autodelete(
    State(s): State<AppState>,
    p: Principal,
    Path((id, m)): Path<(String, String)>,
) -> Result<Json<Sandbox>, ApiError> {
    set_interval(s, p, id, m, Interval::AutoDelete).await
}

#[utoipa::path(get, path = "/api/sandbox/{sandboxId}/toolbox-proxy-url",
    params(("sandboxId" = String, Path)), responses((status = 200, body = ToolboxProxyUrl), (status = 404)))]
pub async fn toolbox_proxy_url(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<ToolboxProxyUrl>, ApiError> {
    s.find(&p, &id).await?;
    Ok(Json(ToolboxProxyUrl {
        url: s.toolbox_proxy_url(),
    }))
}

const SORT_FIELDS: &[&str] = &[
    "name",
    "cpu",
    "memoryGib",
    "diskGib",
    "lastActivityAt",
    "createdAt",
];

#[utoipa::path(get, path = "/api/sandbox",
    params(
        ("cursor" = Option<String>, Query), ("limit" = Option<i64>, Query), ("id" = Option<String>, Query),
        ("name" = Option<String>, Query), ("labels" = Option<String>, Query, description = "JSON object of labels that must all match"),
        ("states" = Option<Vec<String>>, Query), ("sort" = Option<String>, Query), ("order" = Option<String>, Query)),
    responses((status = 200, body = ListSandboxesResponse), (status = 400)))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    uri: Uri,
) -> Result<Json<ListSandboxesResponse>, ApiError> {
    let q = QueryPairs::parse(uri.query());
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
    let rows = filtered(&s, &p, &q).await?;
    let total = rows.len();
    let end = (offset + limit as usize).min(total);
    let items = rows
        .get(offset.min(total)..end)
        .unwrap_or_default()
        .iter()
        .map(|r| s.to_dto(r))
        .collect();
    let next_cursor = (end < total).then(|| end.to_string());
    Ok(Json(ListSandboxesResponse { items, next_cursor }))
}

/// The organization's sandboxes that pass the query's filters (`id`,
/// `name`, `labels`, `states`, `snapshots`, `regions`/`regionIds`, cpu,
/// memory and disk ranges), sorted by `sort` and `order`.
async fn filtered(
    s: &AppState,
    p: &Principal,
    q: &QueryPairs,
) -> Result<Vec<atoll_store::SandboxRecord>, ApiError> {
    let labels: BTreeMap<String, String> = match q.get("labels") {
        None => BTreeMap::new(),
        Some(l) => serde_json::from_str(l).map_err(|e| {
            ApiError::BadRequest(format!("labels must be a JSON object of strings: {e}"))
        })?,
    };
    let states = q.all("states");
    let snapshots = q.all("snapshots");
    let mut regions = q.all("regions");
    regions.extend(q.all("regionIds"));
    let range = |lo: &str, hi: &str| -> Result<(i64, i64), ApiError> {
        Ok((
            q.int(lo)?.unwrap_or(i64::MIN),
            q.int(hi)?.unwrap_or(i64::MAX),
        ))
    };
    let cpu = range("minCpu", "maxCpu")?;
    let memory = range("minMemoryGiB", "maxMemoryGiB")?;
    let disk = range("minDiskGiB", "maxDiskGiB")?;
    let sort = q.get("sort").unwrap_or("createdAt");
    if !SORT_FIELDS.contains(&sort) {
        return Err(ApiError::BadRequest(format!(
            "sort must be one of {SORT_FIELDS:?}"
        )));
    }
    let desc = match q.get("order").unwrap_or("desc") {
        "asc" => false,
        "desc" => true,
        other => {
            return Err(ApiError::BadRequest(format!(
                "order must be asc or desc, got {other:?}"
            )))
        }
    };
    let within = |v: i64, (lo, hi): (i64, i64)| lo <= v && v <= hi;
    let mut rows = s.store.sandboxes_in_org(&p.organization_id).await?;
    rows.retain(|r| {
        q.get("id").is_none_or(|id| r.id.contains(id))
            && q.get("name").is_none_or(|n| r.name.contains(n))
            && (states.is_empty() || states.contains(&r.state.as_str()))
            && (snapshots.is_empty() || snapshots.contains(&r.snapshot.as_str()))
            && (regions.is_empty() || regions.contains(&crate::routes::account::REGION))
            && within(r.cpu, cpu)
            && within(r.memory, memory)
            && within(r.disk, disk)
            && labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
    });
    rows.sort_by(|a, b| {
        let o = match sort {
            "name" => a.name.cmp(&b.name),
            "cpu" => a.cpu.cmp(&b.cpu),
            "memoryGib" => a.memory.cmp(&b.memory),
            "diskGib" => a.disk.cmp(&b.disk),
            "lastActivityAt" => a.last_activity_at.cmp(&b.last_activity_at),
            _ => a.created_at.cmp(&b.created_at),
        }
        .then_with(|| a.id.cmp(&b.id));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    Ok(rows)
}

/// The paginated list older SDKs (`@daytonaio/sdk` before 0.2xx, `daytona`
/// 0.203) call: pages numbered from 1, the same filters as the list.
#[utoipa::path(get, path = "/api/sandbox/paginated",
    responses((status = 200, body = PaginatedSandboxes), (status = 400)))]
pub async fn paginated(
    State(s): State<AppState>,
    p: Principal,
    uri: Uri,
) -> Result<Json<PaginatedSandboxes>, ApiError> {
    let q = QueryPairs::parse(uri.query());
    let limit = q.int("limit")?.unwrap_or(100);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 200, got {limit}"
        )));
    }
    let page = q.int("page")?.unwrap_or(1);
    if page < 1 {
        return Err(ApiError::BadRequest(format!(
            "page must be 1 or more, got {page}"
        )));
    }
    let rows = filtered(&s, &p, &q).await?;
    let total = rows.len() as i64;
    let start = ((page - 1).saturating_mul(limit)).min(total) as usize;
    let end = (start + limit as usize).min(rows.len());
    Ok(Json(PaginatedSandboxes {
        items: rows[start..end].iter().map(|r| s.to_dto(r)).collect(),
        total,
        page,
        total_pages: (total + limit - 1) / limit,
    }))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/resize", request_body = ResizeSandbox,
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 400), (status = 404), (status = 409)))]
pub async fn resize(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ResizeSandbox>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.resize_sandbox(&p, &id, req).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/network-settings", request_body = UpdateNetworkSettings,
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 400), (status = 404)))]
pub async fn network_settings(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateNetworkSettings>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.update_network_settings(&p, &id, req).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/recover",
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 404), (status = 409)))]
pub async fn recover(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.recover_sandbox(&p, &id).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxId}/last-activity",
    params(("sandboxId" = String, Path)), responses((status = 201), (status = 404)))]
pub async fn last_activity(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    s.touch_sandbox(&p, &id).await?;
    Ok(axum::http::StatusCode::CREATED)
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/archive",
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 404), (status = 409)))]
pub async fn archive(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.archive_sandbox(&p, &id).await?))
}
