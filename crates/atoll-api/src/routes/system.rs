//! Health, the OpenAPI document, and the admin routes of this server.

use crate::auth::{self, Principal};
use crate::dto::{
    CreateOrganization, CreatedOrganization, DaytonaConfiguration, Health, OidcConfig,
    OrganizationDto, OrganizationQuota, UpdateOrganizationQuota,
};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::AppState;
use atoll_store::{ApiKeyRecord, OrgRecord};
use axum::extract::{Path, State};
use axum::Json;

#[utoipa::path(get, path = "/api/health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Daytona's client configuration (no key needed). No `analyticsApiUrl`:
/// the SDKs read metrics history from this server.
#[utoipa::path(get, path = "/api/config", responses((status = 200, body = DaytonaConfiguration)))]
pub async fn config(State(s): State<AppState>) -> Json<DaytonaConfiguration> {
    let public = s.config.public_url.trim_end_matches('/');
    Json(DaytonaConfiguration {
        version: env!("CARGO_PKG_VERSION").into(),
        oidc: OidcConfig {
            issuer: String::new(),
            client_id: String::new(),
            audience: String::new(),
            provider: String::new(),
        },
        linked_accounts_enabled: false,
        announcements: Default::default(),
        proxy_template_url: format!("{public}/preview/{{{{sandboxId}}}}/{{{{PORT}}}}"),
        proxy_toolbox_url: s.toolbox_proxy_url(),
        default_snapshot: s.config.default_snapshot.clone(),
        dashboard_url: public.to_string(),
        max_auto_archive_interval: i64::from(i32::MAX),
        maintanance_mode: false,
        environment: "atoll".into(),
        analytics_api_url: None,
    })
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

/// Creates an organization and its first (owner) API key. Admin only.
#[utoipa::path(post, path = "/api/admin/organizations", request_body = CreateOrganization,
    responses((status = 200, body = CreatedOrganization), (status = 403), (status = 409)))]
pub async fn create_organization(
    State(s): State<AppState>,
    p: Principal,
    JsonBody(req): JsonBody<CreateOrganization>,
) -> Result<Json<CreatedOrganization>, ApiError> {
    p.require_admin()?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "organization name must be 1-100 printable characters".into(),
        ));
    }
    let now = atoll_types::time::now_millis();
    let org = OrgRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        created_at: now,
    };
    s.store.insert_org(&org).await?;
    let key = auth::generate_key()?;
    s.store
        .insert_api_key(&ApiKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            organization_id: org.id.clone(),
            name: "owner".into(),
            key_hash: auth::hash_key(&key),
            key_prefix: key.chars().take(8).collect(),
            role: auth::ROLE_OWNER.into(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
            permissions: None,
        })
        .await?;
    Ok(Json(CreatedOrganization {
        organization: OrganizationDto {
            id: org.id,
            name: org.name,
        },
        api_key: key,
    }))
}

/// An organization's quotas in force, its overrides and its usage. Admin only.
#[utoipa::path(get, path = "/api/admin/organizations/{organizationIdOrName}/quota",
    params(("organizationIdOrName" = String, Path)),
    responses((status = 200, body = OrganizationQuota), (status = 403), (status = 404)))]
pub async fn get_quota(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<OrganizationQuota>, ApiError> {
    p.require_admin()?;
    Ok(Json(s.org_quota(&id).await?))
}

/// Replaces an organization's quota overrides (absent or null: the
/// server's default; -1: unlimited). Admin only.
#[utoipa::path(put, path = "/api/admin/organizations/{organizationIdOrName}/quota",
    params(("organizationIdOrName" = String, Path)),
    request_body = UpdateOrganizationQuota,
    responses((status = 200, body = OrganizationQuota), (status = 400), (status = 403), (status = 404)))]
pub async fn put_quota(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateOrganizationQuota>,
) -> Result<Json<OrganizationQuota>, ApiError> {
    p.require_admin()?;
    Ok(Json(s.set_org_quota(&id, req).await?))
}
