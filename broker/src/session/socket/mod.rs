//! A WebSocket session's own socket (docs/architecture.md, "Sessions own their
//! sockets").
//!
//! Once the `101` is written, the session actor holds the connection itself: there
//! is no HTTP dispatcher task, no channel and no buffer between them. It reads in its
//! own task, through its pump (`Session::pump`: the session's `Turn`, an item of its
//! actix context polled right after its mailbox), which also drains what topics
//! delivered into its inbox (a delivery wakes the task); and it writes as soon as
//! something is queued, straight from its outbound queue into the socket with
//! vectored writes (a header and a shared payload per frame, many frames per system
//! call). A write the socket cannot take whole leaves the rest queued, counted
//! against `session.queue_max_bytes` as before, and goes on when the socket is
//! writable again.
//!
//! ## Layout
//! - this file: the socket's state, the pump, writing, and closing;
//! - `read.rs`: reading and joining client messages (a scratch buffer per worker);
//! - `frame.rs`: RFC 6455 framing;
//! - `deflate.rs`: permessage-deflate (RFC 7692);
//! - `io.rs`: the byte streams a session runs on.

pub(crate) mod deflate;
mod frame;
pub(crate) mod io;
mod read;

use std::future::Future as _;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context as Task, Poll, Waker};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::outbound::{Outbound, Outgoing};
use super::Session;
use crate::protocol::close;
pub(crate) use deflate::Deflate;
pub(crate) use frame::OpCode;
use frame::{ClosePayload, OutHeader};
use io::Io;
pub(crate) use read::Inbound;
use read::Reader;

/// Reads per poll before the pump yields to the worker's other tasks.
const READS_PER_POLL: usize = 16;

/// Frames per vectored write (two slices each: header and payload).
const FRAMES_PER_WRITE: usize = 64;

/// Where closing stands.
enum Phase {
    Open,
    /// The close frame is queued (after what was queued before it). The connection
    /// ends once it is written and the client's close frame (or its end of stream)
    /// arrived, or at `deadline`.
    Closing {
        deadline: Pin<Box<tokio::time::Sleep>>,
        sent: bool,
        received: bool,
    },
}

/// A WebSocket connection as its session holds it.
pub(crate) struct Socket {
    io: Box<dyn Io>,
    reader: Reader,
    /// Bytes of the frame at the head of the outbound queue already written.
    written: usize,
    /// The session task's waker, to write from outside the pump.
    waker: Option<Waker>,
    deflate: Option<Deflate>,
    phase: Phase,
    /// Bytes were written since the last flush (TLS buffers records).
    unflushed: bool,
}

impl Socket {
    /// A socket over `io`; `early` holds bytes that came with the handshake.
    pub(crate) fn new(
        io: Box<dyn Io>,
        early: BytesMut,
        max_message: usize,
        deflate: Option<Deflate>,
    ) -> Self {
        Socket {
            io,
            reader: Reader::new(early, max_message, deflate.is_some()),
            written: 0,
            waker: None,
            deflate,
            phase: Phase::Open,
            unflushed: false,
        }
    }

