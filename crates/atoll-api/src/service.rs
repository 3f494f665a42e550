//! Sandbox service: the business rules behind the routes. Creates rows,
//! drives the runtime, keeps `state`/`desiredState` durable, and reconciles
//! stored rows with what the runtime really runs after a restart.

use crate::auth::Principal;
use crate::dto::{self, CreateSandbox, Sandbox};
use crate::error::ApiError;
use crate::AppState;
use atoll_runtime_api::{Limits, NetworkPolicy, Observed, RuntimeError, SandboxSpec};
use atoll_store::SandboxRecord;
use atoll_types::time::{now_millis, rfc3339_millis};
use atoll_types::SandboxState;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use crate::lifecycle::state;
use crate::lifecycle::{self, Action, Decision};

pub const DEFAULT_CPU: i64 = 1;
pub const DEFAULT_MEMORY_GIB: i64 = 1;
pub const DEFAULT_DISK_GIB: i64 = 3;
pub const DEFAULT_PIDS: u32 = 512;
pub const DEFAULT_USER: &str = "daytona";
pub const MAX_CPU: i64 = 64;
pub const MAX_MEMORY_GIB: i64 = 256;
pub const MAX_DISK_GIB: i64 = 1024;

/// One async mutex per sandbox so lifecycle operations on it never interleave.
#[derive(Default)]
pub struct SandboxLocks {
    inner: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SandboxLocks {
    pub fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    pub(crate) fn forget(&self, id: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_env_key(k: &str) -> bool {
    !k.is_empty() && !k.contains('=') && !k.contains('\0')
}

pub(crate) fn in_range(what: &str, v: i64, min: i64, max: i64) -> Result<i64, ApiError> {
    if v < min || v > max {
        return Err(ApiError::BadRequest(format!(
            "{what} must be between {min} and {max}, got {v}"
        )));
    }
    Ok(v)
}

/// `r` as it is written when it moves to `state` (with `error` as its
/// reason, for `error`).
pub(crate) fn moved(
    r: &SandboxRecord,
    state: SandboxState,
    error: Option<String>,
) -> SandboxRecord {
    let now = now_millis();
    let mut next = r.clone();
    if r.state != state {
        next.state_changed_at = now;
    }
    next.state = state;
    next.recoverable = state == state::ERROR && error.is_some();
    next.error_reason = error;
    next.updated_at = now;
    next
}

/// A hostname derived from a server-generated id (names are user input).
fn hostname_for(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

impl AppState {
    pub fn to_dto(&self, r: &SandboxRecord) -> Sandbox {
        Sandbox {
            id: r.id.clone(),
            organization_id: r.organization_id.clone(),
            name: r.name.clone(),
            snapshot: r.snapshot.clone(),
            user: r.os_user.clone(),
            env: r.env.clone(),
            labels: r.labels.clone(),
            public: r.public,
            network_block_all: r.network_block_all,
            network_allow_list: r.network_allow_list.clone(),
            kvm: false,
            target: self.region_of_runner(self.runner_of(r)),
            cpu: r.cpu,
            gpu: r.gpu,
            memory: r.memory,
            disk: r.disk,
            state: r.state.to_string(),
            desired_state: r.desired_state.to_string(),
            error_reason: r.error_reason.clone(),
            recoverable: r.recoverable,
            backup_state: "None".into(),
            auto_stop_interval: r.auto_stop_interval,
            auto_pause_interval: r.auto_pause_interval,
            auto_archive_interval: r.auto_archive_interval,
            auto_delete_interval: r.auto_delete_interval,
            volumes: r.volumes.iter().cloned().map(Into::into).collect(),
            created_at: rfc3339_millis(r.created_at),
            updated_at: rfc3339_millis(r.updated_at),
            last_activity_at: rfc3339_millis(r.last_activity_at),
            sandbox_class: "container".into(),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            runner_id: self.runner_of(r).to_string(),
            toolbox_proxy_url: self.toolbox_proxy_url(),
            auto_destroy_at: r.auto_destroy_at.map(rfc3339_millis),
            queue_timeout: r.queue_timeout,
            outbound_proxy_url: r.outbound_proxy_url.clone(),
            warm_pool_id: r.warm_pool_id.clone(),
        }
    }

    pub fn toolbox_proxy_url(&self) -> String {
        format!("{}/toolbox", self.config.public_url.trim_end_matches('/'))
    }

    pub async fn find(&self, p: &Principal, id_or_name: &str) -> Result<SandboxRecord, ApiError> {
        self.store
            .sandbox_in_org(&p.organization_id, id_or_name)
            .await?
            .ok_or_else(|| ApiError::sandbox_not_found(id_or_name))
    }

    fn spec_for(&self, r: &SandboxRecord) -> Result<SandboxSpec, ApiError> {
        Ok(SandboxSpec {
            id: r.id.clone(),
            hostname: hostname_for(&r.id),
            image: r.image_ref.clone().unwrap_or_else(|| r.snapshot.clone()),
            user: Some(r.os_user.clone()),
            env: r.env.clone(),
            disk_bytes: (r.disk as u64) << 30,
            network: policy_of(r)?,
            volumes: r
                .volumes
                .iter()
                .map(|v| atoll_runtime_api::VolumeAttachment {
                    volume_id: v.volume_id.clone(),
                    mount_path: v.mount_path.clone(),
                    subpath: v.subpath.clone(),
                    read_only: v.read_only,
                })
                .collect(),
            limits: Limits {
                cpus: r.cpu as u32,
                memory_bytes: (r.memory as u64) << 30,
                pids: DEFAULT_PIDS,
            },
        })
    }

    pub(crate) async fn save(
        &self,
        r: &mut SandboxRecord,
        state: SandboxState,
        error: Option<String>,
    ) -> Result<(), ApiError> {
        let previous = r.state;
        *r = moved(r, state, error);
        if let Err(e) = self.store.update_sandbox(r, previous).await {
            // Keep the in-memory record what the database holds.
            r.state = previous;
            return Err(e.into());
        }
        Ok(())
    }

    /// Pulls the sandbox's snapshot onto its runner if the runner lacks
    /// it (`pulling_snapshot` meanwhile, then back to its state).
    async fn ensure_image(&self, r: &mut SandboxRecord) -> Result<(), ApiError> {
        let Some(image_ref) = r.image_ref.clone() else {
            return Ok(());
        };
        let rt = self.rt(r).await?;
        if rt.image(&image_ref).await?.is_some() {
            return Ok(());
        }
        let snapshot = match crate::snapshots::snapshot_id_of(&image_ref) {
            Some(id) => self.store.snapshot(id).await?,
            None => None,
        }
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "the snapshot {} of sandbox {} no longer exists",
                r.snapshot, r.id
            ))
        })?;
        let back = r.state;
        self.save(r, state::PULLING_SNAPSHOT, None).await?;
        let pulled = self.make_on(&rt, &snapshot, &r.id).await;
        if let Err(e) = &pulled {
            tracing::warn!(sandbox = %r.id, error = %e, "pulling the sandbox's snapshot failed");
        }
        self.save(r, back, None).await?;
        pulled.map(|_| ())
    }

