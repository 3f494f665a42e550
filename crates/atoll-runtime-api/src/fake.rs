//! `FakeRuntime`: an in-memory [`Runtime`] for the control plane's
//! in-process tests (feature `fake`). It keeps each sandbox's state as a
//! real runtime would (running, paused, stopped with its disk, archived),
//! records every call, and lets a test script what a real one does under
//! stress: a failure of the next call of an operation, a runtime that does
//! not answer, a sandbox killed from outside, or observations that lag
//! (the bulk `observe` and the per-sandbox `observe_one` set apart).
//! A sandbox has no toolbox or ports of its own: a test routes them to
//! TCP listeners it runs (`route_toolbox`, `route_port`); others are
//! connect errors.

use crate::{
    BoxedStream, Capacity, DiskState, ImageInfo, Limits, NetworkPolicy, Observed, Runtime,
    RuntimeError, SandboxSpec, SandboxUsage,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// One sandbox as the fake holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeSandbox {
    /// The spec of its last start.
    pub spec: Option<SandboxSpec>,
    pub running: bool,
    pub paused: bool,
    /// Its disk is here (not archived away).
    pub disk: bool,
    pub archived: bool,
    /// The limits last applied live.
    pub limits: Option<Limits>,
    /// The network policy last applied live.
    pub network: Option<NetworkPolicy>,
}

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, FakeSandbox>,
    images: Vec<ImageInfo>,
    calls: Vec<String>,
    failures: HashMap<String, VecDeque<RuntimeError>>,
    unreachable: bool,
    bulk: Option<Vec<Observed>>,
    one: HashMap<String, Option<Observed>>,
    /// Where a sandbox's toolbox (port `None`) or port is served.
    routes: HashMap<(String, Option<u16>), std::net::SocketAddr>,
    /// Build contexts stored, by name.
    contexts: HashMap<String, Vec<u8>>,
    /// Volumes, by id: their quota.
    volumes: HashMap<String, u64>,
    /// Files of volumes, by volume id and path.
    volume_files: std::collections::BTreeMap<(String, String), Vec<u8>>,
    /// References a pull finds.
    registry: Vec<String>,
}

