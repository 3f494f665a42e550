//! Preview routes: the preview-url and signed-preview-url API of Daytona,
//! `public/{isPublic}`, and the preview proxy in its two forms:
//! `/preview/{sandboxId}/{port}/…` (path form, works on localhost with no
//! DNS) and, with a preview domain, any request whose Host is
//! `{port}-{sandboxId}.{domain}` (host form, a middleware ahead of the
//! routes). Both share one authorization and proxy. Traffic goes to the
//! sandbox daemon, which tunnels it to `127.0.0.1:{port}` inside the
//! sandbox (so servers bound to localhost work), streaming both ways,
//! WebSockets included.

use crate::auth::Principal;
use crate::dto::{PortPreviewUrl, Sandbox, SignedPortPreviewUrl};
use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::preview::{self, valid_port};
use crate::service::state;
use crate::AppState;
use atoll_proxy::pool::ConnPool;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}/ports/{port}/preview-url",
    params(("sandboxIdOrName" = String, Path), ("port" = u16, Path)),
    responses((status = 200, body = PortPreviewUrl), (status = 400), (status = 404)))]
pub async fn preview_url(
    State(s): State<AppState>,
    p: Principal,
    Path((id, port)): Path<(String, String)>,
) -> Result<Json<PortPreviewUrl>, ApiError> {
    let port = valid_port(&port)?;
    let r = s.find(&p, &id).await?;
    Ok(Json(PortPreviewUrl {
        url: s.preview_url(&r.id, port),
        token: preview::sandbox_token(&s.preview_secret, &r.id),
        sandbox_id: r.id,
    }))
}

#[utoipa::path(get, path = "/api/sandbox/{sandboxIdOrName}/ports/{port}/signed-preview-url",
    params(("sandboxIdOrName" = String, Path), ("port" = u16, Path), ("expiresInSeconds" = Option<i64>, Query)),
    responses((status = 200, body = SignedPortPreviewUrl), (status = 400), (status = 404)))]
pub async fn signed_preview_url(
    State(s): State<AppState>,
    p: Principal,
    Path((id, port)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<SignedPortPreviewUrl>, ApiError> {
    let port = valid_port(&port)?;
    let secs = QueryPairs::parse(uri.query())
        .int("expiresInSeconds")?
        .unwrap_or(preview::SIGNED_DEFAULT_SECS);
    let r = s.find(&p, &id).await?;
    let token = s.sign_preview(&r, port, secs).await?;
    Ok(Json(SignedPortPreviewUrl {
        url: s.signed_preview_url(&r.id, port, &token),
        sandbox_id: r.id,
        port: i64::from(port),
        token,
    }))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/ports/{port}/signed-preview-url/{token}/expire",
    params(("sandboxIdOrName" = String, Path), ("port" = u16, Path), ("token" = String, Path)),
    responses((status = 200), (status = 404)))]
pub async fn expire_signed_preview_url(
    State(s): State<AppState>,
    p: Principal,
    Path((id, port, token)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let port = valid_port(&port)?;
    let r = s.find(&p, &id).await?;
    if !s
        .store
        .revoke_signed_preview(&preview::hash_token(&token), &r.id, i64::from(port))
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "no signed preview URL with that token for port {port} of sandbox {}",
            r.id
        )));
    }
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(post, path = "/api/sandbox/{sandboxIdOrName}/public/{isPublic}",
    params(("sandboxIdOrName" = String, Path), ("isPublic" = bool, Path)),
    responses((status = 200, body = Sandbox), (status = 400), (status = 404)))]
pub async fn set_public(
    State(s): State<AppState>,
    p: Principal,
    Path((id, public)): Path<(String, String)>,
) -> Result<Json<Sandbox>, ApiError> {
    let public = match public.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(ApiError::BadRequest(format!(
                "isPublic must be true or false, got {other:?}"
            )))
        }
    };
    Ok(Json(s.set_public(&p, &id, public).await?))
}

