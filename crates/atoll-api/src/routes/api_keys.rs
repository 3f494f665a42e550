//! `/api/api-keys` and `/api/organizations`, as Daytona's API and CLI call
//! them. An organization's keys are listed, made and revoked by a key
//! holding `manage:api_keys` (owner keys hold everything); a new key has
//! the permissions it is given, never more than its maker's, and role
//! `member`. Owner and admin keys are not revoked here: they are the
//! organization's way back in. Keys are stored hashed; a new key is
//! shown once.

use crate::auth::{self, Principal};
use crate::dto::{ApiKeyList, ApiKeyResponse, CreateApiKey, Organization};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::permissions;
use crate::AppState;
use atoll_store::{ApiKeyRecord, OrgRecord};
use atoll_types::time::{now_millis, parse_rfc3339_millis, rfc3339_millis};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

/// Most live keys an organization may have.
const MAX_KEYS_PER_ORG: usize = 1000;

fn effective_permissions(k: &ApiKeyRecord) -> Vec<String> {
    match &k.permissions {
        Some(p) => p.clone(),
        None => permissions::ALL.iter().map(|p| p.to_string()).collect(),
    }
}

fn listed(k: &ApiKeyRecord) -> ApiKeyList {
    ApiKeyList {
        name: k.name.clone(),
        value: format!("{}…", k.key_prefix),
        created_at: rfc3339_millis(k.created_at),
        permissions: effective_permissions(k),
        last_used_at: None,
        expires_at: k.expires_at.map(rfc3339_millis),
        user_id: k.id.clone(),
        organization_id: k.organization_id.clone(),
        role: k.role.clone(),
    }
}

/// The live key `name` (or id) of the caller's organization.
async fn key_named(s: &AppState, p: &Principal, name: &str) -> Result<ApiKeyRecord, ApiError> {
    s.store
        .api_keys_of_org(&p.organization_id)
        .await?
        .into_iter()
        .find(|k| k.name == name || k.id == name)
        .ok_or_else(|| ApiError::NotFound(format!("API key {name} not found")))
}

#[utoipa::path(get, path = "/api/api-keys",
    responses((status = 200, body = [ApiKeyList]), (status = 403)))]
pub async fn list(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<ApiKeyList>>, ApiError> {
    let keys = s.store.api_keys_of_org(&p.organization_id).await?;
    Ok(Json(keys.iter().map(listed).collect()))
}

#[utoipa::path(get, path = "/api/api-keys/current",
    responses((status = 200, body = ApiKeyList)))]
pub async fn current(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<ApiKeyList>, ApiError> {
    let k = s
        .store
        .api_key_by_id(&p.key_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("the calling key is gone".into()))?;
    Ok(Json(listed(&k)))
}

#[utoipa::path(get, path = "/api/api-keys/{name}", params(("name" = String, Path)),
    responses((status = 200, body = ApiKeyList), (status = 404)))]
pub async fn get(
    State(s): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<Json<ApiKeyList>, ApiError> {
    Ok(Json(listed(&key_named(&s, &p, &name).await?)))
}

#[utoipa::path(post, path = "/api/api-keys", request_body = CreateApiKey,
    responses((status = 201, body = ApiKeyResponse), (status = 400), (status = 403), (status = 409)))]
