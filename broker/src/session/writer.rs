//! Writing to the client. On a WebSocket the session's own socket writes as soon as
//! something is queued (`socket/mod.rs`). Over SSE at most one write is in flight,
//! taking one chunk of queued frames at a time; frames arriving meanwhile wait in the
//! byte-bounded [`Outbound`](super::outbound::Outbound) queue. [`Writer`] says where
//! the connection's writing stands; `close` sends the close frame (over SSE: a final
//! `close` message, then the end of the stream) after what is queued, bounded by
//! [`CLOSE_TIMEOUT`].

use std::task::Context as Task;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tracing::debug;

use super::outbound::{Outgoing, Push};
use super::socket::Socket;
use super::sse::SseSink;
use super::Session;
use crate::metrics::{DropReason, METRICS};
use crate::protocol::event::Frame;
use crate::protocol::{ProtocolError, RequestId, ServerMessage};
use crate::topics::message::Deliver;

/// Longest time a close frame may take to reach a client that does not read.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session writes to.
pub(crate) enum Sink {
    /// A WebSocket: one frame per message, on the session's own socket.
    WebSocket(Socket),
    /// A Server-Sent Events response body: chunks of `data:` messages.
    Sse(SseSink),
}

/// Writes one SSE chunk; `Err` when the client is gone.
async fn send_chunk(tx: &SseSink, chunk: Bytes) -> Result<(), ()> {
    tx.send(chunk).await.map_err(drop)
}

/// Ends an event stream with a final `close` message.
async fn end_stream(tx: SseSink, code: u16, why: &'static str) {
    let last = ServerMessage::Close { code, reason: why }.to_frame();
    let mut chunk = bytes::BytesMut::new();
    super::sse::encode_plain(&mut chunk, &last);
    // Dropping the sender then ends the response body.
    let _ = tx.send(chunk.freeze()).await;
}

/// Where a connection's writing stands.
pub(super) enum Writer {
    /// A WebSocket: its socket (`Session::socket`) writes whenever frames are queued.
    Socket,
    /// SSE, no write in flight: the sink is here.
    Idle(SseSink),
    /// SSE, a write is in flight and holds the sink; it comes back when the write
    /// completes (or is abandoned with the connection).
    Writing(SpawnHandle),
    /// Closing, or the connection is gone: nothing more is written.
    Closing,
}

impl Session {
    /// Whether the connection is closing (or gone): nothing more is written.
    pub(super) fn closing(&self) -> bool {
        matches!(self.writer, Writer::Closing)
    }

    /// The client went away without a close handshake (1006), unless the session
    /// was closing already (then its own code stands).
    pub(super) fn vanished(&mut self) {
        if !self.closing() {
            self.close_code = 1006;
            self.writer = Writer::Closing;
        }
    }

    /// Queues a reply or notice.
    pub(super) fn control(&mut self, frame: impl Into<Outgoing>, ctx: &mut Context<Self>) {
        if let Push::Close(code) = self.out.push_control(frame) {
            self.close(ctx, code, "slow consumer");
        }
    }

    /// Echo mode: queues a client message back unchanged, as a reply (never
    /// dropped; past the queue's allowance the connection closes with 4009).
    pub(super) fn echo_back(&mut self, msg: Outgoing, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        self.control(msg, ctx);
    }

    /// Queues a replayed event (live ones arrive with their bytes reserved).
    pub(super) fn replayed(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match self.out.push_event(frame) {
            Push::Queued => {}
            Push::Dropped => METRICS.dropped(DropReason::QueueFull, 1),
            Push::Close(code) => self.close(ctx, code, "slow consumer"),
        }
    }

    /// Moves what topics delivered since the last look into the outbound queue;
    /// whether there was anything to move (then the caller writes). Called on every
    /// turn of an event stream's task, which registers it for the next delivery (a
    /// WebSocket's pump does the same in two steps, reading in between).
    pub(super) fn take_inbox(&mut self, ctx: &mut Context<Self>, task: &Task<'_>) -> bool {
        if !self.inbox.woken(task) || self.closing() {
            return false;
        }
        self.drain_inbox(ctx);
        true
    }

