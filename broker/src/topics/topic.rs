//! The topic actor: one per concrete topic, living on its registry shard's thread.
//!
//! It owns the topic's seq counter, its history ring and its subscribers. Each event
//! is rendered to a frame once (`event::render`) and the same frame goes to every
//! subscriber's inbox ([`crate::session::inbox`]): a reference count, a channel push and two
//! atomics per subscriber, no allocation and no actor message. Because subscribe
//! requests and events reach the topic through the same mailbox, a replay and the
//! live stream join without a gap or a duplicate: the replay is sent (into the
//! subscriber's inbox) before any live event that follows it.
//!
//! With cluster history (`cluster.history = "jetstream"`), an event read from the
//! history stream carries its position: the topic renders it with that `seq` and the
//! `prev` its shard worked out, and a resume or a `last` the ring cannot answer is
//! read back from the stream ([`crate::history`]). Meanwhile the subscriber is
//! pending: the live events of the topic are held for it, and once the replay is
//! sent, it gets the held events the replay did not cover, then joins live.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::metrics::{DropReason, METRICS};
use crate::protocol::event::{self, EventMeta, Frame};
use crate::protocol::ResetReason;
use crate::session::inbox::Offer;
use crate::topics::message::{
    AddSubscriber, Deliver, Ingest, Reason, RemoveSubscriber, StopTopic, Subscriber, TopicIdle,
    TopicInfo, TopicReplay, TopicStats,
};
use crate::topics::registry::Shard;

/// Settings every topic shares.
#[derive(Debug, Clone)]
pub(crate) struct TopicSettings {
    /// Events kept per topic (0: no history).
    pub history_size: usize,
    /// History age limit, ms.
    pub history_ttl_ms: u64,
    /// Mailbox bound for incoming events.
    pub mailbox_capacity: usize,
    /// With cluster history: the stream, to read back what the ring lacks.
    #[cfg(feature = "nats")]
    pub cluster: Option<Arc<crate::history::ClusterHistory>>,
}

impl TopicSettings {
    /// Whether positions are the cluster's (`cluster.history = "jetstream"`).
    pub(crate) fn clustered(&self) -> bool {
        #[cfg(feature = "nats")]
        return self.cluster.is_some();
        #[cfg(not(feature = "nats"))]
        false
    }

    /// How often a topic evicts expired history and checks whether it is idle.
    fn tick(&self) -> Duration {
        Duration::from_millis(self.history_ttl_ms.clamp(100, 10_000))
    }
}

/// One event kept for replay.
#[derive(Debug, Clone)]
struct Kept {
    seq: u64,
    ts: u64,
    frame: Frame,
    /// With cluster history: a position in the stream (not a node-local event), and
    /// whether it is known to be its topic's first in the stream.
    positioned: bool,
    first: bool,
}

/// The bounded replay ring: at most `size` events, none older than `ttl_ms`.
#[derive(Debug, Default)]
pub(crate) struct History {
    events: VecDeque<Kept>,
}

impl History {
    fn push(&mut self, kept: Kept, size: usize) {
        if size == 0 {
            return;
        }
        while self.events.len() >= size {
            self.events.pop_front();
        }
        self.events.push_back(kept);
    }

    fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some(front) = self.events.front() {
            if now_ms.saturating_sub(front.ts) > ttl_ms {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// The newest `n` events, oldest first, as replay frames.
    fn last(&self, n: usize) -> Vec<Frame> {
        let skip = self.events.len().saturating_sub(n);
        self.events
            .iter()
            .skip(skip)
            .map(|k| event::replay_of(&k.frame))
            .collect()
    }

    /// Every event after `seq` when history still holds all of them (`current` is
    /// the topic's newest seq); `None` when some were forgotten.
    fn after(&self, seq: u64, current: u64) -> Option<Vec<Frame>> {
        if seq > current {
            return None;
        }
        if seq == current {
            return Some(Vec::new());
        }
        let oldest = self.events.front()?.seq;
        if oldest > seq + 1 {
            return None;
        }
        Some(
            self.events
                .iter()
                .filter(|k| k.seq > seq)
                .map(|k| event::replay_of(&k.frame))
                .collect(),
        )
    }

    /// Cluster history: the stream events after position `seq` when the ring holds
    /// the event at `seq` (so every later one of the topic); `None` otherwise.
    fn after_position(&self, seq: u64) -> Option<Vec<Frame>> {
        let at = self
            .events
            .iter()
            .position(|k| k.positioned && k.seq == seq)?;
        Some(
            self.events
                .iter()
                .skip(at + 1)
                .filter(|k| k.positioned)
                .map(|k| event::replay_of(&k.frame))
                .collect(),
        )
    }

    /// Cluster history: whether the ring holds its topic's every event still in
    /// the stream (its oldest is the topic's first), or at least `n` of them.
    fn answers_last(&self, n: usize) -> bool {
        let mut positioned = self.events.iter().filter(|k| k.positioned).peekable();
        positioned.peek().is_some_and(|k| k.first) || positioned.count() >= n
    }

    /// Every stream event in the ring, when it holds the topic's first one.
    fn whole_topic(&self) -> Option<Vec<Frame>> {
        let first = self.events.iter().find(|k| k.positioned)?;
        first.first.then(|| {
            self.events
                .iter()
                .filter(|k| k.positioned)
                .map(|k| event::replay_of(&k.frame))
                .collect()
        })
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// A subscriber and why it is subscribed.
#[derive(Debug)]
struct Entry {
    subscriber: Subscriber,
    exact: bool,
    /// Wildcard patterns of this connection that match the topic.
    patterns: u32,
    /// Cluster history: stream events up to this position were replayed to it from
    /// the stream before this node read them; they are not sent again live.
    skip_upto: u64,
}

impl Entry {
    fn new(subscriber: Subscriber, reason: Reason) -> Self {
        Entry {
            subscriber,
            exact: reason == Reason::Exact,
            patterns: u32::from(reason == Reason::Pattern),
            skip_upto: 0,
        }
    }

    fn add(&mut self, reason: Reason) {
        match reason {
            Reason::Exact => self.exact = true,
            Reason::Pattern => self.patterns += 1,
        }
    }

    /// Takes one reason away; `true` when none is left.
    fn remove(&mut self, reason: Reason) -> bool {
        match reason {
            Reason::Exact => self.exact = false,
            Reason::Pattern => self.patterns = self.patterns.saturating_sub(1),
        }
        !self.exact && self.patterns == 0
    }
}

/// Cluster history: a subscriber whose replay is being read back from the stream,
/// and the live events held for it meanwhile (stream position, when it has one).
#[derive(Debug)]
struct Pending {
    entry: Entry,
    held: Vec<(Option<u64>, Frame)>,
}

/// What the stream is asked for.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
enum ReadBack {
    /// The events after this position.
    After(u64),
    /// The newest N events.
    Last(usize),
}

/// Whether a subscriber can join live now, or waits for a read from the stream.
enum Joining {
    Now,
    ReadBack(ReadBack),
}

/// The topic actor.
pub(crate) struct Topic {
    name: String,
    seq: u64,
    last_event_ms: Option<u64>,
    history: History,
    /// Keyed by session id, so overlapping patterns deliver once per connection.
    subscribers: HashMap<u64, Entry>,
    settings: Arc<TopicSettings>,
    shard: Addr<Shard>,
    /// Messages handled from the shard (see [`TopicIdle`]).
    handled: u64,
    /// Whether an idle report is outstanding (avoid repeating it every tick).
    reported_idle: bool,
    /// A topic of this name was forgotten earlier in this epoch: its seqs restarted
    /// at 1, so a resume position may belong to the earlier life and cannot be
    /// trusted. Every resume with a position above 0 gets `reset`.
    reborn: bool,
    /// Cluster history: the topic's last position in the stream (0: none known).
    position: u64,
    /// Events rendered since this actor started (`events` of `GET /api/topics`).
    received: u64,
    /// Cluster history: subscribers waiting for a read from the stream, by id.
    pending: HashMap<u64, Pending>,
}

impl Topic {
    /// A new topic with the pattern subscribers that already match it.
    pub(crate) fn new(
        name: String,
        settings: Arc<TopicSettings>,
        shard: Addr<Shard>,
        pattern_subscribers: Vec<Subscriber>,
        reborn: bool,
        position: u64,
    ) -> Self {
        let subscribers = pattern_subscribers
            .into_iter()
            .map(|s| (s.id, Entry::new(s, Reason::Pattern)))
            .collect();
        Topic {
            name,
            seq: 0,
            last_event_ms: None,
            history: History::default(),
            subscribers,
            settings,
            shard,
            handled: 0,
            reported_idle: false,
            reborn,
            position,
            received: 0,
            pending: HashMap::new(),
        }
    }

    fn reset(&self, subscriber: &Subscriber) {
        subscriber.send(Deliver::Reset {
            topic: self.name.clone(),
            reason: ResetReason::HistoryExpired,
        });
    }

    /// Sends what `replay` asks for from the ring, or says that the stream must be
    /// read first.
    fn replay_to(&self, subscriber: &Subscriber, replay: TopicReplay) -> Joining {
        if self.settings.clustered() {
            return self.replay_clustered(subscriber, replay);
        }
        self.replay_local(subscriber, replay);
        Joining::Now
    }

    /// Cluster history: positions are stream sequences, not contiguous; what the
    /// ring cannot answer is read back from the stream.
    fn replay_clustered(&self, subscriber: &Subscriber, replay: TopicReplay) -> Joining {
        let frames = match replay {
            TopicReplay::None => return Joining::Now,
            TopicReplay::Last(n) => {
                let n = n as usize;
                if n > 0 && self.position > 0 && !self.history.answers_last(n) {
                    return Joining::ReadBack(ReadBack::Last(n));
                }
                self.history.last(n)
            }
            TopicReplay::After(seq) if seq == self.position => return Joining::Now,
            // Nothing seen of the topic: everything the stream keeps of it, which
            // the ring holds only when it holds the topic's first event.
            TopicReplay::After(0) => match self.history.whole_topic() {
                Some(frames) => frames,
                None => {
                    self.reset(subscriber);
                    return Joining::Now;
                }
            },
            TopicReplay::After(seq) => match self.history.after_position(seq) {
                Some(frames) => frames,
                None => return Joining::ReadBack(ReadBack::After(seq)),
            },
        };
        if !frames.is_empty() {
            subscriber.send(Deliver::Replay(frames));
        }
        Joining::Now
    }

    fn replay_local(&self, subscriber: &Subscriber, replay: TopicReplay) {
        let frames = match replay {
            TopicReplay::None => return,
            TopicReplay::Last(n) => self.history.last(n as usize),
            TopicReplay::After(seq) => match self.history.after(seq, self.seq) {
                Some(frames) if !(self.reborn && seq > 0) => frames,
                _ => {
                    self.reset(subscriber);
                    return;
                }
            },
        };
        if !frames.is_empty() {
            subscriber.send(Deliver::Replay(frames));
        }
    }

    /// Adds a subscriber that is not yet subscribed, replaying first.
    fn join(&mut self, entry: Entry, replay: TopicReplay, ctx: &mut Context<Self>) {
        match self.replay_to(&entry.subscriber, replay) {
            Joining::Now => {
                self.subscribers.insert(entry.subscriber.id, entry);
            }
            Joining::ReadBack(what) => self.read_back(entry, what, ctx),
        }
    }

    /// Reads the replay of a joining subscriber from the stream; it is pending
    /// until the answer comes.
    #[cfg(feature = "nats")]
    fn read_back(&mut self, entry: Entry, what: ReadBack, ctx: &mut Context<Self>) {
        let Some(history) = self.settings.cluster.clone() else {
            self.reset(&entry.subscriber);
            self.subscribers.insert(entry.subscriber.id, entry);
            return;
        };
        let id = entry.subscriber.id;
        self.pending.insert(
            id,
            Pending {
                entry,
                held: Vec::new(),
            },
        );
        let topic = self.name.clone();
        // The stream keeps at most `history.size` events per topic.
        let max = self.settings.history_size;
        let read = async move {
            match what {
                ReadBack::After(seq) => history.after(&topic, seq, max).await,
                ReadBack::Last(_) => history.kept(&topic, max).await.map(Some),
            }
        };
        ctx.spawn(
            read.into_actor(self)
                .map(move |result, topic, _| topic.read_back_done(id, what, result)),
        );
    }

    #[cfg(not(feature = "nats"))]
    fn read_back(&mut self, entry: Entry, _what: ReadBack, _ctx: &mut Context<Self>) {
        self.reset(&entry.subscriber);
        self.subscribers.insert(entry.subscriber.id, entry);
    }

    /// The stream answered (or failed to) for pending subscriber `id`: its replay,
    /// then the held events the replay did not cover, then live.
    #[cfg(feature = "nats")]
    fn read_back_done(
        &mut self,
        id: u64,
        what: ReadBack,
        result: Result<Option<Vec<crate::history::Stored>>, crate::history::HistoryError>,
    ) {
        let Some(Pending { mut entry, held }) = self.pending.remove(&id) else {
            // Unsubscribed meanwhile.
            return;
        };
        let subscriber = &entry.subscriber;
        // The newest stream position the replay covers.
        let mut covered = 0;
        match result {
            Ok(Some(stored)) => {
                let (mut prev, keep_from) = match what {
                    ReadBack::After(seq) => {
                        covered = seq;
                        (Some(seq), 0)
                    }
                    ReadBack::Last(n) => (None, stored.len().saturating_sub(n)),
                };
                let mut frames = Vec::with_capacity(stored.len() - keep_from);
                for (i, s) in stored.iter().enumerate() {
                    if i >= keep_from {
                        frames.push(event::replay_of(&self.render_stored(s, prev)));
                    }
                    prev = Some(s.seq);
                    covered = covered.max(s.seq);
                }
                if !frames.is_empty() {
                    subscriber.send(Deliver::Replay(frames));
                }
            }
            Ok(None) => self.reset(subscriber),
            Err(e) => {
                tracing::warn!(topic = %self.name, error = %e, "cluster history: reading back from the stream failed; the subscriber gets a reset");
                self.reset(subscriber);
            }
        }
        let mut dropped = 0;
        for (position, frame) in held {
            if position.is_some_and(|p| p <= covered) {
                continue;
            }
            if let Offer::Dropped = subscriber.offer(&frame) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            METRICS.dropped(DropReason::QueueFull, dropped);
        }
        // Stream events this node has not read yet were in the replay.
        entry.skip_upto = if covered > self.position { covered } else { 0 };
        self.subscribers.insert(id, entry);
    }

    /// A stored event rendered as every node renders it live.
    #[cfg(feature = "nats")]
    fn render_stored(&self, s: &crate::history::Stored, prev: Option<u64>) -> Frame {
        event::render(
            EventMeta {
                topic: &self.name,
                seq: s.seq,
                prev,
                local: false,
                ts: s.ts_ms,
                source: s.event.source,
                key: s.event.key.as_deref(),
                headers: &s.event.headers,
            },
            &s.event.payload,
        )
    }

    fn tick(&mut self, _ctx: &mut Context<Self>) {
        self.history
            .expire(crate::clock::now_ms(), self.settings.history_ttl_ms);
        if self.subscribers.is_empty() && self.pending.is_empty() && self.history.is_empty() {
            if !self.reported_idle {
                self.reported_idle = true;
                self.shard.do_send(TopicIdle {
                    topic: self.name.clone(),
                    handled: self.handled,
                });
            }
        } else {
            self.reported_idle = false;
        }
    }

    fn handled_one(&mut self) {
        self.handled += 1;
        self.reported_idle = false;
    }
}

impl Actor for Topic {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity);
        ctx.run_interval(self.settings.tick(), Self::tick);
    }
}

impl Handler<Ingest> for Topic {
    type Result = ();

    fn handle(&mut self, msg: Ingest, _ctx: &mut Self::Context) {
        self.handled_one();
        let (seq, prev, first) = match msg.positioned {
            Some(p) => {
                self.position = p.seq;
                (p.seq, p.prev, p.first)
            }
            None => {
                // Lost events keep their seqs: the gap tells subscribers (and a later
                // resume, whose replay has the same gap) that something is missing.
                self.seq += msg.missed + 1;
                (self.seq, None, false)
            }
        };
        let positioned = msg.positioned.is_some();
        self.received += 1;
        self.last_event_ms = Some(msg.ts);
        let ev = &msg.event;
        let frame = event::render(
            EventMeta {
                topic: &self.name,
                seq,
                prev,
                // With cluster history, an event that did not come from the stream
                // counts on this node only.
                local: !positioned && self.settings.clustered(),
                ts: msg.ts,
                source: ev.source,
                key: ev.key.as_deref(),
                headers: &ev.headers,
            },
            &ev.payload,
        );
        let mut gone = Vec::new();
        let mut dropped = 0;
        for (id, entry) in &self.subscribers {
            if positioned && seq <= entry.skip_upto {
                continue;
            }
            match entry.subscriber.offer(&frame) {
                Offer::Queued => {}
                Offer::Dropped => dropped += 1,
                Offer::Closed => gone.push(*id),
            }
        }
        for pending in self.pending.values_mut() {
            if pending.held.len() < self.settings.history_size.max(1) {
                pending
                    .held
                    .push((positioned.then_some(seq), frame.clone()));
            } else {
                // Its `prev` shows the subscriber the gap.
                dropped += 1;
            }
        }
        if dropped > 0 {
            METRICS.dropped(DropReason::QueueFull, dropped);
        }
        for id in gone {
            self.subscribers.remove(&id);
        }
        self.history.push(
            Kept {
                seq,
                ts: msg.ts,
                frame,
                positioned,
                first,
            },
            self.settings.history_size,
        );
    }
}

impl Handler<AddSubscriber> for Topic {
    type Result = ();

    fn handle(&mut self, msg: AddSubscriber, ctx: &mut Self::Context) {
        self.handled_one();
        self.history
            .expire(crate::clock::now_ms(), self.settings.history_ttl_ms);
        let id = msg.subscriber.id;
        // Already receiving this topic (or about to): a replay would duplicate events.
        if let Some(entry) = self.subscribers.get_mut(&id) {
            entry.add(msg.reason);
        } else if let Some(pending) = self.pending.get_mut(&id) {
            pending.entry.add(msg.reason);
        } else {
            self.join(Entry::new(msg.subscriber, msg.reason), msg.replay, ctx);
        }
    }
}

impl Handler<RemoveSubscriber> for Topic {
    type Result = ();

    fn handle(&mut self, msg: RemoveSubscriber, _ctx: &mut Self::Context) {
        self.handled_one();
        let id = msg.subscriber;
        if let Some(entry) = self.subscribers.get_mut(&id) {
            if entry.remove(msg.reason) {
                self.subscribers.remove(&id);
            }
        } else if let Some(pending) = self.pending.get_mut(&id) {
            if pending.entry.remove(msg.reason) {
                self.pending.remove(&id);
            }
        }
    }
}

impl Handler<TopicStats> for Topic {
    type Result = Option<TopicInfo>;

    fn handle(&mut self, _msg: TopicStats, _ctx: &mut Self::Context) -> Self::Result {
        self.handled_one();
        Some(TopicInfo {
            topic: self.name.clone(),
            subscribers: self.subscribers.len(),
            exact: self.subscribers.values().filter(|e| e.exact).count(),
            // With cluster history, the topic's stream position (its node-local
            // count, for a topic only bridges feed).
            seq: if self.position > 0 {
                self.position
            } else {
                self.seq
            },
            last_event_ms: self.last_event_ms,
            events: self.settings.clustered().then_some(self.received),
        })
    }
}

impl Handler<StopTopic> for Topic {
    type Result = ();

    fn handle(&mut self, _msg: StopTopic, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(seq: u64, ts: u64) -> Kept {
        Kept {
            seq,
            ts,
            frame: format!(r#"{{"type":"event","seq":{seq}}}"#).into(),
            positioned: false,
            first: false,
        }
    }

    fn stream_event(seq: u64, first: bool) -> Kept {
        Kept {
            positioned: true,
            first,
            ..kept(seq, 0)
        }
    }

    #[test]
    fn cluster_positions_replay_after_a_kept_position_or_ask_the_stream() {
        let mut h = History::default();
        // A node-local event between stream events is not part of their chain.
        for k in [
            stream_event(4, false),
            stream_event(9, false),
            kept(1, 0),
            stream_event(17, false),
        ] {
            h.push(k, 10);
        }
        assert_eq!(h.after_position(4).map(|f| seqs(&f)), Some(vec![9, 17]));
        assert_eq!(h.after_position(17).map(|f| seqs(&f)), Some(vec![]));
        assert!(
            h.after_position(5).is_none(),
            "5 is not an event of this topic here"
        );
        assert!(
            h.after_position(1).is_none(),
            "1 is a node-local seq, not a position"
        );
        assert!(
            h.after_position(3).is_none(),
            "before the ring: read the stream"
        );
        // `last`: the ring answers when it holds enough, or the topic's first event.
        assert!(h.answers_last(3) && !h.answers_last(4));
        assert!(h.whole_topic().is_none());
        let mut whole = History::default();
        whole.push(stream_event(7, true), 10);
        whole.push(stream_event(8, false), 10);
        assert!(whole.answers_last(100));
        assert_eq!(whole.whole_topic().map(|f| seqs(&f)), Some(vec![7, 8]));
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).expect("json");
                assert_eq!(v["replay"], true);
                v["seq"].as_u64().expect("seq")
            })
            .collect()
    }

    #[test]
    fn ring_is_bounded_by_size() {
        let mut h = History::default();
        for s in 1..=10 {
            h.push(kept(s, 0), 3);
        }
        assert_eq!(seqs(&h.last(100)), vec![8, 9, 10]);
        assert_eq!(seqs(&h.last(2)), vec![9, 10]);
        let mut off = History::default();
        off.push(kept(1, 0), 0);
        assert!(off.is_empty());
    }

    #[test]
    fn ring_is_bounded_by_age() {
        let mut h = History::default();
        h.push(kept(1, 1_000), 10);
        h.push(kept(2, 5_000), 10);
        h.expire(6_500, 2_000);
        assert_eq!(seqs(&h.last(10)), vec![2]);
        h.expire(60_000, 2_000);
        assert!(h.is_empty());
    }

    #[test]
    fn resume_replays_exactly_the_missing_events_or_refuses() {
        let mut h = History::default();
        for s in 5..=9 {
            h.push(kept(s, 0), 10);
        }
        assert_eq!(h.after(6, 9).map(|f| seqs(&f)), Some(vec![7, 8, 9]));
        assert_eq!(h.after(4, 9).map(|f| seqs(&f)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(h.after(9, 9).map(|f| seqs(&f)), Some(vec![]));
        assert!(h.after(3, 9).is_none(), "event 4 was forgotten");
        assert!(
            h.after(10, 9).is_none(),
            "ahead of the topic: history expired"
        );
        let empty = History::default();
        assert_eq!(empty.after(0, 0).map(|f| f.len()), Some(0));
        assert!(empty.after(2, 3).is_none());
    }
}
