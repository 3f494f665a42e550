//! Snapshots: the images an organization's sandboxes start from
//! (`SnapshotService`), pulled from a registry onto a runner in the
//! background (`pending → pulling → active | error`), with their log kept
//! line by line in the store so any server can stream it; the built-in
//! image is listed beside them as a general snapshot. Also the
//! organization's registry credentials (`/api/docker-registry`), sealed at
//! rest and matched to pulls by registry host.

use crate::auth::Principal;
use crate::dto::{self, SnapshotDto};
use crate::error::ApiError;
use crate::service::{DEFAULT_CPU, DEFAULT_DISK_GIB, DEFAULT_MEMORY_GIB, MAX_CPU, MAX_MEMORY_GIB};
use crate::AppState;
use atoll_runtime_api::{ImageInfo, ImagePull, Runtime, RuntimeError};
use atoll_store::{RegistryRecord, SnapshotRecord};
use atoll_types::image_ref::Reference;
use atoll_types::time::{now_millis, rfc3339_millis};
use std::sync::Arc;

pub const PENDING: &str = "pending";
pub const PULLING: &str = "pulling";
pub const ACTIVE: &str = "active";
pub const INACTIVE: &str = "inactive";
pub const ERROR: &str = "error";
pub const BUILD_FAILED: &str = "build_failed";
pub const REMOVING: &str = "removing";
pub const BUILDING: &str = "building";
/// How often a server working on a snapshot says so.
const HEARTBEAT_MS: u64 = 10_000;
/// A pull, build or capture not heard of for this long was abandoned (its
/// server stopped): pulls and builds start over, captures fail.
pub const STALE_MS: i64 = 60_000;

/// `ATOLL_SNAPSHOT_STALE_SECS` (default [`STALE_MS`]): how long work on a
/// snapshot may go unheard of before it counts as abandoned.
pub(crate) fn stale_ms() -> i64 {
    std::env::var("ATOLL_SNAPSHOT_STALE_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .map_or(STALE_MS, |v| (v * 1000.0) as i64)
}

/// `ATOLL_SNAPSHOT_KEEPER_SECS` (default 20): how often the keeper looks.
fn keeper_interval() -> std::time::Duration {
    std::env::var("ATOLL_SNAPSHOT_KEEPER_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .map_or(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_secs_f64,
        )
}

/// Stops a heartbeat when dropped.
pub(crate) struct HeartbeatGuard(tokio::task::JoinHandle<()>);

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a Dockerfile build may take.
pub const BUILD_TIMEOUT_SECS: u64 = 1800;
/// A sandbox's filesystem is being captured (the SDKs know this state).
pub const SNAPSHOTTING: &str = "snapshotting";

/// States a snapshot's work has ended in.
pub fn is_settled(state: &str) -> bool {
    matches!(state, ACTIVE | INACTIVE | ERROR | BUILD_FAILED)
}

/// The name runners store a snapshot's image under.
pub fn image_ref_of(snapshot_id: &str) -> String {
    format!("atoll/snapshots/{snapshot_id}")
}

/// Images of runners' stores that are not built-in snapshots: an
/// organization's (reached only through its own snapshot rows), and a
/// builder's bases and cached steps. No API name reaches them directly.
pub fn is_internal_image(name: &str) -> bool {
    name.starts_with("atoll/snapshots/")
        || name.starts_with("atoll/build-")
        || name.starts_with(crate::forks::FORK_IMAGE_PREFIX)
}

/// The snapshot id an image ref names, if it is a snapshot's.
pub fn snapshot_id_of(image_ref: &str) -> Option<&str> {
    image_ref.strip_prefix("atoll/snapshots/")
}

fn valid_snapshot_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && !n.starts_with(['.', '/', '-'])
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b))
        && !n.contains("..")
}

/// The image a Dockerfile that only names a base image (`FROM x`, as the
/// SDKs send for `image="python:3.12-slim"`) runs; `None` for one that
/// builds something (or does not parse).
pub fn from_only(dockerfile: &str) -> Option<String> {
    match atoll_types::dockerfile::parse(dockerfile, &Default::default())
        .ok()?
        .as_slice()
    {
        [only] => first_image(only),
        _ => None,
    }
}

/// The image a Dockerfile's `FROM` names.
pub fn first_from(dockerfile: &str) -> Option<String> {
    atoll_types::dockerfile::parse(dockerfile, &Default::default())
        .ok()?
        .iter()
        .find_map(first_image)
}

fn first_image(step: &atoll_types::dockerfile::Step) -> Option<String> {
    match &step.instruction {
        atoll_types::dockerfile::Instruction::From { image } => Some(image.clone()),
        _ => None,
    }
}

/// A registry's host as a reference names it (`https://ghcr.io/` →
/// `ghcr.io`, Docker Hub's many names → `docker.io`).
pub fn registry_host(url: &str) -> Option<String> {
    let rest = url
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = rest
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return None;
    }
    Some(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    })
}

