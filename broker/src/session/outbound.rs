//! A connection's outbound queue, bounded in bytes (docs/protocol.md#6-slow-consumers).
//!
//! Events that do not fit are dropped (policy `drop`) and counted; the count becomes
//! one `lagged` notice once the queue has room again. Replies and notices (control
//! frames) are never dropped, since losing a `subscribed` or an `error` would leave
//! the client guessing; they may use a second allowance of the same size on top of
//! the event bound, and a client that exhausts even that (it keeps sending requests
//! but never reads) is disconnected. Either way memory per connection stays below
//! twice `queue_max_bytes`.
//!
//! The byte count is a [`Budget`] shared with the session's inbox: live events
//! reserve their bytes when a topic offers them ([`crate::session::inbox`]), before they reach
//! this queue, so the bound covers every frame on its way to the socket.
//!
//! Herald's own frames are JSON text. The test-only echo route
//! (`server.conformance_echo`) also queues binary messages, as [`Outgoing`] replies
//! under the same bounds.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::event::Frame;
use crate::session::inbox::Budget;

/// A message waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A text frame: every event, reply and notice (shared, never copied).
    Text(Frame),
    /// A binary frame: only an echo session sends these.
    Binary(Bytes),
    /// The answer to a client's Ping (WebSocket only; not counted in the budget:
    /// at most `MAX_PENDING_PONGS` of at most 125 bytes).
    Pong(Bytes),
    /// The close frame's payload (WebSocket only; last, not counted in the budget).
    Close(Bytes),
}

impl Outgoing {
    /// Payload bytes.
    pub(crate) fn len(&self) -> usize {
        self.payload().len()
    }

    /// The payload as written uncompressed.
    pub(crate) fn payload(&self) -> &[u8] {
        match self {
            Outgoing::Text(frame) => frame.as_bytes(),
            Outgoing::Binary(b) | Outgoing::Pong(b) | Outgoing::Close(b) => b,
        }
    }

    /// Bytes it holds of the connection's budget.
    pub(crate) fn budgeted(&self) -> usize {
        match self {
            Outgoing::Text(_) | Outgoing::Binary(_) => self.len(),
            Outgoing::Pong(_) | Outgoing::Close(_) => 0,
        }
    }

    /// Whether it is an event (what `herald_events_delivered_total` counts).
    pub(crate) fn is_event(&self) -> bool {
        matches!(self, Outgoing::Text(t) if crate::protocol::event::is_event(t))
    }

    /// Its WebSocket opcode.
    pub(crate) fn opcode(&self) -> crate::session::socket::OpCode {
        use crate::session::socket::OpCode;
        match self {
            Outgoing::Text(_) => OpCode::Text,
            Outgoing::Binary(_) => OpCode::Binary,
            Outgoing::Pong(_) => OpCode::Pong,
            Outgoing::Close(_) => OpCode::Close,
        }
    }

    /// The payload compressed with a `window_bits` window (permessage-deflate), when
    /// that makes it smaller; control frames are never compressed.
    pub(crate) fn deflated(&self, window_bits: u8) -> Option<Bytes> {
        match self {
            Outgoing::Text(frame) => frame.deflated(window_bits),
            Outgoing::Binary(b) => crate::session::socket::deflate::compress(b, window_bits),
            Outgoing::Pong(_) | Outgoing::Close(_) => None,
        }
    }
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Outgoing::Text(frame)
    }
}

impl From<bytestring::ByteString> for Outgoing {
    fn from(text: bytestring::ByteString) -> Self {
        Outgoing::Text(text.into())
    }
}

/// What happened to a frame offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued.
    Queued,
    /// An event that did not fit and was dropped (policy `drop`).
    Dropped,
    /// Did not fit and the connection must close (policy `disconnect`, or a control
    /// frame past the allowance); the u16 is the close code.
    Close(u16),
}

/// The queue itself: frames waiting to be written, and the bytes they hold.
#[derive(Debug)]
pub(crate) struct Outbound {
    frames: VecDeque<Outgoing>,
    /// Bytes of queued frames, frames handed to the writer and not yet written, and
    /// frames reserved by topics and still in the inbox.
    budget: Arc<Budget>,
    disconnect_when_full: bool,
    /// Events dropped since the last `lagged` notice.
    dropped: u64,
}

impl Outbound {
    pub(crate) fn new(max_bytes: usize, disconnect_when_full: bool) -> Self {
        Outbound {
            frames: VecDeque::new(),
            budget: Arc::new(Budget::new(max_bytes)),
            disconnect_when_full,
            dropped: 0,
        }
    }

    /// The byte budget, to share with the session's inbox.
    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Offers an event frame (a replayed one: live events arrive reserved).
    pub(crate) fn push_event(&mut self, frame: Frame) -> Push {
        if !self.budget.reserve_event(frame.len()) {
            return self.note_dropped(1);
        }
        self.push_reserved(frame);
        Push::Queued
    }

    /// Queues a live event whose bytes a topic already reserved.
    pub(crate) fn push_reserved(&mut self, frame: Frame) {
        self.frames.push_back(Outgoing::Text(frame));
    }

    /// Counts `n` events that did not fit (here, or when a topic offered them) for
    /// the next `lagged` notice; with policy `disconnect`, says to close instead.
    pub(crate) fn note_dropped(&mut self, n: u64) -> Push {
        if self.disconnect_when_full {
            return Push::Close(crate::protocol::close::SLOW_CONSUMER);
        }
        self.dropped += n;
        Push::Dropped
    }