    /// What the connection negotiated, for logs: `deflate` or `none`.
    pub(crate) fn compression(&self) -> &'static str {
        if self.deflate.is_some() {
            "deflate"
        } else {
            "none"
        }
    }

    /// Writes queued frames until the queue is empty or the socket is full; returns
    /// the events written.
    fn poll_write(
        &mut self,
        out: &mut Outbound,
        cx: &mut Task<'_>,
    ) -> (u64, Poll<std::io::Result<()>>) {
        let mut events = 0;
        loop {
            if out.is_empty() {
                if self.unflushed {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        other => return (events, other),
                    }
                }
                return (events, Poll::Ready(Ok(())));
            }
            let mut headers = [OutHeader::new(OpCode::Text, false, 0); FRAMES_PER_WRITE];
            // Compressed payloads of this write: an event's shared copy, or one made
            // for this connection (a reply, another window size).
            let mut packed: [Option<Bytes>; FRAMES_PER_WRITE] = [const { None }; FRAMES_PER_WRITE];
            // Header and payload bytes of each frame on the wire.
            let mut totals = [0usize; FRAMES_PER_WRITE];
            let mut count = 0;
            for (i, frame) in out.iter().take(FRAMES_PER_WRITE).enumerate() {
                packed[i] = self.deflate.and_then(|d| frame.deflated(d.window_bits));
                let len = packed[i].as_ref().map_or(frame.len(), Bytes::len);
                headers[i] = OutHeader::new(frame.opcode(), packed[i].is_some(), len);
                totals[i] = headers[i].as_bytes().len() + len;
                count = i + 1;
            }
            let wrote = {
                let mut slices: [IoSlice<'_>; FRAMES_PER_WRITE * 2] =
                    [IoSlice::new(&[]); FRAMES_PER_WRITE * 2];
                let mut skip = self.written;
                let mut n = 0;
                for (i, frame) in out.iter().take(count).enumerate() {
                    let body = packed[i].as_deref().unwrap_or_else(|| frame.payload());
                    for part in [headers[i].as_bytes(), body] {
                        if skip >= part.len() {
                            skip -= part.len();
                            continue;
                        }
                        slices[n] = IoSlice::new(&part[skip..]);
                        skip = 0;
                        n += 1;
                    }
                }
                match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Ready(Ok(0)) => {
                        return (
                            events,
                            Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                        )
                    }
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return (events, Poll::Ready(Err(e))),
                    Poll::Pending => return (events, Poll::Pending),
                }
            };
            self.unflushed = true;
            // Frames written whole leave the queue and the byte budget.
            let mut left = wrote;
            for total in &totals[..count] {
                let rest = total - self.written;
                if left < rest {
                    self.written += left;
                    break;
                }
                left -= rest;
                self.written = 0;
                let frame = out.pop_front().expect("counted above");
                events += u64::from(frame.is_event());
                out.written(frame.budgeted());
            }
            if let Phase::Closing { sent, .. } = &mut self.phase {
                *sent = out.is_empty();
            }
        }
    }
}

/// What the pump saw when reading.
enum Read {
    /// Nothing more to read now.
    Waiting,
    /// The client ended the stream (or it broke).
    Ended,
    /// Messages to handle.
    Messages(Vec<Inbound>),
}

