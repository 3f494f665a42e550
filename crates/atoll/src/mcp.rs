//! `atoll mcp`: a Model Context Protocol server (stdio, on the maintained
//! `rmcp` crate) whose tools drive sandboxes through the public API, as
//! Daytona's MCP server does, plus what agents need and it lacks: run code
//! with rich output (charts as images), read a range of a file, search
//! files, start a long-running process and read its logs, list sandboxes.
//! `atoll mcp config` prints the JSON Claude Desktop, Cursor and Windsurf
//! expect; `atoll mcp init` writes it into their config files.

use crate::cli::{Client, Endpoint};
use anyhow::{anyhow, Context as _, Result};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// One tool: its name, what it does, and its parameters (name, JSON type,
/// description, required).
struct Spec {
    name: &'static str,
    description: &'static str,
    params: &'static [(&'static str, &'static str, &'static str, bool)],
}

const SANDBOX: (&str, &str, &str, bool) = ("sandbox", "string", "The sandbox's id or name.", true);
const PATH: (&str, &str, &str, bool) = ("path", "string", "An absolute path in the sandbox.", true);

const TOOLS: &[Spec] = &[
    Spec {
        name: "create_sandbox",
        description: "Create a sandbox (an isolated Linux computer) and wait until it runs. Returns its id.",
        params: &[
            ("name", "string", "A name for it (optional).", false),
            ("snapshot", "string", "The snapshot (image) to start from (optional).", false),
            ("env", "object", "Environment variables, name to value (optional).", false),
        ],
    },
    Spec {
        name: "destroy_sandbox",
        description: "Delete a sandbox and its files.",
        params: &[SANDBOX],
    },
    Spec {
        name: "list_sandboxes",
        description: "List the sandboxes: id, name, state.",
        params: &[],
    },
    Spec {
        name: "execute_command",
        description: "Run a shell command in a sandbox and return its output and exit code.",
        params: &[
            SANDBOX,
            ("command", "string", "The shell command.", true),
            ("cwd", "string", "Working directory (optional).", false),
            ("timeout", "integer", "Seconds before it is stopped (default 300).", false),
        ],
    },
    Spec {
        name: "run_code",
        description: "Run Python code in a sandbox. Returns stdout and any charts (matplotlib figures) as images.",
        params: &[SANDBOX, ("code", "string", "The Python code.", true)],
    },
    Spec {
        name: "file_upload",
        description: "Write a text file in a sandbox (made or replaced).",
        params: &[SANDBOX, PATH, ("content", "string", "The file's content.", true)],
    },
    Spec {
        name: "file_download",
        description: "Read a whole file of a sandbox as text.",
        params: &[SANDBOX, PATH],
    },
    Spec {
        name: "read_file_range",
        description: "Read lines `start` to `end` (1-based, inclusive) of a file of a sandbox.",
        params: &[
            SANDBOX,
            PATH,
            ("start", "integer", "First line (1-based).", true),
            ("end", "integer", "Last line.", true),
        ],
    },
    Spec {
        name: "list_files",
        description: "List a directory of a sandbox.",
        params: &[SANDBOX, PATH],
    },
    Spec {
        name: "file_info",
        description: "Size, mode, owner and times of a file of a sandbox.",
        params: &[SANDBOX, PATH],
    },
    Spec {
        name: "create_folder",
        description: "Make a directory (and its parents) in a sandbox.",
        params: &[SANDBOX, PATH],
    },
    Spec {
        name: "move_file",
        description: "Move or rename a file in a sandbox.",
        params: &[
            SANDBOX,
            ("source", "string", "The path to move.", true),
            ("destination", "string", "Where to.", true),
        ],
    },
    Spec {
        name: "delete_file",
        description: "Delete a file or directory (recursively) of a sandbox.",
        params: &[SANDBOX, PATH],
    },
    Spec {
        name: "search_files",
        description: "Find lines matching a text pattern in the files under a directory of a sandbox.",
        params: &[SANDBOX, PATH, ("pattern", "string", "The text to find.", true)],
    },
    Spec {
        name: "git_clone",
        description: "Clone a git repository into a sandbox.",
        params: &[
            SANDBOX,
            ("url", "string", "The repository URL.", true),
            ("path", "string", "Where to clone it.", true),
            ("branch", "string", "A branch (optional).", false),
        ],
    },
    Spec {
        name: "preview_link",
        description: "The URL (and access token) of a port served inside a sandbox.",
        params: &[SANDBOX, ("port", "integer", "The port.", true)],
    },
    Spec {
        name: "start_process",
        description: "Start a long-running command in the background of a sandbox; returns an id for process_logs.",
        params: &[SANDBOX, ("command", "string", "The shell command.", true)],
    },
    Spec {
        name: "process_logs",
        description: "The output so far (and exit code, once done) of a process from start_process.",
        params: &[SANDBOX, ("process", "string", "The id start_process returned.", true)],
    },
];

