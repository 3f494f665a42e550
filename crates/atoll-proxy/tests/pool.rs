//! The daemon connection pool against a test daemon on a unix socket that
//! counts the connections it accepts.

use atoll_proxy::DaemonPool;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// A socket path of its own under the temp dir, removed on drop.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "atoll-proxy-pool-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        SocketPath(dir.join("toolbox.sock"))
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The test daemon's answers: `/big` is 1 MiB, `/close` says
/// `Connection: close`, `/upgrade` switches protocols, `/slow` waits
/// 100 ms, anything else is "ok" plus the request body.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if upgrade {
        tokio::spawn(async move {
            if let Ok(io) = hyper::upgrade::on(req).await {
                let mut io = TokioIo::new(io);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "echo")
            .body(Full::default())
            .expect("response");
        return Ok(resp);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::builder();
    let out = match path.as_str() {
        "/big" => Bytes::from(vec![b'x'; 1 << 20]),
        "/close" => {
            resp = resp.header(header::CONNECTION, "close");
            Bytes::from_static(b"ok")
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Bytes::from_static(b"ok")
        }
        _ => [&b"ok"[..], &body].concat().into(),
    };
    Ok(resp.body(Full::new(out)).expect("response"))
}

/// A keep-alive HTTP/1.1 daemon on `path`; returns its accept counter.
fn serve(path: &Path) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(path).expect("bind");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .with_upgrades()
                    .await;
            });
        }
    });
    accepted
}

/// A daemon that answers one request per connection and then closes it,
/// without announcing it (as a daemon that restarts or drops idle
/// connections does).
fn serve_once_per_connection(path: &Path) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(path).expect("bind");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    accepted
}

/// A keep-alive daemon that closes all its connections, idle or not,
/// whenever asked through the returned sender (answered once done).
fn serve_until_told(
    path: &Path,
) -> (
    Arc<AtomicUsize>,
    tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
) {
    let listener = UnixListener::bind(path).expect("bind");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (tell, mut told) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accept = listener.accept() => {
                    let Ok((stream, _)) = accept else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer)),
                    );
                }
                done = told.recv() => {
                    let Some(done) = done else { return };
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                    let _ = done.send(());
                }
            }
        }
    });
    (accepted, tell)
}

async fn get_text(pool: &DaemonPool, socket: &Path, path: &str) -> String {
    let req = Request::get("/ignored")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = pool
        .forward(&atoll_proxy::Endpoint::unchecked(socket), req, path, &[])
        .await
        .expect("forward");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let socket = SocketPath::new("seq");
    let accepted = serve(&socket.0);
    let pool = DaemonPool::default();
    for _ in 0..20 {
        assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    }
    let (status, body) = pool
        .get(&atoll_proxy::Endpoint::unchecked(&socket.0), "/small", 1024)
        .await
        .expect("get");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    // A POST with a body and a big download reuse it too.
    let req = Request::post("/")
        .body(Full::new(Bytes::from("+body")))
        .unwrap();
    let resp = pool
        .forward(
            &atoll_proxy::Endpoint::unchecked(&socket.0),
            req,
            "/echo",
            &[],
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok+body");
    assert_eq!(get_text(&pool, &socket.0, "/big").await.len(), 1 << 20);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(&socket.0), 1);
}

