//! `/api/snapshots…` (`SnapshotService`) and `/api/docker-registry…`: the
//! images sandboxes start from, and the credentials pulls use.

use crate::auth::Principal;
use crate::dto::{
    CreateDockerRegistry, CreateSnapshot, DockerRegistry, PaginatedSnapshots, SnapshotDto,
    StorageAccess, UpdateDockerRegistry, Url,
};
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryPairs};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

const SORT_FIELDS: &[&str] = &["name", "state", "createdAt", "updatedAt", "lastUsedAt"];

#[utoipa::path(get, path = "/api/snapshots",
    params(("page" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("name" = Option<String>, Query),
        ("sourceSandboxId" = Option<String>, Query), ("sort" = Option<String>, Query), ("order" = Option<String>, Query)),
    responses((status = 200, body = PaginatedSnapshots), (status = 400)))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
    uri: Uri,
) -> Result<Json<PaginatedSnapshots>, ApiError> {
    let q = QueryPairs::parse(uri.query());
    if let Some((k, _)) = q.0.iter().find(|(k, _)| {
        !["page", "limit", "name", "sourceSandboxId", "sort", "order"].contains(&k.as_str())
    }) {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter {k:?}"
        )));
    }
    let page = q.int("page")?.unwrap_or(1);
    let limit = q.int("limit")?.unwrap_or(100);
    if page < 1 || !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(
            "page must be >= 1 and limit between 1 and 200".into(),
        ));
    }
    let (sort, desc) = q.sort_order(SORT_FIELDS)?;
    let mut all = s.list_snapshots(&p).await?;
    if let Some(n) = q.get("name") {
        let n = n.to_lowercase();
        all.retain(|d| d.name.to_lowercase().contains(&n));
    }
    if let Some(src) = q.get("sourceSandboxId") {
        all.retain(|d| d.source_sandbox_id.as_deref() == Some(src));
    }
    all.sort_by(|a, b| {
        let o = match sort {
            "name" => a.name.cmp(&b.name),
            "state" => a.state.cmp(&b.state),
            "updatedAt" => a.updated_at.cmp(&b.updated_at),
            "lastUsedAt" => a.last_used_at.cmp(&b.last_used_at),
            _ => a.created_at.cmp(&b.created_at),
        }
        .then_with(|| a.id.cmp(&b.id));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
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
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<SnapshotDto>, ApiError> {
    Ok(Json(s.get_snapshot(&p, &id).await?))
}

/// Records the snapshot (`pending`) and pulls its image in the
/// background; poll it until `active` or `error`.
#[utoipa::path(post, path = "/api/snapshots", request_body = CreateSnapshot,
    responses((status = 200, body = SnapshotDto), (status = 400), (status = 409)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> Result<Json<SnapshotDto>, ApiError> {
    Ok(Json(s.create_snapshot(&p, req).await?))
}

/// 409 while a sandbox uses it.
#[utoipa::path(delete, path = "/api/snapshots/{id}",
    params(("id" = String, Path, description = "snapshot id or name")),
    responses((status = 200), (status = 404), (status = 409)))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.delete_snapshot(&p, &id).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(post, path = "/api/snapshots/{id}/activate",
    params(("id" = String, Path)),
    responses((status = 200, body = SnapshotDto), (status = 400), (status = 404)))]
pub async fn activate(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<SnapshotDto>, ApiError> {
    Ok(Json(s.set_snapshot_active(&p, &id, true).await?))
}

#[utoipa::path(post, path = "/api/snapshots/{id}/deactivate",
    params(("id" = String, Path)),
    responses((status = 204), (status = 400), (status = 404)))]
pub async fn deactivate(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.set_snapshot_active(&p, &id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The pull's log as plain text; `follow=true` keeps the answer open,
/// line by line, until the snapshot is settled.
#[utoipa::path(get, path = "/api/snapshots/{id}/build-logs",
    params(("id" = String, Path), ("follow" = Option<bool>, Query)),
    responses((status = 200, content_type = "text/plain"), (status = 404)))]
pub async fn build_logs(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let rec = s.find_snapshot(&p, &id).await?;
    let follow = follow_flag(&uri)?;
    let snapshot_id = rec.id.clone();
    let store = s.store.clone();
    Ok(log_response(s, rec.id, follow, move || {
        let store = store.clone();
        let id = snapshot_id.clone();
        Box::pin(async move {
            match store.snapshot(&id).await {
                Ok(Some(r)) => crate::snapshots::is_settled(&r.state),
                _ => true,
            }
        })
    }))
}

