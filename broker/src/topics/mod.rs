//! The topic layer: a sharded registry of topic actors, each with its seq, history
//! ring and subscribers. It takes [`Event`]s whose topic is already validated: the
//! edges (HTTP, WebSocket, a bridge's sink, embedded publish) make them.

use std::collections::BTreeMap;

use bytes::Bytes;
use herald_bridges::topic::{TopicError, TopicName};
use herald_bridges::{BridgeEvent, Source};

pub(crate) mod message;
pub(crate) mod registry;
pub(crate) mod topic;

pub(crate) use registry::Registry;

/// An event whose topic has been validated, on its way into its topic.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The topic.
    pub topic: TopicName,
    /// The payload exactly as received.
    pub payload: Bytes,
    /// Message key, when there is one.
    pub key: Option<String>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// Where the event entered Herald.
    pub source: Source,
    /// Its place in the cluster history stream, when it was read from there.
    pub position: Option<herald_bridges::StreamPosition>,
}

impl TryFrom<BridgeEvent> for Event {
    type Error = TopicError;

    /// Validates the event's topic.
    fn try_from(e: BridgeEvent) -> Result<Self, TopicError> {
        Ok(Event {
            topic: TopicName::new(e.topic)?,
            payload: e.payload,
            key: e.key,
            headers: e.headers,
            source: e.source,
            position: e.position,
        })
    }
}
