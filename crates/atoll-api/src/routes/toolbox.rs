//! `/toolbox/{sandboxId}/…`: the toolbox proxy. Authenticates the caller
//! (an API key, or a signed file URL: see `signing`), checks the sandbox
//! belongs to its organization and runs, refuses
//! uploads larger than the sandbox's disk, then streams the request to the
//! sandbox daemon's unix socket. `GET /system/metrics` is answered here,
//! from the runtime (the daemon cannot see its own cgroup), also while the
//! sandbox is paused.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::service::state;
use crate::AppState;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

pub async fn forward(
    State(s): State<AppState>,
    Path((id, _rest)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    // The raw (still percent-encoded) path after `/toolbox/{id}`.
    let raw = req.uri().path().to_string();
    let rest = raw
        .strip_prefix("/toolbox/")
        .and_then(|r| r.find('/').map(|i| &r[i..]))
        .unwrap_or("/");
    let signed_query = req
        .uri()
        .query()
        .filter(|q| {
            q.split('&').any(|p| p.starts_with("signature="))
                && !req.headers().contains_key(header::AUTHORIZATION)
        })
        .map(str::to_string);
    let (sandbox, forward_query) = match signed_query {
        // A signed file URL: no API key; the signature names the sandbox's
        // key, the operation, the path and the expiry.
        Some(q) => {
            let checked = s.check_signed(&id, req.method().as_str(), rest, &q).await?;
            let sandbox = s
                .store
                .sandbox(&id)
                .await?
                .ok_or_else(|| ApiError::sandbox_not_found(&id))?;
            (sandbox, Some(checked.forward_query))
        }
        None => {
            let (mut parts, body) = req.into_parts();
            let p = Principal::from_request_parts(&mut parts, &s).await?;
            let sandbox = s
                .store
                .sandbox_in_org(&p.organization_id, &id)
                .await?
                .filter(|r| r.id == id)
                .ok_or_else(|| ApiError::sandbox_not_found(&id))?;
            return forward_as(s, sandbox, rest, None, Request::from_parts(parts, body)).await;
        }
    };
    forward_as(s, sandbox, rest, forward_query, req).await
}

/// Sends a request the caller may make on `sandbox` to its daemon.
async fn forward_as(
    s: AppState,
    sandbox: atoll_store::SandboxRecord,
    rest: &str,
    query: Option<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let skip_activity = req
        .headers()
        .get("x-daytona-skip-last-activity-update")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if req.method() == axum::http::Method::GET && rest == "/system/metrics" {
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
    let query = query.or_else(|| req.uri().query().map(str::to_string));
    let path_and_query = match query {
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
    let resp = s
        .forward_to_toolbox(&sandbox.id, req, &path_and_query)
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    Ok(resp.map(Body::new))
}
