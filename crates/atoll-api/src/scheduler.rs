//! The lifecycle scheduler: a periodic pass over every sandbox that
//! enforces auto-stop (idle for `autoStopInterval` minutes), auto-delete
//! (`autoDeleteInterval` minutes after stop), transitional-state timeouts,
//! and reconciles rows with what the runtime really runs (a sandbox killed
//! from outside becomes `stopped`; a runtime leftover without a row is
//! destroyed). Deadlines come from stored timestamps, so a restart loses
//! nothing; sandboxes whose lock is held are left to their operation.
//! Each pass also deletes expired signed preview tokens.

use crate::lifecycle::{self, state};
use crate::AppState;
use atoll_runner::runtime::Observed;
use atoll_types::time::now_millis;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Timing of the scheduler. `minute` is 60 s in production; tests shrink it
/// (`ATOLL_LIFECYCLE_MINUTE_SECS`) to exercise intervals in seconds.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleTiming {
    pub minute: Duration,
    pub tick: Duration,
}

impl Default for LifecycleTiming {
    fn default() -> Self {
        LifecycleTiming {
            minute: Duration::from_secs(60),
            tick: Duration::from_secs(10),
        }
    }
}

/// Runs `tick` forever on the current runtime.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(state.config.lifecycle.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(e) = state.lifecycle_tick().await {
                tracing::warn!(error = %e, "lifecycle pass failed");
            }
            state.sweep_signed_previews().await;
        }
    })
}

impl AppState {
    /// Does the sandbox's daemon report a running session command or a live
    /// PTY? Those count as activity for auto-stop even without requests.
    /// An unreachable daemon is not busy.
    pub async fn busy_inside(&self, id: &str) -> bool {
        let socket = self.runtime.socket(id);
        let ask = |path: &'static str| {
            let socket = socket.clone();
            async move {
                let got = tokio::time::timeout(
                    Duration::from_secs(2),
                    atoll_proxy::get(&socket, path, 4 << 20),
                )
                .await;
                match got {
                    Ok(Ok((status, body))) if status.is_success() => {
                        serde_json::from_slice::<serde_json::Value>(&body).ok()
                    }
                    _ => None,
                }
            }
        };
        let sessions = ask("/process/session").await;
        let running_command = sessions
            .as_ref()
            .and_then(|v| v.as_array())
            .is_some_and(|list| {
                list.iter().any(|s| {
                    s["commands"].as_array().is_some_and(|cmds| {
                        cmds.iter()
                            .any(|c| c.get("exitCode").is_none_or(|e| e.is_null()))
                    })
                })
            });
        if running_command {
            return true;
        }
        let ptys = ask("/process/pty").await;
        ptys.as_ref()
            .and_then(|v| v["sessions"].as_array())
            .is_some_and(|list| list.iter().any(|p| p["active"].as_bool() == Some(true)))
    }

    /// One pass of the scheduler over every sandbox.
    pub async fn lifecycle_tick(&self) -> Result<(), crate::error::ApiError> {
        let runtime = self.runtime.clone();
        let observed = tokio::task::spawn_blocking(move || runtime.observe())
            .await
            .map_err(|e| crate::error::ApiError::Internal(format!("observe task: {e}")))?;
        let mut seen: HashMap<String, bool> = HashMap::new();
        for o in &observed {
            match o {
                Observed::Running { id, .. } => seen.insert(id.clone(), true),
                Observed::Stopped { id } => seen.insert(id.clone(), false),
                Observed::Failed { .. } => None,
            };
        }
        let minute_ms = self.config.lifecycle.minute.as_millis() as i64;
        let rows = self.store.all_sandboxes().await?;
        let known: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        for row in rows {
            let Ok(_guard) = self.locks.get(&row.id).try_lock_owned() else {
                continue; // an operation is running on it
            };
            let Some(mut r) = self.store.sandbox(&row.id).await? else {
                continue;
            };
            let now = now_millis();
            if let Some(limit) = lifecycle::transition_timeout(&r.state) {
                if now - r.state_changed_at > limit.as_millis() as i64 {
                    let reason = format!(
                        "the sandbox was {} for more than {} s; the operation did not finish",
                        r.state,
                        limit.as_secs()
                    );
                    tracing::warn!(sandbox = %r.id, %reason, "transition timed out");
                    self.save(&mut r, state::ERROR, Some(reason)).await?;
                }
                continue;
            }
            match r.state.as_str() {
                state::STARTED if seen.get(&r.id) == Some(&false) || !seen.contains_key(&r.id) => {
                    tracing::warn!(sandbox = %r.id, "sandbox is no longer running; marking it stopped");
                    let runtime = self.runtime.clone();
                    let id = r.id.clone();
                    let _ = tokio::task::spawn_blocking(move || runtime.stop(&id)).await;
                    r.desired_state = state::STOPPED.into();
                    self.save(&mut r, state::STOPPED, None).await?;
                }
                state::STARTED
                    if r.auto_stop_interval > 0
                        && now - r.last_activity_at >= r.auto_stop_interval * minute_ms =>
                {
                    if self.busy_inside(&r.id).await {
                        // A session command or a PTY still runs: activity.
                        self.store.touch_activity(&r.id, now).await?;
                        continue;
                    }
                    tracing::info!(sandbox = %r.id, minutes = r.auto_stop_interval, "auto-stopping idle sandbox");
                    self.stop_locked(&mut r, state::STOPPING).await?;
                }
                state::STOPPED
                    if r.auto_archive_interval > 0
                        && (r.auto_delete_interval < 0
                            || r.auto_delete_interval > r.auto_archive_interval)
                        && now - r.state_changed_at >= r.auto_archive_interval * minute_ms =>
                {
                    tracing::info!(sandbox = %r.id, minutes = r.auto_archive_interval, "auto-archiving stopped sandbox");
                    if let Err(e) = self.archive_locked(&mut r, state::ARCHIVING).await {
                        tracing::warn!(sandbox = %r.id, error = %e, "auto-archive failed");
                    }
                }
                state::STOPPED | state::ARCHIVED
                    if r.auto_delete_interval >= 0
                        && now - r.state_changed_at >= r.auto_delete_interval * minute_ms =>
                {
                    tracing::info!(sandbox = %r.id, minutes = r.auto_delete_interval, "auto-deleting stopped sandbox");
                    r.desired_state = state::DESTROYED.into();
                    self.save(&mut r, state::DESTROYING, None).await?;
                    self.destroy(&mut r).await?;
                }
                _ => {}
            }
        }
        for (id, running) in seen {
            if running && !known.contains(&id) {
                let Ok(_guard) = self.locks.get(&id).try_lock_owned() else {
                    continue;
                };
                // Re-check under the lock: a create inserts its row first.
                if self.store.sandbox(&id).await?.is_some() {
                    continue;
                }
                tracing::warn!(sandbox = %id, "destroying a running sandbox that has no record");
                let runtime = self.runtime.clone();
                let _ = tokio::task::spawn_blocking(move || runtime.destroy(&id)).await;
            }
        }
        Ok(())
    }
}
