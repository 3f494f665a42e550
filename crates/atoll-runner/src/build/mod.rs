//! The image builder: a Dockerfile run step by step. `FROM` pulls the base
//! image; each `RUN` runs in a build sandbox (the same isolation as any
//! sandbox: user namespace, cgroup limits, seccomp, its own network slot
//! with the default egress policy) started over the layers so far, and
//! what it changed is captured as the next layer (the sandbox frozen, its
//! upper dir packed and unpacked as in a snapshot capture); `WORKDIR` adds
//! a layer with the directory if no layer has it; `ENV`, `USER`,
//! `ENTRYPOINT`, `CMD`, `LABEL`, `EXPOSE`, `ARG` change the config only;
//! `COPY`/`ADD` make a layer of files from the build context ([`copy`]).
//!
//! Every step's result is stored as an image `atoll/build-cache/<key>`,
//! the key a hash of the parent's key and the step's text (the base's by
//! its manifest digest; a `COPY`'s with the sha256 of the contexts it
//! reads), so a rebuild with one changed line redoes only
//! what follows it. Build sandboxes have ids `atoll-build-<hex>`: the
//! runtime's observers never report them, and recovery destroys those a
//! crash left. A failed step ends the build with the step and the tail of
//! its output; nothing of a failed build is named.

pub use atoll_types::dockerfile;

mod copy;

use crate::image::{Image, ImageConfig, ImageStore, LayeredImage};
use crate::oci::registry::{Credentials, RegistryClient};
use crate::oci::unpack::{Compression, UnpackLimits};
use crate::runtime::NamespaceRuntime;
use atoll_runtime_api::{ImageBuild, LogSink, RuntimeError};
use dockerfile::{Command, Instruction};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Ids of build sandboxes start with this.
pub const BUILD_ID_PREFIX: &str = "atoll-build-";

/// True for a build sandbox's id.
pub fn is_build_id(id: &str) -> bool {
    id.starts_with(BUILD_ID_PREFIX)
}

/// Lines of a failed step's output kept in its error.
const TAIL_LINES: usize = 20;

/// What a build needs of its runner.
pub struct Builder {
    pub sandboxes: Arc<NamespaceRuntime>,
    pub images: Arc<ImageStore>,
    pub registry: Arc<RegistryClient>,
    pub limits: UnpackLimits,
}

fn failed(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed(crate::safe_fs::scrub_host_paths(&message.into()))
}

fn key_of(parent: &str, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    h.update(b"\n");
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

fn config_of(image: &Image) -> ImageConfig {
    ImageConfig {
        env: image.env.clone(),
        entrypoint: Vec::new(),
        cmd: image.entrypoint.clone(),
        workdir: image.workdir.clone(),
        user: image.user.clone(),
    }
}

fn digests_of(image: &Image) -> Result<Vec<String>, RuntimeError> {
    image
        .layers
        .iter()
        .map(|l| {
            crate::image::layer_digest_of(l)
                .ok_or_else(|| failed("an image layer is not in the store"))
        })
        .collect()
}

/// Quotes an argv for `/bin/sh -c`.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `KEY=value` in an env list.
fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    env.retain(|kv| kv.split_once('=').map(|(k, _)| k) != Some(key));
    env.push(format!("{key}={value}"));
}

impl Builder {
    /// Runs the build; the finished image is stored as `b.name`.
    pub async fn build(&self, b: &ImageBuild, log: LogSink<'_>) -> Result<Image, RuntimeError> {
        let timeout = std::time::Duration::from_secs(b.timeout_secs.max(1));
        match tokio::time::timeout(timeout, self.run(b, log)).await {
            Ok(r) => r,
            Err(_) => Err(failed(format!(
                "the build did not finish within {} s",
                b.timeout_secs
            ))),
        }
    }

