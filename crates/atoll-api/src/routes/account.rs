//! Who is calling and where sandboxes run: `GET /api/users/me` (the calling
//! API key's identity and organization; Atoll has keys, not user accounts),
//! `GET /api/regions` and `GET /api/shared-regions` (the regions of the
//! registered runners, named as sandboxes' `target`). Older SDKs and integrations
//! built on them ask for these before anything else.

use crate::auth::Principal;
use crate::dto::{Region, User};
use crate::error::ApiError;
use crate::AppState;
use atoll_types::time::rfc3339_millis;
use axum::extract::State;
use axum::Json;

/// The region every sandbox of this server runs in (its `target`).
pub const REGION: &str = "local";

async fn org_created(s: &AppState, p: &Principal) -> Result<String, ApiError> {
    let org = s
        .store
        .org_by_id_or_name(&p.organization_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("the calling key's organization is gone".into()))?;
    Ok(rfc3339_millis(org.created_at))
}

#[utoipa::path(get, path = "/api/users/me", responses((status = 200, body = User), (status = 401)))]
pub async fn users_me(State(s): State<AppState>, p: Principal) -> Result<Json<User>, ApiError> {
    let created_at = org_created(&s, &p).await?;
    Ok(Json(User {
        id: p.key_id.clone(),
        name: format!("API key {} ({})", p.key_id, p.role),
        email: String::new(),
        email_verified: false,
        public_keys: Vec::new(),
        created_at,
        organization_id: p.organization_id.clone(),
        role: p.role.clone(),
    }))
}

/// The regions sandboxes can be placed in: those of the registered
/// runners (the embedded runner's is [`REGION`]).
async fn region_names(s: &AppState) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = s
        .store
        .runners()
        .await?
        .into_iter()
        .map(|r| r.region)
        .collect();
    if names.is_empty() {
        names.push(REGION.into());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn region(name: &str, created_at: String) -> Region {
    Region {
        id: name.into(),
        name: name.into(),
        organization_id: None,
        region_type: "shared".into(),
        updated_at: created_at.clone(),
        created_at,
        proxy_url: None,
        ssh_gateway_url: None,
        snapshot_manager_url: None,
    }
}

#[utoipa::path(get, path = "/api/regions", responses((status = 200, body = [Region]), (status = 401)))]
pub async fn regions(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<Region>>, ApiError> {
    let created = org_created(&s, &p).await?;
    let names = region_names(&s).await?;
    Ok(Json(
        names.iter().map(|n| region(n, created.clone())).collect(),
    ))
}

#[utoipa::path(get, path = "/api/shared-regions", responses((status = 200, body = [Region]), (status = 401)))]
pub async fn shared_regions(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<Region>>, ApiError> {
    let created = org_created(&s, &p).await?;
    let names = region_names(&s).await?;
    Ok(Json(
        names.iter().map(|n| region(n, created.clone())).collect(),
    ))
}
