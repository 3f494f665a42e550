//! The preview tunnel `/proxy/{port}/{*path}`: plain requests, big bodies,
//! streaming without buffering, upgrades, and its errors, against small
//! servers on 127.0.0.1 started by the tests.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{random_bytes, Daemon};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(20);

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Serves every connection on a fresh 127.0.0.1 port with `handler`;
/// returns the port.
async fn upstream<F, Fut>(handler: F) -> u16
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).boxed()
}

/// Sends a request to the daemon and returns the response with its body
/// unread.
async fn open(d: &Daemon, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = UnixStream::connect(&d.socket).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.expect("send")
}

#[tokio::test]
async fn get_keeps_method_path_query_and_headers() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = upstream({
        let seen = seen.clone();
        move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let h = |n: &str| {
                    req.headers()
                        .get(n)
                        .map(|v| v.to_str().unwrap_or_default().to_string())
                };
                seen.lock().unwrap().push((
                    req.method().to_string(),
                    req.uri().to_string(),
                    h("host"),
                    h("x-custom"),
                    h("x-hop"),
                ));
                Response::builder()
                    .header("x-upstream", "yes")
                    .header("content-type", "text/plain")
                    .body(full("hello from upstream"))
                    .unwrap()
            }
        }
    })
    .await;
    let d = Daemon::start().await;

    let r = d
        .send(
            Method::GET,
            &format!("/proxy/{port}/hello?x=1"),
            &[
                ("x-custom", "kept"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "dropped"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-upstream"), "yes");
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(&r.body[..], b"hello from upstream");

    // No path at all is "/"; the raw target is kept, query included.
    for (uri, want) in [
        (format!("/proxy/{port}"), "/"),
        (format!("/proxy/{port}/"), "/"),
        (format!("/proxy/{port}?a=b"), "/?a=b"),
        (format!("/proxy/{port}/a%20b/c/?q=%2F"), "/a%20b/c/?q=%2F"),
    ] {
        let r = d.send(Method::DELETE, &uri, &[], Bytes::new()).await;
        assert_eq!(r.status, 200, "{uri}");
        assert_eq!(seen.lock().unwrap().last().unwrap().1, want, "{uri}");
    }

    let seen = seen.lock().unwrap();
    let (method, target, host, custom, hop) = &seen[0];
    assert_eq!(method, "GET");
    assert_eq!(target, "/hello?x=1");
    assert_eq!(
        host.as_deref(),
        Some("sandbox"),
        "Host as the client sent it"
    );
    assert_eq!(custom.as_deref(), Some("kept"));
    assert_eq!(hop, &None, "headers named by Connection are hop-by-hop");
    assert_eq!(seen[1].0, "DELETE");
}

#[tokio::test]
async fn post_body_of_5_mib_round_trips() {
    let port = upstream(|req: Request<Incoming>| async move {
        let ct = req.headers().get("content-type").cloned();
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let mut res = Response::builder().header("x-received", body.len().to_string());
        if let Some(ct) = ct {
            res = res.header("content-type", ct);
        }
        res.body(full(body)).unwrap()
    })
    .await;
    let d = Daemon::start().await;
    let data = Bytes::from(random_bytes(5 * 1024 * 1024, 7));
    let r = d
        .send(
            Method::POST,
            &format!("/proxy/{port}/echo"),
            &[("content-type", "application/octet-stream")],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-received"), data.len().to_string());
    assert_eq!(r.header("content-type"), "application/octet-stream");
    assert_eq!(r.body.len(), data.len());
    assert!(r.body == data, "echoed body differs");
}

/// The next data chunk of `body`, which must come within [`WAIT`].
async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("chunk arrives without waiting for the rest")
        .map(|f| f.expect("frame").into_data().expect("data"))
}

#[tokio::test]
async fn streamed_response_is_not_buffered() {
    // The second chunk is only sent once the client has the first.
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let port = upstream(move |_req: Request<Incoming>| {
        let release = release.lock().unwrap().take();
        async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: one\n\n")))).await;
                if let Some(release) = release {
                    let _ = release.await;
                }
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: two\n\n")))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
    })
    .await;
    let d = Daemon::start().await;
    let req = Request::get(format!("/proxy/{port}/events"))
        .header("host", "sandbox")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = tokio::time::timeout(WAIT, open(&d, req))
        .await
        .expect("response head arrives before the body ends");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();

    let mut first = Vec::new();
    while !first.ends_with(b"\n\n") {
        first.extend_from_slice(&next_chunk(&mut body).await.expect("first chunk"));
    }
    assert_eq!(first, b"data: one\n\n");
    release_tx.send(()).expect("release");
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: two\n\n");
}

/// Reads up to the end of an HTTP head.
async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read head");
        assert_eq!(n, 1, "eof in head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8 head")
}

#[tokio::test]
async fn upgrade_passes_bytes_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (head_tx, head_rx) = oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let head = read_head(&mut s).await;
        let _ = head_tx.send(head);
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\r\n",
        )
        .await
        .expect("write 101");
        s.write_all(b"hello").await.expect("greet");
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).await.expect("echo");
        }
    });

    let d = Daemon::start().await;
    let mut c = UnixStream::connect(&d.socket).await.expect("connect");
    c.write_all(
        format!(
            "GET /proxy/{port}/ws?room=1 HTTP/1.1\r\nHost: sandbox\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write request");
    let head = tokio::time::timeout(WAIT, read_head(&mut c))
        .await
        .expect("101 in time");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("sec-websocket-accept: abc"), "{head}");

    let up = head_rx
        .await
        .expect("upstream saw the request")
        .to_ascii_lowercase();
    assert!(up.starts_with("get /ws?room=1 http/1.1\r\n"), "{up}");
    assert!(up.contains("connection: upgrade"), "{up}");
    assert!(up.contains("upgrade: websocket"), "{up}");
    assert!(up.contains("host: sandbox"), "{up}");
    assert!(
        up.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{up}"
    );

    let mut buf = [0u8; 5];
    tokio::time::timeout(WAIT, c.read_exact(&mut buf))
        .await
        .expect("greeting in time")
        .expect("greeting");
    assert_eq!(&buf, b"hello");
    for msg in [&b"ping"[..], &random_bytes(200_000, 3)[..]] {
        c.write_all(msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, c.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert!(back == msg, "echo differs");
    }
}

