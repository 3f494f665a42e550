//! `GET /process/exec-stream` (Atoll's own, not Daytona's): one command
//! with its stdin, stdout and stderr streamed apart over a WebSocket,
//! binary-clean. The SSH gateway runs `ssh host cmd`, `scp` and the sftp
//! subsystem over it.
//!
//! The client's first frame is text, JSON `{"command": "...", "cwd"?,
//! "envs"?}`: the command runs as `process/execute` runs it (`/bin/sh -c`
//! as the sandbox user, in its own process group). Then the client's
//! binary frames are its stdin; text `{"type":"eof"}` closes stdin and
//! `{"type":"signal","signal":"INT"}` (HUP, INT, QUIT, KILL, USR1, USR2,
//! TERM) signals the group. The daemon sends binary frames whose first
//! byte is 1 (stdout) or 2 (stderr), then text `{"type":"exit",
//! "exitCode":N}` (128+signal when killed by one) and a close. A bad
//! start frame gets `{"type":"error","message":...}`. A client that goes
//! away has the process group killed.
//!
//! Instead of a command, `{"builtin": "sftp"}` runs the daemon's own SFTP
//! server ([`crate::sftp`]) the same way, as the sandbox user: images
//! without OpenSSH's `sftp-server` (or without a shell) still serve
//! `sftp` and `scp`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::AppState;
use crate::process::plan::{shell_plan, StdinSource};
use crate::process::ExecuteParams;

/// Largest frame a client may send.
const MAX_INPUT_MESSAGE: usize = 1 << 20;
/// Largest output frame sent.
const OUTPUT_CHUNK: usize = 32 * 1024;
/// How long a finished command waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the client has to send its start frame.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Output frame tags.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/process/exec-stream", get(exec_stream))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Start {
    #[serde(default)]
    command: Option<String>,
    /// A program of the daemon itself to run instead: `sftp`.
    #[serde(default)]
    builtin: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Control {
    Eof,
    Signal { signal: String },
}

async fn exec_stream(
    State(st): State<Arc<AppState>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => ws
            .max_message_size(MAX_INPUT_MESSAGE)
            .max_frame_size(MAX_INPUT_MESSAGE)
            .on_upgrade(move |socket| serve(socket, st)),
        Err(r) => super::error::ApiError::BadRequest(format!(
            "this route takes a WebSocket upgrade: {}",
            r.body_text()
        ))
        .into_response(),
    }
}

fn signal_named(name: &str) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal::*;
    Some(match name.trim_start_matches("SIG") {
        "HUP" => SIGHUP,
        "INT" => SIGINT,
        "QUIT" => SIGQUIT,
        "KILL" => SIGKILL,
        "USR1" => SIGUSR1,
        "USR2" => SIGUSR2,
        "TERM" => SIGTERM,
        "ALRM" => SIGALRM,
        _ => return None,
    })
}

async fn refuse(mut socket: WebSocket, message: String) {
    let body = serde_json::json!({"type": "error", "message": message}).to_string();
    let _ = socket.send(Message::Text(body.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

async fn serve(mut socket: WebSocket, st: Arc<AppState>) {
    let start = match tokio::time::timeout(START_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Start>(&t)
            .map_err(|e| format!("the first frame must be {{\"command\": ...}}: {e}")),
        Ok(Some(Ok(_))) => Err("the first frame must be a text frame".into()),
        _ => return,
    };
    let start = match start {
        Ok(s) => s,
        Err(m) => return refuse(socket, m).await,
    };
    let (command, builtin) = match (start.command, start.builtin.as_deref()) {
        (Some(command), None) => (command, false),
        (None, Some("sftp")) => ("sftp".to_string(), true),
        (None, Some(other)) => return refuse(socket, format!("no builtin {other:?}")).await,
        _ => {
            return refuse(socket, "give either a command or a builtin".into()).await;
        }
    };
    let params = ExecuteParams {
        command,
        cwd: start.cwd,
        envs: start.envs,
        timeout: None,
    };
    let mut plan = match shell_plan(&st.process, &params) {
        Ok(p) => p,
        Err(e) => return refuse(socket, e.to_string()).await,
    };
    if builtin {
        // This very binary, by the link the kernel keeps to it (no path
        // in the sandbox names it).
        plan.program = "/proc/self/exe".into();
        plan.args = vec![crate::sftp::SUBCOMMAND.into()];
        plan.script = None;
    }
    plan.stdin = StdinSource::Bytes(Vec::new());
    let script = match &plan.script {
        Some(bytes) => match crate::process::run::script_memfd(bytes) {
            Ok(f) => Some(f),
            Err(e) => return refuse(socket, format!("passing the command: {e}")).await,
        },
        None => None,
    };
    let fd3 = script.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let mut cmd = match crate::process::child::user_command(&plan, fd3) {
        Ok(c) => c,
        Err(e) => return refuse(socket, format!("preparing the command: {e}")).await,
    };
    if builtin {
        cmd.arg0("atoll-daemon");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(script);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return refuse(socket, format!("starting {}: {e}", plan.program)).await,
    };
    let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let (mut stdin, stdout, stderr) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());

    let (mut sink, mut stream) = socket.split();
    // Output of both pipes, tagged, through one queue to the socket.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let pump = |tag: u8, pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        let tx = tx.clone();
        async move {
            let Some(mut pipe) = pipe else { return };
            let mut buf = vec![0u8; OUTPUT_CHUNK];
            loop {
                match pipe.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf[0] = tag;
                        if tx.send(buf[..=n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let out = tokio::spawn(pump(
        STDOUT,
        stdout.map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ));
    let err = tokio::spawn(pump(
        STDERR,
        stderr.map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ));
    drop(tx);

    let signal_group = move |sig| {
        if let Some(pg) = pgid {
            let _ = nix::sys::signal::killpg(pg, sig);
        }
    };
    // The client's frames, on their own task: a write to a full stdin
    // must never stop the output from being drained (the command may be
    // blocked writing it). Ends when the client goes.
    let mut input = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&b).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(Message::Text(t)) => match serde_json::from_str::<Control>(&t) {
                    Ok(Control::Eof) => stdin = None,
                    Ok(Control::Signal { signal }) => {
                        if let Some(sig) = signal_named(&signal) {
                            signal_group(sig);
                        }
                    }
                    Err(_) => {}
                },
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let mut client_gone = false;
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => {
                    if sink.send(Message::Binary(f.into())).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                None => break,
            },
            _ = &mut input => {
                client_gone = true;
                break;
            }
        }
    }
    if client_gone {
        // Nobody reads its output any more: the whole group goes.
        signal_group(nix::sys::signal::Signal::SIGKILL);
        out.abort();
        err.abort();
        input.abort();
        let _ = child.wait().await;
        return;
    }
    let code = match child.wait().await {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(-1)
        }
        Err(_) => -1,
    };
    let body = serde_json::json!({"type": "exit", "exitCode": code}).to_string();
    let _ = sink.send(Message::Text(body.into())).await;
    let _ = sink.send(Message::Close(None)).await;
    // The closing handshake: what the client still sends (its close
    // frame, a late eof) is read, not left unread in a socket that then
    // closes (which can cost the client the frames above).
    if tokio::time::timeout(CLOSE_GRACE, &mut input).await.is_err() {
        input.abort();
    }
}
