//! Persistence for the control plane: one repository API over sqlx's `Any`
//! driver, with versioned migrations embedded in the binary. SQL is kept
//! portable (`$n` placeholders, BIGINT timestamps, 0/1 booleans, JSON text)
//! so PostgreSQL is a second connection URL, not a rewrite.

mod leases;
mod objects;
mod records;
mod runners;
mod secrets;
mod snapshots;
mod ssh_access;
mod volumes;
mod warm_pools;

pub use objects::{ObjectRecord, PartInfo, UploadRecord};
pub use records::{
    ApiKeyRecord, MetricSample, OrgQuotaRecord, OrgRecord, SandboxHolding, SandboxRecord,
    VolumeMount,
};
pub use runners::{RunnerAllocation, RunnerFlag, RunnerHealth, RunnerRecord};
pub use secrets::SecretRecord;
pub use snapshots::{RegistryRecord, SnapshotRecord};
pub use ssh_access::SshAccessRecord;
pub use volumes::VolumeRecord;
pub use warm_pools::WarmPoolRecord;

use atoll_types::SandboxState;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
    #[error("unsupported database url scheme {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Did the database fail for want of disk space? From the error's
    /// codes: SQLite's `SQLITE_FULL` (13), PostgreSQL's `disk_full`
    /// (53100), or an OS `ENOSPC`/`EDQUOT` on the connection's I/O.
    pub fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        match self {
            StoreError::Db(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("13") | Some("53100"))
            }
            StoreError::Db(sqlx::Error::Io(e)) => {
                matches!(e.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
            }
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(
                db,
            ))) => {
                matches!(db.code().as_deref(), Some("13") | Some("53100"))
            }
            _ => false,
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    recent: Arc<RecentSandboxes>,
}

/// Sandbox rows this process read lately, for hot paths that may act on a
/// row up to a moment old (the preview proxy reads one per request). Every
/// sandbox write through this store drops the row, and a read that raced
/// a write is not kept, so this process always sees its own writes at
/// once; writes by other processes (several API servers on one PostgreSQL)
/// show after at most the reader's `max_age`.
#[derive(Default)]
struct RecentSandboxes {
    rows: Mutex<RecentRows>,
}

#[derive(Default)]
struct RecentRows {
    /// Bumped by every sandbox write.
    generation: u64,
    by_id: HashMap<String, (SandboxRecord, Instant)>,
}

/// Rows kept before expired ones are swept.
const RECENT_SANDBOXES_MAX: usize = 1024;

impl RecentSandboxes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecentRows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str, max_age: Duration) -> Option<SandboxRecord> {
        let rows = self.lock();
        let (row, at) = rows.by_id.get(id)?;
        (at.elapsed() < max_age).then(|| row.clone())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `row`, read when the generation was `seen`, unless a write
    /// happened since (the row may be older than that write).
    fn keep(&self, row: &SandboxRecord, seen: u64, max_age: Duration) {
        let mut rows = self.lock();
        if rows.generation != seen {
            return;
        }
        if rows.by_id.len() >= RECENT_SANDBOXES_MAX {
            rows.by_id.retain(|_, (_, at)| at.elapsed() < max_age);
            if rows.by_id.len() >= RECENT_SANDBOXES_MAX {
                rows.by_id.clear();
            }
        }
        rows.by_id
            .insert(row.id.clone(), (row.clone(), Instant::now()));
    }

    fn forget(&self, id: &str) {
        let mut rows = self.lock();
        rows.generation = rows.generation.wrapping_add(1);
        rows.by_id.remove(id);
    }
}

