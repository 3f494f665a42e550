//! The client side of the `atoll` binary: `login`/`logout`, `sandbox …`,
//! `exec`, `volume …`. It speaks only the public REST and toolbox API, so
//! it works against any Atoll (or Daytona) endpoint.
//!
//! Where it connects: `--api-url`/`--api-key`, else `ATOLL_API_URL` /
//! `ATOLL_API_KEY`, else `DAYTONA_API_URL` / `DAYTONA_API_KEY`, else the
//! config file `atoll login` wrote (`$ATOLL_CONFIG`, or
//! `$XDG_CONFIG_HOME/atoll/config.json`, or `~/.config/atoll/config.json`;
//! mode 0600). Data goes to stdout (`-o json` or a table), messages to
//! stderr; exit codes: 0 done, 1 the server refused or failed, 2 bad usage,
//! and `exec` exits with the command's own code.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;

use crate::style;

#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The API's URL, e.g. http://127.0.0.1:3000/api.
    #[arg(long, global = true)]
    api_url: Option<String>,
    /// An API key of that server.
    #[arg(long, global = true, hide_env_values = true)]
    api_key: Option<String>,
    /// Output format of data.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
}

impl Endpoint {
    /// The API URL given by flag or environment (not the saved login).
    pub fn url(&self) -> Option<String> {
        self.api_url
            .clone()
            .or_else(|| env(&["ATOLL_API_URL", "DAYTONA_API_URL"]))
    }

