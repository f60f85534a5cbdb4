//! Handing an HTTP/1.1 connection over to another protocol after a `101 Switching Protocols`.
//!
//! hyper's own upgrade machinery needs `Connection::with_upgrades`, which moves the socket
//! into a boxed, type-erased `Upgraded`; coldbrew keeps its plain connection (whose parts it
//! already takes back after hyper is done) and passes the bare socket on instead. A request
//! that asks for an upgrade carries an [`UpgradeSlot`] in its extensions; a handler that
//! answers 101 puts in it what runs the connection from then on, and the connection's task
//! runs that once hyper has written the 101.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What takes over a switched connection, given its socket.
pub type Takeover = Box<dyn FnOnce(Switched) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Where a handler leaves the [`Takeover`] of the connection its request came on.
#[derive(Clone, Default)]
pub struct UpgradeSlot(Arc<Mutex<Option<Takeover>>>);

impl UpgradeSlot {
    /// Called before the handler answers 101; without it the 101 closes the connection.
    pub fn set(&self, takeover: Takeover) {
        *self.0.lock().unwrap() = Some(takeover);
    }

    pub(super) fn take(&self) -> Option<Takeover> {
        self.0.lock().unwrap().take()
    }
}

/// The socket of a switched connection, with the bytes hyper had read past the request head.
pub struct Switched {
    stream: TcpStream,
    unread: Bytes,
}

impl Switched {
    pub(super) fn new(stream: TcpStream, unread: Bytes) -> Self {
        Switched { stream, unread }
    }
}

impl AsyncRead for Switched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Switched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