/// A write's error: `Conflict(message)` when it broke a unique constraint.
pub(crate) fn conflict_on_unique(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(message())
    } else {
        e.into()
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation() || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

const SANDBOX_COLUMNS: &str = "id, organization_id, name, snapshot, os_user, env, labels, public, \
     network_block_all, network_allow_list, cpu, gpu, memory, disk, state, desired_state, \
     error_reason, recoverable, auto_stop_interval, auto_archive_interval, auto_delete_interval, \
     volumes, created_at, updated_at, last_activity_at, state_changed_at, ttl_minutes, \
     auto_destroy_at, secrets, outbound_proxy_url, queue_timeout, warm_pool_id, \
     auto_pause_interval, runner_id, image_ref";

impl Store {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !sqlite && !postgres {
            // Only the scheme: the rest may carry a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::UnsupportedUrl(scheme.to_string()));
        }
        let url = if !sqlite || url.contains('?') {
            url.to_string()
        } else {
            format!("{url}?mode=rwc")
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if sqlite {
            // WAL is persistent in the file: set once.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            recent: Arc::default(),
        })
    }

    // ---- organizations -------------------------------------------------

    pub async fn insert_org(&self, org: &OrgRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("organization {:?} already exists", org.name))
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    pub async fn org_by_name(&self, name: &str) -> Result<Option<OrgRecord>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM organizations WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| OrgRecord {
            id: r.get(0),
            name: r.get(1),
            created_at: r.get(2),
        }))
    }

    /// An organization by id or, failing that, by name.
    pub async fn org_by_id_or_name(
        &self,
        id_or_name: &str,
    ) -> Result<Option<OrgRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, created_at FROM organizations WHERE id = $1 OR name = $1 \
             ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| OrgRecord {
            id: r.get(0),
            name: r.get(1),
            created_at: r.get(2),
        }))
    }

    /// The organization's quota overrides, if any were ever set.
    pub async fn org_quota(
        &self,
        organization_id: &str,
    ) -> Result<Option<OrgQuotaRecord>, StoreError> {
        org_quota_row(&self.pool, organization_id).await
    }

    /// Replaces the organization's quota overrides.
    pub async fn put_org_quota(&self, q: &OrgQuotaRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO organization_quotas \
             (organization_id, max_sandboxes, total_cpu, total_memory, total_disk, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (organization_id) DO UPDATE SET max_sandboxes = excluded.max_sandboxes, \
             total_cpu = excluded.total_cpu, total_memory = excluded.total_memory, \
             total_disk = excluded.total_disk, updated_at = excluded.updated_at",
        )
        .bind(&q.organization_id)
        .bind(q.max_sandboxes)
        .bind(q.total_cpu)
        .bind(q.total_memory)
        .bind(q.total_disk)
        .bind(q.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- API keys ------------------------------------------------------

    pub async fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, name, key_hash, key_prefix, role, created_at, expires_at, revoked_at, permissions) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&k.id)
        .bind(&k.organization_id)
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(&k.key_prefix)
        .bind(&k.role)
        .bind(k.created_at)
        .bind(k.expires_at)
        .bind(k.revoked_at)
        .bind(
            k.permissions
                .as_ref()
                .map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".into())),
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.api_key_where("key_hash", hash).await
    }

    pub async fn api_key_by_id(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.api_key_where("id", id).await
    }

    async fn api_key_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE {column} = $1"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| api_key_of(&r)))
    }

    /// An organization's keys not revoked, oldest first.
    pub async fn api_keys_of_org(&self, org: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys \
             WHERE organization_id = $1 AND revoked_at IS NULL ORDER BY created_at, id"
        ))
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(api_key_of).collect())
    }

    /// Revokes key `id` of `org`; false if there was no such live key.
    pub async fn revoke_api_key(&self, org: &str, id: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = $3 \
             WHERE organization_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(org)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every organization, oldest first.
    pub async fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, created_at FROM organizations ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| OrgRecord {
                id: r.get(0),
                name: r.get(1),
                created_at: r.get(2),
            })
            .collect())
    }

    pub async fn count_api_keys(&self, organization_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM api_keys WHERE organization_id = $1")
            .bind(organization_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    // ---- sandboxes -----------------------------------------------------

    pub async fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
        let _forget = Forget(&self.recent, &s.id);
        insert_sandbox_row(&self.pool, s).await
    }

    /// A sandbox of `organization_id` by id or, failing that, by name.
    pub async fn sandbox_in_org(
        &self,
        organization_id: &str,
        id_or_name: &str,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE organization_id = $1 AND (id = $2 OR name = $2) \
             ORDER BY CASE WHEN id = $2 THEN 0 ELSE 1 END LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(organization_id)
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| SandboxRecord::from_row(&r)).transpose()
    }

    pub async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| SandboxRecord::from_row(&r)).transpose()
    }

    /// [`Store::sandbox`], answered from memory when this store read the
    /// row less than `max_age` ago and has not written it since (see
    /// `RecentSandboxes`). Only found rows are remembered.
    pub async fn sandbox_recent(
        &self,
        id: &str,
        max_age: Duration,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        if let Some(row) = self.recent.get(id, max_age) {
            return Ok(Some(row));
        }
        let seen = self.recent.generation();
        let row = self.sandbox(id).await?;
        if let Some(r) = &row {
            self.recent.keep(r, seen, max_age);
        }
        Ok(row)
    }

    /// Every sandbox row placed on runner `runner_id` (rows without a
    /// runner count as `default_runner`'s).
    pub async fn sandboxes_on_runner(
        &self,
        runner_id: &str,
        default_runner: &str,
    ) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE COALESCE(runner_id, $2) = $1 \
             ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(runner_id)
            .bind(default_runner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(SandboxRecord::from_row).collect()
    }

    pub async fn sandboxes_in_org(
        &self,
        organization_id: &str,
    ) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE organization_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(organization_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(SandboxRecord::from_row).collect()
    }

    pub async fn all_sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(SandboxRecord::from_row).collect()
    }

    /// Writes every mutable column of `s`, but only if the row is still in
    /// `expected_state` (the state it was read in): a compare-and-set, so
    /// two API processes sharing one database never both apply a
    /// transition. A lost race is `Conflict`.
    pub async fn update_sandbox(
        &self,
        s: &SandboxRecord,
        expected_state: SandboxState,
    ) -> Result<(), StoreError> {
        let _forget = Forget(&self.recent, &s.id);
        update_sandbox_row(&self.pool, s, expected_state).await
    }

    /// Applies `write` only if `check` accepts what the rest of the
    /// sandbox's organization holds (every other sandbox row of it), in one
    /// transaction that first takes the organization's row lock: two
    /// writers of one organization, in this process or another API
    /// process on the same database, check and write one after the other,
    /// so they never both take the last of a quota. `check` is also given
    /// the organization's quota overrides. A refusal changes nothing and
    /// is returned as `Ok(Err(..))`.
    pub async fn write_sandbox_checked<E>(
        &self,
        write: SandboxWrite<'_>,
        check: impl FnOnce(Option<&OrgQuotaRecord>, &[SandboxHolding]) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let s = write.record();
        let _forget = Forget(&self.recent, &s.id);
        let mut tx = self.pool.begin().await?;
        // A write that changes nothing, for its lock: PostgreSQL locks the
        // row until commit; SQLite takes the database's write lock before
        // this transaction reads anything (so a waiting writer never works
        // from a stale snapshot).
        let locked = sqlx::query("UPDATE organizations SET name = name WHERE id = $1")
            .bind(&s.organization_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "organization {} does not exist",
                s.organization_id
            )));
        }
        let quota = org_quota_row(&mut *tx, &s.organization_id).await?;
        let others: Vec<SandboxHolding> = sqlx::query(
            "SELECT id, state, cpu, memory, disk FROM sandboxes \
             WHERE organization_id = $1 AND id <> $2",
        )
        .bind(&s.organization_id)
        .bind(&s.id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(holding_from_row)
        .collect::<Result<_, _>>()?;
        if let Err(refused) = check(quota.as_ref(), &others) {
            tx.rollback().await?;
            return Ok(Err(refused));
        }
        match write {
            SandboxWrite::Insert(s) => insert_sandbox_row(&mut *tx, s).await?,
            SandboxWrite::Update {
                record,
                expected_state,
            } => update_sandbox_row(&mut *tx, record, expected_state).await?,
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// What every sandbox of an organization holds (for quota usage).
    pub async fn holdings_in_org(
        &self,
        organization_id: &str,
    ) -> Result<Vec<SandboxHolding>, StoreError> {
        sqlx::query("SELECT id, state, cpu, memory, disk FROM sandboxes WHERE organization_id = $1")
            .bind(organization_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(holding_from_row)
            .collect()
    }

    /// Records activity on a sandbox (never moves the clock backwards).
    pub async fn touch_activity(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        let _forget = Forget(&self.recent, id);
        sqlx::query(
            "UPDATE sandboxes SET last_activity_at = $2 WHERE id = $1 AND last_activity_at < $2",
        )
        .bind(id)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- previews ------------------------------------------------------

    /// The server secret `name`, created from `fresh` on first use. Safe
    /// against concurrent first uses (insert-or-ignore, then read).
    pub async fn secret(&self, name: &str, fresh: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    pub async fn insert_signed_preview(
        &self,
        token_hash: &str,
        sandbox_id: &str,
        port: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signed_preview_tokens (token_hash, sandbox_id, port, expires_at, revoked) \
             VALUES ($1, $2, $3, $4, 0)",
        )
        .bind(token_hash)
        .bind(sandbox_id)
        .bind(port)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Is `token_hash` a live signed token for this sandbox and port?
    pub async fn signed_preview_valid(
        &self,
        token_hash: &str,
        sandbox_id: &str,
        port: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM signed_preview_tokens WHERE token_hash = $1 AND sandbox_id = $2 \
             AND port = $3 AND expires_at > $4 AND revoked = 0",
        )
        .bind(token_hash)
        .bind(sandbox_id)
        .bind(port)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64, _>(0) > 0)
    }

    /// The sandbox a signed token was issued for, live or not (so a host
    /// that carries the token in place of the sandbox id can be resolved,
    /// and an expired token still be told apart from an unknown one).
    pub async fn signed_preview_sandbox(
        &self,
        token_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT sandbox_id FROM signed_preview_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Revokes a signed token of this sandbox and port; false if none matched.
    pub async fn revoke_signed_preview(
        &self,
        token_hash: &str,
        sandbox_id: &str,
        port: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE signed_preview_tokens SET revoked = 1 WHERE token_hash = $1 AND sandbox_id = $2 AND port = $3",
        )
        .bind(token_hash)
        .bind(sandbox_id)
        .bind(port)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes signed preview tokens that expired at or before `now`
    /// (revoked ones included: they expire too); returns how many.
    pub async fn delete_expired_signed_previews(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM signed_preview_tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        let _forget = Forget(&self.recent, id);
        sqlx::query("DELETE FROM signed_preview_tokens WHERE sandbox_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM build_logs WHERE owner_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        for table in ["sandbox_signing_keys", "sandbox_metrics", "ssh_access"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE sandbox_id = $1"))
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- metrics -------------------------------------------------------

    /// Stores one sampler tick's samples in one statement (rows past the
    /// bind limit of a statement go in further statements of the same
    /// transaction). A sample already stored for that sandbox and time is
    /// kept.
    pub async fn insert_metric_samples(&self, samples: &[MetricSample]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        // 9 binds a row; SQLite allows 32,766 binds, PostgreSQL 65,535.
        const ROWS_PER_STATEMENT: usize = 1000;
        let mut tx = self.pool.begin().await?;
        for chunk in samples.chunks(ROWS_PER_STATEMENT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 9;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8,
                        b + 9
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO sandbox_metrics (sandbox_id, sampled_at, cpu_count, cpu_used_centipct, \
                 mem_used, mem_cache, mem_total, disk_used, disk_total) VALUES {} \
                 ON CONFLICT (sandbox_id, sampled_at) DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q
                    .bind(&m.sandbox_id)
                    .bind(m.sampled_at)
                    .bind(m.cpu_count)
                    .bind((m.cpu_used_pct * 100.0).round() as i64)
                    .bind(m.mem_used)
                    .bind(m.mem_cache)
                    .bind(m.mem_total)
                    .bind(m.disk_used)
                    .bind(m.disk_total);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Samples of a sandbox taken in `[from, to]` (ms), oldest first, at
    /// most `limit`.
    pub async fn metric_samples(
        &self,
        sandbox_id: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<MetricSample>, StoreError> {
        let rows = sqlx::query(
            "SELECT sandbox_id, sampled_at, cpu_count, cpu_used_centipct, mem_used, mem_cache, \
             mem_total, disk_used, disk_total FROM sandbox_metrics \
             WHERE sandbox_id = $1 AND sampled_at >= $2 AND sampled_at <= $3 \
             ORDER BY sampled_at LIMIT $4",
        )
        .bind(sandbox_id)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| -> Result<MetricSample, StoreError> {
                Ok(MetricSample {
                    sandbox_id: r.try_get(0)?,
                    sampled_at: r.try_get(1)?,
                    cpu_count: r.try_get(2)?,
                    cpu_used_pct: r.try_get::<i64, _>(3)? as f64 / 100.0,
                    mem_used: r.try_get(4)?,
                    mem_cache: r.try_get(5)?,
                    mem_total: r.try_get(6)?,
                    disk_used: r.try_get(7)?,
                    disk_total: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Deletes samples taken before `before` (ms); returns how many.
    pub async fn prune_metric_samples(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sandbox_metrics WHERE sampled_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A sandbox write that may take more of its organization's quota.
pub enum SandboxWrite<'a> {
    Insert(&'a SandboxRecord),
    /// A compare-and-set on `expected_state`, as [`Store::update_sandbox`].
    Update {
        record: &'a SandboxRecord,
        expected_state: SandboxState,
    },
}

impl SandboxWrite<'_> {
    fn record(&self) -> &SandboxRecord {
        match self {
            SandboxWrite::Insert(r) => r,
            SandboxWrite::Update { record, .. } => record,
        }
    }
}

async fn insert_sandbox_row<'c>(
    x: impl Executor<'c, Database = Any>,
    s: &SandboxRecord,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, \
         $27, $28, $29, $30, $31, $32, $33, $34, $35)"
    );
    s.bind_all(sqlx::query(&sql))
        .execute(x)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a sandbox named {:?} already exists", s.name))
            } else {
                e.into()
            }
        })?;
    Ok(())
}

async fn update_sandbox_row<'c>(
    x: impl Executor<'c, Database = Any>,
    s: &SandboxRecord,
    expected_state: SandboxState,
) -> Result<(), StoreError> {
    let sql =
        "UPDATE sandboxes SET name = $3, snapshot = $4, os_user = $5, env = $6, labels = $7, \
         public = $8, network_block_all = $9, network_allow_list = $10, cpu = $11, gpu = $12, \
         memory = $13, disk = $14, state = $15, desired_state = $16, error_reason = $17, \
         recoverable = $18, auto_stop_interval = $19, auto_archive_interval = $20, \
         auto_delete_interval = $21, volumes = $22, created_at = $23, updated_at = $24, \
         last_activity_at = $25, state_changed_at = $26, ttl_minutes = $27, \
         auto_destroy_at = $28, secrets = $29, outbound_proxy_url = $30, queue_timeout = $31, \
         warm_pool_id = $32, auto_pause_interval = $33, runner_id = $34, image_ref = $35 \
         WHERE id = $1 AND organization_id = $2 AND state = $36";
    let done = s
        .bind_all(sqlx::query(sql))
        .bind(expected_state.as_str())
        .execute(x)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "sandbox {} was changed by another operation (it is no longer {expected_state}); retry",
            s.id
        )));
    }
    Ok(())
}