#[tokio::test]
async fn connection_closed_by_the_daemon_is_replaced() {
    let socket = SocketPath::new("closed");
    let accepted = serve_once_per_connection(&socket.0);
    let pool = DaemonPool::default();
    assert_eq!(get_text(&pool, &socket.0, "/").await, "ok");
    // Once the close has been seen, the pool skips the dead connection.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get_text(&pool, &socket.0, "/").await, "ok");
    // Sent at once, the next request may race the close; still no error.
    for _ in 0..50 {
        assert_eq!(get_text(&pool, &socket.0, "/").await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 52);
}

#[tokio::test]
async fn request_racing_the_close_of_its_pooled_connection_is_retried() {
    let socket = SocketPath::new("race");
    let (accepted, close_all) = serve_until_told(&socket.0);
    let pool = DaemonPool::default();
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    assert_eq!(pool.idle_count(&socket.0), 1);
    // The daemon closes the idle connection; the request goes out before
    // the pool's side has read the EOF (a single-threaded runtime runs
    // this task before the connection's), finds it closed unsent and is
    // sent again on a new connection.
    let (done, closed) = tokio::sync::oneshot::channel();
    close_all.send(done).await.unwrap();
    closed.await.unwrap();
    assert_eq!(pool.idle_count(&socket.0), 1);
    let req = Request::post("/")
        .body(Full::new(Bytes::from("+body")))
        .unwrap();
    let resp = pool
        .forward(
            &atoll_proxy::Endpoint::unchecked(&socket.0),
            req,
            "/echo",
            &[],
        )
        .await
        .expect("retried");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok+body");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn daemon_restart_on_the_same_socket() {
    let socket = SocketPath::new("restart");
    let pool = DaemonPool::default();
    {
        let accepted = serve_once_per_connection(&socket.0);
        assert_eq!(get_text(&pool, &socket.0, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
    std::fs::remove_file(&socket.0).expect("remove socket");
    let accepted = serve(&socket.0);
    assert_eq!(get_text(&pool, &socket.0, "/").await, "ok");
    assert_eq!(get_text(&pool, &socket.0, "/").await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn body_dropped_unread_is_not_reused() {
    let socket = SocketPath::new("unread");
    let accepted = serve(&socket.0);
    let pool = DaemonPool::default();
    let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
    let resp = pool
        .forward(
            &atoll_proxy::Endpoint::unchecked(&socket.0),
            req,
            "/big",
            &[],
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20));
    drop(body);
    assert_eq!(pool.idle_count(&socket.0), 0);
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_answer_is_not_reused() {
    let socket = SocketPath::new("close");
    let accepted = serve(&socket.0);
    let pool = DaemonPool::default();
    assert_eq!(get_text(&pool, &socket.0, "/close").await, "ok");
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A front server on `front` that forwards every request through `pool`
/// to the daemon on `daemon`, as the API's toolbox route does.
fn serve_front(front: &Path, daemon: &Path, pool: &DaemonPool) {
    let listener = UnixListener::bind(front).expect("bind");
    let (daemon, pool) = (daemon.to_path_buf(), pool.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (daemon, pool) = (daemon.clone(), pool.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (daemon, pool) = (daemon.clone(), pool.clone());
                async move {
                    let target = req.uri().path().to_string();
                    pool.forward(
                        &atoll_proxy::Endpoint::unchecked(&daemon),
                        req,
                        &target,
                        &[],
                    )
                    .await
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn upgrades_get_their_own_connection_and_are_never_pooled() {
    let (socket, front) = (SocketPath::new("upgrade"), SocketPath::new("front"));
    let accepted = serve(&socket.0);
    let pool = DaemonPool::default();
    serve_front(&front.0, &socket.0, &pool);
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");

    let stream = tokio::net::UnixStream::connect(&front.0).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/ws")
        .header(header::HOST, "sandbox")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgraded"));
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // The upgrade got a connection of its own, which never joined the
    // pool; the idle one from before still serves plain requests.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.idle_count(&socket.0), 1);
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    drop(io);
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.idle_count(&socket.0), 1);
}

#[tokio::test]
async fn concurrent_requests_open_connections_and_idle_ones_are_capped() {
    let socket = SocketPath::new("cap");
    let accepted = serve(&socket.0);
    let pool = DaemonPool::new(2, Duration::from_secs(30));
    let runs: Vec<_> = (0..5)
        .map(|_| {
            let (pool, path) = (pool.clone(), socket.0.clone());
            tokio::spawn(async move { get_text(&pool, &path, "/slow").await })
        })
        .collect();
    for r in runs {
        assert_eq!(r.await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    assert_eq!(pool.idle_count(&socket.0), 2);
    for _ in 0..5 {
        assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn idle_connections_expire() {
    let socket = SocketPath::new("expire");
    let accepted = serve(&socket.0);
    let pool = DaemonPool::new(4, Duration::from_millis(50));
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A request body that yields its chunks one poll at a time, as a
/// streamed upload does (never known to be complete up front).
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_racing_the_close_of_its_pooled_connection_is_retried() {
    let socket = SocketPath::new("race-stream");
    let (accepted, close_all) = serve_until_told(&socket.0);
    let pool = DaemonPool::default();
    for round in 0..300 {
        // A round that hangs fails (a stranded request once did).
        tokio::time::timeout(Duration::from_secs(20), async {
            assert_eq!(get_text(&pool, &socket.0, "/small").await, "ok");
            let (done, closed) = tokio::sync::oneshot::channel();
            close_all.send(done).await.unwrap();
            closed.await.unwrap();
            let chunks = [&b"+a"[..], b"+b", b"+c"]
                .map(Bytes::from_static)
                .into_iter()
                .collect();
            let req = Request::post("/").body(Chunks(chunks)).unwrap();
            let resp = pool
                .forward(
                    &atoll_proxy::Endpoint::unchecked(&socket.0),
                    req,
                    "/echo",
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok+a+b+c", "round {round}");
        })
        .await
        .unwrap_or_else(|_| panic!("round {round} hung for 20 s"));
    }
    assert!(accepted.load(Ordering::SeqCst) >= 301);
}