impl Session {
    /// One turn of the pump (the session's `Turn` on a WebSocket): read and handle
    /// what arrived, drain the inbox, write what is queued, and end the connection
    /// when closing is done.
    pub(super) fn pump(&mut self, ctx: &mut Context<Session>, task: &mut Task<'_>) -> Poll<()> {
        let Some(socket) = self.socket.as_mut() else {
            return Poll::Ready(());
        };
        if !socket
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(task.waker()))
        {
            socket.waker = Some(task.waker().clone());
        }
        // First of all: registers this task for the next delivery or read readiness.
        let delivered = self.inbox.woken(task);
        // The socket is read only when it said it has bytes (or a read stopped
        // early), not on every turn a delivery causes.
        if self.inbox.take_readable() {
            let read_waker = self.inbox.read_waker();
            let mut reads = Task::from_waker(&read_waker);
            for turn in 0.. {
                if turn == READS_PER_POLL {
                    // Fair to the worker's other connections: come back later.
                    self.inbox.still_readable();
                    task.waker().wake_by_ref();
                    break;
                }
                match self.read_once(&mut reads) {
                    Read::Waiting => break,
                    Read::Ended => {
                        self.vanished();
                        return self.finish(ctx);
                    }
                    Read::Messages(messages) => {
                        for message in messages {
                            self.on_inbound(message, ctx);
                        }
                    }
                }
            }
        }
        if self.closing() {
            self.write_socket(ctx, task);
        } else {
            if delivered {
                // What topics delivered since the last turn, written below with it.
                self.drain_inbox(ctx);
            }
            // Writes with this task's waker (saved above), and sends a `lagged`
            // notice once writing made room.
            self.flush(ctx);
        }
        let Some(socket) = self.socket.as_mut() else {
            return Poll::Ready(());
        };
        if let Phase::Closing {
            deadline,
            sent,
            received,
        } = &mut socket.phase
        {
            if (*sent && *received) || deadline.as_mut().poll(task).is_ready() {
                return self.finish(ctx);
            }
        }
        Poll::Pending
    }

    fn read_once(&mut self, task: &mut Task<'_>) -> Read {
        let Some(socket) = self.socket.as_mut() else {
            return Read::Ended;
        };
        let mut messages = Vec::new();
        match socket
            .reader
            .poll_read(&mut *socket.io, task, &mut messages)
        {
            Poll::Pending => Read::Waiting,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Read::Ended,
            Poll::Ready(Ok(_)) => Read::Messages(messages),
        }
    }

    /// Ends the connection: the actor stops, and dropping it closes the socket.
    fn finish(&mut self, ctx: &mut Context<Session>) -> Poll<()> {
        if let Some(socket) = self.socket.as_mut() {
            // Best effort: TLS sends its close_notify, TCP its FIN.
            let _ = Pin::new(&mut socket.io).poll_shutdown(&mut Task::from_waker(Waker::noop()));
        }
        ctx.stop();
        Poll::Ready(())
    }

    /// Writes what is queued, from a handler or a timer: with the task's waker, so
    /// that a socket that is full wakes the pump when it has room again.
    pub(super) fn write_now(&mut self, ctx: &mut Context<Session>) {
        let Some(waker) = self.socket.as_mut().and_then(|s| s.waker.take()) else {
            // Not polled yet: the pump's first turn writes.
            return;
        };
        self.write_socket(ctx, &mut Task::from_waker(&waker));
        if let Some(socket) = self.socket.as_mut() {
            socket.waker.get_or_insert(waker);
        }
    }

    fn write_socket(&mut self, ctx: &mut Context<Session>, task: &mut Task<'_>) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        if socket.written == 0 && !self.pending_pongs.is_empty() {
            for payload in self.pending_pongs.drain(..).rev() {
                self.out.push_front_unbudgeted(Outgoing::Pong(payload));
            }
        }
        let (events, result) = socket.poll_write(&mut self.out, task);
        if events > 0 {
            crate::metrics::METRICS.delivered(events);
        }
        if let Poll::Ready(Err(_)) = result {
            // The connection is gone; nothing more can be written.
            self.vanished();
            let _ = self.finish(ctx);
        }
    }

    /// Closes with `code`: the close frame goes after what is queued, within
    /// [`super::writer::CLOSE_TIMEOUT`].
    pub(super) fn close_socket(
        &mut self,
        ctx: &mut Context<Session>,
        code: u16,
        why: &'static str,
    ) {
        self.start_closing(frame::close_payload(code, why), false);
        self.write_now(ctx);
    }

    fn start_closing(&mut self, payload: Bytes, received: bool) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        self.out.push_back_unbudgeted(Outgoing::Close(payload));
        socket.phase = Phase::Closing {
            deadline: Box::pin(tokio::time::sleep(super::writer::CLOSE_TIMEOUT)),
            sent: false,
            received,
        };
        // The pump polls the deadline from its next turn.
        if let Some(w) = &socket.waker {
            w.wake_by_ref();
        }
    }

    /// A message from the client.
    fn on_inbound(&mut self, message: Inbound, ctx: &mut Context<Session>) {
        if self.closing() {
            // Only the client's answer to our close frame still matters.
            if let (Inbound::Close(_), Some(socket)) = (&message, self.socket.as_mut()) {
                if let Phase::Closing { received, .. } = &mut socket.phase {
                    *received = true;
                }
            }
            return;
        }
        match message {
            Inbound::Text(text) if self.echo => self.echo_back(Outgoing::Text(text.into()), ctx),
            Inbound::Binary(data) if self.echo => self.echo_back(Outgoing::Binary(data), ctx),
            Inbound::Text(text) => self.on_text(&text, ctx),
            Inbound::Binary(_) => {
                return self.close(ctx, close::UNSUPPORTED, "binary frames are not supported");
            }
            Inbound::Ping(payload) => {
                if self.pending_pongs.len() == super::MAX_PENDING_PONGS {
                    self.pending_pongs.pop_front();
                }
                self.pending_pongs.push_back(payload);
            }
            // WebSocket Pongs say nothing about the application
            // (docs/protocol.md#5-heartbeats-and-timeouts).
            Inbound::Pong => {}
            Inbound::Close(payload) => {
                // The client closes: answer with its code, then end the connection.
                let (code, reply) = match payload {
                    ClosePayload::Empty => (1005, Bytes::new()),
                    ClosePayload::Code(code, _) => {
                        (code, Bytes::copy_from_slice(&code.to_be_bytes()))
                    }
                };
                self.close_code = code;
                self.writer = super::writer::Writer::Closing;
                self.start_closing(reply, true);
                self.write_now(ctx);
                return;
            }
            Inbound::Fail(code, why) => {
                tracing::debug!(session = %self.name, code, "protocol error");
                return self.close(ctx, code, why);
            }
        }
        self.flush(ctx);
    }
}
