//! SSH access to sandboxes (`POST|DELETE /api/sandbox/{id}/ssh-access`,
//! `GET /api/sandbox/ssh-access/validate`): tokens with an expiry, stored
//! hashed, revoked one by one (`?token=`) or all at once (no token: what
//! Daytona's API does, and what Python SDK 0.226.1's `revoke_ssh_access`
//! sends). A token opens its own sandbox only.

use crate::auth::Principal;
use crate::dto::{Sandbox, SshAccess, SshAccessValidation};
use crate::error::ApiError;
use crate::AppState;
use atoll_store::SshAccessRecord;
use atoll_types::time::rfc3339_millis;
use sha2::Digest;

/// Minutes a token lives when the request names none, and at most.
const DEFAULT_MINUTES: i64 = 60;
const MAX_MINUTES: i64 = 7 * 24 * 60;

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl AppState {
    pub async fn create_ssh_access(
        &self,
        p: &Principal,
        id_or_name: &str,
        minutes: Option<i64>,
    ) -> Result<SshAccess, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let minutes = minutes.unwrap_or(DEFAULT_MINUTES);
        if !(1..=MAX_MINUTES).contains(&minutes) {
            return Err(ApiError::BadRequest(format!(
                "expiresInMinutes must be 1 to {MAX_MINUTES}"
            )));
        }
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| ApiError::Internal(e.to_string()))?;
        let token = hex::encode(raw);
        let now = now_millis();
        let rec = SshAccessRecord {
            id: uuid::Uuid::new_v4().to_string(),
            sandbox_id: r.id.clone(),
            organization_id: r.organization_id.clone(),
            token_hash: token_hash(&token),
            expires_at: now + minutes * 60_000,
            created_at: now,
        };
        self.store.insert_ssh_access(&rec).await?;
        let host = self
            .config
            .public_url
            .split_once("://")
            .map_or(self.config.public_url.as_str(), |(_, r)| r)
            .split(['/', ':'])
            .next()
            .unwrap_or("localhost")
            .to_string();
        let port = self.ssh_port.unwrap_or(2222);
        Ok(SshAccess {
            id: rec.id,
            sandbox_id: r.id,
            ssh_command: format!("ssh -p {port} {token}@{host}"),
            token,
            expires_at: rfc3339_millis(rec.expires_at),
            created_at: rfc3339_millis(now),
            updated_at: rfc3339_millis(now),
        })
    }

    pub async fn revoke_ssh_access(
        &self,
        p: &Principal,
        id_or_name: &str,
        token: Option<&str>,
    ) -> Result<Sandbox, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let hash = token.filter(|t| !t.is_empty()).map(token_hash);
        self.store.revoke_ssh_access(&r.id, hash.as_deref()).await?;
        Ok(self.to_dto(&r))
    }

    /// Whether `token` opens a sandbox (of the caller's organization), and
    /// which.
    pub async fn validate_ssh_access(
        &self,
        p: &Principal,
        token: &str,
    ) -> Result<SshAccessValidation, ApiError> {
        let found = self.ssh_sandbox(token).await?;
        Ok(match found {
            Some(a) if a.organization_id == p.organization_id => SshAccessValidation {
                valid: true,
                sandbox_id: a.sandbox_id,
            },
            _ => SshAccessValidation {
                valid: false,
                sandbox_id: String::new(),
            },
        })
    }

    /// The live access `token` stands for (not expired, its sandbox still
    /// there): what the SSH gateway checks on every connection.
    pub async fn ssh_sandbox(&self, token: &str) -> Result<Option<SshAccessRecord>, ApiError> {
        if token.is_empty() || token.len() > 256 {
            return Ok(None);
        }
        let Some(a) = self.store.ssh_access_by_hash(&token_hash(token)).await? else {
            return Ok(None);
        };
        if a.expires_at <= now_millis() || self.store.sandbox(&a.sandbox_id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(a))
    }
}

/// What the SSH gateway (`atoll-ssh`) reaches a sandbox through: the same
/// runtime connections the toolbox and previews use.
impl AppState {
    /// The sandbox an access token is for, if it is live and the sandbox
    /// started: its id.
    pub async fn ssh_started_sandbox(&self, token: &str) -> Result<SshTarget, ApiError> {
        let Some(a) = self.ssh_sandbox(token).await? else {
            return Ok(SshTarget::Refused);
        };
        match self.store.sandbox(&a.sandbox_id).await? {
            Some(r) if r.state == crate::lifecycle::state::STARTED => Ok(SshTarget::Sandbox(r.id)),
            Some(r) => Ok(SshTarget::NotStarted(r.id, r.state.to_string())),
            None => Ok(SshTarget::Refused),
        }
    }

    /// A new connection to sandbox `id`'s daemon (HTTP/1.1 over it).
    pub async fn ssh_toolbox_stream(
        &self,
        id: &str,
    ) -> Result<atoll_runtime_api::BoxedStream, atoll_runtime_api::RuntimeError> {
        self.rt_by_id(id).await?.connect_toolbox(id).await
    }

    /// A new connection to `127.0.0.1:{port}` inside sandbox `id`.
    pub async fn ssh_port_stream(
        &self,
        id: &str,
        port: u16,
    ) -> Result<atoll_runtime_api::BoxedStream, atoll_runtime_api::RuntimeError> {
        self.rt_by_id(id).await?.connect_port(id, port).await
    }
}

/// Where an SSH access token leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshTarget {
    /// A started sandbox, by id.
    Sandbox(String),
    /// A sandbox that is not started (its id and state).
    NotStarted(String, String),
    /// No live access: unknown, expired or revoked token.
    Refused,
}
