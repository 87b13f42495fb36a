//! The topic registry, sharded by topic hash: one [`Shard`] actor per thread.
//!
//! A shard maps topic names to [`Topic`] actors (created on first use, forgotten when
//! idle) and holds every wildcard subscription, so that a topic created later gets its
//! pattern subscribers at once. Each event passes through exactly one shard (its
//! topic's), so no single actor sits on the path of every event. Wildcard
//! subscriptions are sent to every shard, since matching topics can live in any.
//!
//! [`Registry`] is the cheap, clonable handle publishers and sessions use.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use futures_util::future::join_all;

use crate::metrics::{DropReason, METRICS};
use crate::protocol::{Replay, ResetReason};
use crate::publish::PublishError;
use crate::topic::Pattern;
use crate::topics::message::{
    AddSubscriber, Deliver, Ingest, Interrupted, ListTopics, PatternInfo, Positioned, Reason,
    RemoveSubscriber, StopTopic, Subscribe, Subscriber, TopicIdle, TopicInfo, TopicReplay,
    TopicStats, Unsubscribe,
};
use crate::topics::topic::{Topic, TopicSettings};
use crate::topics::Event;

/// A known topic and the count of messages the shard sent it.
struct Slot {
    addr: Addr<Topic>,
    sent: u64,
    /// Events of this topic lost since the last one the topic took: told to the
    /// topic with its next event ([`Ingest::missed`]).
    missed: u64,
    /// Cluster history: the topic's last position in the stream (0: none known),
    /// the `prev` of its next event.
    last: u64,
}

impl Slot {
    fn send<M>(&mut self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Topic: Handler<M>,
    {
        self.sent += 1;
        self.addr.do_send(msg);
    }
}

/// Most forgotten topic names a shard remembers (see [`Shard::forgotten`]).
const FORGOTTEN_CAP: usize = 100_000;

/// One registry shard.
pub(crate) struct Shard {
    index: usize,
    shards: usize,
    hasher: std::collections::hash_map::RandomState,
    topics: HashMap<String, Slot>,
    /// Wildcard pattern → its subscribers (by session id).
    patterns: HashMap<Pattern, HashMap<u64, Subscriber>>,
    settings: Arc<TopicSettings>,
    /// Names of topics forgotten in this epoch. A topic created again under such a
    /// name starts at seq 1, so a client's resume position is ambiguous between the
    /// two lives: the new topic answers every resume with `reset` (see
    /// `Topic::reborn`). Bounded: past [`FORGOTTEN_CAP`] names the shard stops
    /// remembering and treats every new topic as possibly re-born.
    forgotten: std::collections::HashSet<String>,
    forgotten_overflow: bool,
    /// Topics whose events [`Registry::publish`] could not hand to this shard.
    refused: Arc<Refused>,
    /// Cluster history: the last stream position of topics this shard forgot (no
    /// subscribers, no history left), so that their next event still gets its
    /// `prev`. Bounded by [`FORGOTTEN_CAP`]; past it, such a topic's next event has
    /// no `prev`, which a client takes as a possible gap.
    positions: HashMap<String, u64>,
}

/// Events [`Registry::publish`] could not hand to a shard (its mailbox was full), by
/// topic: the count travels with the topic's next event that gets in
/// ([`Ingest::missed`]), so the gap lands exactly where the loss was for each
/// publisher. Touched only after a refusal: the publish path reads one atomic
/// otherwise. Bounded: past [`REFUSED_CAP`] topics the shard marks every topic it
/// holds at its next event instead.
#[derive(Debug, Default)]
struct Refused {
    any: AtomicBool,
    overflow: AtomicBool,
    topics: Mutex<HashMap<String, u64>>,
}

/// Most topics with refused events remembered per shard.
const REFUSED_CAP: usize = 10_000;

impl Refused {
    fn add(&self, topic: &str, lost: u64) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = topics.get_mut(topic) {
            *count += lost;
        } else if topics.len() < REFUSED_CAP {
            topics.insert(topic.to_owned(), lost);
        } else {
            self.overflow.store(true, Ordering::Relaxed);
        }
        self.any.store(true, Ordering::Release);
    }

    /// The events of `topic` refused since its last event got in.
    fn take(&self, topic: &str) -> u64 {
        if !self.any.load(Ordering::Acquire) {
            return 0;
        }
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let lost = topics.remove(topic).unwrap_or(0);
        if topics.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        lost
    }
}