/// How old a sandbox row the preview proxy may act on (see `serve`).
const RECORD_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);
const TOKEN_HEADER: &str = "x-daytona-preview-token";
const TOKEN_QUERY: &str = preview::SANDBOX_AUTH_KEY_QUERY;

/// One preview request, whichever form it came in.
struct PreviewTarget {
    /// The sandbox id, or a signed token standing in for it (Daytona's
    /// signed host-form URLs are `{port}-{token}.{domain}`).
    label: String,
    port: u16,
    /// The path to ask the app for, from its leading `/`.
    rest: String,
    /// `X-Forwarded-Prefix` for the app: the path form's prefix; none for
    /// the host form, where the app owns the whole path.
    prefix: Option<String>,
}

/// `/preview/{sandboxId}/{port}/…`: the path form.
pub async fn forward(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let raw = req.uri().path().to_string();
    let mut parts = raw.trim_start_matches("/preview/").splitn(3, '/');
    let label = parts.next().unwrap_or_default().to_string();
    let port = valid_port(parts.next().unwrap_or_default())?;
    let rest = format!("/{}", parts.next().unwrap_or_default());
    let prefix = Some(format!("/preview/{label}/{port}"));
    serve(
        &s,
        PreviewTarget {
            label,
            port,
            rest,
            prefix,
        },
        req,
    )
    .await
}

/// Middleware: with a preview domain, a request whose Host is
/// `{port}-{sandboxId}.{domain}` is a preview of that port whatever its
/// path; every other request goes on to the API.
pub async fn by_host(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(domain) = s.config.preview_domain.as_deref() else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some((port, label)) = host.and_then(|h| preview::preview_host(h, domain)) else {
        return next.run(req).await;
    };
    let rest = req.uri().path().to_string();
    let served = async {
        let port = valid_port(&port)?;
        let target = PreviewTarget {
            label,
            port,
            rest,
            prefix: None,
        };
        serve(&s, target, req).await
    };
    served.await.into_response()
}

