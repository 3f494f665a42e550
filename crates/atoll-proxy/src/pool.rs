//! Idle HTTP/1.1 client connections kept for reuse, keyed by where they
//! go: a sandbox daemon's socket (the control plane's toolbox and preview
//! proxy, [`crate::DaemonPool`]) or a port inside the sandbox (the daemon's
//! preview tunnel). A reused connection saves a connect, the other side's
//! accept and a new connection task per request.
//!
//! A connection goes back to the pool only once hyper says it is ready for
//! the next request, which it does only after the previous response body
//! was read to its end and the server kept the connection open; a body
//! dropped half-read, a `Connection: close` answer or an upgrade leaves the
//! connection out. At most `max_idle_per_key` idle connections are kept
//! per key, each for at most `idle_timeout`; the pool never limits how many
//! requests run at once.
//!
//! A pooled connection the server closed meanwhile is retried once on a
//! fresh one: always when hyper hands the request back unsent (its body is
//! then untouched); for a bodiless GET, HEAD, OPTIONS or TRACE (safe, so
//! repeatable, RFC 9110 §9.2.2) also when the connection closed before any
//! answer; and for a request with a body when writing it failed on a
//! closed connection (the server never got it whole) while what hyper had
//! taken of the body is still held
//! ([`Recorded`]: the first [`REPLAY_LIMIT`] bytes are kept until the
//! answer starts, so a body hyper pulled into a write that failed on a
//! closed connection is sent again, whole). Nothing else is ever retried,
//! and no body is ever lost silently: past the limit the error is returned.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use thiserror::Error;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body every pooled connection carries: callers' bodies are
/// boxed into it (see [`boxed`]), so one pool serves every body type.
pub type PoolBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes `body` into a [`PoolBody`].
pub fn boxed<B>(body: B) -> PoolBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Starts an HTTP/1.1 client connection over `io`, its connection task
/// spawned (upgrades allowed: the caller decides what to reuse).
pub async fn handshake<T>(io: T) -> Result<SendRequest<PoolBody>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "pooled connection ended");
        }
    });
    Ok(sender)
}

/// [`handshake`] over a tokio byte stream (a unix socket, a TCP stream, a
/// runtime's boxed stream).
pub async fn handshake_io<T>(io: T) -> Result<SendRequest<PoolBody>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    handshake(hyper_util::rt::TokioIo::new(io)).await
}

/// Idle connections by key. Cheap to clone (the clones share them).
pub struct ConnPool<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for ConnPool<K> {
    fn clone(&self) -> Self {
        ConnPool {
            inner: self.inner.clone(),
        }
    }
}

impl<K> std::fmt::Debug for ConnPool<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("max_idle_per_key", &self.inner.max_idle_per_key)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish_non_exhaustive()
    }
}

struct Inner<K> {
    idle: Mutex<Idle<K>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
}

struct Idle<K> {
    by_key: HashMap<K, Vec<IdleConn>>,
    last_sweep: Instant,
}

struct IdleConn {
    sender: SendRequest<PoolBody>,
    since: Instant,
}

impl IdleConn {
    fn usable(&self, now: Instant, timeout: Duration) -> bool {
        now.duration_since(self.since) < timeout && self.sender.is_ready()
    }
}

