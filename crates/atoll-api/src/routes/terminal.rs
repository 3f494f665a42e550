//! The web terminal: `{public-url}/terminal/{sandboxId}?token=…` serves a
//! page with xterm.js (vendored from npm at build time, served from the
//! binary) on top of the daemon's PTY WebSocket.
//!
//! The token is the sandbox's own preview token (what the SDKs'
//! `get_preview_link(port).token` returns); a port's signed preview token
//! and a public sandbox open nothing here (a shell is more than a port).
//! The page's WebSocket, `/terminal/{id}/pty?token&session&cols&rows`, is
//! forwarded as `/process/pty/create-connect` (session `web-<session>`);
//! `POST /terminal/{id}/resize?…&cols&rows` resizes it and `POST
//! /terminal/{id}/close?…` (sent when the page goes) ends its shell.

use crate::error::ApiError;
use crate::preview::{constant_time_eq, sandbox_token};
use crate::service::state;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

mod vendored {
    include!(concat!(env!("OUT_DIR"), "/xterm_vendored.rs"));
}

const XTERM_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.js"));
const XTERM_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.css"));
const FIT_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/addon-fit.js"));

#[derive(Deserialize)]
pub struct TerminalQuery {
    #[serde(default)]
    token: String,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    cols: Option<u16>,
    #[serde(default)]
    rows: Option<u16>,
}

/// The sandbox `id` if `token` is its own preview token.
async fn authorized(
    s: &AppState,
    id: &str,
    token: &str,
) -> Result<atoll_store::SandboxRecord, ApiError> {
    let denied = || ApiError::Unauthorized("a valid terminal token is required".into());
    if token.is_empty() {
        return Err(denied());
    }
    let r = s.store.sandbox(id).await?.ok_or_else(denied)?;
    let own = sandbox_token(&s.preview_secret, &r.id);
    if !constant_time_eq(own.as_bytes(), token.as_bytes()) {
        return Err(denied());
    }
    Ok(r)
}

/// A session name: what the page made up, kept to a path-safe form.
fn session_id(q: &TerminalQuery) -> Result<String, ApiError> {
    let s = q.session.as_deref().unwrap_or_default();
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::BadRequest(
            "session must be 1-64 letters, digits or '-'".into(),
        ));
    }
    Ok(format!("web-{s}"))
}

fn started(r: &atoll_store::SandboxRecord) -> Result<(), ApiError> {
    if r.state != state::STARTED {
        return Err(ApiError::Conflict(format!(
            "Sandbox {} is not started (state: {})",
            r.id, r.state
        )));
    }
    Ok(())
}

/// `GET /terminal/{id}`: the page.
pub async fn page(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
) -> Result<Response, ApiError> {
    let r = authorized(&s, &id, &q.token).await?;
    let body = PAGE
        .replace("{{SANDBOX}}", &html_escape(&r.name))
        .replace(
            "{{MISSING}}",
            if vendored::XTERM_VENDORED {
                ""
            } else {
                "xterm.js was not vendored when this server was built: run scripts/setup.sh (npm ci --prefix web) and rebuild."
            },
        );
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page's own scripts and styles only; no framing by other sites;
    // the token in its URL goes nowhere else.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `GET /terminal/assets/{file}`: xterm.js, its CSS, its fit addon, and
/// the page's script.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&[u8], &str) = match file.as_str() {
        "xterm.js" => (XTERM_JS, "text/javascript"),
        "xterm.css" => (XTERM_CSS, "text/css"),
        "addon-fit.js" => (FIT_JS, "text/javascript"),
        "terminal.js" => (SCRIPT.as_bytes(), "text/javascript"),
        _ => return ApiError::NotFound(format!("no asset {file}")).into_response(),
    };
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_str(kind).unwrap());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

/// `GET /terminal/{id}/pty`: the page's WebSocket, to a new PTY session.
pub async fn pty(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let r = authorized(&s, &id, &q.token).await?;
    started(&r)?;
    let session = session_id(&q)?;
    let query = format!(
        "id={session}&cols={}&rows={}",
        q.cols.unwrap_or(80).clamp(1, 1000),
        q.rows.unwrap_or(24).clamp(1, 1000)
    );
    s.record_activity(&r.id).await;
    let path = format!("/process/pty/create-connect?{query}");
    let resp = s
        .forward_to_toolbox(&r.id, req, &path)
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    Ok(resp.map(Body::new))
}