    /// Offers a reply or notice (or an echo); these are not dropped (see the module
    /// doc).
    pub(crate) fn push_control(&mut self, frame: impl Into<Outgoing>) -> Push {
        let frame = frame.into();
        if !self.budget.reserve_control(frame.len()) {
            return Push::Close(crate::protocol::close::SLOW_CONSUMER);
        }
        self.frames.push_back(frame);
        Push::Queued
    }

    /// Events dropped since the last notice, if the queue has room again for a
    /// notice; resets the count. The caller sends `{"type":"lagged","dropped":n}`.
    pub(crate) fn take_lagged(&mut self) -> Option<u64> {
        self.lagged_due().then(|| std::mem::take(&mut self.dropped))
    }

    /// Whether a `lagged` notice is due: events were dropped and there is room
    /// again, at most half full, so that the notice is not followed by another drop
    /// straight away (one notice per overflow episode).
    pub(crate) fn lagged_due(&self) -> bool {
        self.dropped > 0 && self.budget.held() <= self.budget.max() / 2
    }

    /// The queued frames, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.frames.iter()
    }

    /// Queues a Pong ahead of everything (WebSocket; outside the budget).
    pub(crate) fn push_front_unbudgeted(&mut self, frame: Outgoing) {
        self.frames.push_front(frame);
    }

    /// Queues the close frame after everything (WebSocket; outside the budget).
    pub(crate) fn push_back_unbudgeted(&mut self, frame: Outgoing) {
        self.frames.push_back(frame);
    }

    /// Takes the first queued frame; its bytes stay counted until
    /// [`Outbound::written`] says the writer is done with them.
    pub(crate) fn pop_front(&mut self) -> Option<Outgoing> {
        self.frames.pop_front()
    }

    /// The writer finished a batch of `bytes`.
    pub(crate) fn written(&mut self, bytes: usize) {
        self.budget.release(bytes);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes held (reserved, queued, and in the writer).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.budget.held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event frame of `n` bytes.
    fn frame(n: usize) -> Frame {
        let prefix = crate::protocol::event::EVENT_PREFIX;
        format!("{prefix}{}", "x".repeat(n.saturating_sub(prefix.len()))).into()
    }

    /// Takes every queued frame, as a writer would, with the events among them.
    fn take_all(q: &mut Outbound) -> (Vec<Outgoing>, u64) {
        let frames: Vec<Outgoing> = std::iter::from_fn(|| q.pop_front()).collect();
        let events = frames.iter().filter(|f| f.is_event()).count() as u64;
        (frames, events)
    }

    #[test]
    fn drops_events_past_the_bound_and_reports_once_there_is_room() {
        let mut q = Outbound::new(100, false);
        assert_eq!(q.push_event(frame(60)), Push::Queued);
        assert_eq!(q.push_event(frame(60)), Push::Dropped);
        assert_eq!(q.push_event(frame(40)), Push::Queued);
        assert_eq!(q.push_event(frame(1)), Push::Dropped);
        assert_eq!(q.bytes(), 100);
        assert_eq!(q.take_lagged(), None, "no room yet");
        let (batch, events) = take_all(&mut q);
        assert_eq!((batch.len(), events), (2, 2));
        assert_eq!(q.bytes(), 100, "in-flight bytes still count");
        q.written(100);
        assert_eq!(q.take_lagged(), Some(2));
        assert_eq!(q.take_lagged(), None, "one notice per episode");
        assert_eq!(q.note_dropped(5), Push::Dropped);
        assert_eq!(
            q.take_lagged(),
            Some(5),
            "drops at the inbox are reported too"
        );
    }

    #[test]
    fn disconnect_policy_closes_with_4009() {
        let mut q = Outbound::new(100, true);
        assert_eq!(q.push_event(frame(100)), Push::Queued);
        assert_eq!(q.push_event(frame(1)), Push::Close(4009));
        assert_eq!(
            q.note_dropped(1),
            Push::Close(4009),
            "a drop at the inbox too"
        );
    }

    #[test]
    fn reserved_events_count_once() {
        let mut q = Outbound::new(100, false);
        assert!(q.budget().reserve_event(70));
        q.push_reserved(frame(70));
        assert_eq!(q.bytes(), 70);
        assert_eq!(q.push_event(frame(40)), Push::Dropped);
        let (batch, events) = take_all(&mut q);
        assert_eq!((batch.len(), events), (1, 1));
        q.written(70);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn control_frames_get_an_allowance_then_disconnect() {
        let mut q = Outbound::new(100, false);
        assert_eq!(q.push_event(frame(100)), Push::Queued);
        assert_eq!(q.push_control(frame(90)), Push::Queued);
        assert_eq!(q.push_control(frame(20)), Push::Close(4009));
        assert!(q.bytes() <= 200);
    }

    #[test]
    fn binary_echoes_share_the_control_allowance_and_keep_their_order() {
        let mut q = Outbound::new(100, false);
        let binary = |n: usize| Outgoing::Binary(Bytes::from(vec![0xff; n]));
        assert_eq!(q.push_event(frame(100)), Push::Queued);
        assert_eq!(q.push_control(binary(90)), Push::Queued);
        assert_eq!(q.push_control(binary(20)), Push::Close(4009));
        let (batch, events) = take_all(&mut q);
        assert_eq!(events, 1, "an echo is not an event");
        assert_eq!(batch, vec![Outgoing::Text(frame(100)), binary(90)]);
        assert_eq!(q.bytes(), 190);
    }
}
