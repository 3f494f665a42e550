//! Warm pools (`/api/warm-pools`): started sandboxes of one snapshot and
//! size, kept ready so a matching create takes one instead of starting a
//! sandbox. A create matches when it names the pool's snapshot and asks for
//! no particular size, user, secrets or proxy; the member taken gets the
//! create's name, labels, intervals, TTL, env (through the daemon, for
//! processes started from then on) and network policy. A background filler
//! keeps each pool at its size: it starts missing members, removes extra
//! or broken ones, and records why it could not (`errorReason`).

use crate::auth::Principal;
use crate::dto::{self, CreateWarmPool, UpdateWarmPool};
use crate::error::ApiError;
use crate::service::{state, DEFAULT_CPU, DEFAULT_DISK_GIB, DEFAULT_MEMORY_GIB, DEFAULT_USER};
use crate::AppState;
use atoll_store::{SandboxRecord, StoreError, WarmPoolRecord};
use atoll_types::time::{now_millis, rfc3339_millis};
use std::time::Duration;

/// Largest pool one organization may ask for.
pub const MAX_POOL: i64 = 50;
/// How often the filler looks at every pool without being woken.
const FILL_PERIOD: Duration = Duration::from_secs(5);

/// Runs the filler forever on the current runtime.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ttl = crate::leases::ttl_for(FILL_PERIOD);
        loop {
            let wake = state.warm_pool_wake.clone();
            let woken = wake.notified();
            if !state.hold_lease(crate::leases::WARM_POOLS, ttl).await {
                // Another API server fills the pools.
                let _ = tokio::time::timeout(FILL_PERIOD, woken).await;
                continue;
            }
            if let Err(e) = state.fill_warm_pools().await {
                tracing::warn!(error = %e, "filling warm pools failed");
            }
            let _ = tokio::time::timeout(FILL_PERIOD, woken).await;
        }
    })
}

impl AppState {
    async fn warm_pool_dto(&self, p: &WarmPoolRecord) -> Result<dto::WarmPool, ApiError> {
        let members = self.store.warm_pool_members(&p.id).await?;
        Ok(dto::WarmPool {
            id: p.id.clone(),
            organization_id: p.organization_id.clone(),
            snapshot: p.snapshot.clone(),
            target: p.target.clone(),
            pool: p.pool,
            current_size: members.iter().filter(|m| m.state == state::STARTED).count() as i64,
            cpu: p.cpu,
            mem: p.memory,
            disk: p.disk,
            os_user: p.os_user.clone(),
            env: p.env.clone(),
            error_reason: p.error_reason.clone(),
            created_at: rfc3339_millis(p.created_at),
            updated_at: rfc3339_millis(p.updated_at),
        })
    }