impl Shard {
    /// When more topics had events refused than [`Refused`] remembers, every topic
    /// of the shard skips a seq at its next event.
    fn refused_overflow(&mut self) {
        // Once per event: a read, and a write only after an overflow.
        if self.refused.overflow.load(Ordering::Relaxed)
            && self.refused.overflow.swap(false, Ordering::Relaxed)
        {
            for slot in self.topics.values_mut() {
                slot.missed += 1;
            }
        }
    }

    fn owns(&self, topic: &str) -> bool {
        shard_of(&self.hasher, topic, self.shards) == self.index
    }

    fn topic(&mut self, name: &str, ctx: &mut Context<Self>) -> &mut Slot {
        if !self.topics.contains_key(name) {
            let subscribers: Vec<Subscriber> = self
                .patterns
                .iter()
                .filter(|(p, _)| p.matches(name))
                .flat_map(|(_, subs)| subs.values().cloned())
                .collect();
            // A connection matching through two patterns is one subscriber with two
            // reasons; Topic::new counts one, so add the others as extra reasons.
            let mut first: HashMap<u64, Subscriber> = HashMap::new();
            let mut extra = Vec::new();
            for s in subscribers {
                match first.entry(s.id) {
                    std::collections::hash_map::Entry::Occupied(_) => extra.push(s),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(s);
                    }
                }
            }
            // Stream positions never restart: a topic is reborn only locally.
            let clustered = self.settings.clustered();
            let reborn = !clustered && (self.forgotten.remove(name) || self.forgotten_overflow);
            let last = self.positions.remove(name).unwrap_or(0);
            let topic = Topic::new(
                name.to_owned(),
                self.settings.clone(),
                ctx.address(),
                first.into_values().collect(),
                reborn,
                last,
            );
            let mut slot = Slot {
                addr: topic.start(),
                sent: 0,
                missed: 0,
                last,
            };
            for s in extra {
                slot.send(AddSubscriber {
                    subscriber: s,
                    reason: Reason::Pattern,
                    replay: TopicReplay::None,
                });
            }
            METRICS.topics_changed(1);
            self.topics.insert(name.to_owned(), slot);
        }
        // Inserted above when missing.
        self.topics.get_mut(name).expect("topic slot exists")
    }
}

fn replay_for(replay: &Replay, topic: &str) -> TopicReplay {
    match replay {
        Replay::None => TopicReplay::None,
        Replay::Last(n) => TopicReplay::Last(*n),
        Replay::Resume(seqs) => seqs
            .get(topic)
            .map_or(TopicReplay::None, |s| TopicReplay::After(*s)),
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity);
    }
}

impl Handler<Ingest> for Shard {
    type Result = ();

    fn handle(&mut self, mut msg: Ingest, ctx: &mut Self::Context) {
        self.refused_overflow();
        let unsure_of_first = self.forgotten_overflow;
        let slot = self.topic(&msg.event.topic, ctx);
        if let Some(p) = msg.event.position {
            // Stream order: an event at or before the last position is one this node
            // already read (a consumer that started again from an earlier point).
            if p.seq <= slot.last {
                return;
            }
            // An event of this topic refused on its way here (`missed`) had a
            // position this shard never learnt: no `prev` then, which a client
            // takes as a gap (a stream position never directly follows the one
            // before the lost event).
            let known = slot.last > 0 && msg.missed == 0;
            msg.positioned = Some(Positioned {
                seq: p.seq,
                prev: known.then_some(slot.last),
                first: slot.last == 0 && msg.missed == 0 && !p.catching_up && !unsure_of_first,
            });
            slot.last = p.seq;
        }
        // Lost on the way to this shard (carried by the event), and on the way from
        // this shard to the topic since its last event got in.
        let carried = msg.missed;
        msg.missed += slot.missed;
        match slot.addr.try_send(msg) {
            Ok(()) => {
                slot.sent += 1;
                slot.missed = 0;
            }
            Err(_) => {
                slot.missed += carried + 1;
                METRICS.dropped(DropReason::TopicBusy, 1);
            }
        }
    }
}

impl Handler<Interrupted> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Interrupted, _ctx: &mut Self::Context) {
        for (name, slot) in &mut self.topics {
            if msg.patterns.iter().any(|p| p.matches(name)) {
                slot.missed += 1;
            }
        }
    }
}