/// See the module doc.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    /// The bytes of a build context stored with `put_build_context`.
    pub fn build_context(&self, sha256: &str) -> Option<Vec<u8>> {
        self.lock().contexts.get(sha256).cloned()
    }

    /// A fake that can start sandboxes of the images named.
    pub fn with_images(names: &[&str]) -> FakeRuntime {
        let fake = FakeRuntime::default();
        fake.lock().images = names
            .iter()
            .map(|n| ImageInfo {
                name: n.to_string(),
                digest: format!("sha256:{:064x}", n.len()),
                size_bytes: 1 << 20,
                created_at_ms: 0,
                entrypoint: vec![],
                source: None,
                layers: 1,
            })
            .collect();
        fake
    }

    /// Makes `reference` pullable, as if a registry had it.
    pub fn publish(&self, reference: &str) {
        self.lock().registry.push(reference.to_string());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next call of `op` (a method name: "start", "stop", ...) fails
    /// with `error`; several queue up in order.
    pub fn fail_next(&self, op: &str, error: RuntimeError) {
        self.lock()
            .failures
            .entry(op.to_string())
            .or_default()
            .push_back(error);
    }

    /// From now on every call fails as a runner that is down does (or
    /// answers again, with `false`).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// The sandbox's processes die behind the runtime's back (OOM, a kill
    /// from outside): it is stopped, its disk kept.
    pub fn kill(&self, id: &str) {
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.running = false;
            s.paused = false;
        }
    }

    /// A sandbox the runtime runs without the control plane having asked
    /// (a leftover of a crash).
    pub fn adopt_running(&self, id: &str) {
        self.lock().sandboxes.insert(
            id.to_string(),
            FakeSandbox {
                running: true,
                disk: true,
                ..FakeSandbox::default()
            },
        );
    }

    /// Sets what the fake holds of one sandbox, as if the runtime had
    /// brought it there (a test's starting point).
    pub fn put(&self, id: &str, sandbox: FakeSandbox) {
        self.lock().sandboxes.insert(id.to_string(), sandbox);
    }

    /// `observe` returns `bulk` instead of the real state (`None`: real).
    pub fn script_observe(&self, bulk: Option<Vec<Observed>>) {
        self.lock().bulk = bulk;
    }

    /// `observe_one(id)` returns `seen` instead of the real state.
    pub fn script_observe_one(&self, id: &str, seen: Option<Observed>) {
        self.lock().one.insert(id.to_string(), seen);
    }

    /// The sandbox's toolbox is the server at `addr` (while it runs).
    pub fn route_toolbox(&self, id: &str, addr: std::net::SocketAddr) {
        self.lock().routes.insert((id.to_string(), None), addr);
    }

    /// Port `port` of the sandbox is the server at `addr` (while it runs).
    pub fn route_port(&self, id: &str, port: u16, addr: std::net::SocketAddr) {
        self.lock()
            .routes
            .insert((id.to_string(), Some(port)), addr);
    }

    /// A connection to what `id`'s toolbox or port is routed to.
    async fn connect_routed(
        &self,
        op: &str,
        id: &str,
        port: Option<u16>,
    ) -> Result<BoxedStream, RuntimeError> {
        let addr = {
            let mut st = self.enter(op, Some(id))?;
            running(&mut st, id)?;
            st.routes.get(&(id.to_string(), port)).copied()
        };
        let Some(addr) = addr else {
            return Err(RuntimeError::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                match port {
                    Some(p) => format!("nothing listens on port {p} of the fake sandbox"),
                    None => "the fake sandbox has no toolbox".to_string(),
                },
            )));
        };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(RuntimeError::Connect)?;
        Ok(Box::new(stream))
    }

    /// Every call so far, as "op id" (or "op" for calls without one).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The calls of one operation, by sandbox id.
    pub fn calls_of(&self, op: &str) -> Vec<String> {
        let prefix = format!("{op} ");
        self.calls()
            .into_iter()
            .filter_map(|c| c.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// What the fake holds of one sandbox.
    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        self.lock().sandboxes.get(id).cloned()
    }

    /// Records the call and returns the scripted failure for it, if any.
    fn enter(&self, op: &str, id: Option<&str>) -> Result<MutexGuard<'_, State>, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(match id {
            Some(id) => format!("{op} {id}"),
            None => op.to_string(),
        });
        if st.unreachable {
            return Err(RuntimeError::Unreachable("the fake runner is down".into()));
        }
        if let Some(e) = st.failures.get_mut(op).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        if let Some(id) = id {
            if !valid_id(id) {
                return Err(RuntimeError::InvalidId(id.into()));
            }
        }
        Ok(st)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn observed(id: &str, s: &FakeSandbox) -> Observed {
    if s.running {
        Observed::Running {
            id: id.into(),
            pid: 1,
            paused: s.paused,
        }
    } else {
        Observed::Stopped { id: id.into() }
    }
}