impl<K> ConnPool<K>
where
    K: Eq + Hash + Clone + Send + 'static,
{
    pub fn new(max_idle_per_key: usize, idle_timeout: Duration) -> Self {
        ConnPool {
            inner: Arc::new(Inner {
                idle: Mutex::new(Idle {
                    by_key: HashMap::new(),
                    last_sweep: Instant::now(),
                }),
                max_idle_per_key,
                idle_timeout,
            }),
        }
    }

    /// Idle connections currently kept for `key` (for tests and logs).
    pub fn idle_count(&self, key: &K) -> usize {
        self.lock().by_key.get(key).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle<K>> {
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection for `key` that is still
    /// open and ready; stale ones met on the way are dropped.
    fn checkout(&self, key: &K) -> Option<SendRequest<PoolBody>> {
        let now = Instant::now();
        let mut idle = self.lock();
        let conns = idle.by_key.get_mut(key)?;
        let mut found = None;
        while let Some(c) = conns.pop() {
            if c.usable(now, self.inner.idle_timeout) {
                found = Some(c.sender);
                break;
            }
        }
        if conns.is_empty() {
            idle.by_key.remove(key);
        }
        found
    }

    /// Keeps `sender` for the next request to `key`, unless `key` already
    /// has its share of idle connections (then it is dropped, which closes
    /// the connection). Expired connections of every key (sandboxes
    /// stopped or deleted meanwhile) are swept now and then.
    fn checkin(&self, key: K, sender: SendRequest<PoolBody>) {
        let now = Instant::now();
        let timeout = self.inner.idle_timeout;
        let mut idle = self.lock();
        if now.duration_since(idle.last_sweep) >= timeout {
            idle.last_sweep = now;
            idle.by_key.retain(|_, conns| {
                conns.retain(|c| c.usable(now, timeout));
                !conns.is_empty()
            });
        }
        let conns = idle.by_key.entry(key).or_default();
        if conns.len() < self.inner.max_idle_per_key {
            conns.push(IdleConn { sender, since: now });
        }
    }

    /// Sends `req` for `key`: over an idle pooled connection when there is
    /// one, else over a new one from `connect`. A pooled connection found
    /// closed is retried once on a new one as the module doc says.
    ///
    /// `reusable` is false for upgrade requests: those always get a new
    /// connection that never returns to the pool.
    pub async fn send<C, F>(
        &self,
        key: &K,
        req: Request<PoolBody>,
        reusable: bool,
        connect: C,
    ) -> Result<Response<PooledBody>, PoolError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<SendRequest<PoolBody>, PoolError>>,
    {
        let mut req = req;
        if reusable {
            if let Some(mut sender) = self.checkout(key) {
                let replay = Replay::of(&req);
                let (out, recorded) = if replay.is_none() {
                    let (parts, body) = req.into_parts();
                    let (body, rec) = Recorded::wrap(body);
                    let head = Replay {
                        method: parts.method.clone(),
                        uri: parts.uri.clone(),
                        version: parts.version,
                        headers: parts.headers.clone(),
                    };
                    (Request::from_parts(parts, boxed(body)), Some((head, rec)))
                } else {
                    (req, None)
                };
                // A request queued just as the connection's task ends (it
                // read the server's EOF) can be stranded in hyper's queue:
                // nothing answers it, and it is only handed back unsent
                // once the last handle of the connection goes. So the send
                // races the connection's end, and the handle is dropped
                // when it ends first.
                let sent = sender.try_send_request(out);
                tokio::pin!(sent);
                let ended = std::future::poll_fn(|cx| match sender.poll_ready(cx) {
                    std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(()),
                    _ => std::task::Poll::Pending,
                });
                let raced = tokio::select! {
                    biased;
                    r = &mut sent => Some(r),
                    () = ended => None,
                };
                let (result, sender) = match raced {
                    Some(r) => (r, Some(sender)),
                    None => {
                        drop(sender);
                        (sent.await, None)
                    }
                };
                match result {
                    Ok(resp) => {
                        if let Some((_, rec)) = &recorded {
                            rec.answered();
                        }
                        return Ok(match sender {
                            Some(sender) => self.track(key, sender, resp),
                            None => resp.map(|inner| PooledBody {
                                inner,
                                release: None,
                            }),
                        });
                    }
                    Err(mut e) => {
                        let closed = closed_before_answer(e.error());
                        req = match (e.take_message(), replay, recorded) {
                            (Some(unsent), _, _) => unsent,
                            (None, Some(replay), _) if closed => replay.request(),
                            (None, None, Some((head, rec))) if failed_writing(e.error()) => {
                                match rec.take_for_replay() {
                                    Some(body) => head.with_body(body),
                                    None => return Err(PoolError::Http(e.into_error())),
                                }
                            }
                            _ => return Err(PoolError::Http(e.into_error())),
                        };
                        tracing::debug!(error = %e.error(),
                            "pooled connection was closed; retrying on a new one");
                    }
                }
            }
        }
        let mut sender = connect().await?;
        let resp = sender.send_request(req).await?;
        Ok(if reusable {
            self.track(key, sender, resp)
        } else {
            resp.map(|inner| PooledBody {
                inner,
                release: None,
            })
        })
    }

    /// Wraps `resp`'s body so that `sender` returns to the pool when the
    /// body has been read to its end.
    fn track(
        &self,
        key: &K,
        sender: SendRequest<PoolBody>,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        let pool = self.clone();
        let key = key.clone();
        let mut release = Some(Release {
            sender,
            checkin: Box::new(move |sender| pool.checkin(key, sender)),
        });
        if resp.body().is_end_stream() {
            // Nothing to read (204, HEAD, `content-length: 0`): done now.
            if let Some(r) = release.take() {
                r.run();
            }
        }
        resp.map(|inner| PooledBody { inner, release })
    }
}

/// What it takes to send a bodiless safe request again.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<PoolBody>) -> Option<Replay> {
        let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
        (safe.contains(req.method()) && req.body().is_end_stream()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(self) -> Request<PoolBody> {
        self.with_body(boxed(Empty::<Bytes>::new()))
    }

    fn with_body(self, body: PoolBody) -> Request<PoolBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// How much of a request body is kept for a replay: a write that fails on
/// a closed pooled connection has taken at most a few chunks.
pub const REPLAY_LIMIT: usize = 1 << 20;

/// A request body whose first [`REPLAY_LIMIT`] bytes, as hyper takes them,
/// are kept (refcounted `Bytes`, no copies) until the answer starts, with
/// the rest of the body left where it can be taken back: after a send that
/// failed before any answer, [`Recorder::take_for_replay`] gives the whole
/// body again.
struct Recorded {
    state: Arc<Mutex<RecordState>>,
    end_at_start: bool,
    hint: SizeHint,
}

struct RecordState {
    inner: Option<PoolBody>,
    taken: Vec<Bytes>,
    taken_len: usize,
    /// Past the limit, or the answer started: nothing is kept.
    given_up: bool,
}

/// The sender's handle on a [`Recorded`] body.
struct Recorder(Arc<Mutex<RecordState>>);

impl Recorded {
    fn wrap(body: PoolBody) -> (Recorded, Recorder) {
        let end_at_start = body.is_end_stream();
        let hint = body.size_hint();
        let state = Arc::new(Mutex::new(RecordState {
            inner: Some(body),
            taken: Vec::new(),
            taken_len: 0,
            given_up: false,
        }));
        (
            Recorded {
                state: state.clone(),
                end_at_start,
                hint,
            },
            Recorder(state),
        )
    }
}

fn lock_state(m: &Mutex<RecordState>) -> std::sync::MutexGuard<'_, RecordState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut st = lock_state(&self.state);
        let Some(inner) = st.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if !st.given_up {
                    if st.taken_len + data.len() <= REPLAY_LIMIT {
                        st.taken_len += data.len();
                        st.taken.push(data.clone());
                    } else {
                        st.given_up = true;
                        st.taken = Vec::new();
                    }
                }
            } else if !st.given_up {
                // Trailers are not kept: such a body cannot be replayed.
                st.given_up = true;
                st.taken = Vec::new();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.end_at_start
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Recorder {
    /// The server answered: nothing needs keeping any more.
    fn answered(&self) {
        let mut st = lock_state(&self.0);
        st.given_up = true;
        st.taken = Vec::new();
    }

    /// The whole body again (what hyper took, then the rest), unless more
    /// than the limit was taken.
    fn take_for_replay(&self) -> Option<PoolBody> {
        let mut st = lock_state(&self.0);
        if st.given_up {
            return None;
        }
        let taken = std::mem::take(&mut st.taken);
        let rest = st.inner.take()?;
        Some(boxed(Replayed {
            taken: taken.into(),
            rest,
        }))
    }
}

/// A body sent again: the chunks hyper had taken, then the rest.
struct Replayed {
    taken: std::collections::VecDeque<Bytes>,
    rest: PoolBody,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(b) = self.taken.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.taken.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let taken: u64 = self.taken.iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(rest.lower() + taken);
        if let Some(u) = rest.upper() {
            h.set_upper(u + taken);
        }
        h
    }
}

/// Did sending fail while hyper was still writing the request (the
/// connection was closed under it), so the server never got all of it?
/// A request the server read whole and then dropped unanswered is not
/// this (it may have been acted on) and is never sent again unless safe.
fn failed_writing(e: &hyper::Error) -> bool {
    // hyper does not expose its error kinds; its message for a failed
    // body write is stable ("error writing a body to connection").
    !e.is_incomplete_message()
        && e.to_string().starts_with("error writing")
        && closed_before_answer(e)
}

/// Did the connection end before the server said anything (a server
/// closing an idle keep-alive connection just as the request went out)?
fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// A pooled connection waiting for its response body to end.
struct Release {
    sender: SendRequest<PoolBody>,
    checkin: Box<dyn FnOnce(SendRequest<PoolBody>) + Send>,
}

impl Release {
    /// The body is complete: back to the pool as soon as hyper has the
    /// connection idle again (at once, usually; else from a small task).
    /// A connection hyper will not reuse (`Connection: close`, an error)
    /// never becomes ready and is dropped.
    fn run(self) {
        let Release {
            mut sender,
            checkin,
        } = self;
        if sender.is_ready() {
            checkin(sender);
        } else if !sender.is_closed() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if sender.ready().await.is_ok() {
                        checkin(sender);
                    }
                });
            }
        }
    }
}

/// A response body from a pooled connection. Read to its end, it returns
/// the connection to the pool; dropped before that, the connection is
/// closed (hyper does not reuse a connection with response bytes unread).
pub struct PooledBody {
    inner: Incoming,
    release: Option<Release>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("inner", &self.inner)
            .field("pooled", &self.release.is_some())
            .finish()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            // The server side stops polling once `is_end_stream` says so.
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                self.release = None;
                false
            }
            Poll::Pending => false,
        };
        if done {
            if let Some(r) = self.release.take() {
                r.run();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            if self.inner.is_end_stream() {
                r.run();
            }
        }
    }
}
