//! The topic actor: one per concrete topic, living on its registry shard's thread.
//!
//! It owns the topic's seq counter, its history ring and its subscribers. Each event
//! is rendered to a frame once (`event::render`) and the same frame goes to every
//! subscriber's inbox ([`crate::session::inbox`]): a reference count, a channel push and two
//! atomics per subscriber, no allocation and no actor message. Because subscribe
//! requests and events reach the topic through the same mailbox, a replay and the
//! live stream join without a gap or a duplicate: the replay is sent (into the
//! subscriber's inbox) before any live event that follows it.

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
}

impl TopicSettings {
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
}

impl Topic {
    /// A new topic with the pattern subscribers that already match it.
    pub(crate) fn new(
        name: String,
        settings: Arc<TopicSettings>,
        shard: Addr<Shard>,
        pattern_subscribers: Vec<Subscriber>,
        reborn: bool,
    ) -> Self {
        let subscribers = pattern_subscribers
            .into_iter()
            .map(|s| {
                let id = s.id;
                let entry = Entry {
                    subscriber: s,
                    exact: false,
                    patterns: 1,
                };
                (id, entry)
            })
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
        }
    }

    fn replay_to(&self, subscriber: &Subscriber, replay: TopicReplay) {
        let frames = match replay {
            TopicReplay::None => return,
            TopicReplay::Last(n) => self.history.last(n as usize),
            TopicReplay::After(seq) => match self.history.after(seq, self.seq) {
                Some(frames) if !(self.reborn && seq > 0) => frames,
                _ => {
                    subscriber.send(Deliver::Reset {
                        topic: self.name.clone(),
                        reason: ResetReason::HistoryExpired,
                    });
                    return;
                }
            },
        };
        if !frames.is_empty() {
            subscriber.send(Deliver::Replay(frames));
        }
    }

    fn tick(&mut self, _ctx: &mut Context<Self>) {
        self.history
            .expire(crate::clock::now_ms(), self.settings.history_ttl_ms);
        if self.subscribers.is_empty() && self.history.is_empty() {
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
        // Lost events keep their seqs: the gap tells subscribers (and a later
        // resume, whose replay has the same gap) that something is missing.
        self.seq += msg.missed + 1;
        self.last_event_ms = Some(msg.ts);
        let ev = &msg.event;
        let frame = event::render(
            EventMeta {
                topic: &self.name,
                seq: self.seq,
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
            match entry.subscriber.offer(&frame) {
                Offer::Queued => {}
                Offer::Dropped => dropped += 1,
                Offer::Closed => gone.push(*id),
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
                seq: self.seq,
                ts: msg.ts,
                frame,
            },
            self.settings.history_size,
        );
    }
}

impl Handler<AddSubscriber> for Topic {
    type Result = ();

    fn handle(&mut self, msg: AddSubscriber, _ctx: &mut Self::Context) {
        self.handled_one();
        self.history
            .expire(crate::clock::now_ms(), self.settings.history_ttl_ms);
        let id = msg.subscriber.id;
        match self.subscribers.get_mut(&id) {
            // Already receiving this topic live: a replay would duplicate events.
            Some(entry) => match msg.reason {
                Reason::Exact => entry.exact = true,
                Reason::Pattern => entry.patterns += 1,
            },
            None => {
                self.replay_to(&msg.subscriber, msg.replay);
                let entry = Entry {
                    subscriber: msg.subscriber,
                    exact: msg.reason == Reason::Exact,
                    patterns: u32::from(msg.reason == Reason::Pattern),
                };
                self.subscribers.insert(id, entry);
            }
        }
    }
}

impl Handler<RemoveSubscriber> for Topic {
    type Result = ();

    fn handle(&mut self, msg: RemoveSubscriber, _ctx: &mut Self::Context) {
        self.handled_one();
        if let Some(entry) = self.subscribers.get_mut(&msg.subscriber) {
            match msg.reason {
                Reason::Exact => entry.exact = false,
                Reason::Pattern => entry.patterns = entry.patterns.saturating_sub(1),
            }
            if !entry.exact && entry.patterns == 0 {
                self.subscribers.remove(&msg.subscriber);
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
            seq: self.seq,
            last_event_ms: self.last_event_ms,
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
        }
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