    /// Moves everything topics delivered into the outbound queue.
    pub(super) fn drain_inbox(&mut self, ctx: &mut Context<Self>) {
        while let Some(deliver) = self.inbox.next() {
            if self.closing() {
                return;
            }
            match deliver {
                Deliver::Event(frame) => self.out.push_reserved(frame),
                Deliver::Replay(frames) => {
                    for frame in frames {
                        self.replayed(frame, ctx);
                    }
                }
                Deliver::Reset { topic, reason } => {
                    let frame = ServerMessage::Reset {
                        topic: &topic,
                        reason,
                    }
                    .to_frame();
                    self.control(frame, ctx);
                }
            }
        }
    }

    pub(super) fn reply_error(
        &mut self,
        id: &RequestId,
        err: &ProtocolError,
        ctx: &mut Context<Self>,
    ) {
        METRICS.client_error(err.code);
        debug!(session = %self.name, code = err.code.as_str(), "error reply");
        let frame = ServerMessage::Error {
            id: id.as_deref(),
            code: err.code,
            message: &err.message,
        }
        .to_frame();
        self.control(frame, ctx);
    }

    /// Writes what is queued: on a WebSocket at once, over SSE unless a write is in
    /// flight (then its completion calls this again). Reports drops as `lagged` first.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.closing() {
            return;
        }
        let missed = self.inbox.take_missed();
        if missed > 0 {
            if let Push::Close(code) = self.out.note_dropped(missed) {
                return self.close(ctx, code, "slow consumer");
            }
        }
        if let Some(dropped) = self.out.take_lagged() {
            METRICS.lagged_notice();
            debug!(session = %self.name, dropped, "lagged");
            self.control(ServerMessage::Lagged { dropped }.to_frame(), ctx);
            if self.closing() {
                return;
            }
        }
        if self.socket.is_some() {
            self.write_now(ctx);
            // Writing made room: a `lagged` notice may be due now.
            if self.out.lagged_due() && !self.closing() {
                self.flush(ctx);
            }
            return;
        }
        if self.out.is_empty() {
            return;
        }
        let tx = match std::mem::replace(&mut self.writer, Writer::Closing) {
            Writer::Idle(tx) => tx,
            // A write in flight calls this again when it completes.
            busy => {
                self.writer = busy;
                return;
            }
        };
        let (chunk, bytes, events) = self.sse_chunk();
        let write = async move {
            send_chunk(&tx, chunk).await?;
            Ok::<_, ()>(tx)
        };
        let handle = ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(tx) => {
                    act.writer = Writer::Idle(tx);
                    act.out.written(bytes);
                    METRICS.delivered(events);
                    act.flush(ctx);
                }
                Err(_) => {
                    // The connection is gone; nothing more can be written.
                    act.vanished();
                    ctx.stop();
                }
            }
        }));
        self.writer = Writer::Writing(handle);
    }

    /// The next SSE write: one chunk of at most [`super::sse::MAX_CHUNK_BYTES`], its
    /// events with their resume ids (the rest waits for the next write), with the
    /// bytes of the frames it takes and how many were events.
    fn sse_chunk(&mut self) -> (Bytes, usize, u64) {
        let epoch = self.broker.epoch();
        let positions = self
            .sse
            .get_or_insert_with(|| super::sse::Positions::new(epoch, None));
        let out = &mut self.out;
        super::sse::chunk(|| out.pop_front(), positions)
    }

    /// Closes the connection with `code` and stops the actor.
    pub(super) fn close(&mut self, ctx: &mut Context<Self>, code: u16, why: &'static str) {
        if self.closing() {
            return;
        }
        self.close_code = code;
        let writer = std::mem::replace(&mut self.writer, Writer::Closing);
        if self.socket.is_some() {
            return self.close_socket(ctx, code, why);
        }
        let Some(closer) = self.closer.take() else {
            return ctx.stop();
        };
        let idle = match writer {
            Writer::Idle(tx) => Some(tx),
            // A write stuck on a client that does not read would delay the close
            // forever; what it held is abandoned with the connection.
            Writer::Writing(handle) => {
                ctx.cancel_future(handle);
                None
            }
            Writer::Socket | Writer::Closing => None,
        };
        // With no write in flight, replies already queued (an `error`) go out before
        // the final message, bounded by the same timeout.
        let queued = idle.map(|tx| (tx, self.sse_chunk().0));
        let goodbye = async move {
            if let Some((tx, chunk)) = queued {
                if send_chunk(&tx, chunk).await.is_err() {
                    return;
                }
            }
            end_stream(closer, code, why).await;
        };
        let goodbye = tokio::time::timeout(CLOSE_TIMEOUT, goodbye);
        ctx.spawn(goodbye.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}