impl Handler<Subscribe> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) {
        let Subscribe {
            subscriber,
            pattern,
            replay,
        } = msg;
        if self.settings.clustered() {
            // A resumed topic this node does not hold may still be in the stream
            // (this node forgot it, or has not read that far): its topic reads it
            // back, or resets.
            if let Replay::Resume(seqs) = &*replay {
                for topic in seqs.keys() {
                    if pattern.matches(topic) && self.owns(topic) {
                        self.topic(topic, ctx);
                    }
                }
            }
        }
        if !pattern.is_wildcard() {
            let replay = replay_for(&replay, pattern.as_str());
            self.topic(pattern.as_str(), ctx).send(AddSubscriber {
                subscriber,
                reason: Reason::Exact,
                replay,
            });
            return;
        }
        // Resume entries for matching topics this shard owns but does not hold: their
        // history is gone, so a position above 0 can only be answered with `reset`.
        if let Replay::Resume(seqs) = &*replay {
            for (topic, seq) in seqs {
                // (With cluster history every such topic was made above.)
                if *seq > 0
                    && pattern.matches(topic)
                    && self.owns(topic)
                    && !self.topics.contains_key(topic)
                {
                    subscriber.send(Deliver::Reset {
                        topic: topic.clone(),
                        reason: ResetReason::HistoryExpired,
                    });
                }
            }
        }
        for (name, slot) in self.topics.iter_mut() {
            if pattern.matches(name) {
                slot.send(AddSubscriber {
                    subscriber: subscriber.clone(),
                    reason: Reason::Pattern,
                    replay: replay_for(&replay, name),
                });
            }
        }
        self.patterns
            .entry(pattern)
            .or_default()
            .insert(subscriber.id, subscriber);
    }
}

impl Handler<Unsubscribe> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        if !msg.pattern.is_wildcard() {
            if let Some(slot) = self.topics.get_mut(msg.pattern.as_str()) {
                slot.send(RemoveSubscriber {
                    subscriber: msg.subscriber,
                    reason: Reason::Exact,
                });
            }
            return;
        }
        let Some(subs) = self.patterns.get_mut(&msg.pattern) else {
            return;
        };
        if subs.remove(&msg.subscriber).is_none() {
            return;
        }
        if subs.is_empty() {
            self.patterns.remove(&msg.pattern);
        }
        for (name, slot) in self.topics.iter_mut() {
            if msg.pattern.matches(name) {
                slot.send(RemoveSubscriber {
                    subscriber: msg.subscriber,
                    reason: Reason::Pattern,
                });
            }
        }
    }
}

impl Handler<TopicIdle> for Shard {
    type Result = ();

    fn handle(&mut self, msg: TopicIdle, _ctx: &mut Self::Context) {
        let Some(slot) = self.topics.get(&msg.topic) else {
            return;
        };
        // Only when the topic has handled everything we sent it: otherwise a
        // subscribe or an event is on its way and the topic is not idle after all.
        if slot.sent == msg.handled {
            if let Some(slot) = self.topics.remove(&msg.topic) {
                slot.addr.do_send(StopTopic);
                METRICS.topics_changed(-1);
                if self.settings.clustered() {
                    if self.positions.len() < FORGOTTEN_CAP {
                        if slot.last > 0 {
                            self.positions.insert(msg.topic, slot.last);
                        }
                    } else {
                        // A topic seen again may now look new: none is taken for
                        // its topic's first event from then on.
                        self.forgotten_overflow = true;
                    }
                } else if self.forgotten.len() < FORGOTTEN_CAP {
                    self.forgotten.insert(msg.topic);
                } else {
                    self.forgotten_overflow = true;
                }
            }
        }
    }
}

impl Handler<ListTopics> for Shard {
    type Result = ResponseFuture<(Vec<TopicInfo>, Vec<PatternInfo>)>;

    fn handle(&mut self, _msg: ListTopics, _ctx: &mut Self::Context) -> Self::Result {
        let asks: Vec<_> = self
            .topics
            .values_mut()
            .map(|slot| {
                slot.sent += 1;
                slot.addr.send(TopicStats)
            })
            .collect();
        let patterns = self
            .patterns
            .iter()
            .map(|(p, subs)| PatternInfo {
                pattern: p.to_string(),
                subscribers: subs.len(),
            })
            .collect();
        Box::pin(async move {
            let topics = join_all(asks)
                .await
                .into_iter()
                .filter_map(|r| r.ok().flatten())
                .collect();
            (topics, patterns)
        })
    }
}

fn shard_of(hasher: &impl BuildHasher, topic: &str, shards: usize) -> usize {
    (hasher.hash_one(topic) % shards as u64) as usize
}

