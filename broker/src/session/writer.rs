//! Writing to the client: at most one write in flight, taking every queued frame at
//! once (writes coalesce under load); the Pongs owed go first. While a write is in
//! flight, frames wait in the byte-bounded [`Outbound`] queue. [`Writer`] says where
//! the connection's writing stands; `close` sends the close frame (over SSE: a final
//! `close` message, then the end of the stream) after what is queued, bounded by
//! [`CLOSE_TIMEOUT`]. [`Sink`] is the one place where the two transports differ.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{CloseCode, CloseReason, Message as WsMessage};
use bytes::Bytes;
use futures_util::SinkExt as _;
use tracing::debug;

use super::outbound::{Outgoing, Push};
use super::Session;
use crate::metrics::{DropReason, METRICS};
use crate::protocol::event::Frame;
use crate::protocol::{ProtocolError, RequestId, ServerMessage};
use crate::topics::message::Deliver;

/// Longest time a close frame may take to reach a client that does not read.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a session's messages go.
#[derive(Clone)]
pub(crate) enum Sink {
    /// A WebSocket: one text frame per message.
    WebSocket(actix_ws::Session),
    /// A Server-Sent Events response body: chunks of `data:` messages.
    Sse(super::sse::SseSink),
}

/// What one write carries.
enum Batch {
    WebSocket {
        pongs: VecDeque<Bytes>,
        frames: Vec<Outgoing>,
    },
    Sse(Bytes),
}

impl Sink {
    /// Writes `batch`; `Err` when the client is gone.
    async fn write(&mut self, batch: Batch) -> Result<(), ()> {
        match (self, batch) {
            (Sink::WebSocket(ws), Batch::WebSocket { pongs, frames }) => {
                for payload in pongs {
                    ws.pong(&payload).await.map_err(drop)?;
                }
                for frame in frames {
                    ws.feed(WsMessage::from(frame)).await.map_err(drop)?;
                }
                ws.flush().await.map_err(drop)
            }
            (Sink::Sse(tx), Batch::Sse(chunk)) => tx.send(chunk).await.map_err(drop),
            // A sink only ever gets batches made for it (`Session::batch`).
            _ => Err(()),
        }
    }

    /// Ends the connection with `code`: a close frame, or a final `close` message
    /// and the end of the stream.
    async fn close(self, code: u16, why: &'static str) {
        match self {
            Sink::WebSocket(ws) => {
                let reason = CloseReason {
                    code: CloseCode::from(code),
                    description: Some(why.to_owned()),
                };
                let _ = ws.close(Some(reason)).await;
            }
            Sink::Sse(tx) => {
                let last = ServerMessage::Close { code, reason: why }.to_frame();
                let mut chunk = bytes::BytesMut::new();
                super::sse::encode_plain(&mut chunk, &last);
                // Dropping the sender then ends the response body.
                let _ = tx.send(chunk.freeze()).await;
            }
        }
    }
}

/// Where a connection's writing stands.
pub(super) enum Writer {
    /// No write in flight: the sink is here.
    Idle(Sink),
    /// A write is in flight and holds the writer; it comes back when the write
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

    /// Starts a write of everything queued, unless one is in flight (then its
    /// completion calls this again).
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
        if self.out.is_empty() && self.pending_pongs.is_empty() {
            return;
        }
        let mut writer = match std::mem::replace(&mut self.writer, Writer::Closing) {
            Writer::Idle(writer) => writer,
            // A write in flight calls this again when it completes.
            busy => {
                self.writer = busy;
                return;
            }
        };
        let (batch, bytes, events) = self.batch(&writer);
        let write = async move {
            writer.write(batch).await?;
            Ok::<_, ()>(writer)
        };
        let handle = ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(writer) => {
                    act.writer = Writer::Idle(writer);
                    act.out.written(bytes);
                    METRICS.delivered(events);
                    act.flush(ctx);
                }
                Err(_) => {
                    // The connection is gone; nothing more can be written.
                    act.close_code = 1006;
                    act.writer = Writer::Closing;
                    ctx.stop();
                }
            }
        }));
        self.writer = Writer::Writing(handle);
    }

    /// The next write for `sink`, with the bytes of the frames it takes and how
    /// many were events: on a WebSocket every queued frame, after the Pongs owed;
    /// over SSE one chunk of at most [`super::sse::MAX_CHUNK_BYTES`], its events with
    /// their resume ids (the rest waits for the next write).
    fn batch(&mut self, sink: &Sink) -> (Batch, usize, u64) {
        match sink {
            Sink::WebSocket(_) => {
                let (frames, events) = self.out.take_batch();
                let bytes = frames.iter().map(Outgoing::len).sum();
                let pongs = std::mem::take(&mut self.pending_pongs);
                (Batch::WebSocket { pongs, frames }, bytes, events)
            }
            Sink::Sse(_) => {
                let epoch = self.broker.epoch();
                let positions = self
                    .sse
                    .get_or_insert_with(|| super::sse::Positions::new(epoch, None));
                let out = &mut self.out;
                let (chunk, bytes, events) = super::sse::chunk(|| out.pop_front(), positions);
                (Batch::Sse(chunk), bytes, events)
            }
        }
    }

    /// Closes the connection with `code` and stops the actor.
    pub(super) fn close(&mut self, ctx: &mut Context<Self>, code: u16, why: &'static str) {
        if self.closing() {
            return;
        }
        self.close_code = code;
        let writer = match std::mem::replace(&mut self.writer, Writer::Closing) {
            Writer::Idle(writer) => Some(writer),
            // A write stuck on a client that does not read would delay the close
            // frame forever; what it held is abandoned with the connection.
            Writer::Writing(handle) => {
                ctx.cancel_future(handle);
                None
            }
            Writer::Closing => None,
        };
        // With no write in flight, replies already queued (an `error`, a `pong`) go
        // out before the close frame, bounded by the same timeout.
        if let Some(sink) = self.closer.take() {
            let batch = writer.as_ref().map(|w| self.batch(w).0);
            // The actor (and with it the inbound stream) stays alive until the close
            // frame is written: dropping the stream first stalls actix-http's
            // dispatcher for most of a second before it writes the frame.
            let goodbye = async move {
                if let (Some(mut writer), Some(batch)) = (writer, batch) {
                    if writer.write(batch).await.is_err() {
                        return;
                    }
                }
                sink.close(code, why).await;
            };
            let goodbye = tokio::time::timeout(CLOSE_TIMEOUT, goodbye);
            ctx.spawn(goodbye.into_actor(self).map(|_, _, ctx| ctx.stop()));
            return;
        }
        ctx.stop();
    }
}