pub async fn create(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateApiKey>,
) -> Result<(StatusCode, Json<ApiKeyResponse>), ApiError> {
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "an API key's name must be 1-100 printable characters".into(),
        ));
    }
    let mut perms: Vec<String> = Vec::new();
    for perm in &req.permissions {
        if !permissions::ALL.contains(&perm.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown permission {perm:?} (one of {})",
                permissions::ALL.join(", ")
            )));
        }
        if !permissions::allows(p.permissions.as_deref(), &[perm.as_str()]) {
            return Err(ApiError::Forbidden(format!(
                "a key cannot grant {perm}, which it does not hold"
            )));
        }
        if !perms.contains(perm) {
            perms.push(perm.clone());
        }
    }
    let now = now_millis();
    let expires_at = match req.expires_at.as_deref() {
        None => None,
        Some(t) => {
            let at = parse_rfc3339_millis(t).ok_or_else(|| {
                ApiError::BadRequest(format!("expiresAt {t:?} is not an RFC 3339 time"))
            })?;
            if at <= now {
                return Err(ApiError::BadRequest("expiresAt is in the past".into()));
            }
            Some(at)
        }
    };
    // Never outliving its maker: a key that expires makes keys that
    // expire no later.
    let maker_expiry = s
        .store
        .api_key_by_id(&p.key_id)
        .await?
        .and_then(|k| k.expires_at);
    let expires_at = match (expires_at, maker_expiry) {
        (Some(a), Some(m)) => Some(a.min(m)),
        (None, m) => m,
        (a, None) => a,
    };
    let existing = s.store.api_keys_of_org(&p.organization_id).await?;
    if existing.iter().any(|k| k.name == name) {
        return Err(ApiError::Conflict(format!(
            "an API key named {name:?} exists"
        )));
    }
    if existing.len() >= MAX_KEYS_PER_ORG {
        return Err(ApiError::Forbidden(format!(
            "an organization has at most {MAX_KEYS_PER_ORG} API keys"
        )));
    }
    let key = auth::generate_key()?;
    let rec = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: p.organization_id.clone(),
        name: name.clone(),
        key_hash: auth::hash_key(&key),
        key_prefix: key.chars().take(8).collect(),
        role: auth::ROLE_MEMBER.into(),
        created_at: now,
        expires_at,
        revoked_at: None,
        permissions: Some(perms.clone()),
    };
    s.store.insert_api_key(&rec).await?;
    tracing::info!(key = %rec.id, name = %rec.name, org = %rec.organization_id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyResponse {
            name,
            value: key,
            created_at: rfc3339_millis(now),
            permissions: perms,
            expires_at: expires_at.map(rfc3339_millis),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/api-keys/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404), (status = 409)))]
pub async fn delete(
    State(s): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let k = key_named(&s, &p, &name).await?;
    if k.role != auth::ROLE_MEMBER {
        return Err(ApiError::Conflict(format!(
            "{} is the organization's {} key; it is not revoked through the API",
            k.name, k.role
        )));
    }
    if !s
        .store
        .revoke_api_key(&p.organization_id, &k.id, now_millis())
        .await?
    {
        return Err(ApiError::NotFound(format!("API key {name} not found")));
    }
    tracing::info!(key = %k.id, name = %k.name, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn organization(o: &OrgRecord) -> Organization {
    Organization {
        id: o.id.clone(),
        name: o.name.clone(),
        created_by: String::new(),
        personal: false,
        created_at: rfc3339_millis(o.created_at),
        updated_at: rfc3339_millis(o.created_at),
        suspended: false,
        default_region_id: crate::routes::account::REGION.into(),
    }
}

/// The caller's organization; every one for the server's admin key.
#[utoipa::path(get, path = "/api/organizations",
    responses((status = 200, body = [Organization])))]
pub async fn organizations(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<Organization>>, ApiError> {
    let orgs = if p.role == auth::ROLE_ADMIN {
        s.store.orgs().await?
    } else {
        s.store
            .org_by_id_or_name(&p.organization_id)
            .await?
            .into_iter()
            .collect()
    };
    Ok(Json(orgs.iter().map(organization).collect()))
}

#[utoipa::path(get, path = "/api/organizations/{organizationId}",
    params(("organizationId" = String, Path)),
    responses((status = 200, body = Organization), (status = 404)))]
pub async fn organization_get(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Organization>, ApiError> {
    let o = s
        .store
        .org_by_id_or_name(&id)
        .await?
        .filter(|o| p.role == auth::ROLE_ADMIN || o.id == p.organization_id)
        .ok_or_else(|| ApiError::NotFound(format!("organization {id} not found")))?;
    Ok(Json(organization(&o)))
}
