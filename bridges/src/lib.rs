//! # herald-bridges
//!
//! What a bridge hands to the broker, and the contract every bridge fulfils.
//!
//! Bridges consume an external system (NATS, Kafka) and hand one [`BridgeEvent`] per
//! message to an [`EventSink`]. They do not depend on the broker crate: the broker
//! owns the topic layer and gives each bridge a sink into it, so a bridge can be
//! tested alone with a sink that records what it receives.
//!
//! ## Layout
//! - [`BridgeEvent`], [`Source`]: the event as it enters Herald.
//! - [`BridgeContext`]: what every bridge task is started with: an [`EventSink`]
//!   (where its events go), a [`StatusSink`] (its [`BridgeStatus`], for `/readyz`),
//!   its [`BridgeCounters`] (for `/metrics`) and a cancellation token (shutdown).
//!   A bridge is prepared once (`NatsBridge::new`, `KafkaBridge::new`) and runs as a
//!   task, `bridge.run(context, …)`, that returns once cancelled.
//! - [`topic`]: the topic grammar (names, patterns, matching, grant coverage),
//!   shared with the broker.
//! - [`backoff`]: the capped exponential backoff both bridges retry with.
//! - [`config`]: the bridges' configuration (`[[bridge.nats]]`, `[[bridge.kafka]]`),
//!   always compiled.
//! - `nats` (feature `nats`): the NATS bridge.
//! - `kafka` (feature `kafka`): the Kafka bridge.

#![warn(unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub mod backoff;
pub mod config;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
pub mod topic;

use bytes::Bytes;
pub use tokio_util::sync::CancellationToken;

/// Where an event entered Herald. Sent to clients as the event's `source` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A core NATS or JetStream message.
    Nats,
    /// A Kafka record.
    Kafka,
    /// `POST /api/publish`.
    Http,
    /// `{"op":"publish"}` from a WebSocket client.
    Ws,
}

impl Source {
    /// Every source, in the order metrics list them.
    pub const ALL: [Source; 4] = [Source::Nats, Source::Kafka, Source::Http, Source::Ws];

    /// The wire name (`"nats"`, `"kafka"`, `"http"`, `"ws"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nats => "nats",
            Source::Kafka => "kafka",
            Source::Http => "http",
            Source::Ws => "ws",
        }
    }

    /// Position in [`Source::ALL`], used to index per-source counters without a map.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event on its way into a Herald topic.
///
/// The payload stays as raw bytes until the topic serializes the event frame once;
/// no layer before it parses or copies the payload.
#[derive(Debug, Clone)]
pub struct BridgeEvent {
    /// The Herald topic (already mapped from the subject or Kafka topic). The sink
    /// validates it once ([`topic::TopicName`]) and drops (and counts) events whose
    /// topic is invalid.
    pub topic: String,
    /// The payload exactly as received: JSON, other UTF-8 text, or binary.
    pub payload: Bytes,
    /// Message key (Kafka record key, or `key` of an HTTP publish), when there is one.
    pub key: Option<String>,
    /// Headers (NATS headers, Kafka headers, or `headers` of an HTTP publish).
    pub headers: BTreeMap<String, String>,
    /// Where the event came from.
    pub source: Source,
    /// Its place in the cluster history stream, when it was read from there
    /// (`cluster.history = "jetstream"`); `None` for every other event.
    pub position: Option<StreamPosition>,
}

/// Where an event read from the cluster history stream sits in it: the same on
/// every node that reads the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    /// The stream sequence.
    pub seq: u64,
    /// When the stream stored it, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Read while the consumer was still catching up on what the stream held when
    /// it started (the last message of each subject): such an event may have
    /// earlier events of its topic in the stream that this node never read.
    pub catching_up: bool,
}

impl BridgeEvent {
    /// An event with no key and no headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, source: Source) -> Self {
        BridgeEvent {
            topic: topic.into(),
            payload: payload.into(),
            key: None,
            headers: BTreeMap::new(),
            source,
            position: None,
        }
    }
}