/// Authorizes a preview request (public sandbox, the organization's API
/// key, the sandbox's preview token or a signed token, as header, query or
/// in place of the sandbox id) and streams it to the daemon's tunnel.
async fn serve(s: &AppState, t: PreviewTarget, req: Request) -> Result<Response, ApiError> {
    // The row may be up to a second old (one DB read per request was a
    // good share of the proxy's latency): this server's own changes
    // (public, stop, delete) take effect at once, another server's on the
    // same database within the second. Signed tokens are still checked
    // against the database on every request, so revoking one is immediate.
    let (r, label_token) = match s.store.sandbox_recent(&t.label, RECORD_MAX_AGE).await? {
        Some(r) => (r, None),
        None => {
            let owner = s
                .store
                .signed_preview_sandbox(&preview::hash_token(&t.label))
                .await?;
            let r = match owner {
                Some(id) => s.store.sandbox(&id).await?,
                None => None,
            };
            (
                r.ok_or_else(|| ApiError::sandbox_not_found(&t.label))?,
                Some(t.label.clone()),
            )
        }
    };
    let (id, port) = (r.id.clone(), t.port);

    let q = QueryPairs::parse(req.uri().query());
    let offered = label_token
        .or_else(|| {
            req.headers()
                .get(TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| q.get(TOKEN_QUERY).map(str::to_string));
    let (head, body) = req.into_parts();
    // Any valid key (whatever it may do) is recognised, so it is never
    // forwarded; it opens a private sandbox only with write:sandboxes.
    let by_key = match head.headers.contains_key(header::AUTHORIZATION) {
        true => crate::auth::authenticate(&head, s).await.ok(),
        false => None,
    };
    // An Atoll API key never reaches the app; any other Authorization
    // (the app's own Basic or Bearer auth) does.
    let app_auth = match by_key {
        None => head.headers.get(header::AUTHORIZATION).cloned(),
        Some(_) => None,
    };
    if !r.public {
        let allowed = match (&by_key, &offered) {
            (Some(p), _)
                if p.organization_id == r.organization_id
                    && p.require("write:sandboxes").is_ok() =>
            {
                true
            }
            (_, Some(token)) => s.preview_token_ok(&r, port, token).await?,
            _ => false,
        };
        if !allowed {
            return Err(if by_key.is_none() && offered.is_none() {
                ApiError::Unauthorized(format!(
                    "sandbox {id} is private: send its preview token in {TOKEN_HEADER} or ?{TOKEN_QUERY}="
                ))
            } else {
                ApiError::Forbidden(format!(
                    "this token does not open port {port} of sandbox {id}"
                ))
            });
        }
    }
    proxy(s, &r, &t, Request::from_parts(head, body), app_auth).await
}

async fn proxy(
    s: &AppState,
    r: &atoll_store::SandboxRecord,
    t: &PreviewTarget,
    mut req: Request,
    app_auth: Option<HeaderValue>,
) -> Result<Response, ApiError> {
    let (port, rest) = (t.port, t.rest.as_str());
    if r.state != state::STARTED {
        return Err(ApiError::Conflict(format!(
            "Sandbox {} is not started (state: {}); start it to reach port {port}",
            r.id, r.state
        )));
    }
    let skip_activity = req
        .headers()
        .get("x-daytona-skip-last-activity-update")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !skip_activity {
        s.record_activity(&r.id).await;
    }
    // The token is ours, not the app's: drop it from the query and headers.
    let query: Vec<String> = QueryPairs::parse(req.uri().query())
        .0
        .into_iter()
        .filter(|(k, _)| k != TOKEN_QUERY)
        .map(|(k, v)| {
            let enc = |x: &str| {
                percent_encoding::utf8_percent_encode(x, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            format!("{}={}", enc(&k), enc(&v))
        })
        .collect();
    let target = if query.is_empty() {
        rest.to_string()
    } else {
        format!("{rest}?{}", query.join("&"))
    };
    req.headers_mut().remove(TOKEN_HEADER);
    let host = req.headers().get(header::HOST).cloned();
    let proto = match s.config.public_url.starts_with("https://") {
        true => "https",
        false => "http",
    };
    let mut extra: Vec<(HeaderName, HeaderValue)> = vec![(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    )];
    if let Some(prefix) = t
        .prefix
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        extra.push((HeaderName::from_static("x-forwarded-prefix"), prefix));
    }
    if let Some(h) = host {
        extra.push((HeaderName::from_static("x-forwarded-host"), h.clone()));
        extra.push((header::HOST, h));
    }
    if let Some(a) = app_auth {
        extra.push((header::AUTHORIZATION, a));
    }
    // Straight to 127.0.0.1:{port} inside the sandbox (the runtime makes
    // the connection), over pooled keep-alive connections: no hop through
    // the sandbox daemon.
    let connect = || s.app_connection(&r.id, port);
    let resp = s
        .app_connections
        .forward_with(&(r.id.clone(), port), connect, req, &target, &extra)
        .await
        .map_err(|e| {
            ApiError::BadGateway(format!(
                "nothing answers on port {port} of sandbox {}: {e}",
                r.id
            ))
        })?;
    Ok(resp.map(Body::new))
}

/// Idle connections kept per (sandbox, port): enough for a browser's six.
const APP_MAX_IDLE: usize = 8;
/// Under the keep-alive timeouts of common servers (Node and uvicorn 5 s),
/// and short, as a server that serves one connection at a time is blocked
/// by an idle one.
const APP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// The pool of preview connections to apps inside sandboxes.
pub fn app_pool() -> ConnPool<(String, u16)> {
    ConnPool::new(APP_MAX_IDLE, APP_IDLE_TIMEOUT)
}