    /// Runs the runtime's start and records the outcome on the row.
    async fn run_start(&self, r: &mut SandboxRecord) -> Result<(), ApiError> {
        self.ensure_image(r).await?;
        let mut spec = self.spec_for(r)?;
        spec.env = self.start_env(r).await?;
        let started = match self.rt(r).await {
            Ok(rt) => rt.start(&spec).await,
            Err(e) => return Err(e),
        };
        match started {
            Ok(()) => {
                // A start is activity: the auto-stop and auto-pause clocks
                // start over (a sandbox stopped for longer than its
                // interval would otherwise be stopped again at once).
                r.last_activity_at = now_millis();
                self.save(r, state::STARTED, None).await
            }
            Err(e @ RuntimeError::NetworkFull(_)) => {
                tracing::warn!(sandbox = %r.id, error = %e, "no network address left for the sandbox");
                if r.state != state::CREATING {
                    // Nothing of it was lost: it stays stopped until an
                    // address is free. (A create is undone by the caller.)
                    r.desired_state = state::STOPPED;
                    self.save(r, state::STOPPED, None).await?;
                }
                Err(e.into())
            }
            Err(RuntimeError::NoSpace(why)) => {
                tracing::warn!(sandbox = %r.id, error = %why, "no space left to start the sandbox");
                Err(ApiError::InsufficientStorage(format!(
                    "not enough disk space on the server to start sandbox {}: {why}",
                    r.id,
                )))
            }
            Err(e @ (RuntimeError::ImageNotFound(_) | RuntimeError::Unreachable(_))) => {
                // Nothing was started: the row keeps its state for the
                // caller (a create is undone) or the transition timeout.
                Err(e.into())
            }
            Err(e) => {
                tracing::warn!(sandbox = %r.id, error = %e, "sandbox failed to start");
                self.save(r, state::ERROR, Some(e.to_string())).await
            }
        }
    }

