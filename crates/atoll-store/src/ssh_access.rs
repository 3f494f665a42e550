//! SSH access tokens of sandboxes, stored hashed.

use crate::{Store, StoreError};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAccessRecord {
    pub id: String,
    pub sandbox_id: String,
    pub organization_id: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    pub expires_at: i64,
    pub created_at: i64,
}

impl Store {
    pub async fn insert_ssh_access(&self, a: &SshAccessRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ssh_access (id, sandbox_id, organization_id, token_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&a.id)
        .bind(&a.sandbox_id)
        .bind(&a.organization_id)
        .bind(&a.token_hash)
        .bind(a.expires_at)
        .bind(a.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The access a token hash stands for, expired or not.
    pub async fn ssh_access_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<SshAccessRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, sandbox_id, organization_id, token_hash, expires_at, created_at \
             FROM ssh_access WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SshAccessRecord {
                id: r.try_get(0)?,
                sandbox_id: r.try_get(1)?,
                organization_id: r.try_get(2)?,
                token_hash: r.try_get(3)?,
                expires_at: r.try_get(4)?,
                created_at: r.try_get(5)?,
            })
        })
        .transpose()
    }

    /// Revokes a sandbox's SSH access: the one token `hash`, or all.
    pub async fn revoke_ssh_access(
        &self,
        sandbox_id: &str,
        hash: Option<&str>,
    ) -> Result<u64, StoreError> {
        let done = match hash {
            Some(h) => {
                sqlx::query("DELETE FROM ssh_access WHERE sandbox_id = $1 AND token_hash = $2")
                    .bind(sandbox_id)
                    .bind(h)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM ssh_access WHERE sandbox_id = $1")
                    .bind(sandbox_id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// Drops expired tokens.
    pub async fn sweep_ssh_access(&self, now: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM ssh_access WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
