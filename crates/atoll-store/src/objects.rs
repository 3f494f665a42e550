//! Objects of the S3-compatible build-context endpoint: uploads in
//! progress, their parts (the bytes), and finished objects.

use crate::{Store, StoreError};
use sqlx::Row;

/// A finished object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    pub organization_id: String,
    pub object_key: String,
    pub upload_id: String,
    /// Its parts' numbers, in order.
    pub parts: Vec<i64>,
    pub size_bytes: i64,
    pub etag: String,
    /// Lowercase hex sha256 of the whole object.
    pub sha256: String,
    pub created_at: i64,
    pub last_used_at: i64,
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: String,
    pub organization_id: String,
    pub object_key: String,
    pub created_at: i64,
}

/// One stored part (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: i64,
    pub etag: String,
    pub size_bytes: i64,
}

impl Store {
    pub async fn create_upload(&self, u: &UploadRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO object_uploads (id, organization_id, object_key, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&u.id)
        .bind(&u.organization_id)
        .bind(&u.object_key)
        .bind(u.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, organization_id, object_key, created_at FROM object_uploads WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(UploadRecord {
                id: r.try_get(0)?,
                organization_id: r.try_get(1)?,
                object_key: r.try_get(2)?,
                created_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Stores (or replaces) part `number` of upload `upload_id`.
    pub async fn put_part(
        &self,
        upload_id: &str,
        number: i64,
        etag: &str,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_open_upload(&mut tx, upload_id).await?;
        sqlx::query("DELETE FROM object_parts WHERE upload_id = $1 AND part_number = $2")
            .bind(upload_id)
            .bind(number)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO object_parts (upload_id, part_number, etag, size_bytes, data) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(upload_id)
        .bind(number)
        .bind(etag)
        .bind(data.len() as i64)
        .bind(data.to_vec())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The parts an upload has, by number.
    pub async fn parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT part_number, etag, size_bytes FROM object_parts WHERE upload_id = $1 \
             ORDER BY part_number",
        )
        .bind(upload_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PartInfo {
                    part_number: r.try_get(0)?,
                    etag: r.try_get(1)?,
                    size_bytes: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// The bytes of one part.
    pub async fn part_data(
        &self,
        upload_id: &str,
        number: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row =
            sqlx::query("SELECT data FROM object_parts WHERE upload_id = $1 AND part_number = $2")
                .bind(upload_id)
                .bind(number)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Makes `o` (its upload's parts listed in `o.parts`) the object at its
    /// key, replacing any there; parts of the upload not listed, and the
    /// replaced object's, are deleted.
    /// Makes upload `o.upload_id` the object `o`, keeping its listed parts,
    /// if they still have the etags `expected` (what `o.sha256` was
    /// computed from): a part replaced meanwhile is a `Conflict`, as is an
    /// upload already completed or aborted.
    pub async fn complete_upload(
        &self,
        o: &ObjectRecord,
        expected: &[(i64, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_open_upload(&mut tx, &o.upload_id).await?;
        let rows = sqlx::query("SELECT part_number, etag FROM object_parts WHERE upload_id = $1")
            .bind(&o.upload_id)
            .fetch_all(&mut *tx)
            .await?;
        for (number, etag) in expected {
            let same = rows.iter().any(|r| {
                r.try_get::<i64, _>(0).ok() == Some(*number)
                    && r.try_get::<String, _>(1).ok().as_deref() == Some(etag.as_str())
            });
            if !same {
                return Err(StoreError::Conflict(format!(
                    "part {number} changed while the upload was completed"
                )));
            }
        }
        // The key's current object locked before it is read: two uploads
        // completing to one key replace it one after the other, and the
        // replaced one's parts always go.
        sqlx::query(
            "UPDATE objects SET upload_id = upload_id WHERE organization_id = $1 AND object_key = $2",
        )
        .bind(&o.organization_id)
        .bind(&o.object_key)
        .execute(&mut *tx)
        .await?;
        let old = sqlx::query(
            "SELECT upload_id FROM objects WHERE organization_id = $1 AND object_key = $2",
        )
        .bind(&o.organization_id)
        .bind(&o.object_key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(old) = old {
            let old: String = old.try_get(0)?;
            if old != o.upload_id {
                sqlx::query("DELETE FROM object_parts WHERE upload_id = $1")
                    .bind(&old)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM objects WHERE organization_id = $1 AND object_key = $2")
                .bind(&o.organization_id)
                .bind(&o.object_key)
                .execute(&mut *tx)
                .await?;
        }
        let kept: Vec<String> = o.parts.iter().map(i64::to_string).collect();
        // Numbers only: safe to inline.
        sqlx::query(&format!(
            "DELETE FROM object_parts WHERE upload_id = $1 AND part_number NOT IN ({})",
            if kept.is_empty() {
                "-1".to_string()
            } else {
                kept.join(", ")
            }
        ))
        .bind(&o.upload_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM object_uploads WHERE id = $1")
            .bind(&o.upload_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO objects (organization_id, object_key, upload_id, parts, size_bytes, etag, \
             sha256, created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&o.organization_id)
        .bind(&o.object_key)
        .bind(&o.upload_id)
        .bind(serde_json::to_string(&o.parts).unwrap_or_else(|_| "[]".into()))
        .bind(o.size_bytes)
        .bind(&o.etag)
        .bind(&o.sha256)
        .bind(o.created_at)
        .bind(o.last_used_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops an upload in progress and its parts.
    pub async fn abort_upload(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The upload row first, as a part's write takes it (no deadlock).
        sqlx::query("UPDATE object_uploads SET id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM object_parts WHERE upload_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM object_uploads WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn object(&self, org: &str, key: &str) -> Result<Option<ObjectRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT organization_id, object_key, upload_id, parts, size_bytes, etag, sha256, \
             created_at, last_used_at FROM objects WHERE organization_id = $1 AND object_key = $2",
        )
        .bind(org)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let parts: String = r.try_get(3)?;
            Ok(ObjectRecord {
                organization_id: r.try_get(0)?,
                object_key: r.try_get(1)?,
                upload_id: r.try_get(2)?,
                parts: serde_json::from_str(&parts)
                    .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?,
                size_bytes: r.try_get(4)?,
                etag: r.try_get(5)?,
                sha256: r.try_get(6)?,
                created_at: r.try_get(7)?,
                last_used_at: r.try_get(8)?,
            })
        })
        .transpose()
    }

    /// An organization's objects whose keys start with `prefix`, by key.
    pub async fn list_objects(
        &self,
        org: &str,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ObjectRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT object_key FROM objects WHERE organization_id = $1 \
             AND substr(object_key, 1, CAST($2 AS INTEGER)) = $3 AND object_key > $5 \
             ORDER BY object_key LIMIT $4",
        )
        .bind(org)
        .bind(prefix.chars().count() as i64)
        .bind(prefix)
        .bind(limit)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let key: String = r.try_get(0)?;
            if let Some(o) = self.object(org, &key).await? {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// Deletes an object and its bytes.
    pub async fn delete_object(&self, org: &str, key: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM object_parts WHERE upload_id IN (SELECT upload_id FROM objects              WHERE organization_id = $1 AND object_key = $2)",
        )
        .bind(org)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM objects WHERE organization_id = $1 AND object_key = $2")
            .bind(org)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks an object used now (the collector keeps it).
    pub async fn touch_object(&self, org: &str, key: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE objects SET last_used_at = $3 WHERE organization_id = $1 AND object_key = $2",
        )
        .bind(org)
        .bind(key)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many uploads an organization has open.
    pub async fn open_uploads(&self, org: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM object_uploads WHERE organization_id = $1")
            .bind(org)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Bytes of objects and of uploads in progress of an organization.
    pub async fn object_bytes(&self, org: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(p.size_bytes), 0) AS BIGINT) FROM object_parts p WHERE p.upload_id IN \
             (SELECT upload_id FROM objects WHERE organization_id = $1 \
              UNION SELECT id FROM object_uploads WHERE organization_id = $1)",
        )
        .bind(org)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Deletes objects unused since `unused_before` and uploads begun
    /// before `stale_before` (abandoned), with their parts. How many of
    /// each.
    pub async fn collect_objects(
        &self,
        unused_before: i64,
        stale_before: i64,
    ) -> Result<(u64, u64), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Stale uploads' rows first, as a part's write takes them.
        sqlx::query("UPDATE object_uploads SET id = id WHERE created_at < $1")
            .bind(stale_before)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM object_parts WHERE upload_id IN \
             (SELECT upload_id FROM objects WHERE last_used_at < $1) \
             OR upload_id IN (SELECT id FROM object_uploads WHERE created_at < $2)",
        )
        .bind(unused_before)
        .bind(stale_before)
        .execute(&mut *tx)
        .await?;
        let objects = sqlx::query("DELETE FROM objects WHERE last_used_at < $1")
            .bind(unused_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let uploads = sqlx::query("DELETE FROM object_uploads WHERE created_at < $1")
            .bind(stale_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((objects, uploads))
    }
}

/// Takes the row lock of an open upload for the rest of `tx` (a part and
/// the upload's completion never interleave); `Conflict` if it is no
/// longer open.
async fn lock_open_upload(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    upload_id: &str,
) -> Result<(), StoreError> {
    let locked = sqlx::query("UPDATE object_uploads SET id = id WHERE id = $1")
        .bind(upload_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if locked == 0 {
        return Err(StoreError::Conflict(
            "the upload was completed or aborted".into(),
        ));
    }
    Ok(())
}