fn tool_of(s: &Spec) -> Tool {
    let mut props = Map::new();
    let mut required = Vec::new();
    for (name, kind, description, needed) in s.params {
        props.insert(
            name.to_string(),
            json!({ "type": kind, "description": description }),
        );
        if *needed {
            required.push(Value::from(*name));
        }
    }
    let schema = json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    });
    let Value::Object(schema) = schema else {
        unreachable!("built as an object")
    };
    Tool::new(s.name, s.description, Arc::new(schema))
}

/// The MCP server: one API client, every tool a REST or toolbox call.
#[derive(Clone)]
pub struct Server {
    client: Arc<Client>,
    tools: Arc<Vec<Tool>>,
}

fn arg<'a>(a: &'a Map<String, Value>, name: &str) -> Result<&'a str> {
    a.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("`{name}` (a string) is required"))
}

fn int(a: &Map<String, Value>, name: &str) -> Result<i64> {
    a.get(name)
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("`{name}` (an integer) is required"))
}

use crate::cli::enc;

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Server {
    async fn toolbox(&self, sandbox: &str) -> Result<String> {
        self.client.toolbox_of(sandbox).await
    }

    async fn exec(
        &self,
        sandbox: &str,
        command: &str,
        cwd: Option<&str>,
        timeout: i64,
    ) -> Result<Value> {
        let tb = self.toolbox(sandbox).await?;
        let mut body =
            json!({ "command": format!("sh -c {}", shell_quote(command)), "timeout": timeout });
        if let Some(c) = cwd {
            body["cwd"] = c.into();
        }
        self.client
            .call(
                reqwest::Method::POST,
                &format!("{tb}/process/execute"),
                Some(body),
            )
            .await
    }

    async fn run(&self, name: &str, a: &Map<String, Value>) -> Result<Vec<ContentBlock>> {
        use reqwest::Method;
        let text = |s: String| Ok(vec![ContentBlock::text(s)]);
        let json_text = |v: &Value| text(serde_json::to_string_pretty(v).unwrap_or_default());
        match name {
            "create_sandbox" => {
                let mut body = json!({});
                for k in ["name", "snapshot", "env"] {
                    if let Some(v) = a.get(k) {
                        body[k] = v.clone();
                    }
                }
                let sb = self
                    .client
                    .api(Method::POST, "/sandbox", Some(body))
                    .await?;
                text(format!(
                    "Created sandbox {} ({}), state {}",
                    sb["id"].as_str().unwrap_or("?"),
                    sb["name"].as_str().unwrap_or("?"),
                    sb["state"].as_str().unwrap_or("?")
                ))
            }
            "destroy_sandbox" => {
                let s = arg(a, "sandbox")?;
                self.client
                    .api(Method::DELETE, &format!("/sandbox/{}", enc(s)), None)
                    .await?;
                text(format!("Deleted sandbox {s}"))
            }
            "list_sandboxes" => {
                let v = crate::cli::items(self.client.api(Method::GET, "/sandbox", None).await?);
                let rows: Vec<Value> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| json!({"id": s["id"], "name": s["name"], "state": s["state"]}))
                            .collect()
                    })
                    .unwrap_or_default();
                json_text(&Value::Array(rows))
            }
            "execute_command" => {
                let r = self
                    .exec(
                        arg(a, "sandbox")?,
                        arg(a, "command")?,
                        a.get("cwd").and_then(Value::as_str),
                        a.get("timeout").and_then(Value::as_i64).unwrap_or(300),
                    )
                    .await?;
                text(format!(
                    "exit code {}\n{}",
                    r["exitCode"],
                    r["result"].as_str().unwrap_or_default()
                ))
            }
            "run_code" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let r = self
                    .client
                    .call(
                        Method::POST,
                        &format!("{tb}/process/code-run"),
                        Some(
                            json!({"code": arg(a, "code")?, "language": "python", "timeout": 300}),
                        ),
                    )
                    .await?;
                let mut out = vec![ContentBlock::text(format!(
                    "exit code {}\n{}",
                    r["exitCode"],
                    r["result"].as_str().unwrap_or_default()
                ))];
                for chart in r["artifacts"]["charts"].as_array().into_iter().flatten() {
                    if let Some(png) = chart["png"].as_str() {
                        out.push(ContentBlock::image(png, "image/png"));
                    }
                }
                Ok(out)
            }
            "file_upload" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let path = arg(a, "path")?;
                let content = a
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("`content` (a string) is required"))?;
                let boundary = format!("atoll-{}", uuid::Uuid::new_v4().simple());
                let body = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
                );
                self.client
                    .raw(
                        Method::POST,
                        &format!("{tb}/files/upload?path={}", enc(path)),
                        Some((
                            format!("multipart/form-data; boundary={boundary}"),
                            body.into_bytes(),
                        )),
                    )
                    .await?;
                text(format!("Wrote {} bytes to {path}", content.len()))
            }
            "file_download" | "read_file_range" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let path = arg(a, "path")?;
                let bytes = self
                    .client
                    .raw(
                        Method::GET,
                        &format!("{tb}/files/download?path={}", enc(path)),
                        None,
                    )
                    .await?;
                let content = String::from_utf8_lossy(&bytes).into_owned();
                if name == "file_download" {
                    return text(content);
                }
                let (start, end) = (int(a, "start")?.max(1) as usize, int(a, "end")? as usize);
                let lines: Vec<String> = content
                    .lines()
                    .enumerate()
                    .skip(start - 1)
                    .take(end.saturating_sub(start) + 1)
                    .map(|(i, l)| format!("{}: {l}", i + 1))
                    .collect();
                text(lines.join("\n"))
            }
            "list_files" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let v = self
                    .client
                    .call(
                        Method::GET,
                        &format!("{tb}/files?path={}", enc(arg(a, "path")?)),
                        None,
                    )
                    .await?;
                let rows: Vec<Value> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|f| json!({"name": f["name"], "isDir": f["isDir"], "size": f["size"]}))
                            .collect()
                    })
                    .unwrap_or_default();
                json_text(&Value::Array(rows))
            }
            "file_info" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let v = self
                    .client
                    .call(
                        Method::GET,
                        &format!("{tb}/files/info?path={}", enc(arg(a, "path")?)),
                        None,
                    )
                    .await?;
                json_text(&v)
            }
            "create_folder" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let path = arg(a, "path")?;
                self.client
                    .call(
                        Method::POST,
                        &format!("{tb}/files/folder?path={}&mode=755", enc(path)),
                        None,
                    )
                    .await?;
                text(format!("Made {path}"))
            }
            "move_file" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let (src, dst) = (arg(a, "source")?, arg(a, "destination")?);
                self.client
                    .call(
                        Method::POST,
                        &format!(
                            "{tb}/files/move?source={}&destination={}",
                            enc(src),
                            enc(dst)
                        ),
                        None,
                    )
                    .await?;
                text(format!("Moved {src} to {dst}"))
            }
            "delete_file" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let path = arg(a, "path")?;
                self.client
                    .call(
                        Method::DELETE,
                        &format!("{tb}/files?path={}&recursive=true", enc(path)),
                        None,
                    )
                    .await?;
                text(format!("Deleted {path}"))
            }
            "search_files" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let v = self
                    .client
                    .call(
                        Method::GET,
                        &format!(
                            "{tb}/files/find?path={}&pattern={}",
                            enc(arg(a, "path")?),
                            enc(arg(a, "pattern")?)
                        ),
                        None,
                    )
                    .await?;
                let lines: Vec<String> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|m| {
                                format!(
                                    "{}:{}: {}",
                                    m["file"].as_str().unwrap_or("?"),
                                    m["line"],
                                    m["content"].as_str().unwrap_or_default()
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                text(if lines.is_empty() {
                    "no matches".into()
                } else {
                    lines.join("\n")
                })
            }
            "git_clone" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let mut body = json!({"url": arg(a, "url")?, "path": arg(a, "path")?});
                if let Some(b) = a.get("branch").and_then(Value::as_str) {
                    body["branch"] = b.into();
                }
                self.client
                    .call(Method::POST, &format!("{tb}/git/clone"), Some(body))
                    .await?;
                text(format!("Cloned into {}", arg(a, "path")?))
            }
            "preview_link" => {
                let v = self
                    .client
                    .api(
                        Method::GET,
                        &format!(
                            "/sandbox/{}/ports/{}/preview-url",
                            enc(arg(a, "sandbox")?),
                            int(a, "port")?
                        ),
                        None,
                    )
                    .await?;
                json_text(&v)
            }
            "start_process" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let session = format!("mcp-{}", uuid::Uuid::new_v4().simple());
                self.client
                    .call(
                        Method::POST,
                        &format!("{tb}/process/session"),
                        Some(json!({"sessionId": session})),
                    )
                    .await?;
                let r = self
                    .client
                    .call(
                        Method::POST,
                        &format!("{tb}/process/session/{session}/exec"),
                        Some(json!({"command": arg(a, "command")?, "runAsync": true})),
                    )
                    .await?;
                let cmd = r["cmdId"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the process did not start"))?;
                text(format!("{session}/{cmd}"))
            }
            "process_logs" => {
                let tb = self.toolbox(arg(a, "sandbox")?).await?;
                let (session, cmd) = arg(a, "process")?
                    .split_once('/')
                    .ok_or_else(|| anyhow!("`process` is the id start_process returned"))?;
                let logs = self
                    .client
                    .raw(
                        Method::GET,
                        &format!(
                            "{tb}/process/session/{}/command/{}/logs",
                            enc(session),
                            enc(cmd)
                        ),
                        None,
                    )
                    .await?;
                let state = self
                    .client
                    .call(
                        Method::GET,
                        &format!("{tb}/process/session/{}/command/{}", enc(session), enc(cmd)),
                        None,
                    )
                    .await?;
                let status = match state["exitCode"].as_i64() {
                    Some(c) => format!("exited with {c}"),
                    None => "running".into(),
                };
                text(format!("[{status}]\n{}", String::from_utf8_lossy(&logs)))
            }
            other => Err(anyhow!("unknown tool {other}")),
        }
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("atoll", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools to create sandboxes (isolated Linux computers), run commands and code in them, \
                 and work with their files. Create one with create_sandbox and pass its id to the others.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult {
            tools: self.tools.as_ref().clone(),
            ..Default::default()
        })
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if !self.tools.iter().any(|t| t.name == request.name) {
            return Err(McpError::invalid_params(
                format!("unknown tool {}", request.name),
                None,
            ));
        }
        let args = request.arguments.unwrap_or_default();
        Ok(match self.run(&request.name, &args).await {
            Ok(content) => CallToolResult::success(content),
            // The caller sees the reason (a tool-level error).
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("{e:#}"))]),
        }
        .into())
    }
}

