//! A session's inbox: how topics hand frames to a connection.
//!
//! Why not one actor message per delivery: an actix message is a boxed envelope in
//! the session's mailbox, so fanning one event out to 5,000 connections cost 5,000
//! allocations and 5,000 mailbox operations, and a mailbox bound counts messages, not
//! bytes. Under overload the broker spent its core boxing events it then dropped.
//!
//! Instead every session has an unbounded lock-free channel (`std::sync::mpsc`, which
//! allocates in blocks of 31 slots, not per message) behind a byte [`Budget`] that it
//! shares with its [`Outbound`](crate::session::outbound::Outbound) queue: a topic reserves the
//! frame's bytes before sending it, and a frame that does not fit is not sent at all
//! but counted in `missed` (reported as `lagged`). A `scheduled` flag coalesces
//! wake-ups: the first frame after the session last drained its inbox wakes the
//! session's task; frames that follow ride along until the session drains. A busy
//! session therefore takes hundreds of frames per wake-up, and the topic's cost per
//! subscriber is one reference-count increment, one channel push and two atomics.
//!
//! The wake-up is the session task's own waker (an [`AtomicWaker`] the session
//! registers each time it looks, [`Inbox::woken`]), not an actor message: a message
//! would be a boxed envelope and a trip through the mailbox per wake-up, about a
//! tenth of Herald's own (user-space) time per delivery in a profile at 50k
//! deliveries/s (docs/benchmarks.md).
//!
//! The same registration serves the session's socket: its reads are polled with a
//! waker ([`Inbox::read_waker`]) that marks the socket readable and wakes the task,
//! so a turn woken by a delivery does not poll the socket's read readiness (a lock
//! in tokio's reactor) for nothing.
//!
//! Ordering is the channel's: a topic sends a replay, then live events, in the order
//! it handles them, and the session receives them in that order.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::task::{Context as Task, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::protocol::event::Frame;
use crate::topics::message::Deliver;