#[tokio::test]
async fn unused_port_is_bad_gateway() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let d = Daemon::start().await;
    let r = d.get(&format!("/proxy/{port}/x")).await;
    let v = r.assert_error(502, "BAD_GATEWAY");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(&port.to_string()), "{msg}");
    assert_eq!(v["path"], format!("/proxy/{port}/x"));
}

#[tokio::test]
async fn invalid_ports_are_bad_requests() {
    let d = Daemon::start().await;
    for uri in ["/proxy/0/x", "/proxy/70000/x", "/proxy/0", "/proxy/abc/"] {
        let v = d.get(uri).await.assert_error(400, "BAD_REQUEST");
        assert!(
            v["message"].as_str().unwrap().contains("port"),
            "{uri}: {v}"
        );
    }
}

/// A raw HTTP/1.1 app on a fresh 127.0.0.1 port: for every request head it
/// reads it writes `answer(n)` (n counts requests on that connection) and
/// closes the connection when `answer` says so. Nagle stays on, as in most
/// naive servers. Returns the port and the accepted-connection counter.
async fn raw_app<F>(answer: F) -> (u16, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(usize) -> (Vec<&'static [u8]>, bool) + Clone + Send + Sync + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let (writes, close) = answer(n);
                    for w in writes {
                        if stream.write_all(w).await.is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn keep_alive_app_connections_are_reused() {
    let (port, accepted) = raw_app(|_| {
        (
            vec![&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]],
            false,
        )
    })
    .await;
    let d = Daemon::start().await;
    for _ in 0..10 {
        let r = d.get(&format!("/proxy/{port}/")).await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http_1_0_app_is_answered_as_http_1_1_on_a_kept_connection() {
    let (port, accepted) = raw_app(|_| {
        (
            vec![&b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]],
            true,
        )
    })
    .await;
    let d = Daemon::start().await;
    // One client connection for all requests: the daemon must keep it.
    let stream = UnixStream::connect(&d.socket).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        sender.ready().await.expect("connection kept open");
        let req = Request::get(format!("/proxy/{port}/"))
            .header("host", "sandbox")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("send");
        assert_eq!(resp.version(), http::Version::HTTP_11);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    // The app closes each of its connections itself.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn head_and_body_written_apart_do_not_wait_for_a_delayed_ack() {
    let (port, accepted) = raw_app(|_| {
        (
            vec![
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"[..],
                &b"ok"[..],
            ],
            false,
        )
    })
    .await;
    let d = Daemon::start().await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = d.get(&format!("/proxy/{port}/")).await;
        assert_eq!(&r.body[..], b"ok");
    }
    // 40 ms each if the app's Nagle waited for our delayed ACK.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(400),
        "20 requests took {took:?}"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn app_dropping_a_kept_connection_unanswered_is_retried_for_gets_only() {
    // Each connection answers its first request; the next one is read and
    // the connection dropped unanswered, as by a server whose keep-alive
    // timer ran out just as the request arrived.
    let (port, accepted) = raw_app(|n| match n {
        0 => (
            vec![&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]],
            false,
        ),
        _ => (vec![], true),
    })
    .await;
    let d = Daemon::start().await;
    for _ in 0..5 {
        let r = d.get(&format!("/proxy/{port}/")).await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    // A POST may have been acted on: it is not sent again.
    let r = d
        .send(
            Method::POST,
            &format!("/proxy/{port}/"),
            &[],
            Bytes::from_static(b"once"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
}
