//! Volumes (`VolumeService`, `/api/volumes…`): rows here, files on the
//! runner that made the volume. A create is `pending_create` until the
//! runner has made its filesystem, then `ready` (within the request: the
//! SDKs mount a volume right after creating it); a delete is `deleting`
//! until the runner has removed it, then the row goes. Work a crash
//! interrupted is taken up again by the keeper, so no volume stays in
//! between. A volume a sandbox mounts cannot be deleted (409).
//!
//! Sandboxes mount volumes by id or name at an absolute path, whole or a
//! subpath, read-write or (`readOnly`, Atoll's extension) read-only. A
//! volume lives on one runner: sandboxes that mount it are placed there.

use crate::auth::Principal;
use crate::dto::{self, SandboxVolume};
use crate::error::ApiError;
use crate::AppState;
use atoll_store::{RunnerRecord, VolumeMount, VolumeRecord};
use atoll_types::time::rfc3339_millis;

pub const PENDING_CREATE: &str = "pending_create";
pub const READY: &str = "ready";
pub const DELETING: &str = "deleting";
pub const ERROR: &str = "error";

/// A volume's quota when the create names none, GiB.
pub const DEFAULT_SIZE_GIB: i64 = 10;
/// The largest quota, GiB.
pub const MAX_SIZE_GIB: i64 = 1024;
/// Most volumes an organization may have.
pub const MAX_VOLUMES: usize = 100;
/// Most volumes one sandbox may mount.
pub const MAX_MOUNTS: usize = 16;

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn valid_volume_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The key of a volume's lock (in the sandbox lock table; ids differ).
fn volume_lock(id: &str) -> String {
    format!("volume:{id}")
}

fn not_found_by_id(id: &str) -> ApiError {
    ApiError::NotFound(format!("Volume with ID {id} not found"))
}

pub fn dto_of(v: &VolumeRecord) -> dto::VolumeDto {
    dto::VolumeDto {
        id: v.id.clone(),
        name: v.name.clone(),
        organization_id: v.organization_id.clone(),
        state: v.state.clone(),
        created_at: rfc3339_millis(v.created_at),
        updated_at: rfc3339_millis(v.updated_at),
        last_used_at: v.last_used_at.map(rfc3339_millis),
        error_reason: v.error_reason.clone(),
        size: v.size_gib,
        used_bytes: v.used_bytes,
    }
}

/// A volume entry as the API shows it, `dir` the directory listed.
pub fn file_dto(dir: &str, e: atoll_runtime_api::VolumeEntry) -> dto::VolumeFile {
    let dir = dir.trim_matches('/');
    dto::VolumeFile {
        path: if dir.is_empty() {
            format!("/{}", e.name)
        } else {
            format!("/{dir}/{}", e.name)
        },
        name: e.name,
        is_dir: e.is_dir,
        size: e.size,
        permissions: format!("{:04o}", e.mode),
        owner: e.uid.to_string(),
        group: e.gid.to_string(),
        modified_at: rfc3339_millis(e.modified_at_ms),
        symlink_target: e.symlink,
    }
}

