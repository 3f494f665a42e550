//! One session channel's bridge to the sandbox's daemon: a PTY session
//! (`/process/pty/create-connect`) for shells and `-t` commands, the
//! binary-clean `/process/exec-stream` for commands without a PTY and the
//! sftp subsystem. Each runs over its own toolbox connection of the
//! runtime; its window changes, stdin, EOF and signals go one way, its
//! output and exit code the other.

use std::collections::BTreeMap;

use atoll_api::AppState;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use russh::server::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// What a session channel runs.
pub enum Launch {
    Shell,
    Command(String),
    Sftp,
}

/// A `pty-req`: the terminal type and window size.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

/// A window dimension as the daemon takes it (1..=1000; 0 is "unknown").
pub fn dimension(v: u32) -> u16 {
    v.clamp(1, 1000) as u16
}

const EXIT_CONTROL_PROTOCOL: &str = "X-Daytona-Pty-Exit-Control";
const ENVS_PROTOCOL_PREFIX: &str = "X-Daytona-Pty-Envs~";

fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

type Ws = tokio_tungstenite::WebSocketStream<atoll_runtime_api::BoxedStream>;

/// A WebSocket to the daemon of `sandbox` at `path_and_query`, offering
/// `protocols`.
async fn websocket(
    state: &AppState,
    sandbox: &str,
    path_and_query: &str,
    protocols: &[String],
) -> Result<Ws, String> {
    let stream = state
        .ssh_toolbox_stream(sandbox)
        .await
        .map_err(|e| format!("reaching the sandbox: {e}"))?;
    let mut req = format!("ws://sandbox{path_and_query}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if !protocols.is_empty() {
        let joined = protocols.join(", ");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            joined
                .parse()
                .map_err(|_| "bad protocol header".to_string())?,
        );
    }
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| format!("the sandbox refused the session: {e}"))?;
    Ok(ws)
}