async fn org_quota_row<'c>(
    x: impl Executor<'c, Database = Any>,
    organization_id: &str,
) -> Result<Option<OrgQuotaRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT organization_id, max_sandboxes, total_cpu, total_memory, total_disk, updated_at \
         FROM organization_quotas WHERE organization_id = $1",
    )
    .bind(organization_id)
    .fetch_optional(x)
    .await?;
    row.map(|r| -> Result<OrgQuotaRecord, StoreError> {
        Ok(OrgQuotaRecord {
            organization_id: r.try_get(0)?,
            max_sandboxes: r.try_get(1)?,
            total_cpu: r.try_get(2)?,
            total_memory: r.try_get(3)?,
            total_disk: r.try_get(4)?,
            updated_at: r.try_get(5)?,
        })
    })
    .transpose()
}

fn holding_from_row(r: &AnyRow) -> Result<SandboxHolding, StoreError> {
    Ok(SandboxHolding {
        id: r.try_get(0)?,
        state: records::state_of(r, 1)?,
        cpu: r.try_get(2)?,
        memory: r.try_get(3)?,
        disk: r.try_get(4)?,
    })
}

/// Drops sandbox `id` from the recent rows when the write it guards is
/// over, whether it succeeded, failed or was cancelled: the database may
/// hold the new row even if the caller never hears back.
struct Forget<'a>(&'a RecentSandboxes, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

pub(crate) fn get_bool(r: &AnyRow, i: usize) -> Result<bool, sqlx::Error> {
    Ok(r.try_get::<i64, _>(i)? != 0)
}

#[cfg(test)]
mod tests;

const API_KEY_COLUMNS: &str = "id, organization_id, name, key_hash, key_prefix, role, \
     created_at, expires_at, revoked_at, permissions";

fn api_key_of(r: &AnyRow) -> ApiKeyRecord {
    let permissions: Option<String> = r.get(9);
    ApiKeyRecord {
        id: r.get(0),
        organization_id: r.get(1),
        name: r.get(2),
        key_hash: r.get(3),
        key_prefix: r.get(4),
        role: r.get(5),
        created_at: r.get(6),
        expires_at: r.get(7),
        revoked_at: r.get(8),
        // Unreadable: no permissions at all (never more than was given).
        permissions: permissions.map(|p| serde_json::from_str(&p).unwrap_or_default()),
    }
}