/// `atoll mcp start`: serves MCP on stdin/stdout until the client closes.
pub fn start(e: Endpoint, http: Option<String>) -> Result<()> {
    let client = Arc::new(Client::new(&e)?);
    let server = Server {
        client,
        tools: Arc::new(TOOLS.iter().map(tool_of).collect()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        if let Some(addr) = http {
            return serve_http(server, &addr).await;
        }
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow!("starting the MCP session: {e}"))?;
        running
            .waiting()
            .await
            .map_err(|e| anyhow!("the MCP session failed: {e}"))?;
        Ok(())
    })
}

/// MCP over streamable HTTP at `http://{addr}/mcp`: one session per
/// client (rmcp's session manager), Host checked against loopback names
/// (rmcp's default, against DNS rebinding) unless `ATOLL_MCP_ALLOWED_HOSTS`
/// lists others (comma-separated). Whoever reaches it acts with this
/// CLI's API key: keep it on loopback or behind your own auth.
async fn serve_http(server: Server, addr: &str) -> Result<()> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let mut config = StreamableHttpServerConfig::default();
    if let Ok(hosts) = std::env::var("ATOLL_MCP_ALLOWED_HOSTS") {
        config.allowed_hosts = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--http {addr}"))?;
    eprintln!(
        "MCP over streamable HTTP at http://{}/mcp",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving MCP over HTTP")
}

/// The `mcpServers` entry Claude Desktop, Cursor and Windsurf read.
pub fn config_json(e: &Endpoint) -> Result<Value> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut env = Map::new();
    if let Some(url) = e.url() {
        env.insert("ATOLL_API_URL".into(), url.into());
    }
    if let Some(key) = e.key() {
        env.insert("ATOLL_API_KEY".into(), key.into());
    }
    Ok(json!({
        "mcpServers": {
            "atoll": {
                "command": exe.display().to_string(),
                "args": ["mcp", "start"],
                "env": env,
            }
        }
    }))
}

/// `atoll mcp config`: prints that JSON.
pub fn config(e: Endpoint) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&config_json(&e)?)?);
    Ok(())
}

/// `atoll mcp init CLIENT`: merges the entry into that client's config
/// file (other servers in it are kept).
pub fn init(e: Endpoint, client: &str) -> Result<()> {
    let home = std::path::PathBuf::from(
        std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?,
    );
    let path = match client {
        "claude" => home.join(".config/Claude/claude_desktop_config.json"),
        "cursor" => home.join(".cursor/mcp.json"),
        "windsurf" => home.join(".codeium/windsurf/mcp_config.json"),
        other => {
            return Err(anyhow!(
                "unknown client {other:?}: claude, cursor or windsurf"
            ))
        }
    };
    let mut current: Value = match std::fs::read(&path) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("{} is not JSON", path.display()))?
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let entry = config_json(&e)?["mcpServers"]["atoll"].clone();
    if !current["mcpServers"].is_object() {
        current["mcpServers"] = json!({});
    }
    current["mcpServers"]["atoll"] = entry;
    crate::cli::write_private(&path, serde_json::to_string_pretty(&current)?.as_bytes())?;
    eprintln!("Added atoll to {}", path.display());
    Ok(())
}
