//! The lifecycle scheduler: a periodic pass over every sandbox that
//! enforces auto-stop (idle for `autoStopInterval` minutes), auto-pause
//! (idle for `autoPauseInterval` minutes, by the same clock), auto-delete
//! (`autoDeleteInterval` minutes after stop), transitional-state timeouts,
//! and reconciles rows with what the runtime really runs (a sandbox killed
//! from outside becomes `stopped`; a runtime leftover without a row is
//! destroyed). Deadlines come from stored timestamps, so a restart loses
//! nothing; sandboxes whose lock is held are left to their operation.
//!
//! The pass's bulk observation is taken before the rows are read, so a
//! sandbox created in between is `started` in its row and absent from the
//! observation. Absence is therefore never taken for death: a `started`
//! (or `paused`: frozen is alive) sandbox is marked stopped only when the
//! runtime, asked about that one
//! sandbox under its lock (so after its create or start finished), sees it
//! dead.
//!
//! A sandbox whose TTL ran out (`autoDestroyAt`) is deleted whatever its
//! state. Unclaimed warm-pool members are never auto-stopped.
//!
//! Each pass also deletes expired signed preview tokens.

use crate::lifecycle::{self, state};
use crate::AppState;
use atoll_runtime_api::Observed;
use atoll_types::time::now_millis;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
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

/// How long one runtime's bulk observation may take in a pass.
const OBSERVE_LIMIT: Duration = Duration::from_secs(10);

/// What a pass saw: each sandbox by the runner that reported it, the
/// runtime holding it, and the runners that did not answer.
#[derive(Default)]
struct Pass {
    seen: HashMap<String, (String, bool)>,
    holder: HashMap<String, Arc<dyn atoll_runtime_api::Runtime>>,
    silent: HashSet<String>,
}

/// How long a delete stays `destroying` before the scheduler tries it again.
const DELETE_RETRY_AFTER_MS: i64 = 5_000;

