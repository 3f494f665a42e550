//! `/api/sandbox…`: sandbox lifecycle and settings.

use crate::auth::Principal;
use crate::dto::{
    CreateSandbox, ListSandboxesResponse, MetricsResponse, PaginatedSandboxes, ResizeSandbox,
    Sandbox, SandboxLabels, ToolboxProxyUrl, UpdateNetworkSettings, UpdateSandboxSecrets,
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
    // What the body brings in: secrets' values and volumes' files become
    // readable (and writable) from inside the sandbox.
    if req.secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        p.require("manage:secrets")?;
    }
    for v in req.volumes.iter().flatten() {
        p.require("read:volumes")?;
        if !v.read_only.unwrap_or(false) {
            p.require("write:volumes")?;
        }
    }
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

/// Sort fields of `GET /api/sandbox`.
const SORT_FIELDS: &[&str] = &[
    "name",
    "cpu",
    "memoryGib",
    "diskGib",
    "lastActivityAt",
    "createdAt",
];

/// Sort fields of the deprecated `GET /api/sandbox/paginated`.
const PAGINATED_SORT_FIELDS: &[&str] = &[
    "id",
    "name",
    "state",
    "snapshot",
    "region",
    "updatedAt",
    "createdAt",
    "lastActivityAt",
];

/// Query parameters both lists take (each route adds its paging keys).
/// Anything else is refused: a filter is never silently ignored.
const FILTER_KEYS: &[&str] = &[
    "limit",
    "id",
    "name",
    "labels",
    "includeErroredDeleted",
    "includeWarm",
    "states",
    "snapshots",
    "regionIds",
    "regions",
    "sandboxClasses",
    "minCpu",
    "maxCpu",
    "minMemoryGiB",
    "maxMemoryGiB",
    "minDiskGiB",
    "maxDiskGiB",
    "minGpu",
    "maxGpu",
    "isPublic",
    "isRecoverable",
    "createdAtAfter",
    "createdAtBefore",
    "lastEventAfter",
    "lastEventBefore",
    "autoDestroyAtAfter",
    "autoDestroyAtBefore",
    "sort",
    "order",
];

const SANDBOX_STATES: &[&str] = &[
    "creating",
    "restoring",
    "destroyed",
    "destroying",
    "started",
    "stopped",
    "starting",
    "stopping",
    "error",
    "build_failed",
    "pending_build",
    "building_snapshot",
    "unknown",
    "pulling_snapshot",
    "archived",
    "archiving",
    "resizing",
    "snapshotting",
    "forking",
    "pausing",
    "paused",
    "resuming",
];

const SANDBOX_CLASSES: &[&str] = &["container", "linux-vm", "windows", "android"];

#[utoipa::path(get, path = "/api/sandbox",
    params(
        ("cursor" = Option<String>, Query), ("limit" = Option<i64>, Query), ("id" = Option<String>, Query, description = "id prefix, case-insensitive"),
        ("name" = Option<String>, Query, description = "name prefix, case-insensitive"), ("labels" = Option<String>, Query, description = "JSON object of labels that must all match"),
        ("includeErroredDeleted" = Option<bool>, Query), ("includeWarm" = Option<bool>, Query),
        ("states" = Option<Vec<String>>, Query), ("snapshots" = Option<Vec<String>>, Query), ("regionIds" = Option<Vec<String>>, Query),
        ("sandboxClasses" = Option<Vec<String>>, Query),
        ("minCpu" = Option<f64>, Query), ("maxCpu" = Option<f64>, Query), ("minMemoryGiB" = Option<f64>, Query), ("maxMemoryGiB" = Option<f64>, Query),
        ("minDiskGiB" = Option<f64>, Query), ("maxDiskGiB" = Option<f64>, Query), ("minGpu" = Option<f64>, Query), ("maxGpu" = Option<f64>, Query),
        ("isPublic" = Option<bool>, Query), ("isRecoverable" = Option<bool>, Query),
        ("createdAtAfter" = Option<String>, Query), ("createdAtBefore" = Option<String>, Query),
        ("lastEventAfter" = Option<String>, Query), ("lastEventBefore" = Option<String>, Query),
        ("autoDestroyAtAfter" = Option<String>, Query), ("autoDestroyAtBefore" = Option<String>, Query),
        ("sort" = Option<String>, Query), ("order" = Option<String>, Query)),
    responses((status = 200, body = ListSandboxesResponse), (status = 400)))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    uri: Uri,
) -> Result<Json<ListSandboxesResponse>, ApiError> {
    let q = QueryPairs::parse(uri.query());
    refuse_unknown_keys(&q, &["cursor"])?;
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
    let rows = filtered(&s, &p, &q, SORT_FIELDS).await?;
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

fn refuse_unknown_keys(q: &QueryPairs, paging: &[&str]) -> Result<(), ApiError> {
    for (k, _) in &q.0 {
        let k = k.strip_suffix("[]").unwrap_or(k);
        if !FILTER_KEYS.contains(&k) && !paging.contains(&k) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {k:?}"
            )));
        }
    }
    Ok(())
}

