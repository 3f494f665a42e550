//! Runners: the compute hosts sandboxes run on, with their key (hashed),
//! scheduling flags, reported capacity and last health check.

use crate::{is_unique_violation, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct RunnerRecord {
    pub id: String,
    /// Unique across the deployment.
    pub name: String,
    pub region: String,
    /// What sandboxes it runs (`linux`: namespace sandboxes).
    pub runner_class: String,
    pub tags: Vec<String>,
    /// SHA-256 of the runner's key, hex.
    pub api_key_hash: String,
    /// `initializing`, `ready`, `unresponsive`, `disabled`, `decommissioned`.
    pub state: String,
    /// No new sandboxes are placed on it.
    pub unschedulable: bool,
    /// Being emptied: no new sandboxes; existing ones keep running.
    pub draining: bool,
    /// The embedded runner of an `atoll serve`.
    pub local: bool,
    pub api_url: Option<String>,
    pub proxy_url: Option<String>,
    pub domain: Option<String>,
    pub app_version: Option<String>,
    /// Capacity, as last reported: cores, GiB, GiB.
    pub cpu: i64,
    pub memory_gib: i64,
    pub disk_gib: i64,
    /// The last health check's metrics (JSON, as the runner sent them).
    pub metrics: Option<String>,
    /// When the last health check arrived (ms).
    pub last_checked: Option<i64>,
    /// The address an admin pinned at registration (reports must match).
    pub pinned_api_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What the control plane has placed on a runner: sandboxes that hold
/// resources there (not destroyed, not archived), summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerAllocation {
    pub cpu: i64,
    pub memory_gib: i64,
    pub disk_gib: i64,
    /// Started (or paused) sandboxes.
    pub started: i64,
    /// Sandboxes of any state but destroyed.
    pub sandboxes: i64,
}

/// A runner's admin flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerFlag {
    /// No new sandboxes.
    Unschedulable,
    /// No new sandboxes; being emptied.
    Draining,
}

/// One health check, as [`Store::record_runner_health`] writes it
/// (`None`: keep what is stored).
#[derive(Debug, Clone, Default)]
pub struct RunnerHealth<'a> {
    pub id: &'a str,
    pub cpu: Option<i64>,
    pub memory_gib: Option<i64>,
    pub disk_gib: Option<i64>,
    pub metrics: Option<&'a str>,
    pub api_url: Option<&'a str>,
    pub proxy_url: Option<&'a str>,
    pub domain: Option<&'a str>,
    pub app_version: Option<&'a str>,
    pub now: i64,
}

const RUNNER_COLUMNS: &str = "id, name, region, runner_class, tags, api_key_hash, state, \
     unschedulable, draining, local, api_url, proxy_url, domain, app_version, cpu, memory_gib, \
     disk_gib, metrics, last_checked, created_at, updated_at, pinned_api_url";

fn runner_from_row(r: &AnyRow) -> Result<RunnerRecord, StoreError> {
    let tags: String = r.try_get(4)?;
    Ok(RunnerRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        region: r.try_get(2)?,
        runner_class: r.try_get(3)?,
        tags: serde_json::from_str(&tags)
            .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?,
        api_key_hash: r.try_get(5)?,
        state: r.try_get(6)?,
        unschedulable: r.try_get::<i64, _>(7)? != 0,
        draining: r.try_get::<i64, _>(8)? != 0,
        local: r.try_get::<i64, _>(9)? != 0,
        api_url: r.try_get(10)?,
        proxy_url: r.try_get(11)?,
        domain: r.try_get(12)?,
        app_version: r.try_get(13)?,
        cpu: r.try_get(14)?,
        memory_gib: r.try_get(15)?,
        disk_gib: r.try_get(16)?,
        metrics: r.try_get(17)?,
        last_checked: r.try_get(18)?,
        created_at: r.try_get(19)?,
        updated_at: r.try_get(20)?,
        pinned_api_url: r.try_get(21)?,
    })
}

