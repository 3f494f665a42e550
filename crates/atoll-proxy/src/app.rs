//! Connections to an app inside a sandbox: `QuickAck`, a TCP stream that
//! acknowledges responses at once (used by the daemon's preview tunnel and
//! by the runner's in-namespace connects).

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