/// Runs `tick` forever on the current runtime.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(state.config.lifecycle.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ttl = crate::leases::ttl_for(state.config.lifecycle.tick);
        loop {
            interval.tick().await;
            if !state.hold_lease(crate::leases::SCHEDULER, ttl).await {
                continue; // another API server runs the scheduler
            }
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
        let ask = |path: &'static str| async move {
            let got =
                tokio::time::timeout(Duration::from_secs(2), self.toolbox_get(id, path, 4 << 20))
                    .await;
            match got {
                Ok(Ok((status, body))) if status.is_success() => {
                    serde_json::from_slice::<serde_json::Value>(&body).ok()
                }
                _ => None,
            }
        };
        let sessions = ask("/process/session").await;
        let running_command = sessions
            .as_ref()
            .and_then(|v| v.as_array())
            .is_some_and(|list| {
                // The image's entrypoint runs for the sandbox's whole life:
                // it is not activity.
                list.iter()
                    .filter(|s| s["sessionId"] != "entrypoint")
                    .any(|s| {
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

    /// Has the runtime, looking now, seen this sandbox dead? Only a sandbox
    /// it knows and finds not running is; one it does not know (or is
    /// still starting) is not known to be dead. The caller holds the
    /// sandbox's lock, so no create or start of it is under way.
    async fn observed_dead(&self, id: &str) -> bool {
        matches!(self.observe_now(id).await, Some(Observed::Stopped { .. }))
    }

    /// The runtime's view of one sandbox, taken now; `None` when it knows
    /// no such sandbox or did not answer (neither says it is dead).
    pub(crate) async fn observe_now(&self, id: &str) -> Option<Observed> {
        let seen = match self.rt_by_id(id).await {
            Ok(rt) => match tokio::time::timeout(OBSERVE_LIMIT, rt.observe_one(id)).await {
                Ok(seen) => seen,
                Err(_) => Err(atoll_runtime_api::RuntimeError::Unreachable(
                    "no answer in time".into(),
                )),
            },
            Err(e) => Err(e),
        };
        match seen {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "observing the sandbox failed");
                None
            }
        }
    }

    /// One pass of the scheduler over every sandbox.
    pub async fn lifecycle_tick(&self) -> Result<(), crate::error::ApiError> {
        // Every runtime's bulk observation, all at once and each within a
        // time limit. One that does not answer says nothing about its
        // sandboxes: they are not judged dead, nor asked about one by one.
        let mut pass = Pass::default();
        let mut asked = tokio::task::JoinSet::new();
        for (runner, rt) in self.all_runtimes().await? {
            asked.spawn(async move {
                let seen = tokio::time::timeout(OBSERVE_LIMIT, rt.observe()).await;
                (runner, rt, seen)
            });
        }
        while let Some(done) = asked.join_next().await {
            let Ok((runner, rt, observed)) = done else {
                continue;
            };
            let observed = match observed {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::warn!(%runner, error = %e, "observing a runner failed; its sandboxes are left as they are");
                    pass.silent.insert(runner);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%runner, "a runner did not answer in time; its sandboxes are left as they are");
                    pass.silent.insert(runner);
                    continue;
                }
            };
            for o in &observed {
                let running = match o {
                    Observed::Running { .. } => true,
                    Observed::Stopped { .. } => false,
                    Observed::Failed { .. } => continue,
                };
                pass.seen
                    .insert(o.id().to_string(), (runner.clone(), running));
                pass.holder.insert(o.id().to_string(), rt.clone());
            }
        }
        let Pass {
            seen,
            holder,
            silent,
        } = pass;
        let minute_ms = self.config.lifecycle.minute.as_millis() as i64;
        let rows = self.store.all_sandboxes().await?;
        let known: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        for row in rows {
            if let Err(e) = self.tick_one(&row.id, &seen, &silent, minute_ms).await {
                // One sandbox's failure (a write another server won, a
                // runtime error) does not end the pass for the others.
                tracing::warn!(sandbox = %row.id, error = %e, "lifecycle pass: sandbox skipped");
            }
        }
        for (id, (_, running)) in seen {
            if running && !known.contains(&id) {
                let Ok(_guard) = self.locks.get(&id).try_lock_owned() else {
                    continue;
                };
                // Re-check under the lock: a create inserts its row first.
                if self.store.sandbox(&id).await?.is_some() {
                    continue;
                }
                tracing::warn!(sandbox = %id, "destroying a running sandbox that has no record");
                if let Some(rt) = holder.get(&id) {
                    let _ = rt.destroy(&id).await;
                }
            }
        }
        Ok(())
    }

    /// The scheduler's pass over one sandbox (see the module doc).
    async fn tick_one(
        &self,
        id: &str,
        seen: &HashMap<String, (String, bool)>,
        silent: &HashSet<String>,
        minute_ms: i64,
    ) -> Result<(), crate::error::ApiError> {
        let Ok(_guard) = self.locks.get(id).try_lock_owned() else {
            return Ok(()); // an operation is running on it
        };
        let Some(mut r) = self.store.sandbox(id).await? else {
            return Ok(());
        };
        // Seen running in the bulk observation: alive (a death since
        // shows up next pass). Otherwise ask about this one, now.
        // Only the sandbox's own runner is believed about it.
        let runner = self.runner_of(&r).to_string();
        let seen_running = seen
            .get(&r.id)
            .is_some_and(|(by, running)| *by == runner && *running);
        let dead = (r.state == state::STARTED || r.state == state::PAUSED)
            && !seen_running
            && !silent.contains(&runner)
            && self.observed_dead(&r.id).await;
        let now = now_millis();
        if r.auto_destroy_at.is_some_and(|t| t <= now)
            && lifecycle::transition_timeout(r.state).is_none()
        {
            tracing::info!(sandbox = %r.id, minutes = r.ttl_minutes, "time to live is over; deleting the sandbox");
            r.desired_state = state::DESTROYED;
            self.save(&mut r, state::DESTROYING, None).await?;
            if let Err(e) = self.destroy(&mut r).await {
                tracing::warn!(sandbox = %r.id, error = %e, "deleting an expired sandbox failed");
            }
            return Ok(());
        }
        if r.state == state::UNKNOWN {
            // Its runner went silent. Once that runner reports again, the
            // sandbox takes the state it reports (also when the reconcile
            // that ran at its return missed it).
            let runner = self.store.runner(self.runner_of(&r)).await?;
            match runner {
                Some(run) if run.state == crate::runners::state::READY => {
                    self.settle_unknown_locked(&mut r).await?;
                }
                Some(_) => {}
                None => {
                    // Its runner was deleted: nothing will ever answer.
                    let reason = "its runner was deleted".to_string();
                    self.save(&mut r, state::ERROR, Some(reason)).await?;
                }
            }
            return Ok(());
        }
        if r.state == state::DESTROYING
            && r.desired_state == state::DESTROYED
            && r.runner_id.is_some()
            && r.runner_id.as_deref() != Some(self.local_runner_id.as_str())
            && self.store.runner(self.runner_of(&r)).await?.is_none()
        {
            // A delete waiting for a runner that was deleted meanwhile:
            // there is nothing left to delete on it.
            self.store.delete_sandbox(&r.id).await?;
            return Ok(());
        }
        if r.state == state::DESTROYING
            && r.desired_state == state::DESTROYED
            && now - r.state_changed_at > DELETE_RETRY_AFTER_MS
        {
            // A delete that could not reach the sandbox's runner: retried
            // every pass until the runner answers (then it finishes), or
            // an admin force-deletes the runner. Never timed out to error.
            match self.destroy(&mut r).await {
                Ok(()) => {
                    tracing::info!(sandbox = %r.id, "a delete that waited for its runner finished")
                }
                Err(e) => {
                    tracing::debug!(sandbox = %r.id, error = %e, "delete still waits for the runner")
                }
            }
            return Ok(());
        }
        if let Some(limit) = lifecycle::transition_timeout(r.state) {
            if now - r.state_changed_at > limit.as_millis() as i64 {
                let reason = format!(
                    "the sandbox was {} for more than {} s; the operation did not finish",
                    r.state,
                    limit.as_secs()
                );
                tracing::warn!(sandbox = %r.id, %reason, "transition timed out");
                self.save(&mut r, state::ERROR, Some(reason)).await?;
            }
            return Ok(());
        }
        match r.state {
            state::STARTED | state::PAUSED if dead => {
                tracing::warn!(sandbox = %r.id, "sandbox is no longer running; marking it stopped");
                if let Ok(rt) = self.rt(&r).await {
                    let _ = rt.stop(&r.id).await;
                }
                r.desired_state = state::STOPPED;
                self.save(&mut r, state::STOPPED, None).await?;
            }
            state::STARTED
                if r.auto_stop_interval > 0
                    && r.warm_pool_id.is_none()
                    && now - r.last_activity_at >= r.auto_stop_interval * minute_ms =>
            {
                if self.busy_inside(&r.id).await {
                    // A session command or a PTY still runs: activity.
                    self.store.touch_activity(&r.id, now).await?;
                    return Ok(());
                }
                tracing::info!(sandbox = %r.id, minutes = r.auto_stop_interval, "auto-stopping idle sandbox");
                self.stop_locked(&mut r, state::STOPPING).await?;
            }
            state::STARTED
                if r.auto_pause_interval > 0
                    && now - r.last_activity_at >= r.auto_pause_interval * minute_ms =>
            {
                if self.busy_inside(&r.id).await {
                    self.store.touch_activity(&r.id, now).await?;
                    return Ok(());
                }
                tracing::info!(sandbox = %r.id, minutes = r.auto_pause_interval, "auto-pausing idle sandbox");
                if let Err(e) = self.pause_locked(&mut r, state::PAUSING).await {
                    tracing::warn!(sandbox = %r.id, error = %e, "auto-pause failed");
                }
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
                r.desired_state = state::DESTROYED;
                self.save(&mut r, state::DESTROYING, None).await?;
                self.destroy(&mut r).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The reconciling part of a pass, against a scripted runtime: the bulk
    //! observation and the per-sandbox one are set by the test, so the race
    //! found under load (a sandbox started between the observation and the
    //! read of the rows) is reproduced exactly.
    use super::*;
    use crate::ApiConfig;
    use atoll_runtime_api::fake::{FakeRuntime, FakeSandbox};
    use atoll_store::{OrgRecord, SandboxRecord, Store};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn running(id: &str) -> Observed {
        Observed::Running {
            id: id.into(),
            pid: 1,
            paused: false,
        }
    }

    /// A sandbox the fake runs (`paused`: frozen).
    fn live(paused: bool) -> FakeSandbox {
        FakeSandbox {
            running: true,
            paused,
            disk: true,
            ..FakeSandbox::default()
        }
    }

    fn started(id: &str, org: &str) -> SandboxRecord {
        let now = now_millis();
        SandboxRecord {
            id: id.into(),
            organization_id: org.into(),
            name: id.into(),
            snapshot: "snap".into(),
            os_user: "daytona".into(),
            env: Default::default(),
            labels: Default::default(),
            public: false,
            network_block_all: false,
            network_allow_list: None,
            cpu: 1,
            gpu: 0,
            memory: 1,
            disk: 3,
            state: state::STARTED,
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
            warm_pool_id: None,
            auto_pause_interval: 0,
            runner_id: None,
            image_ref: None,
        }
    }

    async fn app_with(runtime: Arc<FakeRuntime>, ids: &[&str]) -> (AppState, PathBuf) {
        let dir = std::env::temp_dir().join(format!("atoll-sched-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.join("atoll.db").display()))
            .await
            .unwrap();
        let org = OrgRecord {
            id: "org".into(),
            name: "default".into(),
            created_at: now_millis(),
        };
        store.insert_org(&org).await.unwrap();
        for id in ids {
            store.insert_sandbox(&started(id, &org.id)).await.unwrap();
        }
        let config = ApiConfig {
            public_url: "http://127.0.0.1:1".into(),
            preview_domain: None,
            default_snapshot: "snap".into(),
            lifecycle: LifecycleTiming::default(),
            egress_allow_private: false,
            quota_defaults: crate::quota::Quota::default(),
            rate_limit: None,
            metrics: crate::metrics::MetricsConfig::default(),
        };
        let state = AppState::new(store, runtime, config, "k".into());
        (state, dir)
    }

    async fn state_of(app: &AppState, id: &str) -> atoll_types::SandboxState {
        app.store.sandbox(id).await.unwrap().unwrap().state
    }

    #[tokio::test]
    async fn a_sandbox_missing_from_the_observation_is_not_marked_stopped() {
        let runtime = Arc::new(FakeRuntime::with_images(&["snap"]));
        runtime.put("fresh", live(false));
        runtime.put(
            "killed",
            FakeSandbox {
                disk: true,
                ..FakeSandbox::default()
            },
        );
        // The bulk observation was taken before `fresh` started and
        // before `killed` died; `unknown` the runtime has no record of.
        runtime.script_observe(Some(vec![running("killed")]));
        let (app, dir) = app_with(runtime.clone(), &["fresh", "killed", "unknown"]).await;
        app.lifecycle_tick().await.unwrap();
        assert_eq!(state_of(&app, "fresh").await, state::STARTED);
        assert_eq!(state_of(&app, "unknown").await, state::STARTED);
        // Seen running in the bulk observation: its death shows next pass.
        assert_eq!(state_of(&app, "killed").await, state::STARTED);
        assert!(runtime.calls_of("stop").is_empty());

        // Observed dead in bulk and then on its own: stopped.
        runtime.script_observe(None);
        app.lifecycle_tick().await.unwrap();
        assert_eq!(state_of(&app, "killed").await, state::STOPPED);
        assert_eq!(state_of(&app, "fresh").await, state::STARTED);
        assert_eq!(runtime.calls_of("stop"), ["killed"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_runtime_that_does_not_answer_changes_no_row() {
        let runtime = Arc::new(FakeRuntime::with_images(&["snap"]));
        runtime.put("a", live(false));
        let (app, dir) = app_with(runtime.clone(), &["a", "b"]).await;
        runtime.set_unreachable(true);
        app.lifecycle_tick().await.unwrap();
        assert_eq!(state_of(&app, "a").await, state::STARTED);
        assert_eq!(state_of(&app, "b").await, state::STARTED);
        // Answering again, it reports `b` unknown (never dead) and `a` alive.
        runtime.set_unreachable(false);
        app.lifecycle_tick().await.unwrap();
        assert_eq!(state_of(&app, "a").await, state::STARTED);
        assert_eq!(state_of(&app, "b").await, state::STARTED);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_leftover_the_store_does_not_know_is_destroyed() {
        let runtime = Arc::new(FakeRuntime::with_images(&["snap"]));
        runtime.put("kept", live(false));
        runtime.adopt_running("orphan");
        let (app, dir) = app_with(runtime.clone(), &["kept"]).await;
        app.lifecycle_tick().await.unwrap();
        assert_eq!(runtime.calls_of("destroy"), ["orphan"]);
        assert!(runtime.sandbox("orphan").is_none());
        assert!(runtime.sandbox("kept").is_some_and(|s| s.running));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn boot_keeps_a_sandbox_started_after_recovery() {
        // Recovery saw nothing running; by the time the rows are read,
        // `fresh` runs (started by another API process on this runner).
        let runtime = Arc::new(FakeRuntime::with_images(&["snap"]));
        runtime.script_observe_one("fresh", Some(running("fresh")));
        let (app, dir) = app_with(runtime, &["fresh", "gone"]).await;
        app.reconcile_on_boot().await.unwrap();
        assert_eq!(state_of(&app, "fresh").await, state::STARTED);
        assert_eq!(state_of(&app, "gone").await, state::STOPPED);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn paused_sandboxes_are_alive_and_interrupted_pauses_settle_by_the_runtime() {
        let runtime = Arc::new(FakeRuntime::with_images(&["snap"]));
        runtime.put("frozen", live(true));
        runtime.put("half", live(true));
        runtime.put(
            "killed",
            FakeSandbox {
                disk: true,
                ..FakeSandbox::default()
            },
        );
        let (app, dir) = app_with(runtime.clone(), &["frozen", "half", "killed"]).await;
        for (id, st) in [
            ("frozen", state::PAUSED),
            ("half", state::PAUSING),
            ("killed", state::PAUSED),
        ] {
            let mut r = app.store.sandbox(id).await.unwrap().unwrap();
            r.state = st;
            app.store.update_sandbox(&r, state::STARTED).await.unwrap();
        }
        app.reconcile_on_boot().await.unwrap();
        assert_eq!(state_of(&app, "frozen").await, state::PAUSED);
        // the server stopped mid-pause after the runtime froze it
        assert_eq!(state_of(&app, "half").await, state::PAUSED);
        // died while paused
        assert_eq!(state_of(&app, "killed").await, state::STOPPED);
        // a pass never takes frozen for dead
        app.lifecycle_tick().await.unwrap();
        assert_eq!(state_of(&app, "frozen").await, state::PAUSED);
        assert_eq!(state_of(&app, "half").await, state::PAUSED);
        let _ = std::fs::remove_dir_all(dir);
    }
}
