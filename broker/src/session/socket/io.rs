//! The byte streams a WebSocket session runs on.
//!
//! - **Its own connection** (the `herald` binary, and any app served by
//!   [`crate::HttpServer`]): the TCP or TLS stream itself, handed over by actix-http's
//!   upgrade hook once the `101` is written. Nothing else polls it.
//! - **Inside an actix-web app served by actix-web's own `HttpServer`**, which has no
//!   upgrade hook: the request's payload stream for reading, and the `101` response's
//!   body for writing ([`Dispatched`]), through actix-http's dispatcher. The same
//!   session and codec run on it; it costs the dispatcher's buffers and task, as
//!   before (docs/architecture.md, "Sessions own their sockets").

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// Bytes written into a [`Dispatched`] stream and not yet taken by the response body,
/// past which writing waits (the session's own queue bound still applies before).
const DISPATCHED_WRITE_BYTES: usize = 64 * 1024;

/// What the session and the response body share.
#[derive(Default)]
struct Shared {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// The body waits for a chunk.
    body: Option<Waker>,
    /// The session waits for room.
    writer: Option<Waker>,
    /// The session is done writing: the body ends once drained.
    finished: bool,
    /// The body was dropped: the client is gone.
    gone: bool,
}

/// A session's byte stream through actix-http's dispatcher (see the module doc).
pub(crate) struct Dispatched {
    payload: actix_web::dev::Payload,
    /// What is left of the last chunk read.
    pending: Bytes,
    shared: Rc<RefCell<Shared>>,
}

/// The `101` response's body: what the session writes, in order.
pub(crate) struct DispatchedBody(Rc<RefCell<Shared>>);

impl Dispatched {
    /// The stream over `payload`, and the body to answer with.
    pub(crate) fn new(payload: actix_web::dev::Payload) -> (Self, DispatchedBody) {
        let shared = Rc::new(RefCell::new(Shared::default()));
        (
            Dispatched {
                payload,
                pending: Bytes::new(),
                shared: shared.clone(),
            },
            DispatchedBody(shared),
        )
    }
}

impl Drop for Dispatched {
    fn drop(&mut self) {
        let mut s = self.shared.borrow_mut();
        s.finished = true;
        if let Some(w) = s.body.take() {
            w.wake();
        }
    }
}

impl AsyncRead for Dispatched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.pending = chunk,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, e)))
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Dispatched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.shared.borrow_mut();
        if s.gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if s.bytes >= DISPATCHED_WRITE_BYTES {
            s.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        let mut chunk = Vec::with_capacity(n);
        for b in bufs {
            chunk.extend_from_slice(b);
        }
        s.bytes += n;
        s.chunks.push_back(chunk.into());
        if let Some(w) = s.body.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.shared.borrow_mut();
        s.finished = true;
        if let Some(w) = s.body.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Stream for DispatchedBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut s = self.0.borrow_mut();
        if let Some(chunk) = s.chunks.pop_front() {
            s.bytes -= chunk.len();
            if let Some(w) = s.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if s.finished {
            return Poll::Ready(None);
        }
        s.body = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for DispatchedBody {
    fn drop(&mut self) {
        let mut s = self.0.borrow_mut();
        s.gone = true;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }
}