    /// The API key given by flag or environment.
    pub fn key(&self) -> Option<String> {
        self.api_key
            .clone()
            .or_else(|| env(&["ATOLL_API_KEY", "DAYTONA_API_KEY"]))
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// `v` as YAML (block style; strings quoted as JSON strings, which YAML
/// reads as double-quoted scalars).
fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, item) in m {
                let key = serde_json::to_string(k).unwrap_or_default();
                match item {
                    Value::Object(o) if !o.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml(item, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml(item, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{key}: {}\n", scalar(item))),
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match item {
                    Value::Object(o) if !o.is_empty() => {
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner);
                        let inner = inner.trim_start().to_string();
                        out.push_str(&format!("{pad}- {inner}"));
                    }
                    Value::Array(x) if !x.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        yaml(item, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

#[derive(clap::Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and wait until it runs.
    ///
    /// Example: atoll sandbox create --snapshot general --cpu 2 --env A=1 --label team=ml
    Create(Box<CreateArgs>),
    /// List sandboxes.
    List,
    /// Show one sandbox.
    Info { sandbox: String },
    /// Start a stopped sandbox.
    Start { sandbox: String },
    /// Stop a sandbox (its disk is kept).
    Stop { sandbox: String },
    /// Pause a sandbox: its processes frozen, its memory kept (start
    /// resumes it).
    Pause { sandbox: String },
    /// Archive a stopped sandbox: its disk moved to the archive store.
    Archive { sandbox: String },
    /// Delete a sandbox.
    Delete { sandbox: String },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Name (default: its id).
    #[arg(long)]
    name: Option<String>,
    /// Snapshot to start from.
    #[arg(long, conflicts_with_all = ["image", "dockerfile"])]
    snapshot: Option<String>,
    /// An image to build the sandbox from (`FROM IMAGE`), e.g. python:3.12.
    #[arg(long, conflicts_with = "dockerfile")]
    image: Option<String>,
    /// A Dockerfile to build the sandbox from; the files its COPY and ADD
    /// steps name are uploaded from the context directory first.
    #[arg(long)]
    dockerfile: Option<PathBuf>,
    /// The directory COPY and ADD sources are relative to (default: the
    /// Dockerfile's).
    #[arg(long, requires = "dockerfile")]
    context: Option<PathBuf>,
    #[arg(long)]
    cpu: Option<i64>,
    /// GiB.
    #[arg(long)]
    memory: Option<i64>,
    /// GiB.
    #[arg(long)]
    disk: Option<i64>,
    /// `KEY=VALUE`, repeatable.
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// `KEY=VALUE`, repeatable.
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// `VOLUME:/mount/path[:ro]`, repeatable (VOLUME an id or a name).
    #[arg(long = "volume")]
    volumes: Vec<String>,
    /// Minutes of inactivity before it stops (0: never).
    #[arg(long)]
    auto_stop: Option<i64>,
    /// No network access beyond the sandbox itself.
    #[arg(long)]
    network_block_all: bool,
}

#[derive(clap::Subcommand)]
pub enum SnapshotCommand {
    /// Make a snapshot from a registry image and wait until it is active.
    ///
    /// Example: atoll snapshot create py312 --image python:3.12-slim
    Create {
        name: String,
        /// The registry image (`python:3.12-slim`, `host:5000/app:1`).
        #[arg(long)]
        image: String,
    },
    /// Make a snapshot from a local image: an OCI image layout (a
    /// directory, or a tar as `skopeo copy … oci-archive:app.tar` writes)
    /// or a `docker save` tar (gzip-compressed too). The archive is
    /// uploaded to the server, which imports it; no registry needed.
    ///
    /// Example: docker save myapp:1 -o myapp.tar && atoll snapshot push myapp.tar --name myapp
    Push {
        /// The archive file or OCI layout directory.
        archive: PathBuf,
        /// The snapshot's name.
        #[arg(long)]
        name: String,
        /// Default vCPUs of its sandboxes.
        #[arg(long)]
        cpu: Option<i64>,
        /// Default memory (GiB) of its sandboxes.
        #[arg(long)]
        memory: Option<i64>,
        /// Default disk (GiB) of its sandboxes.
        #[arg(long)]
        disk: Option<i64>,
    },
    /// List snapshots.
    List,
    /// Delete a snapshot (by name or id).
    Delete { snapshot: String },
}

#[derive(clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        name: String,
        /// Quota, GiB.
        #[arg(long)]
        size: Option<i64>,
    },
    /// List volumes.
    List,
    /// Show one volume (by id or name).
    Get { volume: String },
    /// Delete a volume (by id or name).
    Delete { volume: String },
    /// Copy a file into a volume or out of one, no sandbox needed.
    ///
    /// Example: atoll volume cp data.csv my-volume:/datasets/data.csv
    Cp { from: String, to: String },
}

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// List the organization's API keys (masked).
    List,
    /// Show the key this CLI is using.
    Current,
    /// Make an API key; it is printed once, on stdout.
    ///
    /// Example: atoll key create ci --permission write:sandboxes --permission delete:sandboxes --expires-in-days 30
    Create {
        name: String,
        /// A permission it gets (repeatable; at most the calling key's):
        /// write:sandboxes, delete:sandboxes, write:snapshots,
        /// delete:snapshots, read:volumes, write:volumes, delete:volumes,
        /// write:registries, delete:registries, manage:secrets,
        /// manage:api_keys, …
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Every permission the calling key holds.
        #[arg(long, conflicts_with = "permissions")]
        all: bool,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke an API key (by name); it stops working at once.
    Delete { name: String },
}

#[derive(clap::Subcommand)]
pub enum OrgCommand {
    /// The organization of this key (every one, with the admin key).
    List,
    /// Show one organization (by id or name).
    Get { organization: String },
    /// Make an organization and its owner key (the server's admin key
    /// only); the key is printed once.
    Create { name: String },
}

const KEY_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "name"),
    ("KEY", "value"),
    ("ROLE", "role"),
    ("CREATED", "createdAt"),
    ("EXPIRES", "expiresAt"),
];

const ORG_COLUMNS: &[(&str, &str)] = &[("ID", "id"), ("NAME", "name"), ("CREATED", "createdAt")];

pub fn key(e: Endpoint, cmd: KeyCommand) -> Result<()> {
    let c = Client::new(&e)?;
    runtime()?.block_on(async {
        use reqwest::Method;
        match cmd {
            KeyCommand::List => {
                let v = c.api(Method::GET, "/api-keys", None).await?;
                c.print(&v, KEY_COLUMNS);
            }
            KeyCommand::Current => {
                let v = c.api(Method::GET, "/api-keys/current", None).await?;
                c.print(&v, KEY_COLUMNS);
            }
            KeyCommand::Create {
                name,
                permissions,
                all,
                expires_in_days,
            } => {
                let permissions = if all {
                    c.api(Method::GET, "/api-keys/current", None).await?["permissions"].clone()
                } else {
                    json!(permissions)
                };
                let mut body = json!({ "name": name, "permissions": permissions });
                if let Some(days) = expires_in_days {
                    let at = std::time::SystemTime::now()
                        + std::time::Duration::from_secs(u64::from(days) * 86_400);
                    body["expiresAt"] = atoll_types::time::rfc3339(at).into();
                }
                let v = c.api(Method::POST, "/api-keys", Some(body)).await?;
                if c.output == Format::Table {
                    println!("{}", v["value"].as_str().unwrap_or_default());
                    eprintln!("Created API key {name}: it is shown only now, keep it safe");
                } else {
                    c.print(&v, &[]);
                }
            }
            KeyCommand::Delete { name } => {
                c.api(Method::DELETE, &format!("/api-keys/{}", enc(&name)), None)
                    .await?;
                eprintln!("Revoked API key {name}");
            }
        }
        Ok(())
    })
}

pub fn org(e: Endpoint, cmd: OrgCommand) -> Result<()> {
    let c = Client::new(&e)?;
    runtime()?.block_on(async {
        use reqwest::Method;
        match cmd {
            OrgCommand::List => {
                let v = c.api(Method::GET, "/organizations", None).await?;
                c.print(&v, ORG_COLUMNS);
            }
            OrgCommand::Get { organization } => {
                let v = c
                    .api(
                        Method::GET,
                        &format!("/organizations/{}", enc(&organization)),
                        None,
                    )
                    .await?;
                c.print(&v, ORG_COLUMNS);
            }
            OrgCommand::Create { name } => {
                let v = c
                    .api(
                        Method::POST,
                        "/admin/organizations",
                        Some(json!({ "name": name })),
                    )
                    .await?;
                if c.output == Format::Table {
                    println!("{}", v["apiKey"].as_str().unwrap_or_default());
                    eprintln!(
                        "Created organization {name} ({}); its owner key is shown only now",
                        v["organization"]["id"].as_str().unwrap_or_default()
                    );
                } else {
                    c.print(&v, &[]);
                }
            }
        }
        Ok(())
    })
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// What `login` stores.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    api_url: String,
    api_key: String,
}

fn config_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ATOLL_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?)
            .join(".config"),
    };
    Ok(base.join("atoll").join("config.json"))
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// A connection to one server's API.
pub struct Client {
    http: reqwest::Client,
    api: String,
    key: String,
    output: Format,
}