impl AppState {
    pub fn snapshot_record_dto(&self, r: &SnapshotRecord) -> SnapshotDto {
        SnapshotDto {
            id: r.id.clone(),
            organization_id: Some(r.organization_id.clone()),
            general: false,
            name: r.name.clone(),
            image_name: r.image_name.clone(),
            state: r.state.clone(),
            size: r.size_bytes.map(|b| b as f64 / f64::from(1u32 << 30)),
            entrypoint: r.entrypoint.clone(),
            cpu: r.cpu,
            gpu: r.gpu,
            mem: r.mem,
            disk: r.disk,
            error_reason: r.error_reason.clone(),
            created_at: rfc3339_millis(r.created_at),
            updated_at: rfc3339_millis(r.updated_at),
            last_used_at: r.last_used_at.map(rfc3339_millis),
            source_sandbox_id: r.source_sandbox_id.clone(),
            build_info: r.build_info.as_ref().map(|b| dto::BuildInfo {
                dockerfile_content: b
                    .get("dockerfileContent")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                // An imported archive shows as its one context.
                context_hashes: b
                    .get("contextHashes")
                    .and_then(|v| {
                        v.as_array().map(|a| {
                            a.iter()
                                .filter_map(|h| h.as_str().map(str::to_string))
                                .collect()
                        })
                    })
                    .or_else(|| archive_of(r).map(|h| vec![h])),
                created_at: rfc3339_millis(r.created_at),
                updated_at: rfc3339_millis(r.updated_at),
                snapshot_ref: r.image_ref.clone(),
            }),
            region_ids: r.region_id.clone().map(|r| vec![r]),
            reference: r.image_ref.clone(),
        }
    }

