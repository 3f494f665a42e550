//! Snapshots an organization made (the images its sandboxes start from),
//! the log lines of pulls and builds, and registry credentials.

use crate::{conflict_on_unique, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// The registry reference it was pulled from (or built `FROM`).
    pub image_name: Option<String>,
    /// Its name in runners' image stores.
    pub image_ref: String,
    /// Daytona's `SnapshotState` (`pending`, `pulling`, `active`, …).
    pub state: String,
    pub error_reason: Option<String>,
    pub size_bytes: Option<i64>,
    pub entrypoint: Option<Vec<String>>,
    pub cpu: i64,
    pub gpu: i64,
    pub mem: i64,
    pub disk: i64,
    /// `{"dockerfileContent", "contextHashes"}` as given.
    pub build_info: Option<serde_json::Value>,
    pub source_sandbox_id: Option<String>,
    pub region_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

const SNAPSHOT_COLUMNS: &str = "id, organization_id, name, image_name, image_ref, state, \
     error_reason, size_bytes, entrypoint, cpu, gpu, mem, disk, build_info, source_sandbox_id, \
     region_id, created_at, updated_at, last_used_at";

fn decode<T: serde::de::DeserializeOwned>(s: Option<String>) -> Result<Option<T>, StoreError> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))
    })
    .transpose()
}

fn snapshot_from_row(r: &AnyRow) -> Result<SnapshotRecord, StoreError> {
    Ok(SnapshotRecord {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        name: r.try_get(2)?,
        image_name: r.try_get(3)?,
        image_ref: r.try_get(4)?,
        state: r.try_get(5)?,
        error_reason: r.try_get(6)?,
        size_bytes: r.try_get(7)?,
        entrypoint: decode(r.try_get(8)?)?,
        cpu: r.try_get(9)?,
        gpu: r.try_get(10)?,
        mem: r.try_get(11)?,
        disk: r.try_get(12)?,
        build_info: decode(r.try_get(13)?)?,
        source_sandbox_id: r.try_get(14)?,
        region_id: r.try_get(15)?,
        created_at: r.try_get(16)?,
        updated_at: r.try_get(17)?,
        last_used_at: r.try_get(18)?,
    })
}

/// Registry credentials of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRecord {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// The registry's host (`ghcr.io`, `127.0.0.1:5000`), normalized.
    pub url: String,
    pub username: String,
    /// Sealed by the API with the server's secrets key.
    pub sealed_password: String,
    pub project: String,
    pub registry_type: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const REGISTRY_COLUMNS: &str = "id, organization_id, name, url, username, sealed_password, \
     project, registry_type, created_at, updated_at";

fn registry_from_row(r: &AnyRow) -> Result<RegistryRecord, StoreError> {
    Ok(RegistryRecord {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        name: r.try_get(2)?,
        url: r.try_get(3)?,
        username: r.try_get(4)?,
        sealed_password: r.try_get(5)?,
        project: r.try_get(6)?,
        registry_type: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
    })
}

fn to_json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().and_then(|v| serde_json::to_string(v).ok())
}