/// `POST /terminal/{id}/resize`: the page's terminal changed size.
pub async fn resize(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
) -> Result<Response, ApiError> {
    let r = authorized(&s, &id, &q.token).await?;
    started(&r)?;
    let session = session_id(&q)?;
    let (Some(cols), Some(rows)) = (q.cols, q.rows) else {
        return Err(ApiError::BadRequest("cols and rows are required".into()));
    };
    let body = serde_json::json!({"cols": cols, "rows": rows}).to_string();
    let req = http::Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let resp = s
        .forward_to_toolbox(&r.id, req, &format!("/process/pty/{session}/resize"))
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    Ok(resp.map(Body::new))
}

/// `POST /terminal/{id}/close`: the page went; its shell goes too.
pub async fn close(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
) -> Result<Response, ApiError> {
    let r = authorized(&s, &id, &q.token).await?;
    let session = session_id(&q)?;
    if r.state != state::STARTED {
        return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
    }
    let req = http::Request::builder()
        .method(Method::DELETE)
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let resp = s
        .forward_to_toolbox(&r.id, req, &format!("/process/pty/{session}"))
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    Ok(resp.map(Body::new))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{SANDBOX}} · Atoll terminal</title>
<link rel="stylesheet" href="assets/xterm.css">
<style>
  html, body { margin: 0; height: 100%; background: #111; color: #ddd; font-family: sans-serif; }
  #bar { padding: 4px 8px; font-size: 13px; background: #222; }
  #bar .state { float: right; color: #9c9; }
  #term { position: absolute; top: 26px; bottom: 0; left: 0; right: 0; padding: 4px; }
  #missing { color: #f88; padding: 8px; }
</style>
</head>
<body>
<div id="bar">{{SANDBOX}} <span class="state" id="state">connecting…</span></div>
<div id="missing">{{MISSING}}</div>
<div id="term"></div>
<script src="assets/xterm.js"></script>
<script src="assets/addon-fit.js"></script>
<script src="assets/terminal.js"></script>
</body>
</html>
"#;

/// The page's script: one PTY session per page, resized with the window,
/// closed when the page goes.
const SCRIPT: &str = r#"(function () {
  "use strict";
  if (typeof Terminal === "undefined") { return; }
  var params = new URLSearchParams(location.search);
  var token = params.get("token") || "";
  var base = location.pathname.replace(/\/+$/, "");
  var session = (self.crypto && crypto.randomUUID) ? crypto.randomUUID()
    : String(Date.now()) + "-" + Math.floor(Math.random() * 1e9);
  var stateEl = document.getElementById("state");
  var term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false });
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("term"));
  fit.fit();
  function q(extra) {
    var p = new URLSearchParams({ token: token, session: session });
    Object.keys(extra || {}).forEach(function (k) { p.set(k, extra[k]); });
    return p.toString();
  }
  var proto = location.protocol === "https:" ? "wss:" : "ws:";
  var ws = new WebSocket(proto + "//" + location.host + base + "/pty?" + q({ cols: term.cols, rows: term.rows }),
    ["X-Daytona-Pty-Exit-Control"]);
  ws.binaryType = "arraybuffer";
  var encoder = new TextEncoder();
  ws.onmessage = function (ev) {
    if (typeof ev.data === "string") {
      try {
        var msg = JSON.parse(ev.data);
        if (msg.status === "connected") { stateEl.textContent = "connected"; term.focus(); }
        if (msg.status === "exited") { stateEl.textContent = "exited (" + msg.exitCode + ")"; }
      } catch (e) { term.write(ev.data); }
      return;
    }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = function () {
    if (stateEl.textContent.indexOf("exited") !== 0) { stateEl.textContent = "disconnected"; }
    term.write("\r\n\x1b[2m[session ended]\x1b[0m\r\n");
  };
  term.onData(function (d) { if (ws.readyState === 1) { ws.send(encoder.encode(d)); } });
  term.onResize(function (size) {
    fetch(base + "/resize?" + q({ cols: size.cols, rows: size.rows }), { method: "POST" });
  });
  window.addEventListener("resize", function () { fit.fit(); });
  window.addEventListener("pagehide", function () {
    navigator.sendBeacon(base + "/close?" + q({}));
  });
})();
"#;