impl AppState {
    /// The runtime holding the organization's `ready` volume `id`.
    pub async fn volume_runtime(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<std::sync::Arc<dyn atoll_runtime_api::Runtime>, ApiError> {
        let v = self.volume_of(p, id).await?;
        if v.state != READY {
            return Err(ApiError::BadRequest(format!(
                "Volume '{}' is not in a ready state. Current state: {}",
                v.name, v.state
            )));
        }
        match v.runner_id {
            Some(runner) => Ok(self.runtime_for(&runner).await?),
            // In shared storage: any runner reaches it.
            None => {
                let r = self.pick_runner(None).await?;
                Ok(self.runtime_of_runner(&r)?)
            }
        }
    }

    /// The organization's volume `id`.
    pub async fn volume_of(&self, p: &Principal, id: &str) -> Result<VolumeRecord, ApiError> {
        self.store
            .volume(id)
            .await?
            .filter(|v| v.organization_id == p.organization_id)
            .ok_or_else(|| not_found_by_id(id))
    }

    /// The organization's volume named `name`.
    pub async fn volume_named(&self, p: &Principal, name: &str) -> Result<VolumeRecord, ApiError> {
        self.store
            .volume_by_name(&p.organization_id, name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Volume with name {name} not found")))
    }

    /// A volume with its current usage (measured on its runner; the last
    /// measure when the runner does not answer).
    pub async fn volume_with_usage(&self, mut v: VolumeRecord) -> VolumeRecord {
        if v.state != READY {
            return v;
        }
        // Shared volumes (S3) have no usage the filesystem can tell.
        let Some(runner) = v.runner_id.clone() else {
            return v;
        };
        let usage = match self.runtime_for(&runner).await {
            Ok(rt) => rt.volume_usage(&v.id).await.ok(),
            Err(_) => None,
        };
        if let Some(u) = usage {
            v.used_bytes = Some(u.used_bytes as i64);
            let _ = self.store.touch_volume(&v.id, v.used_bytes, None).await;
        }
        v
    }

    pub async fn create_volume(
        &self,
        p: &Principal,
        req: dto::CreateVolume,
    ) -> Result<VolumeRecord, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(n) if !valid_volume_name(&n) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid volume name {n:?}: use 1-255 letters, digits, '-', '_' or '.'"
                )))
            }
            Some(n) => n,
            None => id.clone(),
        };
        let explicit = req.size.is_some();
        let mut size = req.size.unwrap_or(DEFAULT_SIZE_GIB);
        if !(1..=MAX_SIZE_GIB).contains(&size) {
            return Err(ApiError::BadRequest(format!(
                "size must be 1 to {MAX_SIZE_GIB} (GiB)"
            )));
        }
        let existing = self.store.volumes_of(&p.organization_id).await?;
        if existing.len() >= MAX_VOLUMES {
            return Err(ApiError::Forbidden(format!(
                "Volume quota exceeded. Maximum allowed: {MAX_VOLUMES}"
            )));
        }
        // Volumes count against the organization's disk quota, with its
        // sandboxes' disks.
        let quota = crate::quota::Quota::effective(
            &self.config.quota_defaults,
            self.store.org_quota(&p.organization_id).await?.as_ref(),
        );
        if let Some(total) = quota.total_disk {
            let sandboxes: Vec<_> = self
                .store
                .sandboxes_in_org(&p.organization_id)
                .await?
                .iter()
                .map(crate::quota::holding)
                .collect();
            let used = crate::quota::Usage::of(&sandboxes).disk
                + existing.iter().map(|v| v.size_gib).sum::<i64>();
            if used + size > total {
                return Err(ApiError::Forbidden(format!(
                    "Total disk quota exceeded: {used} GiB of {total} GiB in use with sandboxes and volumes; a {size} GiB volume does not fit"
                )));
            }
        }
        if self
            .store
            .volume_by_name(&p.organization_id, &name)
            .await?
            .is_some()
        {
            return Err(ApiError::BadRequest(format!(
                "Volume with name {name} already exists"
            )));
        }
        let runner = self.pick_runner(None).await?;
        // A volume's quota must fit in the runner's free space now (volumes
        // are sparse and may be overcommitted together, like sandbox disks;
        // a full volume never fills the host past its own quota).
        if let Ok(cap) = self.runtime_of_runner(&runner)?.capacity().await {
            // A volume created without a size gets the default, or what
            // the runner has free if that is less.
            if !explicit && cap.disk_gib > 0 {
                size = size.min(cap.disk_free_gib as i64).max(1);
            }
            if cap.disk_gib > 0 && size > cap.disk_free_gib as i64 {
                return Err(ApiError::InsufficientStorage(format!(
                    "the runner has {} GiB free; a {size} GiB volume does not fit",
                    cap.disk_free_gib
                )));
            }
        }
        let now = now_millis();
        let v = VolumeRecord {
            id,
            organization_id: p.organization_id.clone(),
            name,
            state: PENDING_CREATE.into(),
            size_gib: size,
            runner_id: Some(runner.id.clone()),
            error_reason: None,
            used_bytes: Some(0),
            created_at: now,
            updated_at: now,
            last_used_at: None,
        };
        self.store.insert_volume(&v).await.map_err(|e| match e {
            atoll_store::StoreError::Conflict(m) => ApiError::BadRequest(m),
            e => e.into(),
        })?;
        Ok(self.make_volume(v, &runner).await)
    }

    /// Makes a `pending_create` volume on its runner: `ready`, or `error`
    /// with the reason.
    async fn make_volume(&self, mut v: VolumeRecord, runner: &RunnerRecord) -> VolumeRecord {
        atoll_types::failpoint::hit("volume.create.after_insert");
        let made = match self.runtime_of_runner(runner) {
            Ok(rt) => rt.create_volume(&v.id, (v.size_gib as u64) << 30).await,
            Err(e) => Err(e),
        };
        let from = v.state.clone();
        v.updated_at = now_millis();
        match made {
            Ok(placement) => {
                v.state = READY.into();
                // In shared storage: no runner holds it.
                if placement.shared {
                    v.runner_id = None;
                }
            }
            Err(e) => {
                tracing::warn!(volume = %v.id, error = %e, "making a volume failed");
                v.state = ERROR.into();
                v.error_reason = Some(e.to_string());
            }
        }
        if let Err(e) = self.store.set_volume_state(&v, &from).await {
            tracing::warn!(volume = %v.id, error = %e, "recording a volume");
        }
        v
    }

    /// Locks the volumes of `mounts` (in id order) and checks they are
    /// still `ready`; the guards keep deletes of them out.
    pub(crate) async fn lock_volumes(
        &self,
        mounts: &[VolumeMount],
    ) -> Result<Vec<tokio::sync::OwnedMutexGuard<()>>, ApiError> {
        let mut ids: Vec<&str> = mounts.iter().map(|m| m.volume_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut guards = Vec::new();
        for id in ids {
            guards.push(self.locks.get(&volume_lock(id)).lock_owned().await);
            let v = self
                .store
                .volume(id)
                .await?
                .ok_or_else(|| not_found_by_id(id))?;
            if v.state != READY {
                return Err(ApiError::BadRequest(format!(
                    "Volume '{}' is not in a ready state. Current state: {}",
                    v.name, v.state
                )));
            }
        }
        Ok(guards)
    }

    pub async fn delete_volume(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        let found = self.volume_of(p, id).await?;
        let lock = self.locks.get(&volume_lock(&found.id));
        let _guard = lock.lock().await;
        let v = self.volume_of(p, id).await?;
        if v.state != READY && v.state != ERROR && v.state != DELETING {
            return Err(ApiError::BadRequest(
                "Volume must be in 'ready' or 'error' state in order to be deleted".into(),
            ));
        }
        // `deleting` first, then the check, under the volume's lock: creates
        // take it too, and mount only `ready` volumes (one API server; with
        // several, a create racing a delete may still start and fail).
        let mut deleting = v.clone();
        deleting.state = DELETING.into();
        deleting.updated_at = now_millis();
        if v.state != DELETING && !self.store.set_volume_state(&deleting, &v.state).await? {
            return Err(ApiError::Conflict(
                "the volume changed meanwhile; retry".into(),
            ));
        }
        let users = self
            .store
            .sandboxes_using_volume(&p.organization_id, &v.id)
            .await?;
        if let Some(first) = users.first() {
            // Back to what it was.
            let _ = self.store.set_volume_state(&v, DELETING).await;
            return Err(ApiError::Conflict(format!(
                "Volume cannot be deleted because it is in use by one or more sandboxes (e.g. {first})"
            )));
        }
        atoll_types::failpoint::hit("volume.delete.after_transition");
        self.finish_volume_delete(&deleting).await
    }

    /// Removes a `deleting` volume's files on its runner, then its row.
    async fn finish_volume_delete(&self, v: &VolumeRecord) -> Result<(), ApiError> {
        match &v.runner_id {
            Some(runner) => match self.runtime_for(runner).await {
                Ok(rt) => rt.delete_volume(&v.id).await?,
                // A runner removed for good took the files with it.
                Err(_) if self.store.runner(runner).await?.is_none() => {}
                Err(e) => return Err(e.into()),
            },
            // In shared storage: any runner removes it.
            None => {
                let r = self.pick_runner(None).await?;
                self.runtime_of_runner(&r)?.delete_volume(&v.id).await?;
            }
        }
        self.store.delete_volume_row(&v.id).await?;
        Ok(())
    }

    /// Takes up volume work a crash interrupted (creates and deletes).
    pub async fn resume_volume_work(&self) {
        // Work nobody has touched for a while was cut short by a crash
        // (creates and deletes take seconds).
        let stale = now_millis() - crate::snapshots::stale_ms().min(30_000);
        for state in [PENDING_CREATE, DELETING] {
            let Ok(found) = self.store.volumes_in(state).await else {
                continue;
            };
            for v in found.into_iter().filter(|v| v.updated_at < stale) {
                if state == DELETING {
                    if let Err(e) = self.finish_volume_delete(&v).await {
                        tracing::warn!(volume = %v.id, error = %e, "resuming a volume delete");
                    }
                    continue;
                }
                let runner = match &v.runner_id {
                    Some(r) => self.store.runner(r).await.ok().flatten(),
                    None => None,
                };
                match runner {
                    Some(r) => {
                        self.make_volume(v, &r).await;
                    }
                    None => {
                        let mut failed = v.clone();
                        failed.state = ERROR.into();
                        failed.error_reason = Some("its runner is gone".into());
                        let _ = self.store.set_volume_state(&failed, PENDING_CREATE).await;
                    }
                }
            }
        }
    }

    /// The mounts of a sandbox create, checked and resolved (volume names
    /// become ids), and the runner they pin the sandbox to.
    pub(crate) async fn resolve_mounts(
        &self,
        p: &Principal,
        requested: &[SandboxVolume],
    ) -> Result<(Vec<VolumeMount>, Option<String>), ApiError> {
        if requested.len() > MAX_MOUNTS {
            return Err(ApiError::BadRequest(format!(
                "a sandbox mounts at most {MAX_MOUNTS} volumes"
            )));
        }
        let mut mounts: Vec<VolumeMount> = Vec::new();
        let mut runner: Option<String> = None;
        let now = now_millis();
        for m in requested {
            atoll_runtime_api::model::check_mount_path(&m.mount_path)
                .map_err(ApiError::BadRequest)?;
            if let Some(s) = &m.subpath {
                atoll_runtime_api::model::check_subpath(s).map_err(ApiError::BadRequest)?;
            }
            let clean = |p: &str| format!("{}/", p.trim_end_matches('/'));
            if mounts.iter().any(|o| {
                let (a, b) = (clean(&o.mount_path), clean(&m.mount_path));
                a.starts_with(&b) || b.starts_with(&a)
            }) {
                return Err(ApiError::BadRequest(format!(
                    "mountPath {} is, or is inside, another volume's mountPath",
                    m.mount_path
                )));
            }
            let by_id = self
                .store
                .volume(&m.volume_id)
                .await?
                .filter(|v| v.organization_id == p.organization_id);
            let v = match by_id {
                Some(v) => v,
                None => self
                    .store
                    .volume_by_name(&p.organization_id, &m.volume_id)
                    .await?
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("Volume '{}' not found", m.volume_id))
                    })?,
            };
            if v.state != READY {
                return Err(ApiError::BadRequest(format!(
                    "Volume '{}' is not in a ready state. Current state: {}",
                    v.name, v.state
                )));
            }
            match (&runner, &v.runner_id) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ApiError::BadRequest(format!(
                        "volumes {} and another are on different runners; a sandbox mounts volumes of one runner",
                        v.name
                    )))
                }
                (None, Some(b)) => runner = Some(b.clone()),
                _ => {}
            }
            let _ = self.store.touch_volume(&v.id, None, Some(now)).await;
            mounts.push(VolumeMount {
                volume_id: v.id,
                mount_path: m.mount_path.clone(),
                subpath: m
                    .subpath
                    .clone()
                    .filter(|s| !s.trim_matches('/').is_empty()),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        Ok((mounts, runner))
    }
}
