//! Routes of `crate::pty`: the REST calls (`/process/pty…`) and the two
//! WebSocket attaches (`create-connect`, `{id}/connect`), wire DTOs, and
//! the per-connection loops that move bytes between a socket and a
//! session.
//!
//! A connection gets `{"type":"control","status":"connected"}` first, then
//! the session's retained scrollback and live output as binary frames; its
//! binary (or text) frames are keystrokes. When the shell exits it gets the
//! `exited` control frame (only if it offered `X-Daytona-Pty-Exit-Control`,
//! which is then echoed) and a close frame whose reason carries the exit
//! code. Disconnecting detaches; the shell keeps running.
//!
//! Handlers return [`ApiError`]; a `PtyError`'s status and Daytona code are
//! chosen in `api::error`. Close codes of the WebSocket are chosen here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::{JsonBody, QueryParams};
use super::AppState;
use crate::pty::wire::{self, EXIT_CONTROL_PROTOCOL};
use crate::pty::{CreateParams, Output, Pty, PtyError, PtyInfo, WindowSize};

/// Largest input frame accepted from a client.
const MAX_INPUT_MESSAGE: usize = 1024 * 1024;
/// Largest output frame sent.
const OUTPUT_FRAME: usize = 32 * 1024;
/// A client that takes longer than this to accept one frame is closed
/// with 1008 "slow consumer" (it can reconnect).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the closing handshake may take.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/process/pty", get(list).post(create))
        .route("/process/pty/create-connect", get(create_connect))
        .route("/process/pty/{session_id}", get(info).delete(kill))
        .route("/process/pty/{session_id}/resize", post(resize))
        .route("/process/pty/{session_id}/connect", get(connect))
}

/// `PtyCreateRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PtyCreateRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    envs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cols: Option<i64>,
    #[serde(default)]
    rows: Option<i64>,
    #[serde(default)]
    lazy_start: Option<bool>,
}

/// `PtyCreateResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PtyCreateResponse {
    session_id: String,
}

/// `PtyListResponse`.
#[derive(Debug, Serialize)]
struct PtyListResponse {
    sessions: Vec<PtySessionInfo>,
}

/// `PtySessionInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PtySessionInfo {
    id: String,
    cwd: String,
    envs: BTreeMap<String, String>,
    cols: u16,
    rows: u16,
    created_at: String,
    active: bool,
    lazy_start: bool,
}

impl From<PtyInfo> for PtySessionInfo {
    fn from(i: PtyInfo) -> Self {
        PtySessionInfo {
            id: i.id,
            cwd: i.cwd,
            envs: i.envs,
            cols: i.size.cols,
            rows: i.size.rows,
            created_at: atoll_types::time::rfc3339(i.created_at),
            active: i.active,
            lazy_start: i.lazy_start,
        }
    }
}

/// `PtyResizeRequest`.
#[derive(Debug, Deserialize)]
struct PtyResizeRequest {
    cols: i64,
    rows: i64,
}

/// Query of `GET /process/pty/create-connect` (numbers parsed by hand for
/// clear messages).
#[derive(Debug, Deserialize)]
struct CreateConnectQuery {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    cols: Option<String>,
    #[serde(default)]
    rows: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
    /// Atoll's own: run this (`shell -c`) instead of a login shell.
    #[serde(default)]
    command: Option<String>,
}

type RouteResult<T> = Result<T, ApiError>;

fn session_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|r| ApiError::BadRequest(format!("invalid PTY session id: {}", r.body_text())))
}

fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    ws.map_err(|r| {
        ApiError::BadRequest(format!(
            "this route takes a WebSocket upgrade: {}",
            r.body_text()
        ))
    })
}

fn dimension(name: &str, value: Option<&str>) -> Result<Option<i64>, PtyError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| PtyError::Invalid(format!("{name} must be an integer, not {v:?}"))),
    }
}

async fn list(State(st): State<Arc<AppState>>) -> Json<PtyListResponse> {
    Json(PtyListResponse {
        sessions: st.ptys.list().into_iter().map(Into::into).collect(),
    })
}

async fn create(
    State(st): State<Arc<AppState>>,
    JsonBody(req): JsonBody<PtyCreateRequest>,
) -> RouteResult<(StatusCode, Json<PtyCreateResponse>)> {
    let params = CreateParams {
        id: req.id,
        cwd: req.cwd,
        envs: req.envs.unwrap_or_default(),
        size: WindowSize::checked(req.cols, req.rows)?,
        lazy_start: req.lazy_start.unwrap_or(false),
        command: None,
    };
    let pty = st.ptys.create(&st.process, params)?;
    Ok((
        StatusCode::CREATED,
        Json(PtyCreateResponse {
            session_id: pty.id().to_string(),
        }),
    ))
}

