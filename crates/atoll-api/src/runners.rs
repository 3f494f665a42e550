//! Runners: the registry of compute hosts sandboxes run on, as Daytona's
//! `/api/runners` routes show it. Every `atoll serve` registers its
//! embedded runner at boot and checks its health on an interval (the
//! capacity its runtime reports); remote runners are registered by an
//! admin and authenticate with their own key (stored hashed), reporting
//! health through `POST /api/runners/healthcheck`. A runner whose health
//! checks stop is marked `unresponsive`. Placement picks, among runners
//! that take new sandboxes (ready, neither unschedulable nor draining, in
//! the asked region, served by this server), the one with the most room.

use crate::dto;
use crate::error::ApiError;
use crate::AppState;
use atoll_store::{RunnerAllocation, RunnerRecord};
use atoll_types::time::{now_millis, rfc3339_millis};
use std::time::Duration;

/// Runner states, as Daytona names them.
pub mod state {
    pub const INITIALIZING: &str = "initializing";
    pub const READY: &str = "ready";
    pub const UNRESPONSIVE: &str = "unresponsive";
    pub const DISABLED: &str = "disabled";
    pub const DECOMMISSIONED: &str = "decommissioned";
}

/// How often runners report health (tests shorten it with
/// `ATOLL_RUNNER_HEALTH_SECS`).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// [`HEALTH_INTERVAL`], or the test override.
pub fn health_interval() -> Duration {
    std::env::var("ATOLL_RUNNER_HEALTH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.1)
        .map_or(HEALTH_INTERVAL, Duration::from_secs_f64)
}
/// Silence after which a runner is unresponsive: three missed reports and
/// a margin (tests shorten it with `ATOLL_RUNNER_UNRESPONSIVE_SECS`).
pub const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(35);

fn unresponsive_after() -> Duration {
    std::env::var("ATOLL_RUNNER_UNRESPONSIVE_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map_or(UNRESPONSIVE_AFTER, Duration::from_secs_f64)
}
/// Where `atoll serve` mounts its embedded runner's API (for the other API
/// servers of a deployment).
pub const EMBEDDED_RUNNER_PATH: &str = "/runner";
/// The runner class of namespace sandboxes (Daytona's `RunnerClass`).
pub const RUNNER_CLASS: &str = "container";
/// What this server reports as its runner version.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A runner name: 1-63 of `[a-z0-9.-]`, starting with a letter or digit.
pub fn valid_runner_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn gib_pct(used: f64, total: f64) -> f64 {
    if total <= 0.0 {
        0.0
    } else {
        (100.0 * used / total).clamp(0.0, 100.0)
    }
}

/// How much room a runner has left, 0-100: the lowest of its free cpu,
/// memory and disk shares, by what is placed on it. A runner that has not
/// reported its capacity yet has none known: 0.
pub fn availability_score(r: &RunnerRecord, a: &RunnerAllocation) -> f64 {
    let free = |used: i64, total: i64| {
        if total <= 0 {
            0.0
        } else {
            100.0 - gib_pct(used as f64, total as f64)
        }
    };
    free(a.cpu, r.cpu)
        .min(free(a.memory_gib, r.memory_gib))
        .min(free(a.disk_gib, r.disk_gib))
}

/// Does the runner take new sandboxes (its flags and state)?
pub fn schedulable(r: &RunnerRecord) -> bool {
    r.state == state::READY && !r.unschedulable && !r.draining
}

impl AppState {
    /// The region of runner `id` (a sandbox's `target`), as last read;
    /// the embedded runners' region when unknown.
    pub fn region_of_runner(&self, id: &str) -> String {
        self.runner_regions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_else(|| crate::routes::account::REGION.to_string())
    }

    /// Remembers the regions of `runners`.
    pub(crate) fn note_regions<'a>(&self, runners: impl IntoIterator<Item = &'a RunnerRecord>) {
        let mut regions = self
            .runner_regions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for r in runners {
            regions.insert(r.id.clone(), r.region.clone());
        }
    }

    /// The runner a sandbox row lives on (rows from before runners
    /// existed are on the embedded runner).
    pub fn runner_of<'a>(&'a self, r: &'a atoll_store::SandboxRecord) -> &'a str {
        r.runner_id.as_deref().unwrap_or(&self.local_runner_id)
    }

    /// The API view of a runner, with what is placed on it.
    pub fn runner_dto(&self, r: &RunnerRecord, a: &RunnerAllocation, full: bool) -> dto::Runner {
        let metrics: Option<dto::RunnerHealthMetrics> = r
            .metrics
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok());
        let pct = |f: fn(&dto::RunnerHealthMetrics) -> f64| metrics.as_ref().map_or(0.0, f);
        dto::Runner {
            id: r.id.clone(),
            name: r.name.clone(),
            region: r.region.clone(),
            state: r.state.clone(),
            unschedulable: r.unschedulable,
            draining: r.draining,
            local: r.local,
            tags: r.tags.clone(),
            runner_class: r.runner_class.clone(),
            class: r.runner_class.clone(),
            cpu: r.cpu as f64,
            memory: r.memory_gib as f64,
            disk: r.disk_gib as f64,
            gpu: 0.0,
            domain: r.domain.clone(),
            api_url: r.api_url.clone(),
            proxy_url: r.proxy_url.clone(),
            current_cpu_usage_percentage: pct(|m| m.current_cpu_usage_percentage),
            current_memory_usage_percentage: pct(|m| m.current_memory_usage_percentage),
            current_disk_usage_percentage: pct(|m| m.current_disk_usage_percentage),
            current_allocated_cpu: a.cpu as f64,
            current_allocated_memory_gi_b: a.memory_gib as f64,
            current_allocated_disk_gi_b: a.disk_gib as f64,
            current_snapshot_count: pct(|m| m.current_snapshot_count),
            current_started_sandboxes: a.started as f64,
            current_image_disk_bytes: metrics
                .as_ref()
                .and_then(|m| m.current_image_disk_bytes)
                .unwrap_or(0.0),
            availability_score: availability_score(r, a),
            last_checked: r.last_checked.map(rfc3339_millis),
            created_at: rfc3339_millis(r.created_at),
            updated_at: rfc3339_millis(r.updated_at),
            version: "0".into(),
            api_version: "0".into(),
            app_version: r.app_version.clone(),
            api_key: full.then(|| "(stored hashed; shown once at registration)".to_string()),
            control_plane_key: None,
        }
    }

    /// Where other API servers reach this server's embedded runner.
    pub fn embedded_runner_url(&self) -> String {
        if let Some(url) = &self.embedded_runner_address {
            return url.to_string();
        }
        format!(
            "{}{EMBEDDED_RUNNER_PATH}",
            self.config.public_url.trim_end_matches('/')
        )
    }

    /// Registers this server's embedded runner, or refreshes its row (a
    /// restart keeps its id, flags and sandboxes).
    pub async fn register_local_runner(
        &self,
        name: &str,
        region: &str,
    ) -> Result<RunnerRecord, ApiError> {
        let now = now_millis();
        let id = self.local_runner_id.as_str();
        if let Some(mut r) = self.store.runner(id).await? {
            r.name = name.to_string();
            r.region = region.to_string();
            r.api_url = Some(self.embedded_runner_url());
            r.updated_at = now;
            self.store.update_runner(&r).await?;
            return Ok(r);
        }
        // The embedded runner takes no remote calls: its key is one nobody
        // is ever shown.
        let key = crate::auth::generate_key()?;
        let r = RunnerRecord {
            id: id.to_string(),
            name: name.to_string(),
            region: region.to_string(),
            runner_class: RUNNER_CLASS.into(),
            tags: vec![],
            api_key_hash: crate::auth::hash_key(&key),
            state: state::INITIALIZING.into(),
            unschedulable: false,
            draining: false,
            local: true,
            api_url: Some(self.embedded_runner_url()),
            proxy_url: None,
            domain: None,
            app_version: Some(VERSION.into()),
            cpu: 0,
            memory_gib: 0,
            disk_gib: 0,
            metrics: None,
            last_checked: None,
            pinned_api_url: None,
            created_at: now,
            updated_at: now,
        };
        match self.store.insert_runner(&r).await {
            Ok(()) => Ok(r),
            // Another server on this data directory registered it first.
            Err(atoll_store::StoreError::Conflict(_)) if self.store.runner(id).await?.is_some() => {
                Box::pin(self.register_local_runner(name, region)).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The embedded runner's health check: the capacity its runtime
    /// reports, and `ready` (an admin's `disabled` or `decommissioned`
    /// stays). A runtime that does not answer leaves the runner as it was
    /// and the error is returned.
    pub async fn check_local_runner(&self) -> Result<(), ApiError> {
        if !self.embedded_runner {
            return Ok(());
        }
        let cap = self.runtime.capacity().await?;
        let Some(r) = self.store.runner(&self.local_runner_id).await? else {
            return Ok(());
        };
        let held = self
            .store
            .runner_allocations(&self.local_runner_id)
            .await?
            .remove(&r.id)
            .unwrap_or_default();
        let disk_used = cap.disk_gib.saturating_sub(cap.disk_free_gib) as f64;
        let metrics = dto::RunnerHealthMetrics {
            current_cpu_load_average: load_average().unwrap_or(0.0),
            current_cpu_usage_percentage: gib_pct(held.cpu as f64, f64::from(cap.cpu)),
            current_memory_usage_percentage: gib_pct(held.memory_gib as f64, cap.memory_gib as f64),
            current_disk_usage_percentage: gib_pct(disk_used, cap.disk_gib as f64),
            current_allocated_cpu: held.cpu as f64,
            current_allocated_memory_gi_b: held.memory_gib as f64,
            current_allocated_disk_gi_b: held.disk_gib as f64,
            current_snapshot_count: self.runtime.images().await.map_or(0, |i| i.len()) as f64,
            current_started_sandboxes: f64::from(cap.running),
            current_image_disk_bytes: Some(cap.images_bytes as f64),
            cpu: f64::from(cap.cpu),
            memory_gi_b: cap.memory_gib as f64,
            disk_gi_b: cap.disk_gib as f64,
            gpu: None,
            gpu_type: None,
        };
        let metrics = serde_json::to_string(&metrics).ok();
        let returned = self
            .store
            .record_runner_health(&atoll_store::RunnerHealth {
                id: &r.id,
                cpu: Some(i64::from(cap.cpu)),
                memory_gib: Some(cap.memory_gib as i64),
                disk_gib: Some(cap.disk_gib as i64),
                metrics: metrics.as_deref(),
                app_version: Some(VERSION),
                now: now_millis(),
                ..Default::default()
            })
            .await?;
        if returned {
            // Marked silent while this server was down (by another server).
            self.reconcile_runner(&r.id).await?;
        }
        Ok(())
    }

    /// A remote runner's health check (its own key authenticated it).
    pub async fn runner_healthcheck(
        &self,
        r: RunnerRecord,
        h: dto::RunnerHealthcheck,
    ) -> Result<(), ApiError> {
        let url = |u: &Option<String>| -> Result<(), ApiError> {
            match u {
                Some(u) => check_runner_url(u),
                None => Ok(()),
            }
        };
        url(&h.api_url)?;
        url(&h.proxy_url)?;
        if let (Some(pinned), Some(reported)) = (&r.pinned_api_url, &h.api_url) {
            if reported.trim_end_matches('/') != pinned {
                return Err(ApiError::BadRequest(format!(
                    "runner {} is pinned to {pinned}; it reported {reported}",
                    r.name
                )));
            }
        }
        let metrics = h
            .metrics
            .as_ref()
            .and_then(|m| serde_json::to_string(m).ok());
        let cap = |v: f64| Some(v.clamp(0.0, 1e6) as i64);
        let returned = self
            .store
            .record_runner_health(&atoll_store::RunnerHealth {
                id: &r.id,
                cpu: h.metrics.as_ref().and_then(|m| cap(m.cpu)),
                memory_gib: h.metrics.as_ref().and_then(|m| cap(m.memory_gi_b)),
                disk_gib: h.metrics.as_ref().and_then(|m| cap(m.disk_gi_b)),
                metrics: metrics.as_deref(),
                api_url: h.api_url.as_deref(),
                proxy_url: h.proxy_url.as_deref(),
                domain: h.domain.as_deref(),
                app_version: Some(&h.app_version),
                now: now_millis(),
            })
            .await?;
        if returned {
            tracing::info!(runner = %r.id, name = %r.name, "runner is back; reconciling its sandboxes");
            let state = self.clone();
            let id = r.id.clone();
            tokio::spawn(async move {
                if let Err(e) = state.reconcile_runner(&id).await {
                    tracing::warn!(runner = %id, error = %e, "reconciling a returned runner failed");
                }
            });
        }
        Ok(())
    }

    /// A runner stopped responding: its started and paused sandboxes are
    /// `unknown` (with the reason) until it answers again, never taken
    /// for stopped.
    async fn runner_lost(&self, runner_id: &str) -> Result<(), ApiError> {
        let name = self
            .store
            .runner(runner_id)
            .await?
            .map_or_else(|| runner_id.to_string(), |r| r.name);
        for row in self
            .store
            .sandboxes_on_runner(runner_id, &self.local_runner_id)
            .await?
        {
            if !matches!(
                row.state,
                crate::service::state::STARTED | crate::service::state::PAUSED
            ) {
                continue;
            }
            let Ok(_guard) = self.locks.get(&row.id).try_lock_owned() else {
                continue; // an operation on it will meet the runner's silence itself
            };
            let mut r = row;
            let reason = format!(
                "its runner {name} stopped responding; the sandbox was {} then",
                r.state
            );
            if let Err(e) = self
                .save(&mut r, crate::service::state::UNKNOWN, Some(reason))
                .await
            {
                tracing::warn!(sandbox = %r.id, error = %e, "marking a sandbox unknown failed");
            }
        }
        Ok(())
    }

    /// A runner answers again: each of its `unknown` sandboxes takes the
    /// state the runner reports (running, paused, or stopped with its
    /// disk), and deletes that waited for it finish. A sandbox that fails
    /// is left for the scheduler's next pass, which does the same.
    pub async fn reconcile_runner(&self, runner_id: &str) -> Result<(), ApiError> {
        use crate::service::state as s;
        for row in self
            .store
            .sandboxes_on_runner(runner_id, &self.local_runner_id)
            .await?
        {
            if row.state != s::UNKNOWN
                && !(row.state == s::DESTROYING && row.desired_state == s::DESTROYED)
            {
                continue;
            }
            if let Err(e) = self.reconcile_sandbox(&row.id).await {
                tracing::warn!(sandbox = %row.id, error = %e, "reconciling a sandbox failed; retried next pass");
            }
        }
        Ok(())
    }

    /// One `unknown` sandbox (or one whose delete waits for its runner):
    /// settled by what its runner reports now.
    pub(crate) async fn reconcile_sandbox(&self, id: &str) -> Result<(), ApiError> {
        use crate::service::state as s;
        let lock = self.locks.get(id);
        let _guard = lock.lock().await;
        let Some(mut r) = self.store.sandbox(id).await? else {
            return Ok(());
        };
        if r.state == s::DESTROYING && r.desired_state == s::DESTROYED {
            return self.destroy(&mut r).await;
        }
        self.settle_unknown_locked(&mut r).await
    }

    /// An `unknown` sandbox whose lock the caller holds takes the state its
    /// runner reports now (anything else is left as it is).
    pub(crate) async fn settle_unknown_locked(
        &self,
        r: &mut atoll_store::SandboxRecord,
    ) -> Result<(), ApiError> {
        use crate::service::state as s;
        if r.state != s::UNKNOWN {
            return Ok(());
        }
        let rt = self.rt(r).await?;
        let (now, desired) = match rt.observe_one(&r.id).await? {
            Some(atoll_runtime_api::Observed::Running { paused: true, .. }) => {
                (s::PAUSED, s::PAUSED)
            }
            Some(atoll_runtime_api::Observed::Running { .. }) => (s::STARTED, s::STARTED),
            _ => (s::STOPPED, s::STOPPED),
        };
        tracing::info!(sandbox = %r.id, state = %now, "sandbox reconciled with its runner");
        r.desired_state = desired;
        self.save(r, now, None).await
    }

    /// Marks runners silent for longer than [`UNRESPONSIVE_AFTER`].
    pub async fn sweep_unresponsive_runners(&self) -> Result<(), ApiError> {
        let now = now_millis();
        self.sweep_runners_silent_since(now - unresponsive_after().as_millis() as i64)
            .await
    }

    /// Marks runners whose last health check is older than `before` (ms)
    /// unresponsive, and their running sandboxes `unknown`.
    pub async fn sweep_runners_silent_since(&self, before: i64) -> Result<(), ApiError> {
        let now = now_millis();
        for id in self
            .store
            .mark_unresponsive_runners(before, now, &self.local_runner_id)
            .await?
        {
            tracing::warn!(runner = %id, "runner stopped reporting health: unresponsive");
            self.runner_lost(&id).await?;
        }
        Ok(())
    }

    /// `target` if some runner is in that region (the embedded runner's
    /// is `local`); a 400 naming the regions otherwise.
    pub async fn known_region(&self, target: &str) -> Result<String, ApiError> {
        let mut regions: Vec<String> = self
            .store
            .runners()
            .await?
            .into_iter()
            .map(|r| r.region)
            .collect();
        regions.sort();
        regions.dedup();
        if regions.iter().any(|r| r == target) {
            return Ok(target.to_string());
        }
        Err(ApiError::BadRequest(format!(
            "unknown target {target:?}: the regions of this deployment's runners are {regions:?}"
        )))
    }

    /// The runner a new sandbox goes to: among those that take new
    /// sandboxes, in `region` when given, and that this server can drive,
    /// the one with the most room. None left is a 503 that says why.
    /// The runner a sandbox mounting its volumes must run on, if it takes
    /// new sandboxes.
    pub async fn volume_runner(&self, id: &str) -> Result<RunnerRecord, ApiError> {
        let r = self.store.runner(id).await?.ok_or_else(|| {
            ApiError::Unavailable("the runner holding the volumes is gone".into())
        })?;
        if !schedulable(&r) {
            return Err(ApiError::Unavailable(format!(
                "the runner holding the volumes ({}) takes no new sandboxes now",
                r.name
            )));
        }
        Ok(r)
    }

    pub async fn pick_runner(&self, region: Option<&str>) -> Result<RunnerRecord, ApiError> {
        let runners = self.store.runners().await?;
        self.note_regions(&runners);
        let held = self.store.runner_allocations(&self.local_runner_id).await?;
        let mut why = Vec::new();
        let mut best: Option<(f64, RunnerRecord)> = None;
        for r in runners {
            if region.is_some_and(|want| want != r.region) {
                continue;
            }
            if !schedulable(&r) {
                let flag = if r.draining {
                    "draining"
                } else if r.unschedulable {
                    "unschedulable"
                } else {
                    r.state.as_str()
                };
                why.push(format!("{} is {flag}", r.name));
                continue;
            }
            if let Err(e) = self.runtime_of_runner(&r) {
                why.push(format!(
                    "{} cannot be driven from this server ({e})",
                    r.name
                ));
                continue;
            }
            let score = availability_score(&r, &held.get(&r.id).copied().unwrap_or_default());
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, r));
            }
        }
        best.map(|(_, r)| r).ok_or_else(|| {
            let region = region
                .map(|r| format!(" in region {r:?}"))
                .unwrap_or_default();
            let why = if why.is_empty() {
                "none is registered".to_string()
            } else {
                why.join(", ")
            };
            ApiError::Unavailable(format!(
                "no runner{region} can take a new sandbox now: {why}"
            ))
        })
    }
}

