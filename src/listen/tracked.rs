//! The socket and the response body, wrapped to note what the watchdog
//! needs: a request's first byte, blocked writes, a response's end.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::registry::{Active, Conn};

/// A response body that keeps its request counted as in flight.
pub(super) struct Guarded {
    pub(super) inner: Body,
    pub(super) _active: Active,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when the first byte of a request arrives.
pub(super) struct Tracked {
    pub(super) io: TcpStream,
    pub(super) conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut state = self.conn.state.lock().expect("not poisoned");
            if state.active == 0 && state.head_since.is_none() {
                state.head_since = Some(Instant::now());
                drop(state);
                self.conn.changed.notify_one();
            }
        }
        result
    }
}

impl Tracked {
    /// Notes when writes start to block, and that they flow again.
    fn note_write(&self, blocked: bool) {
        let mut state = self.conn.state.lock().expect("not poisoned");
        match (blocked, state.write_blocked_since) {
            (true, None) => {
                state.write_blocked_since = Some(Instant::now());
                drop(state);
                self.conn.changed.notify_one();
            }
            (false, Some(_)) => state.write_blocked_since = None,
            _ => {}
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(result.is_pending());
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