    /// `POST /api/snapshots`: records the snapshot and pulls it in the
    /// background.
    pub async fn create_snapshot(
        &self,
        p: &Principal,
        req: dto::CreateSnapshot,
    ) -> Result<SnapshotDto, ApiError> {
        let name = req.name.trim().to_string();
        if !valid_snapshot_name(&name) {
            return Err(ApiError::BadRequest(format!(
                "invalid snapshot name {name:?}: use 1-255 letters, digits and . _ : @ / -"
            )));
        }
        if name == self.config.default_snapshot {
            return Err(ApiError::Conflict(format!(
                "{name} is the built-in snapshot's name"
            )));
        }
        let (image_name, build_info) = match (&req.image_name, &req.build_info, &req.image_archive)
        {
            (None, None, Some(archive)) => {
                // Uploaded first, as a build context is.
                self.build_contexts(&p.organization_id, std::slice::from_ref(archive))
                    .await?;
                (None, Some(serde_json::json!({ "imageArchive": archive })))
            }
            (None, None, None) => {
                return Err(ApiError::BadRequest(
                    "imageName, buildInfo or imageArchive is required".into(),
                ))
            }
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give one of imageName, buildInfo and imageArchive".into(),
                ))
            }
            (Some(i), None, None) => (Some(i.trim().to_string()), None),
            (None, Some(b), None) => {
                let base = self.base_of_build(b)?;
                // Every context must have been uploaded.
                self.build_contexts(
                    &p.organization_id,
                    b.context_hashes.as_deref().unwrap_or_default(),
                )
                .await?;
                (
                    self.pulled_base(&p.organization_id, base).await?,
                    Some(build_info_json(b)),
                )
            }
        };
        // A registry reference to pull; none: a Dockerfile to build.
        let reference = image_name
            .as_deref()
            .map(|i| Reference::parse(i).map_err(|e| ApiError::BadRequest(e.to_string())))
            .transpose()?;
        if let Some(ep) = &req.entrypoint {
            if ep.is_empty() || ep.iter().any(|a| a.is_empty() || a.contains('\0')) {
                return Err(ApiError::BadRequest(
                    "entrypoint must be a non-empty list of non-empty strings".into(),
                ));
            }
        }
        let region_id = match req.region_id.as_deref() {
            Some(r) => Some(self.known_region(r).await?),
            None => None,
        };
        if req.gpu.unwrap_or(0) != 0 {
            return Err(ApiError::BadRequest("this server has no GPUs".into()));
        }
        let now = now_millis();
        let id = uuid::Uuid::new_v4().to_string();
        let rec = SnapshotRecord {
            image_ref: image_ref_of(&id),
            id,
            organization_id: p.organization_id.clone(),
            name,
            image_name: reference.map(|r| r.to_string()),
            state: PENDING.into(),
            error_reason: None,
            size_bytes: None,
            entrypoint: req.entrypoint.clone(),
            cpu: crate::service::in_range("cpu", req.cpu.unwrap_or(DEFAULT_CPU), 1, MAX_CPU)?,
            gpu: 0,
            mem: crate::service::in_range(
                "memory",
                req.memory.unwrap_or(DEFAULT_MEMORY_GIB),
                1,
                MAX_MEMORY_GIB,
            )?,
            disk: crate::service::in_range(
                "disk",
                req.disk.unwrap_or(DEFAULT_DISK_GIB),
                1,
                crate::service::MAX_DISK_GIB,
            )?,
            build_info,
            source_sandbox_id: None,
            region_id,
            created_at: now,
            updated_at: now,
            last_used_at: None,
        };
        self.store.insert_snapshot(&rec).await?;
        let dto = self.snapshot_record_dto(&rec);
        let s = self.clone();
        tokio::spawn(async move { s.pull_snapshot(rec).await });
        Ok(dto)
    }

    /// What a `buildInfo` makes: the image a one-`FROM` Dockerfile names
    /// (pulled), or `None` (built by the runner's builder).
    pub(crate) fn base_of_build(
        &self,
        b: &dto::CreateBuildInfo,
    ) -> Result<Option<String>, ApiError> {
        if b.dockerfile_content.len() > 1 << 20 {
            return Err(ApiError::BadRequest(
                "dockerfileContent is larger than 1 MiB".into(),
            ));
        }
        if let Some(bad) = b
            .context_hashes
            .iter()
            .flatten()
            .find(|h| !crate::object_storage::valid_context_hash(h))
        {
            return Err(ApiError::BadRequest(format!(
                "contextHashes: {bad:?} is not a context hash"
            )));
        }
        if b.context_hashes.as_ref().is_some_and(|c| c.len() > 1000) {
            return Err(ApiError::BadRequest(
                "contextHashes: at most 1000 contexts".into(),
            ));
        }
        // The runner's builder parses it the same way: a Dockerfile it
        // would refuse is refused here, with its line.
        atoll_types::dockerfile::parse(&b.dockerfile_content, &Default::default())
            .map_err(|e| ApiError::BadRequest(format!("dockerfileContent: {e}")))?;
        Ok(from_only(&b.dockerfile_content))
    }

    /// A one-`FROM` Dockerfile's image, unless it names one of the
    /// organization's snapshots (then it is built over that one: `None`).
    async fn pulled_base(
        &self,
        org: &str,
        base: Option<String>,
    ) -> Result<Option<String>, ApiError> {
        let Some(base) = base else { return Ok(None) };
        let own = self.store.snapshot_in_org(org, &base).await?;
        Ok(if own.is_some() { None } else { Some(base) })
    }

    /// Pulls (or builds) a pending snapshot's image on a runner of its
    /// region and settles its state; its log goes to the store as it comes.
    pub(crate) async fn pull_snapshot(&self, mut rec: SnapshotRecord) {
        let building = rec.image_name.is_none();
        rec.state = if building { BUILDING } else { PULLING }.into();
        rec.updated_at = now_millis();
        match self.store.set_snapshot_state(&rec, PENDING).await {
            Ok(true) => {}
            Ok(false) => return, // deleted, or another server took it
            Err(e) => {
                tracing::warn!(snapshot = %rec.id, error = %e, "could not start a pull");
                return;
            }
        }
        atoll_types::failpoint::hit("snapshot.pull.after_transition");
        let beat = self.heartbeat(&rec.id, &rec.state);
        let pulled = async {
            let runner = self.pick_runner(rec.region_id.as_deref()).await?;
            let rt = self.runtime_of_runner(&runner)?;
            let info = self.make_on(&rt, &rec, &rec.id).await?;
            Ok::<_, ApiError>((rt, info))
        }
        .await;
        drop(beat);
        let from = rec.state.clone();
        let rt = match pulled {
            Ok((rt, info)) => {
                rec.state = ACTIVE.into();
                rec.size_bytes = Some(info.size_bytes as i64);
                if rec.entrypoint.is_none() && !info.entrypoint.is_empty() {
                    rec.entrypoint = Some(info.entrypoint);
                }
                Some(rt)
            }
            Err(e) => {
                rec.state = if building { BUILD_FAILED } else { ERROR }.into();
                rec.error_reason = Some(e.to_string());
                let _ = self
                    .store
                    .append_log(&rec.id, &[format!("Error: {e}")])
                    .await;
                None
            }
        };
        rec.updated_at = now_millis();
        match self.store.set_snapshot_state(&rec, &from).await {
            Ok(true) => {}
            Ok(false) => {
                // Deleted while it was pulled: drop what was pulled.
                if let Some(rt) = rt {
                    let _ = rt.remove_image(&rec.image_ref).await;
                }
            }
            Err(e) => tracing::warn!(snapshot = %rec.id, error = %e, "could not record a pull"),
        }
    }

    /// Makes `rec`'s image on `rt`: pulls it, or builds its Dockerfile.
    pub(crate) async fn make_on(
        &self,
        rt: &Arc<dyn Runtime>,
        rec: &SnapshotRecord,
        log_owner: &str,
    ) -> Result<ImageInfo, ApiError> {
        if rec.image_name.is_some() {
            return self.pull_on(rt, rec, log_owner).await;
        }
        if let Some(archive) = archive_of(rec) {
            return self.import_on(rt, rec, &archive, log_owner).await;
        }
        let dockerfile = rec
            .build_info
            .as_ref()
            .and_then(|b| b.get("dockerfileContent"))
            .and_then(|d| d.as_str())
            .ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "snapshot {} was captured from a sandbox on another runner and is only stored there",
                    rec.name
                ))
            })?
            .to_string();
        let registries = self.org_registries(&rec.organization_id).await?;
        // `FROM` one of the organization's snapshots: that image, made on
        // this runner first if it lacks it.
        let mut base_image = None;
        if let Some(from) = first_from(&dockerfile) {
            if let Some(base) = self
                .store
                .snapshot_in_org(&rec.organization_id, &from)
                .await?
                .filter(|b| b.state == ACTIVE && b.id != rec.id)
            {
                if rt.image(&base.image_ref).await?.is_none() {
                    Box::pin(self.make_on(rt, &base, log_owner)).await?;
                }
                base_image = Some(base.image_ref);
            }
        }
        // The build context: uploaded by the client through the
        // S3-compatible endpoint, sent to the runner if it lacks it.
        let hashes: Vec<String> = rec
            .build_info
            .as_ref()
            .and_then(|b| b.get("contextHashes"))
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let contexts = self.build_contexts(&rec.organization_id, &hashes).await?;
        self.ship_contexts(rt, &contexts).await?;
        let build = atoll_runtime_api::ImageBuild {
            contexts: contexts.iter().map(|c| c.sha256.clone()).collect(),
            name: rec.image_ref.clone(),
            dockerfile,
            build_args: Default::default(),
            base_image,
            registries,
            limits: atoll_runtime_api::Limits {
                cpus: rec.cpu as u32,
                memory_bytes: (rec.mem as u64) << 30,
                pids: crate::service::DEFAULT_PIDS,
            },
            disk_bytes: (rec.disk.max(DEFAULT_DISK_GIB) as u64) << 30,
            timeout_secs: BUILD_TIMEOUT_SECS,
            cache_scope: rec.organization_id.clone(),
        };
        let (log, writer) = self.log_writer(log_owner);
        let result = rt.build_image(&build, &log).await;
        drop(log);
        let _ = writer.await;
        result.map_err(|e| match e {
            RuntimeError::ImageNotFound(r) => {
                ApiError::NotFound(format!("image {r} was not found in its registry"))
            }
            RuntimeError::Failed(m) => ApiError::BadRequest(m),
            e => ApiError::from(e),
        })
    }

    /// Imports `rec`'s uploaded image archive on `rt` (sent to it first
    /// if it lacks it).
    async fn import_on(
        &self,
        rt: &Arc<dyn Runtime>,
        rec: &SnapshotRecord,
        archive: &str,
        log_owner: &str,
    ) -> Result<ImageInfo, ApiError> {
        let objects = self
            .build_contexts(&rec.organization_id, &[archive.to_string()])
            .await?;
        self.ship_contexts(rt, &objects).await?;
        let import = atoll_runtime_api::ImageImport {
            name: rec.image_ref.clone(),
            archive: objects[0].sha256.clone(),
        };
        let (log, writer) = self.log_writer(log_owner);
        let result = rt.import_image(&import, &log).await;
        drop(log);
        let _ = writer.await;
        result.map_err(|e| match e {
            RuntimeError::Failed(m) => ApiError::BadRequest(m),
            e => ApiError::from(e),
        })
    }

    /// Marks the uploaded objects active snapshots were made from as used,
    /// so the collector keeps what a runner without the image needs.
    pub(crate) async fn keep_snapshot_objects(&self) -> Result<(), ApiError> {
        let now = now_millis();
        for rec in self.store.snapshots_in_state(ACTIVE).await? {
            let Some(b) = &rec.build_info else { continue };
            let mut hashes: Vec<String> = b
                .get("contextHashes")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            hashes.extend(archive_of(&rec));
            for h in hashes {
                if crate::object_storage::valid_context_hash(&h) {
                    let key = crate::object_storage::context_key(&rec.organization_id, &h);
                    self.store
                        .touch_object(&rec.organization_id, &key, now)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// A log sink whose lines go to the store under `owner`, and the task
    /// writing them (await it after dropping the sink).
    fn log_writer(
        &self,
        owner: &str,
    ) -> (
        impl Fn(&str) + Send + Sync + 'static,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let store = self.store.clone();
        let owner = owner.to_string();
        let writer = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                if let Err(e) = store.append_log(&owner, &batch).await {
                    tracing::warn!(owner = %owner, error = %e, "could not store log lines");
                }
            }
        });
        let log = move |line: &str| {
            let _ = tx.send(line.to_string());
        };
        (log, writer)
    }

    /// Pulls `rec`'s image onto `rt`, logging under `log_owner`.
    pub(crate) async fn pull_on(
        &self,
        rt: &Arc<dyn Runtime>,
        rec: &SnapshotRecord,
        log_owner: &str,
    ) -> Result<ImageInfo, ApiError> {
        let reference = rec
            .image_name
            .clone()
            .ok_or_else(|| ApiError::Internal(format!("snapshot {} names no image", rec.id)))?;
        let creds = self
            .registry_credentials(&rec.organization_id, &reference)
            .await?;
        let pull = ImagePull {
            name: rec.image_ref.clone(),
            reference: reference.clone(),
            username: creds.as_ref().map(|c| c.0.clone()),
            password: creds.map(|c| c.1),
            scope: rec.organization_id.clone(),
        };
        let (log, writer) = self.log_writer(log_owner);
        let result = rt.pull_image(&pull, &log).await;
        drop(log);
        let _ = writer.await;
        result.map_err(|e| match e {
            RuntimeError::ImageNotFound(r) => {
                ApiError::NotFound(format!("image {r} was not found in its registry"))
            }
            e => ApiError::from(e),
        })
    }

    /// The organization's registry credentials, passwords opened, by the
    /// registry host references name.
    async fn org_registries(
        &self,
        org: &str,
    ) -> Result<Vec<atoll_runtime_api::RegistryCredential>, ApiError> {
        let mut out = Vec::new();
        for reg in self.store.registries_of_org(org).await? {
            let Some(host) = registry_host(&reg.url) else {
                continue;
            };
            let password = self
                .secrets_key
                .open(&reg.sealed_password, &registry_aad(&reg))
                .map_err(|e| ApiError::Internal(format!("registry {}: {e}", reg.id)))?;
            out.push(atoll_runtime_api::RegistryCredential {
                registry: host,
                username: reg.username,
                password,
            });
        }
        Ok(out)
    }

    /// The organization's credentials for the registry `reference` is in.
    async fn registry_credentials(
        &self,
        org: &str,
        reference: &str,
    ) -> Result<Option<(String, String)>, ApiError> {
        let Ok(r) = Reference::parse(reference) else {
            return Ok(None);
        };
        Ok(self
            .org_registries(org)
            .await?
            .into_iter()
            .find(|c| c.registry == r.registry)
            .map(|c| (c.username, c.password)))
    }

    /// The organization's snapshot by id or name (404 otherwise).
    pub async fn find_snapshot(
        &self,
        p: &Principal,
        id_or_name: &str,
    ) -> Result<SnapshotRecord, ApiError> {
        self.store
            .snapshot_in_org(&p.organization_id, id_or_name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Snapshot {id_or_name} not found")))
    }

    /// Every snapshot the organization can use: the built-in ones, then
    /// its own.
    pub async fn list_snapshots(&self, p: &Principal) -> Result<Vec<SnapshotDto>, ApiError> {
        let mut out: Vec<SnapshotDto> = self
            .image_catalog()
            .await?
            .iter()
            .filter(|i| !is_internal_image(&i.name))
            .map(|i| self.snapshot_dto(i))
            .collect();
        out.extend(
            self.store
                .snapshots_of_org(&p.organization_id)
                .await?
                .iter()
                .map(|r| self.snapshot_record_dto(r)),
        );
        Ok(out)
    }

    pub async fn get_snapshot(&self, p: &Principal, id: &str) -> Result<SnapshotDto, ApiError> {
        if let Some(r) = self.store.snapshot_in_org(&p.organization_id, id).await? {
            return Ok(self.snapshot_record_dto(&r));
        }
        self.image_catalog()
            .await?
            .iter()
            .filter(|i| !is_internal_image(&i.name))
            .find(|i| i.name == id || i.digest == id)
            .map(|i| self.snapshot_dto(i))
            .ok_or_else(|| ApiError::NotFound(format!("Snapshot {id} not found")))
    }

    /// Deletes a snapshot no sandbox uses (409 otherwise), and its image
    /// from every runner.
    pub async fn delete_snapshot(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        let mut rec = match self.store.snapshot_in_org(&p.organization_id, id).await? {
            Some(r) => r,
            None => {
                let builtin = !is_internal_image(id)
                    && self
                        .image_catalog()
                        .await?
                        .iter()
                        .any(|i| i.name == id || i.digest == id);
                return Err(if builtin {
                    ApiError::Forbidden(format!("Snapshot {id} is built in and cannot be deleted"))
                } else {
                    ApiError::NotFound(format!("Snapshot {id} not found"))
                });
            }
        };
        let from = rec.state.clone();
        if from != REMOVING {
            // New sandboxes are refused from here on, then the count.
            rec.state = REMOVING.into();
            rec.updated_at = now_millis();
            if !self.store.set_snapshot_state(&rec, &from).await? {
                return Err(ApiError::Conflict(format!(
                    "Snapshot {id} changed meanwhile; retry"
                )));
            }
            let users = self.store.sandboxes_using_image(&rec.image_ref).await?;
            if users > 0 {
                rec.state = from.clone();
                self.store.set_snapshot_state(&rec, REMOVING).await?;
                return Err(ApiError::Conflict(format!(
                    "Snapshot {} is in use by {users} sandbox(es); delete them first",
                    rec.name
                )));
            }
        }
        for (runner, rt) in self.all_runtimes().await? {
            if let Err(e) = rt.remove_image(&rec.image_ref).await {
                tracing::warn!(snapshot = %rec.id, %runner, error = %e, "could not remove a snapshot's image");
            }
        }
        self.store.delete_snapshot(&rec.id).await?;
        Ok(())
    }

    /// `activate` (`inactive → active`) or `deactivate` (`active →
    /// inactive`): an inactive snapshot starts no new sandbox.
    pub async fn set_snapshot_active(
        &self,
        p: &Principal,
        id: &str,
        active: bool,
    ) -> Result<SnapshotDto, ApiError> {
        let mut rec = self.find_snapshot(p, id).await?;
        let (from, to) = if active {
            (INACTIVE, ACTIVE)
        } else {
            (ACTIVE, INACTIVE)
        };
        if rec.state == to {
            return Ok(self.snapshot_record_dto(&rec));
        }
        if rec.state != from {
            return Err(ApiError::BadRequest(format!(
                "Snapshot {} is {}; only {from} snapshots can be made {to}",
                rec.name, rec.state
            )));
        }
        rec.state = to.into();
        rec.updated_at = now_millis();
        if !self.store.set_snapshot_state(&rec, from).await? {
            return Err(ApiError::Conflict(format!(
                "Snapshot {} changed meanwhile; retry",
                rec.name
            )));
        }
        Ok(self.snapshot_record_dto(&rec))
    }

    /// Pending snapshots nobody took are pulled; pulls and builds whose
    /// server stopped (no heartbeat for [`STALE_MS`]) start over, captures
    /// end in `error`. Run at boot and every 20 s: taking a snapshot is a
    /// conditional update, so several servers never work on one twice.
    pub async fn resume_snapshot_work(&self) {
        if let Ok(list) = self.store.snapshots_in_state(PENDING).await {
            for rec in list {
                let s = self.clone();
                tokio::spawn(async move { s.pull_snapshot(rec).await });
            }
        }
        // Work nobody has heard of for a while: its server stopped. A pull
        // or build starts over (both are idempotent); a capture cannot (its
        // sandbox moved on).
        let stale = now_millis() - stale_ms();
        for state in [PULLING, BUILDING, SNAPSHOTTING] {
            let Ok(list) = self.store.snapshots_in_state(state).await else {
                continue;
            };
            for mut rec in list.into_iter().filter(|r| r.updated_at < stale) {
                rec.updated_at = now_millis();
                if state == SNAPSHOTTING {
                    rec.state = ERROR.into();
                    rec.error_reason =
                        Some("the server capturing the sandbox stopped; capture it again".into());
                    let _ = self.store.set_snapshot_state(&rec, state).await;
                    continue;
                }
                rec.state = PENDING.into();
                if matches!(self.store.set_snapshot_state(&rec, state).await, Ok(true)) {
                    tracing::info!(snapshot = %rec.id, "resuming an abandoned {state}");
                    let _ = self
                        .store
                        .append_log(
                            &rec.id,
                            &[format!(
                                "The server working on this stopped; starting the {state} over"
                            )],
                        )
                        .await;
                    let s = self.clone();
                    tokio::spawn(async move { s.pull_snapshot(rec).await });
                }
            }
        }
    }

    /// Runs [`AppState::resume_snapshot_work`] now and every 20 s.
    pub fn spawn_snapshot_keeper(&self) {
        let s = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(keeper_interval());
            let mut last_kept = None;
            loop {
                tick.tick().await;
                s.resume_snapshot_work().await;
                s.resume_volume_work().await;
                // Build contexts unused for a week, uploads never finished;
                // those of active snapshots count as used (checked hourly).
                if last_kept.is_none_or(|t: std::time::Instant| {
                    t.elapsed() >= std::time::Duration::from_secs(3600)
                }) {
                    match s.keep_snapshot_objects().await {
                        Ok(()) => last_kept = Some(std::time::Instant::now()),
                        Err(e) => tracing::warn!(error = %e, "marking snapshots' uploads used"),
                    }
                }
                let now = now_millis();
                match s
                    .store
                    .collect_objects(
                        now - crate::object_storage::OBJECT_TTL_MS,
                        now - crate::object_storage::STALE_UPLOAD_MS,
                    )
                    .await
                {
                    Ok((0, 0)) => {}
                    Ok((objects, uploads)) => {
                        tracing::info!(objects, uploads, "collected unused build contexts")
                    }
                    Err(e) => tracing::warn!(error = %e, "collecting build contexts"),
                }
            }
        });
    }

    /// Keeps `updated_at` of a snapshot in `state` fresh while work on it
    /// runs here; the keeper takes a snapshot nobody refreshes for
    /// [`STALE_MS`] as abandoned. Stops when the returned guard drops.
    fn heartbeat(&self, id: &str, state: &str) -> HeartbeatGuard {
        let store = self.store.clone();
        let (id, state) = (id.to_string(), state.to_string());
        HeartbeatGuard(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(HEARTBEAT_MS));
            tick.tick().await;
            loop {
                tick.tick().await;
                match store.touch_snapshot_in(&id, &state, now_millis()).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!(snapshot = %id, error = %e, "snapshot heartbeat"),
                }
            }
        }))
    }

    /// Records that a snapshot was used now.
    pub(crate) async fn touch_snapshot(&self, s: &SnapshotRecord) {
        let mut t = s.clone();
        t.last_used_at = Some(now_millis());
        let _ = self.store.set_snapshot_state(&t, &s.state).await;
    }

    /// The organization's snapshot for a `buildInfo` (named by a hash of
    /// its content, so the same Dockerfile reuses it), made and pulled in
    /// the background if it is new.
    pub(crate) async fn snapshot_for_build(
        &self,
        p: &Principal,
        b: &dto::CreateBuildInfo,
    ) -> Result<SnapshotRecord, ApiError> {
        use sha2::Digest as _;
        let reference = self
            .pulled_base(&p.organization_id, self.base_of_build(b)?)
            .await?
            .map(|base| Reference::parse(&base).map_err(|e| ApiError::BadRequest(e.to_string())))
            .transpose()?;
        // Keyed by the contexts' content (what was uploaded under each
        // hash), not by the client's hashes alone.
        let contexts = self
            .build_contexts(
                &p.organization_id,
                b.context_hashes.as_deref().unwrap_or_default(),
            )
            .await?;
        let mut h = sha2::Sha256::new();
        h.update(b.dockerfile_content.as_bytes());
        for c in &contexts {
            h.update(b"\0");
            h.update(c.sha256.as_bytes());
        }
        let name = format!("build-{}", &hex::encode(h.finalize())[..16]);
        if let Some(existing) = self
            .store
            .snapshot_in_org(&p.organization_id, &name)
            .await?
        {
            if !matches!(existing.state.as_str(), ERROR | BUILD_FAILED) {
                return Ok(existing);
            }
            // A failed build is tried again.
            self.store.delete_snapshot(&existing.id).await?;
        }
        let now = now_millis();
        let id = uuid::Uuid::new_v4().to_string();
        let rec = SnapshotRecord {
            image_ref: image_ref_of(&id),
            id,
            organization_id: p.organization_id.clone(),
            name: name.clone(),
            image_name: reference.map(|r| r.to_string()),
            state: PENDING.into(),
            error_reason: None,
            size_bytes: None,
            entrypoint: None,
            cpu: DEFAULT_CPU,
            gpu: 0,
            mem: DEFAULT_MEMORY_GIB,
            disk: DEFAULT_DISK_GIB,
            build_info: Some(build_info_json(b)),
            source_sandbox_id: None,
            region_id: None,
            created_at: now,
            updated_at: now,
            last_used_at: None,
        };
        match self.store.insert_snapshot(&rec).await {
            Ok(()) => {
                let s = self.clone();
                let pulled = rec.clone();
                tokio::spawn(async move { s.pull_snapshot(pulled).await });
                Ok(rec)
            }
            // Another create of the same content won the race: use its.
            Err(atoll_store::StoreError::Conflict(_)) => self
                .store
                .snapshot_in_org(&p.organization_id, &name)
                .await?
                .ok_or_else(|| ApiError::Conflict("the build's snapshot vanished; retry".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Inserts a sandbox whose snapshot is still being made in
    /// `pending_build` and starts it once the snapshot is active.
    pub(crate) async fn launch_after_build(
        &self,
        mut row: atoll_store::SandboxRecord,
        snapshot: SnapshotRecord,
    ) -> Result<dto::Sandbox, ApiError> {
        use crate::lifecycle::state;
        row.state = state::PENDING_BUILD;
        self.insert_within_quota(&row).await?;
        let dto = self.to_dto(&row);
        self.wait_for_build(row.id, snapshot.id);
        Ok(dto)
    }

    /// Starts the `pending_build` sandbox once its snapshot is active (in
    /// the background).
    pub(crate) fn wait_for_build(&self, sandbox_id: String, snapshot_id: String) {
        let s = self.clone();
        tokio::spawn(async move { s.start_after_build(sandbox_id, snapshot_id).await });
    }

    async fn start_after_build(&self, sandbox_id: String, snapshot_id: String) {
        use crate::lifecycle::state;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        let outcome: Result<(), String> = loop {
            match self.store.snapshot(&snapshot_id).await {
                Ok(Some(s)) if s.state == ACTIVE => break Ok(()),
                Ok(Some(s)) if is_settled(&s.state) || s.state == REMOVING => {
                    break Err(s
                        .error_reason
                        .unwrap_or_else(|| format!("its snapshot is {}", s.state)))
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err("its snapshot was deleted".into()),
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox_id, error = %e, "reading a build's snapshot")
                }
            }
            if std::time::Instant::now() > deadline {
                break Err("its image was not ready within an hour".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        let lock = self.locks.get(&sandbox_id);
        let _guard = lock.lock().await;
        let mut r = match self.store.sandbox(&sandbox_id).await {
            Ok(Some(r)) if r.state == state::PENDING_BUILD => r,
            _ => return, // deleted (or settled) meanwhile
        };
        let result = match outcome {
            Err(reason) => self.save(&mut r, state::BUILD_FAILED, Some(reason)).await,
            Ok(()) => match self.save(&mut r, state::CREATING, None).await {
                Ok(()) => self.start_created(&mut r).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            tracing::warn!(sandbox = %sandbox_id, error = %e, "sandbox did not start after its build");
        }
    }

    /// `POST /api/sandbox/{id}/snapshot`: captures a started sandbox's
    /// filesystem as a new snapshot of the organization. The sandbox is
    /// `snapshotting` (processes frozen for the capture) and then
    /// `started` again; the snapshot is `active` before that.
    pub async fn capture_sandbox(
        &self,
        p: &Principal,
        id_or_name: &str,
        req: dto::CreateSandboxSnapshot,
    ) -> Result<dto::Sandbox, ApiError> {
        use crate::lifecycle::Action;
        let name = req.name.trim().to_string();
        if !valid_snapshot_name(&name) || name == self.config.default_snapshot {
            return Err(ApiError::BadRequest(format!(
                "invalid snapshot name {name:?}: use 1-255 letters, digits and . _ : @ / -"
            )));
        }
        if req.include_memory == Some(true) {
            return Err(ApiError::BadRequest(
                "includeMemory: this server captures the filesystem only".into(),
            ));
        }
        let (mut r, guard, plan) = self.begin(p, id_or_name, Action::Snapshot).await?;
        let via = match plan {
            Ok(via) => via,
            Err(_) => unreachable!("a snapshot is never a no-op"),
        };
        let now = now_millis();
        let snapshot_id = uuid::Uuid::new_v4().to_string();
        let rec = SnapshotRecord {
            image_ref: image_ref_of(&snapshot_id),
            id: snapshot_id,
            organization_id: r.organization_id.clone(),
            name,
            image_name: None,
            state: SNAPSHOTTING.into(),
            error_reason: None,
            size_bytes: None,
            entrypoint: None,
            cpu: r.cpu,
            gpu: 0,
            mem: r.memory,
            disk: r.disk,
            build_info: None,
            source_sandbox_id: Some(r.id.clone()),
            region_id: None,
            created_at: now,
            updated_at: now,
            last_used_at: None,
        };
        self.store.insert_snapshot(&rec).await?;
        if let Err(e) = self.save(&mut r, via, None).await {
            let _ = self.store.delete_snapshot(&rec.id).await;
            return Err(e);
        }
        let dto = self.to_dto(&r);
        let s = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            s.finish_capture(r, rec).await;
        });
        Ok(dto)
    }

    async fn finish_capture(&self, mut r: atoll_store::SandboxRecord, mut rec: SnapshotRecord) {
        use crate::lifecycle::state;
        let beat = self.heartbeat(&rec.id, SNAPSHOTTING);
        let captured = async {
            let rt = self.rt(&r).await?;
            let (log, writer) = self.log_writer(&rec.id);
            let done = rt.commit(&r.id, &rec.image_ref, &log).await;
            drop(log);
            let _ = writer.await;
            done.map_err(ApiError::from)
        }
        .await;
        drop(beat);
        match captured {
            Ok(info) => {
                rec.state = ACTIVE.into();
                rec.size_bytes = Some(info.size_bytes as i64);
                rec.entrypoint = Some(info.entrypoint).filter(|e| !e.is_empty());
            }
            Err(e) => {
                tracing::warn!(sandbox = %r.id, error = %e, "capturing the sandbox failed");
                rec.state = ERROR.into();
                rec.error_reason = Some(e.to_string());
            }
        }
        rec.updated_at = now_millis();
        if let Err(e) = self.store.set_snapshot_state(&rec, SNAPSHOTTING).await {
            tracing::warn!(snapshot = %rec.id, error = %e, "could not record a capture");
        }
        if let Err(e) = self.save(&mut r, state::STARTED, None).await {
            tracing::warn!(sandbox = %r.id, error = %e, "could not record the end of a capture");
        }
    }

    // ---- registries ----------------------------------------------------

    pub fn registry_dto(&self, r: &RegistryRecord) -> dto::DockerRegistry {
        dto::DockerRegistry {
            id: r.id.clone(),
            name: r.name.clone(),
            url: r.url.clone(),
            username: r.username.clone(),
            project: r.project.clone(),
            registry_type: r.registry_type.clone(),
            created_at: rfc3339_millis(r.created_at),
            updated_at: rfc3339_millis(r.updated_at),
        }
    }

    pub async fn create_registry(
        &self,
        p: &Principal,
        req: dto::CreateDockerRegistry,
    ) -> Result<dto::DockerRegistry, ApiError> {
        let now = now_millis();
        let mut rec = RegistryRecord {
            id: uuid::Uuid::new_v4().to_string(),
            organization_id: p.organization_id.clone(),
            name: checked_registry_name(&req.name)?,
            url: checked_registry_url(&req.url)?,
            username: checked_username(&req.username)?,
            sealed_password: String::new(),
            project: req.project.unwrap_or_default(),
            registry_type: match req.registry_type.as_deref() {
                None | Some("organization") => "organization".into(),
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "registryType {other:?}: only organization registries can be added"
                    )))
                }
            },
            created_at: now,
            updated_at: now,
        };
        rec.sealed_password = self.seal_registry_password(&rec, &req.password)?;
        self.store.insert_registry(&rec).await?;
        Ok(self.registry_dto(&rec))
    }

    pub async fn update_registry(
        &self,
        p: &Principal,
        id: &str,
        req: dto::UpdateDockerRegistry,
    ) -> Result<dto::DockerRegistry, ApiError> {
        let mut rec = self.find_registry(p, id).await?;
        let password = match req.password {
            Some(pw) => pw,
            None => self
                .secrets_key
                .open(&rec.sealed_password, &registry_aad(&rec))
                .map_err(|e| ApiError::Internal(format!("registry {}: {e}", rec.id)))?,
        };
        rec.name = checked_registry_name(&req.name)?;
        rec.url = checked_registry_url(&req.url)?;
        rec.username = checked_username(&req.username)?;
        if let Some(project) = req.project {
            rec.project = project;
        }
        rec.updated_at = now_millis();
        rec.sealed_password = self.seal_registry_password(&rec, &password)?;
        self.store.update_registry(&rec).await?;
        Ok(self.registry_dto(&rec))
    }

    pub async fn find_registry(&self, p: &Principal, id: &str) -> Result<RegistryRecord, ApiError> {
        self.store
            .registry_in_org(&p.organization_id, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Registry {id} not found")))
    }

    fn seal_registry_password(
        &self,
        rec: &RegistryRecord,
        password: &str,
    ) -> Result<String, ApiError> {
        if password.is_empty() || password.len() > 16 << 10 {
            return Err(ApiError::BadRequest(
                "password must be 1 to 16384 bytes".into(),
            ));
        }
        self.secrets_key
            .seal(password, &registry_aad(rec))
            .map_err(|e| ApiError::Internal(format!("sealing a registry password: {e}")))
    }
}

/// What a sealed registry password is bound to: its registry and
/// organization (a sealed value copied to another row does not open).
fn registry_aad(r: &RegistryRecord) -> String {
    format!("docker-registry:{}:{}", r.organization_id, r.id)
}

fn checked_registry_name(n: &str) -> Result<String, ApiError> {
    let n = n.trim();
    if n.is_empty() || n.len() > 255 || n.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name must be 1 to 255 printable characters".into(),
        ));
    }
    Ok(n.to_string())
}

