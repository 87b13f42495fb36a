//! Messages between actors: bridge/HTTP/session → registry shard → topic → session.
//!
//! Topics do not message sessions per event: [`Deliver`] travels through the
//! session's inbox ([`crate::session::inbox`]), byte-bounded, with one wake-up per batch. A
//! live event over a connection's budget is dropped and counted for its next
//! `lagged`; replies to a subscribe (replay, reset) are never dropped there: there is
//! one per client request, and requests are rate limited.

use std::sync::Arc;

use actix::Message;

use crate::protocol::event::Frame;
use crate::protocol::{Replay, ResetReason};
pub(crate) use crate::session::inbox::Subscriber;
use crate::topic::Pattern;

/// What a topic sends to a session (through its inbox).
#[derive(Debug)]
pub(crate) enum Deliver {
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
pub(crate) struct Ingest {
    pub event: super::Event,
    /// Milliseconds since the Unix epoch when Herald received it (`ts`).
    pub ts: u64,
    /// Events of this topic lost on their way here since the previous one reached
    /// the topic (a full mailbox, a source's lost connection): the topic skips that
    /// many seqs, so every subscriber sees the gap where the loss happened.
    pub missed: u64,
    /// With cluster history, for an event read from the stream: its position, set
    /// by the topic's shard.
    pub positioned: Option<Positioned>,
}

/// An event's place in the cluster history stream, as its topic renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Positioned {
    /// The stream sequence: the event's `seq`.
    pub seq: u64,
    /// The topic's previous position (`prev`), when this node knows of one.
    pub prev: Option<u64>,
    /// Known to be the topic's first event in the stream (no `prev` to know of).
    pub first: bool,
}

/// Registry → every shard: the events of the topics matching `patterns` may have
/// been lost (a bridge's connection dropped). Each matching topic's next event
/// carries the gap ([`Ingest::missed`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Interrupted {
    pub patterns: Arc<[Pattern]>,
}

/// Subscribe a connection to one pattern (sent to the topic's shard, or to every
/// shard for a wildcard pattern).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Subscribe {
    pub subscriber: Subscriber,
    pub pattern: Pattern,
    pub replay: Arc<Replay>,
}

/// Remove one pattern of a connection.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Unsubscribe {
    pub subscriber: u64,
    pub pattern: Pattern,
}

/// Why a connection is subscribed to a topic: by its exact name, or through a
/// wildcard pattern. A connection stays subscribed while it has any reason left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Exact,
    Pattern,
}

/// What a topic replays to a subscriber joining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicReplay {
    None,
    /// The N most recent events.
    Last(u32),
    /// Every event after this seq, or `reset` if history no longer has them.
    After(u64),
}

/// Shard → topic: add a subscriber.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct AddSubscriber {
    pub subscriber: Subscriber,
    pub reason: Reason,
    pub replay: TopicReplay,
}

/// Shard → topic: remove one reason of a subscriber.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct RemoveSubscriber {
    pub subscriber: u64,
    pub reason: Reason,
}

/// One row of `GET /api/topics`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct TopicInfo {
    pub topic: String,
    /// Connections that receive the topic's events, exactly or through a pattern,
    /// each counted once.
    pub subscribers: usize,
    /// Of those, the connections subscribed to exactly this name.
    pub exact: usize,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_ms: Option<u64>,
    /// With cluster history, where `seq` is a stream position and no count: the
    /// events this node has received of the topic since it last started holding it
    /// (what a rate is computed from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
}

/// One `patterns` row of `GET /api/topics`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PatternInfo {
    pub pattern: String,
    pub subscribers: usize,
}

/// Shard/topic → stats.
#[derive(Debug, Message)]
#[rtype(result = "Option<TopicInfo>")]
pub(crate) struct TopicStats;

/// Everything a shard holds, for `GET /api/topics`.
#[derive(Debug, Message)]
#[rtype(result = "(Vec<TopicInfo>, Vec<PatternInfo>)")]
pub(crate) struct ListTopics;

/// Topic → shard: nothing to keep me alive (no subscribers, no history).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TopicIdle {
    pub topic: String,
    /// Messages the topic has handled; the shard compares with what it sent, so a
    /// topic with work in flight is never stopped.
    pub handled: u64,
}

/// Shard → topic: stop now (the shard has forgotten you).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopTopic;

/// Broker → session: the process is shutting down, close with 1001.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;