async fn info(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> RouteResult<Json<PtySessionInfo>> {
    let id = session_id(path)?;
    Ok(Json(st.ptys.get(&id)?.info().into()))
}

async fn kill(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> RouteResult<Json<serde_json::Value>> {
    let id = session_id(path)?;
    st.ptys.kill(&id).await?;
    // The SDK requires a JSON object here; an empty body makes it fail.
    Ok(Json(
        serde_json::json!({"message": format!("PTY session {id} killed")}),
    ))
}

async fn resize(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<PtyResizeRequest>,
) -> RouteResult<Json<PtySessionInfo>> {
    let id = session_id(path)?;
    let size = WindowSize::checked(Some(req.cols), Some(req.rows))?;
    Ok(Json(st.ptys.resize(&id, size)?.into()))
}

/// `GET /process/pty/create-connect?id&cols&rows[&cwd]`: creates the
/// session (409 if the id exists) with the env vars of the
/// `X-Daytona-Pty-Envs~` subprotocol, then attaches. Every check happens
/// before the upgrade, so failures are plain HTTP errors the SDK maps.
async fn create_connect(
    State(st): State<Arc<AppState>>,
    QueryParams(q): QueryParams<CreateConnectQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> RouteResult<Response> {
    let ws = upgrade(ws)?;
    let envs = wire::envs_from_protocols(ws.requested_protocols().map(|p| p.as_bytes()))?;
    let size = WindowSize::checked(
        dimension("cols", q.cols.as_deref())?,
        dimension("rows", q.rows.as_deref())?,
    )?;
    let id =
        q.id.filter(|id| !id.is_empty())
            .ok_or_else(|| PtyError::Invalid("the id query parameter is required".into()))?;
    let pty = st.ptys.create(
        &st.process,
        CreateParams {
            id: Some(id),
            cwd: q.cwd.filter(|c| !c.is_empty()),
            envs,
            size,
            lazy_start: false,
            command: q.command.filter(|c| !c.is_empty()),
        },
    )?;
    Ok(accept(ws, pty))
}

/// `GET /process/pty/{id}/connect`: attaches to an existing session
/// (starting a lazy one).
async fn connect(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> RouteResult<Response> {
    let ws = upgrade(ws)?;
    let id = session_id(path)?;
    let pty = st.ptys.attach(&id)?;
    Ok(accept(ws, pty))
}

fn accept(ws: WebSocketUpgrade, pty: Arc<Pty>) -> Response {
    let ws = ws
        .protocols([EXIT_CONTROL_PROTOCOL])
        .max_message_size(MAX_INPUT_MESSAGE)
        .max_frame_size(MAX_INPUT_MESSAGE);
    let exit_control = ws.selected_protocol().is_some();
    ws.on_upgrade(move |socket| serve_client(socket, pty, exit_control))
}

/// One attached connection: output and input run independently; the
/// connection ends when the client leaves (the session keeps running) or
/// after the exit has been reported.
async fn serve_client(socket: WebSocket, pty: Arc<Pty>, exit_control: bool) {
    let id = pty.id().to_string();
    tracing::debug!(id = %id, exit_control, "PTY client attached");
    let (sink, stream) = socket.split();
    let writer = write_output(sink, &pty, exit_control);
    let reader = read_input(stream, pty.input());
    tokio::pin!(writer, reader);
    tokio::select! {
        () = &mut reader => {}
        () = &mut writer => {
            // Let the client answer the close frame.
            let _ = tokio::time::timeout(CLOSE_GRACE, reader).await;
        }
    }
    tracing::debug!(id = %id, "PTY client detached");
}

/// Sends `connected`, the scrollback, live output, and finally the exit.
async fn write_output(mut sink: SplitSink<WebSocket, Message>, pty: &Pty, exit_control: bool) {
    if send(&mut sink, Message::text(wire::CONNECTED_FRAME))
        .await
        .is_err()
    {
        return;
    }
    let mut changes = pty.watch();
    let mut cursor = pty.replay_start();
    loop {
        changes.borrow_and_update();
        match pty.output_from(&mut cursor, OUTPUT_FRAME) {
            Output::Data(bytes) => match send(&mut sink, Message::Binary(bytes.into())).await {
                Ok(()) => {}
                Err(SendFailed::Closed) => return,
                Err(SendFailed::TimedOut) => {
                    tracing::debug!(id = %pty.id(), "closing a PTY client that stopped reading");
                    let _ = tokio::time::timeout(
                        CLOSE_GRACE,
                        sink.send(close(wire::CLOSE_POLICY_VIOLATION, "slow consumer")),
                    )
                    .await;
                    return;
                }
            },
            Output::Exited(exit) => {
                if exit_control
                    && send(&mut sink, Message::text(wire::exited_frame(&exit)))
                        .await
                        .is_err()
                {
                    return;
                }
                let (code, reason) = wire::exit_close(&exit);
                let _ = send(&mut sink, close(code, &reason)).await;
                return;
            }
            Output::Idle => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Forwards the client's frames to the shell until the connection ends.
/// Close frames are not the end: polling on lets the handshake complete.
async fn read_input(mut stream: SplitStream<WebSocket>, input: Option<mpsc::Sender<Bytes>>) {
    while let Some(msg) = stream.next().await {
        let data = match msg {
            Ok(m @ (Message::Binary(_) | Message::Text(_))) => m.into_data(),
            Ok(_) => continue,
            Err(_) => return,
        };
        if let (Some(tx), false) = (&input, data.is_empty()) {
            // An error means the shell is gone; the exit is on its way.
            let _ = tx.send(data).await;
        }
    }
}

enum SendFailed {
    Closed,
    TimedOut,
}

async fn send(sink: &mut SplitSink<WebSocket, Message>, msg: Message) -> Result<(), SendFailed> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailed::Closed),
        Err(_) => Err(SendFailed::TimedOut),
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_parse_as_integers() {
        assert!(dimension("cols", Some("12")).is_ok_and(|v| v == Some(12)));
        assert!(dimension("cols", Some("")).is_ok_and(|v| v.is_none()));
        assert!(dimension("cols", Some("wide")).is_err());
    }
}