/// The handle to the registry: clone it freely (an `Arc`).
#[derive(Clone)]
pub(crate) struct Registry {
    shards: Arc<[Addr<Shard>]>,
    /// Per shard, the topics whose events its full mailbox refused.
    refused: Arc<[Arc<Refused>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Registry {
    /// Starts `shards` shard actors, each on its own arbiter (thread). Must run inside
    /// an actix system.
    pub(crate) fn start(shards: usize, settings: TopicSettings) -> Registry {
        let shards = shards.max(1);
        let settings = Arc::new(settings);
        let hasher = std::collections::hash_map::RandomState::new();
        let refused: Arc<[Arc<Refused>]> = (0..shards).map(|_| Arc::default()).collect();
        let addrs: Vec<Addr<Shard>> = (0..shards)
            .map(|index| {
                let arbiter = Arbiter::new();
                let settings = settings.clone();
                let hasher = hasher.clone();
                let refused = refused[index].clone();
                Shard::start_in_arbiter(&arbiter.handle(), move |_| Shard {
                    index,
                    shards,
                    hasher,
                    topics: HashMap::new(),
                    patterns: HashMap::new(),
                    settings,
                    forgotten: Default::default(),
                    forgotten_overflow: false,
                    refused,
                    positions: HashMap::new(),
                })
            })
            .collect();
        Registry {
            shards: addrs.into(),
            refused,
            hasher,
        }
    }

    fn shard(&self, topic: &str) -> &Addr<Shard> {
        &self.shards[self.shard_index(topic)]
    }

    fn shard_index(&self, topic: &str) -> usize {
        shard_of(&self.hasher, topic, self.shards.len())
    }

    /// Hands an event to its topic. Never waits: a full shard mailbox drops the event
    /// and says so; the topic's next event then carries the gap.
    pub(crate) fn publish(&self, event: Event) -> Result<(), PublishError> {
        METRICS.event_in(event.source);
        // A stream event's time is when the stream stored it: the same on every node.
        let ts = event
            .position
            .map_or_else(crate::clock::now_ms, |p| p.ts_ms);
        let index = self.shard_index(&event.topic);
        let missed = self.refused[index].take(&event.topic);
        self.shards[index]
            .try_send(Ingest {
                event,
                ts,
                missed,
                positioned: None,
            })
            .map_err(|e| {
                let (SendError::Full(refused) | SendError::Closed(refused)) = e;
                self.refused[index].add(&refused.event.topic, refused.missed + 1);
                METRICS.dropped(DropReason::TopicBusy, 1);
                PublishError::Busy
            })
    }

    /// Marks a possible loss in every topic matching `patterns` (a bridge's
    /// connection dropped): each one's next event skips a seq. Never refused, and
    /// queued behind the events already sent, so the gap lands where the loss began.
    pub(crate) fn interrupted(&self, patterns: &[Pattern]) {
        let patterns: Arc<[Pattern]> = patterns.into();
        for shard in self.shards.iter() {
            shard.do_send(Interrupted {
                patterns: patterns.clone(),
            });
        }
    }

    /// Subscribes `subscriber` to `pattern`.
    pub(crate) fn subscribe(
        &self,
        subscriber: &Subscriber,
        pattern: &Pattern,
        replay: Arc<Replay>,
    ) {
        let msg = |s: &Subscriber| Subscribe {
            subscriber: s.clone(),
            pattern: pattern.clone(),
            replay: replay.clone(),
        };
        if pattern.is_wildcard() {
            for shard in self.shards.iter() {
                shard.do_send(msg(subscriber));
            }
        } else {
            self.shard(pattern.as_str()).do_send(msg(subscriber));
        }
    }

    /// Removes one pattern of a connection.
    pub(crate) fn unsubscribe(&self, subscriber: u64, pattern: &Pattern) {
        let msg = || Unsubscribe {
            subscriber,
            pattern: pattern.clone(),
        };
        if pattern.is_wildcard() {
            for shard in self.shards.iter() {
                shard.do_send(msg());
            }
        } else {
            self.shard(pattern.as_str()).do_send(msg());
        }
    }

    /// Every topic and pattern this node holds, sorted by name.
    pub(crate) async fn list(&self) -> (Vec<TopicInfo>, Vec<PatternInfo>) {
        let answers = join_all(self.shards.iter().map(|s| s.send(ListTopics))).await;
        let mut topics = Vec::new();
        let mut patterns = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            if let Ok((t, p)) = answer {
                topics.extend(t);
                // Every shard holds every wildcard pattern; list them once.
                if i == 0 {
                    patterns = p;
                }
            }
        }
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        patterns.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        (topics, patterns)
    }
}