    async fn run(&self, b: &ImageBuild, log: LogSink<'_>) -> Result<Image, RuntimeError> {
        let steps =
            dockerfile::parse(&b.dockerfile, &b.build_args).map_err(|e| failed(e.to_string()))?;
        let total = steps.len();
        // `ARG`s may come before `FROM` (they only serve `FROM` itself,
        // already expanded by the parser).
        let from = steps
            .iter()
            .position(|s| matches!(s.instruction, Instruction::From { .. }))
            .ok_or_else(|| failed("the Dockerfile has no FROM"))?;
        let Instruction::From { image: base_ref } = &steps[from].instruction else {
            unreachable!("found above");
        };
        log(&format!("Step {}/{total} : {}", from + 1, steps[from].text));
        let base = match &b.base_image {
            // Another snapshot of this runner.
            Some(name) => self
                .images
                .get(name)
                .map_err(|e| failed(e.to_string()))?
                .ok_or_else(|| RuntimeError::ImageNotFound(name.clone()))?,
            None => {
                let r = atoll_types::image_ref::Reference::parse(base_ref)
                    .map_err(|e| failed(e.to_string()))?;
                let creds = b
                    .registries
                    .iter()
                    .find(|c| c.registry == r.registry)
                    .map(|c| Credentials {
                        username: c.username.clone(),
                        password: c.password.clone(),
                    });
                crate::oci::pull(
                    &self.images,
                    &self.registry,
                    base_ref,
                    &format!("atoll/build-base/{r}"),
                    creds.as_ref(),
                    &b.cache_scope,
                    self.limits,
                    log,
                )
                .await
                .map_err(|e| {
                    if e.is_not_found() {
                        RuntimeError::ImageNotFound(base_ref.clone())
                    } else {
                        failed(format!("FROM {base_ref}: {e}"))
                    }
                })?
            }
        };
        // Cached steps are reused within one organization only.
        let mut key = key_of(&key_of("scope", &b.cache_scope), &base.digest);
        let mut layers = digests_of(&base)?;
        let mut config = config_of(&base);
        let mut entrypoint: Vec<String> = Vec::new();
        let mut cmd: Vec<String> = base.entrypoint.clone();
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let mut size = base.size_bytes;
        for (n, step) in steps.iter().enumerate().skip(from + 1) {
            log(&format!("Step {}/{total} : {}", n + 1, step.text));
            key = key_of(&key, &step.text);
            // An ARG's value (a build arg or its default) is part of what
            // the steps after it do.
            if let Instruction::Arg {
                name,
                default: Some(v),
            } = &step.instruction
            {
                key = key_of(&key, &format!("{name}={v}"));
            }
            match &step.instruction {
                Instruction::Env(pairs) => {
                    for (k, v) in pairs {
                        set_env(&mut config.env, k, v);
                    }
                }
                Instruction::Arg { name, default } => {
                    if let Some(v) = default {
                        args.insert(name.clone(), v.clone());
                    }
                }
                Instruction::User(u) => config.user = Some(u.clone()),
                Instruction::Entrypoint(c) => {
                    entrypoint = c.argv();
                    cmd.clear();
                }
                Instruction::Cmd(c) => cmd = c.argv(),
                Instruction::Label(_) | Instruction::Expose(_) => {}
                Instruction::Copy {
                    sources,
                    dest,
                    chown,
                } => {
                    let in_step = |e: RuntimeError| match e {
                        RuntimeError::Failed(m) => {
                            failed(format!("step {} ({}): {m}", n + 1, step.text))
                        }
                        e => e,
                    };
                    let contexts = self.contexts(b).map_err(in_step)?;
                    // The step's result depends on the contexts' content
                    // as well as its text.
                    for sha in copy::used_contexts(&contexts, sources).map_err(in_step)? {
                        key = key_of(&key, &sha);
                    }
                    let cache = format!("atoll/build-cache/{}", &key[..40]);
                    if let Some(hit) = self.cached(&cache) {
                        log(" ---> Using cache");
                        size = hit.size_bytes;
                        layers = digests_of(&hit)?;
                        continue;
                    }
                    let dest = match (dest.starts_with('/'), &config.workdir) {
                        (true, _) => dest.clone(),
                        (false, Some(w)) => format!("{}/{dest}", w.trim_end_matches('/')),
                        (false, None) => format!("/{dest}"),
                    };
                    let (digest, bytes) = self
                        .copy_step(&layers, &contexts, sources, dest, chown.clone())
                        .await
                        .map_err(in_step)?;
                    log(&format!(" ---> {} copied", crate::oci::human_bytes(bytes)));
                    layers.push(digest);
                    size += bytes;
                    self.remember(&cache, &layers, &config).await?;
                }
                Instruction::From { .. } => unreachable!("parse refuses a second FROM"),
                Instruction::Workdir(dir) => {
                    let dir = match (dir.starts_with('/'), &config.workdir) {
                        (true, _) => dir.clone(),
                        (false, Some(w)) => format!("{}/{dir}", w.trim_end_matches('/')),
                        (false, None) => format!("/{dir}"),
                    };
                    config.workdir = Some(dir.clone());
                    let cache = format!("atoll/build-cache/{}", &key[..40]);
                    if let Some(hit) = self.cached(&cache) {
                        log(" ---> Using cache");
                        layers = digests_of(&hit)?;
                        continue;
                    }
                    if let Some(digest) = self.workdir_layer(&layers, &dir).await? {
                        layers.push(digest);
                    }
                    self.remember(&cache, &layers, &config).await?;
                }
                Instruction::Run(c) => {
                    let cache = format!("atoll/build-cache/{}", &key[..40]);
                    if let Some(hit) = self.cached(&cache) {
                        log(" ---> Using cache");
                        size = hit.size_bytes;
                        layers = digests_of(&hit)?;
                        continue;
                    }
                    let command = match c {
                        Command::Shell(s) => s.clone(),
                        Command::Exec(v) => shell_join(v),
                    };
                    let (digest, bytes) = self
                        .run_step(b, &layers, &config, &args, &command, n + 1, &step.text, log)
                        .await?;
                    layers.push(digest);
                    size += bytes;
                    self.remember(&cache, &layers, &config).await?;
                }
            }
        }
        let final_config = ImageConfig {
            entrypoint: entrypoint.clone(),
            cmd: cmd.clone(),
            ..config
        };
        let digest = format!("sha256:{}", key_of(&key, &layers.join(",")));
        let images = self.images.clone();
        let image = LayeredImage {
            name: b.name.clone(),
            digest,
            layers,
            size_bytes: size,
            config: final_config,
            entrypoint: Vec::new(),
            source: Some("Dockerfile".into()),
        };
        let stored = tokio::task::spawn_blocking(move || images.put_layered(image))
            .await
            .map_err(|e| failed(format!("store task: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
        log(&format!("Successfully built {}", b.name));
        Ok(stored)
    }

    /// The build's contexts, as stored.
    fn contexts(&self, b: &ImageBuild) -> Result<Vec<copy::Context>, RuntimeError> {
        b.contexts
            .iter()
            .map(|sha| {
                if !atoll_runtime_api::is_sha256_hex(sha) {
                    return Err(RuntimeError::InvalidId(sha.clone()));
                }
                let root = self
                    .images
                    .layer(&format!("sha256:{sha}"))
                    .map_err(|e| failed(e.to_string()))?
                    .ok_or_else(|| failed(format!("build context {sha} is not stored here")))?;
                Ok(copy::Context {
                    sha256: sha.clone(),
                    root,
                })
            })
            .collect()
    }

    /// A `COPY`'s layer (off the runtime).
    async fn copy_step(
        &self,
        layers: &[String],
        contexts: &[copy::Context],
        sources: &[String],
        dest: String,
        chown: Option<String>,
    ) -> Result<(String, u64), RuntimeError> {
        let layer_paths = self.layer_paths(layers)?;
        let images = self.images.clone();
        let limits = self.limits;
        let contexts: Vec<copy::Context> = contexts
            .iter()
            .map(|c| copy::Context {
                sha256: c.sha256.clone(),
                root: c.root.clone(),
            })
            .collect();
        let sources = sources.to_vec();
        tokio::task::spawn_blocking(move || {
            let owner = copy::resolve_owner(&layer_paths, chown.as_deref())?;
            let step = copy::CopyStep {
                sources: &sources,
                dest,
                owner,
            };
            copy::copy_layer(&images, limits, &contexts, &layer_paths, &step)
        })
        .await
        .map_err(|e| failed(format!("copy task: {e}")))?
    }

    /// The stored directories of `layers`, bottom first.
    fn layer_paths(&self, layers: &[String]) -> Result<Vec<std::path::PathBuf>, RuntimeError> {
        layers
            .iter()
            .map(|d| {
                self.images
                    .layer(d)
                    .map_err(|e| failed(e.to_string()))?
                    .ok_or_else(|| failed(format!("layer {d} vanished from the store")))
            })
            .collect()
    }

    /// A step's cached result; a hit keeps the cache entry alive.
    fn cached(&self, name: &str) -> Option<Image> {
        let hit = self.images.get(name).ok().flatten()?;
        self.images.touch_ref(name);
        Some(hit)
    }

    /// Stores a step's result as `name` (the cache), off the runtime.
    async fn remember(
        &self,
        name: &str,
        layers: &[String],
        config: &ImageConfig,
    ) -> Result<(), RuntimeError> {
        let image = LayeredImage {
            name: name.to_string(),
            digest: format!("sha256:{}", key_of(name, &layers.join(","))),
            layers: layers.to_vec(),
            size_bytes: 0,
            config: config.clone(),
            entrypoint: Vec::new(),
            source: Some("build step".into()),
        };
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.put_layered(image))
            .await
            .map_err(|e| failed(format!("store task: {e}")))?
            .map(|_| ())
            .map_err(|e| failed(e.to_string()))
    }

    /// A layer holding `dir` (and its missing parents, root-owned 0755)
    /// unless some layer already has it; `None` then.
    async fn workdir_layer(
        &self,
        layers: &[String],
        dir: &str,
    ) -> Result<Option<String>, RuntimeError> {
        let parts: Vec<&str> = dir
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if parts.contains(&"..") || parts.is_empty() {
            return Ok(None);
        }
        let rel = parts.join("/");
        let mut paths = Vec::new();
        for d in layers {
            if let Some(p) = self.images.layer(d).map_err(|e| failed(e.to_string()))? {
                paths.push(p);
            }
        }
        // Resolved in each layer as if it were `/`, never out of it.
        let exists = paths.iter().any(|layer| {
            let Ok(root) = crate::safe_fs::open_dir(layer) else {
                return false;
            };
            let how = nix::fcntl::OpenHow::new()
                .flags(nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC)
                .resolve(
                    nix::fcntl::ResolveFlag::RESOLVE_IN_ROOT
                        | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS
                        | nix::fcntl::ResolveFlag::RESOLVE_NO_XDEV,
                );
            nix::fcntl::openat2(&root, rel.as_str(), how).is_ok()
        });
        if exists {
            return Ok(None);
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut path = String::new();
        for p in &parts {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(p);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, &path, std::io::empty())
                .map_err(|e| failed(format!("WORKDIR {dir}: {e}")))?;
        }
        let bytes = tar
            .into_inner()
            .map_err(|e| failed(format!("WORKDIR {dir}: {e}")))?;
        let images = self.images.clone();
        let limits = self.limits;
        tokio::task::spawn_blocking(move || {
            let scratch = images.scratch().map_err(|e| failed(e.to_string()))?;
            let stats = crate::oci::unpack::unpack_layer(
                &bytes[..],
                Compression::None,
                &scratch.path,
                limits,
                &mut |_| {},
            )
            .map_err(|e| failed(e.to_string()))?;
            images
                .commit_layer(scratch, &stats.diff_id)
                .map_err(|e| failed(e.to_string()))?;
            Ok(Some(stats.diff_id))
        })
        .await
        .map_err(|e| failed(format!("store task: {e}")))?
    }

    /// Runs one `RUN` in a build sandbox over `layers`; its changes become
    /// a layer, returned with the bytes it holds.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        b: &ImageBuild,
        layers: &[String],
        config: &ImageConfig,
        args: &BTreeMap<String, String>,
        command: &str,
        number: usize,
        text: &str,
        log: LogSink<'_>,
    ) -> Result<(String, u64), RuntimeError> {
        let layer_paths = self.layer_paths(layers)?;
        let mut rnd = [0u8; 8];
        getrandom_fill(&mut rnd);
        let id = format!("{BUILD_ID_PREFIX}{}", hex::encode(rnd));
        let mut env: BTreeMap<String, String> = args.clone();
        for kv in &config.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.to_string(), v.to_string());
            }
        }
        let spec = crate::spec::SandboxSpec {
            id: id.clone(),
            hostname: "build".into(),
            image_layers: layer_paths,
            image: b.name.clone(),
            user: Some(
                config
                    .user
                    .clone()
                    .map(|u| u.split(':').next().unwrap_or("root").to_string())
                    .unwrap_or_else(|| "root".into()),
            ),
            env,
            limits: b.limits.clone(),
            disk_bytes: b.disk_bytes,
            network: atoll_runtime_api::NetworkPolicy::default(),
            entrypoint: Vec::new(),
            work_dir: config
                .workdir
                .clone()
                .filter(|w| w.starts_with('/'))
                .map(std::path::PathBuf::from),
            volumes: Vec::new(),
        };
        let guard = BuildSandbox {
            rt: self.sandboxes.clone(),
            id: id.clone(),
        };
        let rt = self.sandboxes.clone();
        tokio::task::spawn_blocking(move || rt.start(&spec).map(|_| ()))
            .await
            .map_err(|e| failed(format!("build sandbox task: {e}")))?
            .map_err(crate::local::to_boundary)?;
        let (code, tail) = self.exec(&id, command, log).await?;
        if code != 0 {
            return Err(failed(format!(
                "step {number} ({text}) failed with exit code {code}:\n{}",
                tail.join("\n")
            )));
        }
        let rt = self.sandboxes.clone();
        let images = self.images.clone();
        let limits = self.limits;
        let captured = tokio::task::spawn_blocking(move || {
            crate::local::capture_layer(&rt, &images, limits, &id)
                .map(|stats| (stats.diff_id, stats.file_bytes))
        })
        .await
        .map_err(|e| failed(format!("capture task: {e}")))??;
        drop(guard);
        Ok(captured)
    }

    /// Runs `command` through the build sandbox's toolbox daemon (a session
    /// command, its output followed line by line into `log`); its exit code
    /// and the last lines of its output.
    async fn exec(
        &self,
        id: &str,
        command: &str,
        log: LogSink<'_>,
    ) -> Result<(i64, Vec<String>), RuntimeError> {
        let created = self
            .toolbox(
                id,
                "POST",
                "/process/session",
                Some(serde_json::json!({"sessionId": "build"})),
            )
            .await?;
        if !(200..300).contains(&created.0) {
            return Err(failed(format!("build sandbox session: HTTP {}", created.0)));
        }
        let (status, body) = self
            .toolbox(
                id,
                "POST",
                "/process/session/build/exec",
                Some(serde_json::json!({"command": command, "runAsync": true})),
            )
            .await?;
        let cmd_id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["cmdId"].as_str().map(str::to_string))
            .ok_or_else(|| failed(format!("build command did not start: HTTP {status}")))?;
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut push = |line: &str| {
            log(line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        };
        self.follow(
            id,
            &format!("/process/session/build/command/{cmd_id}/logs?follow=true"),
            &mut push,
        )
        .await?;
        // The follow ends when the command does; its exit code is recorded
        // just after.
        for _ in 0..200 {
            let (_, body) = self
                .toolbox(
                    id,
                    "GET",
                    &format!("/process/session/build/command/{cmd_id}"),
                    None,
                )
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(code) = v["exitCode"].as_i64() {
                return Ok((code, tail.into_iter().collect()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(failed("the build command's exit code never came"))
    }

    async fn connect(
        &self,
        id: &str,
    ) -> Result<
        hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        RuntimeError,
    > {
        let peer = self
            .sandboxes
            .toolbox_peer(id)
            .ok_or_else(|| RuntimeError::NotRunning { id: id.into() })?;
        let stream = tokio::net::UnixStream::connect(self.sandboxes.socket(id))
            .await
            .map_err(RuntimeError::Connect)?;
        peer.verify(&stream).map_err(RuntimeError::Connect)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| failed(format!("build sandbox toolbox: {e}")))?;
        tokio::spawn(conn);
        Ok(send)
    }

    fn request(
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<http::Request<http_body_util::Full<bytes::Bytes>>, RuntimeError> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "toolbox")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
            .map_err(|e| failed(format!("toolbox request: {e}")))
    }

    async fn toolbox(
        &self,
        id: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), RuntimeError> {
        use http_body_util::BodyExt;
        let mut send = self.connect(id).await?;
        let resp = send
            .send_request(Self::request(method, path, body)?)
            .await
            .map_err(|e| failed(format!("build sandbox toolbox: {e}")))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| failed(format!("build sandbox toolbox: {e}")))?
            .to_bytes();
        Ok((status, body.to_vec()))
    }

    /// Streams a follow answer's lines into `line`.
    async fn follow(
        &self,
        id: &str,
        path: &str,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), RuntimeError> {
        use http_body_util::BodyExt;
        let mut send = self.connect(id).await?;
        let resp = send
            .send_request(Self::request("GET", path, None)?)
            .await
            .map_err(|e| failed(format!("build sandbox toolbox: {e}")))?;
        let mut body = resp.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| failed(format!("build output: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = pending.drain(..=nl).collect();
                line(String::from_utf8_lossy(&l[..l.len() - 1]).trim_end_matches('\r'));
            }
            if pending.len() > 64 << 10 {
                line(&String::from_utf8_lossy(&pending));
                pending.clear();
            }
        }
        if !pending.is_empty() {
            line(&String::from_utf8_lossy(&pending));
        }
        Ok(())
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}

/// Destroys a build sandbox when the step is over, however it ended.
struct BuildSandbox {
    rt: Arc<NamespaceRuntime>,
    id: String,
}

impl Drop for BuildSandbox {
    fn drop(&mut self) {
        let (rt, id) = (self.rt.clone(), self.id.clone());
        let destroy = move || {
            if let Err(e) = rt.destroy(&id) {
                tracing::warn!(sandbox = %id, error = %e, "could not destroy a build sandbox");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(destroy);
            }
            Err(_) => destroy(),
        }
    }
}
