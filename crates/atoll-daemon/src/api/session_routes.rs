//! Routes of `crate::session` (`process/session…`): wire DTOs, thin
//! handlers, and the log WebSocket and HTTP follow stream. Handlers return
//! [`ApiError`]; a `SessionError`'s status and Daytona code are chosen in
//! `api::error`.
//!
//! Status codes follow what SDK 0.226.1 maps: create 201, delete 204,
//! synchronous exec 200, `runAsync` exec 202 `{"cmdId"}`, input 204.
//! Unknown session or command: 404 `NOT_FOUND`; duplicate session id: 409
//! `CONFLICT`; a command over 1 MiB: 413; input for a finished command:
//! 410 `COMMAND_ALREADY_COMPLETED`; a command for a session whose shell has
//! exited: 410 `SESSION_ENDED` (the SDK's precise error classes).
//!
//! Output format (Daytona's rule): clients that announce SDK ≥ 0.27 in
//! `X-Daytona-SDK-Version` (or send `X-Daytona-Split-Output: true`) get
//! `output` with the `\x01\x01\x01`/`\x02\x02\x02` line markers and
//! `stdout`/`stderr` split; older or anonymous clients get `output` with the
//! markers removed. Log streams follow the same rule. `GET …/logs` answers
//! `SessionCommandLogsResponse` JSON, except to SDKs before 0.167 (e.g.
//! `@daytonaio/sdk` 0.143), which read that body as the log itself in text
//! and split it on the markers themselves: they get it as `text/plain`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{parse_bool, JsonBody, QueryParams};
use super::AppState;
use crate::session::log::{demux, strip_marks};
use crate::session::{self, Command, CommandInfo, Cursor, ExecuteParams, SessionInfo};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/process/session", get(list).post(create))
        .route(
            "/process/session/entrypoint",
            get(entrypoint).delete(delete_entrypoint),
        )
        .route("/process/session/entrypoint/logs", get(entrypoint_logs))
        .route(
            "/process/session/{session_id}",
            get(get_session).delete(delete),
        )
        .route("/process/session/{session_id}/exec", post(execute))
        .route(
            "/process/session/{session_id}/command/{command_id}",
            get(get_command),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/input",
            post(send_input),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/logs",
            get(logs),
        )
}

/// The path's parameters, or a 400 naming what was wrong with them.
fn path_params<T>(path: std::result::Result<Path<T>, PathRejection>) -> Result<T> {
    path.map(|Path(p)| p)
        .map_err(|r| ApiError::BadRequest(format!("invalid path parameters: {}", r.body_text())))
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

// -- wire types --------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSessionRequest {
    session_id: String,
}

/// `SessionExecuteRequest`; `async` is the deprecated spelling of
/// `runAsync`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExecuteRequest {
    command: String,
    #[serde(default)]
    run_async: Option<bool>,
    #[serde(default, rename = "async")]
    legacy_async: Option<bool>,
    #[serde(default)]
    suppress_input_echo: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct SessionSendInputRequest {
    data: String,
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandDto {
    id: String,
    command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDto {
    session_id: String,
    commands: Vec<CommandDto>,
}

/// `SessionExecuteResponse`: only `cmdId` for `runAsync` (202).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExecuteResponse {
    cmd_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    /// Atoll extension: older output was dropped (the newest is kept).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// `SessionCommandLogsResponse`.
#[derive(Debug, Serialize)]
pub struct LogsResponse {
    output: String,
    stdout: String,
    stderr: String,
    /// Atoll extension: older output was dropped (the newest is kept).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl From<CommandInfo> for CommandDto {
    fn from(c: CommandInfo) -> Self {
        CommandDto {
            id: c.id,
            command: c.command,
            exit_code: c.exit_code,
        }
    }
}

impl From<SessionInfo> for SessionDto {
    fn from(s: SessionInfo) -> Self {
        SessionDto {
            session_id: s.id,
            commands: s.commands.into_iter().map(CommandDto::from).collect(),
        }
    }
}

/// How a client wants logs: marked (`output` keeps the markers, streams
/// carry them) or combined (markers removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Marked,
    Combined,
}

impl OutputFormat {
    /// Daytona's rule: SDKs before 0.27 and clients without a version
    /// (unless they ask for split output) get combined output; development
    /// builds and unparsable versions count as new.
    pub fn of(headers: &HeaderMap) -> Self {
        match header(headers, "x-daytona-sdk-version") {
            None if header(headers, "x-daytona-split-output")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")) =>
            {
                OutputFormat::Marked
            }
            None => OutputFormat::Combined,
            Some(v) if v.contains("dev") => OutputFormat::Marked,
            Some(v) => match parse_version(v) {
                Some(ver) if ver < (0, 27, 0) => OutputFormat::Combined,
                _ => OutputFormat::Marked,
            },
        }
    }

    fn render(self, marked: &[u8]) -> Vec<u8> {
        match self {
            OutputFormat::Marked => marked.to_vec(),
            OutputFormat::Combined => strip_marks(marked),
        }
    }
}

/// A header's trimmed value, unless absent, empty or not text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The first SDK release that reads `GET …/logs` as JSON.
const FIRST_JSON_LOGS_SDK: (u64, u64, u64) = (0, 167, 0);

/// Whether the client announces an SDK older than [`FIRST_JSON_LOGS_SDK`]:
/// it reads the logs body as text. Anonymous clients, development builds
/// and unparsable versions get JSON.
fn reads_logs_as_text(headers: &HeaderMap) -> bool {
    header(headers, "x-daytona-sdk-version")
        .filter(|v| !v.contains("dev"))
        .and_then(parse_version)
        .is_some_and(|v| v < FIRST_JSON_LOGS_SDK)
}

/// `major.minor.patch` (a `v` prefix and pre-release or build suffixes are
/// ignored).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn logs_of(cmd: &Command, format: OutputFormat) -> LogsResponse {
    let snap = cmd.snapshot();
    let (stdout, stderr) = demux(&snap.marked);
    LogsResponse {
        output: lossy(format.render(&snap.marked)),
        stdout: lossy(stdout),
        stderr: lossy(stderr),
        truncated: snap.truncated,
    }
}

