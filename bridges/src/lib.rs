//! # herald-bridges
//!
//! What a bridge hands to the broker, and the contract every bridge fulfils.
//!
//! Bridges consume an external system (NATS, Kafka) and emit one [`BridgeEvent`] per
//! message to an actix [`Recipient`]. They do not depend on the broker crate: the
//! broker owns the topic layer and gives each bridge a recipient, so a bridge can be
//! tested alone with a recipient that records what it receives.
//!
//! ## Layout
//! - [`BridgeEvent`], [`Source`]: the event as it enters Herald.
//! - The contract every bridge actor follows: it is started with an [`EventSink`]
//!   (where its events go), a [`StatusSink`] (its [`BridgeStatus`], for `/readyz`)
//!   and its [`BridgeCounters`] (for `/metrics`), all labelled by its configured name.
//! - [`BridgeCounters`]: what each bridge counts, for the broker's metrics.
//! - [`config`]: the bridges' configuration (`[[bridge.nats]]`, `[[bridge.kafka]]`),
//!   always compiled.
//! - `nats` (feature `nats`): the NATS bridge.
//! - `kafka` (feature `kafka`): the Kafka bridge.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub mod config;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;

use actix::{Message, Recipient};
use bytes::Bytes;

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
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct BridgeEvent {
    /// The Herald topic (already mapped from the subject or Kafka topic). The topic
    /// layer validates it and drops (and counts) events whose topic is invalid.
    pub topic: String,
    /// The payload exactly as received: JSON, other UTF-8 text, or binary.
    pub payload: Bytes,
    /// Message key (Kafka record key, or `key` of an HTTP publish), when there is one.
    pub key: Option<String>,
    /// Headers (NATS headers, Kafka headers, or `headers` of an HTTP publish).
    pub headers: BTreeMap<String, String>,
    /// Where the event came from.
    pub source: Source,
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

/// Where a bridge sends its events: normally the broker's topic registry.
pub type EventSink = Recipient<BridgeEvent>;

/// How a bridge reports its status (the broker records it for `/readyz`).
pub type StatusSink = Arc<dyn Fn(BridgeStatus) + Send + Sync>;

/// What a bridge counts, read by the broker's `/metrics` (label `bridge`, one value
/// per configured bridge: bounded).
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Messages received from the external system.
    pub received: AtomicU64,
    /// Messages dropped because the broker's hand-off queue was full.
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
