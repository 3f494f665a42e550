//! Fork (`sandbox.fork(name)`, `POST /api/sandbox/{id}/fork`) and the
//! lineage routes (`forks`, `parent`, `ancestors`).
//!
//! A fork is a new sandbox whose files are the parent's at the moment of
//! the fork: the runner copies the parent's disk (its processes and its
//! disk's filesystem frozen for the instant, then thawed; it keeps
//! running) for the child, copy-on-write where the runner's sandbox
//! filesystem has reflinks (see `atoll_runner::sandbox_fs`), and records
//! image `atoll/forks/<child id>` (the parent's layers and config) for the
//! child to start over, with its own network slot, limits and identity.
//! The child shares the parent's blocks until either writes them, and
//! pins its layers: deleting the parent never breaks it. The child's
//! image goes when the child does.

use crate::auth::Principal;
use crate::dto::Sandbox;
use crate::error::ApiError;
use crate::lifecycle::state;
use crate::AppState;
use atoll_store::SandboxRecord;

/// Prefix of fork images in runners' stores.
pub const FORK_IMAGE_PREFIX: &str = "atoll/forks/";

/// Most children `forks` lists, and most ancestors `ancestors` walks.
const MAX_FORKS_LISTED: i64 = 100;
const MAX_ANCESTORS: usize = 50;

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AppState {
    pub async fn fork_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
        name: Option<String>,
    ) -> Result<Sandbox, ApiError> {
        let found = self.find(p, id_or_name).await?;
        let child_id = uuid::Uuid::new_v4().to_string();
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) if !crate::service::valid_name(&n) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid sandbox name {n:?}: use 1-255 letters, digits, '-', '_' or '.'"
                )))
            }
            Some(n) => n,
            None => child_id.clone(),
        };
        if self
            .store
            .sandbox_in_org(&p.organization_id, &name)
            .await?
            .is_some()
        {
            return Err(ApiError::Conflict(
                "Sandbox with this name already exists".into(),
            ));
        }
        let image = format!("{FORK_IMAGE_PREFIX}{child_id}");
        // The parent's lock is held while its disk is copied: no stop,
        // delete or second fork of it meanwhile.
        let lock = self.locks.get(&found.id);
        let parent_guard = lock.lock().await;
        let parent = self
            .store
            .sandbox(&found.id)
            .await?
            .ok_or_else(|| ApiError::sandbox_not_found(id_or_name))?;
        if parent.state != state::STARTED {
            return Err(ApiError::BadRequest(
                "Sandbox must be in started state to fork".into(),
            ));
        }
        let rt = self.rt(&parent).await?;
        let now = now_millis();
        let mut child = SandboxRecord {
            id: child_id.clone(),
            name,
            state: state::CREATING,
            desired_state: state::STARTED,
            error_reason: None,
            recoverable: false,
            public: false,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            state_changed_at: now,
            ttl_minutes: 0,
            auto_destroy_at: None,
            warm_pool_id: None,
            image_ref: Some(image.clone()),
            runner_id: parent.runner_id.clone(),
            ..parent.clone()
        };
        // The child's row first, within the organization's quota: a fork
        // the quota refuses copies nothing.
        let child_lock = self.locks.get(&child_id);
        let _child_guard = child_lock.lock().await;
        self.insert_within_quota(&child).await?;
        let started = std::time::Instant::now();
        let forked = match rt.fork(&parent.id, &child_id, &image).await {
            Ok(f) => f,
            Err(e) => {
                let _ = self.store.delete_sandbox(&child_id).await;
                self.locks.forget(&child_id);
                return Err(e.into());
            }
        };
        drop(parent_guard);
        tracing::info!(
            parent = %parent.id,
            child = %child_id,
            ms = started.elapsed().as_millis() as u64,
            copy_on_write = forked.copy_on_write,
            "copied a sandbox's disk for a fork"
        );
        self.store
            .insert_fork(&p.organization_id, &child_id, &parent.id, now)
            .await?;
        match self.start_created(&mut child).await {
            Ok(()) => Ok(self.to_dto(&child)),
            Err(e) => {
                // The fork did not come to be: its disk and image go.
                if self.store.sandbox(&child_id).await?.is_none() {
                    let _ = rt.destroy(&child_id).await;
                    let _ = rt.remove_image(&image).await;
                }
                Err(e)
            }
        }
    }

    /// Sandboxes forked from `id_or_name` (that still exist).
    pub async fn sandbox_forks(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Vec<Sandbox>, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let mut out = Vec::new();
        for child in self
            .store
            .fork_children(&p.organization_id, &r.id, MAX_FORKS_LISTED)
            .await?
        {
            if let Some(c) = self.store.sandbox(&child).await? {
                out.push(self.to_dto(&c));
            }
        }
        Ok(out)
    }

    /// The sandbox `id_or_name` was forked from.
    pub async fn sandbox_parent(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Sandbox, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let missing =
            || ApiError::NotFound(format!("Parent sandbox not found for sandbox {}", r.id));
        let parent = self
            .store
            .fork_parent(&p.organization_id, &r.id)
            .await?
            .ok_or_else(missing)?;
        let parent = self.store.sandbox(&parent).await?.ok_or_else(missing)?;
        Ok(self.to_dto(&parent))
    }

    /// The chain of sandboxes `id_or_name` descends from, root first
    /// (those deleted left out; the walk goes on through them).
    pub async fn sandbox_ancestors(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<Vec<Sandbox>, ApiError> {
        let r = self.find(p, id_or_name).await?;
        let mut chain = Vec::new();
        let mut at = r.id.clone();
        for _ in 0..MAX_ANCESTORS {
            let Some(parent) = self.store.fork_parent(&p.organization_id, &at).await? else {
                break;
            };
            if let Some(s) = self.store.sandbox(&parent).await? {
                chain.push(self.to_dto(&s));
            }
            at = parent;
        }
        chain.reverse();
        Ok(chain)
    }
}
