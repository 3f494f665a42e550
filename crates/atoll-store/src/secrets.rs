//! Organization secrets (values kept sealed; sealing is the caller's) and
//! the per-sandbox keys signed file URLs are made with.

use crate::{is_unique_violation, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub description: Option<String>,
    /// Hosts the secret may be sent to (empty: not restricted).
    pub hosts: Vec<String>,
    /// The value, sealed by the API with the server's secrets key.
    pub sealed_value: String,
    /// The opaque token Daytona shows in place of the value.
    pub placeholder: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const SECRET_COLUMNS: &str = "id, organization_id, name, description, hosts, sealed_value, \
     placeholder, created_at, updated_at";

fn secret_from_row(r: &AnyRow) -> Result<SecretRecord, StoreError> {
    let hosts: String = r.try_get(4)?;
    Ok(SecretRecord {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        name: r.try_get(2)?,
        description: r.try_get(3)?,
        hosts: serde_json::from_str(&hosts)
            .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?,
        sealed_value: r.try_get(5)?,
        placeholder: r.try_get(6)?,
        created_at: r.try_get(7)?,
        updated_at: r.try_get(8)?,
    })
}

impl Store {
    pub async fn insert_secret(&self, s: &SecretRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO secrets ({SECRET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&s.id)
        .bind(&s.organization_id)
        .bind(&s.name)
        .bind(&s.description)
        .bind(serde_json::to_string(&s.hosts).unwrap_or_else(|_| "[]".into()))
        .bind(&s.sealed_value)
        .bind(&s.placeholder)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a secret named {:?} already exists", s.name))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// Writes a secret's description, hosts, value and `updated_at`.
    pub async fn update_secret(&self, s: &SecretRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE secrets SET description = $3, hosts = $4, sealed_value = $5, updated_at = $6 \
             WHERE id = $1 AND organization_id = $2",
        )
        .bind(&s.id)
        .bind(&s.organization_id)
        .bind(&s.description)
        .bind(serde_json::to_string(&s.hosts).unwrap_or_else(|_| "[]".into()))
        .bind(&s.sealed_value)
        .bind(s.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A secret of the organization by id or, failing that, by name.
    pub async fn secret_in_org(
        &self,
        organization_id: &str,
        id_or_name: &str,
    ) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE organization_id = $1 AND (id = $2 OR name = $2) \
             ORDER BY CASE WHEN id = $2 THEN 0 ELSE 1 END LIMIT 1"
        ))
        .bind(organization_id)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| secret_from_row(&r)).transpose()
    }

    pub async fn secrets_in_org(
        &self,
        organization_id: &str,
    ) -> Result<Vec<SecretRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE organization_id = $1 ORDER BY created_at, id"
        ))
        .bind(organization_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(secret_from_row)
        .collect()
    }

    /// Deletes a secret; false if there was none.
    pub async fn delete_secret(&self, organization_id: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE organization_id = $1 AND id = $2")
            .bind(organization_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- signing keys --------------------------------------------------

    /// The sandbox's signing key, created from `fresh` on first use (safe
    /// against concurrent first uses).
    pub async fn signing_key(
        &self,
        sandbox_id: &str,
        fresh: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO sandbox_signing_keys (sandbox_id, signing_key, created_at) \
             VALUES ($1, $2, $3) ON CONFLICT (sandbox_id) DO NOTHING",
        )
        .bind(sandbox_id)
        .bind(fresh)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT signing_key FROM sandbox_signing_keys WHERE sandbox_id = $1")
            .bind(sandbox_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The sandbox's signing key, if one was ever made.
    pub async fn existing_signing_key(
        &self,
        sandbox_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT signing_key FROM sandbox_signing_keys WHERE sandbox_id = $1")
            .bind(sandbox_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Replaces the sandbox's signing key with `fresh`.
    pub async fn replace_signing_key(
        &self,
        sandbox_id: &str,
        fresh: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sandbox_signing_keys (sandbox_id, signing_key, created_at) \
             VALUES ($1, $2, $3) ON CONFLICT (sandbox_id) DO UPDATE SET \
             signing_key = excluded.signing_key, created_at = excluded.created_at",
        )
        .bind(sandbox_id)
        .bind(fresh)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