fn flag(q: &QueryPairs, key: &str) -> Result<Option<bool>, ApiError> {
    match q.get(key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(ApiError::BadRequest(format!(
            "query parameter {key} must be true or false, got {other:?}"
        ))),
    }
}

fn number(q: &QueryPairs, key: &str) -> Result<Option<f64>, ApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "query parameter {key} must be a number, got {v:?}"
                    ))
                })
        })
        .transpose()
}

fn time(q: &QueryPairs, key: &str) -> Result<Option<i64>, ApiError> {
    q.get(key)
        .map(|v| {
            atoll_types::time::parse_rfc3339_millis(v).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "query parameter {key} must be an RFC 3339 date-time, got {v:?}"
                ))
            })
        })
        .transpose()
}

fn one_of<'a>(key: &str, values: Vec<&'a str>, allowed: &[&str]) -> Result<Vec<&'a str>, ApiError> {
    if let Some(bad) = values.iter().find(|v| !allowed.contains(v)) {
        return Err(ApiError::BadRequest(format!(
            "{key} has an unknown value {bad:?}; expected one of {allowed:?}"
        )));
    }
    Ok(values)
}

/// The organization's sandboxes that pass the query's filters, sorted by
/// `sort` (one of `sort_fields`) and `order`.
async fn filtered(
    s: &AppState,
    p: &Principal,
    q: &QueryPairs,
    sort_fields: &[&str],
) -> Result<Vec<atoll_store::SandboxRecord>, ApiError> {
    // Older Python SDKs send `labels=null` for "no labels".
    let labels: BTreeMap<String, String> = match q.get("labels") {
        None | Some("null") => BTreeMap::new(),
        Some(l) => serde_json::from_str(l).map_err(|e| {
            ApiError::BadRequest(format!("labels must be a JSON object of strings: {e}"))
        })?,
    };
    let states = one_of("states", q.all("states"), SANDBOX_STATES)?;
    let classes = one_of("sandboxClasses", q.all("sandboxClasses"), SANDBOX_CLASSES)?;
    let snapshots = q.all("snapshots");
    let mut regions = q.all("regions");
    regions.extend(q.all("regionIds"));
    let range = |lo: &str, hi: &str| -> Result<(f64, f64), ApiError> {
        let range = (
            number(q, lo)?.unwrap_or(f64::NEG_INFINITY),
            number(q, hi)?.unwrap_or(f64::INFINITY),
        );
        Ok(range)
    };
    let cpu = range("minCpu", "maxCpu")?;
    let memory = range("minMemoryGiB", "maxMemoryGiB")?;
    let disk = range("minDiskGiB", "maxDiskGiB")?;
    let gpu = range("minGpu", "maxGpu")?;
    let times = |after: &str, before: &str| -> Result<(Option<i64>, Option<i64>), ApiError> {
        Ok((time(q, after)?, time(q, before)?))
    };
    let created = times("createdAtAfter", "createdAtBefore")?;
    let last_event = times("lastEventAfter", "lastEventBefore")?;
    let destroy_at = times("autoDestroyAtAfter", "autoDestroyAtBefore")?;
    let is_public = flag(q, "isPublic")?;
    let is_recoverable = flag(q, "isRecoverable")?;
    let include_errored_deleted = flag(q, "includeErroredDeleted")?.unwrap_or(false);
    let include_warm = flag(q, "includeWarm")?.unwrap_or(false);
    let (sort, desc) = q.sort_order(sort_fields)?;
    let within = |v: i64, (lo, hi): (f64, f64)| lo <= v as f64 && v as f64 <= hi;
    let in_times = |v: Option<i64>, (after, before): (Option<i64>, Option<i64>)| {
        (after.is_none() && before.is_none())
            || v.is_some_and(|v| after.is_none_or(|a| v >= a) && before.is_none_or(|b| v <= b))
    };
    let prefix = |value: &str, key: &str| {
        q.get(key).is_none_or(|want| {
            value.len() >= want.len()
                && value.as_bytes()[..want.len()].eq_ignore_ascii_case(want.as_bytes())
        })
    };
    let mut rows = s.store.sandboxes_in_org(&p.organization_id).await?;
    rows.retain(|r| {
        prefix(&r.id, "id")
            && prefix(&r.name, "name")
            && (include_warm || r.warm_pool_id.is_none())
            && (include_errored_deleted
                || !(r.state == crate::service::state::ERROR
                    && r.desired_state == crate::service::state::DESTROYED))
            && (states.is_empty() || states.contains(&r.state.as_str()))
            && (snapshots.is_empty() || snapshots.contains(&r.snapshot.as_str()))
            && (regions.is_empty() || regions.contains(&crate::routes::account::REGION))
            && (classes.is_empty() || classes.contains(&"container"))
            && within(r.cpu, cpu)
            && within(r.memory, memory)
            && within(r.disk, disk)
            && within(r.gpu, gpu)
            && is_public.is_none_or(|want| r.public == want)
            && is_recoverable.is_none_or(|want| r.recoverable == want)
            && in_times(Some(r.created_at), created)
            && in_times(Some(r.last_activity_at), last_event)
            && in_times(r.auto_destroy_at, destroy_at)
            && labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
    });
    rows.sort_by(|a, b| {
        let o = match sort {
            "id" => a.id.cmp(&b.id),
            "name" => a.name.cmp(&b.name),
            "state" => a.state.as_str().cmp(b.state.as_str()),
            "snapshot" => a.snapshot.cmp(&b.snapshot),
            "cpu" => a.cpu.cmp(&b.cpu),
            "memoryGib" => a.memory.cmp(&b.memory),
            "diskGib" => a.disk.cmp(&b.disk),
            "lastActivityAt" => a.last_activity_at.cmp(&b.last_activity_at),
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
    refuse_unknown_keys(&q, &["page"])?;
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
    let rows = filtered(&s, &p, &q, PAGINATED_SORT_FIELDS).await?;
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

#[utoipa::path(get, path = "/api/sandbox/{sandboxId}/signing-key",
    params(("sandboxId" = String, Path)), responses((status = 200, body = String), (status = 404)))]
pub async fn signing_key(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<String>, ApiError> {
    Ok(Json(s.signing_key(&p, &id).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxId}/signing-key/rotate",
    params(("sandboxId" = String, Path)), responses((status = 200, body = String), (status = 404)))]
pub async fn rotate_signing_key(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<String>, ApiError> {
    Ok(Json(s.rotate_signing_key(&p, &id).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/ttl/{ttlMinutes}",
    params(("sandboxIdOrName" = String, Path), ("ttlMinutes" = i64, Path)),
    responses((status = 200, body = Sandbox), (status = 400), (status = 404)))]
pub async fn ttl(
    State(s): State<AppState>,
    p: Principal,
    Path((id, minutes)): Path<(String, String)>,
) -> Result<Json<Sandbox>, ApiError> {
    let minutes: i64 = minutes.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "ttlMinutes must be an integer number of minutes, got {minutes:?}"
        ))
    })?;
    Ok(Json(s.set_ttl(&p, &id, minutes).await?))
}

#[utoipa::path(put, path = "/api/sandbox/{sandboxIdOrName}/secrets", request_body = UpdateSandboxSecrets,
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 400), (status = 404)))]
pub async fn secrets(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateSandboxSecrets>,
) -> Result<Json<Sandbox>, ApiError> {
    p.require("manage:secrets")?;
    Ok(Json(s.update_sandbox_secrets(&p, &id, req.secrets).await?))
}