impl Client {
    pub fn new(e: &Endpoint) -> Result<Client> {
        let saved: Option<Config> = config_path()
            .ok()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let api = e
            .api_url
            .clone()
            .or_else(|| env(&["ATOLL_API_URL", "DAYTONA_API_URL"]))
            .or_else(|| saved.as_ref().map(|c| c.api_url.clone()))
            .ok_or_else(|| {
                anyhow!("not logged in: run `atoll login --api-url URL --api-key KEY`")
            })?;
        let key = e
            .api_key
            .clone()
            .or_else(|| env(&["ATOLL_API_KEY", "DAYTONA_API_KEY"]))
            .or_else(|| saved.as_ref().map(|c| c.api_key.clone()))
            .ok_or_else(|| anyhow!("no API key: run `atoll login` or set ATOLL_API_KEY"))?;
        let tls = atoll_remote::tls::client_config().map_err(|e| anyhow!("TLS: {e}"))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("atoll-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("making the HTTP client")?;
        Ok(Client {
            http,
            api: api.trim_end_matches('/').to_string(),
            key,
            output: e.output,
        })
    }

    /// A request with an optional raw body (content type, bytes); the
    /// answer's bytes, or the server's message as the error.
    pub(crate) async fn raw(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<(String, Vec<u8>)>,
    ) -> Result<Vec<u8>> {
        let mut req = self.http.request(method, url).bearer_auth(&self.key);
        if let Some((content_type, bytes)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default().to_vec();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        Ok(bytes)
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let body = body.map(|b| ("application/json".to_string(), b.to_string().into_bytes()));
        let bytes = self.raw(method, url, body).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        })
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Streams the body of GET `url` into the local file `to` (written
    /// aside, renamed into place once whole); the bytes written.
    pub(crate) async fn download(&self, url: &str, to: &str) -> Result<u64> {
        use futures_util::StreamExt;
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("reaching {url}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            bail!("{status}: {}", resp.text().await.unwrap_or_default());
        }
        let tmp = format!("{to}.atoll-part");
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {tmp}"))?;
        let mut stream = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading the download")?;
            n += chunk.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        drop(out);
        tokio::fs::rename(&tmp, to)
            .await
            .with_context(|| format!("writing {to}"))?;
        Ok(n)
    }

    /// The toolbox base URL of a sandbox: `{toolboxProxyUrl}/{id}`.
    pub(crate) async fn toolbox_of(&self, sandbox: &str) -> Result<String> {
        let sb = self
            .api(
                reqwest::Method::GET,
                &format!("/sandbox/{}", enc(sandbox)),
                None,
            )
            .await?;
        let id = sb["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no sandbox id in the answer"))?;
        let base = sb["toolboxProxyUrl"]
            .as_str()
            .ok_or_else(|| anyhow!("the server gave no toolbox URL"))?;
        Ok(format!("{}/{id}", base.trim_end_matches('/')))
    }

    pub(crate) async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.call(method, &format!("{}{path}", self.api), body)
            .await
    }