/// A small JSON request to the daemon (resize, delete); its status.
async fn toolbox_call(
    state: &AppState,
    sandbox: &str,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<http::StatusCode, String> {
    let stream = state
        .ssh_toolbox_stream(sandbox)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sandbox")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// Runs what the channel asked for until it ends, then reports the exit
/// code and closes the channel.
pub async fn run_channel(
    state: AppState,
    sandbox: String,
    channel: Channel<Msg>,
    pty: Option<PtyRequest>,
    env: BTreeMap<String, String>,
    what: Launch,
) {
    let (reader, writer) = channel.split();
    let code = match (what, pty) {
        (Launch::Sftp, _) => {
            // The image's OpenSSH sftp-server when it has one; the
            // daemon's own otherwise.
            let info = format!(
                "/files/info?path={}",
                percent_encoding::utf8_percent_encode(
                    crate::SFTP_SERVER,
                    percent_encoding::NON_ALPHANUMERIC
                )
            );
            // Only a clear "no such file" picks the built-in one (a daemon
            // from before it existed answers anything else).
            let has_openssh = !toolbox_call(&state, &sandbox, http::Method::GET, &info, None)
                .await
                .is_ok_and(|s| s == http::StatusCode::NOT_FOUND);
            let start = if has_openssh {
                serde_json::json!({ "command": format!("exec {}", crate::SFTP_SERVER), "envs": env })
            } else {
                serde_json::json!({ "builtin": "sftp", "envs": env })
            };
            exec_stream(&state, &sandbox, reader, &writer, start).await
        }
        (Launch::Command(cmd), None) => {
            let start = serde_json::json!({ "command": cmd, "envs": env });
            exec_stream(&state, &sandbox, reader, &writer, start).await
        }
        (Launch::Shell, pty) => {
            let pty = pty.unwrap_or(PtyRequest {
                term: "dumb".into(),
                cols: 80,
                rows: 24,
            });
            pty_session(&state, &sandbox, reader, &writer, pty, env, None).await
        }
        (Launch::Command(cmd), Some(pty)) => {
            pty_session(&state, &sandbox, reader, &writer, pty, env, Some(cmd)).await
        }
    };
    let code = match code {
        Ok(c) => c,
        Err(message) => {
            let _ = writer
                .extended_data_bytes(1, Bytes::from(format!("atoll: {message}\r\n")))
                .await;
            255
        }
    };
    let _ = writer.exit_status(code).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// A command over `/process/exec-stream`: the channel's data is its stdin,
/// its stdout and stderr the channel's data and extended data.
async fn exec_stream(
    state: &AppState,
    sandbox: &str,
    mut reader: russh::ChannelReadHalf,
    writer: &russh::ChannelWriteHalf<Msg>,
    start: serde_json::Value,
) -> Result<u32, String> {
    let ws = websocket(state, sandbox, "/process/exec-stream", &[]).await?;
    let (mut sink, mut stream) = ws.split();
    let start = start.to_string();
    sink.send(Message::Text(start.into()))
        .await
        .map_err(|e| e.to_string())?;
    // Both ways at once: a full stdin must not stop the output.
    let input = async {
        while let Some(msg) = reader.wait().await {
            let frame = match msg {
                ChannelMsg::Data { data } => Message::Binary(data),
                ChannelMsg::Eof => Message::Text(r#"{"type":"eof"}"#.into()),
                ChannelMsg::Signal { signal } => Message::Text(
                    serde_json::json!({"type": "signal", "signal": sig_name(&signal)})
                        .to_string()
                        .into(),
                ),
                ChannelMsg::Close => break,
                _ => continue,
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        // The client went: the daemon kills the command when the socket
        // goes.
        let _ = sink.close().await;
    };
    let output = async {
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(Message::Binary(b)) if !b.is_empty() => {
                    let data = b.slice(1..);
                    let sent = match b[0] {
                        crate_tags::STDERR => writer.extended_data_bytes(1, data).await,
                        _ => writer.data_bytes(data).await,
                    };
                    if sent.is_err() {
                        return Ok(255);
                    }
                }
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("exit") => return Ok(v["exitCode"].as_i64().unwrap_or(255) as u32),
                        Some("error") => {
                            return Err(v["message"]
                                .as_str()
                                .unwrap_or("the command failed")
                                .to_string())
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("the sandbox's stream broke: {e}")),
            }
        }
        Err("the sandbox closed the stream".to_string())
    };
    tokio::select! {
        code = output => code,
        () = input => Ok(255),
    }
}

/// The output frame tags of `/process/exec-stream`.
mod crate_tags {
    pub const STDERR: u8 = 2;
}

fn sig_name(s: &Sig) -> String {
    match s {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(c) => c.as_str(),
    }
    .to_string()
}

/// A PTY session of the daemon: the shell (or `command`) on a terminal of
/// the requested size; window changes resize it; its exit code ends the
/// channel. The session is killed when the channel goes first.
async fn pty_session(
    state: &AppState,
    sandbox: &str,
    mut reader: russh::ChannelReadHalf,
    writer: &russh::ChannelWriteHalf<Msg>,
    pty: PtyRequest,
    mut envs: BTreeMap<String, String>,
    command: Option<String>,
) -> Result<u32, String> {
    let id = format!("ssh-{}", uuid::Uuid::new_v4());
    envs.insert("TERM".into(), pty.term.clone());
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&envs).unwrap_or_default());
    let (cols, rows) = (pty.cols.to_string(), pty.rows.to_string());
    let mut q = vec![("id", id.as_str()), ("cols", &cols), ("rows", &rows)];
    if let Some(c) = command.as_deref() {
        q.push(("command", c));
    }
    let path = format!("/process/pty/create-connect?{}", query(&q));
    let protocols = [
        EXIT_CONTROL_PROTOCOL.to_string(),
        format!("{ENVS_PROTOCOL_PREFIX}{token}"),
    ];
    let ws = websocket(state, sandbox, &path, &protocols).await?;
    let (mut sink, mut stream) = ws.split();
    let resize_path = format!("/process/pty/{id}/resize");
    // Keystrokes and window changes one way, the screen the other, at once.
    let input = async {
        while let Some(msg) = reader.wait().await {
            match msg {
                ChannelMsg::Data { data }
                    if sink.send(Message::Binary(data.clone())).await.is_err() =>
                {
                    break
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } => {
                    let body = serde_json::json!({
                        "cols": dimension(col_width),
                        "rows": dimension(row_height),
                    });
                    let _ =
                        toolbox_call(state, sandbox, http::Method::POST, &resize_path, Some(body))
                            .await;
                }
                ChannelMsg::Signal { signal } => {
                    // A terminal's own signals are keys; map the common ones.
                    let key: &[u8] = match signal {
                        Sig::INT => b"\x03",
                        Sig::QUIT => b"\x1c",
                        _ => b"",
                    };
                    if !key.is_empty() {
                        let _ = sink.send(Message::Binary(Bytes::from_static(key))).await;
                    }
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = sink.close().await;
    };
    let output = async {
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(Message::Binary(b)) => {
                    if writer.data_bytes(b).await.is_err() {
                        return Ok(None);
                    }
                }
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["status"] == "exited" {
                        return Ok(Some(v["exitCode"].as_i64().unwrap_or(0) as u32));
                    }
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.as_ref().and_then(|f| {
                        serde_json::from_str::<serde_json::Value>(&f.reason).ok()?["exitCode"]
                            .as_i64()
                    });
                    let normal = frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal);
                    return Ok(Some(code.unwrap_or(if normal { 0 } else { 255 }) as u32));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("the terminal broke: {e}")),
            }
        }
        Ok(Some(255))
    };
    let outcome = tokio::select! {
        o = output => o,
        () = input => Ok(None),
    };
    if let Ok(Some(code)) = outcome {
        return Ok(code);
    }
    // The client left with the shell still running, or the terminal
    // broke: end the session (a detached PTY would otherwise live on).
    let _ = toolbox_call(
        state,
        sandbox,
        http::Method::DELETE,
        &format!("/process/pty/{id}"),
        None,
    )
    .await;
    outcome.map(|_| 255)
}
