//! Deployment-wide periodic work (the lifecycle scheduler, the metrics
//! sampler, the warm-pool filler, the sweep of silent runners) runs on one
//! API server at a time when several share a database: before each round a
//! server takes or renews the task's lease in the store; the others skip
//! the round. A server that dies stops renewing, and after the lease's
//! time another takes over.

use crate::AppState;
use std::time::Duration;

/// The lease names.
pub const SCHEDULER: &str = "lifecycle-scheduler";
pub const METRICS: &str = "metrics-sampler";
pub const WARM_POOLS: &str = "warm-pool-filler";
pub const RUNNER_SWEEP: &str = "runner-sweep";

impl AppState {
    /// Does this server hold lease `name` for the next `ttl` (taking it if
    /// it is free or expired)? A store error counts as no.
    pub async fn hold_lease(&self, name: &str, ttl: Duration) -> bool {
        let now = atoll_types::time::now_millis();
        match self
            .store
            .acquire_lease(name, &self.server_id, now, ttl.as_millis() as i64)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "taking a lease failed");
                false
            }
        }
    }

    /// Gives up every lease this server holds (a clean shutdown, so another
    /// server takes over at once).
    pub async fn release_leases(&self) {
        for name in [SCHEDULER, METRICS, WARM_POOLS, RUNNER_SWEEP] {
            let _ = self.store.release_lease(name, &self.server_id).await;
        }
    }
}

/// A lease's time for a task that runs every `period`: three rounds, and
/// at least three seconds.
pub fn ttl_for(period: Duration) -> Duration {
    (period * 3).max(Duration::from_secs(3))
}