fn running<'a>(st: &'a mut State, id: &str) -> Result<&'a mut FakeSandbox, RuntimeError> {
    match st.sandboxes.get_mut(id) {
        Some(s) if s.running => Ok(s),
        _ => Err(RuntimeError::NotRunning { id: id.into() }),
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let mut st = self.enter("start", Some(&spec.id))?;
        if !st.images.iter().any(|i| i.name == spec.image) {
            return Err(RuntimeError::ImageNotFound(spec.image.clone()));
        }
        let s = st.sandboxes.entry(spec.id.clone()).or_default();
        if s.archived && !s.disk {
            return Err(RuntimeError::Failed(format!(
                "sandbox {} is archived: restore it first",
                spec.id
            )));
        }
        s.spec = Some(spec.clone());
        s.running = true;
        s.disk = true;
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("stop", Some(id))?;
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.running = false;
            s.paused = false;
        }
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("destroy", Some(id))?;
        st.sandboxes.remove(id);
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("pause", Some(id))?;
        running(&mut st, id)?.paused = true;
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("resume", Some(id))?;
        running(&mut st, id)?.paused = false;
        Ok(())
    }

    async fn archive(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("archive", Some(id))?;
        match st.sandboxes.get_mut(id) {
            Some(s) if s.running => Err(RuntimeError::Failed(
                "cannot archive a running sandbox".into(),
            )),
            Some(s) if s.disk => {
                s.archived = true;
                s.disk = false;
                Ok(())
            }
            _ => Err(RuntimeError::Failed(format!(
                "sandbox {id} has no disk to archive"
            ))),
        }
    }

    async fn restore(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("restore", Some(id))?;
        match st.sandboxes.get_mut(id) {
            Some(s) if s.archived => {
                s.disk = true;
                s.archived = false;
                Ok(())
            }
            _ => Err(RuntimeError::Failed(format!("sandbox {id} has no archive"))),
        }
    }

    async fn discard_archive(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("discard_archive", Some(id))?;
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.archived = false;
        }
        Ok(())
    }

    async fn disk_state(&self, id: &str) -> Result<DiskState, RuntimeError> {
        let st = self.enter("disk_state", Some(id))?;
        Ok(st
            .sandboxes
            .get(id)
            .map(|s| DiskState {
                present: s.disk,
                archived: s.archived,
            })
            .unwrap_or_default())
    }

    async fn recover(&self) -> Result<Vec<Observed>, RuntimeError> {
        let st = self.enter("recover", None)?;
        Ok(st.sandboxes.iter().map(|(id, s)| observed(id, s)).collect())
    }

    async fn observe(&self) -> Result<Vec<Observed>, RuntimeError> {
        let st = self.enter("observe", None)?;
        if let Some(b) = &st.bulk {
            return Ok(b.clone());
        }
        Ok(st.sandboxes.iter().map(|(id, s)| observed(id, s)).collect())
    }

    async fn observe_one(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        let st = self.enter("observe_one", Some(id))?;
        if let Some(seen) = st.one.get(id) {
            return Ok(seen.clone());
        }
        Ok(st.sandboxes.get(id).map(|s| observed(id, s)))
    }

    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>, RuntimeError> {
        let st = self.enter("usage", Some(id))?;
        Ok(st.sandboxes.get(id).filter(|s| s.running).map(|s| {
            let limits = s.spec.as_ref().map(|p| p.limits.clone());
            SandboxUsage {
                cpu_ns: 1_000_000,
                memory_used: 64 << 20,
                memory_cache: 0,
                memory_limit: limits.map_or(0, |l| l.memory_bytes),
                disk_used: 100 << 20,
                disk_total: s.spec.as_ref().map_or(0, |p| p.disk_bytes),
                disk_free: s.spec.as_ref().map_or(0, |p| p.disk_bytes - (100 << 20)),
            }
        }))
    }

    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        let mut st = self.enter("update_limits", Some(id))?;
        running(&mut st, id)?.limits = Some(limits.clone());
        Ok(())
    }

    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RuntimeError> {
        let mut st = self.enter("update_network", Some(id))?;
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.network = Some(policy.clone());
        }
        Ok(())
    }

    async fn connect_toolbox(&self, id: &str) -> Result<BoxedStream, RuntimeError> {
        self.connect_routed("connect_toolbox", id, None).await
    }

    async fn connect_port(&self, id: &str, port: u16) -> Result<BoxedStream, RuntimeError> {
        self.connect_routed("connect_port", id, Some(port)).await
    }

    async fn capacity(&self) -> Result<Capacity, RuntimeError> {
        let st = self.enter("capacity", None)?;
        Ok(Capacity {
            cpu: 8,
            memory_gib: 32,
            disk_gib: 200,
            disk_free_gib: 150,
            network_slots: 100,
            running: st.sandboxes.values().filter(|s| s.running).count() as u32,
            images_bytes: st.images.iter().map(|i| i.size_bytes).sum(),
        })
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        let st = self.enter("images", None)?;
        Ok(st.images.clone())
    }

    async fn pull_image(
        &self,
        pull: &crate::ImagePull,
        log: crate::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let mut st = self.enter("pull_image", None)?;
        if !st.registry.contains(&pull.reference) {
            return Err(RuntimeError::ImageNotFound(pull.reference.clone()));
        }
        log(&format!("Pulling {}", pull.reference));
        let info = ImageInfo {
            name: pull.name.clone(),
            digest: format!("sha256:{:064x}", pull.reference.len()),
            size_bytes: 2 << 20,
            created_at_ms: 0,
            entrypoint: vec![],
            source: Some(pull.reference.clone()),
            layers: 2,
        };
        st.images.retain(|i| i.name != pull.name);
        st.images.push(info.clone());
        Ok(info)
    }

    async fn build_image(
        &self,
        build: &crate::ImageBuild,
        log: crate::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let mut st = self.enter("build_image", None)?;
        if let Some(missing) = build
            .contexts
            .iter()
            .find(|c| !st.contexts.contains_key(*c))
        {
            return Err(RuntimeError::Failed(format!(
                "build context {missing} is not stored"
            )));
        }
        for line in build.dockerfile.lines() {
            log(line);
            if line.contains("exit 1") {
                return Err(RuntimeError::Failed(format!("step {line:?} failed")));
            }
        }
        let info = ImageInfo {
            name: build.name.clone(),
            digest: format!("sha256:{:064x}", build.dockerfile.len()),
            size_bytes: 4 << 20,
            created_at_ms: 0,
            entrypoint: vec![],
            source: Some("Dockerfile".into()),
            layers: 3,
        };
        st.images.retain(|i| i.name != build.name);
        st.images.push(info.clone());
        Ok(info)
    }

    /// Imports a stored archive: any bytes will do, the image's digest is
    /// the archive's.
    async fn import_image(
        &self,
        import: &crate::ImageImport,
        log: crate::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let mut st = self.enter("import_image", None)?;
        if !st.contexts.contains_key(&import.archive) {
            return Err(RuntimeError::Failed(format!(
                "image archive {} is not stored",
                import.archive
            )));
        }
        log(&format!("Importing {}", import.name));
        let info = ImageInfo {
            name: import.name.clone(),
            digest: format!("sha256:{}", import.archive),
            size_bytes: 4 << 20,
            created_at_ms: 0,
            entrypoint: vec![],
            source: Some("archive".into()),
            layers: 1,
        };
        st.images.retain(|i| i.name != import.name);
        st.images.push(info.clone());
        Ok(info)
    }

    async fn create_volume(
        &self,
        id: &str,
        size_bytes: u64,
    ) -> Result<crate::VolumePlacement, RuntimeError> {
        let mut st = self.enter("create_volume", None)?;
        st.volumes.insert(id.to_string(), size_bytes);
        Ok(crate::VolumePlacement::default())
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.enter("delete_volume", None)?;
        st.volumes.remove(id);
        Ok(())
    }

    async fn volume_usage(&self, id: &str) -> Result<crate::VolumeUsage, RuntimeError> {
        let st = self.enter("volume_usage", None)?;
        let size = *st
            .volumes
            .get(id)
            .ok_or_else(|| RuntimeError::Failed(format!("no volume {id}")))?;
        Ok(crate::VolumeUsage {
            used_bytes: 0,
            size_bytes: size,
        })
    }

    async fn volume_list(
        &self,
        id: &str,
        path: &str,
    ) -> Result<Vec<crate::VolumeEntry>, RuntimeError> {
        let st = self.enter("volume_list", None)?;
        let dir = path.trim_matches('/');
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut names = std::collections::BTreeMap::new();
        for ((v, p), data) in &st.volume_files {
            if v != id {
                continue;
            }
            if let Some(rest) = p.strip_prefix(&prefix) {
                match rest.split_once('/') {
                    Some((d, _)) => names.insert(d.to_string(), (true, 0)),
                    None => names.insert(rest.to_string(), (false, data.len() as u64)),
                };
            }
        }
        Ok(names
            .into_iter()
            .map(|(name, (is_dir, size))| crate::VolumeEntry {
                name,
                is_dir,
                symlink: None,
                size,
                mode: if is_dir { 0o755 } else { 0o644 },
                uid: 1000,
                gid: 1000,
                modified_at_ms: 0,
            })
            .collect())
    }

    async fn volume_read(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(u64, crate::ByteSource), RuntimeError> {
        let st = self.enter("volume_read", None)?;
        let data = st
            .volume_files
            .get(&(id.to_string(), path.trim_matches('/').to_string()))
            .cloned()
            .ok_or_else(|| RuntimeError::PathNotFound(format!("{path}: no such file")))?;
        Ok((data.len() as u64, Box::new(std::io::Cursor::new(data))))
    }

    async fn volume_write(
        &self,
        id: &str,
        path: &str,
        mut body: crate::ByteSource,
    ) -> Result<u64, RuntimeError> {
        use tokio::io::AsyncReadExt;
        drop(self.enter("volume_write", None)?);
        let mut data = Vec::new();
        body.read_to_end(&mut data)
            .await
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        let n = data.len() as u64;
        self.lock()
            .volume_files
            .insert((id.to_string(), path.trim_matches('/').to_string()), data);
        Ok(n)
    }

    async fn volume_remove(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), RuntimeError> {
        let mut st = self.enter("volume_remove", None)?;
        let p = path.trim_matches('/').to_string();
        let key = (id.to_string(), p.clone());
        if st.volume_files.remove(&key).is_some() {
            return Ok(());
        }
        let prefix = format!("{p}/");
        let below: Vec<_> = st
            .volume_files
            .keys()
            .filter(|(v, f)| v == id && f.starts_with(&prefix))
            .cloned()
            .collect();
        if below.is_empty() {
            return Err(RuntimeError::PathNotFound(format!("{path}: no such file")));
        }
        if !recursive {
            return Err(RuntimeError::BadPath(format!(
                "{path}: the directory is not empty"
            )));
        }
        for k in below {
            st.volume_files.remove(&k);
        }
        Ok(())
    }

    async fn has_build_context(&self, sha256: &str) -> Result<bool, RuntimeError> {
        let st = self.enter("has_build_context", None)?;
        Ok(st.contexts.contains_key(sha256))
    }

    async fn put_build_context(
        &self,
        sha256: &str,
        mut body: crate::ByteSource,
    ) -> Result<(), RuntimeError> {
        use tokio::io::AsyncReadExt;
        drop(self.enter("put_build_context", None)?);
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes)
            .await
            .map_err(|e| RuntimeError::Failed(format!("reading the context: {e}")))?;
        self.lock().contexts.insert(sha256.to_string(), bytes);
        Ok(())
    }

    async fn remove_image(&self, name: &str) -> Result<bool, RuntimeError> {
        let mut st = self.enter("remove_image", None)?;
        let before = st.images.len();
        st.images.retain(|i| i.name != name);
        Ok(st.images.len() != before)
    }

    async fn fork(
        &self,
        parent: &str,
        child: &str,
        image: &str,
    ) -> Result<crate::ForkedDisk, RuntimeError> {
        let mut st = self.enter("fork", Some(parent))?;
        running(&mut st, parent)?;
        let info = ImageInfo {
            name: image.to_string(),
            digest: format!("sha256:{:064x}", image.len()),
            size_bytes: 1 << 20,
            created_at_ms: 0,
            entrypoint: vec![],
            source: None,
            layers: 1,
        };
        st.sandboxes.entry(child.to_string()).or_default().disk = true;
        st.images.retain(|i| i.name != image);
        st.images.push(info.clone());
        Ok(crate::ForkedDisk {
            image: info,
            copy_on_write: true,
        })
    }

    async fn commit(
        &self,
        id: &str,
        name: &str,
        _log: crate::LogSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let mut st = self.enter("commit", Some(id))?;
        running(&mut st, id)?;
        let info = ImageInfo {
            name: name.to_string(),
            digest: format!("sha256:{:064x}", name.len()),
            size_bytes: 3 << 20,
            created_at_ms: 0,
            entrypoint: vec![],
            source: None,
            layers: 2,
        };
        st.images.retain(|i| i.name != name);
        st.images.push(info.clone());
        Ok(info)
    }
}
