//! Warm pools: how many started sandboxes of one snapshot and size an
//! organization wants kept ready. Members are sandbox rows whose
//! `warm_pool_id` names the pool.

use crate::{is_unique_violation, SandboxRecord, Store, StoreError, SANDBOX_COLUMNS};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPoolRecord {
    pub id: String,
    pub organization_id: String,
    pub snapshot: String,
    pub target: String,
    /// Sandboxes wanted.
    pub pool: i64,
    pub cpu: i64,
    /// GiB.
    pub memory: i64,
    /// GiB.
    pub disk: i64,
    pub os_user: String,
    pub env: BTreeMap<String, String>,
    pub error_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const POOL_COLUMNS: &str = "id, organization_id, snapshot, target, pool, cpu, memory, disk, \
     os_user, env, error_reason, created_at, updated_at";

fn pool_from_row(r: &AnyRow) -> Result<WarmPoolRecord, StoreError> {
    let env: String = r.try_get(9)?;
    Ok(WarmPoolRecord {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        snapshot: r.try_get(2)?,
        target: r.try_get(3)?,
        pool: r.try_get(4)?,
        cpu: r.try_get(5)?,
        memory: r.try_get(6)?,
        disk: r.try_get(7)?,
        os_user: r.try_get(8)?,
        env: serde_json::from_str(&env)
            .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?,
        error_reason: r.try_get(10)?,
        created_at: r.try_get(11)?,
        updated_at: r.try_get(12)?,
    })
}

impl Store {
    pub async fn insert_warm_pool(&self, p: &WarmPoolRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO warm_pools ({POOL_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&p.id)
        .bind(&p.organization_id)
        .bind(&p.snapshot)
        .bind(&p.target)
        .bind(p.pool)
        .bind(p.cpu)
        .bind(p.memory)
        .bind(p.disk)
        .bind(&p.os_user)
        .bind(serde_json::to_string(&p.env).unwrap_or_else(|_| "{}".into()))
        .bind(&p.error_reason)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "a warm pool for snapshot {:?} in {:?} already exists",
                    p.snapshot, p.target
                ))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// Writes a pool's size, error and `updated_at`.
    pub async fn update_warm_pool(&self, p: &WarmPoolRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE warm_pools SET pool = $2, error_reason = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(&p.id)
        .bind(p.pool)
        .bind(&p.error_reason)
        .bind(p.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn warm_pool_in_org(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<Option<WarmPoolRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {POOL_COLUMNS} FROM warm_pools WHERE organization_id = $1 AND id = $2"
        ))
        .bind(organization_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| pool_from_row(&r)).transpose()
    }

    pub async fn warm_pools_in_org(
        &self,
        organization_id: &str,
    ) -> Result<Vec<WarmPoolRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {POOL_COLUMNS} FROM warm_pools WHERE organization_id = $1 ORDER BY created_at, id"
        ))
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(pool_from_row)
        .collect()
    }

    pub async fn all_warm_pools(&self) -> Result<Vec<WarmPoolRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {POOL_COLUMNS} FROM warm_pools ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(pool_from_row)
        .collect()
    }

    pub async fn delete_warm_pool(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM warm_pools WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The unclaimed members of a pool, oldest first.
    pub async fn warm_pool_members(&self, pool_id: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE warm_pool_id = $1 ORDER BY created_at, id"
        ))
        .bind(pool_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(SandboxRecord::from_row)
        .collect()
    }

    /// Takes member `sandbox_id` out of pool `pool_id` if it is still an
    /// unclaimed, started member: true for exactly one caller.
    pub async fn claim_warm_member(
        &self,
        pool_id: &str,
        sandbox_id: &str,
    ) -> Result<bool, StoreError> {
        let _forget = crate::Forget(&self.recent, sandbox_id);
        let done = sqlx::query(
            "UPDATE sandboxes SET warm_pool_id = NULL WHERE id = $1 AND warm_pool_id = $2 \
             AND state = 'started'",
        )
        .bind(sandbox_id)
        .bind(pool_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Sandboxes whose TTL ran out at or before `now`.
    pub async fn sandboxes_due_for_ttl(&self, now: i64) -> Result<Vec<SandboxRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE auto_destroy_at IS NOT NULL \
             AND auto_destroy_at <= $1 ORDER BY auto_destroy_at, id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(SandboxRecord::from_row)
        .collect()
    }
}
