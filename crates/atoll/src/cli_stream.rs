//! `atoll exec`'s streamed forms, over WebSockets of the toolbox API:
//! output as it comes (stdout and stderr apart, binary-clean, stdin with
//! `-i`) through Atoll's `/process/exec-stream`, and `-t`, the command on
//! a terminal of the daemon (`/process/pty/create-connect`) with the local
//! terminal raw, window changes followed and the exit code returned.
//! Against a server without `exec-stream` (Daytona) a plain exec falls
//! back to `/process/execute`.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::io::Write;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, Role};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Client;

type Ws = tokio_tungstenite::WebSocketStream<reqwest::Upgraded>;

impl Client {
    /// A WebSocket to `url` (an http(s) URL of the toolbox API) offering
    /// `protocols`; `None` when the server has no such route (404).
    pub(crate) async fn websocket(&self, url: &str, protocols: &[&str]) -> Result<Option<Ws>> {
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).map_err(|e| anyhow!("random: {e}"))?;
        let mut req = self
            .http()
            .get(url)
            .bearer_auth(self.key())
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header(
                "sec-websocket-key",
                base64::engine::general_purpose::STANDARD.encode(key),
            );
        if !protocols.is_empty() {
            req = req.header("sec-websocket-protocol", protocols.join(", "));
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching {url}"))?;
        match resp.status() {
            reqwest::StatusCode::SWITCHING_PROTOCOLS => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            status => {
                let text = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or(text);
                bail!("{status}: {message}");
            }
        }
        let upgraded = resp.upgrade().await.context("upgrading to a WebSocket")?;
        Ok(Some(
            tokio_tungstenite::WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await,
        ))
    }
}

/// Runs `command` through `/process/exec-stream`, its output written as it
/// comes; stdin forwarded with `stdin`, else closed at once. `None` if the
/// server has no such route.
pub async fn stream_exec(
    c: &Client,
    toolbox: &str,
    command: &str,
    cwd: Option<&str>,
    stdin: bool,
    timeout: std::time::Duration,
) -> Result<Option<i32>> {
    let Some(ws) = c
        .websocket(&format!("{toolbox}/process/exec-stream"), &[])
        .await?
    else {
        return Ok(None);
    };
    let (mut sink, mut stream) = ws.split();
    let mut start = json!({ "command": command });
    if let Some(cwd) = cwd {
        start["cwd"] = cwd.into();
    }
    sink.send(Message::Text(start.to_string().into())).await?;
    let input = async {
        if stdin {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink
                            .send(Message::Binary(buf[..n].to_vec().into()))
                            .await
                            .is_err()
                        {
                            return sink;
                        }
                    }
                }
            }
        }
        let _ = sink.send(Message::Text(r#"{"type":"eof"}"#.into())).await;
        sink
    };
    let output = async {
        while let Some(frame) = stream.next().await {
            match frame? {
                Message::Binary(b) if !b.is_empty() => {
                    if b[0] == 2 {
                        let mut err = std::io::stderr().lock();
                        let _ = err.write_all(&b[1..]);
                        let _ = err.flush();
                    } else {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&b[1..]);
                        let _ = out.flush();
                    }
                }
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("exit") => return Ok(v["exitCode"].as_i64().unwrap_or(1) as i32),
                        Some("error") => bail!("{}", v["message"].as_str().unwrap_or("failed")),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        bail!("the sandbox closed the stream before the command ended")
    };
    tokio::pin!(output);
    tokio::pin!(input);
    let mut sink = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            code = &mut output => return code.map(Some),
            s = &mut input, if sink.is_none() => sink = Some(s),
            () = &mut deadline => {
                // Kill it, as `process/execute` does past its timeout.
                if let Some(s) = sink.as_mut() {
                    let _ = s
                        .send(Message::Text(r#"{"type":"signal","signal":"KILL"}"#.into()))
                        .await;
                }
                eprintln!("atoll: the command ran past --timeout {}s and was killed", timeout.as_secs());
                return Ok(Some(124));
            }
        }
    }
}

/// The local terminal's size (columns, rows), if stdin is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills one Winsize that lives across the call.
    let rc =
        unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws as *mut nix::pty::Winsize) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The local terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        match tcgetattr(&stdin) {
            Ok(saved) => {
                let mut raw = saved.clone();
                cfmakeraw(&mut raw);
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
                RawMode(Some(saved))
            }
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// `exec -t`: `command` on a terminal of the daemon; keystrokes go there
/// raw, its screen comes here, window changes follow; its exit code.
pub async fn pty_exec(c: &Client, toolbox: &str, command: &str, cwd: Option<&str>) -> Result<i32> {
    let (cols, rows) = terminal_size().unwrap_or((80, 24));
    let id = format!("cli-{}", uuid::Uuid::new_v4());
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let envs = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({ "TERM": term }))?);
    let mut url = reqwest::Url::parse(&format!("{toolbox}/process/pty/create-connect"))?;
    url.query_pairs_mut()
        .append_pair("id", &id)
        .append_pair("cols", &cols.to_string())
        .append_pair("rows", &rows.to_string())
        .append_pair("command", command);
    if let Some(cwd) = cwd {
        url.query_pairs_mut().append_pair("cwd", cwd);
    }
    let envs_protocol = format!("X-Daytona-Pty-Envs~{envs}");
    let ws = c
        .websocket(
            url.as_str(),
            &["X-Daytona-Pty-Exit-Control", envs_protocol.as_str()],
        )
        .await?
        .ok_or_else(|| anyhow!("this server has no PTY sessions"))?;
    let (mut sink, mut stream) = ws.split();
    let _raw = RawMode::enter();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let resize_url = format!("{toolbox}/process/pty/{id}/resize");
    let input = async {
        let mut input = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        let mut open = true;
        loop {
            tokio::select! {
                n = input.read(&mut buf), if open => match n {
                    // Our stdin ended; the command runs on to its end.
                    Ok(0) | Err(_) => open = false,
                    Ok(n) => {
                        if sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                            return;
                        }
                    }
                },
                _ = winch.recv() => {
                    if let Some((cols, rows)) = terminal_size() {
                        let _ = c
                            .call(reqwest::Method::POST, &resize_url, Some(json!({"cols": cols, "rows": rows})))
                            .await;
                    }
                }
            }
        }
    };
    let output = async {
        while let Some(frame) = stream.next().await {
            match frame? {
                Message::Binary(b) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["status"] == "exited" {
                        return Ok(v["exitCode"].as_i64().unwrap_or(0) as i32);
                    }
                }
                Message::Close(frame) => {
                    let code = frame.as_ref().and_then(|f| {
                        serde_json::from_str::<serde_json::Value>(&f.reason).ok()?["exitCode"]
                            .as_i64()
                    });
                    let normal = frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal);
                    return Ok(code.unwrap_or(if normal { 0 } else { 1 }) as i32);
                }
                _ => {}
            }
        }
        Ok(1)
    };
    tokio::select! {
        code = output => code,
        () = input => {
            // The terminal went: the session goes with us.
            let _ = c.raw(reqwest::Method::DELETE, &format!("{toolbox}/process/pty/{id}"), None).await;
            Ok(1)
        }
    }
}
