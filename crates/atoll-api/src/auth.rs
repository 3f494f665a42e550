//! Authentication: `Authorization: Bearer <api key>` resolved to the
//! organization it belongs to. Keys are stored as SHA-256 hashes only and
//! checked against the store on every request (no cache to go stale). On
//! `/api` a middleware authenticates first, to count the request against
//! the key's rate limit, and hands the caller on to the handler.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_OWNER: &str = "owner";
/// Keys made with `POST /api/api-keys`: limited to their permissions.
pub const ROLE_MEMBER: &str = "member";

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub organization_id: String,
    pub key_id: String,
    pub role: String,
    /// What the key is limited to (`None`: everything).
    pub permissions: Option<Vec<String>>,
}

impl Principal {
    /// 403 unless the key holds `permission` (for what the method and path
    /// alone do not tell: secrets or volumes named in a body).
    pub fn require(&self, permission: &str) -> Result<(), ApiError> {
        if crate::permissions::allows(self.permissions.as_deref(), &[permission]) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key lacks the permission {permission}"
            )))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == ROLE_ADMIN {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this route needs the server's admin API key".into(),
            ))
        }
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random API key: `atl_` + 64 hex characters.
pub fn generate_key() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(format!("atl_{}", hex::encode(bytes)))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let p = match parts.extensions.get::<Principal>() {
            Some(p) => p.clone(),
            None => authenticate(parts, state).await?,
        };
        // The whole path: a router nested under `/api` sees it stripped.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        let needed = crate::permissions::required(&parts.method, &path);
        if !crate::permissions::allows(p.permissions.as_deref(), needed) {
            return Err(ApiError::Forbidden(format!(
                "this API key lacks the permission {}",
                needed.join(" or ")
            )));
        }
        Ok(p)
    }
}

/// The caller a request's bearer key names (not yet checked against what
/// the request needs).
pub(crate) async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <api key>".into())
        })?;
        let key = state
            .store
            .api_key_by_hash(&hash_key(token))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))?;
        let now = atoll_types::time::now_millis();
        if key.revoked_at.is_some() {
            return Err(ApiError::Unauthorized("this API key was revoked".into()));
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(ApiError::Unauthorized("this API key has expired".into()));
        }
        Ok(Principal {
            organization_id: key.organization_id,
            key_id: key.id,
            role: key.role,
            permissions: key.permissions,
        })
    }
}

/// A runner, authenticated by its own key (`Authorization: Bearer <runner
/// key>`), for the routes runners call (`/api/runners/me`, health checks).
#[derive(Debug, Clone)]
pub struct RunnerPrincipal(pub atoll_store::RunnerRecord);

impl FromRequestParts<AppState> for RunnerPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <runner key>".into())
        })?;
        let r = state
            .store
            .runner_by_key_hash(&hash_key(token))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid runner key".into()))?;
        if r.state == crate::runners::state::DECOMMISSIONED {
            return Err(ApiError::Forbidden(format!(
                "runner {} is decommissioned",
                r.name
            )));
        }
        Ok(RunnerPrincipal(r))
    }
}

/// Middleware on `/api`: a request with a valid API key is counted against
/// that key's token bucket (429 with `Retry-After` past it) and its
/// `Principal` is handed to the handler. Requests without a valid key pass
/// untouched (the handler answers 401 where a key is needed), so only
/// authenticated keys ever get a bucket.
pub async fn limit_rate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limiter) = s.rate_limiter.clone() else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    if bearer(&parts).is_some() {
        if let Ok(p) = authenticate(&parts, &s).await {
            if let Err(limited) = limiter.check(&p.key_id) {
                tracing::debug!(key = %p.key_id, retry_after = limited.retry_after_secs, "rate limited");
                return ApiError::from(limited).into_response();
            }
            parts.extensions.insert(p);
        }
    }
    next.run(Request::from_parts(parts, body)).await
}