/// Captures a started sandbox's filesystem as a new snapshot
/// (`sandbox.create_snapshot(name)`): the sandbox is `snapshotting` until
/// the snapshot is `active` (or `error`), then `started` again.
#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/snapshot",
    params(("sandboxIdOrName" = String, Path)), request_body = crate::dto::CreateSandboxSnapshot,
    responses((status = 200, body = Sandbox), (status = 400), (status = 404), (status = 409)))]
pub async fn snapshot(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    crate::extract::JsonBody(req): crate::extract::JsonBody<crate::dto::CreateSandboxSnapshot>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.capture_sandbox(&p, &id, req).await?))
}

/// The log of the image a sandbox waits for (created from `buildInfo`, or
/// pulling its snapshot onto its runner); `follow=true` streams it until
/// the sandbox leaves those states.
#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}/build-logs",
    params(("sandboxIdOrName" = String, Path), ("follow" = Option<bool>, Query)),
    responses((status = 200, content_type = "text/plain"), (status = 404)))]
pub async fn build_logs(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<axum::response::Response, ApiError> {
    use crate::lifecycle::state;
    let r = s.find(&p, &id).await?;
    let follow = crate::routes::snapshots::follow_flag(&uri)?;
    // A sandbox made from `buildInfo` streams its build's log (the SDK
    // asks once the sandbox has left `pending_build`); others their own
    // (a pull onto their runner).
    let built = match r
        .image_ref
        .as_deref()
        .and_then(crate::snapshots::snapshot_id_of)
    {
        Some(snapshot) => s
            .store
            .snapshot(snapshot)
            .await?
            .filter(|snap| snap.build_info.is_some())
            .map(|snap| snap.id),
        None => None,
    };
    let owner = built.unwrap_or_else(|| r.id.clone());
    let store = s.store.clone();
    let sandbox_id = r.id.clone();
    Ok(crate::routes::snapshots::log_response(
        s,
        owner,
        follow,
        move || {
            let store = store.clone();
            let id = sandbox_id.clone();
            Box::pin(async move {
                match store.sandbox(&id).await {
                    Ok(Some(r)) => !matches!(
                        r.state,
                        state::PENDING_BUILD | state::BUILDING_SNAPSHOT | state::PULLING_SNAPSHOT
                    ),
                    _ => true,
                }
            })
        },
    ))
}

#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}/build-logs-url",
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = crate::dto::Url), (status = 404)))]
pub async fn build_logs_url(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<crate::dto::Url>, ApiError> {
    let r = s.find(&p, &id).await?;
    Ok(Json(crate::dto::Url {
        url: format!(
            "{}/api/sandbox/{}/build-logs",
            s.config.public_url.trim_end_matches('/'),
            r.id
        ),
    }))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/fork",
    params(("sandboxIdOrName" = String, Path)), request_body = crate::dto::ForkSandbox,
    responses((status = 200, body = Sandbox), (status = 400), (status = 404), (status = 409)))]
