//! `/toolbox/{sandboxId}/…`: the toolbox proxy. Authenticates the caller,
//! checks the sandbox belongs to its organization and runs, refuses
//! uploads larger than the sandbox's disk, then streams the request to the
//! sandbox daemon's unix socket. `GET /system/metrics` is answered here,
//! from the runtime (the daemon cannot see its own cgroup), also while the
//! sandbox is paused.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::service::state;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The raw (still percent-encoded) path after `/toolbox/{id}`.
fn toolbox_path(raw: &str) -> &str {
    raw.strip_prefix("/toolbox/")
        .and_then(|r| r.find('/').map(|i| &r[i..]))
        .unwrap_or("/")
}

pub async fn forward(
    State(s): State<AppState>,
    p: Principal,
    Path((id, _rest)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let sandbox = s
        .store
        .sandbox_in_org(&p.organization_id, &id)
        .await?
        .filter(|r| r.id == id)
        .ok_or_else(|| ApiError::sandbox_not_found(&id))?;
    let skip_activity = req
        .headers()
        .get("x-daytona-skip-last-activity-update")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if req.method() == axum::http::Method::GET
        && toolbox_path(req.uri().path()) == "/system/metrics"
    {
        let metrics = s.latest_metrics(&sandbox).await?;
        if !skip_activity && sandbox.state == state::STARTED {
            s.record_activity(&sandbox.id).await;
        }
        return Ok(axum::Json(metrics).into_response());
    }
    if sandbox.state != state::STARTED {
        return Err(ApiError::Conflict(format!(
            "Sandbox {} is not started (state: {})",
            sandbox.id, sandbox.state
        )));
    }
    let rest = toolbox_path(req.uri().path());
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    if rest.starts_with("/files/upload") || rest.starts_with("/files/bulk-upload") {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let disk = (sandbox.disk as u64) << 30;
        if declared.is_some_and(|n| n > disk) {
            return Err(ApiError::PayloadTooLarge(format!(
                "upload of {} bytes exceeds the sandbox's disk of {} GiB",
                declared.unwrap_or_default(),
                sandbox.disk
            )));
        }
    }
    if !skip_activity {
        s.record_activity(&sandbox.id).await;
    }
    let socket = s.toolbox_endpoint(&sandbox.id);
    let resp = atoll_proxy::forward(&socket, req, &path_and_query, &[])
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    Ok(resp.map(Body::new))
}
