//! Data that outlives a sandbox: an organization's volumes (rows the
//! volume API and sandbox creates read; the files live on a runner) and
//! the fork lineage of sandboxes.

use crate::{conflict_on_unique, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// Daytona's `VolumeState` (`pending_create`, `ready`, `deleting`, …).
    pub state: String,
    /// Its quota.
    pub size_gib: i64,
    /// The runner its files are on.
    pub runner_id: Option<String>,
    pub error_reason: Option<String>,
    /// Bytes in use, as last measured.
    pub used_bytes: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

const COLUMNS: &str = "id, organization_id, name, state, size_gib, runner_id, error_reason, \
     used_bytes, created_at, updated_at, last_used_at";

fn from_row(r: &AnyRow) -> Result<VolumeRecord, StoreError> {
    Ok(VolumeRecord {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        name: r.try_get(2)?,
        state: r.try_get(3)?,
        size_gib: r.try_get(4)?,
        runner_id: r.try_get(5)?,
        error_reason: r.try_get(6)?,
        used_bytes: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
        last_used_at: r.try_get(10)?,
    })
}

impl Store {
    /// Inserts a volume; `Conflict` if the organization has one of that name.
    pub async fn insert_volume(&self, v: &VolumeRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO volumes ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&v.id)
        .bind(&v.organization_id)
        .bind(&v.name)
        .bind(&v.state)
        .bind(v.size_gib)
        .bind(&v.runner_id)
        .bind(&v.error_reason)
        .bind(v.used_bytes)
        .bind(v.created_at)
        .bind(v.updated_at)
        .bind(v.last_used_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            conflict_on_unique(e, || format!("Volume with name {} already exists", v.name))
        })?;
        Ok(())
    }

    pub async fn volume(&self, id: &str) -> Result<Option<VolumeRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM volumes WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn volume_by_name(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<VolumeRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM volumes WHERE organization_id = $1 AND name = $2"
        ))
        .bind(org)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// An organization's volumes, most recently used first.
    pub async fn volumes_of(&self, org: &str) -> Result<Vec<VolumeRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM volumes WHERE organization_id = $1 \
             ORDER BY COALESCE(last_used_at, 0) DESC, created_at DESC"
        ))
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Volumes in `state` (any organization): what the keeper resumes.
    pub async fn volumes_in(&self, state: &str) -> Result<Vec<VolumeRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM volumes WHERE state = $1"))
            .bind(state)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Moves a volume from state `from` to `v.state` (with its other
    /// fields); false if it was no longer in `from`.
    pub async fn set_volume_state(&self, v: &VolumeRecord, from: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE volumes SET state = $3, runner_id = $4, error_reason = $5, used_bytes = $6, \
             updated_at = $7, last_used_at = $8 WHERE id = $1 AND state = $2",
        )
        .bind(&v.id)
        .bind(from)
        .bind(&v.state)
        .bind(&v.runner_id)
        .bind(&v.error_reason)
        .bind(v.used_bytes)
        .bind(v.updated_at)
        .bind(v.last_used_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a volume's measured usage and use time.
    pub async fn touch_volume(
        &self,
        id: &str,
        used_bytes: Option<i64>,
        last_used_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE volumes SET used_bytes = COALESCE($2, used_bytes), \
             last_used_at = COALESCE($3, last_used_at) WHERE id = $1",
        )
        .bind(id)
        .bind(used_bytes)
        .bind(last_used_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_volume_row(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM volumes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Names of the organization's sandboxes (not destroyed) that mount
    /// volume `id`.
    pub async fn sandboxes_using_volume(
        &self,
        org: &str,
        id: &str,
    ) -> Result<Vec<String>, StoreError> {
        // Mounts are JSON in the sandbox row; the id is a UUID, so a
        // substring match is exact enough, then checked below.
        let rows = sqlx::query(
            "SELECT name, volumes FROM sandboxes WHERE organization_id = $1 \
             AND state <> 'destroyed' AND volumes LIKE $2",
        )
        .bind(org)
        .bind(format!("%{id}%"))
        .fetch_all(&self.pool)
        .await?;
        let mut names = Vec::new();
        for r in rows {
            let name: String = r.try_get(0)?;
            let mounts: String = r.try_get(1)?;
            let mounts: Vec<crate::records::VolumeMount> =
                serde_json::from_str(&mounts).unwrap_or_default();
            if mounts.iter().any(|m| m.volume_id == id) {
                names.push(name);
            }
        }
        Ok(names)
    }
}

// ---- forks (sandboxes made from a running one) ---------------------------

impl Store {
    /// Records that `child` was forked from `parent`.
    pub async fn insert_fork(
        &self,
        org: &str,
        child: &str,
        parent: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sandbox_forks (child_id, parent_id, organization_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(child)
        .bind(parent)
        .bind(org)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The sandbox `child` was forked from, if it was.
    pub async fn fork_parent(&self, org: &str, child: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT parent_id FROM sandbox_forks WHERE child_id = $1 AND organization_id = $2",
        )
        .bind(child)
        .bind(org)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Sandboxes forked from `parent`, oldest first (at most `limit`).
    pub async fn fork_children(
        &self,
        org: &str,
        parent: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT child_id FROM sandbox_forks WHERE parent_id = $1 AND organization_id = $2 \
             ORDER BY created_at, child_id LIMIT $3",
        )
        .bind(parent)
        .bind(org)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