impl Store {
    pub async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(&s.id)
        .bind(&s.organization_id)
        .bind(&s.name)
        .bind(&s.image_name)
        .bind(&s.image_ref)
        .bind(&s.state)
        .bind(&s.error_reason)
        .bind(s.size_bytes)
        .bind(to_json(&s.entrypoint))
        .bind(s.cpu)
        .bind(s.gpu)
        .bind(s.mem)
        .bind(s.disk)
        .bind(to_json(&s.build_info))
        .bind(&s.source_sandbox_id)
        .bind(&s.region_id)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.last_used_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            conflict_on_unique(e, || {
                format!("a snapshot named {:?} already exists", s.name)
            })
        })?;
        Ok(())
    }

    /// The organization's snapshot whose id or name is `id_or_name`.
    pub async fn snapshot_in_org(
        &self,
        org: &str,
        id_or_name: &str,
    ) -> Result<Option<SnapshotRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE organization_id = $1 \
             AND (id = $2 OR name = $2) ORDER BY (id = $2) DESC LIMIT 1"
        ))
        .bind(org)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    pub async fn snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    pub async fn snapshots_of_org(&self, org: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE organization_id = $1 \
             ORDER BY created_at, id"
        ))
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// Every snapshot in `state` (a restarted server resumes their work).
    pub async fn snapshots_in_state(&self, state: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE state = $1 ORDER BY created_at, id"
        ))
        .bind(state)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// Moves a snapshot from `from` to `to` (with its error, size and
    /// entrypoint); false if it was no longer in `from`.
    pub async fn set_snapshot_state(
        &self,
        s: &SnapshotRecord,
        from: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE snapshots SET state = $3, error_reason = $4, size_bytes = $5, entrypoint = $6, \
             updated_at = $7, last_used_at = $8 WHERE id = $1 AND state = $2",
        )
        .bind(&s.id)
        .bind(from)
        .bind(&s.state)
        .bind(&s.error_reason)
        .bind(s.size_bytes)
        .bind(to_json(&s.entrypoint))
        .bind(s.updated_at)
        .bind(s.last_used_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Refreshes `updated_at` of a snapshot still in `state` (the
    /// heartbeat of the server working on it); false once it is not.
    pub async fn touch_snapshot_in(
        &self,
        id: &str,
        state: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE snapshots SET updated_at = $3 WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(state)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a snapshot and its log lines.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM build_logs WHERE owner_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many sandboxes (of any state) run the image `image_ref`.
    pub async fn sandboxes_using_image(&self, image_ref: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM sandboxes WHERE image_ref = $1")
            .bind(image_ref)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    // ---- log lines -----------------------------------------------------

    /// Appends lines to `owner`'s log after the last one there.
    pub async fn append_log(&self, owner: &str, lines: &[String]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM build_logs WHERE owner_id = $1")
            .bind(owner)
            .fetch_one(&mut *tx)
            .await?;
        let mut seq: i64 = row.try_get(0)?;
        for line in lines {
            seq += 1;
            sqlx::query("INSERT INTO build_logs (owner_id, seq, line) VALUES ($1, $2, $3)")
                .bind(owner)
                .bind(seq)
                .bind(line)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `owner`'s log lines after `after` (a seq), with their seqs.
    pub async fn log_lines(
        &self,
        owner: &str,
        after: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, line FROM build_logs WHERE owner_id = $1 AND seq > $2 ORDER BY seq LIMIT 10000",
        )
        .bind(owner)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn delete_log(&self, owner: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM build_logs WHERE owner_id = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- registries ----------------------------------------------------

    pub async fn insert_registry(&self, r: &RegistryRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO docker_registries ({REGISTRY_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&r.id)
        .bind(&r.organization_id)
        .bind(&r.name)
        .bind(&r.url)
        .bind(&r.username)
        .bind(&r.sealed_password)
        .bind(&r.project)
        .bind(&r.registry_type)
        .bind(r.created_at)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            conflict_on_unique(e, || {
                format!("a registry named {:?} already exists", r.name)
            })
        })?;
        Ok(())
    }

    pub async fn update_registry(&self, r: &RegistryRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE docker_registries SET name = $3, url = $4, username = $5, sealed_password = $6, \
             project = $7, updated_at = $8 WHERE id = $1 AND organization_id = $2",
        )
        .bind(&r.id)
        .bind(&r.organization_id)
        .bind(&r.name)
        .bind(&r.url)
        .bind(&r.username)
        .bind(&r.sealed_password)
        .bind(&r.project)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_on_unique(e, || format!("a registry named {:?} already exists", r.name)))?;
        Ok(())
    }

    pub async fn registry_in_org(
        &self,
        org: &str,
        id: &str,
    ) -> Result<Option<RegistryRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM docker_registries WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(registry_from_row).transpose()
    }

    pub async fn registries_of_org(&self, org: &str) -> Result<Vec<RegistryRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM docker_registries WHERE organization_id = $1 \
             ORDER BY created_at, id"
        ))
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(registry_from_row).collect()
    }

    /// True if it existed.
    pub async fn delete_registry(&self, org: &str, id: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM docker_registries WHERE organization_id = $1 AND id = $2")
                .bind(org)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }
}