/// Health of one bridge, as `/readyz` and the metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeStatus {
    /// Connecting for the first time; not ready.
    Starting,
    /// Connected and every subscription or partition assignment is in effect.
    Ready,
    /// Lost its connection; reconnecting with backoff. The string says why.
    Down(String),
}

impl BridgeStatus {
    /// Whether the broker may report itself ready as far as this bridge is concerned.
    pub fn is_ready(&self) -> bool {
        matches!(self, BridgeStatus::Ready)
    }
}

/// Where a bridge hands its events: the broker's topic layer. `send` never waits, so
/// a slow broker never stalls a bridge's client: what does not fit is refused.
pub trait EventSink: Send + Sync + 'static {
    /// Hands over one event.
    fn send(&self, event: BridgeEvent) -> Result<(), SinkError>;

    /// Says that events of the topics matching `topics` may have been lost: the
    /// bridge's connection dropped, and what its source published meanwhile never
    /// reached this node (core NATS does not redeliver). Called before any event
    /// received after the loss is sent, so the broker can mark the loss in each
    /// matching topic's `seq` at the right place and subscribers see a gap.
    fn interrupted(&self, topics: &[topic::Pattern]);
}

/// Why a sink refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The topic layer's queue is full; the event is dropped.
    #[error("the topic layer is full")]
    Full,
    /// The topic is not a valid Herald topic (counted by the broker as
    /// `invalid_topic`).
    #[error(transparent)]
    InvalidTopic(#[from] topic::TopicError),
}

/// What a bridge task is started with.
#[derive(Clone)]
pub struct BridgeContext {
    /// This node's name (the Kafka bridge's `group.id` is made from it).
    pub node: String,
    /// Where its events go.
    pub sink: Arc<dyn EventSink>,
    /// Where its status goes.
    pub status: StatusSink,
    /// What it counts.
    pub counters: Arc<BridgeCounters>,
    /// Cancelled at shutdown: the bridge stops reading, closes its client and
    /// returns.
    pub cancel: CancellationToken,
}

impl fmt::Debug for BridgeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeContext")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl BridgeContext {
    /// Counts one received message and hands its event to the sink without waiting;
    /// an event refused because the topic layer is full is counted as dropped.
    pub fn forward(&self, event: BridgeEvent) {
        let c = &self.counters;
        c.add(&c.received, 1);
        if let Err(SinkError::Full) = self.sink.send(event) {
            c.add(&c.dropped, 1);
        }
    }
}

/// How a bridge reports its status (the broker records it for `/readyz`).
pub type StatusSink = Arc<dyn Fn(BridgeStatus) + Send + Sync>;

/// What a bridge counts, read by the broker's `/metrics` (label `bridge`, one value
/// per configured bridge: bounded).
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Messages received from the external system.
    pub received: AtomicU64,
    /// Messages dropped because the topic layer's queue was full
    /// (`server.ingest_capacity` per shard).
    pub dropped: AtomicU64,
    /// Messages the client library dropped itself (NATS slow consumer).
    pub slow_consumer: AtomicU64,
    /// Times the connection was lost.
    pub disconnects: AtomicU64,
    /// Times the connection came back after a loss.
    pub reconnects: AtomicU64,
    /// Whether the connection is up now.
    pub connected: AtomicBool,
    /// Records between what the bridge has handed on and the end of its partitions,
    /// summed over the bridge (Kafka; always 0 for NATS).
    pub lag: AtomicU64,
}

impl BridgeCounters {
    /// Adds `n` to `counter`; returns the previous value.
    pub fn add(&self, counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_add(n, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_and_indexes_agree() {
        for (i, s) in Source::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        assert_eq!(Source::Kafka.to_string(), "kafka");
        assert_eq!(Source::Ws.as_str(), "ws");
    }

    #[test]
    fn only_ready_is_ready() {
        assert!(BridgeStatus::Ready.is_ready());
        assert!(!BridgeStatus::Starting.is_ready());
        assert!(!BridgeStatus::Down("refused".into()).is_ready());
    }
}
