//! Preview tunnel (`/proxy/{port}/{*path}`, Daytona's daemon route
//! `/proxy/:port/*path`): forwards a request to `127.0.0.1:{port}` inside
//! the sandbox and streams the answer back. Keep-alive connections to the
//! app are reused (`atoll_proxy::pool`: a few per port, closed after
//! `APP_IDLE_TIMEOUT` idle, never for upgrades), as Daytona's Go daemon
//! does; an HTTP/1.0 app closes each one itself.
//! Bodies are not buffered (SSE and chunked responses pass through as they
//! arrive), except small ones of declared length, read whole so head and
//! body go on in one write; upgrades (WebSockets) become raw byte pipes, as in
//! `atoll-proxy` one level up. Method, target (raw, still percent-encoded)
//! and end-to-end headers are kept, Host as the client sent it.

use std::sync::Arc;
use std::time::Duration;

use atoll_proxy::app::QuickAck;
use atoll_proxy::pool::{self, boxed, ConnPool, PoolError};
use axum::body::Body;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri, Version};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::error::ApiError;
use super::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/proxy/{port}", any(proxy))
        .route("/proxy/{port}/", any(proxy))
        .route("/proxy/{port}/{*path}", any(proxy))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either
/// direction; `connection`/`upgrade` are re-added on upgrades.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Idle connections kept per app port: enough for a browser's six.
const APP_MAX_IDLE_PER_PORT: usize = 8;
/// How long an idle app connection is kept: under the keep-alive timeouts
/// of common servers (Node and uvicorn 5 s), and short, as a server that
/// serves one connection at a time is blocked by an idle one.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

pub(super) fn app_pool() -> ConnPool<u16> {
    ConnPool::new(APP_MAX_IDLE_PER_PORT, APP_IDLE_TIMEOUT)
}

async fn proxy(State(st): State<Arc<AppState>>, mut req: Request) -> Result<Response, ApiError> {
    let (port, target) = split_target(req.uri())?;
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut out = axum::http::Request::builder()
        .method(parts.method)
        .uri(target)
        .version(Version::HTTP_11)
        .body(boxed(body))
        .map_err(|e| ApiError::BadRequest(format!("invalid proxy target: {e}")))?;
    let headers = out.headers_mut();
    copy_end_to_end(&parts.headers, headers);
    if !headers.contains_key(header::HOST) {
        // HTTP/1.1 requires one; the daemon itself is always reached so.
        if let Ok(v) = HeaderValue::from_str(&format!("localhost:{port}")) {
            headers.insert(header::HOST, v);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(v) = parts.headers.get(header::UPGRADE) {
            headers.insert(header::UPGRADE, v.clone());
        }
    }

    let unavailable = |reason: String| ApiError::UpstreamUnavailable { port, reason };
    let connect = || async {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(pool::handshake(TokioIo::new(QuickAck::new(stream))).await?)
    };
    let mut resp = st
        .app_connections
        .send(&port, out, !upgrade, connect)
        .await
        .map_err(|e| unavailable(e.to_string()))?;

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        atoll_proxy::splice_upgrade(client_upgrade, &mut resp);
    }

    let (mut parts, body) = resp.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    copy_end_to_end(&parts.headers, &mut headers);
    if switching {
        for name in [header::CONNECTION, header::UPGRADE] {
            if let Some(v) = parts.headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
    }
    parts.headers = headers;
    // We answer as the HTTP/1.1 server we are, whatever the app speaks: an
    // HTTP/1.0 status line would make hyper close the connection to the
    // control plane (and the control plane its client's) after every
    // response. The body's framing is hyper's to choose for our client.
    parts.version = Version::HTTP_11;
    let body = match small_fixed_length(&parts.headers) {
        Some(_) if !switching => {
            let whole = body
                .collect()
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            Body::from(whole.to_bytes())
        }
        _ => Body::new(body),
    };
    Ok(Response::from_parts(parts, body))
}

/// Bodies up to this size with a `Content-Length` are read whole before the
/// head goes on (see `small_fixed_length`).
const READ_WHOLE_LIMIT: u64 = 64 * 1024;

/// The length of a response body worth reading whole before answering:
/// many servers write head and body separately, and passing each on as it
/// comes costs the control plane and the client a wake-up more per
/// response. A body this small with a declared length is of no use to the
/// client before its end anyway; anything else (chunked, SSE, big
/// downloads) streams as it arrives.
fn small_fixed_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n <= READ_WHOLE_LIMIT)
}

/// The port and the upstream target (`/{path}?{query}`, raw) of a
/// `/proxy/{port}[/{path}]` request.
fn split_target(uri: &Uri) -> Result<(u16, String), ApiError> {
    let rest = uri
        .path()
        .strip_prefix("/proxy/")
        .ok_or_else(|| ApiError::BadRequest(format!("not a proxy path: {}", uri.path())))?;
    let (port, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let port = parse_port(port)?;
    let mut target = if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    if let Some(q) = uri.query() {
        target.push('?');
        target.push_str(q);
    }
    Ok((port, target))
}

fn parse_port(s: &str) -> Result<u16, ApiError> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0 && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid port {s:?}: must be a number from 1 to 65535"
            ))
        })
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// The header names a `Connection` header lists (themselves hop-by-hop).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Copies every header of `src` but the hop-by-hop ones (fixed and those
/// `Connection` names) into `dst`.
fn copy_end_to_end(src: &HeaderMap, dst: &mut HeaderMap) {
    let listed: Vec<HeaderName> = connection_tokens(src)
        .filter_map(|t| HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for (name, value) in src {
        if HOP_BY_HOP.contains(&name.as_str()) || listed.contains(name) {
            continue;
        }
        dst.append(name, value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Result<(u16, String), ApiError> {
        split_target(&uri.parse::<Uri>().expect("uri"))
    }

    #[test]
    fn splits_port_and_raw_target() {
        assert_eq!(target("/proxy/3000").unwrap(), (3000, "/".into()));
        assert_eq!(target("/proxy/3000/").unwrap(), (3000, "/".into()));
        assert_eq!(target("/proxy/1?a=b").unwrap(), (1, "/?a=b".into()));
        assert_eq!(
            target("/proxy/65535/a%20b/c/?x=1&y").unwrap(),
            (65535, "/a%20b/c/?x=1&y".into())
        );
        for bad in [
            "/proxy/0/",
            "/proxy/70000",
            "/proxy/+80",
            "/proxy/x/y",
            "/proxy//",
        ] {
            assert!(matches!(target(bad), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn drops_hop_by_hop_and_connection_listed_headers() {
        let mut src = HeaderMap::new();
        src.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Hop"),
        );
        src.insert("x-hop", HeaderValue::from_static("1"));
        src.insert(header::TE, HeaderValue::from_static("trailers"));
        src.insert(header::HOST, HeaderValue::from_static("example"));
        src.append("x-multi", HeaderValue::from_static("a"));
        src.append("x-multi", HeaderValue::from_static("b"));
        let mut dst = HeaderMap::new();
        copy_end_to_end(&src, &mut dst);
        assert_eq!(dst.len(), 3);
        assert_eq!(dst[header::HOST], "example");
        assert_eq!(dst.get_all("x-multi").iter().count(), 2);
        assert!(!is_upgrade(&src));
    }
}
