//! Which runtime drives a sandbox: the embedded runner's in-process
//! runtime, or a `RemoteRuntime` for the runner the sandbox lives on
//! (built from the runner's reported address, signed with this
//! deployment's control-plane key, and kept while that address holds).

use crate::error::ApiError;
use crate::AppState;
use atoll_remote::{ControlKey, RemoteRuntime};
use atoll_runtime_api::{Runtime, RuntimeError};
use atoll_store::RunnerRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Clients of remote runners, by runner id, with the address each was
/// built for.
#[derive(Default)]
pub struct RemoteRuntimes {
    clients: Mutex<HashMap<String, Client>>,
}

/// A runner's client and the address it was built for.
type Client = (String, Arc<dyn Runtime>);

impl RemoteRuntimes {
    fn get(
        &self,
        r: &RunnerRecord,
        url: &str,
        key: &Arc<ControlKey>,
    ) -> Result<Arc<dyn Runtime>, RuntimeError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, rt)) = clients.get(&r.id) {
            if at == url {
                return Ok(rt.clone());
            }
        }
        let rt: Arc<dyn Runtime> = Arc::new(RemoteRuntime::new(&r.id, url, key.clone())?);
        clients.insert(r.id.clone(), (url.to_string(), rt.clone()));
        Ok(rt)
    }
}

impl AppState {
    /// The runtime of runner `r` (the embedded one, or a client of it).
    pub fn runtime_of_runner(&self, r: &RunnerRecord) -> Result<Arc<dyn Runtime>, RuntimeError> {
        if r.id == *self.local_runner_id {
            return Ok(self.runtime.clone());
        }
        let url = r.api_url.as_deref().ok_or_else(|| {
            RuntimeError::Unreachable(format!(
                "runner {} has not reported its address yet",
                r.name
            ))
        })?;
        let key = self.control_key.as_ref().ok_or_else(|| {
            RuntimeError::Unreachable(
                "this server has no control-plane key to reach runners with".into(),
            )
        })?;
        self.remote_runtimes.get(r, url, key)
    }

    /// The runtime of the runner with id `runner_id`.
    pub async fn runtime_for(&self, runner_id: &str) -> Result<Arc<dyn Runtime>, RuntimeError> {
        if runner_id == *self.local_runner_id {
            return Ok(self.runtime.clone());
        }
        let r = self
            .store
            .runner(runner_id)
            .await
            .map_err(|e| RuntimeError::Failed(format!("reading runner {runner_id}: {e}")))?
            .ok_or_else(|| {
                RuntimeError::Unreachable(format!("runner {runner_id} is no longer registered"))
            })?;
        self.runtime_of_runner(&r)
    }

    /// The runtime that drives sandbox row `r`.
    pub async fn rt(&self, r: &atoll_store::SandboxRecord) -> Result<Arc<dyn Runtime>, ApiError> {
        Ok(self.runtime_for(self.runner_of(r)).await?)
    }

    /// The runtime that drives the sandbox with id `id` (a recent read of
    /// its row is good enough: a sandbox never moves while it runs).
    pub async fn rt_by_id(&self, id: &str) -> Result<Arc<dyn Runtime>, RuntimeError> {
        let row = self
            .store
            .sandbox_recent(id, std::time::Duration::from_secs(5))
            .await
            .map_err(|e| RuntimeError::Failed(format!("reading sandbox {id}: {e}")))?;
        match row {
            Some(r) => self.runtime_for(self.runner_of(&r)).await,
            None => Ok(self.runtime.clone()),
        }
    }

    /// Every runtime this server can drive: its embedded runner's, and
    /// each other runner with an address (remote runners, and the embedded
    /// runners of the deployment's other API servers; down ones included:
    /// they may answer again).
    pub async fn all_runtimes(&self) -> Result<Vec<(String, Arc<dyn Runtime>)>, ApiError> {
        let mut out = vec![(self.local_runner_id.to_string(), self.runtime.clone())];
        for r in self.store.runners().await? {
            if r.id == *self.local_runner_id || r.api_url.is_none() {
                continue;
            }
            if matches!(r.state.as_str(), crate::runners::state::DECOMMISSIONED) {
                continue;
            }
            match self.runtime_of_runner(&r) {
                Ok(rt) => out.push((r.id.clone(), rt)),
                Err(e) => tracing::debug!(runner = %r.id, error = %e, "runner not driven"),
            }
        }
        Ok(out)
    }
}
