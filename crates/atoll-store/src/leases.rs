//! Leases: one holder at a time for a named deployment-wide task, so API
//! servers sharing a database do not run the same periodic work twice.

use crate::{Store, StoreError};
use sqlx::Row;

impl Store {
    /// Takes or renews lease `name` for `holder` until `now + ttl_ms`.
    /// True when `holder` has it now: it was free, expired, or already
    /// `holder`'s. One statement, so two servers asking at once cannot
    /// both win.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4 \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get::<String, _>(0)? == holder,
            None => false,
        })
    }

    /// Gives lease `name` up if `holder` has it (a clean shutdown).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