impl Store {
    /// Adds a runner; a taken name or key is a conflict.
    pub async fn insert_runner(&self, r: &RunnerRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO runners ({RUNNER_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
              $19, $20, $21, $22)"
        ))
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.region)
        .bind(&r.runner_class)
        .bind(serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".into()))
        .bind(&r.api_key_hash)
        .bind(&r.state)
        .bind(i64::from(r.unschedulable))
        .bind(i64::from(r.draining))
        .bind(i64::from(r.local))
        .bind(&r.api_url)
        .bind(&r.proxy_url)
        .bind(&r.domain)
        .bind(&r.app_version)
        .bind(r.cpu)
        .bind(r.memory_gib)
        .bind(r.disk_gib)
        .bind(&r.metrics)
        .bind(r.last_checked)
        .bind(r.created_at)
        .bind(r.updated_at)
        .bind(&r.pinned_api_url)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a runner named {:?} already exists", r.name))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// Every runner, by name.
    pub async fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUNNER_COLUMNS} FROM runners ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(runner_from_row).collect()
    }

    /// The runner whose `column` (a unique one) is `value`.
    async fn runner_where(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<RunnerRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {RUNNER_COLUMNS} FROM runners WHERE {column} = $1"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(runner_from_row).transpose()
    }

    pub async fn runner(&self, id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        self.runner_where("id", id).await
    }

    pub async fn runner_by_name(&self, name: &str) -> Result<Option<RunnerRecord>, StoreError> {
        self.runner_where("name", name).await
    }

    /// The runner whose key hashes to `hash`.
    pub async fn runner_by_key_hash(&self, hash: &str) -> Result<Option<RunnerRecord>, StoreError> {
        self.runner_where("api_key_hash", hash).await
    }

    /// Sets an admin flag of a runner (`unschedulable` or `draining`) in
    /// one statement, touching nothing else; the runner as it is now.
    pub async fn set_runner_flag(
        &self,
        id: &str,
        flag: RunnerFlag,
        on: bool,
        now: i64,
    ) -> Result<Option<RunnerRecord>, StoreError> {
        let column = match flag {
            RunnerFlag::Unschedulable => "unschedulable",
            RunnerFlag::Draining => "draining",
        };
        sqlx::query(&format!(
            "UPDATE runners SET {column} = $2, updated_at = $3 WHERE id = $1"
        ))
        .bind(id)
        .bind(i64::from(on))
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.runner(id).await
    }

    /// Writes every column of the runner but its id, key and creation time.
    pub async fn update_runner(&self, r: &RunnerRecord) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE runners SET name = $2, region = $3, runner_class = $4, tags = $5, state = $6, \
             unschedulable = $7, draining = $8, api_url = $9, proxy_url = $10, domain = $11, \
             app_version = $12, cpu = $13, memory_gib = $14, disk_gib = $15, metrics = $16, \
             last_checked = $17, updated_at = $18 WHERE id = $1",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.region)
        .bind(&r.runner_class)
        .bind(serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".into()))
        .bind(&r.state)
        .bind(i64::from(r.unschedulable))
        .bind(i64::from(r.draining))
        .bind(&r.api_url)
        .bind(&r.proxy_url)
        .bind(&r.domain)
        .bind(&r.app_version)
        .bind(r.cpu)
        .bind(r.memory_gib)
        .bind(r.disk_gib)
        .bind(&r.metrics)
        .bind(r.last_checked)
        .bind(r.updated_at)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "runner {} no longer exists",
                r.id
            )));
        }
        Ok(())
    }

    /// Records a health check: capacity and metrics (when given), the
    /// addresses and version it reported, `last_checked`; an
    /// `initializing` or `unresponsive` runner becomes `ready`. Touches no
    /// admin flag (draining, unschedulable, disabled), so a check racing an
    /// admin's change never undoes it. True when the runner was
    /// `unresponsive` (it has just come back).
    pub async fn record_runner_health(&self, r: &RunnerHealth<'_>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runners SET cpu = COALESCE($2, cpu), memory_gib = COALESCE($3, memory_gib), \
             disk_gib = COALESCE($4, disk_gib), metrics = COALESCE($5, metrics), \
             api_url = COALESCE($6, api_url), proxy_url = COALESCE($7, proxy_url), \
             domain = COALESCE($8, domain), app_version = $9, last_checked = $10, updated_at = $10 \
             WHERE id = $1",
        )
        .bind(r.id)
        .bind(r.cpu)
        .bind(r.memory_gib)
        .bind(r.disk_gib)
        .bind(r.metrics)
        .bind(r.api_url)
        .bind(r.proxy_url)
        .bind(r.domain)
        .bind(r.app_version)
        .bind(r.now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "runner {} no longer exists",
                r.id
            )));
        }
        let back = sqlx::query(
            "UPDATE runners SET state = 'ready' WHERE id = $1 AND state = 'unresponsive' RETURNING id",
        )
        .bind(r.id)
        .fetch_optional(&self.pool)
        .await?
        .is_some();
        sqlx::query("UPDATE runners SET state = 'ready' WHERE id = $1 AND state = 'initializing'")
            .bind(r.id)
            .execute(&self.pool)
            .await?;
        Ok(back)
    }

    /// Marks runners whose last health check is older than `before` (ms)
    /// unresponsive, but `except` (the asking server's own embedded
    /// runner: it is alive while it asks); returns their ids. Disabled and
    /// decommissioned ones are left as they are.
    pub async fn mark_unresponsive_runners(
        &self,
        before: i64,
        now: i64,
        except: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "UPDATE runners SET state = 'unresponsive', updated_at = $2 \
             WHERE state IN ('ready', 'initializing') AND id <> $3 \
             AND COALESCE(last_checked, created_at) < $1 RETURNING id",
        )
        .bind(before)
        .bind(now)
        .bind(except)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Deletes a runner; a runner that still holds sandboxes is a conflict
    /// unless `force`.
    pub async fn delete_runner(&self, id: &str, force: bool) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let held: i64 = sqlx::query(
            "SELECT COUNT(*) FROM sandboxes WHERE runner_id = $1 AND state <> 'destroyed'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if held > 0 && !force {
            return Err(StoreError::Conflict(format!(
                "runner {id} still holds {held} sandbox(es): delete or move them first, or pass force=true"
            )));
        }
        let done = sqlx::query("DELETE FROM runners WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// What each runner holds, by runner id (sandboxes without a runner
    /// count under `default_runner`).
    pub async fn runner_allocations(
        &self,
        default_runner: &str,
    ) -> Result<std::collections::HashMap<String, RunnerAllocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT COALESCE(runner_id, $1), state, cpu, memory, disk FROM sandboxes \
             WHERE state <> 'destroyed'",
        )
        .bind(default_runner)
        .fetch_all(&self.pool)
        .await?;
        let mut out: std::collections::HashMap<String, RunnerAllocation> = Default::default();
        for r in &rows {
            let runner: String = r.try_get(0)?;
            let state: String = r.try_get(1)?;
            let a = out.entry(runner).or_default();
            a.sandboxes += 1;
            if state == "archived" {
                continue; // its disk is in the archive store, not on the runner
            }
            let (cpu, mem, disk): (i64, i64, i64) = (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
            a.disk_gib += disk;
            if matches!(
                state.as_str(),
                "started" | "paused" | "starting" | "creating" | "pausing"
            ) {
                a.cpu += cpu;
                a.memory_gib += mem;
                a.started += 1;
            }
        }
        Ok(out)
    }
}
