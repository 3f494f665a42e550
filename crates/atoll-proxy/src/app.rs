//! Connections to an app inside a sandbox: `QuickAck` (a TCP stream that
//! acknowledges responses at once) and `connect_in_netns`, which opens a
//! TCP connection to `127.0.0.1:{port}` inside a sandbox's network
//! namespace from the host, so the control plane reaches servers bound to
//! the sandbox's localhost without a hop through the sandbox daemon.

use crate::pool::{self, PoolBody, PoolError};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An HTTP/1.1 connection to `127.0.0.1:{port}` in the network namespace
/// `ns`, ready for a [`crate::pool::ConnPool`].
pub async fn http_in_netns(
    ns: std::fs::File,
    port: u16,
) -> Result<SendRequest<PoolBody>, PoolError> {
    let stream = connect_in_netns(ns, port)
        .await
        .map_err(PoolError::Connect)?;
    Ok(pool::handshake(TokioIo::new(QuickAck::new(stream))).await?)
}

/// Connects to `127.0.0.1:{port}` in the network namespace `ns` (an open
/// `/proc/<pid>/ns/net`). Only the socket is made there: this thread joins
/// the namespace for the one `socket(2)` call and returns at once (a socket
/// keeps the namespace it was made in); the connect is the runtime's usual
/// non-blocking one.
pub async fn connect_in_netns(ns: std::fs::File, port: u16) -> std::io::Result<TcpStream> {
    let fd = socket_in(&ns)?;
    drop(ns);
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let stream = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// This process's own network namespace, opened on first use (by a thread
/// that is in it: every thread is, outside `socket_in`).
fn host_netns() -> std::io::Result<&'static std::fs::File> {
    static HOST: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = HOST.get() {
        return Ok(f);
    }
    let f = std::fs::File::open("/proc/thread-self/ns/net")?;
    Ok(HOST.get_or_init(|| f))
}

/// A non-blocking TCP socket made inside `ns`.
fn socket_in(ns: &std::fs::File) -> std::io::Result<OwnedFd> {
    let host = host_netns()?;
    // SAFETY: setns on a descriptor we hold; it moves only this thread, and
    // the thread is moved back below before anything else runs on it.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    let made = std::io::Error::last_os_error();
    // SAFETY: as above, back into the namespace this thread came from.
    if unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // A worker thread left in a sandbox's namespace would make the
        // control plane's own sockets there: never carry on.
        eprintln!(
            "atoll: cannot return to the host network namespace: {}",
            std::io::Error::last_os_error()
        );
        std::process::abort();
    }
    if fd < 0 {
        return Err(made);
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An app connection that acknowledges the first read after each write at
/// once (`TCP_QUICKACK`). Many servers write a response's head and body
/// separately without `TCP_NODELAY`; on a reused connection Nagle then
/// holds the body until the head is acknowledged, and Linux delays that
/// acknowledgement up to 40 ms. A fresh connection starts in quick-ack
/// mode, which is why a tunnel without keep-alive never met this. Later
/// reads (a big body) keep the kernel's usual acknowledgements.
pub struct QuickAck {
    stream: TcpStream,
    /// A request went out since the last read that got data.
    wrote: bool,
}

impl QuickAck {
    pub fn new(stream: TcpStream) -> Self {
        QuickAck {
            stream,
            wrote: false,
        }
    }

    fn ack_now(&self) {
        let one: libc::c_int = 1;
        // SAFETY: the descriptor belongs to the open socket `self.0` for the
        // whole call, and `one` is a live c_int of the length passed.
        let _ = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if self.wrote && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.wrote = false;
            self.ack_now();
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote |= matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote |= matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
