//! Which runtime drives a sandbox: the embedded runner's in-process
//! runtime, or a `RemoteRuntime` for the runner the sandbox lives on
//! (built from the runner's reported address, signed with this
//! deployment's control-plane key, and kept while that address holds).

use crate::error::ApiError;
use crate::AppState;
use atoll_remote::{ControlKey, RemoteRuntime};
use atoll_runtime_api::{
    BoxedStream, Capacity, DiskState, ImageInfo, Limits, NetworkPolicy, Observed, SandboxSpec,
    SandboxUsage,
};
use atoll_runtime_api::{Runtime, RuntimeError};
use atoll_store::RunnerRecord;
use std::collections::{HashMap, HashSet};
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
        {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, rt)) = clients.get(&r.id) {
                if at == url {
                    return Ok(rt.clone());
                }
            }
        }
        // Built outside the lock (a TLS client reads the CA files).
        let rt: Arc<dyn Runtime> = Arc::new(RemoteRuntime::new(&r.id, url, key.clone())?);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.insert(r.id.clone(), (url.to_string(), rt.clone()));
        Ok(rt)
    }

    /// Forgets the clients of runners no longer registered.
    pub fn retain(&self, registered: &HashSet<String>) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| registered.contains(id));
    }
}

/// The runtime of an API-only server (`atoll serve --no-local-runner`):
/// nothing runs here, so it observes nothing and drives nothing.
pub struct NoRuntime;

fn none_here() -> RuntimeError {
    RuntimeError::Unreachable("this server has no embedded runner (--no-local-runner)".into())
}

#[async_trait::async_trait]
impl Runtime for NoRuntime {
    async fn start(&self, _: &SandboxSpec) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn stop(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn destroy(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn pause(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn resume(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn archive(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn restore(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn discard_archive(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn disk_state(&self, _: &str) -> Result<DiskState, RuntimeError> {
        Err(none_here())
    }
    async fn recover(&self) -> Result<Vec<Observed>, RuntimeError> {
        Ok(vec![])
    }
    async fn observe(&self) -> Result<Vec<Observed>, RuntimeError> {
        Ok(vec![])
    }
    async fn observe_one(&self, _: &str) -> Result<Option<Observed>, RuntimeError> {
        Err(none_here())
    }
    async fn usage(&self, _: &str) -> Result<Option<SandboxUsage>, RuntimeError> {
        Ok(None)
    }
    async fn update_limits(&self, _: &str, _: &Limits) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn update_network(&self, _: &str, _: &NetworkPolicy) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn connect_toolbox(&self, _: &str) -> Result<BoxedStream, RuntimeError> {
        Err(none_here())
    }
    async fn connect_port(&self, _: &str, _: u16) -> Result<BoxedStream, RuntimeError> {
        Err(none_here())
    }
    async fn capacity(&self) -> Result<Capacity, RuntimeError> {
        Err(none_here())
    }
    async fn images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        Ok(vec![])
    }
    async fn pull_image(
        &self,
        _: &atoll_runtime_api::ImagePull,
        _: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        Err(none_here())
    }
    async fn build_image(
        &self,
        _: &atoll_runtime_api::ImageBuild,
        _: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        Err(none_here())
    }
    async fn import_image(
        &self,
        _: &atoll_runtime_api::ImageImport,
        _: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        Err(none_here())
    }
    async fn create_volume(
        &self,
        _: &str,
        _: u64,
    ) -> Result<atoll_runtime_api::VolumePlacement, RuntimeError> {
        Err(none_here())
    }
    async fn delete_volume(&self, _: &str) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn volume_usage(&self, _: &str) -> Result<atoll_runtime_api::VolumeUsage, RuntimeError> {
        Err(none_here())
    }
    async fn volume_list(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Vec<atoll_runtime_api::VolumeEntry>, RuntimeError> {
        Err(none_here())
    }
    async fn volume_read(
        &self,
        _: &str,
        _: &str,
    ) -> Result<(u64, atoll_runtime_api::ByteSource), RuntimeError> {
        Err(none_here())
    }
    async fn volume_write(
        &self,
        _: &str,
        _: &str,
        _: atoll_runtime_api::ByteSource,
    ) -> Result<u64, RuntimeError> {
        Err(none_here())
    }
    async fn volume_remove(&self, _: &str, _: &str, _: bool) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn has_build_context(&self, _: &str) -> Result<bool, RuntimeError> {
        Err(none_here())
    }
    async fn put_build_context(
        &self,
        _: &str,
        _: atoll_runtime_api::ByteSource,
    ) -> Result<(), RuntimeError> {
        Err(none_here())
    }
    async fn remove_image(&self, _: &str) -> Result<bool, RuntimeError> {
        Ok(false)
    }
    async fn commit(
        &self,
        _: &str,
        _: &str,
        _: atoll_runtime_api::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        Err(none_here())
    }
    async fn fork(
        &self,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<atoll_runtime_api::ForkedDisk, RuntimeError> {
        Err(none_here())
    }
}

impl AppState {
    /// Every image some runner of the deployment can start, by name (the
    /// embedded runner's first; runners that do not answer are skipped).
    pub async fn image_catalog(&self) -> Result<Vec<ImageInfo>, ApiError> {
        let mut out: Vec<ImageInfo> = Vec::new();
        let mut asked = Vec::new();
        for (runner, rt) in self.all_runtimes().await? {
            asked.push(tokio::spawn(async move {
                let images =
                    tokio::time::timeout(std::time::Duration::from_secs(5), rt.images()).await;
                (runner, images)
            }));
        }
        for task in asked {
            let Ok((runner, images)) = task.await else {
                continue;
            };
            let images = images
                .unwrap_or_else(|_| Err(RuntimeError::Unreachable("no answer in time".into())));
            match images {
                Ok(images) => {
                    for i in images {
                        if !out.iter().any(|o| o.name == i.name) {
                            out.push(i);
                        }
                    }
                }
                Err(e) => tracing::debug!(%runner, error = %e, "runner's images unknown"),
            }
        }
        Ok(out)
    }

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
        let runners = self.store.runners().await?;
        self.note_regions(&runners);
        self.remote_runtimes
            .retain(&runners.iter().map(|r| r.id.clone()).collect());
        for r in runners {
            if r.id == *self.local_runner_id || r.api_url.is_none() {
                continue;
            }
            // A silent runner is left out until it reports again (its
            // sandboxes are `unknown` meanwhile): asking it would only
            // wait.
            if matches!(
                r.state.as_str(),
                crate::runners::state::DECOMMISSIONED | crate::runners::state::UNRESPONSIVE
            ) {
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