/// Bytes a connection holds: frames in its inbox, in its outbound queue and in the
/// write in flight. Shared by the topics that reserve and the session that releases.
#[derive(Debug)]
pub(crate) struct Budget {
    bytes: AtomicUsize,
    /// The event bound (`session.queue_max_bytes`).
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Budget {
            bytes: AtomicUsize::new(0),
            max,
        }
    }

    /// The event bound.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Reserves an event's `len` bytes if the total stays within the event bound.
    pub(crate) fn reserve_event(&self, len: usize) -> bool {
        self.reserve(len, self.max)
    }

    /// Reserves a reply's or notice's `len` bytes: these may use a second allowance
    /// of the same size on top of the event bound (see [`crate::session::outbound`]).
    pub(crate) fn reserve_control(&self, len: usize) -> bool {
        self.reserve(len, self.max.saturating_mul(2))
    }

    /// Reserves `len` bytes if the total stays within `limit`.
    fn reserve(&self, len: usize, limit: usize) -> bool {
        let mut held = self.bytes.load(Ordering::Relaxed);
        loop {
            if held + len > limit {
                return false;
            }
            match self.bytes.compare_exchange_weak(
                held,
                held + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    /// Gives back `len` bytes (written, or never queued).
    pub(crate) fn release(&self, len: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(len))
            });
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// What the session and its subscribers share.
#[derive(Debug)]
struct Shared {
    budget: Arc<Budget>,
    /// Live events that did not fit the budget since the session last looked.
    missed: AtomicU64,
    /// The session was woken and has not looked yet.
    scheduled: AtomicBool,
    /// The socket woke its read waker since the session last read it.
    readable: AtomicBool,
    /// The session's task, registered each time it looks.
    waker: AtomicWaker,
}

/// The socket's read waker (see the module doc).
impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.readable.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// A connection as topics see it. Cloned once per subscription, never per event.
#[derive(Clone)]
pub(crate) struct Subscriber {
    /// Process-unique session number (dedup key: one delivery per connection).
    pub id: u64,
    tx: Sender<Deliver>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What became of a live event offered to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    /// Over the connection's byte budget: dropped and counted for its `lagged`.
    Dropped,
    /// The session is gone.
    Closed,
}

impl Subscriber {
    /// Offers a live event. The frame is shared: queuing it clones a reference count.
    pub(crate) fn offer(&self, frame: &Frame) -> Offer {
        let len = frame.len();
        if !self.shared.budget.reserve_event(len) {
            self.shared.missed.fetch_add(1, Ordering::Relaxed);
            // The session may need to act (policy `disconnect`); usually a wake-up
            // is already on its way and this costs one atomic.
            self.wake();
            return Offer::Dropped;
        }
        if self.tx.send(Deliver::Event(frame.clone())).is_err() {
            self.shared.budget.release(len);
            return Offer::Closed;
        }
        self.wake();
        Offer::Queued
    }

    /// Sends a replay or a `reset`: never dropped here (one per client request, and
    /// requests are rate limited). Replayed events meet the byte bound in the session.
    pub(crate) fn send(&self, deliver: Deliver) {
        if self.tx.send(deliver).is_ok() {
            self.wake();
        }
    }

    fn wake(&self) {
        if !self.shared.scheduled.swap(true, Ordering::AcqRel) {
            self.shared.waker.wake();
        }
    }
}

/// The session's end.
pub(crate) struct Inbox {
    tx: Sender<Deliver>,
    rx: Receiver<Deliver>,
    shared: Arc<Shared>,
}

impl Inbox {
    /// An empty inbox whose frames count against `budget`.
    pub(crate) fn new(budget: Arc<Budget>) -> Self {
        let (tx, rx) = mpsc::channel();
        Inbox {
            tx,
            rx,
            shared: Arc::new(Shared {
                budget,
                missed: AtomicU64::new(0),
                scheduled: AtomicBool::new(false),
                // Bytes may have come with the handshake: read on the first turn.
                readable: AtomicBool::new(true),
                waker: AtomicWaker::new(),
            }),
        }
    }

    /// The handle topics deliver through.
    pub(crate) fn subscriber(&self, id: u64) -> Subscriber {
        Subscriber {
            id,
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Whether deliveries came since the session last looked; then drain with
    /// [`Inbox::next`] in the same turn. Call first thing each time the session's
    /// task is polled: `task` is woken by the next delivery (or read readiness) after
    /// this call, so none is left waiting unnoticed.
    pub(crate) fn woken(&self, task: &Task<'_>) -> bool {
        // Registered before the flag is read: a delivery that finds the flag clear
        // after this point wakes this task.
        self.shared.waker.register(task.waker());
        if !self.shared.scheduled.load(Ordering::Acquire) {
            return false;
        }
        self.shared.scheduled.store(false, Ordering::Release);
        // Pairs with the AcqRel swap in `Subscriber::wake`: the sends that saw
        // `scheduled` still true happened before this point and are drained next.
        std::sync::atomic::fence(Ordering::SeqCst);
        true
    }

    /// A waker for polling the socket's reads: when the socket has bytes, it marks
    /// it readable and wakes the task [`Inbox::woken`] registered.
    pub(crate) fn read_waker(&self) -> Waker {
        Waker::from(self.shared.clone())
    }

    /// Whether the socket may have bytes: it woke its read waker since the last
    /// call, or nothing was read yet. Call after [`Inbox::woken`] in the same turn.
    pub(crate) fn take_readable(&self) -> bool {
        self.shared.readable.swap(false, Ordering::AcqRel)
    }

    /// Reading stopped before the socket ran dry (the session yields to other
    /// connections): read again on the next turn.
    pub(crate) fn still_readable(&self) {
        self.shared.readable.store(true, Ordering::Release);
    }

    /// The next waiting delivery, if any.
    pub(crate) fn next(&self) -> Option<Deliver> {
        // Empty, or (impossible while `self.tx` lives) disconnected.
        self.rx.try_recv().ok()
    }

    /// Live events dropped for lack of budget since the last call.
    pub(crate) fn take_missed(&self) -> u64 {
        if self.shared.missed.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.shared.missed.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that counts its wake-ups.
    struct Counter(AtomicU64);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame(n: usize) -> Frame {
        "x".repeat(n).into()
    }

    #[test]
    fn budget_refuses_past_the_limit_and_releases() {
        let b = Budget::new(100);
        assert!(b.reserve_event(60));
        assert!(!b.reserve_event(41));
        assert!(b.reserve_event(40));
        assert!(b.reserve_control(100), "replies get a second allowance");
        assert!(!b.reserve_control(1));
        b.release(150);
        assert_eq!(b.held(), 50);
        b.release(500);
        assert_eq!(b.held(), 0, "never below zero");
    }

    #[test]
    fn one_wake_per_batch_and_drops_past_the_budget_are_counted() {
        let counter = Arc::new(Counter(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let task = Task::from_waker(&waker);
        let wakes = || counter.0.load(Ordering::SeqCst);
        let budget = Arc::new(Budget::new(250));
        let inbox = Inbox::new(budget.clone());
        let sub = inbox.subscriber(7);
        assert!(!inbox.woken(&task), "nothing delivered yet");
        assert_eq!(sub.offer(&frame(100)), Offer::Queued);
        assert_eq!(sub.offer(&frame(100)), Offer::Queued);
        assert_eq!(sub.offer(&frame(100)), Offer::Dropped);
        assert_eq!(budget.held(), 200);
        assert_eq!(wakes(), 1, "one wake for the batch");
        assert!(inbox.woken(&task));
        let mut n = 0;
        while let Some(Deliver::Event(f)) = inbox.next() {
            assert_eq!(f.len(), 100);
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(!inbox.woken(&task), "drained: nothing new");
        assert_eq!(inbox.take_missed(), 1);
        assert_eq!(inbox.take_missed(), 0);
        assert_eq!(
            sub.offer(&frame(60)),
            Offer::Dropped,
            "bytes not yet written"
        );
        assert_eq!(wakes(), 2, "a drop wakes too (policy disconnect)");
        assert!(inbox.woken(&task));
        budget.release(200);
        assert_eq!(sub.offer(&frame(60)), Offer::Queued);
        assert_eq!(wakes(), 3, "woken again after looking");
        drop(inbox);
        assert_eq!(sub.offer(&frame(10)), Offer::Closed);
    }

    #[test]
    fn the_read_waker_marks_the_socket_readable_and_wakes_the_task() {
        let counter = Arc::new(Counter(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let task = Task::from_waker(&waker);
        let inbox = Inbox::new(Arc::new(Budget::new(100)));
        assert!(!inbox.woken(&task));
        assert!(inbox.take_readable(), "the first turn reads");
        assert!(!inbox.take_readable(), "then only once the socket says so");
        let read = inbox.read_waker();
        read.wake_by_ref();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(!inbox.woken(&task), "readable is not a delivery");
        assert!(inbox.take_readable());
        inbox.still_readable();
        assert!(inbox.take_readable(), "a read that stopped early goes on");
        read.wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_delivery_from_another_thread_is_never_left_unnoticed() {
        // The session looks while a topic delivers: every frame is drained, either
        // in the same look or after a wake-up that follows it.
        let counter = Arc::new(Counter(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let task = Task::from_waker(&waker);
        let inbox = Inbox::new(Arc::new(Budget::new(usize::MAX / 4)));
        let sub = inbox.subscriber(1);
        const N: usize = 100_000;
        let sender = std::thread::spawn(move || {
            for _ in 0..N {
                assert_eq!(sub.offer(&frame(1)), Offer::Queued);
            }
        });
        let mut drained = 0;
        let mut seen_wakes = 0;
        while drained < N {
            if inbox.woken(&task) {
                while inbox.next().is_some() {
                    drained += 1;
                }
                continue;
            }
            // Nothing was scheduled when it looked: wait for a wake-up, as the task
            // would. Once the sender is done, no wake-up can come any more.
            loop {
                let finished = sender.is_finished();
                let now = counter.0.load(Ordering::SeqCst);
                if now != seen_wakes {
                    seen_wakes = now;
                    break;
                }
                assert!(
                    !finished,
                    "no wake-up came for what is left: {drained} of {N} drained"
                );
                std::thread::yield_now();
            }
        }
        sender.join().expect("sender");
        assert!(inbox.next().is_none());
    }
}