/// A runner address it may report: `http(s)://host[:port][/path]`, never
/// a link-local, unspecified or multicast address (cloud metadata and the
/// like: a runner's key must not turn the control plane into a client of
/// them). Loopback stays allowed for single-host deployments.
pub fn check_runner_url(u: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::BadRequest(format!(
            "invalid runner URL {u:?}: {why}"
        )))
    };
    if u.len() > 2048 {
        return bad("too long");
    }
    let Some((scheme, rest)) = u.split_once("://") else {
        return bad("expected http(s)://…");
    };
    if scheme != "http" && scheme != "https" {
        return bad("expected http(s)://…");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return bad("no host");
    }
    let host = authority
        .rsplit_once(':')
        .filter(|(h, p)| !h.ends_with(']') || p.parse::<u16>().is_ok())
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let refused = match ip {
            std::net::IpAddr::V4(v4) => {
                v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
            }
            std::net::IpAddr::V6(v6) => {
                v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        };
        if refused {
            return bad("a link-local, unspecified or multicast address");
        }
    } else if host.eq_ignore_ascii_case("metadata.google.internal") {
        return bad("a cloud metadata name");
    }
    Ok(())
}

/// The host's 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Checks the embedded runner's health and sweeps silent runners, forever.
pub fn spawn_health(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(health_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Ok(runners) = state.store.runners().await {
                state.note_regions(&runners);
            }
            if let Err(e) = state.check_local_runner().await {
                tracing::warn!(error = %e, "embedded runner health check failed");
            }
            let ttl = crate::leases::ttl_for(health_interval());
            if !state.hold_lease(crate::leases::RUNNER_SWEEP, ttl).await {
                continue;
            }
            if let Err(e) = state.sweep_unresponsive_runners().await {
                tracing::warn!(error = %e, "sweeping unresponsive runners failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_urls_are_http_and_never_link_local() {
        for ok in [
            "http://10.0.0.7:2281",
            "https://edge-1.example:2281/runner",
            "http://127.0.0.1:3000/runner",
            "http://[2001:db8::1]:2281",
        ] {
            assert!(check_runner_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]:80",
            "http://0.0.0.0:2281",
            "http://224.0.0.1",
            "http://user@10.0.0.7",
            "http://metadata.google.internal/",
            "ftp://x",
            "http://",
        ] {
            assert!(check_runner_url(bad).is_err(), "{bad}");
        }
    }
}
