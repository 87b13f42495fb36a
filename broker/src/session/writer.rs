//! Writing to the socket: at most one write in flight, taking every queued frame at
//! once (writes coalesce under load); the Pongs owed go first. While a write is in
//! flight, frames wait in the byte-bounded [`Outbound`] queue. [`Writer`] says where
//! the connection's writing stands; `close` sends the close frame after what is
//! queued, bounded by [`CLOSE_TIMEOUT`].

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{CloseCode, CloseReason, Message as WsMessage};
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

/// Where a connection's writing stands.
pub(super) enum Writer {
    /// No write in flight: the socket's writer is here.
    Idle(actix_ws::Session),
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
        let (batch, events) = self.out.take_batch();
        let bytes: usize = batch.iter().map(|f| f.len()).sum();
        let pongs = std::mem::take(&mut self.pending_pongs);
        let write = async move {
            for payload in pongs {
                writer.pong(&payload).await?;
            }
            for frame in batch {
                writer.feed(WsMessage::from(frame)).await?;
            }
            writer.flush().await?;
            Ok::<_, actix_ws::Closed>(writer)
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
        let (batch, _) = self.out.take_batch();
        if let Some(ws) = self.ws.take() {
            let reason = CloseReason {
                code: CloseCode::from(code),
                description: Some(why.to_owned()),
            };
            // The actor (and with it the inbound stream) stays alive until the close
            // frame is written: dropping the stream first stalls actix-http's
            // dispatcher for most of a second before it writes the frame.
            let goodbye = async move {
                if let Some(mut writer) = writer {
                    for frame in batch {
                        if writer.feed(WsMessage::from(frame)).await.is_err() {
                            return;
                        }
                    }
                    let _ = writer.flush().await;
                }
                let _ = ws.close(Some(reason)).await;
            };
            let goodbye = tokio::time::timeout(CLOSE_TIMEOUT, goodbye);
            ctx.spawn(goodbye.into_actor(self).map(|_, _, ctx| ctx.stop()));
            return;
        }
        ctx.stop();
    }
}