pub async fn fork(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    crate::extract::JsonBody(req): crate::extract::JsonBody<crate::dto::ForkSandbox>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.fork_sandbox(&p, &id, req.name).await?))
}

#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}/forks",
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Vec<Sandbox>), (status = 404)))]
pub async fn forks(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<Sandbox>>, ApiError> {
    Ok(Json(s.sandbox_forks(&p, &id).await?))
}

#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}/parent",
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 404)))]
pub async fn parent(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.sandbox_parent(&p, &id).await?))
}

#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}/ancestors",
    params(("sandboxIdOrName" = String, Path)),
    responses((status = 200, body = Vec<Sandbox>), (status = 404)))]
pub async fn ancestors(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<Sandbox>>, ApiError> {
    Ok(Json(s.sandbox_ancestors(&p, &id).await?))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/ssh-access",
    params(("sandboxIdOrName" = String, Path), ("expiresInMinutes" = Option<i64>, Query)),
    responses((status = 200, body = crate::dto::SshAccess), (status = 400), (status = 404)))]
pub async fn create_ssh_access(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<Json<crate::dto::SshAccess>, ApiError> {
    let q = crate::extract::QueryPairs::parse(uri.query());
    let minutes = q.int("expiresInMinutes")?;
    Ok(Json(s.create_ssh_access(&p, &id, minutes).await?))
}

#[utoipa::path(delete, path = "/api/sandbox/{sandboxIdOrName}/ssh-access",
    params(("sandboxIdOrName" = String, Path), ("token" = Option<String>, Query)),
    responses((status = 200, body = Sandbox), (status = 404)))]
pub async fn revoke_ssh_access(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<Json<Sandbox>, ApiError> {
    let q = crate::extract::QueryPairs::parse(uri.query());
    let token =
        q.0.iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.clone());
    Ok(Json(s.revoke_ssh_access(&p, &id, token.as_deref()).await?))
}

#[utoipa::path(get, path = "/api/sandbox/ssh-access/validate",
    params(("token" = String, Query)),
    responses((status = 200, body = crate::dto::SshAccessValidation)))]
pub async fn validate_ssh_access(
    State(s): State<AppState>,
    p: Principal,
    uri: axum::http::Uri,
) -> Result<Json<crate::dto::SshAccessValidation>, ApiError> {
    let q = crate::extract::QueryPairs::parse(uri.query());
    let token =
        q.0.iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
    Ok(Json(s.validate_ssh_access(&p, &token).await?))
}