    async fn find_warm_pool(&self, p: &Principal, id: &str) -> Result<WarmPoolRecord, ApiError> {
        self.store
            .warm_pool_in_org(&p.organization_id, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Warm pool {id} not found")))
    }

    pub async fn create_warm_pool(
        &self,
        p: &Principal,
        req: CreateWarmPool,
    ) -> Result<dto::WarmPool, ApiError> {
        if !(1..=MAX_POOL).contains(&req.pool) {
            return Err(ApiError::BadRequest(format!(
                "pool must be between 1 and {MAX_POOL}, got {}",
                req.pool
            )));
        }
        let target = req
            .target
            .unwrap_or_else(|| crate::routes::account::REGION.to_string());
        if target != crate::routes::account::REGION {
            return Err(ApiError::BadRequest(format!(
                "unknown target {target:?}: this server has one region, {:?}",
                crate::routes::account::REGION
            )));
        }
        if self
            .store
            .snapshot_in_org(&p.organization_id, &req.snapshot)
            .await?
            .is_some()
        {
            return Err(ApiError::BadRequest(format!(
                "warm pools serve built-in snapshots; {} is one of the organization's own (not supported yet)",
                req.snapshot
            )));
        }
        let image = self
            .image_catalog()
            .await?
            .into_iter()
            .find(|i| i.name == req.snapshot && !crate::snapshots::is_internal_image(&i.name))
            .ok_or_else(|| ApiError::NotFound(format!("Snapshot {} not found", req.snapshot)))?;
        let now = now_millis();
        let pool = WarmPoolRecord {
            id: uuid::Uuid::new_v4().to_string(),
            organization_id: p.organization_id.clone(),
            snapshot: image.name,
            target,
            pool: req.pool,
            cpu: DEFAULT_CPU,
            memory: DEFAULT_MEMORY_GIB,
            disk: DEFAULT_DISK_GIB,
            os_user: DEFAULT_USER.into(),
            env: Default::default(),
            error_reason: None,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_warm_pool(&pool).await?;
        self.warm_pool_wake.notify_one();
        self.warm_pool_dto(&pool).await
    }

    pub async fn list_warm_pools(&self, p: &Principal) -> Result<Vec<dto::WarmPool>, ApiError> {
        let mut out = Vec::new();
        for pool in self.store.warm_pools_in_org(&p.organization_id).await? {
            out.push(self.warm_pool_dto(&pool).await?);
        }
        Ok(out)
    }

    pub async fn update_warm_pool(
        &self,
        p: &Principal,
        id: &str,
        req: UpdateWarmPool,
    ) -> Result<dto::WarmPool, ApiError> {
        if !(0..=MAX_POOL).contains(&req.pool) {
            return Err(ApiError::BadRequest(format!(
                "pool must be between 0 and {MAX_POOL}, got {}",
                req.pool
            )));
        }
        let mut pool = self.find_warm_pool(p, id).await?;
        pool.pool = req.pool;
        pool.error_reason = None;
        pool.updated_at = now_millis();
        self.store.update_warm_pool(&pool).await?;
        self.warm_pool_wake.notify_one();
        self.warm_pool_dto(&pool).await
    }

    /// Deletes the pool and the members nobody took.
    pub async fn delete_warm_pool(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        let pool = self.find_warm_pool(p, id).await?;
        self.store.delete_warm_pool(&pool.id).await?;
        for m in self.store.warm_pool_members(&pool.id).await? {
            self.remove_member(&m.id).await;
        }
        Ok(())
    }

    /// Takes a started member of a pool that serves `want` (a create's row,
    /// not inserted) and makes it that sandbox. `None`: no member was
    /// free, or the one taken could not be made `want` (it is then removed
    /// and the caller creates cold).
    pub(crate) async fn claim_warm(
        &self,
        want: &SandboxRecord,
    ) -> Result<Option<dto::Sandbox>, ApiError> {
        let pools = self.store.warm_pools_in_org(&want.organization_id).await?;
        let Some(pool) = pools.into_iter().find(|p| {
            p.snapshot == want.snapshot
                && p.cpu == want.cpu
                && p.memory == want.memory
                && p.disk == want.disk
                && p.os_user == want.os_user
        }) else {
            return Ok(None);
        };
        for member in self.store.warm_pool_members(&pool.id).await? {
            if member.state != state::STARTED
                || !self.store.claim_warm_member(&pool.id, &member.id).await?
            {
                continue;
            }
            self.warm_pool_wake.notify_one();
            return match self.make_member(&member.id, want).await {
                Ok(dto) => Ok(Some(dto)),
                Err(ApiError::Conflict(m)) => {
                    // The name is taken: nothing was changed but the
                    // claim; the member goes back to its pool.
                    self.return_member(&pool.id, &member.id).await;
                    Err(ApiError::Conflict(m))
                }
                Err(e) => {
                    tracing::warn!(sandbox = %member.id, error = %e, "a warm sandbox could not be given out; creating one instead");
                    self.remove_member(&member.id).await;
                    Ok(None)
                }
            };
        }
        Ok(None)
    }

    /// Turns claimed member `id` into the sandbox `want` describes.
    async fn make_member(&self, id: &str, want: &SandboxRecord) -> Result<dto::Sandbox, ApiError> {
        let lock = self.locks.get(id);
        let _guard = lock.lock().await;
        let mut r = self
            .store
            .sandbox(id)
            .await?
            .ok_or_else(|| ApiError::sandbox_not_found(id))?;
        if r.state != state::STARTED {
            return Err(ApiError::Internal(format!(
                "warm sandbox {id} is {}",
                r.state
            )));
        }
        if !want.env.is_empty() {
            self.push_env_checked(id, want.env.clone(), vec![]).await?;
        }
        if want.network_block_all || want.network_allow_list.is_some() {
            let mut with_policy = r.clone();
            with_policy.network_block_all = want.network_block_all;
            with_policy.network_allow_list = want.network_allow_list.clone();
            let policy = crate::service::policy_of(&with_policy)?;
            self.rt(&r)
                .await?
                .update_network(id, &policy)
                .await
                .map_err(|e| ApiError::Internal(format!("applying the network policy: {e}")))?;
        }
        let now = now_millis();
        r.name = if want.name == want.id {
            r.id.clone()
        } else {
            want.name.clone()
        };
        r.env = want.env.clone();
        r.labels = want.labels.clone();
        r.public = want.public;
        r.network_block_all = want.network_block_all;
        r.network_allow_list = want.network_allow_list.clone();
        r.auto_stop_interval = want.auto_stop_interval;
        r.auto_pause_interval = want.auto_pause_interval;
        r.auto_archive_interval = want.auto_archive_interval;
        r.auto_delete_interval = want.auto_delete_interval;
        r.ttl_minutes = want.ttl_minutes;
        r.auto_destroy_at = (want.ttl_minutes > 0).then(|| now + self.minutes_ms(want.ttl_minutes));
        r.queue_timeout = want.queue_timeout;
        r.created_at = now;
        r.updated_at = now;
        r.last_activity_at = now;
        r.warm_pool_id = None;
        self.store
            .update_sandbox(&r, state::STARTED)
            .await
            .map_err(|e| match e {
                StoreError::Db(ref db)
                    if db.to_string().contains("UNIQUE") || db.to_string().contains("unique") =>
                {
                    ApiError::Conflict(format!("a sandbox named {:?} already exists", r.name))
                }
                other => other.into(),
            })?;
        Ok(self.to_dto(&r))
    }

    async fn return_member(&self, pool_id: &str, id: &str) {
        if let Ok(Some(mut r)) = self.store.sandbox(id).await {
            r.warm_pool_id = Some(pool_id.to_string());
            let current = r.state;
            if let Err(e) = self.store.update_sandbox(&r, current).await {
                tracing::warn!(sandbox = %id, error = %e, "returning a warm sandbox to its pool failed");
            }
        }
    }

    /// Deletes a member (or a sandbox that was one).
    async fn remove_member(&self, id: &str) {
        let lock = self.locks.get(id);
        let _guard = lock.lock().await;
        let Ok(Some(mut r)) = self.store.sandbox(id).await else {
            return;
        };
        r.desired_state = state::DESTROYED;
        if self.save(&mut r, state::DESTROYING, None).await.is_ok() {
            if let Err(e) = self.destroy(&mut r).await {
                tracing::warn!(sandbox = %id, error = %e, "removing a warm sandbox failed");
            }
        }
    }

    /// One pass of the filler over every pool.
    pub async fn fill_warm_pools(&self) -> Result<(), ApiError> {
        for mut pool in self.store.all_warm_pools().await? {
            let members = self.store.warm_pool_members(&pool.id).await?;
            let mut live = Vec::new();
            for m in members {
                match m.state {
                    state::STARTED | state::CREATING | state::STARTING => live.push(m),
                    // Stopped, failed or half-deleted members serve no one.
                    _ => self.remove_member(&m.id).await,
                }
            }
            let wanted = pool.pool.max(0) as usize;
            // Extra members (the pool shrank): newest go first.
            while live.len() > wanted {
                if let Some(m) = live.pop() {
                    self.remove_member(&m.id).await;
                }
            }
            let mut error = None;
            for _ in live.len()..wanted {
                if let Err(e) = self.launch(member_row(&pool)).await {
                    tracing::warn!(pool = %pool.id, error = %e, "starting a warm sandbox failed");
                    error = Some(e.to_string());
                    break;
                }
            }
            if error != pool.error_reason {
                pool.error_reason = error;
                pool.updated_at = now_millis();
                self.store.update_warm_pool(&pool).await?;
            }
        }
        Ok(())
    }
}

/// The row of a new member of `pool`: the pool's snapshot and size, never
/// auto-stopped, archived or deleted while it waits.
fn member_row(pool: &WarmPoolRecord) -> SandboxRecord {
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_millis();
    SandboxRecord {
        name: id.clone(),
        id,
        organization_id: pool.organization_id.clone(),
        snapshot: pool.snapshot.clone(),
        os_user: pool.os_user.clone(),
        env: pool.env.clone(),
        labels: Default::default(),
        public: false,
        network_block_all: false,
        network_allow_list: None,
        cpu: pool.cpu,
        gpu: 0,
        memory: pool.memory,
        disk: pool.disk,
        state: state::CREATING,
        desired_state: state::STARTED,
        error_reason: None,
        recoverable: false,
        auto_stop_interval: 0,
        auto_archive_interval: 0,
        auto_delete_interval: -1,
        volumes: vec![],
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        state_changed_at: now,
        ttl_minutes: 0,
        auto_destroy_at: None,
        secrets: Default::default(),
        outbound_proxy_url: None,
        queue_timeout: None,
        warm_pool_id: Some(pool.id.clone()),
        auto_pause_interval: 0,
        runner_id: None,
        image_ref: None,
    }
}