    fn print(&self, v: &Value, columns: &[(&str, &str)]) {
        let mut out = std::io::stdout().lock();
        if self.output == Format::Json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(v).unwrap_or_default()
            );
            return;
        }
        if self.output == Format::Yaml {
            let mut text = String::new();
            yaml(v, 0, &mut text);
            let _ = out.write_all(text.as_bytes());
            return;
        }
        let rows: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let cell = |r: &Value, key: &str| match &r[key] {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let widths: Vec<usize> = columns
            .iter()
            .map(|(title, key)| {
                rows.iter()
                    .map(|r| cell(r, key).len())
                    .chain([title.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Padded first, painted after: escape codes take no columns.
        let line = |cells: Vec<(String, &str)>| {
            let last = cells.len().saturating_sub(1);
            cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, ((c, code), w))| {
                    let padded = if i == last {
                        c.clone()
                    } else {
                        format!("{c:<w$}")
                    };
                    style::paint(style::Stream::Stdout, code, &padded)
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(
            out,
            "{}",
            line(
                columns
                    .iter()
                    .map(|(t, _)| (t.to_string(), style::BOLD))
                    .collect()
            )
        );
        for r in rows {
            let _ = writeln!(
                out,
                "{}",
                line(
                    columns
                        .iter()
                        .map(|(_, k)| {
                            let c = cell(r, k);
                            let code = if *k == "state" {
                                style::state_code(&c)
                            } else {
                                ""
                            };
                            (c, code)
                        })
                        .collect()
                )
            );
        }
    }
}

const SANDBOX_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("SNAPSHOT", "snapshot"),
    ("CPU", "cpu"),
    ("MEMORY", "memory"),
    ("DISK", "disk"),
];

const SNAPSHOT_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("IMAGE", "imageName"),
    ("SIZE", "size"),
];

const VOLUME_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("SIZE", "size"),
    ("USED", "usedBytes"),
];

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `atoll login`: checks the key against the server, then stores both.
pub fn login(e: Endpoint) -> Result<()> {
    let (Some(url), Some(key)) = (
        e.api_url
            .clone()
            .or_else(|| env(&["ATOLL_API_URL", "DAYTONA_API_URL"])),
        e.api_key
            .clone()
            .or_else(|| env(&["ATOLL_API_KEY", "DAYTONA_API_KEY"])),
    ) else {
        bail!("give --api-url and --api-key (or ATOLL_API_URL and ATOLL_API_KEY)");
    };
    let client = Client::new(&Endpoint {
        api_url: Some(url.clone()),
        api_key: Some(key.clone()),
        output: e.output,
    })?;
    let me = runtime()?.block_on(client.api(reqwest::Method::GET, "/users/me", None))?;
    let path = config_path()?;
    let body = serde_json::to_vec_pretty(&Config {
        api_url: url.clone(),
        api_key: key,
    })?;
    write_private(&path, &body)?;
    eprintln!(
        "Logged in to {url} as {} (saved in {})",
        me["name"].as_str().or(me["id"].as_str()).unwrap_or("?"),
        path.display()
    );
    Ok(())
}

/// `atoll logout`: forgets the stored endpoint and key.
pub fn logout() -> Result<()> {
    let path = config_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => eprintln!("Logged out ({} removed)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("Not logged in"),
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(())
}

/// Writes `body` to `path` (mode 0600) aside, then renames it over: a
/// reader never sees half of it.
pub(crate) fn write_private(path: &std::path::Path, body: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(body)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// A list answer as a list: a page (`{items, …}`) or a plain list, as
/// servers answer.
pub(crate) fn items(mut v: Value) -> Value {
    match v.get_mut("items").map(Value::take) {
        Some(items) => items,
        None => v,
    }
}

pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn sandbox(e: Endpoint, cmd: SandboxCommand) -> Result<()> {
    let c = Client::new(&e)?;
    // The lifecycle calls differ only in their path's last segment.
    let action = match &cmd {
        SandboxCommand::Start { .. } => "start",
        SandboxCommand::Stop { .. } => "stop",
        SandboxCommand::Pause { .. } => "pause",
        SandboxCommand::Archive { .. } => "archive",
        _ => "",
    };
    runtime()?.block_on(async {
        use reqwest::Method;
        match cmd {
            SandboxCommand::List => {
                let v = items(c.api(Method::GET, "/sandbox", None).await?);
                c.print(&v, SANDBOX_COLUMNS);
            }
            SandboxCommand::Info { sandbox } => {
                let v = c.api(Method::GET, &format!("/sandbox/{}", enc(&sandbox)), None).await?;
                c.print(&v, SANDBOX_COLUMNS);
            }
            SandboxCommand::Start { sandbox }
            | SandboxCommand::Stop { sandbox }
            | SandboxCommand::Pause { sandbox }
            | SandboxCommand::Archive { sandbox } => {
                let v = c
                    .api(
                        Method::POST,
                        &format!("/sandbox/{}/{action}", enc(&sandbox)),
                        None,
                    )
                    .await?;
                c.print(&v, SANDBOX_COLUMNS);
            }
            SandboxCommand::Delete { sandbox } => {
                c.api(Method::DELETE, &format!("/sandbox/{}", enc(&sandbox)), None)
                    .await?;
                eprintln!("Deleted {sandbox}");
            }
            SandboxCommand::Create(a) => {
                let mut volumes = Vec::new();
                for v in &a.volumes {
                    let mut parts = v.splitn(3, ':');
                    let (Some(id), Some(path)) = (parts.next(), parts.next()) else {
                        bail!("--volume {v:?}: use VOLUME:/mount/path[:ro]");
                    };
                    let read_only = match parts.next() {
                        None => false,
                        Some("ro") => true,
                        Some(other) => bail!("--volume {v:?}: unknown mode {other:?} (ro)"),
                    };
                    volumes.push(json!({"volumeId": id, "mountPath": path, "readOnly": read_only}));
                }
                let mut body = json!({
                    "env": a.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                    "labels": a.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                    "volumes": volumes,
                    "networkBlockAll": a.network_block_all,
                });
                for (k, v) in [
                    ("name", a.name.map(Value::from)),
                    ("snapshot", a.snapshot.map(Value::from)),
                    ("cpu", a.cpu.map(Value::from)),
                    ("memory", a.memory.map(Value::from)),
                    ("disk", a.disk.map(Value::from)),
                    ("autoStopInterval", a.auto_stop.map(Value::from)),
                ] {
                    if let Some(v) = v {
                        body[k] = v;
                    }
                }
                match (&a.image, &a.dockerfile) {
                    (Some(image), _) => {
                        body["buildInfo"] = json!({ "dockerfileContent": format!("FROM {image}\n") });
                    }
                    (None, Some(path)) => {
                        let text = std::fs::read_to_string(path)
                            .with_context(|| format!("reading {}", path.display()))?;
                        let dir = match &a.context {
                            Some(d) => d.clone(),
                            None => match path.parent() {
                                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                                _ => PathBuf::from("."),
                            },
                        };
                        let hashes = upload_contexts(&c, &text, &dir).await?;
                        body["buildInfo"] =
                            json!({ "dockerfileContent": text, "contextHashes": hashes });
                    }
                    (None, None) => {}
                }
                let mut v = c.api(Method::POST, "/sandbox", Some(body)).await?;
                // A build runs first: wait for it, dots on stderr.
                let id = v["id"].as_str().unwrap_or_default().to_string();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
                let mut waiting = style::Waiting::new(format!("Creating {id}"));
                while !matches!(
                    v["state"].as_str(),
                    Some("started" | "error" | "build_failed" | "stopped")
                ) {
                    if std::time::Instant::now() > deadline {
                        bail!("sandbox {id} is still {} after an hour", v["state"]);
                    }
                    waiting.tick(v["state"].as_str().unwrap_or("?"));
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    v = c
                        .api(Method::GET, &format!("/sandbox/{}", enc(&id)), None)
                        .await?;
                }
                drop(waiting);
                if matches!(v["state"].as_str(), Some("error" | "build_failed")) {
                    bail!(
                        "sandbox {id} is {}: {}",
                        v["state"].as_str().unwrap_or_default(),
                        v["errorReason"].as_str().unwrap_or("no reason given")
                    );
                }
                c.print(&v, SANDBOX_COLUMNS);
            }
        }
        Ok(())
    })
}

pub fn volume(e: Endpoint, cmd: VolumeCommand) -> Result<()> {
    let c = Client::new(&e)?;
    runtime()?.block_on(async {
        use reqwest::Method;
        // A volume by id, else by name.
        let find = |v: String| {
            let c = &c;
            async move {
                match c
                    .api(Method::GET, &format!("/volumes/{}", enc(&v)), None)
                    .await
                {
                    Ok(found) => Ok(found),
                    Err(_) => {
                        c.api(Method::GET, &format!("/volumes/by-name/{}", enc(&v)), None)
                            .await
                    }
                }
            }
        };
        match cmd {
            VolumeCommand::Create { name, size } => {
                let mut body = json!({ "name": name });
                if let Some(s) = size {
                    body["size"] = s.into();
                }
                let v = c.api(Method::POST, "/volumes", Some(body)).await?;
                c.print(&v, VOLUME_COLUMNS);
            }
            VolumeCommand::List => {
                let v = c.api(Method::GET, "/volumes", None).await?;
                c.print(&v, VOLUME_COLUMNS);
            }
            VolumeCommand::Get { volume } => {
                let v = find(volume).await?;
                c.print(&v, VOLUME_COLUMNS);
            }
            VolumeCommand::Delete { volume } => {
                let v = find(volume.clone()).await?;
                let id = v["id"].as_str().unwrap_or_default().to_string();
                c.api(Method::DELETE, &format!("/volumes/{}", enc(&id)), None)
                    .await?;
                eprintln!("Deleted volume {volume}");
            }
            VolumeCommand::Cp { from, to } => match (remote_path(&from), remote_path(&to)) {
                (None, Some((volume, path))) => {
                    let v = find(volume.to_string()).await?;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    let file = tokio::fs::File::open(&from)
                        .await
                        .with_context(|| format!("opening {from}"))?;
                    let size = file.metadata().await?.len();
                    let url = format!(
                        "{}/volumes/{}/files/upload?path={}",
                        c.api,
                        enc(&id),
                        enc(path)
                    );
                    let resp = c
                        .http
                        .post(&url)
                        .bearer_auth(&c.key)
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .header(reqwest::header::CONTENT_LENGTH, size)
                        .body(reqwest::Body::wrap_stream(
                            tokio_util::io::ReaderStream::new(file),
                        ))
                        .send()
                        .await
                        .with_context(|| format!("reaching {url}"))?;
                    if !resp.status().is_success() {
                        let status = resp.status();
                        bail!("{status}: {}", resp.text().await.unwrap_or_default());
                    }
                    eprintln!("Copied {from} to {to} ({size} bytes)");
                }
                (Some((volume, path)), None) => {
                    let v = find(volume.to_string()).await?;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    let url = format!(
                        "{}/volumes/{}/files/download?path={}",
                        c.api,
                        enc(&id),
                        enc(path)
                    );
                    let n = c.download(&url, &to).await?;
                    eprintln!("Copied {from} to {to} ({n} bytes)");
                }
                _ => bail!("one side must be VOLUME:/path and the other a local file"),
            },
        }
        Ok(())
    })
}

/// Quotes an argv for `sh -c`.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How `atoll exec` runs its command.
#[derive(Clone, Copy, Default)]
pub struct ExecMode {
    /// On a terminal (`-t`).
    pub tty: bool,
    /// With this process's stdin (`-i`).
    pub interactive: bool,
}

/// `atoll exec SANDBOX -- CMD…`: runs the command in the sandbox, its
/// output streamed as it comes (or, with `-o json|yaml`, the whole result
/// at the end), and returns its exit code.
pub fn exec(
    e: Endpoint,
    sandbox: String,
    cwd: Option<String>,
    timeout: u64,
    mode: ExecMode,
    argv: Vec<String>,
) -> Result<i32> {
    if argv.is_empty() {
        bail!("give the command after `--`, e.g. atoll exec my-sandbox -- ls -la");
    }
    let c = Client::new(&e)?;
    let rt = runtime()?;
    let code = rt.block_on(async {
        use reqwest::Method;
        let toolbox = c.toolbox_of(&sandbox).await?;
        let command = if argv.len() == 1 {
            argv[0].clone()
        } else {
            shell_join(&argv)
        };
        if mode.tty {
            return crate::cli_stream::pty_exec(&c, &toolbox, &command, cwd.as_deref()).await;
        }
        if c.output == Format::Table {
            let streamed = crate::cli_stream::stream_exec(
                &c,
                &toolbox,
                &command,
                cwd.as_deref(),
                mode.interactive,
                std::time::Duration::from_secs(timeout.max(1)),
            )
            .await?;
            if let Some(code) = streamed {
                return Ok(code);
            }
            // A server without exec-stream (Daytona): the whole output at
            // the end.
        }
        let mut body =
            json!({ "command": format!("sh -c {}", shell_join(&[command])), "timeout": timeout });
        if let Some(cwd) = cwd {
            body["cwd"] = cwd.into();
        }
        let r = c
            .call(
                Method::POST,
                &format!("{toolbox}/process/execute"),
                Some(body),
            )
            .await?;
        let output = r["result"].as_str().unwrap_or_default();
        if c.output != Format::Table {
            c.print(&r, &[]);
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(output.as_bytes());
            let _ = out.flush();
        }
        Ok(r["exitCode"].as_i64().unwrap_or(1) as i32)
    });
    // A read of our stdin may still be pending on a blocking thread (a
    // terminal that never ends): do not wait for it.
    rt.shutdown_background();
    code
}

pub fn snapshot(e: Endpoint, cmd: SnapshotCommand) -> Result<()> {
    let c = Client::new(&e)?;
    runtime()?.block_on(async {
        use reqwest::Method;
        match cmd {
            SnapshotCommand::List => {
                let v = items(c.api(Method::GET, "/snapshots?limit=200", None).await?);
                c.print(&v, SNAPSHOT_COLUMNS);
            }
            SnapshotCommand::Create { name, image } => {
                let v = c
                    .api(
                        Method::POST,
                        "/snapshots",
                        Some(json!({ "name": name, "imageName": image })),
                    )
                    .await?;
                let v = wait_snapshot(&c, v, &format!("Pulling {image}")).await?;
                c.print(&v, SNAPSHOT_COLUMNS);
            }
            SnapshotCommand::Push {
                archive,
                name,
                cpu,
                memory,
                disk,
            } => {
                let mut file = crate::cli_upload::image_archive(&archive)?;
                let access = crate::cli_upload::PushAccess::get(&c).await?;
                let hash = {
                    let mut waiting =
                        style::Waiting::new(format!("Uploading {}", archive.display()));
                    access
                        .upload(&c, &mut file, |sent, total| {
                            waiting.tick(&format!("{} of {} MiB", sent >> 20, total >> 20))
                        })
                        .await?
                };
                let mut body = json!({ "name": name, "imageArchive": hash });
                for (k, v) in [("cpu", cpu), ("memory", memory), ("disk", disk)] {
                    if let Some(v) = v {
                        body[k] = v.into();
                    }
                }
                let v = c.api(Method::POST, "/snapshots", Some(body)).await?;
                let v = wait_snapshot(&c, v, &format!("Importing {name}")).await?;
                c.print(&v, SNAPSHOT_COLUMNS);
            }
            SnapshotCommand::Delete { snapshot } => {
                let v = c
                    .api(Method::GET, &format!("/snapshots/{}", enc(&snapshot)), None)
                    .await?;
                let id = v["id"].as_str().unwrap_or_default().to_string();
                c.api(Method::DELETE, &format!("/snapshots/{}", enc(&id)), None)
                    .await?;
                eprintln!("Deleted snapshot {snapshot}");
            }
        }
        Ok(())
    })
}

/// `atoll preview-url SANDBOX PORT`: the URL (and token) of a port.
pub fn preview_url(e: Endpoint, sandbox: String, port: u16) -> Result<()> {
    let c = Client::new(&e)?;
    runtime()?.block_on(async {
        let v = c
            .api(
                reqwest::Method::GET,
                &format!("/sandbox/{}/ports/{port}/preview-url", enc(&sandbox)),
                None,
            )
            .await?;
        c.print(&v, &[("URL", "url"), ("TOKEN", "token")]);
        Ok(())
    })
}

/// A `SANDBOX:/path` argument of `cp`.
fn remote_path(s: &str) -> Option<(&str, &str)> {
    let (sandbox, path) = s.split_once(':')?;
    (!sandbox.is_empty() && path.starts_with('/')).then_some((sandbox, path))
}

/// `atoll cp`: a local file into a sandbox (`cp FILE SANDBOX:/path`) or
/// out of one (`cp SANDBOX:/path FILE`), streamed both ways.
pub fn cp(e: Endpoint, from: String, to: String) -> Result<()> {
    use futures_util::StreamExt;
    let c = Client::new(&e)?;
    runtime()?.block_on(async {
        match (remote_path(&from), remote_path(&to)) {
            (None, Some((sandbox, path))) => {
                let file = tokio::fs::File::open(&from)
                    .await
                    .with_context(|| format!("opening {from}"))?;
                let size = file.metadata().await?.len();
                let name = std::path::Path::new(&from)
                    .file_name()
                    .map(|n| n.to_string_lossy().replace('"', ""))
                    .unwrap_or_else(|| "file".into());
                let boundary = format!("atoll-{}", uuid::Uuid::new_v4().simple());
                let head = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                );
                let tail = format!("\r\n--{boundary}--\r\n");
                let length = head.len() as u64 + size + tail.len() as u64;
                let body = futures_util::stream::once(async move {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(head))
                })
                .chain(tokio_util::io::ReaderStream::new(file))
                .chain(futures_util::stream::once(async move {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(tail))
                }));
                let url = format!("{}/files/upload?path={}", c.toolbox_of(sandbox).await?, enc(path));
                let resp = c
                    .http
                    .post(&url)
                    .bearer_auth(&c.key)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .header(reqwest::header::CONTENT_LENGTH, length)
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await
                    .with_context(|| format!("reaching {url}"))?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    bail!("{status}: {}", resp.text().await.unwrap_or_default());
                }
                eprintln!("Copied {from} to {to} ({size} bytes)");
            }
            (Some((sandbox, path)), None) => {
                let url = format!("{}/files/download?path={}", c.toolbox_of(sandbox).await?, enc(path));
                let n = c.download(&url, &to).await?;
                eprintln!("Copied {from} to {to} ({n} bytes)");
            }
            _ => bail!("one side must be SANDBOX:/absolute/path and the other a local file"),
        }
        Ok(())
    })
}

