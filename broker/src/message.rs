//! Messages between actors: bridge/HTTP/session → registry shard → topic → session.
//!
//! Live events travel as [`Deliver::Event`] with `try_send`, so a full session mailbox
//! drops the event (counted in the subscriber's `missed` counter, later reported as
//! `lagged`) instead of queueing without bound. Replies to a subscribe (replay,
//! reset) are `do_send`: there is one per client request, and requests are rate
//! limited, so they cannot grow without bound and must not be lost.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix::{Message, Recipient};
use herald_bridges::BridgeEvent;

use crate::event::Frame;
use crate::pattern::Pattern;
use crate::protocol::{Replay, ResetReason};

/// A connection as topics see it. Cloned once per subscription, never per event.
#[derive(Clone)]
pub struct Subscriber {
    /// Process-unique session number (dedup key: one delivery per connection).
    pub id: u64,
    /// The session actor.
    pub addr: Recipient<Deliver>,
    /// Events dropped because the session's mailbox was full; the session adds them
    /// to its next `lagged` notice.
    pub missed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a topic sends to a session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Deliver {
    /// A live event.
    Event(Frame),
    /// History for one topic, oldest first, already flagged `replay`.
    Replay(Vec<Frame>),
    /// `{"type":"reset"}` for one topic.
    Reset { topic: String, reason: ResetReason },
}

/// An event entering the topic layer, stamped with its arrival time.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ingest {
    pub event: BridgeEvent,
    /// Milliseconds since the Unix epoch when Herald received it (`ts`).
    pub ts: u64,
}

/// Subscribe a connection to one pattern (sent to the topic's shard, or to every
/// shard for a wildcard pattern).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub subscriber: Subscriber,
    pub pattern: Pattern,
    pub replay: Arc<Replay>,
}

/// Remove one pattern of a connection.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub subscriber: u64,
    pub pattern: Pattern,
}

/// Why a connection is subscribed to a topic: by its exact name, or through a
/// wildcard pattern. A connection stays subscribed while it has any reason left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Exact,
    Pattern,
}

/// What a topic replays to a subscriber joining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicReplay {
    None,
    /// The N most recent events.
    Last(u32),
    /// Every event after this seq, or `reset` if history no longer has them.
    After(u64),
}

/// Shard → topic: add a subscriber.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AddSubscriber {
    pub subscriber: Subscriber,
    pub reason: Reason,
    pub replay: TopicReplay,
}

/// Shard → topic: remove one reason of a subscriber.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoveSubscriber {
    pub subscriber: u64,
    pub reason: Reason,
}

/// One row of `GET /api/topics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicInfo {
    pub topic: String,
    pub subscribers: usize,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_ms: Option<u64>,
}

/// One `patterns` row of `GET /api/topics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PatternInfo {
    pub pattern: String,
    pub subscribers: usize,
}

/// Shard/topic → stats.
#[derive(Debug, Message)]
#[rtype(result = "Option<TopicInfo>")]
pub struct TopicStats;

/// Everything a shard holds, for `GET /api/topics`.
#[derive(Debug, Message)]
#[rtype(result = "(Vec<TopicInfo>, Vec<PatternInfo>)")]
pub struct ListTopics;

/// Topic → shard: nothing to keep me alive (no subscribers, no history).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TopicIdle {
    pub topic: String,
    /// Messages the topic has handled; the shard compares with what it sent, so a
    /// topic with work in flight is never stopped.
    pub handled: u64,
}

/// Shard → topic: stop now (the shard has forgotten you).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopTopic;

/// Broker → session: the process is shutting down, close with 1001.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;