    /// The environment a sandbox starts with: its own `env`, the proxy
    /// variables of `outboundProxyUrl`, and its mounted secrets.
    pub(crate) async fn start_env(
        &self,
        r: &SandboxRecord,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let mut env = r.env.clone();
        if let Some(proxy) = &r.outbound_proxy_url {
            for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(var.into(), proxy.clone());
            }
            for var in ["NO_PROXY", "no_proxy"] {
                env.entry(var.into())
                    .or_insert_with(|| "localhost,127.0.0.1,::1".into());
            }
        }
        env.extend(self.secret_env(r).await?);
        Ok(env)
    }

    /// Minutes as the lifecycle clock counts them, in ms.
    pub(crate) fn minutes_ms(&self, minutes: i64) -> i64 {
        minutes.saturating_mul(self.config.lifecycle.minute.as_millis() as i64)
    }

    pub async fn create_sandbox(
        &self,
        p: &Principal,
        req: CreateSandbox,
    ) -> Result<Sandbox, ApiError> {
        refuse_unsupported_create_fields(&req)?;
        if req.build_info.is_some() && req.snapshot.is_some() {
            return Err(ApiError::BadRequest(
                "buildInfo and snapshot exclude each other".into(),
            ));
        }
        // The snapshot: one built for `buildInfo`, one of the
        // organization's, or a built-in one.
        let own = match &req.build_info {
            Some(b) => Some(self.snapshot_for_build(p, b).await?),
            None => match req.snapshot.as_deref() {
                Some(n) => self.store.snapshot_in_org(&p.organization_id, n).await?,
                None => None,
            },
        };
        if let Some(s) = &own {
            let usable = if req.build_info.is_some() {
                !matches!(
                    s.state.as_str(),
                    crate::snapshots::INACTIVE | crate::snapshots::REMOVING
                )
            } else {
                s.state == crate::snapshots::ACTIVE
            };
            if !usable {
                return Err(ApiError::BadRequest(format!(
                    "Snapshot {} is {}{}",
                    s.name,
                    s.state,
                    s.error_reason
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let name = match req.name {
            Some(n) if !valid_name(&n) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid sandbox name {n:?}: use 1-255 letters, digits, '-', '_' or '.'"
                )))
            }
            Some(n) => n,
            None => id.clone(),
        };
        let user = req.user.unwrap_or_else(|| DEFAULT_USER.to_string());
        if !valid_user(&user) {
            return Err(ApiError::BadRequest(format!("invalid user {user:?}")));
        }
        let env = req.env.unwrap_or_default();
        if let Some(k) = env.keys().find(|k| !valid_env_key(k)) {
            return Err(ApiError::BadRequest(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        let snapshot = match &own {
            Some(s) => s.name.clone(),
            None => req
                .snapshot
                .clone()
                .unwrap_or_else(|| self.config.default_snapshot.clone()),
        };
        // Placement first: a runner that takes no new sandboxes (draining,
        // unschedulable, down) refuses the create, warm pool or not; the
        // snapshot must be one the chosen runner can start.
        let target = match req.target.as_deref() {
            Some(t) => Some(self.known_region(t).await?),
            None => None,
        };
        // Volumes pin the sandbox to the runner that has them.
        let (mounts, volume_runner) = self
            .resolve_mounts(p, req.volumes.as_deref().unwrap_or_default())
            .await?;
        // Held until the sandbox row exists: a volume delete (which takes
        // the same locks) cannot slip between the check and the insert.
        let _volume_guards = self.lock_volumes(&mounts).await?;
        let runner = match volume_runner {
            Some(r) => self.volume_runner(&r).await?,
            None => self.pick_runner(target.as_deref()).await?,
        };
        // An organization's snapshot is pulled onto the runner if it lacks
        // it; a built-in one must be there.
        if own.is_none() {
            // Another organization's images (and the builder's) are not
            // reachable by their store names.
            if crate::snapshots::is_internal_image(&snapshot) {
                return Err(ApiError::NotFound(format!("Snapshot {snapshot} not found")));
            }
            let known = self.runtime_of_runner(&runner)?.image(&snapshot).await?;
            if known.is_none() {
                return Err(ApiError::NotFound(format!("Snapshot {snapshot} not found")));
            }
        }
        refuse_domain_allow_list(req.domain_allow_list.as_deref())?;
        let ttl_minutes = in_range(
            "ttlMinutes",
            req.ttl_minutes.unwrap_or(0),
            0,
            i64::from(i32::MAX),
        )?;
        if req.queue_timeout.is_some_and(|q| q < 1) {
            return Err(ApiError::BadRequest(
                "queueTimeout must be a positive number of minutes".into(),
            ));
        }
        let outbound_proxy_url = req
            .outbound_proxy_url
            .as_deref()
            .map(checked_proxy_url)
            .transpose()?;
        let secrets = crate::secrets::mounts_from_wire(req.secrets.unwrap_or_default())?;
        self.check_mounts(&p.organization_id, &secrets).await?;
        let auto_pause_interval = in_range(
            "autoPauseInterval",
            req.auto_pause_interval.unwrap_or(0),
            0,
            i64::from(i32::MAX),
        )?;
        // Auto-stop and auto-pause exclude each other: asking for
        // auto-pause turns the default auto-stop off.
        let default_auto_stop = if auto_pause_interval > 0 { 0 } else { 15 };
        let now = now_millis();
        let row = SandboxRecord {
            runner_id: Some(runner.id),
            ttl_minutes,
            auto_destroy_at: (ttl_minutes > 0).then(|| now + self.minutes_ms(ttl_minutes)),
            secrets,
            outbound_proxy_url,
            queue_timeout: req.queue_timeout,
            warm_pool_id: None,
            id: id.clone(),
            organization_id: p.organization_id.clone(),
            name,
            snapshot,
            os_user: user,
            env,
            labels: req.labels.unwrap_or_default(),
            public: req.public.unwrap_or(false),
            network_block_all: req.network_block_all.unwrap_or(false),
            network_allow_list: self.normalized_allow_list(req.network_allow_list.as_deref())?,
            cpu: in_range(
                "cpu",
                req.cpu
                    .or(own.as_ref().map(|s| s.cpu))
                    .unwrap_or(DEFAULT_CPU),
                1,
                MAX_CPU,
            )?,
            gpu: in_range("gpu", req.gpu.unwrap_or(0), 0, 0)?,
            memory: in_range(
                "memory",
                req.memory
                    .or(own.as_ref().map(|s| s.mem))
                    .unwrap_or(DEFAULT_MEMORY_GIB),
                1,
                MAX_MEMORY_GIB,
            )?,
            disk: in_range(
                "disk",
                req.disk
                    .or(own.as_ref().map(|s| s.disk))
                    .unwrap_or(DEFAULT_DISK_GIB),
                1,
                MAX_DISK_GIB,
            )?,
            image_ref: own.as_ref().map(|s| s.image_ref.clone()),
            state: state::CREATING,
            desired_state: state::STARTED,
            error_reason: None,
            recoverable: false,
            auto_stop_interval: in_range(
                "autoStopInterval",
                req.auto_stop_interval.unwrap_or(default_auto_stop),
                0,
                i64::from(i32::MAX),
            )?,
            auto_archive_interval: in_range(
                "autoArchiveInterval",
                req.auto_archive_interval.unwrap_or(10080),
                0,
                i64::from(i32::MAX),
            )?,
            auto_delete_interval: in_range(
                "autoDeleteInterval",
                req.auto_delete_interval.unwrap_or(-1),
                -1,
                i64::from(i32::MAX),
            )?,
            volumes: mounts,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            state_changed_at: now,
            auto_pause_interval,
        };
        check_auto_pause(&row)?;
        if let Some(s) = own {
            self.touch_snapshot(&s).await;
            if s.state != crate::snapshots::ACTIVE {
                // Its image is still being made: the sandbox waits in
                // `pending_build` and starts when it is ready.
                return self.launch_after_build(row, s).await;
            }
            return self.launch(row).await;
        }
        let warm_eligible = row.volumes.is_empty()
            && req.cpu.is_none()
            && req.memory.is_none()
            && req.disk.is_none()
            && req.gpu.is_none_or(|g| g == 0)
            && row.secrets.is_empty()
            && row.outbound_proxy_url.is_none()
            && row.os_user == DEFAULT_USER;
        if warm_eligible {
            if let Some(dto) = self.claim_warm(&row).await? {
                return Ok(dto);
            }
        }
        self.launch(row).await
    }

    /// Inserts a new sandbox row (within quota) and starts it. A host
    /// whose disk or sandbox network is full undoes the create.
    pub(crate) async fn launch(&self, mut row: SandboxRecord) -> Result<Sandbox, ApiError> {
        if row.runner_id.is_none() {
            row.runner_id = Some(self.pick_runner(None).await?.id);
        }
        let lock = self.locks.get(&row.id);
        let _guard = lock.lock().await;
        self.insert_within_quota(&row).await?;
        atoll_types::failpoint::hit("create.after_insert");
        self.start_created(&mut row).await?;
        Ok(self.to_dto(&row))
    }

    /// Starts a sandbox row just inserted (`creating`), its lock held. A
    /// host whose disk or sandbox network is full undoes the create; an
    /// image that cannot be had leaves it in `error`.
    pub(crate) async fn start_created(&self, row: &mut SandboxRecord) -> Result<(), ApiError> {
        if let Err(e) = self.run_start(row).await {
            if matches!(
                e,
                ApiError::InsufficientStorage(_) | ApiError::Unavailable(_)
            ) {
                // The host's disk or the sandbox network is full: undo the
                // create so nothing changed (no row left in `error`).
                if let Ok(rt) = self.rt(row).await {
                    let _ = rt.destroy(&row.id).await;
                }
                let _ = self.store.delete_sandbox(&row.id).await;
                self.locks.forget(&row.id);
            } else if row.state == state::CREATING && row.image_ref.is_some() {
                // Its snapshot could not be pulled: say so on the row.
                let _ = self.save(row, state::ERROR, Some(e.to_string())).await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Finds the sandbox, takes its lock, re-reads it and applies the state
    /// machine. `Ok(Err(dto))` means there is nothing to do.
    pub(crate) async fn begin(
        &self,
        p: &Principal,
        id_or_name: &str,
        action: Action,
    ) -> Result<
        (
            SandboxRecord,
            tokio::sync::OwnedMutexGuard<()>,
            Result<SandboxState, Sandbox>,
        ),
        ApiError,
    > {
        let found = self.find(p, id_or_name).await?;
        let guard = self.locks.get(&found.id).lock_owned().await;
        let r = self.find(p, &found.id).await?;
        let plan = match lifecycle::decide(r.state, action) {
            Decision::Noop => Err(self.to_dto(&r)),
            Decision::Run { via } => Ok(via),
            Decision::Illegal => {
                return Err(ApiError::Conflict(lifecycle::illegal_message(
                    &r.id, r.state, action,
                )))
            }
        };
        Ok((r, guard, plan))
    }

    pub async fn start_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Sandbox, ApiError> {
        let (mut r, _guard, plan) = self.begin(p, id_or_name, Action::Start).await?;
        let via = match plan {
            Ok(via) => via,
            Err(dto) => return Ok(dto),
        };
        r.desired_state = state::STARTED;
        if via == state::RESUMING {
            self.resume_locked(&mut r).await?;
            return Ok(self.to_dto(&r));
        }
        // An archived sandbox lives in the archive store, not on a runner:
        // it restores where it was if that runner takes sandboxes, else
        // on whichever runner has room (the archive store is shared
        // between runners, an S3 bucket).
        let mut moved_from = None;
        if via == state::RESTORING {
            let home = self.runner_of(&r).to_string();
            let stays = match self.store.runner(&home).await? {
                Some(h) => crate::runners::schedulable(&h) && self.runtime_of_runner(&h).is_ok(),
                None => false,
            };
            if !stays {
                let to = self.pick_runner(None).await?;
                tracing::info!(sandbox = %r.id, from = %home, to = %to.id, "restoring an archived sandbox on another runner");
                r.runner_id = Some(to.id);
                moved_from = Some(home);
            }
        }
        self.save_within_quota(&mut r, via).await?;
        atoll_types::failpoint::hit(if via == state::RESTORING {
            "restore.after_transition"
        } else {
            "start.after_transition"
        });
        if via == state::RESTORING {
            let restored = self.rt(&r).await?.restore(&r.id).await;
            if let Err(e) = restored {
                // The archive is untouched: the sandbox stays archived
                // (and where it was).
                tracing::warn!(sandbox = %r.id, error = %e, "restore failed");
                if let Some(home) = moved_from {
                    r.runner_id = Some(home);
                }
                r.desired_state = state::ARCHIVED;
                self.save(&mut r, state::ARCHIVED, None).await?;
                return Err(ApiError::Internal(format!(
                    "restoring sandbox {}: {e}",
                    r.id
                )));
            }
            atoll_types::failpoint::hit("restore.after_runtime");
            self.save(&mut r, state::STARTING, None).await?;
        }
        self.run_start(&mut r).await?;
        Ok(self.to_dto(&r))
    }

    /// Thaws a paused sandbox whose lock the caller holds (a paused
    /// sandbox holds its quota: nothing to check). One that died while
    /// paused is started over its disk instead.
    async fn resume_locked(&self, r: &mut SandboxRecord) -> Result<(), ApiError> {
        // Resuming is activity: an auto-pause clock starts over.
        r.last_activity_at = now_millis();
        self.save(r, state::RESUMING, None).await?;
        atoll_types::failpoint::hit("resume.after_transition");
        let result = self.rt(r).await?.resume(&r.id).await;
        match result {
            Ok(()) => {
                atoll_types::failpoint::hit("resume.after_runtime");
                self.save(r, state::STARTED, None).await
            }
            Err(RuntimeError::NotRunning { .. }) => {
                tracing::warn!(sandbox = %r.id, "paused sandbox is no longer running; starting it over its disk");
                if let Ok(rt) = self.rt(r).await {
                    let _ = rt.stop(&r.id).await;
                }
                self.save(r, state::STARTING, None).await?;
                self.run_start(r).await
            }
            Err(e) => {
                tracing::warn!(sandbox = %r.id, error = %e, "resume failed; the sandbox stays paused");
                r.desired_state = state::PAUSED;
                self.save(r, state::PAUSED, None).await?;
                Err(ApiError::Internal(format!(
                    "resuming sandbox {}: {}",
                    r.id, e
                )))
            }
        }
    }

    /// Freezes every process of a started sandbox, memory kept; `start`
    /// resumes it.
    pub async fn pause_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Sandbox, ApiError> {
        let (mut r, _guard, plan) = self.begin(p, id_or_name, Action::Pause).await?;
        let via = match plan {
            Ok(via) => via,
            Err(dto) => return Ok(dto),
        };
        self.pause_locked(&mut r, via).await?;
        Ok(self.to_dto(&r))
    }

    /// Pauses a sandbox whose lock the caller holds. A failed freeze
    /// leaves it started (the runtime thawed it again).
    pub(crate) async fn pause_locked(
        &self,
        r: &mut SandboxRecord,
        via: SandboxState,
    ) -> Result<(), ApiError> {
        r.desired_state = state::PAUSED;
        self.save(r, via, None).await?;
        atoll_types::failpoint::hit("pause.after_transition");
        let result = self.rt(r).await?.pause(&r.id).await;
        match result {
            Ok(()) => {
                atoll_types::failpoint::hit("pause.after_runtime");
                self.save(r, state::PAUSED, None).await
            }
            Err(RuntimeError::NotRunning { .. }) => {
                if let Ok(rt) = self.rt(r).await {
                    let _ = rt.stop(&r.id).await;
                }
                r.desired_state = state::STOPPED;
                self.save(r, state::STOPPED, None).await?;
                Err(ApiError::Conflict(format!(
                    "Sandbox {} is no longer running (it is stopped now); start it first",
                    r.id
                )))
            }
            Err(e) => {
                tracing::warn!(sandbox = %r.id, error = %e, "pause failed; the sandbox stays started");
                r.desired_state = state::STARTED;
                self.save(r, state::STARTED, None).await?;
                Err(ApiError::Internal(format!(
                    "pausing sandbox {}: {}",
                    r.id, e
                )))
            }
        }
    }

    /// Packs a stopped sandbox's disk into the archive store. A failure
    /// leaves it stopped with its disk intact.
    pub async fn archive_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Sandbox, ApiError> {
        let (mut r, _guard, plan) = self.begin(p, id_or_name, Action::Archive).await?;
        let via = match plan {
            Ok(via) => via,
            Err(dto) => return Ok(dto),
        };
        self.archive_locked(&mut r, via).await?;
        Ok(self.to_dto(&r))
    }

    pub(crate) async fn archive_locked(
        &self,
        r: &mut SandboxRecord,
        via: SandboxState,
    ) -> Result<(), ApiError> {
        r.desired_state = state::ARCHIVED;
        self.save(r, via, None).await?;
        atoll_types::failpoint::hit("archive.after_transition");
        let result = self.rt(r).await?.archive(&r.id).await;
        match result {
            Ok(()) => {
                atoll_types::failpoint::hit("archive.after_runtime");
                self.save(r, state::ARCHIVED, None).await
            }
            Err(e) => {
                tracing::warn!(sandbox = %r.id, error = %e, "archive failed; the sandbox stays stopped");
                r.desired_state = state::STOPPED;
                self.save(r, state::STOPPED, None).await?;
                Err(ApiError::Internal(format!(
                    "archiving sandbox {}: {e}",
                    r.id
                )))
            }
        }
    }

    /// Brings a sandbox in `error` back: whatever is left of it is stopped,
    /// then it is started over its kept filesystem.
    pub async fn recover_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Sandbox, ApiError> {
        let (mut r, _guard, plan) = self.begin(p, id_or_name, Action::Recover).await?;
        let via = match plan {
            Ok(via) => via,
            Err(dto) => return Ok(dto),
        };
        r.desired_state = state::STARTED;
        self.save_within_quota(&mut r, via).await?;
        if let Ok(rt) = self.rt(&r).await {
            let _ = rt.stop(&r.id).await;
        }
        self.run_start(&mut r).await?;
        Ok(self.to_dto(&r))
    }

    pub async fn stop_sandbox(&self, p: &Principal, id_or_name: &str) -> Result<Sandbox, ApiError> {
        let (mut r, _guard, plan) = self.begin(p, id_or_name, Action::Stop).await?;
        let via = match plan {
            Ok(via) => via,
            Err(dto) => return Ok(dto),
        };
        self.stop_locked(&mut r, via).await?;
        Ok(self.to_dto(&r))
    }

    /// Stops a sandbox whose lock the caller holds. Ephemeral sandboxes
    /// (`autoDeleteInterval` 0) are deleted right after.
    pub(crate) async fn stop_locked(
        &self,
        r: &mut SandboxRecord,
        via: SandboxState,
    ) -> Result<(), ApiError> {
        r.desired_state = state::STOPPED;
        self.save(r, via, None).await?;
        atoll_types::failpoint::hit("stop.after_transition");
        let result = self.rt(r).await?.stop(&r.id).await;
        match result {
            Ok(()) => {
                atoll_types::failpoint::hit("stop.after_runtime");
                self.save(r, state::STOPPED, None).await?
            }
            Err(e) => {
                self.save(r, state::ERROR, Some(format!("stopping failed: {e}")))
                    .await?;
                return Ok(());
            }
        }
        if r.auto_delete_interval == 0 {
            r.desired_state = state::DESTROYED;
            self.save(r, state::DESTROYING, None).await?;
            self.destroy(r).await?;
            self.locks.forget(&r.id);
        }
        Ok(())
    }

    pub async fn delete_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Sandbox, ApiError> {
        let (mut r, _guard, plan) = self.begin(p, id_or_name, Action::Delete).await?;
        let via = plan.unwrap_or(state::DESTROYING);
        r.desired_state = state::DESTROYED;
        self.save(&mut r, via, None).await?;
        atoll_types::failpoint::hit("delete.after_transition");
        match self.destroy(&mut r).await {
            Ok(()) => {}
            // The runner does not answer: the delete is recorded
            // (`destroying`) and finishes when it does.
            Err(ApiError::Unavailable(_)) if r.state == state::DESTROYING => {
                return Ok(self.to_dto(&r));
            }
            Err(e) => return Err(e),
        }
        self.locks.forget(&r.id);
        Ok(self.to_dto(&r))
    }

    /// Changes cpu and memory (live on a started sandbox) and disk (only
    /// while stopped, only growing).
    pub async fn resize_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
        req: dto::ResizeSandbox,
    ) -> Result<Sandbox, ApiError> {
        let (mut r, _guard, plan) = self.begin(p, id_or_name, Action::Resize).await?;
        let via = match plan {
            Ok(via) => via,
            Err(dto) => return Ok(dto),
        };
        let cpu = in_range("cpu", req.cpu.unwrap_or(r.cpu), 1, MAX_CPU)?;
        let memory = in_range("memory", req.memory.unwrap_or(r.memory), 1, MAX_MEMORY_GIB)?;
        let disk = in_range("disk", req.disk.unwrap_or(r.disk), 1, MAX_DISK_GIB)?;
        if disk != r.disk {
            if r.state != state::STOPPED {
                return Err(ApiError::BadRequest(format!(
                    "disk can only be resized while the sandbox is stopped (it is {})",
                    r.state
                )));
            }
            if disk < r.disk {
                return Err(ApiError::BadRequest(format!(
                    "disk can only grow: {disk} GiB is less than the current {} GiB",
                    r.disk
                )));
            }
        }
        let settled = r.state;
        let old = (r.cpu, r.memory, r.disk);
        // Checked as the sandbox will be; while resizing, the row holds the
        // larger of old and new, so a racing create or start never counts
        // on what this resize may yet take or fail to give back.
        let before = crate::quota::holding(&r);
        let wants = atoll_store::SandboxHolding {
            cpu,
            memory,
            disk,
            ..before.clone()
        };
        r.cpu = r.cpu.max(cpu);
        r.memory = r.memory.max(memory);
        r.disk = r.disk.max(disk);
        self.save_within_quota_as(&mut r, via, before, wants)
            .await?;
        if settled == state::STARTED && (cpu != old.0 || memory != old.1) {
            let mut spec = self.spec_for(&r)?;
            spec.limits.cpus = cpu as u32;
            spec.limits.memory_bytes = (memory as u64) << 30;
            let result = self.rt(&r).await?.update_limits(&r.id, &spec.limits).await;
            if let Err(e) = result {
                // The old limits still apply: back to where it was.
                (r.cpu, r.memory, r.disk) = old;
                self.save(&mut r, settled, None).await?;
                return Err(ApiError::Conflict(format!(
                    "resizing sandbox {}: {e}",
                    r.id
                )));
            }
        }
        r.cpu = cpu;
        r.memory = memory;
        r.disk = disk;
        self.save(&mut r, settled, None).await?;
        Ok(self.to_dto(&r))
    }

    /// Records toolbox/preview activity for auto-stop, at most once a second
    /// per sandbox (the clock is a stored column, not an in-memory timer).
    pub async fn record_activity(&self, id: &str) {
        let now = now_millis();
        {
            let mut last = self.activity.lock().unwrap_or_else(|p| p.into_inner());
            let prev = last.get(id).copied().unwrap_or(0);
            if now - prev < 1000 {
                return;
            }
            last.insert(id.to_string(), now);
        }
        if let Err(e) = self.store.touch_activity(id, now).await {
            tracing::warn!(sandbox = %id, error = %e, "recording activity failed");
        }
    }

    pub async fn touch_sandbox(&self, p: &Principal, id_or_name: &str) -> Result<(), ApiError> {
        let r = self.find(p, id_or_name).await?;
        self.store.touch_activity(&r.id, now_millis()).await?;
        Ok(())
    }

    pub(crate) async fn destroy(&self, r: &mut SandboxRecord) -> Result<(), ApiError> {
        let result = match self.rt(r).await {
            Ok(rt) => rt.destroy(&r.id).await,
            Err(e) => return Err(e),
        };
        match result {
            Ok(()) => {
                atoll_types::failpoint::hit("delete.after_runtime");
                self.store.delete_sandbox(&r.id).await?;
                r.state = state::DESTROYED;
                // A fork's image is its alone.
                if let Some(image) = r
                    .image_ref
                    .as_deref()
                    .filter(|i| i.starts_with(crate::forks::FORK_IMAGE_PREFIX))
                {
                    if let Ok(rt) = self.rt(r).await {
                        let _ = rt.remove_image(image).await;
                    }
                }
                Ok(())
            }
            Err(e @ RuntimeError::Unreachable(_)) => {
                // Nothing is known: the row stays `destroying` (desired
                // `destroyed`) and the scheduler finishes the delete when
                // the runner answers again.
                tracing::warn!(sandbox = %r.id, error = %e, "delete waits for the runner");
                Err(e.into())
            }
            Err(e) => {
                self.save(r, state::ERROR, Some(format!("deleting failed: {e}")))
                    .await?;
                Err(ApiError::Internal(format!(
                    "deleting sandbox {}: {e}",
                    r.id
                )))
            }
        }
    }

    pub async fn replace_labels(
        &self,
        p: &Principal,
        id_or_name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let lock = self.locks.get(&r.id);
        let _guard = lock.lock().await;
        let mut r = self.find(p, &r.id).await?;
        r.labels = labels;
        r.updated_at = now_millis();
        let current = r.state;
        self.store.update_sandbox(&r, current).await?;
        Ok(r.labels)
    }

    /// Daytona's network-settings: block all egress, restore it, or allow
    /// only some networks; a started sandbox gets the change at once.
    pub async fn update_network_settings(
        &self,
        p: &Principal,
        id_or_name: &str,
        req: dto::UpdateNetworkSettings,
    ) -> Result<Sandbox, ApiError> {
        if req.network_block_all.is_none()
            && req.network_allow_list.is_none()
            && req.domain_allow_list.is_none()
        {
            return Err(ApiError::BadRequest(
                "set at least one of networkBlockAll, networkAllowList or domainAllowList".into(),
            ));
        }
        refuse_domain_allow_list(req.domain_allow_list.as_deref())?;
        let allow = match req.network_allow_list.as_deref() {
            Some(list) => Some(self.normalized_allow_list(Some(list))?),
            None => None,
        };
        let r = self.find(p, id_or_name).await?;
        let lock = self.locks.get(&r.id);
        let _guard = lock.lock().await;
        let mut r = self.find(p, &r.id).await?;
        match (req.network_block_all, allow) {
            // An allow list implies not blocking everything.
            (block, Some(list)) => {
                r.network_block_all = block.unwrap_or(false);
                r.network_allow_list = list;
            }
            (Some(true), None) => r.network_block_all = true,
            // Restoring access clears a stored allow list.
            (Some(false), None) => {
                r.network_block_all = false;
                r.network_allow_list = None;
            }
            (None, None) => {}
        }
        let policy = policy_of(&r)?;
        self.rt(&r)
            .await?
            .update_network(&r.id, &policy)
            .await
            .map_err(|e| ApiError::Internal(format!("applying the network policy: {e}")))?;
        r.updated_at = now_millis();
        let current = r.state;
        self.store.update_sandbox(&r, current).await?;
        Ok(self.to_dto(&r))
    }

    /// Makes a sandbox's previews public (no token needed) or private.
    pub async fn set_public(
        &self,
        p: &Principal,
        id_or_name: &str,
        public: bool,
    ) -> Result<Sandbox, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let lock = self.locks.get(&r.id);
        let _guard = lock.lock().await;
        let mut r = self.find(p, &r.id).await?;
        r.public = public;
        r.updated_at = now_millis();
        let current = r.state;
        self.store.update_sandbox(&r, current).await?;
        Ok(self.to_dto(&r))
    }

    /// Sets one of the lifecycle intervals (minutes).
    pub async fn set_interval(
        &self,
        p: &Principal,
        id_or_name: &str,
        which: Interval,
        minutes: i64,
    ) -> Result<Sandbox, ApiError> {
        let min = if which == Interval::AutoDelete { -1 } else { 0 };
        let minutes = in_range(which.name(), minutes, min, i64::from(i32::MAX))?;
        let r = self.find(p, id_or_name).await?;
        let lock = self.locks.get(&r.id);
        let _guard = lock.lock().await;
        let mut r = self.find(p, &r.id).await?;
        match which {
            Interval::AutoStop => r.auto_stop_interval = minutes,
            Interval::AutoPause => r.auto_pause_interval = minutes,
            Interval::AutoArchive => r.auto_archive_interval = minutes,
            Interval::AutoDelete => r.auto_delete_interval = minutes,
        }
        check_auto_pause(&r)?;
        r.updated_at = now_millis();
        let current = r.state;
        self.store.update_sandbox(&r, current).await?;
        Ok(self.to_dto(&r))
    }

    /// Sets the time to live: the sandbox is deleted `minutes` from now,
    /// whatever its state; 0 removes the TTL.
    pub async fn set_ttl(
        &self,
        p: &Principal,
        id_or_name: &str,
        minutes: i64,
    ) -> Result<Sandbox, ApiError> {
        let minutes = in_range("ttlMinutes", minutes, 0, i64::from(i32::MAX))?;
        let r = self.find(p, id_or_name).await?;
        let lock = self.locks.get(&r.id);
        let _guard = lock.lock().await;
        let mut r = self.find(p, &r.id).await?;
        let now = now_millis();
        r.ttl_minutes = minutes;
        r.auto_destroy_at = (minutes > 0).then(|| now + self.minutes_ms(minutes));
        r.updated_at = now;
        let current = r.state;
        self.store.update_sandbox(&r, current).await?;
        Ok(self.to_dto(&r))
    }

    /// After a restart: make stored rows agree with what really runs.
    pub async fn reconcile_on_boot(&self) -> Result<(), ApiError> {
        if !self.embedded_runner {
            return Ok(()); // nothing runs on this server's host
        }
        let observed = self
            .runtime
            .recover()
            .await
            .map_err(|e| ApiError::Internal(format!("recovering sandboxes: {e}")))?;
        // Running sandboxes, and whether each is paused.
        let mut running = HashMap::new();
        let mut failed = HashMap::new();
        for o in observed {
            match o {
                Observed::Running { id, paused, .. } => {
                    running.insert(id, paused);
                }
                Observed::Failed { id, reason } => {
                    failed.insert(id, reason);
                }
                Observed::Stopped { .. } => {}
            }
        }
        let rows = self.store.all_sandboxes().await?;
        // Rows on other runners are theirs to reconcile (each runner
        // recovers on its own restart; the scheduler observes them).
        for mut r in rows
            .into_iter()
            .filter(|r| self.runner_of(r) == self.local_runner_id.as_str())
        {
            let paused = running.remove(&r.id);
            let is_running = paused.is_some();
            match (r.state, is_running) {
                // Marked unknown while this server (its embedded runner)
                // was down: the runtime says what it is.
                (state::UNKNOWN, _) => {
                    let (now, desired) = match paused {
                        Some(true) => (state::PAUSED, state::PAUSED),
                        Some(false) => (state::STARTED, state::STARTED),
                        None => (state::STOPPED, state::STOPPED),
                    };
                    r.desired_state = desired;
                    self.save(&mut r, now, None).await?;
                }
                (state::STARTED, true) if paused == Some(true) => {
                    // The row is the intent; pause never leaves a row
                    // started with the runtime paused, but be sure.
                    let _ = self.runtime.resume(&r.id).await;
                }
                (state::PAUSED, true) if paused == Some(false) => {
                    let frozen = self.runtime.pause(&r.id).await;
                    if frozen.is_err() {
                        tracing::warn!(sandbox = %r.id, "could not pause the sandbox again; it is started");
                        r.desired_state = state::STARTED;
                        self.save(&mut r, state::STARTED, None).await?;
                    }
                }
                (state::STARTED | state::PAUSED, true) => {}
                // Interrupted mid-way: the runtime's journal says which
                // side of the freeze it is on.
                (state::PAUSING | state::RESUMING, true) => {
                    let settled = if paused == Some(true) {
                        state::PAUSED
                    } else {
                        state::STARTED
                    };
                    r.desired_state = settled;
                    self.save(&mut r, settled, None).await?;
                }
                (state::CREATING | state::STARTING, true) => {
                    self.save(&mut r, state::STARTED, None).await?
                }
                // A capture freezes the sandbox without journaling it:
                // thaw it (idempotent) and it is started.
                (state::SNAPSHOTTING, true) => {
                    let _ = self.runtime.resume(&r.id).await;
                    r.desired_state = state::STARTED;
                    self.save(&mut r, state::STARTED, None).await?;
                }
                (state::SNAPSHOTTING, false) => {
                    r.desired_state = state::STOPPED;
                    self.save(&mut r, state::STOPPED, None).await?;
                }
                // Waiting for its snapshot (which the snapshot keeper takes
                // up again): wait again.
                (state::PENDING_BUILD, _) => {
                    match r
                        .image_ref
                        .as_deref()
                        .and_then(crate::snapshots::snapshot_id_of)
                    {
                        Some(snapshot) => self.wait_for_build(r.id.clone(), snapshot.to_string()),
                        None => {
                            let reason = "the sandbox names no snapshot to wait for";
                            self.save(&mut r, state::BUILD_FAILED, Some(reason.into()))
                                .await?;
                        }
                    }
                }
                // A start that was pulling its image when the server
                // stopped: nothing of it ran.
                (state::BUILDING_SNAPSHOT | state::PULLING_SNAPSHOT, _) => {
                    let reason = "the server stopped while this sandbox's image was being prepared; start it again";
                    r.desired_state = state::STOPPED;
                    self.save(&mut r, state::ERROR, Some(reason.into())).await?;
                }
                (state::DESTROYING, _) => {
                    let _ = self.destroy(&mut r).await;
                }
                (state::STOPPING, _) | (state::STOPPED, true) => {
                    let _ = self.runtime.stop(&r.id).await;
                    self.save(&mut r, state::STOPPED, None).await?;
                }
                (state::CREATING | state::STARTING, false) => {
                    let reason = failed.remove(&r.id).unwrap_or_else(|| {
                        "the server stopped while this sandbox was starting".into()
                    });
                    self.save(&mut r, state::ERROR, Some(reason)).await?;
                }
                (state::ARCHIVING | state::RESTORING, _) => {
                    // Whichever side is durable wins. Archive removes the
                    // disk only after the archive is durable, restore the
                    // archive only after the disk is: with both present
                    // the operation was complete but for that removal, and
                    // the disk is the truth.
                    let disk = match self.runtime.disk_state(&r.id).await {
                        Ok(d) => d,
                        Err(e) => {
                            // Nothing known: settled by a later boot, or
                            // by the transition timeout.
                            tracing::warn!(sandbox = %r.id, error = %e, "cannot tell where the sandbox's disk is");
                            continue;
                        }
                    };
                    let (settled, reason) = match (disk.present, disk.archived) {
                        (true, stale) => {
                            if stale {
                                let _ = self.runtime.discard_archive(&r.id).await;
                            }
                            (state::STOPPED, None)
                        }
                        (false, true) => (state::ARCHIVED, None),
                        (false, false) => (
                            state::ERROR,
                            Some("the sandbox's disk and its archive are both missing".to_string()),
                        ),
                    };
                    r.desired_state = if settled == state::ARCHIVED {
                        state::ARCHIVED
                    } else {
                        state::STOPPED
                    };
                    self.save(&mut r, settled, reason).await?;
                }
                (state::STARTED | state::PAUSED | state::PAUSING | state::RESUMING, false) => {
                    // Recovery ran before the rows were read: another API
                    // process sharing this runner may have started it since.
                    if r.state == state::STARTED
                        && matches!(
                            self.observe_now(&r.id).await,
                            Some(Observed::Running { .. })
                        )
                    {
                        continue;
                    }
                    tracing::info!(sandbox = %r.id, "sandbox is no longer running; marking it stopped");
                    r.desired_state = state::STOPPED;
                    self.save(&mut r, state::STOPPED, None).await?;
                }
                _ => {}
            }
        }
        // Whatever still runs has no row: a leftover of a deleted sandbox.
        for id in running.into_keys() {
            tracing::warn!(sandbox = %id, "destroying a running sandbox that has no record");
            let _ = self.runtime.destroy(&id).await;
        }
        Ok(())
    }

    pub fn snapshot_dto(&self, image: &atoll_runtime_api::ImageInfo) -> dto::SnapshotDto {
        let created = rfc3339_millis(image.created_at_ms);
        dto::SnapshotDto {
            id: image.digest.clone(),
            organization_id: None,
            general: true,
            name: image.name.clone(),
            image_name: Some(image.source.clone().unwrap_or_else(|| image.name.clone())),
            state: "active".into(),
            size: Some((image.size_bytes as f64) / f64::from(1u32 << 30)),
            entrypoint: Some(image.entrypoint.clone()).filter(|e| !e.is_empty()),
            cpu: DEFAULT_CPU,
            gpu: 0,
            mem: DEFAULT_MEMORY_GIB,
            disk: DEFAULT_DISK_GIB,
            error_reason: None,
            created_at: created.clone(),
            updated_at: created,
            last_used_at: None,
            source_sandbox_id: None,
            build_info: None,
            region_ids: None,
            reference: image.digest.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    AutoStop,
    AutoPause,
    AutoArchive,
    AutoDelete,
}

impl Interval {
    fn name(self) -> &'static str {
        match self {
            Interval::AutoStop => "autoStopInterval",
            Interval::AutoPause => "autoPauseInterval",
            Interval::AutoArchive => "autoArchiveInterval",
            Interval::AutoDelete => "autoDeleteInterval",
        }
    }
}

impl AppState {
    /// Validates Daytona's comma-separated CIDR allow list and stores it in
    /// a canonical form (blank means none). An entry no sandbox could reach
    /// through it (inside link-local or loopback, or a private range while
    /// the operator keeps those closed) is refused: an allow list narrows
    /// what the operator allows, it never widens it.
    fn normalized_allow_list(&self, list: Option<&str>) -> Result<Option<String>, ApiError> {
        let Some(list) = list else { return Ok(None) };
        let bad = |e: atoll_runtime_api::PolicyError| {
            ApiError::BadRequest(format!("networkAllowList: {e}"))
        };
        let parsed = NetworkPolicy::parse_allow_list(list).map_err(bad)?;
        if let Some(v) = &parsed {
            NetworkPolicy::check_reachable(v, self.config.egress_allow_private).map_err(bad)?;
        }
        Ok(parsed.map(|v| {
            v.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }))
    }
}

/// Daytona's rules for auto-pause: it excludes auto-stop (at most one of
/// them is non-zero) and ephemeral sandboxes (auto-delete 0) cannot have it.
fn check_auto_pause(r: &SandboxRecord) -> Result<(), ApiError> {
    if r.auto_pause_interval == 0 {
        return Ok(());
    }
    if r.auto_stop_interval != 0 {
        return Err(ApiError::BadRequest(format!(
            "autoStopInterval ({}) and autoPauseInterval ({}) are mutually exclusive: set one of them to 0",
            r.auto_stop_interval, r.auto_pause_interval
        )));
    }
    if r.auto_delete_interval == 0 {
        return Err(ApiError::BadRequest(
            "ephemeral sandboxes (autoDeleteInterval 0) cannot have auto-pause; set autoPauseInterval to 0"
                .into(),
        ));
    }
    Ok(())
}

/// Domain allow lists need DNS-aware enforcement, which this server does
/// not have: refuse rather than pretend.
/// `CreateSandbox` fields this server cannot honour: refused with a 400
/// that says why, never ignored.
fn refuse_unsupported_create_fields(req: &CreateSandbox) -> Result<(), ApiError> {
    let refuse = |msg: &str| Err(ApiError::BadRequest(msg.to_string()));
    if req.kvm == Some(true) {
        return refuse(
            "kvm is not available: sandboxes on this server are containers, not virtual machines",
        );
    }
    if req
        .gpu_type
        .as_ref()
        .is_some_and(|g| !g.is_null() && g.as_array().is_none_or(|a| !a.is_empty()))
    {
        return refuse("gpuType: this server has no GPUs");
    }
    if req.spot == Some(true) {
        return refuse("spot applies only to GPU sandboxes; this server has no GPUs");
    }
    if req.otel_endpoint_override.is_some() {
        return refuse("otelEndpointOverride: this server does not export sandbox telemetry over OpenTelemetry");
    }
    if req.linked_sandbox.is_some() {
        return refuse(
            "linkedSandbox is not supported by this server yet: sandboxes cannot reach each other",
        );
    }
    Ok(())
}

/// An `outboundProxyUrl`: `http(s)://[user:pass@]host[:port][/]`.
fn checked_proxy_url(url: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid outboundProxyUrl {:?}: use http://host:port or https://host:port",
            url.split('@').next_back().unwrap_or_default()
        ))
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if host_port.is_empty()
        || authority.contains('/')
        || url.len() > 2048
        || url.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(bad());
    }
    Ok(url.to_string())
}

fn refuse_domain_allow_list(list: Option<&str>) -> Result<(), ApiError> {
    match list {
        Some(l) if !l.trim().is_empty() => Err(ApiError::BadRequest(
            "domainAllowList is not supported by this server; use networkAllowList (CIDRs)".into(),
        )),
        _ => Ok(()),
    }
}

/// The runtime's view of a sandbox's stored network settings.
pub(crate) fn policy_of(r: &SandboxRecord) -> Result<NetworkPolicy, ApiError> {
    let allow_list = match r.network_allow_list.as_deref() {
        Some(l) => NetworkPolicy::parse_allow_list(l)
            .map_err(|e| ApiError::Internal(format!("stored allow list: {e}")))?,
        None => None,
    };
    Ok(NetworkPolicy {
        block_all: r.network_block_all,
        allow_list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_users_and_env_keys_are_validated() {
        assert!(valid_name("my-box_1.2"));
        for bad in ["", "a/b", "..\u{0}", "with space", &"x".repeat(256)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(
            valid_user("daytona")
                && valid_user("root")
                && !valid_user("Root")
                && !valid_user("../x")
        );
        assert!(valid_env_key("A_B") && !valid_env_key("A=B") && !valid_env_key(""));
        assert_eq!(hostname_for("3f0c1a52-8f7e-4c1e"), "3f0c1a528f7e");
        assert!(in_range("cpu", 0, 1, 4).is_err() && in_range("cpu", 2, 1, 4).is_ok());
    }
}