fn checked_registry_url(u: &str) -> Result<String, ApiError> {
    registry_host(u).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "url {u:?} is not a registry host (like ghcr.io or registry.example.com:5000)"
        ))
    })
}

fn checked_username(u: &str) -> Result<String, ApiError> {
    if u.is_empty() || u.len() > 255 || u.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "username must be 1 to 255 printable characters".into(),
        ));
    }
    Ok(u.to_string())
}

fn build_info_json(b: &dto::CreateBuildInfo) -> serde_json::Value {
    serde_json::json!({
        "dockerfileContent": b.dockerfile_content,
        "contextHashes": b.context_hashes.clone().unwrap_or_default(),
    })
}

/// The context hash of the image archive a snapshot is imported from.
fn archive_of(rec: &SnapshotRecord) -> Option<String> {
    rec.build_info
        .as_ref()?
        .get("imageArchive")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_only_dockerfiles_name_their_image() {
        assert_eq!(
            from_only("FROM python:3.12-slim\n").as_deref(),
            Some("python:3.12-slim")
        );
        assert_eq!(
            from_only("# base\n\nfrom --platform=linux/amd64 alpine:3 AS base\n").as_deref(),
            Some("alpine:3")
        );
        assert_eq!(from_only("FROM a\nRUN echo hi\n"), None);
        assert_eq!(from_only("RUN x"), None);
        assert_eq!(from_only(""), None);
        assert_eq!(from_only("FROM a b"), None);
        assert_eq!(
            first_from("ARG V=1\nFROM x:$V\nRUN y").as_deref(),
            Some("x:1")
        );
    }

    #[test]
    fn registry_urls_become_hosts() {
        assert_eq!(
            registry_host("https://ghcr.io/").as_deref(),
            Some("ghcr.io")
        );
        assert_eq!(
            registry_host("https://index.docker.io/v1/").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            registry_host("127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(registry_host("http://a b"), None);
        assert_eq!(registry_host(""), None);
    }

    #[test]
    fn snapshot_names_are_checked() {
        for ok in ["my-snap", "team/app:1.0", "a@b", "x_y.z"] {
            assert!(valid_snapshot_name(ok), "{ok}");
        }
        for bad in ["", ".x", "/x", "a b", "a/../b", &"x".repeat(256)] {
            assert!(!valid_snapshot_name(bad), "{bad}");
        }
    }
}