// -- handlers ----------------------------------------------------------------

async fn list(State(st): State<Arc<AppState>>) -> Json<Vec<SessionDto>> {
    Json(
        st.sessions
            .list()
            .into_iter()
            .map(SessionDto::from)
            .collect(),
    )
}

async fn create(
    State(st): State<Arc<AppState>>,
    JsonBody(req): JsonBody<CreateSessionRequest>,
) -> Result<StatusCode> {
    st.sessions.create(&st.process, &req.session_id)?;
    Ok(StatusCode::CREATED)
}

async fn get_session(
    State(st): State<Arc<AppState>>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<SessionDto>> {
    let id = path_params(path)?;
    Ok(Json(st.sessions.get(&id)?.into()))
}

async fn delete(
    State(st): State<Arc<AppState>>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<StatusCode> {
    let id = path_params(path)?;
    st.sessions.delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn execute(
    State(st): State<Arc<AppState>>,
    path: std::result::Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SessionExecuteRequest>,
) -> Result<Response> {
    let id = path_params(path)?;
    let run_async = req.run_async.unwrap_or(false) || req.legacy_async.unwrap_or(false);
    let cmd = st.sessions.execute(
        &id,
        ExecuteParams {
            command: req.command,
            run_async,
            suppress_input_echo: req.suppress_input_echo.unwrap_or(false),
        },
    )?;
    if run_async {
        let body = SessionExecuteResponse {
            cmd_id: cmd.id.clone(),
            output: None,
            stdout: None,
            stderr: None,
            exit_code: None,
            truncated: false,
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let exit_code = cmd.wait().await;
    let logs = logs_of(&cmd, OutputFormat::of(&headers));
    Ok(Json(SessionExecuteResponse {
        cmd_id: cmd.id.clone(),
        output: Some(logs.output),
        stdout: Some(logs.stdout),
        stderr: Some(logs.stderr),
        exit_code: Some(exit_code),
        truncated: logs.truncated,
    })
    .into_response())
}

async fn get_command(
    State(st): State<Arc<AppState>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<CommandDto>> {
    let (sid, cid) = path_params(path)?;
    let cmd = st.sessions.command(&sid, &cid)?;
    Ok(Json(CommandDto {
        id: cmd.id.clone(),
        command: cmd.text(),
        exit_code: cmd.exit_code(),
    }))
}

async fn send_input(
    State(st): State<Arc<AppState>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SessionSendInputRequest>,
) -> Result<StatusCode> {
    let (sid, cid) = path_params(path)?;
    st.sessions.send_input(&sid, &cid, &req.data)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logs(
    State(st): State<Arc<AppState>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    QueryParams(q): QueryParams<LogsQuery>,
    headers: HeaderMap,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let (sid, cid) = path_params(path)?;
    let follow = parse_bool("follow", q.follow.as_deref())?;
    let format = OutputFormat::of(&headers);
    let cmd = st.sessions.command(&sid, &cid)?;
    if let Ok(ws) = ws {
        return Ok(ws.on_upgrade(move |socket| stream_ws(socket, Some(cmd), format, follow)));
    }
    if wants_websocket(&headers) {
        return Err(ApiError::BadRequest(
            "invalid WebSocket upgrade request".into(),
        ));
    }
    if follow {
        return Ok(stream_http(cmd, format));
    }
    if reads_logs_as_text(&headers) {
        let log = format.render(&cmd.snapshot().marked);
        return Ok(text_stream_response(Body::from(log)));
    }
    Ok(Json(logs_of(&cmd, format)).into_response())
}

/// The entrypoint session: the image's entrypoint as its one command (none
/// when the image has no entrypoint).
async fn entrypoint(State(st): State<Arc<AppState>>) -> Json<SessionDto> {
    Json(st.sessions.entrypoint_info().into())
}

/// The entrypoint session cannot be deleted (400, as any reserved id).
async fn delete_entrypoint(State(st): State<Arc<AppState>>) -> Result<StatusCode> {
    st.sessions.delete(session::ENTRYPOINT_ROUTE_ID)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The entrypoint's logs, like a command's (`follow` streams until it
/// exits); empty when the image has no entrypoint.
async fn entrypoint_logs(
    State(st): State<Arc<AppState>>,
    QueryParams(q): QueryParams<LogsQuery>,
    headers: HeaderMap,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let follow = parse_bool("follow", q.follow.as_deref())?;
    let format = OutputFormat::of(&headers);
    let cmd = st.sessions.entrypoint_command();
    if let Ok(ws) = ws {
        return Ok(ws.on_upgrade(move |socket| stream_ws(socket, cmd, format, follow)));
    }
    if wants_websocket(&headers) {
        return Err(ApiError::BadRequest(
            "invalid WebSocket upgrade request".into(),
        ));
    }
    let Some(cmd) = cmd else {
        if follow || reads_logs_as_text(&headers) {
            return Ok(text_stream_response(Body::empty()));
        }
        return Ok(Json(LogsResponse {
            output: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
        })
        .into_response());
    };
    if follow {
        return Ok(stream_http(cmd, format));
    }
    if reads_logs_as_text(&headers) {
        let log = format.render(&cmd.snapshot().marked);
        return Ok(text_stream_response(Body::from(log)));
    }
    Ok(Json(logs_of(&cmd, format)).into_response())
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

// -- streaming ---------------------------------------------------------------

/// How long a closing WebSocket waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Sends the command's log as binary frames (as it grows, when following)
/// and closes with 1000 once the command has finished and everything was
/// sent. Pings are answered while waiting (axum replies as frames are read).
async fn stream_ws(
    mut socket: WebSocket,
    cmd: Option<Arc<Command>>,
    format: OutputFormat,
    follow: bool,
) {
    if let Some(cmd) = cmd {
        let mut progress = cmd.subscribe();
        let mut cursor = Cursor::default();
        loop {
            progress.borrow_and_update();
            let chunk = cmd.read(&mut cursor, session::command::FOLLOW_CHUNK);
            let data = format.render(&chunk.data);
            if !data.is_empty() && socket.send(Message::Binary(data.into())).await.is_err() {
                return;
            }
            if !chunk.data.is_empty() {
                continue;
            }
            if chunk.done || !follow {
                break;
            }
            tokio::select! {
                changed = progress.changed() => if changed.is_err() { break },
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    close_normally(socket).await;
}

/// Sends close 1000 and waits briefly for the client's answer.
async fn close_normally(mut socket: WebSocket) {
    let frame = CloseFrame {
        code: 1000,
        reason: "".into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// `follow=true` without a WebSocket: the log as a chunked text body that
/// ends when the command has finished and everything was sent.
fn stream_http(cmd: Arc<Command>, format: OutputFormat) -> Response {
    let progress = cmd.subscribe();
    let stream = futures_util::stream::unfold(
        (cmd, Cursor::default(), progress, false),
        move |(cmd, mut cursor, mut progress, ended)| async move {
            if ended {
                return None;
            }
            loop {
                progress.borrow_and_update();
                let chunk = cmd.read(&mut cursor, session::command::FOLLOW_CHUNK);
                let data = format.render(&chunk.data);
                if !data.is_empty() {
                    let done = chunk.done;
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(data)),
                        (cmd, cursor, progress, done),
                    ));
                }
                if !chunk.data.is_empty() {
                    continue;
                }
                if chunk.done || progress.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    text_stream_response(Body::from_stream(stream))
}

fn text_stream_response(body: Body) -> Response {
    let mut res = Response::new(body);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn output_format_follows_the_sdk_version() {
        use OutputFormat::*;
        assert_eq!(OutputFormat::of(&headers(&[])), Combined);
        assert_eq!(
            OutputFormat::of(&headers(&[("x-daytona-split-output", "true")])),
            Marked
        );
        for (v, want) in [
            ("0.226.1", Marked),
            ("0.27.0", Marked),
            ("0.26.9", Combined),
            ("0.21.0-alpha.1", Combined),
            ("0.0.0-dev", Marked),
            ("garbage", Marked),
            ("1.0", Marked),
        ] {
            assert_eq!(
                OutputFormat::of(&headers(&[("x-daytona-sdk-version", v)])),
                want,
                "{v}"
            );
        }
    }

    #[test]
    fn sdks_before_0_167_read_logs_as_text() {
        assert!(!reads_logs_as_text(&headers(&[])));
        for (v, text) in [
            ("0.143.0", true),
            ("0.166.9", true),
            ("0.21.0", true),
            ("0.167.0", false),
            ("0.192.0", false),
            ("0.226.1", false),
            ("0.0.0-dev", false),
            ("garbage", false),
        ] {
            assert_eq!(
                reads_logs_as_text(&headers(&[("x-daytona-sdk-version", v)])),
                text,
                "{v}"
            );
        }
    }
}