/// Waits (a spinner on stderr) until the snapshot `v` is active; the
/// failure's reason otherwise.
async fn wait_snapshot(c: &Client, mut v: Value, what: &str) -> Result<Value> {
    use reqwest::Method;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let name = v["name"].as_str().unwrap_or_default().to_string();
    let mut waiting = style::Waiting::new(what);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    while !matches!(
        v["state"].as_str(),
        Some("active" | "error" | "build_failed")
    ) {
        if std::time::Instant::now() > deadline {
            bail!("snapshot {name} is still {} after 30 minutes", v["state"]);
        }
        waiting.tick(v["state"].as_str().unwrap_or("?"));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        v = c
            .api(Method::GET, &format!("/snapshots/{}", enc(&id)), None)
            .await?;
    }
    drop(waiting);
    if v["state"] != "active" {
        bail!(
            "snapshot {name} failed: {}",
            v["errorReason"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(v)
}

/// Uploads the build contexts the COPY and ADD steps of `dockerfile` name
/// (relative to `dir`); their hashes, for `buildInfo.contextHashes`.
async fn upload_contexts(
    c: &Client,
    dockerfile: &str,
    dir: &std::path::Path,
) -> Result<Vec<String>> {
    let sources = crate::cli_upload::context_sources(dockerfile)?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let access = crate::cli_upload::PushAccess::get(c).await?;
    let mut hashes = Vec::new();
    for rel in sources {
        let mut tar = crate::cli_upload::context_tar(dir, &rel)?;
        let shown = if rel.is_empty() { "." } else { rel.as_str() };
        let mut waiting = style::Waiting::new(format!("Uploading {shown}"));
        let hash = access
            .upload(c, &mut tar, |sent, total| {
                waiting.tick(&format!("{} of {} KiB", sent >> 10, total >> 10))
            })
            .await?;
        hashes.push(hash);
    }
    Ok(hashes)
}

/// What `atoll logs` reads.
pub enum LogSource {
    /// The output of the sandbox's entrypoint (as `docker logs`).
    Entrypoint,
    /// The log of the image build or pull the sandbox waited for.
    Build,
    /// One command of a session.
    Command { session: String, command: String },
}

/// Splits a session log marked with Daytona's stream prefixes (three 0x01
/// bytes before stdout, three 0x02 before stderr) into its two streams;
/// marks split across chunks are carried over.
#[derive(Default)]
pub(crate) struct Demux {
    stderr: bool,
    /// A run of mark bytes at the end of the last chunk, kept back.
    held: Vec<u8>,
}

impl Demux {
    /// The stdout and stderr bytes of `chunk`.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            if b == 1 || b == 2 {
                let run = data[i..].iter().take(3).take_while(|&&x| x == b).count();
                if run == 3 {
                    self.stderr = b == 2;
                    i += 3;
                    continue;
                }
                if i + run == data.len() {
                    // Maybe the start of a mark the next chunk completes.
                    self.held = data[i..].to_vec();
                    break;
                }
            }
            if self.stderr {
                err.push(b);
            } else {
                out.push(b);
            }
            i += 1;
        }
        (out, err)
    }

    /// What was held back at the end of the stream (a partial mark that
    /// never completed is output).
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// `atoll logs`: prints a sandbox's logs; `follow` streams them until the
/// command (or build) ends.
pub fn logs(e: Endpoint, sandbox: String, source: LogSource, follow: bool) -> Result<()> {
    use futures_util::StreamExt;
    let c = Client::new(&e)?;
    runtime()?.block_on(async {
        let (url, marked) = match &source {
            LogSource::Build => {
                let sb = c
                    .api(
                        reqwest::Method::GET,
                        &format!("/sandbox/{}", enc(&sandbox)),
                        None,
                    )
                    .await?;
                let id = sb["id"].as_str().unwrap_or(&sandbox).to_string();
                (format!("{}/sandbox/{}/build-logs", c.api, enc(&id)), false)
            }
            LogSource::Entrypoint => (
                format!(
                    "{}/process/session/entrypoint/logs",
                    c.toolbox_of(&sandbox).await?
                ),
                true,
            ),
            LogSource::Command { session, command } => (
                format!(
                    "{}/process/session/{}/command/{}/logs",
                    c.toolbox_of(&sandbox).await?,
                    enc(session),
                    enc(command)
                ),
                true,
            ),
        };
        if marked && !follow {
            // The whole log as JSON, its streams already apart.
            let v = c.call(reqwest::Method::GET, &url, None).await?;
            if c.output != Format::Table {
                c.print(&v, &[]);
            } else {
                let _ = std::io::stdout().write_all(v["stdout"].as_str().unwrap_or("").as_bytes());
                let _ = std::io::stderr().write_all(v["stderr"].as_str().unwrap_or("").as_bytes());
            }
            return Ok(());
        }
        let url = if follow {
            format!("{url}?follow=true")
        } else {
            url
        };
        let resp = c
            .http()
            .get(&url)
            .bearer_auth(c.key())
            .header("X-Daytona-Split-Output", "true")
            .send()
            .await
            .with_context(|| format!("reaching {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        let mut demux = Demux::default();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading the log")?;
            let (out, err) = if marked {
                demux.feed(&chunk)
            } else {
                (chunk.to_vec(), Vec::new())
            };
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&out);
            let _ = stdout.flush();
            let _ = std::io::stderr().write_all(&err);
        }
        let rest = demux.finish();
        if demux.stderr {
            let _ = std::io::stderr().write_all(&rest);
        } else {
            let _ = std::io::stdout().write_all(&rest);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::Demux;

    #[test]
    fn demux_splits_streams_across_chunk_boundaries() {
        let log = b"\x01\x01\x01out1\n\x02\x02\x02err1\n\x01\x01\x01out2\n";
        // Every split point, including inside a mark.
        for cut in 0..log.len() {
            let mut d = Demux::default();
            let (mut out, mut err) = d.feed(&log[..cut]);
            let (o2, e2) = d.feed(&log[cut..]);
            out.extend(o2);
            err.extend(e2);
            assert_eq!(out, b"out1\nout2\n", "cut {cut}");
            assert_eq!(err, b"err1\n", "cut {cut}");
        }
    }

    #[test]
    fn demux_keeps_lone_control_bytes() {
        let mut d = Demux::default();
        let (out, err) = d.feed(b"a\x01b\x02\x02c");
        assert_eq!(out, b"a\x01b\x02\x02c");
        assert!(err.is_empty());
        // A partial mark at the very end is output, not lost.
        let (out, _) = d.feed(b"end\x02\x02");
        assert_eq!(out, b"end");
        assert_eq!(d.finish(), b"\x02\x02");
    }
}