#[utoipa::path(get, path = "/api/snapshots/{id}/build-logs-url",
    params(("id" = String, Path)),
    responses((status = 200, body = Url), (status = 404)))]
pub async fn build_logs_url(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Url>, ApiError> {
    let rec = s.find_snapshot(&p, &id).await?;
    Ok(Json(Url {
        url: format!(
            "{}/api/snapshots/{}/build-logs",
            s.config.public_url.trim_end_matches('/'),
            rec.id
        ),
    }))
}

pub(crate) fn follow_flag(uri: &Uri) -> Result<bool, ApiError> {
    let q = QueryPairs::parse(uri.query());
    match q.get("follow") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "follow must be true or false, got {other:?}"
        ))),
    }
}

type Settled = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// `owner`'s log lines as a text body; with `follow`, new lines as they
/// are stored until `settled()` says the work is over (and a last read
/// finds nothing new).
pub(crate) fn log_response<F>(s: AppState, owner: String, follow: bool, settled: F) -> Response
where
    F: Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync
        + 'static,
{
    struct Cursor {
        s: AppState,
        owner: String,
        after: i64,
        follow: bool,
        done: bool,
        settled: Settled,
    }
    let cursor = Cursor {
        s,
        owner,
        after: 0,
        follow,
        done: false,
        settled: Box::new(settled),
    };
    let body = futures_util::stream::unfold(cursor, |mut c| async move {
        if c.done {
            return None;
        }
        loop {
            // Read "settled" before the lines: lines stored before the
            // work settled are then always read.
            let over = !c.follow || (c.settled)().await;
            let lines = match c.s.store.log_lines(&c.owner, c.after).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(owner = %c.owner, error = %e, "reading log lines");
                    return None;
                }
            };
            if let Some((seq, _)) = lines.last() {
                c.after = *seq;
                let mut text = String::new();
                for (_, l) in &lines {
                    text.push_str(l);
                    text.push('\n');
                }
                if over && lines.len() < 10_000 {
                    c.done = true;
                }
                return Some((Ok::<_, std::convert::Infallible>(text), c));
            }
            if over {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    let mut resp = Body::from_stream(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

// ---- /api/docker-registry ----------------------------------------------

#[utoipa::path(post, path = "/api/docker-registry", request_body = CreateDockerRegistry,
    responses((status = 201, body = DockerRegistry), (status = 400), (status = 409)))]
pub async fn create_registry(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateDockerRegistry>,
) -> Result<(StatusCode, Json<DockerRegistry>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.create_registry(&p, req).await?)))
}

#[utoipa::path(get, path = "/api/docker-registry",
    responses((status = 200, body = Vec<DockerRegistry>)))]
pub async fn list_registries(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<DockerRegistry>>, ApiError> {
    Ok(Json(
        s.store
            .registries_of_org(&p.organization_id)
            .await?
            .iter()
            .map(|r| s.registry_dto(r))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/docker-registry/{id}", params(("id" = String, Path)),
    responses((status = 200, body = DockerRegistry), (status = 404)))]
pub async fn get_registry(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<DockerRegistry>, ApiError> {
    let r = s.find_registry(&p, &id).await?;
    Ok(Json(s.registry_dto(&r)))
}

#[utoipa::path(patch, path = "/api/docker-registry/{id}", params(("id" = String, Path)),
    request_body = UpdateDockerRegistry,
    responses((status = 200, body = DockerRegistry), (status = 400), (status = 404)))]
pub async fn update_registry(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateDockerRegistry>,
) -> Result<Json<DockerRegistry>, ApiError> {
    Ok(Json(s.update_registry(&p, &id, req).await?))
}

#[utoipa::path(delete, path = "/api/docker-registry/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_registry(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.store.delete_registry(&p.organization_id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("Registry {id} not found")))
    }
}

#[utoipa::path(get, path = "/api/object-storage/push-access",
    responses((status = 200, body = StorageAccess), (status = 503)))]
pub async fn push_access(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<StorageAccess>, ApiError> {
    let url = s.storage_url.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "this server has no HTTPS listener for build-context uploads (start it with \
             --tls-cert/--tls-key, or let it make its local CA)"
                .into(),
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let c = crate::object_storage::issue(&s, &p.organization_id, &p.key_id, now);
    Ok(Json(StorageAccess {
        access_key: c.access_key,
        secret: c.secret,
        session_token: c.session_token,
        storage_url: url.to_string(),
        organization_id: c.organization_id,
        bucket: crate::object_storage::BUCKET.into(),
        region: crate::object_storage::REGION.into(),
    }))
}
